//! A boundary whose keys are in an HSM (a SoftHSM2 token made by the test), as real processes:
//! the KEK and the checkpoint key are generated in the token; reads and writes work; the log's
//! checkpoints verify with the HSM key's vkey; `clover keys rotate` re-wraps and retires.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{DUBLIN, Finished, Process, client, clover_with_passphrase, mint_token, run, stdout_of};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

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
        let mut command = clover_with_passphrase(self.dir.path(), "hsm-test");
        command.env("CLOVER_HSM_PIN", "1234").env("SOFTHSM2_CONF", &self.conf);
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

    fn run(&self, args: &[&str]) -> Finished {
        let mut command = self.clover();
        command.args(args);
        run(command)
    }

    fn stdout(&self, args: &[&str]) -> String {
        let mut command = self.clover();
        command.args(args);
        stdout_of(command)
    }
}

fn serve(hsm: &Hsm, config: &Path) -> Process {
    Process::serve(hsm.clover(), &["--config", config.to_str().unwrap()])
}

fn token(hsm: &Hsm, config: &Path, roles: &str) -> String {
    mint_token(hsm.clover(), &["--config", config.to_str().unwrap()], roles)
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

    let agent = token(&hsm, &config, "support");
    let client = client(DUBLIN);
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
    assert!(verified.status.success(), "{}", verified.stderr);
    let forged = hsm.run(&["audit", "verify", "--url", &server.url, "--vkey", &keyring_vkey]);
    assert!(!forged.status.success());

    // Rotation in the token, by a key custodian, with the CLI.
    let refused = hsm.run(&["keys", "rotate", "--url", &server.url, "--token", &agent]);
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("403"), "{}", refused.stderr);
    let custodian = token(&hsm, &config, "key-custodian");
    let rotated = hsm.stdout(&["keys", "rotate", "--url", &server.url, "--token", &custodian]);
    assert!(rotated.contains("kek v1 retired"), "{rotated}");
    assert!(rotated.contains("kek v2 (current): 6 data keys"), "{rotated}");
    let status = hsm.stdout(&["keys", "status", "--url", &server.url, "--token", &custodian]);
    assert!(status.starts_with("backend: pkcs11 token \"clover-eu\""), "{status}");
    // Key status is a key custodian's too.
    let refused = hsm.run(&["keys", "status", "--url", &server.url, "--token", &agent]);
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("403"), "{}", refused.stderr);

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
    assert!(verified.status.success(), "{}", verified.stderr);
}
