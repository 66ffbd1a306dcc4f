//! The whole API on PostgreSQL: the same boundary, its data store in a database made for the
//! test and dropped after it (`CLOVER_TEST_POSTGRES` names the server; default
//! `postgres://postgres@127.0.0.1:5432/postgres`).

use serde_json::{Value, json};

use crate::harness::{DUBLIN, SINGAPORE, TestApp, problem};

/// A database of its own on the test server, dropped on drop.
pub struct Database {
    admin: String,
    name: String,
    pub url: String,
}

impl Database {
    pub async fn create() -> Self {
        let admin = std::env::var("CLOVER_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let name = format!("clover_test_{}", uuid::Uuid::new_v4().simple());
        let pool = sqlx::PgPool::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at {admin} ({e}): start one, or set CLOVER_TEST_POSTGRES")
        });
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&pool).await.unwrap();
        pool.close().await;
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        Self { admin, name, url }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let pool = sqlx::PgPool::connect(&admin).await.unwrap();
                let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::raw_sql(sqlx::AssertSqlSafe(drop)).execute(&pool).await.unwrap();
                pool.close().await;
            });
        })
        .join();
    }
}

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
