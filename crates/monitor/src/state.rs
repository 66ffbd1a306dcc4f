//! The monitor's state, on disk in its directory, so that a monitor killed and restarted resumes
//! where it was: the last verified checkpoint and the tree's right edge at it (a frontier of at
//! most 64 hashes, whatever the log's size), what the rules remember, the counts the console
//! shows, and the alerts raised (`alerts.jsonl`, one JSON object per line, append-only).
//!
//! `state.json` is replaced atomically (written to a temporary file, synced, renamed, the
//! directory synced) only once a checkpoint is verified and its alerts are written: a crash
//! before that redoes the checkpoint's new entries, which raise the same alerts with the same
//! numbers (written once: numbers already in `alerts.jsonl` are not written again).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use clover_tlog::frontier::Frontier;
use clover_tlog::hash::Hash;
use serde::{Deserialize, Serialize};

use crate::rules::{RuleState, Severity};

/// A numbered alert, as it is written, printed and sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Its number (from 1, in the order raised).
    pub id: u64,
    /// When it was raised (RFC 3339, UTC).
    pub time: String,
    /// The rule.
    pub rule: String,
    /// How bad.
    pub severity: Severity,
    /// What happened.
    pub message: String,
    /// The log entries behind it.
    pub indexes: Vec<u64>,
}

/// What the monitor keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The log's origin (`clover.local/eu`).
    pub origin: String,
    /// The verified tree size.
    pub size: u64,
    /// Its root (base64).
    pub root: String,
    /// The tree's right edge at `size` (base64 hashes, largest subtree first).
    pub frontier: Vec<String>,
    /// The signed checkpoint verified last (a signed note).
    pub checkpoint: String,
    /// When the checkpoint's size last changed (Unix seconds).
    pub changed_at: i64,
    /// The next alert's number.
    pub next_alert: u64,
    /// What the rules remember.
    pub rules: RuleState,
    /// Counts for the console, by key (`accesses|day|region|effect|view|purpose|category`, ...).
    pub counts: BTreeMap<String, u64>,
    /// Every government-request entry verified (few: a register's steps), by index, for the
    /// transparency report the console recomputes.
    #[serde(default)]
    pub government: Vec<(u64, clover_event::Event)>,
    /// The latest key and configuration entries (index, time, kind, detail), at most
    /// [`MAX_CHANGES`].
    #[serde(default)]
    pub changes: std::collections::VecDeque<(u64, i64, String, String)>,
}

/// How many key and configuration changes the state keeps (the log has them all).
pub const MAX_CHANGES: usize = 1_000;

/// A state directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not what the monitor wrote.
    #[error("{path} is corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A file does not decode as what the monitor writes (or what it writes does not encode).
    #[error("{path} is corrupt: {source}")]
    Undecodable {
        /// The file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_owned(), source }
}

/// The error of the file at `path` that does not decode (or of a state that does not encode).
pub(crate) fn undecodable<E: std::error::Error + Send + Sync + 'static>(
    path: &Path,
) -> impl FnOnce(E) -> StateError + '_ {
    move |source| StateError::Undecodable { path: path.to_owned(), source: Box::new(source) }
}

impl State {
    /// The frontier, as kept.
    pub fn frontier(&self, path: &Path) -> Result<Frontier, StateError> {
        let corrupt = |detail: String| StateError::Corrupt { path: path.to_owned(), detail };
        let hashes = self
            .frontier
            .iter()
            .map(|h| {
                Hash::from_base64(h).ok_or_else(|| corrupt(format!("frontier hash {h:?} is not base64 of 32 bytes")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Frontier::from_parts(self.size, hashes).map_err(undecodable(path))
    }

    /// Keeps `frontier` (and its root) as the verified tree.
    pub fn set_frontier(&mut self, frontier: &Frontier) {
        self.size = frontier.size();
        self.root = frontier.root().to_base64();
        self.frontier = frontier.hashes().iter().map(Hash::to_base64).collect();
    }
}

/// The monitor's directory.
#[derive(Debug, Clone)]
pub struct Dir {
    root: PathBuf,
}

impl Dir {
    /// Opens (creating it, 0700) the directory.
    pub fn open(root: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)).map_err(io(root))?;
        }
        Ok(Self { root: root.to_owned() })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `state.json`.
    pub fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }

    /// `alerts.jsonl`.
    pub fn alerts_path(&self) -> PathBuf {
        self.root.join("alerts.jsonl")
    }

    /// The state kept, or a fresh one.
    pub fn load(&self) -> Result<State, StateError> {
        let path = self.state_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(undecodable(&path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(StateError::Io { path, source: e }),
        }
    }

    /// Replaces the state atomically.
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let path = self.state_path();
        let tmp = self.root.join("state.json.tmp");
        let bytes = serde_json::to_vec(state).map_err(undecodable(&path))?;
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(&bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        std::fs::File::open(&self.root).and_then(|d| d.sync_all()).map_err(io(&self.root))?;
        Ok(())
    }

    /// The number of the last alert written (0 for none).
    pub fn last_alert(&self) -> Result<u64, StateError> {
        Ok(self.alerts(None, u64::MAX)?.last().map_or(0, |a| a.id))
    }

    /// Appends `alerts` whose numbers are past `after` (those already written are skipped), and
    /// syncs the file.
    pub fn append_alerts(&self, alerts: &[Alert], after: u64) -> Result<(), StateError> {
        let path = self.alerts_path();
        let fresh: Vec<&Alert> = alerts.iter().filter(|a| a.id > after).collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(io(&path))?;
        for alert in fresh {
            let mut line = serde_json::to_vec(alert).map_err(undecodable(&path))?;
            line.push(b'\n');
            file.write_all(&line).map_err(io(&path))?;
        }
        file.sync_all().map_err(io(&path))
    }

    /// The alerts written, oldest first, those matching `keep` only, at most `limit` of the
    /// newest. (Read line by line: the file is the alerts' history.)
    pub fn alerts(&self, keep: Option<&dyn Fn(&Alert) -> bool>, limit: u64) -> Result<Vec<Alert>, StateError> {
        use std::io::BufRead as _;
        let path = self.alerts_path();
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StateError::Io { path, source: e }),
        };
        let mut out = std::collections::VecDeque::new();
        for line in std::io::BufReader::new(file).lines() {
            let line = line.map_err(io(&path))?;
            if line.trim().is_empty() {
                continue;
            }
            let alert: Alert = serde_json::from_str(&line).map_err(undecodable(&path))?;
            if keep.is_none_or(|keep| keep(&alert)) {
                out.push_back(alert);
                if out.len() as u64 > limit {
                    out.pop_front();
                }
            }
        }
        Ok(out.into())
    }
}
