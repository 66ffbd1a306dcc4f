//! Checkpoint bodies (c2sp.org/tlog-checkpoint).
//!
//! ```text
//! <origin>
//! <tree size, decimal>
//! <root hash, base64>
//! [extension lines]
//! ```
//!
//! Each line ends in a newline. The body is the text of a signed note.

use crate::hash::Hash;

/// A checkpoint: the log's origin, its size and its root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's unique name (a schemaless URL by convention).
    pub origin: String,
    /// The number of entries.
    pub size: u64,
    /// The root hash of the tree of `size` entries.
    pub root: Hash,
}

/// A checkpoint body that is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed checkpoint: {0}")]
pub struct CheckpointError(pub &'static str);

impl Checkpoint {
    /// The body text.
    pub fn to_text(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, self.root.to_base64())
    }

    /// Parses a body (extension lines are allowed and ignored).
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        if !text.ends_with('\n') {
            return Err(CheckpointError("it must end in a newline"));
        }
        let mut lines = text.split('\n');
        let origin = lines.next().filter(|o| !o.is_empty()).ok_or(CheckpointError("no origin line"))?;
        let size = lines.next().ok_or(CheckpointError("no size line"))?;
        if size.is_empty() || (size.len() > 1 && size.starts_with('0')) || !size.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CheckpointError("the size is not a canonical decimal"));
        }
        let size = size.parse().map_err(|_| CheckpointError("the size does not fit in 64 bits"))?;
        let root =
            lines.next().and_then(Hash::from_base64).ok_or(CheckpointError("the root is not 32 bytes of base64"))?;
        Ok(Self { origin: origin.to_owned(), size, root })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_matches_an_independent_parser() {
        let cp = Checkpoint { origin: "clover.test/eu".into(), size: 1234, root: crate::hash::leaf_hash(b"x") };
        let text = cp.to_text();
        assert_eq!(Checkpoint::parse(&text).unwrap(), cp);
        let theirs = tlog_tiles::Checkpoint::from_bytes(text.as_bytes()).unwrap();
        assert_eq!(theirs.size(), 1234);
        assert_eq!(theirs.hash().0, cp.root.0);
        for bad in [
            "o\n01\nAAAA\n",
            "o\n1\n",
            "o\nx\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
            "\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        ] {
            assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
        }
    }
}
