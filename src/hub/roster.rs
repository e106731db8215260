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
//! A client that logged in `compact` gets the names as a list of their own, `names`,
//! in the order of `UsersId` (12 bytes for user 500001 named `s500001`, against 45 in
//! `users`): the roster keeps that list too.
//!
//! The fragments are escaped for where they end up: inside the envelope's `data`
//! string, itself JSON. A reply is byte for byte what `proto::encode` would produce
//! for the same lists (tested).
#![forbid(unsafe_code)]

use std::rc::Rc;

use crate::proto::{self, UserInfo};
use crate::types::Part;

/// What the roster was built from: the registry's and the cluster's versions.
pub type Version = (u64, u64);

/// Blocks stop merging at about this size (see [`List`]).
const BLOCK: usize = 16 * 1024;
/// The level of a block that merges no more.
const FULL: u8 = u8::MAX;

/// One of the two lists, `a,b,c,`, as shared blocks, each ending with a comma (a
/// reply leaves out the very last one). A login's reply is the blocks themselves,
/// shared with every other reply queued at the time: a storm of logins, each reply
/// unread for a while, holds about one roster's worth of memory, not one per login.
///
/// An item comes in as a block of its own (level 0); two blocks of the same level
/// merge into one of the next, as in a binary counter, until a block reaches
/// [`BLOCK`] bytes and stays as it is. Each item is so copied a few times in all
/// (once per level, about 9), and a reply has a few dozen parts at 10,000 users. A
/// list built again from everyone online is cut straight into such blocks.
#[derive(Debug, Default)]
struct List {
    blocks: Vec<(Rc<[u8]>, u8)>,
    /// Bytes in all, trailing commas included.
    bytes: usize,
}

impl List {
    /// The list of `items` in one pass: blocks of [`BLOCK`] bytes that merge no
    /// more (the last one perhaps shorter), each item copied once.
    fn build<I: AsRef<str>>(items: impl Iterator<Item = I>) -> List {
        let mut list = List::default();
        let mut buf = Vec::new();
        for item in items {
            buf.extend_from_slice(item.as_ref().as_bytes());
            buf.push(b',');
            if buf.len() >= BLOCK {
                list.seal(&mut buf);
            }
        }
        if !buf.is_empty() {
            list.seal(&mut buf);
        }
        list
    }

    fn seal(&mut self, buf: &mut Vec<u8>) {
        self.bytes += buf.len();
        self.blocks.push((buf.as_slice().into(), FULL));
        buf.clear();
    }

    fn push(&mut self, item: &str) {
        let mut block = Vec::with_capacity(item.len() + 1);
        block.extend_from_slice(item.as_bytes());
        block.push(b',');
        self.bytes += block.len();
        self.blocks.push((block.into(), 0));
        while let [.., (a, la), (b, lb)] = &self.blocks[..]
            && la == lb
            && *la != FULL
        {
            let mut merged = Vec::with_capacity(a.len() + b.len());
            merged.extend_from_slice(a);
            merged.extend_from_slice(b);
            let level = if merged.len() >= BLOCK { FULL } else { la + 1 };
            self.blocks.truncate(self.blocks.len() - 2);
            self.blocks.push((merged.into(), level));
        }
    }

    /// The list's length as sent (without the last comma).
    fn len(&self) -> usize {
        self.bytes.saturating_sub(1)
    }

    /// The blocks as parts, the last one without its comma.
    fn parts(&self, out: &mut Vec<Part>) {
        let n = self.blocks.len();
        for (i, (b, _)) in self.blocks.iter().enumerate() {
            out.push(if i + 1 == n {
                Part::range(b.clone(), 0, b.len() - 1)
            } else {
                Part::whole(b.clone())
            });
        }
    }

    fn bytes(&self) -> impl Iterator<Item = &[u8]> {
        self.blocks.iter().map(|(b, _)| &b[..])
    }
}

/// What a login reply lists besides `UsersId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// `users`: `{"userId":..,"userName":".."}` for each.
    Users,
    /// `names`, in the order of `UsersId` (a `compact` client).
    Names,
    /// Nothing more.
    Ids,
}

/// The constant pieces of a reply, shared by every reply.
#[derive(Debug)]
struct Pieces {
    mid: Rc<[u8]>,
    names_mid: Rc<[u8]>,
    users_tail: Rc<[u8]>,
    no_users: Rc<[u8]>,
}

impl Default for Pieces {
    fn default() -> Pieces {
        Pieces {
            mid: MID.as_bytes().into(),
            names_mid: NAMES_MID.as_bytes().into(),
            users_tail: USERS_TAIL.as_bytes().into(),
            no_users: [NO_USERS, TAIL].concat().as_bytes().into(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Roster {
    version: Option<Version>,
    /// `1,2,3`: numbers read the same escaped or not.
    ids: List,
    /// `{\"userId\":1,\"userName\":\"a\"},...`, escaped for the envelope.
    infos: List,
    /// `\"a\",\"b\",...`, escaped for the envelope.
    names: List,
    count: usize,
    pieces: Pieces,
}

fn name_fragment(name: &str) -> String {
    proto::json_escaped(&serde_json::to_string(name).expect("a string serialises"))
}

fn info_fragment(id: i64, name: &str) -> String {
    let inner = serde_json::to_string(&UserInfo {
        user_id: id,
        user_name: name.to_string(),
    })
    .expect("a user serialises");
    proto::json_escaped(&inner)
}

const HEAD: &str = r#"{"type":"LoginResMes","data":"{\"code\":200,\"UsersId\":["#;
const MID: &str = r#"],\"error\":\"\",\"users\":["#;
const NAMES_MID: &str = r#"],\"error\":\"\",\"names\":["#;
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
        let users: Vec<(i64, &str)> = users.collect();
        self.ids = List::build(users.iter().map(|(id, _)| id.to_string()));
        self.infos = List::build(users.iter().map(|(id, name)| info_fragment(*id, name)));
        self.names = List::build(users.iter().map(|(_, name)| name_fragment(name)));
        self.count = users.len();
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
        self.ids.push(&id.to_string());
        self.infos.push(&info_fragment(id, name));
        self.names.push(&name_fragment(name));
        self.count += 1;
    }

    /// The list and the piece before it that `listing` adds to the ids, if any.
    fn extra(&self, listing: Listing) -> Option<(&List, &Rc<[u8]>)> {
        match listing {
            _ if self.count == 0 => None,
            Listing::Users => Some((&self.infos, &self.pieces.mid)),
            Listing::Names => Some((&self.names, &self.pieces.names_mid)),
            Listing::Ids => None,
        }
    }

    /// The body length of the reply listing `listing`.
    pub fn body_len(&self, listing: Listing) -> usize {
        match self.extra(listing) {
            Some((list, mid)) => {
                HEAD.len() + self.ids.len() + mid.len() + list.len() + USERS_TAIL.len()
            }
            None => HEAD.len() + self.ids.len() + NO_USERS.len() + TAIL.len(),
        }
    }

    /// The login reply (`LoginResMes` 200) listing everyone, with their names as
    /// `listing` says, as parts: the roster's shared blocks and a few bytes of its own.
    pub fn reply(&self, listing: Listing) -> Vec<Part> {
        let len = self.body_len(listing);
        let mut head = Vec::with_capacity(proto::HEADER_LEN + HEAD.len());
        head.extend_from_slice(&(len as u32).to_be_bytes());
        head.extend_from_slice(HEAD.as_bytes());
        let mut out = Vec::with_capacity(3 + self.ids.blocks.len() + self.infos.blocks.len());
        out.push(Part::whole(head.into()));
        self.ids.parts(&mut out);
        if let Some((list, mid)) = self.extra(listing) {
            out.push(Part::whole(mid.clone()));
            list.parts(&mut out);
            out.push(Part::whole(self.pieces.users_tail.clone()));
        } else {
            out.push(Part::whole(self.pieces.no_users.clone()));
        }
        debug_assert_eq!(
            out.iter().map(Part::len).sum::<usize>(),
            proto::HEADER_LEN + len
        );
        out
    }

    /// The ids listed, in order (for a reply cut to fit a seed client).
    pub fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.ids
            .bytes()
            .flat_map(|b| b.split(|&c| c == b','))
            .filter_map(|s| std::str::from_utf8(s).ok()?.parse().ok())
    }
}

/// The inner JSON that [`with_max_frame`] adds to a login reply, escaped as it is in
/// the envelope's `data` string: `,\"maxFrame\":65536`.
pub fn max_frame_field(max: u32) -> String {
    format!(r#",\"maxFrame\":{max}"#)
}

/// A login reply (as `Chat::login_reply` makes it, of shared parts) with `maxFrame`
/// added as its last inner field, as serde writes `LoginResMes::max_frame`: the
/// frame's last part loses its closing `}"}`, a part of its own brings the field and
/// the closing back, and the length prefix is written again. The shared blocks stay
/// shared.
pub fn with_max_frame(mut parts: Vec<Part>, max: u32) -> Vec<Part> {
    const CLOSE: &[u8] = br#"}"}"#;
    let field = max_frame_field(max);
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return parts;
    };
    if first.len() < proto::HEADER_LEN || !last.as_slice().ends_with(CLOSE) {
        debug_assert!(false, "not a whole frame");
        return parts;
    }
    let body = parts.iter().map(Part::len).sum::<usize>() - proto::HEADER_LEN + field.len();
    let mut tail = field.into_bytes();
    tail.extend_from_slice(CLOSE);
    let n = parts.len() - 1;
    let last = &parts[n];
    parts[n] = Part::range(
        last.bytes.clone(),
        last.start as usize,
        last.end as usize - CLOSE.len(),
    );
    parts.push(Part::whole(tail.into()));
    let mut head = parts[0].as_slice().to_vec();
    head[..proto::HEADER_LEN].copy_from_slice(&(body as u32).to_be_bytes());
    parts[0] = Part::whole(head.into());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{LoginResMes, kind};
    use proptest::prelude::*;

    fn bytes(parts: Vec<Part>) -> Vec<u8> {
        parts.iter().flat_map(|p| p.as_slice().to_vec()).collect()
    }

    fn serde_reply(users: &[(i64, String)], listing: Listing) -> Vec<u8> {
        proto::encode(
            kind::LOGIN_RES,
            &LoginResMes {
                code: 200,
                users_id: users.iter().map(|u| u.0).collect(),
                error: String::new(),
                users: if listing == Listing::Users {
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
                names: if listing == Listing::Names {
                    users.iter().map(|(_, n)| n.clone()).collect()
                } else {
                    Vec::new()
                },
                retry_after: None,
                max_frame: None,
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
        assert_eq!(
            bytes(r.reply(Listing::Users)),
            serde_reply(&users, Listing::Users)
        );
        assert_eq!(
            bytes(r.reply(Listing::Ids)),
            serde_reply(&users, Listing::Ids)
        );
        assert_eq!(
            r.body_len(Listing::Users) + proto::HEADER_LEN,
            bytes(r.reply(Listing::Users)).len()
        );
        assert_eq!(
            bytes(r.reply(Listing::Names)),
            serde_reply(&users, Listing::Names)
        );
        assert_eq!(
            r.body_len(Listing::Names) + proto::HEADER_LEN,
            bytes(r.reply(Listing::Names)).len()
        );
        assert_eq!(r.ids().collect::<Vec<_>>(), [1, -7, 42, i64::MAX]);
        r.rebuild((3, 1), std::iter::empty());
        assert_eq!(
            bytes(r.reply(Listing::Users)),
            serde_reply(&[], Listing::Users)
        );
    }

    #[test]
    fn a_large_roster_is_shared_blocks_and_reads_as_serde_writes() {
        let mut users: Vec<(i64, String)> = (1..=3000).map(|i| (i, format!("user {i}"))).collect();
        let mut r = Roster::default();
        // Half built again at once (blocks cut straight), half come in one by one.
        r.rebuild((0, 0), users[..1500].iter().map(|(i, n)| (*i, n.as_str())));
        for (id, n) in &users[1500..] {
            r.push((1, 0), *id, n);
        }
        let first = r.reply(Listing::Users);
        users.push((3001, "one more".into()));
        r.push((2, 0), 3001, "one more");
        let second = r.reply(Listing::Users);
        assert!(second.len() > 10, "blocks sealed: {} parts", second.len());
        // The second reply shares all but a few parts with the first: its head and,
        // in each list, the block the newcomer's merged into.
        let fresh: Vec<usize> = second
            .iter()
            .filter(|p| !first.iter().any(|q| q.same_bytes(p)))
            .map(Part::len)
            .collect();
        assert!(fresh.len() <= 4, "parts not shared: {fresh:?}");
        assert!(
            fresh.iter().sum::<usize>() <= 2 * BLOCK + 200,
            "bytes not shared: {fresh:?}"
        );
        assert_eq!(bytes(first), serde_reply(&users[..3000], Listing::Users));
        assert_eq!(bytes(second), serde_reply(&users, Listing::Users));
        assert_eq!(
            bytes(r.reply(Listing::Ids)),
            serde_reply(&users, Listing::Ids)
        );
        assert_eq!(
            bytes(r.reply(Listing::Names)),
            serde_reply(&users, Listing::Names)
        );
        assert!(
            r.body_len(Listing::Names) * 2 < r.body_len(Listing::Users),
            "the compact listing is less than half the size"
        );
        assert_eq!(r.ids().collect::<Vec<_>>(), (1..=3001).collect::<Vec<_>>());
    }

    #[test]
    fn max_frame_is_added_as_serde_writes_it() {
        let users: Vec<(i64, String)> = (1..=2000).map(|i| (i, format!("u\"{i}"))).collect();
        let mut r = Roster::default();
        r.rebuild((0, 0), users.iter().map(|(i, n)| (*i, n.as_str())));
        for listing in [Listing::Users, Listing::Names, Listing::Ids] {
            let parts = with_max_frame(r.reply(listing), 65536);
            let mut want = serde_reply(&users, listing);
            let body: LoginResMes = match proto::ServerMessage::parse(&want[4..]) {
                Ok(proto::ServerMessage::LoginRes(res)) => res,
                other => panic!("{other:?}"),
            };
            want = proto::encode(
                kind::LOGIN_RES,
                &LoginResMes {
                    max_frame: Some(65536),
                    ..body
                },
            );
            assert_eq!(bytes(parts), want);
        }
        // One whole frame (a reply cut to fit) as well.
        let one = serde_reply(&users[..3], Listing::Ids);
        let parts = with_max_frame(vec![Part::whole(one.into())], 9000);
        let got = bytes(parts);
        match proto::ServerMessage::parse(&got[4..]) {
            Ok(proto::ServerMessage::LoginRes(res)) => {
                assert_eq!((res.users_id, res.max_frame), (vec![1, 2, 3], Some(9000)))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            u32::from_be_bytes(got[..4].try_into().unwrap()) as usize,
            got.len() - 4
        );
    }

    proptest! {
        #[test]
        fn any_names_encode_as_serde_does(
            users in proptest::collection::vec((any::<i64>(), ".{0,12}"), 0..6)
        ) {
            let mut r = Roster::default();
            r.rebuild((0, 0), users.iter().map(|(i, n)| (*i, n.as_str())));
            for listing in [Listing::Users, Listing::Names, Listing::Ids] {
                prop_assert_eq!(bytes(r.reply(listing)), serde_reply(&users, listing));
            }
        }
    }
}
