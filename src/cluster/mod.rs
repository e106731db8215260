//! Several servers, one chat: what nodes sharing one Redis tell each other.
//!
//! Every node publishes [`Event`]s on one Redis pub/sub channel and hears everyone's,
//! its own included, in the one order Redis gives them. Presence lives in Redis too
//! (a hash of users per node, a sorted set of node heartbeats), so that a node that
//! starts or comes back reads the whole picture ([`Input::Snapshot`]) and a node that
//! dies is found by its silence ([`Input::LiveNodes`]). The I/O is on threads of the
//! server side (`cluster_redis`); what a node knows of the others' users, and the rules
//! that apply these inputs, are the hub's `Cluster` (`hub/cluster.rs`), so the cluster
//! logic is tested without sockets like the rest.
//!
//! One session per user across nodes comes from that single order: a login is
//! announced ([`Event::Online`]); when a node hears of a login of one of its own users
//! elsewhere, after its own announcement of that user, the newer login won and it
//! closes its session. Two logins at once end with exactly one session, the one Redis
//! ordered last.
#![forbid(unsafe_code)]

#[cfg(feature = "server")]
pub mod redis;

use serde::{Deserialize, Serialize};

use crate::store::OfflineMsg;

/// The pub/sub channel every node publishes on and listens to.
pub const CHANNEL: &str = "chat:events";

/// What a node tells the others.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Event {
    /// `user` logged in on `node` (its session there is `session`).
    Online {
        node: String,
        user: i64,
        name: String,
        session: u64,
    },
    /// That session of `user` on `node` ended.
    Offline {
        node: String,
        user: i64,
        session: u64,
    },
    /// A group message from `user`, for everyone on every other node.
    Group {
        node: String,
        user: i64,
        name: String,
        content: String,
        time: u64,
    },
    /// A private message for a user online on `to_node`; answered by `PrivateAck`.
    #[serde(rename_all = "camelCase")]
    Private {
        node: String,
        id: u64,
        to_node: String,
        msg: OfflineMsg,
    },
    /// Whether `to_node`'s private message `id` was delivered: its frame written to
    /// the recipient's socket (`cut`: cut short for the recipient's client). Not
    /// delivered: the recipient was not online on `node`, or its connection went
    /// before the frame was written; `to_node` stores it.
    #[serde(rename_all = "camelCase")]
    PrivateAck {
        node: String,
        id: u64,
        to_node: String,
        delivered: bool,
        #[serde(default)]
        cut: bool,
    },
    /// `node` (re)started: whatever was known of its users is gone.
    Reset { node: String },
    /// An operator banned or removed `user` (`node` names the command that did it,
    /// not a server): every node ends that user's sessions.
    Kick {
        node: String,
        user: i64,
        kick: crate::types::Kick,
    },
}

impl Event {
    pub fn node(&self) -> &str {
        match self {
            Event::Online { node, .. }
            | Event::Offline { node, .. }
            | Event::Group { node, .. }
            | Event::Private { node, .. }
            | Event::PrivateAck { node, .. }
            | Event::Reset { node }
            | Event::Kick { node, .. } => node,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events serialise")
    }

    pub fn from_json(s: &str) -> Result<Event, BadEvent> {
        serde_json::from_str(s).map_err(BadEvent)
    }
}

/// An event that is not JSON of the shape [`Event`] has (another version's, or not
/// ours), and what the parser found.
#[derive(Debug)]
pub struct BadEvent(pub serde_json::Error);

impl std::fmt::Display for BadEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad cluster event: {}", self.0)
    }
}

impl std::error::Error for BadEvent {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// One user online on some node, as the presence hashes in Redis hold it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PresenceEntry {
    pub node: String,
    pub user: i64,
    pub name: String,
    pub session: u64,
}

/// A node's own users as its presence hash should hold them: kept from the events the
/// node publishes, in the order it publishes them, and written whole to Redis on each
/// resync. Only sessions that are live here are in it: a session ends with
/// [`Event::Offline`], whether its user logged out or was replaced by a login on
/// another node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalPresence {
    users: std::collections::HashMap<i64, (String, u64)>,
}

impl LocalPresence {
    /// Takes in one event this node publishes.
    pub fn track(&mut self, ev: &Event) {
        match ev {
            Event::Online {
                user,
                name,
                session,
                ..
            } => {
                self.users.insert(*user, (name.clone(), *session));
            }
            Event::Offline { user, session, .. }
                if self.users.get(user).is_some_and(|(_, s)| s == session) =>
            {
                self.users.remove(user);
            }
            _ => {}
        }
    }

    /// Whether `user` has a session here.
    pub fn contains(&self, user: i64) -> bool {
        self.users.contains_key(&user)
    }

    /// Every user with a session here, as the entries of `node`'s presence, in order
    /// of user id.
    pub fn entries(&self, node: &str) -> Vec<PresenceEntry> {
        let mut v: Vec<PresenceEntry> = self
            .users
            .iter()
            .map(|(user, (name, session))| PresenceEntry {
                node: node.to_string(),
                user: *user,
                name: name.clone(),
                session: *session,
            })
            .collect();
        v.sort_by_key(|e| e.user);
        v
    }

    /// The [`Event::Online`] a resync publishes again for each of them (for the nodes
    /// that read their snapshot before this node's presence was rewritten).
    pub fn announcements(&self, node: &str) -> Vec<Event> {
        self.entries(node)
            .into_iter()
            .map(|e| Event::Online {
                node: e.node,
                user: e.user,
                name: e.name,
                session: e.session,
            })
            .collect()
    }
}

/// What the cluster link hands the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// An event some node published (this one included).
    Event(Event),
    /// Everyone online on every node, read after (re)subscribing: replaces what the
    /// hub knew of other nodes.
    Snapshot(Vec<PresenceEntry>),
    /// The nodes alive now (heartbeat within the node timeout); users of any other
    /// node are gone.
    LiveNodes(Vec<String>),
    /// The link to Redis is down (`false`) or back (`true`, a snapshot follows).
    Link(bool),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_presence_holds_live_sessions_only() {
        let online = |user: i64, session: u64| Event::Online {
            node: "a".into(),
            user,
            name: format!("u{user}"),
            session,
        };
        let offline = |user: i64, session: u64| Event::Offline {
            node: "a".into(),
            user,
            session,
        };
        let mut p = LocalPresence::default();
        for ev in [online(2, 1), online(1, 2), online(2, 3), offline(2, 1)] {
            p.track(&ev);
        }
        // The end of an older session leaves the newer one.
        assert!(p.contains(2));
        assert_eq!(
            p.announcements("a"),
            [online(1, 2), online(2, 3)],
            "in order of user"
        );
        p.track(&offline(2, 3));
        p.track(&Event::Reset { node: "a".into() });
        assert!(!p.contains(2));
        assert_eq!(
            p.entries("a"),
            [PresenceEntry {
                node: "a".into(),
                user: 1,
                name: "u1".into(),
                session: 2,
            }]
        );
    }

    #[test]
    fn events_round_trip_as_json() {
        let evs = [
            Event::Online {
                node: "a".into(),
                user: 1,
                name: "ann".into(),
                session: 3,
            },
            Event::Private {
                node: "a".into(),
                id: 9,
                to_node: "b".into(),
                msg: OfflineMsg {
                    from: 1,
                    from_name: "ann".into(),
                    to: 2,
                    content: "hi".into(),
                    time: 5,
                },
            },
            Event::PrivateAck {
                node: "b".into(),
                id: 9,
                to_node: "a".into(),
                delivered: true,
                cut: true,
            },
            Event::Reset { node: "b".into() },
            Event::Kick {
                node: "admin".into(),
                user: 4,
                kick: crate::types::Kick::Banned,
            },
        ];
        for ev in evs {
            let json = ev.to_json();
            assert_eq!(Event::from_json(&json).unwrap(), ev, "{json}");
        }
        // An answer from a node that does not say `cut`.
        let ack = r#"{"kind":"privateAck","node":"b","id":9,"toNode":"a","delivered":true}"#;
        assert_eq!(
            Event::from_json(ack).unwrap(),
            Event::PrivateAck {
                node: "b".into(),
                id: 9,
                to_node: "a".into(),
                delivered: true,
                cut: false,
            }
        );
        let bad = Event::from_json("{\"kind\":\"nonsense\"}").unwrap_err();
        assert!(
            bad.to_string()
                .starts_with("bad cluster event: unknown variant `nonsense`"),
            "{bad}"
        );
        assert!(std::error::Error::source(&bad).is_some());
        assert!(Event::to_json(&Event::Reset { node: "x".into() }).contains("\"kind\":\"reset\""));
    }
}
