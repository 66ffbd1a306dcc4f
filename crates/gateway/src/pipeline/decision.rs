//! Step 4: the decision. What the boundary knows about a request (who, from where, why, about
//! which subject and record, and what it works out itself: the window's count, an approval)
//! becomes a Cedar request of the policy pack, and the pack allows (with a
//! [`Permit`](clover_policy::Permit)) or denies.
//!
//! The request's context is computed here, from configuration and from what the boundary
//! resolved itself: whether the purpose is on the configured list and declared for the record's
//! category, whether the caller holds a role the purpose names (`[[purposes]] roles`) and one the
//! category names (`[[categories]] roles`), whether it may go out of the region pseudonymised,
//! how sensitive the category is, and (for a read past the threshold, or of a minor's sensitive
//! category) whether an approval covers the read.
//! `clover policy explain` builds its requests with the same functions.
//!
//! An approval is read from the store at decision time, and counts only if the log knows it:
//! its grant's entry, at the index the store keeps with it, must be the grant of that approval
//! with the digest of the scope (subjects, categories, purpose, requester, expiry) recomputed
//! from the row as stored now (`boundary/approvals.rs`). One inserted straight into the store,
//! or widened there after its grant, is not counted (the read then needs an approval as if it
//! had none), and is reported as an error naming it. The approval a decision counted is named in
//! the access's annex (`events.rs`), so that the region can tell which reads each one allowed.

use clover_model::{Action, Category, Origin, Principal, RecordId, SubjectId};
use clover_policy::Verdict;
use clover_policy::pack::{PackDestination, PackPrincipal, PackRequest, PackResource};
use tracing::instrument;

use crate::boundary::Boundary;
use crate::config::{Config, Sensitivity};
use crate::pipeline::caller::Caller;
use crate::report::Chain;

/// What a request asks, about which subject and record.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The action.
    pub action: Action,
    /// Whose data.
    pub subject: &'a SubjectId,
    /// The record and its category, for record reads and writes.
    pub record: Option<(RecordId, &'a Category)>,
    /// The record's version read or written: with the record, what the custodian derives the
    /// key for (the entry's annex names both).
    pub version: Option<u32>,
    /// Whether the subject is a minor (unknown counts as a minor).
    pub subject_minor: bool,
}

/// What the boundary works out about a request before deciding it.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    /// The subject's keyed hash, as the log and the window record it.
    pub(crate) subject_hash: String,
    /// Distinct subjects the caller read in the window, this one included (reads only).
    touched: i64,
    /// The id of the granted approval that covers the request, if one does (and the log knows
    /// its grant).
    pub(crate) approval: Option<String>,
}

/// The granted, unexpired approval of the caller that covers this read (its subject, its
/// category and the declared purpose) and whose grant the log holds for the scope the store
/// holds now: its id. Approvals that fail that check are not counted (and are reported).
async fn approval(boundary: &Boundary, caller: &Caller, ask: &Ask<'_>) -> Option<String> {
    let (Some((_, category)), Some(purpose)) = (ask.record, caller.purpose.as_deref()) else { return None };
    let approvals =
        match boundary.store().granted_approvals(&caller.principal.id, time::OffsetDateTime::now_utc()).await {
            Ok(approvals) => approvals,
            Err(e) => {
                tracing::error!(error = %Chain(&e), "cannot read approvals; treating the read as not approved");
                return None;
            }
        };
    let covering = approvals
        .iter()
        .filter(|a| a.purpose == purpose && a.subjects.contains(ask.subject) && a.categories.contains(category));
    for candidate in covering {
        if boundary.approval_is_logged(candidate).await {
            return Some(candidate.approval_id.clone());
        }
    }
    None
}

/// Works out the [`Facts`] of a request: the subject's hash once, the window's count, and (only
/// where it can matter: a read past the threshold, or of a minor's sensitive category) whether
/// an approval covers it.
pub(crate) async fn facts(boundary: &Boundary, caller: &Caller, ask: &Ask<'_>) -> Facts {
    let subject_hash = boundary.subject_hash(ask.subject);
    let touched = if counts_as_touch(caller, ask) { touched(boundary, caller, &subject_hash).await } else { 0 };
    let minors_sensitive = ask.action == Action::Read
        && ask.subject_minor
        && ask.record.is_some_and(|(_, category)| category_is_sensitive(boundary.config(), category));
    let needs_approval = touched > boundary.config().policy.bulk_threshold || minors_sensitive;
    let approval = if needs_approval {
        approval(boundary, caller, ask).await
    } else if ask.action == Action::Disclose {
        // A disclosure is "approved" when a granted request names the subject.
        crate::government::grants::granted_for(boundary, caller, ask.subject).await
    } else {
        None
    };
    Facts { subject_hash, touched, approval }
}

/// The start of the bulk-access window that ends now.
fn window_start(boundary: &Boundary) -> time::OffsetDateTime {
    let window = i64::try_from(boundary.config().policy.window_seconds).unwrap_or(i64::MAX);
    time::OffsetDateTime::now_utc().saturating_sub(time::Duration::seconds(window))
}

/// The distinct subjects the caller read in the window, `subject_hash`'s included, as the store
/// (which every gateway of the region shares) counts them. A store that cannot count counts as
/// past the threshold: the read then needs an approval, rather than going uncounted.
async fn touched(boundary: &Boundary, caller: &Caller, subject_hash: &str) -> i64 {
    match boundary.store().touched(&caller.principal.id, subject_hash, window_start(boundary)).await {
        Ok(count) => count,
        Err(e) => {
            tracing::error!(error = %Chain(&e), "cannot count the caller's reads; treating the read as bulk access");
            i64::MAX
        }
    }
}

/// Whether `ask` touches its subject for the bulk-access window: a read, and a staff member's
/// export of a subject's data (decided once, on the subject; its openings are not counted again).
fn counts_as_touch(caller: &Caller, ask: &Ask<'_>) -> bool {
    match ask.action {
        Action::Read => true,
        Action::ExportSubject => ask.record.is_none() && caller.principal.kind != clover_model::PrincipalKind::Subject,
        _ => false,
    }
}

/// The count of an allowed read (or staff export) in the caller's window: kept in the store with
/// the access's annex, in the same transaction, before its entry is appended.
pub(crate) fn touch(
    boundary: &Boundary,
    caller: &Caller,
    ask: &Ask<'_>,
    facts: &Facts,
    verdict: &Verdict,
) -> Option<clover_store::Touch> {
    if !counts_as_touch(caller, ask) || !matches!(verdict, Verdict::Allowed(_)) {
        return None;
    }
    Some(clover_store::Touch {
        principal: caller.principal.id.clone(),
        subject: facts.subject_hash.clone(),
        at: time::OffsetDateTime::now_utc(),
        since: window_start(boundary),
    })
}

/// Whether `category` is sensitive (one that is not configured counts as sensitive).
fn category_is_sensitive(config: &Config, category: &Category) -> bool {
    config.categories.iter().find(|c| &c.name == category).is_none_or(|c| c.sensitivity == Sensitivity::Sensitive)
}

/// The policy's decision, from the pack, on what the boundary knows.
#[instrument(name = "decide", skip_all, fields(action = %ask.action, effect))]
pub(crate) fn decide(boundary: &Boundary, caller: &Caller, ask: &Ask<'_>, facts: &Facts) -> Verdict {
    let config = boundary.config();
    let (touched, approved) = (facts.touched, facts.approval.is_some());
    let circumstances = Circumstances {
        purpose: caller.purpose.clone(),
        has_justification: caller.justification.is_some(),
        approved,
        subjects_touched: touched,
        destination: None,
    };
    let request = match ask.record {
        // An export's opening of each record is decided as the export itself, on the subject
        // (it is the subject's own data, or their verified request), and logged record by record.
        Some((id, category)) if !matches!(ask.action, Action::ExportSubject | Action::Disclose) => {
            let facts =
                RecordFacts { id: id.to_string(), category: category.clone(), subject_minor: ask.subject_minor };
            record_request(config, &caller.principal, &caller.origin, ask.action, &facts, &circumstances)
        }
        _ => subject_request(config, &caller.principal, &caller.origin, ask, &circumstances),
    };
    let verdict = boundary.pack().verdict(&request, ask.subject);
    tracing::Span::current().record("effect", verdict.decision().effect());
    crate::metrics::decision(ask.action, verdict.decision());
    verdict
}

/// What is known of the record asked about.
#[derive(Debug, Clone)]
pub struct RecordFacts {
    /// Its id.
    pub id: String,
    /// Its category.
    pub category: Category,
    /// Whether its subject is a minor.
    pub subject_minor: bool,
}

/// The caller's declarations and history, beyond who and where.
#[derive(Debug, Clone, Default)]
pub struct Circumstances {
    /// The declared purpose.
    pub purpose: Option<String>,
    /// Whether a justification ticket was given.
    pub has_justification: bool,
    /// Whether an approval covers the access.
    pub approved: bool,
    /// Distinct subjects touched in the window.
    pub subjects_touched: i64,
    /// For an export: the destination named (whether configured or not).
    pub destination: Option<String>,
}

/// The caller as the pack sees them.
fn pack_principal(principal: &Principal) -> PackPrincipal {
    PackPrincipal {
        kind: principal.kind,
        id: principal.id.to_string(),
        home_region: principal.home_region.to_string(),
        site: principal.site.to_string(),
        roles: principal.roles.clone(),
    }
}

/// The origin's site and region, or `None` for an unknown origin.
fn pack_origin(origin: &Origin) -> Option<(String, String)> {
    match origin {
        Origin::Site { site, region } => Some((site.to_string(), region.to_string())),
        Origin::Unknown => None,
    }
}

/// Builds the pack request for an action on a record, as the boundary decides it (and as
/// `clover policy explain` shows it).
pub fn record_request(
    config: &Config,
    principal: &Principal,
    origin: &Origin,
    action: Action,
    record: &RecordFacts,
    circumstances: &Circumstances,
) -> PackRequest {
    let purpose = circumstances.purpose.as_ref().and_then(|p| config.purposes.iter().find(|c| &c.name == p));
    let category = config.categories.iter().find(|c| c.name == record.category);
    // A category that is not configured names no role.
    let sensitive = category_is_sensitive(config, &record.category);
    PackRequest {
        boundary_region: config.region.to_string(),
        principal: pack_principal(principal),
        action,
        resource: PackResource::Record {
            id: record.id.clone(),
            category: record.category.to_string(),
            sensitive,
            subject_minor: record.subject_minor,
            home_region: config.region.to_string(),
        },
        origin: pack_origin(origin),
        purpose: circumstances.purpose.clone(),
        purpose_declared: purpose.is_some(),
        purpose_allowed_for_category: purpose.is_some_and(|p| p.categories.contains(&record.category)),
        purpose_allows_transfer: purpose.is_some_and(|p| p.transfer),
        purpose_role_ok: purpose.is_some_and(|p| p.allows_any_of(&principal.roles)),
        category_role_ok: category.is_some_and(|c| c.allows_any_of(&principal.roles)),
        has_justification: circumstances.has_justification,
        approved: circumstances.approved,
        subjects_touched: circumstances.subjects_touched,
        bulk_threshold: config.policy.bulk_threshold,
        destination: pack_destination(config, origin, action, circumstances),
    }
}

/// Where a request's data would go: an export's named destination; for a read from outside
/// the region, the destination configured for the caller's region and purpose (a read from
/// abroad is a transfer); none otherwise, or when none is configured.
fn pack_destination(
    config: &Config,
    origin: &Origin,
    action: Action,
    circumstances: &Circumstances,
) -> Option<PackDestination> {
    let purpose = circumstances.purpose.as_deref();
    let destination = match action {
        Action::Export => config.destination(circumstances.destination.as_deref()?)?,
        Action::Read => {
            let Origin::Site { region, .. } = origin else { return None };
            if region == &config.region {
                return None;
            }
            config.destination_for_read(region.as_str(), purpose)?
        }
        _ => return None,
    };
    Some(PackDestination {
        region: destination.region.to_string(),
        legal_basis: destination.legal_basis.to_string(),
        purpose_allowed: purpose.is_some_and(|p| destination.allows(p)),
    })
}

/// Builds the pack request for an action on a subject as a whole (register, erase, list).
fn subject_request(
    config: &Config,
    principal: &Principal,
    origin: &Origin,
    ask: &Ask<'_>,
    circumstances: &Circumstances,
) -> PackRequest {
    PackRequest {
        boundary_region: config.region.to_string(),
        principal: pack_principal(principal),
        action: ask.action,
        resource: PackResource::Subject {
            id: ask.subject.to_string(),
            minor: ask.subject_minor,
            home_region: config.region.to_string(),
        },
        origin: pack_origin(origin),
        purpose: circumstances.purpose.clone(),
        purpose_declared: false,
        purpose_allowed_for_category: false,
        purpose_allows_transfer: false,
        purpose_role_ok: false,
        category_role_ok: false,
        has_justification: circumstances.has_justification,
        approved: circumstances.approved,
        subjects_touched: circumstances.subjects_touched,
        bulk_threshold: config.policy.bulk_threshold,
        destination: None,
    }
}

/// A request about no subject's data (administration, approvals): who, from where, doing what.
fn request_without_data(
    config: &Config,
    principal: &Principal,
    origin: &Origin,
    action: Action,
    resource: PackResource,
) -> PackRequest {
    PackRequest {
        boundary_region: config.region.to_string(),
        principal: pack_principal(principal),
        action,
        resource,
        origin: pack_origin(origin),
        purpose: None,
        purpose_declared: false,
        purpose_allowed_for_category: false,
        purpose_allows_transfer: false,
        purpose_role_ok: false,
        category_role_ok: false,
        has_justification: false,
        approved: false,
        subjects_touched: 0,
        bulk_threshold: config.policy.bulk_threshold,
        destination: None,
    }
}

/// The pack request for administering the boundary (key rotation).
pub(crate) fn administer_request(config: &Config, principal: &Principal, origin: &Origin) -> PackRequest {
    boundary_request(config, principal, origin, Action::Administer)
}

/// The pack request for `action` on the boundary as a whole (administration, the privacy
/// team's queue of subjects' requests).
pub(crate) fn boundary_request(config: &Config, principal: &Principal, origin: &Origin, action: Action) -> PackRequest {
    let resource = PackResource::Boundary { region: config.region.to_string() };
    request_without_data(config, principal, origin, action, resource)
}

/// Builds the pack request for granting the approval `approval_id` asked for by `requester`.
pub(crate) fn approval_request(
    config: &Config,
    principal: &Principal,
    origin: &Origin,
    approval_id: &str,
    requester: &str,
) -> PackRequest {
    let resource = PackResource::Approval { id: approval_id.to_owned(), requester: requester.to_owned() };
    request_without_data(config, principal, origin, Action::Approve, resource)
}
