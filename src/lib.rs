//! A multi-user chat server speaking the wire protocol of a well-known Go tutorial,
//! on a single-threaded mio reactor, with a plain terminal client alongside.
//!
//! # Layout
//!
//! From the wire inwards:
//!
//! - [`reactor`]: the only code with sockets. A mio `Poll`, the listener, the
//!   connections' sockets, the `Waker` that brings worker results back, signals and
//!   timers. It moves bytes and runs the hub's outputs; it never waits on anything else.
//! - [`hub`]: the deterministic heart. Every connection's state, the online registry,
//!   the store jobs in flight. Inputs in (`handle_*`), outputs drained (`poll_*`), time
//!   passed in as a value: the state-machine tests drive it with no sockets or threads.
//! - [`conn`]: one connection's state machine: frame assembly buffer, session, bounded
//!   output queue of shared frames.
//! - [`proto`]: the wire format: 4-byte big-endian length, JSON envelope, every message.
//! - `handlers/`: one file per command (login, register, group and private messages,
//!   online list, ping and logout), behind one dispatcher.
//! - [`users`]: the stored user record, registration rules, the online registry.
//! - [`worker`]: store jobs and the worker threads that run them, with [`auth`]
//!   (argon2id hashing) and [`store`] (the `Store` trait and its backends).
//! - [`logging`]: a log sink that never blocks the reactor.
//!
//! The binaries: `chat-server` (`src/bin/chat-server.rs`) and, in the `client/`
//! workspace member, the terminal client `chat`.

pub mod auth;
pub mod conn;
mod handlers;
pub mod hub;
pub mod logging;
pub mod proto;
pub mod rate;
pub mod reactor;
pub mod store;
pub mod testkit;
pub mod users;
pub mod worker;

#[cfg(test)]
mod hub_tests;
