//! The custodian: holds the region's key-encryption keys (through a [`Kek`] backend) and every
//! subject's wrapped data key, in its own database apart from the data store.
//!
//! Because the wrapped data keys live here and nowhere else, erasing a subject's key here makes
//! their ciphertext unreadable in every copy of the data store, backups included
//! (crypto-shredding). The custodian hands out a data key only against a log [`Receipt`] for
//! that subject and an action that needs it, and keeps its own journal of every key it hands
//! out: the log index and entry hash of the access, the action and the purpose declared.
//!
//! A short-lived cache of unwrapped data keys (bounded in size and age; off with a size of 0)
//! spares the KEK backend on hot subjects; an erasure removes the subject's key from it before
//! the wrapped key is destroyed, and a key being unwrapped while an erasure runs is not cached.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_lc_rs::hmac;
use clover_event::SubjectIndexKey;
use clover_log::Receipt;
use clover_model::{Action, Region, SubjectId};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::{DataKey, Kek, KeyCustody, KeyError, aad};

/// The key store in SQLite (the embedded default, and a custodian process's own directory).
const SQLITE_SCHEMA: &str = "
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
";

/// The key store in PostgreSQL, for the custodian of several gateways: its migrations, in order.
/// Never edit one that has shipped; add the next.
const POSTGRES_MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE data_keys (
         subject TEXT PRIMARY KEY,
         kek_version BIGINT NOT NULL,
         wrapped BYTEA NOT NULL,
         created_at BIGINT NOT NULL
     );
     CREATE INDEX data_keys_by_version ON data_keys (kek_version);
     CREATE TABLE metadata_salts (
         subject TEXT PRIMARY KEY,
         salt BYTEA NOT NULL
     );
     CREATE TABLE erasures (
         subject TEXT PRIMARY KEY,
         log_index BIGINT NOT NULL
     );
     CREATE TABLE unwraps (
         seq BIGSERIAL PRIMARY KEY,
         time BIGINT NOT NULL,
         subject TEXT NOT NULL,
         action TEXT NOT NULL,
         log_index BIGINT NOT NULL,
         entry_hash TEXT NOT NULL,
         purpose TEXT,
         cached BIGINT NOT NULL
     );",
)];

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

/// The open key store. The SQL is written once, for both: `$n` parameters, `ON CONFLICT`.
#[derive(Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to whichever pool `$db` holds (the body is compiled for each).
macro_rules! on_db {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

/// The cache of unwrapped data keys.
#[derive(Debug, Clone, Copy)]
pub struct CacheOptions {
    /// The most keys held; 0 turns the cache off.
    pub size: usize,
    /// How long a key stays.
    pub ttl: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self { size: 10_000, ttl: Duration::from_secs(60) }
    }
}

/// One entry of the custodian's journal: a data key handed out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnwrapRecord {
    /// Seconds since the Unix epoch.
    pub time: i64,
    /// The subject, as the log's keyed hash.
    pub subject: String,
    /// The action the receipt allowed.
    pub action: String,
    /// The index of the log entry of the access.
    pub log_index: u64,
    /// The hash of that entry (RFC 6962 leaf hash, hex).
    pub entry_hash: String,
    /// The purpose declared for the access.
    pub purpose: Option<String>,
    /// Whether the key came from the cache.
    pub cached: bool,
}

enum Journal {
    Record(UnwrapRecord),
    Flush(oneshot::Sender<()>),
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, (Zeroizing<[u8; 32]>, Instant)>,
    order: VecDeque<(String, Instant)>,
    /// Subjects' metadata keys (derived, no receipt needed), cleared by erasure like the rest.
    metadata: HashMap<String, Zeroizing<[u8; 32]>>,
    /// Bumped by every erasure: a key unwrapped across an erasure is not cached.
    epoch: u64,
}

/// A logged, allowed access, as the custodian checks it before handing out a key: from a
/// [`Receipt`] made in this process, or from a log entry that a custodian in its own process
/// verified against the signed log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedAccess {
    /// The subject, as the log's keyed hash.
    pub subject_hash: String,
    /// The action allowed.
    pub action: Action,
    /// The log entry's index.
    pub log_index: u64,
    /// The log entry's RFC 6962 leaf hash, hex.
    pub entry_hash: String,
    /// The purpose declared.
    pub purpose: Option<String>,
}

/// A rotation's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rotation {
    /// The new version.
    pub to_version: u32,
    /// Data keys to re-wrap when it started.
    pub total: u64,
    /// Data keys re-wrapped so far.
    pub rewrapped: u64,
    /// Versions retired once nothing used them.
    pub retired: Vec<u32>,
    /// Whether it has finished.
    pub done: bool,
    /// Why it stopped, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How many data keys each KEK version wraps.
pub type VersionCounts = Vec<(u32, u64)>;

/// The custodian of one region's keys.
pub struct Custodian {
    region: Region,
    kek: Arc<dyn Kek>,
    index: SubjectIndexKey,
    pseudonym_root: hmac::Key,
    db: Db,
    journal: mpsc::UnboundedSender<Journal>,
    cache: Arc<Mutex<Cache>>,
    cache_options: CacheOptions,
    /// Held shared by whatever wraps a key under the current version (creation, import) and
    /// exclusively by a retirement, so that no key is wrapped under a version between the check
    /// that nothing uses it and its destruction.
    wrapping: tokio::sync::RwLock<()>,
    /// The latest rotation's progress.
    rotation: Mutex<Option<Rotation>>,
    /// The log index of each erased subject's erasure (kept in `erasures`, loaded at open).
    erasures: Arc<Mutex<HashMap<String, u64>>>,
    /// The region's metadata key: seals what policy decides on (a subject's coming of age), so
    /// that it can be read before any subject's data key is unwrapped. Wrapped in the key store
    /// like a data key (under [`METADATA_KEY`]), so that rotation re-wraps it too.
    metadata_key: DataKey,
}

/// The prefix of metadata sealed with the subject's own metadata key (earlier formats wrote 0,
/// for the region's metadata key, or the KEK version that sealed it directly).
const SUBJECT_METADATA: u32 = u32::MAX;

/// The key store's name for the region's metadata key.
pub const METADATA_KEY: &str = "clover/metadata-key";

impl std::fmt::Debug for Custodian {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Custodian").field("region", &self.region).field("kek", &self.kek).finish_non_exhaustive()
    }
}

fn store(what: &'static str) -> impl Fn(sqlx::Error) -> KeyError {
    move |e| KeyError::Store(format!("{what}: {e}"))
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Custodian {
    /// Opens the custodian's key store: a SQLite file (created if needed) or a PostgreSQL
    /// database (its tables made or migrated).
    ///
    /// `index` keys the subjects in the key store (the log's subject hash, so the key store
    /// holds no subject id in the clear); `pseudonym_root` is the root of the pseudonymisation
    /// keys.
    pub async fn open(
        at: &KeyStore,
        region: Region,
        kek: Arc<dyn Kek>,
        index: SubjectIndexKey,
        pseudonym_root: &[u8],
        cache_options: CacheOptions,
    ) -> Result<Self, KeyError> {
        let cannot_open = |e: sqlx::Error| KeyError::Store(format!("cannot open the key store {at}: {e}"));
        let db = match at {
            KeyStore::Sqlite(path) => {
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(5))
                    .pragma("secure_delete", "ON");
                let pool =
                    SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(cannot_open)?;
                sqlx::raw_sql(SQLITE_SCHEMA).execute(&pool).await.map_err(store("creating the key store"))?;
                Db::Sqlite(pool)
            }
            KeyStore::Postgres(url) => {
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await
                    .map_err(cannot_open)?;
                clover_sql::migrate(&pool, "clover_custody_migrations", POSTGRES_MIGRATIONS)
                    .await
                    .map_err(cannot_open)?;
                Db::Postgres(pool)
            }
        };
        let metadata_key = metadata_key(&db, &region, kek.as_ref()).await?;
        let erasures: HashMap<String, u64> =
            on_db!(&db, |pool| sqlx::query_as::<_, (String, i64)>("SELECT subject, log_index FROM erasures")
                .fetch_all(pool)
                .await)
            .map_err(store("reading erasures"))?
            .into_iter()
            .map(|(subject, index)| (subject, u64::try_from(index).unwrap_or_default()))
            .collect();
        let (journal, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_journal(db.clone(), queue));
        let cache = Arc::new(Mutex::new(Cache::default()));
        let erasures = Arc::new(Mutex::new(erasures));
        if let Db::Postgres(pool) = &db {
            // Other gateways' custodians share this key store: their erasures must reach this
            // one's cache and its record of erasures at once, not after `cache_seconds`.
            tokio::spawn(follow_erasures(pool.clone(), Arc::downgrade(&cache), Arc::downgrade(&erasures)));
        }
        tracing::info!(store = %at, "key store open");
        Ok(Self {
            metadata_key,
            region,
            kek,
            index,
            pseudonym_root: hmac::Key::new(hmac::HMAC_SHA256, pseudonym_root),
            db,
            journal,
            cache,
            cache_options,
            wrapping: tokio::sync::RwLock::new(()),
            erasures,
            rotation: Mutex::new(None),
        })
    }

    /// The KEK backend.
    pub fn kek(&self) -> &Arc<dyn Kek> {
        &self.kek
    }

    fn check(access: &LoggedAccess, allowed: &[Action]) -> Result<(), KeyError> {
        if allowed.contains(&access.action) {
            Ok(())
        } else {
            Err(KeyError::Receipt(format!("a {} does not need a data key here", access.action)))
        }
    }

    /// Refuses an access logged before the subject's last erasure: a receipt from an earlier
    /// life of the subject id neither reads, nor makes, nor destroys the key of a later one.
    fn check_not_before_erasure(&self, access: &LoggedAccess) -> Result<(), KeyError> {
        let erasures = self.erasures.lock().unwrap_or_else(PoisonError::into_inner);
        match erasures.get(&access.subject_hash) {
            Some(&erased) if access.log_index <= erased => Err(KeyError::Receipt(format!(
                "log entry {} is from before the subject's erasure at entry {erased}",
                access.log_index
            ))),
            _ => Ok(()),
        }
    }

    fn record(&self, access: &LoggedAccess, cached: bool) {
        let record = UnwrapRecord {
            time: now(),
            subject: access.subject_hash.clone(),
            action: access.action.to_string(),
            log_index: access.log_index,
            entry_hash: access.entry_hash.clone(),
            purpose: access.purpose.clone(),
            cached,
        };
        // The writer lives as long as the pool; if it is gone the process is shutting down.
        let _ = self.journal.send(Journal::Record(record));
    }

    /// What a receipt made in this process says about the access.
    fn access(&self, receipt: &Receipt) -> LoggedAccess {
        LoggedAccess {
            // The key the log entry names, as a custodian in its own process reads it; hashed
            // here only for an entry that names no subject.
            subject_hash: receipt
                .subject_hash()
                .map_or_else(|| self.index.hash(receipt.permit().subject()), ToOwned::to_owned),
            action: receipt.permit().action(),
            log_index: receipt.index(),
            entry_hash: receipt.entry_hash_hex(),
            purpose: receipt.purpose().map(ToOwned::to_owned),
        }
    }

    async fn wrapped(&self, subject: &str) -> Result<(u32, Vec<u8>), KeyError> {
        let row: Option<(i64, Vec<u8>)> =
            on_db!(&self.db, |pool| sqlx::query_as("SELECT kek_version, wrapped FROM data_keys WHERE subject = $1")
                .bind(subject)
                .fetch_optional(pool)
                .await)
            .map_err(store("reading a data key"))?;
        let (version, wrapped) = row.ok_or(KeyError::NoDataKey)?;
        Ok((u32::try_from(version).map_err(|_| KeyError::Decrypt)?, wrapped))
    }

    /// A data key wrapped by an earlier version of Clover (AAD by subject id).
    fn unwrap_legacy(&self, subject: &SubjectId, version: u32, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        let plain = self.kek.decrypt(version, &aad::data_key(&self.region, subject, version), wrapped)?;
        DataKey::from_slice(&plain).map_err(|_| KeyError::Decrypt)
    }

    fn cached(&self, subject: &str) -> Option<DataKey> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let (key, at) = cache.keys.get(subject)?;
        if at.elapsed() > self.cache_options.ttl {
            cache.keys.remove(subject);
            return None;
        }
        Some(DataKey::from_bytes(key.clone()))
    }

    fn cache_insert(&self, subject: &str, key: &DataKey, epoch: u64) {
        if self.cache_options.size == 0 {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.epoch != epoch {
            return;
        }
        let at = Instant::now();
        cache.keys.insert(subject.to_owned(), (Zeroizing::new(*key.bytes()), at));
        cache.order.push_back((subject.to_owned(), at));
        while cache.keys.len() > self.cache_options.size || cache.order.len() > 2 * self.cache_options.size {
            let Some((oldest, at)) = cache.order.pop_front() else { break };
            if cache.keys.get(&oldest).is_some_and(|(_, t)| *t == at) {
                cache.keys.remove(&oldest);
            }
        }
    }

    fn cache_epoch(&self) -> u64 {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).epoch
    }

    /// Waits until every journal record sent so far is written.
    pub async fn flush_journal(&self) {
        let (done, wait) = oneshot::channel();
        if self.journal.send(Journal::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// The journal, oldest first (after a flush).
    pub async fn journal(&self) -> Result<Vec<UnwrapRecord>, KeyError> {
        self.flush_journal().await;
        type JournalRow = (i64, String, String, i64, String, Option<String>, i64);
        let rows: Vec<JournalRow> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT time, subject, action, log_index, entry_hash, purpose, cached FROM unwraps ORDER BY seq",
        )
        .fetch_all(pool)
        .await)
        .map_err(store("reading the journal"))?;
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

    /// How many data keys each KEK version wraps, for every version the backend holds.
    pub async fn version_counts(&self) -> Result<VersionCounts, KeyError> {
        let rows: Vec<(i64, i64)> =
            on_db!(&self.db, |pool| sqlx::query_as("SELECT kek_version, count(*) FROM data_keys GROUP BY kek_version")
                .fetch_all(pool)
                .await)
            .map_err(store("counting data keys"))?;
        let mut counts: HashMap<u32, u64> = HashMap::new();
        for (version, count) in rows {
            counts.insert(u32::try_from(version).unwrap_or_default(), u64::try_from(count).unwrap_or_default());
        }
        Ok(self.kek.versions()?.into_iter().map(|v| (v, counts.get(&v).copied().unwrap_or_default())).collect())
    }

    /// Re-wraps up to `batch` data keys that are not under the current KEK version; returns how
    /// many it re-wrapped (0: none is left). Reads and writes go on meanwhile: each key is
    /// replaced in its own statement, only if it has not changed since it was read.
    pub async fn rewrap_batch(&self, batch: u32) -> Result<u64, KeyError> {
        // Rows changed meanwhile (erased, say) are not re-wrapped; select again rather than
        // report 0, which means that no key is left under an old version.
        for _ in 0..16 {
            match self.rewrap_once(batch).await? {
                (0, _) => return Ok(0),
                (_, 0) => continue,
                (_, done) => return Ok(done),
            }
        }
        Ok(0)
    }

    /// One batch: (keys selected, keys re-wrapped).
    async fn rewrap_once(&self, batch: u32) -> Result<(usize, u64), KeyError> {
        // No version is retired while this batch wraps under the current one.
        let _shared = self.wrapping.read().await;
        let current = self.kek.current_version()?;
        let rows: Vec<(String, i64, Vec<u8>)> = on_db!(&self.db, |pool| sqlx::query_as(
            "SELECT subject, kek_version, wrapped FROM data_keys WHERE kek_version != $1 LIMIT $2"
        )
        .bind(i64::from(current))
        .bind(i64::from(batch))
        .fetch_all(pool)
        .await)
        .map_err(store("reading keys to re-wrap"))?;
        let selected = rows.len();
        let mut done = 0;
        for (subject, version, wrapped) in rows {
            let old = u32::try_from(version).map_err(|_| KeyError::Decrypt)?;
            // The AAD binds the subject id, which the key store does not hold: a re-wrap works
            // on the raw key under the subject-hash AAD of `rewrap_aad`.
            let plain = self.kek.decrypt(old, &aad::data_key_by_hash(&self.region, &subject, old), &wrapped)?;
            let rewrapped =
                self.kek.encrypt(current, &aad::data_key_by_hash(&self.region, &subject, current), &plain)?;
            let changed = on_db!(&self.db, |pool| sqlx::query(
                "UPDATE data_keys SET kek_version = $1, wrapped = $2 \
                 WHERE subject = $3 AND kek_version = $4 AND wrapped = $5",
            )
            .bind(i64::from(current))
            .bind(&rewrapped)
            .bind(&subject)
            .bind(version)
            .bind(&wrapped)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))
            .map_err(store("re-wrapping"))?;
            done += changed;
        }
        Ok((selected, done))
    }

    /// The latest rotation's progress, if one ran since the custodian opened.
    pub fn rotation(&self) -> Option<Rotation> {
        self.rotation.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn update_rotation(&self, f: impl FnOnce(&mut Rotation)) {
        if let Some(rotation) = self.rotation.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            f(rotation);
        }
    }

    /// Starts a rotation, unless one is running (`Ok(None)`): a new KEK version, current at
    /// once. Checking for a running rotation and marking this one are one step. Returns the new
    /// version and how many keys wait to be re-wrapped; then [`Custodian::run_rotation`].
    pub async fn start_rotation(&self) -> Result<Option<(u32, u64)>, KeyError> {
        {
            let mut rotation = self.rotation.lock().unwrap_or_else(PoisonError::into_inner);
            if rotation.as_ref().is_some_and(|r| !r.done) {
                return Ok(None);
            }
            *rotation = Some(Rotation::default());
        }
        let started = async {
            let to_version = self.kek.add_version()?;
            let counts = self.version_counts().await?;
            Ok::<_, KeyError>((to_version, counts.iter().filter(|(v, _)| *v != to_version).map(|(_, n)| n).sum()))
        };
        match started.await {
            Ok((to_version, total)) => {
                self.update_rotation(|r| {
                    r.to_version = to_version;
                    r.total = total;
                });
                Ok(Some((to_version, total)))
            }
            Err(e) => {
                self.end_rotation(Some(e.to_string()));
                Err(e)
            }
        }
    }

    /// Re-wraps every key under the current version in batches, keeping the progress, then
    /// retires the old versions; returns them. Keys go on being handed out meanwhile. The
    /// caller logs what it must, then calls [`Custodian::end_rotation`].
    pub async fn run_rotation(&self) -> Result<Vec<u32>, KeyError> {
        loop {
            let done = self.rewrap_batch(256).await?;
            if done == 0 {
                break;
            }
            self.update_rotation(|r| r.rewrapped += done);
        }
        let retired = self.retire_old_versions().await?;
        self.update_rotation(|r| r.retired.clone_from(&retired));
        Ok(retired)
    }

    /// Marks the rotation done, or failed with `error`.
    pub fn end_rotation(&self, error: Option<String>) {
        self.update_rotation(|r| {
            r.done = true;
            r.error = error;
        });
    }

    /// Retires every version but the current one, once no key uses it; an old version that still
    /// wraps keys is an error (the re-wrap did not finish).
    pub async fn retire_old_versions(&self) -> Result<Vec<u32>, KeyError> {
        let current = self.kek.current_version()?;
        let mut retired = Vec::new();
        for (version, count) in self.version_counts().await? {
            if version == current {
                continue;
            }
            if count > 0 {
                return Err(KeyError::VersionInUse { version, count });
            }
            self.retire(version).await?;
            retired.push(version);
        }
        Ok(retired)
    }

    /// Retires a KEK version that no data key uses any more.
    pub async fn retire(&self, version: u32) -> Result<(), KeyError> {
        let _exclusive = self.wrapping.write().await;
        let count: i64 =
            on_db!(&self.db, |pool| sqlx::query_scalar("SELECT count(*) FROM data_keys WHERE kek_version = $1")
                .bind(i64::from(version))
                .fetch_one(pool)
                .await)
            .map_err(store("counting data keys"))?;
        if count > 0 {
            return Err(KeyError::VersionInUse { version, count: u64::try_from(count).unwrap_or_default() });
        }
        self.kek.retire_version(version)
    }

    /// Takes in a data key wrapped by an earlier version of Clover, which kept wrapped keys in
    /// the data store; a subject that already has a key here keeps it.
    pub async fn import(&self, subject: &SubjectId, kek_version: u32, wrapped: &[u8]) -> Result<(), KeyError> {
        let _shared = self.wrapping.read().await;
        let key = self.unwrap_legacy(subject, kek_version, wrapped)?;
        if self.wrapped(&self.index.hash(subject)).await.is_ok() {
            return Ok(());
        }
        let hash = self.index.hash(subject);
        let version = self.kek.current_version()?;
        let rewrapped = self.kek.encrypt(version, &aad::data_key_by_hash(&self.region, &hash, version), key.bytes())?;
        insert_key(&self.db, &hash, version, &rewrapped).await.map_err(store("importing a data key"))?;
        Ok(())
    }

    /// Closes the key store after writing the journal.
    pub async fn close(&self) {
        self.flush_journal().await;
        on_db!(&self.db, |pool| pool.close().await);
    }
}

/// Loads the region's metadata key from the key store, or makes it.
async fn metadata_key(db: &Db, region: &Region, kek: &dyn Kek) -> Result<DataKey, KeyError> {
    loop {
        let row: Option<(i64, Vec<u8>)> =
            on_db!(db, |pool| sqlx::query_as("SELECT kek_version, wrapped FROM data_keys WHERE subject = $1")
                .bind(METADATA_KEY)
                .fetch_optional(pool)
                .await)
            .map_err(store("reading the metadata key"))?;
        if let Some((version, wrapped)) = row {
            let version = u32::try_from(version).map_err(|_| KeyError::Decrypt)?;
            let plain = kek.decrypt(version, &aad::data_key_by_hash(region, METADATA_KEY, version), &wrapped)?;
            return DataKey::from_slice(&plain).map_err(|_| KeyError::Decrypt);
        }
        let key = DataKey::generate()?;
        let version = kek.current_version()?;
        let wrapped = kek.encrypt(version, &aad::data_key_by_hash(region, METADATA_KEY, version), key.bytes())?;
        insert_key(db, METADATA_KEY, version, &wrapped).await.map_err(store("storing the metadata key"))?;
    }
}

/// Records an erasure at `log_index` and drops the subject's keys from the cache.
fn forget_erased(cache: &Mutex<Cache>, erasures: &Mutex<HashMap<String, u64>>, hash: &str, log_index: u64) {
    {
        let mut erasures = erasures.lock().unwrap_or_else(PoisonError::into_inner);
        let erased = erasures.entry(hash.to_owned()).or_default();
        *erased = (*erased).max(log_index);
    }
    evict(cache, hash);
}

/// Drops a subject's keys from the cache, and keeps any unwrapped meanwhile out of it.
fn evict(cache: &Mutex<Cache>, hash: &str) {
    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    cache.epoch += 1;
    cache.keys.remove(hash);
    cache.metadata.remove(hash);
}

/// Applies the erasures other custodians on the same PostgreSQL key store announce, until the
/// custodian is dropped.
async fn follow_erasures(
    pool: PgPool,
    cache: std::sync::Weak<Mutex<Cache>>,
    erasures: std::sync::Weak<Mutex<HashMap<String, u64>>>,
) {
    let mut listener: Option<sqlx::postgres::PgListener> = None;
    while cache.strong_count() > 0 {
        if listener.is_none() {
            let listening = async {
                let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
                l.listen("clover_custody_erasure").await?;
                Ok::<_, sqlx::Error>(l)
            };
            match listening.await {
                Ok(l) => listener = Some(l),
                Err(_) => {
                    tracing::warn!("cannot listen for other custodians' erasures; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let Some(l) = listener.as_mut() else { continue };
        match tokio::time::timeout(Duration::from_secs(1), l.recv()).await {
            Ok(Ok(notice)) => {
                let (Some(cache), Some(erasures)) = (cache.upgrade(), erasures.upgrade()) else { return };
                if let Some((hash, index)) = notice.payload().split_once(' ')
                    && let Ok(index) = index.parse()
                {
                    forget_erased(&cache, &erasures, hash, index);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lost the notices of other custodians' erasures; reconnecting");
                listener = None;
            }
            Err(_) => {}
        }
    }
}

/// Stores a wrapped key unless the subject has one; whether it was stored.
async fn insert_key(db: &Db, subject: &str, version: u32, wrapped: &[u8]) -> Result<bool, sqlx::Error> {
    on_db!(db, |pool| sqlx::query(
        "INSERT INTO data_keys (subject, kek_version, wrapped, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (subject) DO NOTHING",
    )
    .bind(subject)
    .bind(i64::from(version))
    .bind(wrapped)
    .bind(now())
    .execute(pool)
    .await
    .map(|done| done.rows_affected() == 1))
}

async fn write_journal(db: Db, mut queue: mpsc::UnboundedReceiver<Journal>) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, 1024).await > 0 {
        let mut waiting = Vec::new();
        let mut records = Vec::new();
        for item in batch.drain(..) {
            match item {
                Journal::Record(record) => records.push(record),
                Journal::Flush(done) => waiting.push(done),
            }
        }
        if !records.is_empty() {
            let written = on_db!(&db, |pool| async {
                let mut tx = pool.begin().await?;
                for r in &records {
                    sqlx::query(INSERT_RECORD)
                        .bind(r.time)
                        .bind(&r.subject)
                        .bind(&r.action)
                        .bind(i64::try_from(r.log_index).unwrap_or(i64::MAX))
                        .bind(&r.entry_hash)
                        .bind(&r.purpose)
                        .bind(i64::from(r.cached))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            }
            .await);
            if let Err(e) = written {
                tracing::error!(error = %e, lost = records.len(), "the custodian's journal could not be written");
            }
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}

const INSERT_RECORD: &str = "INSERT INTO unwraps (time, subject, action, log_index, entry_hash, purpose, cached) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7)";

impl Custodian {
    /// Makes the data key of a logged, allowed write's subject.
    pub async fn create_for(&self, access: &LoggedAccess) -> Result<DataKey, KeyError> {
        Self::check(access, &[Action::Write])?;
        self.check_not_before_erasure(access)?;
        // An erasure by another custodian on the same key store, not yet heard of here.
        let erased: Option<i64> =
            on_db!(&self.db, |pool| sqlx::query_scalar("SELECT log_index FROM erasures WHERE subject = $1")
                .bind(&access.subject_hash)
                .fetch_optional(pool)
                .await)
            .map_err(store("reading erasures"))?;
        if let Some(erased) = erased.and_then(|e| u64::try_from(e).ok()) {
            forget_erased(&self.cache, &self.erasures, &access.subject_hash, erased);
            self.check_not_before_erasure(access)?;
        }
        let _shared = self.wrapping.read().await;
        let hash = &access.subject_hash;
        let key = DataKey::generate()?;
        let version = self.kek.current_version()?;
        let wrapped = self.kek.encrypt(version, &aad::data_key_by_hash(&self.region, hash, version), key.bytes())?;
        let inserted = insert_key(&self.db, hash, version, &wrapped).await.map_err(store("storing a data key"))?;
        if !inserted {
            return Err(KeyError::DataKeyExists);
        }
        self.record(access, false);
        Ok(key)
    }

    /// The data key of a logged, allowed read or write's subject.
    pub async fn fetch_for(&self, access: &LoggedAccess) -> Result<DataKey, KeyError> {
        Self::check(access, &[Action::Read, Action::Write])?;
        self.check_not_before_erasure(access)?;
        let hash = &access.subject_hash;
        if let Some(key) = self.cached(hash) {
            self.record(access, true);
            return Ok(key);
        }
        let epoch = self.cache_epoch();
        let (version, wrapped) = self.wrapped(hash).await?;
        let plain = match self.kek.decrypt(version, &aad::data_key_by_hash(&self.region, hash, version), &wrapped) {
            // Re-wrapped and the old version retired between the read and the unwrap: read again.
            Err(KeyError::UnknownKekVersion(_)) => {
                let (version, wrapped) = self.wrapped(hash).await?;
                self.kek.decrypt(version, &aad::data_key_by_hash(&self.region, hash, version), &wrapped)?
            }
            other => other?,
        };
        let key = DataKey::from_slice(&plain).map_err(|_| KeyError::Decrypt)?;
        self.cache_insert(hash, &key, epoch);
        self.record(access, false);
        Ok(key)
    }

    /// Destroys the data key of a logged, allowed erasure's subject; whether there was one.
    pub async fn destroy_for(&self, access: &LoggedAccess) -> Result<bool, KeyError> {
        Self::check(access, &[Action::Erase])?;
        self.check_not_before_erasure(access)?;
        let hash = &access.subject_hash;
        evict(&self.cache, hash);
        let log_index = i64::try_from(access.log_index).unwrap_or(i64::MAX);
        let deleted = on_db!(&self.db, |pool| async {
            let mut tx = pool.begin().await?;
            let deleted = sqlx::query("DELETE FROM data_keys WHERE subject = $1")
                .bind(hash)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM metadata_salts WHERE subject = $1").bind(hash).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO erasures (subject, log_index) VALUES ($1, $2) \
                 ON CONFLICT (subject) DO UPDATE SET log_index = excluded.log_index \
                 WHERE erasures.log_index < excluded.log_index",
            )
            .bind(hash)
            .bind(log_index)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(deleted)
        }
        .await)
        .map_err(store("destroying a data key"))?;
        // Anything unwrapped while the row was being deleted is not cached either.
        forget_erased(&self.cache, &self.erasures, hash, access.log_index);
        if let Db::Postgres(pool) = &self.db {
            let told = sqlx::query("SELECT pg_notify('clover_custody_erasure', $1)")
                .bind(format!("{hash} {}", access.log_index))
                .execute(pool)
                .await;
            if let Err(e) = told {
                tracing::warn!(error = %e, "other gateways' custodians were not told of an erasure; their caches expire it");
            }
        }
        // In SQLite, secure_delete zeroed the cell; the checkpoint copies that page over the old
        // one in the main file and truncates the WAL that still held the old page. PostgreSQL
        // keeps the old row version until VACUUM: the wrapped key is no use without the KEK.
        if let Db::Sqlite(pool) = &self.db {
            let busy: Result<i64, sqlx::Error> =
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(pool).await.and_then(|row| row.try_get(0));
            if !matches!(busy, Ok(0)) {
                tracing::warn!(
                    ?busy,
                    "the key store's WAL checkpoint after an erasure did not complete; the old page is overwritten at the next checkpoint"
                );
            }
        }
        self.record(access, false);
        Ok(deleted > 0)
    }

    /// The subject's metadata key: derived from the region's metadata key and a random salt
    /// of the subject's own, kept here and destroyed with their data key, so that an erasure
    /// shreds their metadata too, in every copy of the data store. `None` when the subject has
    /// no salt (erased) and `create` is false.
    async fn subject_metadata_key(&self, hash: &str, create: bool) -> Result<Option<DataKey>, KeyError> {
        if let Some(key) = self.cache.lock().unwrap_or_else(PoisonError::into_inner).metadata.get(hash) {
            return Ok(Some(DataKey::from_bytes(key.clone())));
        }
        let epoch = self.cache_epoch();
        if create {
            let salt = DataKey::generate()?;
            on_db!(&self.db, |pool| sqlx::query(
                "INSERT INTO metadata_salts (subject, salt) VALUES ($1, $2) ON CONFLICT (subject) DO NOTHING"
            )
            .bind(hash)
            .bind(salt.bytes().as_slice())
            .execute(pool)
            .await
            .map(|_| ()))
            .map_err(store("storing a metadata salt"))?;
        }
        let salt: Option<Vec<u8>> =
            on_db!(&self.db, |pool| sqlx::query_scalar("SELECT salt FROM metadata_salts WHERE subject = $1")
                .bind(hash)
                .fetch_optional(pool)
                .await)
            .map_err(store("reading a metadata salt"))?;
        let Some(salt) = salt.map(Zeroizing::new) else { return Ok(None) };
        let root = hmac::Key::new(hmac::HMAC_SHA256, self.metadata_key.bytes());
        let mut context = format!("clover/subject-metadata-key/v1\n{hash}\n").into_bytes();
        context.extend_from_slice(&salt);
        let derived = hmac::sign(&root, &context);
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(derived.as_ref().get(..32).ok_or(KeyError::Crypto("short HMAC"))?);
        if self.cache_options.size > 0 {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.epoch == epoch {
                if cache.metadata.len() >= self.cache_options.size {
                    cache.metadata.clear();
                }
                cache.metadata.insert(hash.to_owned(), bytes.clone());
            }
        }
        Ok(Some(DataKey::from_bytes(bytes)))
    }

    /// Seals a subject's metadata with their metadata key; `hash` is the subject's keyed hash
    /// in the boundary's log, which names their keys here.
    pub async fn seal_metadata_for(
        &self,
        subject: &SubjectId,
        hash: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        let key = self.subject_metadata_key(hash, true).await?.ok_or(KeyError::NoDataKey)?;
        let mut out = SUBJECT_METADATA.to_be_bytes().to_vec();
        out.extend(key.seal(&aad::subject_metadata_v2(&self.region, subject), plaintext)?);
        Ok(out)
    }

    /// Opens what [`Custodian::seal_metadata_for`] sealed (or what earlier versions sealed).
    pub async fn open_metadata_for(
        &self,
        subject: &SubjectId,
        hash: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let (version, rest) = sealed.split_first_chunk::<4>().ok_or(KeyError::Decrypt)?;
        match u32::from_be_bytes(*version) {
            SUBJECT_METADATA => {
                let key = self.subject_metadata_key(hash, false).await?.ok_or(KeyError::Decrypt)?;
                key.open(&aad::subject_metadata_v2(&self.region, subject), rest)
            }
            0 => self.metadata_key.open(&aad::subject_metadata_v2(&self.region, subject), rest),
            version => self.kek.decrypt(version, &aad::subject_metadata(&self.region, subject, version), rest),
        }
    }

    /// A pseudonymous token for `input` under the key of (`purpose`, `destination`).
    pub fn pseudonym_now(&self, purpose: &str, destination: &str, input: &[u8]) -> String {
        let derived =
            hmac::sign(&self.pseudonym_root, format!("clover/pseudonym/v1\n{purpose}\n{destination}").as_bytes());
        let key = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
        let tag = hmac::sign(&key, input);
        let hex: String = tag.as_ref().iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("tok_{hex}")
    }
}

#[async_trait]
impl KeyCustody for Custodian {
    fn region(&self) -> &Region {
        &self.region
    }

    async fn create_data_key(&self, receipt: &Receipt) -> Result<DataKey, KeyError> {
        self.create_for(&self.access(receipt)).await
    }

    async fn data_key(&self, receipt: &Receipt) -> Result<DataKey, KeyError> {
        self.fetch_for(&self.access(receipt)).await
    }

    async fn destroy_data_key(&self, receipt: &Receipt) -> Result<bool, KeyError> {
        self.destroy_for(&self.access(receipt)).await
    }

    async fn seal_metadata(&self, subject: &SubjectId, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.seal_metadata_for(subject, &self.index.hash(subject), plaintext).await
    }

    async fn open_metadata(&self, subject: &SubjectId, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.open_metadata_for(subject, &self.index.hash(subject), sealed).await
    }

    async fn pseudonym(&self, purpose: &str, destination: &str, input: &[u8]) -> Result<String, KeyError> {
        Ok(self.pseudonym_now(purpose, destination, input))
    }
}
