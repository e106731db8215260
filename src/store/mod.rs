//! Storage: one [`Store`] trait, reached only from worker threads.
//!
//! Backends: [`embedded`] (the default, one crash-safe redb file in the data
//! directory) and [`mem`] (in memory, for tests of the logic above). Every method is a
//! plain blocking call; the reactor never calls them, it sends jobs (see `worker`).
//!
//! What the trait promises, whatever the backend:
//! - `create_user` never overwrites: it reports a taken id instead. Repeating the
//!   same registration (same `reg_token`) is not "taken" but success, so a registration
//!   whose answer was lost can be repeated or checked.
//! - `push_offline` stores a message only for a user that exists, and returns its
//!   sequence number; sequence numbers only grow. Each message comes with an
//!   [`OfflineId`]: a message whose id (same sender, same recipient) was stored within
//!   [`DEDUPE_WINDOW`] is not stored again, and the first one's sequence number is
//!   returned. Every write is thereby idempotent, and an uncertain outcome
//!   ([`StoreError::Uncertain`]) is resolved by repeating it.
//! - `update_user` keeps the fields of the record it does not know
//!   ([`UserRecord::extra`]).
//! - `fetch_offline` returns the oldest messages first and removes nothing;
//!   `ack_offline(user, upto)` removes those with `seq <= upto`. A crash between the two
//!   can repeat a message, never lose one.
//! - `append_history` numbers each entry within its conversation ([`Conv`]: the group,
//!   or one pair of users) in the store itself, so ids are unique per conversation
//!   whichever node wrote, and trims each conversation to its last entries;
//!   `read_history` pages back through them by id.
//! - A method that returned `Ok` has committed durably.
#![forbid(unsafe_code)]

#[cfg(feature = "server")]
pub mod embedded;
#[cfg(any(test, feature = "testkit"))]
pub mod mem;
#[cfg(feature = "server")]
pub mod redis;
#[cfg(any(test, feature = "testkit"))]
pub mod suite;

use serde::{Deserialize, Serialize};

pub use crate::proto::HistoryEntry;
use crate::users::UserRecord;

/// A storage failure. What the caller may tell its client depends on the kind: only
/// [`QueueTimeout`](StoreError::QueueTimeout) and
/// [`Unavailable`](StoreError::Unavailable) mean that nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The job waited in its queue longer than the job timeout and was not run.
    QueueTimeout,
    /// Certainly not done: the store could not be reached, refused the request, or
    /// answered with an error (a message fit for the log).
    Unavailable(String),
    /// A write may or may not have happened: the request was sent, but its answer was
    /// lost (a timeout, a dropped connection) and could not be checked in time. Writes
    /// are idempotent, so the same request may be repeated safely.
    Uncertain(String),
    /// The password could not be hashed (nothing was written).
    Hashing(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::QueueTimeout => f.write_str("request timed out waiting for a worker"),
            StoreError::Unavailable(m) => f.write_str(m),
            StoreError::Uncertain(m) => write!(f, "outcome unknown: {m}"),
            StoreError::Hashing(m) => write!(f, "password hashing failed: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// A record that does not parse is a store that cannot answer (certainly nothing
/// written).
impl From<crate::users::BadRecord> for StoreError {
    fn from(e: crate::users::BadRecord) -> StoreError {
        StoreError::Unavailable(e.to_string())
    }
}

impl StoreError {
    /// [`Unavailable`](StoreError::Unavailable), with a context for the log.
    pub fn new(context: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable(format!("{context}: {e}"))
    }

    /// The job waited in its queue longer than the job timeout and was not run.
    pub fn timed_out() -> StoreError {
        StoreError::QueueTimeout
    }

    pub fn is_timed_out(&self) -> bool {
        matches!(self, StoreError::QueueTimeout)
    }

    /// Whether a write may have happened after all (see [`StoreError::Uncertain`]).
    pub fn is_uncertain(&self) -> bool {
        matches!(self, StoreError::Uncertain(_))
    }
}

/// How long an offline message's id is remembered, so that a repeated write of it
/// (the sender's resend with the same `msgId`, or the store's own retry after a lost
/// answer) stores nothing new and returns the same sequence number.
pub const DEDUPE_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The id under which an offline message is stored at most once (per sender and
/// recipient, for [`DEDUPE_WINDOW`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OfflineId {
    /// The sender's own `msgId` (at most `proto::MAX_MSG_ID` bytes).
    Client(String),
    /// Chosen by this server for a message without `msgId` ([`OfflineId::fresh`]).
    Server(String),
}

impl OfflineId {
    /// A new id, unique across processes and nodes: a random prefix drawn once per
    /// process, and a counter.
    pub fn fresh() -> OfflineId {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let prefix = PREFIX.get_or_init(random_token);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        OfflineId::Server(format!("{prefix}-{n}"))
    }

    /// The id as one string, its origin first: `c:<msgId>` or `s:<server id>`.
    pub fn tagged(&self) -> String {
        match self {
            OfflineId::Client(id) => format!("c:{id}"),
            OfflineId::Server(id) => format!("s:{id}"),
        }
    }
}

/// 128 random bits as 32 hex digits, from the standard library's randomly seeded
/// hasher keys (no random crate in the core). Not for secrets: for ids and tokens that
/// must not collide.
pub fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let word = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        h.finish()
    };
    format!("{:016x}{:016x}", word(1), word(2))
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

impl OfflineMsg {
    /// The message as an entry of its pair's history.
    pub fn history_entry(&self) -> HistoryEntry {
        self.clone().into()
    }
}

impl From<OfflineMsg> for HistoryEntry {
    /// Not numbered yet (`id` 0): the store numbers it.
    fn from(m: OfflineMsg) -> HistoryEntry {
        HistoryEntry {
            id: 0,
            time: m.time,
            user_id: m.from,
            user_name: m.from_name,
            content: m.content,
            to_user_id: Some(m.to),
        }
    }
}

/// An offline message with the sequence number the store gave it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StoredMsg {
    pub seq: u64,
    #[serde(flatten)]
    pub msg: OfflineMsg,
}

/// A conversation whose history is kept: the group's, or one pair of users'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conv {
    Group,
    /// The private conversation of two users, the lower id first ([`Conv::pair`]).
    Pair(i64, i64),
}

impl Conv {
    /// The private conversation of `a` and `b`, whichever wrote.
    pub fn pair(a: i64, b: i64) -> Conv {
        Conv::Pair(a.min(b), a.max(b))
    }

    /// The conversation an entry belongs to: private if it has a recipient.
    pub fn of(e: &HistoryEntry) -> Conv {
        match e.to_user_id {
            None => Conv::Group,
            Some(to) => Conv::pair(e.user_id, to),
        }
    }

    /// As two numbers, the group as (0, 0) (user ids are positive).
    pub fn key(self) -> (i64, i64) {
        match self {
            Conv::Group => (0, 0),
            Conv::Pair(a, b) => (a, b),
        }
    }
}

/// Which entries of one append outlive it: an entry followed in the same append by
/// `keep` or more of its own conversation is trimmed by that append, so a store need
/// never write it (its id is used all the same). At saturation an append holds
/// thousands of the group's messages and `--history` keeps 1,000: most of them would
/// be written and deleted in one transaction.
#[cfg(any(test, feature = "server", feature = "testkit"))]
pub(crate) struct Outliving {
    /// Per conversation, the entries of the append not yet taken.
    left: std::collections::HashMap<(i64, i64), usize>,
    keep: usize,
}

#[cfg(any(test, feature = "server", feature = "testkit"))]
impl Outliving {
    pub(crate) fn new(entries: &[HistoryEntry], keep: usize) -> Outliving {
        let mut left = std::collections::HashMap::new();
        for e in entries {
            *left.entry(Conv::of(e).key()).or_insert(0) += 1;
        }
        Outliving { left, keep }
    }

    /// Takes the next entry of `conv` (in the append's order): whether it is among
    /// the last `keep` of its conversation when the append ends.
    pub(crate) fn next(&mut self, conv: (i64, i64)) -> bool {
        let left = self
            .left
            .get_mut(&conv)
            .expect("an entry of the append counted");
        *left -= 1;
        *left < self.keep
    }
}

/// The storage interface every backend implements.
pub trait Store: Send {
    fn get_user(&mut self, id: i64) -> Result<Option<UserRecord>, StoreError>;
    /// The records of `ids`, in their order (`None`: no such user, or, from Redis, a
    /// record that cannot be read, logged). A store that can read many at once does
    /// (Redis: `HMGET`); otherwise one by one.
    fn get_users(&mut self, ids: &[i64]) -> Result<Vec<Option<UserRecord>>, StoreError> {
        ids.iter().map(|&id| self.get_user(id)).collect()
    }
    /// Creates the user; `Ok(false)` if the id is taken (nothing is overwritten).
    /// `Ok(true)` too if the stored record is this very registration (same non-empty
    /// `reg_token`): a repeat of a registration whose answer was lost.
    fn create_user(&mut self, rec: &UserRecord) -> Result<bool, StoreError>;
    /// Replaces an existing user's record (used to upgrade a seed-era plaintext
    /// password to a hash).
    fn update_user(&mut self, rec: &UserRecord) -> Result<(), StoreError>;
    /// Stores `msg` for `msg.to` under `id`; `Ok(None)` if that user does not exist.
    /// If a message with this `id` from `msg.from` to `msg.to` was stored within
    /// [`DEDUPE_WINDOW`], nothing is stored and its sequence number is returned.
    /// With `history` above 0, a message stored now joins its pair's history in the
    /// same write (as [`Store::append_history`] with `keep` = `history`): a message
    /// resent after a lost answer is in the history once, whichever send stored it.
    fn push_offline(
        &mut self,
        msg: &OfflineMsg,
        id: &OfflineId,
        history: usize,
    ) -> Result<Option<u64>, StoreError>;
    /// Up to `max` of `user`'s offline messages, oldest first, removing none.
    fn fetch_offline(&mut self, user: i64, max: usize) -> Result<Vec<StoredMsg>, StoreError>;
    /// Removes `user`'s offline messages with `seq <= upto`.
    fn ack_offline(&mut self, user: i64, upto: u64) -> Result<(), StoreError>;
    /// Appends each entry, in order, to its conversation ([`Conv::of`]) under the next
    /// id of that conversation (the entry's own `id` is ignored), and keeps only the
    /// last `keep` entries of each conversation it touched. All or nothing; a repeat
    /// of the same call after a lost answer appends nothing twice.
    fn append_history(&mut self, entries: &[HistoryEntry], keep: usize) -> Result<(), StoreError>;
    /// The most entries one [`Store::append_history`] should take: a longer append is
    /// made in slices of this many, one after the other. Default: no limit.
    fn history_slice(&self) -> usize {
        usize::MAX
    }
    /// The newest `limit` entries of `conv` with an id below `before` (0: any id),
    /// oldest first, and whether older ones exist.
    fn read_history(
        &mut self,
        conv: Conv,
        before: u64,
        limit: usize,
    ) -> Result<(Vec<HistoryEntry>, bool), StoreError>;
    /// The oldest `limit` entries of `conv` with an id above `after`, oldest first,
    /// and whether newer ones exist. Default: not supported.
    fn read_history_after(
        &mut self,
        conv: Conv,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<HistoryEntry>, bool), StoreError> {
        let _ = (conv, after, limit);
        Err(StoreError::Unavailable(
            "reading history forwards is not supported by this store".into(),
        ))
    }

    // ----- operators' commands (`chat-server users`, see `admin`) -----

    /// Every user, by id. Default: not supported.
    fn list_users(&mut self) -> Result<Vec<UserRecord>, StoreError> {
        Err(StoreError::Unavailable(
            "listing users is not supported by this store".into(),
        ))
    }

    /// Deletes the user, their offline messages and the history of their private
    /// conversations (not their counters); `Ok(false)` if there was no such user.
    /// Default: not supported.
    fn remove_user(&mut self, id: i64) -> Result<bool, StoreError> {
        let _ = id;
        Err(StoreError::Unavailable(
            "removing users is not supported by this store".into(),
        ))
    }

    /// Applies `change` to the stored record of `id` and writes it back, atomically
    /// against other writers of that record (a login's password upgrade): a change is
    /// never lost to a concurrent rewrite. `Ok(None)` if there is no such user, else
    /// the record as written. `change` may be called more than once (a retry after a
    /// concurrent write). The default reads then writes, without that guarantee.
    fn modify_user(
        &mut self,
        id: i64,
        change: &mut dyn FnMut(&mut UserRecord),
    ) -> Result<Option<UserRecord>, StoreError> {
        let Some(mut rec) = self.get_user(id)? else {
            return Ok(None);
        };
        change(&mut rec);
        self.update_user(&rec)?;
        Ok(Some(rec))
    }

    /// Writes a consistent copy of the whole store to `to` (a new file), while it is
    /// in use. Default: not supported (Redis has its own: `BGSAVE`).
    fn backup(&mut self, to: &std::path::Path) -> Result<u64, StoreError> {
        let _ = to;
        Err(StoreError::Unavailable(
            "backup is not supported by this store".into(),
        ))
    }
}

/// Makes a store handle for each worker thread.
pub type StoreFactory =
    std::sync::Arc<dyn Fn() -> Result<Box<dyn Store>, StoreError> + Send + Sync>;
