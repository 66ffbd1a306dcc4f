//! The one sequencer: it takes the appends waiting, gives them the next indexes, signs a
//! checkpoint over them, has the backend make them durable together, and only then adds them
//! to the tree and answers them. An append is never answered before it is durable.
//!
//! The algorithm is written once, over [`Backend`], the way azul's sequencer is written over
//! its lock and object backends. A directory ([`crate::file`]) is a backend that only its own
//! process writes; PostgreSQL ([`crate::postgres`]) is one that several gateways share, where
//! whichever holds the database's lock runs this loop and the others hand their entries in.

use std::future::Future;
use std::time::{Duration, Instant};

use clover_event::EventKind;
use clover_tlog::hash::{Hash, leaf_hash};
use clover_tlog::note::NoteSigner;
use clover_tlog::tree::root_after;
use tokio::sync::mpsc;

use crate::error::LogError;
use crate::tree::{Committed, Shared, checkpoint_note};

/// How the log runs.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// The most appends written in one batch.
    pub max_batch: usize,
    /// Sign a checkpoint after every batch (zero), or at most this often.
    pub checkpoint_interval: Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self { max_batch: 65_536, checkpoint_interval: Duration::ZERO }
    }
}

/// How long the sequencer waits before it tries again a signer that failed.
const SIGN_RETRY: Duration = Duration::from_secs(1);

/// An entry on its way into the log.
pub(crate) struct Append {
    /// How the process that appended it recognises it once it has an index.
    pub(crate) token: i64,
    /// The entry's bytes.
    pub(crate) entry: Vec<u8>,
    /// Its kind and subject when the appender knows them (`None`: the tree decodes the entry).
    pub(crate) index_by: Option<(EventKind, Option<String>)>,
    /// Whether it came through the backend's queue of entries handed in ([`Backend::pending`])
    /// rather than straight from this process.
    pub(crate) handed_in: bool,
}

/// Where a log's entries are made durable.
pub(crate) trait Backend {
    /// Entries that other processes handed in, oldest first, at most `room` (a log that only
    /// this process writes has none).
    fn pending(&mut self, room: usize) -> impl Future<Output = Result<Vec<Append>, LogError>> + Send;

    /// Makes `batch` durable at the indexes from `first` on, with `checkpoint` (its size and
    /// signed note) beside it when one is given; returns whether the checkpoint was stored. The
    /// entries are all made durable or none are; an error of
    /// [`LogError::CommitInDoubt`] says that they may have been.
    fn commit(
        &mut self,
        first: u64,
        batch: &[Append],
        checkpoint: Option<(u64, &str)>,
    ) -> impl Future<Output = Result<bool, LogError>> + Send;

    /// Stores a checkpoint of entries committed earlier; returns whether it was stored.
    fn store_checkpoint(&mut self, size: u64, note: &str) -> impl Future<Output = Result<bool, LogError>> + Send;

    /// Resolves when another process may have handed entries in (never, for a log only this
    /// process writes; a shared backend also resolves now and then to look without being told).
    fn handed_in(&mut self) -> impl Future<Output = ()> + Send;
}

/// Why the sequencer stopped, with the appends it held that were not made durable.
pub(crate) struct Stopped {
    pub(crate) error: LogError,
    pub(crate) unsequenced: Vec<Append>,
}

/// Sequences this process's appends (`own`) and those handed in to `backend` until `own` closes
/// (the log was dropped: `Ok`) or a step fails. `unsigned` says whether entries are committed
/// that no stored checkpoint covers yet.
pub(crate) async fn sequence<B: Backend>(
    backend: &mut B,
    shared: &Shared,
    signer: &dyn NoteSigner,
    options: &LogOptions,
    own: &mut mpsc::UnboundedReceiver<Append>,
    mut unsigned: bool,
) -> Result<(), Stopped> {
    let max_batch = options.max_batch.max(1);
    let mut last_signed = Instant::now().checked_sub(options.checkpoint_interval).unwrap_or_else(Instant::now);
    let mut batch: Vec<Append> = Vec::new();
    // After a signer failed, when to try again without a new batch (not in a tight loop).
    let mut retry_signing: Option<Instant> = None;
    let stop = |error: LogError, batch: Vec<Append>| Stopped { error, unsequenced: batch };
    loop {
        while batch.len() < max_batch {
            match own.try_recv() {
                Ok(append) => batch.push(append),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) if batch.is_empty() => return Ok(()),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
        let room = max_batch - batch.len();
        if room > 0 {
            match backend.pending(room).await {
                Ok(mut handed_in) => batch.append(&mut handed_in),
                Err(error) => return Err(stop(error, batch)),
            }
        }
        let due = last_signed.elapsed() >= options.checkpoint_interval;

        if batch.is_empty() {
            if unsigned && due && retry_signing.is_none_or(|at| Instant::now() >= at) {
                // A signer that fails (an HSM that blinks) leaves the entries unsigned for the
                // next pass; it does not stop the log.
                match shared.sign_current(signer) {
                    Ok((size, note)) => match backend.store_checkpoint(size, &note).await {
                        Ok(stored) => {
                            if stored {
                                shared.tree_mut().offer_checkpoint(note.into(), size);
                                shared.answer(Vec::new());
                                unsigned = false;
                                retry_signing = None;
                            }
                        }
                        Err(error) => return Err(stop(error, batch)),
                    },
                    Err(error) => {
                        tracing::error!(error = %error, "cannot sign a checkpoint; retrying in a second");
                        retry_signing = Some(Instant::now() + SIGN_RETRY);
                    }
                }
                last_signed = Instant::now();
            }
            let wait = unsigned.then(|| match retry_signing {
                Some(at) => at.saturating_duration_since(Instant::now()),
                None => options.checkpoint_interval.saturating_sub(last_signed.elapsed()),
            });
            let due_to_sign = async {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                append = own.recv() => match append {
                    Some(append) => batch.push(append),
                    None => return Ok(()),
                },
                () = backend.handed_in() => {}
                () = due_to_sign => {}
            }
            continue;
        }

        metrics::gauge!(crate::telemetry::QUEUE_METRIC).set(own.len() as f64);
        metrics::histogram!(crate::telemetry::BATCH_METRIC).record(batch.len() as f64);
        let first = shared.tree().size();
        let size = first + batch.len() as u64;
        let note = if due {
            let leaves: Vec<Hash> = batch.iter().map(|a| leaf_hash(&a.entry)).collect();
            let signed = root_after(&*shared.tree(), first, &leaves)
                .map_err(LogError::from)
                .and_then(|root| checkpoint_note(&shared.origin, signer, size, root));
            match signed {
                Ok(note) => {
                    retry_signing = None;
                    Some(note)
                }
                Err(error) => {
                    tracing::error!(error = %error, "cannot sign a checkpoint; the batch is committed unsigned");
                    None
                }
            }
        } else {
            None
        };
        let started = Instant::now();
        let committed = backend.commit(first, &batch, note.as_deref().map(|n| (size, n))).await;
        metrics::histogram!(crate::telemetry::COMMIT_SECONDS_METRIC).record(started.elapsed().as_secs_f64());
        let stored = match committed {
            Ok(stored) => stored,
            // Entries that may be in the log are not handed back to be appended again: they
            // are answered if a catch-up finds them, or time out.
            Err(error @ LogError::CommitInDoubt { .. }) => return Err(stop(error, Vec::new())),
            // Nothing of the batch was written (the backend cut it back): its appends fail, and
            // the log takes the next ones, which may find room again. The checkpoint signed for
            // it was never stored or shown, and is dropped.
            Err(LogError::Unwritten { path, entries, source }) => {
                tracing::error!(
                    log = %path.display(),
                    error = %source,
                    entries,
                    "log write failed; the batch is refused"
                );
                metrics::counter!(crate::telemetry::UNWRITTEN_METRIC).increment(1);
                shared.refuse(batch.drain(..).map(|a| a.token), || LogError::Unwritten {
                    path: path.clone(),
                    entries,
                    source: source.clone(),
                });
                continue;
            }
            Err(error) => return Err(stop(error, batch)),
        };
        if due {
            last_signed = Instant::now();
        }

        // Durable: into the tree (a follower's catch-up may have added some already), then
        // answered.
        let mut done = Vec::with_capacity(batch.len());
        {
            let mut tree = shared.tree_mut();
            for (index, append) in (first..).zip(batch.drain(..)) {
                // The leaf hash of the bytes committed (for an entry handed in, as the backend
                // gave them): an append of this process is answered only if it is its own.
                let leaf = if index == tree.size() {
                    match append.index_by {
                        Some(by) => tree.add_indexed(&append.entry, Some(by)),
                        None => tree.add(&append.entry),
                    }
                } else {
                    leaf_hash(&append.entry)
                };
                done.push(Committed { token: append.token, index, leaf });
            }
            match note {
                Some(note) if stored => {
                    tree.offer_checkpoint(note.into(), size);
                    unsigned = false;
                }
                _ => unsigned = true,
            }
        }
        shared.answer(done);
    }
}
