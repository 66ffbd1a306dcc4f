//! Repatriation, the region's side (DESIGN.md, "Coming home"): the records a store abroad held
//! come home through the write path, are read back and compared, and a signed receipt says
//! what came.
//!
//! - [`copy`]: a batch of a job's rows, classified as this region's by `clover repatriate run`.
//!   Each record is decided by policy (the action `repatriate`), logged, sealed under the key of
//!   its record version that the custodian derives against the log receipt, and stored with the
//!   job's row (source key, digest, log index, place in the source) in one transaction per
//!   batch: nothing of a batch is stored unless all of it is. A subject not yet registered is
//!   registered first, by an entry of their own. A source row the job brought home already is
//!   not written again (a resumed run), and one whose content changed since is reported.
//! - [`verify`]: reads each record a job brought home back from the store, through the custodian
//!   (each read logged, as a repatriation's access), and compares the digest of what it holds
//!   with the digest of the source row as it is now. The answer is a status per row, never data.
//! - [`receipt`]: the job's signed manifest (a C2SP signed note under the log's key): its count,
//!   the Merkle root over its records' digests in source order (the root `clover repatriate
//!   digest` computes at the source), the log indexes that cover them, and what the operator's
//!   run reported (its plan's counts, its purge). Its SHA-256 is logged, in an entry of kind
//!   `repatriation`.
//!
//! Each request is first decided as if on a record of the job (a refused caller gets a logged
//! refusal and learns nothing of the job, not even whether it exists).

use std::collections::{HashMap, HashSet};

use clover_event::EventKind;
use clover_keys::{DataKey, KeyError, aad};
use clover_model::{Action, Category, RecordId, SubjectId};
use clover_policy::Decision;
use clover_repatriate::{Digest, MerkleBuilder, SourceRecord, record_digest};
use clover_store::{RecordRow, RepatriatedRow, SealedWith, SubjectRow};
use futures_util::future::try_join_all;
use time::OffsetDateTime;

use crate::boundary::Boundary;
use crate::pipeline::metadata::{self, Attributes, SubjectMetadata, adult_on};
use crate::pipeline::{
    Ask, Caller, Circumstances, RecordFacts, decide_and_log, decide_and_log_many, events, record_request, sealing,
};
use crate::problem::ApiError;

/// How many of a batch's records are decided and logged together: their annexes kept in one
/// transaction, their entries made durable together.
const CHUNK: usize = 256;

/// How many calls to the custodian (and registrations) are in flight at once.
const CONCURRENCY: usize = 64;

/// The longest source key kept, in bytes.
pub const MAX_SOURCE_KEY_BYTES: usize = 512;

/// The longest job id.
const MAX_JOB_LEN: usize = 64;

/// A job's id, checked: 1 to 64 of `a-z 0-9 - _ .`, not starting with a dot.
pub fn check_job(job: &str) -> Result<(), ApiError> {
    let fine = !job.is_empty()
        && job.len() <= MAX_JOB_LEN
        && !job.starts_with('.')
        && job.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    if fine {
        Ok(())
    } else {
        Err(ApiError::InvalidId(clover_model::InvalidId {
            kind: "job id",
            value: job.chars().take(64).collect(),
            rule: "1 to 64 characters of a-z 0-9 - _ . (not starting with a dot)",
        }))
    }
}

/// One source row of this region's, as the run read and classified it.
#[derive(Debug)]
pub struct Incoming {
    /// Its place among the region's rows of the source, in reading order (from 0).
    pub ordinal: u64,
    /// The record as the source holds it.
    pub record: SourceRecord,
}

/// What became of a row sent to [`copy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CopyStatus {
    /// Written now.
    Copied,
    /// The job brought this row home before, with the same content: not written again.
    Present,
    /// The job brought this row home before, and the source row has changed since: not written.
    Changed,
    /// The subject was erased in the region: not brought home again (the row is to be deleted
    /// at the source).
    Erased,
    /// The batch holds this source key before: the first row counts, this one is not written.
    Duplicate,
}

/// What [`copy`] did with one row.
#[derive(Debug)]
pub struct CopyOutcome {
    /// The row's source key.
    pub source_key: String,
    /// What became of it.
    pub status: CopyStatus,
    /// The row's canonical digest as the boundary computed it from what it was sent.
    pub digest: Digest,
    /// The record it is in the region (none for an erased subject's row).
    pub record_id: Option<RecordId>,
    /// The log entry of the record's write (for an erased subject's row, of the registration
    /// the custodian refused).
    pub log_index: u64,
    /// For a record written now: what reading it back from the store gave (its digest, or
    /// why it could not be read).
    pub read_back: Option<VerifyStatus>,
}

/// What [`copy`] did.
#[derive(Debug)]
pub struct CopyReport {
    /// Per row, in the order sent.
    pub rows: Vec<CopyOutcome>,
    /// Subjects registered on the way.
    pub subjects_registered: u64,
    /// The decision that allowed the batch (the first record's).
    pub decision: Decision,
}

/// Decides `action` (a repatriation) as if on a record of `category` of the job, and logs a
/// refusal: what every request about a job passes before anything of the job is looked at.
/// Returns the decision that allowed it.
async fn gate(boundary: &Boundary, caller: &Caller, job: &str, category: &Category) -> Result<Decision, ApiError> {
    decide_as_if(boundary, caller, job, category, true).await
}

/// Decides a repatriation of a record of `category` of a subject who is (or not) a minor, of
/// the job, and logs a refusal (the decision that allowed it otherwise; nothing logged).
async fn decide_as_if(
    boundary: &Boundary,
    caller: &Caller,
    job: &str,
    category: &Category,
    subject_minor: bool,
) -> Result<Decision, ApiError> {
    let circumstances = Circumstances {
        purpose: caller.purpose.clone(),
        has_justification: caller.justification.is_some(),
        approved: false,
        subjects_touched: 1,
        destination: None,
    };
    let facts = RecordFacts { id: format!("repatriation-{job}"), category: category.clone(), subject_minor };
    let request = record_request(
        boundary.config(),
        &caller.principal,
        &caller.origin,
        Action::Repatriate,
        &facts,
        &circumstances,
    );
    let decision = boundary.decide(&request);
    if decision.effect() == "allow" {
        return Ok(decision);
    }
    let note = format!("repatriation job {job}");
    Err(events::log_refused_as_if(boundary, caller, Action::Repatriate, None, Some(&note), category.as_str(), decision)
        .await)
}

/// Checks a batch before anything is decided: its size, and each row's category, region, birth
/// date and key. A bad row fails the batch (422 naming its key), and nothing of it is written.
fn check_batch(boundary: &Boundary, rows: &[Incoming]) -> Result<(), ApiError> {
    // How many rows a batch may hold is bounded by the body's size (`max_body_bytes`).
    if rows.is_empty() {
        return Err(ApiError::InvalidBody("a batch holds at least one record".to_owned()));
    }
    let today = OffsetDateTime::now_utc().date();
    for row in rows {
        let r = &row.record;
        let key = &r.source_key;
        if key.is_empty() || key.len() > MAX_SOURCE_KEY_BYTES {
            return Err(ApiError::InvalidBody(format!(
                "a source key has 1 to {MAX_SOURCE_KEY_BYTES} bytes; one has {}",
                key.len()
            )));
        }
        if !boundary.has_category(&r.category) {
            return Err(ApiError::UnknownCategory {
                category: r.category.to_string(),
                known: boundary.category_names(),
            });
        }
        if r.home_region != *boundary.region() {
            return Err(ApiError::WrongRegion {
                subject: r.home_region.to_string(),
                boundary: boundary.region().to_string(),
            });
        }
        if let Some(born) = r.birth_date
            && (born > today || born.year() < 1900)
        {
            return Err(ApiError::InvalidBody(format!("source key {key:?}: the birth date is not from 1900 to today")));
        }
    }
    Ok(())
}

/// Brings a batch of a job's rows home (see the module's documentation).
pub async fn copy(
    boundary: &Boundary,
    caller: &Caller,
    job: &str,
    rows: Vec<Incoming>,
) -> Result<CopyReport, ApiError> {
    check_job(job)?;
    check_batch(boundary, &rows)?;
    let Some(first) = rows.first() else { return Err(ApiError::InvalidBody("an empty batch".to_owned())) };
    let decision = gate(boundary, caller, job, &first.record.category).await?;

    // Each row with its digest and, for what the job brought home before (a resumed run),
    // what it became: not written again.
    let source_keys: Vec<String> = rows.iter().map(|r| r.record.source_key.clone()).collect();
    let mut kept: HashMap<String, RepatriatedRow> = boundary
        .store()
        .repatriated_many(job, &source_keys)
        .await
        .map_err(ApiError::internal)?
        .into_iter()
        .map(|row| (row.source_key.clone(), row))
        .collect();
    let mut items = Vec::with_capacity(rows.len());
    let mut in_batch: HashSet<String> = HashSet::with_capacity(rows.len());
    for row in rows {
        let digest = record_digest(&row.record);
        let outcome = if in_batch.insert(row.record.source_key.clone()) {
            kept.remove(&row.record.source_key).map(|kept| outcome_of_kept(kept, digest))
        } else {
            Some(CopyOutcome {
                source_key: row.record.source_key.clone(),
                status: CopyStatus::Duplicate,
                digest,
                record_id: None,
                log_index: 0,
                read_back: None,
            })
        };
        items.push((row, digest, outcome));
    }

    // Subjects first (each once, many at a time), then the records, many at a time.
    let mut firsts: Vec<&SourceRecord> = Vec::new();
    let mut seen: HashSet<&SubjectId> = HashSet::new();
    for (row, _, _) in items.iter().filter(|(_, _, outcome)| outcome.is_none()) {
        if seen.insert(&row.record.subject) {
            firsts.push(&row.record);
        }
    }
    let mut subjects: HashMap<SubjectId, Subject> = HashMap::new();
    let mut unregistered: Vec<&SourceRecord> = Vec::new();
    for record in firsts {
        match metadata::find_subject(boundary, &record.subject).await? {
            Some(row) => {
                let minor = metadata::subject_minor(boundary, &row).await;
                subjects.insert(record.subject.clone(), Subject::Known { minor });
            }
            None => unregistered.push(record),
        }
    }
    for chunk in unregistered.chunks(CHUNK) {
        for (record, state) in chunk.iter().zip(register(boundary, caller, chunk).await?) {
            subjects.insert(record.subject.clone(), state);
        }
    }
    let subjects_registered =
        subjects.values().filter(|state| matches!(state, Subject::Registered { .. })).count() as u64;
    // An erased subject's rows are not brought home again.
    for (row, digest, outcome) in &mut items {
        if outcome.is_none()
            && let Some(Subject::Erased { log_index }) = subjects.get(&row.record.subject)
        {
            *outcome = Some(CopyOutcome {
                source_key: row.record.source_key.clone(),
                status: CopyStatus::Erased,
                digest: *digest,
                record_id: None,
                log_index: *log_index,
                read_back: None,
            });
        }
    }
    let minors: HashMap<&SubjectId, bool> = subjects
        .iter()
        .filter_map(|(id, state)| match state {
            Subject::Known { minor } | Subject::Registered { minor } => Some((id, *minor)),
            Subject::Erased { .. } => None,
        })
        .collect();
    // Every kind of record the batch writes is decided before any write is logged: a batch that
    // policy refuses in part is refused whole, with no allowed write logged for it.
    let mut kinds: HashSet<(&Category, bool)> = HashSet::new();
    for (row, _, outcome) in &items {
        if outcome.is_none() {
            kinds.insert((&row.record.category, minors.get(&row.record.subject).copied().unwrap_or(true)));
        }
    }
    for (category, minor) in kinds {
        decide_as_if(boundary, caller, job, category, minor).await?;
    }
    let to_write: Vec<(&Incoming, Digest)> =
        items.iter().filter(|(_, _, outcome)| outcome.is_none()).map(|(row, digest, _)| (row, *digest)).collect();
    let mut pairs: Vec<(RecordRow, RepatriatedRow)> = Vec::with_capacity(to_write.len());
    let mut keys: Vec<DataKey> = Vec::with_capacity(to_write.len());
    for chunk in to_write.chunks(CHUNK) {
        for (record, row, key) in prepare(boundary, caller, job, chunk, &minors).await? {
            pairs.push((record, row));
            keys.push(key);
        }
    }
    let stored = if pairs.is_empty() {
        Vec::new()
    } else {
        boundary.store().insert_repatriated(&pairs).await.map_err(|e| match e {
            // Erased between registration and the write: nothing of the batch was stored.
            clover_store::StoreError::NoSuchSubject(id) => ApiError::NotFound { what: "subject", id: id.to_string() },
            other => ApiError::internal(other),
        })?
    };
    // Read back from the store as committed, in one query.
    let ids: Vec<RecordId> = pairs.iter().zip(&stored).filter(|(_, s)| **s).map(|((r, _), _)| r.record_id).collect();
    let mut held: HashMap<RecordId, RecordRow> = if ids.is_empty() {
        HashMap::new()
    } else {
        let rows = boundary.store().records_by_id(&ids).await;
        match rows {
            Ok(rows) => rows.into_iter().map(|r| (r.record_id, r)).collect(),
            Err(e) => {
                tracing::error!(job, error = %crate::report::Chain(&e), "repatriated records cannot be read back");
                HashMap::new()
            }
        }
    };
    let mut written = pairs.into_iter().zip(keys).zip(stored);
    let mut outcomes = Vec::with_capacity(items.len());
    for (row, digest, outcome) in items {
        if let Some(outcome) = outcome {
            outcomes.push(outcome);
            continue;
        }
        let Some((((record, kept), key), stored)) = written.next() else {
            return Err(ApiError::internal(NotKept("(a row of the batch)".to_owned())));
        };
        outcomes.push(if stored {
            // Read back from the store as committed, and opened with the key it was sealed
            // with (the write's: no other access is made): what is stored is what was sent.
            let read_back = read_back(boundary, &row.record.source_key, held.remove(&record.record_id), &key, digest);
            CopyOutcome {
                source_key: kept.source_key,
                status: CopyStatus::Copied,
                digest,
                record_id: Some(record.record_id),
                log_index: kept.log_index,
                read_back: Some(read_back),
            }
        } else {
            // Another run of the job brought it home meanwhile.
            let again = boundary.store().repatriated(job, &kept.source_key).await.map_err(ApiError::internal)?;
            let again = again.ok_or_else(|| ApiError::internal(NotKept(kept.source_key.clone())))?;
            outcome_of_kept(again, digest)
        });
    }
    let copied = outcomes.iter().filter(|r| r.status == CopyStatus::Copied).count();
    tracing::info!(job, copied, sent = outcomes.len(), subjects_registered, "repatriation batch stored");
    metrics::counter!(crate::metrics::REPATRIATED_RECORDS).increment(copied as u64);
    Ok(CopyReport { rows: outcomes, subjects_registered, decision })
}

/// Reads a record just stored back from the store and opens it with the key it was sealed with;
/// identical when the digest of what it holds (with the source key) is `digest`, as [`verify`]
/// compares.
fn read_back(
    boundary: &Boundary,
    source_key: &str,
    stored: Option<RecordRow>,
    key: &DataKey,
    digest: Digest,
) -> VerifyStatus {
    let Some(stored) = stored else { return VerifyStatus::Missing };
    let id = stored.record_id;
    let aad = aad::record(boundary.region(), &stored.subject_id, &stored.record_id, stored.version);
    let fields = match key.open(&aad, &stored.ciphertext).map(|plain| clover_model::Fields::from_bytes(&plain)) {
        Ok(Ok(fields)) => fields,
        _ => {
            tracing::error!(record = %id, "a repatriated record does not open as it was sealed");
            return VerifyStatus::Unreadable;
        }
    };
    let held = record_digest(&SourceRecord {
        source_key: source_key.to_owned(),
        subject: stored.subject_id,
        home_region: stored.home_region,
        birth_date: None,
        category: stored.category,
        fields,
    });
    if held == digest { VerifyStatus::Identical } else { VerifyStatus::Differs }
}

/// A row a job kept that a store answered stored by another run, then did not find.
#[derive(Debug, thiserror::Error)]
#[error("the store kept source key {0:?} for another run of the job, and then did not find it")]
struct NotKept(String);

/// What a row the job kept before says of the row sent now.
fn outcome_of_kept(kept: RepatriatedRow, digest: Digest) -> CopyOutcome {
    let status = if kept.digest == digest.to_hex() { CopyStatus::Present } else { CopyStatus::Changed };
    CopyOutcome {
        source_key: kept.source_key,
        status,
        digest,
        record_id: Some(kept.record_id),
        log_index: kept.log_index,
        read_back: None,
    }
}

/// A batch's subject, as found or registered.
#[derive(Debug, Clone, Copy)]
enum Subject {
    /// Registered before; whether a minor.
    Known { minor: bool },
    /// Registered now; whether a minor.
    Registered { minor: bool },
    /// Erased in the region (the custodian refused their key, against the entry at `log_index`):
    /// not brought back.
    Erased { log_index: u64 },
}

/// A subject to register: its place in the batch, its record and facts (birth date, the day
/// they come of age, whether a minor), its request and the receipt of its entry.
type Work<'r, 'a> = (
    usize,
    ((&'r &'r SourceRecord, &'r (Option<String>, Option<time::Date>, bool)), (&'r Ask<'a>, clover_log::Receipt)),
);

/// Registers the subjects of `records` (none of them registered when looked up), many at a
/// time: decided and logged together (as repatriations of the subjects), their keys made by the
/// custodian, their birth dates sealed, stored in one transaction.
async fn register(boundary: &Boundary, caller: &Caller, records: &[&SourceRecord]) -> Result<Vec<Subject>, ApiError> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let today = OffsetDateTime::now_utc().date();
    let mut facts = Vec::with_capacity(records.len());
    for record in records {
        let birth_date = record.birth_date.map(|d| d.format(format)).transpose().map_err(ApiError::internal)?;
        let adult_on = adult_on(boundary, birth_date.as_deref(), None);
        let minor = adult_on.is_none_or(|d| today < d);
        facts.push((birth_date, adult_on, minor));
    }
    let asks: Vec<Ask<'_>> = records
        .iter()
        .zip(&facts)
        .map(|(record, (_, _, minor))| Ask {
            action: Action::Repatriate,
            subject: &record.subject,
            record: None,
            version: None,
            subject_minor: *minor,
        })
        .collect();
    let receipts = decide_and_log_many(boundary, caller, EventKind::Write, &asks).await?;
    let mut states: Vec<Option<Subject>> = vec![None; records.len()];
    let mut rows: Vec<SubjectRow> = Vec::with_capacity(records.len());
    let mut places: Vec<usize> = Vec::with_capacity(records.len());
    let work: Vec<Work<'_, '_>> = records.iter().zip(&facts).zip(asks.iter().zip(receipts)).enumerate().collect();
    for chunk in work.chunks(CONCURRENCY) {
        let made = try_join_all(chunk.iter().map(
            |(_, ((record, (birth_date, adult_on, minor)), (ask, receipt)))| async move {
                let subject = &record.subject;
                let key = match boundary.custody().create_data_key(receipt).await {
                    Ok(key) => key,
                    // Erased in the region: the custodian makes no key for them again.
                    Err(KeyError::Erased) => return Ok(Err(Subject::Erased { log_index: receipt.index() })),
                    // Registered meanwhile (or a registration cut short): its key, against an access
                    // of its own.
                    Err(KeyError::DataKeyExists) => {
                        let fetch = decide_and_log(boundary, caller, EventKind::Write, ask).await?;
                        let gone = || ApiError::NotFound { what: "subject", id: subject.to_string() };
                        sealing::unwrap_key(boundary, &fetch, gone).await?
                    }
                    Err(e) => return Err(ApiError::internal(e)),
                };
                let attributes =
                    serde_json::to_vec(&Attributes { birth_date: birth_date.clone() }).map_err(ApiError::internal)?;
                let sealed =
                    serde_json::to_vec(&SubjectMetadata { adult_on: *adult_on }).map_err(ApiError::internal)?;
                let sealed = boundary.custody().seal_metadata(subject, &sealed).await.map_err(ApiError::internal)?;
                let row = SubjectRow {
                    subject_id: subject.clone(),
                    home_region: boundary.region().clone(),
                    attributes: key
                        .seal(&aad::subject(boundary.region(), subject), &attributes)
                        .map_err(ApiError::internal)?,
                    metadata: sealed,
                    created_at: OffsetDateTime::now_utc(),
                };
                Ok(Ok((row, *minor)))
            },
        ))
        .await?;
        for ((place, _), made) in chunk.iter().zip(made) {
            match made {
                Ok((row, minor)) => {
                    rows.push(row);
                    places.push(*place);
                    if let Some(state) = states.get_mut(*place) {
                        *state = Some(Subject::Registered { minor });
                    }
                }
                Err(erased) => {
                    if let Some(state) = states.get_mut(*place) {
                        *state = Some(erased);
                    }
                }
            }
        }
    }
    // Stored in one transaction; one registered meanwhile by another batch keeps its row (and
    // the same key).
    let stored = boundary.store().insert_subjects(&rows).await.map_err(ApiError::internal)?;
    for (place, stored) in places.into_iter().zip(stored) {
        if !stored
            && let Some(Some(Subject::Registered { minor })) = states.get(place).copied()
            && let Some(state) = states.get_mut(place)
        {
            *state = Some(Subject::Known { minor });
        }
    }
    Ok(states.into_iter().map(|s| s.unwrap_or(Subject::Known { minor: true })).collect())
}

/// Records through the write path up to the store: decided and logged together (their annexes
/// in one transaction, their entries made durable together), each sealed under the key the
/// custodian derives for its version against its own receipt.
async fn prepare(
    boundary: &Boundary,
    caller: &Caller,
    job: &str,
    rows: &[(&Incoming, Digest)],
    minors: &HashMap<&SubjectId, bool>,
) -> Result<Vec<(RecordRow, RepatriatedRow, DataKey)>, ApiError> {
    let version = 1;
    let ids: Vec<RecordId> = rows.iter().map(|_| RecordId::random()).collect();
    let asks: Vec<Ask<'_>> = rows
        .iter()
        .zip(&ids)
        .map(|((row, _), id)| Ask {
            action: Action::Repatriate,
            subject: &row.record.subject,
            record: Some((*id, &row.record.category)),
            version: Some(version),
            subject_minor: minors.get(&row.record.subject).copied().unwrap_or(true),
        })
        .collect();
    let receipts = decide_and_log_many(boundary, caller, EventKind::Write, &asks).await?;
    let mut prepared = Vec::with_capacity(rows.len());
    for chunk in rows.iter().zip(ids).zip(receipts).collect::<Vec<_>>().chunks(CONCURRENCY) {
        let keys = try_join_all(chunk.iter().map(|(((row, _), _), receipt)| {
            let subject = row.record.subject.to_string();
            sealing::unwrap_key(boundary, receipt, move || ApiError::NotFound { what: "subject", id: subject })
        }))
        .await?;
        for ((((row, digest), record_id), receipt), key) in chunk.iter().zip(keys) {
            let record = &row.record;
            let ciphertext = sealing::seal_record(boundary, &key, &record.subject, record_id, version, &record.fields)?;
            let stored = RecordRow {
                record_id: *record_id,
                subject_id: record.subject.clone(),
                category: record.category.clone(),
                home_region: boundary.region().clone(),
                version,
                ciphertext,
                created_at: OffsetDateTime::now_utc(),
                sealed_with: SealedWith::RecordKey,
            };
            let kept = RepatriatedRow {
                job: job.to_owned(),
                source_key: record.source_key.clone(),
                record_id: *record_id,
                digest: digest.to_hex(),
                log_index: receipt.index(),
                ordinal: row.ordinal,
            };
            prepared.push((stored, kept, key));
        }
    }
    Ok(prepared)
}

/// A row to verify: its source key and the digest of the source row as it is now.
#[derive(Debug)]
pub struct Check {
    /// The source key.
    pub source_key: String,
    /// The source row's digest now.
    pub digest: Digest,
}

/// What [`verify`] found for a row, in the signs of `rclone check --combined`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub enum VerifyStatus {
    /// The region's copy, read back and opened, has the source row's digest.
    #[serde(rename = "=")]
    Identical,
    /// It has not: the copy differs, or the source row changed since it was copied.
    #[serde(rename = "*")]
    Differs,
    /// The job did not bring this row home (or its subject was erased since).
    #[serde(rename = "+")]
    Missing,
    /// The region's copy could not be read back: it does not open (the store's copy was
    /// changed), or the custodian did not answer.
    #[serde(rename = "!")]
    Unreadable,
}

/// What [`verify`] found for one row.
#[derive(Debug)]
pub struct Verified {
    /// The source key.
    pub source_key: String,
    /// What it found.
    pub status: VerifyStatus,
    /// Whether the source row changed since the job copied it (its digest then is not its
    /// digest now), for a row that differs.
    pub source_changed: bool,
    /// The log entry of the read back, for a row read.
    pub log_index: Option<u64>,
}

/// Reads back and compares a batch of a job's rows (see the module's documentation). The
/// request is decided first as if on a record of `category` (the batch's first row's).
pub async fn verify(
    boundary: &Boundary,
    caller: &Caller,
    job: &str,
    category: &Category,
    checks: Vec<Check>,
) -> Result<(Vec<Verified>, Decision), ApiError> {
    check_job(job)?;
    if checks.is_empty() {
        return Err(ApiError::InvalidBody("a batch holds at least one record".to_owned()));
    }
    if !boundary.has_category(category) {
        return Err(ApiError::UnknownCategory { category: category.to_string(), known: boundary.category_names() });
    }
    let decision = gate(boundary, caller, job, category).await?;
    let mut verified: Vec<Verified> = Vec::with_capacity(checks.len());
    let mut checks = checks.into_iter().peekable();
    while checks.peek().is_some() {
        let chunk: Vec<Check> = checks.by_ref().take(CONCURRENCY).collect();
        verified.extend(try_join_all(chunk.into_iter().map(|check| verify_one(boundary, caller, job, check))).await?);
    }
    let differ = verified.iter().filter(|v| v.status != VerifyStatus::Identical).count();
    if differ > 0 {
        tracing::warn!(job, differ, "repatriation verification found rows that are not identical");
    }
    Ok((verified, decision))
}

async fn verify_one(boundary: &Boundary, caller: &Caller, job: &str, check: Check) -> Result<Verified, ApiError> {
    let missing = |check: Check| Verified {
        source_key: check.source_key,
        status: VerifyStatus::Missing,
        source_changed: false,
        log_index: None,
    };
    let Some(kept) = boundary.store().repatriated(job, &check.source_key).await.map_err(ApiError::internal)? else {
        return Ok(missing(check));
    };
    let Some((record, subject)) = metadata::find_record_and_subject(boundary, &kept.record_id).await? else {
        return Ok(missing(check));
    };
    // The caller's digest is compared with the one the job kept, never with what the region
    // holds: the answer tells whether the source row changed since it was copied and whether
    // the copy is intact, and is no oracle for guesses at a record's content.
    let source_changed = kept.digest != check.digest.to_hex();
    let differs = |check: Check, log_index| Verified {
        source_key: check.source_key,
        status: VerifyStatus::Differs,
        source_changed,
        log_index,
    };
    // Changed in the region since it came home (a later version): not the copy; nothing is
    // opened.
    if record.version != 1 {
        return Ok(differs(check, None));
    }
    let ask = Ask {
        action: Action::Repatriate,
        subject: &record.subject_id,
        record: Some((record.record_id, &record.category)),
        version: Some(record.version),
        subject_minor: metadata::subject_minor(boundary, &subject).await,
    };
    let receipt = decide_and_log(boundary, caller, EventKind::Access, &ask).await?;
    let gone = || ApiError::NotFound { what: "record", id: record.record_id.to_string() };
    let fields = match sealing::open_record(boundary, &receipt, &record, gone).await {
        Ok(fields) => fields,
        // Erased between the load and the read.
        Err(ApiError::NotFound { .. }) => return Ok(missing(check)),
        Err(ApiError::Internal(cause)) => {
            tracing::error!(job, record = %record.record_id, error = %crate::report::Chain(cause.as_ref()), "a repatriated record cannot be read back");
            return Ok(Verified {
                source_changed,
                source_key: check.source_key,
                status: VerifyStatus::Unreadable,
                log_index: Some(receipt.index()),
            });
        }
        Err(e) => return Err(e),
    };
    let held = record_digest(&SourceRecord {
        source_key: kept.source_key.clone(),
        subject: record.subject_id.clone(),
        home_region: record.home_region.clone(),
        birth_date: None,
        category: record.category.clone(),
        fields,
    });
    if held.to_hex() != kept.digest || source_changed {
        return Ok(differs(check, Some(receipt.index())));
    }
    Ok(Verified {
        source_changed,
        source_key: check.source_key,
        status: VerifyStatus::Identical,
        log_index: Some(receipt.index()),
    })
}

/// What the operator's run reports, for the receipt: the boundary signs it as reported, next to
/// what it computed itself.
#[derive(Debug)]
pub struct Reported {
    /// The source, as the run names it (a URL's password redacted, or a file and its SHA-256).
    pub source: String,
    /// The run's counts (its plan), a JSON object.
    pub plan: serde_json::Value,
    /// The purge's result, a JSON object, if the source was purged.
    pub purge: Option<serde_json::Value>,
}

/// A signed receipt.
#[derive(Debug)]
pub struct SignedReceipt {
    /// The manifest, a C2SP signed note under the log's key.
    pub note: String,
    /// The index of the log entry that holds the manifest's SHA-256.
    pub log_index: u64,
    /// That entry's bytes.
    pub entry: Vec<u8>,
    /// How many records the job brought home.
    pub records: u64,
    /// Their root.
    pub root: Digest,
    /// The decision that allowed it.
    pub decision: Decision,
}

/// The first line of a receipt's manifest: its format.
pub const RECEIPT_FORMAT: &str = "clover/repatriation-receipt/v1";

/// The longest reported source, in bytes.
const MAX_REPORTED_BYTES: usize = 64 * 1024;

/// Signs a job's receipt (see the module's documentation) and logs its SHA-256.
pub async fn receipt(
    boundary: &Boundary,
    caller: &Caller,
    job: &str,
    reported: Reported,
) -> Result<SignedReceipt, ApiError> {
    check_job(job)?;
    let one_line = |what: &str, text: &str| {
        if text.chars().any(|c| c.is_ascii_control()) || text.is_empty() || text.len() > MAX_REPORTED_BYTES {
            Err(ApiError::InvalidBody(format!("{what} is empty, too long, or holds a control character")))
        } else {
            Ok(())
        }
    };
    one_line("source", &reported.source)?;
    let plan = ascii_json(&reported.plan);
    let purge = reported.purge.as_ref().map(ascii_json);
    if !reported.plan.is_object() || reported.purge.as_ref().is_some_and(|p| !p.is_object()) {
        return Err(ApiError::InvalidBody("plan and purge are JSON objects".to_owned()));
    }
    // The plan and the purge are one line of ASCII (`ascii_json`); the body's limit bounds them.
    let Some(category) = boundary.config().categories.first().map(|c| c.name.clone()) else {
        return Err(ApiError::NotFound { what: "repatriation job", id: job.to_owned() });
    };
    let decision = gate(boundary, caller, job, &category).await?;

    let mut merkle = MerkleBuilder::new();
    let mut indexes = Vec::new();
    let mut after: Option<(u64, String)> = None;
    loop {
        let page = boundary
            .store()
            .repatriated_by(job, after.as_ref().map(|(o, k)| (*o, k.as_str())), 10_000)
            .await
            .map_err(ApiError::internal)?;
        let Some(last) = page.last() else { break };
        after = Some((last.ordinal, last.source_key.clone()));
        for row in &page {
            let digest =
                Digest::from_hex(&row.digest).ok_or_else(|| ApiError::internal(BadDigest(row.source_key.clone())))?;
            merkle.push(&digest);
            indexes.push(row.log_index);
        }
    }
    if merkle.size() == 0 {
        return Err(ApiError::NotFound { what: "repatriation job", id: job.to_owned() });
    }
    indexes.sort_unstable();
    let signed =
        OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).map_err(ApiError::internal)?;
    let text = format!(
        "{RECEIPT_FORMAT}\nregion {}\njob {job}\nrecords {}\nroot {}\nlog {}\nsigned {signed}\nreported-source {}\nreported-plan {plan}\nreported-purge {}\n",
        boundary.region(),
        merkle.size(),
        merkle.root(),
        ranges(&indexes),
        reported.source,
        purge.as_deref().unwrap_or("none"),
    );
    let note = boundary.sign_note(&text).map_err(ApiError::internal)?;
    let hash = Digest::of(note.as_bytes());
    let detail = format!("receipt sha256:{hash}: {} records brought home", merkle.size());
    let log_index = events::log_without_data(
        boundary,
        EventKind::Repatriation,
        Some(caller),
        "repatriation-receipt",
        Some(&decision),
        detail,
        Some(&format!("repatriation job {job}")),
    )
    .await?;
    let entry = boundary.log().entry(log_index).await.map_err(ApiError::internal)?;
    tracing::info!(job, records = merkle.size(), root = %merkle.root(), log_index, "repatriation receipt signed");
    Ok(SignedReceipt { note, log_index, entry, records: merkle.size(), root: merkle.root(), decision })
}

/// A JSON value on one line of ASCII: every other character escaped (`\\uXXXX`, as JSON allows),
/// so that a note's line holds no control character and no line break.
fn ascii_json(value: &serde_json::Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// A kept digest that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("the digest kept for source key {0:?} is not a SHA-256 in hex")]
struct BadDigest(String);

/// Sorted indexes as ranges: `3-5,9,12-13`.
pub fn ranges(sorted: &[u64]) -> String {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for &index in sorted {
        match spans.last_mut() {
            Some((_, end)) if index <= *end + 1 => *end = (*end).max(index),
            _ => spans.push((index, index)),
        }
    }
    let spans: Vec<String> =
        spans.into_iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
    spans.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_written_as_ranges() {
        assert_eq!(ranges(&[]), "");
        assert_eq!(ranges(&[7]), "7");
        assert_eq!(ranges(&[3, 4, 5, 9, 12, 13]), "3-5,9,12-13");
        assert_eq!(ranges(&[1, 1, 2]), "1-2");
    }

    #[test]
    fn reported_json_is_one_line_of_ascii() {
        let value = serde_json::json!({"a": "é\u{85}\u{7f}\n😀"});
        assert_eq!(ascii_json(&value), r#"{"a":"\u00e9\u0085\u007f\n\ud83d\ude00"}"#);
        let back: serde_json::Value = serde_json::from_str(&ascii_json(&value)).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn job_ids_are_checked() {
        for good in ["sg-2026-12", "a", "job_1.b"] {
            assert!(check_job(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "Job", "a/b", "a b", &"x".repeat(65), "é"] {
            assert!(check_job(bad).is_err(), "{bad}");
        }
    }
}
