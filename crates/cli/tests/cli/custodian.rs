//! `clover custodian serve` as its own process, and a boundary whose keys it holds.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{DUBLIN, Process, client, clover_with_passphrase, mint_token, run, stdout_of};

fn clover(dir: &Path) -> Command {
    clover_with_passphrase(dir, "custodian-test")
}

#[tokio::test]
async fn a_boundary_gets_its_keys_from_a_custodian_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut init = clover(dir.path());
    init.args(["init", "--data-dir", "data"]);
    stdout_of(init);
    let mut vkey = clover(dir.path());
    vkey.args(["log", "vkey", "--data-dir", "data"]);
    let vkey = stdout_of(vkey);

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
    let subject = format!("{boundary_url}/v1/subjects/u-1");
    let put = client.put(&subject).bearer_auth(&token).json(&json!({"home_region": "eu", "birth_date": "1990-01-01"}));
    assert_eq!(put.send().await.unwrap().status(), 201);
    let post = client
        .post(format!("{subject}/records"))
        .bearer_auth(&token)
        .json(&json!({"category": "profile", "fields": {"name": "Ana"}}));
    let record: Value = post.send().await.unwrap().json().await.unwrap();
    let read = client
        .get(format!("{boundary_url}/v1/records/{}", record["record_id"].as_str().unwrap()))
        .bearer_auth(&token)
        .header("X-Clover-Purpose", "support")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let read: Value = read.json().await.unwrap();
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
}

/// A custodian whose state file (the last checkpoint it verified) is damaged or unreadable does
/// not start: it says which file and what is wrong, and leaves the file as it was.
#[test]
fn a_custodian_with_a_damaged_or_unreadable_state_file_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut init = clover(dir.path());
    init.args(["init", "--data-dir", "data"]);
    stdout_of(init);
    let mut vkey = clover(dir.path());
    vkey.args(["log", "vkey", "--data-dir", "data"]);
    let vkey = stdout_of(vkey);
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
