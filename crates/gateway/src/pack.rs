//! From what the boundary knows to a Cedar request of the policy pack.
//!
//! The context is computed here, from configuration and from what the boundary resolved
//! itself: whether the purpose is on the configured list and declared for the record's
//! category, whether it may go out of the region pseudonymised, how sensitive the category is.

use clover_model::{Action, Category, Origin, Principal};
use clover_policy::pack::{PackPrincipal, PackRequest, PackResource};

use crate::config::{Config, Sensitivity};

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

/// Builds the pack request for an action on a record.
pub fn record_request(
    config: &Config,
    principal: &Principal,
    origin: &Origin,
    action: Action,
    record: &RecordFacts,
    circumstances: &Circumstances,
) -> PackRequest {
    let purpose = circumstances.purpose.as_ref().and_then(|p| config.purposes.iter().find(|c| &c.name == p));
    let sensitive = config
        .categories
        .iter()
        .find(|c| c.name == record.category)
        .is_none_or(|c| c.sensitivity == Sensitivity::Sensitive);
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
        has_justification: circumstances.has_justification,
        approved: circumstances.approved,
        subjects_touched: circumstances.subjects_touched,
        bulk_threshold: config.policy.bulk_threshold,
    }
}

/// Builds the pack request for an action on a subject as a whole (register, erase, list).
pub fn subject_request(
    config: &Config,
    principal: &Principal,
    origin: &Origin,
    ask: &crate::pipeline::Ask<'_>,
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
        has_justification: circumstances.has_justification,
        approved: circumstances.approved,
        subjects_touched: circumstances.subjects_touched,
        bulk_threshold: config.policy.bulk_threshold,
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
        has_justification: false,
        approved: false,
        subjects_touched: 0,
        bulk_threshold: config.policy.bulk_threshold,
    }
}

/// The pack request for administering the boundary (key rotation).
pub fn administer_request(config: &Config, principal: &Principal, origin: &Origin) -> PackRequest {
    let resource = PackResource::Boundary { region: config.region.to_string() };
    request_without_data(config, principal, origin, Action::Administer, resource)
}

/// Builds the pack request for granting the approval `approval_id` asked for by `requester`.
pub fn approval_request(
    config: &Config,
    principal: &Principal,
    origin: &Origin,
    approval_id: &str,
    requester: &str,
) -> PackRequest {
    let resource = PackResource::Approval { id: approval_id.to_owned(), requester: requester.to_owned() };
    request_without_data(config, principal, origin, Action::Approve, resource)
}
