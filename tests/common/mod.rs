//! Shared pieces of the integration tests: the real `chat-server` binary started on
//! `127.0.0.1:0` in a temporary data directory (`server.rs`), a client that speaks the
//! seed's wire format byte for byte (`client.rs`), a `redis-server` of the test's own
//! (`redis_server.rs`), and certificates made at run time (`pki.rs`).

#![allow(dead_code)]

mod client;
pub mod pki;
mod redis_server;
mod server;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

// Each test binary uses some of them.
#[allow(unused_imports)]
pub use client::{Got, SeedClient, online, seed_frame};
#[allow(unused_imports)]
pub use redis_server::{RedisProc, start_on_redis};
#[allow(unused_imports)]
pub use server::{FAST_HASH, ServerProc};

/// How long any single expected event may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(20);

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
