//! Bad clients against the real server: floods, a reader that stalls, silent and
//! half-frame connections, the connection cap, descriptor exhaustion, shutdown.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The server's resident memory in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// CPU time (user + system) in clock ticks from a /proc `stat` file, with the name
/// it gives.
fn stat_ticks(path: &str) -> (String, u64) {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return (String::new(), 0);
    };
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    (stat[open + 1..close].to_owned(), ticks)
}

/// The server's CPU time (user + system) in clock ticks, from /proc.
fn cpu_ticks(pid: u32) -> u64 {
    stat_ticks(&format!("/proc/{pid}/stat")).1
}

/// Each of the server's threads with its CPU time in clock ticks.
fn thread_ticks(pid: u32) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| stat_ticks(&format!("{}/stat", e.path().display())))
        .collect();
    v.sort();
    v
}

#[test]
fn a_burst_over_the_rate_is_slowed_and_every_message_arrives_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &["--msg-rate", "10"]);
    let mut a = online(&s, 1);
    let mut b = online(&s, 2);
    let mut bytes = Vec::new();
    for i in 0..40 {
        bytes.extend(seed_frame("SmsMes", &json!({"content": format!("m{i}")})));
    }
    a.send_raw(&bytes);
    // The logout marks the end of the sender's stream: it waits its turn too.
    a.send("LogoutMes", json!({}));
    let told: Vec<Got> = a.expect_closed();
    assert!(told.iter().all(|g| g.kind != "ErrorResMes"), "{told:?}");
    let mut delivered = Vec::new();
    loop {
        let g = b.recv();
        match g.kind.as_str() {
            "SmsMes" => delivered.push(g.data["content"].as_str().unwrap().to_string()),
            "NotifyUserStatusMes" if g.data["userId"] == 1 && g.data["status"] == 1 => break,
            _ => {}
        }
    }
    let sent: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    assert_eq!(delivered, sent, "every message, in order, none refused");
}

#[test]
fn a_stalled_reader_is_dropped_and_costs_nobody_anything() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProc::start(dir.path(), &["--msg-rate", "0", "--max-outbuf", "262144"]);
    let mut sender = online(&s, 1);
    let mut reader = online(&s, 2);
    let staller = online(&s, 3); // never reads again
    sender.recv_until("NotifyUserStatusMes");
    sender.recv_until("NotifyUserStatusMes");
    reader.recv_until("NotifyUserStatusMes");
    let rss_before = rss_kib(s.pid());

    const N: usize = 40_000;
    const WINDOW: usize = 100;
    let text = "x".repeat(1000);
    // The reader reports its progress so the sender stays at most WINDOW messages
    // ahead of it: this reader keeps up; only the staller falls behind.
    let (progress_tx, progress) = std::sync::mpsc::channel::<usize>();
    let reader_thread = std::thread::spawn(move || {
        let mut got = 0;
        let mut saw_staller_leave = false;
        while got < N {
            let g = reader.recv();
            match g.kind.as_str() {
                "SmsMes" => {
                    got += 1;
                    if got % 10 == 0 {
                        let _ = progress_tx.send(got);
                    }
                }
                "NotifyUserStatusMes" if g.data["userId"] == 3 && g.data["status"] == 1 => {
                    saw_staller_leave = true
                }
                _ => {}
            }
        }
        (got, saw_staller_leave)
    });
    let frame = seed_frame("SmsMes", &json!({"content": text}));
    let mut peak = 0;
    let mut acked = 0;
    for i in 0..N {
        while i >= acked + WINDOW {
            acked = progress.recv().expect("reader alive");
        }
        sender.send_raw(&frame);
        if i % 5000 == 0 {
            peak = peak.max(rss_kib(s.pid()));
        }
    }
    let (got, saw) = reader_thread.join().unwrap();
    peak = peak.max(rss_kib(s.pid()));
    assert_eq!(got, N, "the reading client received every message");
    assert!(saw, "the others saw the stalled client go offline");
    // 40 MB went to the staller's way; the server held at most its queue limit of it.
    let growth = peak.saturating_sub(rss_before);
    assert!(growth < 16 * 1024, "server memory grew by {growth} KiB");
    let line = s.wait_log("slow consumer");
    assert!(line.contains("262144"), "{line}");
    let st = sender.recv_until("NotifyUserStatusMes").0;
    assert_eq!(
        (st.data["userId"].clone(), st.data["status"].clone()),
        (json!(3), json!(1))
    );
    drop(staller);
}

#[test]
fn silent_and_half_frame_connections_are_closed_at_the_login_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &["--login-timeout", "1"]);
    let mut user = online(&s, 1);
    let started = Instant::now();
    let mut silent = s.connect();
    let mut half = s.connect();
    half.send_raw(&[0, 0]); // half of a length prefix
    let mut half_body = s.connect();
    half_body.send_raw(&[0, 0, 0, 100, b'{']); // a prefix and one byte of the body
    for c in [&mut silent, &mut half, &mut half_body] {
        let got = c.expect_closed();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].raw, r#"{"code":401,"error":"no login within 1 s"}"#);
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Logged-in users are not subject to it (seed clients never ping).
    user.expect_nothing_pending();
}

#[test]
fn connections_over_the_cap_are_refused_politely() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &["--max-conns", "3"]);
    let mut held: Vec<SeedClient> = (0..3).map(|_| s.connect()).collect();
    for c in &mut held {
        c.expect_nothing_pending();
    }
    let mut extra = s.connect();
    let got = extra.expect_closed();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].raw,
        r#"{"code":503,"error":"server full (3 connections); try again later","retryAfter":1}"#
    );
    // Room again once someone leaves.
    drop(held.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = s.connect();
        c.send("PingMes", json!({}));
        match c.try_recv() {
            Some(g) if g.kind == "PongMes" => break,
            _ => assert!(Instant::now() < deadline, "never accepted again"),
        }
    }
}

#[test]
fn running_out_of_descriptors_neither_crashes_nor_spins() {
    let dir = tempfile::tempdir().unwrap();
    // A low descriptor limit for the server process only; --max-conns above it.
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 48 && exec {} --listen 127.0.0.1:0 --data {} {} --max-conns 1000 --log-level debug",
            env!("CARGO_BIN_EXE_chat-server"),
            dir.path().display(),
            FAST_HASH.join(" ")
        ))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut s = ServerProc::adopt(child, dir.path());
    let mut user = online(&s, 1);
    let mut flood: Vec<TcpStream> = Vec::new();
    for _ in 0..80 {
        flood.push(TcpStream::connect(s.addr).unwrap());
    }
    s.wait_log("Too many open files");
    // Seconds of wall time with descriptors exhausted, as measurement windows. A
    // spinning loop uses about 100 clock ticks (1/100 s) in each; one busy second
    // (seen once in many runs on a loaded machine, cause unknown) is not a spin, so
    // the test looks at up to three and fails only if none was quiet.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ticks = cpu_ticks(s.pid());
        let before = thread_ticks(s.pid());
        let window = Instant::now();
        while window.elapsed() < Duration::from_secs(1) {
            user.expect_nothing_pending();
            std::thread::sleep(Duration::from_millis(100));
        }
        let used = cpu_ticks(s.pid()) - ticks;
        if used < 50 {
            break;
        }
        seen.push(format!(
            "{used} ticks (by thread, before {before:?}, after {:?})",
            thread_ticks(s.pid())
        ));
    }
    s.saw_log("");
    assert!(
        seen.len() < 3,
        "server busy in every second while out of descriptors: {seen:?}; its log: {}",
        s.log_lines.join("\n")
    );
    drop(flood);
    // It serves new clients again once descriptors are free.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = s.connect();
        c.send("PingMes", json!({}));
        if let Some(g) = c.try_recv()
            && g.kind == "PongMes"
        {
            break;
        }
        assert!(Instant::now() < deadline, "never served again");
    }
    let mut c = s.connect();
    assert_eq!(c.register(2, "pw", "two").data["code"], 200);
}

#[test]
fn sigint_and_sigterm_stop_cleanly_after_writing_what_was_queued() {
    let dir = tempfile::tempdir().unwrap();
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let s = ServerProc::start(dir.path(), &["--msg-rate", "0"]);
        let mut a = s.connect();
        // Frames queued just before the signal are written before the close.
        let mut bytes = Vec::new();
        for _ in 0..200 {
            bytes.extend(seed_frame("PingMes", &json!({})));
        }
        a.send_raw(&bytes);
        a.recv();
        assert_eq!(s.signal_and_wait(sig).code(), Some(0));
        let rest = a.expect_closed();
        assert_eq!(rest.len(), 199, "every queued reply was written");
    }
}

#[test]
fn before_login_frames_are_held_to_a_smaller_size() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &[]);
    let mut anon = s.connect();
    let big = json!({"content": "x".repeat(10_000)});
    anon.send("SmsMes", big.clone());
    let got = anon.expect_closed();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data["code"], 413);
    let mut a = online(&s, 1);
    let mut b = online(&s, 2);
    b.send("SmsMes", big);
    // Accepted after login; `a` reads what the seed's client reads (8,096 bytes), so
    // it gets the message cut to fit, and the sender is told.
    let got = a.recv_until("SmsMes").0;
    let content = got.data["content"].as_str().unwrap();
    assert!(content.starts_with(&"x".repeat(7_000)), "{}", content.len());
    assert!(content.ends_with("too long for this client]"));
    assert_eq!(b.recv_until("ErrorResMes").0.data["code"], 206);
    // Nothing before login but login, register and ping.
    let mut anon = s.connect();
    for (t, d) in [
        ("OnlineUsersMes", json!({})),
        ("SmsPrivateMes", json!({"toUserId":1,"content":"x"})),
    ] {
        anon.send(t, d);
        assert_eq!(anon.recv().raw, r#"{"code":401,"error":"log in first"}"#);
    }
    anon.expect_nothing_pending();
}

/// Connects to `to` from the loopback address `from` (127.0.0.0/8 is all loopback).
fn connect_from(from: [u8; 4], to: std::net::SocketAddr) -> SeedClient {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&std::net::SocketAddr::from((from, 0)).into())
        .unwrap();
    sock.connect(&to.into()).unwrap();
    SeedClient::from_stream(sock.into())
}

#[test]
fn one_address_cannot_take_every_connection_slot() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &["--max-conns-per-addr", "4"]);
    let mut held: Vec<SeedClient> = (0..4)
        .map(|_| connect_from([127, 0, 0, 1], s.addr))
        .collect();
    for c in &mut held {
        c.expect_nothing_pending();
    }
    let mut extra = connect_from([127, 0, 0, 1], s.addr);
    let got = extra.expect_closed();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data["code"], 503);
    assert!(
        got[0].data["error"]
            .as_str()
            .unwrap()
            .contains("too many connections from your address"),
        "{got:?}"
    );
    // Someone else, from another address, still gets in and can log in.
    let mut other = connect_from([127, 0, 0, 2], s.addr);
    assert_eq!(other.register(7, "pw7", "seven").data["code"], 200);
    assert_eq!(other.login(7, "pw7").data["code"], 200);
}

/// A class of 100 behind one address (127.0.0.1) registers and logs in at the default
/// limits; password guessing from that address is still throttled.
#[test]
fn a_class_behind_one_address_gets_in_and_guessing_is_still_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &[]);
    let mut class = Vec::new();
    for id in 1..=100 {
        class.push(online(&s, id));
    }
    // 40 wrong passwords, four on each connection (the fifth would close it).
    let (mut wrong, mut refused) = (0, 0);
    for _ in 0..10 {
        let mut c = s.connect();
        for _ in 0..4 {
            c.send(
                "LoginMes",
                json!({"userId": 1, "userPwd": "guess", "userName": ""}),
            );
            let g = c.recv();
            match (g.kind.as_str(), g.data["code"].as_i64()) {
                ("LoginResMes", Some(403)) => wrong += 1,
                ("ErrorResMes", Some(429)) => {
                    assert!(
                        g.data["error"]
                            .as_str()
                            .unwrap()
                            .contains("too many login attempts from your address"),
                        "{g:?}"
                    );
                    refused += 1;
                }
                _ => panic!("{g:?}"),
            }
        }
    }
    // 30 failed logins a minute from one address (one more every 2 s): the first 30
    // are let through, and the guessing is then throttled.
    assert_eq!(wrong + refused, 40);
    assert!(wrong >= 30, "{wrong} let through");
    assert!(refused > 0, "{wrong} let through, none refused");
    drop(class);
}
