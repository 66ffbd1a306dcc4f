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

/// Every operation says every answer the server gives it (issue 15, section 4): the document
/// was not valid OpenAPI 3.1 (the proofs' query parameters were declared in the path) and left
/// out 400 `invalid-header` and `malformed-json`, 413, 415, 429, 500 and 503, the forms of the
/// ids, and that an approval's lists must not be empty.
#[tokio::test]
async fn the_openapi_document_states_every_answer_and_form() {
    let app = TestApp::start().await;
    let doc: Value = app.client(DUBLIN).get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    for (path, names) in [("/v1/log/proof/inclusion", ["index", "size"]), ("/v1/log/proof/consistency", ["old", "new"])]
    {
        let parameters = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
        for name in names {
            let parameter = parameters.iter().find(|p| p["name"] == name).unwrap();
            assert_eq!(parameter["in"], "query", "{path} {name}");
        }
    }
    let mut secured = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = &operation["responses"];
            let what = format!("{method} {path}");
            if operation.get("security").is_none() {
                secured += 1;
                for status in ["400", "401", "403", "500", "503"] {
                    assert!(responses[status].is_object(), "{what}: no {status}");
                }
                assert!(responses["401"]["headers"]["WWW-Authenticate"].is_object(), "{what}");
                assert!(responses["400"]["description"].as_str().unwrap().contains("`invalid-header`"), "{what}");
                let headers: Vec<&str> = operation["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["in"] == "header")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                assert_eq!(headers, ["X-Clover-Purpose", "X-Clover-Justification"], "{what}");
            }
            if operation.get("requestBody").is_some() {
                for status in ["400", "413", "415", "422"] {
                    assert!(responses[status].is_object(), "{what}: no {status}");
                }
                assert!(responses["400"]["description"].as_str().unwrap().contains("`malformed-json`"), "{what}");
            }
            if path.starts_with("/v1/records/") || path.starts_with("/v1/subjects/") {
                assert!(responses["429"]["headers"]["Retry-After"].is_object(), "{what}: no 429 with Retry-After");
            }
        }
    }
    assert_eq!(secured, 33, "every operation with a caller");
    let parameter = |path: &str, method: &str, name: &str| {
        doc["paths"][path][method]["parameters"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap().clone()
    };
    let subject = parameter("/v1/subjects/{subject_id}", "put", "subject_id");
    assert_eq!(subject["schema"]["maxLength"], 128);
    let record = parameter("/v1/records/{record_id}", "get", "record_id");
    assert_eq!(record["schema"]["pattern"], "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$");
    let justification = parameter("/v1/records/{record_id}", "get", "X-Clover-Justification");
    assert_eq!(justification["schema"]["pattern"], "^[A-Z]{2,10}-[0-9]{1,10}$", "the configured ticket_pattern");
    let approval = &doc["components"]["schemas"]["ApprovalBody"]["properties"];
    assert_eq!(approval["subjects"]["minItems"], 1);
    assert_eq!(approval["categories"]["minItems"], 1);
    assert!(approval["categories"]["items"]["enum"].as_array().unwrap().contains(&json!("profile")), "configured");
    let category = &doc["components"]["schemas"]["RecordBody"]["properties"]["category"];
    assert!(category["enum"].as_array().unwrap().contains(&json!("profile")), "the configured categories");

    // The subject id pattern, as the server checks ids: spot checks both ways.
    let pattern = regex::Regex::new(subject["schema"]["pattern"].as_str().unwrap()).unwrap();
    for good in ["u-1", "a.b", "x@y:z_", ".a", "..a.."] {
        assert!(pattern.is_match(good), "{good}");
        assert!(clover_model::SubjectId::new(good).is_ok(), "{good}");
    }
    for bad in [".", "..", "...", "a/b", "a b", ""] {
        assert!(!pattern.is_match(bad), "{bad:?}");
        assert!(clover_model::SubjectId::new(bad).is_err(), "{bad:?}");
    }
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

/// What an operator sizes and alerts on is on `/metrics`, every family with its help text, and
/// `promtool check metrics` (Prometheus's own linter, from Debian's `prometheus` package, which
/// `.ci/run` installs) finds nothing to say.
#[tokio::test]
async fn metrics_an_operator_tunes_by_each_with_help_and_clean_for_promtool() {
    // A key cache of one: a key made is cached, and the next subject's takes its place, so that
    // the first read of u-1 misses (and unwraps its key) and the second hits.
    let app = TestApp::start_with(|config| config.keys.cache_size = 1).await;
    let record = app.seed("u-1", json!({"a": 1})).await;
    app.seed("u-2", json!({"a": 2})).await;
    // The same token twice: verified once, then found in the cache.
    app.get_record(DUBLIN, &record).await;
    app.get_record(DUBLIN, &record).await;
    app.get_record(SINGAPORE, &record).await;
    let text = app.client(DUBLIN).get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let sample = |name: &str, labels: &[&str]| {
        text.lines().any(|l| l.split(['{', ' ']).next() == Some(name) && labels.iter().all(|label| l.contains(label)))
    };
    for (name, labels) in [
        ("process_cpu_seconds_total", &[][..]),
        ("process_resident_memory_bytes", &[]),
        ("process_open_fds", &[]),
        ("process_max_fds", &[]),
        ("clover_log_batch_entries_count", &[]),
        ("clover_log_commit_seconds_bucket", &[]),
        ("clover_log_fsync_seconds_bucket", &[]),
        ("clover_log_sequencer_queue", &[]),
        ("clover_log_entries", &[]),
        ("clover_custodian_key_cache_total", &[r#"result="miss""#]),
        ("clover_custodian_key_cache_total", &[r#"result="hit""#]),
        ("clover_custodian_unwrap_seconds_bucket", &[]),
        ("clover_token_cache_total", &[r#"result="hit""#]),
        ("clover_token_cache_total", &[r#"result="miss""#]),
        ("clover_decisions_total", &[r#"action="read""#, r#"effect="allow""#, r#"policy="#]),
        ("clover_decisions_total", &[r#"action="read""#, r#"effect="deny""#]),
        ("clover_http_requests_total", &[]),
    ] {
        assert!(sample(name, labels), "no {name} {labels:?} in\n{text}");
    }
    // Every family has its help text.
    for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split(' ').next().unwrap();
        assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name} in\n{text}");
    }
    // The dashboard in docs/ reads only families the gateway has: here, or (those that count
    // events this test does not cause) described in the source.
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/grafana/clover-gateway.json"))
            .unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard).unwrap();
    let only_on_events = [
        "clover_refusals_limited_total",
        "clover_jwks_refreshes_total",
        "clover_approvals_refused_total",
        "clover_tls_connections_refused_total",
        "clover_tls_certificate_expiry_timestamp_seconds",
    ];
    let names = regex::Regex::new(r"\b(?:clover|process)_[a-z_]+").unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 12, "{} panels", panels.len());
    for expr in panels.iter().flat_map(|p| p["targets"].as_array().unwrap()).map(|t| t["expr"].as_str().unwrap()) {
        for name in names.find_iter(expr).map(|m| m.as_str()) {
            let family = name.strip_suffix("_bucket").unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {family} ")) || only_on_events.contains(&family),
                "the dashboard reads {name}, which /metrics does not have"
            );
        }
    }
    let Ok(promtool) = which("promtool") else {
        assert!(std::env::var_os("CI").is_none(), "promtool is missing: .ci/run installs Debian's prometheus package");
        eprintln!("promtool not installed; `apt-get install prometheus` to lint the metrics");
        return;
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}");
}

/// A program on the PATH.
fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(program)).find(|p| p.is_file()))
        .ok_or(())
}
