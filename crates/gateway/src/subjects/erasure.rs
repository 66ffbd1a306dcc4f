//! An erasure, with its certificate: decided by policy, held back (and tracked) when a legal
//! hold keeps the data, else the subject's data key and tag key destroyed, their rows deleted
//! and their annexes unlinked, then a certificate signed that says so.

use std::collections::BTreeMap;

use clover_event::EventKind;
use clover_model::{Action, SubjectId};
use clover_policy::Decision;
use clover_store::StoreError;

use crate::boundary::Boundary;
use crate::pipeline::{self, Ask, Caller};
use crate::problem::ApiError;
use crate::report::Chain;
use crate::subjects::certificate::{self, Certificate, ERASURE_FORMAT, random_hex, rfc3339, subject_commitment};
use crate::subjects::holds::{Hold, hold_on};
use crate::subjects::requests::{self, RequestKind, RequestState};

/// What an erasure did.
#[derive(Debug)]
pub struct Erased {
    /// How many records were destroyed.
    pub records: u64,
    /// The records by category, as counted just before.
    pub categories: BTreeMap<String, u64>,
    /// Whether the store's write-ahead log was truncated after (see `ErasureAnswer`).
    pub wal_truncated: bool,
    /// The decision that allowed it.
    pub decision: Decision,
    /// Its log entry.
    pub log_index: u64,
    /// Its certificate.
    pub certificate: Certificate,
    /// The salt of the certificate's subject commitment: only the caller gets it.
    pub salt: String,
}

/// The records of `subject` by category.
pub(crate) async fn categories_of(boundary: &Boundary, subject: &SubjectId) -> Result<BTreeMap<String, u64>, ApiError> {
    let mut counts = BTreeMap::new();
    let mut after: Option<(String, String)> = None;
    loop {
        let page = boundary
            .store()
            .records_of_subject(subject, after.as_ref().map(|(c, r)| (c.as_str(), r.as_str())), 1_000)
            .await
            .map_err(ApiError::internal)?;
        let Some(last) = page.last() else { break };
        after = Some((last.category.to_string(), last.record_id.to_string()));
        for row in &page {
            *counts.entry(row.category.to_string()).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

/// `a=1,b=2`.
pub(crate) fn counts_line(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts.iter().map(|(c, n)| format!("{c}={n}")).collect::<Vec<_>>().join(",")
}

/// The answer to an erasure a legal hold blocks: nothing is destroyed; the request is tracked
/// (`open`) and its receipt logged.
pub(crate) async fn held(
    boundary: &Boundary,
    caller: &Caller,
    subject: &SubjectId,
    reference: String,
    kind: RequestKind,
) -> ApiError {
    tracing::warn!(subject = %subject, hold = %reference, "an erasure is blocked by a legal hold; tracked as a request");
    let what = kind.as_str();
    // One open request per subject and kind: asking again does not add another.
    let hash = boundary.subject_hash(subject);
    let existing = match boundary.store().subject_requests(Some(RequestState::Open.as_str())).await {
        Ok(rows) => rows.into_iter().find(|r| r.subject_hash == hash && r.kind == what),
        Err(e) => return ApiError::internal(e),
    };
    let request = match existing {
        Some(request) => request,
        None => {
            match requests::open(boundary, caller, kind, subject, &format!("hold {reference}"), RequestState::Open)
                .await
            {
                Ok(request) => request,
                Err(e) => return e,
            }
        }
    };
    // A data subject is not told of the hold (it may come with a gag): their request is received
    // and a person answers it. Staff see the hold's reference.
    let detail = if caller.principal.kind == clover_model::PrincipalKind::Subject {
        format!(
            "your {what} was received but cannot be carried out now: nothing was erased; it is tracked as request {} \
             and a person will answer it by {}",
            request.request_id,
            rfc3339(request.deadline)
        )
    } else {
        format!(
            "a legal hold (reference {reference:?}) keeps this subject's data: nothing was erased; the {what} is tracked \
             as request {} (deadline {})",
            request.request_id,
            rfc3339(request.deadline)
        )
    };
    ApiError::SubjectRefused {
        status: axum::http::StatusCode::CONFLICT,
        slug: "held",
        title: "Held",
        detail,
        log_index: Some(request.log_index),
    }
}

/// Erases `subject` for `caller`: decided (a caller the policy refuses learns nothing, not even
/// whether the subject exists), checked against legal holds, then destroyed and certified.
/// `kind` says what the erasure is part of, for a hold's tracked request.
pub async fn erase(
    boundary: &Boundary,
    caller: &Caller,
    subject_id: &SubjectId,
    kind: RequestKind,
) -> Result<Erased, ApiError> {
    let subject = pipeline::metadata::find_subject(boundary, subject_id).await?;
    // An erasure committed earlier but answered `erasure-unfinished` is decided and logged
    // again, as the erasure of a subject whose age is no longer known (a minor), then finished.
    let unfinished = subject.is_none() && boundary.store().erasure_unfinished(subject_id);
    let minor = match &subject {
        Some(subject) => pipeline::metadata::subject_minor(boundary, subject).await,
        None => true,
    };
    let ask = Ask { action: Action::Erase, subject: subject_id, record: None, version: None, subject_minor: minor };
    if subject.is_none() && !unfinished {
        // Decided as if they were registered: one who may not erase learns nothing.
        let missing = ApiError::NotFound { what: "subject", id: subject_id.to_string() };
        return Err(pipeline::refuse_or_missing(boundary, caller, EventKind::Erasure, &ask, missing).await);
    }
    if !unfinished {
        // Policy first (a caller who may not erase learns nothing of holds), then the hold.
        pipeline::refuse_if_denied(boundary, caller, EventKind::Erasure, &ask).await?;
        if let Hold::Held { reference } = hold_on(boundary, subject_id).await? {
            return Err(held(boundary, caller, subject_id, reference, kind).await);
        }
    }
    let categories = categories_of(boundary, subject_id).await?;
    let receipt = pipeline::decide_and_log(boundary, caller, EventKind::Erasure, &ask).await?;
    let mut key_destroyed = unfinished;
    if !unfinished {
        // The key first: once it is gone, every copy of the subject's ciphertext is unreadable,
        // whatever happens to the rows below. (An unfinished erasure destroyed it already.)
        key_destroyed = boundary.custody().destroy_data_key(&receipt).await.map_err(ApiError::internal)?;
    }
    let erasure = match boundary.store().erase_subject(subject_id).await {
        Ok(Some(erasure)) => erasure,
        Ok(None) => return Err(ApiError::NotFound { what: "subject", id: subject_id.to_string() }),
        Err(e @ StoreError::OldCopiesRemain { .. }) => {
            tracing::error!(
                subject = %subject_id,
                log_index = receipt.index(),
                error = %Chain(&e),
                "erasure committed but not finished: its old rows remain in the write-ahead log"
            );
            return Err(ApiError::ErasureUnfinished { subject: subject_id.to_string(), log_index: receipt.index() });
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    tracing::info!(
        subject = %subject_id,
        records = erasure.records,
        annexes = erasure.annexes,
        wal_truncated = erasure.wal_truncated,
        log_index = receipt.index(),
        "subject erased"
    );
    let salt = random_hex(32)?;
    let certificate_id = format!("ec-{}", random_hex(16)?);
    let statement = format!(
        "{ERASURE_FORMAT}\nregion {}\ncertificate {certificate_id}\nsubject sha256:{}\nrecords {}\ncategories {}\n\
         data-key {}\ntag-key destroyed\nannexes-unlinked {}\nerased {}\nlog {}\n",
        boundary.region(),
        subject_commitment(&salt, subject_id.as_str()),
        erasure.records,
        counts_line(&categories),
        if key_destroyed { "destroyed" } else { "none-held" },
        erasure.annexes,
        rfc3339(time::OffsetDateTime::now_utc()),
        receipt.index(),
    );
    let certificate =
        certificate::issue(boundary, "erasure", certificate_id, &statement, receipt.index(), None).await?;
    certificate::keep(boundary, &certificate).await?;
    Ok(Erased {
        records: erasure.records,
        categories,
        wal_truncated: erasure.wal_truncated,
        decision: receipt.permit().decision().clone(),
        log_index: receipt.index(),
        certificate,
        salt,
    })
}
