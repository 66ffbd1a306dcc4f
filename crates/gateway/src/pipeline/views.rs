//! Step 8: the view. A full view answers the fields as stored (the gateway opened the record
//! with its key); a pseudonymised one is made by the custodian, which opens the record itself
//! and answers only what its view rules (`[[views]]`) show of each field: a keyed token, a
//! year, an address prefix, a mask, or nothing. The gateway never holds the fields such a view
//! hides, nor the key that would open them.
//!
//! The view names the record and its subject by tokens the custodian makes with it (the
//! subject's from their keyed hash), keyed for the read's purpose and region: the gateway asks
//! for no token of its own, and the custodian answers none but of the ids of the record read
//! ([`KeyCustody::pseudonym`](clover_keys::KeyCustody::pseudonym)), so that no token is an
//! oracle for guessing the values a view hides.

use clover_keys::{KeyError, PseudonymisedView, aad};
use clover_log::Receipt;
use clover_store::{RecordRow, SealedWith};

use crate::boundary::Boundary;
use crate::problem::ApiError;

/// The pseudonymised view of `record`, from the custodian against the read's receipt, which
/// must grant one. A key that no longer exists means the subject was erased meanwhile: `gone`.
pub(crate) async fn pseudonymised(
    boundary: &Boundary,
    receipt: &Receipt,
    record: &RecordRow,
    gone: impl FnOnce() -> ApiError,
) -> Result<PseudonymisedView, ApiError> {
    let aad = aad::record(boundary.region(), &record.subject_id, &record.record_id, record.version);
    let legacy = record.sealed_with == SealedWith::SubjectKey;
    boundary.custody().view(receipt, &record.ciphertext, &aad, legacy).await.map_err(|e| match e {
        KeyError::NoDataKey => gone(),
        other => ApiError::internal(other),
    })
}
