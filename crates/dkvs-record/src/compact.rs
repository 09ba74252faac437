//! A record kept in one allocation, for stores that hold many.

use std::sync::Arc;

use dkvs_account::{AccountId, KeyType, PublicKey, Signature};

use crate::{Key, Record, Transfer};

// The layout of `Compact::bytes`: a fixed header, then the key's text, the value and, for a
// record that carries one, the transfer (the giver's key type code, key and signature).
const SEQ: usize = 0;
const ISSUED: usize = 8;
const EXPIRES: usize = 16;
const FLAGS: usize = 24;
const KEY_LEN: usize = 25;
const VALUE_LEN: usize = 27;
const SIGNATURE: usize = 29;
const HEADER: usize = SIGNATURE + 64;

const TOMBSTONE: u8 = 1;
const SCOPED: u8 = 2;
const TRANSFER: u8 = 4;
/// Scoped to an account other than the owner: a record no store keeps (validation refuses
/// it), kept right all the same by parsing its key again.
const FOREIGN_SCOPE: u8 = 8;

/// A record kept in one allocation: its fields, key and value side by side, with the owner's
/// parsed key beside them (shared between an owner's records, [`Compact::share_owner`]).
///
/// A store that holds many records keeps them so: a [`Record`] takes four allocations and
/// about twice its encoded size, a `Compact` one allocation of about its encoded size.
/// [`Compact::record`] gives the record back, equal to the one it was made from; nothing is
/// parsed or checked again (a transfer's giver key aside), so it is cheap. Cloning shares
/// the allocation.
#[derive(Clone)]
pub struct Compact {
    bytes: Arc<[u8]>,
    owner: PublicKey,
}

impl From<&Record> for Compact {
    fn from(record: &Record) -> Compact {
        let key = record.key.as_str().as_bytes();
        let transfer_len =
            record.transfer.as_ref().map_or(0, |t| 2 + t.from().as_bytes().len() + 64);
        let mut bytes = Vec::with_capacity(HEADER + key.len() + record.value.len() + transfer_len);
        bytes.extend_from_slice(&record.seq.to_le_bytes());
        bytes.extend_from_slice(&record.issued_at_ms.to_le_bytes());
        bytes.extend_from_slice(&record.expires_at_ms.to_le_bytes());
        let mut flags = 0;
        if record.tombstone {
            flags |= TOMBSTONE;
        }
        match record.key.scope() {
            Some(scope) if scope.public_key() == &record.owner => flags |= SCOPED,
            Some(_) => flags |= FOREIGN_SCOPE,
            None => {}
        }
        if record.transfer.is_some() {
            flags |= TRANSFER;
        }
        bytes.push(flags);
        // A key is at most 256 bytes and a value at most 10 KiB: every record is made by
        // `Draft::sign` or `Record::decode`, which keep both bounds, so the casts below
        // cannot truncate.
        debug_assert!(
            key.len() <= crate::MAX_KEY_LEN && record.value.len() <= crate::MAX_VALUE_LEN
        );
        bytes.extend_from_slice(&(key.len() as u16).to_le_bytes());
        bytes.extend_from_slice(&(record.value.len() as u16).to_le_bytes());
        bytes.extend_from_slice(record.signature.as_bytes());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(&record.value);
        if let Some(t) = &record.transfer {
            let from = t.from().as_bytes();
            bytes.push(t.from().key_type().code());
            bytes.push(from.len() as u8);
            bytes.extend_from_slice(from);
            bytes.extend_from_slice(t.signature().as_bytes());
        }
        Compact { bytes: bytes.into(), owner: record.owner.clone() }
    }
}

impl Compact {
    fn u64_at(&self, at: usize) -> u64 {
        let mut word = [0; 8];
        word.copy_from_slice(&self.bytes[at..at + 8]);
        u64::from_le_bytes(word)
    }

    fn u16_at(&self, at: usize) -> usize {
        usize::from(u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]]))
    }

    fn flag(&self, flag: u8) -> bool {
        self.bytes[FLAGS] & flag != 0
    }

    fn value_range(&self) -> std::ops::Range<usize> {
        let start = HEADER + self.u16_at(KEY_LEN);
        start..start + self.u16_at(VALUE_LEN)
    }

    /// The key's text.
    pub fn key_str(&self) -> &str {
        let bytes = &self.bytes[HEADER..HEADER + self.u16_at(KEY_LEN)];
        // Made from a `Key`, whose text is UTF-8; never taken from outside.
        std::str::from_utf8(bytes).unwrap_or_default()
    }

    /// The key (its text copied into a new allocation).
    pub fn key(&self) -> Key {
        if self.flag(FOREIGN_SCOPE) {
            return Key::new(self.key_str())
                .expect("a compact record keeps the text of a valid key");
        }
        let scope = self.flag(SCOPED).then(|| AccountId::from(self.owner.clone()));
        Key::from_parts(self.key_str().into(), scope)
    }

    /// The value (empty for a tombstone).
    pub fn value(&self) -> &[u8] {
        &self.bytes[self.value_range()]
    }

    /// The owner's public key.
    pub fn owner(&self) -> &PublicKey {
        &self.owner
    }

    /// The sequence number.
    pub fn seq(&self) -> u64 {
        self.u64_at(SEQ)
    }

    /// Issue time, milliseconds since the Unix epoch.
    pub fn issued_at_ms(&self) -> u64 {
        self.u64_at(ISSUED)
    }

    /// Expiry time, milliseconds since the Unix epoch.
    pub fn expires_at_ms(&self) -> u64 {
        self.u64_at(EXPIRES)
    }

    /// True for a delete marker.
    pub fn is_tombstone(&self) -> bool {
        self.flag(TOMBSTONE)
    }

    /// True when the record carries a transfer.
    pub fn has_transfer(&self) -> bool {
        self.flag(TRANSFER)
    }

    /// Bytes of the one allocation (what the fields, key, value and transfer take).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true: a record has at least its fixed fields. (For clippy's `len` rule.)
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Takes `owner`, an equal key parsed once and shared, as this record's owner; a key that
    /// is not equal changes nothing.
    pub fn share_owner(&mut self, owner: &PublicKey) {
        if self.owner == *owner {
            self.owner = owner.clone();
        }
    }

    /// The record, equal to the one this was made from.
    pub fn record(&self) -> Record {
        let mut signature = [0; 64];
        signature.copy_from_slice(&self.bytes[SIGNATURE..HEADER]);
        let value = self.value_range();
        let transfer = self.has_transfer().then(|| {
            let rest = &self.bytes[value.end..];
            let (code, len) = (rest[0], usize::from(rest[1]));
            let from = KeyType::from_code(u32::from(code))
                .and_then(|key_type| PublicKey::from_bytes(key_type, &rest[2..2 + len]))
                .expect("a compact record keeps the bytes of a key that parsed");
            let signature = Signature::from_slice(&rest[2 + len..])
                .expect("a compact record keeps a 64-byte transfer signature");
            Box::new(Transfer::from_parts(from, signature))
        });
        Record {
            key: self.key(),
            value: self.bytes[value].to_vec(),
            owner: self.owner.clone(),
            seq: self.seq(),
            issued_at_ms: self.issued_at_ms(),
            expires_at_ms: self.expires_at_ms(),
            tombstone: self.is_tombstone(),
            transfer,
            signature: Signature(signature),
        }
    }
}

impl std::fmt::Debug for Compact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compact")
            .field("key", &self.key_str())
            .field("seq", &self.seq())
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use dkvs_account::Keypair;

    use super::*;
    use crate::Draft;

    fn round_trip(record: &Record) {
        let compact = Compact::from(record);
        assert_eq!(compact.record(), *record);
        assert_eq!(compact.key_str(), record.key().as_str());
        assert_eq!(compact.key(), *record.key());
        assert_eq!(compact.key().scope(), record.key().scope());
        assert_eq!(compact.value(), record.value());
        assert_eq!(compact.seq(), record.seq());
        assert_eq!(compact.issued_at_ms(), record.issued_at_ms());
        assert_eq!(compact.expires_at_ms(), record.expires_at_ms());
        assert_eq!(compact.is_tombstone(), record.is_tombstone());
        assert_eq!(compact.has_transfer(), record.transfer().is_some());
        assert_eq!(compact.owner(), record.owner());
        // No larger than the record's own encoding, give or take the fixed-width fields.
        assert!(compact.len() <= record.encode().len() + 40, "{compact:?}");
    }

    #[test]
    fn every_kind_of_record_comes_back_equal() {
        for key_type in [KeyType::Ed25519, KeyType::Secp256k1] {
            let alice = Keypair::generate(key_type);
            let scoped = Key::scoped(&alice.account_id(), "profile/name").expect("valid");
            let shared = Key::new("/names/alice").expect("valid");
            for key in [scoped, shared.clone()] {
                round_trip(
                    &Draft::new(key.clone(), b"Alice".to_vec(), 7, 60_000)
                        .sign(&alice)
                        .expect("valid"),
                );
                round_trip(&Draft::tombstone(key.clone(), 8, 60_000).sign(&alice).expect("valid"));
                round_trip(
                    &Draft::new(key, vec![9; crate::MAX_VALUE_LEN], 9, 60_000)
                        .sign(&alice)
                        .expect("valid"),
                );
            }
            // A shared name handed over, by a giver of either key type.
            for giver_type in [KeyType::Ed25519, KeyType::Secp256k1] {
                let bob = Keypair::generate(giver_type);
                let mut draft = Draft::new(shared.clone(), b"now Alice's".to_vec(), 3, 60_000);
                draft.transfer = Some(Transfer::sign(&bob, &shared, alice.public(), 3));
                round_trip(&draft.sign(&alice).expect("valid"));
            }
        }
    }

    #[test]
    fn a_shared_owner_key_is_taken_only_when_equal() {
        let alice = Keypair::generate(KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "a").expect("valid");
        let record = Draft::new(key, b"x".to_vec(), 1, 60_000).sign(&alice).expect("valid");
        let mut compact = Compact::from(&record);
        let other = Keypair::generate(KeyType::Ed25519);
        compact.share_owner(other.public());
        assert_eq!(compact.owner(), alice.public());
        compact.share_owner(alice.public());
        assert_eq!(compact.record(), record);
    }

    #[test]
    fn a_key_scoped_to_another_account_comes_back_as_it_was() {
        // No store keeps such a record (validation refuses it); it still round-trips.
        let (alice, mallory) =
            (Keypair::generate(KeyType::Ed25519), Keypair::generate(KeyType::Ed25519));
        let key = Key::scoped(&alice.account_id(), "a").expect("valid");
        let signed = Draft::new(key, b"x".to_vec(), 1, 60_000).sign(&alice).expect("valid");
        let forged = Record { owner: mallory.public().clone(), ..signed };
        round_trip(&forged);
        assert_eq!(Compact::from(&forged).key().scope(), Some(&alice.account_id()));
    }
}
