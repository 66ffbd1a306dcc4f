//! What can go wrong in the store.

use std::time::Duration;

use clover_model::SubjectId;

/// An error of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed an operation.
    #[error("database error while {operation}")]
    Database {
        /// What the store was doing.
        operation: &'static str,
        /// The driver's error.
        #[source]
        cause: sqlx::Error,
    },
    /// The database could not be opened or set up.
    #[error("cannot open the database at {location}")]
    Open {
        /// Where the database is.
        location: String,
        /// The driver's error.
        #[source]
        cause: sqlx::Error,
    },
    /// A stored value is not what Clover writes.
    #[error("stored {what} is malformed")]
    Corrupt {
        /// Which column or row.
        what: &'static str,
        /// What is wrong with it.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The subject is not registered.
    #[error("no subject {0:?} is registered")]
    NoSuchSubject(SubjectId),
    /// An erasure is committed (the rows are deleted) but the database's write-ahead log still
    /// holds old copies of them: readers held it back for as long as the store waits. Erasing
    /// the subject again finishes it.
    #[error(
        "the erasure of subject {subject:?} is committed but the write-ahead log still holds old copies of its rows: \
         readers kept it from being truncated for {waited:?}"
    )]
    OldCopiesRemain {
        /// The erased subject.
        subject: SubjectId,
        /// How long the store tried.
        waited: Duration,
    },
    /// A batch of writes, this one among them, failed (the gateway's group commit): the same
    /// error for every write of the batch.
    #[error(transparent)]
    Batch(std::sync::Arc<StoreError>),
    /// The writer a write was handed to has stopped (the process is closing).
    #[error("the store's writer of {0} has stopped")]
    Stopped(&'static str),
}

impl StoreError {
    /// Whether the database cannot serve now (down, restarting, its disk full, busy): a
    /// request may be answered 503 and tried again, rather than 500
    /// ([`clover_sql::is_unavailable`]).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Database { cause, .. } | Self::Open { cause, .. } => clover_sql::is_unavailable(cause),
            Self::Batch(inner) => inner.is_unavailable(),
            _ => false,
        }
    }
}
