//! The contract between the hub and whatever runs its store jobs, and the jobs'
//! logic itself.
//!
//! The hub never touches storage or hashes a password: it queues a [`Job`] and carries
//! on. Whoever runs it (a worker thread in the server, the test kit in the
//! state-machine tests) calls [`execute`] with a store handle and a password hasher and
//! hands the [`JobResult`] back to the hub. Jobs carry the [`ConnRef`] they are for,
//! generation included, so a result for a connection that has gone is simply dropped.
//!
//! `execute` is a plain blocking function over two traits, [`Store`] and
//! [`Passwords`], so this file builds with no I/O crate and the tests run jobs
//! themselves, in whatever order they choose, with no threads at all.
#![forbid(unsafe_code)]

use std::time::Duration;

use crate::conn::ConnRef;
use crate::store::{OfflineMsg, Store, StoreError, StoredMsg};
use crate::users::UserRecord;

/// Password hashing, as the jobs need it: argon2id in the server (`auth`), a cheap
/// stand-in in the state-machine tests.
pub trait Passwords {
    /// A PHC string for `password`.
    fn hash(&self, password: &str) -> Result<String, String>;
    /// Whether `password` matches the PHC string `phc`.
    fn verify(&self, password: &str, phc: &str) -> bool;
}

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
            JobKind::AckOffline { upto, .. } => Outcome::AckOffline {
                upto,
                result: Err(e),
            },
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
    /// The removal of a user's offline messages up to `upto`.
    AckOffline {
        upto: u64,
        result: Result<(), StoreError>,
    },
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
pub fn execute(store: &mut dyn Store, hasher: &dyn Passwords, kind: JobKind) -> Outcome {
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
        JobKind::AckOffline { user_id, upto } => Outcome::AckOffline {
            upto,
            result: store.ack_offline(user_id, upto),
        },
    }
}

fn login(
    store: &mut dyn Store,
    hasher: &dyn Passwords,
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
    hasher: &dyn Passwords,
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

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mem::MemStore;
    use crate::testkit::TestPasswords;

    fn hasher() -> TestPasswords {
        TestPasswords
    }

    fn reg(s: &mut MemStore, h: &TestPasswords, id: i64, pwd: &str) -> Outcome {
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

    fn login(s: &mut MemStore, h: &TestPasswords, id: i64, pwd: &str) -> Outcome {
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
        assert!(h.verify("pw", &stored.pwd_hash));
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
}
