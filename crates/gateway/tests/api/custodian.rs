//! A custodian in its own process: the boundary holds no key, and the custodian hands one out
//! only for a log entry that it finds, allowed, in the boundary's signed log.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clover_custodian::CacheOptions;
use clover_custodian::{CustodianOptions, CustodianServer, LogVerifier, open_dir, router};
use clover_keys::{DataKey, aad};
use clover_model::{RecordId, SubjectId};
use serde_json::{Value, json};

use crate::harness::{DUBLIN, SINGAPORE, TestApp, VIRGINIA, files, opening_of, problem};

struct Remote {
    app: TestApp,
    url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    _database: clover_testkit::TestDatabase,
}

/// A boundary whose keys are held by a custodian server on another port.
async fn start() -> Remote {
    start_with_egress(false).await
}

/// [`start`], the custodian treating transfers by the boundary's own destinations and rules
/// (`--views clover.toml`) when `egress`, by none otherwise.
async fn start_with_egress(egress: bool) -> Remote {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = TestApp::start_with(|c| c.keys.custodian = Some(url.clone())).await;
    let database = clover_testkit::TestDatabase::create().await;
    let options = CustodianOptions {
        dir: dir.path().join("custodian"),
        region: "eu".parse().unwrap(),
        pkcs11: None,
        cache: CacheOptions::default(),
        // Its key store in PostgreSQL: the separate custodian's `--store`.
        store: Some(database.url.clone()),
    };
    // It makes the pseudonymised views by the boundary's own rules (`--views clover.toml`).
    let views = clover_model::ViewRules::new(app.boundary.config().views.clone());
    let rules = if egress {
        clover_custodian::EgressRules {
            destinations: app.boundary.config().destinations.clone(),
            rules: clover_egress::TransferRules::new(app.boundary.config().transfer_rules.clone()),
        }
    } else {
        clover_custodian::EgressRules::default()
    };
    let custodian = Arc::new(open_dir(&options).await.unwrap().with_views(views).with_egress(rules));
    let verifier = LogVerifier::new(&app.url(""), app.boundary.log_vkey().clone());
    let admin = clover_custodian::admin_token(&options.dir).unwrap();
    tokio::spawn(async move { axum::serve(listener, router(CustodianServer::new(custodian, verifier, &admin))).await });
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    Remote { app, url, http, _dir: dir, _database: database }
}

impl Remote {
    /// Presents the entry at `index` as a receipt for subject `u-1`'s key.
    async fn call(&self, op: &str, index: u64, entry: &[u8]) -> reqwest::Response {
        self.call_for("u-1", op, index, entry).await
    }

    /// Presents the entry at `index` as a receipt for `subject`'s key.
    async fn call_for(&self, subject: &str, op: &str, index: u64, entry: &[u8]) -> reqwest::Response {
        let subject_hash = self.app.boundary.subject_hash(&subject.parse().unwrap());
        let opening = opening_of(&self.app.boundary, entry).await;
        self.http
            .post(format!("{}/v1/data-keys/{op}", self.url))
            .json(
                &json!({"index": index, "entry": B64.encode(entry), "subject_hash": subject_hash, "opening": opening}),
            )
            .send()
            .await
            .unwrap()
    }

    async fn entry(&self, index: u64) -> Vec<u8> {
        self.app.boundary.log().entry(index).await.unwrap()
    }

    /// The access of the entry at `index` (about `u-1`) logged anew by the boundary, with a
    /// fresh tag of `u-1`'s: an entry in the signed log that no custodian has been shown yet.
    async fn logged_again(&self, index: u64) -> (u64, Vec<u8>) {
        let mut event = clover_event::Event::decode(&self.entry(index).await).unwrap();
        let subject: SubjectId = "u-1".parse().unwrap();
        let tags = self.app.boundary.custody().subject_tag_key(&subject, false).await.unwrap().unwrap();
        event.subject = Some(tags.tag().unwrap());
        let index = self.app.boundary.log().append(&event).await.unwrap();
        (index, self.entry(index).await)
    }

    /// The custodian's journal.
    async fn journal(&self) -> Vec<Value> {
        self.http.get(format!("{}/v1/journal", self.url)).send().await.unwrap().json().await.unwrap()
    }
}

#[tokio::test]
async fn the_boundary_reads_through_the_custodian_and_holds_no_key() {
    let remote = start().await;
    let app = &remote.app;
    let record = app.seed("u-1", json!({"name": "Ana"})).await;
    let read = app.get_record(DUBLIN, &record).await;
    assert_eq!(read.status(), 200);
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["fields"]["name"], "Ana");
    let read_index = read["log_index"].as_u64().unwrap();

    // The boundary's data directory has no key store, and no file of it holds a data key.
    assert!(files(&app.data_dir()).iter().all(|(f, _)| !f.to_string_lossy().contains("keys.db")));

    // The custodian's journal: the registration's key made, the record's write, the read;
    // each with the log index and purpose of its entry.
    let journal = remote.journal().await;
    let actions: Vec<&str> = journal.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["write", "write", "read"]);
    assert_eq!(journal[2]["log_index"].as_u64().unwrap(), read_index);
    assert_eq!(journal[2]["purpose"], "legal");

    // The key the custodian hands out for such a read (logged anew: the boundary used that
    // entry, and a receipt opens its key once) opens the record.
    let (read_index, entry) = remote.logged_again(read_index).await;
    let answer = remote.call("fetch", read_index, &entry).await;
    assert_eq!(answer.status(), 200);
    let key: Value = answer.json().await.unwrap();
    let key = DataKey::from_slice(&B64.decode(key["key"].as_str().unwrap()).unwrap()).unwrap();
    let ciphertext = app.ciphertext(&record).await;
    let (subject, record_id): (SubjectId, RecordId) = ("u-1".parse().unwrap(), record.parse().unwrap());
    let opened = key.open(&aad::record(app.boundary.region(), &subject, &record_id, 1), &ciphertext).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&opened).unwrap(), json!({"name": "Ana"}));
}

#[tokio::test]
async fn the_custodian_refuses_what_the_signed_log_does_not_allow() {
    let remote = start().await;
    let app = &remote.app;
    let record = app.seed("u-1", json!({"name": "Ana"})).await;
    let read: Value = app.get_record(DUBLIN, &record).await.json().await.unwrap();
    // The same read logged anew, so that what follows is refused for what it is, not because
    // the boundary used the read's entry already; and another, kept for after the erasure.
    let (index, entry) = remote.logged_again(read["log_index"].as_u64().unwrap()).await;
    let (earlier_index, earlier) = remote.logged_again(index).await;

    // An altered entry (another subject tag) is not in the log.
    let event: Value = serde_json::from_slice(&entry).unwrap();
    let tag = event["subject"]["tag"].as_str().unwrap();
    let text = String::from_utf8(entry.clone()).unwrap();
    let forged = text.replace(tag, &"0".repeat(64));
    assert_ne!(forged, text);
    assert_eq!(remote.call("fetch", index, forged.as_bytes()).await.status(), 403);
    // The real entry, presented for another registered subject's key: the entry's tag is not
    // theirs, and the custodian refuses (before format 2 bound the receipt by the subject hash
    // in the public entry).
    app.seed("u-2", json!({"name": "Bo"})).await;
    let refused = remote.call_for("u-2", "fetch", index, &entry).await;
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert!(body.to_string().contains("not about the subject"), "{body}");
    // A malformed subject hash is refused too.
    let malformed = remote
        .http
        .post(format!("{}/v1/data-keys/fetch", remote.url))
        .json(&json!({"index": index, "entry": B64.encode(&entry), "subject_hash": "u-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 403);
    // A real entry at the wrong index is refused. Beyond the log, nothing is released either,
    // but the custodian cannot tell an index never to be reached from a log (a gateway's view
    // of a shared one) that has not caught up yet: after waiting for it, it answers 503, to
    // try again (before, 403: reads refused for a second after PostgreSQL restarted).
    assert_eq!(remote.call("fetch", index - 1, &entry).await.status(), 403);
    assert_eq!(remote.call("fetch", index + 1000, &entry).await.status(), 503);
    // A read's entry does not allow destroying the key, nor creating one.
    assert_eq!(remote.call("destroy", index, &entry).await.status(), 403);
    assert_eq!(remote.call("create", index, &entry).await.status(), 403);
    // Key and configuration entries name no subject's data.
    assert_eq!(remote.call("fetch", 0, &remote.entry(0).await).await.status(), 403);
    // A denied read is in the log, but it is a denial.
    let denied = problem(app.get_record(SINGAPORE, &record).await, 403, "forbidden").await;
    let denied = denied["log_index"].as_u64().unwrap();
    assert_eq!(remote.call("fetch", denied, &remote.entry(denied).await).await.status(), 403);
    // The real thing works.
    assert_eq!(remote.call("fetch", index, &entry).await.status(), 200);

    // After an erasure through the boundary, the key is gone, and an entry from before the
    // erasure unlocks nothing, not even once the subject id is registered again (a new key).
    let erased = app.client(DUBLIN).delete(app.url("/v1/subjects/u-1")).bearer_auth(app.token()).send().await.unwrap();
    assert_eq!(erased.status(), 200);
    let erase_index = erased.json::<Value>().await.unwrap()["log_index"].as_u64().unwrap();
    problem(app.get_record(DUBLIN, &record).await, 404, "not-found").await;
    assert_eq!(remote.call("fetch", index, &entry).await.status(), 403);
    let again = app.seed("u-1", json!({"name": "Someone else"})).await;
    assert_eq!(app.get_record(DUBLIN, &again).await.status(), 200);
    let earlier_life = remote.call("fetch", earlier_index, &earlier).await;
    assert_eq!(earlier_life.status(), 403, "a read from the earlier life, never presented before");
    let old_erase = remote.entry(erase_index).await;
    assert_eq!(remote.call("destroy", erase_index, &old_erase).await.status(), 403, "an erasure replayed");
    assert_eq!(app.get_record(DUBLIN, &again).await.status(), 200, "the new key is intact");

    // Key administration is the custodian's, not the boundary's: a key custodian is told so;
    // anyone else is refused first (decided and logged), and learns nothing of where the keys
    // are (before: 409 to anyone, undecided).
    let keys = app.client(DUBLIN).get(app.url("/v1/keys")).bearer_auth(app.token()).send().await.unwrap();
    let refused = problem(keys, 403, "forbidden").await;
    assert!(refused["log_index"].as_u64().is_some(), "{refused}");
    for (method, path) in [(reqwest::Method::GET, "/v1/keys"), (reqwest::Method::POST, "/v1/keys/rotate")] {
        let mut claims = app.claims("eu", "dublin-1", 3600);
        claims.roles = vec!["key-custodian".into()];
        let keys =
            app.client(DUBLIN).request(method, app.url(path)).bearer_auth(app.mint(&claims)).send().await.unwrap();
        problem(keys, 409, "custodian-elsewhere").await;
    }
}

/// A receipt opens its key once: the entry of a read the boundary made (and the custodian
/// honoured), presented to the custodian again, is refused with 403 and a message that says so,
/// and nothing is handed out or journalled.
#[tokio::test]
async fn a_receipt_presented_twice_is_refused_the_second_time() {
    let remote = start().await;
    let app = &remote.app;
    let record = app.seed("u-1", json!({"name": "Ana"})).await;
    let read = app.get_record(DUBLIN, &record).await;
    assert_eq!(read.status(), 200, "the first use, through the boundary");
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["fields"]["name"], "Ana");
    let index = read["log_index"].as_u64().unwrap();
    let entry = remote.entry(index).await;
    let journal = remote.journal().await;

    let again = remote.call("fetch", index, &entry).await;
    assert_eq!(again.status(), 403);
    let body: Value = again.json().await.unwrap();
    let expected = format!("the receipt for log entry {index} was already used: a receipt opens its key once");
    assert!(body["error"].as_str().unwrap().ends_with(&expected), "{body}");
    assert!(body.get("key").is_none());
    assert_eq!(remote.journal().await, journal, "nothing handed out");

    // Each read through the boundary is an entry of its own, and goes on working.
    let read: Value = app.get_record(DUBLIN, &record).await.json().await.unwrap();
    assert_eq!(read["fields"]["name"], "Ana");
    assert_ne!(read["log_index"].as_u64().unwrap(), index);
}

/// A registration that finds the subject's key already made (one cut short after the key was
/// made, or a race) fetches it with an entry of its own: the custodian used up the
/// registration's receipt on the creation it refused (409).
#[tokio::test]
async fn a_registration_that_finds_its_key_made_fetches_it_with_an_entry_of_its_own() {
    let remote = start().await;
    let app = &remote.app;
    assert_eq!(app.put_subject("u-1").await.status(), 201);
    // The key in custody, and no subject: the first registration cut short.
    app.tamper("DELETE FROM subjects WHERE subject_id = ?", None, "u-1").await;
    let registered = app.put_subject("u-1").await;
    assert_eq!(registered.status(), 201);
    let registration = registered.json::<Value>().await.unwrap()["log_index"].as_u64().unwrap();
    // The custodian journalled the first creation and the fetch, under an entry after the
    // registration's.
    let journal = remote.journal().await;
    let logged: Vec<(&str, u64)> =
        journal.iter().map(|r| (r["action"].as_str().unwrap(), r["log_index"].as_u64().unwrap())).collect();
    assert_eq!(logged.len(), 2, "{journal:?}");
    assert_eq!(logged[1], ("write", registration + 1));
    // The key is the subject's: a record written with it reads back.
    let record = app.post_record("u-1", "profile", json!({"name": "Ana"})).await;
    assert_eq!(record.status(), 201);
    let record = record.json::<Value>().await.unwrap()["record_id"].as_str().unwrap().to_owned();
    let read: Value = app.get_record(DUBLIN, &record).await.json().await.unwrap();
    assert_eq!(read["fields"]["name"], "Ana");
}

#[tokio::test]
async fn the_custodian_refuses_a_log_inconsistent_with_what_it_verified_before() {
    let app = TestApp::start().await;
    let record = app.seed("u-1", json!({"name": "Ana"})).await;
    let early = clover_tlog::checkpoint::Checkpoint::parse(
        &clover_tlog::note::Note::parse(&app.boundary.log().checkpoint()).unwrap().text,
    )
    .unwrap();
    let read: Value = app.get_record(DUBLIN, &record).await.json().await.unwrap();
    let index = read["log_index"].as_u64().unwrap();
    let entry = app.boundary.log().entry(index).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("log-state");
    let subject_hash = app.boundary.subject_hash(&"u-1".parse().unwrap());
    let opening = opening_of(&app.boundary, &entry).await;
    let opening = opening.as_ref();
    let verifier = |state: &std::path::Path| {
        LogVerifier::new(&app.url(""), app.boundary.log_vkey().clone()).with_state(state.to_owned()).unwrap()
    };

    // An earlier checkpoint it verified: the log grew from it consistently; the state moves on.
    std::fs::write(&state, format!("{} {}\n", early.size, early.root.to_base64())).unwrap();
    assert!(verifier(&state).check(index, &entry, &subject_hash, opening).await.is_ok());
    let kept = std::fs::read_to_string(&state).unwrap();
    assert_ne!(kept, format!("{} {}\n", early.size, early.root.to_base64()));

    // A different root at that size (what it would have seen of a fork): refused.
    let forked = clover_tlog::hash::leaf_hash(b"another history").to_base64();
    std::fs::write(&state, format!("{} {forked}\n", early.size)).unwrap();
    let refused = verifier(&state).check(index, &entry, &subject_hash, opening).await;
    assert!(matches!(refused, Err(clover_custodian::ReceiptError::Inconsistent { .. })), "{refused:?}");
    // A larger log than the one now shown (a shrink): refused.
    std::fs::write(&state, format!("{} {forked}\n", early.size + 1000)).unwrap();
    assert!(verifier(&state).check(index, &entry, &subject_hash, opening).await.is_err());
}

/// Receipts checked at once fetch their proofs at once: the proof against the older checkpoint
/// may be checked after one against a newer checkpoint. That is not a shrink when the newer
/// extends the older (before: refused as inconsistent, and the read answered 500); a stale
/// checkpoint that the verified one does not extend is still refused.
#[tokio::test]
async fn the_custodian_accepts_an_older_checkpoint_that_the_one_it_verified_extends() {
    use axum::extract::State;
    use axum::routing::get;

    let app = TestApp::start().await;
    let record = app.seed("u-1", json!({"name": "Ana"})).await;
    let read: Value = app.get_record(DUBLIN, &record).await.json().await.unwrap();
    let index = read["log_index"].as_u64().unwrap();
    let entry = app.boundary.log().entry(index).await.unwrap();
    let http = app.client(DUBLIN);
    let inclusion = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let stale = inclusion(app.url(&format!("/v1/log/proof/inclusion?index={index}"))).await;
    let stale_size = serde_json::from_str::<Value>(&stale).unwrap()["size"].as_u64().unwrap();

    // The log grows and is verified at its new size first.
    for _ in 0..3 {
        assert_eq!(app.get_record(DUBLIN, &record).await.status(), 200);
    }
    let newer: Value = app.get_record(DUBLIN, &record).await.json().await.unwrap();
    let newer_index = newer["log_index"].as_u64().unwrap();
    let newer_entry = app.boundary.log().entry(newer_index).await.unwrap();

    // A log server that answers inclusion proofs with the stale answer for the first entry and
    // passes everything else to the boundary.
    #[derive(Clone)]
    struct Upstream {
        base: String,
        stale: String,
        stale_index: u64,
        http: reqwest::Client,
    }
    async fn pass(
        State(up): State<Upstream>,
        uri: axum::http::Uri,
    ) -> ([(axum::http::HeaderName, &'static str); 1], String) {
        let query = uri.query().unwrap_or_default();
        let body = if uri.path().ends_with("/inclusion") && query == format!("index={}", up.stale_index) {
            up.stale.clone()
        } else {
            up.http.get(format!("{}{}?{query}", up.base, uri.path())).send().await.unwrap().text().await.unwrap()
        };
        ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
    }
    let upstream = Upstream { base: app.url(""), stale, stale_index: index, http: http.clone() };
    let proxy = axum::Router::new()
        .route("/v1/log/proof/inclusion", get(pass))
        .route("/v1/log/proof/consistency", get(pass))
        .with_state(upstream);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, proxy).await });

    let verifier = LogVerifier::new(&proxy_url, app.boundary.log_vkey().clone());
    let subject_hash = app.boundary.subject_hash(&"u-1".parse().unwrap());
    let opening = opening_of(&app.boundary, &entry).await;
    let opening = opening.as_ref();
    let newer_opening = opening_of(&app.boundary, &newer_entry).await;
    let (newer_access, _) =
        verifier.check(newer_index, &newer_entry, &subject_hash, newer_opening.as_ref()).await.unwrap();
    assert_eq!(newer_access.log_index(), newer_index);
    let older = verifier.check(index, &entry, &subject_hash, opening).await;
    assert!(older.is_ok(), "an older checkpoint that the verified one extends: {older:?} (stale size {stale_size})");

    // The same stale answer to a verifier that remembers another history at a larger size: the
    // consistency proof fails, and the receipt is refused.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("log-state");
    let forked = clover_tlog::hash::leaf_hash(b"another history").to_base64();
    std::fs::write(&state, format!("{} {forked}\n", stale_size + 2)).unwrap();
    let forked_verifier =
        LogVerifier::new(&proxy_url, app.boundary.log_vkey().clone()).with_state(state.clone()).unwrap();
    let refused = forked_verifier.check(index, &entry, &subject_hash, opening).await;
    assert!(matches!(refused, Err(clover_custodian::ReceiptError::Inconsistent { .. })), "{refused:?}");
}

/// Before a decision the boundary needs to know whether the subject is a minor. The custodian
/// used to open their metadata for anyone holding the gateway's certificate, unlogged, and hand
/// back the date they come of age (their birth date to within a day); it now answers the fact
/// policy needs, and nothing opens the metadata over the wire.
#[tokio::test]
async fn the_custodian_answers_facts_about_a_subject_never_their_metadata() {
    let remote = start().await;
    let app = &remote.app;
    assert_eq!(app.put_subject("u-1").await.status(), 201); // born 2011-05-01: a minor
    let pool = app.db().await;
    let metadata: Vec<u8> =
        sqlx::query_scalar("SELECT metadata FROM subjects WHERE subject_id = 'u-1'").fetch_one(&pool).await.unwrap();
    pool.close().await;
    let hash = app.boundary.subject_hash(&"u-1".parse().unwrap());
    let body = json!({"subject": "u-1", "subject_hash": hash, "data": B64.encode(&metadata)});
    let facts = remote.http.post(format!("{}/v1/metadata/facts", remote.url)).json(&body).send().await.unwrap();
    assert_eq!(facts.status(), 200);
    let facts: Value = facts.json().await.unwrap();
    assert_eq!(facts, json!({"minor": true}), "the fact, and nothing else");
    let open = remote.http.post(format!("{}/v1/metadata/open", remote.url)).json(&body).send().await.unwrap();
    assert_eq!(open.status(), 404, "no route opens metadata any more");
    // The boundary decides with the fact: a minor's data is not read for analytics.
    assert!(app.boundary.custody().subject_facts(&"u-1".parse().unwrap(), &metadata).await.unwrap().minor);
}

/// A custodian in its own process hands out the key of the record version the receipt's annex
/// names, checked against the entry's commitment: a read of a subject's profile does not open
/// their messages, whatever record the boundary claims the entry is for.
#[tokio::test]
async fn a_read_of_one_record_opens_no_other_record_of_the_subject() {
    let remote = start().await;
    let app = &remote.app;
    let profile = app.seed("u-1", json!({"name": "Ana"})).await;
    let messages = app.post_record("u-1", "messages", json!({"text": "see you at eight"})).await;
    let messages = messages.json::<Value>().await.unwrap()["record_id"].as_str().unwrap().to_owned();
    let read: Value = app.get_record(DUBLIN, &profile).await.json().await.unwrap();
    // The read's access, logged anew (the boundary used the read's own receipt).
    let (index, entry) = remote.logged_again(read["log_index"].as_u64().unwrap()).await;
    let subject_hash = app.boundary.subject_hash(&"u-1".parse().unwrap());
    let opening = opening_of(&app.boundary, &entry).await.unwrap();
    let ask = |opening: Value| {
        remote
            .http
            .post(format!("{}/v1/data-keys/fetch", remote.url))
            .json(
                &json!({"index": index, "entry": B64.encode(&entry), "subject_hash": subject_hash, "opening": opening}),
            )
            .send()
    };

    // The opening rewritten to name the messages record, or another version, or left out.
    let mut other_record = serde_json::to_value(&opening).unwrap();
    other_record["record"] = json!(messages);
    let mut other_version = serde_json::to_value(&opening).unwrap();
    other_version["version"] = json!(2);
    for (forged, why) in [
        (other_record, "not the one its entry commits to"),
        (other_version, "not the one its entry commits to"),
        (Value::Null, "does not name the record"),
    ] {
        let refused = ask(forged).await.unwrap();
        assert_eq!(refused.status(), 403);
        let body: Value = refused.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains(why), "{body}");
    }

    // The true opening: the profile's key, which opens the profile and not the messages.
    let answer: Value = ask(serde_json::to_value(&opening).unwrap()).await.unwrap().json().await.unwrap();
    let key = DataKey::from_slice(&B64.decode(answer["key"].as_str().unwrap()).unwrap()).unwrap();
    let subject: SubjectId = "u-1".parse().unwrap();
    let region = app.boundary.region();
    let open = |record: &str, ciphertext: &[u8]| {
        key.open(&aad::record(region, &subject, &record.parse::<RecordId>().unwrap(), 1), ciphertext).is_ok()
    };
    assert!(open(&profile, &app.ciphertext(&profile).await));
    assert!(!open(&messages, &app.ciphertext(&messages).await));
}

/// Reads `record` from Virginia as a US employee for `purpose` (a transfer purpose, with its
/// role): a pseudonymised view.
async fn read_from_virginia(app: &TestApp, record: &str, purpose: &str) -> Value {
    let mut claims = app.claims("us", "virginia-1", 600);
    claims.roles = vec![purpose.to_owned()];
    let read = app
        .client(VIRGINIA)
        .get(app.url(&format!("/v1/records/{record}")))
        .bearer_auth(app.mint(&claims))
        .header("X-Clover-Purpose", purpose)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["view"], "pseudonymised", "{read}");
    read
}

/// A pseudonym is a keyed token of a value: with the gateway's client certificate alone, the
/// custodian used to answer one for any input, unlogged, so that low-entropy values could be
/// reversed by dictionary. It now answers only for the receipt of a logged read granted a
/// pseudonymised view, for that read's purpose and region, journals each against the read, and
/// gives one receipt no more than a record's fields need.
#[tokio::test]
async fn a_pseudonym_needs_the_receipt_of_a_pseudonymised_read() {
    let remote = start().await;
    let app = &remote.app;
    // An adult: a minor's data does not leave the region, not even pseudonymised.
    let adult = json!({"home_region": "eu", "birth_date": "1990-02-01"});
    let put = app.client(DUBLIN).put(app.url("/v1/subjects/u-1")).bearer_auth(app.token()).json(&adult);
    assert_eq!(put.send().await.unwrap().status(), 201);
    let written = app.post_record("u-1", "profile", json!({"display_name": "Ana", "city": "Galway"})).await;
    assert_eq!(written.status(), 201);
    let written: Value = written.json().await.unwrap();
    let record = written["record_id"].as_str().unwrap().to_owned();
    let write_index = written["log_index"].as_u64().unwrap();

    // A pseudonymised read through the custodian: tokens, stable within the purpose and region,
    // unlinkable across purposes.
    let read = read_from_virginia(app, &record, "analytics").await;
    let token = read["fields"]["display_name"].as_str().unwrap().to_owned();
    assert!(token.starts_with("tok_"), "{read}");
    assert!(!read.to_string().contains("Ana") && !read.to_string().contains(&record), "{read}");
    // The city, which the profile's rules do not name, is dropped (the default rule).
    assert_eq!(read["fields"].as_object().unwrap().len(), 1, "{read}");
    let again = read_from_virginia(app, &record, "analytics").await;
    let safety = read_from_virginia(app, &record, "safety").await;
    for field in ["record_id", "subject_id"] {
        assert!(read[field].as_str().unwrap().starts_with("tok_"), "{read}");
        assert_eq!(again[field], read[field], "stable within a purpose");
        assert_ne!(safety[field], read[field], "unlinkable across purposes");
    }
    assert_eq!(again["fields"], read["fields"]);
    assert_ne!(safety["fields"]["display_name"], read["fields"]["display_name"]);

    // The custodian's journal: for the read, its view (made by the custodian, which opened the
    // record: no key left it, and named the record and the subject by tokens of its own), naming
    // the read's entry; never a value. The gateway asked for no token.
    let index = read["log_index"].as_u64().unwrap();
    let entry = remote.entry(index).await;
    let entry_hash = hex::encode(clover_tlog::hash::leaf_hash(&entry).0);
    let journal = remote.journal().await;
    let of_read: Vec<&Value> = journal.iter().filter(|r| r["log_index"].as_u64() == Some(index)).collect();
    let actions: Vec<&str> = of_read.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["view"], "{journal:?}");
    assert!(of_read.iter().all(|r| r["entry_hash"] == entry_hash.as_str() && r["purpose"] == "analytics"));
    let text = serde_json::to_string(&journal).unwrap();
    assert!(!text.contains("Ana") && !text.contains(&record), "{text}");

    // Asked directly, with the gateway's access to the custodian.
    let subject_hash = &app.boundary.subject_hash(&"u-1".parse().unwrap());
    let remote = &remote;
    let receipt = |index: u64, entry: Vec<u8>| async move {
        let opening = opening_of(&app.boundary, &entry).await;
        json!({"index": index, "entry": B64.encode(&entry), "subject_hash": subject_hash, "opening": opening})
    };
    let name = B64.encode(clover_custodian::id_input("record", &record));
    let ask = |body: Value| async move {
        let answer = remote.http.post(format!("{}/v1/pseudonym", remote.url)).json(&body).send().await.unwrap();
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.unwrap();
        (status, body)
    };
    let refused = |(status, body): (u16, Value), expected_status: u16, expected: &str| {
        assert_eq!(status, expected_status, "{body}");
        assert!(body["error"].as_str().unwrap().contains(expected), "{body}");
        assert!(body.get("token").is_none());
    };
    // No receipt.
    refused(
        ask(json!({"purpose": "analytics", "destination": "us", "input": name})).await,
        403,
        "a pseudonym is answered only for a logged, allowed read: the request carries no receipt",
    );
    // The read's receipt, for another purpose or region than the read's.
    let read_receipt = receipt(index, entry.clone()).await;
    for (purpose, destination, why) in [
        ("safety", "us", "it declared the purpose \"analytics\", not \"safety\""),
        ("analytics", "sg", "it came from region \"us\", not \"sg\""),
    ] {
        let body = json!({"receipt": read_receipt, "purpose": purpose, "destination": destination, "input": name});
        refused(ask(body).await, 403, why);
    }
    // A write's receipt.
    let write = json!({"receipt": receipt(write_index, remote.entry(write_index).await).await,
        "purpose": "analytics", "destination": "us", "input": name});
    refused(ask(write).await, 403, "a write has no fields to pseudonymise");
    // A read in full view, in the region.
    let full: Value = app.get_record(DUBLIN, &record).await.json().await.unwrap();
    let full_index = full["log_index"].as_u64().unwrap();
    let full = json!({"receipt": receipt(full_index, remote.entry(full_index).await).await,
        "purpose": "legal", "destination": "eu", "input": name});
    refused(ask(full).await, 403, "it did not grant a pseudonymised view");
    // An entry that is not the log's.
    let forged = String::from_utf8(entry.clone()).unwrap().replace("\"analytics\"", "\"safety\"");
    let forged = json!({"receipt": receipt(index, forged.into_bytes()).await,
        "purpose": "safety", "destination": "us", "input": name});
    assert_eq!(ask(forged).await.0, 403);

    // The read's receipt, for its purpose and region: a guess of a value the view tokenised, or
    // of a subject's id, gets no token (it would be a dictionary oracle for what the view hides).
    let asked = |input: &[u8]| json!({"receipt": read_receipt, "purpose": "analytics", "destination": "us", "input": B64.encode(input)});
    for guess in [&b"display_name\0\"Ana\""[..], b"clover/id/subject\0u-1", b"clover/id/record\0guess"] {
        refused(ask(asked(guess)).await, 403, "a token is answered only for the ids of the record it read");
    }
    // Its own ids: the tokens the view named them by; up to the bound, then 429.
    let record_input = clover_custodian::id_input("record", &record);
    let (status, body) = ask(asked(record_input.as_bytes())).await;
    assert_eq!((status, body["token"].as_str()), (200, read["record_id"].as_str()), "{body}");
    let subject_input = clover_custodian::id_input("subject-hash", subject_hash);
    let (status, body) = ask(asked(subject_input.as_bytes())).await;
    assert_eq!((status, body["token"].as_str()), (200, read["subject_id"].as_str()), "{body}");
    for _ in 2..clover_custodian::PSEUDONYMS_PER_RECEIPT {
        assert_eq!(ask(asked(record_input.as_bytes())).await.0, 200);
    }
    refused(
        ask(asked(record_input.as_bytes())).await,
        429,
        &format!(
            "the receipt for log entry {index} has had its {} pseudonyms",
            clover_custodian::PSEUDONYMS_PER_RECEIPT
        ),
    );
    // Every token answered journalled against the read, none of the refusals.
    let journal = remote.journal().await;
    let tokens = journal.iter().filter(|r| r["action"] == "pseudonym" && r["log_index"].as_u64() == Some(index));
    assert_eq!(tokens.count(), usize::try_from(clover_custodian::PSEUDONYMS_PER_RECEIPT).unwrap());
    for other in [write_index, full_index] {
        assert!(!journal.iter().any(|r| r["action"] == "pseudonym" && r["log_index"].as_u64() == Some(other)));
    }
    // The next read gets tokens of its own.
    assert_eq!(read_from_virginia(app, &record, "analytics").await["fields"]["display_name"], token.as_str());
}

/// The custodian's `POST /v1/views`, asked directly with the gateway's access: bad bytes, a
/// write's receipt, another subject's hash, or the read's receipt a second time get no view,
/// and the journal shows only the one the read was answered with.
#[tokio::test]
async fn a_view_is_made_once_for_its_own_read_and_nothing_else() {
    let remote = start().await;
    let app = &remote.app;
    for subject in ["u-1", "u-2"] {
        let adult = json!({"home_region": "eu", "birth_date": "1990-02-01"});
        let put =
            app.client(DUBLIN).put(app.url(&format!("/v1/subjects/{subject}"))).bearer_auth(app.token()).json(&adult);
        assert_eq!(put.send().await.unwrap().status(), 201);
    }
    let written: Value = app.post_record("u-1", "profile", json!({"display_name": "Ana"})).await.json().await.unwrap();
    let record = written["record_id"].as_str().unwrap().to_owned();
    let write_index = written["log_index"].as_u64().unwrap();
    let read = read_from_virginia(app, &record, "analytics").await;
    let index = read["log_index"].as_u64().unwrap();
    let ciphertext = B64.encode(app.ciphertext(&record).await);
    let aad = B64.encode(aad::record(app.boundary.region(), &"u-1".parse().unwrap(), &record.parse().unwrap(), 1));
    let remote = &remote;
    let receipt = |index: u64, subject: &'static str| async move {
        let entry = remote.entry(index).await;
        let opening = opening_of(&app.boundary, &entry).await;
        let subject_hash = app.boundary.subject_hash(&subject.parse().unwrap());
        json!({"index": index, "entry": B64.encode(&entry), "subject_hash": subject_hash, "opening": opening})
    };
    let ask = |body: Value| async move {
        let answer = remote.http.post(format!("{}/v1/views", remote.url)).json(&body).send().await.unwrap();
        let status = answer.status().as_u16();
        let text = answer.text().await.unwrap();
        assert!(!text.contains("Ana"), "{text}");
        status
    };
    let view =
        |receipt: Value, sealed: &str| json!({"receipt": receipt, "sealed": sealed, "aad": aad, "legacy": false});
    assert_eq!(ask(view(receipt(index, "u-1").await, "not base64!")).await, 400);
    assert_eq!(ask(view(receipt(write_index, "u-1").await, &ciphertext)).await, 403);
    assert_eq!(ask(view(receipt(index, "u-2").await, &ciphertext)).await, 403);
    assert_eq!(ask(view(receipt(index, "u-1").await, &ciphertext)).await, 403, "the read's view was made already");
    let journal = remote.journal().await;
    let views = journal.iter().filter(|r| r["action"] == "view").count();
    assert_eq!(views, 1, "{journal:?}");
}

/// A repatriation through a custodian in its own process: the registration and the write make
/// and derive keys against `repatriate` write entries; the verification's reads (access entries
/// of the action `repatriate`) get the key of their record version, and such an entry makes
/// no key.
#[tokio::test]
async fn a_repatriation_and_its_verification_go_through_the_custodian() {
    let remote = start().await;
    let app = &remote.app;
    let mut claims = app.claims("eu", "dublin-1", 3600);
    claims.roles = vec!["repatriation".into()];
    let token = app.mint(&claims);
    let fields = json!({"name": "Ana"});
    let batch = json!({"records": [{"source_key": "k-1", "ordinal": 0, "subject_id": "u-1", "home_region": "eu",
        "birth_date": "1990-01-01", "category": "profile", "fields": fields}]});
    let post = |path: &str, body: &Value| app.client(DUBLIN).post(app.url(path)).bearer_auth(&token).json(body).send();
    let copied: Value = post("/v1/repatriation/jobs/j/records", &batch).await.unwrap().json().await.unwrap();
    assert_eq!(copied["results"][0]["status"], "copied", "{copied}");
    let digest = copied["results"][0]["digest"].as_str().unwrap();
    let checks = json!({"category": "profile", "records": [{"source_key": "k-1", "digest": digest}]});
    let verified: Value = post("/v1/repatriation/jobs/j/verify", &checks).await.unwrap().json().await.unwrap();
    assert_eq!(verified["results"][0]["status"], "=", "{verified}");
    let read_index = verified["results"][0]["log_index"].as_u64().unwrap();

    let journal = remote.journal().await;
    let actions: Vec<&str> = journal.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["repatriate", "repatriate", "read"], "{journal:?}");

    // The verification's entry, shown again (logged anew), makes no key.
    let (index, entry) = remote.logged_again(read_index).await;
    let refused = remote.call("create", index, &entry).await;
    assert_eq!(refused.status(), 403, "{}", refused.text().await.unwrap());
}

/// Registers six adults of one class with a profile each, through the boundary.
async fn six_adults(app: &TestApp) {
    for n in 1..=6 {
        let put = app
            .client(DUBLIN)
            .put(app.url(&format!("/v1/subjects/a-{n}")))
            .bearer_auth(app.token())
            .json(&json!({"home_region": "eu", "birth_date": "1980-01-01"}))
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success());
        let fields = json!({"display_name": format!("NAME-{n}"), "country": "IE", "email": "x@example.ie"});
        assert_eq!(app.post_record(&format!("a-{n}"), "profile", fields).await.status(), 201);
    }
}

/// An analyst of the region asks for a transfer of profiles to `us-partners`; their token and
/// the answer.
async fn transfer_profiles(app: &TestApp) -> (String, reqwest::Response) {
    let mut claims = app.claims("eu", "dublin-1", 3600);
    claims.roles = vec!["analytics".into()];
    let token = app.mint(&claims);
    let body = json!({"destination": "us-partners", "purpose": "analytics", "categories": ["profile"]});
    let made = app.client(DUBLIN).post(app.url("/v1/transfers")).bearer_auth(&token).json(&body).send().await.unwrap();
    (token, made)
}

#[tokio::test]
async fn a_custodian_in_its_own_process_treats_a_transfer_by_its_own_rules_only() {
    let remote = start_with_egress(true).await;
    let app = &remote.app;
    six_adults(app).await;
    let (token, made) = transfer_profiles(app).await;
    assert_eq!(made.status(), 201);
    let made: Value = made.json().await.unwrap();
    assert_eq!(made["manifest"]["records"], 6, "{made}");
    let id = made["transfer"].as_str().unwrap();
    let text = app
        .client(DUBLIN)
        .get(app.url(&format!("/v1/transfers/{id}/records")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text.lines().count(), 6, "{text}");
    assert!(!text.contains("NAME-") && !text.contains("example.ie") && !text.contains("a-1"), "{text}");

    // Straight to the custodian: the transfer's start entry opens records of its categories
    // only; an access entry is no transfer receipt; an entry that is not in the log opens nothing.
    let entries = crate::harness::log_entries(app.boundary.log()).await;
    let started = entries.iter().position(|e| e["transfer"]["stage"] == "started").unwrap() as u64;
    let entry = remote.entry(started).await;
    let item = |category: &str| {
        json!({"subject": "a-1", "subject_hash": app.boundary.subject_hash(&"a-1".parse().unwrap()),
               "record": RecordId::random().to_string(), "version": 1, "category": category,
               "sealed": B64.encode([0u8; 40]), "metadata": B64.encode([0u8; 8])})
    };
    let post_as = async |index: u64, entry: &[u8], items: Value, quasi_only: bool| {
        remote
            .http
            .post(format!("{}/v1/transfers", remote.url))
            .json(&json!({"index": index, "entry": B64.encode(entry), "items": items, "quasi_only": quasi_only}))
            .send()
            .await
            .unwrap()
    };
    let post = async |index: u64, entry: &[u8], items: Value| post_as(index, entry, items, false).await;
    // The decision's entry opens the quasi-identifiers only (what the counting pass needs), never
    // the whole treatment.
    let decided = entries.iter().position(|e| e["transfer"]["stage"] == "decided").unwrap() as u64;
    let decided_entry = remote.entry(decided).await;
    assert_eq!(post_as(decided, &decided_entry, json!([item("profile")]), false).await.status(), 403);
    let other_category = post(started, &entry, json!([item("content")])).await;
    assert_eq!(other_category.status(), 403);
    let access = entries.iter().position(|e| e["kind"] == "write").unwrap() as u64;
    assert_eq!(post(access, &remote.entry(access).await, json!([item("profile")])).await.status(), 403);
    let mut forged = entry.clone();
    let at = forged.len() - 3;
    forged[at] ^= 1;
    assert_eq!(post(started, &forged, json!([item("profile")])).await.status(), 403);
    assert_eq!(post(started, &entry, json!("not a list")).await.status(), 422);
}

#[tokio::test]
async fn a_custodian_without_destinations_refuses_every_transfer() {
    let remote = start().await;
    let app = &remote.app;
    six_adults(app).await;
    let (_, made) = transfer_profiles(app).await;
    // The boundary's policy allowed it; the custodian, whose own configuration gives the
    // destination no legal basis, opened nothing: no manifest was made, and the refusal is
    // logged after the decision.
    let body = problem(made, 403, "custodian-refused").await;
    let entries = crate::harness::log_entries(app.boundary.log()).await;
    assert!(entries.iter().any(|e| e["transfer"]["stage"] == "decided"));
    assert!(!entries.iter().any(|e| e["transfer"]["stage"] == "manifest"));
    let refusal = &entries[usize::try_from(body["log_index"].as_u64().unwrap()).unwrap()];
    assert_eq!(refusal["transfer"]["stage"], "refused");
    assert_eq!(refusal["decision"]["policies"], json!(["custodian-refused"]));
}
