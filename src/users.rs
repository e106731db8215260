//! Users: the stored record, the rules a new account must meet, and the registry of
//! who is online on this server right now.
//!
//! The registry maps a user id to the connection that holds the session. It is the
//! single answer to "is this user online, and where": a second login of the same user
//! replaces the entry, and a closing connection only removes the entry if it still
//! points at that connection, which is what makes "the newer session wins, no
//! offline/online flicker" fall out naturally.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::conn::ConnRef;
use crate::proto::UserInfo;

/// Longest accepted user name, in characters.
pub const MAX_NAME_CHARS: usize = 32;
/// Longest accepted password, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 256;

/// A user as the store keeps it. The JSON shape follows the seed's Redis schema
/// (`userId`, `userName`), plus `pwdHash` for the argon2id PHC string. A record left by
/// the seed's own server has a plaintext `userPwd` instead; it is read as is and
/// upgraded to a hash at the first successful login.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Default)]
pub struct UserRecord {
    #[serde(rename = "userId")]
    pub id: i64,
    #[serde(rename = "userName", default)]
    pub name: String,
    #[serde(rename = "pwdHash", default, skip_serializing_if = "String::is_empty")]
    pub pwd_hash: String,
    /// Plaintext from a seed-era record. Never written by this server.
    #[serde(rename = "userPwd", default, skip_serializing_if = "String::is_empty")]
    pub legacy_pwd: String,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("has_hash", &!self.pwd_hash.is_empty())
            .field("has_legacy_pwd", &!self.legacy_pwd.is_empty())
            .finish()
    }
}

impl UserRecord {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("record serialises")
    }

    pub fn from_json(s: &str) -> Result<UserRecord, String> {
        serde_json::from_str(s).map_err(|e| format!("bad user record: {e}"))
    }
}

/// Checks the fields of a registration; the error text goes to the client as is.
pub fn validate_registration(id: i64, name: &str, password: &str) -> Result<(), String> {
    if id <= 0 {
        return Err("userId must be a positive number".into());
    }
    if name.trim().is_empty() {
        return Err("userName must not be empty".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!(
            "userName must be at most {MAX_NAME_CHARS} characters"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("userName must not contain control characters".into());
    }
    if password.is_empty() {
        return Err("userPwd must not be empty".into());
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "userPwd must be at most {MAX_PASSWORD_BYTES} bytes"
        ));
    }
    Ok(())
}

/// One online session as the registry sees it.
#[derive(Debug, Clone)]
pub struct OnlineEntry {
    pub conn: ConnRef,
    pub name: Rc<str>,
}

/// Who is online on this server. Ordered by id so lists are stable.
#[derive(Debug, Default)]
pub struct Registry {
    by_id: BTreeMap<i64, OnlineEntry>,
}

impl Registry {
    pub fn get(&self, id: i64) -> Option<&OnlineEntry> {
        self.by_id.get(&id)
    }

    /// Puts `id` online at `conn`; returns the entry it replaced, if any.
    pub fn insert(&mut self, id: i64, entry: OnlineEntry) -> Option<OnlineEntry> {
        self.by_id.insert(id, entry)
    }

    /// Removes `id` only if its entry still points at `conn`.
    pub fn remove_if(&mut self, id: i64, conn: ConnRef) -> bool {
        if self.by_id.get(&id).is_some_and(|e| e.conn == conn) {
            self.by_id.remove(&id);
            true
        } else {
            false
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn ids(&self) -> Vec<i64> {
        self.by_id.keys().copied().collect()
    }

    pub fn infos(&self) -> Vec<UserInfo> {
        self.by_id
            .iter()
            .map(|(id, e)| UserInfo {
                user_id: *id,
                user_name: e.name.to_string(),
            })
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (i64, &OnlineEntry)> {
        self.by_id.iter().map(|(id, e)| (*id, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_rules() {
        assert!(validate_registration(1, "scott", "pw").is_ok());
        assert!(validate_registration(0, "scott", "pw").is_err());
        assert!(validate_registration(-5, "scott", "pw").is_err());
        assert!(validate_registration(1, "", "pw").is_err());
        assert!(validate_registration(1, "   ", "pw").is_err());
        assert!(validate_registration(1, "a\nb", "pw").is_err());
        assert!(validate_registration(1, &"x".repeat(33), "pw").is_err());
        assert!(validate_registration(1, &"é".repeat(32), "pw").is_ok());
        assert!(validate_registration(1, "scott", "").is_err());
        assert!(validate_registration(1, "scott", &"p".repeat(257)).is_err());
    }

    #[test]
    fn seed_record_reads_and_debug_hides_secrets() {
        let r = UserRecord::from_json(r#"{"userId":100,"userPwd":"123456","userName":"Scott"}"#)
            .unwrap();
        assert_eq!(r.id, 100);
        assert_eq!(r.legacy_pwd, "123456");
        assert!(!format!("{r:?}").contains("123456"));
        let ours = UserRecord {
            id: 1,
            name: "a".into(),
            pwd_hash: "$argon2id$x".into(),
            legacy_pwd: String::new(),
        };
        assert_eq!(
            ours.to_json(),
            r#"{"userId":1,"userName":"a","pwdHash":"$argon2id$x"}"#
        );
    }

    #[test]
    fn registry_removes_only_its_own_entry() {
        let mut reg = Registry::default();
        let a = ConnRef {
            key: 1,
            generation: 1,
        };
        let b = ConnRef {
            key: 2,
            generation: 1,
        };
        reg.insert(
            7,
            OnlineEntry {
                conn: a,
                name: "x".into(),
            },
        );
        let old = reg.insert(
            7,
            OnlineEntry {
                conn: b,
                name: "x".into(),
            },
        );
        assert_eq!(old.unwrap().conn, a);
        assert!(!reg.remove_if(7, a));
        assert!(reg.remove_if(7, b));
        assert!(reg.is_empty());
    }
}
