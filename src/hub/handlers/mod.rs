//! The message handlers, one file per command, behind one dispatcher.
//!
//! Each handler is an `impl Hub` block: it reads the session, the registry and the
//! message, and acts through the hub's few verbs (`reply`, `deliver`, `broadcast`,
//! `submit` a store job, `close`). Handlers that need the store finish in a `*_done`
//! method that the hub calls with the job's result.
#![forbid(unsafe_code)]

mod group;
pub(crate) mod login;
mod online;
pub(crate) mod private;
mod register;
mod session;

use crate::hub::{Hub, Now};
use crate::proto::{ClientMessage, ParseError, code};

impl Hub {
    /// Routes one parsed frame from connection `key`.
    pub(crate) fn dispatch(
        &mut self,
        key: usize,
        msg: Result<ClientMessage, ParseError>,
        now: Now,
    ) {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                // The length prefix was sound, so the stream is still in step: answer
                // and go on.
                self.cx().error(key, code::BAD_REQUEST, &e.to_string());
                return;
            }
        };
        match msg {
            ClientMessage::Ping => self.handle_ping(key),
            ClientMessage::Login(m) => self.handle_login(key, m, now),
            ClientMessage::Register(m) => self.handle_register(key, m, now),
            _ if !self.core.conns[key].is_online() => {
                self.core.summary.frames_refused += 1;
                self.cx().error(key, code::UNAUTHORIZED, "log in first");
            }
            ClientMessage::Sms(m) => self.handle_group(key, m, now),
            ClientMessage::Private(m) => self.handle_private(key, m, now),
            ClientMessage::OnlineUsers => self.handle_online_users(key),
            ClientMessage::Logout => self.handle_logout(key, now),
            ClientMessage::OfflineAck(m) => self.offline.handle_ack(cx!(self), key, m),
            ClientMessage::History(m) => self.history.handle(cx!(self), key, m, now),
        }
    }
}
