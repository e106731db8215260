//! The web listener inside TLS (`--web-tls-listen`) over real sockets, with a rustls
//! client trusting a CA generated at run time (`common/pki.rs`): the page over
//! `https://`, a `wss://` user and a plain TCP user talking, the origin check
//! (`https://` + Host), a plain HTTP request on the HTTPS port, and SIGHUP reloading
//! the certificate.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

use common::pki::{self, KeyFormat, Pki};
use common::tls::{Tls, alerts_only, client_config, try_connect};
use common::web::{WsClient, exchange, upgrade};
use common::{ServerProc, read_to_close};
use serde_json::json;

/// A TLS connection to `addr` trusting the CA in `ca`, handshake done; the error says
/// why it failed.
fn try_tls(addr: SocketAddr, ca: &Path) -> Result<Tls, String> {
    try_connect(addr, client_config(ca, rustls::DEFAULT_VERSIONS))
}

fn tls(addr: SocketAddr, ca: &Path) -> Tls {
    common::tls::connect(addr, ca)
}

/// The server with only the HTTPS listener besides the plain one; returns it and the
/// HTTPS address.
fn start(data: &Path, p: &Pki, extra: &[&str]) -> (ServerProc, SocketAddr) {
    common::tls::start(data, "--web-tls-listen", "HTTPS", p, extra)
}

/// An HTTPS exchange: sends `request`, reads to the end, which must be a TLS
/// `close_notify` (rustls reports a cut stream as an error). Returns the status line,
/// the head and the body.
fn https(addr: SocketAddr, ca: &Path, request: &str) -> (String, String, Vec<u8>) {
    exchange(tls(addr, ca), request.as_bytes())
}

fn get(addr: SocketAddr, ca: &Path, path: &str) -> (String, String, Vec<u8>) {
    let port = addr.port();
    https(
        addr,
        ca,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nUser-Agent: test\r\n\r\n"),
    )
}

/// A `wss://` client speaking the protocol: one envelope per text message.
type Wss = WsClient<Tls>;

/// Opens `wss://localhost:PORT/ws` with this `Origin`; the error is the HTTP status.
fn wss_try(addr: SocketAddr, ca: &Path, origin: Option<&str>) -> Result<Wss, u16> {
    let url = format!("wss://localhost:{}/ws", addr.port());
    upgrade(tls(addr, ca), &url, origin)
}

/// The page's own origin, as a browser on `https://localhost:PORT/` sends it.
fn own_origin(addr: SocketAddr) -> String {
    format!("https://localhost:{}", addr.port())
}

/// Registers `id` and logs in over a new `wss://` connection from the page's origin.
fn wss_online(addr: SocketAddr, ca: &Path, id: i64) -> Wss {
    let mut c = wss_try(addr, ca, Some(&own_origin(addr))).expect("the page's own origin");
    c.join(id);
    c
}

#[test]
fn the_page_is_served_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki::make(dir.path(), "page", KeyFormat::Pkcs8);
    let (_s, addr) = start(&dir.path().join("data"), &p, &["--max-frame", "50000"]);
    let (status, head, body) = get(addr, &p.ca, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        head.contains("Content-Type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("Connection: close"), "{head}");
    let page = String::from_utf8(body).unwrap();
    assert!(page.contains("<title>Chat</title>"));
    assert!(
        page.contains(r#"<meta name="chat-max-frame" content="50000">"#),
        "{page}"
    );
    let (status, _, body) = get(addr, &p.ca, "/app.js");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let js = String::from_utf8(body).unwrap();
    // The page opens its WebSocket with wss:// when it was loaded over https.
    assert!(js.contains("'wss://'"), "app.js picks wss:// on https");
    let (status, _, _) = get(addr, &p.ca, "/nothing");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[test]
fn a_wss_user_and_a_tcp_user_talk() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki::make(dir.path(), "talk", KeyFormat::Pkcs8);
    let (s, addr) = start(&dir.path().join("data"), &p, &[]);
    let mut w = wss_online(addr, &p.ca, 100);
    // A TCP user that reads frames of up to 1 MiB (the seed's clients read 8 KiB).
    let mut t = s.connect();
    t.join(200);
    let n = w.recv_until("NotifyUserStatusMes");
    assert_eq!(
        n.data,
        json!({"userId": 200, "status": 0, "userName": "u200"})
    );

    w.send("SmsMes", json!({"content": "hello over wss"}));
    let (g, _) = t.recv_until("SmsMes");
    assert_eq!(g.data["content"], "hello over wss");
    assert_eq!(g.data["userId"], 100);

    t.send(
        "SmsPrivateMes",
        json!({"content": "and back over TCP", "toUserId": 100}),
    );
    let (r, _) = t.recv_until("SmsResMes");
    assert_eq!(r.data["code"], 200, "{r:?}");
    let g = w.recv_until("SmsPrivateMes");
    assert_eq!(g.data["content"], "and back over TCP");
    assert_eq!(g.data["userId"], 200);

    // A message longer than a TLS record (16 KiB) arrives whole, both ways.
    let long = "x".repeat(40_000);
    w.send("SmsMes", json!({"content": long}));
    let (g, _) = t.recv_until("SmsMes");
    assert_eq!(g.data["content"].as_str().unwrap().len(), long.len());
    t.send("SmsPrivateMes", json!({"content": long, "toUserId": 100}));
    let g = w.recv_until("SmsPrivateMes");
    assert_eq!(g.data["content"].as_str().unwrap().len(), long.len());

    // Closing the WebSocket logs the user out: the TCP user is told.
    w.ws.close(None).unwrap();
    t.wait_notice(100, 1);
}

#[test]
fn the_origin_must_be_the_https_page_or_listed() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki::make(dir.path(), "origin", KeyFormat::Pkcs8);
    let (_s, addr) = start(
        &dir.path().join("data"),
        &p,
        &["--web-origin", "https://chat.example.com"],
    );
    let port = addr.port();
    // An http:// page of the same host name is another origin: not this page.
    for origin in [
        format!("http://localhost:{port}"),
        format!("https://localhost:{}", port.wrapping_add(1)),
        "http://chat.example.com".to_string(),
        "https://evil.example".to_string(),
        "null".to_string(),
    ] {
        assert_eq!(
            wss_try(addr, &p.ca, Some(&origin)).err(),
            Some(403),
            "{origin}"
        );
    }
    for origin in [
        Some(own_origin(addr)),
        Some(format!("HTTPS://LOCALHOST:{port}")),
        Some("https://chat.example.com".to_string()),
        None,
    ] {
        let mut c = wss_try(addr, &p.ca, origin.as_deref()).expect("let in");
        c.send("PingMes", json!({}));
        assert_eq!(c.recv().kind, "PongMes", "{origin:?}");
    }
}

#[test]
fn plain_http_on_the_https_port_gets_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki::make(dir.path(), "plain", KeyFormat::Pkcs8);
    let (_s, addr) = start(&dir.path().join("data"), &p, &[]);
    let mut w = wss_online(addr, &p.ca, 1);
    for bytes in [
        &b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        &b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
           Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"[..],
    ] {
        let mut raw = TcpStream::connect(addr).unwrap();
        raw.write_all(bytes).unwrap();
        let got = read_to_close(&mut raw);
        // A TLS alert at most: no HTTP answer, nothing in the clear.
        assert!(alerts_only(&got), "{got:?}");
    }
    // The others did not notice.
    w.send("PingMes", json!({}));
    assert_eq!(w.recv().kind, "PongMes");
    let (status, _, _) = get(addr, &p.ca, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
}

#[test]
fn sighup_reloads_the_https_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let old = pki::make(dir.path(), "old", KeyFormat::Pkcs8);
    let new = pki::make(dir.path(), "new", KeyFormat::Sec1);
    let live = Pki::live(dir.path(), &old);
    let (mut s, addr) = start(&dir.path().join("data"), &live, &[]);
    let mut before = wss_online(addr, &old.ca, 1);

    live.install(&new);
    s.signal(libc::SIGHUP);
    s.wait_log("HTTPS: reloaded");
    // New connections get the new certificate; the WebSocket opened before goes on.
    let Err(err) = try_tls(addr, &old.ca) else {
        panic!("the old CA must not verify the new certificate");
    };
    assert!(err.contains("certificate"), "{err}");
    let mut after = wss_online(addr, &new.ca, 2);
    after.send("SmsMes", json!({"content": "after the reload"}));
    let g = before.recv_until("SmsMes");
    assert_eq!(g.data["content"], "after the reload");

    // A reload that fails keeps what was loaded and says why.
    pki::replace(&old.key, &live.key);
    s.signal(libc::SIGHUP);
    let line = s.wait_log("HTTPS: reload failed");
    assert!(line.contains("keeping what was loaded"), "{line}");
    let (status, _, _) = get(addr, &new.ca, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
}
