//! The key store: the wrapped data keys, the subjects' metadata salts, the erasures, the
//! journal and the receipts honoured, in a database of the custodian's own, apart from the data
//! store.
//!
//! Two databases: a SQLite file (the embedded default, and a custodian process's own
//! directory), or PostgreSQL (which the custodians of several gateways of a region share). The
//! SQL is written once, for both (`$n` parameters, `ON CONFLICT`), in one generic
//! [`KeyStoreBackend`] implementation over either pool; what differs (opening, the schema, telling
//! other custodians of an erasure and hearing of theirs, what follows an erasure) is each
//! database's [`Dialect`], in [`sqlite`] and [`postgres`].

mod postgres;
pub(crate) use postgres::ERASURE_LISTENER_LOST_METRIC;
mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use clover_keys::KeyError;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Type};

use super::access::UnwrapRecord;

/// Where the custodian keeps its key store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStore {
    /// A SQLite file (created if needed).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://...`), which several gateways' custodians can share.
    Postgres(String),
}

impl std::fmt::Display for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => f.write_str(&clover_sql::redact(url)),
        }
    }
}

impl KeyStore {
    /// Opens the key store: the SQLite file created if needed, or the PostgreSQL database's
    /// tables made or migrated.
    pub(crate) async fn open(&self) -> Result<Arc<dyn KeyStoreBackend>, KeyError> {
        let cannot_open = |cause: sqlx::Error| KeyError::StoreOpen { store: self.to_string(), cause: Box::new(cause) };
        Ok(match self {
            Self::Sqlite(path) => Arc::new(sqlite::open(path).await.map_err(cannot_open)?),
            Self::Postgres(url) => Arc::new(postgres::open(url).await.map_err(cannot_open)?),
        })
    }
}

/// What the custodian asks of its key store. Subjects are named by their keyed hash in the log;
/// KEK versions and log indexes are stored as signed 64-bit integers, as both databases hold
/// them.
#[async_trait]
pub(crate) trait KeyStoreBackend: Send + Sync {
    /// Stores a wrapped key unless the subject has one; whether it was stored.
    async fn insert_key(&self, subject: &str, version: u32, wrapped: &[u8], now: i64) -> Result<bool, sqlx::Error>;

    /// Stores wrapped keys (subject, KEK version, wrapped) and metadata salts (subject, salt),
    /// each unless its subject has one, in one transaction (in subject order, the same in every
    /// custodian sharing the key store); whether each key was stored.
    async fn insert_keys_and_salts(
        &self,
        keys: &[(&str, u32, &[u8])],
        salts: &[(&str, &[u8])],
        now: i64,
    ) -> Result<Vec<bool>, sqlx::Error>;

    /// The subject's wrapped key and the KEK version that wraps it.
    async fn wrapped(&self, subject: &str) -> Result<Option<(i64, Vec<u8>)>, sqlx::Error>;

    /// The wrapped keys of those of `subjects` that have one: (subject, KEK version, wrapped), in
    /// no particular order, read [`IN_LIST`] subjects a query.
    async fn wrapped_many(&self, subjects: &[&str]) -> Result<Vec<(String, i64, Vec<u8>)>, sqlx::Error>;

    /// The log index of the subject's last erasure.
    async fn erasure(&self, subject: &str) -> Result<Option<i64>, sqlx::Error>;

    /// Every subject's last erasure: (subject, log index).
    async fn erasures(&self) -> Result<Vec<(String, i64)>, sqlx::Error>;

    /// Deletes the subject's key and metadata salt, records the erasure at `log_index` (unless a
    /// later one is recorded) and, on a shared key store, tells the other custodians, in one
    /// transaction (so that they are told exactly when it commits); how many keys it deleted.
    async fn destroy(&self, subject: &str, log_index: i64) -> Result<u64, sqlx::Error>;

    /// What follows a committed erasure in this database (overwriting the old page).
    async fn after_erasure(&self);

    /// Whether other custodians may share this key store, and so make erasures this one must
    /// hear of.
    fn shared(&self) -> bool;

    /// Tells `listener` of the erasures of other custodians sharing this key store, for as long
    /// as it listens, where there can be others: of each as it commits, and of all of them at
    /// each (re)connect. The first connection is tried before this returns.
    async fn follow_erasures(&self, listener: Box<dyn ErasureListener>);

    /// The subject's metadata salt.
    async fn salt(&self, subject: &str) -> Result<Option<Vec<u8>>, sqlx::Error>;

    /// The metadata salts of those of `subjects` that have one: (subject, salt), in no
    /// particular order, read [`IN_LIST`] subjects a query.
    async fn salts(&self, subjects: &[&str]) -> Result<Vec<(String, Vec<u8>)>, sqlx::Error>;

    /// [`KeyStoreBackend::honour`] of `receipts`, and appends `records` to the journal, in one
    /// transaction (one durable step where there were two), leaving out each record whose
    /// receipt (its position in `receipts`, if it has one) was not new; whether each receipt was
    /// new.
    async fn honour_and_journal(
        &self,
        receipts: &[(&str, i64)],
        records: &[(Option<usize>, &UnwrapRecord)],
        now: i64,
    ) -> Result<Vec<bool>, sqlx::Error>;

    /// The journal, oldest first.
    async fn journal(&self) -> Result<Vec<UnwrapRecord>, sqlx::Error>;

    /// Records each receipt of `receipts` (entry hash, log index) as honoured at `now`, unless it
    /// is recorded already, in one transaction in the order given; whether each was new. On a
    /// shared key store, of two custodians recording one receipt, exactly one sees it new.
    async fn honour(&self, receipts: &[(&str, i64)], now: i64) -> Result<Vec<bool>, sqlx::Error> {
        self.honour_and_journal(receipts, &[], now).await
    }

    /// Forgets the receipts honoured before `before`; how many.
    async fn forget_receipts(&self, before: i64) -> Result<u64, sqlx::Error>;

    /// How many keys each KEK version wraps: (version, count), for the versions in use.
    async fn version_counts(&self) -> Result<Vec<(i64, i64)>, sqlx::Error>;

    /// How many keys `version` wraps.
    async fn count_version(&self, version: u32) -> Result<i64, sqlx::Error>;

    /// Up to `limit` keys not wrapped by `version`: (subject, version, wrapped).
    async fn not_under(&self, version: u32, limit: u32) -> Result<Vec<(String, i64, Vec<u8>)>, sqlx::Error>;

    /// Replaces a subject's wrapped key, only if it is still `old` under `old_version`; how many
    /// rows changed.
    async fn rewrap(
        &self,
        subject: &str,
        old_version: i64,
        old: &[u8],
        version: u32,
        wrapped: &[u8],
    ) -> Result<u64, sqlx::Error>;

    /// Closes the pool.
    async fn close(&self);
}

/// What hears of the erasures that other custodians sharing a key store make.
pub(crate) trait ErasureListener: Send + Sync + 'static {
    /// Whether it still listens (its custodian is still there).
    fn is_open(&self) -> bool;

    /// Applies the erasure of `subject` at `log_index`; false once it no longer listens.
    fn erased(&self, subject: &str, log_index: u64) -> bool;

    /// Hears of every erasure from now on, and `erasures` is every one recorded (subject, log
    /// index), read once listening: any erasure it was not told of while it did not listen is
    /// among them. False once it no longer listens.
    fn connected(&self, erasures: Vec<(String, i64)>) -> bool;

    /// No longer hears of every erasure, until [`ErasureListener::connected`] again.
    fn disconnected(&self);
}

/// A key store failure while `operation`.
pub(crate) fn failed(operation: &'static str) -> impl Fn(sqlx::Error) -> KeyError {
    move |cause| KeyError::Store { operation, cause: Box::new(cause) }
}

/// Why a group commit's rows were not written, as each of its waiters gets it (the error is one,
/// its waiters many): whether the key store could not serve now (its disk full, its database
/// down: the custodian answers 503, try again) and what failed. The error itself is logged once,
/// by the writer.
#[derive(Debug, Clone)]
pub(crate) struct Unwritten {
    unavailable: bool,
    detail: String,
}

impl Unwritten {
    pub(crate) fn of(error: &sqlx::Error) -> Self {
        Self { unavailable: clover_sql::is_unavailable(error), detail: error.to_string() }
    }

    /// A writer that has stopped (never an outage to wait out).
    pub(crate) fn stopped(what: &str) -> Self {
        Self { unavailable: false, detail: format!("the writer of {what} has stopped") }
    }

    /// The error of one waiter, who was doing `operation`.
    pub(crate) fn into_error(self, operation: &'static str) -> KeyError {
        if self.unavailable {
            KeyError::Unavailable(format!("its key store cannot serve now ({operation})"))
        } else {
            KeyError::Store { operation, cause: Box::new(std::io::Error::other(self.detail)) }
        }
    }
}

/// Seconds since the Unix epoch, as the key store keeps times.
pub(crate) fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What differs between the two databases.
#[async_trait]
pub(crate) trait Dialect: Database {
    /// How many rows a statement changed (each driver's result type has its own method).
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// Whether other custodians may share the key store (see [`KeyStoreBackend::shared`]).
    const SHARED: bool;

    /// Tells the other custodians of an erasure, inside its transaction (on `tx`).
    async fn notify_erasure(tx: &mut Self::Connection, subject: &str, log_index: i64) -> Result<(), sqlx::Error>;

    /// What follows an erasure (see [`KeyStoreBackend::after_erasure`]).
    async fn after_erasure(pool: &Pool<Self>);

    /// Hears of other custodians' erasures (see [`KeyStoreBackend::follow_erasures`]).
    async fn follow_erasures(pool: &Pool<Self>, listener: Box<dyn ErasureListener>);
}

/// Every subject's last erasure: (subject, log index).
const SELECT_ERASURES: &str = "SELECT subject, log_index FROM erasures";

/// The key store over a pool of either database.
pub(crate) struct KeyDb<DB: Database> {
    pool: Pool<DB>,
}

/// The most rows one multi-row statement writes (SQLite binds at most 32,766 values,
/// PostgreSQL 65,535).
const ROWS_PER_STATEMENT: usize = 1_000;

/// How many subjects one query of [`KeyStoreBackend::wrapped_many`] or
/// [`KeyStoreBackend::salts`] names: a fixed number of parameters (a shorter list repeats its
/// last subject), so that each is one prepared statement.
pub(crate) const IN_LIST: usize = 100;

/// `SELECT columns FROM table WHERE subject IN ($1, ..., $IN_LIST)`.
fn select_in_list(columns: &str, table: &str) -> String {
    let params: Vec<String> = (1..=IN_LIST).map(|n| format!("${n}")).collect();
    format!("SELECT {columns} FROM {table} WHERE subject IN ({})", params.join(", "))
}

/// `subjects` as lists of exactly [`IN_LIST`] (a shorter last one repeats its last subject).
fn in_lists<'a>(subjects: &'a [&'a str]) -> impl Iterator<Item = impl Iterator<Item = &'a str>> {
    subjects.chunks(IN_LIST).filter_map(|chunk| {
        let last = *chunk.last()?;
        Some(chunk.iter().copied().chain(std::iter::repeat(last)).take(IN_LIST))
    })
}

/// The statements of [`KeyStoreBackend::wrapped_many`] and [`KeyStoreBackend::salts`].
static SELECT_WRAPPED_MANY: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| select_in_list("subject, kek_version, wrapped", "data_keys"));
static SELECT_SALTS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| select_in_list("subject, salt", "metadata_salts"));

type JournalRow = (i64, String, String, i64, String, Option<String>, i64);

/// The SQL, once: what the queries bind and read, each database provides.
#[async_trait]
impl<DB> KeyStoreBackend for KeyDb<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    usize: ColumnIndex<DB::Row>,
    i64: Type<DB> + for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB>,
    String: Type<DB> + for<'r> Decode<'r, DB>,
    Vec<u8>: Type<DB> + for<'r> Decode<'r, DB>,
    for<'q> &'q str: Type<DB> + Encode<'q, DB>,
    for<'q> &'q [u8]: Type<DB> + Encode<'q, DB>,
    for<'q> Option<&'q str>: Type<DB> + Encode<'q, DB>,
{
    async fn insert_key(&self, subject: &str, version: u32, wrapped: &[u8], now: i64) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO data_keys (subject, kek_version, wrapped, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (subject) DO NOTHING",
        )
        .bind(subject)
        .bind(i64::from(version))
        .bind(wrapped)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(DB::rows_affected(&done) == 1)
    }

    async fn wrapped(&self, subject: &str) -> Result<Option<(i64, Vec<u8>)>, sqlx::Error> {
        sqlx::query_as("SELECT kek_version, wrapped FROM data_keys WHERE subject = $1")
            .bind(subject)
            .fetch_optional(&self.pool)
            .await
    }

    async fn insert_keys_and_salts(
        &self,
        keys: &[(&str, u32, &[u8])],
        salts: &[(&str, &[u8])],
        now: i64,
    ) -> Result<Vec<bool>, sqlx::Error> {
        let mut key_order: Vec<usize> = (0..keys.len()).collect();
        key_order.sort_by_key(|i| keys.get(*i).map(|k| k.0));
        let mut salt_order: Vec<&(&str, &[u8])> = salts.iter().collect();
        salt_order.sort_by_key(|salt| salt.0);
        let mut stored = vec![false; keys.len()];
        let mut conn = clover_sql::Guarded::acquire(&self.pool).await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        for i in key_order {
            let (Some((subject, version, wrapped)), Some(slot)) = (keys.get(i), stored.get_mut(i)) else { continue };
            let done = sqlx::query(
                "INSERT INTO data_keys (subject, kek_version, wrapped, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (subject) DO NOTHING",
            )
            .bind(*subject)
            .bind(i64::from(*version))
            .bind(*wrapped)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            *slot = DB::rows_affected(&done) == 1;
        }
        for (subject, salt) in salt_order {
            sqlx::query("INSERT INTO metadata_salts (subject, salt) VALUES ($1, $2) ON CONFLICT (subject) DO NOTHING")
                .bind(*subject)
                .bind(*salt)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        conn.clean();
        Ok(stored)
    }

    async fn wrapped_many(&self, subjects: &[&str]) -> Result<Vec<(String, i64, Vec<u8>)>, sqlx::Error> {
        let mut out = Vec::with_capacity(subjects.len());
        for list in in_lists(subjects) {
            let query = sqlx::query_as(sqlx::AssertSqlSafe(SELECT_WRAPPED_MANY.as_str()));
            out.extend(list.fold(query, |query, subject| query.bind(subject)).fetch_all(&self.pool).await?);
        }
        Ok(out)
    }

    async fn erasure(&self, subject: &str) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar("SELECT log_index FROM erasures WHERE subject = $1")
            .bind(subject)
            .fetch_optional(&self.pool)
            .await
    }

    async fn erasures(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        sqlx::query_as(SELECT_ERASURES).fetch_all(&self.pool).await
    }

    async fn destroy(&self, subject: &str, log_index: i64) -> Result<u64, sqlx::Error> {
        let mut conn = clover_sql::Guarded::acquire(&self.pool).await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let deleted = sqlx::query("DELETE FROM data_keys WHERE subject = $1").bind(subject).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM metadata_salts WHERE subject = $1").bind(subject).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO erasures (subject, log_index) VALUES ($1, $2) \
             ON CONFLICT (subject) DO UPDATE SET log_index = excluded.log_index \
             WHERE erasures.log_index < excluded.log_index",
        )
        .bind(subject)
        .bind(log_index)
        .execute(&mut *tx)
        .await?;
        DB::notify_erasure(&mut tx, subject, log_index).await?;
        tx.commit().await?;
        conn.clean();
        Ok(DB::rows_affected(&deleted))
    }

    async fn after_erasure(&self) {
        DB::after_erasure(&self.pool).await;
    }

    fn shared(&self) -> bool {
        DB::SHARED
    }

    async fn follow_erasures(&self, listener: Box<dyn ErasureListener>) {
        DB::follow_erasures(&self.pool, listener).await;
    }

    async fn salt(&self, subject: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
        sqlx::query_scalar("SELECT salt FROM metadata_salts WHERE subject = $1")
            .bind(subject)
            .fetch_optional(&self.pool)
            .await
    }

    async fn salts(&self, subjects: &[&str]) -> Result<Vec<(String, Vec<u8>)>, sqlx::Error> {
        let mut out = Vec::with_capacity(subjects.len());
        for list in in_lists(subjects) {
            let query = sqlx::query_as(sqlx::AssertSqlSafe(SELECT_SALTS.as_str()));
            out.extend(list.fold(query, |query, subject| query.bind(subject)).fetch_all(&self.pool).await?);
        }
        Ok(out)
    }

    async fn journal(&self) -> Result<Vec<UnwrapRecord>, sqlx::Error> {
        let rows: Vec<JournalRow> = sqlx::query_as(
            "SELECT time, subject, action, log_index, entry_hash, purpose, cached FROM unwraps ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(time, subject, action, index, entry_hash, purpose, cached)| UnwrapRecord {
                time,
                subject,
                action,
                log_index: u64::try_from(index).unwrap_or_default(),
                entry_hash,
                purpose,
                cached: cached != 0,
            })
            .collect())
    }

    async fn honour_and_journal(
        &self,
        receipts: &[(&str, i64)],
        records: &[(Option<usize>, &UnwrapRecord)],
        now: i64,
    ) -> Result<Vec<bool>, sqlx::Error> {
        // Receipts: not a read then a write; the primary key decides, so that two custodians
        // sharing the key store cannot both find a receipt new (the second waits for the
        // first's transaction, then inserts nothing). The rows inserted come back (RETURNING); a
        // receipt presented twice in one batch is new at most once, the first time.
        let mut conn = clover_sql::Guarded::acquire(&self.pool).await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let mut inserted = std::collections::HashSet::new();
        let mut distinct: Vec<(&str, i64)> = Vec::with_capacity(receipts.len());
        let mut seen = std::collections::HashSet::new();
        for (entry_hash, log_index) in receipts {
            if seen.insert(*entry_hash) {
                distinct.push((entry_hash, *log_index));
            }
        }
        for chunk in distinct.chunks(ROWS_PER_STATEMENT) {
            let mut insert =
                sqlx::QueryBuilder::<DB>::new("INSERT INTO honoured_receipts (entry_hash, log_index, honoured_at) ");
            insert.push_values(chunk, |mut row, (entry_hash, log_index)| {
                row.push_bind(*entry_hash).push_bind(*log_index).push_bind(now);
            });
            insert.push(" ON CONFLICT (entry_hash) DO NOTHING RETURNING entry_hash");
            let new: Vec<(String,)> = insert.build_query_as().fetch_all(&mut *tx).await?;
            inserted.extend(new.into_iter().map(|(hash,)| hash));
        }
        let mut answered = std::collections::HashSet::new();
        let new: Vec<bool> = receipts
            .iter()
            .map(|(entry_hash, _)| inserted.contains(*entry_hash) && answered.insert(*entry_hash))
            .collect();

        // The journal: one statement per chunk of records (a statement is a round trip to the
        // database); a record whose receipt was used before is not journalled (its key is
        // withheld).
        let kept: Vec<&UnwrapRecord> = records
            .iter()
            .filter(|(receipt, _)| receipt.is_none_or(|i| new.get(i).copied().unwrap_or(false)))
            .map(|(_, record)| *record)
            .collect();
        for chunk in kept.chunks(ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::<DB>::new(
                "INSERT INTO unwraps (time, subject, action, log_index, entry_hash, purpose, cached) ",
            );
            insert.push_values(chunk, |mut row, r| {
                row.push_bind(r.time)
                    .push_bind(r.subject.as_str())
                    .push_bind(r.action.as_str())
                    .push_bind(i64::try_from(r.log_index).unwrap_or(i64::MAX))
                    .push_bind(r.entry_hash.as_str())
                    .push_bind(r.purpose.as_deref())
                    .push_bind(i64::from(r.cached));
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        conn.clean();
        Ok(new)
    }

    async fn forget_receipts(&self, before: i64) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM honoured_receipts WHERE honoured_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(DB::rows_affected(&done))
    }

    async fn version_counts(&self) -> Result<Vec<(i64, i64)>, sqlx::Error> {
        sqlx::query_as("SELECT kek_version, count(*) FROM data_keys GROUP BY kek_version").fetch_all(&self.pool).await
    }

    async fn count_version(&self, version: u32) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM data_keys WHERE kek_version = $1")
            .bind(i64::from(version))
            .fetch_one(&self.pool)
            .await
    }

    async fn not_under(&self, version: u32, limit: u32) -> Result<Vec<(String, i64, Vec<u8>)>, sqlx::Error> {
        sqlx::query_as("SELECT subject, kek_version, wrapped FROM data_keys WHERE kek_version != $1 LIMIT $2")
            .bind(i64::from(version))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
    }

    async fn rewrap(
        &self,
        subject: &str,
        old_version: i64,
        old: &[u8],
        version: u32,
        wrapped: &[u8],
    ) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE data_keys SET kek_version = $1, wrapped = $2 \
             WHERE subject = $3 AND kek_version = $4 AND wrapped = $5",
        )
        .bind(i64::from(version))
        .bind(wrapped)
        .bind(subject)
        .bind(old_version)
        .bind(old)
        .execute(&self.pool)
        .await?;
        Ok(DB::rows_affected(&done))
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use sqlx::Executor;
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    use super::*;

    /// A key store whose disk is full makes the rows waiting in a group commit fail with an
    /// outage (the custodian answers 503: try again), not a 500; any other failure stays one.
    #[tokio::test]
    async fn rows_unwritten_for_a_full_disk_are_an_outage_to_each_waiter() {
        let options = SqliteConnectOptions::new().in_memory(true).pragma("max_page_count", "8");
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.unwrap();
        pool.execute("CREATE TABLE t (v BLOB)").await.unwrap();
        let mut full = None;
        for _ in 0..100 {
            if let Err(e) = sqlx::query("INSERT INTO t VALUES (zeroblob(4000))").execute(&pool).await {
                full = Some(e);
                break;
            }
        }
        let full = Unwritten::of(&full.expect("eight pages fill up"));
        for _ in 0..2 {
            match full.clone().into_error("writing the journal") {
                KeyError::Unavailable(detail) => {
                    assert_eq!(detail, "its key store cannot serve now (writing the journal)")
                }
                other => panic!("a full key store answered {other:?}"),
            }
        }

        match Unwritten::of(&sqlx::Error::RowNotFound).into_error("recording a receipt honoured") {
            KeyError::Store { operation, cause } => {
                assert_eq!(operation, "recording a receipt honoured");
                assert!(!clover_sql::is_unavailable_error(cause.as_ref()));
            }
            other => panic!("{other:?}"),
        }
        match Unwritten::stopped("the journal").into_error("writing the journal") {
            KeyError::Store { cause, .. } => assert_eq!(cause.to_string(), "the writer of the journal has stopped"),
            other => panic!("{other:?}"),
        }
    }

    /// A batch's keys and salts are read [`IN_LIST`] subjects a query: every subject that has
    /// one is answered once, with its own, across several queries and a short last one, and a
    /// subject with none (never registered, or erased) is not answered.
    #[tokio::test]
    async fn keys_and_salts_are_read_many_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let db = KeyStore::Sqlite(dir.path().join("keys.db")).open().await.unwrap();
        let subjects: Vec<String> = (0..250).map(|n| format!("subject-{n:03}")).collect();
        let salts: Vec<(String, String)> = subjects
            .iter()
            .enumerate()
            .filter(|(n, _)| n % 5 != 0)
            .map(|(_, subject)| (subject.clone(), format!("salt of {subject}")))
            .collect();
        let keys: Vec<(&str, u32, &[u8])> = subjects
            .iter()
            .enumerate()
            .map(|(n, subject)| (subject.as_str(), u32::try_from(n % 3).unwrap() + 1, subject.as_bytes()))
            .collect();
        let salts: Vec<(&str, &[u8])> = salts.iter().map(|(s, salt)| (s.as_str(), salt.as_bytes())).collect();
        assert!(db.insert_keys_and_salts(&keys, &salts, 1).await.unwrap().iter().all(|stored| *stored));
        // Stored once: a subject's key and salt are kept, and a second key is not stored.
        let again =
            [("subject-001", 9, b"other".as_slice()), ("new", 1, b"new".as_slice()), ("new", 2, b"x".as_slice())];
        assert_eq!(
            db.insert_keys_and_salts(&again, &[("subject-001", b"other")], 1).await.unwrap(),
            [false, true, false]
        );
        assert!(db.destroy("new", 8).await.unwrap() == 1);
        db.destroy("subject-007", 9).await.unwrap();
        // Every subject, twice, and ten that never were: three queries of a hundred and more.
        let mut asked: Vec<&str> = subjects.iter().map(String::as_str).collect();
        asked.extend(subjects.iter().take(40).map(String::as_str));
        let never: Vec<String> = (0..10).map(|n| format!("nobody-{n}")).collect();
        asked.extend(never.iter().map(String::as_str));

        let mut keys = db.wrapped_many(&asked).await.unwrap();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 249, "every subject with a key, once; none for the erased or the unknown");
        for (subject, version, wrapped) in &keys {
            let n: usize = subject.trim_start_matches("subject-").parse().unwrap();
            assert_ne!(n, 7);
            assert_eq!(*version, i64::try_from(n % 3).unwrap() + 1);
            assert_eq!(wrapped, subject.as_bytes());
        }
        let mut salts = db.salts(&asked).await.unwrap();
        salts.sort();
        salts.dedup();
        assert_eq!(salts.len(), 250 - 50 - 1, "every subject with a salt");
        for (subject, salt) in &salts {
            assert_eq!(salt, format!("salt of {subject}").as_bytes());
        }
        assert!(db.wrapped_many(&[]).await.unwrap().is_empty());
        assert!(db.salts(&["nobody-0"]).await.unwrap().is_empty());
    }
}
