//! Audited reads and writes per second on SQLite and on PostgreSQL, in the same run.
//!
//! Run with `cargo bench -p clover-gateway --bench stores` (PostgreSQL: `CLOVER_TEST_POSTGRES`
//! names a server to make a database on, default `postgres://postgres@127.0.0.1:5432/postgres`;
//! the database is dropped at the end).
//!
//! Three set-ups, 64 concurrent tasks each:
//!
//! - `sqlite`: one gateway (`Boundary`), everything in its data directory (the embedded default);
//! - `postgres`: one gateway, its data store, log and key store in one PostgreSQL database;
//! - `postgres_2gw`: two gateways over that database, the tasks split between them; one of them
//!   sequences the log, the other hands its entries in (see `clover_log::postgres`). Both run in
//!   this process, on the same two cores: the figure is what sharing one log costs, not what a
//!   second machine would add.
//!
//! - `{backend}/store_read`, `{backend}/store_write`: `Store::record` and `Store::insert_record`
//!   alone, the baselines;
//! - `{backend}/audited_read`: `pipeline::read` (load, decide, log durably, key, decrypt, view);
//! - `{backend}/audited_write`: `pipeline::write` (load, decide, log durably, key, encrypt, store).
//!
//! HTTP is left out.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use clover_gateway::pipeline::{self, Caller};
use clover_gateway::{Boundary, Config, DataDir};
use clover_model::{Category, Fields, PrincipalKind, RecordId, SubjectId};
use clover_store::RecordRow;
use clover_testkit::fixtures;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const OPS: usize = 1_000;
const TASKS: usize = 64;

fn caller() -> Caller {
    Caller {
        principal: fixtures::principal("bench", PrincipalKind::Service, "eu", "dublin-1", &[]),
        origin: fixtures::origin("dublin-1", "eu"),
        purpose: Some("support".into()),
        justification: None,
        address: std::net::IpAddr::from([127, 0, 0, 1]),
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    boundaries: Vec<Arc<Boundary>>,
    subjects: Vec<SubjectId>,
    records: Vec<RecordId>,
}

async fn setup(store: Option<String>, gateways: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config { data_dir: dir.path().join("data"), store, ..Config::default() };
    config.policy.bulk_threshold = i64::MAX;
    DataDir::new(&config.data_dir).init(&config.region).unwrap();
    let boundary = Arc::new(Boundary::open(config.clone()).await.unwrap());
    let mut boundaries = vec![boundary.clone()];
    for _ in 1..gateways {
        // Another gateway of the region: the same keys and configuration, the same database.
        boundaries.push(Arc::new(Boundary::open(config.clone()).await.unwrap()));
    }
    let caller = caller();
    let category: Category = "profile".parse().unwrap();
    let mut subjects = Vec::new();
    let mut records = Vec::new();
    for s in 0..50 {
        let subject: SubjectId = format!("s-{s}").parse().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let row = clover_store::SubjectRow {
            subject_id: subject.clone(),
            home_region: "eu".parse().unwrap(),
            attributes: Vec::new(),
            metadata: Vec::new(),
            created_at: now,
        };
        boundary.store().insert_subject(&row).await.unwrap();
        // The subject's data key, made against a logged write as the API does.
        let ask = pipeline::Ask {
            action: clover_model::Action::Write,
            subject: &subject,
            record: None,
            version: None,
            subject_minor: false,
        };
        let receipt = pipeline::decide_and_log(&boundary, &caller, clover_event::EventKind::Write, &ask).await.unwrap();
        boundary.custody().create_data_key(&receipt).await.unwrap();
        for r in 0..4 {
            let fields =
                Fields::new(serde_json::json!({"display_name": format!("name {s}-{r}")}).as_object().unwrap().clone());
            let (row, _) = pipeline::write(&boundary, &caller, &subject, &category, &fields).await.unwrap();
            records.push(row.record_id);
        }
        subjects.push(subject);
    }
    Setup { _dir: dir, boundaries, subjects, records }
}

fn run(c: &mut Criterion, runtime: &tokio::runtime::Runtime, name: &str, setup: &Setup) {
    let boundaries = Arc::new(setup.boundaries.clone());
    let records = Arc::new(setup.records.clone());
    let subjects = Arc::new(setup.subjects.clone());
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(5))
        .warm_up_time(std::time::Duration::from_secs(1));
    group.throughput(Throughput::Elements(OPS as u64));
    macro_rules! tasks {
        ($body:expr) => {{
            let (boundaries, records, subjects) = (boundaries.clone(), records.clone(), subjects.clone());
            async move {
                let mut set = tokio::task::JoinSet::new();
                for t in 0..TASKS {
                    let boundary = boundaries[t % boundaries.len()].clone();
                    let (records, subjects) = (records.clone(), subjects.clone());
                    set.spawn(async move {
                        let caller = caller();
                        for i in (t..OPS).step_by(TASKS) {
                            $body(&boundary, &caller, &records, &subjects, i).await;
                        }
                    });
                }
                set.join_all().await;
            }
        }};
    }
    group.bench_function("store_read", |b| {
        b.to_async(runtime).iter(|| {
            tasks!(|boundary: &Arc<Boundary>,
                    _: &Caller,
                    records: &Arc<Vec<RecordId>>,
                    _: &Arc<Vec<SubjectId>>,
                    i: usize| {
                let (boundary, id) = (boundary.clone(), records[i % records.len()]);
                async move { black_box(boundary.store().record(&id).await.unwrap()) }
            })
        });
    });
    group.bench_function("store_write", |b| {
        b.to_async(runtime).iter(|| {
            tasks!(|boundary: &Arc<Boundary>,
                    _: &Caller,
                    _: &Arc<Vec<RecordId>>,
                    subjects: &Arc<Vec<SubjectId>>,
                    i: usize| {
                let boundary = boundary.clone();
                let row = RecordRow {
                    record_id: RecordId::random(),
                    subject_id: subjects[i % subjects.len()].clone(),
                    category: "profile".parse().unwrap(),
                    home_region: "eu".parse().unwrap(),
                    version: 1,
                    ciphertext: vec![7; 80],
                    created_at: time::OffsetDateTime::now_utc(),
                    sealed_with: clover_store::SealedWith::RecordKey,
                };
                async move { boundary.store().insert_record(&row).await.unwrap() }
            })
        });
    });
    group.bench_function("audited_read", |b| {
        b.to_async(runtime).iter(|| {
            tasks!(|boundary: &Arc<Boundary>,
                    caller: &Caller,
                    records: &Arc<Vec<RecordId>>,
                    _: &Arc<Vec<SubjectId>>,
                    i: usize| {
                let (boundary, caller, id) = (boundary.clone(), caller.clone(), records[i % records.len()]);
                async move { black_box(pipeline::read(&boundary, &caller, &id).await.unwrap()) }
            })
        });
    });
    group.bench_function("audited_write", |b| {
        b.to_async(runtime).iter(|| {
            tasks!(|boundary: &Arc<Boundary>,
                    caller: &Caller,
                    _: &Arc<Vec<RecordId>>,
                    subjects: &Arc<Vec<SubjectId>>,
                    i: usize| {
                let (boundary, caller, subject) =
                    (boundary.clone(), caller.clone(), subjects[i % subjects.len()].clone());
                async move {
                    let fields = Fields::new(serde_json::json!({"display_name": "x"}).as_object().unwrap().clone());
                    black_box(
                        pipeline::write(&boundary, &caller, &subject, &"profile".parse().unwrap(), &fields)
                            .await
                            .unwrap(),
                    )
                }
            })
        });
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let sqlite = runtime.block_on(setup(None, 1));
    run(c, &runtime, "sqlite", &sqlite);
    drop(sqlite);
    for (name, gateways) in [("postgres", 1), ("postgres_2gw", 2)] {
        let database = runtime.block_on(clover_testkit::TestDatabase::create());
        let postgres = runtime.block_on(setup(Some(database.url.clone()), gateways));
        run(c, &runtime, name, &postgres);
        drop(postgres);
        drop(database);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
