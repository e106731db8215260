//! `SmsMes`: a group message to every other online user.
//!
//! The sender is stamped from the session (never taken from the frame), `userPwd` is
//! always empty, and `time` is added. The frame is encoded once and every recipient's
//! queue shares those bytes. It is never echoed to the sender.
#![forbid(unsafe_code)]

use std::rc::Rc;

use crate::conn::Session;
use crate::hub::{Hub, Now};
use crate::proto::{ServerMessage, SmsMes, code};

impl Hub {
    pub(crate) fn handle_group(&mut self, key: usize, m: SmsMes, now: Now) {
        let Session::Online { user_id, name } = &self.conns[key].session else {
            return;
        };
        if m.content.is_empty() {
            self.error(key, code::BAD_REQUEST, "empty message");
            return;
        }
        let frame: Rc<[u8]> = ServerMessage::Sms(SmsMes {
            content: m.content,
            user_id: *user_id,
            user_pwd: String::new(),
            user_name: name.to_string(),
            user_status: 0,
            sex: String::new(),
            time: Some(now.unix_ms),
        })
        .encode()
        .into();
        self.stats.group_messages += 1;
        self.broadcast(Some(key), &frame);
    }
}
