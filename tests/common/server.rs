//! The real `chat-server` binary, started on a free loopback port in a data directory
//! of the test's, its log read line by line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{SeedClient, WAIT};

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
    /// `chat-server --listen LISTEN --data DATA` with cheap hashing ([`FAST_HASH`]) and
    /// no standard input, for the caller to add flags to and run.
    pub fn command(data: &Path, listen: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_chat-server"));
        c.args(["--listen", listen, "--data"])
            .arg(data)
            .args(FAST_HASH)
            .stdin(Stdio::null());
        c
    }

    /// Starts the server on a free loopback port with its data in `data`, and waits for
    /// its "listening on" line.
    pub fn start(data: &Path, extra: &[&str]) -> ServerProc {
        Self::adopt(Self::spawn(data, "127.0.0.1:0", extra), data)
    }

    /// Starts the server with `extra`; returns it and the address its listener `name`
    /// logged ("web", "TLS", "HTTPS": see [`ServerProc::listener_addr`]).
    pub fn start_listener(data: &Path, extra: &[&str], name: &str) -> (ServerProc, SocketAddr) {
        let mut s = Self::start(data, extra);
        let addr = s.listener_addr(name);
        (s, addr)
    }

    /// Spawns the server listening on `listen` ("off": no plain listener), its stderr
    /// piped for [`ServerProc::adopt`].
    pub fn spawn(data: &Path, listen: &str, extra: &[&str]) -> Child {
        Self::command(data, listen)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chat-server")
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

    /// Sends `sig` (SIGHUP: reload the certificate) and returns at once.
    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process, not reaped before drop.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Sends `sig` and waits for the process to exit.
    pub fn signal_and_wait(mut self, sig: i32) -> ExitStatus {
        self.signal(sig);
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
