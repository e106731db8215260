//! `chat-server`: parses the command line (and the `--config` file), sets up logging
//! and the store, binds the listeners (plain, TLS, web) and runs the reactor until
//! SIGTERM or SIGINT; or runs an operator's subcommand (`users ...`, `backup`: see
//! `chat::ops::cli`).

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser};

use chat::cluster::redis::ClusterConfig;
use chat::hub::HubConfig;
use chat::job::auth::{HashError, HashParams};
use chat::priority::WorkerPriority;
use chat::reactor::{Server, ServerConfig, default_job_timeout_secs};
use chat::store::embedded::EmbeddedStore;
use chat::store::redis::{RedisStore, RedisTimeouts};
use chat::store::{Store, StoreError, StoreFactory};
use std::time::Duration;

/// A multi-user chat server speaking the Go chat tutorial's wire protocol.
///
/// Data (users, offline messages, history) is kept in one crash-safe file in the data
/// directory. Stop it with SIGTERM or Ctrl-C: queued output is drained and every
/// acknowledged write is kept. SIGHUP reloads the TLS certificate and key.
#[derive(Parser, Debug)]
#[command(name = "chat-server", version, args_override_self = true)]
#[command(group = clap::ArgGroup::new("tls_listeners")
    .args(["tls_listen", "web_tls_listen"])
    .multiple(true))]
struct Args {
    /// An operator's command instead of running the server (`chat-server users
    /// --help`).
    #[command(subcommand)]
    command: Option<chat::ops::cli::Command>,

    /// Read settings from this TOML file: keys are the long flag names (`listen =
    /// "0.0.0.0:8889"`, `login-timeout = 30`); flags on the command line override it.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (off by default; keep it on
    /// a private address: it has no authentication).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,

    /// Address and port to listen on for plain connections (port 0 picks a free port;
    /// the log says which), or `off` for none (TLS only).
    #[arg(long, default_value = "0.0.0.0:8889", value_name = "ADDR")]
    listen: String,

    /// Address and port to listen on for TLS connections (the same protocol inside
    /// TLS 1.2 or 1.3); needs --tls-cert and --tls-key.
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key"])]
    tls_listen: Option<String>,

    /// The TLS certificate: a PEM file, the server's certificate first, then any
    /// intermediate certificates (a Let's Encrypt `fullchain.pem`). Read again on
    /// SIGHUP, with the key. Used by --tls-listen and --web-tls-listen.
    #[arg(long, value_name = "PEM", requires = "tls_listeners")]
    tls_cert: Option<PathBuf>,

    /// The TLS certificate's private key: a PEM file, PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    #[arg(long, value_name = "PEM", requires = "tls_listeners")]
    tls_key: Option<PathBuf>,

    /// Directory for the data file (chat.redb) and the admin socket; created if
    /// missing.
    #[arg(long, default_value = "./chat-data", value_name = "DIR", global = true)]
    data: PathBuf,

    /// Memory for the data file's pages (MiB): what is read often stays in memory up
    /// to this much. Not used with --redis.
    #[arg(long, default_value_t = chat::store::embedded::DEFAULT_CACHE_MIB as u32,
          value_name = "MIB", value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    store_cache_mib: u32,

    /// Keep users and offline messages in Redis instead of the data directory, e.g.
    /// redis://127.0.0.1:6379/0 (the seed's schema: hash `users`);
    /// redis://:PASSWORD@HOST:PORT/DB with a password, rediss://... over TLS.
    #[arg(long, value_name = "URL", global = true)]
    redis: Option<String>,

    /// Timeout for each Redis call (and for connecting), in milliseconds.
    #[arg(long, default_value_t = 3000, value_name = "MS", global = true)]
    redis_timeout_ms: u64,

    /// With --redis, this server's name among the nodes sharing that Redis (every
    /// server on the same Redis database is a node of one chat). Default: unique to
    /// this process; give one to keep it across restarts, so that a restarted node
    /// cleans up at once what it left behind.
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,

    /// With --redis, seconds a node may stay silent before the others take it for
    /// dead and show its users offline.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    node_timeout: u64,

    /// Threads hashing passwords (logins and registrations); one more thread runs the
    /// storage jobs (offline messages), so a login storm never holds those up, and one
    /// the history's.
    #[arg(long, default_value_t = ServerConfig::default().workers, value_name = "N")]
    workers: usize,

    /// Log level: off, error, warn, info, debug or trace.
    #[arg(
        long,
        default_value = "info",
        value_name = "LEVEL",
        value_parser = chat::ops::logging::parse_level
    )]
    log_level: chat::ops::logging::LevelFilter,

    /// Append the log to this file instead of writing it to stderr.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,

    /// Largest frame body accepted from a logged-in client, in bytes.
    #[arg(long, default_value_t = HubConfig::default().max_frame, value_name = "BYTES")]
    max_frame: usize,

    /// Largest frame body accepted before login, in bytes.
    #[arg(long, default_value_t = HubConfig::default().prelogin_max_frame, value_name = "BYTES")]
    max_prelogin_frame: usize,

    /// Output queued for one client before it is dropped as a slow consumer, in bytes.
    #[arg(long, default_value_t = HubConfig::default().max_outbuf, value_name = "BYTES")]
    max_outbuf: usize,

    /// Connections held at once; more are refused with an error frame. Default: the
    /// process's descriptor limit less headroom for the store, the log and the workers.
    #[arg(long, value_name = "N")]
    max_conns: Option<usize>,

    /// Store jobs (offline messages, history, account changes) queued at once; over
    /// it, requests are refused as "server busy". Password hashes have their own
    /// bound (--max-hash-jobs), so a storm of logins does not turn these away.
    #[arg(long, default_value_t = HubConfig::default().max_jobs, value_name = "N")]
    max_jobs: usize,

    /// Logins and registrations waiting for a password hash at once; over it, or when
    /// the estimated wait is longer than the job timeout, they are refused as "server
    /// busy" with a time to try again.
    #[arg(long, default_value_t = HubConfig::default().max_hash_jobs, value_name = "N")]
    max_hash_jobs: usize,

    /// Scheduling of the password-hashing threads against the event loop: idle
    /// (SCHED_IDLE: hashing only gets CPU the event loop leaves, so logins never delay
    /// messages; while traffic keeps the loop's core fully busy, logins slow down and
    /// are refused as busy), low (nice 10: logins always progress, but a login storm
    /// delays messages on a shared core) or normal.
    #[arg(long, value_enum, default_value = "idle", value_name = "PRIORITY")]
    worker_priority: WorkerPriority,

    /// Longest time output waits while input keeps coming, in microseconds. Output
    /// is written as soon as the loop finds nothing more to read, so a quiet server
    /// answers at once; while it is busy, at least this often, so the messages of a
    /// busy stretch go to each recipient in one write. 0 writes after every turn.
    /// While logins wait for a password hash, a round of writes that took 1 ms or more
    /// (thousands of recipients) is followed by a pause as long, at most 50 ms, so the
    /// idle-priority hashing gets CPU.
    #[arg(long, default_value_t = ServerConfig::default().flush_interval.as_micros() as u64, value_name = "US")]
    flush_interval_us: u64,

    /// Presence notices (who came online, who left) are gathered for this many
    /// milliseconds and sent to everyone together, or at once before any message from
    /// one user to another. A login storm then costs one round of writes per interval
    /// instead of one per login. With many online the interval grows: to 20 times what
    /// a round of writes to everyone has cost lately (at most 2 s), and at least 1 ms
    /// per 20 users, so that those rounds take about a twentieth of the loop's time. 0:
    /// sent at the end of each loop turn.
    #[arg(long, default_value_t = HubConfig::default().presence_interval_ms, value_name = "MS")]
    presence_interval_ms: u64,

    /// Seconds a store job (a login, a registration, a stored message) may wait for a
    /// free worker before it is refused as "server busy". A login or registration whose
    /// estimated wait (hashes queued ahead times the measured cost of one) is longer is
    /// refused at once, with the estimate ("try again in N s"). Default: 30 with the
    /// embedded store, 5 with Redis (so an outage is reported within seconds).
    #[arg(long, value_name = "SECS")]
    job_timeout: Option<u64>,

    /// Seconds a connection may stay without logging in.
    #[arg(long, default_value_t = HubConfig::default().login_timeout_ms / 1000, value_name = "SECS")]
    login_timeout: u64,

    /// Failed logins allowed on one connection before it is closed.
    #[arg(long, default_value_t = HubConfig::default().max_login_failures, value_name = "N")]
    max_login_failures: u32,

    /// Frames per second one connection may send (bursts of the same size). A client
    /// that sends faster is slowed, not refused: its frames wait their turn (the
    /// server stops reading it meanwhile) and all arrive, in order, later. One whose
    /// frames have waited without a break for 10 s is told (code 429) and closed.
    /// 0: no limit.
    #[arg(long, default_value_t = HubConfig::default().msg_rate, value_name = "N")]
    msg_rate: u32,

    /// Failed logins (wrong password, unknown user) per minute from one client
    /// address (an IPv6 /64 counts as one address), bursts of the same size; once
    /// spent, logins from that address are refused with code 429 until it refills.
    /// Logins that succeed do not count, so a classroom behind one address logs in
    /// freely while password guessing stays slow. 0: no limit.
    #[arg(long, default_value_t = HubConfig::default().login_rate, value_name = "N")]
    login_rate: u32,

    /// Whether clients may register themselves (`RegisterMes`): `open`, or `closed`,
    /// when only `chat-server users add` creates accounts (a registration is then
    /// answered 403 with a sentence).
    #[arg(long, value_enum, default_value = "open", value_name = "open|closed")]
    registration: Registration,

    /// Registrations per minute from one client address (bursts of the same size);
    /// over it, refused with code 429. The default lets a class of 100 behind one
    /// router register within a minute; each costs a password hash. 0: no limit.
    #[arg(long, default_value_t = HubConfig::default().register_rate, value_name = "N")]
    register_rate: u32,

    /// Connections held at once from one client address (an IPv6 /64 counts as one),
    /// and never more than a quarter of --max-conns; more are refused with code 503,
    /// so one address cannot fill the server. The default leaves a class of 100
    /// behind one router room for two connections each (terminal and browser). 0: no
    /// limit (for instance behind a proxy that connects from one address).
    #[arg(long, default_value_t = HubConfig::default().max_conns_per_addr, value_name = "N")]
    max_conns_per_addr: usize,

    /// Also serve the chat to browsers on this address: plain HTTP/1.1, the page at
    /// `/` and its WebSocket at `/ws` (off by default).
    #[arg(long, value_name = "ADDR")]
    web_listen: Option<String>,

    /// Also serve the chat to browsers over HTTPS on this address: the same page and
    /// WebSocket inside TLS (`https://`, `wss://`), with --tls-cert and --tls-key
    /// (off by default).
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key"])]
    web_tls_listen: Option<String>,

    /// An origin (`https://host[:port]`) whose pages may open the chat's WebSocket,
    /// besides the page served by --web-listen or --web-tls-listen itself; repeat it or separate with
    /// commas. Any other origin is refused (cross-site WebSocket hijacking).
    #[arg(long, value_name = "ORIGIN", value_delimiter = ',')]
    web_origin: Vec<String>,

    /// argon2id memory cost in KiB for new password hashes. The default with 5 passes
    /// is one of OWASP's equally strong settings (another: 19456 KiB, 2 passes), the
    /// quickest of them here; each hashing thread holds this much while it works.
    #[arg(long, default_value_t = HashParams::default().memory_kib, value_name = "KIB", global = true)]
    argon2_memory_kib: u32,

    /// Messages kept for the history clients ask for (`HistoryMes`): the last N of
    /// the group, and the last N between each two users; 0 keeps none. Written in the
    /// background: a storage outage costs history, never a live message.
    #[arg(long, default_value_t = HubConfig::default().history, value_name = "N")]
    history: usize,

    /// History entries wait at most this long before they go to the store together,
    /// one commit for all of them (sooner when a page is asked for, or 4,096 or 256 KiB wait); 0:
    /// a commit per loop turn. A crash loses at most this much history.
    #[arg(long, default_value_t = HubConfig::default().history_gather_ms, value_name = "MS")]
    history_gather_ms: u64,

    /// History pages being read at once, over all users, in a queue of their own:
    /// more are refused as busy (503). No other request waits for history; each page
    /// in flight holds at most 1 MiB.
    #[arg(long, default_value_t = HubConfig::default().history_reads, value_name = "N")]
    history_reads: usize,

    /// History pages one user may ask for per minute (bursts of the same size); over
    /// it, refused with code 429. 0: no limit.
    #[arg(long, default_value_t = HubConfig::default().history_rate, value_name = "N")]
    history_rate: u32,

    /// argon2id passes (time cost) for new password hashes.
    #[arg(long, default_value_t = HashParams::default().passes, value_name = "N", global = true)]
    argon2_passes: u32,
}

/// `--registration`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Registration {
    Open,
    Closed,
}

fn main() -> ExitCode {
    let argv = match chat::ops::config::expand(std::env::args_os().collect(), &Args::command()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chat-server: {e}");
            return ExitCode::from(2);
        }
    };
    let mut args = match Args::try_parse_from(&argv) {
        Ok(a) => a,
        Err(e) => {
            // A bad value from the config file: name the file and the key.
            if let Some(why) = chat::ops::config::blame(&e, &argv, &Args::command()) {
                eprintln!("chat-server: {why}");
                return ExitCode::from(2);
            }
            e.exit()
        }
    };
    if let Some(cmd) = args.command.take() {
        let target = chat::ops::cli::Target {
            data: args.data.clone(),
            redis: args.redis.clone(),
            redis_timeout: Duration::from_millis(args.redis_timeout_ms.max(1)),
            hash: HashParams {
                memory_kib: args.argon2_memory_kib,
                passes: args.argon2_passes,
            },
        };
        return match chat::ops::cli::run(cmd, &target) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("chat-server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = chat::ops::logging::init(args.log_level, args.log_file.as_deref()) {
        eprintln!("chat-server: {e}");
        return ExitCode::FAILURE;
    }
    let code = match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    };
    log::logger().flush();
    code
}

/// Why the server did not start, or its loop failed; logged as the last line.
#[derive(Debug)]
enum StartError {
    CreateDataDir(PathBuf, io::Error),
    Store(StoreError),
    /// `--node-id` with spaces, or empty.
    NodeId(String),
    Hash(HashError),
    /// A listen address that resolves to nothing.
    NotAnAddress(String),
    Listen(String, io::Error),
    /// The certificate or key.
    Tls(chat::transport::tls::TlsError),
    TlsNeedsCertAndKey,
    /// `--web-origin`.
    Web(chat::transport::web::BadOrigin),
    WebOriginAlone,
    NothingToListenOn,
    Start(io::Error),
    /// Adding a listener: which one, and why not.
    AddListener(&'static str, io::Error),
    MetricsListen(String, io::Error),
    MetricsStart(io::Error),
    EventLoop(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use StartError as E;
        match self {
            E::CreateDataDir(dir, e) => {
                write!(f, "cannot create data directory {}: {e}", dir.display())
            }
            E::Store(e) => e.fmt(f),
            E::NodeId(id) => write!(f, "--node-id {id:?}: give a name without spaces"),
            E::Hash(e) => e.fmt(f),
            E::NotAnAddress(a) => write!(f, "cannot listen on {a}: not an address"),
            E::Listen(a, e) => write!(f, "cannot listen on {a}: {e}"),
            E::Tls(e) => write!(f, "TLS: {e}"),
            E::TlsNeedsCertAndKey => f.write_str("TLS needs --tls-cert and --tls-key"),
            E::Web(e) => e.fmt(f),
            E::WebOriginAlone => f.write_str("--web-origin needs --web-listen or --web-tls-listen"),
            E::NothingToListenOn => {
                f.write_str("--listen off with no other listener: nothing to listen on")
            }
            E::Start(e) => write!(f, "cannot start: {e}"),
            E::AddListener(which, e) => write!(f, "cannot start the {which} listener: {e}"),
            E::MetricsListen(a, e) => write!(f, "cannot listen for metrics on {a}: {e}"),
            E::MetricsStart(e) => write!(f, "cannot start the metrics listener: {e}"),
            E::EventLoop(e) => write!(f, "event loop failed: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<StoreError> for StartError {
    fn from(e: StoreError) -> StartError {
        StartError::Store(e)
    }
}

fn embedded_store(dir: &std::path::Path, cache_mib: usize) -> Result<StoreFactory, StartError> {
    chat::sys::create_private_dir_all(dir)
        .map_err(|e| StartError::CreateDataDir(dir.to_path_buf(), e))?;
    let store = EmbeddedStore::open_with_cache(dir, cache_mib.saturating_mul(1 << 20))?;
    log::info!(
        "data in {}",
        dir.join(chat::store::embedded::FILE_NAME).display()
    );
    Ok(Arc::new(move || {
        Ok(Box::new(store.clone()) as Box<dyn Store>)
    }))
}

fn redis_store(url: &str, timeout_ms: u64) -> Result<StoreFactory, StartError> {
    let timeout = Duration::from_millis(timeout_ms.max(1));
    let t = RedisTimeouts {
        connect: timeout,
        io: timeout,
        ..RedisTimeouts::default()
    };
    // Refused credentials stop the start: nothing would work.
    chat::cluster::redis::check_credentials(&chat::redact::SecretUrl::new(url), timeout)
        .map_err(|why| StartError::Start(io::Error::other(why)))?;
    let mut probe = RedisStore::new(url, t)?;
    // Redis being down at startup is not fatal: the workers keep trying, and requests
    // that need storage get a clear error meanwhile.
    match probe.ping() {
        Ok(()) => log::info!("data in Redis at {}", chat::redact::url(url)),
        Err(e) => log::warn!("{e}; starting anyway, storage requests fail until it is back"),
    }
    let url = url.to_string();
    Ok(Arc::new(move || {
        RedisStore::new(&url, t).map(|s| Box::new(s) as Box<dyn Store>)
    }))
}

/// A node name unique to this process: host, process id and start time.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "node".into());
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    format!("{host}-{}-{:x}", std::process::id(), t & 0xff_ffff)
}

fn resolve(a: &str) -> Result<std::net::SocketAddr, StartError> {
    std::net::ToSocketAddrs::to_socket_addrs(a)
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| StartError::NotAnAddress(a.to_string()))
}

fn run(args: Args) -> Result<(), StartError> {
    chat::sys::raise_fd_limit();
    let factory = match &args.redis {
        Some(url) => redis_store(url, args.redis_timeout_ms)?,
        None => embedded_store(&args.data, args.store_cache_mib as usize)?,
    };

    let cfg = ServerConfig {
        hub: hub_config(&args),
        workers: args.workers.max(1),
        hash: HashParams {
            memory_kib: args.argon2_memory_kib,
            passes: args.argon2_passes,
        },
        handle_signals: true,
        flush_interval: Duration::from_micros(args.flush_interval_us),
        worker_priority: args.worker_priority,
        cluster: args.redis.as_ref().map(|url| ClusterConfig {
            url: chat::redact::SecretUrl::new(url.clone()),
            node: args.node_id.clone().unwrap_or_else(default_node_id),
            node_timeout: Duration::from_secs(args.node_timeout.max(1)),
            io_timeout: Duration::from_millis(args.redis_timeout_ms.max(1)),
        }),
        ..ServerConfig::default()
    };
    if let Some(id) = &args.node_id
        && (id.is_empty() || id.contains(char::is_whitespace))
    {
        return Err(StartError::NodeId(id.clone()));
    }
    chat::job::auth::Hasher::new(cfg.hash).map_err(StartError::Hash)?;
    let plain = if args.listen == "off" {
        None
    } else {
        Some(bind(&args.listen)?)
    };
    // The certificate is read before anything starts: a wrong path fails at once.
    let tls_wrapper = || match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            chat::transport::tls::TlsWrapper::new(cert, key).map_err(StartError::Tls)
        }
        _ => Err(StartError::TlsNeedsCertAndKey),
    };
    let tls = match &args.tls_listen {
        Some(addr) => Some((bind(addr)?, tls_wrapper()?)),
        None => None,
    };
    let (web, web_tls) = if args.web_listen.is_some() || args.web_tls_listen.is_some() {
        let wrapper = chat::transport::web::WebWrapper::new(&chat::transport::web::WebConfig {
            max_frame: cfg.hub.max_frame,
            origins: args.web_origin.clone(),
        })
        .map_err(StartError::Web)?;
        let web_tls = match &args.web_tls_listen {
            Some(a) => Some((bind(a)?, wrapper.https(tls_wrapper()?))),
            None => None,
        };
        let web = match &args.web_listen {
            Some(a) => Some((bind(a)?, wrapper)),
            None => None,
        };
        (web, web_tls)
    } else if !args.web_origin.is_empty() {
        return Err(StartError::WebOriginAlone);
    } else {
        (None, None)
    };
    if plain.is_none() && tls.is_none() && web.is_none() && web_tls.is_none() {
        return Err(StartError::NothingToListenOn);
    }
    let mut server = Server::with_listener(plain, &factory, cfg).map_err(StartError::Start)?;
    if let Some((listener, wrapper)) = tls {
        server
            .add_listener(listener, Box::new(wrapper))
            .map_err(|e| StartError::AddListener("TLS", e))?;
    }
    if let Some((l, wrapper)) = web {
        server
            .add_listener(l, Box::new(wrapper))
            .map_err(|e| StartError::AddListener("web", e))?;
    }
    if let Some((l, wrapper)) = web_tls {
        server
            .add_listener(l, Box::new(wrapper))
            .map_err(|e| StartError::AddListener("HTTPS", e))?;
    }
    // Operators' threads, stopped (and the admin socket removed) when these drop.
    let _admin = match &args.redis {
        // Without it the chat still runs; only the operators' commands wait for a stop.
        None => chat::ops::admin_socket::AdminSocket::start(
            &args.data,
            &factory,
            server.control_handle(),
        )
        .map_err(|e| {
            log::warn!(
                "no admin socket in {}: {e}; `chat-server users` and `backup` work only \
                     while the server is stopped",
                args.data.display()
            )
        })
        .ok(),
        // With Redis, `chat-server users --redis URL` goes through Redis itself.
        Some(_) => None,
    };
    let _metrics = match &args.metrics_listen {
        Some(a) => {
            let l = std::net::TcpListener::bind(a)
                .map_err(|e| StartError::MetricsListen(a.clone(), e))?;
            Some(
                chat::ops::metrics_http::MetricsServer::start(l, server.control_handle())
                    .map_err(StartError::MetricsStart)?,
            )
        }
        None => None,
    };
    let started = restart_only(&args);
    let mut level = args.log_level;
    server.on_reload(Box::new(move |_| {
        let new = read_config_again()?;
        for (key, value) in restart_only(&new) {
            let was = started.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
            if was != Some(&value) {
                // Values are not shown: a URL may hold a password.
                log::warn!(
                    "configuration read again: `{key}` changed; it takes effect at the \
                     next restart"
                );
            }
        }
        if new.log_level != level {
            log::info!(
                "configuration read again: log-level: {level} -> {}",
                new.log_level
            );
            chat::ops::logging::set_level(new.log_level);
            level = new.log_level;
        }
        Some(hub_config(&new))
    }));
    server.run().map_err(StartError::EventLoop)
}

/// The hub's settings from the command line (and the config file).
fn hub_config(args: &Args) -> HubConfig {
    HubConfig {
        max_frame: args.max_frame,
        prelogin_max_frame: args.max_prelogin_frame.min(args.max_frame),
        max_outbuf: args.max_outbuf,
        max_jobs: args.max_jobs.max(1),
        max_hash_jobs: args.max_hash_jobs.max(1),
        login_timeout_ms: args.login_timeout.saturating_mul(1000),
        max_login_failures: args.max_login_failures.max(1),
        msg_rate: args.msg_rate,
        login_rate: args.login_rate,
        register_rate: args.register_rate,
        registration_open: args.registration == Registration::Open,
        max_conns: args.max_conns.unwrap_or(0),
        max_conns_per_addr: args.max_conns_per_addr,
        history: args.history,
        history_gather_ms: args.history_gather_ms,
        history_reads: args.history_reads.max(1),
        history_rate: args.history_rate,
        presence_interval_ms: args.presence_interval_ms,
        job_timeout_ms: args
            .job_timeout
            .unwrap_or_else(|| default_job_timeout_secs(args.redis.is_some()))
            .max(1)
            * 1000,
        ..HubConfig::default()
    }
}

/// The settings a running server does not take on SIGHUP, each with its value as
/// text (for comparing, never for the log).
fn restart_only(a: &Args) -> Vec<(&'static str, String)> {
    macro_rules! fields {
        ($($f:ident => $k:literal),* $(,)?) => {
            vec![$(($k, format!("{:?}", a.$f))),*]
        };
    }
    fields!(
        listen => "listen", tls_listen => "tls-listen", web_listen => "web-listen",
        web_tls_listen => "web-tls-listen", web_origin => "web-origin",
        metrics_listen => "metrics-listen", data => "data", redis => "redis",
        redis_timeout_ms => "redis-timeout-ms", node_id => "node-id",
        node_timeout => "node-timeout", store_cache_mib => "store-cache-mib",
        workers => "workers", worker_priority => "worker-priority",
        log_file => "log-file", history => "history",
        history_gather_ms => "history-gather-ms", history_reads => "history-reads",
        max_frame => "max-frame",
        max_prelogin_frame => "max-prelogin-frame", max_jobs => "max-jobs",
        max_hash_jobs => "max-hash-jobs", job_timeout => "job-timeout",
        presence_interval_ms => "presence-interval-ms",
        flush_interval_us => "flush-interval-us",
        argon2_memory_kib => "argon2-memory-kib", argon2_passes => "argon2-passes",
    )
}

/// The command line and the config file read again (SIGHUP); `None`, with the reason
/// in the log, if they no longer parse.
fn read_config_again() -> Option<Args> {
    let argv = match chat::ops::config::expand(std::env::args_os().collect(), &Args::command()) {
        Ok(a) => a,
        Err(e) => {
            log::error!("configuration not read again: {e}; the settings in force stay");
            return None;
        }
    };
    match Args::try_parse_from(&argv) {
        Ok(a) => Some(a),
        Err(e) => {
            let why = chat::ops::config::blame(&e, &argv, &Args::command()).unwrap_or_else(|| {
                let text = e.render().to_string();
                text.lines().next().unwrap_or_default().to_string()
            });
            log::error!(
                "configuration not read again: {}; the settings in force stay",
                chat::redact::text(&why)
            );
            None
        }
    }
}

/// A listening socket on `addr` (a host name is resolved; its first address is used).
fn bind(addr: &str) -> Result<std::net::TcpListener, StartError> {
    chat::sys::listen(resolve(addr)?).map_err(|e| StartError::Listen(addr.to_string(), e))
}
