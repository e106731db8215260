//! `PingMes` (answered with `PongMes`, before or after login) and `LogoutMes` (the
//! others are told, then the connection is closed).
#![forbid(unsafe_code)]

use crate::hub::{Hub, Now};

impl Hub {
    pub(crate) fn handle_ping(&mut self, key: usize) {
        let pong = self.core.pong.clone();
        self.cx().deliver(key, &pong);
    }

    pub(crate) fn handle_logout(&mut self, key: usize, now: Now) {
        self.core.go_offline(key, now);
        self.core.close(key, true, "logged out", now);
    }
}
