//! Store jobs and the worker threads that run them.
//!
//! The reactor never touches storage or hashes a password: it hands a [`Job`] to the
//! pool and carries on. A worker runs it against its own store handle ([`execute`]) and
//! sends back a [`JobResult`] through a callback that wakes the reactor (a channel plus
//! `mio::Waker` in the real server). Jobs carry the [`ConnRef`] they are for, generation
//! included, so a result for a connection that has gone is simply dropped.
//!
//! `execute` is a plain function, so the deterministic state-machine tests run jobs
//! themselves, in whatever order they choose, with no threads at all.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::auth::Hasher;
use crate::conn::ConnRef;
use crate::store::{OfflineMsg, Store, StoreError, StoreFactory, StoredMsg};
use crate::users::UserRecord;

/// What a worker is asked to do.
pub enum JobKind {
    /// Check a password and, if it matches, fetch the first offline messages.
    Login {
        user_id: i64,
        password: String,
        offline_batch: usize,
    },
    /// Hash the password and create the user if the id is free.
    Register {
        user_id: i64,
        name: String,
        password: String,
    },
    /// Keep a private message for an offline user.
    StoreOffline(OfflineMsg),
    /// Fetch more offline messages for a logged-in user.
    FetchOffline { user_id: i64, batch: usize },
    /// Remove offline messages that were handed to the user's connection.
    AckOffline { user_id: i64, upto: u64 },
}

impl std::fmt::Debug for JobKind {
    // Hand-written so that a password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobKind::Login { user_id, .. } => write!(f, "Login({user_id})"),
            JobKind::Register { user_id, .. } => write!(f, "Register({user_id})"),
            JobKind::StoreOffline(m) => write!(f, "StoreOffline({} -> {})", m.from, m.to),
            JobKind::FetchOffline { user_id, .. } => write!(f, "FetchOffline({user_id})"),
            JobKind::AckOffline { user_id, upto } => write!(f, "AckOffline({user_id}, {upto})"),
        }
    }
}

impl JobKind {
    /// Whether this job hashes a password (logins and registrations): the slow kind,
    /// run by the hashing workers, apart from the quick storage jobs.
    pub fn hashes(&self) -> bool {
        matches!(self, JobKind::Login { .. } | JobKind::Register { .. })
    }

    /// The outcome of this job when it could not be run at all.
    pub fn fail(self, e: StoreError) -> Outcome {
        match self {
            JobKind::Login { .. } => Outcome::Login(Err(LoginError::Store(e))),
            JobKind::Register { .. } => Outcome::Register(Err(RegisterError::Store(e))),
            JobKind::StoreOffline(_) => Outcome::StoreOffline(Err(e)),
            JobKind::FetchOffline { user_id, batch } => Outcome::FetchOffline {
                user_id,
                batch,
                result: Err(e),
            },
            JobKind::AckOffline { .. } => Outcome::AckOffline(Err(e)),
        }
    }
}

/// A job and the connection waiting for it (none for fire-and-forget jobs).
#[derive(Debug)]
pub struct Job {
    pub conn: Option<ConnRef>,
    pub kind: JobKind,
}

/// A successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginOk {
    pub user_id: i64,
    pub name: String,
    /// The oldest offline messages (at most the batch size asked for).
    pub offline: Vec<StoredMsg>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    NoSuchUser,
    WrongPassword,
    Store(StoreError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterError {
    Taken,
    Store(StoreError),
}

/// What came of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Login(Result<LoginOk, LoginError>),
    Register(Result<(), RegisterError>),
    /// `Ok(None)`: the recipient does not exist.
    StoreOffline(Result<Option<u64>, StoreError>),
    FetchOffline {
        user_id: i64,
        batch: usize,
        result: Result<Vec<StoredMsg>, StoreError>,
    },
    AckOffline(Result<(), StoreError>),
}

impl Outcome {
    /// Whether producing this outcome certainly took a password hash: a login that
    /// found its user, a registration that went through. An unknown user or a storage
    /// error is answered without one, and must not pull down the measured cost.
    pub fn hashed(&self) -> bool {
        matches!(
            self,
            Outcome::Login(Ok(_) | Err(LoginError::WrongPassword)) | Outcome::Register(Ok(()))
        )
    }
}

#[derive(Debug)]
pub struct JobResult {
    pub conn: Option<ConnRef>,
    pub outcome: Outcome,
    /// How long the worker took to run the job; `None` if it waited longer than the
    /// job timeout and was refused unrun. The hub's measure of what a hash costs now,
    /// for admitting logins.
    pub took: Option<Duration>,
}

/// Runs one job against a store. Blocking: worker threads and tests only.
pub fn execute(store: &mut dyn Store, hasher: &Hasher, kind: JobKind) -> Outcome {
    match kind {
        JobKind::Login {
            user_id,
            password,
            offline_batch,
        } => Outcome::Login(login(store, hasher, user_id, &password, offline_batch)),
        JobKind::Register {
            user_id,
            name,
            password,
        } => Outcome::Register(register(store, hasher, user_id, name, &password)),
        JobKind::StoreOffline(msg) => Outcome::StoreOffline(store.push_offline(&msg)),
        JobKind::FetchOffline { user_id, batch } => Outcome::FetchOffline {
            user_id,
            batch,
            result: store.fetch_offline(user_id, batch),
        },
        JobKind::AckOffline { user_id, upto } => {
            Outcome::AckOffline(store.ack_offline(user_id, upto))
        }
    }
}

fn login(
    store: &mut dyn Store,
    hasher: &Hasher,
    user_id: i64,
    password: &str,
    batch: usize,
) -> Result<LoginOk, LoginError> {
    let mut rec = store
        .get_user(user_id)
        .map_err(LoginError::Store)?
        .ok_or(LoginError::NoSuchUser)?;
    if !rec.pwd_hash.is_empty() {
        if !hasher.verify(password, &rec.pwd_hash) {
            return Err(LoginError::WrongPassword);
        }
    } else if !rec.legacy_pwd.is_empty() && constant_time_eq(&rec.legacy_pwd, password) {
        // A record written by the seed's server: upgrade its plaintext to a hash now.
        // If that write fails the login still stands; the upgrade is tried next time.
        match hasher.hash(password) {
            Ok(h) => {
                rec.pwd_hash = h;
                rec.legacy_pwd.clear();
                match store.update_user(&rec) {
                    Ok(()) => log::info!("user {user_id}: plaintext password replaced by a hash"),
                    Err(e) => log::warn!("user {user_id}: password upgrade failed: {e}"),
                }
            }
            Err(e) => log::warn!("user {user_id}: {e}"),
        }
    } else {
        return Err(LoginError::WrongPassword);
    }
    // Offline messages that cannot be read now stay stored for the next login.
    let offline = store.fetch_offline(user_id, batch).unwrap_or_else(|e| {
        log::warn!("user {user_id}: offline messages not fetched: {e}");
        Vec::new()
    });
    Ok(LoginOk {
        user_id,
        name: rec.name,
        offline,
    })
}

fn register(
    store: &mut dyn Store,
    hasher: &Hasher,
    user_id: i64,
    name: String,
    password: &str,
) -> Result<(), RegisterError> {
    // Cheap early answer for a taken id; create_user still refuses to overwrite.
    if store
        .get_user(user_id)
        .map_err(RegisterError::Store)?
        .is_some()
    {
        return Err(RegisterError::Taken);
    }
    let pwd_hash = hasher
        .hash(password)
        .map_err(|e| RegisterError::Store(StoreError(e)))?;
    let rec = UserRecord {
        id: user_id,
        name,
        pwd_hash,
        legacy_pwd: String::new(),
    };
    match store.create_user(&rec) {
        Ok(true) => Ok(()),
        Ok(false) => Err(RegisterError::Taken),
        Err(e) => Err(RegisterError::Store(e)),
    }
}

/// How the hashing threads are scheduled against the reactor thread (the storage
/// thread always runs like the reactor: its jobs are short).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerPriority {
    /// Like the reactor.
    Normal,
    /// nice 10: on a shared core the reactor gets most of the CPU and the hashing a
    /// guaranteed share, so logins never stall, but a storm of them delays messages
    /// (measured: fan-out p99 from 2 to 7 ms during a storm on one core).
    Low,
    /// SCHED_IDLE: hashing runs only on CPU the reactor leaves, and gives it up the
    /// moment the reactor wakes, so a storm of logins does not delay messages. While
    /// traffic keeps the reactor's core fully busy, logins slow down; the hub then
    /// refuses new ones as busy (with a time to try again) rather than queueing them.
    /// The default.
    Idle,
}

fn lower_priority(p: WorkerPriority) {
    #[cfg(target_os = "linux")]
    // SAFETY: these calls act on the calling thread only (tid / pid 0), with a
    // sched_param we own.
    unsafe {
        let ok = match p {
            WorkerPriority::Normal => true,
            WorkerPriority::Low => {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, 10) == 0
            }
            WorkerPriority::Idle => {
                let param = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0
            }
        };
        if !ok {
            log::warn!("could not set the worker thread's priority to {p:?}");
        }
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where results go: the real server sends them on a channel and wakes the reactor.
pub type ResultSink = Arc<dyn Fn(JobResult) + Send + Sync>;

/// The worker threads: a hashing lane for logins and registrations and a storage lane
/// for everything else, each a fixed set of threads sharing one queue.
///
/// Two lanes, so that a storm of logins (each an argon2id hash, ~10 ms of CPU) never
/// makes a private message to an offline user wait behind it; and so the hashing
/// threads can run at a lower priority than the event loop while the storage thread,
/// whose jobs are short, runs like the loop.
///
/// Each job is stamped when submitted; a job that waited in its queue longer than
/// `max_wait` (storage slow or down, queue backed up) is answered with a storage error
/// instead of being run, so no client waits longer than that bound plus one call's
/// timeout.
pub struct Workers {
    hashing: Lane,
    storage: Lane,
}

/// Threads that share one job queue.
struct Lane {
    tx: Option<mpsc::Sender<(Instant, Job)>>,
    handles: Vec<JoinHandle<()>>,
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
        let mut handles = Vec::new();
        for i in 0..n.max(1) {
            let mut store = factory()?;
            let rx = rx.clone();
            let hasher = hasher.clone();
            let sink = sink.clone();
            let h = std::thread::Builder::new()
                .name(format!("chat-{name}-{i}"))
                .spawn(move || {
                    lower_priority(priority);
                    loop {
                        // The lock is held only while waiting for the next job.
                        let (queued, job) =
                            match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                                Ok(j) => j,
                                Err(_) => break, // the reactor has gone: no more jobs
                            };
                        let waited = queued.elapsed();
                        let (outcome, took) = if waited > max_wait {
                            // Counted and logged by the hub, once per tick.
                            log::debug!(
                                "{:?} dropped after waiting {waited:?} for a worker",
                                job.kind
                            );
                            (job.kind.fail(StoreError::timed_out()), None)
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
        Ok(Workers { hashing, storage })
    }

    /// Hands a job to its lane. The queues' lengths are bounded by the hub, which
    /// counts jobs in flight and refuses new ones over its limits.
    pub fn submit(&self, job: Job) {
        if job.kind.hashes() {
            self.hashing.submit(job)
        } else {
            self.storage.submit(job)
        }
    }

    /// Lets the workers finish every job already submitted, then joins them.
    pub fn shutdown(mut self) {
        self.hashing.shutdown();
        self.storage.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::HashParams;
    use crate::store::mem::MemStore;

    fn hasher() -> Hasher {
        Hasher::new(HashParams {
            memory_kib: 64,
            passes: 1,
        })
        .unwrap()
    }

    fn reg(s: &mut MemStore, h: &Hasher, id: i64, pwd: &str) -> Outcome {
        execute(
            s,
            h,
            JobKind::Register {
                user_id: id,
                name: format!("u{id}"),
                password: pwd.into(),
            },
        )
    }

    fn login(s: &mut MemStore, h: &Hasher, id: i64, pwd: &str) -> Outcome {
        execute(
            s,
            h,
            JobKind::Login {
                user_id: id,
                password: pwd.into(),
                offline_batch: 10,
            },
        )
    }

    #[test]
    fn register_then_login() {
        let (mut s, h) = (MemStore::new(), hasher());
        assert_eq!(reg(&mut s, &h, 1, "pw"), Outcome::Register(Ok(())));
        assert_eq!(
            reg(&mut s, &h, 1, "other"),
            Outcome::Register(Err(RegisterError::Taken))
        );
        let stored = s.get_user(1).unwrap().unwrap();
        assert!(stored.pwd_hash.starts_with("$argon2id$"));
        assert!(stored.legacy_pwd.is_empty());
        assert!(matches!(
            login(&mut s, &h, 1, "pw"),
            Outcome::Login(Ok(LoginOk { user_id: 1, .. }))
        ));
        assert_eq!(
            login(&mut s, &h, 1, "bad"),
            Outcome::Login(Err(LoginError::WrongPassword))
        );
        assert_eq!(
            login(&mut s, &h, 2, "pw"),
            Outcome::Login(Err(LoginError::NoSuchUser))
        );
    }

    #[test]
    fn seed_plaintext_record_logs_in_once_and_is_upgraded() {
        let (mut s, h) = (MemStore::new(), hasher());
        s.create_user(
            &UserRecord::from_json(r#"{"userId":100,"userPwd":"123456","userName":"Scott"}"#)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            login(&mut s, &h, 100, "wrong"),
            Outcome::Login(Err(LoginError::WrongPassword))
        );
        assert!(matches!(
            login(&mut s, &h, 100, "123456"),
            Outcome::Login(Ok(_))
        ));
        let rec = s.get_user(100).unwrap().unwrap();
        assert!(rec.legacy_pwd.is_empty());
        assert!(h.verify("123456", &rec.pwd_hash));
        assert!(!rec.to_json().contains("123456"));
        assert!(matches!(
            login(&mut s, &h, 100, "123456"),
            Outcome::Login(Ok(_))
        ));
    }

    #[test]
    fn store_failures_become_store_errors() {
        let (mut s, h) = (MemStore::new(), hasher());
        s.set_failing(Some("down"));
        assert!(matches!(
            login(&mut s, &h, 1, "x"),
            Outcome::Login(Err(LoginError::Store(_)))
        ));
        assert!(matches!(
            reg(&mut s, &h, 1, "x"),
            Outcome::Register(Err(RegisterError::Store(_)))
        ));
    }

    #[test]
    fn passwords_never_reach_debug_output() {
        let k = JobKind::Login {
            user_id: 1,
            password: "hunter2".into(),
            offline_batch: 1,
        };
        assert!(!format!("{k:?}").contains("hunter2"));
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
                },
            });
        }
    }

    #[test]
    fn pool_runs_jobs_and_drains_on_shutdown() {
        let (pool, rx) = pool(2, hasher());
        submit_registrations(&pool, 5);
        pool.shutdown();
        let results: Vec<JobResult> = rx.try_iter().collect();
        assert_eq!(results.len(), 5);
        assert!(
            results
                .iter()
                .all(|r| r.outcome == Outcome::Register(Ok(())))
        );
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
            kind: JobKind::StoreOffline(OfflineMsg {
                from: 1,
                from_name: "n".into(),
                to: 999,
                content: "hi".into(),
                time: 0,
            }),
        });
        pool.shutdown();
        let order: Vec<bool> = rx
            .try_iter()
            .map(|r| matches!(r.outcome, Outcome::StoreOffline(_)))
            .collect();
        assert_eq!(order.len(), 51);
        let at = order.iter().position(|&s| s).unwrap();
        assert!(at < 25, "the storage job came back after {at} hashes");
    }
}
