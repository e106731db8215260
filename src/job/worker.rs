//! The worker threads that run the hub's store jobs.
//!
//! The reactor hands each [`Job`] to the pool and carries on. A worker runs it against
//! its own store handle ([`execute`], in `job`) and sends back a [`JobResult`] through a
//! callback that wakes the reactor (a channel plus `mio::Waker` in the real server).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::job::auth::Hasher;
use crate::job::{Job, JobResult, execute};
use crate::store::{StoreError, StoreFactory};

pub use crate::priority::WorkerPriority;

/// Where results go: the real server sends them on a channel and wakes the reactor.
pub type ResultSink = Arc<dyn Fn(JobResult) + Send + Sync>;

/// The worker threads: a hashing lane for logins and registrations and a storage lane
/// for everything else, each a fixed set of threads sharing one queue.
///
/// Two lanes, so that a storm of logins (each an argon2id hash, milliseconds of CPU)
/// never makes a private message to an offline user wait behind it; and so the hashing
/// threads can run at a lower priority than the event loop while the storage thread,
/// whose jobs are short, runs like the loop. A third, one thread with its own store
/// handle, runs the history jobs in order: appends, the pages read after them, and a
/// private message stored while an append holding entries of its pair is on its way
/// (so that it is numbered after them). A history append stuck on a slow store holds
/// up no other private message. The history thread runs at nice 10: its commits
/// (entries gathered over `--history-gather-ms`, each commit with a sync) then wait
/// for the loop instead of delaying the deliveries of a light load; at saturation on
/// one core the scheduler still gives a nice-10 thread its weighted share of the core,
/// which the saturated benchmarks found enough for every append (BENCHMARKS.md).
/// A fourth, one thread at nice 10 too, reads the pages of history clients ask for
/// and encodes each into its frame: however many are asked for, no append, stored
/// message or login waits behind them (the hub bounds them with `--history-reads`).
///
/// Each job is stamped when submitted; a job that waited in its queue longer than
/// `max_wait` (storage slow or down, queue backed up) is answered with a storage error
/// instead of being run, so no client waits longer than that bound plus one call's
/// timeout.
pub struct Workers {
    hashing: Lane,
    storage: Lane,
    history: Lane,
    reads: Lane,
}

/// Threads that share one job queue.
struct Lane {
    tx: Option<mpsc::Sender<(Instant, Job)>>,
    handles: Vec<JoinHandle<()>>,
    /// Set when the server stops: the jobs still queued are dropped unrun (only the
    /// hashing lane's: its clients are gone, and its writes were never acknowledged).
    stopping: Arc<AtomicBool>,
}

impl Lane {
    fn start(
        name: &str,
        n: usize,
        factory: &StoreFactory,
        hasher: &Hasher,
        sink: &ResultSink,
        max_wait: Duration,
        priority: WorkerPriority,
    ) -> Result<Lane, StoreError> {
        let (tx, rx) = mpsc::channel::<(Instant, Job)>();
        let rx = Arc::new(Mutex::new(rx));
        let stopping = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for i in 0..n.max(1) {
            let mut store = factory()?;
            let rx = rx.clone();
            let stopping = stopping.clone();
            let hasher = hasher.clone();
            let sink = sink.clone();
            let h = std::thread::Builder::new()
                .name(format!("chat-{name}-{i}"))
                .spawn(move || {
                    crate::sys::set_thread_priority(priority);
                    loop {
                        // The lock is held only while waiting for the next job.
                        let (queued, job) =
                            match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                                Ok(j) => j,
                                Err(_) => break, // the reactor has gone: no more jobs
                            };
                        if stopping.load(Ordering::Relaxed) {
                            continue;
                        }
                        let waited = queued.elapsed();
                        let (outcome, took) = if waited > max_wait {
                            // Counted and logged by the hub, once per tick.
                            log::debug!(
                                "{:?} dropped after waiting {waited:?} for a worker",
                                job.kind
                            );
                            (job.kind.fail(StoreError::QueueTimeout), None)
                        } else {
                            let started = Instant::now();
                            let outcome = execute(&mut *store, &hasher, job.kind);
                            (outcome, Some(started.elapsed()))
                        };
                        sink(JobResult {
                            conn: job.conn,
                            outcome,
                            took,
                        });
                    }
                })
                .map_err(|e| StoreError::new("cannot start a worker thread", e))?;
            handles.push(h);
        }
        Ok(Lane {
            tx: Some(tx),
            handles,
            stopping,
        })
    }

    fn submit(&self, job: Job) {
        if let Some(tx) = &self.tx
            && tx.send((Instant::now(), job)).is_err()
        {
            log::error!("worker pool has stopped; job dropped");
        }
    }

    fn shutdown(&mut self) {
        self.tx = None;
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }

    /// Drops the jobs still queued, lets the ones running finish until `deadline`,
    /// and leaves behind (detached, to end with the process) a thread still working
    /// then. Returns how many were left.
    fn abandon_after(&mut self, deadline: Instant) -> usize {
        self.stopping.store(true, Ordering::Relaxed);
        self.tx = None;
        let mut left = 0;
        for h in self.handles.drain(..) {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                left += 1;
            }
        }
        left
    }
}

impl Workers {
    /// Starts `hashers` hashing threads at `priority` and one storage thread at the
    /// loop's priority, each with its own store handle from `factory`.
    pub fn start(
        hashers: usize,
        factory: &StoreFactory,
        hasher: Hasher,
        sink: ResultSink,
        max_wait: Duration,
        priority: WorkerPriority,
    ) -> Result<Workers, StoreError> {
        let hashing = Lane::start("hash", hashers, factory, &hasher, &sink, max_wait, priority)?;
        let storage = Lane::start(
            "store",
            1,
            factory,
            &hasher,
            &sink,
            max_wait,
            WorkerPriority::Normal,
        )?;
        let history = Lane::start(
            "history",
            1,
            factory,
            &hasher,
            &sink,
            max_wait,
            WorkerPriority::Low,
        )?;
        let reads = Lane::start(
            "history-read",
            1,
            factory,
            &hasher,
            &sink,
            max_wait,
            WorkerPriority::Low,
        )?;
        Ok(Workers {
            hashing,
            storage,
            history,
            reads,
        })
    }

    /// Hands a job to its lane. The queues' lengths are bounded by the hub, which
    /// counts jobs in flight and refuses new ones over its limits.
    pub fn submit(&self, job: Job) {
        if job.kind.hashes() {
            self.hashing.submit(job)
        } else if job.kind.reads_history() {
            self.reads.submit(job)
        } else if job.kind.is_history() {
            self.history.submit(job)
        } else {
            self.storage.submit(job)
        }
    }

    /// Lets the storage and history workers finish every job already submitted, then
    /// joins them: what they write was (or will be) acknowledged. The hashing workers'
    /// queued jobs are dropped, and a hash still running after `hash_grace` is left
    /// behind, so that no stored hash, however slow, holds the server up.
    pub fn shutdown(mut self, hash_grace: Duration) {
        let deadline = Instant::now() + hash_grace;
        self.hashing.stopping.store(true, Ordering::Relaxed);
        self.storage.shutdown();
        self.history.shutdown();
        self.reads.shutdown();
        let left = self.hashing.abandon_after(deadline);
        if left > 0 {
            log::warn!("{left} hashing threads still busy after {hash_grace:?}: left behind");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::auth::HashParams;
    use crate::job::{JobKind, Outcome};
    use crate::store::mem::MemStore;
    use crate::store::{OfflineMsg, Store};

    fn hasher() -> Hasher {
        Hasher::new(HashParams {
            memory_kib: 64,
            passes: 1,
        })
        .unwrap()
    }
    /// A pool of `hashers` hashing threads over an in-memory store, and where its
    /// results arrive.
    fn pool(hashers: usize, hasher: Hasher) -> (Workers, mpsc::Receiver<JobResult>) {
        let store = MemStore::new();
        let factory: StoreFactory = Arc::new(move || Ok(Box::new(store.clone()) as Box<dyn Store>));
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let sink: ResultSink = Arc::new(move |r| {
            let _ = tx.lock().unwrap().send(r);
        });
        let pool = Workers::start(
            hashers,
            &factory,
            hasher,
            sink,
            Duration::from_secs(60),
            WorkerPriority::Normal,
        )
        .unwrap();
        (pool, rx)
    }

    fn submit_registrations(pool: &Workers, n: i64) {
        for id in 1..=n {
            pool.submit(Job {
                conn: None,
                kind: JobKind::Register {
                    user_id: id,
                    name: "n".into(),
                    password: "p".into(),
                    status: 0,
                    sex: String::new(),
                },
            });
        }
    }

    #[test]
    fn pool_runs_jobs_and_drains_on_shutdown() {
        let (pool, rx) = pool(2, hasher());
        submit_registrations(&pool, 5);
        let results: Vec<JobResult> = rx.iter().take(5).collect();
        pool.shutdown(Duration::from_secs(60));
        assert_eq!(results.len(), 5);
        assert!(
            results
                .iter()
                .all(|r| r.outcome == Outcome::Register(Ok(())))
        );
    }

    #[test]
    fn shutdown_does_not_wait_for_a_long_hash() {
        // A hash of a second or more (a stored hash's parameters are checked before
        // any work; this hasher's own are the only way to make one here).
        let endless = Hasher::new(HashParams {
            memory_kib: 8,
            passes: 200_000,
        })
        .unwrap();
        let (pool, rx) = pool(1, endless);
        submit_registrations(&pool, 3);
        pool.submit(Job {
            conn: None,
            kind: JobKind::StoreOffline {
                msg: OfflineMsg {
                    from: 1,
                    from_name: "n".into(),
                    to: 999,
                    content: "hi".into(),
                    time: 0,
                },
                msg_id: None,
                history: 0,
                after_history: false,
                waits: true,
            },
        });
        // The storage job was run; the hashing thread is in the first hash. Shutdown
        // returns without waiting for it, and the registrations queued behind it are
        // dropped.
        let stored = rx.recv().unwrap();
        assert!(matches!(stored.outcome, Outcome::StoreOffline(_)));
        pool.shutdown(Duration::from_millis(50));
        assert!(rx.try_iter().count() <= 1, "queued registrations were run");
    }

    #[test]
    fn storage_jobs_do_not_wait_behind_hashing() {
        // One hashing thread with a few ms per hash, 50 registrations ahead of one
        // storage job: the storage job is answered long before the hashing is done.
        let slow = Hasher::new(HashParams {
            memory_kib: 8 * 1024,
            passes: 1,
        })
        .unwrap();
        let (pool, rx) = pool(1, slow);
        submit_registrations(&pool, 50);
        pool.submit(Job {
            conn: None,
            kind: JobKind::StoreOffline {
                msg: OfflineMsg {
                    from: 1,
                    from_name: "n".into(),
                    to: 999,
                    content: "hi".into(),
                    time: 0,
                },
                msg_id: None,
                history: 0,
                after_history: false,
                waits: true,
            },
        });
        let order: Vec<bool> = rx
            .iter()
            .take(51)
            .map(|r| matches!(r.outcome, Outcome::StoreOffline(_)))
            .collect();
        pool.shutdown(Duration::from_secs(60));
        assert_eq!(order.len(), 51);
        let at = order.iter().position(|&s| s).unwrap();
        assert!(at < 25, "the storage job came back after {at} hashes");
    }
}
