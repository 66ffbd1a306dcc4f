//! Requests from authorities at the boundary: registered on receipt, decided by policy,
//! disclosed through the read path, held when preservation is ordered, and reported from the
//! log (`docs/government-requests.md`).
//!
//! - `book.rs`: the register's rows (what a request asks, of whom, its approvals, outcome and
//!   hold), the log entries of its steps, the legal team's gate, and what a gag hides;
//! - `register.rs`: registration on receipt (sealed while gagged; a preservation order's holds);
//! - `answer.rs`: approvals, the decision (Cedar over the request's facts; categories cut to
//!   what the instrument allows), closing, and the list the legal team works from;
//! - `disclosure.rs`: a granted request's records, each opened under an entry of its own, in a
//!   package with a signed manifest;
//! - `grants.rs`: whether a granted request covers a subject, for a disclosure's decision;
//! - `holds.rs`: a preservation order's holds extended and released, the erasures they held
//!   back then carried out; gags ended (their facts unsealed);
//! - `report.rs`: the public transparency report, computed from the log.

pub mod answer;
pub mod book;
pub mod disclosure;
pub mod grants;
pub mod holds;
pub mod register;
pub mod report;
