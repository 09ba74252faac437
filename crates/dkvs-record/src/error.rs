//! Errors of decoding and validation, one enum per operation.

use dkvs_account::{KeyError, VerifyError};

use crate::{InvalidKey, MAX_ENCODED_LEN, MAX_VALUE_LEN};

/// Why bytes are not a well-formed record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The encoding is over [`MAX_ENCODED_LEN`]; nothing was decoded.
    #[error("encoded record is {len} bytes, limit is {MAX_ENCODED_LEN}")]
    TooLarge {
        /// The encoding's length.
        len: usize,
    },
    /// Not protobuf, or not this message.
    #[error("record is not valid protobuf: {0}")]
    Protobuf(String),
    /// The value is over [`MAX_VALUE_LEN`].
    #[error("value is {len} bytes, limit is {MAX_VALUE_LEN}")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
    },
    /// The key breaks the key rules.
    #[error("invalid key: {0}")]
    Key(#[from] InvalidKey),
    /// A public key of an unknown type, or bytes that are no key.
    #[error("{0}")]
    PublicKey(#[from] KeyError),
    /// A field that must be present is not.
    #[error("record has no {0}")]
    MissingField(&'static str),
    /// An owner field on an account-scoped key, which names its owner itself.
    #[error("record for an account-scoped key carries an owner field")]
    RedundantOwner,
    /// Flag bits this version does not know.
    #[error("record has unknown flags {0:#x}")]
    UnknownFlags(u32),
    /// A signature that is not 64 bytes.
    #[error("signature is {len} bytes, expected 64")]
    SignatureLength {
        /// The signature's length.
        len: usize,
    },
}

/// Why a record breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidateError {
    /// The value is over [`MAX_VALUE_LEN`].
    #[error("value is {len} bytes, limit is {MAX_VALUE_LEN}")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
    },
    /// An account-scoped key signed by another account.
    #[error("key {key:?} belongs to another account than the record's owner {owner}")]
    WrongOwner {
        /// The key.
        key: String,
        /// The record's owner.
        owner: String,
    },
    /// A tombstone must have an empty value.
    #[error("tombstone carries a {len}-byte value")]
    TombstoneWithValue {
        /// The value's length.
        len: usize,
    },
    /// Expiry at or before issue.
    #[error("record expires at {expires_at_ms} ms, not after its issue time {issued_at_ms} ms")]
    ExpiresBeforeIssued {
        /// Issue time.
        issued_at_ms: u64,
        /// Expiry time.
        expires_at_ms: u64,
    },
    /// Already expired.
    #[error("record expired at {expires_at_ms} ms, it is now {now_ms} ms")]
    Expired {
        /// Expiry time.
        expires_at_ms: u64,
        /// The validating node's time.
        now_ms: u64,
    },
    /// Issued further in the future than the clock-skew bound allows.
    #[error(
        "record is issued at {issued_at_ms} ms, more than {max_skew_ms} ms after now ({now_ms} ms)"
    )]
    IssuedInFuture {
        /// Issue time.
        issued_at_ms: u64,
        /// The validating node's time.
        now_ms: u64,
        /// The allowed clock skew.
        max_skew_ms: u64,
    },
    /// A transfer on an account-scoped key: those cannot change hands.
    #[error("key {0:?} is account-scoped and cannot be transferred")]
    TransferOnAccountKey(String),
    /// A transfer from the owner to the owner.
    #[error("transfer gives the name to its own giver")]
    TransferToSelf,
    /// The transfer's signature does not verify.
    #[error("bad transfer signature: {0}")]
    BadTransfer(VerifyError),
    /// The owner's signature does not verify.
    #[error("bad signature: {0}")]
    BadSignature(VerifyError),
}

/// Decoding or validation failed: what [`crate::Record::decode_validated`] returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The bytes are not a well-formed record.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The record breaks a rule.
    #[error(transparent)]
    Validate(#[from] ValidateError),
}
