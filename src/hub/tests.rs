//! Deterministic state-machine tests of the hub and its handlers: scripted
//! conversations against the in-memory store, with jobs run in a chosen order and time
//! moved by hand. No sockets, threads or sleeps.

use std::rc::Rc;
use std::time::Duration;

use crate::hub::HubConfig;
use crate::hub::testkit::{Harness, login_msg};
use crate::job::{JobKind, JobResult, LoginError, Outcome, execute};
use crate::proto::{
    ClientMessage, CodeRes, LoginResMes, NotifyUserStatusMes, OnlineUsersResMes, RegisterMes,
    ServerMessage, SmsMes, SmsPrivateMes, User, UserInfo, code,
};
use crate::store::StoreError;
use crate::types::ConnRef;

fn h() -> Harness {
    Harness::new(crate::hub::testkit::test_config())
}

fn reg_msg(id: i64, pwd: &str, name: &str) -> ClientMessage {
    ClientMessage::Register(RegisterMes {
        user: User {
            user_id: id,
            user_pwd: pwd.into(),
            user_name: name.into(),
            ..Default::default()
        },
        ..Default::default()
    })
}

fn sms(content: &str) -> ClientMessage {
    ClientMessage::Sms(SmsMes {
        content: content.into(),
        // A client may claim to be anyone: the server must ignore this.
        user_id: 999,
        user_name: "mallory".into(),
        user_pwd: "secret".into(),
        ..Default::default()
    })
}

fn private(to: i64, content: &str) -> ClientMessage {
    ClientMessage::Private(SmsPrivateMes {
        to_user_id: to,
        content: content.into(),
        ..Default::default()
    })
}

fn code_res(code: u16, error: &str) -> CodeRes {
    CodeRes {
        code,
        error: error.into(),
        ..Default::default()
    }
}

/// A refusal with a time to try again, in seconds.
fn busy_res(code: u16, error: &str, secs: u64) -> CodeRes {
    CodeRes {
        retry_after: Some(secs),
        ..code_res(code, error)
    }
}

fn err(code: u16, error: &str) -> ServerMessage {
    ServerMessage::Error(code_res(code, error))
}

fn info(id: i64) -> UserInfo {
    UserInfo {
        user_id: id,
        user_name: format!("u{id}"),
    }
}

fn notify(id: i64, status: u8) -> ServerMessage {
    ServerMessage::NotifyUserStatus(NotifyUserStatusMes {
        user_id: id,
        status,
        user_name: format!("u{id}"),
    })
}

#[test]
fn register_then_login_with_exact_replies() {
    let mut t = h();
    let c = t.connect();
    t.send(c, &reg_msg(100, "123456", "scott"));
    // Nothing is acknowledged before the store committed.
    assert!(t.recv(c).is_empty());
    assert_eq!(t.jobs.len(), 1);
    t.run_jobs();
    assert_eq!(t.recv(c), [ServerMessage::RegisterRes(code_res(200, ""))]);
    // The store holds a hash of the password, never the password.
    let rec = t.store.clone().get_user_for_test(100);
    assert!(crate::job::Passwords::verify(
        &t.hasher,
        "123456",
        &rec.pwd_hash
    ));
    assert!(!rec.to_json().contains("123456"));

    t.send(c, &login_msg(100, "123456"));
    t.run_jobs();
    let frames = t.recv_frames(c);
    assert_eq!(frames.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&frames[0][4..]).unwrap();
    assert_eq!(body["type"], "LoginResMes");
    assert_eq!(
        body["data"],
        r#"{"code":200,"UsersId":[100],"error":"","users":[{"userId":100,"userName":"scott"}]}"#
    );
}

#[test]
fn register_refusals() {
    let mut t = h();
    t.register(1);
    let c = t.connect();
    t.send(c, &reg_msg(1, "x", "again"));
    t.run_jobs();
    assert_eq!(
        t.recv(c),
        [ServerMessage::RegisterRes(code_res(
            400,
            "user id already taken"
        ))]
    );
    for (id, pwd, name, why) in [
        (0, "p", "n", "userId must be a positive number"),
        (-3, "p", "n", "userId must be a positive number"),
        (5, "p", "", "userName must not be empty"),
        (5, "", "n", "userPwd must not be empty"),
    ] {
        t.send(c, &reg_msg(id, pwd, name));
        assert!(
            t.jobs.is_empty(),
            "invalid registrations never reach the store"
        );
        assert_eq!(t.recv(c), [ServerMessage::RegisterRes(code_res(400, why))]);
    }
    t.store.set_failing(Some("disk gone"));
    t.send(c, &reg_msg(6, "p", "n"));
    t.run_jobs();
    assert_eq!(
        t.recv(c),
        [ServerMessage::RegisterRes(code_res(
            505,
            "server error: storage unavailable"
        ))]
    );
}

#[test]
fn login_refusals_and_attempt_limit() {
    let mut t = h();
    t.register(1);
    let c = t.connect();
    let res = |code: u16, e: &str| {
        ServerMessage::LoginRes(LoginResMes {
            code,
            users_id: vec![],
            error: e.into(),
            users: vec![],
            ..Default::default()
        })
    };
    t.send(c, &login_msg(2, "pw2"));
    t.run_jobs();
    assert_eq!(t.recv(c), [res(500, "no such user")]);
    t.send(c, &login_msg(1, "nope"));
    t.run_jobs();
    assert_eq!(t.recv(c), [res(403, "wrong password")]);
    t.store.set_failing(Some("down"));
    t.send(c, &login_msg(1, "pw1"));
    t.run_jobs();
    assert_eq!(t.recv(c), [res(505, "server error: storage unavailable")]);
    t.store.set_failing(None);
    // Two failures so far (a store error is not the client's failure); three more close it.
    for _ in 0..2 {
        t.send(c, &login_msg(1, "nope"));
        t.run_jobs();
        assert_eq!(t.recv(c), [res(403, "wrong password")]);
    }
    t.send(c, &login_msg(1, "nope"));
    t.run_jobs();
    assert_eq!(
        t.recv(c),
        [
            res(403, "wrong password"),
            err(429, "too many failed logins")
        ]
    );
    assert!(t.is_closed(c));
}

#[test]
fn login_is_announced_and_lists_everyone() {
    let mut t = h();
    for id in [1, 2, 3] {
        t.register(id);
    }
    let a = t.login(1);
    let b = t.login(2);
    assert_eq!(t.recv(a), [notify(2, 0)]);
    let c = t.connect();
    t.send(c, &login_msg(3, "pw3"));
    t.run_jobs();
    assert_eq!(
        t.recv(c),
        [ServerMessage::LoginRes(LoginResMes {
            code: 200,
            users_id: vec![1, 2, 3],
            error: String::new(),
            users: vec![info(1), info(2), info(3)],
            ..Default::default()
        })]
    );
    assert_eq!(t.recv(a), [notify(3, 0)]);
    assert_eq!(t.recv(b), [notify(3, 0)]);
    t.send(a, &ClientMessage::OnlineUsers);
    assert_eq!(
        t.recv(a),
        [ServerMessage::OnlineUsersRes(OnlineUsersResMes {
            users: vec![info(1), info(2), info(3)]
        })]
    );
}

#[test]
fn group_message_is_stamped_shared_and_not_echoed() {
    let mut t = h();
    let [a, b, c] = t.everyone_online([1, 2, 3]);
    t.send(a, &sms("hello all"));
    t.hub.seal_output();
    let qb = t.hub.get(b).unwrap().queued_parts();
    let qc = t.hub.get(c).unwrap().queued_parts();
    assert_eq!(qb.len(), 1);
    assert!(
        qb[0].same_bytes(&qc[0]),
        "encoded once, shared by every recipient"
    );
    let fb = t.recv_frames(b);
    assert!(t.recv(a).is_empty(), "never echoed to the sender");
    assert_eq!(fb.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&fb[0][4..]).unwrap();
    assert_eq!(body["type"], "SmsMes");
    assert_eq!(
        body["data"],
        format!(
            r#"{{"content":"hello all","userId":1,"userPwd":"","userName":"u1","userStatus":0,"sex":"","time":{}}}"#,
            t.now.unix_ms
        )
    );
}

/// What the reactor does when input comes during a round of writes: the recipients
/// not yet written get the new message in the same write as the one before it, and
/// those already written get it after them, not ahead of them.
#[test]
fn a_message_taken_in_during_a_round_joins_it_and_the_written_come_after_the_rest() {
    let mut t = h();
    let [a, b, c, d] = t.everyone_online([1, 2, 3, 4]);
    let now = t.now;
    // The reactor's side, by hand: input straight to the hub, writes in its order.
    t.hub.handle_input(a, &sms("first").encode(), now);
    let mut writes: Vec<(ConnRef, Vec<u8>, usize)> = Vec::new();
    let write = |t: &mut Harness, r: ConnRef, writes: &mut Vec<(ConnRef, Vec<u8>, usize)>| {
        let mut bytes = Vec::new();
        let mut calls = 0;
        t.hub.write(r, now, |iov| {
            calls += 1;
            for s in iov {
                bytes.extend_from_slice(s);
            }
            Ok(iov.iter().map(|s| s.len()).sum())
        });
        writes.push((r, bytes, calls));
    };
    let first = t.hub.poll_write().expect("a recipient to write");
    write(&mut t, first, &mut writes);
    // The second message comes while the round is under way.
    t.hub.handle_input(a, &sms("second").encode(), now);
    while let Some(r) = t.hub.poll_write() {
        write(&mut t, r, &mut writes);
    }
    let order: Vec<ConnRef> = writes.iter().map(|w| w.0).collect();
    let mut rest: Vec<ConnRef> = vec![b, c, d];
    rest.retain(|&r| r != first);
    assert_eq!(order.len(), 4, "{order:?}");
    assert_eq!(order[0], first);
    assert_eq!(
        {
            let mut middle = order[1..3].to_vec();
            middle.sort_by_key(|r| r.key);
            middle
        },
        rest,
        "the recipients still waiting are written before the one written already"
    );
    assert_eq!(
        order[3], first,
        "its second message comes after the others' writes"
    );
    let contents = |bytes: &[u8]| -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = bytes.to_vec();
        while let Ok(Some(n)) = crate::proto::check(&buf, usize::MAX >> 8) {
            let body: serde_json::Value = serde_json::from_slice(&buf[4..n]).unwrap();
            let data: serde_json::Value =
                serde_json::from_str(body["data"].as_str().unwrap()).unwrap();
            out.push(data["content"].as_str().unwrap().to_string());
            buf.drain(..n);
        }
        assert!(buf.is_empty());
        out
    };
    assert_eq!(contents(&writes[0].1), ["first"]);
    for w in &writes[1..3] {
        assert_eq!(contents(&w.1), ["first", "second"], "both in one write");
        assert_eq!(w.2, 1, "one call");
    }
    assert_eq!(contents(&writes[3].1), ["second"]);
    assert!(t.hub.poll_write().is_none());
    assert!(t.recv(a).is_empty(), "never echoed to the sender");
}

#[test]
fn anonymous_connections_may_only_log_in_register_and_ping() {
    let mut t = h();
    t.register(2);
    let c = t.connect();
    t.send(c, &ClientMessage::Ping);
    assert_eq!(t.recv(c), [ServerMessage::Pong]);
    for m in [
        sms("x"),
        private(2, "x"),
        ClientMessage::OnlineUsers,
        ClientMessage::Logout,
    ] {
        t.send(c, &m);
        assert_eq!(t.recv(c), [err(401, "log in first")]);
    }
    assert!(t.jobs.is_empty());
    assert!(!t.is_closed(c));
}

#[test]
fn private_messages_live_stored_and_unknown() {
    let mut t = h();
    for id in [1, 2, 3] {
        t.register(id);
    }
    let a = t.login(1);
    let b = t.login(2);
    t.recv(a);
    t.send(a, &private(2, "live"));
    // Answered once written to the recipient's socket, not before.
    assert_eq!(t.recv(a), []);
    assert_eq!(
        t.recv(b),
        [ServerMessage::Private(SmsPrivateMes {
            user_id: 1,
            user_name: "u1".into(),
            to_user_id: 2,
            content: "live".into(),
            time: t.now.unix_ms,
            offline: false,
            ..Default::default()
        })]
    );
    assert_eq!(t.recv(a), [ServerMessage::SmsRes(code_res(200, ""))]);
    // Offline recipient: 202 only once the store has it.
    t.send(a, &private(3, "stored"));
    assert!(t.recv(a).is_empty());
    t.run_jobs();
    assert_eq!(t.recv(a), [ServerMessage::SmsRes(code_res(202, ""))]);
    assert_eq!(t.store.offline_count(3), 1);
    t.send(a, &private(77, "nobody"));
    t.run_jobs();
    assert_eq!(
        t.recv(a),
        [ServerMessage::SmsRes(code_res(404, "no such user"))]
    );
    t.send(a, &private(0, "nobody"));
    assert_eq!(
        t.recv(a),
        [ServerMessage::SmsRes(code_res(404, "no such user"))]
    );
    t.store.set_failing(Some("down"));
    t.send(a, &private(3, "lost?"));
    t.run_jobs();
    assert_eq!(
        t.recv(a),
        [ServerMessage::SmsRes(code_res(503, "storage unavailable"))]
    );
}

#[test]
fn frames_after_a_store_job_wait_for_its_reply() {
    let mut t = h();
    t.register(1);
    t.register(3);
    let a = t.login(1);
    // A private message to an offline user, then a ping, in one read.
    let mut bytes = private(3, "first").encode();
    bytes.extend(ClientMessage::Ping.encode());
    t.send_bytes(a, &bytes);
    assert!(t.recv(a).is_empty(), "the ping waits behind the store job");
    t.run_jobs();
    assert_eq!(
        t.recv(a),
        [
            ServerMessage::SmsRes(code_res(202, "")),
            ServerMessage::Pong
        ]
    );
}

#[test]
fn offline_messages_arrive_at_login_oldest_first_once() {
    let mut t = h();
    t.register(1);
    t.register(2);
    let a = t.login(1);
    for i in 0..3 {
        t.send(a, &private(2, &format!("m{i}")));
        t.run_jobs();
        t.now.unix_ms += 10;
    }
    t.recv(a);
    let b = t.connect();
    t.send(b, &login_msg(2, "pw2"));
    t.run_jobs();
    let got = t.recv(b);
    assert!(matches!(&got[0], ServerMessage::LoginRes(r) if r.code == 200));
    let contents: Vec<(String, bool)> = got[1..]
        .iter()
        .map(|m| match m {
            ServerMessage::Private(p) => {
                assert_eq!(
                    (p.user_id, p.user_name.as_str(), p.to_user_id),
                    (1, "u1", 2)
                );
                (p.content.clone(), p.offline)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        contents,
        [
            ("m0".into(), true),
            ("m1".into(), true),
            ("m2".into(), true)
        ]
    );
    assert_eq!(t.store.offline_count(2), 3, "kept until written");
    t.run_jobs();
    assert_eq!(t.store.offline_count(2), 0, "removed once written");
    t.send(b, &ClientMessage::Logout);
    t.recv(b);
    let b2 = t.connect();
    t.send(b2, &login_msg(2, "pw2"));
    t.run_jobs();
    assert_eq!(t.recv(b2).len(), 1, "delivered once");
}

#[test]
fn offline_backlog_larger_than_the_queue_arrives_in_rounds() {
    let mut t = Harness::new(HubConfig {
        max_outbuf: 4096,
        offline_batch: 8,
        msg_rate: 0,
        ..crate::hub::testkit::test_config()
    });
    t.register(1);
    t.register(2);
    let a = t.login(1);
    let text = "x".repeat(300);
    for _ in 0..40 {
        t.send(a, &private(2, &text));
        t.run_jobs();
    }
    assert_eq!(t.store.offline_count(2), 40);
    let b = t.connect();
    t.send(b, &login_msg(2, "pw2"));
    let mut received = 0;
    for _ in 0..100 {
        t.run_jobs();
        let got = t.recv(b);
        assert!(t.hub.get(b).is_some(), "never dropped for its own backlog");
        received += got
            .iter()
            .filter(|m| matches!(m, ServerMessage::Private(p) if p.offline))
            .count();
        if t.jobs.is_empty() && received == 40 {
            break;
        }
    }
    assert_eq!(received, 40);
    assert_eq!(t.store.offline_count(2), 0);
}

#[test]
fn message_stored_while_recipient_logs_in_is_still_delivered() {
    let mut t = h();
    t.register(1);
    t.register(2);
    let a = t.login(1);
    t.send(a, &private(2, "racing"));
    // The recipient's login runs (and fetches nothing) before the store job commits.
    let b = t.connect();
    t.send(b, &login_msg(2, "pw2"));
    t.run_job(1);
    assert_eq!(t.recv(b).len(), 1);
    t.run_jobs();
    assert_eq!(
        t.recv(a),
        [notify(2, 0), ServerMessage::SmsRes(code_res(202, ""))]
    );
    t.run_jobs();
    let got = t.recv(b);
    assert!(
        matches!(&got[..], [ServerMessage::Private(p)] if p.content == "racing" && p.offline),
        "{got:?}"
    );
}

#[test]
fn logout_and_hangup_tell_the_others() {
    let mut t = h();
    let [a, b, c] = t.everyone_online([1, 2, 3]);
    t.send(b, &ClientMessage::Logout);
    assert_eq!(t.recv(a), [notify(2, 1)]);
    assert_eq!(t.recv(c), [notify(2, 1)]);
    t.recv(b);
    assert!(t.is_closed(b));
    t.hangup(c);
    assert_eq!(t.recv(a), [notify(3, 1)]);
    t.send(a, &ClientMessage::OnlineUsers);
    assert_eq!(
        t.recv(a),
        [ServerMessage::OnlineUsersRes(OnlineUsersResMes {
            users: vec![info(1)]
        })]
    );
}

#[test]
fn second_login_wins_without_flicker() {
    let mut t = h();
    t.register(1);
    t.register(2);
    let watcher = t.login(2);
    let old = t.login(1);
    t.recv(watcher);
    let new = t.connect();
    t.send(new, &login_msg(1, "pw1"));
    t.run_jobs();
    // Everyone online, in no particular order (the order of their logins here).
    let got = t.recv(new);
    assert!(
        matches!(&got[..], [ServerMessage::LoginRes(r)] if r.users_id == [2, 1]),
        "{got:?}"
    );
    assert_eq!(t.recv(old), [err(409, "logged in elsewhere")]);
    assert!(t.is_closed(old));
    assert!(t.recv(watcher).is_empty(), "no offline/online flicker");
    // The new session is the live one.
    t.send(watcher, &private(1, "to the new one"));
    assert!(matches!(&t.recv(new)[..], [ServerMessage::Private(_)]));
    t.send(new, &login_msg(1, "pw1"));
    assert_eq!(t.recv(new), [err(400, "already logged in")]);
}

#[test]
fn a_frame_split_at_every_byte_gives_the_same_replies() {
    let mut bytes = ClientMessage::Ping.encode();
    bytes.extend(sms("").encode());
    bytes.extend(ClientMessage::Ping.encode());
    for cut in 0..=bytes.len() {
        let mut t = h();
        let c = t.connect();
        t.send_bytes(c, &bytes[..cut]);
        t.send_bytes(c, &bytes[cut..]);
        assert_eq!(
            t.recv(c),
            [
                ServerMessage::Pong,
                err(401, "log in first"),
                ServerMessage::Pong
            ],
            "cut at {cut}"
        );
    }
}

#[test]
fn byte_by_byte_input_works() {
    let mut t = h();
    t.register(1);
    let c = t.connect();
    for b in login_msg(1, "pw1").encode() {
        t.send_bytes(c, &[b]);
    }
    t.run_jobs();
    assert!(matches!(&t.recv(c)[..], [ServerMessage::LoginRes(r)] if r.code == 200));
}

#[test]
fn bad_frames_get_400_and_the_stream_goes_on() {
    let mut t = h();
    let c = t.connect();
    let mut bytes = Vec::new();
    for body in [&b"not json"[..], b"{\"type\":\"Nope\",\"data\":\"{}\"}"] {
        bytes.extend((body.len() as u32).to_be_bytes());
        bytes.extend(body);
    }
    bytes.extend(ClientMessage::Ping.encode());
    t.send_bytes(c, &bytes);
    let got = t.recv(c);
    assert_eq!(got.len(), 3);
    assert!(
        matches!(&got[0], ServerMessage::Error(e) if e.code == 400 && e.error.starts_with("bad frame"))
    );
    assert_eq!(got[1], err(400, "unknown message type \"Nope\""));
    assert_eq!(got[2], ServerMessage::Pong);
    assert!(!t.is_closed(c));
}

#[test]
fn oversized_frames_are_refused_from_the_prefix() {
    let mut t = h();
    t.register(1);
    // Before login the limit is smaller.
    let c = t.connect();
    t.send_bytes(c, &(9000u32).to_be_bytes());
    assert_eq!(
        t.recv(c),
        [err(
            413,
            "frame of 9000 bytes is over the limit of 8192 bytes before login"
        )]
    );
    assert!(t.is_closed(c));
    let a = t.login(1);
    t.send_bytes(a, &(9000u32).to_be_bytes());
    assert!(
        t.recv(a).is_empty(),
        "9000 bytes is fine after login: waiting for the body"
    );
    let b = t.login(1);
    t.send_bytes(b, &u32::MAX.to_be_bytes());
    assert_eq!(
        t.recv(b),
        [err(
            413,
            "frame of 4294967295 bytes is over the limit of 65536 bytes"
        )]
    );
    assert!(t.is_closed(b));
}

#[test]
fn a_reader_that_stalls_is_dropped_and_nobody_else_waits() {
    let mut t = Harness::new(HubConfig {
        max_outbuf: 2000,
        msg_rate: 0,
        ..crate::hub::testkit::test_config()
    });
    let [sender, reader, staller] = t.everyone_online([1, 2, 3]);
    let mut delivered = 0;
    for i in 0..50 {
        t.send(sender, &sms(&format!("message {i:03} {}", "x".repeat(50))));
        delivered += t
            .recv(reader)
            .iter()
            .filter(|m| matches!(m, ServerMessage::Sms(_)))
            .count();
    }
    assert_eq!(delivered, 50, "the reading client got everything");
    assert!(t.is_closed(staller));
    assert_eq!(t.hub.stats.slow_consumers_dropped, 1);
    assert!(t.recv(sender).contains(&notify(3, 1)));
}

#[test]
fn silent_connections_are_closed_at_the_login_timeout() {
    let mut t = h();
    t.register(1);
    let idle = t.connect();
    let online = t.login(1);
    t.advance(29_000);
    assert_eq!(t.recv(idle), []);
    assert!(!t.is_closed(idle));
    t.advance(1_000);
    assert_eq!(t.recv(idle), [err(401, "no login within 30 s")]);
    assert!(t.is_closed(idle));
    assert!(!t.is_closed(online));
}

#[test]
fn a_full_hashing_queue_refuses_instead_of_queueing() {
    let mut t = Harness::new(HubConfig {
        max_hash_jobs: 1,
        ..crate::hub::testkit::test_config()
    });
    let a = t.connect();
    let b = t.connect();
    t.send(a, &reg_msg(1, "p", "n"));
    t.send(b, &reg_msg(2, "p", "n"));
    assert_eq!(
        t.recv(b),
        [ServerMessage::RegisterRes(busy_res(
            505,
            "server busy, try again in 1 s",
            1
        ))]
    );
    t.run_jobs();
    assert_eq!(t.recv(a), [ServerMessage::RegisterRes(code_res(200, ""))]);
}

/// Logins waiting for their hashes and store jobs have a bound each: a storm of
/// logins leaves room for private messages, and a full store queue does not stop
/// logins.
#[test]
fn logins_waiting_for_hashes_leave_room_for_store_jobs_and_the_reverse() {
    let mut t = Harness::new(HubConfig {
        max_jobs: 1,
        max_hash_jobs: 3,
        ..crate::hub::testkit::test_config()
    });
    for id in 1..=6 {
        t.register(id);
    }
    let a = t.login(1);
    t.recv(a);
    // Three logins wait for their hashes (not run yet): the hashing queue is full.
    let waiting: Vec<ConnRef> = (2..=4)
        .map(|id| {
            let c = t.connect();
            t.send(c, &login_msg(id, &format!("pw{id}")));
            c
        })
        .collect();
    assert_eq!(t.jobs.len(), 3);
    // A private message to an offline user is a store job: it still gets in.
    t.send(a, &private(6, "stored"));
    assert_eq!(t.jobs.len(), 4);
    // The store queue is full now (1); a login is refused by the hashing queue only.
    let late = t.connect();
    t.send(late, &login_msg(5, "pw5"));
    assert_eq!(login_code(&t.recv(late)).0, 505);
    t.run_jobs();
    assert_eq!(
        t.recv(a).last(),
        Some(&ServerMessage::SmsRes(code_res(202, "")))
    );
    for c in waiting {
        assert_eq!(login_code(&t.recv(c)).0, 200);
    }
    // With the store queue full again, a login is still admitted.
    t.send(a, &private(6, "again"));
    assert_eq!(t.jobs.len(), 1);
    t.send(late, &login_msg(5, "pw5"));
    assert_eq!(t.jobs.len(), 2, "admitted beside a full store queue");
    t.run_jobs();
    assert_eq!(login_code(&t.recv(late)).0, 200);
}

/// Users 1 to `n` (registered) log in, each on a new connection, in order.
fn log_in_each(t: &mut Harness, n: i64) -> Vec<ConnRef> {
    let conns: Vec<_> = (1..=n).map(|_| t.connect()).collect();
    for (id, &c) in (1..).zip(&conns) {
        t.send(c, &login_msg(id, &format!("pw{id}")));
    }
    conns
}

/// User 1 logs in on `a`, nothing completes for `stall_ms`, then user 2 tries on `b`.
fn login_after_a_stall(t: &mut Harness, stall_ms: u64) -> (ConnRef, ConnRef) {
    t.register(1);
    t.register(2);
    let a = t.connect();
    t.send(a, &login_msg(1, "pw1"));
    t.advance(stall_ms);
    let b = t.connect();
    t.send(b, &login_msg(2, "pw2"));
    (a, b)
}

fn login_code(got: &[ServerMessage]) -> (u16, String) {
    match got.first() {
        Some(ServerMessage::LoginRes(r)) => (r.code, r.error.clone()),
        other => panic!("expected LoginResMes, got {other:?}"),
    }
}

/// One hashing thread, 100 ms of wait allowed, users 1 to 5 registered with hashes
/// that took 30 ms each.
fn one_thread_30_ms_hashes() -> Harness {
    let mut t = Harness::new(HubConfig {
        hash_workers: 1,
        job_timeout_ms: 100,
        ..crate::hub::testkit::test_config()
    });
    t.hash_cost_ms = 30;
    for id in 1..=5 {
        t.register(id);
    }
    t
}

#[test]
fn logins_that_would_wait_too_long_are_refused_at_once_with_the_wait() {
    let mut t = one_thread_30_ms_hashes();
    // Registering measured a hash at 30 ms. With one thread, the k-th waiting login
    // is estimated at 30 * k ms: four fit in 100 ms, the fifth does not.
    let conns = log_in_each(&mut t, 5);
    assert_eq!(t.jobs.len(), 4);
    assert_eq!(
        login_code(&t.recv(conns[4])),
        (505, "server busy, try again in 1 s".to_string())
    );
    t.run_jobs();
    for &c in &conns[..4] {
        assert_eq!(login_code(&t.recv(c)).0, 200);
    }
    // The queue is empty again: the refused client's retry gets in.
    t.send(conns[4], &login_msg(5, "pw5"));
    t.run_jobs();
    assert_eq!(login_code(&t.recv(conns[4])).0, 200);
}

#[test]
fn logins_for_unknown_users_do_not_lower_the_measured_hash_cost() {
    let mut t = one_thread_30_ms_hashes();
    // Twenty logins for users that do not exist: answered without a hash.
    for _ in 0..20 {
        let guesser = t.connect();
        t.send(guesser, &login_msg(999, "x"));
        t.run_jobs();
        assert_eq!(login_code(&t.recv(guesser)).0, code::NO_SUCH_USER);
    }
    // The estimate is still 30 ms a hash: four fit in 100 ms, the fifth does not.
    let conns = log_in_each(&mut t, 5);
    assert_eq!(t.jobs.len(), 4);
    assert_eq!(login_code(&t.recv(conns[4])).0, 505);
}

#[test]
fn the_wait_estimate_follows_how_fast_hashes_really_complete() {
    let mut t = Harness::new(HubConfig {
        hash_workers: 2,
        job_timeout_ms: 2_000,
        ..crate::hub::testkit::test_config()
    });
    t.hash_cost_ms = 10;
    for id in 1..=11 {
        t.register(id);
    }
    let conns: Vec<_> = (1..=10).map(|_| t.connect()).collect();
    for (i, &c) in conns.iter().enumerate() {
        t.send(c, &login_msg(i as i64 + 1, &format!("pw{}", i + 1)));
    }
    // Each hash costs its thread 10 ms, but they complete 500 ms apart (the threads
    // get little CPU): after a few, the estimate is 500 ms per hash ahead.
    assert_eq!(t.jobs.len(), 10);
    for _ in 0..4 {
        t.advance(500);
        t.run_job(0);
    }
    let late = t.connect();
    t.send(late, &login_msg(11, "pw11"));
    // Six ahead at 500 ms each: 3 s, over the 2 s allowed.
    assert_eq!(
        login_code(&t.recv(late)),
        (505, "server busy, try again in 3 s".to_string())
    );
    assert_eq!(t.jobs.len(), 6);
}

#[test]
fn a_login_that_timed_out_in_the_queue_is_told_to_come_back() {
    let mut t = h();
    t.register(1);
    let a = t.connect();
    t.send(a, &login_msg(1, "pw1"));
    let job = t.jobs.pop_front().unwrap();
    // Every hashing thread busy: answered at the job timeout (30 s) and the time of
    // one hash (10 ms, as registering measured), from the timer.
    t.advance(30_009);
    assert_eq!(t.recv(a), []);
    t.advance(1);
    assert_eq!(
        login_code(&t.recv(a)),
        (505, "server busy, try again in 31 s".to_string())
    );
    // The worker's refusal comes later and is dropped.
    t.advance(1_000);
    t.feed(JobResult {
        conn: job.conn,
        outcome: job.kind.fail(StoreError::timed_out()),
        took: None,
    });
    assert_eq!(t.recv(a), []);
    // Not a failed login: the connection stays and may try again.
    assert!(!t.is_closed(a));
    t.send(a, &login_msg(1, "pw1"));
    t.run_jobs();
    assert_eq!(login_code(&t.recv(a)).0, 200);
}

#[test]
fn a_stalled_hashing_thread_turns_new_logins_away() {
    let mut t = Harness::new(HubConfig {
        job_timeout_ms: 5_000,
        ..crate::hub::testkit::test_config()
    });
    // The hashing threads get no CPU (the loop's core is saturated): nothing completes.
    let (a, b) = login_after_a_stall(&mut t, 6_000);
    // a was told at 5 s (and a hash), when it had waited as long as allowed.
    assert_eq!(
        login_code(&t.recv(a)),
        (505, "server busy, try again in 6 s".to_string())
    );
    assert_eq!(
        login_code(&t.recv(b)),
        (505, "server busy, try again in 6 s".to_string())
    );
    let c = t.connect();
    t.send(c, &reg_msg(3, "p", "n"));
    assert_eq!(
        t.recv(c),
        [ServerMessage::RegisterRes(busy_res(
            505,
            "server busy, try again in 6 s",
            6
        ))]
    );
    // Once it completes (its result is dropped), logins are taken again.
    t.run_jobs();
    assert_eq!(t.recv(a), []);
    t.send(b, &login_msg(2, "pw2"));
    t.send(a, &login_msg(1, "pw1"));
    assert_eq!(t.jobs.len(), 2);
    t.run_jobs();
    assert_eq!(login_code(&t.recv(a)).0, 200);
    assert_eq!(login_code(&t.recv(b)).0, 200);
}

#[test]
fn a_login_waiting_past_the_job_timeout_is_answered_busy_at_the_deadline() {
    let mut t = Harness::new(HubConfig {
        hash_workers: 2,
        job_timeout_ms: 5_000,
        ..crate::hub::testkit::test_config()
    });
    for id in 1..=3 {
        t.register(id);
    }
    // Two logins hold both hashing threads (a stored hash that never finishes); a
    // third queues behind them at 1 s.
    let (a, b, c) = (t.connect(), t.connect(), t.connect());
    t.send(a, &login_msg(1, "x"));
    t.send(b, &login_msg(2, "x"));
    t.advance(1_000);
    t.send(c, &login_msg(3, "pw3"));
    assert_eq!(t.jobs.len(), 3);
    // Nothing before the deadline (5 s, and 10 ms for a hash a worker may have just
    // taken up); then a and b are told to come back, c a second later.
    t.advance(4_009);
    assert_eq!((t.recv(a), t.recv(b), t.recv(c)), (vec![], vec![], vec![]));
    t.advance(1);
    for x in [a, b] {
        match &t.recv(x)[..] {
            [ServerMessage::LoginRes(r)] => {
                assert_eq!((r.code, r.retry_after), (505, Some(6)), "{r:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(t.recv(c), []);
    t.advance(999);
    assert_eq!(t.recv(c), []);
    t.advance(1);
    assert_eq!(login_code(&t.recv(c)).0, 505);
    // Nobody is logging in any longer, and nobody is closed for it.
    assert!(![a, b, c].iter().any(|&x| t.is_closed(x)));
    // While a's job is still out, a's retry is refused at once (its result would
    // be taken for the new one's).
    t.send(a, &login_msg(1, "pw1"));
    assert_eq!(login_code(&t.recv(a)).0, 505);
    assert_eq!(t.jobs.len(), 3);
    // The late results are dropped: c's would have logged it in.
    t.run_jobs();
    assert_eq!((t.recv(a), t.recv(b), t.recv(c)), (vec![], vec![], vec![]));
    assert_eq!(t.hub.online_count(), 0);
    // Then c's retry goes through as usual.
    t.send(c, &login_msg(3, "pw3"));
    t.run_jobs();
    assert_eq!(login_code(&t.recv(c)).0, 200);
    assert_eq!(t.hub.online_count(), 1);
}

#[test]
fn a_login_refused_for_its_stored_hash_is_a_wrong_password_to_the_client() {
    let mut t = h();
    t.register(1);
    let a = t.connect();
    t.send(a, &login_msg(1, "pw1"));
    let job = t.jobs.pop_front().unwrap();
    t.feed(JobResult {
        conn: job.conn,
        outcome: Outcome::Login(Err(LoginError::CostlyHash)),
        took: Some(std::time::Duration::ZERO),
    });
    assert_eq!(login_code(&t.recv(a)), (403, "wrong password".to_string()));
    assert!(!t.is_closed(a));
}

#[test]
fn a_login_result_for_a_closing_connection_counts_its_login_once() {
    let mut t = h();
    t.register(1);
    // Two logins of the same user in flight; a's socket takes nothing, so when the
    // server stops, a stays closing with its pong unwritten when its result comes.
    let (a, b) = (t.connect(), t.connect());
    t.stall(a, true);
    let mut bytes = ClientMessage::Ping.encode();
    bytes.extend(login_msg(1, "pw1").encode());
    t.send_bytes(a, &bytes);
    t.send(b, &login_msg(1, "pw1"));
    let first = t.jobs.pop_front().unwrap();
    assert_eq!(first.conn, Some(a));
    t.hub.handle_shutdown(t.now);
    // (the invariants, checked after every step, hold the count of logins in
    // flight to the connections waiting for one)
    t.feed(JobResult {
        conn: first.conn,
        outcome: Outcome::Login(Err(LoginError::WrongPassword)),
        took: Some(std::time::Duration::from_millis(10)),
    });
    assert!(!t.is_closed(a));
    t.advance(5_000);
    assert!(t.is_closed(a));
    t.run_jobs();
}

#[test]
fn a_client_told_to_wait_is_not_closed_for_waiting() {
    let mut t = h();
    // Hashing has stalled for 40 s when b arrives: b is told to come back in 40 s,
    // longer than the 30 s login timeout.
    let (_, b) = login_after_a_stall(&mut t, 40_000);
    assert_eq!(
        login_code(&t.recv(b)),
        (505, "server busy, try again in 40 s".to_string())
    );
    // The login timeout counts from when b was told to come back.
    t.advance(69_000);
    assert_eq!(t.recv(b), []);
    assert!(!t.is_closed(b));
    t.advance(1_000);
    assert_eq!(t.recv(b), [err(401, "no login within 30 s")]);
    assert!(t.is_closed(b));
}

#[test]
fn results_for_a_gone_connection_never_reach_its_successor() {
    let mut t = h();
    t.register(1);
    let c = t.connect();
    t.send(c, &login_msg(1, "pw1"));
    let job = t.jobs.pop_front().unwrap();
    t.hangup(c);
    // The slot is reused by a new connection with a new generation.
    let d = t.connect();
    assert_eq!(d.key, c.key);
    assert_ne!(d.generation, c.generation);
    t.feed(JobResult {
        conn: job.conn,
        outcome: Outcome::Login(Err(LoginError::WrongPassword)),
        took: Some(std::time::Duration::from_millis(10)),
    });
    assert!(t.recv(d).is_empty());
    assert_eq!(t.hub.online_count(), 0);
}

#[test]
fn sender_identity_comes_from_the_session() {
    let mut t = h();
    t.register(1);
    t.register(2);
    let a = t.login(1);
    let b = t.login(2);
    t.recv(a);
    t.send(b, &sms("who am i"));
    match &t.recv(a)[..] {
        [ServerMessage::Sms(m)] => {
            assert_eq!(
                (m.user_id, m.user_name.as_str(), m.user_pwd.as_str()),
                (2, "u2", "")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn shutdown_closes_everyone_without_offline_storms() {
    let mut t = h();
    let conns = t.everyone_online([1, 2, 3]);
    t.hub.handle_shutdown(t.now);
    for c in &conns {
        assert!(t.recv(*c).is_empty());
    }
    t.advance(0);
    assert_eq!(t.hub.conn_count(), 0);
}

fn sms_contents(msgs: Vec<ServerMessage>) -> Vec<String> {
    msgs.into_iter()
        .map(|m| match m {
            ServerMessage::Sms(s) => s.content,
            other => panic!("{other:?}"),
        })
        .collect()
}

/// 40 lines pasted at once by a seed-style client, at the default message rate: the
/// rate slows them down, and every one of them arrives, in order.
#[test]
fn a_burst_over_the_message_rate_is_slowed_and_every_message_arrives_in_order() {
    let mut t = h();
    assert_eq!(t.hub.config().msg_rate, 20, "the default rate");
    t.register(1);
    t.register(2);
    let a = t.login(1);
    let b = t.login(2);
    t.recv(a);
    let mut bytes = Vec::new();
    for i in 0..40 {
        bytes.extend_from_slice(&sms(&format!("m{i}")).encode());
    }
    // A logout right behind them: it waits its turn too, and nothing is lost to it.
    bytes.extend_from_slice(&ClientMessage::Logout.encode());
    t.send_bytes(a, &bytes);
    let mut got = sms_contents(t.recv(b));
    // The login took one token of the burst of 20.
    assert_eq!(
        got.len(),
        19,
        "the burst goes at once, the rest waits: {got:?}"
    );
    t.advance(500);
    let half = sms_contents(t.recv(b));
    assert!(
        (9..=11).contains(&half.len()),
        "then 20 per second: {half:?}"
    );
    got.extend(half);
    assert!(!t.is_closed(a));
    t.advance(1_000);
    let rest = t.recv(b);
    assert_eq!(
        rest.last(),
        Some(&notify(1, 1)),
        "then the logout: {rest:?}"
    );
    got.extend(sms_contents(rest[..rest.len() - 1].to_vec()));
    let sent: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    assert_eq!(got, sent);
    assert_eq!(t.recv(a), [], "nothing refused");
    assert!(t.is_closed(a));
    assert_eq!(t.hub.summary().frames_refused, 0);
}

/// A client that keeps sending faster than its rate is slowed for as long as the
/// flood limit, then told and closed; what it sent until then arrived, in order.
#[test]
fn a_connection_that_keeps_flooding_past_the_limit_is_told_and_closed() {
    let mut t = h();
    t.register(1);
    t.register(2);
    let a = t.login(1);
    let b = t.login(2);
    t.recv(a);
    t.keep_reading(a);
    t.keep_reading(b);
    // 40 per second for 15 s, at a rate of 20: after the burst, its frames wait
    // without a break.
    for i in 0..600u64 {
        t.send_later(a, &sms(&format!("m{i}")), Duration::from_millis(25 * i));
    }
    t.advance(10_000);
    assert!(!t.is_closed(a), "slowed, not closed, within the limit");
    assert_eq!(t.recv(a), [], "nothing refused");
    t.advance(5_000);
    assert!(t.is_closed(a));
    let told = t.recv(a);
    assert_eq!(
        told,
        [err(
            429,
            "too many messages: more than 20 per second for 10 s; closing the connection"
        )]
    );
    let got = sms_contents(
        t.recv(b)
            .into_iter()
            .filter(|m| *m != notify(1, 1))
            .collect(),
    );
    let n = got.len();
    // The burst (19 left after the login) and 20 a second for the limit's 10 s, from
    // when the burst ran out.
    assert!((200..=245).contains(&n), "{n}");
    let sent: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    assert_eq!(got, sent, "in order, none skipped");
}

#[test]
fn password_guessing_is_limited_per_address() {
    let mut t = Harness::new(HubConfig {
        login_rate: 3,
        ..crate::hub::testkit::test_config()
    });
    let attacker: std::net::SocketAddr = "10.1.1.1:5000".parse().unwrap();
    let mut refused = 0;
    for _ in 0..5 {
        // A fresh connection each time, so the per-connection limit never applies.
        let c = t.connect_from(attacker);
        t.send(c, &login_msg(1, "guess"));
        t.run_jobs();
        for m in t.recv(c) {
            if m == ServerMessage::Error(busy_res(
                429,
                "too many login attempts from your address; try again later",
                20,
            )) {
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 2);
    // Another address is not affected, and the limit refills over time.
    let other = t.connect_from("10.1.1.2:5000".parse().unwrap());
    t.send(other, &login_msg(1, "guess"));
    assert_eq!(t.jobs.len(), 1);
    t.run_jobs();
    t.advance(20_000);
    let c = t.connect_from(attacker);
    t.send(c, &login_msg(1, "guess"));
    assert_eq!(t.jobs.len(), 1, "one attempt per 20 s at 3 per minute");
}

/// A class behind one address: logins that succeed are not counted against the
/// address, however many; failed ones are.
#[test]
fn logins_that_succeed_do_not_count_against_the_address() {
    let mut t = Harness::new(HubConfig {
        login_rate: 3,
        ..crate::hub::testkit::test_config()
    });
    let class = |port| std::net::SocketAddr::from(([10, 2, 2, 2], port));
    for id in 1..=20 {
        t.register(id);
        let c = t.connect_from(class(id as u16));
        t.send(c, &login_msg(id, &format!("pw{id}")));
        t.run_jobs();
        let res = t.recv(c);
        assert!(
            matches!(&res[0], ServerMessage::LoginRes(r) if r.code == 200),
            "login {id}: {res:?}"
        );
    }
    // Three wrong passwords spend the address's failures; the next login waits.
    let c = t.connect_from(class(100));
    for _ in 0..3 {
        t.send(c, &login_msg(1, "typo"));
        t.run_jobs();
    }
    t.send(c, &login_msg(1, "pw1"));
    assert!(t.jobs.is_empty(), "refused before hashing");
    assert_eq!(t.hub.summary().login_rate_refused, 1);
}

#[test]
fn registrations_are_limited_per_address() {
    let mut t = Harness::new(HubConfig {
        register_rate: 2,
        ..crate::hub::testkit::test_config()
    });
    let c = t.connect_from("10.3.3.3:1".parse().unwrap());
    for id in 1..=3 {
        t.send(c, &reg_msg(id, "password", &format!("u{id}")));
        t.run_jobs();
    }
    let res = t.recv(c);
    assert_eq!(
        res.last(),
        Some(&ServerMessage::Error(busy_res(
            429,
            "too many registrations from your address; try again later",
            30
        ))),
        "{res:?}"
    );
    let ok = res
        .iter()
        .filter(|m| matches!(m, ServerMessage::RegisterRes(r) if r.code == 200))
        .count();
    assert_eq!(ok, 2, "{res:?}");
}

#[test]
fn a_crowd_leaving_at_once_is_not_sent_its_own_departures() {
    let mut t = h();
    let conns = t.everyone_online([1, 2, 3, 4]);
    let queued_before = t.hub.stats.deliveries;
    t.hangup_all(&conns[1..]);
    assert_eq!(t.recv(conns[0]), [notify(2, 1), notify(3, 1), notify(4, 1)]);
    assert_eq!(
        t.hub.stats.deliveries - queued_before,
        3,
        "nothing was queued for the ones leaving"
    );
}

#[test]
fn leaving_and_coming_back_in_one_turn_reads_in_order() {
    let mut t = h();
    t.register(1);
    t.register(2);
    let watcher = t.login(1);
    let a = t.login(2);
    t.recv(watcher);
    let b = t.connect();
    t.send(b, &login_msg(2, "pw2"));
    // The old connection drops, then the new login completes, before the turn ends.
    t.hub.handle_hangup(a, "gone", t.now);
    t.run_jobs();
    assert_eq!(t.recv(watcher), [notify(2, 1), notify(2, 0)]);
}

#[test]
fn a_failed_acknowledgement_never_loops_fetching_the_same_messages() {
    // Found by the hub fuzz target: an offline batch is delivered, its removal fails
    // (storage blip), and the next fetch returns only messages this session has seen.
    let mut t = Harness::new(HubConfig {
        offline_batch: 2,
        msg_rate: 0,
        ..crate::hub::testkit::test_config()
    });
    t.register(1);
    t.register(2);
    let a = t.login(1);
    for i in 0..5 {
        t.send(a, &private(2, &format!("m{i}")));
        t.run_jobs();
    }
    let b = t.connect();
    t.send(b, &login_msg(2, "pw2"));
    // The login (with the first batch) succeeds; then storage fails for the removal.
    t.run_job(0);
    t.store.set_failing(Some("blip"));
    t.run_jobs();
    t.store.set_failing(None);
    let mut seen = Vec::new();
    let mut steps = 0;
    loop {
        for m in t.recv(b) {
            if let ServerMessage::Private(p) = m {
                seen.push(p.content);
            }
        }
        if t.jobs.is_empty() {
            break;
        }
        t.run_job(0);
        steps += 1;
        assert!(steps < 50, "fetching in circles: {:?}", t.jobs);
    }
    // What was delivered was delivered once; what remains waits for the next login.
    let mut dedup = seen.clone();
    dedup.dedup();
    assert_eq!(seen, dedup);
    assert!(seen.starts_with(&["m0".to_string(), "m1".to_string()]));
    t.send(b, &ClientMessage::Logout);
    t.recv(b);
    let b2 = t.connect();
    t.send(b2, &login_msg(2, "pw2"));
    let mut all = seen;
    for _ in 0..50 {
        if t.jobs.is_empty() {
            break;
        }
        t.run_job(0);
        for m in t.recv(b2) {
            if let ServerMessage::Private(p) = m
                && !all.contains(&p.content)
            {
                all.push(p.content);
            }
        }
    }
    assert_eq!(all, ["m0", "m1", "m2", "m3", "m4"]);
}

/// Stores `n` private messages from 1 to 2 (both registered, 2 offline).
fn stored_for_2(t: &mut Harness, n: usize) -> ConnRef {
    t.register(1);
    t.register(2);
    let a = t.login(1);
    for i in 0..n {
        t.send(a, &private(2, &format!("m{i}")));
        t.run_jobs();
    }
    t.recv(a);
    a
}

fn offline_contents(got: &[ServerMessage]) -> Vec<String> {
    got.iter()
        .filter_map(|m| match m {
            ServerMessage::Private(p) if p.offline => Some(p.content.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_next_offline_batch_is_asked_for_as_soon_as_the_last_is_written() {
    let mut t = Harness::new(HubConfig {
        offline_batch: 2,
        msg_rate: 0,
        ..crate::hub::testkit::test_config()
    });
    stored_for_2(&mut t, 5);
    let b = t.connect();
    t.send(b, &login_msg(2, "pw2"));
    t.run_jobs();
    assert_eq!(offline_contents(&t.recv(b)), ["m0", "m1"]);
    // Writing the batch queued its removal: the hub wants the loop now, and the job
    // is there to be taken (not at some later tick).
    assert_eq!(t.jobs.len(), 1, "the removal, queued by the write itself");
    t.run_jobs();
    assert_eq!(offline_contents(&t.recv(b)), ["m2", "m3"]);
    t.run_jobs();
    assert_eq!(offline_contents(&t.recv(b)), ["m4"]);
    t.run_jobs();
    assert_eq!(t.store.offline_count(2), 0);
    assert!(t.jobs.is_empty());
}

#[test]
fn offline_messages_stay_stored_until_written_and_come_again_after_a_drop() {
    let mut t = h();
    stored_for_2(&mut t, 3);
    let b = t.connect();
    t.stall(b, true);
    t.send(b, &login_msg(2, "pw2"));
    t.run_jobs();
    // Queued, but the socket took nothing: nothing may leave the store.
    assert!(t.recv(b).is_empty());
    assert!(t.jobs.is_empty());
    t.hangup(b);
    t.run_jobs();
    assert_eq!(t.store.offline_count(2), 3, "never written: still stored");
    let b2 = t.connect();
    t.send(b2, &login_msg(2, "pw2"));
    t.run_jobs();
    assert_eq!(offline_contents(&t.recv(b2)), ["m0", "m1", "m2"]);
    t.run_jobs();
    assert_eq!(t.store.offline_count(2), 0);
}

/// Logs `id` in as a client that acknowledges its offline messages itself.
fn login_acking(t: &mut Harness, id: i64) -> ConnRef {
    let c = t.connect();
    t.send(
        c,
        &ClientMessage::Login(crate::proto::LoginMes {
            user_id: id,
            user_pwd: format!("pw{id}"),
            ack_offline: true,
            ..Default::default()
        }),
    );
    t.run_jobs();
    c
}

#[test]
fn a_client_that_acknowledges_keeps_its_messages_stored_until_it_does() {
    let mut t = h();
    stored_for_2(&mut t, 2);
    let b = login_acking(&mut t, 2);
    let got = t.recv(b);
    let ids: Vec<u64> = got
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Private(p) => p.offline_id,
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2);
    t.run_jobs();
    assert_eq!(t.store.offline_count(2), 2, "written is not enough");
    let ack = |upto| ClientMessage::OfflineAck(crate::proto::OfflineAckMes { upto });
    t.send(b, &ack(ids[0]));
    t.run_jobs();
    assert_eq!(
        t.store.offline_count(2),
        2,
        "the batch goes once acknowledged whole"
    );
    t.send(b, &ack(ids[1]));
    t.run_jobs();
    assert_eq!(t.store.offline_count(2), 0);
}

#[test]
fn a_partly_acknowledged_batch_loses_only_what_was_acknowledged_when_the_client_leaves() {
    let mut t = h();
    stored_for_2(&mut t, 2);
    let b = login_acking(&mut t, 2);
    let first = match &t.recv(b)[1] {
        ServerMessage::Private(p) => p.offline_id.unwrap(),
        other => panic!("{other:?}"),
    };
    t.send(
        b,
        &ClientMessage::OfflineAck(crate::proto::OfflineAckMes { upto: first }),
    );
    t.hangup(b);
    t.run_jobs();
    assert_eq!(t.store.offline_count(2), 1);
}

/// A message stored while the recipient's login is in flight (its fetch ran before
/// the message was committed) arrives in that session.
#[test]
fn a_message_stored_during_the_recipients_login_arrives_in_that_session() {
    let mut t = h();
    let a = stored_for_2(&mut t, 0);
    let b = t.connect();
    t.send(b, &login_msg(2, "pw2"));
    // The login runs first (finds nothing stored), but its result is not back yet.
    let login = t.jobs.pop_front().unwrap();
    let outcome = execute(&mut t.store.clone(), &t.hasher, login.kind);
    t.send(a, &private(2, "racing"));
    t.run_jobs();
    assert_eq!(t.recv(a), [ServerMessage::SmsRes(code_res(202, ""))]);
    t.feed(JobResult {
        conn: login.conn,
        outcome,
        took: Some(std::time::Duration::from_millis(10)),
    });
    t.run_jobs();
    assert_eq!(offline_contents(&t.recv(b)), ["racing"]);
}

#[test]
fn one_address_cannot_take_every_connection() {
    let mut t = Harness::new(HubConfig {
        max_conns_per_addr: 3,
        ..crate::hub::testkit::test_config()
    });
    let attacker = |port| std::net::SocketAddr::from(([10, 0, 0, 1], port));
    let held: Vec<ConnRef> = (0..3).map(|p| t.connect_from(attacker(p))).collect();
    let refused = t.try_connect_from(attacker(9)).unwrap_err();
    let ServerMessage::Error(e) = ServerMessage::parse(&refused[4..]).unwrap() else {
        panic!("not an error frame");
    };
    assert_eq!(e.code, 503);
    assert!(e.error.contains("too many connections from your address"));
    // Another address gets in; an IPv6 /64 counts as one address.
    t.connect_from(std::net::SocketAddr::from(([10, 0, 0, 2], 1)));
    let v6 = |last: u16| {
        std::net::SocketAddr::from((
            std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last),
            1,
        ))
    };
    for i in 0..3 {
        t.connect_from(v6(i));
    }
    assert!(t.try_connect_from(v6(77)).is_err());
    // A slot freed is a slot to take again.
    t.hangup(held[0]);
    t.connect_from(attacker(10));
    assert_eq!(t.hub.summary().conns_refused_per_addr, 2);
}

#[test]
fn one_address_holds_at_most_a_quarter_of_the_connections() {
    let cfg = |max_conns| HubConfig {
        max_conns,
        ..crate::hub::testkit::test_config()
    };
    assert_eq!(cfg(0).conns_per_addr(), 256, "the default");
    assert_eq!(cfg(10_000).conns_per_addr(), 256);
    assert_eq!(cfg(1_000).conns_per_addr(), 250, "a quarter");
    assert_eq!(cfg(100).conns_per_addr(), 64, "never fewer than 64");
    let mut t = Harness::new(cfg(400));
    let class = |port| std::net::SocketAddr::from(([10, 0, 0, 1], port));
    for p in 0..100 {
        t.connect_from(class(p));
    }
    assert!(t.try_connect_from(class(999)).is_err());
    t.connect_from(std::net::SocketAddr::from(([10, 0, 0, 2], 1)));
}

#[test]
fn the_login_reply_never_makes_logging_in_impossible() {
    // 40 users online with long names: the login reply is larger than the whole
    // output limit, and still arrives.
    let mut t = Harness::new(HubConfig {
        max_outbuf: 1024,
        login_rate: 0,
        register_rate: 0,
        ..crate::hub::testkit::test_config()
    });
    let mut conns: Vec<ConnRef> = Vec::new();
    for id in 1..=40 {
        t.register(id);
        conns.push(t.login(id));
        for c in &conns {
            t.recv(*c);
        }
    }
    let late = t.connect();
    t.register(41);
    t.send(late, &login_msg(41, "pw41"));
    t.run_jobs();
    let got = t.recv(late);
    assert!(
        matches!(&got[0], ServerMessage::LoginRes(r) if r.code == 200 && r.users_id.len() == 41),
        "{got:?}"
    );
    t.send(late, &ClientMessage::OnlineUsers);
    assert!(matches!(&t.recv(late)[0], ServerMessage::OnlineUsersRes(r) if r.users.len() == 41));
    // But a client that does not read its answers is still a slow consumer.
    t.stall(late, true);
    t.send(late, &ClientMessage::OnlineUsers);
    t.send(late, &ClientMessage::OnlineUsers);
    assert!(t.is_closed(late));
}

#[test]
fn refusals_before_login_are_counted_for_a_summary_not_logged_one_by_one() {
    let mut t = h();
    let c = t.connect();
    for _ in 0..4 {
        t.send(c, &ClientMessage::OnlineUsers);
    }
    assert_eq!(t.hub.summary().frames_refused, 4);
    // Logged within a second, with its count; the next ones wait for the interval.
    t.advance(1_000);
    assert_eq!(t.hub.summary().frames_refused, 0);
    t.send(c, &ClientMessage::OnlineUsers);
    t.advance(1_000);
    assert_eq!(t.hub.summary().frames_refused, 1);
    t.advance(9_000);
    assert_eq!(t.hub.summary().frames_refused, 0);
}

#[test]
fn the_hub_says_when_it_next_needs_the_loop() {
    let mut t = h();
    let c = t.connect();
    t.recv(c);
    // Nothing queued: the next deadline is housekeeping or the login timeout.
    let at = t.hub.poll_timeout(t.now).unwrap();
    assert!(at > t.now.mono_ms);
    assert!(at <= t.now.mono_ms + 30_000);
    t.advance(30_000);
    assert_eq!(t.recv(c), [err(401, "no login within 30 s")]);
    assert!(t.is_closed(c));
    // Nothing left at all: no deadline once the summary has gone out.
    t.advance(10_000);
    t.advance(10_000);
    assert_eq!(t.hub.poll_timeout(t.now), None);
}

/// Logs `id` in, declaring `max_frame` (or as a seed client), and returns the
/// connection and the raw frames it got.
fn login_as(t: &mut Harness, id: i64, max_frame: Option<u32>) -> (ConnRef, Vec<Rc<[u8]>>) {
    let c = t.connect();
    t.send(
        c,
        &ClientMessage::Login(crate::proto::LoginMes {
            user_id: id,
            user_pwd: format!("pw{id}"),
            max_frame,
            ..Default::default()
        }),
    );
    t.run_jobs();
    let frames = t.recv_frames(c);
    (c, frames)
}

fn body_len(f: &[u8]) -> usize {
    f.len() - crate::proto::HEADER_LEN
}

/// A client that declared a larger `maxFrame` is told the server's limit in its login
/// reply (so it can refuse a longer message before sending it); a seed client gets the
/// seed's reply, without it. Either way the reply fits what the client reads.
#[test]
fn the_login_reply_announces_the_frame_limit_to_clients_that_declared_theirs() {
    let mut t = Harness::new(HubConfig {
        login_rate: 0,
        max_frame: 20_000,
        ..crate::hub::testkit::test_config()
    });
    for id in 1..=3 {
        t.register(id);
    }
    let reply = |frames: &[Rc<[u8]>]| match ServerMessage::parse(&frames[0][4..]) {
        Ok(ServerMessage::LoginRes(r)) => r,
        other => panic!("{other:?}"),
    };
    let (_, frames) = login_as(&mut t, 1, Some(1 << 20));
    let r = reply(&frames);
    assert_eq!((r.code, r.max_frame), (200, Some(20_000)));
    assert_eq!(r.users_id, [1]);
    // The raw bytes say it as serde would, last.
    let body = std::str::from_utf8(&frames[0][4..]).unwrap();
    assert!(body.ends_with(r#",\"maxFrame\":20000}"}"#), "{body}");
    assert_eq!(body_len(&frames[0]), body.len());
    let (_, frames) = login_as(&mut t, 2, None);
    let r = reply(&frames);
    assert_eq!((r.code, r.max_frame), (200, None));
    assert!(
        !std::str::from_utf8(&frames[0][4..])
            .unwrap()
            .contains("maxFrame")
    );
    // A compact client, with others online: the shared blocks and the field.
    let c = t.connect();
    let ClientMessage::Login(mut m) = login_msg(3, "pw3") else {
        unreachable!()
    };
    m.max_frame = Some(9000);
    m.compact = true;
    t.send(c, &ClientMessage::Login(m));
    t.run_jobs();
    let frames = t.recv_frames(c);
    let r = reply(&frames);
    assert_eq!((r.users_id.len(), r.names.len()), (3, 3));
    assert_eq!(r.max_frame, Some(20_000));
    assert!(body_len(&frames[0]) <= 9000);
}

#[test]
fn seed_clients_get_group_and_private_messages_cut_to_what_they_can_read() {
    let mut t = Harness::new(HubConfig {
        login_rate: 0,
        register_rate: 0,
        ..crate::hub::testkit::test_config()
    });
    for id in 1..=3 {
        t.register(id);
    }
    let (big, _) = login_as(&mut t, 1, Some(1 << 20));
    let (seed, _) = login_as(&mut t, 2, None);
    let (wide, _) = login_as(&mut t, 3, Some(1 << 20));
    t.recv_frames(big);
    t.recv_frames(seed);
    for content in ["\"".repeat(8000), "字".repeat(8000)] {
        t.send(big, &sms(&content));
        let to_seed = t.recv_frames(seed);
        assert_eq!(to_seed.len(), 1);
        assert!(body_len(&to_seed[0]) <= crate::proto::SEED_MAX_FRAME);
        let to_wide = t.recv(wide);
        assert!(matches!(&to_wide[..], [ServerMessage::Sms(m)] if m.content == content));
        let ServerMessage::Sms(cut) = ServerMessage::parse(&to_seed[0][4..]).unwrap() else {
            panic!()
        };
        assert!(cut.content.ends_with(crate::hub::frame_fit::CUT_NOTE));
        // The sender is told.
        let told = t.recv(big);
        assert!(
            matches!(&told[..], [ServerMessage::Error(e)] if e.code == 206 && e.error.contains("1 users")),
            "{told:?}"
        );
        // Privately too: cut short, answered 206.
        t.send(big, &private(2, &content));
        let to_seed = t.recv_frames(seed);
        assert!(body_len(&to_seed[0]) <= crate::proto::SEED_MAX_FRAME);
        assert!(matches!(&t.recv(big)[..], [ServerMessage::SmsRes(r)] if r.code == 206));
        t.send(big, &private(3, &content));
        assert!(matches!(&t.recv(wide)[..], [ServerMessage::Private(p)] if p.content == content));
        assert!(matches!(&t.recv(big)[..], [ServerMessage::SmsRes(r)] if r.code == 200));
    }
    // A short message goes whole to everyone, and nobody is told anything.
    t.send(big, &sms("hi"));
    assert!(matches!(&t.recv(seed)[..], [ServerMessage::Sms(m)] if m.content == "hi"));
    assert!(t.recv(big).is_empty());
}

#[test]
fn a_seed_client_can_log_in_with_hundreds_online_with_long_names() {
    let mut t = Harness::new(HubConfig {
        login_rate: 0,
        register_rate: 0,
        max_conns_per_addr: 0,
        ..crate::hub::testkit::test_config()
    });
    let base = 1_000_000_000i64;
    let n = 800;
    let mut store = t.store.clone();
    for i in 0..=n {
        let id = base + i;
        let rec = crate::users::UserRecord {
            id,
            name: format!("{:_<32}", format!("user{i}")),
            pwd_hash: crate::job::Passwords::hash(&t.hasher, &format!("pw{id}")).unwrap(),
            ..Default::default()
        };
        crate::store::Store::create_user(&mut store, &rec).unwrap();
    }
    for i in 0..n {
        let c = t.connect();
        t.send(c, &login_msg(base + i, &format!("pw{}", base + i)));
        t.run_jobs();
    }
    assert_eq!(t.hub.online_count(), n as usize);
    // The seed client: every frame it gets fits its 8,096-byte buffer, the caller is
    // listed, and the names (which would not fit) are left out.
    let (_, frames) = login_as(&mut t, base + n, None);
    assert!(
        frames
            .iter()
            .all(|f| body_len(f) <= crate::proto::SEED_MAX_FRAME)
    );
    let ServerMessage::LoginRes(res) = ServerMessage::parse(&frames[0][4..]).unwrap() else {
        panic!()
    };
    assert_eq!(res.code, 200);
    assert!(res.users_id.contains(&(base + n)));
    assert!(res.users.is_empty());
    assert!(res.users_id.len() > 100 && res.users_id.len() < n as usize + 1);
    // A client that declared a larger limit gets the whole lists.
    let (_, frames) = login_as(&mut t, base + n, Some(1 << 20));
    let ServerMessage::LoginRes(res) = ServerMessage::parse(&frames[0][4..]).unwrap() else {
        panic!()
    };
    assert_eq!(res.users_id.len(), n as usize + 1);
    assert_eq!(res.users.len(), n as usize + 1);
    // One that declared a little more than the seed's: cut to fit, the server's limit
    // announced within it.
    let (_, frames) = login_as(&mut t, base + n, Some(8200));
    assert!(body_len(&frames[0]) <= 8200, "{}", body_len(&frames[0]));
    let ServerMessage::LoginRes(res) = ServerMessage::parse(&frames[0][4..]).unwrap() else {
        panic!()
    };
    assert!(res.users_id.contains(&(base + n)));
    assert_eq!(res.max_frame, Some(t.hub.config().max_frame as u32));
}

/// Output waiting for the next round of writes is the reactor's to time (the flush
/// interval); the hub does not ask for the loop at once for it, or the loop would
/// spin until the round is due.
#[test]
fn queued_output_alone_does_not_wake_the_loop() {
    let mut t = h();
    let [a, _b] = t.everyone_online([1, 2]);
    // Straight into the hub, as the reactor does, with the writes not yet taken.
    t.hub.handle_input(a, &sms("hello").encode(), t.now);
    assert!(t.hub.has_output(), "a round of writes is asked for");
    // The reactor hands jobs to the workers every turn before it polls (here: the
    // message's history append).
    while let Some(j) = t.hub.poll_job(t.now) {
        t.jobs.push_back(j);
    }
    let at = t.hub.poll_timeout(t.now).unwrap();
    assert!(at > t.now.mono_ms, "no wake-up at once for queued output");
}

/// Users 1, 2 and 3 logged in one after the other, presence notices gathered for
/// `interval_ms` and not yet sent.
fn three_logged_in(interval_ms: u64) -> (Harness, [ConnRef; 3]) {
    let mut t = Harness::new(HubConfig {
        presence_interval_ms: interval_ms,
        ..HubConfig::default()
    });
    for id in [1, 2, 3] {
        t.register(id);
    }
    let conns = [1, 2, 3].map(|id| t.login(id));
    (t, conns)
}

#[test]
fn presence_notices_within_the_interval_go_out_together() {
    let (mut t, [a, b, c]) = three_logged_in(50);
    assert_eq!(t.recv(a), [], "not yet: the notices wait for the interval");
    assert!(!t.write_pending(a));
    let delivered = t.hub.stats.deliveries;
    t.advance(50);
    // One shared chunk each, in order; those who came meanwhile get what came after
    // them (their login reply listed the others).
    assert_eq!(t.recv(a), [notify(2, 0), notify(3, 0)]);
    assert_eq!(t.recv(b), [notify(3, 0)]);
    assert_eq!(t.recv(c), []);
    assert!(t.hub.stats.deliveries - delivered >= 3);
    // Departures too, and a timer says when.
    t.hangup(b);
    assert_eq!(t.recv(a), []);
    assert!(
        t.hub
            .poll_timeout(t.now)
            .is_some_and(|at| at <= t.now.mono_ms + 50)
    );
    t.advance(50);
    assert_eq!(t.recv(a), [notify(2, 1)]);
    assert_eq!(t.recv(c), [notify(2, 1)]);
}

#[test]
fn a_newcomer_is_announced_before_what_they_say() {
    let (mut t, [a, b, c]) = three_logged_in(60_000);
    t.recv(b);
    t.send(b, &sms("hello"));
    let got = t.recv(a);
    assert_eq!(got[..2], [notify(2, 0), notify(3, 0)], "{got:?}");
    assert!(matches!(&got[2..], [ServerMessage::Sms(m)] if m.content == "hello"));
    t.send(c, &private(1, "psst"));
    let got = t.recv(a);
    assert!(
        matches!(&got[..], [ServerMessage::Private(m)] if m.content == "psst"),
        "{got:?}"
    );
}

#[test]
fn with_many_online_presence_waits_longer_and_the_roster_is_dropped_when_idle() {
    let mut t = Harness::new(HubConfig {
        presence_interval_ms: 50,
        login_rate: 0,
        register_rate: 0,
        max_conns_per_addr: 0,
        ..HubConfig::default()
    });
    let n = 1_100;
    for id in 1..=n {
        t.register(id);
        t.login(id);
    }
    assert!(!t.hub.roster_is_empty());
    // Notices of the last logins wait 1 ms per 20 users online: 55 ms, not 50.
    let now = t.now.mono_ms;
    let due = t.hub.poll_timeout(t.now).unwrap();
    assert_eq!(due, now + 55);
    t.advance(55);
    assert_eq!(t.recv(t.hub.online_at(1).unwrap()).len() as i64, n - 1);
    // No login for a while: the roster goes, and comes back right for the next one.
    t.advance(3_000);
    assert!(t.hub.roster_is_empty());
    t.register(n + 1);
    let c = t.connect();
    let ClientMessage::Login(mut m) = login_msg(n + 1, &format!("pw{}", n + 1)) else {
        unreachable!()
    };
    m.max_frame = Some(1 << 20);
    t.send(c, &ClientMessage::Login(m));
    t.run_jobs();
    let got = t.recv(c);
    let ServerMessage::LoginRes(r) = &got[0] else {
        panic!("not a login reply")
    };
    assert_eq!(
        (r.users_id.len(), r.users.len()),
        (n as usize + 1, n as usize + 1)
    );
}

#[test]
fn a_second_login_is_told_only_what_came_after_its_login_reply() {
    let mut t = Harness::new(HubConfig {
        presence_interval_ms: 50,
        ..HubConfig::default()
    });
    for id in [1, 2, 3] {
        t.register(id);
    }
    let old = t.login(1);
    t.advance(50);
    // Within one interval: 3 comes and goes, then 1 logs in again (its reply lists
    // only itself), then 2 comes.
    let c = t.login(3);
    t.hangup(c);
    let new = t.connect();
    t.send(new, &login_msg(1, "pw1"));
    t.run_jobs();
    let got = t.recv(new);
    assert!(
        matches!(&got[..], [ServerMessage::LoginRes(r)] if r.users_id == [1]),
        "{got:?}"
    );
    t.login(2);
    t.advance(50);
    assert_eq!(
        t.recv(new),
        [notify(2, 0)],
        "nothing its login reply already told it"
    );
    assert_eq!(t.recv(old), [err(409, "logged in elsewhere")]);
}

/// The index of the first job of a kind in the harness's queue.
fn job_index(t: &Harness, ack: bool) -> usize {
    t.jobs
        .iter()
        .position(|j| matches!(j.kind, JobKind::AckOffline { .. }) == ack)
        .expect("no such job")
}

#[test]
fn a_quick_relogin_never_gets_again_what_the_last_session_got() {
    // The removal of what the first session got runs on the storage workers, the next
    // login's fetch on the hashing workers: either may finish first.
    for removal_first in [false, true] {
        let mut t = h();
        let a = stored_for_2(&mut t, 2);
        let b = t.connect();
        t.send(b, &login_msg(2, "pw2"));
        t.run_jobs();
        assert_eq!(offline_contents(&t.recv(b)), ["m0", "m1"]);
        // Written: the removal is asked for; the client logs out and straight back in.
        assert_eq!(t.jobs.len(), 1, "{:?}", t.jobs);
        t.send(b, &ClientMessage::Logout);
        t.recv(b);
        let b2 = t.connect();
        t.send(b2, &login_msg(2, "pw2"));
        // The login's fetch reads the store before the removal runs.
        let login = t.jobs.remove(job_index(&t, false)).unwrap();
        let outcome = execute(&mut t.store.clone(), &t.hasher, login.kind);
        if removal_first {
            t.run_job(job_index(&t, true));
        }
        t.feed(JobResult {
            conn: login.conn,
            outcome,
            took: None,
        });
        t.run_jobs();
        let got = t.recv(b2);
        assert!(
            matches!(got.first(), Some(ServerMessage::LoginRes(r)) if r.code == 200),
            "{got:?}"
        );
        assert!(offline_contents(&got).is_empty(), "sent twice: {got:?}");
        assert_eq!(t.store.offline_count(2), 0);
        assert!(t.jobs.is_empty(), "{:?}", t.jobs);
        t.send(a, &private(2, "live"));
        let got = t.recv(b2);
        assert!(
            matches!(&got[..], [ServerMessage::Private(p)] if p.content == "live" && !p.offline),
            "{got:?}"
        );
    }
}

/// Logs `id` in as a client that reads the compact forms, and returns the connection
/// and its login reply.
fn login_compact(t: &mut Harness, id: i64) -> (ConnRef, LoginResMes) {
    let c = t.connect();
    let ClientMessage::Login(mut m) = login_msg(id, &format!("pw{id}")) else {
        unreachable!()
    };
    m.max_frame = Some(1 << 20);
    m.compact = true;
    t.send(c, &ClientMessage::Login(m));
    t.run_jobs();
    match &t.recv(c)[..] {
        [ServerMessage::LoginRes(r)] => (c, r.clone()),
        other => panic!("{other:?}"),
    }
}

fn changes(got: &[ServerMessage]) -> Vec<(i64, u8, String)> {
    got.iter()
        .flat_map(|m| match m {
            ServerMessage::Presence(p) => p.changes.clone(),
            other => panic!("not a PresenceMes: {other:?}"),
        })
        .collect()
}

#[test]
fn compact_clients_are_told_who_is_online_in_the_compact_forms_and_others_as_before() {
    let mut t = Harness::new(HubConfig {
        presence_interval_ms: 50,
        login_rate: 0,
        register_rate: 0,
        ..crate::hub::testkit::test_config()
    });
    for id in 1..=5 {
        t.register(id);
    }
    let (compact, r) = login_compact(&mut t, 1);
    assert_eq!(
        (r.users_id, r.names, r.users),
        (vec![1], vec!["u1".into()], vec![])
    );
    let (full, _) = login_as(&mut t, 2, Some(1 << 20));
    let (seed, _) = login_as(&mut t, 3, None);
    t.advance(50);
    let u = |id: i64, s: u8| (id, s, format!("u{id}"));
    assert_eq!(changes(&t.recv(compact)), [u(2, 0), u(3, 0)]);
    assert_eq!(t.recv(full), [notify(3, 0)]);
    // A newcomer (compact) in the next batch: its reply names everyone in the order
    // of the ids, and it is told only what came after it.
    let (late, r) = login_compact(&mut t, 4);
    assert_eq!(r.users_id, [1, 2, 3, 4]);
    assert_eq!(r.names, ["u1", "u2", "u3", "u4"]);
    assert!(r.users.is_empty());
    let five = t.login(5);
    t.send(five, &ClientMessage::Logout);
    t.advance(50);
    assert_eq!(changes(&t.recv(compact)), [u(4, 0), u(5, 0), u(5, 1)]);
    assert_eq!(changes(&t.recv(late)), [u(5, 0), u(5, 1)]);
    for c in [full, seed] {
        assert_eq!(t.recv(c), [notify(4, 0), notify(5, 0), notify(5, 1)]);
    }
}

#[test]
fn presence_waits_twenty_times_what_a_round_of_writes_to_everyone_costs() {
    let mut t = Harness::new(HubConfig {
        presence_interval_ms: 50,
        login_rate: 0,
        register_rate: 0,
        max_conns_per_addr: 0,
        ..HubConfig::default()
    });
    // The loop measures its rounds of writes too: each write takes 50 us here.
    t.set_costs(Duration::ZERO, Duration::from_micros(50));
    for id in 1..=202 {
        t.register(id);
    }
    let first = t.login(1);
    for id in 2..=200 {
        t.login(id);
    }
    t.advance(1_000);
    t.recv(first);
    let due_in = |t: &mut Harness, id: i64| {
        t.login(id);
        t.hub.poll_timeout(t.now).unwrap() - t.now.mono_ms
    };
    // Rounds of writes to a few say nothing; one to 200 that took 10 ms says 50 us
    // each: a round to the 201 online takes 10 ms, and notices wait 20 times that.
    t.hub.note_round(99, Duration::from_secs(1));
    t.hub.note_round(200, Duration::from_millis(10));
    assert_eq!(due_in(&mut t, 201), 201);
    t.advance(1_000);
    assert_eq!(t.recv(first), [notify(201, 0)]);
    // However slow the writes, notices wait at most 2 s.
    t.hub.note_round(1_000, Duration::from_secs(10));
    t.login(202);
    t.advance(1_999);
    assert_eq!(t.recv(first), []);
    t.advance(1);
    assert_eq!(t.recv(first), [notify(202, 0)]);
}
