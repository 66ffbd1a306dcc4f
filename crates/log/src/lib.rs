//! Clover's transparency log.
//!
//! Every decision, write, erasure and key operation is an entry in an append-only Merkle log, in
//! the public formats any tlog client can check:
//!
//! - [`hash`] and [`tree`]: RFC 6962 / RFC 9162 hashing, inclusion and consistency proofs;
//! - [`tile`]: c2sp.org/tlog-tiles coordinates and entry bundles;
//! - [`checkpoint`]: c2sp.org/tlog-checkpoint bodies;
//! - [`note`]: c2sp.org/signed-note signatures and c2sp.org/tlog-cosignature witness
//!   cosignatures, with Ed25519.
//!
//! Those modules are pure: bytes in, bytes out. [`Log`] is the runtime: a directory holding the
//! entries, a sequencer that group-commits appends (one write and one fsync per batch, then one
//! signed checkpoint), and reads of tiles, checkpoints and proofs; or, in [`postgres`], a
//! database that several gateways share, sequenced by one of them at a time.

pub mod checkpoint;
pub mod event;
pub mod hash;
pub mod note;
pub mod postgres;
mod sequencer;
pub mod tile;
pub mod tree;

pub use sequencer::{Log, LogError, LogOptions, Receipt};
