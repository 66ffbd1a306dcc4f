//! Steps 6 and 7: the data key and the record's sealing and opening. The custodian hands out,
//! against a log receipt, the key of the one record version the receipt's entry names (derived
//! from the subject's key, which never leaves it); a record's fields are sealed with it
//! (AES-256-GCM), bound by the associated data to region, subject, record and version, so that
//! ciphertext moved elsewhere does not open. A record sealed by an earlier version of Clover
//! with the subject's whole key is re-sealed by the custodian under its own key on its first
//! read, and stored so (the background migration, `reseal.rs`, does the rest).

use clover_keys::{DataKey, KeyError, aad};
use clover_log::Receipt;
use clover_model::{Fields, RecordId, SubjectId};
use clover_store::{RecordRow, SealedWith};
use tracing::instrument;

use crate::boundary::Boundary;
use crate::problem::ApiError;

/// A stored record that cannot be read back: the boundary's fault (or the store's), never the
/// caller's, so it is answered as an internal error and told in full only to the server's log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UnreadableRecord {
    /// The ciphertext does not open with the subject's data key and the record's binding.
    #[error("record {record} does not open")]
    Sealed {
        /// The record.
        record: RecordId,
        /// Why.
        #[source]
        cause: KeyError,
    },
    /// The plaintext is not the JSON object the boundary sealed.
    #[error("record {record} is not JSON")]
    NotJson {
        /// The record.
        record: RecordId,
        /// Why.
        #[source]
        cause: serde_json::Error,
    },
}

/// The key of what the receipt is for (a record version, or the subject's attributes), from the
/// custodian against the log receipt.
///
/// A key that no longer exists means the subject was erased after the request found them (an
/// erasure that ran meanwhile destroyed it): the erasure won, and the answer is `gone`, what the
/// request would have got had it come a moment later, not an internal error.
#[instrument(name = "unwrap_key", skip_all, err(level = "debug"))]
pub(crate) async fn unwrap_key(
    boundary: &Boundary,
    receipt: &Receipt,
    gone: impl FnOnce() -> ApiError,
) -> Result<DataKey, ApiError> {
    boundary.custody().data_key(receipt).await.map_err(|e| match e {
        KeyError::NoDataKey => gone(),
        other => ApiError::internal(other),
    })
}

/// The record's fields, decrypted with the key of the record version the receipt is for. A
/// record still sealed with its subject's key is re-sealed by the custodian under its own key
/// first (the subject's key stays there), and stored so when it has not changed meanwhile.
#[instrument(name = "open_record", skip_all, err(level = "debug"))]
pub(crate) async fn open_record(
    boundary: &Boundary,
    receipt: &Receipt,
    record: &RecordRow,
    gone: impl FnOnce() -> ApiError,
) -> Result<Fields, ApiError> {
    let aad = aad::record(boundary.region(), &record.subject_id, &record.record_id, record.version);
    let sealed = |cause| ApiError::internal(UnreadableRecord::Sealed { record: record.record_id, cause });
    let plain = match record.sealed_with {
        SealedWith::RecordKey => unwrap_key(boundary, receipt, gone).await?.open(&aad, &record.ciphertext),
        SealedWith::SubjectKey => {
            let (key, resealed) =
                boundary.custody().reseal(receipt, &record.ciphertext, &aad).await.map_err(|e| match e {
                    KeyError::NoDataKey => gone(),
                    other => sealed(other),
                })?;
            match boundary.store().reseal_record(&record.record_id, record.version, &record.ciphertext, &resealed).await
            {
                Ok(done) => tracing::debug!(record = %record.record_id, done, "record re-sealed under its own key"),
                Err(e) => tracing::warn!(record = %record.record_id, error = %crate::report::Chain(&e), "cannot store a re-sealed record; it is re-sealed again on its next read"),
            }
            key.open(&aad, &resealed)
        }
    }
    .map_err(sealed)?;
    Fields::from_bytes(&plain)
        .map_err(|cause| ApiError::internal(UnreadableRecord::NotJson { record: record.record_id, cause }))
}

/// Seals a record's fields for storage with the key of the record version (from the custodian
/// against the write's receipt), bound to where they belong (this boundary's region, the
/// subject, the record and its version).
pub fn seal_record(
    boundary: &Boundary,
    key: &DataKey,
    subject: &SubjectId,
    record: &RecordId,
    version: u32,
    fields: &Fields,
) -> Result<Vec<u8>, ApiError> {
    let aad = aad::record(boundary.region(), subject, record, version);
    key.seal(&aad, &fields.to_bytes()).map_err(ApiError::internal)
}
