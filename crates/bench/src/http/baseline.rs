//! `clover bench http --baseline`: the same server's `/healthz`, a bare read of the same records
//! from the same store, and the audited read, at the same concurrency in one run, each with the
//! CPU its server spent per request (from `/proc/PID/stat`).
//!
//! The bare read is [`router`]: `GET /v1/records/{id}` answers the stored row (its metadata and
//! the ciphertext, base64) with no authentication, policy, log, custodian or decryption. The
//! command serves it from a process of its own (`clover bench baseline-server`) on the server's
//! store, so that its CPU is counted apart from the load generator's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use clover_model::RecordId;
use clover_store::Store;
use serde::Serialize;

use super::{Class, ClassReport, HttpOptions, client};
use crate::BenchError;

/// The bare read: the stored row as it is, no questions asked.
pub fn router(store: Arc<dyn Store>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/v1/records/{id}", axum::routing::get(bare_read))
        .with_state(store)
}

async fn bare_read(State(store): State<Arc<dyn Store>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<RecordId>() else { return StatusCode::BAD_REQUEST.into_response() };
    match store.record(&id).await {
        Ok(Some(row)) => axum::Json(serde_json::json!({
            "record_id": row.record_id.to_string(),
            "subject_id": row.subject_id.to_string(),
            "category": row.category.as_str(),
            "version": row.version,
            "ciphertext": base64::engine::general_purpose::STANDARD.encode(&row.ciphertext),
        }))
        .into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The CPU seconds (user and system) a process has used, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    let stat = process.stat().ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// The resident size of a process, bytes.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    Some(process.statm().ok()?.resident * procfs::page_size())
}

/// One phase of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// What was asked.
    pub name: String,
    /// The requests, as answered.
    pub answers: ClassReport,
    /// Requests answered per second.
    pub requests_per_second: f64,
    /// The server's CPU per request, µs (when its process is known).
    pub server_cpu_us: Option<f64>,
    /// The server's resident size at the end of the phase, bytes (when its process is known).
    pub server_resident_bytes: Option<u64>,
}

/// `GET` every one of `urls` in turn, `requests` in all, `concurrency` at a time, with `token`
/// and the purpose when given; `expected` is the status counted as expected. The server's CPU
/// is read from `/proc` before and after when `pid` is given.
#[allow(clippy::too_many_arguments)]
pub async fn phase(
    name: &str,
    options: &HttpOptions,
    urls: Arc<Vec<String>>,
    token: Option<&str>,
    expected: u16,
    pid: Option<u32>,
    deadline: Instant,
) -> Result<Phase, BenchError> {
    let http = client(options.eu_from, options.concurrency, &options.tls)?;
    let before = pid.and_then(cpu_seconds);
    let started = Instant::now();
    let step = options.concurrency.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..step {
        let (http, urls) = (http.clone(), urls.clone());
        let (token, purpose, requests) = (token.map(str::to_owned), options.purpose.clone(), options.requests);
        tasks.spawn(async move {
            let mut class = Class::new();
            for i in (t..requests).step_by(step) {
                if Instant::now() > deadline {
                    break;
                }
                let Some(url) = i.checked_rem(urls.len()).and_then(|i| urls.get(i)) else { break };
                let mut request = http.get(url);
                if let Some(token) = &token {
                    request = request.bearer_auth(token).header("x-clover-purpose", &purpose);
                }
                let at = Instant::now();
                let status = match request.send().await {
                    Ok(answer) => {
                        let status = answer.status().as_u16();
                        if answer.bytes().await.is_err() { 0 } else { status }
                    }
                    Err(_) => 0,
                };
                class.stats.record(at.elapsed());
                class.stats.ops += 1;
                if status == expected {
                    class.expected += 1;
                } else {
                    class.unexpected += 1;
                }
            }
            class
        });
    }
    let mut all = Class::new();
    for class in tasks.join_all().await {
        all.add(&class);
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = pid.and_then(cpu_seconds);
    let ops = all.stats.ops;
    let server_cpu_us = match (before, after) {
        (Some(b), Some(a)) if ops > 0 => Some((a - b) * 1e6 / ops as f64),
        _ => None,
    };
    Ok(Phase {
        name: name.to_owned(),
        answers: all.report(),
        requests_per_second: if seconds > 0.0 { ops as f64 / seconds } else { 0.0 },
        server_cpu_us,
        server_resident_bytes: pid.and_then(resident_bytes),
    })
}

/// The three phases and their ratios.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    /// The server's own `/healthz`.
    pub healthz: Phase,
    /// The bare read of the same records from the same store.
    pub bare: Phase,
    /// The audited read.
    pub audited: Phase,
    /// Audited reads per second over `/healthz`'s.
    pub audited_over_healthz: f64,
    /// The audited read's server CPU per request over the bare read's (when both are known).
    pub audited_cpu_over_bare: Option<f64>,
}

/// Runs the phases: `/healthz` of the server, the bare read from `bare_url` (whose process is
/// `bare_pid`), then the audited read of the same `records` (from the region only), each with
/// `options.requests` requests; the server's process is `server_pid` when known. The phases
/// run in that order twice and each figure is the better of its two, so that a burst of noise
/// on the machine does not decide a ratio.
pub async fn run(
    options: &HttpOptions,
    records: &[String],
    bare_url: &str,
    server_pid: Option<u32>,
    bare_pid: Option<u32>,
    progress: &dyn Fn(&str),
) -> Result<BaselineReport, BenchError> {
    let url = options.url.trim_end_matches('/');
    let bare_url = bare_url.trim_end_matches('/');
    let healthz = Arc::new(vec![format!("{url}/healthz")]);
    let bare: Arc<Vec<String>> = Arc::new(records.iter().map(|r| format!("{bare_url}/v1/records/{r}")).collect());
    let audited: Arc<Vec<String>> = Arc::new(records.iter().map(|r| format!("{url}/v1/records/{r}")).collect());
    let deadline = Instant::now() + options.max_time;
    let mut best: [Option<Phase>; 3] = [None, None, None];
    for round in 1..=2 {
        progress(&format!(
            "round {round} of 2: /healthz, the bare read, the audited read; {} requests each, {} at a time",
            options.requests, options.concurrency
        ));
        let phases = [
            phase("GET /healthz", options, healthz.clone(), None, 200, server_pid, deadline).await?,
            phase("bare read (no auth, policy, log, crypto)", options, bare.clone(), None, 200, bare_pid, deadline)
                .await?,
            phase("audited read", options, audited.clone(), Some(&options.token), 200, server_pid, deadline).await?,
        ];
        for (slot, phase) in best.iter_mut().zip(phases) {
            if slot.as_ref().is_none_or(|b| phase.requests_per_second > b.requests_per_second) {
                *slot = Some(phase);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let [Some(healthz), Some(bare), Some(audited)] = best else {
        return Err(BenchError("no phase ran".into()));
    };
    for phase in [&healthz, &bare, &audited] {
        if phase.answers.unexpected > 0 {
            return Err(BenchError(format!(
                "{}: {} of {} requests were not answered 200",
                phase.name, phase.answers.unexpected, phase.answers.sent
            )));
        }
    }
    let audited_over_healthz =
        if healthz.requests_per_second > 0.0 { audited.requests_per_second / healthz.requests_per_second } else { 0.0 };
    let audited_cpu_over_bare = match (audited.server_cpu_us, bare.server_cpu_us) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    Ok(BaselineReport { healthz, bare, audited, audited_over_healthz, audited_cpu_over_bare })
}

/// The report as a table.
pub fn table(report: &BaselineReport) -> String {
    use crate::latency;
    let mut out = format!(
        "{:<42} {:>8} {:>10} {:>10} {:>10} {:>14} {:>10}\n",
        "phase", "sent", "per second", "p50", "p99", "server CPU/req", "server RSS"
    );
    for phase in [&report.healthz, &report.bare, &report.audited] {
        out.push_str(&format!(
            "{:<42} {:>8} {:>10} {:>10} {:>10} {:>14} {:>10}\n",
            phase.name,
            phase.answers.sent,
            crate::rate(phase.requests_per_second),
            latency(phase.answers.p50_us),
            latency(phase.answers.p99_us),
            phase.server_cpu_us.map_or_else(|| "-".to_owned(), latency),
            phase.server_resident_bytes.map_or_else(|| "-".to_owned(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
        ));
    }
    out.push_str(&format!("audited read / /healthz, throughput: {:.2}×\n", report.audited_over_healthz));
    match report.audited_cpu_over_bare {
        Some(ratio) => out.push_str(&format!("audited read / bare read, server CPU per request: {ratio:.2}×\n")),
        None => out.push_str("server CPU per request: give --server-pid to measure it\n"),
    }
    out
}
