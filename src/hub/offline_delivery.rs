//! Delivery of stored private messages to the sessions of their recipients: when to
//! fetch a batch, queuing it, and removing from the store what reached the client.
//! Each session's own state machine is [`crate::offline::OfflineSlot`], in its
//! connection; this component drives them and keeps what outlives a session.
//!
//! A removal runs on the storage workers while a new login of the same user may be
//! fetching on the hashing workers: a client that logs out and straight back in could
//! be sent again what it just got. The removals in flight are kept here, and a login's
//! batch skips what they cover; once they are done the session looks again.
#![forbid(unsafe_code)]

use std::collections::HashMap;

use super::cx::{Core, Cx, private_frame_for};
use crate::conn::Pending;
use crate::job::JobKind;
use crate::offline::Action;
use crate::proto::OfflineAckMes;
use crate::store::{StoreError, StoredMsg};
use crate::types::Now;

/// The offline delivery of every session, and the removals in flight.
#[derive(Debug, Default)]
pub(crate) struct OfflineDelivery {
    /// Removals of delivered offline messages in flight, by user.
    removing: HashMap<i64, Removing>,
}

/// A user's removals of delivered offline messages in flight.
#[derive(Debug, Default)]
struct Removing {
    jobs: u32,
    /// The highest sequence number they remove up to.
    upto: u64,
    /// A login's batch skipped messages they cover: look again once they are done.
    recheck: bool,
}

impl OfflineDelivery {
    /// Something was stored for `user_id`: if the user is online here, or logging in,
    /// their session fetches it (now, or once the step under way is done).
    pub(crate) fn news(&mut self, cx: &mut Cx<'_>, user_id: i64) {
        let mut keys: Vec<usize> = cx
            .online()
            .get(user_id)
            .map(|e| e.conn.key)
            .into_iter()
            .collect();
        if cx.is_logging_in(user_id) {
            // Rare (a message stored for a user at the moment they log in): a scan.
            keys.extend(
                cx.conns().filter_map(|(k, c)| {
                    (c.pending == Some(Pending::Login { user_id })).then_some(k)
                }),
            );
        }
        for key in keys {
            let conn = cx.conn_mut(key);
            if conn.is_online() {
                let action = conn.offline.poke();
                self.action(cx, key, action);
            } else {
                // Logging in: its session starts with a look at the store once online.
                conn.offline.poke_later();
            }
        }
    }
    /// Carries out what a session's offline delivery asks for.
    pub(crate) fn action(&mut self, cx: &mut Cx<'_>, key: usize, action: Action) {
        if action == Action::None {
            return;
        }
        let conn = cx.conn_mut(key);
        let Some(user_id) = conn.user_id() else {
            return;
        };
        match action {
            Action::None => {}
            Action::Fetch => {
                if conn.closing.is_some() {
                    return;
                }
                let batch = cx.cfg().offline_batch;
                if !cx.submit(Some(key), JobKind::FetchOffline { user_id, batch }) {
                    let action = cx.conn_mut(key).offline.fetch_failed();
                    self.action(cx, key, action);
                }
            }
            Action::Ack(upto) => self.submit_removal(cx, Some(key), user_id, upto),
        }
    }

    /// Queues a batch of stored messages on `key`, skipping any it already got. They
    /// are removed from the store once written (or acknowledged by the client). Stops
    /// early when the queue is half full; the rest is fetched after the removal.
    pub(crate) fn deliver(
        &mut self,
        cx: &mut Cx<'_>,
        key: usize,
        msgs: Vec<StoredMsg>,
        batch: usize,
    ) {
        if cx.conn(key).user_id().is_none() {
            return;
        }
        let mut full = msgs.len() >= batch;
        let mut skipped = false;
        let user_id = cx.conn(key).user_id().unwrap_or_default();
        let (removed, in_flight) = self
            .removing
            .get(&user_id)
            .map_or((0, false), |r| (r.upto, r.jobs > 0));
        for m in msgs {
            let conn = cx.conn(key);
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
            if conn.out.len_bytes() >= cx.cfg().max_outbuf / 2 {
                full = true;
                break;
            }
            let (frame, _) = private_frame_for(cx.conn(key), &m.msg, Some(m.seq));
            if !cx.deliver(key, &frame.into()) {
                return;
            }
            let conn = cx.conn_mut(key);
            let total = conn.out.queued_total();
            conn.offline.queued(m.seq, total);
        }
        let action = cx.conn_mut(key).offline.batch_done(skipped, full);
        self.action(cx, key, action);
    }
    /// Asks the store to remove `user_id`'s stored messages up to `upto`, which reached
    /// the client of `key` (or of a session that has ended).
    pub(crate) fn submit_removal(
        &mut self,
        cx: &mut Cx<'_>,
        key: Option<usize>,
        user_id: i64,
        upto: u64,
    ) {
        let r = self.removing.entry(user_id).or_default();
        r.jobs += 1;
        r.upto = r.upto.max(upto);
        cx.submit_always(key, JobKind::AckOffline { user_id, upto });
    }
    /// A removal of `user_id`'s messages finished (`ok`) or failed. With none left in
    /// flight, a session of the user that skipped messages they covered looks again.
    /// The record stays while a login of the user is in flight (its batch, fetched
    /// perhaps before the removal, must skip them too), until the next housekeeping.
    pub(crate) fn removal_done(&mut self, cx: &mut Cx<'_>, user_id: i64, ok: bool) {
        let Some(r) = self.removing.get_mut(&user_id) else {
            return;
        };
        r.jobs -= 1;
        if r.jobs > 0 {
            return;
        }
        let recheck = std::mem::take(&mut r.recheck);
        if !ok || !cx.is_logging_in(user_id) {
            self.removing.remove(&user_id);
        }
        let Some(e) = cx.online().get(user_id) else {
            return;
        };
        let conn = e.conn;
        if recheck && cx.get(conn).is_some() {
            let action = cx.conn_mut(conn.key).offline.poke();
            self.action(cx, conn.key, action);
        }
    }
    /// Forgets removals done for users with no login in flight.
    pub(crate) fn forget_removals(&mut self, core: &Core) {
        self.removing
            .retain(|&user_id, r| r.jobs > 0 || core.is_logging_in(user_id));
    }
    /// `OfflineAckMes`: the client has every offline message up to `upto`.
    pub(crate) fn handle_ack(&mut self, cx: &mut Cx<'_>, key: usize, m: OfflineAckMes) {
        let action = cx.conn_mut(key).offline.client_ack(m.upto);
        self.action(cx, key, action);
    }
    /// The removal of delivered offline messages finished.
    pub(crate) fn acked(
        &mut self,
        cx: &mut Cx<'_>,
        key: usize,
        upto: u64,
        result: Result<(), StoreError>,
    ) {
        if let Err(e) = &result {
            // They stay stored and come again at the next login.
            cx.store_error(&format!(
                "offline messages not removed (they will be offered again): {e}"
            ));
        }
        let action = cx.conn_mut(key).offline.ack_done(upto, result.is_ok());
        self.action(cx, key, action);
    }
    pub(crate) fn fetched(
        &mut self,
        cx: &mut Cx<'_>,
        key: usize,
        user_id: i64,
        batch: usize,
        result: Result<Vec<StoredMsg>, StoreError>,
        _now: Now,
    ) {
        let conn = cx.conn(key);
        if conn.user_id() != Some(user_id) || conn.closing.is_some() {
            return;
        }
        match result {
            Ok(msgs) => self.deliver(cx, key, msgs, batch),
            Err(e) => {
                cx.store_error(&format!(
                    "user {user_id}: offline messages not fetched: {e}"
                ));
                let action = cx.conn_mut(key).offline.fetch_failed();
                self.action(cx, key, action);
            }
        }
    }
}
