//! The key store in PostgreSQL, which the custodians of several gateways of a region share.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, Postgres};

use super::{Dialect, ErasureListener, KeyDb};

/// Its migrations, in order. Never edit one that has shipped; add the next.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE data_keys (
         subject TEXT PRIMARY KEY,
         kek_version BIGINT NOT NULL,
         wrapped BYTEA NOT NULL,
         created_at BIGINT NOT NULL
     );
     CREATE INDEX data_keys_by_version ON data_keys (kek_version);
     CREATE TABLE metadata_salts (
         subject TEXT PRIMARY KEY,
         salt BYTEA NOT NULL
     );
     CREATE TABLE erasures (
         subject TEXT PRIMARY KEY,
         log_index BIGINT NOT NULL
     );
     CREATE TABLE unwraps (
         seq BIGSERIAL PRIMARY KEY,
         time BIGINT NOT NULL,
         subject TEXT NOT NULL,
         action TEXT NOT NULL,
         log_index BIGINT NOT NULL,
         entry_hash TEXT NOT NULL,
         purpose TEXT,
         cached BIGINT NOT NULL
     );",
    ),
    (
        2,
        "CREATE TABLE honoured_receipts (
             entry_hash TEXT PRIMARY KEY,
             log_index BIGINT NOT NULL,
             honoured_at BIGINT NOT NULL
         );
         CREATE INDEX honoured_receipts_by_time ON honoured_receipts (honoured_at);",
    ),
];

/// The channel on which custodians tell each other of erasures: `<subject hash> <log index>`.
const ERASURES: &str = "clover_custody_erasure";

/// Connects and makes or migrates the tables.
pub(super) async fn open(url: &str) -> Result<KeyDb<Postgres>, sqlx::Error> {
    let pool = PgPoolOptions::new().max_connections(8).acquire_timeout(Duration::from_secs(10)).connect(url).await?;
    clover_sql::migrate(&pool, "clover_custody_migrations", MIGRATIONS).await?;
    Ok(KeyDb { pool })
}

#[async_trait]
impl Dialect for Postgres {
    fn rows_affected(result: &sqlx::postgres::PgQueryResult) -> u64 {
        result.rows_affected()
    }

    /// Tells the other custodians on this key store, whose caches may hold the key. PostgreSQL
    /// keeps the old row version until VACUUM: the wrapped key is no use without the KEK.
    async fn after_erasure(pool: &PgPool, subject: &str, log_index: u64) {
        let told = sqlx::query("SELECT pg_notify('clover_custody_erasure', $1)")
            .bind(format!("{subject} {log_index}"))
            .execute(pool)
            .await;
        if let Err(e) = told {
            tracing::warn!(error = %e, "other gateways' custodians were not told of an erasure; their caches expire it");
        }
    }

    /// Other gateways' custodians share this key store: their erasures must reach this one's
    /// cache and its record of erasures at once, not after the cache's time to live.
    fn follow_erasures(pool: &PgPool, listener: Box<dyn ErasureListener>) {
        tokio::spawn(follow(pool.clone(), listener));
    }
}

/// Applies the erasures other custodians announce, until the custodian is dropped.
async fn follow(pool: PgPool, erasures: Box<dyn ErasureListener>) {
    let mut listener: Option<PgListener> = None;
    while erasures.is_open() {
        if listener.is_none() {
            let listening = async {
                let mut l = PgListener::connect_with(&pool).await?;
                l.listen(ERASURES).await?;
                Ok::<_, sqlx::Error>(l)
            };
            match listening.await {
                Ok(l) => listener = Some(l),
                Err(_) => {
                    tracing::warn!("cannot listen for other custodians' erasures; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let Some(l) = listener.as_mut() else { continue };
        match tokio::time::timeout(Duration::from_secs(1), l.recv()).await {
            Ok(Ok(notice)) => {
                if let Some((hash, index)) = notice.payload().split_once(' ')
                    && let Ok(index) = index.parse()
                    && !erasures.erased(hash, index)
                {
                    return;
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lost the notices of other custodians' erasures; reconnecting");
                listener = None;
            }
            Err(_) => {}
        }
    }
}
