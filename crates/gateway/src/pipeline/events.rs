//! Step 5: the log entry. Every decision is appended to the transparency log and made durable
//! before anything is unwrapped or decrypted: an allowed access yields the [`Receipt`] the
//! custodian asks for, a denial a 403 that carries its log index. Entries hold no personal
//! data: the subject appears only as a keyed hash.

use clover_event::{EVENT_VERSION, Event, EventDecision, EventKind};
use clover_log::Receipt;
use clover_model::Origin;
use clover_policy::{Outcome, Verdict};
use tracing::instrument;

use crate::boundary::Boundary;
use crate::pipeline::caller::Caller;
use crate::pipeline::decision::{Ask, Facts};
use crate::problem::ApiError;

/// A log entry about no subject's data: a decision on an approval or on the keys, or the
/// boundary's own doing (`caller` none).
pub(crate) fn event_without_data(
    kind: EventKind,
    caller: Option<&Caller>,
    action: &str,
    decision: Option<&clover_policy::Decision>,
    detail: String,
) -> Event {
    Event {
        v: EVENT_VERSION,
        kind,
        time: time::OffsetDateTime::now_utc().unix_timestamp(),
        principal: caller.map(Caller::event_principal),
        origin: caller.map(Caller::event_origin),
        action: Some(action.to_owned()),
        subject: None,
        record: None,
        category: None,
        decision: decision.map(|d| EventDecision {
            effect: d.effect().to_owned(),
            view: None,
            policies: d.policies.clone(),
        }),
        purpose: caller.and_then(|c| c.purpose.clone()),
        justification: caller.and_then(|c| c.justification.clone()),
        detail: Some(detail),
    }
}

/// The log entry of a decision on an access, a write or an erasure.
fn event(caller: &Caller, kind: EventKind, ask: &Ask<'_>, subject_hash: &str, verdict: &Verdict) -> Event {
    let decision = verdict.decision();
    Event {
        v: EVENT_VERSION,
        kind,
        time: time::OffsetDateTime::now_utc().unix_timestamp(),
        principal: Some(caller.event_principal()),
        origin: Some(caller.event_origin()),
        action: Some(ask.action.to_string()),
        subject: Some(subject_hash.to_owned()),
        record: ask.record.map(|(id, _)| id.to_string()),
        category: ask.record.map(|(_, category)| category.to_string()),
        decision: Some(EventDecision {
            effect: decision.effect().to_owned(),
            view: match decision.outcome {
                Outcome::Allow(view) => serde_json::to_value(view).ok().and_then(|v| v.as_str().map(str::to_owned)),
                Outcome::Deny | Outcome::ApprovalRequired => None,
            },
            policies: decision.policies.clone(),
        }),
        purpose: caller.purpose.clone(),
        justification: caller.justification.clone(),
        detail: None,
    }
}

/// Appends the decision to the log and waits until it is durable. An allowed request gets the
/// receipt the custodian asks for; a refused one a 403 carrying its log index.
#[instrument(name = "log", skip_all, fields(index))]
pub(crate) async fn log(
    boundary: &Boundary,
    caller: &Caller,
    kind: EventKind,
    ask: &Ask<'_>,
    facts: &Facts,
    verdict: Verdict,
) -> Result<Receipt, ApiError> {
    let entry = event(caller, kind, ask, &facts.subject_hash, &verdict);
    match verdict {
        Verdict::Allowed(permit) => {
            let receipt = boundary.log().append_permitted(&entry, permit).await.map_err(ApiError::LogUnavailable)?;
            tracing::Span::current().record("index", receipt.index());
            Ok(receipt)
        }
        Verdict::Denied(mut decision) => {
            let log_index = boundary.log().append(&entry).await.map_err(ApiError::LogUnavailable)?;
            tracing::Span::current().record("index", log_index);
            let origin = match &caller.origin {
                Origin::Site { site, region } => format!("from {site} (region {:?})", region.as_str()),
                Origin::Unknown => "from an address of no configured site".to_owned(),
            };
            decision.reason = format!(
                "{} by {} of region {:?} {origin}: {}",
                ask.action,
                caller.principal.id,
                caller.principal.home_region.as_str(),
                decision.reason
            );
            Err(ApiError::Forbidden { decision, log_index })
        }
    }
}
