//! Durable append throughput of the log against a plain file writer, and proof costs.
//!
//! Run with `cargo bench -p clover-log --bench append`; BENCHMARKS.md at the repository root
//! records the figures and how to read them.
//!
//! - `log_append/concurrent/{N}`: N writer tasks on a 2-worker tokio runtime append a fixed
//!   number of gateway-like events in total, each task waiting for every acknowledgement (so
//!   each counted entry is durable: written, `fdatasync`ed and covered by a signed checkpoint).
//!   One log per N, in a fresh temporary directory that grows over the run.
//! - `plain_writer/{batch}`: the baseline, the same framed bytes (`u16` length + entry) written
//!   to a plain file with one `write_all` and one `sync_data` per batch of `batch` entries.
//!   `plain_writer/as_log_{N}` uses the mean batch the log actually formed with N writers,
//!   measured from the sequencer thread's write-syscall count (two writes per batch: the
//!   entries, then the checkpoint).
//! - `inclusion_proof/{size}`, `verify_inclusion/{size}`: proofs for random indexes in a log
//!   of 100,000 entries; `hash/leaf_sha256` and `hash/node_sha256` are the unit costs to
//!   compare them with.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::fs::OpenOptions;
use std::hint::black_box;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clover_event::Event;
use clover_log::{Log, LogOptions};
use clover_tlog::hash::{Hash, leaf_hash, node_hash};
use clover_tlog::note::{SigningKey, TYPE_ED25519};
use clover_tlog::tile::push_bundle_entry;
use clover_tlog::tree::verify_inclusion;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

/// Entries appended per iteration (fewer with one writer: every entry is then one fsync).
const TOTAL: usize = 10_000;
const TOTAL_SERIAL: usize = 1_000;
const WRITERS: [usize; 3] = [1, 64, 1024];
const PLAIN_BATCHES: [usize; 4] = [1, 64, 1024, 10_000];
const PROOF_LOG_SIZE: u64 = 100_000;

/// The mean batch the log formed for each writer count, for the matched baselines.
static ACHIEVED: Mutex<Vec<(usize, f64)>> = Mutex::new(Vec::new());

/// An allowed read as the gateway logs it (crates/gateway/src/pipeline): about 490 bytes.
fn event(n: usize) -> Event {
    clover_testkit::fixtures::access_event(n)
}

fn runtime() -> tokio::runtime::Runtime {
    // No I/O or timer driver: the workers park on a condition variable, so the only write
    // syscalls on the sequencer thread are the log's own.
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap()
}

fn signer() -> SigningKey {
    SigningKey::generate("bench.clover.test/eu", TYPE_ED25519).unwrap()
}

fn configure(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, measurement: Duration) {
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(measurement);
}

/// The ids of the threads named like the log's sequencer ("clover-log-sequencer", cut to 15
/// bytes by the kernel).
fn sequencer_threads() -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks
        .filter_map(Result::ok)
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "clover-log-sequ"))
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The write-syscall counter (`syscw` of /proc/.../io) of one thread.
struct WriteCounter(Option<PathBuf>);

impl WriteCounter {
    /// The counter of the sequencer thread that appeared since `before` was taken (waiting a
    /// little: the thread names itself once it runs).
    fn new_since(before: &[String]) -> Self {
        for _ in 0..100 {
            let new: Vec<String> = sequencer_threads().into_iter().filter(|t| !before.contains(t)).collect();
            if let [tid] = new.as_slice() {
                return Self(Some(PathBuf::from(format!("/proc/self/task/{tid}/io"))));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Self(None)
    }

    fn writes(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.0.as_ref()?).ok()?;
        text.lines().find_map(|l| l.strip_prefix("syscw:")).and_then(|v| v.trim().parse().ok())
    }
}

/// `writers` tasks append `events` between them, each waiting for every acknowledgement.
async fn append_all(log: &Log, events: &Arc<Vec<Event>>, writers: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let (log, events) = (log.clone(), events.clone());
        tasks.spawn(async move {
            for event in events.iter().skip(w).step_by(writers) {
                log.append(event).await.unwrap();
            }
        });
    }
    tasks.join_all().await;
}

fn log_append(c: &mut Criterion) {
    let rt = runtime();
    let events: Vec<Event> = (0..TOTAL).map(event).collect();
    let sizes: Vec<usize> = events.iter().map(|e| e.encode().len()).collect();
    eprintln!(
        "entry size: mean {} bytes, min {}, max {}",
        sizes.iter().sum::<usize>() / sizes.len(),
        sizes.iter().min().unwrap(),
        sizes.iter().max().unwrap()
    );
    let all = Arc::new(events);
    let serial = Arc::new(all[..TOTAL_SERIAL].to_vec());

    let mut group = c.benchmark_group("log_append");
    configure(&mut group, Duration::from_secs(5));
    group.sampling_mode(SamplingMode::Flat);
    for writers in WRITERS {
        let events = if writers == 1 { &serial } else { &all };
        group.throughput(Throughput::Elements(events.len() as u64));
        let dir = tempfile::tempdir().unwrap();
        let before = sequencer_threads();
        let log = Log::open(dir.path(), signer(), LogOptions::default()).unwrap();
        let counter = WriteCounter::new_since(&before);
        let (mut appended, mut writes) = (0u64, 0u64);
        group.bench_function(BenchmarkId::new("concurrent", writers), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let w0 = counter.writes();
                    let start = Instant::now();
                    rt.block_on(append_all(&log, events, writers));
                    elapsed += start.elapsed();
                    if let (Some(w0), Some(w1)) = (w0, counter.writes()) {
                        appended += events.len() as u64;
                        writes += w1 - w0;
                    }
                }
                elapsed
            });
        });
        // Every batch is one write of the entries and one of the checkpoint.
        let batches = writes / 2;
        if batches > 0 {
            let mean = appended as f64 / batches as f64;
            eprintln!(
                "log_append/concurrent/{writers}: {appended} appends in {batches} batches, mean batch {mean:.1}; log size {}",
                log.size()
            );
            ACHIEVED.lock().unwrap().push((writers, mean));
        } else if appended == 0 && counter.0.is_none() {
            eprintln!("log_append/concurrent/{writers}: batch count not measurable here (no /proc/self/task/*/io)");
        }
    }
    group.finish();
}

fn plain_writer(c: &mut Criterion) {
    let mut framed = Vec::new();
    let mut ends = Vec::with_capacity(TOTAL);
    for n in 0..TOTAL {
        push_bundle_entry(&mut framed, &event(n).encode()).unwrap();
        ends.push(framed.len());
    }
    let mut runs: Vec<(String, usize)> = PLAIN_BATCHES.iter().map(|b| (b.to_string(), *b)).collect();
    for (writers, mean) in ACHIEVED.lock().unwrap().iter() {
        let batch = (mean.round() as usize).max(1);
        if !PLAIN_BATCHES.contains(&batch) {
            runs.push((format!("as_log_{writers}"), batch));
        }
    }

    let mut group = c.benchmark_group("plain_writer");
    configure(&mut group, Duration::from_secs(5));
    group.sampling_mode(SamplingMode::Flat);
    for (name, batch) in runs {
        let total = if batch == 1 { TOTAL_SERIAL } else { TOTAL };
        // Batch boundaries over the framed bytes of the first `total` entries.
        let mut slices = Vec::new();
        let mut start = 0;
        for chunk in ends[..total].chunks(batch) {
            let end = *chunk.last().unwrap();
            slices.push((start, end));
            start = end;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut file = OpenOptions::new().append(true).create(true).open(dir.path().join("entries")).unwrap();
        if name.starts_with("as_log") {
            eprintln!("plain_writer/{name}: batch of {batch} entries");
        }
        group.throughput(Throughput::Elements(total as u64));
        group.bench_function(BenchmarkId::from_parameter(&name), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    for &(s, e) in &slices {
                        file.write_all(&framed[s..e]).unwrap();
                        file.sync_data().unwrap();
                    }
                }
                start.elapsed()
            });
        });
    }
    group.finish();
}

/// xorshift64: random indexes without another dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn proofs(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), signer(), LogOptions::default()).unwrap();
    let events = Arc::new((0..PROOF_LOG_SIZE as usize).map(event).collect::<Vec<_>>());
    let start = Instant::now();
    rt.block_on(append_all(&log, &events, 1024));
    eprintln!("built a log of {} entries in {:.2?}", log.size(), start.elapsed());
    let sizes = [1_000, PROOF_LOG_SIZE];

    let mut group = c.benchmark_group("inclusion_proof");
    configure(&mut group, Duration::from_secs(3));
    group.throughput(Throughput::Elements(1));
    for size in sizes {
        let mut state = 0x9e37_79b9_7f4a_7c15;
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| black_box(log.inclusion_proof(next(&mut state) % size, size).unwrap()));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("verify_inclusion");
    configure(&mut group, Duration::from_secs(3));
    group.throughput(Throughput::Elements(1));
    for size in sizes {
        let root = log.root(size).unwrap();
        let mut state = 0x2545_f491_4f6c_dd1d;
        let cases: Vec<(u64, Hash, Vec<Hash>)> = (0..1024)
            .map(|_| {
                let index = next(&mut state) % size;
                let leaf = leaf_hash(&rt.block_on(log.entry(index)).unwrap());
                (index, leaf, log.inclusion_proof(index, size).unwrap())
            })
            .collect();
        let mut i = 0;
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                let (index, leaf, proof) = &cases[i % cases.len()];
                i += 1;
                verify_inclusion(leaf, *index, size, proof, &root).unwrap();
            });
        });
    }
    group.finish();

    let entry = events[0].encode();
    let (left, right) = (leaf_hash(b"left"), leaf_hash(b"right"));
    let mut group = c.benchmark_group("hash");
    configure(&mut group, Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));
    group.bench_function("leaf_sha256", |b| b.iter(|| leaf_hash(black_box(&entry))));
    group.bench_function("node_sha256", |b| b.iter(|| node_hash(black_box(&left), black_box(&right))));
    group.finish();
}

criterion_group!(benches, log_append, plain_writer, proofs);
criterion_main!(benches);
