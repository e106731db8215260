//! Requests from the operators' threads (the admin socket, the metrics listener) to
//! the event loop, which never waits for them.
//!
//! A thread sends a [`Control`] through a [`ControlHandle`] (a channel, and the loop's
//! `mio::Waker`, as worker results do) and waits for the answer on a channel of its
//! own; the loop takes the requests at its next turn, answers each at once and goes
//! on. If the loop is stopping, the request is dropped and the thread hears so.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use mio::Waker;

use crate::metrics::Snapshot;
use crate::ops::admin::OnlineLine;
use crate::types::Kick;

/// What an operator's thread asks of the loop.
pub enum Control {
    /// End every session of `user` ([`Hub::handle_admin`](crate::hub::Hub::handle_admin)):
    /// answered with the number of sessions closed.
    Kick {
        user: i64,
        kick: Kick,
        reply: mpsc::SyncSender<usize>,
    },
    /// Copy the counters for a scrape.
    Metrics { reply: mpsc::SyncSender<Snapshot> },
    /// The sessions logged in here ([`Hub::sessions`](crate::hub::Hub::sessions)).
    Online {
        reply: mpsc::SyncSender<Vec<OnlineLine>>,
    },
}

/// Why a request to the loop got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlError {
    /// The loop is stopping (or gone): the request was dropped.
    Stopping,
    /// The loop did not answer within this time.
    NoAnswer(Duration),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::Stopping => f.write_str("the server is stopping"),
            ControlError::NoAnswer(t) => write!(f, "the server did not answer within {t:?}"),
        }
    }
}

impl std::error::Error for ControlError {}

/// Sends [`Control`] requests to a running server's loop. Cheap to clone.
#[derive(Clone)]
pub struct ControlHandle {
    tx: mpsc::Sender<Control>,
    waker: Arc<Waker>,
}

impl ControlHandle {
    pub fn new(tx: mpsc::Sender<Control>, waker: Arc<Waker>) -> ControlHandle {
        ControlHandle { tx, waker }
    }

    fn ask<T>(
        &self,
        make: impl FnOnce(mpsc::SyncSender<T>) -> Control,
        timeout: Duration,
    ) -> Result<T, ControlError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx.send(make(tx)).map_err(|_| ControlError::Stopping)?;
        let _ = self.waker.wake();
        rx.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => ControlError::NoAnswer(timeout),
            mpsc::RecvTimeoutError::Disconnected => ControlError::Stopping,
        })
    }

    /// Ends `user`'s sessions; the number closed.
    pub fn kick(&self, user: i64, kick: Kick, timeout: Duration) -> Result<usize, ControlError> {
        self.ask(|reply| Control::Kick { user, kick, reply }, timeout)
    }

    /// Who is logged in on this server.
    pub fn online(&self, timeout: Duration) -> Result<Vec<OnlineLine>, ControlError> {
        self.ask(|reply| Control::Online { reply }, timeout)
    }

    /// The counters, as of the loop's next turn.
    pub fn metrics(&self, timeout: Duration) -> Result<Snapshot, ControlError> {
        self.ask(|reply| Control::Metrics { reply }, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_the_operator_is_told() {
        assert_eq!(ControlError::Stopping.to_string(), "the server is stopping");
        assert_eq!(
            ControlError::NoAnswer(Duration::from_secs(10)).to_string(),
            "the server did not answer within 10s"
        );
    }
}
