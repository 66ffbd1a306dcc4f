//! Erasure is crypto-shredding.

use std::path::Path;
use std::time::Duration;

use clover_keys::{DataKey, Kek, KeyError, Keyring, Passphrase, aad};
use clover_model::{RecordId, SubjectId};
use serde_json::{Value, json};
use sqlx::Row;

use crate::harness::{DUBLIN, TestApp, files_containing, problem};

#[tokio::test]
async fn erasure_destroys_the_key_and_the_kept_ciphertext_opens_with_nothing_left() {
    let app = TestApp::start().await;
    let first = app.seed("u-erased", json!({"name": "to be forgotten"})).await;
    let second = app.post_record("u-erased", "messages", json!({"text": "also forgotten"})).await;
    let second = second.json::<Value>().await.unwrap()["record_id"].as_str().unwrap().to_owned();
    for i in 0..3 {
        app.seed(&format!("u-kept-{i}"), json!({"name": format!("kept {i}")})).await;
    }

    // What an attacker kept from before the erasure, and a backup of the data store taken then.
    let kept_ciphertexts = [app.ciphertext(&first).await, app.ciphertext(&second).await];
    let kept_wrapped_key = app.wrapped_key("u-erased").await;
    let backups = tempfile::tempdir().unwrap();
    let backup = app.backup_store(backups.path()).await;

    let response = app.client(DUBLIN).delete(app.url("/v1/subjects/u-erased")).bearer_auth(app.token()).send().await;
    let response = response.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["subject_id"], "u-erased");
    assert_eq!(body["erased_records"], 2);
    assert_eq!(body["decision"]["effect"], "allow");
    assert_eq!(body["wal_truncated"], true);

    // Reads and writes afterwards: 404.
    for record in [&first, &second] {
        problem(app.get_record(DUBLIN, record).await, 404, "not-found").await;
    }
    problem(app.post_record("u-erased", "profile", json!({"a": 1})).await, 404, "not-found").await;
    let again = app.client(DUBLIN).delete(app.url("/v1/subjects/u-erased")).bearer_auth(app.token()).send().await;
    problem(again.unwrap(), 404, "not-found").await;

    // The wrapped key is gone from every byte of the data directory (database, WAL, everything),
    // and so are the records' ciphertexts.
    let data_dir = app.data_dir();
    assert_eq!(files_containing(&data_dir, &kept_wrapped_key), Vec::<std::path::PathBuf>::new());
    for ciphertext in &kept_ciphertexts {
        assert_eq!(files_containing(&data_dir, &ciphertext[..32]), Vec::<std::path::PathBuf>::new());
    }

    // The backup still holds the erased subject's rows and ciphertext, and no key for them: the
    // custodian, which alone held the wrapped key, no longer has one to give, whatever the receipt.
    let erased: SubjectId = "u-erased".parse().unwrap();
    let pool =
        sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(&backup)).await.unwrap();
    let row = sqlx::query("SELECT ciphertext FROM records WHERE record_id = ?").bind(&first).fetch_one(&pool).await;
    assert_eq!(row.unwrap().get::<Vec<u8>, _>(0), kept_ciphertexts[0]);
    let columns: Vec<String> = sqlx::query("SELECT name FROM pragma_table_info('subjects')")
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!columns.iter().any(|c| c.contains("key")), "the data store keeps no key: {columns:?}");
    // The subject's metadata (when they come of age) is in the backup too, sealed under a key of
    // their own that the erasure destroyed with their data key.
    let metadata: Vec<u8> = sqlx::query("SELECT metadata FROM subjects WHERE subject_id = 'u-erased'")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert!(!metadata.is_empty());
    assert!(app.boundary.custody().subject_facts(&erased, &metadata).await.is_err());
    pool.close().await;
    assert!(files_containing(backups.path(), &kept_wrapped_key).is_empty());
    let refused = app.boundary.custody().data_key(&app.receipt(&erased).await).await;
    assert!(matches!(refused, Err(KeyError::NoDataKey)), "{refused:?}");

    // Nothing the boundary still holds opens the kept ciphertext: try the data key of every
    // subject that remains, under every binding the erased records had.
    let region = app.boundary.region().clone();
    let rows = app.dump().await;
    assert_eq!(rows.iter().filter(|r| r.starts_with("subject ")).count(), 3);
    for i in 0..3 {
        let subject: SubjectId = format!("u-kept-{i}").parse().unwrap();
        let key = app.boundary.custody().data_key(&app.receipt(&subject).await).await.unwrap();
        for (record, ciphertext) in [&first, &second].iter().zip(&kept_ciphertexts) {
            let record: RecordId = record.parse().unwrap();
            for owner in [&erased, &subject] {
                assert!(key.open(&aad::record(&region, owner, &record, 1), ciphertext).is_err());
            }
        }
    }
}

/// An erasure that overtakes a request about the same subject (found, decided and logged, its
/// data key destroyed before the request asks for it) answers that request as a later one gets
/// it: the subject or record is not found. It was a 500, which schemathesis found by erasing a
/// subject while writing one of its records (issue 15, section 4).
#[tokio::test]
async fn a_request_overtaken_by_an_erasure_is_not_found_not_a_server_error() {
    let app = TestApp::start().await;
    let record = app.seed("u-racing", json!({"name": "about to be erased"})).await;
    let subject: SubjectId = "u-racing".parse().unwrap();
    // What the racing requests found before the erasure ran: the subject's and record's rows.
    let store = app.boundary.store();
    let subject_row = store.subject(&subject).await.unwrap().unwrap();
    let record_row = store.record(&record.parse().unwrap()).await.unwrap().unwrap();
    let erased =
        app.client(DUBLIN).delete(app.url("/v1/subjects/u-racing")).bearer_auth(app.token()).send().await.unwrap();
    assert_eq!(erased.status(), 200);
    // The rows back as those requests saw them; the data key stays destroyed.
    assert!(store.insert_subject(&subject_row).await.unwrap());
    store.insert_record(&record_row).await.unwrap();

    let write = app.post_record("u-racing", "profile", json!({"name": "late"})).await;
    problem(write, 404, "not-found").await;
    let read = app.get_record(DUBLIN, &record).await;
    problem(read, 404, "not-found").await;
    let update = app.put_subject("u-racing").await;
    problem(update, 404, "not-found").await;
}

async fn erase(app: &TestApp, subject: &str) -> reqwest::Response {
    app.client(DUBLIN)
        .delete(app.url(&format!("/v1/subjects/{subject}")))
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap()
}

/// Rotates the KEK as a key custodian in Dublin, and waits until the rotation has re-wrapped
/// every key and retired the old versions; returns them.
async fn rotate(app: &TestApp) -> Value {
    let mut claims = app.claims("eu", "dublin-1", 3600);
    claims.roles = vec!["key-custodian".into()];
    let token = app.mint(&claims);
    let started = app.client(DUBLIN).post(app.url("/v1/keys/rotate")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(started.status(), 202);
    for _ in 0..200 {
        let state: Value =
            app.client(DUBLIN).get(app.url("/v1/keys")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        if state["rotation"]["done"] == true {
            assert!(state["rotation"].get("error").is_none(), "{state}");
            return state["rotation"]["retired"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the rotation did not finish");
}

/// The keyring in `data_dir`, opened with the passphrase the boundary found there.
fn keyring_in(data_dir: &Path) -> Keyring {
    let (passphrase, _) = Passphrase::find(data_dir).unwrap().unwrap();
    Keyring::open(&data_dir.join("keyring.json"), &passphrase).unwrap()
}

/// Every data key in the key store at `path`: (keyed hash of the subject, KEK version, wrapped).
async fn wrapped_keys(path: &Path) -> Vec<(String, u32, Vec<u8>)> {
    let pool = sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(path)).await.unwrap();
    let rows = sqlx::query("SELECT subject, kek_version, wrapped FROM data_keys").fetch_all(&pool).await.unwrap();
    pool.close().await;
    rows.iter().map(|r| (r.get(0), r.get::<u32, _>(1), r.get(2))).collect()
}

/// Issue 16: a backup of the data directory taken before an erasure and a KEK rotation opens
/// nothing of the erased subject, as long as the keyring (and its passphrase) are not in it:
/// the backup's key store still holds the subject's wrapped data key, under a KEK version that
/// the rotation destroyed. The keyring is what must stay out of data backups: with the
/// keyring and passphrase of the same day, the backup opens everything, erasure and rotation
/// notwithstanding (`docs/deployment.md`, Backups).
#[tokio::test]
async fn a_backup_taken_before_an_erasure_and_a_rotation_opens_nothing_of_the_erased_subject() {
    let app = TestApp::start().await;
    let record = app.seed("u-erased", json!({"name": "to be forgotten"})).await;
    let kept = app.seed("u-kept", json!({"name": "kept"})).await;
    let erased: SubjectId = "u-erased".parse().unwrap();
    let record_id: RecordId = record.parse().unwrap();
    let region = app.boundary.region().clone();
    let hash = app.boundary.subject_hash(&erased);
    let wrapping = |version: u32| aad::data_key_by_hash(&region, &hash, version);

    // The backup, taken before the erasure: the data directory as the embedded default lays it
    // out, keyring and passphrase file included.
    let backups = tempfile::tempdir().unwrap();
    let backup = app.backup_data_dir(backups.path()).await;
    let in_backup = wrapped_keys(&backup.join("custody").join("keys.db")).await;
    let (_, version, kept_wrapped) = in_backup.iter().find(|(h, _, _)| *h == hash).unwrap().clone();
    assert_eq!(version, 1);
    let kept_ciphertext = {
        let pool = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(backup.join("clover.db")),
        )
        .await
        .unwrap();
        let row = sqlx::query("SELECT ciphertext FROM records WHERE record_id = ?").bind(&record).fetch_one(&pool);
        let ciphertext: Vec<u8> = row.await.unwrap().get(0);
        pool.close().await;
        ciphertext
    };

    let response = erase(&app, "u-erased").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["wal_truncated"], true);
    assert!(matches!(app.boundary.custody().data_key(&app.receipt(&erased).await).await, Err(KeyError::NoDataKey)));

    // An erasure alone does not reach the backup's key store: the version that wrapped the
    // erased subject's key is still the live keyring's current one, and opens it.
    assert!(keyring_in(&app.data_dir()).decrypt(1, &wrapping(1), &kept_wrapped).is_ok());

    // The rotation re-wraps every key under version 2 and retires version 1.
    assert_eq!(rotate(&app).await, json!([1]));
    let live = keyring_in(&app.data_dir());
    assert_eq!(live.versions().unwrap(), vec![2]);

    // Now nothing the boundary holds opens the erased subject's key in the backup, under any
    // version: version 1 is gone from the live keyring, and version 2 never wrapped it.
    assert!(matches!(live.decrypt(1, &wrapping(1), &kept_wrapped), Err(KeyError::UnknownKekVersion(1))));
    assert!(live.decrypt(2, &wrapping(2), &kept_wrapped).is_err());
    assert!(live.decrypt(2, &wrapping(1), &kept_wrapped).is_err());
    // Nor any key in the backup's key store: every one is under the retired version (so a
    // backup of the key store is taken again after each rotation, or it restores nothing).
    assert!(in_backup.iter().all(|(_, version, _)| *version == 1), "{:?}", in_backup.len());
    for (h, _, wrapped) in &in_backup {
        assert!(live.decrypt(1, &aad::data_key_by_hash(&region, h, 1), wrapped).is_err());
    }
    // The live custodian has no key for them, not even for a receipt naming their record, and
    // the keys it has open nothing of theirs.
    let refused = app.boundary.custody().data_key(&app.record_receipt(&erased, &record_id, "profile").await).await;
    assert!(matches!(refused, Err(KeyError::NoDataKey)), "{refused:?}");
    let kept_subject: SubjectId = "u-kept".parse().unwrap();
    let receipt = app.record_receipt(&kept_subject, &record_id, "profile").await;
    let other = app.boundary.custody().data_key(&receipt).await.unwrap();
    assert!(other.open(&aad::record(&region, &erased, &record_id, 1), &kept_ciphertext).is_err());
    // The live data directory holds neither the wrapped key nor the ciphertext.
    assert!(files_containing(&app.data_dir(), &kept_wrapped).is_empty());
    assert!(files_containing(&app.data_dir(), &kept_ciphertext[..32]).is_empty());
    // The kept subject's records still open: the rotation lost nothing.
    let read = app.get_record(DUBLIN, &kept).await;
    assert_eq!(read.json::<Value>().await.unwrap()["fields"]["name"], "kept");

    // Each step of the rotation re-sealed the keyring under a new salt: the live file and the
    // backup's copy are sealed under different keys.
    let salt = |dir: &Path| {
        let file: Value = serde_json::from_slice(&std::fs::read(dir.join("keyring.json")).unwrap()).unwrap();
        file["kdf"]["salt"].clone()
    };
    assert_ne!(salt(&app.data_dir()), salt(&backup));

    // What the new salt does not change: the backup's own keyring opens with the backup's own
    // passphrase, holds version 1, and with it the erased subject's key and, derived from it,
    // their record's. That is why the keyring and the passphrase are kept out of data backups,
    // and an old copy of the keyring is destroyed once a rotation retired its versions.
    let old = keyring_in(&backup);
    assert_eq!(old.versions().unwrap(), vec![1]);
    let key = DataKey::from_slice(&old.decrypt(1, &wrapping(1), &kept_wrapped).unwrap()).unwrap();
    let scope = aad::key_scope(&region, &hash, Some(&record), Some(1), Some("profile"));
    let fields = key.derive(&scope).unwrap().open(&aad::record(&region, &erased, &record_id, 1), &kept_ciphertext);
    let fields = fields.unwrap();
    assert!(String::from_utf8_lossy(&fields).contains("to be forgotten"));
}

/// Another connection's read transaction on the data store, begun now: while it lasts, it can
/// still read what it saw, and the store's write-ahead log cannot be truncated.
async fn reader(app: &TestApp) -> sqlx::Transaction<'static, sqlx::Sqlite> {
    let pool = app.db().await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM records").fetch_one(&mut *tx).await.unwrap();
    tx
}

/// Issue 16: an erasure is answered complete only once the old copies of its rows are out of
/// the SQLite write-ahead log. A reader that lets go while the store waits delays the answer; one
/// that holds on throughout gets the erasure answered 503 `erasure-unfinished` (committed,
/// logged, the key destroyed), and the same request again finishes it.
#[tokio::test]
async fn an_erasure_is_answered_only_once_its_old_rows_are_out_of_the_write_ahead_log() {
    let app = TestApp::start().await;
    let first = app.seed("u-1", json!({"name": "first"})).await;
    let second = app.seed("u-2", json!({"name": "second"})).await;
    app.seed("u-kept", json!({"name": "kept"})).await;
    let first_ciphertext = app.ciphertext(&first).await;

    // A reader that lets go after half a second: the erasure waits for it, then truncates.
    let held = reader(&app).await;
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        held.rollback().await.unwrap();
    });
    let started = std::time::Instant::now();
    let response = erase(&app, "u-1").await;
    release.await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["erased_records"].as_u64(), body["wal_truncated"].as_bool()), (Some(1), Some(true)), "{body}");
    // The write-ahead log was truncated after the deletion: what is in it now (the erasure
    // certificate the region keeps, written after) holds no copy of the erased record.
    assert!(files_containing(&app.data_dir(), &first_ciphertext[..32]).is_empty());

    // A reader held throughout: committed, logged, the key destroyed, but not answered 200,
    // since the old rows are still there.
    let kept_ciphertext = app.ciphertext(&second).await;
    let held = reader(&app).await;
    let response = erase(&app, "u-2").await;
    assert_eq!(response.headers().get("retry-after").unwrap(), "1");
    let body = problem(response, 503, "erasure-unfinished").await;
    assert!(body["detail"].as_str().unwrap().contains("is committed"), "{body}");
    let first_attempt = body["log_index"].as_u64().unwrap();
    problem(app.get_record(DUBLIN, &second).await, 404, "not-found").await;
    let erased: SubjectId = "u-2".parse().unwrap();
    let refused = app.boundary.custody().data_key(&app.receipt(&erased).await).await;
    assert!(matches!(refused, Err(KeyError::NoDataKey)), "{refused:?}");
    assert!(!files_containing(&app.data_dir(), &kept_ciphertext[..32]).is_empty());

    // Once the reader is done, the same request finishes it: decided and logged again, and
    // answered with what the first attempt erased.
    held.rollback().await.unwrap();
    let response = erase(&app, "u-2").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["erased_records"].as_u64(), body["wal_truncated"].as_bool()), (Some(1), Some(true)), "{body}");
    assert!(body["log_index"].as_u64().unwrap() > first_attempt, "{body}");
    assert!(files_containing(&app.data_dir(), &kept_ciphertext[..32]).is_empty());
    problem(erase(&app, "u-2").await, 404, "not-found").await;
    let read = app.get_record(DUBLIN, &app.seed("u-after", json!({"name": "after"})).await).await;
    assert_eq!(read.status(), 200);
}
