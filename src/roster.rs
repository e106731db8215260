//! The list of everyone online as the login reply carries it, kept encoded.
//!
//! The seed's `LoginResMes` lists every user online (`UsersId`), and this server adds
//! their names (`users`): each login's reply grows with the number online. Encoding
//! both lists from scratch for every login made a storm of N logins cost O(N²) in
//! serialisation. The roster keeps the two lists as ready-escaped JSON fragments: a
//! login appends its user (O(1)), and a reply is a few copies of those fragments.
//! Anything else that changes who is online (a departure, another node's news) makes
//! the roster stale, and the next login builds it again, once.
//!
//! The fragments are escaped for where they end up: inside the envelope's `data`
//! string, itself JSON. A reply is byte for byte what `proto::encode` would produce
//! for the same lists (tested).
#![forbid(unsafe_code)]

use crate::proto::{self, UserInfo};

/// What the roster was built from: the registry's and the cluster's versions.
pub type Version = (u64, u64);

#[derive(Debug, Default)]
pub struct Roster {
    version: Option<Version>,
    /// `1,2,3`: numbers read the same escaped or not.
    ids: String,
    /// `{\"userId\":1,\"userName\":\"a\"},...`, escaped for the envelope.
    infos: String,
    count: usize,
}

/// `s` as it reads inside a JSON string (without the quotes).
fn escaped(s: &str) -> String {
    let quoted = serde_json::to_string(s).expect("a string serialises");
    quoted[1..quoted.len() - 1].to_string()
}

fn info_fragment(id: i64, name: &str) -> String {
    let inner = serde_json::to_string(&UserInfo {
        user_id: id,
        user_name: name.to_string(),
    })
    .expect("a user serialises");
    escaped(&inner)
}

const HEAD: &str = r#"{"type":"LoginResMes","data":"{\"code\":200,\"UsersId\":["#;
const MID: &str = r#"],\"error\":\"\",\"users\":["#;
const NO_USERS: &str = r#"],\"error\":\"\""#;
const TAIL: &str = r#"}"}"#;
const USERS_TAIL: &str = r#"]}"}"#;

impl Roster {
    /// Whether the roster lists who is online as of `version`.
    pub fn is_current(&self, version: Version) -> bool {
        self.version == Some(version)
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Builds the roster again from everyone online.
    pub fn rebuild<'a>(&mut self, version: Version, users: impl Iterator<Item = (i64, &'a str)>) {
        self.ids.clear();
        self.infos.clear();
        self.count = 0;
        for (id, name) in users {
            self.append(id, name);
        }
        self.version = Some(version);
    }

    /// Adds a user who came online, the roster being current before: it is current
    /// again as of `version`.
    pub fn push(&mut self, version: Version, id: i64, name: &str) {
        self.append(id, name);
        self.version = Some(version);
    }

    /// Marks the roster current as of `version` with no change (a user already
    /// listed logged in again).
    pub fn touch(&mut self, version: Version) {
        self.version = Some(version);
    }

    fn append(&mut self, id: i64, name: &str) {
        if self.count > 0 {
            self.ids.push(',');
            self.infos.push(',');
        }
        self.ids.push_str(&id.to_string());
        self.infos.push_str(&info_fragment(id, name));
        self.count += 1;
    }

    /// The body length of the reply, with or without the names.
    pub fn body_len(&self, names: bool) -> usize {
        if names && self.count > 0 {
            HEAD.len() + self.ids.len() + MID.len() + self.infos.len() + USERS_TAIL.len()
        } else {
            HEAD.len() + self.ids.len() + NO_USERS.len() + TAIL.len()
        }
    }

    /// The login reply (`LoginResMes` 200) listing everyone, with their names or not.
    pub fn reply(&self, names: bool) -> Vec<u8> {
        let len = self.body_len(names);
        let mut out = Vec::with_capacity(proto::HEADER_LEN + len);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(HEAD.as_bytes());
        out.extend_from_slice(self.ids.as_bytes());
        if names && self.count > 0 {
            out.extend_from_slice(MID.as_bytes());
            out.extend_from_slice(self.infos.as_bytes());
            out.extend_from_slice(USERS_TAIL.as_bytes());
        } else {
            out.extend_from_slice(NO_USERS.as_bytes());
            out.extend_from_slice(TAIL.as_bytes());
        }
        debug_assert_eq!(out.len(), proto::HEADER_LEN + len);
        out
    }

    /// The ids listed, in order (for a reply cut to fit a seed client).
    pub fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.ids.split(',').filter_map(|s| s.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{LoginResMes, kind};
    use proptest::prelude::*;

    fn serde_reply(users: &[(i64, String)], names: bool) -> Vec<u8> {
        proto::encode(
            kind::LOGIN_RES,
            &LoginResMes {
                code: 200,
                users_id: users.iter().map(|u| u.0).collect(),
                error: String::new(),
                users: if names {
                    users
                        .iter()
                        .map(|(id, n)| UserInfo {
                            user_id: *id,
                            user_name: n.clone(),
                        })
                        .collect()
                } else {
                    Vec::new()
                },
                retry_after: None,
            },
        )
    }

    #[test]
    fn the_reply_is_what_serde_writes() {
        let users: Vec<(i64, String)> = vec![
            (1, "ann".into()),
            (-7, "quote\" and \\ backslash".into()),
            (42, "tab\tnewline\n\u{1} control".into()),
            (i64::MAX, "ünïcødé 😀".into()),
        ];
        let mut r = Roster::default();
        assert!(!r.is_current((0, 0)));
        r.rebuild((1, 0), users[..2].iter().map(|(i, n)| (*i, n.as_str())));
        assert!(r.is_current((1, 0)));
        for (id, n) in &users[2..] {
            r.push((2, 0), *id, n);
        }
        assert_eq!(r.len(), 4);
        assert_eq!(r.reply(true), serde_reply(&users, true));
        assert_eq!(r.reply(false), serde_reply(&users, false));
        assert_eq!(r.body_len(true) + proto::HEADER_LEN, r.reply(true).len());
        assert_eq!(r.ids().collect::<Vec<_>>(), [1, -7, 42, i64::MAX]);
        r.rebuild((3, 1), std::iter::empty());
        assert_eq!(r.reply(true), serde_reply(&[], true));
    }

    proptest! {
        #[test]
        fn any_names_encode_as_serde_does(
            users in proptest::collection::vec((any::<i64>(), ".{0,12}"), 0..6)
        ) {
            let mut r = Roster::default();
            r.rebuild((0, 0), users.iter().map(|(i, n)| (*i, n.as_str())));
            prop_assert_eq!(r.reply(true), serde_reply(&users, true));
        }
    }
}
