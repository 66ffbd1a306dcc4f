//! The re-sealing migration's progress (`crate::reseal` runs it), kept by the boundary.

use std::sync::{Mutex, PoisonError};

use serde::Serialize;
use utoipa::ToSchema;

/// The latest re-sealing's progress.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Resealing {
    /// Records sealed with their subject's key when it started.
    pub total: u64,
    /// Re-sealed so far (by the migration; reads re-seal others meanwhile).
    pub resealed: u64,
    /// Records it could not re-seal (refused by policy, or failed; each in the server's log).
    pub failed: u64,
    /// Batches done, each with its log entry.
    pub batches: u64,
    /// Whether it has finished.
    pub done: bool,
    /// Why it stopped, if it did before the end.
    pub error: Option<String>,
}

/// The boundary's re-sealing, if one ran since it opened.
#[derive(Debug, Default)]
pub struct Resealings(Mutex<Option<Resealing>>);

impl Resealings {
    /// The latest one's progress.
    pub fn latest(&self) -> Option<Resealing> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Marks one started with `total` records to go, unless one is running (false).
    pub(crate) fn start(&self, total: u64) -> bool {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if state.as_ref().is_some_and(|r| !r.done) {
            return false;
        }
        *state = Some(Resealing { total, ..Resealing::default() });
        true
    }

    pub(crate) fn update(&self, change: impl FnOnce(&mut Resealing)) {
        if let Some(state) = self.0.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            change(state);
        }
    }
}
