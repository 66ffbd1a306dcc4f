//! The cache of unwrapped data keys: bounded in size and age (off with a size of 0), it spares
//! the KEK backend on hot subjects. An erasure evicts the subject and bumps the cache's epoch, so
//! that a key being unwrapped while the erasure runs is not cached.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use clover_keys::DataKey;
use zeroize::Zeroizing;

use super::Custodian;

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

#[derive(Default)]
pub(super) struct Cache {
    keys: HashMap<String, (Zeroizing<[u8; 32]>, Instant)>,
    order: VecDeque<(String, Instant)>,
    /// Subjects' metadata keys (derived, no receipt needed), cleared by erasure like the rest.
    pub(super) metadata: HashMap<String, Zeroizing<[u8; 32]>>,
    /// Bumped by every erasure: a key unwrapped across an erasure is not cached.
    pub(super) epoch: u64,
}

impl Custodian {
    pub(super) fn cached(&self, subject: &str) -> Option<DataKey> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let (key, at) = cache.keys.get(subject)?;
        if at.elapsed() > self.cache_options.ttl {
            cache.keys.remove(subject);
            return None;
        }
        Some(DataKey::from_bytes(key.clone()))
    }

    pub(super) fn cache_insert(&self, subject: &str, key: &DataKey, epoch: u64) {
        if self.cache_options.size == 0 {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.epoch != epoch {
            return;
        }
        let at = Instant::now();
        cache.keys.insert(subject.to_owned(), (Zeroizing::new(*key.expose()), at));
        cache.order.push_back((subject.to_owned(), at));
        while cache.keys.len() > self.cache_options.size || cache.order.len() > 2 * self.cache_options.size {
            let Some((oldest, at)) = cache.order.pop_front() else { break };
            if cache.keys.get(&oldest).is_some_and(|(_, t)| *t == at) {
                cache.keys.remove(&oldest);
            }
        }
    }

    pub(super) fn cache_epoch(&self) -> u64 {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).epoch
    }
}

/// Drops a subject's keys from the cache, and keeps any unwrapped meanwhile out of it.
pub(super) fn evict(cache: &Mutex<Cache>, hash: &str) {
    let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
    cache.epoch += 1;
    cache.keys.remove(hash);
    cache.metadata.remove(hash);
}
