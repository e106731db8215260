//! Shared pieces of the integration tests: the real `chat-server` binary started on
//! `127.0.0.1:0` in a temporary data directory (`server.rs`), a client that speaks the
//! seed's wire format byte for byte (`client.rs`), a `redis-server` of the test's own
//! (`redis_server.rs`), TLS clients trusting certificates made at run time (`tls.rs`,
//! `pki.rs`), the web listener's clients, HTTP and WebSocket (`web.rs`), and the check
//! that what is answered 200 was written (`delivery.rs`).

#![allow(dead_code)]

mod client;
pub mod delivery;
pub mod pki;
mod redis_server;
mod server;
pub mod tls;
pub mod web;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

// Each test binary uses some of them.
#[allow(unused_imports)]
pub use client::{Got, SeedClient, envelope, online, seed_frame};
#[allow(unused_imports)]
pub use redis_server::{RedisProc, start_on_redis};
#[allow(unused_imports)]
pub use server::{FAST_HASH, ServerProc};

/// How long any single expected event may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A TCP connection to `addr` whose reads fail after [`WAIT`], with Nagle off.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
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
