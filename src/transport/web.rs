//! The browser client's transport: HTTP/1.1 for the page, then a WebSocket that
//! carries the chat protocol: plain (`--web-listen`), or inside TLS
//! (`--web-tls-listen`: `https://` and `wss://`).
//!
//! One listener serves both. The transport is generic over its byte stream
//! ([`Stream`]): the socket itself for the plain listener (no extra copy, no dynamic
//! call), the plaintext of a [`TlsTransport`] for HTTPS, which uses the TLS
//! listener's certificate and key (`--tls-cert`, `--tls-key`, reloaded on SIGHUP). A connection starts by reading an HTTP request head
//! (at most [`MAX_HEAD`] bytes):
//!
//! - `GET /`, `/app.js`, `/app.css`: the page (the files in `src/web/`, compiled into
//!   the binary), answered with `Connection: close`.
//! - `GET /ws`: the `Host` is checked, then the `Origin` (the page's own origin, or one
//!   listed with `--web-origin`; a request without `Origin` does not come from a
//!   browser page and is let through), then `101 Switching Protocols`. The page's own
//!   origin is `https://` + `Host` over HTTPS; over plain HTTP `http://` or
//!   `https://` + `Host` (behind a proxy that terminates TLS the page is https). So that a page
//!   of another site whose name was pointed at this server (DNS rebinding) is not
//!   taken for the page's own, the `Host` must name this server: the address the
//!   connection came in on (with its port; a loopback address also as `localhost`),
//!   or the host of a `--web-origin` ([`host_allowed`]).
//! - anything else: a short 404; a malformed head 400, one too long 431, a refused
//!   host or origin 403.
//!
//! After an HTTP answer the write side is shut once the answer is out (over TLS:
//! `close_notify`), the rest of
//! the request is read and dropped, and the connection closes when the browser closes
//! its end (or at the login timeout, which the hub counts for every connection).
//!
//! After the upgrade, one WebSocket text message is one protocol envelope: exactly
//! the bytes that follow the 4-byte length on TCP. [`WebTransport::read`] hands the
//! hub each incoming message as `length + envelope`; [`WebTransport::write_vectored`]
//! cuts the hub's length-prefixed stream back into frames and sends each as one text
//! message. tungstenite's [`WebSocketContext`] decodes the frames (masking,
//! fragments, control frames, UTF-8, size limits) and answers pings and closes; the
//! socket is ours: it reads through an adapter that counts what it takes, and writes
//! into our output buffer, which [`WebTransport::flush`] hands to the socket.
//!
//! Limits: a message longer than `--max-frame` is refused from its frame header (the
//! hub is handed an oversized length, so it answers `ErrorResMes` 413 as on TCP and
//! closes), and the WebSocket is closed with status 1009. Other protocol violations
//! close with 1002 (1007 for text that is not UTF-8). More than
//! [`MAX_CONTROL_FRAMES`] pings or pongs in [`CONTROL_WINDOW`] close with 1008.
//! Socket input is taken at most [`RAW_PER_TURN`] bytes at a time without handing the
//! hub anything (a stream of control frames or empty fragments): then `read` says
//! [`NextTurn`] and the reactor gives the other connections their turn.

use std::cell::Cell;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{Request, create_response, write_response};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, FrameHeader};
use tungstenite::protocol::{Message, Role, WebSocketConfig, WebSocketContext};

use crate::proto::HEADER_LEN;
use crate::transport::tls::{TlsTransport, TlsWrapper};
use crate::transport::{NextTurn, ReloadError, Stream, Transport, Wrapper};

/// Largest HTTP request head accepted; longer gets 431 and a close.
pub const MAX_HEAD: usize = 8 * 1024;
/// Output held by a transport before it tells the hub to wait (`WouldBlock`), so that
/// the hub's own limit for slow readers (`--max-outbuf`) applies as on TCP.
pub const OUT_BOUND: usize = 64 * 1024;
/// Socket bytes read without producing protocol bytes before `read` yields.
pub const RAW_PER_TURN: usize = 256 * 1024;
/// Pings and pongs allowed from one client per [`CONTROL_WINDOW`].
pub const MAX_CONTROL_FRAMES: u32 = 30;
pub const CONTROL_WINDOW: Duration = Duration::from_secs(10);
/// A buffer larger than this is given back once empty.
const KEEP_BUFFER: usize = 8 * 1024;
/// What is read and dropped after an HTTP answer before closing regardless.
const MAX_DRAIN: usize = 64 * 1024;

const PAGE_HTML: &str = include_str!("web/index.html");
const PAGE_JS: &str = include_str!("web/app.js");
const PAGE_CSS: &str = include_str!("web/app.css");

/// The page's Content-Security-Policy: its own script, style and WebSocket, nothing
/// from anywhere else, no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// What the web listener is configured with.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Largest message accepted (the hub's `max_frame`), and announced to the page.
    pub max_frame: usize,
    /// Origins allowed to open the WebSocket besides the page's own
    /// (`scheme://host[:port]`).
    pub origins: Vec<String>,
}

/// What every connection of the listener shares: the answers, built once.
struct Shared {
    page: Vec<u8>,
    js: Vec<u8>,
    css: Vec<u8>,
    origins: Vec<String>,
    ws: WebSocketConfig,
    max_frame: usize,
    /// Refused origins: the first is logged at once, then one line per
    /// [`REFUSAL_LOG_INTERVAL`] with the count, so a flood of them costs little log.
    refused: Cell<u64>,
    refusal_logged: Cell<Option<Instant>>,
}

const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Shared {
    /// `what`: `origin "..."` or `host "..."`.
    fn log_refusal(&self, peer: SocketAddr, what: &str) {
        self.refused.set(self.refused.get() + 1);
        let due = self
            .refusal_logged
            .get()
            .is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL);
        if due {
            let n = self.refused.replace(0);
            let others = if n > 1 {
                format!(" ({} refused in all since the last such line)", n)
            } else {
                String::new()
            };
            log::info!(
                "refused a WebSocket from {peer}: {what} is not allowed (see --web-origin){others}"
            );
            self.refusal_logged.set(Some(Instant::now()));
        }
    }
}

/// Wraps the web listener's connections: plain, or inside TLS.
pub struct WebWrapper {
    shared: Rc<Shared>,
    tls: Option<TlsWrapper>,
}

impl WebWrapper {
    /// Checks the configuration and builds the page's answers.
    pub fn new(cfg: &WebConfig) -> Result<WebWrapper, BadOrigin> {
        let origins = cfg
            .origins
            .iter()
            .map(|o| normalize_origin(o))
            .collect::<Result<Vec<_>, _>>()?;
        let html = PAGE_HTML.replace("{{MAX_FRAME}}", &cfg.max_frame.to_string());
        let ws = WebSocketConfig::default()
            // Allocated for every connection: small, since idle pages are the many
            // (a long message is read a kilobyte at a time).
            .read_buffer_size(1024)
            .write_buffer_size(0)
            .max_message_size(Some(cfg.max_frame))
            .max_frame_size(Some(cfg.max_frame));
        Ok(WebWrapper {
            shared: Rc::new(Shared {
                page: ok_response("text/html; charset=utf-8", html.as_bytes()),
                js: ok_response("text/javascript; charset=utf-8", PAGE_JS.as_bytes()),
                css: ok_response("text/css; charset=utf-8", PAGE_CSS.as_bytes()),
                origins,
                ws,
                max_frame: cfg.max_frame,
                refused: Cell::new(0),
                refusal_logged: Cell::new(None),
            }),
            tls: None,
        })
    }

    /// The same page and WebSocket inside TLS, with `tls`'s certificate (HTTPS);
    /// shares this wrapper's answers.
    pub fn https(&self, tls: TlsWrapper) -> WebWrapper {
        WebWrapper {
            shared: self.shared.clone(),
            tls: Some(tls),
        }
    }
}

impl Wrapper for WebWrapper {
    fn name(&self) -> &str {
        match self.tls {
            None => "web",
            Some(_) => "HTTPS",
        }
    }

    fn wrap(&mut self, sock: TcpStream, peer: SocketAddr) -> io::Result<Box<dyn Transport>> {
        let shared = self.shared.clone();
        let local = sock.local_addr().ok();
        Ok(match &self.tls {
            None => Box::new(WebTransport::new(sock, peer, local, shared)),
            Some(tls) => Box::new(WebTransport::<TlsTransport>::new(
                tls.connection(sock)?,
                peer,
                local,
                shared,
            )),
        })
    }

    fn reload(&mut self) -> Result<(), ReloadError> {
        match &mut self.tls {
            Some(tls) => tls.reload(),
            None => Ok(()),
        }
    }
}

/// A `--web-origin` that is not `scheme://host[:port]` (the value as given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadOrigin(pub String);

impl std::fmt::Display for BadOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--web-origin {:?}: give an origin such as https://chat.example.com or http://localhost:8080",
            self.0
        )
    }
}

impl std::error::Error for BadOrigin {}

/// `scheme://host[:port]`, lower case, no trailing slash; anything else is refused.
fn normalize_origin(o: &str) -> Result<String, BadOrigin> {
    let lower = o.trim().trim_end_matches('/').to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(['/', '?', '#', ' ']) => Ok(lower),
        _ => Err(BadOrigin(o.to_string())),
    }
}

/// `host[:port]` split, `[v6]` unbracketed; `None` if it is no such thing.
fn split_host(hostport: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (name, after) = rest.split_once(']')?;
        match after {
            "" => (name, None),
            p => (name, Some(p.strip_prefix(':')?)),
        }
    } else {
        match hostport.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (hostport, None),
        }
    };
    if name.is_empty() {
        return None;
    }
    match port {
        None => Some((name, None)),
        Some(p) => Some((name, Some(p.parse().ok()?))),
    }
}

/// Whether a WebSocket upgrade with this `Host` may go on: none (not a browser: every
/// browser sends one), one that names this server at the address the connection came
/// in on (`local`: the address and port, the port left out if it is the scheme's
/// default; for a loopback address also `localhost`), or the host of one of the
/// `allowed` origins (`scheme://host[:port]`; a `Host` without a port matches it by
/// name, as behind a proxy).
pub fn host_allowed(
    host: Option<&str>,
    local: Option<SocketAddr>,
    allowed: &[String],
    tls: bool,
) -> bool {
    let Some(host) = host else { return true };
    let host = host.trim().to_ascii_lowercase();
    let Some((name, port)) = split_host(&host) else {
        return false;
    };
    if let Some(local) = local {
        let default = if tls { 443 } else { 80 };
        let ip = local.ip().to_canonical();
        let named = name
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|a| a.to_canonical())
            == Some(ip)
            || ip.is_loopback() && (name == "localhost" || name.ends_with(".localhost"));
        if named && port.unwrap_or(default) == local.port() {
            return true;
        }
    }
    allowed.iter().any(|origin| {
        let (scheme, authority) = origin.split_once("://").unwrap_or(("", origin));
        let Some((oname, oport)) = split_host(authority) else {
            return false;
        };
        let oport = oport.unwrap_or(if scheme == "https" { 443 } else { 80 });
        oname == name && port.is_none_or(|p| p == oport)
    })
}

/// Whether a WebSocket upgrade with this `Origin` may go on: none (not a browser
/// page), the page's own (the `Host` it asked for, over https; over http too unless
/// `tls`, since behind a proxy that terminates TLS the page is https while the
/// request arrives plain), or one of `allowed`.
pub fn origin_allowed(
    origin: Option<&str>,
    host: Option<&str>,
    allowed: &[String],
    tls: bool,
) -> bool {
    let Some(origin) = origin else { return true };
    let origin = origin.trim().to_ascii_lowercase();
    if let Some(host) = host.map(|h| h.trim().to_ascii_lowercase())
        && !host.is_empty()
        && (origin.strip_prefix("https://") == Some(host.as_str())
            || !tls && origin.strip_prefix("http://") == Some(host.as_str()))
    {
        return true;
    }
    allowed.contains(&origin)
}

fn ok_response(content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n\
         Referrer-Policy: no-referrer\r\nContent-Security-Policy: {CSP}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn error_response(status: &str, text: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n{text}\n",
        text.len() + 1
    )
    .into_bytes()
}

enum Phase {
    /// Reading the request head.
    Head(Vec<u8>),
    /// An HTTP answer is queued; once it is out, the write side is shut, and what the
    /// client still sends is dropped until it closes.
    Answered { shut: bool, drained: usize },
    /// Upgraded.
    Ws(Box<Ws>),
}

struct Ws {
    ctx: WebSocketContext,
    /// The hub's output: a frame not yet complete.
    cutter: Cutter,
    /// Input for the hub: `length + envelope` of the last message, from `in_pos`.
    input: Vec<u8>,
    in_pos: usize,
    /// The transport ended the WebSocket itself (a protocol violation): what is
    /// queued goes out, then the connection closes.
    ended: bool,
    /// The close status to send when the connection is dropped (normal, or 1009
    /// after an oversized message).
    close_code: CloseCode,
    control: (Instant, u32),
}

/// One web connection over `S`: a plain socket, or TLS.
pub struct WebTransport<S: Stream = TcpStream> {
    sock: S,
    peer: SocketAddr,
    /// The address the connection came in on: what a `Host` may name.
    local: Option<SocketAddr>,
    shared: Rc<Shared>,
    /// Bytes for the socket (HTTP answers, WebSocket frames), from `sent`.
    out: Vec<u8>,
    sent: usize,
    /// Socket bytes read since the reactor last got `WouldBlock` or [`NextTurn`].
    raw: usize,
    /// The adapter stopped reading at `RAW_PER_TURN`: its `WouldBlock` was ours.
    yielded: bool,
    phase: Phase,
}

/// What tungstenite reads from and writes to: the socket for reading (counted and
/// capped), the transport's output buffer for writing (never blocks).
struct Io<'a, S> {
    sock: &'a mut S,
    out: &'a mut Vec<u8>,
    raw: &'a mut usize,
    yielded: &'a mut bool,
}

impl<S: Stream> Read for Io<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if *self.raw >= RAW_PER_TURN {
            *self.yielded = true;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match self.sock.read(buf) {
            Ok(n) => {
                *self.raw += n;
                Ok(n)
            }
            // The stream (TLS) took its share of the socket: so do we.
            Err(e) if NextTurn::is(&e) => {
                *self.yielded = true;
                Err(io::ErrorKind::WouldBlock.into())
            }
            Err(e) => Err(e),
        }
    }
}

impl<S> Write for Io<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<S: Stream> WebTransport<S> {
    fn new(
        sock: S,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        shared: Rc<Shared>,
    ) -> WebTransport<S> {
        WebTransport {
            sock,
            peer,
            local,
            shared,
            out: Vec::new(),
            sent: 0,
            raw: 0,
            yielded: false,
            phase: Phase::Head(Vec::new()),
        }
    }

    fn pending(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Writes the output buffer, and what the stream holds of its own, until all is
    /// out (true) or the socket is full.
    fn write_out(&mut self) -> io::Result<bool> {
        while self.sent < self.out.len() {
            match self.sock.write(&self.out[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.sent >= OUT_BOUND {
                        self.out.drain(..self.sent);
                        self.sent = 0;
                    }
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.sent = 0;
        if self.out.capacity() > KEEP_BUFFER {
            // A burst (a login reply listing thousands) is not kept by an idle client.
            self.out = Vec::new();
        }
        self.sock.flush()
    }

    /// Queues an HTTP answer and moves on to closing.
    fn answer(&mut self, bytes: &[u8], what: &str) {
        log::debug!("{} {what}", self.peer);
        self.out.extend_from_slice(bytes);
        self.phase = Phase::Answered {
            shut: false,
            drained: 0,
        };
    }

    /// A request head is complete in `head[..size]`: answer it.
    fn route(&mut self, req: Request, tail: Vec<u8>) {
        let path = req.uri().path().to_string();
        let shared = self.shared.clone();
        match path.as_str() {
            "/" | "/index.html" => self.answer(&shared.page, "GET / 200"),
            "/app.js" => self.answer(&shared.js, "GET /app.js 200"),
            "/app.css" => self.answer(&shared.css, "GET /app.css 200"),
            "/ws" => self.upgrade(req, tail),
            _ => self.answer(&error_response("404 Not Found", "not found"), "404"),
        }
    }

    fn upgrade(&mut self, req: Request, tail: Vec<u8>) {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let (origin, host) = (header("Origin"), header("Host"));
        if !host_allowed(host, self.local, &self.shared.origins, S::TLS) {
            let text = "this server does not answer to this host name \
                        (its operator can allow it with --web-origin)";
            let what = format!("host {:?}", host.unwrap_or(""));
            self.shared.log_refusal(self.peer, &what);
            return self.answer(&error_response("403 Forbidden", text), "403 host");
        }
        if !origin_allowed(origin, host, &self.shared.origins, S::TLS) {
            let text = "this origin may not open the chat's WebSocket";
            let what = format!("origin {:?}", origin.unwrap_or(""));
            self.shared.log_refusal(self.peer, &what);
            return self.answer(&error_response("403 Forbidden", text), "403 origin");
        }
        let resp = match create_response(&req) {
            Ok(r) => r,
            Err(e) => {
                let text = format!("expected a WebSocket upgrade: {e}");
                return self.answer(&error_response("400 Bad Request", &text), "400 upgrade");
            }
        };
        if write_response(&mut self.out, &resp).is_err() {
            return self.answer(
                &error_response("400 Bad Request", "bad upgrade"),
                "400 upgrade",
            );
        }
        log::debug!("{} WebSocket open", self.peer);
        let ctx = WebSocketContext::from_partially_read(tail, Role::Server, Some(self.shared.ws));
        self.phase = Phase::Ws(Box::new(Ws {
            ctx,
            cutter: Cutter::default(),
            input: Vec::new(),
            in_pos: 0,
            ended: false,
            close_code: CloseCode::Normal,
            control: (Instant::now(), 0),
        }));
    }

    /// Reads the request head; answers it once complete.
    fn read_head(&mut self) -> io::Result<()> {
        let Phase::Head(head) = &mut self.phase else {
            return Ok(());
        };
        let start = head.len();
        // Read through a small buffer: a head is usually a few hundred bytes, and
        // what a connection allocates while it waits is what idle clients cost.
        let mut chunk = [0u8; 1024];
        let want = chunk.len().min(MAX_HEAD - start);
        let n = self.sock.read(&mut chunk[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
        // Parse only once the blank line that ends the head has arrived.
        let from = start.saturating_sub(3);
        let ended = head[from..].windows(4).any(|w| w == b"\r\n\r\n")
            || head[start.saturating_sub(1)..]
                .windows(2)
                .any(|w| w == b"\n\n");
        if !ended {
            if head.len() >= MAX_HEAD {
                let r = error_response("431 Request Header Fields Too Large", "request too long");
                self.answer(&r, "431");
            }
            return Ok(());
        }
        match Request::try_parse(head) {
            Ok(Some((size, req))) => {
                let tail = head[size..].to_vec();
                self.route(req, tail);
            }
            Err(WsError::Protocol(ProtocolError::WrongHttpMethod)) => {
                self.answer(&error_response("404 Not Found", "not found"), "404 method");
            }
            Ok(None) | Err(_) => {
                let r = error_response("400 Bad Request", "not an HTTP request");
                self.answer(&r, "400");
            }
        }
        Ok(())
    }

    /// After an HTTP answer: writes it, shuts the write side, drops what the client
    /// still sends; `Ok(0)` once it closes.
    fn read_answered(&mut self) -> io::Result<usize> {
        if !self.write_out()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let Phase::Answered { shut, drained } = &mut self.phase else {
            return Ok(0);
        };
        if !*shut {
            *shut = true;
            self.sock.shutdown_write();
        }
        let mut scratch = [0u8; 4096];
        loop {
            match self.sock.read(&mut scratch) {
                Ok(0) => return Ok(0),
                Ok(n) => {
                    *drained += n;
                    if *drained > MAX_DRAIN {
                        return Ok(0);
                    }
                }
                // Its share for now (TLS records with nothing in them for us).
                Err(e) if NextTurn::is(&e) || e.kind() == io::ErrorKind::Interrupted => {
                    return Err(e);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                // Reset by the client (or TLS it broke): it has gone, which is all we wait for.
                Err(_) => return Ok(0),
            }
        }
    }

    /// Upgraded: the next protocol bytes, decoded from WebSocket messages.
    fn read_ws(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Phase::Ws(ws) = &mut self.phase else {
                return Ok(0);
            };
            if ws.in_pos < ws.input.len() {
                let n = buf.len().min(ws.input.len() - ws.in_pos);
                buf[..n].copy_from_slice(&ws.input[ws.in_pos..ws.in_pos + n]);
                ws.in_pos += n;
                return Ok(n);
            }
            if ws.ended {
                // The closing frame, and what was queued before it, go out if the
                // socket takes them. A peer that broke the protocol and stopped
                // reading is not waited for: its socket would never take them, and
                // nothing else would end the session.
                return if self.write_out()? {
                    Ok(0)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "WebSocket closed for a protocol error; the peer takes nothing more",
                    ))
                };
            }
            let mut io = Io {
                sock: &mut self.sock,
                out: &mut self.out,
                raw: &mut self.raw,
                yielded: &mut self.yielded,
            };
            let fail = match ws.ctx.read(&mut io) {
                Ok(Message::Text(t)) => {
                    ws.set_input(t.as_bytes());
                    None
                }
                Ok(Message::Binary(b)) => {
                    ws.set_input(&b);
                    None
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => {
                    let (since, count) = &mut ws.control;
                    if since.elapsed() > CONTROL_WINDOW {
                        *since = Instant::now();
                        *count = 0;
                    }
                    *count += 1;
                    (*count > MAX_CONTROL_FRAMES)
                        .then_some((CloseCode::Policy, "too many pings".to_string()))
                }
                // The next read sends the answering close and ends.
                Ok(Message::Close(_) | Message::Frame(_)) => None,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.raw = 0;
                    let ours = std::mem::take(&mut self.yielded);
                    self.write_out()?;
                    return Err(if ours { NextTurn::error() } else { e });
                }
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => None,
                Err(WsError::Io(e)) => return Err(e),
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    let _ = self.write_out();
                    return Ok(0);
                }
                Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                    return Ok(0);
                }
                Err(WsError::Capacity(e)) => {
                    // The hub refuses it as it refuses an oversized TCP frame (413, then
                    // a close), with its size (as far as it is known: the fragments so
                    // far); the WebSocket closes with 1009.
                    log::debug!("{}: {e}", self.peer);
                    let size = match e {
                        CapacityError::MessageTooLong { size, .. } => size,
                        CapacityError::TooManyHeaders => self.shared.max_frame + 1,
                    };
                    let size =
                        u32::try_from(size.max(self.shared.max_frame + 1)).unwrap_or(u32::MAX);
                    ws.close_code = CloseCode::Size;
                    ws.set_input(&[]);
                    ws.input[..HEADER_LEN].copy_from_slice(&size.to_be_bytes());
                    ws.ended = true;
                    ws.in_pos = 0;
                    continue;
                }
                Err(WsError::Utf8(e)) => Some((CloseCode::Invalid, format!("not UTF-8: {e}"))),
                Err(WsError::Protocol(e)) => Some((CloseCode::Protocol, e.to_string())),
                Err(e) => Some((CloseCode::Error, e.to_string())),
            };
            if let Some((code, reason)) = fail {
                log::debug!("{}: closing the WebSocket ({code}): {reason}", self.peer);
                let frame = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                let mut io = Io {
                    sock: &mut self.sock,
                    out: &mut self.out,
                    raw: &mut self.raw,
                    yielded: &mut self.yielded,
                };
                let _ = ws.ctx.close(&mut io, Some(frame));
                ws.ended = true;
            }
        }
    }
}

impl Ws {
    /// The next message for the hub: its length and its bytes.
    fn set_input(&mut self, msg: &[u8]) {
        if self.input.capacity() > KEEP_BUFFER && msg.len() <= KEEP_BUFFER {
            self.input = Vec::new();
        }
        self.input.clear();
        self.input
            .extend_from_slice(&(msg.len() as u32).to_be_bytes());
        self.input.extend_from_slice(msg);
        self.in_pos = 0;
    }
}

impl<S: Stream> Transport for WebTransport<S> {
    fn socket(&mut self) -> &mut TcpStream {
        self.sock.socket()
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match &self.phase {
                Phase::Head(_) => match self.read_head() {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                },
                Phase::Answered { .. } => return self.read_answered(),
                Phase::Ws(_) => return self.read_ws(buf),
            }
        }
    }

    fn write_vectored(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = iov.iter().map(|s| s.len()).sum();
        // No WebSocket (yet, or any more): the hub's frames have no reader. It writes
        // to such a connection only to refuse or close it.
        let Phase::Ws(ws) = &mut self.phase else {
            return Ok(total);
        };
        if ws.ended && ws.close_code != CloseCode::Size || !ws.ctx.can_write() {
            // The WebSocket is closing: what the hub still sends has no reader. Saying
            // so closes the session, so that a peer that stopped reading (and so never
            // takes the closing frame) does not stay online with what others send it
            // going nowhere.
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the WebSocket is closing",
            ));
        }
        if self.out.len() - self.sent > OUT_BOUND {
            self.write_out()?;
            if self.pending() > OUT_BOUND {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        let Phase::Ws(ws) = &mut self.phase else {
            return Ok(total);
        };
        let mut taken = 0;
        for s in iov {
            let take = s.len().min(OUT_BOUND - taken);
            ws.cutter
                .push(&s[..take], |frame| text_frame(frame, &mut self.out));
            taken += take;
            if taken == OUT_BOUND {
                break;
            }
        }
        self.write_out()?;
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<bool> {
        self.write_out()
    }
}

impl<S: Stream> Drop for WebTransport<S> {
    /// The hub closed the connection: the WebSocket says so, best effort.
    fn drop(&mut self) {
        if let Phase::Ws(ws) = &mut self.phase
            && ws.ctx.can_write()
        {
            let frame = CloseFrame {
                code: ws.close_code,
                reason: match ws.close_code {
                    CloseCode::Size => {
                        format!("message too big: at most {} bytes", self.shared.max_frame).into()
                    }
                    _ => "".into(),
                },
            };
            let mut io = Io {
                sock: &mut self.sock,
                out: &mut self.out,
                raw: &mut self.raw,
                yielded: &mut self.yielded,
            };
            let _ = ws.ctx.close(&mut io, Some(frame));
            let _ = self.write_out();
        }
    }
}

/// One protocol envelope as one WebSocket text message, appended to `out`.
fn text_frame(envelope: &[u8], out: &mut Vec<u8>) {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    // The hub writes JSON, which is UTF-8; a text message must be.
    let text = String::from_utf8_lossy(envelope);
    let _ = header.format(text.len() as u64, out);
    out.extend_from_slice(text.as_bytes());
}

/// Cuts a stream of length-prefixed frames, arriving in pieces of any size, into
/// the frames' bodies.
#[derive(Default)]
pub struct Cutter {
    partial: Vec<u8>,
}

impl Cutter {
    /// Takes all of `data`; calls `emit` with each body completed by it, in order.
    pub fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(&[u8])) {
        while !self.partial.is_empty() && !data.is_empty() {
            if self.partial.len() < HEADER_LEN {
                let take = (HEADER_LEN - self.partial.len()).min(data.len());
                self.partial.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.partial.len() < HEADER_LEN {
                    return;
                }
            }
            let want = HEADER_LEN + body_len(&self.partial);
            let take = (want - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == want {
                emit(&self.partial[HEADER_LEN..]);
                self.partial.clear();
            }
        }
        // Whole frames straight from the caller's bytes.
        while data.len() >= HEADER_LEN {
            let end = HEADER_LEN + body_len(data);
            if data.len() < end {
                break;
            }
            emit(&data[HEADER_LEN..end]);
            data = &data[end..];
        }
        self.partial.extend_from_slice(data);
        if self.partial.is_empty() && self.partial.capacity() > KEEP_BUFFER {
            self.partial = Vec::new();
        }
    }
}

fn body_len(frame: &[u8]) -> usize {
    u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bodies: &[&str]) -> Vec<u8> {
        let mut v = Vec::new();
        for b in bodies {
            v.extend_from_slice(&(b.len() as u32).to_be_bytes());
            v.extend_from_slice(b.as_bytes());
        }
        v
    }

    #[test]
    fn cutter_splits_at_every_byte() {
        let bodies = [
            "{\"type\":\"PongMes\",\"data\":\"{}\"}",
            "",
            "x",
            "héllo wörld",
        ];
        let stream = frames(&bodies);
        for a in 0..=stream.len() {
            for b in a..=stream.len() {
                let mut c = Cutter::default();
                let mut got: Vec<String> = Vec::new();
                for piece in [&stream[..a], &stream[a..b], &stream[b..]] {
                    c.push(piece, |f| got.push(String::from_utf8(f.to_vec()).unwrap()));
                }
                assert_eq!(got, bodies, "cut at {a} and {b}");
                assert!(c.partial.is_empty());
            }
        }
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://chat.example.com".to_string()];
        let host = Some("127.0.0.1:8080");
        let ok = |origin: Option<&str>, host: Option<&str>, allowed: &[String], tls: bool| {
            origin_allowed(origin, host, allowed, tls)
        };
        for tls in [false, true] {
            assert!(ok(None, host, &allowed, tls));
            assert!(ok(Some("HTTPS://127.0.0.1:8080"), host, &allowed, tls));
            assert!(ok(Some("https://chat.example.com"), host, &allowed, tls));
            assert!(!ok(Some("https://127.0.0.1:8081"), host, &allowed, tls));
            assert!(!ok(Some("http://127.0.0.1:8081"), host, &allowed, tls));
            assert!(!ok(Some("http://evil.example"), host, &allowed, tls));
            assert!(!ok(Some("null"), host, &allowed, tls));
            assert!(!ok(Some("http://127.0.0.1:8080"), None, &[], tls));
            assert!(!ok(Some("https://127.0.0.1:8080"), None, &[], tls));
            assert!(!ok(Some("http://"), Some(""), &[], tls));
        }
        // Plain HTTP: the page may be http, or https through a proxy that ends TLS.
        assert!(ok(Some("http://127.0.0.1:8080"), host, &allowed, false));
        // HTTPS: the page served here is https; an http page of the same host name is
        // another origin (another port, another server).
        assert!(!ok(Some("http://127.0.0.1:8080"), host, &allowed, true));
        assert!(!ok(Some("http://chat.example.com"), host, &allowed, true));
    }

    #[test]
    fn the_host_must_name_this_server() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let allowed = vec![
            "https://chat.example.com".to_string(),
            "http://other.example:8081".to_string(),
        ];
        let ok = |host: &str, tls: bool| host_allowed(Some(host), Some(local), &allowed, tls);
        for tls in [false, true] {
            for host in [
                "127.0.0.1:8080",
                "LOCALHOST:8080",
                "app.localhost:8080",
                "chat.example.com",
                "chat.example.com:443",
                "other.example:8081",
                "other.example",
            ] {
                assert!(ok(host, tls), "{host}");
            }
            for host in [
                // DNS rebinding: another site's name pointed at this address.
                "evil.example:8080",
                "evil.example",
                "127.0.0.1:8081",
                "127.0.0.1",
                "localhost",
                "chat.example.com:8080",
                "other.example:8080",
                "",
                ":8080",
                "127.0.0.1:x",
                "[::1]:8080",
            ] {
                assert!(!ok(host, tls), "{host}");
            }
        }
        assert!(host_allowed(None, Some(local), &[], false), "no browser");
        // The default port may be left out; an IPv6 address is bracketed.
        let v6: SocketAddr = "[::1]:443".parse().unwrap();
        assert!(host_allowed(Some("[::1]"), Some(v6), &[], true));
        assert!(host_allowed(Some("localhost"), Some(v6), &[], true));
        assert!(!host_allowed(Some("[::1]"), Some(v6), &[], false));
        // Not loopback: no `localhost`.
        let lan: SocketAddr = "192.0.2.7:80".parse().unwrap();
        assert!(host_allowed(Some("192.0.2.7"), Some(lan), &[], false));
        assert!(!host_allowed(Some("localhost"), Some(lan), &[], false));
    }

    #[test]
    fn configured_origins_are_checked() {
        assert_eq!(
            normalize_origin("https://Chat.Example.com/").unwrap(),
            "https://chat.example.com"
        );
        assert_eq!(
            normalize_origin("chat.example.com")
                .unwrap_err()
                .to_string(),
            "--web-origin \"chat.example.com\": give an origin such as \
             https://chat.example.com or http://localhost:8080"
        );
        assert!(normalize_origin("https://chat.example.com/path").is_err());
        assert!(normalize_origin("https://").is_err());
    }

    #[test]
    fn text_frames_carry_the_envelope() {
        let mut out = Vec::new();
        text_frame(b"{}", &mut out);
        assert_eq!(out, [0x81, 2, b'{', b'}']);
        out.clear();
        let long = vec![b'a'; 300];
        text_frame(&long, &mut out);
        assert_eq!(&out[..4], &[0x81, 126, 1, 44]);
        assert_eq!(out.len(), 4 + 300);
    }
}
