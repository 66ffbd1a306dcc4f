//! The procedure of `docs/verify-my-accesses.md`, run on a real answer (written by a helper):
//! the document's two scripts, taken from its code blocks, check a `/v1/me/accesses` answer
//! with Python's standard library and OpenSSL alone, and refuse a tampered one.

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clover_tlog::hash::leaf_hash;
use clover_tlog::note::VerifierKey;
use serde_json::{Value, json};

use crate::harness::{DUBLIN, TestApp, UNKNOWN};

const DOC: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/verify-my-accesses.md"));

/// The one fenced code block of the document whose info string is `info`.
fn code_block(info: &str) -> String {
    let fence = format!("```{info}");
    let mut blocks = DOC.split('\n').skip_while(|l| l.trim_end() != fence);
    assert!(blocks.next().is_some(), "docs/verify-my-accesses.md has no block {fence:?}");
    let lines: Vec<&str> = blocks.by_ref().take_while(|l| l.trim_end() != "```").collect();
    assert!(!lines.is_empty(), "the block {fence:?} is empty");
    assert!(!blocks.any(|l| l.trim_end() == fence), "docs/verify-my-accesses.md has two blocks {fence:?}");
    lines.join("\n") + "\n"
}

/// What a command said: its success, its standard output and its standard error.
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `program` in `dir`; fails the test (does not skip it) when the program is missing.
fn run(dir: &Path, program: &str, args: &[&str]) -> Ran {
    let output = Command::new(program).args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!("cannot run {program}: {e}. This test needs python3, bash and OpenSSL 3 on PATH (CI installs them).")
    });
    Ran {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Fails the test with a clear message unless the tools the document uses are installed.
fn require_tools(dir: &Path) {
    for (program, arg) in [("python3", "--version"), ("bash", "--version"), ("openssl", "version")] {
        let ran = run(dir, program, &[arg]);
        assert!(ran.ok, "{program} {arg} failed (the test needs it; CI installs it): {}{}", ran.stdout, ran.stderr);
    }
    let openssl = run(dir, "openssl", &["version"]).stdout;
    assert!(openssl.starts_with("OpenSSL 3"), "the document's procedure needs OpenSSL 3, found {openssl:?}");
}

fn write_json(dir: &Path, name: &str, value: &Value) {
    std::fs::write(dir.join(name), serde_json::to_vec_pretty(value).unwrap()).unwrap();
}

/// `bytes` (base64) with one byte flipped, base64 again.
fn flip(b64: &str, at: usize) -> String {
    let mut bytes = B64.decode(b64).unwrap();
    bytes[at] ^= 0x01;
    B64.encode(bytes)
}

#[tokio::test]
async fn a_person_checks_their_accesses_with_python_and_openssl_alone() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    require_tools(dir);
    std::fs::write(dir.join("verify_proofs.py"), code_block("python verify_proofs.py")).unwrap();
    std::fs::write(dir.join("verify_checkpoint.sh"), code_block("bash verify_checkpoint.sh")).unwrap();

    let app = TestApp::start().await;
    let record = app.seed("u-1001", json!({"name": "Aoife"})).await;
    assert_eq!(app.get_record(DUBLIN, &record).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let response = app
        .client(UNKNOWN)
        .get(app.url("/v1/me/accesses"))
        .bearer_auth(app.subject_token("u-1001"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    std::fs::write(dir.join("accesses.json"), &text).unwrap();
    let answer: Value = serde_json::from_str(&text).unwrap();
    let vkey = app.boundary.log_vkey().to_string();
    assert_eq!(answer["log_vkey"], vkey);
    let size = answer["tree_size"].as_u64().unwrap();
    let entries = answer["entries"].as_array().unwrap();

    // Every proof checks out: one line per entry, the proven ones "included".
    let ran = run(dir, "python3", &["verify_proofs.py", "accesses.json"]);
    assert!(ran.ok, "verify_proofs.py refused a genuine answer:\n{}{}", ran.stdout, ran.stderr);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), entries.len(), "one line per entry:\n{}", ran.stdout);
    for entry in entries {
        let index = entry["index"].as_u64().unwrap();
        let expected = if entry["proof"].is_null() {
            format!("entry {index}: newer than the checkpoint, no proof yet")
        } else {
            format!("entry {index}: included in tree of {size} entries")
        };
        assert!(lines.contains(&expected.as_str()), "no line {expected:?} in:\n{}", ran.stdout);
    }
    let included = lines.iter().filter(|l| l.contains(": included in tree of ")).count();
    assert!(included >= 3, "the read and the writes are proven:\n{}", ran.stdout);

    // One entry: the read of the record.
    let read = entries.iter().find(|e| e["action"] == "read").expect("the read of the record");
    let index = read["index"].as_u64().unwrap();
    assert!(index < size && !read["proof"].as_array().unwrap().is_empty(), "the read has a proof: {read}");
    let ran = run(dir, "python3", &["verify_proofs.py", "accesses.json", &index.to_string()]);
    assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);
    assert_eq!(ran.stdout, format!("entry {index}: included in tree of {size} entries\n"));

    // The checkpoint is signed by the log's key, as OpenSSL sees it.
    let ran = run(dir, "bash", &["verify_checkpoint.sh", "accesses.json", &vkey]);
    assert!(ran.ok, "verify_checkpoint.sh refused a genuine checkpoint:\n{}{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("Signature Verified Successfully"), "{}", ran.stdout);
    assert!(ran.stdout.contains(&format!("\n{size}\n")), "the checkpoint's body is shown: {}", ran.stdout);

    // The key that counts is the one given, not the answer's own.
    let mut other_key = answer.clone();
    let stranger = VerifierKey { public_key: [7; 32], ..app.boundary.log_vkey().clone() };
    other_key["log_vkey"] = json!(stranger.to_string());
    write_json(dir, "other-key.json", &other_key);
    let ran = run(dir, "bash", &["verify_checkpoint.sh", "other-key.json", &vkey]);
    assert!(ran.ok && ran.stdout.contains("Signature Verified Successfully"), "{}{}", ran.stdout, ran.stderr);

    // An entry changed, with a leaf hash to match: its proof no longer leads to the root.
    let mut tampered = answer.clone();
    let at = entries.iter().position(|e| e["index"] == index).unwrap();
    let changed = flip(read["entry"].as_str().unwrap(), 10);
    tampered["entries"][at]["leaf_hash"] = json!(leaf_hash(&B64.decode(&changed).unwrap()).to_base64());
    tampered["entries"][at]["entry"] = json!(changed);
    write_json(dir, "tampered-entry.json", &tampered);
    let ran = run(dir, "python3", &["verify_proofs.py", "tampered-entry.json"]);
    assert!(!ran.ok, "a changed entry passed:\n{}", ran.stdout);
    assert!(ran.stdout.contains(&format!("entry {index}: NOT VERIFIED")), "{}", ran.stdout);
    assert!(ran.stdout.contains(": included in tree of "), "the other entries still check out: {}", ran.stdout);
    // The same entry changed alone: its leaf hash gives it away.
    let mut tampered = answer.clone();
    tampered["entries"][at]["entry"] = json!(flip(read["entry"].as_str().unwrap(), 10));
    write_json(dir, "tampered-bytes.json", &tampered);
    let ran = run(dir, "python3", &["verify_proofs.py", "tampered-bytes.json"]);
    assert!(!ran.ok && ran.stdout.contains(&format!("entry {index}: NOT VERIFIED")), "{}", ran.stdout);

    // A proof hash changed.
    let mut tampered = answer.clone();
    tampered["entries"][at]["proof"][0] = json!(flip(read["proof"][0].as_str().unwrap(), 0));
    write_json(dir, "tampered-proof.json", &tampered);
    let ran = run(dir, "python3", &["verify_proofs.py", "tampered-proof.json", &index.to_string()]);
    assert!(!ran.ok && ran.stdout.contains(&format!("entry {index}: NOT VERIFIED")), "{}", ran.stdout);

    // No proof: fine for an entry newer than the checkpoint, not for one it covers.
    let last = entries.len() - 1;
    let mut newer = answer.clone();
    newer["entries"][last]["index"] = json!(size);
    newer["entries"][last]["proof"] = Value::Null;
    write_json(dir, "newer.json", &newer);
    let ran = run(dir, "python3", &["verify_proofs.py", "newer.json", &size.to_string()]);
    assert!(ran.ok, "{}{}", ran.stdout, ran.stderr);
    assert_eq!(ran.stdout, format!("entry {size}: newer than the checkpoint, no proof yet\n"));
    let mut missing = answer.clone();
    missing["entries"][at]["proof"] = Value::Null;
    write_json(dir, "missing.json", &missing);
    let ran = run(dir, "python3", &["verify_proofs.py", "missing.json"]);
    assert!(!ran.ok && ran.stdout.contains(&format!("entry {index}: NOT VERIFIED")), "{}", ran.stdout);

    // The checkpoint's root changed: no proof leads to it, and the log's signature fails.
    let checkpoint = answer["checkpoint"].as_str().unwrap();
    let root = checkpoint.lines().nth(2).unwrap();
    let mut tampered = answer.clone();
    tampered["checkpoint"] = json!(checkpoint.replacen(root, &flip(root, 31), 1));
    write_json(dir, "tampered-root.json", &tampered);
    let ran = run(dir, "python3", &["verify_proofs.py", "tampered-root.json"]);
    assert!(!ran.ok && !ran.stdout.contains(": included in tree of "), "{}", ran.stdout);
    let ran = run(dir, "bash", &["verify_checkpoint.sh", "tampered-root.json", &vkey]);
    assert!(!ran.ok, "a changed checkpoint passed:\n{}{}", ran.stdout, ran.stderr);
    assert!(!ran.stdout.contains("Signature Verified Successfully"), "{}", ran.stdout);
    assert!(ran.stdout.contains("Signature Verification Failure"), "OpenSSL refuses it: {}{}", ran.stdout, ran.stderr);

    // Another key: the genuine checkpoint does not verify with it, whether the vkey's id is
    // computed for the new key (no signature by it) or kept from the log's (not its key's id).
    let ran = run(dir, "bash", &["verify_checkpoint.sh", "accesses.json", &stranger.to_string()]);
    assert!(!ran.ok && !ran.stdout.contains("Verified Successfully"), "{}{}", ran.stdout, ran.stderr);
    assert!(ran.stderr.contains("no signature by"), "{}", ran.stderr);
    let [name, id, key] = vkey.splitn(3, '+').collect::<Vec<_>>()[..] else { panic!("a vkey: {vkey}") };
    let forged = format!("{name}+{id}+{}", flip(key, 32));
    let ran = run(dir, "bash", &["verify_checkpoint.sh", "accesses.json", &forged]);
    assert!(!ran.ok && !ran.stdout.contains("Verified Successfully"), "{}{}", ran.stdout, ran.stderr);
    // The vkey of another boundary altogether.
    let other = TestApp::start().await;
    let ran = run(dir, "bash", &["verify_checkpoint.sh", "accesses.json", &other.boundary.log_vkey().to_string()]);
    assert!(!ran.ok && !ran.stdout.contains("Verified Successfully"), "{}{}", ran.stdout, ran.stderr);
}
