//! An access to a subject's data key, as the custodian sees it: the logged, allowed access it
//! checks before it hands a key out, and the journal's record of a key handed out.

use clover_event::{Event, RecordOpening};
use clover_keys::{KeyError, NO_PURPOSE, UNKNOWN_DESTINATION};
use clover_model::{Action, Region};

/// A logged, allowed access, as the custodian checks it before handing out a key: from a
/// [`Receipt`](clover_log::Receipt) made in this process, or from a log entry that a custodian
/// in its own process verified against the signed log. Only those two checks make one (its
/// fields are the crate's own), and the custodian's key calls take nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedAccess {
    /// The subject, as the log's keyed hash.
    pub(crate) subject_hash: String,
    /// The action allowed.
    pub(crate) action: Action,
    /// The log entry's index.
    pub(crate) log_index: u64,
    /// The log entry's RFC 6962 leaf hash, hex.
    pub(crate) entry_hash: String,
    /// The purpose declared.
    pub(crate) purpose: Option<String>,
    /// Which of the subject's keys the access is for.
    pub(crate) scope: KeyScope,
    /// For a read granted a pseudonymised view, what its tokens are keyed for: its key is never
    /// handed out, the custodian opens the record and answers the view itself.
    pub(crate) pseudonymised: Option<TokenScope>,
}

/// What a read's log entry lets be pseudonymised: tokens keyed for the purpose it declared and
/// the region it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenScope {
    purpose: String,
    destination: String,
}

impl TokenScope {
    /// The scope of the read `event` records; it must have been granted a pseudonymised view.
    pub(crate) fn of(event: &Event) -> Result<Self, String> {
        let view = event.decision.as_ref().and_then(|d| d.view.as_deref());
        if view != Some("pseudonymised") {
            return Err("it did not grant a pseudonymised view".to_owned());
        }
        Ok(Self {
            purpose: event.purpose.clone().unwrap_or_else(|| NO_PURPOSE.to_owned()),
            destination: event
                .origin
                .as_ref()
                .and_then(|o| o.region.clone())
                .unwrap_or_else(|| UNKNOWN_DESTINATION.to_owned()),
        })
    }

    /// What a logged `action` lets be pseudonymised: for a read, `None` for a full view and the
    /// scope of a pseudonymised one; a read whose entry grants neither, by name, is refused (it
    /// gets no key: the custodian fails closed). Nothing for the other actions.
    pub(crate) fn of_access(event: &Event, action: Action) -> Result<Option<Self>, String> {
        if action != Action::Read {
            return Ok(None);
        }
        match event.decision.as_ref().and_then(|d| d.view.as_deref()) {
            Some("full") => Ok(None),
            Some("pseudonymised") => Self::of(event).map(Some),
            _ => Err("its entry grants no view a key or a view is made for".to_owned()),
        }
    }

    /// The purpose the read declared.
    pub(crate) fn purpose(&self) -> &str {
        &self.purpose
    }

    /// The region the read came from.
    pub(crate) fn destination(&self) -> &str {
        &self.destination
    }

    /// Refuses tokens keyed for another purpose or destination than the read's.
    pub(crate) fn check(&self, purpose: &str, destination: &str) -> Result<(), String> {
        if purpose != self.purpose {
            return Err(format!("it declared the purpose {:?}, not {purpose:?}", self.purpose));
        }
        if destination != self.destination {
            return Err(format!("it came from region {:?}, not {destination:?}", self.destination));
        }
        Ok(())
    }
}

/// Which key of a subject's an access is for: one record version's (the record and version its
/// entry's annex names, checked against the entry's commitment, and the entry's category), or,
/// with no record, the subject's own attributes'. An erasure's is the subject's whole key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyScope {
    /// The record.
    pub record: Option<String>,
    /// Its version.
    pub version: Option<u32>,
    /// Its category.
    pub category: Option<String>,
}

impl KeyScope {
    /// What the access's key is bound to ([`clover_keys::aad::key_scope`]).
    pub(crate) fn info(&self, region: &Region, subject_hash: &str) -> Vec<u8> {
        clover_keys::aad::key_scope(
            region,
            subject_hash,
            self.record.as_deref(),
            self.version,
            self.category.as_deref(),
        )
    }

    /// The scope of an access recorded by `event` (its `action`), named by `opening`: checked
    /// against the entry's annex commitment. A read must name a record version; a write names
    /// one, or none for the subject's attributes; an erasure needs none.
    pub(crate) fn of(event: &Event, action: Action, opening: Option<&RecordOpening>) -> Result<Self, String> {
        if action == Action::Erase {
            return Ok(Self::default());
        }
        let opening = opening.ok_or("the receipt does not name the record it is for")?;
        let commitment = event.annex.as_deref().ok_or("its entry commits to no annex")?;
        if !opening.opens(commitment) {
            return Err("the record it names is not the one its entry commits to".to_owned());
        }
        if opening.record.is_some() != opening.version.is_some()
            || (matches!(action, Action::Read | Action::ExportSubject | Action::Disclose) && opening.record.is_none())
        {
            return Err("it does not name one record version".to_owned());
        }
        Ok(Self {
            record: opening.record.clone(),
            version: opening.version,
            category: opening.record.as_ref().and(event.category.clone()),
        })
    }
}

impl LoggedAccess {
    /// A read of one subject (`a` repeated) allowed at `log_index` by the entry whose leaf hash
    /// is `entry_hash`: for the tests of what the custodian records of accesses.
    #[cfg(test)]
    pub(crate) fn read_for_test(log_index: u64, entry_hash: &str) -> Self {
        Self {
            subject_hash: "a".repeat(64),
            action: Action::Read,
            log_index,
            entry_hash: entry_hash.to_owned(),
            purpose: None,
            scope: KeyScope::default(),
            pseudonymised: None,
        }
    }

    /// The log entry's index.
    pub fn log_index(&self) -> u64 {
        self.log_index
    }

    /// The action allowed.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The subject, as the region's keyed hash.
    pub fn subject_hash(&self) -> &str {
        &self.subject_hash
    }

    /// The log entry's RFC 6962 leaf hash, hex.
    pub fn entry_hash(&self) -> &str {
        &self.entry_hash
    }

    /// The record the access is for, if one.
    pub fn record(&self) -> Option<&str> {
        self.scope.record.as_deref()
    }

    /// Refuses an access whose action is not one of `allowed`: an action that does not need
    /// the key asked for.
    pub(crate) fn check(&self, allowed: &[Action]) -> Result<(), KeyError> {
        if allowed.contains(&self.action) {
            Ok(())
        } else {
            Err(KeyError::Receipt(format!("a {} does not need a data key here", self.action)))
        }
    }
}

/// One entry of the custodian's journal: a data key handed out, or a pseudonym answered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnwrapRecord {
    /// Seconds since the Unix epoch.
    pub time: i64,
    /// The subject, as the log's keyed hash.
    pub subject: String,
    /// The action the receipt allowed; `view` for a pseudonymised view answered for a read (no
    /// key handed out), `pseudonym` for a token.
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

impl UnwrapRecord {
    /// The record of a key handed out at `time` for `access`.
    pub(crate) fn of(access: &LoggedAccess, cached: bool, time: i64) -> Self {
        Self {
            time,
            subject: access.subject_hash.clone(),
            action: access.action.to_string(),
            log_index: access.log_index,
            entry_hash: access.entry_hash.clone(),
            purpose: access.purpose.clone(),
            cached,
        }
    }

    /// The record of a pseudonymised view answered at `time` for the read `access`.
    pub(crate) fn view(access: &LoggedAccess, cached: bool, time: i64) -> Self {
        Self { action: VIEW_ACTION.to_owned(), ..Self::of(access, cached, time) }
    }

    /// The record of a pseudonym answered at `time` for the read `access`: its subject, log
    /// index, entry hash and purpose, never the input.
    pub(crate) fn pseudonym(access: &LoggedAccess, time: i64) -> Self {
        Self { action: PSEUDONYM_ACTION.to_owned(), ..Self::of(access, false, time) }
    }
}

/// The journal's action for a pseudonymised view answered: the custodian opened the record and
/// answered the view; no key left it.
pub const VIEW_ACTION: &str = "view";

/// The journal's action for a pseudonym answered.
pub const PSEUDONYM_ACTION: &str = "pseudonym";
