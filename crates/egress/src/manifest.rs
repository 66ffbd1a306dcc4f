//! A record transfer's manifest: what is about to leave, to where, on what legal basis, treated
//! how, and how much of it. The boundary signs it (a C2SP signed note under the log's key) and
//! logs its SHA-256 before the first byte leaves; the transfer's last entry adds how many
//! records left and the SHA-256 of the bytes sent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::destination::LegalBasis;
use crate::treatment::Treatment;

/// What a record transfer leaves out, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Excluded {
    /// Records of minors: never transferred.
    pub minors: u64,
    /// Records of erased subjects (their keys are gone).
    pub erased: u64,
    /// Records held back by k-anonymity (their class had fewer than k records).
    pub suppressed: u64,
    /// Field values a rule named that could not be treated safely (FF1 below its minimum
    /// domain, a date that does not parse): dropped from their records.
    pub refused_fields: u64,
    /// Records an earlier version of Clover sealed with their subject's key, not yet re-sealed
    /// under their own (`clover keys reseal`): their key does not bind their category, so the
    /// custodian does not treat them for a transfer.
    #[serde(default)]
    pub not_resealed: u64,
}

/// A record transfer's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Manifest {
    /// The transfer's id.
    pub transfer: String,
    /// The region the data leaves.
    pub from_region: String,
    /// The destination.
    pub destination: String,
    /// The destination's region.
    pub region: String,
    /// The legal basis.
    #[schema(value_type = String)]
    pub legal_basis: LegalBasis,
    /// The purpose.
    pub purpose: String,
    /// The categories.
    pub categories: Vec<String>,
    /// Records created at or after this time (RFC 3339), if given.
    pub since: Option<String>,
    /// Records created before this time (RFC 3339), if given.
    pub until: Option<String>,
    /// What each field of each category becomes; fields not named are dropped.
    #[schema(value_type = BTreeMap<String, BTreeMap<String, String>>)]
    pub rules: BTreeMap<String, BTreeMap<String, Treatment>>,
    /// The destination's k.
    pub k: u32,
    /// Records to be sent.
    pub records: u64,
    /// What is left out.
    pub excluded: Excluded,
    /// The log entry of the transfer's decision.
    pub decided: u64,
    /// When the manifest was made (RFC 3339).
    pub created: String,
}

impl Manifest {
    /// The manifest's text, the body of its signed note: its JSON on one line, and a newline.
    pub fn body(&self) -> String {
        let mut text = serde_json::to_string(self).unwrap_or_default();
        text.push('\n');
        text
    }
}
