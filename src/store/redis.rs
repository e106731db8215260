//! The Redis backend (`--redis redis://HOST:PORT[/DB]`), for operators who outgrow one
//! machine or already keep the seed's users in Redis.
//!
//! Keys (the first is the seed's own schema, so a Redis left by the seed's server is
//! read as is):
//! - `users`: a hash; field = user id, value = the user's JSON. Seed records hold a
//!   plaintext `userPwd`, which is checked once and replaced by `pwdHash` (argon2id).
//!   New users are created with `HSETNX`, so two nodes registering one id at once
//!   cannot overwrite each other.
//! - `offline:<user id>`: a list of the user's offline messages, oldest first, each
//!   `{"seq":N,...}`. Pushed (after checking the user exists, atomically, in a Lua
//!   script) with `RPUSH`; read with `LRANGE`; removed by a script that pops from the
//!   head while `seq <= upto`, so a message is removed only after it was delivered,
//!   and a repeated acknowledgement removes nothing new.
//! - `offline_seq`: the counter (`INCR`) that numbers offline messages.
//!
//! Every worker owns one connection, with connect, read and write timeouts (the sync
//! connection has none by default). A failed connection is dropped and rebuilt with
//! exponential backoff; while backing off, calls fail at once instead of each waiting
//! for a timeout, so clients get a clear error quickly and service resumes by itself
//! when Redis returns.

use std::time::{Duration, Instant};

use redis::{Connection, RedisError, RedisResult};

use super::{OfflineMsg, Store, StoreError, StoredMsg};
use crate::users::UserRecord;

const USERS: &str = "users";
const SEQ: &str = "offline_seq";

fn offline_key(user: i64) -> String {
    format!("offline:{user}")
}

/// KEYS: users, offline_seq, offline:<to>. ARGV: to, message JSON (an object).
/// Returns the new sequence number, or 0 if the user does not exist.
const PUSH_SCRIPT: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local seq = redis.call('INCR', KEYS[2])
redis.call('RPUSH', KEYS[3], '{"seq":' .. seq .. ',' .. string.sub(ARGV[2], 2))
return seq
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
}

impl RedisStore {
    /// Parses the URL; does not connect (the first call does).
    pub fn new(url: &str, t: RedisTimeouts) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError(format!("bad Redis URL {url:?}: {e}")))?;
        Ok(RedisStore {
            client,
            url: redact(url),
            conn: None,
            t,
            backoff: t.backoff_min,
            retry_at: None,
        })
    }

    /// Connects now and sends a PING (used at startup, to say early if Redis is down).
    pub fn ping(&mut self) -> Result<(), StoreError> {
        self.with(|c| redis::cmd("PING").query::<String>(c).map(|_| ()))
    }

    fn connect(&mut self) -> Result<(), StoreError> {
        if let Some(at) = self.retry_at
            && Instant::now() < at
        {
            return Err(StoreError(format!(
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
                self.retry_at = None;
                self.backoff = self.t.backoff_min;
                Ok(())
            }
            Err(e) => {
                self.fail_connect();
                Err(StoreError(format!(
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

    /// Runs `f` on a live connection. A connection that fails is dropped (a late reply
    /// on a timed-out connection would answer the wrong request); if it had been idle
    /// and simply went stale (Redis restarted), one fresh connection is tried at once.
    fn with<T>(&mut self, f: impl Fn(&mut Connection) -> RedisResult<T>) -> Result<T, StoreError> {
        let fresh = self.conn.is_none();
        if fresh {
            self.connect()?;
        }
        let conn = self.conn.as_mut().expect("connected");
        match f(conn) {
            Ok(v) => Ok(v),
            Err(e) if is_server_reply(&e) => Err(StoreError(format!("Redis error: {e}"))),
            Err(e) => {
                self.conn = None;
                if !fresh && (e.is_connection_dropped() || e.is_connection_refusal()) {
                    self.connect()?;
                    let conn = self.conn.as_mut().expect("connected");
                    return f(conn).map_err(|e2| {
                        if !is_server_reply(&e2) {
                            self.conn = None;
                            self.fail_connect();
                        }
                        StoreError(format!("Redis error: {e2}"))
                    });
                }
                if !e.is_timeout() {
                    self.fail_connect();
                }
                Err(StoreError(format!("Redis error: {e}")))
            }
        }
    }
}

/// An error Redis itself answered with: the connection is fine.
fn is_server_reply(e: &RedisError) -> bool {
    !(e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal())
        && e.kind() != redis::ErrorKind::Parse
}

/// The URL without a password, for the log.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl Store for RedisStore {
    fn get_user(&mut self, id: i64) -> Result<Option<UserRecord>, StoreError> {
        let raw: Option<String> = self.with(|c| redis::cmd("HGET").arg(USERS).arg(id).query(c))?;
        match raw {
            Some(s) => UserRecord::from_json(&s).map(Some).map_err(StoreError),
            None => Ok(None),
        }
    }

    fn create_user(&mut self, rec: &UserRecord) -> Result<bool, StoreError> {
        let json = rec.to_json();
        let n: i64 = self.with(|c| {
            redis::cmd("HSETNX")
                .arg(USERS)
                .arg(rec.id)
                .arg(&json)
                .query(c)
        })?;
        Ok(n == 1)
    }

    fn update_user(&mut self, rec: &UserRecord) -> Result<(), StoreError> {
        let json = rec.to_json();
        self.with(|c| {
            redis::cmd("HSET")
                .arg(USERS)
                .arg(rec.id)
                .arg(&json)
                .query::<i64>(c)
        })?;
        Ok(())
    }

    fn push_offline(&mut self, msg: &OfflineMsg) -> Result<Option<u64>, StoreError> {
        let json = serde_json::to_string(msg).map_err(|e| StoreError::new("encode", e))?;
        let key = offline_key(msg.to);
        let seq: u64 = self.with(|c| {
            redis::cmd("EVAL")
                .arg(PUSH_SCRIPT)
                .arg(3)
                .arg(USERS)
                .arg(SEQ)
                .arg(&key)
                .arg(msg.to)
                .arg(&json)
                .query(c)
        })?;
        Ok((seq > 0).then_some(seq))
    }

    fn fetch_offline(&mut self, user: i64, max: usize) -> Result<Vec<StoredMsg>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let key = offline_key(user);
        let raw: Vec<String> = self.with(|c| {
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
        self.with(|c| {
            redis::cmd("EVAL")
                .arg(ACK_SCRIPT)
                .arg(1)
                .arg(&key)
                .arg(upto)
                .query::<i64>(c)
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_kept_out_of_logged_urls() {
        assert_eq!(
            redact("redis://:hunter2@host:6380/1"),
            "redis://***@host:6380/1"
        );
        assert_eq!(redact("redis://host:6380"), "redis://host:6380");
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
        assert!(s.get_user(1).unwrap_err().0.contains("unreachable"));
        let e = s.get_user(1).unwrap_err();
        assert!(e.0.contains("reconnecting"), "{e}");
    }
}
