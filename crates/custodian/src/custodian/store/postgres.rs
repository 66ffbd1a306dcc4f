//! The key store in PostgreSQL, which the custodians of several gateways of a region share.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions, Postgres};

use super::{Dialect, ErasureListener, KeyDb, SELECT_ERASURES};

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

/// The `application_name` of the listener's connection, as `pg_stat_activity` shows it.
const LISTENER_NAME: &str = "clover-custodian-erasures";

/// Counts the times a custodian's listener for other custodians' erasures lost its connection
/// (until it is back, the custodian trusts none of its caches).
pub(crate) const ERASURE_LISTENER_LOST_METRIC: &str = "clover_custodian_erasure_listener_lost_total";

/// How often the listener wakes to see whether its custodian is still there.
const TICK: Duration = Duration::from_secs(1);

/// After how long without a word the listener asks its connection for one: a connection cut
/// without a close (a dead peer, a dropped route) hears nothing and says nothing.
const PING_AFTER: Duration = Duration::from_secs(10);

/// How long connecting, listening and reading the erasures, or a ping, may take.
const PATIENCE: Duration = Duration::from_secs(10);

/// The pause after a failed reconnect, doubled at each failure up to [`MAX_BACKOFF`]; the first
/// attempt after a loss is at once.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// The longest pause between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

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

    /// The gateways' custodians of a region share the key store.
    const SHARED: bool = true;

    /// Other gateways' custodians may hold the key in their caches. A notice is transactional:
    /// PostgreSQL delivers it when the erasure commits, and never if it rolls back; a custodian
    /// not listening then reads the erasure when it listens again.
    async fn notify_erasure(tx: &mut PgConnection, subject: &str, log_index: i64) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(ERASURES)
            .bind(format!("{subject} {log_index}"))
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Nothing: PostgreSQL keeps the old row version until VACUUM, and the wrapped key is no use
    /// without the KEK (which the rotation after erasures retires).
    async fn after_erasure(_pool: &PgPool) {}

    /// Other gateways' custodians share this key store: their erasures must reach this one's
    /// caches and its record of erasures at once, not after the caches' time to live.
    async fn follow_erasures(pool: &PgPool, listener: Box<dyn ErasureListener>) {
        let follower = Follower::new(pool, listener);
        let listening = follower.connect().await;
        tokio::spawn(follower.run(listening));
    }
}

/// Why the listener lost its connection.
#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error("the connection closed")]
    Closed,
    #[error(transparent)]
    Failed(#[from] sqlx::Error),
    #[error("no answer to a ping within {PATIENCE:?}")]
    Silent,
}

/// Hears of the erasures of the other custodians on the key store, for as long as its custodian
/// is there: connects (again) with a backoff, and tells its custodian each time it is connected
/// and each time it is not.
struct Follower {
    /// The key store's pool: once it is closed, so is the custodian.
    pool: PgPool,
    /// The listener's own pool, of one connection: a reconnect opens a new connection, rather
    /// than take one of the key store's (and hold it for good).
    own: PgPool,
    erasures: Box<dyn ErasureListener>,
}

impl Follower {
    fn new(pool: &PgPool, erasures: Box<dyn ErasureListener>) -> Self {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(PATIENCE)
            .connect_lazy_with((*pool.connect_options()).clone().application_name(LISTENER_NAME));
        Self { pool: pool.clone(), own, erasures }
    }

    /// Whether its custodian is still there.
    fn open(&self) -> bool {
        self.erasures.is_open() && !self.pool.is_closed()
    }

    /// Listens, then reads every erasure recorded, and tells the custodian: an erasure that
    /// commits from now on is a notice, one that committed before is among those read.
    async fn connect(&self) -> Option<PgListener> {
        let listening = async {
            let mut listener = PgListener::connect_with(&self.own).await?;
            // A lost connection is reported, and this reconnects (and reads the erasures again).
            listener.eager_reconnect(false);
            listener.listen(ERASURES).await?;
            let erasures: Vec<(String, i64)> = sqlx::query_as(SELECT_ERASURES).fetch_all(&mut listener).await?;
            Ok::<_, sqlx::Error>((listener, erasures))
        };
        match tokio::time::timeout(PATIENCE, listening).await {
            Ok(Ok((listener, erasures))) => self.erasures.connected(erasures).then_some(listener),
            Ok(Err(e)) => {
                tracing::warn!(
                    error = %e,
                    "cannot listen for other custodians' erasures; every key is read from the key store until then"
                );
                None
            }
            Err(_) => {
                tracing::warn!(
                    "listening for other custodians' erasures timed out; every key is read from the key store until then"
                );
                None
            }
        }
    }

    /// Applies the notices until the custodian is gone, reconnecting whenever the connection is
    /// lost.
    async fn run(self, mut listening: Option<PgListener>) {
        let mut backoff: Option<Duration> = listening.is_none().then_some(FIRST_BACKOFF);
        let mut heard_at = Instant::now();
        while self.open() {
            let Some(listener) = listening.as_mut() else {
                if let Some(pause) = backoff {
                    tokio::time::sleep(pause).await;
                }
                listening = self.connect().await;
                backoff = listening.is_none().then(|| backoff.map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF)));
                heard_at = Instant::now();
                continue;
            };
            let lost = match tokio::time::timeout(TICK, listener.try_recv()).await {
                Ok(Ok(Some(notice))) => {
                    heard_at = Instant::now();
                    if let Some((hash, index)) = notice.payload().split_once(' ')
                        && let Ok(index) = index.parse()
                        && !self.erasures.erased(hash, index)
                    {
                        return;
                    }
                    None
                }
                Ok(Ok(None)) => Some(Lost::Closed),
                Ok(Err(e)) => Some(Lost::Failed(e)),
                Err(_) if heard_at.elapsed() >= PING_AFTER => {
                    heard_at = Instant::now();
                    match tokio::time::timeout(PATIENCE, sqlx::query("SELECT 1").execute(&mut *listener)).await {
                        Ok(Ok(_)) => None,
                        Ok(Err(e)) => Some(Lost::Failed(e)),
                        Err(_) => Some(Lost::Silent),
                    }
                }
                // `try_recv` loses nothing when cut short: it keeps a partial message.
                Err(_) => None,
            };
            if let Some(cause) = lost {
                self.erasures.disconnected();
                metrics::counter!(ERASURE_LISTENER_LOST_METRIC).increment(1);
                tracing::warn!(
                    error = %cause,
                    "lost the notices of other custodians' erasures; every key is read from the key store until the listener is back"
                );
                listening = None;
                backoff = None;
            }
        }
    }
}
