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

use crate::admin::{Done, Request, Response, SOCKET_NAME, UserLine, apply};
use crate::auth::{HashParams, Hasher};
use crate::cluster::{CHANNEL, Event};
use crate::store::Store;
use crate::store::embedded::{EmbeddedStore, FILE_NAME};
use crate::store::redis::{RedisStore, RedisTimeouts};
use crate::users::{MAX_PASSWORD_BYTES, validate_registration};

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
    List,
    /// Creates an account; the password is read from the terminal (or stdin).
    Add { id: i64, name: String },
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

/// Runs one command; the text to print on success.
pub fn run(cmd: Command, t: &Target) -> Result<String, String> {
    let req = request(cmd, t)?;
    let list = req == Request::List;
    let res = match &t.redis {
        Some(url) => via_redis(url, t.redis_timeout, req)?,
        None => via_data_dir(&t.data, req)?,
    };
    if !res.ok {
        return Err(res.text);
    }
    Ok(match (list, res.users) {
        (true, Some(users)) => table(&users),
        _ => res.text,
    })
}

fn request(cmd: Command, t: &Target) -> Result<Request, String> {
    Ok(match cmd {
        Command::Users { action } => match action {
            UsersAction::List => Request::List,
            UsersAction::Add { id, name } => {
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
                return Err(
                    "backup copies the embedded data file; with Redis, use Redis's \
                            own persistence (BGSAVE, its RDB or AOF files)"
                        .into(),
                );
            }
            // The server resolves no path of ours: an absolute one.
            let file =
                std::path::absolute(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            Request::Backup {
                path: file.to_string_lossy().into_owned(),
            }
        }
    })
}

/// Reads a password: from the terminal without echo (twice), or the first line of
/// standard input.
fn password(prompt: &str) -> Result<String, String> {
    let pw = if crate::sys::stdin_is_tty() {
        let ask = |p: &str| -> Result<String, String> {
            eprint!("{p}: ");
            let _ = std::io::stderr().flush();
            crate::sys::read_line_no_echo().map_err(|e| format!("reading the password: {e}"))
        };
        let a = ask(prompt)?;
        let b = ask("Again")?;
        if a != b {
            return Err("the two passwords differ".into());
        }
        a
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password from stdin: {e}"))?;
        line
    };
    let pw = pw.strip_suffix('\n').unwrap_or(&pw);
    let pw = pw.strip_suffix('\r').unwrap_or(pw).to_string();
    if pw.is_empty() {
        return Err("the password must not be empty".into());
    }
    if pw.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "the password must be at most {MAX_PASSWORD_BYTES} bytes"
        ));
    }
    Ok(pw)
}

fn hashed(pw: &str, t: &Target) -> Result<String, String> {
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

fn answer(r: Result<Done, String>, sessions: Option<String>) -> Response {
    match r {
        Ok(done) => done.response(sessions),
        Err(e) => Response::failed(e),
    }
}

/// Redis: applied there, and a ban or removal published to every node.
fn via_redis(url: &str, timeout: Duration, req: Request) -> Result<Response, String> {
    let t = RedisTimeouts {
        connect: timeout,
        io: timeout,
        ..RedisTimeouts::default()
    };
    let mut store = RedisStore::new(url, t).map_err(|e| e.to_string())?;
    let done = match apply(&mut store, req) {
        Ok(d) => d,
        Err(e) => return Ok(Response::failed(e)),
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
        Err(e) => format!("running servers NOT told (their sessions of the user stay open): {e}"),
    };
    Ok(answer(Ok(done), Some(sessions)))
}

/// The data directory: through a running server's admin socket, or the file itself.
fn via_data_dir(dir: &Path, req: Request) -> Result<Response, String> {
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
            return Err(format!(
                "cannot reach the running server through {}: {e} (run this as the \
                 server's user, or root)",
                sock.display()
            ));
        }
    }
    let file = dir.join(FILE_NAME);
    if !file.exists() {
        if !matches!(req, Request::Add { .. }) {
            return Err(format!("no data file at {}", file.display()));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
    }
    let mut store = EmbeddedStore::open(dir).map_err(|e| e.to_string())?;
    Ok(answer(apply(&mut store as &mut dyn Store, req), None))
}

fn ask_server(mut conn: UnixStream, req: &Request, sock: &Path) -> Result<Response, String> {
    let fail = |e: std::io::Error| format!("admin socket {}: {e}", sock.display());
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
        return Err(format!(
            "admin socket {}: the server closed it without an answer",
            sock.display()
        ));
    }
    serde_json::from_str(&answer)
        .map_err(|e| format!("admin socket {}: unreadable answer: {e}", sock.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
