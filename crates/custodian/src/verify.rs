//! Checking a boundary's receipt against its signed log.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clover_audit::state::{State, StateError, Verified, read_state, write_state};
use clover_event::{Entry, EventError, EventKind, RecordOpening, SubjectTag, is_subject_hash};
use clover_model::Action;
use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::hash::{Hash, leaf_hash};
use clover_tlog::note::{Note, VerifierKey};
use clover_tlog::tree::{verify_consistency, verify_inclusion};
use clover_tlog::witness::AddCheckpoint;
use serde::Deserialize;

use crate::custodian::access::{KeyScope, LoggedAccess, TokenScope};

/// How often the proof of an entry is asked for, 20 ms apart, before the custodian gives up
/// for now (3 s).
const PROOF_ATTEMPTS: usize = 150;

/// Why a receipt was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// The log answered something else than what was asked for.
    #[error("the log at {url} cannot be checked: {detail}")]
    Unreachable {
        /// The log's URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The log could not be reached, or its answer does not parse.
    #[error("the log at {url} cannot be checked")]
    Unreadable {
        /// The log's URL.
        url: String,
        /// The client's or the parser's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The log's checkpoint is not signed by the log's key.
    #[error("the log's checkpoint is not signed by {0}")]
    BadCheckpoint(String),
    /// The entry is not in the log at that index.
    #[error("entry {0} is not in the signed log (wrong index, or the entry was altered)")]
    NotInLog(u64),
    /// The log's checkpoint is not consistent with one verified before: a fork, or a shrink.
    #[error("the log's checkpoint of size {new} is not consistent with the one of size {old} verified before")]
    Inconsistent {
        /// The size verified before.
        old: u64,
        /// The size now.
        new: u64,
    },
    /// The checkpoint just verified could not be kept in the state file; the receipt is not
    /// honoured until it is.
    #[error(transparent)]
    State(#[from] StateError),
    /// No checkpoint that covers the entry carries the cosignatures of a quorum of the
    /// configured witnesses (in time): the custodian honours receipts only under a checkpoint
    /// that the public's witnesses have seen, so that a log shown to it alone (a split view)
    /// unlocks nothing.
    #[error(
        "no checkpoint covering entry {index} is cosigned by {quorum} of the witnesses {witnesses:?} (the best had {had}): \
         the custodian honours receipts only under a checkpoint the witnesses have seen"
    )]
    NotCosigned {
        /// The entry's index.
        index: u64,
        /// How many cosignatures are needed.
        quorum: usize,
        /// How many the best checkpoint seen covering the entry had (0 if none covered it).
        had: usize,
        /// The witnesses' names.
        witnesses: Vec<String>,
    },
    /// The entry does not allow what was asked.
    #[error("log entry {index} does not allow this: {detail}")]
    NotAllowed {
        /// The entry's index.
        index: u64,
        /// Why.
        detail: String,
    },
}

/// Why the custodian, as a witness, does not cosign a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CosignRefusal {
    /// The request is not an add-checkpoint request.
    #[error(transparent)]
    Request(#[from] clover_tlog::witness::AddCheckpointError),
    /// The request's checkpoint is not one: its body does not parse, or its old size is past it.
    #[error("{0}")]
    Malformed(String),
    /// The checkpoint is of another log than the one whose receipts this custodian checks.
    #[error("unknown log {0:?}")]
    UnknownLog(String),
    /// The log's signature does not verify.
    #[error("the log's signature does not verify")]
    BadSignature,
    /// The request's old size is not the size the custodian verified last (which it gives).
    #[error("{0}")]
    Conflict(u64),
    /// The consistency proof does not verify: a fork, or a shrink.
    #[error("the checkpoint of size {new} is not consistent with the one of size {old} verified before")]
    Inconsistent {
        /// The size verified before.
        old: u64,
        /// The size presented.
        new: u64,
    },
    /// The checkpoint could not be kept; not cosigned.
    #[error("cannot record the checkpoint")]
    State(#[source] ReceiptError),
}

#[derive(Deserialize)]
struct ConsistencyAnswer {
    proof: Vec<String>,
}

/// How old a log entry may be when it is presented: a receipt is for the access it records,
/// now, not a standing pass.
pub const MAX_RECEIPT_AGE: Duration = Duration::from_secs(600);

#[derive(Deserialize)]
struct InclusionAnswer {
    size: u64,
    proof: Vec<String>,
    checkpoint: Option<String>,
}

/// The witnesses whose cosignatures a checkpoint must carry before receipts under it are
/// honoured, and how many of them make a quorum: the same witnesses that auditors demand with
/// `clover audit verify --witness`. A witness cosigns only checkpoints consistent with every one
/// it cosigned before, so a log shown to the custodian alone (a fork, signed with the boundary's
/// own key) never gathers the quorum while the witnesses see the public one.
#[derive(Debug, Clone, Default)]
pub struct WitnessQuorum {
    witnesses: Vec<VerifierKey>,
    quorum: usize,
}

/// Why a witness quorum cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    /// The quorum is 0 or larger than the witnesses given.
    #[error("a quorum of {quorum} is not between 1 and the {witnesses} witnesses given")]
    OutOfRange {
        /// The quorum asked for.
        quorum: usize,
        /// How many witnesses there are.
        witnesses: usize,
    },
    /// A witness is given twice (it would count twice).
    #[error("witness {0:?} is given twice")]
    Duplicate(String),
    /// A witness key is not a cosignature key.
    #[error("{0:?} is not a cosignature key (c2sp.org/tlog-cosignature)")]
    NotCosignatureKey(String),
}

impl WitnessQuorum {
    /// No witnesses: checkpoints are trusted on the log's signature and the custodian's own
    /// consistency checks alone (the embedded default on one machine; a split view is then
    /// possible, see docs/security.md).
    pub fn none() -> Self {
        Self::default()
    }

    /// `quorum` of `witnesses` (all of them when `None`).
    pub fn new(witnesses: Vec<VerifierKey>, quorum: Option<usize>) -> Result<Self, QuorumError> {
        let quorum = quorum.unwrap_or(witnesses.len());
        if witnesses.is_empty() && quorum == 0 {
            return Ok(Self::none());
        }
        if quorum == 0 || quorum > witnesses.len() {
            return Err(QuorumError::OutOfRange { quorum, witnesses: witnesses.len() });
        }
        for (i, w) in witnesses.iter().enumerate() {
            if w.key_type != clover_tlog::note::TYPE_COSIGNATURE {
                return Err(QuorumError::NotCosignatureKey(w.name.clone()));
            }
            if witnesses.iter().take(i).any(|o| o.name == w.name) {
                return Err(QuorumError::Duplicate(w.name.clone()));
            }
        }
        Ok(Self { witnesses, quorum })
    }

    /// Whether no witness is demanded.
    pub fn is_empty(&self) -> bool {
        self.witnesses.is_empty()
    }

    /// How many cosignatures make a quorum (0 with no witnesses).
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// The witnesses' names.
    pub fn names(&self) -> Vec<String> {
        self.witnesses.iter().map(|w| w.name.clone()).collect()
    }

    /// How many of the witnesses validly cosigned `note`.
    pub fn cosignatures(&self, note: &Note) -> usize {
        self.witnesses.iter().filter(|w| note.verify_cosignature(w).is_ok()).count()
    }
}

/// How long a receipt waits, by default, for a checkpoint that covers its entry to be cosigned
/// by the witness quorum: the boundary sends each new checkpoint to its witnesses at once, so
/// this is a bound for a slow witness, not the usual wait (one witness round trip).
pub const COSIGNATURE_WAIT: Duration = Duration::from_secs(10);

/// Checks entries against one boundary's log, and every checkpoint it sees against the last one
/// it verified (kept in a file when given one), so that the boundary cannot show it a fork.
#[derive(Debug, Clone)]
pub struct LogVerifier {
    url: String,
    vkey: VerifierKey,
    http: reqwest::Client,
    seen: std::sync::Arc<tokio::sync::Mutex<Option<(u64, Hash)>>>,
    state: Option<std::path::PathBuf>,
    quorum: WitnessQuorum,
    /// The newest checkpoint verified with its quorum, under which receipts are honoured
    /// without asking the log again while the next one is being cosigned.
    cosigned: std::sync::Arc<std::sync::Mutex<Option<Checkpoint>>>,
    wait: Duration,
}

impl LogVerifier {
    /// A verifier of the log served at `url` (the boundary's base URL) and signed by `vkey`.
    pub fn new(url: &str, vkey: VerifierKey) -> Self {
        let http = clover_tls::ClientTls::platform_client(Duration::from_secs(10));
        Self {
            url: url.trim_end_matches('/').to_owned(),
            vkey,
            http,
            seen: Default::default(),
            state: None,
            quorum: WitnessQuorum::none(),
            cosigned: Default::default(),
            wait: COSIGNATURE_WAIT,
        }
    }

    /// Honours receipts only under checkpoints cosigned by `quorum` of its witnesses, waiting
    /// at most `wait` for one that covers a receipt's entry.
    #[must_use]
    pub fn with_witnesses(mut self, quorum: WitnessQuorum, wait: Duration) -> Self {
        self.quorum = quorum;
        self.wait = wait;
        self
    }

    /// The witnesses demanded.
    pub fn witnesses(&self) -> &WitnessQuorum {
        &self.quorum
    }

    /// The size of the newest checkpoint verified (with its quorum, when one is demanded, or
    /// cosigned as a witness).
    pub async fn verified_size(&self) -> Option<u64> {
        self.seen.lock().await.map(|(size, _)| size)
    }

    /// Fetches the log with `http`: one made by [`clover_tls::ClientTls`], for a boundary served
    /// over TLS.
    #[must_use]
    pub fn with_client(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// Keeps the last verified checkpoint in the state file `path` (read now), so that
    /// consistency is checked across restarts too. Only a file that does not exist (the first
    /// start) means no checkpoint yet: a file that cannot be read, is damaged, or is for another
    /// log is an error, and the custodian must not start (trusting the log from scratch would let
    /// a fork through). The file is left as it was.
    pub fn with_state(mut self, path: std::path::PathBuf) -> Result<Self, StateError> {
        if let Some(state) = read_state(&path)?
            && let Some(last) = state.of_log(&path, &self.vkey.name)?
        {
            self.seen = std::sync::Arc::new(tokio::sync::Mutex::new(Some((last.size, last.root))));
        }
        self.state = Some(path);
        Ok(self)
    }

    /// Checks `checkpoint` (signed in `note`) against the last one verified, and remembers it
    /// if it is newer. An older checkpoint is accepted when the one verified extends it (a
    /// consistency proof from it to the one verified): receipts checked at once fetch their
    /// proofs at once, and the one whose checkpoint was signed first may be checked last. A
    /// checkpoint of the size verified must have its root.
    async fn consistent(&self, checkpoint: &Checkpoint, note: &str) -> Result<(), ReceiptError> {
        let mut seen = self.seen.lock().await;
        if let Some((old, old_root)) = *seen {
            let inconsistent = || ReceiptError::Inconsistent { old, new: checkpoint.size };
            if checkpoint.size == old {
                return if checkpoint.root == old_root { Ok(()) } else { Err(inconsistent()) };
            }
            if checkpoint.size < old {
                // Not a shrink if the log verified grew from this one; nothing to remember.
                let proof = self.consistency_proof(checkpoint.size, old).await?;
                return verify_consistency(checkpoint.size, old, &checkpoint.root, &old_root, &proof)
                    .map_err(|_| inconsistent());
            }
            let proof = self.consistency_proof(old, checkpoint.size).await?;
            verify_consistency(old, checkpoint.size, &old_root, &checkpoint.root, &proof)
                .map_err(|_| inconsistent())?;
        }
        self.remember(&mut seen, checkpoint, note)
    }

    /// Keeps `checkpoint` (signed in `note`) as the last verified: in the state file first, then
    /// in memory.
    fn remember(
        &self,
        seen: &mut Option<(u64, Hash)>,
        checkpoint: &Checkpoint,
        note: &str,
    ) -> Result<(), ReceiptError> {
        if let Some(path) = &self.state {
            let mut state = State::default();
            let verified = Verified { size: checkpoint.size, root: checkpoint.root, checkpoint: Some(note.to_owned()) };
            state.insert(checkpoint.origin.clone(), verified);
            write_state(path, &state)?;
        }
        *seen = Some((checkpoint.size, checkpoint.root));
        Ok(())
    }

    /// The custodian as a witness of the log (c2sp.org/tlog-witness): checks an add-checkpoint
    /// request against the same state that receipts are checked against, and on success keeps
    /// the new checkpoint there and returns its text, for the caller to cosign. So the custodian
    /// cosigns only a log it has verified and goes on checking receipts against: an auditor who
    /// demands its cosignature checks the log the custodian releases keys against, and a fork
    /// shown to it after it cosigned the public log is refused, both as a witness and for
    /// receipts.
    pub async fn add_checkpoint(&self, body: &str) -> Result<String, CosignRefusal> {
        let AddCheckpoint { old, proof, note, text } = AddCheckpoint::parse(body)?;
        let checkpoint = Checkpoint::parse(&note.text)
            .map_err(|_| CosignRefusal::Malformed("the checkpoint body is malformed".into()))?;
        if checkpoint.origin != self.vkey.name {
            return Err(CosignRefusal::UnknownLog(checkpoint.origin));
        }
        note.verify(&self.vkey).map_err(|_| CosignRefusal::BadSignature)?;
        if old > checkpoint.size {
            return Err(CosignRefusal::Malformed("old size is larger than the checkpoint's".into()));
        }
        let mut seen = self.seen.lock().await;
        let (size, root) = seen.unwrap_or((0, Hash::empty()));
        if old != size {
            return Err(CosignRefusal::Conflict(size));
        }
        verify_consistency(size, checkpoint.size, &root, &checkpoint.root, &proof)
            .map_err(|_| CosignRefusal::Inconsistent { old: size, new: checkpoint.size })?;
        self.remember(&mut seen, &checkpoint, &text).map_err(CosignRefusal::State)?;
        Ok(note.text)
    }

    /// The log's proof that its tree of size `old` is a prefix of its tree of size `new`.
    async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, ReceiptError> {
        let url = format!("{}/v1/log/proof/consistency?old={old}&new={new}", self.url);
        let response = self.http.get(&url).send().await.map_err(|e| self.unreadable(e))?;
        let answer: ConsistencyAnswer = response.json().await.map_err(|e| self.unreadable(e))?;
        answer
            .proof
            .iter()
            .map(|h| Hash::from_base64(h).ok_or_else(|| self.unreachable("a proof hash is not base64")))
            .collect()
    }

    fn unreachable(&self, detail: impl Into<String>) -> ReceiptError {
        ReceiptError::Unreachable { url: self.url.clone(), detail: detail.into() }
    }

    fn unreadable(&self, source: impl std::error::Error + Send + Sync + 'static) -> ReceiptError {
        ReceiptError::Unreadable { url: self.url.clone(), source: Box::new(source) }
    }

    /// Checks that `entry` is at `index` in the signed log (under a checkpoint cosigned by the
    /// witness quorum, when one is demanded), and reads the access it records, for the subject
    /// whose keyed hash is `subject_hash` (as the boundary says). Returns the
    /// access and the entry's subject tag, which the custodian checks is that subject's
    /// ([`crate::Custodian::tag_is_subjects`]) before it hands out their key.
    pub async fn check(
        &self,
        index: u64,
        entry: &[u8],
        subject_hash: &str,
        opening: Option<&RecordOpening>,
    ) -> Result<(LoggedAccess, SubjectTag), ReceiptError> {
        self.included(index, entry).await?;
        access(index, entry, subject_hash, opening)
    }

    /// Checks that `entry` is at `index` in the signed log, under a checkpoint cosigned by the
    /// witness quorum when one is demanded (what every receipt is checked for first).
    pub async fn included(&self, index: u64, entry: &[u8]) -> Result<(), ReceiptError> {
        let (checkpoint, proof) = if self.quorum.is_empty() {
            let answer = self.proof(index).await?;
            let note_text = answer.checkpoint.ok_or_else(|| self.unreachable("no checkpoint with the proof"))?;
            let (_, checkpoint) = self.signed(&note_text)?;
            if checkpoint.size != answer.size {
                return Err(self.unreachable("the proof is not for the checkpoint's size"));
            }
            self.consistent(&checkpoint, &note_text).await?;
            (checkpoint, answer.proof)
        } else {
            let checkpoint = self.cosigned_covering(index).await?;
            let answer = self.proof_at(index, checkpoint.size).await?;
            (checkpoint, answer.proof)
        };
        let proof: Vec<Hash> = proof
            .iter()
            .map(|h| Hash::from_base64(h).ok_or_else(|| self.unreachable("a proof hash is not base64")))
            .collect::<Result<_, _>>()?;
        verify_inclusion(&leaf_hash(entry), index, checkpoint.size, &proof, &checkpoint.root)
            .map_err(|_| ReceiptError::NotInLog(index))
    }

    /// `note_text` parsed, its log signature checked, and its checkpoint, which must be this
    /// log's.
    fn signed(&self, note_text: &str) -> Result<(Note, Checkpoint), ReceiptError> {
        let note = Note::parse(note_text).map_err(|e| self.unreadable(e))?;
        note.verify(&self.vkey).map_err(|_| ReceiptError::BadCheckpoint(self.vkey.name.clone()))?;
        let checkpoint = Checkpoint::parse(&note.text).map_err(|e| self.unreadable(e))?;
        if checkpoint.origin != self.vkey.name {
            return Err(ReceiptError::BadCheckpoint(self.vkey.name.clone()));
        }
        Ok((note, checkpoint))
    }

    /// A checkpoint that covers `index`, signed by the log, cosigned by a quorum of the
    /// witnesses and consistent with every one verified before: the newest one verified if it
    /// covers the entry (no round trip), else the one the log serves now (the boundary serves
    /// the newest its witnesses cosigned), asked again until one covers the entry or the wait
    /// is over.
    async fn cosigned_covering(&self, index: u64) -> Result<Checkpoint, ReceiptError> {
        if let Some(checkpoint) = self.cosigned.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref()
            && checkpoint.size > index
        {
            return Ok(checkpoint.clone());
        }
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut had = 0;
        loop {
            let url = format!("{}/log/checkpoint", self.url);
            let response = self.http.get(&url).send().await.map_err(|e| self.unreadable(e))?;
            if !response.status().is_success() {
                return Err(self.unreachable(format!("/log/checkpoint answered {}", response.status())));
            }
            let note_text = response.text().await.map_err(|e| self.unreadable(e))?;
            let (note, checkpoint) = self.signed(&note_text)?;
            let cosignatures = self.quorum.cosignatures(&note);
            if checkpoint.size > index {
                had = had.max(cosignatures);
            }
            if cosignatures >= self.quorum.quorum() {
                // Every cosigned checkpoint, covering the entry or not, must extend the ones
                // verified before.
                self.consistent(&checkpoint, &note_text).await?;
                let mut newest = self.cosigned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if newest.as_ref().is_none_or(|c| c.size < checkpoint.size) {
                    *newest = Some(checkpoint.clone());
                }
                if checkpoint.size > index {
                    return Ok(checkpoint);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ReceiptError::NotCosigned {
                    index,
                    quorum: self.quorum.quorum(),
                    had,
                    witnesses: self.quorum.names(),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The inclusion proof of `index` in the tree of `size` entries.
    async fn proof_at(&self, index: u64, size: u64) -> Result<InclusionAnswer, ReceiptError> {
        let url = format!("{}/v1/log/proof/inclusion?index={index}&size={size}", self.url);
        let response = self.http.get(&url).send().await.map_err(|e| self.unreadable(e))?;
        if !response.status().is_success() {
            return Err(ReceiptError::NotInLog(index));
        }
        let answer: InclusionAnswer = response.json().await.map_err(|e| self.unreadable(e))?;
        if answer.size != size {
            return Err(self.unreachable("the proof is not for the size asked"));
        }
        Ok(answer)
    }

    /// The inclusion proof of `index` against the latest checkpoint; waits a little for a
    /// checkpoint to cover an entry just appended (a log that signs at intervals, or a gateway
    /// whose view of a shared log is catching up, as after its database restarted).
    ///
    /// A log that still does not cover the entry (400), or cannot prove now (5xx), after the
    /// wait is [`ReceiptError::Unreachable`] (the boundary answers 503, to try again), not
    /// [`ReceiptError::NotInLog`]: nothing says the entry will not be there. Before, the
    /// soak found reads refused (and answered 500) for a second after PostgreSQL restarted.
    async fn proof(&self, index: u64) -> Result<InclusionAnswer, ReceiptError> {
        let url = format!("{}/v1/log/proof/inclusion?index={index}", self.url);
        let mut status = reqwest::StatusCode::BAD_REQUEST;
        for _ in 0..PROOF_ATTEMPTS {
            let response = self.http.get(&url).send().await.map_err(|e| self.unreadable(e))?;
            status = response.status();
            if status.is_success() {
                return response.json().await.map_err(|e| self.unreadable(e));
            }
            if status != reqwest::StatusCode::BAD_REQUEST && !status.is_server_error() {
                return Err(ReceiptError::NotInLog(index));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(self.unreachable(format!("the log does not prove entry {index} yet ({status}); try again")))
    }
}

/// What the entry of a receipt allows, for the subject whose keyed hash is `subject_hash` and the
/// record version `opening` names (checked against the entry's annex commitment), and the
/// entry's subject tag, once the entry is verified to be at `index` in the signed log
/// ([`LogVerifier::check`] does both, and checks the tag is that subject's). The entry's bytes
/// and the hash are the caller's: reading them must refuse, never fail otherwise, whatever they
/// are.
pub fn access(
    index: u64,
    entry: &[u8],
    subject_hash: &str,
    opening: Option<&RecordOpening>,
) -> Result<(LoggedAccess, SubjectTag), ReceiptError> {
    let refuse = |detail: &str| ReceiptError::NotAllowed { index, detail: detail.to_owned() };
    // The canonical form of the current format only: the boundary indexes entries by it, and so
    // must what unlocks keys; a receipt is recent, so never of an earlier format.
    let event = match Entry::decode(entry) {
        Ok(Entry::V2(event)) => event,
        Ok(Entry::V1(_)) | Err(EventError::UnknownVersion(_)) => {
            return Err(refuse("its format version is not current"));
        }
        Err(_) => return Err(refuse("it is not a canonical log entry")),
    };
    if event.decision.as_ref().is_none_or(|d| d.effect != "allow") {
        return Err(refuse("its decision is not allow"));
    }
    let action = match (event.kind, event.action.as_deref()) {
        (EventKind::Access, Some("read")) => Action::Read,
        // A subject's export opens each record of theirs under an entry of its own.
        (EventKind::Access, Some("export-subject")) => Action::ExportSubject,
        // A disclosure to an authority under a granted request, likewise.
        (EventKind::Access, Some("disclose")) => Action::Disclose,
        (EventKind::Write, Some("write")) => Action::Write,
        (EventKind::Write, Some("repatriate")) => Action::Repatriate,
        // A repatriation's verification reads back what it wrote: a read of that record
        // version (a full view, or nothing), which makes no key.
        (EventKind::Access, Some("repatriate")) => Action::Read,
        (EventKind::Erasure, Some("erase")) => Action::Erase,
        _ => return Err(refuse("it is not an access that needs a data key")),
    };
    let tag = event.subject.clone().ok_or_else(|| refuse("it names no subject"))?;
    if !tag.is_well_formed() {
        return Err(refuse("its subject is not a subject tag"));
    }
    if !is_subject_hash(subject_hash) {
        return Err(refuse("the subject asked about is not a subject hash"));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let age = now.saturating_sub(event.time);
    if age > i64::try_from(MAX_RECEIPT_AGE.as_secs()).unwrap_or(i64::MAX) || age < -60 {
        return Err(refuse("it is not recent: a receipt is for the access it records, now"));
    }
    let scope = KeyScope::of(&event, action, opening).map_err(|detail| refuse(&detail))?;
    let pseudonymised = TokenScope::of_access(&event, action).map_err(|detail| refuse(&detail))?;
    let access = LoggedAccess {
        subject_hash: subject_hash.to_owned(),
        action,
        log_index: index,
        entry_hash: hex::encode(leaf_hash(entry).0),
        purpose: event.purpose,
        scope,
        pseudonymised,
    };
    Ok((access, tag))
}

/// A receipt on the wire: the log index, the entry's bytes, and the subject (by the region's
/// keyed hash, which names their keys at the custodian) whose key it is for. The entry names the
/// subject only by a tag; the custodian checks the tag is that subject's.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireReceipt {
    /// The entry's index.
    pub index: u64,
    /// The entry's bytes, base64.
    pub entry: String,
    /// The subject's keyed hash, hex.
    pub subject_hash: String,
    /// What opens the entry's annex to the record version whose key is asked for (none for an
    /// erasure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opening: Option<RecordOpening>,
}

impl WireReceipt {
    /// The entry's bytes.
    pub fn entry_bytes(&self) -> Option<Vec<u8>> {
        B64.decode(&self.entry).ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clover_event::{Annex, Event, EventDecision};

    use super::*;

    /// A recent, allowed entry of `kind` and `action` naming record `r` version 1, and its opening.
    fn entry(kind: EventKind, action: &str, view: Option<&str>) -> (Vec<u8>, RecordOpening) {
        let record = "0b8e6f7a-3c1d-4f2e-9a5b-6c7d8e9f0a1b";
        let annex = Annex::new(None, None, None, Some(record), Some("s-1")).unwrap().with_version(Some(1));
        let event = Event {
            v: clover_event::EVENT_VERSION,
            kind,
            time: time::OffsetDateTime::now_utc().unix_timestamp(),
            principal: None,
            origin: None,
            action: Some(action.to_owned()),
            subject: Some(SubjectTag::random().unwrap()),
            category: Some("profile".into()),
            decision: Some(EventDecision { effect: "allow".into(), view: view.map(str::to_owned), policies: vec![] }),
            purpose: None,
            annex: Some(annex.commitment()),
            detail: None,
            transfer: None,
            government_request: None,
        };
        (event.encode(), annex.record_opening().unwrap())
    }

    #[test]
    fn an_entry_names_the_action_a_key_is_for() {
        let hash = "a".repeat(64);
        for (kind, action, view, expected) in [
            (EventKind::Write, "write", None, Some(Action::Write)),
            (EventKind::Write, "repatriate", None, Some(Action::Repatriate)),
            (EventKind::Access, "read", Some("full"), Some(Action::Read)),
            // A read whose entry names no view gets nothing (fail closed); a repatriation's
            // verification is a read, which makes no key.
            (EventKind::Access, "read", None, None),
            (EventKind::Access, "repatriate", None, None),
            (EventKind::Access, "repatriate", Some("full"), Some(Action::Read)),
            // A subject's export opens each record under an entry of its own.
            (EventKind::Access, "export-subject", Some("full"), Some(Action::ExportSubject)),
            (EventKind::Access, "disclose", Some("full"), Some(Action::Disclose)),
            // An export's decision on the subject as a whole names no record: no key.
            (EventKind::Write, "export-subject", Some("full"), None),
        ] {
            let (bytes, opening) = entry(kind, action, view);
            let outcome = access(7, &bytes, &hash, Some(&opening));
            assert_eq!(outcome.as_ref().ok().map(|(a, _)| a.action()), expected, "{action}: {:?}", outcome.err());
        }
    }
}
