//! The log run for real: group commit, recovery, tiles checked by an independent implementation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::collections::HashMap;
use std::sync::Mutex;

use clover_log::event::{Event, EventKind};
use clover_log::note::{Note, SigningKey, TYPE_ED25519, VerifierKey};
use clover_log::tile::{Tile, split_bundle};
use clover_log::{Log, LogError, LogOptions};

fn event(n: u64, subject: Option<&str>) -> Event {
    Event {
        v: 1,
        kind: EventKind::Access,
        time: 1_795_000_000 + n as i64,
        principal: None,
        origin: None,
        action: Some("read".into()),
        subject: subject.map(str::to_owned),
        record: Some(format!("r-{n}")),
        category: None,
        decision: None,
        purpose: None,
        justification: None,
        detail: None,
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_batched_durable_and_verifiable_independently() {
    let dir = tempfile::tempdir().unwrap();
    let signer = SigningKey::generate("clover.test/eu", TYPE_ED25519).unwrap();
    let pkcs8 = signer.pkcs8().to_vec();
    let vkey = signer.verifier().to_string();
    let log = Log::open(dir.path(), signer, LogOptions::default()).unwrap();

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
    assert_eq!(log.entries_about("s-a").len(), 334);

    verify_independently(&log, 1000, &vkey).await;

    // Reopening keeps everything and extends consistently.
    let old_root = log.root(1000).unwrap();
    drop(log);
    let log = Log::open(dir.path(), key(&pkcs8), LogOptions::default()).unwrap();
    assert_eq!(log.size(), 1000);
    assert_eq!(log.root(1000).unwrap(), old_root);
    assert_eq!(log.append(&event(1000, None)).await.unwrap(), 1000);
    let proof = log.consistency_proof(1000, 1001).unwrap();
    clover_log::tree::verify_consistency(1000, 1001, &old_root, &log.root(1001).unwrap(), &proof).unwrap();
    let cp = Note::parse(&log.checkpoint()).unwrap();
    cp.verify(&VerifierKey::parse(&vkey).unwrap()).unwrap();
    assert!(cp.text.contains("\n1001\n"));
}

#[tokio::test]
async fn a_partial_tail_is_cut_and_a_rewritten_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let signer = SigningKey::generate("clover.test/eu", TYPE_ED25519).unwrap();
    let pkcs8 = signer.pkcs8().to_vec();
    let log = Log::open(dir.path(), signer, LogOptions::default()).unwrap();
    for n in 0..10 {
        log.append(&event(n, None)).await.unwrap();
    }
    let root = log.root(10).unwrap();
    drop(log);

    // A crash in the middle of a write leaves part of an entry: it is cut on open.
    let entries = dir.path().join("entries");
    let mut bytes = std::fs::read(&entries).unwrap();
    bytes.extend_from_slice(&[0, 40, b'{']);
    std::fs::write(&entries, &bytes).unwrap();
    let log = Log::open(dir.path(), key(&pkcs8), LogOptions::default()).unwrap();
    assert_eq!(log.size(), 10);
    assert_eq!(log.root(10).unwrap(), root);
    drop(log);

    // A torn checkpoint slot is skipped; the other one still holds the log to its word.
    std::fs::write(dir.path().join("checkpoint.1"), b"clover.test/eu\n10\ngarbage").unwrap();

    // Changing a logged entry is detected against the last signed checkpoint.
    let mut bytes = std::fs::read(&entries).unwrap();
    let at = bytes.iter().position(|b| *b == b'r').unwrap();
    bytes[at + 2] ^= 1;
    std::fs::write(&entries, &bytes).unwrap();
    let err = Log::open(dir.path(), key(&pkcs8), LogOptions::default()).unwrap_err();
    assert!(err.to_string().contains("were changed"), "{err}");

    // So is losing entries.
    let good = std::fs::read(&entries).unwrap();
    std::fs::write(&entries, &good[..good.len() / 2]).unwrap();
    let err = Log::open(dir.path(), key(&pkcs8), LogOptions::default()).unwrap_err();
    assert!(matches!(err, LogError::Inconsistent { .. }), "{err}");
}

#[tokio::test]
async fn checkpoints_can_be_signed_on_an_interval() {
    let dir = tempfile::tempdir().unwrap();
    let signer = SigningKey::generate("clover.test/eu", TYPE_ED25519).unwrap();
    let options = LogOptions { checkpoint_interval: std::time::Duration::from_millis(200), ..LogOptions::default() };
    let log = Log::open(dir.path(), signer, options).unwrap();
    for n in 0..5 {
        log.append(&event(n, None)).await.unwrap();
    }
    assert_eq!(log.size(), 5, "appends are durable and acknowledged without waiting for a checkpoint");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log.checkpoint_size() < 5 {
        assert!(std::time::Instant::now() < deadline, "no checkpoint covered the appends");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
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
    let signer = SigningKey::generate("clover.test/eu", TYPE_ED25519).unwrap();
    let pkcs8 = signer.pkcs8().to_vec();
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
    clover_log::tree::verify_consistency(1000, 1001, &published, &follower.root(1001).unwrap(), &proof).unwrap();
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
