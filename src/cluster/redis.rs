//! The cluster's link to Redis: two threads beside the event loop, which never waits
//! on them.
//!
//! - The publisher owns one connection. It takes this node's [`Event`]s from a bounded
//!   queue, keeps this node's presence hash up to date and publishes each event once,
//!   pipelining whatever has queued up (one round trip for a burst). Every second it
//!   beats: a script stamps this node in the `nodes` sorted set with Redis's own clock,
//!   extends the life of its presence hash by one node timeout (a node that stops
//!   beating leaves no presence behind, even if no other node is left to clear it),
//!   removes nodes silent for longer than the node timeout (and their presence), and
//!   returns the live ones ([`Input::LiveNodes`]). A node that finds itself missing
//!   from `nodes` (taken for dead while it was slow, or Redis lost its data) resyncs.
//! - The subscriber owns another, subscribed to [`CHANNEL`]; every event it hears goes
//!   to the hub. Each time it has (re)subscribed (and each time the publisher has
//!   reconnected), the publisher rewrites this node's presence, announces its users
//!   again (for nodes that read theirs before this rewrite) and reads everyone's
//!   ([`Input::Snapshot`]): what happened before is in the snapshot, what happens
//!   after arrives as events. What it writes is this node's live sessions only
//!   ([`LocalPresence`], kept from the hub's events as they are queued, so that even
//!   dropped ones count): a session that ended, whether logged out or replaced by a
//!   login on another node, is never announced again.
//!
//! Bounds: the hub's events wait in a queue of [`QUEUE`] (over it they are dropped and
//! counted in the log: group messages for other nodes lost, presence rewritten whole as
//! soon as the queue has room); inputs for the hub wait in a queue of the same size, and while the loop does
//! not keep up the subscriber stops reading, so Redis buffers for it up to its pub/sub
//! output limit and then drops it; it reconnects and resynchronises. Another node's
//! flood never grows this node's memory without limit.
//!
//! Keys (see PROTOCOL.md): `nodes` (sorted set: node id → last heartbeat, Redis ms),
//! `presence:<node>` (hash: user id → `{"name":..,"session":..}`, expiring one node
//! timeout after the node's last beat), channel
//! `chat:events`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cluster::{CHANNEL, Event, Input, LocalPresence, PresenceEntry};

/// Events waiting to be published, and inputs waiting for the hub, at most.
pub const QUEUE: usize = 65_536;
/// Events published in one pipeline at most.
const BATCH: usize = 512;
/// How often the node beats and checks the others.
const HEARTBEAT: Duration = Duration::from_secs(1);
const NODES: &str = "nodes";

/// Stamps `ARGV[1]` in the sorted set `KEYS[1]` with Redis's clock, keeps its
/// presence hash for `ARGV[2]` ms more (so that the hash of a node that stops beating
/// goes by itself, whoever is left to notice), forgets nodes silent for `ARGV[2]` ms
/// and their presence, and returns whether `ARGV[1]` was missing from the set (taken
/// for dead, or Redis lost its data: its presence must be written again) and the live
/// nodes.
const BEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', 'presence:' .. ARGV[1], ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
for _, n in ipairs(dead) do
  redis.call('ZREM', KEYS[1], n)
  redis.call('DEL', 'presence:' .. n)
end
return {added, redis.call('ZRANGE', KEYS[1], 0, -1)}
"#;

fn presence_key(node: &str) -> String {
    format!("presence:{node}")
}

/// Who is online on every node, as the nodes' presence hashes say: (node, user id,
/// name), by user id (for the operators' `users online --redis`).
pub fn read_online(conn: &mut redis::Connection) -> redis::RedisResult<Vec<(String, i64, String)>> {
    let nodes: Vec<String> = redis::cmd("ZRANGE").arg(NODES).arg(0).arg(-1).query(conn)?;
    let mut out = Vec::new();
    for node in nodes {
        let users: HashMap<i64, String> =
            redis::cmd("HGETALL").arg(presence_key(&node)).query(conn)?;
        for (user, v) in users {
            if let Ok(p) = serde_json::from_str::<Present>(&v) {
                out.push((node.clone(), user, p.name));
            }
        }
    }
    out.sort_by_key(|e| e.1);
    Ok(out)
}

/// A user's value in a presence hash.
#[derive(Serialize, Deserialize)]
struct Present {
    name: String,
    session: u64,
}

/// Forgets `node`'s presence (and, when it leaves for good, its heartbeat) and tells
/// the other nodes so ([`Event::Reset`]).
fn reset(node: &str, leaving: bool) -> redis::Pipeline {
    let mut p = redis::pipe();
    p.cmd("DEL").arg(presence_key(node)).ignore();
    if leaving {
        p.cmd("ZREM").arg(NODES).arg(node).ignore();
    }
    let ev = Event::Reset {
        node: node.to_string(),
    };
    p.cmd("PUBLISH").arg(CHANNEL).arg(ev.to_json()).ignore();
    p
}

/// Where the hub's inputs go (the reactor's channel, which wakes the loop).
pub type InputSink = Arc<dyn Fn(Input) + Send + Sync>;

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Printed with its password masked.
    pub url: crate::redact::SecretUrl,
    pub node: String,
    /// A node silent this long is taken for dead.
    pub node_timeout: Duration,
    /// Connect, read and write timeout of each Redis call.
    pub io_timeout: Duration,
}

enum Cmd {
    Publish(Event),
    /// The subscriber is (re)subscribed: rewrite this node's presence and snapshot.
    Resync,
}

/// The running link.
pub struct ClusterLink {
    tx: Option<SyncSender<Cmd>>,
    /// This node's users, kept as the hub publishes (dropped events included).
    local: Shared,
    dropped: Arc<AtomicU64>,
    reported: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl ClusterLink {
    /// Starts the publisher and the subscriber. They connect (and reconnect) on their
    /// own; until then the hub hears `Link(false)`.
    ///
    /// Before that, if Redis answers, it checks that this node may join (see
    /// [`check_start`]): an error says why not, in a sentence without the password.
    pub fn start(cfg: ClusterConfig, sink: InputSink) -> std::io::Result<ClusterLink> {
        let client = redis::Client::open(cfg.url.expose())
            .map_err(|e| std::io::Error::other(crate::redact::text(&e.to_string())))?;
        check_start(&client, &cfg).map_err(std::io::Error::other)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let local = Shared::default();
        let dropped = Arc::new(AtomicU64::new(0));
        let publisher = {
            let (client, cfg, sink, stop) =
                (client.clone(), cfg.clone(), sink.clone(), stop.clone());
            let (local, dropped) = (local.clone(), dropped.clone());
            std::thread::Builder::new()
                .name("chat-cluster-pub".into())
                .spawn(move || Publisher::new(client, cfg, sink, stop, local, dropped).run(rx))?
        };
        let subscriber = {
            let (tx, stop) = (tx.clone(), stop.clone());
            std::thread::Builder::new()
                .name("chat-cluster-sub".into())
                .spawn(move || subscribe(client, cfg, sink, tx, stop))?
        };
        Ok(ClusterLink {
            tx: Some(tx),
            local,
            dropped,
            reported: 0,
            stop,
            threads: vec![publisher, subscriber],
        })
    }

    /// Queues an event for publishing; dropped (and counted) if the queue is full.
    /// This node's presence follows it all the same: a dropped event makes the
    /// publisher rewrite the presence hash whole as soon as it can.
    pub fn publish(&self, ev: Event) {
        if matches!(ev, Event::Online { .. } | Event::Offline { .. }) {
            self.local.lock().track(&ev);
        }
        if let Some(tx) = &self.tx
            && let Err(TrySendError::Full(_)) = tx.try_send(Cmd::Publish(ev))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Logs how many events were dropped since the last call, if any.
    pub fn report(&mut self) {
        let d = self.dropped.load(Ordering::Relaxed);
        if d > self.reported {
            log::warn!(
                "cluster: {} events not published (queue of {QUEUE} full: Redis too slow)",
                d - self.reported
            );
            self.reported = d;
        }
    }

    /// Stops the threads (the subscriber within one read timeout).
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// This node's users, written by the hub's thread as it publishes and read by the
/// publisher.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<LocalPresence>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, LocalPresence> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Publisher {
    client: redis::Client,
    cfg: ClusterConfig,
    sink: InputSink,
    stop: Arc<std::sync::atomic::AtomicBool>,
    conn: Option<redis::Connection>,
    /// This node's users (see [`ClusterLink::publish`]).
    local: Shared,
    /// Events dropped so far, and how many of them the presence hash has caught up
    /// with.
    dropped: Arc<AtomicU64>,
    dropped_seen: u64,
    /// Whether the hub was last told the link is up.
    up: bool,
    /// Whether this node has announced its (re)start.
    reset_sent: bool,
    /// A new connection: this node's presence must be rewritten and everyone's read.
    need_resync: bool,
    retry_at: Option<Instant>,
}

impl Publisher {
    fn new(
        client: redis::Client,
        cfg: ClusterConfig,
        sink: InputSink,
        stop: Arc<std::sync::atomic::AtomicBool>,
        local: Shared,
        dropped: Arc<AtomicU64>,
    ) -> Publisher {
        Publisher {
            client,
            cfg,
            sink,
            stop,
            conn: None,
            local,
            dropped,
            dropped_seen: 0,
            up: false,
            reset_sent: false,
            need_resync: false,
            retry_at: None,
        }
    }

    fn run(mut self, rx: Receiver<Cmd>) {
        let mut next_beat = Instant::now();
        loop {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let wait = next_beat.saturating_duration_since(Instant::now());
            let first = match rx.recv_timeout(wait) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch: Vec<Cmd> = first.into_iter().collect();
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let resync = batch.iter().any(|c| matches!(c, Cmd::Resync));
            let events: Vec<Event> = batch
                .into_iter()
                .filter_map(|c| match c {
                    Cmd::Publish(ev) => Some(ev),
                    Cmd::Resync => None,
                })
                .collect();
            let dropped = self.dropped.load(Ordering::Relaxed);
            if dropped != self.dropped_seen {
                // Some of this node's presence changes were not published.
                self.dropped_seen = dropped;
                self.need_resync = true;
            }
            if !events.is_empty() && self.connected() {
                let r = self.publish(&events);
                self.check(r);
            }
            if (resync || self.need_resync) && self.connected() {
                let r = self.resync();
                if r.is_ok() {
                    self.need_resync = false;
                }
                self.check(r);
            }
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + HEARTBEAT;
                if self.connected() {
                    let r = self.beat();
                    self.check(r);
                }
            }
        }
        // A clean stop: this node's users are gone at once, not at the node timeout.
        if let Some(conn) = self.conn.as_mut() {
            let _: redis::RedisResult<()> = reset(&self.cfg.node, true).query(conn);
        }
    }

    /// Connects if need be (with backoff); says whether there is a connection.
    fn connected(&mut self) -> bool {
        if self.conn.is_some() {
            return true;
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        match self
            .client
            .get_connection_with_timeout(self.cfg.io_timeout)
            .and_then(|c| {
                c.set_read_timeout(Some(self.cfg.io_timeout))?;
                c.set_write_timeout(Some(self.cfg.io_timeout))?;
                Ok(c)
            }) {
            Ok(c) => {
                self.conn = Some(c);
                self.retry_at = None;
                self.need_resync = true;
                if !self.reset_sent {
                    // Whatever an earlier run of this node left behind is gone.
                    let r = self.announce_start();
                    self.check(r);
                    return self.conn.is_some();
                }
                true
            }
            Err(e) => {
                self.down(&format!("cannot connect: {e}"));
                false
            }
        }
    }

    fn announce_start(&mut self) -> redis::RedisResult<()> {
        let conn = self.conn.as_mut().expect("connected");
        reset(&self.cfg.node, false).query::<()>(conn)?;
        self.reset_sent = true;
        Ok(())
    }

    fn check(&mut self, r: redis::RedisResult<()>) {
        if let Err(e) = r {
            self.down(&e.to_string());
        }
    }

    fn down(&mut self, why: &str) {
        self.conn = None;
        self.retry_at = Some(Instant::now() + Duration::from_millis(500));
        if self.up {
            log::error!(
                "cluster: Redis at {} unreachable ({why}): serving this node's users only until it is back",
                self.cfg.url
            );
            self.up = false;
            (self.sink)(Input::Link(false));
        }
    }

    /// Presence and events in one pipeline.
    fn publish(&mut self, events: &[Event]) -> redis::RedisResult<()> {
        let key = presence_key(&self.cfg.node);
        let mut p = redis::pipe();
        let mut wrote = false;
        for ev in events {
            match ev {
                Event::Online {
                    user,
                    name,
                    session,
                    ..
                } => {
                    let v = serde_json::to_string(&Present {
                        name: name.clone(),
                        session: *session,
                    })
                    .expect("serialises");
                    p.cmd("HSET").arg(&key).arg(*user).arg(v).ignore();
                    wrote = true;
                }
                Event::Offline { user, .. } if !self.local.lock().contains(*user) => {
                    p.cmd("HDEL").arg(&key).arg(*user).ignore();
                }
                _ => {}
            }
            p.cmd("PUBLISH").arg(CHANNEL).arg(ev.to_json()).ignore();
        }
        if wrote {
            // A hash made anew expires as the next beat would have it.
            p.cmd("PEXPIRE")
                .arg(&key)
                .arg(self.cfg.node_timeout.as_millis() as u64)
                .ignore();
        }
        p.query::<()>(self.conn.as_mut().expect("connected"))
    }

    /// Rewrites this node's presence, then reads everyone's.
    fn resync(&mut self) -> redis::RedisResult<()> {
        let key = presence_key(&self.cfg.node);
        // Only the sessions live here now: whatever the hash held before is replaced.
        let (mine, again) = {
            let local = self.local.lock();
            (
                local.entries(&self.cfg.node),
                local.announcements(&self.cfg.node),
            )
        };
        let conn = self.conn.as_mut().expect("connected");
        let mut p = redis::pipe();
        p.atomic().cmd("DEL").arg(&key).ignore();
        for e in &mine {
            let v = serde_json::to_string(&Present {
                name: e.name.clone(),
                session: e.session,
            })
            .expect("serialises");
            p.cmd("HSET").arg(&key).arg(e.user).arg(v).ignore();
        }
        p.cmd("PEXPIRE")
            .arg(&key)
            .arg(self.cfg.node_timeout.as_millis() as u64)
            .ignore();
        p.query::<()>(conn)?;
        // And tell the nodes that read their snapshot before this rewrite.
        let mut p = redis::pipe();
        for ev in &again {
            p.cmd("PUBLISH").arg(CHANNEL).arg(ev.to_json()).ignore();
        }
        if !again.is_empty() {
            p.query::<()>(conn)?;
        }
        let (_, nodes) = self.beat_nodes()?;
        let conn = self.conn.as_mut().expect("connected");
        let mut entries = Vec::new();
        for node in nodes {
            let users: HashMap<i64, String> =
                redis::cmd("HGETALL").arg(presence_key(&node)).query(conn)?;
            for (user, v) in users {
                if let Ok(p) = serde_json::from_str::<Present>(&v) {
                    entries.push(PresenceEntry {
                        node: node.clone(),
                        user,
                        name: p.name,
                        session: p.session,
                    });
                }
            }
        }
        if !self.up {
            log::info!(
                "cluster: linked to Redis at {} as node {}",
                self.cfg.url,
                self.cfg.node
            );
            self.up = true;
            (self.sink)(Input::Link(true));
        }
        (self.sink)(Input::Snapshot(entries));
        Ok(())
    }

    /// Beats: whether this node was missing from the live ones, and the live ones.
    fn beat_nodes(&mut self) -> redis::RedisResult<(bool, Vec<String>)> {
        let conn = self.conn.as_mut().expect("connected");
        redis::cmd("EVAL")
            .arg(BEAT)
            .arg(1)
            .arg(NODES)
            .arg(&self.cfg.node)
            .arg(self.cfg.node_timeout.as_millis() as u64)
            .query::<(i64, Vec<String>)>(conn)
            .map(|(added, nodes)| (added > 0, nodes))
    }

    fn beat(&mut self) -> redis::RedisResult<()> {
        let (missing, nodes) = self.beat_nodes()?;
        if missing {
            log::warn!(
                "cluster: node {} was taken for dead (silent too long, or Redis lost its data): writing its presence again",
                self.cfg.node
            );
            self.need_resync = true;
        }
        if self.up {
            (self.sink)(Input::LiveNodes(nodes));
        }
        Ok(())
    }
}

/// How often a starting node looks at the heartbeat of a node with its id.
const DUPLICATE_POLL: Duration = Duration::from_millis(100);

/// Whether Redis refused this server's credentials: a wrong password (or user), or a
/// password required and not given.
fn refused_credentials(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
}

/// Why Redis at `url` would not have this server, in a sentence without the password.
fn refused_sentence(url: &crate::redact::SecretUrl, e: &redis::RedisError) -> String {
    format!(
        "Redis at {url} refused this server's credentials ({}): give the right password in --redis (redis://:PASSWORD@HOST:PORT/DB, or redis://USER:PASSWORD@... with ACL users)",
        crate::redact::text(&e.to_string())
    )
}

/// Whether Redis at `url` accepts the credentials in it (checked with a `PING`):
/// an error, in a sentence without the password, only if Redis answered and refused
/// them; Redis unreachable is no error here.
pub fn check_credentials(url: &crate::redact::SecretUrl, timeout: Duration) -> Result<(), String> {
    let Ok(client) = redis::Client::open(url.expose()) else {
        // An unreadable URL: said by whoever parses it next.
        return Ok(());
    };
    let ping = client
        .get_connection_with_timeout(timeout)
        .and_then(|mut c| {
            c.set_read_timeout(Some(timeout))?;
            redis::cmd("PING").query::<String>(&mut c)
        });
    match ping {
        Err(e) if refused_credentials(&e) => Err(refused_sentence(url, &e)),
        _ => Ok(()),
    }
}

/// Checks that this node may join the cluster on `client`'s Redis, before anything
/// starts:
///
/// - Redis accepts its credentials. A wrong or missing password is an error (the
///   node would serve its users alone and none of their data).
/// - No live node has its id. A node with the same id that beat within the node
///   timeout is watched until the timeout has passed since its last beat: if it beats
///   again, it is alive and this one must not join (two nodes of one name would each
///   take the other's events for their own); if not, it is a dead run of this node
///   (restarted at once after a crash) and this one takes its place.
///
/// Redis unreachable is no error: the node starts and connects when Redis is back.
fn check_start(client: &redis::Client, cfg: &ClusterConfig) -> Result<(), String> {
    let refused = |e: &redis::RedisError| refused_sentence(&cfg.url, e);
    let mut conn = match client.get_connection_with_timeout(cfg.io_timeout) {
        Ok(c) => c,
        Err(e) if refused_credentials(&e) => return Err(refused(&e)),
        Err(e) => {
            log::warn!(
                "cluster: Redis at {} unreachable at start ({}): starting anyway",
                cfg.url,
                crate::redact::text(&e.to_string())
            );
            return Ok(());
        }
    };
    let _ = conn.set_read_timeout(Some(cfg.io_timeout));
    let _ = conn.set_write_timeout(Some(cfg.io_timeout));
    let timeout_ms = cfg.node_timeout.as_millis() as u64;
    let look = |conn: &mut redis::Connection| -> redis::RedisResult<(Option<u64>, u64)> {
        let (score, (secs, micros)): (Option<f64>, (u64, u64)) = redis::pipe()
            .cmd("ZSCORE")
            .arg(NODES)
            .arg(&cfg.node)
            .cmd("TIME")
            .query(conn)?;
        Ok((score.map(|s| s as u64), secs * 1000 + micros / 1000))
    };
    let checked = (|| -> redis::RedisResult<Result<(), String>> {
        // A command alone first: a password required and not given shows here.
        redis::cmd("PING").query::<String>(&mut conn)?;
        let (first, now) = look(&mut conn)?;
        let Some(first) = first else {
            return Ok(Ok(()));
        };
        let age = now.saturating_sub(first);
        if age >= timeout_ms {
            return Ok(Ok(()));
        }
        log::info!(
            "cluster: a node with id {} beat {age} ms ago: waiting up to {} ms to see whether it is alive",
            cfg.node,
            timeout_ms - age
        );
        loop {
            std::thread::sleep(DUPLICATE_POLL);
            let (score, now) = look(&mut conn)?;
            match score {
                // Stopped cleanly meanwhile, or found dead by another node.
                None => return Ok(Ok(())),
                Some(s) if s != first => {
                    return Ok(Err(format!(
                        "another node with --node-id {} is alive on Redis at {} (it beat {} ms ago): give each node its own --node-id, or stop the other one first",
                        cfg.node,
                        cfg.url,
                        now.saturating_sub(s)
                    )));
                }
                Some(_) if now.saturating_sub(first) >= timeout_ms => return Ok(Ok(())),
                Some(_) => {}
            }
        }
    })();
    match checked {
        Ok(r) => r,
        Err(e) if refused_credentials(&e) => Err(refused(&e)),
        Err(e) => {
            log::warn!(
                "cluster: Redis at {} did not answer at start ({}): starting anyway",
                cfg.url,
                crate::redact::text(&e.to_string())
            );
            Ok(())
        }
    }
}

/// The subscriber thread: (re)subscribes, asks for a resync each time, and hands every
/// event to the hub.
fn subscribe(
    client: redis::Client,
    cfg: ClusterConfig,
    sink: InputSink,
    resync: SyncSender<Cmd>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut bad = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let mut conn = match client.get_connection_with_timeout(cfg.io_timeout) {
            Ok(c) => c,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let mut ps = conn.as_pubsub();
        if ps.subscribe(CHANNEL).is_err() {
            continue;
        }
        // Woken now and then to see whether the server is stopping.
        let _ = ps.set_read_timeout(Some(Duration::from_millis(500)));
        if resync.send(Cmd::Resync).is_err() {
            return;
        }
        while !stop.load(Ordering::SeqCst) {
            match ps.get_message() {
                Ok(msg) => {
                    let Ok(text) = std::str::from_utf8(msg.get_payload_bytes()) else {
                        continue;
                    };
                    match Event::from_json(text) {
                        Ok(ev) => sink(Input::Event(ev)),
                        Err(e) => {
                            bad += 1;
                            if bad.is_power_of_two() {
                                log::warn!("cluster: {bad} unreadable events so far ({e})");
                            }
                        }
                    }
                }
                Err(e) if e.is_timeout() => continue,
                Err(e) => {
                    log::debug!("cluster: subscription lost: {e}");
                    break;
                }
            }
        }
    }
}
