//! Rows to domain types, the same for every backend: each backend's row type says how to read
//! a column as text, bytes or an integer ([`Columns`]); the parsers here do the rest.

use std::str::FromStr;

use clover_model::PrincipalId;
use time::OffsetDateTime;

use crate::{
    ApprovalRow, CertificateRow, GovernmentRequestRow, RecordRow, SealedWith, StoreError, SubjectRequestRow,
    SubjectRow, TransferRow,
};

pub(crate) const SUBJECT_COLUMNS: &str = "subject_id, home_region, attributes, metadata, created_at";
pub(crate) const RECORD_COLUMNS: &str =
    "record_id, subject_id, category, home_region, version, ciphertext, created_at, sealed_with";
pub(crate) const APPROVAL_COLUMNS: &str = "approval_id, requester, subjects, categories, purpose, requested_at, expires_at, approver, granted_at, \
     scope_salt, grant_index";

pub(crate) fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |cause| StoreError::Database { operation, cause }
}

pub(crate) fn corrupt<E: std::error::Error + Send + Sync + 'static>(
    what: &'static str,
) -> impl FnOnce(E) -> StoreError {
    move |source| StoreError::Corrupt { what, source: Box::new(source) }
}

pub(crate) fn timestamp(seconds: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp(seconds).map_err(corrupt("created_at"))
}

pub(crate) fn parse<T: FromStr>(what: &'static str, text: String) -> Result<T, StoreError>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    text.parse().map_err(corrupt(what))
}

/// A row's columns by name, as the few types Clover stores.
pub(crate) trait Columns {
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    fn optional_text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    fn bytes(&self, column: &str) -> Result<Vec<u8>, sqlx::Error>;
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    fn optional_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
}

macro_rules! columns {
    ($row:ty) => {
        impl crate::rows::Columns for $row {
            fn text(&self, column: &str) -> Result<String, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn optional_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn bytes(&self, column: &str) -> Result<Vec<u8>, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
            fn optional_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
                sqlx::Row::try_get(self, column)
            }
        }
    };
}
pub(crate) use columns;

pub(crate) fn subject_row(row: &impl Columns) -> Result<SubjectRow, StoreError> {
    let get = || db("reading a subject");
    Ok(SubjectRow {
        subject_id: parse("subject_id", row.text("subject_id").map_err(get())?)?,
        home_region: parse("home_region", row.text("home_region").map_err(get())?)?,
        attributes: row.bytes("attributes").map_err(get())?,
        metadata: row.bytes("metadata").map_err(get())?,
        created_at: timestamp(row.int("created_at").map_err(get())?)?,
    })
}

pub(crate) fn record_row(row: &impl Columns) -> Result<RecordRow, StoreError> {
    let get = || db("reading a record");
    Ok(RecordRow {
        record_id: parse("record_id", row.text("record_id").map_err(get())?)?,
        subject_id: parse("subject_id", row.text("subject_id").map_err(get())?)?,
        category: parse("category", row.text("category").map_err(get())?)?,
        home_region: parse("home_region", row.text("home_region").map_err(get())?)?,
        version: u32::try_from(row.int("version").map_err(get())?).map_err(corrupt("version"))?,
        ciphertext: row.bytes("ciphertext").map_err(get())?,
        created_at: timestamp(row.int("created_at").map_err(get())?)?,
        sealed_with: SealedWith::from_column(row.int("sealed_with").map_err(get())?),
    })
}

/// The record and its subject, in one query (the placeholder for the record id at the end).
pub(crate) const RECORD_WITH_SUBJECT: &str = "SELECT r.record_id, r.subject_id, r.category, r.home_region, \
     r.version, r.ciphertext, r.created_at, r.sealed_with, s.home_region AS subject_home_region, s.attributes, s.metadata, \
     s.created_at AS subject_created_at FROM records r JOIN subjects s ON s.subject_id = r.subject_id \
     WHERE r.record_id = ";

/// The records a transfer selects, with their subjects' metadata (the conditions follow `WHERE`).
pub(crate) const TRANSFER_SELECT: &str = "SELECT r.record_id, r.subject_id, r.category, r.home_region, \
     r.version, r.ciphertext, r.created_at, r.sealed_with, s.metadata \
     FROM records r JOIN subjects s ON s.subject_id = r.subject_id WHERE";

/// The columns a transfer is read from, in [`transfer_row`]'s order.
pub(crate) const TRANSFER_COLUMNS: &str =
    "transfer_id, principal, manifest, state, sent, sha256, log_index, created_at, classes";

pub(crate) fn transfer_row(row: &impl Columns) -> Result<TransferRow, StoreError> {
    let get = || db("reading a transfer");
    Ok(TransferRow {
        transfer_id: row.text("transfer_id").map_err(get())?,
        principal: row.text("principal").map_err(get())?,
        manifest: row.text("manifest").map_err(get())?,
        state: row.text("state").map_err(get())?,
        sent: u64::try_from(row.int("sent").map_err(get())?).map_err(corrupt("sent"))?,
        sha256: row.optional_text("sha256").map_err(get())?,
        log_index: u64::try_from(row.int("log_index").map_err(get())?).map_err(corrupt("log_index"))?,
        created_at: timestamp(row.int("created_at").map_err(get())?)?,
        classes: row.bytes("classes").map_err(get())?,
    })
}

pub(crate) fn record_with_subject_row(row: &impl Columns) -> Result<(RecordRow, SubjectRow), StoreError> {
    let record = record_row(row)?;
    let get = || db("reading a subject");
    let subject = SubjectRow {
        subject_id: record.subject_id.clone(),
        home_region: parse("home_region", row.text("subject_home_region").map_err(get())?)?,
        attributes: row.bytes("attributes").map_err(get())?,
        metadata: row.bytes("metadata").map_err(get())?,
        created_at: timestamp(row.int("subject_created_at").map_err(get())?)?,
    };
    Ok((record, subject))
}

/// The places (0-based, in subject order) of the subjects that cut `subjects` subjects into
/// `parts` runs of about as many each ([`crate::Store::subject_splits`]): each above 0 (no run
/// is empty) and each once.
pub(crate) fn split_offsets(subjects: i64, parts: u32) -> Vec<i64> {
    let mut offsets: Vec<i64> = (1..i64::from(parts)).map(|part| subjects * part / i64::from(parts)).collect();
    offsets.retain(|at| *at > 0);
    offsets.dedup();
    offsets
}

/// A record and its subject's sealed metadata, from [`TRANSFER_SELECT`].
pub(crate) fn record_with_metadata_row(row: &impl Columns) -> Result<(RecordRow, Vec<u8>), StoreError> {
    let record = record_row(row)?;
    let metadata = row.bytes("metadata").map_err(db("reading a subject"))?;
    Ok((record, metadata))
}

pub(crate) fn approval_row(row: &impl Columns) -> Result<ApprovalRow, StoreError> {
    let get = || db("reading an approval");
    let list = |what: &'static str, text: String| -> Result<Vec<String>, StoreError> {
        serde_json::from_str(&text).map_err(corrupt(what))
    };
    let subjects = list("subjects", row.text("subjects").map_err(get())?)?;
    let categories = list("categories", row.text("categories").map_err(get())?)?;
    Ok(ApprovalRow {
        approval_id: row.text("approval_id").map_err(get())?,
        requester: parse("requester", row.text("requester").map_err(get())?)?,
        subjects: subjects.into_iter().map(|s| parse("subjects", s)).collect::<Result<_, _>>()?,
        categories: categories.into_iter().map(|c| parse("categories", c)).collect::<Result<_, _>>()?,
        purpose: row.text("purpose").map_err(get())?,
        requested_at: timestamp(row.int("requested_at").map_err(get())?)?,
        expires_at: timestamp(row.int("expires_at").map_err(get())?)?,
        approver: row.optional_text("approver").map_err(get())?.map(|a| parse("approver", a)).transpose()?,
        granted_at: row.optional_int("granted_at").map_err(get())?.map(timestamp).transpose()?,
        scope_salt: row.text("scope_salt").map_err(get())?,
        grant_index: row
            .optional_int("grant_index")
            .map_err(get())?
            .map(|index| u64::try_from(index).map_err(corrupt("grant_index")))
            .transpose()?,
    })
}

/// The JSON list of ids an approval row keeps.
pub(crate) fn id_list<'a>(ids: impl Iterator<Item = &'a str>) -> String {
    serde_json::to_string(&ids.collect::<Vec<_>>()).unwrap_or_default()
}

/// What is spent after spending `spend` on top of `spent`, if it stays within `limit` (epsilon,
/// delta); `None` otherwise, or for a spend that is negative or not a number.
pub(crate) fn within_budget(spent: (f64, f64), spend: (f64, f64), limit: (f64, f64)) -> Option<(f64, f64)> {
    let fine = |x: f64| x.is_finite() && x >= 0.0;
    if !fine(spend.0) || !fine(spend.1) {
        return None;
    }
    let after = (spent.0 + spend.0, spent.1 + spend.1);
    // A hair of slack for the sum of decimals (0.1 + 0.2 within 0.3).
    (after.0 <= limit.0 + 1e-9 && after.1 <= limit.1 + 1e-15).then_some(after)
}

/// The columns a subject request is read from.
pub(crate) const SUBJECT_REQUEST_COLUMNS: &str =
    "request_id, kind, subject_hash, state, reference, received_at, deadline, extended, updated_at, log_index";

pub(crate) fn subject_request_row(row: &impl Columns) -> Result<SubjectRequestRow, StoreError> {
    let get = || db("reading a subject request");
    Ok(SubjectRequestRow {
        request_id: row.text("request_id").map_err(get())?,
        kind: row.text("kind").map_err(get())?,
        subject_hash: row.text("subject_hash").map_err(get())?,
        state: row.text("state").map_err(get())?,
        reference: row.text("reference").map_err(get())?,
        received_at: timestamp(row.int("received_at").map_err(get())?)?,
        deadline: timestamp(row.int("deadline").map_err(get())?)?,
        extended: row.int("extended").map_err(get())? != 0,
        updated_at: timestamp(row.int("updated_at").map_err(get())?)?,
        log_index: u64::try_from(row.int("log_index").map_err(get())?).map_err(corrupt("log_index"))?,
    })
}

/// The columns a government request is read from.
pub(crate) const GOVERNMENT_REQUEST_COLUMNS: &str = "request_id, state, details, received_at, updated_at, log_index";

pub(crate) fn government_request_row(row: &impl Columns) -> Result<GovernmentRequestRow, StoreError> {
    let get = || db("reading a government request");
    Ok(GovernmentRequestRow {
        request_id: row.text("request_id").map_err(get())?,
        state: row.text("state").map_err(get())?,
        details: row.text("details").map_err(get())?,
        received_at: timestamp(row.int("received_at").map_err(get())?)?,
        updated_at: timestamp(row.int("updated_at").map_err(get())?)?,
        log_index: u64::try_from(row.int("log_index").map_err(get())?).map_err(corrupt("log_index"))?,
    })
}

/// The columns a certificate is read from.
pub(crate) const CERTIFICATE_COLUMNS: &str = "certificate_id, kind, document, log_index, created_at";

pub(crate) fn certificate_row(row: &impl Columns) -> Result<CertificateRow, StoreError> {
    let get = || db("reading a certificate");
    Ok(CertificateRow {
        certificate_id: row.text("certificate_id").map_err(get())?,
        kind: row.text("kind").map_err(get())?,
        document: row.text("document").map_err(get())?,
        log_index: u64::try_from(row.int("log_index").map_err(get())?).map_err(corrupt("log_index"))?,
        created_at: timestamp(row.int("created_at").map_err(get())?)?,
    })
}

/// A read of a subject by a principal, counted in the principal's bulk-access window
/// ([`Store::record_touches`](crate::Store::record_touches)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touch {
    /// Who read.
    pub principal: PrincipalId,
    /// Whose data: the region's keyed hash of the subject.
    pub subject: String,
    /// When.
    pub at: OffsetDateTime,
    /// The start of the window as the read saw it: the principal's reads before it are forgotten.
    pub since: OffsetDateTime,
}

/// The earliest `since` of each principal in `touches`, in the order they first appear.
pub(crate) fn windows(touches: &[Touch]) -> Vec<(&PrincipalId, OffsetDateTime)> {
    let mut windows: Vec<(&PrincipalId, OffsetDateTime)> = Vec::new();
    for touch in touches {
        match windows.iter_mut().find(|(p, _)| *p == &touch.principal) {
            Some((_, since)) => *since = (*since).min(touch.since),
            None => windows.push((&touch.principal, touch.since)),
        }
    }
    windows
}

/// Each principal and subject of `touches` once, with the latest time it was read (Unix
/// seconds), in the order they first appear.
pub(crate) fn latest_reads(touches: &[Touch]) -> Vec<(&PrincipalId, &str, i64)> {
    let mut latest: Vec<(&PrincipalId, &str, i64)> = Vec::with_capacity(touches.len());
    let mut seen: std::collections::HashMap<(&PrincipalId, &str), usize> = std::collections::HashMap::new();
    for touch in touches {
        let at = touch.at.unix_timestamp();
        match seen.get(&(&touch.principal, touch.subject.as_str())) {
            Some(&i) => {
                if let Some(entry) = latest.get_mut(i) {
                    entry.2 = entry.2.max(at);
                }
            }
            None => {
                seen.insert((&touch.principal, touch.subject.as_str()), latest.len());
                latest.push((&touch.principal, touch.subject.as_str(), at));
            }
        }
    }
    latest
}
