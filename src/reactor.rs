//! The event loop's I/O side: mio, listeners, sockets, the `Waker`, signals, the
//! worker pool and the cluster link.
//!
//! One thread, one mio `Poll`, edge-triggered. The order of each turn and when output
//! is written are [`Driver::turn`]'s (`hub/turn.rs`, the same driver the test harness
//! runs); this file implements its [`Io`]: it accepts until `WouldBlock` (and reports
//! descriptor exhaustion, so accepting pauses instead of spinning), reads a socket
//! until `WouldBlock` or its per-wake-up budget and hands the bytes to the [`Hub`],
//! writes a connection's queued output through [`Hub::write`] (vectored), drops the
//! socket of a connection the hub closed, hands store jobs to the worker pool and
//! events to the cluster link. Worker results come back over a channel and wake the
//! loop through `mio::Waker`.
//!
//! Tokens carry the connection's generation ([`ConnRef::token`]); an event whose
//! generation does not match the slot's current occupant is ignored.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::cluster::redis::{ClusterConfig, ClusterLink, QUEUE};
use crate::cluster::{Event, Input};
use crate::conn::ConnRef;
use crate::hub::turn::{ACCEPT_BACKOFF, Accept, Driver, DriverConfig, Flow, Io, Read, Ready};
use crate::hub::{Hub, HubConfig, Now};
use crate::job::auth::{HashParams, Hasher};
use crate::job::worker::{ResultSink, Workers};
use crate::job::{Job, JobResult};
use crate::ops::control::{Control, ControlHandle};
use crate::priority::WorkerPriority;
use crate::store::StoreFactory;
use crate::transport::{Link, NextTurn, Wrapper};

const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);
/// Listener `i` has token `FIRST_LISTENER + i` (connections' tokens are above 2^32).
const FIRST_LISTENER: usize = 16;

/// Bytes read per `read` call, into one buffer shared by all connections.
const READ_CHUNK: usize = 64 * 1024;

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

/// The server: the hub, the turn driver, and the I/O side they run over.
pub struct Server {
    hub: Hub,
    driver: Driver,
    io: Reactor,
}

/// The I/O side of the loop ([`Io`]): the poll, listeners, sockets, the worker pool,
/// the cluster link, the operators' requests, signals.
struct Reactor {
    poll: Poll,
    /// What the last poll found.
    events: Events,
    /// Emptied at shutdown, when accepting stops.
    listeners: Vec<Listening>,
    /// The plain listener's address, if there is one.
    addr: Option<SocketAddr>,
    socks: Vec<Option<Link>>,
    workers: Workers,
    results: mpsc::Receiver<JobResult>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    /// Stop on SIGTERM / SIGINT, reload on SIGHUP (registered when the loop starts).
    handle_signals: bool,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    read_budget: usize,
    scratch: Vec<u8>,
    /// The cluster link and what it brings for the hub, if this is one of several nodes.
    cluster: Option<ClusterLink>,
    cluster_rx: Option<mpsc::Receiver<Input>>,
    started: Instant,
    stats: IoStats,
    /// Requests of the operators' threads (admin socket, metrics), and the sender they
    /// are handed.
    control: (mpsc::Sender<Control>, mpsc::Receiver<Control>),
    /// How long each turn of the loop worked, for the metrics.
    turn_seconds: crate::metrics::Histogram,
    /// At shutdown, how long a password hash still running is waited for.
    hash_grace: Duration,
    /// Reads the configuration again on SIGHUP (see [`Server::on_reload`]).
    reload_hook: Option<ReloadHook>,
    /// A SIGHUP came: the hook runs at the next turn, where the hub is at hand.
    reload_due: bool,
}

/// What [`Server::on_reload`] takes: given the settings in force, the settings read
/// again (`None`: the configuration could not be read, and the hook said why).
pub type ReloadHook = Box<dyn FnMut(&HubConfig) -> Option<HubConfig>>;

/// Counts of the loop's work, logged at exit.
#[derive(Debug, Default)]
struct IoStats {
    reads: u64,
    writes: u64,
}

/// The hub's time at `at`, for a loop that started at `started`.
fn now_at(started: Instant, at: Instant) -> Now {
    Now {
        mono_ms: at.saturating_duration_since(started).as_millis() as u64,
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
        let started = Instant::now();
        let driver = Driver::new(
            DriverConfig {
                flush_interval: cfg.flush_interval,
                shutdown_grace: Duration::from_millis(cfg.shutdown_grace_ms),
            },
            started,
        );
        let io = Reactor {
            poll,
            events: Events::with_capacity(1024),
            listeners,
            addr,
            socks: Vec::new(),
            workers,
            results,
            waker,
            stop: Arc::new(AtomicBool::new(false)),
            handle_signals: cfg.handle_signals,
            signals: None,
            read_budget: cfg.read_budget,
            scratch: vec![0; READ_CHUNK],
            cluster,
            cluster_rx,
            started,
            stats: IoStats::default(),
            control: mpsc::channel(),
            turn_seconds: Default::default(),
            hash_grace: Duration::from_millis(cfg.shutdown_grace_ms),
            reload_hook: None,
            reload_due: false,
        };
        Ok(Server { hub, driver, io })
    }

    /// The plain listener's address (none if the server has no plain listener).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.io.addr
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
        let io = &mut self.io;
        let token = Token(FIRST_LISTENER + io.listeners.len());
        io.poll
            .registry()
            .register(&mut sock, token, Interest::READABLE)?;
        log::info!("{} listening on {addr}", wrap.name());
        io.listeners.push(Listening {
            sock,
            wrap: Some(wrap),
        });
        Ok(addr)
    }

    /// Where the operators' threads send their requests ([`Control`]).
    pub fn control_handle(&self) -> ControlHandle {
        ControlHandle::new(self.io.control.0.clone(), self.io.waker.clone())
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            flag: self.io.stop.clone(),
            waker: self.io.waker.clone(),
        }
    }

    /// On SIGHUP, `hook` reads the configuration again; the hub takes what changed of
    /// what applies without a restart ([`HubConfig::reload`]), and the log says what.
    pub fn on_reload(&mut self, hook: ReloadHook) {
        self.io.reload_hook = Some(hook);
    }

    /// Runs until shut down (signal or [`ShutdownHandle`]); then drains output for the
    /// grace period, closes every connection and lets the workers finish their jobs.
    pub fn run(self) -> io::Result<()> {
        let Server {
            mut hub,
            mut driver,
            mut io,
        } = self;
        if io.handle_signals {
            let mut s = signal_hook_mio::v1_0::Signals::new([
                signal_hook::consts::SIGTERM,
                signal_hook::consts::SIGINT,
                signal_hook::consts::SIGHUP,
            ])?;
            io.poll
                .registry()
                .register(&mut s, SIGNALS, Interest::READABLE)?;
            io.signals = Some(s);
        }
        // After the wrapped listeners' lines ("TLS listening on ..."): a script or test
        // that waits for this line finds every listener ready.
        if let Some(addr) = io.addr {
            log::info!("listening on {addr}");
        }
        // Every listener is bound and the store open: tell systemd (`Type=notify`) the
        // service is up. Without NOTIFY_SOCKET (not started by systemd) this does nothing.
        if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
            log::warn!("cannot tell systemd the server is ready: {e}");
        }
        while driver.turn(&mut hub, &mut io)? == Flow::Running {}
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        let left = hub.conn_count();
        if left > 0 {
            log::warn!("{left} connections did not finish writing in time; closing them");
        }
        io.socks.clear();
        let jobs = hub.jobs_in_flight();
        if jobs > 0 {
            log::info!("waiting for {jobs} store jobs to finish");
        }
        io.workers.shutdown(io.hash_grace);
        // The last results (the last history appends among them) count in the line below.
        let t = now_at(io.started, Instant::now());
        while let Ok(res) = io.results.try_recv() {
            hub.handle_result(res, t);
        }
        if let Some(c) = io.cluster.take() {
            c.shutdown();
        }
        let st = &hub.stats;
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
            driver.turns(),
            io.stats.reads,
            io.stats.writes
        );
        Ok(())
    }
}

impl Reactor {
    /// SIGHUP: the log file is opened again at its path (after logrotate moved it),
    /// and every listener reads its configuration again.
    fn reload(&mut self) {
        // systemd takes a reload notice only with the clock reading beside it.
        if let Ok(at) = sd_notify::NotifyState::monotonic_usec_now() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading, at]);
        }
        // Before the line below, so that it is the first line in the new file.
        crate::ops::logging::reopen();
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
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }

    fn signals(&mut self) {
        let Some(s) = self.signals.as_mut() else {
            return;
        };
        let mut reload = false;
        for sig in s.pending() {
            if sig == signal_hook::consts::SIGHUP {
                reload = true;
            } else {
                log::info!("signal {sig} received: shutting down");
                self.stop.store(true, Ordering::SeqCst);
            }
        }
        if reload {
            self.reload();
            self.reload_due = true;
        }
    }

    fn add_conn(
        &mut self,
        hub: &mut Hub,
        which: usize,
        mut sock: TcpStream,
        peer: SocketAddr,
        t: Now,
    ) {
        if let Err(e) = crate::sys::tune_connection(&sock) {
            log::debug!("socket options for {peer}: {e}");
        }
        let wrap = self.listeners[which].wrap.as_mut();
        let r = match hub.accept(peer, t) {
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
                    hub.handle_hangup(r, "transport setup failed", t);
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
            hub.handle_hangup(r, "registration failed", t);
            return;
        }
        if self.socks.len() <= r.key {
            self.socks.resize_with(r.key + 1, || None);
        }
        self.socks[r.key] = Some(link);
        log::debug!("conn {} from {peer}", r.key);
    }
}

impl Io for Reactor {
    #[inline]
    fn clock(&mut self) -> Instant {
        Instant::now()
    }

    fn now(&mut self, at: Instant) -> Now {
        now_at(self.started, at)
    }

    fn poll(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.poll.poll(&mut self.events, timeout)?;
        Ok(!self.events.is_empty())
    }

    fn events<F: FnMut(&mut Self, Ready)>(&mut self, mut on: F) {
        // Taken out for the loop, so that `on` can have the reactor (an empty `Events`
        // holds no memory).
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for ev in events.iter() {
            match ev.token() {
                WAKER => {}
                SIGNALS => self.signals(),
                Token(i) if i >= FIRST_LISTENER && i < FIRST_LISTENER + self.listeners.len() => {
                    on(self, Ready::Listener(i - FIRST_LISTENER))
                }
                token => on(
                    self,
                    Ready::Conn {
                        r: ConnRef::from_token(token.0),
                        read: ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                        write: ev.is_writable(),
                    },
                ),
            }
        }
        self.events = events;
    }

    fn read(&mut self, hub: &mut Hub, r: ConnRef, t: Now) -> Read {
        let mut budget = self.read_budget;
        loop {
            if !hub.wants_read(r) {
                return Read::Done;
            }
            let Some(Some(sock)) = self.socks.get_mut(r.key) else {
                return Read::Done;
            };
            self.stats.reads += 1;
            let want = budget.min(self.scratch.len());
            match sock.read(&mut self.scratch[..want]) {
                Ok(0) => {
                    hub.handle_hangup(r, "peer closed the connection", t);
                    return Read::Done;
                }
                Ok(n) => {
                    hub.handle_input(r, &self.scratch[..n], t);
                    if n < want && sock.short_read_drains() {
                        // A short read drained the socket: more data will raise a new
                        // edge, so the read that would only say WouldBlock is skipped.
                        return Read::Done;
                    }
                    if n >= budget {
                        // Others get a turn; this one is read again next turn.
                        return Read::NextTurn;
                    }
                    budget -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read::Done,
                // The transport worked through its share of input without producing
                // protocol bytes: others get a turn first.
                Err(e) if NextTurn::is(&e) => return Read::NextTurn,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    hub.handle_hangup(r, &format!("read failed: {e}"), t);
                    return Read::Done;
                }
            }
        }
    }

    /// The socket can take more: a transport's own bytes first, then what it decoded
    /// meanwhile or the close it waited to report; the hub's output goes with the next
    /// round of writes.
    fn writable(&mut self, hub: &mut Hub, r: ConnRef, t: Now) -> Read {
        let mut read = Read::Done;
        if let Some(Some(sock)) = self.socks.get_mut(r.key)
            && sock.is_wrapped()
        {
            if let Err(e) = sock.flush() {
                hub.handle_hangup(r, &format!("write failed: {e}"), t);
                return Read::Done;
            }
            read = self.read(hub, r, t);
        }
        hub.handle_writable(r);
        read
    }

    fn write(&mut self, hub: &mut Hub, r: ConnRef, t: Now) {
        let Some(Some(sock)) = self.socks.get_mut(r.key) else {
            return;
        };
        let writes = &mut self.stats.writes;
        hub.write(r, t, |iov| {
            *writes += 1;
            sock.write_vectored(iov)
        });
        if sock.is_wrapped()
            && let Err(e) = sock.flush()
        {
            hub.handle_hangup(r, &format!("write failed: {e}"), t);
        }
    }

    fn close(&mut self, r: ConnRef) {
        if let Some(mut s) = self.socks.get_mut(r.key).and_then(Option::take) {
            // A transport's last bytes (a close alert), best effort.
            let _ = s.flush();
            let _ = self.poll.registry().deregister(s.socket());
        }
    }

    fn accept(&mut self, hub: &mut Hub, which: usize, t: Now) -> Accept {
        loop {
            let Some(listener) = self.listeners.get(which) else {
                return Accept::Drained;
            };
            match listener.sock.accept() {
                Ok((sock, peer)) => self.add_conn(hub, which, sock, peer, t),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Accept::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if crate::sys::is_resource_exhaustion(&e) => {
                    log::warn!(
                        "accept failed: {e}; pausing accepts for {} ms ({} connections open)",
                        ACCEPT_BACKOFF.as_millis(),
                        hub.conn_count()
                    );
                    return Accept::Exhausted;
                }
                Err(e) => {
                    // ECONNABORTED and the like concern one connection only.
                    log::debug!("accept failed: {e}");
                }
            }
        }
    }

    fn listeners(&self) -> usize {
        self.listeners.len()
    }

    fn next_result(&mut self) -> Option<JobResult> {
        self.results.try_recv().ok()
    }

    fn next_cluster(&mut self) -> Option<Input> {
        self.cluster_rx.as_ref()?.try_recv().ok()
    }

    /// Answers each operator's request at once.
    fn control(&mut self, hub: &mut Hub, t: Now, turns: u64) {
        if std::mem::take(&mut self.reload_due)
            && let Some(hook) = self.reload_hook.as_mut()
            && let Some(new) = hook(hub.config())
        {
            let changed = hub.reconfigure(&new);
            if changed.is_empty() {
                log::info!("configuration read again: no setting changed");
            }
            for c in changed {
                log::info!("configuration read again: {c}");
            }
        }
        while let Ok(c) = self.control.1.try_recv() {
            match c {
                Control::Kick { user, kick, reply } => {
                    let n = hub.handle_admin(user, kick, t);
                    let _ = reply.try_send(n);
                }
                Control::Online { reply } => {
                    let lines = hub
                        .sessions()
                        .into_iter()
                        .map(|(id, name, addr)| crate::ops::admin::OnlineLine {
                            id,
                            name,
                            addr: Some(addr.to_string()),
                            node: None,
                        })
                        .collect();
                    let _ = reply.try_send(lines);
                }
                Control::Metrics { reply } => {
                    let mut snap = hub.metrics(t);
                    snap.loop_turns = turns;
                    snap.loop_seconds = self.turn_seconds.clone();
                    snap.uptime = self.started.elapsed();
                    let _ = reply.try_send(snap);
                }
            }
        }
    }

    fn submit(&mut self, job: Job) {
        self.workers.submit(job);
    }

    fn publish(&mut self, ev: Event) {
        if let Some(c) = &self.cluster {
            c.publish(ev);
        }
    }

    fn trim(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            c.report();
        }
        crate::sys::trim_heap();
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn stop_accepting(&mut self) {
        for mut l in std::mem::take(&mut self.listeners) {
            let _ = self.poll.registry().deregister(&mut l.sock);
        }
    }

    fn turn_ended(&mut self, started: Instant) {
        self.turn_seconds.observe(started.elapsed());
    }
}
