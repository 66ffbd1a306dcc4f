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
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
pub use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use crate::error::KeyError;
use crate::kek::Kek;

/// Where the HSM is: `[keys]` with `backend = "pkcs11"` in `clover.toml`.
#[derive(Debug, Clone)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (a shared library), such as `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The label of the token that holds the region's keys.
    pub token_label: String,
}

fn hsm(what: &'static str) -> impl Fn(CkError) -> KeyError {
    move |cause| KeyError::Pkcs11 { action: what.to_owned(), cause }
}

/// The module at `path`, loaded and initialised once per process.
pub fn module(path: &Path) -> Result<Arc<Pkcs11>, KeyError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Arc<Pkcs11>>>> = OnceLock::new();
    let mut modules = MODULES.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(module) = modules.get(path) {
        return Ok(module.clone());
    }
    let module = Pkcs11::new(path).map_err(|cause| KeyError::Pkcs11 {
        action: format!("cannot load the PKCS#11 module {}", path.display()),
        cause,
    })?;
    match module.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(cause) => {
            return Err(KeyError::Pkcs11 { action: format!("cannot initialise {}", path.display()), cause });
        }
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

/// A token, logged in: the module, its slot, the PIN, and a pool of sessions.
pub struct Token {
    module: Arc<Pkcs11>,
    slot: Slot,
    label: String,
    pin: AuthPin,
    sessions: Mutex<Vec<Session>>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("label", &self.label).finish_non_exhaustive()
    }
}

impl Token {
    /// Opens the token of `config`; sessions log in with `pin`.
    pub fn open(config: &Pkcs11Config, pin: AuthPin) -> Result<Arc<Self>, KeyError> {
        let module = module(&config.module)?;
        let slot = token_slot(&module, &config.token_label)?;
        let token = Self { module, slot, label: config.token_label.clone(), pin, sessions: Mutex::new(Vec::new()) };
        token.with_session(|_| Ok(()))?;
        Ok(Arc::new(token))
    }

    /// Whether the token offers every one of `mechanisms`.
    pub fn supports(&self, mechanisms: &[MechanismType]) -> bool {
        self.module.get_mechanism_list(self.slot).is_ok_and(|list| mechanisms.iter().all(|m| list.contains(m)))
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
                    Err(cause) => {
                        return Err(KeyError::Pkcs11 { action: format!("cannot log in to {:?}", self.label), cause });
                    }
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
}

/// The region's KEK versions in an HSM.
pub struct Pkcs11Kek {
    region: Region,
    token: Arc<Token>,
    token_label: String,
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
        Self::on(Token::open(config, pin)?, region)
    }

    /// [`Pkcs11Kek::open`] on a token already open.
    pub fn on(token: Arc<Token>, region: Region) -> Result<Self, KeyError> {
        let kek = Self { region, token_label: token.label.clone(), token, versions: RwLock::new(BTreeMap::new()) };
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

    /// The token, to keep the checkpoint key in it too.
    pub fn token(&self) -> &Arc<Token> {
        &self.token
    }

    fn with_session<T>(&self, f: impl FnOnce(&Session) -> Result<T, KeyError>) -> Result<T, KeyError> {
        self.token.with_session(f)
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
                cause => KeyError::Pkcs11 { action: "decrypting".to_owned(), cause },
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

/// DER of the Ed25519 curve's object identifier (1.3.101.112), for `CKA_EC_PARAMS`.
const ED25519_OID: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

/// The log's checkpoint signing key, an Ed25519 key pair generated in the HSM (the private half
/// sensitive and not extractable); every checkpoint is signed inside the token.
pub struct Pkcs11Signer {
    token: Arc<Token>,
    name: String,
    private: ObjectHandle,
    public_key: [u8; 32],
}

impl std::fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Signer").field("name", &self.name).field("token", &self.token).finish_non_exhaustive()
    }
}

/// The 32 bytes of an Ed25519 `CKA_EC_POINT`: raw, or wrapped in a DER OCTET STRING.
fn ed25519_point(point: &[u8]) -> Option<[u8; 32]> {
    let raw = match point {
        [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest,
        raw if raw.len() == 32 => raw,
        _ => return None,
    };
    raw.try_into().ok()
}

impl Pkcs11Signer {
    /// The region's checkpoint key in `token`, made there on first use, signing under the log's
    /// name `origin`; `None` when the token does not do Ed25519 (the keyring's key is used
    /// instead).
    pub fn open(token: Arc<Token>, region: &Region, origin: &str) -> Result<Option<Self>, KeyError> {
        if !token.supports(&[MechanismType::ECC_EDWARDS_KEY_PAIR_GEN, MechanismType::EDDSA]) {
            return Ok(None);
        }
        let label = format!("clover/{region}/checkpoint").into_bytes();
        let (private, public_key) = token.with_session(|session| {
            let find = |class| {
                session
                    .find_objects(&[
                        Attribute::Class(class),
                        Attribute::KeyType(KeyType::EC_EDWARDS),
                        Attribute::Label(label.clone()),
                    ])
                    .map_err(hsm("finding the checkpoint key"))
            };
            let (private, public) =
                match (find(ObjectClass::PRIVATE_KEY)?.first(), find(ObjectClass::PUBLIC_KEY)?.first()) {
                    (Some(private), Some(public)) => (*private, *public),
                    _ => {
                        let public = [
                            Attribute::Token(true),
                            Attribute::Verify(true),
                            Attribute::EcParams(ED25519_OID.to_vec()),
                            Attribute::Label(label.clone()),
                        ];
                        let private = [
                            Attribute::Token(true),
                            Attribute::Private(true),
                            Attribute::Sensitive(true),
                            Attribute::Extractable(false),
                            Attribute::Sign(true),
                            Attribute::Label(label.clone()),
                        ];
                        let (public, private) = session
                            .generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)
                            .map_err(hsm("generating the checkpoint key"))?;
                        (private, public)
                    }
                };
            let attributes =
                session.get_attributes(public, &[AttributeType::EcPoint]).map_err(hsm("reading the checkpoint key"))?;
            let point = attributes
                .into_iter()
                .find_map(|a| if let Attribute::EcPoint(p) = a { ed25519_point(&p) } else { None })
                .ok_or_else(|| KeyError::Hsm("the checkpoint key's public point is not Ed25519".to_owned()))?;
            Ok((private, point))
        })?;
        Ok(Some(Self { token, name: origin.to_owned(), private, public_key }))
    }
}

impl clover_tlog::note::NoteSigner for Pkcs11Signer {
    fn name(&self) -> &str {
        &self.name
    }

    fn verifier(&self) -> clover_tlog::note::VerifierKey {
        clover_tlog::note::VerifierKey {
            name: self.name.clone(),
            key_type: clover_tlog::note::TYPE_ED25519,
            public_key: self.public_key,
        }
    }

    fn sign_bytes(&self, message: &[u8]) -> Result<[u8; 64], clover_tlog::note::SignError> {
        let failed = |e: KeyError| clover_tlog::note::SignError { key: self.name.clone(), source: Box::new(e) };
        let signature = self
            .token
            .with_session(|session| {
                session
                    .sign(&Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)), self.private, message)
                    .map_err(hsm("signing a checkpoint"))
            })
            .map_err(failed)?;
        let len = signature.len();
        signature
            .try_into()
            .map_err(|_| failed(KeyError::Hsm(format!("the HSM returned a signature of {len} bytes, not 64"))))
    }
}
