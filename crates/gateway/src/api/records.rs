//! `/v1/subjects/{subject_id}/records` and `/v1/records/{record_id}`: encrypted records.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use clover_model::{Category, Fields, RecordId, SubjectId, View};
use clover_policy::Decision;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::answer::answered;
use crate::boundary::Boundary;
use crate::pipeline::{self, Caller};
use crate::problem::{ApiError, Body, Problem};

/// A new record.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordBody {
    /// One of the boundary's configured categories.
    #[schema(example = "profile", pattern = "^[a-z0-9-]{1,64}$")]
    pub category: String,
    /// The personal fields, a JSON object; stored encrypted.
    #[schema(value_type = Object, example = json!({"display_name": "Aoife", "email": "aoife@example.ie"}))]
    pub fields: Fields,
}

/// A record written.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordCreated {
    /// The new record's id.
    #[schema(value_type = String)]
    pub record_id: RecordId,
    /// Whose record it is.
    #[schema(value_type = String)]
    pub subject_id: SubjectId,
    /// Its category.
    #[schema(value_type = String)]
    pub category: Category,
    /// Its version.
    pub version: u32,
    /// The decision that allowed the write.
    #[schema(value_type = Object)]
    pub decision: Decision,
    /// The index of the log entry that records it.
    pub log_index: u64,
}

/// A record read.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordAnswer {
    /// The record's id.
    /// In a pseudonymised view, a keyed token of it (stable within the purpose and the caller's
    /// region, unlinkable across them), never the id.
    pub record_id: String,
    /// Whose record it is; in a pseudonymised view, a keyed token, never the subject's id.
    pub subject_id: String,
    /// Its category.
    #[schema(value_type = String)]
    pub category: Category,
    /// Its version.
    pub version: u32,
    /// When it was written (RFC 3339).
    pub created_at: String,
    /// `full` or `pseudonymised`.
    #[schema(value_type = String, example = "full")]
    pub view: View,
    /// The fields, in the view granted.
    #[schema(value_type = Object)]
    pub fields: Fields,
    /// The decision that allowed the read.
    #[schema(value_type = Object)]
    pub decision: Decision,
    /// The index of the log entry that records the read, logged before anything was decrypted.
    pub log_index: u64,
}

/// Writes a record for a subject, encrypted under the subject's data key.
#[utoipa::path(post, path = "/v1/subjects/{subject_id}/records", tag = "records",
    params(("subject_id" = String, Path, description = "The platform's opaque id for the subject: 1 to 128 characters of A-Z a-z 0-9 - _ . : @, not only dots")),
    request_body = RecordBody,
    responses(
        (status = CREATED, description = "Stored", body = RecordCreated),
        (status = BAD_REQUEST, description = "`invalid-id`: the subject id is not of the allowed form", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "`not-found`: no such subject (or erased)", body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, description = "`unknown-category`: the category is not configured", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: denied by policy; the body carries the decision and the index of the log entry that records it", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_record(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Path(subject_id): Path<String>,
    Body(body): Body<RecordBody>,
) -> Result<Response, ApiError> {
    let subject_id = SubjectId::new(subject_id)?;
    let category = Category::new(body.category.clone())
        .ok()
        .filter(|c| boundary.has_category(c))
        .ok_or_else(|| ApiError::UnknownCategory { category: body.category, known: boundary.category_names() })?;
    let (row, receipt) = pipeline::write(&boundary, &caller, &subject_id, &category, &body.fields).await?;
    let (record_id, version) = (row.record_id, row.version);
    tracing::info!(record = %record_id, subject = %subject_id, %category, log_index = receipt.index(), "record stored");
    let decision = receipt.permit().decision().clone();
    Ok(answered(
        &decision,
        StatusCode::CREATED,
        RecordCreated {
            record_id,
            subject_id,
            category,
            version,
            decision: decision.clone(),
            log_index: receipt.index(),
        },
    ))
}

/// Reads a record: decided by policy, then decrypted, then answered with the decision.
#[utoipa::path(get, path = "/v1/records/{record_id}", tag = "records",
    params(
        ("record_id" = String, Path, description = "The record's id: a UUID in lowercase with hyphens, as the boundary wrote it"),
    ),
    responses(
        (status = OK, description = "The record, in the view the decision grants", body = RecordAnswer),
        (status = BAD_REQUEST, description = "`invalid-id`: the record id is not a UUID in its one spelling (lowercase, with hyphens)", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: denied by policy; the body carries the decision and the index of the log entry that records it", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "`not-found`: no such record (or erased)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn read_record(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Path(record_id): Path<String>,
) -> Result<Response, ApiError> {
    let record_id: RecordId = record_id.parse()?;
    let (record, viewed, receipt) = pipeline::read(&boundary, &caller, &record_id).await?;
    let decision = receipt.permit().decision().clone();
    let created_at =
        record.created_at.format(&time::format_description::well_known::Rfc3339).map_err(ApiError::internal)?;
    let (record_id, subject_id, fields) = (viewed.record_id, viewed.subject_id, viewed.fields);
    Ok(answered(
        &decision,
        StatusCode::OK,
        RecordAnswer {
            record_id,
            subject_id,
            category: record.category,
            version: record.version,
            created_at,
            view: receipt.permit().view(),
            fields,
            decision: decision.clone(),
            log_index: receipt.index(),
        },
    ))
}
