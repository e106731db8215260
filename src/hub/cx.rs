//! The hub's shared machinery and the context its components act through.
//!
//! [`Core`] is what every part of the hub shares: the connection slab, the online
//! registry, the output machinery (per-connection queues, the turn's shared buffer,
//! the lists of connections to write, read and close), the store jobs waiting for a
//! worker, the connections' deadlines, and the presence notices waiting. [`Cx`] is
//! the core together with the counters, as a component sees it: the few verbs it acts
//! through (reply, deliver, broadcast, submit a job, close, arm a timer, look up a
//! session). The hot path lives here: [`Cx::broadcast_fitted`], `Outputs` and
//! `queue`, one look-up per recipient.
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::IpAddr;
use std::rc::Rc;

use slab::Slab;

use super::config::HubConfig;
use crate::conn::{Closing, Conn, OutQueue, Overflow, Pending, Session, TURN_FRAME, TurnBuf};
use crate::hub::frame_fit;
use crate::hub::presence::Presence;
use crate::job::{Job, JobKind};
use crate::metrics::Stats;
use crate::proto::{self, CodeRes, ServerMessage, SmsMes, SmsPrivateMes, code};
use crate::store::OfflineMsg;
use crate::types::{ConnRef, Now, Part};
use crate::users::{OnlineEntry, Registry};

/// Refusals and failures counted between two summaries in the log, so that a flood
/// or an outage costs one log line per interval, not one per request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Store jobs refused: the job queue was full.
    pub jobs_refused: u64,
    /// Jobs that waited past the job timeout and were refused unrun.
    pub jobs_expired: u64,
    /// Logins and registrations refused as busy (estimated wait too long, or the
    /// hashing queue full).
    pub hash_refused: u64,
    /// Logins and registrations over the per-address rate.
    pub login_rate_refused: u64,
    /// Frames refused before login (401) or over the message rate (429).
    pub frames_refused: u64,
    /// Connections refused: server full, or too many from one address.
    pub conns_refused: u64,
    pub conns_refused_per_addr: u64,
    /// Requests that failed on a storage error, and the last such error.
    pub store_errors: u64,
    pub last_store_error: String,
    /// History entries lost (storage failed or too slow); live delivery went on.
    pub history_lost: u64,
    /// History pages refused: the history queue was full, or the user over the rate.
    pub history_refused: u64,
}

impl Summary {
    pub(crate) fn is_empty(&self) -> bool {
        *self == Summary::default()
    }
}

/// A timer: when, and for which connection.
type Deadline = Reverse<(u64, usize, u32)>;

/// With this many users online or more per millisecond of presence interval, the
/// interval grows (see `Core::presence_interval`).
const PRESENCE_USERS_PER_MS: u64 = 20;
/// A round of presence notices to everyone takes at most this share of the loop's
/// time: the interval is at least this many times as long as the round.
const PRESENCE_ROUNDS_SHARE: f64 = 20.0;
/// The longest the presence interval grows to, whatever a round costs.
const MAX_PRESENCE_INTERVAL_MS: u64 = 2_000;
/// Rounds of writes to fewer connections than this say little of what one costs.
const ROUND_SAMPLE: usize = 100;

/// The state every part of the hub shares (see the module's comment).
pub(crate) struct Core {
    pub(crate) cfg: HubConfig,
    pub(crate) conns: Slab<Conn>,
    pub(crate) next_gen: u32,
    pub(crate) online: Registry,
    pub(crate) jobs: VecDeque<Job>,
    pub(crate) jobs_in_flight: usize,
    /// Password-hashing jobs (logins, registrations) queued or running, among
    /// `jobs_in_flight`.
    pub(crate) hash_jobs: usize,
    /// History pages being read, among `jobs_in_flight`: they have a queue of their
    /// own (`HubConfig::history_reads`), apart from the store jobs'.
    pub(crate) history_reads: usize,
    /// Connections whose queue went from empty to non-empty: to be written this turn.
    pub(crate) writes: Vec<ConnRef>,
    /// The stretch of the round of writes under way (see [`Hub::poll_write`]).
    pub(crate) stretch: Vec<ConnRef>,
    /// Connections that stopped reading for a job and may read again.
    pub(crate) reads: Vec<ConnRef>,
    /// Connections to close at the end of this turn.
    pub(crate) closes: Vec<ConnRef>,
    /// Connections whose queue overflowed during the current operation.
    pub(crate) overflowed: Vec<usize>,
    /// Login timeouts and close deadlines, soonest first. An entry whose connection
    /// has gone or moved on is skipped when it comes up.
    pub(crate) deadlines: BinaryHeap<Deadline>,
    /// Connections open per client address (IPv6: per /64).
    pub(crate) per_addr: HashMap<IpAddr, u32>,
    /// Logins in flight, counted by user: a message stored for one of them meanwhile
    /// is fetched once it is online.
    pub(crate) logging_in: HashMap<i64, u32>,
    /// Users whose connection here is closing with private messages it has not
    /// written (stored when it goes): one sent to them meanwhile joins those, so that
    /// they keep their order (see `Chat::handle_private`).
    pub(crate) lingering: HashMap<i64, ConnRef>,
    /// Users who went offline this turn, not yet announced.
    pub(crate) departures: Vec<(i64, Rc<str>)>,
    /// Presence notices waiting to be sent to everyone.
    pub(crate) presence: Presence,
    /// What writing one connection's output has cost the loop lately, in µs: a moving
    /// average over rounds of writes to many (see `Hub::note_round`).
    pub(crate) write_cost_us: Option<f64>,
    /// `PongMes`, encoded once.
    pub(crate) pong: Rc<[u8]>,
    /// Where small frames are copied together for one write (see `OutQueue::write_with`).
    pub(crate) gather: Vec<u8>,
    /// The small broadcast frames queued since the last write, in one buffer.
    pub(crate) turn: TurnBuf,
    pub(crate) summary: Summary,
    /// Users whose session here ended since the cluster was last told (see
    /// `Hub::settle`).
    pub(crate) logouts: Vec<i64>,
}

impl Core {
    pub(crate) fn new(cfg: HubConfig) -> Core {
        Core {
            cfg,
            conns: Slab::new(),
            next_gen: 0,
            online: Registry::default(),
            jobs: VecDeque::new(),
            jobs_in_flight: 0,
            hash_jobs: 0,
            history_reads: 0,
            writes: Vec::new(),
            stretch: Vec::new(),
            reads: Vec::new(),
            closes: Vec::new(),
            overflowed: Vec::new(),
            deadlines: BinaryHeap::new(),
            per_addr: HashMap::new(),
            logging_in: HashMap::new(),
            lingering: HashMap::new(),
            departures: Vec::new(),
            presence: Presence::default(),
            write_cost_us: None,
            pong: ServerMessage::Pong.encode().into(),
            gather: Vec::new(),
            turn: TurnBuf::default(),
            summary: Summary::default(),
            logouts: Vec::new(),
        }
    }

    /// A connection's state, read-only (tests, logs).
    pub(crate) fn get(&self, r: ConnRef) -> Option<&Conn> {
        self.conns
            .get(r.key)
            .filter(|c| c.generation == r.generation)
    }
    pub(crate) fn get_mut(&mut self, r: ConnRef) -> Option<&mut Conn> {
        self.conns
            .get_mut(r.key)
            .filter(|c| c.generation == r.generation)
    }
    pub(crate) fn conn_ref(&self, key: usize) -> ConnRef {
        ConnRef {
            key,
            generation: self.conns[key].generation,
        }
    }
    /// Puts a deadline of connection `key` in the heap, unless an earlier one is
    /// there already (that one, when it comes, looks again at what is due): one entry
    /// per connection, not one per event.
    pub(crate) fn arm(&mut self, key: usize, generation: u32, at_ms: u64) {
        let at_ms = at_ms.max(1);
        let c = &mut self.conns[key];
        if c.armed_ms != 0 && c.armed_ms <= at_ms {
            return;
        }
        c.armed_ms = at_ms;
        self.deadlines.push(Reverse((at_ms, key, generation)));
    }
    /// Makes whatever was broadcast since the last write into its shared bytes (see
    /// [`TurnBuf`]): before anything queued is written or looked at.
    pub(crate) fn seal_output(&mut self) {
        self.turn.seal(&mut self.conns);
    }
    /// Whether a login of `user_id` is in flight.
    pub(crate) fn is_logging_in(&self, user_id: i64) -> bool {
        self.logging_in.contains_key(&user_id)
    }
    /// Store jobs queued or running, password hashes and history pages not counted.
    pub(crate) fn store_jobs_in_flight(&self) -> usize {
        self.jobs_in_flight
            .saturating_sub(self.hash_jobs)
            .saturating_sub(self.history_reads)
    }
    pub(crate) fn unmark_login(&mut self, user_id: i64) {
        if let Some(n) = self.logging_in.get_mut(&user_id) {
            *n -= 1;
            if *n == 0 {
                self.logging_in.remove(&user_id);
            }
        }
    }
    /// A login is in flight for `user_id` on `key`.
    pub(crate) fn login_started(&mut self, key: usize, user_id: i64) {
        self.conns[key].pending = Some(Pending::Login { user_id });
        *self.logging_in.entry(user_id).or_default() += 1;
    }
    /// How long presence notices may wait: the configured interval, or longer with
    /// many online, so that the round of writes they cause (one per connection)
    /// takes at most about 5% of the loop's time: 20 times what a round to everyone
    /// costs as measured lately (up to 2 s), and at least 1 ms per 20 users (half a
    /// second at 10,000). A message from a newcomer still sends them at once.
    pub(crate) fn presence_interval(&self) -> u64 {
        if self.cfg.presence_interval_ms == 0 {
            return 0;
        }
        let online = self.online.len();
        let measured = self.write_cost_us.map_or(0, |us| {
            let round_ms = online as f64 * us / 1000.0;
            ((round_ms * PRESENCE_ROUNDS_SHARE) as u64).min(MAX_PRESENCE_INTERVAL_MS)
        });
        self.cfg
            .presence_interval_ms
            .max(online as u64 / PRESENCE_USERS_PER_MS)
            .max(measured)
    }
    /// Notes a presence notice for everyone (see [`crate::hub::presence`]).
    pub(crate) fn note_presence(&mut self, user_id: i64, status: u8, name: &str, now: Now) {
        self.presence.note(user_id, status, name, now.mono_ms);
    }
    /// `user_id` logged in again, telling nobody: its new connection gets only the
    /// notices noted after its login reply.
    pub(crate) fn mark_presence(&mut self, user_id: i64) {
        self.presence.mark(user_id);
    }
    /// `user` went offline (here or on another node): announced at the end of the turn.
    pub(crate) fn note_departure(&mut self, user: i64, name: Rc<str>) {
        self.departures.push((user, name));
    }
    /// Queues a password-hashing job (login or registration), which the sessions
    /// admitted (see `Sessions::submit_hash`).
    pub(crate) fn submit_hashing(&mut self, key: usize, kind: JobKind) {
        self.hash_jobs += 1;
        self.submit_always(Some(key), kind);
    }

    /// Queues a job whatever the load (removals of delivered messages, which are
    /// bounded by the deliveries that caused them).
    pub(crate) fn submit_always(&mut self, key: Option<usize>, kind: JobKind) {
        self.jobs_in_flight += 1;
        let conn = key.map(|k| self.conn_ref(k));
        self.jobs.push_back(Job { conn, kind });
    }
    /// Queues a store job for a worker if the pool has room.
    pub(crate) fn submit(&mut self, key: Option<usize>, kind: JobKind) -> bool {
        if self.store_jobs_in_flight() >= self.cfg.max_jobs {
            // Counted, and logged in the summary: a storm must not flood the log.
            self.summary.jobs_refused += 1;
            log::debug!("store job queue full: refusing {kind:?}");
            return false;
        }
        self.submit_always(key, kind);
        true
    }
    /// Takes a place in the history queue (`HubConfig::history_reads`) for a page to
    /// be read, if there is one: counted in flight from now, queued for a worker by
    /// [`Core::queue_history_read`] (at once, or once the appends before it are done).
    pub(crate) fn reserve_history_read(&mut self) -> bool {
        if self.history_reads >= self.cfg.history_reads {
            self.summary.history_refused += 1;
            return false;
        }
        self.history_reads += 1;
        self.jobs_in_flight += 1;
        true
    }
    /// Hands a page's reading, its place taken, to a worker; if the connection has
    /// gone meanwhile, gives the place back.
    pub(crate) fn queue_history_read(&mut self, conn: ConnRef, kind: JobKind) {
        if self.get(conn).is_some() {
            self.jobs.push_back(Job {
                conn: Some(conn),
                kind,
            });
        } else {
            self.history_read_done();
            self.jobs_in_flight = self.jobs_in_flight.saturating_sub(1);
        }
    }
    /// A history page's reading ended (read, failed, refused unrun, or not started).
    pub(crate) fn history_read_done(&mut self) {
        self.history_reads = self.history_reads.saturating_sub(1);
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
                Some(id) => log::info!("conn {key} ({}, user {id}) closing: {reason}", conn.peer()),
                None => log::debug!("conn {key} ({}) closing: {reason}", conn.peer()),
            }
        }
        if !flush || conn.out.is_empty() {
            self.closes.push(me);
        } else {
            self.arm(key, me.generation, deadline_ms);
        }
        let conn = &self.conns[key];
        if let Session::Online { user_id, .. } = conn.session
            && !conn.awaiting.is_empty()
        {
            self.lingering.insert(user_id, me);
        }
        self.go_offline(key, now);
    }
    /// Takes `key` offline if it holds its user's session. The others are told at the
    /// end of the turn ([`Hub::announce_departures`]): when many leave at once, nobody
    /// leaving is sent the others' departures. The one place a departure is noted.
    pub(crate) fn go_offline(&mut self, key: usize, _now: Now) {
        let conn = &mut self.conns[key];
        let Session::Online { user_id, name } = &conn.session else {
            return;
        };
        let (user_id, name) = (*user_id, name.clone());
        let me = ConnRef {
            key,
            generation: conn.generation,
        };
        if self.online.remove_if(user_id, me) {
            log::info!("user {user_id} offline");
            self.logouts.push(user_id);
            self.departures.push((user_id, name));
        }
    }
    pub(crate) fn log_summary(&mut self) {
        let s = std::mem::take(&mut self.summary);
        let mut parts = Vec::new();
        let mut add = |n: u64, what: &str| {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        };
        add(s.conns_refused, "connections refused (server full)");
        add(
            s.conns_refused_per_addr,
            "connections refused (too many from one address)",
        );
        add(
            s.frames_refused,
            "frames refused (not logged in, or too fast)",
        );
        add(
            s.login_rate_refused,
            "logins/registrations over the per-address rate",
        );
        add(
            s.hash_refused,
            "logins/registrations refused as busy (hashing wait too long or queue full)",
        );
        add(s.jobs_refused, "requests refused (store job queue full)");
        add(
            s.history_refused,
            "history pages refused (history queue full, or over the per-user rate)",
        );
        add(
            s.jobs_expired,
            "requests that waited past the job timeout for a worker",
        );
        add(s.store_errors, "requests failed on storage errors");
        add(
            s.history_lost,
            "history entries lost (storage failed or too slow; live delivery went on)",
        );
        let last = if s.store_errors > 0 {
            format!("; last storage error: {}", s.last_store_error)
        } else {
            String::new()
        };
        log::warn!("refused or failed: {}{last}", parts.join(", "));
    }
    /// The reactor wrote `written` connections' output in one round, in `took`: what
    /// one costs (the system calls, the kernel's copying, waking the readers) sets how
    /// long presence notices wait with many online. Small rounds are not counted.
    pub(crate) fn note_round(&mut self, written: usize, took: std::time::Duration) {
        if written < ROUND_SAMPLE {
            return;
        }
        let us = took.as_secs_f64() * 1e6 / written as f64;
        self.write_cost_us = Some(match self.write_cost_us {
            Some(avg) => avg + (us - avg) / 8.0,
            None => us,
        });
    }
}

/// The core as a component sees it, with the counters (which the hub keeps in a field
/// of its own, [`super::Hub::stats`]).
///
/// A component sees the core only through these methods: the shared state's fields
/// are the router's.
pub(crate) struct Cx<'a> {
    core: &'a mut Core,
    stats: &'a mut Stats,
}

impl<'a> Cx<'a> {
    #[inline]
    pub(super) fn new(core: &'a mut Core, stats: &'a mut Stats) -> Cx<'a> {
        Cx { core, stats }
    }
}

impl Cx<'_> {
    /// The whole shared state, read-only: for the few lookups that span it (who is
    /// online everywhere, whether jobs may go).
    #[inline]
    pub(crate) fn core(&self) -> &Core {
        self.core
    }

    /// The limits and timings.
    #[inline]
    pub(crate) fn cfg(&self) -> &HubConfig {
        &self.core.cfg
    }

    /// Connection `key`'s state (a live key: the caller holds it from an input).
    #[inline]
    pub(crate) fn conn(&self, key: usize) -> &Conn {
        &self.core.conns[key]
    }

    /// Connection `key`'s state, to change what the component keeps there.
    #[inline]
    pub(crate) fn conn_mut(&mut self, key: usize) -> &mut Conn {
        &mut self.core.conns[key]
    }

    /// Every connection, read-only.
    pub(crate) fn conns(&self) -> impl Iterator<Item = (usize, &Conn)> + '_ {
        self.core.conns.iter()
    }

    /// `r`'s state, if it is still there.
    pub(crate) fn get(&self, r: ConnRef) -> Option<&Conn> {
        self.core.get(r)
    }

    pub(crate) fn conn_ref(&self, key: usize) -> ConnRef {
        self.core.conn_ref(key)
    }

    /// Who is online here.
    #[inline]
    pub(crate) fn online(&self) -> &Registry {
        &self.core.online
    }

    /// Puts `user` online at `entry`; returns the entry it replaced, if any.
    pub(crate) fn put_online(&mut self, user: i64, entry: OnlineEntry) -> Option<OnlineEntry> {
        self.core.online.insert(user, entry)
    }

    /// Takes `user` offline if still online at `conn`, telling nobody.
    pub(crate) fn take_offline(&mut self, user: i64, conn: ConnRef) -> bool {
        self.core.online.remove_if(user, conn)
    }

    /// The users with a login in flight here.
    pub(crate) fn users_logging_in(&self) -> impl Iterator<Item = i64> + '_ {
        self.core.logging_in.keys().copied()
    }

    pub(crate) fn is_logging_in(&self, user: i64) -> bool {
        self.core.is_logging_in(user)
    }

    /// A login is in flight for `user` on `key`.
    pub(crate) fn login_started(&mut self, key: usize, user: i64) {
        self.core.login_started(key, user);
    }

    /// The login in flight on `key` was answered without waiting for its result any
    /// longer (the result is dropped when it comes): no longer in flight.
    pub(crate) fn login_given_up(&mut self, key: usize) {
        let conn = &mut self.core.conns[key];
        if let Some(Pending::Login { user_id }) = conn.pending {
            conn.pending = None;
            self.core.unmark_login(user_id);
        }
    }

    /// The counters.
    #[inline]
    pub(crate) fn stats(&mut self) -> &mut Stats {
        self.stats
    }

    /// The refusals and failures counted for the next summary in the log.
    pub(crate) fn summary(&mut self) -> &mut Summary {
        &mut self.core.summary
    }

    /// `PongMes`, encoded once.
    pub(crate) fn pong(&self) -> Rc<[u8]> {
        self.core.pong.clone()
    }

    /// Queues a store job for a worker if the pool has room.
    pub(crate) fn submit(&mut self, key: Option<usize>, kind: JobKind) -> bool {
        self.core.submit(key, kind)
    }

    /// Takes a place in the history queue, if there is one.
    pub(crate) fn reserve_history_read(&mut self) -> bool {
        self.core.reserve_history_read()
    }

    /// Hands a page's reading, its place taken, to a worker.
    pub(crate) fn queue_history_read(&mut self, conn: ConnRef, kind: JobKind) {
        self.core.queue_history_read(conn, kind);
    }

    /// A history page's reading ended.
    pub(crate) fn history_read_done(&mut self) {
        self.core.history_read_done();
    }

    /// Queues a job whatever the load.
    pub(crate) fn submit_always(&mut self, key: Option<usize>, kind: JobKind) {
        self.core.submit_always(key, kind);
    }

    /// Queues a password-hashing job the sessions admitted.
    pub(crate) fn submit_hashing(&mut self, key: usize, kind: JobKind) {
        self.core.submit_hashing(key, kind);
    }

    /// Puts a deadline of connection `key` in the timer heap (see `Core::arm`).
    pub(crate) fn arm(&mut self, key: usize, at_ms: u64) {
        let generation = self.core.conns[key].generation;
        self.core.arm(key, generation, at_ms);
    }

    /// Starts closing `key` (see `Core::close`).
    pub(crate) fn close(&mut self, key: usize, flush: bool, reason: &str, now: Now) {
        self.core.close(key, flush, reason, now);
    }

    /// Takes `key` offline if it holds its user's session (see `Core::go_offline`).
    pub(crate) fn go_offline(&mut self, key: usize, now: Now) {
        self.core.go_offline(key, now);
    }

    /// Notes a presence notice for everyone.
    pub(crate) fn note_presence(&mut self, user: i64, status: u8, name: &str, now: Now) {
        self.core.note_presence(user, status, name, now);
    }

    /// `user` logged in again, telling nobody.
    pub(crate) fn mark_presence(&mut self, user: i64) {
        self.core.mark_presence(user);
    }

    /// `user` went offline (here or on another node): announced at the end of the turn.
    pub(crate) fn note_departure(&mut self, user: i64, name: Rc<str>) {
        self.core.note_departure(user, name);
    }

    /// Closes the connections whose queues overflowed. Called at the end of every
    /// input.
    pub(crate) fn close_overflowed(&mut self, now: Now) {
        while let Some(key) = self.core.overflowed.pop() {
            if self
                .core
                .conns
                .get(key)
                .is_some_and(|c| c.closing.is_none())
            {
                self.stats.slow_consumers_dropped += 1;
                let limit = self.core.cfg.max_outbuf;
                let reason = format!("slow consumer: output queue over {limit} bytes");
                log::warn!("conn {key} ({}): {reason}", self.core.conns[key].peer());
                self.core.close(key, false, &reason, now);
            }
        }
    }

    /// The output side of the hub, borrowed apart from the registry.
    fn outputs(&mut self) -> (Outputs<'_>, &Registry) {
        let out = Outputs {
            conns: &mut self.core.conns,
            turn: &mut self.core.turn,
            writes: &mut self.core.writes,
            overflowed: &mut self.core.overflowed,
            stats: self.stats,
            limit: self.core.cfg.max_outbuf,
        };
        (out, &self.core.online)
    }
    /// Encodes `msg` and queues it on one connection as the answer to its request. A
    /// refusal or notice (`ErrorResMes`) to a seed client that is logged in goes as a
    /// message from the server, which it shows (before login it reads every answer
    /// as the `LoginResMes` or `RegisterResMes` it waits for: code and text show).
    pub(crate) fn reply(&mut self, key: usize, msg: &ServerMessage) -> bool {
        if let ServerMessage::Error(res) = msg {
            let conn = self.conn(key);
            if conn.is_seed_client() && conn.is_online() {
                return self.reply_frame(key, seed_notice_frame(res));
            }
        }
        self.reply_frame(key, msg.encode())
    }
    /// Queues an encoded answer to the connection's own request.
    pub(crate) fn reply_frame(&mut self, key: usize, frame: Vec<u8>) -> bool {
        let frame: Rc<[u8]> = frame.into();
        self.outputs().0.deliver(key, &frame, true)
    }
    /// Queues an answer to `key`'s own request made of `parts`, which the caller
    /// fitted to what the client reads.
    pub(crate) fn reply_parts(&mut self, key: usize, parts: &[Part]) -> bool {
        self.outputs().0.deliver_reply_parts(key, parts)
    }
    /// Sends `ErrorResMes`.
    pub(crate) fn error(&mut self, key: usize, code: u16, text: &str) {
        self.count_refusal(code);
        self.reply(key, &ServerMessage::Error(CodeRes::new(code, text)));
    }
    pub(crate) fn count_refusal(&mut self, c: u16) {
        match c {
            code::TOO_MANY => self.stats.refused_too_many += 1,
            code::TOO_LARGE => self.stats.refused_too_large += 1,
            _ => {}
        }
    }
    /// Sends `ErrorResMes` with a time to try again, in seconds.
    pub(crate) fn error_retry(&mut self, key: usize, code: u16, text: &str, secs: u64) {
        self.count_refusal(code);
        let mut res = CodeRes::new(code, text);
        res.retry_after = Some(secs);
        self.reply(key, &ServerMessage::Error(res));
    }
    /// Queues a shared frame on one connection. Returns false if the connection is
    /// closing or its queue overflowed (it is then closed as a slow consumer).
    pub(crate) fn deliver(&mut self, key: usize, frame: &Rc<[u8]>) -> bool {
        self.outputs().0.deliver(key, frame, false)
    }
    /// Delivers a message from one user to another: after the presence notices
    /// waiting, so that its sender is known to be online.
    pub(crate) fn deliver_message(&mut self, key: usize, frame: &Rc<[u8]>) -> bool {
        self.send_presence();
        self.deliver(key, frame)
    }
    /// Queues `full` on every online connection but `except` that can read it, and
    /// `cut` (a shorter version, shared too) on those that cannot. Returns how many
    /// got the cut version (or, with none, nothing). A small frame joins the turn's
    /// shared buffer ([`TurnBuf`]), a longer one is shared on its own.
    pub(crate) fn broadcast_fitted(
        &mut self,
        except: Option<usize>,
        full: Vec<u8>,
        cut: Option<&Rc<[u8]>>,
    ) -> usize {
        // Who came online is told before what they say.
        self.send_presence();
        let full = if full.len() <= TURN_FRAME {
            if self.core.turn.is_full() {
                self.core.seal_output();
            }
            let (start, end) = self.core.turn.add(&full);
            Shared::Turn { start, end }
        } else {
            Shared::Own(full.into())
        };
        let (mut out, online) = self.outputs();
        let mut cut_for = 0;
        // Overflowing queues are only noted here (closing them changes the registry
        // being iterated); `settle` closes them afterwards.
        for (_, e) in online.iter() {
            if Some(e.conn.key) == except {
                continue;
            }
            if !out.deliver_fitted(e.conn.key, &full, cut) {
                cut_for += 1;
            }
        }
        cut_for
    }
    /// Sends the presence notices waiting, to everyone online: one shared chunk each,
    /// and to those who came online meanwhile, what came after them.
    pub(crate) fn send_presence(&mut self) {
        if self.core.presence.is_empty() {
            return;
        }
        let batch = self.core.presence.take();
        let compact = &batch.compact;
        let (mut out, online) = self.outputs();
        for (user_id, e) in online.iter() {
            let key = e.conn.key;
            let is_compact = out.conns[key].compact();
            if batch.concerns(user_id) {
                let (from, n) = batch.since_own(user_id);
                if n == 0 {
                    continue;
                }
                if !is_compact {
                    out.deliver_chunk(key, Part::tail(batch.all.clone(), from), n);
                    continue;
                }
                let (head, from, frames) = compact.since(batch.len() - n);
                let tail = Part::tail(compact.all.clone(), from);
                match head {
                    Some(head) => {
                        out.deliver_chunk_parts(key, [Part::whole(head.into()), tail], frames)
                    }
                    None if frames > 0 => out.deliver_chunk_parts(key, [tail], frames),
                    None => {}
                }
            } else if is_compact {
                let frames = compact.frames();
                out.deliver_chunk(key, Part::whole(compact.all.clone()), frames);
            } else {
                out.deliver_chunk(key, Part::whole(batch.all.clone()), batch.len());
            }
        }
    }
    pub(crate) fn presence_if_due(&mut self, now: Now) {
        if self
            .core
            .presence
            .due_at(self.core.presence_interval())
            .is_some_and(|at| at <= now.mono_ms)
        {
            self.send_presence();
        }
    }
    /// Counts a storage failure for the summary (one log line per interval, however
    /// many requests an outage fails).
    pub(crate) fn store_error(&mut self, text: &str) {
        self.stats.store_errors += 1;
        self.core.summary.store_errors += 1;
        self.core.summary.last_store_error = text.to_string();
        log::debug!("storage error: {text}");
    }
}

/// The frame of a private message for the client of `to`: whole, or cut short (the
/// second value) if it cannot read it whole. A seed client, which shows no
/// `SmsPrivateMes`, gets it as an `SmsMes` whose content says whom it is from and that
/// it is private (see [`seed_private_frame`]).
pub(crate) fn private_frame_for(
    to: &Conn,
    m: &OfflineMsg,
    offline_id: Option<u64>,
) -> (Vec<u8>, bool) {
    let limit = to.max_frame();
    let seed = to.is_seed_client();
    let encode = |content: &str| {
        if seed {
            seed_private_frame(m, content, offline_id.is_some())
        } else {
            private_frame(m, content, offline_id)
        }
    };
    let frame = encode(&m.content);
    if frame_fit::fits(&frame, limit) {
        return (frame, false);
    }
    match frame_fit::cut_to_fit(&m.content, limit, encode) {
        Some(cut) => (cut, true),
        None => (frame, false),
    }
}

fn private_frame(m: &OfflineMsg, content: &str, offline_id: Option<u64>) -> Vec<u8> {
    ServerMessage::Private(SmsPrivateMes {
        user_id: m.from,
        user_name: m.from_name.clone(),
        to_user_id: m.to,
        content: content.to_string(),
        time: m.time,
        offline: offline_id.is_some(),
        offline_id,
        ..SmsPrivateMes::default()
    })
    .encode()
}

/// A private message as a seed client shows it: an `SmsMes` from its sender whose
/// content starts `[private from scott (100)] ` (`[private from scott (100), sent while
/// you were offline] ` for a stored one).
pub(crate) fn seed_private_frame(m: &OfflineMsg, content: &str, offline: bool) -> Vec<u8> {
    let when = if offline {
        ", sent while you were offline"
    } else {
        ""
    };
    ServerMessage::Sms(SmsMes {
        content: format!(
            "[private from {} ({}){when}] {content}",
            m.from_name, m.from
        ),
        user_id: m.from,
        user_name: m.from_name.clone(),
        time: Some(m.time),
        ..SmsMes::default()
    })
    .encode()
}

/// The id and name of the sender of the server's notices to a seed client.
pub const SERVER_ID: i64 = 0;
pub const SERVER_NAME: &str = "server";

/// A refusal or notice (`ErrorResMes`) as a seed client shows it, once logged in: an
/// `SmsMes` from the server (`userId` 0, `userName` "server") whose content is
/// `[server notice 429] <the error's text>` (and ` (try again in N s)` with a retry
/// time).
pub(crate) fn seed_notice_frame(res: &CodeRes) -> Vec<u8> {
    let mut content = format!("[server notice {}] {}", res.code, res.error);
    if let Some(secs) = res.retry_after {
        content.push_str(&format!(" (try again in {secs} s)"));
    }
    ServerMessage::Sms(SmsMes {
        content,
        user_id: SERVER_ID,
        user_name: SERVER_NAME.to_string(),
        ..SmsMes::default()
    })
    .encode()
}

/// Answers a private message: `SmsResMes`, echoing the message's `msgId`.
pub(crate) fn sms_res_id(
    cx: &mut Cx<'_>,
    key: usize,
    code: u16,
    error: &str,
    msg_id: Option<String>,
) {
    let res = CodeRes {
        msg_id,
        ..CodeRes::new(code, error)
    };
    cx.reply(key, &ServerMessage::SmsRes(res));
}

/// The parts of the hub that queuing output touches, borrowed apart from the registry
/// so that a broadcast can walk the registry while it queues.
struct Outputs<'a> {
    conns: &'a mut Slab<Conn>,
    turn: &'a mut TurnBuf,
    writes: &'a mut Vec<ConnRef>,
    overflowed: &'a mut Vec<usize>,
    stats: &'a mut Stats,
    limit: usize,
}

impl Outputs<'_> {
    /// Queues `full` on `key` if its client can read it, else `cut` (if any, and if it
    /// fits). Returns whether it got `full`. One look-up of the connection: this is
    /// the inner loop of every broadcast.
    #[inline]
    fn deliver_fitted(&mut self, key: usize, full: &Shared, cut: Option<&Rc<[u8]>>) -> bool {
        let limit = self.limit;
        let conn = &mut self.conns[key];
        let max = conn.max_frame();
        if frame_fit::fits_len(full.len(), max) {
            let turn = &mut *self.turn;
            queue(
                conn,
                key,
                self.writes,
                self.overflowed,
                self.stats,
                |q| match *full {
                    Shared::Turn { start, end } => {
                        if q.push_turn(turn, start, end, limit)? {
                            turn.touched(key);
                        }
                        Ok(())
                    }
                    Shared::Own(ref frame) => q.push(frame.clone(), limit),
                },
            );
            return true;
        }
        if let Some(cut) = cut
            && frame_fit::fits(cut, max)
        {
            queue(conn, key, self.writes, self.overflowed, self.stats, |q| {
                q.push(cut.clone(), limit)
            });
        }
        false
    }

    /// Queues `part`, presence notices (`frames` of them, each small enough for any
    /// client: `NotifyUserStatusMes` or `PresenceMes` frames), on `key`.
    fn deliver_chunk(&mut self, key: usize, part: Part, frames: usize) {
        self.deliver_chunk_parts(key, [part], frames);
    }

    /// [`Outputs::deliver_chunk`] for a chunk in several parts, queued all or none.
    fn deliver_chunk_parts<const N: usize>(&mut self, key: usize, parts: [Part; N], frames: usize) {
        let limit = self.limit;
        let conn = &mut self.conns[key];
        if queue(conn, key, self.writes, self.overflowed, self.stats, |q| {
            q.push_parts(parts, limit)
        }) {
            self.stats.deliveries += (frames as u64).saturating_sub(1);
        }
    }

    /// Queues `frame` on `key`; a `reply` (the answer to the client's own request) is
    /// accepted whatever its size while what the client left unread is within the
    /// limit. A frame the client could not read is never queued.
    fn deliver(&mut self, key: usize, frame: &Rc<[u8]>, reply: bool) -> bool {
        let limit = self.limit;
        let conn = &mut self.conns[key];
        if !frame_fit::fits(frame, conn.max_frame()) {
            // Callers fit what they send; this is the last guard, so that no frame
            // ever crashes a client that cannot read it.
            log::warn!(
                "conn {key}: a frame of {} bytes withheld: the client reads at most {}",
                frame.len() - proto::HEADER_LEN,
                conn.max_frame()
            );
            return true;
        }
        queue(conn, key, self.writes, self.overflowed, self.stats, |q| {
            if reply {
                q.push_reply(frame.clone(), limit)
            } else {
                q.push(frame.clone(), limit)
            }
        })
    }

    /// Queues an answer to `key`'s own request made of `parts`, which the caller
    /// fitted to what the client reads.
    fn deliver_reply_parts(&mut self, key: usize, parts: &[Part]) -> bool {
        let limit = self.limit;
        let conn = &mut self.conns[key];
        queue(conn, key, self.writes, self.overflowed, self.stats, |q| {
            q.push_reply_parts(parts, limit)
        })
    }
}

/// A broadcast frame: a range of the turn's buffer, or shared on its own.
enum Shared {
    Turn { start: usize, end: usize },
    Own(Rc<[u8]>),
}

impl Shared {
    fn len(&self) -> usize {
        match self {
            Shared::Turn { start, end } => end - start,
            Shared::Own(frame) => frame.len(),
        }
    }
}

/// Queues output known to fit on one connection with `push`, keeping the list of
/// connections to write and of those that overflowed.
#[inline]
fn queue(
    conn: &mut Conn,
    key: usize,
    writes: &mut Vec<ConnRef>,
    overflowed: &mut Vec<usize>,
    stats: &mut Stats,
    push: impl FnOnce(&mut OutQueue) -> Result<(), Overflow>,
) -> bool {
    if matches!(conn.closing, Some(Closing { flush: false, .. })) {
        return false;
    }
    let was_empty = conn.out.is_empty();
    match push(&mut conn.out) {
        Ok(()) => {
            if was_empty {
                writes.push(ConnRef {
                    key,
                    generation: conn.generation,
                });
            }
            stats.deliveries += 1;
            true
        }
        Err(Overflow) => {
            if conn.closing.is_none() {
                overflowed.push(key);
            }
            false
        }
    }
}
