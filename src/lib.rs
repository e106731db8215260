//! A multi-user chat server speaking the wire protocol of a well-known Go tutorial,
//! on a single-threaded mio reactor, with a plain terminal client alongside.
//!
//! # Layout
//!
//! The crate builds in two parts, and the build shows which is which.
//!
//! The sans-I/O core, built with `--no-default-features` and linked by the client and
//! the bench. No socket, thread, clock or OS call; every file forbids `unsafe`:
//!
//! - [`proto`]: the wire format: 4-byte big-endian length, JSON envelope, every message.
//! - [`hub`]: the deterministic heart. Every connection's state, the online registry,
//!   the store jobs in flight. Inputs in (`handle_*`), outputs drained (`poll_*`), the
//!   next deadline out (`poll_timeout`), time passed in as a value. A small router
//!   (`hub/mod.rs`) over what all share (`hub/cx.rs`: the connections, the output
//!   machinery, the jobs, the deadlines) and components that own their state, one
//!   file each: `sessions` (login, register, admission of hashes, per-address rates),
//!   `chat` (group and private messages, online list, roster), `offline_delivery`,
//!   `history` (pages, and the batching of appends, one store job per loop turn),
//!   `cluster` (what this node knows of the others, and the rules for their events),
//!   `moderation` (bans, kicks, removals).
//! - [`conn`]: one connection's state machine: frame assembly buffer, session, bounded
//!   output queue of shared frames. Its fields are the core's; the reactor sees a
//!   connection only through the hub.
//! - [`types`]: the small types the whole core shares (a connection's handle, the
//!   time passed in, a piece of shared bytes); they import nothing of the crate.
//! - [`offline`]: delivery of stored private messages to one session, as a state
//!   machine: when to fetch, when what was delivered may leave the store.
//! - [`admission`]: whether a login can be hashed in time, and when to pause writes so
//!   that hashing gets the CPU.
//! - [`users`]: the stored user record, registration rules, the online registry.
//! - [`rate`]: token buckets for flood control.
//! - [`priority`]: how the worker threads are scheduled against the event loop.
//! - [`job`]: the contract between the hub and whoever runs its store jobs, and the
//!   jobs' logic over two traits ([`store::Store`], [`job::Passwords`]).
//! - [`store`]: the `Store` trait and the types it keeps.
//! - [`admin`]: the operators' commands (`chat-server users ...`, `backup`): what each
//!   does to a store, and the admin socket's requests and answers. The hub's side (a
//!   ban or removal ends the user's sessions) is `hub/moderation.rs`.
//! - [`metrics`]: the counters a scrape shows, and their Prometheus text.
//! - [`turn`]: one turn of the event loop, in order, and when output is written,
//!   over an I/O side ([`turn::Io`]) that the reactor implements with sockets and
//!   `testkit` in memory, with virtual time.
//!
//! The server side (the default `server` feature), the only code that does I/O:
//!
//! - `reactor`: the I/O side of the event loop ([`turn::Io`] over mio): listeners,
//!   sockets, `Waker`, signals, the worker pool and the cluster link. It moves bytes
//!   and runs the hub's outputs in the order [`turn`] gives; it never waits on
//!   anything else.
//! - `link`: what carries a connection's bytes: the plain socket, or a transport
//!   (TLS, WebSocket) that turns its socket's bytes into the TCP wire format; and a
//!   transport's "read me next turn" (`link::NextTurn`).
//! - `tls`: the TLS transport: rustls's `ServerConnection` driven sans-I/O by the
//!   reactor (ciphertext in and out of the socket, plaintext to the hub), and the TLS
//!   listener's certificate, reloaded on SIGHUP.
//! - `web`: the browser client (`--web-listen`): the page (`src/web/`, compiled in)
//!   over HTTP/1.1, and the WebSocket transport that carries the protocol for it;
//!   generic over its byte stream (`link::Stream`), so `--web-tls-listen` runs it over
//!   a `tls` connection's plaintext (HTTPS, `wss://`).
//! - `worker`: the worker threads that run store jobs, with `auth` (argon2id) and the
//!   store backends `store::embedded` (redb) and `store::redis`.
//! - `logging`: a log sink that never blocks the reactor.
//! - `sys`: every OS call (descriptor limit, socket options, thread priority, heap trim,
//!   a Unix socket's peer, the terminal's echo).
//! - `control`: requests of the operators' threads to the loop (a channel and its
//!   `Waker`), answered at its next turn.
//! - `admin_server`: the admin socket (`DATA_DIR/admin.sock`) on a thread of its own;
//!   `metrics_http`: `--metrics-listen`, `GET /metrics`, on another. Both serve a
//!   bounded number of clients at once, each on a short-lived thread and within a
//!   deadline for its whole exchange (`deadline`).
//! - `operator`: the `users` and `backup` subcommands (through the admin socket, the
//!   data file, or Redis); `config`: `--config FILE` (TOML) turned into flags.
//!
//! Tests only (`cfg(test)`, or the `testkit` feature for the fuzz targets and the
//! integration tests): `testkit`, the loop's I/O side in memory under the same
//! [`turn`] driver as the reactor, in virtual time, `store::mem`, and `store::suite`,
//! the checks every store backend passes.
//!
//! The binaries: `chat-server` (`src/bin/chat-server.rs`) and, in the `client/`
//! workspace member, the terminal client `chat`.

pub mod admin;
pub mod admission;
pub mod cluster;
pub mod conn;
pub mod fit;
pub mod hub;
pub mod job;
pub mod metrics;
pub mod offline;
pub mod presence;
pub mod priority;
pub mod proto;
pub mod rate;
pub mod roster;
pub mod store;
pub mod turn;
pub mod types;
pub mod users;

#[cfg(feature = "server")]
pub mod admin_server;
#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod cluster_redis;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod control;
#[cfg(feature = "server")]
pub mod deadline;
#[cfg(feature = "server")]
pub mod link;
#[cfg(feature = "server")]
pub mod logging;
#[cfg(feature = "server")]
pub mod metrics_http;
#[cfg(feature = "server")]
pub mod operator;
#[cfg(feature = "server")]
pub mod reactor;
#[cfg(feature = "server")]
pub mod redact;
#[cfg(feature = "server")]
pub mod sys;
#[cfg(feature = "server")]
pub mod tls;
#[cfg(feature = "server")]
pub mod web;
#[cfg(feature = "server")]
pub mod worker;

#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

#[cfg(test)]
mod admin_tests;
#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod fuzz_replay;
#[cfg(test)]
mod history_tests;
#[cfg(test)]
mod hub_tests;
