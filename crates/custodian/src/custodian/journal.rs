//! The custodian's journal: every data key it hands out and every pseudonym it answers, with the
//! log index and entry hash of the access, the action (`view` for a view, `pseudonym` for a token) and the purpose
//! declared; never a pseudonym's input. Records are written in batches by a task of their own
//! (one transaction for every record waiting), and a key (or a token) leaves the custodian only
//! once its record is committed: a key whose record cannot be written is withheld. A read's or
//! write's record carries the receipt it uses up, claimed in the same transaction (see
//! `receipts`): one durable step for both.

use std::sync::Arc;

use clover_keys::KeyError;
use tokio::sync::{mpsc, oneshot};

use super::access::{LoggedAccess, UnwrapRecord};
use super::receipts::{forget_if_due, reused};
use super::store::{KeyStoreBackend, Unwritten, failed, now};

/// The journal: where records are sent, and the key store that keeps them.
pub(crate) struct Journal {
    queue: mpsc::UnboundedSender<Sent>,
    db: Arc<dyn KeyStoreBackend>,
}

/// What the journal's writer is sent.
enum Sent {
    /// A record, with the receipt it uses up if it claims one (entry hash, log index), and
    /// where to say whether it was committed (false: its receipt was honoured before, and
    /// nothing was written for it).
    Record(UnwrapRecord, Option<(String, i64)>, oneshot::Sender<Result<bool, Unwritten>>),
    /// Where to say that every record sent before is written.
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
        self.write(UnwrapRecord::of(access, cached, now()), None).await.map(|_| ())
    }

    /// Claims the receipt of `access` (as [`super::receipts::Receipts::claim`]) and records the
    /// key about to be handed out for it, in one transaction with the others waiting: one
    /// durable step where there were two. A receipt honoured before is refused, logged and
    /// counted, and nothing is journalled for it; an error means the key must not leave.
    pub(crate) async fn claim_and_record(&self, access: &LoggedAccess, cached: bool) -> Result<(), KeyError> {
        self.claimed(access, UnwrapRecord::of(access, cached, now())).await
    }

    /// [`Journal::claim_and_record`] for a pseudonymised view about to be answered for the read
    /// `access` (action `view`: the custodian opened the record, no key left).
    pub(crate) async fn claim_and_record_view(&self, access: &LoggedAccess, cached: bool) -> Result<(), KeyError> {
        self.claimed(access, UnwrapRecord::view(access, cached, now())).await
    }

    async fn claimed(&self, access: &LoggedAccess, record: UnwrapRecord) -> Result<(), KeyError> {
        let receipt = (access.entry_hash.clone(), i64::try_from(access.log_index).unwrap_or(i64::MAX));
        if self.write(record, Some(receipt)).await? { Ok(()) } else { Err(reused(access)) }
    }

    /// Records a pseudonym about to be answered for `access` (action `pseudonym`), and waits
    /// until the record is committed. An error means the token must not leave.
    pub(crate) async fn record_pseudonym(&self, access: &LoggedAccess) -> Result<(), KeyError> {
        self.write(UnwrapRecord::pseudonym(access, now()), None).await.map(|_| ())
    }

    /// Records the records of a transfer opened for its receipt (action `transfer`: the
    /// custodian opened them and answered their treatment, no key left), and waits until they
    /// are committed.
    pub(crate) async fn record_transfer(&self, records: Vec<UnwrapRecord>) -> Result<(), KeyError> {
        futures_util::future::try_join_all(records.into_iter().map(|record| self.write(record, None))).await.map(|_| ())
    }

    /// Sends `record` (with the receipt it claims) to the writer and waits until it is
    /// committed; false if its receipt was honoured before.
    async fn write(&self, record: UnwrapRecord, receipt: Option<(String, i64)>) -> Result<bool, KeyError> {
        let unwritten = |why: Unwritten| why.into_error("writing the journal");
        let stopped = || unwritten(Unwritten::stopped("the journal"));
        let (done, written) = oneshot::channel();
        self.queue.send(Sent::Record(record, receipt, done)).map_err(|_| stopped())?;
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

/// Writes the records sent on `queue`, a batch per transaction with the receipts they claim,
/// until every sender is gone; forgets the receipts past their window now and then.
async fn write(db: Arc<dyn KeyStoreBackend>, mut queue: mpsc::UnboundedReceiver<Sent>) {
    let mut batch = Vec::new();
    let mut forgotten = None;
    while queue.recv_many(&mut batch, 1024).await > 0 {
        let mut waiting = Vec::new();
        let mut records = Vec::new();
        let mut claims = Vec::new();
        let mut answers = Vec::new();
        for item in batch.drain(..) {
            match item {
                Sent::Record(record, receipt, done) => {
                    claims.push(receipt);
                    records.push(record);
                    answers.push(done);
                }
                Sent::Flush(done) => waiting.push(done),
            }
        }
        // The receipts in the order of their entry hashes, the same in every custodian, so that
        // two custodians' batches on one key store never wait on each other; each record knows
        // its receipt's place.
        let mut order: Vec<usize> = (0..claims.len()).filter(|&i| matches!(claims.get(i), Some(Some(_)))).collect();
        order.sort_by(|&a, &b| claims.get(a).cmp(&claims.get(b)));
        let mut place = vec![None; claims.len()];
        let mut receipts = Vec::with_capacity(order.len());
        for (p, &i) in order.iter().enumerate() {
            if let (Some(Some((hash, index))), Some(slot)) = (claims.get(i), place.get_mut(i)) {
                receipts.push((hash.as_str(), *index));
                *slot = Some(p);
            }
        }
        let outcome = if records.is_empty() {
            Ok(Vec::new())
        } else {
            let paired: Vec<(Option<usize>, &UnwrapRecord)> = place.iter().copied().zip(records.iter()).collect();
            db.honour_and_journal(&receipts, &paired, now()).await
        };
        if let Err(e) = &outcome {
            tracing::error!(error = %e, withheld = records.len(), "the custodian's journal could not be written; the keys are withheld");
        }
        for (done, place) in answers.into_iter().zip(place) {
            let answer = match &outcome {
                // A record without a receipt was written; one with is written only if its
                // receipt was new.
                Ok(new) => Ok(place.is_none_or(|p| new.get(p).copied().unwrap_or(false))),
                Err(e) => Err(Unwritten::of(e)),
            };
            // The asker may have gone (its request cancelled): its receipt is used all the same.
            let _ = done.send(answer);
        }
        for done in waiting {
            let _ = done.send(());
        }
        if !receipts.is_empty() {
            forget_if_due(db.as_ref(), &mut forgotten).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::custodian::receipts::Receipts;
    use crate::custodian::store::KeyStore;

    fn access(log_index: u64, entry_hash: &str) -> LoggedAccess {
        LoggedAccess::read_for_test(log_index, entry_hash)
    }

    fn reused(result: Result<(), KeyError>, index: u64) {
        match result {
            Err(KeyError::Receipt(message)) => assert_eq!(
                message,
                format!("the receipt for log entry {index} was already used: a receipt opens its key once")
            ),
            other => panic!("a receipt presented again answered {other:?}"),
        }
    }

    /// A receipt claimed with its journal record opens its key once, whether presented again
    /// later, twice in one batch, or after a claim through the receipts' own writer; only the
    /// record of the claim that was honoured is journalled.
    #[tokio::test]
    async fn a_receipt_claimed_with_its_record_is_honoured_once_and_journalled_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = KeyStore::Sqlite(dir.path().join("keys.db")).open().await.unwrap();
        let journal = Journal::start(db.clone());

        journal.claim_and_record(&access(1, "e1"), false).await.unwrap();
        reused(journal.claim_and_record(&access(1, "e1"), true).await, 1);
        reused(journal.claim_and_record_view(&access(1, "e1"), true).await, 1);

        // Sent together, so that one batch holds both: one is honoured.
        let twice = access(2, "e2");
        let (a, b) = tokio::join!(journal.claim_and_record(&twice, false), journal.claim_and_record(&twice, false));
        assert!(a.is_ok() != b.is_ok(), "one of two claims of one receipt is honoured: {a:?} {b:?}");

        // The receipts' own writer and the journal's share one table of receipts honoured.
        Receipts::start(db.clone()).claim(&access(3, "e3")).await.unwrap();
        reused(journal.claim_and_record(&access(3, "e3"), false).await, 3);
        journal.claim_and_record(&access(4, "e4"), true).await.unwrap();
        reused(Receipts::start(db.clone()).claim(&access(4, "e4")).await, 4);

        // Records without a receipt (a pseudonym) go in the same batches.
        journal.record_pseudonym(&access(1, "e1")).await.unwrap();

        let records = journal.read().await.unwrap();
        let journalled: Vec<(u64, &str, bool)> =
            records.iter().map(|r| (r.log_index, r.action.as_str(), r.cached)).collect();
        assert_eq!(journalled, [(1, "read", false), (2, "read", false), (4, "read", true), (1, "pseudonym", false)]);
    }
}
