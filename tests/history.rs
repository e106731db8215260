//! History end to end: the real `chat-server` binary and seed-format clients over TCP,
//! with the embedded store and with a `redis-server` of the test's own. Paging across
//! the cap, private history seen by its two parties only, history kept across a
//! restart (and a `kill -9`), `--history 0`, no unsolicited frame for seed clients,
//! and a Redis lost in the middle of a burst of group messages (history entries lost,
//! not one live delivery).

mod common;

use common::*;
use serde_json::json;

const FAST: [&str; 6] = [
    "--msg-rate",
    "0",
    "--login-rate",
    "0",
    "--register-rate",
    "0",
];

/// Asks for a page; returns (contents, ids, more).
fn page(
    c: &mut SeedClient,
    before: u64,
    limit: i64,
    with: Option<i64>,
) -> (Vec<String>, Vec<u64>, bool) {
    let mut ask = json!({"before": before, "limit": limit});
    if let Some(w) = with {
        ask["with"] = json!(w);
    }
    c.send("HistoryMes", ask);
    let (res, _) = c.recv_until("HistoryResMes");
    let msgs = res.data["messages"].as_array().unwrap();
    (
        msgs.iter()
            .map(|m| m["content"].as_str().unwrap().to_string())
            .collect(),
        msgs.iter().map(|m| m["id"].as_u64().unwrap()).collect(),
        res.data["more"].as_bool().unwrap(),
    )
}

/// Logs in declaring a large `maxFrame` (a client of this project), on a new
/// connection.
fn login_reading_1mib(s: &ServerProc, id: i64) -> SeedClient {
    let mut c = s.connect();
    assert_eq!(c.login_1mib(id, &format!("pw{id}")).data["code"], 200);
    c
}

fn group(c: &mut SeedClient, text: &str) {
    c.send("SmsMes", json!({"content": text, "userId": 0}));
}

#[test]
fn paging_back_across_the_cap_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &FAST);
    let mut a = online(&s, 1);
    let mut b = online(&s, 2);
    let b2 = login_reading_1mib(&s, 2);
    drop(b);
    b = b2;
    for i in 0..150 {
        group(&mut a, &format!("m{i}"));
    }
    // The last one reached b: every one was accepted before b asks.
    loop {
        let (g, _) = b.recv_until("SmsMes");
        if g.data["content"] == "m149" {
            break;
        }
    }
    let (texts, ids, more) = page(&mut b, 0, 1000, None);
    assert_eq!((texts.len(), more), (100, true));
    assert_eq!((texts[0].as_str(), texts[99].as_str()), ("m50", "m149"));
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    let (texts, _, more) = page(&mut b, ids[0], 1000, None);
    assert_eq!((texts.len(), more), (50, false));
    assert_eq!(texts[0], "m0");
    let (texts, _, more) = page(&mut b, 0, 3, None);
    assert_eq!(
        (texts, more),
        (vec!["m147".into(), "m148".into(), "m149".into()], true)
    );
}

#[test]
fn private_history_is_seen_only_by_its_two_parties() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &FAST);
    let mut a = online(&s, 1);
    let mut b = online(&s, 2);
    let mut c = online(&s, 3);
    a.send("SmsPrivateMes", json!({"toUserId": 2, "content": "a to b"}));
    assert_eq!(a.recv_until("SmsResMes").0.data["code"], 200);
    b.send("SmsPrivateMes", json!({"toUserId": 1, "content": "b to a"}));
    assert_eq!(b.recv_until("SmsResMes").0.data["code"], 200);
    c.send("SmsPrivateMes", json!({"toUserId": 2, "content": "c to b"}));
    assert_eq!(c.recv_until("SmsResMes").0.data["code"], 200);
    assert_eq!(page(&mut a, 0, 10, Some(2)).0, ["a to b", "b to a"]);
    assert_eq!(page(&mut b, 0, 10, Some(1)).0, ["a to b", "b to a"]);
    assert_eq!(page(&mut b, 0, 10, Some(3)).0, ["c to b"]);
    // c cannot see a and b's conversation, whatever it asks for.
    assert_eq!(page(&mut c, 0, 10, Some(2)).0, ["c to b"]);
    assert!(page(&mut c, 0, 10, Some(1)).0.is_empty());
    assert!(page(&mut c, 0, 10, None).0.is_empty());
    // The entries name sender and recipient.
    c.send("HistoryMes", json!({"before": 0, "limit": 1, "with": 2}));
    let (res, _) = c.recv_until("HistoryResMes");
    let e = &res.data["messages"][0];
    assert_eq!(
        (&e["userId"], &e["userName"], &e["toUserId"]),
        (&json!(3), &json!("u3"), &json!(2))
    );
    assert!(e["time"].as_u64().unwrap() > 1_600_000_000_000);
}

#[test]
fn before_login_history_is_refused_401() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &[]);
    let mut c = s.connect();
    c.send("HistoryMes", json!({"before": 0, "limit": 10}));
    let g = c.recv();
    assert_eq!(
        (g.kind.as_str(), &g.data["code"]),
        ("ErrorResMes", &json!(401))
    );
}

#[test]
fn history_survives_a_restart_and_a_kill_with_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &FAST);
    let mut a = online(&s, 1);
    let mut b = online(&s, 2);
    group(&mut a, "before the restart");
    a.send(
        "SmsPrivateMes",
        json!({"toUserId": 2, "content": "private, before"}),
    );
    assert_eq!(a.recv_until("SmsResMes").0.data["code"], 200);
    // Read back: the appends ran before this read (one storage thread, in order).
    assert_eq!(page(&mut b, 0, 10, None).0, ["before the restart"]);
    s.signal_and_wait(libc::SIGTERM);

    let s = ServerProc::start(dir.path(), &FAST);
    let mut a = s.connect();
    assert_eq!(a.login(1, "pw1").data["code"], 200);
    let mut b = s.connect();
    assert_eq!(b.login(2, "pw2").data["code"], 200);
    group(&mut a, "after the restart");
    let (texts, ids, _) = page(&mut b, 0, 10, None);
    assert_eq!(texts, ["before the restart", "after the restart"]);
    assert!(ids[0] < ids[1], "numbering goes on: {ids:?}");
    assert_eq!(page(&mut b, 0, 10, Some(1)).0, ["private, before"]);
    // Seen in a page, so committed: a kill -9 keeps it.
    s.kill_hard();
    let s = ServerProc::start(dir.path(), &FAST);
    let mut b = s.connect();
    assert_eq!(b.login(2, "pw2").data["code"], 200);
    assert_eq!(
        page(&mut b, 0, 10, None).0,
        ["before the restart", "after the restart"]
    );
}

#[test]
fn history_zero_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = FAST.to_vec();
    args.extend(["--history", "0"]);
    let s = ServerProc::start(dir.path(), &args);
    let mut a = online(&s, 1);
    let mut b = online(&s, 2);
    group(&mut a, "not kept");
    assert_eq!(b.recv_until("SmsMes").0.data["content"], "not kept");
    a.send(
        "SmsPrivateMes",
        json!({"toUserId": 2, "content": "nor this"}),
    );
    assert_eq!(a.recv_until("SmsResMes").0.data["code"], 200);
    assert_eq!(page(&mut b, 0, 10, None), (vec![], vec![], false));
    assert_eq!(page(&mut b, 0, 10, Some(1)), (vec![], vec![], false));
    // And once it is turned on again, there was none.
    s.signal_and_wait(libc::SIGTERM);
    let s = ServerProc::start(dir.path(), &FAST);
    let mut b = s.connect();
    assert_eq!(b.login(2, "pw2").data["code"], 200);
    assert_eq!(page(&mut b, 0, 10, None), (vec![], vec![], false));
}

#[test]
fn seed_clients_get_no_unsolicited_frame() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &FAST);
    let mut a = online(&s, 1);
    group(&mut a, "said before the seed client came");
    a.expect_nothing_pending();
    // A seed client logs in: its login reply, the notice of nobody else, and nothing
    // of the history.
    let mut seed = s.connect();
    assert_eq!(seed.register(2, "pw2", "two").data["code"], 200);
    let (_, before) = {
        seed.send(
            "LoginMes",
            json!({"userId": 2, "userPwd": "pw2", "userName": ""}),
        );
        seed.recv_until("LoginResMes")
    };
    assert!(before.is_empty(), "{before:?}");
    seed.expect_nothing_pending();
    // Others chatting and reading history send it only their messages.
    group(&mut a, "live");
    let _ = page(&mut a, 0, 10, None);
    let _ = page(&mut a, 0, 10, Some(2));
    let g = seed.recv();
    assert_eq!(
        (g.kind.as_str(), &g.data["content"]),
        ("SmsMes", &json!("live"))
    );
    seed.expect_nothing_pending();
}

// ----- Redis -----------------------------------------------------------------------

/// A server on `r` without the message and login rates.
fn start_on(r: &RedisProc, extra: &[&str]) -> (ServerProc, tempfile::TempDir) {
    r.chat(&[&FAST[..], extra].concat())
}

#[test]
fn history_in_redis_is_shared_by_the_nodes_bounded_and_survives_a_restart() {
    let r = RedisProc::start(false);
    let (s1, _d1) = start_on(&r, &["--history", "5"]);
    let (s2, _d2) = start_on(&r, &["--history", "5"]);
    let mut a = online(&s1, 1);
    let mut b = s2.connect();
    assert_eq!(b.register(2, "pw2", "u2").data["code"], 200);
    assert_eq!(b.login(2, "pw2").data["code"], 200);
    for i in 0..4 {
        group(&mut a, &format!("from node 1, {i}"));
    }
    // A page read on a node comes after that node's own appends: node 1's four are in
    // Redis before node 2's come.
    assert_eq!(page(&mut a, 0, 100, None).0.len(), 4);
    for i in 0..4 {
        group(&mut b, &format!("from node 2, {i}"));
    }
    let (texts, ids, more) = page(&mut b, 0, 100, None);
    assert_eq!(
        texts,
        [
            "from node 1, 3",
            "from node 2, 0",
            "from node 2, 1",
            "from node 2, 2",
            "from node 2, 3"
        ],
        "the last 5 of 8"
    );
    assert!(!more);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(ids[4], 8, "numbered by Redis, across the nodes");
    assert_eq!(r.zcard("history:group"), 5);
    // A private message across the nodes: appended once, by the sender's node.
    a.send("SmsPrivateMes", json!({"toUserId": 2, "content": "across"}));
    assert_eq!(a.recv_until("SmsResMes").0.data["code"], 200);
    assert_eq!(page(&mut a, 0, 10, Some(2)).0, ["across"]);
    assert_eq!(r.zcard("history:pm:1:2"), 1);
    // Both nodes go; a new one reads the same history.
    drop(s1);
    drop(s2);
    let (s3, _d3) = start_on(&r, &[]);
    let mut b = s3.connect();
    assert_eq!(b.login(2, "pw2").data["code"], 200);
    assert_eq!(page(&mut b, 0, 100, None).0, texts);
    assert_eq!(page(&mut b, 0, 100, Some(1)).0, ["across"]);
}

#[test]
fn redis_lost_in_a_burst_costs_history_entries_never_a_live_message() {
    let mut r = RedisProc::start(false);
    let (mut s, _d) = start_on(&r, &["--redis-timeout-ms", "500"]);
    let mut a = online(&s, 1);
    let mut b = online(&s, 2);
    let b_again = login_reading_1mib(&s, 2);
    drop(b);
    b = b_again;
    for i in 0..50 {
        group(&mut a, &format!("burst {i}"));
    }
    // Redis goes in the middle of the burst.
    assert_eq!(b.recv_until("SmsMes").0.data["content"], "burst 0");
    r.kill();
    for i in 50..100 {
        group(&mut a, &format!("burst {i}"));
    }
    // Every message reached b live, in order.
    let mut got = vec!["burst 0".to_string()];
    while got.len() < 100 {
        let (g, _) = b.recv_until("SmsMes");
        got.push(g.data["content"].as_str().unwrap().to_string());
    }
    let want: Vec<String> = (0..100).map(|i| format!("burst {i}")).collect();
    assert_eq!(got, want);
    // The log says what was lost.
    let line = s.wait_log("history entries lost");
    assert!(line.contains("live delivery went on"), "{line}");
    // Reading fails clearly meanwhile; the connection goes on.
    b.send("HistoryMes", json!({"before": 0, "limit": 10}));
    let (e, _) = b.recv_until("ErrorResMes");
    assert_eq!(e.data["code"], 503, "{e:?}");
    b.expect_nothing_pending();
    // Live messages go on as before.
    group(&mut a, "after");
    assert_eq!(b.recv_until("SmsMes").0.data["content"], "after");
}

#[test]
fn pages_after_an_id_and_the_per_user_rate_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let mut flags = FAST.to_vec();
    flags.extend(["--history-rate", "3"]);
    let s = ServerProc::start(dir.path(), &flags);
    let mut a = online(&s, 1);
    let mut b = online(&s, 2);
    for i in 0..3 {
        group(&mut a, &format!("m{i}"));
    }
    loop {
        let (g, _) = b.recv_until("SmsMes");
        if g.data["content"] == "m2" {
            break;
        }
    }
    // Forwards from the start, two at a time.
    let forwards = |c: &mut SeedClient, after: u64| {
        c.send("HistoryMes", json!({"after": after, "limit": 2}));
        let (res, _) = c.recv_until("HistoryResMes");
        let msgs = res.data["messages"].as_array().unwrap().clone();
        let texts: Vec<String> = msgs
            .iter()
            .map(|m| m["content"].as_str().unwrap().to_string())
            .collect();
        let last = msgs.last().map_or(0, |m| m["id"].as_u64().unwrap());
        (texts, last, res.data["more"].as_bool().unwrap())
    };
    let (texts, last, more) = forwards(&mut b, 0);
    assert_eq!((texts, more), (vec!["m0".into(), "m1".into()], true));
    let (texts, _, more) = forwards(&mut b, last);
    assert_eq!((texts, more), (vec!["m2".into()], false));
    // The third page of the minute is served; the fourth refused, saying when to try
    // again; the connection goes on and live messages still arrive.
    page(&mut b, 0, 10, None);
    b.send("HistoryMes", json!({"before": 0, "limit": 10}));
    let (err, _) = b.recv_until("ErrorResMes");
    assert_eq!(
        (&err.data["code"], &err.data["retryAfter"]),
        (&json!(429), &json!(20)),
        "{err:?}"
    );
    group(&mut a, "still live");
    let (g, _) = b.recv_until("SmsMes");
    assert_eq!(g.data["content"], "still live");
}
