//! The log in PostgreSQL: several gateways, one log, one sequence.
//!
//! Three tables hold it: `log_entries` (index, entry), `log_pending` (entries a gateway has
//! handed in and that no index has yet) and `log_checkpoint` (the latest signed checkpoint).
//!
//! - **Appending.** A gateway batches its appends into one `INSERT` into `log_pending` and wakes
//!   the sequencer (`NOTIFY clover_log_pending`). Each pending entry carries a random token by
//!   which the gateway recognises it once it has an index.
//! - **Sequencing.** One gateway at a time leads: the one holding a session-level advisory lock
//!   on its own connection. The leader takes the pending entries in order, computes the new
//!   root, signs a checkpoint, and in one transaction on that same connection inserts the
//!   entries at the next indexes, deletes them from `log_pending`, stores the checkpoint and
//!   announces the new size (`NOTIFY clover_log`). Since the lock and the transaction share a
//!   session, a leader that lost its session (it died, or its network did) can no longer
//!   commit; the primary key on the index refuses a second entry at any index.
//! - **Following.** Every gateway keeps the tree's hashes in memory and catches up from
//!   `log_entries` when told of a new size (and every 250 ms regardless). An append is
//!   acknowledged only once its entry is committed at an index and is in this gateway's tree,
//!   with the checkpoint committed beside it (or, with a checkpoint interval, within it).
//! - **Checking what was committed.** A token says which entry is an append's, not that the
//!   entry is the one handed in: whoever can write the database (its operator, or a compromised
//!   gateway while it sequences) could rewrite a pending entry, and the access would be answered
//!   (a read decrypted) with a harmless entry logged in its place. So each waiting append keeps
//!   the RFC 6962 leaf hash of its bytes, computed in this gateway's memory before they left it,
//!   and is answered only if the entry committed under its token has that leaf hash: as this
//!   gateway read it from `log_entries` when following, or as it took it from `log_pending`
//!   when it sequences appends it handed in before it led (its appends while it leads never
//!   leave its memory before they are committed). An entry that differs fails its append with
//!   [`LogError::Substituted`], logged as an error, and no receipt is made; the log keeps what
//!   was committed, consistent with its checkpoints, for an auditor to find. The leaf hash is
//!   not stored beside the pending entry: whoever could rewrite the one could rewrite the
//!   other; only the appender's own copy is worth checking against.
//! - **Failover.** When the leader's session ends, PostgreSQL releases its lock; the next
//!   gateway to take it catches up with every committed entry, checks that they match the last
//!   checkpoint published, and goes on from there. Entries still pending are sequenced by the
//!   new leader, so an entry handed in is never lost, even when the gateway that handed it in
//!   died waiting.
//!
//! The leader runs the one [sequencer](crate::sequencer) over [`PgBackend`]: its pending
//! entries are the rows of `log_pending`, and a commit is the transaction above.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use clover_event::EventKind;
use clover_sql::{migrate, redact};
use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::hash::Hash;
use clover_tlog::note::{Note, NoteSigner, VerifierKey};
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};
use tokio::sync::mpsc;

use crate::error::{CheckpointFault, LogError, db};
use crate::sequencer::{Append, Backend, LogOptions, sequence};
use crate::tree::{Committed, Shared};

/// The migrations of the log's tables, in order. Never edit one that has shipped; add the next.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE log_entries (
         idx   BIGINT PRIMARY KEY,
         token BIGINT NOT NULL,
         entry BYTEA NOT NULL
     );
     CREATE TABLE log_pending (
         id    BIGSERIAL PRIMARY KEY,
         token BIGINT NOT NULL UNIQUE,
         entry BYTEA NOT NULL
     );
     CREATE TABLE log_checkpoint (
         only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
         size     BIGINT NOT NULL,
         note     TEXT NOT NULL
     );",
)];

/// The advisory lock whose holder sequences the log (`clovlog` in ASCII).
const SEQUENCER_LOCK: i64 = 0x0063_6c6f_766c_6f67;

/// How often a gateway catches up without being told, and a candidate tries for the lock.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// How long an append waits for an index before it is refused (no gateway leads).
const APPEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one step of the sequencer (a query, a commit) may take before it gives up leading:
/// a connection that hangs must not hold the log.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The most entries read from the database at a time.
const PAGE: i64 = 4096;

/// One gateway's handle on the shared log.
pub(crate) struct PgLog {
    pool: PgPool,
    shared: Arc<Shared>,
    verifier: VerifierKey,
    submit: mpsc::UnboundedSender<Append>,
    /// While this gateway sequences, its own appends go straight into the sequencer's next
    /// batch, without a round through `log_pending`.
    direct: Mutex<Option<mpsc::UnboundedSender<Append>>>,
    /// Held while entries are added to the tree.
    apply: tokio::sync::Mutex<()>,
    /// Why appends are refused, once the database contradicted a signed checkpoint.
    failed: Mutex<Option<Contradiction>>,
}

/// What the database contradicts, kept to refuse every later append with it.
#[derive(Clone)]
struct Contradiction {
    detail: String,
    /// Why its checkpoint could not be checked, when that is what it is.
    cause: Option<CheckpointFault>,
}

impl From<String> for Contradiction {
    fn from(detail: String) -> Self {
        Self { detail, cause: None }
    }
}

impl Contradiction {
    /// `detail`, because of `cause`.
    fn because(detail: impl Into<String>, cause: impl Into<CheckpointFault>) -> Self {
        Self { detail: detail.into(), cause: Some(cause.into()) }
    }

    fn error(self) -> LogError {
        LogError::Inconsistent { place: "postgres".into(), detail: self.detail, cause: self.cause }
    }
}

struct Row_ {
    idx: u64,
    token: i64,
    entry: Vec<u8>,
}

impl PgLog {
    pub(crate) async fn open(
        url: &str,
        signer: Box<dyn NoteSigner>,
        options: LogOptions,
    ) -> Result<(Arc<Shared>, Arc<Self>), LogError> {
        let open = |source: sqlx::Error| LogError::Open { url: redact(url), source };
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(open)?;
        migrate(&pool, "clover_log_migrations", MIGRATIONS).await.map_err(open)?;
        let (submit, submitted) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(signer.name().to_owned(), crate::tree::Tree::new(), true));
        let log = Arc::new(Self {
            pool,
            shared: shared.clone(),
            verifier: signer.verifier(),
            submit,
            direct: Mutex::new(None),
            apply: tokio::sync::Mutex::new(()),
            failed: Mutex::new(None),
        });
        log.catch_up().await?;
        // A log nobody has signed yet (or not since its last entries, with a checkpoint
        // interval) gets a checkpoint of what it holds, kept here until the leader signs one.
        let (size, held) = {
            let tree = log.shared.tree();
            (tree.size(), tree.checkpoint_size())
        };
        if size == 0 || held < size {
            let (size, note) = log.shared.sign_current(signer.as_ref())?;
            log.shared.tree_mut().offer_checkpoint(Arc::from(note), size);
        }
        tokio::spawn(submit_loop(Arc::downgrade(&log), submitted, options.max_batch));
        tokio::spawn(follow_loop(Arc::downgrade(&log)));
        tokio::spawn(sequence_loop(Arc::downgrade(&log), url.to_owned(), signer, options));
        Ok((shared, log))
    }

    /// Whether this gateway sequences now: it does while its own appends go straight to it.
    pub(crate) fn is_leading(&self) -> bool {
        self.direct.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    fn refused(&self) -> Option<LogError> {
        let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        failed.clone().map(Contradiction::error)
    }

    /// Hands `entry` in and waits for its index. `leaf` is the entry's leaf hash, computed by the
    /// caller from its own bytes: the index is answered only if the entry committed under this
    /// append's token has it.
    pub(crate) async fn append(
        &self,
        entry: Vec<u8>,
        leaf: Hash,
        index_by: (EventKind, Option<String>),
    ) -> Result<u64, LogError> {
        if let Some(refused) = self.refused() {
            return Err(refused);
        }
        let mut bytes = [0u8; 8];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| LogError::Randomness)?;
        let token = i64::from_be_bytes(bytes);
        let wait = self.shared.wait(token, leaf);
        let append = Append { token, entry, index_by: Some(index_by), handed_in: false };
        if self.submit.send(append).is_err() {
            self.shared.forget(token);
            return Err(LogError::Stopped);
        }
        match tokio::time::timeout(APPEND_TIMEOUT, wait).await {
            Ok(answer) => answer.map_err(|_| LogError::Stopped)?,
            Err(_) => {
                self.shared.forget(token);
                tracing::error!(token, "no gateway sequenced a log entry within 30 s");
                Err(LogError::NotSequenced(APPEND_TIMEOUT))
            }
        }
    }

    /// The entries `first..end`.
    pub(crate) async fn entries(&self, first: u64, end: u64) -> Result<Vec<Vec<u8>>, LogError> {
        let to_i64 = |n: u64| i64::try_from(n).map_err(|_| LogError::NotFound(format!("entry {n} is beyond the log")));
        let rows = sqlx::query("SELECT entry FROM log_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx")
            .bind(to_i64(first)?)
            .bind(to_i64(end)?)
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading log entries"))?;
        let entries: Vec<Vec<u8>> =
            rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>().map_err(db("reading log entries"))?;
        if entries.len() as u64 != end - first {
            return Err(LogError::NotFound(format!("entries {first}..{end} are not all in the database")));
        }
        Ok(entries)
    }
    /// Adds every committed entry beyond this gateway's tree, takes the stored checkpoint after
    /// checking it, and answers the appends now in the tree.
    async fn catch_up(&self) -> Result<(), LogError> {
        let _applying = self.apply.lock().await;
        // The checkpoint first: it was committed with its entries, so they are all visible to
        // the reads that follow.
        let stored: Option<String> = sqlx::query_scalar("SELECT note FROM log_checkpoint")
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading the log's checkpoint"))?;
        loop {
            let size = self.shared.tree().size();
            let rows = sqlx::query("SELECT idx, token, entry FROM log_entries WHERE idx >= $1 ORDER BY idx LIMIT $2")
                .bind(i64::try_from(size).unwrap_or(i64::MAX))
                .bind(PAGE)
                .fetch_all(&self.pool)
                .await
                .map_err(db("reading log entries"))?;
            let rows: Vec<Row_> = rows
                .iter()
                .map(|r| {
                    Ok(Row_ {
                        idx: u64::try_from(r.try_get::<i64, _>(0)?).unwrap_or(u64::MAX),
                        token: r.try_get(1)?,
                        entry: r.try_get(2)?,
                    })
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(db("reading log entries"))?;
            let Some(first) = rows.first() else { break };
            if first.idx != size {
                let why = format!("entries {size} to {} are missing from the database", first.idx - 1);
                return Err(self.fail(why.into()));
            }
            let count = rows.len() as i64;
            self.shared.answer(self.add(rows));
            if count < PAGE {
                break;
            }
        }
        // A checkpoint already held was checked when it was taken.
        let held = self.shared.tree().checkpoint().clone();
        let stored = stored.filter(|note| note.as_str() != &*held);
        if let Some(Err(why)) = stored.map(|note| self.check_checkpoint(&note)) {
            return Err(self.fail(why));
        }
        self.shared.answer(Vec::new());
        Ok(())
    }

    /// Refuses appends from now on: the database contradicts what this gateway knows.
    fn fail(&self, why: Contradiction) -> LogError {
        let cause = why.cause.as_ref().map(ToString::to_string);
        tracing::error!(
            why = %why.detail,
            cause,
            "the log's database contradicts its signed checkpoint; appends are refused"
        );
        *self.failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(why.clone());
        why.error()
    }

    /// Checks a stored checkpoint against this key and the tree, and takes it.
    fn check_checkpoint(&self, text: &str) -> Result<(), Contradiction> {
        let unparsable = |e| Contradiction::because("its checkpoint does not parse", e);
        let note = Note::parse(text).map_err(unparsable)?;
        note.verify(&self.verifier).map_err(|e| {
            let detail = format!(
                "its checkpoint is not signed by this gateway's checkpoint key {}: the gateways of a region \
                 must share one key (one keyring, or one HSM token)",
                self.verifier
            );
            Contradiction::because(detail, e)
        })?;
        let checkpoint = Checkpoint::parse(&note.text)
            .map_err(|e| Contradiction::because("its checkpoint does not parse as a checkpoint", e))?;
        let mut tree = self.shared.tree_mut();
        if checkpoint.size > tree.size() {
            let detail = format!("it published a checkpoint of {} entries but holds {}", checkpoint.size, tree.size());
            return Err(detail.into());
        }
        let root = clover_tlog::tree::root(&*tree, checkpoint.size).map_err(|e| {
            Contradiction::because(format!("the root of its first {} entries cannot be computed", checkpoint.size), e)
        })?;
        if root != checkpoint.root {
            return Err(format!("the first {} entries differ from the checkpoint it published", checkpoint.size).into());
        }
        tree.offer_checkpoint(Arc::from(text), checkpoint.size);
        Ok(())
    }

    /// Adds rows that continue the tree (skipping any already in it); returns the entries added,
    /// each with its token, its index and the leaf hash of its bytes as read from `log_entries`.
    fn add(&self, rows: Vec<Row_>) -> Vec<Committed> {
        let mut tree = self.shared.tree_mut();
        let mut added = Vec::new();
        for row in rows {
            if row.idx < tree.size() {
                continue;
            }
            if row.idx > tree.size() {
                break;
            }
            let leaf = tree.add(&row.entry);
            added.push(Committed { token: row.token, index: row.idx, leaf });
        }
        added
    }
}

/// Hands this gateway's appends in, as many per statement as are waiting.
async fn submit_loop(log: Weak<PgLog>, mut submitted: mpsc::UnboundedReceiver<Append>, max_batch: usize) {
    while let Some(first) = submitted.recv().await {
        let mut batch = vec![first];
        while batch.len() < max_batch.max(1) {
            match submitted.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let Some(log) = log.upgrade() else { return };
        let batch: Vec<Append> = {
            // Sent under the lock: once the sequencer has cleared it and drained its channel,
            // nothing more reaches that channel.
            let direct = log.direct.lock().unwrap_or_else(PoisonError::into_inner);
            match direct.as_ref() {
                Some(sequencer) => {
                    batch.into_iter().filter_map(|item| sequencer.send(item).err().map(|e| e.0)).collect()
                }
                None => batch,
            }
        };
        if batch.is_empty() {
            continue;
        }
        let (tokens, entries): (Vec<i64>, Vec<Vec<u8>>) = batch.into_iter().map(|a| (a.token, a.entry)).unzip();
        let handed_in = sqlx::query(
            "WITH handed_in AS (INSERT INTO log_pending (token, entry) SELECT * FROM UNNEST($1::int8[], $2::bytea[])) \
             SELECT pg_notify('clover_log_pending', '')",
        )
        .bind(&tokens)
        .bind(&entries)
        .execute(&log.pool)
        .await;
        if let Err(e) = handed_in {
            tracing::error!(error = %e, entries = tokens.len(), "log entries could not be handed in");
            log.shared.refuse(tokens, || LogError::Stopped);
        }
    }
}

/// Catches up whenever the leader announces a new size, and every 250 ms regardless.
async fn follow_loop(log: Weak<PgLog>) {
    let mut listener: Option<PgListener> = None;
    loop {
        if listener.is_none() {
            let Some(strong) = log.upgrade() else { return };
            match PgListener::connect_with(&strong.pool).await {
                Ok(mut l) => {
                    if l.listen("clover_log").await.is_ok() {
                        listener = Some(l);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen for the log's new entries; polling"),
            }
        }
        match listener.as_mut() {
            Some(l) => {
                if let Ok(Err(e)) = tokio::time::timeout(FOLLOW_EVERY, l.recv()).await {
                    tracing::warn!(error = %e, "lost the log's notifications; reconnecting");
                    listener = None;
                }
            }
            None => tokio::time::sleep(FOLLOW_EVERY).await,
        }
        let Some(strong) = log.upgrade() else { return };
        if strong.is_leading() {
            // The sequencer adds its own commits to its tree.
            continue;
        }
        if let Err(e) = strong.catch_up().await {
            tracing::warn!(error = %e, "cannot catch up with the log");
        }
    }
}

/// Where this gateway's appends go while it sequences (`None`: through `log_pending`).
fn set_direct(log: &Weak<PgLog>, to: Option<mpsc::UnboundedSender<Append>>) {
    if let Some(log) = log.upgrade() {
        *log.direct.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }
}

/// Tries for the sequencer's lock; while holding it, sequences.
async fn sequence_loop(log: Weak<PgLog>, url: String, signer: Box<dyn NoteSigner>, options: LogOptions) {
    loop {
        let Some(strong) = log.upgrade() else { return };
        let connect_options = strong.pool.connect_options();
        let refused = strong.refused().is_some();
        drop(strong);
        if refused {
            // This gateway found the database inconsistent: it does not compete to sequence.
            tokio::time::sleep(FOLLOW_EVERY * 4).await;
            continue;
        }
        let connected = async {
            let mut conn = PgConnection::connect_with(&*connect_options).await?;
            // The server notices a vanished sequencer (power loss, partition: no FIN) within
            // about 11 s and releases its lock, instead of after the OS default of two hours.
            sqlx::raw_sql("SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3")
                .execute(&mut conn)
                .await?;
            Ok::<_, sqlx::Error>(conn)
        };
        let mut conn = match connected.await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, url = %redact(&url), "cannot connect to the log's database");
                tokio::time::sleep(FOLLOW_EVERY * 4).await;
                continue;
            }
        };
        // A candidate until the lock is ours.
        let locked = loop {
            if log.strong_count() == 0 {
                return;
            }
            match sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                .bind(SEQUENCER_LOCK)
                .fetch_one(&mut conn)
                .await
            {
                Ok(true) => break true,
                Ok(false) => tokio::time::sleep(FOLLOW_EVERY).await,
                Err(e) => {
                    tracing::warn!(error = %e, "lost the connection while waiting to sequence the log");
                    break false;
                }
            }
        };
        if !locked {
            continue;
        }
        let Some(strong) = log.upgrade() else { return };
        tracing::info!(size = strong.shared.tree().size(), "this gateway now sequences the log");
        drop(strong);
        let (direct, mut own) = mpsc::unbounded_channel();
        set_direct(&log, Some(direct));
        let result = lead(&log, &mut conn, signer.as_ref(), &options, &mut own).await;
        // This gateway's appends go through `log_pending` again: those not yet taken, and
        // those of a batch that was not committed (rolled back, so not in the database).
        set_direct(&log, None);
        let mut unsequenced = Vec::new();
        let result = match result {
            Ok(()) => Ok(()),
            Err(stopped) => {
                unsequenced = stopped.unsequenced;
                Err(stopped.error)
            }
        };
        if let Some(strong) = log.upgrade() {
            let own_appends = unsequenced.into_iter().filter(|a| !a.handed_in);
            for append in own_appends.chain(std::iter::from_fn(|| own.try_recv().ok())) {
                let _ = strong.submit.send(append);
            }
        }
        match result {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "this gateway stopped sequencing the log"),
        }
        drop(conn);
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

/// Runs one database step of the sequencer, bounded by [`STEP_TIMEOUT`].
async fn step<T>(work: impl Future<Output = Result<T, sqlx::Error>>, what: &'static str) -> Result<T, LogError> {
    match tokio::time::timeout(STEP_TIMEOUT, work).await {
        Ok(done) => done.map_err(db(what)),
        Err(_) => Err(LogError::Timeout { what, after: STEP_TIMEOUT }),
    }
}

/// Sequences while this connection holds the lock. Returns `Ok` when the log is dropped, an
/// error when leadership is in doubt.
async fn lead(
    log: &Weak<PgLog>,
    conn: &mut PgConnection,
    signer: &dyn NoteSigner,
    options: &LogOptions,
    own: &mut mpsc::UnboundedReceiver<Append>,
) -> Result<(), crate::sequencer::Stopped> {
    let stopped = |error: LogError| crate::sequencer::Stopped { error, unsequenced: Vec::new() };
    let Some(strong) = log.upgrade() else { return Ok(()) };
    // Every entry committed by an earlier leader, checked against its last checkpoint.
    strong.catch_up().await.map_err(stopped)?;
    let mut listener =
        PgListener::connect_with(&strong.pool).await.map_err(|e| stopped(db("listening for entries")(e)))?;
    listener.listen("clover_log_pending").await.map_err(|e| stopped(db("listening for entries")(e)))?;
    // What the last leader committed without a checkpoint (with an interval) is signed at once.
    let stored: Option<i64> = step(
        sqlx::query_scalar("SELECT size FROM log_checkpoint").fetch_optional(&mut *conn),
        "reading the checkpoint",
    )
    .await
    .map_err(stopped)?;
    let unsigned = stored.and_then(|s| u64::try_from(s).ok()).is_none_or(|s| s < strong.shared.tree().size());
    let shared = strong.shared.clone();
    drop(strong);
    let mut backend = PgBackend { log: log.clone(), conn, listener, taken: Vec::new() };
    sequence(&mut backend, &shared, signer, options, own, unsigned).await
}

/// The database as the leader writes it.
struct PgBackend<'a> {
    log: Weak<PgLog>,
    /// The connection that holds the sequencer's lock: commits go through it, so that a leader
    /// that lost its session cannot commit.
    conn: &'a mut PgConnection,
    listener: PgListener,
    /// The `log_pending` ids of the entries last taken, deleted when they are committed.
    taken: Vec<i64>,
}

impl Backend for PgBackend<'_> {
    async fn pending(&mut self, room: usize) -> Result<Vec<Append>, LogError> {
        if self.log.strong_count() == 0 {
            // The log was dropped: nothing more is taken; the sequencer ends with its channel.
            return Ok(Vec::new());
        }
        let room = i64::try_from(room).unwrap_or(PAGE);
        let rows = step(
            sqlx::query("SELECT id, token, entry FROM log_pending ORDER BY id LIMIT $1")
                .bind(room)
                .fetch_all(&mut *self.conn),
            "reading pending entries",
        )
        .await?;
        let read = db("reading pending entries");
        self.taken.clear();
        let mut appends = Vec::with_capacity(rows.len());
        for row in &rows {
            self.taken.push(row.try_get::<i64, _>(0).map_err(&read)?);
            appends.push(Append {
                token: row.try_get(1).map_err(&read)?,
                entry: row.try_get(2).map_err(&read)?,
                index_by: None,
                handed_in: true,
            });
        }
        Ok(appends)
    }

    async fn commit(
        &mut self,
        first: u64,
        batch: &[Append],
        checkpoint: Option<(u64, &str)>,
    ) -> Result<bool, LogError> {
        let indexes: Vec<i64> = (first..).take(batch.len()).map(|i| i64::try_from(i).unwrap_or(i64::MAX)).collect();
        let tokens: Vec<i64> = batch.iter().map(|a| a.token).collect();
        let entries: Vec<&[u8]> = batch.iter().map(|a| a.entry.as_slice()).collect();
        let ids = std::mem::take(&mut self.taken);
        let size = first + batch.len() as u64;
        let conn = &mut *self.conn;
        let committed = async {
            let mut tx = conn.begin().await?;
            // The database must end where this gateway's tree ends: rows lost (a standby promoted
            // without them, a restore) or written by another are not built on.
            let end: i64 =
                sqlx::query_scalar("SELECT coalesce(max(idx) + 1, 0) FROM log_entries").fetch_one(&mut *tx).await?;
            if u64::try_from(end).ok() != Some(first) {
                return Ok(Err(format!("the database's log ends at {end}, this gateway's at {first}")));
            }
            sqlx::query(
                "INSERT INTO log_entries (idx, token, entry) SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::bytea[])",
            )
            .bind(&indexes)
            .bind(&tokens)
            .bind(&entries)
            .execute(&mut *tx)
            .await?;
            let taken = if ids.is_empty() {
                0
            } else {
                sqlx::query("DELETE FROM log_pending WHERE id = ANY($1)")
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
            };
            if taken != ids.len() as u64 {
                // Another sequencer took some of them: rolled back, and this one steps down.
                return Ok(Err(format!(
                    "{} of {} pending entries were taken meanwhile",
                    ids.len() as u64 - taken,
                    ids.len()
                )));
            }
            if let Some((size, note)) = checkpoint {
                store_checkpoint(&mut tx, size, note).await?;
            }
            sqlx::query("SELECT pg_notify('clover_log', $1)").bind(size.to_string()).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(Ok(()))
        };
        match step(committed, "committing log entries").await {
            Ok(Ok(())) => Ok(checkpoint.is_some()),
            // Rolled back: the database contradicts this gateway's tree.
            Ok(Err(why)) => Err(match self.log.upgrade() {
                Some(log) => log.fail(why.into()),
                None => Contradiction::from(why).error(),
            }),
            // An error or no answer may come after the server committed: the entries may be in
            // the log, and are not handed in again (a catch-up answers them if they are).
            Err(error) => Err(LogError::CommitInDoubt { first, source: Box::new(error) }),
        }
    }

    async fn store_checkpoint(&mut self, size: u64, note: &str) -> Result<bool, LogError> {
        step(store_checkpoint(&mut *self.conn, size, note), "storing a checkpoint").await?;
        Ok(true)
    }

    async fn handed_in(&mut self) {
        // Looks now and then without being told, too: a notification can be lost.
        let _ = tokio::time::timeout(FOLLOW_EVERY, self.listener.recv()).await;
    }
}

async fn store_checkpoint(conn: &mut PgConnection, size: u64, note: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO log_checkpoint (only_row, size, note) VALUES (TRUE, $1, $2) \
         ON CONFLICT (only_row) DO UPDATE SET size = excluded.size, note = excluded.note \
         WHERE log_checkpoint.size <= excluded.size",
    )
    .bind(i64::try_from(size).unwrap_or(i64::MAX))
    .bind(note)
    .execute(conn)
    .await?;
    Ok(())
}
