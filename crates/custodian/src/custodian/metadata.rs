//! Subjects' metadata (what policy decides on, such as the date they come of age): sealed so
//! that it is not in the clear at rest, yet readable to decide before any data key is unwrapped.
//!
//! The region's metadata key is wrapped in the key store like a data key (so that rotation
//! re-wraps it too); each subject's metadata key is derived from it and a random salt of the
//! subject's own, kept in the key store and destroyed with their data key, so that an erasure
//! shreds their metadata too, in every copy of the data store.

use std::sync::PoisonError;

use aws_lc_rs::hmac;
use clover_keys::{DataKey, Kek, KeyError, aad};
use clover_model::{Region, SubjectId};
use zeroize::Zeroizing;

use super::store::KeyStoreBackend;
use super::{Custodian, now, store_error};

/// The prefix of metadata sealed with the subject's own metadata key (earlier formats wrote 0,
/// for the region's metadata key, or the KEK version that sealed it directly).
const SUBJECT_METADATA: u32 = u32::MAX;

/// The key store's name for the region's metadata key.
pub const METADATA_KEY: &str = "clover/metadata-key";

/// Loads the region's metadata key from the key store, or makes it.
pub(super) async fn metadata_key(
    db: &dyn KeyStoreBackend,
    region: &Region,
    kek: &dyn Kek,
) -> Result<DataKey, KeyError> {
    loop {
        let row = db.wrapped(METADATA_KEY).await.map_err(store_error("reading the metadata key"))?;
        if let Some((version, wrapped)) = row {
            let version = u32::try_from(version).map_err(|_| KeyError::Decrypt)?;
            let plain = kek.decrypt(version, &aad::data_key_by_hash(region, METADATA_KEY, version), &wrapped)?;
            return DataKey::from_slice(&plain).map_err(|_| KeyError::Decrypt);
        }
        let key = DataKey::generate()?;
        let version = kek.current_version()?;
        let wrapped = kek.encrypt(version, &aad::data_key_by_hash(region, METADATA_KEY, version), key.expose())?;
        db.insert_key(METADATA_KEY, version, &wrapped, now()).await.map_err(store_error("storing the metadata key"))?;
    }
}

impl Custodian {
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
            self.db
                .insert_salt(hash, salt.expose().as_slice())
                .await
                .map_err(store_error("storing a metadata salt"))?;
        }
        let salt = self.db.salt(hash).await.map_err(store_error("reading a metadata salt"))?;
        let Some(salt) = salt.map(Zeroizing::new) else { return Ok(None) };
        let root = hmac::Key::new(hmac::HMAC_SHA256, self.metadata_key.expose());
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
}
