//! The local keyring: the embedded custodian.
//!
//! One file holds the region's key-encryption keys, sealed with AES-256-GCM under a key derived
//! from the operator's passphrase (PBKDF2-HMAC-SHA256, [`KDF_ITERATIONS`] rounds, random salt).
//! The region and the file format are authenticated with it, so the file cannot be moved to
//! another region's boundary.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clover_log::Receipt;
use clover_log::event::SubjectIndexKey;
use clover_log::note::{SigningKey, TYPE_ED25519};
use clover_model::{Region, SubjectId};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::data_key::{open, seal};
use crate::passphrase::write_private;
use crate::{DataKey, KeyCustody, KeyError, Passphrase, WrappedKey, aad};

const FORMAT: &str = "clover-keyring/v1";
const KDF_ALGORITHM: &str = "pbkdf2-hmac-sha256";

/// PBKDF2 rounds for a new keyring: OWASP's 2023 figure for PBKDF2-HMAC-SHA256.
pub const KDF_ITERATIONS: u32 = 600_000;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    format: String,
    region: Region,
    kdf: Kdf,
    sealed: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kdf {
    algorithm: String,
    iterations: u32,
    salt: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedKeys {
    current: u32,
    keks: BTreeMap<u32, String>,
    /// The log's checkpoint signing key, Ed25519 PKCS#8.
    checkpoint_key: String,
    /// The key of the log's subject hashes.
    subject_index_key: String,
}

/// The region's key-encryption keys, unsealed in memory.
pub struct Keyring {
    path: PathBuf,
    region: Region,
    current: u32,
    keks: BTreeMap<u32, Zeroizing<[u8; 32]>>,
    checkpoint_key: Zeroizing<Vec<u8>>,
    subject_index_key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("path", &self.path)
            .field("region", &self.region)
            .field("current", &self.current)
            .field("versions", &self.keks.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn derive(passphrase: &Passphrase, salt: &[u8], iterations: u32) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    let rounds = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    aws_lc_rs::pbkdf2::derive(aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt, passphrase.as_bytes(), out.as_mut());
    out
}

fn file_aad(region: &Region) -> Vec<u8> {
    format!("{FORMAT}|{region}").into_bytes()
}

impl Keyring {
    /// Creates a keyring for `region` with a first KEK, sealed with `passphrase`, at `path`.
    /// Refuses to replace an existing file.
    pub fn create(path: &Path, region: Region, passphrase: &Passphrase) -> Result<Self, KeyError> {
        Self::create_with_iterations(path, region, passphrase, KDF_ITERATIONS)
    }

    fn create_with_iterations(
        path: &Path,
        region: Region,
        passphrase: &Passphrase,
        iterations: u32,
    ) -> Result<Self, KeyError> {
        if path.exists() {
            return Err(KeyError::AlreadyExists(path.to_owned()));
        }
        let mut kek = Zeroizing::new([0u8; 32]);
        let mut salt = [0u8; 16];
        aws_lc_rs::rand::fill(kek.as_mut()).map_err(|_| KeyError::Crypto("random generator failed"))?;
        aws_lc_rs::rand::fill(&mut salt).map_err(|_| KeyError::Crypto("random generator failed"))?;
        let checkpoint_key = Zeroizing::new(
            SigningKey::generate("clover", TYPE_ED25519)
                .map_err(|_| KeyError::Crypto("key generation failed"))?
                .pkcs8()
                .to_vec(),
        );
        let mut subject_index_key = Zeroizing::new(vec![0u8; 32]);
        aws_lc_rs::rand::fill(&mut subject_index_key).map_err(|_| KeyError::Crypto("random generator failed"))?;
        let keyring = Self {
            path: path.to_owned(),
            region,
            current: 1,
            keks: BTreeMap::from([(1, kek)]),
            checkpoint_key,
            subject_index_key,
        };

        let sealed = SealedKeys {
            current: keyring.current,
            keks: keyring.keks.iter().map(|(v, k)| (*v, B64.encode(k.as_ref()))).collect(),
            checkpoint_key: B64.encode(&*keyring.checkpoint_key),
            subject_index_key: B64.encode(&*keyring.subject_index_key),
        };
        let plaintext = Zeroizing::new(
            serde_json::to_vec(&sealed)
                .map_err(|e| KeyError::Malformed { path: path.to_owned(), detail: e.to_string() })?,
        );
        drop(sealed.keks.into_values().map(Zeroizing::new).collect::<Vec<_>>());
        drop((Zeroizing::new(sealed.checkpoint_key), Zeroizing::new(sealed.subject_index_key)));
        let wrapping = derive(passphrase, &salt, iterations);
        let file = KeyringFile {
            format: FORMAT.to_owned(),
            region: keyring.region.clone(),
            kdf: Kdf { algorithm: KDF_ALGORITHM.to_owned(), iterations, salt: B64.encode(salt) },
            sealed: B64.encode(seal(wrapping.as_ref(), &file_aad(&keyring.region), &plaintext)?),
        };
        let mut text = serde_json::to_vec_pretty(&file)
            .map_err(|e| KeyError::Malformed { path: path.to_owned(), detail: e.to_string() })?;
        text.push(b'\n');
        write_private(path, &text)?;
        Ok(keyring)
    }

    /// Opens the keyring at `path` with `passphrase`.
    pub fn open(path: &Path, passphrase: &Passphrase) -> Result<Self, KeyError> {
        let malformed = |detail: String| KeyError::Malformed { path: path.to_owned(), detail };
        let text = std::fs::read(path).map_err(|cause| KeyError::Io { path: path.to_owned(), cause })?;
        let file: KeyringFile = serde_json::from_slice(&text).map_err(|e| malformed(e.to_string()))?;
        if file.format != FORMAT {
            return Err(malformed(format!("unknown format {:?}, expected {FORMAT:?}", file.format)));
        }
        if file.kdf.algorithm != KDF_ALGORITHM {
            return Err(malformed(format!("unknown key derivation {:?}", file.kdf.algorithm)));
        }
        let salt = B64.decode(&file.kdf.salt).map_err(|e| malformed(format!("salt: {e}")))?;
        let sealed = B64.decode(&file.sealed).map_err(|e| malformed(format!("sealed keys: {e}")))?;
        let wrapping = derive(passphrase, &salt, file.kdf.iterations);
        let plaintext = open(wrapping.as_ref(), &file_aad(&file.region), &sealed)
            .map_err(|_| KeyError::WrongPassphrase(path.to_owned()))?;
        let keys: SealedKeys = serde_json::from_slice(&plaintext).map_err(|e| malformed(e.to_string()))?;
        let mut keks = BTreeMap::new();
        for (version, encoded) in keys.keks {
            let encoded = Zeroizing::new(encoded);
            let bytes = Zeroizing::new(B64.decode(encoded.as_bytes()).map_err(|e| malformed(format!("kek: {e}")))?);
            let mut kek = Zeroizing::new([0u8; 32]);
            if bytes.len() != 32 {
                return Err(malformed(format!("kek version {version} is not 32 bytes")));
            }
            kek.copy_from_slice(&bytes);
            keks.insert(version, kek);
        }
        if !keks.contains_key(&keys.current) {
            return Err(malformed(format!("current kek version {} is missing", keys.current)));
        }
        let decode = |what: &str, text: String| {
            let text = Zeroizing::new(text);
            B64.decode(text.as_bytes()).map(Zeroizing::new).map_err(|e| malformed(format!("{what}: {e}")))
        };
        Ok(Self {
            path: path.to_owned(),
            region: file.region,
            current: keys.current,
            keks,
            checkpoint_key: decode("checkpoint key", keys.checkpoint_key)?,
            subject_index_key: decode("subject index key", keys.subject_index_key)?,
        })
    }

    /// Opens the keyring and checks that it belongs to `region`.
    pub fn open_for(path: &Path, region: &Region, passphrase: &Passphrase) -> Result<Self, KeyError> {
        let keyring = Self::open(path, passphrase)?;
        if keyring.region != *region {
            return Err(KeyError::WrongRegion { expected: region.to_string(), found: keyring.region.to_string() });
        }
        Ok(keyring)
    }

    /// The current KEK version, used for new wraps.
    pub fn current_version(&self) -> u32 {
        self.current
    }

    /// The log's checkpoint signing key, under the log's name `origin`.
    pub fn checkpoint_signer(&self, origin: &str) -> Result<SigningKey, KeyError> {
        SigningKey::from_pkcs8(origin, TYPE_ED25519, &self.checkpoint_key)
            .map_err(|e| KeyError::Malformed { path: self.path.clone(), detail: format!("checkpoint key: {e}") })
    }

    /// The key of the log's subject hashes.
    pub fn subject_index_key(&self) -> SubjectIndexKey {
        SubjectIndexKey::new(&self.subject_index_key)
    }

    fn kek(&self, version: u32) -> Result<&[u8; 32], KeyError> {
        self.keks.get(&version).map(|k| &**k).ok_or(KeyError::UnknownKekVersion(version))
    }
}

impl KeyCustody for Keyring {
    fn region(&self) -> &Region {
        &self.region
    }

    fn new_data_key(&self, receipt: &Receipt) -> Result<(DataKey, WrappedKey), KeyError> {
        let key = DataKey::generate()?;
        let aad = aad::data_key(&self.region, receipt.permit().subject(), self.current);
        let bytes = seal(self.kek(self.current)?, &aad, key.bytes())?;
        Ok((key, WrappedKey { kek_version: self.current, bytes }))
    }

    fn unwrap(&self, subject: &SubjectId, wrapped: &WrappedKey, receipt: &Receipt) -> Result<DataKey, KeyError> {
        let permit = receipt.permit();
        if permit.subject() != subject {
            return Err(KeyError::PermitMismatch { permitted: permit.subject().clone(), requested: subject.clone() });
        }
        let aad = aad::data_key(&self.region, subject, wrapped.kek_version);
        let plain = open(self.kek(wrapped.kek_version)?, &aad, &wrapped.bytes)?;
        let mut bytes = Zeroizing::new([0u8; 32]);
        if plain.len() != 32 {
            return Err(KeyError::Decrypt);
        }
        bytes.copy_from_slice(&plain);
        Ok(DataKey::from_bytes(bytes))
    }

    fn pseudonym(&self, purpose: &str, destination: &str, input: &[u8]) -> String {
        use aws_lc_rs::hmac;
        let root = hmac::Key::new(hmac::HMAC_SHA256, &self.subject_index_key);
        let derived = hmac::sign(&root, format!("clover/pseudonym/v1\n{purpose}\n{destination}").as_bytes());
        let key = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
        let tag = hmac::sign(&key, input);
        let hex: String = tag.as_ref().iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("tok_{hex}")
    }

    fn seal_metadata(&self, subject: &SubjectId, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let aad = aad::subject_metadata(&self.region, subject, self.current);
        let mut out = self.current.to_be_bytes().to_vec();
        out.extend(seal(self.kek(self.current)?, &aad, plaintext)?);
        Ok(out)
    }

    fn open_metadata(&self, subject: &SubjectId, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let (version, rest) = sealed.split_first_chunk::<4>().ok_or(KeyError::Decrypt)?;
        let version = u32::from_be_bytes(*version);
        let aad = aad::subject_metadata(&self.region, subject, version);
        open(self.kek(version)?, &aad, rest)
    }
}

#[cfg(test)]
mod tests {
    use clover_log::event::{Event, EventKind};
    use clover_log::{Log, LogOptions};
    use clover_model::{Action, PrincipalKind};
    use clover_policy::pack::{PackPrincipal, PackRequest, PackResource, PolicyPack};
    use clover_policy::{Permit, Verdict};

    use super::*;

    /// A receipt for an access to `subject`, from a real log.
    async fn receipt(log: &Log, subject: &str) -> Receipt {
        let event = Event {
            v: 1,
            kind: EventKind::Access,
            time: 0,
            principal: None,
            origin: None,
            action: Some("write".into()),
            subject: None,
            record: None,
            category: None,
            decision: None,
            purpose: None,
            justification: None,
            detail: None,
        };
        log.append_permitted(&event, permit(subject)).await.unwrap()
    }

    fn log(dir: &Path) -> Log {
        let signer = SigningKey::generate("clover.test", TYPE_ED25519).unwrap();
        Log::open(&dir.join("log"), signer, LogOptions::default()).unwrap()
    }

    fn permit(subject: &str) -> Permit {
        let request = PackRequest {
            boundary_region: "eu".into(),
            principal: PackPrincipal {
                kind: PrincipalKind::Employee,
                id: "ana".into(),
                home_region: "eu".into(),
                site: "dublin-1".into(),
                roles: vec![],
            },
            action: Action::Write,
            resource: PackResource::Subject { id: subject.into(), minor: false, home_region: "eu".into() },
            origin: Some(("dublin-1".into(), "eu".into())),
            purpose: None,
            purpose_declared: false,
            purpose_allowed_for_category: false,
            purpose_allows_transfer: false,
            has_justification: false,
            approved: false,
            subjects_touched: 1,
            bulk_threshold: 50,
        };
        match PolicyPack::default_pack().unwrap().verdict(&request, &subject.parse().unwrap()) {
            Verdict::Allowed(permit) => permit,
            Verdict::Denied(d) => panic!("{d:?}"),
        }
    }

    fn keyring(dir: &Path) -> Keyring {
        Keyring::create_with_iterations(&dir.join("keyring.json"), "eu".parse().unwrap(), &Passphrase::new("pw"), 1000)
            .unwrap()
    }

    #[tokio::test]
    async fn keyring_reopens_with_its_passphrase_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let created = keyring(dir.path());
        let log = log(dir.path());
        let p = receipt(&log, "s-1").await;
        let (key, wrapped) = created.new_data_key(&p).unwrap();
        let sealed = key.seal(b"aad", b"hello").unwrap();

        let reopened = Keyring::open(&path, &Passphrase::new("pw")).unwrap();
        let again = reopened.unwrap(&"s-1".parse().unwrap(), &wrapped, &p).unwrap();
        assert_eq!(again.open(b"aad", &sealed).unwrap().as_slice(), b"hello");

        assert!(matches!(Keyring::open(&path, &Passphrase::new("nope")), Err(KeyError::WrongPassphrase(_))));
        // The log keys survive too.
        assert_eq!(
            reopened.checkpoint_signer("o").unwrap().verifier(),
            created.checkpoint_signer("o").unwrap().verifier()
        );
        let s: SubjectId = "s-1".parse().unwrap();
        assert_eq!(reopened.subject_index_key().hash(&s), created.subject_index_key().hash(&s));
        assert!(matches!(
            Keyring::open_for(&path, &"us".parse().unwrap(), &Passphrase::new("pw")),
            Err(KeyError::WrongRegion { .. })
        ));
        assert!(matches!(
            Keyring::create(&path, "eu".parse().unwrap(), &Passphrase::new("pw")),
            Err(KeyError::AlreadyExists(_))
        ));
    }

    #[tokio::test]
    async fn wrapped_keys_are_bound_to_their_subject_and_receipt() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = keyring(dir.path());
        let log = log(dir.path());
        let (_, wrapped) = keyring.new_data_key(&receipt(&log, "s-1").await).unwrap();
        // A receipt for someone else cannot unwrap s-1's key.
        let other = receipt(&log, "s-2").await;
        assert!(matches!(
            keyring.unwrap(&"s-1".parse().unwrap(), &wrapped, &other),
            Err(KeyError::PermitMismatch { .. })
        ));
        // s-1's wrapped key moved to s-2's row does not open.
        assert!(matches!(keyring.unwrap(&"s-2".parse().unwrap(), &wrapped, &other), Err(KeyError::Decrypt)));
    }

    #[test]
    fn metadata_opens_only_for_its_subject() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = keyring(dir.path());
        let s1: SubjectId = "s-1".parse().unwrap();
        let sealed = keyring.seal_metadata(&s1, b"{\"minor_until\":\"2029-05-01\"}").unwrap();
        assert_eq!(keyring.open_metadata(&s1, &sealed).unwrap().as_slice(), b"{\"minor_until\":\"2029-05-01\"}");
        assert!(keyring.open_metadata(&"s-2".parse().unwrap(), &sealed).is_err());
        assert!(!sealed.windows(4).any(|w| w == b"2029"));
    }

    #[test]
    fn the_file_holds_no_key_in_the_clear() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = keyring(dir.path());
        let text = std::fs::read_to_string(dir.path().join("keyring.json")).unwrap();
        let kek = B64.encode(keyring.kek(1).unwrap());
        assert!(!text.contains(&kek));
    }
}
