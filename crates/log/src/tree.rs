//! What every process holding the log keeps in memory: the tree's hashes, the latest signed
//! checkpoint, indexes by kind and index key, and the appends waiting for their index.
//!
//! The hashes of every complete subtree are kept, one vector per height, so that a proof is a
//! series of lookups; tiles are the heights 0, 8, 16, ... They are recomputed from the entries
//! when the log is opened.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use clover_event::{Entry, EventKind};
use clover_tlog::hash::{Hash, leaf_hash, node_hash};
use clover_tlog::note::NoteSigner;
use clover_tlog::tree::{ProofError, Subtrees};
use tokio::sync::oneshot;

use crate::error::LogError;

pub(crate) struct Tree {
    /// `heights[h]` holds the hashes of the complete subtrees of 2^h leaves, left to right.
    pub(crate) heights: Vec<Vec<Hash>>,
    /// Where each entry starts in a directory's entries file (each after its two-byte length);
    /// one more at the end.
    pub(crate) offsets: Vec<u64>,
    /// The latest signed checkpoint note, and its size.
    checkpoint: Arc<str>,
    checkpoint_size: u64,
    /// Entry indexes by their index key: a format 1 entry's subject hash, a format 2 entry's
    /// annex commitment.
    by_key: KeyIndex,
    /// The index of the latest entry of each kind.
    last_by_kind: HashMap<EventKind, u64>,
}

impl Tree {
    pub(crate) fn new() -> Self {
        Self {
            heights: Vec::new(),
            offsets: vec![0],
            checkpoint: Arc::from(""),
            checkpoint_size: 0,
            by_key: KeyIndex::default(),
            last_by_kind: HashMap::new(),
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.heights.first().map_or(0, |l| l.len() as u64)
    }

    pub(crate) fn checkpoint(&self) -> &Arc<str> {
        &self.checkpoint
    }

    pub(crate) fn checkpoint_size(&self) -> u64 {
        self.checkpoint_size
    }

    /// Takes `note`, a checkpoint of `size` entries, as the latest unless a later one is held.
    pub(crate) fn offer_checkpoint(&mut self, note: Arc<str>, size: u64) {
        if size >= self.checkpoint_size && size <= self.size() {
            self.checkpoint = note;
            self.checkpoint_size = size;
        }
    }

    /// Adds the next entry: its leaf hash, its place in the entries file, and the indexes by
    /// kind and subject. Returns its leaf hash.
    pub(crate) fn add(&mut self, entry: &[u8]) -> Hash {
        self.add_indexed(entry, Entry::decode(entry).ok().map(|e| (e.kind(), e.index_key().map(ToOwned::to_owned))))
    }

    /// [`Tree::add`] of an entry whose kind and subject are known already (`None`: not an event).
    pub(crate) fn add_indexed(&mut self, entry: &[u8], index_by: Option<(EventKind, Option<String>)>) -> Hash {
        let index = self.size();
        if let Some((kind, subject)) = index_by {
            self.last_by_kind.insert(kind, index);
            if let Some(subject) = subject {
                self.by_key.add(subject, index);
            }
        }
        let end = self.offsets.last().copied().unwrap_or(0) + 2 + entry.len() as u64;
        self.offsets.push(end);
        let leaf = leaf_hash(entry);
        self.push(leaf);
        leaf
    }

    fn push(&mut self, leaf: Hash) {
        let mut height = 0;
        let mut hash = leaf;
        loop {
            if self.heights.len() <= height {
                self.heights.push(Vec::new());
            }
            let Some(hashes) = self.heights.get_mut(height) else { return };
            hashes.push(hash);
            let len = hashes.len();
            if len % 2 == 1 {
                return;
            }
            let (Some(left), Some(right)) = (hashes.get(len - 2), hashes.get(len - 1)) else { return };
            hash = node_hash(left, right);
            height += 1;
        }
    }

    pub(crate) fn last_of_kind(&self, kind: EventKind) -> Option<u64> {
        self.last_by_kind.get(&kind).copied()
    }

    pub(crate) fn entries_about(&self, key: &str) -> Vec<u64> {
        self.by_key.get(key)
    }
}

impl Subtrees for Tree {
    fn subtree(&self, start: u64, height: u32) -> Result<Hash, ProofError> {
        let missing = ProofError::Missing { start, height };
        let index = usize::try_from(start >> height).map_err(|_| missing.clone())?;
        self.heights.get(height as usize).and_then(|h| h.get(index)).copied().ok_or(missing)
    }
}

/// A signed checkpoint note of a tree of `size` entries with this `root`
/// (c2sp.org/tlog-checkpoint, signed as a c2sp.org/signed-note).
pub(crate) fn checkpoint_note(
    origin: &str,
    signer: &dyn NoteSigner,
    size: u64,
    root: Hash,
) -> Result<String, LogError> {
    let body = clover_tlog::checkpoint::Checkpoint { origin: origin.to_owned(), size, root }.to_text();
    let line = signer.signature_line(&body)?;
    Ok(format!("{body}\n{line}"))
}

/// An append of this process waiting for its index.
struct Waiter {
    /// The leaf hash of the bytes this process handed in, computed here before they left it: the
    /// entry committed under the append's token must have it.
    leaf: Hash,
    /// Where its answer goes.
    done: oneshot::Sender<Result<u64, LogError>>,
}

/// An entry just added to the tree, as its appender's process recognises it.
pub(crate) struct Committed {
    /// The token it was appended under.
    pub(crate) token: i64,
    /// Its index.
    pub(crate) index: u64,
    /// The leaf hash of its bytes as committed (in a shared log, as the database holds them).
    pub(crate) leaf: Hash,
}

/// What the log's handle, its sequencer and its followers share.
pub(crate) struct Shared {
    pub(crate) origin: String,
    tree: RwLock<Tree>,
    /// This process's appends not yet answered, by token.
    waiting: Mutex<HashMap<i64, Waiter>>,
    /// This process's appends in the tree, with their indexes, that no checkpoint held here
    /// covers yet (only where appends wait for a checkpoint).
    uncovered: Mutex<Vec<(i64, u64)>>,
    /// Whether an append is answered only once a checkpoint held here covers it (a log shared by
    /// several gateways), or as soon as it is durable (a directory's log).
    wait_for_checkpoint: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn new(origin: String, tree: Tree, wait_for_checkpoint: bool) -> Self {
        Self {
            origin,
            tree: RwLock::new(tree),
            waiting: Mutex::new(HashMap::new()),
            uncovered: Mutex::new(Vec::new()),
            wait_for_checkpoint,
        }
    }

    pub(crate) fn tree(&self) -> RwLockReadGuard<'_, Tree> {
        self.tree.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn tree_mut(&self) -> RwLockWriteGuard<'_, Tree> {
        self.tree.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// A checkpoint of the whole tree as it is now, signed.
    pub(crate) fn sign_current(&self, signer: &dyn NoteSigner) -> Result<(u64, String), LogError> {
        let (size, root) = {
            let tree = self.tree();
            (tree.size(), clover_tlog::tree::root(&*tree, tree.size())?)
        };
        Ok((size, checkpoint_note(&self.origin, signer, size, root)?))
    }

    /// Registers an append of this process under `token`, of an entry whose leaf hash is `leaf`;
    /// its answer arrives on the receiver.
    pub(crate) fn wait(&self, token: i64, leaf: Hash) -> oneshot::Receiver<Result<u64, LogError>> {
        let (done, wait) = oneshot::channel();
        lock(&self.waiting).insert(token, Waiter { leaf, done });
        wait
    }

    /// Forgets an append that will not be answered (its caller gave up).
    pub(crate) fn forget(&self, token: i64) {
        lock(&self.waiting).remove(&token);
    }

    /// Answers the appends of this process among `done` (entries just added to the tree) and,
    /// where appends wait for a checkpoint, among those added before that the checkpoint held
    /// now covers.
    ///
    /// An append is matched to its entry by token, and answered with its index only if the
    /// entry committed is the one it handed in: a token is no proof of what was committed under
    /// it (whoever can write a shared log's database can rewrite an entry between its hand-in
    /// and its commit), so an entry whose leaf hash differs from the one its appender computed
    /// fails that append with [`LogError::Substituted`], at once, checkpoint or not.
    pub(crate) fn answer(&self, done: Vec<Committed>) {
        let mut waiting = lock(&self.waiting);
        let mut matched = Vec::new();
        for committed in done {
            let Some(waiter) = waiting.get(&committed.token) else { continue };
            if waiter.leaf == committed.leaf {
                matched.push((committed.token, committed.index));
                continue;
            }
            let (index, appended) = (committed.index, waiter.leaf);
            tracing::error!(
                index,
                token = committed.token,
                appended = %appended,
                committed = %committed.leaf,
                "the log entry committed under this process's token is not the one it appended: the log's \
                 database was tampered with; the append fails"
            );
            if let Some(waiter) = waiting.remove(&committed.token) {
                let _ = waiter.done.send(Err(LogError::Substituted { index, appended, committed: committed.leaf }));
            }
        }
        if !self.wait_for_checkpoint {
            for (token, index) in matched {
                if let Some(waiter) = waiting.remove(&token) {
                    let _ = waiter.done.send(Ok(index));
                }
            }
            return;
        }
        let covered = self.tree().checkpoint_size();
        let mut uncovered = lock(&self.uncovered);
        uncovered.extend(matched);
        uncovered.retain(|&(token, index)| {
            if index >= covered {
                return true;
            }
            if let Some(waiter) = waiting.remove(&token) {
                let _ = waiter.done.send(Ok(index));
            }
            false
        });
    }

    /// Refuses every append of this process still waiting.
    pub(crate) fn refuse_all(&self, error: impl Fn() -> LogError) {
        for (_, waiter) in lock(&self.waiting).drain() {
            let _ = waiter.done.send(Err(error()));
        }
    }

    /// Refuses the appends of this process among `tokens`.
    pub(crate) fn refuse(&self, tokens: impl IntoIterator<Item = i64>, error: impl Fn() -> LogError) {
        let mut waiting = lock(&self.waiting);
        for token in tokens {
            if let Some(waiter) = waiting.remove(&token) {
                let _ = waiter.done.send(Err(error()));
            }
        }
    }
}

/// Entry indexes by index key, compactly: every process holding the log keeps one key per
/// entry about someone (a format 2 entry's annex commitment is its own), so this is most of the
/// log's memory after the tree's hashes. A key of 64 lowercase hex digits (a subject hash, an
/// annex commitment: every key Clover writes) is kept as its 32 bytes, any other as text; one
/// index is kept inline, more in a vector.
#[derive(Default)]
struct KeyIndex {
    hashes: HashMap<[u8; 32], Indexes>,
    other: BTreeMap<String, Indexes>,
}

/// The indexes of the entries of one key, in order.
enum Indexes {
    One(u64),
    Many(Vec<u64>),
}

impl Indexes {
    fn push(&mut self, index: u64) {
        match self {
            Self::One(first) => *self = Self::Many(vec![*first, index]),
            Self::Many(all) => all.push(index),
        }
    }

    fn to_vec(&self) -> Vec<u64> {
        match self {
            Self::One(index) => vec![*index],
            Self::Many(all) => all.clone(),
        }
    }
}

/// The 32 bytes of `key` if it is 64 lowercase hex digits.
fn hash_key(key: &str) -> Option<[u8; 32]> {
    if !key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(key, &mut bytes).ok()?;
    Some(bytes)
}

impl KeyIndex {
    fn add(&mut self, key: String, index: u64) {
        match hash_key(&key) {
            Some(hash) => match self.hashes.get_mut(&hash) {
                Some(indexes) => indexes.push(index),
                None => {
                    self.hashes.insert(hash, Indexes::One(index));
                }
            },
            None => match self.other.get_mut(&key) {
                Some(indexes) => indexes.push(index),
                None => {
                    self.other.insert(key, Indexes::One(index));
                }
            },
        }
    }

    fn get(&self, key: &str) -> Vec<u64> {
        let found = match hash_key(key) {
            Some(hash) => self.hashes.get(&hash),
            None => self.other.get(key),
        };
        found.map(Indexes::to_vec).unwrap_or_default()
    }
}

#[cfg(test)]
mod key_index_tests {
    use super::KeyIndex;

    #[test]
    fn keys_find_their_entries_in_order_whatever_their_form() {
        let mut index = KeyIndex::default();
        let hash = "ab".repeat(32);
        let upper = "AB".repeat(32);
        for (i, key) in [&hash, "s-1", &hash, &upper, "s-1", &hash].into_iter().enumerate() {
            index.add(key.to_owned(), i as u64);
        }
        assert_eq!(index.get(&hash), [0, 2, 5]);
        assert_eq!(index.get("s-1"), [1, 4]);
        assert_eq!(index.get(&upper), [3], "upper-case hex is another key, kept as text");
        assert!(index.get(&"cd".repeat(32)).is_empty());
        assert!(index.get("").is_empty());
    }
}
