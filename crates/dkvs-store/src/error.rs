//! Store errors, one enum per operation.

use std::path::PathBuf;

use dkvs_record::ValidateError;

/// Why a put was refused. Nothing changed in the store, except after [`PutError::NotDurable`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutError {
    /// The record breaks a record rule.
    #[error("invalid record: {0}")]
    Invalid(#[from] ValidateError),
    /// The record lives past the node's TTL cap counted from its issue time, and that cap has passed.
    #[error(
        "record issued at {issued_at_ms} ms is past this node's maximum TTL of {max_ttl_ms} ms"
    )]
    TooOld {
        /// The record's issue time.
        issued_at_ms: u64,
        /// The node's maximum TTL.
        max_ttl_ms: u64,
    },
    /// A different record with the same key and sequence is held: its owner signed two, or
    /// another account's record came at the sequence of a holder whose record expired (a
    /// live holder's is [`PutError::ForeignOwner`]).
    #[error("fork: a different record for {key:?} with sequence {seq} is already held")]
    Fork {
        /// The key.
        key: String,
        /// The sequence both records claim.
        seq: u64,
    },
    /// A shared name held by another owner, and no valid transfer from that owner.
    #[error("name {key:?} is held by {holder}; writing it needs a transfer signed by the holder")]
    ForeignOwner {
        /// The key.
        key: String,
        /// The account that holds the name.
        holder: String,
    },
    /// The owner's budget would be exceeded.
    #[error("owner {owner} would use {needed} bytes, quota is {limit}")]
    OwnerQuota {
        /// The owner.
        owner: String,
        /// Bytes the owner would hold with this record.
        needed: u64,
        /// The per-owner budget.
        limit: u64,
    },
    /// The store's budget would be exceeded.
    #[error("store would hold {needed} bytes, budget is {limit}")]
    Full {
        /// Bytes the store would hold with this record.
        needed: u64,
        /// The store's budget.
        limit: u64,
    },
    /// The log could not be written; the record was not stored.
    #[error("could not write the log {path}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// With [`crate::Durability::Fsync`]: the log could not be flushed. The record may be held
    /// in memory, but it is not promised to survive a power cut, and the store refuses every
    /// later write (a failed flush cannot be trusted to succeed on a retry).
    #[error("could not flush the log {path}: {source}; the store refuses writes")]
    NotDurable {
        /// The log file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
}

/// Why a persistent store could not be opened or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A snapshot is damaged, or a log where a flush had covered it (damage in a log that no
    /// flush covered, such as a torn last entry, ends the read of that log instead).
    #[error("store file {path} is damaged at byte {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}
