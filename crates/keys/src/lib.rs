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
//! The embedded custodian is a local [`Keyring`] sealed with a passphrase.

pub mod aad;
mod data_key;
mod error;
mod keyring;
mod passphrase;

pub use data_key::{DataKey, WrappedKey};
pub use error::KeyError;
pub use keyring::{KDF_ITERATIONS, Keyring};
pub use passphrase::{PASSPHRASE_ENV, PASSPHRASE_FILE, Passphrase, PassphraseSource, write_private};

use clover_log::Receipt;
use clover_model::{Region, SubjectId};

/// The holder of a region's key-encryption keys.
///
/// Implementations: the local [`Keyring`] (embedded default); an HSM over PKCS#11 later.
pub trait KeyCustody: Send + Sync {
    /// The region whose keys these are.
    fn region(&self) -> &Region;

    /// Makes a new data key for the receipt's subject and returns it with its wrapped form, for
    /// a logged, permitted write.
    fn new_data_key(&self, receipt: &Receipt) -> Result<(DataKey, WrappedKey), KeyError>;

    /// Unwraps `subject`'s data key. The receipt must be for an access to that subject.
    fn unwrap(&self, subject: &SubjectId, wrapped: &WrappedKey, receipt: &Receipt) -> Result<DataKey, KeyError>;

    /// Seals a subject's metadata (what policy decides on, such as the date they come of
    /// age) under the region's key, so that it is not in the clear at rest but can be read to
    /// decide, before any data key is unwrapped.
    fn seal_metadata(&self, subject: &SubjectId, plaintext: &[u8]) -> Result<Vec<u8>, KeyError>;

    /// A pseudonymous token for `input`, under the key of (`purpose`, `destination`): stable
    /// within one purpose and destination, unlinkable across them. The keys never leave the
    /// custodian.
    fn pseudonym(&self, purpose: &str, destination: &str, input: &[u8]) -> String;

    /// Opens what [`KeyCustody::seal_metadata`] sealed for the same subject.
    fn open_metadata(&self, subject: &SubjectId, sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError>;
}
