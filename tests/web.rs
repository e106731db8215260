//! The web listener (`--web-listen`) over real sockets: the page and its 404s, the
//! request head's bounds, the WebSocket upgrade and its origin check, the protocol
//! carried one envelope per text message, its limits (oversized messages, garbage,
//! control-frame floods, the login timeout, rate limits, slow readers), and a
//! WebSocket user and a TCP user talking to each other.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;

use common::web::{WsClient, exchange, upgrade};
use common::{Got, ServerProc, WAIT, connect, online};
use serde_json::json;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

/// A server with the web listener; returns it and the web address.
fn start(extra: &[&str]) -> (ServerProc, SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let args = [&["--web-listen", "127.0.0.1:0"], extra].concat();
    let (s, web) = ServerProc::start_listener(dir.path(), &args, "web");
    (s, web, dir)
}

/// An HTTP exchange: sends `request` as is, reads to the end (the server closes).
/// Returns the status line, the head and the body.
fn http(addr: SocketAddr, request: &[u8]) -> (String, String, Vec<u8>) {
    exchange(connect(addr), request)
}

fn get(addr: SocketAddr, path: &str) -> (String, String, Vec<u8>) {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: test\r\n\r\n").as_bytes(),
    )
}

fn ws_try(addr: SocketAddr, origin: Option<&str>) -> Result<WsClient, u16> {
    upgrade(connect(addr), &format!("ws://{addr}/ws"), origin)
}

fn ws(addr: SocketAddr) -> WsClient {
    ws_try(addr, Some(&format!("http://{addr}"))).expect("the page's own origin is let in")
}

/// Registers `id` (name `u<id>`, password `pw<id>`) and logs in over a new WebSocket.
fn ws_online(addr: SocketAddr, id: i64) -> WsClient {
    let mut c = ws(addr);
    c.join(id);
    c
}

#[test]
fn the_page_is_served_and_everything_else_is_404() {
    let (_s, web, _d) = start(&["--max-frame", "50000"]);
    let (status, head, body) = get(web, "/");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        head.contains("Content-Type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("Connection: close"), "{head}");
    assert!(
        head.contains("Content-Security-Policy: default-src 'none'"),
        "{head}"
    );
    let page = String::from_utf8(body).unwrap();
    assert!(page.contains("<title>Chat</title>"));
    // The page is told the server's frame limit.
    assert!(
        page.contains(r#"<meta name="chat-max-frame" content="50000">"#),
        "{page}"
    );
    // Nothing from other hosts.
    assert!(!page.contains("http://") && !page.contains("https://"));

    let (status, head, body) = get(web, "/app.js");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(head.contains("Content-Type: text/javascript"), "{head}");
    assert!(String::from_utf8(body).unwrap().contains("LoginMes"));
    let (status, head, _) = get(web, "/app.css?v=1");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(head.contains("Content-Type: text/css"), "{head}");

    for path in ["/nothing", "/ws/", "/../etc/passwd", "/index.htm"] {
        let (status, _, body) = get(web, path);
        assert_eq!(status, "HTTP/1.1 404 Not Found", "{path}");
        assert_eq!(body, b"not found\n");
    }
    let (status, _, _) = http(
        web,
        format!("POST / HTTP/1.1\r\nHost: {web}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[test]
fn bad_request_heads_are_answered_and_closed() {
    let (s, web, _d) = start(&[]);
    let (status, _, _) = http(web, b"\x00\x01\x02 garbage\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    // A head that never ends: refused at the bound, not buffered.
    let mut long = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 9000));
    let (status, _, _) = http(web, &long);
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
    // The plain listener is unaffected.
    let mut c = online(&s, 7);
    c.expect_nothing_pending();
}

#[test]
fn the_upgrade_checks_the_origin() {
    let (_s, web, _d) = start(&[
        "--web-origin",
        "https://chat.example.com,http://other.example:8080",
    ]);
    assert_eq!(ws_try(web, Some("http://evil.example")).err(), Some(403));
    assert_eq!(ws_try(web, Some("null")).err(), Some(403));
    assert_eq!(ws_try(web, Some("http://127.0.0.1:1")).err(), Some(403));
    // The page's own origin, listed origins, and clients that are no browser page.
    for origin in [
        Some(format!("http://{web}")),
        Some("https://chat.example.com".to_string()),
        Some("http://other.example:8080".to_string()),
        None,
    ] {
        let mut c = ws_try(web, origin.as_deref()).expect("let in");
        c.send("PingMes", json!({}));
        assert_eq!(c.recv().kind, "PongMes", "{origin:?}");
    }
    // A GET /ws that is no upgrade.
    let (status, _, _) = get(web, "/ws");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
}

/// An upgrade request for `/ws` with this `Host` and `Origin`, as a browser page
/// sends it; returns the status line and the body of a refusal.
fn upgrade_with_host(web: SocketAddr, host: &str, origin: &str) -> (String, String) {
    let mut s = connect(web);
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    let mut b = [0u8; 1];
    // The head, then (for a refusal) the body up to the close.
    while !all.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        all.push(b[0]);
    }
    let head = String::from_utf8(all).unwrap();
    let status = head.lines().next().unwrap().to_string();
    let mut body = Vec::new();
    if !status.starts_with("HTTP/1.1 101") {
        s.read_to_end(&mut body).unwrap();
    }
    (status, String::from_utf8(body).unwrap())
}

#[test]
fn the_upgrade_checks_the_host() {
    let (_s, web, _d) = start(&["--web-origin", "https://chat.example.com"]);
    let port = web.port();
    // A page of another site whose name now resolves here (DNS rebinding): its
    // Origin is its own Host, which names no address of this server.
    for host in [format!("evil.example:{port}"), "evil.example".into()] {
        let origin = format!("http://{host}");
        let (status, body) = upgrade_with_host(web, &host, &origin);
        assert_eq!(status, "HTTP/1.1 403 Forbidden", "{host}");
        assert!(body.contains("does not answer to this host name"), "{body}");
    }
    // Its own address, localhost names for a loopback listener, a --web-origin host.
    for (host, origin) in [
        (
            format!("127.0.0.1:{port}"),
            format!("http://127.0.0.1:{port}"),
        ),
        (
            format!("localhost:{port}"),
            format!("http://localhost:{port}"),
        ),
        ("chat.example.com".into(), "https://chat.example.com".into()),
    ] {
        let (status, _) = upgrade_with_host(web, &host, &origin);
        assert_eq!(status, "HTTP/1.1 101 Switching Protocols", "{host}");
    }
}

#[test]
fn a_websocket_user_and_a_tcp_user_talk() {
    let (s, web, _d) = start(&[]);
    let mut w = ws_online(web, 100);
    let mut t = online(&s, 200);
    let n = w.recv_until("NotifyUserStatusMes");
    assert_eq!(
        n.data,
        json!({"userId": 200, "status": 0, "userName": "u200"})
    );

    // Group messages, both ways.
    w.send(
        "SmsMes",
        json!({"content": "hello from the browser", "userId": 100}),
    );
    let g = t.recv_until("SmsMes").0;
    assert_eq!(g.data["content"], "hello from the browser");
    assert_eq!(g.data["userId"], 100);
    assert_eq!(g.data["userName"], "u100");
    t.send(
        "SmsMes",
        json!({"content": "hello from tcp", "userId": 200}),
    );
    let g = w.recv_until("SmsMes");
    assert_eq!(g.data["content"], "hello from tcp");
    assert_eq!(g.data["userName"], "u200");

    // Private messages, both ways, with the same answers.
    w.send(
        "SmsPrivateMes",
        json!({"toUserId": 200, "content": "psst", "msgId": "w1"}),
    );
    let p = t.recv_until("SmsPrivateMes").0;
    assert_eq!(
        (p.data["userId"].clone(), p.data["content"].clone()),
        (json!(100), json!("psst"))
    );
    let r = w.recv_until("SmsResMes");
    assert_eq!(r.data, json!({"code": 200, "error": "", "msgId": "w1"}));
    t.send(
        "SmsPrivateMes",
        json!({"toUserId": 100, "content": "psst back"}),
    );
    let p = w.recv_until("SmsPrivateMes");
    assert_eq!(p.data["content"], "psst back");
    assert_eq!(p.data["offline"], false);
    // Non-ASCII text arrives as it was sent.
    w.send("SmsMes", json!({"content": "José 李雷 🙂 \"quoted\""}));
    assert_eq!(
        t.recv_until("SmsMes").0.data["content"],
        "José 李雷 🙂 \"quoted\""
    );

    // The online list has both; a TCP logout reaches the browser user.
    w.send("OnlineUsersMes", json!({}));
    let l = w.recv_until("OnlineUsersResMes");
    assert_eq!(
        l.data["users"],
        json!([{"userId": 100, "userName": "u100"}, {"userId": 200, "userName": "u200"}])
    );
    t.send("LogoutMes", json!({}));
    let n = w.recv_until("NotifyUserStatusMes");
    assert_eq!(n.data["status"], 1);

    // Kept while offline, delivered at the next login over the WebSocket.
    let mut t = s.connect();
    assert_eq!(t.login(200, "pw200").data["code"], 200);
    w.send("LogoutMes", json!({}));
    assert_eq!(w.until_closed().0, Some(CloseCode::Normal));
    t.send(
        "SmsPrivateMes",
        json!({"toUserId": 100, "content": "while you were away"}),
    );
    assert_eq!(t.recv_until("SmsResMes").0.data["code"], 202);
    let mut w = ws(web);
    assert_eq!(w.login(100, "pw100").data["code"], 200);
    let p = w.recv_until("SmsPrivateMes");
    assert_eq!(p.data["content"], "while you were away");
    assert_eq!(p.data["offline"], true);
}

#[test]
fn a_message_over_max_frame_is_refused_with_1009() {
    let (_s, web, _d) = start(&["--max-frame", "10000"]);
    let mut w = ws_online(web, 1);
    let big = "x".repeat(10_001);
    w.ws.send(Message::text(big)).unwrap();
    let (code, got) = w.until_closed();
    assert_eq!(code, Some(CloseCode::Size));
    // The same answer as on TCP before the close.
    assert_eq!(
        got.last().map(|g| g.data["code"].clone()),
        Some(json!(413)),
        "{got:?}"
    );

    // Its text gives the message's real size.
    let text = got.last().unwrap().data["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains("frame of 10001 bytes"), "{text}");

    // Before login, the 8 KiB limit of TCP: the same 413, then an ordinary close.
    let mut w = ws(web);
    w.ws.send(Message::text("p".repeat(9_000))).unwrap();
    let (code, got) = w.until_closed();
    assert_eq!(code, Some(CloseCode::Normal));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].data["code"], 413);
    assert!(
        got[0].data["error"]
            .as_str()
            .unwrap()
            .contains("before login")
    );

    // Just under it is an ordinary (if useless) message.
    let mut w = ws_online(web, 2);
    let mut content = "y".repeat(9_000);
    w.send("SmsMes", json!({"content": content}));
    content.clear();
    w.send("PingMes", json!({}));
    assert_eq!(w.recv().kind, "PongMes");

    // A fragmented message counts whole.
    let mut w = ws(web);
    let frag = |data: &[u8], op: u8, fin: bool| {
        use tungstenite::protocol::frame::Frame;
        use tungstenite::protocol::frame::coding::{Data, OpCode};
        let opcode = if op == 0 {
            OpCode::Data(Data::Continue)
        } else {
            OpCode::Data(Data::Text)
        };
        Message::Frame(Frame::message(data.to_vec(), opcode, fin))
    };
    w.ws.send(frag(&[b'a'; 6000], 1, false)).unwrap();
    w.ws.send(frag(&[b'a'; 6000], 0, true)).unwrap();
    assert_eq!(w.until_closed().0, Some(CloseCode::Size));
}

#[test]
fn garbage_gets_the_protocols_answers_or_a_close() {
    let (_s, web, _d) = start(&[]);
    // Not JSON: the hub's 400, and the connection goes on, as on TCP.
    let mut w = ws(web);
    w.ws.send(Message::text("not json at all")).unwrap();
    assert_eq!(w.recv().data["code"], 400);
    w.ws.send(Message::binary(vec![0xff, 0x00, 0x13])).unwrap();
    assert_eq!(w.recv().data["code"], 400);
    w.ws.send(Message::text("")).unwrap();
    assert_eq!(w.recv().data["code"], 400);
    w.send("PingMes", json!({}));
    assert_eq!(w.recv().kind, "PongMes");

    // Below the protocol: an unmasked frame from a client closes with 1002, text that
    // is not UTF-8 with 1007.
    for (frame, code) in [
        (vec![0x81, 0x02, b'h', b'i'], 1002u16),
        (vec![0x81, 0x82, 0, 0, 0, 0, 0xc3, 0x28], 1007),
        (vec![0x83, 0x80, 0, 0, 0, 0], 1002),
    ] {
        let mut s = raw_upgrade(web);
        s.write_all(&frame).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        assert_eq!(all[0], 0x88, "a close frame: {all:?}");
        assert_eq!(u16::from_be_bytes([all[2], all[3]]), code, "{frame:?}");
    }

    // A close from the client is answered.
    let mut w = ws(web);
    w.ws.close(None).unwrap();
    let end = loop {
        match w.ws.read() {
            Ok(Message::Close(_)) => {}
            Err(e) => break e,
            Ok(other) => panic!("unexpected {other:?}"),
        }
    };
    assert!(matches!(end, tungstenite::Error::ConnectionClosed), "{end}");

    // A WebSocket ping is answered; a flood of them closes with 1008.
    let mut w = ws(web);
    w.ws.send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    match w.ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    // In one write: sent one by one, the last ones could meet a connection the
    // server had already closed (EPIPE), depending on how fast it read the first.
    for _ in 0..40 {
        w.ws.write(Message::Ping(Vec::new().into())).unwrap();
    }
    w.ws.flush().unwrap();
    let code = loop {
        match w.ws.read() {
            Ok(Message::Pong(_)) => {}
            Ok(Message::Close(f)) => break f.map(|f| f.code),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, Some(CloseCode::Policy));
}

/// Upgrades by hand, for frames no WebSocket library would send.
fn raw_upgrade(web: SocketAddr) -> std::net::TcpStream {
    let mut s = connect(web);
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: {web}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    s
}

#[test]
fn the_login_timeout_and_rate_limits_apply() {
    let (_s, web, _d) = start(&["--login-timeout", "1", "--msg-rate", "3"]);
    // Upgraded but silent: the hub's login timeout.
    let mut w = ws(web);
    let (code, got) = w.until_closed();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].data["code"], 401);
    assert_eq!(code, Some(CloseCode::Normal));
    // A request head that never ends: closed at the same timeout.
    let mut h = connect(web);
    h.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut rest = Vec::new();
    h.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");

    // Frames over the rate wait their turn: every one is answered, none refused.
    let mut w = ws(web);
    for _ in 0..5 {
        w.send("PingMes", json!({}));
    }
    let got: Vec<Got> = (0..5).map(|_| w.recv()).collect();
    assert!(got.iter().all(|g| g.kind != "ErrorResMes"), "{got:?}");
}

#[test]
fn a_websocket_reader_that_stops_is_dropped_at_the_output_limit() {
    let (mut s, web, _d) = start(&["--msg-rate", "0", "--max-outbuf", "200000"]);
    let w = ws_online(web, 1);
    let mut t = online(&s, 2);
    let content = "z".repeat(1000);
    // The browser user reads nothing: its socket, the transport's bounded buffer and
    // then its queue in the hub fill up, and the hub drops it.
    let mut sent = 0;
    while !s.saw_log("slow consumer") {
        for _ in 0..500 {
            t.send("SmsMes", json!({"content": content}));
        }
        sent += 500;
        assert!(sent < 200_000, "never dropped after {sent} messages");
    }
    let n = t.recv_until("NotifyUserStatusMes").0;
    assert_eq!(n.data, json!({"userId": 1, "status": 1, "userName": "u1"}));
    drop(w);
}

#[test]
fn a_flood_of_empty_fragments_does_not_starve_the_others() {
    // No message rate limit: the 40 pings below (after a register and a login) may all
    // be answered within a second, which is what is tested, not the limit.
    let (mut s, web, _d) = start(&["--msg-rate", "0"]);
    // Logged in first: while the flood keeps the loop busy, logins wait for the
    // password hashing, which runs at idle priority.
    let mut w = ws_online(web, 1);
    let mut flood = raw_upgrade(web);
    // A text message begun and never finished: endless empty continuation frames,
    // which give the hub nothing, written as fast as the socket takes them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut chunk = vec![0x01, 0x80, 0, 0, 0, 0];
            while chunk.len() < 64 * 1024 {
                chunk.extend_from_slice(&[0x00, 0x80, 0, 0, 0, 0]);
            }
            flood.write_all(&chunk).unwrap();
            let deadline = std::time::Instant::now() + 3 * WAIT;
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && std::time::Instant::now() < deadline
            {
                if flood.write_all(&chunk[6..]).is_err() {
                    break;
                }
            }
        })
    };
    // Meanwhile others are served: each answer within the read timeout.
    for _ in 0..40 {
        w.send("PingMes", json!({}));
        assert_eq!(w.recv().kind, "PongMes");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    flooder.join().unwrap();
    // And the flood had its share of each turn, no more: one read (the server's last
    // line counts its turns and reads). A flood that gained a read every turn made the
    // turns ever longer, and the pings' answers ever later (16 reads a turn here).
    s.signal(libc::SIGTERM);
    let last = s.wait_log(" loop turns, ");
    let count = |what: &str| -> u64 {
        let before = last.split(what).next().unwrap();
        before.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (turns, reads) = (count(" loop turns"), count(" reads"));
    assert!(reads <= 5 * turns, "{reads} reads in {turns} turns");
}

#[test]
fn a_websocket_that_stops_reading_then_breaks_the_protocol_is_closed() {
    let (s, web, _d) = start(&["--msg-rate", "0", "--max-outbuf", "67108864"]);
    let mut w = ws_online(web, 1);
    let mut t = online(&s, 2);
    // 16 MB for user 1, who reads none of it: its socket and the transport's buffer
    // fill, and the rest waits in the hub, under its limit.
    let content = "p".repeat(8000);
    let n = 2000;
    for _ in 0..n {
        t.send(
            "SmsPrivateMes",
            json!({"toUserId": 1, "content": content, "msgId": "m"}),
        );
    }
    // All handled (one connection's frames are handled in order); those written
    // so far are answered 200, the rest wait for their write.
    t.send("PingMes", json!({}));
    let (_, before) = t.recv_until("PongMes");
    let mut answers: Vec<i64> = before
        .iter()
        .filter(|g| g.kind == "SmsResMes")
        .map(|g| g.data["code"].as_i64().unwrap())
        .collect();
    // Then a frame no client may send (unmasked): the server cannot write its closing
    // frame to a socket that is full, and must close the connection all the same,
    // not leave the user online swallowing what others send.
    w.ws.get_mut().write_all(&[0x81, 0x01, b'x']).unwrap();
    let mut gone = false;
    while !gone || answers.len() < n {
        let g = t.recv();
        match g.kind.as_str() {
            "SmsResMes" => answers.push(g.data["code"].as_i64().unwrap()),
            "NotifyUserStatusMes" => {
                assert_eq!(g.data, json!({"userId": 1, "status": 1, "userName": "u1"}));
                gone = true;
            }
            _ => {}
        }
    }
    // What was never written is stored, not lost: 202, never 200.
    assert!(answers.iter().all(|&c| c == 200 || c == 202), "{answers:?}");
    assert!(answers.contains(&202), "the unwritten ones are stored");
    t.send("SmsPrivateMes", json!({"toUserId": 1, "content": "later"}));
    assert_eq!(
        t.recv_until("SmsResMes").0.data["code"],
        202,
        "stored, not lost"
    );
}
