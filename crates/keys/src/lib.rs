//! Clover's envelope encryption and key custody.
//!
//! Each data subject has a data key (DEK, AES-256-GCM) that encrypts their fields. A DEK is never
//! stored in the clear: it is wrapped by the region's key-encryption key (KEK), which the
//! [custodian](KeyCustody) holds. The boundary keeps only the [`WrappedKey`]; to read or write a
//! subject's data it asks the custodian to unwrap, and the custodian does so only against a
//! log [`Receipt`](clover_log::Receipt): proof that the access was allowed by policy and
//! durably appended to the log first, for that same subject. Destroying the wrapped DEK
//! crypto-shreds the subject: their ciphertext, backups included, can no longer be opened.
//!
//! Every ciphertext is bound by its associated data ([`aad`]) to where it belongs (region,
//! subject, record, version), so a ciphertext copied to another row or another region fails to
//! open.
//!
//! This crate holds the key primitives: data keys ([`DataKey`], [`WrappedKey`]), the associated
//! data ([`aad`]), the KEK backends ([`Kek`]: the local [`Keyring`] sealed with a passphrase,
//! the embedded default, or an HSM over PKCS#11, [`pkcs11::Pkcs11Kek`]), the root of the
//! pseudonymisation keys ([`PseudonymRoot`]) and the boundary's view of custody
//! ([`KeyCustody`]). The custodian itself, which keeps the wrapped data keys in a key
//! store of its own, apart from the data store, is the `clover-custodian` crate.

pub mod aad;
mod custody;
mod data_key;
mod error;
mod kek;
mod keyring;
mod metadata;
mod passphrase;
pub mod pkcs11;
mod pseudonym;

pub use custody::{KeyCustody, PseudonymisedView, TransferItem, TransferOutcome};
pub use data_key::{DataKey, WrappedKey};
pub use error::KeyError;
pub use kek::Kek;
pub use keyring::{ARGON2_PARAMS, Keyring};
pub use metadata::{SubjectFacts, SubjectMetadata};
pub use passphrase::{PASSPHRASE_ENV, PASSPHRASE_FILE, Passphrase, PassphraseSource, write_private};
pub use pseudonym::{NO_PURPOSE, PseudonymRoot, UNKNOWN_DESTINATION};
