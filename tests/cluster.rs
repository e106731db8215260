//! Several chat servers on one Redis are one chat: each test starts its own
//! `redis-server` and two or three `chat-server` nodes (free loopback ports, their own
//! temporary directories) and checks what users see across them.

mod common;

use common::*;
use serde_json::json;

fn online_ids(c: &mut SeedClient) -> Vec<i64> {
    c.send("OnlineUsersMes", json!({}));
    let (g, _) = c.recv_until("OnlineUsersResMes");
    g.data["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["userId"].as_i64().unwrap())
        .collect()
}

#[test]
fn presence_group_and_private_messages_cross_nodes() {
    let r = RedisProc::start(false);
    let (a, _da) = r.node(&[]);
    let (b, _db) = r.node(&[]);
    let mut one = online(&a, 1);
    let mut two = online(&b, 2);
    one.wait_notice(2, 0);
    assert_eq!(online_ids(&mut one), [1, 2]);
    assert_eq!(online_ids(&mut two), [1, 2]);
    // A login on a lists the users of b too.
    let mut three = online(&a, 3);
    two.wait_notice(3, 0);
    one.wait_notice(3, 0);
    // Group: once each, everywhere, never back to the sender, in order.
    for i in 0..5 {
        two.send("SmsMes", json!({ "content": format!("g{i}") }));
    }
    for c in [&mut one, &mut three] {
        for i in 0..5 {
            let (g, _) = c.recv_until("SmsMes");
            assert_eq!(g.data["content"], format!("g{i}"));
            assert_eq!(g.data["userId"], 2);
        }
    }
    two.expect_nothing_pending();
    // Private to a user on the other node: delivered, 200.
    one.send("SmsPrivateMes", json!({"toUserId": 2, "content": "psst"}));
    assert_eq!(one.recv_until("SmsResMes").0.data["code"], 200);
    let (p, _) = two.recv_until("SmsPrivateMes");
    assert_eq!(
        (p.data["content"].clone(), p.data["userId"].clone()),
        (json!("psst"), json!(1))
    );
    // Logout on b: offline on a.
    two.send("LogoutMes", json!({}));
    one.wait_notice(2, 1);
    assert_eq!(online_ids(&mut one), [1, 3]);
}

#[test]
fn one_session_per_user_across_nodes_without_flicker() {
    let r = RedisProc::start(false);
    let (a, _da) = r.node(&[]);
    let (b, _db) = r.node(&[]);
    let mut watcher = online(&a, 9);
    let mut first = online(&a, 1);
    watcher.wait_notice(1, 0);
    let mut second = b.connect();
    assert_eq!(second.login(1, "pw1").data["code"], 200);
    let closed = first.expect_closed();
    assert!(
        closed
            .iter()
            .any(|g| g.kind == "ErrorResMes" && g.data["code"] == 409),
        "{closed:?}"
    );
    // The watcher saw no offline/online flicker: the next thing it hears is a pong.
    watcher.expect_nothing_pending();
    assert_eq!(online_ids(&mut watcher), [1, 9]);
    // Two logins of one user at once on two nodes: exactly one session is left.
    let mut x = a.connect();
    let mut y = b.connect();
    x.send("LoginMes", json!({"userId": 9, "userPwd": "pw9"}));
    y.send("LoginMes", json!({"userId": 9, "userPwd": "pw9"}));
    assert_eq!(x.recv_until("LoginResMes").0.data["code"], 200);
    assert_eq!(y.recv_until("LoginResMes").0.data["code"], 200);
    drop(watcher);
    // The login Redis ordered first loses: its session gets 409 and is closed, once
    // its node hears of the other. Until then both answer pings.
    let deadline = std::time::Instant::now() + WAIT;
    let survivor = loop {
        let answers = |c: &mut SeedClient| {
            c.send("PingMes", json!({}));
            while let Some(g) = c.try_recv() {
                if g.kind == "PongMes" {
                    return true;
                }
            }
            false
        };
        match (answers(&mut x), answers(&mut y)) {
            (true, false) => break x,
            (false, true) => break y,
            (false, false) => panic!("both sessions were closed"),
            (true, true) => {}
        }
        assert!(std::time::Instant::now() < deadline, "both sessions stayed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut survivor = survivor;
    survivor.expect_nothing_pending();
}

#[test]
fn a_killed_node_s_users_go_offline_and_their_messages_are_stored() {
    let r = RedisProc::start(false);
    let (a, _da) = r.node(&[]);
    let (b, db) = r.node(&["--node-id", "bee"]);
    let mut one = online(&a, 1);
    let _two = online(&b, 2);
    one.wait_notice(2, 0);
    b.kill_hard();
    // Within the node timeout (2 s) plus a beat, 2 is offline on a.
    one.wait_notice(2, 1);
    one.send(
        "SmsPrivateMes",
        json!({"toUserId": 2, "content": "while away"}),
    );
    assert_eq!(one.recv_until("SmsResMes").0.data["code"], 202);
    // b restarts under its name: it starts clean, and 2 gets the message there.
    let b = r.node_in(db.path(), &["--node-id", "bee"]);
    let mut two = b.connect();
    assert_eq!(two.login(2, "pw2").data["code"], 200);
    let (p, _) = two.recv_until("SmsPrivateMes");
    assert_eq!(p.data["content"], "while away");
    assert_eq!(p.data["offline"], true);
    one.wait_notice(2, 0);
}

#[test]
fn a_node_that_lost_redis_resynchronises_when_it_is_back() {
    // No persistence: the Redis that comes back knows nothing; the nodes rebuild it.
    let mut r = RedisProc::start(false);
    let (mut a, _da) = r.node(&[]);
    let (b, _db) = r.node(&[]);
    let mut one = online(&a, 1);
    let mut two = online(&b, 2);
    one.wait_notice(2, 0);
    r.kill();
    // Each node serves its own users meanwhile.
    one.send("PingMes", json!({}));
    one.recv_until("PongMes");
    r.restart();
    // The nodes said so, and keep going.
    a.wait_log("cluster: Redis at");
    // Once both are back, every node's list is the same and complete.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (x, y) = (online_ids(&mut one), online_ids(&mut two));
        if x == [1, 2] && y == [1, 2] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lists {x:?} and {y:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The users in `presence:<node>`, in order.
fn presence(r: &RedisProc, node: &str) -> Vec<i64> {
    let mut ids: Vec<i64> = redis::cmd("HKEYS")
        .arg(format!("presence:{node}"))
        .query(&mut r.client())
        .unwrap();
    ids.sort();
    ids
}

/// Polls `done` until it holds, failing the test after [`WAIT`].
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `from` sends a group message; each of `to` receives it, with no 409 before it.
/// Every event its node published before it has then been handled by theirs.
fn mark(from: &mut SeedClient, to: &mut [&mut SeedClient], text: &str) {
    from.send("SmsMes", json!({ "content": text }));
    for c in to.iter_mut() {
        let (g, before) = c.recv_until("SmsMes");
        assert_eq!(g.data["content"], text);
        assert!(
            !before.iter().any(|g| g.kind == "ErrorResMes"),
            "{before:?}"
        );
    }
}

#[test]
fn a_replaced_session_stays_gone_after_reconnects_and_a_redis_restart() {
    let mut r = RedisProc::start(false);
    let (a, _da) = r.node(&["--node-id", "a"]);
    let (b, _db) = r.node(&["--node-id", "b"]);
    let mut five = online(&a, 5);
    let mut watcher = online(&b, 9);
    let mut first = online(&a, 1);
    watcher.wait_notice(1, 0);
    // 1 logs in on b: its session on a is replaced, and leaves a's presence.
    let mut second = b.connect();
    assert_eq!(second.login(1, "pw1").data["code"], 200);
    let closed = first.expect_closed();
    assert!(
        closed
            .iter()
            .any(|g| g.kind == "ErrorResMes" && g.data["code"] == 409),
        "{closed:?}"
    );
    wait_until("a's presence without 1", || presence(&r, "a") == [5]);
    // Both nodes lose their connections to Redis and reconnect: each rewrites its
    // presence (cleared here to see it done) and announces its users again.
    let mut admin = r.client();
    let _: () = redis::cmd("DEL")
        .arg("presence:a")
        .arg("presence:b")
        .query(&mut admin)
        .unwrap();
    for kind in ["pubsub", "normal"] {
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg(kind)
            .query(&mut admin)
            .unwrap();
    }
    wait_until("both presences rewritten", || {
        presence(&r, "a").contains(&5) && presence(&r, "b").contains(&9)
    });
    assert_eq!(presence(&r, "a"), [5]);
    mark(
        &mut five,
        &mut [&mut watcher, &mut second],
        "after reconnect",
    );
    second.expect_nothing_pending();
    assert_eq!(presence(&r, "b"), [1, 9]);
    wait_until("lists agree", || {
        online_ids(&mut five) == [1, 5, 9] && online_ids(&mut watcher) == [1, 5, 9]
    });
    // 1 logs in on a again, replacing b's session; then Redis restarts empty.
    let mut third = a.connect();
    assert_eq!(third.login(1, "pw1").data["code"], 200);
    second.expect_closed();
    wait_until("b's presence without 1", || presence(&r, "b") == [9]);
    r.restart();
    wait_until("both presences rewritten after the restart", || {
        presence(&r, "a").contains(&5) && presence(&r, "b").contains(&9)
    });
    assert_eq!(presence(&r, "b"), [9]);
    mark(&mut watcher, &mut [&mut five, &mut third], "after restart");
    third.expect_nothing_pending();
    assert_eq!(presence(&r, "a"), [1, 5]);
    wait_until("lists agree after the restart", || {
        online_ids(&mut five) == [1, 5, 9] && online_ids(&mut watcher) == [1, 5, 9]
    });
    // A node started afterwards lists exactly who is logged in.
    let (c, _dc) = r.node(&["--node-id", "c"]);
    let mut seven = online(&c, 7);
    wait_until("c's list", || online_ids(&mut seven) == [1, 5, 7, 9]);
    // 1 logs out: offline everywhere.
    third.send("LogoutMes", json!({}));
    watcher.wait_notice(1, 1);
    seven.wait_notice(1, 1);
    for c in [&mut five, &mut watcher, &mut seven] {
        assert_eq!(online_ids(c), [5, 7, 9]);
    }
    assert_eq!(
        [presence(&r, "a"), presence(&r, "b"), presence(&r, "c")],
        [vec![5], vec![9], vec![7]]
    );
}

#[test]
fn a_node_writes_back_presence_redis_lost_and_a_dead_node_s_presence_expires() {
    let r = RedisProc::start(false);
    let (a, _da) = r.node(&["--node-id", "a"]);
    let _one = online(&a, 1);
    wait_until("a's presence", || presence(&r, "a") == [1]);
    // Redis loses the cluster's keys without restarting: at its next beat a finds
    // itself missing and writes its presence again.
    let _: () = redis::cmd("DEL")
        .arg("nodes")
        .arg("presence:a")
        .query(&mut r.client())
        .unwrap();
    wait_until("a's presence written again", || presence(&r, "a") == [1]);
    // Its life is one node timeout, renewed by each beat.
    let ttl = || -> i64 {
        redis::cmd("PTTL")
            .arg("presence:a")
            .query(&mut r.client())
            .unwrap()
    };
    let mut last = ttl();
    assert!(0 < last && last <= 2_000, "{last}");
    wait_until("a's presence renewed", || {
        let now = ttl();
        let renewed = now > last;
        last = now;
        renewed
    });
    // a is killed and no node is left to clear up after it: its presence expires with
    // its node timeout all the same, and a node started later lists nobody.
    a.kill_hard();
    wait_until("a's presence expired", || presence(&r, "a").is_empty());
    let (b, _db) = r.node(&["--node-id", "b"]);
    let mut two = online(&b, 2);
    assert_eq!(online_ids(&mut two), [2]);
}

#[test]
fn a_recipient_on_another_node_that_stops_reading_loses_nothing_answered_200() {
    let r = RedisProc::start(false);
    let (a, _da) = r.node(&["--msg-rate", "0"]);
    let (b, _db) = r.node(&["--msg-rate", "0"]);
    let mut sender = online(&a, 1);
    // A small receive buffer: b's writes to user 2 block sooner.
    let mut stalled = delivery::small_buffered(b.addr, 2);
    sender.wait_notice(2, 0);
    // From here on user 2 reads nothing; b drops it once a message waited 10 s.
    let (ok, stored) = delivery::send_to_stalled(&mut sender, 2, 3000);
    assert!(!stored.is_empty(), "user 2 was dropped: some were stored");
    // What was answered 200 is in user 2's socket, whole.
    let got = delivery::numbers_in_socket(&mut stalled);
    assert!(
        ok.is_subset(&got),
        "answered 200 but never reached the socket: {:?}",
        ok.difference(&got).collect::<Vec<_>>()
    );
    // What was stored comes at the next login, on the sender's node, each once.
    let mut back = a.connect();
    assert_eq!(back.login_1mib(2, "pw2").data["code"], 200);
    let later = delivery::numbers_stored(&mut back, stored.len());
    assert_eq!(later, stored);
}
