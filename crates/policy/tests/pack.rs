//! The default pack, rule by rule, both ways.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use clover_model::{Action, PrincipalKind, View};
use clover_policy::Outcome;
use clover_policy::pack::{PackPrincipal, PackRequest, PackResource, PolicyPack};

/// An EU employee at dublin-1, reading an adult's profile record for support.
fn base() -> PackRequest {
    PackRequest {
        boundary_region: "eu".into(),
        principal: PackPrincipal {
            kind: PrincipalKind::Employee,
            id: "ana".into(),
            home_region: "eu".into(),
            site: "dublin-1".into(),
            roles: vec!["agent".into()],
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
        has_justification: false,
        approved: false,
        subjects_touched: 1,
        bulk_threshold: 50,
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

/// Turns the request into `ana` approving a request by `requester`.
fn approve(r: &mut PackRequest, requester: &str, roles: &[&str]) {
    r.action = Action::Approve;
    r.resource = PackResource::Approval { id: "a-1".into(), requester: requester.into() };
    r.principal.roles = roles.iter().map(|s| s.to_string()).collect();
}

fn from(site: &str, region: &str) -> Option<(String, String)> {
    Some((site.into(), region.into()))
}

type Case = (&'static str, Box<dyn Fn(&mut PackRequest)>, Outcome, &'static [&'static str]);

fn cases() -> Vec<Case> {
    let full = Outcome::Allow(View::Full);
    let pseudo = Outcome::Allow(View::Pseudonymised);
    vec![
        ("in-region caller, in-region site: full view", Box::new(|_| {}), full, &["in-region-access"]),
        (
            "a caller of another region gets nothing",
            Box::new(|r| r.principal.home_region = "us".into()),
            Outcome::Deny,
            &["default-deny"],
        ),
        (
            "no full view from Singapore, even for an EU employee",
            Box::new(|r| r.origin = from("singapore-1", "sg")),
            Outcome::Deny,
            &["no-full-view-from-outside"],
        ),
        (
            "from outside: pseudonymised for a transfer purpose",
            Box::new(|r| {
                r.origin = from("virginia-1", "us");
                r.principal.home_region = "us".into();
                r.purpose_allows_transfer = true;
            }),
            pseudo,
            &["pseudonymised-from-outside"],
        ),
        (
            "from outside: never a minor's data",
            Box::new(|r| {
                r.origin = from("virginia-1", "us");
                r.purpose_allows_transfer = true;
                r.resource = record("profile", false, true);
            }),
            Outcome::Deny,
            &["no-full-view-from-outside"],
        ),
        (
            "from outside: never a sensitive category",
            Box::new(|r| {
                r.origin = from("virginia-1", "us");
                r.purpose_allows_transfer = true;
                r.resource = record("location", true, false);
            }),
            Outcome::Deny,
            &["no-full-view-from-outside"],
        ),
        (
            "from outside: not for a purpose off the transfer list",
            Box::new(|r| r.origin = from("virginia-1", "us")),
            Outcome::Deny,
            &["no-full-view-from-outside"],
        ),
        (
            "unknown origins are denied",
            Box::new(|r| r.origin = None),
            Outcome::Deny,
            &["no-full-view-from-outside", "unknown-origin"],
        ),
        (
            "unknown origins are denied even a transfer",
            Box::new(|r| {
                r.origin = None;
                r.purpose_allows_transfer = true;
            }),
            Outcome::Deny,
            &["no-full-view-from-outside", "unknown-origin"],
        ),
        ("writes from the region", Box::new(|r| r.action = Action::Write), full, &["in-region-access"]),
        (
            "a key custodian in the region rotates keys",
            Box::new(|r| administer(r, &["key-custodian"])),
            full,
            &["key-custodians-administer"],
        ),
        (
            "nobody else administers the boundary",
            Box::new(|r| administer(r, &["agent", "approver"])),
            Outcome::Deny,
            &["default-deny"],
        ),
        (
            "not even a key custodian from outside the region",
            Box::new(|r| {
                administer(r, &["key-custodian"]);
                r.origin = from("virginia-1", "us");
            }),
            Outcome::Deny,
            &["default-deny"],
        ),
        (
            "no writes from outside",
            Box::new(|r| {
                r.action = Action::Write;
                r.origin = from("singapore-1", "sg");
            }),
            Outcome::Deny,
            &["writes-in-region-only"],
        ),
        (
            "no erasure by a caller of another region",
            Box::new(|r| {
                r.action = Action::Erase;
                r.principal.home_region = "us".into();
            }),
            Outcome::Deny,
            &["writes-in-region-only"],
        ),
        (
            "an employee needs a ticket for messages",
            Box::new(|r| r.resource = record("messages", true, false)),
            Outcome::Deny,
            &["ticket-for-content"],
        ),
        (
            "with a ticket, messages in full",
            Box::new(|r| {
                r.resource = record("messages", true, false);
                r.has_justification = true;
            }),
            full,
            &["in-region-access"],
        ),
        (
            "a service needs no ticket",
            Box::new(|r| {
                r.resource = record("content", false, false);
                r.principal.kind = PrincipalKind::Service;
            }),
            full,
            &["in-region-access"],
        ),
        (
            "support sees profile and contact only",
            Box::new(|r| {
                r.principal.roles = vec!["support".into()];
                r.resource = record("location", true, false);
            }),
            Outcome::Deny,
            &["support-sees-profile-and-contact"],
        ),
        (
            "support sees contact",
            Box::new(|r| {
                r.principal.roles = vec!["support".into()];
                r.resource = record("contact", true, false);
            }),
            full,
            &["in-region-access"],
        ),
        (
            "support with a safety role sees more",
            Box::new(|r| {
                r.principal.roles = vec!["support".into(), "safety".into()];
                r.resource = record("location", true, false);
            }),
            full,
            &["in-region-access"],
        ),
        (
            "no advertising on minors",
            Box::new(|r| {
                r.purpose = Some("advertising".into());
                r.resource = record("profile", false, true);
            }),
            Outcome::Deny,
            &["no-ads-or-analytics-on-minors"],
        ),
        (
            "advertising on adults, where declared",
            Box::new(|r| r.purpose = Some("advertising".into())),
            full,
            &["in-region-access"],
        ),
        (
            "a purpose off the configured list is denied",
            Box::new(|r| {
                r.purpose = Some("curiosity".into());
                r.purpose_declared = false;
                r.purpose_allowed_for_category = false;
            }),
            Outcome::Deny,
            &["declared-purpose"],
        ),
        (
            "no purpose is denied",
            Box::new(|r| {
                r.purpose = None;
                r.purpose_declared = false;
                r.purpose_allowed_for_category = false;
            }),
            Outcome::Deny,
            &["declared-purpose"],
        ),
        (
            "a purpose the category does not declare is denied",
            Box::new(|r| r.purpose_allowed_for_category = false),
            Outcome::Deny,
            &["declared-purpose"],
        ),
        (
            "too many subjects needs an approval",
            Box::new(|r| r.subjects_touched = 51),
            Outcome::ApprovalRequired,
            &["bulk-access-needs-approval"],
        ),
        (
            "with the approval, allowed",
            Box::new(|r| {
                r.subjects_touched = 51;
                r.approved = true;
            }),
            full,
            &["in-region-access"],
        ),
        (
            "an approval does not lift another refusal",
            Box::new(|r| {
                r.subjects_touched = 51;
                r.origin = from("singapore-1", "sg");
            }),
            Outcome::Deny,
            &["bulk-access-needs-approval", "no-full-view-from-outside"],
        ),
        ("at the threshold, no approval needed", Box::new(|r| r.subjects_touched = 50), full, &["in-region-access"]),
        (
            "an approver grants another's request",
            Box::new(|r| approve(r, "bo", &["approver"])),
            full,
            &["approvals-by-a-second-person"],
        ),
        ("never one's own request", Box::new(|r| approve(r, "ana", &["approver"])), Outcome::Deny, &["default-deny"]),
        ("only with the approver role", Box::new(|r| approve(r, "bo", &["agent"])), Outcome::Deny, &["default-deny"]),
        (
            "only from the region",
            Box::new(|r| {
                approve(r, "bo", &["approver"]);
                r.origin = from("virginia-1", "us");
            }),
            Outcome::Deny,
            &["default-deny"],
        ),
    ]
}

#[test]
fn the_default_pack_decides_each_rule_both_ways() {
    let pack = PolicyPack::default_pack().unwrap();
    let mut failures = Vec::new();
    for (name, change, outcome, policies) in cases() {
        let mut request = base();
        change(&mut request);
        let decision = pack.decide(&request);
        if decision.outcome != outcome
            || decision.policies != policies.iter().map(|p| p.to_string()).collect::<Vec<_>>()
        {
            failures.push(format!("{name}: got {:?} {:?} ({})", decision.outcome, decision.policies, decision.reason));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_policy_of_the_pack_is_exercised() {
    let pack = PolicyPack::default_pack().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for (_, _, _, policies) in cases() {
        seen.extend(policies.iter().map(|p| p.to_string()));
    }
    for id in pack.policy_ids() {
        assert!(seen.contains(&id), "policy {id} is decided by no case of the table");
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
