//! TLS end to end: the real `chat-server` with a TLS listener beside the plain one,
//! clients written here on rustls (trusting a CA generated at run time, see
//! `common/pki.rs`), and raw sockets for what a TLS client would never send.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};

use common::pki::{self, KeyFormat, Pki};
use common::tls::{Tls, alerts_only, client_config, listen_args, try_connect};
use common::*;
use serde_json::json;

/// A seed-format client over TLS, handshake done; the error says why it failed.
fn try_tls_with(
    addr: SocketAddr,
    cfg: std::sync::Arc<rustls::ClientConfig>,
) -> Result<SeedClient<Tls>, String> {
    try_connect(addr, cfg).map(|stream| SeedClient { stream })
}

fn tls(addr: SocketAddr, ca: &Path) -> SeedClient<Tls> {
    SeedClient {
        stream: common::tls::connect(addr, ca),
    }
}

/// Registers `id` and logs in over TLS.
fn tls_online(addr: SocketAddr, ca: &Path, id: i64) -> SeedClient<Tls> {
    let mut c = tls(addr, ca);
    c.join(id);
    c
}

fn tls_args(p: &Pki) -> Vec<String> {
    listen_args("--tls-listen", p)
}

/// The server with a plain and a TLS listener; returns it and the TLS address.
fn start(data: &Path, p: &Pki, extra: &[&str]) -> (ServerProc, SocketAddr) {
    common::tls::start(data, "--tls-listen", "TLS", p, extra)
}

/// `from` sends a group message; `to` receives it from `from_id`.
fn group<A: Read + Write, B: Read + Write>(
    from: &mut SeedClient<A>,
    from_id: i64,
    to: &mut SeedClient<B>,
    text: &str,
) {
    from.send("SmsMes", json!({ "content": text }));
    let (g, _) = to.recv_until("SmsMes");
    let got = g.data["content"].as_str().unwrap_or_default();
    assert!(
        got == text && g.data["userId"] == from_id,
        "{} bytes from {} ({:?}...), expected {} bytes from {from_id}",
        got.len(),
        g.data["userId"],
        &got[..got.len().min(40)],
        text.len()
    );
}

/// `from` sends a private message to `to_id`; it is accepted and `to` receives it.
fn private<A: Read + Write, B: Read + Write>(
    from: &mut SeedClient<A>,
    from_id: i64,
    to: &mut SeedClient<B>,
    to_id: i64,
    text: &str,
) {
    from.send("SmsPrivateMes", json!({"toUserId": to_id, "content": text}));
    assert_eq!(from.recv_until("SmsResMes").0.data["code"], 200);
    let (p, _) = to.recv_until("SmsPrivateMes");
    assert_eq!(
        (p.data["content"].clone(), p.data["userId"].clone()),
        (json!(text), json!(from_id))
    );
}

#[test]
fn tls_and_plain_users_share_one_chat() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki::make(dir.path(), "a", KeyFormat::Pkcs8);
    let (s, tls_addr) = start(&dir.path().join("data"), &p, &[]);
    let mut t = tls_online(tls_addr, &p.ca, 1);
    let mut plain = s.connect();
    plain.join(2);
    // Presence crosses: the TLS user sees the plain one arrive, and the other way.
    t.wait_notice(2, 0);
    let mut t12 = {
        let mut c = try_tls_with(tls_addr, client_config(&p.ca, &[&rustls::version::TLS12]))
            .expect("TLS 1.2 handshake");
        assert_eq!(c.register(3, "pw3", "u3").data["code"], 200);
        assert_eq!(c.login(3, "pw3").data["code"], 200);
        c
    };
    plain.wait_notice(3, 0);
    t.wait_notice(3, 0);
    // Group and private messages, every direction, TLS 1.3 and 1.2 alike.
    group(&mut t, 1, &mut plain, "from tls");
    group(&mut plain, 2, &mut t, "from plain");
    group(&mut t12, 3, &mut t, "from tls 1.2");
    private(&mut t, 1, &mut plain, 2, "tls to plain");
    private(&mut plain, 2, &mut t, 1, "plain to tls");
    private(&mut t12, 3, &mut t, 1, "1.2 to 1.3");
    // A frame larger than one TLS record (16 KiB) arrives whole.
    let big = "x".repeat(40_000);
    group(&mut plain, 2, &mut t, &big);
    group(&mut t, 1, &mut plain, &big);
    // Logging out over TLS: offline for the plain user.
    t.send("LogoutMes", json!({}));
    plain.wait_notice(1, 1);
    t.expect_closed();
    plain.expect_nothing_pending();
}

#[test]
fn a_key_in_sec1_and_tls_only_with_listen_off() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki::make(dir.path(), "ec", KeyFormat::Sec1);
    assert!(
        std::fs::read_to_string(&p.key)
            .unwrap()
            .starts_with("-----BEGIN EC PRIVATE KEY")
    );
    let data = dir.path().join("data");
    let args = tls_args(&p);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = ServerProc::spawn(&data, "off", &args);
    let s = ServerProc::adopt_on(child, &data, "TLS listening on ");
    let mut a = tls_online(s.addr, &p.ca, 1);
    let mut b = tls_online(s.addr, &p.ca, 2);
    a.wait_notice(2, 0);
    group(&mut a, 1, &mut b, "only tls here");
    // No plain listener was opened.
    assert!(s.log_lines.iter().all(|l| !l.contains(": listening on ")));
    a.expect_nothing_pending();
    drop((a, b));
    let status = s.signal_and_wait(libc::SIGTERM);
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_pkcs1_rsa_key_is_read() {
    // rcgen (on ring) cannot make RSA keys: openssl makes one, if it is installed.
    let dir = tempfile::tempdir().unwrap();
    let pk8 = dir.path().join("rsa8.pem");
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pk8)
        .stderr(Stdio::null())
        .status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("openssl is not installed: the PKCS#1 key test did not run");
        return;
    }
    let rsa = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&pk8).unwrap()).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&rsa, &issuer)
        .unwrap();
    let p = Pki {
        ca: dir.path().join("rsa-ca.pem"),
        cert: dir.path().join("rsa-cert.pem"),
        key: dir.path().join("rsa-key.pem"),
    };
    std::fs::write(&p.ca, ca_cert.pem()).unwrap();
    std::fs::write(&p.cert, leaf.pem()).unwrap();
    let pkcs1 = pki::pem("RSA PRIVATE KEY", pki::pkcs8_inner(&rsa.serialize_der()));
    std::fs::write(&p.key, pkcs1).unwrap();
    let (_s, tls_addr) = start(&dir.path().join("data"), &p, &[]);
    let mut a = tls_online(tls_addr, &p.ca, 1);
    a.expect_nothing_pending();
}

#[test]
fn garbage_and_plain_frames_on_the_tls_port_get_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki::make(dir.path(), "g", KeyFormat::Pkcs8);
    let (s, tls_addr) = start(&dir.path().join("data"), &p, &[]);
    let mut t = tls_online(tls_addr, &p.ca, 1);
    let mut plain = online(&s, 2);
    t.wait_notice(2, 0);
    let hostile: Vec<Vec<u8>> = vec![
        // A seed client that picked the wrong port.
        seed_frame(
            "LoginMes",
            &json!({"userId": 9, "userPwd": "x", "userName": ""}),
        ),
        // Bytes that are nothing at all.
        (0..2000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        // A handshake record whose message claims 16 MiB.
        vec![22, 3, 1, 0, 8, 1, 0xff, 0xff, 0xff, 0, 0, 0, 0],
        // An HTTP request.
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
    ];
    for bytes in &hostile {
        let mut raw = TcpStream::connect(tls_addr).unwrap();
        raw.write_all(bytes).unwrap();
        let got = read_to_close(&mut raw);
        assert!(alerts_only(&got), "{bytes:?} got {got:?}");
    }
    // A TLS client that hangs up in the middle of its handshake.
    {
        let mut raw = TcpStream::connect(tls_addr).unwrap();
        raw.write_all(&[22, 3, 1, 0, 200, 1, 0, 0]).unwrap();
    }
    // Nobody else noticed.
    group(&mut t, 1, &mut plain, "still here");
    private(&mut plain, 2, &mut t, 1, "still here too");
    t.expect_nothing_pending();
    plain.expect_nothing_pending();
}

#[test]
fn a_stalled_handshake_is_closed_at_the_login_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki::make(dir.path(), "s", KeyFormat::Pkcs8);
    let (s, tls_addr) = start(&dir.path().join("data"), &p, &["--login-timeout", "1"]);
    let mut t = tls_online(tls_addr, &p.ca, 1);
    let mut plain = online(&s, 2);
    // Connected and silent; half a client hello; a finished handshake and no login.
    let mut silent = TcpStream::connect(tls_addr).unwrap();
    let mut half = TcpStream::connect(tls_addr).unwrap();
    half.write_all(&[22, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3])
        .unwrap();
    let mut no_login = tls(tls_addr, &p.ca);
    assert!(alerts_only(&read_to_close(&mut silent)));
    assert!(alerts_only(&read_to_close(&mut half)));
    // The finished handshake is told why, inside TLS, then closed with close_notify.
    let told = no_login.expect_closed();
    assert!(
        told.iter()
            .any(|g| g.kind == "ErrorResMes" && g.data["code"] == 401),
        "{told:?}"
    );
    // The logged-in users, TLS and plain, were not touched.
    group(&mut t, 1, &mut plain, "after the timeouts");
    private(&mut plain, 2, &mut t, 1, "and back");
}

#[test]
fn a_tls_client_that_stops_reading_is_dropped_as_a_slow_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki::make(dir.path(), "slow", KeyFormat::Pkcs8);
    let (mut s, tls_addr) = start(
        &dir.path().join("data"),
        &p,
        &["--max-outbuf", "262144", "--msg-rate", "0"],
    );
    let mut stalled = tls_online(tls_addr, &p.ca, 1);
    let mut sender = s.connect();
    sender.join(2);
    stalled.wait_notice(2, 0);
    // The stalled client reads nothing from now on. What the server queues for it is
    // bounded: rustls takes a little, then refuses, and the hub's own limit drops it.
    let text = "z".repeat(4000);
    let mut dropped = None;
    for _ in 0..100 {
        for _ in 0..250 {
            sender.send("SmsMes", json!({ "content": text }));
        }
        // The server has taken them all (it answers in order).
        sender.send("PingMes", json!({}));
        sender.recv_until("PongMes");
        if s.saw_log("slow consumer") {
            dropped = Some(s.wait_log("slow consumer"));
            break;
        }
    }
    let line = dropped.expect("the stalled TLS client was never dropped");
    assert!(line.contains("output queue over 262144 bytes"), "{line}");
    // Everyone else goes on, over TLS too.
    let mut other = tls_online(tls_addr, &p.ca, 3);
    group(&mut sender, 2, &mut other, "after the drop");
    drop(stalled);
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let old = pki::make(dir.path(), "old", KeyFormat::Pkcs8);
    let new = pki::make(dir.path(), "new", KeyFormat::Sec1);
    // The files the server is given: the old certificate now, the new one later.
    let live = Pki::live(dir.path(), &old);
    let (mut s, tls_addr) = start(&dir.path().join("data"), &live, &[]);
    let mut before = tls_online(tls_addr, &old.ca, 1);
    let mut plain = online(&s, 2);
    before.wait_notice(2, 0);

    live.install(&new);
    s.signal(libc::SIGHUP);
    s.wait_log("TLS: reloaded");
    // New connections get the new certificate: a client that trusts only the old CA
    // refuses it, one that trusts the new CA logs in.
    let refused = try_tls_with(tls_addr, client_config(&old.ca, rustls::DEFAULT_VERSIONS));
    let err = refused
        .err()
        .expect("the old CA must not verify the new certificate");
    assert!(err.contains("certificate"), "{err}");
    let mut after = tls_online(tls_addr, &new.ca, 3);
    // The connection opened before the reload goes on as before.
    before.wait_notice(3, 0);
    group(&mut before, 1, &mut after, "opened before");
    group(&mut after, 3, &mut before, "opened after");
    private(&mut plain, 2, &mut before, 1, "still readable");

    // A reload that fails (a key that does not belong to the certificate) keeps what
    // was loaded and says why.
    pki::replace(&old.key, &live.key);
    s.signal(libc::SIGHUP);
    let line = s.wait_log("TLS: reload failed");
    assert!(line.contains("keeping what was loaded"), "{line}");
    let mut again = tls_online(tls_addr, &new.ca, 4);
    group(&mut again, 4, &mut before, "after a failed reload");
    // So does one with no key at all.
    std::fs::write(&live.key, "not a key\n").unwrap();
    s.log_lines.clear();
    s.signal(libc::SIGHUP);
    let line = s.wait_log("TLS: reload failed");
    assert!(line.contains("no private key"), "{line}");
    let mut last = tls(tls_addr, &new.ca);
    last.expect_nothing_pending();
}

#[test]
fn a_bad_certificate_or_key_stops_the_server_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki::make(dir.path(), "b", KeyFormat::Pkcs8);
    let other = pki::make(dir.path(), "o", KeyFormat::Pkcs8);
    let missing = dir.path().join("missing.pem");
    let cases: Vec<(&Path, &Path, &str)> = vec![
        (&missing, &p.key, "certificate file"),
        (&p.key, &p.key, "no certificate"),
        (&p.cert, &p.cert, "no private key"),
        (&p.cert, &other.key, "certificate"),
    ];
    for (cert, key, says) in cases {
        let out = ServerProc::command(&dir.path().join("data"), "127.0.0.1:0")
            .args(["--tls-listen", "127.0.0.1:0", "--tls-cert"])
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cert:?} {key:?}: {err}");
        assert!(err.contains("TLS: ") && err.contains(says), "{says}: {err}");
    }
}

#[test]
fn tls_and_plain_users_on_two_nodes() {
    let r = RedisProc::start(false);
    let dir = tempfile::tempdir().unwrap();
    let p = pki::make(dir.path(), "n", KeyFormat::Pkcs8);
    let (mut a, _da) = r.node(&tls_args(&p).iter().map(String::as_str).collect::<Vec<_>>());
    let tls_addr = a.listener_addr("TLS");
    let (b, _db) = r.node(&[]);
    let mut t = tls_online(tls_addr, &p.ca, 1);
    let mut plain = online(&b, 2);
    t.wait_notice(2, 0);
    group(&mut t, 1, &mut plain, "tls on a");
    group(&mut plain, 2, &mut t, "plain on b");
    private(&mut t, 1, &mut plain, 2, "a to b");
    private(&mut plain, 2, &mut t, 1, "b to a");
    drop(a);
}
