//! The passphrase that seals the local keyring.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use zeroize::Zeroizing;

use crate::error::KeyError;

/// The environment variable read for the passphrase.
pub const PASSPHRASE_ENV: &str = "CLOVER_PASSPHRASE";
/// The file, in the data directory, where a generated passphrase is kept.
pub const PASSPHRASE_FILE: &str = "passphrase";

/// A passphrase. Zeroized on drop; never printed.
pub struct Passphrase(Zeroizing<String>);

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// Where a passphrase came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassphraseSource {
    /// The `CLOVER_PASSPHRASE` environment variable.
    Environment,
    /// A passphrase file written earlier.
    File(PathBuf),
    /// Generated just now and written to this file.
    Generated(PathBuf),
}

impl Passphrase {
    /// Wraps a passphrase given by the operator.
    pub fn new(passphrase: impl Into<String>) -> Self {
        Self(Zeroizing::new(passphrase.into()))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// A second copy, for the keyring, which re-seals its file with it (zeroized on drop too).
    pub(crate) fn duplicate(&self) -> Self {
        Self(self.0.clone())
    }

    /// The passphrase from `CLOVER_PASSPHRASE` if it is set and not empty, else from the
    /// passphrase file in `data_dir` if there is one.
    pub fn find(data_dir: &Path) -> Result<Option<(Self, PassphraseSource)>, KeyError> {
        if let Ok(value) = std::env::var(PASSPHRASE_ENV)
            && !value.is_empty()
        {
            return Ok(Some((Self::new(value), PassphraseSource::Environment)));
        }
        let path = data_dir.join(PASSPHRASE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                let value = text.trim_end_matches(['\n', '\r']);
                if value.is_empty() {
                    return Err(KeyError::Malformed { path, detail: "the passphrase file is empty".into() });
                }
                Ok(Some((Self::new(value), PassphraseSource::File(path))))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(cause) => Err(KeyError::Io { path, cause }),
        }
    }

    /// Generates a random passphrase (256 bits, base64url) and writes it to the passphrase file
    /// in `data_dir`, readable by its owner only. Refuses to replace an existing file.
    pub fn generate_into(data_dir: &Path) -> Result<(Self, PathBuf), KeyError> {
        let path = data_dir.join(PASSPHRASE_FILE);
        let mut raw = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(raw.as_mut()).map_err(|_| KeyError::Crypto("random generator failed"))?;
        let value = Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_ref()));
        let mut line = Zeroizing::new(value.to_string());
        line.push('\n');
        write_private(&path, line.as_bytes())?;
        Ok((Self::new(value.to_string()), path))
    }
}

/// Writes a new file readable and writable by its owner only (0600), and syncs it and its
/// directory. Refuses to replace an existing file.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let io = |cause| KeyError::Io { path: path.to_owned(), cause };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists { KeyError::AlreadyExists(path.to_owned()) } else { io(e) }
    })?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

/// Replaces `path` atomically with a new private file: written beside it, synced, renamed over
/// it, and the directory synced.
pub fn replace_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let io = |cause| KeyError::Io { path: path.to_owned(), cause };
    let mut temp = path.as_os_str().to_owned();
    let mut nonce = [0u8; 8];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| KeyError::Crypto("random generator failed"))?;
    temp.push(format!(".new-{}", hex::encode(nonce)));
    let temp = std::path::PathBuf::from(temp);
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    write_private(&temp, bytes)?;
    std::fs::rename(&temp, path).map_err(io)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passphrase_is_private_and_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (_, path) = Passphrase::generate_into(dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(matches!(Passphrase::generate_into(dir.path()), Err(KeyError::AlreadyExists(_))));
    }
}
