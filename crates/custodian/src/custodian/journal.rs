//! The custodian's journal: every data key it hands out, with the log index and entry hash of
//! the access, the action and the purpose declared. Records are written in batches by a task of
//! their own, off the path that hands the key out.

use std::sync::Arc;

use clover_keys::KeyError;
use tokio::sync::{mpsc, oneshot};

use super::access::{LoggedAccess, UnwrapRecord};
use super::store::{KeyStoreBackend, failed, now};

/// The journal: where records are sent, and the key store that keeps them.
pub(crate) struct Journal {
    queue: mpsc::UnboundedSender<Sent>,
    db: Arc<dyn KeyStoreBackend>,
}

/// What the journal's writer is sent.
enum Sent {
    Record(UnwrapRecord),
    Flush(oneshot::Sender<()>),
}

impl Journal {
    /// Starts the writer of the journal kept in `db`.
    pub(crate) fn start(db: Arc<dyn KeyStoreBackend>) -> Self {
        let (queue, received) = mpsc::unbounded_channel();
        tokio::spawn(write(db.clone(), received));
        Self { queue, db }
    }

    /// Records a key handed out for `access` (from the cache, or unwrapped).
    pub(crate) fn record(&self, access: &LoggedAccess, cached: bool) {
        // The writer lives as long as the pool; if it is gone the process is shutting down.
        let _ = self.queue.send(Sent::Record(UnwrapRecord::of(access, cached, now())));
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
        for item in batch.drain(..) {
            match item {
                Sent::Record(record) => records.push(record),
                Sent::Flush(done) => waiting.push(done),
            }
        }
        if !records.is_empty()
            && let Err(e) = db.append_journal(&records).await
        {
            tracing::error!(error = %e, lost = records.len(), "the custodian's journal could not be written");
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}
