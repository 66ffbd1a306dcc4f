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

use clover_egress::{Destination, TransferRules};
use clover_event::{Entry, Event, EventKind};
use clover_keys::{KeyError, TransferItem, TransferOutcome, aad};
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
        let mut outcomes = Vec::with_capacity(items.len());
        let mut journal = Vec::with_capacity(items.len());
        let mut journalled = std::collections::HashSet::new();
        let mut minors: std::collections::HashMap<(String, Vec<u8>), bool> = std::collections::HashMap::new();
        for item in items {
            let Some(rules) = self.egress.rules.for_category(&item.category, &access.destination) else {
                outcomes.push(TransferOutcome::NotCovered);
                continue;
            };
            // Sealed with the subject's own key by an earlier version: nothing binds it to the
            // category it is said to be of, so it is not treated as that category (it is after
            // `clover keys reseal`).
            if item.legacy {
                outcomes.push(TransferOutcome::NotCovered);
                continue;
            }
            let hash = item.subject_hash.clone();
            // Whether a minor, once per subject of the batch (their records come together).
            let minor = match minors.get(&(hash.clone(), item.metadata.clone())) {
                Some(minor) => *minor,
                None => match self.subject_facts_for(&item.subject, &hash, &item.metadata).await {
                    Ok(facts) => {
                        minors.insert((hash.clone(), item.metadata.clone()), facts.minor);
                        facts.minor
                    }
                    Err(KeyError::NoDataKey | KeyError::Erased) => {
                        outcomes.push(TransferOutcome::Erased);
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            if minor {
                outcomes.push(TransferOutcome::Minor);
                continue;
            }
            let (key, cached) = match self.subject_key_of(&hash).await {
                Ok(found) => found,
                Err(KeyError::NoDataKey | KeyError::Erased) => {
                    outcomes.push(TransferOutcome::Erased);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let sealed_aad = aad::record(&self.keys.region, &item.subject, &item.record, item.version);
            let record = item.record.to_string();
            let info = aad::key_scope(
                &self.keys.region,
                &hash,
                Some(&record),
                Some(item.version),
                Some(item.category.as_str()),
            );
            let plain = key.derive(&info)?.open(&sealed_aad, &item.sealed)?;
            drop(key);
            let fields = Fields::from_bytes(&plain).map_err(|_| KeyError::Decrypt)?;
            let treated = clover_egress::treatment::apply_some(rules, &fields, &keys, today, quasi_only);
            outcomes.push(TransferOutcome::Treated {
                subject: keys.token(id_input("subject-hash", &hash).as_bytes()),
                record: keys.token(id_input("record", &record).as_bytes()),
                fields: Fields::new(treated.fields),
                quasi: treated.quasi,
                refused: treated.refused,
            });
            // One journal record per subject whose records the batch opened (with the receipt:
            // which transfer, when, for what purpose).
            if !journalled.insert(hash.clone()) {
                continue;
            }
            journal.push(UnwrapRecord {
                time: now,
                subject: hash,
                action: "transfer".to_owned(),
                log_index: access.log_index,
                entry_hash: access.entry_hash.clone(),
                purpose: Some(access.purpose.clone()),
                cached,
            });
        }
        // Nothing is answered unless every record opened is in the journal.
        self.journal.record_transfer(journal).await?;
        Ok(outcomes)
    }
}
