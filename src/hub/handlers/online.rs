//! `OnlineUsersMes`: who is online now, with names, the caller included.
#![forbid(unsafe_code)]

use crate::fit;
use crate::hub::Hub;
use crate::proto::{self, OnlineUsersResMes, UserInfo, kind};

impl Hub {
    /// The whole list, or for a client that cannot read it in one frame, the caller
    /// and as many others as fit.
    pub(crate) fn handle_online_users(&mut self, key: usize) {
        let users = self.all_infos();
        let limit = self.core.conns[key].max_frame();
        let encode = |users: Vec<UserInfo>| {
            proto::encode(kind::ONLINE_USERS_RES, &OnlineUsersResMes { users })
        };
        let res = OnlineUsersResMes { users };
        let mut frame = proto::encode(kind::ONLINE_USERS_RES, &res);
        if !fit::fits(&frame, limit) {
            let users = res.users;
            let me = self.core.conns[key].user_id();
            let (mine, others): (Vec<UserInfo>, Vec<UserInfo>) =
                users.into_iter().partition(|u| Some(u.user_id) == me);
            let with = |n: usize| encode(mine.iter().chain(&others[..n]).cloned().collect());
            frame = with(fit::largest(others.len(), |n| fit::fits(&with(n), limit)));
        }
        self.cx().reply_frame(key, frame);
    }
}
