//! Token buckets for flood control: messages per connection, and hash-costing
//! requests (logins, registrations) per client address.
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

    /// Whether the bucket has refilled completely by `now_ms` (it can be forgotten).
    pub fn is_full(&self, now_ms: u64, rate: f64, burst: u32) -> bool {
        let mut b = *self;
        b.refill(now_ms, rate, burst);
        b.tokens >= burst as f64
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
