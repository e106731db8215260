//! `SmsPrivateMes`: a message to one user, and the offline store behind it.
//!
//! Recipient online here: delivered at once, `SmsResMes` 200. Otherwise a worker stores
//! it if the user exists (`SmsResMes` 202 once committed) or finds no such user (404).
//! Stored messages are delivered at the recipient's next login, oldest first, marked
//! `offline: true`, in batches that respect the output queue limit; each batch is
//! removed from the store only after it was queued on the recipient's connection.
#![forbid(unsafe_code)]

use std::rc::Rc;

use crate::conn::{Pending, Session};
use crate::hub::{Hub, Now};
use crate::job::{JobKind, OfflineStored};
use crate::proto::{CodeRes, MAX_MSG_ID, ServerMessage, SmsPrivateMes, code};
use crate::store::{OfflineMsg, StoreError, StoredMsg};

impl Hub {
    // [h-stores] Every answer echoes the message's `msgId` (was `sms_res`).
    fn sms_res_id(&mut self, key: usize, code: u16, error: &str, msg_id: Option<String>) {
        let res = CodeRes {
            msg_id,
            ..CodeRes::new(code, error)
        };
        self.reply(key, &ServerMessage::SmsRes(res));
    }

    pub(crate) fn handle_private(&mut self, key: usize, m: SmsPrivateMes, now: Now) {
        let Session::Online { user_id, name } = &self.conns[key].session else {
            return;
        };
        let (from, from_name) = (*user_id, name.to_string());
        // [h-stores] The sender's `msgId` (empty = none), echoed in every answer.
        let msg_id = m.msg_id.filter(|id| !id.is_empty());
        if msg_id.as_ref().is_some_and(|id| id.len() > MAX_MSG_ID) {
            let text = format!("msgId must be at most {MAX_MSG_ID} bytes");
            self.sms_res_id(key, code::BAD_REQUEST, &text, msg_id);
            return;
        }
        if m.content.is_empty() {
            self.sms_res_id(key, code::BAD_REQUEST, "empty message", msg_id);
            return;
        }
        if m.to_user_id <= 0 {
            self.sms_res_id(key, code::NOT_FOUND, "no such user", msg_id);
            return;
        }
        let msg = OfflineMsg {
            from,
            from_name,
            to: m.to_user_id,
            content: m.content,
            time: now.unix_ms,
        };
        if let Some(to) = self.online.get(msg.to).map(|e| e.conn.key) {
            let frame: Rc<[u8]> = private_frame(&msg, false).into();
            if self.deliver(to, &frame) {
                self.sms_res_id(key, code::OK, "", msg_id);
                return;
            }
            // The recipient's queue overflowed (it is being dropped as a slow
            // consumer): keep the message for its next login instead of losing it.
        }
        let to = msg.to;
        // [h-stores] The job carries the msgId: the store dedupes on it.
        let job = JobKind::StoreOffline {
            msg,
            msg_id: msg_id.clone(),
        };
        if self.submit(Some(key), job) {
            self.conns[key].pending = Some(Pending::Private { to });
        } else {
            self.sms_res_id(key, code::UNAVAILABLE, "server busy, try again", msg_id);
        }
    }

    pub(crate) fn private_stored(&mut self, key: usize, stored: OfflineStored, now: Now) {
        // [h-stores] Result mapping: 504 when the store cannot tell whether it stored
        // the message; 503 only when it certainly did not. msgId echoed.
        let OfflineStored { msg_id, result } = stored;
        let to = match self.conns[key].pending {
            Some(Pending::Private { to }) => to,
            _ => 0,
        };
        match result {
            Ok(Some(_)) => {
                self.sms_res_id(key, code::STORED, "", msg_id);
                // The recipient may have logged in while the message was being stored,
                // after its login fetched the offline messages: fetch again for it.
                if let Some(k) = self.online.get(to).map(|e| e.conn.key) {
                    self.fetch_offline(k);
                }
            }
            Ok(None) => self.sms_res_id(key, code::NOT_FOUND, "no such user", msg_id),
            Err(e) if e.is_timed_out() => self.sms_res_id(
                key,
                code::UNAVAILABLE,
                "server busy: message not stored",
                msg_id,
            ),
            Err(e) if e.is_uncertain() => {
                log::warn!("offline message may or may not be stored: {e}");
                let text = if msg_id.is_some() {
                    "storage did not answer: the message may or may not be stored; \
                     resending it with the same msgId is safe"
                } else {
                    "storage did not answer: the message may or may not be stored; \
                     send a msgId to make a resend safe"
                };
                self.sms_res_id(key, code::UNCERTAIN, text, msg_id)
            }
            Err(e) => {
                log::error!("offline message not stored: {e}");
                self.sms_res_id(key, code::UNAVAILABLE, "storage unavailable", msg_id)
            }
        }
        self.resume(key, now);
    }

    /// Queues a batch of stored messages on `key`, skipping any it already got, and
    /// acknowledges them to the store. Stops early when the queue is half full. The
    /// next batch is fetched once the removal is done and the queue has drained.
    pub(crate) fn deliver_offline(&mut self, key: usize, msgs: Vec<StoredMsg>, batch: usize) {
        let Some(user_id) = self.conns[key].user_id() else {
            return;
        };
        let mut more = msgs.len() >= batch;
        let mut skipped = false;
        let mut upto = 0;
        for m in msgs {
            let conn = &self.conns[key];
            if m.seq <= conn.offline_seen {
                // Delivered earlier in this session, but its removal failed or is
                // still on the way: acknowledged again below, never shown twice.
                skipped = true;
                continue;
            }
            if conn.out.len_bytes() >= self.cfg.max_outbuf / 2 {
                more = true;
                break;
            }
            let frame: Rc<[u8]> = private_frame(&m.msg, true).into();
            if !self.deliver(key, &frame) {
                break;
            }
            self.conns[key].offline_seen = m.seq;
            upto = m.seq;
        }
        let conn = &mut self.conns[key];
        conn.offline_more = more;
        if upto > 0 || skipped {
            let upto = upto.max(conn.offline_seen);
            conn.offline_acking = true;
            self.submit_always(Some(key), JobKind::AckOffline { user_id, upto });
        } else if more && conn.out.is_empty() && conn.closing.is_none() {
            self.fetch_offline(key);
        }
    }

    /// The removal of delivered offline messages finished.
    pub(crate) fn offline_acked(&mut self, key: usize, result: Result<(), StoreError>) {
        let conn = &mut self.conns[key];
        conn.offline_acking = false;
        match result {
            Ok(()) => {
                if conn.offline_more && conn.out.is_empty() && conn.closing.is_none() {
                    self.fetch_offline(key);
                }
            }
            Err(e) => {
                // They stay stored and come again at the next login; this session has
                // them already (`offline_seen`), so nothing is shown twice here.
                conn.offline_more = false;
                log::warn!("offline messages not removed (they will be offered again): {e}");
            }
        }
    }

    /// Asks a worker for the next batch of `key`'s offline messages.
    pub(crate) fn fetch_offline(&mut self, key: usize) {
        let conn = &self.conns[key];
        let Some(user_id) = conn.user_id() else {
            return;
        };
        if conn.offline_fetching || conn.offline_acking {
            return;
        }
        let batch = self.cfg.offline_batch;
        if self.submit(Some(key), JobKind::FetchOffline { user_id, batch }) {
            let conn = &mut self.conns[key];
            conn.offline_fetching = true;
            conn.offline_more = false;
        }
    }

    pub(crate) fn offline_fetched(
        &mut self,
        key: usize,
        user_id: i64,
        batch: usize,
        result: Result<Vec<StoredMsg>, StoreError>,
        _now: Now,
    ) {
        let conn = &mut self.conns[key];
        conn.offline_fetching = false;
        if conn.user_id() != Some(user_id) || conn.closing.is_some() {
            return;
        }
        match result {
            Ok(msgs) => self.deliver_offline(key, msgs, batch),
            Err(e) => log::warn!("user {user_id}: offline messages not fetched: {e}"),
        }
    }
}

fn private_frame(m: &OfflineMsg, offline: bool) -> Vec<u8> {
    ServerMessage::Private(SmsPrivateMes {
        user_id: m.from,
        user_name: m.from_name.clone(),
        to_user_id: m.to,
        content: m.content.clone(),
        time: m.time,
        offline,
        ..SmsPrivateMes::default()
    })
    .encode()
}
