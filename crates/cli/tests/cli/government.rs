//! `clover government` and `clover audit report` against a real boundary: the legal team's
//! register worked from the command line, and the government-requests report recomputed from
//! the verified log, a zero included, and a served report that lies caught.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::support::{DUBLIN, Process, client, clover_with_passphrase, mint_token, proxy, run, run_ok, stdout_of};

fn clover(dir: &Path) -> Command {
    clover_with_passphrase(dir, "government-test")
}

/// A boundary that says it received a request it never logged.
fn lying_report(path: &str, body: Vec<u8>) -> Vec<u8> {
    if path != "/v1/reports/government-requests" {
        return body;
    }
    let Ok(mut report) = serde_json::from_slice::<serde_json::Value>(&body) else { return body };
    report["gagged"] = serde_json::json!(1);
    serde_json::to_vec(&report).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_recomputes_from_the_log_and_a_lie_is_caught() {
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
    let server = Process::serve(clover(dir), &["--data-dir", "data"]);
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let report = |url: &str, period: &str| {
        let mut c = clover(dir);
        c.args(["audit", "report", "--url", url, "--vkey", vkey.trim(), "--period", period]);
        c
    };
    let agreed = run_ok(report(&server.url, "2026-H2"));
    assert!(agreed.stderr.contains("agrees with the log: 0 requests in 0 rows, 0 gagged"), "{}", agreed.stderr);
    assert!(agreed.stdout.contains("2026-H2,gagged,gagged,0,"), "{}", agreed.stdout);

    let liar = proxy(server.url.clone(), lying_report).await;
    let caught = run(report(&liar, "2026-H2"));
    assert!(!caught.status.success());
    assert!(caught.stderr.contains("differs from the one the log gives"), "{}", caught.stderr);

    let bad = run(report(&server.url, "2026-H3"));
    assert!(!bad.status.success());
    assert!(bad.stderr.contains("YYYY-H1"), "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legal_team_works_its_register_from_the_command_line_and_the_report_agrees() {
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
    let vkey = vkey.trim();
    let server = Process::serve(clover(dir), &["--data-dir", "data"]);
    let legal = mint_token(clover(dir), &["--data-dir", "data"], "legal");
    let http = client(DUBLIN);
    let put = http
        .put(server.at("/v1/subjects/u-1001"))
        .bearer_auth(&legal)
        .json(&json!({"home_region": "eu", "birth_date": "1985-03-04"}));
    assert!(put.send().await.unwrap().status().is_success());
    let post = http
        .post(server.at("/v1/subjects/u-1001/records"))
        .bearer_auth(&legal)
        .json(&json!({"category": "profile", "fields": {"display_name": "Aoife"}}));
    assert_eq!(post.send().await.unwrap().status(), 201);
    std::fs::write(dir.join("order.pdf"), b"%PDF- a production order").unwrap();
    let government = |args: &[&str]| {
        let mut c = clover(dir);
        c.env("CLOVER_TOKEN", &legal).arg("government").args(args).args(["--url", &server.url]);
        c
    };
    let register = |country: &str, instrument: &str| {
        let made = run_ok(government(&[
            "register",
            "--authority",
            "Staatsanwaltschaft Berlin",
            "--country",
            country,
            "--instrument",
            instrument,
            "--legal-basis",
            "Regulation (EU) 2023/1543, Art. 5",
            "--category",
            "profile",
            "--subject",
            "u-1001",
            "--document",
            "order.pdf",
        ]));
        made.stdout.split_whitespace().nth(1).unwrap().trim_end_matches(':').to_owned()
    };
    let granted = register("de", "production-order");
    assert!(granted.starts_with("gr-"), "{granted}");
    let decided = run_ok(government(&["decide", &granted, "--answer", "grant"]));
    assert!(
        decided.stdout.contains("granted") && decided.stdout.contains("recognised-authorities-are-answered"),
        "{}",
        decided.stdout
    );
    let disclosed = run_ok(government(&["disclose", &granted, "--output", "package.zip", "--vkey", vkey]));
    assert!(
        disclosed.stdout.starts_with("1 record(s) in 1 files, each matching the manifest, signed by the log's key"),
        "{}",
        disclosed.stdout
    );
    assert!(dir.join("package.zip").exists());
    run_ok(government(&["close", &granted]));

    let rejected = register("cn", "mlat");
    let decided = run_ok(government(&["decide", &rejected, "--answer", "grant"]));
    assert!(decided.stdout.contains("unrecognised-authorities-are-refused"), "{}", decided.stdout);
    let refused = run(government(&["disclose", &rejected, "--output", "nothing.zip"]));
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("rejected") && refused.stderr.contains("logged at index"), "{}", refused.stderr);
    assert!(!dir.join("nothing.zip").exists());
    let listed = run_ok(government(&["list"]));
    assert_eq!(listed.stdout.lines().count(), 3, "{}", listed.stdout);

    // The report of this half-year, recomputed from the verified log, agrees.
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let now = time::OffsetDateTime::now_utc();
    let period = format!("{}-H{}", now.year(), if u8::from(now.month()) <= 6 { 1 } else { 2 });
    let report = run_ok({
        let mut c = clover(dir);
        c.args(["audit", "report", "--url", &server.url, "--vkey", vkey, "--period", &period]);
        c
    });
    assert!(report.stderr.contains("agrees with the log: 2 requests in 2 rows"), "{}", report.stderr);
    assert!(report.stdout.contains(",de,production-order,1,1,1,100,0,1,0,"), "{}", report.stdout);
    assert!(report.stdout.contains(",cn,mlat,1,1,0,0,1,1,0,"), "{}", report.stdout);
}
