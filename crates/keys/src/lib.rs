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
//! the embedded default, or an HSM over PKCS#11, [`pkcs11::Pkcs11Kek`]) and the boundary's view
//! of custody ([`KeyCustody`]). The custodian itself, which keeps the wrapped data keys in a key
//! store of its own, apart from the data store, is the `clover-custodian` crate.

pub mod aad;
mod data_key;
mod error;
mod keyring;
mod passphrase;
pub mod pkcs11;

pub use data_key::{DataKey, WrappedKey};
pub use error::KeyError;
pub use keyring::{ARGON2_PARAMS, Keyring};
pub use passphrase::{PASSPHRASE_ENV, PASSPHRASE_FILE, Passphrase, PassphraseSource, write_private};

use clover_log::Receipt;
use clover_model::{Region, SubjectId};

/// Where the region's key-encryption keys are, and where wrapping happens.
///
/// Each version is an AES-256-GCM key; the highest is the current one, used for new wraps.
/// Implementations: the local [`Keyring`], and [`pkcs11::Pkcs11Kek`] (the keys never leave the
/// HSM).
pub trait Kek: Send + Sync + std::fmt::Debug {
    /// A short description for logs and `clover keys status`.
    fn describe(&self) -> String;

    /// The versions held, oldest first.
    fn versions(&self) -> Result<Vec<u32>, KeyError>;

    /// The current version.
    fn current_version(&self) -> Result<u32, KeyError> {
        self.versions()?.last().copied().ok_or(KeyError::UnknownKekVersion(0))
    }

    /// Encrypts `plaintext` bound to `aad` under `version`: nonce, ciphertext and tag.
    fn encrypt(&self, version: u32, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError>;

    /// Opens what [`Kek::encrypt`] returned.
    fn decrypt(&self, version: u32, aad: &[u8], sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError>;

    /// Makes a new version, which becomes the current one.
    fn add_version(&self) -> Result<u32, KeyError>;

    /// Destroys an old version.
    fn retire_version(&self, version: u32) -> Result<(), KeyError>;
}

/// The custodian of a region's keys, as the boundary sees it.
///
/// Data keys are handed out only against a log [`Receipt`] (which only an allowed access,
/// durably logged, produces), for the receipt's own subject, and only for actions that need
/// them.
#[async_trait::async_trait]
pub trait KeyCustody: Send + Sync {
    /// The region whose keys these are.
    fn region(&self) -> &Region;

    /// Makes the data key of the receipt's subject, for a logged, permitted write that creates
    /// the subject.
    async fn create_data_key(&self, receipt: &Receipt) -> Result<DataKey, KeyError>;

    /// The data key of the receipt's subject, for a logged, permitted read or write.
    async fn data_key(&self, receipt: &Receipt) -> Result<DataKey, KeyError>;

    /// Destroys the data key of the receipt's subject, for a logged, permitted erasure: every
    /// copy of their ciphertext, backups included, can no longer be opened. Returns whether
    /// there was one.
    async fn destroy_data_key(&self, receipt: &Receipt) -> Result<bool, KeyError>;

    /// Seals a subject's metadata (what policy decides on, such as the date they come of
    /// age), so that it is not in the clear at rest but can be read to decide, before any data
    /// key is unwrapped.
    async fn seal_metadata(&self, subject: &SubjectId, plaintext: &[u8]) -> Result<Vec<u8>, KeyError>;

    /// Opens what [`KeyCustody::seal_metadata`] sealed for the same subject.
    async fn open_metadata(&self, subject: &SubjectId, sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError>;

    /// A pseudonymous token for `input`, under the key of (`purpose`, `destination`): stable
    /// within one purpose and destination, unlinkable across them. The keys never leave the
    /// custodian.
    async fn pseudonym(&self, purpose: &str, destination: &str, input: &[u8]) -> Result<String, KeyError>;
}
