//! A multi-user chat server speaking the wire protocol of a well-known Go tutorial,
//! on a single-threaded mio reactor, with a plain terminal client alongside.
//!
//! # Layout
//!
//! The folders show the layers, from the wire inwards; the design card's four files
//! stay at the top (`reactor.rs`, `conn.rs`, `proto.rs`, `users.rs`). The crate builds
//! in two parts, and the build shows which is which.
//!
//! The sans-I/O core, built with `--no-default-features` and linked by the client and
//! the bench. No socket, thread, clock or OS call; every file forbids `unsafe`:
//!
//! - [`proto`]: the wire format: 4-byte big-endian length, JSON envelope, every message.
//! - [`conn`]: one connection's state machine: frame assembly buffer, session, bounded
//!   output queue of shared frames. Its fields are the core's; the reactor sees a
//!   connection only through the hub.
//! - [`users`]: the stored user record, registration rules, the online registry.
//! - [`hub`]: the deterministic heart. Inputs in (`handle_*`), outputs drained
//!   (`poll_*`), the next deadline out (`poll_timeout`, one look at one timer table),
//!   time passed in as a value. A small router (`hub/mod.rs`) over what all share
//!   (`hub/cx.rs`: the connections, the output machinery, the jobs, the deadlines,
//!   reached by components only through the narrow context `Cx`) and components that
//!   own their state, one file each: `sessions` (login, register, with `admission` of
//!   password hashes and per-address rates), `chat` (group and private messages,
//!   online list, `presence` notices, the `roster`), `offline_delivery`, `history`
//!   (pages, and the batching of
//!   appends), `cluster` (what this node knows of the others, and the rules for their
//!   events), `moderation` (bans, kicks, removals). `hub::turn` is one turn of the
//!   event loop, in order, and when output is written, over an I/O side
//!   (`hub::turn::Io`) that the reactor implements with sockets and `hub::testkit` in
//!   memory, with virtual time. `hub::frame_fit`: frames cut to what a tutorial client
//!   can read.
//! - [`job`]: the contract between the hub and whoever runs its store jobs, and the
//!   jobs' logic over two traits ([`store::Store`], [`job::Passwords`]).
//! - [`store`]: the `Store` trait and the types it keeps.
//! - [`cluster`]: the events nodes exchange through Redis.
//! - [`ops`]`::admin`: the operators' commands (`chat-server users ...`, `backup`):
//!   what each does to a store, and the admin socket's requests and answers. The hub's
//!   side (a ban or removal ends the user's sessions) is `hub/moderation.rs`.
//! - Leaves that import nothing above them: [`types`] (a connection's handle, the time
//!   passed in, a piece of shared bytes, why an operator ends a session), [`metrics`]
//!   (the counters a scrape shows, and their Prometheus text), [`priority`] (how worker
//!   threads are scheduled), [`offline`] (one session's delivery of stored private
//!   messages, as a state machine), [`rate`] (token buckets for flood control): what a
//!   connection's state ([`conn`]) holds.
//!
//! The server side (the default `server` feature), the code that does I/O:
//!
//! - `reactor`: the I/O side of the event loop (`hub::turn::Io` over mio): listeners,
//!   sockets, `Waker`, signals, the worker pool and the cluster link. It moves bytes
//!   and runs the hub's outputs in the order `hub::turn` gives; it never waits on
//!   anything else.
//! - `transport`: what carries a connection's bytes: the plain socket, or a transport
//!   that turns its socket's bytes into the TCP wire format, and a transport's "read
//!   me next turn" (`transport::NextTurn`). `transport::tls`: rustls's
//!   `ServerConnection` driven sans-I/O (ciphertext in and out of the socket,
//!   plaintext to the hub), with the listener's certificate reloaded on SIGHUP.
//!   `transport::web`: the browser client (`--web-listen`): the page
//!   (`transport/web/`, compiled in) over HTTP/1.1, and the WebSocket transport that
//!   carries the protocol for it, over plain TCP or TLS.
//! - `job::worker`: the worker threads that run store jobs, with `job::auth`
//!   (argon2id) and the store backends `store::embedded` (redb) and `store::redis`.
//! - `cluster::redis`: the cluster's link to Redis, on threads of its own.
//! - `ops`: what an operator uses. `logging` (simplelog's lines handed to a log
//!   thread, so the loop never waits for the sink), `config` (`--config FILE`, TOML,
//!   turned into flags), `cli` (the `users` and `backup` subcommands, through the admin
//!   socket, the data file, or Redis), `admin_socket` (`DATA_DIR/admin.sock`) and
//!   `metrics_http` (`--metrics-listen`), each serving a bounded number of clients at
//!   once within a deadline each (`deadline`), `control` (their requests to the loop,
//!   answered at its next turn).
//! - `redact`: secrets (a Redis URL's password) masked wherever they are printed.
//! - `sys`: every OS call (descriptor limit, socket options, thread priority, heap trim,
//!   a Unix socket's peer, the terminal's echo, file modes).
//!
//! Tests only (`cfg(test)`, or the `testkit` feature for the fuzz targets and the
//! integration tests): `hub::testkit`, the loop's I/O side in memory under the same
//! driver as the reactor, in virtual time; `store::mem`; and `store::suite`, the checks
//! every store backend passes.
//!
//! The binaries: `chat-server` (`src/bin/chat-server.rs`) and, in the `client/`
//! workspace member, the terminal client `chat`.

pub mod cluster;
pub mod conn;
pub mod hub;
pub mod job;
pub mod metrics;
pub mod offline;
pub mod ops;
pub mod priority;
pub mod proto;
pub mod rate;
pub mod store;
pub mod types;
pub mod users;

#[cfg(feature = "server")]
pub mod reactor;
#[cfg(feature = "server")]
pub mod redact;
#[cfg(feature = "server")]
pub mod sys;
#[cfg(feature = "server")]
pub mod transport;
