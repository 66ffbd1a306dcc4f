//! The default pack, rule by rule, both ways.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use clover_model::{Action, PrincipalKind, View};
use clover_policy::Outcome;
use clover_policy::pack::{PackDestination, PackPrincipal, PackRequest, PackResource, PolicyPack};

/// An EU employee at dublin-1 with the support role, reading an adult's profile record for
/// support (a purpose the support role may declare).
fn base() -> PackRequest {
    PackRequest {
        boundary_region: "eu".into(),
        principal: PackPrincipal {
            kind: PrincipalKind::Employee,
            id: "ana".into(),
            home_region: "eu".into(),
            site: "dublin-1".into(),
            roles: vec!["support".into()],
        },
        action: Action::Read,
        resource: PackResource::Record {
            id: "r-1".into(),
            category: "profile".into(),
            sensitive: false,
            subject_minor: false,
            home_region: "eu".into(),
        },
        origin: Some(("dublin-1".into(), "eu".into())),
        purpose: Some("support".into()),
        purpose_declared: true,
        purpose_allowed_for_category: true,
        purpose_allows_transfer: false,
        purpose_role_ok: true,
        category_role_ok: false,
        has_justification: false,
        approved: false,
        subjects_touched: 1,
        bulk_threshold: 50,
        destination: None,
    }
}

fn record(category: &str, sensitive: bool, minor: bool) -> PackResource {
    PackResource::Record {
        id: "r-1".into(),
        category: category.into(),
        sensitive,
        subject_minor: minor,
        home_region: "eu".into(),
    }
}

/// Turns the request into `ana` administering the boundary (key rotation) with `roles`.
fn administer(r: &mut PackRequest, roles: &[&str]) {
    r.action = Action::Administer;
    r.resource = PackResource::Boundary { region: "eu".into() };
    r.principal.roles = roles.iter().map(|s| s.to_string()).collect();
}

/// Turns the request into `ana` bringing the record home from abroad with `roles`, declaring
/// no purpose (a repatriation is not a use of the data).
fn repatriate(r: &mut PackRequest, roles: &[&str]) {
    r.action = Action::Repatriate;
    r.principal.roles = roles.iter().map(|s| s.to_string()).collect();
    r.purpose = None;
    r.purpose_declared = false;
    r.purpose_allowed_for_category = false;
    r.purpose_role_ok = false;
}

/// Turns the request into `ana` listing who accessed a subject's data.
fn list_accesses(r: &mut PackRequest) {
    r.action = Action::ListAccesses;
    r.resource = PackResource::Subject { id: "s-1".into(), minor: false, home_region: "eu".into() };
}

/// Turns the request into `ana` approving a request by `requester`.
fn approve(r: &mut PackRequest, requester: &str, roles: &[&str]) {
    r.action = Action::Approve;
    r.resource = PackResource::Approval { id: "a-1".into(), requester: requester.into() };
    r.principal.roles = roles.iter().map(|s| s.to_string()).collect();
}

/// Turns the request into data subject `s-1`, calling from an address of no site with their
/// own token (no roles), doing `action` on subject `on`.
fn subject(r: &mut PackRequest, action: Action, on: &str) {
    r.principal = PackPrincipal {
        kind: PrincipalKind::Subject,
        id: "s-1".into(),
        home_region: "eu".into(),
        site: "none".into(),
        roles: Vec::new(),
    };
    r.action = action;
    r.resource = PackResource::Subject { id: on.into(), minor: false, home_region: "eu".into() };
    r.origin = None;
    r.purpose = None;
    r.purpose_declared = false;
    r.purpose_allowed_for_category = false;
    r.purpose_role_ok = false;
}

/// Turns the request into `ana` of the privacy team doing `action` on subject `s-1` for them,
/// with the verified request's reference as the ticket.
fn privacy_team(r: &mut PackRequest, action: Action) {
    r.action = action;
    r.principal.roles = vec!["privacy".into()];
    r.resource = PackResource::Subject { id: "s-1".into(), minor: false, home_region: "eu".into() };
    r.has_justification = true;
}

/// An answer to a government request from `country` under `instrument`, with `approvals`.
fn answer(r: &mut PackRequest, country: &str, instrument: &str, recognised: bool, approvals: i64, minors: bool) {
    r.action = Action::AnswerGovernmentRequest;
    r.principal.roles = vec!["legal".into()];
    r.resource = PackResource::GovernmentRequest {
        id: "gr-1".into(),
        country: country.into(),
        instrument: instrument.into(),
        recognised,
        approvals,
        minors,
    };
}

/// A disclosure by the legal team, for the purpose `legal`, of a subject a granted request names.
fn disclosure(r: &mut PackRequest) {
    r.action = Action::Disclose;
    r.principal.roles = vec!["legal".into()];
    r.resource = PackResource::Subject { id: "s-1".into(), minor: false, home_region: "eu".into() };
    r.purpose = Some("legal".into());
    r.approved = true;
}

fn from(site: &str, region: &str) -> Option<(String, String)> {
    Some((site.into(), region.into()))
}

/// A destination in the United States with `legal_basis`, that may (or not) receive the purpose.
fn us_destination(legal_basis: &str, purpose_allowed: bool) -> Option<PackDestination> {
    Some(PackDestination { region: "us".into(), legal_basis: legal_basis.into(), purpose_allowed })
}

/// Turns the request into one from Virginia, where a destination with standard contractual
/// clauses may receive the purpose (a read from there is a lawful transfer, as far as the
/// destination goes).
fn abroad(r: &mut PackRequest) {
    r.origin = from("virginia-1", "us");
    r.destination = us_destination("scc", true);
}

/// Turns the request into `ana`, holding the analytics role, exporting profile records to the
/// destination in the United States for analytics.
fn export(r: &mut PackRequest) {
    r.action = Action::Export;
    r.principal.roles = vec!["analytics".into()];
    r.purpose = Some("analytics".into());
    r.destination = us_destination("scc", true);
}

/// A case of the decision table: a change to [`base`], the outcome and deciding policies it
/// must get, and the policies it shows *not* deciding: each of these comes within one condition
/// of the request (the case is that policy's near miss), so that every policy is seen deciding
/// and not deciding.
struct Case {
    name: &'static str,
    change: Box<dyn Fn(&mut PackRequest)>,
    outcome: Outcome,
    policies: &'static [&'static str],
    spares: &'static [&'static str],
}

fn case(
    name: &'static str,
    change: impl Fn(&mut PackRequest) + 'static,
    outcome: Outcome,
    policies: &'static [&'static str],
    spares: &'static [&'static str],
) -> Case {
    Case { name, change: Box::new(change), outcome, policies, spares }
}

/// Turns the request into a read of a sensitive `category` with a ticket, by a caller who holds
/// a role the category names.
fn sensitive(r: &mut PackRequest, category: &str) {
    r.resource = record(category, true, false);
    r.has_justification = true;
    r.category_role_ok = true;
}

/// The cases of transfers: reads from outside the region (each a transfer) and exports. A table
/// of its own, so that no one function builds the whole table on its stack.
fn transfer_cases() -> Vec<Case> {
    let full = Outcome::Allow(View::Full);
    let deny = Outcome::Deny;
    vec![
        case(
            "from outside: a read is a transfer, refused with no destination for the caller's region",
            |r| {
                abroad(r);
                r.destination = None;
                r.purpose_allows_transfer = true;
            },
            deny,
            &["no-full-view-from-outside", "remote-access-is-a-transfer"],
            &["pseudonymised-from-outside"],
        ),
        case(
            "from outside: refused when the destination has no legal basis",
            |r| {
                abroad(r);
                r.destination = us_destination("none", true);
                r.purpose_allows_transfer = true;
            },
            deny,
            &["no-full-view-from-outside", "remote-access-is-a-transfer"],
            &["pseudonymised-from-outside"],
        ),
        case(
            "from outside: refused when the destination may not receive the purpose",
            |r| {
                abroad(r);
                r.destination = us_destination("adequacy", false);
                r.purpose_allows_transfer = true;
            },
            deny,
            &["no-full-view-from-outside", "remote-access-is-a-transfer"],
            &["pseudonymised-from-outside"],
        ),
        case(
            "a transfer to a lawful destination, for a purpose it may receive",
            export,
            full,
            &["transfers-to-lawful-destinations"],
            &[
                "no-transfer-without-legal-basis",
                "no-transfer-for-another-purpose",
                "transfers-start-in-region",
                "no-minors-or-sensitive-data-leave",
                "remote-access-is-a-transfer",
            ],
        ),
        case(
            "no transfer to a destination without a legal basis",
            |r| {
                export(r);
                r.destination = us_destination("none", true);
            },
            deny,
            &["no-transfer-without-legal-basis"],
            &["transfers-to-lawful-destinations"],
        ),
        case(
            "no transfer to a destination that is not configured",
            |r| {
                export(r);
                r.destination = None;
            },
            deny,
            &["no-transfer-for-another-purpose", "no-transfer-without-legal-basis"],
            &["transfers-to-lawful-destinations"],
        ),
        case(
            "no transfer for a purpose the destination may not receive",
            |r| {
                export(r);
                r.destination = us_destination("scc", false);
            },
            deny,
            &["no-transfer-for-another-purpose"],
            &["transfers-to-lawful-destinations"],
        ),
        case(
            "no transfer started from abroad",
            |r| {
                export(r);
                r.origin = from("virginia-1", "us");
            },
            deny,
            &["transfers-start-in-region"],
            &["transfers-to-lawful-destinations"],
        ),
        case(
            "no transfer of a minor's records",
            |r| {
                export(r);
                r.resource = record("profile", false, true);
            },
            deny,
            &["no-minors-or-sensitive-data-leave"],
            &["transfers-to-lawful-destinations"],
        ),
        case(
            "no transfer of a sensitive category, even with a ticket and its role",
            |r| {
                export(r);
                sensitive(r, "messages");
                r.principal.roles.push("safety".into());
            },
            deny,
            &["no-minors-or-sensitive-data-leave"],
            &["transfers-to-lawful-destinations"],
        ),
        case(
            "no transfer by a caller without a role of the purpose",
            |r| {
                export(r);
                r.purpose_role_ok = false;
            },
            deny,
            &["default-deny"],
            &["transfers-to-lawful-destinations"],
        ),
    ]
}

#[expect(clippy::too_many_lines, reason = "one table, a row per case")]
fn cases() -> Vec<Case> {
    let full = Outcome::Allow(View::Full);
    let pseudo = Outcome::Allow(View::Pseudonymised);
    let deny = Outcome::Deny;
    let approval = Outcome::ApprovalRequired;
    vec![
        case(
            "in the region, with a role of the purpose: a full view of a profile",
            |_| {},
            full,
            &["in-region-read"],
            &["no-full-view-from-outside", "declared-purpose", "purpose-needs-its-role", "ticket-for-sensitive"],
        ),
        case(
            "a caller of another region gets nothing",
            |r| r.principal.home_region = "us".into(),
            deny,
            &["default-deny"],
            &["in-region-read"],
        ),
        case(
            "no full view from Singapore, even for an EU employee",
            |r| r.origin = from("singapore-1", "sg"),
            deny,
            &["no-full-view-from-outside", "remote-access-is-a-transfer"],
            &["in-region-read"],
        ),
        case(
            "from outside: pseudonymised for a transfer purpose",
            |r| {
                abroad(r);
                r.principal.home_region = "us".into();
                r.purpose_allows_transfer = true;
            },
            pseudo,
            &["pseudonymised-from-outside"],
            &["unknown-origin", "purpose-needs-its-role"],
        ),
        case(
            "from outside: never a minor's data",
            |r| {
                abroad(r);
                r.purpose_allows_transfer = true;
                r.resource = record("profile", false, true);
            },
            deny,
            &["no-full-view-from-outside"],
            &["pseudonymised-from-outside"],
        ),
        case(
            "from outside: never a sensitive category, even with a ticket and the category's role",
            |r| {
                abroad(r);
                r.purpose_allows_transfer = true;
                sensitive(r, "location");
                r.principal.roles = vec!["legal".into()];
            },
            deny,
            &["no-full-view-from-outside"],
            &["pseudonymised-from-outside", "ticket-for-sensitive", "sensitive-needs-category-role"],
        ),
        case(
            "from outside: not for a purpose off the transfer list",
            abroad,
            deny,
            &["no-full-view-from-outside"],
            &["pseudonymised-from-outside"],
        ),
        case(
            "from outside: not without a role of the purpose",
            |r| {
                abroad(r);
                r.purpose_allows_transfer = true;
                r.purpose_role_ok = false;
            },
            deny,
            &["no-full-view-from-outside", "purpose-needs-its-role"],
            &["pseudonymised-from-outside"],
        ),
        case(
            "unknown origins are denied",
            |r| r.origin = None,
            deny,
            &["no-full-view-from-outside", "remote-access-is-a-transfer", "unknown-origin"],
            &[],
        ),
        case(
            "unknown origins are denied even a transfer",
            |r| {
                r.origin = None;
                r.purpose_allows_transfer = true;
            },
            deny,
            &["no-full-view-from-outside", "remote-access-is-a-transfer", "unknown-origin"],
            &[],
        ),
        case(
            "writes from the region, with no role",
            |r| {
                r.action = Action::Write;
                r.principal.roles.clear();
            },
            full,
            &["in-region-writes"],
            &["writes-in-region-only"],
        ),
        case(
            "erasure from the region",
            |r| r.action = Action::Erase,
            full,
            &["in-region-writes"],
            &["writes-in-region-only"],
        ),
        case(
            "no writes from outside",
            |r| {
                r.action = Action::Write;
                r.origin = from("singapore-1", "sg");
            },
            deny,
            &["writes-in-region-only"],
            &["in-region-writes"],
        ),
        case(
            "no erasure by a caller of another region",
            |r| {
                r.action = Action::Erase;
                r.principal.home_region = "us".into();
            },
            deny,
            &["writes-in-region-only"],
            &["in-region-writes"],
        ),
        case("in-region staff list a subject's accesses", list_accesses, full, &["in-region-access-lists"], &[]),
        case(
            "not from outside the region",
            |r| {
                list_accesses(r);
                abroad(r);
            },
            deny,
            &["default-deny"],
            &["in-region-access-lists"],
        ),
        case(
            "a key custodian in the region rotates keys",
            |r| administer(r, &["key-custodian"]),
            full,
            &["key-custodians-administer"],
            &[],
        ),
        case(
            "nobody else administers the boundary",
            |r| administer(r, &["agent", "approver"]),
            deny,
            &["default-deny"],
            &["key-custodians-administer"],
        ),
        case(
            "not even a key custodian from outside the region",
            |r| {
                administer(r, &["key-custodian"]);
                abroad(r);
            },
            deny,
            &["default-deny"],
            &["key-custodians-administer"],
        ),
        case(
            "a repatriation operator in the region brings a record home",
            |r| repatriate(r, &["repatriation"]),
            full,
            &["repatriation-by-its-operators"],
            &[],
        ),
        case(
            "a minor's sensitive record comes home like any other",
            |r| {
                repatriate(r, &["repatriation"]);
                r.resource = record("messages", true, true);
            },
            full,
            &["repatriation-by-its-operators"],
            &["minors-sensitive-data-needs-approval", "ticket-for-sensitive"],
        ),
        case(
            "nobody else repatriates, not a key custodian nor an agent",
            |r| repatriate(r, &["key-custodian", "agent"]),
            deny,
            &["default-deny"],
            &["repatriation-by-its-operators"],
        ),
        case(
            "not a repatriation operator calling from abroad",
            |r| {
                repatriate(r, &["repatriation"]);
                r.origin = from("singapore-1", "sg");
            },
            deny,
            &["default-deny"],
            &["repatriation-by-its-operators"],
        ),
        case(
            "nor one of another region",
            |r| {
                repatriate(r, &["repatriation"]);
                r.principal.home_region = "sg".into();
            },
            deny,
            &["default-deny"],
            &["repatriation-by-its-operators"],
        ),
        case(
            "a repatriation operator registers a subject one of whose records comes home",
            |r| {
                repatriate(r, &["repatriation"]);
                r.resource = PackResource::Subject { id: "s-1".into(), minor: true, home_region: "eu".into() };
            },
            full,
            &["repatriation-registers-subjects"],
            &[],
        ),
        case(
            "but not a subject of another region, nor from abroad",
            |r| {
                repatriate(r, &["repatriation"]);
                r.resource = PackResource::Subject { id: "s-1".into(), minor: false, home_region: "sg".into() };
                r.origin = from("singapore-1", "sg");
            },
            deny,
            &["default-deny"],
            &["repatriation-registers-subjects"],
        ),
        case(
            "nor an agent registering one by repatriation",
            |r| {
                repatriate(r, &["agent"]);
                r.resource = PackResource::Subject { id: "s-1".into(), minor: false, home_region: "eu".into() };
            },
            deny,
            &["default-deny"],
            &["repatriation-registers-subjects"],
        ),
        case(
            "nor a record of another region's subject",
            |r| {
                repatriate(r, &["repatriation"]);
                r.resource = PackResource::Record {
                    id: "r-1".into(),
                    category: "profile".into(),
                    sensitive: false,
                    subject_minor: false,
                    home_region: "sg".into(),
                };
            },
            deny,
            &["default-deny"],
            &["repatriation-by-its-operators"],
        ),
        case(
            "an intern cannot declare safety",
            |r| {
                r.principal.roles = vec!["intern".into()];
                r.purpose = Some("safety".into());
                r.purpose_role_ok = false;
            },
            deny,
            &["purpose-needs-its-role"],
            &["declared-purpose", "in-region-read"],
        ),
        case(
            "the attacker: an intern reads a minor's messages for safety with a ticket",
            |r| {
                r.principal.roles = vec!["intern".into()];
                r.purpose = Some("safety".into());
                r.purpose_role_ok = false;
                r.resource = record("messages", true, true);
                r.has_justification = true;
            },
            deny,
            &["minors-sensitive-data-needs-approval", "purpose-needs-its-role", "sensitive-needs-category-role"],
            &["ticket-for-sensitive"],
        ),
        case(
            "the attacker: a service with no roles reads messages for legal",
            |r| {
                r.principal.kind = PrincipalKind::Service;
                r.principal.roles.clear();
                r.purpose = Some("legal".into());
                r.purpose_role_ok = false;
                r.resource = record("messages", true, false);
                r.has_justification = true;
            },
            deny,
            &["purpose-needs-its-role", "sensitive-needs-category-role"],
            &["ticket-for-sensitive"],
        ),
        case(
            "the attacker: an employee with no roles reads location",
            |r| {
                r.principal.roles.clear();
                r.purpose = Some("safety".into());
                r.purpose_role_ok = false;
                r.resource = record("location", true, false);
            },
            deny,
            &["purpose-needs-its-role", "sensitive-needs-category-role", "ticket-for-sensitive"],
            &[],
        ),
        case(
            "a sensitive category needs a ticket, whatever the roles",
            |r| {
                sensitive(r, "messages");
                r.has_justification = false;
                r.principal.roles = vec!["legal".into()];
            },
            deny,
            &["ticket-for-sensitive"],
            &["sensitive-needs-category-role", "in-region-read"],
        ),
        case(
            "from a service too",
            |r| {
                sensitive(r, "location");
                r.principal.kind = PrincipalKind::Service;
                r.principal.roles = vec!["legal".into()];
                r.has_justification = false;
            },
            deny,
            &["ticket-for-sensitive"],
            &["ticket-for-content"],
        ),
        case(
            "a sensitive category needs a role it names, even with a ticket",
            |r| {
                sensitive(r, "messages");
                r.principal.roles = vec!["legal".into()];
                r.category_role_ok = false;
            },
            deny,
            &["sensitive-needs-category-role"],
            &["ticket-for-sensitive", "purpose-needs-its-role"],
        ),
        case(
            "with a ticket and a role of the category, messages in full",
            |r| {
                sensitive(r, "messages");
                r.principal.roles = vec!["legal".into()];
            },
            full,
            &["in-region-read"],
            &["ticket-for-sensitive", "sensitive-needs-category-role", "minors-sensitive-data-needs-approval"],
        ),
        case(
            "an employee needs a ticket for content",
            |r| {
                r.resource = record("content", false, false);
                r.principal.roles = vec!["legal".into()];
            },
            deny,
            &["ticket-for-content"],
            &["ticket-for-sensitive"],
        ),
        case(
            "a service needs no ticket for content",
            |r| {
                r.resource = record("content", false, false);
                r.principal.kind = PrincipalKind::Service;
                r.principal.roles = vec!["legal".into()];
            },
            full,
            &["in-region-read"],
            &["ticket-for-content"],
        ),
        case(
            "support sees profile and contact only",
            |r| {
                r.resource = record("content", false, false);
                r.has_justification = true;
            },
            deny,
            &["support-sees-profile-and-contact"],
            &["ticket-for-content"],
        ),
        case(
            "support sees contact",
            |r| sensitive(r, "contact"),
            full,
            &["in-region-read"],
            &["support-sees-profile-and-contact"],
        ),
        case(
            "support with a safety role sees more",
            |r| {
                r.principal.roles = vec!["support".into(), "safety".into()];
                sensitive(r, "location");
            },
            full,
            &["in-region-read"],
            &["support-sees-profile-and-contact"],
        ),
        case(
            "no advertising on minors",
            |r| {
                r.purpose = Some("advertising".into());
                r.resource = record("profile", false, true);
            },
            deny,
            &["no-ads-or-analytics-on-minors"],
            &["minors-sensitive-data-needs-approval"],
        ),
        case(
            "advertising on adults, where declared",
            |r| r.purpose = Some("advertising".into()),
            full,
            &["in-region-read"],
            &["no-ads-or-analytics-on-minors"],
        ),
        case(
            "a purpose off the configured list is denied",
            |r| {
                r.purpose = Some("curiosity".into());
                r.purpose_declared = false;
                r.purpose_allowed_for_category = false;
                r.purpose_role_ok = false;
            },
            deny,
            &["declared-purpose"],
            &["purpose-needs-its-role"],
        ),
        case(
            "no purpose is denied",
            |r| {
                r.purpose = None;
                r.purpose_declared = false;
                r.purpose_allowed_for_category = false;
                r.purpose_role_ok = false;
            },
            deny,
            &["declared-purpose"],
            &["purpose-needs-its-role"],
        ),
        case(
            "a purpose the category does not declare is denied",
            |r| r.purpose_allowed_for_category = false,
            deny,
            &["declared-purpose"],
            &["in-region-read"],
        ),
        case(
            "a minor's messages need an approval, even with a ticket and the roles",
            |r| {
                sensitive(r, "messages");
                r.principal.roles = vec!["safety".into()];
                r.resource = record("messages", true, true);
            },
            approval,
            &["minors-sensitive-data-needs-approval"],
            &["ticket-for-sensitive", "sensitive-needs-category-role"],
        ),
        case(
            "with an approval, a minor's messages in full",
            |r| {
                sensitive(r, "messages");
                r.principal.roles = vec!["safety".into()];
                r.resource = record("messages", true, true);
                r.approved = true;
            },
            full,
            &["in-region-read"],
            &["minors-sensitive-data-needs-approval"],
        ),
        case(
            "a minor's profile needs no approval",
            |r| r.resource = record("profile", false, true),
            full,
            &["in-region-read"],
            &["minors-sensitive-data-needs-approval", "no-ads-or-analytics-on-minors"],
        ),
        case(
            "too many subjects needs an approval",
            |r| r.subjects_touched = 51,
            approval,
            &["bulk-access-needs-approval"],
            &[],
        ),
        case(
            "with the approval, allowed",
            |r| {
                r.subjects_touched = 51;
                r.approved = true;
            },
            full,
            &["in-region-read"],
            &["bulk-access-needs-approval"],
        ),
        case(
            "an approval does not lift another refusal",
            |r| {
                r.subjects_touched = 51;
                r.origin = from("singapore-1", "sg");
            },
            deny,
            &["bulk-access-needs-approval", "no-full-view-from-outside", "remote-access-is-a-transfer"],
            &[],
        ),
        case(
            "at the threshold, no approval needed",
            |r| r.subjects_touched = 50,
            full,
            &["in-region-read"],
            &["bulk-access-needs-approval"],
        ),
        case(
            "an approver grants another's request",
            |r| approve(r, "bo", &["approver"]),
            full,
            &["approvals-by-a-second-person"],
            &[],
        ),
        case(
            "never one's own request",
            |r| approve(r, "ana", &["approver"]),
            deny,
            &["default-deny"],
            &["approvals-by-a-second-person"],
        ),
        case(
            "only with the approver role",
            |r| approve(r, "bo", &["agent"]),
            deny,
            &["default-deny"],
            &["approvals-by-a-second-person"],
        ),
        case(
            "only from the region",
            |r| {
                approve(r, "bo", &["approver"]);
                abroad(r);
            },
            deny,
            &["default-deny"],
            &["approvals-by-a-second-person"],
        ),
        case(
            "a data subject lists their own accesses from anywhere",
            |r| subject(r, Action::ListAccesses, "s-1"),
            full,
            &["subjects-act-on-their-own-data"],
            &["unknown-origin", "subjects-only-their-own-data"],
        ),
        case(
            "a data subject erases their own data from abroad",
            |r| {
                subject(r, Action::Erase, "s-1");
                r.origin = from("singapore-1", "sg");
            },
            full,
            &["subjects-act-on-their-own-data"],
            &["writes-in-region-only", "subjects-only-their-own-data"],
        ),
        case(
            "a data subject exports their own data",
            |r| subject(r, Action::ExportSubject, "s-1"),
            full,
            &["subjects-act-on-their-own-data"],
            &[],
        ),
        case(
            "an organisation closes its own account",
            |r| subject(r, Action::CloseAccount, "s-1"),
            full,
            &["subjects-act-on-their-own-data"],
            &[],
        ),
        case(
            "never another subject's",
            |r| subject(r, Action::ListAccesses, "s-2"),
            deny,
            &["subjects-only-their-own-data"],
            &["subjects-act-on-their-own-data"],
        ),
        case(
            "a data subject's token reads no record, whatever roles and purpose it claims, from the region",
            |r| {
                r.principal.kind = PrincipalKind::Subject;
                r.principal.id = "s-1".into();
            },
            deny,
            &["subjects-only-their-own-data"],
            &["in-region-read"],
        ),
        case(
            "the privacy team exports for a verified request, in the region",
            |r| privacy_team(r, Action::ExportSubject),
            full,
            &["privacy-team-acts-on-verified-requests"],
            &[],
        ),
        case(
            "and closes an account on its request",
            |r| privacy_team(r, Action::CloseAccount),
            full,
            &["privacy-team-acts-on-verified-requests"],
            &[],
        ),
        case(
            "not without the request's ticket",
            |r| {
                privacy_team(r, Action::ExportSubject);
                r.has_justification = false;
            },
            deny,
            &["default-deny"],
            &["privacy-team-acts-on-verified-requests"],
        ),
        case(
            "not without the privacy role",
            |r| {
                privacy_team(r, Action::ExportSubject);
                r.principal.roles = vec!["support".into()];
            },
            deny,
            &["default-deny"],
            &["privacy-team-acts-on-verified-requests"],
        ),
        case(
            "a data subject may not write, not even their own registration",
            |r| {
                subject(r, Action::Write, "s-1");
                r.origin = from("dublin-1", "eu");
            },
            deny,
            &["subjects-only-their-own-data"],
            &["in-region-writes"],
        ),
        case(
            "a service is not the privacy team",
            |r| {
                privacy_team(r, Action::ExportSubject);
                r.principal.kind = PrincipalKind::Service;
            },
            deny,
            &["default-deny"],
            &["privacy-team-acts-on-verified-requests"],
        ),
        case(
            "the privacy team's exports past the bulk threshold need an approval",
            |r| {
                privacy_team(r, Action::ExportSubject);
                r.subjects_touched = 51;
            },
            Outcome::ApprovalRequired,
            &["bulk-access-needs-approval"],
            &[],
        ),
        case(
            "the legal team registers a government request, in the region",
            |r| {
                r.action = Action::RegisterGovernmentRequest;
                r.resource = PackResource::Boundary { region: "eu".into() };
                r.principal.roles = vec!["legal".into()];
            },
            full,
            &["legal-team-registers-government-requests"],
            &[],
        ),
        case(
            "nobody else registers one",
            |r| {
                r.action = Action::RegisterGovernmentRequest;
                r.resource = PackResource::Boundary { region: "eu".into() };
            },
            deny,
            &["default-deny"],
            &["legal-team-registers-government-requests"],
        ),
        case(
            "the legal team handles the register, in the region",
            |r| {
                r.action = Action::HandleGovernmentRequests;
                r.resource = PackResource::Boundary { region: "eu".into() };
                r.principal.roles = vec!["legal".into()];
            },
            full,
            &["legal-team-registers-government-requests"],
            &[],
        ),
        case(
            "not from outside the region",
            |r| {
                r.action = Action::HandleGovernmentRequests;
                r.resource = PackResource::Boundary { region: "eu".into() };
                r.principal.roles = vec!["legal".into()];
                r.origin = from("virginia-1", "us");
            },
            deny,
            &["default-deny"],
            &["legal-team-registers-government-requests"],
        ),
        case(
            "a production order from a recognised authority is answered",
            |r| answer(r, "de", "production-order", true, 0, false),
            full,
            &["recognised-authorities-are-answered"],
            &["unrecognised-authorities-are-refused", "emergency-requests-need-two-approvers"],
        ),
        case(
            "a request from a state the region does not recognise is refused",
            |r| answer(r, "cn", "mlat", false, 3, false),
            deny,
            &["unrecognised-authorities-are-refused"],
            &["recognised-authorities-are-answered"],
        ),
        case(
            "an emergency with one approver is refused",
            |r| answer(r, "de", "emergency", true, 1, false),
            deny,
            &["emergency-requests-need-two-approvers"],
            &["minors-data-needs-an-extra-approval"],
        ),
        case(
            "an emergency with two approvers is answered",
            |r| answer(r, "de", "emergency", true, 2, false),
            full,
            &["recognised-authorities-are-answered"],
            &["emergency-requests-need-two-approvers"],
        ),
        case(
            "a minor's data needs an approval more",
            |r| answer(r, "de", "production-order", true, 0, true),
            deny,
            &["minors-data-needs-an-extra-approval"],
            &["emergency-requests-need-two-approvers"],
        ),
        case(
            "a minor's data in an emergency needs three",
            |r| answer(r, "de", "emergency", true, 2, true),
            deny,
            &["minors-data-needs-an-extra-approval"],
            &["emergency-requests-need-two-approvers"],
        ),
        case(
            "a minor's data with its approval is answered",
            |r| answer(r, "de", "production-order", true, 1, true),
            full,
            &["recognised-authorities-are-answered"],
            &["minors-data-needs-an-extra-approval"],
        ),
        case(
            "the legal team discloses what a granted request names",
            disclosure,
            full,
            &["legal-team-discloses-granted-requests"],
            &[],
        ),
        case(
            "not what no granted request names",
            |r| {
                disclosure(r);
                r.approved = false;
            },
            deny,
            &["default-deny"],
            &["legal-team-discloses-granted-requests"],
        ),
        case(
            "not for another purpose, nor from outside",
            |r| {
                disclosure(r);
                r.purpose = Some("support".into());
                r.origin = from("virginia-1", "us");
            },
            deny,
            &["default-deny"],
            &["legal-team-discloses-granted-requests"],
        ),
        case(
            "the privacy team works its queue of requests",
            |r| {
                r.action = Action::HandleRequests;
                r.resource = PackResource::Boundary { region: "eu".into() };
                r.principal.roles = vec!["privacy".into()];
            },
            full,
            &["privacy-team-handles-requests"],
            &[],
        ),
        case(
            "nobody else does, nor from outside",
            |r| {
                r.action = Action::HandleRequests;
                r.resource = PackResource::Boundary { region: "eu".into() };
                r.principal.roles = vec!["privacy".into()];
                r.origin = from("virginia-1", "us");
            },
            deny,
            &["default-deny"],
            &["privacy-team-handles-requests"],
        ),
    ]
}

#[test]
fn the_default_pack_decides_each_rule_both_ways() {
    let pack = PolicyPack::default_pack().unwrap();
    let mut failures = Vec::new();
    for Case { name, change, outcome, policies, spares } in cases().into_iter().chain(transfer_cases()) {
        let mut request = base();
        change(&mut request);
        let decision = pack.decide(&request);
        if decision.outcome != outcome
            || decision.policies != policies.iter().map(|p| p.to_string()).collect::<Vec<_>>()
        {
            failures.push(format!("{name}: got {:?} {:?} ({})", decision.outcome, decision.policies, decision.reason));
        }
        if let Some(both) = spares.iter().find(|s| policies.contains(s)) {
            failures.push(format!("{name}: {both} is listed as deciding and as spared"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_policy_of_the_pack_is_seen_deciding_and_not_deciding() {
    let pack = PolicyPack::default_pack().unwrap();
    let (mut deciding, mut spared) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    for case in cases().into_iter().chain(transfer_cases()) {
        deciding.extend(case.policies.iter().map(|p| p.to_string()));
        spared.extend(case.spares.iter().map(|p| p.to_string()));
    }
    let ids = pack.policy_ids();
    for id in &ids {
        assert!(deciding.contains(id), "policy {id} is decided by no case of the table");
        assert!(spared.contains(id), "policy {id} has no case of the table where it comes close and does not decide");
    }
    for id in deciding.iter().chain(&spared).filter(|id| *id != "default-deny") {
        assert!(ids.contains(id), "the table names {id}, which is not a policy of the pack");
    }
}

#[test]
fn the_policies_directory_is_the_default_pack_and_bad_packs_are_refused() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let loaded = PolicyPack::load_dir(&dir).unwrap();
    assert_eq!(loaded.policy_ids(), PolicyPack::default_pack().unwrap().policy_ids());

    let schema = clover_policy::pack::DEFAULT_SCHEMA;
    let bad =
        |text: &str| PolicyPack::from_sources(schema, &[("bad.cedar".into(), text.into())]).unwrap_err().to_string();
    let typo = bad("@id(\"x\") permit (principal, action, resource) when { principal.home_regoin == \"eu\" };");
    assert!(typo.contains("validate"), "{typo}");
    let no_id = bad("permit (principal, action, resource);");
    assert!(no_id.contains("@id"), "{no_id}");
    let twice =
        bad("@id(\"x\") permit (principal, action, resource);\n@id(\"x\") forbid (principal, action, resource);");
    assert!(twice.contains("used twice"), "{twice}");
    let syntax = bad("@id(\"x\") permit (principal, action resource);");
    assert!(syntax.contains("bad.cedar"), "{syntax}");
}
