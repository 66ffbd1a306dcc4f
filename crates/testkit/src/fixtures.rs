//! Events and policy requests as the gateway makes them, for benchmarks and tests that need
//! realistic ones without a gateway.

use clover_event::{EVENT_VERSION, Event, EventDecision, EventKind, EventOrigin, EventPrincipal, SubjectTag};
use clover_model::{Action, Origin, Principal, PrincipalKind};
use clover_policy::pack::{PackPrincipal, PackRequest, PackResource};

/// The `n`th of a stream of allowed reads as the gateway logs them (format 2, about 560 bytes
/// each): 700 employees reading contact records from Dublin, for support, each entry with its
/// own subject tag and annex commitment.
pub fn access_event(n: usize) -> Event {
    let sha256 = |text: String| hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()));
    Event {
        v: EVENT_VERSION,
        kind: EventKind::Access,
        time: 1_795_426_787 + (n / 100) as i64,
        principal: Some(EventPrincipal {
            pseudonym: sha256(format!("employee-{:05}", n % 700)),
            kind: "employee".into(),
            region: "eu".into(),
        }),
        origin: Some(EventOrigin { site: Some("dublin-1".into()), region: Some("eu".into()) }),
        action: Some("read".into()),
        subject: Some(SubjectTag {
            nonce: sha256(format!("nonce-{n}")).get(..32).unwrap_or_default().to_owned(),
            tag: sha256(format!("tag-{n}")),
        }),
        category: Some("contact".into()),
        decision: Some(EventDecision {
            effect: "allow".into(),
            view: Some("full".into()),
            policies: vec!["origin-in-region".into(), "principal-in-region".into(), "subject-in-region".into()],
        }),
        purpose: Some("support".into()),
        annex: Some(sha256(format!("annex-{n}"))),
        detail: None,
        transfer: None,
        government_request: None,
    }
}

/// A small read event (`n` in its detail), committing to the annex `annex` if given: the key the
/// log indexes it by.
pub fn read_event(n: u64, annex: Option<&str>) -> Event {
    Event {
        v: EVENT_VERSION,
        kind: EventKind::Access,
        time: 1_795_000_000 + n as i64,
        principal: None,
        origin: None,
        action: Some("read".into()),
        subject: None,
        category: None,
        decision: Some(clover_event::EventDecision { effect: "allow".into(), view: None, policies: Vec::new() }),
        purpose: None,
        annex: annex.map(str::to_owned),
        detail: Some(format!("r-{n}")),
        transfer: None,
        government_request: None,
    }
}

/// An EU support agent (`ana`) reading an adult's profile from Dublin, for support: the request
/// the default pack allows in full.
pub fn read_profile_request() -> PackRequest {
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
            id: "0b8e6f7a-3c1d-4f2e-9a5b-6c7d8e9f0a1b".into(),
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
        subjects_touched: 3,
        bulk_threshold: 50,
        destination: None,
    }
}

/// A principal of `kind` named `id`, at home in `region` and working at `site`, with `roles`.
/// Panics on a malformed name: fixtures are written by hand.
pub fn principal(id: &str, kind: PrincipalKind, region: &str, site: &str, roles: &[&str]) -> Principal {
    Principal {
        id: id.parse().expect("a valid principal id"),
        kind,
        home_region: region.parse().expect("a valid region"),
        site: site.parse().expect("a valid site"),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
    }
}

/// A call from `site`, a site of `region`.
pub fn origin(site: &str, region: &str) -> Origin {
    Origin::Site { site: site.parse().expect("a valid site"), region: region.parse().expect("a valid region") }
}
