//! The transparency report on government requests, computed from the log alone.

use clover_event::{EVENT_VERSION, Event, EventKind, GovernmentRequestFacts};
use serde_json::{Value, json};

use crate::harness::{TestApp, UNKNOWN, problem};

fn entry(id: &str, stage: &str, time: i64, facts: impl FnOnce(&mut GovernmentRequestFacts)) -> Event {
    let mut request = GovernmentRequestFacts {
        request_id: id.into(),
        stage: stage.into(),
        country: None,
        instrument: None,
        count: 0,
        categories: Vec::new(),
        deadline: None,
        outcome: None,
        sealed: None,
        gag_until: None,
    };
    facts(&mut request);
    Event {
        v: EVENT_VERSION,
        kind: EventKind::GovernmentRequest,
        time,
        principal: None,
        origin: None,
        action: Some("government-request".into()),
        subject: None,
        category: None,
        decision: None,
        purpose: None,
        annex: None,
        detail: None,
        transfer: None,
        government_request: Some(Box::new(request)),
    }
}

#[tokio::test]
async fn the_report_is_computed_from_the_log_and_a_zero_is_a_fact() {
    let app = TestApp::start().await;
    let get = |query: &'static str, csv: bool| {
        let app = &app;
        async move {
            let mut request = app.client(UNKNOWN).get(app.url(&format!("/v1/reports/government-requests{query}")));
            if csv {
                request = request.header("Accept", "text/csv");
            }
            request.send().await.unwrap()
        }
    };
    // Nothing received: an empty report anyone can fetch (no token), over the whole log.
    let empty: Value = get("?period=2026-H2", false).await.json().await.unwrap();
    assert_eq!(empty["rows"], json!([]));
    assert_eq!(empty["gagged"], 0);
    assert!(empty["entries"].as_u64().unwrap() >= 1);

    // Requests received in 2026-H2, one decided and disclosed, one gagged, one in H1.
    let july = 1_782_864_000 + 3_600;
    for event in [
        entry("gr-1", "received", july, |f| {
            f.country = Some("de".into());
            f.instrument = Some("production-order".into());
            f.count = 2;
            f.deadline = Some(july + 864_000);
        }),
        entry("gr-1", "decided", july + 7_200, |f| f.outcome = Some("granted".into())),
        entry("gr-1", "disclosed", july + 7_300, |f| f.count = 5),
        entry("gr-2", "received", july, |f| {
            f.sealed = Some("00".repeat(32));
            f.gag_until = Some(july + 86_400 * 90);
        }),
        entry("gr-3", "received", july - 86_400 * 60, |f| {
            f.country = Some("fr".into());
            f.instrument = Some("emergency".into());
            f.count = 1;
        }),
    ] {
        app.boundary.log().append(&event).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let report: Value = get("?period=2026-H2", false).await.json().await.unwrap();
    assert_eq!(report["rows"].as_array().unwrap().len(), 1, "{report}");
    let row = &report["rows"][0];
    assert_eq!((row["country"].as_str(), row["instrument"].as_str()), (Some("de"), Some("production-order")));
    assert_eq!(
        (row["requests"].as_u64(), row["accounts"].as_u64(), row["disclosed"].as_u64()),
        (Some(1), Some(2), Some(1))
    );
    assert_eq!(row["disclosed_percent"], 100);
    assert_eq!(row["deadlines_met"], 1);
    assert_eq!(row["median_hours_to_answer"], 2);
    assert_eq!(report["gagged"], 1);
    let h1: Value = get("?period=2026-H1", false).await.json().await.unwrap();
    assert_eq!(h1["rows"][0]["country"], "fr");
    assert_eq!(h1["emergency"], 1);
    let csv = get("?period=2026-H2", true).await.text().await.unwrap();
    assert!(csv.contains("2026-H2,de,production-order,1,2,1,100,0,1,0,2\n"), "{csv}");
    assert!(csv.ends_with("2026-H2,gagged,gagged,1,,,,,,,\n"), "{csv}");

    for bad in ["?period=2026-H3", "?period=26-H1", "", "?period=2026-H1&x=1"] {
        problem(get(bad, false).await, 400, "invalid-query").await;
    }
}

fn body(instrument: &str, subjects: &[&str]) -> Value {
    json!({
        "authority": "Staatsanwaltschaft Berlin",
        "country": "de",
        "instrument": instrument,
        "legal_basis": "Regulation (EU) 2023/1543, Art. 5",
        "categories": ["profile", "messages"],
        "subjects": subjects,
        "document_sha256": "ab".repeat(32),
    })
}

#[tokio::test]
async fn the_legal_team_registers_requests_which_the_log_and_the_report_count_without_names() {
    let app = TestApp::start().await;
    let record = app.seed("u-1001", json!({"display_name": "Aoife"})).await;
    let post = |body: Value, token: String, from: &'static str| {
        let app = &app;
        async move {
            app.client(from)
                .post(app.url("/v1/government-requests"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let response = post(body("production-order", &["u-1001", "u-2002"]), app.token(), crate::harness::DUBLIN).await;
    assert_eq!(response.status(), 201);
    let made: Value = response.json().await.unwrap();
    assert_eq!(made["gagged"], false);
    assert_eq!(made["holds_placed"], 0);
    let entry: Value =
        serde_json::from_slice(&app.boundary.log().entry(made["log_index"].as_u64().unwrap()).await.unwrap()).unwrap();
    assert_eq!(entry["kind"], "government-request");
    let facts = &entry["government_request"];
    assert_eq!((facts["stage"].as_str(), facts["country"].as_str()), (Some("received"), Some("de")));
    assert_eq!((facts["instrument"].as_str(), facts["count"].as_u64()), (Some("production-order"), Some(2)));
    let text = entry.to_string();
    assert!(!text.contains("u-1001") && !text.contains("Staatsanwaltschaft") && !text.contains("abab"), "{text}");

    // Under a gag: only a commitment in the public log, and a line of its own in the report.
    let mut gagged = body("mlat", &["u-1001"]);
    gagged["country"] = json!("us");
    gagged["gag_until"] = json!("2099-01-01T00:00:00Z");
    let made: Value = post(gagged, app.token(), crate::harness::DUBLIN).await.json().await.unwrap();
    assert_eq!(made["gagged"], true);
    let entry: Value =
        serde_json::from_slice(&app.boundary.log().entry(made["log_index"].as_u64().unwrap()).await.unwrap()).unwrap();
    assert!(entry["government_request"]["sealed"].is_string());
    assert!(entry["government_request"]["country"].is_null() && entry["government_request"]["instrument"].is_null());

    // A preservation order holds the subject's data: their erasure is answered `held`.
    let made: Value =
        post(body("preservation-order", &["u-1001"]), app.token(), crate::harness::DUBLIN).await.json().await.unwrap();
    assert_eq!(made["holds_placed"], 1);
    let id = made["request_id"].as_str().unwrap().to_owned();
    let response =
        app.client(crate::harness::DUBLIN).delete(app.url("/v1/subjects/u-1001")).bearer_auth(app.token()).send().await;
    let held = problem(response.unwrap(), 409, "held").await;
    assert!(held["detail"].as_str().unwrap().contains(&id), "{held}");
    assert_eq!(app.get_record(crate::harness::DUBLIN, &record).await.status(), 200);

    // The report counts them (this half-year), the gagged one apart.
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let period = {
        let now = time::OffsetDateTime::now_utc();
        format!("{}-H{}", now.year(), if u8::from(now.month()) <= 6 { 1 } else { 2 })
    };
    let report: Value = app
        .client(UNKNOWN)
        .get(app.url(&format!("/v1/reports/government-requests?period={period}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["gagged"], 1, "{report}");
    assert_eq!(report["preservation"], 1);
    let de: Vec<&Value> = report["rows"].as_array().unwrap().iter().filter(|r| r["country"] == "de").collect();
    assert_eq!(de.len(), 2);
    assert_eq!(de.iter().map(|r| r["accounts"].as_u64().unwrap()).sum::<u64>(), 3);
}

#[tokio::test]
async fn registrations_by_anyone_else_or_with_bad_input_are_refused() {
    let app = TestApp::start().await;
    let post = |body: Value, token: String, from: &'static str| {
        let app = &app;
        async move {
            app.client(from)
                .post(app.url("/v1/government-requests"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let mut support = app.claims("eu", "dublin-1", 3600);
    support.roles = vec!["support".into()];
    let support = app.mint(&support);
    let refused =
        problem(post(body("production-order", &["u-1"]), support, crate::harness::DUBLIN).await, 403, "forbidden")
            .await;
    let index = refused["log_index"].as_u64().unwrap();
    let entry: Value = serde_json::from_slice(&app.boundary.log().entry(index).await.unwrap()).unwrap();
    assert_eq!(entry["government_request"]["stage"], "refused");
    assert!(entry["government_request"]["country"].is_null(), "a refusal says nothing of what it asked");
    problem(post(body("production-order", &["u-1"]), app.token(), crate::harness::SINGAPORE).await, 403, "forbidden")
        .await;
    problem(post(body("production-order", &["u-1"]), app.subject_token("u-1"), UNKNOWN).await, 403, "staff-only").await;
    for (field, value) in [
        ("instrument", json!("subpoena")),
        ("country", json!("DEU")),
        ("subjects", json!([])),
        ("subjects", json!(["not a valid id"])),
        ("document_sha256", json!("xyz")),
        ("gag_until", json!("2001-01-01T00:00:00Z")),
        ("categories", json!(["dreams"])),
        ("authority", json!("")),
    ] {
        let mut bad = body("production-order", &["u-1"]);
        bad[field] = value;
        problem(post(bad, app.token(), crate::harness::DUBLIN).await, 422, "invalid-body").await;
    }
}
