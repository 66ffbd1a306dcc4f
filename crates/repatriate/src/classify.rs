//! Classification of a source's rows: this region's, another region's, or unclassifiable, with
//! the reason. Sources hand in a [`RawRow`] (text as read); the [`Classifier`] checks it and
//! makes the [`SourceRecord`] and its digest.

use std::collections::HashSet;
use std::fmt;

use clover_model::{Category, Fields, InvalidId, Region, SubjectId};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use crate::mapping::Mapping;
use crate::record::{Digest, SourceRecord, canonical_bytes};

/// Where a row is in its source, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// A line of a file (1-based; for CSV, the line where the record starts).
    Line(u64),
    /// A row of a PostgreSQL table: its key as text (none when the key is NULL) and its ordinal
    /// in the table's reading order (1-based).
    Key {
        /// The table, as the mapping names it.
        table: String,
        /// The source key, as text.
        key: Option<String>,
        /// The row's ordinal in the table's reading order.
        row: u64,
    },
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Line(n) => write!(f, "line {n}"),
            Self::Key { table, key: Some(key), .. } => write!(f, "table {table}, key {key:?}"),
            Self::Key { table, key: None, row } => write!(f, "table {table}, row {row} (no key)"),
        }
    }
}

impl Serialize for Position {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why a row cannot be classified. Messages name what was wrong, never a personal value (a
/// birth date, a field): only ids, codes and sizes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// The row is not UTF-8.
    #[error("not valid UTF-8 (byte {offset} of {within})")]
    InvalidUtf8 {
        /// What holds the bad byte: `the line`, `column "name"`.
        within: String,
        /// The offset of the first bad byte in it.
        offset: usize,
    },
    /// The line is not a JSON object (JSON Lines).
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// A CSV record with another number of columns than the header.
    #[error("{found} columns where the header has {expected}")]
    ColumnCount {
        /// The header's.
        expected: usize,
        /// This record's.
        found: usize,
    },
    /// A mapped value is neither text nor a number.
    #[error("the {column:?} column holds {kind}, not text or a number")]
    NotScalar {
        /// The column.
        column: String,
        /// What it holds (an array, an object).
        kind: &'static str,
    },
    /// No source key.
    #[error("no source key (column {0:?} is empty)")]
    NoKey(String),
    /// The key was seen before; the first row with it counts, the later ones do not.
    #[error("duplicate source key {0:?} (its first row counts)")]
    DuplicateKey(String),
    /// Neither a home region nor a country.
    #[error("no home region or country (column {0:?} is empty)")]
    NoPlace(String),
    /// The home region is not a region id.
    #[error(transparent)]
    BadRegion(InvalidId),
    /// A country code the mapping's `[countries]` does not list.
    #[error("unknown country {0:?} (not in the mapping's [countries])")]
    UnknownCountry(String),
    /// No subject id.
    #[error("no subject id (column {0:?} is empty)")]
    NoSubject(String),
    /// The subject id is refused.
    #[error(transparent)]
    BadSubject(InvalidId),
    /// No category.
    #[error("no category (column {0:?} is empty)")]
    NoCategory(String),
    /// The category is refused.
    #[error(transparent)]
    BadCategory(InvalidId),
    /// The birth date is not YYYY-MM-DD (its value is personal data, so not shown).
    #[error("the birth date does not parse as YYYY-MM-DD")]
    BadBirthDate,
    /// The fields column is not a JSON object.
    #[error("the fields are not a JSON object: {0}")]
    FieldsNotObject(String),
    /// The record is larger than the limit.
    #[error("the record is {bytes} bytes of canonical JSON, more than the limit of {limit}")]
    TooLarge {
        /// Its canonical size.
        bytes: usize,
        /// The mapping's `max_record_bytes`.
        limit: usize,
    },
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The class of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// This region's: it comes home.
    Region,
    /// Another region's: left where it is.
    Elsewhere(Region),
    /// Neither can be said.
    Unclassifiable(Reason),
}

/// A row as a source read it: text, not yet checked.
#[derive(Debug, Default)]
pub struct RawValues {
    /// The source key, as text.
    pub source_key: Option<String>,
    /// The subject id.
    pub subject: Option<String>,
    /// The home region or the country code, as the mapping says.
    pub place: Option<String>,
    /// The birth date.
    pub birth_date: Option<String>,
    /// The category (the mapping's fixed one when it has one).
    pub category: Option<String>,
    /// The fields, or why they are not an object.
    pub fields: Option<Result<Map<String, Value>, Reason>>,
}

/// A row handed in by a source.
#[derive(Debug)]
pub struct RawRow {
    /// Where it is.
    pub position: Position,
    /// Its size in the source (the line, the CSV record, the columns' text).
    pub bytes: u64,
    /// Whether `place` is a country code (else a home region).
    pub place_is_country: bool,
    /// Its values, or why they could not be read at all.
    pub values: Result<RawValues, Reason>,
}

/// A row of a source, classified.
#[derive(Debug)]
pub struct Row {
    /// Where it is.
    pub position: Position,
    /// Its size in the source.
    pub bytes: u64,
    /// Its category, when one could be read (for the counts).
    pub category: Option<Category>,
    /// Its class.
    pub class: Class,
    /// The record (for [`Class::Region`] and [`Class::Elsewhere`]).
    pub record: Option<SourceRecord>,
    /// The record's digest (with the record).
    pub digest: Option<Digest>,
    /// The size of the record's canonical bytes (with the record).
    pub canonical_bytes: usize,
}

/// Classifies rows against a region and a mapping, remembering the keys it has seen: as 64-bit
/// keyed hashes (SipHash under a random key), about 16 bytes a row rather than the keys
/// themselves. Two different keys with one hash would make the second a duplicate: reported and
/// left at the source, never lost; for a million rows the chance is about 3 in 100 million.
#[derive(Debug)]
pub struct Classifier {
    region: Region,
    mapping: Mapping,
    seen: HashSet<u64>,
    hasher: std::collections::hash_map::RandomState,
}

impl Classifier {
    /// A classifier for `region`'s rows.
    pub fn new(region: Region, mapping: Mapping) -> Self {
        Self { region, mapping, seen: HashSet::new(), hasher: std::collections::hash_map::RandomState::new() }
    }

    /// The region.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Classifies one row.
    pub fn classify(&mut self, raw: RawRow) -> Row {
        let RawRow { position, bytes, place_is_country, values } = raw;
        let mut row = Row {
            position,
            bytes,
            category: None,
            class: Class::Region,
            record: None,
            digest: None,
            canonical_bytes: 0,
        };
        let values = match values {
            Ok(values) => values,
            Err(reason) => {
                row.class = Class::Unclassifiable(reason);
                return row;
            }
        };
        row.category = values.category.as_deref().and_then(|c| Category::new(c).ok());
        match self.check(values, place_is_country) {
            Ok(record) => {
                let bytes = canonical_bytes(&record);
                if bytes.len() > self.mapping.max_record_bytes {
                    row.class = Class::Unclassifiable(Reason::TooLarge {
                        bytes: bytes.len(),
                        limit: self.mapping.max_record_bytes,
                    });
                    return row;
                }
                row.class = if record.home_region == self.region {
                    Class::Region
                } else {
                    Class::Elsewhere(record.home_region.clone())
                };
                row.digest = Some(Digest::of(&bytes));
                row.canonical_bytes = bytes.len();
                row.record = Some(record);
            }
            Err(reason) => row.class = Class::Unclassifiable(reason),
        }
        row
    }

    fn check(&mut self, v: RawValues, place_is_country: bool) -> Result<SourceRecord, Reason> {
        let Some(source_key) = v.source_key.filter(|k| !k.is_empty()) else {
            return Err(Reason::NoKey(self.column_name(|c| c.source_key.clone())));
        };
        // A key is taken at its first row, whatever that row's fate, so that a duplicate is
        // reported as such even when the first row was bad.
        if !self.seen.insert(std::hash::BuildHasher::hash_one(&self.hasher, source_key.as_bytes())) {
            return Err(Reason::DuplicateKey(source_key));
        }
        let place = v.place.map(|p| p.trim().to_owned()).filter(|p| !p.is_empty());
        let Some(place) = place else {
            return Err(Reason::NoPlace(self.column_name(|c| match &c.place {
                crate::mapping::Place::HomeRegion(c) | crate::mapping::Place::Country(c) => c.clone(),
            })));
        };
        let home_region = if place_is_country {
            self.mapping.region_of_country(&place).cloned().ok_or(Reason::UnknownCountry(place))?
        } else {
            Region::new(place).map_err(Reason::BadRegion)?
        };
        let Some(subject) = v.subject.filter(|s| !s.is_empty()) else {
            return Err(Reason::NoSubject(self.column_name(|c| c.subject.clone())));
        };
        let subject = SubjectId::new(subject).map_err(Reason::BadSubject)?;
        let Some(category) = v.category.filter(|c| !c.is_empty()) else {
            return Err(Reason::NoCategory(self.column_name(|c| match &c.category {
                crate::mapping::CategorySource::Column(c) => c.clone(),
                crate::mapping::CategorySource::Fixed(c) => c.to_string(),
            })));
        };
        let category = Category::new(category).map_err(Reason::BadCategory)?;
        let birth_date = match v.birth_date.as_deref().map(str::trim).filter(|b| !b.is_empty()) {
            Some(text) => Some(parse_date(text).ok_or(Reason::BadBirthDate)?),
            None => None,
        };
        let fields = v.fields.unwrap_or_else(|| Err(Reason::FieldsNotObject("no fields".into())))?;
        Ok(SourceRecord { source_key, subject, home_region, birth_date, category, fields: Fields::new(fields) })
    }

    /// A column's name for a message: the file's, else the first table's.
    fn column_name(&self, pick: impl Fn(&crate::mapping::Columns) -> String) -> String {
        self.mapping.file.as_ref().or(self.mapping.tables.first()).map(pick).unwrap_or_default()
    }
}

/// `YYYY-MM-DD` (four digits, a year from 1), a real date, and nothing else.
fn parse_date(text: &str) -> Option<time::Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let shape = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
    if !shape {
        return None;
    }
    time::Date::parse(text, &format).ok().filter(|d| d.year() >= 1)
}

/// The fields from a JSON text: an object, or why not.
pub fn fields_from_text(text: &str) -> Result<Map<String, Value>, Reason> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(Reason::FieldsNotObject(format!("found {}", kind_of(&other)))),
        Err(e) => Err(Reason::FieldsNotObject(format!("invalid JSON ({e})"))),
    }
}

/// What kind of JSON value this is, for messages.
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping() -> Mapping {
        Mapping::parse(
            r#"
            max_record_bytes = 200
            [countries]
            IE = "eu"
            SG = "sg"
            [file]
            source_key = "id"
            subject = "user"
            country = "country"
            birth_date = "born"
            category = "profile"
            fields = "data"
            "#,
        )
        .unwrap()
    }

    fn raw(key: &str, country: &str, born: Option<&str>, fields: &str) -> RawRow {
        RawRow {
            position: Position::Line(1),
            bytes: 10,
            place_is_country: true,
            values: Ok(RawValues {
                source_key: Some(key.into()),
                subject: Some(format!("u-{key}")),
                place: Some(country.into()),
                birth_date: born.map(Into::into),
                category: Some("profile".into()),
                fields: Some(fields_from_text(fields)),
            }),
        }
    }

    #[test]
    fn rows_are_classified_by_country_and_checked() {
        let mut c = Classifier::new(Region::new("eu").unwrap(), mapping());
        let class = |c: &mut Classifier, r| c.classify(r).class;
        assert_eq!(class(&mut c, raw("1", "IE", Some("1990-01-31"), "{}")), Class::Region);
        assert_eq!(class(&mut c, raw("2", "sg", None, "{}")), Class::Elsewhere(Region::new("sg").unwrap()));
        let bad = [
            (raw("1", "IE", None, "{}"), "duplicate source key \"1\""),
            (raw("3", "FR", None, "{}"), "unknown country \"FR\""),
            (raw("4", "", None, "{}"), "no home region or country"),
            (raw("5", "IE", Some("31/01/1990"), "{}"), "YYYY-MM-DD"),
            (raw("6", "IE", Some("1990-02-30"), "{}"), "YYYY-MM-DD"),
            (raw("6b", "IE", Some("0000-01-01"), "{}"), "YYYY-MM-DD"),
            (raw("6c", "IE", Some("+990-01-01"), "{}"), "YYYY-MM-DD"),
            (raw("7", "IE", None, "[1]"), "found an array"),
            (raw("8", "IE", None, "{"), "invalid JSON"),
            (raw("9", "IE", None, &format!("{{\"a\":\"{}\"}}", "x".repeat(200))), "more than the limit of 200"),
        ];
        for (row, needle) in bad {
            match class(&mut c, row) {
                Class::Unclassifiable(reason) => assert!(reason.to_string().contains(needle), "{needle}: {reason}"),
                other => panic!("{needle}: {other:?}"),
            }
        }
        let mut r = raw("10", "IE", None, "{}");
        if let Ok(v) = &mut r.values {
            v.subject = Some("no spaces allowed".into());
        }
        assert!(matches!(class(&mut c, r), Class::Unclassifiable(Reason::BadSubject(_))));
    }
}
