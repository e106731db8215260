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

#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod worker;

use std::time::Duration;

use crate::hub::frame_fit::history_page;
use crate::store::{Conv, HistoryEntry, OfflineId, OfflineMsg, Store, StoreError, StoredMsg};
use crate::types::ConnRef;
use crate::users::UserRecord;

/// Password hashing, as the jobs need it: argon2id in the server (`auth`), a cheap
/// stand-in in the state-machine tests.
pub trait Passwords {
    /// A PHC string for `password`.
    fn hash(&self, password: &str) -> Result<String, HashError>;
    /// Whether `password` matches the PHC string `phc`.
    fn verify(&self, password: &str, phc: &str) -> bool;
    /// How the stored `phc` compares with the parameters of new hashes, judged
    /// without hashing anything (by default: current).
    fn assess(&self, _phc: &str) -> StoredHash {
        StoredHash::Current
    }
}

/// The most memory a stored hash may ask for, in KiB, unless the server's own
/// `--argon2-memory-kib` is more: 64 MiB, the memory of RFC 9106's second recommended
/// setting.
pub const MAX_STORED_MEMORY_KIB: u32 = 64 * 1024;

/// The most work (memory in KiB times passes) a stored hash may ask for, unless the
/// server's own parameters ask for more: that of RFC 9106's second recommended
/// setting (64 MiB, 3 passes), five times the work of the default parameters.
pub const MAX_STORED_WORK: u64 = 64 * 1024 * 3;

/// What a stored hash's own parameters ask for, next to the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredHash {
    /// The parameters of new hashes.
    Current,
    /// Other parameters within the limits: verified, then rehashed with the current.
    Outdated,
    /// More memory or work than the server allows: never verified.
    TooCostly { memory_kib: u32, passes: u32 },
}

/// Why passwords cannot be hashed (the hashing library's own words with each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashError {
    /// The parameters were refused (`--argon2-*`).
    BadParams(String),
    /// Hashing one password failed.
    Failed(String),
}

impl std::fmt::Display for HashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashError::BadParams(m) => write!(f, "bad argon2 parameters: {m}"),
            HashError::Failed(m) => write!(f, "hashing failed: {m}"),
        }
    }
}

impl std::error::Error for HashError {}

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
        /// The seed's `userStatus` and `sex`, stored as given (the seed's record shape).
        status: i64,
        sex: String,
    },
    /// Keep a private message for an offline user. `msg_id` is the sender's `msgId`:
    /// a resend with the same one stores nothing new. Without it the worker chooses an
    /// id, so that its own retries are idempotent too.
    StoreOffline {
        msg: OfflineMsg,
        msg_id: Option<String>,
        /// History entries kept per conversation (`--history`; 0: none): a message
        /// stored joins its pair's history in the same write.
        history: usize,
        /// Run in the history lane, after appends that hold entries of its pair.
        after_history: bool,
        /// The sender's connection waits for the answer (its later frames wait);
        /// false for a message taken back from a recipient that went before it was
        /// written, whose sender is answered without having waited.
        waits: bool,
    },
    /// Fetch more offline messages for a logged-in user.
    FetchOffline { user_id: i64, batch: usize },
    /// Remove offline messages that were handed to the user's connection.
    AckOffline { user_id: i64, upto: u64 },
    /// Add messages to their conversations' history, keeping the last `keep` of each:
    /// every message of one loop turn in one job.
    AppendHistory {
        entries: Vec<HistoryEntry>,
        keep: usize,
    },
    /// A page of a conversation's history (see [`Store::read_history`]), encoded
    /// here, off the loop, into the frame sent: at most `fit` body bytes (see
    /// [`crate::hub::frame_fit::history_page`]).
    ReadHistory {
        conv: Conv,
        before: u64,
        /// Entries after this id, oldest first, instead ([`Store::read_history_after`]).
        after: Option<u64>,
        limit: usize,
        fit: usize,
    },
    /// Which of these users (online on this node) an operator banned: asked when a
    /// node's link to the other nodes is back, since a ban published meanwhile did
    /// not reach it.
    CheckBans { users: Vec<i64> },
}

impl std::fmt::Debug for JobKind {
    // Hand-written so that a password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobKind::Login { user_id, .. } => write!(f, "Login({user_id})"),
            JobKind::Register { user_id, .. } => write!(f, "Register({user_id})"),
            JobKind::StoreOffline { msg: m, .. } => {
                write!(f, "StoreOffline({} -> {})", m.from, m.to)
            }
            JobKind::FetchOffline { user_id, .. } => write!(f, "FetchOffline({user_id})"),
            JobKind::AckOffline { user_id, upto } => write!(f, "AckOffline({user_id}, {upto})"),
            JobKind::AppendHistory { entries, .. } => {
                write!(f, "AppendHistory({} entries)", entries.len())
            }
            JobKind::ReadHistory {
                conv,
                before,
                after,
                ..
            } => match after {
                Some(after) => write!(f, "ReadHistory({conv:?}, after {after})"),
                None => write!(f, "ReadHistory({conv:?}, before {before})"),
            },
            JobKind::CheckBans { users } => write!(f, "CheckBans({} users)", users.len()),
        }
    }
}

impl JobKind {
    /// Whether this job hashes a password (logins and registrations): the slow kind,
    /// run by the hashing workers, apart from the quick storage jobs.
    pub fn hashes(&self) -> bool {
        matches!(self, JobKind::Login { .. } | JobKind::Register { .. })
    }

    /// Whether this job reads a page of history: run in a lane of its own, so that
    /// no number of pages asked for holds up another job (the hub hands a page over
    /// once the appends before it have ended).
    pub fn reads_history(&self) -> bool {
        matches!(self, JobKind::ReadHistory { .. })
    }

    /// Whether this job writes history (appends, and a private message stored after
    /// appends of its pair): run apart from the other storage jobs, in order, so that
    /// an entry written with its stored message comes after the entries of the same
    /// conversation noted before it.
    pub fn is_history(&self) -> bool {
        matches!(
            self,
            JobKind::AppendHistory { .. }
                | JobKind::StoreOffline {
                    after_history: true,
                    ..
                }
        )
    }

    /// The outcome of this job when it could not be run at all.
    pub fn fail(self, e: StoreError) -> Outcome {
        match self {
            JobKind::Login { .. } => Outcome::Login(Err(LoginError::Store(e))),
            JobKind::Register { .. } => Outcome::Register(Err(RegisterError::Store(e))),
            JobKind::StoreOffline {
                msg, msg_id, waits, ..
            } => Outcome::StoreOffline(OfflineStored {
                msg_id,
                to: msg.to,
                waits,
                result: Err(e),
            }),
            JobKind::FetchOffline { user_id, batch } => Outcome::FetchOffline {
                user_id,
                batch,
                result: Err(e),
            },
            JobKind::AckOffline { user_id, upto } => Outcome::AckOffline {
                user_id,
                upto,
                result: Err(e),
            },
            JobKind::AppendHistory { entries, .. } => Outcome::AppendHistory {
                count: entries.len(),
                kept: 0,
                result: Err(e),
            },
            JobKind::ReadHistory { .. } => Outcome::History(Err(e)),
            JobKind::CheckBans { .. } => Outcome::CheckBans(Err(e)),
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
    /// The password matched, but an operator banned this account.
    Banned,
    /// The stored hash asks for more than the server allows ([`StoredHash::TooCostly`]):
    /// not checked, and answered as a wrong password.
    CostlyHash,
    Store(StoreError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterError {
    Taken,
    Store(StoreError),
}

/// What came of a [`JobKind::StoreOffline`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineStored {
    /// The sender's `msgId`, to echo in the answer.
    pub msg_id: Option<String>,
    /// The recipient.
    pub to: i64,
    /// As in the job: the sender's connection waits for this answer.
    pub waits: bool,
    /// `Ok(Some(seq))`: stored (now, or by an earlier write with the same id);
    /// `Ok(None)`: the recipient does not exist; `Err(Uncertain)`: may be stored;
    /// any other `Err`: not stored.
    pub result: Result<Option<u64>, StoreError>,
}

/// What came of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Login(Result<LoginOk, LoginError>),
    Register(Result<(), RegisterError>),
    StoreOffline(OfflineStored),
    FetchOffline {
        user_id: i64,
        batch: usize,
        result: Result<Vec<StoredMsg>, StoreError>,
    },
    /// The removal of a user's offline messages up to `upto`.
    AckOffline {
        user_id: i64,
        upto: u64,
        result: Result<(), StoreError>,
    },
    /// `count` history entries appended (or lost, on an error).
    AppendHistory {
        count: usize,
        /// Of them, appended before a slice failed (all of them when `result` is ok).
        kept: usize,
        result: Result<(), StoreError>,
    },
    /// A page of history, as the frame to send.
    History(Result<Page, StoreError>),
    /// The users asked about who are banned.
    CheckBans(Result<Vec<i64>, StoreError>),
}

impl Outcome {
    /// Whether producing this outcome certainly took a password hash: a login that
    /// found its user, a registration that went through. An unknown user or a storage
    /// error is answered without one, and must not pull down the measured cost.
    pub fn hashed(&self) -> bool {
        matches!(
            self,
            Outcome::Login(Ok(_) | Err(LoginError::WrongPassword | LoginError::Banned))
                | Outcome::Register(Ok(()))
        )
    }
}

/// A `HistoryResMes` frame, length prefix included, fitted to its reader.
#[derive(Clone, PartialEq, Eq)]
pub struct Page(pub Vec<u8>);

impl std::fmt::Debug for Page {
    // A page may be a megabyte: its size says enough in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Page({} bytes)", self.0.len())
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
            status,
            sex,
        } => {
            let mut extra = serde_json::Map::new();
            extra.insert("userStatus".into(), status.into());
            extra.insert("sex".into(), sex.into());
            let rec = UserRecord {
                id: user_id,
                name,
                extra,
                ..UserRecord::default()
            };
            Outcome::Register(register(store, hasher, rec, &password))
        }
        JobKind::StoreOffline {
            msg,
            msg_id,
            history,
            waits,
            ..
        } => {
            let id = match &msg_id {
                Some(m) => OfflineId::Client(m.clone()),
                None => OfflineId::fresh(),
            };
            Outcome::StoreOffline(OfflineStored {
                result: store.push_offline(&msg, &id, history),
                msg_id,
                to: msg.to,
                waits,
            })
        }
        JobKind::FetchOffline { user_id, batch } => Outcome::FetchOffline {
            user_id,
            batch,
            result: store.fetch_offline(user_id, batch),
        },
        JobKind::AckOffline { user_id, upto } => Outcome::AckOffline {
            user_id,
            upto,
            result: store.ack_offline(user_id, upto),
        },
        JobKind::AppendHistory { entries, keep } => {
            let mut kept = 0;
            let mut result = Ok(());
            for slice in entries.chunks(store.history_slice().max(1)) {
                result = store.append_history(slice, keep);
                if result.is_err() {
                    break;
                }
                kept += slice.len();
            }
            Outcome::AppendHistory {
                count: entries.len(),
                kept,
                result,
            }
        }
        JobKind::ReadHistory {
            conv,
            before,
            after,
            limit,
            fit,
        } => {
            let read = match after {
                Some(after) => store.read_history_after(conv, after, limit),
                None => store.read_history(conv, before, limit),
            };
            let oldest = after.is_some();
            Outcome::History(
                read.map(|(messages, more)| Page(history_page(&messages, more, fit, oldest))),
            )
        }
        JobKind::CheckBans { users } => Outcome::CheckBans(banned(store, &users)),
    }
}

/// The users among `users` whose account is banned. One with no account is not among
/// them: it may have been removed, but a store that lost its data (a Redis restarted
/// without persistence) knows nobody, and that must not end everyone's session.
fn banned(store: &mut dyn Store, users: &[i64]) -> Result<Vec<i64>, StoreError> {
    let records = store.get_users(users)?;
    Ok(users
        .iter()
        .zip(records)
        .filter(|(_, rec)| rec.as_ref().is_some_and(|r| r.banned))
        .map(|(&id, _)| id)
        .collect())
}

fn login(
    store: &mut dyn Store,
    hasher: &dyn Passwords,
    user_id: i64,
    password: &str,
    batch: usize,
) -> Result<LoginOk, LoginError> {
    let rec = store
        .get_user(user_id)
        .map_err(LoginError::Store)?
        .ok_or(LoginError::NoSuchUser)?;
    if !rec.pwd_hash.is_empty() {
        let stored = hasher.assess(&rec.pwd_hash);
        if let StoredHash::TooCostly { memory_kib, passes } = stored {
            log::warn!(
                "user {user_id}: login refused: the stored password hash asks for \
                 {memory_kib} KiB and {passes} passes, over the limits; set a new \
                 password (users passwd)"
            );
            return Err(LoginError::CostlyHash);
        }
        if !hasher.verify(password, &rec.pwd_hash) {
            return Err(LoginError::WrongPassword);
        }
        if rec.banned {
            // Only someone who knows the password learns of the ban.
            return Err(LoginError::Banned);
        }
        if rec.stale_shape {
            // Written by an earlier version with the hash beside an empty `userPwd`,
            // which the seed's server would take for an empty password: rewrite it in
            // the current shape (the hash in `userPwd`), other fields kept, in place
            // (an operator's change meanwhile is kept too).
            match store.modify_user(user_id, &mut |_| {}) {
                Ok(_) => log::info!("user {user_id}: record rewritten with the hash in userPwd"),
                Err(e) => log::warn!("user {user_id}: record rewrite failed: {e}"),
            }
        }
        if stored == StoredHash::Outdated {
            rehash(store, hasher, user_id, password, &rec.pwd_hash);
        }
    } else if !rec.legacy_pwd.is_empty() && constant_time_eq(&rec.legacy_pwd, password) {
        if rec.banned {
            return Err(LoginError::Banned);
        }
        // A record written by the seed's server: upgrade its plaintext to a hash now,
        // in `userPwd` itself, every other field kept. If that write fails the login
        // still stands; the upgrade is tried next time.
        match hasher.hash(password) {
            Ok(h) => {
                let legacy = rec.legacy_pwd.clone();
                let upgrade = &mut |r: &mut UserRecord| {
                    // Unless an operator set another password meanwhile.
                    if r.pwd_hash.is_empty() && r.legacy_pwd == legacy {
                        r.pwd_hash = h.clone();
                        r.legacy_pwd.clear();
                    }
                };
                match store.modify_user(user_id, upgrade) {
                    Ok(_) => log::info!("user {user_id}: plaintext password replaced by a hash"),
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

/// The password matched a hash of other parameters than the current ones: hashed again
/// with the current ones, in place, unless the password was changed meanwhile. If that
/// fails the login still stands; the rehash is tried at the next one.
fn rehash(store: &mut dyn Store, hasher: &dyn Passwords, user_id: i64, password: &str, old: &str) {
    let new = match hasher.hash(password) {
        Ok(h) => h,
        Err(e) => {
            log::warn!("user {user_id}: password not rehashed: {e}");
            return;
        }
    };
    let update = &mut |r: &mut UserRecord| {
        if r.pwd_hash == old {
            r.pwd_hash = new.clone();
        }
    };
    match store.modify_user(user_id, update) {
        Ok(_) => log::info!("user {user_id}: password rehashed with the current parameters"),
        Err(e) => log::warn!("user {user_id}: password not rehashed: {e}"),
    }
}

fn register(
    store: &mut dyn Store,
    hasher: &dyn Passwords,
    mut rec: UserRecord,
    password: &str,
) -> Result<(), RegisterError> {
    // Cheap early answer for a taken id; create_user still refuses to overwrite.
    if store
        .get_user(rec.id)
        .map_err(RegisterError::Store)?
        .is_some()
    {
        return Err(RegisterError::Taken);
    }
    rec.pwd_hash = hasher
        .hash(password)
        .map_err(|e| RegisterError::Store(StoreError::Hashing(e.to_string())))?;
    // This attempt's own mark: if the answer to the write is lost, the store (and the
    // check below) recognise the record as this registration's, not someone else's.
    rec.reg_token = crate::store::random_token();
    match store.create_user(&rec) {
        Ok(true) => Ok(()),
        Ok(false) => Err(RegisterError::Taken),
        Err(e) if e.is_uncertain() => match store.get_user(rec.id) {
            // The store could not tell; a read now still can.
            Ok(Some(found)) if found.reg_token == rec.reg_token => Ok(()),
            Ok(Some(_)) => Err(RegisterError::Taken),
            _ => Err(RegisterError::Store(e)),
        },
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
    use crate::hub::testkit::TestPasswords;
    use crate::store::mem::MemStore;

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
                status: 0,
                sex: "f".into(),
            },
        )
    }

    /// A handle on a `MemStore` that misbehaves on purpose, as a test sets it.
    struct Hooked {
        s: MemStore,
        /// After a user is created: the answer lost, and the store down.
        lose_creates: bool,
        /// The store's history slice; the store goes down after each append.
        slice: usize,
        appends: usize,
    }

    impl Hooked {
        fn new(s: &MemStore) -> Hooked {
            Hooked {
                s: s.clone(),
                lose_creates: false,
                slice: usize::MAX,
                appends: 0,
            }
        }
    }

    impl Store for Hooked {
        fn get_user(&mut self, id: i64) -> Result<Option<UserRecord>, StoreError> {
            self.s.get_user(id)
        }
        fn create_user(&mut self, rec: &UserRecord) -> Result<bool, StoreError> {
            let r = self.s.create_user(rec);
            if !self.lose_creates {
                return r;
            }
            r?;
            self.s.set_failing(Some("down"));
            Err(StoreError::Uncertain("reply lost".into()))
        }
        fn update_user(&mut self, rec: &UserRecord) -> Result<(), StoreError> {
            self.s.update_user(rec)
        }
        fn push_offline(
            &mut self,
            msg: &OfflineMsg,
            id: &OfflineId,
            history: usize,
        ) -> Result<Option<u64>, StoreError> {
            self.s.push_offline(msg, id, history)
        }
        fn fetch_offline(&mut self, u: i64, max: usize) -> Result<Vec<StoredMsg>, StoreError> {
            self.s.fetch_offline(u, max)
        }
        fn ack_offline(&mut self, u: i64, upto: u64) -> Result<(), StoreError> {
            self.s.ack_offline(u, upto)
        }
        fn history_slice(&self) -> usize {
            self.slice
        }
        fn append_history(&mut self, e: &[HistoryEntry], keep: usize) -> Result<(), StoreError> {
            assert!(e.len() <= self.slice, "a slice of {}", e.len());
            self.appends += 1;
            let r = self.s.append_history(e, keep);
            self.s.set_failing(Some("down"));
            r
        }
        fn read_history(
            &mut self,
            conv: Conv,
            before: u64,
            limit: usize,
        ) -> Result<(Vec<HistoryEntry>, bool), StoreError> {
            self.s.read_history(conv, before, limit)
        }
    }

    fn private(s: &mut MemStore, from: i64, to: i64, msg_id: Option<&str>) -> OfflineStored {
        let h = hasher();
        let kind = JobKind::StoreOffline {
            msg: OfflineMsg {
                from,
                from_name: format!("u{from}"),
                to,
                content: "hi".into(),
                time: 1,
            },
            msg_id: msg_id.map(str::to_owned),
            history: 10,
            after_history: false,
            waits: true,
        };
        match execute(s, &h, kind) {
            Outcome::StoreOffline(o) => o,
            other => panic!("{other:?}"),
        }
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
        // The seed's shape: the hash in userPwd, userStatus and sex as given.
        let json: serde_json::Value = serde_json::from_str(&stored.to_json()).unwrap();
        assert_eq!(json["userPwd"].as_str(), Some(stored.pwd_hash.as_str()));
        assert_eq!(
            (&json["userStatus"], &json["sex"]),
            (&0.into(), &"f".into())
        );
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
            &UserRecord::from_json(
                r#"{"userId":100,"userPwd":"123456","userName":"Scott","userStatus":1,"sex":"m"}"#,
            )
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
        // The hash took the plaintext's place; the rest of the record is as it was.
        let json: serde_json::Value = serde_json::from_str(&rec.to_json()).unwrap();
        assert_eq!(json["userPwd"].as_str(), Some(rec.pwd_hash.as_str()));
        assert_eq!(
            (&json["userName"], &json["userStatus"], &json["sex"]),
            (&"Scott".into(), &1.into(), &"m".into())
        );
        // An empty password never matches it.
        assert_eq!(
            login(&mut s, &h, 100, ""),
            Outcome::Login(Err(LoginError::WrongPassword))
        );
        assert!(matches!(
            login(&mut s, &h, 100, "123456"),
            Outcome::Login(Ok(_))
        ));
    }

    #[test]
    fn a_record_of_the_earlier_shape_is_rewritten_at_login() {
        let (mut s, h) = (MemStore::new(), hasher());
        let hash = h.hash("pw").unwrap();
        let old = format!(r#"{{"userId":5,"userName":"e","pwdHash":"{hash}","sex":"x"}}"#);
        s.create_user(&UserRecord::from_json(&old).unwrap())
            .unwrap();
        assert_eq!(
            login(&mut s, &h, 5, ""),
            Outcome::Login(Err(LoginError::WrongPassword))
        );
        assert!(s.get_user_for_test(5).stale_shape);
        assert!(matches!(login(&mut s, &h, 5, "pw"), Outcome::Login(Ok(_))));
        let rec = s.get_user_for_test(5);
        assert!(!rec.stale_shape);
        let json: serde_json::Value = serde_json::from_str(&rec.to_json()).unwrap();
        assert_eq!(json["userPwd"].as_str(), Some(hash.as_str()));
        assert_eq!(json["sex"], "x");
    }

    #[test]
    fn a_registration_whose_answer_was_lost_is_recognised_as_done() {
        let (mut s, h) = (MemStore::new(), hasher());
        s.set_losing_answers(Some(StoreError::Uncertain("reply lost".into())));
        assert_eq!(reg(&mut s, &h, 1, "pw"), Outcome::Register(Ok(())));
        s.set_losing_answers(None);
        assert!(matches!(login(&mut s, &h, 1, "pw"), Outcome::Login(Ok(_))));
        // Someone else's record stays "taken", whatever the answer.
        s.set_losing_answers(Some(StoreError::Uncertain("reply lost".into())));
        assert_eq!(
            reg(&mut s, &h, 1, "other"),
            Outcome::Register(Err(RegisterError::Taken))
        );
    }

    #[test]
    fn an_uncertain_registration_that_cannot_be_checked_stays_uncertain() {
        let (mut s, h) = (MemStore::new(), hasher());
        // Created, the answer lost, and the store unreadable right after.
        let mut w = Hooked::new(&s);
        w.lose_creates = true;
        let out = execute(
            &mut w,
            &h,
            JobKind::Register {
                user_id: 3,
                name: "c".into(),
                password: "pw".into(),
                status: 0,
                sex: String::new(),
            },
        );
        assert!(
            matches!(&out, Outcome::Register(Err(RegisterError::Store(e))) if e.is_uncertain()),
            "{out:?}"
        );
        s.set_failing(None);
        assert!(s.get_user(3).unwrap().is_some());
    }

    #[test]
    fn a_long_append_goes_in_the_stores_slices_and_says_how_many_were_kept() {
        let entries: Vec<HistoryEntry> = (0..5)
            .map(|i| HistoryEntry {
                user_id: 1,
                content: format!("m{i}"),
                ..HistoryEntry::default()
            })
            .collect();
        // Slices of two; the store goes down after the first slice.
        let mut s = MemStore::new();
        let mut w = Hooked::new(&s);
        w.slice = 2;
        let out = execute(
            &mut w,
            &hasher(),
            JobKind::AppendHistory { entries, keep: 10 },
        );
        assert!(
            matches!(
                out,
                Outcome::AppendHistory {
                    count: 5,
                    kept: 2,
                    result: Err(_)
                }
            ),
            "{out:?}"
        );
        assert_eq!(w.appends, 2, "no slice after the failed one");
        s.set_failing(None);
        let (kept, _) = s.read_history(Conv::Group, 0, 10).unwrap();
        assert_eq!(
            kept.iter().map(|e| e.content.as_str()).collect::<Vec<_>>(),
            ["m0", "m1"]
        );
    }

    #[test]
    fn a_private_message_resent_with_its_msg_id_is_stored_once() {
        let (mut s, h) = (MemStore::new(), hasher());
        reg(&mut s, &h, 1, "pw");
        reg(&mut s, &h, 2, "pw");
        // Stored, but the answer was lost: uncertain, and the msgId comes back.
        s.set_losing_answers(Some(StoreError::Uncertain("timed out".into())));
        let first = private(&mut s, 1, 2, Some("a-1"));
        assert_eq!(first.msg_id.as_deref(), Some("a-1"));
        assert!(first.result.unwrap_err().is_uncertain());
        s.set_losing_answers(None);
        // The resend: nothing new, the same seq.
        let again = private(&mut s, 1, 2, Some("a-1"));
        assert_eq!(s.offline_count(2), 1);
        let seq = again.result.unwrap().unwrap();
        assert_eq!(private(&mut s, 1, 2, Some("a-1")).result, Ok(Some(seq)));
        assert_eq!(s.offline_count(2), 1);
        // Without msgId every message is new; with another msgId too.
        assert!(private(&mut s, 1, 2, None).result.unwrap().unwrap() > seq);
        assert!(private(&mut s, 1, 2, None).result.unwrap().unwrap() > seq);
        assert!(private(&mut s, 1, 2, Some("a-2")).result.unwrap().is_some());
        assert_eq!(s.offline_count(2), 4);
        assert_eq!(private(&mut s, 1, 9, Some("x")).result, Ok(None));
    }

    #[test]
    fn a_banned_user_with_the_right_password_is_refused_as_banned() {
        let (mut s, h) = (MemStore::new(), hasher());
        reg(&mut s, &h, 1, "pw");
        s.modify_user(1, &mut |r| r.banned = true).unwrap();
        assert_eq!(
            login(&mut s, &h, 1, "bad"),
            Outcome::Login(Err(LoginError::WrongPassword))
        );
        let out = login(&mut s, &h, 1, "pw");
        assert_eq!(out, Outcome::Login(Err(LoginError::Banned)));
        assert!(out.hashed());
        // A seed record too, and its plaintext is then left as it is.
        s.create_user(
            &UserRecord::from_json(r#"{"userId":2,"userPwd":"123456","banned":true}"#).unwrap(),
        )
        .unwrap();
        assert_eq!(
            login(&mut s, &h, 2, "123456"),
            Outcome::Login(Err(LoginError::Banned))
        );
        s.modify_user(1, &mut |r| r.banned = false).unwrap();
        assert!(matches!(login(&mut s, &h, 1, "pw"), Outcome::Login(Ok(_))));
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

    /// The server's hasher (cheap parameters), counting the hashes it checks.
    #[cfg(feature = "server")]
    struct Counting {
        h: crate::job::auth::Hasher,
        verified: std::cell::Cell<usize>,
    }

    #[cfg(feature = "server")]
    impl Passwords for Counting {
        fn hash(&self, password: &str) -> Result<String, HashError> {
            self.h.hash(password)
        }
        fn verify(&self, password: &str, phc: &str) -> bool {
            self.verified.set(self.verified.get() + 1);
            self.h.verify(password, phc)
        }
        fn assess(&self, phc: &str) -> StoredHash {
            self.h.assess(phc)
        }
    }

    #[cfg(feature = "server")]
    fn counting(memory_kib: u32, passes: u32) -> Counting {
        use crate::job::auth::{HashParams, Hasher};
        Counting {
            h: Hasher::new(HashParams { memory_kib, passes }).unwrap(),
            verified: std::cell::Cell::new(0),
        }
    }

    /// `phc` with its parameters replaced by `m` KiB and `t` passes.
    #[cfg(feature = "server")]
    fn reparam(phc: &str, m: u32, t: u32) -> String {
        let at = phc.find("$m=").unwrap();
        let end = at + phc[at + 1..].find('$').unwrap() + 1;
        format!("{}$m={m},t={t},p=1{}", &phc[..at], &phc[end..])
    }

    #[cfg(feature = "server")]
    #[test]
    fn a_stored_hash_over_the_limits_is_refused_unhashed_as_a_wrong_password() {
        let mut s = MemStore::new();
        let h = counting(64, 1);
        assert_eq!(
            reg(&mut s, &TestPasswords, 1, "x"),
            Outcome::Register(Ok(()))
        );
        // 64 MiB and a million passes, as a shared store or an import may hold.
        let hostile = reparam(&h.hash("pw").unwrap(), 64 * 1024, 1_000_000);
        s.modify_user(1, &mut |r| r.pwd_hash = hostile.clone())
            .unwrap();
        for pwd in ["pw", "wrong"] {
            let out = execute(
                &mut s,
                &h,
                JobKind::Login {
                    user_id: 1,
                    password: pwd.into(),
                    offline_batch: 10,
                },
            );
            assert_eq!(out, Outcome::Login(Err(LoginError::CostlyHash)));
            assert!(!out.hashed(), "no hash was computed");
        }
        assert_eq!(h.verified.get(), 0, "the hostile hash was never checked");
        assert_eq!(s.get_user_for_test(1).pwd_hash, hostile, "left as it is");
    }

    #[cfg(feature = "server")]
    #[test]
    fn a_hash_of_other_parameters_is_rehashed_at_login() {
        let mut s = MemStore::new();
        let old = counting(64, 2);
        let now = counting(128, 1);
        assert_eq!(
            reg(&mut s, &TestPasswords, 1, "x"),
            Outcome::Register(Ok(()))
        );
        let phc = old.hash("pw").unwrap();
        s.modify_user(1, &mut |r| r.pwd_hash = phc.clone()).unwrap();
        let login = |s: &mut MemStore, pwd: &str| {
            execute(
                s,
                &now,
                JobKind::Login {
                    user_id: 1,
                    password: pwd.into(),
                    offline_batch: 10,
                },
            )
        };
        // A wrong password changes nothing.
        assert_eq!(
            login(&mut s, "bad"),
            Outcome::Login(Err(LoginError::WrongPassword))
        );
        assert_eq!(s.get_user_for_test(1).pwd_hash, phc);
        assert!(matches!(login(&mut s, "pw"), Outcome::Login(Ok(_))));
        let new = s.get_user_for_test(1).pwd_hash;
        assert_ne!(new, phc);
        assert!(new.contains("$m=128,t=1,p=1$"), "{new}");
        assert_eq!(now.assess(&new), StoredHash::Current);
        assert!(matches!(login(&mut s, "pw"), Outcome::Login(Ok(_))));
        assert_eq!(s.get_user_for_test(1).pwd_hash, new, "rehashed once");
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
