//! The root of the pseudonymisation keys: the keyed tokens of a pseudonymised view.
//!
//! A pseudonymised view replaces a field's value (and the record's and subject's ids) with a
//! token: `tok_` and the hex of the first 16 bytes of HMAC-SHA-256(k, input), where k is
//! HMAC-SHA-256(root, `"clover/pseudonym/v2\n"` ‖ purpose ‖ `"\n"` ‖ destination), one key per
//! declared purpose and destination region. Tokens are stable within one purpose and
//! destination (the receiving side can link its own reads) and unlinkable across them.
//!
//! The root is a random secret of its own, kept in the keyring with a version, apart from the
//! key of the log's subject hashes: until issue 16 the two were one key (the subject-index key
//! was handed to the custodian as the pseudonyms' root, `clover/pseudonym/v1`), so the root
//! could never be rotated without changing every subject hash in the key store, the data store
//! and the permanent log. Now a new root (a new version) changes the tokens and nothing else.

use aws_lc_rs::hmac;
use zeroize::Zeroizing;

/// What a pseudonymised view's tokens are keyed for when the read declared no purpose.
pub const NO_PURPOSE: &str = "none";

/// What a pseudonymised view's tokens are keyed for when the read came from no known region.
pub const UNKNOWN_DESTINATION: &str = "unknown";

/// The domain of the per-purpose keys (`v1` was keyed by the subject-index key).
const DOMAIN: &str = "clover/pseudonym/v2";

/// The root of the pseudonymisation keys, at a version. Zeroized on drop; prints its version
/// only.
pub struct PseudonymRoot {
    version: u32,
    key: hmac::Key,
    _bytes: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for PseudonymRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PseudonymRoot").field("version", &self.version).finish_non_exhaustive()
    }
}

impl PseudonymRoot {
    /// The root of `version` from its secret bytes.
    pub fn new(version: u32, secret: &[u8]) -> Self {
        Self { version, key: hmac::Key::new(hmac::HMAC_SHA256, secret), _bytes: Zeroizing::new(secret.to_vec()) }
    }

    /// Which root this is: a rotation makes a new version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The token of `input` under the key of (`purpose`, `destination`).
    pub fn token(&self, purpose: &str, destination: &str, input: &[u8]) -> String {
        let derived = hmac::sign(&self.key, format!("{DOMAIN}\n{purpose}\n{destination}").as_bytes());
        let key = Zeroizing::new(derived.as_ref().to_vec());
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), input);
        format!("tok_{}", hex::encode(tag.as_ref().get(..16).unwrap_or_default()))
    }

    /// The two secrets of a record transfer's treatments for (`purpose`, `destination`): one
    /// for its tokens, one for its FF1 key. Derived from the root with labels of their own, so
    /// that they are unrelated to a pseudonymised read's tokens and to each other.
    pub fn transfer_secrets(&self, purpose: &str, destination: &str) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
        let derive = |label: &str| {
            let tag = hmac::sign(&self.key, format!("clover/transfer-{label}/v1\n{purpose}\n{destination}").as_bytes());
            let mut secret = Zeroizing::new([0u8; 32]);
            secret.copy_from_slice(tag.as_ref().get(..32).unwrap_or(&[0u8; 32]));
            secret
        };
        (derive("token"), derive("ff1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_per_purpose_and_destination_and_unlinkable_across() {
        let root = PseudonymRoot::new(1, &[7; 32]);
        let token = root.token("analytics", "us", b"Ana");
        assert!(token.starts_with("tok_") && token.len() == 4 + 32, "{token}");
        assert_eq!(root.token("analytics", "us", b"Ana"), token);
        assert_ne!(root.token("safety", "us", b"Ana"), token);
        assert_ne!(root.token("analytics", "sg", b"Ana"), token);
        assert_ne!(root.token("analytics", "us", b"Ann"), token);
        // Another root (a rotation) gives other tokens; the version is all that prints.
        assert_ne!(PseudonymRoot::new(2, &[8; 32]).token("analytics", "us", b"Ana"), token);
        assert_eq!(format!("{root:?}"), "PseudonymRoot { version: 1, .. }");
    }
}
