//! Prometheus metrics.
//!
//! - `clover_http_requests_total{route, method, status, decision}`: requests answered, by the
//!   route template (never the raw path, which holds ids), status and policy decision
//!   (`allow`, `deny`, or `none` where no decision was taken);
//! - `clover_http_request_duration_seconds{route, method}`: latency histogram;
//! - `clover_log_entries`, `clover_log_checkpoint_entries`: the log's size as this gateway
//!   sees it, and the size of the latest checkpoint it serves;
//! - `clover_log_sequencer`: 1 if this gateway sequences the log (always, for a log in a
//!   directory; for one in PostgreSQL, the one gateway holding the sequencer's lock);
//! - `clover_tls_connections_refused_total{reason}`: TLS connections refused before any
//!   request (an unknown CA, an expired certificate, plain HTTP, ...), and
//!   `clover_tls_certificate_expiry_timestamp_seconds`: when the served certificate expires
//!   (both from `clover_tls`);
//! - `clover_refusals_limited_total`: requests that would have been refused but were answered
//!   429 past the refusal limit (`[policy] refusal_limit`), not logged one by one;
//! - `clover_approvals_refused_total{reason}`: granted approvals in the store that a decision did
//!   not count because the log does not hold their grant as the store has it: `not-logged` (no
//!   grant entry: granted outside the boundary), `mismatch` (the entry is not this approval's
//!   grant of this scope: the store was changed), `beyond-log` (an entry this gateway has not
//!   seen), `unreadable` (the log could not be read). Any `not-logged` or `mismatch` means the
//!   store was changed outside the boundary.
//! - `clover_repatriated_records_total`: records a repatriation brought home (stored with their
//!   job's row).

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::problem::DecisionLabel;
use crate::report::Chain;

const REQUESTS: &str = "clover_http_requests_total";
/// Refusals answered 429 past the refusal limit.
pub const REFUSALS_LIMITED: &str = "clover_refusals_limited_total";
/// Granted approvals not counted because the log does not hold their grant as the store has it.
pub const APPROVALS_REFUSED: &str = "clover_approvals_refused_total";
/// Records a repatriation brought home.
pub const REPATRIATED_RECORDS: &str = "clover_repatriated_records_total";
/// Records a transfer sent out of the region.
pub const TRANSFERRED_RECORDS: &str = "clover_transferred_records_total";
const DURATION: &str = "clover_http_request_duration_seconds";
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// The process's Prometheus recorder, installed on first use. `None` if another recorder was
/// installed first (the metrics then go there).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(DURATION.to_owned()), BUCKETS)
                .map_err(|e| tracing::error!(error = %Chain(&e), "cannot configure metrics"))
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    metrics::describe_counter!(REQUESTS, "HTTP requests answered");
                    metrics::describe_counter!(REPATRIATED_RECORDS, "Records a repatriation brought home");
                    metrics::describe_counter!(
                        REFUSALS_LIMITED,
                        "Refusals answered 429 past the refusal limit, not logged one by one"
                    );
                    metrics::describe_counter!(
                        APPROVALS_REFUSED,
                        "Granted approvals not counted: the log does not hold their grant as the store has it"
                    );
                    metrics::describe_histogram!(DURATION, metrics::Unit::Seconds, "HTTP request latency");
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Sets the log's gauges (read when the metrics are scraped).
pub fn log(log: &clover_log::Log) {
    metrics::gauge!("clover_log_entries").set(log.size() as f64);
    metrics::gauge!("clover_log_checkpoint_entries").set(log.checkpoint_size() as f64);
    metrics::gauge!("clover_log_sequencer").set(if log.is_sequencer() { 1.0 } else { 0.0 });
}

/// Middleware that counts and times every request.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let decision = response.extensions().get::<DecisionLabel>().map_or("none", |d| d.0);
    let status = response.status().as_u16().to_string();
    metrics::counter!(REQUESTS, "route" => route.clone(), "method" => method.clone(), "status" => status, "decision" => decision)
        .increment(1);
    metrics::histogram!(DURATION, "route" => route, "method" => method).record(started.elapsed().as_secs_f64());
    response
}
