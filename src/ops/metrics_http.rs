//! `--metrics-listen ADDR`: `GET /metrics` in Prometheus's text format, on a thread of
//! its own.
//!
//! Each scrape asks the event loop for a copy of its counters ([`ControlHandle`]: a
//! channel and the loop's waker, answered at the loop's next turn), then renders the
//! text here, off the loop. The loop does no work between scrapes and the hot path
//! bumps plain fields, no atomics; a scrape costs the loop one copy of the counters
//! (a few hundred bytes). Each connection is served on a short-lived thread of its
//! own, at most [`MAX_CLIENTS`] at once (one more is answered 503 and closed), so an
//! idle or slow scraper never delays another; each has [`IO_TIMEOUT`] to send its
//! whole request (then 408) and as much to read the answer; a request head is at most
//! [`MAX_HEAD`] bytes. Anything but `GET /metrics` gets a plain 404, 405 or 400.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::metrics::{render, render_process};
use crate::ops::control::ControlHandle;
use crate::ops::deadline::{Clients, Timed};

/// How long a scraper may take to send its request, and then to read the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head read.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most connections served at once.
pub const MAX_CLIENTS: usize = 32;
/// How long the listener's thread may take to tell a client beyond [`MAX_CLIENTS`]
/// it is busy (a short answer into a new connection's empty send buffer).
const BUSY_TIMEOUT: Duration = Duration::from_millis(100);
/// How long the event loop may take to copy its counters.
const LOOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The running metrics listener; stopped when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    clients: Arc<Clients<TcpStream>>,
}

impl MetricsServer {
    pub fn start(listener: TcpListener, control: ControlHandle) -> io::Result<MetricsServer> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let clients = Arc::new(Clients::new("chat-metrics-conn", MAX_CLIENTS));
        let thread = {
            let stop = stop.clone();
            let clients = clients.clone();
            std::thread::Builder::new()
                .name("chat-metrics".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        match conn {
                            Ok(c) => {
                                let control = control.clone();
                                if let Err((mut c, why)) =
                                    clients.serve(c, move |c| serve(c, &control))
                                {
                                    log::debug!("metrics: {why}");
                                    let body = format!("503 Service Unavailable: {why}\n");
                                    reply_within(
                                        &mut c,
                                        BUSY_TIMEOUT,
                                        503,
                                        "Service Unavailable",
                                        "text/plain",
                                        body.as_bytes(),
                                    );
                                }
                            }
                            Err(e) => {
                                log::debug!("metrics: accept failed: {e}");
                                if crate::sys::is_resource_exhaustion(&e) {
                                    std::thread::sleep(Duration::from_millis(100));
                                }
                            }
                        }
                    }
                })?
        };
        log::info!("metrics at http://{addr}/metrics");
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
            clients,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.clients.stop();
    }
}

/// What a request head asks for.
fn route(head: &[u8]) -> Result<(), (u16, &'static str)> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).map_err(|_| (400, "Bad Request"))?;
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err((400, "Bad Request"));
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return Err((400, "Bad Request"));
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Err((404, "Not Found"));
    }
    if method != "GET" && method != "HEAD" {
        return Err((405, "Method Not Allowed"));
    }
    Ok(())
}

/// Reads the request head: up to the blank line, at most [`MAX_HEAD`] bytes.
fn read_head(mut conn: Timed<'_, TcpStream>) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(Some(head))
}

fn serve(mut conn: TcpStream, control: &ControlHandle) {
    let head = match read_head(Timed::new(&conn, IO_TIMEOUT)) {
        Ok(Some(h)) => h,
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            let body = format!("408 Request Timeout: the request took over {IO_TIMEOUT:?}\n");
            reply(
                &mut conn,
                408,
                "Request Timeout",
                "text/plain",
                body.as_bytes(),
            );
            return;
        }
        Ok(None) => {
            reply(
                &mut conn,
                400,
                "Bad Request",
                "text/plain",
                b"bad request\n",
            );
            return;
        }
        Err(_) => return,
    };
    if let Err((code, reason)) = route(&head) {
        let body = format!("{code} {reason}: this server answers GET /metrics\n");
        reply(&mut conn, code, reason, "text/plain", body.as_bytes());
        return;
    }
    match control.metrics(LOOP_TIMEOUT) {
        Ok(snap) => {
            let mut text = render(&snap);
            text.push_str(&render_process(crate::sys::process_stats().as_ref()));
            let body: &[u8] = if head.starts_with(b"HEAD ") {
                b""
            } else {
                text.as_bytes()
            };
            reply(
                &mut conn,
                200,
                "OK",
                "text/plain; version=0.0.4; charset=utf-8",
                body,
            );
        }
        Err(e) => {
            let body = format!("{e}\n");
            reply(
                &mut conn,
                503,
                "Service Unavailable",
                "text/plain",
                body.as_bytes(),
            );
        }
    }
}

fn reply(conn: &mut TcpStream, code: u16, reason: &str, ctype: &str, body: &[u8]) {
    reply_within(conn, IO_TIMEOUT, code, reason, ctype, body);
}

fn reply_within(
    conn: &mut TcpStream,
    within: Duration,
    code: u16,
    reason: &str,
    ctype: &str,
    body: &[u8],
) {
    let mut conn = Timed::new(&*conn, within);
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Ok(()));
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Ok(()));
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n").unwrap_err().0, 405);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n").unwrap_err().0, 404);
        assert_eq!(route(b"\xff\xfe garbage\r\n\r\n").unwrap_err().0, 400);
        assert_eq!(route(b"GET /metrics\r\n\r\n").unwrap_err().0, 400);
        assert_eq!(route(b"GET /metrics SMTP/1 x\r\n\r\n").unwrap_err().0, 400);
    }
}
