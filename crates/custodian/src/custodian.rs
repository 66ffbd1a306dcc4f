//! The custodian: holds the region's key-encryption keys (through a [`Kek`] backend) and every
//! subject's wrapped data key, in its own database apart from the data store.
//!
//! Because the wrapped data keys live here and nowhere else, erasing a subject's key here makes
//! their ciphertext unreadable in every copy of the data store, backups included
//! (crypto-shredding). The custodian hands out a data key only against a log [`Receipt`] for
//! that subject and an action that needs it, and keeps its own journal of every key it hands
//! out: the log index and entry hash of the access, the action and the purpose declared.
//!
//! One job per file: the key store over SQLite or PostgreSQL ([`store`]), the cache of unwrapped
//! keys ([`cache`]), the journal ([`journal`]), KEK rotation ([`rotation`]), erasure
//! ([`erasure`]) and subjects' metadata ([`metadata`]); here, the custodian itself and the data
//! keys it makes and hands out.

pub(crate) mod cache;
pub(crate) mod erasure;
pub(crate) mod journal;
pub(crate) mod metadata;
pub(crate) mod rotation;
pub(crate) mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_lc_rs::hmac;
use clover_event::SubjectIndexKey;
use clover_keys::{DataKey, Kek, KeyCustody, KeyError, aad};
use clover_log::Receipt;
use clover_model::{Action, Region, SubjectId};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use self::cache::{Cache, CacheOptions};
use self::erasure::ErasureNotices;
use self::journal::{Journal, write_journal};
use self::rotation::Rotation;
use self::store::{KeyStore, KeyStoreBackend};

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

/// The custodian of one region's keys.
pub struct Custodian {
    region: Region,
    kek: Arc<dyn Kek>,
    index: SubjectIndexKey,
    pseudonym_root: hmac::Key,
    db: Arc<dyn KeyStoreBackend>,
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
    /// like a data key (under [`metadata::METADATA_KEY`]), so that rotation re-wraps it too.
    metadata_key: DataKey,
}

impl std::fmt::Debug for Custodian {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Custodian").field("region", &self.region).field("kek", &self.kek).finish_non_exhaustive()
    }
}

/// A key store failure while `operation`.
fn store_error(operation: &'static str) -> impl Fn(sqlx::Error) -> KeyError {
    move |cause| KeyError::Store { operation, cause: Box::new(cause) }
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
        let db = at.open().await?;
        let metadata_key = metadata::metadata_key(db.as_ref(), &region, kek.as_ref()).await?;
        let erasures: HashMap<String, u64> = db
            .erasures()
            .await
            .map_err(store_error("reading erasures"))?
            .into_iter()
            .map(|(subject, index)| (subject, u64::try_from(index).unwrap_or_default()))
            .collect();
        let (journal, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_journal(db.clone(), queue));
        let cache = Arc::new(Mutex::new(Cache::default()));
        let erasures = Arc::new(Mutex::new(erasures));
        db.follow_erasures(ErasureNotices { cache: Arc::downgrade(&cache), erasures: Arc::downgrade(&erasures) });
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
        let row = self.db.wrapped(subject).await.map_err(store_error("reading a data key"))?;
        let (version, wrapped) = row.ok_or(KeyError::NoDataKey)?;
        Ok((u32::try_from(version).map_err(|_| KeyError::Decrypt)?, wrapped))
    }

    /// A data key wrapped by an earlier version of Clover (AAD by subject id).
    fn unwrap_legacy(&self, subject: &SubjectId, version: u32, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        let plain = self.kek.decrypt(version, &aad::data_key(&self.region, subject, version), wrapped)?;
        DataKey::from_slice(&plain).map_err(|_| KeyError::Decrypt)
    }

    /// Makes the data key of a logged, allowed write's subject.
    pub async fn create_for(&self, access: &LoggedAccess) -> Result<DataKey, KeyError> {
        Self::check(access, &[Action::Write])?;
        self.check_not_before_erasure(access)?;
        self.check_not_before_stored_erasure(access).await?;
        let _shared = self.wrapping.read().await;
        let hash = &access.subject_hash;
        let key = DataKey::generate()?;
        let version = self.kek.current_version()?;
        let wrapped = self.kek.encrypt(version, &aad::data_key_by_hash(&self.region, hash, version), key.expose())?;
        let inserted =
            self.db.insert_key(hash, version, &wrapped, now()).await.map_err(store_error("storing a data key"))?;
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
        let rewrapped =
            self.kek.encrypt(version, &aad::data_key_by_hash(&self.region, &hash, version), key.expose())?;
        self.db.insert_key(&hash, version, &rewrapped, now()).await.map_err(store_error("importing a data key"))?;
        Ok(())
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

    /// Closes the key store after writing the journal.
    pub async fn close(&self) {
        self.flush_journal().await;
        self.db.close().await;
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
