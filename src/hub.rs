//! The deterministic heart of the server: every connection's state machine, the
//! online registry, and the jobs waiting for workers, with no sockets, threads or
//! clocks of its own.
//!
//! Inputs go in through `handle_*` methods (bytes read, a peer hung up, a store result,
//! an output queue drained, time passing); outputs are drained through `poll_*`
//! methods (jobs to run, connections with output to write, connections that may read
//! again, connections to close). The reactor is a thin loop around this; the tests
//! drive it directly, feeding frames and job results in whatever order they choose and
//! reading the exact frames each connection was sent. Time is a value passed in.
//!
//! The message handlers themselves live in `handlers/`, one file per command, as
//! further `impl Hub` blocks behind one dispatcher.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;

use slab::Slab;

use crate::conn::{Closing, Conn, ConnRef, Pending, Session};
use crate::job::{Job, JobKind, JobResult, Outcome};
use crate::proto::{
    self, ClientMessage, CodeRes, NotifyUserStatusMes, ServerMessage, code, status,
};
use crate::rate::PerAddr;
use crate::users::Registry;

/// Folds `sample` into a moving average (weight 1/8).
fn average(avg: &mut Option<f64>, sample: f64) {
    *avg = Some(match *avg {
        Some(a) => a + (sample - a) / 8.0,
        None => sample,
    });
}

/// Limits and timings; every one is a command-line flag of the server.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Largest frame body from a logged-in client.
    pub max_frame: usize,
    /// Largest frame body before login.
    pub prelogin_max_frame: usize,
    /// Largest output queue per connection, in bytes.
    pub max_outbuf: usize,
    /// Store jobs queued or running at once, over all connections.
    pub max_jobs: usize,
    /// Threads hashing passwords (logins and registrations).
    pub hash_workers: usize,
    /// Longest a login or registration should wait for a hashing thread. A request
    /// whose estimated wait (hashes ahead of it times the measured cost of one,
    /// divided by the threads) is longer is refused at once as busy, with that
    /// estimate, instead of queueing for an answer that would come too late.
    pub hash_wait_ms: u64,
    /// A connection that has not logged in by then is closed.
    pub login_timeout_ms: u64,
    /// How long a closing connection may take to write its last frames.
    pub close_linger_ms: u64,
    /// Failed logins on one connection before it is closed.
    pub max_login_failures: u32,
    /// Offline messages fetched per store round trip.
    pub offline_batch: usize,
    /// Frames per second per connection (burst the same); over it, `ErrorResMes` 429
    /// and the frame is not handled. 0: no limit.
    pub msg_rate: u32,
    /// Logins and registrations (each costs a password hash) per minute per client
    /// address (burst the same); over it, `ErrorResMes` 429. 0: no limit.
    pub login_rate: u32,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_frame: proto::DEFAULT_MAX_FRAME,
            prelogin_max_frame: 8 * 1024,
            max_outbuf: 1024 * 1024,
            max_jobs: 1024,
            hash_workers: 2,
            hash_wait_ms: 30_000,
            login_timeout_ms: 30_000,
            close_linger_ms: 2_000,
            max_login_failures: 5,
            offline_batch: 100,
            msg_rate: 20,
            login_rate: 30,
        }
    }
}

/// The time, as the caller sees it: a monotonic clock for timeouts and the wall clock
/// for the timestamps put on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono_ms: u64,
    pub unix_ms: u64,
}

/// Counters for the log and the benchmark.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub accepted: u64,
    pub closed: u64,
    pub frames_in: u64,
    pub group_messages: u64,
    pub deliveries: u64,
    pub slow_consumers_dropped: u64,
}

pub struct Hub {
    pub(crate) cfg: HubConfig,
    pub(crate) conns: Slab<Conn>,
    next_gen: u32,
    pub(crate) online: Registry,
    jobs: VecDeque<Job>,
    jobs_in_flight: usize,
    /// Jobs refused since the last tick (queue full).
    jobs_refused: u64,
    /// When each hashing job in flight was submitted (mono ms), oldest first.
    hash_jobs: VecDeque<u64>,
    /// What one hash has cost lately, in ms (a moving average of worker times).
    hash_cost_ms: Option<f64>,
    /// Time between hash completions while hashes were waiting, in ms (a moving
    /// average): what the threads really deliver, starved of CPU or not.
    hash_gap_ms: Option<f64>,
    /// When the last hash completed, if others were still in flight then.
    last_hash_done: Option<u64>,
    /// Logins and registrations refused as busy since the last tick.
    hash_refused: u64,
    /// Jobs that waited past the job timeout and were refused unrun, since the last tick.
    jobs_expired: u64,
    /// Connections whose queue went from empty to non-empty: to be written this turn.
    writes: Vec<ConnRef>,
    /// Connections that stopped reading for a job and may read again.
    reads: Vec<ConnRef>,
    /// Connections to close at the end of this turn.
    closes: Vec<ConnRef>,
    /// Connections whose queue overflowed during the current operation.
    overflowed: Vec<usize>,
    /// Hash-costing requests per client address.
    pub(crate) login_limits: PerAddr,
    /// Users who went offline this turn, not yet announced.
    departures: Vec<(i64, Rc<str>)>,
    /// `PongMes`, encoded once.
    pub(crate) pong: Rc<[u8]>,
    pub stats: Stats,
}

impl Hub {
    pub fn new(cfg: HubConfig) -> Hub {
        Hub {
            cfg,
            conns: Slab::new(),
            next_gen: 0,
            online: Registry::default(),
            jobs: VecDeque::new(),
            jobs_in_flight: 0,
            jobs_refused: 0,
            hash_jobs: VecDeque::new(),
            hash_cost_ms: None,
            hash_gap_ms: None,
            last_hash_done: None,
            hash_refused: 0,
            jobs_expired: 0,
            writes: Vec::new(),
            reads: Vec::new(),
            closes: Vec::new(),
            overflowed: Vec::new(),
            login_limits: PerAddr::default(),
            departures: Vec::new(),
            pong: ServerMessage::Pong.encode().into(),
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    // ----- inputs -------------------------------------------------------------------

    /// A new connection from `peer`.
    pub fn accept(&mut self, peer: SocketAddr, now: Now) -> ConnRef {
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let generation = self.next_gen;
        let conn = Conn::new(generation, peer, now.mono_ms, self.cfg.msg_rate);
        let key = self.conns.insert(conn);
        self.stats.accepted += 1;
        ConnRef { key, generation }
    }

    /// Bytes read from `r`'s socket.
    pub fn handle_input(&mut self, r: ConnRef, data: &[u8], now: Now) {
        let Some(conn) = self.get_mut(r) else { return };
        if conn.closing.is_some() {
            return;
        }
        if conn.inbuf.is_empty() && conn.can_handle() {
            // The common case: frames are parsed straight out of the read buffer and
            // only a trailing partial frame is copied.
            let used = self.process(r.key, data, now);
            let conn = &mut self.conns[r.key];
            if conn.closing.is_none() {
                conn.inbuf.extend_from_slice(&data[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut conn.inbuf);
            buf.extend_from_slice(data);
            self.process_buffered(r.key, buf, now);
        }
        self.settle(now);
    }

    /// The peer hung up, or its socket failed.
    pub fn handle_hangup(&mut self, r: ConnRef, reason: &str, now: Now) {
        if self.get(r).is_some() {
            self.close(r.key, false, reason, now);
            self.settle(now);
        }
    }

    /// A worker finished a job.
    pub fn handle_result(&mut self, res: JobResult, now: Now) {
        self.jobs_in_flight = self.jobs_in_flight.saturating_sub(1);
        if res.took.is_none() {
            self.jobs_expired += 1;
        }
        if matches!(res.outcome, Outcome::Login(_) | Outcome::Register(_)) {
            self.hash_jobs.pop_front();
            if let Some(took) = res.took {
                if res.outcome.hashed() {
                    average(&mut self.hash_cost_ms, took.as_secs_f64() * 1000.0);
                }
                if let Some(prev) = self.last_hash_done {
                    average(
                        &mut self.hash_gap_ms,
                        now.mono_ms.saturating_sub(prev) as f64,
                    );
                }
            }
            self.last_hash_done = (!self.hash_jobs.is_empty()).then_some(now.mono_ms);
        }
        let Some(r) = res.conn else {
            if let Outcome::AckOffline(Err(e)) = &res.outcome {
                log::warn!("offline messages not removed (they may be delivered again): {e}");
            }
            return;
        };
        if self.get(r).is_none() {
            log::debug!("result for a connection that has gone: {:?}", res.outcome);
            return;
        }
        match res.outcome {
            Outcome::Login(result) => self.login_done(r.key, result, now),
            Outcome::Register(result) => self.register_done(r.key, result, now),
            Outcome::StoreOffline(result) => self.private_stored(r.key, result, now),
            Outcome::FetchOffline {
                user_id,
                batch,
                result,
            } => self.offline_fetched(r.key, user_id, batch, result, now),
            Outcome::AckOffline(result) => self.offline_acked(r.key, result),
        }
        self.settle(now);
    }

    /// `r`'s output queue was written out completely.
    pub fn handle_flushed(&mut self, r: ConnRef, now: Now) {
        let Some(conn) = self.get_mut(r) else { return };
        match conn.closing {
            Some(Closing { flush: true, .. }) => self.closes.push(r),
            Some(_) => {}
            None => {
                if conn.offline_more && !conn.offline_fetching && !conn.offline_acking {
                    self.fetch_offline(r.key);
                }
            }
        }
        self.settle(now);
    }

    /// Time passed: closes connections that did not log in in time and closing
    /// connections that did not manage to write their last frames.
    pub fn handle_tick(&mut self, now: Now) {
        self.login_limits.prune(now.mono_ms, self.cfg.login_rate);
        if self.jobs_refused > 0 {
            log::warn!(
                "store job queue full ({} jobs): {} requests refused as busy",
                self.cfg.max_jobs,
                self.jobs_refused
            );
            self.jobs_refused = 0;
        }
        if self.jobs_expired > 0 {
            log::warn!(
                "{} requests waited longer than the job timeout for a worker and were refused",
                self.jobs_expired
            );
            self.jobs_expired = 0;
        }
        if self.hash_refused > 0 {
            log::warn!(
                "logins and registrations: {} refused as busy (estimated wait over {} s)",
                self.hash_refused,
                self.cfg.hash_wait_ms / 1000
            );
            self.hash_refused = 0;
        }
        let mut expired = Vec::new();
        for (key, c) in &mut self.conns {
            c.shrink_idle();
            match c.closing {
                Some(cl) => {
                    if now.mono_ms >= cl.deadline_ms {
                        expired.push((key, true));
                    }
                }
                None => {
                    if !c.is_online()
                        && c.pending != Some(Pending::Login)
                        && now.mono_ms.saturating_sub(c.login_clock_ms) >= self.cfg.login_timeout_ms
                    {
                        expired.push((key, false));
                    }
                }
            }
        }
        for (key, closing) in expired {
            if closing {
                log::debug!("conn {key}: close deadline passed");
                self.close(key, false, "could not write its last frames in time", now);
            } else {
                let secs = self.cfg.login_timeout_ms / 1000;
                self.error(
                    key,
                    code::UNAUTHORIZED,
                    &format!("no login within {secs} s"),
                );
                self.close(key, true, "login timeout", now);
            }
        }
        self.settle(now);
    }

    /// The server is stopping: every connection is closed once its queued output is
    /// written (or at the linger deadline). Nobody is told that anyone went offline,
    /// since everyone is leaving at once.
    pub fn handle_shutdown(&mut self, now: Now) {
        self.online = Registry::default();
        self.departures.clear();
        for r in self.refs() {
            self.close(r.key, true, "server shutting down", now);
        }
        self.settle(now);
    }

    // ----- outputs ------------------------------------------------------------------

    /// The next store job to hand to a worker.
    pub fn poll_job(&mut self) -> Option<Job> {
        self.jobs.pop_front()
    }

    /// Whether logins or registrations are waiting for a password hash.
    pub fn hashing(&self) -> bool {
        !self.hash_jobs.is_empty()
    }

    /// Whether writes, closes or departures are waiting for the reactor.
    pub fn has_output(&self) -> bool {
        !self.writes.is_empty() || !self.closes.is_empty() || !self.departures.is_empty()
    }

    /// The next connection with output to write.
    pub fn poll_write(&mut self) -> Option<ConnRef> {
        self.writes.pop()
    }

    /// The next connection that may read from its socket again.
    pub fn poll_read(&mut self) -> Option<ConnRef> {
        self.reads.pop()
    }

    /// The next connection to close. Its state is removed (and others are told it went
    /// offline) before this returns; the caller drops the socket.
    pub fn poll_close(&mut self, now: Now) -> Option<ConnRef> {
        while let Some(r) = self.closes.pop() {
            if self.get(r).is_none() {
                continue; // closed twice in one turn
            }
            self.go_offline(r.key, now);
            self.conns.remove(r.key);
            self.stats.closed += 1;
            self.settle(now);
            return Some(r);
        }
        None
    }

    // ----- queries ------------------------------------------------------------------

    pub fn get(&self, r: ConnRef) -> Option<&Conn> {
        self.conns
            .get(r.key)
            .filter(|c| c.generation == r.generation)
    }

    pub fn get_mut(&mut self, r: ConnRef) -> Option<&mut Conn> {
        self.conns
            .get_mut(r.key)
            .filter(|c| c.generation == r.generation)
    }

    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    pub fn online_count(&self) -> usize {
        self.online.len()
    }

    pub fn jobs_in_flight(&self) -> usize {
        self.jobs_in_flight
    }

    /// Every live connection.
    pub fn refs(&self) -> Vec<ConnRef> {
        self.conns
            .iter()
            .map(|(key, c)| ConnRef {
                key,
                generation: c.generation,
            })
            .collect()
    }

    pub(crate) fn conn_ref(&self, key: usize) -> ConnRef {
        ConnRef {
            key,
            generation: self.conns[key].generation,
        }
    }

    // ----- the machinery the handlers use ----------------------------------------------

    fn process_buffered(&mut self, key: usize, mut buf: Vec<u8>, now: Now) {
        let used = self.process(key, &buf, now);
        let conn = &mut self.conns[key];
        if conn.closing.is_some() {
            return;
        }
        buf.drain(..used);
        conn.inbuf = buf;
        conn.shrink_inbuf();
    }

    /// Handles the complete frames at the start of `buf`, in order, until a frame
    /// leaves a job in flight or the connection closes. Returns the bytes used.
    fn process(&mut self, key: usize, buf: &[u8], now: Now) -> usize {
        let mut pos = 0;
        while self.conns[key].can_handle() {
            let limit = if self.conns[key].is_online() {
                self.cfg.max_frame
            } else {
                self.cfg.prelogin_max_frame
            };
            match proto::check(&buf[pos..], limit) {
                Ok(None) => break,
                Ok(Some(total)) => {
                    let msg = ClientMessage::parse(&buf[pos + proto::HEADER_LEN..pos + total]);
                    pos += total;
                    self.stats.frames_in += 1;
                    if self.over_msg_rate(key, &msg, now) {
                        let rate = self.cfg.msg_rate;
                        let text = format!("too many messages: at most {rate} per second");
                        self.error(key, code::TOO_MANY, &text);
                        continue;
                    }
                    self.dispatch(key, msg, now);
                }
                Err(e) => {
                    let hint = if self.conns[key].is_online() {
                        ""
                    } else {
                        " before login"
                    };
                    self.error(key, code::TOO_LARGE, &format!("{e}{hint}"));
                    self.close(key, true, "oversized frame", now);
                    return buf.len();
                }
            }
        }
        pos
    }

    /// Flood control: every frame takes a token, except a logout.
    fn over_msg_rate(
        &mut self,
        key: usize,
        msg: &Result<ClientMessage, proto::ParseError>,
        now: Now,
    ) -> bool {
        let rate = self.cfg.msg_rate;
        if rate == 0 || matches!(msg, Ok(ClientMessage::Logout)) {
            return false;
        }
        !self.conns[key]
            .msg_bucket
            .take(now.mono_ms, rate as f64, rate)
    }

    /// Per-address limit on requests that cost a password hash. Sends the refusal.
    pub(crate) fn over_login_rate(&mut self, key: usize, now: Now) -> bool {
        let ip = self.conns[key].peer.ip();
        if self.login_limits.take(ip, now.mono_ms, self.cfg.login_rate) {
            return false;
        }
        log::warn!("conn {key} ({ip}): login/register attempts over the per-address limit");
        self.error(
            key,
            code::TOO_MANY,
            "too many login attempts from your address; try again later",
        );
        true
    }

    /// Clears a connection's job-in-flight mark and handles the frames that waited.
    pub(crate) fn resume(&mut self, key: usize, now: Now) {
        let conn = &mut self.conns[key];
        conn.pending = None;
        if conn.closing.is_some() {
            return;
        }
        if !conn.inbuf.is_empty() {
            let buf = std::mem::take(&mut conn.inbuf);
            self.process_buffered(key, buf, now);
        }
        let conn = &self.conns[key];
        if conn.wants_read() {
            // Edge-triggered: readiness seen while we were not reading is not
            // reported again, so the reactor must try reading now.
            self.reads.push(self.conn_ref(key));
        }
    }

    /// Queues a job for a worker if the pool has room.
    pub(crate) fn submit(&mut self, key: Option<usize>, kind: JobKind) -> bool {
        if self.jobs_in_flight >= self.cfg.max_jobs {
            // Counted, and logged once per tick: a storm must not flood the log.
            self.jobs_refused += 1;
            log::debug!("store job queue full: refusing {kind:?}");
            return false;
        }
        self.submit_always(key, kind);
        true
    }

    /// Queues a password-hashing job (login or registration) if it can be served in
    /// time. `Err` carries the estimated wait in ms when it cannot.
    pub(crate) fn submit_hash(&mut self, key: usize, kind: JobKind, now: Now) -> Result<(), u64> {
        let wait = self.hash_wait_estimate(now);
        if wait > self.cfg.hash_wait_ms {
            self.hash_refused += 1;
            return Err(wait);
        }
        if !self.submit(Some(key), kind) {
            return Err(wait.max(1000));
        }
        self.hash_jobs.push_back(now.mono_ms);
        Ok(())
    }

    /// How long a new login would wait for a hashing thread: the hashes ahead of it
    /// times the time each takes, which is the larger of the recent cost of one
    /// shared among the threads and the recent time between completions (the threads
    /// run only on CPU the loop leaves); and at least as long as the oldest has
    /// waited, in case the threads are making no progress at all.
    pub fn hash_wait_estimate(&self, now: Now) -> u64 {
        let ahead = self.hash_jobs.len() as f64;
        let shared = self.hash_cost_ms.unwrap_or(0.0) / self.cfg.hash_workers.max(1) as f64;
        let each = shared.max(self.hash_gap_ms.unwrap_or(0.0));
        let queued = each * ahead;
        let oldest = self
            .hash_jobs
            .front()
            .map_or(0, |&t| now.mono_ms.saturating_sub(t));
        (queued as u64).max(oldest)
    }

    /// Queues a job whatever the load (acknowledgements of delivered messages, which
    /// are bounded by the deliveries that caused them).
    pub(crate) fn submit_always(&mut self, key: Option<usize>, kind: JobKind) {
        self.jobs_in_flight += 1;
        let conn = key.map(|k| self.conn_ref(k));
        self.jobs.push_back(Job { conn, kind });
    }

    /// Queues a shared frame on one connection. Returns false if the connection is
    /// closing or its queue overflowed (it is then closed as a slow consumer).
    pub(crate) fn deliver(&mut self, key: usize, frame: &Rc<[u8]>) -> bool {
        self.outputs().0.deliver(key, frame)
    }

    /// The output side of the hub, borrowed apart from the registry.
    fn outputs(&mut self) -> (Outputs<'_>, &Registry) {
        let out = Outputs {
            conns: &mut self.conns,
            writes: &mut self.writes,
            overflowed: &mut self.overflowed,
            stats: &mut self.stats,
            limit: self.cfg.max_outbuf,
        };
        (out, &self.online)
    }

    /// Encodes `msg` and queues it on one connection.
    pub(crate) fn reply(&mut self, key: usize, msg: &ServerMessage) -> bool {
        let frame: Rc<[u8]> = msg.encode().into();
        self.deliver(key, &frame)
    }

    /// Sends `ErrorResMes`.
    pub(crate) fn error(&mut self, key: usize, code: u16, text: &str) {
        self.reply(key, &ServerMessage::Error(CodeRes::new(code, text)));
    }

    /// Queues one shared frame on every online connection but `except`.
    pub(crate) fn broadcast(&mut self, except: Option<usize>, frame: &Rc<[u8]>) {
        let (mut out, online) = self.outputs();
        // Overflowing queues are only noted here (closing them changes the registry
        // being iterated); `settle` closes them afterwards.
        for (_, e) in online.iter() {
            if Some(e.conn.key) != except {
                out.deliver(e.conn.key, frame);
            }
        }
    }

    /// Takes `key` offline if it holds its user's session. The others are told at the
    /// end of the turn ([`Hub::announce_departures`]): when many leave at once, nobody
    /// leaving is sent the others' departures.
    pub(crate) fn go_offline(&mut self, key: usize, _now: Now) {
        let conn = &mut self.conns[key];
        let Session::Online { user_id, name } =
            std::mem::replace(&mut conn.session, Session::Anonymous)
        else {
            return;
        };
        let me = ConnRef {
            key,
            generation: conn.generation,
        };
        if self.online.remove_if(user_id, me) {
            log::info!("user {user_id} offline");
            self.departures.push((user_id, name));
        }
    }

    /// Tells everyone online about the users who went offline since the last call.
    /// The reactor calls it once per loop turn, after it has collected every hang-up
    /// it can see; the hub calls it before announcing a login, to keep the order.
    pub fn announce_departures(&mut self, now: Now) {
        for (user_id, name) in std::mem::take(&mut self.departures) {
            let frame: Rc<[u8]> = ServerMessage::NotifyUserStatus(NotifyUserStatusMes {
                user_id,
                status: status::OFFLINE,
                user_name: name.to_string(),
            })
            .encode()
            .into();
            self.broadcast(None, &frame);
        }
        self.settle(now);
    }

    /// Whether departures wait to be announced.
    pub fn has_departures(&self) -> bool {
        !self.departures.is_empty()
    }

    /// Starts closing `key`. With `flush`, queued frames (an error, a goodbye) are
    /// written first, within the linger time; without it the connection goes at the
    /// end of this turn. Either way it is offline for everyone else at once.
    pub(crate) fn close(&mut self, key: usize, flush: bool, reason: &str, now: Now) {
        let deadline_ms = now.mono_ms + self.cfg.close_linger_ms;
        let conn = &mut self.conns[key];
        let me = ConnRef {
            key,
            generation: conn.generation,
        };
        match conn.closing {
            Some(c) if !c.flush || flush => return,
            _ => {}
        }
        let first = conn.closing.is_none();
        conn.closing = Some(Closing { flush, deadline_ms });
        conn.inbuf = Vec::new();
        if first {
            match conn.user_id() {
                Some(id) => log::info!("conn {key} ({}, user {id}) closing: {reason}", conn.peer),
                None => log::debug!("conn {key} ({}) closing: {reason}", conn.peer),
            }
        }
        if !flush || conn.out.is_empty() {
            self.closes.push(me);
        }
        self.go_offline(key, now);
    }

    /// Closes the connections whose queues overflowed. Called at the end of every
    /// input.
    fn settle(&mut self, now: Now) {
        while let Some(key) = self.overflowed.pop() {
            if self.conns.get(key).is_some_and(|c| c.closing.is_none()) {
                self.stats.slow_consumers_dropped += 1;
                let limit = self.cfg.max_outbuf;
                let reason = format!("slow consumer: output queue over {limit} bytes");
                log::warn!("conn {key} ({}): {reason}", self.conns[key].peer);
                self.close(key, false, &reason, now);
            }
        }
    }
}

/// The parts of the hub that queuing output touches, borrowed apart from the registry
/// so that a broadcast can walk the registry while it queues.
struct Outputs<'a> {
    conns: &'a mut Slab<Conn>,
    writes: &'a mut Vec<ConnRef>,
    overflowed: &'a mut Vec<usize>,
    stats: &'a mut Stats,
    limit: usize,
}

impl Outputs<'_> {
    fn deliver(&mut self, key: usize, frame: &Rc<[u8]>) -> bool {
        let conn = &mut self.conns[key];
        if matches!(conn.closing, Some(Closing { flush: false, .. })) {
            return false;
        }
        let was_empty = conn.out.is_empty();
        match conn.out.push(frame.clone(), self.limit) {
            Ok(()) => {
                if was_empty {
                    self.writes.push(ConnRef {
                        key,
                        generation: conn.generation,
                    });
                }
                self.stats.deliveries += 1;
                true
            }
            Err(_) => {
                if conn.closing.is_none() {
                    self.overflowed.push(key);
                }
                false
            }
        }
    }
}
