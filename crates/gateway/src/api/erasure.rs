//! The answer to an erasure, shared by the staff's resource (`DELETE /v1/subjects/{id}`) and
//! the subject's own (`DELETE /v1/me`).

use axum::http::StatusCode;
use axum::response::Response;
use clover_model::SubjectId;
use clover_policy::Decision;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::answer::answered;
use crate::boundary::Boundary;
use crate::pipeline::Caller;
use crate::problem::ApiError;
use crate::subjects::certificate::Certificate;
use crate::subjects::requests::RequestKind;

/// What an erasure did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasureAnswer {
    /// The erased subject.
    #[schema(value_type = String)]
    pub subject_id: SubjectId,
    /// How many records were destroyed with the subject's data key.
    pub erased_records: u64,
    /// The records destroyed, by category.
    pub categories: std::collections::BTreeMap<String, u64>,
    /// The decision that allowed the erasure.
    #[schema(value_type = Object)]
    pub decision: Decision,
    /// The index of the log entry that records it.
    pub log_index: u64,
    /// Whether the data store's write-ahead log was checkpointed and truncated after the rows
    /// were deleted, so that the store's own files hold no old copy of them: always so with the
    /// SQLite store, which answers only then (`erasure-unfinished` otherwise). `false` with
    /// PostgreSQL, which keeps dead row versions until `VACUUM` and WAL segments until they are
    /// recycled (see `docs/security.md`, Erasure).
    pub wal_truncated: bool,
    /// The erasure certificate: a statement signed under the log's key, the erasure's log
    /// entry and its inclusion proof (`clover audit verify-certificate` checks it). The region
    /// keeps a copy, without the salt below.
    pub certificate: Certificate,
    /// The salt of the certificate's commitment to the subject (hex): with the subject's id, it
    /// shows that the certificate is about them. Given only in this answer, never kept.
    pub subject_salt: String,
}

/// Erases `subject_id` for `caller` and answers with the certificate.
pub(crate) async fn erasure_answer(
    boundary: &Boundary,
    caller: &Caller,
    subject_id: SubjectId,
) -> Result<Response, ApiError> {
    let erased = crate::subjects::erasure::erase(boundary, caller, &subject_id, RequestKind::Erasure).await?;
    if caller.principal.kind != clover_model::PrincipalKind::Subject {
        // Made for someone by the region's staff: tracked, done at once, under its ticket.
        crate::subjects::requests::open(
            boundary,
            caller,
            RequestKind::Erasure,
            &subject_id,
            caller.justification.as_deref().unwrap_or("none"),
            crate::subjects::requests::RequestState::Fulfilled,
        )
        .await?;
    }
    Ok(answered(
        &erased.decision,
        StatusCode::OK,
        ErasureAnswer {
            subject_id,
            erased_records: erased.records,
            categories: erased.categories,
            decision: erased.decision.clone(),
            log_index: erased.log_index,
            wal_truncated: erased.wal_truncated,
            certificate: erased.certificate,
            subject_salt: erased.salt,
        },
    ))
}
