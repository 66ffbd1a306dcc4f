//! Erasure is crypto-shredding.

use clover_keys::{WrappedKey, aad};
use clover_model::{RecordId, SubjectId};
use serde_json::{Value, json};

use crate::harness::{DUBLIN, TestApp, files_containing, problem};

#[tokio::test]
async fn erasure_destroys_the_key_and_the_kept_ciphertext_opens_with_nothing_left() {
    let app = TestApp::start().await;
    let first = app.seed("u-erased", json!({"name": "to be forgotten"})).await;
    let second = app.post_record("u-erased", "messages", json!({"text": "also forgotten"})).await;
    let second = second.json::<Value>().await.unwrap()["record_id"].as_str().unwrap().to_owned();
    for i in 0..3 {
        app.seed(&format!("u-kept-{i}"), json!({"name": format!("kept {i}")})).await;
    }

    // What an attacker (or a backup) kept from before the erasure.
    let kept_ciphertexts = [app.ciphertext(&first).await, app.ciphertext(&second).await];
    let kept_wrapped_key = app.wrapped_key("u-erased").await;

    let response = app.client(DUBLIN).delete(app.url("/v1/subjects/u-erased")).bearer_auth(app.token()).send().await;
    let response = response.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["subject_id"], "u-erased");
    assert_eq!(body["erased_records"], 2);
    assert_eq!(body["decision"]["effect"], "allow");

    // Reads and writes afterwards: 404.
    for record in [&first, &second] {
        problem(app.get_record(DUBLIN, record).await, 404, "not-found").await;
    }
    problem(app.post_record("u-erased", "profile", json!({"a": 1})).await, 404, "not-found").await;
    let again = app.client(DUBLIN).delete(app.url("/v1/subjects/u-erased")).bearer_auth(app.token()).send().await;
    problem(again.unwrap(), 404, "not-found").await;

    // The wrapped key is gone from every byte of the data directory (database, WAL, everything),
    // and so are the records' ciphertexts.
    let data_dir = app.data_dir();
    assert_eq!(files_containing(&data_dir, &kept_wrapped_key), Vec::<std::path::PathBuf>::new());
    for ciphertext in &kept_ciphertexts {
        assert_eq!(files_containing(&data_dir, &ciphertext[..32]), Vec::<std::path::PathBuf>::new());
    }

    // Nothing the boundary still holds opens the kept ciphertext: try the data key of every
    // subject that remains, under every binding the erased records had.
    let region = app.boundary.region().clone();
    let erased: SubjectId = "u-erased".parse().unwrap();
    let rows = app.dump().await;
    assert_eq!(rows.iter().filter(|r| r.starts_with("subject ")).count(), 3);
    for i in 0..3 {
        let subject: SubjectId = format!("u-kept-{i}").parse().unwrap();
        let wrapped = WrappedKey { kek_version: 1, bytes: app.wrapped_key(subject.as_str()).await };
        let key = app.boundary.custody().unwrap(&subject, &wrapped, &app.receipt(&subject).await).unwrap();
        for (record, ciphertext) in [&first, &second].iter().zip(&kept_ciphertexts) {
            let record: RecordId = record.parse().unwrap();
            for owner in [&erased, &subject] {
                assert!(key.open(&aad::record(&region, owner, &record, 1), ciphertext).is_err());
            }
        }
    }
    // And the kept wrapped key is useless without its row: the custodian only unwraps it for
    // the erased subject, whose data key the boundary no longer has a copy of.
    let kept = WrappedKey { kek_version: 1, bytes: kept_wrapped_key };
    for i in 0..3 {
        let subject: SubjectId = format!("u-kept-{i}").parse().unwrap();
        assert!(app.boundary.custody().unwrap(&subject, &kept, &app.receipt(&subject).await).is_err());
    }
}
