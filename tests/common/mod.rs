//! Shared pieces of the integration tests: the real `chat-server` binary started on
//! `127.0.0.1:0` in a temporary data directory, and a client that speaks the seed's
//! wire format byte for byte (frames built with serde_json exactly as the Go client's
//! `json.Marshal` builds them, replies read as plain JSON, not through our own types).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long any single expected event may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct ServerProc {
    pub child: Child,
    pub addr: SocketAddr,
    pub data: PathBuf,
    log: mpsc::Receiver<String>,
    pub log_lines: Vec<String>,
}

/// Cheap argon2 parameters through the server's own flags.
pub const FAST_HASH: [&str; 4] = ["--argon2-memory-kib", "64", "--argon2-passes", "1"];

impl ServerProc {
    /// Starts the server on a free loopback port with its data in `data`, and waits for
    /// its "listening on" line.
    pub fn start(data: &Path, extra: &[&str]) -> ServerProc {
        let child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(FAST_HASH)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chat-server");
        Self::adopt(child, data)
    }

    /// Takes over a started server process (its stderr piped), and waits for its
    /// "listening on" line.
    pub fn adopt(child: Child, data: &Path) -> ServerProc {
        // The plain listener's line ("...reactor: listening on ADDR"), logged after
        // any other listener's ("TLS listening on ADDR").
        Self::adopt_on(child, data, ": listening on ")
    }

    /// Like [`ServerProc::adopt`], `addr` taken from the first log line with `needle`
    /// (which ends just before the address).
    pub fn adopt_on(mut child: Child, data: &Path, needle: &str) -> ServerProc {
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = ServerProc {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            data: data.to_path_buf(),
            log: rx,
            log_lines: Vec::new(),
        };
        let line = s.wait_log(needle);
        let addr = line.rsplit(needle).next().unwrap().trim();
        s.addr = addr.parse().expect("address in the log");
        s
    }

    /// Waits for a log line containing `needle`, returns it.
    pub fn wait_log(&mut self, needle: &str) -> String {
        if let Some(l) = self.log_lines.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    self.log_lines.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?}; log so far:\n{}",
                    self.log_lines.join("\n")
                ),
            }
        }
    }

    /// The address another listener logged ("web listening on ADDR" for `name`
    /// "web").
    pub fn listener_addr(&mut self, name: &str) -> SocketAddr {
        let needle = format!("{name} listening on ");
        let line = self.wait_log(&needle);
        let addr = line.rsplit(&needle).next().unwrap().trim();
        addr.parse().expect("address in the log")
    }

    /// Whether a log line containing `needle` has come, without waiting.
    pub fn saw_log(&mut self, needle: &str) -> bool {
        while let Ok(line) = self.log.try_recv() {
            self.log_lines.push(line);
        }
        self.log_lines.iter().any(|l| l.contains(needle))
    }

    pub fn connect(&self) -> SeedClient {
        SeedClient::connect(self.addr)
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill_hard(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends `sig` and waits for the process to exit.
    pub fn signal_and_wait(mut self, sig: i32) -> ExitStatus {
        let pid = self.child.id() as i32;
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid, sig) };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that writes frames the way the seed's Go client does, over a plain socket
/// or any other stream (a TLS session).
pub struct SeedClient<S = TcpStream> {
    pub stream: S,
}

/// `{"type": t, "data": json(inner)}` with its 4-byte big-endian length.
pub fn seed_frame(t: &str, inner: &Value) -> Vec<u8> {
    let data = serde_json::to_string(inner).unwrap();
    let outer = serde_json::to_string(&json!({"type": t, "data": data})).unwrap();
    let mut f = (outer.len() as u32).to_be_bytes().to_vec();
    f.extend(outer.as_bytes());
    f
}

/// A frame as received: its type and the parsed inner JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Got {
    pub kind: String,
    pub data: Value,
    /// The inner JSON exactly as sent.
    pub raw: String,
}

impl SeedClient {
    pub fn connect(addr: SocketAddr) -> SeedClient {
        Self::from_stream(TcpStream::connect(addr).expect("connect"))
    }

    pub fn from_stream(stream: TcpStream) -> SeedClient {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        SeedClient { stream }
    }
}

impl<S: Read + Write> SeedClient<S> {
    pub fn send(&mut self, t: &str, inner: Value) {
        self.stream.write_all(&seed_frame(t, &inner)).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one frame; panics on timeout or EOF.
    pub fn recv(&mut self) -> Got {
        self.try_recv()
            .expect("connection closed while waiting for a frame")
    }

    /// Reads one frame; `None` at EOF (a frame cut short included).
    pub fn try_recv(&mut self) -> Option<Got> {
        let mut len = [0u8; 4];
        match self.stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("read failed: {e}"),
        }
        let mut body = vec![0; u32::from_be_bytes(len) as usize];
        match self.stream.read_exact(&mut body) {
            Ok(()) => {}
            // The peer went away in the middle of a frame (a killed server).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) => panic!("read failed: {e}"),
        }
        let outer: Value = serde_json::from_slice(&body).unwrap();
        let raw = outer["data"]
            .as_str()
            .expect("data is a string")
            .to_string();
        Some(Got {
            kind: outer["type"].as_str().unwrap().to_string(),
            data: serde_json::from_str(&raw).expect("data holds JSON"),
            raw,
        })
    }

    /// Reads until a frame of type `kind` arrives; returns it and what came before.
    pub fn recv_until(&mut self, kind: &str) -> (Got, Vec<Got>) {
        let mut before = Vec::new();
        loop {
            let g = self.recv();
            if g.kind == kind {
                return (g, before);
            }
            before.push(g);
        }
    }

    /// Proves nothing else was queued for this client: a ping's pong must be the very
    /// next frame (the server handles one connection's frames in order).
    pub fn expect_nothing_pending(&mut self) {
        self.send("PingMes", json!({}));
        let g = self.recv();
        assert_eq!(g.kind, "PongMes", "unexpected frame {g:?}");
    }

    /// Waits for the server to close the connection (after any frames).
    pub fn expect_closed(&mut self) -> Vec<Got> {
        let mut got = Vec::new();
        while let Some(g) = self.try_recv() {
            got.push(g);
        }
        got
    }

    pub fn register(&mut self, id: i64, pwd: &str, name: &str) -> Got {
        self.send(
            "RegisterMes",
            json!({"user": {"userId": id, "userPwd": pwd, "userName": name, "userStatus": 0, "sex": ""}}),
        );
        self.recv()
    }

    pub fn login(&mut self, id: i64, pwd: &str) -> Got {
        self.send(
            "LoginMes",
            json!({"userId": id, "userPwd": pwd, "userName": ""}),
        );
        self.recv_until("LoginResMes").0
    }
}

/// Registers `id` (name `u<id>`, password `pw<id>`) and logs in on a new connection.
pub fn online(server: &ServerProc, id: i64) -> SeedClient {
    let mut c = server.connect();
    let r = c.register(id, &format!("pw{id}"), &format!("u{id}"));
    assert_eq!(r.data["code"], 200, "{r:?}");
    let r = c.login(id, &format!("pw{id}"));
    assert_eq!(r.data["code"], 200, "{r:?}");
    c
}

/// A `redis-server` of the test's own, on a free loopback port in a temporary
/// directory; killed on drop. Never the machine's Redis on 6379.
pub struct RedisProc {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    args: Vec<String>,
}

impl RedisProc {
    /// Starts one; `persist` turns on an fsync-always append-only file so that data
    /// survives a restart of this Redis.
    pub fn start(persist: bool) -> RedisProc {
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--enable-debug-command",
            "yes",
            "--daemonize",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if persist {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
        } else {
            args.extend(["--appendonly", "no"].map(String::from));
        }
        for _ in 0..20 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if let Some(child) = spawn_redis(dir.path(), port, &args) {
                return RedisProc {
                    child: Some(child),
                    port,
                    dir,
                    args,
                };
            }
        }
        panic!("could not start redis-server");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        let child = spawn_redis(self.dir.path(), self.port, &self.args);
        assert!(
            child.is_some(),
            "redis-server did not come back on {}",
            self.port
        );
        self.child = child;
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns redis-server and waits until it answers PING; `None` if it exited (the port
/// was taken by someone else meanwhile).
fn spawn_redis(dir: &Path, port: u16, args: &[String]) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .arg("--port")
        .arg(port.to_string())
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (.ci/run installs it)");
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            let _ = child.wait();
            return None;
        }
        if redis_ping(port) {
            return Some(child);
        }
        // Retry while the connection is refused: redis-server is still starting.
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("redis-server on port {port} never answered");
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Reads until the server closes the connection; returns what came before.
pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("no close from the server: {e} (got {got:?})"),
        }
    }
}

/// Whether `b` is nothing or TLS alert records only (content type 21).
pub fn alerts_only(mut b: &[u8]) -> bool {
    while b.len() >= 5 {
        let len = u16::from_be_bytes([b[3], b[4]]) as usize;
        if b[0] != 21 || b.len() < 5 + len {
            return false;
        }
        b = &b[5 + len..];
    }
    b.is_empty()
}
