//! Clover's security gateway: the only way to a region's data.
//!
//! A [`Boundary`] holds one region's store, key custodian and token verifier, and serves the
//! HTTP API. Every request that touches personal data goes through the same steps, each in a
//! file of its own under [`pipeline`]: the caller (authenticate the bearer token or client
//! certificate, place the client address), the subject's and record's metadata, the decision,
//! the log entry, the data key and the record's opening, the view; then the answer.
//!
//! The rooms of this crate:
//!
//! - [`Boundary`] and its start-up wiring ([`Boundary::open`]): `boundary.rs`, `boundary/`;
//! - [`pipeline`]: the access pipeline, one file per step;
//! - [`api`]: the HTTP API, one file per resource, and the router and OpenAPI document;
//! - [`config`], [`identity`], [`origin`], [`datadir`]: configuration, tokens, sites, keys on disk;
//! - [`subjects`]: data subjects' own rights (accesses with proofs, export, erasure and closure
//!   certificates, requests that need a person);
//! - [`problem`]: errors as RFC 9457 problem details.

pub mod aggregates;
pub mod api;
pub mod backup;
mod boundary;
pub mod config;
pub mod datadir;
pub mod government;
pub mod identity;
pub mod metrics;
pub mod origin;
pub mod pipeline;
pub mod problem;
mod refusals;
pub mod repatriation;
pub mod report;
pub mod reseal;
pub mod residency;
pub mod subjects;
pub mod transfers;
pub mod witnesses;

pub use api::serve;
pub use boundary::approvals::{grant_detail, scope_digest};
pub use boundary::open::{OpenError, checkpoint_vkey};
pub use boundary::{Boundary, ReloadError, watch_policies};
pub use config::Config;
pub use datadir::DataDir;
