//! One connection's state, with no socket in it.
//!
//! A [`Conn`] holds what the server knows about one client: the bytes of a frame that
//! has not fully arrived, the session (anonymous or logged in as someone), whether a
//! store job for it is in flight (its later frames wait, so replies keep their order),
//! and its output queue. The reactor owns the socket and moves bytes; everything else
//! about a connection lives here and is testable without one.
//!
//! The output queue ([`OutQueue`]) holds parts of shared, already-encoded buffers
//! ([`Part`]: a range of an `Rc<[u8]>`): a group message is encoded once and every
//! recipient's queue points at the same bytes, and the group messages of a busy
//! stretch of turns share one buffer ([`TurnBuf`]), so that a recipient's run of them
//! is one part; a login reply is mostly the shared
//! blocks of the roster; a newcomer's presence notices are the tail of the batch
//! everyone else gets whole.
//! It is bounded in bytes; a client that stops reading hits the bound and is dropped,
//! so nobody else ever waits for it. A direct answer to the client's own request (the
//! login reply, the online list) is always queued if what the client has not read yet
//! is within the bound: the limit judges a client by what it fails to read, not by
//! the size of an answer it asked for. Buffers start empty and grow on demand; the hub
//! gives back the memory of idle ones now and then (`Conn::shrink_idle`), not on every
//! drain, where a busy connection would reallocate each time.
//!
//! The fields are the core's (`pub(crate)`): the reactor sees connections only through
//! the hub's methods and the [`ConnRef`] handle.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use crate::offline::OfflineSlot;
use crate::rate::Pace;
use crate::store::OfflineMsg;
pub use crate::types::{ConnRef, Part};

/// The output queue was full; the frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// How a write attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued was written.
    Drained,
    /// The socket would block; the rest waits for the next writable event.
    Blocked,
}

/// The small broadcast frames of a stretch of turns, back to back in one buffer that
/// becomes one shared `Rc<[u8]>` ([`TurnBuf::seal`]) before anything is written.
///
/// Until then the recipients' queues hold ranges of it that point at `mark`, an empty
/// buffer of its own, and a recipient's consecutive frames are one range
/// ([`OutQueue::push_turn`]). At saturation a loop turn broadcasts tens of group
/// messages: one part per recipient instead of one per message and recipient makes
/// queuing cheaper, and a queue of one part is written straight from the shared
/// bytes, with no copy into the write buffer.
#[derive(Debug)]
pub struct TurnBuf {
    buf: Vec<u8>,
    mark: Rc<[u8]>,
    /// The connections with parts pointing at `mark` (a slab key can be there again
    /// for a connection that took a closed one's place: sealing it finds nothing).
    touched: Vec<usize>,
}

/// Frames up to this size go into the turn's buffer; longer ones are shared on their
/// own (written from where they are, see [`GATHER_FRAME`]).
pub const TURN_FRAME: usize = GATHER_FRAME;
/// The turn's buffer is sealed, and another started, past this size: a slow reader
/// holding part of a buffer keeps all of it.
pub const TURN_BYTES: usize = 256 * 1024;

impl Default for TurnBuf {
    fn default() -> TurnBuf {
        TurnBuf {
            buf: Vec::new(),
            mark: Rc::from(Vec::new()),
            touched: Vec::new(),
        }
    }
}

impl TurnBuf {
    /// Appends `frame` (at most [`TURN_FRAME`] bytes) and returns its range.
    pub fn add(&mut self, frame: &[u8]) -> (usize, usize) {
        let start = self.buf.len();
        self.buf.extend_from_slice(frame);
        (start, self.buf.len())
    }

    /// Whether the buffer is due to be sealed before more is added.
    pub fn is_full(&self) -> bool {
        self.buf.len() >= TURN_BYTES
    }

    /// Notes that `key`'s queue got its first part of this buffer.
    pub fn touched(&mut self, key: usize) {
        self.touched.push(key);
    }

    /// Whether `key` is among the queues to seal.
    pub fn is_touched(&self, key: usize) -> bool {
        self.touched.contains(&key)
    }

    /// Makes the shared bytes and points every part queued so far at them; the buffer
    /// starts again empty.
    pub fn seal(&mut self, conns: &mut slab::Slab<Conn>) {
        if self.buf.is_empty() {
            return;
        }
        let bytes: Rc<[u8]> = Rc::from(self.buf.as_slice());
        self.buf.clear();
        if self.buf.capacity() > 2 * TURN_BYTES {
            self.buf.shrink_to(TURN_BYTES);
        }
        for key in self.touched.drain(..) {
            if let Some(c) = conns.get_mut(key) {
                c.out.seal(&self.mark, &bytes);
            }
        }
    }
}

/// A bounded queue of shared encoded frames.
#[derive(Debug, Default)]
pub struct OutQueue {
    /// What is left to write; the front part's `start` moves as it is written.
    chunks: VecDeque<Part>,
    /// Bytes ever queued.
    queued_total: u64,
    /// Bytes ever written.
    written_total: u64,
    /// A direct answer to the client's own request, queued and not yet written, is
    /// not counted against the limit: its size (0: none), and where it ends in
    /// `queued_total`.
    reply_len: u32,
    reply_end: u64,
    /// Parts that still point at a [`TurnBuf`]'s mark (see [`OutQueue::push_turn`]).
    unsealed: u32,
}

/// Slices handed to one vectored write, kept on the stack. Every slice but the copied
/// ones is a frame of at least [`GATHER_FRAME`] bytes, so one call still moves at least
/// 128 KiB when the queue holds that much.
const MAX_IOV: usize = 64;
/// Bytes of small frames copied together for one write.
pub const GATHER_BYTES: usize = 256 * 1024;
/// Frames this big are written from where they are, not copied.
pub const GATHER_FRAME: usize = 4096;

impl OutQueue {
    /// Queues `frame` unless that would take the queue over `limit` bytes.
    pub fn push(&mut self, frame: Rc<[u8]>, limit: usize) -> Result<(), Overflow> {
        self.push_part(Part::whole(frame), limit)
    }

    /// Queues `part` unless that would take the queue over `limit` bytes.
    pub fn push_part(&mut self, part: Part, limit: usize) -> Result<(), Overflow> {
        if self.counted() + part.len() > limit {
            return Err(Overflow);
        }
        self.push_unchecked(part);
        Ok(())
    }

    /// Queues `parts`, one frame or more, all or none.
    pub fn push_parts<const N: usize>(
        &mut self,
        parts: [Part; N],
        limit: usize,
    ) -> Result<(), Overflow> {
        let len: usize = parts.iter().map(Part::len).sum();
        if self.counted() + len > limit {
            return Err(Overflow);
        }
        for part in parts {
            self.push_unchecked(part);
        }
        Ok(())
    }

    /// Queues a direct answer to the client's own request. One such answer at a time
    /// is not counted against `limit` until it is written: a client is judged by what
    /// it fails to read, not by the size of an answer it asked for. A second answer
    /// while the first is unread counts like any frame.
    pub fn push_reply(&mut self, frame: Rc<[u8]>, limit: usize) -> Result<(), Overflow> {
        self.push_reply_parts(std::slice::from_ref(&Part::whole(frame)), limit)
    }

    /// [`OutQueue::push_reply`] for an answer in several parts.
    pub fn push_reply_parts(&mut self, parts: &[Part], limit: usize) -> Result<(), Overflow> {
        let len: usize = parts.iter().map(Part::len).sum();
        if self.reply_pending() {
            if self.counted() + len > limit {
                return Err(Overflow);
            }
        } else if self.counted() > limit {
            return Err(Overflow);
        }
        let counted_reply = !self.reply_pending();
        for p in parts {
            self.push_unchecked(p.clone());
        }
        if counted_reply {
            self.reply_len = len as u32;
            self.reply_end = self.queued_total;
        }
        Ok(())
    }

    /// Queues `buf[start..end]` of the turn's shared buffer, `turn`, which is not made
    /// yet: the part points at its mark until [`OutQueue::seal`]. Right after a part of
    /// the same buffer that ends where this one starts, the two are one part: a
    /// recipient of every group message of a busy turn holds one part for all of them,
    /// written with one `send` and no copy. Returns whether this is the queue's first
    /// part of the buffer (the caller notes the queue, to seal it). Unless that would
    /// take the queue over `limit` bytes.
    pub fn push_turn(
        &mut self,
        turn: &TurnBuf,
        start: usize,
        end: usize,
        limit: usize,
    ) -> Result<bool, Overflow> {
        let len = end - start;
        if len == 0 {
            return Ok(false);
        }
        if self.counted() + len > limit {
            return Err(Overflow);
        }
        self.queued_total += len as u64;
        if let Some(last) = self.chunks.back_mut()
            && last.end as usize == start
            && last.same_bytes_as(&turn.mark)
        {
            last.end = end as u32;
            return Ok(false);
        }
        self.chunks.push_back(Part {
            bytes: turn.mark.clone(),
            start: start as u32,
            end: end as u32,
        });
        self.unsealed += 1;
        Ok(self.unsealed == 1)
    }

    /// Whether parts of a turn's buffer not sealed yet are queued.
    pub fn has_unsealed(&self) -> bool {
        self.unsealed > 0
    }

    /// Points the parts of the turn's buffer (at `mark`) at its bytes, now made.
    fn seal(&mut self, mark: &Rc<[u8]>, bytes: &Rc<[u8]>) {
        for part in self.chunks.iter_mut().rev() {
            if self.unsealed == 0 {
                break;
            }
            if part.same_bytes_as(mark) {
                part.bytes = bytes.clone();
                self.unsealed -= 1;
            }
        }
    }

    fn reply_pending(&self) -> bool {
        self.reply_len > 0
    }

    /// Bytes queued that count against the limit.
    #[inline]
    fn counted(&self) -> usize {
        self.len_bytes().saturating_sub(self.reply_len as usize)
    }

    fn push_unchecked(&mut self, part: Part) {
        if part.len() == 0 {
            return;
        }
        self.queued_total += part.len() as u64;
        self.chunks.push_back(part);
    }

    /// Bytes ever queued on this connection.
    pub fn queued_total(&self) -> u64 {
        self.queued_total
    }

    /// Bytes ever written to this connection's socket.
    pub fn written_total(&self) -> u64 {
        self.written_total
    }

    pub fn is_empty(&self) -> bool {
        self.queued_total == self.written_total
    }

    pub fn len_bytes(&self) -> usize {
        (self.queued_total - self.written_total) as usize
    }

    /// Writes as much as `write` takes, until the queue is empty or `write` reports
    /// `WouldBlock`.
    ///
    /// Small frames are first copied back to back into `scratch` (up to
    /// [`GATHER_BYTES`] per call) and handed over as one slice; frames of
    /// [`GATHER_FRAME`] bytes or more go as slices of their own. The kernel's cost per
    /// slice of a vectored write is far higher than a user-space copy of a few hundred
    /// bytes, so small frames are copied together (the journal in docs/benchmarks/
    /// has the measurement). The frames themselves stay encoded once and shared; `scratch`
    /// is one buffer for the whole server, reused by every write.
    pub fn write_with<W>(&mut self, scratch: &mut Vec<u8>, mut write: W) -> io::Result<Flush>
    where
        W: FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    {
        debug_assert_eq!(
            self.unsealed, 0,
            "a turn's buffer not sealed before a write"
        );
        // Which part of the write each slice is: a range of `scratch` or a whole chunk.
        #[derive(Clone, Copy)]
        enum Slot {
            Copied(usize, usize),
            Chunk(usize),
        }
        // One part (a quiet server's usual case): written from where it is, without
        // the copy or the slice arrays below.
        while self.chunks.len() == 1 {
            match write_once(&mut write, &[IoSlice::new(self.chunks[0].as_slice())])? {
                Some(n) => self.consume(n),
                None => return Ok(Flush::Blocked),
            }
        }
        let mut parts = [Slot::Chunk(0); MAX_IOV];
        while !self.chunks.is_empty() {
            scratch.clear();
            let mut n_parts = 0;
            let mut copied_from = 0;
            for (i, c) in self.chunks.iter().enumerate() {
                let bytes = c.as_slice();
                if n_parts >= MAX_IOV - 1 {
                    break;
                }
                if bytes.len() < GATHER_FRAME {
                    if scratch.len() + bytes.len() > GATHER_BYTES {
                        break;
                    }
                    scratch.extend_from_slice(bytes);
                    continue;
                }
                if scratch.len() > copied_from {
                    parts[n_parts] = Slot::Copied(copied_from, scratch.len());
                    n_parts += 1;
                    copied_from = scratch.len();
                }
                parts[n_parts] = Slot::Chunk(i);
                n_parts += 1;
            }
            if scratch.len() > copied_from {
                parts[n_parts] = Slot::Copied(copied_from, scratch.len());
                n_parts += 1;
            }
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            for (slot, p) in iov.iter_mut().zip(&parts[..n_parts]) {
                *slot = match *p {
                    Slot::Copied(a, b) => IoSlice::new(&scratch[a..b]),
                    Slot::Chunk(i) => IoSlice::new(self.chunks[i].as_slice()),
                };
            }
            match write_once(&mut write, &iov[..n_parts])? {
                Some(n) => self.consume(n),
                None => return Ok(Flush::Blocked),
            }
        }
        // An idle connection holds no output buffer. Given back at once, while other
        // connections are being written: the next one queued for reuses it, so a
        // storm of logins does not leave one behind per connection (resident memory,
        // with the allocator's holes). At saturation the allocation per write is a
        // small cost, measured in the journal in docs/benchmarks/.
        self.shrink_if_empty();
        Ok(Flush::Drained)
    }

    fn consume(&mut self, mut n: usize) {
        self.written_total += n as u64;
        if self.reply_len > 0 && self.written_total >= self.reply_end {
            self.reply_len = 0;
        }
        while n > 0 {
            let front = self.chunks.front_mut().expect("wrote more than was queued");
            let left = front.len();
            if n >= left {
                n -= left;
                self.chunks.pop_front();
            } else {
                front.start += n as u32;
                n = 0;
            }
        }
    }

    /// Gives back the queue's memory if it is empty: when a write drains it, and for
    /// every connection now and then.
    pub fn shrink_if_empty(&mut self) {
        if self.chunks.is_empty() && self.chunks.capacity() > 0 {
            self.chunks = VecDeque::new();
        }
    }
}

/// One vectored write, retried if interrupted: the bytes written, or `None` when the
/// socket takes nothing more now.
fn write_once<W>(write: &mut W, iov: &[IoSlice<'_>]) -> io::Result<Option<usize>>
where
    W: FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
{
    loop {
        return match write(iov) {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Session {
    /// Connected, not logged in.
    Anonymous,
    /// Logged in as `user_id`.
    Online { user_id: i64, name: Rc<str> },
}

/// What a store job in flight for this connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    Login {
        user_id: i64,
    },
    Register {
        user_id: i64,
    },
    /// A private message to `to` is being stored.
    Private {
        to: i64,
    },
    /// A page of history is being read.
    History,
}

/// One connection's state machine.
#[derive(Debug)]
pub struct Conn {
    pub(crate) generation: u32,
    /// The client's address, kept apart from its port: a `SocketAddr` takes 32 bytes.
    pub(crate) peer_ip: IpAddr,
    pub(crate) peer_port: u16,
    /// Flood control: frames this connection may still send right now, and whether
    /// one waits for its turn (later frames wait in `inbuf` and in the socket).
    pub(crate) msg_pace: Pace,
    pub(crate) session: Session,
    /// A reply-bearing store job is in flight: later frames wait in `inbuf`.
    pub(crate) pending: Option<Pending>,
    /// Set once the connection is being closed: nothing more is read or handled.
    pub(crate) closing: Option<Closing>,
    /// Bytes received and not yet handled: a partial frame, or frames waiting for
    /// `pending` to clear.
    pub(crate) inbuf: Vec<u8>,
    pub(crate) out: OutQueue,
    /// When the login timeout started counting: when the connection opened, or, after
    /// a busy refusal, the time the client was told to come back.
    pub(crate) login_clock_ms: u64,
    pub(crate) login_failures: u32,
    /// Largest frame body this client reads (`maxFrame`; a seed client's limit until
    /// it says otherwise).
    pub(crate) max_frame_out: u32,
    /// The client reads the compact forms of presence (`compact` in its login).
    pub(crate) compact: bool,
    /// The earliest deadline of this connection in the hub's timer heap (0: none).
    pub(crate) armed_ms: u64,
    /// Delivery of its stored private messages, once online.
    pub(crate) offline: OfflineSlot,
    /// Private messages queued here whose senders wait for them to be written,
    /// oldest first.
    pub(crate) awaiting: VecDeque<AwaitingWrite>,
    /// The client declared an extension in its login or registration (`maxFrame`,
    /// `ackOffline`, `compact`); without one it is taken for the seed's client, which
    /// shows only the seed's frame types.
    pub(crate) extended: bool,
}

/// A private message queued on this connection whose sender is answered once its
/// frame is written: 200 (206 cut short) when the written count passes `end`, or, if
/// the connection goes first, the message is stored for the recipient's next login
/// (202).
#[derive(Debug)]
pub(crate) struct AwaitingWrite {
    /// The output queue's count of bytes ever queued once the frame was queued.
    pub(crate) end: u64,
    /// When it was queued (monotonic ms).
    pub(crate) since_ms: u64,
    /// The recipient got it cut short.
    pub(crate) cut: bool,
    /// Who is told.
    pub(crate) from: Awaiter,
}

/// Whom a private message waiting to be written answers.
#[derive(Debug)]
pub(crate) enum Awaiter {
    /// A sender on this node: answered here, and if the message is not written, it is
    /// stored here.
    Local {
        sender: ConnRef,
        msg: OfflineMsg,
        msg_id: Option<String>,
    },
    /// Another node's request (its `Event::Private` number `id`): that node is told
    /// whether the message was written, and answers its sender (storing the message
    /// if it was not).
    Remote { node: Rc<str>, id: u64 },
}

/// How a closing connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing {
    /// Close once the output queue is written (error frames, logout), or at `deadline`.
    pub flush: bool,
    pub deadline_ms: u64,
}

/// An input buffer that is empty and larger than this is given back.
const KEEP_INBUF: usize = 4096;

impl Conn {
    pub fn new(generation: u32, peer: SocketAddr, now_ms: u64, msg_burst: u32) -> Conn {
        Conn {
            generation,
            peer_ip: peer.ip(),
            peer_port: peer.port(),
            msg_pace: Pace::new(msg_burst, now_ms),
            session: Session::Anonymous,
            pending: None,
            closing: None,
            inbuf: Vec::new(),
            out: OutQueue::default(),
            login_clock_ms: now_ms,
            login_failures: 0,
            max_frame_out: crate::proto::SEED_MAX_FRAME as u32,
            compact: false,
            armed_ms: 0,
            offline: OfflineSlot::new(false),
            awaiting: VecDeque::new(),
            extended: false,
        }
    }

    /// Largest frame body this client reads.
    pub fn max_frame(&self) -> usize {
        self.max_frame_out as usize
    }

    /// Whether the client reads the compact forms of presence.
    pub fn compact(&self) -> bool {
        self.compact
    }

    /// The client declared `maxFrame`: never less than a seed client reads.
    pub(crate) fn set_max_frame(&mut self, n: u32) {
        self.max_frame_out = n.max(crate::proto::SEED_MAX_FRAME as u32);
        self.extended = true;
    }

    /// Whether the client is taken for the seed's (it declared no extension): it is
    /// sent only the frame types the seed's client shows.
    pub fn is_seed_client(&self) -> bool {
        !self.extended
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn peer(&self) -> SocketAddr {
        SocketAddr::new(self.peer_ip, self.peer_port)
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    pub fn queued_bytes(&self) -> usize {
        self.out.len_bytes()
    }

    /// The parts queued and not yet written (shared with other queues), once the
    /// turn's buffer is sealed (`Hub::seal_output`).
    #[cfg(test)]
    pub(crate) fn queued_parts(&self) -> Vec<Part> {
        assert_eq!(self.out.unsealed, 0, "parts of an unsealed turn buffer");
        self.out.chunks.iter().cloned().collect()
    }

    /// The name of the user logged in here ("" if none).
    pub fn user_name(&self) -> &str {
        match &self.session {
            Session::Online { name, .. } => name,
            Session::Anonymous => "",
        }
    }

    pub fn user_id(&self) -> Option<i64> {
        match &self.session {
            Session::Online { user_id, .. } => Some(*user_id),
            Session::Anonymous => None,
        }
    }

    pub fn is_online(&self) -> bool {
        matches!(self.session, Session::Online { .. })
    }

    /// May frames be handled now? Not while a reply-bearing job is in flight, nor
    /// while a frame waits for the message rate, and not once the connection is
    /// closing.
    pub fn can_handle(&self) -> bool {
        self.pending.is_none() && self.closing.is_none() && !self.msg_pace.waiting()
    }

    /// Should the reactor read from the socket? Only when frames can be handled, so
    /// that a client waiting on a store job, or sending faster than its rate, is held
    /// back by TCP, not by our memory.
    pub fn wants_read(&self) -> bool {
        self.can_handle()
    }

    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Gives back idle buffers (see [`OutQueue::shrink_if_empty`]).
    pub fn shrink_idle(&mut self) {
        self.out.shrink_if_empty();
        // However small: often the rest of a read that came while a login was in
        // flight, kept for as long as the connection stays idle.
        self.shrink_inbuf_over(0);
    }

    /// Gives back the input buffer's memory once it is empty, if it is over
    /// [`KEEP_INBUF`] (a busy connection keeps a small one).
    pub fn shrink_inbuf(&mut self) {
        self.shrink_inbuf_over(KEEP_INBUF);
    }

    fn shrink_inbuf_over(&mut self, keep: usize) {
        if self.inbuf.is_empty() && self.inbuf.capacity() > keep {
            self.inbuf = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &[u8]) -> Rc<[u8]> {
        Rc::from(bytes)
    }

    #[test]
    fn token_round_trip() {
        let r = ConnRef {
            key: 12345,
            generation: 7,
        };
        assert_eq!(ConnRef::from_token(r.token()), r);
        assert!(r.token() >= 1 << 32);
    }

    #[test]
    fn queue_is_bounded_in_bytes() {
        let mut q = OutQueue::default();
        assert!(q.push(frame(&[1; 6]), 10).is_ok());
        assert_eq!(q.push(frame(&[2; 5]), 10), Err(Overflow));
        assert!(q.push(frame(&[3; 4]), 10).is_ok());
        assert_eq!(q.len_bytes(), 10);
    }

    fn write_all(q: &mut OutQueue) -> Vec<u8> {
        let mut out = Vec::new();
        let r = q.write_with(&mut Vec::new(), |iov| {
            for s in iov {
                out.extend_from_slice(s);
            }
            Ok(iov.iter().map(|s| s.len()).sum())
        });
        assert_eq!(r.unwrap(), Flush::Drained);
        out
    }

    #[test]
    fn a_drained_queue_holds_no_buffer() {
        let mut q = OutQueue::default();
        for _ in 0..3 {
            q.push(frame(b"abc"), 100).unwrap();
        }
        assert!(q.chunks.capacity() > 0);
        assert_eq!(write_all(&mut q), b"abcabcabc");
        assert_eq!(
            q.chunks.capacity(),
            0,
            "an idle connection keeps no output buffer"
        );
    }

    #[test]
    fn parts_write_their_own_bytes_and_a_reply_in_parts_is_one_reply() {
        let shared = frame(b"0123456789");
        let mut q = OutQueue::default();
        q.push_part(Part::tail(shared.clone(), 7), 100).unwrap();
        q.push_part(Part::range(shared.clone(), 2, 4), 100).unwrap();
        q.push_part(Part::range(shared.clone(), 5, 5), 100).unwrap();
        q.push_part(Part::tail(shared.clone(), 99), 100).unwrap();
        assert_eq!(q.len_bytes(), 5);
        assert_eq!(write_all(&mut q), b"78923");

        // A reply in parts is exempt from the limit as a whole, once.
        let parts = [Part::whole(shared.clone()), Part::tail(shared.clone(), 4)];
        q.push_reply_parts(&parts, 8).unwrap();
        assert_eq!(q.len_bytes(), 16);
        assert_eq!(
            q.push(frame(&[1; 9]), 8),
            Err(Overflow),
            "the limit still holds"
        );
        q.push(frame(&[1; 8]), 8).unwrap();
        assert_eq!(
            q.push_reply_parts(&parts, 8),
            Err(Overflow),
            "a second reply while the first is unread counts"
        );
        let out = write_all(&mut q);
        assert_eq!(&out[..16], b"0123456789456789");
        assert_eq!(q.push(frame(&[1; 8]), 8), Ok(()), "written: nothing counts");
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut q = OutQueue::default();
        let shared = frame(b"hello");
        q.push(shared.clone(), 100).unwrap();
        q.push(frame(b" world"), 100).unwrap();
        q.push(shared, 100).unwrap();
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        // A writer that takes three bytes per call, then blocks every other call.
        let mut calls = 0;
        loop {
            let r = q.write_with(&mut scratch, |iov| {
                calls += 1;
                if calls % 2 == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let mut n = 0;
                for s in iov {
                    for b in s.iter() {
                        if n == 3 {
                            return Ok(n);
                        }
                        out.push(*b);
                        n += 1;
                    }
                }
                Ok(n)
            });
            match r.unwrap() {
                Flush::Drained => break,
                Flush::Blocked => continue,
            }
        }
        assert_eq!(out, b"hello worldhello");
        assert!(q.is_empty());
    }

    #[test]
    fn small_frames_go_in_one_slice_and_big_ones_on_their_own() {
        let mut q = OutQueue::default();
        let big = frame(&[7; GATHER_FRAME]);
        for _ in 0..3 {
            q.push(frame(b"ab"), 1 << 20).unwrap();
        }
        q.push(big.clone(), 1 << 20).unwrap();
        q.push(frame(b"cd"), 1 << 20).unwrap();
        let mut scratch = Vec::new();
        let mut shapes = Vec::new();
        let mut out = Vec::new();
        let r = q.write_with(&mut scratch, |iov| {
            shapes.push(iov.iter().map(|s| s.len()).collect::<Vec<_>>());
            for s in iov {
                out.extend_from_slice(s);
            }
            Ok(iov.iter().map(|s| s.len()).sum())
        });
        assert_eq!(r.unwrap(), Flush::Drained);
        assert_eq!(shapes, vec![vec![6, GATHER_FRAME, 2]]);
        let mut want = b"ababab".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"cd");
        assert_eq!(out, want);
    }

    proptest::proptest! {
        /// Whatever the frame sizes and however little each write takes, the bytes
        /// come out complete and in order.
        #[test]
        fn any_frames_any_partial_writes_come_out_in_order(
            sizes in proptest::collection::vec(1usize..2 * GATHER_FRAME, 1..150),
            takes in proptest::collection::vec(1usize..3 * GATHER_FRAME, 1..20),
        ) {
            let mut q = OutQueue::default();
            let mut want = Vec::new();
            for (i, n) in sizes.iter().enumerate() {
                let f: Vec<u8> = (0..*n).map(|j| (i * 31 + j) as u8).collect();
                want.extend_from_slice(&f);
                q.push(f.into(), usize::MAX).unwrap();
            }
            let mut scratch = Vec::new();
            let mut out = Vec::new();
            let mut widest = 0;
            for k in 0.. {
                let take = takes[k % takes.len()];
                let r = q.write_with(&mut scratch, |iov| {
                    widest = widest.max(iov.len());
                    if k % 3 == 2 {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    let mut n = 0;
                    'all: for s in iov {
                        for b in s.iter() {
                            if n == take {
                                break 'all;
                            }
                            out.push(*b);
                            n += 1;
                        }
                    }
                    Ok(n)
                });
                if r.unwrap() == Flush::Drained {
                    break;
                }
            }
            proptest::prop_assert!(widest <= MAX_IOV);
            proptest::prop_assert_eq!(out, want);
            proptest::prop_assert!(q.is_empty());
        }
    }

    #[test]
    fn write_errors_and_zero_writes_are_reported() {
        let mut q = OutQueue::default();
        q.push(frame(b"x"), 10).unwrap();
        let mut scratch = Vec::new();
        assert!(q.write_with(&mut scratch, |_| Ok(0)).is_err());
        assert!(
            q.write_with(&mut scratch, |_| Err(io::ErrorKind::ConnectionReset.into()))
                .is_err()
        );
    }

    #[test]
    fn a_turns_broadcasts_are_one_part_per_recipient_in_order_with_other_frames() {
        let mut conns = slab::Slab::new();
        let conn = || Conn::new(1, "127.0.0.1:1".parse().unwrap(), 0, 20);
        let (a, b, gone) = (
            conns.insert(conn()),
            conns.insert(conn()),
            conns.insert(conn()),
        );
        let mut turn = TurnBuf::default();
        // What the hub does: a queue's first part of the buffer is noted, to be sealed.
        let push = |turn: &mut TurnBuf, conns: &mut slab::Slab<Conn>, key, range, limit| {
            let (start, end) = range;
            let first = conns[key].out.push_turn(turn, start, end, limit)?;
            if first {
                turn.touched(key);
            }
            Ok::<bool, Overflow>(first)
        };
        let one = turn.add(b"one");
        for key in [a, b, gone] {
            assert_eq!(push(&mut turn, &mut conns, key, one, 100), Ok(true));
        }
        // Another frame between two broadcasts keeps its place.
        conns[a].out.push(frame(b"X"), 100).unwrap();
        let two = turn.add(b"two");
        for key in [a, b] {
            assert_eq!(push(&mut turn, &mut conns, key, two, 100), Ok(false));
        }
        // Over the limit, like any frame: nothing queued.
        let three = turn.add(b"three");
        assert_eq!(push(&mut turn, &mut conns, b, three, 8), Err(Overflow));
        assert_eq!(conns[b].out.len_bytes(), 6);
        // b's two broadcasts are one part; a's are two, around its own frame.
        assert_eq!(conns[b].out.chunks.len(), 1);
        assert_eq!(conns[a].out.chunks.len(), 3);
        // A connection that went before the seal takes nothing with it.
        conns.remove(gone);
        turn.seal(&mut conns);
        assert_eq!(write_all(&mut conns[a].out), b"oneXtwo");
        assert_eq!(write_all(&mut conns[b].out), b"onetwo");
        // The next buffer starts over: a queue's first part of it is noted again.
        let four = turn.add(b"four");
        assert_eq!(four, (0, 4));
        assert_eq!(push(&mut turn, &mut conns, b, four, 100), Ok(true));
        turn.seal(&mut conns);
        assert_eq!(write_all(&mut conns[b].out), b"four");
    }

    #[test]
    fn new_connections_hold_no_buffers() {
        let c = Conn::new(1, "127.0.0.1:1".parse().unwrap(), 0, 20);
        assert_eq!(c.inbuf.capacity(), 0);
        assert!(c.out.is_empty());
        assert!(c.wants_read());
        assert!(!c.wants_write());
    }

    #[test]
    fn idle_connections_give_back_small_empty_buffers_but_keep_what_is_waiting() {
        let mut c = Conn::new(1, "127.0.0.1:1".parse().unwrap(), 0, 20);
        c.inbuf.extend_from_slice(b"half a frame");
        c.out.push(frame(b"unwritten"), 100).unwrap();
        c.shrink_idle();
        assert_eq!(c.inbuf, b"half a frame");
        assert_eq!(c.out.len_bytes(), 9);

        c.inbuf.clear();
        c.out.consume(9);
        assert!(c.inbuf.capacity() > 0 && c.out.chunks.capacity() > 0);
        c.shrink_idle();
        assert_eq!(c.inbuf.capacity(), 0);
        assert_eq!(c.out.chunks.capacity(), 0);
    }
}
