//! What carries one connection's protocol bytes: the plain socket, or a transport
//! wrapped around it (TLS, WebSocket).
//!
//! The hub speaks the TCP wire format (4-byte length, JSON envelope) and knows
//! nothing of transports. A [`Transport`] turns whatever arrives on its socket into
//! that byte stream and back, and keeps bytes of its own (handshakes, records,
//! control frames) until the socket takes them. The reactor drives it without
//! blocking: it reads when the socket is readable, writes the hub's output through
//! it, and calls [`Transport::flush`] whenever the socket may take more.
//!
//! A plain connection costs no allocation and no dynamic call: [`Link::Plain`] holds
//! the socket itself.
//!
//! A transport that carries another protocol over a byte stream (the web transport:
//! HTTP and WebSocket) is generic over a [`Stream`]: the plain socket, or TLS's
//! plaintext (HTTPS). Over a plain socket the stream's calls are the socket's own,
//! statically dispatched.

pub mod tls;
pub mod web;

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};

use mio::net::TcpStream;

/// A transport's "read me next turn": its `read` has taken its share of the socket's
/// input for now without producing protocol bytes, and input is left. The reactor
/// reads the connection again on its next turn, after the others
/// ([`crate::hub::turn::Read::NextTurn`]).
///
/// It travels as the error of an `io::Result` (so that it passes through the
/// `io::Read` of a transport over another one), told apart from every real error,
/// `Interrupted` included, by its type: see [`NextTurn::is`]. Raised at most once per
/// share of input (tens of KiB), never per read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextTurn;

impl NextTurn {
    /// The signal, as a read's error.
    pub fn error() -> io::Error {
        io::Error::other(NextTurn)
    }

    /// Whether a read's error is the signal.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<NextTurn>())
    }
}

impl fmt::Display for NextTurn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("input left for the next turn")
    }
}

impl std::error::Error for NextTurn {}

/// A transport over one non-blocking socket.
///
/// The contract, for the reactor's edge-triggered loop:
/// - [`read`](Transport::read) returns protocol bytes, `Ok(0)` once the peer has
///   closed (or the transport is done and wants the connection closed), and
///   `WouldBlock` only when the socket said `WouldBlock` and nothing decoded is left
///   over. The reactor reads again until then (within its budget). What reading
///   produces of the transport's own (a handshake's answer) it writes itself, as far
///   as the socket takes it. [`NextTurn`] means the transport has taken its share
///   of the socket's input for now without producing protocol bytes (a stream of
///   control frames): the reactor reads it again on its next turn, after the others.
/// - [`write_vectored`](Transport::write_vectored) takes protocol bytes and returns how
///   many it took (`WouldBlock` if none); what it took is the transport's to deliver.
/// - [`flush`](Transport::flush) writes the transport's own pending bytes and returns
///   whether they are all out. The reactor calls it after writing the hub's output
///   and when the socket turns writable; then it reads again, so a transport that
///   waits for its output to leave before closing reports the close then.
pub trait Transport {
    fn socket(&mut self) -> &mut TcpStream;
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    fn write_vectored(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize>;
    fn flush(&mut self) -> io::Result<bool>;
}

/// The byte stream under a transport that carries another protocol: a plain socket,
/// or the plaintext of a TLS connection ([`crate::transport::tls::TlsTransport`]).
///
/// The contract is [`Transport`]'s: [`read`](Stream::read) returns `Ok(0)` at the
/// end, `WouldBlock` only once the socket is drained and nothing decoded is left,
/// [`NextTurn`] when it has taken its share of the socket for now;
/// [`write`](Stream::write) says `WouldBlock` when it can hold no more;
/// [`flush`](Stream::flush) writes what it holds of its own.
pub trait Stream {
    /// Whether the stream is encrypted (what an `https://` page is served over).
    const TLS: bool;
    fn socket(&mut self) -> &mut TcpStream;
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Writes the stream's own pending bytes; returns whether they are all out.
    fn flush(&mut self) -> io::Result<bool>;
    /// Nothing more will be written: the peer is told the output has ended (once
    /// what is pending is out, for TLS). Best effort.
    fn shutdown_write(&mut self);
}

impl Stream for TcpStream {
    const TLS: bool = false;

    #[inline]
    fn socket(&mut self) -> &mut TcpStream {
        self
    }

    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(self, buf)
    }

    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Write::write(self, buf)
    }

    #[inline]
    fn flush(&mut self) -> io::Result<bool> {
        Ok(true)
    }

    fn shutdown_write(&mut self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// Wraps accepted sockets of one listener into transports.
pub trait Wrapper {
    /// A name for the log ("TLS", "web").
    fn name(&self) -> &str;
    fn wrap(&mut self, sock: TcpStream, peer: SocketAddr) -> io::Result<Box<dyn Transport>>;
    /// SIGHUP: read configuration files again (a certificate renewed). On failure the
    /// old configuration stays, and the error says why.
    fn reload(&mut self) -> Result<(), ReloadError> {
        Ok(())
    }
}

/// Why a [`Wrapper::reload`] failed (the old configuration stays).
#[derive(Debug)]
pub enum ReloadError {
    /// The certificate or key read again.
    Tls(tls::TlsError),
}

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadError::Tls(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ReloadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReloadError::Tls(e) => e.source(),
        }
    }
}

impl From<tls::TlsError> for ReloadError {
    fn from(e: tls::TlsError) -> ReloadError {
        ReloadError::Tls(e)
    }
}

/// One connection's carrier.
pub enum Link {
    Plain(TcpStream),
    Wrapped(Box<dyn Transport>),
}

impl Link {
    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Link::Plain(s) => s,
            Link::Wrapped(t) => t.socket(),
        }
    }

    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Plain(s) => Read::read(s, buf),
            Link::Wrapped(t) => t.read(buf),
        }
    }

    pub fn write_vectored(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            // One slice (the common case at light load): `write`, which the kernel
            // takes without reading an iovec array.
            Link::Plain(s) if iov.len() == 1 => Write::write(s, &iov[0]),
            Link::Plain(s) => s.write_vectored(iov),
            Link::Wrapped(t) => t.write_vectored(iov),
        }
    }

    /// Writes the transport's own pending bytes; a plain socket has none.
    pub fn flush(&mut self) -> io::Result<bool> {
        match self {
            Link::Plain(_) => Ok(true),
            Link::Wrapped(t) => t.flush(),
        }
    }

    /// Whether a short read means the socket is drained (true of a plain socket, not
    /// of a transport that may hold decoded bytes back).
    pub fn short_read_drains(&self) -> bool {
        matches!(self, Link::Plain(_))
    }

    pub fn is_wrapped(&self) -> bool {
        matches!(self, Link::Wrapped(_))
    }
}
