//! What an operator uses: the commands and the admin socket, the metrics listener, the
//! configuration file, the log.
//!
//! Only [`admin`] (what each command does to a store, and the admin socket's requests
//! and answers) belongs to the sans-I/O build; the rest is the server's.

pub mod admin;

#[cfg(feature = "server")]
pub mod admin_socket;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod control;
#[cfg(feature = "server")]
pub mod deadline;
#[cfg(feature = "server")]
pub mod logging;
#[cfg(feature = "server")]
pub mod metrics_http;
