//! `/v1/subjects/{subject_id}`: registration and erasure.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use clover_keys::aad;
use clover_model::{Action, Region, SubjectId};
use clover_policy::{AccessRequest, Decision};
use clover_store::SubjectRow;
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};
use utoipa::ToSchema;

use crate::Boundary;
use crate::pipeline::{self, Caller};
use crate::problem::{ApiError, Body, DecisionLabel, Problem};

/// A subject's registration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubjectBody {
    /// The subject's home region; must be this boundary's.
    #[schema(value_type = String, example = "eu")]
    pub home_region: Region,
    /// The subject's birth date (`YYYY-MM-DD`), stored encrypted.
    #[schema(example = "2011-05-01")]
    pub birth_date: Option<String>,
}

/// The subject's attributes, sealed with their data key.
#[derive(Serialize, Deserialize)]
struct Attributes {
    birth_date: Option<String>,
}

/// A registered subject.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubjectAnswer {
    /// The subject's id.
    #[schema(value_type = String)]
    pub subject_id: SubjectId,
    /// Their home region.
    #[schema(value_type = String)]
    pub home_region: Region,
    /// Whether this request registered them (false: they were registered and are updated).
    pub created: bool,
    /// The decision that allowed the write.
    #[schema(value_type = Object)]
    pub decision: Decision,
}

/// What an erasure did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasureAnswer {
    /// The erased subject.
    #[schema(value_type = String)]
    pub subject_id: SubjectId,
    /// How many records were destroyed with the subject's data key.
    pub erased_records: u64,
    /// The decision that allowed the erasure.
    #[schema(value_type = Object)]
    pub decision: Decision,
}

fn birth_date(text: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = Date::parse(&text, format)
        .map_err(|_| ApiError::InvalidBody(format!("birth_date {text:?} is not a date of the form YYYY-MM-DD")))?;
    if date > OffsetDateTime::now_utc().date() {
        return Err(ApiError::InvalidBody(format!("birth_date {text:?} is in the future")));
    }
    Ok(Some(text))
}

pub(crate) fn answered(decision: &Decision, status: StatusCode, body: impl Serialize) -> Response {
    let mut response = (status, Json(body)).into_response();
    response.extensions_mut().insert(DecisionLabel(decision.effect()));
    response
}

/// Registers a subject, or updates a registered one.
///
/// The subject gets their own data key, stored only wrapped by the region's key-encryption
/// key; their birth date is stored encrypted under it.
#[utoipa::path(put, path = "/v1/subjects/{subject_id}", tag = "subjects",
    params(("subject_id" = String, Path, description = "The platform's opaque id for the subject")),
    request_body = SubjectBody,
    responses(
        (status = CREATED, description = "Registered", body = SubjectAnswer),
        (status = OK, description = "Already registered; updated", body = SubjectAnswer),
        (status = CONFLICT, description = "The subject's home region is not this boundary's", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "Denied by policy", body = Problem, content_type = "application/problem+json"),
        (status = UNAUTHORIZED, description = "No valid token", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_subject(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Path(subject_id): Path<String>,
    Body(body): Body<SubjectBody>,
) -> Result<Response, ApiError> {
    let subject_id = SubjectId::new(subject_id)?;
    let birth_date = birth_date(body.birth_date)?;
    if body.home_region != *boundary.region() {
        return Err(ApiError::WrongRegion {
            subject: body.home_region.to_string(),
            boundary: boundary.region().to_string(),
        });
    }
    let permit = pipeline::decide(&AccessRequest {
        boundary: boundary.region(),
        principal: &caller.principal,
        origin: &caller.origin,
        action: Action::Write,
        subject: &subject_id,
        subject_region: &body.home_region,
        record: None,
        category: None,
    })?;
    let attributes = serde_json::to_vec(&Attributes { birth_date }).map_err(ApiError::internal)?;
    let sealed_aad = aad::subject(boundary.region(), &subject_id);

    let created = match boundary.store().subject(&subject_id).await.map_err(ApiError::internal)? {
        Some(existing) => {
            let key = pipeline::unwrap_key(&boundary, &existing, &permit)?;
            let sealed = key.seal(&sealed_aad, &attributes).map_err(ApiError::internal)?;
            if !boundary.store().update_subject_attributes(&subject_id, &sealed).await.map_err(ApiError::internal)? {
                return Err(ApiError::NotFound { what: "subject", id: subject_id.to_string() });
            }
            false
        }
        None => {
            let (key, wrapped) = boundary.custody().new_data_key(&permit).map_err(ApiError::internal)?;
            let row = SubjectRow {
                subject_id: subject_id.clone(),
                home_region: body.home_region.clone(),
                kek_version: wrapped.kek_version,
                wrapped_key: wrapped.bytes,
                attributes: key.seal(&sealed_aad, &attributes).map_err(ApiError::internal)?,
                created_at: OffsetDateTime::now_utc(),
            };
            if !boundary.store().insert_subject(&row).await.map_err(ApiError::internal)? {
                // Registered concurrently by another request: keep theirs, report an update.
                let existing = pipeline::load_subject(&boundary, &subject_id).await?;
                let key = pipeline::unwrap_key(&boundary, &existing, &permit)?;
                let sealed = key.seal(&sealed_aad, &attributes).map_err(ApiError::internal)?;
                boundary.store().update_subject_attributes(&subject_id, &sealed).await.map_err(ApiError::internal)?;
                false
            } else {
                true
            }
        }
    };
    tracing::info!(subject = %subject_id, created, "subject registered");
    let decision = permit.decision().clone();
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(answered(
        &decision,
        status,
        SubjectAnswer { subject_id, home_region: body.home_region, created, decision: decision.clone() },
    ))
}

/// Erases a subject: destroys their wrapped data key and all their records.
///
/// Erasure is crypto-shredding: without the data key, any copy of the subject's ciphertext
/// (a backup, a replica) can no longer be decrypted.
#[utoipa::path(delete, path = "/v1/subjects/{subject_id}", tag = "subjects",
    params(("subject_id" = String, Path, description = "The platform's opaque id for the subject")),
    responses(
        (status = OK, description = "Erased", body = ErasureAnswer),
        (status = NOT_FOUND, description = "No such subject", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "Denied by policy", body = Problem, content_type = "application/problem+json"),
        (status = UNAUTHORIZED, description = "No valid token", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn erase_subject(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Path(subject_id): Path<String>,
) -> Result<Response, ApiError> {
    let subject_id = SubjectId::new(subject_id)?;
    let subject = pipeline::load_subject(&boundary, &subject_id).await?;
    let permit = pipeline::decide(&AccessRequest {
        boundary: boundary.region(),
        principal: &caller.principal,
        origin: &caller.origin,
        action: Action::Erase,
        subject: &subject_id,
        subject_region: &subject.home_region,
        record: None,
        category: None,
    })?;
    let erasure = boundary
        .store()
        .erase_subject(&subject_id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound { what: "subject", id: subject_id.to_string() })?;
    tracing::info!(subject = %subject_id, records = erasure.records, "subject erased");
    let decision = permit.decision().clone();
    Ok(answered(
        &decision,
        StatusCode::OK,
        ErasureAnswer { subject_id, erased_records: erasure.records, decision: decision.clone() },
    ))
}
