//! Approvals count only as the log knows them (issue 16): the grant's entry fixes the approval's
//! id and a salted digest of its scope, the store keeps the entry's index, and a decision reads
//! the entry and checks it against the row as stored now. An approval inserted straight into
//! the store, or widened there after its grant, lifts nothing; an access that relied on an
//! approval names it in its annex.
//!
//! The bulk-access rule is the one approvals lift here: a threshold of one subject, so that a
//! second distinct subject needs an approval.

use clover_event::AnnexField;
use clover_store::ApprovalRow;
use clover_testkit::TestDatabase;
use serde_json::{Value, json};

use crate::harness::{DUBLIN, TestApp, annex_of, problem};

/// Subject ids that no hex digest, count or word of an entry could contain by chance.
const FIRST: &str = "subj-kilo";
const COVERED: &str = "subj-lima";
const ADDED: &str = "subj-mike";

/// A boundary whose bulk rule needs an approval past one subject: on SQLite, or on a
/// PostgreSQL database made for the test.
async fn start(database: Option<&TestDatabase>) -> TestApp {
    let url = database.map(|d| d.url.clone());
    TestApp::start_with(|config| {
        config.policy.bulk_threshold = 1;
        config.store = url;
    })
    .await
}

/// A token for the EU employee `id` at dublin-1 with `roles`.
fn token_for(app: &TestApp, id: &str, roles: &[&str]) -> String {
    let mut claims = app.claims("eu", "dublin-1", 600);
    claims.sub = id.into();
    claims.roles = roles.iter().map(|r| r.to_string()).collect();
    app.mint(&claims)
}

/// Registers the adult `subject` with one profile record; returns the record's id.
async fn adult(app: &TestApp, subject: &str) -> String {
    let put = app
        .client(DUBLIN)
        .put(app.url(&format!("/v1/subjects/{subject}")))
        .bearer_auth(app.token())
        .json(&json!({"home_region": "eu", "birth_date": "1990-02-01"}));
    assert!(put.send().await.unwrap().status().is_success());
    let post = app.post_record(subject, "profile", json!({"display_name": "Aoife"})).await;
    assert_eq!(post.status(), 201);
    post.json::<Value>().await.unwrap()["record_id"].as_str().unwrap().to_owned()
}

/// Ana reads `record` for support.
async fn read(app: &TestApp, record: &str) -> reqwest::Response {
    app.client(DUBLIN)
        .get(app.url(&format!("/v1/records/{record}")))
        .bearer_auth(token_for(app, "ana", &["support"]))
        .header("X-Clover-Purpose", "support")
        .send()
        .await
        .unwrap()
}

/// Asserts that Ana's read of `record` is refused for want of an approval.
async fn needs_approval(app: &TestApp, record: &str) {
    let body = problem(read(app, record).await, 403, "forbidden").await;
    assert_eq!(body["decision"]["effect"], "approval-required", "{body}");
    assert_eq!(body["decision"]["policies"], json!(["bulk-access-needs-approval"]), "{body}");
}

/// Ana asks for an approval of `subjects`' profiles for support and Carol grants it; returns
/// the approval's id and the grant's log index.
async fn approve(app: &TestApp, subjects: &[&str]) -> (String, u64) {
    let asked = app
        .client(DUBLIN)
        .post(app.url("/v1/approvals"))
        .bearer_auth(token_for(app, "ana", &["support"]))
        .json(&json!({"subjects": subjects, "categories": ["profile"], "purpose": "support"}))
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), 201);
    let id = asked.json::<Value>().await.unwrap()["approval_id"].as_str().unwrap().to_owned();
    let granted = app
        .client(DUBLIN)
        .post(app.url(&format!("/v1/approvals/{id}/grant")))
        .bearer_auth(token_for(app, "carol", &["approver"]))
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status(), 200);
    let granted: Value = granted.json().await.unwrap();
    assert_eq!(granted["state"], "granted", "{granted}");
    (id, granted["log_index"].as_u64().unwrap())
}

/// The log entry at `index`, as JSON, and its bytes as text.
async fn entry(app: &TestApp, index: u64) -> (Value, String) {
    let bytes = app.boundary.log().entry(index).await.unwrap();
    (serde_json::from_slice(&bytes).unwrap(), String::from_utf8(bytes).unwrap())
}

/// Runs `sql` on the boundary's store straight, as a database operator could: the SQLite file
/// in the data directory, or the PostgreSQL database.
async fn operator(app: &TestApp, database: Option<&TestDatabase>, sql: &'static str) {
    let affected = match database {
        Some(database) => {
            let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
            let done = sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
            done.rows_affected()
        }
        None => {
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(app.data_dir().join("clover.db"));
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            let done = sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
            done.rows_affected()
        }
    };
    assert_eq!(affected, 1, "{sql}");
}

/// The number an approval refusal counter of `reason` shows at `/metrics` (the recorder is the
/// process's, shared by every test: only its growth tells).
async fn refused_count(app: &TestApp, reason: &str) -> u64 {
    let text = app.client(DUBLIN).get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let series = format!("clover_approvals_refused_total{{reason=\"{reason}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&series)).map_or(0, |n| n.trim().parse().unwrap())
}

/// A granted approval lifts the bulk rule as before; its grant's entry carries its id and the
/// digest of its scope, names no subject, and the store keeps the entry's index; the access that
/// relied on it names it in its annex, and one that did not names none.
#[tokio::test]
async fn a_granted_approval_is_in_the_log_and_in_the_annex_of_each_access_it_allows() {
    let app = start(None).await;
    let first = adult(&app, FIRST).await;
    let covered = adult(&app, COVERED).await;
    let plain = read(&app, &first).await;
    assert_eq!(plain.status(), 200);
    needs_approval(&app, &covered).await;

    let (id, grant_index) = approve(&app, &[COVERED]).await;
    let read_covered = read(&app, &covered).await;
    assert_eq!(read_covered.status(), 200, "the approval lifts the bulk rule");

    // The grant's entry: the id, the scope's digest, no subject, no requester, no approver.
    let row = app.boundary.store().approval(&id).await.unwrap().unwrap();
    assert_eq!(row.grant_index, Some(grant_index));
    assert_eq!(row.scope_salt.len(), 64);
    let (grant, text) = entry(&app, grant_index).await;
    assert_eq!((grant["kind"].as_str(), grant["action"].as_str()), (Some("approval"), Some("approve")));
    assert_eq!(grant["decision"]["effect"], "allow");
    let detail = grant["detail"].as_str().unwrap();
    assert_eq!(detail, clover_gateway::grant_detail(&row));
    let digest = clover_gateway::scope_digest(&row);
    assert!(detail.starts_with(&format!("approval {id} granted: 1 subjects, categories profile")), "{detail}");
    assert!(detail.ends_with(&format!("; scope {digest}")), "{detail}");
    for name in [COVERED, FIRST, "ana", "carol"] {
        assert!(!text.contains(name), "{name} in the public entry: {text}");
    }
    // The digest is salted: the scope's digest without the row's salt is not it.
    let unsalted = ApprovalRow { scope_salt: String::new(), ..row.clone() };
    assert_ne!(clover_gateway::scope_digest(&unsalted), digest);
    // The requester is in the grant's annex, which the region keeps.
    assert_eq!(annex_of(&app.boundary, &grant).await.note.as_deref(), Some("requested by ana"));

    // The access that relied on the approval names it in its annex (to which its entry commits).
    let index = read_covered.json::<Value>().await.unwrap()["log_index"].as_u64().unwrap();
    let (access, text) = entry(&app, index).await;
    let annex = annex_of(&app.boundary, &access).await;
    assert_eq!(annex.approval, Some(AnnexField::Clear(Some(id.clone()))));
    assert!(!text.contains(&id), "the approval is named in the annex only: {text}");
    // One the bulk rule did not touch names none.
    let index = plain.json::<Value>().await.unwrap()["log_index"].as_u64().unwrap();
    assert_eq!(annex_of(&app.boundary, &entry(&app, index).await.0).await.approval, None);
}

/// Approvals that the store holds as granted but whose grant the log does not hold: inserted
/// with SQL (no grant entry at all), inserted through the store's own API and "granted" there
/// with the index of an entry that is no grant of theirs, or with the index of another
/// approval's real grant. None lifts the bulk rule; each is reported.
async fn inserted_approvals_are_refused(database: Option<&TestDatabase>) {
    let app = start(database).await;
    let first = adult(&app, FIRST).await;
    let covered = adult(&app, COVERED).await;
    let other = adult(&app, ADDED).await;
    assert_eq!(read(&app, &first).await.status(), 200);
    needs_approval(&app, &covered).await;

    // Straight in with SQL, granted by "carol", valid for years, naming no grant entry.
    let not_logged = refused_count(&app, "not-logged").await;
    operator(
        &app,
        database,
        "INSERT INTO approvals (approval_id, requester, subjects, categories, purpose, requested_at, expires_at, \
         approver, granted_at, scope_salt) VALUES ('forged-sql', 'ana', '[\"subj-lima\"]', '[\"profile\"]', \
         'support', 0, 4102444800, 'carol', 0, '')",
    )
    .await;
    needs_approval(&app, &covered).await;
    assert!(refused_count(&app, "not-logged").await > not_logged, "reported");

    // Through the store's API, granted with the index of the log's first entry (a key entry).
    let now = time::OffsetDateTime::now_utc();
    let forged = |id: &str| ApprovalRow {
        approval_id: id.to_owned(),
        requester: "ana".parse().unwrap(),
        subjects: vec![COVERED.parse().unwrap()],
        categories: vec!["profile".parse().unwrap()],
        purpose: "support".into(),
        requested_at: now,
        expires_at: now + time::Duration::hours(1),
        approver: None,
        granted_at: None,
        scope_salt: "ab".repeat(32),
        grant_index: None,
    };
    let store = app.boundary.store();
    store.insert_approval(&forged("forged-api")).await.unwrap();
    let carol = "carol".parse().unwrap();
    assert!(store.grant_approval("forged-api", &carol, now, now + time::Duration::hours(1), 0).await.unwrap());
    let mismatch = refused_count(&app, "mismatch").await;
    needs_approval(&app, &covered).await;
    assert!(refused_count(&app, "mismatch").await > mismatch, "reported");

    // Another approval's real grant (for another subject) replayed for a forged one.
    let (_, real_grant) = approve(&app, &[ADDED]).await;
    assert_eq!(read(&app, &other).await.status(), 200, "the real approval counts");
    store.insert_approval(&forged("forged-replay")).await.unwrap();
    assert!(
        store.grant_approval("forged-replay", &carol, now, now + time::Duration::hours(1), real_grant).await.unwrap()
    );
    // And an index past the end of the log.
    store.insert_approval(&forged("forged-beyond")).await.unwrap();
    assert!(store.grant_approval("forged-beyond", &carol, now, now + time::Duration::hours(1), 1 << 40).await.unwrap());
    needs_approval(&app, &covered).await;
    assert_eq!(store.granted_approvals(&"ana".parse().unwrap(), now).await.unwrap().len(), 5, "all held as granted");
}

#[tokio::test]
async fn an_approval_inserted_straight_into_the_store_is_refused() {
    inserted_approvals_are_refused(None).await;
}

#[tokio::test]
async fn an_approval_inserted_straight_into_the_store_is_refused_on_postgres() {
    let database = TestDatabase::create().await;
    inserted_approvals_are_refused(Some(&database)).await;
}

/// An approval changed in the store after its grant (a subject added to it, its expiry moved)
/// is not counted at all, even after the boundary has verified and remembered its grant: not
/// for the added subject, not for the one it covered. Put back as granted, it counts again: the
/// check is against the log, which the store cannot change.
async fn a_widened_approval_is_refused(database: Option<&TestDatabase>) {
    let app = start(database).await;
    let first = adult(&app, FIRST).await;
    let covered = adult(&app, COVERED).await;
    let added = adult(&app, ADDED).await;
    assert_eq!(read(&app, &first).await.status(), 200);
    let (id, _) = approve(&app, &[COVERED]).await;
    assert_eq!(read(&app, &covered).await.status(), 200, "verified, and remembered");
    needs_approval(&app, &added).await;

    // Its id is random; the operator's SQL names the only approval there is.
    let mismatch = refused_count(&app, "mismatch").await;
    operator(&app, database, "UPDATE approvals SET subjects = '[\"subj-lima\",\"subj-mike\"]'").await;
    assert!(app.boundary.store().approval(&id).await.unwrap().unwrap().subjects.len() == 2);
    needs_approval(&app, &added).await;
    needs_approval(&app, &covered).await;
    assert!(refused_count(&app, "mismatch").await > mismatch, "reported");

    operator(&app, database, "UPDATE approvals SET subjects = '[\"subj-lima\"]'").await;
    assert_eq!(read(&app, &covered).await.status(), 200, "as granted, it counts again");

    // Its expiry moved a year on: refused too.
    operator(&app, database, "UPDATE approvals SET expires_at = expires_at + 31536000").await;
    needs_approval(&app, &covered).await;

    // After a restart (nothing remembered), the log is read again, with the same result.
    let app = app.restart().await;
    needs_approval(&app, &covered).await;
    operator(&app, database, "UPDATE approvals SET expires_at = expires_at - 31536000").await;
    assert_eq!(read(&app, &covered).await.status(), 200);
}

#[tokio::test]
async fn an_approval_widened_in_the_store_after_its_grant_is_refused() {
    a_widened_approval_is_refused(None).await;
}

#[tokio::test]
async fn an_approval_widened_in_the_store_after_its_grant_is_refused_on_postgres() {
    let database = TestDatabase::create().await;
    a_widened_approval_is_refused(Some(&database)).await;
}

/// A request stored before grants were logged with their scope (no salt) is not granted: its
/// digest would be unsalted. It is asked for again.
#[tokio::test]
async fn a_request_without_a_scope_salt_is_not_granted() {
    let app = start(None).await;
    operator(
        &app,
        None,
        "INSERT INTO approvals (approval_id, requester, subjects, categories, purpose, requested_at, expires_at) \
         VALUES ('before-16', 'ana', '[\"subj-lima\"]', '[\"profile\"]', 'support', 0, 4102444800)",
    )
    .await;
    let grant = app
        .client(DUBLIN)
        .post(app.url("/v1/approvals/before-16/grant"))
        .bearer_auth(token_for(&app, "carol", &["approver"]))
        .send()
        .await
        .unwrap();
    let body = problem(grant, 409, "approval-not-pending").await;
    assert!(body["detail"].as_str().unwrap().contains("ask for it again"), "{body}");
    assert_eq!(app.boundary.store().approval("before-16").await.unwrap().unwrap().approver, None);
}
