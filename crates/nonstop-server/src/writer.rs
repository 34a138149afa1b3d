//! Group commit: one thread writes agents' batches to a store that takes one writer at a
//! time (SQLite). What waits when a transaction ends goes into the next one together, so
//! agents sending at once share a commit instead of queueing for one each, and no write
//! waits for a blocking-pool thread to be woken for it alone.

use crate::store::{BatchJob, Inserted, Retention, Store, StoreError};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use tokio::sync::oneshot;

/// The most jobs one transaction takes: each holds the store's lock for all of them.
const MAX_GROUP_JOBS: usize = 64;
/// A transaction takes no further job once it has this many responses (a job of a
/// WebSocket session brings up to 2,000 of its own).
const MAX_GROUP_RESPONSES: usize = 2_000;

type Reply = oneshot::Sender<Result<Vec<Inserted>, StoreError>>;

/// The writer's queue. Its length is bounded by the requests and sessions awaiting a
/// reply, which the connection caps bound; dropping the last `Writer` ends the thread.
pub(crate) struct Writer {
    jobs: Sender<(BatchJob, Reply)>,
}

impl Writer {
    /// Starts the writer thread over `store`.
    pub(crate) fn start(store: Arc<dyn Store>, retention: Retention) -> std::io::Result<Self> {
        let (jobs, queue) = channel();
        std::thread::Builder::new()
            .name("nonstop-writer".into())
            .spawn(move || write_until_closed(store.as_ref(), retention, &queue))?;
        Ok(Self { jobs })
    }

    /// Writes `job` in the next transaction; waits for its own result.
    pub(crate) async fn write(&self, job: BatchJob) -> Result<Vec<Inserted>, StoreError> {
        let (reply, result) = oneshot::channel();
        self.jobs
            .send((job, reply))
            .map_err(|_| StoreError::Database("the store's writer has stopped".into()))?;
        result
            .await
            .map_err(|_| StoreError::Database("the store's writer dropped a write".into()))?
    }
}

fn write_until_closed(
    store: &dyn Store,
    retention: Retention,
    queue: &Receiver<(BatchJob, Reply)>,
) {
    while let Ok(first) = queue.recv() {
        let mut responses = first.0.responses();
        let mut group = vec![first];
        while group.len() < MAX_GROUP_JOBS && responses < MAX_GROUP_RESPONSES {
            let Ok(next) = queue.try_recv() else { break };
            responses += next.0.responses();
            group.push(next);
        }
        let (jobs, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        let n = jobs.len();
        let results = catch_unwind(AssertUnwindSafe(|| {
            store.write_batches(jobs, crate::clock::now_ms(), retention)
        }))
        .unwrap_or_else(|_| {
            // A bug, not the data: say so to each sender and keep writing for the others.
            tracing::error!(
                jobs = n,
                "the store panicked while writing a group of batches"
            );
            (0..n)
                .map(|_| {
                    Err(StoreError::Database(
                        "the store failed while writing".into(),
                    ))
                })
                .collect()
        });
        for (reply, result) in replies.into_iter().zip(results) {
            // A sender that went away (its connection closed) no longer needs the answer.
            let _ = reply.send(result);
        }
    }
}
