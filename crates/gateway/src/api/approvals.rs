//! `/v1/approvals`: asking for, and granting, an approval for bulk access and for a minor's
//! sensitive data.
//!
//! A principal who must read more distinct subjects than the policy's threshold, or a minor's
//! sensitive category (the default pack's `minors-sensitive-data-needs-approval`, even in the
//! region), asks for an approval, scoped to themselves, the subjects, the categories and the
//! purpose. A second
//! person grants it: an in-region employee with the approver role, never the requester (the
//! policy pack's `approvals-by-a-second-person`). A request nobody answers expires, and so does
//! a grant (`[policy] approval_seconds`, 12 hours). Each step is in the log.
//!
//! An approval names its subjects, its requester, its categories and its purpose, so reading one
//! is decided and logged too: its requester and whoever may grant it, in the region, may; anyone
//! else is refused in the same words whether or not the approval exists.
//!
//! What the log holds of an approval, and why. The approval lives in the store and the decision
//! reads it there, so the log must fix what was granted, or a database operator could insert an
//! approval for ten thousand subjects, or widen one, and the bulk rule would lift with no trace:
//!
//! - the request's entry (`request-approval`) says its id, how many subjects, which categories
//!   and purpose; the request keeps a random salt for its scope's digest (`scope_salt`);
//! - the grant's entry (`approve`, allowed) says in its public detail the id, how many subjects,
//!   the categories, the purpose, the expiry and a salted digest of the whole scope
//!   ([`crate::grant_detail`], [`crate::scope_digest`]), never a subject's id; its annex names
//!   the approver and the requester. The store keeps the entry's index with the grant;
//! - a decision counts the approval only if that entry is the grant of that approval with the
//!   digest recomputed from the row as stored now (`boundary/approvals.rs`), and the access's
//!   annex names the approval it counted.
//!
//! A request stored before grants were logged this way has no salt: it cannot be granted (409),
//! and is asked for again.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use clover_event::EventKind;
use clover_model::{Category, SubjectId};
use clover_policy::Decision;
use clover_store::ApprovalRow;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::api::answer::answered;
use crate::boundary::Boundary;
use crate::pipeline::Caller;
use crate::pipeline::decision::approval_request;
use crate::problem::{ApiError, Body, Problem};

/// A request for an approval.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalBody {
    /// The subjects the approval is to cover: at least one, at most 10000.
    #[schema(value_type = Vec<String>, min_items = 1, max_items = 10000)]
    pub subjects: Vec<SubjectId>,
    /// The categories it is to cover (configured ones): at least one.
    #[schema(value_type = Vec<String>, min_items = 1)]
    pub categories: Vec<Category>,
    /// The purpose it is to cover (a configured reason code).
    pub purpose: String,
}

/// An approval, pending or granted.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApprovalAnswer {
    /// Its id.
    pub approval_id: String,
    /// `requested`, `granted` or `expired`.
    pub state: String,
    /// Who asked (and whom it covers).
    pub requester: String,
    /// Who granted it.
    pub approver: Option<String>,
    /// The subjects it covers.
    pub subjects: Vec<String>,
    /// The categories it covers.
    pub categories: Vec<String>,
    /// The purpose it covers.
    pub purpose: String,
    /// When the request, or the grant, expires (RFC 3339).
    pub expires_at: String,
    /// The decision, for a grant.
    #[schema(value_type = Option<Object>)]
    pub decision: Option<Decision>,
    /// The log entry of this step.
    pub log_index: Option<u64>,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn answer(row: &ApprovalRow, decision: Option<Decision>, log_index: Option<u64>) -> ApprovalAnswer {
    let state = if row.expires_at <= OffsetDateTime::now_utc() {
        "expired"
    } else if row.approver.is_some() {
        "granted"
    } else {
        "requested"
    };
    ApprovalAnswer {
        approval_id: row.approval_id.clone(),
        state: state.to_owned(),
        requester: row.requester.to_string(),
        approver: row.approver.as_ref().map(ToString::to_string),
        subjects: row.subjects.iter().map(ToString::to_string).collect(),
        categories: row.categories.iter().map(ToString::to_string).collect(),
        purpose: row.purpose.clone(),
        expires_at: rfc3339(row.expires_at),
        decision,
        log_index,
    }
}

async fn log(
    boundary: &Boundary,
    caller: &Caller,
    action: &str,
    decision: Option<&Decision>,
    detail: String,
    note: Option<&str>,
) -> Result<u64, ApiError> {
    crate::pipeline::events::log_without_data(
        boundary,
        EventKind::Approval,
        Some(caller),
        action,
        decision,
        detail,
        note,
    )
    .await
}

/// Asks for an approval to read the named subjects' records of the named categories for one
/// purpose, past the policy's threshold of distinct subjects.
#[utoipa::path(post, path = "/v1/approvals", tag = "approvals", request_body = ApprovalBody,
    responses(
        (status = CREATED, description = "Requested; waits for a second person", body = ApprovalAnswer),
        (status = UNPROCESSABLE_ENTITY, description = "`unknown-category`: a category is not configured; `invalid-body`: the purpose is not configured, or no subject or no category, or over 10000 subjects", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn request_approval(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Body(body): Body<ApprovalBody>,
) -> Result<Response, ApiError> {
    if body.subjects.is_empty() || body.categories.is_empty() {
        return Err(ApiError::InvalidBody("an approval must name at least one subject and one category".into()));
    }
    if body.subjects.len() > 10_000 {
        return Err(ApiError::InvalidBody("an approval covers at most 10000 subjects".into()));
    }
    for category in &body.categories {
        if !boundary.has_category(category) {
            return Err(ApiError::UnknownCategory { category: category.to_string(), known: boundary.category_names() });
        }
    }
    if !boundary.config().purposes.iter().any(|p| p.name == body.purpose) {
        return Err(ApiError::InvalidBody(format!("purpose {:?} is not configured", body.purpose)));
    }
    let now = OffsetDateTime::now_utc();
    let scope_salt = crate::boundary::approvals::scope_salt()
        .map_err(|_| ApiError::internal("the system's randomness failed: no salt for the approval's scope"))?;
    let row = ApprovalRow {
        approval_id: uuid::Uuid::new_v4().to_string(),
        requester: caller.principal.id.clone(),
        subjects: body.subjects,
        categories: body.categories,
        purpose: body.purpose,
        requested_at: now,
        expires_at: now
            + time::Duration::seconds(i64::try_from(boundary.config().policy.approval_seconds).unwrap_or(i64::MAX / 2)),
        approver: None,
        granted_at: None,
        scope_salt,
        grant_index: None,
    };
    let detail = format!(
        "approval {} requested: {} subjects, categories {}, purpose {}",
        row.approval_id,
        row.subjects.len(),
        row.categories.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        row.purpose
    );
    let log_index = log(&boundary, &caller, "request-approval", None, detail, None).await?;
    boundary.store().insert_approval(&row).await.map_err(ApiError::internal)?;
    tracing::info!(approval = %row.approval_id, log_index, "approval requested");
    Ok(axum::response::IntoResponse::into_response((
        StatusCode::CREATED,
        axum::Json(answer(&row, None, Some(log_index))),
    )))
}

/// Grants a pending approval. Only a second person may: an in-region employee with the
/// approver role, not the requester; the policy pack decides, first, and the decision is logged,
/// so that one who may not grant learns nothing of the approval, not even that it exists.
///
/// The grant's log entry carries the approval's id, its width and a salted digest of its scope
/// (never a subject's id). Decisions count the approval only while it matches that entry: one
/// changed in the store after its grant lifts nothing.
#[utoipa::path(post, path = "/v1/approvals/{approval_id}/grant", tag = "approvals",
    params(("approval_id" = String, Path, description = "The approval's id")),
    responses(
        (status = OK, description = "Granted", body = ApprovalAnswer),
        (status = FORBIDDEN, description = "`forbidden`: not allowed to grant it (the requester, no approver role, outside the region): the same answer whether the approval exists or not; the refusal is logged", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "`not-found`: no such approval (to an approver in the region)", body = Problem, content_type = "application/problem+json"),
        (status = CONFLICT, description = "`approval-not-pending`: already granted, or expired (to an approver in the region)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn grant_approval(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Path(approval_id): Path<String>,
) -> Result<Response, ApiError> {
    // Decided before anything about the approval is told: one who may not grant it learns
    // neither whether it exists nor whether it is pending (an unknown id is decided as an
    // approval with no requester, and its refusal reads the same).
    let row = boundary.store().approval(&approval_id).await.map_err(ApiError::internal)?;
    let requester = row.as_ref().map_or("", |row| row.requester.as_str());
    let request = approval_request(boundary.config(), &caller.principal, &caller.origin, &approval_id, requester);
    let decision = boundary.decide(&request);
    let granted = decision.effect() == "allow";
    let now = OffsetDateTime::now_utc();
    let expires_at =
        now + time::Duration::seconds(i64::try_from(boundary.config().policy.approval_seconds).unwrap_or(i64::MAX / 2));
    // A request stored before grants were logged with their scope has no salt: its digest would
    // be unsalted, so it is not granted (it is asked for again).
    let pending = row
        .as_ref()
        .filter(|row| row.approver.is_none() && row.expires_at > now && !row.scope_salt.is_empty())
        .map(|row| ApprovalRow { expires_at, ..row.clone() });
    // The id and requester go into the log only for an approval that is granted: the path is
    // the caller's text, and a refusal must read the same whether the approval exists or not.
    // The requester is named only in the entry's annex, which the region keeps. A grant's
    // detail fixes its scope (a salted digest, no subject's id): what decisions check.
    let (detail, note) = match (&pending, granted) {
        (Some(row), true) => (crate::grant_detail(row), Some(format!("requested by {}", row.requester))),
        (None, true) => ("approval not granted: no such approval pending".to_owned(), None),
        (_, false) => ("approval refused".to_owned(), None),
    };
    let log_index = log(&boundary, &caller, "approve", Some(&decision), detail, note.as_deref()).await?;
    if !granted {
        return Err(ApiError::Forbidden { decision, log_index });
    }
    let Some(row) = row else { return Err(ApiError::NotFound { what: "approval", id: approval_id }) };
    if row.approver.is_some() || row.expires_at <= now {
        return Err(ApiError::NotPending(format!(
            "approval {approval_id:?} is {}",
            if row.approver.is_some() { "already granted" } else { "expired" }
        )));
    }
    if pending.is_none() {
        return Err(ApiError::NotPending(format!(
            "approval {approval_id:?} was asked for before grants were logged with their scope: ask for it again"
        )));
    }
    if !boundary
        .store()
        .grant_approval(&approval_id, &caller.principal.id, now, expires_at, log_index)
        .await
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::NotPending(format!("approval {approval_id:?} was granted or expired meanwhile")));
    }
    let row = boundary.store().approval(&approval_id).await.map_err(ApiError::internal)?.unwrap_or(row);
    tracing::info!(approval = %approval_id, approver = %caller.principal.id, log_index, "approval granted");
    Ok(answered(&decision, StatusCode::OK, answer(&row, Some(decision.clone()), Some(log_index))))
}

/// Who may read an approval, besides those the pack lets grant it: its requester, calling as an
/// in-region principal from a site of the region. A rule of the boundary rather than of the
/// pack, whose schema has no action for reading an approval (see `docs/security.md`).
pub const REQUESTER_RULE: &str = "requesters-see-their-approvals";

/// Whether `caller` may read the approval `approval_id` (`row`, if it exists): whoever the pack
/// lets grant it (`approvals-by-a-second-person`), or its requester in the region
/// ([`REQUESTER_RULE`]). For an unknown id the pack decides with no requester, which no caller
/// is: so whoever may not read an existing approval is refused in the same words for one that
/// does not exist.
fn view_decision(boundary: &Boundary, caller: &Caller, approval_id: &str, row: Option<&ApprovalRow>) -> Decision {
    let requester = row.map_or("", |row| row.requester.as_str());
    let request = approval_request(boundary.config(), &caller.principal, &caller.origin, approval_id, requester);
    let decision = boundary.decide(&request);
    if decision.effect() == "allow" {
        return decision;
    }
    let region = boundary.region();
    let in_region = matches!(&caller.origin, clover_model::Origin::Site { region: origin, .. } if origin == region)
        && caller.principal.home_region == *region;
    if row.is_some_and(|row| row.requester == caller.principal.id) && in_region {
        return Decision {
            outcome: clover_policy::Outcome::Allow(clover_model::View::Full),
            policies: vec![REQUESTER_RULE.to_owned()],
            reason: "the requester reads their own approval from the region".to_owned(),
        };
    }
    decision
}

/// An approval's state.
///
/// For its requester and for those who may grant it, in the region; the decision is logged
/// either way. Anyone else gets the same 403 whether the approval exists or not.
#[utoipa::path(get, path = "/v1/approvals/{approval_id}", tag = "approvals",
    params(("approval_id" = String, Path, description = "The approval's id")),
    responses(
        (status = OK, description = "The approval", body = ApprovalAnswer),
        (status = FORBIDDEN, description = "`forbidden`: neither its requester nor an approver, in the region; the same answer whether the approval exists or not; the refusal is logged", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "`not-found`: no such approval (to an approver in the region, who may read any)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_approval(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Path(approval_id): Path<String>,
) -> Result<Response, ApiError> {
    let row = boundary.store().approval(&approval_id).await.map_err(ApiError::internal)?;
    let decision = view_decision(&boundary, &caller, &approval_id, row.as_ref());
    let allowed = decision.effect() == "allow";
    // The id goes into the log only when it names an approval the caller may read: the path is
    // the caller's text, and a refusal must read the same for an approval that does not exist.
    let detail = match (&row, allowed) {
        (Some(row), true) => format!("approval {} read", row.approval_id),
        (None, true) => "approval read: no such approval".to_owned(),
        (_, false) => "approval read refused".to_owned(),
    };
    let log_index = log(&boundary, &caller, "read-approval", Some(&decision), detail, None).await?;
    if !allowed {
        return Err(ApiError::Forbidden { decision, log_index });
    }
    let row = row.ok_or(ApiError::NotFound { what: "approval", id: approval_id })?;
    Ok(answered(&decision, StatusCode::OK, answer(&row, Some(decision.clone()), Some(log_index))))
}
