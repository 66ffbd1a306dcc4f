//! A preservation order's holds, extended and released, and what the clock ends: gags (their
//! facts unsealed in the log) and holds whose period ran out.
//!
//! When a hold is released (by the legal team, or at its end) the erasures it held back are
//! carried out: each open request of a subject it named, of kind `erasure`, whose subject no
//! other hold keeps, is erased (decided by policy like any erasure: by the releasing member of
//! the legal team, or by the boundary at the region's first site when the clock ends the hold,
//! under the purpose `held-erasure`; logged, certified) and the request moved to `fulfilled`. A closure it held back is left
//! `open` for the privacy team (closing an account is more than erasing it).

use clover_model::Action;
use time::OffsetDateTime;

use crate::boundary::Boundary;
use crate::government::book::{self, GovernmentRequest};
use crate::pipeline::Caller;
use crate::problem::ApiError;
use crate::report::Chain;
use crate::subjects::holds::{Hold, hold_on};
use crate::subjects::requests::{self, RequestKind, RequestState};

/// The purpose under which a held erasure is carried out when its hold ends.
pub const HELD_ERASURE: &str = "held-erasure";

/// What is done to a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HoldChange {
    /// Extend it by `[government] hold_extension_days`.
    Extend,
    /// Release it now.
    Release,
}

/// Extends or releases the holds of request `id`, for `caller`.
pub async fn change(
    boundary: &Boundary,
    caller: &Caller,
    id: &str,
    change: HoldChange,
) -> Result<GovernmentRequest, ApiError> {
    let decision = book::gate(boundary, caller, id).await?;
    let (row, mut details) = book::load(boundary, id).await?;
    let Some(until) = details.hold_until.filter(|_| !details.hold_released) else {
        return Err(ApiError::Conflict(format!("request {id} holds nothing (no preservation order, or released)")));
    };
    match change {
        HoldChange::Extend => {
            let days = i64::from(boundary.config().government.hold_extension_days);
            let new_until = until.saturating_add(days * 86_400);
            details.hold_until = Some(new_until);
            details.hold_extensions += 1;
            let sealed = details.gagged(OffsetDateTime::now_utc().unix_timestamp());
            let mut facts = book::facts(id, "hold-extended", &details);
            facts.deadline = (!sealed).then_some(new_until);
            let index =
                book::append(boundary, Some(caller), Action::HandleGovernmentRequests, Some(&decision), facts, None)
                    .await?;
            let row = book::save(boundary, &row, &details, &row.state, index).await?;
            tracing::info!(request = %id, until = %book::at(new_until), "legal hold extended");
            Ok(GovernmentRequest::of(&row, &details))
        }
        HoldChange::Release => {
            let (row, details) = release(boundary, Some(caller), row, details).await?;
            Ok(GovernmentRequest::of(&row, &details))
        }
    }
}

/// Releases the holds of a request (by `caller`, or by the clock), logs it, and carries out
/// the erasures they held back.
async fn release(
    boundary: &Boundary,
    caller: Option<&Caller>,
    row: clover_store::GovernmentRequestRow,
    mut details: book::Details,
) -> Result<(clover_store::GovernmentRequestRow, book::Details), ApiError> {
    let released = boundary.store().release_legal_holds(&row.request_id).await.map_err(ApiError::internal)?;
    details.hold_released = true;
    let sealed = details.gagged(OffsetDateTime::now_utc().unix_timestamp());
    let mut facts = book::facts(&row.request_id, "hold-released", &details);
    facts.count = if sealed { 0 } else { released };
    let index = book::append(boundary, caller, Action::HandleGovernmentRequests, None, facts, None).await?;
    let row = book::save(boundary, &row, &details, &row.state, index).await?;
    tracing::info!(request = %row.request_id, released, by_clock = caller.is_none(), "legal holds released");
    complete_held_erasures(boundary, caller, &row.request_id, &details).await?;
    Ok((row, details))
}

/// Carries out the erasures the request's holds kept back, for subjects no other hold keeps.
async fn complete_held_erasures(
    boundary: &Boundary,
    caller: Option<&Caller>,
    reference: &str,
    details: &book::Details,
) -> Result<(), ApiError> {
    let open =
        boundary.store().subject_requests(Some(RequestState::Open.as_str())).await.map_err(ApiError::internal)?;
    let held_reference = format!("hold {reference}");
    for subject in details.subject_ids() {
        let hash = boundary.subject_hash(&subject);
        let Some(request) = open.iter().find(|r| {
            r.subject_hash == hash && r.kind == RequestKind::Erasure.as_str() && r.reference == held_reference
        }) else {
            continue;
        };
        if hold_on(boundary, &subject).await? != Hold::Free {
            continue;
        }
        // Carried out on the releasing person's behalf (or the boundary's, when the clock ends
        // the hold), under the purpose that says why.
        let Some(acting) = caller.cloned().or_else(|| boundary_caller(boundary)) else { continue };
        let acting = Caller { purpose: Some(HELD_ERASURE.to_owned()), justification: None, ..acting };
        match crate::subjects::erasure::erase(boundary, &acting, &subject, RequestKind::Erasure).await {
            Ok(erased) => {
                tracing::info!(
                    request = %request.request_id,
                    certificate = %erased.certificate.certificate_id,
                    records = erased.records,
                    "an erasure held back by a legal hold was carried out"
                );
                requests::advance(boundary, Some(&acting), request.clone(), RequestState::Fulfilled, false).await?;
            }
            Err(e) => {
                tracing::error!(request = %request.request_id, error = %Chain(&e), "cannot carry out an erasure a hold kept back; it stays open");
            }
        }
    }
    Ok(())
}

/// The boundary itself as a caller, for what the clock does (a hold's end): an employee of the
/// legal team of no one, at the region's first site.
fn boundary_caller(boundary: &Boundary) -> Option<Caller> {
    let site = boundary.config().sites.iter().find(|s| s.region == boundary.config().region)?;
    let principal = clover_model::Principal {
        id: clover_model::PrincipalId::new("clover-boundary").ok()?,
        kind: clover_model::PrincipalKind::Employee,
        home_region: boundary.config().region.clone(),
        site: site.name.clone(),
        roles: vec!["legal".to_owned()],
    };
    Some(Caller {
        principal,
        origin: clover_model::Origin::Site { site: site.name.clone(), region: site.region.clone() },
        purpose: None,
        justification: None,
        address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    })
}

/// Runs [`sweep`] every minute, for as long as the server runs.
pub fn sweep_every_minute(boundary: std::sync::Arc<Boundary>) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(60));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = sweep(&boundary).await {
                tracing::error!(error = %Chain(&e), "cannot end the gags and holds whose time has come");
            }
        }
    });
}

/// What the clock ends: each gag whose time has come is unsealed (an `unsealed` entry opens
/// the receipt's commitment: its facts and the salt), and each hold whose period ran out is
/// released. Run before the register is listed and the report computed, and every minute.
pub async fn sweep(boundary: &Boundary) -> Result<(), ApiError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    for row in boundary.store().government_requests().await.map_err(ApiError::internal)? {
        let mut details = book::parse(&row)?;
        let mut row = row;
        if let (Some(until), Some(salt), false) = (details.gag_until, details.seal_salt.clone(), details.unsealed)
            && until <= now
        {
            details.unsealed = true;
            let mut facts = book::facts(&row.request_id, "unsealed", &details);
            facts.count = u64::try_from(details.subjects.len()).unwrap_or(u64::MAX);
            facts.categories = details.categories.clone();
            facts.sealed = Some(salt);
            let index = book::append(boundary, None, Action::HandleGovernmentRequests, None, facts, None).await?;
            row = match book::save(boundary, &row, &details, &row.state, index).await {
                Ok(row) => row,
                // Another gateway unsealed it meanwhile.
                Err(ApiError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            };
            tracing::info!(request = %row.request_id, "a gag ended: the request's facts were unsealed");
        }
        if let Some(until) = details.hold_until
            && !details.hold_released
            && until <= now
        {
            match release(boundary, None, row, details).await {
                Ok(_) | Err(ApiError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
