//! The HTTP load generator: a fixed number of audited reads against a running server, from
//! addresses of the region and from abroad, at a fixed concurrency; bounded in count and in
//! time, it stops by itself and reports throughput and latency percentiles.
//!
//! Origins are client addresses, as the server sees them: on loopback, requests of the region
//! leave from `eu_from` (127.0.0.1, the default configuration's `dublin-1`) and foreign ones
//! from `foreign_from` (127.0.2.1, `singapore-1`), which the server refuses and logs.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::{BenchError, Stats};

pub mod baseline;

/// What to send.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// The server's base URL.
    pub url: String,
    /// A bearer token of an employee or service of the region, allowed to write and read.
    pub token: String,
    /// Reads to send (after the records are written).
    pub requests: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Out of every 100 reads, how many come from abroad.
    pub foreign_percent: u8,
    /// Records written first, and read in turn.
    pub records: usize,
    /// Where requests of the region come from.
    pub eu_from: IpAddr,
    /// Where foreign requests come from.
    pub foreign_from: IpAddr,
    /// The longest the run may take; whatever is not sent by then is not sent.
    pub max_time: Duration,
    /// The purpose declared (`X-Clover-Purpose`).
    pub purpose: String,
    /// For an `https://` server: the CA to trust (and a client certificate, if any).
    pub tls: clover_tls::ClientTls,
}

/// One class of requests, as answered.
#[derive(Debug, Clone, Serialize)]
pub struct ClassReport {
    /// Requests sent.
    pub sent: u64,
    /// Answered with the expected status (200 from the region, 403 from abroad, or 429 from
    /// abroad past the boundary's refusal limit).
    pub expected: u64,
    /// Answered otherwise, or not at all.
    pub unexpected: u64,
    /// Latency percentiles, µs.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// The slowest.
    pub max_us: f64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct HttpReport {
    /// Requests answered per second over the run.
    pub requests_per_second: f64,
    /// Seconds the reads took.
    pub seconds: f64,
    /// Whether the time limit cut the run short.
    pub cut_short: bool,
    /// Every read.
    pub all: ClassReport,
    /// Reads from the region.
    pub region: ClassReport,
    /// Reads from abroad.
    pub foreign: ClassReport,
    /// The first unexpected answer, if any.
    pub first_unexpected: Option<String>,
}

/// The part of a record write's answer the load generator reads.
#[derive(serde::Deserialize)]
struct Written {
    record_id: String,
}

/// One class of reads (from the region, from abroad) as the tasks count it.
struct Class {
    stats: Stats,
    /// Answers with the status expected for the class.
    expected: u64,
    /// Any other answer.
    unexpected: u64,
}

impl Class {
    fn new() -> Self {
        Self { stats: Stats::new(), expected: 0, unexpected: 0 }
    }

    fn add(&mut self, other: &Self) {
        self.stats.add(&other.stats);
        self.expected += other.expected;
        self.unexpected += other.unexpected;
    }

    fn report(&self) -> ClassReport {
        class(&self.stats, self.expected, self.unexpected)
    }
}

fn class(stats: &Stats, expected: u64, unexpected: u64) -> ClassReport {
    ClassReport {
        sent: stats.ops,
        expected,
        unexpected,
        p50_us: stats.micros(0.5),
        p90_us: stats.micros(0.9),
        p99_us: stats.micros(0.99),
        p999_us: stats.micros(0.999),
        max_us: stats.latency.max() as f64 / 1_000.0,
    }
}

fn client(from: IpAddr, concurrency: usize, tls: &clover_tls::ClientTls) -> Result<reqwest::Client, BenchError> {
    tls.builder()
        .map_err(|e| BenchError(format!("TLS: {e}")))?
        .local_address(from)
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| BenchError(format!("an HTTP client from {from}: {e}")))
}

/// Writes the records, then sends the reads; stops after `max_time` whatever is left.
pub async fn run(options: &HttpOptions, progress: &dyn Fn(&str)) -> Result<HttpReport, BenchError> {
    let deadline = Instant::now() + options.max_time;
    let records = write(options, deadline, progress).await?;
    read(options, records, deadline, progress).await
}

/// Writes `options.records` records of a subject of the run's own; answers their ids.
pub async fn write(
    options: &HttpOptions,
    deadline: Instant,
    progress: &dyn Fn(&str),
) -> Result<Vec<String>, BenchError> {
    let url = options.url.trim_end_matches('/').to_owned();
    let eu = client(options.eu_from, options.concurrency, &options.tls)?;

    // A subject of the run's own, and its records.
    let mut id = [0u8; 6];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| BenchError("no randomness".into()))?;
    let subject = format!("bench-{}", hex::encode(id));
    progress(&format!("writing {} records for subject {subject} at {url}", options.records));
    let put = eu
        .put(format!("{url}/v1/subjects/{subject}"))
        .bearer_auth(&options.token)
        .json(&json!({"home_region": "eu", "birth_date": "1990-05-01"}))
        .send()
        .await
        .map_err(|e| BenchError(format!("PUT a subject at {url}: {e}")))?;
    if !put.status().is_success() {
        let status = put.status();
        return Err(BenchError(format!("PUT a subject: {status}: {}", put.text().await.unwrap_or_default())));
    }
    let mut records = Vec::with_capacity(options.records);
    for n in 0..options.records.max(1) {
        let answer = eu
            .post(format!("{url}/v1/subjects/{subject}/records"))
            .bearer_auth(&options.token)
            .json(&json!({"category": "profile", "fields": {"display_name": format!("name {n}"), "city": "Galway"}}))
            .send()
            .await
            .map_err(|e| BenchError(format!("POST a record: {e}")))?;
        let status = answer.status();
        let body = answer.text().await.map_err(|e| BenchError(format!("POST a record: {status}: {e}")))?;
        let written: Written =
            serde_json::from_str(&body).map_err(|_| BenchError(format!("POST a record: {status}: {body}")))?;
        records.push(written.record_id);
        if Instant::now() > deadline {
            return Err(BenchError("the time limit passed while writing the records".into()));
        }
    }
    Ok(records)
}

/// Sends the audited reads of `records`, some from abroad; stops at `deadline` whatever is left.
pub async fn read(
    options: &HttpOptions,
    records: Vec<String>,
    deadline: Instant,
    progress: &dyn Fn(&str),
) -> Result<HttpReport, BenchError> {
    let url = options.url.trim_end_matches('/').to_owned();
    let eu = client(options.eu_from, options.concurrency, &options.tls)?;
    let foreign = client(options.foreign_from, options.concurrency, &options.tls)?;
    progress(&format!(
        "{} reads, {} at a time, {}% from {} and the rest from {}",
        options.requests, options.concurrency, options.foreign_percent, options.foreign_from, options.eu_from
    ));
    let records = Arc::new(records);
    let cut = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let step = options.concurrency.max(1);
    for t in 0..step {
        let (eu, foreign, records, cut) = (eu.clone(), foreign.clone(), records.clone(), cut.clone());
        let (url, token, purpose, requests, percent) =
            (url.clone(), options.token.clone(), options.purpose.clone(), options.requests, options.foreign_percent);
        tasks.spawn(async move {
            let (mut region, mut abroad) = (Class::new(), Class::new());
            let mut first_bad = None;
            for i in (t..requests).step_by(step) {
                if Instant::now() > deadline {
                    cut.store(true, Ordering::Relaxed);
                    break;
                }
                // Spread evenly: request i is foreign when it brings the foreign count up a step.
                let p = usize::from(percent);
                let from_abroad = (i + 1) * p / 100 > i * p / 100;
                let (client, expected) = if from_abroad { (&foreign, 403) } else { (&eu, 200) };
                let Some(record) = i.checked_rem(records.len()).and_then(|i| records.get(i)) else { break };
                let at = Instant::now();
                let answer = client
                    .get(format!("{url}/v1/records/{record}"))
                    .bearer_auth(&token)
                    .header("x-clover-purpose", &purpose)
                    .send()
                    .await;
                let status = match answer {
                    Ok(answer) => {
                        let status = answer.status().as_u16();
                        let body = answer.bytes().await.map(|b| b.len());
                        if body.is_err() { 0 } else { status }
                    }
                    Err(_) => 0,
                };
                let class = if from_abroad { &mut abroad } else { &mut region };
                class.stats.record(at.elapsed());
                class.stats.ops += 1;
                // From abroad, a refusal past the boundary's refusal limit is 429, not 403: still
                // the refusal expected, answered without a log entry of its own.
                if status == expected || (from_abroad && status == 429) {
                    class.expected += 1;
                } else {
                    class.unexpected += 1;
                    first_bad
                        .get_or_insert_with(|| format!("GET /v1/records/{record}: {status} (expected {expected})"));
                }
            }
            (region, abroad, first_bad)
        });
    }
    let (mut region, mut abroad) = (Class::new(), Class::new());
    let mut first_unexpected = None;
    for (r, a, first) in tasks.join_all().await {
        region.add(&r);
        abroad.add(&a);
        first_unexpected = first_unexpected.or(first);
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut all = Class::new();
    all.add(&region);
    all.add(&abroad);
    Ok(HttpReport {
        requests_per_second: if seconds > 0.0 { all.stats.ops as f64 / seconds } else { 0.0 },
        seconds,
        cut_short: cut.load(Ordering::Relaxed),
        all: all.report(),
        region: region.report(),
        foreign: abroad.report(),
        first_unexpected,
    })
}

/// The report as a table.
pub fn table(report: &HttpReport) -> String {
    use crate::latency;
    let mut out = format!(
        "{:<22} {:>8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
        "reads", "sent", "expected", "other", "p50", "p90", "p99", "p99.9", "max"
    );
    for (name, c) in
        [("from the region (200)", &report.region), ("from abroad (403/429)", &report.foreign), ("all", &report.all)]
    {
        out.push_str(&format!(
            "{name:<22} {:>8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            c.sent,
            c.expected,
            c.unexpected,
            latency(c.p50_us),
            latency(c.p90_us),
            latency(c.p99_us),
            latency(c.p999_us),
            latency(c.max_us)
        ));
    }
    out.push_str(&format!(
        "{} reads answered in {:.2} s: {} per second{}\n",
        report.all.sent,
        report.seconds,
        crate::rate(report.requests_per_second),
        if report.cut_short { " (cut short by the time limit)" } else { "" }
    ));
    if let Some(first) = &report.first_unexpected {
        out.push_str(&format!("first unexpected answer: {first}\n"));
    }
    out
}
