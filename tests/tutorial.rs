//! A client that behaves like the seed's own Go client: it declares no extension,
//! reads each frame body into a buffer of 8,096 bytes (a longer one would crash it),
//! and, once logged in, shows only `SmsMes` and `NotifyUserStatusMes` (anything else
//! it prints as an unknown message type, which shows nothing of what it said). Every
//! private message and every refusal must reach it as something it shows.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// The seed client's read buffer.
const SEED_BUF: usize = 8096;

/// What the seed's client shows once logged in: group messages (`SmsMes`: who said
/// it, and what) and status notices.
#[derive(Debug, Clone, PartialEq)]
enum Shown {
    Sms { user_id: i64, content: String },
    Status { user_id: i64, status: i64 },
}

/// A reader with the seed client's limits: it fails the test on a frame it could not
/// read (over 8,096 bytes) or could not show (a type it does not know).
struct Tutorial {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Tutorial {
    fn connect(s: &ServerProc) -> Tutorial {
        Tutorial {
            stream: s.connect().stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, t: &str, inner: Value) {
        self.stream.write_all(&seed_frame(t, &inner)).unwrap();
    }

    /// The next whole frame, if one comes within `wait`: (type, inner JSON).
    fn frame_within(&mut self, wait: Duration) -> Option<(String, Value)> {
        let until = Instant::now() + wait;
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                assert!(
                    len <= SEED_BUF,
                    "a frame of {len} bytes: the seed's client cannot read it"
                );
                if self.buf.len() >= 4 + len {
                    let body: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
                    let g = Got::from_envelope(&body);
                    return Some((g.kind, g.data));
                }
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; SEED_BUF];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None;
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// The answer to a login or registration, read as the seed's client reads it.
    fn answer(&mut self, kind: &str) -> Value {
        let (k, data) = self.frame_within(WAIT).expect("an answer");
        assert_eq!(k, kind, "{data}");
        data
    }

    /// The next frame, as the seed's client shows it once logged in; fails on a type
    /// it does not know.
    fn shown_within(&mut self, wait: Duration) -> Option<Shown> {
        let (kind, d) = self.frame_within(wait)?;
        Some(match kind.as_str() {
            "SmsMes" => Shown::Sms {
                user_id: d["userId"].as_i64().unwrap(),
                content: d["content"].as_str().unwrap().to_string(),
            },
            "NotifyUserStatusMes" => Shown::Status {
                user_id: d["userId"].as_i64().unwrap(),
                status: d["status"].as_i64().unwrap(),
            },
            other => panic!("the seed's client cannot show a {other}: {d}"),
        })
    }

    /// The next message shown (status notices skipped).
    fn next_sms(&mut self) -> (i64, String) {
        loop {
            match self.shown_within(WAIT).expect("a message") {
                Shown::Sms { user_id, content } => return (user_id, content),
                Shown::Status { .. } => {}
            }
        }
    }
}

#[test]
fn a_tutorial_client_reads_every_private_message_and_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProc::start(dir.path(), &[]);
    // The sender: this project's kind of client (extensions declared).
    let mut sender = s.connect();
    sender.join(1);

    // Registered by the tutorial's client, then offline.
    let mut t = Tutorial::connect(&s);
    t.send(
        "RegisterMes",
        json!({"user": {"userId": 2, "userPwd": "pw2", "userName": "u2", "userStatus": 0, "sex": ""}}),
    );
    assert_eq!(t.answer("RegisterResMes")["code"], 200);

    // Stored while it is offline.
    sender.send(
        "SmsPrivateMes",
        json!({"toUserId": 2, "content": "while you were out"}),
    );
    let (r, _) = sender.recv_until("SmsResMes");
    assert_eq!(r.data["code"], 202, "{r:?}");

    // It logs in as the seed's client does: it reads the stored message.
    t.send(
        "LoginMes",
        json!({"userId": 2, "userPwd": "pw2", "userName": ""}),
    );
    assert_eq!(t.answer("LoginResMes")["code"], 200);
    assert_eq!(
        t.next_sms(),
        (
            1,
            "[private from u1 (1), sent while you were offline] while you were out".to_string()
        )
    );

    // Live: shown, then answered 200.
    sender.send(
        "SmsPrivateMes",
        json!({"toUserId": 2, "content": "hi there"}),
    );
    assert_eq!(
        t.next_sms(),
        (1, "[private from u1 (1)] hi there".to_string())
    );
    let (r, _) = sender.recv_until("SmsResMes");
    assert_eq!(r.data["code"], 200, "{r:?}");

    // Too long for it: cut to what it reads, and the sender is told (206).
    let long = "é".repeat(6000);
    sender.send("SmsPrivateMes", json!({"toUserId": 2, "content": long}));
    let (id, content) = t.next_sms();
    assert_eq!(id, 1);
    assert!(content.starts_with("[private from u1 (1)] éé"), "{content}");
    assert!(content.contains("cut short"), "{content}");
    let (r, _) = sender.recv_until("SmsResMes");
    assert_eq!(r.data["code"], 206, "{r:?}");

    // A refusal: a sentence from the server.
    t.send(
        "SmsMes",
        json!({"content": "", "userId": 2, "userPwd": "", "userName": "", "userStatus": 0, "sex": ""}),
    );
    assert_eq!(
        t.next_sms(),
        (0, "[server notice 400] empty message".to_string())
    );

    // A paste of 40 lines: each arrives, or is refused in words it shows.
    const LINES: usize = 40;
    for i in 0..LINES {
        t.send(
            "SmsMes",
            json!({"content": format!("line {i}"), "userId": 2, "userPwd": "", "userName": "", "userStatus": 0, "sex": ""}),
        );
    }
    // The sender's socket, read the same way (its frames are small).
    let mut seen = Tutorial {
        stream: sender.stream.try_clone().unwrap(),
        buf: Vec::new(),
    };
    let (mut delivered, mut refused) = (0, 0);
    let give_up = Instant::now() + WAIT;
    while delivered + refused < LINES && Instant::now() < give_up {
        if let Some((kind, d)) = seen.frame_within(Duration::from_millis(20))
            && kind == "SmsMes"
            && d["userId"] == 2
        {
            delivered += 1;
        }
        match t.shown_within(Duration::from_millis(20)) {
            Some(Shown::Sms {
                user_id: 0,
                content,
            }) => {
                assert!(content.starts_with("[server notice 429] "), "{content}");
                refused += 1;
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
    }
    assert_eq!(
        delivered + refused,
        LINES,
        "every line delivered or refused in words: {delivered} delivered, {refused} refused"
    );

    // Logged in elsewhere: told so, in words, then closed.
    let mut again = Tutorial::connect(&s);
    again.send(
        "LoginMes",
        json!({"userId": 2, "userPwd": "pw2", "userName": ""}),
    );
    assert_eq!(again.answer("LoginResMes")["code"], 200);
    let mut told = false;
    while let Some(shown) = t.shown_within(WAIT) {
        if let Shown::Sms {
            user_id: 0,
            content,
        } = shown
        {
            told |= content.starts_with("[server notice 409] ");
        }
    }
    assert!(told, "the replaced session is told why it closes");
}
