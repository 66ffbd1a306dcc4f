//! Where the region's key-encryption keys are: the local keyring, or an HSM over PKCS#11.

use crate::error::KeyError;

/// Where the region's key-encryption keys are, and where wrapping happens.
///
/// Each version is an AES-256-GCM key; the highest is the current one, used for new wraps.
/// Implementations: the local [`Keyring`](crate::Keyring), and [`Pkcs11Kek`](crate::pkcs11::Pkcs11Kek) (the keys never leave the
/// HSM).
pub trait Kek: Send + Sync + std::fmt::Debug {
    /// A short description for logs and `clover keys status`: the kind of backend and a name
    /// (a token's label), never a file path, since it goes into answers and the public log.
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
