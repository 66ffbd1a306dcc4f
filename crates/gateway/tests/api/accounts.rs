//! Closing an organisation's account: every record erased, pending transfers that include it
//! cancelled, a closure certificate that verifies, and the id barred from registration.

use clover_gateway::subjects::certificate::{self, Certificate};
use serde_json::{Value, json};

use crate::harness::{DUBLIN, TestApp, UNKNOWN, log_entries, problem};

fn analyst(app: &TestApp) -> String {
    let mut claims = app.claims("eu", "dublin-1", 3600);
    claims.sub = "ana".into();
    claims.roles = vec!["analytics".into(), "safety".into()];
    app.mint(&claims)
}

async fn transfer(app: &TestApp, body: Value) -> String {
    let response =
        app.client(DUBLIN).post(app.url("/v1/transfers")).bearer_auth(analyst(app)).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["transfer"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_organisation_closes_its_account_and_gets_a_certificate_that_verifies() {
    let app = TestApp::start().await;
    let profile = app.seed("org-parliament", json!({"display_name": "A Parliament"})).await;
    for i in 0..3 {
        app.post_record("org-parliament", "content", json!({"text": format!("statement {i}")})).await;
    }
    app.seed("u-1001", json!({"display_name": "Aoife"})).await;
    // A pending transfer that would send the account's profile, and one whose range leaves it out.
    let pending =
        transfer(&app, json!({"destination": "us-partners", "purpose": "analytics", "categories": ["profile"]})).await;
    let other = transfer(
        &app,
        json!({"destination": "us-partners", "purpose": "analytics", "categories": ["profile"], "until": "2001-01-01T00:00:00Z"}),
    )
    .await;

    // Another account's token may not close it; nothing is learnt.
    let response = app
        .client(UNKNOWN)
        .post(app.url("/v1/accounts/org-parliament/close"))
        .bearer_auth(app.subject_token("org-other"))
        .send()
        .await
        .unwrap();
    problem(response, 403, "forbidden").await;

    let response = app
        .client(UNKNOWN)
        .post(app.url("/v1/accounts/org-parliament/close"))
        .bearer_auth(app.subject_token("org-parliament"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["categories"], json!({"content": 3, "profile": 1}));
    assert_eq!(body["transfers_cancelled"], json!([pending]));
    let closure: Certificate = serde_json::from_value(body["certificate"].clone()).unwrap();
    let salt = body["account_salt"].as_str().unwrap();
    let verified = certificate::verify(&closure, app.boundary.log_vkey(), &[], Some(("org-parliament", salt))).unwrap();
    assert_eq!(verified.kind, "closure");
    assert_eq!(verified.fact("records"), Some("4"));
    assert_eq!(verified.fact("categories"), Some("content=3,profile=1"));
    assert_eq!(verified.fact("transfers-cancelled"), Some(pending.as_str()));
    let erasure = verified.erasure.as_ref().unwrap();
    assert_eq!(erasure.kind, "erasure");
    assert_eq!(erasure.fact("data-key"), Some("destroyed"));
    let steps = verified.fact("steps").unwrap();
    assert!(steps.contains(&format!("erased={}", erasure.log_index)), "{steps}");
    // A closure certificate whose erasure certificate is swapped or dropped fails.
    let mut forged = closure.clone();
    forged.erasure = None;
    assert!(certificate::verify(&forged, app.boundary.log_vkey(), &[], None).is_err());

    // The cancelled transfer cannot be streamed; the other is still ready.
    let token = analyst(&app);
    let streamed = app
        .client(DUBLIN)
        .get(app.url(&format!("/v1/transfers/{pending}/records")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    problem(streamed, 409, "conflict").await;
    let status: Value = app
        .client(DUBLIN)
        .get(app.url(&format!("/v1/transfers/{other}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "ready", "{status}");

    // Nothing of it is served any more.
    problem(app.get_record(DUBLIN, &profile).await, 404, "not-found").await;
    let accesses: Value = app
        .client(UNKNOWN)
        .get(app.url("/v1/me/accesses"))
        .bearer_auth(app.subject_token("org-parliament"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(accesses["entries"].as_array().unwrap().len(), 1, "only this listing: {accesses}");
    // A second closure: refused and logged.
    let again = app
        .client(UNKNOWN)
        .post(app.url("/v1/accounts/org-parliament/close"))
        .bearer_auth(app.subject_token("org-parliament"))
        .send()
        .await
        .unwrap();
    let again = problem(again, 409, "account-closed").await;
    assert!(again["log_index"].as_u64().is_some());
    // The id cannot be registered again for now.
    problem(app.put_subject("org-parliament").await, 409, "account-closed").await;
    // Nothing in the public log names the account.
    let entries = log_entries(app.boundary.log()).await;
    assert!(entries.iter().all(|e| !e.to_string().contains("org-parliament")));
    let cancelled = entries.iter().find(|e| e["transfer"]["stage"] == "cancelled").expect("the cancellation's entry");
    assert_eq!(cancelled["transfer"]["transfer_id"], pending);
    // A closure of an account that never was: 404 for the privacy team, 403 for a stranger.
    let response = app
        .client(DUBLIN)
        .post(app.url("/v1/accounts/org-never/close"))
        .bearer_auth(app.privacy_token())
        .header("X-Clover-Justification", "DSAR-9")
        .send()
        .await
        .unwrap();
    problem(response, 404, "not-found").await;
}
