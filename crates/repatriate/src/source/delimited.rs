//! CSV (RFC 4180, with a header line): read in file order (which is part of the root).
//!
//! Each mapped column is a header name; an empty cell is nothing (no birth date, no country),
//! but an empty field column is the empty string. A record with another number of cells than
//! the header, or a cell that is not UTF-8, is an unclassifiable row at the line where the
//! record starts.

use std::fs::File;
use std::path::{Path, PathBuf};

use csv::ByteRecord;
use serde_json::{Map, Value};

use crate::classify::{Position, RawRow, RawValues, Reason, fields_from_text};
use crate::error::SourceError;
use crate::mapping::{CategorySource, Columns, FieldsSource, Place};

/// The header positions of the mapped columns.
#[derive(Debug)]
struct Indexes {
    source_key: usize,
    subject: usize,
    place: usize,
    birth_date: Option<usize>,
    category: Option<usize>,
    fields: FieldIndexes,
}

#[derive(Debug)]
enum FieldIndexes {
    Json(usize),
    Columns(Vec<(String, usize)>),
}

/// A CSV file being read.
#[derive(Debug)]
pub struct CsvSource {
    path: PathBuf,
    reader: csv::Reader<File>,
    columns: Columns,
    indexes: Indexes,
    width: usize,
    record: ByteRecord,
}

impl CsvSource {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path, columns: Columns) -> Result<Self, SourceError> {
        let file = File::open(path).map_err(|source| SourceError::File { path: path.to_owned(), source })?;
        let mut reader = csv::ReaderBuilder::new().flexible(true).has_headers(true).from_reader(file);
        let header = reader.byte_headers().map_err(|source| SourceError::Csv { path: path.to_owned(), source })?;
        let mut names = Vec::with_capacity(header.len());
        for (i, cell) in header.iter().enumerate() {
            let name = std::str::from_utf8(cell).map_err(|_| SourceError::Header {
                path: path.to_owned(),
                problem: format!("a header column ({}) that is not UTF-8", i + 1),
            })?;
            names.push(name.to_owned());
        }
        let find = |column: &str| {
            names.iter().position(|n| n == column).ok_or_else(|| SourceError::Header {
                path: path.to_owned(),
                problem: format!("no column {column:?} (its header has {})", quote_all(&names)),
            })
        };
        let indexes = Indexes {
            source_key: find(&columns.source_key)?,
            subject: find(&columns.subject)?,
            place: match &columns.place {
                Place::HomeRegion(c) | Place::Country(c) => find(c)?,
            },
            birth_date: columns.birth_date.as_deref().map(find).transpose()?,
            category: match &columns.category {
                CategorySource::Fixed(_) => None,
                CategorySource::Column(c) => Some(find(c)?),
            },
            fields: match &columns.fields {
                FieldsSource::Json(c) => FieldIndexes::Json(find(c)?),
                FieldsSource::Columns(cs) => FieldIndexes::Columns(
                    cs.iter().map(|c| Ok((c.clone(), find(c)?))).collect::<Result<_, SourceError>>()?,
                ),
            },
        };
        Ok(Self { path: path.to_owned(), reader, columns, indexes, width: names.len(), record: ByteRecord::new() })
    }

    /// The next record, or `None` at the end of the file.
    pub fn next_raw(&mut self) -> Result<Option<RawRow>, SourceError> {
        let more = self
            .reader
            .read_byte_record(&mut self.record)
            .map_err(|source| SourceError::Csv { path: self.path.clone(), source })?;
        if !more {
            return Ok(None);
        }
        let start = self.record.position().map_or(0, |p| p.byte());
        let line = self.record.position().map_or(0, csv::Position::line);
        let bytes = self.reader.position().byte().saturating_sub(start);
        let values = if self.record.len() == self.width {
            self.values()
        } else {
            Err(Reason::ColumnCount { expected: self.width, found: self.record.len() })
        };
        Ok(Some(RawRow {
            position: Position::Line(line),
            bytes,
            place_is_country: matches!(self.columns.place, Place::Country(_)),
            values,
        }))
    }

    fn values(&self) -> Result<RawValues, Reason> {
        let text = |i: usize, column: &str| -> Result<Option<String>, Reason> {
            let cell = self.record.get(i).unwrap_or_default();
            let s = std::str::from_utf8(cell)
                .map_err(|e| Reason::InvalidUtf8 { within: format!("column {column:?}"), offset: e.valid_up_to() })?;
            Ok(Some(s.to_owned()).filter(|s| !s.is_empty()))
        };
        let c = &self.columns;
        let i = &self.indexes;
        let place_name = match &c.place {
            Place::HomeRegion(n) | Place::Country(n) => n,
        };
        let category = match (&c.category, i.category) {
            (CategorySource::Fixed(category), _) => Some(category.to_string()),
            (CategorySource::Column(name), Some(index)) => text(index, name)?,
            (CategorySource::Column(_), None) => None,
        };
        let birth_date = match (&c.birth_date, i.birth_date) {
            (Some(name), Some(index)) => text(index, name)?,
            _ => None,
        };
        let fields = match &i.fields {
            FieldIndexes::Json(index) => {
                let name = match &c.fields {
                    FieldsSource::Json(name) => name.as_str(),
                    FieldsSource::Columns(_) => "",
                };
                match text(*index, name)? {
                    Some(json) => fields_from_text(&json),
                    None => Err(Reason::FieldsNotObject(format!("column {name:?} is empty"))),
                }
            }
            FieldIndexes::Columns(cs) => {
                let mut map = Map::new();
                for (name, index) in cs {
                    map.insert(name.clone(), Value::String(text(*index, name)?.unwrap_or_default()));
                }
                Ok(map)
            }
        };
        Ok(RawValues {
            source_key: text(i.source_key, &c.source_key)?,
            subject: text(i.subject, &c.subject)?,
            place: text(i.place, place_name)?,
            birth_date,
            category,
            fields: Some(fields),
        })
    }
}

fn quote_all(names: &[String]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}
