//! Several servers, one chat: what nodes sharing one Redis tell each other, and what
//! a node knows of the others' users.
//!
//! Every node publishes [`Event`]s on one Redis pub/sub channel and hears everyone's,
//! its own included, in the one order Redis gives them. Presence lives in Redis too
//! (a hash of users per node, a sorted set of node heartbeats), so that a node that
//! starts or comes back reads the whole picture ([`Input::Snapshot`]) and a node that
//! dies is found by its silence ([`Input::LiveNodes`]). The I/O is on threads of the
//! server side (`cluster_redis`); this file is the state and the rules, which the hub
//! applies as inputs, so the cluster logic is tested without sockets like the rest.
//!
//! One session per user across nodes comes from that single order: a login is
//! announced ([`Event::Online`]); when a node hears of a login of one of its own users
//! elsewhere, after its own announcement of that user, the newer login won and it
//! closes its session. Two logins at once end with exactly one session, the one Redis
//! ordered last.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::store::OfflineMsg;
use crate::types::ConnRef;

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
    /// Whether `to_node`'s private message `id` was delivered.
    #[serde(rename_all = "camelCase")]
    PrivateAck {
        node: String,
        id: u64,
        to_node: String,
        delivered: bool,
    },
    /// `node` (re)started: whatever was known of its users is gone.
    Reset { node: String },
    /// An operator banned or removed `user` (`node` names the command that did it,
    /// not a server): every node ends that user's sessions.
    Kick {
        node: String,
        user: i64,
        kick: crate::admin::Kick,
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

    pub fn from_json(s: &str) -> Result<Event, String> {
        serde_json::from_str(s).map_err(|e| format!("bad cluster event: {e}"))
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

/// A user online on another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUser {
    pub node: Rc<str>,
    pub name: Rc<str>,
    pub session: u64,
}

/// A private message handed to another node, waiting for its answer.
#[derive(Debug, Clone)]
pub struct PendingPrivate {
    pub conn: ConnRef,
    pub node: Rc<str>,
    pub msg: OfflineMsg,
    pub msg_id: Option<String>,
    pub deadline_ms: u64,
}

/// This node's view of the cluster.
#[derive(Debug)]
pub struct Cluster {
    pub node: Rc<str>,
    /// Users online on other nodes.
    pub remote: BTreeMap<i64, RemoteUser>,
    /// Changes whenever `remote` does (see `roster`).
    pub remote_version: u64,
    /// This node's sessions: user → (session, whether its `Online` came back, i.e.
    /// was ordered by Redis).
    pub sessions: HashMap<i64, (u64, bool)>,
    pub pending: HashMap<u64, PendingPrivate>,
    next_id: u64,
    next_session: u64,
    /// Events to publish.
    pub out: std::collections::VecDeque<Event>,
    /// Whether the link to Redis is up.
    pub up: bool,
    /// How long a private message waits for another node's answer.
    pub answer_ms: u64,
}

impl Cluster {
    pub fn new(node: &str, answer_ms: u64) -> Cluster {
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

    pub fn is_me(&self, node: &str) -> bool {
        *self.node == *node
    }

    /// A new session number for a local login.
    pub fn session(&mut self) -> u64 {
        let s = self.next_session;
        self.next_session += 1;
        s
    }

    /// A new private message id.
    pub fn private_id(&mut self) -> u64 {
        let s = self.next_id;
        self.next_id += 1;
        s
    }

    pub fn publish(&mut self, ev: Event) {
        self.out.push_back(ev);
    }

    /// The earliest deadline of a private message waiting for another node.
    pub fn next_deadline(&self) -> Option<u64> {
        self.pending.values().map(|p| p.deadline_ms).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Event::Reset { node: "b".into() },
            Event::Kick {
                node: "admin".into(),
                user: 4,
                kick: crate::admin::Kick::Banned,
            },
        ];
        for ev in evs {
            let json = ev.to_json();
            assert_eq!(Event::from_json(&json).unwrap(), ev, "{json}");
        }
        assert!(Event::from_json("{\"kind\":\"nonsense\"}").is_err());
        assert!(Event::to_json(&Event::Reset { node: "x".into() }).contains("\"kind\":\"reset\""));
    }
}
