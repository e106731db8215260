//! The hub's timers, in one table keyed by what each is for (as quinn-proto's
//! `timer.rs`): [`super::Hub::poll_timeout`] is one look at the table, not a search
//! through every component.
//!
//! Each entry holds the next time its owner needs the loop, on the monotonic clock in
//! ms (`None`: nothing due). The hub sets them from what its components say when the
//! table is looked at after an input changed something (an input only marks it, so a
//! write costs no more than a flag: [`super::Hub`]'s `timer_table`); the connections' own deadlines
//! (login timeouts, close deadlines) live in one heap in the core, and the table holds
//! its soonest.
#![forbid(unsafe_code)]

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The soonest of the connections' deadlines (login timeouts, close deadlines).
    Connections,
    /// Idle buffers given back, per-address limits forgotten, the summary logged.
    Housekeeping,
    /// The presence notices waiting are due to everyone.
    Presence,
    /// The history entries waiting are due to go to the store.
    HistoryFlush,
    /// A private message handed to another node waits for its answer until then.
    ClusterAnswer,
    /// A login waiting for its password hash is answered busy then.
    LoginWait,
}

impl Timer {
    const COUNT: usize = 6;

    #[inline]
    fn index(self) -> usize {
        self as usize
    }
}

/// When each [`Timer`] is next due.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TimerTable {
    at: [Option<u64>; Timer::COUNT],
}

impl TimerTable {
    /// Sets (or, with `None`, stops) `timer`.
    #[inline]
    pub(crate) fn set(&mut self, timer: Timer, at: Option<u64>) {
        self.at[timer.index()] = at;
    }

    /// When `timer` is due, if it is set.
    #[cfg(test)]
    pub(crate) fn get(&self, timer: Timer) -> Option<u64> {
        self.at[timer.index()]
    }

    /// The soonest timer set.
    #[inline]
    pub(crate) fn next(&self) -> Option<u64> {
        self.at.iter().flatten().copied().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soonest_timer_set_is_next() {
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Housekeeping, Some(1_000));
        t.set(Timer::Presence, Some(50));
        t.set(Timer::ClusterAnswer, Some(70));
        assert_eq!(t.next(), Some(50));
        t.set(Timer::Presence, None);
        assert_eq!(t.get(Timer::Presence), None);
        assert_eq!(t.next(), Some(70));
        t.set(Timer::Connections, Some(0));
        assert_eq!(t.next(), Some(0));
    }
}
