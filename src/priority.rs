//! How a worker thread is scheduled against the event loop: one enum for the
//! command line (`--worker-priority`), the server's configuration, the worker pool and
//! the OS call that applies it (`sys::set_thread_priority`).
#![forbid(unsafe_code)]

/// How the hashing threads are scheduled against the event loop (the storage thread
/// always runs like the loop: its jobs are short).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerPriority {
    /// Like the loop.
    Normal,
    /// nice 10: on a shared core the loop gets most of the CPU and hashing a
    /// guaranteed share, so logins never stall, but a storm of them delays messages.
    Low,
    /// SCHED_IDLE: hashing runs only on CPU the loop leaves, and gives it up the moment
    /// the loop wakes, so a storm of logins does not delay messages. While traffic
    /// keeps the loop's core fully busy, logins slow down; they are then refused as
    /// busy (with a time to try again) rather than queued. The default.
    Idle,
}

/// `--worker-priority normal|low|idle`. Written out rather than derived: the derive
/// would turn the doc comments above into the values' help text.
#[cfg(feature = "server")]
impl clap::ValueEnum for WorkerPriority {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            WorkerPriority::Normal,
            WorkerPriority::Low,
            WorkerPriority::Idle,
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            WorkerPriority::Normal => "normal",
            WorkerPriority::Low => "low",
            WorkerPriority::Idle => "idle",
        }))
    }
}
