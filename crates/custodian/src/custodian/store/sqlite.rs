//! The key store in SQLite: the embedded default, and a custodian process's own directory.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::{Dialect, ErasureListener, KeyDb};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS data_keys (
    subject TEXT PRIMARY KEY,
    kek_version INTEGER NOT NULL,
    wrapped BLOB NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS data_keys_by_version ON data_keys (kek_version);
CREATE TABLE IF NOT EXISTS metadata_salts (
    subject TEXT PRIMARY KEY,
    salt BLOB NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS erasures (
    subject TEXT PRIMARY KEY,
    log_index INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS unwraps (
    seq INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    subject TEXT NOT NULL,
    action TEXT NOT NULL,
    log_index INTEGER NOT NULL,
    entry_hash TEXT NOT NULL,
    purpose TEXT,
    cached INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS honoured_receipts (
    entry_hash TEXT PRIMARY KEY,
    log_index INTEGER NOT NULL,
    honoured_at INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS honoured_receipts_by_time ON honoured_receipts (honoured_at);
";

/// Opens the file (created if needed) and makes its tables. Deleted cells are zeroed
/// (`secure_delete`), so that an erased key does not linger in a free page.
pub(super) async fn open(path: &Path) -> Result<KeyDb<Sqlite>, sqlx::Error> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5))
        .pragma("secure_delete", "ON")
        // A page cache of up to 16 MiB a connection (SQLite's default is 2 MiB): the indexes of
        // random record ids outgrow the default within a hundred thousand records, and every
        // insert then reads its pages back from the file. Statement journals in memory, not in
        // temporary files (durability is the write-ahead log's, unchanged).
        .pragma("cache_size", "-16384")
        .pragma("temp_store", "MEMORY");
    let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
    sqlx::raw_sql(SCHEMA).execute(&pool).await?;
    Ok(KeyDb { pool })
}

#[async_trait]
impl Dialect for Sqlite {
    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    /// A SQLite file has one custodian.
    const SHARED: bool = false;

    /// There are no other custodians to tell.
    async fn notify_erasure(
        _tx: &mut sqlx::SqliteConnection,
        _subject: &str,
        _log_index: i64,
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// In SQLite, secure_delete zeroed the cell; the checkpoint copies that page over the old
    /// one in the main file and truncates the WAL that still held the old page.
    async fn after_erasure(pool: &SqlitePool) {
        let busy: Result<i64, sqlx::Error> =
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(pool).await.and_then(|row| row.try_get(0));
        if !matches!(busy, Ok(0)) {
            tracing::warn!(
                ?busy,
                "the key store's WAL checkpoint after an erasure did not complete; the old page is overwritten at the next checkpoint"
            );
        }
    }

    /// A SQLite file has one custodian: there are no others to hear from.
    async fn follow_erasures(_pool: &SqlitePool, _listener: Box<dyn ErasureListener>) {}
}
