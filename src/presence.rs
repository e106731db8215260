//! Presence notices (`NotifyUserStatusMes`), gathered and sent to everyone together.
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
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::ops::Range;
use std::rc::Rc;

use crate::proto::{NotifyUserStatusMes, ServerMessage};

/// Notices waiting to be sent.
#[derive(Debug, Default)]
pub struct Presence {
    buf: Vec<u8>,
    /// Each notice's user and where its frame is in `buf`; an empty range is a mark
    /// ([`Presence::mark`]).
    entries: Vec<(i64, Range<usize>)>,
    /// When the first notice waiting was noted.
    since_ms: Option<u64>,
}

/// Notices taken out to be sent.
pub struct Batch {
    pub all: Rc<[u8]>,
    entries: Vec<(i64, Range<usize>)>,
    users: HashSet<i64>,
    /// Entries that are notices (not marks).
    notices: usize,
}

impl Presence {
    /// Notes that `user_id` changed to `status`.
    pub fn note(&mut self, user_id: i64, status: u8, name: &str, now_ms: u64) {
        let frame = ServerMessage::NotifyUserStatus(NotifyUserStatusMes {
            user_id,
            status,
            user_name: name.to_string(),
        })
        .encode();
        let start = self.buf.len();
        self.buf.extend_from_slice(&frame);
        self.entries.push((user_id, start..self.buf.len()));
        self.since_ms.get_or_insert(now_ms);
    }

    /// `user_id` logged in again without a notice (its older session replaced): its new
    /// connection is to get only the notices after this, as after a notice of its own.
    /// Nothing to mark when no notice waits.
    pub fn mark(&mut self, user_id: i64) {
        if !self.is_empty() {
            let at = self.buf.len();
            self.entries.push((user_id, at..at));
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
        Batch {
            all,
            entries,
            users,
            notices,
        }
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
    /// how many.
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
