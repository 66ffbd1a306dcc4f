//! The receipts honoured: a receipt opens its key once. A log entry that allowed one read gets
//! the subject's key for that read, not for every read of the next ten minutes; whoever keeps a
//! copy of the entry (the boundary's operators, a log mirror, anyone who reads the public log
//! and has the subject's hash) cannot present it again.
//!
//! Each receipt the custodian honours is recorded in the key store by its entry's leaf hash
//! (`honoured_receipts`), before the key leaves: the database's primary key decides whether it
//! is new, so that of two custodians sharing a PostgreSQL key store only one honours it, and a
//! restarted custodian still knows what it honoured. The key store is the only authority: no set
//! of receipts is kept in memory, since every claim must reach the store anyway for the other
//! custodians on it, and a set would only speed up the refusals.
//!
//! A receipt's entry older than [`MAX_RECEIPT_AGE`] is refused anyway, so the key store forgets
//! a receipt [`REMEMBERED_FOR`] after honouring it: the table holds the receipts of that window,
//! bounded by the rate of accesses times the window.
//!
//! Claims are written in batches by a task of their own, like the journal: one transaction for
//! every claim waiting, in the order of their entry hashes (the same order in every custodian,
//! so that two custodians' batches never wait on each other).

use std::time::{Duration, Instant};

use clover_keys::KeyError;
use tokio::sync::{mpsc, oneshot};

use super::access::LoggedAccess;
use super::store::{KeyStoreBackend, Unwritten, now};
use crate::verify::MAX_RECEIPT_AGE;

/// The counter of receipts presented again and refused.
pub const RECEIPTS_REUSED_METRIC: &str = "clover_custodian_receipts_reused_total";

/// How long the key store remembers a receipt it honoured: [`MAX_RECEIPT_AGE`], past which the
/// receipt's entry is refused anyway, and five minutes more, for the minute an entry may be
/// ahead of the custodian's clock and for the clocks of custodians sharing a key store, which
/// each record and forget receipts by their own.
pub const REMEMBERED_FOR: Duration = Duration::from_secs(MAX_RECEIPT_AGE.as_secs() + 300);

/// How often the key store forgets the receipts past [`REMEMBERED_FOR`], at most: after the
/// first batch of claims, then after the first batch a minute or more after the last time.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// The most claims written in one transaction.
const BATCH: usize = 1024;

/// The receipts honoured: where claims are sent.
pub(crate) struct Receipts {
    queue: mpsc::UnboundedSender<Claim>,
}

/// A receipt to honour, with where to say whether it was new.
struct Claim {
    entry_hash: String,
    log_index: i64,
    answer: oneshot::Sender<Result<bool, Unwritten>>,
}

impl Receipts {
    /// Starts the writer of the receipts honoured, kept in `db`.
    pub(crate) fn start(db: std::sync::Arc<dyn KeyStoreBackend>) -> Self {
        let (queue, received) = mpsc::unbounded_channel();
        tokio::spawn(write(db, received));
        Self { queue }
    }

    /// Claims the receipt of `access`: records it as honoured, and waits until that is
    /// committed. A receipt honoured before (by this custodian or another on its key store) is
    /// refused, logged and counted; an error means the key must not leave.
    pub(crate) async fn claim(&self, access: &LoggedAccess) -> Result<(), KeyError> {
        let unrecorded = |why: Unwritten| why.into_error("recording a receipt honoured");
        let stopped = || unrecorded(Unwritten::stopped("the receipts honoured"));
        let (answer, answered) = oneshot::channel();
        let claim = Claim {
            entry_hash: access.entry_hash.clone(),
            log_index: i64::try_from(access.log_index).unwrap_or(i64::MAX),
            answer,
        };
        self.queue.send(claim).map_err(|_| stopped())?;
        if answered.await.map_err(|_| stopped())?.map_err(unrecorded)? {
            return Ok(());
        }
        Err(reused(access))
    }
}

/// A receipt presented again, found honoured before: logged, counted, and the refusal.
pub(crate) fn reused(access: &LoggedAccess) -> KeyError {
    tracing::warn!(
        log_index = access.log_index,
        entry_hash = %access.entry_hash,
        action = %access.action,
        "refused a receipt presented again: it was honoured before"
    );
    metrics::counter!(RECEIPTS_REUSED_METRIC).increment(1);
    KeyError::Receipt(format!(
        "the receipt for log entry {} was already used: a receipt opens its key once",
        access.log_index
    ))
}

/// Forgets the receipts past [`REMEMBERED_FOR`] in `db`, if the last time (`forgotten`) was
/// [`FORGET_EVERY`] ago or more.
pub(crate) async fn forget_if_due(db: &dyn KeyStoreBackend, forgotten: &mut Option<Instant>) {
    if forgotten.is_some_and(|at| at.elapsed() < FORGET_EVERY) {
        return;
    }
    *forgotten = Some(Instant::now());
    let before = now().saturating_sub(i64::try_from(REMEMBERED_FOR.as_secs()).unwrap_or(i64::MAX));
    match db.forget_receipts(before).await {
        Ok(n) => tracing::debug!(forgotten = n, "forgot the receipts past their window"),
        // The table grows until the next time; nothing is honoured twice meanwhile.
        Err(e) => tracing::warn!(error = %e, "cannot forget the receipts past their window"),
    }
}

/// Writes the claims sent on `queue`, a batch per transaction, until every sender is gone;
/// forgets the receipts past [`REMEMBERED_FOR`] now and then.
async fn write(db: std::sync::Arc<dyn KeyStoreBackend>, mut queue: mpsc::UnboundedReceiver<Claim>) {
    let mut batch = Vec::new();
    let mut forgotten: Option<Instant> = None;
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        batch.sort_by(|a, b| a.entry_hash.cmp(&b.entry_hash));
        let receipts: Vec<(&str, i64)> = batch.iter().map(|c| (c.entry_hash.as_str(), c.log_index)).collect();
        let outcome = db.honour(&receipts, now()).await;
        if let Err(e) = &outcome {
            tracing::error!(error = %e, withheld = batch.len(), "the receipts honoured could not be recorded; the keys are withheld");
        }
        for (i, claim) in batch.drain(..).enumerate() {
            let answer = match &outcome {
                // One answer per receipt, in order: a missing one is not honoured.
                Ok(new) => Ok(new.get(i).copied().unwrap_or(false)),
                Err(e) => Err(Unwritten::of(e)),
            };
            // The asker may have gone (its request cancelled): the receipt is used all the same.
            let _ = claim.answer.send(answer);
        }
        forget_if_due(db.as_ref(), &mut forgotten).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::sync::Arc;

    use super::*;
    use crate::custodian::store::KeyStore;

    fn access(log_index: u64, entry_hash: &str) -> LoggedAccess {
        LoggedAccess::read_for_test(log_index, entry_hash)
    }

    async fn sqlite() -> (tempfile::TempDir, Arc<dyn KeyStoreBackend>) {
        let dir = tempfile::tempdir().unwrap();
        let db = KeyStore::Sqlite(dir.path().join("keys.db")).open().await.unwrap();
        (dir, db)
    }

    #[tokio::test]
    async fn a_receipt_is_honoured_once() {
        let (_dir, db) = sqlite().await;
        let receipts = Receipts::start(db.clone());
        receipts.claim(&access(7, "e7")).await.unwrap();
        let again = receipts.claim(&access(7, "e7")).await;
        match again {
            Err(KeyError::Receipt(message)) => {
                assert_eq!(message, "the receipt for log entry 7 was already used: a receipt opens its key once")
            }
            other => panic!("{other:?}"),
        }
        // Another entry is another receipt, at the same index or not.
        receipts.claim(&access(7, "e7-other")).await.unwrap();
        // Claimed at the same time, one of two is honoured.
        let twice = access(8, "e8");
        let (a, b) = tokio::join!(receipts.claim(&twice), receipts.claim(&twice));
        assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
        // A custodian opened again on the key store still knows.
        drop(receipts);
        assert!(Receipts::start(db).claim(&access(7, "e7")).await.is_err());
    }

    #[tokio::test]
    async fn a_receipt_twice_in_one_batch_is_honoured_once() {
        let (_dir, db) = sqlite().await;
        let first = db.honour(&[("a", 1), ("a", 1), ("b", 2), ("a", 1)], now()).await.unwrap();
        assert_eq!(first, [true, false, true, false]);
        assert_eq!(db.honour(&[("b", 2), ("c", 3), ("c", 3)], now()).await.unwrap(), [false, true, false]);
    }

    #[tokio::test]
    async fn the_key_store_forgets_receipts_past_their_window() {
        let (_dir, db) = sqlite().await;
        let long_ago = now() - i64::try_from(REMEMBERED_FOR.as_secs()).unwrap() - 1;
        assert_eq!(db.honour(&[("old", 1), ("recent", 2)], long_ago).await.unwrap(), [true, true]);
        assert_eq!(db.honour(&[("recent", 2)], now()).await.unwrap(), [false]);
        assert_eq!(db.forget_receipts(long_ago).await.unwrap(), 0, "nothing before the oldest");
        // The writer forgets after its first batch.
        let receipts = Receipts::start(db.clone());
        receipts.claim(&access(3, "new")).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while db.honour(&[("old", 1)], long_ago).await.unwrap() != [true] {
            assert!(Instant::now() < deadline, "the old receipt is still remembered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
