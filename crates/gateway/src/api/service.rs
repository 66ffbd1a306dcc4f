//! Liveness, metrics and the OpenAPI document.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::boundary::Boundary;
use crate::problem::{ApiError, Problem};

/// The OpenAPI document, serialised once, shared with the handler.
#[derive(Clone)]
pub struct Document(pub Bytes);

/// `/healthz`'s query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HealthQuery {
    /// Answer what the boundary's guarantees rest on (JSON) rather than `ok`.
    #[serde(default)]
    pub detail: bool,
}

/// What the boundary's guarantees rest on, for `/healthz?detail=true`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthDetail {
    /// `ok`.
    pub status: &'static str,
    /// Entries in the log.
    pub log_size: u64,
    /// The size of the checkpoint served at `/log/checkpoint`: the newest every witness
    /// cosigned, or the log's newest with no witness.
    pub served_checkpoint_size: Option<u64>,
    /// The witnesses' names (`[[log.witnesses]]`).
    pub witnesses: Vec<String>,
    /// `embedded` (in this process) or `remote` (`[keys] custodian`).
    pub custodian: &'static str,
    /// What this configuration leaves open against its own operator (docs/security.md,
    /// "Against the operator").
    pub warnings: Vec<&'static str>,
}

/// The warning of a boundary with no witness.
pub const NO_WITNESS_WARNING: &str = "no witnesses are configured ([[log.witnesses]]): nobody outside this boundary \
     attests that the log auditors read is the one keys were released against (a split view is possible)";

/// The warning of a boundary whose custodian runs in its own process.
pub const EMBEDDED_CUSTODIAN_WARNING: &str = "the custodian is embedded in this process: an operator who controls \
     it controls the keys; run `clover custodian serve` apart, with witnesses, for the log to bind the operator";

/// Liveness: the process is up and serving. With `?detail=true`, what its guarantees rest on:
/// the witnesses, where the custodian runs, and what that leaves open.
#[utoipa::path(get, path = "/healthz", tag = "service", security(()), params(HealthQuery),
    responses(
        (status = OK, description = "Serving: `ok`, or with `detail=true` the detail",
            content((String = "text/plain", example = "ok"), (HealthDetail = "application/json"))),
        (status = BAD_REQUEST, description = "`invalid-query`: a parameter unknown or not a boolean", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn healthz(
    State(boundary): State<Arc<Boundary>>,
    query: Result<Query<HealthQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidQuery(e.body_text()))?;
    if !query.detail {
        return Ok("ok".into_response());
    }
    let config = boundary.config();
    let witnesses: Vec<String> = config
        .log
        .witnesses
        .iter()
        .map(|w| clover_tlog::note::VerifierKey::parse(&w.vkey).map_or_else(|_| w.url.clone(), |k| k.name))
        .collect();
    let mut warnings = Vec::new();
    if witnesses.is_empty() {
        warnings.push(NO_WITNESS_WARNING);
    }
    let custodian = if config.keys.custodian.is_some() { "remote" } else { "embedded" };
    if config.keys.custodian.is_none() {
        warnings.push(EMBEDDED_CUSTODIAN_WARNING);
    }
    let served = boundary.served_checkpoint();
    let served_checkpoint_size = clover_tlog::note::Note::parse(&served)
        .ok()
        .and_then(|n| clover_tlog::checkpoint::Checkpoint::parse(&n.text).ok())
        .map(|c| c.size);
    Ok(Json(HealthDetail {
        status: "ok",
        log_size: boundary.log().size(),
        served_checkpoint_size,
        witnesses,
        custodian,
        warnings,
    })
    .into_response())
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "service", security(()),
    responses(
        (status = OK, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = SERVICE_UNAVAILABLE, description = "No metrics recorder in this process", body = String, content_type = "text/plain"),
    ))]
pub async fn metrics(State(boundary): State<Arc<Boundary>>) -> impl IntoResponse {
    crate::metrics::scraped(boundary.log());
    match crate::metrics::handle() {
        Some(handle) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render())
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "text/plain")], "no recorder".to_owned()),
    }
}

/// This API's OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "service", security(()),
    responses((status = OK, description = "OpenAPI 3.1 document", body = Object, content_type = "application/json")))]
pub async fn openapi(Extension(Document(doc)): Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc)
}
