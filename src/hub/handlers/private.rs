//! `SmsPrivateMes`: a message to one user, and the offline store behind it.
//!
//! Recipient online here: delivered at once, `SmsResMes` 200. Otherwise a worker stores
//! it if the user exists (`SmsResMes` 202 once committed) or finds no such user (404).
//! Stored messages are delivered at the recipient's next login, oldest first, marked
//! `offline: true` with their `offlineId`, in batches that respect the output queue
//! limit; each batch is removed from the store only once it reached the client
//! (written to its socket, or acknowledged by a client that said it would): see
//! `offline.rs` and `hub/offline_delivery.rs`. A message delivered or stored joins the
//! pair's history (see `hub/history.rs`).
#![forbid(unsafe_code)]

use crate::conn::{Pending, Session};
use crate::fit;
use crate::hub::cx::Cx;
use crate::hub::{Hub, Now};
use crate::job::{JobKind, OfflineStored};
use crate::proto::{CodeRes, MAX_MSG_ID, ServerMessage, SmsPrivateMes, code};
use crate::store::{Conv, OfflineMsg};

impl Hub {
    pub(crate) fn handle_private(&mut self, key: usize, m: SmsPrivateMes, now: Now) {
        self.stats.private_messages += 1;
        let Session::Online { user_id, name } = &self.core.conns[key].session else {
            return;
        };
        let (from, from_name) = (*user_id, name.to_string());
        // The sender's `msgId` (empty = none), echoed in every answer.
        let msg_id = m.msg_id.filter(|id| !id.is_empty());
        if msg_id.as_ref().is_some_and(|id| id.len() > MAX_MSG_ID) {
            let text = format!("msgId must be at most {MAX_MSG_ID} bytes");
            sms_res_id(&mut self.cx(), key, code::BAD_REQUEST, &text, msg_id);
            return;
        }
        if m.content.is_empty() {
            sms_res_id(
                &mut self.cx(),
                key,
                code::BAD_REQUEST,
                "empty message",
                msg_id,
            );
            return;
        }
        if m.to_user_id <= 0 {
            sms_res_id(&mut self.cx(), key, code::NOT_FOUND, "no such user", msg_id);
            return;
        }
        let msg = OfflineMsg {
            from,
            from_name,
            to: m.to_user_id,
            content: m.content,
            time: now.unix_ms,
        };
        if let Some(to) = self.core.online.get(msg.to).map(|e| e.conn.key) {
            let (frame, cut) = private_frame_for(self.core.conns[to].max_frame(), &msg, None);
            if self.cx().deliver_message(to, &frame.into()) {
                if cut {
                    let text = format!(
                        "delivered cut short: the recipient's client reads at most {} bytes",
                        self.core.conns[to].max_frame()
                    );
                    sms_res_id(&mut self.cx(), key, code::PARTIAL, &text, msg_id);
                } else {
                    sms_res_id(&mut self.cx(), key, code::OK, "", msg_id);
                }
                self.history.note_private(cx!(self), msg);
                return;
            }
            // The recipient's queue overflowed (it is being dropped as a slow
            // consumer): keep the message for its next login instead of losing it.
        }
        // Online on another node: handed to that node, answered when it says.
        if let Some(c) = self.cluster.as_mut()
            && c.hand_private(cx!(self), key, &msg, &msg_id, now)
        {
            return;
        }
        let to = msg.to;
        let after_history = self
            .history
            .before_stored(cx!(self), Conv::pair(msg.from, msg.to));
        // The job carries the msgId: the store dedupes on it.
        let job = JobKind::StoreOffline {
            msg,
            msg_id: msg_id.clone(),
            history: self.core.cfg.history,
            after_history,
        };
        if self.core.submit(Some(key), job) {
            self.core.conns[key].pending = Some(Pending::Private { to });
        } else {
            sms_res_id(
                &mut self.cx(),
                key,
                code::UNAVAILABLE,
                "server busy, try again",
                msg_id,
            );
        }
    }

    pub(crate) fn private_stored(&mut self, key: usize, stored: OfflineStored, now: Now) {
        // Result mapping: 504 when the store cannot tell whether it stored
        // the message; 503 only when it certainly did not. msgId echoed.
        let OfflineStored { msg_id, result, .. } = stored;
        let to = match self.core.conns[key].pending {
            Some(Pending::Private { to }) => to,
            _ => 0,
        };
        match result {
            Ok(Some(_)) => {
                sms_res_id(&mut self.cx(), key, code::STORED, "", msg_id);
                // The recipient may have logged in (or be logging in) while the message
                // was being stored, after its login fetched the offline messages.
                self.offline.news(cx!(self), to);
            }
            Ok(None) => sms_res_id(&mut self.cx(), key, code::NOT_FOUND, "no such user", msg_id),
            Err(e) if e.is_timed_out() => sms_res_id(
                &mut self.cx(),
                key,
                code::UNAVAILABLE,
                "server busy: message not stored",
                msg_id,
            ),
            Err(e) if e.is_uncertain() => {
                self.cx()
                    .store_error(&format!("offline message may or may not be stored: {e}"));
                let text = if msg_id.is_some() {
                    "storage did not answer: the message may or may not be stored; \
                     resending it with the same msgId is safe"
                } else {
                    "storage did not answer: the message may or may not be stored; \
                     send a msgId to make a resend safe"
                };
                sms_res_id(&mut self.cx(), key, code::UNCERTAIN, text, msg_id)
            }
            Err(e) => {
                self.cx()
                    .store_error(&format!("offline message not stored: {e}"));
                sms_res_id(
                    &mut self.cx(),
                    key,
                    code::UNAVAILABLE,
                    "storage unavailable",
                    msg_id,
                )
            }
        }
        self.resume(key, now);
    }
}

/// The frame of a private message for a client that reads frames of at most `limit`
/// bytes: whole, or cut short (the second value) if it cannot read it whole.
pub(crate) fn private_frame_for(
    limit: usize,
    m: &OfflineMsg,
    offline_id: Option<u64>,
) -> (Vec<u8>, bool) {
    let frame = private_frame(m, &m.content, offline_id);
    if fit::fits(&frame, limit) {
        return (frame, false);
    }
    match fit::cut_to_fit(&m.content, limit, |c| private_frame(m, c, offline_id)) {
        Some(cut) => (cut, true),
        None => (frame, false),
    }
}

fn private_frame(m: &OfflineMsg, content: &str, offline_id: Option<u64>) -> Vec<u8> {
    ServerMessage::Private(SmsPrivateMes {
        user_id: m.from,
        user_name: m.from_name.clone(),
        to_user_id: m.to,
        content: content.to_string(),
        time: m.time,
        offline: offline_id.is_some(),
        offline_id,
        ..SmsPrivateMes::default()
    })
    .encode()
}

/// Answers a private message: `SmsResMes`, echoing the message's `msgId`.
pub(crate) fn sms_res_id(
    cx: &mut Cx<'_>,
    key: usize,
    code: u16,
    error: &str,
    msg_id: Option<String>,
) {
    let res = CodeRes {
        msg_id,
        ..CodeRes::new(code, error)
    };
    cx.reply(key, &ServerMessage::SmsRes(res));
}
