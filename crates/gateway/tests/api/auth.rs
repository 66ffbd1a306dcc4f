use serde_json::json;

use crate::harness::{DUBLIN, TestApp, problem};

#[tokio::test]
async fn requests_without_a_valid_token_get_401_and_change_nothing() {
    let app = TestApp::start().await;
    let record = app.seed("u-1", json!({"name": "Aoife"})).await;
    let before = app.dump().await;

    let other_dir = tempfile::tempdir().unwrap();
    let stranger = clover_gateway::identity::DevIssuer::create(&other_dir.path().join("k")).unwrap();
    let expired = app.mint(&app.claims("eu", "dublin-1", -600));
    let forged = stranger.mint(&app.claims("eu", "dublin-1", 3600)).unwrap();
    let mut tampered = app.token();
    tampered.insert(tampered.len() - 3, 'A');
    tampered.truncate(tampered.len() - 1);
    let mut wrong_audience = app.claims("eu", "dublin-1", 3600);
    wrong_audience.aud = "somewhere-else".into();
    let wrong_audience = app.mint(&wrong_audience);

    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "no bearer token"),
        (Some("Basic YWxhZGRpbjpvcGVuc2VzYW1l".into()), "Bearer <token>"),
        (Some(format!("Bearer {expired}")), "expired"),
        (Some(format!("Bearer {forged}")), "signature"),
        (Some(format!("Bearer {tampered}")), "token"),
        (Some(format!("Bearer {wrong_audience}")), "audience"),
        (Some("Bearer not.a.jwt".into()), "malformed"),
    ];
    for (header, expected) in cases {
        let client = app.client(DUBLIN);
        let requests = [
            client.get(app.url(&format!("/v1/records/{record}"))),
            client.put(app.url("/v1/subjects/u-2")).json(&json!({"home_region": "eu"})),
            client.post(app.url("/v1/subjects/u-1/records")).json(&json!({"category": "profile", "fields": {}})),
            client.delete(app.url("/v1/subjects/u-1")),
        ];
        for request in requests {
            let request = match &header {
                Some(h) => request.header("Authorization", h),
                None => request,
            };
            let response = request.send().await.unwrap();
            assert_eq!(response.headers().get("www-authenticate").unwrap(), "Bearer");
            let body = problem(response, 401, "unauthenticated").await;
            assert!(body["detail"].as_str().unwrap().contains(expected), "{expected}: {body}");
            assert!(body.get("fields").is_none());
        }
    }
    assert_eq!(app.dump().await, before);
}

#[tokio::test]
async fn authentication_comes_before_body_validation() {
    let app = TestApp::start().await;
    let response = app
        .client(DUBLIN)
        .put(app.url("/v1/subjects/u-1"))
        .header("content-type", "text/plain")
        .body("{nonsense")
        .send()
        .await
        .unwrap();
    problem(response, 401, "unauthenticated").await;
}
