//! Helpers for the workspace's end-to-end tests: child processes that are always cleaned up,
//! a dishonest peer ([`liar`]), a relay that lies about reachability ([`lying_relay`]), and
//! [`testnet`] (the `dkvs-testnet` crate), many dkvs nodes in one process.

pub mod liar;
pub mod lying_relay;
pub use dkvs_testnet as testnet;

use std::process::Child;

/// A child process that is killed and reaped when dropped, so a failing test leaves nothing
/// running.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The fixed secret of the crash-test writer's account, so the checker can name its keys.
pub const CRASH_WRITER_SECRET: [u8; 32] = [7; 32];

/// The key the crash-test writer uses for put number `i` of round `round`.
pub fn crash_key(account: &dkvs_account::AccountId, round: u32, i: u64) -> dkvs_record::Key {
    // 40 keys per round, so most puts replace an earlier record.
    dkvs_record::Key::scoped(account, &format!("round{round}/k{}", i % 40))
        .unwrap_or_else(|e| unreachable!("a fixed key pattern is valid: {e}"))
}
