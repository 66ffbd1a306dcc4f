//! The public log identifies no one (entry format 2), tried as the attacker who found that it
//! did: everything the log serves to anyone, read for names, ids, tickets and values; a refused
//! request about a guessed subject, to learn a handle on their history; and an erased subject's
//! history, looked for through every API.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::harness::{DUBLIN, SINGAPORE, TestApp, log_entries, problem, served_log};

/// A read with a ticket, from `from`.
async fn read(app: &TestApp, from: &str, record: &str, ticket: &str) -> reqwest::Response {
    app.read_with_ticket(from, record, ticket).await.unwrap()
}

async fn accesses(app: &TestApp, from: &str, subject: &str) -> reqwest::Response {
    app.client(from)
        .get(app.url(&format!("/v1/subjects/{subject}/accesses")))
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn nothing_the_log_serves_names_a_person_a_record_a_ticket_or_a_value() {
    let app = TestApp::start().await;
    let mut secrets: Vec<String> = vec!["subject-zq93".into(), "subject-kx27".into(), "\"ana\"".into()];
    for (subject, value) in [("subject-zq93", "VALUE-Aoife-Byrne"), ("subject-kx27", "VALUE-353-1-555-0100")] {
        let record = app.seed(subject, json!({"display_name": value})).await;
        secrets.push(value.into());
        secrets.push(record.clone());
        assert_eq!(read(&app, DUBLIN, &record, "CASE-98765").await.status(), 200);
        problem(read(&app, SINGAPORE, &record, "CASE-98766").await, 403, "forbidden").await;
        assert_eq!(accesses(&app, DUBLIN, subject).await.status(), 200);
    }
    secrets.extend(["CASE-98765".into(), "CASE-98766".into()]);
    // An approval asked for (it names the subjects) and key status viewed.
    let approval = app
        .client(DUBLIN)
        .post(app.url("/v1/approvals"))
        .bearer_auth(app.token())
        .json(&json!({"subjects": ["subject-zq93"], "categories": ["profile"], "purpose": "support"}))
        .send()
        .await
        .unwrap();
    assert_eq!(approval.status(), 201);
    let erased =
        app.client(DUBLIN).delete(app.url("/v1/subjects/subject-kx27")).bearer_auth(app.token()).send().await.unwrap();
    assert_eq!(erased.status(), 200);

    let served = served_log(&app).await;
    assert!(served.iter().any(|(path, _)| path.starts_with("tile/entries/")));
    for (path, bytes) in &served {
        let text = String::from_utf8_lossy(bytes);
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{path} gives away {secret}");
        }
    }
    // The subject and the caller appear only as tags and a pseudonym; every entry about a
    // subject has a tag of its own.
    let entries = log_entries(app.boundary.log()).await;
    let tags: Vec<&Value> = entries.iter().filter(|e| !e["subject"].is_null()).map(|e| &e["subject"]).collect();
    assert!(tags.len() >= 10, "{tags:?}");
    let distinct: HashSet<String> = tags.iter().map(|t| t["tag"].to_string()).collect();
    assert_eq!(distinct.len(), tags.len(), "a subject tag repeats");
    let nonces: HashSet<String> = tags.iter().map(|t| t["nonce"].to_string()).collect();
    assert_eq!(nonces.len(), tags.len(), "a nonce repeats");
}

#[tokio::test]
async fn a_refused_request_about_a_guessed_subject_gives_no_handle_on_anyone() {
    let app = TestApp::start().await;
    let record = app.seed("u-1", json!({"display_name": "Aoife"})).await;
    assert_eq!(read(&app, DUBLIN, &record, "CASE-1").await.status(), 200);

    // From abroad, the attacker asks about a subject that exists and one that does not: both
    // refused alike, and the refusals' entries carry tags like any other.
    let real = problem(accesses(&app, SINGAPORE, "u-1").await, 403, "forbidden").await;
    let guessed = problem(accesses(&app, SINGAPORE, "u-does-not-exist").await, 403, "forbidden").await;
    for body in [&real, &guessed] {
        assert_eq!(body["decision"]["policies"], real["decision"]["policies"]);
    }
    let entries = log_entries(app.boundary.log()).await;
    let tag_of =
        |body: &Value| entries[usize::try_from(body["log_index"].as_u64().unwrap()).unwrap()]["subject"].clone();
    let (real_tag, guessed_tag) = (tag_of(&real), tag_of(&guessed));
    for tag in [&real_tag, &guessed_tag] {
        assert_eq!(tag["nonce"].as_str().unwrap().len(), 32, "{tag}");
        assert_eq!(tag["tag"].as_str().unwrap().len(), 64, "{tag}");
    }
    // Neither tag (nor nonce) appears in any other entry: the refusal about u-1 does not point
    // at u-1's read, so the attacker cannot follow it to their history.
    for (index, entry) in entries.iter().enumerate() {
        let text = entry.to_string();
        for tag in [&real_tag, &guessed_tag] {
            let own = entry["subject"] == *tag;
            assert!(
                own || (!text.contains(tag["tag"].as_str().unwrap()) && !text.contains(tag["nonce"].as_str().unwrap())),
                "entry {index} shares a tag with a refusal: {text}"
            );
        }
    }
    // The region still finds u-1's refusal among u-1's accesses (through the annexes), and the
    // guessed subject's among theirs.
    let listed: Value = accesses(&app, DUBLIN, "u-1").await.json().await.unwrap();
    let indexes: Vec<u64> =
        listed["entries"].as_array().unwrap().iter().map(|e| e["index"].as_u64().unwrap()).collect();
    assert!(indexes.contains(&real["log_index"].as_u64().unwrap()), "{indexes:?}");
    assert!(!indexes.contains(&guessed["log_index"].as_u64().unwrap()), "{indexes:?}");
}

#[tokio::test]
async fn after_erasure_no_one_finds_the_subjects_entries() {
    let app = TestApp::start().await;
    let record = app.seed("u-1", json!({"display_name": "Aoife"})).await;
    assert_eq!(read(&app, DUBLIN, &record, "CASE-1").await.status(), 200);
    let before: Value = accesses(&app, DUBLIN, "u-1").await.json().await.unwrap();
    let former: Vec<u64> = before["entries"].as_array().unwrap().iter().map(|e| e["index"].as_u64().unwrap()).collect();
    assert!(former.len() >= 4, "registration, record, read, listing: {former:?}");
    let subject = "u-1".parse().unwrap();
    assert!(app.boundary.custody().subject_tag_key(&subject, false).await.unwrap().is_some());

    let erased = app.client(DUBLIN).delete(app.url("/v1/subjects/u-1")).bearer_auth(app.token()).send().await.unwrap();
    assert_eq!(erased.status(), 200);
    let erasure = erased.json::<Value>().await.unwrap()["log_index"].as_u64().unwrap();

    // The tag key is destroyed, the annexes no longer name the subject, and the listing finds
    // none of their former entries, nor the erasure itself: only the listing's own entry.
    assert!(app.boundary.custody().subject_tag_key(&subject, false).await.unwrap().is_none());
    assert!(app.boundary.store().annexes_of(&subject).await.unwrap().is_empty());
    let after: Value = accesses(&app, DUBLIN, "u-1").await.json().await.unwrap();
    let found: Vec<u64> = after["entries"].as_array().unwrap().iter().map(|e| e["index"].as_u64().unwrap()).collect();
    assert_eq!(found, vec![after["log_index"].as_u64().unwrap()], "former entries {former:?}, erasure {erasure}");

    // The entries are all still there, and the log still verifies.
    assert!(app.boundary.log().size() > erasure);
    for index in former.iter().chain([&erasure]) {
        let annex_commitment = log_entries(app.boundary.log()).await[usize::try_from(*index).unwrap()]["annex"].clone();
        let kept = app.boundary.store().annex(annex_commitment.as_str().unwrap()).await.unwrap().unwrap();
        assert!(!String::from_utf8(kept.encode()).unwrap().contains("u-1"), "{kept:?}");
    }

    // Registered again, the id starts a new history, unlinked to the old one.
    app.seed("u-1", json!({"display_name": "Someone else"})).await;
    let again: Value = accesses(&app, DUBLIN, "u-1").await.json().await.unwrap();
    let found: Vec<u64> = again["entries"].as_array().unwrap().iter().map(|e| e["index"].as_u64().unwrap()).collect();
    assert!(found.iter().all(|i| !former.contains(i) && *i != erasure), "{found:?}");
}

#[tokio::test]
async fn format_1_entries_stay_valid_and_the_verifier_checks_both() {
    let app = TestApp::start().await;
    let record = app.seed("u-1", json!({"display_name": "Aoife"})).await;
    // An entry as an earlier version wrote it: the caller and the record by name, and the
    // subject's hash, the same in every entry about them.
    let hash = app.boundary.subject_hash(&"u-1".parse().unwrap());
    let v1 = format!(
        r#"{{"v":1,"kind":"access","time":1795426787,"principal":{{"id":"ana","kind":"employee","region":"eu","site":"dublin-1"}},"origin":{{"site":"dublin-1","region":"eu"}},"action":"read","subject":"{hash}","record":"{record}","category":"profile","decision":{{"effect":"allow","view":"full","policies":["in-region-access"]}},"purpose":"support","justification":null,"detail":null}}"#
    );
    let old = app.boundary.log().append_encoded(v1.into_bytes()).await.unwrap();
    assert!(app.boundary.log().append_encoded(b"{\"v\":1}".to_vec()).await.is_err(), "not an entry");
    assert!(app.boundary.log().append_encoded(b"{\"v\":9,\"kind\":\"access\"}".to_vec()).await.is_err());
    assert_eq!(read(&app, DUBLIN, &record, "CASE-1").await.status(), 200);

    // An auditor's verifier checks every entry of either format against the signed tree.
    let vkey = app.boundary.log_verifier();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let report = loop {
        let options = clover_audit::verify::VerifyOptions {
            url: app.url(""),
            vkey: vkey.clone(),
            witnesses: Vec::new(),
            state: None,
            tls: clover_tls::ClientTls::default(),
        };
        let report = clover_audit::verify::verify(&options).await.unwrap();
        if report.size == app.boundary.log().size() || std::time::Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(report.size, app.boundary.log().size());
    assert_eq!(report.formats[0], 1, "{report:?}");
    assert_eq!(report.formats[1], report.size - 1, "{report:?}");

    // The region still finds the old entry among the subject's accesses, while they are
    // registered, without an annex.
    let listed: Value = accesses(&app, DUBLIN, "u-1").await.json().await.unwrap();
    let old_entry = listed["entries"].as_array().unwrap().iter().find(|e| e["index"] == old).unwrap().clone();
    assert_eq!(old_entry["entry"]["v"], 1);
    assert!(old_entry["annex"].is_null());
}
