//! The data keys: made at random, wrapped under the current KEK version (bound by their
//! associated data to the region, the subject's keyed hash and the version), kept in the key
//! store, and unwrapped when a logged access needs one.

use std::sync::Arc;

use clover_keys::{DataKey, Kek, KeyError, aad};
use clover_model::{Region, SubjectId};
use zeroize::Zeroizing;

use super::store::{KeyStoreBackend, failed, now};

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
}

impl DataKeys {
    pub(crate) fn new(region: Region, kek: Arc<dyn Kek>, db: Arc<dyn KeyStoreBackend>) -> Self {
        Self { region, kek, db, wrapping: tokio::sync::RwLock::new(()) }
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
            self.db.insert_key(hash, version, &wrapped, now()).await.map_err(failed("storing a data key"))?;
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
