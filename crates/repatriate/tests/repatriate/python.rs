//! The Python script of docs/repatriation.md, run as written, recomputes the root Clover
//! computes: on the page's worked example and on rows chosen to catch the encoding's corners
//! (key order, escapes, numbers, duplicates, bad lines).

use std::path::Path;
use std::process::Command;

use clover_repatriate::OpenOptions;
use serde_json::json;

use crate::support::{file, people, people_jsonl, plan_of};

/// The code block that follows `<!-- example: NAME -->` in docs/repatriation.md.
pub fn doc_block(name: &str) -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/repatriation.md")).unwrap();
    let marker = format!("<!-- example: {name} -->");
    let after = &doc[doc.find(&marker).unwrap_or_else(|| panic!("no {marker}")) + marker.len()..];
    let start = after.find("```").unwrap();
    let body = &after[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("\n```").unwrap() + 1].to_owned()
}

/// Runs the script on a mapping and rows; (root, records).
fn python(dir: &Path, mapping: &Path, rows: &Path, region: &str) -> (String, u64) {
    let script = dir.join("root.py");
    std::fs::write(&script, doc_block("python")).unwrap();
    let out = Command::new("python3").arg(&script).arg(mapping).arg(rows).arg(region).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (root, count) = text.trim().split_once(' ').unwrap();
    (root.to_owned(), count.parse().unwrap())
}

#[tokio::test]
async fn the_script_recomputes_the_worked_example() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("mapping.toml");
    std::fs::write(&mapping, doc_block("mapping")).unwrap();
    let spec = file(dir.path(), "people.jsonl", doc_block("rows"));
    let plan = plan_of(&spec, &doc_block("mapping"), OpenOptions::default()).await;
    let printed = doc_block("output");
    assert!(printed.contains(&format!("root: {} (3 records of region eu)", plan.root)), "{printed}");
    let (root, records) = python(dir.path(), &mapping, &dir.path().join("people.jsonl"), "eu");
    assert_eq!((root, records), (plan.root.to_hex(), 3));
}

#[tokio::test]
async fn the_script_and_clover_agree_on_every_corner_of_the_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = people_jsonl(&people()).into_bytes();
    let more = [
        json!({"id": "k-keys", "user_id": "u-k", "country": "IE", "kind": "profile",
               "data": {"z": 1, "Z": 2, "é": 3, "ä": 4, "\u{ffff}": 5, "😀": 6, "": 7, "a\u{0}": 8, "a": 9}}),
        json!({"id": "k-escapes", "user_id": "u-e", "country": "IE", "kind": "profile",
               "data": {"s": "\u{0}\u{1}\u{8}\t\n\u{b}\u{c}\r\u{1f}\"\\/\u{7f}\u{2028}é😀"}}),
        json!({"id": 1.5, "user_id": "u-n", "country": "NO", "kind": "contact",
               "data": {"n": [0, -1, 18446744073709551615u64, -9223372036854775808i64, 1.0, -0.0, 0.1, 1e-7, 1.5e-7, 0.000001,
                              123e18, 1e21, 5e-324, 1.7976931348623157e308, 0.30000000000000004, -12.75, 2.5e-7]}}),
        json!({"id": 2.0, "user_id": "u-dup", "country": "IE", "kind": "profile", "data": {}}),
        json!({"id": true, "user_id": "u-bool", "country": "ie ", "kind": "profile", "data": "{\"from\": \"a string\"}"}),
        json!({"id": "k-sg", "user_id": "u-s", "country": "SG", "kind": "profile", "data": {"x": 1}}),
        json!({"id": "k-born", "user_id": "u-b", "country": "IE", "born": "0000-01-01", "kind": "profile", "data": {}}),
        json!({"id": "k-dots", "user_id": "...", "country": "IE", "kind": "profile", "data": {}}),
    ];
    for row in more {
        rows.extend_from_slice(format!("{row}\n").as_bytes());
    }
    // Lines serde_json and Python must both refuse, a blank one, and numbers written in ways
    // that read as the same double or integer.
    rows.extend_from_slice(b"\n   \n");
    rows.extend_from_slice(b"{\"id\": \"k-nan\", \"user_id\": \"u\", \"country\": \"IE\", \"kind\": \"profile\", \"data\": {\"x\": NaN}}\n");
    rows.extend_from_slice(b"{\"id\": \"k-big\", \"user_id\": \"u\", \"country\": \"IE\", \"kind\": \"profile\", \"data\": {\"x\": 1e400}}\n");
    rows.extend_from_slice(b"{\"id\": \"k-sur\", \"user_id\": \"u\", \"country\": \"IE\", \"kind\": \"profile\", \"data\": {\"x\": \"\\ud800\"}}\n");
    rows.extend_from_slice(b"{\"id\": \"k-utf8\", \"user_id\": \"u\", \"country\": \"IE\", \"kind\": \"profile\", \"data\": {\"x\": \"\xff\"}}\n");
    rows.extend_from_slice(
        b"{\"id\": \"k-forms\", \"user_id\": \"u\", \"country\": \"IE\", \"kind\": \"profile\", \"data\": {\"a\": 1E2, \"b\": 0.1000000000000000055511151231257827, \"c\": 100000000000000000000000, \"d\": \"\\ud83d\\ude00\", \"e\": -0, \"f\": 1.0e+0}}\n",
    );
    rows.extend_from_slice(
        b"{\"id\": \"k-last\", \"user_id\": \"u\", \"country\": \"US\", \"kind\": \"profile\", \"data\": {}}",
    );
    let rows_path = dir.path().join("corners.jsonl");
    std::fs::write(&rows_path, &rows).unwrap();

    let field_columns = r#"
        [countries]
        IE = "eu"
        NO = "eu"
        SG = "sg"
        US = "us"

        [file]
        source_key = "id"
        subject = "user_id"
        country = "country"
        category = "profile"
        field_columns = ["data", "born", "missing"]
    "#;
    let spec = clover_repatriate::SourceSpec::file(&rows_path).unwrap();
    for mapping_text in [crate::support::MAPPING, field_columns] {
        let mapping = dir.path().join("mapping.toml");
        std::fs::write(&mapping, mapping_text).unwrap();
        for region in ["eu", "sg"] {
            let plan = plan_in(&spec, mapping_text, region).await;
            assert!(plan.records >= 1, "{region}: {:#?}", plan.unclassifiable);
            let (root, records) = python(dir.path(), &mapping, &rows_path, region);
            assert_eq!(
                (root, records),
                (plan.root.to_hex(), plan.records),
                "{region} {mapping_text}\n{:#?}",
                plan.unclassifiable
            );
        }
    }
}

async fn plan_in(spec: &clover_repatriate::SourceSpec, mapping: &str, region: &str) -> clover_repatriate::Plan {
    let mapping = clover_repatriate::Mapping::parse(mapping).unwrap();
    let mut source =
        clover_repatriate::Source::open(spec, mapping, clover_model::Region::new(region).unwrap()).await.unwrap();
    clover_repatriate::plan(&mut source, None, 100, |_| {}).await.unwrap()
}
