//! Token buckets for flood control: messages per connection ([`Pace`]: a frame over
//! the rate waits for its token instead of being refused), and hash-costing requests
//! (failed logins, registrations) per client address ([`PerAddr`]).
//!
//! Time is a value passed in (milliseconds on the caller's monotonic clock), so the
//! limits are tested deterministically.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::IpAddr;

/// A bucket of `burst` tokens refilled at `rate` tokens per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    /// A full bucket.
    pub fn new(burst: u32, now_ms: u64) -> Bucket {
        Bucket {
            tokens: burst as f64,
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64, rate: f64, burst: u32) {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(burst as f64);
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now_ms: u64, rate: f64, burst: u32) -> bool {
        self.refill(now_ms, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether a token is there at `now_ms`, without taking it.
    pub fn has(&self, now_ms: u64, rate: f64, burst: u32) -> bool {
        let mut b = *self;
        b.refill(now_ms, rate, burst);
        b.tokens >= 1.0
    }

    /// Milliseconds from `now_ms` until a token is there (0: there is one now).
    pub fn wait_ms(&self, now_ms: u64, rate: f64, burst: u32) -> u64 {
        let mut b = *self;
        b.refill(now_ms, rate, burst);
        if b.tokens >= 1.0 || rate <= 0.0 {
            return 0;
        }
        (((1.0 - b.tokens) * 1000.0 / rate).ceil() as u64).max(1)
    }

    /// Whether the bucket has refilled completely by `now_ms` (it can be forgotten).
    pub fn is_full(&self, now_ms: u64, rate: f64, burst: u32) -> bool {
        let mut b = *self;
        b.refill(now_ms, rate, burst);
        b.tokens >= burst as f64
    }
}

/// How long the frames of a connection may be kept waiting for the rate without a
/// break before it is taken for a flood and closed (the default of
/// `HubConfig::flood_limit_ms`).
pub const FLOOD_LIMIT_MS: u64 = 10_000;

/// A wait that starts within this long of the last one's end continues it: the
/// client kept sending as fast as it was let.
const WAIT_GAP_MS: u64 = 1_000;

/// What [`Pace::take`] decided for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it now.
    Go,
    /// It waits (and the connection's input with it) until this time.
    Wait(u64),
    /// Frames have waited without a break for longer than the limit: a flood.
    Flood,
}

/// Flood control of one connection's frames: a bucket of `rate` tokens refilled at
/// `rate` per second. A frame over the rate is not refused: it waits for its token,
/// and so does everything the client sent after it (the caller stops reading the
/// connection until [`Pace::wake`]). Only a connection whose frames have waited
/// without a break for longer than a limit is a flood.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    bucket: Bucket,
    /// A frame waits until then (0: none waits).
    until_ms: u64,
    /// Since when frames have waited without a break (None: not waiting lately).
    since_ms: Option<u64>,
    /// When the last wait ended.
    released_ms: u64,
}

impl Pace {
    /// A full bucket of `burst` tokens.
    pub fn new(burst: u32, now_ms: u64) -> Pace {
        Pace {
            bucket: Bucket::new(burst, now_ms),
            until_ms: 0,
            since_ms: None,
            released_ms: 0,
        }
    }

    /// Whether a frame waits for its token (the connection is not read meanwhile).
    pub fn waiting(&self) -> bool {
        self.until_ms != 0
    }

    /// When the waiting frame may go (None: none waits).
    pub fn until(&self) -> Option<u64> {
        self.waiting().then_some(self.until_ms)
    }

    /// Since when frames have waited without a break, if they have lately.
    pub fn waiting_since(&self) -> Option<u64> {
        self.since_ms
    }

    /// The waiting frame's time has come by `now_ms`: returns whether the wait ended
    /// now (the caller handles the frames that waited, and reads again).
    pub fn wake(&mut self, now_ms: u64) -> bool {
        if self.until_ms == 0 || now_ms < self.until_ms {
            return false;
        }
        self.until_ms = 0;
        self.released_ms = now_ms;
        true
    }

    /// A frame at `now_ms`, at `rate` frames per second (burst the same; 0: no limit):
    /// whether it goes now, waits, or ends a flood of more than `limit_ms`.
    pub fn take(&mut self, now_ms: u64, rate: u32, limit_ms: u64) -> Verdict {
        if rate == 0 {
            return Verdict::Go;
        }
        let r = rate as f64;
        if self.bucket.take(now_ms, r, rate) {
            return Verdict::Go;
        }
        let since = match self.since_ms {
            Some(s) if now_ms <= self.released_ms.saturating_add(WAIT_GAP_MS) => s,
            _ => now_ms,
        };
        self.since_ms = Some(since);
        if now_ms.saturating_sub(since) >= limit_ms {
            return Verdict::Flood;
        }
        self.until_ms = now_ms + self.bucket.wait_ms(now_ms, r, rate).max(1);
        Verdict::Wait(self.until_ms)
    }
}

/// The key an address is limited by: the address itself for IPv4, its /64 prefix for
/// IPv6 (one host usually holds a whole /64).
pub fn addr_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// Buckets per client address, forgotten once full again; bounded in size.
#[derive(Debug, Default)]
pub struct PerAddr {
    buckets: HashMap<IpAddr, Bucket>,
}

/// Addresses tracked at once. Past this, new addresses are let through untracked (the
/// per-connection limits and the bounded job queue still hold) rather than refusing
/// everyone.
pub const MAX_TRACKED_ADDRS: usize = 65_536;

impl PerAddr {
    /// Takes a token for `ip` at `per_minute` (burst the same); 0 means no limit.
    pub fn take(&mut self, ip: IpAddr, now_ms: u64, per_minute: u32) -> bool {
        if per_minute == 0 {
            return true;
        }
        let rate = per_minute as f64 / 60.0;
        let key = addr_key(ip);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= MAX_TRACKED_ADDRS {
            return true;
        }
        self.buckets
            .entry(key)
            .or_insert_with(|| Bucket::new(per_minute, now_ms))
            .take(now_ms, rate, per_minute)
    }

    /// Whether `ip` has a token left at `per_minute`, without taking it; 0 means no
    /// limit.
    pub fn has(&self, ip: IpAddr, now_ms: u64, per_minute: u32) -> bool {
        if per_minute == 0 {
            return true;
        }
        let rate = per_minute as f64 / 60.0;
        self.buckets
            .get(&addr_key(ip))
            .is_none_or(|b| b.has(now_ms, rate, per_minute))
    }

    /// When `ip` has a token again at `per_minute`, in whole seconds from `now_ms`
    /// (at least 1).
    pub fn wait_secs(&self, ip: IpAddr, now_ms: u64, per_minute: u32) -> u64 {
        let rate = per_minute.max(1) as f64 / 60.0;
        let ms = self
            .buckets
            .get(&addr_key(ip))
            .map_or(0, |b| b.wait_ms(now_ms, rate, per_minute.max(1)));
        ms.div_ceil(1000).max(1)
    }

    /// Forgets addresses whose bucket is full again.
    pub fn prune(&mut self, now_ms: u64, per_minute: u32) {
        let rate = per_minute as f64 / 60.0;
        self.buckets
            .retain(|_, b| !b.is_full(now_ms, rate, per_minute));
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let mut b = Bucket::new(3, 0);
        assert!(b.take(0, 2.0, 3));
        assert!(b.take(0, 2.0, 3));
        assert!(b.take(0, 2.0, 3));
        assert!(!b.take(0, 2.0, 3));
        assert!(!b.take(499, 2.0, 3));
        assert!(b.take(500, 2.0, 3), "2 per second: one token after 500 ms");
        assert!(!b.take(500, 2.0, 3));
        // Never more than the burst, however long it rested.
        for _ in 0..3 {
            assert!(b.take(1_000_000, 2.0, 3));
        }
        assert!(!b.take(1_000_000, 2.0, 3));
        assert!(!b.is_full(1_000_000, 2.0, 3));
        assert!(b.is_full(1_001_500, 2.0, 3));
    }

    #[test]
    fn a_frame_over_the_rate_waits_for_its_token() {
        let mut p = Pace::new(2, 0);
        assert_eq!(p.take(0, 2, 10_000), Verdict::Go);
        assert_eq!(p.take(0, 2, 10_000), Verdict::Go);
        assert_eq!(p.take(0, 2, 10_000), Verdict::Wait(500));
        assert!(p.waiting());
        assert!(!p.wake(499));
        assert!(p.wake(500));
        assert!(!p.waiting());
        assert_eq!(p.take(500, 2, 10_000), Verdict::Go);
        assert_eq!(p.take(500, 2, 10_000), Verdict::Wait(1_000));
        assert_eq!(p.waiting_since(), Some(0), "the same wait, without a break");
        assert_eq!(Pace::new(0, 0).take(0, 0, 1), Verdict::Go, "0: no limit");
    }

    #[test]
    fn only_frames_waiting_without_a_break_past_the_limit_are_a_flood() {
        let mut p = Pace::new(1, 0);
        assert_eq!(p.take(0, 1, 3_000), Verdict::Go);
        let mut now = 0;
        // One frame a second too many, every time the last one goes.
        loop {
            match p.take(now, 1, 3_000) {
                Verdict::Wait(until) => {
                    assert!(p.wake(until));
                    assert_eq!(p.take(until, 1, 3_000), Verdict::Go);
                    now = until;
                }
                Verdict::Flood => break,
                Verdict::Go => panic!("over the rate at {now}"),
            }
        }
        assert_eq!(now, 3_000);
        // A pause, then a burst that has to wait again: a new wait, not a flood.
        let mut q = Pace::new(1, 0);
        assert_eq!(q.take(0, 1, 3_000), Verdict::Go);
        assert_eq!(q.take(0, 1, 3_000), Verdict::Wait(1_000));
        assert!(q.wake(1_000));
        assert_eq!(q.take(1_000, 1, 3_000), Verdict::Go);
        assert_eq!(q.take(5_000, 1, 3_000), Verdict::Go);
        assert_eq!(q.take(5_000, 1, 3_000), Verdict::Wait(6_000));
        assert_eq!(q.waiting_since(), Some(5_000));
    }

    #[test]
    fn per_address_limits_and_forgets() {
        let mut p = PerAddr::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..6 {
            assert!(p.take(a, 0, 6));
        }
        assert!(!p.take(a, 0, 6));
        assert!(p.take(b, 0, 6), "other addresses are not affected");
        assert!(p.take(a, 10_000, 6), "6 per minute: one more after 10 s");
        p.prune(10_000, 6);
        assert_eq!(p.len(), 1, "b has refilled and is forgotten; a has not");
        p.prune(120_000, 6);
        assert!(p.is_empty());
        assert!(p.take(a, 0, 0), "0 turns the limit off");
    }

    #[test]
    fn ipv6_hosts_are_limited_by_their_64_prefix() {
        let mut p = PerAddr::default();
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(p.take(x, 0, 1));
        assert!(!p.take(y, 0, 1));
    }
}
