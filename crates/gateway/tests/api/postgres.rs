//! The whole API on PostgreSQL: the same boundary, its data store in a database made for the
//! test and dropped after it (`CLOVER_TEST_POSTGRES` names the server; default
//! `postgres://postgres@127.0.0.1:5432/postgres`).

use clover_testkit::TestDatabase as Database;
use serde_json::{Value, json};

use crate::harness::{DUBLIN, SINGAPORE, TestApp, problem};

#[tokio::test]
async fn the_api_works_the_same_on_postgres() {
    let database = Database::create().await;
    let app = TestApp::start_with(|c| c.store = Some(database.url.clone())).await;
    let record = app.seed("u-1", json!({"name": "Ana"})).await;
    let read = app.get_record(DUBLIN, &record).await;
    assert_eq!(read.status(), 200);
    assert_eq!(read.json::<Value>().await.unwrap()["fields"]["name"], "Ana");
    problem(app.get_record(SINGAPORE, &record).await, 403, "forbidden").await;

    // The rows are in PostgreSQL, sealed: the name is nowhere in them.
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT record_id, ciphertext FROM records").fetch_all(&pool).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, record);
    assert!(!rows[0].1.windows(3).any(|w| w == b"Ana"));

    let erased = app.client(DUBLIN).delete(app.url("/v1/subjects/u-1")).bearer_auth(app.token()).send().await.unwrap();
    assert_eq!(erased.status(), 200);
    problem(app.get_record(DUBLIN, &record).await, 404, "not-found").await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM records").fetch_one(&pool).await.unwrap();
    assert_eq!(left, 0);
    pool.close().await;
}
