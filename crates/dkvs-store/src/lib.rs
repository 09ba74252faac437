//! The dkvs record store: validated records in memory, bounded, and optionally persisted.
//!
//! Every [`Store::put`] validates the record (signature, owner, size, times) and applies the
//! ordering rule: a record replaces the held one only if its sequence is higher; the same record
//! again is a no-op; the same sequence with other content is a fork and refused. A shared name
//! held by a live record of one owner is refused to another owner unless the record carries a
//! transfer signed by the holder. Once a value expires, its highest sequence is still remembered,
//! so it can never be rolled back.
//!
//! Memory is bounded: a byte budget for the store and one per owner. A full store *refuses* new
//! records instead of evicting held ones, because each held record may be one this node
//! acknowledged to a writer (see `ARCHITECTURE.md`).
//!
//! A persistent store ([`Store::open`]) trusts its own files: every frame carries a checksum
//! (damage is [`StoreError::Corrupt`]; a log's tail that no flush covered, such as a torn last
//! frame, is dropped), keys are parsed
//! again under this version's rules, and the ordering rule decides between a snapshot and the
//! logs after it; owners' signatures are not checked again. Each record was validated when it
//! came in; checking it again would cost every start about 10 µs a record (batched Ed25519:
//! ten seconds for a server's million records), and whoever can write the data directory can
//! replace the program that reads it as well. A record altered on disk reaches this node's own
//! readers only: every peer validates what it receives.
//!
//! ```
//! use dkvs_account::{KeyType, Keypair};
//! use dkvs_record::{Draft, Key};
//! use dkvs_store::{Config, PutOutcome, Store};
//!
//! let store = Store::in_memory(Config::default());
//! let alice = Keypair::generate(KeyType::Ed25519);
//! let key = Key::scoped(&alice.account_id(), "greeting")?;
//!
//! let v1 = Draft::new(key.clone(), b"hello".to_vec(), 1, 60_000).sign(&alice)?;
//! let v2 = Draft::new(key.clone(), b"hello again".to_vec(), 2, 60_000).sign(&alice)?;
//! assert_eq!(store.put(v2)?, PutOutcome::Stored { replaced: None });
//! assert!(matches!(store.put(v1)?, PutOutcome::Stale { current_seq: 2, .. }));
//! assert_eq!(store.get(key.as_str()).map(|r| r.value().to_vec()), Some(b"hello again".to_vec()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! This crate knows nothing of the network.

mod clock;
mod config;
mod error;
mod persist;
mod store;
mod sync;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Config, Durability};
pub use error::{PutError, StoreError};
pub use store::{
    Expect, GONE_OVERHEAD, OWNER_OVERHEAD, PutOutcome, RECORD_OVERHEAD, Stats, Store,
    TRANSFER_OVERHEAD, gone_weight, record_weight,
};
#[doc(hidden)]
pub use sync::SyncHold;

// The README's example is compiled and run with the doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
