//! `/v1/repatriation/jobs/{job}/…`: a repatriation's batches, their verification and its
//! receipt (`crate::repatriation` does the work; `clover repatriate run` calls these).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use clover_model::{Category, Fields, RecordId, Region, SubjectId};
use clover_policy::Decision;
use clover_repatriate::{Digest, SourceRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::answer::answered;
use crate::boundary::Boundary;
use crate::pipeline::Caller;
use crate::problem::{ApiError, Body, Problem};
use crate::repatriation::{self, Check, CopyStatus, Incoming, Reported, VerifyStatus};

/// A batch of a job's rows, classified as this region's by the operator's run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepatriationBatch {
    /// At least one row (as many as fit in the body's limit, `max_body_bytes`; the command
    /// sends 500).
    #[schema(min_items = 1)]
    pub records: Vec<RepatriatedRecordBody>,
}

/// One source row of this region's.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepatriatedRecordBody {
    /// The row's stable key at the source (1 to 512 bytes; the document says 128 characters,
    /// which are never more). A key a batch holds twice: the first row counts.
    #[schema(example = "10042", min_length = 1, max_length = 128)]
    pub source_key: String,
    /// Its place among the region's rows of the source, in the source's reading order (from 0):
    /// its leaf in the receipt's Merkle root.
    #[serde(deserialize_with = "whole_number")]
    #[schema(minimum = 0)]
    pub ordinal: u64,
    /// The subject's id.
    #[schema(example = "u-1001")]
    pub subject_id: String,
    /// The subject's home region; must be this boundary's.
    #[schema(value_type = String, example = "eu", pattern = "^[a-z0-9-]{1,32}$")]
    pub home_region: Region,
    /// The subject's birth date (`YYYY-MM-DD`, from 1900 to today), if the source has it;
    /// without it, a subject registered here is treated as a minor.
    #[schema(example = "2011-05-01", format = Date, pattern = "^(19[0-9]{2}|20[01][0-9]|202[0-5])-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])$")]
    pub birth_date: Option<String>,
    /// One of the boundary's configured categories.
    #[schema(example = "profile")]
    pub category: String,
    /// The record's fields, a JSON object; stored encrypted.
    #[schema(value_type = Object)]
    pub fields: Fields,
}

/// A whole number from 0 to 2^64 - 1, written as JSON writes it (`531`, or `531.0`, which JSON
/// Schema counts as the same integer).
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(n) = number.as_u64() {
        return Ok(n);
    }
    match number.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) => Ok(f as u64),
        _ => Err(serde::de::Error::custom(format!("{number} is not a whole number from 0 to 2^64 - 1"))),
    }
}

/// What became of one row.
#[derive(Debug, Serialize, ToSchema)]
pub struct CopyResult {
    /// The row's source key.
    pub source_key: String,
    /// `copied` (written now), `present` (the job brought it home before, unchanged),
    /// `changed` (the job brought it home before, and the source row has changed since; not
    /// written), `erased` (the subject was erased in the region: not brought back; the row is
    /// to be deleted at the source) or `duplicate` (the batch holds the key before; not written).
    #[schema(value_type = String, example = "copied")]
    pub status: CopyStatus,
    /// The row's canonical digest, as the boundary computed it from what it was sent (hex).
    pub digest: String,
    /// The record it is in the region (none for an erased subject's row).
    #[schema(value_type = Option<String>)]
    pub record_id: Option<RecordId>,
    /// The log entry of the record's write (for an erased subject's row, of the registration
    /// the custodian refused).
    pub log_index: u64,
    /// For a record written now, what reading it back from the store as committed gave, opened
    /// with the key it was sealed with: `=` (identical to what was sent), `*`, `+` or `!`, as a
    /// verification answers. None for a record brought home before: verify it.
    #[schema(value_type = Option<String>, example = "=")]
    pub read_back: Option<VerifyStatus>,
}

/// What a batch did.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAnswer {
    /// The job.
    pub job: String,
    /// Per row, in the order sent.
    pub results: Vec<CopyResult>,
    /// Subjects registered on the way.
    pub subjects_registered: u64,
    /// The decision that allowed the batch.
    #[schema(value_type = Object)]
    pub decision: Decision,
}

/// Rows to read back and compare.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBatch {
    /// The category of the batch's first row (the request is decided as if on a record of it).
    #[schema(example = "profile")]
    pub category: String,
    /// At least one row (as many as fit in the body's limit).
    #[schema(min_items = 1)]
    pub records: Vec<VerifyRecordBody>,
}

/// A row to verify.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRecordBody {
    /// The row's source key.
    pub source_key: String,
    /// The source row's canonical digest as it is now (hex).
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub digest: String,
}

/// What the verification found for a row.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyResult {
    /// The row's source key.
    pub source_key: String,
    /// `=` (the region's copy, read back, is identical), `*` (it differs), `+` (the job did
    /// not bring it home) or `!` (the region's copy could not be read back).
    #[schema(value_type = String, example = "=")]
    pub status: VerifyStatus,
    /// For a row that differs: whether the source row changed since the job copied it.
    pub source_changed: bool,
    /// The log entry of the read back.
    pub log_index: Option<u64>,
}

/// What a verification found.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyAnswer {
    /// The job.
    pub job: String,
    /// Per row, in the order sent.
    pub results: Vec<VerifyResult>,
    /// The decision that allowed the verification.
    #[schema(value_type = Object)]
    pub decision: Decision,
}

/// What the operator's run reports, for the receipt.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    /// The source (a URL with its password redacted, or a file and its SHA-256): no control
    /// character, at most 64 KiB.
    #[schema(min_length = 1, max_length = 16384, pattern = "^[^\\u0000-\\u001f\\u007f]+$")]
    pub source: String,
    /// The run's counts per category and class (its plan), a JSON object.
    #[schema(value_type = Object)]
    pub plan: serde_json::Value,
    /// The purge's result, a JSON object, if the source was purged.
    #[schema(value_type = Option<Object>)]
    pub purge: Option<serde_json::Value>,
}

/// A signed receipt.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiptAnswer {
    /// The job.
    pub job: String,
    /// How many records the job brought home.
    pub records: u64,
    /// The RFC 6962 root over their digests in source order (hex).
    pub root: String,
    /// The manifest: a C2SP signed note under the log's key.
    pub note: String,
    /// The log entry that holds the manifest's SHA-256.
    pub log_index: u64,
    /// That entry's bytes (base64), to check against the log's inclusion proof.
    pub entry: String,
}

const JOB: &str =
    "The job's id: 1 to 64 characters of a-z 0-9 - _ . (not starting with a dot), chosen by the operator's run";

/// Brings a batch of a job's rows home through the write path.
///
/// Each record is decided by policy (the action `repatriate`), logged, sealed under the key of
/// its record version, and stored with the job's row, in one transaction per batch: nothing of a
/// batch is stored unless all of it is. Rows the job brought home before are not written again.
#[utoipa::path(post, path = "/v1/repatriation/jobs/{job}/records", tag = "repatriation",
    params(("job" = String, Path, description = JOB)),
    request_body = RepatriationBatch,
    responses(
        (status = OK, description = "Stored (or present already)", body = BatchAnswer),
        (status = BAD_REQUEST, description = "`invalid-id`: the job id is not of the allowed form", body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, description = "`invalid-body`: an empty batch, a subject id, a birth date, a source key too long; `unknown-category`", body = Problem, content_type = "application/problem+json"),
        (status = CONFLICT, description = "`wrong-region`: a row's home region is not this boundary's", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: denied by policy; the body carries the decision and the index of the log entry that records it", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "`not-found`: a subject was erased while the batch was written; nothing of it was stored", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn copy(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Path(job): Path<String>,
    Body(body): Body<RepatriationBatch>,
) -> Result<Response, ApiError> {
    repatriation::check_job(&job)?;
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let mut rows = Vec::with_capacity(body.records.len());
    for r in body.records {
        let key = r.source_key;
        let bad = |what: String| ApiError::InvalidBody(format!("source key {key:?}: {what}"));
        let subject = SubjectId::new(r.subject_id).map_err(|e| bad(e.to_string()))?;
        let category = Category::new(r.category.clone())
            .map_err(|_| ApiError::UnknownCategory { category: r.category, known: boundary.category_names() })?;
        let birth_date = match r.birth_date {
            Some(text) => Some(
                time::Date::parse(&text, format)
                    .map_err(|_| bad(format!("birth_date {text:?} is not a date of the form YYYY-MM-DD")))?,
            ),
            None => None,
        };
        let record = SourceRecord {
            source_key: key,
            subject,
            home_region: r.home_region,
            birth_date,
            category,
            fields: r.fields,
        };
        rows.push(Incoming { ordinal: r.ordinal, record });
    }
    let report = repatriation::copy(&boundary, &caller, &job, rows).await?;
    let results = report
        .rows
        .into_iter()
        .map(|r| CopyResult {
            source_key: r.source_key,
            status: r.status,
            digest: r.digest.to_hex(),
            record_id: r.record_id,
            log_index: r.log_index,
            read_back: r.read_back,
        })
        .collect();
    let decision = report.decision;
    Ok(answered(
        &decision,
        StatusCode::OK,
        BatchAnswer { job, results, subjects_registered: report.subjects_registered, decision: decision.clone() },
    ))
}

/// Reads a batch of a job's records back and compares each with its source row's digest.
///
/// Each read is decided and logged (a repatriation's access) and goes through the custodian; the
/// answer holds a status per row, never data.
#[utoipa::path(post, path = "/v1/repatriation/jobs/{job}/verify", tag = "repatriation",
    params(("job" = String, Path, description = JOB)),
    request_body = VerifyBatch,
    responses(
        (status = OK, description = "Compared", body = VerifyAnswer),
        (status = BAD_REQUEST, description = "`invalid-id`: the job id is not of the allowed form", body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, description = "`invalid-body`: an empty batch, a digest not in hex; `unknown-category`", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: denied by policy; the body carries the decision and the index of the log entry that records it", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn verify(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Path(job): Path<String>,
    Body(body): Body<VerifyBatch>,
) -> Result<Response, ApiError> {
    repatriation::check_job(&job)?;
    let category = Category::new(body.category.clone())
        .map_err(|_| ApiError::UnknownCategory { category: body.category, known: boundary.category_names() })?;
    let mut checks = Vec::with_capacity(body.records.len());
    for r in body.records {
        let digest = Digest::from_hex(&r.digest).ok_or_else(|| {
            ApiError::InvalidBody(format!("source key {:?}: the digest is not 64 hex digits", r.source_key))
        })?;
        checks.push(Check { source_key: r.source_key, digest });
    }
    let (verified, decision) = repatriation::verify(&boundary, &caller, &job, &category, checks).await?;
    let results = verified
        .into_iter()
        .map(|v| VerifyResult {
            source_key: v.source_key,
            status: v.status,
            source_changed: v.source_changed,
            log_index: v.log_index,
        })
        .collect();
    Ok(answered(&decision, StatusCode::OK, VerifyAnswer { job, results, decision: decision.clone() }))
}

/// Signs a job's receipt: the count and Merkle root of what it brought home, the log indexes
/// that cover it, and what the operator's run reports; logs its SHA-256.
#[utoipa::path(post, path = "/v1/repatriation/jobs/{job}/receipt", tag = "repatriation",
    params(("job" = String, Path, description = JOB)),
    request_body = ReceiptBody,
    responses(
        (status = OK, description = "Signed and logged", body = ReceiptAnswer),
        (status = BAD_REQUEST, description = "`invalid-id`: the job id is not of the allowed form", body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, description = "`invalid-body`: a source empty, too long or holding a control character; a plan or purge not an object", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: denied by policy; the body carries the decision and the index of the log entry that records it", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "`not-found`: the job brought nothing home", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn receipt(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Path(job): Path<String>,
    Body(body): Body<ReceiptBody>,
) -> Result<Response, ApiError> {
    repatriation::check_job(&job)?;
    let reported = Reported { source: body.source, plan: body.plan, purge: body.purge };
    let signed = repatriation::receipt(&boundary, &caller, &job, reported).await?;
    let answer = ReceiptAnswer {
        job,
        records: signed.records,
        root: signed.root.to_hex(),
        note: signed.note,
        log_index: signed.log_index,
        entry: base64::engine::general_purpose::STANDARD.encode(&signed.entry),
    };
    Ok(answered(&signed.decision, StatusCode::OK, answer))
}
