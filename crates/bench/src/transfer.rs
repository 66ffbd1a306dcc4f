//! `clover bench transfer`: a record transfer of N records (made, counted, its manifest signed
//! and logged, then streamed as NDJSON, as `POST /v1/transfers` and `GET .../records` do, in
//! this process) against a baseline in the same run that reads the same records, opens each
//! with its key and serialises it to NDJSON, with no custodian, tokens, rules, k-anonymity or
//! log; and an aggregate release (counts by age band and country, with noise) over the same
//! records. The process's resident size is sampled throughout.

use std::time::Instant;

use clover_gateway::aggregates::{AggregateAsked, Dimension, Measure};
use clover_gateway::transfers::{self, Asked};
use clover_model::{Fields, PrincipalKind};
use clover_store::TransferSelection;
use serde::Serialize;

use crate::{BenchError, Fixture, Options, caller, fail, gateway_of};

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct TransferReport {
    /// Records in the store.
    pub records: usize,
    /// The baseline: seconds, and records per second.
    pub baseline_seconds: f64,
    /// The baseline's rate.
    pub baseline_per_second: f64,
    /// Making the transfer (its decision, the counting pass, the manifest signed and logged).
    pub create_seconds: f64,
    /// Streaming it.
    pub stream_seconds: f64,
    /// Records per second over both.
    pub transfer_per_second: f64,
    /// The transfer's rate over the baseline's.
    pub ratio: f64,
    /// Records sent.
    pub sent: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// An aggregate release over the same records: seconds.
    pub aggregate_seconds: f64,
    /// Its rate, records per second.
    pub aggregate_per_second: f64,
    /// The process's resident size before the transfer, and its peak during it, in KiB.
    pub rss_before_kib: u64,
    /// See `rss_before_kib`.
    pub rss_peak_kib: u64,
}

/// The process's resident size and its peak so far, in KiB (Linux; zeros elsewhere).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Runs the scenario on `records` records over `records / 10` subjects.
pub async fn transfer(
    options: &Options,
    records: usize,
    progress: &dyn Fn(&str),
) -> Result<TransferReport, BenchError> {
    let g = gateway_of(options, records, records.div_ceil(10), Fixture::Profile, progress).await?;
    let boundary = g.boundary.clone();

    progress("baseline: read, open and serialise every record");
    let selection = TransferSelection {
        categories: vec!["profile".parse().map_err(|e| fail("category")(&e))?],
        since: None,
        until: None,
    };
    let started = Instant::now();
    let mut after = None;
    let (mut lines, mut bytes) = (0u64, 0u64);
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    loop {
        let page = boundary
            .store()
            .records_for_transfer(&selection, after.as_ref(), None, 500)
            .await
            .map_err(|e| fail("reading records")(&e))?;
        let Some(last) = page.last() else { break };
        after = Some(clover_store::TransferCursor::after(&last.0));
        let mut chunk = Vec::with_capacity(page.len() * 300);
        for (record, _) in &page {
            let key = g
                .keys
                .get(&record.record_id)
                .ok_or_else(|| BenchError(format!("no key kept for {}", record.record_id)))?;
            let aad =
                clover_keys::aad::record(boundary.region(), &record.subject_id, &record.record_id, record.version);
            let plain = key.open(&aad, &record.ciphertext).map_err(|e| fail("opening a record")(&e))?;
            let fields = Fields::from_bytes(&plain).map_err(|e| fail("a record's fields")(&e))?;
            let line = serde_json::json!({"subject": record.subject_id.as_str(), "record": record.record_id.to_string(), "category": "profile", "fields": fields.as_map()});
            serde_json::to_writer(&mut chunk, &line).map_err(|e| fail("serialising")(&e))?;
            chunk.push(b'\n');
            lines += 1;
        }
        digest.update(&chunk);
        bytes += chunk.len() as u64;
    }
    let _ = digest.finish();
    let baseline_seconds = started.elapsed().as_secs_f64();
    if lines != records as u64 {
        return Err(BenchError(format!("the baseline read {lines} records of {records}")));
    }
    let _ = bytes;

    progress("transfer: made, counted, signed and logged, then streamed");
    let analyst = caller(PrincipalKind::Service, "eu", "dublin-1", "analytics");
    let asked = Asked {
        destination: "us-partners".to_owned(),
        purpose: "analytics".to_owned(),
        categories: vec!["profile".to_owned()],
        since: None,
        until: None,
    };
    let (rss_before, _) = rss();
    let started = Instant::now();
    let created =
        transfers::create(&boundary, &analyst, asked.clone()).await.map_err(|e| fail("making the transfer")(&e))?;
    let create_seconds = started.elapsed().as_secs_f64();
    let streaming = Instant::now();
    let mut chunks = transfers::stream(boundary.clone(), &analyst, &created.manifest.transfer)
        .await
        .map_err(|e| fail("starting the stream")(&e))?;
    let (mut sent, mut sent_bytes) = (0u64, 0u64);
    let mut peak = 0;
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk.map_err(|e| fail("the stream")(&e))?;
        sent += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        sent_bytes += chunk.len() as u64;
        peak = peak.max(rss().0);
    }
    let stream_seconds = streaming.elapsed().as_secs_f64();
    let transfer_seconds = create_seconds + stream_seconds;

    progress("aggregate: counts by age band and country, with noise");
    let release = AggregateAsked {
        asked,
        group_by: vec![Dimension::AgeBand, Dimension::Country],
        countries: vec!["IE".into(), "NO".into(), "DE".into()],
        measure: Measure::Count,
        bound: 10,
        epsilon: 0.01,
    };
    let started = Instant::now();
    clover_gateway::aggregates::release(&boundary, &analyst, release).await.map_err(|e| fail("the release")(&e))?;
    let aggregate_seconds = started.elapsed().as_secs_f64();

    let baseline_per_second = records as f64 / baseline_seconds.max(1e-9);
    let transfer_per_second = records as f64 / transfer_seconds.max(1e-9);
    Ok(TransferReport {
        records,
        baseline_seconds,
        baseline_per_second,
        create_seconds,
        stream_seconds,
        transfer_per_second,
        ratio: transfer_per_second / baseline_per_second.max(1e-9),
        sent,
        bytes: sent_bytes,
        aggregate_seconds,
        aggregate_per_second: records as f64 / aggregate_seconds.max(1e-9),
        rss_before_kib: rss_before,
        rss_peak_kib: peak.max(rss_before),
    })
}

/// The report as a table a person reads.
pub fn transfer_table(r: &TransferReport) -> String {
    format!(
        "records: {}\n\
         baseline (read, open, serialise):        {:>8.2} s  {:>10.0} records/s\n\
         transfer (decide, count, manifest):      {:>8.2} s\n\
         transfer (stream: treat, k-anonymity):   {:>8.2} s\n\
         transfer in all:                         {:>8.2} s  {:>10.0} records/s  ({:.2}x the baseline)\n\
         sent: {} records, {} bytes\n\
         aggregate release (age band x country):  {:>8.2} s  {:>10.0} records/s\n\
         resident size: {} KiB before the transfer, {} KiB at its peak\n",
        r.records,
        r.baseline_seconds,
        r.baseline_per_second,
        r.create_seconds,
        r.stream_seconds,
        r.create_seconds + r.stream_seconds,
        r.transfer_per_second,
        r.ratio,
        r.sent,
        r.bytes,
        r.aggregate_seconds,
        r.aggregate_per_second,
        r.rss_before_kib,
        r.rss_peak_kib,
    )
}
