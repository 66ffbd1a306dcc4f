//! `/v1/me/...`: a data subject's own requests, with their own token (principal kind
//! `subject`, whose id is their subject id): who read their data, with proofs; an export of it;
//! its erasure, with a certificate. Each is decided by policy (`subjects-act-on-their-own-data`)
//! and logged like any other request; a subject may call from anywhere, and the origin is
//! logged.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use clover_event::EventKind;
use clover_model::{Action, PrincipalKind, SubjectId};
use clover_policy::Decision;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::answer::answered;
use crate::boundary::Boundary;
use crate::pipeline::{self, Ask, Caller};
use crate::problem::{ApiError, Problem};
use crate::subjects::accesses::{self, MyAccess};

/// The caller's own subject id: a `/v1/me` request needs a data subject's token.
pub(crate) fn own_subject(caller: &Caller) -> Result<SubjectId, ApiError> {
    let refused = |detail: String| ApiError::SubjectRefused {
        status: StatusCode::FORBIDDEN,
        slug: "subject-token-required",
        title: "Subject token required",
        detail,
        log_index: None,
    };
    if caller.principal.kind != PrincipalKind::Subject {
        return Err(refused(format!(
            "/v1/me is for data subjects, with their own token (kind \"subject\"); this token is of kind {:?}",
            caller.principal.kind.to_string()
        )));
    }
    SubjectId::new(caller.principal.id.as_str().to_owned())
        .map_err(|_| refused("the token's subject is not a subject id of the allowed form".to_owned()))
}

/// The entries about the caller, with proofs.
#[derive(Debug, Serialize, ToSchema)]
pub struct MyAccessesAnswer {
    /// The caller's subject id.
    #[schema(value_type = String)]
    pub subject_id: SubjectId,
    /// The signed (and, with witnesses, cosigned) checkpoint every proof is against.
    pub checkpoint: String,
    /// Its tree size.
    pub tree_size: u64,
    /// The log's verifier key, which signs the checkpoint (C2SP vkey).
    pub log_vkey: String,
    /// Every entry about the caller, oldest first, this request's own included (it has no
    /// proof yet when it is newer than the checkpoint).
    pub entries: Vec<MyAccess>,
    /// The decision that allowed this listing.
    #[schema(value_type = Object)]
    pub decision: Decision,
    /// The index of the log entry that records this listing.
    pub log_index: u64,
}

/// Whether the subject is registered, and a minor (unknown: a minor).
async fn minor(boundary: &Boundary, subject: &SubjectId) -> Result<(bool, bool), ApiError> {
    let stored = boundary.store().subject(subject).await.map_err(ApiError::internal)?;
    Ok(match &stored {
        Some(row) => (true, pipeline::metadata::subject_minor(boundary, row).await),
        None => (false, true),
    })
}

/// Who accessed my data: every log entry about the caller, with its inclusion proof.
///
/// Each entry is shown as a person reads it: what was done, when, from which site and region,
/// by what kind of principal (never an employee's name) and the roles that may declare its
/// purpose, for which purpose, and the decision; with the entry's bytes and its RFC 6962
/// inclusion proof against the signed checkpoint in the answer (`docs/verify-my-accesses.md`
/// shows how to check one with Python's standard library).
#[utoipa::path(get, path = "/v1/me/accesses", tag = "me",
    responses(
        (status = OK, description = "The entries about the caller, with proofs", body = MyAccessesAnswer),
        (status = FORBIDDEN, description = "`subject-token-required`: the token is not a data subject's; or `forbidden`: denied by policy (the body carries the decision and its log index)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn my_accesses(State(boundary): State<Arc<Boundary>>, caller: Caller) -> Result<Response, ApiError> {
    let subject_id = own_subject(&caller)?;
    let (registered, minor) = minor(&boundary, &subject_id).await?;
    let ask =
        Ask { action: Action::ListAccesses, subject: &subject_id, record: None, version: None, subject_minor: minor };
    let receipt = pipeline::decide_and_log(&boundary, &caller, EventKind::Access, &ask).await?;
    let indexes = accesses::indexes_about(&boundary, &subject_id, registered).await?;
    let history = accesses::history(&boundary, indexes).await?;
    let decision = receipt.permit().decision().clone();
    Ok(answered(
        &decision,
        StatusCode::OK,
        MyAccessesAnswer {
            subject_id,
            checkpoint: history.checkpoint,
            tree_size: history.tree_size,
            log_vkey: history.log_vkey,
            entries: history.entries,
            decision: decision.clone(),
            log_index: receipt.index(),
        },
    ))
}

/// Erases my data: the caller's data key and tag key destroyed, their records deleted, their
/// log annexes unlinked; answered with a signed erasure certificate.
///
/// The same as `DELETE /v1/subjects/{subject_id}` for the caller's own id. A legal hold on the
/// caller's data blocks it (409 `held`, with the hold's reference): nothing is erased, and the
/// erasure is tracked as a request that needs a person.
#[utoipa::path(delete, path = "/v1/me", tag = "me",
    responses(
        (status = OK, description = "Erased, with the certificate", body = crate::api::erasure::ErasureAnswer),
        (status = NOT_FOUND, description = "`not-found`: the caller holds no data here (never registered, or erased)", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`subject-token-required`: the token is not a data subject's; or `forbidden`: denied by policy", body = Problem, content_type = "application/problem+json"),
        (status = CONFLICT, description = "`held`: a legal hold keeps the caller's data; nothing was erased, and the erasure is tracked", body = Problem, content_type = "application/problem+json"),
        (status = SERVICE_UNAVAILABLE, description = "`erasure-unfinished`: committed and logged, but the store's write-ahead log still holds old copies; send the request again", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn erase_me(State(boundary): State<Arc<Boundary>>, caller: Caller) -> Result<Response, ApiError> {
    let subject_id = own_subject(&caller)?;
    crate::api::erasure::erasure_answer(&boundary, &caller, subject_id).await
}

/// Exports my data (GDPR Art. 15 and 20): a ZIP archive of every record (JSON, one file per
/// category), an HTML summary, the access history with its proofs, and a manifest of the
/// SHA-256 of every file, signed by the boundary; encrypted to an `age` recipient if one is
/// given.
///
/// Decided once on the caller's own data and logged; then every record is opened under a log
/// entry of its own. The archive is whole before the first byte is sent: a failed export sends
/// nothing, and leaves nothing behind.
#[utoipa::path(post, path = "/v1/me/export", tag = "me",
    request_body = crate::api::exports::ExportBody,
    responses(
        (status = OK, description = "The archive: a ZIP (`application/zip`), or an `age` file holding it (`application/octet-stream`). Headers: `X-Clover-Export-Id`, `X-Clover-Export-Records`, `X-Clover-Export-Sha256` (of the body), `X-Clover-Log-Index` (the export's decision)", content_type = "application/zip", body = Vec<u8>),
        (status = FORBIDDEN, description = "`subject-token-required`: the token is not a data subject's; or `forbidden`: denied by policy", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "`nothing-held`: no data is held about the caller (never registered, or erased); logged at `log_index`", body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, description = "`invalid-body`: an unknown field, or an `age_recipient` that is not an age X25519 recipient; `export-too-large`: more records than `[subjects] max_export_records` (logged at `log_index`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn export_me(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    crate::problem::Body(body): crate::problem::Body<crate::api::exports::ExportBody>,
) -> Result<Response, ApiError> {
    let subject_id = own_subject(&caller)?;
    let recipient = body.age_recipient.as_deref().map(crate::subjects::export::parse_recipient).transpose()?;
    let export = crate::subjects::export::build(&boundary, &caller, &subject_id, recipient).await?;
    crate::api::exports::export_response(export)
}
