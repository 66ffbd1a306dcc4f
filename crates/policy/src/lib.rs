//! Clover's access decisions.
//!
//! Every request that touches a subject's data is decided here, before anything is read,
//! written or decrypted. [`decide`] takes an [`AccessRequest`] and returns a [`Verdict`]: either
//! a [`Permit`] or a denial, each with the [`Decision`] that names the rules that decided.
//!
//! A [`Permit`] can only be made by [`decide`] (its fields are private and it has no public
//! constructor), and the key custodian's unwrap takes one: a data key cannot be unwrapped for a
//! request that this module did not allow.
//!
//! The gateway's rule is still fixed: full access only for callers whose network origin and
//! home region are both the boundary's region. [`pack`] holds the Cedar policy pack that
//! replaces it (schema, default policies, four outcomes); it is not wired into the gateway yet.

pub mod pack;

use clover_model::{Action, Category, Origin, Principal, RecordId, Region, SubjectId, View};
use serde::Serialize;

/// The rule that requires the request to come from a site of the boundary's region.
pub const RULE_ORIGIN_IN_REGION: &str = "origin-in-region";
/// The rule that requires the caller to belong to the boundary's region.
pub const RULE_PRINCIPAL_IN_REGION: &str = "principal-in-region";
/// The rule that requires the subject's home region to be the boundary's.
pub const RULE_SUBJECT_IN_REGION: &str = "subject-in-region";

/// What is asked, by whom, from where.
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    /// The region of the boundary deciding.
    pub boundary: &'a Region,
    /// The authenticated caller.
    pub principal: &'a Principal,
    /// Where the call comes from.
    pub origin: &'a Origin,
    /// What the caller wants to do.
    pub action: Action,
    /// Whose data.
    pub subject: &'a SubjectId,
    /// The subject's home region.
    pub subject_region: &'a Region,
    /// The record, for record reads.
    pub record: Option<RecordId>,
    /// The record's category, for record reads and writes.
    pub category: Option<&'a Category>,
}

/// The outcome of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "effect", content = "view", rename_all = "lowercase")]
pub enum Outcome {
    /// Allowed, with this view of the data.
    Allow(View),
    /// Refused.
    Deny,
    /// Refused until a second person in the region approves.
    #[serde(rename = "approval-required")]
    ApprovalRequired,
}

/// A decision with the rules that took it and a sentence a person can read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Allowed (with a view) or denied.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The ids of the rules that decided: for a denial, every rule that failed.
    pub policies: Vec<String>,
    /// Why, in plain words.
    pub reason: String,
}

impl Decision {
    /// `allow`, `deny` or `approval-required`, for logs and metrics.
    pub fn effect(&self) -> &'static str {
        match self.outcome {
            Outcome::Allow(_) => "allow",
            Outcome::Deny => "deny",
            Outcome::ApprovalRequired => "approval-required",
        }
    }
}

/// Proof that [`decide`] allowed one action on one subject's data.
///
/// Only [`decide`] makes these; it is neither `Clone` nor constructible elsewhere.
#[derive(Debug)]
pub struct Permit {
    decision: Decision,
    subject: SubjectId,
    action: Action,
    view: View,
}

impl Permit {
    /// The decision that allowed it.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The subject whose data it covers.
    pub fn subject(&self) -> &SubjectId {
        &self.subject
    }

    /// The action it allows.
    pub fn action(&self) -> Action {
        self.action
    }

    /// The view it grants.
    pub fn view(&self) -> View {
        self.view
    }
}

/// What [`decide`] returns.
#[derive(Debug)]
pub enum Verdict {
    /// Go ahead, within the permit.
    Allowed(Permit),
    /// Refused, with the decision that says why.
    Denied(Decision),
}

impl Verdict {
    /// The decision, whichever way it went.
    pub fn decision(&self) -> &Decision {
        match self {
            Self::Allowed(permit) => &permit.decision,
            Self::Denied(decision) => decision,
        }
    }
}

/// Decides a request.
pub fn decide(request: &AccessRequest<'_>) -> Verdict {
    let mut failed = Vec::new();
    let mut reasons = Vec::new();
    match request.origin.region() {
        Some(region) if region == request.boundary => {}
        Some(region) => {
            failed.push(RULE_ORIGIN_IN_REGION);
            reasons.push(format!(
                "the request comes from region {:?}, outside {:?}",
                region.as_str(),
                request.boundary.as_str()
            ));
        }
        None => {
            failed.push(RULE_ORIGIN_IN_REGION);
            reasons.push(
                "the request comes from an address of no configured site, treated as outside the region".to_owned(),
            );
        }
    }
    if request.principal.home_region != *request.boundary {
        failed.push(RULE_PRINCIPAL_IN_REGION);
        reasons.push(format!(
            "the caller belongs to region {:?}, not {:?}",
            request.principal.home_region.as_str(),
            request.boundary.as_str()
        ));
    }
    if request.subject_region != request.boundary {
        failed.push(RULE_SUBJECT_IN_REGION);
        reasons.push(format!(
            "the subject's home region is {:?}, not {:?}",
            request.subject_region.as_str(),
            request.boundary.as_str()
        ));
    }
    if failed.is_empty() {
        let decision = Decision {
            outcome: Outcome::Allow(View::Full),
            policies: [RULE_ORIGIN_IN_REGION, RULE_PRINCIPAL_IN_REGION, RULE_SUBJECT_IN_REGION]
                .map(str::to_owned)
                .to_vec(),
            reason: format!("caller, origin and subject are all in region {:?}", request.boundary.as_str()),
        };
        Verdict::Allowed(Permit {
            decision,
            subject: request.subject.clone(),
            action: request.action,
            view: View::Full,
        })
    } else {
        Verdict::Denied(Decision {
            outcome: Outcome::Deny,
            policies: failed.into_iter().map(str::to_owned).collect(),
            reason: reasons.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use clover_model::{PrincipalKind, SiteName};

    use super::*;

    fn principal(region: &str) -> Principal {
        Principal {
            id: "ana".parse().unwrap(),
            kind: PrincipalKind::Employee,
            home_region: region.parse().unwrap(),
            site: SiteName::new("dublin-1").unwrap(),
            roles: vec![],
        }
    }

    fn site(region: &str) -> Origin {
        Origin::Site { site: SiteName::new("x-1").unwrap(), region: region.parse().unwrap() }
    }

    fn run(principal_region: &str, origin: Origin, subject_region: &str) -> Verdict {
        let eu: Region = "eu".parse().unwrap();
        let subject_region: Region = subject_region.parse().unwrap();
        let subject: SubjectId = "s-1".parse().unwrap();
        let principal = principal(principal_region);
        decide(&AccessRequest {
            boundary: &eu,
            principal: &principal,
            origin: &origin,
            action: Action::Read,
            subject: &subject,
            subject_region: &subject_region,
            record: None,
            category: None,
        })
    }

    #[test]
    fn in_region_caller_from_in_region_site_gets_full_view() {
        let Verdict::Allowed(permit) = run("eu", site("eu"), "eu") else { panic!("denied") };
        assert_eq!(permit.view(), View::Full);
        assert_eq!(permit.subject().as_str(), "s-1");
        assert_eq!(permit.decision().effect(), "allow");
    }

    #[test]
    fn decisions_serialise_flat() {
        let verdict = run("eu", site("sg"), "eu");
        let json = serde_json::to_value(verdict.decision()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "effect": "deny",
                "policies": ["origin-in-region"],
                "reason": "the request comes from region \"sg\", outside \"eu\"",
            })
        );
        let json = serde_json::to_value(run("eu", site("eu"), "eu").decision()).unwrap();
        assert_eq!(json["effect"], "allow");
        assert_eq!(json["view"], "full");
    }

    #[test]
    fn every_failing_rule_is_named() {
        let cases = [
            ("eu", site("sg"), "eu", vec![RULE_ORIGIN_IN_REGION]),
            ("eu", Origin::Unknown, "eu", vec![RULE_ORIGIN_IN_REGION]),
            ("us", site("eu"), "eu", vec![RULE_PRINCIPAL_IN_REGION]),
            ("us", site("us"), "eu", vec![RULE_ORIGIN_IN_REGION, RULE_PRINCIPAL_IN_REGION]),
            ("eu", site("eu"), "us", vec![RULE_SUBJECT_IN_REGION]),
        ];
        for (principal, origin, subject, expected) in cases {
            let verdict = run(principal, origin.clone(), subject);
            let Verdict::Denied(decision) = verdict else { panic!("allowed {principal} {origin:?}") };
            assert_eq!(decision.outcome, Outcome::Deny);
            assert_eq!(
                decision.policies,
                expected.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                "{principal} {origin:?} {subject}"
            );
        }
    }
}
