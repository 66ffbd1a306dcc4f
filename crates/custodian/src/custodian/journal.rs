//! The custodian's journal: every data key it hands out, with the log index and entry hash of
//! the access, the action and the purpose declared. Records are written in batches by a task of
//! their own, off the path that hands the key out.

use std::sync::Arc;

use clover_keys::KeyError;
use tokio::sync::{mpsc, oneshot};

use super::store::KeyStoreBackend;
use super::{Custodian, LoggedAccess, now, store_error};

/// One entry of the custodian's journal: a data key handed out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnwrapRecord {
    /// Seconds since the Unix epoch.
    pub time: i64,
    /// The subject, as the log's keyed hash.
    pub subject: String,
    /// The action the receipt allowed.
    pub action: String,
    /// The index of the log entry of the access.
    pub log_index: u64,
    /// The hash of that entry (RFC 6962 leaf hash, hex).
    pub entry_hash: String,
    /// The purpose declared for the access.
    pub purpose: Option<String>,
    /// Whether the key came from the cache.
    pub cached: bool,
}

/// What the journal's writer is sent.
pub(super) enum Journal {
    Record(UnwrapRecord),
    Flush(oneshot::Sender<()>),
}

/// Writes the records sent on `queue`, a batch per transaction, until every sender is gone.
pub(super) async fn write_journal(db: Arc<dyn KeyStoreBackend>, mut queue: mpsc::UnboundedReceiver<Journal>) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, 1024).await > 0 {
        let mut waiting = Vec::new();
        let mut records = Vec::new();
        for item in batch.drain(..) {
            match item {
                Journal::Record(record) => records.push(record),
                Journal::Flush(done) => waiting.push(done),
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

impl Custodian {
    pub(super) fn record(&self, access: &LoggedAccess, cached: bool) {
        let record = UnwrapRecord {
            time: now(),
            subject: access.subject_hash.clone(),
            action: access.action.to_string(),
            log_index: access.log_index,
            entry_hash: access.entry_hash.clone(),
            purpose: access.purpose.clone(),
            cached,
        };
        // The writer lives as long as the pool; if it is gone the process is shutting down.
        let _ = self.journal.send(Journal::Record(record));
    }

    /// Waits until every journal record sent so far is written.
    pub async fn flush_journal(&self) {
        let (done, wait) = oneshot::channel();
        if self.journal.send(Journal::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// The journal, oldest first (after a flush).
    pub async fn journal(&self) -> Result<Vec<UnwrapRecord>, KeyError> {
        self.flush_journal().await;
        self.db.journal().await.map_err(store_error("reading the journal"))
    }
}
