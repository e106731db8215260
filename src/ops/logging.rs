//! Logging that never makes the event loop wait for the log's sink.
//!
//! simplelog formats the lines. Its `WriteLogger` formats a record, on the thread that
//! logs, into a writer of ours (`LineWriter`) that keeps the line in memory; the whole
//! line is then handed to a bounded channel with `try_send`, and a background thread
//! ("chat-log") writes the lines to stderr or the log file. If the sink cannot keep up and
//! the channel is full, lines are dropped and counted, and the count is written once the
//! log thread has caught up:
//!
//! ```text
//! 2026-12-01T14:07:40.123Z [INFO ] (chat-reactor) chat::reactor: listening on 127.0.0.1:8889
//! 2026-12-01T14:07:41.002Z [WARN ] (chat-log) chat::ops::logging: 17 lines dropped: sink too slow
//! ```
//!
//! The time is UTC with milliseconds; the thread's name is left out for unnamed threads.
//!
//! A `WriteLogger` holds a `Mutex` around its writer while it formats a record. Each
//! thread that logs has a `WriteLogger` of its own, so that lock is never contended: it
//! is held only while this thread formats one line into memory. No thread waits for
//! another's formatting, let alone for the sink's I/O. Handing the line over takes no lock
//! the log thread holds while it writes, and never waits (a full channel drops the line).
//! A slow or stuck sink therefore never makes the event loop wait.

use std::cell::RefCell;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use log::LevelFilter;
use log::{Level, Log, Metadata, Record};
use simplelog::{ConfigBuilder, LevelPadding, ThreadLogMode, WriteLogger, format_description};

/// Lines the channel holds for the log thread before new ones are dropped.
pub const CHANNEL_CAPACITY: usize = 4096;
/// How long `flush` waits for the lines already handed over.
pub const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// Room reserved before a line is formatted, so that most lines need no regrowth.
const LINE_ROOM: usize = 160;

enum Msg {
    /// One formatted record, its final newline included (a message with newlines of
    /// its own goes as one piece all the same).
    Line(Vec<u8>),
    /// Answered once every message before it is written and the sink flushed.
    Flush(SyncSender<()>),
}

/// What the callers and the log thread share, apart from the channel.
#[derive(Default)]
struct Shared {
    /// Lines refused because the channel was full (or the log thread gone).
    dropped: AtomicU64,
    /// Set by [`Logger::reopen`]; the log thread reopens the file before its next line.
    reopen: AtomicBool,
    /// The most verbose level written (a `LevelFilter` as a number); see [`set_level`].
    level: AtomicUsize,
    /// Batches the log thread has finished; `flush` waits on it for room in the channel.
    batches: Mutex<u64>,
    progress: Condvar,
}

impl Shared {
    fn batches(&self) -> std::sync::MutexGuard<'_, u64> {
        self.batches.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writer simplelog formats into: it appends to the calling thread's line buffer.
struct LineWriter;

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        LINE.try_with(|l| l.borrow_mut().extend_from_slice(buf))
            .map_err(|_| io::Error::other("the thread's line buffer is gone"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

thread_local! {
    /// The line being formatted on this thread.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// This thread's formatter: simplelog's logger, every level, writing to [`LINE`].
    static FORMAT: RefCell<Box<WriteLogger<LineWriter>>> =
        RefCell::new(WriteLogger::new(LevelFilter::Trace, line_format(), LineWriter));
}

/// `2026-12-01T14:07:40.123Z [INFO ] (thread) target: message`
///
/// simplelog shows a part for records at the level it is set to and every more verbose
/// one: set to `Error`, a part is on every line.
fn line_format() -> simplelog::Config {
    ConfigBuilder::new()
        .set_time_level(LevelFilter::Error)
        .set_time_format_custom(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .set_max_level(LevelFilter::Error)
        .set_level_padding(LevelPadding::Right)
        .set_thread_level(LevelFilter::Error)
        .set_thread_mode(ThreadLogMode::Names)
        .set_target_level(LevelFilter::Error)
        .set_location_level(LevelFilter::Off)
        .build()
}

/// Formats `record` on this thread, whatever its level. `None` for a record logged while
/// this thread is already formatting one (from a `Display` that logs), or while the
/// thread is being torn down.
fn format_line(record: &Record) -> Option<Vec<u8>> {
    FORMAT
        .try_with(|format| {
            let format = format.try_borrow_mut().ok()?;
            LINE.try_with(|l| l.borrow_mut().reserve(LINE_ROOM)).ok()?;
            format.log(record);
            LINE.try_with(|l| std::mem::take(&mut *l.borrow_mut())).ok()
        })
        .ok()
        .flatten()
        .filter(|line| !line.is_empty())
}

/// A `log::Log` that formats lines with simplelog and hands them to a background writer
/// thread.
pub struct Logger {
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
        Logger::start(level, sink, None, capacity)
    }

    /// Like [`Logger::new`], appending to the file at `path` (created if missing), which
    /// [`Logger::reopen`] opens again.
    pub fn open(level: LevelFilter, path: &Path, capacity: usize) -> io::Result<Logger> {
        let file = open_log(path)?;
        Logger::start(level, Box::new(file), Some(path.to_owned()), capacity)
    }

    fn start(
        level: LevelFilter,
        out: Box<dyn Write + Send>,
        path: Option<PathBuf>,
        capacity: usize,
    ) -> io::Result<Logger> {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::sync_channel::<Msg>(capacity);
        let shared = Arc::new(Shared::default());
        shared.level.store(level as usize, Ordering::Relaxed);
        let theirs = shared.clone();
        let sink = Sink {
            out: BufWriter::new(out),
            path,
            reported: 0,
        };
        std::thread::Builder::new()
            .name("chat-log".into())
            .spawn(move || write_lines(rx, sink, &theirs, capacity))?;
        Ok(Logger {
            tx,
            shared,
            flush_wait: FLUSH_WAIT,
        })
    }

    /// Lines dropped so far because the sink could not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Asks the log thread to open the log file again (one moved away by log rotation)
    /// before it writes its next line. Nothing happens for a sink that is not a file.
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Relaxed);
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() as usize <= self.shared.level.load(Ordering::Relaxed)
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let sent =
            format_line(record).is_some_and(|line| self.tx.try_send(Msg::Line(line)).is_ok());
        if !sent {
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

/// The log thread's end: where the lines go.
struct Sink {
    out: BufWriter<Box<dyn Write + Send>>,
    /// The log file's path, to open it again; `None` for another sink.
    path: Option<PathBuf>,
    /// Dropped lines already reported.
    reported: u64,
}

impl Sink {
    /// Writes a line of the log thread's own.
    fn notice(&mut self, level: Level, args: fmt::Arguments) {
        let record = Record::builder()
            .level(level)
            .target(module_path!())
            .args(args)
            .build();
        if let Some(line) = format_line(&record) {
            let _ = self.out.write_all(&line);
        }
    }

    fn report_drops(&mut self, shared: &Shared) {
        let dropped = shared.dropped.load(Ordering::Relaxed);
        if dropped > self.reported {
            let n = dropped - self.reported;
            self.notice(
                Level::Warn,
                format_args!("{n} lines dropped: sink too slow"),
            );
            self.reported = dropped;
        }
    }

    /// Opens the log file again; if that fails, says so and keeps the one open.
    fn reopen(&mut self) {
        let Some(path) = &self.path else { return };
        let _ = self.out.flush();
        match open_log(path) {
            Ok(file) => self.out = BufWriter::new(Box::new(file)),
            Err(e) => self.notice(Level::Warn, format_args!("{e}; writing on to the old one")),
        }
    }
}

/// The log thread: writes lines in batches of at most `batch`, flushing the sink and
/// reporting dropped lines after each batch (so at the latest once it has caught up).
fn write_lines(rx: Receiver<Msg>, mut sink: Sink, shared: &Shared, batch: usize) {
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut n = 0;
        while let Some(msg) = next {
            match msg {
                Msg::Line(line) => {
                    if shared.reopen.swap(false, Ordering::Relaxed) {
                        sink.reopen();
                    }
                    let _ = sink.out.write_all(&line);
                }
                Msg::Flush(done) => {
                    sink.report_drops(shared);
                    let _ = sink.out.flush();
                    let _ = done.send(());
                }
            }
            n += 1;
            // Empty or disconnected ends the batch alike.
            next = if n < batch { rx.try_recv().ok() } else { None };
        }
        sink.report_drops(shared);
        let _ = sink.out.flush();
        *shared.batches() += 1;
        shared.progress.notify_all();
    }
}

/// Opens the log file at `path` for appending, creating it if missing.
fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open log file {}: {e}", path.display()),
            )
        })
}

/// Parses a level name for the command line: off, error, warn, info, debug or trace.
pub fn parse_level(s: &str) -> Result<LevelFilter, UnknownLevel> {
    s.parse().map_err(|_| UnknownLevel(s.to_string()))
}

/// A log level name that is none of off, error, warn, info, debug or trace (as given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownLevel(pub String);

impl fmt::Display for UnknownLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown log level {:?}: use off, error, warn, info, debug or trace",
            self.0
        )
    }
}

impl std::error::Error for UnknownLevel {}

/// What [`reopen`] reaches: the installed logger's shared state.
static INSTALLED: OnceLock<Arc<Shared>> = OnceLock::new();

/// Installs the global logger at `level`, writing to `file` (appended) or stderr.
pub fn init(level: LevelFilter, file: Option<&Path>) -> io::Result<()> {
    let logger = match file {
        Some(p) => Logger::open(level, p, CHANNEL_CAPACITY)?,
        None => Logger::new(level, Box::new(io::stderr()), CHANNEL_CAPACITY)?,
    };
    let shared = logger.shared.clone();
    // Installed once for the life of the process.
    log::set_logger(Box::leak(Box::new(logger)))
        .map_err(|e| io::Error::new(io::ErrorKind::AlreadyExists, e.to_string()))?;
    log::set_max_level(level);
    let _ = INSTALLED.set(shared);
    Ok(())
}

/// Changes the level of the logger [`init`] installed (a configuration reload).
pub fn set_level(level: LevelFilter) {
    if let Some(shared) = INSTALLED.get() {
        shared.level.store(level as usize, Ordering::Relaxed);
        log::set_max_level(level);
    }
}

/// [`Logger::reopen`] for the logger [`init`] installed (none installed: nothing).
pub fn reopen() {
    if let Some(shared) = INSTALLED.get() {
        shared.reopen.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read, whose first write can be held until released.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
        /// The lines written, each without its time stamp.
        fn lines(&self) -> Vec<String> {
            unstamped(&self.text())
        }
    }

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The lines of `text`, each without its time stamp (which must be there).
    fn unstamped(text: &str) -> Vec<String> {
        text.lines()
            .map(|l| {
                assert!(is_stamp(&l[..24]), "{l}");
                assert_eq!(&l[24..25], " ", "{l}");
                l[25..].to_owned()
            })
            .collect()
    }

    /// Writes into `inner`, but the first write says so on `entered` and then waits
    /// until `release` gets a value or is dropped.
    struct Gated {
        inner: Buffer,
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
    fn gated() -> (Box<Gated>, Buffer, Receiver<()>, SyncSender<()>) {
        let written = Buffer::default();
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

    fn log_args(logger: &Logger, level: Level, args: fmt::Arguments) {
        logger.log(
            &Record::builder()
                .level(level)
                .target("chat::test")
                .module_path_static(Some("chat::test"))
                .args(args)
                .build(),
        );
    }

    fn log(logger: &Logger, level: Level, n: usize) {
        log_args(logger, level, format_args!("line {n}"));
    }

    fn me() -> String {
        std::thread::current().name().unwrap().to_owned()
    }

    #[test]
    fn level_names() {
        assert_eq!(parse_level("debug").unwrap(), LevelFilter::Debug);
        assert_eq!(
            parse_level("loud").unwrap_err().to_string(),
            "unknown log level \"loud\": use off, error, warn, info, debug or trace"
        );
    }

    #[test]
    fn lines_arrive_in_order_formatted_and_filtered() {
        let sink = Buffer::default();
        let logger = Logger::new(LevelFilter::Info, Box::new(sink.clone()), 128).unwrap();
        for n in 0..100 {
            let level = [Level::Error, Level::Warn, Level::Info, Level::Debug][n % 4];
            log(&logger, level, n);
        }
        logger.flush();
        let me = me();
        let want: Vec<String> = (0..100)
            .filter(|n| n % 4 != 3)
            .map(|n| {
                let level = ["ERROR", "WARN ", "INFO "][n % 4];
                format!("[{level}] ({me}) chat::test: line {n}")
            })
            .collect();
        assert_eq!(sink.lines(), want);
        assert_eq!(logger.dropped(), 0);
    }

    #[test]
    fn a_line_has_the_utc_time_and_names_its_thread_if_it_has_one() {
        let sink = Buffer::default();
        let logger = Arc::new(Logger::new(LevelFilter::Trace, Box::new(sink.clone()), 16).unwrap());
        let stamp = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        let before = time::OffsetDateTime::now_utc().format(stamp).unwrap();
        let l = logger.clone();
        std::thread::Builder::new()
            .name("chat-reactor".into())
            .spawn(move || log(&l, Level::Info, 0))
            .unwrap()
            .join()
            .unwrap();
        let l = logger.clone();
        std::thread::spawn(move || log(&l, Level::Trace, 1))
            .join()
            .unwrap();
        logger.flush();
        let after = time::OffsetDateTime::now_utc().format(stamp).unwrap();
        let text = sink.text();
        for line in text.lines() {
            assert!(
                before.as_str() <= &line[..24] && &line[..24] <= after.as_str(),
                "{line}"
            );
        }
        assert_eq!(
            unstamped(&text),
            [
                "[INFO ] (chat-reactor) chat::test: line 0",
                "[TRACE] chat::test: line 1"
            ]
        );
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
        let me = me();
        let mut want: Vec<String> = (0..=4)
            .map(|n| format!("[INFO ] ({me}) chat::test: line {n}"))
            .collect();
        want.push("[WARN ] (chat-log) chat::ops::logging: 3 lines dropped: sink too slow".into());
        assert_eq!(written.lines(), want);
        // Reported once: later lines come without a repeat.
        log(&logger, Level::Info, 8);
        logger.flush();
        assert_eq!(written.lines().len(), 7);
        assert_eq!(logger.dropped(), 3);
    }

    #[test]
    fn a_record_of_several_lines_is_handed_over_or_dropped_whole() {
        let (sink, written, entered, release) = gated();
        let logger = Logger::new(LevelFilter::Trace, sink, 1).unwrap();
        log(&logger, Level::Info, 0);
        entered.recv().unwrap();
        // One place in the channel: the first record takes it whole, the second goes.
        log_args(&logger, Level::Info, format_args!("first\n  and more"));
        log_args(&logger, Level::Info, format_args!("second\n  and more"));
        assert_eq!(logger.dropped(), 1);
        release.send(()).unwrap();
        logger.flush();
        let me = me();
        let text = written.text();
        let lines: Vec<&str> = text.lines().map(|l| l.get(25..).unwrap_or(l)).collect();
        assert_eq!(
            lines,
            [
                format!("[INFO ] ({me}) chat::test: line 0"),
                format!("[INFO ] ({me}) chat::test: first"),
                "  and more".into(),
                "[WARN ] (chat-log) chat::ops::logging: 1 lines dropped: sink too slow".into(),
            ]
        );
    }

    #[test]
    fn a_record_logged_while_formatting_one_is_dropped_not_a_deadlock() {
        struct Logs<'a>(&'a Logger);
        impl fmt::Display for Logs<'_> {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                log(self.0, Level::Info, 1);
                f.write_str("outer")
            }
        }
        let sink = Buffer::default();
        let logger = Logger::new(LevelFilter::Trace, Box::new(sink.clone()), 16).unwrap();
        log_args(&logger, Level::Info, format_args!("{}", Logs(&logger)));
        assert_eq!(logger.dropped(), 1);
        logger.flush();
        assert_eq!(
            sink.lines(),
            [
                format!("[INFO ] ({}) chat::test: outer", me()),
                "[WARN ] (chat-log) chat::ops::logging: 1 lines dropped: sink too slow".into(),
            ]
        );
    }

    #[test]
    fn reopen_moves_on_to_a_new_file_at_the_next_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.log");
        let moved = dir.path().join("chat.log.1");
        let logger = Logger::open(LevelFilter::Trace, &path, 16).unwrap();
        log(&logger, Level::Info, 0);
        logger.flush();
        std::fs::rename(&path, &moved).unwrap();
        // Until the log thread reopens it, the file moved away still takes the lines.
        log(&logger, Level::Info, 1);
        logger.flush();
        logger.reopen();
        log(&logger, Level::Info, 2);
        logger.flush();
        let me = me();
        let read = |p: &Path| unstamped(&std::fs::read_to_string(p).unwrap());
        assert_eq!(
            read(&moved),
            [
                format!("[INFO ] ({me}) chat::test: line 0"),
                format!("[INFO ] ({me}) chat::test: line 1"),
            ]
        );
        assert_eq!(read(&path), [format!("[INFO ] ({me}) chat::test: line 2")]);
    }

    #[test]
    fn a_failed_reopen_is_logged_and_the_old_file_kept() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("logs");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("chat.log");
        let logger = Logger::open(LevelFilter::Trace, &path, 16).unwrap();
        // The folder moves away with the open file: the path cannot be opened again.
        let moved = dir.path().join("old");
        std::fs::rename(&sub, &moved).unwrap();
        logger.reopen();
        log(&logger, Level::Info, 0);
        logger.flush();
        let lines = unstamped(&std::fs::read_to_string(moved.join("chat.log")).unwrap());
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("[WARN ] (chat-log) chat::ops::logging: cannot open log file ")
                && lines[0].ends_with("; writing on to the old one"),
            "{lines:?}"
        );
        assert_eq!(lines[1], format!("[INFO ] ({}) chat::test: line 0", me()));
        assert!(!path.exists());
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
