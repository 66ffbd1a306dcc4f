//! Encryption at rest: no personal value in the clear on disk; ciphertext bound to its place.

use clover_keys::aad;
use clover_model::{RecordId, SubjectId};
use serde_json::{Value, json};

use crate::harness::{DUBLIN, TestApp, files, files_containing, problem};

const MARKER: &str = "MARKER-7f3a9c-personal-value";
/// An adult's: a minor's messages and location would need an approval to be read back.
const BIRTH_DATE: &str = "1987-03-14";

#[tokio::test]
async fn no_personal_value_appears_in_the_clear_anywhere_in_the_data_directory() {
    let app = TestApp::start().await;
    let response = app
        .client(DUBLIN)
        .put(app.url("/v1/subjects/u-1"))
        .bearer_auth(app.token())
        .json(&json!({"home_region": "eu", "birth_date": BIRTH_DATE}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let mut ids = Vec::new();
    for category in ["profile", "messages", "location"] {
        let fields = json!({"name": MARKER, "nested": {"deep": [MARKER, 42]}, "note": format!("x{MARKER}x")});
        let response = app.post_record("u-1", category, fields).await;
        ids.push(response.json::<Value>().await.unwrap()["record_id"].as_str().unwrap().to_owned());
    }
    // The values come back in full to an allowed caller...
    for id in &ids {
        let body: Value = app.get_record(DUBLIN, id).await.json().await.unwrap();
        assert_eq!(body["fields"]["name"], MARKER);
    }
    // ...while no byte sequence of them is on disk: not in the database, its WAL, or anywhere else,
    // both while the server runs and after it stopped.
    let data_dir = app.data_dir();
    let check = move |when: &str| {
        assert!(!files(&data_dir).is_empty());
        for needle in [MARKER.as_bytes(), BIRTH_DATE.as_bytes(), b"7f3a9c"] {
            let found = files_containing(&data_dir, needle);
            assert!(found.is_empty(), "{when}: {:?} found in the clear in {found:?}", String::from_utf8_lossy(needle));
        }
    };
    check("while serving");
    let _dir = app.stop().await;
    check("after stopping");
}

#[tokio::test]
async fn ciphertext_moved_to_another_row_fails_to_open_and_leaks_nothing() {
    let app = TestApp::start().await;
    let a = app.seed("u-1", json!({"secret": "A-value"})).await;
    let b = app.post_record("u-1", "profile", json!({"secret": "B-value"})).await;
    let b = b.json::<Value>().await.unwrap()["record_id"].as_str().unwrap().to_owned();
    let other = app.seed("u-2", json!({"secret": "other-subject"})).await;

    // Copy A's ciphertext over B's row (same subject, same key): the record id in the
    // associated data no longer matches.
    let a_cipher = app.ciphertext(&a).await;
    app.tamper("UPDATE records SET ciphertext = ? WHERE record_id = ?", Some(&a_cipher), &b).await;
    let body = problem(app.get_record(DUBLIN, &b).await, 500, "internal").await;
    assert!(!body.to_string().contains("A-value"));
    assert!(!body.to_string().contains("decrypt"), "internal causes stay in the server log: {body}");

    // Copy A's ciphertext to another subject's record: wrong key and wrong subject.
    app.tamper("UPDATE records SET ciphertext = ? WHERE record_id = ?", Some(&a_cipher), &other).await;
    problem(app.get_record(DUBLIN, &other).await, 500, "internal").await;

    // Bump the version of A's row: the version is bound too.
    app.tamper("UPDATE records SET version = 2 WHERE record_id = ?", None, &a).await;
    problem(app.get_record(DUBLIN, &a).await, 500, "internal").await;
}

#[tokio::test]
async fn ciphertext_taken_to_another_region_fails_to_open() {
    let app = TestApp::start().await;
    let record = app.seed("u-1", json!({"secret": "eu-only"})).await;
    let subject: SubjectId = "u-1".parse().unwrap();
    let record_id: RecordId = record.parse().unwrap();
    let ciphertext = app.ciphertext(&record).await;
    let key =
        app.boundary.custody().data_key(&app.record_receipt(&subject, &record_id, "profile").await).await.unwrap();

    let eu = app.boundary.region().clone();
    let opened = key.open(&aad::record(&eu, &subject, &record_id, 1), &ciphertext).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&opened).unwrap(), json!({"secret": "eu-only"}));
    for region in ["us", "sg", "eu-west"] {
        let elsewhere = aad::record(&region.parse().unwrap(), &subject, &record_id, 1);
        assert!(key.open(&elsewhere, &ciphertext).is_err(), "opened as region {region}");
    }
}
