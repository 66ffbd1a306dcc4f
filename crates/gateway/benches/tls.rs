//! What TLS costs on the wire: the same boundary behind a plain HTTP listener and a TLS one, in
//! the same run, so that the ratios are TLS's alone.
//!
//! Run with `cargo bench -p clover-gateway --bench tls`.
//!
//! - `healthz/{http,https}`: `GET /healthz` over kept-alive connections, 16 requests in flight:
//!   the transport's cost with next to nothing behind it (the plain listener is the baseline).
//! - `read/{http,https,mtls}`: audited record reads (`GET /v1/records/{id}`) over kept-alive
//!   connections, 16 in flight: an employee's token over plain HTTP (the baseline) and over TLS,
//!   and a service known by its client certificate, with no token.
//! - `connect/{http,https,mtls}`: a new connection for every `GET /healthz` (one at a time): the
//!   cost of a TCP connection (the baseline), of a TLS 1.3 handshake, and of one with a client
//!   certificate verified against the client CA.
//!
//! Each iteration sends 400 requests (100 for `connect`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clover_gateway::config::ServiceCertConfig;
use clover_gateway::identity::Claims;
use clover_gateway::{Boundary, Config, DataDir};
use clover_model::PrincipalKind;
use clover_tls::dev::{Ca, Leaf};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const REQUESTS: usize = 400;
const CONNECTS: usize = 100;
const IN_FLIGHT: usize = 16;
const SERVICE: &str = "spiffe://clover.local/eu/dublin-1/ingest";

struct Setup {
    _dir: tempfile::TempDir,
    plain: SocketAddr,
    tls: SocketAddr,
    ca: PathBuf,
    service: (PathBuf, PathBuf),
    token: String,
    records: Vec<String>,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("bench CA").unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    let ca_path = pki.join("ca.pem");
    std::fs::write(&ca_path, ca.issued().cert_pem).unwrap();
    let (cert, key) = ca
        .issue(&Leaf { names: vec!["127.0.0.1".into()], ..Leaf::default() })
        .unwrap()
        .write_to(&pki, "gateway")
        .unwrap();
    let service = ca
        .issue(&Leaf { names: vec![SERVICE.into()], server: false, ..Leaf::default() })
        .unwrap()
        .write_to(&pki, "ingest")
        .unwrap();

    let mut config = Config { data_dir: dir.path().join("data"), ..Config::default() };
    config.policy.bulk_threshold = i64::MAX;
    config.tls.cert = Some(cert);
    config.tls.key = Some(key);
    config.tls.client_ca = Some(ca_path.clone());
    config.tls.services = vec![ServiceCertConfig {
        san: SERVICE.into(),
        principal: "ingest".parse().unwrap(),
        site: "dublin-1".parse().unwrap(),
        roles: vec!["support".into()],
    }];
    let data_dir = DataDir::new(&config.data_dir);
    data_dir.init(&config.region).unwrap();
    let boundary = Arc::new(Boundary::open(config.clone()).await.unwrap());

    // One boundary, two listeners: the same router behind plain HTTP and behind TLS.
    let plain_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain = plain_listener.local_addr().unwrap();
    let router = clover_gateway::api::router(boundary.clone());
    tokio::spawn(clover_tls::serve(router, plain_listener, None, std::future::pending()));
    let tls_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = tls_listener.local_addr().unwrap();
    tokio::spawn(clover_gateway::serve(boundary.clone(), tls_listener, std::future::pending()));

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = data_dir
        .issuer()
        .unwrap()
        .mint(&Claims {
            iss: config.identity.issuer.clone(),
            aud: config.identity.audience.clone(),
            sub: "ana".into(),
            kind: PrincipalKind::Employee,
            region: "eu".into(),
            site: "dublin-1".into(),
            roles: vec!["support".into()],
            iat: now,
            exp: now + 24 * 3600,
        })
        .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut records = Vec::new();
    for s in 0..20 {
        let url = format!("http://{plain}/v1/subjects/s-{s}");
        let put = client
            .put(&url)
            .bearer_auth(&token)
            .json(&serde_json::json!({"home_region": "eu", "birth_date": "1990-01-01"}));
        assert!(put.send().await.unwrap().status().is_success());
        for r in 0..5 {
            let post = client
                .post(format!("{url}/records"))
                .bearer_auth(&token)
                .json(&serde_json::json!({"category": "profile", "fields": {"display_name": format!("name {s}-{r}")}}));
            let body: serde_json::Value = post.send().await.unwrap().json().await.unwrap();
            records.push(body["record_id"].as_str().unwrap().to_owned());
        }
    }
    Setup { _dir: dir, plain, tls, ca: ca_path, service, token, records }
}

/// The three ways in: plain HTTP with a token, TLS with a token, TLS with a client certificate.
#[derive(Clone, Copy)]
enum Way {
    Http,
    Https,
    Mtls,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Http => "http",
            Way::Https => "https",
            Way::Mtls => "mtls",
        }
    }

    fn client(self, setup: &Setup, keep_alive: bool) -> reqwest::Client {
        let tls = clover_tls::ClientTls {
            ca: Some(setup.ca.clone()),
            cert: matches!(self, Way::Mtls).then(|| setup.service.0.clone()),
            key: matches!(self, Way::Mtls).then(|| setup.service.1.clone()),
        };
        let builder = tls.builder().unwrap();
        let builder = if keep_alive { builder } else { builder.pool_max_idle_per_host(0) };
        builder.build().unwrap()
    }

    fn base(self, setup: &Setup) -> String {
        match self {
            Way::Http => format!("http://{}", setup.plain),
            Way::Https | Way::Mtls => format!("https://{}", setup.tls),
        }
    }
}

/// `total` requests made by `request`, `in_flight` at a time.
async fn send_all(
    in_flight: usize,
    total: usize,
    request: impl Fn(usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
) {
    let request = Arc::new(request);
    let mut set = tokio::task::JoinSet::new();
    for t in 0..in_flight {
        let request = request.clone();
        set.spawn(async move {
            for i in (t..total).step_by(in_flight) {
                let response = request(i).send().await.unwrap();
                assert!(response.status().is_success(), "{}", response.status());
                std::hint::black_box(response.bytes().await.unwrap());
            }
        });
    }
    set.join_all().await;
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let setup = Arc::new(runtime.block_on(setup()));
    let mut group = c.benchmark_group("tls");
    group
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(5))
        .warm_up_time(std::time::Duration::from_secs(1));

    group.throughput(Throughput::Elements(REQUESTS as u64));
    for way in [Way::Http, Way::Https] {
        let (client, url) = (way.client(&setup, true), format!("{}/healthz", way.base(&setup)));
        group.bench_function(BenchmarkId::new("healthz", way.name()), |b| {
            b.to_async(&runtime).iter(|| {
                let (client, url) = (client.clone(), url.clone());
                send_all(IN_FLIGHT, REQUESTS, move |_| client.get(&url))
            });
        });
    }
    for way in [Way::Http, Way::Https, Way::Mtls] {
        let client = way.client(&setup, true);
        let base = way.base(&setup);
        group.bench_function(BenchmarkId::new("read", way.name()), |b| {
            b.to_async(&runtime).iter(|| {
                let (client, base, setup) = (client.clone(), base.clone(), setup.clone());
                send_all(IN_FLIGHT, REQUESTS, move |i| {
                    let record = &setup.records[i % setup.records.len()];
                    let request =
                        client.get(format!("{base}/v1/records/{record}")).header("X-Clover-Purpose", "support");
                    if matches!(way, Way::Mtls) { request } else { request.bearer_auth(&setup.token) }
                })
            });
        });
    }
    group.throughput(Throughput::Elements(CONNECTS as u64));
    for way in [Way::Http, Way::Https, Way::Mtls] {
        let (client, url) = (way.client(&setup, false), format!("{}/healthz", way.base(&setup)));
        group.bench_function(BenchmarkId::new("connect", way.name()), |b| {
            b.to_async(&runtime).iter(|| {
                let (client, url) = (client.clone(), url.clone());
                send_all(1, CONNECTS, move |_| client.get(&url))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
