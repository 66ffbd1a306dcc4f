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

pub mod http;
pub mod monitor;
pub mod transfer;

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use clover_event::{Event, EventKind};
use clover_gateway::pipeline::{self, Caller};
use clover_gateway::{Boundary, Config, DataDir};
use clover_log::{Log, LogOptions};
use clover_model::{Action, Category, Fields, PrincipalKind, RecordId, SubjectId};
use clover_policy::pack::{DEFAULT_SCHEMA, PackRequest, PolicyPack};
use clover_testkit::fixtures;
use clover_tlog::note::{SigningKey, TYPE_ED25519};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BenchError(String);

/// What failed, with the error and the errors that caused it.
fn fail(what: &str) -> impl Fn(&dyn std::error::Error) -> BenchError + '_ {
    move |e| BenchError(format!("{what}: {}", clover_gateway::report::Chain(e)))
}

/// A named scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// An audited read, in full, from the region (the bare store read as baseline).
    Read,
    /// An audited write (the bare store write, batched as the audited one is).
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
    /// Keep each gateway's data directory under this directory (`records-N`, ...), to serve it
    /// afterwards (`clover serve --data-dir`), instead of a temporary one removed after.
    pub keep: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self { ops: 10_000, concurrency: 64, records: 1_000, store: None, rounds: 4, keep: None }
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
        // Nanoseconds, three significant digits, growing as needed (3 is a valid precision).
        let latency = Histogram::new(3).unwrap_or_else(|_| unreachable!());
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

/// A caller declaring `purpose`, holding the role the default configuration names for it (each
/// purpose the bench declares, `support` and `analytics`, names the role of its own name).
fn caller(kind: PrincipalKind, region: &str, site: &str, purpose: &str) -> Caller {
    Caller {
        principal: fixtures::principal(&format!("bench-{site}"), kind, region, site, &[purpose]),
        origin: fixtures::origin(site, region),
        purpose: Some(purpose.into()),
        justification: None,
        address: std::net::IpAddr::from([127, 0, 0, 1]),
    }
}

/// A gateway on the default configuration, with records written through it.
struct Gateway {
    _dir: tempfile::TempDir,
    boundary: Arc<Boundary>,
    subjects: Arc<Round<SubjectId>>,
    records: Arc<Round<RecordId>>,
    /// Each record version's key, as its write got it, when asked for (the transfer bench's
    /// baseline opens the records with them, with no custodian, rules or log).
    keys: std::collections::HashMap<RecordId, clover_keys::DataKey>,
}

/// What the records of a bench's gateway hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fixture {
    /// A name and a city (the read scenarios').
    Small,
    /// A profile as the default transfer rules treat it (name, phone, postcode, birth date,
    /// country, address, time), and the records' keys kept.
    Profile,
}

/// A gateway with `subjects` adult subjects (each with a data key made against a logged write,
/// as the API does) and `records` records over them, each sealed with its own key against a
/// logged write (as the API does: the custodian hands out one record version's key per
/// receipt) and imported in transactions of 10,000.
async fn gateway(
    options: &Options,
    records: usize,
    subjects: usize,
    progress: &dyn Fn(&str),
) -> Result<Gateway, BenchError> {
    gateway_of(options, records, subjects, Fixture::Small, progress).await
}

/// [`gateway`], with records of `fixture`.
async fn gateway_of(
    options: &Options,
    records: usize,
    subjects: usize,
    fixture: Fixture,
    progress: &dyn Fn(&str),
) -> Result<Gateway, BenchError> {
    let dir = tempfile::tempdir().map_err(|e| fail("a temporary directory")(&e))?;
    let data_dir = match &options.keep {
        Some(keep) => keep.join(format!("records-{records}-subjects-{subjects}")),
        None => dir.path().join("data"),
    };
    let mut config = Config { data_dir, store: options.store.clone(), ..Config::default() };
    // The bench reads far more subjects than a person would: not a bulk export here.
    config.policy.bulk_threshold = i64::MAX;
    DataDir::new(&config.data_dir).init(&config.region).map_err(|e| fail("initialising")(&e))?;
    let boundary = Arc::new(Boundary::open(config).await.map_err(|e| fail("opening the gateway")(&e))?);
    let (records, subjects) = (records.max(1), subjects.max(1));
    progress(&format!("registering {subjects} subjects"));
    let mut registered = Vec::with_capacity(subjects);
    for chunk in (0..subjects).collect::<Vec<_>>().chunks(256) {
        let mut tasks = tokio::task::JoinSet::new();
        for &s in chunk {
            let boundary = boundary.clone();
            tasks.spawn(async move { register(&boundary, s).await.map(|(id, key)| (s, id, key)) });
        }
        let mut done = tasks.join_all().await.into_iter().collect::<Result<Vec<_>, _>>()?;
        done.sort_by_key(|(s, _, _)| *s);
        registered.extend(done.into_iter().map(|(_, id, key)| (id, key)));
    }
    let keyed = Round::new(registered, "subjects")?;
    progress(&format!("importing {records} records"));
    let mut ids = Vec::with_capacity(records);
    let mut keys = std::collections::HashMap::new();
    let eu = Arc::new(caller(PrincipalKind::Service, "eu", "dublin-1", "support"));
    for first in (0..records).step_by(10_000) {
        let mut rows = Vec::with_capacity(10_000);
        let chunk: Vec<usize> = (first..(first + 10_000).min(records)).collect();
        for group in chunk.chunks(256) {
            let mut tasks = tokio::task::JoinSet::new();
            for &r in group {
                let (boundary, eu, subject) = (boundary.clone(), eu.clone(), keyed.at(r).0.clone());
                tasks.spawn(async move { import(&boundary, &eu, &subject, r, fixture).await });
            }
            for imported in tasks.join_all().await {
                let (row, key) = imported?;
                if fixture == Fixture::Profile {
                    keys.insert(row.record_id, key);
                }
                rows.push(row);
            }
        }
        rows.sort_by_key(|row| row.record_id);
        ids.extend(rows.iter().map(|row| row.record_id));
        boundary.store().insert_records(&rows).await.map_err(|e| fail("importing records")(&e))?;
    }
    let subject_ids = keyed.into_items().map(|(id, _)| id).collect();
    Ok(Gateway {
        _dir: dir,
        boundary,
        subjects: Arc::new(Round::new(subject_ids, "subjects")?),
        records: Arc::new(Round::new(ids, "records")?),
        keys,
    })
}

/// A non-empty list of fixtures (records, subjects, events) that operations go round: `at`
/// always has an item to give, without indexing that could panic.
#[derive(Debug)]
struct Round<T> {
    first: T,
    rest: Vec<T>,
}

impl<T> Round<T> {
    /// The list, or an error naming `what` when it is empty.
    fn new(items: Vec<T>, what: &str) -> Result<Self, BenchError> {
        let mut items = items.into_iter();
        let first = items.next().ok_or_else(|| BenchError(format!("no {what} to go round")))?;
        Ok(Self { first, rest: items.collect() })
    }

    fn len(&self) -> usize {
        self.rest.len() + 1
    }

    /// The `i`th item, going round.
    fn at(&self, i: usize) -> &T {
        match i % self.len() {
            0 => &self.first,
            i => self.rest.get(i - 1).unwrap_or(&self.first),
        }
    }

    /// The `i`th item in a scattered order (see [`spread`]).
    fn scattered(&self, i: usize) -> &T {
        self.at(spread(i, self.len()))
    }

    /// Every item, in order.
    fn into_items(self) -> impl Iterator<Item = T> {
        std::iter::once(self.first).chain(self.rest)
    }
}

/// The `i`th pick among `len` items, scattered (a multiplicative hash), so that consecutive
/// operations read records far apart, as a platform's would.
fn spread(i: usize, len: usize) -> usize {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15_u64 as usize) >> 7) % len.max(1)
}

/// Record number `r` of `subject`, written as the API writes one (its write logged, its key from
/// the custodian against the receipt), for an import in one transaction: ids in ascending
/// order, so that the import appends to the primary-key index instead of scattering into it
/// (ten million random keys outgrow the cache); reads pick records in a scattered order
/// (`spread`) all the same.
async fn import(
    boundary: &Boundary,
    eu: &Caller,
    subject: &SubjectId,
    r: usize,
    fixture: Fixture,
) -> Result<(clover_store::RecordRow, clover_keys::DataKey), BenchError> {
    let record_id: RecordId = format!("00000000-0000-4000-8000-{r:012x}").parse().map_err(|e| fail("record id")(&e))?;
    let category: clover_model::Category = "profile".parse().map_err(|e| fail("category")(&e))?;
    let country = match r % 3 {
        0 => "IE",
        1 => "NO",
        _ => "DE",
    };
    let fields = match fixture {
        Fixture::Small => serde_json::json!({"display_name": format!("name {r}"), "city": "Galway"}),
        Fixture::Profile => serde_json::json!({
            "display_name": format!("name {r}"), "username": format!("user{r}"), "email": format!("u{r}@example.ie"),
            "phone": format!("+353 87 {:03} {:04}", r % 1000, r % 10_000), "postcode": "D02 X285",
            "birth_date": format!("{}-05-01", 1950 + r % 50), "country": country,
            "last_ip": format!("192.0.{}.{}", r % 4, r % 200), "created_at": "2026-11-30T10:00:00Z",
        }),
    };
    let fields = Fields::new(fields.as_object().cloned().unwrap_or_default());
    let ask = pipeline::Ask {
        action: Action::Write,
        subject,
        record: Some((record_id, &category)),
        version: Some(1),
        subject_minor: false,
    };
    let receipt = pipeline::decide_and_log(boundary, eu, EventKind::Write, &ask)
        .await
        .map_err(|e| fail("logging a write")(&e))?;
    let key = boundary.custody().data_key(&receipt).await.map_err(|e| fail("a record's key")(&e))?;
    let ciphertext = pipeline::seal_record(boundary, &key, subject, &record_id, 1, &fields)
        .map_err(|e| fail("sealing a record")(&e))?;
    let row = clover_store::RecordRow {
        record_id,
        subject_id: subject.clone(),
        category,
        home_region: "eu".parse().map_err(|e| fail("region")(&e))?,
        version: 1,
        ciphertext,
        created_at: time::OffsetDateTime::now_utc(),
        sealed_with: clover_store::SealedWith::RecordKey,
    };
    Ok((row, key))
}

/// Registers adult subject number `s`: its metadata sealed, its row, its data key.
async fn register(boundary: &Boundary, s: usize) -> Result<(SubjectId, clover_keys::DataKey), BenchError> {
    let eu = caller(PrincipalKind::Service, "eu", "dublin-1", "support");
    let subject: SubjectId = format!("bench-{s}").parse().map_err(|e| fail("subject id")(&e))?;
    // Adults: a subject of unknown age is treated as a minor, whom no transfer reaches.
    let adult = pipeline::SubjectMetadata {
        adult_on: Some(time::Date::from_calendar_date(2008, time::Month::January, 1).map_err(|e| fail("a date")(&e))?),
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
    let ask =
        pipeline::Ask { action: Action::Write, subject: &subject, record: None, version: None, subject_minor: false };
    let receipt = pipeline::decide_and_log(boundary, &eu, EventKind::Write, &ask)
        .await
        .map_err(|e| fail("logging a subject's key")(&e))?;
    let key = boundary.custody().create_data_key(&receipt).await.map_err(|e| fail("making a data key")(&e))?;
    Ok((subject, key))
}

async fn gateway_scenario(scenario: Scenario, g: &Gateway, options: &Options) -> Result<Row, BenchError> {
    let (boundary, records, subjects) = (g.boundary.clone(), g.records.clone(), g.subjects.clone());
    let store_read = {
        let (boundary, records) = (boundary.clone(), records.clone());
        move |i: usize| {
            let (boundary, id) = (boundary.clone(), *records.scattered(i));
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
            let (boundary, id, who) = (boundary.clone(), *records.scattered(i), who.clone());
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
            let (_, fields, _) = pipeline::read(&boundary, &virginia, records.at(0))
                .await
                .map_err(|e| fail("a pseudonymised read")(&e))?;
            if !String::from_utf8_lossy(&fields.fields.to_bytes()).contains("tok_") {
                return Err(BenchError("a read from Virginia for analytics was not pseudonymised".into()));
            }
            let (o, b) = pair(options, store_read, read_as(virginia, true)).await;
            (o, b, "pseudonymised read from Virginia", "store read")
        }
        Scenario::Write => {
            // The baseline writes its rows as the audited write does, grouped: every row waiting
            // in one transaction (a batched bare insert, no decision, log, key or seal).
            let batched = {
                let store = boundary.store().clone();
                Arc::new(clover_store::GroupCommit::start("bench rows", move |rows: Vec<clover_store::RecordRow>| {
                    let store = store.clone();
                    async move { store.insert_records(&rows).await }
                }))
            };
            let store_write = {
                let (batched, subjects) = (batched.clone(), subjects.clone());
                move |i: usize| {
                    let batched = batched.clone();
                    let row = clover_store::RecordRow {
                        record_id: RecordId::random(),
                        subject_id: subjects.at(i).clone(),
                        category: "profile".parse().unwrap_or_else(|_| unreachable!()),
                        home_region: "eu".parse().unwrap_or_else(|_| unreachable!()),
                        version: 1,
                        ciphertext: vec![7; 80],
                        created_at: time::OffsetDateTime::now_utc(),
                        sealed_with: clover_store::SealedWith::RecordKey,
                    };
                    async move {
                        assert!(batched.write(row).await.is_ok(), "a bare write failed");
                    }
                }
            };
            let audited_write = {
                let (boundary, subjects) = (boundary.clone(), subjects.clone());
                let eu = Arc::new(caller(PrincipalKind::Service, "eu", "dublin-1", "support"));
                move |i: usize| {
                    let (boundary, subject, eu) = (boundary.clone(), subjects.at(i).clone(), eu.clone());
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
            (o, b, "audited write", "store write, batched")
        }
        _ => return Err(BenchError(format!("{} is not a gateway scenario", scenario.name()))),
    };
    Ok(Row::new(scenario, operation, &op, baseline, &base))
}

// ---------------------------------------------------------------------------------------------
// The log, decisions, sealing
// ---------------------------------------------------------------------------------------------

/// A realistic allowed read as the gateway logs it (the test kit's, shared with the log's bench).
fn event(n: usize) -> Event {
    clover_testkit::fixtures::access_event(n)
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

/// Appends to a log that already holds `prefill` entries.
async fn append_scenario(options: &Options, prefill: usize) -> Result<Row, BenchError> {
    let dir = tempfile::tempdir().map_err(|e| fail("a temporary directory")(&e))?;
    let signer = SigningKey::generate("clover.bench/eu", TYPE_ED25519).map_err(|e| fail("a signing key")(&e))?;
    let log = Log::open(&dir.path().join("log"), signer, LogOptions::default()).map_err(|e| fail("the log")(&e))?;
    if prefill > 0 {
        let filler = log.clone();
        measure(prefill, 1024, move |i| {
            let log = filler.clone();
            async move {
                assert!(log.append(&event(i)).await.is_ok(), "filling the log failed");
            }
        })
        .await;
    }
    let plain = PlainWriter::open(&dir.path().join("plain"))?;
    let events: Arc<Round<Event>> = Arc::new(Round::new((0..4096).map(event).collect(), "events")?);
    let base = {
        let events = events.clone();
        move |i: usize| {
            let (plain, entry) = (plain.clone(), events.at(i).encode());
            async move { plain.append(entry).await }
        }
    };
    let op = move |i: usize| {
        let (log, events) = (log.clone(), events.clone());
        async move {
            assert!(log.append(events.at(i)).await.is_ok(), "a log append failed");
        }
    };
    let (o, b) = pair(options, base, op).await;
    Ok(Row::new(Scenario::Append, "durable log append + checkpoint", &o, "plain fsynced append", &b))
}

/// The allowed profile read the decision scenario decides (the test kit's, shared with the
/// policy crate's bench).
fn pack_request() -> PackRequest {
    clover_testkit::fixtures::read_profile_request()
}

/// Decides with the default pack and `extra` more policies on reads (each a `forbid` that never
/// matches, but that Cedar evaluates for every read).
fn decide_scenario(options: &Options, extra: usize) -> Result<Row, BenchError> {
    let extra: String = (0..extra)
        .map(|i| {
            format!(
                "@id(\"extra-{i}\")\nforbid (principal, action == Clover::Action::\"read\", resource)\n\
                 when {{ context.purpose == \"never-{i}\" }};\n"
            )
        })
        .collect();
    let pack = PolicyPack::from_sources(
        DEFAULT_SCHEMA,
        &[("default.cedar".into(), clover_policy::pack::DEFAULT_POLICIES.into()), ("extra.cedar".into(), extra)],
    )
    .map_err(|e| fail("the policy pack")(&e))?;
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
    let gateway = if scenarios.iter().any(|s| s.needs_gateway()) {
        Some(gateway(options, options.records, options.records.div_ceil(10), progress).await?)
    } else {
        None
    };
    for &scenario in scenarios {
        progress(&format!("{}: {} operations and as many of its baseline", scenario.name(), options.ops));
        let row = match (scenario, &gateway) {
            (Scenario::Append, _) => append_scenario(options, 0).await?,
            (Scenario::Decide, _) => decide_scenario(options, 0)?,
            (Scenario::Seal, _) => seal_scenario(options)?,
            (_, Some(g)) => gateway_scenario(scenario, g, options).await?,
            (_, None) => return Err(BenchError("no gateway".into())),
        };
        rows.push(row);
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Scale curves
// ---------------------------------------------------------------------------------------------

/// The sizes a scale run goes through, on each axis.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Records in the store (audited read against store read; one subject per ten records, at
    /// most `max_subjects`).
    pub records: Vec<usize>,
    /// The most subjects over the records axis (1,000 unless set).
    pub max_subjects: usize,
    /// Subjects, one record each (audited read against store read).
    pub subjects: Vec<usize>,
    /// Policies added to the default pack (decision against a trivial policy).
    pub policies: Vec<usize>,
    /// Entries already in the log (append against a plain fsynced append).
    pub log: Vec<usize>,
    /// Operations, concurrency and rounds of each point.
    pub run: Options,
}

/// One point of a curve.
#[derive(Debug, Clone, Serialize)]
pub struct ScalePoint {
    /// `records`, `subjects`, `policies` or `log`.
    pub axis: &'static str,
    /// The size on that axis.
    pub size: usize,
    /// The operation and its baseline at that size.
    #[serde(flatten)]
    pub row: Row,
    /// This process's resident memory after the point (MiB): the gateway, its store, log and
    /// custodian as `clover serve` runs them, with the bench's own lists of ids.
    pub rss_mib: f64,
}

/// This process's resident memory, in MiB.
fn rss_mib() -> f64 {
    procfs::process::Process::myself()
        .and_then(|p| p.statm())
        .map_or(0.0, |statm| (statm.resident * procfs::page_size()) as f64 / (1024.0 * 1024.0))
}

/// Measures each axis at each of its sizes.
pub async fn scale(options: &ScaleOptions, progress: &dyn Fn(&str)) -> Result<Vec<ScalePoint>, BenchError> {
    let mut points = Vec::new();
    for &n in &options.records {
        progress(&format!("records: {n}"));
        let g = gateway(&options.run, n, n.div_ceil(10).clamp(1, options.max_subjects.max(1)), progress).await?;
        let row = gateway_scenario(Scenario::Read, &g, &options.run).await?;
        points.push(ScalePoint { axis: "records", size: n, row, rss_mib: rss_mib() });
    }
    for &n in &options.subjects {
        progress(&format!("subjects: {n}"));
        let g = gateway(&options.run, n, n, progress).await?;
        let row = gateway_scenario(Scenario::Read, &g, &options.run).await?;
        points.push(ScalePoint { axis: "subjects", size: n, row, rss_mib: rss_mib() });
    }
    for &n in &options.policies {
        progress(&format!("policies: the default pack and {n} more"));
        let row = decide_scenario(&options.run, n)?;
        points.push(ScalePoint { axis: "policies", size: n, row, rss_mib: rss_mib() });
    }
    for &n in &options.log {
        progress(&format!("log: {n} entries before the appends"));
        let row = append_scenario(&options.run, n).await?;
        points.push(ScalePoint { axis: "log", size: n, row, rss_mib: rss_mib() });
    }
    Ok(points)
}

/// The points as a table.
pub fn scale_table(points: &[ScalePoint]) -> String {
    let mut out = format!(
        "{:<9} {:>10}   {:<34} {:>9} {:>10}   {:<28} {:>9}   {:>6}   {:>8}\n",
        "axis", "size", "operation", "ops/s", "p99", "baseline", "ops/s", "cost", "rss MiB"
    );
    for p in points {
        out.push_str(&format!(
            "{:<9} {:>10}   {:<34} {:>9} {:>10}   {:<28} {:>9}   {:>5.2}×   {:>8.0}\n",
            p.axis,
            p.size,
            p.row.operation,
            rate(p.row.ops_per_second),
            latency(p.row.p99_us),
            p.row.baseline,
            rate(p.row.baseline_ops_per_second),
            p.row.cost,
            p.rss_mib
        ));
    }
    out
}

/// A size, shortened (`10k`, `1M`).
fn size_label(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// The curves as an SVG: one panel per axis, the operation's and the baseline's throughput
/// against the size (a logarithmic scale), each point labelled with the cost.
pub fn scale_svg(points: &[ScalePoint]) -> String {
    const W: f64 = 420.0;
    const H: f64 = 280.0;
    const LEFT: f64 = 64.0;
    const RIGHT: f64 = 36.0;
    const TOP: f64 = 36.0;
    const BOTTOM: f64 = 40.0;
    let axes: Vec<&str> = ["records", "subjects", "policies", "log"]
        .into_iter()
        .filter(|a| points.iter().any(|p| p.axis == *a))
        .collect();
    let columns = 2usize;
    let rows = axes.len().div_ceil(columns).max(1);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        W * columns as f64,
        H * rows as f64 + 24.0
    );
    svg.push_str(&format!(
        "<text x=\"8\" y=\"{}\" fill=\"#444\">solid: Clover's operation; dashed: its baseline in the same run; labels: cost (baseline ops/s ÷ operation ops/s)</text>\n",
        H * rows as f64 + 16.0
    ));
    for (k, axis) in axes.iter().enumerate() {
        let mine: Vec<&ScalePoint> = points.iter().filter(|p| p.axis == *axis).collect();
        let (ox, oy) = ((k % columns) as f64 * W, (k / columns) as f64 * H);
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let logs: Vec<f64> = mine.iter().map(|p| (p.size.max(1) as f64).log10()).collect();
        let (lo, hi) = logs.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let span = if hi > lo { hi - lo } else { 1.0 };
        let top =
            mine.iter().map(|p| p.row.ops_per_second.max(p.row.baseline_ops_per_second)).fold(0.0, f64::max) * 1.1;
        let top = if top > 0.0 { top } else { 1.0 };
        let x = |v: f64| ox + LEFT + if hi > lo { (v - lo) / span * pw } else { pw / 2.0 };
        let y = |v: f64| oy + TOP + ph - v / top * ph;
        let title = match *axis {
            "records" => "audited read vs store read, by records",
            "subjects" => "audited read vs store read, by subjects",
            "policies" => "decision vs trivial policy, by extra policies",
            _ => "log append vs plain fsynced append, by log size",
        };
        svg.push_str(&format!("<text x=\"{}\" y=\"{}\" font-weight=\"bold\">{title}</text>\n", ox + 8.0, oy + 18.0));
        svg.push_str(&format!(
            "<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"#888\"/><line x1=\"{0}\" y1=\"{2}\" x2=\"{3}\" y2=\"{2}\" stroke=\"#888\"/>\n",
            ox + LEFT,
            oy + TOP,
            oy + TOP + ph,
            ox + LEFT + pw
        ));
        for t in 0..=4 {
            let v = top * f64::from(t) / 4.0;
            svg.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#444\">{}/s</text><line x1=\"{}\" y1=\"{2}\" x2=\"{}\" y2=\"{2}\" stroke=\"#eee\"/>\n",
                ox + LEFT - 4.0,
                y(v) + 4.0,
                rate(v),
                ox + LEFT,
                ox + LEFT + pw
            ));
        }
        for (p, v) in mine.iter().zip(&logs) {
            svg.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#444\">{}</text>\n",
                x(*v),
                oy + TOP + ph + 16.0,
                size_label(p.size)
            ));
        }
        for (values, dash, colour) in [
            (mine.iter().map(|p| p.row.ops_per_second).collect::<Vec<_>>(), "", "#1f6f3f"),
            (
                mine.iter().map(|p| p.row.baseline_ops_per_second).collect::<Vec<_>>(),
                " stroke-dasharray=\"5,4\"",
                "#555",
            ),
        ] {
            let line: Vec<String> =
                logs.iter().zip(&values).map(|(l, v)| format!("{:.1},{:.1}", x(*l), y(*v))).collect();
            svg.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"{}\"/>\n",
                line.join(" ")
            ));
            for (l, v) in logs.iter().zip(&values) {
                svg.push_str(&format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>\n", x(*l), y(*v)));
            }
        }
        for (p, v) in mine.iter().zip(&logs) {
            svg.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#1f6f3f\">{:.2}×</text>\n",
                x(*v),
                y(p.row.ops_per_second) - 8.0,
                p.row.cost
            ));
        }
    }
    svg.push_str("</svg>\n");
    svg
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
