//! Who read a subject's data, as the subject reads it: every log entry about them, each with an
//! RFC 6962 inclusion proof against a signed checkpoint (the one the boundary serves: cosigned
//! by every configured witness), so that a person can check with tools of their own that the
//! entry is in the log every auditor sees (`docs/verify-my-accesses.md`).
//!
//! What a person is shown of an entry is its public part (kind of principal, region, origin,
//! purpose, decision) and the roles that may declare its purpose: never the employee's name,
//! which is in the entry's private annex.

use std::collections::BTreeMap;

use base64::Engine as _;
use clover_event::{Annex, Entry};
use clover_model::SubjectId;
use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::hash::leaf_hash;
use clover_tlog::note::Note;
use serde::Serialize;
use utoipa::ToSchema;

use crate::boundary::Boundary;
use crate::problem::ApiError;

/// How many annexes are read at once.
const ANNEX_PAGE: u32 = 1_000;

/// The log entries about `subject`, by index, each with its annex when it has one: format 2
/// entries through the annexes that name the subject; format 1 entries (written before) through
/// the subject's hash, while the subject is `registered`. The entries of a disclosure to an
/// authority under a request whose gag still holds are left out until it ends.
pub async fn entries_about(
    boundary: &Boundary,
    subject: &SubjectId,
    registered: bool,
) -> Result<BTreeMap<u64, Option<Annex>>, ApiError> {
    let mut found = BTreeMap::new();
    let gagged = crate::government::book::gagged_ids(boundary).await?;
    let mut after = 0;
    loop {
        let page = boundary.store().annexes_of_page(subject, after, ANNEX_PAGE).await.map_err(ApiError::internal)?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        for (_, annex) in page {
            if annex.justification.as_ref().is_some_and(|j| gagged.contains(j)) {
                continue;
            }
            for index in boundary.log().entries_about(&annex.commitment()) {
                found.insert(index, Some(annex.clone()));
            }
        }
    }
    if registered {
        for index in boundary.log().entries_about(&boundary.subject_hash(subject)) {
            found.entry(index).or_insert(None);
        }
    }
    Ok(found)
}

/// The indexes of the log entries about `subject`, in order: [`entries_about`] without the
/// annexes, for a history that is written out entry by entry (an export).
pub async fn indexes_about(boundary: &Boundary, subject: &SubjectId, registered: bool) -> Result<Vec<u64>, ApiError> {
    let mut found = Vec::new();
    let gagged = crate::government::book::gagged_ids(boundary).await?;
    // A page of annexes at a time: only the indexes are kept.
    let mut after = 0;
    loop {
        let page = boundary.store().annexes_of_page(subject, after, ANNEX_PAGE).await.map_err(ApiError::internal)?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        for (_, annex) in page {
            if annex.justification.as_ref().is_some_and(|j| gagged.contains(j)) {
                continue;
            }
            found.extend(boundary.log().entries_about(&annex.commitment()));
        }
    }
    if registered {
        found.extend(boundary.log().entries_about(&boundary.subject_hash(subject)));
    }
    found.sort_unstable();
    found.dedup();
    Ok(found)
}

/// Where a request came from, as the entry says.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AccessOrigin {
    /// The site; none for an address that belongs to no configured site.
    pub site: Option<String>,
    /// The site's region (none for an unknown origin).
    pub region: Option<String>,
}

/// One entry about the subject, as a person reads it, with its proof.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MyAccess {
    /// The entry's index in the log.
    pub index: u64,
    /// When (RFC 3339, UTC).
    pub time: String,
    /// The kind of entry: `access` (a read, or a listing like this one), `write`, `erasure`,
    /// `transfer`, ...
    pub kind: String,
    /// What was asked: `read`, `write`, `erase`, `list-accesses`, `export-subject`, ...
    pub action: Option<String>,
    /// The decision: `allow` or `deny` (or `approval-required`).
    pub decision: Option<String>,
    /// The view granted to a read: `full` or `pseudonymised`.
    pub view: Option<String>,
    /// The policies that decided.
    pub policies: Vec<String>,
    /// From where.
    pub origin: Option<AccessOrigin>,
    /// The kind of principal who asked: `employee`, `service`, or `subject` (you).
    pub principal_kind: Option<String>,
    /// The region the principal belongs to.
    pub principal_region: Option<String>,
    /// The roles that may declare the entry's purpose (the configuration's `[[purposes]]
    /// roles`): who, by role, could have asked. Never a name.
    pub roles: Vec<String>,
    /// The declared purpose.
    pub purpose: Option<String>,
    /// The record's category.
    pub category: Option<String>,
    /// The entry's bytes as the log holds them (base64): its leaf hash is
    /// SHA-256(0x00 || these bytes).
    pub entry: String,
    /// The entry's leaf hash (base64).
    pub leaf_hash: String,
    /// The RFC 6962 inclusion proof of the entry in the tree of `tree_size` entries that
    /// `checkpoint` signs (base64 hashes, leaf to root); none for an entry newer than that
    /// checkpoint (ask again once the witnesses have cosigned a newer one).
    pub proof: Option<Vec<String>>,
}

/// What the subject is shown.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct History {
    /// The signed checkpoint every proof is against (a C2SP signed note, with the witnesses'
    /// cosignatures when witnesses are configured).
    pub checkpoint: String,
    /// Its tree size.
    pub tree_size: u64,
    /// The log's verifier key (C2SP vkey), which signs the checkpoint.
    pub log_vkey: String,
    /// Every entry about the subject, oldest first.
    pub entries: Vec<MyAccess>,
}

/// The served checkpoint, and its tree size.
pub(crate) fn served(boundary: &Boundary) -> Result<(String, u64), ApiError> {
    let note = boundary.served_checkpoint();
    let parsed = Note::parse(&note).map_err(ApiError::internal)?;
    let checkpoint = Checkpoint::parse(&parsed.text).map_err(ApiError::internal)?;
    Ok((note, checkpoint.size))
}

/// The subject's history: the entries at `indexes`, each with its proof against the served
/// checkpoint.
pub async fn history(boundary: &Boundary, indexes: impl IntoIterator<Item = u64>) -> Result<History, ApiError> {
    let (checkpoint, tree_size) = served(boundary)?;
    let mut entries = Vec::new();
    for index in indexes {
        entries.push(entry(boundary, index, tree_size).await?);
    }
    Ok(History { checkpoint, tree_size, log_vkey: boundary.log_vkey().to_string(), entries })
}

/// One entry, as a person reads it.
pub(crate) async fn entry(boundary: &Boundary, index: u64, tree_size: u64) -> Result<MyAccess, ApiError> {
    let bytes = boundary.log().entry(index).await.map_err(ApiError::internal)?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let proof = if index < tree_size {
        let path = boundary.log().inclusion_proof(index, tree_size).map_err(ApiError::internal)?;
        Some(path.iter().map(clover_tlog::hash::Hash::to_base64).collect())
    } else {
        None
    };
    let mut access = MyAccess {
        index,
        time: String::new(),
        kind: String::new(),
        action: None,
        decision: None,
        view: None,
        policies: Vec::new(),
        origin: None,
        principal_kind: None,
        principal_region: None,
        roles: Vec::new(),
        purpose: None,
        category: None,
        entry: b64(&bytes),
        leaf_hash: leaf_hash(&bytes).to_base64(),
        proof,
    };
    let rfc3339 = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default()
    };
    match Entry::decode(&bytes).map_err(ApiError::internal)? {
        Entry::V2(event) => {
            access.time = rfc3339(event.time);
            access.kind = kind_name(event.kind);
            access.action = event.action;
            if let Some(decision) = event.decision {
                access.decision = Some(decision.effect);
                access.view = decision.view;
                access.policies = decision.policies;
            }
            access.origin = event.origin.map(|o| AccessOrigin { site: o.site, region: o.region });
            if let Some(principal) = event.principal {
                access.principal_kind = Some(principal.kind);
                access.principal_region = Some(principal.region);
            }
            access.roles = roles_of(boundary, event.purpose.as_deref());
            access.purpose = event.purpose;
            access.category = event.category;
        }
        Entry::V1(event) => {
            access.time = rfc3339(event.time);
            access.kind = kind_name(event.kind);
            access.action = event.action;
            access.origin = event.origin.map(|o| AccessOrigin { site: o.site, region: o.region });
            access.principal_kind = event.principal.map(|p| p.kind);
            access.roles = roles_of(boundary, event.purpose.as_deref());
            access.purpose = event.purpose;
            access.category = event.category;
        }
    }
    Ok(access)
}

/// An entry kind as the log spells it (`access`, `erasure`, ...).
pub(crate) fn kind_name(kind: clover_event::EventKind) -> String {
    serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(ToOwned::to_owned)).unwrap_or_default()
}

/// The roles configured to declare `purpose`.
fn roles_of(boundary: &Boundary, purpose: Option<&str>) -> Vec<String> {
    purpose
        .and_then(|p| boundary.config().purposes.iter().find(|c| c.name == p))
        .map(|p| p.roles.clone())
        .unwrap_or_default()
}
