//! The key custodian as its own process (`clover custodian serve`), and the boundary's client
//! of it.
//!
//! The custodian holds the region's key-encryption keys (its own keyring, or an HSM) and every
//! subject's wrapped data key, in its own store, apart from the boundary's. The boundary asks it
//! for a data key by sending the log entry of the access (its index and bytes); the custodian
//! checks that entry against the log itself before it answers:
//!
//! 1. it fetches the inclusion proof of that index from the boundary's public log endpoint,
//!    with the latest checkpoint, and checks the checkpoint's signature with the log's verifier
//!    key, which it was given out of band (`--log-vkey`);
//! 2. it checks that the entry's RFC 6962 leaf hash is at that index under the signed root;
//! 3. it reads the entry: an allowed decision, an action that needs the key asked for (a read
//!    or write to fetch it, a write to create it, an erasure to destroy it), and the subject's
//!    keyed hash, which alone names the key. The boundary cannot ask for any other subject's
//!    key than the one its log entry names.
//!
//! So the boundary's operators cannot get a data key without leaving an entry in the log that
//! any auditor can see, and the custodian keeps its own journal of every key it hands out.

pub mod client;
pub mod server;
pub mod verify;

pub use client::RemoteCustody;
pub use server::{CustodianOptions, CustodianServer, admin_token, open_dir, router};
pub use verify::{LogVerifier, ReceiptError};
