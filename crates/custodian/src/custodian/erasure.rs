//! Erasure: destroying a subject's data key (and metadata salt) shreds their ciphertext in every
//! copy of the data store, backups included. The custodian records the log index of each
//! erasure, so that a receipt from before it (an earlier life of the subject id) neither reads,
//! nor makes, nor destroys the key of a later one.
//!
//! Erasures also decide when a cached key may be trusted ([`super::cache`]). Custodians sharing
//! a PostgreSQL key store (the gateways of a region) each cache keys, so each must hear of the
//! others' erasures:
//!
//! - the erasing transaction itself sends the notice (`pg_notify`, delivered exactly when it
//!   commits, never for one that rolls back);
//! - every listener, at each (re)connect, flushes its custodian's caches and reloads the
//!   `erasures` table once it listens, so that a notice sent while it was away is not missed;
//! - while a listener is not connected, its custodian trusts no cache: every key is read from
//!   the key store (which has none for an erased subject), and a receipt is checked against the
//!   stored erasures;
//! - a cache hit counts only if no erasure of the subject has been heard of since the key was
//!   read, and every cache is bounded in size and age.
//!
//! A SQLite key store has one custodian: it hears every erasure, its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use clover_keys::{DataKey, KeyError};
use zeroize::Zeroizing;

use super::access::LoggedAccess;
use super::cache::{CacheOptions, KeyCache, Ticket};
use super::store::{ErasureListener, KeyStoreBackend, failed};

/// The log index of each erased subject's last erasure (kept in the key store, loaded at open
/// and at each reconnect of the listener), and the caches it decides on.
pub(crate) struct Erasures {
    at: Mutex<HashMap<String, u64>>,
    cache: KeyCache,
    /// Whether every erasure made on the key store is heard of here: always with SQLite (there
    /// are no other custodians); on PostgreSQL, while the listener is connected.
    heard: AtomicBool,
}

impl Erasures {
    /// The erasures recorded in `db`; from now on, those of other custodians sharing it too (the
    /// listener's first connection is tried before this returns).
    pub(crate) async fn load(db: &dyn KeyStoreBackend, options: CacheOptions) -> Result<Arc<Self>, KeyError> {
        let at = db.erasures().await.map_err(failed("reading erasures"))?.into_iter().map(stored).collect();
        let erasures =
            Arc::new(Self { at: Mutex::new(at), cache: KeyCache::new(options), heard: AtomicBool::new(!db.shared()) });
        db.follow_erasures(Box::new(ErasureNotices(Arc::downgrade(&erasures)))).await;
        Ok(erasures)
    }

    fn at(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.at.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The subject's last erasure known here.
    pub(crate) fn last(&self, hash: &str) -> Option<u64> {
        self.at().get(hash).copied()
    }

    /// Whether every erasure made on the key store is heard of here now (see the module docs).
    pub(crate) fn heard(&self) -> bool {
        self.heard.load(Ordering::Acquire)
    }

    /// Records an erasure at `log_index` and drops the subject's keys from the caches.
    fn forget(&self, hash: &str, log_index: u64) {
        {
            let mut at = self.at();
            let erased = at.entry(hash.to_owned()).or_default();
            *erased = (*erased).max(log_index);
        }
        self.cache.evict(hash);
    }

    /// Refuses an access logged before the subject's last erasure: a receipt from an earlier
    /// life of the subject id neither reads, nor makes, nor destroys the key of a later one.
    pub(crate) fn check(&self, access: &LoggedAccess) -> Result<(), KeyError> {
        match self.last(&access.subject_hash) {
            Some(erased) if access.log_index <= erased => Err(KeyError::Receipt(format!(
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
        }
        self.check(access)
    }

    /// [`Erasures::check`]; while erasures may go unheard (the listener is not connected),
    /// [`Erasures::check_stored`].
    pub(crate) async fn check_now(&self, db: &dyn KeyStoreBackend, access: &LoggedAccess) -> Result<(), KeyError> {
        self.check(access)?;
        if !self.heard() {
            self.check_stored(db, access).await?;
        }
        Ok(())
    }

    /// What a key about to be read from the key store may be cached under; `None` (not cached)
    /// while erasures may go unheard.
    pub(crate) fn ticket(&self, hash: &str) -> Option<Ticket> {
        if !self.heard() {
            return None;
        }
        Some(self.cache.ticket(|| self.last(hash)))
    }

    /// The subject's cached data key: none while erasures may go unheard, nor once an erasure
    /// of theirs was heard of since it was read.
    pub(crate) fn cached_key(&self, hash: &str) -> Option<DataKey> {
        if !self.heard() {
            return None;
        }
        self.cache.key(hash, self.last(hash))
    }

    /// Caches the subject's data key, read under `ticket`.
    pub(crate) fn cache_key(&self, hash: &str, key: &DataKey, ticket: Option<Ticket>) {
        if let Some(ticket) = ticket {
            self.cache.insert_key(hash, key, ticket);
        }
    }

    /// The subject's cached metadata key, as [`Erasures::cached_key`].
    pub(crate) fn cached_metadata_key(&self, hash: &str) -> Option<DataKey> {
        if !self.heard() {
            return None;
        }
        self.cache.metadata_key(hash, self.last(hash))
    }

    /// Caches the subject's metadata key, read under `ticket`.
    pub(crate) fn cache_metadata_key(&self, hash: &str, key: &Zeroizing<[u8; 32]>, ticket: Option<Ticket>) {
        if let Some(ticket) = ticket {
            self.cache.insert_metadata_key(hash, key, ticket);
        }
    }

    /// Destroys the data key and metadata salt of an allowed erasure's subject, recording the
    /// erasure (and, on a shared key store, telling the other custodians in the same
    /// transaction); whether there was a key.
    pub(crate) async fn destroy(&self, db: &dyn KeyStoreBackend, access: &LoggedAccess) -> Result<bool, KeyError> {
        self.check_now(db, access).await?;
        let hash = &access.subject_hash;
        self.cache.evict(hash);
        let log_index = i64::try_from(access.log_index).unwrap_or(i64::MAX);
        let deleted = db.destroy(hash, log_index).await.map_err(failed("destroying a data key"))?;
        // Anything read while the row was being deleted is not cached either.
        self.forget(hash, access.log_index);
        db.after_erasure().await;
        Ok(deleted > 0)
    }
}

/// A stored erasure: (subject hash, log index).
fn stored((subject, index): (String, i64)) -> (String, u64) {
    (subject, u64::try_from(index).unwrap_or_default())
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

    fn connected(&self, stored_erasures: Vec<(String, i64)>) -> bool {
        let Some(erasures) = self.0.upgrade() else { return false };
        {
            let mut at = erasures.at();
            for (subject, index) in stored_erasures.into_iter().map(stored) {
                let erased = at.entry(subject).or_default();
                *erased = (*erased).max(index);
            }
        }
        // Whatever was cached may have been erased while no notice was heard.
        erasures.cache.flush();
        erasures.heard.store(true, Ordering::Release);
        true
    }

    fn disconnected(&self) {
        if let Some(erasures) = self.0.upgrade() {
            erasures.heard.store(false, Ordering::Release);
        }
    }
}
