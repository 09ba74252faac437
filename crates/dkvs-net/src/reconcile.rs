//! Replication by range-based set reconciliation (negentropy), so that a replication round
//! between two replicas costs what differs between them, not what they hold.
//!
//! Each record is one item of 32 bytes: 16 bytes of the SHA-256 of its key, its sequence (8
//! bytes, big-endian), and 8 bytes of the SHA-256 of key and sequence. Negentropy's range
//! fingerprints add items up, so the last part must be random: with the sequence alone, a key
//! one sequence behind and another one ahead in the same range would cancel out and hide both.
//! Two replicas that hold the same sequence of every key they share are
//! in sync; an idle round between them is an exchange of a few range fingerprints. A round
//! finds the keys the peer lacks or holds at a lower sequence, and only those records travel.
//!
//! The item carries no content digest on purpose: two records with one key and one sequence
//! but different content are a fork, which the store refuses and replication cannot settle
//! (each replica keeps the one it accepted first). With a digest in the item, a forking owner
//! would make every pair of replicas re-send both versions every round, forever.
//!
//! The initiator keeps the state of a round ([`Session`]); the peer answers each message from
//! its set alone ([`answer`]), so it keeps nothing between messages but that set.
//!
//! Both sides read their records as the store keeps them ([`Compact`]): a round needs each
//! record's key and sequence only, and decoding every record a node shares with a peer (a
//! [`dkvs_record::Record`] takes about twice its encoded size) made each round's start and
//! each answer set cost a decoded copy of every record shared with the peer for a moment.

use std::collections::HashMap;

use dkvs_record::{Compact, Key};
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use sha2::{Digest as _, Sha256};

/// The largest reconciliation message either side writes: inside the record protocol's frame
/// bound ([`crate::codec::MAX_FRAME_LEN`]), with room for the envelope. Between two replicas
/// of 10,000 records with 1 % changed, one message of each side is about 30 KiB.
pub const FRAME_LIMIT: u64 = 60 * 1024;

/// Bytes of the key hash at the start of an item.
const KEY_HASH: usize = 16;

/// What a reconciliation message could not be.
#[derive(Debug, thiserror::Error)]
#[error("reconciliation message refused: {0}")]
pub struct ReconcileError(String);

impl From<negentropy::Error> for ReconcileError {
    fn from(e: negentropy::Error) -> ReconcileError {
        ReconcileError(e.to_string())
    }
}

fn key_hash(key: &str) -> [u8; KEY_HASH] {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = [0u8; KEY_HASH];
    out.copy_from_slice(&digest[..KEY_HASH]);
    out
}

/// The item that stands for `seq` of the key whose text is `key`.
pub fn item_id(key: &str, seq: u64) -> Id {
    let mut mix = Sha256::new();
    mix.update(key.as_bytes());
    mix.update(seq.to_be_bytes());
    let mix = mix.finalize();
    let mut bytes = [0u8; 32];
    bytes[..KEY_HASH].copy_from_slice(&key_hash(key));
    bytes[KEY_HASH..KEY_HASH + 8].copy_from_slice(&seq.to_be_bytes());
    bytes[KEY_HASH + 8..].copy_from_slice(&mix[..32 - KEY_HASH - 8]);
    Id::from_byte_array(bytes)
}

fn split(id: &Id) -> ([u8; KEY_HASH], u64) {
    let bytes = id.as_bytes();
    let mut hash = [0u8; KEY_HASH];
    hash.copy_from_slice(&bytes[..KEY_HASH]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[KEY_HASH..KEY_HASH + 8]);
    (hash, u64::from_be_bytes(seq))
}

/// The sealed set of items for `records`, as either side reconciles it.
pub fn set_of<'a>(records: impl IntoIterator<Item = &'a Compact>) -> NegentropyStorageVector {
    let records = records.into_iter();
    // Made to size: a vector grown by doubling keeps up to twice the room it needs, as long
    // as the set is kept (a responder keeps its answer set for the round).
    let mut set = NegentropyStorageVector::with_capacity(records.size_hint().0);
    for record in records {
        // Inserting into an unsealed set cannot fail.
        let _ = set.insert(0, item_id(record.key_str(), record.seq()));
    }
    let _ = set.seal();
    set
}

/// The peer's side: the answer to one message of an initiator, from this node's set for it.
pub fn answer(set: &NegentropyStorageVector, message: &[u8]) -> Result<Vec<u8>, ReconcileError> {
    let mut negentropy = Negentropy::borrowed(set, FRAME_LIMIT)?;
    Ok(negentropy.reconcile(message)?)
}

/// The initiator's side of one round with one peer.
pub struct Session {
    negentropy: Negentropy<'static, NegentropyStorageVector>,
    /// This side's set, sorted by key hash, as the store keeps it (a clone shares its
    /// allocation; a [`Key`] is made only for the records to send). A sorted vector made to
    /// size: a hash map of 10,000 took 16,384 slots, and twice that while it grew.
    keys: Vec<([u8; KEY_HASH], Compact)>,
    have: Vec<Id>,
    need: Vec<Id>,
    done: bool,
}

impl Session {
    /// Starts a round over `records` (this node's records that the peer should hold too);
    /// returns the session and the first message for the peer.
    pub fn start<'a>(
        records: impl IntoIterator<Item = &'a Compact>,
    ) -> Result<(Session, Vec<u8>), ReconcileError> {
        let records = records.into_iter();
        let mut keys = Vec::with_capacity(records.size_hint().0);
        let mut set = NegentropyStorageVector::with_capacity(records.size_hint().0);
        for record in records {
            let id = item_id(record.key_str(), record.seq());
            keys.push((split(&id).0, record.clone()));
            let _ = set.insert(0, id);
        }
        keys.sort_unstable_by_key(|(hash, _)| *hash);
        let _ = set.seal();
        let mut negentropy = Negentropy::owned(set, FRAME_LIMIT)?;
        let first = negentropy.initiate()?;
        let session = Session { negentropy, keys, have: Vec::new(), need: Vec::new(), done: false };
        Ok((session, first))
    }

    /// Feeds the peer's answer; returns the next message for it, or `None` when the round is
    /// complete (then [`Session::missing`] says what to send).
    pub fn step(&mut self, answer: &[u8]) -> Result<Option<Vec<u8>>, ReconcileError> {
        if self.done {
            return Err(ReconcileError("the round is already complete".into()));
        }
        let next = self.negentropy.reconcile_with_ids(answer, &mut self.have, &mut self.need)?;
        self.done = next.is_none();
        Ok(next)
    }

    /// Whether the round is complete.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The keys whose record this node should send: the peer lacks them, or holds them at a
    /// lower sequence. A key the peer holds at a higher sequence is not sent (the peer's own
    /// round brings the newer record here).
    pub fn missing(&self) -> Vec<Key> {
        let newer_there: HashMap<[u8; KEY_HASH], u64> = self.need.iter().map(split).collect();
        let mut keys: Vec<Key> = self
            .have
            .iter()
            .map(split)
            .filter(|(hash, seq)| newer_there.get(hash).is_none_or(|theirs| theirs < seq))
            .filter_map(|(hash, seq)| {
                let at = self.keys.binary_search_by(|(held, _)| held.cmp(&hash)).ok()?;
                Some(&self.keys[at].1).filter(|held| held.seq() == seq).map(Compact::key)
            })
            .collect();
        keys.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        keys.dedup();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dkvs_account::{KeyType, Keypair};
    use dkvs_record::Draft;

    fn records(owner: &Keypair, n: usize, seq: u64) -> Vec<Compact> {
        (0..n)
            .map(|i| {
                let key = Key::scoped(&owner.account_id(), &format!("k{i}")).expect("key");
                let record = Draft::new(key, vec![1; 10], seq, 60_000).sign(owner);
                Compact::from(&record.expect("valid"))
            })
            .collect()
    }

    /// Runs a whole round; returns what the initiator should send, messages and bytes.
    fn round(mine: &[Compact], theirs: &[Compact]) -> (Vec<Key>, usize, usize) {
        let set = set_of(theirs);
        let (mut session, mut message) = Session::start(mine).expect("starts");
        let (mut messages, mut bytes) = (0, 0);
        loop {
            let reply = answer(&set, &message).expect("answers");
            messages += 2;
            bytes += message.len() + reply.len();
            match session.step(&reply).expect("steps") {
                Some(next) => message = next,
                None => break,
            }
        }
        (session.missing(), messages, bytes)
    }

    #[test]
    fn in_sync_costs_a_few_fingerprints_and_differences_are_found_exactly() {
        let alice = Keypair::generate(KeyType::Ed25519);
        let all = records(&alice, 2_000, 2);
        let (missing, messages, bytes) = round(&all, &all);
        assert!(missing.is_empty());
        assert_eq!(messages, 2, "one round trip");
        assert!(bytes < 1_024, "in sync: {bytes} bytes");

        // The peer lacks 10 records and holds 10 others at an older sequence; it holds 5 at a
        // newer one, which are not sent back.
        let mut theirs = all.clone();
        theirs.drain(..10);
        let older = records(&alice, 30, 1);
        let newer = records(&alice, 40, 3);
        theirs[0..10].clone_from_slice(&older[10..20]);
        theirs[20..25].clone_from_slice(&newer[30..35]);
        let (missing, _, _) = round(&all, &theirs);
        let mut expected: Vec<Key> = all[..20].iter().map(Compact::key).collect();
        expected.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(missing, expected);
    }

    #[test]
    fn garbage_is_refused_with_an_error() {
        let set = set_of(&records(&Keypair::generate(KeyType::Ed25519), 3, 1));
        assert!(answer(&set, &[]).is_err());
        // Not a negentropy version.
        assert!(answer(&set, &[0x50]).is_err());
        // A fingerprint range whose fingerprint is cut short.
        assert!(answer(&set, &[0x61, 0x00, 0x00, 0x01, 0x01, 0x02]).is_err());
        let (mut session, _) = Session::start(&[]).expect("starts");
        assert!(session.step(&[0x00]).is_err());
    }
}
