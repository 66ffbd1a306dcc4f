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
//! 6. Unwrap and 7. open or seal (`sealing.rs`): the custodian unwraps the subject's data key
//!    against the receipt; the fields are decrypted (or encrypted), bound to region, subject,
//!    record and version.
//! 8. View (`views.rs`): the fields in the view the permit grants, pseudonymised, masked or
//!    dropped by the category's rules.
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
use clover_model::{Action, Category, Fields, RecordId, SubjectId};
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
    decision::count_read(boundary, caller, ask, &facts, &verdict).await;
    events::log(boundary, caller, kind, ask, verdict).await
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
    let subject = metadata::load_subject(boundary, subject_id).await?;
    let record_id = RecordId::random();
    let ask = Ask {
        action: Action::Write,
        subject: subject_id,
        record: Some((record_id, category)),
        subject_minor: metadata::subject_minor(boundary, &subject).await,
    };
    let receipt = decide_and_log(boundary, caller, EventKind::Write, &ask).await?;
    let key = sealing::unwrap_key(boundary, &receipt).await?;
    let version = 1;
    let row = RecordRow {
        record_id,
        subject_id: subject_id.clone(),
        category: category.clone(),
        home_region: boundary.region().clone(),
        version,
        ciphertext: seal_record(boundary, &key, subject_id, &record_id, version, fields)?,
        created_at: time::OffsetDateTime::now_utc(),
    };
    drop(key);
    boundary.store().insert_record(&row).await.map_err(|e| match e {
        // Erased between the load and the write: nothing was stored.
        clover_store::StoreError::NoSuchSubject(id) => ApiError::NotFound { what: "subject", id: id.to_string() },
        other => ApiError::internal(other),
    })?;
    Ok((row, receipt))
}

/// The whole read path: load, decide, log, unwrap, decrypt, view. Returns the record's
/// metadata, its fields in the view granted, and the log receipt.
pub async fn read(
    boundary: &Boundary,
    caller: &Caller,
    record_id: &RecordId,
) -> Result<(RecordRow, Fields, Receipt), ApiError> {
    let (record, subject) = metadata::load_record_and_subject(boundary, record_id).await?;
    let ask = Ask {
        action: Action::Read,
        subject: &record.subject_id,
        record: Some((*record_id, &record.category)),
        subject_minor: metadata::subject_minor(boundary, &subject).await,
    };
    let receipt = decide_and_log(boundary, caller, EventKind::Access, &ask).await?;
    let key = sealing::unwrap_key(boundary, &receipt).await?;
    let fields = sealing::open_record(boundary, &key, &record)?;
    drop(key);
    let fields = views::view(boundary, caller, &receipt, &record.category, fields).await?;
    Ok((record, fields, receipt))
}
