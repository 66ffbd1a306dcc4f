//! What the tests share: a data set with rows of every class, written as JSON Lines or inserted
//! into PostgreSQL, and a plan run to its end.

use std::path::Path;

use clover_model::Region;
use clover_repatriate::plan::Tally;
use clover_repatriate::{Mapping, OpenOptions, Plan, Source, SourceSpec};
use serde_json::json;

/// The mapping of the data set, for a table `people` and for files alike.
pub const MAPPING: &str = r#"
max_record_bytes = 1024

[countries]
IE = "eu"
NO = "eu"
SG = "sg"
US = "us"

[[tables]]
table = "people"
source_key = "id"
subject = "user_id"
country = "country"
birth_date = "born"
category_column = "kind"
fields = "data"

[file]
source_key = "id"
subject = "user_id"
country = "country"
birth_date = "born"
category_column = "kind"
fields = "data"
"#;

/// One row of the data set: id, user, country, born, kind, data (JSON as text).
pub struct Person {
    pub id: i64,
    pub user: &'static str,
    pub country: Option<&'static str>,
    pub born: Option<&'static str>,
    pub kind: &'static str,
    pub data: String,
}

fn person(
    id: i64,
    user: &'static str,
    country: Option<&'static str>,
    born: Option<&'static str>,
    kind: &'static str,
    data: &str,
) -> Person {
    Person { id, user, country, born, kind, data: data.to_owned() }
}

/// The data set, in source-key order: three of eu (one a minor, one of `messages` with
/// escapes, floats and nesting), one of sg, one of us, and nine unclassifiable rows.
pub fn people() -> Vec<Person> {
    vec![
        person(1, "u-1", Some("IE"), Some("1980-01-01"), "profile", r#"{"name": "Aoife", "city": "Cork"}"#),
        person(2, "u-2", Some("NO"), Some("2012-03-04"), "contact", r#"{"email": "ola@example.no", "n": 1.25}"#),
        // The same key again, the same row: whichever is first, the second is a duplicate.
        person(2, "u-2", Some("NO"), Some("2012-03-04"), "contact", r#"{"email": "ola@example.no", "n": 1.25}"#),
        person(3, "u-3", Some("SG"), Some("1990-01-01"), "profile", r#"{"name": "Wei"}"#),
        person(4, "u-4", Some("US"), None, "profile", r#"{"name": "Sam"}"#),
        person(5, "u-5", Some("IE"), None, "profile", r#"{"name": "bad json"#),
        person(6, "u-6", Some("FR"), None, "profile", r#"{"name": "Jean"}"#),
        person(7, "bad subject!", Some("IE"), None, "profile", r#"{"name": "x"}"#),
        person(8, "u-8", Some("IE"), Some("31/12/1990"), "profile", r#"{"name": "y"}"#),
        person(9, "u-9", None, None, "profile", r#"{"name": "z"}"#),
        person(10, "u-10", Some("IE"), None, "Bad Kind", r#"{"name": "k"}"#),
        person(11, "u-11", Some("IE"), None, "profile", "[1, 2]"),
        person(12, "u-12", Some("IE"), None, "profile", &json!({ "blob": "x".repeat(2000) }).to_string()),
        person(
            13,
            "u-13",
            Some("ie"),
            Some("2015-06-30"),
            "messages",
            r#"{"text": "héllo\n\"q\" \u0001", "nested": {"b": 2, "a": [1, 2.5e-7, 1e21, 18446744073709551616]}, "ok": true}"#,
        ),
    ]
}

/// The data set as JSON Lines, in the same order (ids as numbers, the data as a string).
pub fn people_jsonl(people: &[Person]) -> String {
    people
        .iter()
        .map(|p| {
            let row = json!({
                "id": p.id, "user_id": p.user, "country": p.country, "born": p.born, "kind": p.kind, "data": p.data,
            });
            format!("{row}\n")
        })
        .collect()
}

/// The counts the data set must give for eu, per category (region, elsewhere, unclassifiable
/// records).
pub fn expected_counts() -> Vec<(&'static str, [u64; 3])> {
    vec![("?", [0, 0, 1]), ("contact", [1, 0, 1]), ("messages", [1, 0, 0]), ("profile", [1, 2, 7])]
}

/// The records per class of each category of a plan.
pub fn counts(plan: &Plan) -> Vec<(String, [u64; 3])> {
    let c = |t: &Tally| [t.region.records, t.elsewhere.records, t.unclassifiable.records];
    plan.categories.iter().map(|(name, tally)| (name.clone(), c(tally))).collect()
}

/// Reads `spec` to its end for eu.
pub async fn plan_of(spec: &SourceSpec, mapping: &str, options: OpenOptions) -> Plan {
    let mut source =
        Source::open_with(spec, Mapping::parse(mapping).unwrap(), Region::new("eu").unwrap(), options).await.unwrap();
    clover_repatriate::plan(&mut source, None, 100, |_| {}).await.unwrap()
}

/// Writes `text` to `dir/name` and returns the file's source.
pub fn file(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> SourceSpec {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    SourceSpec::file(path).unwrap()
}
