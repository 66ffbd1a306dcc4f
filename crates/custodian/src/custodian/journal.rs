//! The custodian's journal: every data key it hands out and every pseudonym it answers, with the
//! log index and entry hash of the access, the action (`view` for a view, `pseudonym` for a token) and the purpose
//! declared; never a pseudonym's input. Records are written in batches by a task of their own
//! (one transaction for every record waiting), and a key (or a token) leaves the custodian only
//! once its record is committed: a key whose record cannot be written is withheld.

use std::sync::Arc;

use clover_keys::KeyError;
use tokio::sync::{mpsc, oneshot};

use super::access::{LoggedAccess, UnwrapRecord};
use super::store::{KeyStoreBackend, Unwritten, failed, now};

/// The journal: where records are sent, and the key store that keeps them.
pub(crate) struct Journal {
    queue: mpsc::UnboundedSender<Sent>,
    db: Arc<dyn KeyStoreBackend>,
}

/// What the journal's writer is sent: a record, with where to say whether it was committed.
enum Sent {
    Record(UnwrapRecord, oneshot::Sender<Result<(), Unwritten>>),
    Flush(oneshot::Sender<()>),
}

impl Journal {
    /// Starts the writer of the journal kept in `db`.
    pub(crate) fn start(db: Arc<dyn KeyStoreBackend>) -> Self {
        let (queue, received) = mpsc::unbounded_channel();
        tokio::spawn(write(db.clone(), received));
        Self { queue, db }
    }

    /// Records a key about to be handed out for `access` (from the cache, or unwrapped), and
    /// waits until the record is committed, with others waiting at the same time. An error means
    /// the key must not leave.
    pub(crate) async fn record(&self, access: &LoggedAccess, cached: bool) -> Result<(), KeyError> {
        self.write(UnwrapRecord::of(access, cached, now())).await
    }

    /// Records a pseudonymised view about to be answered for the read `access` (action `view`:
    /// the custodian opened the record, no key left), and waits until it is committed.
    pub(crate) async fn record_view(&self, access: &LoggedAccess, cached: bool) -> Result<(), KeyError> {
        self.write(UnwrapRecord::view(access, cached, now())).await
    }

    /// Records a pseudonym about to be answered for `access` (action `pseudonym`), and waits
    /// until the record is committed. An error means the token must not leave.
    pub(crate) async fn record_pseudonym(&self, access: &LoggedAccess) -> Result<(), KeyError> {
        self.write(UnwrapRecord::pseudonym(access, now())).await
    }

    /// Records the records of a transfer opened for its receipt (action `transfer`: the
    /// custodian opened them and answered their treatment, no key left), and waits until they
    /// are committed.
    pub(crate) async fn record_transfer(&self, records: Vec<UnwrapRecord>) -> Result<(), KeyError> {
        futures_util::future::try_join_all(records.into_iter().map(|record| self.write(record))).await.map(|_| ())
    }

    /// Sends `record` to the writer and waits until it is committed.
    async fn write(&self, record: UnwrapRecord) -> Result<(), KeyError> {
        let unwritten = |why: Unwritten| why.into_error("writing the journal");
        let stopped = || unwritten(Unwritten::stopped("the journal"));
        let (done, written) = oneshot::channel();
        self.queue.send(Sent::Record(record, done)).map_err(|_| stopped())?;
        written.await.map_err(|_| stopped())?.map_err(unwritten)
    }

    /// Waits until every record sent so far is written.
    pub(crate) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Sent::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// The journal, oldest first (after a flush).
    pub(crate) async fn read(&self) -> Result<Vec<UnwrapRecord>, KeyError> {
        self.flush().await;
        self.db.journal().await.map_err(failed("reading the journal"))
    }
}

/// Writes the records sent on `queue`, a batch per transaction, until every sender is gone.
async fn write(db: Arc<dyn KeyStoreBackend>, mut queue: mpsc::UnboundedReceiver<Sent>) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, 1024).await > 0 {
        let mut waiting = Vec::new();
        let mut records = Vec::new();
        let mut answers = Vec::new();
        for item in batch.drain(..) {
            match item {
                Sent::Record(record, done) => {
                    records.push(record);
                    answers.push(done);
                }
                Sent::Flush(done) => waiting.push(done),
            }
        }
        let outcome = if records.is_empty() { Ok(()) } else { db.append_journal(&records).await };
        if let Err(e) = &outcome {
            tracing::error!(error = %e, withheld = records.len(), "the custodian's journal could not be written; the keys are withheld");
        }
        for done in answers {
            // The asker may have gone (its request cancelled): nothing to withhold then.
            let _ = done.send(outcome.as_ref().map(|_| ()).map_err(Unwritten::of));
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}
