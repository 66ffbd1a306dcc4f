//! The log in a directory, the embedded default.
//!
//! The directory holds `entries` (every entry, back to back, each as a big-endian `u16` length
//! and its bytes: the concatenation of all entry bundles) and `checkpoint.0` and `checkpoint.1`
//! (the latest signed checkpoints, overwritten in place by turns, so that a crash while one is
//! written leaves the other whole). One thread of this process runs the [sequencer]
//! (crate::sequencer) over it: one `write` and one `fdatasync` per batch.
//!
//! **Recovery never destroys evidence.** On opening, the last checkpoint this log signed is read
//! first; then the entries. Bytes that no signed checkpoint covers and that do not read as
//! entries (a write cut short by a crash, garbage) are moved to `quarantine/` beside the log
//! before the file is cut, never discarded. When an entry that a signed checkpoint covers cannot
//! be read, or the entries do not hash to the signed root, the log refuses to open, says which
//! entry and where (for entries that still read, as closely as the two checkpoints kept tell: a
//! root does not say which of its leaves changed), and leaves every file as it was.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use clover_event::Entry;
use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::hash::Hash;
use clover_tlog::note::{Note, NoteSigner};
use clover_tlog::tile::push_bundle_entry;
use tokio::sync::mpsc;

use crate::error::{LogError, io};
use crate::sequencer::{Append, Backend, LogOptions, sequence};
use crate::tree::{Shared, Tree};

const ENTRIES_FILE: &str = "entries";
const CHECKPOINT_FILES: [&str; 2] = ["checkpoint.0", "checkpoint.1"];
const QUARANTINE_DIR: &str = "quarantine";

/// A log in a directory, as its handle holds it.
pub(crate) struct FileLog {
    pub(crate) dir: PathBuf,
    reader: File,
    sender: mpsc::UnboundedSender<Append>,
    next_token: AtomicI64,
}

/// Why the entries stop being readable at some byte.
#[derive(Debug, Clone, Copy)]
enum Unreadable {
    /// Fewer than two bytes left for a length.
    Length,
    /// A length of zero.
    Empty,
    /// A length that runs past the end of the file.
    Truncated,
    /// Bytes that are not a log event.
    NotAnEvent,
}

impl Unreadable {
    fn describe(self) -> &'static str {
        match self {
            Self::Length => "a length cut short",
            Self::Empty => "a length of zero",
            Self::Truncated => "a length past the end of the file",
            Self::NotAnEvent => "bytes that are not a log event",
        }
    }
}

/// Reads the entries of `file` (`len` bytes) into `tree`, a buffer at a time rather than the file
/// whole (a log of a million entries is gigabytes), for as long as they read; returns where they
/// stop being readable, and why, if before the end.
fn read_entries(file: &File, len: u64, tree: &mut Tree) -> std::io::Result<Option<(u64, Unreadable)>> {
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut entry = Vec::with_capacity(usize::from(u16::MAX));
    let mut at = 0u64;
    while at < len {
        if len - at < 2 {
            return Ok(Some((at, Unreadable::Length)));
        }
        let mut prefix = [0u8; 2];
        reader.read_exact(&mut prefix)?;
        let size = u16::from_be_bytes(prefix);
        if size == 0 {
            return Ok(Some((at, Unreadable::Empty)));
        }
        if len - at - 2 < u64::from(size) {
            return Ok(Some((at, Unreadable::Truncated)));
        }
        entry.resize(usize::from(size), 0);
        reader.read_exact(&mut entry)?;
        let Ok(event) = Entry::decode(&entry) else { return Ok(Some((at, Unreadable::NotAnEvent))) };
        tree.add_indexed(&entry, Some((event.kind(), event.index_key().map(ToOwned::to_owned))));
        at += 2 + u64::from(size);
    }
    Ok(None)
}

/// The checkpoints in the slots that this log's key signed, each with the slot that holds it, the
/// largest first. Slots that cannot be read, or that hold something while none holds a
/// checkpoint this key signed (another key, another origin), make the log refuse to open: its
/// entries would otherwise be taken as unsigned.
fn signed_checkpoints(dir: &Path, signer: &dyn NoteSigner) -> Result<Vec<(Checkpoint, usize)>, LogError> {
    let verifier = signer.verifier();
    let mut signed: Vec<(Checkpoint, usize)> = Vec::new();
    let mut unverified = Vec::new();
    for (slot, name) in CHECKPOINT_FILES.iter().enumerate() {
        let path = dir.join(name);
        let text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        let text = String::from_utf8_lossy(&text);
        let text = text.trim_end_matches('\0');
        if text.is_empty() {
            continue;
        }
        let verified = Note::parse(text)
            .ok()
            .filter(|note| note.verify(&verifier).is_ok())
            .and_then(|note| Checkpoint::parse(&note.text).ok())
            .filter(|c| c.origin == verifier.name);
        match verified {
            Some(checkpoint) => signed.push((checkpoint, slot)),
            None => unverified.push(*name),
        }
    }
    // Stable: of two checkpoints of one size, the first slot's counts as the last signed.
    signed.sort_by_key(|(checkpoint, _)| std::cmp::Reverse(checkpoint.size));
    if signed.is_empty() && !unverified.is_empty() {
        return Err(LogError::Inconsistent {
            place: dir.display().to_string(),
            detail: format!(
                "its checkpoint files ({}) hold no checkpoint signed by this log's key {verifier}: a log opened with \
                 another key, or damaged checkpoint files; nothing was changed",
                unverified.join(", ")
            ),
            cause: None,
        });
    }
    Ok(signed)
}

/// Between which entries the first one lies that differs from what `checkpoints` (this log's,
/// the largest first) signed, given that the largest does not match `tree`: a prefix whose root
/// is a signed one is the prefix signed, and one whose root is not holds a changed entry. A root
/// alone does not say which of its leaves changed, so this is as close as the checkpoints kept
/// can tell.
fn first_difference(tree: &Tree, checkpoints: &[Checkpoint]) -> (u64, u64) {
    let held = tree.size();
    let signed = checkpoints.first().map_or(0, |c| c.size);
    // Entry `held` is missing if the checkpoint signed more; otherwise one of those signed changed.
    let mut last = held.min(signed.saturating_sub(1));
    let mut first = 0;
    for checkpoint in checkpoints.iter().filter(|c| c.size > 0 && c.size <= held) {
        match clover_tlog::tree::root(tree, checkpoint.size) {
            Ok(root) if root == checkpoint.root => first = first.max(checkpoint.size),
            _ => last = last.min(checkpoint.size - 1),
        }
    }
    // Checkpoints of two forks of the log (a slot left from before a restore) contradict each
    // other; the whole range is all that can be said then.
    if first > last { (0, held.min(signed.saturating_sub(1))) } else { (first, last) }
}

/// Whether the bytes from an unreadable point on are what a write cut short by a crash leaves:
/// a length or an entry that runs past the end of the file, or zeros. Anything else (a complete
/// entry that does not read, readable entries after the point) may be damage to entries that
/// were acknowledged, and is not cut.
fn torn(tail: &[u8], why: Unreadable) -> bool {
    // Every entry starts `{"v":`; the first one of the tail is the one that does not read.
    let later_entry = tail.get(3..).is_some_and(|rest| rest.windows(5).any(|w| w == b"{\"v\":"));
    match why {
        Unreadable::Length | Unreadable::Truncated => !later_entry,
        Unreadable::Empty => tail.iter().all(|b| *b == 0),
        Unreadable::NotAnEvent => false,
    }
}

/// Moves `tail` (the bytes from `offset` on) into the quarantine directory, durably, and
/// returns its path.
fn quarantine(dir: &Path, offset: u64, tail: &[u8]) -> Result<PathBuf, LogError> {
    let quarantine = dir.join(QUARANTINE_DIR);
    std::fs::create_dir_all(&quarantine).map_err(io(&quarantine))?;
    let mut path = quarantine.join(format!("entries.{offset}"));
    let mut n = 0;
    while path.exists() {
        n += 1;
        path = quarantine.join(format!("entries.{offset}.{n}"));
    }
    let mut file = OpenOptions::new().write(true).create_new(true).open(&path).map_err(io(&path))?;
    file.write_all(tail).map_err(io(&path))?;
    file.sync_all().map_err(io(&path))?;
    // The file's name in the quarantine directory, and that directory's in the log's.
    File::open(&quarantine).and_then(|d| d.sync_all()).map_err(io(&quarantine))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    Ok(path)
}

/// Opens (creating if needed) the log in `dir`, recovering as the module says, and starts its
/// sequencer thread.
pub(crate) fn open(
    dir: &Path,
    signer: Box<dyn NoteSigner>,
    options: LogOptions,
) -> Result<(Arc<Shared>, FileLog), LogError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let checkpoints = signed_checkpoints(dir, signer.as_ref())?;
    let signed = checkpoints.first().cloned();
    let checkpoints: Vec<Checkpoint> = checkpoints.into_iter().map(|(c, _)| c).collect();
    let path = dir.join(ENTRIES_FILE);
    if let Some((checkpoint, _)) = &signed
        && !path.exists()
    {
        return Err(LogError::Inconsistent {
            place: dir.display().to_string(),
            detail: format!(
                "it signed a checkpoint of {} entries but its entries file {path:?} is missing",
                checkpoint.size
            ),
            cause: None,
        });
    }
    let file = OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(io(&path))?;
    let len = file.metadata().map_err(io(&path))?.len();

    let signed_size = signed.as_ref().map_or(0, |(c, _)| c.size);
    let mut tree = Tree::new();
    let unreadable = read_entries(&file, len, &mut tree).map_err(io(&path))?;
    let damaged = |offset: u64, what: Unreadable, why: &'static str, index: u64| LogError::Damaged {
        path: path.clone(),
        index,
        offset,
        what: what.describe(),
        why,
        signed: signed_size,
        quarantine: dir.join(QUARANTINE_DIR),
    };

    // Entries that read but are not the ones signed (missing, or changed so that they still
    // read): refused, naming the first that differs as closely as the checkpoints kept tell.
    let changed = |tree: &Tree| {
        let (first, last) = first_difference(tree, &checkpoints);
        let at = |index: u64| tree.offsets.get(usize::try_from(index).unwrap_or(usize::MAX)).copied();
        let end = at(tree.size()).unwrap_or(len);
        LogError::Changed {
            path: path.clone(),
            signed: signed_size,
            held: tree.size(),
            first,
            last,
            offset: at(first).unwrap_or(end),
            end,
            quarantine: dir.join(QUARANTINE_DIR),
        }
    };
    if signed_size > tree.size() {
        return Err(match unreadable {
            Some((offset, what)) => damaged(offset, what, "a signed checkpoint covers it", tree.size()),
            None => changed(&tree),
        });
    }
    if let Some((signed, _)) = &signed
        && clover_tlog::tree::root(&tree, signed.size)? != signed.root
    {
        return Err(changed(&tree));
    }
    if let Some((offset, what)) = unreadable {
        // What follows the point, read whole: a torn write's tail is short; a longer one is damage,
        // and the log refuses to open after reading it once.
        let mut tail = vec![0u8; usize::try_from(len - offset).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut tail, offset).map_err(io(&path))?;
        let tail = tail.as_slice();
        if !torn(tail, what) {
            return Err(damaged(offset, what, "what follows it may have been acknowledged", tree.size()));
        }
        // A write cut short, beyond every signed checkpoint and never acknowledged: kept in
        // quarantine before the file is cut.
        let kept = quarantine(dir, offset, tail)?;
        tracing::warn!(
            log = %dir.display(), offset, bytes = tail.len(), reason = what.describe(), quarantine = %kept.display(),
            "cutting an unacknowledged partial write from the log; its bytes are kept in quarantine"
        );
        file.set_len(offset).map_err(io(&path))?;
    }
    // Entries a killed process wrote but never synced are synced before a checkpoint signs them.
    file.sync_all().map_err(io(&path))?;

    let reader = File::open(&path).map_err(io(&path))?;
    let mut slots = Vec::new();
    for name in CHECKPOINT_FILES {
        let slot = dir.join(name);
        slots.push((OpenOptions::new().write(true).create(true).truncate(false).open(&slot).map_err(io(&slot))?, slot));
    }
    // The first write goes to the slot that does not hold the largest signed checkpoint.
    let next = signed.as_ref().map_or(0, |(_, slot)| (slot + 1) % CHECKPOINT_FILES.len());
    let size = tree.size();
    let bytes = file.metadata().map_err(io(&path))?.len();
    let shared = Arc::new(Shared::new(signer.name().to_owned(), tree, false));
    let mut backend = DirectoryBackend { file, path, checkpoints: CheckpointFiles { slots, next }, size, bytes };
    let (checkpoint_size, note) = shared.sign_current(signer.as_ref())?;
    backend.checkpoints.write(&note)?;
    shared.tree_mut().offer_checkpoint(note.into(), checkpoint_size);

    let (sender, mut receiver) = mpsc::unbounded_channel();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(io(dir))?;
    let sequenced = shared.clone();
    std::thread::Builder::new()
        .name("clover-log-sequencer".into())
        .spawn(move || {
            // However the thread ends (a panic included), no append waits for it forever.
            let _refuse_the_rest = RefuseOnExit(sequenced.clone());
            runtime.block_on(async {
                let run = sequence(&mut backend, &sequenced, signer.as_ref(), &options, &mut receiver, false).await;
                if let Err(stopped) = run {
                    // Nothing of this batch is answered as logged; the log stops taking
                    // appends, since the file may now hold a partial tail that only a restart
                    // cuts (into quarantine).
                    tracing::error!(error = %stopped.error, "log write failed; the sequencer stops");
                    receiver.close();
                    let mut refused: Vec<i64> = stopped.unsequenced.iter().map(|a| a.token).collect();
                    while let Ok(append) = receiver.try_recv() {
                        refused.push(append.token);
                    }
                    sequenced.refuse(refused, || LogError::Stopped);
                }
            });
        })
        .map_err(io(dir))?;
    Ok((shared, FileLog { dir: dir.to_owned(), reader, sender, next_token: AtomicI64::new(0) }))
}

/// Refuses every append still waiting when the sequencer thread ends.
struct RefuseOnExit(Arc<Shared>);

impl Drop for RefuseOnExit {
    fn drop(&mut self) {
        self.0.refuse_all(|| LogError::Stopped);
    }
}

impl FileLog {
    /// Hands an append, whose entry's leaf hash is `leaf`, to the sequencer; the answer arrives
    /// through `shared`.
    pub(crate) async fn append(&self, shared: &Shared, append: Append, leaf: Hash) -> Result<u64, LogError> {
        let token = append.token;
        let wait = shared.wait(token, leaf);
        if self.sender.send(append).is_err() {
            shared.forget(token);
            return Err(LogError::Stopped);
        }
        wait.await.map_err(|_| LogError::Stopped)?
    }

    /// A token for an append of this process.
    pub(crate) fn token(&self) -> i64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// The bytes `start..stop` of the entries file.
    pub(crate) fn read(&self, start: u64, stop: u64) -> Result<Vec<u8>, LogError> {
        let path = self.dir.join(ENTRIES_FILE);
        let len = usize::try_from(stop.saturating_sub(start))
            .map_err(|_| LogError::NotFound(format!("bytes {start}..{stop} of the log")))?;
        let mut buf = vec![0u8; len];
        self.reader.read_exact_at(&mut buf, start).map_err(io(&path))?;
        Ok(buf)
    }
}

/// The two checkpoint files, written in place by turns.
struct CheckpointFiles {
    slots: Vec<(File, PathBuf)>,
    next: usize,
}

impl CheckpointFiles {
    /// Overwrites the older slot with `note`. Not synced: the entries it covers are synced
    /// before it is written, and a checkpoint file only lets the log check itself when it is
    /// next opened; the other slot survives a torn write.
    fn write(&mut self, note: &str) -> Result<(), LogError> {
        let Some((file, path)) = self.slots.get(self.next) else { return Ok(()) };
        file.write_all_at(note.as_bytes(), 0).map_err(io(path))?;
        file.set_len(note.len() as u64).map_err(io(path))?;
        self.next = (self.next + 1) % self.slots.len().max(1);
        Ok(())
    }

    /// [`CheckpointFiles::write`], an error logged: whether the checkpoint was written.
    fn write_or_log(&mut self, note: &str) -> bool {
        self.write(note).inspect_err(|e| tracing::error!(error = %e, "cannot write a checkpoint file")).is_ok()
    }
}

/// The directory as the sequencer writes it.
struct DirectoryBackend {
    file: File,
    path: PathBuf,
    checkpoints: CheckpointFiles,
    /// The entries in the file.
    size: u64,
    /// The file's length: the bytes of those entries, all synced.
    bytes: u64,
}

impl DirectoryBackend {
    /// After a write of a batch failed with `error`: cuts the file back to the entries it held
    /// and syncs it, so that nothing of the batch is in it, and answers
    /// [`LogError::Unwritten`] (the sequencer refuses the batch and goes on). If the file cannot
    /// be cut back, the error stops the sequencer; the next start cuts what is left of the
    /// batch into quarantine.
    fn cut_back(&mut self, error: std::io::Error, entries: usize) -> LogError {
        match self.file.set_len(self.bytes).and_then(|()| self.file.sync_data()) {
            Ok(()) => LogError::Unwritten { path: self.path.clone(), entries, source: Arc::new(error) },
            Err(cut) => {
                tracing::error!(error = %cut, log = %self.path.display(), "cannot cut a failed write from the log");
                LogError::Io { path: self.path.clone(), source: error }
            }
        }
    }
}

impl Backend for DirectoryBackend {
    async fn pending(&mut self, _room: usize) -> Result<Vec<Append>, LogError> {
        Ok(Vec::new())
    }

    async fn commit(
        &mut self,
        first: u64,
        batch: &[Append],
        checkpoint: Option<(u64, &str)>,
    ) -> Result<bool, LogError> {
        if first != self.size {
            return Err(LogError::Inconsistent {
                place: self.path.display().to_string(),
                detail: format!("the sequencer wrote at {first} but the file holds {}", self.size),
                cause: None,
            });
        }
        let mut buf = Vec::with_capacity(batch.iter().map(|a| a.entry.len() + 2).sum());
        for append in batch {
            push_bundle_entry(&mut buf, &append.entry).map_err(LogError::TooLarge)?;
        }
        // The file is opened to append: a write goes to its end, which is `self.bytes`.
        if let Err(error) = self.file.write_all(&buf) {
            return Err(self.cut_back(error, batch.len()));
        }
        let started = std::time::Instant::now();
        // A failed fsync leaves it unknown what reached the disk (and the kernel may have
        // dropped the dirty pages): the sequencer stops, and a restart reads the file again.
        self.file.sync_data().map_err(io(&self.path))?;
        metrics::histogram!(crate::telemetry::FSYNC_SECONDS_METRIC).record(started.elapsed().as_secs_f64());
        self.size += batch.len() as u64;
        self.bytes += buf.len() as u64;
        // The entries are durable: a checkpoint file that cannot be written leaves them
        // unsigned for the next pass, and does not fail the appends.
        Ok(checkpoint.is_some_and(|(_, note)| self.checkpoints.write_or_log(note)))
    }

    async fn store_checkpoint(&mut self, _size: u64, note: &str) -> Result<bool, LogError> {
        Ok(self.checkpoints.write_or_log(note))
    }

    async fn handed_in(&mut self) {
        std::future::pending().await
    }
}
