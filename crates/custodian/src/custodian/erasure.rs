//! Erasure: destroying a subject's data key (and metadata salt) shreds their ciphertext in every
//! copy of the data store, backups included. The custodian records the log index of each
//! erasure, so that a receipt from before it (an earlier life of the subject id) neither reads,
//! nor makes, nor destroys the key of a later one; custodians sharing a PostgreSQL key store
//! hear of each other's erasures at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use clover_keys::KeyError;

use super::access::LoggedAccess;
use super::cache::KeyCache;
use super::store::{ErasureListener, KeyStoreBackend, failed};

/// The log index of each erased subject's last erasure (kept in the key store, loaded at open),
/// and the cache an erasure evicts the subject from.
pub(crate) struct Erasures {
    at: Mutex<HashMap<String, u64>>,
    cache: Arc<KeyCache>,
}

impl Erasures {
    /// The erasures recorded in `db`; from now on, those of other custodians sharing it too.
    pub(crate) async fn load(db: &dyn KeyStoreBackend, cache: Arc<KeyCache>) -> Result<Arc<Self>, KeyError> {
        let at: HashMap<String, u64> = db
            .erasures()
            .await
            .map_err(failed("reading erasures"))?
            .into_iter()
            .map(|(subject, index)| (subject, u64::try_from(index).unwrap_or_default()))
            .collect();
        let erasures = Arc::new(Self { at: Mutex::new(at), cache });
        db.follow_erasures(Box::new(ErasureNotices(Arc::downgrade(&erasures))));
        Ok(erasures)
    }

    /// Records an erasure at `log_index` and drops the subject's keys from the cache.
    fn forget(&self, hash: &str, log_index: u64) {
        {
            let mut at = self.at.lock().unwrap_or_else(PoisonError::into_inner);
            let erased = at.entry(hash.to_owned()).or_default();
            *erased = (*erased).max(log_index);
        }
        self.cache.evict(hash);
    }

    /// Refuses an access logged before the subject's last erasure: a receipt from an earlier
    /// life of the subject id neither reads, nor makes, nor destroys the key of a later one.
    pub(crate) fn check(&self, access: &LoggedAccess) -> Result<(), KeyError> {
        let at = self.at.lock().unwrap_or_else(PoisonError::into_inner);
        match at.get(&access.subject_hash) {
            Some(&erased) if access.log_index <= erased => Err(KeyError::Receipt(format!(
                "log entry {} is from before the subject's erasure at entry {erased}",
                access.log_index
            ))),
            _ => Ok(()),
        }
    }

    /// [`Erasures::check`], after reading the key store for an erasure by another custodian on
    /// it that was not yet heard of here.
    pub(crate) async fn check_stored(&self, db: &dyn KeyStoreBackend, access: &LoggedAccess) -> Result<(), KeyError> {
        let erased = db.erasure(&access.subject_hash).await.map_err(failed("reading erasures"))?;
        if let Some(erased) = erased.and_then(|e| u64::try_from(e).ok()) {
            self.forget(&access.subject_hash, erased);
            self.check(access)?;
        }
        Ok(())
    }

    /// Destroys the data key and metadata salt of an allowed erasure's subject, recording the
    /// erasure; whether there was a key.
    pub(crate) async fn destroy(&self, db: &dyn KeyStoreBackend, access: &LoggedAccess) -> Result<bool, KeyError> {
        self.check(access)?;
        let hash = &access.subject_hash;
        self.cache.evict(hash);
        let log_index = i64::try_from(access.log_index).unwrap_or(i64::MAX);
        let deleted = db.destroy(hash, log_index).await.map_err(failed("destroying a data key"))?;
        // Anything unwrapped while the row was being deleted is not cached either.
        self.forget(hash, access.log_index);
        db.after_erasure(hash, access.log_index).await;
        Ok(deleted > 0)
    }
}

/// Applies the erasures other custodians on a shared key store announce, while the custodian
/// lives.
struct ErasureNotices(Weak<Erasures>);

impl ErasureListener for ErasureNotices {
    fn is_open(&self) -> bool {
        self.0.strong_count() > 0
    }

    fn erased(&self, subject: &str, log_index: u64) -> bool {
        let Some(erasures) = self.0.upgrade() else { return false };
        erasures.forget(subject, log_index);
        true
    }
}
