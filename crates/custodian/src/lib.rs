//! The key custodian: the key store (wrapped data keys, metadata salts, erasures, the journal),
//! the cache of unwrapped keys, KEK rotation and erasure, in the boundary's process or in its
//! own (`clover custodian serve`), and the boundary's client of one in its own process.
//!
//! The key primitives it works with (data keys, KEKs, the keyring, PKCS#11, associated data, the
//! [`KeyCustody`](clover_keys::KeyCustody) trait) are `clover-keys`'; this crate is what holds
//! them: [`Custodian`].
//!
//! A custodian in its own process holds the region's key-encryption keys (its own keyring, or
//! an HSM) and every subject's wrapped data key, in its own store, apart from the boundary's.
//! The boundary asks it for a data key by sending the log entry of the access (its index and
//! bytes); the custodian checks that entry against the log itself before it answers:
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
//! any auditor can see, and the custodian keeps its own journal of every key it hands out. It
//! keeps the last checkpoint it verified in its state file (`log-state`, in the verifiers' one
//! format: [`clover_audit::state`]), so that a fork shows across restarts too.
//!
//! The tokens of a pseudonymised view are answered against the same check of the read's entry,
//! for its purpose and region, a bounded number per receipt ([`PSEUDONYMS_PER_RECEIPT`]), each
//! journalled: the gateway's client certificate alone does not make the custodian a dictionary
//! oracle for low-entropy values.

pub mod client;
mod custodian;
pub mod server;
pub mod verify;

pub use client::RemoteCustody;
pub use custodian::access::{LoggedAccess, PSEUDONYM_ACTION, UnwrapRecord, VIEW_ACTION};
pub use custodian::cache::CacheOptions;
pub use custodian::metadata::METADATA_KEY;
pub use custodian::pseudonyms::{PSEUDONYMS_PER_RECEIPT, PSEUDONYMS_REFUSED_METRIC};
pub use custodian::receipts::{RECEIPTS_REUSED_METRIC, REMEMBERED_FOR};
pub use custodian::rotation::{Rotation, VersionCounts};
pub use custodian::store::KeyStore;
pub use custodian::transfers::EgressRules;
pub use custodian::{Custodian, KEY_CACHE_METRIC, SUBJECT_FACTS_METRIC, UNWRAP_SECONDS_METRIC, VIEWS_METRIC, id_input};
pub use server::{CustodianOptions, CustodianServer, NO_WITNESS_WARNING, admin_token, open_dir, router, witness_key};
pub use verify::{COSIGNATURE_WAIT, CosignRefusal, LogVerifier, QuorumError, ReceiptError, WitnessQuorum};

/// Gives every metric of the custodian its help text (for the process's recorder, installed
/// before this is called).
pub fn describe_metrics() {
    metrics::describe_counter!(VIEWS_METRIC, "Pseudonymised views the custodian made");
    metrics::describe_counter!(
        SUBJECT_FACTS_METRIC,
        "Subject facts (whether a minor) the custodian answered, by minor"
    );
    metrics::describe_counter!(KEY_CACHE_METRIC, "Subjects' keys looked up, by result: hit (cached unwrapped) or miss");
    metrics::describe_histogram!(
        UNWRAP_SECONDS_METRIC,
        metrics::Unit::Seconds,
        "Time to unwrap a subject's key from the key store"
    );
    metrics::describe_counter!(PSEUDONYMS_REFUSED_METRIC, "Pseudonym requests refused: more than a receipt allows");
    metrics::describe_counter!(RECEIPTS_REUSED_METRIC, "Receipts presented again after they were claimed (refused)");
    metrics::describe_counter!(
        custodian::store::ERASURE_LISTENER_LOST_METRIC,
        "Times the custodian lost its PostgreSQL listener for other custodians' erasures"
    );
}
