//! `clover audit verify` and `clover audit witness` against real boundaries, honest and not.
//!
//! Tampering is done two ways: a proxy that alters what an honest boundary serves (a forged
//! signature, a changed tile, a changed entry), and an operator who rewrites the log on disk,
//! deletes the checkpoint that would betray it, and restarts (a fork, a shrink): the boundary
//! then signs the rewritten log, and only the auditor's kept state catches it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{
    DUBLIN, Finished, PATIENCE, Process, client, clover_with_passphrase, mint_token, proxy, run, run_ok, stdout_of,
};

fn clover(dir: &Path) -> Command {
    clover_with_passphrase(dir, "audit-test")
}

fn serve(dir: &Path, config: Option<&Path>) -> Process {
    let mut args = vec!["--data-dir", "data"];
    if let Some(config) = config {
        args.extend(["--config", config.to_str().unwrap()]);
    }
    Process::serve(clover(dir), &args)
}

fn init(dir: &Path) {
    let mut command = clover(dir);
    command.args(["init", "--data-dir", "data"]);
    run_ok(command);
}

fn log_vkey_of(dir: &Path) -> String {
    let mut command = clover(dir);
    command.args(["log", "vkey", "--data-dir", "data"]);
    stdout_of(command)
}

fn token(dir: &Path) -> String {
    mint_token(clover(dir), &["--data-dir", "data"], "")
}

/// Writes `n` records through the API: each is a logged decision.
async fn write(url: &str, token: &str, n: usize) {
    let client = client(DUBLIN);
    let put = client.put(format!("{url}/v1/subjects/u-1")).bearer_auth(token).json(&json!({"home_region": "eu"}));
    assert!(put.send().await.unwrap().status().is_success());
    for i in 0..n {
        let post = client
            .post(format!("{url}/v1/subjects/u-1/records"))
            .bearer_auth(token)
            .json(&json!({"category": "profile", "fields": {"n": i}}));
        assert_eq!(post.send().await.unwrap().status(), 201);
    }
}

fn verify(dir: &Path, url: &str, vkey: &str, state: Option<&Path>, witnesses: &[&str]) -> Finished {
    let mut command = clover(dir);
    command.args(["audit", "verify", "--url", url, "--vkey", vkey]);
    if let Some(state) = state {
        command.arg("--state").arg(state);
    }
    for witness in witnesses {
        command.args(["--witness", witness]);
    }
    run(command)
}

fn assert_fails(out: &Finished, expected: &str) {
    assert!(!out.status.success(), "verify passed; it should have found: {expected}");
    assert!(out.stderr.contains(expected), "expected {expected:?} in:\n{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_log_verifies_and_stays_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let vkey = log_vkey_of(tmp.path());
    assert!(vkey.starts_with("clover.local/eu+"), "{vkey}");
    let server = serve(tmp.path(), None);
    let token = token(tmp.path());
    write(&server.url, &token, 300).await;
    let state = tmp.path().join("auditor.json");

    let first = verify(tmp.path(), &server.url, &vkey, Some(&state), &[]);
    let stdout = &first.stdout;
    assert!(first.status.success(), "{}", first.stderr);
    assert!(stdout.contains("verified clover.local/eu: 304 entries"), "{stdout}");
    assert!(stdout.contains("no earlier checkpoint"), "{stdout}");

    write(&server.url, &token, 20).await;
    let second = verify(tmp.path(), &server.url, &vkey, Some(&state), &[]);
    let stdout = &second.stdout;
    assert!(second.status.success(), "{}", second.stderr);
    assert!(stdout.contains("325 entries"), "{stdout}");
    assert!(stdout.contains("consistent with the 304 entries verified before"), "{stdout}");

    // A key that is not the log's is refused.
    let other = tempfile::tempdir().unwrap();
    init(other.path());
    let wrong = verify(tmp.path(), &server.url, &log_vkey_of(other.path()), None, &[]);
    assert_fails(&wrong, "checkpoint");
}

/// `--url` takes the log's prefix (`http://host/log`, as tlog clients take it) as well as the
/// boundary's root; both are the same log, so the state kept through one holds for the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_verifies_from_its_prefix_url_as_from_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let vkey = log_vkey_of(tmp.path());
    let server = serve(tmp.path(), None);
    let token = token(tmp.path());
    write(&server.url, &token, 10).await;
    let state = tmp.path().join("auditor.json");
    let prefix = format!("{}/log", server.url);

    let first = verify(tmp.path(), &prefix, &vkey, Some(&state), &[]);
    assert!(first.status.success(), "{}", first.stderr);
    assert!(first.stdout.contains("verified clover.local/eu: 14 entries"), "{}", first.stdout);
    assert!(first.stdout.contains("no earlier checkpoint"), "{}", first.stdout);

    write(&server.url, &token, 5).await;
    let second = verify(tmp.path(), &server.url, &vkey, Some(&state), &[]);
    assert!(second.status.success(), "{}", second.stderr);
    assert!(second.stdout.contains("verified clover.local/eu: 20 entries"), "{}", second.stdout);
    assert!(second.stdout.contains("consistent with the 14 entries verified before"), "{}", second.stdout);

    write(&server.url, &token, 5).await;
    let third = verify(tmp.path(), &format!("{prefix}/"), &vkey, Some(&state), &[]);
    assert!(third.status.success(), "{}", third.stderr);
    assert!(third.stdout.contains("verified clover.local/eu: 26 entries"), "{}", third.stdout);
    assert!(third.stdout.contains("consistent with the 20 entries verified before"), "{}", third.stdout);

    // Through the prefix as through the root, a key that is not the log's is refused.
    let other = tempfile::tempdir().unwrap();
    init(other.path());
    assert_fails(&verify(tmp.path(), &prefix, &log_vkey_of(other.path()), None, &[]), "checkpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_signature_a_changed_tile_and_a_changed_entry_are_each_caught() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let vkey = log_vkey_of(tmp.path());
    let server = serve(tmp.path(), None);
    write(&server.url, &token(tmp.path()), 40).await;

    let forged = proxy(server.url.clone(), |path, body| {
        if path == "/log/checkpoint" {
            // Claim one more entry than was signed.
            let text = String::from_utf8(body).unwrap();
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            lines[1] = (lines[1].parse::<u64>().unwrap() + 1).to_string();
            return format!("{}\n", lines.join("\n")).into_bytes();
        }
        body
    })
    .await;
    assert_fails(&verify(tmp.path(), &forged, &vkey, None, &[]), "bad checkpoint signature");

    let changed_tile = proxy(server.url.clone(), |path, mut body| {
        if path.starts_with("/log/tile/0/") {
            body[40] ^= 1;
        }
        body
    })
    .await;
    assert_fails(&verify(tmp.path(), &changed_tile, &vkey, None, &[]), "tile tile/0/000.p/");

    let changed_entry = proxy(server.url.clone(), |path, mut body| {
        if path.starts_with("/log/tile/entries/") {
            // Inside the third entry's JSON.
            let at = body.windows(6).enumerate().filter(|(_, w)| w == b"\"time\"").nth(2).unwrap().0;
            body[at + 8] = if body[at + 8] == b'1' { b'2' } else { b'1' };
        }
        body
    })
    .await;
    assert_fails(&verify(tmp.path(), &changed_entry, &vkey, None, &[]), "entry 2 was changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_rewritten_by_its_operator_is_caught_as_a_fork_or_a_shrink() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let vkey = log_vkey_of(tmp.path());
    let state = tmp.path().join("auditor.json");
    let server = serve(tmp.path(), None);
    let token = token(tmp.path());
    write(&server.url, &token, 30).await;
    assert!(verify(tmp.path(), &server.url, &vkey, Some(&state), &[]).status.success());
    server.stop();

    let entries = tmp.path().join("data/log/entries");
    let hide_checkpoints = || {
        for slot in ["checkpoint.0", "checkpoint.1"] {
            std::fs::remove_file(tmp.path().join("data/log").join(slot)).unwrap();
        }
    };
    let original = std::fs::read(&entries).unwrap();

    // Rewrite history: change an early entry, hide the evidence, restart. The boundary signs
    // the rewritten log; the auditor's state does not match it.
    let mut forked = original.clone();
    let at = forked.windows(6).position(|w| w == b"\"time\"").unwrap();
    forked[at + 8] = if forked[at + 8] == b'1' { b'2' } else { b'1' };
    std::fs::write(&entries, &forked).unwrap();
    hide_checkpoints();
    let server = serve(tmp.path(), None);
    assert_fails(&verify(tmp.path(), &server.url, &vkey, Some(&state), &[]), "the log forked");
    server.stop();

    // Drop the last entries instead.
    let mut cut = 0;
    let mut offset = 0;
    while offset < original.len() && cut < 20 {
        let len = u16::from_be_bytes([original[offset], original[offset + 1]]) as usize;
        offset += 2 + len;
        cut += 1;
    }
    std::fs::write(&entries, &original[..offset]).unwrap();
    hide_checkpoints();
    let server = serve(tmp.path(), None);
    assert_fails(&verify(tmp.path(), &server.url, &vkey, Some(&state), &[]), "the log shrank");
    drop(server);

    // Without the rewrite, the boundary itself refuses to serve a log that does not match the
    // checkpoint it signed last.
    // (Each start logs where the data lives: the restarts above signed checkpoints of their own.)
    std::fs::write(&entries, &original).unwrap();
    hide_checkpoints();
    let server = serve(tmp.path(), None);
    server.stop();
    std::fs::write(&entries, &forked).unwrap();
    let mut command = clover(tmp.path());
    command.args(["serve", "--listen", "127.0.0.1:0", "--data-dir", "data"]);
    let refused = run(command);
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("does not hold the entries its last signed checkpoint covers"),
        "{}",
        refused.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_cosigns_and_verify_demands_its_cosignature() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path());
    let log_vkey = log_vkey_of(tmp.path());
    let key = tmp.path().join("witness.key");
    let mut print = clover(tmp.path());
    print.args(["audit", "witness", "--name", "witness.example", "--state", "w.json", "--print-vkey"]);
    print.arg("--key").arg(&key).args(["--log", &log_vkey]);
    let witness_vkey = stdout_of(print);
    assert!(witness_vkey.starts_with("witness.example+"), "{witness_vkey}");

    let mut command = clover(tmp.path());
    command.args(["audit", "witness", "--name", "witness.example", "--state", "w.json", "--listen", "127.0.0.1:0"]);
    command.arg("--key").arg(&key).args(["--log", &log_vkey]);
    let witness = Process::start(command);

    let config: PathBuf = tmp.path().join("clover.toml");
    std::fs::write(
        &config,
        format!("[log]\n[[log.witnesses]]\nurl = \"{}\"\nvkey = \"{witness_vkey}\"\n", witness.url),
    )
    .unwrap();
    let server = serve(tmp.path(), Some(&config));
    write(&server.url, &token(tmp.path()), 10).await;

    // Wait until the served checkpoint covers the writes and carries the cosignature.
    let client = client(DUBLIN);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let note = client.get(format!("{}/log/checkpoint", server.url)).send().await.unwrap().text().await.unwrap();
        if note.contains("\n14\n") && note.contains("witness.example") {
            break;
        }
        assert!(Instant::now() < deadline, "no cosigned checkpoint:\n{note}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ok = verify(tmp.path(), &server.url, &log_vkey, None, &[&witness_vkey]);
    assert!(ok.status.success(), "{}", ok.stderr);
    assert!(ok.stdout.contains("cosigned by witness.example"));

    // A witness that did not cosign is missing.
    let mut other = clover(tmp.path());
    other.args(["audit", "witness", "--name", "other.example", "--state", "o.json", "--print-vkey"]);
    other.arg("--key").arg(tmp.path().join("other.key")).args(["--log", &log_vkey]);
    let other_vkey = stdout_of(other);
    assert_fails(&verify(tmp.path(), &server.url, &log_vkey, None, &[&other_vkey]), "witness \"other.example\"");
}
