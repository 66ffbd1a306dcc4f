//! `/v1/repatriation/jobs/{job}/…`: a batch comes home through the write path, is read back
//! and compared, and the job's receipt is signed and logged; tried as the operator would and as
//! an attacker would (no role, from abroad, another job, bad bytes, the public log read for what
//! it gives away).

use clover_event::{Entry, EventKind};
use clover_repatriate::{Digest, MerkleBuilder, SourceRecord, record_digest};
use clover_tlog::note::Note;
use serde_json::{Value, json};

use crate::harness::{DUBLIN, SINGAPORE, TestApp, log_entries, problem, served_log};

/// A token of the region's repatriation operator (role `repatriation`) at `site`.
fn operator(app: &TestApp, site: &str) -> String {
    let mut claims = app.claims("eu", site, 3600);
    claims.roles = vec!["repatriation".into()];
    app.mint(&claims)
}

fn row(key: &str, ordinal: u64, subject: &str, birth: Option<&str>, fields: Value) -> Value {
    json!({
        "source_key": key, "ordinal": ordinal, "subject_id": subject, "home_region": "eu",
        "birth_date": birth, "category": "profile", "fields": fields,
    })
}

fn digest_of(key: &str, subject: &str, fields: Value) -> Digest {
    let Value::Object(map) = fields else { panic!("an object") };
    record_digest(&SourceRecord {
        source_key: key.into(),
        subject: subject.parse().unwrap(),
        home_region: "eu".parse().unwrap(),
        birth_date: None,
        category: "profile".parse().unwrap(),
        fields: clover_model::Fields::new(map),
    })
}

async fn post(app: &TestApp, from: &str, token: &str, path: &str, body: &Value) -> reqwest::Response {
    app.client(from).post(app.url(path)).bearer_auth(token).json(body).send().await.unwrap()
}

fn batch() -> Value {
    json!({"records": [
        row("k-1", 0, "u-2001", Some("1980-02-03"), json!({"display_name": "VALUE-Niamh", "n": 1.5})),
        row("k-2", 1, "u-2002", Some("2015-06-07"), json!({"display_name": "VALUE-Oisin"})),
        row("k-3", 2, "u-2001", Some("1980-02-03"), json!({"email": "VALUE-niamh@example.ie"})),
    ]})
}

#[tokio::test]
async fn a_batch_comes_home_through_the_write_path_and_reads_back_identical() {
    let app = TestApp::start().await;
    let token = operator(&app, "dublin-1");
    let before = app.boundary.log().size();
    let answer = post(&app, DUBLIN, &token, "/v1/repatriation/jobs/sg-1/records", &batch()).await;
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["subjects_registered"], 2, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let expected = [
        digest_of("k-1", "u-2001", json!({"display_name": "VALUE-Niamh", "n": 1.5})),
        digest_of("k-2", "u-2002", json!({"display_name": "VALUE-Oisin"})),
        digest_of("k-3", "u-2001", json!({"email": "VALUE-niamh@example.ie"})),
    ];
    for (result, digest) in results.iter().zip(&expected) {
        assert_eq!(result["status"], "copied");
        assert_eq!(result["read_back"], "=", "read back from the store as committed");
        assert_eq!(result["digest"], digest.to_hex(), "the boundary's digest is the documented one");
    }
    // Two registrations and three writes, each an entry, each a repatriation.
    let entries = log_entries(app.boundary.log()).await;
    let new: Vec<&Value> = entries[usize::try_from(before).unwrap()..].iter().collect();
    assert_eq!(new.len(), 5, "{new:?}");
    assert!(new.iter().all(|e| e["kind"] == "write" && e["action"] == "repatriate"), "{new:?}");

    // Stored sealed, readable through the read path like any record; the minor is a minor.
    let record = results[1]["record_id"].as_str().unwrap();
    let read: Value = app.get_record(DUBLIN, record).await.json().await.unwrap();
    assert_eq!(read["fields"], json!({"display_name": "VALUE-Oisin"}));
    assert!(app.dump().await.iter().all(|row| !row.contains("VALUE-")), "plaintext in the store");

    // Again (a resumed run): nothing written twice, nothing logged.
    let size = app.boundary.log().size();
    let again: Value =
        post(&app, DUBLIN, &token, "/v1/repatriation/jobs/sg-1/records", &batch()).await.json().await.unwrap();
    assert!(again["results"].as_array().unwrap().iter().all(|r| r["status"] == "present"), "{again}");
    assert!(again["results"].as_array().unwrap().iter().all(|r| r["read_back"].is_null()), "{again}");
    assert_eq!(again["results"][0]["record_id"], results[0]["record_id"]);
    assert_eq!(app.boundary.log().size(), size);
    assert_eq!(app.boundary.store().counts().await.unwrap().records, 3);
    // One row changed at the source since: reported, not written.
    let changed = json!({"records": [row("k-2", 1, "u-2002", Some("2015-06-07"), json!({"display_name": "Oisín"}))]});
    let changed: Value =
        post(&app, DUBLIN, &token, "/v1/repatriation/jobs/sg-1/records", &changed).await.json().await.unwrap();
    assert_eq!(changed["results"][0]["status"], "changed");
    assert_eq!(app.boundary.store().counts().await.unwrap().records, 3);

    // Verified: read back through the custodian, each read logged as an access. k-3's copy
    // was changed in the store (it no longer opens): `!`.
    let k3 = results[2]["record_id"].as_str().unwrap();
    app.tamper("UPDATE records SET ciphertext = ? WHERE record_id = ?", Some(&[7u8; 64]), k3).await;
    let size = app.boundary.log().size();
    let checks = json!({"category": "profile", "records": [
        {"source_key": "k-1", "digest": expected[0].to_hex()},
        {"source_key": "k-2", "digest": digest_of("k-2", "u-2002", json!({"display_name": "Oisín"})).to_hex()},
        {"source_key": "k-3", "digest": expected[2].to_hex()},
        {"source_key": "k-9", "digest": expected[0].to_hex()},
    ]});
    let verified = post(&app, DUBLIN, &token, "/v1/repatriation/jobs/sg-1/verify", &checks).await;
    assert_eq!(verified.status(), 200);
    let verified: Value = verified.json().await.unwrap();
    let statuses: Vec<(&str, bool)> = verified["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["status"].as_str().unwrap(), r["source_changed"].as_bool().unwrap()))
        .collect();
    assert_eq!(statuses, [("=", false), ("*", true), ("!", false), ("+", false)]);
    let reads = &log_entries(app.boundary.log()).await[usize::try_from(size).unwrap()..];
    assert_eq!(reads.len(), 3, "one logged read per record read back");
    assert!(reads.iter().all(|e| e["kind"] == "access" && e["action"] == "repatriate"), "{reads:?}");
    assert!(!verified.to_string().contains("VALUE-"), "a verification answers no data");
}

#[tokio::test]
async fn the_receipt_is_signed_by_the_log_key_and_its_hash_is_logged() {
    let app = TestApp::start().await;
    let token = operator(&app, "dublin-1");
    // Sent out of order: the root follows the rows' places in the source.
    let rows = batch()["records"].as_array().unwrap().iter().rev().cloned().collect::<Vec<_>>();
    let stored = post(&app, DUBLIN, &token, "/v1/repatriation/jobs/sg-2/records", &json!({"records": rows})).await;
    assert_eq!(stored.status(), 200);
    let body = json!({"source": "postgres://sg@db.sg.example/platform", "plan": {"region": 3}, "purge": null});
    let answer = post(&app, DUBLIN, &token, "/v1/repatriation/jobs/sg-2/receipt", &body).await;
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();

    let mut merkle = MerkleBuilder::new();
    for d in [
        digest_of("k-1", "u-2001", json!({"display_name": "VALUE-Niamh", "n": 1.5})),
        digest_of("k-2", "u-2002", json!({"display_name": "VALUE-Oisin"})),
        digest_of("k-3", "u-2001", json!({"email": "VALUE-niamh@example.ie"})),
    ] {
        merkle.push(&d);
    }
    assert_eq!(answer["records"], 3);
    assert_eq!(answer["root"], merkle.root().to_hex());
    let note_text = answer["note"].as_str().unwrap();
    let note = Note::parse(note_text).unwrap();
    note.verify(app.boundary.log_vkey()).unwrap();
    let text = &note.text;
    assert!(text.starts_with("clover/repatriation-receipt/v1\nregion eu\njob sg-2\n"), "{text}");
    assert!(text.contains(&format!("\nroot {}\n", merkle.root())), "{text}");
    assert!(text.contains("\nreported-plan {\"region\":3}\nreported-purge none\n"), "{text}");

    // The entry holds the note's SHA-256, and it is the log's at its index.
    use base64::Engine as _;
    let entry = base64::engine::general_purpose::STANDARD.decode(answer["entry"].as_str().unwrap()).unwrap();
    let index = answer["log_index"].as_u64().unwrap();
    assert_eq!(app.boundary.log().entry(index).await.unwrap(), entry);
    let Ok(Entry::V2(event)) = Entry::decode(&entry) else { panic!("a current entry") };
    assert_eq!(event.kind, EventKind::Repatriation);
    let hash = Digest::of(note_text.as_bytes());
    assert!(event.detail.unwrap().contains(&format!("sha256:{hash}")));
    // A tampered note does not verify.
    let forged = note_text.replace("records 3", "records 4");
    assert!(Note::parse(&forged).unwrap().verify(app.boundary.log_vkey()).is_err());
}

#[tokio::test]
async fn a_caller_without_the_role_or_from_abroad_is_refused_logged_and_learns_nothing() {
    let app = TestApp::start().await;
    let token = operator(&app, "dublin-1");
    assert_eq!(post(&app, DUBLIN, &token, "/v1/repatriation/jobs/sg-3/records", &batch()).await.status(), 200);
    let records = app.boundary.store().counts().await.unwrap().records;
    let checks = json!({"category": "profile", "records": [
        {"source_key": "k-1", "digest": "0".repeat(64)}, {"source_key": "nope", "digest": "0".repeat(64)}]});
    let receipt = json!({"source": "x", "plan": {}});

    // An agent of the region (roles support, legal), and the operator's own token from Singapore.
    let cases = [(DUBLIN, app.token()), (SINGAPORE, operator(&app, "singapore-1"))];
    for (from, token) in &cases {
        for (path, body) in [
            ("/v1/repatriation/jobs/sg-3/records", batch()),
            ("/v1/repatriation/jobs/sg-4/records", batch()),
            ("/v1/repatriation/jobs/sg-3/verify", checks.clone()),
            ("/v1/repatriation/jobs/sg-3/receipt", receipt.clone()),
            ("/v1/repatriation/jobs/never-was/receipt", receipt.clone()),
        ] {
            let size = app.boundary.log().size();
            let refused = problem(post(&app, from, token, path, &body).await, 403, "forbidden").await;
            assert_eq!(refused["log_index"].as_u64(), Some(size), "{path}: the refusal is logged");
            let text = refused.to_string();
            assert!(!text.contains("k-1") && !text.contains("u-2001") && !text.contains("present"), "{text}");
        }
    }
    assert_eq!(app.boundary.store().counts().await.unwrap().records, records, "nothing written");
    // Without a token at all.
    let anonymous = app.client(DUBLIN).post(app.url("/v1/repatriation/jobs/sg-3/records")).json(&batch()).send();
    assert_eq!(anonymous.await.unwrap().status(), 401);
    // With the role, a job that brought nothing home has no receipt.
    problem(post(&app, DUBLIN, &token, "/v1/repatriation/jobs/never-was/receipt", &receipt).await, 404, "not-found")
        .await;
}

#[tokio::test]
async fn bad_batches_are_refused_whole_and_write_nothing() {
    let app = TestApp::start().await;
    let token = operator(&app, "dublin-1");
    let size = app.boundary.log().size();
    let mut abroad = batch();
    abroad["records"][1]["home_region"] = json!("sg");
    let mut twice = batch();
    twice["records"][2]["source_key"] = json!("k-1");
    let mut category = batch();
    category["records"][1]["category"] = json!("diaries");
    let mut subject = batch();
    subject["records"][1]["subject_id"] = json!("../etc");
    let mut born = batch();
    born["records"][0]["birth_date"] = json!("2999-01-01");
    let mut unknown = batch();
    unknown["records"][0]["extra"] = json!(1);
    let too_many =
        json!({"records": (0..20_000).map(|i| row(&format!("k{i}"), i, "u-1", None, json!({}))).collect::<Vec<_>>()});
    for (path, body, status, kind) in [
        ("/v1/repatriation/jobs/sg-5/records", abroad, 409, "wrong-region"),
        ("/v1/repatriation/jobs/sg-5/records", category, 422, "unknown-category"),
        ("/v1/repatriation/jobs/sg-5/records", subject, 422, "invalid-body"),
        ("/v1/repatriation/jobs/sg-5/records", born, 422, "invalid-body"),
        ("/v1/repatriation/jobs/sg-5/records", unknown, 422, "invalid-body"),
        ("/v1/repatriation/jobs/sg-5/records", json!({"records": []}), 422, "invalid-body"),
        ("/v1/repatriation/jobs/sg-5/records", too_many, 413, "payload-too-large"),
        ("/v1/repatriation/jobs/Bad%20Job/records", batch(), 400, "invalid-id"),
        (
            "/v1/repatriation/jobs/sg-5/verify",
            json!({"category": "profile", "records": [{"source_key": "k", "digest": "xyz"}]}),
            422,
            "invalid-body",
        ),
        ("/v1/repatriation/jobs/sg-5/receipt", json!({"source": "a\nb", "plan": {}}), 422, "invalid-body"),
        ("/v1/repatriation/jobs/sg-5/receipt", json!({"source": "a", "plan": []}), 422, "invalid-body"),
    ] {
        let response = post(&app, DUBLIN, &token, path, &body).await;
        problem(response, status, kind).await;
    }
    let raw = app
        .client(DUBLIN)
        .post(app.url("/v1/repatriation/jobs/sg-5/records"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(b"{\"records\": [\xff]}".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    assert_eq!(app.boundary.store().counts().await.unwrap(), clover_store::Counts { subjects: 0, records: 0 });
    assert_eq!(app.boundary.log().size(), size, "nothing decided, nothing logged");
    // A key twice in a batch: the first row counts, the second is not written.
    let answer: Value =
        post(&app, DUBLIN, &token, "/v1/repatriation/jobs/sg-5/records", &twice).await.json().await.unwrap();
    let statuses: Vec<&str> =
        answer["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["copied", "copied", "duplicate"], "{answer}");
    assert_eq!(app.boundary.store().counts().await.unwrap().records, 2);
}

#[tokio::test]
async fn the_public_log_of_a_repatriation_names_no_one_and_no_source_row() {
    let app = TestApp::start().await;
    let token = operator(&app, "dublin-1");
    assert_eq!(post(&app, DUBLIN, &token, "/v1/repatriation/jobs/sg-6/records", &batch()).await.status(), 200);
    let body = json!({"source": "postgres://sg@db.sg.example/platform", "plan": {"region": 3}});
    assert_eq!(post(&app, DUBLIN, &token, "/v1/repatriation/jobs/sg-6/receipt", &body).await.status(), 200);
    for (path, bytes) in served_log(&app).await {
        let text = String::from_utf8_lossy(&bytes);
        for secret in ["u-2001", "u-2002", "k-1", "VALUE-", "sg-6", "db.sg.example", "\"ana\""] {
            assert!(!text.contains(secret), "{path} gives away {secret}");
        }
    }
}

#[tokio::test]
async fn a_subject_erased_in_the_region_is_not_brought_back_by_a_later_run() {
    let app = TestApp::start().await;
    let token = operator(&app, "dublin-1");
    assert_eq!(post(&app, DUBLIN, &token, "/v1/repatriation/jobs/sg-8/records", &batch()).await.status(), 200);
    let erased = app.client(DUBLIN).delete(app.url("/v1/subjects/u-2002")).bearer_auth(app.token()).send().await;
    assert_eq!(erased.unwrap().status(), 200);
    // The same job run again, and another job: the erased subject's row stays abroad.
    for job in ["sg-8", "sg-9"] {
        let answer: Value = post(&app, DUBLIN, &token, &format!("/v1/repatriation/jobs/{job}/records"), &batch())
            .await
            .json()
            .await
            .unwrap();
        let statuses: Vec<&str> =
            answer["results"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
        let expected = if job == "sg-8" { ["present", "erased", "present"] } else { ["copied", "erased", "copied"] };
        assert_eq!(statuses, expected, "{answer}");
        assert!(answer["results"][1]["record_id"].is_null());
    }
    assert!(app.boundary.store().subject(&"u-2002".parse().unwrap()).await.unwrap().is_none());
    assert!(app.dump().await.iter().all(|row| !row.contains("u-2002")), "the erased subject is back");
}
