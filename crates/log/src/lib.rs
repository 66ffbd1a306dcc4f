//! Clover's transparency log at run time.
//!
//! Every decision, write, erasure and key operation is an entry in an append-only Merkle log, in
//! the public formats any tlog client can check. The formats themselves are pure code in
//! `clover-tlog` (hashing, proofs, tiles, checkpoints, signed notes) and what an entry says is
//! `clover-event`; this crate stores, sequences and serves them.
//!
//! - [`Log`] is the handle every part of the boundary holds: appends, the latest checkpoint,
//!   tiles, entries and proofs.
//! - One sequencer (`sequencer.rs`) group-commits appends over a backend: a directory that this
//!   process alone writes (`file.rs`, the embedded default), or a PostgreSQL database that several
//!   gateways share, sequenced by whichever holds its lock (`postgres.rs`).
//! - Only [`Log::append_permitted`] makes a [`Receipt`], which the key custodian asks for before
//!   it unwraps a data key.

mod error;
mod file;
mod postgres;
mod receipt;
mod sequencer;
mod telemetry;
mod tree;

use std::path::Path;
use std::sync::Arc;

use clover_event::{Entry, Event, EventKind};
use clover_policy::Permit;
use clover_tlog::hash::{Hash, leaf_hash};
use clover_tlog::note::NoteSigner;
use clover_tlog::tile::{TILE_WIDTH, Tile, push_bundle_entry};

pub use error::{CheckpointFault, LogError};
pub use receipt::{KeyOperation, KeyReceipt, Receipt, TRANSFER_STAGES_THAT_OPEN, TransferReceipt};
pub use sequencer::LogOptions;

pub use telemetry::{BATCH_METRIC, COMMIT_SECONDS_METRIC, FSYNC_SECONDS_METRIC, QUEUE_METRIC, describe_metrics};

use crate::file::FileLog;
use crate::postgres::PgLog;
use crate::sequencer::Append;
use crate::tree::Shared;

/// Where the entries live.
#[derive(Clone)]
enum Store {
    /// A directory and this process's sequencer thread.
    File(Arc<FileLog>),
    /// A PostgreSQL database, sequenced by whichever gateway leads.
    Postgres(Arc<PgLog>),
}

/// A transparency log in a directory or a PostgreSQL database.
#[derive(Clone)]
pub struct Log {
    shared: Arc<Shared>,
    store: Store,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = f.debug_struct("Log");
        match &self.store {
            Store::File(file) => out.field("dir", &file.dir),
            Store::Postgres(_) => out.field("store", &"postgres"),
        };
        out.field("size", &self.size()).finish()
    }
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, whose checkpoints `signer` signs under the
    /// name `origin`. Recovers from a crash without destroying evidence: an unsigned tail that
    /// does not read as entries is moved to `quarantine/` and cut; entries that a signed
    /// checkpoint covers and that are damaged or changed make it refuse to open, leaving every
    /// file as it was (`docs/log.md` says exactly what is cut and what is refused).
    pub fn open(dir: &Path, signer: impl NoteSigner, options: LogOptions) -> Result<Self, LogError> {
        let (shared, file) = file::open(dir, Box::new(signer), options)?;
        Ok(Self { shared, store: Store::File(Arc::new(file)) })
    }

    /// Opens (creating its tables if needed) the log in the PostgreSQL database at `url`, shared
    /// with every other gateway of the region that opens it with the same checkpoint key. Refuses
    /// a database whose entries do not match the last checkpoint signed, or whose checkpoint this
    /// key did not sign.
    pub async fn open_postgres(url: &str, signer: impl NoteSigner, options: LogOptions) -> Result<Self, LogError> {
        let (shared, pg) = PgLog::open(url, Box::new(signer), options).await?;
        Ok(Self { shared, store: Store::Postgres(pg) })
    }

    /// Whether this process sequences the log now (always, for a log in a directory).
    pub fn is_sequencer(&self) -> bool {
        match &self.store {
            Store::File(_) => true,
            Store::Postgres(pg) => pg.is_leading(),
        }
    }

    /// The log's origin (the checkpoint key name).
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// The number of durable entries.
    pub fn size(&self) -> u64 {
        self.shared.tree().size()
    }

    /// Appends an event and waits until it is durable; returns its index.
    pub async fn append(&self, event: &Event) -> Result<u64, LogError> {
        self.append_entry(event, event.encode()).await
    }

    /// Appends an entry given as its bytes, in any format this version reads (format 1 or 2,
    /// canonical), and waits until it is durable; returns its index. For entries made
    /// elsewhere: an earlier version's, another log's. Bytes that are not an entry are refused.
    pub async fn append_encoded(&self, entry: Vec<u8>) -> Result<u64, LogError> {
        let decoded = Entry::decode(&entry).map_err(LogError::NotAnEntry)?;
        let index_by = (decoded.kind(), decoded.index_key().map(ToOwned::to_owned));
        let leaf = leaf_hash(&entry);
        self.append_indexed(index_by, entry, leaf).await
    }

    async fn append_entry(&self, event: &Event, entry: Vec<u8>) -> Result<u64, LogError> {
        let leaf = leaf_hash(&entry);
        self.append_indexed((event.kind, event.annex.clone()), entry, leaf).await
    }

    /// Appends `entry`, whose leaf hash is `leaf`, and waits for its index: the index of an entry
    /// committed with that leaf hash, or [`LogError::Substituted`] if another was committed in
    /// its place.
    async fn append_indexed(
        &self,
        index_by: (EventKind, Option<String>),
        entry: Vec<u8>,
        leaf: Hash,
    ) -> Result<u64, LogError> {
        if entry.len() > usize::from(u16::MAX) {
            return Err(LogError::TooLarge(entry.len()));
        }
        match &self.store {
            Store::File(file) => {
                let append = Append { token: file.token(), entry, index_by: Some(index_by), handed_in: false };
                file.append(&self.shared, append, leaf).await
            }
            Store::Postgres(pg) => pg.append(entry, leaf, index_by).await,
        }
    }

    /// Appends the event of an allowed access and returns the receipt the custodian asks for.
    /// The receipt's entry and leaf hash are this process's own bytes, and they are what the log
    /// holds at the receipt's index: an entry committed in their place (a shared log's database
    /// rewritten between hand-in and commit) fails the append with [`LogError::Substituted`].
    ///
    /// The event must record what the permit allows: an allowed decision, the permit's action,
    /// and the kind of entry that action makes (a read an `access`, a write a `write`, an erasure
    /// an `erasure`); anything else is refused ([`LogError::NotPermitted`]) before it is
    /// appended, so that a receipt always says what its permit allowed.
    pub async fn append_permitted(&self, event: &Event, permit: Permit) -> Result<Receipt, LogError> {
        let action = permit.action();
        let kinds_of_action: &[EventKind] = match action {
            clover_model::Action::Read => &[EventKind::Access],
            clover_model::Action::Write => &[EventKind::Write],
            // A repatriated record is written: its entry is a write whose action says how it
            // came; its verification reads it back, an access.
            clover_model::Action::Repatriate => &[EventKind::Write, EventKind::Access],
            clover_model::Action::Erase => &[EventKind::Erasure],
            _ => &[],
        };
        if event.decision.as_ref().is_none_or(|d| d.effect != "allow")
            || event.action.as_deref() != Some(action.to_string().as_str())
            || (!kinds_of_action.is_empty() && !kinds_of_action.contains(&event.kind))
        {
            return Err(LogError::NotPermitted(format!(
                "a {action} permit's entry must be an allowed {action}, and this one is a {:?} {}",
                event.kind,
                event.action.as_deref().unwrap_or("(no action)")
            )));
        }
        let entry = event.encode();
        let entry_hash = leaf_hash(&entry);
        let kept: Arc<[u8]> = entry.as_slice().into();
        let index = self.append_indexed((event.kind, event.annex.clone()), entry, entry_hash).await?;
        Ok(Receipt { index, entry_hash, entry: kept, purpose: event.purpose.clone(), permit, annex: None })
    }

    /// Appends the entry of a key operation on KEK `version`, before it is done, and returns its
    /// receipt, which the custodian asks for: the entry must be of kind `key`, with the
    /// operation's action, and name the version at the start of its detail (`kek vN ...`), else
    /// [`LogError::NotPermitted`] and nothing is appended.
    pub async fn append_key_operation(
        &self,
        event: &Event,
        operation: KeyOperation,
        version: u32,
    ) -> Result<KeyReceipt, LogError> {
        let names = format!("kek v{version} ");
        if event.kind != EventKind::Key
            || event.action.as_deref() != Some(operation.action())
            || !event.detail.as_deref().is_some_and(|d| d.starts_with(&names))
        {
            return Err(LogError::NotPermitted(format!(
                "a key operation's entry must be a key entry {} naming kek v{version}",
                operation.action()
            )));
        }
        let entry = event.encode();
        let entry_hash = leaf_hash(&entry);
        let index = self.append_indexed((event.kind, event.annex.clone()), entry, entry_hash).await?;
        Ok(KeyReceipt { index, entry_hash, operation, version })
    }

    /// Appends the entry of an allowed transfer out of the region (its decision, or the start
    /// of its stream) and returns the receipt the custodian asks for before it opens any record
    /// of it: the entry must be of kind `transfer`, action `export`, allowed, with the
    /// transfer's facts at one of [`TRANSFER_STAGES_THAT_OPEN`] naming a destination, else
    /// [`LogError::NotPermitted`] and nothing is appended.
    pub async fn append_transfer(&self, event: &Event) -> Result<TransferReceipt, LogError> {
        let fine = event.kind == EventKind::Transfer
            && event.action.as_deref() == Some(clover_model::Action::Export.as_str())
            && event.decision.as_ref().is_some_and(|d| d.effect == "allow")
            && event.transfer.as_ref().is_some_and(|t| {
                TRANSFER_STAGES_THAT_OPEN.contains(&t.stage.as_str())
                    && t.destination.is_some()
                    && t.transfer_id.is_some()
            });
        if !fine {
            return Err(LogError::NotPermitted(
                "a transfer's receipt is for an allowed export entry of kind transfer, at its decision or its start, \
                 naming the transfer and its destination"
                    .to_owned(),
            ));
        }
        let entry = event.encode();
        let entry_hash = leaf_hash(&entry);
        let kept: Arc<[u8]> = entry.as_slice().into();
        let index = self.append_indexed((event.kind, event.annex.clone()), entry, entry_hash).await?;
        Ok(TransferReceipt { index, entry_hash, entry: kept })
    }

    /// The latest signed checkpoint note.
    pub fn checkpoint(&self) -> Arc<str> {
        self.shared.tree().checkpoint().clone()
    }

    /// The latest signed checkpoint note and its size, read together.
    pub fn checkpoint_with_size(&self) -> (Arc<str>, u64) {
        let tree = self.shared.tree();
        (tree.checkpoint().clone(), tree.checkpoint_size())
    }

    /// The size of the latest signed checkpoint.
    pub fn checkpoint_size(&self) -> u64 {
        self.shared.tree().checkpoint_size()
    }

    /// A tile or entry bundle of the current tree.
    pub async fn tile(&self, tile: &Tile) -> Result<Vec<u8>, LogError> {
        let not_found = || LogError::NotFound(format!("{} is beyond the log", tile.path()));
        let first = tile.index.checked_mul(TILE_WIDTH).ok_or_else(not_found)?;
        let end = first.checked_add(u64::from(tile.width)).ok_or_else(not_found)?;
        if let Some(level) = tile.level {
            let tree = self.shared.tree();
            let hashes = tree.heights.get(usize::from(level) * 8).ok_or_else(not_found)?;
            let range =
                usize::try_from(first).map_err(|_| not_found())?..usize::try_from(end).map_err(|_| not_found())?;
            let hashes = hashes.get(range).ok_or_else(not_found)?;
            return Ok(hashes.iter().flat_map(|h| h.0).collect());
        }
        if end > self.size() {
            return Err(not_found());
        }
        match &self.store {
            Store::File(file) => {
                let (start, stop) = self.offsets(first, end).ok_or_else(not_found)?;
                file.read(start, stop)
            }
            Store::Postgres(pg) => {
                let mut bundle = Vec::new();
                for entry in pg.entries(first, end).await? {
                    push_bundle_entry(&mut bundle, &entry).map_err(LogError::TooLarge)?;
                }
                Ok(bundle)
            }
        }
    }

    /// Where entries `first..end` lie in a directory's entries file (each after its length).
    fn offsets(&self, first: u64, end: u64) -> Option<(u64, u64)> {
        let tree = self.shared.tree();
        let offset = |i: u64| usize::try_from(i).ok().and_then(|i| tree.offsets.get(i)).copied();
        Some((offset(first)?, offset(end)?))
    }

    /// The RFC 6962 leaf hash of the entry at `index`, from the tree in memory (no I/O): what a
    /// custodian in this process checks a receipt's entry against.
    pub fn leaf_hash(&self, index: u64) -> Option<Hash> {
        let tree = self.shared.tree();
        usize::try_from(index).ok().and_then(|i| tree.heights.first().and_then(|leaves| leaves.get(i))).copied()
    }

    /// The entry at `index`.
    pub async fn entry(&self, index: u64) -> Result<Vec<u8>, LogError> {
        let not_found = || LogError::NotFound(format!("entry {index} is beyond the log"));
        if index >= self.size() {
            return Err(not_found());
        }
        match &self.store {
            Store::File(file) => {
                let (start, stop) = self.offsets(index, index + 1).ok_or_else(not_found)?;
                Ok(file.read(start + 2, stop)?)
            }
            Store::Postgres(pg) => pg.entries(index, index + 1).await?.pop().ok_or_else(not_found),
        }
    }

    /// The index of the latest entry of `kind`.
    pub fn last_of_kind(&self, kind: EventKind) -> Option<u64> {
        self.shared.tree().last_of_kind(kind)
    }

    /// The indexes of the entries with an index key: a format 2 entry's annex commitment, or a
    /// format 1 entry's subject hash.
    pub fn entries_about(&self, key: &str) -> Vec<u64> {
        self.shared.tree().entries_about(key)
    }

    /// The root hash of the tree of `size` entries.
    pub fn root(&self, size: u64) -> Result<Hash, LogError> {
        let tree = self.shared.tree();
        if size > tree.size() {
            return Err(LogError::NotFound(format!("the log has fewer than {size} entries")));
        }
        Ok(clover_tlog::tree::root(&*tree, size)?)
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, LogError> {
        let tree = self.shared.tree();
        if size > tree.size() {
            return Err(LogError::NotFound(format!("the log has fewer than {size} entries")));
        }
        Ok(clover_tlog::tree::inclusion_proof(&*tree, index, size)?)
    }

    /// The consistency proof between the trees of `old` and `new` entries.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, LogError> {
        let tree = self.shared.tree();
        if new > tree.size() {
            return Err(LogError::NotFound(format!("the log has fewer than {new} entries")));
        }
        Ok(clover_tlog::tree::consistency_proof(&*tree, old, new)?)
    }
}
