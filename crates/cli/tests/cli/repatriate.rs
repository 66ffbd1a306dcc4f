//! `clover repatriate plan` and `clover repatriate digest`, run as a user would: on the worked
//! example of docs/repatriation.md (whose output must be what the page shows), with `--json`,
//! `--max-errors`, bad arguments, and a PostgreSQL source whose password is never printed.

use std::path::Path;

use serde_json::Value;
use sqlx::Connection;

use crate::support::{Finished, clover, run};

/// The code block that follows `<!-- example: NAME -->` in docs/repatriation.md.
fn doc_block(name: &str) -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/repatriation.md")).unwrap();
    let marker = format!("<!-- example: {name} -->");
    let after = &doc[doc.find(&marker).unwrap() + marker.len()..];
    let body = &after[after.find("```").unwrap()..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("\n```").unwrap() + 1].to_owned()
}

/// The worked example's files in a directory of their own.
fn example() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mapping.toml"), doc_block("mapping")).unwrap();
    std::fs::write(dir.path().join("people.jsonl"), doc_block("rows")).unwrap();
    dir
}

fn repatriate(dir: &Path, args: &[&str]) -> Finished {
    let mut command = clover(dir);
    command.arg("repatriate").args(args);
    run(command)
}

const EXAMPLE: &[&str] = &["--mapping", "mapping.toml", "--file", "people.jsonl", "--region", "eu"];

#[test]
fn digest_prints_the_worked_example_as_the_documentation_shows_it() {
    let dir = example();
    let out = repatriate(dir.path(), &[&["digest"], EXAMPLE].concat());
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, doc_block("output"));
    // Not a terminal: plain progress lines on stderr.
    assert!(out.stderr.contains("reading people.jsonl (JSON Lines)"), "{}", out.stderr);
    assert!(out.stderr.contains("done: 5 rows, 641 B in"), "{}", out.stderr);

    // plan prints the same counts without the root.
    let plan = repatriate(dir.path(), &[&["plan"], EXAMPLE].concat());
    assert!(plan.status.success(), "{}", plan.stderr);
    let digest_without_root = out.stdout.split("\nroot: ").next().unwrap();
    assert_eq!(plan.stdout, digest_without_root);
}

#[test]
fn json_output_carries_the_counts_the_root_and_the_problems() {
    let dir = example();
    let out = repatriate(dir.path(), &[&["digest", "--json"], EXAMPLE].concat());
    assert!(out.status.success(), "{}", out.stderr);
    let plan: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(plan["region"], "eu");
    assert_eq!(plan["records"], 3);
    assert_eq!(plan["total"]["region"]["records"], 3);
    assert_eq!(plan["total"]["elsewhere"]["records"], 1);
    assert_eq!(plan["total"]["unclassifiable"]["records"], 1);
    assert_eq!(plan["categories"]["contact"]["region"]["records"], 2);
    assert_eq!(plan["elsewhere"]["sg"], 1);
    assert_eq!(plan["unclassifiable"]["total"], 1);
    assert_eq!(plan["unclassifiable"]["shown"][0]["at"], "line 4");
    assert!(plan["unclassifiable"]["shown"][0]["reason"].as_str().unwrap().contains("unknown country \"FR\""));
    let root = plan["root"].as_str().unwrap();
    assert!(doc_block("output").contains(root));
    let plan_json = repatriate(dir.path(), &[&["plan", "--json"], EXAMPLE].concat());
    assert_eq!(serde_json::from_str::<Value>(&plan_json.stdout).unwrap(), plan);
}

#[test]
fn max_errors_stops_the_run_and_bad_arguments_are_named() {
    let dir = example();
    let stopped = repatriate(dir.path(), &[&["plan", "--max-errors", "1"], EXAMPLE].concat());
    assert_eq!(stopped.status.code(), Some(1));
    assert!(stopped.stdout.is_empty(), "{}", stopped.stdout);
    assert!(
        stopped.stderr.contains("error: stopped at 1 unclassifiable rows (--max-errors 1), after 4 rows; the last at line 4: unknown country \"FR\""),
        "{}",
        stopped.stderr
    );
    // Two errors allowed: the run ends normally.
    let enough = repatriate(dir.path(), &[&["plan", "--max-errors", "2"], EXAMPLE].concat());
    assert!(enough.status.success(), "{}", enough.stderr);

    let cases: [(&[&str], &str); 5] = [
        (&["plan", "--mapping", "missing.toml", "--file", "people.jsonl", "--region", "eu"], "cannot read the mapping"),
        (&["plan", "--mapping", "mapping.toml", "--file", "people.txt", "--region", "eu"], "unknown file format"),
        (&["plan", "--mapping", "mapping.toml", "--file", "people.jsonl", "--region", "EU"], "invalid region"),
        (
            &[
                "plan",
                "--mapping",
                "mapping.toml",
                "--file",
                "people.jsonl",
                "--source-url",
                "postgres://x/y",
                "--region",
                "eu",
            ],
            "cannot be used with",
        ),
        (
            &["plan", "--mapping", "mapping.toml", "--file", "people.jsonl", "--region", "eu", "--max-errors", "0"],
            "--max-errors",
        ),
    ];
    for (args, needle) in cases {
        let out = repatriate(dir.path(), args);
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
    std::fs::write(dir.path().join("typo.toml"), doc_block("mapping").replace("birth_date", "birthdate")).unwrap();
    let typo = repatriate(dir.path(), &["plan", "--mapping", "typo.toml", "--file", "people.jsonl", "--region", "eu"]);
    assert!(!typo.status.success());
    assert!(typo.stderr.contains("unknown field `birthdate`"), "{}", typo.stderr);
    // The mapping has no [[tables]] for a database.
    let no_tables = repatriate(
        dir.path(),
        &["plan", "--mapping", "mapping.toml", "--source-url", "postgres://127.0.0.1:1/x", "--region", "eu"],
    );
    assert!(no_tables.stderr.contains("no [[tables]] section"), "{}", no_tables.stderr);
}

#[tokio::test]
async fn a_postgres_source_is_counted_and_its_password_never_printed() {
    let db = clover_testkit::TestDatabase::create().await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE people (id text, user_id text, country text, born date, kind text, data jsonb); \
         INSERT INTO people VALUES \
           ('1', 'u-1001', 'IE', '1984-02-29', 'profile', '{\"name\": \"Aoife\", \"city\": \"Cork\"}'), \
           ('2', 'u-1002', 'SG', '1990-07-01', 'profile', '{\"name\": \"Wei\"}'), \
           ('3', 'u-1003', 'NO', '2011-05-17', 'contact', '{\"email\": \"ola@example.no\", \"score\": 1.5e-7, \"tags\": [\"a\", \"ø\"]}'), \
           ('4', 'u-1004', 'FR', NULL, 'profile', '{\"name\": \"Jean\"}'), \
           ('5', 'u-1001', 'IE', NULL, 'contact', '{\"phone\": \"+353 1 555 0100\", \"verified\": true, \"since\": 2019}')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let dir = example();
    let mapping = doc_block("mapping").replace("[file]", "[[tables]]\ntable = \"people\"");
    std::fs::write(dir.path().join("tables.toml"), mapping).unwrap();
    // The server trusts loopback: the password is not checked, but it must not be printed.
    let (_, rest) = db.url.split_once("://").unwrap();
    let (user, host_and_db) = rest.split_once('@').unwrap();
    let url = format!("postgres://{user}:hunter2-secret@{host_and_db}");
    let file_digest = repatriate(dir.path(), &[&["digest", "--json"], EXAMPLE].concat());
    let file_root = serde_json::from_str::<Value>(&file_digest.stdout).unwrap()["root"].clone();

    let by_flag =
        repatriate(dir.path(), &["digest", "--mapping", "tables.toml", "--source-url", &url, "--region", "eu"]);
    assert!(by_flag.status.success(), "{}", by_flag.stderr);
    assert!(by_flag.stdout.contains(&format!("source: postgres://{user}@{host_and_db}\n")), "{}", by_flag.stdout);
    // The same rows as the worked example (jsonb numbers kept as written): the same root.
    assert!(
        by_flag.stdout.contains(&format!("root: {} (3 records of region eu)", file_root.as_str().unwrap())),
        "{}",
        by_flag.stdout
    );
    assert!(by_flag.stdout.contains("table \"people\", key \"4\": unknown country \"FR\""), "{}", by_flag.stdout);

    let mut command = clover(dir.path());
    command
        .args(["repatriate", "plan", "--json", "--mapping", "tables.toml", "--region", "eu"])
        .env("CLOVER_REPATRIATE_SOURCE", &url);
    let by_env = run(command);
    assert!(by_env.status.success(), "{}", by_env.stderr);
    let plan: Value = serde_json::from_str(&by_env.stdout).unwrap();
    assert_eq!(plan["total"]["region"]["records"], 3);

    let missing = repatriate(
        dir.path(),
        &["plan", "--mapping", "tables.toml", "--source-url", &format!("{url}_missing"), "--region", "eu"],
    );
    assert!(!missing.status.success());
    assert!(missing.stderr.contains("cannot connect"), "{}", missing.stderr);
    for out in [&by_flag, &by_env, &missing] {
        assert!(!out.stdout.contains("hunter2") && !out.stderr.contains("hunter2"), "{}{}", out.stdout, out.stderr);
    }
    drop(db);
}
