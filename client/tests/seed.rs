//! The real `chat` binary, driven through a pipe, against stand-ins written here: one
//! that answers exactly as the seed's Go server does (no extensions, `"UsersId":null`
//! on a failed login, 505 for a taken id, silence for every type it does not know),
//! and scripted ones that send what a server may send but the seed never does
//! (unreadable replies, `retryAfter`).
//!
//! No test measures time. Each asserts which sentences the client prints: a client that
//! waited out its 30 s reply timeout would print "no answer ... in time" instead of the
//! sentence expected, and the test fails. Waits are for output lines, the client's exit
//! or the stand-in's record of a closed connection, never for a while to pass.

mod common;

use common::{Chat, Peer, read_frame, write_frame};

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

// ---------------------------------------------------------------------------------
// The stand-in server: a std listener, a thread per connection, every frame received
// recorded (before it is answered) for the test to check.

/// What the stand-in saw, in order.
#[derive(Debug, Clone)]
enum Seen {
    Opened,
    Frame {
        kind: String,
        data: Value,
    },
    /// A frame longer than the stand-in reads (its length): it went down for it.
    TooLarge(usize),
    Closed,
}

#[derive(Default)]
struct Shared {
    /// Write halves of the open connections, by connection number.
    conns: Mutex<BTreeMap<usize, TcpStream>>,
    /// The seed's user table: id → password.
    users: Mutex<BTreeMap<i64, String>>,
    /// The seed's online map: user id → connection number. Like the seed's, never
    /// cleaned when a connection ends.
    online: Mutex<BTreeMap<i64, usize>>,
}

impl Shared {
    fn send(&self, conn: usize, kind: &str, inner: &str) {
        if let Some(s) = self.conns.lock().unwrap().get_mut(&conn) {
            let _ = write_frame(s, kind, inner);
        }
    }
}

type Responder = dyn Fn(&Shared, usize, &str, &str) + Send + Sync;

struct Stand {
    addr: SocketAddr,
    shared: Arc<Shared>,
    seen: Receiver<Seen>,
    /// Everything taken from `seen` so far.
    log: Vec<Seen>,
}

impl Stand {
    fn start(respond: Arc<Responder>) -> Stand {
        Stand::start_reading_at_most(respond, usize::MAX)
    }

    /// A stand-in that, like the seed's server (its reader's buffer is 8,096 bytes),
    /// fails on a frame body longer than `max`: it closes every connection.
    fn start_reading_at_most(respond: Arc<Responder>, max: usize) -> Stand {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let (tx, seen) = mpsc::channel();
        let sh = shared.clone();
        std::thread::spawn(move || {
            for (n, s) in listener.incoming().enumerate() {
                let Ok(s) = s else { continue };
                let _ = tx.send(Seen::Opened);
                sh.conns.lock().unwrap().insert(n, s.try_clone().unwrap());
                let (sh, tx, respond) = (sh.clone(), tx.clone(), respond.clone());
                std::thread::spawn(move || serve(n, s, &sh, &tx, &*respond, max));
            }
        });
        Stand {
            addr,
            shared,
            seen,
            log: Vec::new(),
        }
    }

    fn with_users(self, users: &[(i64, &str)]) -> Stand {
        let mut u = self.shared.users.lock().unwrap();
        for (id, pw) in users {
            u.insert(*id, pw.to_string());
        }
        drop(u);
        self
    }

    /// Waits until every connection opened so far has been closed (so everything the
    /// clients sent has been recorded); returns the frames received, as (type, data).
    /// Call it once the clients are done: each connection they made was answered, so
    /// its `Opened` is already queued.
    fn frames_once_all_closed(&mut self) -> Vec<(String, Value)> {
        self.log.extend(self.seen.try_iter());
        loop {
            let opened = self
                .log
                .iter()
                .filter(|s| matches!(s, Seen::Opened))
                .count();
            let closed = self
                .log
                .iter()
                .filter(|s| matches!(s, Seen::Closed))
                .count();
            if opened > 0 && opened == closed {
                break;
            }
            self.log.push(self.seen.recv().expect("the stand-in runs"));
        }
        self.log
            .iter()
            .filter_map(|s| match s {
                Seen::Frame { kind, data, .. } => Some((kind.clone(), data.clone())),
                _ => None,
            })
            .collect()
    }
}

fn serve(
    n: usize,
    mut s: TcpStream,
    sh: &Shared,
    tx: &Sender<Seen>,
    respond: &Responder,
    max: usize,
) {
    loop {
        let mut len = [0; 4];
        if s.read_exact(&mut len).is_err() {
            break;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > max {
            let _ = tx.send(Seen::TooLarge(len));
            // The seed's server panics: everyone is disconnected.
            for c in sh.conns.lock().unwrap().values() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
            break;
        }
        // The frame again, its length first, for the usual reader.
        let mut frame = (len as u32).to_be_bytes().to_vec();
        frame.resize(4 + len, 0);
        if s.read_exact(&mut frame[4..]).is_err() {
            break;
        }
        let Some((kind, data)) = read_frame(&mut &frame[..]) else {
            break;
        };
        let v = serde_json::from_str(&data).unwrap_or(Value::Null);
        let _ = tx.send(Seen::Frame {
            kind: kind.clone(),
            data: v,
        });
        respond(sh, n, &kind, &data);
    }
    sh.conns.lock().unwrap().remove(&n);
    let _ = tx.send(Seen::Closed);
}

/// Ids the seed's stand-in treats specially: registering this one fails in storage.
const BROKEN_ID: i64 = 666;

/// The seed's server (its `serverProcessMes`): login, register and group messages;
/// anything else is logged on its console and not answered. The replies are the bytes
/// Go's `json.Marshal` writes for the seed's structs (field order, `null` for a nil
/// slice, the seed's own error texts).
fn seed(sh: &Shared, n: usize, kind: &str, data: &str) {
    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    match kind {
        "LoginMes" => {
            let id = v["userId"].as_i64().unwrap_or(0);
            let pwd = v["userPwd"].as_str().unwrap_or("");
            let known = sh.users.lock().unwrap().get(&id).cloned();
            let reply = match known {
                None => r#"{"code":500,"UsersId":null,"error":"用户不存在.."}"#.to_string(),
                Some(p) if p != pwd => {
                    r#"{"code":403,"UsersId":null,"error":"密码不正确"}"#.to_string()
                }
                Some(_) => {
                    // Others first (NotifyOthersOnlineUser), then the reply listing every
                    // online id, the caller included.
                    let others: Vec<usize> = {
                        let mut online = sh.online.lock().unwrap();
                        let others = online.values().copied().filter(|c| *c != n).collect();
                        online.insert(id, n);
                        others
                    };
                    for c in others {
                        sh.send(
                            c,
                            "NotifyUserStatusMes",
                            &format!(r#"{{"userId":{id},"status":0}}"#),
                        );
                    }
                    let ids: Vec<i64> = sh.online.lock().unwrap().keys().copied().collect();
                    format!(r#"{{"code":200,"UsersId":{},"error":""}}"#, json!(ids))
                }
            };
            sh.send(n, "LoginResMes", &reply);
        }
        "RegisterMes" => {
            let id = v["user"]["userId"].as_i64().unwrap_or(0);
            let pwd = v["user"]["userPwd"].as_str().unwrap_or("").to_string();
            let mut users = sh.users.lock().unwrap();
            let reply = match users.entry(id) {
                Entry::Occupied(_) => r#"{"code":505,"error":"用户已经存在..."}"#,
                Entry::Vacant(_) if id == BROKEN_ID => {
                    r#"{"code":506,"error":"注册发生未知错误..."}"#
                }
                Entry::Vacant(e) => {
                    e.insert(pwd);
                    r#"{"code":200,"error":""}"#
                }
            };
            drop(users);
            sh.send(n, "RegisterResMes", reply);
        }
        "SmsMes" => {
            // Forwarded as received to every other online user.
            let others: Vec<usize> = sh
                .online
                .lock()
                .unwrap()
                .values()
                .copied()
                .filter(|c| *c != n)
                .collect();
            for c in others {
                sh.send(c, "SmsMes", data);
            }
        }
        _ => {} // "消息类型不存在，无法处理..." on the server's console; nothing sent.
    }
}

/// Runs the client on a whole script (stdin closed after it); returns its output, after
/// checking that it exited with status 0 and without a panic.
fn run_script(addr: SocketAddr, lines: &[&str]) -> String {
    let mut chat = Chat::start(&addr.to_string());
    chat.type_lines(lines);
    let (code, out, err) = chat.finish();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    out
}

/// Asserts that `out` holds these sentences, in this order.
fn assert_in_order(out: &str, sentences: &[&str]) {
    let mut rest = out;
    for s in sentences {
        match rest.find(s) {
            Some(at) => rest = &rest[at + s.len()..],
            None => panic!("expected {s:?} (after the ones before it) in:\n{out}"),
        }
    }
}

// ---------------------------------------------------------------------------------

#[test]
fn seed_refusals_read_as_sentences_and_each_request_ends_at_once() {
    let mut stand = Stand::start(Arc::new(seed)).with_users(&[(100, "pw100")]);
    let out = run_script(
        stand.addr,
        &[
            "1", "999", "x", // no such user: 500 with "UsersId":null
            "1", "100", "wrong", // wrong password: 403 with "UsersId":null
            "2", "100", "pw", "someone", // taken: 505 "用户已经存在..."
            "2", "666", "pw", "broken", // storage error: 506
            "2", "300", "pw", "cat", // 200
            "3",
        ],
    );
    assert_in_order(
        &out,
        &[
            "Login failed: there is no user 999.",
            "Login failed: wrong password.",
            "User id 100 is already taken.",
            "Not registered: the server had a problem (注册发生未知错误...). Try again later.",
            "Registered as user 300. You can log in now.",
            "Goodbye.",
        ],
    );
    for bad in ["cannot read", "could not be read", "in time", "Unexpected"] {
        assert!(!out.contains(bad), "{bad:?} in:\n{out}");
    }

    // Every login and registration declared the size of frame the client reads.
    let frames = stand.frames_once_all_closed();
    let asks: Vec<&(String, Value)> = frames
        .iter()
        .filter(|(k, _)| k == "LoginMes" || k == "RegisterMes")
        .collect();
    assert_eq!(asks.len(), 5, "{frames:?}");
    for (k, d) in asks {
        let max = d["maxFrame"].as_u64();
        assert!(
            max.is_some_and(|m| m > chat::proto::SEED_MAX_FRAME as u64),
            "{k} without a usable maxFrame: {d}"
        );
    }
}

#[test]
fn seed_session_lists_from_the_login_and_notices_and_refuses_private_messages() {
    let mut stand =
        Stand::start(Arc::new(seed)).with_users(&[(100, "pw100"), (200, "pw200"), (300, "pw300")]);
    let mut peer = Peer::login(stand.addr, 200, "pw200");

    let mut chat = Chat::start(&stand.addr.to_string());
    chat.type_lines(&["1", "100", "pw100"]);
    chat.expect("Logged in as user 100.");
    chat.expect("group messages only");
    chat.expect("Online now (2): user 100, user 200 (this server does not report people leaving)");
    let n = peer.recv_kind("NotifyUserStatusMes");
    assert_eq!(
        (n["userId"].as_i64(), n["status"].as_i64()),
        (Some(100), Some(0))
    );

    // Group messages both ways.
    chat.type_lines(&["2", "hello seed"]);
    chat.expect("Sent to everyone online.");
    let m = peer.recv_kind("SmsMes");
    assert_eq!(
        (m["content"].as_str(), m["userId"].as_i64()),
        (Some("hello seed"), Some(100))
    );
    peer.send("SmsMes", json!({"content": "hi from 200", "userId": 200}));
    chat.expect("[group] user 200: hi from 200");

    // Private messages: refused at once, nothing sent. The seed's server would not
    // answer one, so a client that sent it would wait and then say "in time".
    chat.type_lines(&["3"]);
    chat.expect("Private messages are not supported by this server");

    // Someone comes online: the notice keeps the list current, asked for nothing.
    let _third = Peer::login(stand.addr, 300, "pw300");
    chat.expect("* user 300 is online");
    chat.type_lines(&["1"]);
    // (The line may start with the prompt it answers.)
    let line = chat.expect("Online now (");
    assert!(
        line.ends_with(
            "Online now (3): user 100, user 200, user 300 \
             (this server does not report people leaving)"
        ),
        "{line}"
    );

    chat.type_lines(&["4"]);
    chat.expect("Logged out.");
    let (code, out, err) = chat.finish();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    for bad in ["cannot read", "could not be read", "in time", "Unexpected"] {
        assert!(!out.contains(bad), "{bad:?} in:\n{out}");
    }

    // The client sent the seed nothing it does not know.
    drop(peer);
    drop(_third);
    let frames = stand.frames_once_all_closed();
    let kinds: Vec<&str> = frames.iter().map(|(k, _)| k.as_str()).collect();
    for k in &kinds {
        assert!(
            ["LoginMes", "RegisterMes", "SmsMes"].contains(k),
            "sent {k} to the seed: {kinds:?}"
        );
    }
}

/// A stand-in that answers logins and registrations with fixed inner JSON, and keeps
/// quiet about anything else.
fn scripted(login: &'static [&'static str], register: &'static str) -> Arc<Responder> {
    let logins = AtomicUsize::new(0);
    Arc::new(
        move |sh: &Shared, n: usize, kind: &str, _data: &str| match kind {
            "LoginMes" => {
                let i = logins.fetch_add(1, Ordering::SeqCst).min(login.len() - 1);
                let (k, inner) = login[i].split_once(' ').unwrap();
                sh.send(n, k, inner);
            }
            "RegisterMes" => sh.send(n, "RegisterResMes", register),
            _ => {}
        },
    )
}

#[test]
fn an_unreadable_reply_ends_the_request_with_a_sentence() {
    let stand = Stand::start(scripted(
        &[r#"LoginResMes {"code":"200","UsersId":[]}"#],
        "this is not JSON",
    ));
    let out = run_script(stand.addr, &["1", "5", "pw", "2", "5", "pw", "five", "3"]);
    assert_in_order(
        &out,
        &[
            "Login failed: the server's answer could not be read (bad LoginResMes data",
            "Not registered: the server's answer could not be read (bad RegisterResMes data",
            "Goodbye.",
        ],
    );
    assert!(!out.contains("in time"), "{out}");
}

#[test]
fn busy_and_rate_limit_refusals_use_retry_after() {
    // Texts without the number: only `retryAfter` carries it.
    let stand = Stand::start(scripted(
        &[
            r#"LoginResMes {"code":505,"UsersId":[],"error":"server busy","retryAfter":7}"#,
            r#"ErrorResMes {"code":429,"error":"too many login attempts from your address; try again later","retryAfter":4}"#,
        ],
        r#"{"code":505,"error":"server busy","retryAfter":3}"#,
    ));
    let out = run_script(
        stand.addr,
        &["1", "5", "pw", "2", "5", "pw", "five", "1", "5", "pw", "3"],
    );
    assert_in_order(
        &out,
        &[
            "Login failed: the server is busy; try again in 7 s.",
            "Not registered: the server is busy; try again in 3 s.",
            "! Too fast: try again in 4 s.",
            "Goodbye.",
        ],
    );
}

/// Against a server that announces no limit and, like the seed's, fails on any frame
/// body over 8,096 bytes (closing everyone's connection), no message of any length
/// takes it down: what fits goes, anything longer is refused before it is sent, and
/// the session goes on.
#[test]
fn no_message_of_any_length_takes_the_seeds_server_down() {
    use chat::proto::{ClientMessage, SEED_MAX_FRAME, SmsMes};
    let mut stand = Stand::start_reading_at_most(Arc::new(seed), SEED_MAX_FRAME)
        .with_users(&[(100, "pw100"), (200, "pw200")]);
    let mut peer = Peer::login(stand.addr, 200, "pw200");
    // The longest message of `x` that fits, as the client writes a group message to
    // the seed's server (which names nobody: its user name is empty).
    let body = |n: usize| {
        let msg = ClientMessage::Sms(SmsMes {
            content: "x".repeat(n),
            user_id: 100,
            ..SmsMes::default()
        });
        msg.encode().len() - 4
    };
    let fits = (0..SEED_MAX_FRAME)
        .rev()
        .find(|&n| body(n) <= SEED_MAX_FRAME)
        .unwrap();
    let mut messages: Vec<(String, bool)> = vec![
        ("x".repeat(8_200), false),
        ("x".repeat(fits), true),
        ("x".repeat(fits + 1), false),
        ("x".repeat(70_000), false),
        // Twice encoded: a quote is 4 bytes, a control character 7; a CJK letter is 3.
        ("\"".repeat(2_100), false),
        ("\"".repeat(1_900), true),
        ("\u{1}".repeat(1_200), false),
        ("字".repeat(2_800), false),
        ("字".repeat(2_600), true),
        ("the last one".to_string(), true),
    ];
    let mut chat = Chat::start(&stand.addr.to_string());
    chat.type_lines(&["1", "100", "pw100"]);
    chat.expect("Logged in as user 100.");
    for (text, _) in &messages {
        chat.type_lines(&["2", text]);
    }
    chat.type_lines(&["4"]);
    let (code, out, err) = chat.finish();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!out.contains("lost"), "{out}");
    // Each message is either sent or refused with a sentence, as it fits or not.
    let said: Vec<bool> = out
        .lines()
        .filter_map(|l| {
            if l.contains("Sent to everyone online.") {
                Some(true)
            } else if l.contains("Not sent: it is too long for this server") {
                assert!(l.contains("at most 8,096;"), "{l}");
                Some(false)
            } else {
                None
            }
        })
        .collect();
    let want: Vec<bool> = messages.iter().map(|(_, sent)| *sent).collect();
    assert_eq!(said, want, "{out}");
    // What was sent arrived, in order; the seed's server never got a frame it fails on.
    messages.retain(|(_, sent)| *sent);
    for (text, _) in &messages {
        assert_eq!(
            peer.recv_kind("SmsMes")["content"].as_str(),
            Some(&text[..])
        );
    }
    drop(peer);
    stand.frames_once_all_closed();
    let too_large: Vec<usize> = stand
        .log
        .iter()
        .filter_map(|s| match s {
            Seen::TooLarge(len) => Some(*len),
            _ => None,
        })
        .collect();
    assert!(too_large.is_empty(), "{too_large:?}");
}
