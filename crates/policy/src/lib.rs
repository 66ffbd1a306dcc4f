//! Clover's access decisions.
//!
//! Every request that touches a subject's data is decided here, before anything is read,
//! written or decrypted, by the Cedar policy pack of [`pack`]: a schema, policies with stable
//! ids, and decisions with four outcomes (deny, allow full, allow pseudonymised, approval
//! required). [`pack::PolicyPack::verdict`] returns a [`Verdict`]: either a [`Permit`] or a
//! denial, each with the [`Decision`] that names the policies that decided.
//!
//! A [`Permit`] can only be made here (its fields are private and it has no public
//! constructor), and the log's receipt, which the key custodian's unwrap demands, can only be
//! made from one: a data key cannot be unwrapped for a request the policy did not allow.

pub mod pack;

use clover_model::{Action, SubjectId, View};
use serde::Serialize;

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

/// Proof that [`PolicyPack::verdict`](pack::PolicyPack::verdict) allowed one action on one subject's data.
///
/// Only [`PolicyPack::verdict`](pack::PolicyPack::verdict) makes these; it is neither `Clone` nor constructible elsewhere.
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

/// What [`PolicyPack::verdict`](pack::PolicyPack::verdict) returns.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_serialise_flat() {
        let deny = Decision { outcome: Outcome::Deny, policies: vec!["unknown-origin".into()], reason: "r".into() };
        assert_eq!(
            serde_json::to_value(&deny).unwrap(),
            serde_json::json!({"effect": "deny", "policies": ["unknown-origin"], "reason": "r"})
        );
        let allow = Decision { outcome: Outcome::Allow(View::Pseudonymised), policies: vec![], reason: "r".into() };
        let json = serde_json::to_value(&allow).unwrap();
        assert_eq!((json["effect"].as_str(), json["view"].as_str()), (Some("allow"), Some("pseudonymised")));
        let approval = Decision { outcome: Outcome::ApprovalRequired, policies: vec![], reason: "r".into() };
        assert_eq!(serde_json::to_value(&approval).unwrap()["effect"], "approval-required");
        assert_eq!(approval.effect(), "approval-required");
    }
}
