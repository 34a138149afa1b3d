//! Limits checked in the trap path: a per-probe rate limit (GCRA, one atomic) and the
//! global trap budget (handler time summed over a sliding window of buckets).

use std::sync::atomic::{AtomicU64, Ordering};

/// A GCRA rate limiter: `per_second` hits on average, `burst` back to back.
pub struct Gcra {
    /// Theoretical arrival time of the next hit, ns.
    tat: AtomicU64,
    /// ns between hits (0 = unlimited).
    interval: AtomicU64,
    /// Tolerance: `(burst - 1) * interval`.
    tau: AtomicU64,
}

impl Gcra {
    /// An unlimited limiter.
    pub const fn new() -> Gcra {
        Gcra {
            tat: AtomicU64::new(0),
            interval: AtomicU64::new(0),
            tau: AtomicU64::new(0),
        }
    }

    /// Configures the limiter (arming thread only, before publication).
    pub fn set(&self, per_second: Option<f64>, burst: u32) {
        let interval = match per_second {
            Some(r) if r > 0.0 && r.is_finite() => ((1e9 / r) as u64).max(1),
            Some(_) => u64::MAX,
            None => 0,
        };
        self.interval.store(interval, Ordering::Relaxed);
        self.tau.store(
            interval.saturating_mul(burst.max(1) as u64 - 1),
            Ordering::Relaxed,
        );
        self.tat.store(0, Ordering::Relaxed);
    }

    /// True when a hit at `now` conforms (and takes its place); lock-free.
    pub fn allow(&self, now: u64) -> bool {
        let interval = self.interval.load(Ordering::Relaxed);
        if interval == 0 {
            return true;
        }
        let tau = self.tau.load(Ordering::Relaxed);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let base = tat.max(now);
            if base - now > tau {
                return false;
            }
            match self.tat.compare_exchange_weak(
                tat,
                base.saturating_add(interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(t) => tat = t,
            }
        }
    }
}

const BUCKETS: usize = 10;

/// The global trap budget: handler time over the last `BUCKETS` buckets.
pub struct Budget {
    bucket_ns: AtomicU64,
    /// ⌊2⁶⁴ / bucket_ns⌋ + 1: a bucket's number is a multiply, not a division (which costs
    /// more than the rest of `charge`); 0 when `bucket_ns` is 1.
    bucket_inv: AtomicU64,
    limit_ns: AtomicU64,
    epochs: [AtomicU64; BUCKETS],
    used: [AtomicU64; BUCKETS],
}

impl Budget {
    /// A budget that is never exceeded until [`Budget::set`].
    pub const fn new() -> Budget {
        Budget {
            bucket_ns: AtomicU64::new(100_000_000),
            bucket_inv: AtomicU64::new(u64::MAX / 100_000_000 + 1),
            limit_ns: AtomicU64::new(u64::MAX),
            epochs: [const { AtomicU64::new(u64::MAX) }; BUCKETS],
            used: [const { AtomicU64::new(0) }; BUCKETS],
        }
    }

    /// `fraction` of one core over a window of `window_ns`.
    pub fn set(&self, fraction: f64, window_ns: u64) {
        let bucket = (window_ns / BUCKETS as u64).max(1);
        self.bucket_ns.store(bucket, Ordering::Relaxed);
        let inv = if bucket > 1 { u64::MAX / bucket + 1 } else { 0 };
        self.bucket_inv.store(inv, Ordering::Relaxed);
        let limit = if fraction >= 1.0 || !fraction.is_finite() {
            u64::MAX
        } else {
            (window_ns as f64 * fraction.max(0.0)) as u64
        };
        self.limit_ns.store(limit, Ordering::Relaxed);
    }

    /// Forgets everything charged so far.
    pub fn clear(&self) {
        for u in &self.used {
            u.store(0, Ordering::Relaxed);
        }
    }

    /// The bucket `now` falls in: `now / bucket_ns`, exact but within 2⁻¹⁴ of a bucket's
    /// end for any `now` under 2⁵⁰ ns (13 days of uptime; a hit at such a boundary may
    /// count in the next bucket).
    fn epoch(&self, now: u64) -> u64 {
        let inv = self.bucket_inv.load(Ordering::Relaxed);
        if inv == 0 {
            return now;
        }
        ((now as u128 * inv as u128) >> 64) as u64
    }

    /// Adds `ns` of handler time at `now`.
    pub fn charge(&self, now: u64, ns: u64) {
        let epoch = self.epoch(now);
        let i = (epoch % BUCKETS as u64) as usize;
        let (Some(e), Some(u)) = (self.epochs.get(i), self.used.get(i)) else {
            return;
        };
        let seen = e.load(Ordering::Relaxed);
        if seen != epoch
            && e.compare_exchange(seen, epoch, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            u.store(0, Ordering::Relaxed);
        }
        u.fetch_add(ns, Ordering::Relaxed);
    }

    /// Handler time spent in the window ending at `now`.
    pub fn used(&self, now: u64) -> u64 {
        let epoch = self.epoch(now);
        let mut sum = 0u64;
        for (e, u) in self.epochs.iter().zip(self.used.iter()) {
            let be = e.load(Ordering::Relaxed);
            if be <= epoch && epoch - be < BUCKETS as u64 {
                sum = sum.saturating_add(u.load(Ordering::Relaxed));
            }
        }
        sum
    }

    /// True when the window's handler time is over the limit.
    pub fn exceeded(&self, now: u64) -> bool {
        let limit = self.limit_ns.load(Ordering::Relaxed);
        limit != u64::MAX && self.used(now) > limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let g = Gcra::new();
        g.set(Some(10.0), 3);
        let t = 1_000_000_000;
        assert!(g.allow(t) && g.allow(t) && g.allow(t));
        assert!(!g.allow(t));
        assert!(g.allow(t + 100_000_000));
        assert!(!g.allow(t + 100_000_000));
    }

    #[test]
    fn a_bucket_is_the_quotient_but_at_its_very_end() {
        let b = Budget::new();
        b.set(0.01, 1_000_000_000);
        for now in [
            0,
            1,
            99_999_999,
            100_000_000,
            123_456_789_012,
            86_400 * 1_000_000_000,
        ] {
            assert_eq!(b.epoch(now), now / 100_000_000, "{now}");
        }
        let tiny = Budget::new();
        tiny.set(0.5, 5);
        assert_eq!(tiny.epoch(12_345), 12_345);
    }

    #[test]
    fn budget_slides() {
        let b = Budget::new();
        b.set(0.01, 1_000_000_000);
        let t = 50_000_000_000;
        b.charge(t, 9_000_000);
        assert!(!b.exceeded(t));
        b.charge(t + 1, 2_000_000);
        assert!(b.exceeded(t + 2));
        assert!(!b.exceeded(t + 2_000_000_000));
    }
}
