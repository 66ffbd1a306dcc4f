//! Events and policy requests as the gateway makes them, for benchmarks and tests that need
//! realistic ones without a gateway.

use clover_event::{EVENT_VERSION, Event, EventDecision, EventKind, EventOrigin, EventPrincipal};
use clover_model::{Action, Origin, Principal, PrincipalKind};
use clover_policy::pack::{PackPrincipal, PackRequest, PackResource};

/// The `n`th of a stream of allowed reads as the gateway logs them (about 490 bytes each): 700
/// employees reading 4,096 subjects' contact records from Dublin, for support.
pub fn access_event(n: usize) -> Event {
    let sha256 = |text: String| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let subject = hex::encode(sha256(format!("subject-{}", n % 4096)));
    let bytes: [u8; 16] =
        sha256(format!("record-{n}")).as_ref().get(..16).and_then(|b| b.try_into().ok()).unwrap_or_default();
    let record = uuid::Builder::from_random_bytes(bytes).into_uuid().to_string();
    Event {
        v: EVENT_VERSION,
        kind: EventKind::Access,
        time: 1_795_426_787 + (n / 100) as i64,
        principal: Some(EventPrincipal {
            id: format!("emp-{:05}", n % 700),
            kind: "employee".into(),
            region: "eu".into(),
            site: "dublin-1".into(),
        }),
        origin: Some(EventOrigin { site: Some("dublin-1".into()), region: Some("eu".into()) }),
        action: Some("read".into()),
        subject: Some(subject),
        record: Some(record),
        category: Some("contact".into()),
        decision: Some(EventDecision {
            effect: "allow".into(),
            view: Some("full".into()),
            policies: vec!["origin-in-region".into(), "principal-in-region".into(), "subject-in-region".into()],
        }),
        purpose: Some("support".into()),
        justification: None,
        detail: None,
    }
}

/// A small read event: record `r-{n}`, about `subject` if given.
pub fn read_event(n: u64, subject: Option<&str>) -> Event {
    Event {
        v: EVENT_VERSION,
        kind: EventKind::Access,
        time: 1_795_000_000 + n as i64,
        principal: None,
        origin: None,
        action: Some("read".into()),
        subject: subject.map(str::to_owned),
        record: Some(format!("r-{n}")),
        category: None,
        decision: None,
        purpose: None,
        justification: None,
        detail: None,
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
