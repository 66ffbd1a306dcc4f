//! Group commit of the store writes that every audited access makes (its annex, for a read the
//! caller's bulk-access window, for a write the record): a request hands its row to a writer task
//! and waits; the task writes every row waiting in one transaction (one durable step for the
//! batch), then answers each with its own result. A request is answered only once its row is
//! durable; what changes is that thirty-two concurrent requests cost one commit rather than
//! thirty-two.

use std::future::Future;
use std::sync::Arc;

use crate::error::StoreError;
use tokio::sync::{mpsc, oneshot};

/// The most rows one transaction takes.
const MAX_BATCH: usize = 1_024;

type Answer = oneshot::Sender<Result<(), StoreError>>;

/// A writer of rows of type `T`, a batch per transaction.
pub struct GroupCommit<T> {
    queue: mpsc::UnboundedSender<(T, Answer)>,
    /// What it writes, for errors.
    what: &'static str,
}

impl<T: Send + 'static> GroupCommit<T> {
    /// Starts the writer: `commit` writes a batch in one transaction; a batch that fails fails
    /// every row of it (with [`StoreError::Batch`]). It stops when this is dropped, after the
    /// rows sent before. Must be called within a Tokio runtime.
    pub fn start<F, Fut>(what: &'static str, commit: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), StoreError>> + Send,
    {
        let commit = Arc::new(commit);
        Self::start_each(what, move |rows: Vec<T>| {
            let commit = commit.clone();
            async move {
                let count = rows.len();
                match commit(rows).await {
                    Ok(()) => (0..count).map(|_| Ok(())).collect(),
                    Err(e) => {
                        let e = Arc::new(e);
                        (0..count).map(|_| Err(StoreError::Batch(e.clone()))).collect()
                    }
                }
            }
        })
    }

    /// Starts the writer: `commit` writes a batch and answers each row's result, in order (a
    /// row that it does not answer is answered with [`StoreError::Stopped`]).
    pub fn start_each<F, Fut>(what: &'static str, commit: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Result<(), StoreError>>> + Send,
    {
        let (queue, mut received) = mpsc::unbounded_channel::<(T, Answer)>();
        tokio::spawn(async move {
            let (mut rows, mut answers) = (Vec::new(), Vec::new());
            while let Some((row, answer)) = received.recv().await {
                rows.push(row);
                answers.push(answer);
                while rows.len() < MAX_BATCH {
                    let Ok((row, answer)) = received.try_recv() else { break };
                    rows.push(row);
                    answers.push(answer);
                }
                let mut results = commit(std::mem::take(&mut rows)).await.into_iter();
                for answer in answers.drain(..) {
                    // A request that gave up waiting is not told.
                    let _ = answer.send(results.next().unwrap_or(Err(StoreError::Stopped(what))));
                }
            }
        });
        Self { queue, what }
    }

    /// Writes `row` with the others waiting, and waits until their transaction is committed.
    pub async fn write(&self, row: T) -> Result<(), StoreError> {
        let (answer, answered) = oneshot::channel();
        let stopped = || StoreError::Stopped(self.what);
        self.queue.send((row, answer)).map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn rows_waiting_together_are_committed_together_and_each_is_answered() {
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let seen = batches.clone();
        let writer = Arc::new(GroupCommit::start("numbers", move |rows: Vec<u32>| {
            let seen = seen.clone();
            async move {
                // A slow disk: the rows sent meanwhile wait for the next batch.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                let failing = rows.contains(&13);
                seen.lock().unwrap().push(rows);
                if failing {
                    Err(StoreError::Database { operation: "test", cause: sqlx::Error::WorkerCrashed })
                } else {
                    Ok(())
                }
            }
        }));
        let writes: Vec<_> = (0..100u32)
            .filter(|n| *n != 13)
            .map(|n| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.write(n).await })
            })
            .collect();
        for write in writes {
            write.await.unwrap().unwrap();
        }
        let batches = batches.lock().unwrap().clone();
        let mut rows: Vec<u32> = batches.iter().flatten().copied().collect();
        rows.sort_unstable();
        assert_eq!(rows, (0..100).filter(|n| *n != 13).collect::<Vec<_>>(), "every row written once");
        assert!(batches.len() < 99, "rows waiting together were batched: {} batches", batches.len());

        // A batch that fails fails every row in it, and the writer goes on.
        let failed = writer.write(13).await.unwrap_err();
        assert!(
            matches!(&failed, StoreError::Batch(e) if matches!(**e, StoreError::Database { operation: "test", .. })),
            "{failed}"
        );
        writer.write(14).await.unwrap();
    }
}
