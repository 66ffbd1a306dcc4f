//! The monitor against a log served by the test: an honest log followed across restarts,
//! alerts raised once and kept; then a log that forks, shrinks, is signed by another key, or
//! lacks a witness's cosignature, each caught and nothing of it kept.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use clover_event::{EVENT_VERSION, Event, EventDecision, EventKind, EventOrigin};
use clover_monitor::rules::RulesConfig;
use clover_monitor::{Monitor, Options};
use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::frontier::Frontier;
use clover_tlog::hash::leaf_hash;
use clover_tlog::note::{SigningKey, TYPE_ED25519};
use clover_tlog::tile::{Tile, push_bundle_entry};

/// What the fake log serves: its entries (the first `size` of them), signed by `key`.
struct Served {
    entries: Vec<Vec<u8>>,
    size: usize,
    key: SigningKey,
    down: bool,
    witness: Option<SigningKey>,
}

type Shared = Arc<Mutex<Served>>;

fn event(kind: EventKind, region: &str, effect: &str, view: Option<&str>, detail: Option<&str>) -> Vec<u8> {
    Event {
        v: EVENT_VERSION,
        kind,
        time: time::OffsetDateTime::now_utc().unix_timestamp(),
        principal: None,
        origin: Some(EventOrigin { site: Some(format!("{region}-1")), region: Some(region.into()) }),
        action: Some("read".into()),
        subject: None,
        category: Some("profile".into()),
        decision: Some(EventDecision { effect: effect.into(), view: view.map(Into::into), policies: vec![] }),
        purpose: Some("support".into()),
        annex: None,
        detail: detail.map(Into::into),
        transfer: None,
        government_request: None,
    }
    .encode()
}

fn now() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap()
}

async fn checkpoint(State(served): State<Shared>) -> Result<String, StatusCode> {
    let served = served.lock().unwrap();
    if served.down {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let mut frontier = Frontier::new();
    for entry in &served.entries[..served.size] {
        frontier.push(leaf_hash(entry));
    }
    let body =
        Checkpoint { origin: served.key.verifier().name.clone(), size: served.size as u64, root: frontier.root() };
    let text = body.to_text();
    let cosigned = served.witness.as_ref().map(|w| w.cosign(&text, now())).unwrap_or_default();
    Ok(format!("{text}\n{}{cosigned}", served.key.sign_note(&text)))
}

async fn tile(State(served): State<Shared>, Path(path): Path<String>) -> Result<Vec<u8>, StatusCode> {
    let served = served.lock().unwrap();
    let tile = Tile::parse(&format!("tile/{path}")).map_err(|_| StatusCode::NOT_FOUND)?;
    let start = (tile.index * 256) as usize;
    let end = start + usize::from(tile.width);
    if tile.level.is_some() || end > served.size {
        return Err(StatusCode::NOT_FOUND);
    }
    let mut bundle = Vec::new();
    for entry in &served.entries[start..end] {
        push_bundle_entry(&mut bundle, entry).unwrap();
    }
    Ok(bundle)
}

async fn serve(served: Shared) -> String {
    let app = axum::Router::new()
        .route("/log/checkpoint", axum::routing::get(checkpoint))
        .route("/log/tile/{*path}", axum::routing::get(tile))
        .with_state(served);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn options(url: &str, key: &SigningKey, dir: &std::path::Path) -> Options {
    Options {
        url: url.to_owned(),
        vkey: key.verifier(),
        witnesses: Vec::new(),
        dir: dir.to_owned(),
        rules: RulesConfig::parse("refusals = 2").unwrap(),
        every: Duration::from_millis(50),
        tls: clover_tls::ClientTls::default(),
        print: false,
    }
}

#[tokio::test]
async fn an_honest_log_is_followed_across_restarts_and_each_alert_raised_once() {
    let key = SigningKey::generate("clover.local/eu", TYPE_ED25519).unwrap();
    let mut entries: Vec<Vec<u8>> =
        (0..300).map(|_| event(EventKind::Access, "eu", "allow", Some("full"), None)).collect();
    entries[5] = event(EventKind::Access, "sg", "allow", Some("full"), None);
    entries[290] = event(EventKind::Config, "eu", "allow", None, Some("policies reloaded"));
    entries[291] = {
        let mut aggregate: Event =
            serde_json::from_slice(&event(EventKind::Transfer, "eu", "allow", None, None)).unwrap();
        aggregate.transfer = Some(Box::new(clover_event::TransferFacts {
            transfer_id: None,
            stage: "aggregate".into(),
            destination: Some("us-partners".into()),
            region: "us".into(),
            legal_basis: Some("scc".into()),
            treatment: "dp-laplace".into(),
            categories: vec!["profile".into()],
            count: 100,
            suppressed: 0,
            k: None,
            epsilon: Some("0.5".into()),
            manifest: None,
            sha256: None,
        }));
        aggregate.encode()
    };
    let served = Arc::new(Mutex::new(Served { entries, size: 270, key, down: false, witness: None }));
    let url = serve(served.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let key = served.lock().unwrap().key.verifier();

    let monitor =
        Monitor::new(Options { vkey: key.clone(), ..options(&url, &served.lock().unwrap().key, dir.path()) }).unwrap();
    let alerts = monitor.step().await.unwrap();
    assert_eq!(
        alerts.iter().map(|a| (a.id, a.rule.as_str(), a.indexes.clone())).collect::<Vec<_>>(),
        [(1, "full-view-from-outside", vec![5])],
        "{alerts:?}"
    );
    assert_eq!(monitor.state().size, 270);
    // Nothing new: nothing raised again.
    assert!(monitor.step().await.unwrap().is_empty());

    // Restarted: it resumes at 270, verifies only what is new, and numbers on.
    drop(monitor);
    served.lock().unwrap().size = 300;
    let monitor =
        Monitor::new(Options { vkey: key.clone(), ..options(&url, &served.lock().unwrap().key, dir.path()) }).unwrap();
    assert_eq!(monitor.state().size, 270);
    let alerts = monitor.step().await.unwrap();
    assert_eq!(
        alerts.iter().map(|a| (a.id, a.rule.as_str())).collect::<Vec<_>>(),
        [(2, "policy-or-configuration-change")]
    );
    assert_eq!(monitor.health().verified_entries, 30);
    assert_eq!(monitor.state().counts.get("epsilon|us|scc"), Some(&500_000), "epsilon spent, in millionths");
    let kept = monitor.dir().alerts(None, 100).unwrap();
    assert_eq!(kept.iter().map(|a| a.id).collect::<Vec<_>>(), [1, 2]);

    // An outage is an alert, once, not a crash; the monitor goes on when the log is back.
    served.lock().unwrap().down = true;
    let alerts = monitor.step().await.unwrap();
    assert_eq!(alerts[0].rule, "boundary-unreachable");
    assert!(monitor.step().await.unwrap().is_empty(), "alerted once per outage");
    served.lock().unwrap().down = false;
    assert!(monitor.step().await.unwrap().is_empty());
    assert!(monitor.metrics().contains("clover_monitor_verified_size 300\n"), "{}", monitor.metrics());
    assert!(
        monitor.metrics().contains("clover_monitor_alerts_total{rule=\"boundary-unreachable\",severity=\"warning\"} 1")
    );
}

#[tokio::test]
async fn a_fork_a_shrink_a_foreign_signature_and_a_missing_cosignature_are_caught() {
    let key = SigningKey::generate("clover.local/eu", TYPE_ED25519).unwrap();
    let entries: Vec<Vec<u8>> = (0..40).map(|_| event(EventKind::Access, "eu", "allow", Some("full"), None)).collect();
    let served = Arc::new(Mutex::new(Served { entries, size: 20, key, down: false, witness: None }));
    let url = serve(served.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let base = options(&url, &served.lock().unwrap().key, dir.path());
    let monitor = Monitor::new(base.clone()).unwrap();
    assert!(monitor.step().await.unwrap().is_empty());
    let kept = monitor.state();

    // A fork: an entry the monitor verified is changed, and the log grows.
    {
        let mut served = served.lock().unwrap();
        served.entries[3] = event(EventKind::Access, "eu", "deny", None, None);
        served.size = 30;
    }
    let alerts = monitor.step().await.unwrap();
    assert_eq!(alerts[0].rule, "fork", "{alerts:?}");
    assert_eq!(monitor.state().size, kept.size, "nothing of a fork is kept");
    assert_eq!(monitor.state().root, kept.root);

    // A shrink.
    served.lock().unwrap().size = 10;
    assert_eq!(monitor.step().await.unwrap()[0].rule, "shrink");

    // Another key.
    let other = Arc::new(Mutex::new(Served {
        entries: served.lock().unwrap().entries.clone(),
        size: 25,
        key: SigningKey::generate("clover.local/eu", TYPE_ED25519).unwrap(),
        down: false,
        witness: None,
    }));
    let forged = serve(other).await;
    let monitor = Monitor::new(Options { url: forged, ..base.clone() }).unwrap();
    assert_eq!(monitor.step().await.unwrap()[0].rule, "bad-signature");

    // A witness that cosigned: its time is kept for the console.
    let cosigned = Arc::new(Mutex::new(Served {
        entries: served.lock().unwrap().entries.clone(),
        size: 10,
        key: SigningKey::generate("clover.local/eu", TYPE_ED25519).unwrap(),
        down: false,
        witness: Some(SigningKey::generate("witness.example", clover_tlog::note::TYPE_COSIGNATURE).unwrap()),
    }));
    let with_witness = serve(cosigned.clone()).await;
    let (log_key, witness_key) = {
        let c = cosigned.lock().unwrap();
        (c.key.verifier(), c.witness.as_ref().unwrap().verifier())
    };
    let other_dir = tempfile::tempdir().unwrap();
    let monitor = Monitor::new(Options {
        url: with_witness,
        vkey: log_key,
        witnesses: vec![witness_key],
        dir: other_dir.path().to_owned(),
        ..base.clone()
    })
    .unwrap();
    let alerts = monitor.step().await.unwrap();
    assert!(alerts.is_empty(), "{alerts:?}");
    let at = *monitor.health().witnesses.get("witness.example").unwrap();
    assert!(now() - at < 60, "the cosignature's time is kept: {at}");

    // A witness that never cosigned.
    let witness = SigningKey::generate("witness.example", clover_tlog::note::TYPE_COSIGNATURE).unwrap();
    let monitor = Monitor::new(Options { witnesses: vec![witness.verifier()], ..base }).unwrap();
    assert_eq!(monitor.step().await.unwrap()[0].rule, "missing-cosignature");
    assert_eq!(monitor.state().size, kept.size);
}

#[tokio::test]
async fn alerts_reach_webhooks_and_a_failing_webhook_never_holds_verification_back() {
    let key = SigningKey::generate("clover.local/eu", TYPE_ED25519).unwrap();
    let mut entries: Vec<Vec<u8>> =
        (0..10).map(|_| event(EventKind::Access, "eu", "allow", Some("full"), None)).collect();
    entries[4] = event(EventKind::Access, "sg", "allow", Some("full"), None);
    let served = Arc::new(Mutex::new(Served { entries, size: 10, key, down: false, witness: None }));
    let url = serve(served.clone()).await;
    // One webhook that takes what it is sent, one that always fails.
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let hooks = axum::Router::new()
        .route(
            "/ok",
            axum::routing::post(|State(got): State<Arc<Mutex<Vec<serde_json::Value>>>>, body: axum::Json<serde_json::Value>| async move {
                got.lock().unwrap().push(body.0);
                StatusCode::NO_CONTENT
            }),
        )
        .route("/broken", axum::routing::post(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, hooks).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let rules = RulesConfig::parse(&format!("webhooks = [\"{hook}/broken\", \"{hook}/ok\"]")).unwrap();
    let monitor = Monitor::new(Options { rules, ..options(&url, &served.lock().unwrap().key, dir.path()) }).unwrap();
    let started = std::time::Instant::now();
    let alerts = monitor.step().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "verification waited on a webhook");
    assert_eq!(alerts[0].rule, "full-view-from-outside");
    // The good hook gets it at once; the broken one is retried with backoff (0.5 + 1 + 2 + 4 +
    // 8 s), then given up and counted.
    for _ in 0..50 {
        if !received.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["rule"], "full-view-from-outside");
    assert_eq!(got[0]["indexes"], serde_json::json!([4]));
    assert!(started.elapsed() < Duration::from_secs(3), "one webhook waited on another");
    for _ in 0..200 {
        if monitor.health().webhook_failures > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(monitor.health().webhook_failures, 1, "the broken hook's delivery was given up and counted");
}
