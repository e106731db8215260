//! Logging that never blocks the reactor.
//!
//! simplelog formats each record; the bytes go to a bounded channel and a background
//! thread writes them to stderr or the log file. If the sink cannot keep up, lines are
//! dropped (and counted, and the count is logged once the sink catches up) rather
//! than stalling the event loop.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};

use simplelog::{ConfigBuilder, LevelFilter, WriteLogger};

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// The `Write` end simplelog writes into: collects one line, then hands it over.
struct ChannelWriter {
    tx: SyncSender<Msg>,
    line: Vec<u8>,
    dropped: Arc<AtomicU64>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        if self.line.ends_with(b"\n") {
            let line = std::mem::take(&mut self.line);
            if let Err(TrySendError::Full(_)) = self.tx.try_send(Msg::Line(line)) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(buf.len())
    }

    /// Waits until every line handed over so far is written. Used at exit only.
    fn flush(&mut self) -> io::Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(std::time::Duration::from_secs(2));
        }
        Ok(())
    }
}

/// Installs the global logger at `level`, writing to `file` (appended) or stderr.
pub fn init(level: LevelFilter, file: Option<&Path>) -> io::Result<()> {
    let mut sink: Box<dyn Write + Send> = match file {
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
    let (tx, rx) = mpsc::sync_channel::<Msg>(4096);
    let dropped = Arc::new(AtomicU64::new(0));
    let seen = dropped.clone();
    std::thread::Builder::new()
        .name("chat-log".into())
        .spawn(move || {
            let mut reported = 0;
            for msg in rx {
                match msg {
                    Msg::Line(l) => {
                        let d = seen.load(Ordering::Relaxed);
                        if d > reported {
                            let _ = writeln!(
                                sink,
                                "[log] {} lines dropped: sink too slow",
                                d - reported
                            );
                            reported = d;
                        }
                        let _ = sink.write_all(&l);
                    }
                    Msg::Flush(done) => {
                        let _ = sink.flush();
                        let _ = done.send(());
                    }
                }
            }
        })?;
    let config = ConfigBuilder::new()
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .build();
    let writer = ChannelWriter {
        tx,
        line: Vec::new(),
        dropped,
    };
    WriteLogger::init(level, config, writer).map_err(io::Error::other)
}
