//! The log at run time: a directory (or a PostgreSQL database), a sequencer that group-commits,
//! and reads.
//!
//! In a directory, the embedded default, the directory holds `entries` (every entry, back to back, each as a big-endian `u16` length
//! and its bytes: the concatenation of all entry bundles) and `checkpoint.0` and `checkpoint.1`
//! (the latest signed checkpoints, overwritten in place by turns, so that a crash while one is
//! written leaves the other whole). Hashes are recomputed from the entries when the log is
//! opened and kept in memory: the hashes of every complete subtree, one vector per height, so
//! that a proof is a series of lookups; tiles are the heights 0, 8, 16, ...
//!
//! Appends go to one sequencer thread. It takes every append waiting, writes them with one
//! `write`, makes them durable with one `fdatasync`, updates the tree, signs a checkpoint, and
//! only then acknowledges each append with its index. An append is never acknowledged before it
//! is durable; a crash loses only appends that were never acknowledged.
//!
//! In PostgreSQL several gateways share one log: see [`crate::postgres`].

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use clover_policy::Permit;
use tokio::sync::oneshot;

use crate::checkpoint::Checkpoint;
use crate::event::{Event, EventKind};
use crate::hash::{Hash, leaf_hash};
use crate::note::{Note, NoteSigner};
use crate::postgres::PgLog;
use crate::tile::{TILE_WIDTH, Tile, push_bundle_entry};
use crate::tree::{self, ProofError, Subtrees};

const ENTRIES_FILE: &str = "entries";
const CHECKPOINT_FILES: [&str; 2] = ["checkpoint.0", "checkpoint.1"];

/// An error of the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file of the log could not be read or written.
    #[error("log file {path:?}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The entries on disk do not match the last checkpoint this log signed.
    #[error("the log at {dir:?} does not match its last checkpoint: {detail}")]
    Inconsistent {
        /// The log directory.
        dir: PathBuf,
        /// What differs.
        detail: String,
    },
    /// An entry is larger than the 65535 bytes an entry bundle can hold.
    #[error("a log entry of {0} bytes is over the 65535-byte limit")]
    TooLarge(usize),
    /// The checkpoint signer (an HSM, say) failed.
    #[error("the checkpoint could not be signed: {0}")]
    Sign(String),
    /// The sequencer stopped (a write failed earlier, or the log is shutting down).
    #[error("the log sequencer is not running; appends are refused")]
    Stopped,
    /// No such tile, entry or proof in the current tree.
    #[error("{0}")]
    NotFound(String),
    /// A proof could not be made.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// The log's PostgreSQL database failed.
    #[error("log database: {0}")]
    Database(String),
}

/// Proof that an access was allowed and durably logged: what the key custodian asks for before
/// it unwraps a data key. Only [`Log::append_permitted`] makes one.
#[derive(Debug)]
pub struct Receipt {
    index: u64,
    entry_hash: Hash,
    entry: Arc<[u8]>,
    subject_hash: Option<String>,
    purpose: Option<String>,
    permit: Permit,
}

impl Receipt {
    /// The index of the logged entry.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The permit the entry records.
    pub fn permit(&self) -> &Permit {
        &self.permit
    }

    /// The RFC 6962 leaf hash of the logged entry.
    pub fn entry_hash(&self) -> &Hash {
        &self.entry_hash
    }

    /// [`Receipt::entry_hash`] in hex.
    pub fn entry_hash_hex(&self) -> String {
        self.entry_hash.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The logged entry's bytes, for a custodian in another process to check against the log.
    pub fn entry(&self) -> &[u8] {
        &self.entry
    }

    /// The subject as the logged entry names it (the log's keyed hash), if it names one.
    pub fn subject_hash(&self) -> Option<&str> {
        self.subject_hash.as_deref()
    }

    /// The purpose the logged access declared.
    pub fn purpose(&self) -> Option<&str> {
        self.purpose.as_deref()
    }
}

/// How the log runs.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// The most appends written in one batch.
    pub max_batch: usize,
    /// Sign a checkpoint after every batch (zero), or at most this often.
    pub checkpoint_interval: Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self { max_batch: 65_536, checkpoint_interval: Duration::ZERO }
    }
}

pub(crate) struct Tree {
    /// `heights[h]` holds the hashes of the complete subtrees of 2^h leaves, left to right.
    heights: Vec<Vec<Hash>>,
    /// Where each entry starts in the entries file; one more at the end (a directory's log only).
    offsets: Vec<u64>,
    /// The latest signed checkpoint note, and its size.
    checkpoint: Arc<str>,
    checkpoint_size: u64,
    /// Entry indexes by subject hash.
    by_subject: BTreeMap<String, Vec<u64>>,
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
            by_subject: BTreeMap::new(),
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

    /// Adds the next entry: its leaf hash, and the indexes by kind and subject.
    pub(crate) fn add(&mut self, entry: &[u8]) {
        let index = self.size();
        if let Ok(event) = Event::decode(entry) {
            self.index(index, event.kind, event.subject);
        }
        self.push(leaf_hash(entry));
    }

    fn index(&mut self, index: u64, kind: EventKind, subject: Option<String>) {
        self.last_by_kind.insert(kind, index);
        if let Some(subject) = subject {
            self.by_subject.entry(subject).or_default().push(index);
        }
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
            hash = crate::hash::node_hash(left, right);
            height += 1;
        }
    }
}

impl Subtrees for Tree {
    fn subtree(&self, start: u64, height: u32) -> Result<Hash, ProofError> {
        let missing = ProofError::Missing { start, height };
        let index = usize::try_from(start >> height).map_err(|_| missing.clone())?;
        self.heights.get(height as usize).and_then(|h| h.get(index)).copied().ok_or(missing)
    }
}

pub(crate) struct Shared {
    pub(crate) origin: String,
    pub(crate) tree: RwLock<Tree>,
}

impl Shared {
    pub(crate) fn tree(&self) -> std::sync::RwLockReadGuard<'_, Tree> {
        self.tree.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn tree_mut(&self) -> std::sync::RwLockWriteGuard<'_, Tree> {
        self.tree.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

enum Request {
    Append { entry: Vec<u8>, kind: EventKind, subject: Option<String>, done: oneshot::Sender<Result<u64, LogError>> },
}

/// Where the entries live and who sequences them.
#[derive(Clone)]
enum Backend {
    /// A directory and this process's sequencer thread.
    File { dir: PathBuf, sender: Sender<Request>, reader: Arc<File> },
    /// A PostgreSQL database, sequenced by whichever gateway leads.
    Postgres(Arc<PgLog>),
}

/// A transparency log in a directory or a PostgreSQL database.
#[derive(Clone)]
pub struct Log {
    shared: Arc<Shared>,
    backend: Backend,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("Log");
        match &self.backend {
            Backend::File { dir, .. } => out.field("dir", dir),
            Backend::Postgres(_) => out.field("store", &"postgres"),
        };
        out.field("size", &self.size()).finish()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |cause| LogError::Io { path: path.to_owned(), cause }
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, whose checkpoints `signer` signs under the
    /// name `origin`. Recovers from a crash: a partly written tail, never acknowledged, is cut.
    /// Refuses to open entries that do not match the last checkpoint signed.
    pub fn open(dir: &Path, signer: impl NoteSigner, options: LogOptions) -> Result<Self, LogError> {
        let signer: Box<dyn NoteSigner> = Box::new(signer);
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(ENTRIES_FILE);
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(io(&path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(&path))?;

        let origin = signer.name().to_owned();
        let mut tree = Tree::new();
        let mut at = 0usize;
        while let Some((len, rest)) = bytes.get(at..).and_then(|b| b.split_first_chunk::<2>()) {
            let len = usize::from(u16::from_be_bytes(*len));
            let Some(entry) = rest.get(..len).filter(|e| !e.is_empty()) else { break };
            tree.add(entry);
            at += 2 + len;
            tree.offsets.push(at as u64);
        }
        if at < bytes.len() {
            tracing::warn!(log = %dir.display(), cut = bytes.len() - at, "cutting an unacknowledged partial tail from the log");
            file.set_len(at as u64).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
        }
        file.seek(SeekFrom::End(0)).map_err(io(&path))?;

        // The entries must still match the last checkpoint this log signed: the larger of the
        // two slots that holds a checkpoint signed by this log's key.
        let verifier = signer.verifier();
        let previous = CHECKPOINT_FILES
            .iter()
            .filter_map(|name| std::fs::read_to_string(dir.join(name)).ok())
            .filter_map(|text| Note::parse(text.trim_end_matches('\0')).ok())
            .filter(|note| note.verify(&verifier).is_ok())
            .filter_map(|note| Checkpoint::parse(&note.text).ok())
            .filter(|c| c.origin == verifier.name)
            .max_by_key(|c| c.size);
        if let Some(previous) = previous {
            let inconsistent = |detail: String| LogError::Inconsistent { dir: dir.to_owned(), detail };
            if previous.size > tree.size() {
                return Err(inconsistent(format!(
                    "it signed a checkpoint of {} entries but holds {}",
                    previous.size,
                    tree.size()
                )));
            }
            if tree::root(&tree, previous.size)? != previous.root {
                return Err(inconsistent(format!("the first {} entries were changed", previous.size)));
            }
        }

        let reader = File::open(&path).map_err(io(&path))?;
        let mut slots = Vec::new();
        for name in CHECKPOINT_FILES {
            let slot = dir.join(name);
            slots.push((
                OpenOptions::new().write(true).create(true).truncate(false).open(&slot).map_err(io(&slot))?,
                slot,
            ));
        }
        let shared = Arc::new(Shared { origin, tree: RwLock::new(tree) });
        let mut checkpoints = CheckpointFiles { slots, next: 0 };
        sign(&shared, signer.as_ref(), &mut checkpoints)?;
        let (sender, receiver) = std::sync::mpsc::channel();
        let sequencer = Sequencer { shared: shared.clone(), file, path, signer, options, receiver, checkpoints };
        std::thread::Builder::new()
            .name("clover-log-sequencer".into())
            .spawn(move || sequencer.run())
            .map_err(io(dir))?;
        Ok(Self { shared, backend: Backend::File { dir: dir.to_owned(), sender, reader: Arc::new(reader) } })
    }

    /// Opens (creating its tables if needed) the log in the PostgreSQL database at `url`, shared
    /// with every other gateway of the region that opens it with the same checkpoint key. Refuses
    /// a database whose entries do not match the last checkpoint signed, or whose checkpoint this
    /// key did not sign.
    pub async fn open_postgres(url: &str, signer: impl NoteSigner, options: LogOptions) -> Result<Self, LogError> {
        let shared = Arc::new(Shared { origin: signer.name().to_owned(), tree: RwLock::new(Tree::new()) });
        let pg = PgLog::open(url, Box::new(signer), options, shared.clone()).await?;
        Ok(Self { shared, backend: Backend::Postgres(pg) })
    }

    /// Whether this process sequences the log now (always, for a log in a directory).
    pub fn is_sequencer(&self) -> bool {
        match &self.backend {
            Backend::File { .. } => true,
            Backend::Postgres(pg) => pg.is_leading(),
        }
    }

    /// The log's origin (the checkpoint key name).
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    fn tree(&self) -> std::sync::RwLockReadGuard<'_, Tree> {
        self.shared.tree()
    }

    /// The number of durable entries.
    pub fn size(&self) -> u64 {
        self.tree().size()
    }

    /// Appends an event and waits until it is durable; returns its index.
    pub async fn append(&self, event: &Event) -> Result<u64, LogError> {
        self.append_entry(event, event.encode()).await
    }

    async fn append_entry(&self, event: &Event, entry: Vec<u8>) -> Result<u64, LogError> {
        if entry.len() > usize::from(u16::MAX) {
            return Err(LogError::TooLarge(entry.len()));
        }
        match &self.backend {
            Backend::File { sender, .. } => {
                let (done, wait) = oneshot::channel();
                sender
                    .send(Request::Append { entry, kind: event.kind, subject: event.subject.clone(), done })
                    .map_err(|_| LogError::Stopped)?;
                wait.await.map_err(|_| LogError::Stopped)?
            }
            Backend::Postgres(pg) => pg.append(entry).await,
        }
    }

    /// Appends the event of an allowed access and returns the receipt the custodian asks for.
    pub async fn append_permitted(&self, event: &Event, permit: Permit) -> Result<Receipt, LogError> {
        let entry = event.encode();
        let entry_hash = leaf_hash(&entry);
        let kept: Arc<[u8]> = entry.as_slice().into();
        let index = self.append_entry(event, entry).await?;
        Ok(Receipt {
            index,
            entry_hash,
            entry: kept,
            subject_hash: event.subject.clone(),
            purpose: event.purpose.clone(),
            permit,
        })
    }

    /// The latest signed checkpoint note.
    pub fn checkpoint(&self) -> Arc<str> {
        self.tree().checkpoint.clone()
    }

    /// The latest signed checkpoint note and its size, read together.
    pub fn checkpoint_with_size(&self) -> (Arc<str>, u64) {
        let tree = self.tree();
        (tree.checkpoint.clone(), tree.checkpoint_size)
    }

    /// The size of the latest signed checkpoint.
    pub fn checkpoint_size(&self) -> u64 {
        self.tree().checkpoint_size
    }

    /// A tile or entry bundle of the current tree.
    pub async fn tile(&self, tile: &Tile) -> Result<Vec<u8>, LogError> {
        let not_found = || LogError::NotFound(format!("{} is beyond the log", tile.path()));
        let first = tile.index.checked_mul(TILE_WIDTH).ok_or_else(not_found)?;
        let end = first + u64::from(tile.width);
        if let Some(level) = tile.level {
            let tree = self.tree();
            let hashes = tree.heights.get(usize::from(level) * 8).ok_or_else(not_found)?;
            let range =
                usize::try_from(first).map_err(|_| not_found())?..usize::try_from(end).map_err(|_| not_found())?;
            let hashes = hashes.get(range).ok_or_else(not_found)?;
            return Ok(hashes.iter().flat_map(|h| h.0).collect());
        }
        if end > self.size() {
            return Err(not_found());
        }
        match &self.backend {
            Backend::File { dir, reader, .. } => {
                self.read_file(dir, reader, first, end).map_err(|e| e.unwrap_or_else(not_found))
            }
            Backend::Postgres(pg) => {
                let mut bundle = Vec::new();
                for entry in pg.entries(first, end).await? {
                    push_bundle_entry(&mut bundle, &entry).map_err(LogError::TooLarge)?;
                }
                Ok(bundle)
            }
        }
    }

    /// The entries `first..end` as they are stored in the entries file: each after its length.
    /// `None` when they are beyond the file.
    fn read_file(&self, dir: &Path, reader: &File, first: u64, end: u64) -> Result<Vec<u8>, Option<LogError>> {
        let tree = self.tree();
        let offset = |i: u64| usize::try_from(i).ok().and_then(|i| tree.offsets.get(i)).copied().ok_or(None);
        let (start, stop) = (offset(first)?, offset(end)?);
        drop(tree);
        let mut buf = vec![0u8; usize::try_from(stop - start).map_err(|_| None)?];
        let path = dir.join(ENTRIES_FILE);
        reader.read_exact_at(&mut buf, start).map_err(|e| Some(io(&path)(e)))?;
        Ok(buf)
    }

    /// The entry at `index`.
    pub async fn entry(&self, index: u64) -> Result<Vec<u8>, LogError> {
        let not_found = || LogError::NotFound(format!("entry {index} is beyond the log"));
        if index >= self.size() {
            return Err(not_found());
        }
        match &self.backend {
            Backend::File { dir, reader, .. } => {
                let bytes = self.read_file(dir, reader, index, index + 1).map_err(|e| e.unwrap_or_else(not_found))?;
                Ok(bytes.get(2..).unwrap_or_default().to_vec())
            }
            Backend::Postgres(pg) => pg.entries(index, index + 1).await?.pop().ok_or_else(not_found),
        }
    }

    /// The index of the latest entry of `kind`.
    pub fn last_of_kind(&self, kind: EventKind) -> Option<u64> {
        self.tree().last_by_kind.get(&kind).copied()
    }

    /// The indexes of the entries about a subject (by its keyed hash).
    pub fn entries_about(&self, subject_hash: &str) -> Vec<u64> {
        self.tree().by_subject.get(subject_hash).cloned().unwrap_or_default()
    }

    /// The root hash of the tree of `size` entries.
    pub fn root(&self, size: u64) -> Result<Hash, LogError> {
        let tree = self.tree();
        if size > tree.size() {
            return Err(LogError::NotFound(format!("the log has fewer than {size} entries")));
        }
        Ok(tree::root(&*tree, size)?)
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, LogError> {
        let tree = self.tree();
        if size > tree.size() {
            return Err(LogError::NotFound(format!("the log has fewer than {size} entries")));
        }
        Ok(tree::inclusion_proof(&*tree, index, size)?)
    }

    /// The consistency proof between the trees of `old` and `new` entries.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, LogError> {
        let tree = self.tree();
        if new > tree.size() {
            return Err(LogError::NotFound(format!("the log has fewer than {new} entries")));
        }
        Ok(tree::consistency_proof(&*tree, old, new)?)
    }
}

/// The two checkpoint files, written in place by turns.
struct CheckpointFiles {
    slots: Vec<(File, PathBuf)>,
    next: usize,
}

impl CheckpointFiles {
    /// Overwrites the older slot with `note`. Not synced: a checkpoint file only lets the log
    /// check itself when it is next opened, and the other slot survives a torn write.
    fn write(&mut self, note: &str) -> Result<(), LogError> {
        let Some((file, path)) = self.slots.get(self.next) else { return Ok(()) };
        file.write_all_at(note.as_bytes(), 0).map_err(io(path))?;
        file.set_len(note.len() as u64).map_err(io(path))?;
        self.next = (self.next + 1) % self.slots.len().max(1);
        Ok(())
    }
}

/// Signs a checkpoint of the current tree, publishes it, and writes it to a checkpoint file.
fn sign(shared: &Shared, signer: &dyn NoteSigner, files: &mut CheckpointFiles) -> Result<(), LogError> {
    let (size, root) = {
        let tree = shared.tree();
        (tree.size(), tree::root(&*tree, tree.size())?)
    };
    let note = checkpoint_note(&shared.origin, signer, size, root)?;
    files.write(&note)?;
    shared.tree_mut().offer_checkpoint(Arc::from(note), size);
    Ok(())
}

/// A signed checkpoint note of a tree of `size` entries with this `root`.
pub(crate) fn checkpoint_note(
    origin: &str,
    signer: &dyn NoteSigner,
    size: u64,
    root: Hash,
) -> Result<String, LogError> {
    let body = Checkpoint { origin: origin.to_owned(), size, root }.to_text();
    let line = signer.signature_line(&body).map_err(|e| LogError::Sign(e.to_string()))?;
    Ok(format!("{body}\n{line}"))
}

struct Sequencer {
    shared: Arc<Shared>,
    file: File,
    path: PathBuf,
    signer: Box<dyn NoteSigner>,
    options: LogOptions,
    receiver: Receiver<Request>,
    checkpoints: CheckpointFiles,
}

impl Sequencer {
    fn run(mut self) {
        let mut last_signed = Instant::now();
        let mut unsigned = false;
        loop {
            let first = if unsigned {
                let wait = self.options.checkpoint_interval.saturating_sub(last_signed.elapsed());
                match self.receiver.recv_timeout(wait) {
                    Ok(request) => Some(request),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match self.receiver.recv() {
                    Ok(request) => Some(request),
                    Err(_) => return,
                }
            };
            let mut batch = Vec::new();
            if let Some(first) = first {
                batch.push(first);
                while batch.len() < self.options.max_batch {
                    match self.receiver.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
            }
            if !batch.is_empty() {
                match self.commit(&batch) {
                    Ok(first_index) => {
                        unsigned = true;
                        if last_signed.elapsed() >= self.options.checkpoint_interval {
                            if let Err(e) = sign(&self.shared, self.signer.as_ref(), &mut self.checkpoints) {
                                tracing::error!(error = %e, "cannot sign a checkpoint");
                            }
                            last_signed = Instant::now();
                            unsigned = false;
                        }
                        for (i, Request::Append { done, .. }) in batch.into_iter().enumerate() {
                            let _ = done.send(Ok(first_index + i as u64));
                        }
                    }
                    Err(e) => {
                        // Nothing of this batch is acknowledged; the log stops taking appends,
                        // since the file may now hold a partial tail that only a restart cuts.
                        tracing::error!(error = %e, "log write failed; the sequencer stops");
                        for Request::Append { done, .. } in batch {
                            let _ = done.send(Err(LogError::Stopped));
                        }
                        return;
                    }
                }
            } else if unsigned {
                if let Err(e) = sign(&self.shared, self.signer.as_ref(), &mut self.checkpoints) {
                    tracing::error!(error = %e, "cannot sign a checkpoint");
                }
                last_signed = Instant::now();
                unsigned = false;
            }
        }
    }

    /// Writes and syncs a batch, then adds it to the tree; returns the first index.
    fn commit(&mut self, batch: &[Request]) -> Result<u64, LogError> {
        let mut buf = Vec::with_capacity(batch.iter().map(|Request::Append { entry, .. }| entry.len() + 2).sum());
        for Request::Append { entry, .. } in batch {
            push_bundle_entry(&mut buf, entry).map_err(LogError::TooLarge)?;
        }
        self.file.write_all(&buf).map_err(io(&self.path))?;
        self.file.sync_data().map_err(io(&self.path))?;
        let leaves: Vec<Hash> = batch.iter().map(|Request::Append { entry, .. }| leaf_hash(entry)).collect();
        let mut tree = self.shared.tree_mut();
        let first = tree.size();
        let mut end = tree.offsets.last().copied().unwrap_or(0);
        for (i, (Request::Append { entry, kind, subject, .. }, leaf)) in batch.iter().zip(leaves).enumerate() {
            end += 2 + entry.len() as u64;
            tree.offsets.push(end);
            tree.index(first + i as u64, *kind, subject.clone());
            tree.push(leaf);
        }
        Ok(first)
    }
}
