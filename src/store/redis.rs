//! The Redis backend (`--redis redis://HOST:PORT[/DB]`), for operators who outgrow one
//! machine or already keep the seed's users in Redis.
//!
//! Keys (the first is the seed's own schema, so a Redis left by the seed's server is
//! read as is; PROTOCOL.md, "Storage layout", is the reference):
//! - `users`: a hash; field = user id, value = the user's JSON ([`UserRecord`]: the
//!   argon2id hash in `userPwd`). Seed records hold a plaintext `userPwd`, which is
//!   checked once and replaced by the hash, every other field kept. New users are
//!   created by [`CREATE_SCRIPT`]: never over another record, and a repeat of the same
//!   registration (same `regToken`) is recognised as done.
//! - `offline:<user id>`: a list of the user's offline messages, oldest first, each
//!   `{"seq":N,...}`. Pushed by [`PUSH_SCRIPT`]; read with `LRANGE`; removed by a
//!   script that pops from the head while `seq <= upto`, so a message is removed only
//!   after it was delivered, and a repeated acknowledgement removes nothing new.
//! - `offline_seq`: the counter (`INCR`) that numbers offline messages.
//! - `offline-id:<to>:<from>:<c|s>:<id>`: the seq of the message stored under that id
//!   (the sender's `msgId`, or one this server chose), expiring after
//!   [`DEDUPE_WINDOW`](super::DEDUPE_WINDOW).
//!
//! - `history:group`, `history:pm:<lower id>:<higher id>`: a conversation's history, a
//!   sorted set of entries' JSON scored by id, trimmed to the last `--history`;
//!   `history:group:seq`, `history:pm:<a>:<b>:seq`: the counters (`INCR`) that number
//!   them. Appended by [`HISTORY_SCRIPT`], a whole batch at once, and by
//!   [`PUSH_SCRIPT`] for a private message stored for later, with the message.
//!
//! Every write is idempotent, so a lost answer is resolved by asking again, never by
//! guessing. When a write's answer does not come (a timeout, a dropped connection),
//! the command may or may not have run: the connection is dropped (a late reply would
//! answer the wrong request), a fresh one is made and the same write is sent again,
//! which stores nothing twice and returns what is stored. If that cannot be done within
//! one more timeout, the answer is [`StoreError::Uncertain`], never "not stored".
//! Before a write on a connection idle for [`IDLE_CHECK`], a `PING` proves it still
//! alive, so that a Redis restarted meanwhile gives a certain "not done" rather than
//! an uncertain one.
//!
//! Every worker owns one connection, with connect, read and write timeouts (the sync
//! connection has none by default). A connection that was refused or dropped is
//! rebuilt with exponential backoff; while backing off, calls fail at once instead of
//! each waiting for a timeout, so clients get a clear error quickly and service resumes
//! by itself when Redis returns. A timeout alone starts no backoff: a slow Redis is
//! tried again at the next call.

use std::time::{Duration, Instant};

use redis::{Connection, RedisError, RedisResult};

use super::{
    Conv, DEDUPE_WINDOW, HistoryEntry, OfflineId, OfflineMsg, Store, StoreError, StoredMsg,
};
use crate::users::UserRecord;

const USERS: &str = "users";
const SEQ: &str = "offline_seq";

/// A connection idle this long is checked with a `PING` before a write is sent on it.
pub const IDLE_CHECK: Duration = Duration::from_secs(10);

fn offline_key(user: i64) -> String {
    format!("offline:{user}")
}

fn offline_id_key(msg: &OfflineMsg, id: &OfflineId) -> String {
    format!("offline-id:{}:{}:{}", msg.to, msg.from, id.tagged())
}

/// KEYS: users, offline_seq, offline:<to>, offline-id:<to>:<from>:<id>, the pair's
/// history (sorted set) and its counter.
/// ARGV: to, message JSON (an object), the id's lifetime in seconds, how many history
/// entries to keep (0: none appended), the history entry's JSON (an object without
/// `id`).
/// Returns the sequence number of the message stored under that id (now, or before),
/// or 0 if the user does not exist. A message stored now joins the history as in
/// [`HISTORY_SCRIPT`].
pub const PUSH_SCRIPT: &str = r#"
local done = redis.call('GET', KEYS[4])
if done then return tonumber(done) end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local seq = redis.call('INCR', KEYS[2])
redis.call('RPUSH', KEYS[3], '{"seq":' .. seq .. ',' .. string.sub(ARGV[2], 2))
redis.call('SET', KEYS[4], seq, 'EX', ARGV[3])
local keep = tonumber(ARGV[4])
if keep > 0 then
  local id = redis.call('INCR', KEYS[6])
  redis.call('ZADD', KEYS[5], id, '{"id":' .. id .. ',' .. string.sub(ARGV[5], 2))
  redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -keep - 1)
end
return seq
"#;

/// KEYS: users. ARGV: user id, the record's JSON, `"regToken":"<token>"` (or "").
/// Creates the record if there is none: 1. If there is one: 1 if it carries that token
/// (this registration, repeated), else 0 (taken).
pub const CREATE_SCRIPT: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
if ARGV[3] ~= '' and string.find(cur, ARGV[3], 1, true) then return 1 end
return 0
"#;

/// KEYS: offline:<user>. ARGV: upto. Pops from the head while seq <= upto.
const ACK_SCRIPT: &str = r#"
local upto = tonumber(ARGV[1])
local n = 0
while true do
  local head = redis.call('LINDEX', KEYS[1], 0)
  if not head then break end
  local seq = tonumber(string.match(head, '^{"seq":(%d+),'))
  if seq == nil or seq > upto then break end
  redis.call('LPOP', KEYS[1])
  n = n + 1
end
return n
"#;

/// A conversation's history key (a sorted set); its counter is this plus `:seq`.
fn history_key(conv: Conv) -> String {
    match conv {
        Conv::Group => "history:group".to_string(),
        Conv::Pair(a, b) => format!("history:pm:{a}:{b}"),
    }
}

/// How long a store handle's last history batch number is remembered after its last
/// batch (a handle of a stopped server leaves one key, gone after this).
const HISTORY_WRITER_TTL_SECS: u64 = 3600;

/// KEYS: `history-writer:<handle>`, then for each entry its conversation's sorted set
/// and counter. ARGV: how many entries to keep per conversation, this batch's number
/// (a handle's batches are numbered 1, 2, ... and sent one after the other), the
/// writer key's lifetime in seconds, then each entry's JSON (an object without `id`).
/// Appends nothing if the handle's last batch is this one (sent again after its
/// answer was lost); else records it, numbers each entry with its conversation's
/// `INCR`, adds it scored by that id and trims the conversation to its last entries.
/// Returns how many it appended.
pub const HISTORY_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
local keep = tonumber(ARGV[1])
for i = 4, #ARGV do
  local z = KEYS[2 * (i - 3)]
  local id = redis.call('INCR', KEYS[2 * (i - 3) + 1])
  redis.call('ZADD', z, id, '{"id":' .. id .. ',' .. string.sub(ARGV[i], 2))
  redis.call('ZREMRANGEBYRANK', z, 0, -keep - 1)
end
return #ARGV - 3
"#;

/// KEYS: users. ARGV: user id, the record as read, the record to write. Writes it
/// only if the stored record is still the one read: 1; 0 if it changed meanwhile (read
/// again and retry); -1 if it is gone.
const SWAP_SCRIPT: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return -1 end
if cur ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"#;

/// KEYS: users, offline:<user>. ARGV: user id. Removes the user and their offline
/// messages together; returns whether the user existed.
const REMOVE_SCRIPT: &str = r#"
local n = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return n
"#;

/// Whether `key` is the history of a private conversation that `id` is part of.
fn is_private_history_of(key: &str, id: i64) -> bool {
    let Some(pair) = key.strip_prefix("history:pm:") else {
        return false;
    };
    let mut parts = pair.split(':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), None) => {
            a.parse::<i64>().ok() == Some(id) || b.parse::<i64>().ok() == Some(id)
        }
        _ => false,
    }
}

/// How many times a record changed by someone else meanwhile is read again.
const SWAP_TRIES: usize = 16;

/// Whether a call changes anything: a write whose answer is lost is asked again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Read,
    /// Idempotent: sending it again does nothing twice.
    Write,
}

/// Timeouts and backoff of one Redis connection.
#[derive(Debug, Clone, Copy)]
pub struct RedisTimeouts {
    pub connect: Duration,
    pub io: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for RedisTimeouts {
    fn default() -> Self {
        RedisTimeouts {
            connect: Duration::from_secs(2),
            io: Duration::from_secs(3),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// One worker's handle onto Redis.
pub struct RedisStore {
    client: redis::Client,
    url: String,
    conn: Option<Connection>,
    t: RedisTimeouts,
    backoff: Duration,
    retry_at: Option<Instant>,
    /// When the connection last answered (or was made).
    last_used: Instant,
    /// This handle's history batches: its key (random), and the last batch's number.
    history_writer: (String, u64),
}

impl RedisStore {
    /// Parses the URL; does not connect (the first call does).
    pub fn new(url: &str, t: RedisTimeouts) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(|e| {
            StoreError::Unavailable(format!(
                "bad Redis URL {:?}: {}",
                crate::redact::url(url),
                crate::redact::text(&e.to_string())
            ))
        })?;
        Ok(RedisStore {
            client,
            url: crate::redact::url(url),
            conn: None,
            t,
            backoff: t.backoff_min,
            retry_at: None,
            last_used: Instant::now(),
            history_writer: (format!("history-writer:{}", super::random_token()), 0),
        })
    }

    /// Connects now and sends a PING (used at startup, to say early if Redis is down).
    pub fn ping(&mut self) -> Result<(), StoreError> {
        self.call(Call::Read, |c| {
            redis::cmd("PING").query::<String>(c).map(|_| ())
        })
    }

    /// Makes a new connection. A failure starts (or extends) the backoff, except a
    /// timeout when `backoff_on_timeout` is false: a Redis that answered a moment ago
    /// is slow, not gone.
    fn connect(&mut self, backoff_on_timeout: bool) -> Result<(), StoreError> {
        if let Some(at) = self.retry_at
            && Instant::now() < at
        {
            return Err(StoreError::Unavailable(format!(
                "Redis at {} is unavailable (reconnecting)",
                self.url
            )));
        }
        let attempt = self
            .client
            .get_connection_with_timeout(self.t.connect)
            .and_then(|c| {
                c.set_read_timeout(Some(self.t.io))?;
                c.set_write_timeout(Some(self.t.io))?;
                Ok(c)
            });
        match attempt {
            Ok(c) => {
                if self.retry_at.is_some() {
                    log::info!("Redis at {} is back", self.url);
                }
                self.conn = Some(c);
                self.last_used = Instant::now();
                self.retry_at = None;
                self.backoff = self.t.backoff_min;
                Ok(())
            }
            Err(e) => {
                if backoff_on_timeout || !e.is_timeout() {
                    self.fail_connect();
                }
                Err(StoreError::Unavailable(format!(
                    "Redis at {} is unreachable: {e}",
                    self.url
                )))
            }
        }
    }

    fn fail_connect(&mut self) {
        if self.retry_at.is_none() {
            log::warn!("Redis at {} unreachable; retrying with backoff", self.url);
        }
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(self.t.backoff_max);
    }

    /// After `e` on a live connection: drop it (a late reply on it would answer the
    /// wrong request) and back off unless it was only slow.
    fn drop_conn(&mut self, e: &RedisError) {
        if !is_server_reply(e) {
            self.conn = None;
            if !e.is_timeout() {
                self.fail_connect();
            }
        }
    }

    /// The keys of the private conversations' histories that involve `id`: a `SCAN`
    /// of them all (an operator's command, never on a client's path).
    fn private_histories_of(&mut self, id: i64) -> Result<Vec<String>, StoreError> {
        let mut found = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self.call(Call::Read, |c| {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg("history:pm:*")
                    .arg("COUNT")
                    .arg(1000)
                    .query(c)
            })?;
            found.extend(keys.into_iter().filter(|k| is_private_history_of(k, id)));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// Runs `f` on a live connection.
    ///
    /// Until `f` is sent, every failure is certain: [`StoreError::Unavailable`]. A
    /// read whose answer is lost is answered `Unavailable` too (it changed nothing),
    /// after one fresh try if its connection had simply gone stale (Redis restarted).
    /// A write whose answer is lost is resolved by [`resolve`](Self::resolve).
    fn call<T>(
        &mut self,
        kind: Call,
        f: impl Fn(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut fresh = self.conn.is_none();
        if fresh {
            self.connect(true)?;
        } else if kind == Call::Write && self.last_used.elapsed() >= IDLE_CHECK {
            // Nothing of the write is sent yet: a dead connection found now is certain.
            let conn = self.conn.as_mut().expect("connected");
            if let Err(e) = redis::cmd("PING").query::<String>(conn) {
                log::debug!("Redis at {}: idle connection is gone ({e})", self.url);
                self.conn = None;
                self.connect(true)?;
                fresh = true;
            }
        }
        let conn = self.conn.as_mut().expect("connected");
        let e = match f(conn) {
            Ok(v) => {
                self.last_used = Instant::now();
                return Ok(v);
            }
            Err(e) if is_server_reply(&e) => {
                return Err(StoreError::Unavailable(format!("Redis error: {e}")));
            }
            Err(e) => e,
        };
        self.conn = None;
        match kind {
            Call::Write => self.resolve(f, e),
            Call::Read if !fresh && e.is_connection_dropped() => {
                self.connect(true)?;
                let conn = self.conn.as_mut().expect("connected");
                match f(conn) {
                    Ok(v) => {
                        self.last_used = Instant::now();
                        Ok(v)
                    }
                    Err(e2) => {
                        self.drop_conn(&e2);
                        Err(StoreError::Unavailable(format!("Redis error: {e2}")))
                    }
                }
            }
            Call::Read => {
                if !e.is_timeout() {
                    self.fail_connect();
                }
                Err(StoreError::Unavailable(format!("Redis error: {e}")))
            }
        }
    }

    /// The answer to the idempotent write `f` was lost (`first`): it may or may not
    /// have run. Sends it again on a fresh connection, within one more timeout; its
    /// answer is the outcome of both. If that fails too, the outcome is uncertain.
    fn resolve<T>(
        &mut self,
        f: impl Fn(&mut Connection) -> RedisResult<T>,
        first: RedisError,
    ) -> Result<T, StoreError> {
        log::warn!(
            "Redis at {}: a write's answer was lost ({first}); sending it again",
            self.url
        );
        if let Err(e) = self.connect(false) {
            return Err(StoreError::Uncertain(format!(
                "Redis at {}: {first}; then: {e}",
                self.url
            )));
        }
        let conn = self.conn.as_mut().expect("connected");
        match f(conn) {
            Ok(v) => {
                self.last_used = Instant::now();
                log::info!("Redis at {}: the write's outcome is known", self.url);
                Ok(v)
            }
            Err(e2) => {
                self.drop_conn(&e2);
                Err(StoreError::Uncertain(format!(
                    "Redis at {}: {first}; sent again: {e2}",
                    self.url
                )))
            }
        }
    }
}

/// An error Redis itself answered with: the connection is fine.
fn is_server_reply(e: &RedisError) -> bool {
    !(e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal())
        && e.kind() != redis::ErrorKind::Parse
}

impl Store for RedisStore {
    /// A script holds Redis for every node while it runs: 512 entries take about a
    /// millisecond, 4,096 some ten.
    fn history_slice(&self) -> usize {
        512
    }

    fn get_user(&mut self, id: i64) -> Result<Option<UserRecord>, StoreError> {
        let raw: Option<String> = self.call(Call::Read, |c| {
            redis::cmd("HGET").arg(USERS).arg(id).query(c)
        })?;
        match raw {
            Some(s) => UserRecord::from_json(&s)
                .map(Some)
                .map_err(StoreError::from),
            None => Ok(None),
        }
    }

    fn get_users(&mut self, ids: &[i64]) -> Result<Vec<Option<UserRecord>>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        // A thousand per command: one round trip each, no reply of unbounded size.
        for chunk in ids.chunks(1000) {
            let raw: Vec<Option<String>> = self.call(Call::Read, |c| {
                redis::cmd("HMGET").arg(USERS).arg(chunk).query(c)
            })?;
            for (id, r) in chunk.iter().zip(raw) {
                // One unreadable record must not fail the whole read: it counts as
                // missing, and says so (its user's login fails the same way).
                out.push(r.and_then(|s| match UserRecord::from_json(&s) {
                    Ok(rec) => Some(rec),
                    Err(e) => {
                        log::warn!("user {id}: unreadable record in Redis: {e}");
                        None
                    }
                }));
            }
        }
        Ok(out)
    }

    fn create_user(&mut self, rec: &UserRecord) -> Result<bool, StoreError> {
        let json = rec.to_json();
        let token = if rec.reg_token.is_empty() {
            String::new()
        } else {
            // Exactly as it appears in the record's JSON (quotes inside a JSON string
            // are escaped, so no other field's value can contain it).
            format!(
                "\"regToken\":{}",
                serde_json::Value::from(rec.reg_token.as_str())
            )
        };
        debug_assert!(json.contains(&token));
        let n: i64 = self.call(Call::Write, |c| {
            redis::cmd("EVAL")
                .arg(CREATE_SCRIPT)
                .arg(1)
                .arg(USERS)
                .arg(rec.id)
                .arg(&json)
                .arg(&token)
                .query(c)
        })?;
        Ok(n == 1)
    }

    fn update_user(&mut self, rec: &UserRecord) -> Result<(), StoreError> {
        let json = rec.to_json();
        self.call(Call::Write, |c| {
            redis::cmd("HSET")
                .arg(USERS)
                .arg(rec.id)
                .arg(&json)
                .query::<i64>(c)
        })?;
        Ok(())
    }

    fn push_offline(
        &mut self,
        msg: &OfflineMsg,
        id: &OfflineId,
        history: usize,
    ) -> Result<Option<u64>, StoreError> {
        let json = serde_json::to_string(msg).map_err(|e| StoreError::new("encode", e))?;
        let entry = serde_json::to_string(&msg.history_entry())
            .map_err(|e| StoreError::new("encode", e))?;
        let key = offline_key(msg.to);
        let id_key = offline_id_key(msg, id);
        let history_key = history_key(Conv::pair(msg.from, msg.to));
        let history_seq = format!("{history_key}:seq");
        let seq: u64 = self.call(Call::Write, |c| {
            redis::cmd("EVAL")
                .arg(PUSH_SCRIPT)
                .arg(6)
                .arg(USERS)
                .arg(SEQ)
                .arg(&key)
                .arg(&id_key)
                .arg(&history_key)
                .arg(&history_seq)
                .arg(msg.to)
                .arg(&json)
                .arg(DEDUPE_WINDOW.as_secs())
                .arg(history)
                .arg(&entry)
                .query(c)
        })?;
        Ok((seq > 0).then_some(seq))
    }

    fn fetch_offline(&mut self, user: i64, max: usize) -> Result<Vec<StoredMsg>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let key = offline_key(user);
        let raw: Vec<String> = self.call(Call::Read, |c| {
            redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(max as i64 - 1)
                .query(c)
        })?;
        raw.iter()
            .map(|s| serde_json::from_str(s).map_err(|e| StoreError::new("bad stored message", e)))
            .collect()
    }

    fn ack_offline(&mut self, user: i64, upto: u64) -> Result<(), StoreError> {
        let key = offline_key(user);
        self.call(Call::Write, |c| {
            redis::cmd("EVAL")
                .arg(ACK_SCRIPT)
                .arg(1)
                .arg(&key)
                .arg(upto)
                .query::<i64>(c)
        })?;
        Ok(())
    }

    fn append_history(&mut self, entries: &[HistoryEntry], keep: usize) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.history_writer.1 += 1;
        let batch = self.history_writer.1;
        let mut keys = Vec::with_capacity(1 + 2 * entries.len());
        keys.push(self.history_writer.0.clone());
        let mut jsons = Vec::with_capacity(entries.len());
        for e in entries {
            let key = history_key(Conv::of(e));
            let seq = format!("{key}:seq");
            keys.push(key);
            keys.push(seq);
            let json = serde_json::to_string(&HistoryEntry { id: 0, ..e.clone() })
                .map_err(|e| StoreError::new("encode", e))?;
            jsons.push(json);
        }
        // The same number for every send of this batch: a resend after a lost answer
        // is recognised and appends nothing twice.
        self.call(Call::Write, |c| {
            redis::cmd("EVAL")
                .arg(HISTORY_SCRIPT)
                .arg(keys.len())
                .arg(&keys)
                .arg(keep)
                .arg(batch)
                .arg(HISTORY_WRITER_TTL_SECS)
                .arg(&jsons)
                .query::<i64>(c)
        })?;
        Ok(())
    }

    fn read_history(
        &mut self,
        conv: Conv,
        before: u64,
        limit: usize,
    ) -> Result<(Vec<HistoryEntry>, bool), StoreError> {
        let key = history_key(conv);
        let max = if before == 0 {
            "+inf".to_string()
        } else {
            format!("({before}")
        };
        let raw: Vec<String> = self.call(Call::Read, |c| {
            redis::cmd("ZREVRANGEBYSCORE")
                .arg(&key)
                .arg(&max)
                .arg("-inf")
                .arg("LIMIT")
                .arg(0)
                .arg(limit.saturating_add(1))
                .query(c)
        })?;
        let more = raw.len() > limit;
        let mut out = raw
            .iter()
            .take(limit)
            .map(|s| {
                serde_json::from_str(s).map_err(|e| StoreError::new("bad stored history entry", e))
            })
            .collect::<Result<Vec<HistoryEntry>, StoreError>>()?;
        out.reverse();
        Ok((out, more))
    }

    fn read_history_after(
        &mut self,
        conv: Conv,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<HistoryEntry>, bool), StoreError> {
        let key = history_key(conv);
        let raw: Vec<String> = self.call(Call::Read, |c| {
            redis::cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg(format!("({after}"))
                .arg("+inf")
                .arg("LIMIT")
                .arg(0)
                .arg(limit.saturating_add(1))
                .query(c)
        })?;
        let more = raw.len() > limit;
        raw.iter()
            .take(limit)
            .map(|s| {
                serde_json::from_str(s).map_err(|e| StoreError::new("bad stored history entry", e))
            })
            .collect::<Result<Vec<HistoryEntry>, StoreError>>()
            .map(|out| (out, more))
    }

    fn list_users(&mut self) -> Result<Vec<UserRecord>, StoreError> {
        // HSCAN, not HGETALL: a large hash is read in steps that never hold Redis up.
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, pairs): (u64, Vec<(String, String)>) = self.call(Call::Read, |c| {
                redis::cmd("HSCAN")
                    .arg(USERS)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(1000)
                    .query(c)
            })?;
            for (field, json) in pairs {
                let rec = UserRecord::from_json(&json)
                    .map_err(|e| StoreError::Unavailable(format!("user {field}: {e}")))?;
                out.push(rec);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        // HSCAN may return a field twice.
        out.sort_by_key(|u| u.id);
        out.dedup_by_key(|u| u.id);
        Ok(out)
    }

    fn remove_user(&mut self, id: i64) -> Result<bool, StoreError> {
        // Their private conversations first, so that a removal that fails here can
        // be asked again (the counters stay: a conversation of whoever registers the
        // id next is numbered after them).
        for key in self.private_histories_of(id)? {
            self.call(Call::Write, |c| redis::cmd("DEL").arg(&key).query::<i64>(c))?;
        }
        let key = offline_key(id);
        let n: i64 = self.call(Call::Write, |c| {
            redis::cmd("EVAL")
                .arg(REMOVE_SCRIPT)
                .arg(2)
                .arg(USERS)
                .arg(&key)
                .arg(id)
                .query(c)
        })?;
        Ok(n > 0)
    }

    fn modify_user(
        &mut self,
        id: i64,
        change: &mut dyn FnMut(&mut UserRecord),
    ) -> Result<Option<UserRecord>, StoreError> {
        for _ in 0..SWAP_TRIES {
            let raw: Option<String> = self.call(Call::Read, |c| {
                redis::cmd("HGET").arg(USERS).arg(id).query(c)
            })?;
            let Some(raw) = raw else {
                return Ok(None);
            };
            let mut rec = UserRecord::from_json(&raw).map_err(StoreError::from)?;
            change(&mut rec);
            rec.stale_shape = false;
            let json = rec.to_json();
            let n: i64 = self.call(Call::Write, |c| {
                redis::cmd("EVAL")
                    .arg(SWAP_SCRIPT)
                    .arg(1)
                    .arg(USERS)
                    .arg(id)
                    .arg(&raw)
                    .arg(&json)
                    .query(c)
            })?;
            match n {
                1 => return Ok(Some(rec)),
                -1 => return Ok(None),
                // Rewritten by someone else meanwhile (or by this very write, whose
                // first answer was lost): read it again.
                _ => continue,
            }
        }
        Err(StoreError::Unavailable(format!(
            "user {id}: the record kept changing; try again"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_kept_out_of_logged_urls_and_errors() {
        let s = RedisStore::new("redis://:hunter2@host:6380/1", RedisTimeouts::default());
        assert_eq!(s.unwrap().url, "redis://:***@host:6380/1");
        let Err(e) = RedisStore::new("redis://:hunter2@host:port/1", RedisTimeouts::default())
        else {
            panic!("a bad port is refused");
        };
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn bad_urls_are_refused_up_front() {
        assert!(RedisStore::new("not a url", RedisTimeouts::default()).is_err());
    }

    #[test]
    fn an_unreachable_redis_fails_fast_while_backing_off() {
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = RedisStore::new(
            &format!("redis://127.0.0.1:{port}"),
            RedisTimeouts {
                backoff_min: Duration::from_secs(60),
                ..RedisTimeouts::default()
            },
        )
        .unwrap();
        let e = s.get_user(1).unwrap_err();
        assert!(
            matches!(&e, StoreError::Unavailable(m) if m.contains("unreachable")),
            "{e}"
        );
        let e = s.get_user(1).unwrap_err();
        assert!(
            matches!(&e, StoreError::Unavailable(m) if m.contains("reconnecting")),
            "{e}"
        );
        // A write that never left is certain too: not done.
        let rec = UserRecord {
            id: 1,
            ..UserRecord::default()
        };
        assert!(matches!(
            s.create_user(&rec),
            Err(StoreError::Unavailable(_))
        ));
    }
}
