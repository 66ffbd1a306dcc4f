//! The cache of unwrapped data keys, and of subjects' derived metadata keys: bounded in size
//! and age (off with a size of 0), it spares the KEK backend on hot subjects. An erasure evicts
//! the subject and bumps the cache's epoch, so that a key being unwrapped while the erasure runs
//! is not cached.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use clover_keys::DataKey;
use zeroize::Zeroizing;

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

/// The cache.
pub(crate) struct KeyCache {
    options: CacheOptions,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    keys: HashMap<String, (Zeroizing<[u8; 32]>, Instant)>,
    order: VecDeque<(String, Instant)>,
    /// Subjects' metadata keys (derived, no receipt needed), cleared by erasure like the rest.
    metadata: HashMap<String, Zeroizing<[u8; 32]>>,
    /// Bumped by every erasure: a key unwrapped across an erasure is not cached.
    epoch: u64,
}

impl KeyCache {
    pub(crate) fn new(options: CacheOptions) -> Self {
        Self { options, held: Mutex::new(Held::default()) }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The subject's data key, if cached and not expired.
    pub(crate) fn key(&self, subject: &str) -> Option<DataKey> {
        let mut held = self.held();
        let (key, at) = held.keys.get(subject)?;
        if at.elapsed() > self.options.ttl {
            held.keys.remove(subject);
            return None;
        }
        Some(DataKey::from_bytes(key.clone()))
    }

    /// Caches the subject's data key, unless an erasure ran since [`KeyCache::epoch`] read
    /// `epoch` (before the key was unwrapped).
    pub(crate) fn insert_key(&self, subject: &str, key: &DataKey, epoch: u64) {
        if self.options.size == 0 {
            return;
        }
        let mut held = self.held();
        if held.epoch != epoch {
            return;
        }
        let at = Instant::now();
        held.keys.insert(subject.to_owned(), (Zeroizing::new(*key.expose()), at));
        held.order.push_back((subject.to_owned(), at));
        while held.keys.len() > self.options.size || held.order.len() > 2 * self.options.size {
            let Some((oldest, at)) = held.order.pop_front() else { break };
            if held.keys.get(&oldest).is_some_and(|(_, t)| *t == at) {
                held.keys.remove(&oldest);
            }
        }
    }

    /// The subject's metadata key, if cached.
    pub(crate) fn metadata_key(&self, subject: &str) -> Option<DataKey> {
        self.held().metadata.get(subject).map(|key| DataKey::from_bytes(key.clone()))
    }

    /// Caches the subject's metadata key, unless an erasure ran since `epoch` was read.
    pub(crate) fn insert_metadata_key(&self, subject: &str, key: &Zeroizing<[u8; 32]>, epoch: u64) {
        if self.options.size == 0 {
            return;
        }
        let mut held = self.held();
        if held.epoch == epoch {
            if held.metadata.len() >= self.options.size {
                held.metadata.clear();
            }
            held.metadata.insert(subject.to_owned(), key.clone());
        }
    }

    /// The current epoch: read it before unwrapping a key that will be cached.
    pub(crate) fn epoch(&self) -> u64 {
        self.held().epoch
    }

    /// Drops a subject's keys, and keeps any unwrapped meanwhile out.
    pub(crate) fn evict(&self, subject: &str) {
        let mut held = self.held();
        held.epoch += 1;
        held.keys.remove(subject);
        held.metadata.remove(subject);
    }
}
