//! A boundary whose keys are in an HSM (a SoftHSM2 token made by the test), as real processes:
//! the KEK and the checkpoint key are generated in the token; reads and writes work; the log's
//! checkpoints verify with the HSM key's vkey; `clover keys rotate` re-wraps and retires.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_clover");
const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PATIENCE: Duration = Duration::from_secs(30);

struct Hsm {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

/// A SoftHSM2 configuration in a temporary directory, with one token labelled `clover-eu`.
fn hsm() -> Hsm {
    assert!(Path::new(MODULE).exists(), "SoftHSM2 is not installed ({MODULE}): apt-get install softhsm2");
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(&conf, format!("directories.tokendir = {}\nobjectstore.backend = file\n", tokens.display()))
        .unwrap();
    let made = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "clover-eu", "--pin", "1234", "--so-pin", "5678"])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util: apt-get install softhsm2");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    Hsm { dir, conf }
}

impl Hsm {
    fn clover(&self) -> Command {
        let mut command = Command::new(BIN);
        command
            .current_dir(self.dir.path())
            .env("CLOVER_PASSPHRASE", "hsm-test")
            .env("CLOVER_HSM_PIN", "1234")
            .env("SOFTHSM2_CONF", &self.conf)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        command
    }

    fn config(&self, backend: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{backend}.toml"));
        let keys = match backend {
            "pkcs11" => format!("backend = \"pkcs11\"\nmodule = \"{MODULE}\"\ntoken_label = \"clover-eu\"\n"),
            _ => "backend = \"keyring\"\n".to_owned(),
        };
        std::fs::write(&path, format!("data_dir = \"data\"\n\n[keys]\n{keys}")).unwrap();
        path
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut command = self.clover();
        command.args(args);
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap()
    }

    fn stdout(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(hsm: &Hsm, config: &Path) -> Server {
    let mut command = hsm.clover();
    command.args(["serve", "--listen", "127.0.0.1:0", "--config", config.to_str().unwrap()]);
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split(" on ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
    });
    let url = rx.recv_timeout(PATIENCE).expect("the server did not start");
    Server { child, url }
}

fn token(hsm: &Hsm, config: &Path, roles: &str) -> String {
    hsm.stdout(&[
        "token",
        "--config",
        config.to_str().unwrap(),
        "--principal",
        "ana",
        "--kind",
        "employee",
        "--region",
        "eu",
        "--site",
        "dublin-1",
        "--roles",
        roles,
    ])
}

#[tokio::test]
async fn a_boundary_on_an_hsm_signs_wraps_and_rotates_in_the_token() {
    let hsm = hsm();
    let config = hsm.config("pkcs11");
    let config_arg = config.to_str().unwrap();
    assert!(hsm.run(&["init", "--config", config_arg]).status.success());
    let server = serve(&hsm, &config);

    // The checkpoint key is the HSM's, not the keyring's.
    let vkey = hsm.stdout(&["log", "vkey", "--config", config_arg]);
    let keyring_vkey = hsm.stdout(&["log", "vkey", "--config", hsm.config("keyring").to_str().unwrap()]);
    assert_ne!(vkey, keyring_vkey);

    let agent = token(&hsm, &config, "agent");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut records = Vec::new();
    for i in 0..5 {
        let subject = format!("{}/v1/subjects/u-{i}", server.url);
        let put =
            client.put(&subject).bearer_auth(&agent).json(&json!({"home_region": "eu", "birth_date": "1990-01-01"}));
        assert!(put.send().await.unwrap().status().is_success());
        let post = client
            .post(format!("{subject}/records"))
            .bearer_auth(&agent)
            .json(&json!({"category": "profile", "fields": {"n": i}}));
        let body: Value = post.send().await.unwrap().json().await.unwrap();
        records.push(body["record_id"].as_str().unwrap().to_owned());
    }

    // An auditor verifies the log with the HSM key's vkey.
    let verified = hsm.run(&["audit", "verify", "--url", &server.url, "--vkey", &vkey]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
    let forged = hsm.run(&["audit", "verify", "--url", &server.url, "--vkey", &keyring_vkey]);
    assert!(!forged.status.success());

    // Rotation in the token, by a key custodian, with the CLI.
    let refused = hsm.run(&["keys", "rotate", "--url", &server.url, "--token", &agent]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403"), "{}", String::from_utf8_lossy(&refused.stderr));
    let custodian = token(&hsm, &config, "key-custodian");
    let rotated = hsm.stdout(&["keys", "rotate", "--url", &server.url, "--token", &custodian]);
    assert!(rotated.contains("kek v1 retired"), "{rotated}");
    assert!(rotated.contains("kek v2 (current): 6 data keys"), "{rotated}");
    let status = hsm.stdout(&["keys", "status", "--url", &server.url, "--token", &agent]);
    assert!(status.starts_with("backend: pkcs11 token \"clover-eu\""), "{status}");

    for (i, record) in records.iter().enumerate() {
        let read = client
            .get(format!("{}/v1/records/{record}", server.url))
            .bearer_auth(&agent)
            .header("X-Clover-Purpose", "support")
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200);
        assert_eq!(read.json::<Value>().await.unwrap()["fields"]["n"], i);
    }
    drop(server);

    // A restart finds the same keys in the token.
    let server = serve(&hsm, &config);
    let read = client
        .get(format!("{}/v1/records/{}", server.url, records[0]))
        .bearer_auth(&agent)
        .header("X-Clover-Purpose", "support")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let verified = hsm.run(&["audit", "verify", "--url", &server.url, "--vkey", &vkey]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
}
