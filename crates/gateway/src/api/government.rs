//! Requests from authorities: `/v1/government-requests` (the legal team's register: register,
//! list, approve, decide, disclose, close, extend or release holds) and
//! `/v1/reports/government-requests` (the public transparency report, computed from the log).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::boundary::Boundary;
use crate::problem::{ApiError, Problem};

/// Which half-year.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// `YYYY-H1` (January to June) or `YYYY-H2` (July to December), UTC.
    #[param(pattern = "^2[0-9]{3}-H[12]$", example = "2026-H2")]
    pub period: String,
}

/// The public transparency report on government requests for a half-year: per country and
/// instrument, the requests received, the accounts they named, those with some data disclosed
/// (count and share), rejected, answered by their deadline, still open, and the median time to
/// answer; requests under a gag on a line of their own, without country, until it ends.
///
/// Computed from the log's entries under its signed checkpoint alone (no token needed: it holds
/// no personal data); `clover_requests::Builder` computes the same from the verified log. CSV
/// with `Accept: text/csv`.
#[utoipa::path(get, path = "/v1/reports/government-requests", tag = "government-requests", security(()),
    params(ReportQuery),
    responses(
        (status = OK, description = "The report (JSON, or CSV with `Accept: text/csv`)",
            content((clover_requests::Report = "application/json"), (String = "text/csv"))),
        (status = BAD_REQUEST, description = "`invalid-query`: no period, or one not of the form YYYY-H1 or YYYY-H2", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn report(
    State(boundary): State<Arc<Boundary>>,
    headers: HeaderMap,
    query: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidQuery(e.body_text()))?;
    let period = query.period.parse().map_err(|e: clover_requests::BadPeriod| ApiError::InvalidQuery(e.to_string()))?;
    let report = crate::government::report::report(&boundary, period).await?;
    let csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.split(',').any(|t| t.trim().starts_with("text/csv")));
    if csv {
        let mut response = (StatusCode::OK, report.to_csv()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
        return Ok(response);
    }
    Ok((StatusCode::OK, axum::Json(report)).into_response())
}

/// A request from an authority, as the legal team registers it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// The authority, as it names itself (kept in the region, never public).
    #[schema(example = "Staatsanwaltschaft Berlin")]
    pub authority: String,
    /// Its country (ISO 3166-1 alpha-2, lowercase).
    #[schema(example = "de", pattern = "^[a-z]{2}$")]
    pub country: String,
    /// The instrument.
    #[schema(value_type = String, example = "production-order")]
    pub instrument: clover_requests::Instrument,
    /// The legal basis cited (kept in the region).
    pub legal_basis: String,
    /// The categories asked for (configured ones).
    pub categories: Vec<String>,
    /// The subjects asked for (at least one).
    pub subjects: Vec<String>,
    /// The SHA-256 of the document (the document stays with the legal team).
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub document_sha256: String,
    /// Until when the authority forbids disclosing the request (RFC 3339); none without a gag.
    #[schema(example = "2027-06-30T00:00:00Z")]
    pub gag_until: Option<String>,
    /// The authority's own deadline (RFC 3339), when it sets one shorter than the instrument's;
    /// the earlier of the two holds.
    #[schema(example = "2026-12-10T12:00:00Z")]
    pub deadline: Option<String>,
}

/// Registers a request from an authority as it is received: decided by policy (the legal team,
/// in the region), its receipt logged at once with its public facts (country, instrument,
/// counts, deadline; only a commitment while a gag holds), and, for a preservation order, a
/// legal hold placed on each subject it names (their erasure is then answered `held`).
#[utoipa::path(post, path = "/v1/government-requests", tag = "government-requests",
    request_body = RegisterBody,
    responses(
        (status = CREATED, description = "Registered", body = crate::government::register::Registered),
        (status = FORBIDDEN, description = "`forbidden`: not the legal team, or not in the region; the refusal is logged", body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, description = "`invalid-body`: an unknown field, a country that is not two lowercase letters, an unknown instrument or category, no subjects (or over 1,000) or one of the wrong form, a document hash that is not 64 hex digits, a gag that ends before now, a deadline in the past, an authority or legal basis empty or over 500 characters", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn register_request(
    State(boundary): State<Arc<Boundary>>,
    caller: crate::pipeline::Caller,
    crate::problem::Body(body): crate::problem::Body<RegisterBody>,
) -> Result<Response, ApiError> {
    let invalid = |detail: String| ApiError::InvalidBody(detail);
    let text = |name: &str, value: &str| {
        if value.trim().is_empty() || value.chars().count() > 500 {
            Err(invalid(format!("{name} must be 1 to 500 characters")))
        } else {
            Ok(value.to_owned())
        }
    };
    let authority = text("authority", &body.authority)?;
    let legal_basis = text("legal_basis", &body.legal_basis)?;
    if body.country.len() != 2 || !body.country.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(invalid(format!(
            "country {:?} is not an ISO 3166-1 alpha-2 code in lowercase, such as \"de\"",
            body.country.chars().take(16).collect::<String>()
        )));
    }
    for category in &body.categories {
        if !category.parse::<clover_model::Category>().is_ok_and(|c| boundary.has_category(&c)) {
            return Err(invalid(format!(
                "category {:?} is not configured (configured: {})",
                category.chars().take(64).collect::<String>(),
                boundary.category_names().join(", ")
            )));
        }
    }
    if body.subjects.is_empty() || body.subjects.len() > 1_000 {
        return Err(invalid("subjects must name 1 to 1,000 subjects".to_owned()));
    }
    let subjects = body
        .subjects
        .iter()
        .map(|s| clover_model::SubjectId::new(s.clone()).map_err(|e| invalid(format!("subjects: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if body.document_sha256.len() != 64 || !body.document_sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(invalid("document_sha256 must be 64 lowercase hex digits".to_owned()));
    }
    let future = |name: &str, text: &Option<String>, why: &str| match text {
        None => Ok(None),
        Some(text) => {
            let at =
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(|_| {
                    invalid(format!("{name} {:?} is not an RFC 3339 time", text.chars().take(64).collect::<String>()))
                })?;
            if at <= time::OffsetDateTime::now_utc() {
                return Err(invalid(format!("{name} is not in the future: {why}")));
            }
            Ok(Some(at))
        }
    };
    let gag_until = future("gag_until", &body.gag_until, "a gag ends after the request")?;
    let deadline = future("deadline", &body.deadline, "a deadline in the past cannot be met")?;
    let asked = crate::government::register::Asked {
        authority,
        country: body.country,
        instrument: body.instrument,
        legal_basis,
        categories: body.categories,
        subjects,
        document_sha256: body.document_sha256,
        gag_until,
        deadline,
    };
    let registered = crate::government::register::register(&boundary, &caller, asked).await?;
    let decision = registered.decision.clone();
    Ok(crate::api::answer::answered(&decision, StatusCode::CREATED, registered))
}

/// The register, as the legal team lists it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct GovernmentRegister {
    /// Every registered request, oldest first.
    pub requests: Vec<crate::government::book::GovernmentRequest>,
}

/// A request, after a step.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct GovernmentRequestStep {
    /// The request.
    pub request: crate::government::book::GovernmentRequest,
}

/// Checks a request id's form: `gr-` and 24 lowercase hex digits.
fn request_id(id: &str) -> Result<(), ApiError> {
    if id.len() == 27 && id.starts_with("gr-") && id.bytes().skip(3).all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Ok(());
    }
    Err(ApiError::InvalidId(clover_model::InvalidId {
        kind: "government request id",
        value: id.chars().take(64).collect(),
        rule: "gr- and 24 lowercase hex digits",
    }))
}

/// Lists the register of government requests: each with its state, deadline (and whether it
/// passed), gag, approvals, outcome, disclosures and hold. For the legal team (role `legal`, in
/// the region). Gags and holds whose time has come are ended first (logged).
#[utoipa::path(get, path = "/v1/government-requests", tag = "government-requests",
    responses(
        (status = OK, description = "The register", body = GovernmentRegister),
        (status = FORBIDDEN, description = "`forbidden`: not the legal team, or not in the region; the refusal is logged", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_government_requests(
    State(boundary): State<Arc<Boundary>>,
    caller: crate::pipeline::Caller,
) -> Result<Response, ApiError> {
    let requests = crate::government::answer::list(&boundary, &caller).await?;
    Ok((StatusCode::OK, axum::Json(GovernmentRegister { requests })).into_response())
}

/// Approves a request not yet decided: another person of the legal team than the one who
/// registered it, once each (an emergency needs two approvals, a request naming a minor one
/// more). Logged (`approved`).
#[utoipa::path(post, path = "/v1/government-requests/{government_request_id}/approvals", tag = "government-requests",
    params(("government_request_id" = String, Path, description = "The request's id (`gr-` and 24 hex digits)")),
    responses(
        (status = OK, description = "Approved", body = GovernmentRequestStep),
        (status = BAD_REQUEST, description = "`invalid-id`: not `gr-` and 24 lowercase hex digits", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: not the legal team, or not in the region (decided before the id is looked up); logged", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "`not-found`: no such request", body = Problem, content_type = "application/problem+json"),
        (status = CONFLICT, description = "`conflict`: decided already, registered by the caller, or approved by them already", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn approve_government_request(
    State(boundary): State<Arc<Boundary>>,
    caller: crate::pipeline::Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    request_id(&id)?;
    let request = crate::government::answer::approve(&boundary, &caller, &id).await?;
    Ok((StatusCode::OK, axum::Json(GovernmentRequestStep { request })).into_response())
}

/// What the legal team decides.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideBody {
    /// `grant` (as far as policy and the instrument allow) or `reject`.
    pub answer: crate::government::answer::Answer,
}

/// Decides a request: `grant` is decided by policy on the request's facts (a country and
/// instrument the region recognises, two approvals for an emergency, one more for a minor's
/// data; a refusal rejects it, with the policies) and cut to the categories the instrument may
/// obtain (`partially-granted`); `reject` rejects it. Logged (`decided`; a rejected request is
/// then `closed`).
#[utoipa::path(post, path = "/v1/government-requests/{government_request_id}/decision", tag = "government-requests",
    params(("government_request_id" = String, Path, description = "The request's id (`gr-` and 24 hex digits)")),
    request_body = DecideBody,
    responses(
        (status = OK, description = "Decided: the outcome and the policies are in the request", body = GovernmentRequestStep),
        (status = BAD_REQUEST, description = "`invalid-id`: not `gr-` and 24 lowercase hex digits", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: not the legal team, or not in the region; logged", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "`not-found`: no such request", body = Problem, content_type = "application/problem+json"),
        (status = CONFLICT, description = "`conflict`: decided already", body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, description = "`invalid-body`: an unknown field, or an answer that is not `grant` or `reject`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn decide_government_request(
    State(boundary): State<Arc<Boundary>>,
    caller: crate::pipeline::Caller,
    Path(id): Path<String>,
    crate::problem::Body(body): crate::problem::Body<DecideBody>,
) -> Result<Response, ApiError> {
    request_id(&id)?;
    let request = crate::government::answer::decide(&boundary, &caller, &id, body.answer).await?;
    Ok((StatusCode::OK, axum::Json(GovernmentRequestStep { request })).into_response())
}

/// Discloses what a granted request grants, through the read path: each record of a granted
/// category of each subject it names opened under a log entry of its own (purpose `legal`, the
/// request's id in its annex), in a ZIP with a signed manifest (`manifest.txt`). Logged
/// (`disclosed`, with the count of records). Refused (and logged) for a request not granted,
/// rejected, closed, past its deadline, or a preservation order.
#[utoipa::path(post, path = "/v1/government-requests/{government_request_id}/disclosures", tag = "government-requests",
    params(("government_request_id" = String, Path, description = "The request's id (`gr-` and 24 hex digits)")),
    responses(
        (status = OK, description = "The package (`application/zip`). Headers: `X-Clover-Disclosure-Records`, `X-Clover-Disclosure-Sha256` (of the body), `X-Clover-Log-Index` (the `disclosed` entry)", content_type = "application/zip", body = Vec<u8>),
        (status = BAD_REQUEST, description = "`invalid-id`: not `gr-` and 24 lowercase hex digits", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: not the legal team, or not in the region; logged", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "`not-found`: no such request", body = Problem, content_type = "application/problem+json"),
        (status = CONFLICT, description = "`not-disclosable`: not granted, rejected, closed, past its deadline, or a preservation order; logged at `log_index`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn disclose_government_request(
    State(boundary): State<Arc<Boundary>>,
    caller: crate::pipeline::Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    use axum::http::header;
    request_id(&id)?;
    let disclosure = crate::government::disclosure::disclose(&boundary, &caller, &id).await?;
    let bytes = std::fs::read(disclosure.file.path()).map_err(ApiError::internal)?;
    drop(disclosure.file);
    let mut response = (StatusCode::OK, bytes).into_response();
    let headers = response.headers_mut();
    let value = |v: String| HeaderValue::from_str(&v).map_err(ApiError::internal);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/zip"));
    headers.insert(header::CONTENT_DISPOSITION, value(format!("attachment; filename=\"clover-disclosure-{id}.zip\""))?);
    headers.insert("x-clover-disclosure-records", value(disclosure.records.to_string())?);
    headers.insert("x-clover-disclosure-sha256", value(disclosure.sha256.clone())?);
    headers.insert("x-clover-log-index", value(disclosure.log_index.to_string())?);
    Ok(response)
}

/// Closes a request: nothing more is disclosed under it. Logged (`closed`, with how many
/// records were disclosed under it).
#[utoipa::path(post, path = "/v1/government-requests/{government_request_id}/close", tag = "government-requests",
    params(("government_request_id" = String, Path, description = "The request's id (`gr-` and 24 hex digits)")),
    responses(
        (status = OK, description = "Closed", body = GovernmentRequestStep),
        (status = BAD_REQUEST, description = "`invalid-id`: not `gr-` and 24 lowercase hex digits", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: not the legal team, or not in the region; logged", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "`not-found`: no such request", body = Problem, content_type = "application/problem+json"),
        (status = CONFLICT, description = "`conflict`: closed already", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn close_government_request(
    State(boundary): State<Arc<Boundary>>,
    caller: crate::pipeline::Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    request_id(&id)?;
    let request = crate::government::answer::close(&boundary, &caller, &id).await?;
    Ok((StatusCode::OK, axum::Json(GovernmentRequestStep { request })).into_response())
}

/// What is done to a preservation order's holds.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldBody {
    /// `extend` (by `[government] hold_extension_days`) or `release`.
    pub change: crate::government::holds::HoldChange,
}

/// Extends or releases a preservation order's legal holds. Released (here, or when their
/// period ends), the erasures they held back are carried out and their requests fulfilled.
/// Logged (`hold-extended`, `hold-released`).
#[utoipa::path(post, path = "/v1/government-requests/{government_request_id}/hold", tag = "government-requests",
    params(("government_request_id" = String, Path, description = "The request's id (`gr-` and 24 hex digits)")),
    request_body = HoldBody,
    responses(
        (status = OK, description = "Changed", body = GovernmentRequestStep),
        (status = BAD_REQUEST, description = "`invalid-id`: not `gr-` and 24 lowercase hex digits", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: not the legal team, or not in the region; logged", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "`not-found`: no such request", body = Problem, content_type = "application/problem+json"),
        (status = CONFLICT, description = "`conflict`: the request holds nothing (not a preservation order, or released)", body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, description = "`invalid-body`: an unknown field, or a change that is not `extend` or `release`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn change_government_hold(
    State(boundary): State<Arc<Boundary>>,
    caller: crate::pipeline::Caller,
    Path(id): Path<String>,
    crate::problem::Body(body): crate::problem::Body<HoldBody>,
) -> Result<Response, ApiError> {
    request_id(&id)?;
    let request = crate::government::holds::change(&boundary, &caller, &id, body.change).await?;
    Ok((StatusCode::OK, axum::Json(GovernmentRequestStep { request })).into_response())
}
