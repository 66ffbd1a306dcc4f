//! Pseudonyms: the keyed tokens of a pseudonymised read's fields, under the region's
//! pseudonymisation root ([`PseudonymRoot`], a secret of the keyring's own, apart from the
//! subject-index key).
//!
//! A token is asked for the read whose fields are being pseudonymised, with that read's receipt:
//! an allowed read of the signed log that was granted a pseudonymised view, recent, and keyed
//! for the purpose it declared and the region it came from, no other. A token is not a key, and
//! does not use the receipt up: the read's own key was handed out for that receipt (a receipt
//! opens its key once, `receipts`), before its fields could be pseudonymised, so a token claiming
//! the receipt again would refuse every pseudonymised read. What a token gives away is whether a
//! guessed value is the one behind another token: with the gateway's client certificate, a
//! caller free to ask for tokens of any input could reverse low-entropy ones (a birth year, a
//! country, a name from a list) by dictionary. So instead:
//!
//! - each token is bound to a logged read, which auditors see, and journalled against it (action
//!   `pseudonym`, its log index and entry hash; never the input);
//! - a receipt gets at most [`PSEUDONYMS_PER_RECEIPT`] tokens, the handful one record's fields
//!   and ids need, counted in memory for [`REMEMBERED_FOR`], past which its entry is refused
//!   anyway. Refusals past the bound are counted in `clover_custodian_pseudonyms_refused_total`.
//!
//! So a dictionary costs one logged, allowed read per [`PSEUDONYMS_PER_RECEIPT`] guesses, each
//! read in the log and each guess in the journal. The count is each custodian's own: custodians
//! sharing a key store each allow the bound.
//!
//! Once a receipt's entry has been checked against the signed log for a token, the custodian
//! in its own process remembers that with the count, and checks the next tokens of the same
//! entry (the same bytes, index and subject) without asking the log again: a read of a record
//! asks for a token per field.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use clover_keys::{KeyError, PseudonymRoot};

use super::access::LoggedAccess;
use super::receipts::REMEMBERED_FOR;

/// The most tokens one receipt gets: a read of one record asks for one per field its view
/// tokenises, and two for its ids. A category whose pseudonymised view would tokenise more
/// fields than that must name rules that drop or mask some (`[[views]]`).
pub const PSEUDONYMS_PER_RECEIPT: u32 = 64;

/// The counter of tokens refused past [`PSEUDONYMS_PER_RECEIPT`].
pub const PSEUDONYMS_REFUSED_METRIC: &str = "clover_custodian_pseudonyms_refused_total";

/// How often the counts past their window are forgotten, at most.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// The root, and how many tokens each receipt has had.
pub(crate) struct Pseudonyms {
    root: PseudonymRoot,
    tallies: Mutex<Tallies>,
}

#[derive(Default)]
struct Tallies {
    /// By the entry's leaf hash.
    by_entry: HashMap<String, Tally>,
    forgotten: Option<Instant>,
}

/// The tokens given for one receipt.
struct Tally {
    log_index: u64,
    subject_hash: String,
    count: u32,
    since: Instant,
}

impl Tally {
    fn expired(&self) -> bool {
        self.since.elapsed() >= REMEMBERED_FOR
    }
}

impl Pseudonyms {
    /// Tokens under `root`.
    pub(crate) fn new(root: PseudonymRoot) -> Self {
        Self { root, tallies: Mutex::new(Tallies::default()) }
    }

    /// Whether a token was given, within the window, for the receipt of the entry whose leaf
    /// hash is `entry_hash` at `log_index`, about the subject whose keyed hash is
    /// `subject_hash`: its entry was then found in the signed log, and its tag the subject's.
    pub(crate) fn given_for(&self, log_index: u64, entry_hash: &str, subject_hash: &str) -> bool {
        let tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        tallies
            .by_entry
            .get(entry_hash)
            .is_some_and(|tally| !tally.expired() && tally.log_index == log_index && tally.subject_hash == subject_hash)
    }

    /// Counts a token for `access`'s receipt (an allowed read's, checked by the caller);
    /// refuses one past [`PSEUDONYMS_PER_RECEIPT`].
    pub(crate) fn count(&self, access: &LoggedAccess) -> Result<(), KeyError> {
        let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        if tallies.forgotten.is_none_or(|at| at.elapsed() >= FORGET_EVERY) {
            tallies.forgotten = Some(Instant::now());
            tallies.by_entry.retain(|_, tally| !tally.expired());
        }
        let fresh = || Tally {
            log_index: access.log_index,
            subject_hash: access.subject_hash.clone(),
            count: 0,
            since: Instant::now(),
        };
        let tally = tallies.by_entry.entry(access.entry_hash.clone()).or_insert_with(fresh);
        if tally.expired() {
            *tally = fresh();
        }
        if tally.count >= PSEUDONYMS_PER_RECEIPT {
            drop(tallies);
            tracing::warn!(
                log_index = access.log_index,
                entry_hash = %access.entry_hash,
                limit = PSEUDONYMS_PER_RECEIPT,
                "refused a pseudonym past the bound of its receipt"
            );
            metrics::counter!(PSEUDONYMS_REFUSED_METRIC).increment(1);
            return Err(KeyError::TooManyPseudonyms(format!(
                "the receipt for log entry {} has had its {PSEUDONYMS_PER_RECEIPT} pseudonyms, more than one \
                 record's fields need",
                access.log_index
            )));
        }
        tally.count += 1;
        Ok(())
    }

    /// The token of `input` for (`purpose`, `destination`).
    pub(crate) fn token(&self, purpose: &str, destination: &str, input: &[u8]) -> String {
        self.root.token(purpose, destination, input)
    }

    /// The keys of a record transfer's treatments for (`purpose`, `destination`).
    pub(crate) fn transfer_keys(&self, purpose: &str, destination: &str) -> clover_egress::TransferKeys {
        let (token, ff1) = self.root.transfer_secrets(purpose, destination);
        clover_egress::TransferKeys::new(&token, &ff1)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use clover_event::{EventDecision, EventKind, EventOrigin};

    use clover_model::Action;

    use super::*;
    use clover_event::Event;
    use clover_keys::{NO_PURPOSE, UNKNOWN_DESTINATION};

    use crate::custodian::access::{KeyScope, TokenScope};

    fn read(log_index: u64, entry_hash: &str) -> LoggedAccess {
        LoggedAccess {
            subject_hash: "a".repeat(64),
            action: Action::Read,
            log_index,
            entry_hash: entry_hash.to_owned(),
            purpose: Some("analytics".to_owned()),
            scope: KeyScope::default(),
            pseudonymised: None,
        }
    }

    #[test]
    fn a_receipt_gets_a_bounded_number_of_tokens() {
        let pseudonyms = Pseudonyms::new(PseudonymRoot::new(1, &[1; 32]));
        assert!(!pseudonyms.given_for(7, "e7", &"a".repeat(64)));
        for _ in 0..PSEUDONYMS_PER_RECEIPT {
            pseudonyms.count(&read(7, "e7")).unwrap();
        }
        assert!(pseudonyms.given_for(7, "e7", &"a".repeat(64)));
        assert!(!pseudonyms.given_for(8, "e7", &"a".repeat(64)), "another index");
        assert!(!pseudonyms.given_for(7, "e7", &"b".repeat(64)), "another subject");
        match pseudonyms.count(&read(7, "e7")) {
            Err(KeyError::TooManyPseudonyms(m)) => assert_eq!(
                m,
                "the receipt for log entry 7 has had its 64 pseudonyms, more than one record's fields need"
            ),
            other => panic!("{other:?}"),
        }
        // Another receipt has its own count.
        pseudonyms.count(&read(8, "e8")).unwrap();
    }

    #[test]
    fn tokens_are_keyed_for_the_reads_purpose_and_destination() {
        let event = |view: Option<&str>, purpose: Option<&str>, region: Option<&str>| Event {
            v: clover_event::EVENT_VERSION,
            kind: EventKind::Access,
            time: 0,
            principal: None,
            origin: Some(EventOrigin { site: None, region: region.map(str::to_owned) }),
            action: Some("read".into()),
            subject: None,
            category: None,
            decision: Some(EventDecision { effect: "allow".into(), view: view.map(str::to_owned), policies: vec![] }),
            purpose: purpose.map(str::to_owned),
            annex: None,
            detail: None,
            transfer: None,
            government_request: None,
        };
        let scope = TokenScope::of(&event(Some("pseudonymised"), Some("analytics"), Some("us"))).unwrap();
        scope.check("analytics", "us").unwrap();
        assert_eq!(scope.check("safety", "us").unwrap_err(), "it declared the purpose \"analytics\", not \"safety\"");
        assert_eq!(scope.check("analytics", "sg").unwrap_err(), "it came from region \"us\", not \"sg\"");
        assert!(TokenScope::of(&event(Some("full"), Some("analytics"), Some("us"))).is_err());
        assert!(TokenScope::of(&event(None, Some("analytics"), Some("us"))).is_err());
        // No purpose declared, no known region: the names the boundary keys such tokens for.
        TokenScope::of(&event(Some("pseudonymised"), None, None))
            .unwrap()
            .check(NO_PURPOSE, UNKNOWN_DESTINATION)
            .unwrap();
    }
}
