//! The loop's I/O side in memory, under the same turn driver as the reactor
//! ([`Driver`]): for the state-machine tests and the fuzz target.
//!
//! No sockets, threads or clocks. [`Harness`] implements [`Io`] over in-memory
//! sockets and a virtual clock, and runs [`Driver::turn`] as the reactor does, so the
//! order of a turn and the write policy are the server's own, and a lost wake-up fails
//! a test instead of being papered over:
//! - bytes a test sends wait "in the socket" and reach the hub only while it wants to
//!   read, and again only when [`Hub::poll_read`] names the connection;
//! - a socket takes bytes only while its client reads ([`Harness::recv`], or
//!   [`Harness::keep_reading`]): a write at any other time blocks, and output waits in
//!   the hub's queue until the client reads and the socket's writable edge brings the
//!   connection back ([`Hub::handle_writable`]);
//! - store jobs wait in a queue until the test runs them (in order, or one chosen by
//!   index) against an in-memory store; their results come back at the next turn;
//! - what the hub publishes for other nodes is kept for the test
//!   ([`Harness::take_published`]);
//! - time moves only when the test says so ([`Harness::advance`]), from deadline to
//!   deadline, with a turn at each (the driver's and the hub's: the timeout a poll
//!   would sleep for); reads and writes can be given a cost in virtual time, to run
//!   the write policy as a busy loop meets it;
//! - [`Hub::check_invariants`] runs after every step.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::cluster::{Event, Input};
use crate::conn::ConnRef;
use crate::hub::turn::{Accept, Driver, DriverConfig, Io, Read, Ready};
use crate::hub::{Hub, HubConfig, Now, Written};
use crate::job::{Job, JobResult, Passwords, execute};
use crate::proto::{self, ClientMessage, ServerMessage};
use crate::store::mem::MemStore;

/// The hub's clock when a harness starts, in ms.
const START_MS: u64 = 1_000;
/// Turns one step may take before the harness says the loop spins.
const MAX_TURNS: usize = 1_000_000;

pub struct Harness {
    pub hub: Hub,
    pub store: MemStore,
    pub(crate) hasher: TestPasswords,
    /// The hub's time now (the monotonic part follows the virtual clock; a test may
    /// move the wall clock).
    pub now: Now,
    /// Jobs taken from the hub and not yet run.
    pub jobs: VecDeque<Job>,
    /// Connections the hub has closed, in order.
    pub closed: Vec<ConnRef>,
    /// What each hashing job "took" as reported to the hub (virtual: the harness
    /// runs jobs at once).
    pub hash_cost_ms: u64,
    driver: Driver,
    sockets: Sockets,
}

/// The in-memory side of every socket, the worker pool's and cluster link's queues,
/// and the virtual clock.
struct Sockets {
    /// The loop's start, and the virtual time since.
    base: Instant,
    elapsed: Duration,
    /// How far the step under way may move the clock: a poll sleeps until its timeout
    /// or this, whichever comes first.
    until: Duration,
    /// Readiness for the next poll, and what the last poll found.
    ready: Vec<Ready>,
    polled: Vec<Ready>,
    /// Bytes sent by each test client that the hub has not read yet.
    inbox: HashMap<ConnRef, Vec<u8>>,
    /// Input scheduled to arrive: when, on which connection, what; in time order.
    arrivals: VecDeque<(Duration, ConnRef, Vec<u8>)>,
    /// Peers that hung up, seen at their socket's next read.
    hung_up: HashSet<ConnRef>,
    /// Peers waiting on the listener; the outcome of the last accept.
    peers: VecDeque<SocketAddr>,
    accepted: Option<Result<ConnRef, Rc<[u8]>>>,
    /// Connections whose client reads now: their sockets take bytes.
    reading: HashSet<ConnRef>,
    /// Connections whose client reads all the time.
    keep_reading: HashSet<ConnRef>,
    /// Connections whose socket takes no bytes at all for now.
    stalled: HashSet<ConnRef>,
    /// Connections whose last write blocked (output waits in the hub).
    blocked: HashSet<ConnRef>,
    /// Bytes written to each connection's socket and not yet read by the test.
    wire: HashMap<ConnRef, Vec<u8>>,
    results: VecDeque<JobResult>,
    cluster: VecDeque<Input>,
    published: Vec<Event>,
    /// The operators' requests (ban or remove a user), and how many sessions the
    /// last one closed.
    admin: VecDeque<(i64, crate::ops::admin::Kick)>,
    admin_closed: usize,
    /// Virtual time each read and each write takes.
    read_cost: Duration,
    write_cost: Duration,
    /// Every write that reached a socket: when, to which connection, how many bytes.
    writes: Vec<(Duration, ConnRef, usize)>,
}

impl Sockets {
    fn new(base: Instant) -> Sockets {
        Sockets {
            base,
            elapsed: Duration::ZERO,
            until: Duration::ZERO,
            ready: Vec::new(),
            polled: Vec::new(),
            inbox: HashMap::new(),
            arrivals: VecDeque::new(),
            hung_up: HashSet::new(),
            peers: VecDeque::new(),
            accepted: None,
            reading: HashSet::new(),
            keep_reading: HashSet::new(),
            stalled: HashSet::new(),
            blocked: HashSet::new(),
            wire: HashMap::new(),
            results: VecDeque::new(),
            cluster: VecDeque::new(),
            published: Vec::new(),
            admin: VecDeque::new(),
            admin_closed: 0,
            read_cost: Duration::ZERO,
            write_cost: Duration::ZERO,
            writes: Vec::new(),
        }
    }

    /// Whether job results, cluster inputs or operators' requests wait: they wake
    /// the loop, as the reactor's waker does.
    fn woken(&self) -> bool {
        !self.results.is_empty() || !self.cluster.is_empty() || !self.admin.is_empty()
    }

    /// Bytes arrive on `r`'s socket: a readable edge.
    fn arrive(&mut self, r: ConnRef, bytes: &[u8]) {
        self.inbox.entry(r).or_default().extend_from_slice(bytes);
        self.ready.push(Ready::Conn {
            r,
            read: true,
            write: false,
        });
    }

    /// `r`'s socket can take bytes again: a writable edge, if a write blocked.
    fn open(&mut self, r: ConnRef) {
        if self.blocked.contains(&r) {
            self.ready.push(Ready::Conn {
                r,
                read: false,
                write: true,
            });
        }
    }
}

/// [`Io`] over a harness's sockets, for one turn.
struct Mem<'a> {
    s: &'a mut Sockets,
    now: &'a mut Now,
    jobs: &'a mut VecDeque<Job>,
    closed: &'a mut Vec<ConnRef>,
}

impl Mem<'_> {
    /// Moves the virtual clock to `elapsed` (never back), and the hub's time with it.
    fn set_clock(&mut self, elapsed: Duration) {
        if elapsed <= self.s.elapsed {
            return;
        }
        let ms = |d: Duration| d.as_millis() as u64;
        let step = ms(elapsed) - ms(self.s.elapsed);
        self.s.elapsed = elapsed;
        self.now.mono_ms += step;
        self.now.unix_ms += step;
    }

    fn spend(&mut self, d: Duration) {
        let to = self.s.elapsed + d;
        self.set_clock(to);
    }
}

impl Io for Mem<'_> {
    fn clock(&mut self) -> Instant {
        self.s.base + self.s.elapsed
    }

    fn now(&mut self, at: Instant) -> Now {
        let mono_ms = START_MS + at.saturating_duration_since(self.s.base).as_millis() as u64;
        let behind = self.now.mono_ms.saturating_sub(mono_ms);
        Now {
            mono_ms,
            unix_ms: self.now.unix_ms - behind,
        }
    }

    fn poll(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        let arrived = |s: &Sockets| s.arrivals.front().is_some_and(|a| a.0 <= s.elapsed);
        let woken = self.s.woken();
        if self.s.ready.is_empty() && !woken && !arrived(self.s) {
            // Sleeps until the timeout, the next arrival, or the end of the step.
            let mut wake = self.s.until;
            if let Some(t) = timeout {
                wake = wake.min(self.s.elapsed + t);
            }
            if let Some(a) = self.s.arrivals.front() {
                wake = wake.min(a.0);
            }
            self.set_clock(wake);
        }
        while arrived(self.s) {
            let (_, r, bytes) = self.s.arrivals.pop_front().expect("an arrival");
            self.s.arrive(r, &bytes);
        }
        self.s.polled = std::mem::take(&mut self.s.ready);
        Ok(woken || !self.s.polled.is_empty())
    }

    fn events<F: FnMut(&mut Self, Ready)>(&mut self, mut on: F) {
        for ev in std::mem::take(&mut self.s.polled) {
            on(self, ev);
        }
    }

    /// What the reactor does on a readable edge. A hang-up reaches the hub at once,
    /// as the old harness had it (a real socket's end is read only while the hub
    /// reads).
    fn read(&mut self, hub: &mut Hub, r: ConnRef, now: Now) -> Read {
        if self.s.hung_up.remove(&r) {
            self.s.inbox.remove(&r);
            hub.handle_hangup(r, "test hangup", now);
            return Read::Done;
        }
        if !hub.wants_read(r) {
            return Read::Done;
        }
        let Some(bytes) = self.s.inbox.remove(&r) else {
            return Read::Done;
        };
        self.spend(self.s.read_cost);
        hub.handle_input(r, &bytes, now);
        Read::Done
    }

    fn writable(&mut self, hub: &mut Hub, r: ConnRef, _now: Now) -> Read {
        hub.handle_writable(r);
        Read::Done
    }

    fn write(&mut self, hub: &mut Hub, r: ConnRef, now: Now) {
        let open = self.s.reading.contains(&r) && !self.s.stalled.contains(&r);
        let at = self.s.elapsed;
        let wire = self.s.wire.entry(r).or_default();
        let (mut called, mut took) = (false, 0);
        let done = hub.write(r, now, |iov| {
            called = true;
            if !open {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for s in iov {
                wire.extend_from_slice(s);
                n += s.len();
            }
            took += n;
            Ok(n)
        });
        if done == Written::Blocked {
            self.s.blocked.insert(r);
        } else {
            self.s.blocked.remove(&r);
        }
        if took > 0 {
            self.s.writes.push((at, r, took));
        }
        if called {
            // A write costs its system call whether the socket takes bytes or not.
            self.spend(self.s.write_cost);
        }
    }

    fn close(&mut self, r: ConnRef) {
        self.s.blocked.remove(&r);
        self.s.inbox.remove(&r);
        self.closed.push(r);
    }

    fn accept(&mut self, hub: &mut Hub, _n: usize, now: Now) -> Accept {
        while let Some(peer) = self.s.peers.pop_front() {
            self.s.accepted = Some(hub.accept(peer, now));
        }
        Accept::Drained
    }

    fn listeners(&self) -> usize {
        1
    }

    fn next_result(&mut self) -> Option<JobResult> {
        self.s.results.pop_front()
    }

    fn next_cluster(&mut self) -> Option<Input> {
        self.s.cluster.pop_front()
    }

    fn control(&mut self, hub: &mut Hub, now: Now, _turns: u64) {
        while let Some((user, kick)) = self.s.admin.pop_front() {
            self.s.admin_closed = hub.handle_admin(user, kick, now);
        }
    }

    fn submit(&mut self, job: Job) {
        self.jobs.push_back(job);
    }

    fn publish(&mut self, ev: Event) {
        self.s.published.push(ev);
    }

    fn trim(&mut self) {}

    fn stop_requested(&self) -> bool {
        false
    }

    fn stop_accepting(&mut self) {}

    fn turn_ended(&mut self, _started: Instant) {}
}

/// A stand-in for argon2id in the state-machine tests: a quick, non-secret digest
/// (FNV-1a) behind a marker, so the jobs' logic (verify, upgrade a seed plaintext
/// record) runs unchanged and instantly, with no hashing crate in the build.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestPasswords;

impl TestPasswords {
    fn digest(password: &str) -> String {
        let h = password.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        format!("$test${h:016x}")
    }
}

impl Passwords for TestPasswords {
    fn hash(&self, password: &str) -> Result<String, crate::job::HashError> {
        Ok(Self::digest(password))
    }

    fn verify(&self, password: &str, phc: &str) -> bool {
        Self::digest(password) == phc
    }
}

impl Harness {
    pub fn new(cfg: HubConfig) -> Harness {
        // The virtual clock's origin; nothing reads the real clock after this.
        let base = Instant::now();
        Harness {
            hub: Hub::new(cfg),
            store: MemStore::new(),
            hasher: TestPasswords,
            now: Now {
                mono_ms: START_MS,
                unix_ms: 1_700_000_000_000,
            },
            jobs: VecDeque::new(),
            closed: Vec::new(),
            hash_cost_ms: 10,
            driver: Driver::new(
                DriverConfig {
                    flush_interval: Duration::from_micros(500),
                    shutdown_grace: Duration::from_secs(2),
                },
                base,
            ),
            sockets: Sockets::new(base),
        }
    }

    pub fn connect(&mut self) -> ConnRef {
        let n = self.hub.conn_count() as u16;
        self.connect_from(std::net::SocketAddr::from(([127, 0, 0, 1], 10_000 + n)))
    }

    pub fn connect_from(&mut self, peer: std::net::SocketAddr) -> ConnRef {
        self.try_connect_from(peer)
            .unwrap_or_else(|frame| panic!("connection refused: {:?}", parse(&frame)))
    }

    /// Connects, or returns the refusal the hub would write before closing.
    pub fn try_connect_from(&mut self, peer: std::net::SocketAddr) -> Result<ConnRef, Rc<[u8]>> {
        self.sockets.peers.push_back(peer);
        self.sockets.ready.push(Ready::Listener(0));
        self.pump();
        self.sockets
            .accepted
            .take()
            .expect("the listener accepted the connection")
    }

    pub fn send(&mut self, r: ConnRef, msg: &ClientMessage) {
        self.send_bytes(r, &msg.encode());
    }

    /// Bytes arrive on `r`'s socket: the hub reads them if it wants to read now,
    /// otherwise they wait until it names `r` in `poll_read`.
    pub fn send_bytes(&mut self, r: ConnRef, bytes: &[u8]) {
        self.sockets.arrive(r, bytes);
        self.pump();
    }

    /// `msg` arrives on `r`'s socket `after` from now, while time moves
    /// ([`Harness::advance_by`]).
    pub fn send_later(&mut self, r: ConnRef, msg: &ClientMessage, after: Duration) {
        let at = self.sockets.elapsed + after;
        let arrivals = &mut self.sockets.arrivals;
        let i = arrivals.partition_point(|a| a.0 <= at);
        arrivals.insert(i, (at, r, msg.encode().to_vec()));
    }

    pub fn hangup(&mut self, r: ConnRef) {
        self.hangup_all(&[r]);
    }

    /// Several peers hang up in the same loop turn.
    pub fn hangup_all(&mut self, rs: &[ConnRef]) {
        for r in rs {
            self.sockets.hung_up.insert(*r);
            self.sockets.ready.push(Ready::Conn {
                r: *r,
                read: true,
                write: false,
            });
        }
        self.pump();
    }

    /// Moves time forward by `ms`, from deadline to deadline, with a turn at each.
    pub fn advance(&mut self, ms: u64) {
        self.advance_by(Duration::from_millis(ms));
    }

    /// Moves time forward by `d` (see [`Harness::advance`]).
    pub fn advance_by(&mut self, d: Duration) {
        self.sockets.until = self.sockets.elapsed + d;
        self.pump();
    }

    /// Virtual time since the harness started.
    pub fn elapsed(&self) -> Duration {
        self.sockets.elapsed
    }

    /// Virtual time each read and each write (taken or blocked) takes from now on
    /// (none at first).
    pub fn set_costs(&mut self, read: Duration, write: Duration) {
        self.sockets.read_cost = read;
        self.sockets.write_cost = write;
    }

    /// `r`'s client reads all the time: its socket takes whatever is written at once.
    pub fn keep_reading(&mut self, r: ConnRef) {
        self.sockets.keep_reading.insert(r);
        self.sockets.reading.insert(r);
        self.sockets.open(r);
        self.pump();
    }

    /// Every write that reached a socket so far: when (virtual time since the start),
    /// to which connection, how many bytes (all the vectored write calls one
    /// [`Hub::write`] made).
    pub fn writes(&self) -> &[(Duration, ConnRef, usize)] {
        &self.sockets.writes
    }

    /// Turns of the loop so far.
    pub fn turns(&self) -> u64 {
        self.driver.turns()
    }

    /// What the hub published for the other nodes since the last call.
    pub fn take_published(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.sockets.published)
    }

    /// An operator banned or removed `user` (the store already changed): returns
    /// how many sessions the hub closed.
    pub fn admin(&mut self, user: i64, kick: crate::ops::admin::Kick) -> usize {
        self.sockets.admin.push_back((user, kick));
        self.pump();
        self.sockets.admin_closed
    }

    /// Something from the cluster link.
    pub fn cluster(&mut self, input: crate::cluster::Input) {
        self.sockets.cluster.push_back(input);
        self.pump();
    }

    /// `r`'s socket stops taking bytes (its reader stalls), or takes them again.
    pub fn stall(&mut self, r: ConnRef, stalled: bool) {
        if stalled {
            self.sockets.stalled.insert(r);
        } else {
            self.sockets.stalled.remove(&r);
            self.sockets.open(r);
            self.pump();
        }
    }

    /// Whether the hub has output queued for `r` that its socket has not taken.
    pub fn write_pending(&self, r: ConnRef) -> bool {
        self.sockets.blocked.contains(&r)
    }

    /// Runs turns of the loop while any is due before the end of the step under way
    /// (now, outside [`Harness::advance`]): a poll would find events, or would not
    /// sleep past the step; then time moves to the step's end.
    ///
    /// A test that called the hub directly (`t.hub.handle_shutdown(..)`) did so as if
    /// within a turn: if that left output, the step starts with a turn.
    fn pump(&mut self) {
        let mut turns = 0;
        let mut direct = self.hub.has_output();
        while std::mem::take(&mut direct) || self.due() {
            let mut io = Mem {
                s: &mut self.sockets,
                now: &mut self.now,
                jobs: &mut self.jobs,
                closed: &mut self.closed,
            };
            self.driver
                .turn(&mut self.hub, &mut io)
                .expect("the harness's I/O does not fail");
            turns += 1;
            assert!(turns < MAX_TURNS, "the loop does not settle");
        }
        let mut io = Mem {
            s: &mut self.sockets,
            now: &mut self.now,
            jobs: &mut self.jobs,
            closed: &mut self.closed,
        };
        let until = io.s.until;
        io.set_clock(until);
        self.sockets.until = self.sockets.elapsed;
        self.hub.check_invariants();
    }

    /// Whether a turn is due before the step's end.
    fn due(&self) -> bool {
        let s = &self.sockets;
        if !s.ready.is_empty() || s.woken() || s.arrivals.front().is_some_and(|a| a.0 <= s.until) {
            return true;
        }
        self.driver
            .timeout(&self.hub, s.base + s.elapsed, self.now)
            .is_some_and(|d| s.elapsed + d <= s.until)
    }

    /// Runs the job at `index` (0 = oldest) and feeds its result back.
    pub fn run_job(&mut self, index: usize) {
        let job = self.jobs.remove(index).expect("no such job");
        // Jobs that hash take `hash_cost_ms` of virtual time; the rest (an unknown user's
        // login included) none, as with real workers.
        let outcome = execute(&mut self.store.clone(), &self.hasher, job.kind);
        let took = Some(std::time::Duration::from_millis(if outcome.hashed() {
            self.hash_cost_ms
        } else {
            0
        }));
        self.feed(JobResult {
            conn: job.conn,
            outcome,
            took,
        });
    }

    /// Feeds a job result chosen by the test: it comes back from the workers.
    pub fn feed(&mut self, res: JobResult) {
        self.sockets.results.push_back(res);
        self.pump();
    }

    /// Runs jobs, oldest first, until none are left (follow-up jobs included).
    pub fn run_jobs(&mut self) {
        while !self.jobs.is_empty() {
            self.run_job(0);
        }
    }

    /// `r`'s client reads: its socket takes what the hub writes meanwhile (a blocked
    /// write comes back with the writable edge), and the whole frames that reached
    /// the socket are taken (as the client would read them).
    pub fn recv_frames(&mut self, r: ConnRef) -> Vec<Rc<[u8]>> {
        let s = &mut self.sockets;
        if s.reading.insert(r) {
            s.open(r);
            self.pump();
            self.sockets.reading.remove(&r);
        }
        let wire = self.sockets.wire.entry(r).or_default();
        let mut frames = Vec::new();
        while let Ok(Some(n)) = proto::check(wire, usize::MAX >> 8) {
            frames.push(Rc::from(&wire[..n]));
            wire.drain(..n);
        }
        frames
    }

    /// Takes and parses the frames queued for `r`.
    pub fn recv(&mut self, r: ConnRef) -> Vec<ServerMessage> {
        self.recv_frames(r)
            .iter()
            .map(|f| {
                assert_eq!(
                    u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
                    f.len() - 4
                );
                ServerMessage::parse(&f[proto::HEADER_LEN..]).expect("server frames parse")
            })
            .collect()
    }

    pub fn is_closed(&self, r: ConnRef) -> bool {
        self.closed.contains(&r)
    }

    /// Registers `id` (named `u<id>`, password `pw<id>`) through the protocol.
    pub fn register(&mut self, id: i64) {
        let c = self.connect();
        self.send(
            c,
            &ClientMessage::Register(proto::RegisterMes {
                user: proto::User {
                    user_id: id,
                    user_pwd: format!("pw{id}"),
                    user_name: format!("u{id}"),
                    ..Default::default()
                },
                max_frame: None,
            }),
        );
        self.run_jobs();
        let got = self.recv(c);
        assert!(
            matches!(&got[..], [ServerMessage::RegisterRes(r)] if r.code == 200),
            "{got:?}"
        );
        self.hangup(c);
    }

    /// Connects and logs `id` in with the password `register` gave it; returns the
    /// connection with its login reply (and anything after it) already read.
    pub fn login(&mut self, id: i64) -> ConnRef {
        let c = self.connect();
        self.send(c, &login_msg(id, &format!("pw{id}")));
        self.run_jobs();
        let got = self.recv(c);
        assert!(
            matches!(got.first(), Some(ServerMessage::LoginRes(r)) if r.code == 200),
            "{got:?}"
        );
        c
    }
}

impl Harness {
    /// Registers and logs in every id, then reads away the login notices, so each
    /// connection starts with an empty queue.
    pub fn everyone_online<const N: usize>(&mut self, ids: [i64; N]) -> [ConnRef; N] {
        for id in ids {
            self.register(id);
        }
        let conns = ids.map(|id| self.login(id));
        for c in conns {
            self.recv(c);
        }
        conns
    }
}

/// The hub's defaults, but presence notices sent at the end of each turn (instead of
/// up to 50 ms later) so that tests read them at once. Tests of the interval itself
/// set it.
pub fn test_config() -> HubConfig {
    HubConfig {
        presence_interval_ms: 0,
        history_gather_ms: 0,
        ..HubConfig::default()
    }
}

/// A login declaring `maxFrame` of the seed's own 8,096 bytes: an extension-aware
/// client with the seed's frame size, answered in the extensions' frame types. See
/// [`seed_login_msg`] for the seed's client itself.
pub fn login_msg(id: i64, pwd: &str) -> ClientMessage {
    ClientMessage::Login(proto::LoginMes {
        user_id: id,
        user_pwd: pwd.into(),
        user_name: String::new(),
        max_frame: Some(proto::SEED_MAX_FRAME as u32),
        ..Default::default()
    })
}

/// A login exactly as the seed's client sends it (no extension declared).
pub fn seed_login_msg(id: i64, pwd: &str) -> ClientMessage {
    ClientMessage::Login(proto::LoginMes {
        user_id: id,
        user_pwd: pwd.into(),
        user_name: String::new(),
        ..Default::default()
    })
}

/// Replays arbitrary bytes as a script of client actions against a fresh hub: the
/// shared body of the `hub` fuzz target and its regression tests. It must never panic,
/// whatever the bytes; it also checks that every frame the server queued parses and
/// that no connection's queue exceeds its bound.
///
/// Each step takes one byte: the low three bits choose the action, the rest its
/// argument (a connection index, a length, a time step).
pub fn fuzz_hub(data: &[u8]) {
    let mut t = Harness::new(HubConfig {
        max_outbuf: 16 * 1024,
        prelogin_max_frame: 512,
        max_frame: 4096,
        max_jobs: 8,
        offline_batch: 4,
        ..test_config()
    });
    // Two users exist, so logins and private messages can succeed.
    let pw_hash = t.hasher.hash("pw").expect("hash");
    for (id, name) in [(1, "one"), (2, "two")] {
        let rec = crate::users::UserRecord {
            id,
            name: name.into(),
            pwd_hash: pw_hash.clone(),
            ..Default::default()
        };
        crate::store::Store::create_user(&mut t.store.clone(), &rec).expect("mem store");
    }
    let mut conns: Vec<ConnRef> = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let op = data[i];
        i += 1;
        let arg = (op >> 3) as usize;
        let pick = |conns: &Vec<ConnRef>| conns.get(arg % conns.len().max(1)).copied();
        match op & 7 {
            0 => {
                if conns.len() < 16 {
                    conns.push(t.connect());
                }
            }
            1 => {
                // Raw bytes: the next `arg + 1` bytes of input.
                let n = (arg + 1).min(data.len() - i);
                if let Some(c) = pick(&conns) {
                    t.send_bytes(c, &data[i..i + n]);
                }
                i += n;
            }
            2 => {
                // A well-formed message chosen by the argument, so deep paths are reached.
                if let Some(c) = pick(&conns) {
                    let m = match arg % 8 {
                        0 => login_msg(1, "pw"),
                        1 => login_msg(2, "pw"),
                        2 => login_msg(1, "bad"),
                        3 => ClientMessage::Sms(proto::SmsMes {
                            content: "x".repeat(arg * 40),
                            ..Default::default()
                        }),
                        4 => ClientMessage::Private(proto::SmsPrivateMes {
                            to_user_id: (arg % 3) as i64 + 1,
                            content: "p".into(),
                            ..Default::default()
                        }),
                        5 => ClientMessage::OnlineUsers,
                        6 => ClientMessage::Logout,
                        _ => ClientMessage::Register(proto::RegisterMes {
                            user: proto::User {
                                user_id: arg as i64,
                                user_pwd: "pw".into(),
                                user_name: "n".into(),
                                ..Default::default()
                            },
                            max_frame: None,
                        }),
                    };
                    t.send(c, &m);
                }
            }
            3 => {
                if !t.jobs.is_empty() {
                    let n = arg % t.jobs.len();
                    t.run_job(n);
                }
            }
            4 => {
                if let Some(c) = pick(&conns) {
                    t.hangup(c);
                }
            }
            5 => t.advance(arg as u64 * 1_000),
            6 => {
                if let Some(c) = pick(&conns) {
                    let _ = t.recv(c);
                }
            }
            _ => t.store.set_failing(if arg.is_multiple_of(2) {
                Some("down")
            } else {
                None
            }),
        }
        for r in t.hub.refs() {
            let c = t.hub.get(r).expect("live");
            // The bound, plus at most one direct reply not yet written.
            assert!(c.queued_bytes() <= 16 * 1024 + 4096, "queue over its bound");
        }
    }
    t.run_jobs();
    for r in t.hub.refs() {
        let _ = t.recv(r);
    }
}

/// Arbitrary bytes through the frame decoder and both message parsers: the shared
/// body of the `frames` fuzz target and its regression tests.
pub fn fuzz_frames(data: &[u8]) {
    let mut d = proto::FrameDecoder::new(1024);
    // Feed in two pieces split where the first byte says, to exercise reassembly.
    let cut = data.first().map_or(0, |b| *b as usize).min(data.len());
    for part in [&data[..cut], &data[cut..]] {
        d.push(part);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    assert!(f.len() <= 1024);
                    if let Ok(m) = ClientMessage::parse(&f) {
                        // What parses re-encodes to something that parses the same.
                        let again = m.encode();
                        assert_eq!(
                            ClientMessage::parse(&again[proto::HEADER_LEN..]).as_ref(),
                            Ok(&m)
                        );
                    }
                    let _ = ServerMessage::parse(&f);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn parse(frame: &[u8]) -> ServerMessage {
    ServerMessage::parse(&frame[proto::HEADER_LEN..]).expect("server frames parse")
}
