//! A subject's metadata: what policy decides on about them, sealed by the custodian, and the
//! facts the custodian answers from it.
//!
//! The boundary seals the metadata when a subject registers and never reads it back: before a
//! decision it asks the custodian for the facts policy needs ([`SubjectFacts`]), which the
//! custodian works out from the sealed metadata. The date itself (which gives away a birth date
//! to within a day) never leaves the custodian.

use serde::{Deserialize, Serialize};

/// What policy decides on about a subject, as sealed.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectMetadata {
    /// The day the subject reaches the age of digital consent; unknown without a birth date.
    pub adult_on: Option<time::Date>,
}

/// The facts about a subject that policy needs, and no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectFacts {
    /// Whether the subject is a minor on `today`: before the day they come of age, or with no
    /// known birth date (the stricter rules apply).
    pub minor: bool,
}

impl SubjectFacts {
    /// The facts of sealed metadata's plaintext on `today`. Plaintext that is not metadata
    /// counts as unknown: a minor.
    pub fn of(plaintext: &[u8], today: time::Date) -> Self {
        let metadata: SubjectMetadata = serde_json::from_slice(plaintext).unwrap_or_default();
        Self { minor: metadata.adult_on.is_none_or(|adult_on| today < adult_on) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_say_minor_or_not_and_unknown_is_a_minor() {
        let today = time::macros::date!(2026 - 12 - 05);
        let of = |adult_on: Option<time::Date>| {
            SubjectFacts::of(&serde_json::to_vec(&SubjectMetadata { adult_on }).unwrap(), today).minor
        };
        assert!(of(Some(time::macros::date!(2026 - 12 - 06))), "comes of age tomorrow");
        assert!(!of(Some(today)), "comes of age today");
        assert!(of(None), "no birth date");
        assert!(SubjectFacts::of(b"not metadata", today).minor);
    }
}
