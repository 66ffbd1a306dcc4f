//! Step 8: the view. A full view answers the fields as stored (the gateway opened the record
//! with its key); a pseudonymised one is made by the custodian, which opens the record itself
//! and answers only what its view rules (`[[views]]`) show of each field: a keyed token, a
//! year, an address prefix, a mask, or nothing. The gateway never holds the fields such a view
//! hides, nor the key that would open them.
//!
//! Tokens of the record's and subject's ids come from the custodian too, which holds their
//! keys, and only against the read's own receipt: the custodian checks that it is an allowed
//! read granted a pseudonymised view, for the purpose and region the tokens are keyed for,
//! journals each token, and answers a bounded number per receipt
//! ([`KeyCustody::pseudonym`](clover_keys::KeyCustody::pseudonym)).

use clover_keys::{KeyError, aad};
use clover_log::Receipt;
use clover_model::{Fields, View};
use clover_store::{RecordRow, SealedWith};

use crate::boundary::Boundary;
use crate::pipeline::caller::Caller;
use crate::problem::ApiError;

/// The pseudonymised view of `record`, from the custodian against the read's receipt, which
/// must grant one. A key that no longer exists means the subject was erased meanwhile: `gone`.
pub(crate) async fn pseudonymised(
    boundary: &Boundary,
    receipt: &Receipt,
    record: &RecordRow,
    gone: impl FnOnce() -> ApiError,
) -> Result<Fields, ApiError> {
    let aad = aad::record(boundary.region(), &record.subject_id, &record.record_id, record.version);
    let legacy = record.sealed_with == SealedWith::SubjectKey;
    boundary.custody().view(receipt, &record.ciphertext, &aad, legacy).await.map_err(|e| match e {
        KeyError::NoDataKey => gone(),
        other => ApiError::internal(other),
    })
}

/// How a pseudonymised view names the record and its subject: a keyed token of the id, stable
/// within the declared purpose and the destination region (the receiving side can link its own
/// reads of one record) and unlinkable across them, never the id in the clear, which would let
/// the receiving side re-identify the subject and link every transfer. A full view names them.
pub(crate) async fn id_in_view(
    boundary: &Boundary,
    caller: &Caller,
    receipt: &Receipt,
    kind: &str,
    id: &str,
) -> Result<String, ApiError> {
    if receipt.permit().view() == View::Full {
        return Ok(id.to_owned());
    }
    let (purpose, destination) = token_scope(caller);
    let input = format!("clover/id/{kind}\0{id}");
    boundary.custody().pseudonym(receipt, purpose, destination, input.as_bytes()).await.map_err(ApiError::internal)
}

/// What a pseudonymised view's tokens are keyed for: the declared purpose and the caller's
/// region (the destination), so that tokens are stable within them and unlinkable across. The
/// read's log entry records both, and the custodian keys tokens for those only.
fn token_scope(caller: &Caller) -> (&str, &str) {
    (
        caller.purpose.as_deref().unwrap_or(clover_keys::NO_PURPOSE),
        caller.origin.region().map_or(clover_keys::UNKNOWN_DESTINATION, |r| r.as_str()),
    )
}
