//! The small types every part of the core shares: a connection's handle, the time as
//! the caller passes it in, a piece of shared encoded bytes, and why an operator ends a
//! session. They import nothing of
//! the crate, so that whoever uses them (the hub, its components, the jobs, the
//! cluster, the registry) points down to them.
#![forbid(unsafe_code)]

use std::rc::Rc;

/// A connection's identity: its slab key plus a generation, so that a late event or
/// store result for a connection that has gone never reaches whoever reuses the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub key: usize,
    pub generation: u32,
}

impl ConnRef {
    /// The mio token value: generation in the high half, slab key in the low half.
    /// Generations start at 1, so no connection token is ever below 2^32 and the small
    /// token values stay free for the listener, the waker and signals.
    pub fn token(self) -> usize {
        ((self.generation as usize) << 32) | (self.key & 0xffff_ffff)
    }

    pub fn from_token(token: usize) -> ConnRef {
        ConnRef {
            key: token & 0xffff_ffff,
            generation: (token >> 32) as u32,
        }
    }
}

/// The time, as the caller sees it: a monotonic clock for timeouts and the wall clock
/// for the timestamps put on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono_ms: u64,
    pub unix_ms: u64,
}

/// A piece of shared encoded bytes: `bytes[start..end]`. Most are whole frames; a
/// frame can also span several parts (a login reply built from the shared blocks of
/// the roster), and a part can be the tail of a shared buffer (the presence notices
/// that came after a newcomer's own). The queue is a byte stream; parts only say
/// where its bytes are.
#[derive(Debug, Clone)]
pub struct Part {
    pub(crate) bytes: Rc<[u8]>,
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Part {
    /// All of `bytes`.
    pub fn whole(bytes: Rc<[u8]>) -> Part {
        let end = bytes.len() as u32;
        Part {
            bytes,
            start: 0,
            end,
        }
    }

    /// `bytes[start..]`.
    pub fn tail(bytes: Rc<[u8]>, start: usize) -> Part {
        Part::range(bytes, start, usize::MAX)
    }

    /// `bytes[start..end]`.
    pub fn range(bytes: Rc<[u8]>, start: usize, end: usize) -> Part {
        let end = end.min(bytes.len()) as u32;
        Part {
            bytes,
            start: (start as u32).min(end),
            end,
        }
    }

    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start as usize..self.end as usize]
    }

    #[inline]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Whether both parts are of the same shared buffer.
    pub fn same_bytes(&self, other: &Part) -> bool {
        self.same_bytes_as(&other.bytes)
    }

    #[inline]
    pub(crate) fn same_bytes_as(&self, bytes: &Rc<[u8]>) -> bool {
        Rc::ptr_eq(&self.bytes, bytes)
    }
}

/// Why an operator ends a user's sessions (what each means for a session and a login
/// in flight: `ops::admin`).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum Kick {
    /// Banned: logins are refused until unbanned.
    Banned,
    /// The account and its offline messages are deleted.
    Removed,
    /// The session is closed and nothing else: the user may log in again at once.
    Kicked,
}
