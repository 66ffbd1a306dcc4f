//! `clover bench monitor`: how fast the independent monitor catches up on a long log, and what
//! memory it takes. A log of N synthetic entries (accesses from the region and from abroad,
//! allowed and refused, writes, transfers, under a thousand principal pseudonyms, a hundred
//! entries a second) is served over HTTP by this process (tiles in memory, a signed checkpoint);
//! the baseline, in the same run, fetches the same bundles and hashes every entry (the floor of
//! any verification: the bytes and their leaf hashes); then a monitor with a fresh state
//! directory verifies the whole log once, with every rule on. The process's peak resident size
//! is reset before the monitor runs, so its growth is what the monitor held.

use std::sync::Arc;
use std::time::Instant;

use clover_event::{EVENT_VERSION, Event, EventDecision, EventKind, EventOrigin, EventPrincipal, TransferFacts};
use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::frontier::Frontier;
use clover_tlog::hash::leaf_hash;
use clover_tlog::note::{SigningKey, TYPE_ED25519};
use clover_tlog::tile::{TILE_WIDTH, Tile, push_bundle_entry, split_bundle};
use serde::Serialize;

use crate::BenchError;

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct MonitorReport {
    /// Entries in the log.
    pub entries: u64,
    /// The baseline (fetch every bundle, hash every entry): seconds.
    pub baseline_seconds: f64,
    /// Its rate.
    pub baseline_per_second: f64,
    /// The monitor's catch-up (verify, apply the rules, keep the state): seconds.
    pub monitor_seconds: f64,
    /// Its rate.
    pub monitor_per_second: f64,
    /// The monitor's time over the baseline's.
    pub cost: f64,
    /// Alerts it raised.
    pub alerts: usize,
    /// How much the process's peak resident size grew while the monitor ran (MiB).
    pub peak_growth_mib: f64,
    /// The state directory's size after (bytes).
    pub state_bytes: u64,
}

fn error(what: &str) -> impl Fn(String) -> BenchError + '_ {
    move |e| BenchError(format!("{what}: {e}"))
}

/// Entry `i` of the synthetic log.
fn entry(i: u64, start: i64) -> Vec<u8> {
    let pick = i % 20;
    let (kind, region, effect, view) = match pick {
        0 => (EventKind::Access, "sg", "deny", None),
        1 => (EventKind::Access, "us", "allow", Some("pseudonymised")),
        2 | 3 => (EventKind::Write, "eu", "allow", None),
        4 => (EventKind::Transfer, "eu", "allow", None),
        _ => (EventKind::Access, "eu", "allow", Some("full")),
    };
    let pseudonym = format!("{:064x}", (i % 1_000) * 7_919 + 1);
    Event {
        v: EVENT_VERSION,
        kind,
        time: start + i64::try_from(i / 100).unwrap_or(0),
        principal: Some(EventPrincipal { pseudonym, kind: "employee".into(), region: "eu".into() }),
        origin: Some(EventOrigin { site: Some(format!("{region}-1")), region: Some(region.into()) }),
        action: Some(if kind == EventKind::Write { "write" } else { "read" }.into()),
        subject: None,
        category: Some(
            match i % 3 {
                0 => "profile",
                1 => "content",
                _ => "contact",
            }
            .into(),
        ),
        decision: Some(EventDecision {
            effect: effect.into(),
            view: view.map(Into::into),
            policies: vec!["in-region-read".into()],
        }),
        purpose: Some("support".into()),
        annex: None,
        detail: None,
        transfer: (kind == EventKind::Transfer).then(|| {
            Box::new(TransferFacts {
                transfer_id: None,
                stage: "sent".into(),
                destination: Some("us-partners".into()),
                region: "us".into(),
                legal_basis: Some("scc".into()),
                treatment: "pseudonymised".into(),
                categories: vec!["profile".into()],
                count: 10,
                suppressed: 0,
                k: Some(5),
                epsilon: None,
                manifest: None,
                sha256: None,
            })
        }),
        government_request: None,
    }
    .encode()
}

/// The synthetic log: its bundles (each as served) and its signed checkpoint.
struct Served {
    bundles: Vec<axum::body::Bytes>,
    checkpoint: String,
    vkey: clover_tlog::note::VerifierKey,
}

fn build(entries: u64) -> Result<Served, BenchError> {
    let key = SigningKey::generate("bench.local/eu", TYPE_ED25519).map_err(|e| BenchError(e.to_string()))?;
    let start = time::OffsetDateTime::now_utc().unix_timestamp() - i64::try_from(entries / 100).unwrap_or(0);
    let mut frontier = Frontier::new();
    let mut bundles = Vec::new();
    let mut bundle = Vec::new();
    for i in 0..entries {
        let bytes = entry(i, start);
        frontier.push(leaf_hash(&bytes));
        push_bundle_entry(&mut bundle, &bytes).map_err(|n| BenchError(format!("an entry of {n} bytes")))?;
        if (i + 1) % TILE_WIDTH == 0 || i + 1 == entries {
            bundles.push(axum::body::Bytes::from(std::mem::take(&mut bundle)));
        }
    }
    let body = Checkpoint { origin: "bench.local/eu".into(), size: entries, root: frontier.root() }.to_text();
    Ok(Served { bundles, checkpoint: format!("{body}\n{}", key.sign_note(&body)), vkey: key.verifier() })
}

async fn serve(served: Arc<Served>) -> Result<String, BenchError> {
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    async fn checkpoint(State(served): State<Arc<Served>>) -> String {
        served.checkpoint.clone()
    }
    async fn tile(
        State(served): State<Arc<Served>>,
        Path(path): Path<String>,
    ) -> Result<axum::body::Bytes, StatusCode> {
        let tile = Tile::parse(&format!("tile/{path}")).map_err(|_| StatusCode::NOT_FOUND)?;
        let bundle =
            served.bundles.get(usize::try_from(tile.index).unwrap_or(usize::MAX)).ok_or(StatusCode::NOT_FOUND)?;
        Ok(bundle.clone())
    }
    let app = axum::Router::new()
        .route("/log/checkpoint", axum::routing::get(checkpoint))
        .route("/log/tile/{*path}", axum::routing::get(tile))
        .with_state(served);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| BenchError(e.to_string()))?;
    let url = format!("http://{}", listener.local_addr().map_err(|e| BenchError(e.to_string()))?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// Runs the benchmark on a log of `entries` entries.
pub async fn monitor(entries: u64, progress: &dyn Fn(&str)) -> Result<MonitorReport, BenchError> {
    progress(&format!("making a log of {entries} entries"));
    let served = Arc::new(build(entries)?);
    let bundles = served.bundles.len();
    let vkey = served.vkey.clone();
    let url = serve(served).await?;

    // The baseline: every bundle fetched, every entry hashed.
    progress("baseline: fetching every bundle and hashing every entry");
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut hashed = 0u64;
    for index in 0..bundles {
        let width = (entries - index as u64 * TILE_WIDTH).min(TILE_WIDTH);
        let tile = Tile { level: None, index: index as u64, width: u16::try_from(width).unwrap_or(256) };
        let bytes = client
            .get(format!("{url}/log/{}", tile.path()))
            .send()
            .await
            .map_err(|e| BenchError(e.to_string()))?
            .bytes()
            .await
            .map_err(|e| BenchError(e.to_string()))?;
        for entry in split_bundle(&bytes).ok_or_else(|| BenchError("a malformed bundle".into()))? {
            std::hint::black_box(leaf_hash(entry));
            hashed += 1;
        }
    }
    let baseline = started.elapsed().as_secs_f64();
    if hashed != entries {
        return Err(BenchError(format!("the baseline hashed {hashed} entries, not {entries}")));
    }

    progress("the monitor: catching up from a fresh state");
    let dir = tempfile::tempdir().map_err(|e| BenchError(e.to_string()))?;
    let options = clover_monitor::Options {
        url: url.clone(),
        vkey,
        witnesses: Vec::new(),
        dir: dir.path().to_owned(),
        rules: clover_monitor::rules::RulesConfig::default(),
        every: std::time::Duration::from_secs(5),
        tls: clover_tls::ClientTls::default(),
        print: false,
    };
    let monitor = clover_monitor::Monitor::new(options).map_err(|e| error("the monitor")(e.to_string()))?;
    // Reset the peak resident size: what grows from here is what the monitor holds.
    std::fs::write("/proc/self/clear_refs", "5").map_err(|e| BenchError(format!("resetting the peak: {e}")))?;
    let before = peak_kib();
    let started = Instant::now();
    let alerts = monitor.step().await.map_err(|e| error("the monitor")(e.to_string()))?;
    let elapsed = started.elapsed().as_secs_f64();
    let peak = peak_kib();
    if let Some(problem) = monitor.health().last_problem {
        return Err(BenchError(format!("the monitor did not verify the log: {problem}")));
    }
    if monitor.state().size != entries {
        return Err(BenchError(format!("the monitor verified {} entries, not {entries}", monitor.state().size)));
    }
    Ok(MonitorReport {
        entries,
        baseline_seconds: baseline,
        baseline_per_second: entries as f64 / baseline,
        monitor_seconds: elapsed,
        monitor_per_second: entries as f64 / elapsed,
        cost: elapsed / baseline,
        alerts: alerts.len(),
        peak_growth_mib: (peak.saturating_sub(before)) as f64 / 1024.0,
        state_bytes: dir_bytes(dir.path()),
    })
}

/// The report as a table.
pub fn monitor_table(report: &MonitorReport) -> String {
    format!(
        "entries {}\n  baseline (fetch + leaf hash)  {:>8.2} s  {:>10.0} entries/s\n  monitor catch-up              {:>8.2} s  {:>10.0} entries/s  cost {:.2}x\n  alerts {}, peak resident growth {:.1} MiB, state {} bytes\n",
        report.entries,
        report.baseline_seconds,
        report.baseline_per_second,
        report.monitor_seconds,
        report.monitor_per_second,
        report.cost,
        report.alerts,
        report.peak_growth_mib,
        report.state_bytes
    )
}
