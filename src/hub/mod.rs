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
//! The hub is a router. What every part shares, it keeps in `cx::Core`: the
//! connection slab, the online registry, the output machinery, the store jobs, the
//! connections' deadlines. The rest is components that own their state, each in a
//! file named after the type it holds, each acting through the narrow context
//! `cx::Cx` (reply, deliver, broadcast, submit a job, close, arm a timer, look up a
//! session):
//!
//! - `sessions.rs`, `sessions::Sessions`: login, register, ping and logout; the
//!   admission of password hashes and the per-address rate of logins.
//! - `chat.rs`, `chat::Chat`: group and private messages, the online list, the
//!   roster of everyone online that a login reply lists.
//! - `offline_delivery.rs`, `offline_delivery::OfflineDelivery`: stored messages
//!   delivered to their recipients, and removed once they reached them.
//! - `history.rs`, `history::History`: `HistoryMes`, and the batching of appends.
//! - `cluster.rs`, `cluster::Cluster`: what this node knows of the others, and the
//!   rules that apply their events.
//! - `moderation.rs`, `moderation::Moderation`: bans, kicks and removals.
//!
//! The hub routes each frame (`dispatch`), each job's outcome and each cluster input
//! to the component it is for, and resumes a connection whose request was answered. A
//! component needing another's work gets it as an argument, never its fields. A
//! connection's state is [`crate::conn`]'s [`Conn`], which the reactor never sees.
#![forbid(unsafe_code)]

/// The context a component acts through: the core and the counters, borrowed apart
/// from the components.
macro_rules! cx {
    ($hub:expr) => {
        &mut $crate::hub::cx::Cx::new(&mut $hub.core, &mut $hub.stats)
    };
}

pub mod admission;
mod chat;
mod cluster;
mod config;
mod cx;
pub mod frame_fit;
pub(crate) mod history;
mod moderation;
mod offline_delivery;
pub mod presence;
pub mod roster;
mod security;
mod sessions;
mod timer;
pub mod turn;

#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod delivery_tests;
#[cfg(test)]
mod fuzz_replay;
#[cfg(test)]
mod history_tests;
#[cfg(test)]
mod moderation_tests;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use crate::cluster::{Event, Input};
use crate::conn::{Closing, Conn, Flush, Pending, Session};
use crate::hub::presence::Presence;
use crate::job::{Job, JobResult, Outcome};
pub use crate::metrics::Stats;
use crate::metrics::{self, FrameType, Lane};
use crate::proto::{self, ClientMessage, CodeRes, ParseError, ServerMessage, code, status};
use crate::rate::{Verdict, addr_key};
use crate::types::ConnRef;
use crate::types::Kick;
pub use crate::types::Now;
use crate::users::Registry;
use chat::Chat;
use cluster::Cluster;
pub use config::HubConfig;
use cx::{Core, Cx};
use history::History;
use moderation::Moderation;
use offline_delivery::OfflineDelivery;
use sessions::Sessions;
use timer::{Timer, TimerTable};

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

pub struct Hub {
    /// The connections, the registry, the output machinery, the jobs and timers.
    pub(crate) core: Core,
    /// Logins, registrations and what admits them.
    sessions: Sessions,
    /// Group and private messages, the online list, the roster.
    chat: Chat,
    /// When buffers are next trimmed.
    next_housekeeping_ms: u64,
    /// When the summary of refusals may next be logged.
    next_summary_ms: u64,
    /// This node's view of the cluster, if it is one of several.
    cluster: Option<Cluster>,
    /// History entries waiting to be appended.
    history: History,
    /// Offline delivery, and the removals of what was delivered.
    offline: OfflineDelivery,
    /// Bans, kicks and removals.
    moderation: Moderation,
    /// When each of the hub's timers is next due.
    timers: Cell<TimerTable>,
    /// Something changed since the table was last brought up to date: it is, at the
    /// next look (`poll_timeout`, once per turn of the loop), not after every input.
    timers_stale: Cell<bool>,
    pub stats: Stats,
}

/// How often idle buffers are given back and per-address limits forgotten.
const HOUSEKEEPING_MS: u64 = 1_000;

impl Hub {
    pub fn new(cfg: HubConfig) -> Hub {
        Hub {
            sessions: Sessions::new(&cfg),
            core: Core::new(cfg),
            chat: Chat::default(),
            next_housekeeping_ms: 0,
            next_summary_ms: 0,
            cluster: None,
            history: History::default(),
            offline: OfflineDelivery::default(),
            moderation: Moderation::default(),
            timers: Cell::new(TimerTable::default()),
            timers_stale: Cell::new(true),
            stats: Stats::default(),
        }
    }

    /// The context a component acts through.
    #[inline]
    pub(crate) fn cx(&mut self) -> Cx<'_> {
        Cx::new(&mut self.core, &mut self.stats)
    }

    pub fn config(&self) -> &HubConfig {
        &self.core.cfg
    }

    // ----- inputs -------------------------------------------------------------------

    /// A new connection from `peer`. Over the connection limit, or over the limit for
    /// its address, it is refused: the error frame to write to it before closing
    /// comes back instead.
    pub fn accept(&mut self, peer: SocketAddr, now: Now) -> Result<ConnRef, Rc<[u8]>> {
        let addr = addr_key(peer.ip());
        let from_addr = self.core.per_addr.get(&addr).copied().unwrap_or(0) as usize;
        let per_addr = self.core.cfg.conns_per_addr();
        let refusal =
            if self.core.cfg.max_conns > 0 && self.core.conns.len() >= self.core.cfg.max_conns {
                self.core.summary.conns_refused += 1;
                Some(format!(
                    "server full ({} connections); try again later",
                    self.core.cfg.max_conns
                ))
            } else if per_addr > 0 && from_addr >= per_addr {
                self.core.summary.conns_refused_per_addr += 1;
                Some(format!(
                    "too many connections from your address (at most {per_addr}); try again \
                     later"
                ))
            } else {
                None
            };
        if let Some(text) = refusal {
            let mut res = CodeRes::new(code::UNAVAILABLE, text);
            res.retry_after = Some(1);
            self.refresh_timers();
            return Err(ServerMessage::Error(res).encode().into());
        }
        *self.core.per_addr.entry(addr).or_insert(0) += 1;
        self.core.next_gen = self.core.next_gen.wrapping_add(1).max(1);
        let generation = self.core.next_gen;
        let conn = Conn::new(generation, peer, now.mono_ms, self.core.cfg.msg_rate);
        let key = self.core.conns.insert(conn);
        self.stats.accepted += 1;
        self.core.arm(
            key,
            generation,
            now.mono_ms.saturating_add(self.core.cfg.login_timeout_ms),
        );
        self.refresh_timers();
        Ok(ConnRef { key, generation })
    }

    /// Bytes read from `r`'s socket.
    pub fn handle_input(&mut self, r: ConnRef, data: &[u8], now: Now) {
        self.stats.bytes_in += data.len() as u64;
        let Some(conn) = self.core.get_mut(r) else {
            return;
        };
        if conn.closing.is_some() {
            return;
        }
        if conn.inbuf.is_empty() && conn.can_handle() {
            // The common case: frames are parsed straight out of the read buffer and
            // only a trailing partial frame is copied.
            let used = self.process(r.key, data, now);
            let conn = &mut self.core.conns[r.key];
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
        if self.core.get(r).is_some() {
            self.core.close(r.key, false, reason, now);
            self.settle(now);
        }
    }

    /// A worker finished a job.
    pub fn handle_result(&mut self, mut res: JobResult, now: Now) {
        self.core.jobs_in_flight = self.core.jobs_in_flight.saturating_sub(1);
        if res.took.is_none() {
            self.core.summary.jobs_expired += 1;
        }
        let hashing = matches!(res.outcome, Outcome::Login(_) | Outcome::Register(_));
        if let Some(took) = res.took {
            let lane = if hashing { Lane::Hash } else { Lane::Store };
            self.stats.job_seconds[lane].observe(took);
        }
        if self.history.outcome(cx!(self), &mut res.outcome) {
            self.refresh_timers();
            return;
        }
        if hashing {
            self.core.hash_jobs = self.core.hash_jobs.saturating_sub(1);
            let waited = self.sessions.hash_done(now, res.took, res.outcome.hashed());
            self.stats
                .hash_latency
                .observe(std::time::Duration::from_millis(waited));
        }
        if let Outcome::AckOffline {
            user_id, result, ..
        } = &res.outcome
        {
            self.offline
                .removal_done(cx!(self), *user_id, result.is_ok());
        }
        if let (Some(r), Outcome::Login(result)) = (res.conn, &mut res.outcome)
            && let Some(kick) = self.moderation.revoked(r)
            && let Some(refusal) = kick.login_error()
            && result.is_ok()
        {
            *result = Err(refusal);
        }
        if let Outcome::CheckBans(result) = res.outcome {
            self.moderation.bans_checked(cx!(self), result, now);
            // Told once all are gone: nobody leaving hears of the others.
            self.announce_departures(now);
            self.settle(now);
            return;
        }
        if let Outcome::StoreOffline(s) = &res.outcome
            && matches!(s.result, Ok(Some(_)))
            && res.conn.is_none_or(|r| self.core.get(r).is_none())
        {
            // Stored with no sender left to answer: its recipient may be logging in.
            self.offline.news(cx!(self), s.to);
        }
        let Some(r) = res.conn else {
            if let Outcome::AckOffline { result: Err(e), .. } = &res.outcome {
                self.cx().store_error(&format!(
                    "offline messages not removed (they will be offered again): {e}"
                ));
            }
            self.refresh_timers();
            return;
        };
        let mut login_user = 0;
        if let Outcome::Login(_) = res.outcome {
            if !self.sessions.login_result_wanted(r) {
                // Answered busy at its deadline: the result comes too late.
                log::debug!("conn {}: login result after the busy answer dropped", r.key);
                self.settle(now);
                return;
            }
            login_user = self.login_settled(r).unwrap_or(0);
        }
        if self.core.get(r).is_none() {
            log::debug!("result for a connection that has gone: {:?}", res.outcome);
            self.refresh_timers();
            return;
        }
        match res.outcome {
            Outcome::Login(result) => {
                if result.is_ok() && self.core.conns[r.key].closing.is_none() {
                    // Departures first, so that a user who left and came back this
                    // turn is seen leaving, then coming back.
                    self.announce_departures(now);
                }
                let goes_on = self.sessions.login_done(
                    cx!(self),
                    &mut self.chat,
                    self.cluster.as_mut(),
                    &mut self.offline,
                    r.key,
                    login_user,
                    result,
                    now,
                );
                if goes_on {
                    self.resume(r.key, now);
                }
            }
            Outcome::Register(result) => {
                self.sessions.register_done(cx!(self), r.key, result, now);
                self.resume(r.key, now);
            }
            Outcome::StoreOffline(result) => {
                let waits = result.waits;
                Chat::private_stored(cx!(self), &mut self.offline, r.key, result);
                if waits {
                    self.resume(r.key, now);
                }
            }
            Outcome::FetchOffline {
                user_id,
                batch,
                result,
            } => self
                .offline
                .fetched(cx!(self), r.key, user_id, batch, result, now),
            Outcome::AckOffline { upto, result, .. } => {
                self.offline.acked(cx!(self), r.key, upto, result)
            }
            Outcome::History(result) => {
                self.history.read_done(cx!(self), r.key, result);
                self.resume(r.key, now);
            }
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
            .core
            .conns
            .get_mut(r.key)
            .filter(|c| c.generation == r.generation)
        else {
            return Written::Drained;
        };
        if conn.out.is_empty() {
            return Written::Drained;
        }
        self.core.seal_output();
        let conn = &mut self.core.conns[r.key];
        let before = conn.out.written_total();
        let res = conn.out.write_with(&mut self.core.gather, write);
        self.stats.bytes_out += conn.out.written_total() - before;
        let awaiting = !conn.awaiting.is_empty();
        if conn.offline.is_active() {
            let action = conn.offline.written(conn.out.written_total());
            self.offline.action(cx!(self), r.key, action);
        }
        if awaiting {
            // Private messages written: their senders are answered.
            Chat::written(cx!(self), self.cluster.as_mut(), r.key);
        }
        let written = match res {
            Ok(Flush::Drained) => {
                if let Some(Closing { flush: true, .. }) = self.core.conns[r.key].closing {
                    self.core.closes.push(r);
                }
                Written::Drained
            }
            Ok(Flush::Blocked) => {
                let c = &self.core.conns[r.key];
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
                self.core
                    .close(r.key, false, &format!("write failed: {e}"), now);
                Written::Failed
            }
        };
        self.settle(now);
        written
    }

    /// Time passed: closes connections that did not log in in time and closing
    /// connections that did not manage to write their last frames, lets frames that
    /// waited for the message rate go; now and then gives back idle buffers and logs
    /// what was refused.
    pub fn handle_timeout(&mut self, now: Now) {
        // Connections whose frames waited for the message rate and may go now.
        let mut woken = Vec::new();
        while let Some(&Reverse((at, key, generation))) = self.core.deadlines.peek() {
            if at > now.mono_ms {
                break;
            }
            self.core.deadlines.pop();
            let Some(c) = self
                .core
                .conns
                .get_mut(key)
                .filter(|c| c.generation == generation && c.armed_ms == at)
            else {
                // Gone, or superseded by an earlier deadline of the same connection.
                continue;
            };
            c.armed_ms = 0;
            let paced = c.msg_pace.until();
            if paced.is_some() && c.msg_pace.wake(now.mono_ms) {
                woken.push(key);
            } else if let Some(until) = paced {
                self.core.arm(key, generation, until);
            }
            let c = &self.core.conns[key];
            match c.closing {
                Some(cl) if now.mono_ms >= cl.deadline_ms => {
                    log::debug!("conn {key}: close deadline passed");
                    self.core
                        .close(key, false, "could not write its last frames in time", now);
                }
                Some(cl) => self.core.arm(key, generation, cl.deadline_ms),
                None if c.is_online() || matches!(c.pending, Some(Pending::Login { .. })) => {
                    // Logged in (or a login in flight, whose result decides): no
                    // login timeout. A failed login arms it again. A private message
                    // waiting to be written may be due.
                    if !c.awaiting.is_empty() {
                        Chat::write_due(cx!(self), key, now);
                    }
                }
                None => {
                    let due = c
                        .login_clock_ms
                        .saturating_add(self.core.cfg.login_timeout_ms);
                    if due > now.mono_ms {
                        self.core.arm(key, generation, due);
                        continue;
                    }
                    let secs = self.core.cfg.login_timeout_ms / 1000;
                    self.cx().error(
                        key,
                        code::UNAUTHORIZED,
                        &format!("no login within {secs} s"),
                    );
                    self.core.close(key, true, "login timeout", now);
                }
            }
        }
        for key in woken {
            self.wake_paced(key, now);
        }
        if now.mono_ms >= self.next_housekeeping_ms {
            self.housekeeping(now);
        }
        for key in self.sessions.expire_logins(cx!(self), now) {
            self.resume(key, now);
        }
        if let Some(c) = self.cluster.as_mut() {
            c.timeouts(cx!(self), &mut self.history, now);
        }
        self.cx().presence_if_due(now);
        self.settle(now);
    }

    /// The server is stopping: every connection is closed once its queued output is
    /// written (or at the linger deadline). Nobody is told that anyone went offline,
    /// since everyone is leaving at once.
    pub fn handle_shutdown(&mut self, now: Now) {
        self.core.online = Registry::default();
        self.core.departures.clear();
        self.history.last_call();
        self.core.presence = Presence::default();
        for r in self.refs() {
            self.core.close(r.key, true, "server shutting down", now);
        }
        self.settle(now);
    }

    /// Ends every session of `user` on this server: `ErrorResMes` (423 banned, 410
    /// removed), then the close; the others see the user go offline. Logins of that
    /// user in flight are refused when they come back. Returns the number of sessions
    /// closed.
    pub fn handle_admin(&mut self, user: i64, kick: Kick, now: Now) -> usize {
        let closed = self.moderation.end_sessions(cx!(self), user, kick, now);
        self.announce_departures(now);
        closed
    }

    /// Makes this hub a node of a cluster named `node`. A private message handed to
    /// another node is stored instead if that node has not answered in `answer_ms`
    /// beyond the time it allows the recipient to take it (`PRIVATE_WRITE_WAIT_MS`).
    pub fn enable_cluster(&mut self, node: &str, answer_ms: u64) {
        self.cluster = Some(Cluster::new(node, answer_ms));
        self.refresh_timers();
    }

    /// The next event to publish.
    pub fn poll_publish(&mut self) -> Option<Event> {
        self.cluster.as_mut()?.poll_publish()
    }

    /// Something from the cluster link: routed to the cluster, which answers the
    /// requests other nodes answered; the departures it caused are announced.
    pub fn handle_cluster(&mut self, input: Input, now: Now) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let answered = cluster.handle(
            cx!(self),
            &mut self.history,
            &mut self.moderation,
            input,
            now,
        );
        if let Some(r) = answered {
            self.resume(r.key, now);
        }
        self.announce_departures(now);
    }

    /// Ids of everyone online on every node, sorted.
    pub(crate) fn all_ids(&self) -> Vec<i64> {
        chat::all_ids(&self.core, self.cluster.as_ref())
    }

    /// Whether `user` is online on another node.
    pub(crate) fn online_elsewhere(&self, user: i64) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.online_elsewhere(user))
    }

    // ----- outputs ------------------------------------------------------------------

    /// The next store job to hand to a worker.
    pub fn poll_job(&mut self, now: Now) -> Option<Job> {
        self.history.flush(cx!(self), now);
        let job = self.core.jobs.pop_front();
        self.refresh_timers();
        job
    }

    /// When the hub next needs the loop, on the monotonic clock: now if jobs, reads
    /// or events to publish wait; otherwise the soonest of its timers ([`Timer`]: a
    /// login timeout or close deadline, housekeeping, presence notices, history to
    /// store, another node's answer); `None` if nothing at all is due. Output waiting to be written is
    /// not counted here: when to write is the reactor's call (`has_output`, the flush
    /// interval).
    pub fn poll_timeout(&self, now: Now) -> Option<u64> {
        if !self.core.jobs.is_empty()
            || self.history.waits(&self.core, now)
            || !self.core.reads.is_empty()
            || self.cluster.as_ref().is_some_and(|c| c.has_output())
        {
            return Some(now.mono_ms);
        }
        self.timer_table().next()
    }

    /// The timer table may have changed: it is brought up to date at its next look.
    /// Called at the end of every input that may have changed it; a write is one, so
    /// this must stay as cheap as setting a flag.
    fn refresh_timers(&mut self) {
        self.timers_stale.set(true);
    }

    /// The timer table, set from what the connections and the components say now if
    /// anything changed since it was last set.
    fn timer_table(&self) -> TimerTable {
        if self.timers_stale.replace(false) {
            let mut t = TimerTable::default();
            let conns = self.core.deadlines.peek().map(|Reverse((at, _, _))| *at);
            let housekeeping = (!self.core.conns.is_empty()
                || !self.core.summary.is_empty()
                || self.sessions.has_limits()
                || self.sessions.hashing())
            .then_some(self.next_housekeeping_ms);
            t.set(Timer::Connections, conns);
            t.set(Timer::Housekeeping, housekeeping);
            t.set(
                Timer::Presence,
                self.core.presence.due_at(self.core.presence_interval()),
            );
            t.set(Timer::HistoryFlush, self.history.due_at(&self.core));
            t.set(
                Timer::ClusterAnswer,
                self.cluster.as_ref().and_then(|c| c.next_deadline()),
            );
            t.set(Timer::LoginWait, self.sessions.next_login_deadline());
            self.timers.set(t);
        }
        self.timers.get()
    }

    /// Whether logins or registrations are waiting for a password hash.
    pub fn hashing(&self) -> bool {
        self.sessions.hashing()
    }

    /// When the next round of writes may start (see `Admission::next_flush_at`).
    pub fn next_flush_at(
        &self,
        start: std::time::Instant,
        done: std::time::Instant,
        interval: std::time::Duration,
    ) -> std::time::Instant {
        self.sessions.next_flush_at(start, done, interval)
    }

    /// Whether writes, closes or departures are waiting for the reactor.
    pub fn has_output(&self) -> bool {
        !self.core.writes.is_empty()
            || !self.core.stretch.is_empty()
            || !self.core.closes.is_empty()
            || !self.core.departures.is_empty()
    }

    /// `r`'s socket can take more after a write that blocked: what it has queued is
    /// written at the next round of writes with everyone else's, not at once. Written
    /// at once, each small opening a slow reader's socket makes would cost a system
    /// call of its own.
    pub fn handle_writable(&mut self, r: ConnRef) {
        if self
            .core
            .conns
            .get(r.key)
            .is_some_and(|c| c.generation == r.generation && !c.out.is_empty())
        {
            self.core.writes.push(r);
        }
    }

    /// The next connection with output to write.
    ///
    /// A round of writes goes in stretches: the connections that had output when the
    /// stretch began, then those that got output meanwhile. Input taken in during a
    /// round (the turn driver looks for it, see `turn::Driver`) joins the
    /// output of connections not yet written, in the same write, and a connection
    /// already written gets its share in the next stretch, after all the others: no
    /// one's output waits twice behind another's.
    pub fn poll_write(&mut self) -> Option<ConnRef> {
        if self.core.stretch.is_empty() {
            std::mem::swap(&mut self.core.stretch, &mut self.core.writes);
        }
        self.core.stretch.pop()
    }

    /// The next connection that may read from its socket again.
    pub fn poll_read(&mut self) -> Option<ConnRef> {
        self.core.reads.pop()
    }

    /// The next connection to close. Its state is removed and its departure queued
    /// for [`Hub::announce_departures`]; the caller drops the socket.
    pub fn poll_close(&mut self, now: Now) -> Option<ConnRef> {
        while let Some(r) = self.core.closes.pop() {
            if self.core.get(r).is_none() {
                continue; // closed twice in one turn
            }
            self.core.go_offline(r.key, now);
            let mut conn = self.core.conns.remove(r.key);
            self.forget(&conn);
            if let Some(user) = conn.user_id()
                && self.core.lingering.get(&user) == Some(&r)
            {
                self.core.lingering.remove(&user);
            }
            if !conn.awaiting.is_empty() {
                // Private messages it never wrote: stored instead.
                Chat::unwritten(
                    cx!(self),
                    self.cluster.as_mut(),
                    std::mem::take(&mut conn.awaiting),
                );
            }
            self.stats.closed += 1;
            self.settle(now);
            return Some(r);
        }
        None
    }

    // ----- queries ------------------------------------------------------------------

    /// A connection's state, read-only (tests, logs).
    pub fn get(&self, r: ConnRef) -> Option<&Conn> {
        self.core.get(r)
    }

    /// The reactor wrote `written` connections' output in one round, in `took` (see
    /// `Core::note_round`).
    pub fn note_round(&mut self, written: usize, took: std::time::Duration) {
        self.core.note_round(written, took);
        // The presence interval follows what a round costs.
        self.refresh_timers();
    }

    /// The refusals and failures counted since the last summary (tests).
    #[cfg(test)]
    pub(crate) fn summary(&self) -> &cx::Summary {
        &self.core.summary
    }

    /// Whether no login in flight waits to be refused for a ban (tests).
    #[cfg(test)]
    pub(crate) fn nothing_revoked(&self) -> bool {
        self.moderation.nothing_revoked()
    }

    /// Whether the roster is dropped (tests).
    #[cfg(test)]
    pub(crate) fn roster_is_empty(&self) -> bool {
        self.chat.roster_is_empty()
    }

    /// The limits and timings, to change in a test.
    #[cfg(test)]
    pub(crate) fn config_mut(&mut self) -> &mut HubConfig {
        &mut self.core.cfg
    }

    /// The connection `user` is online at here, if any (tests).
    #[cfg(test)]
    pub(crate) fn online_at(&self, user: i64) -> Option<ConnRef> {
        self.core.online.get(user).map(|e| e.conn)
    }

    /// Makes whatever was broadcast since the last write into its shared bytes.
    #[cfg(test)]
    pub(crate) fn seal_output(&mut self) {
        self.core.seal_output();
    }

    /// Whether the reactor should read from `r`'s socket: only when its frames can be
    /// handled, so that a client waiting on a store job is held back by TCP, not by
    /// our memory.
    pub fn wants_read(&self, r: ConnRef) -> bool {
        self.core.get(r).is_some_and(Conn::wants_read)
    }

    pub fn conn_count(&self) -> usize {
        self.core.conns.len()
    }

    pub fn online_count(&self) -> usize {
        self.core.online.len()
    }

    /// Takes the settings of `new` that apply without a restart ([`HubConfig::reload`]);
    /// returns one line per setting changed ("msg-rate: 20 -> 40").
    pub fn reconfigure(&mut self, new: &HubConfig) -> Vec<String> {
        let changed = self.core.cfg.reload(new);
        self.refresh_timers();
        changed
    }

    /// The sessions logged in on this server: user id, name and client address, by
    /// user id (for the operators' `users online`).
    pub fn sessions(&self) -> Vec<(i64, String, std::net::SocketAddr)> {
        let mut out: Vec<_> = self
            .core
            .conns
            .iter()
            .filter(|(_, c)| c.is_online() && !c.is_closing())
            .filter_map(|(_, c)| Some((c.user_id()?, c.user_name().to_string(), c.peer())))
            .collect();
        out.sort_by_key(|s| s.0);
        out
    }

    pub fn jobs_in_flight(&self) -> usize {
        self.core.jobs_in_flight
    }

    /// The hub's part of a metrics snapshot; the loop adds its own.
    pub fn metrics(&self, now: Now) -> metrics::Snapshot {
        metrics::Snapshot {
            stats: self.stats.clone(),
            connections: self.core.conns.len(),
            online_here: self.core.online.len(),
            online_all: match &self.cluster {
                Some(_) => self.all_ids().len(),
                None => self.core.online.len(),
            },
            jobs_in_flight: self.core.store_jobs_in_flight(),
            output_queued_bytes: self.core.conns.iter().map(|(_, c)| c.out.len_bytes()).sum(),
            output_queues: self
                .core
                .conns
                .iter()
                .filter(|(_, c)| !c.out.is_empty())
                .count(),
            hashing_queued: self.sessions.hashing_queued(),
            hashing_wait_ms: self.sessions.hashing_wait_ms(now),
            cluster_link_up: self.cluster.as_ref().map(|c| c.is_up()),
            ..metrics::Snapshot::default()
        }
    }

    /// Every live connection.
    pub fn refs(&self) -> Vec<ConnRef> {
        self.core
            .conns
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
        self.chat
            .check_invariants(&self.core, self.cluster.as_ref());
        for (id, e) in self.core.online.iter() {
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
        for (key, c) in &self.core.conns {
            *per_addr.entry(addr_key(c.peer_ip)).or_insert(0) += 1;
            assert!(
                !c.out.has_unsealed() || self.core.turn.is_touched(key),
                "conn {key} holds parts of the turn's buffer that no seal would reach"
            );
            if let Session::Online { user_id, .. } = c.session
                && c.closing.is_none()
            {
                let e = self.core.online.get(user_id);
                assert!(
                    e.is_some_and(|e| e.conn.key == key),
                    "conn {key} online as {user_id} but not in the registry"
                );
            }
            if c.pending.is_some() {
                pending += 1;
            }
            if let Some(until) = c.msg_pace.until()
                && c.closing.is_none()
            {
                assert!(
                    c.armed_ms != 0 && c.armed_ms <= until,
                    "conn {key} waits for its message rate with no deadline to wake it"
                );
            }
            if c.out.is_empty() {
                continue;
            }
            // Output waiting must be on its way: named for writing this turn, or left
            // by a write that blocked (the socket's writable edge brings it).
        }
        assert_eq!(self.core.per_addr, per_addr, "per-address counts");
        let mut logging_in: HashMap<i64, u32> = HashMap::new();
        for (_, c) in &self.core.conns {
            if let Some(Pending::Login { user_id }) = c.pending {
                *logging_in.entry(user_id).or_default() += 1;
            }
        }
        assert_eq!(self.core.logging_in, logging_in, "logins in flight");
        // A request waits on a store job, or on another node's answer.
        let remote = self.cluster.as_ref().map_or(0, |c| {
            c.waiting().filter(|r| self.core.get(*r).is_some()).count()
        });
        assert!(
            self.core.jobs_in_flight + remote >= pending,
            "{pending} requests wait on jobs but only {} jobs are in flight",
            self.core.jobs_in_flight
        );
        assert!(self.core.jobs.len() <= self.core.jobs_in_flight);
    }

    // ----- the machinery of routing --------------------------------------------------

    /// A connection's state is gone: its address count and logins in flight with it.
    fn forget(&mut self, conn: &Conn) {
        if let Some(Pending::Login { user_id }) = conn.pending {
            self.core.unmark_login(user_id);
        }
        let addr = addr_key(conn.peer_ip);
        if let Some(n) = self.core.per_addr.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                self.core.per_addr.remove(&addr);
            }
        }
        if let Some(msg) = conn.offline.on_close().zip(conn.user_id()) {
            let (upto, user_id) = msg;
            // What reached the client goes from the store, even as it leaves.
            self.offline.submit_removal(cx!(self), None, user_id, upto);
        }
    }

    /// Gives back idle buffers, forgets full per-address buckets and logs the summary.
    fn housekeeping(&mut self, now: Now) {
        self.next_housekeeping_ms = now.mono_ms + HOUSEKEEPING_MS;
        // Give back what a burst (a storm of logins) left in the bookkeeping: timers
        // of connections that logged in or went, then spare capacity.
        if self.core.deadlines.len() > 64 {
            let conns = &self.core.conns;
            self.core
                .deadlines
                .retain(|Reverse((at, key, generation))| {
                    conns
                        .get(*key)
                        .is_some_and(|c| c.generation == *generation && c.armed_ms == *at)
                });
        }
        if self.core.deadlines.len() < self.core.deadlines.capacity() / 4 {
            self.core.deadlines.shrink_to_fit();
        }
        if self.core.logging_in.len() < self.core.logging_in.capacity() / 4 {
            self.core.logging_in.shrink_to_fit();
        }
        self.offline.forget_removals(&self.core);
        self.moderation.check_bans_if_due(cx!(self), now);
        let refused = self.sessions.housekeeping(&self.core.cfg, now);
        self.chat.housekeeping(now);
        for (_, c) in &mut self.core.conns {
            c.shrink_idle();
        }
        self.core.summary.hash_refused += refused;
        if now.mono_ms >= self.next_summary_ms && !self.core.summary.is_empty() {
            self.core.log_summary();
            self.next_summary_ms = now.mono_ms + self.core.cfg.summary_interval_ms;
        }
    }

    fn process_buffered(&mut self, key: usize, mut buf: Vec<u8>, now: Now) {
        let used = self.process(key, &buf, now);
        let conn = &mut self.core.conns[key];
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
        while self.core.conns[key].can_handle() {
            let limit = if self.core.conns[key].is_online() {
                self.core.cfg.max_frame
            } else {
                self.core.cfg.prelogin_max_frame
            };
            match proto::check(&buf[pos..], limit) {
                Ok(None) => break,
                Ok(Some(total)) => {
                    let msg = ClientMessage::parse(&buf[pos + proto::HEADER_LEN..pos + total]);
                    match self.pace(key, &msg, now) {
                        Verdict::Go => {}
                        Verdict::Wait(until) => {
                            // This frame and the rest wait: the connection is not read
                            // until then (see `wake_paced`).
                            let generation = self.core.conns[key].generation;
                            self.core.arm(key, generation, until);
                            break;
                        }
                        Verdict::Flood => {
                            self.flood(key, now);
                            return buf.len();
                        }
                    }
                    pos += total;
                    self.stats.frames_in += 1;
                    self.stats.frames_by_type[FrameType::of(&msg)] += 1;
                    self.dispatch(key, msg, now);
                }
                Err(e) => {
                    let hint = if self.core.conns[key].is_online() {
                        ""
                    } else {
                        " before login"
                    };
                    self.cx().error(key, code::TOO_LARGE, &format!("{e}{hint}"));
                    self.core.close(key, true, "oversized frame", now);
                    return buf.len();
                }
            }
        }
        pos
    }

    /// Routes one parsed frame from connection `key` to the component it is for.
    fn dispatch(&mut self, key: usize, msg: Result<ClientMessage, ParseError>, now: Now) {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                // The length prefix was sound, so the stream is still in step: answer
                // and go on.
                self.cx().error(key, code::BAD_REQUEST, &e.to_string());
                return;
            }
        };
        match msg {
            ClientMessage::Ping => Sessions::handle_ping(cx!(self), key),
            ClientMessage::Login(m) => self.sessions.handle_login(cx!(self), key, m, now),
            ClientMessage::Register(m) => self.sessions.handle_register(cx!(self), key, m, now),
            _ if !self.core.conns[key].is_online() => {
                self.core.summary.frames_refused += 1;
                self.cx().error(key, code::UNAUTHORIZED, "log in first");
            }
            ClientMessage::Sms(m) => Chat::handle_group(
                cx!(self),
                &mut self.history,
                self.cluster.as_mut(),
                key,
                m,
                now,
            ),
            ClientMessage::Private(m) => Chat::handle_private(
                cx!(self),
                &mut self.history,
                self.cluster.as_mut(),
                key,
                m,
                now,
            ),
            ClientMessage::OnlineUsers => {
                Chat::handle_online_users(cx!(self), self.cluster.as_ref(), key)
            }
            ClientMessage::Logout => Sessions::handle_logout(cx!(self), key, now),
            ClientMessage::OfflineAck(m) => self.offline.handle_ack(cx!(self), key, m),
            ClientMessage::History(m) => self.history.handle(cx!(self), key, m, now),
        }
    }

    /// Flood control: every frame takes a token, except a logout; one over the rate
    /// waits for its token.
    fn pace(
        &mut self,
        key: usize,
        msg: &Result<ClientMessage, proto::ParseError>,
        now: Now,
    ) -> Verdict {
        let rate = self.core.cfg.msg_rate;
        if rate == 0 || matches!(msg, Ok(ClientMessage::Logout)) {
            return Verdict::Go;
        }
        let limit = self.core.cfg.flood_limit_ms;
        self.core.conns[key].msg_pace.take(now.mono_ms, rate, limit)
    }

    /// A connection kept sending faster than its rate for longer than the flood
    /// limit: told, and closed.
    fn flood(&mut self, key: usize, now: Now) {
        let (rate, secs) = (
            self.core.cfg.msg_rate,
            self.core.cfg.flood_limit_ms.div_ceil(1000),
        );
        let text = format!(
            "too many messages: more than {rate} per second for {secs} s; closing the \
             connection"
        );
        self.core.summary.frames_refused += 1;
        self.cx().error(key, code::TOO_MANY, &text);
        self.core.close(key, true, "flooding", now);
    }

    /// The frames of connection `key` that waited for the message rate may go: those
    /// read already are handled (as far as the rate allows), and the socket is read
    /// again.
    fn wake_paced(&mut self, key: usize, now: Now) {
        let conn = &mut self.core.conns[key];
        if conn.closing.is_some() {
            return;
        }
        if !conn.inbuf.is_empty() && conn.can_handle() {
            let buf = std::mem::take(&mut conn.inbuf);
            self.process_buffered(key, buf, now);
        }
        let conn = &self.core.conns[key];
        if conn.wants_read() {
            self.core.reads.push(self.core.conn_ref(key));
        }
    }

    /// Clears a connection's job-in-flight mark and handles the frames that waited.
    pub(crate) fn resume(&mut self, key: usize, now: Now) {
        let conn = &mut self.core.conns[key];
        conn.pending = None;
        if conn.closing.is_some() {
            return;
        }
        if !conn.is_online() {
            // The login timeout counts again (a failed login, a registration).
            let (generation, due) = (
                conn.generation,
                conn.login_clock_ms
                    .saturating_add(self.core.cfg.login_timeout_ms),
            );
            self.core.arm(key, generation, due.max(now.mono_ms));
        }
        let conn = &mut self.core.conns[key];
        if !conn.inbuf.is_empty() {
            let buf = std::mem::take(&mut conn.inbuf);
            self.process_buffered(key, buf, now);
        }
        let conn = &self.core.conns[key];
        if conn.wants_read() {
            // Edge-triggered: readiness seen while we were not reading is not
            // reported again, so the reactor must try reading now.
            self.core.reads.push(self.core.conn_ref(key));
        }
    }

    /// The login job for `r` has come back, whatever its outcome (or `r` has gone).
    /// No longer pending: a connection closing meanwhile, which is not resumed, must
    /// not count its login again when it goes. Returns the user id it was for.
    fn login_settled(&mut self, r: ConnRef) -> Option<i64> {
        let c = self.core.get_mut(r)?;
        let Some(Pending::Login { user_id }) = c.pending else {
            return None;
        };
        c.pending = None;
        self.core.unmark_login(user_id);
        Some(user_id)
    }

    /// Tells everyone online about the users who went offline since the last call.
    /// The reactor calls it once per loop turn, after it has collected every hang-up
    /// it can see; the hub calls it before announcing a login, to keep the order.
    pub fn announce_departures(&mut self, now: Now) {
        for (user_id, name) in std::mem::take(&mut self.core.departures) {
            if self.core.online.get(user_id).is_some() || self.online_elsewhere(user_id) {
                // Back already, here or on another node: no flicker.
                continue;
            }
            self.core
                .presence
                .note(user_id, status::OFFLINE, &name, now.mono_ms);
        }
        self.cx().presence_if_due(now);
        self.settle(now);
    }

    /// Whether departures wait to be announced.
    pub fn has_departures(&self) -> bool {
        !self.core.departures.is_empty()
    }

    /// Closes the connections whose queues overflowed, and tells the cluster whose
    /// sessions here ended. Called at the end of every input.
    fn settle(&mut self, now: Now) {
        self.cx().close_overflowed(now);
        let logouts = std::mem::take(&mut self.core.logouts);
        if let Some(c) = self.cluster.as_mut() {
            for user in logouts {
                c.logout(user);
            }
        }
        self.refresh_timers();
    }
}
