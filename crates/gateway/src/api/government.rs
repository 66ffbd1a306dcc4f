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
