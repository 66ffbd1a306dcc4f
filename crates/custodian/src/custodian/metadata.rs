//! Subjects' metadata (what policy decides on, such as the date they come of age): sealed so
//! that it is not in the clear at rest, yet readable to decide before any data key is unwrapped.
//!
//! The region's metadata key is wrapped in the key store like a data key (under
//! [`METADATA_KEY`], so that rotation re-wraps it too); each subject's metadata key is derived
//! from it and a random salt of the subject's own, kept in the key store and destroyed with
//! their data key, so that an erasure shreds their metadata too, in every copy of the data store.

use std::collections::HashMap;

use aws_lc_rs::hmac;
use clover_event::SubjectTagKey;
use clover_keys::{DataKey, KeyError, aad};
use clover_model::SubjectId;
use zeroize::Zeroizing;

use super::data_keys::DataKeys;
use super::erasure::Erasures;
use super::store::{failed, now};

/// The prefix of metadata sealed with the subject's own metadata key (earlier formats wrote 0,
/// for the region's metadata key, or the KEK version that sealed it directly).
const SUBJECT_METADATA: u32 = u32::MAX;

/// The key store's name for the region's metadata key.
pub const METADATA_KEY: &str = "clover/metadata-key";

/// The region's metadata key, from which each subject's is derived.
pub(crate) struct Metadata {
    root: DataKey,
}

impl Metadata {
    /// Loads the region's metadata key from the key store, or makes it.
    pub(crate) async fn load(keys: &DataKeys) -> Result<Self, KeyError> {
        loop {
            let row = keys.db.wrapped(METADATA_KEY).await.map_err(failed("reading the metadata key"))?;
            if let Some((version, wrapped)) = row {
                let version = u32::try_from(version).map_err(|_| KeyError::Decrypt)?;
                let plain = keys.unwrap_bytes(METADATA_KEY, version, &wrapped)?;
                return Ok(Self { root: DataKey::from_slice(&plain).map_err(|_| KeyError::Decrypt)? });
            }
            let key = DataKey::generate()?;
            let version = keys.kek.current_version()?;
            let wrapped = keys.wrap(METADATA_KEY, version, key.expose())?;
            keys.db
                .insert_key(METADATA_KEY, version, &wrapped, now())
                .await
                .map_err(failed("storing the metadata key"))?;
        }
    }

    /// The subject's metadata key: derived from the region's metadata key and a random salt
    /// of the subject's own, kept in the key store and destroyed with their data key. `None`
    /// when the subject has no salt (erased) and `create` is false. Cached, and trusted from the
    /// cache, as [`Erasures`] allows (as their data key).
    async fn subject_key(
        &self,
        keys: &DataKeys,
        erasures: &Erasures,
        hash: &str,
        create: bool,
    ) -> Result<Option<DataKey>, KeyError> {
        if let Some(key) = erasures.cached_metadata_key(hash) {
            return Ok(Some(key));
        }
        let ticket = erasures.ticket(hash);
        if create {
            let salt = DataKey::generate()?;
            keys.insert_salt(hash, salt.expose().as_slice()).await?;
        }
        let salt = keys.db.salt(hash).await.map_err(failed("reading a metadata salt"))?;
        let Some(salt) = salt.map(Zeroizing::new) else { return Ok(None) };
        let bytes = self.derive(hash, &salt)?;
        erasures.cache_metadata_key(hash, &bytes, ticket);
        Ok(Some(DataKey::from_bytes(bytes)))
    }

    /// The metadata key of the subject `hash` whose salt is `salt`.
    fn derive(&self, hash: &str, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        let root = hmac::Key::new(hmac::HMAC_SHA256, self.root.expose());
        let mut context = Zeroizing::new(format!("clover/subject-metadata-key/v1\n{hash}\n").into_bytes());
        context.extend_from_slice(salt);
        let derived = hmac::sign(&root, &context);
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(derived.as_ref().get(..32).ok_or(KeyError::Crypto("short HMAC"))?);
        Ok(bytes)
    }

    /// The metadata keys of those of `hashes` that have a salt, each from the cache or derived
    /// (the salts missing read many at a time, [`KeyStoreBackend::salts`](super::store::KeyStoreBackend::salts)), and cached as
    /// [`Metadata::subject_key`] caches them: what a batch of a transfer opens its subjects'
    /// metadata with.
    pub(crate) async fn subject_keys(
        &self,
        keys: &DataKeys,
        erasures: &Erasures,
        hashes: &[&str],
    ) -> Result<HashMap<String, DataKey>, KeyError> {
        let mut found = HashMap::with_capacity(hashes.len());
        let mut missing = Vec::new();
        for hash in hashes {
            match erasures.cached_metadata_key(hash) {
                Some(key) => {
                    found.insert((*hash).to_owned(), key);
                }
                None => missing.push((*hash, erasures.ticket(hash))),
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let names: Vec<&str> = missing.iter().map(|(hash, _)| *hash).collect();
        let salts: HashMap<String, Zeroizing<Vec<u8>>> = keys
            .db
            .salts(&names)
            .await
            .map_err(failed("reading metadata salts"))?
            .into_iter()
            .map(|(hash, salt)| (hash, Zeroizing::new(salt)))
            .collect();
        for (hash, ticket) in missing {
            let Some(salt) = salts.get(hash) else { continue };
            let bytes = self.derive(hash, salt)?;
            erasures.cache_metadata_key(hash, &bytes, ticket);
            found.insert(hash.to_owned(), DataKey::from_bytes(bytes));
        }
        Ok(found)
    }

    /// The subject's tag key: HMAC-SHA-256(their metadata key, "clover/subject-tag-key/v2"), so
    /// that it is destroyed with their metadata salt at erasure. `None` when the subject has
    /// no salt and `create` is false.
    pub(crate) async fn tag_key(
        &self,
        keys: &DataKeys,
        erasures: &Erasures,
        hash: &str,
        create: bool,
    ) -> Result<Option<SubjectTagKey>, KeyError> {
        let Some(key) = self.subject_key(keys, erasures, hash, create).await? else { return Ok(None) };
        let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key.expose()), b"clover/subject-tag-key/v2");
        Ok(Some(SubjectTagKey::new(derived.as_ref())))
    }

    /// Seals a subject's metadata with their metadata key; `hash` is the subject's keyed hash
    /// in the boundary's log, which names their keys here.
    pub(crate) async fn seal(
        &self,
        keys: &DataKeys,
        erasures: &Erasures,
        subject: &SubjectId,
        hash: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        let key = self.subject_key(keys, erasures, hash, true).await?.ok_or(KeyError::NoDataKey)?;
        let mut out = SUBJECT_METADATA.to_be_bytes().to_vec();
        out.extend(key.seal(&aad::subject_metadata_v2(&keys.region, subject), plaintext)?);
        Ok(out)
    }

    /// Whether `sealed` is metadata an earlier version sealed (with the region's metadata key, or
    /// a KEK version directly), which [`Metadata::seal`] should seal again under the subject's
    /// own key.
    pub(crate) fn is_legacy(sealed: &[u8]) -> bool {
        sealed.split_first_chunk::<4>().is_some_and(|(prefix, _)| u32::from_be_bytes(*prefix) != SUBJECT_METADATA)
    }

    /// Opens what [`Metadata::seal`] sealed (or what earlier versions sealed).
    pub(crate) async fn open(
        &self,
        keys: &DataKeys,
        erasures: &Erasures,
        subject: &SubjectId,
        hash: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let key = match sealed.first_chunk::<4>().map(|prefix| u32::from_be_bytes(*prefix)) {
            Some(SUBJECT_METADATA) => self.subject_key(keys, erasures, hash, false).await?,
            _ => None,
        };
        self.open_with(keys, subject, key.as_ref(), sealed)
    }

    /// Opens what [`Metadata::seal`] sealed with the subject's metadata key `key` (their
    /// [`Metadata::subject_keys`]; `None` when they have none), or what earlier versions sealed.
    pub(crate) fn open_with(
        &self,
        keys: &DataKeys,
        subject: &SubjectId,
        key: Option<&DataKey>,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let (version, rest) = sealed.split_first_chunk::<4>().ok_or(KeyError::Decrypt)?;
        match u32::from_be_bytes(*version) {
            SUBJECT_METADATA => {
                key.ok_or(KeyError::Decrypt)?.open(&aad::subject_metadata_v2(&keys.region, subject), rest)
            }
            0 => self.root.open(&aad::subject_metadata_v2(&keys.region, subject), rest),
            version => keys.kek.decrypt(version, &aad::subject_metadata(&keys.region, subject, version), rest),
        }
    }
}
