//! Budgets a minute, per peer or network of peers, that refill evenly (the generic cell rate
//! algorithm). A count per minute of the clock, reset when the minute turns, let twice the
//! budget through across the turn (the whole of it in the minute's last second and again in
//! the next one's first); here a key that spent its budget gets more only as time refills it.

use std::collections::HashMap;
use std::hash::Hash;

/// A minute, in microseconds (the unit of the refill: a byte of a budget of megabytes a
/// minute refills in microseconds, not milliseconds).
const MINUTE: u64 = 60_000_000;

/// Keys remembered before those whose budget has refilled are forgotten (a forgotten key has
/// its whole budget, as one that refilled does).
const PRUNE_AT: usize = 4096;

/// What each key may spend a minute, refilled evenly; a minute's worth is the most saved up.
pub(crate) struct PerMinute<K> {
    per_minute: u64,
    /// When each key's spending will have refilled (microseconds of the wall clock).
    refilled: HashMap<K, u64>,
}

impl<K: Hash + Eq> PerMinute<K> {
    /// A budget of `per_minute` (asks, bytes) for each key.
    pub(crate) fn new(per_minute: u64) -> PerMinute<K> {
        PerMinute { per_minute: per_minute.max(1), refilled: HashMap::new() }
    }

    /// Whether `key` has `amount` of its budget left at `now_ms`.
    pub(crate) fn has(&self, key: &K, amount: u64, now_ms: u64) -> bool {
        self.owed(key, now_ms.saturating_mul(1000)).saturating_add(self.time_of(amount)) <= MINUTE
    }

    /// `key` spent `amount` at `now_ms`. It may spend past its budget (an answer whose size was
    /// known only once it was made): the excess refills before anything else.
    pub(crate) fn spend(&mut self, key: K, amount: u64, now_ms: u64) {
        let now = now_ms.saturating_mul(1000);
        if self.refilled.len() >= PRUNE_AT {
            self.refilled.retain(|_, at| *at > now);
        }
        let owed = self.owed(&key, now);
        self.refilled.insert(key, now.saturating_add(owed).saturating_add(self.time_of(amount)));
    }

    /// The time `key`'s spending takes to refill from `now` (microseconds). More than two
    /// minutes is no budget overspent by one answer but a wall clock set back: the spending
    /// is forgotten, or the key would be refused for as long as the clock went back.
    fn owed(&self, key: &K, now: u64) -> u64 {
        let owed = self.refilled.get(key).map_or(0, |at| at.saturating_sub(now));
        if owed > 2 * MINUTE { 0 } else { owed }
    }

    /// The time `amount` takes to refill (microseconds).
    fn time_of(&self, amount: u64) -> u64 {
        let time = u128::from(amount) * u128::from(MINUTE) / u128::from(self.per_minute);
        u64::try_from(time).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minute's turn at a round number of the wall clock.
    const TURN: u64 = 1_800_000_000_000 / 60_000 * 60_000;

    #[test]
    fn a_budget_spent_at_the_end_of_a_minute_is_not_whole_again_at_the_start_of_the_next() {
        let mut asks = PerMinute::new(12);
        let (peer, other) = ("flooder", "other");
        let mut granted = 0;
        while asks.has(&peer, 1, TURN - 1) {
            asks.spend(peer, 1, TURN - 1);
            granted += 1;
            assert!(granted < 100, "never refused");
        }
        assert_eq!(granted, 12, "the whole budget at once");
        assert!(!asks.has(&peer, 1, TURN + 1), "the minute turned, the budget did not refill");
        assert!(asks.has(&other, 1, TURN + 1), "another key has its own");
        // One ask refills in a twelfth of a minute: 5 s.
        assert!(!asks.has(&peer, 1, TURN - 1 + 4_999));
        assert!(asks.has(&peer, 1, TURN - 1 + 5_000));
        assert!(!asks.has(&peer, 2, TURN - 1 + 5_000), "one ask refilled, not two");
        assert!(asks.has(&peer, 12, TURN - 1 + 60_000), "a whole minute refills the whole");
    }

    #[test]
    fn an_overspent_budget_refills_its_excess_first_and_a_clock_set_back_refuses_nobody() {
        let mut bytes = PerMinute::new(32 << 20);
        // Under the budget by a byte, then an answer of 8 MiB: a quarter minute over.
        bytes.spend("reader", (32 << 20) - 1, TURN);
        assert!(bytes.has(&"reader", 1, TURN));
        bytes.spend("reader", 8 << 20, TURN);
        assert!(!bytes.has(&"reader", 1, TURN + 14_999), "the excess refills first");
        assert!(bytes.has(&"reader", 1, TURN + 15_000));
        // The wall clock set back a day: not refused for a day.
        let mut asks = PerMinute::new(1);
        asks.spend("peer", 1, TURN);
        assert!(!asks.has(&"peer", 1, TURN + 59_999));
        assert!(asks.has(&"peer", 1, TURN - 86_400_000));
    }

    #[test]
    fn keys_whose_budget_refilled_are_forgotten_once_many_are_remembered() {
        let mut asks = PerMinute::new(60);
        for i in 0..PRUNE_AT as u64 {
            asks.spend(i, 1, TURN);
        }
        // A second later, all have refilled: the next key's spending forgets them.
        asks.spend(u64::MAX, 1, TURN + 1_000);
        assert_eq!(asks.refilled.len(), 1);
        assert!(!asks.has(&u64::MAX, 60, TURN + 1_000), "the one remembered still owes");
    }
}
