//! One turn of the event loop: its order, and when output is written.
//!
//! [`Driver::turn`] is the loop's body. The reactor runs it over sockets and the test
//! harness over memory: both implement [`Io`], the I/O side of a turn (waiting for
//! events, reading and writing a connection, the worker pool, the cluster link, the
//! clock), and neither has an order of its own, so the two cannot drift apart.
//!
//! A turn:
//! 1. waits for events, at most until the sooner of the hub's next deadline
//!    ([`Hub::poll_timeout`]) and the driver's own ([`Timer`]);
//! 2. handles them: a connection's input is read (once per turn for one that had
//!    input left over, see below), a listener accepts; while departures wait to be
//!    announced, polls again without waiting, so that a crowd leaving at once is not
//!    sent each other's departures;
//! 3. takes in store job results, other nodes' events (at most [`CLUSTER_PER_TURN`])
//!    and the operators' requests;
//! 4. reads the connections that had input left over last turn (a read budget ran out,
//!    or a transport said [`Read::NextTurn`]), then those the hub may read again (a
//!    store job came back, or a client that sent faster than its message rate may be
//!    read again: until then the hub does not want its input, and its bytes wait in
//!    its socket);
//! 5. accepts again after a pause for descriptors, fires the hub's timers, gives freed
//!    heap memory back now and then, and starts shutting down when asked;
//! 6. hands store jobs to the workers and events to the other nodes;
//! 7. runs a round of writes if it is time (below): departures announced, output
//!    written, the connections closed dropped.
//!
//! The write policy: output is written as soon as a poll finds nothing to read (a
//! quiet loop answers at once, with no timer), and while input keeps coming at least
//! once per flush interval, so that what a busy stretch of turns produced goes to each
//! recipient in one vectored write. A round that starts from an idle loop looks for
//! input every [`PEEK_EVERY`] during its first interval (`Peeks`): a message that
//! comes meanwhile joins it. While logins wait for hashing, a long round is followed by
//! a pause ([`Hub::next_flush_at`]) during which output waits even if the loop is idle.
//!
//! Time comes only from [`Io::clock`] (a monotonic instant, read a few times per turn,
//! never per event, and per write only while a round looks for input) and [`Io::now`]
//! (the hub's clock, derived from it), so the harness runs all of this in virtual
//! time.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::io;
use std::time::{Duration, Instant};

use crate::cluster::{Event, Input};
use crate::conn::ConnRef;
use crate::hub::{Hub, Now};
use crate::job::{Job, JobResult};

/// Events from other nodes handled per turn at most: a flood from them waits in its
/// queue (and then in Redis) instead of starving this node's sockets.
pub const CLUSTER_PER_TURN: usize = 4096;
/// During a round of writes, how often the loop looks for input that came meanwhile.
pub const PEEK_EVERY: Duration = Duration::from_micros(50);
/// How often freed heap memory is handed back to the operating system.
const TRIM_EVERY: Duration = Duration::from_secs(2);
/// Pause before accepting again after running out of descriptors.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Extra polls per turn, at most, for hang-ups that wait while departures do.
const DEPARTURE_POLLS: usize = 64;

/// What reading a connection left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Read until the socket had no more, or the hub stopped reading: a new edge (or
    /// the hub, through [`Hub::poll_read`]) brings it back.
    Done,
    /// Input is left and the connection had its share for now (its read budget, or a
    /// transport that worked through its share without producing protocol bytes):
    /// read it again next turn, after the others.
    NextTurn,
}

/// What accepting on a listener ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Accepted until there was nobody more.
    Drained,
    /// Out of descriptors: accepting pauses for [`ACCEPT_BACKOFF`].
    Exhausted,
}

/// A readiness that a poll found, for the driver to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// A connection's socket: readable (or closed, or in error), writable, or both.
    Conn { r: ConnRef, read: bool, write: bool },
    /// Listener `n` has connections to accept.
    Listener(usize),
}

/// Whether the loop goes on after a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Running,
    /// Shut down: every connection closed, or the grace period over.
    Stopped,
}

/// The I/O side of a turn: sockets, threads and the clock. Implemented by the reactor
/// over mio and by the test harness in memory.
pub trait Io {
    /// A monotonic instant (virtual in the harness).
    fn clock(&mut self) -> Instant;
    /// The hub's time at `at`, an instant [`Io::clock`] returned.
    fn now(&mut self, at: Instant) -> Now;
    /// Waits for events up to `timeout` (`None`: until one comes) and keeps them for
    /// [`Io::events`]; returns whether any came. Its own events (a waker, signals)
    /// count, and are handled by [`Io::events`] without the driver.
    fn poll(&mut self, timeout: Option<Duration>) -> io::Result<bool>;
    /// Hands what the last poll found to `on`.
    fn events<F: FnMut(&mut Self, Ready)>(&mut self, on: F);
    /// Reads `r`'s socket and hands the bytes to the hub, while the hub wants them,
    /// within the connection's read budget.
    fn read(&mut self, hub: &mut Hub, r: ConnRef, now: Now) -> Read;
    /// `r`'s socket can take more: a transport's own bytes go, and the hub hears of it
    /// ([`Hub::handle_writable`]). A transport may have input then: what reading it
    /// left is returned.
    fn writable(&mut self, hub: &mut Hub, r: ConnRef, now: Now) -> Read;
    /// Writes `r`'s queued output ([`Hub::write`]).
    fn write(&mut self, hub: &mut Hub, r: ConnRef, now: Now);
    /// The hub closed `r`: its socket goes.
    fn close(&mut self, r: ConnRef);
    /// Accepts connections on listener `n` until there are no more.
    fn accept(&mut self, hub: &mut Hub, n: usize, now: Now) -> Accept;
    /// How many listeners accept connections.
    fn listeners(&self) -> usize;
    /// The next store job's result from the workers.
    fn next_result(&mut self) -> Option<JobResult>;
    /// The next input from the cluster link.
    fn next_cluster(&mut self) -> Option<Input>;
    /// Answers the operators' requests waiting; `turns` is the loop's count so far.
    fn control(&mut self, hub: &mut Hub, now: Now, turns: u64);
    /// Hands a store job to the workers.
    fn submit(&mut self, job: Job);
    /// Hands an event to the other nodes.
    fn publish(&mut self, ev: Event);
    /// Gives freed heap memory back (and whatever else is done now and then).
    fn trim(&mut self);
    /// Whether the server has been asked to stop.
    fn stop_requested(&self) -> bool;
    /// Stops accepting connections: shutting down.
    fn stop_accepting(&mut self);
    /// The turn that started at `started` (an instant [`Io::clock`] returned) ended.
    fn turn_ended(&mut self, started: Instant);
}

/// The driver's own deadlines: with the hub's, they set how long a poll may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Output waits for its round: at once (the next poll only looks for input) or,
    /// while holding for the hashing, at the end of the pause.
    Flush,
    /// The end of the grace period for output at shutdown.
    Shutdown,
    /// Accepting resumes after running out of descriptors.
    AcceptResume,
    /// Heap memory is given back. Checked every turn, but never wakes the loop: an
    /// idle server sleeps.
    Trim,
    /// Input is left over (connections to read again, cluster events beyond the
    /// turn's share): the next poll does not wait.
    Again,
}

impl Timer {
    const COUNT: usize = 5;

    fn wakes(self) -> bool {
        !matches!(self, Timer::Trim)
    }
}

/// One deadline per [`Timer`].
#[derive(Debug, Default)]
struct Timers([Option<Instant>; Timer::COUNT]);

impl Timers {
    fn get(&self, t: Timer) -> Option<Instant> {
        self.0[t as usize]
    }

    fn set(&mut self, t: Timer, at: Option<Instant>) {
        self.0[t as usize] = at;
    }

    fn due(&self, t: Timer, now: Instant) -> bool {
        self.get(t).is_some_and(|at| now >= at)
    }

    /// The soonest deadline that wakes the loop.
    fn next(&self) -> Option<Instant> {
        const ALL: [Timer; Timer::COUNT] = [
            Timer::Flush,
            Timer::Shutdown,
            Timer::AcceptResume,
            Timer::Trim,
            Timer::Again,
        ];
        ALL.iter()
            .filter(|t| t.wakes())
            .filter_map(|t| self.get(*t))
            .min()
    }
}

/// The connections to read again next turn, once each however often they ask.
#[derive(Debug, Default)]
struct Again {
    list: Vec<ConnRef>,
    set: HashSet<ConnRef>,
}

impl Again {
    fn push(&mut self, r: ConnRef) {
        if self.set.insert(r) {
            self.list.push(r);
        }
    }

    fn contains(&self, r: ConnRef) -> bool {
        !self.set.is_empty() && self.set.contains(&r)
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn take(&mut self) -> Vec<ConnRef> {
        self.set.clear();
        std::mem::take(&mut self.list)
    }
}

/// How the driver is configured.
#[derive(Debug, Clone, Copy)]
pub struct DriverConfig {
    /// Longest time output waits while input keeps coming (zero: written at the end
    /// of every turn).
    pub flush_interval: Duration,
    /// On shutdown, how long queued output may take to drain.
    pub shutdown_grace: Duration,
}

/// The loop's turn order and write-scheduling state.
#[derive(Debug)]
pub struct Driver {
    cfg: DriverConfig,
    timers: Timers,
    /// When the next round of writes may start while input keeps coming.
    next_flush: Instant,
    /// A pause after a long round of writes, for the hashing: output then waits for
    /// its time even when the loop is idle.
    holding: bool,
    /// The last turn took its share of cluster events and more may wait.
    cluster_more: bool,
    again: Again,
    turns: u64,
}

impl Driver {
    /// A driver whose loop starts at `start` (an instant of its [`Io::clock`]).
    pub fn new(cfg: DriverConfig, start: Instant) -> Driver {
        let mut timers = Timers::default();
        timers.set(Timer::Trim, Some(start + TRIM_EVERY));
        Driver {
            cfg,
            timers,
            next_flush: start,
            holding: false,
            cluster_more: false,
            again: Again::default(),
            turns: 0,
        }
    }

    /// Turns so far.
    pub fn turns(&self) -> u64 {
        self.turns
    }

    /// Whether the server is shutting down.
    pub fn stopping(&self) -> bool {
        self.timers.get(Timer::Shutdown).is_some()
    }

    /// How long the next poll may wait, at `clock` (hub time `now`): until the sooner
    /// of the hub's next deadline and the driver's; `None`: until an event comes.
    pub fn timeout(&self, hub: &Hub, clock: Instant, now: Now) -> Option<Duration> {
        let hub_due = hub
            .poll_timeout(now)
            .map(|at| Duration::from_millis(at.saturating_sub(now.mono_ms)));
        let own = self
            .timers
            .next()
            .map(|at| at.saturating_duration_since(clock));
        match (hub_due, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One turn of the loop (see the module's documentation).
    pub fn turn<I: Io>(&mut self, hub: &mut Hub, io: &mut I) -> io::Result<Flow> {
        let clock = io.clock();
        let t = io.now(clock);
        let timeout = self.timeout(hub, clock, t);
        let any = match io.poll(timeout) {
            Ok(any) => any,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Flow::Running),
            Err(e) => return Err(e),
        };
        let start = io.clock();
        let t = io.now(start);
        let idle = !any;
        self.turns += 1;
        if any {
            self.events(hub, io, t, start);
        }
        // Users who left this turn are announced at its end. Before that, take in
        // every other hang-up already waiting (a crowd leaving at once), so that
        // nobody who is leaving is sent the others' departures.
        let mut extra = 0;
        while hub.has_departures() && extra < DEPARTURE_POLLS {
            extra += 1;
            match io.poll(Some(Duration::ZERO)) {
                Ok(true) => self.events(hub, io, t, start),
                _ => break,
            }
        }
        while let Some(res) = io.next_result() {
            hub.handle_result(res, t);
        }
        self.cluster_more = false;
        for n in 0..=CLUSTER_PER_TURN {
            match io.next_cluster() {
                Some(input) => hub.handle_cluster(input, t),
                None => break,
            }
            // The last one taken this turn: look again at once, after the sockets.
            self.cluster_more = n == CLUSTER_PER_TURN;
        }
        io.control(hub, t, self.turns);
        // Once each. A connection with input left over is read here, not for its
        // readiness events (above): otherwise one that always has input left (a
        // flood) gained a read per turn, every turn, and the others waited longer
        // and longer.
        for r in self.again.take() {
            self.read(hub, io, r, t);
        }
        while let Some(r) = hub.poll_read() {
            self.read(hub, io, r, t);
        }
        if self.timers.due(Timer::AcceptResume, start) {
            self.timers.set(Timer::AcceptResume, None);
            for n in 0..io.listeners() {
                if self.timers.get(Timer::AcceptResume).is_some() {
                    break;
                }
                accept(io, hub, &mut self.timers, n, t, start);
            }
        }
        hub.handle_timeout(t);
        if self.timers.due(Timer::Trim, start) {
            io.trim();
            self.timers.set(Timer::Trim, Some(start + TRIM_EVERY));
        }
        if !self.stopping() && io.stop_requested() {
            io.stop_accepting();
            hub.handle_shutdown(t);
            self.timers
                .set(Timer::Shutdown, Some(start + self.cfg.shutdown_grace));
        }
        submit(hub, io, t);
        let interval = self.cfg.flush_interval;
        let round_at = io.clock();
        let stopping = self.stopping();
        if stopping || round_at >= self.next_flush || (idle && !self.holding) {
            let peek_for = Peeks::window(RoundStart {
                idle,
                holding: self.holding,
                stopping,
                interval,
            });
            let written = self.round(hub, io, t, round_at, peek_for);
            let done = io.clock();
            hub.note_round(written, done - round_at);
            self.next_flush = hub.next_flush_at(round_at, done, interval);
            self.holding = self.next_flush > done + interval;
            self.timers.set(Timer::Flush, None);
            // Writing can queue jobs (the removal of stored messages that reached a
            // client, the next batch of them): they go now, not next turn.
            submit(hub, io, t);
        } else if hub.has_output() {
            // Output waits for the interval while input keeps coming, never while the
            // loop would sleep: the next poll only looks for input, and the round
            // comes if there is none (or, while holding, at the end of the pause).
            let at = if self.holding {
                self.next_flush
            } else {
                round_at
            };
            self.timers.set(Timer::Flush, Some(at));
        } else {
            self.timers.set(Timer::Flush, None);
        }
        let again = !self.again.is_empty() || self.cluster_more;
        self.timers.set(Timer::Again, again.then_some(start));
        io.turn_ended(start);
        match self.timers.get(Timer::Shutdown) {
            Some(deadline) if hub.conn_count() == 0 || start >= deadline => Ok(Flow::Stopped),
            _ => Ok(Flow::Running),
        }
    }

    /// Acts on what the last poll found.
    fn events<I: Io>(&mut self, hub: &mut Hub, io: &mut I, t: Now, at: Instant) {
        let again = &mut self.again;
        let timers = &mut self.timers;
        io.events(|io, ev| match ev {
            Ready::Conn { r, read, write } => {
                // One left with input last turn is read later in this one, once.
                if read && !again.contains(r) && io.read(hub, r, t) == Read::NextTurn {
                    again.push(r);
                }
                if write && io.writable(hub, r, t) == Read::NextTurn {
                    again.push(r);
                }
            }
            Ready::Listener(n) => {
                if timers.get(Timer::AcceptResume).is_none() {
                    accept(io, hub, timers, n, t, at);
                }
            }
        });
    }

    fn read<I: Io>(&mut self, hub: &mut Hub, io: &mut I, r: ConnRef, t: Now) {
        if io.read(hub, r, t) == Read::NextTurn {
            self.again.push(r);
        }
    }

    /// Announces departures, writes every connection with pending output, then drops
    /// the connections closed; repeated while closing produces more. Returns how many
    /// connections were written.
    ///
    /// For its first `peek_for`, the round looks for input every [`PEEK_EVERY`] and
    /// takes it in: a message that came while the round was writing goes out with it,
    /// in the same write, to the recipients not yet written, and to the others right
    /// after them (see [`Hub::poll_write`]), instead of waiting for the round to end
    /// and then for a round of its own.
    fn round<I: Io>(
        &mut self,
        hub: &mut Hub,
        io: &mut I,
        t: Now,
        start: Instant,
        peek_for: Duration,
    ) -> usize {
        let mut written = 0;
        let mut peeks = Peeks::new(start, peek_for);
        loop {
            let mut did = hub.has_departures();
            hub.announce_departures(t);
            while let Some(r) = hub.poll_write() {
                did = true;
                written += 1;
                io.write(hub, r, t);
                if let Some(at) = peeks.look(|| io.clock())
                    && let Ok(true) = io.poll(Some(Duration::ZERO))
                {
                    let now = io.now(at);
                    self.events(hub, io, now, at);
                }
            }
            while let Some(r) = hub.poll_close(t) {
                did = true;
                io.close(r);
            }
            if !did {
                break;
            }
        }
        written
    }
}

fn accept<I: Io>(io: &mut I, hub: &mut Hub, timers: &mut Timers, n: usize, t: Now, at: Instant) {
    if io.accept(hub, n, t) == Accept::Exhausted {
        timers.set(Timer::AcceptResume, Some(at + ACCEPT_BACKOFF));
    }
}

/// Hands the hub's store jobs to the workers and its events to the other nodes.
fn submit<I: Io>(hub: &mut Hub, io: &mut I, t: Now) {
    while let Some(job) = hub.poll_job(t) {
        io.submit(job);
    }
    while let Some(ev) = hub.poll_publish() {
        io.publish(ev);
    }
}

/// When a round of writes looks for input that came meanwhile: every [`PEEK_EVERY`],
/// for its first stretch of time (nothing after that: the round then ends, and the
/// loop's other work gets its turn however busy the sockets are).
#[derive(Debug)]
struct Peeks {
    last: Instant,
    until: Instant,
    /// The round may still look: false once `until` has passed, and from the start
    /// for a round that is not to look. Then [`Peeks::look`] reads no clock.
    open: bool,
}

/// Why a round of writes starts, for [`Peeks::window`].
#[derive(Debug, Clone, Copy)]
struct RoundStart {
    /// The loop's last poll found nothing to read.
    idle: bool,
    /// Output is held back for the hashing threads (`Admission::next_flush_at`).
    holding: bool,
    /// The server is stopping.
    stopping: bool,
    /// The flush interval.
    interval: Duration,
}

impl Peeks {
    /// How long a round looks for input: its first flush interval if it starts
    /// because the loop found nothing to read (what comes meanwhile goes out in it);
    /// not at all if it starts because the interval ran out while input kept coming
    /// (the load batches itself, and looking would only cut the batches short), nor
    /// while output is held or the server stops.
    fn window(r: RoundStart) -> Duration {
        if r.idle && !r.holding && !r.stopping {
            r.interval
        } else {
            Duration::ZERO
        }
    }

    fn new(start: Instant, peek_for: Duration) -> Peeks {
        Peeks {
            last: start,
            until: start + peek_for,
            open: !peek_for.is_zero(),
        }
    }

    /// Whether to look now, after a write: the instant if so. The clock is read only
    /// while the round may still look (a round at saturation writes thousands of
    /// times and never looks).
    #[inline]
    fn look(&mut self, clock: impl FnOnce() -> Instant) -> Option<Instant> {
        if !self.open {
            return None;
        }
        let now = clock();
        self.due(now).then_some(now)
    }

    /// Whether to look at `now`; if so, the next look is due [`PEEK_EVERY`] from now.
    #[inline]
    fn due(&mut self, now: Instant) -> bool {
        if now >= self.until {
            self.open = false;
            return false;
        }
        if now < self.last + PEEK_EVERY {
            return false;
        }
        self.last = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_round_that_starts_from_an_idle_loop_looks() {
        let interval = Duration::from_micros(500);
        let start = |idle, holding, stopping| RoundStart {
            idle,
            holding,
            stopping,
            interval,
        };
        assert_eq!(Peeks::window(start(true, false, false)), interval);
        assert_eq!(
            Peeks::window(start(false, false, false)),
            Duration::ZERO,
            "input kept coming: the interval ran out"
        );
        assert_eq!(Peeks::window(start(true, true, false)), Duration::ZERO);
        assert_eq!(Peeks::window(start(true, false, true)), Duration::ZERO);
    }

    /// Virtual time: the looks a round of writes takes, from its start.
    #[test]
    fn a_round_looks_for_input_every_peek_every_during_its_first_peek_for_only() {
        let start = Instant::now();
        let us = |n: u64| start + Duration::from_micros(n);
        let mut p = Peeks::new(start, Duration::from_micros(500));
        assert!(!p.due(start));
        assert!(!p.due(us(49)));
        assert!(p.due(us(50)));
        assert!(!p.due(us(60)), "the next one is 50 us after the last");
        assert!(!p.due(us(99)));
        assert!(p.due(us(130)));
        assert!(!p.due(us(179)));
        assert!(p.due(us(480)), "a long write in between: one look, at once");
        assert!(p.open);
        assert!(!p.due(us(500)), "none after the first 500 us");
        assert!(!p.open, "and no clock is read for it any more");
        assert!(!p.due(us(10_000)));
        assert_eq!(p.look(|| panic!("a clock read")), None);
        let mut never = Peeks::new(start, Duration::ZERO);
        assert!(!never.open, "a round that is not to look reads no clock");
        assert_eq!(never.look(|| panic!("a clock read")), None);
        assert!(!never.due(us(50)), "a round that is not to look never does");
        assert!(!never.due(us(1_000)));
    }

    #[test]
    fn the_timer_table_gives_the_soonest_deadline_that_wakes_the_loop() {
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        let mut timers = Timers::default();
        assert_eq!(timers.next(), None);
        timers.set(Timer::Trim, Some(ms(1)));
        assert_eq!(timers.next(), None, "trimming never wakes the loop");
        assert!(timers.due(Timer::Trim, ms(1)));
        timers.set(Timer::Shutdown, Some(ms(30)));
        timers.set(Timer::AcceptResume, Some(ms(20)));
        assert_eq!(timers.next(), Some(ms(20)));
        timers.set(Timer::Again, Some(ms(0)));
        assert_eq!(timers.next(), Some(ms(0)));
        timers.set(Timer::Again, None);
        timers.set(Timer::AcceptResume, None);
        assert_eq!(timers.next(), Some(ms(30)));
    }

    /// The write policy in virtual time, through the test harness (the same driver,
    /// over in-memory sockets).
    mod policy {
        use super::*;
        use crate::hub::HubConfig;
        use crate::hub::testkit::{Harness, login_msg, test_config};
        use crate::proto::{ClientMessage, SmsMes};

        const INTERVAL: Duration = Duration::from_micros(500);

        fn us(n: u64) -> Duration {
            Duration::from_micros(n)
        }

        fn sms(content: &str) -> ClientMessage {
            ClientMessage::Sms(SmsMes {
                content: content.into(),
                ..Default::default()
            })
        }

        /// No flood control: the tests send faster than a client may, and log many
        /// in from one address.
        fn harness() -> Harness {
            Harness::new(HubConfig {
                msg_rate: 0,
                login_rate: 0,
                register_rate: 0,
                max_conns_per_addr: 0,
                ..test_config()
            })
        }

        /// One sender and `N - 1` readers online, the readers reading all the time.
        fn room<const N: usize>(t: &mut Harness) -> [ConnRef; N] {
            let conns = t.everyone_online(std::array::from_fn(|i| i as i64 + 1));
            for r in &conns[1..] {
                t.keep_reading(*r);
            }
            conns
        }

        /// The writes since the `from`th: when, to whom.
        fn writes_since(t: &Harness, from: usize) -> Vec<(Duration, ConnRef)> {
            t.writes()[from..].iter().map(|w| (w.0, w.1)).collect()
        }

        fn contents(t: &mut Harness, r: ConnRef) -> Vec<String> {
            t.recv(r)
                .into_iter()
                .filter_map(|m| match m {
                    crate::proto::ServerMessage::Sms(m) => Some(m.content),
                    _ => None,
                })
                .collect()
        }

        #[test]
        fn a_quiet_loop_writes_at_once() {
            let mut t = harness();
            let [a, b] = room(&mut t);
            let (from, at, turns) = (t.writes().len(), t.elapsed(), t.turns());
            t.send(a, &sms("hello"));
            assert_eq!(
                writes_since(&t, from),
                [(at, b)],
                "written when it came, with no timer"
            );
            assert!(
                t.turns() - turns <= 2,
                "the turn that read it, and one whose poll found nothing: {}",
                t.turns() - turns
            );
            assert_eq!(contents(&mut t, b), ["hello"]);
        }

        #[test]
        fn while_input_keeps_coming_output_goes_at_least_once_per_flush_interval() {
            let mut t = harness();
            let [a, b] = room(&mut t);
            // A message every 20 us, and a read takes 30: every poll finds input, the
            // loop is never idle.
            t.set_costs(us(30), us(5));
            let n = 250;
            for i in 0..n {
                t.send_later(a, &sms(&format!("m{i}")), us(20 * (i + 1)));
            }
            let (from, start) = (t.writes().len(), t.elapsed());
            t.advance_by(us(20 * n + 1_000));
            let to_b: Vec<Duration> = writes_since(&t, from)
                .into_iter()
                .filter(|w| w.1 == b)
                .map(|w| w.0 - start)
                .collect();
            let busy = us(20 * n);
            let during: Vec<Duration> = to_b.iter().copied().filter(|w| *w <= busy).collect();
            assert!(
                during.len() >= (busy.as_micros() / INTERVAL.as_micros()) as usize - 1,
                "{to_b:?}"
            );
            assert!(
                to_b.len() < n as usize / 10,
                "what a stretch of turns produced goes in one write: {to_b:?}"
            );
            let mut last = Duration::ZERO;
            for w in &during {
                assert!(
                    *w - last <= INTERVAL + us(60),
                    "at most an interval and a turn between writes: {to_b:?}"
                );
                last = *w;
            }
            let got = contents(&mut t, b);
            assert_eq!(got.len(), n as usize, "nothing lost");
            assert_eq!(got.last().map(String::as_str), Some("m249"));
        }

        #[test]
        fn a_round_from_an_idle_loop_takes_in_input_that_comes_while_it_writes() {
            let mut t = harness();
            let conns: [ConnRef; 41] = room(&mut t);
            let (a, readers) = (conns[0], &conns[1..]);
            // A round to the 40 readers takes 400 us; the second message comes 100 us
            // into it, when 10 readers have been written.
            t.set_costs(Duration::ZERO, us(10));
            t.send_later(a, &sms("second"), us(100));
            let from = t.writes().len();
            t.send(a, &sms("first"));
            let writes = writes_since(&t, from);
            let count = |r: &ConnRef| writes.iter().filter(|w| w.1 == *r).count();
            let twice = readers.iter().filter(|r| count(r) == 2).count();
            let once = readers.iter().filter(|r| count(r) == 1).count();
            assert_eq!(
                (once, twice),
                (30, 10),
                "the readers not yet written got both in one write, the others the \
                 second right after: {writes:?}"
            );
            let end = writes.last().expect("writes").0;
            assert!(
                end < t.elapsed() && end - writes[0].0 < us(500),
                "all in the one round: {writes:?}"
            );
            for r in readers {
                assert_eq!(contents(&mut t, *r), ["first", "second"]);
            }
        }

        #[test]
        fn a_round_that_starts_while_input_keeps_coming_does_not_look_for_more() {
            let mut t = harness();
            let conns: [ConnRef; 41] = room(&mut t);
            let (a, readers) = (conns[0], &conns[1..]);
            // Input every 20 us, a read takes 30: the loop is never idle, and its
            // rounds start because the interval ran out. Each takes 400 us.
            t.set_costs(us(30), us(10));
            for i in 0..100 {
                t.send_later(a, &sms(&format!("m{i:03}")), us(20 * (i + 1)));
            }
            let from = t.writes().len();
            t.advance(3);
            // The first round: one write to each reader, all with what the round
            // started with (messages coming meanwhile wait for the next round).
            let first = &t.writes()[from..from + readers.len()];
            let whom: HashSet<ConnRef> = first.iter().map(|w| w.1).collect();
            assert_eq!(whom.len(), readers.len(), "{first:?}");
            assert!(
                first.iter().all(|w| w.2 == first[0].2),
                "no input taken in during the round: {first:?}"
            );
            for r in readers {
                assert_eq!(contents(&mut t, *r).len(), 100);
            }
        }

        #[test]
        fn while_hashing_a_long_round_of_writes_is_followed_by_a_pause() {
            for hashing in [false, true] {
                let mut t = harness();
                let conns: [ConnRef; 41] = room(&mut t);
                let (a, readers) = (conns[0], &conns[1..]);
                if hashing {
                    // A login waits for its hash (the job is not run).
                    t.register(99);
                    let c = t.connect();
                    t.send(c, &login_msg(99, "pw99"));
                    assert!(t.hub.hashing());
                }
                // A round to the 40 readers takes 1.2 ms: a long one.
                t.set_costs(Duration::ZERO, us(30));
                let from = t.writes().len();
                let start = t.elapsed();
                t.send(a, &sms("first"));
                let took = t.elapsed() - start;
                assert_eq!(took, us(1_200));
                let second = t.writes().len();
                t.send(a, &sms("second"));
                let at_once = t.writes().len() > second;
                assert_eq!(
                    at_once, !hashing,
                    "after a long round, output waits while logins wait for hashing"
                );
                t.advance(3);
                let writes = writes_since(&t, from);
                let first_after = writes[readers.len()].0 - start;
                if hashing {
                    assert_eq!(
                        first_after,
                        took + took,
                        "a pause as long as the round: {writes:?}"
                    );
                } else {
                    assert_eq!(first_after, took, "{writes:?}");
                }
                for r in readers {
                    assert_eq!(contents(&mut t, *r), ["first", "second"]);
                }
            }
        }
    }
}
