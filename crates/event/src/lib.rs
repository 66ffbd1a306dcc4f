//! The log's entries: events, in a canonical, documented encoding (the event schema).
//!
//! This is Clover's own schema on top of the log's spec (`clover-tlog`): what an entry says, not
//! how the log stores or proves it. The runtime log, the gateway, the custodian's check of a
//! receipt and every verifier share it, and none of them needs the runtime log to read it.
//!
//! An entry is the compact JSON of an [`Event`], with its keys in the order of the fields
//! below and every key present (`null` when it does not apply); `docs/log.md` documents each
//! field, so an auditor can decode entries with any JSON tool. Subject ids never appear: an
//! entry carries the subject's [`SubjectIndexKey`] hash instead (HMAC-SHA-256 under a key
//! that only the region holds), so that an auditor can count and correlate entries about one
//! subject while only the region can tell whose they are.

use aws_lc_rs::hmac;
use clover_model::SubjectId;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The current entry format.
pub const EVENT_VERSION: u8 = 1;

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
}

/// The caller, as the entry records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventPrincipal {
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

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Format version, [`EVENT_VERSION`].
    pub v: u8,
    /// What happened.
    pub kind: EventKind,
    /// When, in Unix seconds (UTC).
    pub time: i64,
    /// Who asked.
    pub principal: Option<EventPrincipal>,
    /// From where.
    pub origin: Option<EventOrigin>,
    /// The action asked (`read`, `write`, `erase`, ...).
    pub action: Option<String>,
    /// The subject's keyed hash (hex), never the subject id.
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
    /// For key and configuration events: what changed (a key version, a digest).
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
}

impl Event {
    /// The canonical bytes of the event.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings, numbers and options always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes an entry, checking that it is canonical (re-encoding gives the same bytes).
    pub fn decode(bytes: &[u8]) -> Result<Self, EventError> {
        let event: Self = serde_json::from_slice(bytes).map_err(EventError::Json)?;
        if event.encode() != bytes {
            return Err(EventError::NotCanonical);
        }
        Ok(event)
    }
}

/// Whether `text` has the form of a subject hash in the log: 64 lowercase hex digits.
pub fn is_subject_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The region's key for subject hashes in the log.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_canonical_json_with_every_key() {
        let event = Event {
            v: EVENT_VERSION,
            kind: EventKind::Access,
            time: 1_795_426_787,
            principal: Some(EventPrincipal {
                id: "ana".into(),
                kind: "employee".into(),
                region: "eu".into(),
                site: "dublin-1".into(),
            }),
            origin: Some(EventOrigin { site: Some("singapore-1".into()), region: Some("sg".into()) }),
            action: Some("read".into()),
            subject: Some("ab".into()),
            record: None,
            category: Some("profile".into()),
            decision: Some(EventDecision {
                effect: "deny".into(),
                view: None,
                policies: vec!["origin-in-region".into()],
            }),
            purpose: Some("support".into()),
            justification: None,
            detail: None,
        };
        let bytes = event.encode();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"v":1,"kind":"access","time":1795426787,"principal":{"id":"ana","kind":"employee","region":"eu","site":"dublin-1"},"origin":{"site":"singapore-1","region":"sg"},"action":"read","subject":"ab","record":null,"category":"profile","decision":{"effect":"deny","view":null,"policies":["origin-in-region"]},"purpose":"support","justification":null,"detail":null}"#
        );
        assert_eq!(Event::decode(&bytes).unwrap(), event);
        assert!(Event::decode(b"{}").is_err());
        let spaced = String::from_utf8(bytes).unwrap().replace(",\"v\"", ", \"v\"").replacen("{", "{ ", 1);
        assert!(Event::decode(spaced.as_bytes()).is_err());
    }

    #[test]
    fn subject_hashes_are_keyed() {
        let s: SubjectId = "u-1".parse().unwrap();
        let a = SubjectIndexKey::new(&[1; 32]);
        let b = SubjectIndexKey::new(&[2; 32]);
        assert_eq!(a.hash(&s), a.hash(&s));
        assert_ne!(a.hash(&s), b.hash(&s));
        assert_eq!(a.hash(&s).len(), 64);
        assert!(!a.hash(&s).contains("u-1"));
    }
}
