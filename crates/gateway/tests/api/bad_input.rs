//! Each kind of bad input: the status, the problem body, and a store left as it was.

use serde_json::{Value, json};

use crate::harness::{DUBLIN, TestApp, problem, raw};

/// Sends a raw body with a content type to `method path`, as an EU employee from Dublin.
async fn send(app: &TestApp, method: &str, path: &str, content_type: Option<&str>, body: Vec<u8>) -> reqwest::Response {
    let client = app.client(DUBLIN);
    let mut request = client.request(method.parse().unwrap(), app.url(path)).bearer_auth(app.token()).body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.send().await.unwrap()
}

async fn json_to(app: &TestApp, method: &str, path: &str, body: Value) -> reqwest::Response {
    send(app, method, path, Some("application/json"), body.to_string().into_bytes()).await
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = TestApp::start().await;
    app.seed("u-1", json!({"a": 1})).await;
    let before = app.dump().await;
    for (method, path) in [("PUT", "/v1/subjects/u-1"), ("POST", "/v1/subjects/u-1/records")] {
        for body in ["{", "not json", "{,}", "", "{\"unterminated"] {
            let response = send(&app, method, path, Some("application/json"), body.into()).await;
            assert_eq!(response.status(), 400, "{method} {path} {body:?}");
            let problem = problem(response, 400, "malformed-json").await;
            assert!(!problem["detail"].as_str().unwrap().is_empty());
        }
    }
    assert_eq!(app.dump().await, before);
}

#[tokio::test]
async fn unknown_and_missing_fields_are_422_naming_the_field() {
    let app = TestApp::start().await;
    app.seed("u-1", json!({"a": 1})).await;
    let before = app.dump().await;
    let cases = [
        ("PUT", "/v1/subjects/u-1", json!({"home_region": "eu", "nickname": "x"}), "nickname"),
        ("PUT", "/v1/subjects/u-1", json!({"birth_date": "2000-01-01"}), "home_region"),
        ("PUT", "/v1/subjects/u-1", json!({"home_region": "EU"}), "invalid region"),
        ("POST", "/v1/subjects/u-1/records", json!({"category": "profile", "fields": {}, "owner": "x"}), "owner"),
        ("POST", "/v1/subjects/u-1/records", json!({"fields": {"a": 1}}), "category"),
        ("POST", "/v1/subjects/u-1/records", json!({"category": "profile", "fields": [1, 2]}), "fields"),
        ("POST", "/v1/subjects/u-1/records", json!({"category": "profile", "fields": "Aoife"}), "fields"),
    ];
    for (method, path, body, named) in cases {
        let problem = problem(json_to(&app, method, path, body.clone()).await, 422, "invalid-body").await;
        assert!(problem["detail"].as_str().unwrap().contains(named), "{body} -> {problem}");
    }
    assert_eq!(app.dump().await, before);
}

#[tokio::test]
async fn bad_birth_dates_are_422() {
    let app = TestApp::start().await;
    let tomorrow = (time::OffsetDateTime::now_utc().date() + time::Duration::days(1)).to_string();
    for date in ["2011-13-01", "01/05/2011", "2999-01-01", "yesterday", &tomorrow, "1899-12-31", "0001-01-01"] {
        let response = json_to(&app, "PUT", "/v1/subjects/u-1", json!({"home_region": "eu", "birth_date": date})).await;
        let body = problem(response, 422, "invalid-body").await;
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("birth_date") && detail.contains(date), "{body}");
    }
    assert!(app.dump().await.is_empty());
    // The first day of 1900, and today, are dates of birth.
    let today = time::OffsetDateTime::now_utc().date().to_string();
    for date in ["1900-01-01", today.as_str()] {
        let response = json_to(&app, "PUT", "/v1/subjects/u-1", json!({"home_region": "eu", "birth_date": date})).await;
        assert!(response.status().is_success(), "{date}: {}", response.status());
    }
}

#[tokio::test]
async fn an_unknown_category_is_422_listing_the_known_ones() {
    let app = TestApp::start().await;
    app.seed("u-1", json!({"a": 1})).await;
    let before = app.dump().await;
    for category in ["biometrics", "Profile", ""] {
        let response =
            json_to(&app, "POST", "/v1/subjects/u-1/records", json!({"category": category, "fields": {"a": 1}})).await;
        let body = problem(response, 422, "unknown-category").await;
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(&format!("{category:?}")), "{detail}");
        assert!(detail.contains("profile, contact, content, messages, device, location"), "{detail}");
    }
    assert_eq!(app.dump().await, before);
}

#[tokio::test]
async fn invalid_ids_are_400() {
    let app = TestApp::start().await;
    app.seed("u-1", json!({"a": 1})).await;
    let before = app.dump().await;
    let long = "x".repeat(129);
    for subject in ["bad$id", "spaces%20inside", long.as_str(), "%C3%A9t%C3%A9"] {
        let put = json_to(&app, "PUT", &format!("/v1/subjects/{subject}"), json!({"home_region": "eu"})).await;
        let body = problem(put, 400, "invalid-id").await;
        assert!(body["detail"].as_str().unwrap().contains("invalid subject id"), "{body}");
        let post = json_to(
            &app,
            "POST",
            &format!("/v1/subjects/{subject}/records"),
            json!({"category": "profile", "fields": {}}),
        )
        .await;
        problem(post, 400, "invalid-id").await;
        let delete = send(&app, "DELETE", &format!("/v1/subjects/{subject}"), None, vec![]).await;
        problem(delete, 400, "invalid-id").await;
    }
    for record in ["not-a-uuid", "0b8e6f7a3c1d4f2e9a5b6c7d8e9f0a1b", "0b8e6f7a-3c1d-4f2e-9a5b-6c7d8e9f0a1"] {
        let body = problem(app.get_record(DUBLIN, record).await, 400, "invalid-id").await;
        assert!(body["detail"].as_str().unwrap().contains("invalid record id"), "{body}");
    }
    assert_eq!(app.dump().await, before);
}

#[tokio::test]
async fn a_record_has_one_spelling_and_others_are_400_before_anything_is_logged() {
    let app = TestApp::start().await;
    let record = app.seed("u-1", json!({"a": 1})).await;
    assert_eq!(app.get_record(DUBLIN, &record).await.status(), 200);
    let logged = app.boundary.log().size();
    let mixed = format!("{}{}", record[..8].to_ascii_uppercase(), &record[8..]);
    for other in [record.to_ascii_uppercase(), mixed, format!("{{{record}}}"), format!("urn:uuid:{record}")] {
        let body = problem(app.get_record(DUBLIN, &other).await, 400, "invalid-id").await;
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("invalid record id") && detail.contains("lowercase"), "{body}");
    }
    assert_eq!(app.boundary.log().size(), logged, "a refused spelling was decided and logged");
}

#[tokio::test]
async fn subject_ids_of_dots_only_are_400() {
    let app = TestApp::start().await;
    let token = app.token();
    let body = json!({"home_region": "eu"}).to_string();
    // Sent as they are: an HTTP client would resolve `.` and `..` away before sending.
    for id in [".", "..", "...", "%2E", "%2e%2E", "...."] {
        for (method, path, body) in [
            ("PUT", format!("/v1/subjects/{id}"), body.as_str()),
            ("POST", format!("/v1/subjects/{id}/records"), r#"{"category": "profile", "fields": {}}"#),
            ("DELETE", format!("/v1/subjects/{id}"), ""),
            ("GET", format!("/v1/subjects/{id}/accesses"), ""),
        ] {
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: clover\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let (status, head, answer) = raw(&app, DUBLIN, request.as_bytes()).await;
            assert_eq!(status, 400, "{method} {path}: {head}");
            let answer: Value = serde_json::from_slice(&answer).unwrap();
            assert_eq!(answer["type"], "urn:clover:problem:invalid-id", "{method} {path}: {answer}");
            assert!(answer["detail"].as_str().unwrap().contains("not only dots"), "{answer}");
        }
    }
    assert!(app.dump().await.is_empty());
    // Dots among other characters are fine.
    assert_eq!(app.put_subject("a..b").await.status(), 201);
}

#[tokio::test]
async fn bodies_over_the_default_limit_of_1_mib_are_413() {
    let app = TestApp::start().await;
    app.seed("u-1", json!({"a": 1})).await;
    let before = app.dump().await;
    let big = json!({"category": "profile", "fields": {"blob": "x".repeat(1024 * 1024)}});
    let body = problem(json_to(&app, "POST", "/v1/subjects/u-1/records", big).await, 413, "payload-too-large").await;
    assert!(body["detail"].as_str().unwrap().contains("1048576"), "{body}");
    // Just under the limit is accepted.
    let fits = json!({"category": "profile", "fields": {"blob": "x".repeat(1024 * 1024 - 100)}});
    assert_eq!(json_to(&app, "POST", "/v1/subjects/u-1/records", fits).await.status(), 201);
    assert_eq!(app.dump().await.len(), before.len() + 1);
}

#[tokio::test]
async fn the_body_limit_is_configurable() {
    let app = TestApp::start_with(|config| config.max_body_bytes = 2048).await;
    app.seed("u-1", json!({"a": 1})).await;
    let before = app.dump().await;
    let big = json!({"category": "profile", "fields": {"blob": "x".repeat(4096)}});
    let body = problem(json_to(&app, "POST", "/v1/subjects/u-1/records", big).await, 413, "payload-too-large").await;
    assert!(body["detail"].as_str().unwrap().contains("2048"), "{body}");
    assert_eq!(app.dump().await, before);
}

#[tokio::test]
async fn a_body_not_declared_as_json_is_415() {
    let app = TestApp::start().await;
    app.seed("u-1", json!({"a": 1})).await;
    let before = app.dump().await;
    let body = json!({"category": "profile", "fields": {"a": 1}}).to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
        Some("application/foo+json"),
        Some("application/json; charset=latin1"),
        Some("application/json; charset=utf-16"),
        Some("application/json; profile=\"x\""),
    ] {
        let response = send(&app, "POST", "/v1/subjects/u-1/records", content_type, body.clone().into_bytes()).await;
        let answer = problem(response, 415, "unsupported-media-type").await;
        assert!(answer["detail"].as_str().unwrap().contains("application/json"), "{answer}");
        let approval = json!({"subjects": ["u-1"], "categories": ["profile"], "purpose": "support"}).to_string();
        let response = send(&app, "POST", "/v1/approvals", content_type, approval.into_bytes()).await;
        problem(response, 415, "unsupported-media-type").await;
        let subject = json!({"home_region": "eu"}).to_string().into_bytes();
        let response = send(&app, "PUT", "/v1/subjects/u-2", content_type, subject).await;
        problem(response, 415, "unsupported-media-type").await;
    }
    assert_eq!(app.dump().await, before);
    // JSON, in UTF-8, however it is spelled.
    for content_type in ["application/json; charset=utf-8", "Application/JSON;charset=UTF-8"] {
        let response =
            send(&app, "POST", "/v1/subjects/u-1/records", Some(content_type), body.clone().into_bytes()).await;
        assert_eq!(response.status(), 201, "{content_type}");
    }
}

#[tokio::test]
async fn head_is_refused_where_a_get_is_decided_and_logged() {
    let app = TestApp::start().await;
    let record = app.seed("u-1", json!({"a": 1})).await;
    let logged = app.boundary.log().size();
    // Every GET that needs a caller (so is decided), as the API document lists them, with ids
    // that exist.
    let document: Value = app.client(DUBLIN).get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let mut decided = Vec::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        if let Some(get) = operations.get("get")
            && get.get("security") != Some(&json!([{}]))
        {
            decided.push(
                path.replace("{record_id}", &record)
                    .replace("{subject_id}", "u-1")
                    .replace("{approval_id}", "x")
                    .replace("{id}", "x"),
            );
        }
    }
    decided.sort();
    assert_eq!(
        decided,
        [
            "/v1/approvals/x",
            "/v1/government-requests",
            "/v1/keys",
            "/v1/keys/reseal",
            "/v1/me/accesses",
            format!("/v1/records/{record}").as_str(),
            "/v1/requests/subjects",
            "/v1/subjects/u-1/accesses",
            "/v1/transfers/x",
            "/v1/transfers/x/records",
        ],
        "the GETs that decide"
    );
    for path in &decided {
        let response = app.client(DUBLIN).head(app.url(path)).bearer_auth(app.token()).send().await.unwrap();
        assert_eq!(response.status(), 405, "{path}");
        assert_eq!(response.headers()["allow"], "GET", "{path}");
    }
    assert_eq!(app.boundary.log().size(), logged, "a HEAD was decided and logged");
    // Where a GET decides nothing, HEAD is served.
    for path in ["/healthz", "/log/checkpoint", "/openapi.json", "/v1/register/transfers"] {
        let response = app.client(DUBLIN).head(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn a_header_block_over_the_limit_is_431_with_a_problem_body() {
    let app = TestApp::start().await;
    let token = app.token();
    // More header fields than the server reads, and a header block of its whole limit.
    let fields: String = (0..=clover_tls::serve::MAX_HEADERS).map(|i| format!("X-Field-{i}: {i}\r\n")).collect();
    let many = format!("GET /v1/keys HTTP/1.1\r\nHost: clover\r\nAuthorization: Bearer {token}\r\n{fields}\r\n");
    let start = format!("GET /v1/keys HTTP/1.1\r\nHost: clover\r\nAuthorization: Bearer {token}\r\nX-Big: ");
    let large = format!("{start}{}", "a".repeat(clover_tls::serve::MAX_HEADER_BYTES - start.len()));
    for request in [many, large] {
        let (status, head, body) = raw(&app, DUBLIN, request.as_bytes()).await;
        assert_eq!(status, 431, "{head}");
        assert!(head.contains("\r\ncontent-type: application/problem+json"), "{head}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["type"], "urn:clover:problem:headers-too-large", "{body}");
        assert_eq!(body["status"], 431, "{body}");
        assert!(body["detail"].as_str().unwrap().contains("417792 bytes"), "{body}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems_too() {
    let app = TestApp::start().await;
    let response = app.client(DUBLIN).get(app.url("/v1/nothing-here")).send().await.unwrap();
    problem(response, 404, "no-such-endpoint").await;
    let response = app.client(DUBLIN).patch(app.url("/v1/subjects/u-1")).bearer_auth(app.token()).send().await.unwrap();
    problem(response, 405, "method-not-allowed").await;
}
