//! A boundary that lies to its custodian: it shows the custodian a log that the public never
//! sees (a fork, signed with the boundary's own key), to be given keys for reads that no
//! auditor will find. The custodian honours receipts only under checkpoints cosigned by a
//! quorum of witnesses, and a witness that has seen the public log never cosigns the fork.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clover_audit::witness::Witness;
use clover_custodian::{
    CacheOptions, Custodian, CustodianOptions, CustodianServer, LogVerifier, WitnessQuorum, open_dir, router,
};
use clover_gateway::config::WitnessConfig;
use clover_gateway::datadir::DataDir;
use clover_log::{Log, LogOptions};
use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::hash::leaf_hash;
use clover_tlog::note::{Note, SigningKey, TYPE_COSIGNATURE, VerifierKey};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::harness::{DUBLIN, TestApp, opening_of};

/// Serves `app`'s boundary a witness and a custodian in their own tasks, the boundary keeping
/// its keys at that custodian, and the custodian demanding that witness's cosignature.
struct Setup {
    app: TestApp,
    custodian: Arc<Custodian>,
    /// The custodian's URL.
    url: String,
    witness: Arc<Witness>,
    witness_vkey: VerifierKey,
    /// The custodian's own witness key.
    custodian_vkey: VerifierKey,
    http: reqwest::Client,
    dir: tempfile::TempDir,
    _database: clover_testkit::TestDatabase,
}

async fn bind() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

async fn start() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (witness_listener, witness_url) = bind().await;
    let (custodian_listener, url) = bind().await;
    let witness_key = SigningKey::generate("witness.test", TYPE_COSIGNATURE).unwrap();
    let witness_vkey = witness_key.verifier();
    let custodian_dir = dir.path().join("custodian");
    std::fs::create_dir_all(&custodian_dir).unwrap();
    let custodian_key = clover_custodian::witness_key(&custodian_dir, "custodian.test").unwrap();
    let custodian_vkey = custodian_key.verifier();
    let witnesses = vec![
        WitnessConfig { url: witness_url, vkey: witness_vkey.to_string() },
        // The custodian is a witness too: it cosigns what it verified.
        WitnessConfig { url: url.clone(), vkey: custodian_vkey.to_string() },
    ];
    let app = TestApp::start_with(|c| {
        c.keys.custodian = Some(url.clone());
        c.log.witnesses = witnesses;
    })
    .await;
    let witness =
        Arc::new(Witness::new(witness_key, vec![app.boundary.log_vkey().clone()], &dir.path().join("w.json")).unwrap());
    let served = clover_audit::witness::router(witness.clone());
    tokio::spawn(async move { axum::serve(witness_listener, served).await });

    let database = clover_testkit::TestDatabase::create().await;
    let options = CustodianOptions {
        dir: custodian_dir,
        region: "eu".parse().unwrap(),
        pkcs11: None,
        cache: CacheOptions::default(),
        store: Some(database.url.clone()),
    };
    let custodian = Arc::new(open_dir(&options).await.unwrap());
    let verifier = LogVerifier::new(&app.url(""), app.boundary.log_vkey().clone())
        .with_witnesses(WitnessQuorum::new(vec![witness_vkey.clone()], None).unwrap(), Duration::from_secs(10))
        .with_state(dir.path().join("log-state"))
        .unwrap();
    let admin = clover_custodian::admin_token(&options.dir).unwrap();
    let server = CustodianServer::new(custodian.clone(), verifier, &admin).with_witness_key(custodian_key);
    tokio::spawn(async move { axum::serve(custodian_listener, router(server)).await });
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    Setup { app, custodian, url, witness, witness_vkey, custodian_vkey, http, dir, _database: database }
}

/// A custodian server over `setup`'s custodian (its keys), checking receipts against the log
/// at `log_url` with `quorum`; returns its URL.
async fn custodian_at(setup: &Setup, log_url: &str, quorum: WitnessQuorum) -> String {
    let (listener, url) = bind().await;
    let verifier = LogVerifier::new(log_url, setup.app.boundary.log_vkey().clone())
        .with_witnesses(quorum, Duration::from_millis(500));
    let server = CustodianServer::new(setup.custodian.clone(), verifier, &"a".repeat(32));
    tokio::spawn(async move { axum::serve(listener, router(server)).await });
    url
}

async fn fetch(setup: &Setup, custodian: &str, index: u64, entry: &[u8]) -> reqwest::Response {
    let subject_hash = setup.app.boundary.subject_hash(&"u-1".parse().unwrap());
    let opening = opening_of(&setup.app.boundary, entry).await;
    setup
        .http
        .post(format!("{custodian}/v1/data-keys/fetch"))
        .json(&json!({"index": index, "entry": B64.encode(entry), "subject_hash": subject_hash, "opening": opening}))
        .send()
        .await
        .unwrap()
}

/// The operator's fork: a log signed with the boundary's own checkpoint key, served the way the
/// boundary serves its log, with whatever cosignature lines the operator adds.
#[derive(Clone)]
struct Fork {
    log: Log,
    extra_lines: Arc<str>,
}

#[derive(Deserialize)]
struct InclusionQuery {
    index: u64,
    size: Option<u64>,
}

#[derive(Deserialize)]
struct ConsistencyQuery {
    old: u64,
    new: Option<u64>,
}

async fn fork_checkpoint(State(fork): State<Fork>) -> String {
    format!("{}{}", fork.log.checkpoint(), fork.extra_lines)
}

async fn fork_inclusion(State(fork): State<Fork>, Query(q): Query<InclusionQuery>) -> Json<Value> {
    let (checkpoint, checkpoint_size) = fork.log.checkpoint_with_size();
    let size = q.size.unwrap_or(checkpoint_size);
    let proof = fork.log.inclusion_proof(q.index, size).unwrap();
    Json(json!({
        "index": q.index,
        "size": size,
        "leaf_hash": leaf_hash(&fork.log.entry(q.index).await.unwrap()).to_base64(),
        "root_hash": fork.log.root(size).unwrap().to_base64(),
        "proof": proof.iter().map(|h| h.to_base64()).collect::<Vec<_>>(),
        "checkpoint": (size == checkpoint_size).then(|| format!("{checkpoint}{}", fork.extra_lines)),
    }))
}

async fn fork_consistency(State(fork): State<Fork>, Query(q): Query<ConsistencyQuery>) -> Json<Value> {
    let new = q.new.unwrap_or_else(|| fork.log.checkpoint_size());
    let proof = fork.log.consistency_proof(q.old, new).unwrap();
    Json(json!({"old": q.old, "new": new, "proof": proof.iter().map(|h| h.to_base64()).collect::<Vec<_>>()}))
}

/// Serves `fork` as the boundary's log at a URL of its own (the proxy between the custodian and
/// the boundary).
async fn serve_fork(fork: Fork) -> String {
    let (listener, url) = bind().await;
    let routes = axum::Router::new()
        .route("/log/checkpoint", get(fork_checkpoint))
        .route("/v1/log/proof/inclusion", get(fork_inclusion))
        .route("/v1/log/proof/consistency", get(fork_consistency))
        .with_state(fork);
    tokio::spawn(async move { axum::serve(listener, routes).await });
    url
}

/// Waits until the boundary serves a checkpoint covering `index` cosigned by `witness`.
async fn cosigned_past(app: &TestApp, index: u64, witness: &VerifierKey) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let note = app.boundary.served_checkpoint();
        let parsed = Note::parse(&note).unwrap();
        if Checkpoint::parse(&parsed.text).unwrap().size > index && parsed.verify_cosignature(witness).is_ok() {
            return note;
        }
        assert!(std::time::Instant::now() < deadline, "not cosigned past {index}:\n{note}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_log_shown_to_the_custodian_alone_unlocks_nothing() {
    let setup = start().await;
    let app = &setup.app;

    // The honest path: reads go through, each under a checkpoint the witness cosigned.
    let record = app.seed("u-1", json!({"name": "Ana"})).await;
    let read = app.get_record(DUBLIN, &record).await;
    assert_eq!(read.status(), 200);
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["fields"]["name"], "Ana");
    let index = read["log_index"].as_u64().unwrap();
    let entry = app.boundary.log().entry(index).await.unwrap();
    cosigned_past(app, index, &setup.witness_vkey).await;

    // The operator forks: a log of its own, signed with the boundary's key, holding a read of
    // u-1 that the public log does not have at that index. Not the entry of the read above,
    // which the custodian honoured already (a receipt opens its key once): one of the
    // operator's own making, with a fresh tag of u-1's (whose tag key the boundary may ask for).
    let mut forged = clover_event::Event::decode(&entry).unwrap();
    let tags = app.boundary.custody().subject_tag_key(&"u-1".parse().unwrap(), false).await.unwrap().unwrap();
    forged.subject = Some(tags.tag().unwrap());
    let entry = forged.encode();
    let keyring = DataDir::new(app.data_dir()).unseal(app.boundary.region()).unwrap();
    let signer = keyring.checkpoint_signer(&app.boundary.config().log_origin()).unwrap();
    let fork_log = Log::open(&setup.dir.path().join("fork"), signer, LogOptions::default()).unwrap();
    let fork_index = fork_log.append_encoded(entry.clone()).await.unwrap();
    assert_eq!(fork_index, 0);
    assert_ne!(app.boundary.log().entry(0).await.unwrap(), entry, "the public log has another entry there");
    // A cosignature line in the witness's name that is not the witness's.
    let fake = format!("\u{2014} witness.test {}\n", B64.encode([&setup.witness_vkey.id()[..], &[7u8; 72]].concat()));
    let fork = Fork { log: fork_log.clone(), extra_lines: fake.into() };
    let fork_url = serve_fork(fork.clone()).await;

    // Without a witness quorum, the fork works: that is the hole.
    let trusting = custodian_at(&setup, &fork_url, WitnessQuorum::none()).await;
    let opened = fetch(&setup, &trusting, fork_index, &entry).await;
    assert_eq!(opened.status(), 200, "{}", opened.text().await.unwrap());

    // Demanding the witness's cosignature, every receipt on the fork is refused, forged
    // cosignature line or not.
    let demanding =
        custodian_at(&setup, &fork_url, WitnessQuorum::new(vec![setup.witness_vkey.clone()], None).unwrap()).await;
    let refused = fetch(&setup, &demanding, fork_index, &entry).await;
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("cosigned by 1 of the witnesses"), "{body}");
    // The same, presented to the boundary's own custodian (which has verified the public log).
    let refused = fetch(&setup, &setup.url, fork_index, &entry).await;
    assert_eq!(refused.status(), 403);

    // The witness, which has seen the public log, never cosigns the fork: from its size with
    // any proof (a fork is not consistent), nor from scratch.
    let fork_note = fork_log.checkpoint().to_string();
    let witness_size = {
        let (status, body) = setup.witness.add_checkpoint(&format!("old 0\n\n{fork_note}")).await;
        assert_eq!(status, 409, "{body}");
        body.trim().parse::<u64>().unwrap()
    };
    assert!(witness_size > index);
    for proof in [String::new(), format!("{}\n", leaf_hash(&entry))] {
        let (status, body) = setup.witness.add_checkpoint(&format!("old {witness_size}\n{proof}\n{fork_note}")).await;
        assert!(status == 400 || status == 422, "{status}: {body}");
    }
    // Nor does the custodian as a witness: it has cosigned the public log.
    let as_witness = setup
        .http
        .post(format!("{}/add-checkpoint", setup.url))
        .body(format!("old 0\n\n{fork_note}"))
        .send()
        .await
        .unwrap();
    assert_eq!(as_witness.status(), 409);
    let custodian_size: u64 = as_witness.text().await.unwrap().trim().parse().unwrap();
    let as_witness = setup
        .http
        .post(format!("{}/add-checkpoint", setup.url))
        .body(format!("old {custodian_size}\n\n{fork_note}"))
        .send()
        .await
        .unwrap();
    assert!([400, 422].contains(&as_witness.status().as_u16()), "{}", as_witness.status());
}

#[tokio::test]
async fn an_auditor_can_demand_the_custodians_cosignature() {
    let setup = start().await;
    let app = &setup.app;
    let record = app.seed("u-1", json!({"name": "Ana"})).await;
    let read: Value = app.get_record(DUBLIN, &record).await.json().await.unwrap();
    let index = read["log_index"].as_u64().unwrap();
    // The checkpoint the public reads carries both cosignatures: the independent witness's, and
    // the custodian's, which vouches that this is the log it releases keys against.
    let note = cosigned_past(app, index, &setup.custodian_vkey).await;
    Note::parse(&note).unwrap().verify_cosignature(&setup.witness_vkey).unwrap();
    let report = clover_audit::verify::verify(&clover_audit::verify::VerifyOptions {
        url: app.url(""),
        vkey: app.boundary.log_vkey().clone(),
        witnesses: vec![setup.custodian_vkey.clone(), setup.witness_vkey.clone()],
        state: None,
        tls: Default::default(),
    })
    .await
    .unwrap();
    assert!(report.cosigned_by.contains(&"custodian.test".to_owned()), "{:?}", report.cosigned_by);

    // The custodian says what its checks rest on.
    let detail: Value =
        setup.http.get(format!("{}/healthz?detail=true", setup.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(detail["witnesses"]["demanded"], json!(["witness.test"]));
    assert_eq!(detail["witnesses"]["quorum"], 1);
    assert_eq!(detail["witness_key"], setup.custodian_vkey.to_string());
    assert_eq!(detail["warnings"], json!([]));
    assert!(detail["latest_verified_size"].as_u64().unwrap() > index);
    let plain = setup.http.get(format!("{}/healthz", setup.url)).send().await.unwrap().text().await.unwrap();
    assert_eq!(plain, "ok");
}

#[tokio::test]
async fn a_boundary_without_witnesses_or_with_an_embedded_custodian_says_what_that_leaves_open() {
    let app = TestApp::start().await;
    let detail: Value =
        app.client(DUBLIN).get(app.url("/healthz?detail=true")).send().await.unwrap().json().await.unwrap();
    assert_eq!(detail["custodian"], "embedded");
    assert_eq!(detail["witnesses"], json!([]));
    let warnings = detail["warnings"].to_string();
    assert!(warnings.contains("no witnesses are configured"), "{warnings}");
    assert!(warnings.contains("custodian is embedded"), "{warnings}");
    assert_eq!(app.client(DUBLIN).get(app.url("/healthz?detail=maybe")).send().await.unwrap().status(), 400);
}
