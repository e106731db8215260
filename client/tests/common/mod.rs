//! Shared by the client's test files: the `chat` binary driven through a pipe, the
//! real server run in this process (`server.rs`), and a seed-format client for the
//! other side of a conversation (`peer.rs`).
#![allow(dead_code)]

mod peer;
mod server;

// Each test file uses some of them.
#[allow(unused_imports)]
pub use peer::{Peer, read_frame, write_frame};
#[allow(unused_imports)]
pub use server::TestServer;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

/// Only so that a broken client fails a test instead of hanging it (say, waiting at a
/// prompt for input that the test holds back until a line that never comes): the
/// client is killed after this long. Far beyond any wait of a working client (30 s at
/// most, for a reply), so it never decides whether a test passes.
const HANG_GUARD: Duration = Duration::from_secs(300);

/// The `chat` binary with its stdin and stdout piped.
pub struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Receiver<String>,
    seen: Vec<String>,
    /// Dropping it (or sending) stands the hang guard down.
    guard: Option<Sender<()>>,
}

impl Chat {
    pub fn start(addr: &str) -> Chat {
        Chat::start_with(&["--server", addr], &[])
    }

    /// Starts `chat` with these arguments and environment variables.
    pub fn start_with(args: &[&str], env: &[(&str, &std::path::Path)]) -> Chat {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat"))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, out) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (guard, stand_down) = mpsc::channel::<()>();
        let pid = child.id() as libc::pid_t;
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = stand_down.recv_timeout(HANG_GUARD) {
                // SAFETY: kill(2) on the child this test started and has not reaped
                // (it is reaped only after the guard stands down).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        Chat {
            stdin: child.stdin.take(),
            child,
            out,
            seen: Vec::new(),
            guard: Some(guard),
        }
    }

    pub fn type_lines(&mut self, lines: &[&str]) {
        let stdin = self.stdin.as_mut().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
        stdin.flush().unwrap();
    }

    /// Waits for an output line containing `needle`; returns it. Fails if the client
    /// ends first.
    pub fn expect(&mut self, needle: &str) -> String {
        loop {
            match self.out.recv() {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "the client ended without a line with {needle:?}; output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Closes stdin, waits for the client to exit; returns its status and all its
    /// output (stdout, then stderr).
    pub fn finish(mut self) -> (i32, String, String) {
        drop(self.stdin.take());
        // Stdout ends when the client does.
        self.seen.extend(self.out.iter());
        let status = self.child.wait().unwrap();
        drop(self.guard.take());
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.code().unwrap_or(-1), self.seen.join("\n"), err)
    }
}
