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
    assert!(stdout(&ok).contains("valid, 11 policies"), "{}", stdout(&ok));

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
