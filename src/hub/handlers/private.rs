//! `SmsPrivateMes`: a message to one user, and the offline store behind it.
//!
//! Recipient online here: delivered at once, `SmsResMes` 200. Otherwise a worker stores
//! it if the user exists (`SmsResMes` 202 once committed) or finds no such user (404).
//! Stored messages are delivered at the recipient's next login, oldest first, marked
//! `offline: true` with their `offlineId`, in batches that respect the output queue
//! limit; each batch is removed from the store only once it reached the client
//! (written to its socket, or acknowledged by a client that said it would): see
//! `offline.rs`. A message delivered or stored joins the pair's history (see
//! `history.rs`).
//!
//! A removal runs on the storage workers while a new login of the same user may be
//! fetching on the hashing workers: a client that logs out and straight back in could
//! be sent again what it just got. The hub remembers the removals in flight, and a
//! login's batch skips what they cover; once they are done the session looks again.
#![forbid(unsafe_code)]

use crate::conn::{Pending, Session};
use crate::fit;
use crate::hub::{Hub, Now};
use crate::job::{JobKind, OfflineStored};
use crate::proto::{CodeRes, MAX_MSG_ID, OfflineAckMes, ServerMessage, SmsPrivateMes, code};
use crate::store::{Conv, OfflineMsg, StoreError, StoredMsg};

/// A user's removals of delivered offline messages in flight.
#[derive(Debug, Default)]
pub(crate) struct Removing {
    jobs: u32,
    /// The highest sequence number they remove up to.
    upto: u64,
    /// A login's batch skipped messages they cover: look again once they are done.
    recheck: bool,
}

impl Hub {
    // Every answer echoes the message's `msgId`.
    pub(crate) fn sms_res_id(
        &mut self,
        key: usize,
        code: u16,
        error: &str,
        msg_id: Option<String>,
    ) {
        let res = CodeRes {
            msg_id,
            ..CodeRes::new(code, error)
        };
        self.cx().reply(key, &ServerMessage::SmsRes(res));
    }

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
        if let Some(to) = self.core.online.get(msg.to).map(|e| e.conn.key) {
            let (frame, cut) = self.private_frame_for(to, &msg, None);
            if self.cx().deliver_message(to, &frame.into()) {
                if cut {
                    let text = format!(
                        "delivered cut short: the recipient's client reads at most {} bytes",
                        self.core.conns[to].max_frame()
                    );
                    self.sms_res_id(key, code::PARTIAL, &text, msg_id);
                } else {
                    self.sms_res_id(key, code::OK, "", msg_id);
                }
                self.history.note_private(cx!(self), msg);
                return;
            }
            // The recipient's queue overflowed (it is being dropped as a slow
            // consumer): keep the message for its next login instead of losing it.
        }
        // Online on another node: handed to that node, answered when it says.
        if self.cluster_private(key, &msg, &msg_id, now) {
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
            self.sms_res_id(key, code::UNAVAILABLE, "server busy, try again", msg_id);
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
                self.sms_res_id(key, code::STORED, "", msg_id);
                // The recipient may have logged in (or be logging in) while the message
                // was being stored, after its login fetched the offline messages.
                self.offline_news(to);
            }
            Ok(None) => self.sms_res_id(key, code::NOT_FOUND, "no such user", msg_id),
            Err(e) if e.is_timed_out() => self.sms_res_id(
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
                self.sms_res_id(key, code::UNCERTAIN, text, msg_id)
            }
            Err(e) => {
                self.cx()
                    .store_error(&format!("offline message not stored: {e}"));
                self.sms_res_id(key, code::UNAVAILABLE, "storage unavailable", msg_id)
            }
        }
        self.resume(key, now);
    }

    /// Queues a batch of stored messages on `key`, skipping any it already got. They
    /// are removed from the store once written (or acknowledged by the client). Stops
    /// early when the queue is half full; the rest is fetched after the removal.
    pub(crate) fn deliver_offline(&mut self, key: usize, msgs: Vec<StoredMsg>, batch: usize) {
        if self.core.conns[key].user_id().is_none() {
            return;
        }
        let mut full = msgs.len() >= batch;
        let mut skipped = false;
        let user_id = self.core.conns[key].user_id().unwrap_or_default();
        let (removed, in_flight) = self
            .removing
            .get(&user_id)
            .map_or((0, false), |r| (r.upto, r.jobs > 0));
        for m in msgs {
            let conn = &self.core.conns[key];
            if m.seq <= removed {
                // Delivered to an earlier session, and removed since or being removed.
                // What lies beyond this batch is looked at once the removal is done
                // (see `removal_done`).
                if in_flight && let Some(r) = self.removing.get_mut(&user_id) {
                    r.recheck = true;
                    full = false;
                }
                continue;
            }
            if conn.offline.already_seen(m.seq) {
                // Delivered earlier in this session, but its removal failed: removed
                // again below, never shown twice.
                skipped = true;
                continue;
            }
            if conn.out.len_bytes() >= self.core.cfg.max_outbuf / 2 {
                full = true;
                break;
            }
            let (frame, _) = self.private_frame_for(key, &m.msg, Some(m.seq));
            if !self.cx().deliver(key, &frame.into()) {
                return;
            }
            let conn = &mut self.core.conns[key];
            let total = conn.out.queued_total();
            conn.offline.queued(m.seq, total);
        }
        let action = self.core.conns[key].offline.batch_done(skipped, full);
        self.offline_action(key, action);
    }

    /// Asks the store to remove `user_id`'s stored messages up to `upto`, which reached
    /// the client of `key` (or of a session that has ended).
    pub(crate) fn submit_removal(&mut self, key: Option<usize>, user_id: i64, upto: u64) {
        let r = self.removing.entry(user_id).or_default();
        r.jobs += 1;
        r.upto = r.upto.max(upto);
        self.core
            .submit_always(key, JobKind::AckOffline { user_id, upto });
    }

    /// A removal of `user_id`'s messages finished (`ok`) or failed. With none left in
    /// flight, a session of the user that skipped messages they covered looks again.
    /// The record stays while a login of the user is in flight (its batch, fetched
    /// perhaps before the removal, must skip them too), until the next housekeeping.
    pub(crate) fn removal_done(&mut self, user_id: i64, ok: bool) {
        let Some(r) = self.removing.get_mut(&user_id) else {
            return;
        };
        r.jobs -= 1;
        if r.jobs > 0 {
            return;
        }
        let recheck = std::mem::take(&mut r.recheck);
        if !ok || !self.core.is_logging_in(user_id) {
            self.removing.remove(&user_id);
        }
        let Some(e) = self.core.online.get(user_id) else {
            return;
        };
        let conn = e.conn;
        if recheck && self.core.get(conn).is_some() {
            let action = self.core.conns[conn.key].offline.poke();
            self.offline_action(conn.key, action);
        }
    }

    /// Forgets removals done for users with no login in flight.
    pub(crate) fn forget_removals(&mut self) {
        let mut removing = std::mem::take(&mut self.removing);
        removing.retain(|&user_id, r| r.jobs > 0 || self.core.is_logging_in(user_id));
        self.removing = removing;
    }

    /// `OfflineAckMes`: the client has every offline message up to `upto`.
    pub(crate) fn handle_offline_ack(&mut self, key: usize, m: OfflineAckMes) {
        let action = self.core.conns[key].offline.client_ack(m.upto);
        self.offline_action(key, action);
    }

    /// The removal of delivered offline messages finished.
    pub(crate) fn offline_acked(&mut self, key: usize, upto: u64, result: Result<(), StoreError>) {
        if let Err(e) = &result {
            // They stay stored and come again at the next login.
            self.cx().store_error(&format!(
                "offline messages not removed (they will be offered again): {e}"
            ));
        }
        let action = self.core.conns[key].offline.ack_done(upto, result.is_ok());
        self.offline_action(key, action);
    }

    pub(crate) fn offline_fetched(
        &mut self,
        key: usize,
        user_id: i64,
        batch: usize,
        result: Result<Vec<StoredMsg>, StoreError>,
        _now: Now,
    ) {
        let conn = &self.core.conns[key];
        if conn.user_id() != Some(user_id) || conn.closing.is_some() {
            return;
        }
        match result {
            Ok(msgs) => self.deliver_offline(key, msgs, batch),
            Err(e) => {
                self.cx().store_error(&format!(
                    "user {user_id}: offline messages not fetched: {e}"
                ));
                let action = self.core.conns[key].offline.fetch_failed();
                self.offline_action(key, action);
            }
        }
    }
}

impl Hub {
    /// The frame of a private message for connection `key`: whole, or cut short (the
    /// second value) if its client cannot read it whole.
    pub(crate) fn private_frame_for(
        &self,
        key: usize,
        m: &OfflineMsg,
        offline_id: Option<u64>,
    ) -> (Vec<u8>, bool) {
        let limit = self.core.conns[key].max_frame();
        let frame = private_frame(m, &m.content, offline_id);
        if fit::fits(&frame, limit) {
            return (frame, false);
        }
        match fit::cut_to_fit(&m.content, limit, |c| private_frame(m, c, offline_id)) {
            Some(cut) => (cut, true),
            None => (frame, false),
        }
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
