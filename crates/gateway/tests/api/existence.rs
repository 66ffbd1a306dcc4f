//! Existence oracles, tried as the attacker who found them: a caller who may not touch a subject
//! or a record gets the same answer whether it exists or not (before: 403, logged, when it
//! existed; 404, unlogged, when not). Only a caller the policy would allow learns that it does
//! not exist.

use serde_json::{Value, json};

use crate::harness::{DUBLIN, SINGAPORE, TestApp, problem};

/// What an answer tells: its status, problem type, detail and deciding policies, and whether it
/// was logged (it carries the index of the log's latest entry).
async fn told(app: &TestApp, response: reqwest::Response) -> (u16, Value, Value, Value, bool) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    let logged = body["log_index"].as_u64() == Some(app.boundary.log().size() - 1);
    (status, body["type"].clone(), body["detail"].clone(), body["decision"]["policies"].clone(), logged)
}

#[tokio::test]
async fn one_who_may_not_touch_a_subject_or_record_learns_nothing_of_its_existence() {
    let app = TestApp::start().await;
    let record = app.seed("u-1", json!({"display_name": "Aoife"})).await;
    let guessed_record = uuid::Uuid::new_v4().to_string();
    let token = app.token();

    for from in [SINGAPORE, crate::harness::UNKNOWN] {
        let client = app.client(from);
        // Erasing a subject.
        let erase = |id: &str| client.delete(app.url(&format!("/v1/subjects/{id}"))).bearer_auth(&token).send();
        let real = told(&app, erase("u-1").await.unwrap()).await;
        let guessed = told(&app, erase("u-guessed").await.unwrap()).await;
        assert_eq!(real.0, 403, "{real:?}");
        assert_eq!(real, guessed, "from {from}: an erasure of a subject that exists and one that does not");
        assert!(real.4, "the refusal is logged");
        // Writing a record for a subject.
        let write = |id: &str| {
            client
                .post(app.url(&format!("/v1/subjects/{id}/records")))
                .bearer_auth(&token)
                .json(&json!({"category": "profile", "fields": {"display_name": "x"}}))
                .send()
        };
        let real = told(&app, write("u-1").await.unwrap()).await;
        let guessed = told(&app, write("u-guessed").await.unwrap()).await;
        assert_eq!(real.0, 403, "{real:?}");
        assert_eq!(real, guessed, "from {from}: a write for a subject that exists and one that does not");
        // Reading a record, in full, for a purpose that may not leave the region.
        let read = |id: &str| {
            client
                .get(app.url(&format!("/v1/records/{id}")))
                .bearer_auth(&token)
                .header("X-Clover-Purpose", "safety")
                .send()
        };
        let real = told(&app, read(&record).await.unwrap()).await;
        let guessed = told(&app, read(&guessed_record).await.unwrap()).await;
        assert_eq!(real.0, 403, "{real:?}");
        assert_eq!(real, guessed, "from {from}: a read of a record that exists and one that does not");
    }
    // The subject and the record are still there.
    assert_eq!(app.get_record(DUBLIN, &record).await.status(), 200);

    // One whom the policy allows learns that a subject or record does not exist, and nothing is
    // logged for it.
    let size = app.boundary.log().size();
    let client = app.client(DUBLIN);
    problem(
        client.delete(app.url("/v1/subjects/u-guessed")).bearer_auth(&token).send().await.unwrap(),
        404,
        "not-found",
    )
    .await;
    problem(app.get_record(DUBLIN, &guessed_record).await, 404, "not-found").await;
    assert_eq!(app.boundary.log().size(), size);
}

/// Anyone with a token could append refused entries as fast as the log takes them. Past
/// `refusal_limit` in the window, per principal and per source address, a request that would be
/// refused gets 429 with `Retry-After` and no entry of its own; when the window ends, one summary
/// entry records how many there were, and refusals are logged again.
#[tokio::test]
async fn refusals_past_the_limit_get_429_and_one_summary_entry() {
    let app = TestApp::start_with(|config| {
        config.policy.refusal_limit = 3;
        config.policy.refusal_window_seconds = 2;
    })
    .await;
    let record = app.seed("u-1", json!({"display_name": "Aoife"})).await;
    let size = app.boundary.log().size();
    for _ in 0..3 {
        problem(app.get_record(SINGAPORE, &record).await, 403, "forbidden").await;
    }
    assert_eq!(app.boundary.log().size(), size + 3, "three refusals logged one by one");
    for _ in 0..5 {
        let limited = app.get_record(SINGAPORE, &record).await;
        let retry: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry), "Retry-After: {retry}");
        let body = problem(limited, 429, "too-many-refusals").await;
        assert!(body.get("log_index").is_none(), "{body}");
        assert!(!body.to_string().contains("Aoife"));
    }
    assert_eq!(app.boundary.log().size(), size + 3, "nothing more logged");
    // An allowed read is not limited.
    assert_eq!(app.get_record(DUBLIN, &record).await.status(), 200);

    // Per source address too: another principal from the same address is limited as well.
    let mut claims = app.claims("eu", "dublin-1", 3600);
    claims.sub = "bo".into();
    let bo = app.mint(&claims);
    let response = app
        .client(SINGAPORE)
        .get(app.url(&format!("/v1/records/{record}")))
        .bearer_auth(&bo)
        .header("X-Clover-Purpose", "support")
        .send()
        .await
        .unwrap();
    problem(response, 429, "too-many-refusals").await;

    // The window ends: one summary entry per principal and per address, no names in them, and
    // refusals are logged one by one again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let summaries = loop {
        let summaries: Vec<Value> = crate::harness::log_entries(app.boundary.log())
            .await
            .into_iter()
            .filter(|e| e["action"] == "refusals-limited")
            .collect();
        if summaries.len() >= 2 || std::time::Instant::now() > deadline {
            break summaries;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(summaries.len(), 2, "{summaries:?}");
    let details: Vec<&str> = summaries.iter().map(|e| e["detail"].as_str().unwrap()).collect();
    assert!(details.iter().any(|d| d.starts_with("5 refusals of one principal")), "{details:?}");
    assert!(details.iter().any(|d| d.starts_with("6 refusals of one source address")), "{details:?}");
    for summary in &summaries {
        assert!(!summary.to_string().contains("ana") && !summary.to_string().contains("127.0.2.1"), "{summary}");
        let annex = crate::harness::annex_of(&app.boundary, summary).await;
        assert!(annex.note.unwrap().contains("source address"));
    }
    problem(app.get_record(SINGAPORE, &record).await, 403, "forbidden").await;
}
