//! Per-address handshake rate limiting: a token bucket per IP address (IPv6 per /64), so one
//! host cannot mint clients faster than the configured rate. Memory stays bounded: a bucket
//! that has refilled is the same as no bucket and is swept away, and past a hard cap new
//! addresses share one overflow bucket.

use dashmap::DashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sweep refilled buckets once the table holds this many.
const SWEEP_ABOVE: usize = 4096;
/// Most buckets kept; beyond it new addresses share the overflow bucket.
const MAX_BUCKETS: usize = 100_000;
/// Sweeps run at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets keyed by address.
pub(crate) struct HandshakeLimiter {
    /// Tokens added per second.
    rate: f64,
    /// Bucket capacity.
    burst: f64,
    buckets: DashMap<IpAddr, Bucket>,
    last_sweep: Mutex<Instant>,
}

/// The key of an address: IPv4 as is, IPv6 by its /64 (one host usually owns a whole /64).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The shared bucket of addresses that arrive while the table is full.
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

impl HandshakeLimiter {
    /// A limiter allowing `rate` handshakes per second per address after a burst of `burst`;
    /// `None` when `rate` is zero (no limit).
    pub(crate) fn new(rate: f64, burst: u32) -> Option<Self> {
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        Some(Self {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: DashMap::new(),
            last_sweep: Mutex::new(Instant::now()),
        })
    }

    /// Takes a token for `ip` now; when none is left, how long until one will be.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check_at(ip, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut k = key(ip);
        if self.buckets.len() >= SWEEP_ABOVE {
            self.sweep(now);
            if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(&k) {
                k = OVERFLOW;
            }
        }
        let mut bucket = self.buckets.entry(k).or_insert(Bucket { tokens: self.burst, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }

    /// Drops the buckets that have refilled (a full bucket behaves as a missing one).
    fn sweep(&self, now: Instant) {
        let Ok(mut last) = self.last_sweep.try_lock() else { return };
        if now.saturating_duration_since(*last) < SWEEP_EVERY {
            return;
        }
        *last = now;
        drop(last);
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < burst);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn burst_then_rate() {
        let l = HandshakeLimiter::new(10.0, 3).unwrap();
        let t = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at(ip(1), t).is_ok());
        }
        let wait = l.check_at(ip(1), t).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100), "{wait:?}");
        assert!(l.check_at(ip(2), t).is_ok(), "addresses have their own buckets");
        assert!(l.check_at(ip(1), t + Duration::from_millis(100)).is_ok(), "one token after 1/rate");
        assert!(l.check_at(ip(1), t + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn zero_rate_is_no_limit() {
        assert!(HandshakeLimiter::new(0.0, 10).is_none());
    }

    #[test]
    fn ipv6_hosts_share_their_64() {
        let l = HandshakeLimiter::new(1.0, 1).unwrap();
        let t = Instant::now();
        assert!(l.check_at("2001:db8:1:2::1".parse().unwrap(), t).is_ok());
        assert!(l.check_at("2001:db8:1:2::99".parse().unwrap(), t).is_err());
        assert!(l.check_at("2001:db8:1:3::1".parse().unwrap(), t).is_ok());
    }

    #[test]
    fn refilled_buckets_are_swept_and_the_table_is_capped() {
        let l = HandshakeLimiter::new(1000.0, 1).unwrap();
        let t = Instant::now();
        for n in 0..SWEEP_ABOVE as u32 {
            let _ = l.check_at(ip(n), t);
        }
        assert_eq!(l.len(), SWEEP_ABOVE);
        // Two seconds later every bucket is full again: the next check sweeps them all.
        let later = t + Duration::from_secs(2);
        assert!(l.check_at(ip(u32::MAX), later).is_ok());
        assert_eq!(l.len(), 1);

        let l = HandshakeLimiter::new(0.001, 1).unwrap();
        for n in 0..(MAX_BUCKETS as u32 + 10) {
            let _ = l.check_at(ip(n), t);
        }
        assert!(l.len() <= MAX_BUCKETS + 1, "{}", l.len());
        assert!(l.check_at(ip(u32::MAX - 1), t).is_err(), "new addresses share the spent overflow bucket");
    }
}
