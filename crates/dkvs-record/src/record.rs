//! The record, its signing bytes, validation and ordering.

use std::time::{SystemTime, UNIX_EPOCH};

use dkvs_account::{Domain, Keypair, PublicKey, Signature};
use sha2::{Digest as _, Sha256};

use crate::{Key, ValidateError};

/// Largest value in bytes. 10,240 is accepted, 10,241 refused.
pub const MAX_VALUE_LEN: usize = 10_240;

/// Domain tag of record signatures.
pub const RECORD_DOMAIN: Domain = Domain::new("dkvs-record-v1");
/// Domain tag of transfer signatures.
pub const TRANSFER_DOMAIN: Domain = Domain::new("dkvs-transfer-v1");

const FLAG_TOMBSTONE: u32 = 1;
pub(crate) const KNOWN_FLAGS: u32 = FLAG_TOMBSTONE;

/// Milliseconds since the Unix epoch by the system clock (0 if the clock is before 1970).
pub fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Limits a node applies when it validates a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How far in the future a record's issue time may be, in milliseconds. Default: 5 minutes.
    pub max_clock_skew_ms: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_clock_skew_ms: 5 * 60 * 1000 }
    }
}

impl Limits {
    /// These limits with another clock-skew bound.
    pub fn with_max_clock_skew_ms(self, max_clock_skew_ms: u64) -> Limits {
        Limits { max_clock_skew_ms }
    }
}

/// The current owner's consent, carried in a record, to hand a shared name to the record's owner.
///
/// It signs the key, the old owner, the new owner and the sequence of the record it travels in,
/// so it is good for exactly one record: replaying it at a later sequence fails the signature, and
/// replaying the same record is refused as stale by every node that saw a newer one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    from: PublicKey,
    signature: Signature,
}

impl Transfer {
    /// The current owner `from` hands `key` to `to`, for the record with sequence `seq`.
    pub fn sign(from: &Keypair, key: &Key, to: &PublicKey, seq: u64) -> Transfer {
        let bytes = transfer_signing_bytes(key, from.public(), to, seq);
        Transfer { from: from.public().clone(), signature: from.sign_preimage(&bytes) }
    }

    /// A transfer from its parts, as decoded from the wire.
    pub fn from_parts(from: PublicKey, signature: Signature) -> Transfer {
        Transfer { from, signature }
    }

    /// The owner who gives the name away.
    pub fn from(&self) -> &PublicKey {
        &self.from
    }

    /// The giver's signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }
}

/// The exact bytes a transfer signature covers.
pub fn transfer_signing_bytes(key: &Key, from: &PublicKey, to: &PublicKey, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + key.as_str().len());
    TRANSFER_DOMAIN.write_prefix(&mut out);
    field(&mut out, key.as_str().as_bytes());
    public_key_field(&mut out, from);
    public_key_field(&mut out, to);
    field(&mut out, &seq.to_be_bytes());
    out
}

/// The fields of a record before it is signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    /// The key.
    pub key: Key,
    /// The value, at most [`MAX_VALUE_LEN`] bytes; empty for a tombstone.
    pub value: Vec<u8>,
    /// The sequence number; higher replaces lower.
    pub seq: u64,
    /// Issue time, milliseconds since the Unix epoch.
    pub issued_at_ms: u64,
    /// Expiry time, milliseconds since the Unix epoch; after it the record is dropped.
    pub expires_at_ms: u64,
    /// True for a delete marker.
    pub tombstone: bool,
    /// The current owner's consent, when this record takes over a shared name.
    pub transfer: Option<Transfer>,
}

impl Draft {
    /// A draft issued now by the system clock that lives for `ttl_ms` milliseconds.
    pub fn new(key: Key, value: impl Into<Vec<u8>>, seq: u64, ttl_ms: u64) -> Draft {
        let now = unix_millis();
        Draft {
            key,
            value: value.into(),
            seq,
            issued_at_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms),
            tombstone: false,
            transfer: None,
        }
    }

    /// A tombstone (delete marker) for `key` issued now, living for `ttl_ms` milliseconds.
    pub fn tombstone(key: Key, seq: u64, ttl_ms: u64) -> Draft {
        Draft { tombstone: true, ..Draft::new(key, Vec::new(), seq, ttl_ms) }
    }

    /// Signs the draft. The checks that need no clock run first, so that what is signed is valid:
    /// the value bound, the account scope, the tombstone rule and the transfer's placement.
    pub fn sign(self, owner: &Keypair) -> Result<Record, ValidateError> {
        let mut record = Record {
            key: self.key,
            value: self.value,
            owner: owner.public().clone(),
            seq: self.seq,
            issued_at_ms: self.issued_at_ms,
            expires_at_ms: self.expires_at_ms,
            tombstone: self.tombstone,
            transfer: self.transfer.map(Box::new),
            signature: Signature([0; 64]),
        };
        record.check_structure()?;
        record.signature = owner.sign_preimage(&record.signing_bytes());
        Ok(record)
    }
}

/// A signed record: a key, a value, and who wrote which version of it when.
///
/// A `Record` may come from the network and be invalid; [`Record::validate`] is what makes it
/// trustworthy, and every store validates before it keeps one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub(crate) key: Key,
    pub(crate) value: Vec<u8>,
    pub(crate) owner: PublicKey,
    pub(crate) seq: u64,
    pub(crate) issued_at_ms: u64,
    pub(crate) expires_at_ms: u64,
    pub(crate) tombstone: bool,
    // Boxed: few records carry one, and every record would pay its size.
    pub(crate) transfer: Option<Box<Transfer>>,
    pub(crate) signature: Signature,
}

impl Record {
    /// The key.
    pub fn key(&self) -> &Key {
        &self.key
    }
    /// The value (empty for a tombstone).
    pub fn value(&self) -> &[u8] {
        &self.value
    }
    /// The owner's public key.
    pub fn owner(&self) -> &PublicKey {
        &self.owner
    }
    /// Takes `owner`, an equal key parsed once and shared, as this record's owner and its
    /// key's scope: a store that keeps many records of one account then keeps that account's
    /// parsed key once, not twice per record. A key that is not equal changes nothing.
    pub fn share_owner(&mut self, owner: &PublicKey) {
        if self.owner == *owner {
            self.owner = owner.clone();
        }
        self.key.share_scope(owner);
    }
    /// The sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// Issue time, milliseconds since the Unix epoch.
    pub fn issued_at_ms(&self) -> u64 {
        self.issued_at_ms
    }
    /// Expiry time, milliseconds since the Unix epoch.
    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }
    /// True for a delete marker.
    pub fn is_tombstone(&self) -> bool {
        self.tombstone
    }
    /// The transfer this record carries, if it takes over a shared name.
    pub fn transfer(&self) -> Option<&Transfer> {
        self.transfer.as_deref()
    }
    /// The owner's signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    pub(crate) fn flags(&self) -> u32 {
        if self.tombstone { FLAG_TOMBSTONE } else { 0 }
    }

    /// The exact bytes the owner's signature covers: the domain tag, then every field
    /// length-prefixed (u32 big-endian): key, value, owner (type code and key bytes), sequence,
    /// issue time, expiry (u64 big-endian each), flags (u32 big-endian), transfer (empty, or the
    /// giver's key field followed by the giver's signature field).
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(200 + self.key.as_str().len() + self.value.len());
        RECORD_DOMAIN.write_prefix(&mut out);
        field(&mut out, self.key.as_str().as_bytes());
        field(&mut out, &self.value);
        public_key_field(&mut out, &self.owner);
        field(&mut out, &self.seq.to_be_bytes());
        field(&mut out, &self.issued_at_ms.to_be_bytes());
        field(&mut out, &self.expires_at_ms.to_be_bytes());
        field(&mut out, &self.flags().to_be_bytes());
        match &self.transfer {
            None => field(&mut out, &[]),
            Some(t) => {
                let mut inner = Vec::with_capacity(112);
                public_key_field(&mut inner, &t.from);
                field(&mut inner, t.signature.as_bytes());
                field(&mut out, &inner);
            }
        }
        out
    }

    /// A digest of the whole record, signature included: equal digests mean identical records.
    pub fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.signing_bytes());
        hasher.update(self.signature.as_bytes());
        hasher.finalize().into()
    }

    /// The rules that need neither a clock nor signature work; cheap, so they run first.
    pub(crate) fn check_structure(&self) -> Result<(), ValidateError> {
        if self.value.len() > MAX_VALUE_LEN {
            return Err(ValidateError::ValueTooLarge { len: self.value.len() });
        }
        if let Some(scope) = self.key.scope()
            && scope.public_key() != &self.owner
        {
            return Err(ValidateError::WrongOwner {
                key: self.key.to_string(),
                owner: self.owner.account_id().to_string(),
            });
        }
        if self.tombstone && !self.value.is_empty() {
            return Err(ValidateError::TombstoneWithValue { len: self.value.len() });
        }
        if self.expires_at_ms <= self.issued_at_ms {
            return Err(ValidateError::ExpiresBeforeIssued {
                issued_at_ms: self.issued_at_ms,
                expires_at_ms: self.expires_at_ms,
            });
        }
        if let Some(transfer) = &self.transfer {
            if !self.key.is_shared() {
                return Err(ValidateError::TransferOnAccountKey(self.key.to_string()));
            }
            if transfer.from == self.owner {
                return Err(ValidateError::TransferToSelf);
            }
        }
        Ok(())
    }

    /// The rules that depend on the time `now_ms`: not expired, not issued too far in the future.
    pub fn check_time(&self, now_ms: u64, limits: &Limits) -> Result<(), ValidateError> {
        if self.expires_at_ms <= now_ms {
            return Err(ValidateError::Expired { expires_at_ms: self.expires_at_ms, now_ms });
        }
        if self.issued_at_ms > now_ms.saturating_add(limits.max_clock_skew_ms) {
            return Err(ValidateError::IssuedInFuture {
                issued_at_ms: self.issued_at_ms,
                now_ms,
                max_skew_ms: limits.max_clock_skew_ms,
            });
        }
        Ok(())
    }

    /// Checks every rule except the owner's signature; see [`Record::validate`].
    pub fn validate_unsigned(&self, now_ms: u64, limits: &Limits) -> Result<(), ValidateError> {
        self.check_structure()?;
        self.check_time(now_ms, limits)?;
        if let Some(t) = &self.transfer {
            let bytes = transfer_signing_bytes(&self.key, &t.from, &self.owner, self.seq);
            t.from.verify_preimage(&bytes, &t.signature).map_err(ValidateError::BadTransfer)?;
        }
        Ok(())
    }

    /// Checks every rule a record must keep, cheapest first: value size, account scope, tombstone
    /// and transfer placement, times, then the transfer's and the owner's signatures.
    pub fn validate(&self, now_ms: u64, limits: &Limits) -> Result<(), ValidateError> {
        self.validate_unsigned(now_ms, limits)?;
        self.owner
            .verify_preimage(&self.signing_bytes(), &self.signature)
            .map_err(ValidateError::BadSignature)
    }

    /// How `other` relates to `self` for the same key: `Greater` when `other` is newer (higher
    /// sequence), `Less` when older, `Equal` when it is the very same record. The same sequence
    /// with different content is a fork: an error, never a silent pick.
    pub fn compare(&self, other: &Record) -> Result<std::cmp::Ordering, CompareError> {
        if self.key != other.key {
            return Err(CompareError::DifferentKeys {
                left: self.key.to_string(),
                right: other.key.to_string(),
            });
        }
        match other.seq.cmp(&self.seq) {
            std::cmp::Ordering::Equal if self != other => {
                Err(CompareError::Fork { key: self.key.to_string(), seq: self.seq })
            }
            ordering => Ok(ordering),
        }
    }
}

/// Of two records for the same key, the newer one; `Equal` records give the first.
pub fn newer<'a>(a: &'a Record, b: &'a Record) -> Result<&'a Record, CompareError> {
    Ok(if a.compare(b)? == std::cmp::Ordering::Greater { b } else { a })
}

/// Why two records cannot be ordered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompareError {
    /// Records for different keys have no order.
    #[error("records for different keys {left:?} and {right:?} cannot be compared")]
    DifferentKeys {
        /// The first record's key.
        left: String,
        /// The second record's key.
        right: String,
    },
    /// Two different records with the same key and sequence: the owner signed both.
    #[error("fork: two different records for {key:?} with sequence {seq}")]
    Fork {
        /// The key.
        key: String,
        /// The sequence both records claim.
        seq: u64,
    },
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every field is bounded far below 4 GiB (the largest is a 10 KiB value).
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn public_key_field(out: &mut Vec<u8>, key: &PublicKey) {
    let bytes = key.as_bytes();
    out.extend_from_slice(&(1 + bytes.len() as u32).to_be_bytes());
    out.push(key.key_type().code());
    out.extend_from_slice(bytes);
}
