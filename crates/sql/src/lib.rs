//! SQL helpers that the store, the log and the custodian's key store share: versioned
//! migrations applied once under an advisory lock, database URLs without their passwords for
//! messages, the truncation of a SQLite write-ahead log after an erasure, and a pooled
//! connection that a failed transaction does not return to its pool ([`Guarded`]).

use std::time::{Duration, Instant};

use sqlx::AssertSqlSafe;
use sqlx::pool::{Pool, PoolConnection};
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

/// A connection taken from its pool for a transaction, that goes back to the pool only when
/// the transaction ended as it should ([`Guarded::clean`]); dropped otherwise (an error, or the
/// future cancelled), it is closed and the pool opens another.
///
/// Why: when SQLite rolls a transaction back by itself (a full disk, `SQLITE_FULL`, during a
/// statement or the `COMMIT`), sqlx's own `ROLLBACK` then fails and its count of open
/// transactions on the connection stays at one; back in the pool, that connection refuses every
/// later `BEGIN IMMEDIATE` ("attempted to call begin_with at non-zero transaction depth") for
/// as long as the process runs. The soak (`clover bench soak`) found it: a gateway whose disk
/// had been full answered 500 to writes after the disk had room again.
pub struct Guarded<DB: sqlx::Database> {
    conn: PoolConnection<DB>,
    clean: bool,
}

impl<DB: sqlx::Database> Guarded<DB> {
    /// A connection of `pool`.
    pub async fn acquire(pool: &Pool<DB>) -> Result<Self, sqlx::Error> {
        Ok(Self { conn: pool.acquire().await?, clean: false })
    }

    /// The transaction on it was committed or rolled back: the connection may go back to the
    /// pool.
    pub fn clean(mut self) {
        self.clean = true;
    }
}

impl<DB: sqlx::Database> std::ops::Deref for Guarded<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl<DB: sqlx::Database> std::ops::DerefMut for Guarded<DB> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

impl<DB: sqlx::Database> Drop for Guarded<DB> {
    fn drop(&mut self) {
        if !self.clean {
            self.conn.close_on_drop();
        }
    }
}

/// Whether `error` says that the database cannot serve now (not reachable, shutting down,
/// restarting, its disk full, busy), rather than that the request or the data is wrong: what
/// an API answers 503 to, for the caller to try again. SQLite: `SQLITE_FULL`, `SQLITE_IOERR`,
/// `SQLITE_BUSY`, `SQLITE_CANTOPEN`; PostgreSQL: SQLSTATE classes 08 (connection), 53
/// (insufficient resources, a full disk among them) and 57P01-57P03 (shut down, restarting).
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| match code.parse::<i64>() {
            // SQLite's extended result code; its primary code is the low byte.
            Ok(n) => matches!(n & 0xff, 5 | 10 | 13 | 14),
            Err(_) => code.starts_with("08") || code.starts_with("53") || matches!(&*code, "57P01" | "57P02" | "57P03"),
        }),
        _ => false,
    }
}

/// [`is_unavailable`] of `error` if it is a [`sqlx::Error`]; false otherwise.
pub fn is_unavailable_error(error: &(dyn std::error::Error + 'static)) -> bool {
    error.downcast_ref::<sqlx::Error>().is_some_and(is_unavailable)
}

/// Applies `migrations` (version, SQL) not yet recorded in `table`, all in one transaction under
/// an advisory lock, so that processes starting together apply each one once.
pub async fn migrate(
    pool: &PgPool,
    table: &'static str,
    migrations: &[(i64, &'static str)],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(0x636c_6f76_6572_i64).execute(&mut *tx).await?;
    // `table` and the migrations are constants of Clover's own code.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {table} (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)"
    )))
    .execute(&mut *tx)
    .await?;
    for (version, sql) in migrations {
        let applied: Option<i64> =
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT version FROM {table} WHERE version = $1")))
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        if applied.is_none() {
            sqlx::raw_sql(*sql).execute(&mut *tx).await?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            sqlx::query(AssertSqlSafe(format!("INSERT INTO {table} (version, applied_at) VALUES ($1, $2)")))
                .bind(version)
                .bind(i64::try_from(now.as_secs()).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?;
            tracing::info!(%table, version, "database migration applied");
        }
    }
    tx.commit().await
}

/// Where a `postgres://` URL connects, as the driver reads it (its `host` and `port`, including
/// those a query string sets, `?host=...`, and the `PG*` environment when the URL names none):
/// `Some((host, port))` for a TCP host, `None` for a Unix socket directory (a host that is a
/// path: this machine). An error for a URL the driver refuses.
pub fn postgres_endpoint(url: &str) -> Result<Option<(String, u16)>, sqlx::Error> {
    let target = postgres_target(url)?;
    if target.host.starts_with('/') {
        return Ok(None);
    }
    Ok(Some((target.host, target.port)))
}

/// Where and as whom a `postgres://` URL connects, as the driver reads it: what another client
/// (`pg_dump`) is given, so that it connects where the driver would, not where its own reading
/// of the URL's parameters (`hostaddr`, a list of hosts) would take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTarget {
    /// The host, or a Unix socket directory.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The user.
    pub user: String,
    /// The database, if named.
    pub database: Option<String>,
}

/// The [`PgTarget`] of `url`.
pub fn postgres_target(url: &str) -> Result<PgTarget, sqlx::Error> {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
    Ok(PgTarget {
        host: options.get_host().to_owned(),
        port: options.get_port(),
        user: options.get_username().to_owned(),
        database: options.get_database().map(ToOwned::to_owned),
    })
}

/// A database URL without its password, for messages: gone from the authority
/// (`user:secret@host`, the user kept) and from a `password=` query parameter alike (its value
/// replaced by `redacted`).
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let base = match base.find("://") {
        Some(scheme) => {
            let rest = base.get(scheme + 3..).unwrap_or_default();
            // The authority ends at the path; its credentials at its last `@`.
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let authority = rest.get(..authority_end).unwrap_or_default();
            match authority.rfind('@') {
                Some(at) => {
                    let credentials = authority.get(..at).unwrap_or_default();
                    let user = credentials.split(':').next().unwrap_or_default();
                    format!(
                        "{}{user}{}",
                        base.get(..scheme + 3).unwrap_or_default(),
                        rest.get(at..).unwrap_or_default()
                    )
                }
                None => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    let Some(query) = query else { return base };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=redacted"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// How long one checkpoint attempt of [`truncate_wal`] waits for the readers and the writer
/// that hold it back (its busy timeout) before it gives up and is tried again.
const CHECKPOINT_ATTEMPT: Duration = Duration::from_millis(100);

/// The longest pause between two checkpoint attempts of [`truncate_wal`].
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(250);

/// How a [`truncate_wal`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalTruncation {
    /// Whether the write-ahead log was checkpointed and truncated to nothing.
    pub truncated: bool,
    /// How many checkpoints were tried.
    pub attempts: u32,
    /// How long it took.
    pub waited: Duration,
}

/// Copies every frame of a SQLite database's write-ahead log into the main file and truncates
/// the log to nothing (`PRAGMA wal_checkpoint(TRUNCATE)`), trying again for up to `window`
/// while other connections hold it back.
///
/// What an erasure needs: with `secure_delete`, the deleting transaction writes page images
/// whose freed cells are zeroed, but the old images, with the erased rows, are still in the main
/// file and in earlier frames of the log. The checkpoint overwrites the first and the truncation
/// drops the second. A TRUNCATE checkpoint takes the database's write lock before it waits for
/// readers, so writers pause while each attempt runs (they wait their own busy timeout); what
/// holds it back is a reader whose snapshot still uses the log (it can still read the erased
/// rows), or a writer in the middle of a transaction. Each attempt waits 100 ms for them;
/// between attempts writers go on, with a pause that doubles from 10 ms up to 250 ms.
pub async fn truncate_wal(pool: &SqlitePool, window: Duration) -> Result<WalTruncation, sqlx::Error> {
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    let busy_timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(&mut *conn).await?;
    sqlx::raw_sql(AssertSqlSafe(format!("PRAGMA busy_timeout = {}", CHECKPOINT_ATTEMPT.as_millis())))
        .execute(&mut *conn)
        .await?;
    let mut attempts = 0;
    let mut pause = Duration::from_millis(10);
    let truncated = loop {
        attempts += 1;
        if checkpoint(&mut conn).await? {
            break true;
        }
        let left = window.saturating_sub(started.elapsed());
        if left.is_zero() {
            break false;
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(CHECKPOINT_PAUSE);
    };
    // The connection goes back to the pool with its own busy timeout, or not at all.
    let restored =
        sqlx::raw_sql(AssertSqlSafe(format!("PRAGMA busy_timeout = {busy_timeout}"))).execute(&mut *conn).await;
    if restored.is_err() {
        conn.close_on_drop();
    }
    Ok(WalTruncation { truncated, attempts, waited: started.elapsed() })
}

/// One `wal_checkpoint(TRUNCATE)`: whether it checkpointed every frame and truncated the log.
async fn checkpoint(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(conn).await {
        // (busy, frames in the log, frames checkpointed): a truncated log has none.
        Ok((busy, _, _)) => Ok(busy == 0),
        // Another connection checkpointing at the same time, say: busy, like a reader.
        Err(sqlx::Error::Database(e)) if e.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(is_busy) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether a SQLite result code (extended or primary) is `SQLITE_BUSY` or `SQLITE_LOCKED`.
fn is_busy(code: i32) -> bool {
    matches!(code & 0xff, 5 | 6)
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("postgres://clover:s3cret@db.eu:5432/clover"), "postgres://clover@db.eu:5432/clover");
        assert_eq!(redact("postgres://db.eu/clover"), "postgres://db.eu/clover");
        assert_eq!(
            redact("postgres://db/x?user=me&password=s3cret&sslmode=require"),
            "postgres://db/x?user=me&password=redacted&sslmode=require"
        );
        assert_eq!(redact("postgres://me:p@ss@db/x"), "postgres://me@db/x");
        assert_eq!(redact("postgres://db/x?user=a@b&Password=s"), "postgres://db/x?user=a@b&Password=redacted");
        assert_eq!(redact("sqlite://data/x.db"), "sqlite://data/x.db");
    }

    /// A transaction that SQLite ends by itself (the database full) leaves sqlx's count of open
    /// transactions on its connection at one: a later `BEGIN IMMEDIATE` on that connection is
    /// refused. The disk is made "full" with `max_page_count`, set on every connection.
    mod full {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
        use sqlx::{Connection, Executor};

        use crate::{Guarded, is_unavailable};

        async fn small(path: &std::path::Path) -> SqlitePool {
            let options = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .pragma("max_page_count", "16");
            // One connection: the one a failed transaction used is the one asked for next.
            let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.unwrap();
            pool.execute("CREATE TABLE t (v BLOB)").await.unwrap();
            pool
        }

        /// Inserts until the database is full, in one `BEGIN IMMEDIATE` transaction on `conn`.
        async fn fill(conn: &mut sqlx::SqliteConnection) -> sqlx::Error {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
            for _ in 0..1_000 {
                if let Err(e) = sqlx::query("INSERT INTO t VALUES (zeroblob(4000))").execute(&mut *tx).await {
                    return e;
                }
            }
            match tx.commit().await {
                Err(e) => e,
                Ok(()) => panic!("16 pages took 4 MB"),
            }
        }

        #[tokio::test]
        async fn a_full_database_leaves_a_plain_pooled_connection_refusing_transactions() {
            let dir = tempfile::tempdir().unwrap();
            let pool = small(&dir.path().join("db")).await;
            let mut conn = pool.acquire().await.unwrap();
            let full = fill(&mut conn).await;
            assert!(is_unavailable(&full), "SQLITE_FULL is a database that cannot serve now: {full}");
            drop(conn);
            // What the soak saw: the connection is back in the pool, and refuses.
            let refused = pool.begin_with("BEGIN IMMEDIATE").await.err();
            assert!(refused.is_some(), "sqlx now recovers by itself: Guarded may no longer be needed");
        }

        #[tokio::test]
        async fn a_guarded_connection_whose_transaction_failed_is_not_reused() {
            let dir = tempfile::tempdir().unwrap();
            let pool = small(&dir.path().join("db")).await;
            let mut conn = Guarded::acquire(&pool).await.unwrap();
            let full = fill(&mut conn).await;
            assert!(is_unavailable(&full), "{full}");
            drop(conn);
            // The pool opened another connection: transactions go on (and find room after a
            // deletion, as after a disk is emptied).
            let mut conn = Guarded::acquire(&pool).await.unwrap();
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
            sqlx::query("DELETE FROM t").execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
            conn.clean();
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
            sqlx::query("INSERT INTO t VALUES (zeroblob(100))").execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
    }

    mod wal {
        use std::time::Duration;

        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool};

        use crate::truncate_wal;

        async fn open(path: &std::path::Path) -> SqlitePool {
            let options = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(5))
                .pragma("secure_delete", "ON");
            SqlitePool::connect_with(options).await.unwrap()
        }

        fn wal_len(path: &std::path::Path) -> u64 {
            let mut wal = path.as_os_str().to_owned();
            wal.push("-wal");
            std::fs::metadata(wal).map(|m| m.len()).unwrap_or_default()
        }

        /// A database with a row written, a reader that holds a snapshot of it, and the row
        /// deleted after the reader began.
        async fn held(dir: &tempfile::TempDir) -> (SqlitePool, sqlx::Transaction<'static, sqlx::Sqlite>) {
            let path = dir.path().join("db");
            let pool = open(&path).await;
            sqlx::raw_sql("CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('erase me');").execute(&pool).await.unwrap();
            let reader = open(&path).await;
            let mut snapshot = reader.begin().await.unwrap();
            let seen: String = sqlx::query_scalar("SELECT v FROM t").fetch_one(&mut *snapshot).await.unwrap();
            assert_eq!(seen, "erase me");
            sqlx::query("DELETE FROM t").execute(&pool).await.unwrap();
            (pool, snapshot)
        }

        #[tokio::test]
        async fn a_reader_holds_the_log_until_it_ends() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db");
            let (pool, mut snapshot) = held(&dir).await;

            // Held throughout the window: not truncated, after several attempts.
            let held = truncate_wal(&pool, Duration::from_millis(400)).await.unwrap();
            assert!(!held.truncated, "{held:?}");
            assert!(held.attempts > 1, "{held:?}");
            assert!(held.waited >= Duration::from_millis(400), "{held:?}");
            assert!(wal_len(&path) > 0);
            // The reader still sees the deleted row: it is not gone while the reader lasts.
            let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&mut *snapshot).await.unwrap();
            assert_eq!(seen, 1);

            // Released during the window: truncated once it is.
            let release = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                snapshot.rollback().await.unwrap();
            });
            let done = truncate_wal(&pool, Duration::from_secs(5)).await.unwrap();
            release.await.unwrap();
            assert!(done.truncated, "{done:?}");
            assert!(done.waited >= Duration::from_millis(250), "{done:?}");
            assert_eq!(wal_len(&path), 0);

            // The connections keep their busy timeout.
            for _ in 0..3 {
                let timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(&pool).await.unwrap();
                assert_eq!(timeout, 5000);
            }
        }

        #[tokio::test]
        async fn writers_go_on_between_attempts() {
            let dir = tempfile::tempdir().unwrap();
            let (pool, snapshot) = held(&dir).await;
            let writes = {
                let pool = pool.clone();
                tokio::spawn(async move {
                    for i in 0..20 {
                        sqlx::query("INSERT INTO t VALUES (?)").bind(i.to_string()).execute(&pool).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            };
            let held = truncate_wal(&pool, Duration::from_millis(300)).await.unwrap();
            assert!(!held.truncated, "{held:?}");
            writes.await.unwrap();
            drop(snapshot);
            let done = truncate_wal(&pool, Duration::from_secs(5)).await.unwrap();
            assert!(done.truncated, "{done:?}");
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&pool).await.unwrap();
            assert_eq!(count, 20);
        }
    }
}
