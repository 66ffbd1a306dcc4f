//! An independent witness (c2sp.org/tlog-witness, c2sp.org/tlog-cosignature).
//!
//! `POST /add-checkpoint` takes `old <size>`, the consistency proof lines (base64), a blank line
//! and the log's signed checkpoint. The witness checks the log's signature with the keys it was
//! given, checks that `old` is the size it cosigned last for that log (else `409 Conflict` with
//! its size as `text/x.tlog.size`), verifies the consistency proof from its last cosigned tree to
//! the new one (else `422`), records the new tree durably, and only then answers with its
//! cosignature line. It never cosigns two checkpoints that are not consistent with each other.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use clover_model::Chain;
use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::hash::Hash;
use clover_tlog::note::{SigningKey, VerifierKey};
use clover_tlog::tree::verify_consistency;
use clover_tlog::witness::AddCheckpoint;
use tokio::sync::Mutex;

use crate::state::{self, StateError, Verified, read_state, write_state};

/// A witness: its key, the logs it witnesses, and what it cosigned last.
pub struct Witness {
    key: SigningKey,
    logs: Vec<VerifierKey>,
    state_path: PathBuf,
    /// The last tree cosigned of each log.
    state: Mutex<state::State>,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness").field("key", &self.key).field("logs", &self.logs).finish_non_exhaustive()
    }
}

impl Witness {
    /// A witness with cosignature key `key` for the logs whose checkpoint keys are `logs`,
    /// keeping its state in `state_path` (read if it exists; any other failure to read it is an
    /// error, not a fresh start).
    pub fn new(key: SigningKey, logs: Vec<VerifierKey>, state_path: &Path) -> Result<Self, StateError> {
        let state = read_state(state_path)?.unwrap_or_default();
        Ok(Self { key, logs, state_path: state_path.to_owned(), state: Mutex::new(state) })
    }

    /// The witness's cosignature verifier key.
    pub fn verifier(&self) -> VerifierKey {
        self.key.verifier()
    }

    /// Handles one add-checkpoint request body; returns the status and the answer body.
    pub async fn add_checkpoint(&self, body: &str) -> (StatusCode, String) {
        let bad = |detail: &str| (StatusCode::BAD_REQUEST, format!("{detail}\n"));
        let AddCheckpoint { old, proof, note, text: note_text } = match AddCheckpoint::parse(body) {
            Ok(request) => request,
            Err(e) => return bad(&e.to_string()),
        };
        let Ok(checkpoint) = Checkpoint::parse(&note.text) else { return bad("the checkpoint body is malformed") };
        let Some(log_key) = self.logs.iter().find(|k| k.name == checkpoint.origin) else {
            return (StatusCode::NOT_FOUND, format!("unknown log {:?}\n", checkpoint.origin));
        };
        if note.verify(log_key).is_err() {
            tracing::warn!(origin = %checkpoint.origin, "refused a checkpoint whose log signature does not verify");
            return (StatusCode::FORBIDDEN, "the log's signature does not verify\n".to_owned());
        }
        if old > checkpoint.size {
            return bad("old size is larger than the checkpoint's");
        }
        let mut state = self.state.lock().await;
        let (known_size, known_root) = match state.get(&checkpoint.origin) {
            Some(w) => (w.size, w.root),
            None => (0, Hash::empty()),
        };
        if old != known_size {
            return (StatusCode::CONFLICT, format!("{known_size}\n"));
        }
        if verify_consistency(known_size, checkpoint.size, &known_root, &checkpoint.root, &proof).is_err() {
            tracing::warn!(origin = %checkpoint.origin, old, new = checkpoint.size, "refused an inconsistent checkpoint");
            return (StatusCode::UNPROCESSABLE_ENTITY, "the consistency proof does not verify\n".to_owned());
        }
        let mut next = state.clone();
        next.insert(
            checkpoint.origin.clone(),
            Verified { size: checkpoint.size, root: checkpoint.root, checkpoint: Some(note_text.clone()) },
        );
        if let Err(e) = write_state(&self.state_path, &next) {
            tracing::error!(error = %Chain(&e), "cannot record the witnessed checkpoint; not cosigning");
            return (StatusCode::INTERNAL_SERVER_ERROR, "cannot record the checkpoint\n".to_owned());
        }
        *state = next;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        tracing::info!(origin = %checkpoint.origin, size = checkpoint.size, "cosigned");
        (StatusCode::OK, self.key.cosign(&note.text, now))
    }
}

async fn add_checkpoint(State(witness): State<Arc<Witness>>, body: String) -> Response {
    let (status, text) = witness.add_checkpoint(&body).await;
    let content_type = if status == StatusCode::CONFLICT { "text/x.tlog.size" } else { "text/plain; charset=utf-8" };
    (status, [(header::CONTENT_TYPE, content_type)], text).into_response()
}

/// The witness's HTTP API.
pub fn router(witness: Arc<Witness>) -> Router {
    Router::new().route("/add-checkpoint", axum::routing::post(add_checkpoint)).with_state(witness)
}

#[cfg(test)]
mod tests {
    use clover_tlog::hash::leaf_hash;
    use clover_tlog::note::{Note, TYPE_COSIGNATURE, TYPE_ED25519};
    use clover_tlog::tree::{LeafTree, consistency_proof, root};

    use super::*;

    fn signed(log: &SigningKey, tree: &LeafTree, size: u64) -> String {
        let body = Checkpoint { origin: log.name().to_owned(), size, root: root(tree, size).unwrap() }.to_text();
        format!("{body}\n{}", log.sign_note(&body))
    }

    fn request(tree: &LeafTree, old: u64, note: &str) -> String {
        let proof: String =
            consistency_proof(tree, old, Checkpoint::parse(&Note::parse(note).unwrap().text).unwrap().size)
                .unwrap()
                .iter()
                .map(|h| format!("{h}\n"))
                .collect();
        format!("old {old}\n{proof}\n{note}")
    }

    #[tokio::test]
    async fn cosigns_only_consistent_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let log = SigningKey::generate("clover.test/eu", TYPE_ED25519).unwrap();
        let key = SigningKey::generate("witness.test", TYPE_COSIGNATURE).unwrap();
        let witness = Witness::new(key, vec![log.verifier()], &dir.path().join("state.json")).unwrap();
        let tree = LeafTree((0..20).map(|i| leaf_hash(&[i])).collect());

        let first = signed(&log, &tree, 5);
        let (status, line) = witness.add_checkpoint(&request(&tree, 0, &first)).await;
        assert_eq!(status, StatusCode::OK, "{line}");
        let cosigned = Note::parse(&format!("{first}{line}")).unwrap();
        cosigned.verify_cosignature(&witness.verifier()).unwrap();

        // A stale `old` gets 409 with the witness's size.
        let second = signed(&log, &tree, 12);
        assert_eq!(witness.add_checkpoint(&request(&tree, 0, &second)).await, (StatusCode::CONFLICT, "5\n".into()));
        assert_eq!(witness.add_checkpoint(&request(&tree, 5, &second)).await.0, StatusCode::OK);

        // A fork (same log key, different history) is refused.
        let mut forked = tree.clone();
        forked.0[0] = leaf_hash(b"rewritten");
        let fork = signed(&log, &forked, 15);
        assert_eq!(witness.add_checkpoint(&request(&forked, 12, &fork)).await.0, StatusCode::UNPROCESSABLE_ENTITY);
        // An unknown log, a bad signature.
        let stranger = SigningKey::generate("other.test", TYPE_ED25519).unwrap();
        assert_eq!(
            witness.add_checkpoint(&request(&tree, 0, &signed(&stranger, &tree, 3))).await.0,
            StatusCode::NOT_FOUND
        );
        let impostor = SigningKey::generate("clover.test/eu", TYPE_ED25519).unwrap();
        assert_eq!(
            witness.add_checkpoint(&request(&tree, 12, &signed(&impostor, &tree, 14))).await.0,
            StatusCode::FORBIDDEN
        );

        // The state survives a restart.
        drop(witness);
        let key = SigningKey::generate("witness.test", TYPE_COSIGNATURE).unwrap();
        let witness = Witness::new(key, vec![log.verifier()], &dir.path().join("state.json")).unwrap();
        assert_eq!(
            witness.add_checkpoint(&request(&tree, 0, &signed(&log, &tree, 20))).await,
            (StatusCode::CONFLICT, "12\n".into())
        );
    }
}
