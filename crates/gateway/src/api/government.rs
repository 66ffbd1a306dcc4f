//! `/v1/reports/government-requests`: the public transparency report on requests from
//! authorities, computed from the log.

use std::sync::Arc;

use axum::extract::{Query, State};
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
    let report = crate::government::report(&boundary, period).await?;
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
}

/// Registers a request from an authority as it is received: decided by policy (the legal team,
/// in the region), its receipt logged at once with its public facts (country, instrument,
/// counts, deadline; only a commitment while a gag holds), and, for a preservation order, a
/// legal hold placed on each subject it names (their erasure is then answered `held`).
#[utoipa::path(post, path = "/v1/government-requests", tag = "government-requests",
    request_body = RegisterBody,
    responses(
        (status = CREATED, description = "Registered", body = crate::government::Registered),
        (status = FORBIDDEN, description = "`forbidden`: not the legal team, or not in the region; the refusal is logged", body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, description = "`invalid-body`: an unknown field, a country that is not two lowercase letters, an unknown instrument or category, no subjects (or over 1,000) or one of the wrong form, a document hash that is not 64 hex digits, a gag that ends before now, an authority or legal basis empty or over 500 characters", body = Problem, content_type = "application/problem+json"),
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
    let gag_until = match &body.gag_until {
        None => None,
        Some(text) => {
            let until =
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(|_| {
                    invalid(format!(
                        "gag_until {:?} is not an RFC 3339 time",
                        text.chars().take(64).collect::<String>()
                    ))
                })?;
            if until <= time::OffsetDateTime::now_utc() {
                return Err(invalid("gag_until is not in the future: a gag ends after the request".to_owned()));
            }
            Some(until)
        }
    };
    let asked = crate::government::Asked {
        authority,
        country: body.country,
        instrument: body.instrument,
        legal_basis,
        categories: body.categories,
        subjects,
        document_sha256: body.document_sha256,
        gag_until,
    };
    let registered = crate::government::register(&boundary, &caller, asked).await?;
    let decision = registered.decision.clone();
    Ok(crate::api::answer::answered(&decision, StatusCode::CREATED, registered))
}
