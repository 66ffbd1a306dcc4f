//! The residency guard: a boundary configured to keep the region's data outside the region's
//! sites does not start, and one that starts logs where its data lives, every time.

use clover_gateway::{Boundary, Config, DataDir, OpenError};

use crate::harness::{TestApp, log_entries};

/// A data store in Singapore, or a custodian in Virginia: the boundary refuses to start, says
/// where and how to fix it, and has opened nothing there (no connection was tried: the address
/// has no server).
#[tokio::test]
async fn a_boundary_whose_data_would_live_abroad_does_not_start() {
    for (store, custodian, expected) in [
        (
            Some("postgres://clover:hunter2@127.0.2.7:5432/clover"),
            None,
            "the store at 127.0.2.7 resolves to 127.0.2.7, which is in site singapore-1 of region sg, outside region eu's sites",
        ),
        (
            None,
            Some("http://127.0.1.8:7880"),
            "the custodian at 127.0.1.8 resolves to 127.0.1.8, which is in site virginia-1 of region us",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config { data_dir: dir.path().join("data"), ..Config::default() };
        config.store = store.map(str::to_owned);
        config.keys.custodian = custodian.map(str::to_owned);
        DataDir::new(&config.data_dir).init(&config.region).unwrap();
        let err = match Boundary::open(config).await {
            Err(err) => err,
            Ok(_) => panic!("a boundary with its data abroad started"),
        };
        assert!(matches!(err, OpenError::Residency(_)), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(expected), "{message}");
        assert!(message.contains("[[residency.exceptions]]") && !message.contains("hunter2"), "{message}");
    }
}

/// Every start logs a `residency` entry: each place by site and region, no address.
#[tokio::test]
async fn every_start_logs_where_the_data_lives() {
    let app = TestApp::start().await;
    let app = app.restart().await;
    let entries = log_entries(app.boundary.log()).await;
    let residency: Vec<&serde_json::Value> = entries.iter().filter(|e| e["action"] == "residency").collect();
    assert_eq!(residency.len(), 2, "one per start: {entries:?}");
    for entry in residency {
        assert_eq!(entry["kind"], "residency");
        assert_eq!(entry["detail"], "data resides at store: local; key-store: local; custodian: local");
    }
}
