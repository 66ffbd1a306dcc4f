//! Key rotation over HTTP: key custodians only; data keys re-wrapped while reads go on; the old
//! version retired; every step logged.

use clover_keys::KeyError;
use serde_json::{Value, json};

use crate::harness::{DUBLIN, SINGAPORE, TestApp, log_entries, problem, served_log};

/// Key custody's state, as a key custodian in Dublin sees it.
async fn keys(app: &TestApp) -> Value {
    let response = app
        .client(DUBLIN)
        .get(app.url("/v1/keys"))
        .bearer_auth(app.key_custodian_token("dublin-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_key_custodian_rotates_and_everything_still_opens() {
    let app = TestApp::start().await;
    let mut records = Vec::new();
    for i in 0..40 {
        records.push(app.seed(&format!("u-{i}"), json!({"name": format!("n{i}")})).await);
    }
    let before = keys(&app).await;
    assert_eq!(before["current_version"], 1);
    // 40 subjects' data keys and the region's metadata key.
    assert_eq!(before["versions"], json!([{"version": 1, "data_keys": 41}]));

    // An agent may not rotate; nor may a key custodian from Singapore. Both refusals are logged.
    let refused = app.client(DUBLIN).post(app.url("/v1/keys/rotate")).bearer_auth(app.token()).send().await.unwrap();
    let body = problem(refused, 403, "forbidden").await;
    assert!(body["log_index"].as_u64().is_some());
    let refused = app
        .client(SINGAPORE)
        .post(app.url("/v1/keys/rotate"))
        .bearer_auth(app.key_custodian_token("singapore-1"))
        .send()
        .await;
    problem(refused.unwrap(), 403, "forbidden").await;

    let started = app
        .client(DUBLIN)
        .post(app.url("/v1/keys/rotate"))
        .bearer_auth(app.key_custodian_token("dublin-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let started: Value = started.json().await.unwrap();
    assert_eq!(started["to_version"], 2);
    assert_eq!(started["total"], 41);
    assert!(started["log_index"].as_u64().is_some());

    // Reads and writes go on while the keys are re-wrapped.
    for (i, record) in records.iter().enumerate().take(10) {
        let read = app.get_record(DUBLIN, record).await;
        assert_eq!(read.status(), 200);
        assert_eq!(read.json::<Value>().await.unwrap()["fields"]["name"], format!("n{i}"));
    }
    app.seed("u-new", json!({"name": "during"})).await;

    let mut state = keys(&app).await;
    for _ in 0..100 {
        if state["rotation"]["done"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        state = keys(&app).await;
    }
    assert_eq!(state["rotation"]["done"], true, "{state}");
    assert!(state["rotation"].get("error").is_none(), "{state}");
    assert_eq!(state["rotation"]["retired"], json!([1]));
    assert_eq!(state["current_version"], 2);
    assert_eq!(state["versions"], json!([{"version": 2, "data_keys": 42}]));

    // Version 1 is gone, and every record still opens, the registration's metadata too.
    for (i, record) in records.iter().enumerate() {
        let read = app.get_record(DUBLIN, record).await;
        assert_eq!(read.status(), 200);
        assert_eq!(read.json::<Value>().await.unwrap()["fields"]["name"], format!("n{i}"));
    }
    assert_eq!(app.put_subject("u-3").await.status(), 200);

    // The log has the decision, the new version and the retirement, in that order.
    let log = std::fs::read(app.data_dir().join("log").join("entries")).unwrap_or_default();
    let text = String::from_utf8_lossy(&log);
    let rotate = text.find("\"rotate-keys\"").unwrap();
    let added = text.find("kek v2 to be made").unwrap();
    let retired = text.find("kek v1 to be retired").unwrap();
    assert!(rotate < added && added < retired);
}

/// The embedded custodian makes and retires a KEK version only against the receipt of the log
/// entry that names it, logged before: without one, for another version, or from another log,
/// it refuses, and the version stays as it was.
#[tokio::test]
async fn a_key_operation_needs_the_receipt_of_its_entry_naming_the_version() {
    use clover_log::KeyOperation;
    let app = TestApp::start().await;
    app.seed("u-1", json!({"name": "Ana"})).await;
    let custodian = app.boundary.custodian().unwrap().clone();
    let refused = |outcome: Result<(), KeyError>, expected: &str| match outcome {
        Err(KeyError::Receipt(m)) => assert!(m.contains(expected), "{m}"),
        other => panic!("{other:?}"),
    };
    let key_event = |action: &str, detail: String| clover_event::Event {
        v: clover_event::EVENT_VERSION,
        kind: clover_event::EventKind::Key,
        time: time::OffsetDateTime::now_utc().unix_timestamp(),
        principal: None,
        origin: None,
        action: Some(action.to_owned()),
        subject: None,
        category: None,
        decision: None,
        purpose: None,
        annex: None,
        detail: Some(detail),
        transfer: None,
        government_request: None,
    };
    let entry = |action: &str, version: u32| key_event(action, format!("kek v{version} named"));
    let log = app.boundary.log();
    // No receipt.
    refused(custodian.start_rotation(None).await.map(drop), "no log entry names the version it acts on");
    refused(custodian.retire(1, None).await, "no log entry names the version it acts on");
    // A receipt for the wrong operation, or naming another version than the next.
    let retire_1 = log.append_key_operation(&entry("retire-kek-version", 1), KeyOperation::RetireVersion, 1).await;
    refused(custodian.start_rotation(Some(&retire_1.unwrap())).await.map(drop), "is a retire-kek-version");
    let add_5 = log.append_key_operation(&entry("add-kek-version", 5), KeyOperation::AddVersion, 5).await.unwrap();
    refused(custodian.start_rotation(Some(&add_5)).await.map(drop), "names kek v5, and the new version would be v2");
    // An entry of another log (same key operation, appended elsewhere).
    let dir = tempfile::tempdir().unwrap();
    let signer = clover_tlog::note::SigningKey::generate("other.test", clover_tlog::note::TYPE_ED25519).unwrap();
    let other = clover_log::Log::open(dir.path(), signer, clover_log::LogOptions::default()).unwrap();
    for _ in 0..log.size() {
        other.append(&entry("filler", 0)).await.unwrap();
    }
    let foreign = other.append_key_operation(&entry("add-kek-version", 2), KeyOperation::AddVersion, 2).await.unwrap();
    refused(custodian.start_rotation(Some(&foreign)).await.map(drop), "is not the one the log holds at that index");
    // The log refuses to make a receipt for an entry that does not name the version.
    let unnamed = key_event("add-kek-version", "a new version".into());
    assert!(matches!(
        log.append_key_operation(&unnamed, KeyOperation::AddVersion, 2).await,
        Err(clover_log::LogError::NotPermitted(_))
    ));
    assert_eq!(custodian.next_kek_version().unwrap(), 2, "nothing was made");

    // The honest one: v2 made, then v1 retired against an entry naming v1, not v2.
    let add_2 = log.append_key_operation(&entry("add-kek-version", 2), KeyOperation::AddVersion, 2).await.unwrap();
    assert_eq!(custodian.start_rotation(Some(&add_2)).await.unwrap().unwrap().0, 2);
    assert_eq!(custodian.run_rotation().await.unwrap(), vec![1]);
    let retire_2 = log.append_key_operation(&entry("retire-kek-version", 2), KeyOperation::RetireVersion, 2).await;
    refused(custodian.retire(1, Some(&retire_2.unwrap())).await, "names kek v2, not v1");
    let retire_1 = log.append_key_operation(&entry("retire-kek-version", 1), KeyOperation::RetireVersion, 1).await;
    custodian.retire(1, Some(&retire_1.unwrap())).await.unwrap();
    custodian.end_rotation(None);
    let versions = keys(&app).await["versions"].clone();
    assert_eq!(versions.as_array().map(|v| v.len()), Some(1), "{versions}");
    assert_eq!(versions[0]["version"], 2, "{versions}");
}

#[tokio::test]
async fn key_custody_s_state_is_for_key_custodians_in_the_region_and_names_no_path() {
    // A policy directory of its own, next to the data directory, so that its reloads are logged.
    let app = TestApp::start_with(|config| {
        let policies = config.data_dir.parent().unwrap().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(policies.join("clover.cedarschema"), clover_policy::pack::DEFAULT_SCHEMA).unwrap();
        std::fs::write(policies.join("default.cedar"), clover_policy::pack::DEFAULT_POLICIES).unwrap();
        config.policy.dir = Some(policies);
        config.policy.watch = false;
    })
    .await;
    app.seed("u-1", json!({"name": "Ana"})).await;

    // An employee without the key-custodian role, and a key custodian calling from Singapore:
    // refused like any request the policy refuses, and logged.
    let get = |token: String, from: &'static str| {
        let request = app.client(from).get(app.url("/v1/keys")).bearer_auth(token);
        async move { request.send().await.unwrap() }
    };
    let mut refusals = Vec::new();
    for (token, from) in [(app.token(), DUBLIN), (app.key_custodian_token("singapore-1"), SINGAPORE)] {
        let body = problem(get(token, from).await, 403, "forbidden").await;
        assert_eq!(body["decision"]["effect"], "deny", "{body}");
        assert!(body.get("versions").is_none() && body.get("backend").is_none(), "{body}");
        refusals.push(body["log_index"].as_u64().unwrap());
    }

    // A key custodian in Dublin sees the state, with the decision that allowed it.
    let answer = get(app.key_custodian_token("dublin-1"), DUBLIN).await;
    assert_eq!(answer.status(), 200);
    let text = answer.text().await.unwrap();
    let state: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(state["backend"], "keyring", "{state}");
    assert_eq!(state["versions"], json!([{"version": 1, "data_keys": 2}]));
    assert_eq!(state["decision"]["policies"], json!(["key-custodians-administer"]), "{state}");
    let allowed = state["log_index"].as_u64().unwrap();

    let entries = log_entries(app.boundary.log()).await;
    let viewed: Vec<(u64, &str)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e["action"] == "view-keys")
        .map(|(i, e)| (i as u64, e["decision"]["effect"].as_str().unwrap()))
        .collect();
    assert_eq!(viewed, vec![(refusals[0], "deny"), (refusals[1], "deny"), (allowed, "allow")]);

    // Policy reloads, accepted and refused, are logged too.
    app.boundary.reload_policies().await.unwrap();
    let policies = app.boundary.config().policy.dir.clone().unwrap();
    std::fs::remove_file(policies.join("clover.cedarschema")).unwrap();
    app.boundary.reload_policies().await.unwrap_err();

    // No path of the data directory (nor of the directory around it) in the answer, nor in any
    // log entry, as the log serves them to anyone.
    let root = app.dir.path().to_str().unwrap().to_owned();
    assert!(app.data_dir().starts_with(&root));
    assert!(!text.contains(&root), "{text}");
    let served = served_log(&app).await;
    assert!(served.iter().any(|(path, _)| path.starts_with("tile/entries/")));
    for (path, bytes) in &served {
        assert!(!String::from_utf8_lossy(bytes).contains(&root), "{path} names {root}");
    }
    let entries = log_entries(app.boundary.log()).await;
    let kinds: Vec<&str> = entries.iter().filter_map(|e| e["action"].as_str()).collect();
    for action in ["create-keyring", "reload-policies", "reload-policies-refused"] {
        assert!(kinds.contains(&action), "{action} not in {kinds:?}");
    }
}
