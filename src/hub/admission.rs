//! Password hashing under load: one policy, one home.
//!
//! Every login and registration costs an argon2id hash (milliseconds of CPU). The
//! hashing threads run at a lower priority than the event loop ([`crate::priority::WorkerPriority`]), so
//! a storm of logins never delays messages; in exchange the hub must not queue more
//! logins than can be served in time. [`Admission`] keeps the measure of what hashing
//! delivers now and admits a login only if its estimated wait fits within the job
//! timeout; otherwise the client is told when to come back. And while logins wait,
//! [`Admission::next_flush_at`] spaces long rounds of writes so the idle-priority
//! hashing gets CPU at all.
//!
//! Time is passed in as values (milliseconds of a monotonic clock), so the policy is
//! tested in virtual time.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// While passwords wait to be hashed, a round of writes this long (thousands of
/// receivers) is followed by a pause as long as itself, so that the hashing threads,
/// which run at idle priority, get about half the core.
const LONG_FLUSH: Duration = Duration::from_millis(1);
/// Longest pause after a round of writes, however long that round took.
const MAX_FLUSH_GATHER: Duration = Duration::from_millis(50);

/// The times between completions averaged for the estimate: enough that one long
/// round of writes (during which idle-priority hashing gets no CPU at all) counts for
/// its share of a while, not for every hash ahead.
const GAP_SAMPLES: usize = 256;

/// Folds `sample` into a moving average (weight 1/8).
fn average(avg: &mut Option<f64>, sample: f64) {
    *avg = Some(match *avg {
        Some(a) => a + (sample - a) / 8.0,
        None => sample,
    });
}

/// Admission of password-hashing jobs.
#[derive(Debug)]
pub struct Admission {
    /// Hashing threads.
    workers: usize,
    /// Longest a login should wait for a hashing thread (the job timeout).
    max_wait_ms: u64,
    /// When each hashing job in flight was submitted, oldest first.
    in_flight: VecDeque<u64>,
    /// What one hash has cost lately, in ms (a moving average of worker times).
    cost_ms: Option<f64>,
    /// Times between hash completions while hashes were waiting, in ms, the last
    /// [`GAP_SAMPLES`] of them, and their sum: their mean is what the threads really
    /// deliver, starved of CPU or not.
    gaps: VecDeque<f64>,
    gap_sum: f64,
    /// When the last hash completed, if others were still in flight then.
    last_done: Option<u64>,
    /// Requests refused as busy since [`Admission::take_refused`] was last called.
    refused: u64,
}

impl Admission {
    /// `first_cost`: what one hash costs, if known before any has been run (timed
    /// when the server started), so that a storm's first logins are not all admitted
    /// before the first hash tells what they will cost.
    pub fn new(workers: usize, max_wait_ms: u64, first_cost: Option<Duration>) -> Admission {
        Admission {
            workers: workers.max(1),
            max_wait_ms,
            in_flight: VecDeque::new(),
            cost_ms: first_cost.map(|d| d.as_secs_f64() * 1000.0),
            gaps: VecDeque::new(),
            gap_sum: 0.0,
            last_done: None,
            refused: 0,
        }
    }

    /// The longest wait admitted, in ms.
    pub fn max_wait_ms(&self) -> u64 {
        self.max_wait_ms
    }

    /// How long after its job timeout a login still waiting for its hash is given up
    /// on: the time one hash takes lately, so that one a worker took up just before
    /// the timeout (no longer waiting, but hashing) can finish.
    pub fn give_up_after_ms(&self) -> u64 {
        self.max_wait_ms
            .saturating_add(self.cost_ms.unwrap_or(0.0).ceil() as u64)
    }

    /// How long a new login would wait for a hashing thread: the hashes ahead of it
    /// times the time each takes, which is the larger of the recent cost of one shared
    /// among the threads and the mean time between the last completions (the threads
    /// run only on CPU the loop leaves: a mean over hundreds, so that a pause during
    /// one long round of writes does not make every login wait as if all were that
    /// slow); and at least as long as the oldest has waited, in case the threads are
    /// making no progress at all.
    pub fn estimate(&self, now_ms: u64) -> u64 {
        let ahead = self.in_flight.len() as f64;
        let shared = self.cost_ms.unwrap_or(0.0) / self.workers as f64;
        let gap = if self.gaps.is_empty() {
            0.0
        } else {
            self.gap_sum / self.gaps.len() as f64
        };
        let each = shared.max(gap);
        let queued = each * ahead;
        let oldest = self
            .in_flight
            .front()
            .map_or(0, |&t| now_ms.saturating_sub(t));
        (queued as u64).max(oldest)
    }

    /// Whether a login may be queued now; `Err` carries the estimated wait in ms.
    pub fn check(&mut self, now_ms: u64) -> Result<(), u64> {
        let wait = self.estimate(now_ms);
        if wait > self.max_wait_ms {
            self.refused += 1;
            return Err(wait);
        }
        Ok(())
    }

    /// A hashing job was queued.
    pub fn submitted(&mut self, now_ms: u64) {
        self.in_flight.push_back(now_ms);
    }

    /// A hashing job finished. `took` is how long a worker ran it (`None`: it waited
    /// past the job timeout and was not run); `hashed` whether it really hashed (an
    /// unknown user's login does not, and must not pull the measured cost down).
    /// Returns how long the oldest job in flight (taken for this one) was waited for.
    pub fn completed(&mut self, now_ms: u64, took: Option<Duration>, hashed: bool) -> u64 {
        let waited = self
            .in_flight
            .pop_front()
            .map_or(0, |t| now_ms.saturating_sub(t));
        if let Some(took) = took {
            if hashed {
                average(&mut self.cost_ms, took.as_secs_f64() * 1000.0);
            }
            if let Some(prev) = self.last_done {
                let gap = now_ms.saturating_sub(prev) as f64;
                self.gaps.push_back(gap);
                self.gap_sum += gap;
                if self.gaps.len() > GAP_SAMPLES
                    && let Some(old) = self.gaps.pop_front()
                {
                    self.gap_sum -= old;
                }
            }
        }
        self.last_done = (!self.in_flight.is_empty()).then_some(now_ms);
        waited
    }

    /// Whether logins or registrations wait for a password hash.
    pub fn hashing(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Hashing jobs queued or running.
    pub fn queued(&self) -> usize {
        self.in_flight.len()
    }

    /// Requests refused as busy since the last call.
    pub fn take_refused(&mut self) -> u64 {
        std::mem::take(&mut self.refused)
    }

    /// When the next round of writes may start, for a round that started at `start`
    /// and ended at `done`: one flush interval after the start; after a long round
    /// while logins wait for hashing, no sooner than a pause as long as the round
    /// (capped), so the hashing threads get their share of the core.
    pub fn next_flush_at(&self, start: Instant, done: Instant, interval: Duration) -> Instant {
        let took = done - start;
        if interval.is_zero() {
            done
        } else if self.hashing() && took >= LONG_FLUSH {
            (start + interval).max(done + took.min(MAX_FLUSH_GATHER))
        } else {
            start + interval
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_are_admitted_while_they_can_be_served_in_time() {
        let mut a = Admission::new(2, 1_000, None);
        // Nothing measured yet: everything is admitted.
        for _ in 0..10 {
            assert_eq!(a.check(0), Ok(()));
            a.submitted(0);
        }
        // Hashes cost 100 ms on 2 threads: 50 ms each, 10 ahead = 500 ms.
        a.completed(100, Some(Duration::from_millis(100)), true);
        assert_eq!(a.estimate(100), 450);
        for _ in 0..12 {
            a.submitted(100);
        }
        // 21 ahead x 50 ms = 1,050 ms: over the limit.
        assert_eq!(a.check(100), Err(1_050));
        assert_eq!(a.take_refused(), 1);
        assert_eq!(a.take_refused(), 0);
    }

    #[test]
    fn a_hash_timed_at_start_bounds_a_storm_before_any_completes() {
        // 100 ms a hash on 2 threads: 50 ms for each one ahead. The 21st waits
        // 1,000 ms (admitted), the 22nd 1,050 (refused); with nothing known, all 22
        // would have been.
        let mut a = Admission::new(2, 1_000, Some(Duration::from_millis(100)));
        for _ in 0..21 {
            assert_eq!(a.check(0), Ok(()));
            a.submitted(0);
        }
        assert_eq!(a.check(0), Err(1_050));
        let mut blind = Admission::new(2, 1_000, None);
        for _ in 0..22 {
            assert_eq!(blind.check(0), Ok(()));
            blind.submitted(0);
        }
    }

    #[test]
    fn one_long_pause_counts_for_its_share_and_a_lasting_slowdown_for_all() {
        let mut a = Admission::new(2, 30_000, None);
        let mut now = 0;
        for _ in 0..1_000 {
            a.submitted(0);
        }
        // Hashes complete 1 ms apart, then one after 100 ms (a long round of writes):
        // just after it, 850 ahead at about 1.7 ms each (the mean of 150 gaps), not at
        // 13 ms (a moving average of the last few).
        for i in 0..151 {
            now += if i == 150 { 100 } else { 1 };
            a.completed(now, Some(Duration::from_millis(1)), true);
        }
        a.submitted(now);
        let est = a.estimate(now);
        assert!((1_300..=1_500).contains(&est), "{est}");
        // Hashes that keep coming 50 ms apart are waited for as such.
        for _ in 0..300 {
            now += 50;
            a.completed(now, Some(Duration::from_millis(1)), true);
            a.submitted(now);
        }
        assert_eq!(a.estimate(now), 50 * 850);
    }

    #[test]
    fn a_stalled_pool_is_judged_by_its_oldest_waiter() {
        let mut a = Admission::new(1, 1_000, None);
        a.submitted(0);
        assert_eq!(a.check(500), Ok(()));
        assert_eq!(a.check(1_500), Err(1_500));
    }

    #[test]
    fn jobs_that_did_not_hash_do_not_lower_the_cost() {
        let mut a = Admission::new(1, 10_000, None);
        a.submitted(0);
        a.submitted(0);
        a.completed(10, Some(Duration::from_millis(10)), true);
        a.completed(10, Some(Duration::from_millis(0)), false);
        for _ in 0..4 {
            a.submitted(10);
        }
        assert_eq!(a.estimate(10), 40);
    }

    #[test]
    fn long_rounds_of_writes_pause_only_while_passwords_wait() {
        let t0 = Instant::now();
        let us = Duration::from_micros;
        let ms = Duration::from_millis;
        let interval = us(500);
        let mut a = Admission::new(1, 1_000, None);
        for hashing in [false, true] {
            if hashing {
                a.submitted(0);
            }
            // Ordinary rounds: one interval after the start.
            assert_eq!(a.next_flush_at(t0, t0 + us(200), interval), t0 + interval);
            // An interval of zero writes after every turn, always.
            assert_eq!(a.next_flush_at(t0, t0 + ms(4), Duration::ZERO), t0 + ms(4));
        }
        // A 4 ms round while logins wait: a pause as long.
        assert_eq!(a.next_flush_at(t0, t0 + ms(4), interval), t0 + ms(8));
        // A very long round: the pause is capped.
        assert_eq!(
            a.next_flush_at(t0, t0 + ms(200), interval),
            t0 + ms(200) + MAX_FLUSH_GATHER
        );
        // Nothing waits: written again at once.
        a.completed(1, Some(ms(1)), true);
        assert_eq!(a.next_flush_at(t0, t0 + ms(4), interval), t0 + interval);
    }
}
