//! Collecting witness cosignatures (c2sp.org/tlog-witness).
//!
//! A background task sends each new checkpoint to every configured witness with a consistency
//! proof from the size that witness cosigned last, and keeps the checkpoint once every witness
//! has cosigned it. `/log/checkpoint` serves that cosigned checkpoint; until the first one, and
//! when no witness is configured, it serves the log's latest.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use clover_log::{Log, LogError};
use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::note::{Note, NoteError, VerifierKey};

use crate::config::WitnessConfig;
use crate::report::Chain;

/// How often the task looks for a new checkpoint.
const POLL: Duration = Duration::from_millis(20);

struct Witness {
    url: String,
    vkey: VerifierKey,
    /// The size this witness cosigned last, as far as we know.
    size: u64,
}

/// The latest checkpoint cosigned by every witness.
#[derive(Clone, Default)]
pub struct Cosigned(Arc<RwLock<Option<String>>>);

impl Cosigned {
    /// The cosigned checkpoint note, if there is one yet.
    pub fn get(&self) -> Option<String> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set(&self, note: String) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(note);
    }
}

/// Starts the task that collects cosignatures, calling the witnesses with `client` (mutual TLS
/// for `https://` witnesses); returns where it keeps the result.
pub fn start(log: Log, witnesses: &[WitnessConfig], client: reqwest::Client) -> Cosigned {
    let cosigned = Cosigned::default();
    let mut witnesses: Vec<Witness> = witnesses
        .iter()
        .filter_map(|w| VerifierKey::parse(&w.vkey).ok().map(|vkey| Witness { url: w.url.clone(), vkey, size: 0 }))
        .collect();
    if witnesses.is_empty() {
        return cosigned;
    }
    let result = cosigned.clone();
    tokio::spawn(async move {
        let mut done_size = None;
        loop {
            let note = log.checkpoint().to_string();
            let size = Note::parse(&note).ok().and_then(|n| Checkpoint::parse(&n.text).ok()).map(|c| c.size);
            if let Some(size) = size
                && done_size != Some(size)
            {
                let mut lines = String::new();
                let mut all = true;
                for witness in &mut witnesses {
                    match cosign(&client, &log, witness, &note, size).await {
                        Ok(line) => lines.push_str(&line),
                        Err(e) => {
                            tracing::warn!(witness = %witness.vkey.name, url = %witness.url, error = %Chain(&e), "no cosignature");
                            all = false;
                        }
                    }
                }
                if all {
                    result.set(format!("{note}{lines}"));
                    done_size = Some(size);
                }
            }
            tokio::time::sleep(POLL).await;
        }
    });
    cosigned
}

/// Why a witness gave no cosignature.
#[derive(Debug, thiserror::Error)]
enum CosignError {
    /// The log could not prove the witness's size consistent with the new one.
    #[error(transparent)]
    Proof(#[from] LogError),
    /// The witness could not be reached, or its answer not read.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// A 409 (the witness knows another size) whose body is not a size.
    #[error("409 with body {0:?}")]
    BadConflict(String),
    /// The witness refused the checkpoint.
    #[error("HTTP {status}: {body}")]
    Refused {
        /// Its status.
        status: reqwest::StatusCode,
        /// What it said.
        body: String,
    },
    /// The cosignature is not a note line, or does not verify with the witness's key.
    #[error(transparent)]
    Cosignature(#[from] NoteError),
    /// The witness answered 409 again after the size it gave.
    #[error("the witness keeps answering 409")]
    KeepsConflicting,
}

async fn cosign(
    client: &reqwest::Client,
    log: &Log,
    witness: &mut Witness,
    note: &str,
    size: u64,
) -> Result<String, CosignError> {
    for _ in 0..2 {
        let old = witness.size.min(size);
        let proof = log.consistency_proof(old, size)?;
        let mut body = format!("old {old}\n");
        for hash in proof {
            body.push_str(&format!("{hash}\n"));
        }
        body.push('\n');
        body.push_str(note);
        let response =
            client.post(format!("{}/add-checkpoint", witness.url.trim_end_matches('/'))).body(body).send().await?;
        let status = response.status();
        let text = response.text().await?;
        if status == reqwest::StatusCode::CONFLICT {
            // The witness knows a different size: start again from it.
            witness.size = text.trim().parse().map_err(|_| CosignError::BadConflict(text.clone()))?;
            continue;
        }
        if !status.is_success() {
            return Err(CosignError::Refused { status, body: text.trim().to_owned() });
        }
        // Keep only a cosignature that verifies, by this witness, on this checkpoint.
        let cosigned = Note::parse(&format!("{note}{text}"))?;
        cosigned.verify_cosignature(&witness.vkey)?;
        witness.size = size;
        return Ok(text);
    }
    Err(CosignError::KeepsConflicting)
}
