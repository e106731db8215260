//! `HistoryMes`: what was said before, in the group or in one private conversation;
//! and the appending of every message to its conversation's history.
//!
//! Appending is off the loop and off the fan-out: a message accepted (a group message
//! broadcast, a private one delivered) is noted here, and every message
//! noted within `--history-gather-ms` (100 ms; or 4,096 of them, or 256 KiB) goes to the store as one
//! job, one commit ([`Hub::poll_job`] takes them): per loop turn, a quiet server's
//! every message would cost a commit of its own, on the same core as the loop. A
//! commit syncs the file: a few a second cost little CPU and leave a slow disk idle,
//! while one per turn would take a share of the loop's core under load.
//! The store numbers each entry within its conversation and trims the conversation to
//! its last `--history` entries. A store that is down or slow costs history entries,
//! never a live delivery: at most [`MAX_APPEND_JOBS`] appends are in flight (the
//! workers run them on a thread of their own), entries wait meanwhile up to
//! [`MAX_PENDING_BYTES`], and whatever cannot be kept is counted
//! (`Stats::history_lost`) and summed up in the log. A page asked for sends what waits
//! at once, ahead of itself, so it shows every message accepted before it. A private
//! message stored for an offline user is not noted: the store appends it to the
//! history in the write that stores it (once, however often it is resent); when
//! entries of its pair were noted before it and are not written yet, that write runs
//! in the history lane, after them.
//!
//! Reading is a store job for the asking connection, whose later frames wait for its
//! answer as for any other request. The pages have a queue of their own, apart from
//! every other job (`--history-reads` at once, in a worker lane of their own), and each
//! user an allowance (`--history-rate` a minute): a flood of them is refused (503, 429)
//! and holds up no live message, login or stored message. A page is read once the
//! appends handed over before it have ended. The worker that reads a page encodes it
//! into the frame sent ([`frame_fit::history_page`], one pass), fitted to what the
//! client reads: the oldest entries of a page are left out (and `more` set) when the
//! page would not fit. The loop only queues the bytes.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};

use super::cx::{Core, Cx};
use crate::conn::Pending;
use crate::hub::frame_fit;
use crate::job::{JobKind, Outcome, Page};
use crate::proto::{HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX, HistoryEntry, HistoryMes, code};
use crate::rate::Bucket;
use crate::store::{Conv, OfflineMsg, StoreError};
use crate::types::{ConnRef, Now};

/// Append jobs in flight at once: more entries wait in the hub and go together, so a
/// slow store never fills the job queue with history and refuses private messages.
pub const MAX_APPEND_JOBS: usize = 2;
/// Bytes of content (and names) waiting to be appended at most; past it the oldest
/// are dropped (counted as lost).
pub const MAX_PENDING_BYTES: usize = 1 << 20;
/// Entries waiting that go to the store at once, gathering time or not: large, so that
/// at saturation commits stay few and the loop's core goes to delivery (the journal
/// in docs/benchmarks/ has the measurement).
pub const GATHER_ENTRIES: usize = 4096;
/// Bytes of content (and names) waiting that go to the store at once: well before
/// [`MAX_PENDING_BYTES`], so that long messages are sent on, not dropped, while the
/// store keeps up.
pub const GATHER_CONTENT_BYTES: usize = MAX_PENDING_BYTES / 4;
/// The largest `HistoryResMes` body sent, whatever the client reads.
pub const MAX_REPLY_BYTES: usize = 1 << 20;
/// Users whose history rate is remembered before the full buckets are forgotten.
const RATES_PRUNE_MIN: usize = 1024;

/// Entries noted and not yet handed to a worker.
#[derive(Debug, Default)]
pub(crate) struct History {
    pending: VecDeque<HistoryEntry>,
    pending_bytes: usize,
    in_flight: usize,
    /// The private conversations of each append in flight, oldest first (the history
    /// lane runs them in order): a message of one of them stored now must follow it.
    pairs_in_flight: VecDeque<Vec<Conv>>,
    /// When the loop first saw entries waiting (monotonic ms).
    since_ms: Option<u64>,
    /// The server is stopping: whatever waits goes now, whatever is in flight.
    last_call: bool,
    /// Each user's pages asked for lately (`HubConfig::history_rate`); full buckets
    /// are forgotten now and then.
    rates: HashMap<i64, Bucket>,
    /// Past this many users in `rates`, the full buckets are forgotten.
    rates_prune_at: usize,
    /// Appends handed to a worker so far, and of them ended (they end in order).
    appends_sent: u64,
    appends_done: u64,
    /// Pages asked for while appends were on their way, each with the number of
    /// appends that must end before it is read (its place in the history queue taken).
    parked: VecDeque<(u64, ConnRef, JobKind)>,
}

impl History {
    fn can_submit(&self) -> bool {
        !self.pending.is_empty() && (self.in_flight < MAX_APPEND_JOBS || self.last_call)
    }

    /// When what waits is due: at once if enough waits or the server is stopping,
    /// else `gather_ms` after the loop first saw it.
    fn gathered_due_at(&self, gather_ms: u64) -> Option<u64> {
        if self.pending.is_empty() {
            return None;
        }
        if self.last_call
            || self.pending.len() >= GATHER_ENTRIES
            || self.pending_bytes >= GATHER_CONTENT_BYTES
        {
            return Some(0);
        }
        Some(self.since_ms.map_or(0, |t| t.saturating_add(gather_ms)))
    }
}

impl History {
    /// A message accepted for its conversation: appended with this turn's others.
    pub(crate) fn note(&mut self, cx: &mut Cx<'_>, e: HistoryEntry) {
        if cx.cfg().history == 0 {
            return;
        }
        let h = &mut *self;
        h.pending_bytes += e.content.len() + e.user_name.len();
        h.pending.push_back(e);
        while h.pending_bytes > MAX_PENDING_BYTES && h.pending.len() > 1 {
            let old = h.pending.pop_front().expect("not empty");
            h.pending_bytes -= old.content.len() + old.user_name.len();
            cx.stats().history_lost += 1;
            cx.summary().history_lost += 1;
        }
    }

    /// A private message delivered: it joins the pair's history.
    pub(crate) fn note_private(&mut self, cx: &mut Cx<'_>, m: OfflineMsg) {
        self.note(cx, m.into());
    }

    /// Hands the entries noted so far to a worker as one job, if one may go now and
    /// they are due (see `HubConfig::history_gather_ms`).
    pub(crate) fn flush(&mut self, cx: &mut Cx<'_>, now: Now) {
        if !self.pending.is_empty() && self.since_ms.is_none() {
            self.since_ms = Some(now.mono_ms);
        }
        if !self.waits(cx.core(), now) {
            return;
        }
        self.submit_appends(cx);
    }

    /// When entries waiting are due to go, if they can go then. `None` while the
    /// job queue is full: a finished job wakes the loop, and a due time in the past
    /// would only make it spin.
    pub(crate) fn due_at(&self, cx: &Core) -> Option<u64> {
        if !self.can_submit() || cx.store_jobs_in_flight() >= cx.cfg.max_jobs {
            return None;
        }
        self.gathered_due_at(cx.cfg.history_gather_ms)
    }

    /// A private message of `conv` is about to be stored with its history entry.
    /// Returns whether the storing must run in the history lane, after the entries of
    /// that conversation noted before it, so that it is numbered after them (see
    /// [`JobKind::is_history`]); those still waiting go first, now. Otherwise it runs
    /// in the storage lane, where no history append can hold it up.
    pub(crate) fn before_stored(&mut self, cx: &mut Cx<'_>, conv: Conv) -> bool {
        if cx.cfg().history == 0 {
            return false;
        }
        if self.pending.iter().any(|e| Conv::of(e) == conv) {
            self.submit_appends(cx);
            return true;
        }
        self.pairs_in_flight.iter().any(|v| v.contains(&conv))
    }

    /// Hands the entries noted so far to a worker as one job, whatever is in flight.
    fn submit_appends(&mut self, cx: &mut Cx<'_>) {
        if self.pending.is_empty() {
            return;
        }
        let h = &mut *self;
        let entries: Vec<HistoryEntry> = std::mem::take(&mut h.pending).into();
        let mut pairs: Vec<Conv> = entries
            .iter()
            .filter(|e| e.to_user_id.is_some())
            .map(Conv::of)
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        h.pairs_in_flight.push_back(pairs);
        h.pending_bytes = 0;
        h.since_ms = None;
        h.in_flight += 1;
        h.appends_sent += 1;
        let keep = cx.cfg().history;
        cx.submit_always(None, JobKind::AppendHistory { entries, keep });
    }

    /// Whether entries wait that are due and could be handed to a worker now.
    pub(crate) fn waits(&self, cx: &Core, now: Now) -> bool {
        self.due_at(cx).is_some_and(|at| at <= now.mono_ms)
    }

    /// The server is stopping: what waits is appended now, in-flight limit or not.
    pub(crate) fn last_call(&mut self) {
        self.last_call = true;
    }

    /// Takes the end of an append (true: nothing more to do with it). A private
    /// message stored for later joins its history in the store's own write
    /// ([`crate::store::Store::push_offline`]), not here: a resend after a lost answer
    /// must not add it twice.
    pub(crate) fn outcome(&mut self, cx: &mut Cx<'_>, outcome: &mut Outcome) -> bool {
        match outcome {
            Outcome::History(_) => {
                // Its place in the history queue is free, whoever it was for.
                cx.history_read_done();
                false
            }
            Outcome::AppendHistory {
                count,
                kept,
                result,
            } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.pairs_in_flight.pop_front();
                self.appends_done += 1;
                // The pages asked for after it can be read now.
                while let Some((after, ..)) = self.parked.front()
                    && *after <= self.appends_done
                {
                    let (_, conn, job) = self.parked.pop_front().expect("not empty");
                    cx.queue_history_read(conn, job);
                }
                match result {
                    Ok(()) => cx.stats().history_appended += *count as u64,
                    Err(e) => {
                        let lost = count.saturating_sub(*kept);
                        cx.stats().history_appended += *kept as u64;
                        cx.stats().history_lost += lost as u64;
                        cx.summary().history_lost += lost as u64;
                        cx.store_error(&format!(
                            "{lost} of {count} history entries not kept (live delivery \
                             is not affected): {e}"
                        ));
                    }
                }
                true
            }
            _ => false,
        }
    }

    pub(crate) fn handle(&mut self, cx: &mut Cx<'_>, key: usize, m: HistoryMes, now: Now) {
        let Some(me) = cx.conn(key).user_id() else {
            return;
        };
        let conv = match m.with {
            None => Conv::Group,
            Some(with) if with > 0 => Conv::pair(me, with),
            Some(_) => {
                cx.error(
                    key,
                    code::BAD_REQUEST,
                    "with: a user id is a positive number",
                );
                return;
            }
        };
        if cx.cfg().history == 0 {
            // History is off: there is none.
            let fit = Self::fit(cx, key);
            cx.reply_frame(key, frame_fit::history_page(&[], false, fit, false));
            return;
        }
        // A full queue refuses first: a page refused as busy costs none of the
        // user's allowance.
        let busy = |cx: &mut Cx<'_>| {
            cx.error_retry(key, code::UNAVAILABLE, "server busy, try again", 1);
        };
        if cx.core().history_reads >= cx.cfg().history_reads {
            cx.summary().history_refused += 1;
            busy(cx);
            return;
        }
        if !self.within_rate(cx.cfg().history_rate, me, now) {
            cx.summary().history_refused += 1;
            let per_min = cx.cfg().history_rate;
            cx.error_retry(
                key,
                code::TOO_MANY,
                &format!("too many history requests: at most {per_min} a minute"),
                60u64.div_ceil(u64::from(per_min)),
            );
            return;
        }
        let limit = if m.limit <= 0 {
            HISTORY_PAGE_DEFAULT
        } else {
            (m.limit as u64).min(HISTORY_PAGE_MAX as u64) as usize
        };
        if !cx.reserve_history_read() {
            busy(cx);
            return;
        }
        // What was noted goes first, so that a page asked for after a message was
        // accepted shows it: the page is read once the appends handed over before it
        // have ended (pages are read in a lane of their own, so that no number of them
        // holds up an append or a stored message).
        self.submit_appends(cx);
        let job = JobKind::ReadHistory {
            conv,
            before: m.before,
            after: m.after,
            limit,
            fit: Self::fit(cx, key),
        };
        cx.conn_mut(key).pending = Some(Pending::History);
        let conn = cx.conn_ref(key);
        if self.appends_done < self.appends_sent {
            self.parked.push_back((self.appends_sent, conn, job));
        } else {
            cx.queue_history_read(conn, job);
        }
    }

    /// Takes one of `user`'s history requests from their allowance of `per_min` a
    /// minute (0: no limit); false if none is left.
    fn within_rate(&mut self, per_min: u32, user: i64, now: Now) -> bool {
        if per_min == 0 {
            return true;
        }
        let rate = f64::from(per_min) / 60.0;
        let at = now.mono_ms;
        if self.rates.len() >= self.rates_prune_at.max(RATES_PRUNE_MIN) {
            self.rates.retain(|_, b| !b.is_full(at, rate, per_min));
            self.rates_prune_at = 2 * self.rates.len();
        }
        self.rates
            .entry(user)
            .or_insert_with(|| Bucket::new(per_min, at))
            .take(at, rate, per_min)
    }

    pub(crate) fn read_done(
        &mut self,
        cx: &mut Cx<'_>,
        key: usize,
        result: Result<Page, StoreError>,
    ) {
        match result {
            // Encoded and fitted by the worker: the loop only queues the bytes.
            Ok(Page(frame)) => {
                cx.reply_frame(key, frame);
            }
            Err(e) if e.is_timed_out() => {
                cx.error_retry(key, code::UNAVAILABLE, "server busy, try again", 1)
            }
            Err(e) => {
                cx.store_error(&format!("history not read: {e}"));
                cx.error(
                    key,
                    code::UNAVAILABLE,
                    "storage unavailable: history cannot be read now",
                );
            }
        }
    }

    /// The largest `HistoryResMes` body `key`'s client gets.
    fn fit(cx: &Cx<'_>, key: usize) -> usize {
        cx.conn(key).max_frame().min(MAX_REPLY_BYTES)
    }
}
