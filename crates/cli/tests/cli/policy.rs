//! `clover policy check` and `clover policy explain`, run as a user would.

use std::path::Path;

use crate::support::{DUBLIN, Finished, Process, client, clover_with_passphrase, mint_token, run, signal};

/// Runs `clover ARGS` in the crate's directory.
fn clover(args: &[&str]) -> Finished {
    let mut command = crate::support::clover(Path::new(env!("CARGO_MANIFEST_DIR")));
    command.args(args);
    run(command)
}

#[test]
fn check_accepts_the_shipped_pack_and_names_what_is_wrong_with_a_bad_one() {
    let pack = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let ok = clover(&["policy", "check", pack.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", ok.stderr);
    assert!(ok.stdout.contains("valid, 36 policies"), "{}", ok.stdout);

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(pack.join("clover.cedarschema"), dir.path().join("clover.cedarschema")).unwrap();
    std::fs::write(
        dir.path().join("typo.cedar"),
        "@id(\"typo\")\npermit (principal, action, resource) when { resource.catgory == \"profile\" };\n",
    )
    .unwrap();
    let bad = clover(&["policy", "check", dir.path().to_str().unwrap()]);
    assert!(!bad.status.success());
    let stderr = &bad.stderr;
    assert!(stderr.contains("typo") && stderr.contains("catgory"), "{stderr}");
}

#[test]
fn explain_prints_the_outcome_and_the_deciding_policies() {
    let dublin: &[&str] = &["--region", "eu", "--site", "dublin-1", "--from", "127.0.0.1"];
    let cases: [(&[&str], &str, &str); 7] = [
        (&["--roles", "support"], "allow, full view", "in-region-read"),
        (
            &["--roles", "support", "--from", "127.0.2.1"],
            "deny",
            "no-full-view-from-outside, remote-access-is-a-transfer",
        ),
        (
            &[
                "--kind",
                "service",
                "--roles",
                "analytics",
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
        (&["--roles", "support", "--subjects-touched", "51"], "approval required", "bulk-access-needs-approval"),
        // Issue 15's attacker: an intern declaring safety for a minor's messages, with a ticket.
        (
            &["--roles", "intern", "--purpose", "safety", "--category", "messages", "--minor", "--ticket"],
            "deny",
            "minors-sensitive-data-needs-approval, purpose-needs-its-role, sensitive-needs-category-role",
        ),
        (&[], "deny", "purpose-needs-its-role"),
        (
            &["--roles", "safety", "--purpose", "safety", "--category", "messages", "--minor", "--ticket"],
            "approval required",
            "minors-sensitive-data-needs-approval",
        ),
    ];
    for (args, outcome, policy) in cases {
        let mut all = vec!["policy", "explain"];
        if !args.contains(&"--purpose") {
            all.extend(["--purpose", "support"]);
        }
        if !args.contains(&"--category") {
            all.extend(["--category", "profile"]);
        }
        for (flag, value) in dublin.chunks(2).map(|pair| (pair[0], pair[1])) {
            if !args.contains(&flag) {
                all.extend([flag, value]);
            }
        }
        all.extend_from_slice(args);
        let out = clover(&all);
        assert!(out.status.success(), "{}", out.stderr);
        let text = &out.stdout;
        assert!(text.contains(&format!("outcome:  {outcome}\n")), "{args:?}: {text}");
        assert!(text.contains(&format!("policies: {policy}\n")), "{args:?}: {text}");
    }
}

#[test]
fn sighup_reloads_the_policies() {
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
    let server = Process::serve(
        clover_with_passphrase(tmp.path(), "sighup-test"),
        &["--config", "clover.toml", "--data-dir", "data"],
    );
    let url = &server.url;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = client(DUBLIN);
    let token = mint_token(clover_with_passphrase(tmp.path(), "sighup-test"), &["--data-dir", "data"], "");
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
    signal("HUP", server.pid());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while decide() {
        assert!(std::time::Instant::now() < deadline, "SIGHUP did not reload the policies");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
