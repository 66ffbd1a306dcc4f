//! `clover custodian serve` as its own process, and a boundary whose keys it holds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_clover");
const PATIENCE: Duration = Duration::from_secs(30);

fn clover(dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    command.current_dir(dir).env("CLOVER_PASSPHRASE", "custodian-test").env("NO_COLOR", "1").stdin(Stdio::null());
    command
}

fn stdout(mut command: Command) -> String {
    let out = command.stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Process {
    child: Child,
    url: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` and waits for the stderr line with its URL.
fn start(mut command: Command) -> Process {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split(" on http://").nth(1) {
                let _ = tx.send(format!("http://{}", rest.split_whitespace().next().unwrap_or("")));
            }
        }
    });
    let url = rx.recv_timeout(PATIENCE).expect("the process did not start");
    Process { child, url }
}

#[tokio::test]
async fn a_boundary_gets_its_keys_from_a_custodian_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut init = clover(dir.path());
    init.args(["init", "--data-dir", "data"]);
    stdout(init);
    let mut vkey = clover(dir.path());
    vkey.args(["log", "vkey", "--data-dir", "data"]);
    let vkey = stdout(vkey);

    // The boundary's port, chosen first: the custodian checks receipts against its log.
    // The port stays held while the custodian starts, so that the custodian's own ephemeral
    // port cannot be this one; it is let go just before the boundary binds it.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = reserved.local_addr().unwrap().port();
    let boundary_url = format!("http://127.0.0.1:{port}");
    let mut custodian = clover(dir.path());
    custodian.args(["custodian", "serve", "--dir", "custodian", "--listen", "127.0.0.1:0"]);
    custodian.args(["--log-url", &boundary_url, "--log-vkey", &vkey]);
    let custodian = start(custodian);

    let config = dir.path().join("clover.toml");
    std::fs::write(&config, format!("data_dir = \"data\"\n\n[keys]\ncustodian = \"{}\"\n", custodian.url)).unwrap();
    let mut serve = clover(dir.path());
    serve.args(["serve", "--config", config.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")]);
    drop(reserved);
    let boundary = start(serve);
    assert_eq!(boundary.url, boundary_url);

    let mut token = clover(dir.path());
    token.args(["token", "--data-dir", "data", "--principal", "ana", "--kind", "employee", "--region", "eu"]);
    token.args(["--site", "dublin-1"]);
    let token = stdout(token);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
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
    assert!(stdout(status).contains("kek v1 (current): 2 data keys"));
    let mut rotate = clover(dir.path());
    rotate.args(["custodian", "rotate", "--url", &custodian.url, "--dir", "custodian"]);
    let rotated = stdout(rotate);
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
