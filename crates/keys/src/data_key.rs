//! Data keys and their wrapped form.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use zeroize::Zeroizing;

use crate::error::KeyError;

/// A 256-bit AES-GCM key in the clear. Zeroized on drop; neither `Clone` nor printable.
pub struct DataKey {
    bytes: Zeroizing<[u8; 32]>,
}

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(bytes.as_mut()).map_err(|_| KeyError::Crypto("random generator failed"))?;
        Ok(Self { bytes })
    }

    /// A key from bytes the custodian holds (its cache, a derivation).
    pub fn from_bytes(bytes: Zeroizing<[u8; 32]>) -> Self {
        Self { bytes }
    }

    /// The key's bytes, for the custodian: to wrap it under a KEK, to cache it, and (in its own
    /// process) to send it to the boundary that asked for it against a checked receipt. Nothing
    /// else should need them.
    pub fn expose(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// A key received from a custodian in its own process.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != 32 {
            return Err(KeyError::Crypto("a data key is 32 bytes"));
        }
        key.copy_from_slice(bytes);
        Ok(Self { bytes: key })
    }

    /// Encrypts `plaintext` bound to `aad`; returns nonce, ciphertext and tag.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        seal(self.bytes.as_ref(), aad, plaintext)
    }

    /// Decrypts what [`DataKey::seal`] returned with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        open(self.bytes.as_ref(), aad, sealed)
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// A data key encrypted under a KEK version: what the store keeps.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The KEK version that wrapped it.
    pub kek_version: u32,
    /// Nonce, encrypted key and tag.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey(kek v{}, {} bytes)", self.kek_version, self.bytes.len())
    }
}

/// AES-256-GCM with a random 96-bit nonce, output `nonce || ciphertext || tag`.
pub(crate) fn seal(key: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
    let key = RandomizedNonceKey::new(&AES_256_GCM, key).map_err(|_| KeyError::Crypto("bad key length"))?;
    let mut in_out = plaintext.to_vec();
    let nonce =
        key.seal_in_place_append_tag(Aad::from(aad), &mut in_out).map_err(|_| KeyError::Crypto("encryption failed"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + in_out.len());
    out.extend_from_slice(nonce.as_ref());
    out.extend_from_slice(&in_out);
    Ok(out)
}

/// Opens what [`seal`] wrote.
pub(crate) fn open(key: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let key = RandomizedNonceKey::new(&AES_256_GCM, key).map_err(|_| KeyError::Crypto("bad key length"))?;
    let (nonce, ciphertext) = sealed.split_at_checked(NONCE_LEN).ok_or(KeyError::Decrypt)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KeyError::Decrypt)?;
    let mut in_out = Zeroizing::new(ciphertext.to_vec());
    let len = key.open_in_place(nonce, Aad::from(aad), &mut in_out).map_err(|_| KeyError::Decrypt)?.len();
    in_out.truncate(len);
    Ok(in_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_its_key_and_aad() {
        let key = DataKey::generate().unwrap();
        let other = DataKey::generate().unwrap();
        let sealed = key.seal(b"here", b"secret").unwrap();
        assert_eq!(key.open(b"here", &sealed).unwrap().as_slice(), b"secret");
        assert!(matches!(key.open(b"there", &sealed), Err(KeyError::Decrypt)));
        assert!(matches!(other.open(b"here", &sealed), Err(KeyError::Decrypt)));
        assert!(matches!(key.open(b"here", &sealed[..5]), Err(KeyError::Decrypt)));
        let mut flipped = sealed.clone();
        if let Some(b) = flipped.last_mut() {
            *b ^= 1;
        }
        assert!(matches!(key.open(b"here", &flipped), Err(KeyError::Decrypt)));
    }
}
