//! Answering a registered request: the legal team's approvals, the decision, and closing.
//!
//! The decision is Cedar's, over the request's own facts (`answer_government_request` on a
//! `GovernmentRequest`: whether the region recognises the authority's country for the
//! instrument, how many approved it, whether it names a minor): a refusal rejects the request,
//! with the policies that refused it. Categories beyond what the instrument may obtain
//! (`[government.instruments]`) are cut: the outcome is then `partially-granted`. Every step is
//! a log entry: `approved`, `decided`, `closed` (a rejected request is closed at once).

use clover_model::Action;
use clover_policy::pack::PackResource;
use clover_policy::{Decision, Outcome};
use serde::Deserialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::boundary::Boundary;
use crate::government::book::{self, GovernmentRequest};
use crate::pipeline::Caller;
use crate::problem::ApiError;

/// What the legal team decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    /// Grant it, as far as policy and the instrument allow.
    Grant,
    /// Reject it (the legal team's own judgement: the policies then name no rule).
    Reject,
}

/// The register, oldest first, after ending the gags and holds whose time has come.
pub async fn list(boundary: &Boundary, caller: &Caller) -> Result<Vec<GovernmentRequest>, ApiError> {
    book::gate(boundary, caller, "the list").await?;
    crate::government::holds::sweep(boundary).await?;
    let rows = boundary.store().government_requests().await.map_err(ApiError::internal)?;
    rows.iter().map(|row| Ok(GovernmentRequest::of(row, &book::parse(row)?))).collect()
}

/// Approves request `id` for `caller` (another person than the one who registered it, once).
pub async fn approve(boundary: &Boundary, caller: &Caller, id: &str) -> Result<GovernmentRequest, ApiError> {
    let decision = book::gate(boundary, caller, id).await?;
    let (row, mut details) = book::load(boundary, id).await?;
    if row.state != book::RECEIVED {
        return Err(ApiError::Conflict(format!(
            "request {id} is {}: only a request not yet decided is approved",
            row.state
        )));
    }
    let me = caller.principal.id.to_string();
    if details.registered_by == me {
        return Err(ApiError::Conflict(format!(
            "request {id} was registered by you: an approval is another person's (four eyes)"
        )));
    }
    if details.approvals.contains(&me) {
        return Err(ApiError::Conflict(format!("you approved request {id} already")));
    }
    details.approvals.push(me);
    let mut facts = book::facts(id, "approved", &details);
    facts.count = u64::try_from(details.approvals.len()).unwrap_or(u64::MAX);
    let index =
        book::append(boundary, Some(caller), Action::HandleGovernmentRequests, Some(&decision), facts, None).await?;
    let row = book::save(boundary, &row, &details, &row.state, index).await?;
    tracing::info!(request = %id, approvals = details.approvals.len(), "government request approved");
    Ok(GovernmentRequest::of(&row, &details))
}

/// Whether any subject the request names is a minor (one whose age cannot be read counts as
/// one; one who is not registered has no data and does not count).
async fn names_a_minor(boundary: &Boundary, details: &book::Details) -> Result<bool, ApiError> {
    for subject in details.subject_ids() {
        if let Some(row) = boundary.store().subject(&subject).await.map_err(ApiError::internal)?
            && crate::pipeline::metadata::subject_minor(boundary, &row).await
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Decides request `id` for `caller`: `answer` grant is decided by policy on the request's
/// facts (a refusal rejects it) and cut to the categories its instrument may obtain; `reject`
/// rejects it. A rejected request is closed at once.
pub async fn decide(
    boundary: &Boundary,
    caller: &Caller,
    id: &str,
    answer: Answer,
) -> Result<GovernmentRequest, ApiError> {
    book::gate(boundary, caller, id).await?;
    let (row, mut details) = book::load(boundary, id).await?;
    if row.state != book::RECEIVED {
        return Err(ApiError::Conflict(format!("request {id} is {}: it was decided already", row.state)));
    }
    let government = &boundary.config().government;
    let asked = details.asked_categories(boundary);
    let (outcome, decision, granted) = match answer {
        Answer::Reject => {
            let decision = Decision {
                outcome: Outcome::Deny,
                policies: vec!["rejected-by-the-legal-team".to_owned()],
                reason: "the legal team rejected the request".to_owned(),
            };
            ("rejected", decision, Vec::new())
        }
        Answer::Grant => {
            let mut request = crate::pipeline::decision::boundary_request(
                boundary.config(),
                &caller.principal,
                &caller.origin,
                Action::AnswerGovernmentRequest,
            );
            request.resource = PackResource::GovernmentRequest {
                id: id.to_owned(),
                country: details.country.clone(),
                instrument: details.instrument.as_str().to_owned(),
                recognised: government.recognises(&details.country, details.instrument),
                approvals: i64::try_from(details.approvals.len()).unwrap_or(i64::MAX),
                minors: names_a_minor(boundary, &details).await?,
            };
            let decision = boundary.decide(&request);
            if decision.effect() != "allow" {
                ("rejected", decision, Vec::new())
            } else {
                let granted: Vec<String> = match government.categories(details.instrument) {
                    Some(allowed) => {
                        asked.iter().filter(|c| allowed.iter().any(|a| a.as_str() == *c)).cloned().collect()
                    }
                    None => asked.clone(),
                };
                if granted.is_empty() {
                    let decision = Decision {
                        outcome: Outcome::Deny,
                        policies: vec!["instrument-allows-no-category-asked".to_owned()],
                        reason: format!("{} may obtain none of the categories asked for", details.instrument),
                    };
                    ("rejected", decision, granted)
                } else if granted.len() < asked.len() {
                    ("partially-granted", decision, granted)
                } else {
                    ("granted", decision, granted)
                }
            }
        }
    };
    details.outcome = Some(outcome.to_owned());
    details.policies = decision.policies.clone();
    details.granted_categories = granted.clone();
    details.decided_at = Some(OffsetDateTime::now_utc().unix_timestamp());
    let sealed = details.gagged(OffsetDateTime::now_utc().unix_timestamp());
    let mut facts = book::facts(id, "decided", &details);
    facts.outcome = Some(outcome.to_owned());
    facts.count = if sealed { 0 } else { u64::try_from(details.subjects.len()).unwrap_or(u64::MAX) };
    facts.categories = if sealed { Vec::new() } else { granted };
    let note = format!("decided by {} ({})", caller.principal.id, decision.reason);
    // The entry carries the policies that decided the request (the answer's, not the gate's).
    let index =
        book::append(boundary, Some(caller), Action::AnswerGovernmentRequest, Some(&decision), facts, Some(&note))
            .await?;
    let state = match outcome {
        "granted" => book::GRANTED,
        "partially-granted" => book::PARTIALLY_GRANTED,
        _ => book::RECEIVED,
    };
    let mut row = book::save(boundary, &row, &details, state, index).await?;
    tracing::info!(request = %id, outcome, policies = ?decision.policies, "government request decided");
    if outcome == "rejected" {
        row = close_row(boundary, caller, row, details.clone()).await?;
    }
    Ok(GovernmentRequest::of(&row, &details))
}

/// Closes request `id` for `caller`: nothing more is disclosed under it.
pub async fn close(boundary: &Boundary, caller: &Caller, id: &str) -> Result<GovernmentRequest, ApiError> {
    book::gate(boundary, caller, id).await?;
    let (row, details) = book::load(boundary, id).await?;
    if row.state == book::CLOSED {
        return Err(ApiError::Conflict(format!("request {id} is closed already")));
    }
    let row = close_row(boundary, caller, row, details.clone()).await?;
    Ok(GovernmentRequest::of(&row, &details))
}

/// Logs a request's closing (with how many records were disclosed under it) and stores it.
async fn close_row(
    boundary: &Boundary,
    caller: &Caller,
    row: clover_store::GovernmentRequestRow,
    details: book::Details,
) -> Result<clover_store::GovernmentRequestRow, ApiError> {
    let mut facts = book::facts(&row.request_id, "closed", &details);
    facts.count = details.disclosed_records;
    facts.outcome = details.outcome.clone();
    let index = book::append(boundary, Some(caller), Action::HandleGovernmentRequests, None, facts, None).await?;
    tracing::info!(request = %row.request_id, "government request closed");
    book::save(boundary, &row, &details, book::CLOSED, index).await
}
