//! Transfers out of the region, the custodian's side: it opens each record of a logged, allowed
//! transfer itself and answers only what its own transfer rules let leave, with tokens and FF1
//! keyed for the transfer's (region, purpose, destination). No key leaves; minors' and erased
//! subjects' records are left out; each record opened is journalled (action `transfer`).
//!
//! A transfer's receipt is for the whole transfer, not one record: its entry (kind `transfer`)
//! names the destination, the purpose and the categories, and the custodian opens only records
//! of those categories, for a destination its own configuration gives a legal basis and that
//! purpose. The journal keeps one record per subject of each batch opened for a transfer
//! (which transfer's entry, when, for what purpose), rather than one per record.

use std::collections::{HashMap, HashSet};

use clover_egress::{Destination, TransferRules};
use clover_event::{Entry, Event, EventKind};
use clover_keys::{DataKey, KeyError, TransferItem, TransferOutcome, aad};
use clover_log::{TRANSFER_STAGES_THAT_OPEN, TransferReceipt};
use clover_model::{Action, Category, Fields};
use time::OffsetDateTime;

use super::access::UnwrapRecord;
use super::{Custodian, id_input};

/// The rules the custodian applies to transfers: its own copy of the region's destinations and
/// transfer rules (`[[destinations]]` and `[[transfer_rules]]` of its configuration).
#[derive(Debug, Clone, Default)]
pub struct EgressRules {
    /// The destinations.
    pub destinations: Vec<Destination>,
    /// What each field becomes.
    pub rules: TransferRules,
}

/// A transfer's receipt, checked: what it allows the custodian to open.
#[derive(Debug)]
pub(crate) struct LoggedTransfer {
    pub(crate) log_index: u64,
    pub(crate) entry_hash: String,
    pub(crate) destination: String,
    pub(crate) purpose: String,
    pub(crate) categories: Vec<Category>,
    /// The entry's stage (`decided` or `started`).
    pub(crate) stage: String,
    /// The entry's treatment (`pseudonymised`, or `dp-laplace` for an aggregate).
    pub(crate) treatment: String,
}

impl LoggedTransfer {
    /// Reads what `receipt`'s entry allows, refusing one that is not an allowed transfer at a
    /// stage that opens records, is not recent, or is for a destination and purpose the
    /// custodian's own configuration gives no legal basis.
    pub(crate) fn of(receipt: &TransferReceipt, egress: &EgressRules) -> Result<Self, KeyError> {
        let refuse = |detail: &str| KeyError::Receipt(format!("log entry {}: {detail}", receipt.index()));
        let event: Event = match Entry::decode(receipt.entry()) {
            Ok(Entry::V2(event)) => event,
            _ => return Err(refuse("its entry is not a current log entry")),
        };
        let facts = event.transfer.as_ref().ok_or_else(|| refuse("its entry is not a transfer's"))?;
        if event.kind != EventKind::Transfer
            || event.action.as_deref() != Some(Action::Export.as_str())
            || event.decision.as_ref().is_none_or(|d| d.effect != "allow")
            || !TRANSFER_STAGES_THAT_OPEN.contains(&facts.stage.as_str())
        {
            return Err(refuse("its entry is not an allowed transfer's decision or start"));
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let max_age = i64::try_from(crate::verify::MAX_RECEIPT_AGE.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_sub(event.time) > max_age || event.time.saturating_sub(now) > 60 {
            return Err(refuse("it is not recent: a transfer's receipt is for its stream, now"));
        }
        let destination = facts.destination.clone().ok_or_else(|| refuse("it names no destination"))?;
        let purpose = event.purpose.clone().ok_or_else(|| refuse("it names no purpose"))?;
        let lawful = egress
            .destinations
            .iter()
            .find(|d| d.name == destination)
            .is_some_and(|d| d.legal_basis.is_some() && d.allows(&purpose));
        if !lawful {
            tracing::warn!(
                log_index = receipt.index(),
                destination,
                purpose,
                "refused a transfer to a destination this custodian gives no legal basis for the purpose"
            );
            return Err(refuse("this custodian's configuration gives its destination no legal basis for its purpose"));
        }
        let categories = facts
            .categories
            .iter()
            .map(|c| c.parse::<Category>().map_err(|_| refuse("it names a category that is not one")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            log_index: receipt.index(),
            entry_hash: receipt.entry_hash_hex(),
            destination,
            purpose,
            categories,
            stage: facts.stage.clone(),
            treatment: facts.treatment.clone(),
        })
    }
}

impl Custodian {
    /// Checks a transfer receipt made in this process: against the boundary's log (the entry
    /// must be the log's at its index), then as [`LoggedTransfer::of`].
    pub(crate) fn transfer_access(&self, receipt: &TransferReceipt) -> Result<LoggedTransfer, KeyError> {
        if let Some(log) = &self.log
            && log.leaf_hash(receipt.index()).as_ref() != Some(receipt.entry_hash())
        {
            tracing::warn!(log_index = receipt.index(), "refused a transfer receipt whose entry is not the log's");
            return Err(KeyError::Receipt(format!(
                "log entry {}: its entry is not the one the log holds at that index",
                receipt.index()
            )));
        }
        LoggedTransfer::of(receipt, &self.egress)
    }

    /// Checks a transfer receipt a boundary in another process sent, whose entry the caller
    /// found in the signed log, as [`LoggedTransfer::of`].
    pub(crate) fn checked_transfer(&self, receipt: &TransferReceipt) -> Result<LoggedTransfer, KeyError> {
        LoggedTransfer::of(receipt, &self.egress)
    }

    /// Treats the records `items` of the transfer `access` (see the module's documentation).
    pub(crate) async fn transfer_for(
        &self,
        access: &LoggedTransfer,
        items: Vec<TransferItem>,
        quasi_only: bool,
    ) -> Result<Vec<TransferOutcome>, KeyError> {
        // A decision (counted before the manifest) and an aggregate need the quasi-identifiers
        // only: the whole treatment, tokens and FF1, is for the records of a record transfer's
        // stream.
        if !quasi_only && (access.stage != "started" || access.treatment != "pseudonymised") {
            tracing::warn!(log_index = access.log_index, stage = %access.stage, "refused a whole treatment for a transfer entry that is not a stream's start");
            return Err(KeyError::Receipt(format!(
                "log entry {}: a transfer's {} entry opens its records' quasi-identifiers only",
                access.log_index, access.stage
            )));
        }
        if let Some(item) = items.iter().find(|i| !access.categories.contains(&i.category)) {
            tracing::warn!(log_index = access.log_index, category = %item.category, "refused a record of a category the transfer does not name");
            return Err(KeyError::Receipt(format!(
                "log entry {}: the transfer does not name category {:?}",
                access.log_index,
                item.category.as_str()
            )));
        }
        let keys = self.pseudonyms.transfer_keys(&access.purpose, &access.destination);
        let today = OffsetDateTime::now_utc().date();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let states = self.subjects_of_batch(access, &items).await?;
        let adults: Vec<&str> = {
            let mut seen = HashSet::new();
            items
                .iter()
                .zip(&states)
                .filter(|(_, state)| matches!(state, Some(Facts::Adult)))
                .map(|(item, _)| item.subject_hash.as_str())
                .filter(|hash| seen.insert(*hash))
                .collect()
        };
        let subject_keys = self.subject_keys_of(&adults).await?;
        // Each subject's token once a batch (their records come together).
        let subject_tokens: HashMap<String, String> = adults
            .iter()
            .map(|hash| ((*hash).to_owned(), keys.token(id_input("subject-hash", hash).as_bytes())))
            .collect();
        // The records opened and treated on as many threads as there are cores (up to four),
        // each a run of the batch, in the batch's order.
        let work: Vec<(TransferItem, Option<Facts>)> = items.into_iter().zip(states).collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS));
        let per_thread = work.len().div_ceil(threads).max(MIN_PER_THREAD);
        let treat = |run: &[(TransferItem, Option<Facts>)]| {
            run.iter()
                .map(|(item, state)| {
                    self.treat_one(access, (&keys, &subject_tokens), &subject_keys, item, *state, today, quasi_only)
                })
                .collect::<Result<Vec<_>, KeyError>>()
        };
        let all = || -> Vec<Result<Vec<TransferOutcome>, KeyError>> {
            if work.len() <= per_thread {
                return vec![treat(&work)];
            }
            std::thread::scope(|scope| {
                let mut chunks = work.chunks(per_thread);
                let first = chunks.next().unwrap_or_default();
                let others: Vec<_> = chunks.map(|run| scope.spawn(move || treat(run))).collect();
                let mut runs = vec![treat(first)];
                runs.extend(others.into_iter().map(|handle| {
                    handle.join().unwrap_or(Err(KeyError::Crypto("a thread treating a transfer's records panicked")))
                }));
                runs
            })
        };
        // A whole treatment (tokens, FF1) keeps this thread computing for a while: on a runtime
        // of several workers, its other tasks (the boundary's reads, its stream's writes, other
        // batches' journals) move to another worker meanwhile rather than wait behind it. A pass
        // over quasi-identifiers is a short batch: with the hand-over too, the count and the
        // aggregate took about 15 % longer (medians of seven runs; no gain in any run).
        let runs = match tokio::runtime::Handle::try_current() {
            Ok(handle) if !quasi_only && handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(all)
            }
            _ => all(),
        };
        let mut outcomes = Vec::with_capacity(work.len());
        for run in runs {
            outcomes.extend(run?);
        }
        // One journal record per subject whose records the batch opened (with the receipt: which
        // transfer, when, for what purpose).
        let mut journal = Vec::new();
        let mut journalled = HashSet::new();
        for ((item, _), outcome) in work.iter().zip(&outcomes) {
            if !matches!(outcome, TransferOutcome::Treated { .. }) || !journalled.insert(item.subject_hash.as_str()) {
                continue;
            }
            journal.push(UnwrapRecord {
                time: now,
                subject: item.subject_hash.clone(),
                action: "transfer".to_owned(),
                log_index: access.log_index,
                entry_hash: access.entry_hash.clone(),
                purpose: Some(access.purpose.clone()),
                cached: subject_keys.get(&item.subject_hash).is_some_and(|(_, cached)| *cached),
            });
        }
        // Nothing is answered unless every record opened is in the journal.
        self.journal.record_transfer(journal).await?;
        Ok(outcomes)
    }

    /// One record of a batch of the transfer `access`, opened with its subject's key (from
    /// `subject_keys`) and treated by the transfer's rules; `state` is what its subject is to
    /// the transfer ([`Custodian::subjects_of_batch`]).
    #[allow(clippy::too_many_arguments)]
    fn treat_one(
        &self,
        access: &LoggedTransfer,
        (keys, subject_tokens): (&clover_egress::TransferKeys, &HashMap<String, String>),
        subject_keys: &HashMap<String, (DataKey, bool)>,
        item: &TransferItem,
        state: Option<Facts>,
        today: time::Date,
        quasi_only: bool,
    ) -> Result<TransferOutcome, KeyError> {
        let Some(rules) = self.egress.rules.for_category(&item.category, &access.destination) else {
            return Ok(TransferOutcome::NotCovered);
        };
        match state {
            None => return Ok(TransferOutcome::NotCovered),
            Some(Facts::Minor) => return Ok(TransferOutcome::Minor),
            Some(Facts::Erased) => return Ok(TransferOutcome::Erased),
            Some(Facts::Adult) => {}
        }
        let (Some((key, _)), Some(subject)) =
            (subject_keys.get(&item.subject_hash), subject_tokens.get(item.subject_hash.as_str()))
        else {
            return Ok(TransferOutcome::Erased);
        };
        let sealed_aad = aad::record(&self.keys.region, &item.subject, &item.record, item.version);
        let record = item.record.to_string();
        let info = aad::key_scope(
            &self.keys.region,
            &item.subject_hash,
            Some(&record),
            Some(item.version),
            Some(item.category.as_str()),
        );
        let plain = key.derive(&info)?.open(&sealed_aad, &item.sealed)?;
        let fields = Fields::from_bytes(&plain).map_err(|_| KeyError::Decrypt)?;
        let treated = clover_egress::treatment::apply_some(rules, &fields, keys, today, quasi_only);
        Ok(TransferOutcome::Treated {
            subject: subject.clone(),
            // A pass over the quasi-identifiers only (a count, an aggregate) sends no record.
            record: if quasi_only { String::new() } else { keys.token(id_input("record", &record).as_bytes()) },
            fields: Fields::new(treated.fields),
            quasi: treated.quasi,
            refused: treated.refused,
        })
    }

    /// What each record of a batch is, by its subject, each subject (with their metadata as the
    /// boundary sent it) once: `None` for a record the transfer does not treat (no rule covers
    /// its category for the destination, or sealed with the subject's own key by an earlier
    /// version: nothing binds it to the category it is said to be of, so it is not treated as that
    /// category; it is after `clover keys reseal`), else whether its subject is a minor, an adult,
    /// or erased.
    async fn subjects_of_batch(
        &self,
        access: &LoggedTransfer,
        items: &[TransferItem],
    ) -> Result<Vec<Option<Facts>>, KeyError> {
        let mut places: HashMap<(&str, &[u8]), usize> = HashMap::new();
        let mut subjects: Vec<(&str, &clover_model::SubjectId, &[u8])> = Vec::new();
        let mut of_item = Vec::with_capacity(items.len());
        for item in items {
            if item.legacy || self.egress.rules.for_category(&item.category, &access.destination).is_none() {
                of_item.push(None);
                continue;
            }
            let key = (item.subject_hash.as_str(), item.metadata.as_slice());
            let place = *places.entry(key).or_insert_with(|| {
                subjects.push((key.0, &item.subject, key.1));
                subjects.len() - 1
            });
            of_item.push(Some(place));
        }
        let facts = self.subject_facts_many(&subjects).await?;
        let mut states = Vec::with_capacity(facts.len());
        for found in facts {
            states.push(match found {
                Ok(facts) if facts.minor => Facts::Minor,
                Ok(_) => Facts::Adult,
                Err(KeyError::NoDataKey | KeyError::Erased) => Facts::Erased,
                Err(e) => return Err(e),
            });
        }
        Ok(of_item.into_iter().map(|place| place.and_then(|p| states.get(p).copied())).collect())
    }
}

/// The most threads one batch is treated on.
const MAX_THREADS: usize = 4;

/// The fewest records a thread is given: a smaller batch is treated on the calling thread.
const MIN_PER_THREAD: usize = 64;

/// What a batch's subject is to a transfer.
#[derive(Debug, Clone, Copy)]
enum Facts {
    Minor,
    Adult,
    Erased,
}
