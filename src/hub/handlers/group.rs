//! `SmsMes`: a group message to every other online user.
//!
//! The sender is stamped from the session (never taken from the frame), `userPwd` is
//! always empty, and `time` is added. The frame is encoded once and every recipient's
//! queue shares those bytes. It is never echoed to the sender. Recipients whose client
//! cannot read it whole (seed clients: 8,096 bytes) get it cut short, one shared
//! shorter frame, and the sender is told (`ErrorResMes` 206). It joins the group's
//! history (see `history.rs`).
#![forbid(unsafe_code)]

use std::rc::Rc;

use crate::conn::Session;
use crate::fit;
use crate::hub::{Hub, Now};
use crate::proto::{
    self, CodeRes, HistoryEntry, SEED_MAX_FRAME, ServerMessage, SmsMes, code, kind,
};

impl Hub {
    pub(crate) fn handle_group(&mut self, key: usize, m: SmsMes, now: Now) {
        let Session::Online { user_id, name } = &self.core.conns[key].session else {
            return;
        };
        if m.content.is_empty() {
            self.cx().error(key, code::BAD_REQUEST, "empty message");
            return;
        }
        let sms = SmsMes {
            content: m.content,
            user_id: *user_id,
            user_pwd: String::new(),
            user_name: name.to_string(),
            user_status: 0,
            sex: String::new(),
            time: Some(now.unix_ms),
        };
        let frame = proto::encode(kind::SMS, &sms);
        // Seed clients cannot read a longer frame: they get it cut short.
        let cut: Option<Rc<[u8]>> = if fit::fits(&frame, SEED_MAX_FRAME) {
            None
        } else {
            let encode = |content: &str| {
                let cut = SmsMes {
                    content: content.to_string(),
                    ..sms.clone()
                };
                proto::encode(kind::SMS, &cut)
            };
            fit::cut_to_fit(&sms.content, SEED_MAX_FRAME, encode).map(Into::into)
        };
        self.stats.group_messages += 1;
        if let Some(c) = self.cluster.as_mut() {
            c.group(sms.user_id, &sms.user_name, &sms.content, now.unix_ms);
        }
        let cut_for = self.cx().broadcast_fitted(Some(key), frame, cut.as_ref());
        if cut_for > 0 {
            let text = format!(
                "your message was cut short for {cut_for} users whose clients read at most \
                 {SEED_MAX_FRAME} bytes"
            );
            self.cx().reply(
                key,
                &ServerMessage::Error(CodeRes::new(code::PARTIAL, text)),
            );
        }
        // Whole, whoever got it cut short; the strings move, nothing is copied.
        self.history.note(
            cx!(self),
            HistoryEntry {
                id: 0,
                time: now.unix_ms,
                user_id: sms.user_id,
                user_name: sms.user_name,
                content: sms.content,
                to_user_id: None,
            },
        );
    }
}
