//! An access to a subject's data key, as the custodian sees it: the logged, allowed access it
//! checks before it hands a key out, and the journal's record of a key handed out.

use clover_keys::KeyError;
use clover_model::Action;

/// A logged, allowed access, as the custodian checks it before handing out a key: from a
/// [`Receipt`](clover_log::Receipt) made in this process, or from a log entry that a custodian
/// in its own process verified against the signed log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedAccess {
    /// The subject, as the log's keyed hash.
    pub subject_hash: String,
    /// The action allowed.
    pub action: Action,
    /// The log entry's index.
    pub log_index: u64,
    /// The log entry's RFC 6962 leaf hash, hex.
    pub entry_hash: String,
    /// The purpose declared.
    pub purpose: Option<String>,
}

impl LoggedAccess {
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
}
