//! What the soak was told: every write, read, erasure and refusal a gateway acknowledged, by the
//! store they went to, and every outcome counted by operation, kind and phase.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The `i`th of `items`, or an error naming what was missing (no panic on an index).
pub(crate) fn nth<'a, T>(items: &'a mut [T], i: usize, what: &str) -> anyhow::Result<&'a mut T> {
    items.get_mut(i).ok_or_else(|| anyhow::anyhow!("no {what} {i}"))
}

/// How long a subject waits between being retired (no new writes) and being erased: longer
/// than any request in flight on it may take.
pub(crate) const RETIRE_FOR: Duration = Duration::from_secs(15);

/// A write a gateway acknowledged (201, with its record id and log index).
#[derive(Debug, Clone)]
pub(crate) struct Acked {
    pub(crate) record_id: String,
    pub(crate) subject: String,
    /// The value written, read back and compared.
    pub(crate) value: String,
    pub(crate) log_index: u64,
}

/// One store's side of the soak (the PostgreSQL store the two gateways share, or the SQLite
/// gateway's own).
#[derive(Debug, Default)]
pub(crate) struct Group {
    /// Subjects written to.
    pub(crate) active: Vec<String>,
    /// Subjects retired from writes, waiting to be erased, since when.
    pub(crate) retiring: VecDeque<(String, Instant)>,
    /// Subjects whose erasure is under way (sent, not answered).
    pub(crate) erasing: std::collections::HashSet<String>,
    /// Acknowledged writes of subjects not erased.
    pub(crate) records: Vec<Acked>,
    /// Records of erased subjects: never readable again.
    pub(crate) erased_records: Vec<String>,
    /// Subjects erased (erasure acknowledged).
    pub(crate) erased_subjects: u64,
    /// Log indexes a gateway of this store acknowledged, with the action each was for, that
    /// no check has found in the log yet.
    pub(crate) indexes: Vec<(u64, &'static str)>,
    /// How many of `records` the checks have read back so far.
    pub(crate) checked_upto: usize,
    /// Subjects made so far (for names).
    pub(crate) made: u64,
}

impl Group {
    /// Moves the subject of `record_id`'s records to the erased side.
    pub(crate) fn erased(&mut self, subject: &str) {
        let (gone, kept): (Vec<Acked>, Vec<Acked>) =
            std::mem::take(&mut self.records).into_iter().partition(|a| a.subject == subject);
        self.records = kept;
        self.erased_records.extend(gone.into_iter().map(|a| a.record_id));
        self.erased_subjects += 1;
        // Read back already or not, the checks' mark must not skip records that moved down.
        self.checked_upto = self.checked_upto.min(self.records.len());
    }

    /// Whether `subject` may be erased by now without the ledger knowing yet: retired (an
    /// erasure may have been made whose answer was lost), or its erasure under way.
    pub(crate) fn may_be_erased(&self, subject: &str) -> bool {
        self.erasing.contains(subject) || self.retiring.iter().any(|(s, _)| s == subject)
    }

    /// A subject whose retirement has lasted [`RETIRE_FOR`], taken off the queue.
    pub(crate) fn ripe(&mut self) -> Option<String> {
        let (_, since) = self.retiring.front()?;
        if since.elapsed() < RETIRE_FOR {
            return None;
        }
        self.retiring.pop_front().map(|(s, _)| s)
    }
}

/// The operations of the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Op {
    /// Register a subject.
    Subject,
    /// Write a record.
    Write,
    /// Read an acknowledged record.
    Read,
    /// Read a record of an erased subject (must not be answered with data).
    ReadErased,
    /// Erase a retired subject.
    Erase,
    /// A read policy refuses (a purpose the caller's roles may not declare).
    Refused,
    /// The checks' reads back and probes.
    Check,
}

/// Counts of outcomes, by phase (`steady`, or the fault under way), operation and outcome.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Tally {
    pub(crate) counts: BTreeMap<String, BTreeMap<Op, BTreeMap<String, u64>>>,
    /// Answers that break a promise (data of an erased subject, a 5xx without a problem
    /// document, an acknowledged write not readable): each described.
    pub(crate) violations: Vec<String>,
}

impl Tally {
    pub(crate) fn count(&mut self, phase: &str, op: Op, outcome: &str) {
        *self
            .counts
            .entry(phase.to_owned())
            .or_default()
            .entry(op)
            .or_default()
            .entry(outcome.to_owned())
            .or_default() += 1;
    }

    /// Operations in all, and those that did not succeed as asked (refusals expected of
    /// `refused` not among them).
    pub(crate) fn totals(&self) -> (u64, u64) {
        let mut all = 0;
        let mut failed = 0;
        for ops in self.counts.values() {
            for (op, outcomes) in ops {
                for (outcome, n) in outcomes {
                    all += n;
                    if !is_success(*op, outcome) {
                        failed += n;
                    }
                }
            }
        }
        (all, failed)
    }
}

/// Whether `outcome` is what `op` asks for.
pub(crate) fn is_success(op: Op, outcome: &str) -> bool {
    match op {
        Op::Refused => outcome == "refused",
        Op::ReadErased => outcome == "gone",
        _ => outcome == "ok",
    }
}
