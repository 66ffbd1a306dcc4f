//! `/v1/transfers…`: record transfers out of the region (`crate::transfers` does the work;
//! `clover export` calls these), and `/v1/register/transfers`, the public transfer register.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clover_egress::{Manifest, RegisterRow};
use clover_policy::Decision;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use crate::api::answer::answered;
use crate::boundary::Boundary;
use crate::pipeline::Caller;
use crate::problem::{ApiError, Body, Problem};
use crate::transfers::{self, Asked};

/// A record transfer asked for.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    /// A configured destination (`[[destinations]]`).
    #[schema(example = "us-partners", pattern = "^[a-z0-9-]{1,64}$")]
    pub destination: String,
    /// The purpose: one the destination may receive, which the caller may declare.
    #[schema(example = "analytics", min_length = 1, max_length = 64)]
    pub purpose: String,
    /// The categories to send (1 to 16), each covered by a transfer rule.
    #[schema(example = json!(["profile"]), min_items = 1, max_items = 16)]
    pub categories: Vec<String>,
    /// Records created at or after this time (RFC 3339).
    #[schema(example = "2026-01-01T00:00:00Z", format = DateTime)]
    pub since: Option<String>,
    /// Records created before this time (RFC 3339); never after the transfer is made.
    #[schema(example = "2026-12-01T00:00:00Z", format = DateTime)]
    pub until: Option<String>,
}

/// An aggregate release asked for.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateBody {
    /// A configured destination with a privacy budget for the purpose.
    #[schema(example = "us-partners", pattern = "^[a-z0-9-]{1,64}$")]
    pub destination: String,
    /// The purpose.
    #[schema(example = "analytics", min_length = 1, max_length = 64)]
    pub purpose: String,
    /// The categories counted (1 to 16), each covered by a transfer rule.
    #[schema(example = json!(["profile"]), min_items = 1, max_items = 16)]
    pub categories: Vec<String>,
    /// The grouping: `category`, `age-band`, `country`, `day` (none: one cell).
    #[serde(default)]
    pub group_by: Vec<crate::aggregates::Dimension>,
    /// The countries of the grid, with `country` (1 to 300).
    #[serde(default)]
    #[schema(example = json!(["IE", "NO"]))]
    pub countries: Vec<String>,
    /// Records created at or after this time (RFC 3339); with `day`, the grid's first day.
    #[schema(format = DateTime)]
    pub since: Option<String>,
    /// Records created before this time (RFC 3339); with `day`, the day after the grid's last.
    #[schema(format = DateTime)]
    pub until: Option<String>,
    /// `count` (records), or `sum` of `field` clamped to `lower..=upper`.
    #[schema(example = "count", pattern = "^(count|sum)$")]
    pub measure: String,
    /// With `sum`: the numeric field summed (kept by its category's rule).
    pub field: Option<String>,
    /// With `sum`: the clamp's lower end.
    pub lower: Option<i64>,
    /// With `sum`: the clamp's upper end.
    pub upper: Option<i64>,
    /// Records per subject counted at most (1 to 100; 1 when absent): the privacy unit is a
    /// subject.
    #[schema(minimum = 1, maximum = 100)]
    pub bound: Option<u32>,
    /// The epsilon to spend (above 0, at most 100, to a millionth).
    #[schema(example = 0.5, exclusive_minimum = 0.0, maximum = 100.0)]
    pub epsilon: f64,
}

/// A transfer made.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferAnswer {
    /// The transfer's id: its records stream from `/v1/transfers/{id}/records`.
    pub transfer: String,
    /// The manifest: what will leave, to where, on what basis, treated how, and how much.
    pub manifest: Manifest,
    /// The manifest as a C2SP signed note under the log's key.
    pub note: String,
    /// The log entry that holds the manifest's SHA-256.
    pub log_index: u64,
    /// The decision that allowed it.
    #[schema(value_type = Object)]
    pub decision: Decision,
}

/// A transfer as its maker sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferStatus {
    /// The transfer's id.
    pub transfer: String,
    /// `ready` (not streamed), `streaming`, `sent` or `interrupted`.
    pub state: String,
    /// Records sent.
    pub sent: u64,
    /// The SHA-256 (hex) of the bytes sent, once the stream ended.
    pub sha256: Option<String>,
    /// The manifest.
    pub manifest: Manifest,
    /// The manifest as a signed note.
    pub note: String,
    /// The log entry of the manifest.
    pub log_index: u64,
}

/// The public transfer register.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegisterAnswer {
    /// The region whose transfers these are.
    pub region: String,
    /// The size of the signed checkpoint the register is computed over.
    pub log_size: u64,
    /// The rows.
    pub rows: Vec<RegisterRow>,
}

fn time_of(which: &str, text: Option<String>) -> Result<Option<OffsetDateTime>, ApiError> {
    text.map(|t| {
        OffsetDateTime::parse(&t, &Rfc3339)
            .map_err(|_| ApiError::InvalidBody(format!("{which} {t:?} is not an RFC 3339 time (2026-01-01T00:00:00Z)")))
    })
    .transpose()
}

const ID: &str = "The transfer's id (a UUID)";

/// Makes a record transfer to a configured destination.
///
/// Decided by policy (the action `export`, once per category, with the destination's legal
/// basis and purposes); logged; the records counted (minors', erased subjects' and those held
/// back by k-anonymity left out); the manifest signed and logged, all before any record leaves.
#[utoipa::path(post, path = "/v1/transfers", tag = "transfers",
    request_body = TransferBody,
    responses(
        (status = CREATED, description = "Made: its manifest is signed and logged", body = TransferAnswer),
        (status = UNPROCESSABLE_ENTITY, description = "`unknown-category`, `no-transfer-rule`, `invalid-body` (a time range upside down, a time not RFC 3339, no category or too many): refused and logged (`log_index`)", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: denied by policy (a destination unknown or without a legal basis, a purpose it may not receive or the caller may not declare, a sensitive category, a caller outside the region); the body carries the decision and its log index", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_transfer(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Body(body): Body<TransferBody>,
) -> Result<Response, ApiError> {
    let asked = Asked {
        destination: body.destination,
        purpose: body.purpose,
        categories: body.categories,
        since: time_of("since", body.since)?,
        until: time_of("until", body.until)?,
    };
    let created = transfers::create(&boundary, &caller, asked).await?;
    let decision = created.decision;
    Ok(answered(
        &decision,
        StatusCode::CREATED,
        TransferAnswer {
            transfer: created.manifest.transfer.clone(),
            manifest: created.manifest,
            note: created.note,
            log_index: created.log_index,
            decision: decision.clone(),
        },
    ))
}

/// Releases counts or clamped sums over a grid of groups, with differential privacy.
///
/// Decided like a record transfer (the action `export`, per category), its epsilon spent from
/// the budget of (destination, purpose) at once, before any record is read; each cell gets exact
/// discrete Laplace noise of scale sensitivity / epsilon. The answer and the log entry give the
/// epsilon spent and remaining (docs/egress.md: the privacy unit, the mechanism, the accounting).
#[utoipa::path(post, path = "/v1/transfers/aggregates", tag = "transfers",
    request_body = AggregateBody,
    responses(
        (status = CREATED, description = "Released and logged", body = crate::aggregates::Release),
        (status = CONFLICT, description = "`budget-exhausted`: the release would exceed the privacy budget of (destination, purpose); refused and logged", body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, description = "`unknown-category`, `no-transfer-rule`, `invalid-body` (a grid too large, a dimension without its domain, an epsilon out of range, a clamp upside down): refused and logged", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: denied by policy, as a record transfer", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn release_aggregate(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Body(body): Body<AggregateBody>,
) -> Result<Response, ApiError> {
    let measure = match body.measure.as_str() {
        "count" => crate::aggregates::Measure::Count,
        "sum" => match (body.field, body.lower, body.upper) {
            (Some(field), Some(lower), Some(upper)) => crate::aggregates::Measure::Sum { field, lower, upper },
            _ => return Err(ApiError::InvalidBody("measure sum takes field, lower and upper".to_owned())),
        },
        other => return Err(ApiError::InvalidBody(format!("measure {other:?} is not count or sum"))),
    };
    let asked = crate::aggregates::AggregateAsked {
        asked: Asked {
            destination: body.destination,
            purpose: body.purpose,
            categories: body.categories,
            since: time_of("since", body.since)?,
            until: time_of("until", body.until)?,
        },
        group_by: body.group_by,
        countries: body.countries,
        measure,
        bound: body.bound.unwrap_or(1),
        epsilon: body.epsilon,
    };
    let release = crate::aggregates::release(&boundary, &caller, asked).await?;
    let decision = release.decision.clone();
    Ok(answered(&decision, StatusCode::CREATED, release))
}

/// A transfer's manifest and how far it went, for the principal who made it.
#[utoipa::path(get, path = "/v1/transfers/{id}", tag = "transfers",
    params(("id" = String, Path, description = ID)),
    responses(
        (status = OK, description = "The transfer", body = TransferStatus),
        (status = NOT_FOUND, description = "`not-found`: no such transfer of the caller's (whether another's exists is not said)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_transfer(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let status = transfers::status(&boundary, &caller, &id).await?;
    let row = status.row;
    Ok((
        StatusCode::OK,
        axum::Json(TransferStatus {
            transfer: row.transfer_id,
            state: row.state,
            sent: row.sent,
            sha256: row.sha256,
            manifest: status.manifest,
            note: row.manifest,
            log_index: row.log_index,
        }),
    )
        .into_response())
}

/// Streams a transfer's records as NDJSON, once.
///
/// Decided again for the caller (the transfer's maker, from the region), its start logged; each
/// record as the custodian treated it (tokens, FF1, generalisations; unnamed fields dropped),
/// those of a class of quasi-identifiers with fewer than k records held back. The stream's end,
/// or its interruption, is logged with the count and the SHA-256 of the bytes sent.
#[utoipa::path(get, path = "/v1/transfers/{id}/records", tag = "transfers",
    params(("id" = String, Path, description = ID)),
    responses(
        (status = OK, description = "One JSON object per line: `subject` and `record` (tokens), `category`, `fields`", content_type = "application/x-ndjson", body = String),
        (status = NOT_FOUND, description = "`not-found`: no such transfer of the caller's", body = Problem, content_type = "application/problem+json"),
        (status = CONFLICT, description = "`conflict`: streamed already (a transfer is sent once)", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: denied by policy now (from outside the region, say)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn stream_records(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let chunks = transfers::stream(boundary, &caller, &id).await?;
    let stream =
        futures_util::stream::unfold(
            chunks,
            |mut chunks| async move { chunks.recv().await.map(|chunk| (chunk, chunks)) },
        );
    let mut response = axum::body::Body::from_stream(stream).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(response)
}

/// The public transfer register: every transfer out of the region and every aggregate release,
/// per month, destination, region, legal basis, purpose, treatment and categories, with the log
/// indexes behind each row. Computed from the log's entries under its signed checkpoint; no
/// personal data. CSV with `Accept: text/csv`.
#[utoipa::path(get, path = "/v1/register/transfers", tag = "transfers", security(()),
    responses(
        (status = OK, description = "The register (JSON, or CSV with `Accept: text/csv`)",
            content((RegisterAnswer = "application/json"), (String = "text/csv"))),
    ))]
pub async fn register(State(boundary): State<Arc<Boundary>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let (rows, log_size) = transfers::register(&boundary).await?;
    let csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.split(',').any(|t| t.trim().starts_with("text/csv")));
    if csv {
        let body = clover_egress::register::to_csv(&rows).map_err(ApiError::internal)?;
        let mut response = (StatusCode::OK, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
        return Ok(response);
    }
    Ok((StatusCode::OK, axum::Json(RegisterAnswer { region: boundary.region().to_string(), log_size, rows }))
        .into_response())
}
