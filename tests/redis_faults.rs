//! Lost answers from Redis: a TCP proxy of the test's own, between the chat server
//! and a `redis-server` started by the test, drops a connection right after a command
//! went through and ran (its reply lost), or holds replies back (the server times
//! out). A write whose answer was lost must be neither repeated blindly (stored twice,
//! "user id already taken") nor reported as not done: it is checked, or reported as
//! uncertain (504), and a resend with the same `msgId` stores nothing twice.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chat::store::redis::{RedisStore, RedisTimeouts};
use chat::store::suite::msg;
use chat::store::{OfflineId, Store, StoreError};
use chat::users::UserRecord;
use common::*;
use serde_json::json;

#[derive(Default)]
struct Faults {
    /// Drop the next connection that sends a command containing this, once its reply
    /// has come back from Redis (so the command ran), without passing the reply on.
    drop_after: Option<String>,
    /// Hold back every reply on a connection that sent a command containing this,
    /// until released.
    stall: Option<String>,
    drops: usize,
    stalls: usize,
}

struct Proxy {
    port: u16,
    state: Arc<(Mutex<Faults>, Condvar)>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state: Arc<(Mutex<Faults>, Condvar)> = Arc::default();
        let st = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                pipe(client, server, st.clone());
            }
        });
        Proxy { port, state }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.state.0.lock().unwrap()
    }

    fn drop_reply_once(&self, pattern: &str) {
        self.faults().drop_after = Some(pattern.into());
    }

    fn stall_replies(&self, pattern: &str) {
        self.faults().stall = Some(pattern.into());
    }

    /// Lets held replies go (to connections that have mostly gone by then).
    fn release(&self) {
        self.faults().stall = None;
        self.state.1.notify_all();
    }

    fn drops(&self) -> usize {
        self.faults().drops
    }

    fn stalls(&self) -> usize {
        self.faults().stalls
    }
}

/// One proxied connection: a thread each way.
fn pipe(mut client: TcpStream, mut server: TcpStream, st: Arc<(Mutex<Faults>, Condvar)>) {
    let swallow = Arc::new(AtomicBool::new(false));
    let hold = Arc::new(AtomicBool::new(false));
    let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (sw, ho, st2) = (swallow.clone(), hold.clone(), st.clone());
    // Client to Redis: look at each command on its way.
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let n = match c_in.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Matched over the end of the previous read too, in case a command was split.
            tail.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&tail).into_owned();
            {
                let mut f = st2.0.lock().unwrap();
                if f.drop_after
                    .as_ref()
                    .is_some_and(|p| text.contains(p.as_str()))
                {
                    f.drop_after = None;
                    sw.store(true, Ordering::SeqCst);
                }
                if f.stall.as_ref().is_some_and(|p| text.contains(p.as_str())) {
                    f.stalls += 1;
                    ho.store(true, Ordering::SeqCst);
                }
            }
            let keep = tail.len().saturating_sub(256);
            tail.drain(..keep);
            if s_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_out.shutdown(Shutdown::Write);
    });
    // Redis to client: drop or hold replies as told.
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match server.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if swallow.load(Ordering::SeqCst) {
                // The command ran; its reply goes nowhere, and the connection drops.
                st.0.lock().unwrap().drops += 1;
                break;
            }
            if hold.load(Ordering::SeqCst) {
                let (m, cv) = &*st;
                let mut f = m.lock().unwrap();
                while f.stall.is_some() {
                    f = cv.wait(f).unwrap();
                }
            }
            if client.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    });
}

#[test]
fn the_store_resolves_a_lost_answer_by_asking_again() {
    let r = RedisProc::start(false);
    let p = Proxy::start(r.port);
    let mut s = RedisStore::new(&p.url(), RedisTimeouts::default()).unwrap();
    let rec = UserRecord {
        id: 1,
        name: "lost-reply-user".into(),
        pwd_hash: "$argon2id$x".into(),
        reg_token: "tok-1".into(),
        ..Default::default()
    };
    p.drop_reply_once("lost-reply-user");
    assert_eq!(s.create_user(&rec), Ok(true), "created, not 'taken'");
    assert_eq!(p.drops(), 1);
    assert_eq!(s.get_user(1).unwrap().unwrap(), rec);

    p.drop_reply_once("lost-reply-msg");
    let id = OfflineId::fresh();
    let seq = s
        .push_offline(&msg(2, 1, "lost-reply-msg"), &id, 0)
        .unwrap();
    assert!(seq.is_some());
    assert_eq!(p.drops(), 2);
    assert_eq!(r.llen("offline:1"), 1, "stored once");
    assert_eq!(
        s.push_offline(&msg(2, 1, "lost-reply-msg"), &id, 0)
            .unwrap(),
        seq
    );
    assert_eq!(r.llen("offline:1"), 1);
}

#[test]
fn a_write_whose_answer_never_comes_is_uncertain_not_unavailable() {
    let r = RedisProc::start(false);
    let p = Proxy::start(r.port);
    let t = RedisTimeouts {
        io: Duration::from_millis(300),
        ..RedisTimeouts::default()
    };
    let mut s = RedisStore::new(&p.url(), t).unwrap();
    let rec = UserRecord {
        id: 1,
        name: "u".into(),
        pwd_hash: "$argon2id$x".into(),
        ..Default::default()
    };
    assert_eq!(s.create_user(&rec), Ok(true));
    p.stall_replies("stalled-msg");
    let id = OfflineId::Client("m-1".into());
    let e = s
        .push_offline(&msg(2, 1, "stalled-msg"), &id, 0)
        .unwrap_err();
    assert!(matches!(e, StoreError::Uncertain(_)), "{e}");
    // Sent, then sent again on a fresh connection: both held.
    assert_eq!(p.stalls(), 2);
    p.release();
    // It ran (twice), and is stored once; the resend finds it.
    let seq = s.push_offline(&msg(2, 1, "stalled-msg"), &id, 0).unwrap();
    assert!(seq.is_some());
    assert_eq!(r.llen("offline:1"), 1);
}

#[test]
fn a_registration_through_a_dropped_reply_ends_in_200() {
    let r = RedisProc::start(false);
    let p = Proxy::start(r.port);
    let (s, _d) = start_on_redis(&p.url(), &[]);
    let mut c = s.connect();
    // The user's name is in the command that creates the record, and only there.
    p.drop_reply_once("dropped-reply-name");
    let res = c.register(5, "pw5", "dropped-reply-name");
    assert_eq!(res.data["code"], 200, "{res:?}");
    assert_eq!(p.drops(), 1, "the reply was really lost");
    assert_eq!(c.login(5, "pw5").data["code"], 200);
}

#[test]
fn a_private_message_through_a_dropped_reply_is_stored_and_delivered_once() {
    let r = RedisProc::start(false);
    let p = Proxy::start(r.port);
    let (s, _d) = start_on_redis(&p.url(), &[]);
    let mut a = online(&s, 1);
    let mut b = s.connect();
    assert_eq!(b.register(2, "pw2", "two").data["code"], 200);
    p.drop_reply_once("dropped-reply-text");
    a.send(
        "SmsPrivateMes",
        json!({"toUserId":2,"content":"dropped-reply-text"}),
    );
    let res = a.recv();
    assert_eq!(res.data["code"], 202, "{res:?}");
    assert_eq!(p.drops(), 1, "the reply was really lost");
    assert_eq!(r.llen("offline:2"), 1, "stored once");
    assert_eq!(b.login(2, "pw2").data["code"], 200);
    assert_eq!(b.recv().data["content"], "dropped-reply-text");
    b.expect_nothing_pending();
}

#[test]
fn a_stalled_reply_gives_504_and_a_resend_with_the_msg_id_is_delivered_once() {
    let r = RedisProc::start(false);
    let p = Proxy::start(r.port);
    let (s, _d) = start_on_redis(&p.url(), &["--redis-timeout-ms", "500"]);
    let mut a = online(&s, 1);
    let mut b = s.connect();
    assert_eq!(b.register(2, "pw2", "two").data["code"], 200);
    p.stall_replies("stalled-reply-text");
    let frame = json!({"toUserId":2,"content":"stalled-reply-text","msgId":"m-1"});
    a.send("SmsPrivateMes", frame.clone());
    let res = a.recv();
    assert_eq!(res.data["code"], 504, "{res:?}");
    assert_eq!(res.data["msgId"], "m-1");
    assert!(
        res.data["error"]
            .as_str()
            .unwrap()
            .contains("may or may not"),
        "{res:?}"
    );
    // Redis answers again: the client resends with the same msgId.
    p.release();
    a.send("SmsPrivateMes", frame);
    let res = a.recv();
    assert_eq!(res.data["code"], 202, "{res:?}");
    assert_eq!(res.data["msgId"], "m-1");
    assert_eq!(r.llen("offline:2"), 1, "stored once");
    assert_eq!(b.login(2, "pw2").data["code"], 200);
    assert_eq!(b.recv().data["content"], "stalled-reply-text");
    b.expect_nothing_pending();
}

#[test]
fn a_history_batch_whose_answer_was_lost_is_appended_once() {
    let r = RedisProc::start(false);
    let p = Proxy::start(r.port);
    let mut s = RedisStore::new(&p.url(), RedisTimeouts::default()).unwrap();
    let batch = [
        chat::store::suite::entry(1, None, "lost-history-reply"),
        chat::store::suite::entry(1, Some(2), "and a private one"),
    ];
    p.drop_reply_once("lost-history-reply");
    assert_eq!(s.append_history(&batch, 10), Ok(()));
    assert_eq!(p.drops(), 1, "the reply was really lost");
    assert_eq!(r.zcard("history:group"), 1, "appended once, not twice");
    assert_eq!(r.zcard("history:pm:1:2"), 1);
    let (got, more) = s.read_history(chat::store::Conv::Group, 0, 10).unwrap();
    assert_eq!((got.len(), got[0].id, more), (1, 1, false));
}
