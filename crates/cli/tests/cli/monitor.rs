//! `clover audit monitor` against a live boundary: the log followed as traffic comes in, alerts
//! raised from what the public log says (refusals from Singapore past the limit, a government
//! request), the console's pages and their JSON twins with their security headers, an entry's
//! proof checked by the monitor, and a monitor killed and restarted resuming where it was.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    DUBLIN, Process, SINGAPORE, client, clover_with_passphrase, create_subject, mint_token, run_ok, stdout_of,
    write_record,
};

fn clover(dir: &Path) -> Command {
    clover_with_passphrase(dir, "monitor-test")
}

fn monitor(dir: &Path, url: &str, vkey: &str) -> Process {
    let mut c = clover(dir);
    c.args(["audit", "monitor", "--url", url, "--vkey", vkey, "--state", "monitor", "--rules", "rules.toml"]).args([
        "--every",
        "200ms",
        "--listen",
        "127.0.0.1:0",
    ]);
    Process::start(c)
}

async fn get(console: &Process, path: &str) -> (reqwest::header::HeaderMap, String) {
    let response = reqwest::get(console.at(path)).await.unwrap();
    assert!(response.status().is_success(), "{path}: {}", response.status());
    (response.headers().clone(), response.text().await.unwrap())
}

async fn get_url(url: &str) -> (reqwest::header::HeaderMap, String) {
    let response = reqwest::get(url).await.unwrap();
    assert!(response.status().is_success(), "{url}: {}", response.status());
    (response.headers().clone(), response.text().await.unwrap())
}

/// Waits until the console's alerts include `rule`; returns them.
async fn alerts_until(console: &Process, rule: &str) -> Vec<Value> {
    for _ in 0..100 {
        let (_, body) = get(console, "/alerts.json").await;
        let alerts: Vec<Value> = serde_json::from_str(&body).unwrap();
        if alerts.iter().any(|a| a["rule"] == rule) {
            return alerts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {rule} alert; stderr:\n{}", console.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_follows_a_live_boundary_raises_alerts_and_serves_its_console() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    run_ok({
        let mut c = clover(dir);
        c.args(["init", "--data-dir", "data"]);
        c
    });
    let vkey = stdout_of({
        let mut c = clover(dir);
        c.args(["log", "vkey", "--data-dir", "data"]);
        c
    });
    let vkey = vkey.trim().to_owned();
    let server = Process::serve(clover(dir), &["--data-dir", "data"]);
    std::fs::write(dir.join("rules.toml"), "refusals = 2\nrefusal_window_seconds = 600\n").unwrap();
    let console = monitor(dir, &server.url, &vkey);

    // Traffic: a record read from Dublin, refused three times from Singapore; a government
    // request registered.
    let token = mint_token(clover(dir), &["--data-dir", "data"], "support,legal");
    create_subject(&server, &token, "s-1").await;
    let (record, _) = write_record(&server, &token, "s-1", &json!({"display_name": "Aoife"})).await;
    for from in [DUBLIN, SINGAPORE, SINGAPORE, SINGAPORE] {
        client(from)
            .get(server.at(&format!("/v1/records/{record}")))
            .bearer_auth(&token)
            .header("X-Clover-Purpose", "support")
            .send()
            .await
            .unwrap();
    }
    let registered = client(DUBLIN)
        .post(server.at("/v1/government-requests"))
        .bearer_auth(&token)
        .json(&json!({"authority": "Garda", "country": "ie", "instrument": "production-order", "legal_basis": "Art. 5",
            "categories": ["profile"], "subjects": ["s-1"], "document_sha256": "ab".repeat(32)}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);

    // Within a few polls of the checkpoint (published about a second after the entries).
    let alerts = alerts_until(&console, "government-request-received").await;
    let refusals = alerts_until(&console, "refusals-from-origin").await;
    let burst = refusals.iter().find(|a| a["rule"] == "refusals-from-origin").unwrap();
    assert!(burst["message"].as_str().unwrap().contains("singapore-1"), "{burst}");
    assert_eq!(burst["indexes"].as_array().unwrap().len(), 3);
    assert!(alerts.iter().all(|a| !a.to_string().contains("s-1") && !a.to_string().contains("Garda")));

    // The console: every page with its security headers, and its JSON twin.
    for path in ["/", "/accesses", "/transfers", "/government", "/changes", "/alerts", "/alerts?severity=info"] {
        let (headers, body) = get(&console, path).await;
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && !csp.contains("unsafe"), "{path}: {csp}");
        assert!(body.contains("<!DOCTYPE html>") && !body.contains("<script"), "{path}");
        assert!(!body.contains("http://") && !body.contains("https://"), "{path} refers to an external asset");
    }
    let (_, now) = get(&console, "/index.json").await;
    let now: Value = serde_json::from_str(&now).unwrap();
    assert!(now["size"].as_u64().unwrap() >= 8, "{now}");
    assert!(now["health"]["last_problem"].is_null(), "{now}");
    let (_, accesses) = get(&console, "/accesses.csv").await;
    assert!(accesses.contains(",sg,refused,<5\n"), "a small count is suppressed: {accesses}");
    let (_, report) = get(&console, "/government.json").await;
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(
        (report["rows"][0]["country"].as_str(), report["rows"][0]["requests"].as_u64()),
        (Some("ie"), Some(1)),
        "{report}"
    );
    let (_, served) =
        get_url(&server.at(&format!("/v1/reports/government-requests?period={}", report["period"].as_str().unwrap())))
            .await;
    let served: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(served["rows"][0]["requests"], report["rows"][0]["requests"], "the monitor's report is the boundary's");
    let (_, changes) = get(&console, "/changes.json").await;
    assert!(changes.contains("keys created"), "{changes}");
    let (_, svg) = get(&console, "/accesses.svg").await;
    assert!(svg.starts_with("<svg"), "{svg}");
    let (_, metrics) = get(&console, "/metrics").await;
    assert!(
        metrics.contains("clover_monitor_alerts_total{rule=\"refusals-from-origin\",severity=\"warning\"} 1"),
        "{metrics}"
    );

    // An entry's permalink: its proof checked against the checkpoint the monitor verified.
    let index = burst["indexes"][0].as_u64().unwrap();
    let (_, entry) = get(&console, &format!("/entries/{index}.json")).await;
    let entry: Value = serde_json::from_str(&entry).unwrap();
    assert_eq!(entry["verified"], true, "{entry}");
    assert_eq!(entry["event"]["origin"]["site"], "singapore-1");
    let (_, page) = get(&console, &format!("/entries/{index}")).await;
    assert!(page.contains("Included"), "{page}");

    // The report to hand over: the half-year as the monitor saw it, signed with its own key.
    let period = report["period"].as_str().unwrap().to_owned();
    let mut c = clover(dir);
    c.args(["audit", "report", "--url", &server.url, "--vkey", &vkey, "--period", &period]).args([
        "--html",
        "handover.html",
        "--state",
        "monitor",
    ]);
    if Path::new("/usr/bin/chromium").exists() {
        c.args(["--pdf", "handover.pdf"]);
    }
    let made = run_ok(c);
    assert!(made.stderr.contains("signed by the monitor's key"), "{}", made.stderr);
    let page = std::fs::read_to_string(dir.join("handover.html")).unwrap();
    assert!(page.contains("refusals-from-origin") && page.contains("<td>ie</td>"), "{page}");
    assert!(!page.contains("s-1") && !page.contains("Garda"), "the report names no one");
    if Path::new("/usr/bin/chromium").exists() {
        assert!(std::fs::read(dir.join("handover.pdf")).unwrap().starts_with(b"%PDF"));
    }
    let monitor_vkey = std::fs::read_to_string(dir.join("monitor/monitor.vkey")).unwrap();
    let verify = |file: &str| {
        let mut c = clover(dir);
        c.args(["audit", "verify-report", file, "--vkey", monitor_vkey.trim()]);
        crate::support::run(c)
    };
    let checked = verify("handover.html");
    assert!(checked.status.success() && checked.stdout.starts_with("OK "), "{checked:?}");
    std::fs::write(dir.join("changed.html"), page.replacen("refusals-from-origin", "nothing-to-see", 1)).unwrap();
    let changed = verify("changed.html");
    assert!(!changed.status.success() && changed.stderr.contains("changed after it was signed"), "{changed:?}");
    let wrong = {
        let mut c = clover(dir);
        c.args(["audit", "verify-report", "handover.html", "--vkey", &vkey]);
        crate::support::run(c)
    };
    assert!(!wrong.status.success(), "another key does not verify it");

    // Killed and restarted: it resumes at the size it verified, and raises nothing twice.
    let size = now["size"].as_u64().unwrap();
    let mut console = console;
    console.kill_hard().await;
    let console = monitor(dir, &server.url, &vkey);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, now) = get(&console, "/index.json").await;
    let now: Value = serde_json::from_str(&now).unwrap();
    assert!(now["size"].as_u64().unwrap() >= size);
    let lines = std::fs::read_to_string(dir.join("monitor/alerts.jsonl")).unwrap();
    let ids: Vec<u64> =
        lines.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_u64().unwrap()).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique, "every alert once");
    console.stop();
    server.stop();
}
