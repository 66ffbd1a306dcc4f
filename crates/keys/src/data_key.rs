//! Data keys and their wrapped form.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::hkdf;
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

    /// The key derived from this one (a subject's key) for `scope` ([`crate::aad::key_scope`]):
    /// HKDF-SHA256 (RFC 5869) with a fixed salt naming the derivation. One record version's key
    /// opens that version and nothing else of the subject's; the subject's key, which derives
    /// them all, stays with the custodian.
    pub fn derive(&self, scope: &[u8]) -> Result<Self, KeyError> {
        struct Len32;
        impl hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"clover/derived-key/v1").extract(self.bytes.as_ref());
        let info = [scope];
        let okm = prk.expand(&info, Len32).map_err(|_| KeyError::Crypto("key derivation failed"))?;
        let mut bytes = Zeroizing::new([0u8; 32]);
        okm.fill(bytes.as_mut()).map_err(|_| KeyError::Crypto("key derivation failed"))?;
        Ok(Self { bytes })
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

    #[test]
    fn a_derived_key_opens_only_its_scope() {
        let eu: clover_model::Region = "eu".parse().unwrap();
        let subject = DataKey::generate().unwrap();
        let scope = |record: &str, version: u32, category: &str| {
            crate::aad::key_scope(&eu, "h", Some(record), Some(version), Some(category))
        };
        let profile = subject.derive(&scope("r1", 1, "profile")).unwrap();
        let sealed = profile.seal(b"aad", b"Ana").unwrap();
        // The same scope derives the same key; any other scope, another one.
        assert_eq!(
            subject.derive(&scope("r1", 1, "profile")).unwrap().open(b"aad", &sealed).unwrap().as_slice(),
            b"Ana"
        );
        for other in [scope("r2", 1, "profile"), scope("r1", 2, "profile"), scope("r1", 1, "messages")] {
            assert!(matches!(subject.derive(&other).unwrap().open(b"aad", &sealed), Err(KeyError::Decrypt)));
        }
        assert!(
            matches!(subject.open(b"aad", &sealed), Err(KeyError::Decrypt)),
            "the subject key itself does not open it"
        );
        let attributes = crate::aad::key_scope(&eu, "h", None, None, None);
        assert!(matches!(subject.derive(&attributes).unwrap().open(b"aad", &sealed), Err(KeyError::Decrypt)));
    }
}
