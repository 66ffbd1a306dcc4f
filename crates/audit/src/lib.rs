//! Clover's auditor tools.
//!
//! - [`verify`]: the log verifier behind `clover audit verify`. It trusts nothing the boundary
//!   says: it checks the checkpoint's signature (and witnesses' cosignatures when asked), then
//!   fetches every tile and every entry bundle (c2sp.org/tlog-tiles), recomputes every hash up
//!   to the root, and checks that the log is consistent with the checkpoint it verified last time.
//! - [`witness`]: an independent witness behind `clover audit witness`. It cosigns a
//!   checkpoint (c2sp.org/tlog-cosignature) only after checking that it is consistent with the
//!   last one it cosigned for that log, over the c2sp.org/tlog-witness protocol.
//! - [`register`] and [`report`]: the transfer register and the government-requests
//!   transparency report, recomputed from the verified log and compared with the served ones
//!   (`clover audit register`, `clover audit report`).
//! - [`state`]: the state file that every verifier keeps (the auditor, the witness and the
//!   custodian in its own process): the last checkpoint verified of each log, in one format,
//!   read and written by [`state::read_state`] and [`state::write_state`] alone.

pub mod register;
pub mod report;
pub mod state;
pub mod verify;
pub mod witness;
