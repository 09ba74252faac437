//! Token buckets for inbound requests and bytes, per peer (or per network of peers).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use libp2p::PeerId;

/// Allows each peer (or whatever `K` names) `rate` requests per second on average and `burst`
/// at once.
pub(crate) struct RateLimiter<K = PeerId> {
    rate: f64,
    burst: f64,
    /// Tokens a peer not seen lately starts with (at most `burst`).
    start: f64,
    buckets: HashMap<K, (f64, Instant)>,
    /// Requests refused per peer since the last sweep.
    refused: HashMap<K, u32>,
}

impl<K: std::hash::Hash + Eq + Copy> RateLimiter<K> {
    pub(crate) fn new(rate: u32, burst: u32) -> RateLimiter<K> {
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            start: f64::from(burst.max(1)),
            buckets: HashMap::new(),
            refused: HashMap::new(),
        }
    }

    /// With peers not seen lately starting from `start` tokens instead of a full burst: a
    /// fresh peer id (they cost nothing) gets only that much at once.
    pub(crate) fn starting_with(mut self, start: u32) -> RateLimiter<K> {
        self.start = f64::from(start).min(self.burst);
        self
    }

    /// Takes a token for `peer`, if it has one.
    pub(crate) fn allow(&mut self, peer: K, now: Instant) -> bool {
        self.allow_n(peer, 1, now)
    }

    /// Whether `peer` has `n` tokens now; takes none.
    pub(crate) fn has(&mut self, peer: K, n: usize, now: Instant) -> bool {
        *self.refill(peer, now) >= n as f64
    }

    fn refill(&mut self, peer: K, now: Instant) -> &mut f64 {
        let (tokens, last) = self.buckets.entry(peer).or_insert((self.start, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * self.rate;
        *tokens = (*tokens + refill).min(self.burst);
        // Never backwards: a caller's earlier `now` must not count an interval twice.
        *last = (*last).max(now);
        tokens
    }

    /// How long until `peer` has `n` tokens (at most the burst), rounded up to the next
    /// microsecond so that the tokens are there at the time.
    pub(crate) fn wait(&mut self, peer: K, n: usize, now: Instant) -> Duration {
        let short = (n as f64).min(self.burst) - *self.refill(peer, now);
        if short <= 0.0 {
            return Duration::ZERO;
        }
        let micros = (short / self.rate.max(f64::MIN_POSITIVE) * 1e6).ceil() + 1.0;
        Duration::try_from_secs_f64(micros / 1e6).unwrap_or(Duration::MAX)
    }

    /// Owes `secs` seconds of `peer`'s rate: its bucket is emptied and refills from below zero,
    /// so nothing is taken for `peer` for that long. Called again meanwhile, it does not owe
    /// more (many answers of one moment are one signal).
    pub(crate) fn hold(&mut self, peer: K, secs: f64, now: Instant) {
        let debt = -self.rate * secs;
        let tokens = self.refill(peer, now);
        *tokens = tokens.min(debt);
    }

    /// The most tokens a peer can hold.
    pub(crate) fn burst(&self) -> f64 {
        self.burst
    }

    /// Takes `n` tokens for `peer` (bytes, for a byte budget), if it has them.
    pub(crate) fn allow_n(&mut self, peer: K, n: usize, now: Instant) -> bool {
        let tokens = self.refill(peer, now);
        let n = n as f64;
        if *tokens >= n {
            *tokens -= n;
            true
        } else {
            *self.refused.entry(peer).or_default() += 1;
            false
        }
    }

    /// True when `peer` kept sending after being refused more than a whole burst's worth of
    /// requests since the last sweep: not a busy peer but a flood.
    pub(crate) fn is_flooding(&self, peer: &K) -> bool {
        self.refused.get(peer).is_some_and(|&n| f64::from(n) > self.burst)
    }

    /// Forgets peers whose buckets are full again, so that the map stays as small as the set of
    /// recently active peers.
    pub(crate) fn forget_idle(&mut self, now: Instant) {
        // Kept until full again (a held bucket starts below zero); a rate of zero never
        // refills, so such buckets are kept.
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.retain(|_, (tokens, last)| {
            *tokens + now.saturating_duration_since(*last).as_secs_f64() * rate < burst
        });
        self.refused.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let mut limiter: RateLimiter = RateLimiter::new(10, 5);
        let peer = PeerId::random();
        let start = Instant::now();
        assert_eq!((0..8).filter(|_| limiter.allow(peer, start)).count(), 5);
        // 10 per second: 100 ms later there is one more token.
        assert!(limiter.allow(peer, start + Duration::from_millis(100)));
        assert!(!limiter.allow(peer, start + Duration::from_millis(100)));
        // Another peer has its own bucket.
        assert!(limiter.allow(PeerId::random(), start));
        assert!(!limiter.is_flooding(&peer));
        for _ in 0..6 {
            limiter.allow(peer, start + Duration::from_millis(100));
        }
        assert!(limiter.is_flooding(&peer), "refused more than a burst");
        limiter.forget_idle(start + Duration::from_secs(10));
        assert!(!limiter.is_flooding(&peer));
    }

    #[test]
    fn a_hold_outlives_the_sweep_that_forgets_full_buckets() {
        // 10 a second, a burst of 5: a full bucket is refilled within half a second, but one
        // held for a second owes 10 tokens.
        let mut limiter: RateLimiter = RateLimiter::new(10, 5);
        let (peer, start) = (PeerId::random(), Instant::now());
        limiter.hold(peer, 1.0, start);
        limiter.hold(peer, 1.0, start);
        limiter.forget_idle(start + Duration::from_millis(600));
        assert!(!limiter.allow(peer, start + Duration::from_millis(600)), "still held");
        assert!(limiter.allow(peer, start + Duration::from_millis(1100)), "held once, not twice");
    }
}
