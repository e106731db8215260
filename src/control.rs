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

use crate::admin::Kick;
use crate::metrics::Snapshot;

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
}

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
    ) -> Result<T, String> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx
            .send(make(tx))
            .map_err(|_| "the server is stopping".to_string())?;
        let _ = self.waker.wake();
        rx.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => {
                format!("the server did not answer within {timeout:?}")
            }
            mpsc::RecvTimeoutError::Disconnected => "the server is stopping".to_string(),
        })
    }

    /// Ends `user`'s sessions; the number closed.
    pub fn kick(&self, user: i64, kick: Kick, timeout: Duration) -> Result<usize, String> {
        self.ask(|reply| Control::Kick { user, kick, reply }, timeout)
    }

    /// The counters, as of the loop's next turn.
    pub fn metrics(&self, timeout: Duration) -> Result<Snapshot, String> {
        self.ask(|reply| Control::Metrics { reply }, timeout)
    }
}
