//! The connection to the server: blocking writes from the menu thread, and a reader
//! thread that prints everything the server pushes the moment it arrives and hands
//! replies to the menu thread.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use chat::proto::{self, ClientMessage, FrameDecoder, ServerMessage, status};

use crate::show;

/// What the reader thread passes to the menu thread.
pub enum Event {
    /// A reply to a request (or an error frame, which may be one).
    Reply(ServerMessage),
    /// The connection ended.
    Closed,
}

/// Who is online, kept current from the server's pushes.
pub type Roster = Arc<Mutex<BTreeMap<i64, String>>>;

pub struct Link {
    stream: TcpStream,
    events: Receiver<Event>,
    alive: Arc<AtomicBool>,
    /// Set before a deliberate close, so the reader does not report it as a loss.
    leaving: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    /// Tells the reader that a login reply was shown (see `read_loop`).
    shown: mpsc::SyncSender<()>,
    pub roster: Roster,
}

/// How long to wait for a reply (logins hash a password: allow for a busy server).
const REPLY_WAIT: Duration = Duration::from_secs(30);

pub enum WaitError {
    Closed,
    TimedOut,
}

impl Link {
    pub fn connect(addr: &str) -> io::Result<Link> {
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
        let (tx, events) = mpsc::channel();
        let (shown, shown_rx) = mpsc::sync_channel(1);
        let alive = Arc::new(AtomicBool::new(true));
        let leaving = Arc::new(AtomicBool::new(false));
        let roster: Roster = Arc::default();
        let reader = {
            let mut rs = stream.try_clone()?;
            let alive = alive.clone();
            let leaving = leaving.clone();
            let roster = roster.clone();
            std::thread::spawn(move || {
                read_loop(&mut rs, &tx, &roster, &shown_rx);
                alive.store(false, Ordering::SeqCst);
                if !leaving.load(Ordering::SeqCst) {
                    show::push("Connection to the server lost.");
                }
                let _ = tx.send(Event::Closed);
            })
        };
        Ok(Link {
            stream,
            events,
            alive,
            leaving,
            reader: Some(reader),
            shown,
            roster,
        })
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    pub fn send(&mut self, msg: &ClientMessage) -> io::Result<()> {
        // Replies left over from an earlier request (say, an error that arrived after
        // we stopped waiting) must not be taken for this request's reply.
        while let Ok(ev) = self.events.try_recv() {
            if let Event::Closed = ev {
                return Err(io::ErrorKind::ConnectionAborted.into());
            }
        }
        self.stream.write_all(&msg.encode())
    }

    /// Waits for the next reply.
    pub fn wait(&mut self) -> Result<ServerMessage, WaitError> {
        match self.events.recv_timeout(REPLY_WAIT) {
            Ok(Event::Reply(m)) => Ok(m),
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
        self.send(msg).map_err(|_| WaitError::Closed)?;
        self.wait()
    }

    /// Closes the connection; with `logout`, says goodbye first and waits (briefly)
    /// for the server to close its side.
    pub fn close(mut self, logout: bool) {
        self.leaving.store(true, Ordering::SeqCst);
        if logout
            && self.is_alive()
            && self
                .stream
                .write_all(&ClientMessage::Logout.encode())
                .is_ok()
        {
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

fn read_loop(
    stream: &mut TcpStream,
    tx: &mpsc::Sender<Event>,
    roster: &Roster,
    shown: &Receiver<()>,
) {
    let mut dec = FrameDecoder::new(16 * 1024 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        dec.push(&buf[..n]);
        loop {
            let body = match dec.next_frame() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => {
                    show::push(&format!(
                        "The server sent a frame this client cannot read ({e})."
                    ));
                    return;
                }
            };
            let msg = match ServerMessage::parse(&body) {
                Ok(m) => m,
                // A newer server may send types this client does not know: skip them.
                Err(proto::ParseError::UnknownType(_)) => continue,
                Err(e) => {
                    show::push(&format!(
                        "The server sent a message this client cannot read ({e})."
                    ));
                    continue;
                }
            };
            let login_ok = matches!(&msg, ServerMessage::LoginRes(r) if r.code == proto::code::OK);
            if !handle_push(&msg, roster) && tx.send(Event::Reply(msg)).is_err() {
                return;
            }
            if login_ok {
                // Offline messages follow the login reply at once: let the menu thread
                // print "Logged in" first, so they read in order.
                let _ = shown.recv_timeout(Duration::from_secs(2));
            }
        }
    }
}

/// Prints pushes and keeps the roster current. Returns true if `msg` was a push only.
fn handle_push(msg: &ServerMessage, roster: &Roster) -> bool {
    let mut r = roster.lock().unwrap_or_else(|p| p.into_inner());
    match msg {
        ServerMessage::NotifyUserStatus(n) => {
            let name = if n.user_name.is_empty() {
                r.get(&n.user_id).cloned().unwrap_or_default()
            } else {
                n.user_name.clone()
            };
            match n.status {
                status::OFFLINE => {
                    r.remove(&n.user_id);
                }
                _ => {
                    r.insert(n.user_id, name.clone());
                }
            }
            show::push(&show::status(n.user_id, &name, n.status));
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
            for u in &res.users {
                r.insert(u.user_id, u.user_name.clone());
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
        ServerMessage::Error(e) => {
            // Printed at once (it may come unasked, like "logged in elsewhere"), and
            // also passed on in case a request is waiting for it.
            show::push(&show::server_error(e.code, &e.error));
            false
        }
        _ => false,
    }
}
