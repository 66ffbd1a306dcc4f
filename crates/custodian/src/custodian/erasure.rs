//! Erasure: destroying a subject's data key (and metadata salt) shreds their ciphertext in every
//! copy of the data store, backups included. The custodian records the log index of each
//! erasure, so that a receipt from before it (an earlier life of the subject id) neither reads,
//! nor makes, nor destroys the key of a later one; custodians sharing a PostgreSQL key store
//! hear of each other's erasures at once.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError, Weak};

use clover_keys::KeyError;
use clover_model::Action;

use super::cache::{Cache, evict};
use super::{Custodian, LoggedAccess, store_error};

impl Custodian {
    /// Destroys the data key of a logged, allowed erasure's subject; whether there was one.
    pub async fn destroy_for(&self, access: &LoggedAccess) -> Result<bool, KeyError> {
        Self::check(access, &[Action::Erase])?;
        self.check_not_before_erasure(access)?;
        let hash = &access.subject_hash;
        evict(&self.cache, hash);
        let log_index = i64::try_from(access.log_index).unwrap_or(i64::MAX);
        let deleted = self.db.destroy(hash, log_index).await.map_err(store_error("destroying a data key"))?;
        // Anything unwrapped while the row was being deleted is not cached either.
        forget_erased(&self.cache, &self.erasures, hash, access.log_index);
        self.db.after_erasure(hash, access.log_index).await;
        self.record(access, false);
        Ok(deleted > 0)
    }

    /// Refuses an access logged before the subject's last erasure: a receipt from an earlier
    /// life of the subject id neither reads, nor makes, nor destroys the key of a later one.
    pub(super) fn check_not_before_erasure(&self, access: &LoggedAccess) -> Result<(), KeyError> {
        let erasures = self.erasures.lock().unwrap_or_else(PoisonError::into_inner);
        match erasures.get(&access.subject_hash) {
            Some(&erased) if access.log_index <= erased => Err(KeyError::Receipt(format!(
                "log entry {} is from before the subject's erasure at entry {erased}",
                access.log_index
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses an access logged before an erasure by another custodian on the same key store,
    /// not yet heard of here.
    pub(super) async fn check_not_before_stored_erasure(&self, access: &LoggedAccess) -> Result<(), KeyError> {
        let erased = self.db.erasure(&access.subject_hash).await.map_err(store_error("reading erasures"))?;
        if let Some(erased) = erased.and_then(|e| u64::try_from(e).ok()) {
            forget_erased(&self.cache, &self.erasures, &access.subject_hash, erased);
            self.check_not_before_erasure(access)?;
        }
        Ok(())
    }
}

/// Records an erasure at `log_index` and drops the subject's keys from the cache.
pub(super) fn forget_erased(cache: &Mutex<Cache>, erasures: &Mutex<HashMap<String, u64>>, hash: &str, log_index: u64) {
    {
        let mut erasures = erasures.lock().unwrap_or_else(PoisonError::into_inner);
        let erased = erasures.entry(hash.to_owned()).or_default();
        *erased = (*erased).max(log_index);
    }
    evict(cache, hash);
}

/// Where the erasures that other custodians on a shared key store announce are applied: this
/// custodian's cache and record of erasures, for as long as it lives.
pub(crate) struct ErasureNotices {
    pub(super) cache: Weak<Mutex<Cache>>,
    pub(super) erasures: Weak<Mutex<HashMap<String, u64>>>,
}

impl ErasureNotices {
    /// Whether the custodian is still there.
    pub(crate) fn is_open(&self) -> bool {
        self.cache.strong_count() > 0
    }

    /// Applies the erasure of `hash` at `log_index`; false once the custodian is gone.
    pub(crate) fn apply(&self, hash: &str, log_index: u64) -> bool {
        let (Some(cache), Some(erasures)) = (self.cache.upgrade(), self.erasures.upgrade()) else { return false };
        forget_erased(&cache, &erasures, hash, log_index);
        true
    }
}
