//! Delivery of stored private messages to one session: when to fetch a batch from the
//! store, and when the messages delivered may be removed from it.
//!
//! Messages leave the store only once they have reached the client: for a client that
//! acknowledges them itself (`ackOffline` at login, then `OfflineAckMes`), when it says
//! so; for every other client (the seed's), once their frames are fully written to the
//! socket, handed to the kernel. Until then they stay stored, and a crash or a dropped
//! connection means they come again at the next login: twice, never lost.
//!
//! Nothing stored for a user who is online or logging in is stranded: a message stored
//! while a fetch, a delivery or a removal is under way ([`Offline::poke`]) makes the
//! machine fetch again once that step is done.
//!
//! This is a pure state machine: the hub feeds it events and carries out the
//! [`Action`] each returns.
#![forbid(unsafe_code)]

/// What the hub must do next for this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    /// Fetch the next batch of stored messages.
    Fetch,
    /// Remove the stored messages with sequence numbers up to this one.
    Ack(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Nothing in flight, nothing known to be waiting.
    Idle,
    /// A fetch is in flight.
    Fetching,
    /// A batch is queued on the connection: waiting for it to be written (or, for a
    /// client that acknowledges, for its acknowledgement).
    Delivering,
    /// The removal of a delivered batch is in flight.
    Acking,
}

/// One session's offline delivery.
#[derive(Debug, Clone)]
pub struct Offline {
    step: Step,
    /// The client acknowledges messages itself.
    client_acks: bool,
    /// Highest sequence number queued on this session.
    seen: u64,
    /// Highest sequence number that reached the client (written, or acknowledged by it).
    reached: u64,
    /// Highest sequence number whose removal the store confirmed.
    removed: u64,
    /// Frames of the batch being delivered not yet written: (the output queue's count
    /// of bytes ever queued once this frame was queued, its sequence number).
    marks: std::collections::VecDeque<(u64, u64)>,
    /// The store may hold more than the last batch brought.
    more: bool,
    /// Something was stored for this user while a step was in flight.
    recheck: bool,
}

impl Offline {
    pub fn new(client_acks: bool) -> Offline {
        Offline {
            step: Step::Idle,
            client_acks,
            seen: 0,
            reached: 0,
            removed: 0,
            marks: Default::default(),
            more: false,
            recheck: false,
        }
    }

    /// Whether the session got `seq` already (a batch fetched again after a failed
    /// removal); such a message is acknowledged again but not shown twice.
    pub fn already_seen(&self, seq: u64) -> bool {
        seq <= self.seen
    }

    /// Whether messages of the batch being delivered are not yet written.
    pub fn unwritten(&self) -> bool {
        !self.marks.is_empty()
    }

    /// Nothing under way, nothing waiting, nothing remembered that a later batch
    /// needs: the state can be dropped.
    pub fn is_settled(&self) -> bool {
        self.step == Step::Idle
            && self.marks.is_empty()
            && !self.more
            && !self.recheck
            && self.seen <= self.removed
            && self.reached <= self.removed
    }

    /// A fetch was handed to the store.
    pub fn fetching(&mut self) {
        self.step = Step::Fetching;
        self.more = false;
    }

    /// Whether a fetch is in flight.
    pub fn is_fetching(&self) -> bool {
        self.step == Step::Fetching
    }

    /// A message stored for this user was queued; `queued_total` is the connection's
    /// count of bytes ever queued, this frame included.
    pub fn queued(&mut self, seq: u64, queued_total: u64) {
        self.seen = self.seen.max(seq);
        self.marks.push_back((queued_total, seq));
    }

    /// A batch (from the login, or a fetch) has been handled: `skipped` messages were
    /// already seen, `full` says the store may hold more (the batch was full, or
    /// delivery stopped early because the output queue filled).
    pub fn batch_done(&mut self, skipped: bool, full: bool) -> Action {
        self.more = full;
        if !self.marks.is_empty() {
            self.step = Step::Delivering;
            // A client that acknowledged ahead (it cannot) changes nothing here.
            return Action::None;
        }
        if skipped && self.seen > self.removed {
            // Only messages delivered before: remove them again.
            self.step = Step::Acking;
            return Action::Ack(self.seen);
        }
        self.idle()
    }

    /// The connection has written `written_total` bytes in all.
    pub fn written(&mut self, written_total: u64) -> Action {
        while let Some(&(end, seq)) = self.marks.front() {
            if end > written_total {
                break;
            }
            self.marks.pop_front();
            if !self.client_acks {
                self.reached = self.reached.max(seq);
            }
        }
        self.maybe_ack()
    }

    /// The client acknowledged every message up to `upto`. Ignored unless it declared
    /// that it would; never beyond what it was sent.
    pub fn client_ack(&mut self, upto: u64) -> Action {
        if !self.client_acks {
            return Action::None;
        }
        self.reached = self.reached.max(upto.min(self.seen));
        self.maybe_ack()
    }

    fn maybe_ack(&mut self) -> Action {
        if self.step == Step::Delivering && self.reached >= self.seen {
            self.marks.clear();
            self.step = Step::Acking;
            return Action::Ack(self.seen);
        }
        Action::None
    }

    /// The removal up to `upto` finished.
    pub fn ack_done(&mut self, upto: u64, ok: bool) -> Action {
        if ok {
            self.removed = self.removed.max(upto);
        } else {
            // They stay stored and come again at the next login; this session has them
            // already, so nothing is shown twice here. Fetching now would only bring
            // the same batch back.
            self.more = false;
        }
        self.idle()
    }

    /// A fetch failed: the rest waits for the next login (or the next poke).
    pub fn fetch_failed(&mut self) -> Action {
        self.more = false;
        self.step = Step::Idle;
        Action::None
    }

    /// Something was stored for this user while its login is in flight: once online,
    /// the session looks at the store again after its first batch.
    pub fn poke_later(&mut self) {
        self.recheck = true;
    }

    /// Something was stored for this user.
    pub fn poke(&mut self) -> Action {
        if self.step == Step::Idle {
            self.step = Step::Fetching;
            self.more = false;
            return Action::Fetch;
        }
        self.recheck = true;
        Action::None
    }

    /// At the end of a step: fetch again if the store may hold more.
    fn idle(&mut self) -> Action {
        self.step = Step::Idle;
        if self.more || self.recheck {
            self.recheck = false;
            self.more = false;
            self.step = Step::Fetching;
            return Action::Fetch;
        }
        Action::None
    }

    /// What may be removed when the session ends: messages that reached the client
    /// and whose removal was not asked for yet.
    pub fn on_close(&self) -> Option<u64> {
        let upto = if self.step == Step::Acking {
            // The removal in flight covers up to `seen`, which is at least `reached`.
            return None;
        } else {
            self.reached
        };
        (upto > self.removed).then_some(upto)
    }
}

/// A connection's offline delivery, allocated only while there is something to do:
/// most connections never have stored messages, and an idle one holds nothing.
#[derive(Debug, Default)]
pub struct OfflineSlot {
    state: Option<Box<Offline>>,
    client_acks: bool,
}

impl OfflineSlot {
    pub fn new(client_acks: bool) -> OfflineSlot {
        OfflineSlot {
            state: None,
            client_acks,
        }
    }

    fn get(&mut self) -> &mut Offline {
        let acks = self.client_acks;
        self.state
            .get_or_insert_with(|| Box::new(Offline::new(acks)))
    }

    /// Gives the state back once nothing is under way or remembered.
    fn tidy(&mut self, action: Action) -> Action {
        if self.state.as_ref().is_some_and(|o| o.is_settled()) {
            self.state = None;
        }
        action
    }

    /// Whether any delivery is under way or remembered.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.state.is_some()
    }

    pub fn already_seen(&self, seq: u64) -> bool {
        self.state.as_ref().is_some_and(|o| o.already_seen(seq))
    }

    pub fn unwritten(&self) -> bool {
        self.state.as_ref().is_some_and(|o| o.unwritten())
    }

    pub fn on_close(&self) -> Option<u64> {
        self.state.as_ref().and_then(|o| o.on_close())
    }

    pub fn queued(&mut self, seq: u64, queued_total: u64) {
        self.get().queued(seq, queued_total);
    }

    pub fn batch_done(&mut self, skipped: bool, full: bool) -> Action {
        if self.state.is_none() && !skipped && !full {
            // An empty batch (most logins): nothing to remember, nothing to allocate.
            return Action::None;
        }
        let a = self.get().batch_done(skipped, full);
        self.tidy(a)
    }

    pub fn written(&mut self, written_total: u64) -> Action {
        match self.state.as_mut() {
            Some(o) => {
                let a = o.written(written_total);
                self.tidy(a)
            }
            None => Action::None,
        }
    }

    pub fn client_ack(&mut self, upto: u64) -> Action {
        match self.state.as_mut() {
            Some(o) => {
                let a = o.client_ack(upto);
                self.tidy(a)
            }
            None => Action::None,
        }
    }

    pub fn ack_done(&mut self, upto: u64, ok: bool) -> Action {
        let a = self.get().ack_done(upto, ok);
        self.tidy(a)
    }

    pub fn fetch_failed(&mut self) -> Action {
        let a = self.get().fetch_failed();
        self.tidy(a)
    }

    pub fn poke(&mut self) -> Action {
        let a = self.get().poke();
        self.tidy(a)
    }

    pub fn poke_later(&mut self) {
        self.get().poke_later();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_removed_only_once_written() {
        let mut o = Offline::new(false);
        o.queued(1, 100);
        o.queued(2, 200);
        assert_eq!(o.batch_done(false, false), Action::None);
        assert_eq!(o.written(150), Action::None);
        assert_eq!(o.on_close(), Some(1), "what was written may go");
        assert_eq!(o.written(200), Action::Ack(2));
        assert_eq!(o.ack_done(2, true), Action::None);
        assert_eq!(o.on_close(), None);
    }

    #[test]
    fn a_full_batch_fetches_the_next_after_its_removal() {
        let mut o = Offline::new(false);
        o.queued(1, 10);
        assert_eq!(o.batch_done(false, true), Action::None);
        assert_eq!(o.written(10), Action::Ack(1));
        assert_eq!(o.ack_done(1, true), Action::Fetch);
        o.fetching();
        assert!(o.is_fetching());
        assert_eq!(o.batch_done(false, false), Action::None);
    }

    #[test]
    fn a_client_that_acknowledges_decides_when_messages_go() {
        let mut o = Offline::new(true);
        o.queued(5, 10);
        o.queued(6, 20);
        assert_eq!(o.batch_done(false, false), Action::None);
        assert_eq!(o.written(20), Action::None, "written is not enough");
        assert_eq!(o.client_ack(5), Action::None);
        assert_eq!(o.on_close(), Some(5));
        assert_eq!(
            o.client_ack(99),
            Action::Ack(6),
            "never beyond what was sent"
        );
    }

    #[test]
    fn clients_that_did_not_declare_acks_cannot_remove_anything() {
        let mut o = Offline::new(false);
        o.queued(5, 10);
        o.batch_done(false, false);
        assert_eq!(o.client_ack(5), Action::None);
        assert_eq!(o.on_close(), None);
    }

    /// A message stored during any step is fetched once that step is done.
    #[test]
    fn a_poke_during_any_step_fetches_afterwards() {
        // While fetching.
        let mut o = Offline::new(false);
        assert_eq!(o.poke(), Action::Fetch);
        o.fetching();
        assert_eq!(o.poke(), Action::None);
        assert_eq!(o.batch_done(false, false), Action::Fetch);
        // While delivering.
        let mut o = Offline::new(false);
        o.queued(1, 10);
        o.batch_done(false, false);
        assert_eq!(o.poke(), Action::None);
        assert_eq!(o.written(10), Action::Ack(1));
        assert_eq!(o.ack_done(1, true), Action::Fetch);
        // While acknowledging, even if the removal fails.
        let mut o = Offline::new(false);
        o.queued(1, 10);
        o.batch_done(false, false);
        assert_eq!(o.written(10), Action::Ack(1));
        assert_eq!(o.poke(), Action::None);
        assert_eq!(o.ack_done(1, false), Action::Fetch);
        // Idle: at once.
        let mut o = Offline::new(false);
        assert_eq!(o.poke(), Action::Fetch);
    }

    #[test]
    fn a_message_stored_during_the_login_is_fetched_after_its_first_batch() {
        let mut o = Offline::new(false);
        o.poke_later();
        // The login's own batch was empty (fetched before the message was stored).
        assert_eq!(o.batch_done(false, false), Action::Fetch);
    }

    #[test]
    fn the_slot_holds_memory_only_while_something_is_under_way() {
        let mut s = OfflineSlot::new(false);
        assert_eq!(s.written(100), Action::None);
        assert!(s.state.is_none());
        s.queued(1, 10);
        assert_eq!(s.batch_done(false, false), Action::None);
        assert!(s.state.is_some());
        assert_eq!(s.written(10), Action::Ack(1));
        assert_eq!(s.ack_done(1, true), Action::None);
        assert!(s.state.is_none(), "all removed: nothing kept");
        // A failed removal is remembered, so a refetch shows nothing twice.
        s.queued(2, 20);
        s.batch_done(false, false);
        s.written(20);
        s.ack_done(2, false);
        assert!(s.already_seen(2));
    }

    #[test]
    fn a_refetched_batch_already_seen_is_removed_again() {
        let mut o = Offline::new(false);
        o.queued(3, 10);
        o.batch_done(false, false);
        assert_eq!(o.written(10), Action::Ack(3));
        assert_eq!(o.ack_done(3, false), Action::None);
        assert!(o.already_seen(3));
        assert_eq!(o.poke(), Action::Fetch);
        o.fetching();
        assert_eq!(o.batch_done(true, false), Action::Ack(3));
        assert_eq!(o.ack_done(3, true), Action::None);
    }
}
