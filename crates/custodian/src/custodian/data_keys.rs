//! The data keys: made at random, wrapped under the current KEK version (bound by their
//! associated data to the region, the subject's keyed hash and the version), kept in the key
//! store, and unwrapped when a logged access needs one.

use std::sync::Arc;

use clover_keys::{DataKey, Kek, KeyError, aad};
use clover_model::{Region, SubjectId};
use zeroize::Zeroizing;

use tokio::sync::{mpsc, oneshot};

use super::store::{KeyStoreBackend, Unwritten, failed, now};

/// The region's wrapped data keys: the KEK backend that wraps them and the key store that
/// keeps them.
pub(crate) struct DataKeys {
    pub(super) region: Region,
    pub(super) kek: Arc<dyn Kek>,
    pub(super) db: Arc<dyn KeyStoreBackend>,
    /// Held shared by whatever wraps a key under the current version (creation, import,
    /// re-wrapping) and exclusively by a retirement, so that no key is wrapped under a version
    /// between the check that nothing uses it and its destruction.
    pub(super) wrapping: tokio::sync::RwLock<()>,
    /// Where new keys and salts are sent to be stored, many in one transaction.
    inserts: mpsc::UnboundedSender<Insert>,
}

/// A new key or salt to store, with where to say whether it was (a key is not, if its subject
/// has one already).
struct Insert {
    row: Row,
    answer: oneshot::Sender<Result<bool, Unwritten>>,
}

enum Row {
    Key { subject: String, version: u32, wrapped: Vec<u8> },
    Salt { subject: String, salt: Zeroizing<Vec<u8>> },
}

/// The most keys and salts stored in one transaction.
const INSERTS_PER_TRANSACTION: usize = 1024;

impl DataKeys {
    /// The data keys of `region`, wrapped by `kek`, kept in `db`; starts the task that stores
    /// new keys and salts (on the current tokio runtime).
    pub(crate) fn new(region: Region, kek: Arc<dyn Kek>, db: Arc<dyn KeyStoreBackend>) -> Self {
        let (inserts, queue) = mpsc::unbounded_channel();
        tokio::spawn(store_inserts(db.clone(), queue));
        Self { region, kek, db, wrapping: tokio::sync::RwLock::new(()), inserts }
    }

    /// Stores `row` with the others waiting (one transaction, one durable step for all of them:
    /// many subjects are registered at once in a repatriation), and waits until it is committed.
    async fn insert(&self, row: Row, operation: &'static str) -> Result<bool, KeyError> {
        let stopped = || Unwritten::stopped("new keys").into_error(operation);
        let (answer, answered) = oneshot::channel();
        self.inserts.send(Insert { row, answer }).map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?.map_err(|why| why.into_error(operation))
    }

    /// Stores the subject's metadata salt unless it has one.
    pub(super) async fn insert_salt(&self, hash: &str, salt: &[u8]) -> Result<(), KeyError> {
        let row = Row::Salt { subject: hash.to_owned(), salt: Zeroizing::new(salt.to_vec()) };
        self.insert(row, "storing a metadata salt").await.map(|_| ())
    }

    /// Wraps `key`, named `hash` in the key store, under `version`.
    pub(super) fn wrap(&self, hash: &str, version: u32, key: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.kek.encrypt(version, &aad::data_key_by_hash(&self.region, hash, version), key)
    }

    /// Opens what [`DataKeys::wrap`] wrapped.
    pub(super) fn unwrap_bytes(
        &self,
        hash: &str,
        version: u32,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.kek.decrypt(version, &aad::data_key_by_hash(&self.region, hash, version), wrapped)
    }

    /// The stored key of `hash`: its KEK version and the wrapped bytes.
    async fn wrapped(&self, hash: &str) -> Result<(u32, Vec<u8>), KeyError> {
        let row = self.db.wrapped(hash).await.map_err(failed("reading a data key"))?;
        let (version, wrapped) = row.ok_or(KeyError::NoDataKey)?;
        Ok((u32::try_from(version).map_err(|_| KeyError::Decrypt)?, wrapped))
    }

    /// Makes the key of `hash`, wrapped under the current version and stored; an error if the
    /// subject has one already (which is kept).
    pub(crate) async fn create(&self, hash: &str) -> Result<DataKey, KeyError> {
        let _shared = self.wrapping.read().await;
        let key = DataKey::generate()?;
        let version = self.kek.current_version()?;
        let wrapped = self.wrap(hash, version, key.expose())?;
        let inserted =
            self.insert(Row::Key { subject: hash.to_owned(), version, wrapped }, "storing a data key").await?;
        if !inserted {
            return Err(KeyError::DataKeyExists);
        }
        Ok(key)
    }

    /// The key of `hash`, unwrapped.
    pub(crate) async fn unwrap(&self, hash: &str) -> Result<DataKey, KeyError> {
        let (version, wrapped) = self.wrapped(hash).await?;
        let plain = match self.unwrap_bytes(hash, version, &wrapped) {
            // Re-wrapped and the old version retired between the read and the unwrap: read again.
            Err(KeyError::UnknownKekVersion(_)) => {
                let (version, wrapped) = self.wrapped(hash).await?;
                self.unwrap_bytes(hash, version, &wrapped)?
            }
            other => other?,
        };
        DataKey::from_slice(&plain).map_err(|_| KeyError::Decrypt)
    }

    /// The keys of those of `hashes` that have one, unwrapped: what a batch of a transfer opens,
    /// read from the key store many at a time ([`KeyStoreBackend::wrapped_many`]).
    pub(crate) async fn unwrap_many(&self, hashes: &[&str]) -> Result<Vec<(String, DataKey)>, KeyError> {
        let rows = self.db.wrapped_many(hashes).await.map_err(failed("reading data keys"))?;
        let mut keys = Vec::with_capacity(rows.len());
        for (hash, version, wrapped) in rows {
            let version = u32::try_from(version).map_err(|_| KeyError::Decrypt)?;
            let plain = match self.unwrap_bytes(&hash, version, &wrapped) {
                // Re-wrapped and the old version retired since the read: this one read again.
                Err(KeyError::UnknownKekVersion(_)) => {
                    let key = self.unwrap(&hash).await?;
                    keys.push((hash, key));
                    continue;
                }
                other => other?,
            };
            keys.push((hash, DataKey::from_slice(&plain).map_err(|_| KeyError::Decrypt)?));
        }
        Ok(keys)
    }

    /// Takes in a data key that an earlier version of Clover wrapped (AAD by subject id) and
    /// kept in the data store; a subject that already has a key here keeps it.
    pub(crate) async fn import(
        &self,
        subject: &SubjectId,
        hash: &str,
        kek_version: u32,
        wrapped: &[u8],
    ) -> Result<(), KeyError> {
        let _shared = self.wrapping.read().await;
        let plain = self.kek.decrypt(kek_version, &aad::data_key(&self.region, subject, kek_version), wrapped)?;
        let key = DataKey::from_slice(&plain).map_err(|_| KeyError::Decrypt)?;
        if self.wrapped(hash).await.is_ok() {
            return Ok(());
        }
        let version = self.kek.current_version()?;
        let rewrapped = self.wrap(hash, version, key.expose())?;
        self.db.insert_key(hash, version, &rewrapped, now()).await.map_err(failed("importing a data key"))?;
        Ok(())
    }
}

/// Stores the keys and salts sent on `queue`, all those waiting in one transaction, until every
/// sender is gone.
async fn store_inserts(db: Arc<dyn KeyStoreBackend>, mut queue: mpsc::UnboundedReceiver<Insert>) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, INSERTS_PER_TRANSACTION).await > 0 {
        let mut keys = Vec::new();
        let mut salts = Vec::new();
        for insert in &batch {
            match &insert.row {
                Row::Key { subject, version, wrapped } => keys.push((subject.as_str(), *version, wrapped.as_slice())),
                Row::Salt { subject, salt } => salts.push((subject.as_str(), salt.as_slice())),
            }
        }
        let outcome = db.insert_keys_and_salts(&keys, &salts, now()).await;
        if let Err(e) = &outcome {
            tracing::error!(error = %e, waiting = batch.len(), "new keys could not be stored");
        }
        let mut stored = match &outcome {
            Ok(stored) => stored.iter().copied(),
            Err(_) => [].iter().copied(),
        };
        for insert in batch.drain(..) {
            let answer = match (&outcome, &insert.row) {
                // One answer per key, in order: a missing one is not stored.
                (Ok(_), Row::Key { .. }) => Ok(stored.next().unwrap_or(false)),
                (Ok(_), Row::Salt { .. }) => Ok(true),
                (Err(e), _) => Err(Unwritten::of(e)),
            };
            // The asker may have gone (its request cancelled): what it sent is stored all the same.
            let _ = insert.answer.send(answer);
        }
    }
}
