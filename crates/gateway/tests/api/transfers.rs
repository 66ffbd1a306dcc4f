//! `/v1/transfers` and `/v1/register/transfers`: data leaving the region, tried as an analyst
//! would and as an attacker would (no legal basis, another purpose, from abroad, another
//! principal's transfer, a guessed id, bad bytes), and the bytes that leave read for what they
//! give away.

use clover_event::{Entry, EventKind};
use serde_json::{Value, json};

use crate::harness::{DUBLIN, SINGAPORE, TestApp, VIRGINIA, log_entries, problem};

/// A token of the region's analyst (role `analytics`, and `safety`) at `site`, named `who`.
fn analyst(app: &TestApp, who: &str, site: &str, region: &str) -> String {
    let mut claims = app.claims(region, site, 3600);
    claims.sub = who.into();
    claims.roles = vec!["analytics".into(), "safety".into()];
    app.mint(&claims)
}

/// Registers `subject`, born on `born`.
async fn subject(app: &TestApp, subject: &str, born: &str) {
    let response = app
        .client(DUBLIN)
        .put(app.url(&format!("/v1/subjects/{subject}")))
        .bearer_auth(app.token())
        .json(&json!({"home_region": "eu", "birth_date": born}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

/// A profile of `name`, in `country`.
fn profile(name: &str, country: &str) -> Value {
    json!({
        "display_name": format!("NAME-{name}"), "email": format!("MAIL-{name}@example.ie"),
        "phone": "+353 87 123 4567", "postcode": "D02 X285", "birth_date": "1990-07-01",
        "country": country, "last_ip": "192.0.2.77", "created_at": "2026-11-30T10:00:00Z",
        "secret": format!("SECRET-{name}"),
    })
}

/// Six adults of one class (same age band, country, network, day), one adult alone in theirs,
/// one minor: what a transfer to a destination of k = 5 sends six of.
async fn population(app: &TestApp) {
    for n in 1..=6 {
        subject(app, &format!("u-{n}"), "1990-07-01").await;
        assert_eq!(app.post_record(&format!("u-{n}"), "profile", profile(&format!("p{n}"), "IE")).await.status(), 201);
    }
    subject(app, "u-7", "1990-07-01").await;
    assert_eq!(app.post_record("u-7", "profile", profile("p7", "NO")).await.status(), 201);
    subject(app, "u-8", "2012-01-01").await;
    assert_eq!(app.post_record("u-8", "profile", profile("minor", "IE")).await.status(), 201);
}

/// Erases `subject` (the operator's request from the region).
async fn erase(app: &TestApp, subject: &str) {
    let response = app
        .client(DUBLIN)
        .delete(app.url(&format!("/v1/subjects/{subject}")))
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

async fn create(app: &TestApp, from: &str, token: &str, body: &Value) -> reqwest::Response {
    app.client(from).post(app.url("/v1/transfers")).bearer_auth(token).json(body).send().await.unwrap()
}

async fn get(app: &TestApp, from: &str, token: &str, path: &str) -> reqwest::Response {
    app.client(from).get(app.url(path)).bearer_auth(token).send().await.unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

fn entry_at(entries: &[Value], index: &Value) -> Value {
    entries[usize::try_from(index.as_u64().unwrap()).unwrap()].clone()
}

#[tokio::test]
async fn a_transfer_sends_only_what_its_rules_make_after_its_manifest_is_logged() {
    let app = TestApp::start().await;
    population(&app).await;
    let token = analyst(&app, "ana", "dublin-1", "eu");
    let body = json!({"destination": "us-partners", "purpose": "analytics", "categories": ["profile"]});
    let made = create(&app, DUBLIN, &token, &body).await;
    assert_eq!(made.status(), 201);
    let made: Value = made.json().await.unwrap();
    let manifest = &made["manifest"];
    assert_eq!(manifest["records"], 6, "{made}");
    assert_eq!(
        manifest["excluded"],
        json!({"minors": 1, "erased": 0, "suppressed": 1, "refused_fields": 0, "not_resealed": 0})
    );
    assert_eq!(manifest["legal_basis"], "scc");
    assert_eq!(manifest["region"], "us");
    assert_eq!(manifest["k"], 5);
    assert_eq!(manifest["rules"]["profile"]["phone"], "ff1-digits");
    // The manifest is signed by the log's key, and its digest is in the log, after the decision.
    let note = clover_tlog::note::Note::parse(made["note"].as_str().unwrap()).unwrap();
    note.verify(app.boundary.log_vkey()).unwrap();
    let entries = log_entries(app.boundary.log()).await;
    let logged = entry_at(&entries, &made["log_index"]);
    assert_eq!(logged["kind"], "transfer");
    assert_eq!(logged["action"], "export");
    assert_eq!(logged["transfer"]["stage"], "manifest");
    assert_eq!(logged["transfer"]["manifest"], sha256(made["note"].as_str().unwrap().as_bytes()));
    assert_eq!(logged["transfer"]["count"], 6);
    assert_eq!(logged["transfer"]["suppressed"], 1);
    let decided = entry_at(&entries, &manifest["decided"]);
    assert_eq!(
        (decided["transfer"]["stage"].as_str(), decided["decision"]["effect"].as_str()),
        (Some("decided"), Some("allow"))
    );
    assert!(manifest["decided"].as_u64() < made["log_index"].as_u64());

    // The stream: six records, each as the rules make it, nothing else.
    let id = made["transfer"].as_str().unwrap();
    let streamed = get(&app, DUBLIN, &token, &format!("/v1/transfers/{id}/records")).await;
    assert_eq!(streamed.status(), 200);
    assert_eq!(streamed.headers()["content-type"], "application/x-ndjson");
    let bytes = streamed.bytes().await.unwrap().to_vec();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6, "{text}");
    let allowed = ["display_name", "phone", "postcode", "birth_date", "country", "last_ip", "created_at"];
    let mut subjects = std::collections::HashSet::new();
    for line in &lines {
        assert_eq!(line["category"], "profile");
        let fields = line["fields"].as_object().unwrap();
        assert!(fields.keys().all(|k| allowed.contains(&k.as_str())), "{line}");
        assert_eq!(fields["birth_date"], "35-44");
        assert_eq!(fields["country"], "IE");
        assert_eq!(fields["last_ip"], "192.0.2.0/24");
        assert_eq!(fields["created_at"], "2026-11-30");
        let phone = fields["phone"].as_str().unwrap();
        assert_eq!(phone.len(), "+353 87 123 4567".len());
        assert_ne!(phone, "+353 87 123 4567");
        assert!(subjects.insert(line["subject"].as_str().unwrap().to_owned()), "one token per subject");
        assert_eq!(line["record"].as_str().unwrap().len(), 32);
    }
    // No byte names a subject, holds an email, a name, a secret, the phone number or the
    // postcode as they are, and no minor's record is in it.
    for needle in ["u-1", "u-7", "u-8", "MAIL-", "NAME-", "SECRET-", "minor", "123 4567", "D02", "NO\""] {
        assert!(!text.contains(needle), "{needle:?} left the region: {text}");
    }

    // The end is logged: how many left and the SHA-256 of the bytes, which the maker can compare.
    let status: Value = get(&app, DUBLIN, &token, &format!("/v1/transfers/{id}")).await.json().await.unwrap();
    assert_eq!(status["state"], "sent");
    assert_eq!(status["sent"], 6);
    assert_eq!(status["sha256"], sha256(&bytes));
    let entries = log_entries(app.boundary.log()).await;
    let last = entries.iter().rev().find(|e| e["kind"] == "transfer").unwrap();
    assert_eq!(last["transfer"]["stage"], "sent");
    assert_eq!(last["transfer"]["count"], 6);
    assert_eq!(last["transfer"]["sha256"], sha256(&bytes));
    assert_eq!(entries.iter().filter(|e| e["transfer"]["stage"] == "started").count(), 1);
    // No transfer entry names anyone.
    for entry in entries.iter().filter(|e| e["kind"] == "transfer") {
        let text = entry.to_string();
        assert!(!text.contains("\"ana\"") && !(1..=8).any(|n| text.contains(&format!("u-{n}"))), "{text}");
    }

    // Sent once.
    problem(get(&app, DUBLIN, &token, &format!("/v1/transfers/{id}/records")).await, 409, "conflict").await;

    // The register counts it, from the log, as JSON and as CSV.
    let register: Value = reqwest::get(app.url("/v1/register/transfers")).await.unwrap().json().await.unwrap();
    let rows = register["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{register}");
    let row = &rows[0];
    assert_eq!(
        (row["destination"].as_str(), row["region"].as_str(), row["legal_basis"].as_str(), row["purpose"].as_str()),
        (Some("us-partners"), Some("us"), Some("scc"), Some("analytics"))
    );
    assert_eq!(
        (row["transfers"].as_u64(), row["records"].as_u64(), row["suppressed"].as_u64()),
        (Some(1), Some(6), Some(1))
    );
    let end = entries.iter().rposition(|e| e["transfer"]["stage"] == "sent").unwrap();
    assert_eq!(row["log_indexes"], json!([end]));
    let csv = reqwest::Client::new()
        .get(app.url("/v1/register/transfers"))
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert!(csv.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = csv.text().await.unwrap();
    assert!(
        csv.lines().nth(1).unwrap().contains(",us-partners,us,scc,analytics,pseudonymised,profile,1,6,1,0,"),
        "{csv}"
    );
}

#[tokio::test]
async fn tokens_are_stable_per_destination_and_purpose_and_unlinkable_across() {
    let app = TestApp::start_with(|config| {
        for destination in &mut config.destinations {
            destination.k = 1;
        }
        let mut research = config.destinations[0].clone();
        research.name = "us-research".into();
        config.destinations.push(research);
    })
    .await;
    subject(&app, "u-1", "1990-07-01").await;
    assert_eq!(app.post_record("u-1", "profile", profile("p1", "IE")).await.status(), 201);
    let token = analyst(&app, "ana", "dublin-1", "eu");
    let send = async |destination: &str, purpose: &str| {
        let body = json!({"destination": destination, "purpose": purpose, "categories": ["profile"]});
        let made: Value = create(&app, DUBLIN, &token, &body).await.json().await.unwrap();
        let id = made["transfer"].as_str().unwrap().to_owned();
        let text = get(&app, DUBLIN, &token, &format!("/v1/transfers/{id}/records")).await.text().await.unwrap();
        serde_json::from_str::<Value>(text.lines().next().unwrap()).unwrap()
    };
    let a = send("us-partners", "analytics").await;
    let a_again = send("us-partners", "analytics").await;
    let b = send("us-research", "analytics").await;
    let safety = send("us-partners", "safety").await;
    assert_eq!(a["subject"], a_again["subject"], "stable within a destination and purpose");
    assert_eq!(a["fields"]["display_name"], a_again["fields"]["display_name"]);
    assert_eq!(a["fields"]["phone"], a_again["fields"]["phone"]);
    for other in [&b, &safety] {
        assert_ne!(a["subject"], other["subject"], "unlinkable across destinations and purposes");
        assert_ne!(a["record"], other["record"]);
        assert_ne!(a["fields"]["display_name"], other["fields"]["display_name"]);
        assert_ne!(a["fields"]["phone"], other["fields"]["phone"]);
    }
}

#[tokio::test]
async fn what_may_not_leave_is_refused_clearly_and_logged() {
    let app = TestApp::start_with(|config| config.transfer_rules.retain(|r| r.category.as_str() == "profile")).await;
    population(&app).await;
    let token = analyst(&app, "ana", "dublin-1", "eu");
    let ask = |destination: &str, purpose: &str, categories: Value| json!({"destination": destination, "purpose": purpose, "categories": categories});
    let refused = async |response: reqwest::Response, status: u16, kind: &str| {
        let body = problem(response, status, kind).await;
        let entries = log_entries(app.boundary.log()).await;
        let entry = entry_at(&entries, &body["log_index"]);
        assert_eq!(
            (entry["kind"].as_str(), entry["decision"]["effect"].as_str()),
            (Some("transfer"), Some("deny")),
            "{entry}"
        );
        assert_eq!(entry["transfer"]["stage"], "refused");
        body
    };
    let size = app.boundary.log().size();
    // No legal basis (Singapore), a destination that does not exist, a purpose it may not
    // receive, a purpose the caller may not declare: policy.
    let body = refused(
        create(&app, DUBLIN, &token, &ask("sg-analytics", "analytics", json!(["profile"]))).await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(body["decision"]["policies"], json!(["no-transfer-without-legal-basis"]));
    let body =
        refused(create(&app, DUBLIN, &token, &ask("mars-1", "analytics", json!(["profile"]))).await, 403, "forbidden")
            .await;
    assert_eq!(
        body["decision"]["policies"],
        json!(["no-transfer-for-another-purpose", "no-transfer-without-legal-basis"])
    );
    refused(
        create(&app, DUBLIN, &token, &ask("us-partners", "advertising", json!(["profile"]))).await,
        403,
        "forbidden",
    )
    .await;
    refused(
        create(&app, DUBLIN, &app.token(), &ask("us-partners", "analytics", json!(["profile"]))).await,
        403,
        "forbidden",
    )
    .await;
    // A sensitive category never leaves, even for a purpose that declares it, by its role.
    let body = refused(
        create(&app, DUBLIN, &token, &ask("us-partners", "safety", json!(["contact"]))).await,
        403,
        "forbidden",
    )
    .await;
    assert_eq!(body["decision"]["policies"], json!(["no-minors-or-sensitive-data-leave"]));
    // From abroad, even by the region's own analyst.
    let body = refused(
        create(&app, SINGAPORE, &token, &ask("us-partners", "analytics", json!(["profile"]))).await,
        403,
        "forbidden",
    )
    .await;
    assert!(body["decision"]["policies"].as_array().unwrap().contains(&json!("transfers-start-in-region")), "{body}");
    // What the request asks cannot be: an unknown category, one no rule covers, time upside down.
    let body = refused(
        create(&app, DUBLIN, &token, &ask("us-partners", "analytics", json!(["diaries"]))).await,
        422,
        "unknown-category",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("\"diaries\""), "{body}");
    let body = refused(
        create(&app, DUBLIN, &token, &ask("us-partners", "analytics", json!(["content"]))).await,
        422,
        "no-transfer-rule",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("\"content\""), "{body}");
    let mut upside_down = ask("us-partners", "analytics", json!(["profile"]));
    upside_down["since"] = json!("2026-06-01T00:00:00Z");
    upside_down["until"] = json!("2026-01-01T00:00:00Z");
    let body = refused(create(&app, DUBLIN, &token, &upside_down).await, 422, "invalid-body").await;
    assert!(body["detail"].as_str().unwrap().contains("upside down"), "{body}");
    // No category, a category twice: refused and logged too.
    refused(create(&app, DUBLIN, &token, &ask("us-partners", "analytics", json!([]))).await, 422, "invalid-body").await;
    let twice = ask("us-partners", "analytics", json!(["profile", "profile"]));
    refused(create(&app, DUBLIN, &token, &twice).await, 422, "invalid-body").await;
    // Eleven refusals, eleven entries; nothing was opened for any of them.
    assert_eq!(app.boundary.log().size(), size + 11);
    assert!(log_entries(app.boundary.log()).await.iter().all(|e| e["transfer"]["stage"] != "decided"));
    // Bad bytes and no token: refused before anything is decided.
    let bad = app
        .client(DUBLIN)
        .post(app.url("/v1/transfers"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"destination\": 7}")
        .send()
        .await
        .unwrap();
    assert!(bad.status().is_client_error());
    problem(
        app.client(DUBLIN)
            .post(app.url("/v1/transfers"))
            .json(&ask("us-partners", "analytics", json!(["profile"])))
            .send()
            .await
            .unwrap(),
        401,
        "unauthenticated",
    )
    .await;
    let mut unknown_field = ask("us-partners", "analytics", json!(["profile"]));
    unknown_field["fields"] = json!(["email"]);
    assert_eq!(create(&app, DUBLIN, &token, &unknown_field).await.status(), 422);
    let mut bad_time = ask("us-partners", "analytics", json!(["profile"]));
    bad_time["since"] = json!("yesterday");
    problem(create(&app, DUBLIN, &token, &bad_time).await, 422, "invalid-body").await;
}

#[tokio::test]
async fn another_principals_transfer_or_a_guessed_one_is_not_found() {
    let app = TestApp::start().await;
    population(&app).await;
    let ana = analyst(&app, "ana", "dublin-1", "eu");
    let bo = analyst(&app, "bo", "dublin-1", "eu");
    let body = json!({"destination": "us-partners", "purpose": "analytics", "categories": ["profile"]});
    let made: Value = create(&app, DUBLIN, &ana, &body).await.json().await.unwrap();
    let id = made["transfer"].as_str().unwrap();
    // Bo learns nothing of Ana's transfer: the same answer as for one that does not exist.
    let theirs = problem(get(&app, DUBLIN, &bo, &format!("/v1/transfers/{id}/records")).await, 404, "not-found").await;
    let guessed = uuid::Uuid::new_v4();
    let none =
        problem(get(&app, DUBLIN, &bo, &format!("/v1/transfers/{guessed}/records")).await, 404, "not-found").await;
    assert_eq!(theirs["title"], none["title"]);
    problem(get(&app, DUBLIN, &bo, &format!("/v1/transfers/{id}")).await, 404, "not-found").await;
    problem(get(&app, DUBLIN, &bo, "/v1/transfers/..%2F..%2Fetc").await, 404, "not-found").await;
    // Ana herself, from abroad: refused by policy, logged, and the transfer is not used up.
    problem(get(&app, SINGAPORE, &ana, &format!("/v1/transfers/{id}/records")).await, 403, "forbidden").await;
    let status: Value = get(&app, DUBLIN, &ana, &format!("/v1/transfers/{id}")).await.json().await.unwrap();
    assert_eq!(status["state"], "ready");
    assert_eq!(get(&app, DUBLIN, &ana, &format!("/v1/transfers/{id}/records")).await.status(), 200);
}

#[tokio::test]
async fn a_read_from_outside_the_region_is_a_transfer_in_the_register() {
    let app = TestApp::start().await;
    subject(&app, "u-1", "1990-07-01").await;
    let record = app.post_record("u-1", "profile", profile("p1", "IE")).await.json::<Value>().await.unwrap();
    let record = record["record_id"].as_str().unwrap().to_owned();
    let read = async |from: &str, region: &str| {
        app.client(from)
            .get(app.url(&format!("/v1/records/{record}")))
            .bearer_auth(analyst(&app, "vic", if region == "us" { "virginia-1" } else { "singapore-1" }, region))
            .header("X-Clover-Purpose", "analytics")
            .send()
            .await
            .unwrap()
    };
    // From Virginia, for analytics: a destination there (us-partners, SCCs) may receive it.
    let answer = read(VIRGINIA, "us").await;
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["view"], "pseudonymised");
    let entries = log_entries(app.boundary.log()).await;
    let entry = entry_at(&entries, &answer["log_index"]);
    assert_eq!(entry["kind"], "access");
    assert_eq!(entry["transfer"]["stage"], "remote-read");
    assert_eq!(entry["transfer"]["destination"], "us-partners");
    // From Singapore: the destination there has no legal basis, so the read is refused.
    let body = problem(read(SINGAPORE, "sg").await, 403, "forbidden").await;
    assert!(body["decision"]["policies"].as_array().unwrap().contains(&json!("remote-access-is-a-transfer")), "{body}");
    let register: Value = reqwest::get(app.url("/v1/register/transfers")).await.unwrap().json().await.unwrap();
    let rows = register["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{register}");
    assert_eq!(rows[0]["treatment"], "pseudonymised-view");
    assert_eq!(rows[0]["region"], "us");
    assert_eq!(rows[0]["categories"], "profile");
    assert_eq!(rows[0]["records"], 1);
    assert_eq!(rows[0]["log_indexes"], json!([answer["log_index"]]));
    // The entry decodes as the log's own format (the register reads nothing else).
    let raw = app.boundary.log().entry(answer["log_index"].as_u64().unwrap()).await.unwrap();
    assert!(matches!(Entry::decode(&raw), Ok(Entry::V2(e)) if e.kind == EventKind::Access));
}

#[tokio::test]
async fn aggregates_are_noised_exactly_and_spend_their_budget_atomically() {
    let app = TestApp::start_with(|config| {
        config.destinations[0].budgets.insert("analytics".into(), clover_egress::Budget { epsilon: 201.0, delta: 0.0 });
    })
    .await;
    population(&app).await;
    let token = analyst(&app, "ana", "dublin-1", "eu");
    let release = async |epsilon: f64, group_by: Value| {
        let body = json!({
            "destination": "us-partners", "purpose": "analytics", "categories": ["profile"],
            "group_by": group_by, "countries": ["IE", "NO"], "measure": "count", "epsilon": epsilon,
        });
        app.client(DUBLIN)
            .post(app.url("/v1/transfers/aggregates"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap()
    };
    // At epsilon 100 the noise's scale is 0.01: every cell is its true count (P(noise = 0) is
    // 1 - 2e-43), which the test can check; the minor is in none of them.
    let answer = release(100.0, json!(["age-band", "country"])).await;
    assert_eq!(answer.status(), 201);
    let answer: Value = answer.json().await.unwrap();
    let cells = answer["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 12, "six age bands by two countries, whatever the data: {answer}");
    for cell in cells {
        let expected = match (cell["group"]["age-band"].as_str().unwrap(), cell["group"]["country"].as_str().unwrap()) {
            ("35-44", "IE") => 6,
            ("35-44", "NO") => 1,
            _ => 0,
        };
        assert_eq!(cell["value"], expected, "{cell}");
    }
    assert_eq!((answer["mechanism"].as_str(), answer["sensitivity"].as_u64()), (Some("discrete-laplace"), Some(1)));
    assert_eq!((answer["epsilon_spent"].as_f64(), answer["epsilon_remaining"].as_f64()), (Some(100.0), Some(101.0)));
    let entries = log_entries(app.boundary.log()).await;
    let entry = entry_at(&entries, &answer["log_index"]);
    assert_eq!(entry["transfer"]["stage"], "aggregate");
    assert_eq!(entry["transfer"]["treatment"], "dp-laplace");
    assert_eq!(entry["transfer"]["epsilon"], "100");
    assert_eq!(entry["transfer"]["count"], 12, "cells, never the records' true number");
    assert!(entry["detail"].as_str().unwrap().contains("epsilon remaining 101 of 201"), "{entry}");

    // Two releases of 100 at once against the 101 left: one fits, the other is refused and
    // logged, and what is spent never passes the budget.
    let (a, b) = tokio::join!(release(100.0, json!(["country"])), release(100.0, json!(["country"])));
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409]);
    let refused = if a.status() == 409 { a } else { b };
    let body = problem(refused, 409, "budget-exhausted").await;
    assert!(body["detail"].as_str().unwrap().contains("201 epsilon"), "{body}");
    let entries = log_entries(app.boundary.log()).await;
    assert_eq!(entry_at(&entries, &body["log_index"])["transfer"]["stage"], "refused");
    assert_eq!(app.boundary.store().budget_spent("us-partners", "analytics").await.unwrap().0, 200.0);
    problem(release(1.5, json!([])).await, 409, "budget-exhausted").await;
    // From abroad, and without a role of the purpose: refused by policy and logged, nothing spent.
    let body = json!({"destination": "us-partners", "purpose": "analytics", "categories": ["profile"], "measure": "count", "epsilon": 0.1});
    for (from, who) in [(SINGAPORE, token.clone()), (DUBLIN, app.token())] {
        let refused = app
            .client(from)
            .post(app.url("/v1/transfers/aggregates"))
            .bearer_auth(&who)
            .json(&body)
            .send()
            .await
            .unwrap();
        let refused = problem(refused, 403, "forbidden").await;
        let entries = log_entries(app.boundary.log()).await;
        assert_eq!(entry_at(&entries, &refused["log_index"])["transfer"]["stage"], "refused");
    }
    assert_eq!(app.boundary.store().budget_spent("us-partners", "analytics").await.unwrap().0, 200.0);

    // A grid by day needs its range; an epsilon out of range; an unknown measure: refused.
    problem(release(0.5, json!(["day"])).await, 422, "invalid-body").await;
    problem(release(0.0, json!([])).await, 422, "invalid-body").await;
    let bad = json!({"destination": "us-partners", "purpose": "analytics", "categories": ["profile"], "measure": "median", "epsilon": 0.1});
    let bad = app
        .client(DUBLIN)
        .post(app.url("/v1/transfers/aggregates"))
        .bearer_auth(&token)
        .json(&bad)
        .send()
        .await
        .unwrap();
    problem(bad, 422, "invalid-body").await;

    // The register sums the epsilon spent, from the log.
    let register: Value = reqwest::get(app.url("/v1/register/transfers")).await.unwrap().json().await.unwrap();
    let rows = register["rows"].as_array().unwrap();
    let dp: Vec<&Value> = rows.iter().filter(|r| r["treatment"] == "dp-laplace").collect();
    assert_eq!(dp.len(), 1, "{register}");
    assert_eq!((dp[0]["transfers"].as_u64(), dp[0]["epsilon"].as_str()), (Some(2), Some("200")));
}

#[tokio::test]
async fn an_erased_subject_never_leaves_and_a_broken_stream_is_marked_interrupted() {
    let app = TestApp::start_with(|config| {
        for destination in &mut config.destinations {
            destination.k = 1;
        }
    })
    .await;
    population(&app).await;
    let token = analyst(&app, "ana", "dublin-1", "eu");
    let body = json!({"destination": "us-partners", "purpose": "analytics", "categories": ["profile"]});
    // Erased before the transfer is made: not counted; erased after: not sent.
    erase(&app, "u-1").await;
    let made: Value = create(&app, DUBLIN, &token, &body).await.json().await.unwrap();
    assert_eq!(made["manifest"]["records"], 6, "five adults of one class and one alone (k = 1): {made}");
    erase(&app, "u-2").await;
    let id = made["transfer"].as_str().unwrap();
    let text = get(&app, DUBLIN, &token, &format!("/v1/transfers/{id}/records")).await.text().await.unwrap();
    assert_eq!(text.lines().count(), 5, "{text}");
    let status: Value = get(&app, DUBLIN, &token, &format!("/v1/transfers/{id}")).await.json().await.unwrap();
    assert_eq!((status["state"].as_str(), status["sent"].as_u64()), (Some("sent"), Some(5)));

    // A record that no longer opens (its ciphertext changed in the store) breaks the stream:
    // the transfer is marked interrupted, with how many records left before, and the client
    // sees a stream that ends in an error rather than a clean end.
    let made: Value = create(&app, DUBLIN, &token, &body).await.json().await.unwrap();
    let id = made["transfer"].as_str().unwrap();
    let db = app.db().await;
    let record: String =
        sqlx::query_scalar("SELECT record_id FROM records WHERE subject_id = 'u-3'").fetch_one(&db).await.unwrap();
    app.tamper("UPDATE records SET ciphertext = ? WHERE record_id = ?", Some(&[9u8; 80]), &record).await;
    let streamed = get(&app, DUBLIN, &token, &format!("/v1/transfers/{id}/records")).await;
    assert!(streamed.bytes().await.is_err(), "a broken stream does not end cleanly");
    let mut state = Value::Null;
    for _ in 0..100 {
        state = get(&app, DUBLIN, &token, &format!("/v1/transfers/{id}")).await.json().await.unwrap();
        if state["state"] != "streaming" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(state["state"], "interrupted", "{state}");
    assert_eq!(state["sent"], 0, "the page with the broken record sent nothing");
    let entries = log_entries(app.boundary.log()).await;
    let end = entries
        .iter()
        .rev()
        .find(|e| e["transfer"]["transfer_id"] == id && e["transfer"]["stage"] != "refused")
        .unwrap();
    assert_eq!(end["transfer"]["stage"], "interrupted");
    assert_eq!(end["transfer"]["count"], 0);
}

#[tokio::test]
async fn a_class_that_falls_below_k_between_the_manifest_and_the_stream_is_held_back() {
    // k = 6: the six adults of one class leave, as the manifest counts; one of them erased
    // before the stream leaves five, and the class is held back whole when it is sent.
    let app = TestApp::start_with(|config| {
        for destination in &mut config.destinations {
            destination.k = 6;
        }
    })
    .await;
    population(&app).await;
    let token = analyst(&app, "ana", "dublin-1", "eu");
    let body = json!({"destination": "us-partners", "purpose": "analytics", "categories": ["profile"]});
    let made: Value = create(&app, DUBLIN, &token, &body).await.json().await.unwrap();
    assert_eq!(made["manifest"]["records"], 6, "{made}");
    erase(&app, "u-4").await;
    let id = made["transfer"].as_str().unwrap();
    let text = get(&app, DUBLIN, &token, &format!("/v1/transfers/{id}/records")).await.text().await.unwrap();
    assert_eq!(text, "", "five people are fewer than k = 6");
    let status: Value = get(&app, DUBLIN, &token, &format!("/v1/transfers/{id}")).await.json().await.unwrap();
    assert_eq!((status["state"].as_str(), status["sent"].as_u64()), (Some("sent"), Some(0)));
    let entries = log_entries(app.boundary.log()).await;
    let end = entries.iter().rev().find(|e| e["transfer"]["transfer_id"] == id).unwrap();
    assert_eq!((end["transfer"]["stage"].as_str(), end["transfer"]["count"].as_u64()), (Some("sent"), Some(0)));
    assert_eq!(end["transfer"]["suppressed"], 6, "the five left of the class and the one alone: {end}");
    // The stream kept what it treated in a file without a name: nothing is left beside the
    // boundary's data.
    let names: Vec<String> = std::fs::read_dir(&app.boundary.config().data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".tmp")), "{names:?}");
}

#[tokio::test]
async fn k_counts_people_and_the_log_keeps_no_text_a_request_made_up() {
    let app = TestApp::start().await;
    // One adult with six records of one class: six records, one person, below k = 5.
    subject(&app, "u-1", "1990-07-01").await;
    for n in 0..6 {
        assert_eq!(app.post_record("u-1", "profile", profile(&format!("p{n}"), "IE")).await.status(), 201);
    }
    let token = analyst(&app, "ana", "dublin-1", "eu");
    let body = json!({"destination": "us-partners", "purpose": "analytics", "categories": ["profile"]});
    let made: Value = create(&app, DUBLIN, &token, &body).await.json().await.unwrap();
    assert_eq!(
        (made["manifest"]["records"].as_u64(), made["manifest"]["excluded"]["suppressed"].as_u64()),
        (Some(0), Some(6))
    );
    let id = made["transfer"].as_str().unwrap();
    let text = get(&app, DUBLIN, &token, &format!("/v1/transfers/{id}/records")).await.text().await.unwrap();
    assert_eq!(text, "", "one person's records are held back whatever their number");

    // Text made up in a request never reaches the public, permanent log.
    let made_up =
        json!({"destination": "us-partners", "purpose": "jane@example.org", "categories": ["jane-doe-1990-01-01"]});
    let refused = problem(create(&app, DUBLIN, &token, &made_up).await, 422, "unknown-category").await;
    let made_up = json!({"destination": "us-partners", "purpose": "jane@example.org", "categories": ["profile"]});
    let denied = problem(create(&app, DUBLIN, &token, &made_up).await, 403, "forbidden").await;
    let entries = log_entries(app.boundary.log()).await;
    for body in [&refused, &denied] {
        let entry = entry_at(&entries, &body["log_index"]);
        assert_eq!(entry["purpose"], "not-configured", "{entry}");
    }
    assert_eq!(entry_at(&entries, &refused["log_index"])["transfer"]["categories"], json!(["not-configured"]));
    let log = entries.iter().map(Value::to_string).collect::<String>();
    assert!(!log.contains("jane"), "made-up text in the public log");

    // A sum's clamp is bounded (the noise's scale must fit in 64 bits, never saturate).
    let huge = json!({"destination": "us-partners", "purpose": "analytics", "categories": ["profile"],
        "measure": "sum", "field": "n", "lower": 0, "upper": 4_611_686_018_427_387_904_i64, "epsilon": 1.0});
    let huge = app
        .client(DUBLIN)
        .post(app.url("/v1/transfers/aggregates"))
        .bearer_auth(&token)
        .json(&huge)
        .send()
        .await
        .unwrap();
    let body = problem(huge, 422, "invalid-body").await;
    assert!(body["detail"].as_str().unwrap().contains("-10000..=10000"), "{body}");
}
