//! JSON Lines: one JSON object a line, read in file order (which is part of the root).
//!
//! A line's values are the object's members named by the mapping. Text is taken as is, a
//! number as the canonical encoding writes it, `true`/`false` as such, and `null` or a missing member as
//! nothing. The fields are an object member, or a string holding a JSON object. Blank lines are
//! skipped; a line that is not UTF-8 or not a JSON object is an unclassifiable row.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::classify::{Position, RawRow, RawValues, Reason, fields_from_text, kind_of};
use crate::error::SourceError;
use crate::mapping::{CategorySource, Columns, FieldsSource, Place};
use crate::record::canonical_json;

/// A JSON Lines file being read.
#[derive(Debug)]
pub struct JsonlSource {
    path: PathBuf,
    reader: BufReader<File>,
    columns: Columns,
    line: u64,
    buffer: Vec<u8>,
}

impl JsonlSource {
    /// Opens `path`.
    pub fn open(path: &Path, columns: Columns) -> Result<Self, SourceError> {
        let file = File::open(path).map_err(|source| SourceError::File { path: path.to_owned(), source })?;
        Ok(Self { path: path.to_owned(), reader: BufReader::new(file), columns, line: 0, buffer: Vec::new() })
    }

    /// The next non-blank line, or `None` at the end of the file.
    pub fn next_raw(&mut self) -> Result<Option<RawRow>, SourceError> {
        loop {
            self.buffer.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buffer)
                .map_err(|source| SourceError::File { path: self.path.clone(), source })?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            if self.buffer.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let values = values(&self.buffer, &self.columns);
            return Ok(Some(RawRow {
                position: Position::Line(self.line),
                bytes: n as u64,
                place_is_country: matches!(self.columns.place, Place::Country(_)),
                values,
            }));
        }
    }
}

fn values(line: &[u8], columns: &Columns) -> Result<RawValues, Reason> {
    let text = std::str::from_utf8(line)
        .map_err(|e| Reason::InvalidUtf8 { within: "the line".into(), offset: e.valid_up_to() })?;
    let mut object = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map,
        Ok(other) => return Err(Reason::NotJson(format!("found {}", kind_of(&other)))),
        Err(e) => return Err(Reason::NotJson(e.to_string())),
    };
    let place = match &columns.place {
        Place::HomeRegion(c) | Place::Country(c) => scalar(&object, c)?,
    };
    let category = match &columns.category {
        CategorySource::Fixed(category) => Some(category.to_string()),
        CategorySource::Column(c) => scalar(&object, c)?,
    };
    let birth_date = match &columns.birth_date {
        Some(c) => scalar(&object, c)?,
        None => None,
    };
    let source_key = scalar(&object, &columns.source_key)?;
    let subject = scalar(&object, &columns.subject)?;
    let fields = match &columns.fields {
        FieldsSource::Json(c) => match object.remove(c) {
            Some(Value::Object(map)) => Ok(map),
            Some(Value::String(text)) => fields_from_text(&text),
            Some(other) => Err(Reason::FieldsNotObject(format!("found {}", kind_of(&other)))),
            None => Err(Reason::FieldsNotObject(format!("no {c:?} member"))),
        },
        FieldsSource::Columns(cs) => {
            Ok(cs.iter().map(|c| (c.clone(), object.get(c).cloned().unwrap_or(Value::Null))).collect::<Map<_, _>>())
        }
    };
    Ok(RawValues { source_key, subject, place, birth_date, category, fields: Some(fields) })
}

/// A member as text: a string as is, a number or a boolean as JSON prints it, null or absent as
/// nothing.
fn scalar(object: &Map<String, Value>, column: &str) -> Result<Option<String>, Reason> {
    match object.get(column) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        // As the canonical encoding writes it (not as a library happens to print it).
        Some(number @ Value::Number(_)) => Ok(Some(String::from_utf8_lossy(&canonical_json(number)).into_owned())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(other) => Err(Reason::NotScalar { column: column.to_owned(), kind: kind_of(other) }),
    }
}
