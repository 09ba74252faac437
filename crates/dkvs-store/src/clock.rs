//! Time, as the store sees it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A source of the current time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    /// On Linux and Android this reads `CLOCK_REALTIME_COARSE`, the kernel's last tick (1 to
    /// 4 ms old), which costs a few nanoseconds instead of the 30 of a precise read: a get
    /// reads the clock every time, and expiry has no use for sub-tick precision.
    fn now_ms(&self) -> u64 {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
            u64::try_from(now.tv_sec).unwrap_or(0) * 1000
                + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            dkvs_record::unix_millis()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_agrees_with_the_precise_clock() {
        let precise = dkvs_record::unix_millis();
        let coarse = SystemClock.now_ms();
        // The coarse clock trails by at most a few kernel ticks.
        assert!(
            coarse <= precise + 1 && precise.saturating_sub(coarse) < 50,
            "{coarse} vs {precise}"
        );
    }
}

/// A clock that moves only when told to: for tests and simulations.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock that reads `now_ms` until it is moved.
    pub fn new(now_ms: u64) -> ManualClock {
        ManualClock(Arc::new(AtomicU64::new(now_ms)))
    }

    /// Moves the clock forward by `ms` milliseconds.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
