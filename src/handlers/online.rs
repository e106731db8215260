//! `OnlineUsersMes`: who is online now, with names, the caller included.
#![forbid(unsafe_code)]

use crate::hub::Hub;
use crate::proto::{OnlineUsersResMes, ServerMessage};

impl Hub {
    pub(crate) fn handle_online_users(&mut self, key: usize) {
        let users = self.online.infos();
        self.reply(
            key,
            &ServerMessage::OnlineUsersRes(OnlineUsersResMes { users }),
        );
    }
}
