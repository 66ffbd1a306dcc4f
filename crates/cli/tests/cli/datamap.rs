//! `clover datamap`: the record of processing from the configuration and the pack, and
//! `--check` refusing a configuration that declares what the pack never allows or leaves
//! something undeclared.

use std::path::Path;

use crate::support::{clover, run};

fn datamap(dir: &Path, args: &[&str]) -> crate::support::Finished {
    let mut command = clover(dir);
    command.arg("datamap").args(args);
    run(command)
}

#[test]
fn the_example_configuration_declares_nothing_the_pack_never_allows() {
    let tmp = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/clover.toml");
    let checked = datamap(tmp.path(), &["--check", "--config", example.to_str().unwrap()]);
    assert!(checked.status.success(), "{}", checked.stderr);
    let text = &checked.stdout;
    assert!(text.starts_with("# Record of processing activities: region eu"), "{text}");
    assert!(text.contains("| us-partners | us | scc | safety, analytics | 5 | analytics: 2 |"), "{text}");
    assert!(text.contains("| sg-analytics | sg | none | analytics | 5 | - | nothing (closed) |"), "{text}");
    assert!(text.contains("- us-partners / profile: birth_date: age-band,"), "{text}");
    let json = datamap(tmp.path(), &["--json", "--config", example.to_str().unwrap()]);
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(json["findings"], serde_json::json!([]));
    assert_eq!(json["purposes"].as_array().unwrap().len(), 6);
}

#[test]
fn check_names_what_the_pack_never_allows_and_what_is_undeclared() {
    let tmp = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/clover.toml");
    let mut text = std::fs::read_to_string(example).unwrap();
    text.push_str(
        r#"
[[categories]]
name = "diaries"
sensitivity = "normal"

# Support staff see profile and contact records only (support-sees-profile-and-contact):
# a purpose that gives them content is one the pack never allows.
[[purposes]]
name = "support-content"
categories = ["content"]
roles = ["support"]

[[transfer_rules]]
category = "messages"
fields = { body = "token" }

[[transfer_rules]]
category = "profile"
destinations = ["us-partners"]
fields = { shoe_size = "keep" }
"#,
    );
    let config = tmp.path().join("clover.toml");
    std::fs::write(&config, text).unwrap();
    let checked = datamap(tmp.path(), &["--check", "--config", config.to_str().unwrap()]);
    assert!(!checked.status.success());
    let err = &checked.stderr;
    for finding in [
        "purpose \"support-content\" is declared, but the pack allows no read for it",
        "category \"diaries\" is read for no purpose",
        "a transfer rule covers category \"messages\", which is sensitive",
        "a transfer rule of category \"profile\" names field \"shoe_size\", which the category does not declare",
        "4 findings",
    ] {
        assert!(err.contains(finding), "{finding:?} not in: {err}");
    }
    // Without --check the map is printed, findings and all, and the command succeeds.
    let printed = datamap(tmp.path(), &["--config", config.to_str().unwrap()]);
    assert!(printed.status.success(), "{}", printed.stderr);
    assert!(printed.stdout.contains("## Findings"), "{}", printed.stdout);
}
