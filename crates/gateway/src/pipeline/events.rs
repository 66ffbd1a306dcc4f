//! Step 5: the log entry. Every decision is appended to the transparency log and made durable
//! before anything is unwrapped or decrypted: an allowed access yields the [`Receipt`] the
//! custodian asks for, a denial a 403 that carries its log index. Entries hold no personal
//! data (format 2, `boundary/entries.rs`): the caller appears as a keyed pseudonym, the subject
//! as a tag that no two entries share, and who, which record, which subject and why are in the
//! entry's private annex, which the region keeps. An access decided with an approval names the
//! approval in its annex too (which the entry commits to): the region can tell which reads each
//! approval allowed, and no approval lifts a rule without a trace.

use clover_event::{EVENT_VERSION, Event, EventDecision, EventKind, SubjectTag};
use clover_log::Receipt;
use clover_model::{Action, Origin};
use clover_policy::{Outcome, Verdict};
use tracing::instrument;

use crate::boundary::Boundary;
use crate::boundary::entries::annex;
use crate::pipeline::caller::Caller;
use crate::pipeline::decision::Ask;
use crate::problem::ApiError;

/// Logs an entry about no subject's data: a decision on an approval or on the keys, or the
/// boundary's own doing (`caller` none). What names someone (the caller, a requester) goes in
/// the annex: `note`. Returns the entry's index.
pub(crate) async fn log_without_data(
    boundary: &Boundary,
    kind: EventKind,
    caller: Option<&Caller>,
    action: &str,
    decision: Option<&clover_policy::Decision>,
    detail: String,
    note: Option<&str>,
) -> Result<u64, ApiError> {
    let event = Event {
        v: EVENT_VERSION,
        kind,
        time: time::OffsetDateTime::now_utc().unix_timestamp(),
        principal: caller.map(|c| boundary.public_principal(&c.principal)),
        origin: caller.map(Caller::event_origin),
        action: Some(action.to_owned()),
        subject: None,
        category: None,
        decision: decision.map(|d| EventDecision {
            effect: d.effect().to_owned(),
            view: None,
            policies: d.policies.clone(),
        }),
        purpose: caller.and_then(|c| c.purpose.clone()),
        annex: None,
        detail: Some(detail),
        transfer: None,
        government_request: None,
    };
    let annex = match caller {
        Some(caller) => Some(annex(Some(&caller.principal), caller.justification.as_deref(), note, None, None)?),
        None => None,
    };
    Ok(boundary.append_annexed(event, annex).await?)
}

/// The public entry of a decision on an access, a write or an erasure.
fn event(
    boundary: &Boundary,
    caller: &Caller,
    kind: EventKind,
    ask: &Ask<'_>,
    tag: SubjectTag,
    verdict: &Verdict,
) -> Event {
    let decision = verdict.decision();
    Event {
        v: EVENT_VERSION,
        kind,
        time: time::OffsetDateTime::now_utc().unix_timestamp(),
        principal: Some(boundary.public_principal(&caller.principal)),
        origin: Some(caller.event_origin()),
        action: Some(ask.action.to_string()),
        subject: Some(tag),
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
        annex: None,
        detail: None,
        transfer: remote_read(boundary, caller, ask, decision).map(Box::new),
        government_request: None,
    }
}

/// For a read from outside the region (a transfer to the caller's region, as the regulator
/// reads it): the transfer's public facts, with the destination configured for that region and
/// the purpose (none if none is), so that the transfer register counts it. `None` for any other
/// request.
fn remote_read(
    boundary: &Boundary,
    caller: &Caller,
    ask: &Ask<'_>,
    decision: &clover_policy::Decision,
) -> Option<clover_event::TransferFacts> {
    let Origin::Site { region, .. } = &caller.origin else { return None };
    if ask.action != Action::Read || region == boundary.region() {
        return None;
    }
    let destination = boundary.config().destination_for_read(region.as_str(), caller.purpose.as_deref());
    let allowed = matches!(decision.outcome, Outcome::Allow(_));
    Some(clover_event::TransferFacts {
        transfer_id: None,
        stage: if allowed { "remote-read" } else { "refused" }.to_owned(),
        destination: destination.map(|d| d.name.clone()),
        region: region.to_string(),
        legal_basis: destination.map(|d| d.legal_basis.to_string()),
        treatment: "pseudonymised-view".to_owned(),
        categories: ask.record.map(|(_, category)| vec![category.to_string()]).unwrap_or_default(),
        count: u64::from(allowed),
        suppressed: 0,
        k: None,
        epsilon: None,
        manifest: None,
        sha256: None,
    })
}

/// Appends the decision to the log and waits until it is durable. An allowed request gets the
/// receipt the custodian asks for; a refused one a 403 carrying its log index. `approval` is
/// the approval the decision counted (`Facts::approval`), named in the annex.
#[instrument(name = "log", skip_all, fields(index))]
pub(crate) async fn log(
    boundary: &Boundary,
    caller: &Caller,
    kind: EventKind,
    ask: &Ask<'_>,
    verdict: Verdict,
    approval: Option<&str>,
) -> Result<Receipt, ApiError> {
    log_counted(boundary, caller, kind, ask, verdict, approval, None).await
}

/// [`log`], with the read's count in the caller's bulk-access window (`touch`, for an allowed
/// read) kept in the same transaction as the annex.
pub(crate) async fn log_counted(
    boundary: &Boundary,
    caller: &Caller,
    kind: EventKind,
    ask: &Ask<'_>,
    verdict: Verdict,
    approval: Option<&str>,
    touch: Option<clover_store::Touch>,
) -> Result<Receipt, ApiError> {
    // An allowed access that the custodian will hand a key for is bound to the subject by the
    // tag: their tag key must exist (made here at their registration).
    let needs_key = matches!(ask.action, Action::Read | Action::Write | Action::Erase | Action::Repatriate);
    let tag = boundary.subject_tag(ask.subject, needs_key && matches!(verdict, Verdict::Allowed(_))).await?;
    let entry = event(boundary, caller, kind, ask, tag, &verdict);
    let record = ask.record.map(|(id, _)| id.to_string());
    let annex =
        annex(Some(&caller.principal), caller.justification.as_deref(), None, record.as_deref(), Some(ask.subject))?
            .with_version(ask.version)
            .with_approval(approval);
    match verdict {
        Verdict::Allowed(permit) => {
            let receipt = boundary.append_permitted_annexed(entry, annex, permit, touch).await?;
            tracing::Span::current().record("index", receipt.index());
            Ok(receipt)
        }
        Verdict::Denied(decision) => {
            limit(boundary, caller)?;
            let log_index = boundary.append_annexed(entry, Some(annex)).await?;
            tracing::Span::current().record("index", log_index);
            Err(refusal(caller, ask.action, decision, log_index))
        }
    }
}

/// [`log`] for many allowed requests of one caller: each gets its entry and its receipt, their
/// annexes kept in one transaction and the entries appended together.
pub(crate) async fn log_allowed_many(
    boundary: &Boundary,
    caller: &Caller,
    kind: EventKind,
    asks: &[Ask<'_>],
    permits: Vec<clover_policy::Permit>,
) -> Result<Vec<Receipt>, ApiError> {
    // Every request here is allowed and needs its subject's tag key (made if missing).
    let subjects: Vec<&clover_model::SubjectId> = asks.iter().map(|ask| ask.subject).collect();
    let tags = boundary.subject_tags(&subjects).await?;
    let mut items = Vec::with_capacity(asks.len());
    for ((ask, tag), permit) in asks.iter().zip(tags).zip(permits) {
        let verdict = Verdict::Allowed(permit);
        let entry = event(boundary, caller, kind, ask, tag, &verdict);
        let Verdict::Allowed(permit) = verdict else { unreachable!("made allowed above") };
        let record = ask.record.map(|(id, _)| id.to_string());
        let annex = annex(
            Some(&caller.principal),
            caller.justification.as_deref(),
            None,
            record.as_deref(),
            Some(ask.subject),
        )?
        .with_version(ask.version);
        items.push((entry, annex, permit));
    }
    Ok(boundary.append_permitted_annexed_many(items).await?)
}

/// Counts a refusal against the refusal limit: `Err(429)` when the caller, or their address, is
/// past it (the refusal is then not logged one by one; the window's summary entry counts it).
pub(crate) fn limit(boundary: &Boundary, caller: &Caller) -> Result<(), ApiError> {
    boundary.refusals().count(&caller.principal, &caller.origin, caller.address).map_err(|wait| {
        metrics::counter!(crate::metrics::REFUSALS_LIMITED).increment(1);
        ApiError::TooManyRefusals { retry_after: wait.as_secs().max(1) }
    })
}

/// Logs a summary entry for every window that ended with refusals past the limit, every
/// window's length, for as long as the boundary runs.
pub(crate) fn log_refusal_summaries(boundary: std::sync::Arc<Boundary>) {
    let every = boundary.refusals().window().max(std::time::Duration::from_secs(1));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            for summary in boundary.refusals().ended() {
                if let Err(e) = log_limited_refusals(&boundary, &summary).await {
                    tracing::error!(error = %crate::report::Chain(&e), "cannot log a summary of limited refusals");
                }
            }
        }
    });
}

/// Logs one summary entry for a window of the refusal limit that held refusals past it.
pub(crate) async fn log_limited_refusals(
    boundary: &Boundary,
    summary: &crate::refusals::Summary,
) -> Result<u64, crate::boundary::entries::AppendError> {
    let counted = match &summary.counted {
        crate::refusals::Counted::Principal(..) => "one principal",
        crate::refusals::Counted::Source(_) => "one source address",
    };
    // The address names a person's connection: in the annex, like the principal's id.
    let note = format!("last refused from source address {}", summary.address);
    let window = boundary.refusals().window().as_secs();
    let event = Event {
        v: EVENT_VERSION,
        kind: EventKind::Access,
        time: time::OffsetDateTime::now_utc().unix_timestamp(),
        principal: Some(boundary.public_principal(&summary.principal)),
        origin: Some(crate::pipeline::caller::event_origin(&summary.origin)),
        action: Some("refusals-limited".to_owned()),
        subject: None,
        category: None,
        decision: Some(EventDecision { effect: "deny".to_owned(), view: None, policies: Vec::new() }),
        purpose: None,
        annex: None,
        detail: Some(format!(
            "{} refusals of {counted} answered 429 rather than logged one by one in a window of {window} s",
            summary.limited
        )),
        transfer: None,
        government_request: None,
    };
    let annex = annex(Some(&summary.principal), None, Some(&note), None, None)?;
    boundary.append_annexed(event, Some(annex)).await
}

/// The 403 of a logged refusal, its reason saying who asked what from where.
pub(crate) fn refusal(
    caller: &Caller,
    action: Action,
    mut decision: clover_policy::Decision,
    log_index: u64,
) -> ApiError {
    let origin = match &caller.origin {
        Origin::Site { site, region } => format!("from {site} (region {:?})", region.as_str()),
        Origin::Unknown => "from an address of no configured site".to_owned(),
    };
    decision.reason = format!(
        "{action} by {} of region {:?} {origin}: {}",
        caller.principal.id,
        caller.principal.home_region.as_str(),
        decision.reason
    );
    ApiError::Forbidden { decision, log_index }
}

/// Logs the refusal of a read of a record that does not exist, decided as if it did
/// (`decision`): the entry reads like any refused read (a random subject tag, the category the
/// decision assumed), and its annex names the record id asked for. Returns the 403.
pub(crate) async fn log_refused_read_of_nothing(
    boundary: &Boundary,
    caller: &Caller,
    record: &str,
    category: &str,
    decision: clover_policy::Decision,
) -> ApiError {
    log_refused_as_if(boundary, caller, Action::Read, Some(record), None, category, decision).await
}

/// Logs the refusal of `action` decided as if on a record of `category` (`decision`): a read of
/// a record that does not exist, or a repatriation job's request refused before anything of the
/// job is looked at. The entry reads like any refused `action` (a random subject tag); its
/// annex names the record asked for, or `note`. Returns the 403.
pub(crate) async fn log_refused_as_if(
    boundary: &Boundary,
    caller: &Caller,
    action: Action,
    record: Option<&str>,
    note: Option<&str>,
    category: &str,
    decision: clover_policy::Decision,
) -> ApiError {
    let kind = match action {
        Action::Repatriate => EventKind::Write,
        _ => EventKind::Access,
    };
    if let Err(limited) = limit(boundary, caller) {
        return limited;
    }
    let appended = async {
        let entry = Event {
            v: EVENT_VERSION,
            kind,
            time: time::OffsetDateTime::now_utc().unix_timestamp(),
            principal: Some(boundary.public_principal(&caller.principal)),
            origin: Some(caller.event_origin()),
            action: Some(action.to_string()),
            subject: Some(SubjectTag::random().map_err(crate::boundary::entries::AppendError::Randomness)?),
            category: Some(category.to_owned()),
            decision: Some(EventDecision {
                effect: decision.effect().to_owned(),
                view: None,
                policies: decision.policies.clone(),
            }),
            purpose: caller.purpose.clone(),
            annex: None,
            detail: None,
            transfer: None,
            government_request: None,
        };
        let annex = annex(Some(&caller.principal), caller.justification.as_deref(), note, record, None)?;
        boundary.append_annexed(entry, Some(annex)).await
    };
    match appended.await {
        Ok(log_index) => refusal(caller, action, decision, log_index),
        Err(e) => e.into(),
    }
}
