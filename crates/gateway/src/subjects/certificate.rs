//! Erasure and closure certificates: a statement of what was destroyed, signed as a C2SP signed
//! note under the log's key, with the log entry it rests on and that entry's inclusion proof
//! against a signed checkpoint, so that anyone with the log's verifier key checks it offline
//! (`clover audit verify-certificate FILE --vkey KEY`, [`verify`]).
//!
//! A certificate names its subject only by a salted commitment
//! (`SHA-256("clover/certificate-subject/v1\n" || salt || "\n" || subject id)`, hex): the salt
//! goes to whoever asked for the erasure, and is not kept, so that the region's copy of the
//! certificate does not link the erased subject back to their id. The holder opens it by
//! showing the salt and the id (`--subject ID --salt HEX`).
//!
//! A statement's first line names its format (`clover/erasure-certificate/v1`,
//! `clover/closure-certificate/v1`): no log's origin line, so that no statement can pass for a
//! checkpoint, though both are signed by the same key.

use std::time::Duration;

use base64::Engine as _;
use clover_event::{Entry, EventKind, sha256_hex};
use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::hash::{Hash, leaf_hash};
use clover_tlog::note::{Note, VerifierKey};
use clover_tlog::tree::verify_inclusion;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::boundary::Boundary;
use crate::problem::ApiError;

/// The first line of an erasure certificate's statement.
pub const ERASURE_FORMAT: &str = "clover/erasure-certificate/v1";
/// The first line of a closure certificate's statement.
pub const CLOSURE_FORMAT: &str = "clover/closure-certificate/v1";

/// A signed certificate, with what proves it is in the log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// `erasure` or `closure`.
    pub kind: String,
    /// Its id.
    pub certificate_id: String,
    /// The statement: a C2SP signed note under the log's key, one fact per line (see
    /// `docs/subjects.md`).
    pub statement: String,
    /// The index of the log entry the certificate rests on: the erasure's own entry, or the
    /// closure's last entry (which holds the statement's SHA-256).
    pub log_index: u64,
    /// That entry's bytes (base64).
    pub entry: String,
    /// A checkpoint whose tree holds the entry: signed by the log's key, and cosigned by the
    /// witnesses when they have cosigned one that holds it.
    pub checkpoint: String,
    /// The entry's RFC 6962 inclusion proof in that checkpoint's tree (base64 hashes).
    pub inclusion_proof: Vec<String>,
    /// For a closure: the certificate of the account's erasure.
    #[schema(value_type = Option<Object>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erasure: Option<Box<Certificate>>,
}

/// A fresh random id or salt: 16 (or `n`) random bytes, hex.
pub(crate) fn random_hex(n: usize) -> Result<String, ApiError> {
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| ApiError::internal(std::io::Error::other("no randomness")))?;
    Ok(hex::encode(bytes))
}

/// The commitment to a subject a certificate names them by.
pub fn subject_commitment(salt: &str, subject: &str) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"clover/certificate-subject/v1\n");
    ctx.update(salt.as_bytes());
    ctx.update(b"\n");
    ctx.update(subject.as_bytes());
    hex::encode(ctx.finish().as_ref())
}

/// A time in RFC 3339.
pub(crate) fn rfc3339(time: time::OffsetDateTime) -> String {
    time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// How long a certificate waits for a checkpoint that holds its entry.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(10);

/// A signed checkpoint whose tree holds entry `index`, with its size: the served one (cosigned
/// by the witnesses) when it does, else the log's own once it does.
async fn checkpoint_holding(boundary: &Boundary, index: u64) -> Result<(String, u64), ApiError> {
    let deadline = tokio::time::Instant::now() + CHECKPOINT_WAIT;
    loop {
        let served = boundary.served_checkpoint();
        let size = Note::parse(&served).ok().and_then(|n| Checkpoint::parse(&n.text).ok()).map_or(0, |c| c.size);
        if size > index {
            return Ok((served, size));
        }
        let (own, own_size) = boundary.log().checkpoint_with_size();
        if own_size > index && tokio::time::Instant::now() >= deadline - CHECKPOINT_WAIT / 2 {
            // The witnesses have not cosigned one that holds it for a while: the log's own.
            return Ok((own.to_string(), own_size));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::internal(std::io::Error::other(format!(
                "no checkpoint holds log entry {index} after {} s",
                CHECKPOINT_WAIT.as_secs()
            ))));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Signs `statement` and makes the certificate of it, resting on entry `log_index`.
pub(crate) async fn issue(
    boundary: &Boundary,
    kind: &str,
    certificate_id: String,
    statement: &str,
    log_index: u64,
    erasure: Option<Certificate>,
) -> Result<Certificate, ApiError> {
    let statement = boundary.sign_note(statement).map_err(ApiError::internal)?;
    let entry = boundary.log().entry(log_index).await.map_err(ApiError::internal)?;
    let (checkpoint, size) = checkpoint_holding(boundary, log_index).await?;
    let proof = boundary.log().inclusion_proof(log_index, size).map_err(ApiError::internal)?;
    Ok(Certificate {
        kind: kind.to_owned(),
        certificate_id,
        statement,
        log_index,
        entry: base64::engine::general_purpose::STANDARD.encode(&entry),
        checkpoint,
        inclusion_proof: proof.iter().map(Hash::to_base64).collect(),
        erasure: erasure.map(Box::new),
    })
}

/// Keeps an issued certificate in the store.
pub(crate) async fn keep(boundary: &Boundary, certificate: &Certificate) -> Result<(), ApiError> {
    let row = clover_store::CertificateRow {
        certificate_id: certificate.certificate_id.clone(),
        kind: certificate.kind.clone(),
        document: serde_json::to_string(certificate).map_err(ApiError::internal)?,
        log_index: certificate.log_index,
        created_at: time::OffsetDateTime::now_utc(),
    };
    boundary.store().insert_certificate(&row).await.map_err(ApiError::internal)
}

/// What is wrong with a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The statement is not a signed note, or its signature does not verify with the key.
    #[error("the statement's signature does not verify with the log's key")]
    Signature(#[source] clover_tlog::note::NoteError),
    /// The statement says something the certificate does not.
    #[error("the statement {0}")]
    Statement(String),
    /// The entry is not the one the statement rests on.
    #[error("log entry {index} {problem}")]
    Entry {
        /// The entry's index.
        index: u64,
        /// What is wrong.
        problem: String,
    },
    /// The checkpoint is of another log.
    #[error("the checkpoint {0}")]
    Checkpoint(String),
    /// The checkpoint does not parse or verify, or lacks a witness's cosignature.
    #[error("the checkpoint {problem}")]
    BadCheckpoint {
        /// What is wrong: it is not a note, not signed by the log, lacks a cosignature.
        problem: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The inclusion proof does not lead to the checkpoint's root.
    #[error("the inclusion proof of log entry {0} does not lead to the checkpoint's root")]
    Inclusion(u64),
    /// The subject commitment does not open to the subject and salt given.
    #[error("the certificate is not about subject {0:?} with that salt")]
    NotTheSubject(String),
}

/// What a verified certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `erasure` or `closure`.
    pub kind: String,
    /// The statement's lines after the format line, as (key, value).
    pub facts: Vec<(String, String)>,
    /// The log index it rests on, and the checkpoint's tree size it is proven in.
    pub log_index: u64,
    /// The checkpoint's tree size.
    pub tree_size: u64,
    /// The verified erasure certificate a closure includes.
    pub erasure: Option<Box<Verified>>,
}

impl Verified {
    /// The value of the statement's line `key`.
    pub fn fact(&self, key: &str) -> Option<&str> {
        self.facts.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Checks a certificate with the log's verifier key (and the cosignature of each of
/// `witnesses` on its checkpoint): the statement's signature, that the entry is the one the
/// statement rests on, and the entry's inclusion in the signed checkpoint; for a closure, its
/// erasure certificate too. With `subject` (an id and the salt its holder was given), that the
/// certificate is about that subject.
pub fn verify(
    certificate: &Certificate,
    vkey: &VerifierKey,
    witnesses: &[VerifierKey],
    subject: Option<(&str, &str)>,
) -> Result<Verified, CertificateError> {
    let note = Note::parse(&certificate.statement).map_err(CertificateError::Signature)?;
    note.verify(vkey).map_err(CertificateError::Signature)?;
    let mut lines = note.text.lines();
    let format = lines.next().unwrap_or_default();
    let kind = match format {
        ERASURE_FORMAT => "erasure",
        CLOSURE_FORMAT => "closure",
        other => return Err(CertificateError::Statement(format!("is not a certificate (its format is {other:?})"))),
    };
    if kind != certificate.kind {
        return Err(CertificateError::Statement(format!("is of a {kind}, the file says {:?}", certificate.kind)));
    }
    let facts: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(' ')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    let fact = |key: &str| facts.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    if fact("certificate") != Some(certificate.certificate_id.as_str()) {
        return Err(CertificateError::Statement("names another certificate id".to_owned()));
    }
    let index = certificate.log_index;
    let entry = base64::engine::general_purpose::STANDARD
        .decode(&certificate.entry)
        .map_err(|_| CertificateError::Entry { index, problem: "is not base64".to_owned() })?;
    let event = match Entry::decode(&entry) {
        Ok(Entry::V2(event)) => event,
        _ => return Err(CertificateError::Entry { index, problem: "is not a current log entry".to_owned() }),
    };
    let allowed = event.decision.as_ref().is_some_and(|d| d.effect == "allow");
    match kind {
        "erasure" => {
            if fact("log") != Some(index.to_string().as_str()) {
                return Err(CertificateError::Statement(format!("rests on another log entry than {index}")));
            }
            if event.kind != EventKind::Erasure || event.action.as_deref() != Some("erase") || !allowed {
                return Err(CertificateError::Entry { index, problem: "is not an allowed erasure".to_owned() });
            }
        }
        _ => {
            let hash = sha256_hex(note.text.as_bytes());
            if event.kind != EventKind::Erasure
                || event.action.as_deref() != Some("close-account")
                || !event.detail.as_deref().is_some_and(|d| d.contains(&format!("sha256:{hash}")))
            {
                return Err(CertificateError::Entry {
                    index,
                    problem: format!("is not the closure entry of this statement (sha256:{hash})"),
                });
            }
        }
    }
    // The checkpoint: signed by the log's key, cosigned by each witness asked for.
    let bad = |problem: String, source: clover_tlog::note::NoteError| CertificateError::BadCheckpoint {
        problem,
        source: Box::new(source),
    };
    let checkpoint_note = Note::parse(&certificate.checkpoint).map_err(|e| bad("is not a note".to_owned(), e))?;
    checkpoint_note.verify(vkey).map_err(|e| bad("is not signed by the log".to_owned(), e))?;
    for witness in witnesses {
        checkpoint_note
            .verify_cosignature(witness)
            .map_err(|e| bad(format!("lacks {}'s cosignature", witness.name), e))?;
    }
    let checkpoint = Checkpoint::parse(&checkpoint_note.text).map_err(|source| CertificateError::BadCheckpoint {
        problem: "is not a checkpoint".to_owned(),
        source: Box::new(source),
    })?;
    if checkpoint.origin != vkey.name {
        return Err(CertificateError::Checkpoint(format!("is of another log ({:?})", checkpoint.origin)));
    }
    let proof: Vec<Hash> = certificate
        .inclusion_proof
        .iter()
        .map(|h| Hash::from_base64(h).ok_or(CertificateError::Inclusion(index)))
        .collect::<Result<_, _>>()?;
    if index >= checkpoint.size
        || verify_inclusion(&leaf_hash(&entry), index, checkpoint.size, &proof, &checkpoint.root).is_err()
    {
        return Err(CertificateError::Inclusion(index));
    }
    if let Some((id, salt)) = subject {
        let key = if kind == "erasure" { "subject" } else { "account" };
        if fact(key) != Some(format!("sha256:{}", subject_commitment(salt, id)).as_str()) {
            return Err(CertificateError::NotTheSubject(id.to_owned()));
        }
    }
    let erasure = match (&certificate.erasure, kind) {
        (Some(erasure), "closure") => {
            let hash =
                sha256_hex(Note::parse(&erasure.statement).map_err(CertificateError::Signature)?.text.as_bytes());
            if fact("erasure-certificate") != Some(format!("{} sha256:{hash}", erasure.certificate_id).as_str()) {
                return Err(CertificateError::Statement("names another erasure certificate".to_owned()));
            }
            Some(Box::new(verify(erasure, vkey, witnesses, subject)?))
        }
        (None, "closure") => {
            return Err(CertificateError::Statement("of a closure comes without its erasure's".to_owned()));
        }
        (Some(_), _) => {
            return Err(CertificateError::Statement("of an erasure includes another certificate".to_owned()));
        }
        (None, _) => None,
    };
    Ok(Verified { kind: kind.to_owned(), facts, log_index: index, tree_size: checkpoint.size, erasure })
}
