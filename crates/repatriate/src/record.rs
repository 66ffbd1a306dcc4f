//! A record as the source holds it, its canonical encoding and its digest (pure code).
//!
//! The canonical encoding (docs/repatriation.md says it for other tools) is the JSON object
//! `{"category":C,"fields":F,"source_key":K,"subject":S}`: keys sorted by their UTF-8 bytes at
//! every depth, no whitespace, UTF-8, strings escaped as serde_json escapes them (`"`, `\` and
//! the control characters below U+0020 only, as `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t` or
//! `\u00xx` in lower-case hex), integers from -2^63 to 2^64-1 in decimal, any other number as
//! the nearest double in the form of RFC 8785 §3.2.2.3 (ECMAScript's `Number.prototype.toString`:
//! `1.5`, `100`, `0.000001234`, `1e+21`, `1.5e-7`, `0` for -0). The form is Clover's own code,
//! not a library's, so that no upgrade changes a digest. The digest is SHA-256 of those bytes.

use std::fmt;

use aws_lc_rs::digest::{SHA256, digest};
use clover_model::{Category, Fields, Region, SubjectId};
use serde::{Serialize, Serializer};
use serde_json::Value;

/// One row of a source, read and checked: what comes home (or stays where it is).
///
/// Holds personal data: its `Debug` shows the fields' count only (see [`Fields`]).
#[derive(Debug, PartialEq)]
pub struct SourceRecord {
    /// The row's stable key in the source (the mapping's `source_key` column, as text).
    pub source_key: String,
    /// The data subject.
    pub subject: SubjectId,
    /// The subject's home region, from the row's region or country.
    pub home_region: Region,
    /// The subject's birth date, when the source has one.
    pub birth_date: Option<time::Date>,
    /// The record's category.
    pub category: Category,
    /// The personal fields.
    pub fields: Fields,
}

/// A SHA-256 digest: of a record's canonical bytes, or a Merkle root.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, bytes).as_ref());
        Self(out)
    }

    /// The digest in lower-case hex, as `sha256sum` and `hashlib` print it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Reads the hex form.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// The canonical bytes of a record (see the module's documentation).
pub fn canonical_bytes(record: &SourceRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"category\":");
    write_string(&mut out, record.category.as_str());
    out.extend_from_slice(b",\"fields\":{");
    write_members(&mut out, record.fields.as_map());
    out.extend_from_slice(b"},\"source_key\":");
    write_string(&mut out, &record.source_key);
    out.extend_from_slice(b",\"subject\":");
    write_string(&mut out, record.subject.as_str());
    out.push(b'}');
    out
}

/// SHA-256 of the record's canonical bytes.
pub fn record_digest(record: &SourceRecord) -> Digest {
    Digest::of(&canonical_bytes(record))
}

/// The canonical JSON of one value (the same rules), for a field's or a whole object's size.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.extend_from_slice(i.to_string().as_bytes()),
            (None, Some(u), _) => out.extend_from_slice(u.to_string().as_bytes()),
            (None, None, Some(f)) => out.extend_from_slice(number_text(f).as_bytes()),
            // A `Value`'s number is an integer or a finite double.
            (None, None, None) => out.extend_from_slice(b"null"),
        },
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            write_members(out, map);
            out.push(b'}');
        }
    }
}

/// An object's members without the braces, sorted by key (UTF-8 bytes, which is code point
/// order). The map's own order is not used: serde_json may keep insertion order.
fn write_members(out: &mut Vec<u8>, map: &serde_json::Map<String, Value>) {
    let mut members: Vec<(&String, &Value)> = map.iter().collect();
    members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for (i, (key, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, key);
        out.push(b':');
        write_value(out, value);
    }
}

/// A double as RFC 8785 §3.2.2.3 (ECMAScript) writes it: shortest round-trip digits, plain
/// between 1e-6 and 1e21, else with an exponent whose sign is always written.
pub fn number_text(f: f64) -> String {
    if !f.is_finite() {
        return "null".to_owned();
    }
    if f == 0.0 {
        return "0".to_owned();
    }
    if f < 0.0 {
        return format!("-{}", number_text(-f));
    }
    // Rust's `{:e}` prints the shortest digits that read back as `f`: `1.234e-6`, `1e21`.
    let scientific = format!("{f:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i64;
    // The value is 0.DIGITS x 10^n.
    let n = exponent.parse::<i64>().unwrap_or(0) + 1;
    let (head, tail) = digits.split_at(usize::try_from(n.clamp(0, k)).unwrap_or(0));
    if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat(usize::try_from(n - k).unwrap_or(0)))
    } else if 0 < n && n <= 21 {
        format!("{head}.{tail}")
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat(usize::try_from(-n).unwrap_or(0)))
    } else {
        let sign = if n - 1 < 0 { '-' } else { '+' };
        let (first, rest) = digits.split_at(1.min(digits.len()));
        let dot = if rest.is_empty() { "" } else { "." };
        format!("{first}{dot}{rest}e{sign}{}", (n - 1).abs())
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(fields: Value) -> SourceRecord {
        let Value::Object(map) = fields else { panic!("an object") };
        SourceRecord {
            source_key: "k1".into(),
            subject: SubjectId::new("u-1").unwrap(),
            home_region: Region::new("eu").unwrap(),
            birth_date: None,
            category: Category::new("profile").unwrap(),
            fields: Fields::new(map),
        }
    }

    #[test]
    fn the_encoding_is_sorted_compact_and_escaped_as_documented() {
        let r = record(
            json!({"z": 1, "a": {"y": [1.5, 100.0, 1e16, -0.0, 0.000001234], "b": null}, "é": "line\n\"q\"\u{1}/é"}),
        );
        let text = String::from_utf8(canonical_bytes(&r)).unwrap();
        assert_eq!(
            text,
            r#"{"category":"profile","fields":{"a":{"b":null,"y":[1.5,100,10000000000000000,0,0.000001234]},"z":1,"é":"line\n\"q\"\u0001/é"},"source_key":"k1","subject":"u-1"}"#
        );
        assert_eq!(record_digest(&r), Digest::of(text.as_bytes()));
        assert_eq!(Digest::from_hex(&record_digest(&r).to_hex()), Some(record_digest(&r)));
    }

    #[test]
    fn numbers_follow_rfc_8785() {
        let cases = [
            (1.5, "1.5"),
            (100.0, "100"),
            (0.1, "0.1"),
            (-0.0, "0"),
            (1e21, "1e+21"),
            (1.5e-7, "1.5e-7"),
            (1e-7, "1e-7"),
            (0.000001, "0.000001"),
            (123456789012345680000.0, "123456789012345680000"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (-12.75, "-12.75"),
            (0.3333333333333333, "0.3333333333333333"),
        ];
        for (f, text) in cases {
            assert_eq!(number_text(f), text, "{f:e}");
        }
    }

    #[test]
    fn the_birth_date_and_home_region_are_not_part_of_the_digest() {
        let a = record(json!({"n": 1}));
        let mut b = record(json!({"n": 1}));
        b.birth_date = Some(time::macros::date!(2010 - 01 - 01));
        b.home_region = Region::new("sg").unwrap();
        assert_eq!(record_digest(&a), record_digest(&b));
        assert_ne!(record_digest(&a), record_digest(&record(json!({"n": 2}))));
    }
}
