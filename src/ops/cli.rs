//! The operators' subcommands of `chat-server`: `users list|add|passwd|remove|ban|unban`
//! and `backup`.
//!
//! Where a command goes:
//! - With `--redis URL`: to Redis itself, stopped servers or running ones alike. A ban
//!   or a removal is then published on the cluster's channel ([`Event::Kick`]), and
//!   every server on that Redis ends the user's sessions.
//! - Otherwise, to the data directory. If a server is running there, it holds the data
//!   file, and the command goes through its admin socket (`DIR/admin.sock`,
//!   `admin_server`), taking effect at once; if none is, the command opens the data
//!   file itself.
//!
//! Passwords are read from the terminal without echo (typed twice), or, when standard
//! input is not a terminal, as its first line; never from the command line. They are
//! hashed here (argon2id, `--argon2-*`), and only the hash goes anywhere.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cluster::{CHANNEL, Event};
use crate::job::auth::{HashError, HashParams, Hasher};
use crate::ops::admin::{
    AdminError, Done, OnlineLine, Request, Response, SOCKET_NAME, UserLine, apply,
};
use crate::store::embedded::{EmbeddedStore, FILE_NAME};
use crate::store::redis::{RedisStore, RedisTimeouts};
use crate::store::{Store, StoreError};
use crate::users::{InvalidRegistration, MAX_PASSWORD_BYTES, validate_registration};

/// `chat-server <command>`: without one, the server runs.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Accounts and moderation, on a stopped or a running server (`--data DIR` or
    /// `--redis URL`, as the server was started).
    Users {
        #[command(subcommand)]
        action: UsersAction,
    },
    /// Copies the data file (`DIR/chat.redb`) to FILE, consistently, while the server
    /// runs (through its admin socket; writes wait meanwhile) or not. Not with Redis:
    /// use Redis's own persistence (BGSAVE, its RDB or AOF files).
    Backup {
        /// A new file (never overwritten); the running server's user must be able to
        /// create it.
        file: PathBuf,
    },
}

#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum UsersAction {
    /// Every account: id, banned or not, name.
    List {
        /// One JSON array of {"id", "name", "banned"} instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Who is logged in on the running server: id, client address, name.
    Online {
        /// One JSON array of {"id", "name", "addr"} instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Closes the user's sessions on the running server (with a sentence), without a
    /// ban: they may log in again.
    Kick { id: i64 },
    /// Creates an account; the password is read from the terminal (or stdin).
    Add {
        id: i64,
        name: String,
        /// Start a new, empty data file if there is none in the data directory
        /// (without it, a missing data file is an error: a wrong `--data` or config
        /// would otherwise create a store the server never reads).
        #[arg(long)]
        create: bool,
    },
    /// Sets a new password (read from the terminal or stdin); sessions stay open.
    Passwd { id: i64 },
    /// Deletes an account and its offline messages; its sessions are closed.
    Remove { id: i64 },
    /// Refuses the account's logins until `unban`; its sessions are closed.
    Ban { id: i64 },
    /// Lets a banned account log in again.
    Unban { id: i64 },
}

/// Where the data is, and how to hash: the server's own flags.
#[derive(Debug, Clone)]
pub struct Target {
    pub data: PathBuf,
    pub redis: Option<String>,
    pub redis_timeout: Duration,
    pub hash: HashParams,
}

/// Why a command failed; its text is printed after `chat-server: `.
#[derive(Debug)]
pub enum OperatorError {
    /// The id or name given for a new account.
    Invalid(InvalidRegistration),
    Hash(HashError),
    /// `backup` with `--redis`.
    BackupWithRedis,
    /// The backup file's path could not be made absolute.
    Path(PathBuf, std::io::Error),
    /// Reading the password from the terminal.
    ReadPassword(std::io::Error),
    /// Reading the password from standard input.
    ReadPasswordStdin(std::io::Error),
    PasswordsDiffer,
    PasswordEmpty,
    /// Longer than [`MAX_PASSWORD_BYTES`].
    PasswordTooLong,
    /// Opening the store.
    Store(StoreError),
    /// The admin socket exists but cannot be connected to.
    Unreachable(PathBuf, std::io::Error),
    /// No data file (and, for `add`, no `--create`).
    NoDataFile(PathBuf),
    CreateDataDir(PathBuf, std::io::Error),
    /// Talking over the admin socket.
    AdminSocket(PathBuf, std::io::Error),
    /// The server closed the admin socket without an answer.
    NoAnswer(PathBuf),
    /// The server's answer does not parse.
    BadAnswer(PathBuf, serde_json::Error),
    /// The command was refused (by the store's rules, here or in a running server):
    /// the answer's text.
    Refused(String),
}

impl std::fmt::Display for OperatorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use OperatorError as E;
        match self {
            E::Invalid(e) => e.fmt(f),
            E::Hash(e) => e.fmt(f),
            E::BackupWithRedis => f.write_str(
                "backup copies the embedded data file; with Redis, use Redis's \
                 own persistence (BGSAVE, its RDB or AOF files)",
            ),
            E::Path(p, e) => write!(f, "{}: {e}", p.display()),
            E::ReadPassword(e) => write!(f, "reading the password: {e}"),
            E::ReadPasswordStdin(e) => write!(f, "reading the password from stdin: {e}"),
            E::PasswordsDiffer => f.write_str("the two passwords differ"),
            E::PasswordEmpty => f.write_str("the password must not be empty"),
            E::PasswordTooLong => {
                write!(f, "the password must be at most {MAX_PASSWORD_BYTES} bytes")
            }
            E::Store(e) => e.fmt(f),
            E::Unreachable(sock, e) => write!(
                f,
                "cannot reach the running server through {}: {e} (run this as the \
                 server's user, or root)",
                sock.display()
            ),
            E::NoDataFile(file) => write!(
                f,
                "no data file at {} (is --data, or `data` in the config, where the server \
                 keeps it? To start a new, empty store there: `users add ID NAME --create`)",
                file.display()
            ),
            E::CreateDataDir(dir, e) => {
                write!(f, "cannot create data directory {}: {e}", dir.display())
            }
            E::AdminSocket(sock, e) => write!(f, "admin socket {}: {e}", sock.display()),
            E::NoAnswer(sock) => write!(
                f,
                "admin socket {}: the server closed it without an answer",
                sock.display()
            ),
            E::BadAnswer(sock, e) => {
                write!(f, "admin socket {}: unreadable answer: {e}", sock.display())
            }
            E::Refused(text) => f.write_str(text),
        }
    }
}

impl std::error::Error for OperatorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        use OperatorError as E;
        match self {
            E::Invalid(e) => Some(e),
            E::Hash(e) => Some(e),
            E::Store(e) => Some(e),
            E::Path(_, e)
            | E::ReadPassword(e)
            | E::ReadPasswordStdin(e)
            | E::Unreachable(_, e)
            | E::CreateDataDir(_, e)
            | E::AdminSocket(_, e) => Some(e),
            E::BadAnswer(_, e) => Some(e),
            _ => None,
        }
    }
}

impl From<InvalidRegistration> for OperatorError {
    fn from(e: InvalidRegistration) -> OperatorError {
        OperatorError::Invalid(e)
    }
}

impl From<HashError> for OperatorError {
    fn from(e: HashError) -> OperatorError {
        OperatorError::Hash(e)
    }
}

impl From<StoreError> for OperatorError {
    fn from(e: StoreError) -> OperatorError {
        OperatorError::Store(e)
    }
}

/// Runs one command; the text to print on success.
pub fn run(cmd: Command, t: &Target) -> Result<String, OperatorError> {
    let create = matches!(
        cmd,
        Command::Users {
            action: UsersAction::Add { create: true, .. }
        }
    );
    let json = matches!(
        cmd,
        Command::Users {
            action: UsersAction::List { json: true } | UsersAction::Online { json: true }
        }
    );
    let req = request(cmd, t)?;
    let res = match &t.redis {
        Some(url) => via_redis(url, t.redis_timeout, req)?,
        None => via_data_dir(&t.data, req, create)?,
    };
    if !res.ok {
        return Err(OperatorError::Refused(res.text));
    }
    Ok(match (res.users, res.online) {
        (Some(users), _) if json => serde_json::to_string(&users).expect("users serialise"),
        (Some(users), _) => table(&users),
        (_, Some(online)) if json => serde_json::to_string(&online).expect("lines serialise"),
        (_, Some(online)) => online_table(&online),
        _ => res.text,
    })
}

fn request(cmd: Command, t: &Target) -> Result<Request, OperatorError> {
    Ok(match cmd {
        Command::Users { action } => match action {
            UsersAction::List { .. } => Request::List,
            UsersAction::Online { .. } => Request::Online,
            UsersAction::Kick { id } => Request::Kick { id },
            UsersAction::Add { id, name, .. } => {
                validate_registration(id, &name, "-")?;
                let hash = hashed(&password(&format!("Password for user {id}"))?, t)?;
                Request::Add { id, name, hash }
            }
            UsersAction::Passwd { id } => {
                let hash = hashed(&password(&format!("New password for user {id}"))?, t)?;
                Request::Passwd { id, hash }
            }
            UsersAction::Remove { id } => Request::Remove { id },
            UsersAction::Ban { id } => Request::Ban { id },
            UsersAction::Unban { id } => Request::Unban { id },
        },
        Command::Backup { file } => {
            if t.redis.is_some() {
                return Err(OperatorError::BackupWithRedis);
            }
            // The server resolves no path of ours: an absolute one.
            let file =
                std::path::absolute(&file).map_err(|e| OperatorError::Path(file.clone(), e))?;
            Request::Backup {
                path: file.to_string_lossy().into_owned(),
            }
        }
    })
}

/// Reads a password: from the terminal without echo (twice), or the first line of
/// standard input.
fn password(prompt: &str) -> Result<String, OperatorError> {
    let pw = if crate::sys::stdin_is_tty() {
        let ask = |p: &str| -> Result<String, OperatorError> {
            eprint!("{p}: ");
            let _ = std::io::stderr().flush();
            crate::sys::read_line_no_echo().map_err(OperatorError::ReadPassword)
        };
        let a = ask(prompt)?;
        let b = ask("Again")?;
        if a != b {
            return Err(OperatorError::PasswordsDiffer);
        }
        a
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(OperatorError::ReadPasswordStdin)?;
        line
    };
    let pw = pw.strip_suffix('\n').unwrap_or(&pw);
    let pw = pw.strip_suffix('\r').unwrap_or(pw).to_string();
    if pw.is_empty() {
        return Err(OperatorError::PasswordEmpty);
    }
    if pw.len() > MAX_PASSWORD_BYTES {
        return Err(OperatorError::PasswordTooLong);
    }
    Ok(pw)
}

fn hashed(pw: &str, t: &Target) -> Result<String, HashError> {
    Hasher::new(t.hash)?.hash(pw)
}

/// `list` as a table; names with control characters shown escaped.
fn table(users: &[UserLine]) -> String {
    let mut out = format!("{:>12}  {:<6}  name\n", "id", "banned");
    for u in users {
        let name: String = if u.name.chars().any(char::is_control) {
            u.name.escape_debug().to_string()
        } else {
            u.name.clone()
        };
        let banned = if u.banned { "yes" } else { "no" };
        out.push_str(&format!("{:>12}  {banned:<6}  {name}\n", u.id));
    }
    out.push_str(&format!("{} users", users.len()));
    out
}

fn online_table(lines: &[OnlineLine]) -> String {
    let mut out = format!("{:>12}  {:<40}  name\n", "id", "address or node");
    for l in lines {
        let name: String = if l.name.chars().any(char::is_control) {
            l.name.escape_debug().to_string()
        } else {
            l.name.clone()
        };
        let at = l.addr.as_deref().or(l.node.as_deref()).unwrap_or("-");
        out.push_str(&format!("{:>12}  {at:<40}  {name}\n", l.id));
    }
    out.push_str(&format!("{} online", lines.len()));
    out
}

fn answer(r: Result<Done, AdminError>, sessions: Option<String>) -> Response {
    match r {
        Ok(done) => done.response(sessions),
        Err(e) => Response::failed(e.to_string()),
    }
}

/// Redis: applied there, and a ban or removal published to every node.
fn via_redis(url: &str, timeout: Duration, req: Request) -> Result<Response, OperatorError> {
    let t = RedisTimeouts {
        connect: timeout,
        io: timeout,
        ..RedisTimeouts::default()
    };
    if req == Request::Online {
        let read = redis::Client::open(url)
            .and_then(|c| c.get_connection_with_timeout(timeout))
            .and_then(|mut c| {
                c.set_read_timeout(Some(timeout))?;
                crate::cluster::redis::read_online(&mut c)
            });
        return Ok(match read {
            Ok(all) => {
                let lines: Vec<OnlineLine> = all
                    .into_iter()
                    .map(|(node, id, name)| OnlineLine {
                        id,
                        name,
                        addr: None,
                        node: Some(node),
                    })
                    .collect();
                Response {
                    ok: true,
                    text: format!("{} online", lines.len()),
                    online: Some(lines),
                    ..Response::default()
                }
            }
            Err(e) => Response::failed(format!(
                "cannot read who is online from Redis: {}",
                crate::redact::text(&e.to_string())
            )),
        });
    }
    let mut store = RedisStore::new(url, t)?;
    let done = match apply(&mut store, req) {
        Ok(d) => d,
        Err(e) => return Ok(Response::failed(e.to_string())),
    };
    let Some((user, kick)) = done.kick else {
        return Ok(answer(Ok(done), None));
    };
    let ev = Event::Kick {
        node: format!("chat-server-users-{}", std::process::id()),
        user,
        kick,
    };
    let told = redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(timeout))
        .and_then(|mut c| {
            c.set_read_timeout(Some(timeout))?;
            redis::cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(ev.to_json())
                .query::<u64>(&mut c)
        });
    let sessions = match told {
        Ok(0) => "no running server is listening on this Redis".to_string(),
        Ok(n) => format!("{n} running servers told to close the user's sessions"),
        Err(e) => format!(
            "running servers NOT told (their sessions of the user stay open): {}",
            crate::redact::text(&e.to_string())
        ),
    };
    Ok(answer(Ok(done), Some(sessions)))
}

/// The data directory: through a running server's admin socket, or the file itself
/// (created only for `add --create`).
fn via_data_dir(dir: &Path, req: Request, create: bool) -> Result<Response, OperatorError> {
    let sock = dir.join(SOCKET_NAME);
    match UnixStream::connect(&sock) {
        Ok(conn) => return ask_server(conn, &req, &sock),
        // No server running here (or one killed, which left its socket).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) => {}
        Err(e) => {
            return Err(OperatorError::Unreachable(sock, e));
        }
    }
    // Stopped: nobody is online, nobody to kick.
    if matches!(req, Request::Online | Request::Kick { .. }) {
        return Ok(Response::failed(AdminError::NotRunning.to_string()));
    }
    let file = dir.join(FILE_NAME);
    if !file.exists() {
        if !(create && matches!(req, Request::Add { .. })) {
            return Err(OperatorError::NoDataFile(file));
        }
        crate::sys::create_private_dir_all(dir)
            .map_err(|e| OperatorError::CreateDataDir(dir.to_path_buf(), e))?;
    }
    let mut store = EmbeddedStore::open(dir)?;
    Ok(answer(apply(&mut store as &mut dyn Store, req), None))
}

fn ask_server(mut conn: UnixStream, req: &Request, sock: &Path) -> Result<Response, OperatorError> {
    let fail = |e: std::io::Error| OperatorError::AdminSocket(sock.to_path_buf(), e);
    // A backup or a long list may take a while; a server that does not answer at all
    // is reported rather than waited for without end.
    conn.set_read_timeout(Some(Duration::from_secs(600)))
        .map_err(fail)?;
    let mut line = serde_json::to_vec(req).expect("requests serialise");
    line.push(b'\n');
    conn.write_all(&line).map_err(fail)?;
    let mut answer = String::new();
    BufReader::new(&conn).read_line(&mut answer).map_err(fail)?;
    if answer.is_empty() {
        return Err(OperatorError::NoAnswer(sock.to_path_buf()));
    }
    serde_json::from_str(&answer).map_err(|e| OperatorError::BadAnswer(sock.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_the_operator_is_told() {
        use OperatorError as E;
        let io = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let sock = || PathBuf::from("/d/admin.sock");
        let cases = [
            (
                E::BackupWithRedis,
                "backup copies the embedded data file; with Redis, use Redis's own \
                 persistence (BGSAVE, its RDB or AOF files)"
                    .to_string(),
            ),
            (E::Path("f".into(), io()), format!("f: {}", io())),
            (
                E::ReadPassword(io()),
                format!("reading the password: {}", io()),
            ),
            (
                E::ReadPasswordStdin(io()),
                format!("reading the password from stdin: {}", io()),
            ),
            (E::PasswordsDiffer, "the two passwords differ".into()),
            (E::PasswordEmpty, "the password must not be empty".into()),
            (
                E::PasswordTooLong,
                "the password must be at most 256 bytes".into(),
            ),
            (
                E::Unreachable(sock(), io()),
                format!(
                    "cannot reach the running server through /d/admin.sock: {} (run this as \
                     the server's user, or root)",
                    io()
                ),
            ),
            (
                E::NoDataFile("/d/chat.redb".into()),
                "no data file at /d/chat.redb (is --data, or `data` in the config, where the \
                 server keeps it? To start a new, empty store there: `users add ID NAME \
                 --create`)"
                    .into(),
            ),
            (
                E::CreateDataDir("/d".into(), io()),
                format!("cannot create data directory /d: {}", io()),
            ),
            (
                E::AdminSocket(sock(), io()),
                format!("admin socket /d/admin.sock: {}", io()),
            ),
            (
                E::NoAnswer(sock()),
                "admin socket /d/admin.sock: the server closed it without an answer".into(),
            ),
            (
                E::Refused("no such user: 9".into()),
                "no such user: 9".into(),
            ),
            (
                E::Store(StoreError::Unavailable("redis down".into())),
                "redis down".into(),
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }

    #[test]
    fn the_list_shows_no_secrets_and_escapes_control_characters() {
        let t = table(&[
            UserLine {
                id: 5,
                name: "al".into(),
                banned: true,
            },
            UserLine {
                id: 12,
                name: "a\u{1b}[2Jb".into(),
                banned: false,
            },
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["id", "banned", "name"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["5", "yes", "al"]
        );
        assert!(lines[2].contains(r"a\u{1b}[2Jb"), "{t}");
        assert_eq!(lines[3], "2 users");
    }
}
