//! A verifier's state file: the last checkpoint it verified of each log, kept between runs so
//! that the next checkpoint is checked against it and a fork or a shrink shows.
//!
//! One format, read and written here only, for every verifier: the auditor (`clover audit
//! verify --state FILE`), the witness (`clover audit witness --state FILE`) and a custodian in
//! its own process (`log-state` in its directory). It is JSON, the logs by origin:
//!
//! ```json
//! {
//!   "logs": {
//!     "clover.example/eu": {
//!       "size": 12,
//!       "root": "<the tree's root hash, base64>",
//!       "checkpoint": "<the signed checkpoint note, when the verifier kept it>"
//!     }
//!   }
//! }
//! ```
//!
//! The files that earlier versions wrote are read too, and written back in this format: the
//! auditor's `{"origin", "size", "root", "checkpoint"}`, the witness's map of origin to
//! `{"size", "root"}`, and the custodian's line `<size> <root, base64>`, which names no log (see
//! [`State::get`]).
//!
//! Reading tells "no state yet" from every other failure: only a file that does not exist is no
//! state. A file that cannot be read (permissions, a directory in its place) or that is not a
//! state file (damaged, truncated, another file) is an error, and the verifier must stop rather
//! than trust the log from scratch. Writing replaces the file atomically: a crash leaves either
//! the old state or the new one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use clover_tlog::hash::Hash;
use serde::{Deserialize, Serialize};

/// What a verifier keeps between runs: the last checkpoint it verified of each log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    logs: BTreeMap<String, Verified>,
    /// The one log of a state file that an earlier custodian wrote, which did not name it.
    unnamed: Option<Verified>,
}

/// The last checkpoint verified of one log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verified {
    /// The tree size.
    pub size: u64,
    /// The tree's root hash.
    #[serde(with = "base64_hash")]
    pub root: Hash,
    /// The signed checkpoint note, when the verifier kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

/// Why a state file cannot be used. The file is left as it was.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file exists (or something is in its place) but cannot be read.
    #[error("cannot read the state file {path:?} (refusing to start over without it)")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        cause: std::io::Error,
    },
    /// The file is not a state file in any format Clover wrote.
    #[error(
        "the state file {path:?} is damaged, refusing to start over without it (restore it from a backup, or move \
         it aside to trust the log from scratch): it is not a state file Clover wrote"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong, read as the current format.
        #[source]
        cause: serde_json::Error,
    },
    /// The file holds the state of other logs, not of the one being verified.
    #[error("the state file {path:?} is for {held:?}, not for log {origin:?}")]
    OtherLogs {
        /// The file.
        path: PathBuf,
        /// The log being verified.
        origin: String,
        /// The logs it holds.
        held: Vec<String>,
    },
    /// The new state could not be written; the file still holds the old one.
    #[error("cannot write the state file {path:?} ({step})")]
    Write {
        /// The file.
        path: PathBuf,
        /// The step that failed.
        step: &'static str,
        /// Why.
        #[source]
        cause: std::io::Error,
    },
}

impl State {
    /// The last checkpoint verified of the log `origin`. A file that an earlier custodian wrote
    /// held one log and did not name it: its entry answers for any origin (the custodian that
    /// wrote it checked one log; a verifier given it for another log finds the roots differ).
    pub fn get(&self, origin: &str) -> Option<&Verified> {
        self.logs.get(origin).or(self.unnamed.as_ref())
    }

    /// The state of the one log `origin` a verifier checks, from the file `path` it was read
    /// from: `None` for an empty state, an error if the state is only of other logs.
    pub fn of_log(&self, path: &Path, origin: &str) -> Result<Option<&Verified>, StateError> {
        match self.get(origin) {
            Some(verified) => Ok(Some(verified)),
            None if self.logs.is_empty() => Ok(None),
            None => Err(StateError::OtherLogs {
                path: path.to_owned(),
                origin: origin.to_owned(),
                held: self.logs.keys().cloned().collect(),
            }),
        }
    }

    /// Records `verified` as the last checkpoint verified of `origin` (an unnamed entry read
    /// from an earlier custodian's file is superseded).
    pub fn insert(&mut self, origin: String, verified: Verified) {
        self.unnamed = None;
        self.logs.insert(origin, verified);
    }

    /// The logs it holds, by origin.
    pub fn logs(&self) -> impl Iterator<Item = (&str, &Verified)> {
        self.logs.iter().map(|(origin, verified)| (origin.as_str(), verified))
    }
}

/// The file as written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    logs: BTreeMap<String, Verified>,
}

/// The auditor's file before the one format: a single log.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditorFile {
    origin: String,
    size: u64,
    #[serde(with = "base64_hash")]
    root: Hash,
    checkpoint: String,
}

/// The witness's file before the one format: origin to the tree it cosigned last.
type WitnessFile = BTreeMap<String, WitnessEntry>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WitnessEntry {
    size: u64,
    #[serde(with = "base64_hash")]
    root: Hash,
}

/// Reads the state file at `path`: `None` only if there is no file.
pub fn read_state(path: &Path) -> Result<Option<State>, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(cause) if cause.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => return Err(StateError::Read { path: path.to_owned(), cause }),
    };
    parse(&bytes).map(Some).map_err(|cause| StateError::Damaged { path: path.to_owned(), cause })
}

/// The state in `bytes`, in the current format or an earlier one; the error is the current
/// format's, which says where the bytes stop making sense.
fn parse(bytes: &[u8]) -> Result<State, serde_json::Error> {
    let current = match serde_json::from_slice::<StateFile>(bytes) {
        Ok(file) => return Ok(State { logs: file.logs, unnamed: None }),
        Err(e) => e,
    };
    if let Ok(old) = serde_json::from_slice::<AuditorFile>(bytes) {
        let verified = Verified { size: old.size, root: old.root, checkpoint: Some(old.checkpoint) };
        return Ok(State { logs: BTreeMap::from([(old.origin, verified)]), unnamed: None });
    }
    if let Ok(old) = serde_json::from_slice::<WitnessFile>(bytes) {
        let logs = old
            .into_iter()
            .map(|(origin, w)| (origin, Verified { size: w.size, root: w.root, checkpoint: None }))
            .collect();
        return Ok(State { logs, unnamed: None });
    }
    if let Some(verified) = custodian_line(bytes) {
        return Ok(State { logs: BTreeMap::new(), unnamed: Some(verified) });
    }
    Err(current)
}

/// The custodian's file before the one format: `<size> <root, base64>` and a newline.
fn custodian_line(bytes: &[u8]) -> Option<Verified> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (size, root) = text.strip_suffix('\n').unwrap_or(text).split_once(' ')?;
    if !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Verified { size: size.parse().ok()?, root: Hash::from_base64(root)?, checkpoint: None })
}

/// Distinguishes the temporary files of writes from one process.
static WRITES: AtomicU64 = AtomicU64::new(0);

/// Writes `state` to `path` so that the file holds either the old state or the new one, never
/// a mix: a temporary file in the same directory, synced, renamed over `path`, and the
/// directory synced so that the rename itself survives a crash. Owner-only (0600) on Unix.
pub fn write_state(path: &Path, state: &State) -> Result<(), StateError> {
    let failed =
        |step: &'static str| move |cause: std::io::Error| StateError::Write { path: path.to_owned(), step, cause };
    let mut bytes = serde_json::to_vec_pretty(&StateFile { logs: state.logs.clone() })
        .map_err(|e| failed("encoding")(std::io::Error::other(e)))?;
    bytes.push(b'\n');
    let name = path.file_name().ok_or_else(|| {
        failed("naming the temporary file")(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path names no file",
        ))
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let (temp, mut file) = create_temp(dir, name).map_err(failed("creating a temporary file"))?;
    let written = file.write_all(&bytes).and_then(|()| file.sync_all());
    drop(file);
    if let Err(cause) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(failed("writing the temporary file")(cause));
    }
    if let Err(cause) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(failed("renaming the temporary file over it")(cause));
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(failed("syncing its directory"))
}

/// A new temporary file beside the state file: never one that exists (a crashed writer's).
fn create_temp(dir: &Path, name: &std::ffi::OsStr) -> std::io::Result<(PathBuf, std::fs::File)> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut attempts = 0;
    loop {
        let mut temp = std::ffi::OsString::from(".");
        temp.push(name);
        temp.push(format!(".{}.{}.tmp", std::process::id(), WRITES.fetch_add(1, Ordering::Relaxed)));
        let temp = dir.join(temp);
        match options.open(&temp) {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 16 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

/// A hash as base64 in the file.
mod base64_hash {
    use clover_tlog::hash::Hash;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(hash: &Hash, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hash.to_base64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Hash, D::Error> {
        let text = String::deserialize(deserializer)?;
        Hash::from_base64(&text).ok_or_else(|| serde::de::Error::custom("the root is not a base64 SHA-256 hash"))
    }
}

#[cfg(test)]
mod tests {
    use clover_tlog::hash::leaf_hash;

    use super::*;

    fn verified(size: u64) -> Verified {
        Verified { size, root: leaf_hash(&size.to_be_bytes()), checkpoint: Some(format!("checkpoint {size}\n")) }
    }

    fn state(origin: &str, size: u64) -> State {
        let mut state = State::default();
        state.insert(origin.to_owned(), verified(size));
        state
    }

    #[test]
    fn a_missing_file_is_no_state_and_a_written_one_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(read_state(&path).unwrap(), None);
        let mut two = state("clover.test/eu", 5);
        two.insert("clover.test/us".into(), Verified { checkpoint: None, ..verified(9) });
        write_state(&path, &two).unwrap();
        assert_eq!(read_state(&path).unwrap(), Some(two));
        // Only the state file is left in the directory: no temporary file.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn damaged_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_state(&path, &state("clover.test/eu", 5)).unwrap();
        let whole = std::fs::read(&path).unwrap();
        let half = whole.get(..whole.len() / 2).unwrap().to_vec();
        let bad_root = String::from_utf8(whole.clone()).unwrap().replace("\"root\": \"", "\"root\": \"!");
        for damaged in [Vec::new(), half, b"garbage".to_vec(), bad_root.into_bytes(), vec![0xff; 40]] {
            std::fs::write(&path, &damaged).unwrap();
            let error = read_state(&path).unwrap_err();
            assert!(matches!(&error, StateError::Damaged { path: p, .. } if *p == path), "{error:?}");
            assert!(error.to_string().contains("state.json") && error.to_string().contains("damaged"), "{error}");
            assert_eq!(std::fs::read(&path).unwrap(), damaged, "reading changed the file");
        }
    }

    #[test]
    fn an_unreadable_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: unreadable as a file even for root.
        let path = dir.path().join("state.json");
        std::fs::create_dir(&path).unwrap();
        let error = read_state(&path).unwrap_err();
        assert!(matches!(&error, StateError::Read { path: p, .. } if *p == path), "{error:?}");
        assert!(path.is_dir());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join("locked.json");
            write_state(&path, &state("clover.test/eu", 5)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
            if std::fs::read(&path).is_ok() {
                // Root (or CAP_DAC_OVERRIDE) reads it anyway: the directory case above stands in.
                eprintln!("running as root: mode 000 does not stop reads; skipped that case");
                return;
            }
            let error = read_state(&path).unwrap_err();
            assert!(
                matches!(&error, StateError::Read { cause, .. } if cause.kind() == std::io::ErrorKind::PermissionDenied)
            );
        }
    }

    #[test]
    fn earlier_formats_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let root = leaf_hash(b"root");
        let b64 = root.to_base64();

        std::fs::write(
            &path,
            format!(
                "{{\n  \"origin\": \"clover.test/eu\",\n  \"size\": 7,\n  \"root\": \"{b64}\",\n  \"checkpoint\": \"c\\n\"\n}}\n"
            ),
        )
        .unwrap();
        let auditor = read_state(&path).unwrap().unwrap();
        assert_eq!(auditor.get("clover.test/eu"), Some(&Verified { size: 7, root, checkpoint: Some("c\n".into()) }));
        assert_eq!(auditor.get("clover.test/us"), None);

        std::fs::write(
            &path,
            format!(
                "{{\"a.test\": {{\"size\": 3, \"root\": \"{b64}\"}}, \"logs\": {{\"size\": 4, \"root\": \"{b64}\"}}}}"
            ),
        )
        .unwrap();
        let witness = read_state(&path).unwrap().unwrap();
        assert_eq!(witness.get("a.test").map(|v| v.size), Some(3));
        assert_eq!(witness.get("logs").map(|v| v.size), Some(4));

        std::fs::write(&path, format!("12 {b64}\n")).unwrap();
        let custodian = read_state(&path).unwrap().unwrap();
        assert_eq!(custodian.get("any.test"), Some(&Verified { size: 12, root, checkpoint: None }));
        assert_eq!(custodian.of_log(&path, "any.test").unwrap().map(|v| v.size), Some(12));
    }

    #[test]
    fn a_state_of_other_logs_is_not_this_logs() {
        let path = Path::new("state.json");
        let other = state("clover.test/us", 5);
        assert!(matches!(other.of_log(path, "clover.test/eu"), Err(StateError::OtherLogs { .. })));
        assert_eq!(State::default().of_log(path, "clover.test/eu").unwrap(), None);
    }

    #[test]
    fn the_writer_replaces_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        // Big enough that a plain write would be seen half done.
        let big = |size: u64| {
            let mut state = State::default();
            for i in 0..200 {
                state.insert(
                    format!("clover.test/{i}"),
                    Verified { checkpoint: Some("x".repeat(500)), ..verified(size) },
                );
            }
            state
        };
        write_state(&path, &big(0)).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                loop {
                    let state = read_state(&path).expect("a reader saw a partial state file").unwrap();
                    let sizes: std::collections::BTreeSet<u64> = state.logs().map(|(_, v)| v.size).collect();
                    assert_eq!(sizes.len(), 1, "a reader saw two states mixed");
                    reads += 1;
                    if stop.load(Ordering::Relaxed) {
                        return reads;
                    }
                }
            })
        };
        for size in 1..=100 {
            write_state(&path, &big(size)).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        assert_eq!(read_state(&path).unwrap().unwrap(), big(100));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_leaves_what_was_there_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A rename over a non-empty directory fails after the temporary file is written.
        let blocked = dir.path().join("state.json");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"x").unwrap();
        let error = write_state(&blocked, &state("clover.test/eu", 6)).unwrap_err();
        assert!(matches!(error, StateError::Write { step: "renaming the temporary file over it", .. }), "{error:?}");
        assert_eq!(std::fs::read(blocked.join("x")).unwrap(), b"x");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
