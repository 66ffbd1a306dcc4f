//! The log run for real: group commit, recovery, tiles checked by an independent implementation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::collections::HashMap;
use std::sync::Mutex;

use clover_event::{Event, EventKind};
use clover_log::{Log, LogError, LogOptions};
use clover_tlog::hash::leaf_hash;
use clover_tlog::note::{Note, SigningKey, TYPE_ED25519, VerifierKey, generate_pkcs8};
use clover_tlog::tile::{Tile, split_bundle};

use clover_testkit::fixtures::read_event as event;

fn key(pkcs8: &[u8]) -> SigningKey {
    SigningKey::from_pkcs8("clover.test/eu", TYPE_ED25519, pkcs8).unwrap()
}

/// Reads tiles through the independent `tlog_tiles` implementation, mapping its sumdb-style
/// paths (`tile/8/L/N`) to C2SP ones (`tile/L/N`).
struct Tiles<'a>(&'a Log, Mutex<HashMap<String, Vec<u8>>>);

impl tlog_tiles::TileReader for Tiles<'_> {
    fn height(&self) -> u8 {
        8
    }
    fn read_tiles(&self, tiles: &[tlog_tiles::Tile]) -> Result<Vec<Vec<u8>>, tlog_tiles::Error> {
        tiles
            .iter()
            .map(|t| {
                let path = t.path().replacen("tile/8/", "tile/", 1);
                let ours = Tile::parse(&path).unwrap();
                let handle = tokio::runtime::Handle::current();
                let bytes = tokio::task::block_in_place(|| handle.block_on(self.0.tile(&ours))).unwrap();
                self.1.lock().unwrap().insert(path, bytes.clone());
                Ok(bytes)
            })
            .collect()
    }
    fn save_tiles(&self, _: &[tlog_tiles::Tile], _: &[Vec<u8>]) {}
}

/// Checks a log of `size` entries (1000 here) the way an outside verifier would: its checkpoint
/// with an independent signed-note implementation, its tiles, proofs and entry bundles with an
/// independent tlog implementation.
async fn verify_independently(log: &Log, size: u64, vkey: &str) {
    assert!((769..=1024).contains(&size), "the checks below are written for four tiles");
    // The checkpoint verifies with an independent signed-note implementation...
    let note = log.checkpoint().to_string();
    let their_note = signed_note::Note::from_bytes(note.as_bytes()).unwrap();
    let verifiers = signed_note::VerifierList::new(vec![Box::new(signed_note::StandardVerifier::new(vkey).unwrap())]);
    their_note.verify(&verifiers).unwrap();
    let checkpoint = tlog_tiles::Checkpoint::from_bytes(their_note.text()).unwrap();
    assert_eq!(checkpoint.size(), size);

    // ...and the tiles lead an independent tlog implementation to the same root and proofs.
    let tiles = Tiles(log, Mutex::new(HashMap::new()));
    let reader = tlog_tiles::TileHashReader::new(size, *checkpoint.hash(), &tiles);
    let root = tlog_tiles::tree_hash(size, &reader).unwrap();
    assert_eq!(root, *checkpoint.hash());
    for index in [0u64, 1, 255, 256, 511, 999] {
        let proof = tlog_tiles::prove_record(size, index, &reader).unwrap();
        let ours = log.inclusion_proof(index, size).unwrap();
        assert_eq!(proof.iter().map(|h| h.0).collect::<Vec<_>>(), ours.iter().map(|h| h.0).collect::<Vec<_>>());
        let leaf = tlog_tiles::record_hash(&log.entry(index).await.unwrap());
        tlog_tiles::check_record(&proof, size, root, index, leaf).unwrap();
    }
    // Entry bundles hash to the level-0 tiles.
    for n in 0..4u64 {
        let width = if n == 3 { size - 768 } else { 256 };
        let bundle = log.tile(&Tile { level: None, index: n, width: width as u16 }).await.unwrap();
        let level0 = log.tile(&Tile { level: Some(0), index: n, width: width as u16 }).await.unwrap();
        let entries = split_bundle(&bundle).unwrap();
        assert_eq!(entries.len() as u64, width);
        for (i, entry) in entries.iter().enumerate() {
            assert_eq!(tlog_tiles::record_hash(entry).0, level0[i * 32..i * 32 + 32]);
            Event::decode(entry).unwrap();
        }
    }
    assert!(matches!(log.tile(&Tile { level: Some(0), index: 4, width: 256 }).await, Err(LogError::NotFound(_))));
}

/// Where a behaviour test's log lives: opened again with the same key, it is the same log.
enum Place {
    Directory(tempfile::TempDir),
    Postgres(clover_testkit::TestDatabase),
}

impl Place {
    async fn open(&self, pkcs8: &[u8], options: LogOptions) -> Log {
        match self {
            Place::Directory(dir) => Log::open(dir.path(), key(pkcs8), options).unwrap(),
            Place::Postgres(db) => Log::open_postgres(&db.url, key(pkcs8), options).await.unwrap(),
        }
    }
}

/// The log's behaviour, written once and run against each backend: concurrent appends are
/// batched, durable, each at its own index, indexed by subject, verifiable by an independent
/// implementation; reopening keeps everything and extends consistently; checkpoints can be
/// signed on an interval.
async fn behaviour(place: Place) {
    let pkcs8 = generate_pkcs8().unwrap();
    let vkey = key(&pkcs8).verifier().to_string();
    let log = place.open(&pkcs8, LogOptions::default()).await;

    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..1000u64 {
        let log = log.clone();
        tasks.spawn(
            async move { (n, log.append(&event(n, Some(if n % 3 == 0 { "s-a" } else { "s-b" }))).await.unwrap()) },
        );
    }
    let acked = tasks.join_all().await;
    let mut indexes: Vec<u64> = acked.iter().map(|(_, i)| *i).collect();
    indexes.sort_unstable();
    assert_eq!(indexes, (0..1000).collect::<Vec<_>>(), "every append got its own index");
    assert_eq!(log.size(), 1000);
    assert_eq!(log.checkpoint_size(), 1000, "an append is answered once a checkpoint covers it");
    assert_eq!(log.entries_about("s-a").len(), 334);
    assert_eq!(log.last_of_kind(EventKind::Access), Some(999));
    for (n, index) in &acked {
        let entry = Event::decode(&log.entry(*index).await.unwrap()).unwrap();
        assert_eq!(entry.detail, Some(format!("r-{n}")), "entry {index} is the one appended");
    }

    verify_independently(&log, 1000, &vkey).await;

    // Reopening keeps everything and extends consistently.
    let old_root = log.root(1000).unwrap();
    drop(log);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let log = place.open(&pkcs8, LogOptions::default()).await;
    assert_eq!(log.size(), 1000);
    assert_eq!(log.root(1000).unwrap(), old_root);
    assert_eq!(log.entries_about("s-a").len(), 334);
    assert_eq!(log.append(&event(1000, None)).await.unwrap(), 1000);
    let proof = log.consistency_proof(1000, 1001).unwrap();
    clover_tlog::tree::verify_consistency(1000, 1001, &old_root, &log.root(1001).unwrap(), &proof).unwrap();
    let cp = Note::parse(&log.checkpoint()).unwrap();
    cp.verify(&VerifierKey::parse(&vkey).unwrap()).unwrap();
    assert!(cp.text.contains("\n1001\n"));
    drop(log);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    // With an interval, a checkpoint follows the appends within it.
    let options = LogOptions { checkpoint_interval: std::time::Duration::from_millis(200), ..LogOptions::default() };
    let log = place.open(&pkcs8, options).await;
    for n in 0..5 {
        log.append(&event(1001 + n, None)).await.unwrap();
    }
    assert_eq!(log.size(), 1006);
    eventually("a checkpoint covers the appends", || log.checkpoint_size() == 1006).await;
    let cp = Note::parse(&log.checkpoint()).unwrap();
    cp.verify(&VerifierKey::parse(&vkey).unwrap()).unwrap();
    assert_eq!(clover_tlog::checkpoint::Checkpoint::parse(&cp.text).unwrap().root, log.root(1006).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behaviour_in_a_directory() {
    behaviour(Place::Directory(tempfile::tempdir().unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behaviour_in_postgres() {
    behaviour(Place::Postgres(clover_testkit::TestDatabase::create().await)).await;
}

/// A directory log of ten entries, signed; returns its key and the entries file's bytes.
async fn ten_entries(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    let pkcs8 = generate_pkcs8().unwrap();
    let log = Log::open(dir, key(&pkcs8), LogOptions::default()).unwrap();
    for n in 0..10 {
        log.append(&event(n, None)).await.unwrap();
    }
    assert_eq!(log.checkpoint_size(), 10);
    drop(log);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    (pkcs8, std::fs::read(dir.join("entries")).unwrap())
}

/// A directory log of five entries appended with a checkpoint interval, so that the last ones
/// are acknowledged before a checkpoint signs them; returns its key and the entries file's bytes.
async fn five_entries_acknowledged_beyond_the_checkpoint(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    let pkcs8 = generate_pkcs8().unwrap();
    let options = LogOptions { checkpoint_interval: std::time::Duration::from_secs(3600), ..LogOptions::default() };
    let log = Log::open(dir, key(&pkcs8), options).unwrap();
    for n in 0..5 {
        assert_eq!(log.append(&event(n, None)).await.unwrap(), n);
    }
    assert!(log.checkpoint_size() < 5, "acknowledged beyond the signed checkpoint");
    drop(log);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    (pkcs8, std::fs::read(dir.join("entries")).unwrap())
}

/// Where entry `index` starts in an entries file (at its length prefix).
fn offset_of(bytes: &[u8], index: usize) -> usize {
    let mut at = 0;
    for _ in 0..index {
        at += 2 + u16::from_be_bytes([bytes[at], bytes[at + 1]]) as usize;
    }
    at
}

/// Every file of the log directory, by name, with its bytes.
fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn damaged_signed_entries_refuse_to_open_and_leave_the_files_as_they_were() {
    // A length prefix damaged in the middle: entry 5 now claims more bytes than it has.
    let dir = tempfile::tempdir().unwrap();
    let (pkcs8, good) = ten_entries(dir.path()).await;
    let mut bytes = good.clone();
    let at = offset_of(&bytes, 5);
    bytes[at] ^= 0x01;
    std::fs::write(dir.path().join("entries"), &bytes).unwrap();
    let before = files(dir.path());
    let err = Log::open(dir.path(), key(&pkcs8), LogOptions::default()).unwrap_err();
    match &err {
        LogError::Damaged { index, offset, signed, .. } => {
            assert_eq!((*index, *offset, *signed), (5, at as u64, 10), "{err}");
        }
        other => panic!("expected the damaged entry to be named: {other}"),
    }
    let message = err.to_string();
    assert!(message.contains("entry 5") && message.contains(&format!("byte {at}")), "{message}");
    assert!(message.contains("quarantine"), "{message}");
    assert_eq!(files(dir.path()), before, "nothing was cut, moved or rewritten");
    assert!(!dir.path().join("quarantine").exists());

    // An entry's own bytes damaged: refused as well, the file untouched.
    let dir = tempfile::tempdir().unwrap();
    let (pkcs8, good) = ten_entries(dir.path()).await;
    let mut bytes = good.clone();
    let at = offset_of(&bytes, 3) + 2;
    bytes[at] = b'[';
    std::fs::write(dir.path().join("entries"), &bytes).unwrap();
    let before = files(dir.path());
    let err = Log::open(dir.path(), key(&pkcs8), LogOptions::default()).unwrap_err();
    assert!(matches!(err, LogError::Damaged { index: 3, signed: 10, .. }), "{err}");
    assert_eq!(files(dir.path()), before);
}

/// Opens the log in `dir` (whose entries file the caller changed), which must refuse with
/// [`LogError::Changed`]; checks that the message names the quarantine and that every file of the
/// log is byte for byte as it was. Returns the error's `(held, first, last, offset, end)` and its
/// message.
fn refused_as_changed(dir: &std::path::Path, pkcs8: &[u8]) -> ((u64, u64, u64, u64, u64), String) {
    let before = files(dir);
    let err = Log::open(dir, key(pkcs8), LogOptions::default()).unwrap_err();
    let message = err.to_string();
    let LogError::Changed { path, signed, held, first, last, offset, end, quarantine } = err else {
        panic!("expected the first changed entry to be named: {message}")
    };
    assert_eq!((path, signed, quarantine), (dir.join("entries"), 10, dir.join("quarantine")), "{message}");
    assert!(
        message.contains(&format!(
            "nothing was moved to quarantine (unsigned tails cut earlier are kept in {:?})",
            dir.join("quarantine")
        )),
        "{message}"
    );
    assert_eq!(files(dir), before, "nothing was cut, moved or rewritten");
    assert!(!dir.join("quarantine").exists(), "nothing was quarantined");
    ((held, first, last, offset, end), message)
}

/// Entries that still read but are not the ones signed: refused, naming the first that differs
/// as closely as the two checkpoints kept (of ten entries and of nine, here) tell, every file left
/// as it was. A signed root alone does not tell which of its leaves changed: the checkpoint of
/// nine tells whether the change is before entry 9 or is entry 9 itself.
#[tokio::test]
async fn changed_or_missing_signed_entries_are_named_and_the_files_left_as_they_were() {
    // The last signed entry changed so that it still reads: the earlier checkpoint still
    // matches the entries before it, so it is named exactly.
    let dir = tempfile::tempdir().unwrap();
    let (pkcs8, good) = ten_entries(dir.path()).await;
    let mut bytes = good.clone();
    let start = offset_of(&bytes, 9);
    let at = start + bytes[start..].windows(4).position(|w| w == b"r-9\"").unwrap();
    bytes[at + 2] = b'8';
    std::fs::write(dir.path().join("entries"), &bytes).unwrap();
    let (found, message) = refused_as_changed(dir.path(), &pkcs8);
    assert_eq!(found, (10, 9, 9, start as u64, good.len() as u64), "{message}");
    let named = format!(
        "the first 10 entries were changed (they do not hash to the signed root): the first that differs is \
         entry 9, at byte {start}"
    );
    assert!(message.contains(&named), "{message}");

    // An entry in the middle changed so that it still reads: before entry 9, since the earlier
    // checkpoint no longer matches either; which one, no root can tell.
    let dir = tempfile::tempdir().unwrap();
    let (pkcs8, good) = ten_entries(dir.path()).await;
    let mut bytes = good.clone();
    let at = offset_of(&bytes, 7) + bytes[offset_of(&bytes, 7)..].windows(4).position(|w| w == b"r-7\"").unwrap();
    bytes[at + 2] = b'8';
    std::fs::write(dir.path().join("entries"), &bytes).unwrap();
    let (found, message) = refused_as_changed(dir.path(), &pkcs8);
    assert_eq!(found, (10, 0, 8, 0, good.len() as u64), "{message}");
    let named = "the first that differs is one of entries 0 to 8 (entry 0 starts at byte 0); the checkpoints kept \
                 do not tell which";
    assert!(message.contains(named), "{message}");

    // The last signed entry missing: named, with where it would start, and the entries before it
    // are the ones signed (the earlier checkpoint says so).
    let dir = tempfile::tempdir().unwrap();
    let (pkcs8, good) = ten_entries(dir.path()).await;
    let end = offset_of(&good, 9);
    std::fs::write(dir.path().join("entries"), &good[..end]).unwrap();
    let (found, message) = refused_as_changed(dir.path(), &pkcs8);
    assert_eq!(found, (9, 9, 9, end as u64, end as u64), "{message}");
    let named = format!(
        "entry 9 is missing: the file ends at byte {end}, where entry 9 would start, and the entries before it are \
         the ones signed"
    );
    assert!(message.contains(&named), "{message}");

    // Signed entries missing at an entry boundary in the middle: the first missing one named,
    // with where it would start; whether those before it are the ones signed, no checkpoint kept
    // can tell.
    let dir = tempfile::tempdir().unwrap();
    let (pkcs8, good) = ten_entries(dir.path()).await;
    let end = offset_of(&good, 6);
    std::fs::write(dir.path().join("entries"), &good[..end]).unwrap();
    let (found, message) = refused_as_changed(dir.path(), &pkcs8);
    assert_eq!(found, (6, 0, 6, 0, end as u64), "{message}");
    let named = format!(
        "entries 6 to 9 are missing: the file ends at byte {end}, where entry 6 would start; the first entry that \
         differs from what was signed is one of entries 0 to 6"
    );
    assert!(message.contains(&named), "{message}");
}

#[tokio::test]
async fn a_write_cut_short_is_quarantined_and_the_log_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (pkcs8, good) = ten_entries(dir.path()).await;
    let root = {
        let log = Log::open(dir.path(), key(&pkcs8), LogOptions::default()).unwrap();
        log.root(10).unwrap()
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    // A crash in the middle of a write leaves part of an entry: a length that runs past the end.
    let partial = [0u8, 40, b'{'];
    std::fs::write(dir.path().join("entries"), [good.as_slice(), &partial].concat()).unwrap();
    let log = Log::open(dir.path(), key(&pkcs8), LogOptions::default()).unwrap();
    assert_eq!(log.size(), 10);
    assert_eq!(log.root(10).unwrap(), root);
    assert_eq!(std::fs::read(dir.path().join("entries")).unwrap(), good, "every signed byte is still there");
    let kept = dir.path().join("quarantine").join(format!("entries.{}", good.len()));
    assert_eq!(std::fs::read(&kept).unwrap(), partial, "the cut tail is kept, not discarded");
    drop(log);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    // Garbage appended at the end, as a torn write leaves it: the same, kept beside the first.
    let garbage = [&[0u8, 200][..], b"torn bytes of no entry at all"].concat();
    std::fs::write(dir.path().join("entries"), [good.as_slice(), &garbage].concat()).unwrap();
    let log = Log::open(dir.path(), key(&pkcs8), LogOptions::default()).unwrap();
    assert_eq!(log.size(), 10);
    assert_eq!(std::fs::read(dir.path().join("entries")).unwrap(), good);
    assert_eq!(std::fs::read(kept.with_extension(format!("{}.1", good.len()))).unwrap(), garbage);
    assert_eq!(log.append(&event(10, None)).await.unwrap(), 10, "and the log goes on");
    drop(log);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    // A torn checkpoint slot is skipped; the other one still holds the log to its word.
    std::fs::write(dir.path().join("checkpoint.1"), b"clover.test/eu\n10\ngarbage").unwrap();
    let mut bytes = std::fs::read(dir.path().join("entries")).unwrap();
    let at = bytes.windows(4).position(|w| w == b"r-7\"").unwrap();
    bytes[at + 2] = b'8';
    std::fs::write(dir.path().join("entries"), &bytes).unwrap();
    let err = Log::open(dir.path(), key(&pkcs8), LogOptions::default()).unwrap_err();
    assert!(err.to_string().contains("were changed"), "{err}");
}

#[tokio::test]
async fn what_may_have_been_acknowledged_is_never_cut() {
    // A complete entry at the end that does not read (garbage of the right length, or an
    // acknowledged entry damaged): refused, not cut.
    let dir = tempfile::tempdir().unwrap();
    let (pkcs8, good) = ten_entries(dir.path()).await;
    let bytes = [good.as_slice(), &[0, 5], b"junk!"].concat();
    std::fs::write(dir.path().join("entries"), &bytes).unwrap();
    let before = files(dir.path());
    let err = Log::open(dir.path(), key(&pkcs8), LogOptions::default()).unwrap_err();
    assert!(matches!(err, LogError::Damaged { index: 10, .. }), "{err}");
    assert!(err.to_string().contains("may have been acknowledged"), "{err}");
    assert_eq!(files(dir.path()), before);

    // With a checkpoint interval, appends are acknowledged before a checkpoint covers them: a
    // damaged one among them refuses the log rather than cutting it and those after it.
    let dir = tempfile::tempdir().unwrap();
    let (pkcs8, mut bytes) = five_entries_acknowledged_beyond_the_checkpoint(dir.path()).await;
    let at = offset_of(&bytes, 2) + 2;
    bytes[at] = b'[';
    std::fs::write(dir.path().join("entries"), &bytes).unwrap();
    let before = files(dir.path());
    let err = Log::open(dir.path(), key(&pkcs8), LogOptions::default()).unwrap_err();
    assert!(matches!(err, LogError::Damaged { index: 2, .. }), "{err}");
    assert_eq!(files(dir.path()), before, "entries 2 to 4 are all still there");

    // A log opened with a key that signed none of its checkpoints is refused, not taken as
    // unsigned.
    let dir = tempfile::tempdir().unwrap();
    let _ = ten_entries(dir.path()).await;
    let before = files(dir.path());
    let err = Log::open(dir.path(), key(&generate_pkcs8().unwrap()), LogOptions::default()).unwrap_err();
    assert!(err.to_string().contains("no checkpoint signed by this log's key"), "{err}");
    assert_eq!(files(dir.path()), before);
}

/// With a checkpoint interval the last entry may be acknowledged before a checkpoint signs it. If
/// its length prefix is damaged so that it runs past the end of the file, its bytes look like a
/// write cut short by a crash: it is moved to the quarantine, kept there byte for byte, and the
/// log opens without it (`docs/log.md` says why).
#[tokio::test]
async fn an_unsigned_last_entry_whose_length_runs_past_the_end_is_quarantined_not_destroyed() {
    let dir = tempfile::tempdir().unwrap();
    let (pkcs8, mut bytes) = five_entries_acknowledged_beyond_the_checkpoint(dir.path()).await;

    let at = offset_of(&bytes, 4);
    bytes[at] = 0xff;
    std::fs::write(dir.path().join("entries"), &bytes).unwrap();
    let log = Log::open(dir.path(), key(&pkcs8), LogOptions::default()).unwrap();
    assert_eq!(log.size(), 4);
    assert_eq!(std::fs::read(dir.path().join("entries")).unwrap(), &bytes[..at], "only the last entry was cut");
    let kept = std::fs::read(dir.path().join("quarantine").join(format!("entries.{at}"))).unwrap();
    assert_eq!(kept, &bytes[at..], "and its bytes are kept in the quarantine, damaged prefix and all");
}

/// A signer that fails while `failing` is set, as an HSM that blinks.
#[derive(Debug)]
struct Blinking {
    key: SigningKey,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl clover_tlog::note::NoteSigner for Blinking {
    fn name(&self) -> &str {
        self.key.name()
    }
    fn verifier(&self) -> VerifierKey {
        self.key.verifier()
    }
    fn sign_bytes(&self, message: &[u8]) -> Result<[u8; 64], clover_tlog::note::SignError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            let source = std::io::Error::other("the HSM is unavailable");
            return Err(clover_tlog::note::SignError { key: self.key.name().to_owned(), source: Box::new(source) });
        }
        clover_tlog::note::NoteSigner::sign_bytes(&self.key, message)
    }
}

#[tokio::test]
async fn a_signer_that_fails_leaves_entries_unsigned_and_the_log_running() {
    let dir = tempfile::tempdir().unwrap();
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pkcs8 = generate_pkcs8().unwrap();
    let log =
        Log::open(dir.path(), Blinking { key: key(&pkcs8), failing: failing.clone() }, LogOptions::default()).unwrap();
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    for n in 0..3 {
        assert_eq!(log.append(&event(n, None)).await.unwrap(), n, "durable appends are answered");
    }
    assert_eq!(log.checkpoint_size(), 0, "nothing could be signed");
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(log.append(&event(3, None)).await.unwrap(), 3);
    assert_eq!(log.checkpoint_size(), 4, "the next batch's checkpoint covers them all");
}

/// Waits until `check` holds, or panics saying `what` after ten seconds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_sharing_a_database_append_to_one_log_and_survive_their_sequencer() {
    let database = clover_testkit::TestDatabase::create().await;
    let pkcs8 = generate_pkcs8().unwrap();
    let signer = key(&pkcs8);
    let vkey = signer.verifier().to_string();
    let a = Log::open_postgres(&database.url, signer, LogOptions::default()).await.unwrap();
    let b = Log::open_postgres(&database.url, key(&pkcs8), LogOptions::default()).await.unwrap();

    // Two gateways append at once: one sequence, every index once.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..1000u64 {
        let log = if n % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move { log.append(&event(n, Some(if n % 3 == 0 { "s-a" } else { "s-b" }))).await.unwrap() });
    }
    let mut indexes = tasks.join_all().await;
    indexes.sort_unstable();
    assert_eq!(indexes, (0..1000).collect::<Vec<_>>(), "every append got its own index");
    eventually("both gateways see all 1000 entries", || a.size() == 1000 && b.size() == 1000).await;
    eventually("both hold the checkpoint of 1000", || a.checkpoint_size() == 1000 && b.checkpoint_size() == 1000).await;
    assert_eq!(a.root(1000).unwrap(), b.root(1000).unwrap());
    assert_eq!(a.checkpoint(), b.checkpoint());
    assert_eq!(b.entries_about("s-a").len(), 334);
    assert!(a.is_sequencer() != b.is_sequencer(), "exactly one gateway sequences");
    verify_independently(&a, 1000, &vkey).await;
    verify_independently(&b, 1000, &vkey).await;

    // The sequencer goes away; an append handed to the other waits for it to take over, and
    // the log goes on consistently with the checkpoint already published.
    let (leader, follower) = if a.is_sequencer() { (a, b) } else { (b, a) };
    let published = follower.root(1000).unwrap();
    drop(leader);
    let index = follower.append(&event(1000, None)).await.unwrap();
    assert_eq!(index, 1000);
    assert!(follower.is_sequencer(), "the other gateway took over");
    let proof = follower.consistency_proof(1000, 1001).unwrap();
    clover_tlog::tree::verify_consistency(1000, 1001, &published, &follower.root(1001).unwrap(), &proof).unwrap();
    let note = Note::parse(&follower.checkpoint()).unwrap();
    note.verify(&VerifierKey::parse(&vkey).unwrap()).unwrap();
    assert!(note.text.contains("\n1001\n"));
    drop(follower);

    // A gateway with another checkpoint key is refused: one log, one key.
    let stranger = SigningKey::generate("clover.test/eu", TYPE_ED25519).unwrap();
    let err = Log::open_postgres(&database.url, stranger, LogOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("not signed by this gateway's checkpoint key"), "{err}");

    // A logged entry changed in the database is found against the published checkpoint.
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    sqlx::query("UPDATE log_entries SET entry = entry || '\\x20'::bytea WHERE idx = 3").execute(&pool).await.unwrap();
    pool.close().await;
    let err = Log::open_postgres(&database.url, key(&pkcs8), LogOptions::default()).await.unwrap_err();
    assert!(matches!(err, LogError::Inconsistent { .. }) && err.to_string().contains("differ"), "{err}");
}

/// A permit for an allowed read, as the gateway gets one from the default pack.
fn permit() -> clover_policy::Permit {
    let pack = clover_policy::pack::PolicyPack::default_pack().unwrap();
    match pack.verdict(&clover_testkit::fixtures::read_profile_request(), &"user-1".parse().unwrap()) {
        clover_policy::Verdict::Allowed(permit) => permit,
        clover_policy::Verdict::Denied(denied) => panic!("the default pack refused a read: {denied:?}"),
    }
}

/// `bytes` as a PostgreSQL `bytea` literal.
fn bytea(bytes: &[u8]) -> String {
    format!("'\\x{}'::bytea", hex::encode(bytes))
}

/// Checks that entry `index` of `log` is `entry`, covered by its signed checkpoint: what the
/// database holds is a consistent log, whoever wrote it.
async fn logged(log: &Log, index: u64, entry: &[u8]) {
    assert_eq!(log.entry(index).await.unwrap(), entry);
    let size = log.checkpoint_size();
    assert!(index < size, "entry {index} is covered by the checkpoint of {size}");
    let proof = log.inclusion_proof(index, size).unwrap();
    let root = log.root(size).unwrap();
    clover_tlog::tree::verify_inclusion(&leaf_hash(entry), index, size, &proof, &root).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_swapped_in_log_pending_fails_its_append_and_is_logged_as_swapped() {
    let database = clover_testkit::TestDatabase::create().await;
    let pkcs8 = generate_pkcs8().unwrap();
    let leader = Log::open_postgres(&database.url, key(&pkcs8), LogOptions::default()).await.unwrap();
    eventually("the first gateway sequences", || leader.is_sequencer()).await;
    let follower = Log::open_postgres(&database.url, key(&pkcs8), LogOptions::default()).await.unwrap();
    assert!(!follower.is_sequencer());

    // Untouched, a follower's append goes through `log_pending` and is answered.
    let untouched = event(0, None);
    assert_eq!(follower.append(&untouched).await.unwrap(), 0);

    // Whoever can write the database rewrites every entry handed in for a harmless one.
    let harmless = event(9000, None).encode();
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    let swap = format!(
        "CREATE FUNCTION swap_entry() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN NEW.entry := {}; RETURN NEW; END $$; \
         CREATE TRIGGER swap_entry BEFORE INSERT ON log_pending FOR EACH ROW EXECUTE FUNCTION swap_entry();",
        bytea(&harmless)
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(swap)).execute(&pool).await.unwrap();

    // The read's entry is swapped before it is sequenced: no receipt, and the error says why.
    let read = event(1, Some("s-a"));
    let err = follower.append_permitted(&read, permit()).await.unwrap_err();
    match &err {
        LogError::Substituted { index, appended, committed } => {
            assert_eq!(*index, 1);
            assert_eq!(*appended, leaf_hash(&read.encode()));
            assert_eq!(*committed, leaf_hash(&harmless));
        }
        other => panic!("expected the substitution to be caught: {other}"),
    }
    let message = err.to_string();
    assert!(message.contains("index 1 is not the one appended") && message.contains("tampered"), "{message}");
    // The log holds what was committed and stays consistent: the swapped entry, in both gateways.
    // (The append failed as soon as the follower read the entry, before it took the checkpoint.)
    eventually("both gateways hold the checkpoint of 2", || {
        leader.checkpoint_size() == 2 && follower.checkpoint_size() == 2
    })
    .await;
    logged(&follower, 1, &harmless).await;
    logged(&leader, 1, &harmless).await;
    assert!(follower.entries_about("s-a").is_empty(), "the read is nowhere in the log");

    // The sequencer's own appends do not go through `log_pending`: nothing to swap.
    assert_eq!(leader.append(&event(2, None)).await.unwrap(), 2);
    logged(&leader, 2, &event(2, None).encode()).await;

    // Without the trigger, the follower's appends are answered again, with their own entries.
    sqlx::raw_sql("DROP TRIGGER swap_entry ON log_pending").execute(&pool).await.unwrap();
    let read = event(3, Some("s-a"));
    let receipt = follower.append_permitted(&read, permit()).await.unwrap();
    assert_eq!(receipt.index(), 3);
    assert_eq!(*receipt.entry_hash(), leaf_hash(&read.encode()));
    logged(&follower, 3, receipt.entry()).await;
    logged(&follower, 0, &untouched.encode()).await;
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_sequences_its_own_rewritten_pending_entry_fails_that_append() {
    let database = clover_testkit::TestDatabase::create().await;
    // The test holds the sequencer's advisory lock (`clovlog` in ASCII, as postgres.rs takes it),
    // so that the gateway's appends wait in `log_pending` until it lets go.
    const SEQUENCER_LOCK: i64 = 0x0063_6c6f_766c_6f67;
    let mut lock = <sqlx::PgConnection as sqlx::Connection>::connect(&database.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)").bind(SEQUENCER_LOCK).execute(&mut lock).await.unwrap();
    let pkcs8 = generate_pkcs8().unwrap();
    let log = Log::open_postgres(&database.url, key(&pkcs8), LogOptions::default()).await.unwrap();
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    let pending =
        || async { sqlx::query_scalar::<_, i64>("SELECT count(*) FROM log_pending").fetch_one(&pool).await.unwrap() };
    let wait_for = |n: i64| async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pending().await != n {
            assert!(std::time::Instant::now() < deadline, "{n} entries are handed in");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };

    // A read handed in, then rewritten in the table by a second connection.
    let read = event(0, Some("s-a"));
    let swapped = tokio::spawn({
        let (log, read) = (log.clone(), read.clone());
        async move { log.append_permitted(&read, permit()).await }
    });
    wait_for(1).await;
    let harmless = event(9000, None).encode();
    sqlx::query("UPDATE log_pending SET entry = $1").bind(&harmless).execute(&pool).await.unwrap();
    // Another, left alone.
    let untouched = event(1, Some("s-b"));
    let answered = tokio::spawn({
        let (log, untouched) = (log.clone(), untouched.clone());
        async move { log.append(&untouched).await }
    });
    wait_for(2).await;
    assert!(!log.is_sequencer());

    // The gateway takes the lock and sequences both: it commits what the table holds, and fails
    // the append whose entry is not the one it handed in.
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(SEQUENCER_LOCK).execute(&mut lock).await.unwrap();
    let err = swapped.await.unwrap().unwrap_err();
    assert!(matches!(err, LogError::Substituted { index: 0, .. }), "{err}");
    assert_eq!(answered.await.unwrap().unwrap(), 1, "the untouched append is answered");
    assert!(log.is_sequencer());
    logged(&log, 0, &harmless).await;
    logged(&log, 1, &untouched.encode()).await;
    assert_eq!(log.entries_about("s-b"), vec![1]);
    assert!(log.entries_about("s-a").is_empty());
    pool.close().await;
}

/// A receipt says what its permit allowed: an entry given with a permit must record an allowed
/// decision of the permit's action (a read's permit, an allowed read access); anything else is
/// refused before it is appended, and no receipt is made.
#[tokio::test]
async fn an_entry_that_does_not_match_its_permit_gets_no_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), key(&generate_pkcs8().unwrap()), LogOptions::default()).unwrap();
    let mut denied = event(0, None);
    denied.decision = Some(clover_event::EventDecision { effect: "deny".into(), view: None, policies: vec![] });
    let mut a_write = event(1, None);
    a_write.action = Some("write".into());
    let mut no_decision = event(2, None);
    no_decision.decision = None;
    let mut wrong_kind = event(3, None);
    wrong_kind.kind = EventKind::Erasure;
    for wrong in [denied, a_write, no_decision, wrong_kind] {
        let refused = log.append_permitted(&wrong, permit()).await;
        assert!(matches!(refused, Err(clover_log::LogError::NotPermitted(_))), "{refused:?}");
    }
    assert_eq!(log.size(), 0, "nothing was appended");
    assert!(log.append_permitted(&event(4, None), permit()).await.is_ok());
}

/// Set in the child process of [`a_write_that_fails_is_cut_back_and_the_log_goes_on`]: the
/// log directory it works on.
const FULL_DISK_CHILD: &str = "CLOVER_TEST_FULL_DISK_DIR";

/// Sets this process's soft file-size limit (`RLIMIT_FSIZE`, bytes) with util-linux's
/// `prlimit`; `None` lifts it.
fn limit_file_size(bytes: Option<u64>) {
    let value = bytes.map_or("unlimited".to_owned(), |b| b.to_string());
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &std::process::id().to_string(), &format!("--fsize={value}:")])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit --fsize={value}: {status}");
}

/// A disk that fills while the log writes a batch: the write fails part way (here at a file-size
/// limit, `EFBIG`, as a full disk fails with `ENOSPC`), the file is cut back to the entries it
/// held, those appends fail with [`LogError::Unwritten`], and once there is room the log takes
/// appends again, without a restart, every acknowledged entry in place and nothing quarantined.
///
/// The limit is set on a child process (this test run again, with `SIGXFSZ` ignored by the
/// shell that starts it), so that no other test of this binary runs under it.
#[tokio::test]
async fn a_write_that_fails_is_cut_back_and_the_log_goes_on() {
    if let Some(dir) = std::env::var_os(FULL_DISK_CHILD) {
        let dir = std::path::PathBuf::from(dir);
        let pkcs8 = std::fs::read(dir.join("key.pkcs8")).unwrap();
        let entries = dir.join("log").join("entries");
        let log = Log::open(&dir.join("log"), key(&pkcs8), LogOptions::default()).unwrap();
        assert_eq!(log.size(), 10);
        let held = std::fs::read(&entries).unwrap();

        // Room for three more bytes: the next entry's write is cut short by the limit.
        limit_file_size(Some(held.len() as u64 + 3));
        for n in 10..13 {
            let error = log.append(&event(n, None)).await.expect_err("an append on a full disk fails");
            let LogError::Unwritten { path, entries: batch, source } = &error else {
                panic!("append {n} on a full disk answered {error:?}")
            };
            assert_eq!((path, *batch), (&entries, 1));
            assert!(source.to_string().to_lowercase().contains("too large"), "{source}");
            // The write's error is the source, not text in the message.
            let cause = std::error::Error::source(&error).map(ToString::to_string);
            assert_eq!(cause, Some(source.to_string()));
            assert!(!error.to_string().to_lowercase().contains("too large"), "{error}");
            assert_eq!(std::fs::read(&entries).unwrap(), held, "the failed write is cut back");
        }
        assert_eq!(log.size(), 10);
        assert_eq!(log.checkpoint_size(), 10, "no checkpoint signed for a batch that was not written is shown");

        // Room again: the same sequencer takes the next appends at the next indexes.
        limit_file_size(None);
        assert_eq!(log.append(&event(13, None)).await.unwrap(), 10);
        assert_eq!(log.append(&event(14, None)).await.unwrap(), 11);
        assert_eq!(log.checkpoint_size(), 12);
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("log")).unwrap();
    let (pkcs8, good) = ten_entries(&dir.path().join("log")).await;
    std::fs::write(dir.path().join("key.pkcs8"), &pkcs8).unwrap();

    let child = std::process::Command::new("sh")
        .args(["-c", r#"trap '' XFSZ; exec "$@""#, "sh"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "a_write_that_fails_is_cut_back_and_the_log_goes_on", "--nocapture", "--test-threads=1"])
        .env(FULL_DISK_CHILD, dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&child.stdout);
    let err = String::from_utf8_lossy(&child.stderr);
    assert!(child.status.success(), "the child failed: {}\n{out}\n{err}", child.status);
    assert!(out.contains("1 passed"), "the child ran the test: {out}");

    // Opened again: the ten entries and the two after the failure, nothing cut or quarantined.
    let log = Log::open(&dir.path().join("log"), key(&pkcs8), LogOptions::default()).unwrap();
    assert_eq!(log.size(), 12);
    assert_eq!(log.checkpoint_size(), 12);
    let bytes = std::fs::read(dir.path().join("log").join("entries")).unwrap();
    assert_eq!(&bytes[..good.len()], good.as_slice(), "the entries acknowledged before are as they were");
    logged(&log, 10, &event(13, None).encode()).await;
    logged(&log, 11, &event(14, None).encode()).await;
    assert!(!dir.path().join("log").join("quarantine").exists(), "nothing was torn, so nothing is quarantined");
}
