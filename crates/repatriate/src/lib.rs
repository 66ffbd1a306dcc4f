//! Repatriation, the source side: reading a store abroad and saying what in it belongs home.
//!
//! DESIGN.md's "Coming home": a source (a PostgreSQL database, JSON Lines or CSV files) is
//! read through a [`mapping`] as a stream of rows ([`source`]); each row is [`classify`]'d as
//! this region's, another region's (left where it is) or unclassifiable (with its line or key
//! and the reason); this region's records get a canonical encoding and a SHA-256 digest
//! ([`record`]) and their digests, in source order, an RFC 6962 Merkle root ([`merkle`]).
//! [`mod@plan`] counts it all. `docs/repatriation.md` defines the encoding and the tree for other
//! tools, with a worked example and a Python script that recomputes the root.
//!
//! The boundary side (writing through the gateway, verifying, purging, the receipt) uses this
//! crate's [`Source`], [`record_digest`], [`MerkleBuilder`] and [`inclusion_proof`], so that
//! both sides compute one root the same way. `record` and `merkle` are pure code; only
//! `source` reads files and databases.

pub mod classify;
pub mod error;
pub mod mapping;
pub mod merkle;
pub mod plan;
pub mod purge;
pub mod record;
pub mod source;

pub use classify::{Class, Position, Reason, Row};
pub use error::SourceError;
pub use mapping::{Mapping, MappingError};
pub use merkle::{InclusionProof, MerkleBuilder, inclusion_proof};
pub use plan::{Plan, PlanError, Planner, Progress, plan};
pub use purge::{PgPurge, Rewrite, file_sha256, rewrite_without};
pub use record::{Digest, SourceRecord, canonical_bytes, record_digest};
pub use source::{FileFormat, OpenOptions, Source, SourceSpec, redact_url};
