//! Key-encryption keys in a hardware security module, over PKCS#11 (the `cryptoki` crate).
//!
//! Each KEK version is an AES-256 secret key object generated in the token, with
//! `CKA_SENSITIVE` set and `CKA_EXTRACTABLE` cleared: its value never leaves the HSM, and every
//! wrap and unwrap is a `CKM_AES_GCM` operation inside it. Objects are found by their label,
//! `clover/<region>/kek/v<N>`; the highest version is the current one.
//!
//! A process initialises a PKCS#11 module once and shares it ([`module`]); each operation takes a
//! session from a small pool, so that concurrent unwraps do not queue behind one session.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use aws_lc_rs::aead::NONCE_LEN;
use clover_model::Region;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
pub use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use crate::{Kek, KeyError};

/// Where the HSM is: `[keys]` with `backend = "pkcs11"` in `clover.toml`.
#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (a shared library), such as `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The label of the token that holds the region's keys.
    pub token_label: String,
}

fn hsm(what: &'static str) -> impl Fn(CkError) -> KeyError {
    move |e| KeyError::Hsm(format!("{what}: {e}"))
}

/// The module at `path`, loaded and initialised once per process.
pub fn module(path: &Path) -> Result<Arc<Pkcs11>, KeyError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Pkcs11>>>> = OnceLock::new();
    let mut modules = MODULES.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(module) = modules.get(path) {
        return Ok(module.clone());
    }
    let module = Pkcs11::new(path)
        .map_err(|e| KeyError::Hsm(format!("cannot load the PKCS#11 module {}: {e}", path.display())))?;
    match module.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(KeyError::Hsm(format!("cannot initialise {}: {e}", path.display()))),
    }
    let module = Arc::new(module);
    modules.insert(path.to_owned(), module.clone());
    Ok(module)
}

/// The slot holding the token labelled `label`.
pub fn token_slot(module: &Pkcs11, label: &str) -> Result<Slot, KeyError> {
    for slot in module.get_slots_with_token().map_err(hsm("listing slots"))? {
        let info = module.get_token_info(slot).map_err(hsm("reading token info"))?;
        if info.token_initialized() && info.label().trim_end() == label {
            return Ok(slot);
        }
    }
    Err(KeyError::Hsm(format!("no initialised token labelled {label:?} in the PKCS#11 module")))
}

/// The region's KEK versions in an HSM.
pub struct Pkcs11Kek {
    region: Region,
    module: Arc<Pkcs11>,
    slot: Slot,
    token_label: String,
    pin: AuthPin,
    sessions: Mutex<Vec<Session>>,
    versions: RwLock<BTreeMap<u32, ObjectHandle>>,
}

impl std::fmt::Debug for Pkcs11Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Kek")
            .field("region", &self.region)
            .field("token_label", &self.token_label)
            .field("versions", &self.versions().ok())
            .finish_non_exhaustive()
    }
}

impl Pkcs11Kek {
    /// Opens the token, logs in with `pin`, and finds the region's KEK versions; generates the
    /// first one if there is none yet.
    pub fn open(config: &Pkcs11Config, region: Region, pin: AuthPin) -> Result<Self, KeyError> {
        let module = module(&config.module)?;
        let slot = token_slot(&module, &config.token_label)?;
        let kek = Self {
            region,
            module,
            slot,
            token_label: config.token_label.clone(),
            pin,
            sessions: Mutex::new(Vec::new()),
            versions: RwLock::new(BTreeMap::new()),
        };
        let found = kek.with_session(|session| {
            let prefix = kek.label_prefix();
            let template = [Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(KeyType::AES)];
            let mut found = BTreeMap::new();
            for handle in session.find_objects(&template).map_err(hsm("finding keys"))? {
                let attributes =
                    session.get_attributes(handle, &[AttributeType::Label]).map_err(hsm("reading a key label"))?;
                for attribute in attributes {
                    if let Attribute::Label(label) = attribute
                        && let Some(version) =
                            String::from_utf8_lossy(&label).strip_prefix(&prefix).and_then(|v| v.parse::<u32>().ok())
                    {
                        found.insert(version, handle);
                    }
                }
            }
            Ok(found)
        })?;
        *kek.versions.write().unwrap_or_else(PoisonError::into_inner) = found;
        if kek.versions()?.is_empty() {
            kek.add_version()?;
        }
        Ok(kek)
    }

    fn label_prefix(&self) -> String {
        format!("clover/{}/kek/v", self.region)
    }

    /// Runs `f` on a logged-in session from the pool.
    fn with_session<T>(&self, f: impl FnOnce(&Session) -> Result<T, KeyError>) -> Result<T, KeyError> {
        let pooled = self.sessions.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let session = match pooled {
            Some(session) => session,
            None => {
                let session = self.module.open_rw_session(self.slot).map_err(hsm("opening a session"))?;
                match session.login(UserType::User, Some(&self.pin)) {
                    Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                    Err(e) => return Err(KeyError::Hsm(format!("cannot log in to {:?}: {e}", self.token_label))),
                }
                session
            }
        };
        let result = f(&session);
        let mut pool = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < 16 {
            pool.push(session);
        }
        result
    }

    fn handle(&self, version: u32) -> Result<ObjectHandle, KeyError> {
        self.versions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&version)
            .copied()
            .ok_or(KeyError::UnknownKekVersion(version))
    }
}

impl Kek for Pkcs11Kek {
    fn describe(&self) -> String {
        format!("pkcs11 token {:?}", self.token_label)
    }

    fn versions(&self) -> Result<Vec<u32>, KeyError> {
        Ok(self.versions.read().unwrap_or_else(PoisonError::into_inner).keys().copied().collect())
    }

    fn encrypt(&self, version: u32, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let key = self.handle(version)?;
        let mut iv = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut iv).map_err(|_| KeyError::Crypto("random generator failed"))?;
        let sealed = self.with_session(|session| {
            let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(hsm("GCM parameters"))?;
            session.encrypt(&Mechanism::AesGcm(params), key, plaintext).map_err(hsm("encrypting"))
        })?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&iv);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn decrypt(&self, version: u32, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let key = self.handle(version)?;
        let (iv, ciphertext) = sealed.split_at_checked(NONCE_LEN).ok_or(KeyError::Decrypt)?;
        let mut iv = iv.to_vec();
        self.with_session(|session| {
            let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(hsm("GCM parameters"))?;
            // A wrong key, AAD or tag is CKR_ENCRYPTED_DATA_INVALID (or _LEN_RANGE): not an HSM
            // failure but a ciphertext that does not open here. SoftHSM2 (2.6) reports a failed
            // GCM tag check as CKR_GENERAL_ERROR.
            session.decrypt(&Mechanism::AesGcm(params), key, ciphertext).map(Zeroizing::new).map_err(|e| match e {
                CkError::Pkcs11(
                    RvError::EncryptedDataInvalid
                    | RvError::EncryptedDataLenRange
                    | RvError::DataInvalid
                    | RvError::GeneralError,
                    _,
                ) => KeyError::Decrypt,
                e => KeyError::Hsm(format!("decrypting: {e}")),
            })
        })
    }

    fn add_version(&self) -> Result<u32, KeyError> {
        let mut versions = self.versions.write().unwrap_or_else(PoisonError::into_inner);
        let version = versions.keys().next_back().map_or(1, |v| v + 1);
        let label = format!("{}{version}", self.label_prefix());
        let handle = self.with_session(|session| {
            let template = [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::ValueLen(32.into()),
                Attribute::Label(label.clone().into_bytes()),
            ];
            session.generate_key(&Mechanism::AesKeyGen, &template).map_err(hsm("generating a key"))
        })?;
        versions.insert(version, handle);
        Ok(version)
    }

    fn retire_version(&self, version: u32) -> Result<(), KeyError> {
        let mut versions = self.versions.write().unwrap_or_else(PoisonError::into_inner);
        if versions.keys().next_back() == Some(&version) {
            return Err(KeyError::CurrentVersion(version));
        }
        let handle = versions.get(&version).copied().ok_or(KeyError::UnknownKekVersion(version))?;
        self.with_session(|session| session.destroy_object(handle).map_err(hsm("destroying a key")))?;
        versions.remove(&version);
        Ok(())
    }
}
