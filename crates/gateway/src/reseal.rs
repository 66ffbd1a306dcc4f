//! The re-sealing migration: records that an earlier version of Clover sealed with their
//! subject's whole key are re-sealed, each under its own record version's key, in the
//! background, while reads go on (a read re-seals a record it meets first, `pipeline::sealing`).
//!
//! A key custodian starts it (`POST /v1/keys/reseal`, `clover keys reseal` with a progress
//! bar). Each record is re-sealed against a write of that record decided and logged for the
//! key custodian who started it, as any write is: the custodian opens the old ciphertext with the
//! subject's key, which it keeps, and seals it under the record version's key; the boundary
//! stores the result if the record has not changed meanwhile. Every batch ends with a log entry
//! that counts it, and the progress is in `GET /v1/keys`.

use std::sync::Arc;

use clover_event::EventKind;
use clover_keys::{KeyError, aad};
use clover_model::{Action, RecordId};

use crate::boundary::Boundary;
pub use crate::boundary::resealings::{Resealing, Resealings};
use crate::pipeline::{self, Ask, Caller};
use crate::report::Chain;

/// How many records one batch re-seals (and its log entry counts).
pub const BATCH: u32 = 100;

/// Why a re-sealing could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// One is under way.
    #[error("a re-sealing is under way; see GET /v1/keys")]
    Running,
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] clover_store::StoreError),
}

/// Starts re-sealing every record still sealed with its subject's key, for `caller` (a key
/// custodian, whose writes the re-seals are); returns how many there are.
pub async fn start(boundary: Arc<Boundary>, caller: Caller) -> Result<u64, StartError> {
    let total = count(&boundary).await?;
    if !boundary.resealings().start(total) {
        return Err(StartError::Running);
    }
    tokio::spawn(async move {
        let outcome = run(&boundary, &caller).await;
        if let Err(e) = &outcome {
            tracing::error!(error = %Chain(e.as_ref()), "re-sealing stopped");
        }
        boundary.resealings().update(|r| {
            r.done = true;
            r.error = outcome.err().map(|e| e.to_string());
        });
    });
    Ok(total)
}

/// How many records are sealed with their subject's key.
async fn count(boundary: &Boundary) -> Result<u64, clover_store::StoreError> {
    let mut total = 0;
    let mut after: Option<RecordId> = None;
    loop {
        let rows = boundary.store().records_sealed_with_subject_keys(after.as_ref(), 10_000).await?;
        let Some(last) = rows.last() else { return Ok(total) };
        after = Some(last.record_id);
        total += rows.len() as u64;
    }
}

async fn run(boundary: &Boundary, caller: &Caller) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut after: Option<RecordId> = None;
    loop {
        let rows = boundary.store().records_sealed_with_subject_keys(after.as_ref(), BATCH).await?;
        let Some(last) = rows.last() else { return Ok(()) };
        after = Some(last.record_id);
        let (mut resealed, mut failed) = (0u64, 0u64);
        for row in &rows {
            match reseal(boundary, caller, row).await {
                Ok(true) => resealed += 1,
                // Changed meanwhile (read and re-sealed, or erased): nothing to do.
                Ok(false) => {}
                Err(e) => {
                    failed += 1;
                    tracing::warn!(record = %row.record_id, error = %Chain(&e), "a record could not be re-sealed");
                }
            }
        }
        let batches = boundary.resealings().latest().map_or(0, |r| r.batches) + 1;
        let detail =
            format!("re-seal batch {batches}: {resealed} records re-sealed under their own keys, {failed} not");
        boundary.log().append(&crate::boundary::setup_event(EventKind::Key, "reseal-batch", detail)).await?;
        boundary.resealings().update(|r| {
            r.resealed += resealed;
            r.failed += failed;
            r.batches = batches;
        });
    }
}

/// Why one record was not re-sealed.
#[derive(Debug, thiserror::Error)]
enum ResealError {
    /// Its write was refused or could not be logged.
    #[error("{0}")]
    Refused(crate::problem::ApiError),
    /// The custodian did not re-seal it.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The store did not take it.
    #[error(transparent)]
    Store(#[from] clover_store::StoreError),
}

/// Re-seals one record against a logged write of it; whether it was stored (false: it changed
/// meanwhile).
async fn reseal(boundary: &Boundary, caller: &Caller, row: &clover_store::RecordRow) -> Result<bool, ResealError> {
    let subject = pipeline::metadata::find_subject(boundary, &row.subject_id).await.map_err(ResealError::Refused)?;
    // Erased meanwhile: nothing to re-seal.
    let Some(subject) = subject else { return Ok(false) };
    let ask = Ask {
        action: Action::Write,
        subject: &row.subject_id,
        record: Some((row.record_id, &row.category)),
        version: Some(row.version),
        subject_minor: pipeline::metadata::subject_minor(boundary, &subject).await,
    };
    let receipt =
        pipeline::decide_and_log(boundary, caller, EventKind::Write, &ask).await.map_err(ResealError::Refused)?;
    let binding = aad::record(boundary.region(), &row.subject_id, &row.record_id, row.version);
    let (key, resealed) = boundary.custody().reseal(&receipt, &row.ciphertext, &binding).await?;
    drop(key);
    Ok(boundary.store().reseal_record(&row.record_id, row.version, &row.ciphertext, &resealed).await?)
}
