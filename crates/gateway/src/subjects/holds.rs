//! The legal-hold hook: whether a hold keeps a subject's data (a preservation order, a
//! government request's hold), asked before anything of theirs is destroyed. An erasure or a
//! closure that a hold blocks answers with the hold's reference, and is tracked as a request
//! that needs a person; it is never dropped silently.
//!
//! Holds are kept by the subject's keyed hash; the government-requests room places and lifts
//! them.

use clover_model::SubjectId;

use crate::boundary::Boundary;
use crate::problem::ApiError;

/// What the hook says of a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// No hold: the subject's data may be destroyed.
    Free,
    /// A hold keeps it.
    Held {
        /// The hold's reference (the order's, or the request's).
        reference: String,
    },
}

/// Whether a legal hold keeps `subject`'s data.
pub async fn hold_on(boundary: &Boundary, subject: &SubjectId) -> Result<Hold, ApiError> {
    match boundary.store().legal_hold(&boundary.subject_hash(subject)).await.map_err(ApiError::internal)? {
        Some(reference) => Ok(Hold::Held { reference }),
        None => Ok(Hold::Free),
    }
}
