//! A driver for the [`Hub`] with no sockets, threads or clocks: for the
//! state-machine tests and the fuzz target.
//!
//! It plays the reactor's part as the reactor plays it, so that a lost wake-up fails a
//! test instead of being papered over:
//! - bytes a test sends wait "in the socket" and reach the hub only while it wants to
//!   read, and again only when [`Hub::poll_read`] names the connection;
//! - output reaches the test's side of the socket only through [`Hub::write`], and
//!   only for connections that [`Hub::poll_write`] named (or whose last write
//!   blocked, which the socket's writable edge would bring back);
//! - store jobs are taken with [`Hub::poll_job`] in the order the hub gives them, and
//!   wait in a queue until the test runs them (in order, or one chosen by index)
//!   against an in-memory store;
//! - time moves only when the test says so, and timers fire through
//!   [`Hub::handle_timeout`];
//! - [`Hub::check_invariants`] runs after every step.
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;

use crate::conn::ConnRef;
use crate::hub::{Hub, HubConfig, Now, Written};
use crate::job::{Job, JobResult, Passwords, execute};
use crate::proto::{self, ClientMessage, ServerMessage};
use crate::store::mem::MemStore;

pub struct Harness {
    pub hub: Hub,
    pub store: MemStore,
    pub(crate) hasher: TestPasswords,
    pub now: Now,
    /// Jobs taken from the hub and not yet run.
    pub jobs: VecDeque<Job>,
    /// Connections the hub has closed, in order.
    pub closed: Vec<ConnRef>,
    /// What each hashing job "took" as reported to the hub (virtual: the harness
    /// runs jobs at once).
    pub hash_cost_ms: u64,
    /// Bytes sent by each test client that the hub has not read yet.
    inbox: HashMap<ConnRef, Vec<u8>>,
    /// Connections the hub asked to have written (or whose write blocked).
    writable: HashSet<ConnRef>,
    /// Connections whose socket takes no more bytes for now.
    stalled: HashSet<ConnRef>,
    /// Bytes written to each connection's socket and not yet read by the test.
    wire: HashMap<ConnRef, Vec<u8>>,
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
        Harness {
            hub: Hub::new(cfg),
            store: MemStore::new(),
            hasher: TestPasswords,
            now: Now {
                mono_ms: 1_000,
                unix_ms: 1_700_000_000_000,
            },
            jobs: VecDeque::new(),
            closed: Vec::new(),
            hash_cost_ms: 10,
            inbox: HashMap::new(),
            writable: HashSet::new(),
            stalled: HashSet::new(),
            wire: HashMap::new(),
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
        let r = self.hub.accept(peer, self.now);
        self.pump();
        r
    }

    pub fn send(&mut self, r: ConnRef, msg: &ClientMessage) {
        self.send_bytes(r, &msg.encode());
    }

    /// Bytes arrive on `r`'s socket: the hub reads them if it wants to read now,
    /// otherwise they wait until it names `r` in `poll_read`.
    pub fn send_bytes(&mut self, r: ConnRef, bytes: &[u8]) {
        self.inbox.entry(r).or_default().extend_from_slice(bytes);
        self.read(r);
        self.pump();
    }

    /// What the reactor does on a readable edge.
    fn read(&mut self, r: ConnRef) {
        if !self.hub.wants_read(r) {
            return;
        }
        let Some(bytes) = self.inbox.remove(&r) else {
            return;
        };
        self.hub.handle_input(r, &bytes, self.now);
    }

    pub fn hangup(&mut self, r: ConnRef) {
        self.hangup_all(&[r]);
    }

    /// Several peers hang up in the same loop turn.
    pub fn hangup_all(&mut self, rs: &[ConnRef]) {
        for r in rs {
            self.inbox.remove(r);
            self.hub.handle_hangup(*r, "test hangup", self.now);
        }
        self.pump();
    }

    /// Moves time forward and lets timers fire.
    pub fn advance(&mut self, ms: u64) {
        self.now.mono_ms += ms;
        self.now.unix_ms += ms;
        self.pump();
    }

    /// An operator banned or removed `user` (the store already changed): returns
    /// how many sessions the hub closed.
    pub fn admin(&mut self, user: i64, kick: crate::admin::Kick) -> usize {
        let n = self.hub.handle_admin(user, kick, self.now);
        self.pump();
        n
    }

    /// Something from the cluster link.
    pub fn cluster(&mut self, input: crate::cluster::Input) {
        self.hub.handle_cluster(input, self.now);
        self.pump();
    }

    /// `r`'s socket stops taking bytes (its reader stalls), or takes them again.
    pub fn stall(&mut self, r: ConnRef, stalled: bool) {
        if stalled {
            self.stalled.insert(r);
        } else {
            self.stalled.remove(&r);
            self.pump();
        }
    }

    /// Whether the hub has output queued for `r` that it has asked to have written.
    pub fn write_pending(&self, r: ConnRef) -> bool {
        self.writable.contains(&r)
    }

    /// Collects what the hub asks of the reactor after an input, in the reactor's
    /// order: reads it may resume, writes it wants, departures, closes, and jobs.
    fn pump(&mut self) {
        loop {
            let mut did = false;
            if self
                .hub
                .poll_timeout(self.now)
                .is_some_and(|at| at <= self.now.mono_ms)
            {
                self.hub.handle_timeout(self.now);
            }
            while let Some(r) = self.hub.poll_read() {
                did = true;
                self.read(r);
            }
            while let Some(r) = self.hub.poll_write() {
                did = true;
                self.writable.insert(r);
            }
            self.hub.announce_departures(self.now);
            while let Some(r) = self.hub.poll_close(self.now) {
                did = true;
                self.writable.remove(&r);
                self.inbox.remove(&r);
                self.closed.push(r);
            }
            while let Some(j) = self.hub.poll_job(self.now) {
                did = true;
                self.jobs.push_back(j);
            }
            if !did {
                break;
            }
        }
        self.hub.check_invariants();
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

    /// Feeds a job result chosen by the test.
    pub fn feed(&mut self, res: JobResult) {
        self.hub.handle_result(res, self.now);
        self.pump();
    }

    /// Runs jobs, oldest first, until none are left (follow-up jobs included).
    pub fn run_jobs(&mut self) {
        while !self.jobs.is_empty() {
            self.run_job(0);
        }
    }

    /// Lets the hub write `r`'s output, if it asked to, and takes the whole frames
    /// that reached the socket (as the client would read them).
    pub fn recv_frames(&mut self, r: ConnRef) -> Vec<Rc<[u8]>> {
        self.flush(r);
        let wire = self.wire.entry(r).or_default();
        let mut frames = Vec::new();
        while let Ok(Some(n)) = proto::check(wire, usize::MAX >> 8) {
            frames.push(Rc::from(&wire[..n]));
            wire.drain(..n);
        }
        frames
    }

    /// The socket is writable: the hub writes `r`'s output, if it asked to.
    fn flush(&mut self, r: ConnRef) {
        if self.writable.contains(&r) && !self.stalled.contains(&r) {
            let wire = self.wire.entry(r).or_default();
            let done = self.hub.write(r, self.now, |iov| {
                let mut n = 0;
                for s in iov {
                    wire.extend_from_slice(s);
                    n += s.len();
                }
                Ok(n)
            });
            if done != Written::Blocked {
                self.writable.remove(&r);
            }
            self.pump();
        }
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

pub fn login_msg(id: i64, pwd: &str) -> ClientMessage {
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
