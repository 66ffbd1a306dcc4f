//! The caches of keys the custodian holds in memory: unwrapped data keys, and subjects' derived
//! metadata keys (from which their tag keys are derived, so that these are cached with them).
//! Both are bounded by the same [`CacheOptions`], in size and in age (off with a size of 0);
//! they spare the KEK backend and the key store on hot subjects.
//!
//! When a cached key may be trusted is erasure's call ([`super::erasure`]), and the cache only
//! keeps what that needs: each entry remembers the subject's last erasure known when its key was
//! read, and is a miss once another is known; an erasure evicts the subject and bumps the
//! cache's epoch, so that a key being read while the erasure runs is not cached; and
//! [`KeyCache::flush`] drops everything, which a shared key store's erasure listener does at each
//! (re)connect.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use clover_keys::DataKey;
use zeroize::Zeroizing;

/// The size and age bounds of the custodian's key caches (data keys; metadata and tag keys).
#[derive(Debug, Clone, Copy)]
pub struct CacheOptions {
    /// The most keys each cache holds; 0 turns the caches off.
    pub size: usize,
    /// How long a key stays.
    pub ttl: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self { size: 10_000, ttl: Duration::from_secs(60) }
    }
}

/// What a key read from the key store may be cached under, taken before the read: the cache's
/// epoch (a key read across an erasure is not cached) and the subject's last erasure known then
/// (a hit counts only while it is still the last).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    epoch: u64,
    erased: Option<u64>,
}

/// The caches.
pub(crate) struct KeyCache {
    options: CacheOptions,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    /// Subjects' data keys.
    data: Bounded,
    /// Subjects' metadata keys (derived, no receipt needed).
    metadata: Bounded,
    /// Bumped by every erasure and flush: a key read across one is not cached.
    epoch: u64,
}

/// One cache: keys by subject hash, the oldest dropped past the size, each a miss past its age.
#[derive(Default)]
struct Bounded {
    entries: HashMap<String, Entry>,
    /// Insertions, oldest first (a subject cached again appears twice; the stale one is skipped).
    order: VecDeque<(String, Instant)>,
}

struct Entry {
    key: Zeroizing<[u8; 32]>,
    at: Instant,
    /// The subject's last erasure known when the key was read.
    erased: Option<u64>,
}

impl Bounded {
    /// The subject's key, if cached, not expired, and no erasure of theirs has been heard of
    /// since it was read (`erased` is their last erasure known now).
    fn get(&mut self, options: &CacheOptions, subject: &str, erased: Option<u64>) -> Option<DataKey> {
        self.sweep(options);
        let entry = self.entries.get(subject)?;
        if entry.at.elapsed() > options.ttl || entry.erased != erased {
            self.entries.remove(subject);
            return None;
        }
        Some(DataKey::from_bytes(entry.key.clone()))
    }

    fn insert(&mut self, options: &CacheOptions, subject: &str, key: Zeroizing<[u8; 32]>, erased: Option<u64>) {
        let at = Instant::now();
        self.entries.insert(subject.to_owned(), Entry { key, at, erased });
        self.order.push_back((subject.to_owned(), at));
        self.sweep(options);
    }

    /// Drops the oldest entries while there are too many, or they are expired.
    fn sweep(&mut self, options: &CacheOptions) {
        while let Some((oldest, at)) = self.order.front() {
            let full = self.entries.len() > options.size || self.order.len() > 2 * options.size;
            if !full && at.elapsed() <= options.ttl {
                break;
            }
            if self.entries.get(oldest).is_some_and(|entry| entry.at == *at) {
                self.entries.remove(oldest);
            }
            self.order.pop_front();
        }
    }

    fn remove(&mut self, subject: &str) {
        self.entries.remove(subject);
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }
}

impl KeyCache {
    pub(crate) fn new(options: CacheOptions) -> Self {
        Self { options, held: Mutex::new(Held::default()) }
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What a key about to be read may be cached under: the epoch now, then the subject's last
    /// erasure known (`erased`), in that order, so that an erasure between the two keeps the
    /// key out.
    pub(crate) fn ticket(&self, erased: impl FnOnce() -> Option<u64>) -> Ticket {
        let epoch = self.held().epoch;
        Ticket { epoch, erased: erased() }
    }

    /// The subject's data key, if cached, not expired and read since their last erasure
    /// (`erased`, as known now).
    pub(crate) fn key(&self, subject: &str, erased: Option<u64>) -> Option<DataKey> {
        self.held().data.get(&self.options, subject, erased)
    }

    /// Caches the subject's data key, unless an erasure or a flush ran since `ticket` was taken
    /// (before the key was read).
    pub(crate) fn insert_key(&self, subject: &str, key: &DataKey, ticket: Ticket) {
        if self.options.size == 0 {
            return;
        }
        let mut held = self.held();
        if held.epoch == ticket.epoch {
            held.data.insert(&self.options, subject, Zeroizing::new(*key.expose()), ticket.erased);
        }
    }

    /// The subject's metadata key, as [`KeyCache::key`].
    pub(crate) fn metadata_key(&self, subject: &str, erased: Option<u64>) -> Option<DataKey> {
        self.held().metadata.get(&self.options, subject, erased)
    }

    /// Caches the subject's metadata key, as [`KeyCache::insert_key`].
    pub(crate) fn insert_metadata_key(&self, subject: &str, key: &Zeroizing<[u8; 32]>, ticket: Ticket) {
        if self.options.size == 0 {
            return;
        }
        let mut held = self.held();
        if held.epoch == ticket.epoch {
            held.metadata.insert(&self.options, subject, key.clone(), ticket.erased);
        }
    }

    /// Drops a subject's keys, and keeps any read meanwhile out.
    pub(crate) fn evict(&self, subject: &str) {
        let mut held = self.held();
        held.epoch += 1;
        held.data.remove(subject);
        held.metadata.remove(subject);
    }

    /// Drops every key, and keeps any read meanwhile out.
    pub(crate) fn flush(&self) {
        let mut held = self.held();
        held.epoch += 1;
        held.data.clear();
        held.metadata.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> DataKey {
        DataKey::from_bytes(Zeroizing::new([byte; 32]))
    }

    fn cache(size: usize, ttl: Duration) -> KeyCache {
        KeyCache::new(CacheOptions { size, ttl })
    }

    #[test]
    fn an_entry_expires() {
        let cache = cache(10, Duration::from_millis(50));
        cache.insert_key("s-1", &key(1), cache.ticket(|| None));
        cache.insert_metadata_key("s-1", &Zeroizing::new([2; 32]), cache.ticket(|| None));
        assert_eq!(cache.key("s-1", None).map(|k| *k.expose()), Some([1; 32]));
        assert_eq!(cache.metadata_key("s-1", None).map(|k| *k.expose()), Some([2; 32]));
        std::thread::sleep(Duration::from_millis(80));
        assert!(cache.key("s-1", None).is_none(), "a data key outlived its time to live");
        assert!(cache.metadata_key("s-1", None).is_none(), "a metadata key outlived its time to live");
        // Expired entries are dropped, not only hidden.
        let held = cache.held();
        assert!(held.data.entries.is_empty() && held.metadata.entries.is_empty());
    }

    #[test]
    fn each_cache_holds_at_most_its_size() {
        let cache = cache(3, Duration::from_secs(60));
        for i in 0..10u8 {
            cache.insert_key(&format!("s-{i}"), &key(i), cache.ticket(|| None));
            cache.insert_metadata_key(&format!("s-{i}"), &Zeroizing::new([i; 32]), cache.ticket(|| None));
            // The same subject again does not grow the order past its bound either.
            cache.insert_key("s-9", &key(9), cache.ticket(|| None));
        }
        let held = cache.held();
        assert!(held.data.entries.len() <= 3 && held.data.order.len() <= 6);
        assert!(held.metadata.entries.len() <= 3 && held.metadata.order.len() <= 6);
        drop(held);
        assert!(cache.key("s-0", None).is_none(), "the oldest went first");
        assert!(cache.key("s-9", None).is_some() && cache.metadata_key("s-9", None).is_some());
    }

    #[test]
    fn a_size_of_zero_caches_nothing() {
        let cache = cache(0, Duration::from_secs(60));
        cache.insert_key("s-1", &key(1), cache.ticket(|| None));
        cache.insert_metadata_key("s-1", &Zeroizing::new([1; 32]), cache.ticket(|| None));
        assert!(cache.key("s-1", None).is_none() && cache.metadata_key("s-1", None).is_none());
    }

    #[test]
    fn a_hit_counts_only_until_another_erasure_is_known() {
        let cache = cache(10, Duration::from_secs(60));
        cache.insert_key("s-1", &key(1), cache.ticket(|| Some(4)));
        cache.insert_metadata_key("s-1", &Zeroizing::new([1; 32]), cache.ticket(|| Some(4)));
        assert!(cache.key("s-1", Some(4)).is_some() && cache.metadata_key("s-1", Some(4)).is_some());
        assert!(cache.key("s-1", Some(9)).is_none() && cache.metadata_key("s-1", Some(9)).is_none());
        // And the entry is gone, even for a caller with the old view.
        assert!(cache.key("s-1", Some(4)).is_none() && cache.metadata_key("s-1", Some(4)).is_none());
    }

    #[test]
    fn a_key_read_across_an_eviction_or_a_flush_is_not_cached() {
        let cache = cache(10, Duration::from_secs(60));
        let ticket = cache.ticket(|| None);
        cache.evict("s-2");
        cache.insert_key("s-1", &key(1), ticket);
        assert!(cache.key("s-1", None).is_none());

        cache.insert_key("s-1", &key(1), cache.ticket(|| None));
        cache.insert_metadata_key("s-1", &Zeroizing::new([1; 32]), cache.ticket(|| None));
        let ticket = cache.ticket(|| None);
        cache.flush();
        assert!(cache.key("s-1", None).is_none() && cache.metadata_key("s-1", None).is_none());
        cache.insert_metadata_key("s-1", &Zeroizing::new([1; 32]), ticket);
        assert!(cache.metadata_key("s-1", None).is_none());
    }
}
