//! A person's and an organisation's path through the binary against a real boundary: a subject
//! token, who read my data (proofs checked), an export decrypted with the standard `age` tool,
//! an erasure and a closure whose certificates `clover audit verify-certificate` checks.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::support::{DUBLIN, Process, client, clover_with_passphrase, mint_token, run, run_ok, stdout_of};

fn clover(dir: &Path) -> Command {
    clover_with_passphrase(dir, "subject-test")
}

/// A subject's own token, minted by the binary.
fn subject_token(dir: &Path, subject: &str) -> String {
    let mut c = clover(dir);
    c.args(["token", "--kind", "subject", "--principal", subject, "--data-dir", "data"]);
    stdout_of(c).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_and_an_organisation_use_their_rights_from_the_command_line() {
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
    let staff = mint_token(clover(dir), &["--data-dir", "data"], "support");
    let http = client(DUBLIN);
    for (subject, category, fields) in [
        ("u-1001", "profile", json!({"display_name": "Aoife"})),
        ("u-1001", "content", json!({"text": "hello"})),
        ("org-parliament", "content", json!({"text": "a statement"})),
    ] {
        let put = http
            .put(server.at(&format!("/v1/subjects/{subject}")))
            .bearer_auth(&staff)
            .json(&json!({"home_region": "eu", "birth_date": "1985-03-04"}));
        assert!(put.send().await.unwrap().status().is_success());
        let post = http
            .post(server.at(&format!("/v1/subjects/{subject}/records")))
            .bearer_auth(&staff)
            .json(&json!({"category": category, "fields": fields}));
        assert_eq!(post.send().await.unwrap().status(), 201);
    }
    // A subject token carries no roles.
    let refused = run({
        let mut c = clover(dir);
        c.args(["token", "--kind", "subject", "--principal", "u-1001", "--roles", "support", "--data-dir", "data"]);
        c
    });
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("no roles"), "{}", refused.stderr);

    let token = subject_token(dir, "u-1001");
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let subject = |args: &[&str]| {
        let mut c = clover(dir);
        c.env("CLOVER_TOKEN", &token).arg("subject").args(args).args(["--url", &server.url]);
        c
    };
    let listed = run_ok(subject(&["accesses", "--vkey", vkey, "--output", "accesses.json"]));
    assert!(listed.stdout.contains("signed by the log's key"), "{}", listed.stdout);
    assert!(listed.stdout.contains("employee"), "{}", listed.stdout);
    assert!(!listed.stdout.contains("ana"), "no employee's name: {}", listed.stdout);
    assert!(dir.join("accesses.json").exists());
    // Another log's key: refused.
    let other = "other.example/log+2a2b2c2d+AQ7Fc1HPbLm3eDqsQS4IF8b9jaF+XWlzIu0WLjB0D7Gv";
    let wrong = run(subject(&["accesses", "--vkey", other]));
    assert!(!wrong.status.success());

    // The export, encrypted to the person's own age key, opened by the age tool.
    let made =
        Command::new("age-keygen").arg("-o").arg(dir.join("key.txt")).output().expect("age-keygen (Debian's age)");
    assert!(made.status.success());
    let recipient = String::from_utf8(made.stderr).unwrap().trim().trim_start_matches("Public key: ").to_owned();
    let exported = run_ok(subject(&["export", "--age-recipient", &recipient, "--output", "me.zip.age"]));
    assert!(exported.stdout.contains("export of 2 records"), "{}", exported.stdout);
    let opened = Command::new("age")
        .current_dir(dir)
        .args(["-d", "-i", "key.txt", "-o", "me.zip", "me.zip.age"])
        .output()
        .unwrap();
    assert!(opened.status.success(), "{}", String::from_utf8_lossy(&opened.stderr));
    let zip = std::fs::read(dir.join("me.zip")).unwrap();
    assert!(zip.starts_with(b"PK"));
    let bad = run(subject(&["export", "--age-recipient", "age1nope", "--output", "bad.zip"]));
    assert!(!bad.status.success());
    assert!(bad.stderr.contains("age_recipient"), "{}", bad.stderr);
    assert!(!dir.join("bad.zip").exists() && !dir.join("bad.partial").exists());

    // The erasure, and its certificate checked offline.
    let erased = run_ok(subject(&["erase", "--output", "erasure.json"]));
    assert!(erased.stdout.contains("erased 2 records"), "{}", erased.stdout);
    let verify = |file: &str, extra: &[&str]| {
        let mut c = clover(dir);
        c.args(["audit", "verify-certificate", file, "--vkey", vkey]).args(extra);
        c
    };
    let checked = run_ok(verify("erasure.json", &["--subject", "u-1001"]));
    assert!(checked.stdout.contains("OK erasure certificate"), "{}", checked.stdout);
    assert!(checked.stdout.contains("OK the certificate is about \"u-1001\""), "{}", checked.stdout);
    assert!(!run(verify("erasure.json", &["--subject", "u-2002"])).status.success());
    let mut forged: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("erasure.json")).unwrap()).unwrap();
    let statement = forged["certificate"]["statement"].as_str().unwrap().replace("records 2", "records 0");
    forged["certificate"]["statement"] = json!(statement);
    std::fs::write(dir.join("forged.json"), serde_json::to_vec(&forged).unwrap()).unwrap();
    let failed = run(verify("forged.json", &[]));
    assert!(!failed.status.success());
    assert!(failed.stderr.contains("does not verify"), "{}", failed.stderr);

    // The organisation closes its account.
    let org = subject_token(dir, "org-parliament");
    let closed = run_ok({
        let mut c = clover(dir);
        c.env("CLOVER_TOKEN", &org).args([
            "subject",
            "close",
            "--account",
            "org-parliament",
            "--output",
            "closure.json",
            "--url",
            &server.url,
        ]);
        c
    });
    assert!(closed.stdout.contains("closed account org-parliament"), "{}", closed.stdout);
    let checked = run_ok(verify("closure.json", &["--subject", "org-parliament"]));
    assert!(checked.stdout.contains("OK closure certificate"), "{}", checked.stdout);
    assert!(checked.stdout.contains("OK erasure certificate"), "{}", checked.stdout);
    drop(server);
}
