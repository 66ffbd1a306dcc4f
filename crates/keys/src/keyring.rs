//! The local keyring: the embedded custodian's keys.
//!
//! One file holds the region's key-encryption keys (every version), the log's checkpoint
//! signing key, the key of the log's subject hashes and the root of the pseudonymisation keys
//! (a random secret of its own, with a version: [`crate::PseudonymRoot`]), sealed with AES-256-GCM under a key
//! derived from the operator's passphrase by Argon2id ([`ARGON2_PARAMS`], random salt). The
//! region and the file format are authenticated with it, so the file cannot be moved to another
//! region's boundary. A keyring sealed with PBKDF2 by an earlier version of Clover
//! (`clover-keyring/v1`) still opens, and is re-sealed with Argon2id when opened.
//!
//! Every write of the file (a new KEK version, a retired one: each step of a rotation)
//! re-seals it under a new salt, so that each copy of the file ever written is sealed under a
//! key of its own: the key derived to open or write one copy opens no other, and is dropped once
//! used. What that does not do is make an old copy unopenable: an old copy opens with the
//! passphrase it was sealed with, and holds the KEK versions retired since, which open a copy of
//! the key store from the same time, erased subjects' keys included. So copies of the keyring
//! (and of its passphrase) are kept apart from copies of the data directory, and an old one is
//! destroyed once a rotation has retired its versions (`docs/security.md`, Erasure;
//! `docs/deployment.md`, Backups).
//!
//! With `[keys] backend = "pkcs11"`, the key-encryption keys are in the HSM instead
//! ([`crate::pkcs11`]), and the keyring keeps the other keys.
//!
//! A keyring written before the pseudonymisation root had a secret of its own (issue 16) has
//! none: one is made and the file re-sealed when it is opened, so that the tokens of
//! pseudonymised views change once, and the subject hashes not at all.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clover_event::SubjectIndexKey;
use clover_model::Region;
use clover_tlog::note::{SigningKey, TYPE_ED25519, generate_pkcs8};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::data_key::{open, seal};
use crate::error::KeyError;
use crate::kek::Kek;
use crate::passphrase::{Passphrase, replace_private, write_private};
use crate::pseudonym::PseudonymRoot;

const FORMAT_V1: &str = "clover-keyring/v1";
const FORMAT: &str = "clover-keyring/v2";
const PBKDF2: &str = "pbkdf2-hmac-sha256";
const ARGON2ID: &str = "argon2id";

/// Argon2id's cost for a new keyring: memory in KiB, passes, lanes. RFC 9106's second
/// recommended setting (64 MiB, 3 passes, 4 lanes).
pub const ARGON2_PARAMS: (u32, u32, u32) = (64 * 1024, 3, 4);

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    format: String,
    region: Region,
    kdf: Kdf,
    sealed: String,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Kdf {
    algorithm: String,
    /// PBKDF2's rounds (v1 files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iterations: Option<u32>,
    /// Argon2id's memory in KiB, passes and lanes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    memory_kib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    passes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lanes: Option<u32>,
    salt: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedKeys {
    /// The highest KEK version (kept for v1 files, which named it).
    current: u32,
    keks: BTreeMap<u32, String>,
    /// The log's checkpoint signing key, Ed25519 PKCS#8.
    checkpoint_key: String,
    /// The key of the log's subject hashes.
    subject_index_key: String,
    /// The root of the pseudonymisation keys (none in a keyring written before issue 16: one is
    /// made when it is opened).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pseudonym_root: Option<SealedPseudonymRoot>,
}

/// The pseudonymisation root as sealed in the file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedPseudonymRoot {
    version: u32,
    /// 32 random bytes, base64.
    secret: String,
}

/// The region's keys, unsealed in memory. Zeroized on drop.
pub struct Keyring {
    path: PathBuf,
    region: Region,
    /// The key derivation the file is re-sealed with: its algorithm and cost (each re-seal draws
    /// a new salt).
    kdf: Kdf,
    /// The passphrase, to re-seal the file under a new salt at each write. No key derived from
    /// it is kept: each opens one copy of the file only, and is dropped once used. (The process
    /// read the passphrase from `CLOVER_PASSPHRASE` or the passphrase file, and could again.)
    passphrase: Passphrase,
    keks: RwLock<BTreeMap<u32, Zeroizing<[u8; 32]>>>,
    checkpoint_key: Zeroizing<Vec<u8>>,
    subject_index_key: Zeroizing<Vec<u8>>,
    /// The pseudonymisation root's version and secret: apart from the subject-index key, so
    /// that it can be rotated without changing a subject hash.
    pseudonym_root: (u32, Zeroizing<[u8; 32]>),
    /// Held while the file is rewritten: one writer at a time, and a version is used only once
    /// it is in the file.
    saving: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("path", &self.path)
            .field("region", &self.region)
            .field("versions", &self.versions().ok())
            .finish_non_exhaustive()
    }
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, KeyError> {
    let mut out = Zeroizing::new([0u8; N]);
    aws_lc_rs::rand::fill(out.as_mut()).map_err(|_| KeyError::Crypto("random generator failed"))?;
    Ok(out)
}

/// The error of a `part` of the keyring file at `path` that does not decode.
fn undecodable<'a, E: std::error::Error + Send + Sync + 'static>(
    path: &'a Path,
    part: &'static str,
) -> impl FnOnce(E) -> KeyError + 'a {
    move |cause| KeyError::Undecodable { path: path.to_owned(), part, cause: Box::new(cause) }
}

fn derive(passphrase: &Passphrase, kdf: &Kdf, path: &Path) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let malformed = |detail: String| KeyError::Malformed { path: path.to_owned(), detail };
    let salt = B64.decode(&kdf.salt).map_err(undecodable(path, "salt"))?;
    let mut out = Zeroizing::new([0u8; 32]);
    match kdf.algorithm.as_str() {
        ARGON2ID => {
            let (Some(m), Some(t), Some(p)) = (kdf.memory_kib, kdf.passes, kdf.lanes) else {
                return Err(malformed("argon2id needs memory_kib, passes and lanes".to_owned()));
            };
            let params = argon2::Params::new(m, t, p, Some(32)).map_err(undecodable(path, "argon2id"))?;
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(passphrase.as_bytes(), &salt, out.as_mut())
                .map_err(undecodable(path, "argon2id"))?;
        }
        PBKDF2 => {
            let rounds = kdf.iterations.and_then(NonZeroU32::new).ok_or_else(|| malformed("no rounds".to_owned()))?;
            aws_lc_rs::pbkdf2::derive(
                aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
                rounds,
                &salt,
                passphrase.as_bytes(),
                out.as_mut(),
            );
        }
        other => return Err(malformed(format!("unknown key derivation {other:?}"))),
    }
    Ok(out)
}

fn file_aad(format: &str, region: &Region) -> Vec<u8> {
    format!("{format}|{region}").into_bytes()
}

impl Kdf {
    /// The same derivation with a new random salt.
    fn resalted(&self) -> Result<Self, KeyError> {
        Ok(Self { salt: B64.encode(*random::<16>()?), ..self.clone() })
    }
}

fn argon2_kdf((memory_kib, passes, lanes): (u32, u32, u32)) -> Result<Kdf, KeyError> {
    Ok(Kdf {
        algorithm: ARGON2ID.to_owned(),
        iterations: None,
        memory_kib: Some(memory_kib),
        passes: Some(passes),
        lanes: Some(lanes),
        salt: B64.encode(*random::<16>()?),
    })
}

impl Keyring {
    /// Creates a keyring for `region` with a first KEK, sealed with `passphrase`, at `path`.
    /// Refuses to replace an existing file.
    pub fn create(path: &Path, region: Region, passphrase: &Passphrase) -> Result<Self, KeyError> {
        Self::create_with(path, region, passphrase, ARGON2_PARAMS)
    }

    /// [`Keyring::create`] with Argon2id's memory (KiB), passes and lanes: cheap ones for tests.
    pub fn create_with(
        path: &Path,
        region: Region,
        passphrase: &Passphrase,
        argon2: (u32, u32, u32),
    ) -> Result<Self, KeyError> {
        if path.exists() {
            return Err(KeyError::AlreadyExists(path.to_owned()));
        }
        let checkpoint_key = Zeroizing::new(generate_pkcs8().map_err(|_| KeyError::Crypto("key generation failed"))?);
        let keyring = Self {
            path: path.to_owned(),
            kdf: argon2_kdf(argon2)?,
            passphrase: passphrase.duplicate(),
            region,
            keks: RwLock::new(BTreeMap::from([(1, random::<32>()?)])),
            checkpoint_key,
            subject_index_key: Zeroizing::new(random::<32>()?.to_vec()),
            pseudonym_root: (1, random::<32>()?),
            saving: std::sync::Mutex::new(()),
        };
        keyring.save(true)?;
        Ok(keyring)
    }

    /// Seals the keys into the file: a new file, or one replacing the old atomically.
    fn save(&self, new: bool) -> Result<(), KeyError> {
        let keks = self.keks.read().unwrap_or_else(PoisonError::into_inner).clone();
        self.save_with(&keks, new)
    }

    /// [`Keyring::save`] with these KEK versions, sealed under a new salt.
    fn save_with(&self, keks: &BTreeMap<u32, Zeroizing<[u8; 32]>>, new: bool) -> Result<(), KeyError> {
        let kdf = self.kdf.resalted()?;
        let sealing = derive(&self.passphrase, &kdf, &self.path)?;
        let plaintext = {
            let sealed = SealedKeys {
                current: keks.keys().next_back().copied().unwrap_or_default(),
                keks: keks.iter().map(|(v, k)| (*v, B64.encode(k.as_ref()))).collect(),
                checkpoint_key: B64.encode(&*self.checkpoint_key),
                subject_index_key: B64.encode(&*self.subject_index_key),
                pseudonym_root: Some(SealedPseudonymRoot {
                    version: self.pseudonym_root.0,
                    secret: B64.encode(self.pseudonym_root.1.as_ref()),
                }),
            };
            let plaintext =
                Zeroizing::new(serde_json::to_vec(&sealed).map_err(undecodable(&self.path, "sealed keys"))?);
            drop(sealed.keks.into_values().map(Zeroizing::new).collect::<Vec<_>>());
            drop((Zeroizing::new(sealed.checkpoint_key), Zeroizing::new(sealed.subject_index_key)));
            drop(sealed.pseudonym_root.map(|root| Zeroizing::new(root.secret)));
            plaintext
        };
        let file = KeyringFile {
            format: FORMAT.to_owned(),
            region: self.region.clone(),
            kdf,
            sealed: B64.encode(seal(sealing.as_ref(), &file_aad(FORMAT, &self.region), &plaintext)?),
        };
        let mut text = serde_json::to_vec_pretty(&file).map_err(undecodable(&self.path, "its JSON"))?;
        text.push(b'\n');
        if new { write_private(&self.path, &text) } else { replace_private(&self.path, &text) }
    }

    /// Opens the keyring at `path` with `passphrase`. A v1 (PBKDF2) keyring is re-sealed with
    /// Argon2id; a keyring with no pseudonymisation root of its own (written before issue 16)
    /// gets one, and is re-sealed (under a new salt, like every write).
    pub fn open(path: &Path, passphrase: &Passphrase) -> Result<Self, KeyError> {
        let malformed = |detail: String| KeyError::Malformed { path: path.to_owned(), detail };
        let text = std::fs::read(path).map_err(|cause| KeyError::Io { path: path.to_owned(), cause })?;
        let file: KeyringFile = serde_json::from_slice(&text).map_err(undecodable(path, "its JSON"))?;
        let legacy = match file.format.as_str() {
            FORMAT => false,
            FORMAT_V1 if file.kdf.algorithm == PBKDF2 => true,
            other => return Err(malformed(format!("unknown format {other:?}, expected {FORMAT:?}"))),
        };
        let sealed = B64.decode(&file.sealed).map_err(undecodable(path, "sealed keys"))?;
        let sealing = derive(passphrase, &file.kdf, path)?;
        let plaintext = open(sealing.as_ref(), &file_aad(&file.format, &file.region), &sealed)
            .map_err(|_| KeyError::WrongPassphrase(path.to_owned()))?;
        let keys: SealedKeys = serde_json::from_slice(&plaintext).map_err(undecodable(path, "sealed keys"))?;
        let mut keks = BTreeMap::new();
        for (version, encoded) in keys.keks {
            let encoded = Zeroizing::new(encoded);
            let bytes = Zeroizing::new(B64.decode(encoded.as_bytes()).map_err(undecodable(path, "kek"))?);
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
        let decode = |what: &'static str, text: String| {
            let text = Zeroizing::new(text);
            B64.decode(text.as_bytes()).map(Zeroizing::new).map_err(undecodable(path, what))
        };
        drop(sealing);
        let (pseudonym_root, made) = match keys.pseudonym_root {
            Some(SealedPseudonymRoot { version, secret }) => {
                let bytes = decode("pseudonym root", secret)?;
                let mut root = Zeroizing::new([0u8; 32]);
                if bytes.len() != 32 {
                    return Err(malformed(format!("pseudonym root version {version} is not 32 bytes")));
                }
                root.copy_from_slice(&bytes);
                ((version, root), false)
            }
            None => ((1, random::<32>()?), true),
        };
        let mut keyring = Self {
            path: path.to_owned(),
            region: file.region,
            kdf: file.kdf,
            passphrase: passphrase.duplicate(),
            keks: RwLock::new(keks),
            checkpoint_key: decode("checkpoint key", keys.checkpoint_key)?,
            subject_index_key: decode("subject index key", keys.subject_index_key)?,
            pseudonym_root,
            saving: std::sync::Mutex::new(()),
        };
        if legacy {
            keyring.kdf = argon2_kdf(ARGON2_PARAMS)?;
        }
        if legacy || made {
            keyring.save(false)?;
        }
        if made {
            tracing::warn!(
                path = %path.display(),
                "the keyring had no pseudonymisation root of its own (it used the subject-index key): made one; \
                 the tokens of pseudonymised views change once, subject hashes do not"
            );
        }
        Ok(keyring)
    }

    /// Opens the keyring and checks that it belongs to `region`.
    pub fn open_for(path: &Path, region: &Region, passphrase: &Passphrase) -> Result<Self, KeyError> {
        let keyring = Self::open(path, passphrase)?;
        if keyring.region != *region {
            return Err(KeyError::WrongRegion { expected: region.to_string(), found: keyring.region.to_string() });
        }
        Ok(keyring)
    }

    /// The region whose keys these are.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The log's checkpoint signing key, under the log's name `origin`.
    pub fn checkpoint_signer(&self, origin: &str) -> Result<SigningKey, KeyError> {
        SigningKey::from_pkcs8(origin, TYPE_ED25519, &self.checkpoint_key)
            .map_err(undecodable(&self.path, "checkpoint key"))
    }

    /// The key of the log's subject hashes.
    pub fn subject_index_key(&self) -> SubjectIndexKey {
        SubjectIndexKey::new(&self.subject_index_key)
    }

    /// The root of the pseudonymisation keys (they are derived from it per purpose and
    /// destination, [`PseudonymRoot::token`]): a secret of its own, not the subject-index key.
    pub fn pseudonym_root(&self) -> PseudonymRoot {
        PseudonymRoot::new(self.pseudonym_root.0, self.pseudonym_root.1.as_ref())
    }

    fn with_kek<T>(&self, version: u32, f: impl FnOnce(&[u8; 32]) -> Result<T, KeyError>) -> Result<T, KeyError> {
        let keks = self.keks.read().unwrap_or_else(PoisonError::into_inner);
        f(keks.get(&version).ok_or(KeyError::UnknownKekVersion(version))?)
    }
}

impl Kek for Keyring {
    fn describe(&self) -> String {
        // Not the file's path: this goes into answers and the public log, which have no use for
        // where the data directory is (the server's own log says so at start-up).
        "keyring".to_owned()
    }

    fn versions(&self) -> Result<Vec<u32>, KeyError> {
        Ok(self.keks.read().unwrap_or_else(PoisonError::into_inner).keys().copied().collect())
    }

    fn encrypt(&self, version: u32, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.with_kek(version, |kek| seal(kek, aad, plaintext))
    }

    fn decrypt(&self, version: u32, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.with_kek(version, |kek| open(kek, aad, sealed))
    }

    fn add_version(&self) -> Result<u32, KeyError> {
        // Written to the file first, then put to use: a key is never wrapped under a version
        // that a crash or a failed write would lose.
        let _saving = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keks = self.keks.read().unwrap_or_else(PoisonError::into_inner).clone();
        let version = keks.keys().next_back().map_or(1, |v| v + 1);
        let kek = random::<32>()?;
        keks.insert(version, kek.clone());
        self.save_with(&keks, false)?;
        self.keks.write().unwrap_or_else(PoisonError::into_inner).insert(version, kek);
        Ok(version)
    }

    fn retire_version(&self, version: u32) -> Result<(), KeyError> {
        let _saving = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keks = self.keks.read().unwrap_or_else(PoisonError::into_inner).clone();
        if keks.keys().next_back() == Some(&version) {
            return Err(KeyError::CurrentVersion(version));
        }
        keks.remove(&version).ok_or(KeyError::UnknownKekVersion(version))?;
        self.save_with(&keks, false)?;
        self.keks.write().unwrap_or_else(PoisonError::into_inner).remove(&version);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Argon2id's cheapest parameters (memory must be at least 8 KiB per lane): tests pay
    /// nothing for the key derivation.
    const CHEAP: (u32, u32, u32) = (8, 1, 1);

    fn eu() -> Region {
        "eu".parse().unwrap()
    }

    fn pw() -> Passphrase {
        Passphrase::new("pw")
    }

    fn create(path: &Path) -> Keyring {
        Keyring::create_with(path, eu(), &pw(), CHEAP).unwrap()
    }

    fn keks(keyring: &Keyring) -> BTreeMap<u32, [u8; 32]> {
        keyring.keks.read().unwrap().iter().map(|(v, k)| (*v, **k)).collect()
    }

    fn file(path: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn reopens_with_its_passphrase_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let created = create(&path);
        let sealed = created.encrypt(1, b"aad", b"hello").unwrap();

        let reopened = Keyring::open(&path, &pw()).unwrap();
        assert_eq!(reopened.versions().unwrap(), vec![1]);
        assert_eq!(reopened.current_version().unwrap(), 1);
        assert_eq!(keks(&reopened), keks(&created));
        assert_eq!(reopened.decrypt(1, b"aad", &sealed).unwrap().as_slice(), b"hello");
        assert!(matches!(reopened.decrypt(1, b"other aad", &sealed), Err(KeyError::Decrypt)));

        assert!(matches!(Keyring::open(&path, &Passphrase::new("nope")), Err(KeyError::WrongPassphrase(_))));
        assert!(matches!(Keyring::open(&path, &Passphrase::new("")), Err(KeyError::WrongPassphrase(_))));

        // The log's keys survive too.
        assert_eq!(
            reopened.checkpoint_signer("o").unwrap().verifier(),
            created.checkpoint_signer("o").unwrap().verifier()
        );
        let s: clover_model::SubjectId = "s-1".parse().unwrap();
        assert_eq!(reopened.subject_index_key().hash(&s), created.subject_index_key().hash(&s));
        assert_eq!(reopened.pseudonym_root().version(), 1);
        assert_eq!(
            reopened.pseudonym_root().token("analytics", "us", b"x"),
            created.pseudonym_root().token("analytics", "us", b"x")
        );

        // A new file is sealed with Argon2id under the parameters asked for.
        let kdf = &file(&path)["kdf"];
        assert_eq!(file(&path)["format"], FORMAT);
        assert_eq!(kdf["algorithm"], ARGON2ID);
        assert_eq!(
            (kdf["memory_kib"].as_u64(), kdf["passes"].as_u64(), kdf["lanes"].as_u64()),
            (Some(8), Some(1), Some(1))
        );
    }

    #[test]
    fn belongs_to_its_region() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        create(&path);
        assert!(Keyring::open_for(&path, &eu(), &pw()).is_ok());
        assert!(matches!(
            Keyring::open_for(&path, &"us".parse().unwrap(), &pw()),
            Err(KeyError::WrongRegion { expected, found }) if expected == "us" && found == "eu"
        ));
        // The region is authenticated with the sealed keys: relabelling the file does not move
        // it to another region.
        let text = std::fs::read_to_string(&path).unwrap().replace("\"region\": \"eu\"", "\"region\": \"us\"");
        assert!(text.contains("\"region\": \"us\""));
        std::fs::write(&path, text).unwrap();
        assert!(matches!(Keyring::open(&path, &pw()), Err(KeyError::WrongPassphrase(_))));
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let created = create(&path);
        let before = std::fs::read(&path).unwrap();
        assert!(matches!(Keyring::create(&path, eu(), &pw()), Err(KeyError::AlreadyExists(p)) if p == path));
        assert!(matches!(Keyring::create_with(&path, eu(), &pw(), CHEAP), Err(KeyError::AlreadyExists(_))));
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(keks(&Keyring::open(&path, &pw()).unwrap()), keks(&created));
    }

    #[test]
    fn the_file_holds_no_key_in_the_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let keyring = create(&path);
        keyring.add_version().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let raw = std::fs::read(&path).unwrap();
        let mut secrets: Vec<Vec<u8>> = keks(&keyring).values().map(|k| k.to_vec()).collect();
        assert_eq!(secrets.len(), 2);
        secrets.push(keyring.checkpoint_key.to_vec());
        secrets.push(keyring.subject_index_key.to_vec());
        secrets.push(keyring.pseudonym_root.1.to_vec());
        for secret in secrets {
            assert!(!text.contains(&B64.encode(&secret)));
            assert!(!text.contains(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&secret)));
            assert!(!raw.windows(secret.len()).any(|w| w == secret.as_slice()));
        }
    }

    #[test]
    fn a_new_version_becomes_current_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let keyring = create(&path);
        let under_v1 = keyring.encrypt(1, b"aad", b"one").unwrap();
        assert_eq!(keyring.add_version().unwrap(), 2);
        assert_eq!(keyring.versions().unwrap(), vec![1, 2]);
        assert_eq!(keyring.current_version().unwrap(), 2);
        let under_v2 = keyring.encrypt(2, b"aad", b"two").unwrap();
        // Each version is its own key.
        assert!(matches!(keyring.decrypt(2, b"aad", &under_v1), Err(KeyError::Decrypt)));

        let reopened = Keyring::open(&path, &pw()).unwrap();
        assert_eq!(reopened.versions().unwrap(), vec![1, 2]);
        assert_eq!(reopened.current_version().unwrap(), 2);
        assert_eq!(keks(&reopened), keks(&keyring));
        assert_eq!(reopened.decrypt(1, b"aad", &under_v1).unwrap().as_slice(), b"one");
        assert_eq!(reopened.decrypt(2, b"aad", &under_v2).unwrap().as_slice(), b"two");
        assert!(matches!(reopened.encrypt(3, b"aad", b"x"), Err(KeyError::UnknownKekVersion(3))));
    }

    #[test]
    fn only_an_old_version_retires() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let keyring = create(&path);
        let under_v1 = keyring.encrypt(1, b"aad", b"one").unwrap();
        assert!(matches!(keyring.retire_version(1), Err(KeyError::CurrentVersion(1))));
        keyring.add_version().unwrap();
        keyring.add_version().unwrap();
        assert!(matches!(keyring.retire_version(3), Err(KeyError::CurrentVersion(3))));
        assert_eq!(keyring.versions().unwrap(), vec![1, 2, 3]);

        keyring.retire_version(1).unwrap();
        assert_eq!(keyring.versions().unwrap(), vec![2, 3]);
        assert!(matches!(keyring.retire_version(1), Err(KeyError::UnknownKekVersion(1))));
        assert!(matches!(keyring.decrypt(1, b"aad", &under_v1), Err(KeyError::UnknownKekVersion(1))));

        let reopened = Keyring::open(&path, &pw()).unwrap();
        assert_eq!(reopened.versions().unwrap(), vec![2, 3]);
        assert_eq!(reopened.current_version().unwrap(), 3);
        assert_eq!(keks(&reopened), keks(&keyring));
        assert!(matches!(reopened.decrypt(1, b"aad", &under_v1), Err(KeyError::UnknownKekVersion(1))));
        // A new version after a retirement does not reuse the retired number.
        assert_eq!(reopened.add_version().unwrap(), 4);
    }

    /// The key that seals the file at `path`, derived from `passphrase` and the file's salt.
    fn sealing_key(path: &Path, passphrase: &Passphrase) -> Zeroizing<[u8; 32]> {
        let file: KeyringFile = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        derive(passphrase, &file.kdf, path).unwrap()
    }

    /// Whether `key` opens the keys sealed in the file at `path`.
    fn opens(key: &[u8; 32], path: &Path) -> bool {
        let file: KeyringFile = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        open(key, &file_aad(&file.format, &file.region), &B64.decode(&file.sealed).unwrap()).is_ok()
    }

    #[test]
    fn each_rotation_step_reseals_under_a_new_salt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let keyring = create(&path);
        let under_v1 = keyring.encrypt(1, b"aad", b"erased subject's key").unwrap();
        // A copy of the file as it was before the rotation (a backup, say).
        let before = dir.path().join("keyring.before.json");
        std::fs::copy(&path, &before).unwrap();

        // Adding a version and retiring the old one each write the file under a new salt, with
        // the same Argon2id cost.
        let mut salts = vec![file(&path)["kdf"]["salt"].clone()];
        keyring.add_version().unwrap();
        salts.push(file(&path)["kdf"]["salt"].clone());
        keyring.retire_version(1).unwrap();
        salts.push(file(&path)["kdf"]["salt"].clone());
        assert!(salts[0] != salts[1] && salts[1] != salts[2] && salts[0] != salts[2], "{salts:?}");
        let kdf = &file(&path)["kdf"];
        assert_eq!((kdf["algorithm"].as_str(), kdf["memory_kib"].as_u64()), (Some(ARGON2ID), Some(8)));

        // Each copy has a key of its own: the one that seals the file now does not open the
        // copy from before, nor the reverse.
        let now = sealing_key(&path, &pw());
        let then = sealing_key(&before, &pw());
        assert!(opens(&now, &path) && opens(&then, &before));
        assert!(!opens(&now, &before));
        assert!(!opens(&then, &path));

        // The file opens with the passphrase, without the retired version.
        let reopened = Keyring::open(&path, &pw()).unwrap();
        assert_eq!(reopened.versions().unwrap(), vec![2]);
        assert!(matches!(reopened.decrypt(1, b"aad", &under_v1), Err(KeyError::UnknownKekVersion(1))));
        // What the new salt does not do: the copy from before still opens with the same
        // passphrase and still holds version 1, which opens what it wrapped. Hence copies of the
        // keyring are kept apart from copies of the key store, and destroyed after a rotation.
        let old = Keyring::open(&before, &pw()).unwrap();
        assert_eq!(old.versions().unwrap(), vec![1]);
        assert_eq!(old.decrypt(1, b"aad", &under_v1).unwrap().as_slice(), b"erased subject's key");
        assert!(matches!(Keyring::open(&before, &Passphrase::new("nope")), Err(KeyError::WrongPassphrase(_))));
    }

    #[test]
    fn the_pseudonym_root_is_not_the_subject_index_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let keyring = create(&path);
        // A secret of its own, not the subject-index key (which it was until issue 16), so that
        // it can be rotated without changing a subject hash.
        assert_ne!(keyring.pseudonym_root.1.as_slice(), keyring.subject_index_key.as_slice());
        let root = keyring.pseudonym_root();
        let old_root = PseudonymRoot::new(1, &keyring.subject_index_key);
        assert_ne!(root.token("analytics", "us", b"Ana"), old_root.token("analytics", "us", b"Ana"));
        // Two keyrings, two roots.
        let other = create(&dir.path().join("other.json"));
        assert_ne!(other.pseudonym_root.1.as_slice(), keyring.pseudonym_root.1.as_slice());
        // Sealed in the file, with its version.
        let reopened = Keyring::open(&path, &pw()).unwrap();
        assert_eq!(*reopened.pseudonym_root.1, *keyring.pseudonym_root.1);
        assert_eq!(reopened.pseudonym_root().version(), 1);
    }

    /// Rewrites the keyring at `path` as it was before issue 16: with no pseudonymisation root.
    fn without_pseudonym_root(path: &Path) {
        let mut file: KeyringFile = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let key = derive(&pw(), &file.kdf, path).unwrap();
        let aad = file_aad(&file.format, &file.region);
        let plaintext = open(key.as_ref(), &aad, &B64.decode(&file.sealed).unwrap()).unwrap();
        let mut keys: serde_json::Value = serde_json::from_slice(&plaintext).unwrap();
        assert!(keys.as_object_mut().unwrap().remove("pseudonym_root").is_some());
        file.sealed = B64.encode(seal(key.as_ref(), &aad, &serde_json::to_vec(&keys).unwrap()).unwrap());
        std::fs::write(path, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    }

    #[test]
    fn a_keyring_without_a_pseudonym_root_gets_one_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let created = create(&path);
        let sealed = created.encrypt(1, b"aad", b"hello").unwrap();
        drop(created);
        without_pseudonym_root(&path);
        let before = std::fs::read(&path).unwrap();
        let salt = file(&path)["kdf"]["salt"].clone();

        // A wrong passphrase changes nothing.
        assert!(matches!(Keyring::open(&path, &Passphrase::new("nope")), Err(KeyError::WrongPassphrase(_))));
        assert_eq!(std::fs::read(&path).unwrap(), before);

        // Opened, it gets a random root of its own (not the subject-index key it used to be), and
        // the file is re-sealed with it, under a new salt; every other key stays.
        let opened = Keyring::open(&path, &pw()).unwrap();
        assert_ne!(opened.pseudonym_root.1.as_slice(), opened.subject_index_key.as_slice());
        assert_eq!(opened.pseudonym_root().version(), 1);
        assert_eq!(opened.decrypt(1, b"aad", &sealed).unwrap().as_slice(), b"hello");
        assert_ne!(file(&path)["kdf"]["salt"], salt);
        assert_eq!(file(&path)["kdf"]["memory_kib"].as_u64(), Some(8), "the same cost");

        // The root made is kept: the tokens change once, not at every start.
        let reopened = Keyring::open(&path, &pw()).unwrap();
        assert_eq!(*reopened.pseudonym_root.1, *opened.pseudonym_root.1);
        assert_eq!(reopened.subject_index_key.as_slice(), opened.subject_index_key.as_slice());
        let s: clover_model::SubjectId = "s-1".parse().unwrap();
        assert_eq!(reopened.subject_index_key().hash(&s), opened.subject_index_key().hash(&s));
    }

    /// Writes a keyring as Clover's v1 did: PBKDF2-HMAC-SHA256, format `clover-keyring/v1`.
    fn write_v1(path: &Path, passphrase: &str, kek: &[u8; 32], checkpoint_key: &[u8], index_key: &[u8; 32]) {
        let iterations = 1000;
        let salt = *random::<16>().unwrap();
        let mut sealing = [0u8; 32];
        aws_lc_rs::pbkdf2::derive(
            aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(iterations).unwrap(),
            &salt,
            passphrase.as_bytes(),
            &mut sealing,
        );
        let plaintext = serde_json::json!({
            "current": 1,
            "keks": { "1": B64.encode(kek) },
            "checkpoint_key": B64.encode(checkpoint_key),
            "subject_index_key": B64.encode(index_key),
        });
        let sealed =
            seal(&sealing, format!("{FORMAT_V1}|eu").as_bytes(), &serde_json::to_vec(&plaintext).unwrap()).unwrap();
        let file = serde_json::json!({
            "format": FORMAT_V1,
            "region": "eu",
            "kdf": { "algorithm": PBKDF2, "iterations": iterations, "salt": B64.encode(salt) },
            "sealed": B64.encode(sealed),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    }

    #[test]
    fn a_v1_keyring_opens_and_is_resealed_with_argon2id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let kek = *random::<32>().unwrap();
        let index_key = *random::<32>().unwrap();
        let pkcs8 = generate_pkcs8().unwrap();
        write_v1(&path, "old pw", &kek, &pkcs8, &index_key);
        let v1 = std::fs::read(&path).unwrap();
        assert!(String::from_utf8_lossy(&v1).contains("clover-keyring/v1"));

        // A wrong passphrase leaves the v1 file as it was.
        assert!(matches!(Keyring::open(&path, &Passphrase::new("nope")), Err(KeyError::WrongPassphrase(_))));
        assert_eq!(std::fs::read(&path).unwrap(), v1);

        let opened = Keyring::open(&path, &Passphrase::new("old pw")).unwrap();
        assert_eq!(keks(&opened), BTreeMap::from([(1, kek)]));
        assert_eq!(opened.checkpoint_key.as_slice(), pkcs8.as_slice());
        assert_eq!(
            opened.checkpoint_signer("o").unwrap().verifier(),
            SigningKey::from_pkcs8("o", TYPE_ED25519, pkcs8.as_slice()).unwrap().verifier()
        );
        assert_eq!(opened.subject_index_key.as_slice(), &index_key);
        assert_ne!(opened.pseudonym_root.1.as_slice(), &index_key);

        // Rewritten as v2, Argon2id with the production parameters.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("clover-keyring/v2"));
        assert!(text.contains("argon2id"));
        assert!(!text.contains("clover-keyring/v1"));
        assert!(!text.contains(PBKDF2));
        let kdf = &file(&path)["kdf"];
        let (m, t, p) = ARGON2_PARAMS;
        assert_eq!(
            (kdf["memory_kib"].as_u64(), kdf["passes"].as_u64(), kdf["lanes"].as_u64(), kdf.get("iterations")),
            (Some(m.into()), Some(t.into()), Some(p.into()), None)
        );
        assert!(!text.contains(&B64.encode(kek)));

        // The v2 file opens with the same passphrase and holds the same keys.
        let reopened = Keyring::open(&path, &Passphrase::new("old pw")).unwrap();
        assert_eq!(keks(&reopened), BTreeMap::from([(1, kek)]));
        assert_eq!(reopened.checkpoint_key.as_slice(), pkcs8.as_slice());
        assert_eq!(reopened.subject_index_key.as_slice(), &index_key);
        assert_eq!(*reopened.pseudonym_root.1, *opened.pseudonym_root.1);
        assert!(matches!(Keyring::open(&path, &Passphrase::new("nope")), Err(KeyError::WrongPassphrase(_))));
    }
}
