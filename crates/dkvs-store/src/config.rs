//! Store configuration.

use dkvs_record::Limits;

/// How far a put is on its way to disk when it returns, for a store opened on a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// The record is written to the log file (handed to the operating system) before the put
    /// returns: it survives the process being killed (`kill -9`), not a power cut. The store's
    /// thread also flushes the log at most every 5 s while puts come (no put waits for it), so
    /// that damage found at the next start is told from a power cut's tear (`persist.rs`). A
    /// failed flush is final, as with `Fsync`: the store then refuses writes, saying why.
    #[default]
    WriteThrough,
    /// The log file is also synced (`fdatasync`) before the put returns: it survives a power cut.
    /// Puts waiting at the same time share one flush (group commit, on the store's sync thread);
    /// see [`crate::Store::without_waiting_for_sync`] for callers that must not block.
    Fsync,
}

/// Store configuration; every field has a documented default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Memory budget for records and remembered sequences, in bytes. Default: 256 MiB.
    pub max_bytes: u64,
    /// Budget of one owner's records, in bytes. Default: 16 MiB.
    pub max_bytes_per_owner: u64,
    /// The share of `max_bytes` that only this node's user can fill ([`crate::Store::put_own`]):
    /// records from peers stop at `max_bytes - reserved_for_own_bytes`. Default: 1/8 of the
    /// default budget, 32 MiB.
    pub reserved_for_own_bytes: u64,
    /// The longest a record is kept after its issue time, whatever its own expiry says, in
    /// milliseconds. Default: 7 days.
    pub max_ttl_ms: u64,
    /// Record validation limits (clock skew). Default: [`Limits::default`].
    pub limits: Limits,
    /// Durability of puts on a persistent store. Default: [`Durability::WriteThrough`].
    pub durability: Durability,
    /// Log size in bytes after which a persistent store writes a snapshot and starts a new log.
    /// Default: 64 MiB.
    pub compact_after_bytes: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_bytes: 256 << 20,
            max_bytes_per_owner: 16 << 20,
            reserved_for_own_bytes: 32 << 20,
            max_ttl_ms: 7 * 24 * 3600 * 1000,
            limits: Limits::default(),
            durability: Durability::WriteThrough,
            compact_after_bytes: 64 << 20,
        }
    }
}

impl Config {
    /// With another memory budget, of which the same fraction as by default (1/8) is kept
    /// for this node's user.
    pub fn with_max_bytes(mut self, bytes: u64) -> Config {
        self.max_bytes = bytes;
        self.reserved_for_own_bytes = bytes / 8;
        self
    }
    /// With another share kept for this node's user.
    pub fn with_reserved_for_own_bytes(mut self, bytes: u64) -> Config {
        self.reserved_for_own_bytes = bytes;
        self
    }
    /// With another per-owner budget.
    pub fn with_max_bytes_per_owner(mut self, bytes: u64) -> Config {
        self.max_bytes_per_owner = bytes;
        self
    }
    /// With another maximum TTL.
    pub fn with_max_ttl_ms(mut self, ms: u64) -> Config {
        self.max_ttl_ms = ms;
        self
    }
    /// With other validation limits.
    pub fn with_limits(mut self, limits: Limits) -> Config {
        self.limits = limits;
        self
    }
    /// With another durability.
    pub fn with_durability(mut self, durability: Durability) -> Config {
        self.durability = durability;
        self
    }
    /// With another compaction threshold.
    pub fn with_compact_after_bytes(mut self, bytes: u64) -> Config {
        self.compact_after_bytes = bytes;
        self
    }
}
