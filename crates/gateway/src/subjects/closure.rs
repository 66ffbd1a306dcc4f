//! Closing an organisation's account: decided by policy, every record of the account erased
//! (crypto-shredded, with its erasure certificate), every pending transfer that would include
//! one of its records cancelled, the account id barred from registration for a configured time,
//! and a closure certificate signed that lists the counts per category, the log index of each
//! step and the erasure certificate, resting on a last entry that holds its SHA-256.
//!
//! After it, no API returns any of the account's data (its keys are gone), and its former
//! public log entries can no longer be linked to it (its tag key is gone and its annexes are
//! unlinked).

use std::collections::BTreeMap;

use clover_event::{EventKind, sha256_hex};
use clover_model::{Action, SubjectId};
use clover_policy::Decision;
use clover_tlog::note::Note;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::boundary::Boundary;
use crate::pipeline::events::log_without_data;
use crate::pipeline::{self, Ask, Caller};
use crate::problem::ApiError;
use crate::subjects::certificate::{self, CLOSURE_FORMAT, Certificate, random_hex, rfc3339, subject_commitment};
use crate::subjects::erasure::{self, counts_line};
use crate::subjects::holds::{Hold, hold_on};
use crate::subjects::requests::RequestKind;
use crate::transfers::{self, Asked, state};

/// A closed account.
#[derive(Debug)]
pub struct Closed {
    /// The records erased, by category.
    pub categories: BTreeMap<String, u64>,
    /// The transfers cancelled.
    pub transfers_cancelled: Vec<String>,
    /// The closure certificate (its erasure certificate inside).
    pub certificate: Certificate,
    /// The salt of both certificates' commitment to the account: only the caller gets it.
    pub salt: String,
    /// When the account id may be registered again.
    pub registrable_after: OffsetDateTime,
    /// The decision that allowed the closure.
    pub decision: Decision,
    /// The closure's last entry.
    pub log_index: u64,
}

/// A refusal of a closure for what it asks.
fn refused(
    status: axum::http::StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    log_index: Option<u64>,
) -> ApiError {
    ApiError::SubjectRefused { status, slug, title, detail, log_index }
}

/// The pending transfers that would send one of `account`'s records: cancelled, each with an
/// entry of its own (stage `cancelled`), before the account's keys are destroyed.
async fn cancel_transfers(
    boundary: &Boundary,
    caller: &Caller,
    account: &SubjectId,
    decision: &Decision,
) -> Result<(Vec<String>, Vec<u64>), ApiError> {
    let pending = boundary.store().transfers_in_state(state::READY).await.map_err(ApiError::internal)?;
    if pending.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    // The account's records, by category and creation time.
    let mut held: Vec<(String, OffsetDateTime)> = Vec::new();
    let mut after: Option<(String, String)> = None;
    loop {
        let page = boundary
            .store()
            .records_of_subject(account, after.as_ref().map(|(c, r)| (c.as_str(), r.as_str())), 1_000)
            .await
            .map_err(ApiError::internal)?;
        let Some(last) = page.last() else { break };
        after = Some((last.category.to_string(), last.record_id.to_string()));
        held.extend(page.iter().map(|r| (r.category.to_string(), r.created_at)));
    }
    let (mut ids, mut indexes) = (Vec::new(), Vec::new());
    for transfer in pending {
        let Ok(note) = Note::parse(&transfer.manifest) else { continue };
        let Ok(manifest) = serde_json::from_str::<clover_egress::Manifest>(note.text.trim_end()) else { continue };
        let parse = |t: &Option<String>| t.as_deref().and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
        let (since, until) = (parse(&manifest.since), parse(&manifest.until));
        let includes = held.iter().any(|(category, created)| {
            manifest.categories.contains(category)
                && since.is_none_or(|s| *created >= s)
                && until.is_none_or(|u| *created < u)
        });
        if !includes {
            continue;
        }
        if !boundary
            .store()
            .set_transfer_state(&transfer.transfer_id, state::READY, "cancelled", 0, None)
            .await
            .map_err(ApiError::internal)?
        {
            // Started meanwhile: its records are streamed under receipts checked record by
            // record, and the account's erasure below leaves them out as erased.
            continue;
        }
        let asked = Asked {
            destination: manifest.destination.clone(),
            purpose: manifest.purpose.clone(),
            categories: manifest.categories.clone(),
            since,
            until,
        };
        let facts = transfers::facts(boundary, &transfer.transfer_id, "cancelled", &asked);
        let entry = transfers::entry(boundary, caller, decision, facts);
        let index = transfers::append(boundary, caller, entry, &transfer.transfer_id).await?;
        tracing::info!(transfer = %transfer.transfer_id, log_index = index, "a pending transfer cancelled by an account's closure");
        ids.push(transfer.transfer_id);
        indexes.push(index);
    }
    Ok((ids, indexes))
}

/// Closes `account` for `caller`.
pub async fn close(boundary: &Boundary, caller: &Caller, account: &SubjectId) -> Result<Closed, ApiError> {
    let stored = pipeline::metadata::find_subject(boundary, account).await?;
    let minor = match &stored {
        Some(row) => pipeline::metadata::subject_minor(boundary, row).await,
        None => true,
    };
    let ask = Ask { action: Action::CloseAccount, subject: account, record: None, version: None, subject_minor: minor };
    let hash = boundary.subject_hash(account);
    if stored.is_none() {
        // Decided as if it existed: one who may not close learns nothing; one who may learns
        // that it is closed already, or that there is no such account.
        pipeline::refuse_if_denied(boundary, caller, EventKind::Erasure, &ask).await?;
        if let Some(until) = boundary.store().account_closed_until(&hash).await.map_err(ApiError::internal)? {
            let index = log_without_data(
                boundary,
                EventKind::Erasure,
                Some(caller),
                "close-account",
                None,
                "refused: the account is closed already".to_owned(),
                None,
            )
            .await?;
            return Err(refused(
                axum::http::StatusCode::CONFLICT,
                "account-closed",
                "Account closed",
                format!(
                    "account {:?} is closed already (its id may be registered again from {})",
                    account.as_str(),
                    rfc3339(until)
                ),
                Some(index),
            ));
        }
        return Err(ApiError::NotFound { what: "account", id: account.to_string() });
    }
    pipeline::refuse_if_denied(boundary, caller, EventKind::Erasure, &ask).await?;
    if let Hold::Held { reference } = hold_on(boundary, account).await? {
        return Err(erasure::held(boundary, caller, account, reference, RequestKind::Closure).await);
    }
    let receipt = pipeline::decide_and_log(boundary, caller, EventKind::Erasure, &ask).await?;
    let decision = receipt.permit().decision().clone();
    let decided = receipt.index();
    drop(receipt);
    let (cancelled, cancel_indexes) = cancel_transfers(boundary, caller, account, &decision).await?;
    // The bar first: no registration of the id can slip in between the erasure and it.
    let closed_at = OffsetDateTime::now_utc();
    let registrable_after = closed_at
        .checked_add(time::Duration::days(i64::from(boundary.config().subjects.closed_account_days)))
        .unwrap_or(time::OffsetDateTime::new_utc(time::Date::MAX, time::Time::MIDNIGHT));
    boundary.store().close_account(&hash, registrable_after).await.map_err(ApiError::internal)?;
    let erased = erasure::erase(boundary, caller, account, RequestKind::Closure).await?;

    let erasure_text = Note::parse(&erased.certificate.statement).map_err(ApiError::internal)?.text;
    let certificate_id = format!("cc-{}", random_hex(16)?);
    let join = |v: &[u64]| {
        if v.is_empty() { "none".to_owned() } else { v.iter().map(u64::to_string).collect::<Vec<_>>().join(";") }
    };
    let statement = format!(
        "{CLOSURE_FORMAT}\nregion {}\ncertificate {certificate_id}\naccount sha256:{}\nrecords {}\ncategories {}\n\
         transfers-cancelled {}\nsteps decided={decided},cancelled={},erased={}\nerasure-certificate {} sha256:{}\n\
         closed {}\nregistrable-after {}\n",
        boundary.region(),
        subject_commitment(&erased.salt, account.as_str()),
        erased.records,
        counts_line(&erased.categories),
        if cancelled.is_empty() { "none".to_owned() } else { cancelled.join(",") },
        join(&cancel_indexes),
        erased.log_index,
        erased.certificate.certificate_id,
        sha256_hex(erasure_text.as_bytes()),
        rfc3339(closed_at),
        rfc3339(registrable_after),
    );
    let closed = log_without_data(
        boundary,
        EventKind::Erasure,
        Some(caller),
        "close-account",
        Some(&decision),
        format!("closure certificate sha256:{}", sha256_hex(statement.as_bytes())),
        None,
    )
    .await?;
    let certificate =
        certificate::issue(boundary, "closure", certificate_id, &statement, closed, Some(erased.certificate)).await?;
    certificate::keep(boundary, &certificate).await?;
    tracing::info!(records = erased.records, transfers = cancelled.len(), log_index = closed, "account closed");
    Ok(Closed {
        categories: erased.categories,
        transfers_cancelled: cancelled,
        certificate,
        salt: erased.salt,
        registrable_after,
        decision,
        log_index: closed,
    })
}
