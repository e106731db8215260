//! The connection to the server: blocking writes from the menu thread, and a reader
//! thread that prints everything the server pushes the moment it arrives and hands
//! replies to the menu thread. Plain TCP, or TLS (see `tls`).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use chat::proto::{self, ClientMessage, FrameDecoder, ParseError, ServerMessage, kind, status};

use crate::show;
use crate::tls::{self, TlsWriter};

/// The largest frame body this client reads; declared to the server as `maxFrame`.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// The largest frame body this client sends until a login reply announces the server's
/// own limit (`maxFrame`): what the seed's server reads (it fails on a longer body,
/// and takes every connection down with it). Our server takes at least this before
/// login too (8 KiB).
pub const SEND_LIMIT: usize = proto::SEED_MAX_FRAME;

/// What the reader thread passes to the menu thread.
pub enum Event {
    /// A reply to a request (or an error frame, which may be one).
    Reply(ServerMessage),
    /// A reply (or a frame that may be one) this client cannot read, described.
    Unreadable(String),
    /// The connection ended.
    Closed,
    /// The server's first bytes were a TLS record: that port speaks TLS.
    Tls,
}

/// Who is online, kept current from the server's pushes.
pub type Roster = Arc<Mutex<BTreeMap<i64, String>>>;

/// Where the menu thread's bytes go.
enum Out {
    Plain(TcpStream),
    Tls(TlsWriter),
}

impl Out {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Out::Plain(s) => s.write_all(bytes),
            Out::Tls(t) => t.write_all(bytes),
        }
    }
}

pub struct Link {
    /// The socket itself, to shut it down.
    stream: TcpStream,
    out: Out,
    events: Receiver<Event>,
    alive: Arc<AtomicBool>,
    /// Set before a deliberate close, so the reader does not report it as a loss.
    leaving: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    /// Tells the reader that a login reply was shown (see `read_loop`).
    shown: mpsc::SyncSender<()>,
    pub roster: Roster,
    /// The largest frame body the server takes from this client: [`SEND_LIMIT`], or
    /// what a login reply announced.
    send_limit: usize,
}

/// How long to wait for a reply (logins hash a password: allow for a busy server).
const REPLY_WAIT: Duration = Duration::from_secs(30);

pub enum WaitError {
    Closed,
    TimedOut,
    /// The reply came but could not be read: what was wrong with it.
    Unreadable(String),
    /// Not sent: the frame would be longer than the server takes.
    TooLarge(TooLarge),
    /// The server speaks TLS on that port (and the client did not).
    Tls,
}

/// Why a frame was not sent.
pub enum SendError {
    /// The connection is gone.
    Closed,
    /// The frame would be longer than the server takes: nothing was sent.
    TooLarge(TooLarge),
}

/// A frame that was not sent for its size: its body, and the most the server takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    pub len: usize,
    pub max: usize,
}

impl From<SendError> for WaitError {
    fn from(e: SendError) -> WaitError {
        match e {
            SendError::Closed => WaitError::Closed,
            SendError::TooLarge(t) => WaitError::TooLarge(t),
        }
    }
}

impl Link {
    /// Connects to `addr` (`HOST:PORT`); with `tls`, runs a TLS handshake that
    /// verifies the server's certificate for HOST (an error of kind `InvalidData`
    /// says why it was refused).
    pub fn connect(addr: &str, tls: Option<&Arc<rustls::ClientConfig>>) -> io::Result<Link> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address did not resolve");
        let mut stream = None;
        for a in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, Duration::from_secs(10)) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let stream = stream.ok_or(last)?;
        let _ = stream.set_nodelay(true);
        let (out, input): (Out, Box<dyn Read + Send>) = match tls {
            None => (
                Out::Plain(stream.try_clone()?),
                Box::new(stream.try_clone()?),
            ),
            Some(cfg) => {
                let (w, r) = tls::connect(stream.try_clone()?, cfg.clone(), tls::host_of(addr))?;
                (Out::Tls(w), Box::new(r))
            }
        };
        let (tx, events) = mpsc::channel();
        let (shown, shown_rx) = mpsc::sync_channel(1);
        let alive = Arc::new(AtomicBool::new(true));
        let leaving = Arc::new(AtomicBool::new(false));
        let roster: Roster = Arc::default();
        let reader = {
            let mut rs = input;
            let alive = alive.clone();
            let leaving = leaving.clone();
            let roster = roster.clone();
            std::thread::spawn(move || {
                let end = read_loop(&mut *rs, &tx, &roster, &shown_rx);
                alive.store(false, Ordering::SeqCst);
                if end == End::Tls {
                    // The request waiting for its reply says so.
                    let _ = tx.send(Event::Tls);
                    return;
                }
                if !leaving.load(Ordering::SeqCst) {
                    show::push("Connection to the server lost.");
                }
                let _ = tx.send(Event::Closed);
            })
        };
        Ok(Link {
            stream,
            out,
            events,
            alive,
            leaving,
            reader: Some(reader),
            shown,
            roster,
            send_limit: SEND_LIMIT,
        })
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Sends `msg`, unless its frame would be longer than the server takes: then
    /// nothing is sent (the server would close the connection, the seed's would fail
    /// altogether) and the connection goes on.
    pub fn send(&mut self, msg: &ClientMessage) -> Result<(), SendError> {
        // The frame exactly as it goes: its JSON is encoded twice, so quotes,
        // backslashes and control characters grow on the way, and every character
        // takes its UTF-8 bytes.
        let frame = msg.encode();
        let len = frame.len() - proto::HEADER_LEN;
        if len > self.send_limit {
            return Err(SendError::TooLarge(TooLarge {
                len,
                max: self.send_limit,
            }));
        }
        // Replies left over from an earlier request (say, an error that arrived after
        // we stopped waiting) must not be taken for this request's reply.
        while let Ok(ev) = self.events.try_recv() {
            match ev {
                Event::Closed | Event::Tls => return Err(SendError::Closed),
                // Nobody waited for it: say so now rather than never.
                Event::Unreadable(what) => show::push(&format!(
                    "The server sent a reply this client cannot read ({what})."
                )),
                Event::Reply(_) => {}
            }
        }
        self.out.write_all(&frame).map_err(|_| SendError::Closed)
    }

    /// Waits for the next reply.
    pub fn wait(&mut self) -> Result<ServerMessage, WaitError> {
        match self.events.recv_timeout(REPLY_WAIT) {
            Ok(Event::Reply(ServerMessage::LoginRes(r))) => {
                if r.code == proto::code::OK {
                    // From now on, the server's own limit (its `--max-frame`) if it
                    // says; the seed's server does not, and keeps to the seed's.
                    self.send_limit = r.max_frame.map_or(SEND_LIMIT, |n| n as usize);
                }
                Ok(ServerMessage::LoginRes(r))
            }
            Ok(Event::Reply(m)) => Ok(m),
            Ok(Event::Tls) => Err(WaitError::Tls),
            Ok(Event::Unreadable(what)) => Err(WaitError::Unreadable(what)),
            Ok(Event::Closed) | Err(RecvTimeoutError::Disconnected) => Err(WaitError::Closed),
            Err(RecvTimeoutError::Timeout) => Err(WaitError::TimedOut),
        }
    }

    /// Says that the login reply has been shown, so pushes that follow it (offline
    /// messages) may be printed.
    pub fn login_shown(&self) {
        let _ = self.shown.try_send(());
    }

    /// Sends `msg` and waits for its reply.
    pub fn request(&mut self, msg: &ClientMessage) -> Result<ServerMessage, WaitError> {
        self.send(msg)?;
        self.wait()
    }

    /// Closes the connection; with `logout`, says goodbye first and waits (briefly)
    /// for the server to close its side.
    pub fn close(mut self, logout: bool) {
        self.leaving.store(true, Ordering::SeqCst);
        if logout && self.is_alive() && self.out.write_all(&ClientMessage::Logout.encode()).is_ok()
        {
            if let Out::Tls(t) = &mut self.out {
                let _ = t.close();
            }
            let _ = self.stream.shutdown(Shutdown::Write);
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while self.is_alive() && std::time::Instant::now() < deadline {
                let _ = self.events.recv_timeout(Duration::from_millis(50));
            }
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// How the reader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The connection closed, failed, or sent what this client cannot read.
    Closed,
    /// The server's first bytes were a TLS record.
    Tls,
}

/// Whether a stream that starts with these two bytes is TLS: a handshake (0x16) or an
/// alert (0x15, what a TLS server answers to bytes that are not TLS) of version 3.x.
/// No frame of this protocol starts so: its length would be over 350 MB.
fn is_tls(first: [u8; 2]) -> bool {
    matches!(first, [0x15 | 0x16, 0x03])
}

fn read_loop(
    stream: &mut dyn Read,
    tx: &mpsc::Sender<Event>,
    roster: &Roster,
    shown: &Receiver<()>,
) -> End {
    let mut dec = FrameDecoder::new(MAX_FRAME);
    let mut buf = vec![0u8; 64 * 1024];
    // The stream's first two bytes, until they are known.
    let mut first: Vec<u8> = Vec::with_capacity(2);
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return End::Closed,
            Ok(n) => n,
        };
        if first.len() < 2 {
            let more = (2 - first.len()).min(n);
            first.extend_from_slice(&buf[..more]);
            if first.len() == 2 && is_tls([first[0], first[1]]) {
                return End::Tls;
            }
        }
        dec.push(&buf[..n]);
        loop {
            let body = match dec.next_frame() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => {
                    show::push(&format!(
                        "The server sent a frame this client cannot read ({e})."
                    ));
                    return End::Closed;
                }
            };
            let msg = match parse(&body) {
                Ok(m) => m,
                // A newer server may send types this client does not know: skip them.
                Err(ParseError::UnknownType(_)) => continue,
                // A push (a message, a notice) that cannot be read: say so and go on.
                Err(e @ ParseError::Data { kind, .. }) if is_push(kind) => {
                    show::push(&format!(
                        "The server sent a message this client cannot read ({e})."
                    ));
                    continue;
                }
                // Anything else may be the reply a request is waiting for: end that
                // wait now, with the reason, rather than let it run out.
                Err(e) => {
                    if tx.send(Event::Unreadable(e.to_string())).is_err() {
                        return End::Closed;
                    }
                    continue;
                }
            };
            let login_ok = matches!(&msg, ServerMessage::LoginRes(r) if r.code == proto::code::OK);
            if !handle_push(&msg, roster) && tx.send(Event::Reply(msg)).is_err() {
                return End::Closed;
            }
            if login_ok {
                // Offline messages follow the login reply at once: let the menu thread
                // print "Logged in" first, so they read in order.
                let _ = shown.recv_timeout(Duration::from_secs(2));
            }
        }
    }
}

/// Message types the server sends unasked (never as the reply to a request).
fn is_push(k: &str) -> bool {
    matches!(
        k,
        kind::NOTIFY_USER_STATUS | kind::PRESENCE | kind::SMS | kind::SMS_PRIVATE
    )
}

/// Parses one frame body like [`ServerMessage::parse`], but reads a JSON `null` in the
/// inner message as an absent field. Go writes a nil slice as `null`: the seed's server
/// answers a failed login with `"UsersId":null`, which means "no ids", not an error.
pub fn parse(body: &[u8]) -> Result<ServerMessage, ParseError> {
    match ServerMessage::parse(body) {
        Err(e @ ParseError::Data { .. }) => without_nulls(body).ok_or(e),
        r => r,
    }
}

/// The frame again with every `null` object member dropped from its inner message,
/// parsed; `None` if that does not make it readable either.
fn without_nulls(body: &[u8]) -> Option<ServerMessage> {
    use serde_json::Value;
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|_, x| !x.is_null());
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut env: Value = serde_json::from_slice(body).ok()?;
    let mut inner: Value = serde_json::from_str(env.get("data")?.as_str()?).ok()?;
    strip(&mut inner);
    env["data"] = Value::String(inner.to_string());
    ServerMessage::parse(&serde_json::to_vec(&env).ok()?).ok()
}

/// Keeps the roster current with one change of who is online, and prints it.
fn status_changed(r: &mut BTreeMap<i64, String>, id: i64, st: u8, name: &str) {
    let name = if name.is_empty() {
        r.get(&id).cloned().unwrap_or_default()
    } else {
        name.to_string()
    };
    match st {
        status::OFFLINE => {
            r.remove(&id);
        }
        _ => {
            r.insert(id, name.clone());
        }
    }
    show::push(&show::status(id, &name, st));
}

/// Prints pushes and keeps the roster current. Returns true if `msg` was a push only.
fn handle_push(msg: &ServerMessage, roster: &Roster) -> bool {
    let mut r = roster.lock().unwrap_or_else(|p| p.into_inner());
    match msg {
        ServerMessage::NotifyUserStatus(n) => {
            status_changed(&mut r, n.user_id, n.status, &n.user_name);
            true
        }
        ServerMessage::Presence(p) => {
            for (id, st, name) in &p.changes {
                status_changed(&mut r, *id, *st, name);
            }
            true
        }
        ServerMessage::Sms(m) => {
            show::push(&show::group(m));
            true
        }
        ServerMessage::Private(m) => {
            show::push(&show::private(m));
            true
        }
        ServerMessage::LoginRes(res) if res.code == proto::code::OK => {
            r.clear();
            for id in &res.users_id {
                r.insert(*id, String::new());
            }
            for u in res.named() {
                r.insert(u.user_id, u.user_name);
            }
            false
        }
        ServerMessage::OnlineUsersRes(res) => {
            r.clear();
            for u in &res.users {
                r.insert(u.user_id, u.user_name.clone());
            }
            false
        }
        ServerMessage::Error(e) if e.code == proto::code::PARTIAL => {
            // Not a refusal, and no request waits for it: the group message it is
            // about went out (and its sender does not wait for an answer).
            show::push(&show::cut_short(&e.error));
            true
        }
        ServerMessage::Error(e) => {
            // Printed at once (it may come unasked, like "logged in elsewhere"), and
            // also passed on in case a request is waiting for it.
            show::push(&show::server_error(e.code, &e.error, e.retry_after));
            false
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: &str, inner: &str) -> Vec<u8> {
        serde_json::json!({"type": kind, "data": inner})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn a_seed_login_refusal_with_null_ids_reads_as_no_ids() {
        let body = frame(
            "LoginResMes",
            r#"{"code":500,"UsersId":null,"error":"no such user"}"#,
        );
        assert!(
            ServerMessage::parse(&body).is_err(),
            "strict parse refuses null"
        );
        match parse(&body) {
            Ok(ServerMessage::LoginRes(r)) => {
                assert_eq!(
                    (r.code, r.users_id.len(), r.error.as_str()),
                    (500, 0, "no such user")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nulls_do_not_hide_real_errors() {
        let body = frame("LoginResMes", r#"{"code":null,"UsersId":null}"#);
        assert!(matches!(parse(&body), Err(ParseError::Data { .. })));
        let body = frame("LoginResMes", r#"{"code":"200"}"#);
        assert!(matches!(parse(&body), Err(ParseError::Data { .. })));
        assert!(matches!(parse(b"not json"), Err(ParseError::Envelope(_))));
    }

    #[test]
    fn the_compact_forms_keep_the_roster_as_the_seed_forms_do() {
        let roster: Roster = Arc::default();
        let names = |r: &Roster| {
            let r = r.lock().unwrap();
            r.iter().map(|(id, n)| (*id, n.clone())).collect::<Vec<_>>()
        };
        let login = proto::LoginResMes {
            code: 200,
            users_id: vec![1, 2],
            names: vec!["ann".into(), "bob".into()],
            ..Default::default()
        };
        assert!(!handle_push(&ServerMessage::LoginRes(login), &roster));
        assert_eq!(names(&roster), [(1, "ann".into()), (2, "bob".into())]);
        let presence = ServerMessage::Presence(proto::PresenceMes {
            changes: vec![
                (3, status::ONLINE, "cy".into()),
                (1, status::OFFLINE, "ann".into()),
            ],
        });
        assert!(handle_push(&presence, &roster));
        assert_eq!(names(&roster), [(2, "bob".into()), (3, "cy".into())]);
    }

    #[test]
    fn tls_records_are_told_from_frames() {
        // A TLS alert, a handshake; a frame's length is never so large.
        assert!(is_tls([0x15, 0x03]) && is_tls([0x16, 0x03]));
        assert!(!is_tls([0x00, 0x00]) && !is_tls([0x15, 0x00]) && !is_tls([0x17, 0x03]));
        const { assert!(0x1503_0000 > MAX_FRAME) };
    }

    #[test]
    fn a_cut_short_answer_is_a_push_not_a_reply() {
        let roster: Roster = Arc::default();
        let partial = proto::CodeRes::new(proto::code::PARTIAL, "cut short for 2 users");
        assert!(handle_push(&ServerMessage::Error(partial), &roster));
        let refusal = proto::CodeRes::new(proto::code::TOO_MANY, "slow down");
        assert!(!handle_push(&ServerMessage::Error(refusal), &roster));
    }

    #[test]
    fn pushes_and_replies_are_told_apart() {
        assert!(is_push(kind::SMS) && is_push(kind::NOTIFY_USER_STATUS));
        assert!(is_push(kind::PRESENCE));
        assert!(!is_push(kind::LOGIN_RES) && !is_push(kind::ERROR_RES));
    }
}
