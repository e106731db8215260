//! The hub's limits and timings ([`HubConfig`]), which the server's command line sets.
#![forbid(unsafe_code)]

use crate::proto;

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
    /// Connections held at once from one address (an IPv6 /64 counts as one), and at
    /// most a share of `max_conns` ([`HubConfig::conns_per_addr`]); more are refused
    /// with `ErrorResMes` 503. 0: no limit.
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
    /// Frames per second per connection (burst the same); over it, a frame waits for
    /// its turn, and the connection is not read meanwhile. 0: no limit.
    pub msg_rate: u32,
    /// A connection whose frames have waited for `msg_rate` without a break for this
    /// long is told (`ErrorResMes` 429) and closed.
    pub flood_limit_ms: u64,
    /// Failed logins (wrong password, unknown user) per minute per client address
    /// (burst the same); with none left, logins from the address get `ErrorResMes`
    /// 429. Logins that succeed do not count. 0: no limit.
    pub login_rate: u32,
    /// Whether clients may register (`RegisterMes`); closed, only the operators'
    /// `users add` creates accounts.
    pub registration_open: bool,
    /// Registrations (each costs a password hash) per minute per client address
    /// (burst the same); over it, `ErrorResMes` 429. 0: no limit.
    pub register_rate: u32,
    /// How often refusals and storage errors are summed up in the log.
    pub summary_interval_ms: u64,
    /// Messages kept per conversation (the group's, each pair's) for `HistoryMes`
    /// (`--history`); 0: no history.
    pub history: usize,
    /// History entries wait at most this long after the first of them before they
    /// go to the store together, as one commit (sooner when a page is asked for, or
    /// when [`GATHER_ENTRIES`](crate::hub::history::GATHER_ENTRIES) or
    /// [`GATHER_CONTENT_BYTES`](crate::hub::history::GATHER_CONTENT_BYTES) wait). 0: at the end of each turn.
    pub history_gather_ms: u64,
    /// History pages (`HistoryMes`) being read or waiting for a worker at once, over
    /// all connections, in a queue of their own: past it a page is refused as busy
    /// (503), and no other request ever waits for history (`--history-reads`).
    pub history_reads: usize,
    /// History pages one user may ask for per minute (bursts of the same size); over
    /// it, `ErrorResMes` 429 (`--history-rate`). 0: no limit.
    pub history_rate: u32,
    /// Presence notices (who came online, who left) are sent together at most this
    /// long after the first of them, or at once before any message from one user to
    /// another (see [`crate::hub::presence`]). 0: at the end of each turn.
    pub presence_interval_ms: u64,
}

impl HubConfig {
    /// Takes from `new` the settings that apply without a restart (rates, per-address
    /// and connection limits, the login timeout and failures, output limit,
    /// registration); returns one line per change, named as the flag is.
    pub fn reload(&mut self, new: &HubConfig) -> Vec<String> {
        let mut changed = Vec::new();
        macro_rules! take {
            ($($field:ident => $flag:literal),* $(,)?) => {$(
                if self.$field != new.$field {
                    changed.push(format!("{}: {:?} -> {:?}", $flag, self.$field, new.$field));
                    self.$field = new.$field;
                }
            )*};
        }
        take!(
            msg_rate => "msg-rate",
            login_rate => "login-rate",
            register_rate => "register-rate",
            history_rate => "history-rate",
            max_conns_per_addr => "max-conns-per-addr",
            login_timeout_ms => "login-timeout (ms)",
            max_login_failures => "max-login-failures",
            max_outbuf => "max-outbuf",
            registration_open => "registration open",
        );
        // 0 ("from the descriptor limit") was worked out at start: kept.
        if new.max_conns != 0 && new.max_conns != self.max_conns {
            changed.push(format!(
                "max-conns: {} -> {}",
                self.max_conns, new.max_conns
            ));
            self.max_conns = new.max_conns;
        }
        changed
    }
}

/// The share of `max_conns` (a divisor) that one address may hold at most...
pub const ADDR_SHARE: usize = 4;
/// ...unless that share is smaller than this (a server with few connections).
pub const ADDR_SHARE_FLOOR: usize = 64;

impl HubConfig {
    /// Connections one address may hold at once (0: no limit): `max_conns_per_addr`,
    /// and never more than a quarter of `max_conns` (or [`ADDR_SHARE_FLOOR`], if
    /// more), so that one address (a classroom behind one router, or an attacker)
    /// leaves room for everyone else.
    pub fn conns_per_addr(&self) -> usize {
        match (self.max_conns_per_addr, self.max_conns) {
            (0, _) => 0,
            (n, 0) => n,
            (n, max) => n.min((max / ADDR_SHARE).max(ADDR_SHARE_FLOOR)),
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_frame: proto::DEFAULT_MAX_FRAME,
            prelogin_max_frame: 8 * 1024,
            max_outbuf: 1024 * 1024,
            max_conns: 0,
            max_conns_per_addr: 256,
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
            flood_limit_ms: crate::rate::FLOOD_LIMIT_MS,
            login_rate: 30,
            registration_open: true,
            register_rate: 150,
            summary_interval_ms: 10_000,
            history: 1000,
            history_gather_ms: 100,
            history_reads: 16,
            history_rate: 30,
            presence_interval_ms: 50,
        }
    }
}
