//! Logging that never blocks the reactor, nor makes it wait for another thread.
//!
//! A log call formats only its message on the calling thread, stamps it with the
//! wall clock, and hands a small record to a bounded channel with `try_send`: no lock
//! is shared with other logging threads, and nothing waits for the sink. A background
//! thread ("chat-log") formats the time and level and writes the lines to stderr or the
//! log file. If the sink cannot keep up and the channel is full, lines are dropped and
//! counted, and the count is written once the log thread has caught up:
//!
//! ```text
//! 2026-12-01T14:07:40.123Z INFO  [chat-reactor] chat::reactor: listening on 127.0.0.1:8889
//! 2026-12-01T14:07:41.002Z WARN  [log] 17 lines dropped: sink too slow
//! ```
//!
//! The time is UTC with milliseconds; the thread name is left out for unnamed threads.

use std::borrow::Cow;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use log::LevelFilter;
use log::{Level, Log, Metadata, Record};

/// Lines the channel holds for the log thread before new ones are dropped.
pub const CHANNEL_CAPACITY: usize = 4096;
/// How long `flush` waits for the lines already handed over.
pub const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// One log line as it crosses to the log thread: everything but the formatting.
struct Line {
    time: SystemTime,
    level: Level,
    target: Cow<'static, str>,
    thread: Option<Arc<str>>,
    message: String,
}

enum Msg {
    Line(Line),
    /// Answered once every message before it is written and the sink flushed.
    Flush(SyncSender<()>),
}

/// What the callers and the log thread share, apart from the channel.
#[derive(Default)]
struct Shared {
    /// Lines refused because the channel was full (or the log thread gone).
    dropped: AtomicU64,
    /// Batches the log thread has finished; `flush` waits on it for room in the channel.
    batches: Mutex<u64>,
    progress: Condvar,
}

impl Shared {
    fn batches(&self) -> std::sync::MutexGuard<'_, u64> {
        self.batches.lock().unwrap_or_else(|e| e.into_inner())
    }
}

thread_local! {
    /// The calling thread's name, looked up once per thread.
    static THREAD_NAME: Option<Arc<str>> = std::thread::current().name().map(Arc::from);
}

/// A `log::Log` that hands lines to a background writer thread.
pub struct Logger {
    level: LevelFilter,
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
    flush_wait: Duration,
}

impl Logger {
    /// Starts the log thread writing to `sink`, with room for `capacity` lines in
    /// flight (at least one). Does not install anything globally: see [`init`].
    pub fn new(
        level: LevelFilter,
        sink: Box<dyn Write + Send>,
        capacity: usize,
    ) -> io::Result<Logger> {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::sync_channel::<Msg>(capacity);
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("chat-log".into())
            .spawn(move || write_lines(rx, sink, &theirs, capacity))?;
        Ok(Logger {
            level,
            tx,
            shared,
            flush_wait: FLUSH_WAIT,
        })
    }

    /// Lines dropped so far because the sink could not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let target = match record.module_path_static() {
            Some(m) if m == record.target() => Cow::Borrowed(m),
            _ => Cow::Owned(record.target().to_owned()),
        };
        let line = Line {
            time: SystemTime::now(),
            level: record.level(),
            target,
            thread: THREAD_NAME.try_with(Clone::clone).ok().flatten(),
            message: std::fmt::format(*record.args()),
        };
        if self.tx.try_send(Msg::Line(line)).is_err() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits, at most `FLUSH_WAIT` in all, until every line handed over before the call
    /// is written and the sink flushed. Meant for exit, not for the event loop.
    fn flush(&self) {
        let deadline = Instant::now() + self.flush_wait;
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        let mut msg = Msg::Flush(ack_tx);
        loop {
            let seen = *self.shared.batches();
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(m)) => {
                    msg = m;
                    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                        return;
                    };
                    // The channel has room again once the log thread finishes a batch.
                    let batches = self.shared.batches();
                    let _ = self
                        .shared
                        .progress
                        .wait_timeout_while(batches, left, |b| *b == seen);
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = ack_rx.recv_timeout(left);
    }
}

/// The log thread: writes lines in batches of at most `batch`, flushing the sink and
/// reporting dropped lines after each batch (so at the latest once it has caught up).
fn write_lines(rx: Receiver<Msg>, sink: Box<dyn Write + Send>, shared: &Shared, batch: usize) {
    let mut out = BufWriter::new(sink);
    let mut reported = 0;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut n = 0;
        while let Some(msg) = next {
            match msg {
                Msg::Line(line) => {
                    let _ = write_line(&mut out, &line);
                }
                Msg::Flush(done) => {
                    report_drops(&mut out, shared, &mut reported);
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            n += 1;
            // Empty or disconnected ends the batch alike.
            next = if n < batch { rx.try_recv().ok() } else { None };
        }
        report_drops(&mut out, shared, &mut reported);
        let _ = out.flush();
        *shared.batches() += 1;
        shared.progress.notify_all();
    }
}

fn report_drops(out: &mut impl Write, shared: &Shared, reported: &mut u64) {
    let dropped = shared.dropped.load(Ordering::Relaxed);
    if dropped > *reported {
        let _ = write_stamp(out, SystemTime::now());
        let _ = writeln!(
            out,
            " {:<5} [log] {} lines dropped: sink too slow",
            Level::Warn,
            dropped - *reported
        );
        *reported = dropped;
    }
}

/// `2026-12-01T14:07:40.123Z INFO  [thread] target: message`
fn write_line(out: &mut impl Write, line: &Line) -> io::Result<()> {
    write_stamp(out, line.time)?;
    write!(out, " {:<5} ", line.level)?;
    if let Some(t) = &line.thread {
        write!(out, "[{t}] ")?;
    }
    writeln!(out, "{}: {}", line.target, line.message)
}

/// Writes `time` as UTC, `YYYY-MM-DDTHH:MM:SS.mmmZ` (a clock before 1970 shows 1970).
fn write_stamp(out: &mut impl Write, time: SystemTime) -> io::Result<()> {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    write!(
        out,
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Parses a level name for the command line: off, error, warn, info, debug or trace.
pub fn parse_level(s: &str) -> Result<LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("unknown log level {s:?}: use off, error, warn, info, debug or trace"))
}

/// Installs the global logger at `level`, writing to `file` (appended) or stderr.
pub fn init(level: LevelFilter, file: Option<&Path>) -> io::Result<()> {
    let sink: Box<dyn Write + Send> = match file {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot open log file {}: {e}", p.display()),
                    )
                })?,
        ),
        None => Box::new(io::stderr()),
    };
    let logger = Logger::new(level, sink, CHANNEL_CAPACITY)?;
    // Installed once for the life of the process.
    log::set_logger(Box::leak(Box::new(logger)))
        .map_err(|e| io::Error::new(io::ErrorKind::AlreadyExists, e.to_string()))?;
    log::set_max_level(level);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read, whose first write can be held until released.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
        /// The lines written, each without its time stamp.
        fn lines(&self) -> Vec<String> {
            self.text()
                .lines()
                .map(|l| {
                    assert!(is_stamp(&l[..24]), "{l}");
                    l[25..].to_owned()
                })
                .collect()
        }
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Writes into `inner`, but the first write says so on `entered` and then waits
    /// until `release` gets a value or is dropped.
    struct Gated {
        inner: Sink,
        gate: Option<(SyncSender<()>, Receiver<()>)>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some((entered, release)) = self.gate.take() {
                let _ = entered.send(());
                let _ = release.recv();
            }
            self.inner.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A sink held at its first write: (sink, written, entered, release).
    fn gated() -> (Box<Gated>, Sink, Receiver<()>, SyncSender<()>) {
        let written = Sink::default();
        let (entered_tx, entered_rx) = mpsc::sync_channel(1);
        let (release_tx, release_rx) = mpsc::sync_channel(1);
        let sink = Gated {
            inner: written.clone(),
            gate: Some((entered_tx, release_rx)),
        };
        (Box::new(sink), written, entered_rx, release_tx)
    }

    fn is_stamp(s: &str) -> bool {
        s.len() == 24
            && s.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                10 => b == b'T',
                13 | 16 => b == b':',
                19 => b == b'.',
                23 => b == b'Z',
                _ => b.is_ascii_digit(),
            })
    }

    fn log(logger: &Logger, level: Level, n: usize) {
        logger.log(
            &Record::builder()
                .level(level)
                .target("chat::test")
                .module_path_static(Some("chat::test"))
                .args(format_args!("line {n}"))
                .build(),
        );
    }

    #[test]
    fn lines_arrive_in_order_formatted_and_filtered() {
        let sink = Sink::default();
        let logger = Logger::new(LevelFilter::Info, Box::new(sink.clone()), 128).unwrap();
        for n in 0..100 {
            let level = [Level::Error, Level::Warn, Level::Info, Level::Debug][n % 4];
            log(&logger, level, n);
        }
        logger.flush();
        let me = std::thread::current().name().unwrap().to_owned();
        let want: Vec<String> = (0..100)
            .filter(|n| n % 4 != 3)
            .map(|n| {
                let level = ["ERROR", "WARN ", "INFO "][n % 4];
                format!("{level} [{me}] chat::test: line {n}")
            })
            .collect();
        assert_eq!(sink.lines(), want);
        assert_eq!(logger.dropped(), 0);
    }

    #[test]
    fn line_format_has_utc_time_level_thread_and_target() {
        let mut out = Vec::new();
        let line = Line {
            time: UNIX_EPOCH + Duration::from_millis(1_796_134_060_123),
            level: Level::Info,
            target: Cow::Borrowed("chat::reactor"),
            thread: Some(Arc::from("chat-reactor")),
            message: "listening on 127.0.0.1:8889".into(),
        };
        write_line(&mut out, &line).unwrap();
        let unnamed = Line {
            time: UNIX_EPOCH + Duration::from_millis(951_868_799_999),
            level: Level::Error,
            thread: None,
            message: "x".into(),
            ..line
        };
        write_line(&mut out, &unnamed).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-12-01T14:07:40.123Z INFO  [chat-reactor] chat::reactor: listening on 127.0.0.1:8889\n\
             2000-02-29T23:59:59.999Z ERROR chat::reactor: x\n"
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(951_868_799 / 86_400), (2000, 2, 29));
        assert_eq!(civil_from_days(4_107_542_400 / 86_400), (2100, 3, 1));
        assert_eq!(civil_from_days(4_107_542_400 / 86_400 - 1), (2100, 2, 28));
    }

    #[test]
    fn a_full_channel_counts_drops_instead_of_blocking() {
        let (sink, written, entered, release) = gated();
        let logger = Logger::new(LevelFilter::Trace, sink, 4).unwrap();
        // Line 0 reaches the sink, which holds the log thread.
        log(&logger, Level::Info, 0);
        entered.recv().unwrap();
        // The channel takes 4 more; the next 3 are counted, and the caller goes on.
        for n in 1..=7 {
            log(&logger, Level::Info, n);
        }
        assert_eq!(logger.dropped(), 3);
        assert_eq!(written.text(), "");
        release.send(()).unwrap();
        logger.flush();
        let lines = written.lines();
        let me = std::thread::current().name().unwrap().to_owned();
        let mut want: Vec<String> = (0..=4)
            .map(|n| format!("INFO  [{me}] chat::test: line {n}"))
            .collect();
        want.push("WARN  [log] 3 lines dropped: sink too slow".into());
        assert_eq!(lines, want);
        // Reported once: later lines come without a repeat.
        log(&logger, Level::Info, 8);
        logger.flush();
        assert_eq!(written.lines().len(), 7);
        assert_eq!(logger.dropped(), 3);
    }

    #[test]
    fn flush_waits_for_the_lines_handed_over() {
        let (sink, written, entered, release) = gated();
        let logger = Logger::new(LevelFilter::Trace, sink, 64).unwrap();
        log(&logger, Level::Info, 0);
        entered.recv().unwrap();
        for n in 1..=50 {
            log(&logger, Level::Info, n);
        }
        // Another thread lets the sink go on; `flush` returns only once all 51 are in.
        let releaser = std::thread::spawn(move || release.send(()).unwrap());
        logger.flush();
        assert_eq!(written.lines().len(), 51);
        releaser.join().unwrap();
    }

    #[test]
    fn flush_waits_for_room_when_the_channel_is_full() {
        let (sink, written, entered, release) = gated();
        let logger = Logger::new(LevelFilter::Trace, sink, 2).unwrap();
        log(&logger, Level::Info, 0);
        entered.recv().unwrap();
        log(&logger, Level::Info, 1);
        log(&logger, Level::Info, 2);
        let releaser = std::thread::spawn(move || release.send(()).unwrap());
        logger.flush();
        assert_eq!(written.lines().len(), 3);
        releaser.join().unwrap();
    }

    #[test]
    fn flush_gives_up_on_a_stuck_sink() {
        let (sink, written, entered, release) = gated();
        let mut logger = Logger::new(LevelFilter::Trace, sink, 1).unwrap();
        logger.flush_wait = Duration::from_millis(20);
        log(&logger, Level::Info, 0);
        entered.recv().unwrap();
        log(&logger, Level::Info, 1);
        // Channel full and sink stuck: both waits in `flush` are bounded.
        logger.flush();
        assert_eq!(written.text(), "");
        drop(release);
    }
}
