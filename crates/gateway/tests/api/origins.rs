use serde_json::{Value, json};

use crate::harness::{DUBLIN, SINGAPORE, TestApp, UNKNOWN, VIRGINIA, problem};

#[tokio::test]
async fn reads_from_outside_the_region_are_denied_with_the_deciding_rules() {
    let app = TestApp::start().await;
    let record = app.seed("u-1", json!({"name": "Aoife"})).await;
    for (from, detail, policies) in [
        (SINGAPORE, "singapore-1 (region \"sg\")", json!(["no-full-view-from-outside", "remote-access-is-a-transfer"])),
        (VIRGINIA, "virginia-1 (region \"us\")", json!(["no-full-view-from-outside", "remote-access-is-a-transfer"])),
        (
            UNKNOWN,
            "no configured site",
            json!(["no-full-view-from-outside", "remote-access-is-a-transfer", "unknown-origin"]),
        ),
    ] {
        let body = problem(app.get_record(from, &record).await, 403, "forbidden").await;
        assert_eq!(body["decision"]["effect"], "deny", "{from}");
        assert_eq!(body["decision"]["policies"], policies, "{from}");
        assert!(body["detail"].as_str().unwrap().contains(detail), "{from}: {body}");
        assert!(body.get("fields").is_none(), "no data in a denial");
        assert!(!body.to_string().contains("Aoife"));
    }
}

#[tokio::test]
async fn a_caller_of_another_region_is_denied_even_from_an_eu_site() {
    let app = TestApp::start().await;
    let record = app.seed("u-1", json!({"name": "Aoife"})).await;
    let us_token = app.mint(&app.claims("us", "virginia-1", 3600));
    let response = app
        .client(DUBLIN)
        .get(app.url(&format!("/v1/records/{record}")))
        .bearer_auth(us_token)
        .header("X-Clover-Purpose", "support")
        .send()
        .await
        .unwrap();
    let body = problem(response, 403, "forbidden").await;
    assert_eq!(body["decision"]["policies"], json!(["default-deny"]));
    assert!(body["detail"].as_str().unwrap().contains("of region \"us\""), "{body}");
}

#[tokio::test]
async fn writes_and_erasures_from_outside_are_denied_and_change_nothing() {
    let app = TestApp::start().await;
    app.seed("u-1", json!({"name": "Aoife"})).await;
    let before = app.dump().await;
    let client = app.client(SINGAPORE);
    let token = app.token();
    let responses = [
        client.put(app.url("/v1/subjects/u-9")).bearer_auth(&token).json(&json!({"home_region": "eu"})),
        client
            .post(app.url("/v1/subjects/u-1/records"))
            .bearer_auth(&token)
            .json(&json!({"category": "profile", "fields": {"x": 1}})),
        client.delete(app.url("/v1/subjects/u-1")).bearer_auth(&token),
    ];
    for request in responses {
        let body = problem(request.send().await.unwrap(), 403, "forbidden").await;
        assert_eq!(body["decision"]["effect"], "deny");
    }
    assert_eq!(app.dump().await, before);
}

#[tokio::test]
async fn the_origin_is_never_taken_from_headers() {
    let app = TestApp::start().await;
    let record = app.seed("u-1", json!({"name": "Aoife"})).await;
    let response = app
        .client(SINGAPORE)
        .get(app.url(&format!("/v1/records/{record}")))
        .bearer_auth(app.token())
        .header("X-Forwarded-For", "127.0.0.1")
        .header("Forwarded", "for=127.0.0.1")
        .header("X-Real-IP", "127.0.0.1")
        .header("X-Clover-Origin", "dublin-1")
        .send()
        .await
        .unwrap();
    let body: Value = problem(response, 403, "forbidden").await;
    assert_eq!(body["decision"]["effect"], "deny");
}
