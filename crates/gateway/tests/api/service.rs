use serde_json::{Value, json};

use crate::harness::{DUBLIN, SINGAPORE, TestApp};

#[tokio::test]
async fn healthz_is_ok() {
    let app = TestApp::start().await;
    let response = app.client(DUBLIN).get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn metrics_count_requests_by_route_status_and_decision_with_latency() {
    let app = TestApp::start().await;
    let record = app.seed("u-1", json!({"a": 1})).await;
    app.get_record(DUBLIN, &record).await;
    app.get_record(SINGAPORE, &record).await;
    let response = app.client(DUBLIN).get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let has = |needle: &str| text.lines().any(|l| l.starts_with("clover_http_requests_total") && l.contains(needle));
    for labels in [
        r#"route="/v1/records/{record_id}""#,
        r#"status="403""#,
        r#"decision="deny""#,
        r#"decision="allow""#,
        r#"route="/v1/subjects/{subject_id}/records""#,
        r#"status="201""#,
    ] {
        assert!(has(labels), "missing {labels} in\n{text}");
    }
    let denied = text
        .lines()
        .find(|l| l.contains(r#"route="/v1/records/{record_id}""#) && l.contains(r#"decision="deny""#))
        .unwrap();
    let count: f64 = denied.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0);
    assert!(text.contains("clover_http_request_duration_seconds_bucket"), "{text}");
    assert!(text.contains("# TYPE clover_http_request_duration_seconds histogram"), "{text}");
    // Raw paths (which hold ids) never become labels.
    assert!(!text.contains(&record));
}

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint() {
    let app = TestApp::start().await;
    let doc: Value = app.client(DUBLIN).get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = &doc["paths"];
    for (path, method) in [
        ("/v1/subjects/{subject_id}", "put"),
        ("/v1/subjects/{subject_id}", "delete"),
        ("/v1/subjects/{subject_id}/records", "post"),
        ("/v1/records/{record_id}", "get"),
        ("/healthz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/v1/subjects/{subject_id}/accesses", "get"),
        ("/v1/log/proof/inclusion", "get"),
        ("/v1/log/proof/consistency", "get"),
        ("/log/checkpoint", "get"),
        ("/v1/approvals", "post"),
        ("/v1/approvals/{approval_id}/grant", "post"),
        ("/v1/approvals/{approval_id}", "get"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} missing");
    }
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert_eq!(doc["components"]["securitySchemes"]["mtls"]["type"], "mutualTLS");
    assert_eq!(doc["security"], serde_json::json!([{"bearer": []}, {"mtls": []}]), "a token or a service certificate");
    assert_eq!(
        paths["/v1/records/{record_id}"]["get"]["responses"]["403"]["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
}

/// The whole document, as reviewed: a change to the API (a path, a schema, a status, a
/// description) changes the snapshot beside this file, and so shows in review. Accept a
/// deliberate change with `cargo insta review` (or `INSTA_UPDATE=always`).
#[tokio::test]
async fn the_openapi_document_is_as_reviewed() {
    let app = TestApp::start().await;
    let doc: Value = app.client(DUBLIN).get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    insta::assert_json_snapshot!("openapi", doc);
}
