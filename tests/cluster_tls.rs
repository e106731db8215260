//! Nodes on a Redis reached over TLS (`rediss://`): a `redis-server` of the test's own
//! listening with TLS only (free loopback port, temporary directory, certificates made
//! at run time), the nodes trusting its CA through `SSL_CERT_FILE`.

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::{self, KeyFormat, Pki};
use common::*;
use serde_json::json;

/// A redis-server with TLS only on a free loopback port; killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    pki: Pki,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki::make(dir.path(), "redis", KeyFormat::Pkcs8);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("redis-server")
            .args(["--port", "0", "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .arg("--tls-port")
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(&pki.cert)
            .arg("--tls-key-file")
            .arg(&pki.key)
            .arg("--tls-ca-cert-file")
            .arg(&pki.ca)
            .args(["--tls-auth-clients", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        let deadline = Instant::now() + WAIT;
        // Retry while the connection is refused: redis-server is still starting.
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "redis-server with TLS exited (port {port} taken, or no TLS support)"
            );
            assert!(Instant::now() < deadline, "redis-server never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        TlsRedis {
            child,
            port,
            _dir: dir,
            pki,
        }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port)
    }

    /// A node on this Redis, trusting its CA; returns once it has linked.
    fn node(&self, id: &str) -> (ServerProc, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let child = ServerProc::command(dir.path(), "127.0.0.1:0")
            .args(["--redis", &self.url(), "--node-id", id])
            .env("SSL_CERT_FILE", &self.pki.ca)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chat-server");
        let mut s = ServerProc::adopt(child, dir.path());
        s.wait_log("cluster: linked to Redis at rediss://");
        (s, dir)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn nodes_share_a_redis_reached_over_tls() {
    let r = TlsRedis::start();
    let (a, _da) = r.node("a");
    let (b, _db) = r.node("b");
    // Users (in Redis, over TLS) and presence cross the nodes.
    let mut one = online(&a, 1);
    let mut two = online(&b, 2);
    one.wait_notice(2, 0);
    one.send(
        "SmsPrivateMes",
        json!({"toUserId": 2, "content": "over tls"}),
    );
    assert_eq!(one.recv_until("SmsResMes").0.data["code"], 200);
    let (p, _) = two.recv_until("SmsPrivateMes");
    assert_eq!(p.data["content"], "over tls");
}
