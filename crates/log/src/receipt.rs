//! Receipts: what the key custodian asks for before it unwraps a data key, or acts on a
//! key-encryption key version.

use std::sync::Arc;

use clover_event::Annex;
use clover_policy::Permit;
use clover_tlog::hash::Hash;

/// Proof that an access was allowed and durably logged: what the key custodian asks for before
/// it unwraps a data key. Only [`crate::Log::append_permitted`] makes one.
#[derive(Debug)]
pub struct Receipt {
    pub(crate) index: u64,
    pub(crate) entry_hash: Hash,
    pub(crate) entry: Arc<[u8]>,
    pub(crate) purpose: Option<String>,
    pub(crate) permit: Permit,
    pub(crate) annex: Option<Arc<Annex>>,
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
        hex::encode(self.entry_hash.0)
    }

    /// The logged entry's bytes, for a custodian in another process to check against the log.
    pub fn entry(&self) -> &[u8] {
        &self.entry
    }

    /// The purpose the logged access declared.
    pub fn purpose(&self) -> Option<&str> {
        self.purpose.as_deref()
    }

    /// The receipt with the private annex that its entry commits to: what names the record (and
    /// version) whose key the receipt is for. The custodian checks it against the entry's
    /// commitment, so an annex that is not the entry's opens nothing.
    #[must_use]
    pub fn with_annex(mut self, annex: Annex) -> Self {
        self.annex = Some(Arc::new(annex));
        self
    }

    /// The private annex the entry commits to, when the boundary gave it.
    pub fn annex(&self) -> Option<&Annex> {
        self.annex.as_deref()
    }
}

/// A key operation that a custodian checking receipts against the log performs only against the
/// receipt of its log entry, which names the key-encryption key version it acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOperation {
    /// A new KEK version (a rotation's start).
    AddVersion,
    /// An old KEK version retired (destroyed) once no data key uses it.
    RetireVersion,
}

impl KeyOperation {
    /// The log entry's action.
    pub fn action(&self) -> &'static str {
        match self {
            Self::AddVersion => "add-kek-version",
            Self::RetireVersion => "retire-kek-version",
        }
    }
}

/// Proof that a key operation on one KEK version was durably logged before it is done: its
/// entry (kind `key`, the operation's action) names the version (`kek vN` at the start of its
/// detail). Only [`crate::Log::append_key_operation`] makes one.
#[derive(Debug, Clone)]
pub struct KeyReceipt {
    pub(crate) index: u64,
    pub(crate) entry_hash: Hash,
    pub(crate) operation: KeyOperation,
    pub(crate) version: u32,
}

impl KeyReceipt {
    /// The index of the logged entry.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The RFC 6962 leaf hash of the logged entry.
    pub fn entry_hash(&self) -> &Hash {
        &self.entry_hash
    }

    /// The operation.
    pub fn operation(&self) -> KeyOperation {
        self.operation
    }

    /// The KEK version the operation acts on.
    pub fn version(&self) -> u32 {
        self.version
    }
}

/// Proof that a transfer out of the region was allowed and durably logged before any record of
/// it is opened: its entry (kind `transfer`, action `export`, allowed) carries the transfer's
/// public facts (destination, categories, purpose), which bound what the custodian treats for
/// it. Only [`crate::Log::append_transfer`] makes one.
#[derive(Debug, Clone)]
pub struct TransferReceipt {
    pub(crate) index: u64,
    pub(crate) entry_hash: Hash,
    pub(crate) entry: Arc<[u8]>,
}

impl TransferReceipt {
    /// The index of the logged entry.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The RFC 6962 leaf hash of the logged entry.
    pub fn entry_hash(&self) -> &Hash {
        &self.entry_hash
    }

    /// [`TransferReceipt::entry_hash`] in hex.
    pub fn entry_hash_hex(&self) -> String {
        hex::encode(self.entry_hash.0)
    }

    /// The logged entry's bytes (the custodian reads the transfer's facts from them, and a
    /// custodian in another process checks them against the log).
    pub fn entry(&self) -> &[u8] {
        &self.entry
    }

    /// A receipt for the entry `entry` at `index`, as a custodian in another process is sent
    /// it: it proves nothing until checked against the log.
    pub fn unchecked(index: u64, entry: Vec<u8>) -> Self {
        let entry_hash = clover_tlog::hash::leaf_hash(&entry);
        Self { index, entry_hash, entry: entry.into() }
    }
}

/// The stages of a transfer whose entry lets the custodian open records: the decision (counted
/// before the manifest), and the start of the stream.
pub const TRANSFER_STAGES_THAT_OPEN: [&str; 2] = ["decided", "started"];
