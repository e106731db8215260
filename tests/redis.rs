//! The Redis backend against a real `redis-server` that each test starts on a free
//! loopback port and stops afterwards: the shared storage suite, the seed's schema,
//! register races between two nodes, offline messages across a server kill, and
//! Redis killed, restarted and put to sleep under a running server.

mod common;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use chat::store::redis::{RedisStore, RedisTimeouts};
use chat::store::{Store, suite};
use common::*;
use serde_json::json;

#[test]
fn redis_backend_passes_the_storage_suite() {
    let r = RedisProc::start(false);
    let url = r.url();
    suite::run(&|| Box::new(RedisStore::new(&url, RedisTimeouts::default()).unwrap()));
}

/// Many records at once: one that cannot be read counts as missing instead of failing
/// the others (the check for bans after a cluster cut-off reads every user online).
#[test]
fn an_unreadable_record_does_not_fail_a_read_of_many() {
    let r = RedisProc::start(false);
    let mut s = RedisStore::new(&r.url(), RedisTimeouts::default()).unwrap();
    for (id, name) in [(1, "ann"), (3, "cy")] {
        let rec = chat::users::UserRecord {
            id,
            name: name.into(),
            pwd_hash: "$argon2id$x".into(),
            ..Default::default()
        };
        assert!(s.create_user(&rec).unwrap());
    }
    let mut rc = r.client();
    let _: () = redis::cmd("HSET")
        .arg("users")
        .arg(2)
        .arg("{not json")
        .query(&mut rc)
        .unwrap();
    assert!(s.get_user(2).is_err(), "alone, it is an error");
    assert_eq!(
        suite::names(&mut s, &[1, 2, 3, 4]),
        [Some("ann".into()), None, Some("cy".into()), None]
    );
}

fn hget_user(r: &RedisProc, id: i64) -> serde_json::Value {
    serde_json::from_str(&r.user_record(id)).unwrap()
}

#[test]
fn seed_records_log_in_and_are_upgraded_to_a_hash() {
    let r = RedisProc::start(false);
    let mut rc = r.client();
    // Exactly what the seed's server leaves in Redis (its whole User struct).
    redis::cmd("HSET")
        .arg("users")
        .arg(100)
        .arg(r#"{"userId":100,"userPwd":"123456","userName":"Scott","userStatus":1,"sex":"m"}"#)
        .query::<i64>(&mut rc)
        .unwrap();
    let (s, _d) = r.chat(&[]);
    let mut c = s.connect();
    assert_eq!(c.login(100, "wrong").data["code"], 403);
    let ok = c.login(100, "123456");
    assert_eq!(ok.data["code"], 200);
    assert_eq!(ok.data["users"][0]["userName"], "Scott");
    // The seed's shape, the hash in `userPwd` itself: the seed's own server, which
    // compares `userPwd` with what is typed, matches no password, the empty one
    // included. Every other field is as it was.
    let rec = hget_user(&r, 100);
    let pwd = rec["userPwd"].as_str().unwrap();
    assert!(pwd.starts_with("$argon2id$"), "plaintext replaced: {rec}");
    assert!(!rec.to_string().contains("123456"), "{rec}");
    assert_eq!(
        (
            &rec["userId"],
            &rec["userName"],
            &rec["userStatus"],
            &rec["sex"]
        ),
        (&json!(100), &json!("Scott"), &json!(1), &json!("m"))
    );
    // And the hash works; an empty password does not.
    let mut c2 = s.connect();
    assert_eq!(c2.login(100, "").data["code"], 403);
    assert_eq!(c2.login(100, "123456").data["code"], 200);

    // Our own registrations have the same shape, and never a plaintext password.
    let mut c3 = s.connect();
    c3.send(
        "RegisterMes",
        json!({"user": {"userId": 7, "userPwd": "pw7", "userName": "seven", "userStatus": 2, "sex": "f"}}),
    );
    assert_eq!(c3.recv().data["code"], 200);
    let rec = hget_user(&r, 7);
    assert!(!rec.to_string().contains("pw7"), "{rec}");
    assert!(
        rec["userPwd"].as_str().unwrap().starts_with("$argon2id$"),
        "{rec}"
    );
    assert_eq!(
        (
            &rec["userId"],
            &rec["userName"],
            &rec["userStatus"],
            &rec["sex"]
        ),
        (&json!(7), &json!("seven"), &json!(2), &json!("f"))
    );
    assert_eq!(c3.login(7, "pw7").data["code"], 200);
}

#[test]
fn records_of_the_earlier_shape_are_read_and_rewritten() {
    let r = RedisProc::start(false);
    let mut rc = r.client();
    let (s, _d) = r.chat(&[]);
    let mut c = s.connect();
    assert_eq!(c.register(8, "pw8", "eight").data["code"], 200);
    // As an earlier version of this server wrote it: the hash in `pwdHash` alone.
    let hash = hget_user(&r, 8)["userPwd"].as_str().unwrap().to_string();
    let old = json!({"userId": 8, "userName": "eight", "pwdHash": hash, "sex": "x"});
    redis::cmd("HSET")
        .arg("users")
        .arg(8)
        .arg(old.to_string())
        .query::<i64>(&mut rc)
        .unwrap();
    assert_eq!(c.login(8, "").data["code"], 403);
    assert_eq!(c.login(8, "pw8").data["code"], 200);
    let rec = hget_user(&r, 8);
    assert_eq!(rec["userPwd"], json!(hash), "{rec}");
    assert_eq!(rec["sex"], "x");
}

#[test]
fn two_nodes_registering_one_id_at_once_cannot_both_win() {
    let r = RedisProc::start(false);
    let unlimited = ["--msg-rate", "0", "--login-rate", "0"];
    let (a, _da) = r.chat(&unlimited);
    let (b, _db) = r.chat(&unlimited);
    let handles: Vec<_> = [a.addr, b.addr]
        .into_iter()
        .enumerate()
        .map(|(node, addr)| {
            std::thread::spawn(move || {
                let mut c = SeedClient::connect(addr);
                // Pipelined: all 30 registrations leave at once.
                let mut bytes = Vec::new();
                for id in 1..=30 {
                    bytes.extend(seed_frame(
                        "RegisterMes",
                        &json!({"user":{"userId":id,"userPwd":"p","userName":format!("node{node}")}}),
                    ));
                }
                c.send_raw(&bytes);
                (1..=30).map(|_| c.recv().data["code"].as_i64().unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<Vec<i64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for id in 1..=30usize {
        let codes = [results[0][id - 1], results[1][id - 1]];
        let mut sorted = codes;
        sorted.sort();
        assert_eq!(sorted, [200, 400], "id {id}: {codes:?}");
        let winner = if codes[0] == 200 { "node0" } else { "node1" };
        let rec = r.user_record(id as i64);
        assert!(rec.contains(winner), "the winner's record stands: {rec}");
    }
}

#[test]
fn offline_messages_survive_a_server_kill_and_are_removed_once_delivered() {
    let r = RedisProc::start(false);
    let (s, _d) = r.chat(&[]);
    let mut a = online(&s, 1);
    let mut b = s.connect();
    assert_eq!(b.register(2, "pw2", "two").data["code"], 200);
    for text in ["first", "second"] {
        a.send("SmsPrivateMes", json!({"toUserId":2,"content":text}));
        assert_eq!(a.recv().data["code"], 202);
    }
    s.kill_hard();
    assert_eq!(r.llen("offline:2"), 2);

    let (s, _d) = r.chat(&[]);
    let mut b = s.connect();
    assert_eq!(b.login(2, "pw2").data["code"], 200);
    assert_eq!(b.recv().data["content"], "first");
    assert_eq!(b.recv().data["content"], "second");
    b.send("LogoutMes", json!({}));
    b.expect_closed();
    // Once delivered they are gone: the next login gets nothing.
    let mut b = s.connect();
    assert_eq!(b.login(2, "pw2").data["code"], 200);
    b.expect_nothing_pending();
}

#[test]
fn redis_killed_and_restarted_under_a_running_server() {
    let mut r = RedisProc::start(true);
    let (s, _d) = r.chat(&["--login-rate", "0"]);
    let mut a = online(&s, 1);
    let mut b = online(&s, 2);
    assert_eq!(a.recv().data["userId"], 2);
    let mut c = s.connect();
    assert_eq!(c.register(3, "pw3", "three").data["code"], 200);

    r.kill();

    // Storage requests get a clear error within a bounded time...
    let started = Instant::now();
    let mut d = s.connect();
    let res = d.login(3, "pw3");
    assert_eq!(res.data["code"], 505, "{res:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // A store connection that already failed says "unavailable" (503); one that sent
    // the write before it noticed Redis gone cannot know whether it ran (504). Which
    // worker takes the message decides which: either is a clear answer.
    a.send("SmsPrivateMes", json!({"toUserId":3,"content":"stored?"}));
    let res = a.recv();
    assert!(
        [503, 504].contains(&res.data["code"].as_i64().unwrap()),
        "{res:?}"
    );
    let mut e = s.connect();
    assert_eq!(e.register(9, "p", "n").data["code"], 505);

    // ...while everything that needs no storage goes on.
    a.send("SmsMes", json!({"content":"still here"}));
    assert_eq!(b.recv().data["content"], "still here");
    a.send("OnlineUsersMes", json!({}));
    assert_eq!(a.recv().data["users"].as_array().unwrap().len(), 2);
    a.expect_nothing_pending();

    // Redis comes back: service resumes with no restart of the chat server.
    r.restart();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut d = s.connect();
        let res = d.login(3, "pw3");
        if res.data["code"] == 200 {
            break;
        }
        assert_eq!(res.data["code"], 505);
        assert!(Instant::now() < deadline, "login never worked again");
        // The workers reconnect with backoff; try again shortly.
        std::thread::sleep(Duration::from_millis(200));
    }
    a.send(
        "SmsPrivateMes",
        json!({"toUserId":2,"content":"live again"}),
    );
    assert_eq!(a.recv_until("SmsResMes").0.data["code"], 200);
    // Each worker thread finds Redis back at its own next try (its backoff is at most
    // a few seconds): a registration may meet one that has not yet.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut f = s.connect();
        let res = f.register(10, "p", "n");
        if res.data["code"] == 200 {
            break;
        }
        assert_eq!(res.data["code"], 505, "{res:?}");
        assert!(Instant::now() < deadline, "registration never worked again");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Puts Redis to sleep for `secs` from a raw connection, and returns once another
/// connection has seen it not answering.
fn put_redis_to_sleep(r: &RedisProc, secs: u32) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", r.port)).unwrap();
    s.write_all(format!("DEBUG SLEEP {secs}\r\n").as_bytes())
        .unwrap();
    let mut probe = std::net::TcpStream::connect(("127.0.0.1", r.port)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    probe.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 7];
    let e = probe.read_exact(&mut buf).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{e}"
    );
    s
}

#[test]
fn the_reactor_stays_responsive_while_redis_sleeps() {
    let r = RedisProc::start(false);
    let (s, _d) = r.chat(&["--redis-timeout-ms", "5000"]);
    let mut a = online(&s, 1);
    let mut b = s.connect();
    assert_eq!(b.register(2, "pw2", "two").data["code"], 200);

    let _sleeper = put_redis_to_sleep(&r, 2);
    b.send("LoginMes", json!({"userId":2,"userPwd":"pw2"}));
    // While the login waits on Redis, a logged-in client is answered at once...
    let started = Instant::now();
    a.send("PingMes", json!({}));
    assert_eq!(a.recv().kind, "PongMes");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    // ...before the login has its answer.
    b.stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let pending = b.stream.peek(&mut byte).unwrap_err();
    assert_eq!(pending.kind(), ErrorKind::WouldBlock);
    b.stream.set_nonblocking(false).unwrap();
    // The login completes once Redis wakes up.
    assert_eq!(b.recv_until("LoginResMes").0.data["code"], 200);
}

#[test]
fn a_redis_slower_than_the_timeout_gets_a_clear_error_in_bounded_time() {
    let r = RedisProc::start(false);
    let (s, _d) = r.chat(&["--redis-timeout-ms", "500"]);
    let mut a = online(&s, 1);
    let _sleeper = put_redis_to_sleep(&r, 3);
    let started = Instant::now();
    a.send("SmsPrivateMes", json!({"toUserId":2,"content":"x"}));
    // 503 (not stored) when the storage connection had been idle for 10 s or had
    // none yet, so a PING went first; 504 (may be stored) when another job had used
    // it within 10 s: the write itself was sent, then its answer did not come. Both
    // are clear answers; which one depends on the jobs that ran before.
    let code = a.recv().data["code"].clone();
    assert!(code == 503 || code == 504, "{code}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    a.expect_nothing_pending();
}

#[test]
fn a_message_sent_while_redis_is_paused_is_uncertain_and_a_resend_stores_it_once() {
    use std::io::Read;
    let r = RedisProc::start(false);
    let (mut s, _d) = r.chat(&["--redis-timeout-ms", "500", "--log-level", "debug"]);
    let mut a = online(&s, 1);
    let mut b = s.connect();
    assert_eq!(b.register(2, "pw2", "two").data["code"], 200);
    // The storage worker has a connection, so the paused Redis gets the command.
    a.send("SmsPrivateMes", json!({"toUserId":2,"content":"before"}));
    assert_eq!(a.recv().data["code"], 202);
    let wake = |sleeper: &mut std::net::TcpStream| {
        // Redis wakes: its answer to DEBUG SLEEP.
        let mut ok = [0u8; 5];
        sleeper.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"+OK\r\n");
    };
    // One storage job of the server's own can meet the paused Redis first: the check
    // for bans that follows each presence snapshot of the cluster link, when one comes
    // late (a slow start) with user 1 already online. Its timeout drops the worker's
    // connection, so the write cannot even connect and is certainly not stored (503).
    // Then, once that check has gone through with Redis awake, the worker connects
    // again (a message stored) and Redis is paused again.
    let mut again = 0;
    let (frame, id, mut sleeper) = loop {
        let mut sleeper = put_redis_to_sleep(&r, 2);
        let id = format!("p-{again}");
        let frame = json!({"toUserId":2,"content":"paused","msgId":id});
        a.send("SmsPrivateMes", frame.clone());
        let res = a.recv();
        assert_eq!(res.data["msgId"], id.as_str());
        // Not "not stored": the command sits in Redis and runs when it wakes.
        if res.data["code"] == 504 {
            break (frame, id, sleeper);
        }
        assert_eq!(res.data["code"], 503, "{res:?}");
        assert!(again < 2, "refused as not stored {} times", again + 1);
        s.wait_log("users online not checked for bans");
        s.log_lines.clear();
        wake(&mut sleeper);
        s.wait_log("users online checked for bans");
        a.send("SmsPrivateMes", json!({"toUserId":2,"content":"again"}));
        assert_eq!(a.recv().data["code"], 202);
        again += 1;
    };
    // Redis wakes, and the client resends.
    wake(&mut sleeper);
    a.send("SmsPrivateMes", frame);
    let res = a.recv();
    assert_eq!(res.data["code"], 202, "{res:?}");
    assert_eq!(res.data["msgId"], id.as_str());
    assert_eq!(b.login(2, "pw2").data["code"], 200);
    assert_eq!(b.recv().data["content"], "before");
    for _ in 0..again {
        assert_eq!(b.recv().data["content"], "again");
    }
    assert_eq!(b.recv().data["content"], "paused");
    b.expect_nothing_pending();
}

#[test]
fn store_handles_see_each_others_writes() {
    let r = RedisProc::start(false);
    let mut s1 = RedisStore::new(&r.url(), RedisTimeouts::default()).unwrap();
    let mut s2 = RedisStore::new(&r.url(), RedisTimeouts::default()).unwrap();
    let rec = chat::users::UserRecord {
        id: 5,
        name: "five".into(),
        pwd_hash: "$argon2id$x".into(),
        ..Default::default()
    };
    assert!(s1.create_user(&rec).unwrap());
    assert_eq!(s2.get_user(5).unwrap().unwrap().name, "five");
}

/// Runs `chat-server` with `args` to its end; its standard output and error.
fn run_cli(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(FAST_HASH)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {text}");
    text
}

/// A server on a Redis that wants a password, given in the URL, logging at debug
/// level: nothing it prints, from its start to its exit, nor what the `users` command
/// and `--help` print, holds the password.
#[test]
fn the_redis_password_never_reaches_the_log() {
    use std::io::BufRead;
    const SECRET: &str = "s3cret-pw";
    let r = RedisProc::start(false);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(SECRET)
        .query(&mut r.client())
        .unwrap();
    for (id, url) in [
        (1, format!("redis://:{SECRET}@127.0.0.1:{}/0", r.port)),
        (
            2,
            format!("redis://default:{SECRET}@127.0.0.1:{}/0", r.port),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = ServerProc::spawn(
            dir.path(),
            "127.0.0.1:0",
            &["--redis", &url, "--log-level", "debug"],
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut log = Vec::new();
        let addr = loop {
            let line = rx.recv_timeout(WAIT).expect("a listening line");
            log.push(line.clone());
            if let Some((_, a)) = line.rsplit_once(": listening on ") {
                break a.trim().parse().unwrap();
            }
        };
        let mut a = SeedClient::connect(addr);
        assert_eq!(a.register(id, "pw1", "ann").data["code"], 200);
        let mut a = SeedClient::connect(addr);
        assert_eq!(a.login(id, "pw1").data["code"], 200);
        a.send("SmsMes", json!({"content":"hello"}));
        a.send("SmsPrivateMes", json!({"toUserId":id,"content":"to me"}));
        assert_eq!(a.recv_until("SmsResMes").0.data["code"], 200);
        let list = run_cli(&["users", "list", "--redis", &url]);
        assert!(list.contains("ann"), "{list}");
        assert!(!list.contains(SECRET), "{list}");
        // SAFETY: our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert!(child.wait().unwrap().success());
        // Everything it wrote, to the end of its standard error.
        log.extend(rx.iter());
        let log = log.join("\n");
        assert!(log.contains("data in Redis at"), "{log}");
        assert!(log.contains("***@127.0.0.1"), "{log}");
        assert!(!log.contains(SECRET), "the password is in the log:\n{log}");
    }
    let help = run_cli(&["--help"]);
    assert!(!help.contains(SECRET));
}
