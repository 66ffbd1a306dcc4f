//! What can go wrong with the log.

use std::path::PathBuf;
use std::sync::Arc;

use clover_tlog::checkpoint::CheckpointError;
use clover_tlog::hash::Hash;
use clover_tlog::note::{NoteError, SignError};
use clover_tlog::tree::ProofError;

/// An error of the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file of the log could not be read or written.
    #[error("log file {path:?}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The entries stored do not match the last checkpoint this log signed.
    #[error("the log at {place} does not match its last checkpoint: {detail}")]
    Inconsistent {
        /// The log's directory, or `postgres`.
        place: String,
        /// What differs.
        detail: String,
        /// Why a stored checkpoint could not be checked, when that is what differs.
        #[source]
        cause: Option<CheckpointFault>,
    },
    /// An entry that a signed checkpoint covers cannot be read: the log refuses to open and
    /// leaves its files as they were.
    #[error(
        "entry {index} at byte {offset} of {path:?} is damaged ({what}), and {why} (the last signed checkpoint \
         holds {signed} entries): the log is left as it was; restore the entries file from a backup or a mirror \
         of the log's tiles (unsigned tails cut earlier are kept in {quarantine:?})"
    )]
    Damaged {
        /// The entries file.
        path: PathBuf,
        /// The first entry that cannot be read.
        index: u64,
        /// Where it starts in the file.
        offset: u64,
        /// What is wrong with it.
        what: &'static str,
        /// Why it cannot be cut: a signed checkpoint covers it, or readable entries follow it.
        why: &'static str,
        /// The size of the last signed checkpoint.
        signed: u64,
        /// Where recovery moves an unsigned tail it cuts.
        quarantine: PathBuf,
    },
    /// The entries read, but they are not the ones the last signed checkpoint covers: an entry
    /// was changed so that it still reads, or signed entries are missing. The log refuses to open,
    /// leaves its files as they were and moves nothing to quarantine.
    ///
    /// The first entry that differs is placed between `first` and `last` (the same entry when the
    /// checkpoints kept pin it down). A signed root alone does not say which leaf under it
    /// changed: the two checkpoint slots (the last signed checkpoint and the one before it)
    /// narrow it down, and a mirror of the log's tiles (which holds every leaf hash) tells which.
    #[error(
        "{path:?} does not hold the entries its last signed checkpoint covers ({signed} entries): {}; the log is \
         left as it was and nothing was moved to quarantine (unsigned tails cut earlier are kept in {quarantine:?}); \
         restore the entries file from a backup or a mirror of the log's tiles",
        divergence(.signed, .held, .first, .last, .offset, .end)
    )]
    Changed {
        /// The entries file.
        path: PathBuf,
        /// The size of the last signed checkpoint.
        signed: u64,
        /// The entries the file holds, all of them readable.
        held: u64,
        /// The first entry that may be the first to differ from what was signed.
        first: u64,
        /// The last entry that may be the first to differ (`held` itself, missing, when entries
        /// are missing): `first` when the checkpoints kept tell which entry it is.
        last: u64,
        /// Where entry `first` starts in the entries file (at its length prefix), or would start.
        offset: u64,
        /// Where the entries read end: where entry `held` would start.
        end: u64,
        /// Where recovery moves an unsigned tail it cuts (nothing is moved here).
        quarantine: PathBuf,
    },
    /// An entry given with a permit does not record what the permit allows.
    #[error("the entry does not match its permit: {0}")]
    NotPermitted(String),
    /// Bytes given as an entry are not one, in any format this version reads.
    #[error("not a log entry")]
    NotAnEntry(#[source] clover_event::EventError),
    /// An entry is larger than the 65535 bytes an entry bundle can hold.
    #[error("a log entry of {0} bytes is over the 65535-byte limit")]
    TooLarge(usize),
    /// The checkpoint signer (an HSM, say) failed.
    #[error("the checkpoint could not be signed")]
    Sign(#[from] SignError),
    /// A batch of entries could not be written (the disk is full, a file-size limit was reached)
    /// and the entries file was cut back to what it held before and synced: nothing of the
    /// batch is in the log, its appends fail with this, and the log takes the next ones.
    #[error("log file {path:?}: a batch of {entries} entries could not be written, and none of them is in the log")]
    Unwritten {
        /// The entries file.
        path: PathBuf,
        /// How many entries the batch held (each of its appends fails with this).
        entries: usize,
        /// The write's error, shared by the appends of the batch.
        #[source]
        source: Arc<std::io::Error>,
    },
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
    #[error("log database: {what}")]
    Database {
        /// What the log was doing.
        what: &'static str,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// The log's PostgreSQL database could not be opened.
    #[error("cannot open the log's database at {url}")]
    Open {
        /// The database's URL, without its password.
        url: String,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// A commit whose outcome is unknown (its answer was lost, or came too late): its entries
    /// may be in the log.
    #[error("log database: the commit of entries {first}.. may or may not have happened")]
    CommitInDoubt {
        /// The first index of the batch.
        first: u64,
        /// What went wrong.
        #[source]
        source: Box<LogError>,
    },
    /// A step of the sequencer got no answer from the database in time.
    #[error("log database: {what}: no answer within {after:?}")]
    Timeout {
        /// What the log was doing.
        what: &'static str,
        /// How long it waited.
        after: std::time::Duration,
    },
    /// The entry committed under an append's token is not the one that append handed in: someone
    /// who can write the log's database rewrote it (in `log_pending`, before it was sequenced, or
    /// in `log_entries`, before this gateway read it). The log holds what was committed and stays
    /// consistent; only this append fails, and no [`crate::Receipt`] is made for it.
    #[error(
        "the log entry committed at index {index} is not the one appended (leaf hash {committed}, appended \
         {appended}): the log's database was tampered with"
    )]
    Substituted {
        /// The index of the entry committed in its place.
        index: u64,
        /// The RFC 6962 leaf hash of the entry appended, computed before it was handed in.
        appended: Hash,
        /// The leaf hash of the entry committed at `index`.
        committed: Hash,
    },
    /// No gateway sequenced an append in time; it may still be logged later.
    #[error("no gateway sequenced the entry within {0:?}; it may still be logged later")]
    NotSequenced(std::time::Duration),
    /// The system's random generator failed.
    #[error("no randomness for an append's token")]
    Randomness,
}

/// Why a checkpoint that the log's store holds could not be checked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CheckpointFault {
    /// It is not a signed note.
    #[error(transparent)]
    Note(#[from] NoteError),
    /// Its text is not a checkpoint.
    #[error(transparent)]
    Body(#[from] CheckpointError),
    /// The tree's root at its size could not be computed.
    #[error(transparent)]
    Root(#[from] ProofError),
}

/// Where the entries first differ from what the last checkpoint of `signed` entries signed, for
/// [`LogError::Changed`].
fn divergence(signed: &u64, held: &u64, first: &u64, last: &u64, offset: &u64, end: &u64) -> String {
    let which = if first == last {
        format!("entry {first}, at byte {offset}")
    } else {
        format!(
            "one of entries {first} to {last} (entry {first} starts at byte {offset}); the checkpoints kept do not \
             tell which"
        )
    };
    if held >= signed {
        return format!(
            "the first {signed} entries were changed (they do not hash to the signed root): the first that differs \
             is {which}"
        );
    }
    let missing = match signed.saturating_sub(1) {
        only if only == *held => format!("entry {held} is missing"),
        last => format!("entries {held} to {last} are missing"),
    };
    let missing = format!("{missing}: the file ends at byte {end}, where entry {held} would start");
    if first == held {
        format!("{missing}, and the entries before it are the ones signed")
    } else {
        format!("{missing}; the first entry that differs from what was signed is {which}")
    }
}

/// Maps an I/O error on `path`.
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io { path: path.to_owned(), source }
}

/// Maps a database error of `what`.
pub(crate) fn db(what: &'static str) -> impl Fn(sqlx::Error) -> LogError {
    move |source| LogError::Database { what, source }
}
