//! Data leaving the region (DESIGN.md, "Leaving the region"), the parts that are Clover's own
//! logic and no I/O: destinations and their legal basis, what each field becomes when it leaves
//! (keyed tokens, FF1 format-preserving encryption per NIST SP 800-38G, generalisation),
//! k-anonymity at release, a transfer's manifest, and the transfer register computed from the
//! public log's entries.
//!
//! The boundary decides and logs; the custodian, which holds the keys, opens each record and
//! applies the treatments ([`treatment::apply`]) with keys of the transfer's (region, purpose,
//! destination) that never leave it; the register is recomputed by an auditor from the log
//! alone ([`register::Register`]).

pub mod destination;
pub mod dp;
pub mod ff1;
pub mod kanon;
pub mod manifest;
pub mod register;
pub mod treatment;

pub use destination::{Budget, Destination, LegalBasis};
pub use manifest::{Excluded, Manifest};
pub use register::{Register, RegisterRow};
pub use treatment::{TransferKeys, TransferRule, TransferRules, Treated, Treatment};
