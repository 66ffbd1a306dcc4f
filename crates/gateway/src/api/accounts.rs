//! `/v1/accounts/{account_id}/close`: closing an organisation's account (an account is a
//! subject: its id is the subject id its records are kept under).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use clover_model::SubjectId;
use clover_policy::Decision;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::answer::answered;
use crate::boundary::Boundary;
use crate::pipeline::Caller;
use crate::problem::{ApiError, Problem};
use crate::subjects::certificate::{Certificate, rfc3339};

/// What a closure did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClosureAnswer {
    /// The closed account.
    #[schema(value_type = String)]
    pub account_id: SubjectId,
    /// The records erased, by category.
    pub categories: std::collections::BTreeMap<String, u64>,
    /// The pending transfers cancelled because they would have sent one of its records.
    pub transfers_cancelled: Vec<String>,
    /// When the account id may be registered again (RFC 3339).
    pub registrable_after: String,
    /// The closure certificate, with the account's erasure certificate inside
    /// (`clover audit verify-certificate` checks both).
    pub certificate: Certificate,
    /// The salt of the certificates' commitment to the account (hex), given only here.
    pub account_salt: String,
    /// The decision that allowed the closure.
    #[schema(value_type = Object)]
    pub decision: Decision,
    /// The closure's last log entry (the one that holds the certificate's SHA-256).
    pub log_index: u64,
}

/// Closes an organisation's account: every record erased (crypto-shredded), pending transfers
/// that would include one of them cancelled, and a signed closure certificate.
///
/// By the account's own principal (its subject token), from anywhere, or by the region's privacy
/// team (role `privacy`, in the region, with the account's request as the ticket). A legal hold
/// on the account blocks it (409 `held`, tracked). After it, no API returns any of its data, its
/// former public log entries can no longer be linked to it, and its id may not be registered
/// again for `[subjects] closed_account_days`.
#[utoipa::path(post, path = "/v1/accounts/{account_id}/close", tag = "accounts",
    params(("account_id" = String, Path, description = "The account's id (the subject id its records are kept under): 1 to 128 characters of A-Z a-z 0-9 - _ . : @, not only dots")),
    responses(
        (status = OK, description = "Closed, with the certificate", body = ClosureAnswer),
        (status = BAD_REQUEST, description = "`invalid-id`: the account id is not of the allowed form", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: denied by policy (another account's token, not the privacy team, no ticket); the body carries the decision and its log index", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "`not-found`: no such account", body = Problem, content_type = "application/problem+json"),
        (status = CONFLICT, description = "`account-closed`: closed already (logged at `log_index`); `held`: a legal hold keeps its data, nothing was erased and the closure is tracked", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn close_account(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Path(account_id): Path<String>,
) -> Result<Response, ApiError> {
    let account_id = SubjectId::new(account_id)?;
    let closed = crate::subjects::closure::close(&boundary, &caller, &account_id).await?;
    if caller.principal.kind != clover_model::PrincipalKind::Subject {
        // Made for the organisation by the privacy team: tracked, done at once, under its ticket.
        crate::subjects::requests::open(
            &boundary,
            &caller,
            crate::subjects::requests::RequestKind::Closure,
            &account_id,
            caller.justification.as_deref().unwrap_or("none"),
            crate::subjects::requests::RequestState::Fulfilled,
        )
        .await?;
    }
    Ok(answered(
        &closed.decision,
        StatusCode::OK,
        ClosureAnswer {
            account_id,
            categories: closed.categories,
            transfers_cancelled: closed.transfers_cancelled,
            registrable_after: rfc3339(closed.registrable_after),
            certificate: closed.certificate,
            account_salt: closed.salt,
            decision: closed.decision.clone(),
            log_index: closed.log_index,
        },
    ))
}
