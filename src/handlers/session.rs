//! `PingMes` (answered with `PongMes`, before or after login) and `LogoutMes` (the
//! others are told, then the connection is closed).

use crate::hub::{Hub, Now};
use crate::proto::ServerMessage;

impl Hub {
    pub(crate) fn handle_ping(&mut self, key: usize) {
        self.reply(key, &ServerMessage::Pong);
    }

    pub(crate) fn handle_logout(&mut self, key: usize, now: Now) {
        self.go_offline(key, now);
        self.close(key, true, "logged out", now);
    }
}
