//! The data directory: database, sealed keyring, passphrase, development issuer key.

use std::path::{Path, PathBuf};

use clover_keys::{KeyError, Keyring, Passphrase, PassphraseSource};
use clover_model::Region;

use crate::identity::{DevIssuer, IssuerError};

/// The sealed keyring's file name.
pub const KEYRING_FILE: &str = "keyring.json";
/// The SQLite database's file name.
pub const DATABASE_FILE: &str = "clover.db";
/// The development issuer's key file name.
pub const ISSUER_KEY_FILE: &str = "dev-issuer.p8";

/// What `init` did.
#[derive(Debug)]
pub struct Initialised {
    /// Where the passphrase came from (or the file it was generated into).
    pub passphrase: PassphraseSource,
    /// The keyring file.
    pub keyring: PathBuf,
    /// The development issuer's key file.
    pub issuer_key: PathBuf,
}

/// An error setting up or opening the data directory.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The directory could not be created.
    #[error("cannot create data directory {path:?}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        cause: std::io::Error,
    },
    /// Keys are not set up.
    #[error("{0:?} holds no keyring; run `clover init` (or `clover serve`, which initialises on first run)")]
    NotInitialised(PathBuf),
    /// A key operation failed.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The issuer key could not be used.
    #[error(transparent)]
    Issuer(#[from] IssuerError),
}

/// A boundary's data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data directory at `root` (not touched until used).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The keyring file.
    pub fn keyring_path(&self) -> PathBuf {
        self.root.join(KEYRING_FILE)
    }

    /// The database file.
    pub fn database_path(&self) -> PathBuf {
        self.root.join(DATABASE_FILE)
    }

    /// The custodian's key store: the wrapped data keys, kept apart from the database so that
    /// a copy of the database alone (a backup, a replica) holds no key.
    pub fn custody_path(&self) -> PathBuf {
        self.root.join("custody").join("keys.db")
    }

    /// The transparency log's directory.
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("log")
    }

    /// The development issuer's key file.
    pub fn issuer_key_path(&self) -> PathBuf {
        self.root.join(ISSUER_KEY_FILE)
    }

    /// Whether keys exist here.
    pub fn is_initialised(&self) -> bool {
        self.keyring_path().exists()
    }

    /// Creates the directory (0700), the keyring for `region` and the issuer key. The keyring
    /// is sealed with `CLOVER_PASSPHRASE`, or an existing passphrase file, or a passphrase
    /// generated into a new file. Refuses to overwrite existing keys.
    pub fn init(&self, region: &Region) -> Result<Initialised, DataDirError> {
        let keyring = self.keyring_path();
        let issuer_key = self.issuer_key_path();
        for existing in [&keyring, &issuer_key] {
            if existing.exists() {
                return Err(KeyError::AlreadyExists(existing.clone()).into());
            }
        }
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(&self.root).map_err(|cause| DataDirError::Create { path: self.root.clone(), cause })?;
        let (passphrase, source) = match Passphrase::find(&self.root)? {
            Some(found) => found,
            None => {
                let (passphrase, path) = Passphrase::generate_into(&self.root)?;
                (passphrase, PassphraseSource::Generated(path))
            }
        };
        Keyring::create(&keyring, region.clone(), &passphrase)?;
        DevIssuer::create(&issuer_key)?;
        Ok(Initialised { passphrase: source, keyring, issuer_key })
    }

    /// Opens the keyring with the passphrase from the environment or the passphrase file, and
    /// checks it is `region`'s.
    pub fn unseal(&self, region: &Region) -> Result<Keyring, DataDirError> {
        let path = self.keyring_path();
        if !path.exists() {
            return Err(DataDirError::NotInitialised(self.root.clone()));
        }
        let (passphrase, _) = Passphrase::find(&self.root)?.ok_or_else(|| KeyError::NoPassphrase(path.clone()))?;
        Ok(Keyring::open_for(&path, region, &passphrase)?)
    }

    /// The development issuer.
    pub fn issuer(&self) -> Result<DevIssuer, DataDirError> {
        if !self.issuer_key_path().exists() {
            return Err(DataDirError::NotInitialised(self.root.clone()));
        }
        Ok(DevIssuer::load(&self.issuer_key_path())?)
    }
}
