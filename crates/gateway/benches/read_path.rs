//! The whole audited read path against a bare store read, in the same run.
//!
//! Run with `cargo bench -p clover-gateway --bench read_path`.
//!
//! - `store_read/{N}`: N concurrent tasks each reading a record row (`Store::record`): the
//!   baseline, what a read costs with no gateway at all.
//! - `audited_read/{N}`: N concurrent tasks each running the gateway's whole read path
//!   (`pipeline::read`): load the record and subject, decide with the policy pack, append the
//!   access to the log and wait until it is durable (group commit), unwrap the data key against
//!   the receipt, decrypt, apply the view. HTTP is left out, to compare the pipeline with the
//!   store it guards.
//!
//! - `audited_read_uncached/{N}`: the same with the custodian's data-key cache off
//!   (`[keys] cache_size = 0`): every read unwraps its key from the key store.
//!
//! Each iteration reads 1,000 records in total (fewer for one task, where every read waits for
//! its own fsync).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;

use clover_gateway::identity::Claims;
use clover_gateway::pipeline::{self, Caller};
use clover_gateway::{Boundary, Config, DataDir};
use clover_model::{PrincipalKind, RecordId};
use clover_testkit::fixtures;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const READS: usize = 1_000;

struct Setup {
    _dir: tempfile::TempDir,
    boundary: Arc<Boundary>,
    records: Vec<RecordId>,
}

fn caller() -> Caller {
    Caller {
        principal: fixtures::principal("bench", PrincipalKind::Service, "eu", "dublin-1", &[]),
        origin: fixtures::origin("dublin-1", "eu"),
        purpose: Some("support".into()),
        justification: None,
        address: std::net::IpAddr::from([127, 0, 0, 1]),
    }
}

async fn setup(cache_size: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config { data_dir: dir.path().join("data"), ..Config::default() };
    config.keys.cache_size = cache_size;
    config.policy.bulk_threshold = i64::MAX;
    let data_dir = DataDir::new(&config.data_dir);
    data_dir.init(&config.region).unwrap();
    let boundary = Arc::new(Boundary::open(config.clone()).await.unwrap());

    // Seed through the real HTTP API, so that the data is what the gateway writes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(clover_gateway::serve(boundary.clone(), listener, std::future::pending()));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = data_dir
        .issuer()
        .unwrap()
        .mint(&Claims {
            iss: config.identity.issuer.clone(),
            aud: config.identity.audience.clone(),
            sub: "seeder".into(),
            kind: PrincipalKind::Service,
            region: "eu".into(),
            site: "dublin-1".into(),
            roles: vec![],
            iat: now,
            exp: now + 3600,
        })
        .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut records = Vec::new();
    for s in 0..50 {
        let url = format!("http://{addr}/v1/subjects/s-{s}");
        let put = client
            .put(&url)
            .bearer_auth(&token)
            .json(&serde_json::json!({"home_region": "eu", "birth_date": "1990-01-01"}));
        assert!(put.send().await.unwrap().status().is_success());
        for r in 0..4 {
            let post = client
                .post(format!("{url}/records"))
                .bearer_auth(&token)
                .json(&serde_json::json!({"category": "profile", "fields": {"display_name": format!("name {s}-{r}"), "email": "x@example.org"}}));
            let body: serde_json::Value = post.send().await.unwrap().json().await.unwrap();
            records.push(body["record_id"].as_str().unwrap().parse().unwrap());
        }
    }
    Setup { _dir: dir, boundary, records }
}

/// `reads` reads through the whole read path, spread over `tasks` concurrent tasks.
async fn audited_reads(boundary: Arc<Boundary>, records: Arc<Vec<RecordId>>, tasks: usize, reads: usize) {
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let (boundary, records) = (boundary.clone(), records.clone());
        set.spawn(async move {
            let caller = caller();
            for i in (t..reads).step_by(tasks) {
                black_box(pipeline::read(&boundary, &caller, &records[i % records.len()]).await.unwrap());
            }
        });
    }
    set.join_all().await;
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let uncached = runtime.block_on(setup(0));
    let setup = runtime.block_on(setup(10_000));
    let boundary = setup.boundary.clone();
    let records = Arc::new(setup.records.clone());
    let mut group = c.benchmark_group("read_path");
    group
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(5))
        .warm_up_time(std::time::Duration::from_secs(1));
    for tasks in [1usize, 64] {
        let reads = if tasks == 1 { 200 } else { READS };
        group.throughput(Throughput::Elements(reads as u64));
        group.bench_with_input(BenchmarkId::new("store_read", tasks), &tasks, |b, &tasks| {
            b.to_async(&runtime).iter(|| {
                let (boundary, records) = (boundary.clone(), records.clone());
                async move {
                    let mut set = tokio::task::JoinSet::new();
                    for t in 0..tasks {
                        let (boundary, records) = (boundary.clone(), records.clone());
                        set.spawn(async move {
                            for i in (t..reads).step_by(tasks) {
                                black_box(boundary.store().record(&records[i % records.len()]).await.unwrap());
                            }
                        });
                    }
                    set.join_all().await;
                }
            });
        });
        for (name, setup) in [("audited_read", &setup), ("audited_read_uncached", &uncached)] {
            let (boundary, records) = (setup.boundary.clone(), Arc::new(setup.records.clone()));
            group.bench_with_input(BenchmarkId::new(name, tasks), &tasks, |b, &tasks| {
                b.to_async(&runtime).iter(|| audited_reads(boundary.clone(), records.clone(), tasks, reads));
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
