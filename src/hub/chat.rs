//! Chat: `SmsMes` (a group message to every other online user), `SmsPrivateMes` (a
//! message to one user, stored if they are offline), `OnlineUsersMes`, and the roster
//! of everyone online that a login reply lists.
//!
//! A group message's sender is stamped from the session (never taken from the frame),
//! `userPwd` is always empty, and `time` is added. The frame is encoded once and every
//! recipient's queue shares those bytes. It is never echoed to the sender. Recipients
//! whose client cannot read it whole (seed clients: 8,096 bytes) get it cut short, one
//! shared shorter frame, and the sender is told (`ErrorResMes` 206).
//!
//! A private message for a recipient online here is queued on its connection, and the
//! sender is answered `SmsResMes` 200 (206 cut short) once the frame is written to
//! the recipient's socket ([`Chat::written`]); if the connection goes first, the
//! message is stored instead and answered 202 ([`Chat::unwritten`]). The recipient's
//! connection keeps these in `Conn::awaiting`, so a group message costs nothing more.
//! A private message from a user of another node waits there the same way, and that
//! node is told whether it was written (see `hub/cluster.rs`).
//! Otherwise a worker stores it if the user exists (`SmsResMes` 202 once committed)
//! or finds no such user (404); stored messages are delivered at the recipient's next
//! login (see `hub/offline_delivery.rs`). A message delivered or stored joins its
//! conversation's history (see `hub/history.rs`). A seed client gets a private
//! message as an `SmsMes` it shows (see `cx::private_frame_for`).
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::rc::Rc;

use super::cluster::Cluster;
use super::cx::{Core, Cx, private_frame_for, sms_res_id};
use super::history::History;
use super::offline_delivery::OfflineDelivery;
use crate::conn::{Awaiter, AwaitingWrite, Pending, Session};
use crate::hub::frame_fit;
use crate::hub::roster::{Listing, Roster, Version};
use crate::job::{JobKind, OfflineStored};
use crate::proto::{
    self, CodeRes, HistoryEntry, LoginResMes, MAX_MSG_ID, OnlineUsersResMes, SEED_MAX_FRAME,
    ServerMessage, SmsMes, SmsPrivateMes, UserInfo, code, kind,
};
use crate::store::{Conv, OfflineMsg};
use crate::types::{Now, Part};

/// How long a private message may wait to be written to its recipient's socket: a
/// connection that has not taken it by then is dropped as a slow consumer, and what it
/// did not take is stored (202), so that its sender is answered in bounded time.
pub(crate) const PRIVATE_WRITE_WAIT_MS: u64 = 10_000;

/// How long the roster is kept after the last login (see [`Chat::housekeeping`]).
const ROSTER_KEEP_MS: u64 = 2_000;

/// The roster of everyone online, as the login reply lists them; the handlers of
/// group and private messages and of the online list.
#[derive(Debug, Default)]
pub(crate) struct Chat {
    /// Everyone online, encoded as the login reply lists them. Dropped when logins
    /// stop for a while, built again on the next one.
    roster: Roster,
    /// When a login last used the roster.
    roster_used_ms: u64,
}

impl Chat {
    pub(crate) fn handle_group(
        cx: &mut Cx<'_>,
        history: &mut History,
        cluster: Option<&mut Cluster>,
        key: usize,
        m: SmsMes,
        now: Now,
    ) {
        let Session::Online { user_id, name } = &cx.conn(key).session else {
            return;
        };
        if m.content.is_empty() {
            cx.error(key, code::BAD_REQUEST, "empty message");
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
        let cut: Option<Rc<[u8]>> = if frame_fit::fits(&frame, SEED_MAX_FRAME) {
            None
        } else {
            let encode = |content: &str| {
                let cut = SmsMes {
                    content: content.to_string(),
                    ..sms.clone()
                };
                proto::encode(kind::SMS, &cut)
            };
            frame_fit::cut_to_fit(&sms.content, SEED_MAX_FRAME, encode).map(Into::into)
        };
        cx.stats().group_messages += 1;
        if let Some(c) = cluster {
            c.group(sms.user_id, &sms.user_name, &sms.content, now.unix_ms);
        }
        let cut_for = cx.broadcast_fitted(Some(key), frame, cut.as_ref());
        if cut_for > 0 {
            let text = format!(
                "your message was cut short for {cut_for} users whose clients read at most \
                 {SEED_MAX_FRAME} bytes"
            );
            cx.reply(
                key,
                &ServerMessage::Error(CodeRes::new(code::PARTIAL, text)),
            );
        }
        // Whole, whoever got it cut short; the strings move, nothing is copied.
        history.note(
            cx,
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

    pub(crate) fn handle_private(
        cx: &mut Cx<'_>,
        history: &mut History,
        cluster: Option<&mut Cluster>,
        key: usize,
        m: SmsPrivateMes,
        now: Now,
    ) {
        cx.stats().private_messages += 1;
        let Session::Online { user_id, name } = &cx.conn(key).session else {
            return;
        };
        let (from, from_name) = (*user_id, name.to_string());
        // The sender's `msgId` (empty = none), echoed in every answer.
        let msg_id = m.msg_id.filter(|id| !id.is_empty());
        if msg_id.as_ref().is_some_and(|id| id.len() > MAX_MSG_ID) {
            let text = format!("msgId must be at most {MAX_MSG_ID} bytes");
            sms_res_id(cx, key, code::BAD_REQUEST, &text, msg_id);
            return;
        }
        if m.content.is_empty() {
            sms_res_id(cx, key, code::BAD_REQUEST, "empty message", msg_id);
            return;
        }
        if m.to_user_id <= 0 {
            sms_res_id(cx, key, code::NOT_FOUND, "no such user", msg_id);
            return;
        }
        let msg = OfflineMsg {
            from,
            from_name,
            to: m.to_user_id,
            content: m.content,
            time: now.unix_ms,
        };
        if let Some(to) = cx.online().get(msg.to).map(|e| e.conn.key) {
            let (frame, cut) = private_frame_for(cx.conn(to), &msg, None);
            // Answered once the frame is written (see `Chat::written`), or stored if
            // the recipient goes first (see `Chat::unwritten`).
            let end = if cx.deliver_message(to, &frame.into()) {
                cx.conn(to).out.queued_total()
            } else {
                // Not queued: the recipient is closing (its queue overflowed, it is
                // being dropped as a slow consumer). Stored as it goes, after the
                // messages queued before it, so that they keep their order.
                u64::MAX
            };
            let sender = cx.conn_ref(key);
            let from = Awaiter::Local {
                sender,
                msg: msg.clone(),
                msg_id,
            };
            Chat::await_write(cx, to, end, cut, from, now);
            history.note_private(cx, msg);
            return;
        }
        // Online on another node: handed to that node, answered when it says.
        if let Some(c) = cluster
            && c.hand_private(cx, key, &msg, &msg_id, now)
        {
            return;
        }
        // Its connection here is closing with messages it has not taken, stored when
        // it goes: this one joins them, so that they keep their order.
        if let Some(&r) = cx.core().lingering.get(&msg.to)
            && cx.get(r).is_some()
        {
            let from = Awaiter::Local {
                sender: cx.conn_ref(key),
                msg: msg.clone(),
                msg_id,
            };
            Chat::await_write(cx, r.key, u64::MAX, false, from, now);
            history.note_private(cx, msg);
            return;
        }
        let to = msg.to;
        let after_history = history.before_stored(cx, Conv::pair(msg.from, msg.to));
        // The job carries the msgId: the store dedupes on it.
        let job = JobKind::StoreOffline {
            msg,
            msg_id: msg_id.clone(),
            history: cx.cfg().history,
            after_history,
            waits: true,
        };
        if cx.submit(Some(key), job) {
            cx.conn_mut(key).pending = Some(Pending::Private { to });
        } else {
            sms_res_id(cx, key, code::UNAVAILABLE, "server busy, try again", msg_id);
        }
    }

    /// A private message's frame is queued on `to` (or could not be, `end` =
    /// `u64::MAX`: `to` is closing): `from` is answered once it is written, see
    /// [`Chat::written`] and [`Chat::unwritten`].
    pub(crate) fn await_write(
        cx: &mut Cx<'_>,
        to: usize,
        end: u64,
        cut: bool,
        from: Awaiter,
        now: Now,
    ) {
        cx.conn_mut(to).awaiting.push_back(AwaitingWrite {
            end,
            since_ms: now.mono_ms,
            cut,
            from,
        });
        cx.arm(to, now.mono_ms.saturating_add(PRIVATE_WRITE_WAIT_MS));
    }

    /// `key` has written more of its output: the senders of the private messages now
    /// written are answered 200 (206 if cut short), here or through their node.
    pub(crate) fn written(cx: &mut Cx<'_>, mut cluster: Option<&mut Cluster>, key: usize) {
        let written = cx.conn(key).out.written_total();
        let max_frame = cx.conn(key).max_frame();
        while cx
            .conn(key)
            .awaiting
            .front()
            .is_some_and(|a| a.end <= written)
        {
            let Some(a) = cx.conn_mut(key).awaiting.pop_front() else {
                break;
            };
            let (sender, msg_id) = match a.from {
                Awaiter::Local { sender, msg_id, .. } => (sender, msg_id),
                Awaiter::Remote { node, id } => {
                    if let Some(c) = cluster.as_deref_mut() {
                        c.answer_private(&node, id, true, a.cut);
                    }
                    continue;
                }
            };
            if cx.get(sender).is_none_or(|c| c.is_closing()) {
                continue;
            }
            if a.cut {
                let text = format!(
                    "delivered cut short: the recipient's client reads at most {max_frame} bytes"
                );
                sms_res_id(cx, sender.key, code::PARTIAL, &text, msg_id);
            } else {
                sms_res_id(cx, sender.key, code::OK, "", msg_id);
            }
        }
    }

    /// `key`'s deadline came: if its oldest private message waiting to be written has
    /// waited [`PRIVATE_WRITE_WAIT_MS`], the connection is dropped as a slow consumer
    /// (its unwritten messages are then stored, see [`Chat::unwritten`]).
    pub(crate) fn write_due(cx: &mut Cx<'_>, key: usize, now: Now) {
        let Some(since) = cx.conn(key).awaiting.front().map(|a| a.since_ms) else {
            return;
        };
        let due = since.saturating_add(PRIVATE_WRITE_WAIT_MS);
        if due > now.mono_ms {
            cx.arm(key, due);
            return;
        }
        cx.stats().slow_consumers_dropped += 1;
        let reason = format!(
            "slow consumer: a private message not taken in {} s",
            PRIVATE_WRITE_WAIT_MS / 1000
        );
        log::warn!("conn {key} ({}): {reason}", cx.conn(key).peer());
        cx.close(key, false, &reason, now);
    }

    /// A connection went with private messages queued and not written: each is stored
    /// for the recipient's next login, its sender answered 202 once it is (or 503/504
    /// as for any message stored). Already in history: not noted again. One from
    /// another node is given back to that node, which stores it and answers its
    /// sender (it alone stores it, whether it hears this or gives up waiting).
    pub(crate) fn unwritten(
        cx: &mut Cx<'_>,
        mut cluster: Option<&mut Cluster>,
        awaiting: VecDeque<AwaitingWrite>,
    ) {
        for a in awaiting {
            let (sender, msg, msg_id) = match a.from {
                Awaiter::Local {
                    sender,
                    msg,
                    msg_id,
                } => (sender, msg, msg_id),
                Awaiter::Remote { node, id } => {
                    if let Some(c) = cluster.as_deref_mut() {
                        c.answer_private(&node, id, false, false);
                    }
                    continue;
                }
            };
            let sender = cx
                .get(sender)
                .filter(|c| !c.is_closing())
                .map(|_| sender.key);
            let job = JobKind::StoreOffline {
                msg,
                msg_id,
                history: 0,
                after_history: false,
                waits: false,
            };
            // Bounded by the recipient's queue, which held them all.
            cx.submit_always(sender, job);
        }
    }

    pub(crate) fn private_stored(
        cx: &mut Cx<'_>,
        offline: &mut OfflineDelivery,
        key: usize,
        stored: OfflineStored,
    ) {
        // Result mapping: 504 when the store cannot tell whether it stored
        // the message; 503 only when it certainly did not. msgId echoed.
        let OfflineStored {
            msg_id, result, to, ..
        } = stored;
        match result {
            Ok(Some(_)) => {
                sms_res_id(cx, key, code::STORED, "", msg_id);
                // The recipient may have logged in (or be logging in) while the message
                // was being stored, after its login fetched the offline messages.
                offline.news(cx, to);
            }
            Ok(None) => sms_res_id(cx, key, code::NOT_FOUND, "no such user", msg_id),
            Err(e) if e.is_timed_out() => sms_res_id(
                cx,
                key,
                code::UNAVAILABLE,
                "server busy: message not stored",
                msg_id,
            ),
            Err(e) if e.is_uncertain() => {
                cx.store_error(&format!("offline message may or may not be stored: {e}"));
                let text = if msg_id.is_some() {
                    "storage did not answer: the message may or may not be stored; \
                     resending it with the same msgId is safe"
                } else {
                    "storage did not answer: the message may or may not be stored; \
                     send a msgId to make a resend safe"
                };
                sms_res_id(cx, key, code::UNCERTAIN, text, msg_id)
            }
            Err(e) => {
                cx.store_error(&format!("offline message not stored: {e}"));
                sms_res_id(cx, key, code::UNAVAILABLE, "storage unavailable", msg_id)
            }
        }
    }
    /// The whole list, or for a client that cannot read it in one frame, the caller
    /// and as many others as fit.
    pub(crate) fn handle_online_users(cx: &mut Cx<'_>, cluster: Option<&Cluster>, key: usize) {
        let users = all_infos(cx.core(), cluster);
        let limit = cx.conn(key).max_frame();
        let encode = |users: Vec<UserInfo>| {
            proto::encode(kind::ONLINE_USERS_RES, &OnlineUsersResMes { users })
        };
        let res = OnlineUsersResMes { users };
        let mut frame = proto::encode(kind::ONLINE_USERS_RES, &res);
        if !frame_fit::fits(&frame, limit) {
            let users = res.users;
            let me = cx.conn(key).user_id();
            let (mine, others): (Vec<UserInfo>, Vec<UserInfo>) =
                users.into_iter().partition(|u| Some(u.user_id) == me);
            let with = |n: usize| encode(mine.iter().chain(&others[..n]).cloned().collect());
            frame = with(frame_fit::largest(others.len(), |n| {
                frame_fit::fits(&with(n), limit)
            }));
        }
        cx.reply_frame(key, frame);
    }
    /// The login reply for a client that reads frames of at most `limit` bytes: the
    /// whole lists if they fit (the names as `users`, or as `names` for a `compact`
    /// client); else without the names; else the caller
    /// and as many others as fit (the rest it learns from the notices). Made of the
    /// roster's shared blocks, which are built again only if who is online changed
    /// otherwise than by logins.
    pub(crate) fn login_reply(
        &mut self,
        core: &Core,
        cluster: Option<&Cluster>,
        me: i64,
        limit: usize,
        compact: bool,
        now: Now,
    ) -> Vec<Part> {
        self.roster_used_ms = now.mono_ms;
        let version = roster_version(core, cluster);
        if !self.roster.is_current(version) {
            let infos = all_infos(core, cluster);
            self.roster.rebuild(
                version,
                infos.iter().map(|u| (u.user_id, u.user_name.as_str())),
            );
        }
        let named = if compact {
            Listing::Names
        } else {
            Listing::Users
        };
        for listing in [named, Listing::Ids] {
            if self.roster.body_len(listing) <= limit {
                return self.roster.reply(listing);
            }
        }
        let others: Vec<i64> = self.roster.ids().filter(|&id| id != me).collect();
        let with = |n: usize| {
            let r = LoginResMes {
                code: code::OK,
                users_id: std::iter::once(me)
                    .chain(others[..n].iter().copied())
                    .collect(),
                ..LoginResMes::default()
            };
            proto::encode(kind::LOGIN_RES, &r)
        };
        let n = frame_fit::largest(others.len(), |n| frame_fit::fits(&with(n), limit));
        vec![Part::whole(with(n).into())]
    }

    /// Whether the roster is current, before a login changes who is online.
    pub(crate) fn roster_current(&self, core: &Core, cluster: Option<&Cluster>) -> bool {
        self.roster.is_current(roster_version(core, cluster))
    }

    /// A login changed who is online: the roster follows it without being built
    /// again (`listed`: the user was online already, here or elsewhere).
    pub(crate) fn follow_login(
        &mut self,
        core: &Core,
        cluster: Option<&Cluster>,
        listed: bool,
        user: i64,
        name: &str,
    ) {
        let version = roster_version(core, cluster);
        if listed {
            self.roster.touch(version);
        } else {
            self.roster.push(version, user, name);
        }
    }

    /// Drops the roster when logins stopped for a while (it holds every user online,
    /// encoded); the next login builds it again.
    pub(crate) fn housekeeping(&mut self, now: Now) {
        if !self.roster.is_empty() && now.mono_ms >= self.roster_used_ms + ROSTER_KEEP_MS {
            self.roster = Roster::default();
        }
    }

    /// Whether the roster is dropped (tests).
    #[cfg(test)]
    pub(crate) fn roster_is_empty(&self) -> bool {
        self.roster.is_empty()
    }

    /// Checks that the roster, if current, lists who is online; panics if not.
    pub(crate) fn check_invariants(&self, core: &Core, cluster: Option<&Cluster>) {
        if self.roster.is_current(roster_version(core, cluster)) {
            let mut listed: Vec<i64> = self.roster.ids().collect();
            listed.sort_unstable();
            assert_eq!(
                listed,
                all_ids(core, cluster),
                "the roster lists who is online"
            );
        }
    }
}

/// Ids of everyone online on every node, sorted.
pub(crate) fn all_ids(core: &Core, cluster: Option<&Cluster>) -> Vec<i64> {
    let mut ids = core.online.ids();
    if let Some(c) = cluster {
        ids.extend(c.remote_ids());
        ids.sort_unstable();
        ids.dedup();
    }
    ids
}

/// Everyone online on every node, with names, sorted by id.
pub(crate) fn all_infos(core: &Core, cluster: Option<&Cluster>) -> Vec<UserInfo> {
    let online = &core.online;
    let mut infos: Vec<UserInfo> = online
        .iter()
        .map(|(id, e)| UserInfo {
            user_id: id,
            user_name: core.conns[e.conn.key].user_name().to_string(),
        })
        .collect();
    if let Some(c) = cluster {
        infos.extend(c.remote_infos().filter(|u| online.get(u.user_id).is_none()));
        infos.sort_by_key(|u| u.user_id);
    }
    infos
}

/// What the roster of everyone online depends on (see [`crate::hub::roster`]).
pub(crate) fn roster_version(core: &Core, cluster: Option<&Cluster>) -> Version {
    (
        core.online.version(),
        cluster.map_or(0, |c| c.remote_version()),
    )
}
