//! The `chat` binary over TLS (`--tls`, `--tls-ca`) against the real server with a
//! TLS listener (run in this process), certificates generated at run time. A
//! test-written plain client is on the other side; certificates that do not verify
//! must be refused with a sentence, and nothing sent.

mod common;
#[path = "../../tests/common/pki.rs"]
mod pki;

use common::{Chat, Peer, TestServer};

use std::path::Path;

use pki::KeyFormat;
use serde_json::json;

#[test]
fn the_client_chats_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki::make(dir.path(), "c", KeyFormat::Pkcs8);
    let server = TestServer::start_tls(&p.cert, &p.key);
    let mut peer = Peer::register_and_login(server.addr, 200, "tiger");
    let ca = p.ca.display().to_string();
    let name = server.tls_name();
    let mut chat = Chat::start_with(&["--server", &name, "--tls-ca", &ca], &[]);
    chat.type_lines(&["2", "100", "secret", "scott"]);
    chat.expect("Registered as user 100");
    chat.type_lines(&["1", "100", "secret"]);
    chat.expect("Logged in as scott (100)");
    chat.expect("Online now (2): scott (100), tiger (200)");
    // Plain to TLS, group and private.
    peer.send("SmsMes", json!({"content":"hello over plain"}));
    chat.expect("[group] tiger (200): hello over plain");
    peer.send("SmsPrivateMes", json!({"toUserId":100,"content":"psst"}));
    chat.expect("[private] tiger (200): psst");
    // TLS to plain.
    chat.type_lines(&["2", "hello over tls"]);
    chat.expect("Sent to everyone online");
    assert_eq!(peer.recv_kind("SmsMes")["content"], "hello over tls");
    chat.type_lines(&["3", "200", "a private word"]);
    chat.expect("Delivered to user 200");
    assert_eq!(peer.recv_kind("SmsPrivateMes")["content"], "a private word");
    // A long message: several TLS records.
    let long = "y".repeat(6000);
    chat.type_lines(&["2", &long]);
    chat.expect("Sent to everyone online");
    assert_eq!(peer.recv_kind("SmsMes")["content"], long.as_str());
    // Log out and end: a clean close both ways.
    chat.type_lines(&["4"]);
    chat.expect("Logged out.");
    let (code, out, err) = chat.finish();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.is_empty(), "nothing on stderr: {err}");
    assert!(!out.contains("Connection to the server lost"), "{out}");
}

#[test]
fn the_client_trusts_the_systems_roots_with_tls() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki::make(dir.path(), "sys", KeyFormat::Sec1);
    let server = TestServer::start_tls(&p.cert, &p.key);
    let name = server.tls_name();
    // The system's store, as rustls-native-certs reads it: here, our CA alone.
    let empty = tempfile::tempdir().unwrap();
    let env = [
        ("SSL_CERT_FILE", p.ca.as_path()),
        ("SSL_CERT_DIR", empty.path()),
    ];
    let mut chat = Chat::start_with(&["--server", &name, "--tls"], &env);
    chat.type_lines(&["2", "7", "pw", "seven", "1", "7", "pw"]);
    chat.expect("Logged in as seven (7)");
    let (code, out, err) = chat.finish();
    assert_eq!(code, 0, "{out}\n{err}");
}

/// Runs `chat` with `args` for a registration of user 9 and returns its output; it
/// must have exited with 1 (the server could not be used).
fn refused(args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut chat = Chat::start_with(args, env);
    chat.type_lines(&["2", "9", "pw", "nine"]);
    chat.expect("refused");
    chat.type_lines(&["3"]);
    let (code, out, err) = chat.finish();
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.contains("Registered"), "{out}");
    out
}

#[test]
fn a_certificate_that_does_not_verify_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki::make(dir.path(), "real", KeyFormat::Pkcs8);
    let other = pki::make(dir.path(), "other", KeyFormat::Pkcs8);
    let server = TestServer::start_tls(&p.cert, &p.key);
    let name = server.tls_name();
    let empty = tempfile::tempdir().unwrap();

    // Signed by a CA the client does not trust: named with --tls-ca, or the system's.
    let other_ca = other.ca.display().to_string();
    let out = refused(&["--server", &name, "--tls-ca", &other_ca], &[]);
    assert!(
        out.contains("certificate is not signed by an authority this client trusts"),
        "{out}"
    );
    let env = [
        ("SSL_CERT_FILE", other.ca.as_path()),
        ("SSL_CERT_DIR", empty.path()),
    ];
    let out = refused(&["--server", &name, "--tls"], &env);
    assert!(out.contains("not signed by an authority"), "{out}");

    // Signed by the trusted CA, for another name.
    let elsewhere = pki::make_for(dir.path(), "elsewhere", KeyFormat::Pkcs8, &["chat.example"]);
    let server2 = TestServer::start_tls(&elsewhere.cert, &elsewhere.key);
    let ca = elsewhere.ca.display().to_string();
    let out = refused(&["--server", &server2.tls_name(), "--tls-ca", &ca], &[]);
    assert!(
        out.contains("certificate is not valid for localhost"),
        "{out}"
    );

    // TLS to the plain port.
    let plain = server.addr.to_string();
    let ca = p.ca.display().to_string();
    let out = refused(&["--server", &plain, "--tls-ca", &ca], &[]);
    assert!(out.contains("did not answer in TLS"), "{out}");

    // Nothing got through.
    assert!(!Peer::is_registered(server.addr, 9));
    assert!(!Peer::is_registered(server2.addr, 9));
}

#[test]
fn a_ca_file_without_certificates_is_an_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    let chat = Chat::start_with(&["--tls-ca", &bad.display().to_string()], &[]);
    let (code, _, err) = chat.finish();
    assert_eq!(code, 1);
    assert!(err.contains("no certificate in it"), "{err}");
}

/// Pointed at a TLS port without `--tls`, the client says that the port speaks TLS
/// (the server's alert is not taken for a frame), and sent nothing but its login.
#[test]
fn a_tls_port_without_tls_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki::make(dir.path(), "plain", KeyFormat::Pkcs8);
    let server = TestServer::start_tls(&p.cert, &p.key);
    let tls = server.tls.unwrap().to_string();
    let mut chat = Chat::start(&tls);
    chat.type_lines(&["1", "100", "secret", "3"]);
    let (code, out, err) = chat.finish();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(
            "Login failed: the server speaks TLS on that port. Start the client with --tls"
        ),
        "{out}"
    );
    for bad in ["frame", "cannot read", "lost", "gone"] {
        assert!(!out.contains(bad), "{bad:?} in:\n{out}");
    }
}
