//! Deterministic tests of several nodes: hubs joined by a stand-in for Redis pub/sub
//! that orders every node's events into one sequence and hands each to every node,
//! the publisher included, as Redis does. No sockets, threads or sleeps.

use crate::cluster::{Event, Input, LocalPresence, PresenceEntry};
use crate::hub::chat::PRIVATE_WRITE_WAIT_MS;
use crate::hub::testkit::{Harness, login_msg, seed_login_msg};
use crate::proto::{ClientMessage, ServerMessage, SmsMes, SmsPrivateMes};
use crate::types::ConnRef;

/// Nodes "a", "b", "c", ... sharing one store, as they share one Redis.
struct Net {
    nodes: Vec<Harness>,
    /// Every event published, in the order "Redis" gave them.
    log: Vec<Event>,
    /// Each node's presence hash, kept from what it publishes as its link keeps it.
    presence: Vec<LocalPresence>,
}

impl Net {
    fn new(n: usize) -> Net {
        let first = Harness::new(crate::hub::testkit::test_config());
        let store = first.store.clone();
        let mut nodes = vec![first];
        for _ in 1..n {
            let mut h = Harness::new(crate::hub::testkit::test_config());
            h.store = store.clone();
            nodes.push(h);
        }
        for (i, h) in nodes.iter_mut().enumerate() {
            h.hub.enable_cluster(&name(i), 5_000);
            h.cluster(Input::Link(true));
        }
        Net {
            presence: vec![LocalPresence::default(); nodes.len()],
            nodes,
            log: Vec::new(),
        }
    }

    /// Everyone in every node's presence hash, as a node reads it after subscribing.
    fn snapshot(&self) -> Vec<PresenceEntry> {
        let mut all = Vec::new();
        for (i, p) in self.presence.iter().enumerate() {
            all.extend(p.entries(&name(i)));
        }
        all
    }

    /// Node `i` lost Redis and is back: it rewrites its presence hash, announces its
    /// users again, and reads everyone's.
    fn reconnect(&mut self, i: usize) {
        self.nodes[i].cluster(Input::Link(false));
        self.nodes[i].cluster(Input::Link(true));
        for ev in self.presence[i].announcements(&name(i)) {
            self.log.push(ev.clone());
            for h in &mut self.nodes {
                h.cluster(Input::Event(ev.clone()));
            }
        }
        self.deliver();
        let snap = self.snapshot();
        self.nodes[i].cluster(Input::Snapshot(snap));
        self.deliver();
    }

    /// A node started after the others: it reads everyone's presence.
    fn start_node(&mut self) -> usize {
        let mut h = Harness::new(crate::hub::testkit::test_config());
        h.store = self.nodes[0].store.clone();
        let i = self.nodes.len();
        h.hub.enable_cluster(&name(i), 5_000);
        h.cluster(Input::Link(true));
        h.cluster(Input::Snapshot(self.snapshot()));
        self.nodes.push(h);
        self.presence.push(LocalPresence::default());
        i
    }

    /// Delivers what was published, node by node in turn, until nothing is left.
    fn deliver(&mut self) {
        loop {
            let mut batch = Vec::new();
            for (h, p) in self.nodes.iter_mut().zip(&mut self.presence) {
                let evs = h.take_published();
                for ev in &evs {
                    p.track(ev);
                }
                batch.extend(evs);
            }
            if batch.is_empty() {
                return;
            }
            for ev in batch {
                self.log.push(ev.clone());
                for h in &mut self.nodes {
                    h.cluster(Input::Event(ev.clone()));
                }
            }
        }
    }

    fn login(&mut self, node: usize, id: i64) -> ConnRef {
        let c = self.nodes[node].login(id);
        self.deliver();
        c
    }

    fn recv(&mut self, node: usize, c: ConnRef) -> Vec<ServerMessage> {
        self.nodes[node].recv(c)
    }
}

fn name(i: usize) -> String {
    ((b'a' + i as u8) as char).to_string()
}

fn notify(id: i64, status: u8) -> ServerMessage {
    ServerMessage::NotifyUserStatus(crate::proto::NotifyUserStatusMes {
        user_id: id,
        status,
        user_name: format!("u{id}"),
    })
}

fn registered(net: &mut Net, ids: &[i64]) {
    for id in ids {
        net.nodes[0].register(*id);
    }
}

#[test]
fn users_of_every_node_are_online_everywhere() {
    let mut net = Net::new(2);
    registered(&mut net, &[1, 2, 3]);
    let one = net.login(0, 1);
    let two = net.login(1, 2);
    // 1 (on a) hears that 2 came online on b, once.
    assert_eq!(net.recv(0, one), [notify(2, 0)]);
    // A login on b lists everyone on both nodes.
    let three = net.nodes[1].connect();
    net.nodes[1].send(three, &login_msg(3, "pw3"));
    net.nodes[1].run_jobs();
    let got = net.recv(1, three);
    let ServerMessage::LoginRes(res) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(res.users_id, [1, 2, 3]);
    net.deliver();
    net.nodes[0].send(one, &ClientMessage::OnlineUsers);
    let got = net.recv(0, one);
    assert!(
        matches!(&got[..], [ServerMessage::NotifyUserStatus(_), ServerMessage::OnlineUsersRes(r)] if r.users.len() == 3),
        "{got:?}"
    );
    // 2 logs out on b: everyone on a is told, once.
    net.nodes[1].send(two, &ClientMessage::Logout);
    net.deliver();
    assert_eq!(net.recv(0, one), [notify(2, 1)]);
    assert_eq!(net.nodes[0].hub.online_count(), 1);
}

#[test]
fn a_login_on_another_node_replaces_the_session_without_flicker() {
    let mut net = Net::new(3);
    registered(&mut net, &[1, 9]);
    let watcher = net.login(2, 9);
    let old = net.login(0, 1);
    assert_eq!(net.recv(2, watcher), [notify(1, 0)]);
    let new = net.login(1, 1);
    let got = net.recv(0, old);
    assert!(
        matches!(got.last(), Some(ServerMessage::Error(e)) if e.code == 409),
        "{got:?}"
    );
    assert!(net.nodes[0].is_closed(old));
    net.deliver();
    // Nobody saw 1 go offline and come back.
    assert_eq!(net.recv(2, watcher), []);
    assert!(net.nodes[1].hub.get(new).is_some());
    // And when the new session ends, 1 is offline everywhere.
    net.nodes[1].hangup(new);
    net.deliver();
    assert_eq!(net.recv(2, watcher), [notify(1, 1)]);
}

#[test]
fn two_logins_at_once_on_two_nodes_leave_exactly_one_session() {
    let mut net = Net::new(2);
    registered(&mut net, &[1]);
    let a = net.nodes[0].connect();
    let b = net.nodes[1].connect();
    net.nodes[0].send(a, &login_msg(1, "pw1"));
    net.nodes[1].send(b, &login_msg(1, "pw1"));
    net.nodes[0].run_jobs();
    net.nodes[1].run_jobs();
    // Both went online locally before either heard of the other.
    net.deliver();
    let alive: Vec<bool> = [(0, a), (1, b)]
        .iter()
        .map(|&(n, c)| {
            net.nodes[n].recv(c);
            !net.nodes[n].is_closed(c)
        })
        .collect();
    assert_eq!(alive.iter().filter(|x| **x).count(), 1, "{alive:?}");
    // The survivor is the login Redis ordered last.
    let last = net
        .log
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::Online { node, user: 1, .. } => Some(node.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(alive[0], last == "a");
    // Both nodes agree that 1 is online.
    assert_eq!(
        net.nodes[0].hub.online_count() + net.nodes[1].hub.online_count(),
        1
    );
}

#[test]
fn group_messages_reach_every_node_once_and_never_the_sender() {
    let mut net = Net::new(3);
    registered(&mut net, &[1, 2, 3, 4]);
    let c1 = net.login(0, 1);
    let c2 = net.login(1, 2);
    let c3 = net.login(2, 3);
    let c4 = net.login(2, 4);
    for (n, c) in [(0, c1), (1, c2), (2, c3), (2, c4)] {
        net.recv(n, c);
    }
    for i in 0..3 {
        net.nodes[0].send(
            c1,
            &ClientMessage::Sms(SmsMes {
                content: format!("m{i}"),
                ..Default::default()
            }),
        );
    }
    net.deliver();
    let published = net
        .log
        .iter()
        .filter(|e| matches!(e, Event::Group { .. }))
        .count();
    assert_eq!(
        published, 3,
        "one publish per message, whatever the audience"
    );
    for (n, c) in [(1, c2), (2, c3), (2, c4)] {
        let got: Vec<String> = net
            .recv(n, c)
            .into_iter()
            .map(|m| match m {
                ServerMessage::Sms(s) => {
                    assert_eq!((s.user_id, s.user_name.as_str()), (1, "u1"));
                    s.content
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, ["m0", "m1", "m2"], "in order, once");
    }
    assert_eq!(net.recv(0, c1), []);
}

fn private(to: i64, content: &str) -> ClientMessage {
    ClientMessage::Private(SmsPrivateMes {
        to_user_id: to,
        content: content.into(),
        ..Default::default()
    })
}

fn sms_code(got: &[ServerMessage]) -> Vec<u16> {
    got.iter()
        .filter_map(|m| match m {
            ServerMessage::SmsRes(r) => Some(r.code),
            _ => None,
        })
        .collect()
}

#[test]
fn private_messages_cross_nodes_or_are_stored_never_neither() {
    let mut net = Net::new(2);
    registered(&mut net, &[1, 2]);
    let c1 = net.login(0, 1);
    let c2 = net.login(1, 2);
    net.recv(0, c1);
    net.recv(1, c2);
    // Online on b: delivered there, answered 200 once b says so.
    net.nodes[0].send(c1, &private(2, "hello"));
    assert_eq!(net.recv(0, c1), [], "no answer before b's");
    net.deliver();
    assert!(matches!(&net.recv(1, c2)[..], [ServerMessage::Private(p)] if p.content == "hello"));
    net.deliver();
    assert_eq!(sms_code(&net.recv(0, c1)), [200]);
    // 2 leaves b while a message is on its way: b says it did not deliver; it is
    // stored (202) and arrives at 2's next login.
    net.nodes[0].send(c1, &private(2, "in flight"));
    net.nodes[1].hangup(c2);
    net.deliver();
    net.nodes[0].run_jobs();
    let got = net.recv(0, c1);
    assert_eq!(sms_code(&got), [202], "{got:?}");
    let again = net.nodes[0].login(2);
    net.nodes[0].run_jobs();
    let _ = again;
    assert_eq!(
        net.nodes[0].store.offline_count(2),
        0,
        "delivered and removed"
    );
}

fn sms_res(got: &[ServerMessage]) -> Vec<(u16, Option<String>)> {
    got.iter()
        .filter_map(|m| match m {
            ServerMessage::SmsRes(r) => Some((r.code, r.msg_id.clone())),
            _ => None,
        })
        .collect()
}

fn private_id(to: i64, content: &str, id: &str) -> ClientMessage {
    ClientMessage::Private(SmsPrivateMes {
        to_user_id: to,
        content: content.into(),
        msg_id: Some(id.into()),
        ..Default::default()
    })
}

/// The contents of the private messages among `got`, whichever form they came in.
fn private_texts(got: &[ServerMessage]) -> Vec<String> {
    got.iter()
        .filter_map(|m| match m {
            ServerMessage::Private(p) => Some(p.content.clone()),
            ServerMessage::Sms(s) => Some(s.content.clone()),
            _ => None,
        })
        .collect()
}

/// Logs `id` in on `node` and returns the private messages it got with its login.
fn fresh_login(net: &mut Net, node: usize, id: i64) -> Vec<String> {
    let c = net.nodes[node].connect();
    net.nodes[node].send(c, &login_msg(id, &format!("pw{id}")));
    net.nodes[node].run_jobs();
    let got = net.recv(node, c);
    assert!(
        matches!(got.first(), Some(ServerMessage::LoginRes(r)) if r.code == 200),
        "{got:?}"
    );
    net.deliver();
    net.nodes[node].run_jobs();
    private_texts(&got)
}

#[test]
fn across_nodes_200_is_sent_once_the_recipient_s_socket_took_the_message() {
    let mut net = Net::new(2);
    registered(&mut net, &[1, 2, 3]);
    let c1 = net.login(0, 1);
    let c2 = net.login(1, 2);
    net.recv(0, c1);
    net.recv(1, c2);
    net.nodes[0].send(c1, &private_id(2, "hello", "m1"));
    net.deliver();
    // Queued on b, not yet written (2's client has not read): no answer yet, however
    // long the events go round.
    net.deliver();
    net.nodes[1].advance(PRIVATE_WRITE_WAIT_MS - 1);
    net.deliver();
    assert_eq!(net.recv(0, c1), [], "no answer before b wrote it");
    // 2 reads: written, and only then answered.
    assert_eq!(private_texts(&net.recv(1, c2)), ["hello"]);
    net.deliver();
    assert_eq!(sms_res(&net.recv(0, c1)), [(200, Some("m1".into()))]);
    // A recipient on b whose client reads less than the message: 206 once written.
    let c3 = net.nodes[1].connect();
    net.nodes[1].send(c3, &seed_login_msg(3, "pw3"));
    net.nodes[1].run_jobs();
    net.recv(1, c3);
    net.deliver();
    net.recv(0, c1);
    net.nodes[0].send(c1, &private_id(3, &"long ".repeat(3000), "m2"));
    net.deliver();
    assert_eq!(net.recv(0, c1), [], "no answer before b wrote it");
    assert_eq!(private_texts(&net.recv(1, c3)).len(), 1);
    net.deliver();
    assert_eq!(sms_res(&net.recv(0, c1)), [(206, Some("m2".into()))]);
}

#[test]
fn across_nodes_a_recipient_dropped_before_the_write_gets_every_message_at_next_login() {
    let mut net = Net::new(2);
    registered(&mut net, &[1, 2]);
    let c1 = net.login(0, 1);
    let c2 = net.login(1, 2);
    net.recv(0, c1);
    net.recv(1, c2);
    // 2's client on b stops reading; messages without msgId.
    net.nodes[1].stall(c2, true);
    for i in 0..5 {
        net.nodes[0].send(c1, &private(2, &format!("unread {i}")));
    }
    net.deliver();
    assert_eq!(net.recv(0, c1), []);
    // b drops 2 as a slow consumer: what it did not write goes back to a, which
    // stores it.
    net.nodes[1].advance(PRIVATE_WRITE_WAIT_MS);
    assert!(net.nodes[1].is_closed(c2));
    let mut codes = Vec::new();
    for _ in 0..10 {
        net.deliver();
        for h in &mut net.nodes {
            h.run_jobs();
        }
        codes.extend(sms_code(&net.recv(0, c1)));
    }
    assert_eq!(codes, [202; 5], "every one stored, none said delivered");
    assert_eq!(net.nodes[0].store.offline_count(2), 5, "each stored once");
    // 2's next login, on either node, gets them all, once, in order.
    let got = fresh_login(&mut net, 1, 2);
    let want: Vec<String> = (0..5).map(|i| format!("unread {i}")).collect();
    assert_eq!(got, want);
    net.nodes[1].run_jobs();
    assert_eq!(
        net.nodes[0].store.offline_count(2),
        0,
        "delivered and removed"
    );
}

#[test]
fn across_nodes_a_message_its_node_could_not_write_before_stopping_is_stored() {
    let mut net = Net::new(2);
    registered(&mut net, &[1, 2]);
    let c1 = net.login(0, 1);
    let c2 = net.login(1, 2);
    net.recv(0, c1);
    net.recv(1, c2);
    net.nodes[1].stall(c2, true);
    net.nodes[0].send(c1, &private_id(2, "before the stop", "m1"));
    net.deliver();
    let now = net.nodes[1].now;
    net.nodes[1].hub.handle_shutdown(now);
    net.nodes[1].advance(crate::hub::HubConfig::default().close_linger_ms + 1);
    assert!(net.nodes[1].is_closed(c2));
    net.deliver();
    net.nodes[0].run_jobs();
    assert_eq!(sms_res(&net.recv(0, c1)), [(202, Some("m1".into()))]);
    assert_eq!(net.nodes[0].store.offline_count(2), 1);
}

#[test]
fn a_late_answer_after_the_sender_s_node_stored_the_message_stores_nothing_more() {
    let mut net = Net::new(2);
    registered(&mut net, &[1, 2]);
    let c1 = net.login(0, 1);
    let c2 = net.login(1, 2);
    net.recv(0, c1);
    net.recv(1, c2);
    net.nodes[1].stall(c2, true);
    // No msgId: nothing in the store would catch a second copy.
    net.nodes[0].send(c1, &private(2, "once"));
    net.deliver();
    // b drops 2 and gives the message back, but its answer is held up past a's wait.
    net.nodes[1].advance(PRIVATE_WRITE_WAIT_MS);
    let late = net.nodes[1].take_published();
    assert!(
        late.iter().any(|ev| matches!(
            ev,
            Event::PrivateAck {
                delivered: false,
                ..
            }
        )),
        "{late:?}"
    );
    net.nodes[0].advance(5_000 + PRIVATE_WRITE_WAIT_MS);
    net.nodes[0].run_jobs();
    assert_eq!(sms_code(&net.recv(0, c1)), [202], "stored by a");
    assert_eq!(net.nodes[0].store.offline_count(2), 1);
    // The late answer finds nothing to answer: nothing more is stored or said.
    for ev in late {
        for h in &mut net.nodes {
            h.cluster(Input::Event(ev.clone()));
        }
    }
    net.deliver();
    for h in &mut net.nodes {
        h.run_jobs();
    }
    assert_eq!(sms_code(&net.recv(0, c1)), Vec::<u16>::new());
    assert_eq!(net.nodes[0].store.offline_count(2), 1, "stored once");
    assert_eq!(fresh_login(&mut net, 0, 2), ["once"]);
}

#[test]
fn a_node_that_does_not_answer_in_time_gets_its_users_messages_stored() {
    let mut net = Net::new(2);
    registered(&mut net, &[1, 2]);
    let c1 = net.login(0, 1);
    let _c2 = net.login(1, 2);
    net.recv(0, c1);
    net.nodes[0].send(c1, &private(2, "lost node"));
    // b never answers (it died): after the answer time the message is stored.
    net.nodes[0].take_published();
    net.nodes[0].advance(5_000 + PRIVATE_WRITE_WAIT_MS);
    net.nodes[0].run_jobs();
    assert_eq!(sms_code(&net.recv(0, c1)), [202]);
    assert_eq!(net.nodes[0].store.offline_count(2), 1);
}

#[test]
fn a_dead_node_s_users_go_offline_and_a_snapshot_sets_things_right() {
    let mut net = Net::new(2);
    registered(&mut net, &[1, 2, 3]);
    let c1 = net.login(0, 1);
    let _c2 = net.login(1, 2);
    net.recv(0, c1);
    // b stops beating: only a is alive.
    net.nodes[0].cluster(Input::LiveNodes(vec!["a".into()]));
    assert_eq!(net.recv(0, c1), [notify(2, 1)]);
    net.nodes[0].send(c1, &ClientMessage::OnlineUsers);
    assert!(
        matches!(&net.recv(0, c1)[..], [ServerMessage::OnlineUsersRes(r)] if r.users.len() == 1)
    );
    // Private messages to 2 are now stored.
    net.nodes[0].send(c1, &private(2, "later"));
    net.nodes[0].run_jobs();
    assert_eq!(sms_code(&net.recv(0, c1)), [202]);
    // After a lost link, a snapshot brings the picture back: 3 online on b.
    net.nodes[0].cluster(Input::Link(false));
    net.nodes[0].cluster(Input::Link(true));
    net.nodes[0].cluster(Input::Snapshot(vec![
        PresenceEntry {
            node: "a".into(),
            user: 1,
            name: "u1".into(),
            session: 1,
        },
        PresenceEntry {
            node: "b".into(),
            user: 3,
            name: "u3".into(),
            session: 7,
        },
    ]));
    assert_eq!(net.recv(0, c1), [notify(3, 0)]);
    // A node that restarts says so: what was known of it is gone.
    net.nodes[0].cluster(Input::Event(Event::Reset { node: "b".into() }));
    assert_eq!(net.recv(0, c1), [notify(3, 1)]);
}

/// History on a shared store: each message is appended once, by the node that took
/// it, and every node reads the same conversations.
#[test]
fn every_message_joins_the_history_once_whichever_node_took_it() {
    let mut net = Net::new(2);
    registered(&mut net, &[1, 2]);
    let c1 = net.login(0, 1);
    let c2 = net.login(1, 2);
    for (node, c, text) in [(0, c1, "from a"), (1, c2, "from b")] {
        net.nodes[node].send(
            c,
            &ClientMessage::Sms(SmsMes {
                content: text.into(),
                ..Default::default()
            }),
        );
        net.deliver();
        for h in &mut net.nodes {
            h.run_jobs();
        }
    }
    // Across nodes: delivered on b, appended by a.
    net.recv(1, c2);
    net.nodes[0].send(c1, &private(2, "private across"));
    net.deliver();
    net.recv(1, c2);
    net.deliver();
    for h in &mut net.nodes {
        h.run_jobs();
    }
    assert_eq!(net.nodes[0].store.history_count(), 3);
    let ask = |with| {
        ClientMessage::History(crate::proto::HistoryMes {
            before: 0,
            limit: 10,
            with,
            after: None,
        })
    };
    net.nodes[1].send(c2, &ask(None));
    net.nodes[1].run_jobs();
    let got = net.recv(1, c2);
    let [ServerMessage::HistoryRes(r)] = &got[..] else {
        panic!("{got:?}")
    };
    let texts: Vec<&str> = r.messages.iter().map(|e| e.content.as_str()).collect();
    assert_eq!(texts, ["from a", "from b"]);
    net.nodes[1].send(c2, &ask(Some(1)));
    net.nodes[1].run_jobs();
    let got = net.recv(1, c2);
    assert!(
        matches!(&got[..], [ServerMessage::HistoryRes(r)] if r.messages.len() == 1 && r.messages[0].content == "private across"),
        "{got:?}"
    );
}

#[test]
fn a_login_replacing_another_nodes_session_is_told_only_what_came_after_it() {
    let mut net = Net::new(2);
    net.nodes[0].hub.config_mut().presence_interval_ms = 50;
    registered(&mut net, &[1, 2, 3]);
    let watcher = net.login(0, 2);
    net.login(1, 1);
    net.nodes[0].advance(50);
    assert_eq!(net.recv(0, watcher), [notify(1, 0)]);
    // Within one interval on node a: 3 comes and goes, then 1 logs in there,
    // replacing its session on node b (its login reply lists 1 and 2).
    let c = net.login(0, 3);
    net.nodes[0].hangup(c);
    let here = net.login(0, 1);
    net.nodes[0].advance(50);
    assert_eq!(
        net.recv(0, here),
        [],
        "nothing its login reply already told it"
    );
    assert_eq!(net.recv(0, watcher), [notify(3, 0), notify(3, 1)]);
}

#[test]
fn a_session_replaced_on_another_node_is_not_brought_back_by_a_resync() {
    let mut net = Net::new(3);
    registered(&mut net, &[1, 9]);
    let watcher = net.login(2, 9);
    let old = net.login(0, 1);
    let new = net.login(1, 1);
    let got = net.recv(0, old);
    assert!(
        matches!(got.last(), Some(ServerMessage::Error(e)) if e.code == 409),
        "{got:?}"
    );
    assert!(net.nodes[0].is_closed(old));
    // The replaced session left a's presence, without anyone seeing 1 go offline.
    assert_eq!(net.presence[0].entries("a"), []);
    assert_eq!(net.recv(2, watcher), [notify(1, 0)]);
    // a reconnects to Redis (and then every node does, as after a Redis restart): the
    // live session of 1 on b stays, and every node lists exactly who is logged in.
    for i in [0, 0, 1, 2] {
        net.reconnect(i);
        let got = net.recv(1, new);
        assert!(
            !got.iter()
                .any(|m| matches!(m, ServerMessage::Error(e) if e.code == 409)),
            "{got:?}"
        );
        assert!(!net.nodes[1].is_closed(new));
        for h in &net.nodes {
            assert_eq!(h.hub.all_ids(), [1, 9]);
        }
        // The watcher's own node losing Redis shows it the others leave and come
        // back; another node's resync shows it nothing.
        let seen = net.recv(2, watcher);
        if i != 2 {
            assert_eq!(seen, [], "after node {i} reconnected");
        }
    }
    // So does a node started afterwards.
    let late = net.start_node();
    assert_eq!(net.nodes[late].hub.all_ids(), [1, 9]);
    // When the live session ends, 1 is offline everywhere, and for nodes to come.
    net.nodes[1].hangup(new);
    net.deliver();
    assert_eq!(net.recv(2, watcher), [notify(1, 1)]);
    for h in &net.nodes {
        assert_eq!(h.hub.all_ids(), [9]);
    }
    let later = net.start_node();
    assert_eq!(net.nodes[later].hub.all_ids(), [9]);
}
