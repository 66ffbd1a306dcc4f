//! One logged read opens one record: the custodian hands out the key of the record version the
//! receipt's entry names (derived from the subject's key, which never leaves it), so a receipt
//! for a subject's profile does not open their messages. Records sealed by an earlier version
//! with the subject's whole key are re-sealed under their own key on their first read.

use clover_keys::{DataKey, KeyError, aad};
use clover_model::{RecordId, SubjectId};
use clover_store::SealedWith;
use serde_json::{Value, json};
use sqlx::Row;

use crate::harness::{DUBLIN, TestApp};

/// Subject `u-1` with a profile record and a messages record; their ids.
async fn two_records(app: &TestApp) -> (RecordId, RecordId) {
    let profile = app.seed("u-1", json!({"name": "Ana"})).await;
    let messages = app.post_record("u-1", "messages", json!({"text": "see you at eight"})).await;
    assert_eq!(messages.status(), 201);
    let messages = messages.json::<Value>().await.unwrap()["record_id"].as_str().unwrap().to_owned();
    (profile.parse().unwrap(), messages.parse().unwrap())
}

#[tokio::test]
async fn a_receipt_for_one_record_opens_that_record_and_no_other() {
    let app = TestApp::start().await;
    let (profile, messages) = two_records(&app).await;
    let subject: SubjectId = "u-1".parse().unwrap();
    let region = app.boundary.region().clone();
    let profile_key = app.boundary.custody().data_key(&app.record_receipt(&subject, &profile, "profile").await).await;
    let profile_key = profile_key.unwrap();
    let opened =
        profile_key.open(&aad::record(&region, &subject, &profile, 1), &app.ciphertext(&profile.to_string()).await);
    assert_eq!(serde_json::from_slice::<Value>(&opened.unwrap()).unwrap(), json!({"name": "Ana"}));
    // The profile's key does not open the messages record, under any binding.
    let messages_ciphertext = app.ciphertext(&messages.to_string()).await;
    for version in [1, 2] {
        assert!(profile_key.open(&aad::record(&region, &subject, &messages, version), &messages_ciphertext).is_err());
    }
    // A receipt naming the messages record under the wrong category derives another key.
    let wrong = app.boundary.custody().data_key(&app.record_receipt(&subject, &messages, "profile").await).await;
    assert!(wrong.unwrap().open(&aad::record(&region, &subject, &messages, 1), &messages_ciphertext).is_err());
    // A receipt that names no record (its annex not given) opens nothing.
    let mut bare = app.record_receipt(&subject, &messages, "messages").await;
    bare = strip_annex(bare);
    assert!(matches!(app.boundary.custody().data_key(&bare).await, Err(KeyError::Receipt(_))));
    // Reads through the API go on working, with the record's own key.
    let read = app.get_record(DUBLIN, &profile.to_string()).await;
    assert_eq!(read.status(), 200);
}

/// A receipt with the annex of another entry: the log's receipt, rebuilt without its annex.
fn strip_annex(receipt: clover_log::Receipt) -> clover_log::Receipt {
    let other = clover_event::Annex::new(None, None, None, Some("another"), Some("u-1")).unwrap().with_version(Some(1));
    receipt.with_annex(other)
}

/// The subject's own key, as an earlier version of Clover sealed records with it: read from the
/// embedded custodian's key store and unwrapped with the region's KEK (what only a test, with
/// the custodian's files, can do).
async fn subject_key(app: &TestApp, subject: &SubjectId) -> DataKey {
    let hash = app.boundary.subject_hash(subject);
    let path = app.data_dir().join("custody").join("keys.db");
    let pool = sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(&path)).await.unwrap();
    let row = sqlx::query("SELECT kek_version, wrapped FROM data_keys WHERE subject = ?")
        .bind(&hash)
        .fetch_one(&pool)
        .await
        .unwrap();
    let version: i64 = row.get("kek_version");
    let wrapped: Vec<u8> = row.get("wrapped");
    pool.close().await;
    let version = u32::try_from(version).unwrap();
    let kek = app.boundary.custodian().unwrap().kek();
    let plain = kek.decrypt(version, &aad::data_key_by_hash(app.boundary.region(), &hash, version), &wrapped).unwrap();
    DataKey::from_slice(&plain).unwrap()
}

#[tokio::test]
async fn a_record_sealed_with_its_subjects_key_is_resealed_under_its_own_on_first_read() {
    let app = TestApp::start().await;
    let record: RecordId = app.seed("u-1", json!({"name": "Ana"})).await.parse().unwrap();
    let subject: SubjectId = "u-1".parse().unwrap();
    let region = app.boundary.region().clone();
    let binding = aad::record(&region, &subject, &record, 1);
    // What an earlier version wrote: the fields sealed with the subject's own key.
    let subject_key = subject_key(&app, &subject).await;
    let legacy = subject_key.seal(&binding, br#"{"name":"Ana (legacy)"}"#).unwrap();
    let store = app.boundary.store();
    app.tamper(
        "UPDATE records SET ciphertext = ?, sealed_with = 0 WHERE record_id = ?",
        Some(&legacy),
        &record.to_string(),
    )
    .await;
    assert_eq!(store.records_sealed_with_subject_keys(None, 10).await.unwrap().len(), 1);

    // Read through the API: the custodian re-seals it, and the read answers the fields.
    let read = app.get_record(DUBLIN, &record.to_string()).await;
    assert_eq!(read.status(), 200);
    assert_eq!(read.json::<Value>().await.unwrap()["fields"]["name"], "Ana (legacy)");
    let now = store.record(&record).await.unwrap().unwrap();
    assert_eq!(now.sealed_with, SealedWith::RecordKey);
    assert_ne!(now.ciphertext, legacy);
    assert!(subject_key.open(&binding, &now.ciphertext).is_err(), "the subject's key no longer opens it");
    assert!(store.records_sealed_with_subject_keys(None, 10).await.unwrap().is_empty());
    // And it reads again, under its own key.
    let again = app.get_record(DUBLIN, &record.to_string()).await;
    assert_eq!(again.json::<Value>().await.unwrap()["fields"]["name"], "Ana (legacy)");
}

#[tokio::test]
async fn the_migration_reseals_every_record_while_reads_go_on() {
    let app = TestApp::start().await;
    let region = app.boundary.region().clone();
    // 120 records of 3 subjects, all sealed as an earlier version sealed them.
    let mut records = Vec::new();
    for s in 0..3 {
        let subject: SubjectId = format!("u-{s}").parse().unwrap();
        assert!(app.put_subject(subject.as_str()).await.status().is_success());
        let key = subject_key(&app, &subject).await;
        for r in 0..40 {
            let name = format!("n-{s}-{r}");
            let response = app.post_record(subject.as_str(), "profile", json!({"name": name})).await;
            let record: RecordId =
                response.json::<Value>().await.unwrap()["record_id"].as_str().unwrap().parse().unwrap();
            let legacy = key
                .seal(
                    &aad::record(&region, &subject, &record, 1),
                    serde_json::to_vec(&json!({"name": name})).unwrap().as_slice(),
                )
                .unwrap();
            app.tamper(
                "UPDATE records SET ciphertext = ?, sealed_with = 0 WHERE record_id = ?",
                Some(&legacy),
                &record.to_string(),
            )
            .await;
            records.push((record, name));
        }
    }
    let store = app.boundary.store();
    assert_eq!(store.records_sealed_with_subject_keys(None, 1000).await.unwrap().len(), 120);

    // An agent may not start it; a key custodian may.
    let refused = app.client(DUBLIN).post(app.url("/v1/keys/reseal")).bearer_auth(app.token()).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let started = app
        .client(DUBLIN)
        .post(app.url("/v1/keys/reseal"))
        .bearer_auth(app.key_custodian_token("dublin-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let started: Value = started.json().await.unwrap();
    assert_eq!(started["resealing"]["total"], 120);

    // Reads go on meanwhile, every one answered.
    let mut progress;
    let mut round = 0;
    loop {
        let (record, name) = &records[(round * 7) % records.len()];
        let read = app.get_record(DUBLIN, &record.to_string()).await;
        assert_eq!(read.status(), 200);
        assert_eq!(read.json::<Value>().await.unwrap()["fields"]["name"], name.as_str());
        round += 1;
        progress = app
            .client(DUBLIN)
            .get(app.url("/v1/keys/reseal"))
            .bearer_auth(app.key_custodian_token("dublin-1"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        if progress["resealing"]["done"] == true {
            break;
        }
        assert!(round < 10_000, "the re-sealing does not end: {progress}");
    }
    assert_eq!(progress["resealing"]["error"], Value::Null, "{progress}");
    assert_eq!(progress["resealing"]["failed"], 0, "{progress}");
    // Reads re-sealed some themselves; the migration did the rest.
    let by_migration = progress["resealing"]["resealed"].as_u64().unwrap();
    assert!(by_migration > 0 && by_migration <= 120, "{progress}");

    // No record is sealed with its subject's key any more, and every one reads.
    assert!(store.records_sealed_with_subject_keys(None, 1000).await.unwrap().is_empty());
    for s in 0..3 {
        let subject: SubjectId = format!("u-{s}").parse().unwrap();
        let key = subject_key(&app, &subject).await;
        for (record, _) in records.iter().skip(s * 40).take(40) {
            let row = store.record(record).await.unwrap().unwrap();
            assert_eq!(row.sealed_with, SealedWith::RecordKey);
            assert!(key.open(&aad::record(&region, &subject, record, 1), &row.ciphertext).is_err());
        }
    }
    for (record, name) in &records {
        let read = app.get_record(DUBLIN, &record.to_string()).await;
        assert_eq!(read.json::<Value>().await.unwrap()["fields"]["name"], name.as_str());
    }
    // Each batch has its entry in the log.
    let entries = crate::harness::log_entries(app.boundary.log()).await;
    let batches = entries.iter().filter(|e| e["action"] == "reseal-batch").count();
    assert_eq!(u64::try_from(batches).unwrap(), progress["resealing"]["batches"].as_u64().unwrap());
    assert!(batches >= 1);
}

/// The custodian in the boundary's process checks its receipts against the boundary's log, as
/// one in its own process does against the signed log: a receipt whose entry is not the log's
/// at its index (made by another log: what a swapped entry would give), or that is not recent,
/// opens nothing.
/// The embedded custodian checks a receipt made in the boundary's process as one in its own
/// process checks it: the entry is the log's at its index, recent, and about the permit's
/// subject (its tag made with their tag key).
#[tokio::test]
async fn the_embedded_custodian_checks_receipts_against_the_log() {
    let app = TestApp::start().await;
    let record: RecordId = app.seed("u-1", json!({"name": "Ana"})).await.parse().unwrap();
    let subject: SubjectId = "u-1".parse().unwrap();
    let custody = app.boundary.custody();
    // The honest receipt works.
    assert!(custody.data_key(&app.record_receipt(&subject, &record, "profile").await).await.is_ok());

    // Another log (same kind of entry, appended elsewhere): its receipt's entry is not this
    // log's at that index.
    let dir = tempfile::tempdir().unwrap();
    let signer = clover_tlog::note::SigningKey::generate("other.test", clover_tlog::note::TYPE_ED25519).unwrap();
    let other = clover_log::Log::open(dir.path(), signer, clover_log::LogOptions::default()).unwrap();
    let annex = clover_event::Annex::new(None, None, None, Some(&record.to_string()), Some("u-1"))
        .unwrap()
        .with_version(Some(1));
    let mut event = clover_event::Event::decode(&app.boundary.log().entry(0).await.unwrap()).unwrap();
    event.kind = clover_event::EventKind::Write;
    event.action = Some("write".into());
    event.decision = Some(clover_event::EventDecision { effect: "allow".into(), view: None, policies: vec![] });
    event.category = Some("profile".into());
    event.annex = Some(annex.commitment());
    event.time = time::OffsetDateTime::now_utc().unix_timestamp();
    let foreign = other.append_permitted(&event, app.permit(&subject)).await.unwrap().with_annex(annex.clone());
    let refused = custody.data_key(&foreign).await;
    assert!(matches!(&refused, Err(KeyError::Receipt(m)) if m.contains("not the one the log holds")), "{refused:?}");

    // An entry of this log, recent, whose subject tag is not the permit subject's (another
    // subject's, or no one's): a permit for u-1 does not open a key on an entry about u-2.
    app.seed("u-2", json!({"name": "Bo"})).await;
    for tag in [app.tag(&"u-2".parse().unwrap()).await, clover_event::SubjectTag::random().unwrap()] {
        event.subject = Some(tag);
        let receipt =
            app.boundary.log().append_permitted(&event, app.permit(&subject)).await.unwrap().with_annex(annex.clone());
        let refused = custody.data_key(&receipt).await;
        assert!(
            matches!(&refused, Err(KeyError::Receipt(m)) if m.contains("not about the subject of its permit")),
            "{refused:?}"
        );
    }
    event.subject = Some(app.tag(&subject).await);
    let honest =
        app.boundary.log().append_permitted(&event, app.permit(&subject)).await.unwrap().with_annex(annex.clone());
    assert!(custody.data_key(&honest).await.is_ok());

    // An entry of this log, but old: refused as not recent.
    event.time -= 3600;
    let old = app.boundary.log().append_permitted(&event, app.permit(&subject)).await.unwrap().with_annex(annex);
    let refused = custody.data_key(&old).await;
    assert!(matches!(&refused, Err(KeyError::Receipt(m)) if m.contains("not recent")), "{refused:?}");
}

/// Metadata an earlier version sealed directly under a KEK version is re-sealed under the
/// subject's own key at start-up (the custodian opens and seals it): a rotation that retires
/// that KEK version no longer makes the subject count as a minor for want of it.
#[tokio::test]
async fn legacy_metadata_is_resealed_at_start_up_and_survives_a_rotation() {
    let app = TestApp::start().await;
    let subject: SubjectId = "u-adult".parse().unwrap();
    let put = app
        .client(DUBLIN)
        .put(app.url("/v1/subjects/u-adult"))
        .bearer_auth(app.token())
        .json(&json!({"home_region": "eu", "birth_date": "1990-04-02"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    // What an earlier version wrote: the metadata sealed with KEK v1 itself, its version first.
    let plain =
        serde_json::to_vec(&clover_keys::SubjectMetadata { adult_on: Some(time::macros::date!(2006 - 04 - 02)) })
            .unwrap();
    let kek = app.boundary.custodian().unwrap().kek().clone();
    let mut legacy = 1u32.to_be_bytes().to_vec();
    legacy.extend(kek.encrypt(1, &aad::subject_metadata(app.boundary.region(), &subject, 1), &plain).unwrap());
    app.tamper("UPDATE subjects SET metadata = ? WHERE subject_id = ?", Some(&legacy), "u-adult").await;
    let facts = app.boundary.custody().subject_facts(&subject, &legacy).await.unwrap();
    assert!(!facts.minor, "the old format still reads");

    // A restart re-seals it under the subject's own key, and logs that it did.
    let app = app.restart().await;
    let row = app.boundary.store().subject(&subject).await.unwrap().unwrap();
    assert_ne!(row.metadata, legacy);
    assert_eq!(row.metadata.get(..4), Some(&[0xff_u8; 4][..]));
    assert!(!app.boundary.custody().subject_facts(&subject, &row.metadata).await.unwrap().minor);
    let entries = crate::harness::log_entries(app.boundary.log()).await;
    assert!(entries.iter().any(|e| e["action"] == "reseal-metadata"), "no reseal-metadata entry");

    // A rotation retires KEK v1; the subject is still an adult.
    let started = app
        .client(DUBLIN)
        .post(app.url("/v1/keys/rotate"))
        .bearer_auth(app.key_custodian_token("dublin-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let keys: Value = app
            .client(DUBLIN)
            .get(app.url("/v1/keys"))
            .bearer_auth(app.key_custodian_token("dublin-1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if keys["rotation"]["done"] == true {
            assert_eq!(keys["rotation"]["retired"], json!([1]), "{keys}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{keys}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!app.boundary.custody().subject_facts(&subject, &row.metadata).await.unwrap().minor);
}
