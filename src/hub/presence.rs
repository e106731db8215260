//! Presence notices (`NotifyUserStatusMes`, or `PresenceMes` for clients that logged in
//! `compact`), gathered and sent to everyone together.
//!
//! Every arrival and departure concerns everyone online: sent one by one, a storm of
//! 10,000 logins would queue and write 10,000 notices to each of up to 10,000
//! connections, one round of writes per login. Instead the notices wait here, encoded
//! once into one buffer, and go out together as one shared chunk per connection: when
//! the presence interval has passed since the first of them, or at once before any
//! message from one user to another (so that nobody reads a message from a user before
//! the notice that the user came online).
//!
//! A connection whose own user has a notice in the batch (it arrived during the
//! interval) gets only the notices that came after its own (the tail of the shared
//! buffer, not a copy): its login reply listed everyone online then, and nobody is
//! told of their own comings and goings. A login that tells nobody (it replaced the
//! user's older session) leaves a mark in the batch to the same end.
//!
//! A client that logged in `compact` gets the same notices as `PresenceMes` frames,
//! 23 bytes a change against a frame of 101 (user 500001, `s500001`): the batch is
//! encoded a second time
//! that way, cut into frames any client reads (8,096 bytes), and shared too. A
//! newcomer's tail then starts inside a frame: it gets a frame start of its own (the
//! length and the opening, a few dozen bytes) followed by the shared bytes from its
//! first change on, through that frame's end and the frames after it.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::ops::Range;
use std::rc::Rc;

use crate::proto::{NotifyUserStatusMes, SEED_MAX_FRAME, ServerMessage};

/// Longest name a notice carries, in characters. Registration allows 32, but accounts
/// stored before that rule (or by the seed's server, in Redis) may have any: a notice
/// must fit every client whatever the name (at most about 2 KB with this).
const MAX_NOTICE_NAME_CHARS: usize = 256;

/// Notices waiting to be sent.
#[derive(Debug, Default)]
pub struct Presence {
    buf: Vec<u8>,
    /// Each notice's user and where its frame is in `buf`; an empty range is a mark
    /// ([`Presence::mark`]).
    entries: Vec<(i64, Range<usize>)>,
    /// When the first notice waiting was noted.
    since_ms: Option<u64>,
    /// Each notice's change as `PresenceMes` lists it, escaped for the envelope, one
    /// after another; `compact_ends[i]` is where entry `i`'s ends (a mark adds none).
    compact: Vec<u8>,
    compact_ends: Vec<usize>,
}

/// The start and end of a `PresenceMes` frame around its changes (comma-separated).
const COMPACT_HEAD: &str = r#"{"type":"PresenceMes","data":"{\"changes\":["#;
const COMPACT_TAIL: &str = r#"]}"}"#;

/// The notices of a batch as `PresenceMes` frames.
pub struct CompactBatch {
    /// Every frame, one after another.
    pub all: Rc<[u8]>,
    /// Per frame: where it starts in `all`, and the index (among the notices) of its
    /// first change.
    frames: Vec<(usize, usize)>,
    /// Per notice: where its change starts in `all`.
    starts: Vec<usize>,
}

/// Notices taken out to be sent.
pub struct Batch {
    pub all: Rc<[u8]>,
    entries: Vec<(i64, Range<usize>)>,
    users: HashSet<i64>,
    /// Entries that are notices (not marks).
    notices: usize,
    pub compact: CompactBatch,
}

impl Presence {
    /// Notes that `user_id` changed to `status`.
    pub fn note(&mut self, user_id: i64, status: u8, name: &str, now_ms: u64) {
        let name = match name.char_indices().nth(MAX_NOTICE_NAME_CHARS) {
            Some((cut, _)) => &name[..cut],
            None => name,
        };
        let frame = ServerMessage::NotifyUserStatus(NotifyUserStatusMes {
            user_id,
            status,
            user_name: name.to_string(),
        })
        .encode();
        let start = self.buf.len();
        self.buf.extend_from_slice(&frame);
        self.entries.push((user_id, start..self.buf.len()));
        let change = serde_json::to_string(&(user_id, status, name)).expect("a change serialises");
        self.compact
            .extend_from_slice(crate::proto::json_escaped(&change).as_bytes());
        self.compact_ends.push(self.compact.len());
        self.since_ms.get_or_insert(now_ms);
    }

    /// `user_id` logged in again without a notice (its older session replaced): its new
    /// connection is to get only the notices after this, as after a notice of its own.
    /// Nothing to mark when no notice waits.
    pub fn mark(&mut self, user_id: i64) {
        if !self.is_empty() {
            let at = self.buf.len();
            self.entries.push((user_id, at..at));
            self.compact_ends.push(self.compact.len());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When the notices waiting are due, given the interval.
    pub fn due_at(&self, interval_ms: u64) -> Option<u64> {
        self.since_ms.map(|t| t.saturating_add(interval_ms))
    }

    /// Takes every notice waiting; the buffer's memory is kept for the next ones
    /// unless it grew large.
    pub fn take(&mut self) -> Batch {
        let all: Rc<[u8]> = self.buf.as_slice().into();
        self.buf.clear();
        if self.buf.capacity() > 64 * 1024 {
            self.buf = Vec::new();
        }
        self.since_ms = None;
        let entries = std::mem::take(&mut self.entries);
        let users = entries.iter().map(|(u, _)| *u).collect();
        let notices = entries.iter().filter(|(_, r)| !r.is_empty()).count();
        let compact = self.take_compact(&entries);
        Batch {
            all,
            entries,
            users,
            notices,
            compact,
        }
    }

    /// The notices of `entries` as `PresenceMes` frames.
    fn take_compact(&mut self, entries: &[(i64, Range<usize>)]) -> CompactBatch {
        let mut ranges = Vec::with_capacity(entries.len());
        let mut start = 0;
        for ((_, seed), &end) in entries.iter().zip(&self.compact_ends) {
            if !seed.is_empty() {
                ranges.push(start..end);
            }
            start = end;
        }
        let mut all = Vec::with_capacity(self.compact.len() + 64);
        let mut frames = Vec::new();
        let mut starts = Vec::with_capacity(ranges.len());
        let mut first = 0;
        while first < ranges.len() {
            frames.push((all.len(), first));
            let mut at = all.len() + crate::proto::HEADER_LEN + COMPACT_HEAD.len();
            let next = compact_frame(&mut all, &self.compact, &ranges, first);
            for r in &ranges[first..next] {
                starts.push(at);
                at += r.len() + 1;
            }
            first = next;
        }
        self.compact.clear();
        self.compact_ends.clear();
        if self.compact.capacity() > 64 * 1024 {
            self.compact = Vec::new();
        }
        CompactBatch {
            all: all.into(),
            frames,
            starts,
        }
    }
}

/// Appends to `out` one `PresenceMes` frame of the changes from `first` on, as many as
/// fit a body of [`SEED_MAX_FRAME`] bytes (at least one); returns the index of the
/// first change left out.
fn compact_frame(
    out: &mut Vec<u8>,
    changes: &[u8],
    ranges: &[Range<usize>],
    first: usize,
) -> usize {
    let fixed = COMPACT_HEAD.len() + COMPACT_TAIL.len();
    let mut len = fixed + ranges[first].len();
    let mut next = first + 1;
    while next < ranges.len() && len + 1 + ranges[next].len() <= SEED_MAX_FRAME {
        len += 1 + ranges[next].len();
        next += 1;
    }
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(COMPACT_HEAD.as_bytes());
    for (i, r) in ranges[first..next].iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&changes[r.clone()]);
    }
    out.extend_from_slice(COMPACT_TAIL.as_bytes());
    next
}

impl CompactBatch {
    /// Frames in the batch.
    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    /// What a client that is to get the notices from number `from` on (see
    /// [`Batch::since_own`]) gets as `PresenceMes` frames: unless `from` starts a
    /// frame, the start of one of its own (length and opening) for the rest of the
    /// frame `from` falls inside; then where the shared bytes start in
    /// [`CompactBatch::all`] (they run to its end); and how many frames in all.
    pub fn since(&self, from: usize) -> (Option<Vec<u8>>, usize, usize) {
        if from >= self.starts.len() {
            return (None, self.all.len(), 0);
        }
        let f = self.frames.partition_point(|&(_, first)| first <= from) - 1;
        let (at, first) = self.frames[f];
        let frames = self.frames.len() - f;
        if first == from {
            return (None, at, frames);
        }
        let end = self.frames.get(f + 1).map_or(self.all.len(), |&(at, _)| at);
        let tail = self.starts[from];
        let len = COMPACT_HEAD.len() + (end - tail);
        let mut head = Vec::with_capacity(crate::proto::HEADER_LEN + COMPACT_HEAD.len());
        head.extend_from_slice(&(len as u32).to_be_bytes());
        head.extend_from_slice(COMPACT_HEAD.as_bytes());
        (Some(head), tail, frames)
    }
}

impl Batch {
    /// Notices in the batch.
    pub fn len(&self) -> usize {
        self.notices
    }

    pub fn is_empty(&self) -> bool {
        self.notices == 0
    }

    /// Whether `user_id` has a notice (or a mark) of its own in the batch.
    pub fn concerns(&self, user_id: i64) -> bool {
        self.users.contains(&user_id)
    }

    /// What `user_id` is to get of the batch: the notices after its own last one
    /// (or mark), as where they start in [`Batch::all`] (they run to its end), and
    /// how many (the first of them is notice number `len() - n`).
    pub fn since_own(&self, user_id: i64) -> (usize, usize) {
        let last = self.entries.iter().rposition(|(u, _)| *u == user_id);
        let Some(last) = last else {
            return (0, self.notices);
        };
        let from = self.entries[last].1.end;
        let n = self.entries[last + 1..]
            .iter()
            .filter(|(_, r)| !r.is_empty())
            .count();
        (from, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::status;

    fn frames(mut bytes: &[u8]) -> Vec<ServerMessage> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            out.push(ServerMessage::parse(&bytes[4..4 + len]).unwrap());
            bytes = &bytes[4 + len..];
        }
        out
    }

    /// The changes the seed frames tell, in order.
    fn seed_changes(bytes: &[u8]) -> Vec<(i64, u8, String)> {
        frames(bytes)
            .into_iter()
            .map(|m| match m {
                ServerMessage::NotifyUserStatus(n) => (n.user_id, n.status, n.user_name),
                other => panic!("not a notice: {other:?}"),
            })
            .collect()
    }

    /// The changes `PresenceMes` frames tell, in order; each frame's body fits a
    /// seed client.
    fn compact_changes(bytes: &[u8]) -> Vec<(i64, u8, String)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            assert!(len <= SEED_MAX_FRAME, "a frame of {len} bytes");
            match ServerMessage::parse(&rest[4..4 + len]).unwrap() {
                ServerMessage::Presence(p) => {
                    assert!(!p.changes.is_empty());
                    out.extend(p.changes)
                }
                other => panic!("not a PresenceMes: {other:?}"),
            }
            rest = &rest[4 + len..];
        }
        out
    }

    fn compact_frames(mut bytes: &[u8]) -> usize {
        let mut n = 0;
        while !bytes.is_empty() {
            let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            bytes = &bytes[4 + len..];
            n += 1;
        }
        n
    }

    /// What `user_id` gets of `b` as seed frames and as compact ones: the same.
    fn both_ways(b: &Batch, user_id: i64) -> Vec<(i64, u8, String)> {
        let (seed, compact) = if b.concerns(user_id) {
            let (from, n) = b.since_own(user_id);
            let (head, rest, frames) = b.compact.since(b.len() - n);
            let mut bytes = head.clone().unwrap_or_default();
            assert!(bytes.len() < 64, "a frame start of its own, no more");
            bytes.extend_from_slice(&b.compact.all[rest..]);
            assert_eq!(frames > 0, rest < b.compact.all.len());
            assert_eq!(frames, compact_frames(&bytes));
            (seed_changes(&b.all[from..]), compact_changes(&bytes))
        } else {
            (seed_changes(&b.all), compact_changes(&b.compact.all))
        };
        assert_eq!(seed, compact, "user {user_id}");
        seed
    }

    #[test]
    fn compact_frames_tell_the_same_changes_in_frames_any_client_reads() {
        let mut p = Presence::default();
        // Long names with characters that escape: many frames.
        let name = |i: i64| format!("\"quoted\" \\ {} ünï {i}", "x".repeat(20));
        for i in 1..=600 {
            p.note(i, status::ONLINE, &name(i), 0);
            if i % 97 == 0 {
                p.mark(i - 3);
            }
        }
        p.note(5, status::OFFLINE, &name(5), 0);
        let b = p.take();
        assert!(b.compact.frames() > 3, "{} frames", b.compact.frames());
        assert!(
            b.compact.all.len() * 2 < b.all.len(),
            "compact {} against {} bytes",
            b.compact.all.len(),
            b.all.len()
        );
        assert_eq!(
            both_ways(&b, 10_000).len(),
            601,
            "not concerned: everything"
        );
        for user in 1..=600 {
            both_ways(&b, user);
        }
        assert_eq!(both_ways(&b, 5), [], "its own last notice is the last one");
        assert_eq!(both_ways(&b, 600).len(), 1);
    }

    #[test]
    fn a_very_long_name_is_cut_so_that_notices_fit_any_client() {
        let mut p = Presence::default();
        let long = "\u{1}\"é".repeat(5_000);
        p.note(1, status::ONLINE, &long, 0);
        let b = p.take();
        let seed = seed_changes(&b.all);
        assert!(b.all.len() <= SEED_MAX_FRAME, "{} bytes", b.all.len());
        assert_eq!(seed[0].2.chars().count(), MAX_NOTICE_NAME_CHARS);
        assert!(long.starts_with(&seed[0].2));
        assert_eq!(compact_changes(&b.compact.all), seed);
    }

    proptest::proptest! {
        #[test]
        fn every_user_gets_the_same_changes_either_way(
            steps in proptest::collection::vec((1i64..8, 0u8..3, ".{0,40}", proptest::bool::ANY), 1..60)
        ) {
            let mut p = Presence::default();
            for (user, status, name, mark) in &steps {
                if *mark {
                    p.mark(*user);
                } else {
                    p.note(*user, *status, name, 0);
                }
            }
            if p.is_empty() {
                return Ok(());
            }
            let b = p.take();
            for user in 0..9 {
                both_ways(&b, user);
            }
        }
    }

    fn notice(user_id: i64, status: u8, name: &str) -> ServerMessage {
        ServerMessage::NotifyUserStatus(NotifyUserStatusMes {
            user_id,
            status,
            user_name: name.into(),
        })
    }

    #[test]
    fn notices_go_together_in_order_and_nobody_gets_their_own() {
        let mut p = Presence::default();
        assert_eq!(p.due_at(50), None);
        p.note(1, status::ONLINE, "a", 100);
        p.note(2, status::ONLINE, "b", 120);
        p.note(1, status::OFFLINE, "a", 130);
        assert_eq!(p.due_at(50), Some(150), "due from the first notice");
        let b = p.take();
        assert!(p.is_empty() && p.due_at(50).is_none());
        assert_eq!(b.len(), 3);
        assert_eq!(
            frames(&b.all),
            [
                notice(1, status::ONLINE, "a"),
                notice(2, status::ONLINE, "b"),
                notice(1, status::OFFLINE, "a")
            ]
        );
        assert!(b.concerns(1) && b.concerns(2) && !b.concerns(3));
        let (from, n) = b.since_own(1);
        assert_eq!(
            (n, from),
            (0, b.all.len()),
            "nothing after user 1's last notice"
        );
        let (from, n) = b.since_own(2);
        assert_eq!(n, 1);
        assert_eq!(frames(&b.all[from..]), [notice(1, status::OFFLINE, "a")]);
    }

    #[test]
    fn a_mark_hides_what_came_before_it_from_its_user_only() {
        let mut p = Presence::default();
        p.mark(3);
        assert!(p.is_empty(), "nothing waits: nothing to mark");
        p.note(1, status::ONLINE, "a", 100);
        p.mark(3);
        p.mark(4);
        p.note(2, status::ONLINE, "b", 110);
        let b = p.take();
        assert_eq!(b.len(), 2, "marks are no notices");
        assert_eq!(frames(&b.all).len(), 2);
        let (from, n) = b.since_own(3);
        assert_eq!(
            (frames(&b.all[from..]), n),
            (vec![notice(2, status::ONLINE, "b")], 1)
        );
        let (_, n) = b.since_own(1);
        assert_eq!(n, 1, "another's mark counts for nothing");
    }
}
