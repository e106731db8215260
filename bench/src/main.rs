//! `chat-bench`: load for the chat server, and the same load for `redis-server`
//! pub/sub as the yardstick. A program, not a test: it reports figures, it asserts
//! nothing about speed.
//!
//! - `fanout`: N receivers, P publishers, S-byte payloads; saturation with a window of
//!   messages in flight per publisher, or a fixed total rate. Reports messages/s,
//!   deliveries/s, lost messages, delivery latency percentiles, and the bench's own
//!   CPU time (so a saturated load generator is visible).
//! - `idle`: C logged-in (or subscribed) connections held open; the server's resident
//!   memory per connection, from `/proc/PID/status`.
//! - `login-storm`: K logins (real argon2 hashing) while a fixed-rate fan-out runs;
//!   the fan-out's latency before and during the storm, and how long the storm took.
//! - `history-flood`: U users each asking for a page of history at a fixed rate (the
//!   server's `--history-rate`), pages made long beforehand, while a fixed-rate
//!   fan-out runs; the fan-out's latency without and with the flood, and the server's
//!   memory.
//! - `flood`: N connections sending group messages as fast as they can; the server's
//!   CPU time meanwhile, and what it let through.
//!
//! With `--tls-ca`, every connection to the chat server is made over TLS (its
//! `--tls-listen` port), trusting that CA: TLS against plain, side by side.
//!
//! Receivers count frames by their length prefix (RESP headers for Redis) and parse
//! only every `--sample`th one, so the bench stays cheap. Every run ends by itself.

mod flood;
mod net;
mod soak;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use net::Pool;
use wire::{ChatKind, Resp, Target};

#[derive(Parser)]
#[command(
    name = "chat-bench",
    version,
    about = "Load generator for the chat server and Redis pub/sub"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Group-message fan-out: throughput, loss and latency.
    Fanout(FanoutArgs),
    /// Idle logged-in connections: server memory per connection.
    Idle(IdleArgs),
    /// Logins with real hashing during a fixed-rate fan-out.
    LoginStorm(StormArgs),
    /// Minutes of mixed load with bad clients; the server's memory over time.
    Soak(SoakArgs),
    /// History pages asked for by many users during a fixed-rate fan-out.
    HistoryFlood(HistoryFloodArgs),
    /// Connections sending as fast as they can: what they cost the server.
    Flood(flood::FloodArgs),
}

#[derive(Args, Clone)]
struct HistoryFloodArgs {
    #[command(flatten)]
    fanout: FanoutArgs,
    /// Users asking for history.
    #[arg(long, short = 'u', default_value_t = 1000)]
    users: usize,
    /// Pages each user asks for per minute (the server's `--history-rate`), whatever
    /// the answers: asked for without reading them (plain TCP: dropped in the kernel).
    #[arg(long, default_value_t = 30.0)]
    per_min: f64,
    /// Group messages written beforehand, so that the pages asked for are full.
    #[arg(long, default_value_t = 200)]
    fill: usize,
    /// Bytes of each of them: quotes and non-ASCII text, which grow on the wire, so
    /// that a page of 100 is over 1 MiB and has to be cut.
    #[arg(long, default_value_t = 12_000)]
    fill_size: usize,
    /// Registrations of the flood's users in flight at once, beforehand.
    #[arg(long, default_value_t = 200)]
    register_conns: usize,
}

#[derive(Args, Clone)]
pub(crate) struct SoakArgs {
    #[command(flatten)]
    fanout: FanoutArgs,
    /// Minutes to run (the server's process id, `--server-pid`, is required: its
    /// memory is read over time).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Bad clients started per second.
    #[arg(long, default_value_t = 10)]
    bad_per_sec: u32,
}

#[derive(Args, Clone)]
struct Common {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8889")]
    addr: SocketAddr,
    /// What the server is: this project's chat server, or redis-server.
    #[arg(long, value_enum, default_value = "chat")]
    target: Target,
    /// First user id the bench registers and logs in (chat target).
    #[arg(long, default_value_t = 1_000_000)]
    base_id: i64,
    /// Connect over TLS (chat target: the server's --tls-listen address as --addr),
    /// trusting the CA certificate in this PEM file.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<std::path::PathBuf>,
    /// With --tls-ca, the name the server's certificate must be for.
    #[arg(long, default_value = "localhost", value_name = "HOST")]
    tls_name: String,
    /// Chat target: log in without `compact`, as the seed's clients do, so that who is
    /// online comes as one `NotifyUserStatusMes` per change and the login reply names
    /// everyone as `users`. By default the bench asks for the compact forms, as this
    /// project's own clients (terminal and browser) do.
    #[arg(long)]
    seed_forms: bool,
}

/// The TLS settings `c` asks for, if any.
fn tls_setup(c: &Common) -> Res<Option<net::TlsSetup>> {
    let Some(ca) = &c.tls_ca else {
        return Ok(None);
    };
    if c.target != Target::Chat {
        return Err("--tls-ca is for the chat target".into());
    }
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca)
        .and_then(|c| c.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
    roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err(format!("--tls-ca {}: no certificate in it", ca.display()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(c.tls_name.clone())
        .map_err(|e| format!("--tls-name {}: {e}", c.tls_name))?;
    Ok(Some(net::TlsSetup {
        config: Arc::new(config),
        name,
    }))
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
pub(crate) enum WindowAt {
    Ack,
    Delivery,
}

#[derive(Args, Clone)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Receivers (logged in, or subscribed).
    #[arg(long, short = 'n', default_value_t = 100)]
    receivers: usize,
    /// Publishers.
    #[arg(long, short = 'p', default_value_t = 10)]
    publishers: usize,
    /// Payload (message content) size in bytes.
    #[arg(long, short = 's', default_value_t = 64)]
    size: usize,
    /// Messages in flight per publisher (saturation mode): a message is in flight
    /// until the server has taken it (PUBLISH's reply; a PingMes's PongMes for chat),
    /// or with `--window-at delivery` until every receiver has it.
    #[arg(long, short = 'w', default_value_t = 8)]
    window: usize,
    /// When a message stops counting as in flight: `ack`, the server's reply to the
    /// publisher; `delivery`, its arrival at every receiver (the same for both servers:
    /// what a publisher waiting on its audience would see).
    #[arg(long, value_enum, default_value = "ack")]
    window_at: WindowAt,
    /// Fixed total publish rate in messages/s instead of saturation.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of measurement.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Parse one received frame in this many for latency.
    #[arg(long, default_value_t = 16)]
    sample: u64,
    /// Another node of the same chat (several servers on one Redis): every other
    /// receiver connects there, so its messages cross from node to node.
    #[arg(long, value_name = "ADDR")]
    addr2: Option<SocketAddr>,
    /// The server's process id: fanout reports its CPU time during the measurement,
    /// login-storm its CPU time per login and its peak memory during the storm against
    /// after, soak (where it is required) its memory over time.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Connect and log in the publishers before the receivers, so that they have the
    /// lowest user ids and the oldest connections (by default they come last). A
    /// server's throughput should not depend on which of its users are talking.
    #[arg(long)]
    publishers_first: bool,
}

#[derive(Args, Clone)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to hold.
    #[arg(long, short = 'c', default_value_t = 10_000)]
    conns: usize,
    /// The server's process id, to read its memory.
    #[arg(long)]
    server_pid: u32,
    /// Seconds to hold the connections after they are all logged in and quiet, before
    /// the memory is read (the server hands freed memory back every 2 s).
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
}

#[derive(Args, Clone)]
struct StormArgs {
    #[command(flatten)]
    fanout: FanoutArgs,
    /// Logins in the storm.
    #[arg(long, short = 'k', default_value_t = 1000)]
    logins: usize,
    /// Longest the storm may take, in seconds (the fan-out is measured until it ends).
    #[arg(long, default_value_t = 300.0)]
    storm_limit: f64,
    /// Storm users stay logged in (and so join the fan-out's receivers) instead of
    /// disconnecting once their login has succeeded.
    #[arg(long)]
    stay: bool,
    /// Drop what the storm's users receive once logged in, in the kernel, unread
    /// (plain TCP only). The users of a storm that stay are sent a presence notice for
    /// every later login and a login reply listing everyone online, gigabytes for a
    /// storm of thousands; copying them out keeps the bench's core busy, and the
    /// bench may then set the storm's pace and add its own delay to the fan-out's
    /// latency during the storm.
    #[arg(long, requires = "stay")]
    storm_discard: bool,
    /// Registrations of the storm's users in flight at once, beforehand.
    #[arg(long, default_value_t = 200)]
    register_conns: usize,
}

fn main() {
    raise_fd_limit();
    let cli = Cli::parse();
    let r = match cli.mode {
        Mode::Fanout(a) => fanout(&a).map(|rep| rep.print(&a)),
        Mode::Idle(a) => idle(&a),
        Mode::LoginStorm(a) => storm(&a),
        Mode::Soak(a) => soak::run(&a),
        Mode::HistoryFlood(a) => history_flood(&a),
        Mode::Flood(a) => flood::run(&a),
    };
    if let Err(e) = r {
        eprintln!("chat-bench: {e}");
        std::process::exit(1);
    }
}

pub(crate) type Res<T> = Result<T, String>;

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

pub(crate) fn rss_kib(pid: u32) -> Res<u64> {
    proc_status_kib(pid, "VmRSS:")
}

/// A memory figure of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in KiB.
fn proc_status_kib(pid: u32, field: &str) -> Res<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {field} line"))
}

/// Starts a new peak-RSS measurement of process `pid` (VmHWM back to the current RSS).
fn reset_peak_rss(pid: u32) -> Res<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .map_err(|e| format!("cannot reset the peak RSS of {pid}: {e}"))
}

/// User + system CPU time of process `pid`, every thread, from `/proc/PID/stat`.
fn proc_cpu(pid: u32) -> Res<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // The fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz))
}

/// Latency samples in nanoseconds.
#[derive(Default)]
pub(crate) struct Lat(Vec<u64>);

impl Lat {
    fn pct(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let i = ((self.0.len() as f64 * p / 100.0).ceil() as usize).clamp(1, self.0.len()) - 1;
        self.0[i] as f64 / 1e6
    }

    fn summary(&mut self) -> String {
        format!(
            "p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms  ({} samples)",
            self.pct(50.0),
            self.pct(99.0),
            self.pct(99.9),
            self.pct(100.0),
            self.0.len()
        )
    }
}

/// What each connection is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Receiver,
    Publisher,
    /// A login of the storm (chat only).
    Storm,
}

struct Conn {
    role: Role,
    ready: bool,
    inflight: usize,
    /// Frames counted (messages for receivers, replies for publishers).
    count: u64,
    next_send: Instant,
    /// A login refused as busy is tried again at this time (and a storm's login
    /// refused for any reason).
    retry_at: Option<Instant>,
    /// The user id this connection logs in as.
    id: i64,
    /// Its registration was answered other than busy (a fan-out's connections
    /// register before logging in).
    registered: bool,
    /// Closed by the server and replaced by a new connection (storm connections).
    replaced: bool,
    /// Its registration was refused as busy and the login sent behind it is still to
    /// be answered: that answer (no such user) is not a failure, whenever it comes,
    /// before or after the two are sent again.
    login_behind_refusal: bool,
}

/// Connections for a fan-out, logged in (chat) or subscribed (Redis).
struct Fleet {
    pool: Pool,
    conns: Vec<Conn>,
    target: Target,
    base: Instant,
    sample: u64,
    lat: Lat,
    /// Received messages on receivers (what the comparison counts).
    delivered: u64,
    /// Messages delivered to publishers (chat: they are online users too).
    delivered_to_publishers: u64,
    published: u64,
    logins_done: usize,
    login_failures: usize,
    registers_done: usize,
    login_retries: usize,
    /// Connections closed by the server are not an error (registration phase).
    tolerate_closes: bool,
    /// Storm connections closed by the server and opened again.
    reconnects: usize,
    /// Logins ask for the compact forms of presence (see `--seed-forms`).
    compact: bool,
}

/// When to try a refused login again: at the hinted time, not sooner, spread over up to
/// half as long again (at most 10 s more) by the retry count and connection, so the
/// retries do not come back as one herd.
fn retry_time(hint_ms: u64, retries: usize, i: usize) -> Instant {
    let spread = (retries * 7919 + i * 104_729) % 1000;
    let wait = hint_ms + (hint_ms / 2).min(10_000) * spread as u64 / 1000;
    Instant::now() + Duration::from_millis(wait)
}

fn is_ok_code(body: &[u8]) -> bool {
    matches!(wire::chat_code(body), Some(200))
}

impl Fleet {
    fn new(target: Target, sample: u64, buf: usize) -> Res<Fleet> {
        Ok(Fleet {
            pool: Pool::new(buf).map_err(|e| e.to_string())?,
            conns: Vec::new(),
            target,
            base: Instant::now(),
            sample: sample.max(1),
            lat: Lat::default(),
            delivered: 0,
            delivered_to_publishers: 0,
            published: 0,
            logins_done: 0,
            login_failures: 0,
            registers_done: 0,
            login_retries: 0,
            tolerate_closes: false,
            reconnects: 0,
            compact: true,
        })
    }

    fn add(&mut self, addr: SocketAddr, role: Role) -> Res<usize> {
        let i = self
            .pool
            .connect(addr)
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        self.conns.push(Conn {
            role,
            ready: false,
            inflight: 0,
            count: 0,
            next_send: Instant::now(),
            retry_at: None,
            registered: false,
            id: 0,
            replaced: false,
            login_behind_refusal: false,
        });
        Ok(i)
    }

    /// Asks connection `i` to log in as `id` (chat) or subscribe (Redis).
    fn join(&mut self, i: usize, id: i64, register: bool) {
        self.conns[i].id = id;
        let bytes = match self.target {
            Target::Chat => wire::chat_login(id, "bench-password", register, self.compact),
            Target::Redis => match self.conns[i].role {
                Role::Receiver => wire::redis_cmd(&[b"SUBSCRIBE", wire::CHANNEL.as_bytes()]),
                _ => {
                    self.conns[i].ready = true;
                    return;
                }
            },
        };
        self.pool.clients[i].send(&bytes);
    }

    /// Sends again a fan-out's logins (after its registration if that was refused)
    /// refused as busy whose time has come. The storm's own connections are retried
    /// by the storm's loop: those of its registration fleet only register.
    fn retry_logins(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            if self.conns[i].role != Role::Storm {
                self.retry_login(i, now);
            }
        }
    }

    fn retry_login(&mut self, i: usize, now: Instant) {
        let conn = &mut self.conns[i];
        if conn.ready || conn.retry_at.is_none_or(|at| at > now) {
            return;
        }
        conn.retry_at = None;
        let register = conn.role != Role::Storm && !conn.registered;
        let login = wire::chat_login(conn.id, "bench-password", register, self.compact);
        self.pool.clients[i].send(&login);
        self.pool.flush_one(i);
    }

    fn ready_count(&self) -> usize {
        self.conns.iter().filter(|c| c.ready).count()
    }

    /// Messages published that some receiver has not got yet. Every receiver sees the
    /// messages in the server's one order, so the slowest receiver's count says how
    /// many have reached everyone.
    fn undelivered(&self) -> u64 {
        let everyone = self
            .conns
            .iter()
            .filter(|c| c.role == Role::Receiver)
            .map(|c| c.count)
            .min()
            .unwrap_or(self.published);
        self.published.saturating_sub(everyone)
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Queues one message from publisher `i`.
    fn publish(&mut self, i: usize, size: usize) {
        let p = wire::payload(self.published, self.now_ns(), size);
        let c = &mut self.pool.clients[i];
        match self.target {
            Target::Chat => {
                c.send(&wire::chat_sms(&p));
                c.send(&wire::chat_ping());
            }
            Target::Redis => {
                c.send(&wire::redis_cmd(&[
                    b"PUBLISH",
                    wire::CHANNEL.as_bytes(),
                    p.as_bytes(),
                ]));
            }
        }
        self.conns[i].inflight += 1;
        self.published += 1;
    }

    /// Handles the input of every connection that got some.
    fn process(&mut self) {
        let ready = std::mem::take(&mut self.pool.ready);
        for &i in &ready {
            match self.target {
                Target::Chat => self.process_chat(i),
                Target::Redis => self.process_redis(i),
            }
        }
        self.pool.ready = ready;
    }

    /// When connection `i`'s input arrived, in the fleet's nanoseconds.
    fn read_ns(&self, i: usize) -> u64 {
        let at = self.pool.clients[i].read_at;
        at.saturating_duration_since(self.base).as_nanos() as u64
    }

    fn process_chat(&mut self, i: usize) {
        let now_ns = self.read_ns(i);
        let conn = &mut self.conns[i];
        let c = &mut self.pool.clients[i];
        loop {
            let input = c.input();
            if input.len() < 4 {
                break;
            }
            let Some((total, body)) = wire::chat_frame(input) else {
                let want = 4 + u32::from_be_bytes(input[..4].try_into().unwrap()) as usize;
                c.need(want);
                break;
            };
            let body = &input[body];
            match wire::chat_kind(body) {
                ChatKind::Sms => {
                    conn.count += 1;
                    if conn.role == Role::Receiver {
                        self.delivered += 1;
                        if conn.count.is_multiple_of(self.sample)
                            && let Some(sent) = wire::sent_ns(body)
                        {
                            self.lat.0.push(now_ns.saturating_sub(sent));
                        }
                    } else {
                        self.delivered_to_publishers += 1;
                    }
                }
                ChatKind::Pong => conn.inflight = conn.inflight.saturating_sub(1),
                ChatKind::LoginRes => {
                    let behind_refusal = std::mem::take(&mut conn.login_behind_refusal);
                    if is_ok_code(body) {
                        conn.ready = true;
                    } else if behind_refusal {
                        // The registration before it was refused as busy: both go
                        // again (or went already, if their time came first).
                    } else if conn.role == Role::Storm || wire::retry_hint(body).is_some() {
                        // Refused as busy: like a well-behaved client, try again when
                        // the server says (half a second if it does not), not sooner,
                        // and spread over up to half as long again (at most 10 s, well
                        // inside the login timeout that restarts at the hinted time)
                        // so the retries do not come back as one herd.
                        let hint_ms = wire::retry_hint(body).map_or(500, |s| s * 1000);
                        self.login_retries += 1;
                        conn.retry_at = Some(retry_time(hint_ms, self.login_retries, i));
                    } else {
                        self.login_failures += 1;
                    }
                    self.logins_done += 1;
                }
                // A rate-limit refusal of a storm login (`ErrorResMes` 429 that says
                // when): try again then, as for busy.
                ChatKind::ErrorRes
                    if conn.role == Role::Storm
                        && !conn.ready
                        && conn.retry_at.is_none()
                        && wire::has_retry_after(body) =>
                {
                    let hint_ms = wire::retry_hint(body).map_or(500, |s| s * 1000);
                    self.login_retries += 1;
                    conn.retry_at = Some(retry_time(hint_ms, self.login_retries, i));
                }
                ChatKind::RegisterRes => {
                    self.registers_done += 1;
                    // A fan-out's registration refused as busy (its login, pipelined
                    // behind it, would find no such user): both go again when the
                    // server says. Any other answer (done, or the id already taken)
                    // leaves the user registered.
                    match wire::retry_hint(body).filter(|_| !is_ok_code(body)) {
                        Some(s) => {
                            if conn.role != Role::Storm {
                                conn.login_behind_refusal = true;
                                self.login_retries += 1;
                                conn.retry_at = Some(retry_time(s * 1000, self.login_retries, i));
                            }
                        }
                        None => conn.registered = true,
                    }
                }
                ChatKind::ErrorRes | ChatKind::Other => {}
            }
            c.consume(total);
        }
    }

    fn process_redis(&mut self, i: usize) {
        let now_ns = self.read_ns(i);
        let conn = &mut self.conns[i];
        let c = &mut self.pool.clients[i];
        while let Some((n, v)) = wire::resp(c.input()) {
            match v {
                Resp::Message(range) => {
                    conn.count += 1;
                    self.delivered += 1;
                    if conn.count.is_multiple_of(self.sample)
                        && let Some(sent) = wire::sent_ns(&c.input()[range])
                    {
                        self.lat.0.push(now_ns.saturating_sub(sent));
                    }
                }
                Resp::Int(_) => conn.inflight = conn.inflight.saturating_sub(1),
                Resp::Other => conn.ready = true, // the subscribe confirmation
            }
            c.consume(n);
        }
        let len = c.input().len();
        if len > 0 && len == c.input().len() {
            // A partial value: make sure a big one can fit.
            c.need(len * 2);
        }
    }

    /// Runs the loop until `done` says so or `limit` passes.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Fleet) -> bool) -> Res<bool> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if done(self) {
                return Ok(true);
            }
            self.retry_logins(Instant::now());
            self.pool.flush();
            self.pool
                .poll(Some(Duration::from_millis(5)))
                .map_err(|e| e.to_string())?;
            self.process();
            if self.tolerate_closes {
                continue;
            }
            self.check_closed()?;
        }
        Ok(done(self))
    }

    /// Fails if the server closed a receiver or publisher (storm connections may be
    /// closed: they reconnect).
    fn check_closed(&self) -> Res<()> {
        match self
            .pool
            .clients
            .iter()
            .zip(&self.conns)
            .position(|(c, k)| c.closed && k.role != Role::Storm)
        {
            Some(i) => {
                let (c, k) = (&self.pool.clients[i], &self.conns[i]);
                let state = if k.ready {
                    "logged in"
                } else {
                    "not logged in"
                };
                let how = match &c.error {
                    Some(e) => format!("failed: {e}"),
                    None => "was closed by the server".to_string(),
                };
                Err(format!(
                    "connection {i} ({:?}, {state}, {} messages in) {how}",
                    k.role, k.count
                ))
            }
            None => Ok(()),
        }
    }
}

/// Results of one fan-out run.
pub(crate) struct Report {
    secs: f64,
    published: u64,
    delivered: u64,
    to_publishers: u64,
    lost: u64,
    lat: Lat,
    cpu: Duration,
    saturated_bench: bool,
    /// The server's CPU time meanwhile, if its process id was given.
    server_cpu: Option<Duration>,
}

impl Report {
    fn print(mut self, a: &FanoutArgs) {
        let mode = match a.rate {
            Some(r) => format!("fixed rate {r} msg/s"),
            None if a.window_at == WindowAt::Delivery => {
                format!("saturation, window {} counted at delivery", a.window)
            }
            None => format!("saturation, window {}", a.window),
        };
        println!(
            "fanout target={:?} N={} P={} S={} {mode}{}",
            a.common.target,
            a.receivers,
            a.publishers,
            a.size,
            if a.common.tls_ca.is_some() {
                " over TLS"
            } else {
                ""
            }
        );
        println!("  duration        {:.2} s", self.secs);
        println!("  messages/s      {:.0}", self.published as f64 / self.secs);
        println!(
            "  deliveries/s    {:.0}  (to the N receivers)",
            self.delivered as f64 / self.secs
        );
        if self.to_publishers > 0 {
            println!(
                "                  plus {:.0}/s to the other publishers (chat users all get group messages)",
                self.to_publishers as f64 / self.secs
            );
        }
        println!("  lost            {}", self.lost);
        println!("  latency         {}", self.lat.summary());
        println!(
            "  bench CPU       {:.2} s of {:.2} s wall ({:.0}%){}",
            self.cpu.as_secs_f64(),
            self.secs,
            100.0 * self.cpu.as_secs_f64() / self.secs,
            if self.saturated_bench {
                "  <- the bench itself is saturated"
            } else {
                ""
            }
        );
        if let Some(server) = self.server_cpu {
            let deliveries = (self.delivered + self.to_publishers).max(1);
            println!(
                "  server CPU      {:.2} s of {:.2} s wall ({:.0}%), {:.2} us per delivery",
                server.as_secs_f64(),
                self.secs,
                100.0 * server.as_secs_f64() / self.secs,
                server.as_secs_f64() * 1e6 / deliveries as f64
            );
        }
    }
}

/// The role of the `k`th connection a fan-out makes: the receivers come first, unless
/// `publishers_first` says how many publishers go before them.
fn role_of(k: usize, receivers: usize, publishers_first: Option<usize>) -> Role {
    let publisher = match publishers_first {
        Some(p) => k < p,
        None => k >= receivers,
    };
    if publisher {
        Role::Publisher
    } else {
        Role::Receiver
    }
}

/// Connects and readies a fan-out fleet: receivers first, then publishers (the other
/// way round with `--publishers-first`).
pub(crate) fn fleet_for(a: &FanoutArgs, extra_buf: bool) -> Res<Fleet> {
    let buf = if extra_buf { 256 * 1024 } else { 64 * 1024 };
    let mut f = Fleet::new(a.common.target, a.sample, buf)?;
    f.compact = !a.common.seed_forms;
    f.pool.tls = tls_setup(&a.common)?;
    let total = a.receivers + a.publishers;
    for k in 0..total {
        let role = role_of(k, a.receivers, a.publishers_first.then_some(a.publishers));
        let addr = match a.addr2 {
            Some(other) if role == Role::Receiver && k % 2 == 1 => other,
            _ => a.common.addr,
        };
        let i = f.add(addr, role)?;
        f.join(i, a.common.base_id + k as i64, true);
        if k % 100 == 99 {
            f.run_until(Duration::ZERO, |_| false)?;
        }
    }
    let ok = f.run_until(Duration::from_secs(120), |f| f.ready_count() == total)?;
    if !ok {
        return Err(format!(
            "only {} of {total} connections got ready ({} login failures, {} refused as busy \
             and tried again)",
            f.ready_count(),
            f.login_failures,
            f.login_retries
        ));
    }
    // Let the login notices drain before measuring (chat: each login is announced
    // to everyone online).
    let quiet = Instant::now();
    f.run_until(Duration::from_millis(500), |_| {
        quiet.elapsed() > Duration::from_millis(300)
    })?;
    Ok(f)
}

/// Runs the publish loop on a ready fleet for `secs`; then drains.
fn measure(f: &mut Fleet, a: &FanoutArgs, secs: f64) -> Res<Report> {
    measure_until(f, a, secs, |_| Ok(false))
}

/// Runs the publish loop until `during` (called every turn) says it is done, or for
/// `secs` at most; then drains.
pub(crate) fn measure_until(
    f: &mut Fleet,
    a: &FanoutArgs,
    secs: f64,
    mut during: impl FnMut(&mut Fleet) -> Res<bool>,
) -> Res<Report> {
    let pubs: Vec<usize> = (0..f.conns.len())
        .filter(|i| f.conns[*i].role == Role::Publisher)
        .collect();
    let interval = a
        .rate
        .map(|r| Duration::from_secs_f64(a.publishers as f64 / r.max(0.001)));
    // A fixed rate still caps what may be in flight, so a stalled server cannot make
    // the bench queue without bound.
    let cap = if a.rate.is_some() {
        a.window.max(1000)
    } else {
        a.window.max(1)
    };
    let start_pub = f.published;
    let start_del = f.delivered;
    let start_dpub = f.delivered_to_publishers;
    f.lat.0.clear();
    // Room for every latency sample up front: growing a vector of millions of samples
    // mid-run copies megabytes and stalls the loop, which then reads as server latency.
    let receivers = f.conns.iter().filter(|c| c.role == Role::Receiver).count() as f64;
    let expect = a.rate.map_or(4_000_000.0, |r| {
        1.2 * r * secs * receivers / f.sample as f64
    });
    f.lat.0.reserve(expect.min(16_000_000.0) as usize);
    let cpu0 = cpu_time();
    let server0 = a.server_pid.map(proc_cpu).transpose()?;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    for (k, &i) in pubs.iter().enumerate() {
        // Stagger fixed-rate publishers over one interval.
        f.conns[i].next_send =
            t0 + interval.map_or(Duration::ZERO, |iv| iv * k as u32 / pubs.len() as u32);
    }
    let by_delivery = a.window_at == WindowAt::Delivery && interval.is_none();
    // Counted at delivery: the publishers share a window of `window` messages each.
    let shared_cap = (a.window.max(1) * pubs.len()) as u64;
    while Instant::now() < end {
        let now = Instant::now();
        let mut next_due = end;
        if by_delivery {
            let mut k = 0;
            while f.undelivered() < shared_cap {
                let i = pubs[k % pubs.len()];
                f.publish(i, a.size);
                k += 1;
            }
        }
        for &i in &pubs {
            match interval {
                None if by_delivery => {}
                None => {
                    while f.conns[i].inflight < cap {
                        f.publish(i, a.size);
                    }
                }
                Some(iv) => {
                    while f.conns[i].next_send <= now && f.conns[i].inflight < cap {
                        f.publish(i, a.size);
                        f.conns[i].next_send += iv;
                    }
                    next_due = next_due.min(f.conns[i].next_send);
                }
            }
            f.pool.flush_one(i);
        }
        if during(f)? {
            break;
        }
        let wait = if interval.is_some() {
            next_due
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(5))
        } else {
            Duration::from_millis(5)
        };
        f.pool.poll(Some(wait)).map_err(|e| e.to_string())?;
        f.process();
        f.check_closed()?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_time() - cpu0;
    let server_cpu = match (a.server_pid, server0) {
        (Some(pid), Some(c0)) => Some(proc_cpu(pid)?.saturating_sub(c0)),
        _ => None,
    };
    let published = f.published - start_pub;
    let delivered_in_window = f.delivered - start_del;
    let to_publishers = f.delivered_to_publishers - start_dpub;
    let mut lat = std::mem::take(&mut f.lat);
    // Drain: everything published must arrive at every receiver.
    let receivers = f.conns.iter().filter(|c| c.role == Role::Receiver).count() as u64;
    let expected = start_del + published * receivers;
    f.run_until(Duration::from_secs(10), |f| f.delivered >= expected)?;
    let lost = expected.saturating_sub(f.delivered);
    lat.0.append(&mut f.lat.0);
    Ok(Report {
        secs,
        published,
        delivered: delivered_in_window,
        to_publishers,
        lost,
        lat,
        cpu,
        saturated_bench: cpu.as_secs_f64() > 0.9 * secs,
        server_cpu,
    })
}

fn fanout(a: &FanoutArgs) -> Res<Report> {
    let mut f = fleet_for(a, false)?;
    measure(&mut f, a, a.duration)
}

fn idle(a: &IdleArgs) -> Res<()> {
    let before = rss_kib(a.server_pid)?;
    let mut f = Fleet::new(a.common.target, 1, 16 * 1024)?;
    f.pool.tls = tls_setup(&a.common)?;
    let started = Instant::now();
    let n = a.conns;
    // Connections logging in at once: enough to keep the server's workers busy,
    // few enough to stay under its job queue limit.
    const IN_FLIGHT: usize = 256;
    let mut opened = 0;
    while f.ready_count() < n {
        if started.elapsed() > Duration::from_secs(600) {
            return Err(format!(
                "only {} of {n} connections got ready",
                f.ready_count()
            ));
        }
        if f.login_failures > 0 {
            return Err(format!("{} logins failed", f.login_failures));
        }
        while opened < n && opened - f.ready_count() < IN_FLIGHT {
            let i = f.add(a.common.addr, Role::Receiver)?;
            f.join(i, a.common.base_id + opened as i64, true);
            opened += 1;
        }
        f.run_until(Duration::from_millis(1), |_| false)?;
    }
    let setup = started.elapsed();
    // Read until the login notices have drained (nothing arrives for a while).
    let mut last = f.pool.clients.len();
    let mut quiet_since = Instant::now();
    f.run_until(Duration::from_secs(120), |f| {
        let seen = f.pool.ready.len();
        if seen != 0 || last != 0 {
            quiet_since = Instant::now();
        }
        last = seen;
        quiet_since.elapsed() > Duration::from_millis(500)
    })?;
    f.run_until(Duration::from_secs_f64(a.hold), |_| false)?;
    let after = rss_kib(a.server_pid)?;
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
    let over = if a.common.tls_ca.is_some() {
        " over TLS"
    } else {
        ""
    };
    println!("idle target={:?} C={n}{over}", a.common.target);
    println!(
        "  setup           {:.2} s (connect + log in / subscribe)",
        setup.as_secs_f64()
    );
    println!("  server RSS      {before} KiB before, {after} KiB with {n} connections");
    println!("  per connection  {per:.0} bytes");
    Ok(())
}

fn storm(a: &StormArgs) -> Res<()> {
    if a.fanout.common.target != Target::Chat {
        return Err("login-storm measures the chat server's logins; use --target chat".into());
    }
    let fa = &a.fanout;
    let addr = fa.common.addr;
    if fa.rate.is_none() {
        return Err("login-storm needs a fixed --rate for the background fan-out".into());
    }
    // The storm's users, registered beforehand (registration hashes too: not timed).
    let storm_base = fa.common.base_id + 500_000;
    let reg_started = Instant::now();
    register_all(&fa.common, storm_base, a.logins, a.register_conns)?;
    let reg_secs = reg_started.elapsed().as_secs_f64();

    eprintln!(
        "registered {} storm users in {reg_secs:.1} s; starting the fan-out",
        a.logins
    );
    let mut f = fleet_for(fa, false)?;
    let base = measure(&mut f, fa, fa.duration)?;
    eprintln!("baseline measured; starting the storm");

    // The storm: K new connections, each logging in, all at once.
    let first = f.conns.len();
    let server_before = match fa.server_pid {
        Some(pid) => {
            reset_peak_rss(pid)?;
            Some((proc_cpu(pid)?, rss_kib(pid)?))
        }
        None => None,
    };
    let mut server_cpu = None;
    let bench_cpu0 = cpu_time();
    // The fan-out's setup may have retried logins too: count the storm's only.
    let retries0 = f.login_retries;
    let mut bench_cpu = Duration::ZERO;
    let t0 = Instant::now();
    let mut opened = 0usize;
    let k = a.logins;
    let mut storm_secs = None;
    let mut storm_failures = 0;
    let storm_limit = a.storm_limit;
    let stay = a.stay;
    let mut rep = measure_until(&mut f, fa, storm_limit, |f| {
        // Open the storm's connections a few per loop turn: quickly next to the time
        // the logins take, without making the bench's own loop slow (connect is a
        // syscall each) and so adding latency the server did not cause.
        let batch = (k - opened).min(25);
        for j in 0..batch {
            let i = f.add(addr, Role::Storm)?;
            f.join(i, storm_base + (opened + j) as i64, false);
        }
        opened += batch;
        let now = Instant::now();
        for i in first..f.conns.len() {
            let id = f.conns[i].id;
            if f.conns[i].ready && !stay && !f.pool.clients[i].closed {
                f.pool.close(i);
            } else if f.conns[i].ready && a.storm_discard {
                f.pool.discard(i);
            } else if f.pool.clients[i].closed && !f.conns[i].ready && !f.conns[i].replaced {
                // Closed while waiting (the server's login timeout): like a real
                // client, connect again and retry.
                f.conns[i].replaced = true;
                f.reconnects += 1;
                f.pool.close(i);
                let j = f.add(addr, Role::Storm)?;
                f.join(j, id, false);
            } else {
                f.retry_login(i, now);
            }
        }
        let done = f.conns[first..].iter().filter(|c| c.ready).count() + f.login_failures;
        if storm_secs.is_none() && opened == k && done >= k {
            storm_secs = Some(t0.elapsed().as_secs_f64());
            bench_cpu = cpu_time() - bench_cpu0;
            storm_failures = f.login_failures;
            if let Some(pid) = fa.server_pid {
                server_cpu = Some(proc_cpu(pid)?);
            }
        }
        Ok(storm_secs.is_some())
    })?;
    let mut base_lat = base.lat;
    println!(
        "login-storm K={k} with fanout N={} P={} S={} at {} msg/s, {}",
        fa.receivers,
        fa.publishers,
        fa.size,
        fa.rate.unwrap_or(0.0),
        if f.compact {
            "compact presence"
        } else {
            "seed forms of presence (--seed-forms)"
        }
    );
    println!("  registering K users took {reg_secs:.2} s (not part of the storm)");
    match storm_secs {
        Some(s) => println!(
            "  storm           {k} logins in {s:.2} s ({:.0} logins/s), {storm_failures} failed, \
             {} refused as busy and retried, {} reconnected after the login timeout",
            k as f64 / s,
            f.login_retries - retries0,
            f.reconnects
        ),
        None => println!(
            "  storm           not finished within {storm_limit} s: {} of {k} logged in, \
             {} refused as busy and retried, {} reconnected after the login timeout",
            f.conns[first..].iter().filter(|c| c.ready).count(),
            f.login_retries - retries0,
            f.reconnects
        ),
    }
    if let Some(s) = storm_secs {
        // A saturated bench may set the storm's pace (and so how long the background
        // fan-out runs on the server during it).
        let share = bench_cpu.as_secs_f64() / s.max(1e-9);
        println!(
            "  bench CPU       {:.2} s of the storm's {s:.2} s ({:.0}%){}{}",
            bench_cpu.as_secs_f64(),
            100.0 * share,
            if share > 0.9 {
                "  <- the bench itself is saturated"
            } else {
                ""
            },
            if a.storm_discard && f.pool.tls.is_none() {
                "; storm users' input dropped unread once logged in"
            } else {
                ""
            }
        );
    }
    if let (Some(pid), Some((cpu0, rss0)), Some(cpu1)) =
        (a.fanout.server_pid, server_before, server_cpu)
    {
        let peak = proc_status_kib(pid, "VmHWM:")?;
        // The server hands freed memory back every 2 s: read the steady state after.
        std::thread::sleep(Duration::from_secs(3));
        let after = rss_kib(pid)?;
        println!(
            "  server CPU      {:.3} ms per login ({:.2} s for {k})",
            (cpu1 - cpu0).as_secs_f64() * 1000.0 / k as f64,
            (cpu1 - cpu0).as_secs_f64()
        );
        println!(
            "  server memory   {} KiB before, peak {} KiB during, {} KiB after (peak / after {:.2})",
            rss0,
            peak,
            after,
            peak as f64 / after.max(1) as f64
        );
    }
    println!("  fan-out before  {}", base_lat.summary());
    println!("  fan-out during  {}", rep.lat.summary());
    println!(
        "  lost            {} before, {} during",
        base.lost, rep.lost
    );
    Ok(())
}

/// Registers `n` users from `base` on, `in_flight` at a time (registration hashes: a
/// setup step, not timed).
fn register_all(common: &Common, base: i64, n: usize, in_flight: usize) -> Res<()> {
    let addr = common.addr;
    let reg_started = Instant::now();
    // One registration per connection, a few hundred at a time: the server closes
    // connections that do not log in within its login timeout, so a connection
    // must not queue many slow (hashing) registrations.
    let mut reg = Fleet::new(Target::Chat, 1, 4 * 1024)?;
    reg.pool.tls = tls_setup(common)?;
    reg.tolerate_closes = true;
    let in_flight = in_flight.max(1);
    let mut opened = 0;
    while reg.registers_done < n {
        if reg_started.elapsed() > Duration::from_secs(3600) {
            return Err("registering the users did not finish".into());
        }
        while opened < n && opened - reg.registers_done < in_flight {
            let i = reg.add(addr, Role::Storm)?;
            reg.pool.clients[i].send(&wire::chat_register(base + opened as i64, "bench-password"));
            opened += 1;
        }
        reg.run_until(Duration::from_millis(5), |_| false)?;
    }
    Ok(())
}

fn history_flood(a: &HistoryFloodArgs) -> Res<()> {
    let fa = &a.fanout;
    if fa.common.target != Target::Chat || fa.rate.is_none() {
        return Err("history-flood needs --target chat and a fixed --rate".into());
    }
    let addr = fa.common.addr;
    let base = fa.common.base_id + 700_000;
    let reg_started = Instant::now();
    register_all(&fa.common, base, a.users + 1, a.register_conns)?;
    eprintln!(
        "registered {} users in {:.1} s; writing {} long messages",
        a.users + 1,
        reg_started.elapsed().as_secs_f64(),
        a.fill
    );
    // The history: long group messages from one more user, each acknowledged.
    let (last_fill_id, page_bytes);
    {
        let mut w = Fleet::new(Target::Chat, 1, 64 * 1024)?;
        w.pool.tls = tls_setup(&fa.common)?;
        let i = w.add(addr, Role::Publisher)?;
        w.join(i, base + a.users as i64, false);
        if !w.run_until(Duration::from_secs(60), |w| w.ready_count() == 1)? {
            return Err("the history's writer did not log in".into());
        }
        let unit = "\"字é<a> ";
        let text: String = unit.repeat(a.fill_size / unit.len() + 1);
        let mut cut = a.fill_size.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        for k in 0..a.fill {
            let c = &mut w.pool.clients[i];
            c.send(&wire::chat_sms(&format!("{k} {}", &text[..cut])));
            c.send(&wire::chat_ping());
            w.conns[i].inflight += 1;
            if !w.run_until(Duration::from_secs(10), |w| w.conns[i].inflight == 0)? {
                return Err("a message of the history was not answered".into());
            }
        }
        // Gathered and committed by the server within its --history-gather-ms. The
        // fan-out's messages come after them in the history: the flood pages back from
        // the newest of them.
        w.run_until(Duration::from_millis(500), |_| false)?;
        let (_, newest) = history_page(&mut w, i, &history_ask(0, 1))?;
        last_fill_id = wire::history_last_id(&newest).ok_or("the history is empty")?;
        (page_bytes, _) = history_page(&mut w, i, &history_ask(last_fill_id + 1, 100))?;
    }
    let mut f = fleet_for(fa, false)?;
    // The flood's users are online in both runs (each gets the group's messages too):
    // the only difference is their asking.
    let first = f.conns.len();
    for k in 0..a.users {
        let i = f.add(addr, Role::Storm)?;
        f.join(i, base + k as i64, false);
        if k % 100 == 99 {
            f.run_until(Duration::ZERO, |_| false)?;
        }
    }
    let started = Instant::now();
    let all_in = |f: &Fleet| {
        f.conns[first..].iter().filter(|c| c.ready).count() + f.login_failures >= a.users
    };
    while !all_in(&f) && started.elapsed() < Duration::from_secs(300) {
        let now = Instant::now();
        for i in first..f.conns.len() {
            f.retry_login(i, now);
        }
        f.run_until(Duration::from_millis(5), |_| false)?;
    }
    if !all_in(&f) {
        return Err("the flood's users did not all log in".into());
    }
    for i in first..f.conns.len() {
        f.pool.discard(i);
    }
    let quiet = Instant::now();
    f.run_until(Duration::from_secs(2), |_| {
        quiet.elapsed() > Duration::from_secs(1)
    })?;
    let base_rep = measure(&mut f, fa, fa.duration)?;
    eprintln!("baseline measured; the flood starts");
    let server_before = match fa.server_pid {
        Some(pid) => {
            reset_peak_rss(pid)?;
            Some(rss_kib(pid)?)
        }
        None => None,
    };
    // Each user asks at its rate, the users spread over one interval.
    let interval = Duration::from_secs_f64(60.0 / a.per_min.max(0.001));
    let t0 = Instant::now();
    let n = (f.conns.len() - first).max(1) as u32;
    for (k, i) in (first..f.conns.len()).enumerate() {
        f.conns[i].next_send = t0 + interval * k as u32 / n;
    }
    let ask = history_ask(last_fill_id + 1, 100);
    let mut asked = 0u64;
    let rep = measure_until(&mut f, fa, fa.duration, |f| {
        let now = Instant::now();
        for i in first..f.conns.len() {
            if f.conns[i].next_send <= now && !f.pool.clients[i].closed {
                f.pool.clients[i].send(&ask);
                f.conns[i].next_send += interval;
                asked += 1;
            }
        }
        Ok(false)
    })?;
    let closed = f.pool.clients[first..].iter().filter(|c| c.closed).count();
    let (mut base_lat, mut lat) = (base_rep.lat, rep.lat);
    println!(
        "history-flood U={} at {} pages/min each (pages before id {}), {} messages of {} bytes \
         in the history; fanout N={} P={} S={} at {} msg/s",
        a.users,
        a.per_min,
        last_fill_id + 1,
        a.fill,
        a.fill_size,
        fa.receivers,
        fa.publishers,
        fa.size,
        fa.rate.unwrap_or(0.0)
    );
    println!(
        "  flood           {asked} pages of {page_bytes} bytes asked for in {:.1} s ({:.0}/s), \
         {closed} of the users closed by the server",
        rep.secs,
        asked as f64 / rep.secs.max(1e-9)
    );
    if let (Some(pid), Some(rss0)) = (fa.server_pid, server_before) {
        let peak = proc_status_kib(pid, "VmHWM:")?;
        println!("  server memory   {rss0} KiB before the flood, peak {peak} KiB during");
    }
    println!("  fan-out without {}", base_lat.summary());
    println!("  fan-out with    {}", lat.summary());
    println!(
        "  lost            {} without, {} with",
        base_rep.lost, rep.lost
    );
    Ok(())
}

/// Sends `ask` on `w`'s connection `i` and waits for the `HistoryResMes`: its length
/// (prefix included) and body.
fn history_page(w: &mut Fleet, i: usize, ask: &[u8]) -> Res<(usize, Vec<u8>)> {
    w.pool.clients[i].send(ask);
    let asked = Instant::now();
    while asked.elapsed() < Duration::from_secs(10) {
        w.pool.flush();
        w.pool
            .poll(Some(Duration::from_millis(5)))
            .map_err(|e| e.to_string())?;
        let c = &mut w.pool.clients[i];
        while let Some((total, body)) = wire::chat_frame(c.input()) {
            let body = c.input()[body].to_vec();
            c.consume(total);
            if body.starts_with(br#"{"type":"HistoryResMes""#) {
                return Ok((total, body));
            }
        }
        if let Some(want) = c.input().get(..4) {
            let want = 4 + u32::from_be_bytes(want.try_into().expect("4 bytes")) as usize;
            c.need(want);
        }
    }
    Err("a page of history was not answered".into())
}

/// `HistoryMes` for the group's page of `limit` before `before`.
fn history_ask(before: u64, limit: i64) -> Vec<u8> {
    chat::proto::ClientMessage::History(chat::proto::HistoryMes {
        before,
        limit,
        with: None,
        after: None,
    })
    .encode()
}

/// Raises the soft descriptor limit to the hard one: the bench holds many connections.
fn raise_fd_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(1 << 20) {
        eprintln!("chat-bench: cannot raise the descriptor limit: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed_and_every_mode_takes_the_server_pid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        for mode in ["fanout", "login-storm", "soak", "history-flood", "flood"] {
            let cli = Cli::try_parse_from(["chat-bench", mode, "--server-pid", "7"])
                .unwrap_or_else(|e| panic!("{mode}: {e}"));
            let pid = match cli.mode {
                Mode::Fanout(a) => a.server_pid,
                Mode::LoginStorm(a) => a.fanout.server_pid,
                Mode::Soak(a) => a.fanout.server_pid,
                Mode::HistoryFlood(a) => a.fanout.server_pid,
                Mode::Flood(a) => Some(a.server_pid),
                Mode::Idle(_) => unreachable!(),
            };
            assert_eq!(pid, Some(7), "{mode}");
        }
    }
    use chat::proto::{ClientMessage, CodeRes, LoginResMes, ServerMessage};
    use std::io::{Read, Write};
    use std::sync::mpsc;
    use std::thread::JoinHandle;

    /// A chat server for one connection that answers the requests, in turn, with
    /// `answers` (for each request the frames it then writes, none to hold its answer
    /// back for a later one); returns what it was asked, once told to hang up or hung
    /// up on.
    fn scripted_server(
        answers: Vec<Vec<ServerMessage>>,
    ) -> (SocketAddr, mpsc::Sender<()>, JoinHandle<Vec<&'static str>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (hang_up, told) = mpsc::channel();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut asked = Vec::new();
            for answer in answers {
                // The bench hung up before asking everything: what it asked so far.
                let mut len = [0u8; 4];
                if s.read_exact(&mut len).is_err() {
                    return asked;
                }
                let mut body = vec![0; u32::from_be_bytes(len) as usize];
                if s.read_exact(&mut body).is_err() {
                    return asked;
                }
                asked.push(match ClientMessage::parse(&body).unwrap() {
                    ClientMessage::Register(_) => "register",
                    ClientMessage::Login(_) => "login",
                    _ => "other",
                });
                for frame in answer {
                    s.write_all(&frame.encode()).unwrap();
                }
            }
            let _ = told.recv();
            asked
        });
        (addr, hang_up, server)
    }

    /// A busy refusal that says to come back at once (the server says at least 1 s).
    fn busy() -> CodeRes {
        CodeRes {
            code: 505,
            error: "server busy, try again in 1 s".into(),
            retry_after: Some(0),
            ..CodeRes::default()
        }
    }

    fn registered() -> ServerMessage {
        ServerMessage::RegisterRes(CodeRes::new(200, ""))
    }

    fn login(code: u16) -> ServerMessage {
        ServerMessage::LoginRes(LoginResMes {
            code,
            ..LoginResMes::default()
        })
    }

    /// A fan-out receiver joining (register then login, pipelined) against `answers`,
    /// one to each request: the requests the server got, the connection ready or not,
    /// failures, retries.
    fn join(answers: Vec<ServerMessage>) -> (Vec<&'static str>, bool, usize, usize) {
        join_scripted(answers.into_iter().map(|a| vec![a]).collect())
    }

    fn join_scripted(answers: Vec<Vec<ServerMessage>>) -> (Vec<&'static str>, bool, usize, usize) {
        let (addr, hang_up, server) = scripted_server(answers);
        let mut f = Fleet::new(Target::Chat, 1, 64 * 1024).unwrap();
        let i = f.add(addr, Role::Receiver).unwrap();
        f.join(i, 42, true);
        f.run_until(Duration::from_secs(60), |f| {
            f.ready_count() == 1 || f.login_failures > 0
        })
        .unwrap();
        let (ready, failures, retries) = (f.ready_count() == 1, f.login_failures, f.login_retries);
        drop(f);
        let _ = hang_up.send(());
        (server.join().unwrap(), ready, failures, retries)
    }

    #[test]
    fn publishers_come_last_unless_asked_to_come_first() {
        let roles = |first| (0..5).map(|k| role_of(k, 3, first)).collect::<Vec<_>>();
        let (r, p) = (Role::Receiver, Role::Publisher);
        assert_eq!(roles(None), [r, r, r, p, p]);
        assert_eq!(roles(Some(2)), [p, p, r, r, r]);
    }

    #[test]
    fn a_setup_registration_refused_as_busy_goes_again_with_its_login() {
        let answers = vec![
            ServerMessage::RegisterRes(busy()),
            login(500), // no such user: the registration was refused
            registered(),
            login(200),
        ];
        assert_eq!(
            join(answers),
            (vec!["register", "login", "register", "login"], true, 0, 1)
        );
    }

    /// The login behind a refused registration answered only after both were sent
    /// again (a slow server, or a short time to wait): still not a failure.
    #[test]
    fn a_refused_registrations_login_answered_after_the_retry_is_no_failure() {
        let answers = vec![
            vec![ServerMessage::RegisterRes(busy())],
            vec![], // held back: the bench sends both again meanwhile
            vec![login(500), registered()],
            vec![login(200)],
        ];
        assert_eq!(
            join_scripted(answers),
            (vec!["register", "login", "register", "login"], true, 0, 1)
        );
    }

    #[test]
    fn a_setup_login_refused_as_busy_goes_again_alone() {
        let answers = vec![
            registered(),
            ServerMessage::LoginRes(LoginResMes {
                code: busy().code,
                error: busy().error,
                retry_after: busy().retry_after,
                ..LoginResMes::default()
            }),
            login(200),
        ];
        assert_eq!(
            join(answers),
            (vec!["register", "login", "login"], true, 0, 1)
        );
    }

    #[test]
    fn a_setup_login_refused_for_good_is_a_failure() {
        let answers = vec![registered(), login(403)];
        assert_eq!(join(answers), (vec!["register", "login"], false, 1, 0));
    }
}
