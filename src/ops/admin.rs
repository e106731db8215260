//! Operators' commands (`chat-server users ...`, `chat-server backup`): what each does
//! to the store, and the requests and answers of the admin socket that carries them to
//! a running server.
//!
//! A command is applied to a [`Store`] by [`apply`], the same code whether the server
//! is stopped (the command line opens the data file, or Redis, itself) or running (its
//! admin socket thread runs it against its own store handle). A ban or a removal then
//! also ends the user's live sessions: [`Done::kick`] says so, and whoever applied the
//! command hands it to the hub ([`Hub::handle_admin`](crate::hub::Hub::handle_admin)),
//! directly through the running server's loop, or as a cluster event
//! ([`Event::Kick`](crate::cluster::Event::Kick)) that every node on one Redis takes.
//!
//! The admin socket speaks one line of JSON each way: a [`Request`], then a
//! [`Response`]. Passwords never cross it: the command line hashes them itself and
//! sends the PHC string.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use crate::job::LoginError;
use crate::proto::code;
use crate::store::{Store, StoreError};
use crate::users::{InvalidRegistration, UserRecord, validate_registration};

/// Longest request line the admin socket reads, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The admin socket's file name, in the data directory.
pub const SOCKET_NAME: &str = "admin.sock";

pub use crate::types::Kick;

impl Kick {
    /// The `ErrorResMes` a live session gets before it is closed.
    pub fn error(self) -> (u16, &'static str) {
        match self {
            Kick::Banned => (code::BANNED, "this account is banned"),
            Kick::Removed => (code::GONE, "this account was removed"),
            Kick::Kicked => (
                code::UNAUTHORIZED,
                "an operator closed this session; you may log in again",
            ),
        }
    }

    /// What a login of this user in flight at the time comes to (`None`: it goes on).
    pub fn login_error(self) -> Option<LoginError> {
        match self {
            Kick::Banned => Some(LoginError::Banned),
            Kick::Removed => Some(LoginError::NoSuchUser),
            Kick::Kicked => None,
        }
    }
}

/// One command, as sent over the admin socket.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "camelCase")]
pub enum Request {
    List,
    /// A new account; `hash` is the password's argon2id PHC string.
    Add {
        id: i64,
        name: String,
        hash: String,
    },
    Passwd {
        id: i64,
        hash: String,
    },
    Remove {
        id: i64,
    },
    Ban {
        id: i64,
    },
    Unban {
        id: i64,
    },
    /// A consistent copy of the embedded data file, to a new file at `path` (a path
    /// the server process can write).
    Backup {
        path: String,
    },
    /// Who is online on this server (a running one only).
    Online,
    /// Closes the user's sessions without a ban (a running server only).
    Kick {
        id: i64,
    },
}

/// One session as `online` shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct OnlineLine {
    pub id: i64,
    pub name: String,
    /// The client's address and port (known to the server it is connected to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// The node it is connected to (with Redis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// One user as `list` shows it: never a password or a hash.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UserLine {
    pub id: i64,
    pub name: String,
    pub banned: bool,
}

/// The answer to a [`Request`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    pub ok: bool,
    /// What was done, or what went wrong, in a sentence.
    pub text: String,
    /// For `list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<UserLine>>,
    /// For `online`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<Vec<OnlineLine>>,
}

impl Response {
    pub fn failed(text: impl Into<String>) -> Response {
        Response {
            ok: false,
            text: text.into(),
            ..Response::default()
        }
    }
}

/// What [`apply`] did, and what remains for the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub text: String,
    pub users: Option<Vec<UserLine>>,
    /// Sessions of this user must end (a ban, a removal).
    pub kick: Option<(i64, Kick)>,
}

impl Done {
    fn said(text: String) -> Done {
        Done {
            text,
            users: None,
            kick: None,
        }
    }

    /// The answer, once the kick (if any) ended `sessions` sessions (`None`: not
    /// known, as with Redis, where each node ends its own).
    pub fn response(self, sessions: Option<String>) -> Response {
        let text = match sessions {
            Some(s) => format!("{}; {s}", self.text),
            None => self.text,
        };
        Response {
            ok: true,
            text,
            users: self.users,
            online: None,
        }
    }
}

/// Why a command was refused; its text is the operator's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminError {
    /// The id or name of a new account.
    Invalid(InvalidRegistration),
    /// A password that does not come as an argon2 PHC string.
    NotHashed,
    /// A PHC string asking for more memory or work than a server accepts.
    CostlyHash {
        memory_kib: u32,
        passes: u32,
    },
    /// `add` of an id that exists.
    Taken(i64),
    NoSuchUser(i64),
    Store(StoreError),
    /// The store's own backup failed, or it has none.
    Backup(StoreError),
    /// A backup path that is not absolute: it would be taken from the server's
    /// working directory, not the caller's (the `backup` command sends an absolute
    /// one).
    RelativeBackupPath(String),
    /// `online` or `kick` with no server running on this data.
    NotRunning,
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminError::Invalid(e) => e.fmt(f),
            AdminError::NotHashed => {
                f.write_str("the password must come hashed (an argon2id PHC string)")
            }
            AdminError::CostlyHash { memory_kib, passes } => write!(
                f,
                "the password hash asks for {memory_kib} KiB and {passes} passes, more than \
                 a server checks (at most {} KiB, and {} KiB times passes); hash it with \
                 the server's --argon2-* parameters",
                crate::job::MAX_STORED_MEMORY_KIB,
                crate::job::MAX_STORED_WORK
            ),
            AdminError::Taken(id) => write!(f, "user id {id} is already taken"),
            AdminError::NoSuchUser(id) => write!(f, "no such user: {id}"),
            AdminError::Store(e) => write!(f, "storage error: {e}"),
            AdminError::Backup(e) => e.fmt(f),
            AdminError::RelativeBackupPath(p) => write!(
                f,
                "backup path {p:?} is relative: give an absolute one (the server's \
                 working directory is not the caller's)"
            ),
            AdminError::NotRunning => f.write_str(
                "no server is running on this data, so nobody is online (`online` and \
                 `kick` ask a running server, through the admin socket in its data \
                 directory)",
            ),
        }
    }
}

impl std::error::Error for AdminError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AdminError::Invalid(e) => Some(e),
            AdminError::Store(e) | AdminError::Backup(e) => Some(e),
            _ => None,
        }
    }
}

impl From<InvalidRegistration> for AdminError {
    fn from(e: InvalidRegistration) -> AdminError {
        AdminError::Invalid(e)
    }
}

/// Whether `hash` looks like a password hash this server can verify, at a cost within
/// the limits every server accepts (`job::MAX_STORED_*`).
fn check_hash(hash: &str) -> Result<(), AdminError> {
    if !hash.starts_with("$argon2") {
        return Err(AdminError::NotHashed);
    }
    #[cfg(feature = "server")]
    check_cost(hash)?;
    Ok(())
}

/// A hash over the limits is refused (the parser is the server's).
#[cfg(feature = "server")]
fn check_cost(hash: &str) -> Result<(), AdminError> {
    use crate::job::StoredHash;
    use crate::job::auth::{HashParams, Hasher};
    let limits = Hasher::new(HashParams::default()).map_err(|_| AdminError::NotHashed)?;
    match limits.assess(hash) {
        StoredHash::TooCostly { memory_kib, passes } => {
            Err(AdminError::CostlyHash { memory_kib, passes })
        }
        _ => Ok(()),
    }
}

/// Applies one command to the store. `Backup` is the store's own
/// ([`Store::backup`]).
pub fn apply(store: &mut dyn Store, req: Request) -> Result<Done, AdminError> {
    match req {
        Request::List => {
            let users = store
                .list_users()
                .map_err(AdminError::Store)?
                .into_iter()
                .map(|u: UserRecord| UserLine {
                    id: u.id,
                    name: u.name,
                    banned: u.banned,
                })
                .collect::<Vec<_>>();
            Ok(Done {
                text: format!("{} users", users.len()),
                users: Some(users),
                kick: None,
            })
        }
        Request::Add { id, name, hash } => {
            // The password itself was checked where it was typed.
            validate_registration(id, &name, "-")?;
            check_hash(&hash)?;
            let rec = UserRecord {
                id,
                name,
                pwd_hash: hash,
                ..UserRecord::default()
            };
            if store.create_user(&rec).map_err(AdminError::Store)? {
                Ok(Done::said(format!("user {id} added")))
            } else {
                Err(AdminError::Taken(id))
            }
        }
        Request::Passwd { id, hash } => {
            check_hash(&hash)?;
            let set = &mut |r: &mut UserRecord| {
                r.pwd_hash = hash.clone();
                r.legacy_pwd.clear();
            };
            match store.modify_user(id, set).map_err(AdminError::Store)? {
                Some(_) => Ok(Done::said(format!(
                    "password of user {id} changed (sessions stay open)"
                ))),
                None => Err(AdminError::NoSuchUser(id)),
            }
        }
        Request::Ban { id } | Request::Unban { id } => {
            let ban = matches!(req, Request::Ban { .. });
            match store
                .modify_user(id, &mut |r| r.banned = ban)
                .map_err(AdminError::Store)?
            {
                Some(_) if ban => Ok(Done {
                    text: format!("user {id} banned"),
                    users: None,
                    kick: Some((id, Kick::Banned)),
                }),
                Some(_) => Ok(Done::said(format!("user {id} unbanned"))),
                None => Err(AdminError::NoSuchUser(id)),
            }
        }
        Request::Remove { id } => {
            if store.remove_user(id).map_err(AdminError::Store)? {
                Ok(Done {
                    text: format!(
                        "user {id} removed, with their offline messages and private history"
                    ),
                    users: None,
                    kick: Some((id, Kick::Removed)),
                })
            } else {
                Err(AdminError::NoSuchUser(id))
            }
        }
        // Answered by the running server's loop (the admin socket asks it), never
        // by the store.
        Request::Online => Err(AdminError::NotRunning),
        Request::Kick { id } => match store.get_user(id).map_err(AdminError::Store)? {
            Some(_) => Ok(Done {
                text: format!("user {id} kicked (not banned: they may log in again)"),
                users: None,
                kick: Some((id, Kick::Kicked)),
            }),
            None => Err(AdminError::NoSuchUser(id)),
        },
        Request::Backup { path } => {
            if !std::path::Path::new(&path).is_absolute() {
                return Err(AdminError::RelativeBackupPath(path));
            }
            let n = store
                .backup(std::path::Path::new(&path))
                .map_err(AdminError::Backup)?;
            Ok(Done::said(format!("{n} bytes copied to {path}")))
        }
    }
}

/// How many sessions a kick ended, in words.
pub fn sessions_ended(n: usize) -> String {
    match n {
        1 => "1 session closed".into(),
        n => format!("{n} sessions closed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mem::MemStore;

    fn add(s: &mut MemStore, id: i64, name: &str) -> Result<Done, AdminError> {
        apply(
            s,
            Request::Add {
                id,
                name: name.into(),
                hash: format!("$argon2id$fake-{id}"),
            },
        )
    }

    #[test]
    fn refusals_read_as_the_operator_is_told() {
        let store = || StoreError::Unavailable("disk gone".into());
        assert_eq!(
            AdminError::Invalid(InvalidRegistration::NameEmpty).to_string(),
            "userName must not be empty"
        );
        assert_eq!(
            AdminError::NotHashed.to_string(),
            "the password must come hashed (an argon2id PHC string)"
        );
        assert_eq!(
            AdminError::Taken(3).to_string(),
            "user id 3 is already taken"
        );
        assert_eq!(AdminError::NoSuchUser(3).to_string(), "no such user: 3");
        assert_eq!(
            AdminError::Store(store()).to_string(),
            "storage error: disk gone"
        );
        assert_eq!(AdminError::Backup(store()).to_string(), "disk gone");
    }

    #[test]
    fn every_command_against_a_store() {
        let mut s = MemStore::new();
        add(&mut s, 2, "bo").unwrap();
        add(&mut s, 1, "al").unwrap();
        assert_eq!(
            add(&mut s, 1, "again").unwrap_err().to_string(),
            "user id 1 is already taken"
        );
        assert!(add(&mut s, 3, " padded").is_err());
        assert!(add(&mut s, 0, "zero").is_err());
        let bad_hash = Request::Add {
            id: 4,
            name: "d".into(),
            hash: "plaintext".into(),
        };
        assert_eq!(apply(&mut s, bad_hash).unwrap_err(), AdminError::NotHashed);
        // A hash asking for 64 MiB and a million passes is refused, with a sentence.
        #[cfg(feature = "server")]
        {
            use crate::job::auth::{HashParams, Hasher};
            let cheap = Hasher::new(HashParams {
                memory_kib: 64,
                passes: 1,
            })
            .unwrap();
            let hostile = cheap
                .hash("pw")
                .unwrap()
                .replace("$m=64,t=1,", "$m=65536,t=1000000,");
            let hostile = hostile.as_str();
            let costly = Request::Add {
                id: 4,
                name: "d".into(),
                hash: hostile.into(),
            };
            let e = apply(&mut s, costly).unwrap_err();
            assert_eq!(
                e,
                AdminError::CostlyHash {
                    memory_kib: 65536,
                    passes: 1_000_000
                }
            );
            assert!(
                e.to_string()
                    .starts_with("the password hash asks for 65536 KiB")
            );
            let passwd = Request::Passwd {
                id: 2,
                hash: hostile.into(),
            };
            assert!(matches!(
                apply(&mut s, passwd),
                Err(AdminError::CostlyHash { .. })
            ));
        }

        let done = apply(&mut s, Request::Ban { id: 2 }).unwrap();
        assert_eq!(done.kick, Some((2, Kick::Banned)));
        assert_eq!(
            apply(&mut s, Request::Ban { id: 9 })
                .unwrap_err()
                .to_string(),
            "no such user: 9"
        );
        let list = apply(&mut s, Request::List).unwrap().users.unwrap();
        assert_eq!(
            list,
            [
                UserLine {
                    id: 1,
                    name: "al".into(),
                    banned: false
                },
                UserLine {
                    id: 2,
                    name: "bo".into(),
                    banned: true
                }
            ]
        );
        // No hash in what `list` answers.
        let json =
            serde_json::to_string(&Done::response(apply(&mut s, Request::List).unwrap(), None))
                .unwrap();
        assert!(!json.contains("argon2"), "{json}");

        let done = apply(&mut s, Request::Unban { id: 2 }).unwrap();
        assert_eq!(done.kick, None);
        assert!(!s.get_user_for_test(2).banned);

        let hash = "$argon2id$new".to_string();
        let done = apply(&mut s, Request::Passwd { id: 1, hash }).unwrap();
        assert_eq!(done.kick, None, "a new password ends no session");
        assert_eq!(s.get_user_for_test(1).pwd_hash, "$argon2id$new");

        let done = apply(&mut s, Request::Remove { id: 1 }).unwrap();
        assert_eq!(done.kick, Some((1, Kick::Removed)));
        assert!(apply(&mut s, Request::Remove { id: 1 }).is_err());
        let backup = Request::Backup {
            path: "/nonexistent/x".into(),
        };
        assert!(
            apply(&mut s, backup)
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        let relative = Request::Backup {
            path: "backup.redb".into(),
        };
        assert_eq!(
            apply(&mut s, relative).unwrap_err(),
            AdminError::RelativeBackupPath("backup.redb".into())
        );
    }

    #[test]
    fn requests_and_answers_are_one_line_of_json() {
        let r: Request = serde_json::from_str(r#"{"cmd":"ban","id":5}"#).unwrap();
        assert_eq!(r, Request::Ban { id: 5 });
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format-disk"}"#).is_err());
        let line = serde_json::to_string(&Request::Add {
            id: 1,
            name: "a\nb".into(),
            hash: "h".into(),
        })
        .unwrap();
        assert!(!line.contains('\n'));
        let ok = Response {
            ok: true,
            text: "done".into(),
            users: None,
            online: None,
        };
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"ok":true,"text":"done"}"#
        );
    }
}
