//! `clover custodian serve` as its own process, and a boundary whose keys it holds.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{DUBLIN, Process, client, clover_with_passphrase, mint_token, run, stdout_of};

fn clover(dir: &Path) -> Command {
    clover_with_passphrase(dir, "custodian-test")
}

/// Initialises the data directory `data` in `dir`; returns the log's verifier key.
fn init(dir: &Path) -> String {
    let mut init = clover(dir);
    init.args(["init", "--data-dir", "data"]);
    stdout_of(init);
    let mut vkey = clover(dir);
    vkey.args(["log", "vkey", "--data-dir", "data"]);
    stdout_of(vkey)
}

/// Registers `u-1` at the boundary at `url`, writes a profile record for them and reads it back
/// (200); returns the written record's answer and the read's.
async fn register_write_and_read(client: &reqwest::Client, url: &str, token: &str) -> (Value, Value) {
    let subject = format!("{url}/v1/subjects/u-1");
    let put = client.put(&subject).bearer_auth(token).json(&json!({"home_region": "eu", "birth_date": "1990-01-01"}));
    assert_eq!(put.send().await.unwrap().status(), 201);
    let post = client
        .post(format!("{subject}/records"))
        .bearer_auth(token)
        .json(&json!({"category": "profile", "fields": {"name": "Ana"}}));
    let record: Value = post.send().await.unwrap().json().await.unwrap();
    let read = client
        .get(format!("{url}/v1/records/{}", record["record_id"].as_str().unwrap()))
        .bearer_auth(token)
        .header("X-Clover-Purpose", "support")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    (record, read.json().await.unwrap())
}

#[tokio::test]
async fn a_boundary_gets_its_keys_from_a_custodian_process() {
    let dir = tempfile::tempdir().unwrap();
    let vkey = init(dir.path());

    // The boundary's port, chosen first: the custodian checks receipts against its log.
    // The port stays held while the custodian starts, so that the custodian's own ephemeral
    // port cannot be this one; it is let go just before the boundary binds it.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap().port();
    let boundary_url = format!("http://127.0.0.1:{port}");
    let mut custodian = clover(dir.path());
    custodian.args(["custodian", "serve", "--dir", "custodian", "--listen", "127.0.0.1:0"]);
    custodian.args(["--log-url", &boundary_url, "--log-vkey", &vkey]);
    let custodian = Process::start(custodian);

    let config = dir.path().join("clover.toml");
    std::fs::write(&config, format!("data_dir = \"data\"\n\n[keys]\ncustodian = \"{}\"\n", custodian.url)).unwrap();
    let mut serve = clover(dir.path());
    serve.args(["serve", "--config", config.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")]);
    drop(reserved);
    let boundary = Process::start(serve);
    assert_eq!(boundary.url, boundary_url);

    let token = mint_token(clover(dir.path()), &["--data-dir", "data"], "support");
    let client = client(DUBLIN);
    let (record, read) = register_write_and_read(&client, &boundary_url, &token).await;
    assert_eq!(read["fields"]["name"], "Ana");

    // The custodian's own record, and its keys in its own directory, none in the boundary's.
    let journal: Vec<Value> =
        client.get(format!("{}/v1/journal", custodian.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(journal.len(), 3);
    assert_eq!(journal[2]["log_index"], read["log_index"]);
    assert!(dir.path().join("custodian").join("keys.db").exists());
    assert!(!dir.path().join("data").join("custody").exists());

    // The custodian's operator rotates its KEK while the boundary goes on reading.
    let mut status = clover(dir.path());
    status.args(["custodian", "status", "--url", &custodian.url, "--dir", "custodian"]);
    assert!(stdout_of(status).contains("kek v1 (current): 2 data keys"));
    let mut rotate = clover(dir.path());
    rotate.args(["custodian", "rotate", "--url", &custodian.url, "--dir", "custodian"]);
    let rotated = stdout_of(rotate);
    assert!(rotated.contains("kek v1 retired"), "{rotated}");
    assert!(rotated.contains("kek v2 (current): 2 data keys"), "{rotated}");
    let again = client
        .get(format!("{boundary_url}/v1/records/{}", record["record_id"].as_str().unwrap()))
        .bearer_auth(&token)
        .header("X-Clover-Purpose", "support")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    // Without the admin token, no administration.
    let refused = client.post(format!("{}/v1/admin/rotate", custodian.url)).send().await.unwrap();
    assert_eq!(refused.status(), 401);

    // The custodian dies: reads are answered 503 `unavailable` (a dependency, to try again),
    // not 500; once it is back on its address, reads go on without anyone touching the boundary.
    let (custodian_addr, mut custodian) = (custodian.addr, custodian);
    custodian.kill_hard().await;
    let read = || {
        client
            .get(format!("{boundary_url}/v1/records/{}", record["record_id"].as_str().unwrap()))
            .bearer_auth(&token)
            .header("X-Clover-Purpose", "support")
            .send()
    };
    let size = || async {
        let note = client.get(format!("{boundary_url}/log/checkpoint")).send().await.unwrap().text().await.unwrap();
        note.lines().nth(1).unwrap().parse::<u64>().unwrap()
    };
    let before = size().await;
    let down = read().await.unwrap();
    assert_eq!(down.status(), 503);
    // Nothing was logged as an allowed read whose receipt the custodian could never honour
    // (before, the entry got a random subject tag when the tag key could not be had).
    assert_eq!(size().await, before, "a read that could not have its subject's tag key was logged");
    assert_eq!(down.headers()["content-type"], "application/problem+json");
    assert_eq!(down.headers()["retry-after"], "1");
    let body: Value = down.json().await.unwrap();
    assert_eq!(body["type"], "urn:clover:problem:unavailable", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("custodian"), "{body}");
    assert!(!body.to_string().contains("127.0.0.1"), "the answer names no address: {body}");
    drop(custodian);
    let mut again = clover(dir.path());
    again.args(["custodian", "serve", "--dir", "custodian", "--listen", &custodian_addr.to_string()]);
    again.args(["--log-url", &boundary_url, "--log-vkey", &vkey]);
    let _custodian = Process::start(again);
    assert_eq!(read().await.unwrap().status(), 200);
}

/// A custodian whose state file (the last checkpoint it verified) is damaged or unreadable does
/// not start: it says which file and what is wrong, and leaves the file as it was.
#[test]
fn a_custodian_with_a_damaged_or_unreadable_state_file_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let vkey = init(dir.path());
    let serve = || {
        let mut custodian = clover(dir.path());
        custodian.args(["custodian", "serve", "--dir", "custodian", "--listen", "127.0.0.1:0"]);
        custodian.args(["--log-url", "http://127.0.0.1:9", "--log-vkey", &vkey]);
        custodian
    };
    let state = dir.path().join("custodian").join("log-state");
    std::fs::create_dir(dir.path().join("custodian")).unwrap();

    std::fs::write(&state, b"{\"logs\": {\"clover").unwrap();
    let refused = run(serve());
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("log-state") && refused.stderr.contains("is damaged"), "{refused:?}");
    assert_eq!(std::fs::read(&state).unwrap(), b"{\"logs\": {\"clover");

    // Something the custodian cannot read in its place: even root cannot read a directory.
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    let refused = run(serve());
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("log-state") && refused.stderr.contains("cannot read the state file"),
        "{refused:?}"
    );
    assert!(state.is_dir());
}

/// The README's set-up: a witness, a custodian that demands its cosignature and is a witness
/// itself, a boundary whose keys it holds and whose checkpoints both cosign; reads go through,
/// and an auditor demands both cosignatures. Then `clover keys reseal` runs to its end (nothing
/// to re-seal on a new boundary).
#[tokio::test]
async fn a_custodian_demanding_a_witness_quorum_serves_reads_and_is_a_witness_itself() {
    let dir = tempfile::tempdir().unwrap();
    let vkey = init(dir.path());
    let witness_args = ["audit", "witness", "--name", "witness.example", "--key", "w.key", "--state", "w.json"];
    let mut print = clover(dir.path());
    print.args(witness_args).args(["--log", &vkey, "--print-vkey"]);
    let witness_vkey = stdout_of(print);
    let mut witness = clover(dir.path());
    witness.args(witness_args).args(["--log", &vkey, "--listen", "127.0.0.1:0"]);
    let witness = Process::start(witness);

    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap().port();
    let boundary_url = format!("http://127.0.0.1:{port}");
    let mut custodian = clover(dir.path());
    custodian.args(["custodian", "serve", "--dir", "custodian", "--listen", "127.0.0.1:0"]);
    custodian.args(["--log-url", &boundary_url, "--log-vkey", &vkey]);
    custodian.args(["--witness", &witness_vkey, "--witness-quorum", "1", "--witness-name", "custodian.example"]);
    let custodian = Process::start(custodian);
    let custodian_vkey = std::fs::read_to_string(dir.path().join("custodian/witness.vkey")).unwrap().trim().to_owned();
    assert!(custodian_vkey.starts_with("custodian.example+"), "{custodian_vkey}");

    let config = dir.path().join("clover.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n\n[keys]\ncustodian = \"{c}\"\n\n[[log.witnesses]]\nurl = \"{w}\"\nvkey = \"{witness_vkey}\"\n\n\
             [[log.witnesses]]\nurl = \"{c}\"\nvkey = \"{custodian_vkey}\"\n",
            c = custodian.url,
            w = witness.url,
        ),
    )
    .unwrap();
    let mut serve = clover(dir.path());
    serve.args(["serve", "--config", config.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")]);
    drop(reserved);
    let boundary = Process::start(serve);

    let token = mint_token(clover(dir.path()), &["--data-dir", "data"], "support");
    let client = client(DUBLIN);
    register_write_and_read(&client, &boundary_url, &token).await;

    // What the custodian's checks rest on.
    let detail: Value =
        client.get(format!("{}/healthz?detail=true", custodian.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(detail["witnesses"], json!({"demanded": ["witness.example"], "quorum": 1}), "{detail}");
    assert_eq!(detail["warnings"], json!([]));

    // An auditor demands both cosignatures (the served checkpoint may lag the read a moment).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut verify = clover(dir.path());
        verify.args(["audit", "verify", "--url", &boundary_url, "--vkey", &vkey]);
        verify.args(["--witness", &witness_vkey, "--witness", &custodian_vkey]);
        let verified = run(verify);
        if verified.status.success() && verified.stdout.contains("cosigned by custodian.example") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not verified: {verified:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // A key custodian re-seals: nothing to do on a new boundary, and the command says so.
    let key_custodian = mint_token(clover(dir.path()), &["--data-dir", "data"], "key-custodian");
    let mut reseal = clover(dir.path());
    reseal.args(["keys", "reseal", "--url", &boundary_url, "--token", &key_custodian]);
    let resealed = stdout_of(reseal);
    assert!(resealed.contains("0 records re-sealed, 0 not"), "{resealed}");
    drop(boundary);
}
