//! `/v1/requests/subjects`: the requests of data subjects that need a person, for the region's
//! privacy team: listed with their states and deadlines, and moved by hand.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use clover_event::EventKind;
use clover_model::Action;
use clover_policy::Decision;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::answer::answered;
use crate::boundary::Boundary;
use crate::pipeline::Caller;
use crate::problem::{ApiError, Body, Problem};
use crate::subjects::requests::{self, RequestState, SubjectRequest};

/// Which requests.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RequestsQuery {
    /// Only those in this state: `open`, `in_progress`, `fulfilled`, `denied` or `expired`.
    #[param(inline)]
    pub state: Option<RequestState>,
}

/// The requests.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestsAnswer {
    /// Oldest first.
    pub requests: Vec<SubjectRequest>,
    /// The decision that allowed the listing.
    #[schema(value_type = Object)]
    pub decision: Decision,
    /// The log entry of the decision.
    pub log_index: u64,
}

/// Decides (and logs) the privacy team's handling of requests.
async fn decide(boundary: &Boundary, caller: &Caller, what: &str) -> Result<(Decision, u64), ApiError> {
    let request = crate::pipeline::decision::boundary_request(
        boundary.config(),
        &caller.principal,
        &caller.origin,
        Action::HandleRequests,
    );
    let decision = boundary.decide(&request);
    let allowed = decision.effect() == "allow";
    let log_index = crate::pipeline::events::log_without_data(
        boundary,
        EventKind::SubjectRequest,
        Some(caller),
        Action::HandleRequests.as_str(),
        Some(&decision),
        format!("{what} {}", if allowed { "allowed" } else { "refused" }),
        None,
    )
    .await?;
    if !allowed {
        tracing::warn!(principal = %caller.principal.id, log_index, "handling subjects' requests refused");
        return Err(ApiError::Forbidden { decision, log_index });
    }
    Ok((decision, log_index))
}

/// Lists the requests of data subjects that need a person, with their states and deadlines.
///
/// For the region's privacy team (role `privacy`, in the region). An open or in-progress request
/// past its deadline is moved to `expired` (and logged) as it is listed.
#[utoipa::path(get, path = "/v1/requests/subjects", tag = "requests", params(RequestsQuery),
    responses(
        (status = OK, description = "The requests", body = RequestsAnswer),
        (status = BAD_REQUEST, description = "`invalid-query`: an unknown parameter, or a state that is not one of the five", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: denied by policy; the body carries the decision and its log index", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_requests(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    query: Result<Query<RequestsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidQuery(e.body_text()))?;
    let state = query.state;
    let (decision, log_index) = decide(&boundary, &caller, "listing subjects' requests").await?;
    let listed = requests::list(&boundary, state).await?;
    Ok(answered(&decision, StatusCode::OK, RequestsAnswer { requests: listed, decision: decision.clone(), log_index }))
}

/// A request's move.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveBody {
    /// The state to move to: `in_progress`, `fulfilled` or `denied` (forward only).
    #[schema(value_type = String, example = "in_progress")]
    pub state: RequestState,
    /// Extend the deadline by two months (once; GDPR Art. 12(3)), telling the subject why.
    #[serde(default)]
    pub extend: bool,
}

/// A request, after its move.
#[derive(Debug, Serialize, ToSchema)]
pub struct MoveAnswer {
    /// The request.
    pub request: SubjectRequest,
    /// The decision that allowed the move.
    #[schema(value_type = Object)]
    pub decision: Decision,
}

/// Moves a request forward (`open` to `in_progress`, either to `fulfilled` or `denied`), or
/// extends its deadline by two months, once; each move is logged.
#[utoipa::path(post, path = "/v1/requests/subjects/{request_id}", tag = "requests",
    params(("request_id" = String, Path, description = "The request's id (`sr-` and 24 hex digits)")),
    request_body = MoveBody,
    responses(
        (status = OK, description = "Moved", body = MoveAnswer),
        (status = BAD_REQUEST, description = "`invalid-id`: the request id is not `sr-` and 24 lowercase hex digits", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: denied by policy", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "`not-found`: no such request", body = Problem, content_type = "application/problem+json"),
        (status = CONFLICT, description = "`conflict`: the move is not allowed from the request's state (or the deadline was extended already)", body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, description = "`invalid-body`: an unknown field or state", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn move_request(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Path(request_id): Path<String>,
    Body(body): Body<MoveBody>,
) -> Result<Response, ApiError> {
    let missing = || ApiError::NotFound { what: "subject request", id: request_id.chars().take(64).collect() };
    if !(request_id.len() == 27
        && request_id.starts_with("sr-")
        && request_id.bytes().skip(3).all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    {
        return Err(ApiError::InvalidId(clover_model::InvalidId {
            kind: "subject request id",
            value: request_id.chars().take(64).collect(),
            rule: "sr- and 24 lowercase hex digits",
        }));
    }
    let (decision, _) = decide(&boundary, &caller, "moving a subject's request").await?;
    let Some((row, _)) = requests::get(&boundary, &request_id).await? else { return Err(missing()) };
    let moved = requests::advance(&boundary, Some(&caller), row, body.state, body.extend).await?;
    let (_, shown) = requests::get(&boundary, &moved.request_id).await?.ok_or_else(missing)?;
    Ok(answered(&decision, StatusCode::OK, MoveAnswer { request: shown, decision: decision.clone() }))
}
