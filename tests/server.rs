//! The real server over TCP, driven by a seed-format client: every row of the wire
//! contract, status notifications, duplicate login, limits, and durability across a
//! hard kill.

mod common;

use common::*;
use serde_json::json;

#[test]
fn seed_login_and_register_rows_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &[]);
    let mut a = s.connect();
    let r = a.register(100, "123456", "scott");
    assert_eq!(
        (r.kind.as_str(), r.raw.as_str()),
        ("RegisterResMes", r#"{"code":200,"error":""}"#)
    );
    let r = a.register(100, "other", "again");
    assert_eq!(r.raw, r#"{"code":400,"error":"user id already taken"}"#);
    let r = a.register(0, "x", "bad");
    assert_eq!(r.data["code"], 400);

    let r = a.login_seed(100, "123456");
    assert_eq!(r.kind, "LoginResMes");
    assert_eq!(
        r.raw,
        r#"{"code":200,"UsersId":[100],"error":"","users":[{"userId":100,"userName":"scott"}]}"#
    );
    let mut b = s.connect();
    assert_eq!(
        b.login_seed(555, "x").raw,
        r#"{"code":500,"UsersId":[],"error":"no such user"}"#
    );
    assert_eq!(
        b.login_seed(100, "wrong").raw,
        r#"{"code":403,"UsersId":[],"error":"wrong password"}"#
    );
}

#[test]
fn presence_group_and_private_messages() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &[]);
    let mut a = online(&s, 100);
    let mut b = s.connect();
    assert_eq!(b.register(200, "pw200", "tiger").data["code"], 200);
    let r = b.login(200, "pw200");
    assert_eq!(r.data["UsersId"], json!([100, 200]));
    // The others learn of the login, in the seed's shape.
    let n = a.recv();
    assert_eq!(n.kind, "NotifyUserStatusMes");
    assert_eq!(
        (n.data["userId"].clone(), n.data["status"].clone()),
        (json!(200), json!(0))
    );

    // Group message: the claimed sender is ignored, the session's is stamped, no echo.
    b.send(
        "SmsMes",
        json!({"content":"hi","userId":100,"userPwd":"guess","userName":"scott","userStatus":0,"sex":""}),
    );
    let m = a.recv();
    assert_eq!(m.kind, "SmsMes");
    assert_eq!(m.data["content"], "hi");
    assert_eq!(m.data["userId"], 200);
    assert_eq!(m.data["userName"], "tiger");
    assert_eq!(m.data["userPwd"], "");
    assert!(m.data["time"].as_u64().unwrap() > 1_600_000_000_000);
    b.expect_nothing_pending();

    // Private message, live.
    a.send("SmsPrivateMes", json!({"toUserId":200,"content":"psst"}));
    assert_eq!(a.recv().raw, r#"{"code":200,"error":""}"#);
    let p = b.recv();
    assert_eq!(p.kind, "SmsPrivateMes");
    assert_eq!(p.data["userId"], 100);
    assert_eq!(p.data["toUserId"], 200);
    assert_eq!(p.data["content"], "psst");
    assert_eq!(p.data["offline"], false);

    // Online list and ping.
    a.send("OnlineUsersMes", json!({}));
    let o = a.recv();
    assert_eq!(o.kind, "OnlineUsersResMes");
    assert_eq!(
        o.data["users"],
        json!([{"userId":100,"userName":"u100"},{"userId":200,"userName":"tiger"}])
    );
    a.send("PingMes", json!({}));
    assert_eq!(a.recv().kind, "PongMes");

    // Logout: others get status 1, the connection is closed.
    b.send("LogoutMes", json!({}));
    assert!(b.expect_closed().is_empty());
    let n = a.recv();
    assert_eq!(n.kind, "NotifyUserStatusMes");
    assert_eq!(n.data["status"], 1);
    assert_eq!(n.data["userId"], 200);

    // Offline now: stored (202), delivered at the next login, once.
    a.send("SmsPrivateMes", json!({"toUserId":200,"content":"later"}));
    assert_eq!(a.recv().data["code"], 202);
    a.send("SmsPrivateMes", json!({"toUserId":4242,"content":"nobody"}));
    assert_eq!(a.recv().raw, r#"{"code":404,"error":"no such user"}"#);
    let mut b2 = s.connect();
    assert_eq!(b2.login(200, "pw200").data["code"], 200);
    let p = b2.recv();
    assert_eq!(p.kind, "SmsPrivateMes");
    assert_eq!(p.data["content"], "later");
    assert_eq!(p.data["offline"], true);
    b2.expect_nothing_pending();

    // A dropped connection counts as going offline too.
    assert_eq!(a.recv().data["status"], 0);
    drop(b2);
    let n = a.recv();
    assert_eq!(
        (n.data["userId"].clone(), n.data["status"].clone()),
        (json!(200), json!(1))
    );
}

#[test]
fn refusals_get_error_frames() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &[]);
    let mut c = s.connect();
    c.send("SmsMes", json!({"content":"sneaky"}));
    assert_eq!(c.recv().raw, r#"{"code":401,"error":"log in first"}"#);
    c.send_raw(&[0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);
    let e = c.recv();
    assert_eq!(
        (e.kind.as_str(), e.data["code"].clone()),
        ("ErrorResMes", json!(400))
    );
    c.send("WhatIsThis", json!({}));
    assert_eq!(c.recv().data["code"], 400);
    c.expect_nothing_pending();
    // An oversized length is refused from the prefix alone, then the connection closes.
    c.send_raw(&0x7fff_ffffu32.to_be_bytes());
    let got = c.expect_closed();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data["code"], 413);
    // The server is fine.
    online(&s, 1).expect_nothing_pending();
}

#[test]
fn duplicate_login_replaces_the_older_session_without_flicker() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &[]);
    let mut watcher = online(&s, 1);
    let mut old = online(&s, 2);
    assert_eq!(watcher.recv().data["userId"], 2);
    let mut new = s.connect();
    assert_eq!(new.login(2, "pw2").data["UsersId"], json!([1, 2]));
    let got = old.expect_closed();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].raw, r#"{"code":409,"error":"logged in elsewhere"}"#);
    watcher.expect_nothing_pending();
    watcher.send("SmsPrivateMes", json!({"toUserId":2,"content":"x"}));
    assert_eq!(watcher.recv().data["code"], 200);
    assert_eq!(new.recv().data["content"], "x");
}

#[test]
fn frames_split_into_single_bytes_and_glued_together() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &["--msg-rate", "0"]);
    let mut c = s.connect();
    let mut bytes = seed_frame(
        "RegisterMes",
        &json!({"user":{"userId":7,"userPwd":"p","userName":"n"}}),
    );
    bytes.extend(seed_frame("LoginMes", &json!({"userId":7,"userPwd":"p"})));
    bytes.extend(seed_frame("PingMes", &json!({})));
    for b in &bytes {
        c.send_raw(&[*b]);
    }
    assert_eq!(c.recv().kind, "RegisterResMes");
    assert_eq!(c.recv().data["code"], 200);
    assert_eq!(c.recv().kind, "PongMes");
    // Many frames in one write.
    let mut glued = Vec::new();
    for _ in 0..50 {
        glued.extend(seed_frame("PingMes", &json!({})));
    }
    c.send_raw(&glued);
    for _ in 0..50 {
        assert_eq!(c.recv().kind, "PongMes");
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &[]);
    let mut a = online(&s, 1);
    let mut b = s.connect();
    assert_eq!(b.register(2, "pw2", "two").data["code"], 200);
    a.send("SmsPrivateMes", json!({"toUserId":2,"content":"keep me"}));
    assert_eq!(a.recv().data["code"], 202);
    // Hard kill right after the acknowledgements.
    s.kill_hard();

    let s = ServerProc::start(dir.path(), &[]);
    let mut b = s.connect();
    assert_eq!(b.login(2, "pw2").data["code"], 200);
    let p = b.recv();
    assert_eq!(p.data["content"], "keep me");
    assert_eq!(p.data["offline"], true);
    assert_eq!(p.data["userName"], "u1");
}

#[test]
fn sigterm_exits_cleanly_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &[]);
    let mut a = online(&s, 1);
    a.expect_nothing_pending();
    let status = s.signal_and_wait(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
    a.expect_closed();
    let s = ServerProc::start(dir.path(), &[]);
    assert_eq!(s.connect().login(1, "pw1").data["code"], 200);
}

#[test]
fn a_second_server_on_the_same_data_says_why_it_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let _s = ServerProc::start(dir.path(), &[]);
    let out = ServerProc::command(dir.path(), "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another process"), "{err}");
}

/// Stored private messages leave the store only once written to the recipient's
/// socket: a server killed while a backlog is being delivered to a client that reads
/// slowly loses none of them (some may come twice).
#[test]
fn offline_backlog_survives_kill_9_during_delivery() {
    const N: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--msg-rate", "0", "--log-level", "debug"];
    let mut s = ServerProc::start(dir.path(), &flags);
    let mut a = online(&s, 1);
    let mut b = s.connect();
    assert_eq!(b.register(2, "pw2", "two").data["code"], 200);
    let pad = "x".repeat(60_000);
    for i in 0..N {
        a.send(
            "SmsPrivateMes",
            json!({"toUserId": 2, "content": format!("{i:04} {pad}")}),
        );
        assert_eq!(a.recv().data["code"], 202);
    }
    // 12 MB for a client that reads nothing: the kernel's buffers fill, the server
    // holds the rest of a batch, and is killed then.
    // (It declares that it reads frames this long: a seed client would get each one
    // cut short to 8 KB.)
    assert_eq!(b.login_1mib(2, "pw2").data["code"], 200);
    s.wait_log("socket full, ");
    s.kill_hard();
    let mut seen = std::collections::BTreeSet::new();
    // What the kernel had taken still arrives.
    while let Some(g) = b.try_recv() {
        seen.insert(g.data["content"].as_str().unwrap()[..4].to_string());
    }
    let first = seen.len();
    assert!(first < N, "the kill came before the end");
    let s = ServerProc::start(dir.path(), &flags);
    let mut b = s.connect();
    assert_eq!(b.login_1mib(2, "pw2").data["code"], 200);
    while seen.len() < N {
        let g = b.recv();
        assert_eq!(g.kind, "SmsPrivateMes", "{g:?}");
        seen.insert(g.data["content"].as_str().unwrap()[..4].to_string());
    }
    assert_eq!(seen.len(), N);
}

/// Reads frames as the seed's Go client does: into a buffer of 8,096 bytes, failing
/// (the original panics) on a longer body.
fn seed_read(c: &mut std::net::TcpStream) -> serde_json::Value {
    use std::io::Read;
    let mut len = [0u8; 4];
    c.read_exact(&mut len).unwrap();
    let n = u32::from_be_bytes(len) as usize;
    assert!(
        n <= 8096,
        "a frame body of {n} bytes would crash the seed's client"
    );
    let mut body = vec![0; n];
    c.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn raw_frame(t: &str, inner: serde_json::Value) -> Vec<u8> {
    common::seed_frame(t, &inner)
}

#[test]
fn seed_clients_survive_long_messages_and_a_crowded_login() {
    use std::io::Write;
    let _ = rlimit::increase_nofile_limit(8192);
    const USERS: i64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(
        dir.path(),
        &[
            "--max-conns-per-addr",
            "0",
            "--login-rate",
            "0",
            "--register-rate",
            "0",
            "--msg-rate",
            "0",
            "--worker-priority",
            "normal",
        ],
    );
    // 2,000 users with 32-character names, online.
    let mut crowd = Vec::new();
    for i in 0..USERS {
        let id = 1_000_000 + i;
        let mut c = s.connect();
        let name = format!("{:_<32}", format!("user{i}"));
        assert_eq!(c.register(id, "pw", &name).data["code"], 200);
        assert_eq!(c.login(id, "pw").data["code"], 200);
        crowd.push(c);
    }
    // A user who declares a large limit, and registers the seed user.
    let mut sender = s.connect();
    sender.send(
        "RegisterMes",
        json!({"user": {"userId": 7, "userPwd": "pw7", "userName": "sender"}}),
    );
    assert_eq!(sender.recv().data["code"], 200);
    sender.send(
        "RegisterMes",
        json!({"user": {"userId": 8, "userPwd": "pw8", "userName": "seed"}}),
    );
    assert_eq!(sender.recv().data["code"], 200);
    let ok = sender.login_1mib(7, "pw7");
    assert_eq!(ok.data["code"], 200);
    assert_eq!(
        ok.data["UsersId"].as_array().unwrap().len() as i64,
        USERS + 1
    );
    // The seed client logs in with 2,000 users online, then gets long messages.
    let mut seed = std::net::TcpStream::connect(s.addr).unwrap();
    seed.write_all(&raw_frame(
        "LoginMes",
        json!({"userId": 8, "userPwd": "pw8", "userName": ""}),
    ))
    .unwrap();
    let res = seed_read(&mut seed);
    assert_eq!(res["type"], "LoginResMes");
    let inner: serde_json::Value = serde_json::from_str(res["data"].as_str().unwrap()).unwrap();
    assert_eq!(inner["code"], 200);
    assert!(inner["UsersId"].as_array().unwrap().contains(&json!(8)));
    for content in ["\"".repeat(8000), "字".repeat(8000)] {
        sender.send("SmsMes", json!({ "content": content }));
        loop {
            let f = seed_read(&mut seed);
            if f["type"] == "SmsMes" {
                break;
            }
        }
        let (told, _) = sender.recv_until("ErrorResMes");
        assert_eq!(told.data["code"], 206);
    }
    // Still alive: a ping is answered.
    seed.write_all(&raw_frame("PingMes", json!({}))).unwrap();
    while seed_read(&mut seed)["type"] != "PongMes" {}
    drop(crowd);
}
