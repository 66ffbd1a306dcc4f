//! The transparency log's specification, as pure code: bytes in, bytes out.
//!
//! - [`hash`]: RFC 6962 leaf and node hashes (RFC 9162 §2.1.1);
//! - [`tree`]: tree heads, inclusion and consistency proofs and their verification (RFC 6962
//!   §2.1, RFC 9162 §2.1.3–2.1.4);
//! - [`frontier`]: a tree's right edge, appended to leaf by leaf (a follower's state);
//! - [`tile`]: tile coordinates, paths and entry bundles (c2sp.org/tlog-tiles);
//! - [`checkpoint`]: checkpoint bodies (c2sp.org/tlog-checkpoint);
//! - [`note`]: signed notes with Ed25519 (c2sp.org/signed-note) and witness cosignatures
//!   (c2sp.org/tlog-cosignature);
//! - [`witness`]: the body of a witness's `add-checkpoint` request (c2sp.org/tlog-witness).
//!
//! Nothing here opens a file, reads a clock or awaits: the runtime log (`clover-log`) stores,
//! sequences and serves; auditors, witnesses, the custodian and monitors link this crate alone
//! to check what they are given. Signing goes through [`note::NoteSigner`], which an HSM backend
//! implements elsewhere.

pub mod checkpoint;
pub mod frontier;
pub mod hash;
pub mod note;
pub mod tile;
pub mod tree;
pub mod witness;
