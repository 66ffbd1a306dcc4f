//! The log verifier.

use std::path::PathBuf;

use clover_event::{Entry, Event, is_subject_hash};
use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::hash::{Hash, leaf_hash, perfect_root};
use clover_tlog::note::{Note, VerifierKey};
use clover_tlog::tile::{TILE_WIDTH, Tile, split_bundle};
use clover_tlog::tree::{self, ProofError, Subtrees};

use crate::state::{StateError, Verified, read_state, write_state};

/// What the verifier is asked to check.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The boundary's base URL (the log is under `<url>/log/`), or the log's own prefix URL
    /// (`<root>/log`, as tlog clients take it).
    pub url: String,
    /// The log's checkpoint verifier key.
    pub vkey: VerifierKey,
    /// Witnesses whose cosignatures the checkpoint must carry.
    pub witnesses: Vec<VerifierKey>,
    /// Where the last verified checkpoint is kept between runs.
    pub state: Option<PathBuf>,
    /// The CA trusted for an `https://` boundary (the platform's roots when unset), and a
    /// client certificate to present.
    pub tls: clover_tls::ClientTls,
}

/// What a successful verification checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The log's origin.
    pub origin: String,
    /// The verified tree size.
    pub size: u64,
    /// Its root hash.
    pub root: Hash,
    /// The size verified last time, if any.
    pub previous_size: Option<u64>,
    /// How many tiles (hash tiles and entry bundles) were fetched and checked.
    pub tiles: u64,
    /// The witnesses whose cosignatures verified.
    pub cosigned_by: Vec<String>,
    /// How many entries of each format were checked: format 1 (written before format 2) and
    /// format 2.
    pub formats: [u64; 2],
}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Something could not be fetched.
    #[error("cannot fetch {url}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("cannot fetch {url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
    },
    /// No HTTP client could be built with the TLS settings given.
    #[error("cannot reach {url}")]
    Client {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: clover_tls::TlsError,
    },
    /// The checkpoint is not a valid signed checkpoint.
    #[error("the checkpoint is malformed: {0}")]
    MalformedCheckpoint(String),
    /// The checkpoint's note or body does not parse.
    #[error("the checkpoint is malformed")]
    UnparsableCheckpoint(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The log's signature does not verify.
    #[error("bad checkpoint signature")]
    BadSignature(#[source] clover_tlog::note::NoteError),
    /// A required witness cosignature is missing or bad.
    #[error("witness {name:?}")]
    Witness {
        /// The witness.
        name: String,
        /// What is wrong.
        #[source]
        source: clover_tlog::note::NoteError,
    },
    /// A hash tile does not match the tiles above it or the signed root.
    #[error("tile {path} was changed: {detail}")]
    TileChanged {
        /// The tile.
        path: String,
        /// What does not match.
        detail: String,
    },
    /// The hash tiles do not make a tree of the size asked for: a hash of it is missing.
    #[error("tile {path} was changed: the tiles do not make a tree of {size} entries")]
    TilesIncomplete {
        /// The tile.
        path: String,
        /// The size of the tree asked for.
        size: u64,
        /// What is missing.
        #[source]
        source: ProofError,
    },
    /// An entry does not match its leaf hash, or is not a valid entry.
    #[error("entry {index} was changed: {detail}")]
    EntryChanged {
        /// The entry's index.
        index: u64,
        /// What does not match.
        detail: String,
    },
    /// An entry hashes to its leaf but does not decode as an entry.
    #[error("entry {index} was changed")]
    EntryInvalid {
        /// The entry's index.
        index: u64,
        /// Why it does not decode.
        #[source]
        source: clover_event::EventError,
    },
    /// The log is smaller than when last verified.
    #[error("the log shrank: it had {old} entries when last verified, now {new}")]
    Shrank {
        /// The size verified last time.
        old: u64,
        /// The size now.
        new: u64,
    },
    /// The first entries differ from those verified last time.
    #[error(
        "the log forked: its first {size} entries no longer hash to the root verified last time ({old_root}); now {new_root}"
    )]
    Forked {
        /// The size verified last time.
        size: u64,
        /// The root verified then.
        old_root: String,
        /// The root of those entries now.
        new_root: String,
    },
    /// The state file could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, VerifyError> {
    let failed = |source| VerifyError::Fetch { url: url.to_owned(), source };
    let response = client.get(url).send().await.map_err(failed)?;
    if !response.status().is_success() {
        return Err(VerifyError::Status { url: url.to_owned(), status: response.status() });
    }
    Ok(response.bytes().await.map_err(failed)?.to_vec())
}

/// The hash levels of a tree, rebuilt from its tiles.
struct Levels(Vec<Vec<Hash>>);

impl Subtrees for Levels {
    fn subtree(&self, start: u64, height: u32) -> Result<Hash, ProofError> {
        let missing = ProofError::Missing { start, height };
        let level = (height / 8) as usize;
        let count = 1usize << (height % 8);
        let first = usize::try_from(start >> (8 * level as u64)).map_err(|_| missing.clone())?;
        let hashes = self.0.get(level).and_then(|l| l.get(first..first + count)).ok_or(missing)?;
        Ok(perfect_root(hashes))
    }
}

/// The tiles of a tree of `size` entries at `level`: (tile, hashes in it).
fn tiles_at(level: u8, size: u64) -> Vec<Tile> {
    let count = size >> (8 * u32::from(level));
    let mut tiles = Vec::new();
    let mut index = 0;
    while index * TILE_WIDTH < count {
        let width = (count - index * TILE_WIDTH).min(TILE_WIDTH);
        tiles.push(Tile { level: Some(level), index, width: width as u16 });
        index += 1;
    }
    tiles
}

/// The URL the log's paths (`checkpoint`, `tile/...`) are under: `url` itself when its path
/// ends in a `log` segment (the log's prefix, as tlog clients take it), else `url/log` (a
/// boundary's root, under which Clover serves its log).
pub fn log_prefix(url: &str) -> String {
    let url = url.trim_end_matches('/');
    let is_prefix = reqwest::Url::parse(url)
        .is_ok_and(|parsed| parsed.path_segments().and_then(|mut segments| segments.next_back()) == Some("log"));
    if is_prefix { url.to_owned() } else { format!("{url}/log") }
}

/// Verifies the log at `options.url`.
pub async fn verify(options: &VerifyOptions) -> Result<Report, VerifyError> {
    verify_with(options, |_, _| {}).await
}

/// Verifies the log at `options.url` as [`verify`] does, and hands each verified entry to
/// `visit` in order (its index, and its event for a format 2 entry): what a register or report
/// recomputed from the public log is computed from, once the entry is known to be the log's.
pub async fn verify_with(
    options: &VerifyOptions,
    mut visit: impl FnMut(u64, Option<&clover_event::Event>),
) -> Result<Report, VerifyError> {
    let client = options.tls.client().map_err(|source| VerifyError::Client { url: options.url.clone(), source })?;
    let base = log_prefix(&options.url);

    // 1. The checkpoint and its signatures.
    let note_bytes = fetch(&client, &format!("{base}/checkpoint")).await?;
    let note_text = String::from_utf8(note_bytes).map_err(|_| VerifyError::MalformedCheckpoint("not UTF-8".into()))?;
    let note = Note::parse(&note_text).map_err(|e| VerifyError::UnparsableCheckpoint(Box::new(e)))?;
    note.verify(&options.vkey).map_err(VerifyError::BadSignature)?;
    let checkpoint = Checkpoint::parse(&note.text).map_err(|e| VerifyError::UnparsableCheckpoint(Box::new(e)))?;
    if checkpoint.origin != options.vkey.name {
        return Err(VerifyError::MalformedCheckpoint(format!(
            "origin {:?} is not the key's name {:?}",
            checkpoint.origin, options.vkey.name
        )));
    }
    let mut cosigned_by = Vec::new();
    for witness in &options.witnesses {
        note.verify_cosignature(witness)
            .map_err(|source| VerifyError::Witness { name: witness.name.clone(), source })?;
        cosigned_by.push(witness.name.clone());
    }
    let size = checkpoint.size;

    // 2. Every hash tile, level by level; each level's hashes must be the roots of the level below.
    let mut levels: Vec<Vec<Hash>> = Vec::new();
    let mut fetched = 0u64;
    let mut level = 0u8;
    while level < 8 && (level == 0 || (size >> (8 * u32::from(level))) > 0) {
        let mut hashes = Vec::new();
        for tile in tiles_at(level, size) {
            let bytes = fetch(&client, &format!("{base}/{}", tile.path())).await?;
            fetched += 1;
            if bytes.len() != usize::from(tile.width) * 32 {
                return Err(VerifyError::TileChanged {
                    path: tile.path(),
                    detail: format!("{} bytes, expected {}", bytes.len(), usize::from(tile.width) * 32),
                });
            }
            hashes.extend(bytes.chunks_exact(32).map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                Hash(h)
            }));
        }
        if let Some(below) = levels.last() {
            for (i, hash) in hashes.iter().enumerate() {
                let group = below.get(i * 256..(i + 1) * 256).unwrap_or(&[]);
                if perfect_root(group) != *hash {
                    let tile = Tile { level: Some(level), index: (i / 256) as u64, width: 256 };
                    return Err(VerifyError::TileChanged {
                        path: tile.path(),
                        detail: format!("hash {i} of level {level} is not the root of the 256 hashes below it"),
                    });
                }
            }
        }
        levels.push(hashes);
        level += 1;
    }
    let levels = Levels(levels);
    let root = tree::root(&levels, size).map_err(|source| VerifyError::TilesIncomplete {
        path: "tile/0".into(),
        size,
        source,
    })?;
    if root != checkpoint.root {
        // The top level's tiles are the ones that no higher tile vouches for.
        let top = u8::try_from(levels.0.len().saturating_sub(1)).unwrap_or(0);
        let paths: Vec<String> = tiles_at(top, size).iter().map(Tile::path).collect();
        return Err(VerifyError::TileChanged {
            path: paths.join(", "),
            detail: format!("the tiles hash to {root}, not the signed root {}", checkpoint.root),
        });
    }

    // 3. Every entry: valid, canonical, and hashing to its leaf.
    let leaves = levels.0.first().map(Vec::as_slice).unwrap_or(&[]);
    let mut index = 0u64;
    let mut formats = [0u64; 2];
    let mut bundle = 0u64;
    while index < size {
        let width = (size - bundle * TILE_WIDTH).min(TILE_WIDTH);
        let tile = Tile { level: None, index: bundle, width: width as u16 };
        let bytes = fetch(&client, &format!("{base}/{}", tile.path())).await?;
        fetched += 1;
        let entries = split_bundle(&bytes).ok_or_else(|| VerifyError::EntryChanged {
            index,
            detail: format!("bundle {} is malformed", tile.path()),
        })?;
        if entries.len() as u64 != width {
            return Err(VerifyError::EntryChanged {
                index,
                detail: format!("bundle {} holds {} entries, expected {width}", tile.path(), entries.len()),
            });
        }
        for entry in entries {
            let expected = leaves.get(index as usize).copied().unwrap_or_else(Hash::empty);
            if leaf_hash(entry) != expected {
                return Err(VerifyError::EntryChanged {
                    index,
                    detail: "it does not hash to its leaf in the signed tree".into(),
                });
            }
            let decoded = Entry::decode(entry).map_err(|source| VerifyError::EntryInvalid { index, source })?;
            match decoded {
                Entry::V1(_) => {
                    formats[0] += 1;
                    visit(index, None);
                }
                Entry::V2(event) => {
                    if let Some(problem) = public_problem(&event) {
                        return Err(VerifyError::EntryChanged { index, detail: problem.to_owned() });
                    }
                    formats[1] += 1;
                    visit(index, Some(&event));
                }
            }
            index += 1;
        }
        bundle += 1;
    }

    // 4. Consistency with the checkpoint verified last time.
    let mut previous_size = None;
    if let Some(path) = &options.state {
        let mut state = read_state(path)?.unwrap_or_default();
        if let Some(last) = state.of_log(path, &checkpoint.origin)? {
            if last.size > size {
                return Err(VerifyError::Shrank { old: last.size, new: size });
            }
            let old_root = tree::root(&levels, last.size).map_err(|source| VerifyError::TilesIncomplete {
                path: "tile/0".into(),
                size: last.size,
                source,
            })?;
            if old_root != last.root {
                return Err(VerifyError::Forked {
                    size: last.size,
                    old_root: last.root.to_base64(),
                    new_root: old_root.to_base64(),
                });
            }
            previous_size = Some(last.size);
        }
        state.insert(checkpoint.origin.clone(), Verified { size, root, checkpoint: Some(note_text.clone()) });
        write_state(path, &state)?;
    }

    Ok(Report { origin: checkpoint.origin, size, root, previous_size, tiles: fetched, cosigned_by, formats })
}

/// What is wrong with a format 2 entry's public part, if anything: its subject tag, annex
/// commitment and principal pseudonym must have their forms (hex of a random nonce and MACs and
/// digests), or the entry could carry something else in their place.
pub fn public_problem(event: &Event) -> Option<&'static str> {
    if event.subject.as_ref().is_some_and(|tag| !tag.is_well_formed()) {
        return Some("its subject is not a subject tag");
    }
    if event.annex.as_deref().is_some_and(|commitment| !is_subject_hash(commitment)) {
        return Some("its annex is not a commitment");
    }
    if event.principal.as_ref().is_some_and(|p| !is_subject_hash(&p.pseudonym)) {
        return Some("its principal is not a pseudonym");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::log_prefix;

    #[test]
    fn the_log_is_found_from_the_root_or_from_its_prefix() {
        for url in [
            "http://127.0.0.1:7878",
            "http://127.0.0.1:7878/",
            "http://127.0.0.1:7878/log",
            "http://127.0.0.1:7878/log/",
        ] {
            assert_eq!(log_prefix(url), "http://127.0.0.1:7878/log", "{url}");
        }
        assert_eq!(log_prefix("https://example.org/clover/log"), "https://example.org/clover/log");
        assert_eq!(log_prefix("https://example.org/clover"), "https://example.org/clover/log");
        // A host named `log` is a root, not a prefix.
        assert_eq!(log_prefix("http://log"), "http://log/log");
        assert_eq!(log_prefix("http://log:7878/"), "http://log:7878/log");
        // A path that only ends in the letters is not the prefix either.
        assert_eq!(log_prefix("http://example.org/changelog"), "http://example.org/changelog/log");
    }
}
