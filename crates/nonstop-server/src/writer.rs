//! Group commit for a store that takes one writer at a time (SQLite). A write while none
//! is in flight, or a big one, runs at once on the blocking pool; small writes that come
//! while one is in flight queue for one writer thread, which puts all that wait into its
//! next transaction. Agents sending small batches at once so share commits instead of
//! queueing for one each. A small write while none is in flight and the store is free runs
//! on the calling task's thread, without a hand-off.

use crate::store::{BatchJob, Inserted, Retention, Store, StoreError};
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// The most jobs one transaction takes: each holds the store's lock for all of them.
const MAX_GROUP_JOBS: usize = 64;
/// A transaction takes no further job once it has this many responses.
const MAX_GROUP_RESPONSES: usize = 256;
/// A batch of this many responses or more is written alone, at once: grouping pays for
/// small batches, whose commit costs more than their rows, while big ones are better
/// written as the next are parsed (10 agents in batches of 200, grouped: 55–57k/s against
/// 65k/s alone).
const ALONE_FROM: usize = 32;

/// A write of fewer responses than this, while none is in flight and the store is free,
/// runs at once on the task's own thread: a one-response transaction takes less time than
/// the two thread wake-ups of a hand-off to the blocking pool and back (one sequential HTTP
/// agent: 4,300/s with the hand-off).
const NOW_BELOW: usize = 8;

type Reply = oneshot::Sender<Result<Vec<Inserted>, StoreError>>;

/// The jobs waiting, and whether the server let go of the writer. A mutex and a condition
/// variable rather than a channel: the writer sleeps at once when there is nothing to do
/// (std's channel spins and yields first, CPU this 2-core host's handlers need).
#[derive(Default)]
struct Queue {
    state: Mutex<(VecDeque<(BatchJob, Reply)>, bool)>,
    ready: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, (VecDeque<(BatchJob, Reply)>, bool)> {
        // The lock guards a queue only; a panic elsewhere leaves it whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer's queue. Its length is bounded by the requests and sessions awaiting a
/// reply, which the connection caps bound; dropping the `Writer` ends the thread once the
/// jobs queued are written.
pub(crate) struct Writer {
    queue: Arc<Queue>,
    store: Arc<dyn Store>,
    retention: Retention,
    /// Writes begun and not answered, however they are made.
    in_flight: Arc<AtomicUsize>,
}

/// Counts a write in flight until dropped (answered, or its request went away).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Writer {
    /// Starts the writer thread over `store`.
    pub(crate) fn start(store: Arc<dyn Store>, retention: Retention) -> std::io::Result<Self> {
        let queue = Arc::new(Queue::default());
        let jobs = queue.clone();
        let writes = store.clone();
        std::thread::Builder::new()
            .name("nonstop-writer".into())
            .spawn(move || write_until_closed(writes.as_ref(), retention, &jobs))?;
        Ok(Self {
            queue,
            store,
            retention,
            in_flight: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Writes `job`; waits for its own result. A write while none is in flight, or a big
    /// one, goes straight to the blocking pool, as fast as one writer alone can be; small
    /// writes that come while one is in flight wait in the queue and go into the next
    /// transaction together.
    pub(crate) async fn write(&self, mut job: BatchJob) -> Result<Vec<Inserted>, StoreError> {
        let idle = self.in_flight.fetch_add(1, Ordering::AcqRel) == 0;
        let responses = job.responses();
        let alone = idle || responses >= ALONE_FROM;
        let _counted = InFlight(self.in_flight.clone());
        if idle && responses < NOW_BELOW {
            match self
                .store
                .write_now(job, crate::clock::now_ms(), self.retention)
            {
                Ok(done) => return done,
                Err(busy) => job = *busy,
            }
        }
        if alone {
            let store = self.store.clone();
            let retention = self.retention;
            return tokio::task::spawn_blocking(move || {
                job.write_alone(store.as_ref(), crate::clock::now_ms(), retention)
            })
            .await
            .map_err(|e| StoreError::Database(format!("store task failed: {e}")))?;
        }
        let (reply, result) = oneshot::channel();
        self.queue.lock().0.push_back((job, reply));
        self.queue.ready.notify_one();
        result
            .await
            .map_err(|_| StoreError::Database("the store's writer dropped a write".into()))?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.queue.lock().1 = true;
        self.queue.ready.notify_one();
    }
}

/// The next group: what waits, up to the caps, after waiting for one job; `None` once the
/// writer is let go and nothing waits.
fn next_group(queue: &Queue) -> Option<Vec<(BatchJob, Reply)>> {
    let mut state = queue.lock();
    while state.0.is_empty() {
        if state.1 {
            return None;
        }
        state = queue.ready.wait(state).unwrap_or_else(|p| p.into_inner());
    }
    let mut group = Vec::new();
    let mut responses = 0;
    while group.len() < MAX_GROUP_JOBS && responses < MAX_GROUP_RESPONSES {
        let Some(next) = state.0.pop_front() else {
            break;
        };
        responses += next.0.responses();
        group.push(next);
    }
    Some(group)
}

fn write_until_closed(store: &dyn Store, retention: Retention, queue: &Queue) {
    while let Some(group) = next_group(queue) {
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
