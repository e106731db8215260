//! The admin socket of a running server: `DATA_DIR/admin.sock`, a Unix socket that
//! `chat-server users ...` and `chat-server backup` talk to while the server holds the
//! data file (redb locks it against other processes).
//!
//! One thread of its own accepts connections and serves each on a short-lived thread
//! of its own, at most [`MAX_CLIENTS`] at once (one more is told the socket is busy),
//! so an idle or slow client never delays another. Each connection carries one
//! request ([`Request`] in, [`Response`] out, a line of JSON each way). The commands
//! run one at a time against the socket's own store handle ([`apply`]); a ban or a
//! removal then ends the user's sessions through the event loop
//! ([`ControlHandle::kick`]), which never waits for these threads.
//!
//! Who may talk to it: the socket is created with mode 0600 (and connecting to a Unix
//! socket needs write permission on it), and every connection's peer is checked with
//! `SO_PEERCRED`: only this server's own uid and root are served; anyone else gets a
//! refusal and the close. A request is at most [`MAX_REQUEST`] bytes and must arrive
//! within [`IO_TIMEOUT`]; anything else (garbage, a silent or endless client) gets an
//! error and the close.
//!
//! The socket is created at start, after the data file was opened (so no other server
//! uses this directory: a socket left by a killed server is replaced), and removed at
//! exit.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::ops::admin::{MAX_REQUEST, Request, Response, SOCKET_NAME, apply, sessions_ended};
use crate::ops::control::ControlHandle;
use crate::ops::deadline::{Clients, Timed};
use crate::store::{Store, StoreFactory};

/// How long a client may take to send its request, and then to read the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once.
pub const MAX_CLIENTS: usize = 16;
/// How long the accepting thread may take to tell a client beyond [`MAX_CLIENTS`]
/// the socket is busy (a short answer into a new connection's empty send buffer).
const BUSY_TIMEOUT: Duration = Duration::from_millis(100);
/// How long the event loop may take to end a user's sessions.
const KICK_TIMEOUT: Duration = Duration::from_secs(10);

/// The running admin socket; stopped and its file removed when dropped.
pub struct AdminSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    clients: Arc<Clients<UnixStream>>,
}

impl AdminSocket {
    /// Creates `dir/admin.sock` (replacing a stale one) and starts its thread.
    pub fn start(
        dir: &Path,
        store: &StoreFactory,
        control: ControlHandle,
    ) -> io::Result<AdminSocket> {
        let path = dir.join(SOCKET_NAME);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&path)?,
            Ok(_) => {
                return Err(io::Error::other(format!(
                    "{} exists and is not a socket; move it away",
                    path.display()
                )));
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let store = Arc::new(Mutex::new(store().map_err(io::Error::other)?));
        let stop = Arc::new(AtomicBool::new(false));
        let clients = Arc::new(Clients::new("chat-admin-conn", MAX_CLIENTS));
        let thread = {
            let stop = stop.clone();
            let clients = clients.clone();
            std::thread::Builder::new()
                .name("chat-admin".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        match conn {
                            Ok(c) => {
                                let (store, control) = (store.clone(), control.clone());
                                let served = clients.serve(c, move |c| serve(c, &store, &control));
                                if let Err((c, why)) = served {
                                    log::warn!("admin socket: {why}");
                                    answer(&c, BUSY_TIMEOUT, &Response::failed(why.to_string()));
                                }
                            }
                            Err(e) if crate::sys::is_resource_exhaustion(&e) => {
                                // The connection stays queued: trying again at once
                                // would only spin while descriptors are short.
                                log::warn!("admin socket: accept failed: {e}; pausing 100 ms");
                                std::thread::sleep(std::time::Duration::from_millis(100));
                            }
                            Err(e) => log::warn!("admin socket: accept failed: {e}"),
                        }
                    }
                })?
        };
        log::info!("admin socket at {}", path.display());
        Ok(AdminSocket {
            path,
            stop,
            thread: Some(thread),
            clients,
        })
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the thread out of accept().
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.clients.stop();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether the peer may give commands: this server's own user, or root.
fn allowed(uid: u32) -> bool {
    uid == crate::sys::euid() || uid == 0
}

/// The socket's store handle, used by one command at a time.
type Shared = Mutex<Box<dyn Store>>;

fn serve(conn: UnixStream, store: &Shared, control: &ControlHandle) {
    let deadline = Timed::new(&conn, IO_TIMEOUT);
    let response = match crate::sys::peer_uid(&conn) {
        Ok(uid) if allowed(uid) => match read_request(deadline) {
            Ok(Some(req)) => {
                let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
                run(req, &mut **store, control)
            }
            Ok(None) => return,
            Err(e) => Response::failed(e.to_string()),
        },
        Ok(uid) => {
            log::warn!(
                "admin socket: refused a connection from uid {uid} (only uid {} and root may)",
                crate::sys::euid()
            );
            Response::failed(format!(
                "permission denied: uid {uid} is not the server's user"
            ))
        }
        Err(e) => Response::failed(format!("cannot tell who is connecting: {e}")),
    };
    answer(&conn, IO_TIMEOUT, &response);
}

/// Writes `response` as a line, within `within`.
fn answer(conn: &UnixStream, within: Duration, response: &Response) {
    let mut line = serde_json::to_vec(response).expect("responses serialise");
    line.push(b'\n');
    let _ = Timed::new(conn, within).write_all(&line);
}

/// Why a request line was not read; the client is told, then closed.
#[derive(Debug)]
enum BadRequest {
    Read(io::Error),
    /// More than [`MAX_REQUEST`] bytes without a newline.
    TooLong,
    /// The client stopped sending before the newline.
    Unended,
    /// Not a [`Request`].
    Json(serde_json::Error),
}

impl std::fmt::Display for BadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadRequest::Read(e) => write!(f, "reading the request: {e}"),
            BadRequest::TooLong => write!(f, "request longer than {MAX_REQUEST} bytes"),
            BadRequest::Unended => f.write_str("request not ended by a newline"),
            BadRequest::Json(e) => write!(f, "bad request: {e}"),
        }
    }
}

impl std::error::Error for BadRequest {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BadRequest::Read(e) => Some(e),
            BadRequest::Json(e) => Some(e),
            BadRequest::TooLong | BadRequest::Unended => None,
        }
    }
}

/// One line of JSON; `None` if the peer closed without a byte.
fn read_request(conn: Timed<'_, UnixStream>) -> Result<Option<Request>, BadRequest> {
    let mut line = Vec::new();
    let n = BufReader::new(conn)
        .take(MAX_REQUEST as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(BadRequest::Read)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > MAX_REQUEST {
            BadRequest::TooLong
        } else {
            BadRequest::Unended
        });
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(BadRequest::Json)
}

fn run(req: Request, store: &mut dyn Store, control: &ControlHandle) -> Response {
    log::info!("admin: {}", describe(&req));
    if req == Request::Online {
        return match control.online(KICK_TIMEOUT) {
            Ok(lines) => Response {
                ok: true,
                text: format!("{} online", lines.len()),
                online: Some(lines),
                ..Response::default()
            },
            Err(e) => Response::failed(e.to_string()),
        };
    }
    let done = match apply(store, req) {
        Ok(d) => d,
        Err(e) => {
            log::info!("admin: refused: {e}");
            return Response::failed(e.to_string());
        }
    };
    let sessions = match done.kick {
        Some((user, kick)) => match control.kick(user, kick, KICK_TIMEOUT) {
            Ok(n) => sessions_ended(n),
            Err(e) => format!("live sessions not closed: {e}"),
        },
        None => return done.response(None),
    };
    done.response(Some(sessions))
}

/// The request for the log: never a hash.
fn describe(req: &Request) -> String {
    match req {
        Request::List => "list".into(),
        Request::Add { id, .. } => format!("add {id}"),
        Request::Passwd { id, .. } => format!("passwd {id}"),
        Request::Remove { id } => format!("remove {id}"),
        Request::Ban { id } => format!("ban {id}"),
        Request::Unban { id } => format!("unban {id}"),
        Request::Backup { path } => format!("backup to {path}"),
        Request::Online => "online".into(),
        Request::Kick { id } => format!("kick {id}"),
    }
}
