//! The access pipeline: one file per step, and the read and write paths made of them.
//!
//! 1. Caller (`caller.rs`): the bearer token, or a service's client certificate, gives the
//!    principal; 2. the client address gives the origin, from the configured sites. [`Caller`]
//!    is the extractor that runs both before any body is read.
//! 3. Metadata (`metadata.rs`): the subject's and the record's; nothing personal is in the
//!    clear there.
//! 4. Decision (`decision.rs`): what the boundary knows becomes a request of the policy pack
//!    ([`record_request`]), which allows (with a [`Permit`](clover_policy::Permit)) or denies.
//! 5. Log (`events.rs`): the decision is appended to the transparency log and made durable; an
//!    allowed access yields a [`Receipt`], a denial a 403 that carries its log index.
//! 6. Unwrap and 7. open or seal (`sealing.rs`): the custodian hands out the key of the one
//!    record version the receipt is for; the fields are decrypted (or encrypted), bound to
//!    region, subject, record and version.
//! 8. View (`views.rs`): a full view is the fields as opened; a pseudonymised one is made by
//!    the custodian (tokenised, masked or dropped by the category's rules), which opens the
//!    record itself: such a read gets no key.
//! 9. Answer: the handler (in [`crate::api`]) returns the data with the decision.
//!
//! A step uses only steps before it, never a later one, and none uses this file, which puts
//! them together: [`read()`], [`write()`] and [`decide_and_log`]. What is public here is what
//! the API's handlers, the benchmarks and `clover policy explain` call; the steps themselves
//! are the crate's own.

pub(crate) mod caller;
pub(crate) mod decision;
pub(crate) mod events;
pub(crate) mod metadata;
pub(crate) mod sealing;
pub(crate) mod views;

use clover_event::EventKind;
use clover_log::Receipt;
use clover_model::{Action, Category, Fields, RecordId, SubjectId, View};
use clover_store::RecordRow;

pub use self::caller::Caller;
pub use self::decision::{Ask, Circumstances, RecordFacts, record_request};
pub use self::metadata::SubjectMetadata;
pub use self::sealing::seal_record;
use crate::boundary::Boundary;
use crate::problem::ApiError;

/// Steps 4 and 5 together: decide `ask` for `caller`, then log the decision as an entry of
/// `kind`. Returns the receipt of an allowed request, which the custodian asks for before it
/// hands out the subject's data key; a denial is logged too, and answered as a 403.
pub async fn decide_and_log(
    boundary: &Boundary,
    caller: &Caller,
    kind: EventKind,
    ask: &Ask<'_>,
) -> Result<Receipt, ApiError> {
    let facts = decision::facts(boundary, caller, ask).await;
    let verdict = decision::decide(boundary, caller, ask, &facts);
    let touch = decision::touch(boundary, caller, ask, &facts, &verdict);
    events::log_counted(boundary, caller, kind, ask, verdict, facts.approval.as_deref(), touch).await
}

/// [`decide_and_log`] for many requests of one caller (a repatriation's batch): all are decided
/// first; one refused is logged and answered (403) and none is logged as allowed; otherwise all
/// are logged together and their receipts returned in order.
pub(crate) async fn decide_and_log_many(
    boundary: &Boundary,
    caller: &Caller,
    kind: EventKind,
    asks: &[Ask<'_>],
) -> Result<Vec<Receipt>, ApiError> {
    let mut permits = Vec::with_capacity(asks.len());
    for ask in asks {
        let facts = decision::facts(boundary, caller, ask).await;
        match decision::decide(boundary, caller, ask, &facts) {
            clover_policy::Verdict::Allowed(permit) => permits.push(permit),
            refused @ clover_policy::Verdict::Denied(_) => {
                return Err(match events::log(boundary, caller, kind, ask, refused, None).await {
                    Err(refusal) => refusal,
                    Ok(_) => ApiError::internal(std::io::Error::other("a refusal was logged as allowed")),
                });
            }
        }
    }
    events::log_allowed_many(boundary, caller, kind, asks, permits).await
}

/// Decides `ask` without acting on it: a refusal is logged and answered (403); an allowed
/// request logs nothing here, so that what the caller asks can be checked further (a legal
/// hold, say) before it is decided and logged for real with [`decide_and_log`].
pub(crate) async fn refuse_if_denied(
    boundary: &Boundary,
    caller: &Caller,
    kind: EventKind,
    ask: &Ask<'_>,
) -> Result<(), ApiError> {
    let facts = decision::facts(boundary, caller, ask).await;
    match decision::decide(boundary, caller, ask, &facts) {
        verdict @ clover_policy::Verdict::Denied(_) => {
            match events::log(boundary, caller, kind, ask, verdict, facts.approval.as_deref()).await {
                Err(refused) => Err(refused),
                Ok(_) => Err(ApiError::internal(std::io::Error::other("a refusal was logged as allowed"))),
            }
        }
        clover_policy::Verdict::Allowed(_) => Ok(()),
    }
}

/// For a subject that does not exist: decides `ask` as if they did (with what is unknown taken
/// as the stricter: a minor). A caller the policy refuses gets the same logged refusal as for a
/// subject who exists, so that they learn nothing of existence; one it allows learns that the
/// subject does not exist (`missing`), and nothing is logged.
pub(crate) async fn refuse_or_missing(
    boundary: &Boundary,
    caller: &Caller,
    kind: EventKind,
    ask: &Ask<'_>,
    missing: ApiError,
) -> ApiError {
    let facts = decision::facts(boundary, caller, ask).await;
    match decision::decide(boundary, caller, ask, &facts) {
        verdict @ clover_policy::Verdict::Denied(_) => {
            match events::log(boundary, caller, kind, ask, verdict, facts.approval.as_deref()).await {
                Err(refused) => refused,
                Ok(_) => missing,
            }
        }
        clover_policy::Verdict::Allowed(_) => missing,
    }
}

/// For a record that does not exist: decides the read as if it did, of the first category that
/// is not sensitive (what the caller could most likely read), of an adult's data. A caller the
/// policy refuses gets a logged refusal like one for a record that exists; one it allows learns
/// that the record does not exist, and nothing is logged.
async fn refuse_or_missing_record(boundary: &Boundary, caller: &Caller, record: &RecordId) -> ApiError {
    let missing = ApiError::NotFound { what: "record", id: record.to_string() };
    let config = boundary.config();
    let Some(category) = config
        .categories
        .iter()
        .find(|c| c.sensitivity != crate::config::Sensitivity::Sensitive)
        .or_else(|| config.categories.first())
    else {
        return missing;
    };
    let circumstances = Circumstances {
        purpose: caller.purpose.clone(),
        has_justification: caller.justification.is_some(),
        approved: false,
        subjects_touched: 1,
        destination: None,
    };
    let facts = RecordFacts { id: record.to_string(), category: category.name.clone(), subject_minor: false };
    let request = record_request(config, &caller.principal, &caller.origin, Action::Read, &facts, &circumstances);
    let decision = boundary.decide(&request);
    if decision.effect() == "allow" {
        return missing;
    }
    events::log_refused_read_of_nothing(boundary, caller, &record.to_string(), category.name.as_str(), decision).await
}

/// The whole write path of a new record: load the subject, decide, log, get the data key,
/// encrypt, store. Returns the stored row and the log receipt.
pub async fn write(
    boundary: &Boundary,
    caller: &Caller,
    subject_id: &SubjectId,
    category: &Category,
    fields: &Fields,
) -> Result<(RecordRow, Receipt), ApiError> {
    let record_id = RecordId::random();
    let Some(subject) = metadata::find_subject(boundary, subject_id).await? else {
        let ask = Ask {
            action: Action::Write,
            subject: subject_id,
            record: Some((record_id, category)),
            version: Some(1),
            subject_minor: true,
        };
        let missing = ApiError::NotFound { what: "subject", id: subject_id.to_string() };
        return Err(refuse_or_missing(boundary, caller, EventKind::Write, &ask, missing).await);
    };
    let ask = Ask {
        action: Action::Write,
        subject: subject_id,
        record: Some((record_id, category)),
        version: Some(1),
        subject_minor: metadata::subject_minor(boundary, &subject).await,
    };
    let receipt = decide_and_log(boundary, caller, EventKind::Write, &ask).await?;
    let key =
        sealing::unwrap_key(boundary, &receipt, || ApiError::NotFound { what: "subject", id: subject_id.to_string() })
            .await?;
    let version = 1;
    let row = RecordRow {
        record_id,
        subject_id: subject_id.clone(),
        category: category.clone(),
        home_region: boundary.region().clone(),
        version,
        ciphertext: seal_record(boundary, &key, subject_id, &record_id, version, fields)?,
        created_at: time::OffsetDateTime::now_utc(),
        sealed_with: clover_store::SealedWith::RecordKey,
    };
    drop(key);
    boundary.insert_record(row.clone()).await.map_err(|e| match e {
        // Erased between the load and the write: nothing was stored.
        clover_store::StoreError::NoSuchSubject(id) => ApiError::NotFound { what: "subject", id: id.to_string() },
        other => ApiError::internal(other),
    })?;
    Ok((row, receipt))
}

/// A record as the permit lets it be seen: its fields in the view granted, and the ids it is
/// answered under (in the clear in a full view; in a pseudonymised one, the custodian's tokens,
/// stable within the purpose and the caller's region and unlinkable across them, never the ids:
/// in the clear next to tokenised fields they would let the receiving side re-identify the
/// subject and link every transfer).
#[derive(Debug)]
pub struct Viewed {
    /// The fields.
    pub fields: Fields,
    /// The record's id, or its token.
    pub record_id: String,
    /// The subject's id, or their token.
    pub subject_id: String,
}

/// The whole read path: load, decide, log, unwrap, decrypt, view. Returns the record's
/// metadata, the record as the view granted shows it, and the log receipt.
pub async fn read(
    boundary: &Boundary,
    caller: &Caller,
    record_id: &RecordId,
) -> Result<(RecordRow, Viewed, Receipt), ApiError> {
    let Some((record, subject)) = metadata::find_record_and_subject(boundary, record_id).await? else {
        return Err(refuse_or_missing_record(boundary, caller, record_id).await);
    };
    let ask = Ask {
        action: Action::Read,
        subject: &record.subject_id,
        record: Some((*record_id, &record.category)),
        version: Some(record.version),
        subject_minor: metadata::subject_minor(boundary, &subject).await,
    };
    let receipt = decide_and_log(boundary, caller, EventKind::Access, &ask).await?;
    let gone = || ApiError::NotFound { what: "record", id: record_id.to_string() };
    let viewed = match receipt.permit().view() {
        View::Full => Viewed {
            fields: sealing::open_record(boundary, &receipt, &record, gone).await?,
            record_id: record.record_id.to_string(),
            subject_id: record.subject_id.to_string(),
        },
        View::Pseudonymised => {
            let view = views::pseudonymised(boundary, &receipt, &record, gone).await?;
            Viewed { fields: view.fields, record_id: view.record, subject_id: view.subject }
        }
    };
    Ok((record, viewed, receipt))
}
