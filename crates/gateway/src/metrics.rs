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
//! - `clover_transferred_records_total`: records a transfer sent out of the region;
//! - `clover_decisions_total{action, effect, policy}`: policy decisions, by action, effect
//!   (`allow`, `deny`, `approval-required`) and each deciding policy (`none` where none decided:
//!   a denial by default);
//! - `clover_token_cache_total{result}`: bearer tokens found verified in the cache (`hit`) or
//!   verified afresh (`miss`); `clover_jwks_refreshes_total{result}`: identity providers' key
//!   sets fetched (`ok`) or not (`failed`);
//! - the log's (`clover_log`): `clover_log_batch_entries`, `clover_log_commit_seconds`,
//!   `clover_log_fsync_seconds`, `clover_log_sequencer_queue`, `clover_log_unwritten_batches_total`
//!   (batches a full disk refused);
//! - the custodian's, when it runs in this process (`clover_custodian`): its key cache's hits and
//!   misses, unwrap latency, views, receipts reused;
//! - the process's (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//!   `process_open_fds`, `process_max_fds`, `process_start_time_seconds`, ...), collected at
//!   each scrape.
//!
//! Every family has its HELP text (`promtool check metrics` in CI).

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
/// Policy decisions, by action, effect and deciding policy.
pub const DECISIONS: &str = "clover_decisions_total";
/// Bearer tokens found in the cache of verified tokens, or verified afresh.
pub const TOKEN_CACHE: &str = "clover_token_cache_total";
/// Identity providers' key sets fetched, or not.
pub const JWKS_REFRESHES: &str = "clover_jwks_refreshes_total";
const LOG_ENTRIES: &str = "clover_log_entries";
const LOG_CHECKPOINT_ENTRIES: &str = "clover_log_checkpoint_entries";
const LOG_SEQUENCER: &str = "clover_log_sequencer";
const DURATION: &str = "clover_http_request_duration_seconds";
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Log batch sizes, in entries.
const BATCHES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0];

/// The process's Prometheus recorder, installed on first use. `None` if another recorder was
/// installed first (the metrics then go there).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(DURATION.to_owned()), BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(clover_log::BATCH_METRIC.to_owned()), BATCHES))
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
                    metrics::describe_counter!(TRANSFERRED_RECORDS, "Records a transfer sent out of the region");
                    metrics::describe_counter!(
                        DECISIONS,
                        "Policy decisions, by action, effect and deciding policy (none: denied by default)"
                    );
                    metrics::describe_counter!(
                        TOKEN_CACHE,
                        "Bearer tokens found verified in the cache (hit) or verified afresh (miss)"
                    );
                    metrics::describe_counter!(JWKS_REFRESHES, "Identity providers' key sets fetched, by result");
                    metrics::describe_gauge!(LOG_ENTRIES, "Entries in the transparency log, as this gateway sees it");
                    metrics::describe_gauge!(LOG_CHECKPOINT_ENTRIES, "Entries the latest served checkpoint covers");
                    metrics::describe_gauge!(LOG_SEQUENCER, "1 if this gateway sequences the log, else 0");
                    clover_log::describe_metrics();
                    clover_custodian::describe_metrics();
                    clover_tls::describe_metrics();
                    process().describe();
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

/// The collector of the process's own metrics.
fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Sets the gauges read when the metrics are scraped: the log's, and the process's.
pub fn scraped(log: &clover_log::Log) {
    metrics::gauge!(LOG_ENTRIES).set(log.size() as f64);
    metrics::gauge!(LOG_CHECKPOINT_ENTRIES).set(log.checkpoint_size() as f64);
    metrics::gauge!(LOG_SEQUENCER).set(if log.is_sequencer() { 1.0 } else { 0.0 });
    process().collect();
}

/// Counts a policy decision: once for each policy that decided it.
pub fn decision(action: clover_model::Action, decision: &clover_policy::Decision) {
    let (action, effect) = (action.as_str(), decision.effect());
    if decision.policies.is_empty() {
        metrics::counter!(DECISIONS, "action" => action, "effect" => effect, "policy" => "none").increment(1);
    }
    for policy in &decision.policies {
        metrics::counter!(DECISIONS, "action" => action, "effect" => effect, "policy" => policy.clone()).increment(1);
    }
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
