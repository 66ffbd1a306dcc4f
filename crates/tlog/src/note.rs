//! C2SP signed notes (c2sp.org/signed-note), Ed25519 keys, and tlog-cosignature/v1
//! (c2sp.org/tlog-cosignature).
//!
//! A note is UTF-8 text ending in a newline, a blank line, then one signature line per signer:
//! `— <key name> <base64(key id || signature)>`. The key id is the first four bytes of
//! `SHA-256(key name || 0x0A || type || public key)`, with type `0x01` for Ed25519 note
//! signatures and `0x04` for timestamped cosignatures. A verifier key is written
//! `<name>+<hex key id>+<base64(type || public key)>`.
//!
//! A cosignature signs `cosignature/v1\ntime <unix seconds>\n` followed by the checkpoint body,
//! and its signature bytes are `key id || timestamp (8 bytes, big-endian) || Ed25519 signature`.
//!
//! Signing goes through [`NoteSigner`], so that a key held elsewhere (an HSM over PKCS#11, in
//! `clover-keys`) signs checkpoints without this crate knowing its errors: they travel as a
//! [`SignError`] with their source.

use aws_lc_rs::digest::{Context, SHA256};
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// Signature type of Ed25519 signed-note keys.
pub const TYPE_ED25519: u8 = 0x01;
/// Signature type of tlog-cosignature/v1 keys.
pub const TYPE_COSIGNATURE: u8 = 0x04;

/// What is wrong with a note, key or signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// The note's text or signature block is malformed.
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    /// A verifier key is malformed.
    #[error("malformed verifier key {0:?}: expected name+hexid+base64key")]
    BadVerifierKey(String),
    /// A key name is not allowed.
    #[error("invalid key name {0:?}: it must be non-empty, without spaces or '+'")]
    BadKeyName(String),
    /// No signature by the named key.
    #[error("the note has no signature by {0:?}")]
    NotSigned(String),
    /// A signature by the named key does not verify.
    #[error("the signature by {0:?} does not verify")]
    BadSignature(String),
    /// A private key is unusable.
    #[error("unusable signing key")]
    BadSigningKey,
}

/// A signer that could not sign: its own error, whatever holds the key (an HSM, say).
#[derive(Debug, thiserror::Error)]
#[error("the signing key {key:?} could not sign")]
pub struct SignError {
    /// The key's name.
    pub key: String,
    /// What the key's holder reported.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

/// Whether `name` may name a key: non-empty, no Unicode spaces, no `+`.
pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The 4-byte key id of a key.
pub fn key_id(name: &str, key_type: u8, public_key: &[u8]) -> [u8; 4] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[key_type]);
    ctx.update(public_key);
    let digest = ctx.finish();
    let mut id = [0u8; 4];
    id.copy_from_slice(digest.as_ref().get(..4).unwrap_or(&[0; 4]));
    id
}

/// A public key that verifies signatures of one kind under one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    /// The key's name.
    pub name: String,
    /// `TYPE_ED25519` or `TYPE_COSIGNATURE`.
    pub key_type: u8,
    /// The Ed25519 public key.
    pub public_key: [u8; 32],
}

impl VerifierKey {
    /// The key id.
    pub fn id(&self) -> [u8; 4] {
        key_id(&self.name, self.key_type, &self.public_key)
    }

    /// Parses `name+hexid+base64(type || key)`, checking that the id matches.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let bad = || NoteError::BadVerifierKey(vkey.to_owned());
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(hex_id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        if !valid_key_name(name) || hex_id.len() != 8 {
            return Err(bad());
        }
        let id = u32::from_str_radix(hex_id, 16).map_err(|_| bad())?.to_be_bytes();
        let key = B64.decode(key).map_err(|_| bad())?;
        let (&key_type, public) = key.split_first().ok_or_else(bad)?;
        let public_key: [u8; 32] = public.try_into().map_err(|_| bad())?;
        if key_type != TYPE_ED25519 && key_type != TYPE_COSIGNATURE {
            return Err(bad());
        }
        let parsed = Self { name: name.to_owned(), key_type, public_key };
        if parsed.id() != id {
            return Err(bad());
        }
        Ok(parsed)
    }

    /// Verifies an Ed25519 signature of `message`.
    fn verify_raw(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key).verify(message, signature).is_ok()
    }
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut key = vec![self.key_type];
        key.extend_from_slice(&self.public_key);
        write!(f, "{}+{:08x}+{}", self.name, u32::from_be_bytes(self.id()), B64.encode(key))
    }
}

/// An Ed25519 private key with a name, that signs notes or cosignatures.
pub struct SigningKey {
    name: String,
    key_type: u8,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.verifier())
    }
}

/// Whatever signs a log's checkpoints: a key in memory ([`SigningKey`]) or one in an HSM.
pub trait NoteSigner: Send + Sync + std::fmt::Debug + 'static {
    /// The key's name (the log's origin).
    fn name(&self) -> &str;

    /// The matching verifier key.
    fn verifier(&self) -> VerifierKey;

    /// An Ed25519 signature of `message`.
    fn sign_bytes(&self, message: &[u8]) -> Result<[u8; 64], SignError>;

    /// Signs `text` as a note: returns the signature line.
    fn signature_line(&self, text: &str) -> Result<String, SignError> {
        let signature = self.sign_bytes(text.as_bytes())?;
        let mut bytes = self.verifier().id().to_vec();
        bytes.extend_from_slice(&signature);
        Ok(format!("\u{2014} {} {}\n", self.name(), B64.encode(bytes)))
    }
}

impl NoteSigner for Box<dyn NoteSigner> {
    fn name(&self) -> &str {
        self.as_ref().name()
    }

    fn verifier(&self) -> VerifierKey {
        self.as_ref().verifier()
    }

    fn sign_bytes(&self, message: &[u8]) -> Result<[u8; 64], SignError> {
        self.as_ref().sign_bytes(message)
    }
}

impl NoteSigner for std::sync::Arc<dyn NoteSigner> {
    fn name(&self) -> &str {
        self.as_ref().name()
    }

    fn verifier(&self) -> VerifierKey {
        self.as_ref().verifier()
    }

    fn sign_bytes(&self, message: &[u8]) -> Result<[u8; 64], SignError> {
        self.as_ref().sign_bytes(message)
    }
}

impl NoteSigner for SigningKey {
    fn name(&self) -> &str {
        &self.name
    }

    fn verifier(&self) -> VerifierKey {
        SigningKey::verifier(self)
    }

    fn sign_bytes(&self, message: &[u8]) -> Result<[u8; 64], SignError> {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        Ok(out)
    }
}

impl SigningKey {
    /// A new random key.
    pub fn generate(name: &str, key_type: u8) -> Result<Self, NoteError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| NoteError::BadSigningKey)?;
        Self::from_pkcs8(name, key_type, doc.as_ref())
    }

    /// A key from its PKCS#8 bytes.
    pub fn from_pkcs8(name: &str, key_type: u8, pkcs8: &[u8]) -> Result<Self, NoteError> {
        if !valid_key_name(name) {
            return Err(NoteError::BadKeyName(name.to_owned()));
        }
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| NoteError::BadSigningKey)?;
        Ok(Self { name: name.to_owned(), key_type, pair })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching verifier key.
    pub fn verifier(&self) -> VerifierKey {
        let mut public_key = [0u8; 32];
        public_key.copy_from_slice(self.pair.public_key().as_ref());
        VerifierKey { name: self.name.clone(), key_type: self.key_type, public_key }
    }

    /// Signs `text` as a note: returns the signature line.
    pub fn sign_note(&self, text: &str) -> String {
        let signature = self.pair.sign(text.as_bytes());
        let mut bytes = self.verifier().id().to_vec();
        bytes.extend_from_slice(signature.as_ref());
        format!("\u{2014} {} {}\n", self.name, B64.encode(bytes))
    }

    /// Cosigns a checkpoint body at `timestamp` (Unix seconds): returns the signature line.
    pub fn cosign(&self, checkpoint_text: &str, timestamp: u64) -> String {
        let message = cosigned_message(checkpoint_text, timestamp);
        let signature = self.pair.sign(message.as_bytes());
        let mut bytes = self.verifier().id().to_vec();
        bytes.extend_from_slice(&timestamp.to_be_bytes());
        bytes.extend_from_slice(signature.as_ref());
        format!("\u{2014} {} {}\n", self.name, B64.encode(bytes))
    }
}

/// A new random Ed25519 private key as PKCS#8 bytes, for a caller that keeps the key (sealed in
/// a keyring, say). The bytes are secret: the caller zeroizes them when done.
pub fn generate_pkcs8() -> Result<Vec<u8>, NoteError> {
    let doc =
        Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).map_err(|_| NoteError::BadSigningKey)?;
    Ok(doc.as_ref().to_vec())
}

fn cosigned_message(checkpoint_text: &str, timestamp: u64) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{checkpoint_text}")
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The signer's key name.
    pub name: String,
    /// The key id.
    pub id: [u8; 4],
    /// The signature bytes after the key id.
    pub bytes: Vec<u8>,
}

/// A signed note: its text and its signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, ending in a newline.
    pub text: String,
    /// The signature lines, in order.
    pub signatures: Vec<Signature>,
}

impl Note {
    /// Parses a signed note.
    pub fn parse(note: &str) -> Result<Self, NoteError> {
        let split = note.rfind("\n\n").ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let text = note.get(..=split).ok_or(NoteError::Malformed("no text"))?;
        let block = note.get(split + 2..).ok_or(NoteError::Malformed("no signatures"))?;
        if text.is_empty() || !block.ends_with('\n') {
            return Err(NoteError::Malformed("the signature block must end in a newline"));
        }
        let mut signatures = Vec::new();
        for line in block.lines() {
            let rest = line
                .strip_prefix("\u{2014} ")
                .ok_or(NoteError::Malformed("a signature line must start with '\u{2014} '"))?;
            let (name, encoded) =
                rest.split_once(' ').ok_or(NoteError::Malformed("a signature line needs a name and a signature"))?;
            if !valid_key_name(name) {
                return Err(NoteError::BadKeyName(name.to_owned()));
            }
            let bytes = B64.decode(encoded).map_err(|_| NoteError::Malformed("a signature is not base64"))?;
            if bytes.len() < 5 {
                return Err(NoteError::Malformed("a signature is too short"));
            }
            let (id, sig) = bytes.split_at(4);
            let id: [u8; 4] = id.try_into().map_err(|_| NoteError::Malformed("key id"))?;
            signatures.push(Signature { name: name.to_owned(), id, bytes: sig.to_vec() });
        }
        if signatures.is_empty() {
            return Err(NoteError::Malformed("no signatures"));
        }
        Ok(Self { text: text.to_owned(), signatures })
    }

    /// The signatures by `key` (same name and id).
    fn by<'a>(&'a self, key: &'a VerifierKey) -> impl Iterator<Item = &'a Signature> {
        let id = key.id();
        self.signatures.iter().filter(move |s| s.name == key.name && s.id == id)
    }

    /// Verifies the note signature by `key` (an Ed25519 note key).
    pub fn verify(&self, key: &VerifierKey) -> Result<(), NoteError> {
        let mut found = false;
        for sig in self.by(key) {
            found = true;
            if key.key_type != TYPE_ED25519 || !key.verify_raw(self.text.as_bytes(), &sig.bytes) {
                return Err(NoteError::BadSignature(key.name.clone()));
            }
        }
        if found { Ok(()) } else { Err(NoteError::NotSigned(key.name.clone())) }
    }

    /// Verifies the cosignature by `key` (a cosignature key) and returns its timestamp.
    pub fn verify_cosignature(&self, key: &VerifierKey) -> Result<u64, NoteError> {
        let sig = self.by(key).next().ok_or_else(|| NoteError::NotSigned(key.name.clone()))?;
        let bad = || NoteError::BadSignature(key.name.clone());
        if key.key_type != TYPE_COSIGNATURE || sig.bytes.len() != 8 + 64 {
            return Err(bad());
        }
        let (time, signature) = sig.bytes.split_at(8);
        let timestamp = u64::from_be_bytes(time.try_into().map_err(|_| bad())?);
        if !key.verify_raw(cosigned_message(&self.text, timestamp).as_bytes(), signature) {
            return Err(bad());
        }
        Ok(timestamp)
    }

    /// The note as text.
    pub fn to_text(&self) -> String {
        let mut out = self.text.clone();
        out.push('\n');
        for sig in &self.signatures {
            let mut bytes = sig.id.to_vec();
            bytes.extend_from_slice(&sig.bytes);
            out.push_str(&format!("\u{2014} {} {}\n", sig.name, B64.encode(bytes)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_verify_with_an_independent_implementation() {
        let key = SigningKey::generate("clover.test/eu", TYPE_ED25519).unwrap();
        let text = "clover.test/eu\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        let note = format!("{text}\n{}", key.sign_note(text));
        let vkey = key.verifier().to_string();

        let parsed = Note::parse(&note).unwrap();
        parsed.verify(&VerifierKey::parse(&vkey).unwrap()).unwrap();
        assert_eq!(parsed.to_text(), note);

        let theirs = signed_note::StandardVerifier::new(&vkey).unwrap();
        let their_note = signed_note::Note::from_bytes(note.as_bytes()).unwrap();
        let list = signed_note::VerifierList::new(vec![Box::new(theirs)]);
        assert!(their_note.verify(&list).is_ok());

        // Tampered text fails both.
        let tampered = note.replacen("\n3\n", "\n4\n", 1);
        assert!(Note::parse(&tampered).unwrap().verify(&key.verifier()).is_err());
        assert!(signed_note::Note::from_bytes(tampered.as_bytes()).unwrap().verify(&list).is_err());
    }

    #[test]
    fn cosignatures_carry_their_time_and_verify() {
        let log = SigningKey::generate("clover.test/eu", TYPE_ED25519).unwrap();
        let witness = SigningKey::generate("witness.test", TYPE_COSIGNATURE).unwrap();
        let text = "clover.test/eu\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        let note = format!("{text}\n{}{}", log.sign_note(text), witness.cosign(text, 1_700_000_000));
        let parsed = Note::parse(&note).unwrap();
        parsed.verify(&log.verifier()).unwrap();
        assert_eq!(parsed.verify_cosignature(&witness.verifier()).unwrap(), 1_700_000_000);
        let vkey = VerifierKey::parse(&witness.verifier().to_string()).unwrap();
        assert_eq!(vkey.key_type, TYPE_COSIGNATURE);
        let other = SigningKey::generate("witness.test", TYPE_COSIGNATURE).unwrap();
        assert!(parsed.verify_cosignature(&other.verifier()).is_err());
    }

    #[test]
    fn malformed_verifier_keys_are_refused() {
        for bad in ["", "name", "a+b+c", "na me+01020304+AQ==", "x+0000000g+AQ=="] {
            assert!(VerifierKey::parse(bad).is_err(), "{bad}");
        }
    }
}
