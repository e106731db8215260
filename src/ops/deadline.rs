//! Blocking socket I/O bounded by one deadline for a whole exchange, for the
//! operators' listeners (the admin socket, `--metrics-listen`), and the bounded set of
//! short-lived threads they serve their clients on ([`Clients`]).
//!
//! A socket's read timeout bounds one `read` call: a client that sends a byte just
//! before each timeout would keep its thread for as long as it likes. [`Timed`] sets
//! the timeout of each call to what is left until the deadline, and fails with
//! `TimedOut` once it has passed.
//!
//! Each client is served on a thread of its own, so an idle or slow one never delays
//! another; at most a fixed number are served at once (a client beyond that is told
//! so and closed at once), and each is served within its own deadline, so a thread
//! lives that long at most.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A blocking socket whose timeouts can be set, and which can be shut down from
/// another thread through a clone of its descriptor.
pub trait Timeouts: Sized {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    fn try_clone(&self) -> io::Result<Self>;
    fn shutdown(&self) -> io::Result<()>;
}

impl Timeouts for TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, t)
    }
    fn try_clone(&self) -> io::Result<Self> {
        TcpStream::try_clone(self)
    }
    fn shutdown(&self) -> io::Result<()> {
        TcpStream::shutdown(self, Shutdown::Both)
    }
}

impl Timeouts for UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, t)
    }
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn shutdown(&self) -> io::Result<()> {
        UnixStream::shutdown(self, Shutdown::Both)
    }
}

/// Why [`Clients::serve`] did not take a connection; the caller tells the client and
/// closes it.
#[derive(Debug)]
pub enum Refused {
    /// As many clients as allowed are being served.
    Full(usize),
    /// No thread could be started (or the descriptor not cloned).
    Io(io::Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Full(n) => write!(f, "busy: {n} clients are being served, try again"),
            Refused::Io(e) => write!(f, "cannot serve this client now: {e}"),
        }
    }
}

/// The clients of one listener, each served on a short-lived thread of its own, at
/// most `max` at once. [`Clients::stop`] shuts every live connection down and waits
/// for their threads.
pub struct Clients<S> {
    name: &'static str,
    max: usize,
    state: Arc<Mutex<Live<S>>>,
}

struct Live<S> {
    next: u64,
    /// A clone of each served connection's descriptor, to shut it down at stop.
    conns: HashMap<u64, S>,
    threads: Vec<JoinHandle<()>>,
}

impl<S: Timeouts + Send + 'static> Clients<S> {
    /// Threads named `name`, at most `max` at once.
    pub fn new(name: &'static str, max: usize) -> Clients<S> {
        Clients {
            name,
            max,
            state: Arc::new(Mutex::new(Live {
                next: 0,
                conns: HashMap::new(),
                threads: Vec::new(),
            })),
        }
    }

    /// Serves `conn` with `serve` on a thread of its own; gives the connection back
    /// if it cannot.
    pub fn serve(
        &self,
        conn: S,
        serve: impl FnOnce(S) + Send + 'static,
    ) -> Result<(), (S, Refused)> {
        let mut live = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        live.threads.retain(|t| !t.is_finished());
        if live.conns.len() >= self.max {
            return Err((conn, Refused::Full(self.max)));
        }
        let clone = match conn.try_clone() {
            Ok(c) => c,
            Err(e) => return Err((conn, Refused::Io(e))),
        };
        let id = live.next;
        live.next += 1;
        live.conns.insert(id, clone);
        let state = self.state.clone();
        // The connection comes back if the thread cannot be started.
        let slot = Arc::new(Mutex::new(Some(conn)));
        let taken = slot.clone();
        let started = std::thread::Builder::new()
            .name(self.name.into())
            .spawn(move || {
                let conn = taken.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(conn) = conn {
                    serve(conn);
                }
                state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .conns
                    .remove(&id);
            });
        match started {
            Ok(t) => {
                live.threads.push(t);
                Ok(())
            }
            Err(e) => {
                live.conns.remove(&id);
                let conn = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
                match conn {
                    Some(conn) => Err((conn, Refused::Io(e))),
                    // Unreachable: a thread that did not start took nothing.
                    None => Ok(()),
                }
            }
        }
    }

    /// How many clients are being served.
    pub fn live(&self) -> usize {
        let live = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        live.conns.len()
    }

    /// Shuts every live connection down (its thread then fails its next read or
    /// write and ends) and waits for every thread.
    pub fn stop(&self) {
        let threads = {
            let mut live = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            for conn in live.conns.values() {
                let _ = conn.shutdown();
            }
            std::mem::take(&mut live.threads)
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

/// `sock`, read from and written to until `deadline` at the latest.
pub struct Timed<'a, S> {
    sock: &'a S,
    deadline: Instant,
}

impl<'a, S> Timed<'a, S> {
    /// Reads and writes on `sock` that end within `within` from now.
    pub fn new(sock: &'a S, within: Duration) -> Timed<'a, S> {
        Timed {
            sock,
            deadline: Instant::now() + within,
        }
    }

    /// What is left until the deadline; `TimedOut` once it has passed.
    fn left(&self) -> io::Result<Duration> {
        match self.deadline.checked_duration_since(Instant::now()) {
            Some(d) if !d.is_zero() => Ok(d),
            _ => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "timed out: the client took too long",
            )),
        }
    }
}

/// A timeout of one call as the deadline's: `WouldBlock` (what a timed-out read
/// says on Unix) becomes `TimedOut`.
fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "timed out: the client took too long",
        )
    } else {
        e
    }
}

impl<S: Timeouts> Read for Timed<'_, S>
where
    for<'b> &'b S: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.set_read_timeout(Some(self.left()?))?;
        let mut sock = self.sock;
        sock.read(buf).map_err(timed_out)
    }
}

impl<S: Timeouts> Write for Timed<'_, S>
where
    for<'b> &'b S: Write,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.set_write_timeout(Some(self.left()?))?;
        let mut sock = self.sock;
        sock.write(buf).map_err(timed_out)
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut sock = self.sock;
        sock.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_served_at_once_up_to_the_bound_and_stopped_together() {
        let clients = Clients::new("test-conn", 2);
        let (tx, rx) = std::sync::mpsc::channel();
        let mut ours = Vec::new();
        for _ in 0..2 {
            let (a, b) = UnixStream::pair().unwrap();
            let tx = tx.clone();
            clients
                .serve(a, move |a| {
                    // Waits for a byte that never comes, until shut down.
                    let mut buf = [0u8; 1];
                    let _ = (&a).read(&mut buf);
                    let _ = tx.send(());
                })
                .unwrap();
            ours.push(b);
        }
        assert_eq!(clients.live(), 2);
        let (a, _b) = UnixStream::pair().unwrap();
        match clients.serve(a, |_| {}) {
            Err((_, Refused::Full(2))) => {}
            other => panic!("a third is refused, not {:?}", other.map_err(|e| e.1)),
        }
        clients.stop();
        assert_eq!(rx.try_iter().count(), 2, "both threads ended at the stop");
        assert_eq!(clients.live(), 0);
    }

    #[test]
    fn a_trickle_is_cut_off_at_the_deadline_and_a_quick_exchange_is_not() {
        let (a, b) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            let mut b = b;
            // A byte every 20 ms, each well within one read's timeout, until cut off.
            let mut sent = 0;
            while sent < 500 && b.write_all(b"x").is_ok() {
                sent += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            sent
        });
        let mut t = Timed::new(&a, Duration::from_millis(200));
        let mut got = Vec::new();
        let e = t.read_to_end(&mut got).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(!got.is_empty(), "it read what came meanwhile");
        drop(a);
        assert!(writer.join().unwrap() < 500, "cut off before the end");

        let (a, b) = UnixStream::pair().unwrap();
        Timed::new(&b, Duration::from_secs(60))
            .write_all(b"hello\n")
            .unwrap();
        let mut line = [0u8; 6];
        Timed::new(&a, Duration::from_secs(60))
            .read_exact(&mut line)
            .unwrap();
        assert_eq!(&line, b"hello\n");
    }
}
