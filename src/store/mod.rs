//! Storage: one [`Store`] trait, reached only from worker threads.
//!
//! Backends: [`embedded`] (the default, one crash-safe redb file in the data
//! directory) and [`mem`] (in memory, for tests of the logic above). Every method is a
//! plain blocking call; the reactor never calls them, it sends jobs (see `worker`).
//!
//! What the trait promises, whatever the backend:
//! - `create_user` never overwrites: it reports a taken id instead.
//! - `push_offline` stores a message only for a user that exists, and returns its
//!   sequence number; sequence numbers only grow.
//! - `fetch_offline` returns the oldest messages first and removes nothing;
//!   `ack_offline(user, upto)` removes those with `seq <= upto`. A crash between the two
//!   can repeat a message, never lose one.
//! - A method that returned `Ok` has committed durably.
#![forbid(unsafe_code)]

#[cfg(feature = "server")]
pub mod embedded;
#[cfg(any(test, feature = "testkit"))]
pub mod mem;
#[cfg(feature = "server")]
pub mod redis;

use serde::{Deserialize, Serialize};

use crate::users::UserRecord;

/// A storage failure, with a message fit for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    const TIMED_OUT: &str = "request timed out waiting for a worker";

    pub fn new(context: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError(format!("{context}: {e}"))
    }

    /// The job waited in its queue longer than the job timeout and was not run.
    pub fn timed_out() -> StoreError {
        StoreError(Self::TIMED_OUT.into())
    }

    pub fn is_timed_out(&self) -> bool {
        self.0 == Self::TIMED_OUT
    }
}

/// A private message kept for a user who was offline.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct OfflineMsg {
    #[serde(rename = "userId")]
    pub from: i64,
    #[serde(rename = "userName")]
    pub from_name: String,
    #[serde(rename = "toUserId")]
    pub to: i64,
    pub content: String,
    pub time: u64,
}

/// An offline message with the sequence number the store gave it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StoredMsg {
    pub seq: u64,
    #[serde(flatten)]
    pub msg: OfflineMsg,
}

/// The storage interface every backend implements.
pub trait Store: Send {
    fn get_user(&mut self, id: i64) -> Result<Option<UserRecord>, StoreError>;
    /// Creates the user; `Ok(false)` if the id is taken (nothing is overwritten).
    fn create_user(&mut self, rec: &UserRecord) -> Result<bool, StoreError>;
    /// Replaces an existing user's record (used to upgrade a seed-era plaintext
    /// password to a hash).
    fn update_user(&mut self, rec: &UserRecord) -> Result<(), StoreError>;
    /// Stores `msg` for `msg.to`; `Ok(None)` if that user does not exist.
    fn push_offline(&mut self, msg: &OfflineMsg) -> Result<Option<u64>, StoreError>;
    /// Up to `max` of `user`'s offline messages, oldest first, removing none.
    fn fetch_offline(&mut self, user: i64, max: usize) -> Result<Vec<StoredMsg>, StoreError>;
    /// Removes `user`'s offline messages with `seq <= upto`.
    fn ack_offline(&mut self, user: i64, upto: u64) -> Result<(), StoreError>;
}

/// Makes a store handle for each worker thread.
pub type StoreFactory =
    std::sync::Arc<dyn Fn() -> Result<Box<dyn Store>, StoreError> + Send + Sync>;

/// Conformance checks that every backend must pass, so that they behave the same.
/// Run by each backend's tests (the Redis one from `tests/`, hence public).
pub mod suite {
    use super::*;

    fn user(id: i64, name: &str) -> UserRecord {
        UserRecord {
            id,
            name: name.into(),
            pwd_hash: format!("$argon2id$fake-{id}"),
            legacy_pwd: String::new(),
        }
    }

    fn msg(from: i64, to: i64, content: &str) -> OfflineMsg {
        OfflineMsg {
            from,
            from_name: format!("u{from}"),
            to,
            content: content.into(),
            time: 1000,
        }
    }

    /// Runs every check against the store `make` returns; `make` is called more than
    /// once and must return handles onto one shared, initially empty store.
    pub fn run(make: &dyn Fn() -> Box<dyn Store>) {
        users(&mut *make());
        offline(&mut *make(), &mut *make());
    }

    fn users(s: &mut dyn Store) {
        assert_eq!(s.get_user(1).unwrap(), None);
        assert!(s.create_user(&user(1, "ann")).unwrap());
        assert!(!s.create_user(&user(1, "impostor")).unwrap());
        assert_eq!(s.get_user(1).unwrap().unwrap().name, "ann");
        let mut up = user(1, "ann");
        up.pwd_hash = "$argon2id$new".into();
        s.update_user(&up).unwrap();
        assert_eq!(s.get_user(1).unwrap().unwrap().pwd_hash, "$argon2id$new");
    }

    fn offline(a: &mut dyn Store, b: &mut dyn Store) {
        assert!(a.create_user(&user(10, "bob")).unwrap());
        assert!(a.create_user(&user(11, "cy")).unwrap());
        assert_eq!(a.push_offline(&msg(10, 99, "nobody")).unwrap(), None);
        let s1 = a.push_offline(&msg(11, 10, "one")).unwrap().unwrap();
        let s2 = b.push_offline(&msg(11, 10, "two")).unwrap().unwrap();
        let s3 = a.push_offline(&msg(11, 10, "three")).unwrap().unwrap();
        assert!(s1 < s2 && s2 < s3);
        // Oldest first, nothing removed by reading, limit respected, seen from any handle.
        let got = b.fetch_offline(10, 2).unwrap();
        let contents: Vec<&str> = got.iter().map(|m| m.msg.content.as_str()).collect();
        assert_eq!(contents, ["one", "two"]);
        assert_eq!(a.fetch_offline(10, 10).unwrap().len(), 3);
        assert_eq!(got[0].msg, msg(11, 10, "one"));
        // Ack removes up to and including `upto`, and is idempotent.
        a.ack_offline(10, got[1].seq).unwrap();
        b.ack_offline(10, got[1].seq).unwrap();
        let rest = a.fetch_offline(10, 10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].msg.content, "three");
        assert_eq!(rest[0].seq, s3);
        // New messages after an ack still get higher numbers.
        let s4 = a.push_offline(&msg(11, 10, "four")).unwrap().unwrap();
        assert!(s4 > s3);
        a.ack_offline(10, s4).unwrap();
        assert!(a.fetch_offline(10, 10).unwrap().is_empty());
        assert!(a.fetch_offline(11, 10).unwrap().is_empty());
    }
}
