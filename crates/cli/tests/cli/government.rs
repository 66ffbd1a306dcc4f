//! `clover audit report` against a real boundary: the government-requests report recomputed from
//! the verified log, a zero included, and a served report that lies caught.

use std::path::Path;
use std::process::Command;

use crate::support::{Process, clover_with_passphrase, proxy, run, run_ok, stdout_of};

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
