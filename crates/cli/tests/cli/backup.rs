//! `clover backup`: a consistent copy of the data store and the log, taken while the boundary
//! serves, never a key, and only when the data lives in the region.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use sqlx::Row;

use crate::support::{Process, clover_with_passphrase, create_subject, employee_token, run, write_record};

fn clover(dir: &Path) -> Command {
    clover_with_passphrase(dir, "backup-test")
}

fn backup(dir: &Path, args: &[&str]) -> crate::support::Finished {
    let mut command = clover(dir);
    command.arg("backup").args(args);
    run(command)
}

/// Every file of `dir`, recursively, as (path relative to `dir`, bytes).
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_holds_the_data_and_the_log_and_no_key() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Process::serve(clover(tmp.path()), &["--data-dir", "data"]);
    let token = employee_token(tmp.path(), &tmp.path().join("data"));
    create_subject(&server, &token, "u-1").await;
    for i in 0..5 {
        write_record(&server, &token, "u-1", &json!({"display_name": format!("Aoife {i}")})).await;
    }

    // While the boundary serves.
    let made = backup(tmp.path(), &["--data-dir", "data", "--to", "backups/one"]);
    assert!(made.status.success(), "{}", made.stderr);
    assert!(
        made.stdout.contains("data resides at store: local; key-store: local; custodian: local"),
        "{}",
        made.stdout
    );
    let dir = tmp.path().join("backups/one");
    let kept = files(&dir);
    let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["clover.db", "log/checkpoint.0", "log/checkpoint.1", "log/entries", "manifest.json"]);

    // The manifest's digests are the files'.
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let listed = manifest["files"].as_array().unwrap();
    assert_eq!(listed.len(), 4);
    for file in listed {
        let bytes = std::fs::read(dir.join(file["path"].as_str().unwrap())).unwrap();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
        assert_eq!(file["sha256"].as_str().unwrap(), hex::encode(digest.as_ref()));
        assert_eq!(file["bytes"].as_u64().unwrap(), bytes.len() as u64);
    }

    // The copy is a database of its own with the records, as ciphertext.
    let url = format!("sqlite://{}?mode=ro", dir.join("clover.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let count: i64 = sqlx::query("SELECT count(*) FROM records").fetch_one(&pool).await.unwrap().get(0);
    assert_eq!(count, 5);
    pool.close().await;
    // No key, nor anything that holds one; no value in the clear.
    for (name, bytes) in &kept {
        assert!(
            !name.contains("keyring")
                && !name.contains("custody")
                && !name.contains("passphrase")
                && !name.contains("issuer")
        );
        assert!(!bytes.windows(5).any(|w| w == b"Aoife"), "a value in the clear in {name}");
    }

    // Every file for its owner only.
    for (name, _) in &kept {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(name)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    // An existing empty directory open to others is refused: someone else may have made it.
    let open = tmp.path().join("backups/open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let refused = backup(tmp.path(), &["--data-dir", "data", "--to", "backups/open"]);
    assert!(refused.stderr.contains("closed to others"), "{}", refused.stderr);

    // A second backup does not overwrite the first.
    let again = backup(tmp.path(), &["--data-dir", "data", "--to", "backups/one"]);
    assert!(!again.status.success());
    assert!(again.stderr.contains("it is not empty: a backup does not overwrite another"), "{}", again.stderr);
    drop(server);
}

/// A backup goes to a directory of this machine only, and only of data that lives in the region.
#[test]
fn a_backup_is_refused_abroad_and_to_a_remote_host() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (
            vec!["--store", "postgres://clover:hunter2@127.0.2.7/clover", "--to", "b"],
            "residency: the store at 127.0.2.7 resolves to 127.0.2.7, which is in site singapore-1 of region sg",
        ),
        (vec!["--data-dir", "data", "--to", "backup.example:/srv/clover"], "not to a remote host"),
        (vec!["--data-dir", "data", "--to", "sftp://backup.example/srv"], "not to a remote host"),
        (vec!["--data-dir", "data", "--to", "b"], "nothing to back up"),
    ] {
        let refused = backup(tmp.path(), &args);
        assert!(!refused.status.success(), "{args:?}");
        assert!(refused.stderr.contains(expected), "{args:?}: {}", refused.stderr);
        assert!(!refused.stderr.contains("hunter2"), "{}", refused.stderr);
    }
    assert!(!tmp.path().join("b").exists(), "nothing was written");
}

/// A PostgreSQL store is dumped with `pg_dump` (one snapshot), without the custodian's keys when
/// they share its database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_is_dumped_without_the_keys() {
    let database = clover_testkit::TestDatabase::create().await;
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    sqlx::query("CREATE TABLE data_keys (subject TEXT PRIMARY KEY, wrapped BYTEA)").execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO data_keys VALUES ('s-1', 'WRAPPEDKEYBYTES')").execute(&pool).await.unwrap();
    sqlx::query("CREATE TABLE records (id TEXT PRIMARY KEY, ciphertext BYTEA)").execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO records VALUES ('r-1', 'CIPHERTEXTBYTES')").execute(&pool).await.unwrap();
    pool.close().await;

    let tmp = tempfile::tempdir().unwrap();
    let made = backup(tmp.path(), &["--data-dir", "data", "--store", &database.url, "--to", "pg"]);
    assert!(made.status.success(), "{}", made.stderr);
    let dump = std::fs::read(tmp.path().join("pg/clover.pgdump")).unwrap();
    assert!(dump.starts_with(b"PGDMP"), "a pg_dump archive");
    // The table's definition is there, its rows are not; the records are.
    let listed = Command::new("pg_restore")
        .arg("--data-only")
        .arg("--file=-")
        .arg(tmp.path().join("pg/clover.pgdump"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains("r-1"), "{text}");
    assert!(!text.contains("s-1"), "a wrapped key in the backup: {text}");
    // The URL's TLS settings reach pg_dump: verify-full against a CA file that does not exist
    // fails, rather than falling back to whatever TLS (or none) the server offers.
    let strict = format!("{}?sslmode=verify-full&sslrootcert=/nonexistent/clover-ca.pem", database.url);
    let refused = backup(tmp.path(), &["--data-dir", "data", "--store", &strict, "--to", "pg-tls"]);
    assert!(!refused.status.success(), "{}", refused.stdout);
    assert!(refused.stderr.contains("/nonexistent/clover-ca.pem"), "{}", refused.stderr);
    let password = database.url.split(':').nth(2).and_then(|rest| rest.split('@').next()).unwrap_or("");
    if !password.is_empty() {
        assert!(!made.stdout.contains(password) && !made.stderr.contains(password));
    }
}
