//! What stops a source from being read at all (a row that cannot be read is not an error but
//! an unclassifiable row, see [`crate::classify::Reason`]).

use std::path::PathBuf;

use crate::mapping::MappingError;

/// Why a source could not be opened or read on.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The mapping does not fit the source.
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// A file whose format is not known from its name.
    #[error("{path:?}: unknown file format (name it *.jsonl, *.ndjson or *.csv)")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// A file could not be opened or read.
    #[error("cannot read {path:?}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A CSV file could not be read on.
    #[error("cannot read the CSV file {path:?}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// What went wrong, with its position.
        #[source]
        source: csv::Error,
    },
    /// A CSV file whose header is not UTF-8 or lacks a mapped column.
    #[error("the CSV file {path:?} has {problem}")]
    Header {
        /// The file.
        path: PathBuf,
        /// What is wrong with its header.
        problem: String,
    },
    /// The database refused or failed.
    #[error("{what} on {url}")]
    Database {
        /// What was being done.
        what: String,
        /// The database, its password redacted.
        url: String,
        /// What went wrong.
        #[source]
        source: sqlx::Error,
    },
}
