//! Nothing lost: `clover serve` killed with SIGKILL while clients append, then restarted on the
//! same data directory.
//!
//! Every append the server acknowledged (a 201 with a `log_index`) must be in the restarted
//! log, at its index, and provably so against the new checkpoint; the log after the restart must
//! be consistent with every checkpoint published before the kill; and appends must go on.
//!
//! The checks are made twice where it matters: with Clover's own verifiers and with independent
//! implementations (`tlog_tiles` for the tree, `signed_note` for signatures), and the whole tree
//! is rebuilt from the entry bundles the restarted server serves.
//!
//! All traffic is to 127.0.0.1; the test is bounded in count (a few hundred appends per client)
//! and in time (every wait gives up after [`PATIENCE`]), and never leaves a server running.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::hash::{Hash, leaf_hash};
use clover_tlog::note::{Note, VerifierKey};
use clover_tlog::tree::{verify_consistency, verify_inclusion};
use serde_json::{Value, json};

use crate::support::{
    DUBLIN, PATIENCE, Process, acknowledgement, clover, create_subject, employee_token, run_ok, stdout_of,
};

const SUBJECT: &str = "s-crash";

/// Concurrent appending clients.
const CLIENTS: usize = 8;
/// The most appends one client tries; far more than are made before the kill.
const WRITES_PER_CLIENT: usize = 400;
/// The kill comes once this many appends were acknowledged (more than one entry bundle's 256,
/// so that both a full and a partial bundle are read back)...
const KILL_AFTER_ACKS: usize = 300;
/// ... and at least this many distinct checkpoints were seen.
const KILL_AFTER_CHECKPOINTS: usize = 3;
/// How often the checkpoint is polled while clients append.
const CHECKPOINT_POLL: Duration = Duration::from_millis(20);
/// Entries per full entry bundle (c2sp.org/tlog-tiles).
const BUNDLE_WIDTH: u64 = 256;

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// An HTTP client whose connections come from 127.0.0.1 (the `dublin-1` site).
fn client() -> reqwest::Client {
    crate::support::client(DUBLIN)
}

/// GETs `url`; must answer 200. Returns the body.
async fn get_ok(http: &reqwest::Client, url: &str) -> Vec<u8> {
    let response = http.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status();
    let body = response.bytes().await.unwrap_or_else(|e| panic!("GET {url}: {e}")).to_vec();
    assert_eq!(status, 200, "GET {url}: {}", String::from_utf8_lossy(&body));
    body
}

async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    let body = get_ok(http, url).await;
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body:?}"))
}

/// Writes a profile record of the test's subject; must answer 201. Returns its id and log index.
async fn write_record(server: &Process, token: &str, fields: &Value) -> (String, u64) {
    crate::support::write_record(server, token, SUBJECT, fields).await
}

// ---------------------------------------------------------------------------------------------
// The log, checked
// ---------------------------------------------------------------------------------------------

/// Verifies a checkpoint note's signature by `vkey`, with Clover's verifier and with
/// `signed_note`, and returns its body, which both parsers must read alike.
fn verify_checkpoint(vkey: &str, note: &str) -> Checkpoint {
    let ours = VerifierKey::parse(vkey).unwrap_or_else(|e| panic!("vkey {vkey:?}: {e}"));
    let parsed = Note::parse(note).unwrap_or_else(|e| panic!("checkpoint note: {e}\n{note}"));
    parsed.verify(&ours).unwrap_or_else(|e| panic!("checkpoint signature (clover_log): {e}\n{note}"));

    let theirs = signed_note::StandardVerifier::new(vkey).unwrap_or_else(|e| panic!("vkey {vkey:?}: {e:?}"));
    let list = signed_note::VerifierList::new(vec![Box::new(theirs)]);
    let their_note =
        signed_note::Note::from_bytes(note.as_bytes()).unwrap_or_else(|e| panic!("checkpoint note: {e:?}\n{note}"));
    their_note.verify(&list).unwrap_or_else(|e| panic!("checkpoint signature (signed_note): {e:?}\n{note}"));
    assert_eq!(their_note.text(), parsed.text.as_bytes(), "the two parsers disagree on the signed text");

    let checkpoint = Checkpoint::parse(&parsed.text).unwrap_or_else(|e| panic!("checkpoint body: {e}\n{note}"));
    let independent = tlog_tiles::Checkpoint::from_bytes(parsed.text.as_bytes())
        .unwrap_or_else(|e| panic!("checkpoint body (tlog_tiles): {e:?}\n{note}"));
    assert_eq!(independent.size(), checkpoint.size, "{note}");
    assert_eq!(independent.hash().0, checkpoint.root.0, "{note}");
    assert_eq!(checkpoint.origin, ours.name, "the checkpoint's origin is not the key's name: {note}");
    checkpoint
}

/// The index part of a tile path: groups of three digits, each but the last prefixed with `x`.
fn tile_index_path(n: u64) -> String {
    let mut groups = vec![format!("{:03}", n % 1000)];
    let mut rest = n / 1000;
    while rest > 0 {
        groups.push(format!("x{:03}", rest % 1000));
        rest /= 1000;
    }
    groups.reverse();
    groups.join("/")
}

/// Every entry of the tree of `size` entries, read from the entry bundles.
async fn fetch_entries(http: &reqwest::Client, server: &Process, size: u64) -> Vec<Vec<u8>> {
    let mut entries = Vec::new();
    let mut bundle = 0;
    while bundle * BUNDLE_WIDTH < size {
        let width = (size - bundle * BUNDLE_WIDTH).min(BUNDLE_WIDTH);
        let partial = if width == BUNDLE_WIDTH { String::new() } else { format!(".p/{width}") };
        let path = format!("/log/tile/entries/{}{partial}", tile_index_path(bundle));
        let bytes = get_ok(http, &server.at(&path)).await;
        let mut rest = bytes.as_slice();
        let mut count = 0;
        while !rest.is_empty() {
            assert!(rest.len() >= 2, "{path}: a truncated length");
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            assert!(rest.len() >= 2 + len, "{path}: a truncated entry");
            entries.push(rest[2..2 + len].to_vec());
            rest = &rest[2 + len..];
            count += 1;
        }
        assert_eq!(count, width, "{path}: {count} entries");
        bundle += 1;
    }
    entries
}

/// MTH(leaves), RFC 6962, computed here with `tlog_tiles`'s node hash.
fn merkle_root(leaves: &[tlog_tiles::Hash]) -> [u8; 32] {
    fn mth(leaves: &[tlog_tiles::Hash]) -> tlog_tiles::Hash {
        if leaves.len() == 1 {
            return leaves[0];
        }
        let split = 1usize << (usize::BITS - 1 - (leaves.len() - 1).leading_zeros());
        tlog_tiles::node_hash(mth(&leaves[..split]), mth(&leaves[split..]))
    }
    assert!(!leaves.is_empty(), "the empty tree is never checked here");
    mth(leaves).0
}

fn hashes(json: &Value) -> Vec<Hash> {
    json.as_array()
        .unwrap_or_else(|| panic!("not an array of hashes: {json}"))
        .iter()
        .map(|h| h.as_str().and_then(Hash::from_base64).unwrap_or_else(|| panic!("not a base64 hash: {h}")))
        .collect()
}

fn independent(hashes: &[Hash]) -> Vec<tlog_tiles::Hash> {
    hashes.iter().map(|h| tlog_tiles::Hash(h.0)).collect()
}

/// Proves, through the server's proof endpoint, that the tree `old` is a prefix of the tree
/// `new`, and checks the proof with both verifiers.
async fn check_consistency(http: &reqwest::Client, server: &Process, old: &Checkpoint, new: &Checkpoint) {
    let url = server.at(&format!("/v1/log/proof/consistency?old={}&new={}", old.size, new.size));
    let answer = get_json(http, &url).await;
    assert_eq!(answer["old"], old.size, "{answer}");
    assert_eq!(answer["new"], new.size, "{answer}");
    let proof = hashes(&answer["proof"]);
    verify_consistency(old.size, new.size, &old.root, &new.root, &proof).unwrap_or_else(|e| {
        panic!("the tree of {} is not consistent with the checkpoint of {}: {e}", new.size, old.size)
    });
    if old.size > 0 {
        tlog_tiles::check_tree(
            &independent(&proof),
            new.size,
            tlog_tiles::Hash(new.root.0),
            old.size,
            tlog_tiles::Hash(old.root.0),
        )
        .unwrap_or_else(|e| {
            panic!("tlog_tiles: the tree of {} is not consistent with the checkpoint of {}: {e:?}", new.size, old.size)
        });
    }
}

/// Proves, through the server's proof endpoint, that `entry` is at `index` in the tree of
/// `checkpoint`, and checks the proof with both verifiers.
async fn check_inclusion(http: &reqwest::Client, server: &Process, checkpoint: &Checkpoint, index: u64, entry: &[u8]) {
    let url = server.at(&format!("/v1/log/proof/inclusion?index={index}&size={}", checkpoint.size));
    let answer = get_json(http, &url).await;
    assert_eq!(answer["index"], index, "{answer}");
    assert_eq!(answer["size"], checkpoint.size, "{answer}");
    let leaf = leaf_hash(entry);
    assert_eq!(answer["leaf_hash"], leaf.to_base64(), "entry {index}: the proof is for another leaf: {answer}");
    assert_eq!(answer["root_hash"], checkpoint.root.to_base64(), "entry {index}: another root: {answer}");
    let proof = hashes(&answer["proof"]);
    verify_inclusion(&leaf, index, checkpoint.size, &proof, &checkpoint.root)
        .unwrap_or_else(|e| panic!("entry {index} is not in the tree of {}: {e}", checkpoint.size));
    tlog_tiles::check_record(
        &independent(&proof),
        checkpoint.size,
        tlog_tiles::Hash(checkpoint.root.0),
        index,
        tlog_tiles::record_hash(entry),
    )
    .unwrap_or_else(|e| panic!("tlog_tiles: entry {index} is not in the tree of {}: {e:?}", checkpoint.size));
}

/// Checks that `entry` is the log entry of the write of `record`: the public entry is an allowed
/// write of a profile record, and the annex it commits to, which the region's `store` keeps,
/// names the record.
async fn check_write_entry(store: &dyn clover_store::Store, index: u64, entry: &[u8], record: &str) {
    let event: Value = serde_json::from_slice(entry)
        .unwrap_or_else(|e| panic!("entry {index} is not JSON ({e}): {}", String::from_utf8_lossy(entry)));
    assert_eq!(event["kind"], "write", "entry {index}: {event}");
    assert_eq!(event["category"], "profile", "entry {index}: {event}");
    assert_eq!(event["decision"]["effect"], "allow", "entry {index}: {event}");
    let commitment = event["annex"].as_str().unwrap_or_else(|| panic!("entry {index} has no annex: {event}"));
    let annex = store.annex(commitment).await.unwrap().unwrap_or_else(|| panic!("entry {index}: no annex kept"));
    assert_eq!(annex.commitment(), commitment, "entry {index}: the annex does not match");
    assert_eq!(
        annex.record,
        clover_event::AnnexField::Clear(Some(record.to_owned())),
        "entry {index} is not the write of record {record}: {event}"
    );
}

// ---------------------------------------------------------------------------------------------
// The load
// ---------------------------------------------------------------------------------------------

/// One acknowledged append.
#[derive(Debug, Clone)]
struct Ack {
    index: u64,
    record: String,
    client: usize,
    seq: usize,
}

/// How a client ended.
#[derive(Debug)]
struct ClientEnd {
    client: usize,
    attempts: usize,
    /// The error that stopped it; `None` if it made all its writes.
    error: Option<String>,
}

/// Writes records in a loop until the server dies, `stop` is set or `WRITES_PER_CLIENT` were
/// tried; records every acknowledged one. Any failure before `killed` is set is a test failure.
async fn append_until_killed(
    url: String,
    token: String,
    client_no: usize,
    acks: Arc<Mutex<Vec<Ack>>>,
    acked: Arc<AtomicUsize>,
    killed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> ClientEnd {
    let http = client();
    for seq in 0..WRITES_PER_CLIENT {
        if stop.load(Ordering::SeqCst) {
            return ClientEnd { client: client_no, attempts: seq, error: None };
        }
        let body = json!({"category": "profile", "fields": {"display_name": "Aoife", "client": client_no, "seq": seq}});
        let sent = http.post(&url).bearer_auth(&token).json(&body).send().await;
        let outcome = match sent {
            Ok(response) => {
                let status = response.status();
                match response.text().await {
                    Ok(text) => Ok((status, text)),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok((status, text)) => {
                assert_eq!(status, 201, "client {client_no}, write {seq}: {text}");
                let (record, index) =
                    acknowledgement(&text).unwrap_or_else(|| panic!("client {client_no}, write {seq}: {text}"));
                acks.lock().unwrap().push(Ack { index, record, client: client_no, seq });
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                assert!(killed.load(Ordering::SeqCst), "client {client_no}, write {seq} failed before the kill: {e:?}");
                return ClientEnd { client: client_no, attempts: seq + 1, error: Some(format!("{e:?}")) };
            }
        }
    }
    ClientEnd { client: client_no, attempts: WRITES_PER_CLIENT, error: None }
}

/// Polls the checkpoint until the server dies; returns every distinct note seen, in order, each
/// verified. Checkpoints must never go backwards.
async fn poll_checkpoints(
    url: String,
    vkey: String,
    seen_count: Arc<AtomicUsize>,
    killed: Arc<AtomicBool>,
) -> Vec<(String, Checkpoint)> {
    let http = client();
    let mut seen: Vec<(String, Checkpoint)> = Vec::new();
    loop {
        let outcome = match http.get(&url).send().await {
            Ok(response) => {
                let status = response.status();
                response.text().await.map(|text| (status, text))
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok((status, note)) => {
                assert_eq!(status, 200, "GET /log/checkpoint: {note}");
                if seen.last().is_none_or(|(last, _)| *last != note) {
                    let checkpoint = verify_checkpoint(&vkey, &note);
                    if let Some((_, last)) = seen.last() {
                        assert!(
                            checkpoint.size > last.size,
                            "the served checkpoint went from {} to {} entries",
                            last.size,
                            checkpoint.size
                        );
                    }
                    seen.push((note, checkpoint));
                    seen_count.store(seen.len(), Ordering::SeqCst);
                }
            }
            Err(e) => {
                assert!(killed.load(Ordering::SeqCst), "GET /log/checkpoint failed before the kill: {e:?}");
                return seen;
            }
        }
        tokio::time::sleep(CHECKPOINT_POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_no_acknowledged_entry() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let data_arg = data_dir.to_str().unwrap().to_owned();

    let mut init = clover(tmp.path());
    init.args(["init", "--data-dir", &data_arg]);
    run_ok(init);
    let mut vkey = clover(tmp.path());
    vkey.args(["log", "vkey", "--data-dir", &data_arg]);
    let vkey = stdout_of(vkey);
    let token = employee_token(tmp.path(), &data_dir);

    // 1. A server, a subject.
    let mut server = Process::serve(clover(tmp.path()), &["--data-dir", &data_arg]);
    create_subject(&server, &token, SUBJECT).await;

    // 2. Clients append while the checkpoint is polled.
    let killed = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let acked = Arc::new(AtomicUsize::new(0));
    let seen_count = Arc::new(AtomicUsize::new(0));
    let poller = tokio::spawn(poll_checkpoints(
        server.at("/log/checkpoint"),
        vkey.clone(),
        Arc::clone(&seen_count),
        Arc::clone(&killed),
    ));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(append_until_killed(
                server.at(&format!("/v1/subjects/{SUBJECT}/records")),
                token.clone(),
                c,
                Arc::clone(&acks),
                Arc::clone(&acked),
                Arc::clone(&killed),
                Arc::new(AtomicBool::new(false)),
            ))
        })
        .collect();

    let deadline = Instant::now() + PATIENCE;
    loop {
        if acked.load(Ordering::SeqCst) >= KILL_AFTER_ACKS
            && seen_count.load(Ordering::SeqCst) >= KILL_AFTER_CHECKPOINTS
        {
            break;
        }
        // Nothing may stop before the kill: a task that did has failed (or made all its writes,
        // which would mean the kill came too late to test anything).
        if poller.is_finished() {
            poller.await.unwrap();
            panic!("the checkpoint poller stopped before the kill");
        }
        if let Some(done) = clients.iter().position(tokio::task::JoinHandle::is_finished) {
            let mut clients = clients;
            let end = clients.swap_remove(done).await.unwrap();
            panic!("a client stopped before the kill: {end:?}");
        }
        assert!(
            Instant::now() < deadline,
            "only {} acknowledged appends and {} checkpoints within {PATIENCE:?}; stderr:\n{}",
            acked.load(Ordering::SeqCst),
            seen_count.load(Ordering::SeqCst),
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // 3. SIGKILL, mid-append.
    killed.store(true, Ordering::SeqCst);
    let status = server.kill_hard().await;
    assert_eq!(status.signal(), Some(9), "clover serve did not die of SIGKILL: {status}");
    let killed_at = started.elapsed();
    let mut ends = Vec::new();
    for client in clients {
        let end = tokio::time::timeout(PATIENCE, client).await.expect("a client did not stop after the kill").unwrap();
        ends.push(end);
    }
    let seen = tokio::time::timeout(PATIENCE, poller).await.expect("the poller did not stop after the kill").unwrap();
    for end in &ends {
        assert!(end.error.is_some(), "client {} made all its writes: the kill came too late", end.client);
    }
    let acks = acks.lock().unwrap().clone();
    let attempts: usize = ends.iter().map(|e| e.attempts).sum();
    drop(server);

    // Every acknowledgement names its own index and its own record.
    let indexes: BTreeSet<u64> = acks.iter().map(|a| a.index).collect();
    assert_eq!(indexes.len(), acks.len(), "two acknowledged appends share a log index: {acks:?}");
    let records: BTreeSet<&str> = acks.iter().map(|a| a.record.as_str()).collect();
    assert_eq!(records.len(), acks.len(), "two acknowledged appends share a record id");
    for client in 0..CLIENTS {
        let mine: Vec<&Ack> = acks.iter().filter(|a| a.client == client).collect();
        assert!(mine.windows(2).all(|w| w[0].seq < w[1].seq && w[0].index < w[1].index), "client {client}: {mine:?}");
    }

    // 4. Restart on the same data directory.
    let server = Process::serve(clover(tmp.path()), &["--data-dir", &data_arg]);
    let http = client();
    let note = String::from_utf8(get_ok(&http, &server.at("/log/checkpoint")).await).unwrap();
    let after = verify_checkpoint(&vkey, &note);
    let max_acked = *indexes.last().expect("no acknowledged append");
    assert!(
        max_acked < after.size,
        "acknowledged entry {max_acked} is beyond the restarted log of {} entries; stderr:\n{}",
        after.size,
        server.stderr()
    );
    let largest_seen = seen.last().map_or(0, |(_, c)| c.size);
    assert!(largest_seen <= after.size, "the log shrank from a checkpoint of {largest_seen} to {}", after.size);

    // The whole tree, rebuilt from the entry bundles, has the new checkpoint's root.
    let entries = fetch_entries(&http, &server, after.size).await;
    let leaves: Vec<tlog_tiles::Hash> = entries.iter().map(|e| tlog_tiles::record_hash(e)).collect();
    assert_eq!(merkle_root(&leaves), after.root.0, "the entry bundles do not hash to the checkpoint's root");

    // Every acknowledged entry is there, is the write it acknowledged, and is provably included.
    let store = clover_store::SqliteStore::open(&data_dir.join("clover.db")).await.unwrap();
    for ack in &acks {
        let entry = &entries[usize::try_from(ack.index).unwrap()];
        check_write_entry(&store, ack.index, entry, &ack.record).await;
        check_inclusion(&http, &server, &after, ack.index, entry).await;
    }

    // The tree is consistent with every checkpoint published before the kill.
    for (note, checkpoint) in &seen {
        let prefix = &leaves[..usize::try_from(checkpoint.size).unwrap()];
        assert_eq!(
            merkle_root(prefix),
            checkpoint.root.0,
            "the first {} entries after the restart do not hash to the root published before the kill:\n{note}",
            checkpoint.size
        );
        check_consistency(&http, &server, checkpoint, &after).await;
    }

    // 5. Appends continue, and a later checkpoint includes them.
    let (record, index) = write_record(&server, &token, &json!({"display_name": "Aoife", "after": "restart"})).await;
    assert!(
        index >= after.size,
        "an append after the restart got index {index}, inside the old tree of {}",
        after.size
    );
    let deadline = Instant::now() + PATIENCE;
    let latest = loop {
        let note = String::from_utf8(get_ok(&http, &server.at("/log/checkpoint")).await).unwrap();
        let checkpoint = verify_checkpoint(&vkey, &note);
        if checkpoint.size > index {
            break checkpoint;
        }
        assert!(Instant::now() < deadline, "no checkpoint includes entry {index} within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    check_consistency(&http, &server, &after, &latest).await;
    let grown = fetch_entries(&http, &server, latest.size).await;
    assert_eq!(&grown[..entries.len()], entries.as_slice(), "entries changed after the restart");
    let new_leaves: Vec<tlog_tiles::Hash> = grown.iter().map(|e| tlog_tiles::record_hash(e)).collect();
    assert_eq!(merkle_root(&new_leaves), latest.root.0, "the entry bundles do not hash to the latest root");
    let entry = &grown[usize::try_from(index).unwrap()];
    check_write_entry(&store, index, entry, &record).await;
    store.close().await;
    check_inclusion(&http, &server, &latest, index, entry).await;
    let restart_stderr = server.stderr();
    server.stop();

    // Record writes that reached the log but whose answer the kill cut off.
    let unacknowledged = entries
        .iter()
        .filter_map(|e| serde_json::from_slice::<Value>(e).ok())
        .filter(|e| e["record"].as_str().is_some_and(|r| !records.contains(r)))
        .count();
    eprintln!(
        "crash test: {} acknowledged of {attempts} attempted appends by {CLIENTS} clients; {} checkpoints seen \
         before the kill (largest {largest_seen}); killed at {killed_at:?}; restarted log of {} entries \
         (with {unacknowledged} record writes never acknowledged); first append after restart at index {index}; \
         partial tail cut on restart: {}; total {:?}",
        acks.len(),
        seen.len(),
        after.size,
        restart_stderr.contains("cutting an unacknowledged partial tail"),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Several gateways, one log
// ---------------------------------------------------------------------------------------------

/// Whether the gateway says, in its metrics, that it sequences the log.
async fn is_sequencer(http: &reqwest::Client, server: &Process) -> bool {
    let text = String::from_utf8(get_ok(http, &server.at("/metrics")).await).unwrap();
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix("clover_log_sequencer "))
        .unwrap_or_else(|| panic!("no clover_log_sequencer in the metrics:\n{text}"));
    value.trim() == "1"
}

/// Two `clover serve` over one PostgreSQL database, clients writing through both; the gateway
/// that sequences the log is killed with SIGKILL under that load. The other takes over: its
/// clients' writes go on without an error, every write either gateway acknowledged is in the one
/// log at its index, and the log is consistent with every checkpoint published before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_one_log_and_the_sequencer_killed() {
    let started = Instant::now();
    let database = clover_testkit::TestDatabase::create().await;
    let tmp = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (tmp.path().join("gateway-a"), tmp.path().join("gateway-b"));
    let (arg_a, arg_b) = (dir_a.to_str().unwrap().to_owned(), dir_b.to_str().unwrap().to_owned());
    let mut init = clover(tmp.path());
    init.args(["init", "--data-dir", &arg_a]);
    run_ok(init);
    // The second gateway of the region: the same keys and configuration, copied.
    let copied = Command::new("cp").arg("-a").arg(&dir_a).arg(&dir_b).status().unwrap();
    assert!(copied.success());
    let mut vkey = clover(tmp.path());
    vkey.args(["log", "vkey", "--data-dir", &arg_a]);
    let vkey = stdout_of(vkey);
    let token = employee_token(tmp.path(), &dir_a);
    let http = client();

    // 1. The first gateway up sequences; the second follows.
    let mut a = Process::serve(clover(tmp.path()), &["--data-dir", &arg_a, "--store", &database.url]);
    let deadline = Instant::now() + PATIENCE;
    while !is_sequencer(&http, &a).await {
        assert!(Instant::now() < deadline, "the only gateway does not sequence; stderr:\n{}", a.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = Process::serve(clover(tmp.path()), &["--data-dir", &arg_b, "--store", &database.url]);
    assert!(!is_sequencer(&http, &b).await, "two gateways sequence at once");
    create_subject(&a, &token, SUBJECT).await;

    // 2. Clients write through both while the sequencer's checkpoint is polled.
    let killed = Arc::new(AtomicBool::new(false));
    let never = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (acks_a, acks_b) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let (acked_a, acked_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen_count = Arc::new(AtomicUsize::new(0));
    let poller = tokio::spawn(poll_checkpoints(
        a.at("/log/checkpoint"),
        vkey.clone(),
        Arc::clone(&seen_count),
        Arc::clone(&killed),
    ));
    let records = format!("/v1/subjects/{SUBJECT}/records");
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for c in 0..CLIENTS {
        if c % 2 == 0 {
            on_a.push(tokio::spawn(append_until_killed(
                a.at(&records),
                token.clone(),
                c,
                Arc::clone(&acks_a),
                Arc::clone(&acked_a),
                Arc::clone(&killed),
                Arc::clone(&never),
            )));
        } else {
            on_b.push(tokio::spawn(append_until_killed(
                b.at(&records),
                token.clone(),
                c,
                Arc::clone(&acks_b),
                Arc::clone(&acked_b),
                Arc::clone(&never),
                Arc::clone(&stop),
            )));
        }
    }
    let deadline = Instant::now() + PATIENCE;
    while acked_a.load(Ordering::SeqCst) < KILL_AFTER_ACKS / 2
        || acked_b.load(Ordering::SeqCst) < KILL_AFTER_ACKS / 2
        || seen_count.load(Ordering::SeqCst) < KILL_AFTER_CHECKPOINTS
    {
        assert!(!poller.is_finished(), "the checkpoint poller stopped before the kill");
        assert!(
            !on_a.iter().chain(&on_b).any(tokio::task::JoinHandle::is_finished),
            "a client stopped before the kill"
        );
        assert!(
            Instant::now() < deadline,
            "{} + {} acknowledged writes and {} checkpoints within {PATIENCE:?}; stderr:\n{}\n{}",
            acked_a.load(Ordering::SeqCst),
            acked_b.load(Ordering::SeqCst),
            seen_count.load(Ordering::SeqCst),
            a.stderr(),
            b.stderr()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // 3. SIGKILL the sequencer, mid-load. The other gateway's writes go on.
    killed.store(true, Ordering::SeqCst);
    let status = a.kill_hard().await;
    assert_eq!(status.signal(), Some(9), "the sequencer did not die of SIGKILL: {status}");
    let killed_at = started.elapsed();
    let at_kill = acked_b.load(Ordering::SeqCst);
    let deadline = Instant::now() + PATIENCE;
    while acked_b.load(Ordering::SeqCst) < at_kill + 100 {
        assert!(!on_b.iter().any(tokio::task::JoinHandle::is_finished), "a client of the survivor stopped");
        assert!(
            Instant::now() < deadline,
            "the survivor acknowledged {} writes in {PATIENCE:?} after the kill; stderr:\n{}",
            acked_b.load(Ordering::SeqCst) - at_kill,
            b.stderr()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for client in on_b {
        let end = tokio::time::timeout(PATIENCE, client).await.expect("a client did not stop").unwrap();
        assert!(end.error.is_none(), "a client of the survivor failed: {end:?}");
    }
    for client in on_a {
        let end = tokio::time::timeout(PATIENCE, client).await.expect("a client did not stop after the kill").unwrap();
        assert!(end.error.is_some(), "client {} of the killed gateway made all its writes", end.client);
    }
    let seen = tokio::time::timeout(PATIENCE, poller).await.expect("the poller did not stop after the kill").unwrap();
    assert!(is_sequencer(&http, &b).await, "the survivor did not take over the log; stderr:\n{}", b.stderr());
    drop(a);

    // 4. One log: every write acknowledged by either gateway, each at its own index.
    let acks: Vec<Ack> = acks_a.lock().unwrap().iter().chain(acks_b.lock().unwrap().iter()).cloned().collect();
    let indexes: BTreeSet<u64> = acks.iter().map(|a| a.index).collect();
    assert_eq!(indexes.len(), acks.len(), "two acknowledged writes share a log index");
    let note = String::from_utf8(get_ok(&http, &b.at("/log/checkpoint")).await).unwrap();
    let after = verify_checkpoint(&vkey, &note);
    let max_acked = *indexes.last().unwrap();
    assert!(max_acked < after.size, "acknowledged entry {max_acked} is beyond the log of {}", after.size);
    let entries = fetch_entries(&http, &b, after.size).await;
    let leaves: Vec<tlog_tiles::Hash> = entries.iter().map(|e| tlog_tiles::record_hash(e)).collect();
    assert_eq!(merkle_root(&leaves), after.root.0, "the entry bundles do not hash to the checkpoint's root");
    let store = clover_store::PostgresStore::open(&database.url).await.unwrap();
    for ack in &acks {
        let entry = &entries[usize::try_from(ack.index).unwrap()];
        check_write_entry(&store, ack.index, entry, &ack.record).await;
        check_inclusion(&http, &b, &after, ack.index, entry).await;
    }
    let largest_seen = seen.last().map_or(0, |(_, c)| c.size);
    for (note, checkpoint) in &seen {
        let prefix = &leaves[..usize::try_from(checkpoint.size).unwrap()];
        assert_eq!(
            merkle_root(prefix),
            checkpoint.root.0,
            "the log forked from a checkpoint published before the kill:\n{note}"
        );
        check_consistency(&http, &b, checkpoint, &after).await;
    }
    let after_kill = acks_b.lock().unwrap().iter().filter(|a| a.index >= largest_seen).count();

    // 5. The killed gateway comes back as a follower of the same log.
    let a = Process::serve(clover(tmp.path()), &["--data-dir", &arg_a, "--store", &database.url]);
    assert!(!is_sequencer(&http, &a).await, "the restarted gateway took the log from the running sequencer");
    let (record, index) = write_record(&a, &token, &json!({"display_name": "Aoife", "after": "failover"})).await;
    assert!(index >= after.size, "a write after the failover got index {index}, inside the tree of {}", after.size);
    let deadline = Instant::now() + PATIENCE;
    let latest = loop {
        let checkpoint =
            verify_checkpoint(&vkey, &String::from_utf8(get_ok(&http, &a.at("/log/checkpoint")).await).unwrap());
        if checkpoint.size > index {
            break checkpoint;
        }
        assert!(Instant::now() < deadline, "no checkpoint on the restarted gateway includes entry {index}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    check_consistency(&http, &a, &after, &latest).await;
    let entry = fetch_entries(&http, &a, latest.size).await.swap_remove(usize::try_from(index).unwrap());
    check_write_entry(&store, index, &entry, &record).await;
    check_inclusion(&http, &a, &latest, index, &entry).await;
    a.stop();
    b.stop();
    eprintln!(
        "scale-out test: {} writes acknowledged through the sequencer, {} through the other gateway ({after_kill} of \
         them after the last checkpoint the sequencer published); {} checkpoints seen before the kill (largest \
         {largest_seen}); killed at {killed_at:?}; log of {} entries after the failover; total {:?}",
        acks_a.lock().unwrap().len(),
        acks_b.lock().unwrap().len(),
        seen.len(),
        after.size,
        started.elapsed()
    );
}
