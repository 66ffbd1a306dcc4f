//! `clover bench`: what Clover costs, measured against what it adds to.
//!
//! Each scenario times one of Clover's operations and, in the same run, a baseline: the thing
//! that operation would be without Clover (the bare store read or write, a trivial Cedar
//! decision, a plain fsynced append, raw AES-256-GCM over the same bytes). The two are measured
//! in alternating rounds, so that a machine's drift over the run weighs on both alike, and the
//! result is read as a ratio: absolute figures move with the machine, ratios much less.
//!
//! Latencies go into HDR histograms (nanoseconds, three significant digits); throughput is
//! operations over wall time, with `concurrency` tasks on the current tokio runtime for the
//! operations that wait (reads, writes, appends) and one thread for those that only compute
//! (decisions, sealing).
//!
//! [`http`] is the load generator that drives a running server over HTTP.

// The harness indexes its own vectors modulo their length, after making them non-empty (at
// least one record, one subject, one event), and two-element counters by a 0/1 class: no index
// here can be out of range, and a panic would be a failed benchmark run, not a security failure.
#![allow(clippy::indexing_slicing)]

pub mod http;

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use clover_gateway::pipeline::{self, Caller};
use clover_gateway::{Boundary, Config, DataDir};
use clover_log::event::{Event, EventDecision, EventKind, EventOrigin, EventPrincipal};
use clover_log::note::{SigningKey, TYPE_ED25519};
use clover_log::{Log, LogOptions};
use clover_model::{Action, Category, Fields, Origin, Principal, PrincipalKind, RecordId, SubjectId};
use clover_policy::pack::{DEFAULT_SCHEMA, PackPrincipal, PackRequest, PackResource, PolicyPack};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BenchError(String);

fn fail(what: &str) -> impl Fn(&dyn std::fmt::Display) -> BenchError + '_ {
    move |e| BenchError(format!("{what}: {e}"))
}

/// A named scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// An audited read, in full, from the region (the bare store read as baseline).
    Read,
    /// An audited write (the bare store write).
    Write,
    /// A read refused from outside the region, decided and logged (the bare store read).
    Deny,
    /// A pseudonymised read from outside the region for a transfer purpose (the bare store read).
    Pseudonymised,
    /// A durable log append, with its checkpoint (a plain fsynced append of the same bytes).
    Append,
    /// A decision of the policy pack on an allowed read (a trivial Cedar policy).
    Decide,
    /// A record's fields sealed as Clover stores them (raw AES-256-GCM over the same bytes).
    Seal,
}

impl Scenario {
    /// Every scenario, in the order the table lists them.
    pub const ALL: [Self; 7] =
        [Self::Read, Self::Write, Self::Deny, Self::Pseudonymised, Self::Append, Self::Decide, Self::Seal];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Deny => "deny",
            Self::Pseudonymised => "pseudonymised",
            Self::Append => "append",
            Self::Decide => "decide",
            Self::Seal => "seal",
        }
    }

    fn needs_gateway(self) -> bool {
        matches!(self, Self::Read | Self::Write | Self::Deny | Self::Pseudonymised)
    }
}

impl std::str::FromStr for Scenario {
    type Err = BenchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|c| c.name()).collect();
            BenchError(format!("no scenario {s:?}; the scenarios are {}", names.join(", ")))
        })
    }
}

/// How a run goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Operations timed per side (operation and baseline) of each scenario.
    pub ops: usize,
    /// Concurrent tasks, for the scenarios that wait.
    pub concurrency: usize,
    /// Records written before the reads (over one subject per ten records).
    pub records: usize,
    /// A PostgreSQL database for the gateway's data store, log and key store (SQLite in a
    /// temporary directory otherwise).
    pub store: Option<String>,
    /// Alternating rounds of baseline and operation.
    pub rounds: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self { ops: 10_000, concurrency: 64, records: 1_000, store: None, rounds: 4 }
    }
}

/// Timings of one side of a scenario.
#[derive(Debug, Clone)]
pub struct Stats {
    ops: u64,
    seconds: f64,
    latency: Histogram<u64>,
}

impl Stats {
    fn new() -> Self {
        // Up to an hour, in nanoseconds, three significant digits.
        let latency = Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
            .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()));
        Self { ops: 0, seconds: 0.0, latency }
    }

    fn record(&mut self, elapsed: Duration) {
        let _ = self.latency.record(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1));
    }

    fn add(&mut self, other: &Self) {
        self.ops += other.ops;
        self.seconds += other.seconds;
        let _ = self.latency.add(&other.latency);
    }

    /// Operations per second.
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 { self.ops as f64 / self.seconds } else { 0.0 }
    }

    /// The latency at `quantile` (0.5, 0.99), in microseconds.
    pub fn micros(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1_000.0
    }

    /// Operations timed.
    pub fn ops(&self) -> u64 {
        self.ops
    }
}

/// One line of the table: an operation and its baseline, from the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The scenario.
    pub scenario: &'static str,
    /// What was timed.
    pub operation: &'static str,
    /// Its throughput, operations per second.
    pub ops_per_second: f64,
    /// Its median latency, µs.
    pub median_us: f64,
    /// Its 99th-percentile latency, µs.
    pub p99_us: f64,
    /// The baseline.
    pub baseline: &'static str,
    /// The baseline's throughput.
    pub baseline_ops_per_second: f64,
    /// The baseline's median latency, µs.
    pub baseline_median_us: f64,
    /// The baseline's 99th-percentile latency, µs.
    pub baseline_p99_us: f64,
    /// The operation's cost as a multiple of the baseline's (baseline throughput over the
    /// operation's).
    pub cost: f64,
    /// Operations timed on each side.
    pub ops: u64,
}

impl Row {
    fn new(scenario: Scenario, operation: &'static str, op: &Stats, baseline: &'static str, base: &Stats) -> Self {
        let cost = if op.per_second() > 0.0 { base.per_second() / op.per_second() } else { f64::INFINITY };
        Self {
            scenario: scenario.name(),
            operation,
            ops_per_second: op.per_second(),
            median_us: op.micros(0.5),
            p99_us: op.micros(0.99),
            baseline,
            baseline_ops_per_second: base.per_second(),
            baseline_median_us: base.micros(0.5),
            baseline_p99_us: base.micros(0.99),
            cost,
            ops: op.ops(),
        }
    }
}

/// Times `ops` calls of `op` over `concurrency` tasks.
async fn measure<F, Fut>(ops: usize, concurrency: usize, op: F) -> Stats
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..concurrency.max(1) {
        let op = op.clone();
        let step = concurrency.max(1);
        tasks.spawn(async move {
            let mut stats = Stats::new();
            for i in (t..ops).step_by(step) {
                let at = Instant::now();
                op(i).await;
                stats.record(at.elapsed());
                stats.ops += 1;
            }
            stats
        });
    }
    let mut total = Stats::new();
    for stats in tasks.join_all().await {
        total.add(&stats);
    }
    total.seconds = started.elapsed().as_secs_f64();
    total
}

/// Times `ops` calls of `op` on this thread.
fn measure_sync(ops: usize, mut op: impl FnMut(usize)) -> Stats {
    let mut stats = Stats::new();
    let started = Instant::now();
    for i in 0..ops {
        let at = Instant::now();
        op(i);
        stats.record(at.elapsed());
    }
    stats.seconds = started.elapsed().as_secs_f64();
    stats.ops = ops as u64;
    stats
}

/// Runs the baseline and the operation in alternating rounds; returns (operation, baseline).
async fn pair<B, BF, O, OF>(options: &Options, base: B, op: O) -> (Stats, Stats)
where
    B: Fn(usize) -> BF + Clone + Send + Sync + 'static,
    BF: Future<Output = ()> + Send + 'static,
    O: Fn(usize) -> OF + Clone + Send + Sync + 'static,
    OF: Future<Output = ()> + Send + 'static,
{
    let rounds = options.rounds.max(1);
    let per_round = options.ops.div_ceil(rounds);
    // A short warm-up of each, untimed.
    measure((per_round / 10).max(1), options.concurrency, base.clone()).await;
    measure((per_round / 10).max(1), options.concurrency, op.clone()).await;
    let (mut o, mut b) = (Stats::new(), Stats::new());
    for round in 0..rounds {
        let offset = round * per_round;
        let base = base.clone();
        b.add(&measure(per_round, options.concurrency, move |i| base(offset + i)).await);
        let op = op.clone();
        o.add(&measure(per_round, options.concurrency, move |i| op(offset + i)).await);
    }
    (o, b)
}

fn pair_sync(options: &Options, mut base: impl FnMut(usize), mut op: impl FnMut(usize)) -> (Stats, Stats) {
    let rounds = options.rounds.max(1);
    let per_round = options.ops.div_ceil(rounds);
    measure_sync((per_round / 10).max(1), &mut base);
    measure_sync((per_round / 10).max(1), &mut op);
    let (mut o, mut b) = (Stats::new(), Stats::new());
    for _ in 0..rounds {
        b.add(&measure_sync(per_round, &mut base));
        o.add(&measure_sync(per_round, &mut op));
    }
    (o, b)
}

// ---------------------------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------------------------

fn caller(kind: PrincipalKind, region: &str, site: &str, purpose: &str) -> Caller {
    Caller {
        principal: Principal {
            id: format!("bench-{site}").parse().unwrap_or_else(|_| unreachable!()),
            kind,
            home_region: region.parse().unwrap_or_else(|_| unreachable!()),
            site: site.parse().unwrap_or_else(|_| unreachable!()),
            roles: vec!["support".into()],
        },
        origin: Origin::Site {
            site: site.parse().unwrap_or_else(|_| unreachable!()),
            region: region.parse().unwrap_or_else(|_| unreachable!()),
        },
        purpose: Some(purpose.into()),
        justification: None,
    }
}

/// A gateway on the default configuration, with records written through it.
struct Gateway {
    _dir: tempfile::TempDir,
    boundary: Arc<Boundary>,
    subjects: Arc<Vec<SubjectId>>,
    records: Arc<Vec<RecordId>>,
}

async fn gateway(options: &Options, progress: &dyn Fn(&str)) -> Result<Gateway, BenchError> {
    let dir = tempfile::tempdir().map_err(|e| fail("a temporary directory")(&e))?;
    let mut config = Config { data_dir: dir.path().join("data"), store: options.store.clone(), ..Config::default() };
    // The bench reads far more subjects than a person would: not a bulk export here.
    config.policy.bulk_threshold = i64::MAX;
    DataDir::new(&config.data_dir).init(&config.region).map_err(|e| fail("initialising")(&e))?;
    let boundary = Arc::new(Boundary::open(config).await.map_err(|e| fail("opening the gateway")(&e))?);
    let eu = caller(PrincipalKind::Service, "eu", "dublin-1", "support");
    let category: Category = "profile".parse().map_err(|e| fail("category")(&e))?;
    let subjects = options.records.div_ceil(10).max(1);
    progress(&format!("writing {} records over {subjects} subjects", options.records));
    let mut subject_ids = Vec::with_capacity(subjects);
    for s in 0..subjects {
        let subject: SubjectId = format!("bench-{s}").parse().map_err(|e| fail("subject id")(&e))?;
        // Adults: a subject of unknown age is treated as a minor, whom no transfer reaches.
        let adult = pipeline::SubjectMetadata {
            adult_on: Some(
                time::Date::from_calendar_date(2008, time::Month::January, 1).map_err(|e| fail("a date")(&e))?,
            ),
        };
        let metadata = serde_json::to_vec(&adult).map_err(|e| fail("metadata")(&e))?;
        let metadata =
            boundary.custody().seal_metadata(&subject, &metadata).await.map_err(|e| fail("sealing metadata")(&e))?;
        let row = clover_store::SubjectRow {
            subject_id: subject.clone(),
            home_region: "eu".parse().map_err(|e| fail("region")(&e))?,
            attributes: Vec::new(),
            metadata,
            created_at: time::OffsetDateTime::now_utc(),
        };
        boundary.store().insert_subject(&row).await.map_err(|e| fail("registering a subject")(&e))?;
        // The subject's data key, made against a logged write as the API does.
        let ask = pipeline::Ask { action: Action::Write, subject: &subject, record: None, subject_minor: false };
        let receipt = pipeline::decide_and_log(&boundary, &eu, EventKind::Write, &ask)
            .await
            .map_err(|e| fail("logging a subject's key")(&e))?;
        boundary.custody().create_data_key(&receipt).await.map_err(|e| fail("making a data key")(&e))?;
        subject_ids.push(subject);
    }
    let mut records = Vec::with_capacity(options.records);
    for r in 0..options.records.max(1) {
        let subject = &subject_ids[r % subjects];
        let fields = Fields::new(
            serde_json::json!({"display_name": format!("name {r}"), "city": "Galway"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        let (row, _) = pipeline::write(&boundary, &eu, subject, &category, &fields)
            .await
            .map_err(|e| fail("writing a record")(&e))?;
        records.push(row.record_id);
    }
    Ok(Gateway { _dir: dir, boundary, subjects: Arc::new(subject_ids), records: Arc::new(records) })
}

async fn gateway_scenario(scenario: Scenario, g: &Gateway, options: &Options) -> Result<Row, BenchError> {
    let (boundary, records, subjects) = (g.boundary.clone(), g.records.clone(), g.subjects.clone());
    let store_read = {
        let (boundary, records) = (boundary.clone(), records.clone());
        move |i: usize| {
            let (boundary, id) = (boundary.clone(), records[i % records.len()]);
            async move {
                let found = boundary.store().record(&id).await;
                assert!(matches!(found, Ok(Some(_))), "the bare read of record {id} failed");
            }
        }
    };
    let read_as = |who: Caller, allowed: bool| {
        let (boundary, records) = (boundary.clone(), records.clone());
        let who = Arc::new(who);
        move |i: usize| {
            let (boundary, id, who) = (boundary.clone(), records[i % records.len()], who.clone());
            async move {
                let read = pipeline::read(&boundary, &who, &id).await;
                assert_eq!(read.is_ok(), allowed, "an audited read of {id} was decided otherwise than expected");
            }
        }
    };
    let (op, base, operation, baseline) = match scenario {
        Scenario::Read => {
            let (o, b) =
                pair(options, store_read, read_as(caller(PrincipalKind::Service, "eu", "dublin-1", "support"), true))
                    .await;
            (o, b, "audited read, full view", "store read")
        }
        Scenario::Deny => {
            let (o, b) = pair(
                options,
                store_read,
                read_as(caller(PrincipalKind::Employee, "sg", "singapore-1", "support"), false),
            )
            .await;
            (o, b, "read refused from Singapore", "store read")
        }
        Scenario::Pseudonymised => {
            let virginia = caller(PrincipalKind::Employee, "us", "virginia-1", "analytics");
            let (_, fields, _) = pipeline::read(&boundary, &virginia, &records[0])
                .await
                .map_err(|e| fail("a pseudonymised read")(&e))?;
            if !String::from_utf8_lossy(&fields.to_bytes()).contains("tok_") {
                return Err(BenchError("a read from Virginia for analytics was not pseudonymised".into()));
            }
            let (o, b) = pair(options, store_read, read_as(virginia, true)).await;
            (o, b, "pseudonymised read from Virginia", "store read")
        }
        Scenario::Write => {
            let store_write = {
                let (boundary, subjects) = (boundary.clone(), subjects.clone());
                move |i: usize| {
                    let boundary = boundary.clone();
                    let row = clover_store::RecordRow {
                        record_id: RecordId::random(),
                        subject_id: subjects[i % subjects.len()].clone(),
                        category: "profile".parse().unwrap_or_else(|_| unreachable!()),
                        home_region: "eu".parse().unwrap_or_else(|_| unreachable!()),
                        version: 1,
                        ciphertext: vec![7; 80],
                        created_at: time::OffsetDateTime::now_utc(),
                    };
                    async move {
                        assert!(boundary.store().insert_record(&row).await.is_ok(), "a bare write failed");
                    }
                }
            };
            let audited_write = {
                let (boundary, subjects) = (boundary.clone(), subjects.clone());
                let eu = Arc::new(caller(PrincipalKind::Service, "eu", "dublin-1", "support"));
                move |i: usize| {
                    let (boundary, subject, eu) = (boundary.clone(), subjects[i % subjects.len()].clone(), eu.clone());
                    async move {
                        let fields = Fields::new(
                            serde_json::json!({"display_name": "x"}).as_object().cloned().unwrap_or_default(),
                        );
                        let category: Category = "profile".parse().unwrap_or_else(|_| unreachable!());
                        let written = pipeline::write(&boundary, &eu, &subject, &category, &fields).await;
                        assert!(written.is_ok(), "an audited write failed");
                    }
                }
            };
            let (o, b) = pair(options, store_write, audited_write).await;
            (o, b, "audited write", "store write")
        }
        _ => return Err(BenchError(format!("{} is not a gateway scenario", scenario.name()))),
    };
    Ok(Row::new(scenario, operation, &op, baseline, &base))
}

// ---------------------------------------------------------------------------------------------
// The log, decisions, sealing
// ---------------------------------------------------------------------------------------------

/// An allowed read as the gateway logs it.
fn event(n: usize) -> Event {
    let subject = format!("{:064x}", n % 4096);
    Event {
        v: clover_log::event::EVENT_VERSION,
        kind: EventKind::Access,
        time: 1_795_426_787 + (n / 100) as i64,
        principal: Some(EventPrincipal {
            id: format!("emp-{:05}", n % 700),
            kind: "employee".into(),
            region: "eu".into(),
            site: "dublin-1".into(),
        }),
        origin: Some(EventOrigin { site: Some("dublin-1".into()), region: Some("eu".into()) }),
        action: Some("read".into()),
        subject: Some(subject),
        record: Some(format!("0b8e6f7a-3c1d-4f2e-9a5b-{n:012x}")),
        category: Some("contact".into()),
        decision: Some(EventDecision {
            effect: "allow".into(),
            view: Some("full".into()),
            policies: vec!["in-region-access".into()],
        }),
        purpose: Some("support".into()),
        justification: None,
        detail: None,
    }
}

/// The baseline of an append: the same bytes, framed as the log frames them, written to a plain
/// file by one thread that takes whatever is waiting, writes it at once and `fdatasync`s it
/// before acknowledging (group commit without a tree or a checkpoint).
#[derive(Clone)]
struct PlainWriter {
    sender: std::sync::mpsc::Sender<(Vec<u8>, tokio::sync::oneshot::Sender<()>)>,
}

impl PlainWriter {
    fn open(path: &Path) -> Result<Self, BenchError> {
        let mut file = std::fs::File::create(path).map_err(|e| fail("the plain append file")(&e))?;
        let (sender, receiver) = std::sync::mpsc::channel::<(Vec<u8>, tokio::sync::oneshot::Sender<()>)>();
        std::thread::spawn(move || {
            while let Ok(first) = receiver.recv() {
                let mut batch = vec![first];
                while let Ok(next) = receiver.try_recv() {
                    batch.push(next);
                }
                let mut buf = Vec::new();
                for (entry, _) in &batch {
                    buf.extend_from_slice(&u16::try_from(entry.len()).unwrap_or(u16::MAX).to_be_bytes());
                    buf.extend_from_slice(entry);
                }
                if file.write_all(&buf).and_then(|()| file.sync_data()).is_err() {
                    return;
                }
                for (_, done) in batch {
                    let _ = done.send(());
                }
            }
        });
        Ok(Self { sender })
    }

    async fn append(&self, entry: Vec<u8>) {
        let (done, wait) = tokio::sync::oneshot::channel();
        assert!(self.sender.send((entry, done)).is_ok(), "the plain writer stopped");
        assert!(wait.await.is_ok(), "the plain writer failed");
    }
}

async fn append_scenario(options: &Options) -> Result<Row, BenchError> {
    let dir = tempfile::tempdir().map_err(|e| fail("a temporary directory")(&e))?;
    let signer = SigningKey::generate("clover.bench/eu", TYPE_ED25519).map_err(|e| fail("a signing key")(&e))?;
    let log = Log::open(&dir.path().join("log"), signer, LogOptions::default()).map_err(|e| fail("the log")(&e))?;
    let plain = PlainWriter::open(&dir.path().join("plain"))?;
    let events: Arc<Vec<Event>> = Arc::new((0..4096).map(event).collect());
    let base = {
        let events = events.clone();
        move |i: usize| {
            let (plain, entry) = (plain.clone(), events[i % events.len()].encode());
            async move { plain.append(entry).await }
        }
    };
    let op = move |i: usize| {
        let (log, events) = (log.clone(), events.clone());
        async move {
            assert!(log.append(&events[i % events.len()]).await.is_ok(), "a log append failed");
        }
    };
    let (o, b) = pair(options, base, op).await;
    Ok(Row::new(Scenario::Append, "durable log append + checkpoint", &o, "plain fsynced append", &b))
}

fn pack_request() -> PackRequest {
    PackRequest {
        boundary_region: "eu".into(),
        principal: PackPrincipal {
            kind: PrincipalKind::Employee,
            id: "ana".into(),
            home_region: "eu".into(),
            site: "dublin-1".into(),
            roles: vec!["agent".into()],
        },
        action: Action::Read,
        resource: PackResource::Record {
            id: "0b8e6f7a-3c1d-4f2e-9a5b-6c7d8e9f0a1b".into(),
            category: "profile".into(),
            sensitive: false,
            subject_minor: false,
            home_region: "eu".into(),
        },
        origin: Some(("dublin-1".into(), "eu".into())),
        purpose: Some("support".into()),
        purpose_declared: true,
        purpose_allowed_for_category: true,
        purpose_allows_transfer: false,
        has_justification: false,
        approved: false,
        subjects_touched: 3,
        bulk_threshold: 50,
    }
}

fn decide_scenario(options: &Options) -> Result<Row, BenchError> {
    let pack = PolicyPack::default_pack().map_err(|e| fail("the policy pack")(&e))?;
    let trivial = PolicyPack::from_sources(
        DEFAULT_SCHEMA,
        &[("trivial.cedar".into(), "@id(\"all\") permit (principal, action, resource);".into())],
    )
    .map_err(|e| fail("the trivial policy")(&e))?;
    let request = pack_request();
    if pack.decide(&request).effect() != "allow" || trivial.decide(&request).effect() != "allow" {
        return Err(BenchError("the decision scenario's request is not allowed".into()));
    }
    let (o, b) = pair_sync(
        options,
        |_| {
            std::hint::black_box(trivial.decide(std::hint::black_box(&request)));
        },
        |_| {
            std::hint::black_box(pack.decide(std::hint::black_box(&request)));
        },
    );
    Ok(Row::new(Scenario::Decide, "policy pack, allowed read", &o, "trivial Cedar policy", &b))
}

fn seal_scenario(options: &Options) -> Result<Row, BenchError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| BenchError("no randomness".into()))?;
    let key = clover_keys::DataKey::from_slice(&bytes).map_err(|e| fail("a data key")(&e))?;
    let raw = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.expose()).map_err(|e| fail("a raw key")(&e))?);
    let region = "eu".parse().map_err(|e| fail("region")(&e))?;
    let subject: SubjectId = "bench-0".parse().map_err(|e| fail("subject")(&e))?;
    let record = RecordId::random();
    let fields = Fields::new(
        serde_json::json!({"display_name": "Aoife Byrne", "city": "Galway", "email": "aoife@example.ie"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    let plaintext = fields.to_bytes();
    let (o, b) = pair_sync(
        options,
        |_| {
            let mut nonce = [0u8; NONCE_LEN];
            assert!(aws_lc_rs::rand::fill(&mut nonce).is_ok(), "no randomness");
            let mut in_out = plaintext.clone();
            let sealed = raw.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(b"same-length-aad-same-length-aad-"),
                &mut in_out,
            );
            assert!(sealed.is_ok(), "raw AES-GCM failed");
            std::hint::black_box(in_out);
        },
        |_| {
            let aad = clover_keys::aad::record(&region, &subject, &record, 1);
            std::hint::black_box(key.seal(&aad, &fields.to_bytes()).ok());
        },
    );
    Ok(Row::new(Scenario::Seal, "record fields sealed (AAD, JSON)", &o, "raw AES-256-GCM, same bytes", &b))
}

/// Runs `scenarios` and returns one row each; `progress` hears what is being done.
pub async fn run(scenarios: &[Scenario], options: &Options, progress: &dyn Fn(&str)) -> Result<Vec<Row>, BenchError> {
    let mut rows = Vec::new();
    let gateway =
        if scenarios.iter().any(|s| s.needs_gateway()) { Some(gateway(options, progress).await?) } else { None };
    for &scenario in scenarios {
        progress(&format!("{}: {} operations and as many of its baseline", scenario.name(), options.ops));
        let row = match (scenario, &gateway) {
            (Scenario::Append, _) => append_scenario(options).await?,
            (Scenario::Decide, _) => decide_scenario(options)?,
            (Scenario::Seal, _) => seal_scenario(options)?,
            (_, Some(g)) => gateway_scenario(scenario, g, options).await?,
            (_, None) => return Err(BenchError("no gateway".into())),
        };
        rows.push(row);
    }
    Ok(rows)
}

/// A throughput in operations per second, shortened (`16.3k`).
pub fn rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2}M", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.1}k", per_second / 1e3)
    } else {
        format!("{per_second:.0}")
    }
}

/// A latency in µs, in the unit that reads best.
pub fn latency(micros: f64) -> String {
    if micros >= 1_000.0 { format!("{:.2} ms", micros / 1_000.0) } else { format!("{micros:.1} µs") }
}

/// The rows as a table.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<14} {:<34} {:>9} {:>10} {:>10}   {:<28} {:>9} {:>10} {:>10}   {:>6}\n",
        "scenario", "operation", "ops/s", "median", "p99", "baseline (same run)", "ops/s", "median", "p99", "cost"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<14} {:<34} {:>9} {:>10} {:>10}   {:<28} {:>9} {:>10} {:>10}   {:>5.2}×\n",
            r.scenario,
            r.operation,
            rate(r.ops_per_second),
            latency(r.median_us),
            latency(r.p99_us),
            r.baseline,
            rate(r.baseline_ops_per_second),
            latency(r.baseline_median_us),
            latency(r.baseline_p99_us),
            r.cost
        ));
    }
    out
}
