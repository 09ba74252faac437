//! Budgets a minute, per peer or network of peers, that refill evenly (the generic cell rate
//! algorithm). A count per minute of the clock, reset when the minute turns, let twice the
//! budget through across the turn (the whole of it in the minute's last second and again in
//! the next one's first); here a key that spent its budget gets more only as time refills it.
//! On the monotonic clock: a wall clock set back or forward changes nothing.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);

/// Keys remembered before those whose budget has refilled are forgotten (a forgotten key has
/// its whole budget, as one that refilled does).
const PRUNE_AT: usize = 4096;

/// What each key may spend a minute, refilled evenly; a minute's worth is the most saved up.
pub(crate) struct PerMinute<K> {
    per_minute: u64,
    /// When each key's spending will have refilled.
    refilled: HashMap<K, Instant>,
}

impl<K: Hash + Eq> PerMinute<K> {
    /// A budget of `per_minute` (asks, bytes) for each key.
    pub(crate) fn new(per_minute: u64) -> PerMinute<K> {
        PerMinute { per_minute: per_minute.max(1), refilled: HashMap::new() }
    }

    /// Whether `key` has `amount` of its budget left at `now`.
    pub(crate) fn has(&self, key: &K, amount: u64, now: Instant) -> bool {
        self.owed(key, now).saturating_add(self.time_of(amount)) <= MINUTE
    }

    /// `key` spent `amount` at `now`. It may spend past its budget (an answer whose size was
    /// known only once it was made): the excess refills before anything else.
    pub(crate) fn spend(&mut self, key: K, amount: u64, now: Instant) {
        if self.refilled.len() >= PRUNE_AT {
            self.refilled.retain(|_, at| *at > now);
        }
        let owed = self.owed(&key, now);
        self.refilled.insert(key, now + owed.saturating_add(self.time_of(amount)));
    }

    /// The time `key`'s spending takes to refill from `now`.
    fn owed(&self, key: &K, now: Instant) -> Duration {
        self.refilled.get(key).map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
    }

    /// The time `amount` takes to refill (to the nanosecond: a byte of a budget of megabytes
    /// a minute refills in microseconds).
    fn time_of(&self, amount: u64) -> Duration {
        let nanos = u128::from(amount) * MINUTE.as_nanos() / u128::from(self.per_minute);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_budget_spent_at_once_refills_evenly_not_whole_again_when_a_minute_turns() {
        let mut asks = PerMinute::new(12);
        let (peer, other, t0) = ("flooder", "other", Instant::now());
        let mut granted = 0;
        while asks.has(&peer, 1, t0) {
            asks.spend(peer, 1, t0);
            granted += 1;
            assert!(granted < 100, "never refused");
        }
        assert_eq!(granted, 12, "the whole budget at once");
        assert!(!asks.has(&peer, 1, t0 + ms(2)), "a moment later (a clock's minute may turn)");
        assert!(asks.has(&other, 1, t0 + ms(2)), "another key has its own");
        // One ask refills in a twelfth of a minute: 5 s.
        assert!(!asks.has(&peer, 1, t0 + ms(4_999)));
        assert!(asks.has(&peer, 1, t0 + ms(5_000)));
        assert!(!asks.has(&peer, 2, t0 + ms(5_000)), "one ask refilled, not two");
        assert!(asks.has(&peer, 12, t0 + ms(60_000)), "a whole minute refills the whole");
    }

    #[test]
    fn an_overspent_budget_refills_its_excess_first() {
        let mut bytes = PerMinute::new(32 << 20);
        let t0 = Instant::now();
        // Under the budget by a byte, then an answer of 8 MiB: a quarter minute over.
        bytes.spend("reader", (32 << 20) - 1, t0);
        assert!(bytes.has(&"reader", 1, t0));
        bytes.spend("reader", 8 << 20, t0);
        assert!(!bytes.has(&"reader", 1, t0 + ms(14_999)), "the excess refills first");
        assert!(bytes.has(&"reader", 1, t0 + ms(15_000)));
    }

    #[test]
    fn keys_whose_budget_refilled_are_forgotten_once_many_are_remembered() {
        let mut asks = PerMinute::new(60);
        let t0 = Instant::now();
        for i in 0..PRUNE_AT as u64 {
            asks.spend(i, 1, t0);
        }
        // A second later, all have refilled: the next key's spending forgets them.
        asks.spend(u64::MAX, 1, t0 + ms(1_000));
        assert_eq!(asks.refilled.len(), 1);
        assert!(!asks.has(&u64::MAX, 60, t0 + ms(1_000)), "the one remembered still owes");
    }
}
