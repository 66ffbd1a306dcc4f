//! The policy pack on the gateway's path, end to end over HTTP from EU, US, Singapore and
//! unknown origins.

use clover_model::PrincipalKind;
use serde_json::{Value, json};

use crate::harness::{DUBLIN, SINGAPORE, TestApp, UNKNOWN, VIRGINIA, log_entries, problem};

/// Registers `subject` born on `birth_date` (if any) with one profile record; returns its id.
async fn subject(app: &TestApp, subject: &str, birth_date: Option<&str>) -> String {
    let mut body = json!({"home_region": "eu", "country": "ie"});
    if let Some(date) = birth_date {
        body["birth_date"] = json!(date);
    }
    let put = app.client(DUBLIN).put(app.url(&format!("/v1/subjects/{subject}"))).bearer_auth(app.token()).json(&body);
    assert!(put.send().await.unwrap().status().is_success());
    let post = app.post_record(subject, "profile", json!({"display_name": "Aoife", "city": "Galway"})).await;
    assert_eq!(post.status(), 201);
    post.json::<Value>().await.unwrap()["record_id"].as_str().unwrap().to_owned()
}

/// Reads `record` from `from` as an employee of `region` declaring `purpose`, holding the role
/// the default configuration names for that purpose, with no ticket.
async fn read(app: &TestApp, from: &str, region: &str, record: &str, purpose: Option<&str>) -> reqwest::Response {
    read_with_ticket(app, from, region, record, purpose, None).await
}

/// [`read`], with a justification ticket.
async fn read_with_ticket(
    app: &TestApp,
    from: &str,
    region: &str,
    record: &str,
    purpose: Option<&str>,
    ticket: Option<&str>,
) -> reqwest::Response {
    let site = match region {
        "us" => "virginia-1",
        "sg" => "singapore-1",
        _ => "dublin-1",
    };
    let mut claims = app.claims(region, site, 600);
    if let Some(purpose) = purpose {
        claims.roles = vec![if purpose == "security-incident" { "security" } else { purpose }.to_owned()];
    }
    let token = app.mint(&claims);
    let mut request = app.client(from).get(app.url(&format!("/v1/records/{record}"))).bearer_auth(token);
    if let Some(purpose) = purpose {
        request = request.header("X-Clover-Purpose", purpose);
    }
    if let Some(ticket) = ticket {
        request = request.header("X-Clover-Justification", ticket);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn from_each_origin_the_pack_decides() {
    let app = TestApp::start().await;
    let adult = subject(&app, "adult", Some("1990-02-01")).await;

    // EU site, EU employee, declared purpose: full view.
    let eu: Value = read(&app, DUBLIN, "eu", &adult, Some("support")).await.json().await.unwrap();
    assert_eq!(eu["view"], "full");
    assert_eq!(eu["fields"], json!({"display_name": "Aoife", "city": "Galway"}));

    // Virginia, a US employee, a transfer purpose: pseudonymised, keyed tokens only.
    let us = read(&app, VIRGINIA, "us", &adult, Some("analytics")).await;
    assert_eq!(us.status(), 200);
    let us: Value = us.json().await.unwrap();
    assert_eq!(us["view"], "pseudonymised");
    assert_eq!(us["decision"]["policies"], json!(["pseudonymised-from-outside"]));
    // The profile view: the name becomes a token; the city, named by no rule, is dropped.
    let tokens = us["fields"].as_object().unwrap();
    assert_eq!(tokens.keys().collect::<Vec<_>>(), vec!["display_name"]);
    assert!(tokens["display_name"].as_str().unwrap().starts_with("tok_"), "{us}");
    assert!(!us.to_string().contains("Aoife") && !us.to_string().contains("Galway"));
    // Stable within a purpose, unlinkable across purposes.
    let again: Value = read(&app, VIRGINIA, "us", &adult, Some("analytics")).await.json().await.unwrap();
    assert_eq!(again["fields"], us["fields"]);
    let safety: Value = read(&app, VIRGINIA, "us", &adult, Some("safety")).await.json().await.unwrap();
    assert_eq!(safety["view"], "pseudonymised");
    assert_ne!(safety["fields"]["display_name"], us["fields"]["display_name"]);
    // Nor do the record and its subject appear in the clear: keyed tokens, stable within the
    // purpose and region (the receiving side can link its own reads) and unlinkable across
    // purposes, so that the receiving side can neither re-identify nor link transfers.
    assert!(!us.to_string().contains(&adult) && !us.to_string().contains("\"adult\""), "{us}");
    for id in ["record_id", "subject_id"] {
        assert!(us[id].as_str().unwrap().starts_with("tok_"), "{us}");
        assert_eq!(again[id], us[id], "stable within a purpose");
        assert_ne!(safety[id], us[id], "unlinkable across purposes");
    }
    assert_ne!(us["record_id"], us["subject_id"]);
    assert_eq!(
        (eu["record_id"].as_str(), eu["subject_id"].as_str()),
        (Some(adult.as_str()), Some("adult")),
        "a full view names them"
    );

    // Virginia for a purpose off the transfer list, Singapore, an unknown address: denied.
    // (A read from outside the region is a transfer: none of these has a destination with a
    // legal basis for its region and purpose.)
    let body = problem(read(&app, VIRGINIA, "us", &adult, Some("support")).await, 403, "forbidden").await;
    assert_eq!(body["decision"]["policies"], json!(["no-full-view-from-outside", "remote-access-is-a-transfer"]));
    let body = problem(read(&app, SINGAPORE, "eu", &adult, Some("support")).await, 403, "forbidden").await;
    assert_eq!(body["decision"]["policies"], json!(["no-full-view-from-outside", "remote-access-is-a-transfer"]));
    let body = problem(read(&app, UNKNOWN, "eu", &adult, Some("analytics")).await, 403, "forbidden").await;
    assert_eq!(
        body["decision"]["policies"],
        json!(["no-full-view-from-outside", "remote-access-is-a-transfer", "unknown-origin"])
    );
}

#[tokio::test]
async fn minors_get_the_stricter_rules() {
    let app = TestApp::start().await;
    let minor = subject(&app, "minor", Some("2015-06-01")).await;
    let unknown = subject(&app, "unknown-age", None).await;
    let adult = subject(&app, "adult", Some("1990-02-01")).await;
    for record in [&minor, &unknown] {
        // Never out of the region, not even pseudonymised.
        let body = problem(read(&app, VIRGINIA, "us", record, Some("analytics")).await, 403, "forbidden").await;
        assert_eq!(body["decision"]["effect"], "deny");
        // Never for advertising.
        let body = problem(read(&app, DUBLIN, "eu", record, Some("advertising")).await, 403, "forbidden").await;
        assert_eq!(body["decision"]["policies"], json!(["no-ads-or-analytics-on-minors"]));
        // Support, in the region: yes.
        assert_eq!(read(&app, DUBLIN, "eu", record, Some("support")).await.status(), 200);
    }
    assert_eq!(read(&app, DUBLIN, "eu", &adult, Some("advertising")).await.status(), 200);
}

#[tokio::test]
async fn a_purpose_must_be_declared_and_fit_the_category() {
    let app = TestApp::start().await;
    let record = subject(&app, "s", Some("1990-02-01")).await;
    for purpose in [None, Some("curiosity")] {
        let body = problem(read(&app, DUBLIN, "eu", &record, purpose).await, 403, "forbidden").await;
        assert_eq!(body["decision"]["policies"], json!(["declared-purpose"]));
    }
    // Advertising does not declare the location category.
    let location = app.post_record("s", "location", json!({"lat": 53.27})).await;
    let location = location.json::<Value>().await.unwrap()["record_id"].as_str().unwrap().to_owned();
    let body = problem(read(&app, DUBLIN, "eu", &location, Some("advertising")).await, 403, "forbidden").await;
    // (Nor are advertisers a role the sensitive category names, nor was there a ticket.)
    assert_eq!(
        body["decision"]["policies"],
        json!(["declared-purpose", "sensitive-needs-category-role", "ticket-for-sensitive"])
    );
    // Safety does, and location is sensitive: with a ticket.
    let body = problem(read(&app, DUBLIN, "eu", &location, Some("safety")).await, 403, "forbidden").await;
    assert_eq!(body["decision"]["policies"], json!(["ticket-for-sensitive"]));
    assert_eq!(read_with_ticket(&app, DUBLIN, "eu", &location, Some("safety"), Some("CASE-1")).await.status(), 200);
}

#[tokio::test]
async fn touching_too_many_subjects_needs_an_approval() {
    let app = TestApp::start_with(|config| config.policy.bulk_threshold = 2).await;
    let mut records = Vec::new();
    for i in 0..3 {
        records.push(subject(&app, &format!("s-{i}"), Some("1990-02-01")).await);
    }
    assert_eq!(read(&app, DUBLIN, "eu", &records[0], Some("support")).await.status(), 200);
    assert_eq!(read(&app, DUBLIN, "eu", &records[1], Some("support")).await.status(), 200);
    // Again the same subjects: still two.
    assert_eq!(read(&app, DUBLIN, "eu", &records[0], Some("support")).await.status(), 200);
    // A third distinct subject: approval required, and logged as such.
    let body = problem(read(&app, DUBLIN, "eu", &records[2], Some("support")).await, 403, "forbidden").await;
    assert_eq!(body["decision"]["effect"], "approval-required");
    assert_eq!(body["decision"]["policies"], json!(["bulk-access-needs-approval"]));
    let entry: Value =
        serde_json::from_slice(&app.boundary.log().entry(body["log_index"].as_u64().unwrap()).await.unwrap()).unwrap();
    assert_eq!(entry["decision"]["effect"], "approval-required");
}

/// A policy directory holding a copy of the shipped pack, to change in a test.
fn shipped_pack() -> tempfile::TempDir {
    let pack = tempfile::tempdir().unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    for file in ["clover.cedarschema", "default.cedar"] {
        std::fs::copy(shipped.join(file), pack.path().join(file)).unwrap();
    }
    pack
}

/// The window's count is in the store: a restart does not reset it (before, it lived in the
/// process's memory, and a restart, or a second gateway, allowed the threshold again).
#[tokio::test]
async fn the_bulk_access_window_survives_a_restart() {
    let app = TestApp::start_with(|config| config.policy.bulk_threshold = 2).await;
    let mut records = Vec::new();
    for i in 0..3 {
        records.push(subject(&app, &format!("s-{i}"), Some("1990-02-01")).await);
    }
    assert_eq!(read(&app, DUBLIN, "eu", &records[0], Some("support")).await.status(), 200);
    assert_eq!(read(&app, DUBLIN, "eu", &records[1], Some("support")).await.status(), 200);
    let app = app.restart().await;
    let body = problem(read(&app, DUBLIN, "eu", &records[2], Some("support")).await, 403, "forbidden").await;
    assert_eq!(body["decision"]["effect"], "approval-required", "{body}");
    // The subjects already read are still within the threshold.
    assert_eq!(read(&app, DUBLIN, "eu", &records[1], Some("support")).await.status(), 200);
}

/// A policy change takes effect only once it is in the log: a reload whose entry the log will
/// not take (here, too large: thousands of policies' ids) leaves the old set in force. Before,
/// the new set was swapped in first and a failed append only reported. The entry of a reload
/// records the SHA-256 of the policies' text.
#[tokio::test]
async fn a_policy_reload_that_cannot_be_logged_leaves_the_old_set_in_force() {
    let pack = shipped_pack();
    let dir = pack.path().to_owned();
    let app = TestApp::start_with(|config| config.policy.dir = Some(dir)).await;
    let record = subject(&app, "s", Some("1990-02-01")).await;
    assert_eq!(read(&app, DUBLIN, "eu", &record, Some("support")).await.status(), 200);

    // A reload that is logged records the text's digest.
    app.boundary.reload_policies().await.unwrap();
    let logged = log_entries(app.boundary.log()).await.into_iter().rfind(|e| e["action"] == "reload-policies").unwrap();
    let detail = logged["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("sha256:{}", app.boundary.pack().digest())), "{detail}");

    // A set that forbids every read, with so many policies that its entry is over the log's
    // 64 KiB: the append fails, and reads go on under the old set.
    let mut text = String::from("@id(\"no-reads-at-all\") forbid (principal, action, resource);\n");
    for i in 0..3000 {
        text.push_str(&format!(
            "@id(\"filler-policy-with-a-long-name-{i:05}\") forbid (principal, action, resource) when {{ false }};\n"
        ));
    }
    std::fs::write(pack.path().join("zz-lockdown.cedar"), text).unwrap();
    let size = app.boundary.log().size();
    let refused = app.boundary.reload_policies().await.unwrap_err();
    assert!(matches!(refused, clover_gateway::ReloadError::Log(_)), "{refused:?}");
    assert_eq!(app.boundary.log().size(), size, "nothing was logged");
    assert_eq!(read(&app, DUBLIN, "eu", &record, Some("support")).await.status(), 200, "the old set is in force");
}

/// An update of a subject is decided on the stricter of what is stored and what is sent: a
/// caller cannot lift a minor's rules by sending an adult's birth date in the very request that
/// changes it (before, the decision took the sent date alone).
#[tokio::test]
async fn a_subject_update_is_decided_on_the_stored_birth_date_too() {
    let pack = shipped_pack();
    let dir = pack.path().to_owned();
    let app = TestApp::start_with(|config| config.policy.dir = Some(dir)).await;
    let put = |birth_date: &'static str| {
        app.client(DUBLIN)
            .put(app.url("/v1/subjects/u-1"))
            .bearer_auth(app.token())
            .json(&json!({"home_region": "eu", "birth_date": birth_date}))
            .send()
    };
    assert_eq!(put("2015-01-01").await.unwrap().status(), 201, "a minor registers");
    // Then a rule that no one may update a minor's registration.
    std::fs::write(
        pack.path().join("minors.cedar"),
        "@id(\"no-updates-about-minors\") forbid (principal, action == Clover::Action::\"write\", resource is Clover::Subject) when { resource.minor };",
    )
    .unwrap();
    app.boundary.reload_policies().await.unwrap();
    // Sending an adult's birth date does not make the stored minor an adult for the decision.
    let body = problem(put("1990-01-01").await.unwrap(), 403, "forbidden").await;
    assert_eq!(body["decision"]["policies"], json!(["no-updates-about-minors"]));
}

#[tokio::test]
async fn policies_reload_on_change_and_a_bad_set_is_refused_keeping_the_old() {
    let pack = shipped_pack();
    let dir = pack.path().to_owned();
    let app = TestApp::start_with(|config| config.policy.dir = Some(dir)).await;
    let record = subject(&app, "s", Some("1990-02-01")).await;
    assert_eq!(read(&app, DUBLIN, "eu", &record, Some("support")).await.status(), 200);

    // A policy that does not validate: refused, the old set stays in force, both logged.
    std::fs::write(
        pack.path().join("typo.cedar"),
        "@id(\"typo\") forbid (principal, action, resource) when { resource.nope };",
    )
    .unwrap();
    let err = app.boundary.reload_policies().await.unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    assert_eq!(read(&app, DUBLIN, "eu", &record, Some("support")).await.status(), 200);
    let log = app.boundary.log();
    let refused = log_entries(log)
        .await
        .into_iter()
        .find(|e| e["action"] == "reload-policies-refused")
        .expect("the refused reload is in the log");
    assert!(refused["detail"].as_str().unwrap().contains("nope"), "{refused}");

    // A valid change is picked up by the watcher, without a restart.
    std::fs::remove_file(pack.path().join("typo.cedar")).unwrap();
    std::fs::write(
        pack.path().join("lockdown.cedar"),
        "// Freeze all access.\n@id(\"lockdown\") forbid (principal, action, resource);\n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let response = read(&app, DUBLIN, "eu", &record, Some("support")).await;
        if response.status() == 403 {
            let body = problem(response, 403, "forbidden").await;
            assert_eq!(body["decision"]["policies"], json!(["lockdown"]));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the change was not picked up");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let reloads = log_entries(log).await.into_iter().filter(|e| e["action"] == "reload-policies").count();
    assert!(reloads >= 1);
}

#[tokio::test]
async fn pseudonymised_views_follow_the_category_field_rules() {
    let app = TestApp::start().await;
    subject(&app, "s", Some("1990-02-01")).await;
    let fields = json!({
        "display_name": "Aoife", "email": "aoife@example.ie", "birth_date": "1990-02-01",
        "last_ip": "203.0.113.77", "country": "ie", "bio": "Galway"
    });
    let post = app.post_record("s", "profile", fields).await;
    let record = post.json::<Value>().await.unwrap()["record_id"].as_str().unwrap().to_owned();
    let seen: Value = read(&app, VIRGINIA, "us", &record, Some("analytics")).await.json().await.unwrap();
    let shown = &seen["fields"];
    assert!(shown["display_name"].as_str().unwrap().starts_with("tok_"));
    assert_eq!(shown["email"], "a***@example.ie");
    assert_eq!(shown["birth_date"], "1990");
    assert_eq!(shown["last_ip"], "203.0.113.0/24");
    assert_eq!(shown["country"], "i***");
    assert!(shown.get("bio").is_none(), "fields no rule names are dropped: {shown}");
    // In the region, the same record in full.
    let full: Value = read(&app, DUBLIN, "eu", &record, Some("support")).await.json().await.unwrap();
    assert_eq!(full["fields"]["bio"], "Galway");
}

/// A token for `id` of the EU region at dublin-1 with `roles`.
fn token_for(app: &TestApp, id: &str, roles: &[&str]) -> String {
    let mut claims = app.claims("eu", "dublin-1", 600);
    claims.sub = id.into();
    claims.roles = roles.iter().map(|r| r.to_string()).collect();
    app.mint(&claims)
}

#[tokio::test]
async fn a_second_person_approves_bulk_access_and_the_approval_expires() {
    let app = TestApp::start_with(|config| config.policy.bulk_threshold = 1).await;
    let first = subject(&app, "s-1", Some("1990-02-01")).await;
    let second = subject(&app, "s-2", Some("1990-02-01")).await;
    let ana = token_for(&app, "ana", &["support", "legal"]);
    let get = |token: String, record: String, purpose: &'static str| {
        let client = app.client(DUBLIN);
        let url = app.url(&format!("/v1/records/{record}"));
        async move { client.get(url).bearer_auth(token).header("X-Clover-Purpose", purpose).send().await.unwrap() }
    };
    assert_eq!(get(ana.clone(), first.clone(), "support").await.status(), 200);
    let body = problem(get(ana.clone(), second.clone(), "support").await, 403, "forbidden").await;
    assert_eq!(body["decision"]["effect"], "approval-required");

    // Ana asks.
    let asked = app
        .client(DUBLIN)
        .post(app.url("/v1/approvals"))
        .bearer_auth(&ana)
        .json(&json!({"subjects": ["s-2"], "categories": ["profile"], "purpose": "support"}))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), 201);
    let asked: Value = asked.json().await.unwrap();
    assert_eq!(asked["state"], "requested");
    let id = asked["approval_id"].as_str().unwrap().to_owned();
    let grant = |token: String| {
        let client = app.client(DUBLIN);
        let url = app.url(&format!("/v1/approvals/{id}/grant"));
        async move { client.post(url).bearer_auth(token).send().await.unwrap() }
    };

    // Not by herself, even as an approver; not by someone without the role; not from outside.
    let body = problem(grant(token_for(&app, "ana", &["approver"])).await, 403, "forbidden").await;
    assert_eq!(body["decision"]["policies"], json!(["default-deny"]));
    problem(grant(token_for(&app, "bo", &["agent"])).await, 403, "forbidden").await;
    let from_sg = app
        .client(SINGAPORE)
        .post(app.url(&format!("/v1/approvals/{id}/grant")))
        .bearer_auth(token_for(&app, "carol", &["approver"]))
        .send()
        .await
        .unwrap();
    problem(from_sg, 403, "forbidden").await;
    assert_eq!(get(ana.clone(), second.clone(), "support").await.status(), 403);

    // Carol, an approver in the region, grants it.
    let granted = grant(token_for(&app, "carol", &["approver"])).await;
    assert_eq!(granted.status(), 200);
    let granted: Value = granted.json().await.unwrap();
    assert_eq!((granted["state"].as_str(), granted["approver"].as_str()), (Some("granted"), Some("carol")));
    problem(grant(token_for(&app, "dan", &["approver"])).await, 409, "approval-not-pending").await;

    // One who may not grant learns nothing from trying: a granted approval, a pending one and a
    // guessed id get the same refusal (logged, without the id), never 404 or 409.
    let outsider = |id: String| {
        let client = app.client(DUBLIN);
        let url = app.url(&format!("/v1/approvals/{id}/grant"));
        let token = token_for(&app, "bo", &["agent"]);
        async move { client.post(url).bearer_auth(token).send().await.unwrap() }
    };
    let mut refusals = Vec::new();
    for guess in [id.clone(), "0b8e6f7a-3c1d-4f2e-9a5b-6c7d8e9f0a1b".to_owned(), "no-such-approval".to_owned()] {
        let mut body = problem(outsider(guess.clone()).await, 403, "forbidden").await;
        assert!(!body.to_string().contains(&guess), "the refusal does not echo the id: {body}");
        body.as_object_mut().unwrap().remove("log_index");
        refusals.push(body);
    }
    assert!(refusals.windows(2).all(|w| w[0] == w[1]), "{refusals:?}");
    // An approver in the region may learn that there is no such approval.
    problem(
        app.client(DUBLIN)
            .post(app.url("/v1/approvals/0b8e6f7a-3c1d-4f2e-9a5b-6c7d8e9f0a1b/grant"))
            .bearer_auth(token_for(&app, "dan", &["approver"]))
            .send()
            .await
            .unwrap(),
        404,
        "not-found",
    )
    .await;

    // The approval covers its subject, category and purpose only.
    assert_eq!(get(ana.clone(), second.clone(), "support").await.status(), 200);
    assert_eq!(get(ana.clone(), second.clone(), "legal").await.status(), 403);
    assert_eq!(get(token_for(&app, "bo", &["support"]), first.clone(), "support").await.status(), 200);

    // Every step is in the log.
    let log = app.boundary.log();
    let actions: Vec<String> = log_entries(log)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "approval")
        .map(|e| format!("{} {}", e["action"].as_str().unwrap(), e["decision"]["effect"].as_str().unwrap_or("-")))
        .collect();
    // Every attempt to grant is decided and logged, a refused one, one too late (dan: allowed,
    // nothing pending) and one of an id that names nothing included.
    assert_eq!(
        actions,
        vec![
            "request-approval -",
            "approve deny",
            "approve deny",
            "approve deny",
            "approve allow",
            "approve allow",
            "approve deny",
            "approve deny",
            "approve deny",
            "approve allow",
        ]
    );
}

#[tokio::test]
async fn an_unanswered_request_expires() {
    let app = TestApp::start_with(|config| config.policy.approval_seconds = 1).await;
    subject(&app, "s-1", Some("1990-02-01")).await;
    let asked: Value = app
        .client(DUBLIN)
        .post(app.url("/v1/approvals"))
        .bearer_auth(token_for(&app, "ana", &["agent"]))
        .json(&json!({"subjects": ["s-1"], "categories": ["profile"], "purpose": "support"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = asked["approval_id"].as_str().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let late = app
        .client(DUBLIN)
        .post(app.url(&format!("/v1/approvals/{id}/grant")))
        .bearer_auth(token_for(&app, "carol", &["approver"]))
        .send()
        .await
        .unwrap();
    let body = problem(late, 409, "approval-not-pending").await;
    assert!(body["detail"].as_str().unwrap().contains("expired"), "{body}");
    for bad in [
        json!({"subjects": [], "categories": ["profile"], "purpose": "support"}),
        json!({"subjects": ["s-1"], "categories": ["profile"], "purpose": "curiosity"}),
    ] {
        let response = app
            .client(DUBLIN)
            .post(app.url("/v1/approvals"))
            .bearer_auth(token_for(&app, "ana", &["agent"]))
            .json(&bad)
            .send()
            .await
            .unwrap();
        problem(response, 422, "invalid-body").await;
    }
}

#[tokio::test]
async fn an_approval_is_read_by_its_requester_and_approvers_in_the_region_and_by_no_one_else() {
    let app = TestApp::start().await;
    let asked: Value = app
        .client(DUBLIN)
        .post(app.url("/v1/approvals"))
        .bearer_auth(token_for(&app, "ana", &["agent"]))
        .json(&json!({"subjects": ["s-7"], "categories": ["profile"], "purpose": "support"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = asked["approval_id"].as_str().unwrap().to_owned();
    let unknown = uuid::Uuid::new_v4().to_string();
    let read = |token: String, from: &'static str, id: String| {
        let request = app.client(from).get(app.url(&format!("/v1/approvals/{id}"))).bearer_auth(token);
        async move { request.send().await.unwrap() }
    };

    // Its requester, and an approver, in the region: each read is decided and logged.
    let mut allowed = Vec::new();
    for (who, roles, policy) in [
        ("ana", &["agent"], "requesters-see-their-approvals"),
        ("carol", &["approver"], "approvals-by-a-second-person"),
    ] {
        let answer = read(token_for(&app, who, roles), DUBLIN, id.clone()).await;
        assert_eq!(answer.status(), 200, "{who}");
        let answer: Value = answer.json().await.unwrap();
        assert_eq!((answer["requester"].as_str(), answer["subjects"].clone()), (Some("ana"), json!(["s-7"])));
        assert_eq!(answer["decision"]["policies"], json!([policy]), "{answer}");
        allowed.push(answer["log_index"].as_u64().unwrap());
    }

    // Anyone else (another employee in the region; the requester or an approver from Singapore)
    // is refused, and the refusal is the same for this approval, for an id that names none, and
    // for an id that is no UUID: it does not tell whether the approval exists.
    let mut refused = Vec::new();
    for (who, roles, from) in
        [("bo", &["agent"], DUBLIN), ("ana", &["agent"], SINGAPORE), ("carol", &["approver"], SINGAPORE)]
    {
        let mut bodies = Vec::new();
        for asked_for in [id.clone(), unknown.clone(), "no-such-thing".to_owned()] {
            let mut body = problem(read(token_for(&app, who, roles), from, asked_for).await, 403, "forbidden").await;
            refused.push(body["log_index"].as_u64().unwrap());
            body.as_object_mut().unwrap().remove("log_index");
            let text = body.to_string();
            assert!(!text.contains("s-7") && !text.contains(&id), "{who}: {text}");
            bodies.push(body);
        }
        assert_eq!(bodies[0], bodies[1], "{who}");
        assert_eq!(bodies[0], bodies[2], "{who}");
    }

    // An approver in the region may read any approval, so to them an unknown id is a 404.
    problem(read(token_for(&app, "carol", &["approver"]), DUBLIN, unknown.clone()).await, 404, "not-found").await;

    // Every read is in the log; a refused one does not name what was asked for.
    let entries = log_entries(app.boundary.log()).await;
    let reads: Vec<(u64, &Value)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e["action"] == "read-approval")
        .map(|(i, e)| (i as u64, e))
        .collect();
    assert_eq!(reads.len(), allowed.len() + refused.len() + 1);
    for (index, entry) in reads {
        let effect = entry["decision"]["effect"].as_str().unwrap();
        if refused.contains(&index) {
            assert_eq!(effect, "deny");
            assert_eq!(entry["detail"], "approval read refused", "{entry}");
        } else {
            assert_eq!(effect, "allow", "{entry}");
        }
    }
}

/// Writes a `category` record for `subject` (registered already); returns its id.
async fn record_of(app: &TestApp, subject: &str, category: &str, fields: Value) -> String {
    let post = app.post_record(subject, category, fields).await;
    assert_eq!(post.status(), 201);
    post.json::<Value>().await.unwrap()["record_id"].as_str().unwrap().to_owned()
}

/// Reads `record` from Dublin as the EU `kind` `id` with `roles`, declaring `purpose` and, if
/// any, `ticket`.
async fn read_as(
    app: &TestApp,
    (kind, id, roles): (PrincipalKind, &str, &[&str]),
    record: &str,
    purpose: &str,
    ticket: Option<&str>,
) -> reqwest::Response {
    let mut claims = app.claims("eu", "dublin-1", 600);
    (claims.kind, claims.sub) = (kind, id.into());
    claims.roles = roles.iter().map(|r| r.to_string()).collect();
    let mut request = app
        .client(DUBLIN)
        .get(app.url(&format!("/v1/records/{record}")))
        .bearer_auth(app.mint(&claims))
        .header("X-Clover-Purpose", purpose);
    if let Some(ticket) = ticket {
        request = request.header("X-Clover-Justification", ticket);
    }
    request.send().await.unwrap()
}

/// Asserts a refusal by exactly `policies`, with `effect`, whose log entry records it; returns
/// the body.
async fn refused(app: &TestApp, response: reqwest::Response, effect: &str, policies: &[&str]) -> Value {
    let body = problem(response, 403, "forbidden").await;
    assert_eq!(body["decision"]["effect"], effect, "{body}");
    assert_eq!(body["decision"]["policies"], json!(policies), "{body}");
    let entry = &log_entries(app.boundary.log()).await[usize::try_from(body["log_index"].as_u64().unwrap()).unwrap()];
    assert_eq!(entry["decision"]["policies"], json!(policies), "{entry}");
    assert_eq!(entry["decision"]["effect"], effect, "{entry}");
    body
}

/// The attacker's reads of issue 15, each of which the default configuration allowed in full
/// before least privilege: an intern reading a minor's messages from Dublin for `safety`, a
/// service with no roles reading messages for `legal`, an employee with no roles reading
/// location. Each is refused now, by the policies it breaks, and logged.
#[tokio::test]
async fn least_privilege_refuses_what_the_attacker_read() {
    use PrincipalKind::{Employee, Service};
    let app = TestApp::start().await;
    subject(&app, "minor", Some("2013-04-02")).await;
    subject(&app, "adult", Some("1990-02-01")).await;
    let minors_messages = record_of(&app, "minor", "messages", json!({"text": "see you after school"})).await;
    let messages = record_of(&app, "adult", "messages", json!({"text": "call me"})).await;
    let location = record_of(&app, "adult", "location", json!({"lat": 53.27, "lon": -9.05})).await;

    // An intern (no role of any purpose), a minor's messages, purpose safety, ticket `x`: the
    // ticket is no ticket id, refused before any decision...
    let intern = (Employee, "ivan", &["intern"][..]);
    let body = problem(read_as(&app, intern, &minors_messages, "safety", Some("x")).await, 400, "invalid-header").await;
    assert!(body["detail"].as_str().unwrap().contains("x-clover-justification"), "{body}");
    // ...and with a well-formed ticket, refused by policy: safety is not the intern's purpose,
    // messages not the intern's category, and a minor's messages need an approval anyway.
    let body = refused(
        &app,
        read_as(&app, intern, &minors_messages, "safety", Some("CASE-1")).await,
        "deny",
        &["minors-sensitive-data-needs-approval", "purpose-needs-its-role", "sensitive-needs-category-role"],
    )
    .await;
    assert!(!body.to_string().contains("see you after school"), "{body}");
    // An employee with no roles at all, the same read.
    refused(
        &app,
        read_as(&app, (Employee, "ivan", &[]), &minors_messages, "safety", Some("CASE-1")).await,
        "deny",
        &["minors-sensitive-data-needs-approval", "purpose-needs-its-role", "sensitive-needs-category-role"],
    )
    .await;

    // A service with no roles, an adult's messages, for legal (with a ticket, even).
    refused(
        &app,
        read_as(&app, (Service, "crawler", &[]), &messages, "legal", Some("CASE-2")).await,
        "deny",
        &["purpose-needs-its-role", "sensitive-needs-category-role"],
    )
    .await;

    // An employee with no roles, an adult's location, for safety, without a ticket.
    refused(
        &app,
        read_as(&app, (Employee, "ivan", &[]), &location, "safety", None).await,
        "deny",
        &["purpose-needs-its-role", "sensitive-needs-category-role", "ticket-for-sensitive"],
    )
    .await;

    // The roles a purpose names are not enough for a sensitive category that does not name them:
    // support staff may declare support, which declares messages, but messages are for safety
    // and legal staff.
    refused(
        &app,
        read_as(&app, (Employee, "sue", &["support"]), &messages, "support", Some("CASE-3")).await,
        "deny",
        &["sensitive-needs-category-role", "support-sees-profile-and-contact"],
    )
    .await;

    // Both ways: safety staff, with a ticket, read the adult's messages and location in full...
    let safety = (Employee, "sam", &["safety"][..]);
    for record in [&messages, &location] {
        let read = read_as(&app, safety, record, "safety", Some("CASE-4")).await;
        assert_eq!(read.status(), 200, "{record}");
        let read: Value = read.json().await.unwrap();
        assert_eq!(
            (read["view"].as_str(), read["decision"]["policies"].clone()),
            (Some("full"), json!(["in-region-read"]))
        );
    }
    // ...a service with the legal role reads messages for legal...
    let read = read_as(&app, (Service, "legal-hold", &["legal"]), &messages, "legal", Some("CASE-5")).await;
    assert_eq!(read.status(), 200);
    // ...but a minor's messages need an approval, even for them, even in the region.
    refused(
        &app,
        read_as(&app, safety, &minors_messages, "safety", Some("CASE-4")).await,
        "approval-required",
        &["minors-sensitive-data-needs-approval"],
    )
    .await;
}

/// A minor's sensitive data is read, in the region, only once a second person has approved it:
/// the approval covers its subject, category and purpose, and the requester may not grant it.
#[tokio::test]
async fn a_minors_sensitive_data_is_read_after_a_second_persons_approval() {
    let app = TestApp::start().await;
    subject(&app, "minor", Some("2013-04-02")).await;
    let messages = record_of(&app, "minor", "messages", json!({"text": "see you after school"})).await;
    let location = record_of(&app, "minor", "location", json!({"lat": 53.27})).await;
    let sam = (PrincipalKind::Employee, "sam", &["safety"][..]);
    refused(
        &app,
        read_as(&app, sam, &messages, "safety", Some("CASE-9")).await,
        "approval-required",
        &["minors-sensitive-data-needs-approval"],
    )
    .await;

    let asked: Value = app
        .client(DUBLIN)
        .post(app.url("/v1/approvals"))
        .bearer_auth(token_for(&app, "sam", &["safety", "approver"]))
        .json(&json!({"subjects": ["minor"], "categories": ["messages"], "purpose": "safety"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = asked["approval_id"].as_str().unwrap().to_owned();
    let grant = |who: &str| {
        let request = app.client(DUBLIN).post(app.url(&format!("/v1/approvals/{id}/grant"))).bearer_auth(token_for(
            &app,
            who,
            &["approver"],
        ));
        async move { request.send().await.unwrap() }
    };
    // Not by the one who asked, though an approver.
    problem(grant("sam").await, 403, "forbidden").await;
    assert_eq!(read_as(&app, sam, &messages, "safety", Some("CASE-9")).await.status(), 403);
    assert_eq!(grant("carol").await.status(), 200);

    let read = read_as(&app, sam, &messages, "safety", Some("CASE-9")).await;
    assert_eq!(read.status(), 200);
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["fields"]["text"], "see you after school");
    // The approval covers that category and purpose only, and not another's reads.
    refused(
        &app,
        read_as(&app, sam, &location, "safety", Some("CASE-9")).await,
        "approval-required",
        &["minors-sensitive-data-needs-approval"],
    )
    .await;
    let legal = (PrincipalKind::Employee, "sam", &["safety", "legal"][..]);
    assert_eq!(read_as(&app, legal, &messages, "legal", Some("CASE-9")).await.status(), 403);
    let other = (PrincipalKind::Employee, "tom", &["safety"][..]);
    assert_eq!(read_as(&app, other, &messages, "safety", Some("CASE-9")).await.status(), 403);
}
