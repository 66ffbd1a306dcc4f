//! The body of a witness's `add-checkpoint` request (c2sp.org/tlog-witness, "add-checkpoint"):
//!
//! ```text
//! old <size the client believes the witness holds>
//! <consistency proof hash, base64>
//! ...
//!
//! <signed checkpoint note>
//! ```
//!
//! Parsing only: whether the checkpoint's signature, origin and consistency hold is the
//! witness's to check.

use crate::hash::Hash;
use crate::note::Note;

/// A parsed `add-checkpoint` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size the client believes the witness last cosigned.
    pub old: u64,
    /// The consistency proof from `old` to the checkpoint's size.
    pub proof: Vec<Hash>,
    /// The checkpoint, as a signed note.
    pub note: Note,
    /// The checkpoint note as it was sent.
    pub text: String,
}

/// Why an `add-checkpoint` body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddCheckpointError {
    /// No blank line separates the request's head from the checkpoint.
    #[error("no blank line before the checkpoint")]
    NoBlankLine,
    /// The first line is not `old <size>`.
    #[error("the first line must be `old <size>`")]
    Old,
    /// A proof line is not a base64 hash.
    #[error("a proof line is not a base64 hash")]
    ProofLine,
    /// The checkpoint is not a signed note.
    #[error("the checkpoint is not a signed note")]
    Note,
}

impl AddCheckpoint {
    /// Parses a request body.
    pub fn parse(body: &str) -> Result<Self, AddCheckpointError> {
        let (head, note_text) = body.split_once("\n\n").ok_or(AddCheckpointError::NoBlankLine)?;
        let mut lines = head.lines();
        let old = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or(AddCheckpointError::Old)?;
        let proof =
            lines.map(|line| Hash::from_base64(line).ok_or(AddCheckpointError::ProofLine)).collect::<Result<_, _>>()?;
        let note = Note::parse(note_text).map_err(|_| AddCheckpointError::Note)?;
        Ok(Self { old, proof, note, text: note_text.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_malformed_ones_say_why() {
        let note = "o\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n\u{2014} o AAAAAAE=\n";
        let hash = Hash::empty().to_base64();
        let parsed = AddCheckpoint::parse(&format!("old 0\n{hash}\n\n{note}")).unwrap();
        assert_eq!((parsed.old, parsed.proof.len()), (0, 1));
        assert_eq!(AddCheckpoint::parse("old 0\n").unwrap_err(), AddCheckpointError::NoBlankLine);
        assert_eq!(AddCheckpoint::parse(&format!("new 0\n\n{note}")).unwrap_err(), AddCheckpointError::Old);
        assert_eq!(
            AddCheckpoint::parse(&format!("old 0\nnot a hash\n\n{note}")).unwrap_err(),
            AddCheckpointError::ProofLine
        );
        assert_eq!(AddCheckpoint::parse("old 0\n\nnot a note").unwrap_err(), AddCheckpointError::Note);
    }
}
