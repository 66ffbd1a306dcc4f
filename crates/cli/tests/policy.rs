//! `clover policy check` and `clover policy explain`, run as a user would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_clover");

fn clover(args: &[&str]) -> Output {
    Command::new(BIN).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_accepts_the_shipped_pack_and_names_what_is_wrong_with_a_bad_one() {
    let pack = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let ok = clover(&["policy", "check", pack.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout(&ok).contains("valid, 12 policies"), "{}", stdout(&ok));

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(pack.join("clover.cedarschema"), dir.path().join("clover.cedarschema")).unwrap();
    std::fs::write(
        dir.path().join("typo.cedar"),
        "@id(\"typo\")\npermit (principal, action, resource) when { resource.catgory == \"profile\" };\n",
    )
    .unwrap();
    let bad = clover(&["policy", "check", dir.path().to_str().unwrap()]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("typo") && stderr.contains("catgory"), "{stderr}");
}

#[test]
fn explain_prints_the_outcome_and_the_deciding_policies() {
    let cases: [(&[&str], &str, &str); 4] = [
        (&["--region", "eu", "--site", "dublin-1", "--from", "127.0.0.1"], "allow, full view", "in-region-access"),
        (&["--region", "eu", "--site", "dublin-1", "--from", "127.0.2.1"], "deny", "no-full-view-from-outside"),
        (
            &[
                "--kind",
                "service",
                "--region",
                "us",
                "--site",
                "virginia-1",
                "--from",
                "127.0.1.9",
                "--purpose",
                "analytics",
            ],
            "allow, pseudonymised view",
            "pseudonymised-from-outside",
        ),
        (
            &["--region", "eu", "--site", "dublin-1", "--from", "127.0.0.1", "--subjects-touched", "51"],
            "approval required",
            "bulk-access-needs-approval",
        ),
    ];
    for (args, outcome, policy) in cases {
        let mut all = vec!["policy", "explain", "--category", "profile"];
        if !args.contains(&"--purpose") {
            all.extend(["--purpose", "support"]);
        }
        all.extend_from_slice(args);
        let out = clover(&all);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = stdout(&out);
        assert!(text.contains(&format!("outcome:  {outcome}\n")), "{args:?}: {text}");
        assert!(text.contains(&format!("policies: {policy}")), "{args:?}: {text}");
    }
}

#[test]
fn sighup_reloads_the_policies() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let tmp = tempfile::tempdir().unwrap();
    let pack = tmp.path().join("policies");
    std::fs::create_dir(&pack).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    for file in ["clover.cedarschema", "default.cedar"] {
        std::fs::copy(shipped.join(file), pack.join(file)).unwrap();
    }
    // Watching is off, so that only the signal can reload.
    std::fs::write(
        tmp.path().join("clover.toml"),
        format!("[policy]\ndir = {:?}\nwatch = false\n", pack.to_str().unwrap()),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", "clover.toml", "--data-dir", "data", "--listen", "127.0.0.1:0"])
        .current_dir(tmp.path())
        .env("CLOVER_PASSPHRASE", "sighup-test")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let mut child = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let url = loop {
        let line = rx.recv_timeout(deadline - std::time::Instant::now()).expect("serve did not start");
        if let Some(rest) = line.split(" on ").nth(1).filter(|_| line.starts_with("clover: serving")) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let token = token(tmp.path());
    // A probe decided by the pack: registering a subject (a write).
    let decide = || -> bool {
        runtime.block_on(async {
            let response = client
                .put(format!("{url}/v1/subjects/probe"))
                .bearer_auth(&token)
                .json(&serde_json::json!({"home_region": "eu"}))
                .send()
                .await
                .unwrap();
            response.status().is_success()
        })
    };
    assert!(decide(), "writes are allowed by the shipped pack");
    std::fs::write(pack.join("lockdown.cedar"), "@id(\"lockdown\") forbid (principal, action, resource);\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(decide(), "with watching off, a change alone reloads nothing");
    Command::new("kill").args(["-HUP", &child.0.id().to_string()]).status().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while decide() {
        assert!(std::time::Instant::now() < deadline, "SIGHUP did not reload the policies");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = &mut child;
}

fn token(dir: &Path) -> String {
    let out = Command::new(BIN)
        .args(["token", "--principal", "ana", "--kind", "employee", "--region", "eu", "--site", "dublin-1"])
        .args(["--data-dir", "data"])
        .current_dir(dir)
        .env("CLOVER_PASSPHRASE", "sighup-test")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
