//! Records for dkvs: signed, owned, sequenced key-value pairs.
//!
//! A [`Record`] binds a [`Key`] to a value of at most 10 KiB, signed by its owner's account with
//! a sequence number, an issue time and an expiry. Every field is covered by the signature
//! ([`Record::signing_bytes`]). A node keeps a record only if [`Record::validate`] passes, and
//! replaces it only by a newer one ([`Record::compare`]).
//!
//! ```
//! use dkvs_account::{KeyType, Keypair};
//! use dkvs_record::{Draft, Key, Limits, Record, unix_millis};
//!
//! let alice = Keypair::generate(KeyType::Ed25519);
//! let key = Key::scoped(&alice.account_id(), "profile/name")?;
//! let record = Draft::new(key, b"Alice".to_vec(), 1, 3_600_000).sign(&alice)?;
//!
//! let bytes = record.encode();
//! let received = Record::decode_validated(&bytes, unix_millis(), &Limits::default())?;
//! assert_eq!(received.value(), b"Alice");
//! assert_eq!(received.owner(), alice.public());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! This crate does no IO and keeps no state; time is always passed in.

mod batch;
mod compact;
mod error;
mod key;
mod record;
mod wire;

pub use batch::validate_batch;
pub use compact::Compact;
pub use error::{DecodeError, RecordError, ValidateError};
pub use key::{InvalidKey, Key, MAX_KEY_LEN, MIN_KEY_LEN};
pub use record::{
    CompareError, Draft, Limits, MAX_VALUE_LEN, RECORD_DOMAIN, Record, TRANSFER_DOMAIN, Transfer,
    newer, transfer_signing_bytes, unix_millis,
};
pub use wire::MAX_ENCODED_LEN;

impl Record {
    /// Decodes and validates in one step: what a node does with bytes from a peer.
    pub fn decode_validated(
        bytes: &[u8],
        now_ms: u64,
        limits: &Limits,
    ) -> Result<Record, RecordError> {
        let record = Record::decode(bytes)?;
        record.validate(now_ms, limits)?;
        Ok(record)
    }
}

// The README's example is compiled and run with the doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
