use serde_json::{Value, json};

use crate::harness::{DUBLIN, DUBLIN_2, HAMAR, TestApp, problem};

#[tokio::test]
async fn a_subject_is_registered_once_and_then_updated() {
    let app = TestApp::start().await;
    let first = app.put_subject("u-1001").await;
    assert_eq!(first.status(), 201);
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["subject_id"], "u-1001");
    assert_eq!(body["home_region"], "eu");
    assert_eq!(body["created"], true);
    assert_eq!(body["decision"]["effect"], "allow");

    let again = app.put_subject("u-1001").await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["created"], false);
    assert_eq!(app.dump().await.len(), 1);
}

/// A registration that finds the subject's key already made (one cut short after the key was
/// made, or a race) fetches it under a log entry of its own: the custodian honours a receipt
/// once, and the registration's went on the creation it refused.
#[tokio::test]
async fn a_registration_cut_short_after_its_key_was_made_completes() {
    let app = TestApp::start().await;
    assert_eq!(app.put_subject("u-1003").await.status(), 201);
    app.tamper("DELETE FROM subjects WHERE subject_id = ?", None, "u-1003").await;
    let size = app.boundary.log().size();
    let again = app.put_subject("u-1003").await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.json::<Value>().await.unwrap()["log_index"].as_u64().unwrap(), size);
    assert_eq!(app.boundary.log().size(), size + 2, "the registration's entry, and the fetch's");
    let record = app.post_record("u-1003", "profile", json!({"name": "Ana"})).await;
    assert_eq!(record.status(), 201);
    let record = record.json::<Value>().await.unwrap()["record_id"].as_str().unwrap().to_owned();
    let read: Value = app.get_record(DUBLIN, &record).await.json().await.unwrap();
    assert_eq!(read["fields"]["name"], "Ana");
}

#[tokio::test]
async fn a_record_written_is_read_back_in_full_from_every_eu_site() {
    let app = TestApp::start().await;
    let fields = json!({"display_name": "Aoife", "email": "aoife@example.ie", "langs": ["ga", "en"], "age": 15});
    app.put_subject("u-1001").await;
    let created = app.post_record("u-1001", "profile", fields.clone()).await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["subject_id"], "u-1001");
    assert_eq!(created["category"], "profile");
    assert_eq!(created["version"], 1);
    assert_eq!(created["decision"]["effect"], "allow");
    let record = created["record_id"].as_str().unwrap();

    for site in [DUBLIN, DUBLIN_2, HAMAR] {
        let read = app.get_record(site, record).await;
        assert_eq!(read.status(), 200, "from {site}");
        let body: Value = read.json().await.unwrap();
        assert_eq!(body["record_id"], record);
        assert_eq!(body["subject_id"], "u-1001");
        assert_eq!(body["category"], "profile");
        assert_eq!(body["view"], "full");
        assert_eq!(body["fields"], fields);
        assert_eq!(body["decision"]["effect"], "allow");
        assert_eq!(body["decision"]["view"], "full");
        assert_eq!(body["decision"]["policies"], json!(["in-region-read"]));
    }
}

#[tokio::test]
async fn a_subject_of_another_region_gets_409_and_nothing_is_stored() {
    let app = TestApp::start().await;
    let response = app
        .client(DUBLIN)
        .put(app.url("/v1/subjects/u-2002"))
        .bearer_auth(app.token())
        .json(&json!({"home_region": "us", "birth_date": "1990-01-01"}))
        .send()
        .await
        .unwrap();
    let body = problem(response, 409, "wrong-region").await;
    assert!(body["detail"].as_str().unwrap().contains("\"us\""), "{body}");
    assert!(app.dump().await.is_empty());
}

#[tokio::test]
async fn unknown_subjects_and_records_are_404() {
    let app = TestApp::start().await;
    problem(app.post_record("nobody", "profile", json!({"a": 1})).await, 404, "not-found").await;
    problem(app.get_record(DUBLIN, "0b8e6f7a-3c1d-4f2e-9a5b-6c7d8e9f0a1b").await, 404, "not-found").await;
    let erase = app.client(DUBLIN).delete(app.url("/v1/subjects/nobody")).bearer_auth(app.token()).send().await;
    problem(erase.unwrap(), 404, "not-found").await;
    assert!(app.dump().await.is_empty());
}

#[tokio::test]
async fn many_concurrent_writes_all_land_and_read_back() {
    let app = TestApp::start().await;
    app.put_subject("u-1").await;
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..32 {
        let (client, url, token) = (app.client(DUBLIN), app.url("/v1/subjects/u-1/records"), app.token());
        writes.spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"category": "content", "fields": {"n": i}}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
            (i, response.json::<Value>().await.unwrap()["record_id"].as_str().unwrap().to_owned())
        });
    }
    let ids = writes.join_all().await;
    assert_eq!(ids.len(), 32);
    for (i, id) in ids {
        let body: Value = app.get_record(DUBLIN, &id).await.json().await.unwrap();
        assert_eq!(body["fields"], json!({"n": i}));
    }
}
