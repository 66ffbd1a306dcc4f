//! Rotating the KEK: a new version, current at once; every data key re-wrapped under it in
//! batches while keys go on being handed out; the old versions retired once nothing uses them.
//! A custodian that checks receipts against the boundary's log makes and retires a version only
//! against the receipt of the log entry naming it ([`clover_log::KeyReceipt`]).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use clover_keys::KeyError;

use super::data_keys::DataKeys;
use super::store::failed;

/// A rotation's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rotation {
    /// The new version.
    pub to_version: u32,
    /// Data keys to re-wrap when it started.
    pub total: u64,
    /// Data keys re-wrapped so far.
    pub rewrapped: u64,
    /// Versions retired once nothing used them.
    pub retired: Vec<u32>,
    /// Whether it has finished.
    pub done: bool,
    /// Why it stopped, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How many data keys each KEK version wraps.
pub type VersionCounts = Vec<(u32, u64)>;

impl DataKeys {
    /// How many data keys each KEK version wraps, for every version the backend holds.
    pub(crate) async fn version_counts(&self) -> Result<VersionCounts, KeyError> {
        let rows = self.db.version_counts().await.map_err(failed("counting data keys"))?;
        let mut counts: HashMap<u32, u64> = HashMap::new();
        for (version, count) in rows {
            counts.insert(u32::try_from(version).unwrap_or_default(), u64::try_from(count).unwrap_or_default());
        }
        Ok(self.kek.versions()?.into_iter().map(|v| (v, counts.get(&v).copied().unwrap_or_default())).collect())
    }

    /// Re-wraps up to `batch` data keys that are not under the current KEK version; returns how
    /// many it re-wrapped (0: none is left). Reads and writes go on meanwhile: each key is
    /// replaced in its own statement, only if it has not changed since it was read.
    pub(crate) async fn rewrap_batch(&self, batch: u32) -> Result<u64, KeyError> {
        // Rows changed meanwhile (erased, say) are not re-wrapped; select again rather than
        // report 0, which means that no key is left under an old version.
        for _ in 0..16 {
            match self.rewrap_once(batch).await? {
                (0, _) => return Ok(0),
                (_, 0) => continue,
                (_, done) => return Ok(done),
            }
        }
        Ok(0)
    }

    /// One batch: (keys selected, keys re-wrapped).
    async fn rewrap_once(&self, batch: u32) -> Result<(usize, u64), KeyError> {
        // No version is retired while this batch wraps under the current one.
        let _shared = self.wrapping.read().await;
        let current = self.kek.current_version()?;
        let rows = self.db.not_under(current, batch).await.map_err(failed("reading keys to re-wrap"))?;
        let selected = rows.len();
        let mut done = 0;
        for (subject, version, wrapped) in rows {
            let old = u32::try_from(version).map_err(|_| KeyError::Decrypt)?;
            // The AAD binds the subject's keyed hash, which names the key in the key store: a
            // re-wrap works on the raw key, under the same hash and the new version.
            let plain = self.unwrap_bytes(&subject, old, &wrapped)?;
            let rewrapped = self.wrap(&subject, current, &plain)?;
            done += self
                .db
                .rewrap(&subject, version, &wrapped, current, &rewrapped)
                .await
                .map_err(failed("re-wrapping"))?;
        }
        Ok((selected, done))
    }

    /// The versions but the current one, once no key uses them: what a finished re-wrap leaves
    /// to retire; an old version that still wraps keys is an error (the re-wrap did not finish).
    pub(crate) async fn old_versions(&self) -> Result<Vec<u32>, KeyError> {
        let current = self.kek.current_version()?;
        let mut old = Vec::new();
        for (version, count) in self.version_counts().await? {
            if version == current {
                continue;
            }
            if count > 0 {
                return Err(KeyError::VersionInUse { version, count });
            }
            old.push(version);
        }
        Ok(old)
    }

    /// Retires a KEK version that no data key uses any more.
    pub(crate) async fn retire(&self, version: u32) -> Result<(), KeyError> {
        let _exclusive = self.wrapping.write().await;
        let count = self.db.count_version(version).await.map_err(failed("counting data keys"))?;
        if count > 0 {
            return Err(KeyError::VersionInUse { version, count: u64::try_from(count).unwrap_or_default() });
        }
        self.kek.retire_version(version)
    }
}

/// The latest rotation's progress, if one ran since the custodian opened.
#[derive(Default)]
pub(crate) struct Rotations {
    latest: Mutex<Option<Rotation>>,
}

impl Rotations {
    /// The latest rotation's progress.
    pub(crate) fn latest(&self) -> Option<Rotation> {
        self.latest.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn update(&self, f: impl FnOnce(&mut Rotation)) {
        if let Some(rotation) = self.latest.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            f(rotation);
        }
    }

    /// Starts a rotation, unless one is running (`Ok(None)`): a new KEK version, current at
    /// once. Checking for a running rotation and marking this one are one step. Returns the new
    /// version and how many keys wait to be re-wrapped.
    ///
    /// With `expected` (the version a logged entry names), the new version must be that one:
    /// checked before it is made, and after.
    pub(crate) async fn start(&self, keys: &DataKeys, expected: Option<u32>) -> Result<Option<(u32, u64)>, KeyError> {
        {
            let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
            if latest.as_ref().is_some_and(|r| !r.done) {
                return Ok(None);
            }
            *latest = Some(Rotation::default());
        }
        let not_named = |version: u32| {
            KeyError::Receipt(format!(
                "the rotation's log entry names kek v{}, and the new version would be v{version}",
                expected.unwrap_or_default()
            ))
        };
        let started = async {
            let next = keys.kek.current_version()?.saturating_add(1);
            if expected.is_some_and(|v| v != next) {
                return Err(not_named(next));
            }
            let to_version = keys.kek.add_version()?;
            if expected.is_some_and(|v| v != to_version) {
                return Err(not_named(to_version));
            }
            let counts = keys.version_counts().await?;
            Ok::<_, KeyError>((to_version, counts.iter().filter(|(v, _)| *v != to_version).map(|(_, n)| n).sum()))
        };
        match started.await {
            Ok((to_version, total)) => {
                self.update(|r| {
                    r.to_version = to_version;
                    r.total = total;
                });
                Ok(Some((to_version, total)))
            }
            Err(e) => {
                self.end(Some(e.to_string()));
                Err(e)
            }
        }
    }

    /// Re-wraps every key under the current version in batches, keeping the progress; returns
    /// the old versions, which no key uses now, to retire.
    pub(crate) async fn run(&self, keys: &DataKeys) -> Result<Vec<u32>, KeyError> {
        loop {
            let done = keys.rewrap_batch(256).await?;
            if done == 0 {
                break;
            }
            self.update(|r| r.rewrapped += done);
        }
        keys.old_versions().await
    }

    /// Counts `version` as retired by the latest rotation.
    pub(crate) fn retired(&self, version: u32) {
        self.update(|r| r.retired.push(version));
    }

    /// Marks the rotation done, or failed with `error`.
    pub(crate) fn end(&self, error: Option<String>) {
        self.update(|r| {
            r.done = true;
            r.error = error;
        });
    }
}
