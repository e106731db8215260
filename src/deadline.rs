//! Blocking socket I/O bounded by one deadline for a whole exchange, for the
//! operators' listeners (the admin socket, `--metrics-listen`), which serve one client
//! at a time on a thread of their own.
//!
//! A socket's read timeout bounds one `read` call: a client that sends a byte just
//! before each timeout would keep such a thread, and every other client waiting
//! behind it, for as long as it likes. [`Timed`] sets the timeout of each call to what
//! is left until the deadline, and fails with `TimedOut` once it has passed.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// A blocking socket whose timeouts can be set.
pub trait Timeouts {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Timeouts for TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, t)
    }
}

impl Timeouts for UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, t)
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
