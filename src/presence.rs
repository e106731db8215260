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
//! interval) gets only the notices that came after its own: its login reply listed
//! everyone online then, and nobody is told of their own comings and goings.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::ops::Range;
use std::rc::Rc;

use crate::proto::{NotifyUserStatusMes, ServerMessage};

/// Notices waiting to be sent.
#[derive(Debug, Default)]
pub struct Presence {
    buf: Vec<u8>,
    /// Each notice's user and where its frame is in `buf`.
    entries: Vec<(i64, Range<usize>)>,
    /// When the first notice waiting was noted.
    since_ms: Option<u64>,
}

/// Notices taken out to be sent.
pub struct Batch {
    pub all: Rc<[u8]>,
    entries: Vec<(i64, Range<usize>)>,
    users: HashSet<i64>,
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
        Batch {
            all,
            entries,
            users,
        }
    }
}

impl Batch {
    /// Notices in the batch.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `user_id` has a notice of its own in the batch.
    pub fn concerns(&self, user_id: i64) -> bool {
        self.users.contains(&user_id)
    }

    /// What `user_id` is to get of the batch: the notices after its own last one,
    /// and how many.
    pub fn since_own(&self, user_id: i64) -> (Rc<[u8]>, usize) {
        let last = self.entries.iter().rposition(|(u, _)| *u == user_id);
        let after = &self.entries[last.map_or(0, |i| i + 1)..];
        let mut out = Vec::new();
        for (u, r) in after {
            if *u != user_id {
                out.extend_from_slice(&self.all[r.clone()]);
            }
        }
        (out.into(), after.len())
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
        let (own, n) = b.since_own(1);
        assert_eq!((n, own.len()), (0, 0), "nothing after user 1's last notice");
        let (own, n) = b.since_own(2);
        assert_eq!(n, 1);
        assert_eq!(frames(&own), [notice(1, status::OFFLINE, "a")]);
    }
}
