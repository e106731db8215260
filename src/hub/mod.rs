//! The deterministic heart of the server: every connection's state machine, the
//! online registry, and the jobs waiting for workers, with no sockets, threads or
//! clocks of its own.
//!
//! Inputs go in through `accept` and `handle_*` (bytes read, a peer hung up, a store
//! result, time passing); the socket's write is passed in to [`Hub::write`], which
//! reports what happened; outputs are drained through `poll_*` (jobs to run,
//! connections with output to write, connections that may read again, connections to
//! close), and [`Hub::poll_timeout`] says when the hub next needs the loop. The reactor
//! is a thin loop around this and never touches a connection's state; the tests drive
//! it the same way, feeding frames and job results in whatever order they choose.
//!
//! The message handlers live in `handlers/`, one file per command, as further
//! `impl Hub` blocks behind one dispatcher. A connection's state is [`crate::conn`]'s
//! [`Conn`], whose fields the core reads and the reactor never sees.
#![forbid(unsafe_code)]

pub(crate) mod handlers;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use slab::Slab;

use crate::admin::Kick;
use crate::admission::Admission;
use crate::conn::{
    Closing, Conn, Flush, OutQueue, Overflow, Pending, Session, TURN_FRAME, TurnBuf,
};
use crate::fit;
use crate::job::{Job, JobKind, JobResult, Outcome};
use crate::metrics;
pub use crate::metrics::Stats;
use crate::offline::Action;
use crate::presence::Presence;
use crate::proto::{self, ClientMessage, CodeRes, ServerMessage, code, status};
use crate::rate::{PerAddr, addr_key};
use crate::roster::Roster;
pub use crate::types::Now;
use crate::types::{ConnRef, Part};
use crate::users::Registry;

/// Limits and timings. The server's command line sets them (`chat-server --help`
/// names each); these defaults are the command line's.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Largest frame body from a logged-in client.
    pub max_frame: usize,
    /// Largest frame body before login.
    pub prelogin_max_frame: usize,
    /// Largest output queue per connection, in bytes.
    pub max_outbuf: usize,
    /// Connections held at once; more are refused with `ErrorResMes` 503. 0: no limit
    /// here (the server sets it from the descriptor limit).
    pub max_conns: usize,
    /// Connections held at once from one address (an IPv6 /64 counts as one); more
    /// are refused with `ErrorResMes` 503. 0: no limit.
    pub max_conns_per_addr: usize,
    /// Store jobs queued or running at once, over all connections, password hashes
    /// not counted: a storm of logins does not turn private messages away.
    pub max_jobs: usize,
    /// Password hashes (logins, registrations) queued or running at once, besides the
    /// estimate that admits one only if it can be served within the job timeout.
    pub max_hash_jobs: usize,
    /// What one hash costs, as timed when the server started: the wait estimate's
    /// first figure, before any login has been hashed (None: nothing until then).
    pub hash_cost: Option<std::time::Duration>,
    /// Threads hashing passwords (logins and registrations).
    pub hash_workers: usize,
    /// Longest a store job may wait for a worker (`--job-timeout`). A login or
    /// registration whose estimated wait is longer is refused at once as busy.
    pub job_timeout_ms: u64,
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
    /// How often refusals and storage errors are summed up in the log.
    pub summary_interval_ms: u64,
    /// Messages kept per conversation (the group's, each pair's) for `HistoryMes`
    /// (`--history`); 0: no history.
    pub history: usize,
    /// History entries wait at most this long after the first of them before they
    /// go to the store together, as one commit (sooner when a page is asked for, or
    /// when [`handlers::history::GATHER_ENTRIES`] or
    /// [`handlers::history::GATHER_CONTENT_BYTES`] wait). 0: at the end of each turn.
    pub history_gather_ms: u64,
    /// Presence notices (who came online, who left) are sent together at most this
    /// long after the first of them, or at once before any message from one user to
    /// another (see [`crate::presence`]). 0: at the end of each turn.
    pub presence_interval_ms: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_frame: proto::DEFAULT_MAX_FRAME,
            prelogin_max_frame: 8 * 1024,
            max_outbuf: 1024 * 1024,
            max_conns: 0,
            max_conns_per_addr: 64,
            max_jobs: 1024,
            max_hash_jobs: 16_384,
            hash_cost: None,
            hash_workers: 2,
            job_timeout_ms: 30_000,
            login_timeout_ms: 30_000,
            close_linger_ms: 2_000,
            max_login_failures: 5,
            offline_batch: 100,
            msg_rate: 20,
            login_rate: 30,
            summary_interval_ms: 10_000,
            history: 1000,
            history_gather_ms: 100,
            presence_interval_ms: 50,
        }
    }
}

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
}

impl Summary {
    fn is_empty(&self) -> bool {
        *self == Summary::default()
    }
}

/// What [`Hub::write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Nothing left to write.
    Drained,
    /// The socket would block: write again when it is writable.
    Blocked,
    /// The write failed; the connection is closing.
    Failed,
}

/// A timer: when, and for which connection.
type Deadline = Reverse<(u64, usize, u32)>;

pub struct Hub {
    pub(crate) cfg: HubConfig,
    pub(crate) conns: Slab<Conn>,
    next_gen: u32,
    pub(crate) online: Registry,
    jobs: VecDeque<Job>,
    jobs_in_flight: usize,
    /// Which logins and registrations are admitted, given what hashing delivers.
    pub(crate) admission: Admission,
    /// Connections whose queue went from empty to non-empty: to be written this turn.
    writes: Vec<ConnRef>,
    /// The stretch of the round of writes under way (see [`Hub::poll_write`]).
    stretch: Vec<ConnRef>,
    /// Connections that stopped reading for a job and may read again.
    reads: Vec<ConnRef>,
    /// Connections to close at the end of this turn.
    closes: Vec<ConnRef>,
    /// Connections whose queue overflowed during the current operation.
    overflowed: Vec<usize>,
    /// Login timeouts and close deadlines, soonest first. An entry whose connection
    /// has gone or moved on is skipped when it comes up.
    deadlines: BinaryHeap<Deadline>,
    /// Connections open per client address (IPv6: per /64).
    per_addr: HashMap<IpAddr, u32>,
    /// Logins in flight, counted by user: a message stored for one of them meanwhile
    /// is fetched once it is online.
    pub(crate) logging_in: HashMap<i64, u32>,
    /// Hash-costing requests per client address.
    pub(crate) login_limits: PerAddr,
    /// Users who went offline this turn, not yet announced.
    departures: Vec<(i64, Rc<str>)>,
    /// Presence notices waiting to be sent to everyone.
    presence: Presence,
    /// What writing one connection's output has cost the loop lately, in µs: a moving
    /// average over rounds of writes to many (see `Hub::note_round`).
    write_cost_us: Option<f64>,
    /// Everyone online, encoded as the login reply lists them. Dropped when logins
    /// stop for a while (it costs some 50 bytes per user online), built again on the
    /// next one.
    pub(crate) roster: Roster,
    /// When a login last used the roster.
    pub(crate) roster_used_ms: u64,
    /// `PongMes`, encoded once.
    pub(crate) pong: Rc<[u8]>,
    /// Where small frames are copied together for one write (see `OutQueue::write_with`).
    gather: Vec<u8>,
    /// The small broadcast frames queued since the last write, in one buffer.
    turn: TurnBuf,
    /// When buffers are next trimmed.
    next_housekeeping_ms: u64,
    /// When the summary of refusals may next be logged.
    next_summary_ms: u64,
    pub(crate) summary: Summary,
    /// This node's view of the cluster, if it is one of several.
    pub(crate) cluster: Option<crate::cluster::Cluster>,
    /// History entries waiting to be appended.
    appends: handlers::history::Appends,
    /// Logins in flight of users an operator banned or removed meanwhile: refused
    /// when their result comes, whatever it says.
    pub(crate) revoked: HashMap<ConnRef, Kick>,
    /// Removals of delivered offline messages in flight, by user (see
    /// `handlers::private`).
    pub(crate) removing: HashMap<i64, handlers::private::Removing>,
    /// The check of this node's users for bans after its cluster link came back.
    pub(crate) bans_check: handlers::admin::BansCheck,
    pub stats: Stats,
}

/// With this many users online or more per millisecond of presence interval, the
/// interval grows (see `Hub::presence_interval`).
const PRESENCE_USERS_PER_MS: u64 = 20;
/// A round of presence notices to everyone takes at most this share of the loop's
/// time: the interval is at least this many times as long as the round.
const PRESENCE_ROUNDS_SHARE: f64 = 20.0;
/// The longest the presence interval grows to, whatever a round costs.
const MAX_PRESENCE_INTERVAL_MS: u64 = 2_000;
/// Rounds of writes to fewer connections than this say little of what one costs.
const ROUND_SAMPLE: usize = 100;

/// How long the roster is kept after the last login (see `Hub::roster`).
const ROSTER_KEEP_MS: u64 = 2_000;

/// How often idle buffers are given back and per-address limits forgotten.
const HOUSEKEEPING_MS: u64 = 1_000;

impl Hub {
    pub fn new(cfg: HubConfig) -> Hub {
        Hub {
            admission: Admission::new(cfg.hash_workers, cfg.job_timeout_ms, cfg.hash_cost),
            cfg,
            conns: Slab::new(),
            next_gen: 0,
            online: Registry::default(),
            jobs: VecDeque::new(),
            jobs_in_flight: 0,
            writes: Vec::new(),
            stretch: Vec::new(),
            reads: Vec::new(),
            closes: Vec::new(),
            overflowed: Vec::new(),
            deadlines: BinaryHeap::new(),
            per_addr: HashMap::new(),
            logging_in: HashMap::new(),
            login_limits: PerAddr::default(),
            departures: Vec::new(),
            presence: Presence::default(),
            write_cost_us: None,
            roster: Roster::default(),
            roster_used_ms: 0,
            pong: ServerMessage::Pong.encode().into(),
            gather: Vec::new(),
            turn: TurnBuf::default(),
            next_housekeeping_ms: 0,
            next_summary_ms: 0,
            summary: Summary::default(),
            cluster: None,
            appends: Default::default(),
            revoked: HashMap::new(),
            removing: HashMap::new(),
            bans_check: Default::default(),
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    // ----- inputs -------------------------------------------------------------------

    /// A new connection from `peer`. Over the connection limit, or over the limit for
    /// its address, it is refused: the error frame to write to it before closing
    /// comes back instead.
    pub fn accept(&mut self, peer: SocketAddr, now: Now) -> Result<ConnRef, Rc<[u8]>> {
        let addr = addr_key(peer.ip());
        let from_addr = self.per_addr.get(&addr).copied().unwrap_or(0) as usize;
        let refusal = if self.cfg.max_conns > 0 && self.conns.len() >= self.cfg.max_conns {
            self.summary.conns_refused += 1;
            Some(format!(
                "server full ({} connections); try again later",
                self.cfg.max_conns
            ))
        } else if self.cfg.max_conns_per_addr > 0 && from_addr >= self.cfg.max_conns_per_addr {
            self.summary.conns_refused_per_addr += 1;
            Some(format!(
                "too many connections from your address (at most {}); try again later",
                self.cfg.max_conns_per_addr
            ))
        } else {
            None
        };
        if let Some(text) = refusal {
            let mut res = CodeRes::new(code::UNAVAILABLE, text);
            res.retry_after = Some(1);
            return Err(ServerMessage::Error(res).encode().into());
        }
        *self.per_addr.entry(addr).or_insert(0) += 1;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let generation = self.next_gen;
        let conn = Conn::new(generation, peer, now.mono_ms, self.cfg.msg_rate);
        let key = self.conns.insert(conn);
        self.stats.accepted += 1;
        self.arm(
            key,
            generation,
            now.mono_ms.saturating_add(self.cfg.login_timeout_ms),
        );
        Ok(ConnRef { key, generation })
    }

    /// Bytes read from `r`'s socket.
    pub fn handle_input(&mut self, r: ConnRef, data: &[u8], now: Now) {
        self.stats.bytes_in += data.len() as u64;
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
    pub fn handle_result(&mut self, mut res: JobResult, now: Now) {
        self.jobs_in_flight = self.jobs_in_flight.saturating_sub(1);
        if res.took.is_none() {
            self.summary.jobs_expired += 1;
        }
        let hashing = matches!(res.outcome, Outcome::Login(_) | Outcome::Register(_));
        if let Some(took) = res.took {
            self.stats.job_seconds[usize::from(!hashing)].observe(took);
        }
        if self.history_outcome(&mut res.outcome) {
            return;
        }
        if hashing {
            let waited = self
                .admission
                .completed(now.mono_ms, res.took, res.outcome.hashed());
            self.stats
                .hash_latency
                .observe(std::time::Duration::from_millis(waited));
        }
        if let Outcome::AckOffline {
            user_id, result, ..
        } = &res.outcome
        {
            self.removal_done(*user_id, result.is_ok());
        }
        if let (Some(r), Outcome::Login(result)) = (res.conn, &mut res.outcome)
            && let Some(kick) = self.revoked.remove(&r)
            && result.is_ok()
        {
            *result = Err(kick.login_error());
        }
        if let Outcome::CheckBans(result) = res.outcome {
            self.bans_checked(result, now);
            self.settle(now);
            return;
        }
        let Some(r) = res.conn else {
            if let Outcome::AckOffline { result: Err(e), .. } = &res.outcome {
                self.store_error(&format!(
                    "offline messages not removed (they will be offered again): {e}"
                ));
            }
            return;
        };
        if let Outcome::Login(_) = res.outcome {
            self.login_settled(r);
        }
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
            Outcome::AckOffline { upto, result, .. } => self.offline_acked(r.key, upto, result),
            Outcome::History(result) => self.history_read(r.key, result, now),
            Outcome::AppendHistory { .. } | Outcome::CheckBans(_) => {}
        }
        self.settle(now);
    }

    /// Writes `r`'s queued output through `write` (the socket's vectored write), until
    /// the queue is empty or the socket would block, and acts on what was written:
    /// stored messages that reached the socket are removed from the store, a
    /// connection that was closing once written closes.
    pub fn write<W>(&mut self, r: ConnRef, now: Now, write: W) -> Written
    where
        W: FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    {
        let Some(conn) = self
            .conns
            .get_mut(r.key)
            .filter(|c| c.generation == r.generation)
        else {
            return Written::Drained;
        };
        if conn.out.is_empty() {
            return Written::Drained;
        }
        self.seal_output();
        let conn = &mut self.conns[r.key];
        let before = conn.out.written_total();
        let res = conn.out.write_with(&mut self.gather, write);
        self.stats.bytes_out += conn.out.written_total() - before;
        if conn.offline.is_active() {
            let action = conn.offline.written(conn.out.written_total());
            self.offline_action(r.key, action);
        }
        let written = match res {
            Ok(Flush::Drained) => {
                if let Some(Closing { flush: true, .. }) = self.conns[r.key].closing {
                    self.closes.push(r);
                }
                Written::Drained
            }
            Ok(Flush::Blocked) => {
                let c = &self.conns[r.key];
                if c.offline.unwritten() {
                    log::debug!(
                        "conn {}: socket full, {} bytes wait, stored messages among them",
                        r.key,
                        c.out.len_bytes(),
                    );
                }
                Written::Blocked
            }
            Err(e) => {
                self.close(r.key, false, &format!("write failed: {e}"), now);
                Written::Failed
            }
        };
        self.settle(now);
        written
    }

    /// Time passed: closes connections that did not log in in time and closing
    /// connections that did not manage to write their last frames; now and then gives
    /// back idle buffers and logs what was refused.
    pub fn handle_timeout(&mut self, now: Now) {
        while let Some(&Reverse((at, key, generation))) = self.deadlines.peek() {
            if at > now.mono_ms {
                break;
            }
            self.deadlines.pop();
            let Some(c) = self
                .conns
                .get_mut(key)
                .filter(|c| c.generation == generation && c.armed_ms == at)
            else {
                // Gone, or superseded by an earlier deadline of the same connection.
                continue;
            };
            c.armed_ms = 0;
            let c = &self.conns[key];
            match c.closing {
                Some(cl) if now.mono_ms >= cl.deadline_ms => {
                    log::debug!("conn {key}: close deadline passed");
                    self.close(key, false, "could not write its last frames in time", now);
                }
                Some(cl) => self.arm(key, generation, cl.deadline_ms),
                None if c.is_online() || matches!(c.pending, Some(Pending::Login { .. })) => {
                    // Logged in (or a login in flight, whose result decides): no
                    // login timeout. A failed login arms it again.
                }
                None => {
                    let due = c.login_clock_ms.saturating_add(self.cfg.login_timeout_ms);
                    if due > now.mono_ms {
                        self.arm(key, generation, due);
                        continue;
                    }
                    let secs = self.cfg.login_timeout_ms / 1000;
                    self.error(
                        key,
                        code::UNAUTHORIZED,
                        &format!("no login within {secs} s"),
                    );
                    self.close(key, true, "login timeout", now);
                }
            }
        }
        if now.mono_ms >= self.next_housekeeping_ms {
            self.housekeeping(now);
        }
        self.cluster_timeouts(now);
        self.presence_if_due(now);
        self.settle(now);
    }

    /// The server is stopping: every connection is closed once its queued output is
    /// written (or at the linger deadline). Nobody is told that anyone went offline,
    /// since everyone is leaving at once.
    pub fn handle_shutdown(&mut self, now: Now) {
        self.online = Registry::default();
        self.departures.clear();
        self.history_last_call();
        self.presence = Presence::default();
        for r in self.refs() {
            self.close(r.key, true, "server shutting down", now);
        }
        self.settle(now);
    }

    // ----- outputs ------------------------------------------------------------------

    /// The next store job to hand to a worker.
    pub fn poll_job(&mut self, now: Now) -> Option<Job> {
        self.flush_history(now);
        self.jobs.pop_front()
    }

    /// When the hub next needs the loop, on the monotonic clock: now if jobs, reads
    /// or events to publish wait; otherwise the next login timeout, close deadline or
    /// housekeeping; `None` if nothing at all is due. Output waiting to be written is
    /// not counted here: when to write is the reactor's call (`has_output`, the flush
    /// interval).
    pub fn poll_timeout(&self, now: Now) -> Option<u64> {
        if !self.jobs.is_empty()
            || self.history_waits(now)
            || !self.reads.is_empty()
            || self.cluster.as_ref().is_some_and(|c| !c.out.is_empty())
        {
            return Some(now.mono_ms);
        }
        let timer = self.deadlines.peek().map(|Reverse((at, _, _))| *at);
        let remote = self.cluster.as_ref().and_then(|c| c.next_deadline());
        let timer = match (timer, remote) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let housekeeping = (!self.conns.is_empty()
            || !self.summary.is_empty()
            || !self.login_limits.is_empty()
            || self.admission.hashing())
        .then_some(self.next_housekeeping_ms);
        let presence = self.presence.due_at(self.presence_interval());
        let history = self.history_due_at();
        [timer, housekeeping, presence, history]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether logins or registrations are waiting for a password hash.
    pub fn hashing(&self) -> bool {
        self.admission.hashing()
    }

    /// When the next round of writes may start (see `Admission::next_flush_at`).
    pub fn next_flush_at(
        &self,
        start: std::time::Instant,
        done: std::time::Instant,
        interval: std::time::Duration,
    ) -> std::time::Instant {
        self.admission.next_flush_at(start, done, interval)
    }

    /// Makes whatever was broadcast since the last write into its shared bytes (see
    /// [`TurnBuf`]): before anything queued is written or looked at.
    pub(crate) fn seal_output(&mut self) {
        self.turn.seal(&mut self.conns);
    }

    /// Whether writes, closes or departures are waiting for the reactor.
    pub fn has_output(&self) -> bool {
        !self.writes.is_empty()
            || !self.stretch.is_empty()
            || !self.closes.is_empty()
            || !self.departures.is_empty()
    }

    /// `r`'s socket can take more after a write that blocked: what it has queued is
    /// written at the next round of writes with everyone else's, not at once. Written
    /// at once, each small opening a slow reader's socket makes would cost a system
    /// call of its own.
    pub fn handle_writable(&mut self, r: ConnRef) {
        if self
            .conns
            .get(r.key)
            .is_some_and(|c| c.generation == r.generation && !c.out.is_empty())
        {
            self.writes.push(r);
        }
    }

    /// The next connection with output to write.
    ///
    /// A round of writes goes in stretches: the connections that had output when the
    /// stretch began, then those that got output meanwhile. Input taken in during a
    /// round (the reactor looks for it, see `Server::flush_and_close`) joins the
    /// output of connections not yet written, in the same write, and a connection
    /// already written gets its share in the next stretch, after all the others: no
    /// one's output waits twice behind another's.
    pub fn poll_write(&mut self) -> Option<ConnRef> {
        if self.stretch.is_empty() {
            std::mem::swap(&mut self.stretch, &mut self.writes);
        }
        self.stretch.pop()
    }

    /// The next connection that may read from its socket again.
    pub fn poll_read(&mut self) -> Option<ConnRef> {
        self.reads.pop()
    }

    /// The next connection to close. Its state is removed and its departure queued
    /// for [`Hub::announce_departures`]; the caller drops the socket.
    pub fn poll_close(&mut self, now: Now) -> Option<ConnRef> {
        while let Some(r) = self.closes.pop() {
            if self.get(r).is_none() {
                continue; // closed twice in one turn
            }
            self.go_offline(r.key, now);
            let conn = self.conns.remove(r.key);
            self.forget(&conn);
            self.stats.closed += 1;
            self.settle(now);
            return Some(r);
        }
        None
    }

    // ----- queries ------------------------------------------------------------------

    /// A connection's state, read-only (tests, logs).
    pub fn get(&self, r: ConnRef) -> Option<&Conn> {
        self.conns
            .get(r.key)
            .filter(|c| c.generation == r.generation)
    }

    fn get_mut(&mut self, r: ConnRef) -> Option<&mut Conn> {
        self.conns
            .get_mut(r.key)
            .filter(|c| c.generation == r.generation)
    }

    /// Whether the reactor should read from `r`'s socket: only when its frames can be
    /// handled, so that a client waiting on a store job is held back by TCP, not by
    /// our memory.
    pub fn wants_read(&self, r: ConnRef) -> bool {
        self.get(r).is_some_and(Conn::wants_read)
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

    /// The hub's part of a metrics snapshot; the loop adds its own.
    pub fn metrics(&self, now: Now) -> metrics::Snapshot {
        metrics::Snapshot {
            stats: self.stats.clone(),
            connections: self.conns.len(),
            online_here: self.online.len(),
            online_all: match &self.cluster {
                Some(_) => self.all_ids().len(),
                None => self.online.len(),
            },
            jobs_in_flight: self.store_jobs_in_flight(),
            output_queued_bytes: self.conns.iter().map(|(_, c)| c.out.len_bytes()).sum(),
            output_queues: self.conns.iter().filter(|(_, c)| !c.out.is_empty()).count(),
            hashing_queued: self.admission.queued(),
            hashing_wait_ms: self.admission.estimate(now.mono_ms),
            ..metrics::Snapshot::default()
        }
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

    /// Checks the hub's own bookkeeping; panics with what is wrong. For tests and the
    /// fuzz target, after every step.
    pub fn check_invariants(&self) {
        if self.roster.is_current(self.roster_version()) {
            let mut listed: Vec<i64> = self.roster.ids().collect();
            listed.sort_unstable();
            assert_eq!(listed, self.all_ids(), "the roster lists who is online");
        }
        for (id, e) in self.online.iter() {
            let c = self
                .get(e.conn)
                .unwrap_or_else(|| panic!("user {id} online at a connection that has gone"));
            assert_eq!(c.user_id(), Some(id), "registry and session disagree");
            assert!(
                c.closing.is_none(),
                "user {id} online on a closing connection"
            );
        }
        let mut per_addr: HashMap<IpAddr, u32> = HashMap::new();
        let mut pending = 0;
        for (key, c) in &self.conns {
            *per_addr.entry(addr_key(c.peer_ip)).or_insert(0) += 1;
            assert!(
                !c.out.has_unsealed() || self.turn.is_touched(key),
                "conn {key} holds parts of the turn's buffer that no seal would reach"
            );
            if let Session::Online { user_id, .. } = c.session
                && c.closing.is_none()
            {
                let e = self.online.get(user_id);
                assert!(
                    e.is_some_and(|e| e.conn.key == key),
                    "conn {key} online as {user_id} but not in the registry"
                );
            }
            if c.pending.is_some() {
                pending += 1;
            }
            if c.out.is_empty() {
                continue;
            }
            // Output waiting must be on its way: named for writing this turn, or left
            // by a write that blocked (the socket's writable edge brings it).
        }
        assert_eq!(self.per_addr, per_addr, "per-address counts");
        let mut logging_in: HashMap<i64, u32> = HashMap::new();
        for (_, c) in &self.conns {
            if let Some(Pending::Login { user_id }) = c.pending {
                *logging_in.entry(user_id).or_default() += 1;
            }
        }
        assert_eq!(self.logging_in, logging_in, "logins in flight");
        // A request waits on a store job, or on another node's answer.
        let remote = self.cluster.as_ref().map_or(0, |c| {
            c.pending
                .values()
                .filter(|p| self.get(p.conn).is_some())
                .count()
        });
        assert!(
            self.jobs_in_flight + remote >= pending,
            "{pending} requests wait on jobs but only {} jobs are in flight",
            self.jobs_in_flight
        );
        assert!(self.jobs.len() <= self.jobs_in_flight);
    }

    pub(crate) fn conn_ref(&self, key: usize) -> ConnRef {
        ConnRef {
            key,
            generation: self.conns[key].generation,
        }
    }

    // ----- the machinery the handlers use ----------------------------------------------

    /// Puts a deadline of connection `key` in the heap, unless an earlier one is
    /// there already (that one, when it comes, looks again at what is due): one entry
    /// per connection, not one per event.
    fn arm(&mut self, key: usize, generation: u32, at_ms: u64) {
        let at_ms = at_ms.max(1);
        let c = &mut self.conns[key];
        if c.armed_ms != 0 && c.armed_ms <= at_ms {
            return;
        }
        c.armed_ms = at_ms;
        self.deadlines.push(Reverse((at_ms, key, generation)));
    }

    /// A connection's state is gone: its address count and logins in flight with it.
    fn forget(&mut self, conn: &Conn) {
        if let Some(Pending::Login { user_id }) = conn.pending {
            self.unmark_login(user_id);
        }
        let addr = addr_key(conn.peer_ip);
        if let Some(n) = self.per_addr.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                self.per_addr.remove(&addr);
            }
        }
        if let Some(msg) = conn.offline.on_close().zip(conn.user_id()) {
            let (upto, user_id) = msg;
            // What reached the client goes from the store, even as it leaves.
            self.submit_removal(None, user_id, upto);
        }
    }

    /// Gives back idle buffers, forgets full per-address buckets and logs the summary.
    fn housekeeping(&mut self, now: Now) {
        self.next_housekeeping_ms = now.mono_ms + HOUSEKEEPING_MS;
        // Give back what a burst (a storm of logins) left in the bookkeeping: timers
        // of connections that logged in or went, then spare capacity.
        if self.deadlines.len() > 64 {
            let conns = &self.conns;
            self.deadlines.retain(|Reverse((at, key, generation))| {
                conns
                    .get(*key)
                    .is_some_and(|c| c.generation == *generation && c.armed_ms == *at)
            });
        }
        if self.deadlines.len() < self.deadlines.capacity() / 4 {
            self.deadlines.shrink_to_fit();
        }
        if self.logging_in.len() < self.logging_in.capacity() / 4 {
            self.logging_in.shrink_to_fit();
        }
        self.forget_removals();
        self.check_bans_if_due(now);
        self.login_limits.prune(now.mono_ms, self.cfg.login_rate);
        if !self.roster.is_empty() && now.mono_ms >= self.roster_used_ms + ROSTER_KEEP_MS {
            self.roster = Roster::default();
        }
        for (_, c) in &mut self.conns {
            c.shrink_idle();
        }
        self.summary.hash_refused += self.admission.take_refused();
        if now.mono_ms >= self.next_summary_ms && !self.summary.is_empty() {
            self.log_summary();
            self.next_summary_ms = now.mono_ms + self.cfg.summary_interval_ms;
        }
    }

    fn log_summary(&mut self) {
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

    /// Counts a storage failure for the summary (one log line per interval, however
    /// many requests an outage fails).
    pub(crate) fn store_error(&mut self, text: &str) {
        self.stats.store_errors += 1;
        self.summary.store_errors += 1;
        self.summary.last_store_error = text.to_string();
        log::debug!("storage error: {text}");
    }

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
                    self.stats.frames_by_type[metrics::frame_index(&msg)] += 1;
                    if self.over_msg_rate(key, &msg, now) {
                        let rate = self.cfg.msg_rate;
                        let text = format!("too many messages: at most {rate} per second");
                        self.summary.frames_refused += 1;
                        self.error_retry(key, code::TOO_MANY, &text, 1);
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
        let ip = self.conns[key].peer_ip;
        if self.login_limits.take(ip, now.mono_ms, self.cfg.login_rate) {
            return false;
        }
        self.summary.login_rate_refused += 1;
        let wait = 60 / self.cfg.login_rate.max(1) as u64;
        self.error_retry(
            key,
            code::TOO_MANY,
            "too many login attempts from your address; try again later",
            wait.max(1),
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
        if !conn.is_online() {
            // The login timeout counts again (a failed login, a registration).
            let (generation, due) = (
                conn.generation,
                conn.login_clock_ms
                    .saturating_add(self.cfg.login_timeout_ms),
            );
            self.arm(key, generation, due.max(now.mono_ms));
        }
        let conn = &mut self.conns[key];
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

    /// Store jobs queued or running, password hashes not counted.
    pub(crate) fn store_jobs_in_flight(&self) -> usize {
        self.jobs_in_flight.saturating_sub(self.admission.queued())
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

    /// Queues a password-hashing job (login or registration) if it can be served in
    /// time. `Err` carries the estimated wait in ms when it cannot.
    pub(crate) fn submit_hash(&mut self, key: usize, kind: JobKind, now: Now) -> Result<(), u64> {
        self.admission.check(now.mono_ms)?;
        if self.admission.queued() >= self.cfg.max_hash_jobs {
            self.summary.hash_refused += 1;
            return Err(self.admission.estimate(now.mono_ms).max(1000));
        }
        self.submit_always(Some(key), kind);
        self.admission.submitted(now.mono_ms);
        Ok(())
    }

    /// Queues a job whatever the load (removals of delivered messages, which are
    /// bounded by the deliveries that caused them).
    pub(crate) fn submit_always(&mut self, key: Option<usize>, kind: JobKind) {
        self.jobs_in_flight += 1;
        let conn = key.map(|k| self.conn_ref(k));
        self.jobs.push_back(Job { conn, kind });
    }

    /// A login is in flight for `user_id` on `key`.
    pub(crate) fn login_started(&mut self, key: usize, user_id: i64) {
        self.conns[key].pending = Some(Pending::Login { user_id });
        *self.logging_in.entry(user_id).or_default() += 1;
    }

    /// The login job for `r` has come back, whatever its outcome (or `r` has gone).
    fn login_settled(&mut self, r: ConnRef) {
        let Some(Pending::Login { user_id }) = self.get(r).and_then(|c| c.pending) else {
            return;
        };
        self.unmark_login(user_id);
    }

    /// Whether a login of `user_id` is in flight.
    pub(crate) fn is_logging_in(&self, user_id: i64) -> bool {
        self.logging_in.contains_key(&user_id)
    }

    fn unmark_login(&mut self, user_id: i64) {
        if let Some(n) = self.logging_in.get_mut(&user_id) {
            *n -= 1;
            if *n == 0 {
                self.logging_in.remove(&user_id);
            }
        }
    }

    /// Something was stored for `user_id`: if the user is online here, or logging in,
    /// their session fetches it (now, or once the step under way is done).
    pub(crate) fn offline_news(&mut self, user_id: i64) {
        let mut keys: Vec<usize> = self
            .online
            .get(user_id)
            .map(|e| e.conn.key)
            .into_iter()
            .collect();
        if self.logging_in.contains_key(&user_id) {
            // Rare (a message stored for a user at the moment they log in): a scan.
            keys.extend(
                self.conns.iter().filter_map(|(k, c)| {
                    (c.pending == Some(Pending::Login { user_id })).then_some(k)
                }),
            );
        }
        for key in keys {
            let conn = &mut self.conns[key];
            if conn.is_online() {
                let action = conn.offline.poke();
                self.offline_action(key, action);
            } else {
                // Logging in: its session starts with a look at the store once online.
                conn.offline.poke_later();
            }
        }
    }

    /// Carries out what a session's offline delivery asks for.
    pub(crate) fn offline_action(&mut self, key: usize, action: Action) {
        if action == Action::None {
            return;
        }
        let conn = &mut self.conns[key];
        let Some(user_id) = conn.user_id() else {
            return;
        };
        match action {
            Action::None => {}
            Action::Fetch => {
                if conn.closing.is_some() {
                    return;
                }
                let batch = self.cfg.offline_batch;
                if !self.submit(Some(key), JobKind::FetchOffline { user_id, batch }) {
                    let action = self.conns[key].offline.fetch_failed();
                    self.offline_action(key, action);
                }
            }
            Action::Ack(upto) => self.submit_removal(Some(key), user_id, upto),
        }
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

    /// The output side of the hub, borrowed apart from the registry.
    fn outputs(&mut self) -> (Outputs<'_>, &Registry) {
        let out = Outputs {
            conns: &mut self.conns,
            turn: &mut self.turn,
            writes: &mut self.writes,
            overflowed: &mut self.overflowed,
            stats: &mut self.stats,
            limit: self.cfg.max_outbuf,
        };
        (out, &self.online)
    }

    /// Encodes `msg` and queues it on one connection as the answer to its request.
    pub(crate) fn reply(&mut self, key: usize, msg: &ServerMessage) -> bool {
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

    fn count_refusal(&mut self, c: u16) {
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
            if self.turn.is_full() {
                self.seal_output();
            }
            let (start, end) = self.turn.add(&full);
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
            self.cluster_logout(user_id);
            self.departures.push((user_id, name));
        }
    }

    /// `user` went offline (here or on another node): announced at the end of the turn.
    pub(crate) fn note_departure(&mut self, user: i64, name: Rc<str>) {
        self.departures.push((user, name));
    }

    /// Tells everyone online about the users who went offline since the last call.
    /// The reactor calls it once per loop turn, after it has collected every hang-up
    /// it can see; the hub calls it before announcing a login, to keep the order.
    pub fn announce_departures(&mut self, now: Now) {
        for (user_id, name) in std::mem::take(&mut self.departures) {
            if self.online.get(user_id).is_some() || self.online_elsewhere(user_id) {
                // Back already, here or on another node: no flicker.
                continue;
            }
            self.presence
                .note(user_id, status::OFFLINE, &name, now.mono_ms);
        }
        self.presence_if_due(now);
        self.settle(now);
    }

    /// Notes a presence notice for everyone (see [`crate::presence`]).
    pub(crate) fn note_presence(&mut self, user_id: i64, status: u8, name: &str, now: Now) {
        self.presence.note(user_id, status, name, now.mono_ms);
    }

    /// `user_id` logged in again, telling nobody: its new connection gets only the
    /// notices noted after its login reply.
    pub(crate) fn mark_presence(&mut self, user_id: i64) {
        self.presence.mark(user_id);
    }

    fn presence_if_due(&mut self, now: Now) {
        if self
            .presence
            .due_at(self.presence_interval())
            .is_some_and(|at| at <= now.mono_ms)
        {
            self.send_presence();
        }
    }

    /// How long presence notices may wait: the configured interval, or longer with
    /// many online, so that the round of writes they cause (one per connection)
    /// takes at most about 5% of the loop's time: 20 times what a round to everyone
    /// costs as measured lately (up to 2 s), and at least 1 ms per 20 users (half a
    /// second at 10,000). A message from a newcomer still sends them at once.
    fn presence_interval(&self) -> u64 {
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

    /// The reactor wrote `written` connections' output in one round, in `took`: what
    /// one costs (the system calls, the kernel's copying, waking the readers) sets how
    /// long presence notices wait with many online. Small rounds are not counted.
    pub fn note_round(&mut self, written: usize, took: std::time::Duration) {
        if written < ROUND_SAMPLE {
            return;
        }
        let us = took.as_secs_f64() * 1e6 / written as f64;
        self.write_cost_us = Some(match self.write_cost_us {
            Some(avg) => avg + (us - avg) / 8.0,
            None => us,
        });
    }

    /// Sends the presence notices waiting, to everyone online: one shared chunk each,
    /// and to those who came online meanwhile, what came after them.
    pub(crate) fn send_presence(&mut self) {
        if self.presence.is_empty() {
            return;
        }
        let batch = self.presence.take();
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
                Some(id) => log::info!("conn {key} ({}, user {id}) closing: {reason}", conn.peer()),
                None => log::debug!("conn {key} ({}) closing: {reason}", conn.peer()),
            }
        }
        if !flush || conn.out.is_empty() {
            self.closes.push(me);
        } else {
            self.arm(key, me.generation, deadline_ms);
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
                log::warn!("conn {key} ({}): {reason}", self.conns[key].peer());
                self.close(key, false, &reason, now);
            }
        }
    }
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
        if fit::fits_len(full.len(), max) {
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
            && fit::fits(cut, max)
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
        if !fit::fits(frame, conn.max_frame()) {
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
