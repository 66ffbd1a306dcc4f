//! `clover repatriate run`, `verify`, `purge` and `verify-receipt` against a real boundary
//! (`clover serve`), from a real PostgreSQL source and real files: the rows come home, are read
//! back identical, are purged at the source (and proven gone), and the receipt verifies; a run
//! killed with SIGKILL resumes; a changed source blocks the purge; bad rows are reported by line.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Connection;

use crate::support::{Finished, PATIENCE, Process, clover, mint_token, run, run_ok, signal, stdout_of, wait_for_exit};

const MAPPING: &str = r#"
[countries]
IE = "eu"
NO = "eu"
SG = "sg"

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

/// A boundary serving on its embedded default, the repatriation operator's token, and its
/// log's verifier key.
struct Home {
    dir: tempfile::TempDir,
    server: Process,
    token: String,
    vkey: String,
}

impl Home {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut init = clover(dir.path());
        init.args(["init", "--data-dir", "data"]);
        run_ok(init);
        let server = Process::serve(clover(dir.path()), &["--data-dir", "data"]);
        let token = mint_token(clover(dir.path()), &["--data-dir", "data"], "repatriation");
        let mut vkey = clover(dir.path());
        vkey.args(["log", "vkey", "--data-dir", "data"]);
        let vkey = stdout_of(vkey).trim().to_owned();
        std::fs::write(dir.path().join("mapping.toml"), MAPPING).unwrap();
        Self { dir, server, token, vkey }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn repatriate(&self, args: &[&str]) -> Command {
        let mut command = clover(self.dir.path());
        command
            .arg("repatriate")
            .args(args)
            .args(["--mapping", "mapping.toml", "--region", "eu", "--url", &self.server.url])
            .env("CLOVER_TOKEN", &self.token);
        command
    }

    fn run(&self, args: &[&str]) -> Finished {
        run(self.repatriate(args))
    }

    /// The region's store, read directly: (records, repatriated rows).
    async fn stored(&self) -> (i64, i64) {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(self.path("data/clover.db")).read_only(true);
        let mut db = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
        let records: i64 = sqlx::query_scalar("SELECT count(*) FROM records").fetch_one(&mut db).await.unwrap();
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM repatriated").fetch_one(&mut db).await.unwrap();
        (records, rows)
    }
}

/// `n` rows as JSON Lines: every fourth Singapore's, the rest Ireland's or Norway's; some minors.
fn people(n: usize) -> String {
    (0..n)
        .map(|i| {
            let country = match i % 4 {
                0 => "SG",
                1 | 2 => "IE",
                _ => "NO",
            };
            let born = if i % 5 == 0 { "2014-03-04" } else { "1985-11-12" };
            let kind = if i % 3 == 0 { "contact" } else { "profile" };
            format!(
                "{{\"id\": {i}, \"user_id\": \"u-{}\", \"country\": \"{country}\", \"born\": \"{born}\", \"kind\": \"{kind}\", \"data\": {{\"name\": \"Person {i}\", \"n\": {i}}}}}\n",
                i / 2
            )
        })
        .collect()
}

fn line(out: &str, prefix: &str) -> String {
    out.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line {prefix:?} in:\n{out}")).to_owned()
}

#[tokio::test]
async fn a_postgres_source_comes_home_is_purged_and_the_receipt_verifies() {
    let home = Home::start();
    let db = clover_testkit::TestDatabase::create().await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE people (id bigint PRIMARY KEY, user_id text, country text, born date, kind text, data jsonb)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    for (i, row) in people(40).lines().enumerate() {
        let v: Value = serde_json::from_str(row).unwrap();
        sqlx::query("INSERT INTO people VALUES ($1, $2, $3, CAST($4 AS date), $5, CAST($6 AS jsonb))")
            .bind(i64::try_from(i).unwrap())
            .bind(v["user_id"].as_str())
            .bind(v["country"].as_str())
            .bind(v["born"].as_str())
            .bind(v["kind"].as_str())
            .bind(v["data"].to_string())
            .execute(&mut conn)
            .await
            .unwrap();
    }
    // One row that does not classify: an unknown country.
    sqlx::raw_sql("INSERT INTO people VALUES (100, 'u-x', 'FR', NULL, 'profile', '{}')")
        .execute(&mut conn)
        .await
        .unwrap();

    // The operator abroad computes the root from the source's own rows.
    let mut digest = clover(home.dir.path());
    digest.args(["repatriate", "digest", "--mapping", "mapping.toml", "--region", "eu", "--source-url", &db.url]);
    let digest = stdout_of(digest);
    let root = line(&digest, "root: ");

    let out = home.run(&["run", "--source-url", &db.url, "--job", "sg-2026", "--purge", "--receipt", "r.json"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        line(&out.stdout, "= "),
        "= 30 identical, * 0 differ, + 0 missing, - 10 left abroad, ! 1 unreadable",
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("copied 30 records (0 brought home by an earlier run), registered 20 subjects"));
    assert_eq!(line(&out.stdout, "root: "), root, "the run's root is the source's");
    assert!(out.stdout.contains("! table \"people\", key \"100\": unknown country \"FR\""), "{}", out.stdout);
    assert!(out.stdout.contains("purged 30 rows at the source; kept 0"), "{}", out.stdout);
    // Not a terminal: the progress's last line on stderr.
    assert!(out.stderr.contains("copying 41 rows"), "{}", out.stderr);
    assert_eq!(home.stored().await, (30, 30));

    // Gone at the source: the other regions' row and the unclassifiable one are left.
    let left: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, country FROM people ORDER BY id").fetch_all(&mut conn).await.unwrap();
    assert_eq!(left.len(), 11);
    assert!(left.iter().all(|(_, c)| c == "SG" || c == "FR"), "{left:?}");

    // The receipt verifies against the log; its root is the source's.
    let receipt: Value = serde_json::from_slice(&std::fs::read(home.path("r.json")).unwrap()).unwrap();
    assert!(root.contains(receipt["root"].as_str().unwrap()), "{root} / {receipt}");
    let note = receipt["note"].as_str().unwrap();
    assert!(note.contains("\nreported-purge {\"purged\":30,\"kept\":0,\"remaining\":0}\n"), "{note}");
    assert!(note.contains("\nreported-source postgres://") && !note.contains("password"), "{note}");
    let mut check = clover(home.dir.path());
    check.args(["repatriate", "verify-receipt", "r.json", "--url", &home.server.url, "--vkey", &home.vkey]);
    let checked = run(check);
    assert!(checked.status.success(), "{}", checked.stderr);
    assert!(checked.stdout.contains("receipt of job sg-2026: 30 records"), "{}", checked.stdout);
    // Demanding a witness's cosignature that the checkpoint does not carry fails.
    let mut witnessed = clover(home.dir.path());
    witnessed.args(["repatriate", "verify-receipt", "r.json", "--url", &home.server.url, "--vkey", &home.vkey]);
    witnessed.args(["--witness", &home.vkey]);
    let witnessed = run(witnessed);
    assert!(!witnessed.status.success(), "{}", witnessed.stdout);
    // A receipt altered in any part does not.
    let text = std::fs::read_to_string(home.path("r.json")).unwrap();
    for (from, to) in [("records 30", "records 31"), ("\"records\": 30", "\"records\": 31")] {
        std::fs::write(home.path("forged.json"), text.replace(from, to)).unwrap();
        let mut check = clover(home.dir.path());
        check.args(["repatriate", "verify-receipt", "forged.json", "--url", &home.server.url, "--vkey", &home.vkey]);
        let forged = run(check);
        assert!(!forged.status.success(), "a receipt with {to:?} verified");
    }
    conn.close().await.unwrap();
    drop(db);
}

#[tokio::test]
async fn a_run_killed_with_sigkill_resumes_and_writes_nothing_twice() {
    let home = Home::start();
    std::fs::write(home.path("people.jsonl"), people(600)).unwrap();
    let mut first = home.repatriate(&["run", "--file", "people.jsonl", "--batch", "25"]);
    let mut child = first.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Killed once some batches are stored, long before the end.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (records, _) = home.stored().await;
        if records >= 100 {
            break;
        }
        assert!(Instant::now() < deadline, "no batch was stored in time");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it was killed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal("KILL", child.id());
    wait_for_exit(&mut child, PATIENCE).unwrap();
    let (killed_at, rows) = home.stored().await;
    assert_eq!(killed_at, rows, "every stored record has its job row");
    assert!(killed_at < 450, "killed too late: {killed_at}");

    let out = home.run(&["run", "--file", "people.jsonl", "--batch", "25"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(line(&out.stdout, "= "), "= 450 identical, * 0 differ, + 0 missing, - 150 left abroad, ! 0 unreadable");
    let copied = line(&out.stdout, "copied ");
    assert!(copied.starts_with("copied 450 records ("), "{copied}");
    let earlier: i64 = copied.split('(').nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert_eq!(earlier, killed_at, "what the killed run stored is found, not written again");
    assert_eq!(home.stored().await, (450, 450), "none written twice, none missed");
}

#[tokio::test]
async fn a_source_changed_after_the_copy_blocks_the_purge() {
    let home = Home::start();
    std::fs::write(home.path("people.jsonl"), people(20)).unwrap();
    let out = home.run(&["run", "--file", "people.jsonl", "--job", "j"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    // One row changed and one added at the source since.
    let changed = people(22).replace("\"Person 5\"", "\"Person five\"");
    std::fs::write(home.path("people.jsonl"), &changed).unwrap();
    let out = home.run(&["purge", "--file", "people.jsonl", "--job", "j"]);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("verification failed for 2 of the region's rows: nothing was purged"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("* line 6: changed at the source since it was copied"), "{}", out.stdout);
    assert!(out.stdout.contains("+ line 22: not in the region"), "{}", out.stdout);
    assert_eq!(std::fs::read_to_string(home.path("people.jsonl")).unwrap(), changed, "the source is untouched");

    // Brought home again (the changed row cannot be: reported), then verify says the same.
    let verify = home.run(&["verify", "--file", "people.jsonl", "--job", "j"]);
    assert!(!verify.status.success());
    assert!(verify.stdout.starts_with("job: j\n"), "{}", verify.stdout);
}

#[tokio::test]
async fn a_file_is_purged_byte_for_byte_and_bad_rows_are_reported_by_line() {
    let home = Home::start();
    let mut rows = people(8);
    rows.push_str(
        "{\"id\": 50, \"user_id\": \"u-50\", \"country\": \"IE\", \"kind\": \"profile\", \"data\": {\"a\": 1}\n",
    );
    rows.push_str("not json at all\n");
    rows.push_str("{\"id\": 1, \"user_id\": \"u-dup\", \"country\": \"IE\", \"kind\": \"profile\", \"data\": {}}\n");
    rows.push_str("{\"id\": 52, \"user_id\": \"../etc\", \"country\": \"IE\", \"kind\": \"profile\", \"data\": {}}\n");
    let mut bytes = rows.into_bytes();
    bytes.extend_from_slice(b"{\"id\": 53, \"user_id\": \"u-53\", \"country\": \"IE\", \"kind\": \"profile\", \"data\": {\"x\": \"\xff\"}}\n");
    bytes.extend_from_slice(
        b"{\"id\": 54, \"user_id\": \"u-54\", \"country\": \"SG\", \"kind\": \"profile\", \"data\": {}}\n",
    );
    std::fs::write(home.path("people.jsonl"), &bytes).unwrap();

    // Stopped at the second bad row: what came before it is home, whole batches only.
    let stopped = home.run(&["run", "--file", "people.jsonl", "--job", "bad", "--max-errors", "2"]);
    assert!(!stopped.status.success());
    assert!(
        stopped.stderr.contains("stopped at 2 unclassifiable rows (--max-errors); the last at line 10"),
        "{}",
        stopped.stderr
    );
    assert_eq!(home.stored().await, (6, 6));

    let out = home.run(&["run", "--file", "people.jsonl", "--job", "bad", "--purge", "--combined", "combined.txt"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(line(&out.stdout, "= "), "= 6 identical, * 0 differ, + 0 missing, - 3 left abroad, ! 5 unreadable");
    for expected in
        ["! line 9:", "! line 10: not a JSON object", "! line 11:", "! line 12:", "! line 13: not valid UTF-8"]
    {
        assert!(out.stdout.contains(expected), "{expected} in {}", out.stdout);
    }
    let combined = std::fs::read_to_string(home.path("combined.txt")).unwrap();
    assert_eq!(combined.lines().filter(|l| l.starts_with("= line ")).count(), 6, "{combined}");
    assert_eq!(combined.lines().count(), 14, "{combined}");

    // The file keeps, byte for byte, every line that did not come home.
    let kept = std::fs::read(home.path("people.jsonl")).unwrap();
    let expected: Vec<u8> = bytes
        .split_inclusive(|b| *b == b'\n')
        .enumerate()
        .filter(|(i, l)| {
            let home_line = *i < 8 && !l.starts_with(b"{\"id\": 0,") && !String::from_utf8_lossy(l).contains("\"SG\"");
            !home_line
        })
        .flat_map(|(_, l)| l.to_vec())
        .collect();
    assert_eq!(String::from_utf8_lossy(&kept), String::from_utf8_lossy(&expected));
    assert!(out.stdout.contains("purged 6 rows at the source"), "{}", out.stdout);
}

#[tokio::test]
async fn a_csv_source_is_purged_keeping_its_header_and_other_rows() {
    let home = Home::start();
    let csv = "id,user_id,country,born,kind,data\n\
               1,u-1,IE,1980-01-01,profile,\"{\"\"name\"\": \"\"A, with comma\"\"}\"\n\
               2,u-2,SG,1980-01-01,profile,\"{\"\"name\"\": \"\"B\"\"}\"\n\
               3,u-3,NO,,contact,\"{\"\"note\"\":\n \"\"two lines\"\"}\"\n\
               4,u-4,IE,1980-01-01,profile\n";
    std::fs::write(home.path("people.csv"), csv).unwrap();
    let out = home.run(&["run", "--file", "people.csv", "--purge"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(line(&out.stdout, "= "), "= 2 identical, * 0 differ, + 0 missing, - 1 left abroad, ! 1 unreadable");
    assert_eq!(
        std::fs::read_to_string(home.path("people.csv")).unwrap(),
        "id,user_id,country,born,kind,data\n2,u-2,SG,1980-01-01,profile,\"{\"\"name\"\": \"\"B\"\"}\"\n4,u-4,IE,1980-01-01,profile\n"
    );
}

#[tokio::test]
async fn a_postgres_source_changed_after_the_run_is_reported_and_nothing_is_purged() {
    let home = Home::start();
    let db = clover_testkit::TestDatabase::create().await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE people (id bigint PRIMARY KEY, user_id text, country text, born date, kind text, data jsonb);
         INSERT INTO people SELECT i, 'u-' || i, 'IE', DATE '1990-01-01', 'profile', jsonb_build_object('n', i)
           FROM generate_series(1, 12) AS i",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let out = home.run(&["run", "--source-url", &db.url, "--job", "pg"]);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    // At the source since: one row changed, one added.
    sqlx::raw_sql(
        "UPDATE people SET data = '{\"n\": 500}' WHERE id = 5;
         INSERT INTO people VALUES (13, 'u-13', 'IE', DATE '1990-01-01', 'profile', '{\"n\": 13}')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let verify = home.run(&["verify", "--source-url", &db.url, "--job", "pg", "--json"]);
    assert!(!verify.status.success());
    let report: Value = serde_json::from_str(&verify.stdout).unwrap();
    assert_eq!(report["combined"], serde_json::json!({"=": 11, "*": 1, "+": 1, "-": 0, "!": 0}), "{report}");
    assert!(
        report["problems"].to_string().contains("key \\\"5\\\": changed at the source since it was copied"),
        "{report}"
    );

    let purge = home.run(&["purge", "--source-url", &db.url, "--job", "pg"]);
    assert!(!purge.status.success());
    assert!(
        purge.stderr.contains("verification failed for 2 of the region's rows: nothing was purged"),
        "{}",
        purge.stderr
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM people").fetch_one(&mut conn).await.unwrap();
    assert_eq!(count, 13, "nothing was deleted");
    conn.close().await.unwrap();
    drop(db);
}
