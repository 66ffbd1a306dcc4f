//! Personal data in the clear.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The personal fields of a record: a JSON object.
///
/// Values of this type hold personal data in the clear, so its `Debug` output names only the
/// field names' count, never a value, and it is not `Clone`: a copy of personal data should be
/// a visible decision.
#[derive(Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Fields(serde_json::Map<String, serde_json::Value>);

impl Fields {
    /// Wraps a JSON object.
    pub fn new(map: serde_json::Map<String, serde_json::Value>) -> Self {
        Self(map)
    }

    /// The fields as a JSON object.
    pub fn as_map(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.0
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The canonical bytes that are encrypted at rest (compact JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a map of JSON values to a Vec cannot fail.
        serde_json::to_vec(&self.0).unwrap_or_default()
    }

    /// Reads the bytes that [`Fields::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes).map(Self)
    }
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fields({} redacted)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_values() {
        let fields: Fields = serde_json::from_str(r#"{"name":"Ada Lovelace"}"#).unwrap();
        let shown = format!("{fields:?}");
        assert_eq!(shown, "Fields(1 redacted)");
        assert_eq!(Fields::from_bytes(&fields.to_bytes()).unwrap(), fields);
    }
}
