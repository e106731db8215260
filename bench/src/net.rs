//! Many client connections on one mio event loop: the bench's only I/O code.
//! Reads go into each connection's own buffer and are consumed by the caller's
//! protocol code; writes are queued and flushed until `WouldBlock`. With TLS, each
//! connection's rustls `ClientConnection` sits between the socket and those buffers
//! (ciphertext in and out of the socket, plaintext to and from the buffers), driven
//! the same non-blocking way.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

/// What TLS connections are made with: the settings, and the name the server's
/// certificate must be for.
#[derive(Clone)]
pub struct TlsSetup {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

pub struct Client {
    /// `None` once closed by [`Pool::close`] (its descriptor is given back).
    sock: Option<TcpStream>,
    /// The TLS session, for a TLS connection.
    tls: Option<Box<ClientConnection>>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
    out_pos: usize,
    pub closed: bool,
    /// What arrives is dropped unread ([`Pool::discard`]).
    discard: bool,
    /// Why the socket failed, when it did (`closed` with no error: the server closed it
    /// cleanly).
    pub error: Option<String>,
    /// When input last arrived: latency is measured to the read that brought a frame
    /// in, not to when the loop got round to parsing it after reading every other
    /// socket.
    pub read_at: Instant,
}

impl Client {
    /// Unconsumed input.
    pub fn input(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Makes room for a frame of `total` bytes that does not fit the buffer.
    pub fn need(&mut self, total: usize) {
        if total > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            self.buf.resize(total, 0);
        }
    }

    /// Marks `n` bytes of input as consumed.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Queues bytes to send (flushed by `Pool::flush`).
    pub fn send(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    pub fn has_output(&self) -> bool {
        self.out_pos < self.out.len() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Moves unconsumed input to the front when the buffer is full to its end.
    fn make_room(&mut self) {
        if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    fn read_some(&mut self) -> io::Result<bool> {
        self.make_room();
        if self.end == self.buf.len() {
            return Ok(false);
        }
        let Some(sock) = self.sock.as_mut() else {
            return Ok(false);
        };
        if let Some(tls) = self.tls.as_mut() {
            return match read_tls(tls, sock, &mut self.buf[self.end..]) {
                Ok(0) => {
                    self.closed = true;
                    Ok(false)
                }
                Ok(n) => {
                    self.end += n;
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                Err(e) => Err(self.failed(e)),
            };
        }
        match sock.read(&mut self.buf[self.end..]) {
            Ok(0) => {
                self.closed = true;
                Ok(false)
            }
            Ok(n) => {
                self.end += n;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Drops everything the socket holds, in the kernel: with `MSG_TRUNC` a TCP socket
    /// consumes the bytes without copying them out.
    fn drain_discarding(&mut self) {
        const LEN: usize = 1 << 20;
        let Some(sock) = self.sock.as_ref() else {
            return;
        };
        loop {
            // SAFETY: with MSG_TRUNC, Linux's TCP discards the bytes and writes nothing
            // to the buffer (tcp(7)); it is null, so that a kernel which did would fail
            // the call (EFAULT) instead of writing anywhere.
            let n = unsafe {
                libc::recv(
                    sock.as_raw_fd(),
                    std::ptr::null_mut(),
                    LEN,
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => {
                    self.closed = true;
                    return;
                }
                // A short read drained the socket (new data raises a new edge).
                n if n > 0 && (n as usize) < LEN => return,
                n if n > 0 => {}
                _ => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return,
                        io::ErrorKind::Interrupted => {}
                        _ => {
                            self.failed(e);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Forgets the input read and not consumed, and its buffer's memory.
    fn drop_input(&mut self) {
        self.buf = Vec::new();
        self.start = 0;
        self.end = 0;
    }

    /// Marks the connection closed by a socket error, which is kept for the report.
    fn failed(&mut self, e: io::Error) -> io::Error {
        self.closed = true;
        self.error = Some(e.to_string());
        e
    }

    fn flush(&mut self) {
        let Some(sock) = self.sock.as_mut() else {
            return;
        };
        if let Some(tls) = self.tls.as_mut() {
            // No limit is set on what rustls holds: it takes everything at once.
            if self.out_pos < self.out.len() {
                let _ = tls.writer().write_all(&self.out[self.out_pos..]);
                self.out.clear();
                self.out_pos = 0;
            }
            if let Err(e) = send_tls(tls, sock) {
                self.failed(e);
            }
            return;
        }
        while self.out_pos < self.out.len() {
            match sock.write(&self.out[self.out_pos..]) {
                Ok(n) => self.out_pos += n,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::NotConnected =>
                {
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.failed(e);
                    return;
                }
            }
        }
        self.out.clear();
        self.out_pos = 0;
    }
}

pub struct Pool {
    poll: Poll,
    events: Events,
    pub clients: Vec<Client>,
    /// Clients with new input since the last `poll`.
    pub ready: Vec<usize>,
    /// Clients whose buffer filled before their socket was drained: read again on the
    /// next `poll` without waiting for an event (there will be none: edge-triggered).
    pending_reads: Vec<usize>,
    buf_size: usize,
    /// Connections are made with TLS.
    pub tls: Option<TlsSetup>,
}

impl Pool {
    pub fn new(buf_size: usize) -> io::Result<Pool> {
        Ok(Pool {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            clients: Vec::new(),
            ready: Vec::new(),
            pending_reads: Vec::new(),
            buf_size,
            tls: None,
        })
    }

    /// Opens one connection without waiting for it to be established (a storm of
    /// connects must not stall the loop); returns its index. What is sent before the
    /// connection is up waits for its first writable event.
    pub fn connect(&mut self, addr: SocketAddr) -> io::Result<usize> {
        let mut sock = TcpStream::connect(addr)?;
        sock.set_nodelay(true)?;
        let i = self.clients.len();
        let tls = match &self.tls {
            Some(t) => {
                let mut c = ClientConnection::new(t.config.clone(), t.name.clone())
                    .map_err(io::Error::other)?;
                c.set_buffer_limit(None);
                Some(Box::new(c))
            }
            None => None,
        };
        self.poll.registry().register(
            &mut sock,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.clients.push(Client {
            sock: Some(sock),
            tls,
            buf: vec![0; self.buf_size],
            start: 0,
            end: 0,
            out: Vec::new(),
            out_pos: 0,
            closed: false,
            discard: false,
            error: None,
            read_at: Instant::now(),
        });
        Ok(i)
    }

    /// Closes a connection and gives its descriptor back; its slot stays, closed.
    pub fn close(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if let Some(mut s) = c.sock.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.tls = None;
        c.closed = true;
        c.drop_input();
    }

    /// From now on the connection's input is dropped unread, in the kernel, without
    /// being copied to the bench (what it held unparsed too): for a storm's users once
    /// logged in, who only have to keep reading, so that the bench's own copying does
    /// not hold the storm up. Input over TLS must be decrypted: read as before.
    pub fn discard(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if c.discard || c.closed || c.tls.is_some() {
            return;
        }
        c.discard = true;
        c.drop_input();
        // What is there already raises no new edge.
        c.drain_discarding();
    }

    /// Writes what every client has queued.
    pub fn flush(&mut self) {
        for c in &mut self.clients {
            if c.has_output() {
                c.flush();
            }
        }
    }

    /// Writes what one client has queued.
    pub fn flush_one(&mut self, i: usize) {
        self.clients[i].flush();
    }

    /// Waits for events, reads everything readable, writes what became writable.
    /// Clients with new input are listed in `ready`.
    pub fn poll(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.ready.clear();
        let again = std::mem::take(&mut self.pending_reads);
        let timeout = if again.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let mut readable = again;
        for ev in self.events.iter() {
            let i = ev.token().0;
            let c = &mut self.clients[i];
            if ev.is_writable() && c.has_output() {
                c.flush();
            }
            if ev.is_readable() || ev.is_read_closed() {
                readable.push(i);
            }
        }
        readable.sort_unstable();
        readable.dedup();
        for i in readable {
            let c = &mut self.clients[i];
            if c.discard {
                c.drain_discarding();
                if c.closed {
                    self.ready.push(i);
                }
                continue;
            }
            let mut got = false;
            // Read until WouldBlock (edge-triggered) or the buffer is full. A short
            // read means the socket was drained: new data will raise a new edge, so
            // the extra read that would only say WouldBlock is skipped.
            while c.end < c.buf.len() || c.start > 0 {
                // Room measured after any compaction, which moves `end` back.
                c.make_room();
                let room = c.buf.len() - c.end;
                let before = c.end;
                match c.read_some() {
                    Ok(true) => {
                        got = true;
                        // (Through TLS a short read says nothing of the socket.)
                        if c.end - before < room && c.tls.is_none() {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            if got {
                c.read_at = Instant::now();
            }
            if got || c.closed {
                self.ready.push(i);
            }
            if c.end == c.buf.len() && c.start == 0 && !c.closed {
                self.pending_reads.push(i);
            }
        }
        Ok(())
    }
}

/// Plaintext from a TLS session: what it holds, else what the socket brings (its
/// handshake answers written at once). `WouldBlock` once the socket is drained and no
/// plaintext is left; `Ok(0)` at the end of the stream.
fn read_tls(tls: &mut ClientConnection, sock: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        match tls.read_tls(sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        tls.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        send_tls(tls, sock)?;
    }
}

/// Writes the records a TLS session holds until the socket is full.
fn send_tls(tls: &mut ClientConnection, sock: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(_) => {}
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::NotConnected =>
            {
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
