//! A PostgreSQL database of a test's own: created on the server `CLOVER_TEST_POSTGRES` names
//! (default `postgres://postgres@127.0.0.1:5432/postgres`; `.ci/run` makes sure one answers),
//! and dropped when the value is dropped, whether the test passed or panicked.

/// The server tests create their databases on.
pub fn server() -> String {
    std::env::var("CLOVER_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database made for one test.
#[derive(Debug)]
pub struct TestDatabase {
    admin: String,
    name: String,
    /// Its URL.
    pub url: String,
}

impl TestDatabase {
    /// Creates an empty database with a unique name. Panics, saying how to fix it, when no
    /// server answers.
    pub async fn create() -> Self {
        let admin = server();
        let name = format!("clover_test_{}", uuid::Uuid::new_v4().simple());
        let pool = sqlx::PgPool::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at {admin} ({e}): start one, or set CLOVER_TEST_POSTGRES")
        });
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("cannot create a test database on {admin}: {e}"));
        pool.close().await;
        let url = match admin.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("CLOVER_TEST_POSTGRES must name a database: {admin}"),
        };
        Self { admin, name, url }
    }
}

impl Drop for TestDatabase {
    /// Drops the database, on a thread of its own since the test's runtime may be gone.
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async {
                if let Ok(pool) = sqlx::PgPool::connect(&admin).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop)).execute(&pool).await;
                    pool.close().await;
                }
            });
        });
        let _ = dropped.join();
    }
}
