//! Validated identifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// An identifier that did not have the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {rule}")]
pub struct InvalidId {
    /// Which kind of identifier was being read (`subject id`, `region`, ...).
    pub kind: &'static str,
    /// The rejected input, cut to 64 characters.
    pub value: String,
    /// What the identifier must look like.
    pub rule: &'static str,
}

impl InvalidId {
    fn new(kind: &'static str, value: &str, rule: &'static str) -> Self {
        Self { kind, value: value.chars().take(64).collect(), rule }
    }
}

/// Defines a string identifier whose characters and length are checked on construction.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal, $allowed:expr, $whole:expr, $rule:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks `value` and wraps it.
            pub fn new(value: impl Into<String>) -> Result<Self, InvalidId> {
                let value = value.into();
                let allowed: fn(char) -> bool = $allowed;
                let whole: fn(&str) -> bool = $whole;
                if value.is_empty() || value.len() > $max || !value.chars().all(allowed) || !whole(&value) {
                    return Err(InvalidId::new($kind, &value, $rule));
                }
                Ok(Self(value))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

fn is_opaque_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')
}

/// No rule on the whole value beyond its characters and length.
fn any_value(_: &str) -> bool {
    true
}

/// Whether `value` is more than dots. `.` and `..` are dot-segments, which URL resolution
/// (RFC 3986, section 5.2.4) removes from a path before it is sent or routed: a subject with such
/// an id could not be addressed as `/v1/subjects/{id}` reliably (a client or a proxy may turn
/// `/v1/subjects/../records` into `/v1/records`). `...` and longer are not dot-segments, but
/// are refused too, so that the rule is one a person can state.
fn not_only_dots(value: &str) -> bool {
    !value.chars().all(|c| c == '.')
}

string_id!(
    /// A jurisdiction with its own boundary (`eu`, `us`, `sg`, ...).
    Region,
    "region",
    32,
    is_name_char,
    any_value,
    "1 to 32 characters of a-z, 0-9 and '-'"
);

string_id!(
    /// A site (data centre or office network) of a region, such as `dublin-1`.
    SiteName,
    "site",
    64,
    is_name_char,
    any_value,
    "1 to 64 characters of a-z, 0-9 and '-'"
);

string_id!(
    /// A record category (`profile`, `contact`, `messages`, ...); which ones exist is
    /// configuration, not code.
    Category,
    "category",
    64,
    is_name_char,
    any_value,
    "1 to 64 characters of a-z, 0-9 and '-'"
);

string_id!(
    /// The platform's opaque id for a data subject. Clover never derives meaning from it.
    SubjectId,
    "subject id",
    128,
    is_opaque_id_char,
    not_only_dots,
    "1 to 128 characters of A-Z, a-z, 0-9 and '-', '_', '.', ':', '@', not only dots"
);

string_id!(
    /// The id of an employee or service calling the gateway.
    PrincipalId,
    "principal id",
    128,
    is_opaque_id_char,
    not_only_dots,
    "1 to 128 characters of A-Z, a-z, 0-9 and '-', '_', '.', ':', '@', not only dots"
);

/// The id of a record: a random UUID chosen by the boundary when the record is written.
///
/// It has one spelling, the one the boundary writes: hyphenated, in lowercase. Any other
/// (uppercase, without hyphens, in braces, as a URN) is refused rather than read as the same id,
/// so that one record has one URL: whatever keys on the path before the boundary reads it (a
/// proxy's rules, a cache, an access log, a rate limit) sees the record under one name only.
/// No client holds another spelling: record ids come from the boundary's answers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RecordId(uuid::Uuid);

impl RecordId {
    /// A fresh random record id.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// The 16 bytes of the id.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The id whose bytes are `bytes` ([`RecordId::as_bytes`]).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(uuid::Uuid::from_bytes(bytes))
    }
}

impl FromStr for RecordId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const RULE: &str = "a UUID in lowercase with hyphens, such as 0b8e6f7a-3c1d-4f2e-9a5b-6c7d8e9f0a1b";
        let id = uuid::Uuid::try_parse(s).map_err(|_| InvalidId::new("record id", s, RULE))?;
        let mut canonical = uuid::Uuid::encode_buffer();
        if id.hyphenated().encode_lower(&mut canonical) != s {
            return Err(InvalidId::new("record id", s, RULE));
        }
        Ok(Self(id))
    }
}

impl<'de> Deserialize<'de> for RecordId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({})", self.0.hyphenated())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_their_alphabet_and_refuse_the_rest() {
        assert!(SubjectId::new("user:42@app").is_ok());
        assert!(SubjectId::new("").is_err());
        assert!(SubjectId::new("a/b").is_err());
        assert!(SubjectId::new("x".repeat(129)).is_err());
        assert!(Region::new("eu").is_ok());
        assert!(Region::new("EU").is_err());
        let err = Category::new("Pro file").unwrap_err();
        assert_eq!(err.to_string(), "invalid category \"Pro file\": 1 to 64 characters of a-z, 0-9 and '-'");
    }

    #[test]
    fn record_ids_round_trip_in_one_spelling() {
        let id = RecordId::random();
        assert_eq!(id.to_string().parse::<RecordId>().unwrap(), id);
        assert!("not-a-uuid".parse::<RecordId>().is_err());
        assert!("0b8e6f7a3c1d4f2e9a5b6c7d8e9f0a1b".parse::<RecordId>().is_err());
    }

    #[test]
    fn a_record_id_has_one_spelling_only() {
        // A fixed id whose first group has letters: a random one whose first eight characters
        // are all digits reads the same uppercased, and the second spelling below would be none.
        let id: RecordId = "0b8e6f7a-3c1d-4f2e-9a5b-6c7d8e9f0a1b".parse().unwrap();
        let lower = id.to_string();
        assert_eq!(lower, lower.to_ascii_lowercase());
        for other in [
            lower.to_ascii_uppercase(),
            format!("{}{}", &lower[..8].to_ascii_uppercase(), &lower[8..]),
            format!("{{{lower}}}"),
            format!("urn:uuid:{lower}"),
            lower.replace('-', ""),
        ] {
            let err = other.parse::<RecordId>().unwrap_err();
            assert!(err.to_string().contains("lowercase"), "{other}: {err}");
            assert!(serde_json::from_value::<RecordId>(serde_json::json!(other)).is_err(), "{other}");
        }
        assert_eq!(serde_json::from_value::<RecordId>(serde_json::json!(lower)).unwrap(), id);
    }

    #[test]
    fn a_subject_id_is_more_than_dots() {
        for dots in [".", "..", "...", "...."] {
            let err = SubjectId::new(dots).unwrap_err();
            assert!(err.to_string().contains("not only dots"), "{err}");
            assert!(serde_json::from_value::<SubjectId>(serde_json::json!(dots)).is_err());
        }
        for fine in ["a.", ".a", "a..b", "user.name", "...x"] {
            assert!(SubjectId::new(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn a_principal_id_is_more_than_dots() {
        // A token's `sub` names the principal in log lines, approvals and the bulk counter: a
        // dot-segment is no name.
        for dots in [".", "..", "..."] {
            let err = PrincipalId::new(dots).unwrap_err();
            assert!(err.to_string().contains("not only dots"), "{err}");
        }
        assert!(PrincipalId::new("ana.lopez").is_ok());
    }
}
