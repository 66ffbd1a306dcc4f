//! Who calls, from where, to do what.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{PrincipalId, Region, SiteName};

/// Whether a principal is a person or a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    /// A member of staff.
    Employee,
    /// A service acting on its own account.
    Service,
    /// A data subject (a person, or an organisation's account), acting on their own data: the
    /// token's subject is the data subject's id.
    Subject,
}

impl fmt::Display for PrincipalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Employee => "employee",
            Self::Service => "service",
            Self::Subject => "subject",
        })
    }
}

/// An authenticated caller, as its identity provider describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The caller's id.
    pub id: PrincipalId,
    /// Person or program.
    pub kind: PrincipalKind,
    /// The region the caller belongs to (where they are employed, where the service runs).
    pub home_region: Region,
    /// The caller's own site, as the identity provider says.
    pub site: SiteName,
    /// The caller's roles.
    pub roles: Vec<String>,
}

/// Where a request comes from, as the boundary resolved it from the network (never from a
/// header the caller writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Origin {
    /// The address belongs to a configured site.
    Site {
        /// The site.
        site: SiteName,
        /// The site's region.
        region: Region,
    },
    /// The address matches no configured site; it is treated as outside the region.
    Unknown,
}

impl Origin {
    /// The origin's region, if it is known.
    pub fn region(&self) -> Option<&Region> {
        match self {
            Self::Site { region, .. } => Some(region),
            Self::Unknown => None,
        }
    }
}

/// What a principal asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read a record.
    Read,
    /// Create or change a subject or a record.
    Write,
    /// Erase a subject and all their data.
    Erase,
    /// List the log entries about a subject (who accessed their data).
    ListAccesses,
    /// Grant another principal's request for an approval.
    Approve,
    /// Administer the boundary: rotate its keys.
    Administer,
    /// Bring a record of the region's home from a store abroad (`clover repatriate`).
    Repatriate,
    /// Send the region's data out of it: a record transfer or an aggregate release to a
    /// configured destination (the egress path).
    Export,
    /// Export a subject's own data to them (GDPR Art. 15 and 20): one decision for the subject,
    /// then one logged opening per record.
    ExportSubject,
    /// Close an organisation's account: erase every record, cancel pending transfers, certify.
    CloseAccount,
    /// Handle the requests of data subjects that need a person (list them, move their state).
    HandleRequests,
    /// Register a request from an authority (a government request) as it is received.
    RegisterGovernmentRequest,
    /// Handle registered government requests: list them, approve, decide, close, extend or
    /// release their holds (the legal team).
    HandleGovernmentRequests,
    /// Answer a government request: decided on the request's own facts (a recognised
    /// authority, its approvals, whether it names minors).
    AnswerGovernmentRequest,
    /// Disclose a subject's records to an authority under a granted request: one decision for
    /// the subject, then one logged opening per record.
    Disclose,
}

impl Action {
    /// The action's name, as policies and logs spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Erase => "erase",
            Self::ListAccesses => "list-accesses",
            Self::Approve => "approve",
            Self::Administer => "administer",
            Self::Repatriate => "repatriate",
            Self::Export => "export",
            Self::ExportSubject => "export-subject",
            Self::CloseAccount => "close-account",
            Self::HandleRequests => "handle-requests",
            Self::RegisterGovernmentRequest => "register-government-request",
            Self::HandleGovernmentRequests => "handle-government-requests",
            Self::AnswerGovernmentRequest => "answer-government-request",
            Self::Disclose => "disclose",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much of a record an allowed read shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// Every field as stored.
    Full,
    /// Fields pseudonymised, masked or dropped per category rules.
    Pseudonymised,
}
