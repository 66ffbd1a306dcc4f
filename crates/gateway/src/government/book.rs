//! The register of government requests: each request's row (its state and last entry in
//! columns, the rest as [`Details`]), the log entries of its steps (kind `government-request`,
//! public facts only, sealed while a gag holds), and the gate every step passes first: the
//! legal team, in the region (`handle_government_requests`), decided before the request is even
//! looked up, so that a caller who may not handle requests learns nothing, not whether an id
//! exists.

use clover_event::{EVENT_VERSION, Event, EventDecision, EventKind, GovernmentRequestFacts};
use clover_model::{Action, SubjectId};
use clover_policy::Decision;
use clover_requests::Instrument;
use clover_store::GovernmentRequestRow;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::boundary::Boundary;
use crate::pipeline::Caller;
use crate::problem::ApiError;
use crate::subjects::certificate::rfc3339;

/// Registered, not yet decided.
pub const RECEIVED: &str = "received";
/// Granted: every category asked for may be disclosed.
pub const GRANTED: &str = "granted";
/// Granted in part: categories the instrument does not allow were cut.
pub const PARTIALLY_GRANTED: &str = "partially-granted";
/// Closed (after its disclosures, or rejected; its outcome says which).
pub const CLOSED: &str = "closed";

/// What the register keeps of a request, beyond its state (in the region only: it names the
/// authority and the subjects).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Details {
    /// The authority, as it named itself.
    pub authority: String,
    /// Its country (ISO 3166-1 alpha-2, lowercase).
    pub country: String,
    /// The instrument.
    pub instrument: Instrument,
    /// The legal basis cited.
    pub legal_basis: String,
    /// The categories asked for (none: every category).
    pub categories: Vec<String>,
    /// The subjects asked for.
    pub subjects: Vec<String>,
    /// The SHA-256 of the document (hex).
    pub document_sha256: String,
    /// The deadline (Unix seconds).
    pub deadline: i64,
    /// The gag's end (Unix seconds), if there is a gag.
    pub gag_until: Option<i64>,
    /// The salt of the receipt's commitment, while sealed.
    pub seal_salt: Option<String>,
    /// Whether the gag ended and the facts were unsealed in the log.
    #[serde(default)]
    pub unsealed: bool,
    /// Who registered it (a principal id).
    pub registered_by: String,
    /// Who approved it (principal ids, each once, never the one who registered it).
    #[serde(default)]
    pub approvals: Vec<String>,
    /// `granted`, `partially-granted` or `rejected`, once decided.
    #[serde(default)]
    pub outcome: Option<String>,
    /// The policies that decided it.
    #[serde(default)]
    pub policies: Vec<String>,
    /// The categories granted.
    #[serde(default)]
    pub granted_categories: Vec<String>,
    /// When it was decided (Unix seconds).
    #[serde(default)]
    pub decided_at: Option<i64>,
    /// How many disclosures were made, and how many records they held.
    #[serde(default)]
    pub disclosures: u64,
    /// See `disclosures`.
    #[serde(default)]
    pub disclosed_records: u64,
    /// For a preservation order: until when its holds last (Unix seconds).
    #[serde(default)]
    pub hold_until: Option<i64>,
    /// How many times the hold was extended.
    #[serde(default)]
    pub hold_extensions: u32,
    /// Whether the holds were released.
    #[serde(default)]
    pub hold_released: bool,
}

impl Details {
    /// Whether a gag still seals the request's facts at `now`.
    pub fn gagged(&self, now: i64) -> bool {
        self.gag_until.is_some_and(|until| now < until) || (self.seal_salt.is_some() && !self.unsealed)
    }

    /// The subjects, as ids.
    pub fn subject_ids(&self) -> Vec<SubjectId> {
        self.subjects.iter().filter_map(|s| SubjectId::new(s.clone()).ok()).collect()
    }

    /// The categories asked for, or every configured one when none was named.
    pub fn asked_categories(&self, boundary: &Boundary) -> Vec<String> {
        if self.categories.is_empty() { boundary.category_names() } else { self.categories.clone() }
    }
}

/// A request as the legal team sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GovernmentRequest {
    /// Its id.
    pub request_id: String,
    /// `received`, `granted`, `partially-granted` or `closed`.
    pub state: String,
    /// The authority.
    pub authority: String,
    /// Its country.
    pub country: String,
    /// The instrument.
    #[schema(value_type = String, example = "production-order")]
    pub instrument: Instrument,
    /// The categories asked for (empty: every category).
    pub categories: Vec<String>,
    /// How many subjects it names.
    pub subjects: u64,
    /// When it was received (RFC 3339).
    pub received_at: String,
    /// The deadline (RFC 3339).
    pub deadline: String,
    /// Whether the deadline has passed.
    pub overdue: bool,
    /// Until when a gag holds (RFC 3339), if one does.
    pub gag_until: Option<String>,
    /// Whether its public facts are still sealed.
    pub sealed: bool,
    /// How many of the legal team approved it.
    pub approvals: u64,
    /// The outcome, once decided: `granted`, `partially-granted`, `rejected`.
    pub outcome: Option<String>,
    /// The policies that decided it.
    pub policies: Vec<String>,
    /// The categories granted.
    pub granted_categories: Vec<String>,
    /// Disclosures made, and the records they held.
    pub disclosures: u64,
    /// See `disclosures`.
    pub disclosed_records: u64,
    /// For a preservation order: until when its holds last (RFC 3339), unless released.
    pub hold_until: Option<String>,
    /// Whether its holds were released.
    pub hold_released: bool,
    /// The log entry of its last step.
    pub log_index: u64,
}

/// A Unix time as RFC 3339.
pub fn at(seconds: i64) -> String {
    rfc3339(OffsetDateTime::from_unix_timestamp(seconds).unwrap_or(OffsetDateTime::UNIX_EPOCH))
}

impl GovernmentRequest {
    /// The view of a row.
    pub fn of(row: &GovernmentRequestRow, details: &Details) -> Self {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        Self {
            request_id: row.request_id.clone(),
            state: row.state.clone(),
            authority: details.authority.clone(),
            country: details.country.clone(),
            instrument: details.instrument,
            categories: details.categories.clone(),
            subjects: u64::try_from(details.subjects.len()).unwrap_or(u64::MAX),
            received_at: rfc3339(row.received_at),
            deadline: at(details.deadline),
            overdue: now > details.deadline && details.outcome.is_none(),
            gag_until: details.gag_until.map(at),
            sealed: details.gagged(now),
            approvals: u64::try_from(details.approvals.len()).unwrap_or(u64::MAX),
            outcome: details.outcome.clone(),
            policies: details.policies.clone(),
            granted_categories: details.granted_categories.clone(),
            disclosures: details.disclosures,
            disclosed_records: details.disclosed_records,
            hold_until: details.hold_until.filter(|_| !details.hold_released).map(at),
            hold_released: details.hold_released,
            log_index: row.log_index,
        }
    }
}

/// The request `id` and its details; `NotFound` (the same for every id the register does not
/// hold) when there is none.
pub async fn load(boundary: &Boundary, id: &str) -> Result<(GovernmentRequestRow, Details), ApiError> {
    let missing = || ApiError::NotFound { what: "government request", id: id.chars().take(64).collect() };
    let row = boundary.store().government_request(id).await.map_err(ApiError::internal)?.ok_or_else(missing)?;
    let details = parse(&row)?;
    Ok((row, details))
}

/// The details of a row.
pub fn parse(row: &GovernmentRequestRow) -> Result<Details, ApiError> {
    serde_json::from_str(&row.details).map_err(ApiError::internal)
}

/// Stores `details` and the move to `state` logged at `log_index`, if the request did not move
/// meanwhile (its last entry is still `row.log_index`); `Conflict` if it did.
pub async fn save(
    boundary: &Boundary,
    row: &GovernmentRequestRow,
    details: &Details,
    state: &str,
    log_index: u64,
) -> Result<GovernmentRequestRow, ApiError> {
    let moved = GovernmentRequestRow {
        request_id: row.request_id.clone(),
        state: state.to_owned(),
        details: serde_json::to_string(details).map_err(ApiError::internal)?,
        received_at: row.received_at,
        updated_at: OffsetDateTime::now_utc(),
        log_index,
    };
    if !boundary.store().update_government_request(&moved, row.log_index).await.map_err(ApiError::internal)? {
        return Err(ApiError::Conflict(format!("government request {} moved meanwhile; ask again", row.request_id)));
    }
    Ok(moved)
}

/// The public facts of a step of the request: its country, instrument and deadline, unless a
/// gag still seals them (then only the id, the stage and what `fill` adds that is not about the
/// request's facts: an outcome, a count of records).
pub fn facts(id: &str, stage: &str, details: &Details) -> GovernmentRequestFacts {
    let sealed = details.gagged(OffsetDateTime::now_utc().unix_timestamp());
    GovernmentRequestFacts {
        request_id: id.to_owned(),
        stage: stage.to_owned(),
        country: (!sealed).then(|| details.country.clone()),
        instrument: (!sealed).then(|| details.instrument.as_str().to_owned()),
        count: 0,
        categories: Vec::new(),
        deadline: (!sealed).then_some(details.deadline),
        outcome: None,
        sealed: None,
        gag_until: None,
    }
}

/// Appends a step of a request: by `caller` (none: the boundary's own doing, as a gag's end),
/// decided by `decision`, with what names anyone in the annex (`note`).
pub async fn append(
    boundary: &Boundary,
    caller: Option<&Caller>,
    action: Action,
    decision: Option<&Decision>,
    facts: GovernmentRequestFacts,
    note: Option<&str>,
) -> Result<u64, ApiError> {
    let event = Event {
        v: EVENT_VERSION,
        kind: EventKind::GovernmentRequest,
        time: OffsetDateTime::now_utc().unix_timestamp(),
        principal: caller.map(|c| boundary.public_principal(&c.principal)),
        origin: caller.map(Caller::event_origin),
        action: Some(action.as_str().to_owned()),
        subject: None,
        category: None,
        decision: decision.map(|d| EventDecision {
            effect: d.effect().to_owned(),
            view: None,
            policies: d.policies.clone(),
        }),
        purpose: None,
        annex: None,
        detail: None,
        transfer: None,
        government_request: Some(Box::new(facts)),
    };
    let annex = match (caller, note) {
        (None, None) => None,
        _ => Some(crate::boundary::entries::annex(
            caller.map(|c| &c.principal),
            caller.and_then(|c| c.justification.as_deref()),
            note,
            None,
            None,
        )?),
    };
    Ok(boundary.append_annexed(event, annex).await?)
}

/// The gate of every step on a registered request: the legal team, in the region, by policy.
/// A refusal is logged (with the id asked for in the annex only) and answered 403 before the
/// id is looked up.
pub async fn gate(boundary: &Boundary, caller: &Caller, asked: &str) -> Result<Decision, ApiError> {
    let request = crate::pipeline::decision::boundary_request(
        boundary.config(),
        &caller.principal,
        &caller.origin,
        Action::HandleGovernmentRequests,
    );
    let decision = boundary.decide(&request);
    if decision.effect() == "allow" {
        return Ok(decision);
    }
    crate::pipeline::events::limit(boundary, caller)?;
    let log_index = crate::pipeline::events::log_without_data(
        boundary,
        EventKind::GovernmentRequest,
        Some(caller),
        Action::HandleGovernmentRequests.as_str(),
        Some(&decision),
        "handling government requests refused".to_owned(),
        Some(&format!("asked about {:?}", asked.chars().take(64).collect::<String>())),
    )
    .await?;
    tracing::warn!(principal = %caller.principal.id, log_index, "handling government requests refused");
    Err(ApiError::Forbidden { decision, log_index })
}

/// The ids of the requests whose gag still holds: the entries of their disclosures are kept
/// out of the subjects' own access histories until it ends.
pub async fn gagged_ids(boundary: &Boundary) -> Result<std::collections::HashSet<String>, ApiError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut ids = std::collections::HashSet::new();
    for row in boundary.store().government_requests().await.map_err(ApiError::internal)? {
        if parse(&row)?.gagged(now) {
            ids.insert(row.request_id);
        }
    }
    Ok(ids)
}
