//! What can go wrong with keys.

use clover_model::SubjectId;

/// An error of key custody or encryption.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read or written.
    #[error("key file {path:?}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        cause: std::io::Error,
    },
    /// Refused to replace existing keys.
    #[error("keys already exist at {0:?}; refusing to overwrite them")]
    AlreadyExists(std::path::PathBuf),
    /// The keyring file is not one Clover wrote.
    #[error("keyring file {path:?} is malformed: {detail}")]
    Malformed {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A part of a key file does not decode (not JSON of the expected shape, not base64, a key
    /// derivation or a key that does not take).
    #[error("key file {path:?} is malformed: {part}")]
    Undecodable {
        /// The file.
        path: std::path::PathBuf,
        /// The part that does not decode: its JSON, the sealed keys, a key.
        part: &'static str,
        /// Why.
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The passphrase does not open the keyring (or the file was altered).
    #[error("the passphrase does not open the keyring at {0:?} (wrong passphrase, or the file was altered)")]
    WrongPassphrase(std::path::PathBuf),
    /// No passphrase was given for an existing keyring.
    #[error("the keyring at {0:?} is sealed and no passphrase was found: set CLOVER_PASSPHRASE")]
    NoPassphrase(std::path::PathBuf),
    /// The keyring belongs to another region.
    #[error("the keyring is for region {found:?}, not {expected:?}")]
    WrongRegion {
        /// The region asked for.
        expected: String,
        /// The keyring's region.
        found: String,
    },
    /// The wrapped key names a KEK version the custodian does not hold (retired or unknown).
    #[error("no key-encryption key version {0} is held")]
    UnknownKekVersion(u32),
    /// The permit does not cover this subject or action.
    #[error("the permit is for subject {permitted:?}, not {requested:?}")]
    PermitMismatch {
        /// The subject of the permit.
        permitted: SubjectId,
        /// The subject whose key was asked for.
        requested: SubjectId,
    },
    /// A ciphertext failed to open: wrong key, or bytes moved or altered.
    #[error("decryption failed: wrong key, or the ciphertext was moved or altered")]
    Decrypt,
    /// The system random generator or the cipher failed.
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),

    /// The HSM (or a custodian standing for it) refused or cannot do what was asked, said in
    /// words: no token with the label, no PIN, an answer that cannot be used.
    #[error("HSM: {0}")]
    Hsm(String),

    /// The PKCS#11 module refused or failed an operation.
    #[error("HSM: {action}")]
    Pkcs11 {
        /// What was being done: loading the module, logging in to a token, decrypting.
        action: String,
        /// The module's error.
        #[source]
        cause: cryptoki::error::Error,
    },

    /// The current KEK version cannot be retired.
    #[error("kek version {0} is the current one and cannot be retired")]
    CurrentVersion(u32),

    /// A KEK version still wraps data keys.
    #[error("kek version {version} still wraps {count} data keys; re-wrap them first")]
    VersionInUse {
        /// The version.
        version: u32,
        /// How many data keys it wraps.
        count: u64,
    },

    /// The receipt does not allow what was asked of the custodian.
    #[error("the log receipt does not allow this: {0}")]
    Receipt(String),

    /// More pseudonyms were asked against one receipt than one read's fields need.
    #[error("too many pseudonyms for one read: {0}")]
    TooManyPseudonyms(String),

    /// The subject already has a data key in custody.
    #[error("the subject already has a data key in custody")]
    DataKeyExists,

    /// The subject was erased: a repatriation does not bring them back (their records abroad
    /// are to be deleted there, not copied home again).
    #[error("the subject was erased in the region: a repatriation does not bring them back")]
    Erased,

    /// The subject has no data key in custody (never created, or erased).
    #[error("no data key in custody for this subject (never created, or erased)")]
    NoDataKey,

    /// The custodian's key store could not be opened.
    #[error("cannot open the key store {store}")]
    StoreOpen {
        /// The key store (a PostgreSQL URL without its password).
        store: String,
        /// Why.
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The custodian (or what it depends on: its key store, the log it checks receipts
    /// against) cannot serve now: not reachable, restarting, its disk full. Worth trying again.
    #[error("the custodian cannot serve now: {0}")]
    Unavailable(String),

    /// A custodian in its own process cannot be reached (refused, timed out, the TLS handshake
    /// failed). Worth trying again, like [`KeyError::Unavailable`].
    #[error("the custodian cannot serve now: the custodian at {url} cannot be reached")]
    Unreachable {
        /// The custodian's base URL.
        url: String,
        /// The HTTP client's error.
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The custodian's key store failed.
    #[error("custody store: {operation}")]
    Store {
        /// What the custodian was doing.
        operation: &'static str,
        /// Why.
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
}
