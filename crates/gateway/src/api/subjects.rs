//! `/v1/subjects/{subject_id}`: registration and erasure.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use clover_event::EventKind;
use clover_keys::{KeyError, aad};
use clover_model::{Action, Region, SubjectId};
use clover_policy::Decision;
use clover_store::SubjectRow;
use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};
use utoipa::ToSchema;

use crate::api::answer::answered;
use crate::api::erasure::{ErasureAnswer, erasure_answer};
use crate::boundary::Boundary;
use crate::pipeline::metadata::{Attributes, adult_on};
use crate::pipeline::{self, Ask, Caller, SubjectMetadata};
use crate::problem::{ApiError, Body, Problem};
use crate::subjects::requests::RequestKind;

/// A subject's registration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubjectBody {
    /// The subject's home region; must be this boundary's.
    #[schema(value_type = String, example = "eu", pattern = "^[a-z0-9-]{1,32}$")]
    pub home_region: Region,
    /// The subject's birth date (`YYYY-MM-DD`), stored encrypted. Without it, the subject is
    /// treated as a minor.
    #[schema(example = "2011-05-01", format = Date, pattern = "^(19[0-9]{2}|2[0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")]
    pub birth_date: Option<String>,
    /// The subject's country (ISO 3166-1 alpha-2), for its age of digital consent.
    #[schema(example = "ie", pattern = "^[a-z]{2}$")]
    pub country: Option<String>,
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
    /// The index of the log entry that records it.
    pub log_index: u64,
}

/// The answer to a registration that an erasure of the same subject overtook.
fn erased(subject: &SubjectId) -> ApiError {
    ApiError::NotFound { what: "subject", id: subject.to_string() }
}

/// The earliest year of birth a subject may be registered with.
const EARLIEST_BIRTH_YEAR: i32 = 1900;

/// The birth date given, checked: a date of the form `YYYY-MM-DD`, from 1900 to today.
fn birth_date(text: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = Date::parse(&text, format)
        .map_err(|_| ApiError::InvalidBody(format!("birth_date {text:?} is not a date of the form YYYY-MM-DD")))?;
    if date > OffsetDateTime::now_utc().date() {
        return Err(ApiError::InvalidBody(format!("birth_date {text:?} is in the future")));
    }
    // Nobody alive was born before 1900: such a date is a typo or a placeholder, and would make
    // the subject an adult whatever their real age.
    if date.year() < EARLIEST_BIRTH_YEAR {
        return Err(ApiError::InvalidBody(format!("birth_date {text:?} is before {EARLIEST_BIRTH_YEAR}")));
    }
    Ok(Some(text))
}

/// Registers a subject, or updates a registered one.
///
/// The subject gets their own data key, stored only wrapped by the region's key-encryption
/// key; their birth date is stored encrypted under it.
#[utoipa::path(put, path = "/v1/subjects/{subject_id}", tag = "subjects",
    params(("subject_id" = String, Path, description = "The platform's opaque id for the subject: 1 to 128 characters of A-Z a-z 0-9 - _ . : @, not only dots")),
    request_body = SubjectBody,
    responses(
        (status = CREATED, description = "Registered", body = SubjectAnswer),
        (status = OK, description = "Already registered; updated", body = SubjectAnswer),
        (status = BAD_REQUEST, description = "`invalid-id`: the subject id is not of the allowed form", body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, description = "`invalid-body`: an unknown field, a region, a country, a birth date not from 1900 to today", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "`not-found`: an erasure of the same subject, running at the same time, overtook the registration", body = Problem, content_type = "application/problem+json"),
        (status = CONFLICT, description = "`wrong-region`: the subject's home region is not this boundary's", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: denied by policy; the body carries the decision and the index of the log entry that records it", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_subject(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Path(subject_id): Path<String>,
    Body(body): Body<SubjectBody>,
) -> Result<Response, ApiError> {
    let subject_id = SubjectId::new(subject_id)?;
    let birth_date = birth_date(body.birth_date)?;
    let country = match body.country {
        Some(c) if c.len() == 2 && c.chars().all(|ch| ch.is_ascii_lowercase()) => Some(c),
        Some(c) => {
            return Err(ApiError::InvalidBody(format!(
                "country {c:?} is not an ISO 3166-1 alpha-2 code such as \"ie\""
            )));
        }
        None => None,
    };
    let adult_on = adult_on(&boundary, birth_date.as_deref(), country.as_deref());
    let minor = adult_on.is_none_or(|d| OffsetDateTime::now_utc().date() < d);
    if body.home_region != *boundary.region() {
        return Err(ApiError::WrongRegion {
            subject: body.home_region.to_string(),
            boundary: boundary.region().to_string(),
        });
    }
    // An update is decided on the stricter of what is stored and what is sent: a caller cannot
    // lift a minor's rules by sending an adult's birth date in the request that changes it.
    let stored = pipeline::metadata::find_subject(&boundary, &subject_id).await?;
    let registered = stored.is_some();
    let stored_minor = match stored {
        Some(stored) => pipeline::metadata::subject_minor(&boundary, &stored).await,
        None => false,
    };
    let ask = Ask {
        action: Action::Write,
        subject: &subject_id,
        record: None,
        version: None,
        subject_minor: minor || stored_minor,
    };
    if !registered {
        // A closed account's id is not registered again before its time (policy first: one
        // who may not register learns nothing of closures).
        let hash = boundary.subject_hash(&subject_id);
        if let Some(until) = boundary.store().account_closed_until(&hash).await.map_err(ApiError::internal)?
            && until > OffsetDateTime::now_utc()
        {
            pipeline::refuse_if_denied(&boundary, &caller, EventKind::Write, &ask).await?;
            return Err(ApiError::SubjectRefused {
                status: StatusCode::CONFLICT,
                slug: "account-closed",
                title: "Account closed",
                detail: format!(
                    "subject id {:?} belonged to an account that was closed; it may be registered again from {}",
                    subject_id.as_str(),
                    crate::subjects::certificate::rfc3339(until)
                ),
                log_index: None,
            });
        }
    }
    let receipt = pipeline::decide_and_log(&boundary, &caller, EventKind::Write, &ask).await?;
    let attributes = serde_json::to_vec(&Attributes { birth_date }).map_err(ApiError::internal)?;
    let sealed_aad = aad::subject(boundary.region(), &subject_id);
    let metadata = serde_json::to_vec(&SubjectMetadata { adult_on }).map_err(ApiError::internal)?;
    let metadata = boundary.custody().seal_metadata(&subject_id, &metadata).await.map_err(ApiError::internal)?;

    let created = match boundary.store().subject(&subject_id).await.map_err(ApiError::internal)? {
        Some(_) => {
            let key = pipeline::sealing::unwrap_key(&boundary, &receipt, || erased(&subject_id)).await?;
            let sealed = key.seal(&sealed_aad, &attributes).map_err(ApiError::internal)?;
            if !boundary.store().update_subject(&subject_id, &sealed, &metadata).await.map_err(ApiError::internal)? {
                return Err(ApiError::NotFound { what: "subject", id: subject_id.to_string() });
            }
            false
        }
        None => {
            // The custodian holds one data key per subject: a registration that raced this one
            // (or one cut short after the key was made) left the key to use. The custodian
            // honours a receipt once, and the refused creation used this one up: fetching the
            // key is an access of its own, decided and logged again.
            let key = match boundary.custody().create_data_key(&receipt).await {
                Ok(key) => key,
                Err(KeyError::DataKeyExists) => {
                    let fetch = pipeline::decide_and_log(&boundary, &caller, EventKind::Write, &ask).await?;
                    pipeline::sealing::unwrap_key(&boundary, &fetch, || erased(&subject_id)).await?
                }
                Err(e) => return Err(ApiError::internal(e)),
            };
            let row = SubjectRow {
                subject_id: subject_id.clone(),
                home_region: body.home_region.clone(),
                attributes: key.seal(&sealed_aad, &attributes).map_err(ApiError::internal)?,
                metadata: metadata.clone(),
                created_at: OffsetDateTime::now_utc(),
            };
            if !boundary.store().insert_subject(&row).await.map_err(ApiError::internal)? {
                // Registered concurrently by another request, with the same key: report an update.
                let sealed = key.seal(&sealed_aad, &attributes).map_err(ApiError::internal)?;
                boundary.store().update_subject(&subject_id, &sealed, &metadata).await.map_err(ApiError::internal)?;
                false
            } else {
                true
            }
        }
    };
    tracing::info!(subject = %subject_id, created, log_index = receipt.index(), "subject registered");
    let decision = receipt.permit().decision().clone();
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(answered(
        &decision,
        status,
        SubjectAnswer {
            subject_id,
            home_region: body.home_region,
            created,
            decision: decision.clone(),
            log_index: receipt.index(),
        },
    ))
}

/// Erases a subject: destroys their data key, their tag key and all their records, and unlinks
/// the log's annexes from them.
///
/// Erasure is crypto-shredding: without the data key, any copy of the subject's ciphertext
/// (a backup, a replica) can no longer be decrypted; without the tag key, no one (the region
/// included) can tell which public log entries were about them. The entries stay, and verify.
///
/// With the SQLite store the answer comes once the old copies of the rows are gone from the
/// database's write-ahead log too. If readers keep it from being truncated, the erasure stays
/// committed and is answered 503 `erasure-unfinished`; the same request again finishes it.
///
/// A data subject may erase their own data with their own token, from anywhere. The answer
/// carries a signed erasure certificate. A legal hold on the subject blocks the erasure: it is
/// answered 409 `held` with the hold's reference, and tracked as a request that needs a person.
#[utoipa::path(delete, path = "/v1/subjects/{subject_id}", tag = "subjects",
    params(("subject_id" = String, Path, description = "The platform's opaque id for the subject: 1 to 128 characters of A-Z a-z 0-9 - _ . : @, not only dots")),
    responses(
        (status = OK, description = "Erased", body = ErasureAnswer),
        (status = BAD_REQUEST, description = "`invalid-id`: the subject id is not of the allowed form", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "`not-found`: no such subject (or erased)", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: denied by policy; the body carries the decision and the index of the log entry that records it", body = Problem, content_type = "application/problem+json"),
        (status = CONFLICT, description = "`held`: a legal hold keeps the subject's data; nothing was erased, the erasure is tracked as a subject request (its id in the detail) and its receipt is logged at `log_index`", body = Problem, content_type = "application/problem+json"),
        (status = SERVICE_UNAVAILABLE, description = "`erasure-unfinished`: the erasure is committed and logged (`log_index`), but readers kept the data store's write-ahead log, which still holds old copies of the rows, from being truncated; send the request again to finish it", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn erase_subject(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Path(subject_id): Path<String>,
) -> Result<Response, ApiError> {
    let subject_id = SubjectId::new(subject_id)?;
    erasure_answer(&boundary, &caller, subject_id).await
}

/// One log entry about a subject.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessEntry {
    /// The entry's index in the log.
    pub index: u64,
    /// The public entry, decoded (see `docs/log.md`), its keys in the log's canonical order:
    /// format 2, or format 1 for entries written before it.
    #[schema(value_type = Object)]
    pub entry: serde_json::Value,
    /// The entry's private annex, which the region keeps (format 2 entries): who asked, about
    /// which record, with what justification. Its commitment is the entry's `annex`.
    #[schema(value_type = Option<Object>)]
    pub annex: Option<clover_event::Annex>,
}

/// The log entries about a subject.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccessesAnswer {
    /// The subject.
    #[schema(value_type = String)]
    pub subject_id: SubjectId,
    /// Every entry about the subject, oldest first, this request's own included.
    pub entries: Vec<AccessEntry>,
    /// The decision that allowed this listing.
    #[schema(value_type = Object)]
    pub decision: Decision,
    /// The index of the log entry that records this listing.
    pub log_index: u64,
}

/// Lists who accessed a subject's data: every log entry about them, with its index.
///
/// For data subjects who ask who read their data. The public entries hold no personal data (the
/// subject appears in each as a tag that no other entry shares); the region finds them through
/// their private annexes, which name the subject, and returns each with its annex. After the
/// subject's erasure the annexes no longer name them, and nothing is found.
#[utoipa::path(get, path = "/v1/subjects/{subject_id}/accesses", tag = "subjects",
    params(("subject_id" = String, Path, description = "The platform's opaque id for the subject: 1 to 128 characters of A-Z a-z 0-9 - _ . : @, not only dots")),
    responses(
        (status = OK, description = "The entries about the subject", body = AccessesAnswer),
        (status = BAD_REQUEST, description = "`invalid-id`: the subject id is not of the allowed form", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: denied by policy; the body carries the decision and the index of the log entry that records it", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_accesses(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Path(subject_id): Path<String>,
) -> Result<Response, ApiError> {
    let subject_id = SubjectId::new(subject_id)?;
    let subject = boundary.store().subject(&subject_id).await.map_err(ApiError::internal)?;
    let minor = match &subject {
        Some(subject) => pipeline::metadata::subject_minor(&boundary, subject).await,
        None => true,
    };
    let ask =
        Ask { action: Action::ListAccesses, subject: &subject_id, record: None, version: None, subject_minor: minor };
    let receipt = pipeline::decide_and_log(&boundary, &caller, EventKind::Access, &ask).await?;
    let found = crate::subjects::accesses::entries_about(&boundary, &subject_id, subject.is_some()).await?;
    let mut entries = Vec::with_capacity(found.len());
    for (index, annex) in found {
        let bytes = boundary.log().entry(index).await.map_err(ApiError::internal)?;
        clover_event::Entry::decode(&bytes).map_err(ApiError::internal)?;
        let entry = serde_json::from_slice(&bytes).map_err(ApiError::internal)?;
        entries.push(AccessEntry { index, entry, annex });
    }
    let decision = receipt.permit().decision().clone();
    Ok(answered(
        &decision,
        StatusCode::OK,
        AccessesAnswer { subject_id, entries, decision: decision.clone(), log_index: receipt.index() },
    ))
}

/// Exports a subject's data for them, by the region's privacy team acting on the subject's
/// verified request: the same archive as `POST /v1/me/export`.
///
/// Allowed to in-region staff with the role `privacy`, from a site of the region, with the
/// verified request's reference as the ticket (`X-Clover-Justification`); decided by policy
/// and logged, every record opened under an entry of its own. The request is tracked
/// (`GET /v1/requests/subjects`): `in_progress` while the archive is made, `fulfilled` once it
/// is; a failed export leaves it `in_progress`.
#[utoipa::path(post, path = "/v1/subjects/{subject_id}/export", tag = "subjects",
    params(("subject_id" = String, Path, description = "The platform's opaque id for the subject: 1 to 128 characters of A-Z a-z 0-9 - _ . : @, not only dots")),
    request_body = crate::api::exports::ExportBody,
    responses(
        (status = OK, description = "The archive: a ZIP (`application/zip`), or an `age` file holding it (`application/octet-stream`), with the headers of `POST /v1/me/export`", content_type = "application/zip", body = Vec<u8>),
        (status = BAD_REQUEST, description = "`invalid-id`: the subject id is not of the allowed form", body = Problem, content_type = "application/problem+json"),
        (status = FORBIDDEN, description = "`forbidden`: denied by policy (not the privacy team, not in the region, no ticket); the body carries the decision and its log index", body = Problem, content_type = "application/problem+json"),
        (status = NOT_FOUND, description = "`nothing-held`: no data is held about the subject; logged at `log_index`", body = Problem, content_type = "application/problem+json"),
        (status = UNPROCESSABLE_ENTITY, description = "`invalid-body`: an unknown field, or an `age_recipient` that does not parse; `export-too-large`: more records than `[subjects] max_export_records`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn export_subject(
    State(boundary): State<Arc<Boundary>>,
    caller: Caller,
    Path(subject_id): Path<String>,
    Body(body): Body<crate::api::exports::ExportBody>,
) -> Result<Response, ApiError> {
    let subject_id = SubjectId::new(subject_id)?;
    let recipient = body.age_recipient.as_deref().map(crate::subjects::export::parse_recipient).transpose()?;
    let minor = match boundary.store().subject(&subject_id).await.map_err(ApiError::internal)? {
        Some(row) => pipeline::metadata::subject_minor(&boundary, &row).await,
        None => true,
    };
    let ask =
        Ask { action: Action::ExportSubject, subject: &subject_id, record: None, version: None, subject_minor: minor };
    // Policy first: one who may not export learns nothing, and opens no request.
    pipeline::refuse_if_denied(&boundary, &caller, EventKind::Access, &ask).await?;
    let reference = caller.justification.clone().unwrap_or_default();
    let request = crate::subjects::requests::open(
        &boundary,
        &caller,
        RequestKind::Export,
        &subject_id,
        &reference,
        crate::subjects::requests::RequestState::InProgress,
    )
    .await?;
    let export = crate::subjects::export::build(&boundary, &caller, &subject_id, recipient).await?;
    crate::subjects::requests::advance(
        &boundary,
        Some(&caller),
        request,
        crate::subjects::requests::RequestState::Fulfilled,
        false,
    )
    .await?;
    crate::api::exports::export_response(export)
}
