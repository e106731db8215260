//! What the server counts, and its Prometheus text exposition (`--metrics-listen`).
//!
//! The hub keeps its counters in plain fields ([`Stats`], single-threaded, no atomics
//! on the hot path). When a scrape comes, the metrics thread asks the event loop for a
//! [`Snapshot`] over a channel (waking it like a worker result), the loop copies the
//! numbers in one turn, and the thread renders the text ([`render`]) off the loop.
#![forbid(unsafe_code)]

use std::fmt::Write;
use std::time::Duration;

use crate::proto::ClientMessage;

/// Counters for the log, the benchmark and the metrics (`metrics`): plain fields,
/// bumped on the loop's thread, copied out when a scrape asks.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub accepted: u64,
    pub closed: u64,
    pub frames_in: u64,
    pub group_messages: u64,
    pub deliveries: u64,
    pub slow_consumers_dropped: u64,
    /// History entries appended after delivery, and lost (storage failed or too slow).
    /// Private messages stored for later join the history with the message itself and
    /// are not counted.
    pub history_appended: u64,
    pub history_lost: u64,
    /// Frames received by type ([`FRAME_TYPES`]).
    pub frames_by_type: [u64; FRAME_TYPES.len()],
    /// Logins and registrations answered, by outcome ([`LOGIN_OUTCOMES`],
    /// [`REGISTER_OUTCOMES`]).
    pub logins: [u64; LOGIN_OUTCOMES.len()],
    pub registrations: [u64; REGISTER_OUTCOMES.len()],
    pub private_messages: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Refusals with code 429 (too many) and 413 (frame too large).
    pub refused_too_many: u64,
    pub refused_too_large: u64,
    pub store_errors: u64,
    /// Sessions closed by an operator (ban, removal).
    pub kicked: u64,
    /// From a hashing job queued to its result.
    pub hash_latency: Histogram,
    /// How long workers ran jobs, by lane ([`LANES`]).
    pub job_seconds: [Histogram; LANES.len()],
}

/// Upper bounds of the histograms' buckets, in seconds (plus +Inf).
pub const BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];

/// A histogram of durations with the fixed [`BUCKETS`]: counts per bucket (not
/// cumulative; the exposition sums them), their sum and count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += s;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Declares the labels of a labelled series as an enum, its variants in the order of
/// the labels (the label array is the exposition's order), and lets the series' array
/// be indexed by the enum, so that no count is picked by a bare number.
macro_rules! series {
    (
        $(#[$meta:meta])*
        $name:ident, $labels:ident, $n:literal,
        [$($(#[$vmeta:meta])* $var:ident => $label:literal),+ $(,)?]
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $var),+
        }

        #[doc = concat!("The labels of [`", stringify!($name), "`], in the order of its variants.")]
        pub const $labels: [&str; $n] = [$($label),+];

        impl $name {
            /// The label a scrape shows.
            pub fn label(self) -> &'static str {
                $labels[self as usize]
            }
        }

        impl<T> std::ops::Index<$name> for [T; $n] {
            type Output = T;
            #[inline]
            fn index(&self, k: $name) -> &T {
                &self[k as usize]
            }
        }

        impl<T> std::ops::IndexMut<$name> for [T; $n] {
            #[inline]
            fn index_mut(&mut self, k: $name) -> &mut T {
                &mut self[k as usize]
            }
        }
    };
}

series!(
    /// The type of a frame received, the series of [`Stats::frames_by_type`].
    FrameType, FRAME_TYPES, 11,
    [
        Login => "LoginMes",
        Register => "RegisterMes",
        Sms => "SmsMes",
        Private => "SmsPrivateMes",
        OnlineUsers => "OnlineUsersMes",
        Logout => "LogoutMes",
        Ping => "PingMes",
        OfflineAck => "OfflineAckMes",
        History => "HistoryMes",
        /// A message of a type the server reads but does not count by name.
        Other => "other",
        /// A frame that did not parse.
        Unreadable => "unreadable",
    ]
);

impl FrameType {
    /// The type of a received frame.
    pub fn of<E>(msg: &Result<ClientMessage, E>) -> FrameType {
        match msg {
            Ok(ClientMessage::Login(_)) => FrameType::Login,
            Ok(ClientMessage::Register(_)) => FrameType::Register,
            Ok(ClientMessage::Sms(_)) => FrameType::Sms,
            Ok(ClientMessage::Private(_)) => FrameType::Private,
            Ok(ClientMessage::OnlineUsers) => FrameType::OnlineUsers,
            Ok(ClientMessage::Logout) => FrameType::Logout,
            Ok(ClientMessage::Ping) => FrameType::Ping,
            Ok(ClientMessage::OfflineAck(_)) => FrameType::OfflineAck,
            Ok(ClientMessage::History(_)) => FrameType::History,
            #[allow(unreachable_patterns)]
            Ok(_) => FrameType::Other,
            Err(_) => FrameType::Unreadable,
        }
    }
}

series!(
    /// How a login was answered, the series of [`Stats::logins`].
    LoginOutcome, LOGIN_OUTCOMES, 6,
    [
        Ok => "ok",
        NoSuchUser => "no_such_user",
        WrongPassword => "wrong_password",
        Banned => "banned",
        /// Refused as busy: the hash would wait too long.
        Busy => "busy",
        Error => "error",
    ]
);

series!(
    /// How a registration was answered, the series of [`Stats::registrations`].
    RegisterOutcome, REGISTER_OUTCOMES, 4,
    [
        Ok => "ok",
        /// The id is taken, or a field breaks the rules.
        Refused => "refused",
        Busy => "busy",
        Error => "error",
    ]
);

series!(
    /// A lane of the worker pool, the series of [`Stats::job_seconds`].
    Lane, LANES, 2,
    [
        /// Password hashes: logins and registrations.
        Hash => "hash",
        /// Every other store job.
        Store => "store",
    ]
);

/// Everything a scrape shows, copied by the event loop in one turn.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub stats: Stats,
    pub connections: usize,
    /// Users logged in on this server.
    pub online_here: usize,
    /// Users logged in on any node (this one alone without a cluster).
    pub online_all: usize,
    pub jobs_in_flight: usize,
    /// Bytes queued for clients and not written yet, and in how many queues.
    pub output_queued_bytes: usize,
    pub output_queues: usize,
    /// Logins and registrations waiting for a password hash, and the estimated wait
    /// of the next one, in ms.
    pub hashing_queued: usize,
    pub hashing_wait_ms: u64,
    /// Whether the link to Redis is up (`None`: not a node of a cluster).
    pub cluster_link_up: Option<bool>,
    /// The event loop's own: turns, and how long each took (from the end of its wait
    /// to the next wait).
    pub loop_turns: u64,
    pub loop_seconds: Histogram,
    pub uptime: Duration,
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP chat_{name} {help}");
        let _ = writeln!(self.0, "# TYPE chat_{name} {kind}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.head(name, kind, help);
        let _ = writeln!(self.0, "chat_{name} {v}");
    }

    fn labelled(&mut self, name: &str, help: &str, label: &str, vals: &[(&str, u64)]) {
        self.head(name, "counter", help);
        for (l, v) in vals {
            let _ = writeln!(self.0, "chat_{name}{{{label}=\"{l}\"}} {v}");
        }
    }

    fn histogram(&mut self, name: &str, help: &str, series: &[(Option<(&str, &str)>, &Histogram)]) {
        self.head(name, "histogram", help);
        for (label, h) in series {
            let (pre, sep) = match label {
                Some((k, v)) => (format!("{k}=\"{v}\""), ","),
                None => (String::new(), ""),
            };
            let mut acc = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                acc += h.counts[i];
                let _ = writeln!(self.0, "chat_{name}_bucket{{{pre}{sep}le=\"{b}\"}} {acc}");
            }
            acc += h.counts[BUCKETS.len()];
            let _ = writeln!(self.0, "chat_{name}_bucket{{{pre}{sep}le=\"+Inf\"}} {acc}");
            let braces = if pre.is_empty() {
                String::new()
            } else {
                format!("{{{pre}}}")
            };
            let _ = writeln!(self.0, "chat_{name}_sum{braces} {}", h.sum);
            let _ = writeln!(self.0, "chat_{name}_count{braces} {}", h.count);
        }
    }
}

fn pairs<'a>(labels: &[&'a str], vals: &[u64]) -> Vec<(&'a str, u64)> {
    labels.iter().copied().zip(vals.iter().copied()).collect()
}

/// The Prometheus text exposition (version 0.0.4) of a snapshot.
pub fn render(s: &Snapshot) -> String {
    let st = &s.stats;
    let mut o = Out(String::with_capacity(8 * 1024));
    o.one(
        "connections_open",
        "gauge",
        "Client connections open now.",
        s.connections,
    );
    o.one(
        "users_online",
        "gauge",
        "Users logged in on this server.",
        s.online_here,
    );
    o.one(
        "users_online_cluster",
        "gauge",
        "Users logged in on any node of the cluster (this server alone without one).",
        s.online_all,
    );
    o.one(
        "connections_accepted_total",
        "counter",
        "Client connections accepted.",
        st.accepted,
    );
    o.labelled(
        "logins_total",
        "Logins answered, by outcome.",
        "outcome",
        &pairs(&LOGIN_OUTCOMES, &st.logins),
    );
    o.labelled(
        "registrations_total",
        "Registrations answered, by outcome (refused: id taken or a field breaks the rules).",
        "outcome",
        &pairs(&REGISTER_OUTCOMES, &st.registrations),
    );
    o.labelled(
        "frames_in_total",
        "Frames received, by type.",
        "type",
        &pairs(&FRAME_TYPES, &st.frames_by_type),
    );
    o.one(
        "group_messages_total",
        "counter",
        "Group messages delivered to this server's users (sent here or on another node).",
        st.group_messages,
    );
    o.one(
        "private_messages_total",
        "counter",
        "Private messages sent by this server's users.",
        st.private_messages,
    );
    o.one(
        "deliveries_total",
        "counter",
        "Frames queued for clients (one per recipient).",
        st.deliveries,
    );
    o.one(
        "bytes_in_total",
        "counter",
        "Bytes read from clients.",
        st.bytes_in,
    );
    o.one(
        "bytes_out_total",
        "counter",
        "Bytes written to clients.",
        st.bytes_out,
    );
    o.labelled(
        "refusals_total",
        "Requests refused: 429 too many (messages, logins, failed logins), 413 frame too large.",
        "code",
        &[("429", st.refused_too_many), ("413", st.refused_too_large)],
    );
    o.one(
        "slow_consumers_dropped_total",
        "counter",
        "Clients disconnected for not reading their output.",
        st.slow_consumers_dropped,
    );
    o.labelled(
        "history_entries_total",
        "Messages appended to their conversation's history after delivery (kept), or not \
         (lost: storage failed or too slow; live delivery went on). A private message \
         stored for an offline user joins the history in the same write and is not counted \
         here.",
        "outcome",
        &[("kept", st.history_appended), ("lost", st.history_lost)],
    );
    o.one(
        "sessions_kicked_total",
        "counter",
        "Sessions closed by an operator (ban, removal).",
        st.kicked,
    );
    o.one(
        "hashing_queue",
        "gauge",
        "Logins and registrations waiting for a password hash.",
        s.hashing_queued,
    );
    o.one(
        "hashing_wait_seconds",
        "gauge",
        "Estimated wait of the next login or registration for a password hash.",
        s.hashing_wait_ms as f64 / 1000.0,
    );
    o.histogram(
        "hashing_latency_seconds",
        "From a login or registration queued to its answer from a worker (wait and hash).",
        &[(None, &st.hash_latency)],
    );
    o.one(
        "output_queued_bytes",
        "gauge",
        "Bytes queued for clients and not written yet (shared bytes counted once per queue).",
        s.output_queued_bytes,
    );
    o.one(
        "output_queues_waiting",
        "gauge",
        "Connections with output not written yet.",
        s.output_queues,
    );
    o.one(
        "store_jobs_in_flight",
        "gauge",
        "Store jobs queued or running, password hashes not counted (see hashing_queued).",
        s.jobs_in_flight,
    );
    o.histogram(
        "store_job_seconds",
        "Time a worker took to run a store job, by lane (hash: logins and registrations).",
        &[
            (
                Some(("lane", Lane::Hash.label())),
                &st.job_seconds[Lane::Hash],
            ),
            (
                Some(("lane", Lane::Store.label())),
                &st.job_seconds[Lane::Store],
            ),
        ],
    );
    o.one(
        "store_errors_total",
        "counter",
        "Requests that failed on a storage error.",
        st.store_errors,
    );
    o.one(
        "loop_turns_total",
        "counter",
        "Turns of the event loop.",
        s.loop_turns,
    );
    o.histogram(
        "loop_turn_seconds",
        "Time the event loop worked per turn (between two waits for events).",
        &[(None, &s.loop_seconds)],
    );
    if let Some(up) = s.cluster_link_up {
        o.one(
            "cluster_link_up",
            "gauge",
            "Whether this node's link to Redis (the cluster's channel and presence) is up.",
            u8::from(up),
        );
    }
    o.one(
        "uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        s.uptime.as_secs(),
    );
    o.0
}

/// What the kernel says of this process, for the metrics (Prometheus's standard
/// `process_*` series).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub cpu_seconds: f64,
    /// Unix time the process started, in seconds.
    pub start_time: f64,
    pub open_fds: u64,
    pub max_fds: u64,
}

/// The standard `process_*` series and `chat_build_info`, as Prometheus's client
/// libraries name them: read by the metrics thread itself, not the event loop.
pub fn render_process(p: Option<&ProcessStats>) -> String {
    let mut o = String::with_capacity(1024);
    let mut one = |name: &str, kind: &str, help: &str, v: &dyn std::fmt::Display| {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} {kind}");
        let _ = writeln!(o, "{name} {v}");
    };
    if let Some(p) = p {
        one(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            &p.resident_bytes,
        );
        one(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            &p.virtual_bytes,
        );
        one(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            &p.cpu_seconds,
        );
        one(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            &p.start_time,
        );
        one(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            &p.open_fds,
        );
        one(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            &p.max_fds,
        );
    }
    let _ = writeln!(
        o,
        "# HELP chat_build_info The server's version, as a label."
    );
    let _ = writeln!(o, "# TYPE chat_build_info gauge");
    let _ = writeln!(
        o,
        "chat_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_into_cumulative_buckets() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = Snapshot {
            loop_seconds: h,
            ..Snapshot::default()
        };
        let text = render(&s);
        assert!(
            text.contains("chat_loop_turn_seconds_bucket{le=\"0.00005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("chat_loop_turn_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("chat_loop_turn_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("chat_loop_turn_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("chat_loop_turn_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("chat_loop_turn_seconds_count 3\n"));
        assert!(text.contains("chat_store_job_seconds_count{lane=\"hash\"} 0\n"));
    }

    #[test]
    fn every_sample_line_is_well_formed() {
        let mut s = Snapshot::default();
        s.stats.logins[LoginOutcome::Ok] = 4;
        s.stats.frames_by_type[FrameType::Sms] = 7;
        s.connections = 3;
        let text = render(&s);
        assert!(text.contains("chat_logins_total{outcome=\"ok\"} 4\n"));
        assert!(text.contains("chat_frames_in_total{type=\"SmsMes\"} 7\n"));
        assert!(text.contains("chat_connections_open 3\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect(line);
            assert!(name.starts_with("chat_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        // Each metric is declared once.
        let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let n = types.len();
        types.dedup();
        assert_eq!(types.len(), n);
    }
}
