//! The log's entries: events, in a canonical, documented encoding (the event schema).
//!
//! This is Clover's own schema on top of the log's spec (`clover-tlog`): what an entry says, not
//! how the log stores or proves it. The runtime log, the gateway, the custodian's check of a
//! receipt and every verifier share it, and none of them needs the runtime log to read it.
//!
//! An entry is the compact JSON of an [`Event`], with its keys in the order of the fields below
//! and every key present (`null` when it does not apply); `docs/log.md` documents each field, so
//! an auditor can decode entries with any JSON tool.
//!
//! **Format 2** (written now) carries public facts and commitments only. The subject is a
//! [`SubjectTag`]: a random nonce and its HMAC under a key of the subject's own
//! ([`SubjectTagKey`]), which the custodian derives and destroys at erasure, so that two entries
//! about one subject cannot be linked by anyone without that key; the caller is a keyed
//! pseudonym ([`SubjectIndexKey::principal_pseudonym`]); what names people (the principal's id,
//! the record, the subject, the justification) is in a private [`Annex`] kept in the region,
//! to which the entry commits with a salted hash.
//!
//! **Format 1** ([`EventV1`], written before) named the principal, the record and the
//! justification, and carried one hash per subject. Its entries stay in the log and verify;
//! [`Entry`] reads either.

use aws_lc_rs::{digest, hmac, rand};
use clover_model::SubjectId;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The current entry format.
pub const EVENT_VERSION: u8 = 2;

/// The first entry format, which entries written before format 2 carry.
pub const EVENT_VERSION_1: u8 = 1;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A read of personal data was decided.
    Access,
    /// A write (subject registration or update, record creation) was decided.
    Write,
    /// An erasure was decided.
    Erasure,
    /// A key operation (creation, rotation, retirement).
    Key,
    /// A configuration or policy change.
    Config,
    /// An approval requested or granted.
    Approval,
    /// Where the region's data lives (at every start of a boundary): each place by site and
    /// region, never an address.
    Residency,
    /// A repatriation's receipt was signed: the entry's detail is the SHA-256 of its signed
    /// manifest (counts, the Merkle root over the records brought home, the log indexes that
    /// cover them), which the receipt's holder checks against it.
    Repatriation,
    /// Data left the region, or was refused leave: a record transfer's manifest (before the
    /// first byte), its end (sent or interrupted), an aggregate release, or a pseudonymised read
    /// from outside the region (a transfer too). Its facts are in [`Event::transfer`].
    Transfer,
    /// A request from an authority (a production order, a preservation order, ...): received,
    /// decided, each disclosure, a hold placed or released, closed. Its facts are in
    /// [`Event::government_request`].
    GovernmentRequest,
    /// A data subject's request that needs a person (an export or erasure made for them by
    /// staff, an erasure a legal hold blocks) was received or moved: its random id, kind,
    /// states and deadline, never the subject.
    SubjectRequest,
}

/// The caller, as a format 2 entry records it: what they are, not who.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventPrincipal {
    /// The principal's keyed pseudonym (hex): the same for every entry of one principal, so
    /// that a monitor can count what one principal touched, and resolvable only by the region.
    pub pseudonym: String,
    /// `employee` or `service`.
    pub kind: String,
    /// Their home region.
    pub region: String,
}

/// The caller, as a format 1 entry recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventPrincipalV1 {
    /// The principal's id.
    pub id: String,
    /// `employee` or `service`.
    pub kind: String,
    /// Their home region.
    pub region: String,
    /// Their site, as their token says.
    pub site: String,
}

/// Where the call came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventOrigin {
    /// The resolved site, or `null` for an unknown origin.
    pub site: Option<String>,
    /// The site's region, or `null` for an unknown origin.
    pub region: Option<String>,
}

/// The decision, as the entry records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventDecision {
    /// `allow` or `deny`.
    pub effect: String,
    /// For allowed reads: `full` or `pseudonymised`.
    pub view: Option<String>,
    /// The ids of the rules that decided.
    pub policies: Vec<String>,
}

/// The subject of a format 2 entry: a fresh random nonce and its HMAC under the subject's tag
/// key. Without the key, two tags are unrelated random strings; a tag made for a subject that
/// does not exist ([`SubjectTag::random`]) looks like any other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectTag {
    /// 16 random bytes, hex.
    pub nonce: String,
    /// HMAC-SHA-256(subject's tag key, `"clover/subject-tag/v2\n"` || nonce bytes), hex.
    pub tag: String,
}

impl SubjectTag {
    /// A tag that belongs to no subject: random nonce, random tag.
    pub fn random() -> Result<Self, EventError> {
        Ok(Self { nonce: hex::encode(random_bytes::<16>()?), tag: hex::encode(random_bytes::<32>()?) })
    }

    /// Whether the tag has its form: 32 and 64 lowercase hex digits.
    pub fn is_well_formed(&self) -> bool {
        is_hex(&self.nonce, 32) && is_hex(&self.tag, 64)
    }
}

/// One log entry in the current format (2): public facts and commitments only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Format version, [`EVENT_VERSION`].
    pub v: u8,
    /// What happened.
    pub kind: EventKind,
    /// When, in Unix seconds (UTC).
    pub time: i64,
    /// What kind of caller asked, from which home region, under a pseudonym.
    pub principal: Option<EventPrincipal>,
    /// From where.
    pub origin: Option<EventOrigin>,
    /// The action asked (`read`, `write`, `erase`, ...).
    pub action: Option<String>,
    /// The subject, as a tag unlinkable across entries.
    pub subject: Option<SubjectTag>,
    /// The record's category.
    pub category: Option<String>,
    /// The decision.
    pub decision: Option<EventDecision>,
    /// The declared purpose (a reason code).
    pub purpose: Option<String>,
    /// The commitment to the entry's private [`Annex`] (hex), when it has one.
    pub annex: Option<String>,
    /// For key and configuration events: what changed (a key version, a digest), never a name.
    pub detail: Option<String>,
    /// For a transfer out of the region: its public facts. Absent from the encoding otherwise,
    /// so that entries written before it existed keep their bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Box<TransferFacts>>,
    /// For a government request: its public facts. Absent from the encoding otherwise, so that
    /// entries written before it existed keep their bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub government_request: Option<Box<GovernmentRequestFacts>>,
}

/// What an entry says of a request from an authority: what the transparency report counts, and
/// nothing that names anyone. While the request's gag holds, the country, the instrument and
/// the counts are replaced by a commitment to them (`sealed`), opened by a later entry once the
/// gag ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernmentRequestFacts {
    /// The request's id (random).
    pub request_id: String,
    /// `received`, `decided`, `disclosed`, `closed`, `hold-placed`, `hold-extended`,
    /// `hold-released`, `unsealed` (a gag ended: the facts opened), or `refused` (refused for
    /// what it asks before it was registered).
    pub stage: String,
    /// The authority's country (ISO 3166-1 alpha-2, lowercase); none while gagged.
    pub country: Option<String>,
    /// The instrument (`production-order`, `preservation-order`, `mlat`, `domestic-warrant`,
    /// `emergency`, `other`); none while gagged.
    pub instrument: Option<String>,
    /// How many subjects (accounts) it names; at `disclosed`, how many records were disclosed.
    pub count: u64,
    /// The categories it asks for (or, at `decided`, those granted).
    pub categories: Vec<String>,
    /// The deadline to answer by (Unix seconds).
    pub deadline: Option<i64>,
    /// At `decided`: `granted`, `partially-granted` or `rejected`.
    pub outcome: Option<String>,
    /// While gagged: the commitment (hex SHA-256 of a salt and the facts above), which the
    /// `unsealed` entry opens; and until when the gag holds (Unix seconds).
    pub sealed: Option<String>,
    /// The gag's end (Unix seconds), when there is one.
    pub gag_until: Option<i64>,
}

/// What an entry says of data leaving the region: facts a regulator needs for the transfer
/// register, and nothing that names anyone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferFacts {
    /// The transfer's id (random), none for a read from outside the region.
    pub transfer_id: Option<String>,
    /// `manifest` (decided and its manifest signed, before the first byte), `sent`,
    /// `interrupted`, `aggregate` (a release with noise), `remote-read` (a pseudonymised read
    /// from outside the region), or `refused`.
    pub stage: String,
    /// The destination's name (none for a read from a region no destination is configured for).
    pub destination: Option<String>,
    /// The destination's region.
    pub region: String,
    /// The legal basis the transfer rests on (`adequacy`, `scc`, `bcr`, `derogation`, `none`).
    pub legal_basis: Option<String>,
    /// How the data was treated: `pseudonymised` (tokens, FF1, generalisation, k-anonymity),
    /// `pseudonymised-view` (a read's view), `dp-laplace` or `dp-gaussian` (an aggregate).
    pub treatment: String,
    /// The categories.
    pub categories: Vec<String>,
    /// How many records: sent (at `manifest`, to be sent; for an aggregate, counted in it).
    pub count: u64,
    /// Records held back by k-anonymity.
    pub suppressed: u64,
    /// The destination's k, for a record transfer.
    pub k: Option<u32>,
    /// Epsilon spent by an aggregate release, in decimal.
    pub epsilon: Option<String>,
    /// The SHA-256 (hex) of the transfer's signed manifest, or of the release's answer.
    pub manifest: Option<String>,
    /// The SHA-256 (hex) of the bytes sent, at `sent` and `interrupted`.
    pub sha256: Option<String>,
}

/// One log entry in format 1, as written before format 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventV1 {
    /// Format version, [`EVENT_VERSION_1`].
    pub v: u8,
    /// What happened.
    pub kind: EventKind,
    /// When, in Unix seconds (UTC).
    pub time: i64,
    /// Who asked.
    pub principal: Option<EventPrincipalV1>,
    /// From where.
    pub origin: Option<EventOrigin>,
    /// The action asked (`read`, `write`, `erase`, ...).
    pub action: Option<String>,
    /// The subject's keyed hash (hex), the same in every entry about them.
    pub subject: Option<String>,
    /// The record id, when one record is concerned.
    pub record: Option<String>,
    /// The record's category.
    pub category: Option<String>,
    /// The decision.
    pub decision: Option<EventDecision>,
    /// The declared purpose (a reason code).
    pub purpose: Option<String>,
    /// The justification ticket.
    pub justification: Option<String>,
    /// For key and configuration events: what changed.
    pub detail: Option<String>,
}

/// An entry that is not a valid event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The entry is not JSON of an event.
    #[error("entry is not a valid event")]
    Json(#[source] serde_json::Error),
    /// The entry is an event, but not in its canonical encoding.
    #[error("entry is not a valid event: not in canonical form")]
    NotCanonical,
    /// The system's randomness failed, so no nonce or salt could be made.
    #[error("the system's randomness failed")]
    Randomness,
    /// The entry names a format this version does not know.
    #[error("entry is not a valid event: format version {0} is unknown")]
    UnknownVersion(u8),
}

/// Decodes `bytes` as `T`, checking that they are canonical (re-encoding gives the same bytes).
fn decode_canonical<T: Serialize + for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, EventError> {
    let event: T = serde_json::from_slice(bytes).map_err(EventError::Json)?;
    if serde_json::to_vec(&event).ok().as_deref() != Some(bytes) {
        return Err(EventError::NotCanonical);
    }
    Ok(event)
}

impl Event {
    /// The canonical bytes of the event.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings, numbers and options always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a format 2 entry, checking that it is canonical.
    pub fn decode(bytes: &[u8]) -> Result<Self, EventError> {
        let event: Self = decode_canonical(bytes)?;
        if event.v != EVENT_VERSION {
            return Err(EventError::UnknownVersion(event.v));
        }
        Ok(event)
    }
}

impl EventV1 {
    /// The canonical bytes of the event.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a format 1 entry, checking that it is canonical.
    pub fn decode(bytes: &[u8]) -> Result<Self, EventError> {
        let event: Self = decode_canonical(bytes)?;
        if event.v != EVENT_VERSION_1 {
            return Err(EventError::UnknownVersion(event.v));
        }
        Ok(event)
    }
}

/// An entry of either format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Format 1, written before format 2.
    V1(EventV1),
    /// Format 2, the current one.
    V2(Event),
}

impl Entry {
    /// Decodes an entry of either format, by its `v`, checking that it is canonical.
    pub fn decode(bytes: &[u8]) -> Result<Self, EventError> {
        #[derive(Deserialize)]
        struct Version {
            v: u8,
        }
        let version: Version = serde_json::from_slice(bytes).map_err(EventError::Json)?;
        match version.v {
            EVENT_VERSION_1 => EventV1::decode(bytes).map(Self::V1),
            EVENT_VERSION => Event::decode(bytes).map(Self::V2),
            other => Err(EventError::UnknownVersion(other)),
        }
    }

    /// What happened.
    pub fn kind(&self) -> EventKind {
        match self {
            Self::V1(e) => e.kind,
            Self::V2(e) => e.kind,
        }
    }

    /// When, in Unix seconds.
    pub fn time(&self) -> i64 {
        match self {
            Self::V1(e) => e.time,
            Self::V2(e) => e.time,
        }
    }

    /// The key the region finds the entry by: a format 1 entry's subject hash, a format 2
    /// entry's annex commitment.
    pub fn index_key(&self) -> Option<&str> {
        match self {
            Self::V1(e) => e.subject.as_deref(),
            Self::V2(e) => e.annex.as_deref(),
        }
    }
}

/// Whether `text` has the form of a subject hash: 64 lowercase hex digits.
pub fn is_subject_hash(text: &str) -> bool {
    is_hex(text, 64)
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Random bytes from the system; an entry is never made with predictable ones.
fn random_bytes<const N: usize>() -> Result<[u8; N], EventError> {
    let mut bytes = [0u8; N];
    rand::fill(&mut bytes).map_err(|_| EventError::Randomness)?;
    Ok(bytes)
}

/// The region's key for subject hashes (inside the region: the custodian's key names, the
/// format 1 entries) and principal pseudonyms (in format 2 entries).
pub struct SubjectIndexKey {
    key: hmac::Key,
    _bytes: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SubjectIndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectIndexKey(..)")
    }
}

impl SubjectIndexKey {
    /// A key from its bytes.
    pub fn new(bytes: &[u8]) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, bytes), _bytes: Zeroizing::new(bytes.to_vec()) }
    }

    /// The subject's hash: hex of HMAC-SHA-256(key, "clover/subject/v1\n" || subject id).
    pub fn hash(&self, subject: &SubjectId) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"clover/subject/v1\n");
        ctx.update(subject.as_str().as_bytes());
        hex::encode(ctx.sign().as_ref())
    }

    /// The principal's pseudonym in format 2 entries: hex of HMAC-SHA-256(key,
    /// "clover/principal/v2\n" || kind || "\n" || principal id). Stable, so that what one
    /// principal did can be counted; resolvable only by whoever holds the region's key.
    pub fn principal_pseudonym(&self, kind: &str, principal: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"clover/principal/v2\n");
        ctx.update(kind.as_bytes());
        ctx.update(b"\n");
        ctx.update(principal.as_bytes());
        hex::encode(ctx.sign().as_ref())
    }
}

/// A subject's own tag key: what makes their entries' [`SubjectTag`]s. The custodian derives it
/// from key material of the subject's that an erasure destroys.
pub struct SubjectTagKey {
    key: hmac::Key,
    _bytes: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SubjectTagKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectTagKey(..)")
    }
}

const TAG_DOMAIN: &[u8] = b"clover/subject-tag/v2\n";

impl SubjectTagKey {
    /// A key from its bytes.
    pub fn new(bytes: &[u8]) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, bytes), _bytes: Zeroizing::new(bytes.to_vec()) }
    }

    /// The key's bytes, to hand to the boundary.
    pub fn expose(&self) -> &[u8] {
        &self._bytes
    }

    /// A fresh tag: a random nonce and its HMAC.
    pub fn tag(&self) -> Result<SubjectTag, EventError> {
        let nonce = random_bytes::<16>()?;
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(TAG_DOMAIN);
        ctx.update(&nonce);
        Ok(SubjectTag { nonce: hex::encode(nonce), tag: hex::encode(ctx.sign().as_ref()) })
    }

    /// Whether `tag` was made with this key (compared in constant time).
    pub fn made(&self, tag: &SubjectTag) -> bool {
        let (Ok(nonce), Ok(mac)) = (hex::decode(&tag.nonce), hex::decode(&tag.tag)) else { return false };
        if !tag.is_well_formed() {
            return false;
        }
        let mut message = TAG_DOMAIN.to_vec();
        message.extend_from_slice(&nonce);
        hmac::verify(&self.key, &message, &mac).is_ok()
    }
}

/// The private part of a format 2 entry: who asked, about which record and subject, with what
/// justification, and under which approval. Kept in the region's store, never served publicly; the public entry carries
/// its [`Annex::commitment`], so that a region auditor given the annex can check it.
///
/// Each field is committed to separately (a salted digest), so that an erasure can remove the
/// subject and the record from an annex (keeping their digests) and the annex still matches
/// its entry, while naming no one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Annex {
    /// 32 random bytes, hex: what makes the commitment hide the fields.
    pub salt: String,
    /// The principal's id (none for a refused certificate that named none).
    pub principal: Option<String>,
    /// The justification the caller gave.
    pub justification: Option<String>,
    /// Anything else a region auditor needs that names someone (a refused certificate's
    /// reason, an approval's requester).
    pub note: Option<String>,
    /// The record, or its digest once unlinked.
    pub record: AnnexField,
    /// The subject, or its digest once unlinked.
    pub subject: AnnexField,
    /// The record's version, for an access to one record version: with `record`, what the
    /// custodian derives the record version's key for. Annexes written before it have none, and
    /// their commitment is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The approval the decision relied on (its id), or its digest once unlinked: present
    /// only in the annex of an access decided with an approval. Absent from the encoding (and
    /// from the commitment) otherwise, so that annexes written before it existed, and every
    /// annex without one, keep their bytes and their commitment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<AnnexField>,
}

/// What opens an annex's record and version to the custodian, and nothing else: the salt, the
/// record and its version in the clear, and every field's digest in commitment order, so that
/// the custodian can check them against the entry's commitment
/// ([`RecordOpening::opens`]) without learning who asked, or why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordOpening {
    /// The annex's salt, hex.
    pub salt: String,
    /// The record (none for an access to the subject's own attributes).
    pub record: Option<String>,
    /// The record's version.
    pub version: Option<u32>,
    /// Whether the annex names an approval (whose digest, last, the custodian need not know).
    #[serde(default)]
    pub approval: bool,
    /// The annex's field digests in commitment order (principal, justification, note, record,
    /// subject, then the version's and the approval's when there are), hex.
    pub digests: Vec<String>,
}

impl RecordOpening {
    /// Whether this opening is of the annex whose commitment is `commitment`: the record's and
    /// the version's digests, recomputed from the salt, are at their places in the digests,
    /// and the digests hash to the commitment.
    pub fn opens(&self, commitment: &str) -> bool {
        // Five fields, the version's when there is one, then the approval's when there is one.
        if self.digests.len() != 5 + usize::from(self.version.is_some()) + usize::from(self.approval) {
            return false;
        }
        let record = field_digest(&self.salt, "record", self.record.as_deref());
        let version = self.version.map(|v| field_digest(&self.salt, "version", Some(&v.to_string())));
        self.digests.get(3) == Some(&record)
            && version.is_none_or(|v| self.digests.get(5) == Some(&v))
            && commitment_of(&self.digests) == commitment
    }
}

/// SHA-256 of `bytes`, in lowercase hex: how entries name the documents they cover (a
/// transfer's bytes, a manifest, a report, a certificate).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// The digest of one annex field: SHA-256("clover/annex-field/v2\n" || salt || name || "\n" ||
/// (0x00 for none, or 0x01 || value)), hex.
fn field_digest(salt: &str, name: &str, value: Option<&str>) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"clover/annex-field/v2\n");
    ctx.update(salt.as_bytes());
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    match value {
        None => ctx.update(&[0]),
        Some(value) => {
            ctx.update(&[1]);
            ctx.update(value.as_bytes());
        }
    }
    hex::encode(ctx.finish().as_ref())
}

/// SHA-256("clover/annex/v2\n" || each digest, hex, followed by "\n"), hex.
fn commitment_of(digests: &[String]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"clover/annex/v2\n");
    for part in digests {
        ctx.update(part.as_bytes());
        ctx.update(b"\n");
    }
    hex::encode(ctx.finish().as_ref())
}

/// A field an erasure can unlink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum AnnexField {
    /// The value (or none).
    Clear(Option<String>),
    /// The field's digest, the value removed by an erasure.
    Unlinked(String),
}

impl Annex {
    /// A new annex with a fresh salt.
    pub fn new(
        principal: Option<&str>,
        justification: Option<&str>,
        note: Option<&str>,
        record: Option<&str>,
        subject: Option<&str>,
    ) -> Result<Self, EventError> {
        Ok(Self {
            salt: hex::encode(random_bytes::<32>()?),
            principal: principal.map(ToOwned::to_owned),
            justification: justification.map(ToOwned::to_owned),
            note: note.map(ToOwned::to_owned),
            record: AnnexField::Clear(record.map(ToOwned::to_owned)),
            subject: AnnexField::Clear(subject.map(ToOwned::to_owned)),
            version: None,
            approval: None,
        })
    }

    /// The annex with the record's version (see [`Annex::version`]).
    #[must_use]
    pub fn with_version(mut self, version: Option<u32>) -> Self {
        self.version = version;
        self
    }

    /// The annex naming `approval`, the approval the decision relied on (none: unchanged).
    #[must_use]
    pub fn with_approval(self, approval: Option<&str>) -> Self {
        match approval {
            Some(id) => Self { approval: Some(AnnexField::Clear(Some(id.to_owned()))), ..self },
            None => self,
        }
    }

    fn digest_of(&self, name: &str, field: &AnnexField) -> String {
        match field {
            AnnexField::Clear(value) => field_digest(&self.salt, name, value.as_deref()),
            AnnexField::Unlinked(digest) => digest.clone(),
        }
    }

    /// The field digests the commitment hashes, in order: principal, justification, note,
    /// record, subject (each SHA-256("clover/annex-field/v2\n" || salt || name || "\n" || (0x00
    /// for none, or 0x01 || value)), hex), then the version's (its decimal digits) and the
    /// approval's, each only when there is one.
    fn digests(&self) -> Vec<String> {
        let mut digests = vec![
            field_digest(&self.salt, "principal", self.principal.as_deref()),
            field_digest(&self.salt, "justification", self.justification.as_deref()),
            field_digest(&self.salt, "note", self.note.as_deref()),
            self.digest_of("record", &self.record),
            self.digest_of("subject", &self.subject),
        ];
        if let Some(version) = self.version {
            digests.push(field_digest(&self.salt, "version", Some(&version.to_string())));
        }
        if let Some(approval) = &self.approval {
            digests.push(self.digest_of("approval", approval));
        }
        digests
    }

    /// The commitment in the public entry: SHA-256("clover/annex/v2\n" || the field digests
    /// (principal, justification, note, record, subject, then the version's and the approval's
    /// when there are), each hex and followed by "\n"), hex. Every digest is 64 hex digits, so
    /// annexes with different fields never commit to the same bytes.
    pub fn commitment(&self) -> String {
        commitment_of(&self.digests())
    }

    /// The opening of this annex's record and version for the custodian
    /// ([`RecordOpening`]); none once the record is unlinked.
    pub fn record_opening(&self) -> Option<RecordOpening> {
        let AnnexField::Clear(record) = &self.record else { return None };
        Some(RecordOpening {
            salt: self.salt.clone(),
            record: record.clone(),
            version: self.version,
            approval: self.approval.is_some(),
            digests: self.digests(),
        })
    }

    /// The annex with its record, subject and approval replaced by their digests: what is
    /// kept after the subject's erasure (an approval's row names the subjects it covers, so its
    /// id would lead back to them). Its commitment is unchanged.
    #[must_use]
    pub fn unlinked(&self) -> Self {
        Self {
            record: AnnexField::Unlinked(self.digest_of("record", &self.record)),
            subject: AnnexField::Unlinked(self.digest_of("subject", &self.subject)),
            approval: self.approval.as_ref().map(|approval| AnnexField::Unlinked(self.digest_of("approval", approval))),
            ..self.clone()
        }
    }

    /// The annex's canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes an annex.
    pub fn decode(bytes: &[u8]) -> Result<Self, EventError> {
        serde_json::from_slice(bytes).map_err(EventError::Json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Event {
        Event {
            v: EVENT_VERSION,
            kind: EventKind::Access,
            time: 1_795_426_787,
            principal: Some(EventPrincipal { pseudonym: "p".repeat(64), kind: "employee".into(), region: "eu".into() }),
            origin: Some(EventOrigin { site: Some("singapore-1".into()), region: Some("sg".into()) }),
            action: Some("read".into()),
            subject: Some(SubjectTag { nonce: "0".repeat(32), tag: "a".repeat(64) }),
            category: Some("profile".into()),
            decision: Some(EventDecision {
                effect: "deny".into(),
                view: None,
                policies: vec!["origin-in-region".into()],
            }),
            purpose: Some("support".into()),
            annex: Some("c".repeat(64)),
            detail: None,
            transfer: None,
            government_request: None,
        }
    }

    #[test]
    fn events_are_canonical_json_with_every_key() {
        let event = v2();
        let bytes = event.encode();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"v":2,"kind":"access","time":1795426787,"principal":{"pseudonym":"pppp"#),
            "{text}"
        );
        assert!(text.ends_with(r#""purpose":"support","annex":"cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","detail":null}"#), "{text}");
        assert_eq!(Event::decode(&bytes).unwrap(), event);
        assert_eq!(Entry::decode(&bytes).unwrap(), Entry::V2(event));
        assert!(Event::decode(b"{}").is_err());
        let spaced = text.replace(",\"kind\"", ", \"kind\"");
        assert!(matches!(Event::decode(spaced.as_bytes()), Err(EventError::NotCanonical)));
    }

    #[test]
    fn format_1_entries_still_decode() {
        let v1 = r#"{"v":1,"kind":"access","time":1795426787,"principal":{"id":"ana","kind":"employee","region":"eu","site":"dublin-1"},"origin":{"site":"singapore-1","region":"sg"},"action":"read","subject":"ab","record":null,"category":"profile","decision":{"effect":"deny","view":null,"policies":["origin-in-region"]},"purpose":"support","justification":null,"detail":null}"#;
        let Entry::V1(event) = Entry::decode(v1.as_bytes()).unwrap() else { panic!("not format 1") };
        assert_eq!(event.principal.unwrap().id, "ana");
        assert_eq!(EventV1::decode(v1.as_bytes()).unwrap().encode(), v1.as_bytes());
        // Format 1 bytes are not a format 2 event, and an unknown version is refused by name.
        assert!(Event::decode(v1.as_bytes()).is_err());
        let v3 = v1.replacen("\"v\":1", "\"v\":3", 1);
        assert!(matches!(Entry::decode(v3.as_bytes()), Err(EventError::UnknownVersion(3))));
    }

    #[test]
    fn subject_hashes_and_pseudonyms_are_keyed() {
        let s: SubjectId = "u-1".parse().unwrap();
        let a = SubjectIndexKey::new(&[1; 32]);
        let b = SubjectIndexKey::new(&[2; 32]);
        assert_eq!(a.hash(&s), a.hash(&s));
        assert_ne!(a.hash(&s), b.hash(&s));
        assert_eq!(a.hash(&s).len(), 64);
        assert!(!a.hash(&s).contains("u-1"));
        let ana = a.principal_pseudonym("employee", "ana");
        assert_eq!(ana, a.principal_pseudonym("employee", "ana"));
        assert_ne!(ana, a.principal_pseudonym("service", "ana"));
        assert_ne!(ana, b.principal_pseudonym("employee", "ana"));
        assert!(is_subject_hash(&ana));
    }

    #[test]
    fn subject_tags_are_unlinkable_without_the_key() {
        let key = SubjectTagKey::new(&[7; 32]);
        let other = SubjectTagKey::new(&[8; 32]);
        let (one, two) = (key.tag().unwrap(), key.tag().unwrap());
        assert!(one.is_well_formed() && two.is_well_formed());
        assert_ne!(one, two, "two tags of one subject share nothing");
        assert!(key.made(&one) && key.made(&two));
        assert!(!other.made(&one));
        let random = SubjectTag::random().unwrap();
        assert!(random.is_well_formed() && !key.made(&random));
        let mut forged = one.clone();
        forged.nonce = two.nonce.clone();
        assert!(!key.made(&forged));
        assert!(!key.made(&SubjectTag { nonce: "zz".into(), tag: one.tag }));
    }

    #[test]
    fn an_annex_commits_to_its_fields_and_survives_unlinking() {
        let annex = Annex::new(Some("ana"), Some("SUP-12"), None, Some("rec"), Some("u-1")).unwrap();
        let commitment = annex.commitment();
        assert!(is_subject_hash(&commitment));
        assert_eq!(Annex::decode(&annex.encode()).unwrap(), annex);
        // Any changed field changes the commitment; a fresh salt does too.
        let mut changed = annex.clone();
        changed.justification = Some("SUP-13".into());
        assert_ne!(changed.commitment(), commitment);
        let mut changed = annex.clone();
        changed.subject = AnnexField::Clear(Some("u-2".into()));
        assert_ne!(changed.commitment(), commitment);
        assert_ne!(
            Annex::new(Some("ana"), Some("SUP-12"), None, Some("rec"), Some("u-1")).unwrap().commitment(),
            commitment
        );
        // Unlinked: no subject, no record, same commitment.
        let unlinked = annex.unlinked();
        assert_eq!(unlinked.commitment(), commitment);
        let text = String::from_utf8(unlinked.encode()).unwrap();
        assert!(!text.contains("u-1") && !text.contains("\"rec\""), "{text}");
        assert_eq!(unlinked.unlinked(), unlinked);
    }

    #[test]
    fn a_record_opening_opens_its_annexs_commitment_and_names_nothing_else() {
        let annex =
            Annex::new(Some("ana"), Some("SUP-12"), None, Some("rec-1"), Some("u-1")).unwrap().with_version(Some(3));
        let opening = annex.record_opening().unwrap();
        assert!(opening.opens(&annex.commitment()));
        // It carries the record and version, and of the rest only digests.
        let text = serde_json::to_string(&opening).unwrap();
        assert!(!text.contains("ana") && !text.contains("SUP-12") && !text.contains("u-1"), "{text}");
        // Another record, another version, no version, a digest moved: it opens nothing.
        let mut other = opening.clone();
        other.record = Some("rec-2".into());
        assert!(!other.opens(&annex.commitment()));
        let mut other = opening.clone();
        other.version = Some(4);
        assert!(!other.opens(&annex.commitment()));
        let mut other = opening.clone();
        other.version = None;
        assert!(!other.opens(&annex.commitment()));
        let mut other = opening.clone();
        other.digests.swap(3, 4);
        assert!(!other.opens(&annex.commitment()));
        // An annex without a version keeps the commitment it had before versions existed.
        let plain = Annex::new(Some("ana"), Some("SUP-12"), None, Some("rec-1"), Some("u-1")).unwrap();
        let mut versioned = plain.clone();
        versioned.version = Some(1);
        assert_ne!(plain.commitment(), versioned.commitment());
        assert!(plain.record_opening().unwrap().opens(&plain.commitment()));
        // Once unlinked by an erasure, it opens to no record.
        assert!(annex.unlinked().record_opening().is_none());
    }

    #[test]
    fn an_approval_in_an_annex_is_committed_to_and_unlinked() {
        let annex = Annex::new(Some("ana"), None, None, Some("rec"), Some("u-1")).unwrap();
        // No approval: the encoding and the commitment are those of an annex written before
        // the field existed.
        let text = String::from_utf8(annex.encode()).unwrap();
        assert!(!text.contains("approval"), "{text}");
        assert_eq!(annex.clone().with_approval(None), annex);
        let mut before = annex.clone();
        before.approval = None;
        assert_eq!(before.commitment(), annex.commitment());
        // An approval: committed to, kept in the encoding, unlinked with the subject.
        let approved = annex.clone().with_approval(Some("a-1"));
        assert_ne!(approved.commitment(), annex.commitment());
        assert_eq!(Annex::decode(&approved.encode()).unwrap(), approved);
        let mut other = approved.clone();
        other.approval = Some(AnnexField::Clear(Some("a-2".into())));
        assert_ne!(other.commitment(), approved.commitment());
        let unlinked = approved.unlinked();
        assert_eq!(unlinked.commitment(), approved.commitment());
        assert!(matches!(unlinked.approval, Some(AnnexField::Unlinked(_))));
        assert!(!String::from_utf8(unlinked.encode()).unwrap().contains("a-1"));
        // An annex as written before the field existed decodes, encodes to the same bytes and
        // commits as docs/log.md says (these digests computed apart from this code, by the
        // documented rule); with an approval, the rule adds its digest last.
        let old = format!(
            r#"{{"salt":"{}","principal":"ana","justification":null,"note":null,"record":{{"clear":"rec"}},"subject":{{"clear":"u-1"}}}}"#,
            "ab".repeat(32)
        );
        let decoded = Annex::decode(old.as_bytes()).unwrap();
        assert_eq!(decoded.encode(), old.as_bytes());
        assert_eq!(decoded.commitment(), "3f55c7bad828ecd9a3b8d191112c4f9f025808c9a129f6915123a29755899421");
        assert_eq!(
            decoded.with_approval(Some("a-1")).commitment(),
            "6ad4df4991586f59e1c9adafbc2f6d31581f5d5b4a51ab89bface92989b962dd"
        );
    }
}
