//! The event loop: the only place with sockets.
//!
//! One thread, one mio `Poll`, edge-triggered. It accepts until `WouldBlock` (and
//! backs off on descriptor exhaustion instead of spinning), reads each ready socket
//! until `WouldBlock` or its per-wake-up budget, hands the bytes to the [`Hub`], then
//! executes the hub's outputs: store jobs go to the worker pool (before and after the
//! writes, which can themselves queue jobs), queued output is written through
//! [`Hub::write`] (vectored: as soon as the loop finds nothing more to read, and while
//! it is busy at least once per flush interval; a round of writes takes in input that
//! came meanwhile, so a message read mid-round joins it), and connections marked for
//! closing are dropped at the end of the turn, so a stale token in the same batch of events can never reach a
//! reused slot. It sleeps until the hub's next deadline ([`Hub::poll_timeout`]) or the
//! next event. Worker results come back over a channel and wake the loop through
//! `mio::Waker`.
//!
//! Tokens carry the connection's generation ([`ConnRef::token`]); an event whose
//! generation does not match the slot's current occupant is ignored.

use std::collections::HashSet;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::admission::WorkerPriority;
use crate::auth::{HashParams, Hasher};
use crate::cluster::Input;
use crate::cluster_redis::{ClusterConfig, ClusterLink, QUEUE};
use crate::conn::ConnRef;
use crate::control::{Control, ControlHandle};
use crate::hub::{Hub, HubConfig, Now};
use crate::job::JobResult;
use crate::link::{Link, Wrapper};
use crate::store::StoreFactory;
use crate::worker::{ResultSink, Workers};

const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);
/// Listener `i` has token `FIRST_LISTENER + i` (connections' tokens are above 2^32).
const FIRST_LISTENER: usize = 16;

/// Bytes read per `read` call, into one buffer shared by all connections.
const READ_CHUNK: usize = 64 * 1024;
/// Events from other nodes handled per loop turn at most.
const CLUSTER_PER_TURN: usize = 4096;
/// How often freed heap memory is handed back to the operating system.
const TRIM_MS: u64 = 2_000;
/// Pause before accepting again after running out of descriptors.
const ACCEPT_BACKOFF_MS: u64 = 100;
/// During a round of writes, how often the loop looks for input that came meanwhile
/// (see `Server::flush_and_close`).
const PEEK_EVERY: Duration = Duration::from_micros(50);

/// Everything the server is configured with. The defaults are the command line's.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The hub's limits. Its `hash_workers` is set from `workers` when the server
    /// starts, and a `max_conns` of 0 from the descriptor limit.
    pub hub: HubConfig,
    /// Threads hashing passwords (a further thread runs the quick storage jobs).
    pub workers: usize,
    pub hash: HashParams,
    /// Bytes read from one connection per loop turn before the others get a turn and
    /// the output is written. Small enough that a backlog of input (after the loop was
    /// held up) turns into output in steps that fit the receivers' queues.
    pub read_budget: usize,
    /// On shutdown, how long queued output may take to drain.
    pub shutdown_grace_ms: u64,
    /// Stop on SIGTERM / SIGINT (the binary); in-process tests use [`ShutdownHandle`].
    pub handle_signals: bool,
    /// Scheduling of the worker threads against the reactor.
    pub worker_priority: WorkerPriority,
    /// Longest time output waits while input keeps coming. Output is written as soon
    /// as the loop finds nothing more to read (so a quiet server answers at once,
    /// with no timer), and while it is busy, at least this often: the messages of a
    /// busy stretch go to each recipient in one vectored write instead of one per
    /// turn. Zero writes at the end of every turn.
    pub flush_interval: Duration,
    /// Several nodes on one Redis, one chat: this node's link (None: a lone server).
    pub cluster: Option<ClusterConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hub: HubConfig::default(),
            workers: 2,
            hash: HashParams::default(),
            read_budget: 4 * READ_CHUNK,
            shutdown_grace_ms: 2_000,
            handle_signals: false,
            worker_priority: WorkerPriority::Idle,
            flush_interval: Duration::from_micros(500),
            cluster: None,
        }
    }
}

/// The job timeout when none is given: 30 s with the embedded store (a login storm
/// queues behind hashing), 5 s with Redis (an outage is reported within seconds).
pub fn default_job_timeout_secs(redis: bool) -> u64 {
    if redis { 5 } else { 30 }
}

/// Stops a running server from another thread.
#[derive(Clone)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// A server running on its own thread (see [`spawn`]).
pub struct Running {
    /// The plain listener's address.
    pub addr: SocketAddr,
    /// The wrapped listeners' addresses, in the order given to [`spawn_with`].
    pub wrapped: Vec<SocketAddr>,
    pub stop: ShutdownHandle,
    pub thread: std::thread::JoinHandle<io::Result<()>>,
}

impl Running {
    /// Shuts the server down and waits for it to finish.
    pub fn shutdown(self) -> io::Result<()> {
        self.stop.shutdown();
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("server thread panicked")))
    }
}

/// Builds and runs a server on a new thread (the hub uses `Rc` and never crosses
/// threads, so it is created there). For embedding and in-process tests.
pub fn spawn(
    listener: std::net::TcpListener,
    store: StoreFactory,
    cfg: ServerConfig,
) -> io::Result<Running> {
    spawn_with(listener, Vec::new(), store, cfg)
}

/// Like [`spawn`], with more listeners whose connections are wrapped (TLS).
pub fn spawn_with(
    listener: std::net::TcpListener,
    wrapped: Vec<(std::net::TcpListener, Box<dyn Wrapper + Send>)>,
    store: StoreFactory,
    cfg: ServerConfig,
) -> io::Result<Running> {
    let (tx, rx) = mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("chat-reactor".into())
        .spawn(move || {
            let started = Server::new(listener, &store, cfg).and_then(|mut server| {
                let mut addrs = Vec::new();
                for (l, w) in wrapped {
                    addrs.push(server.add_listener(l, w)?);
                }
                Ok((server, addrs))
            });
            match started {
                Ok((server, addrs)) => {
                    let addr = server.local_addr().expect("a plain listener");
                    let _ = tx.send(Ok((addr, addrs, server.shutdown_handle())));
                    server.run()
                }
                Err(e) => {
                    let msg = e.to_string();
                    let _ = tx.send(Err(e));
                    Err(io::Error::other(msg))
                }
            }
        })?;
    let (addr, wrapped, stop) = rx
        .recv()
        .map_err(|_| io::Error::other("server thread ended early"))??;
    Ok(Running {
        addr,
        wrapped,
        stop,
        thread,
    })
}

/// One listening socket, and what wraps the connections it accepts (none: plain).
struct Listening {
    sock: TcpListener,
    wrap: Option<Box<dyn Wrapper>>,
}

/// The server: bound listeners, the hub, the worker pool.
pub struct Server {
    poll: Poll,
    /// Emptied at shutdown, when accepting stops.
    listeners: Vec<Listening>,
    /// The plain listener's address, if there is one.
    addr: Option<SocketAddr>,
    hub: Hub,
    socks: Vec<Option<Link>>,
    workers: Workers,
    results: mpsc::Receiver<JobResult>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    cfg: ServerConfig,
    scratch: Vec<u8>,
    read_again: Vec<ConnRef>,
    /// The connections in `read_again`, to look them up.
    again: HashSet<ConnRef>,
    /// The cluster link and what it brings for the hub, if this is one of several nodes.
    cluster: Option<ClusterLink>,
    cluster_rx: Option<mpsc::Receiver<Input>>,
    accept_paused_until: Option<u64>,
    started: Instant,
    io: IoStats,
    /// Requests of the operators' threads (admin socket, metrics), and the sender they
    /// are handed.
    control: (mpsc::Sender<Control>, mpsc::Receiver<Control>),
    /// How long each turn of the loop worked, for the metrics.
    turn_seconds: crate::metrics::Histogram,
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
    /// (the load batches itself, and looking would only cut the batches short: about
    /// 9% fewer deliveries at saturation), nor while output is held or the server
    /// stops.
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

    /// Whether to look now, after a write: the clock is read only while the round
    /// may still look (a round at saturation writes thousands of times and never
    /// looks).
    #[inline]
    fn look(&mut self) -> bool {
        self.open && self.due(Instant::now())
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

/// Counts of the loop's work, logged at exit.
#[derive(Debug, Default)]
struct IoStats {
    turns: u64,
    reads: u64,
    writes: u64,
}

fn now(started: Instant) -> Now {
    Now {
        mono_ms: started.elapsed().as_millis() as u64,
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    }
}

impl Server {
    /// Takes a bound listener for plain connections (port 0 is fine: see
    /// [`Server::local_addr`]) and starts the worker pool with a store handle each from
    /// `store`.
    pub fn new(
        listener: std::net::TcpListener,
        store: &StoreFactory,
        cfg: ServerConfig,
    ) -> io::Result<Server> {
        Server::with_listener(Some(listener), store, cfg)
    }

    /// Like [`Server::new`], the plain listener optional: without one, connections
    /// come only through listeners added with [`Server::add_listener`] (a TLS-only
    /// deployment).
    pub fn with_listener(
        listener: Option<std::net::TcpListener>,
        store: &StoreFactory,
        mut cfg: ServerConfig,
    ) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listeners = Vec::new();
        let mut addr = None;
        if let Some(listener) = listener {
            listener.set_nonblocking(true)?;
            crate::sys::widen_backlog(&listener);
            addr = Some(listener.local_addr()?);
            let mut sock = TcpListener::from_std(listener);
            poll.registry()
                .register(&mut sock, Token(FIRST_LISTENER), Interest::READABLE)?;
            listeners.push(Listening { sock, wrap: None });
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let hasher = Hasher::new(cfg.hash).map_err(io::Error::other)?;
        cfg.hub.hash_workers = cfg.workers.max(1);
        if cfg.hub.hash_cost.is_none() {
            // One hash, timed: what a storm's first logins are estimated to cost.
            let started = Instant::now();
            hasher.hash("a password").map_err(io::Error::other)?;
            cfg.hub.hash_cost = Some(started.elapsed());
        }
        if cfg.hub.max_conns == 0 {
            cfg.hub.max_conns = crate::sys::max_conns_for_fd_limit();
        }
        let (tx, results) = mpsc::channel();
        let sink: ResultSink = {
            let waker = waker.clone();
            let tx = Mutex::new(tx);
            Arc::new(move |r| {
                let sent = tx.lock().unwrap_or_else(|p| p.into_inner()).send(r);
                if sent.is_ok() {
                    let _ = waker.wake();
                }
            })
        };
        let workers = Workers::start(
            cfg.workers,
            store,
            hasher,
            sink,
            Duration::from_millis(cfg.hub.job_timeout_ms),
            cfg.worker_priority,
        )
        .map_err(|e| io::Error::other(e.to_string()))?;
        let mut hub = Hub::new(cfg.hub.clone());
        let (cluster, cluster_rx) = match &cfg.cluster {
            Some(c) => {
                let (tx, rx) = mpsc::sync_channel(QUEUE);
                let waker = waker.clone();
                let sink = Arc::new(move |i| {
                    // Blocks while the loop is behind: the subscriber then stops reading.
                    if tx.send(i).is_ok() {
                        let _ = waker.wake();
                    }
                });
                hub.enable_cluster(&c.node, c.node_timeout.as_millis() as u64);
                log::info!("node {} of the cluster on {}", c.node, c.url);
                (Some(ClusterLink::start(c.clone(), sink)?), Some(rx))
            }
            None => (None, None),
        };
        Ok(Server {
            poll,
            listeners,
            addr,
            hub,
            socks: Vec::new(),
            workers,
            results,
            waker,
            stop: Arc::new(AtomicBool::new(false)),
            cfg,
            scratch: vec![0; READ_CHUNK],
            read_again: Vec::new(),
            again: HashSet::new(),
            cluster,
            cluster_rx,
            accept_paused_until: None,
            started: Instant::now(),
            io: IoStats::default(),
            control: mpsc::channel(),
            turn_seconds: Default::default(),
        })
    }

    /// The plain listener's address (none if the server has no plain listener).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Adds a listener whose connections `wrap` turns into transports (TLS,
    /// WebSocket); they join the same chat. Returns its address.
    pub fn add_listener(
        &mut self,
        listener: std::net::TcpListener,
        wrap: Box<dyn Wrapper>,
    ) -> io::Result<SocketAddr> {
        listener.set_nonblocking(true)?;
        crate::sys::widen_backlog(&listener);
        let addr = listener.local_addr()?;
        let mut sock = TcpListener::from_std(listener);
        let token = Token(FIRST_LISTENER + self.listeners.len());
        self.poll
            .registry()
            .register(&mut sock, token, Interest::READABLE)?;
        log::info!("{} listening on {addr}", wrap.name());
        self.listeners.push(Listening {
            sock,
            wrap: Some(wrap),
        });
        Ok(addr)
    }

    /// Where the operators' threads send their requests ([`Control`]).
    pub fn control_handle(&self) -> ControlHandle {
        ControlHandle::new(self.control.0.clone(), self.waker.clone())
    }

    /// Answers an operator's request at once.
    fn control(&mut self, c: Control, t: Now) {
        match c {
            Control::Kick { user, kick, reply } => {
                let n = self.hub.handle_admin(user, kick, t);
                let _ = reply.try_send(n);
            }
            Control::Metrics { reply } => {
                let mut snap = self.hub.metrics(t);
                snap.loop_turns = self.io.turns;
                snap.loop_seconds = self.turn_seconds.clone();
                snap.uptime = self.started.elapsed();
                let _ = reply.try_send(snap);
            }
        }
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            flag: self.stop.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Runs until shut down (signal or [`ShutdownHandle`]); then drains output for the
    /// grace period, closes every connection and lets the workers finish their jobs.
    pub fn run(mut self) -> io::Result<()> {
        let mut signals = if self.cfg.handle_signals {
            let mut s = signal_hook_mio::v1_0::Signals::new([
                signal_hook::consts::SIGTERM,
                signal_hook::consts::SIGINT,
                signal_hook::consts::SIGHUP,
            ])?;
            self.poll
                .registry()
                .register(&mut s, SIGNALS, Interest::READABLE)?;
            Some(s)
        } else {
            None
        };
        // After the wrapped listeners' lines ("TLS listening on ..."): a script or test
        // that waits for this line finds every listener ready.
        if let Some(addr) = self.addr {
            log::info!("listening on {addr}");
        }
        let mut events = Events::with_capacity(1024);
        let mut next_trim: u64 = TRIM_MS;
        let mut shutdown_deadline: Option<u64> = None;
        // Output is written once the loop has nothing more to read (a poll that finds
        // nothing: a quiet server answers at once), and while input keeps coming at
        // least once per flush interval (see ServerConfig), so a busy server gathers
        // what a stretch of turns produced into one write per recipient. While logins
        // wait for hashing, a long round of writes is followed by a pause
        // (`Admission::next_flush_at`).
        let interval = self.cfg.flush_interval;
        let mut next_flush = Instant::now();
        let mut flush_due: Option<Instant> = None;
        // A pause after a long round of writes, for the hashing (see above): output
        // then waits for its time even when the loop is idle.
        let mut holding = false;
        let mut cluster_more = false;
        loop {
            let t = now(self.started);
            let mut timeout = self
                .hub
                .poll_timeout(t)
                .map(|at| Duration::from_millis(at.saturating_sub(t.mono_ms)));
            let mut sooner = |d: Duration| timeout = Some(timeout.map_or(d, |t| t.min(d)));
            if !self.read_again.is_empty() || cluster_more {
                sooner(Duration::ZERO);
            }
            if let Some(until) = self.accept_paused_until {
                sooner(Duration::from_millis(until.saturating_sub(t.mono_ms)));
            }
            if let Some(at) = flush_due {
                // Output waits for the interval while input keeps coming, never while
                // the loop would sleep: look for input without sleeping, and write if
                // there is none.
                sooner(if holding {
                    at.saturating_duration_since(Instant::now())
                } else {
                    Duration::ZERO
                });
            }
            if let Some(deadline) = shutdown_deadline {
                sooner(Duration::from_millis(deadline.saturating_sub(t.mono_ms)));
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let turn_start = Instant::now();
            let idle = events.is_empty();
            let t = now(self.started);
            self.io.turns += 1;
            self.handle_events(&events, signals.as_mut(), t);
            // Users who left this turn are announced at its end. Before that, take in
            // every other hang-up already waiting (a crowd leaving at once), so that
            // nobody who is leaving is sent the others' departures.
            let mut extra = 0;
            while self.hub.has_departures() && extra < 64 {
                extra += 1;
                match self.poll.poll(&mut events, Some(Duration::ZERO)) {
                    Ok(()) if !events.is_empty() => {
                        self.handle_events(&events, signals.as_mut(), t)
                    }
                    _ => break,
                }
            }
            while let Ok(res) = self.results.try_recv() {
                self.hub.handle_result(res, t);
            }
            // Other nodes' events, a bounded number per turn: a flood from them waits
            // in its queue (and then in Redis) instead of starving this node's sockets.
            cluster_more = false;
            if let Some(rx) = &self.cluster_rx {
                for n in 0..=CLUSTER_PER_TURN {
                    match rx.try_recv() {
                        Ok(input) => self.hub.handle_cluster(input, t),
                        Err(_) => break,
                    }
                    // The last one taken this turn: look again at once, after the sockets.
                    cluster_more = n == CLUSTER_PER_TURN;
                }
            }
            while let Ok(c) = self.control.1.try_recv() {
                self.control(c, t);
            }
            // Once each. A connection with input left over is read here, not for its
            // readiness events (above): otherwise one that always has input left (a
            // flood) gained a read per turn, every turn, and the others waited longer
            // and longer.
            let again = std::mem::take(&mut self.read_again);
            self.again.clear();
            for r in again {
                self.read(r, t);
            }
            while let Some(r) = self.hub.poll_read() {
                self.read(r, t);
            }
            if let Some(until) = self.accept_paused_until
                && t.mono_ms >= until
            {
                self.accept_paused_until = None;
                for which in 0..self.listeners.len() {
                    self.accept_all(which, t);
                }
            }
            self.hub.handle_timeout(t);
            if t.mono_ms >= next_trim {
                if let Some(c) = self.cluster.as_mut() {
                    c.report();
                }
                crate::sys::trim_heap();
                next_trim = t.mono_ms + TRIM_MS;
            }
            if shutdown_deadline.is_none() && self.stop.load(Ordering::SeqCst) {
                for mut l in std::mem::take(&mut self.listeners) {
                    let _ = self.poll.registry().deregister(&mut l.sock);
                }
                self.hub.handle_shutdown(t);
                shutdown_deadline = Some(t.mono_ms + self.cfg.shutdown_grace_ms);
            }
            self.submit_jobs(t);
            let now_i = Instant::now();
            if shutdown_deadline.is_some() || now_i >= next_flush || (idle && !holding) {
                let peek_for = Peeks::window(RoundStart {
                    idle,
                    holding,
                    stopping: shutdown_deadline.is_some(),
                    interval,
                });
                let written = self.flush_and_close(t, peek_for, &mut events, signals.as_mut());
                let done = Instant::now();
                self.hub.note_round(written, done - now_i);
                next_flush = self.hub.next_flush_at(now_i, done, interval);
                holding = next_flush > done + interval;
                flush_due = None;
                // Writing can queue jobs (the removal of stored messages that reached
                // a client, the next batch of them): they go now, not next turn.
                self.submit_jobs(t);
            } else if self.hub.has_output() {
                flush_due = Some(next_flush);
            } else {
                flush_due = None;
            }
            self.turn_seconds.observe(turn_start.elapsed());
            if let Some(deadline) = shutdown_deadline
                && (self.hub.conn_count() == 0 || t.mono_ms >= deadline)
            {
                break;
            }
        }
        let left = self.hub.conn_count();
        if left > 0 {
            log::warn!("{left} connections did not finish writing in time; closing them");
        }
        self.socks.clear();
        let jobs = self.hub.jobs_in_flight();
        if jobs > 0 {
            log::info!("waiting for {jobs} store jobs to finish");
        }
        self.workers.shutdown();
        // The last results (the last history appends among them) count in the line below.
        let t = now(self.started);
        while let Ok(res) = self.results.try_recv() {
            self.hub.handle_result(res, t);
        }
        if let Some(c) = self.cluster.take() {
            c.shutdown();
        }
        let st = &self.hub.stats;
        log::info!(
            "stopped; {} connections served, {} frames in, {} group messages, {} deliveries, \
             {} slow consumers dropped, {} history entries kept, {} lost; {} loop turns, \
             {} reads, {} writes",
            st.accepted,
            st.frames_in,
            st.group_messages,
            st.deliveries,
            st.slow_consumers_dropped,
            st.history_appended,
            st.history_lost,
            self.io.turns,
            self.io.reads,
            self.io.writes
        );
        Ok(())
    }

    fn handle_events(
        &mut self,
        events: &Events,
        mut signals: Option<&mut signal_hook_mio::v1_0::Signals>,
        t: Now,
    ) {
        for ev in events.iter() {
            match ev.token() {
                WAKER => {}
                SIGNALS => {
                    if let Some(s) = signals.as_mut() {
                        for sig in s.pending() {
                            if sig == signal_hook::consts::SIGHUP {
                                self.reload();
                            } else {
                                log::info!("signal {sig} received: shutting down");
                                self.stop.store(true, Ordering::SeqCst);
                            }
                        }
                    }
                }
                Token(i) if i >= FIRST_LISTENER && i < FIRST_LISTENER + self.listeners.len() => {
                    self.accept_all(i - FIRST_LISTENER, t)
                }
                token => {
                    let r = ConnRef::from_token(token.0);
                    // One left with input last turn is read later in this one, once.
                    if (ev.is_readable() || ev.is_read_closed() || ev.is_error())
                        && (self.again.is_empty() || !self.again.contains(&r))
                    {
                        self.read(r, t);
                    }
                    if ev.is_writable() {
                        self.writable(r, t);
                    }
                }
            }
        }
    }

    fn submit_jobs(&mut self, t: Now) {
        while let Some(job) = self.hub.poll_job(t) {
            self.workers.submit(job);
        }
        while let Some(ev) = self.hub.poll_publish() {
            if let Some(c) = &self.cluster {
                c.publish(ev);
            }
        }
    }

    /// Announces departures, writes every connection with pending output, then drops
    /// the connections marked for closing; repeated while closing produces more.
    /// Returns how many connections were written.
    ///
    /// For its first `peek_for`, the round looks for input every [`PEEK_EVERY`] and
    /// takes it in (`events` is the loop's, reused): a message that came while the
    /// round was writing goes out with it, in the same write, to the recipients not
    /// yet written, and to the others right after them (see [`Hub::poll_write`]),
    /// instead of waiting for the round to end and then for a round of its own.
    fn flush_and_close(
        &mut self,
        t: Now,
        peek_for: Duration,
        events: &mut Events,
        mut signals: Option<&mut signal_hook_mio::v1_0::Signals>,
    ) -> usize {
        let mut written = 0;
        let mut peeks = Peeks::new(Instant::now(), peek_for);
        loop {
            let mut did = self.hub.has_departures();
            self.hub.announce_departures(t);
            while let Some(r) = self.hub.poll_write() {
                did = true;
                written += 1;
                self.write(r, t);
                if peeks.look()
                    && self.poll.poll(events, Some(Duration::ZERO)).is_ok()
                    && !events.is_empty()
                {
                    self.handle_events(events, signals.as_deref_mut(), now(self.started));
                }
            }
            while let Some(r) = self.hub.poll_close(t) {
                did = true;
                if let Some(mut s) = self.socks.get_mut(r.key).and_then(Option::take) {
                    // A transport's last bytes (a close alert), best effort.
                    let _ = s.flush();
                    let _ = self.poll.registry().deregister(s.socket());
                }
            }
            if !did {
                break;
            }
        }
        written
    }

    /// SIGHUP: every listener reads its configuration again.
    fn reload(&mut self) {
        log::info!("SIGHUP received: reloading");
        for l in &mut self.listeners {
            if let Some(w) = l.wrap.as_mut() {
                match w.reload() {
                    Ok(()) => log::info!("{}: reloaded", w.name()),
                    Err(e) => {
                        log::error!("{}: reload failed, keeping what was loaded: {e}", w.name())
                    }
                }
            }
        }
    }

    fn accept_all(&mut self, which: usize, t: Now) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = self.listeners.get(which) else {
                return;
            };
            match listener.sock.accept() {
                Ok((sock, peer)) => self.add_conn(which, sock, peer, t),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if crate::sys::is_resource_exhaustion(&e) => {
                    log::warn!(
                        "accept failed: {e}; pausing accepts for {ACCEPT_BACKOFF_MS} ms ({} connections open)",
                        self.hub.conn_count()
                    );
                    self.accept_paused_until = Some(t.mono_ms + ACCEPT_BACKOFF_MS);
                    break;
                }
                Err(e) => {
                    // ECONNABORTED and the like concern one connection only.
                    log::debug!("accept failed: {e}");
                }
            }
        }
    }

    fn add_conn(&mut self, which: usize, mut sock: TcpStream, peer: SocketAddr, t: Now) {
        if let Err(e) = crate::sys::tune_connection(&sock) {
            log::debug!("socket options for {peer}: {e}");
        }
        let wrap = self.listeners[which].wrap.as_mut();
        let r = match self.hub.accept(peer, t) {
            Ok(r) => r,
            Err(refusal) => {
                // Best effort: the socket is new, its buffer empty; then it is dropped.
                // Only a plain client can read the refusal.
                if wrap.is_none() {
                    let _ = sock.write(&refusal);
                }
                log::debug!("refused a connection from {peer}");
                return;
            }
        };
        let mut link = match wrap {
            None => Link::Plain(sock),
            Some(w) => match w.wrap(sock, peer) {
                Ok(t) => Link::Wrapped(t),
                Err(e) => {
                    log::warn!("{}: cannot set up a connection from {peer}: {e}", w.name());
                    self.hub.handle_hangup(r, "transport setup failed", t);
                    return;
                }
            },
        };
        if let Err(e) = self.poll.registry().register(
            link.socket(),
            Token(r.token()),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("cannot register connection from {peer}: {e}");
            self.hub.handle_hangup(r, "registration failed", t);
            return;
        }
        if self.socks.len() <= r.key {
            self.socks.resize_with(r.key + 1, || None);
        }
        self.socks[r.key] = Some(link);
        log::debug!("conn {} from {peer}", r.key);
    }

    /// Reads `r` again next turn, once however often this is called.
    fn read_later(&mut self, r: ConnRef) {
        if self.again.insert(r) {
            self.read_again.push(r);
        }
    }

    fn read(&mut self, r: ConnRef, t: Now) {
        let mut budget = self.cfg.read_budget;
        loop {
            if !self.hub.wants_read(r) {
                return;
            }
            let Some(Some(sock)) = self.socks.get_mut(r.key) else {
                return;
            };
            self.io.reads += 1;
            let want = budget.min(self.scratch.len());
            match sock.read(&mut self.scratch[..want]) {
                Ok(0) => {
                    self.hub.handle_hangup(r, "peer closed the connection", t);
                    return;
                }
                Ok(n) => {
                    self.hub.handle_input(r, &self.scratch[..n], t);
                    if n < want && sock.short_read_drains() {
                        // A short read drained the socket: more data will raise a new
                        // edge, so the read that would only say WouldBlock is skipped.
                        return;
                    }
                    if n >= budget {
                        // Others get a turn; this one is read again next turn.
                        self.read_later(r);
                        return;
                    }
                    budget -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    if sock.is_wrapped() {
                        // The transport worked through its share of input without
                        // producing protocol bytes: others get a turn first.
                        self.read_later(r);
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    self.hub.handle_hangup(r, &format!("read failed: {e}"), t);
                    return;
                }
            }
        }
    }

    fn write(&mut self, r: ConnRef, t: Now) {
        let Some(Some(sock)) = self.socks.get_mut(r.key) else {
            return;
        };
        let writes = &mut self.io.writes;
        self.hub.write(r, t, |iov| {
            *writes += 1;
            sock.write_vectored(iov)
        });
        if sock.is_wrapped()
            && let Err(e) = sock.flush()
        {
            self.hub.handle_hangup(r, &format!("write failed: {e}"), t);
        }
    }

    /// The socket can take more: a transport's own bytes first, then what it decoded
    /// meanwhile or the close it waited to report; the hub's output goes with the next
    /// round of writes.
    fn writable(&mut self, r: ConnRef, t: Now) {
        if let Some(Some(sock)) = self.socks.get_mut(r.key)
            && sock.is_wrapped()
        {
            if let Err(e) = sock.flush() {
                self.hub.handle_hangup(r, &format!("write failed: {e}"), t);
                return;
            }
            self.read(r, t);
        }
        self.hub.handle_writable(r);
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
        assert!(!p.look());
        let mut never = Peeks::new(start, Duration::ZERO);
        assert!(!never.open, "a round that is not to look reads no clock");
        assert!(!never.look());
        assert!(!never.due(us(50)), "a round that is not to look never does");
        assert!(!never.due(us(1_000)));
    }
}
