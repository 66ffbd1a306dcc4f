//! Sources: a PostgreSQL database, a JSON Lines file, a CSV file; each read as a stream of
//! rows (never the whole source in memory), each row classified as it is read.
//!
//! The reading order is part of the root: PostgreSQL tables in the mapping's order, each
//! ordered by its source key (in the key column's type order and collation); files in file
//! order. Files are read with buffered blocking reads.

mod delimited;
mod jsonl;
pub(crate) mod postgres;

use std::path::{Path, PathBuf};

use clover_model::Region;

use crate::classify::{Classifier, RawRow, Row};
use crate::error::SourceError;
use crate::mapping::{Mapping, MappingError};

pub use postgres::{quote_ident, redact_url, select};

/// What to read.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// A PostgreSQL database, read through the mapping's `[[tables]]`.
    Postgres {
        /// Its URL (with credentials; printed only redacted).
        url: String,
    },
    /// A file, read through the mapping's `[file]`.
    File {
        /// The file.
        path: PathBuf,
        /// Its format.
        format: FileFormat,
    },
}

/// The format of a file source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// One JSON object a line.
    JsonLines,
    /// CSV with a header line.
    Csv,
}

impl FileFormat {
    /// The format a file's name says: `*.jsonl` or `*.ndjson`, or `*.csv`.
    pub fn of(path: &Path) -> Result<Self, SourceError> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("jsonl" | "ndjson") => Ok(Self::JsonLines),
            Some("csv") => Ok(Self::Csv),
            _ => Err(SourceError::UnknownFormat { path: path.to_owned() }),
        }
    }
}

impl SourceSpec {
    /// A file, its format from its name.
    pub fn file(path: impl Into<PathBuf>) -> Result<Self, SourceError> {
        let path = path.into();
        let format = FileFormat::of(&path)?;
        Ok(Self::File { path, format })
    }

    /// The source for messages: a URL without its password, or a file's path.
    pub fn describe(&self) -> String {
        match self {
            Self::Postgres { url } => redact_url(url),
            Self::File { path, format: FileFormat::JsonLines } => format!("{} (JSON Lines)", path.display()),
            Self::File { path, format: FileFormat::Csv } => format!("{} (CSV)", path.display()),
        }
    }
}

/// How to read.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// How many rows each PostgreSQL `FETCH` brings (the memory held: that many rows).
    pub fetch_rows: u32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self { fetch_rows: 1000 }
    }
}

#[derive(Debug)]
enum Reader {
    Postgres(Box<postgres::PgSource>),
    JsonLines(jsonl::JsonlSource),
    Csv(delimited::CsvSource),
}

/// A source being read: its rows, classified, in order.
#[derive(Debug)]
pub struct Source {
    reader: Reader,
    classifier: Classifier,
    description: String,
}

impl Source {
    /// Opens `spec` to classify its rows for `region` through `mapping`.
    pub async fn open(spec: &SourceSpec, mapping: Mapping, region: Region) -> Result<Self, SourceError> {
        Self::open_with(spec, mapping, region, OpenOptions::default()).await
    }

    /// [`Source::open`] with options.
    pub async fn open_with(
        spec: &SourceSpec,
        mapping: Mapping,
        region: Region,
        options: OpenOptions,
    ) -> Result<Self, SourceError> {
        let reader = match spec {
            SourceSpec::Postgres { url } => {
                if mapping.tables.is_empty() {
                    return Err(MappingError::Missing("[[tables]]").into());
                }
                Reader::Postgres(Box::new(
                    postgres::PgSource::open(url, mapping.tables.clone(), options.fetch_rows).await?,
                ))
            }
            SourceSpec::File { path, format } => {
                let Some(columns) = mapping.file.clone() else { return Err(MappingError::Missing("[file]").into()) };
                match format {
                    FileFormat::JsonLines => Reader::JsonLines(jsonl::JsonlSource::open(path, columns)?),
                    FileFormat::Csv => Reader::Csv(delimited::CsvSource::open(path, columns)?),
                }
            }
        };
        Ok(Self { reader, classifier: Classifier::new(region, mapping), description: spec.describe() })
    }

    /// The next row, classified; `None` at the end of the source.
    pub async fn next_row(&mut self) -> Result<Option<Row>, SourceError> {
        let raw: Option<RawRow> = match &mut self.reader {
            Reader::Postgres(pg) => pg.next_raw().await?,
            Reader::JsonLines(file) => file.next_raw()?,
            Reader::Csv(file) => file.next_raw()?,
        };
        Ok(raw.map(|raw| self.classifier.classify(raw)))
    }

    /// The source for messages (a URL's password redacted).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The region rows are classified for.
    pub fn region(&self) -> &Region {
        self.classifier.region()
    }
}
