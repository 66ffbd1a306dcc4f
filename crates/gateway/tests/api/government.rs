//! The transparency report on government requests, computed from the log alone.

use clover_event::{EVENT_VERSION, Event, EventKind, GovernmentRequestFacts};
use serde_json::{Value, json};

use crate::harness::{DUBLIN, TestApp, UNKNOWN, problem};

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
        ("deadline", json!("2001-01-01T00:00:00Z")),
        ("deadline", json!("next week")),
        ("categories", json!(["dreams"])),
        ("authority", json!("")),
    ] {
        let mut bad = body("production-order", &["u-1"]);
        bad[field] = value;
        problem(post(bad, app.token(), crate::harness::DUBLIN).await, 422, "invalid-body").await;
    }
}

/// A token for another member of the legal team (`lea`), at dublin-1.
fn lea(app: &TestApp) -> String {
    let mut claims = app.claims("eu", "dublin-1", 3600);
    claims.sub = "lea".into();
    claims.roles = vec!["legal".into()];
    app.mint(&claims)
}

/// Registers `subject` as an adult, with one profile record; returns the record id.
async fn adult(app: &TestApp, subject: &str, name: &str) -> String {
    let response = app
        .client(DUBLIN)
        .put(app.url(&format!("/v1/subjects/{subject}")))
        .bearer_auth(app.token())
        .json(&json!({"home_region": "eu", "birth_date": "1980-05-01"}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let response = app.post_record(subject, "profile", json!({"display_name": name})).await;
    response.json::<Value>().await.unwrap()["record_id"].as_str().unwrap().to_owned()
}

/// Registers a request; returns its id.
async fn register(app: &TestApp, body: Value) -> String {
    let response = app
        .client(DUBLIN)
        .post(app.url("/v1/government-requests"))
        .bearer_auth(app.token())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["request_id"].as_str().unwrap().to_owned()
}

/// POSTs to a step of request `id` (`approvals`, `decision`, `disclosures`, `close`, `hold`).
async fn step(app: &TestApp, token: &str, from: &str, id: &str, what: &str, body: Option<Value>) -> reqwest::Response {
    let mut request =
        app.client(from).post(app.url(&format!("/v1/government-requests/{id}/{what}"))).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn entry_at(app: &TestApp, index: u64) -> Value {
    serde_json::from_slice(&app.boundary.log().entry(index).await.unwrap()).unwrap()
}

fn this_period() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{}-H{}", now.year(), if u8::from(now.month()) <= 6 { 1 } else { 2 })
}

#[tokio::test]
async fn a_production_order_is_approved_decided_disclosed_through_the_log_and_closed() {
    // Production orders may obtain profile and contact data here: messages are cut.
    let app = TestApp::start_with(|config| {
        config.government.instruments.insert(
            "production-order".into(),
            clover_gateway::config::InstrumentRule {
                deadline_hours: None,
                categories: Some(vec!["profile".parse().unwrap(), "contact".parse().unwrap()]),
            },
        );
    })
    .await;
    // u-1001 is a minor (the harness registers them born in 2011): one approval more is needed.
    let record = app.seed("u-1001", json!({"display_name": "Aoife"})).await;
    app.post_record("u-1001", "messages", json!({"text": "hello"})).await;
    app.seed("u-2002", json!({"display_name": "Bram"})).await;
    let id = register(&app, body("production-order", &["u-1001"])).await;
    let ana = app.token();

    // Four eyes: the one who registered it does not approve it; another does, once.
    problem(step(&app, &ana, DUBLIN, &id, "approvals", None).await, 409, "conflict").await;
    let approved: Value = step(&app, &lea(&app), DUBLIN, &id, "approvals", None).await.json().await.unwrap();
    assert_eq!(approved["request"]["approvals"], 1);
    problem(step(&app, &lea(&app), DUBLIN, &id, "approvals", None).await, 409, "conflict").await;
    // Not disclosable before it is decided.
    problem(step(&app, &ana, DUBLIN, &id, "disclosures", None).await, 409, "not-disclosable").await;

    let decided: Value =
        step(&app, &ana, DUBLIN, &id, "decision", Some(json!({"answer": "grant"}))).await.json().await.unwrap();
    let request = &decided["request"];
    assert_eq!(request["outcome"], "partially-granted", "{decided}");
    assert_eq!(request["granted_categories"], json!(["profile"]));
    assert_eq!(request["policies"], json!(["recognised-authorities-are-answered"]));
    let entry = entry_at(&app, request["log_index"].as_u64().unwrap()).await;
    assert_eq!(entry["government_request"]["stage"], "decided");
    assert_eq!(entry["government_request"]["outcome"], "partially-granted");
    assert_eq!(entry["government_request"]["categories"], json!(["profile"]));
    problem(step(&app, &ana, DUBLIN, &id, "decision", Some(json!({"answer": "reject"}))).await, 409, "conflict").await;

    // The disclosure: a ZIP with a signed manifest, each record read under an entry of its own
    // (purpose legal, the request in its annex); the messages were cut.
    let before = app.boundary.log().size();
    let response = step(&app, &ana, DUBLIN, &id, "disclosures", None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/zip");
    assert_eq!(response.headers()["x-clover-disclosure-records"], "1");
    let disclosed_at: u64 = response.headers()["x-clover-log-index"].to_str().unwrap().parse().unwrap();
    let files = crate::me::unzip(&response.bytes().await.unwrap());
    let manifest = crate::me::check_manifest(&app, &files);
    assert!(manifest.starts_with("clover/government-disclosure/v1\n"), "{manifest}");
    assert!(manifest.contains(&format!("request {id}\n")));
    assert_eq!(files.keys().collect::<Vec<_>>(), ["manifest.txt", "records/u-1001/profile.json"]);
    let records: Value = serde_json::from_slice(&files["records/u-1001/profile.json"]).unwrap();
    assert_eq!(records[0]["record_id"], record.as_str());
    assert_eq!(records[0]["fields"]["display_name"], "Aoife");
    let mut reads = 0;
    for index in before..app.boundary.log().size() {
        let entry = entry_at(&app, index).await;
        if entry["kind"] == "access" && entry["action"] == "disclose" {
            assert_eq!(entry["purpose"], "legal");
            assert_eq!(entry["decision"]["policies"], json!(["legal-team-discloses-granted-requests"]));
            assert_eq!(
                crate::harness::annex_of(&app.boundary, &entry).await.justification.as_deref(),
                Some(id.as_str())
            );
            assert!(!entry.to_string().contains("u-1001"));
            reads += 1;
        }
    }
    assert_eq!(reads, 2, "one decision on the subject, one opening of its record");
    let disclosed = entry_at(&app, disclosed_at).await;
    assert_eq!(
        (disclosed["government_request"]["stage"].as_str(), disclosed["government_request"]["count"].as_u64()),
        (Some("disclosed"), Some(1))
    );

    // No gag: the subject sees the disclosure in their own access history.
    let mine: Value = app
        .client(UNKNOWN)
        .get(app.url("/v1/me/accesses"))
        .bearer_auth(app.subject_token("u-1001"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        mine["entries"].as_array().unwrap().iter().any(|e| e["action"] == "disclose" && e["purpose"] == "legal"),
        "{mine}"
    );

    // Listed for the legal team only; closed, nothing more is disclosed.
    let listed: Value = app
        .client(DUBLIN)
        .get(app.url("/v1/government-requests"))
        .bearer_auth(&ana)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["requests"][0]["disclosed_records"], 1);
    let mut support = app.claims("eu", "dublin-1", 3600);
    support.roles = vec!["support".into()];
    let support = app.mint(&support);
    let list = |token: String, from: &'static str| {
        let app = &app;
        async move { app.client(from).get(app.url("/v1/government-requests")).bearer_auth(token).send().await.unwrap() }
    };
    problem(list(support.clone(), DUBLIN).await, 403, "forbidden").await;
    problem(list(ana.clone(), crate::harness::SINGAPORE).await, 403, "forbidden").await;
    problem(list(app.subject_token("u-1001"), UNKNOWN).await, 403, "staff-only").await;
    let closed: Value = step(&app, &ana, DUBLIN, &id, "close", None).await.json().await.unwrap();
    assert_eq!(closed["request"]["state"], "closed");
    let refused = problem(step(&app, &ana, DUBLIN, &id, "disclosures", None).await, 409, "not-disclosable").await;
    assert!(refused["detail"].as_str().unwrap().contains("closed"), "{refused}");
    assert!(refused["log_index"].is_u64(), "a refused disclosure is logged");
    problem(step(&app, &ana, DUBLIN, &id, "close", None).await, 409, "conflict").await;

    // The report counts it as disclosed, answered within its deadline.
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let report: Value = app
        .client(UNKNOWN)
        .get(app.url(&format!("/v1/reports/government-requests?period={}", this_period())))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let row = &report["rows"][0];
    assert_eq!(
        (row["country"].as_str(), row["disclosed"].as_u64(), row["deadlines_met"].as_u64()),
        (Some("de"), Some(1), Some(1)),
        "{report}"
    );
}

#[tokio::test]
async fn unrecognised_states_and_unapproved_emergencies_are_rejected_by_policy() {
    let app = TestApp::start().await;
    adult(&app, "u-3003", "Cai").await;
    let ana = app.token();
    let decide = |id: String, answer: &'static str| {
        let app = &app;
        let ana = ana.clone();
        async move { step(app, &ana, DUBLIN, &id, "decision", Some(json!({"answer": answer}))).await }
    };

    // A state the region does not recognise for the instrument: rejected, with the policy, and
    // closed; nothing is disclosed.
    let mut asked = body("mlat", &["u-3003"]);
    asked["country"] = json!("cn");
    let id = register(&app, asked).await;
    let decided: Value = decide(id.clone(), "grant").await.json().await.unwrap();
    assert_eq!(decided["request"]["outcome"], "rejected", "{decided}");
    assert_eq!(decided["request"]["policies"], json!(["unrecognised-authorities-are-refused"]));
    assert_eq!(decided["request"]["state"], "closed");
    let refused = problem(step(&app, &ana, DUBLIN, &id, "disclosures", None).await, 409, "not-disclosable").await;
    assert!(refused["detail"].as_str().unwrap().contains("rejected"), "{refused}");

    // An emergency needs two approvers besides the one who registered it.
    let id = register(&app, body("emergency", &["u-3003"])).await;
    step(&app, &lea(&app), DUBLIN, &id, "approvals", None).await;
    let decided: Value = decide(id, "grant").await.json().await.unwrap();
    assert_eq!(decided["request"]["outcome"], "rejected");
    assert_eq!(decided["request"]["policies"], json!(["emergency-requests-need-two-approvers"]));
    let id = register(&app, body("emergency", &["u-3003"])).await;
    step(&app, &lea(&app), DUBLIN, &id, "approvals", None).await;
    let mut third = app.claims("eu", "hamar-1", 3600);
    third.sub = "liv".into();
    third.roles = vec!["legal".into()];
    step(&app, &app.mint(&third), crate::harness::HAMAR, &id, "approvals", None).await;
    let decided: Value = decide(id, "grant").await.json().await.unwrap();
    assert_eq!(decided["request"]["outcome"], "granted", "{decided}");

    // Past its deadline, a granted request discloses nothing (refused and logged).
    let mut shorter = body("production-order", &["u-3003"]);
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    shorter["deadline"] = json!(soon.format(&time::format_description::well_known::Rfc3339).unwrap());
    let id = register(&app, shorter).await;
    let decided: Value = decide(id.clone(), "grant").await.json().await.unwrap();
    assert_eq!(decided["request"]["outcome"], "granted");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let late = problem(step(&app, &ana, DUBLIN, &id, "disclosures", None).await, 409, "not-disclosable").await;
    assert!(late["detail"].as_str().unwrap().contains("deadline"), "{late}");

    // The legal team's own rejection.
    let id = register(&app, body("production-order", &["u-3003"])).await;
    let decided: Value = decide(id, "reject").await.json().await.unwrap();
    assert_eq!(decided["request"]["policies"], json!(["rejected-by-the-legal-team"]));

    // A caller who may not handle requests learns nothing, not whether an id exists; bad ids
    // and bodies are refused before anything.
    let mut support = app.claims("eu", "dublin-1", 3600);
    support.roles = vec!["support".into()];
    let support = app.mint(&support);
    let guessed = format!("gr-{}", "0".repeat(24));
    let real =
        problem(step(&app, &support, DUBLIN, &id_of_first(&app).await, "close", None).await, 403, "forbidden").await;
    let fake = problem(step(&app, &support, DUBLIN, &guessed, "close", None).await, 403, "forbidden").await;
    assert_eq!(real["detail"], fake["detail"]);
    problem(step(&app, &ana, DUBLIN, &guessed, "close", None).await, 404, "not-found").await;
    problem(step(&app, &ana, DUBLIN, "gr-xyz", "close", None).await, 400, "invalid-id").await;
    problem(
        step(&app, &ana, crate::harness::SINGAPORE, &guessed, "decision", Some(json!({"answer": "grant"}))).await,
        403,
        "forbidden",
    )
    .await;
    problem(
        step(&app, &ana, DUBLIN, &guessed, "decision", Some(json!({"answer": "maybe"}))).await,
        422,
        "invalid-body",
    )
    .await;
    problem(step(&app, &ana, DUBLIN, &guessed, "hold", Some(json!({"change": "forever"}))).await, 422, "invalid-body")
        .await;
}

async fn id_of_first(app: &TestApp) -> String {
    app.boundary.store().government_requests().await.unwrap()[0].request_id.clone()
}

#[tokio::test]
async fn a_preservation_order_holds_an_erasure_which_is_carried_out_when_it_is_released() {
    let app = TestApp::start().await;
    let record = adult(&app, "u-4004", "Dara").await;
    let ana = app.token();
    let id = register(&app, body("preservation-order", &["u-4004"])).await;
    // The subject asks for their erasure: held, tracked, nothing destroyed.
    let response =
        app.client(UNKNOWN).delete(app.url("/v1/me")).bearer_auth(app.subject_token("u-4004")).send().await.unwrap();
    problem(response, 409, "held").await;
    assert_eq!(app.get_record(DUBLIN, &record).await.status(), 200);

    // Listed with its hold; extended by 30 days (logged).
    let listed: Value = app
        .client(DUBLIN)
        .get(app.url("/v1/government-requests"))
        .bearer_auth(&ana)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let until = |v: &Value| {
        time::OffsetDateTime::parse(v.as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap()
    };
    let first = until(&listed["requests"][0]["hold_until"]);
    let extended: Value =
        step(&app, &ana, DUBLIN, &id, "hold", Some(json!({"change": "extend"}))).await.json().await.unwrap();
    assert_eq!(until(&extended["request"]["hold_until"]) - first, time::Duration::days(30));
    let entry = entry_at(&app, extended["request"]["log_index"].as_u64().unwrap()).await;
    assert_eq!(entry["government_request"]["stage"], "hold-extended");

    // A preservation order discloses nothing, even granted.
    let decided: Value =
        step(&app, &ana, DUBLIN, &id, "decision", Some(json!({"answer": "grant"}))).await.json().await.unwrap();
    assert_eq!(decided["request"]["outcome"], "granted");
    problem(step(&app, &ana, DUBLIN, &id, "disclosures", None).await, 409, "not-disclosable").await;

    // Released: the held erasure is carried out, its request fulfilled.
    let released: Value =
        step(&app, &ana, DUBLIN, &id, "hold", Some(json!({"change": "release"}))).await.json().await.unwrap();
    assert_eq!(released["request"]["hold_released"], true);
    assert!(released["request"]["hold_until"].is_null());
    assert_eq!(app.get_record(DUBLIN, &record).await.status(), 404);
    let requests = app.boundary.store().subject_requests(None).await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!((requests[0].kind.as_str(), requests[0].state.as_str()), ("erasure", "fulfilled"));
    problem(step(&app, &ana, DUBLIN, &id, "hold", Some(json!({"change": "release"}))).await, 409, "conflict").await;
    let entries = crate::harness::log_entries(app.boundary.log()).await;
    assert!(
        entries
            .iter()
            .any(|e| e["government_request"]["stage"] == "hold-released" && e["government_request"]["count"] == 1)
    );
    assert!(entries.iter().any(|e| e["kind"] == "erasure" && e["purpose"] == "held-erasure"));
}

#[tokio::test]
async fn a_hold_whose_period_ends_is_released_by_the_clock_and_its_erasure_carried_out() {
    let app = TestApp::start().await;
    let record = adult(&app, "u-6006", "Fionn").await;
    let id = register(&app, body("preservation-order", &["u-6006"])).await;
    let response = app
        .client(DUBLIN)
        .delete(app.url("/v1/subjects/u-6006"))
        .bearer_auth(app.privacy_token())
        .header("X-Clover-Justification", "DSR-1")
        .send()
        .await
        .unwrap();
    problem(response, 409, "held").await;
    // Its period ends (the register's row says it ended a minute ago).
    let store = app.boundary.store();
    let row = store.government_request(&id).await.unwrap().unwrap();
    let mut details: Value = serde_json::from_str(&row.details).unwrap();
    details["hold_until"] = json!(time::OffsetDateTime::now_utc().unix_timestamp() - 60);
    let ended = clover_store::GovernmentRequestRow { details: details.to_string(), ..row.clone() };
    assert!(store.update_government_request(&ended, row.log_index).await.unwrap());
    // The next sweep (listing the register, serving the report, or the minute's tick) releases it.
    let listed: Value = app
        .client(DUBLIN)
        .get(app.url("/v1/government-requests"))
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["requests"][0]["hold_released"], true, "{listed}");
    assert_eq!(app.get_record(DUBLIN, &record).await.status(), 404);
    let requests = store.subject_requests(None).await.unwrap();
    assert_eq!((requests[0].kind.as_str(), requests[0].state.as_str()), ("erasure", "fulfilled"));
    let entries = crate::harness::log_entries(app.boundary.log()).await;
    let released = entries.iter().find(|e| e["government_request"]["stage"] == "hold-released").unwrap();
    assert!(released["principal"].is_null(), "the clock's doing: {released}");
}

#[tokio::test]
async fn a_gagged_request_is_unsealed_when_its_gag_ends_and_only_then_shown_to_its_subject() {
    let app = TestApp::start().await;
    adult(&app, "u-5005", "Eli").await;
    let ana = app.token();
    let gag_end = time::OffsetDateTime::now_utc() + time::Duration::seconds(4);
    let mut asked = body("production-order", &["u-5005"]);
    asked["gag_until"] = json!(gag_end.format(&time::format_description::well_known::Rfc3339).unwrap());
    let id = register(&app, asked).await;
    let decided: Value =
        step(&app, &ana, DUBLIN, &id, "decision", Some(json!({"answer": "grant"}))).await.json().await.unwrap();
    assert_eq!(decided["request"]["sealed"], true);
    let entry = entry_at(&app, decided["request"]["log_index"].as_u64().unwrap()).await;
    assert!(entry["government_request"]["country"].is_null(), "sealed while gagged: {entry}");
    assert_eq!(step(&app, &ana, DUBLIN, &id, "disclosures", None).await.status(), 200);

    let history = || {
        let app = &app;
        async move {
            let mine: Value = app
                .client(UNKNOWN)
                .get(app.url("/v1/me/accesses"))
                .bearer_auth(app.subject_token("u-5005"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            mine["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "disclose").count()
        }
    };
    assert_eq!(history().await, 0, "hidden from the subject while the gag holds");

    // The gag ends: listing the register unseals it; the opening matches the commitment.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let listed: Value = app
        .client(DUBLIN)
        .get(app.url("/v1/government-requests"))
        .bearer_auth(&ana)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["requests"][0]["sealed"], false);
    let entries = crate::harness::log_entries(app.boundary.log()).await;
    let received = entries.iter().find(|e| e["government_request"]["stage"] == "received").unwrap();
    let unsealed = entries.iter().find(|e| e["government_request"]["stage"] == "unsealed").unwrap();
    let opening: clover_event::GovernmentRequestFacts =
        serde_json::from_value(unsealed["government_request"].clone()).unwrap();
    assert!(clover_requests::seal::opens(received["government_request"]["sealed"].as_str().unwrap(), &opening));
    assert_eq!(opening.country.as_deref(), Some("de"));
    assert_eq!(history().await, 2, "shown once it ends");
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let report: Value = app
        .client(UNKNOWN)
        .get(app.url(&format!("/v1/reports/government-requests?period={}", this_period())))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["gagged"], 0, "{report}");
    assert_eq!(report["rows"][0]["country"], "de");
}
