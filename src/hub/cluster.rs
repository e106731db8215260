//! The cluster as this node sees it: other nodes' events in, this node's events out,
//! and the rules that apply them (see [`crate::cluster`] for what nodes tell each
//! other).
//!
//! With a cluster (`Hub::enable_cluster`), every login, logout and group message of
//! this node is published once ([`Event`]), and what other nodes publish arrives here
//! (`Hub::handle_cluster` routes it to [`Cluster::handle`]): their users join the
//! online lists and notices, their group messages reach the users here, and a private
//! message for a user online elsewhere is handed to that node and answered when it
//! says whether it delivered it (or, if it does not say in time, stored for the user's
//! next login: delivered or stored, never neither). That node says "delivered" only
//! once the frame is written to the recipient's socket, as for a sender of its own (its
//! entry in the recipient's `Conn::awaiting` names this node's request); if the
//! recipient's connection goes first, "not delivered", and this node stores the
//! message (202). Only the sender's node stores it, once: the first of the answer,
//! the end of the wait, or the other node's departure ends the request.
//!
//! One session per user across nodes comes from the single order Redis gives the
//! events: a login is announced ([`Event::Online`]); when a node hears of a login of
//! one of its own users elsewhere, after its own announcement of that user, the newer
//! login won and it closes its session. Two logins at once end with exactly one
//! session, the one Redis ordered last.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use super::chat::{Chat, PRIVATE_WRITE_WAIT_MS};
use super::cx::{Cx, private_frame_for, sms_res_id};
use super::history::History;
use super::moderation::Moderation;
use crate::cluster::{Event, Input, PresenceEntry};
use crate::conn::{Awaiter, Pending, Session};
use crate::hub::frame_fit;
use crate::job::JobKind;
use crate::proto::{SEED_MAX_FRAME, ServerMessage, SmsMes, UserInfo, code, status};
use crate::store::{Conv, OfflineMsg};
use crate::types::{ConnRef, Now};

/// A user online on another node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RemoteUser {
    node: Rc<str>,
    name: Rc<str>,
    session: u64,
}

/// A private message handed to another node, waiting for its answer.
#[derive(Debug, Clone)]
struct PendingPrivate {
    conn: ConnRef,
    node: Rc<str>,
    msg: OfflineMsg,
    msg_id: Option<String>,
    deadline_ms: u64,
}

/// This node's view of the cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    node: Rc<str>,
    /// Users online on other nodes.
    remote: BTreeMap<i64, RemoteUser>,
    /// Changes whenever `remote` does (see `roster`).
    remote_version: u64,
    /// This node's sessions: user → (session, whether its `Online` came back, i.e.
    /// was ordered by Redis).
    sessions: HashMap<i64, (u64, bool)>,
    pending: HashMap<u64, PendingPrivate>,
    next_id: u64,
    next_session: u64,
    /// Events to publish.
    out: VecDeque<Event>,
    /// Whether the link to Redis is up.
    up: bool,
    /// How long a private message waits for another node's answer.
    answer_ms: u64,
}

impl Cluster {
    /// Whether the link to Redis is up (for the metrics).
    pub(crate) fn is_up(&self) -> bool {
        self.up
    }

    pub(crate) fn new(node: &str, answer_ms: u64) -> Cluster {
        Cluster {
            node: node.into(),
            remote: BTreeMap::new(),
            remote_version: 0,
            sessions: HashMap::new(),
            pending: HashMap::new(),
            next_id: 1,
            next_session: 1,
            out: Default::default(),
            up: false,
            answer_ms,
        }
    }

    fn is_me(&self, node: &str) -> bool {
        *self.node == *node
    }

    /// A new session number for a local login.
    fn session(&mut self) -> u64 {
        let s = self.next_session;
        self.next_session += 1;
        s
    }

    /// A new private message id.
    fn private_id(&mut self) -> u64 {
        let s = self.next_id;
        self.next_id += 1;
        s
    }

    fn publish(&mut self, ev: Event) {
        self.out.push_back(ev);
    }

    /// The earliest deadline of a private message waiting for another node.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.pending.values().map(|p| p.deadline_ms).min()
    }
}

impl Cluster {
    /// The next event to publish.
    pub(crate) fn poll_publish(&mut self) -> Option<Event> {
        self.out.pop_front()
    }

    /// Whether events wait to be published.
    pub(crate) fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Ids of the users online on other nodes, in order.
    pub(crate) fn remote_ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.remote.keys().copied()
    }

    /// The users online on other nodes, with names, in order of id.
    pub(crate) fn remote_infos(&self) -> impl Iterator<Item = UserInfo> + '_ {
        self.remote.iter().map(|(id, r)| UserInfo {
            user_id: *id,
            user_name: r.name.to_string(),
        })
    }

    /// Changes whenever who is online elsewhere does (see [`crate::hub::roster`]).
    pub(crate) fn remote_version(&self) -> u64 {
        self.remote_version
    }

    /// Whether `user` is online on another node.
    pub(crate) fn online_elsewhere(&self, user: i64) -> bool {
        self.remote.contains_key(&user)
    }

    /// The connections waiting for another node's answer (the checker's count).
    pub(crate) fn waiting(&self) -> impl Iterator<Item = ConnRef> + '_ {
        self.pending.values().map(|p| p.conn)
    }

    /// Something from the cluster link. Returns the connection whose request another
    /// node answered, which the hub resumes.
    pub(crate) fn handle(
        &mut self,
        cx: &mut Cx<'_>,
        history: &mut History,
        moderation: &mut Moderation,
        input: Input,
        now: Now,
    ) -> Option<ConnRef> {
        match input {
            Input::Event(ev) => return self.remote_event(cx, history, moderation, ev, now),
            Input::Snapshot(entries) => self.remote_snapshot(cx, moderation, entries, now),
            Input::LiveNodes(nodes) => {
                let mut gone: Vec<Rc<str>> = self
                    .remote
                    .values()
                    .map(|r| r.node.clone())
                    .chain(self.pending.values().map(|p| p.node.clone()))
                    .filter(|n| !nodes.iter().any(|x| **x == **n))
                    .collect();
                gone.sort();
                gone.dedup();
                for node in gone {
                    log::warn!("node {node} is gone (no heartbeat): its users are offline");
                    self.node_gone(cx, history, &node, now);
                }
            }
            Input::Link(up) => {
                self.up = up;
                if !up {
                    // Nothing is known of the other nodes until the link is back.
                    let nodes: Vec<Rc<str>> =
                        self.remote.values().map(|r| r.node.clone()).collect();
                    for node in nodes {
                        self.node_gone(cx, history, &node, now);
                    }
                    self.fail_all_pending(cx, history, now);
                }
            }
        }
        None
    }

    /// A local login of `user`: announced to the cluster.
    pub(crate) fn login(&mut self, user: i64, name: &str) {
        let session = self.session();
        self.sessions.insert(user, (session, false));
        let node = self.node.to_string();
        self.publish(Event::Online {
            node,
            user,
            name: name.to_string(),
            session,
        });
    }

    /// A local session of `user` ended.
    pub(crate) fn logout(&mut self, user: i64) {
        if let Some((session, _)) = self.sessions.remove(&user) {
            let node = self.node.to_string();
            self.publish(Event::Offline {
                node,
                user,
                session,
            });
        }
    }

    /// A group message from a local user: published once for every other node.
    pub(crate) fn group(&mut self, user: i64, name: &str, content: &str, time: u64) {
        let node = self.node.to_string();
        self.publish(Event::Group {
            node,
            user,
            name: name.to_string(),
            content: content.to_string(),
            time,
        });
    }

    /// Hands a private message for a user online on another node to that node, if
    /// there is one; the sender waits for its answer. False: not online elsewhere.
    pub(crate) fn hand_private(
        &mut self,
        cx: &mut Cx<'_>,
        key: usize,
        msg: &OfflineMsg,
        msg_id: &Option<String>,
        now: Now,
    ) -> bool {
        let conn = cx.conn_ref(key);
        if !self.up {
            return false;
        }
        let Some(to_node) = self.remote.get(&msg.to).map(|r| r.node.clone()) else {
            return false;
        };
        let id = self.private_id();
        self.pending.insert(
            id,
            PendingPrivate {
                conn,
                node: to_node.clone(),
                msg: msg.clone(),
                msg_id: msg_id.clone(),
                // The other node answers once the frame is written, which may take
                // up to the wait it allows a recipient: beyond that, it is silent.
                deadline_ms: now.mono_ms + self.answer_ms + PRIVATE_WRITE_WAIT_MS,
            },
        );
        let node = self.node.to_string();
        self.publish(Event::Private {
            node,
            id,
            to_node: to_node.to_string(),
            msg: msg.clone(),
        });
        cx.conn_mut(key).pending = Some(Pending::Private { to: msg.to });
        true
    }

    /// Tells `node` whether its private message `id` was written to the recipient's
    /// socket here (`cut`: cut short for the recipient's client).
    pub(crate) fn answer_private(&mut self, node: &str, id: u64, delivered: bool, cut: bool) {
        let me = self.node.to_string();
        self.publish(Event::PrivateAck {
            node: me,
            id,
            to_node: node.to_string(),
            delivered,
            cut,
        });
    }

    /// Private messages handed to other nodes that got no answer in time are stored.
    pub(crate) fn timeouts(&mut self, cx: &mut Cx<'_>, history: &mut History, now: Now) {
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_ms <= now.mono_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(p) = self.pending.remove(&id) {
                log::warn!(
                    "node {} did not answer for a private message in time: stored instead",
                    p.node
                );
                store_instead(cx, history, p);
            }
        }
    }

    fn fail_all_pending(&mut self, cx: &mut Cx<'_>, history: &mut History, _now: Now) {
        let all: Vec<PendingPrivate> = self.pending.drain().map(|(_, p)| p).collect();
        for p in all {
            store_instead(cx, history, p);
        }
    }

    fn remote_event(
        &mut self,
        cx: &mut Cx<'_>,
        history: &mut History,
        moderation: &mut Moderation,
        ev: Event,
        now: Now,
    ) -> Option<ConnRef> {
        let mine = self.is_me(ev.node());
        match ev {
            Event::Online {
                node,
                user,
                name,
                session,
            } => {
                if mine {
                    if let Some((s, confirmed)) = self.sessions.get_mut(&user)
                        && *s == session
                    {
                        *confirmed = true;
                    }
                    return None;
                }
                match self.sessions.get(&user).copied() {
                    Some((mine, true)) => {
                        // A login elsewhere, ordered after ours: it wins. Our session
                        // ends (and leaves this node's presence in Redis) without
                        // anyone seeing the user go offline: the others already list
                        // the newer session, which this offline does not match.
                        self.sessions.remove(&user);
                        self.publish(Event::Offline {
                            node: self.node.to_string(),
                            user,
                            session: mine,
                        });
                        self.remote_version += 1;
                        self.remote.insert(
                            user,
                            RemoteUser {
                                node: node.as_str().into(),
                                name: name.as_str().into(),
                                session,
                            },
                        );
                        kick_local(cx, user, now);
                    }
                    Some((_, false)) => {
                        // Ordered before ours, which wins when it comes: its node
                        // closes that session.
                    }
                    None => {
                        self.remote_version += 1;
                        let was = self
                            .remote
                            .insert(
                                user,
                                RemoteUser {
                                    node: node.as_str().into(),
                                    name: name.as_str().into(),
                                    session,
                                },
                            )
                            .is_some();
                        if !was && cx.online().get(user).is_none() {
                            cx.note_presence(user, status::ONLINE, &name, now);
                        }
                    }
                }
            }
            Event::Offline {
                node,
                user,
                session,
            } => {
                if mine {
                    return None;
                }
                let matches = self
                    .remote
                    .get(&user)
                    .is_some_and(|r| *r.node == *node && r.session == session);
                if matches && let Some(r) = self.remote.remove(&user) {
                    self.remote_version += 1;
                    remote_departure(cx, user, r.name);
                }
            }
            Event::Group {
                user,
                name,
                content,
                time,
                ..
            } => {
                if !mine {
                    deliver_remote_group(cx, user, &name, &content, time);
                }
            }
            Event::Private {
                node,
                id,
                to_node,
                msg,
            } => {
                if !self.is_me(&to_node) {
                    return None;
                }
                let Some(to) = cx.online().get(msg.to).map(|e| e.conn.key) else {
                    self.answer_private(&node, id, false, false);
                    return None;
                };
                // Answered once the frame is written to the recipient's socket, or
                // given back if the recipient's connection goes first, as a message
                // from a sender here is (see `Chat::written`, `Chat::unwritten`).
                let (frame, cut) = private_frame_for(cx.conn(to), &msg, None);
                let end = if cx.deliver_message(to, &frame.into()) {
                    cx.conn(to).out.queued_total()
                } else {
                    u64::MAX
                };
                let from = Awaiter::Remote {
                    node: node.as_str().into(),
                    id,
                };
                Chat::await_write(cx, to, end, cut, from, now);
            }
            Event::PrivateAck {
                id,
                to_node,
                delivered,
                cut,
                ..
            } => {
                if !self.is_me(&to_node) {
                    return None;
                }
                // Answered once: an answer after the wait ended (the message stored
                // here then) finds nothing.
                let p = self.pending.remove(&id)?;
                if !delivered {
                    store_instead(cx, history, p);
                } else {
                    let answered = cx.get(p.conn).is_some().then_some(p.conn);
                    if let Some(r) = answered {
                        if cut {
                            let text = "delivered cut short: the recipient's client \
                                        cannot read it whole";
                            sms_res_id(cx, r.key, code::PARTIAL, text, p.msg_id);
                        } else {
                            sms_res_id(cx, r.key, code::OK, "", p.msg_id);
                        }
                    }
                    // Delivered there, kept here: the sender's node writes the history.
                    history.note_private(cx, p.msg);
                    return answered;
                }
            }
            Event::Reset { node } => {
                if !mine {
                    self.node_gone(cx, history, &node, now);
                }
            }
            Event::Kick { user, kick, .. } => {
                // The hub announces the departures once the input is handled.
                moderation.end_sessions(cx, user, kick, now);
            }
        }
        None
    }

    /// Everything known of `node` is gone: its users are offline, and private
    /// messages it was asked to deliver are stored.
    fn node_gone(&mut self, cx: &mut Cx<'_>, history: &mut History, node: &str, _now: Now) {
        let users: Vec<i64> = self
            .remote
            .iter()
            .filter(|(_, r)| *r.node == *node)
            .map(|(id, _)| *id)
            .collect();
        let mut left = Vec::new();
        for user in users {
            if let Some(r) = self.remote.remove(&user) {
                self.remote_version += 1;
                left.push((user, r.name));
            }
        }
        let waiting: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| *p.node == *node)
            .map(|(id, _)| *id)
            .collect();
        let waiting: Vec<PendingPrivate> = waiting
            .into_iter()
            .filter_map(|id| self.pending.remove(&id))
            .collect();
        for (user, name) in left {
            remote_departure(cx, user, name);
        }
        for p in waiting {
            store_instead(cx, history, p);
        }
    }

    /// Replaces what is known of other nodes by a snapshot, telling the users here of
    /// the differences.
    fn remote_snapshot(
        &mut self,
        cx: &mut Cx<'_>,
        moderation: &mut Moderation,
        entries: Vec<PresenceEntry>,
        now: Now,
    ) {
        let mut fresh = BTreeMap::new();
        for e in entries {
            if self.is_me(&e.node) {
                continue;
            }
            fresh.insert(
                e.user,
                RemoteUser {
                    node: e.node.as_str().into(),
                    name: e.name.as_str().into(),
                    session: e.session,
                },
            );
        }
        let old = std::mem::replace(&mut self.remote, fresh);
        self.remote_version += 1;
        let came: Vec<(i64, Rc<str>)> = self
            .remote
            .iter()
            .filter(|(id, _)| !old.contains_key(id))
            .map(|(id, r)| (*id, r.name.clone()))
            .collect();
        let left: Vec<(i64, Rc<str>)> = old
            .into_iter()
            .filter(|(id, _)| !self.remote.contains_key(id))
            .map(|(id, r)| (id, r.name))
            .collect();
        for (user, name) in came {
            if cx.online().get(user).is_none() {
                cx.note_presence(user, status::ONLINE, &name, now);
            }
        }
        for (user, name) in left {
            remote_departure(cx, user, name);
        }
        moderation.check_bans_soon(cx, now);
    }
}

/// A private message another node did not deliver: stored for the recipient's next
/// login, answered 202 once stored (or 503/504 as for any store).
fn store_instead(cx: &mut Cx<'_>, history: &mut History, p: PendingPrivate) {
    let after_history = history.before_stored(cx, Conv::pair(p.msg.from, p.msg.to));
    let job = JobKind::StoreOffline {
        msg: p.msg,
        msg_id: p.msg_id,
        history: cx.cfg().history,
        after_history,
        waits: true,
    };
    if cx.get(p.conn).is_some() {
        // The sender still waits (its `pending` is set): the store's answer ends it.
        cx.submit_always(Some(p.conn.key), job);
    } else {
        // The sender has gone; the message is kept all the same.
        cx.submit_always(None, job);
    }
}

/// A user of another node left: announced here unless online here.
fn remote_departure(cx: &mut Cx<'_>, user: i64, name: Rc<str>) {
    if cx.online().get(user).is_none() {
        cx.note_departure(user, name);
    }
}

/// Closes this node's session of `user`, who logged in on another node since: the
/// others see no offline/online flicker.
fn kick_local(cx: &mut Cx<'_>, user: i64, now: Now) {
    let Some(e) = cx.online().get(user).cloned() else {
        return;
    };
    log::info!("user {user} logged in on another node: session here replaced");
    cx.take_offline(user, e.conn);
    // Told as the session it was (a seed client shows it as a message).
    cx.error(e.conn.key, code::CONFLICT, "logged in elsewhere");
    cx.conn_mut(e.conn.key).session = Session::Anonymous;
    cx.close(
        e.conn.key,
        true,
        "replaced by a newer login on another node",
        now,
    );
}

fn deliver_remote_group(cx: &mut Cx<'_>, user: i64, name: &str, content: &str, time: u64) {
    let encode = |content: &str| {
        ServerMessage::Sms(SmsMes {
            content: content.to_string(),
            user_id: user,
            user_name: name.to_string(),
            time: Some(time),
            ..SmsMes::default()
        })
        .encode()
    };
    let frame = encode(content);
    let cut: Option<Rc<[u8]>> = (!frame_fit::fits(&frame, SEED_MAX_FRAME))
        .then(|| frame_fit::cut_to_fit(content, SEED_MAX_FRAME, encode))
        .flatten()
        .map(Into::into);
    cx.stats().group_messages += 1;
    // Its sender is on another node and is not told who got it cut short here.
    cx.broadcast_fitted(None, frame, cut.as_ref());
}
