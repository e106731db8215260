//! The cluster as the hub sees it: other nodes' events in, this node's events out.
//!
//! With a cluster (`Hub::enable_cluster`), every login, logout and group message of
//! this node is published once ([`Event`]), and what other nodes publish arrives here
//! ([`Hub::handle_cluster`]): their users join the online lists and notices, their group
//! messages reach the users here, and a private message for a user online elsewhere is
//! handed to that node and answered when it says whether it delivered it (or, if it
//! does not say in time, stored for the user's next login: delivered or stored, never
//! neither). See `cluster.rs` for the rules of one session per user.
#![forbid(unsafe_code)]

use std::rc::Rc;

use super::private::private_frame_for;
use crate::cluster::{Cluster, Event, Input, PendingPrivate, PresenceEntry, RemoteUser};
use crate::conn::{Pending, Session};
use crate::fit;
use crate::hub::{Hub, Now};
use crate::job::JobKind;
use crate::proto::{SEED_MAX_FRAME, ServerMessage, SmsMes, UserInfo, code, status};
use crate::store::{Conv, OfflineMsg};

impl Hub {
    /// Makes this hub a node of a cluster named `node`. A private message handed to
    /// another node is stored instead if that node has not answered in `answer_ms`.
    pub fn enable_cluster(&mut self, node: &str, answer_ms: u64) {
        self.cluster = Some(Cluster::new(node, answer_ms));
    }

    /// The next event to publish.
    pub fn poll_publish(&mut self) -> Option<Event> {
        self.cluster.as_mut()?.out.pop_front()
    }

    /// Something from the cluster link.
    pub fn handle_cluster(&mut self, input: Input, now: Now) {
        if self.cluster.is_none() {
            return;
        }
        match input {
            Input::Event(ev) => self.remote_event(ev, now),
            Input::Snapshot(entries) => self.remote_snapshot(entries, now),
            Input::LiveNodes(nodes) => {
                let gone: Vec<Rc<str>> = self.cluster.as_ref().map_or_else(Vec::new, |c| {
                    let mut g: Vec<Rc<str>> = c
                        .remote
                        .values()
                        .map(|r| r.node.clone())
                        .chain(c.pending.values().map(|p| p.node.clone()))
                        .filter(|n| !nodes.iter().any(|x| **x == **n))
                        .collect();
                    g.sort();
                    g.dedup();
                    g
                });
                for node in gone {
                    log::warn!("node {node} is gone (no heartbeat): its users are offline");
                    self.node_gone(&node, now);
                }
            }
            Input::Link(up) => {
                if let Some(c) = self.cluster.as_mut() {
                    c.up = up;
                }
                if !up {
                    // Nothing is known of the other nodes until the link is back.
                    let nodes: Vec<Rc<str>> = self.cluster.as_ref().map_or_else(Vec::new, |c| {
                        c.remote.values().map(|r| r.node.clone()).collect()
                    });
                    for node in nodes {
                        self.node_gone(&node, now);
                    }
                    self.fail_all_pending(now);
                }
            }
        }
        self.announce_departures(now);
    }

    /// Ids of everyone online on every node, sorted.
    pub(crate) fn all_ids(&self) -> Vec<i64> {
        let mut ids = self.core.online.ids();
        if let Some(c) = &self.cluster {
            ids.extend(c.remote.keys().copied());
            ids.sort_unstable();
            ids.dedup();
        }
        ids
    }

    /// Everyone online on every node, with names, sorted by id.
    pub(crate) fn all_infos(&self) -> Vec<UserInfo> {
        let mut infos: Vec<UserInfo> = self
            .core
            .online
            .iter()
            .map(|(id, e)| UserInfo {
                user_id: id,
                user_name: self.core.conns[e.conn.key].user_name().to_string(),
            })
            .collect();
        if let Some(c) = &self.cluster {
            for (id, r) in &c.remote {
                if self.core.online.get(*id).is_none() {
                    infos.push(UserInfo {
                        user_id: *id,
                        user_name: r.name.to_string(),
                    });
                }
            }
            infos.sort_by_key(|u| u.user_id);
        }
        infos
    }

    /// Whether `user` is online on another node.
    /// What the roster of everyone online depends on (see [`crate::roster`]).
    pub(crate) fn roster_version(&self) -> crate::roster::Version {
        (
            self.core.online.version(),
            self.cluster.as_ref().map_or(0, |c| c.remote_version),
        )
    }

    pub(crate) fn online_elsewhere(&self, user: i64) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.remote.contains_key(&user))
    }

    /// A local login of `user`: announced to the cluster.
    pub(crate) fn cluster_login(&mut self, user: i64, name: &str) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let session = c.session();
        c.sessions.insert(user, (session, false));
        let node = c.node.to_string();
        c.publish(Event::Online {
            node,
            user,
            name: name.to_string(),
            session,
        });
    }

    /// A local session of `user` ended.
    pub(crate) fn cluster_logout(&mut self, user: i64) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if let Some((session, _)) = c.sessions.remove(&user) {
            let node = c.node.to_string();
            c.publish(Event::Offline {
                node,
                user,
                session,
            });
        }
    }

    /// A group message from a local user: published once for every other node.
    pub(crate) fn cluster_group(&mut self, user: i64, name: &str, content: &str, time: u64) {
        if let Some(c) = self.cluster.as_mut() {
            let node = c.node.to_string();
            c.publish(Event::Group {
                node,
                user,
                name: name.to_string(),
                content: content.to_string(),
                time,
            });
        }
    }

    /// Hands a private message for a user online on another node to that node, if
    /// there is one; the sender waits for its answer. False: not online elsewhere.
    pub(crate) fn cluster_private(
        &mut self,
        key: usize,
        msg: &OfflineMsg,
        msg_id: &Option<String>,
        now: Now,
    ) -> bool {
        let conn = self.core.conn_ref(key);
        let Some(c) = self.cluster.as_mut() else {
            return false;
        };
        if !c.up {
            return false;
        }
        let Some(to_node) = c.remote.get(&msg.to).map(|r| r.node.clone()) else {
            return false;
        };
        let id = c.private_id();
        c.pending.insert(
            id,
            PendingPrivate {
                conn,
                node: to_node.clone(),
                msg: msg.clone(),
                msg_id: msg_id.clone(),
                deadline_ms: now.mono_ms + c.answer_ms,
            },
        );
        let node = c.node.to_string();
        c.publish(Event::Private {
            node,
            id,
            to_node: to_node.to_string(),
            msg: msg.clone(),
        });
        self.core.conns[key].pending = Some(Pending::Private { to: msg.to });
        true
    }

    /// Private messages handed to other nodes that got no answer in time are stored.
    pub(crate) fn cluster_timeouts(&mut self, now: Now) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let late: Vec<u64> = c
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_ms <= now.mono_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(p) = self.cluster.as_mut().and_then(|c| c.pending.remove(&id)) {
                log::warn!(
                    "node {} did not answer for a private message in time: stored instead",
                    p.node
                );
                self.store_instead(p, now);
            }
        }
    }

    fn fail_all_pending(&mut self, now: Now) {
        let all: Vec<PendingPrivate> = self
            .cluster
            .as_mut()
            .map_or_else(Vec::new, |c| c.pending.drain().map(|(_, p)| p).collect());
        for p in all {
            self.store_instead(p, now);
        }
    }

    /// A private message another node did not deliver: stored for the recipient's
    /// next login, answered 202 once stored (or 503/504 as for any store).
    fn store_instead(&mut self, p: PendingPrivate, _now: Now) {
        let after_history = self
            .history
            .before_stored(cx!(self), Conv::pair(p.msg.from, p.msg.to));
        let job = JobKind::StoreOffline {
            msg: p.msg,
            msg_id: p.msg_id,
            history: self.core.cfg.history,
            after_history,
        };
        if self.core.get(p.conn).is_some() {
            // The sender still waits (its `pending` is set): the store's answer ends it.
            self.core.submit_always(Some(p.conn.key), job);
        } else {
            // The sender has gone; the message is kept all the same.
            self.core.submit_always(None, job);
        }
    }

    fn remote_event(&mut self, ev: Event, now: Now) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let mine = c.is_me(ev.node());
        match ev {
            Event::Online {
                node,
                user,
                name,
                session,
            } => {
                if mine {
                    if let Some((s, confirmed)) = c.sessions.get_mut(&user)
                        && *s == session
                    {
                        *confirmed = true;
                    }
                    return;
                }
                match c.sessions.get(&user) {
                    Some((_, true)) => {
                        // A login elsewhere, ordered after ours: it wins.
                        c.sessions.remove(&user);
                        c.remote_version += 1;
                        c.remote.insert(
                            user,
                            RemoteUser {
                                node: node.as_str().into(),
                                name: name.as_str().into(),
                                session,
                            },
                        );
                        self.kick_local(user, now);
                    }
                    Some((_, false)) => {
                        // Ordered before ours, which wins when it comes: its node
                        // closes that session.
                    }
                    None => {
                        c.remote_version += 1;
                        let was = c
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
                        if !was && self.core.online.get(user).is_none() {
                            self.notify_all(user, status::ONLINE, &name, now);
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
                    return;
                }
                let matches = c
                    .remote
                    .get(&user)
                    .is_some_and(|r| *r.node == *node && r.session == session);
                if matches && let Some(r) = c.remote.remove(&user) {
                    c.remote_version += 1;
                    self.remote_departure(user, r.name);
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
                    self.deliver_remote_group(user, &name, &content, time);
                }
            }
            Event::Private {
                node,
                id,
                to_node,
                msg,
            } => {
                if !c.is_me(&to_node) {
                    return;
                }
                let me = c.node.to_string();
                let delivered = match self.core.online.get(msg.to).map(|e| e.conn.key) {
                    Some(to) => {
                        let (frame, _) =
                            private_frame_for(self.core.conns[to].max_frame(), &msg, None);
                        self.cx().deliver_message(to, &frame.into())
                    }
                    None => false,
                };
                if let Some(c) = self.cluster.as_mut() {
                    c.publish(Event::PrivateAck {
                        node: me,
                        id,
                        to_node: node,
                        delivered,
                    });
                }
            }
            Event::PrivateAck {
                id,
                to_node,
                delivered,
                ..
            } => {
                if !c.is_me(&to_node) {
                    return;
                }
                let Some(p) = c.pending.remove(&id) else {
                    return;
                };
                if !delivered {
                    self.store_instead(p, now);
                } else {
                    if self.core.get(p.conn).is_some() {
                        self.sms_res_id(p.conn.key, code::OK, "", p.msg_id);
                        self.resume(p.conn.key, now);
                    }
                    // Delivered there, kept here: the sender's node writes the history.
                    self.history.note_private(cx!(self), p.msg);
                }
            }
            Event::Reset { node } => {
                if !mine {
                    self.node_gone(&node, now);
                }
            }
            Event::Kick { user, kick, .. } => {
                self.handle_admin(user, kick, now);
            }
        }
    }

    /// Everything known of `node` is gone: its users are offline, and private
    /// messages it was asked to deliver are stored.
    fn node_gone(&mut self, node: &str, now: Now) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let users: Vec<i64> = c
            .remote
            .iter()
            .filter(|(_, r)| *r.node == *node)
            .map(|(id, _)| *id)
            .collect();
        let mut left = Vec::new();
        for user in users {
            if let Some(r) = c.remote.remove(&user) {
                c.remote_version += 1;
                left.push((user, r.name));
            }
        }
        let waiting: Vec<u64> = c
            .pending
            .iter()
            .filter(|(_, p)| *p.node == *node)
            .map(|(id, _)| *id)
            .collect();
        let waiting: Vec<PendingPrivate> = waiting
            .into_iter()
            .filter_map(|id| c.pending.remove(&id))
            .collect();
        for (user, name) in left {
            self.remote_departure(user, name);
        }
        for p in waiting {
            self.store_instead(p, now);
        }
    }

    /// Replaces what is known of other nodes by a snapshot, telling the users here of
    /// the differences.
    fn remote_snapshot(&mut self, entries: Vec<PresenceEntry>, now: Now) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let mut fresh = std::collections::BTreeMap::new();
        for e in entries {
            if c.is_me(&e.node) {
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
        let old = std::mem::replace(&mut c.remote, fresh);
        c.remote_version += 1;
        let came: Vec<(i64, Rc<str>)> = c
            .remote
            .iter()
            .filter(|(id, _)| !old.contains_key(id))
            .map(|(id, r)| (*id, r.name.clone()))
            .collect();
        let left: Vec<(i64, Rc<str>)> = old
            .into_iter()
            .filter(|(id, _)| !c.remote.contains_key(id))
            .map(|(id, r)| (id, r.name))
            .collect();
        for (user, name) in came {
            if self.core.online.get(user).is_none() {
                self.notify_all(user, status::ONLINE, &name, now);
            }
        }
        for (user, name) in left {
            self.remote_departure(user, name);
        }
        self.moderation.check_bans_soon(cx!(self), now);
    }

    /// A user of another node left: announced here unless online here.
    fn remote_departure(&mut self, user: i64, name: Rc<str>) {
        if self.core.online.get(user).is_none() {
            self.core.note_departure(user, name);
        }
    }

    /// Closes this node's session of `user`, who logged in on another node since:
    /// the others see no offline/online flicker.
    fn kick_local(&mut self, user: i64, now: Now) {
        let Some(e) = self.core.online.get(user).cloned() else {
            return;
        };
        log::info!("user {user} logged in on another node: session here replaced");
        self.core.online.remove_if(user, e.conn);
        self.core.conns[e.conn.key].session = Session::Anonymous;
        self.cx()
            .error(e.conn.key, code::CONFLICT, "logged in elsewhere");
        self.core.close(
            e.conn.key,
            true,
            "replaced by a newer login on another node",
            now,
        );
    }

    fn notify_all(&mut self, user: i64, st: u8, name: &str, now: Now) {
        self.core.note_presence(user, st, name, now);
    }

    fn deliver_remote_group(&mut self, user: i64, name: &str, content: &str, time: u64) {
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
        let cut: Option<Rc<[u8]>> = (!fit::fits(&frame, SEED_MAX_FRAME))
            .then(|| fit::cut_to_fit(content, SEED_MAX_FRAME, encode))
            .flatten()
            .map(Into::into);
        self.stats.group_messages += 1;
        // Its sender is on another node and is not told who got it cut short here.
        self.cx().broadcast_fitted(None, frame, cut.as_ref());
    }
}
