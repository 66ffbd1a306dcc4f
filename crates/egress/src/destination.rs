//! Destinations and their legal basis (`[[destinations]]` in `clover.toml`).
//!
//! A destination is a place outside the region that the region's data may reach: a name, its
//! region, the legal basis of transfers to it (GDPR Chapter V: an adequacy decision, Art. 45;
//! standard contractual clauses or binding corporate rules, Art. 46 and 47; a derogation,
//! Art. 49; or none), the purposes it may receive data for, its k for k-anonymity at release and
//! its privacy budget per purpose for aggregates. Policy decides on these facts (the action
//! `export`); nothing here decides.

use std::collections::BTreeMap;
use std::fmt;

use clover_model::Region;
use serde::{Deserialize, Serialize};

/// The legal basis of transfers to a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LegalBasis {
    /// An adequacy decision for the destination's country (GDPR Art. 45).
    Adequacy,
    /// Standard contractual clauses (Art. 46(2)(c)).
    Scc,
    /// Binding corporate rules (Art. 47).
    Bcr,
    /// A derogation for a specific situation (Art. 49).
    Derogation,
    /// None: nothing may be transferred there.
    None,
}

impl LegalBasis {
    /// The basis as configuration, policy and the log spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Adequacy => "adequacy",
            Self::Scc => "scc",
            Self::Bcr => "bcr",
            Self::Derogation => "derogation",
            Self::None => "none",
        }
    }

    /// Whether transfers may rest on it at all.
    pub fn is_some(self) -> bool {
        self != Self::None
    }
}

impl fmt::Display for LegalBasis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A privacy budget: what aggregate releases to a destination for one purpose may spend in all.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// The total epsilon.
    pub epsilon: f64,
    /// The total delta (for the Gaussian mechanism; 0 allows only pure-DP releases).
    #[serde(default)]
    pub delta: f64,
}

/// A destination, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Its name: 1 to 64 of `a-z 0-9 -`.
    pub name: String,
    /// The region it is in.
    pub region: Region,
    /// The legal basis of transfers to it.
    pub legal_basis: LegalBasis,
    /// The purposes it may receive data for.
    #[serde(default)]
    pub purposes: Vec<String>,
    /// Records whose quasi-identifiers fewer than `k` records of a transfer share are suppressed.
    #[serde(default = "default_k")]
    pub k: u32,
    /// Its privacy budget per purpose, for aggregates.
    #[serde(default)]
    pub budgets: BTreeMap<String, Budget>,
}

/// The default k: 5.
fn default_k() -> u32 {
    5
}

/// A destination's configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// The name does not have the form of one.
    #[error("destination name {0:?}: 1 to 64 characters of a-z 0-9 -")]
    Name(String),
    /// Two destinations have one name.
    #[error("destination {0:?} is configured twice")]
    Twice(String),
    /// k is 0.
    #[error("destination {0:?}: k is at least 1")]
    K(String),
    /// A budget that is negative or not a number.
    #[error(
        "destination {destination:?}: the budget of purpose {purpose:?} is not a finite, non-negative epsilon and delta (delta below 1)"
    )]
    Budget {
        /// The destination.
        destination: String,
        /// The purpose.
        purpose: String,
    },
}

impl Destination {
    /// Whether `purpose` may be sent there.
    pub fn allows(&self, purpose: &str) -> bool {
        self.purposes.iter().any(|p| p == purpose)
    }

    /// Checks the destination's own settings.
    pub fn check(&self) -> Result<(), DestinationError> {
        if !is_name(&self.name) {
            return Err(DestinationError::Name(self.name.clone()));
        }
        if self.k == 0 {
            return Err(DestinationError::K(self.name.clone()));
        }
        for (purpose, budget) in &self.budgets {
            let fine = budget.epsilon.is_finite()
                && budget.epsilon >= 0.0
                && budget.delta.is_finite()
                && (0.0..1.0).contains(&budget.delta);
            if !fine {
                return Err(DestinationError::Budget { destination: self.name.clone(), purpose: purpose.clone() });
            }
        }
        Ok(())
    }
}

/// Whether `name` has the form of a destination's name.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks a list of destinations: each on its own, and no name twice.
pub fn check_all(destinations: &[Destination]) -> Result<(), DestinationError> {
    let mut seen = std::collections::HashSet::new();
    for destination in destinations {
        destination.check()?;
        if !seen.insert(destination.name.as_str()) {
            return Err(DestinationError::Twice(destination.name.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn destinations_read_from_toml_with_their_defaults() {
        let text = r#"
            name = "us-analytics"
            region = "us"
            legal_basis = "scc"
            purposes = ["analytics"]
            budgets = { analytics = { epsilon = 1.0, delta = 1e-6 } }
        "#;
        let d: Destination = toml::from_str(text).unwrap();
        assert_eq!(d.k, 5);
        assert_eq!(d.legal_basis, LegalBasis::Scc);
        assert!(d.allows("analytics") && !d.allows("advertising"));
        d.check().unwrap();
        assert!(toml::from_str::<Destination>("name='x'\nregion='us'\nlegal_basis='maybe'").is_err());
    }

    #[test]
    fn bad_destinations_are_named() {
        let d = |name: &str, k: u32| Destination {
            name: name.to_owned(),
            region: "us".parse().unwrap(),
            legal_basis: LegalBasis::None,
            purposes: vec![],
            k,
            budgets: BTreeMap::new(),
        };
        assert_eq!(d("US", 5).check(), Err(DestinationError::Name("US".into())));
        assert_eq!(d("us", 0).check(), Err(DestinationError::K("us".into())));
        assert_eq!(check_all(&[d("a", 1), d("a", 2)]), Err(DestinationError::Twice("a".into())));
        let mut bad = d("a", 1);
        bad.budgets.insert("x".into(), Budget { epsilon: f64::NAN, delta: 0.0 });
        assert!(matches!(bad.check(), Err(DestinationError::Budget { .. })));
    }
}
