//! A `redis-server` of the test's own.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{ServerProc, WAIT};

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
        Self::start_with(persist, &[])
    }

    /// Like [`RedisProc::start`], with more arguments for redis-server
    /// (`--requirepass PASSWORD`, ...).
    pub fn start_with(persist: bool, extra: &[&str]) -> RedisProc {
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
        args.extend(extra.iter().map(|s| s.to_string()));
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

    /// The user record `id` as stored in the `users` hash.
    pub fn user_record(&self, id: i64) -> String {
        redis::cmd("HGET")
            .arg("users")
            .arg(id)
            .query(&mut self.client())
            .unwrap()
    }

    /// The length of the list `key` (`offline:<id>`: messages kept for a user).
    pub fn llen(&self, key: &str) -> i64 {
        redis::cmd("LLEN")
            .arg(key)
            .query(&mut self.client())
            .unwrap()
    }

    /// The number of members of the sorted set `key` (`history:group`, ...).
    pub fn zcard(&self, key: &str) -> i64 {
        redis::cmd("ZCARD")
            .arg(key)
            .query(&mut self.client())
            .unwrap()
    }

    /// A chat server on this Redis, in a temporary data directory of its own.
    pub fn chat(&self, extra: &[&str]) -> (ServerProc, tempfile::TempDir) {
        start_on_redis(&self.url(), extra)
    }

    /// A node of a cluster on this Redis, with a short node timeout so that a dead
    /// node is noticed quickly, in a temporary data directory of its own; returns once
    /// it has linked to Redis.
    pub fn node(&self, extra: &[&str]) -> (ServerProc, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (self.node_in(dir.path(), extra), dir)
    }

    /// Like [`RedisProc::node`], with its data in `data` (a node started again).
    pub fn node_in(&self, data: &Path, extra: &[&str]) -> ServerProc {
        let url = self.url();
        let mut args = vec!["--redis", url.as_str(), "--node-timeout", "2"];
        args.extend_from_slice(extra);
        let mut s = ServerProc::start(data, &args);
        s.wait_log("cluster: linked to Redis");
        s
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

/// A chat server on the Redis at `url` (one of the test's own, or a proxy to it), in
/// a temporary data directory of its own.
pub fn start_on_redis(url: &str, extra: &[&str]) -> (ServerProc, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--redis", url];
    args.extend_from_slice(extra);
    (ServerProc::start(dir.path(), &args), dir)
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
    // With `--requirepass`, an answer that asks for the password is an answer too.
    s.read_exact(&mut buf).is_ok() && (&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
}
