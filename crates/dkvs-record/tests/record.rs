//! Record rules through the public API.

use dkvs_account::{KeyType, Keypair};
use dkvs_record::{
    CompareError, DecodeError, Draft, Key, Limits, MAX_ENCODED_LEN, MAX_VALUE_LEN, Record,
    RecordError, Transfer, ValidateError, newer, validate_batch,
};
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000_000;
const HOUR: u64 = 3_600_000;

fn draft(key: Key, value: &[u8], seq: u64) -> Draft {
    Draft {
        key,
        value: value.to_vec(),
        seq,
        issued_at_ms: NOW,
        expires_at_ms: NOW + HOUR,
        tombstone: false,
        transfer: None,
    }
}

fn scoped(owner: &Keypair, path: &str) -> Key {
    Key::scoped(&owner.account_id(), path).expect("valid key")
}

fn both_types() -> [Keypair; 2] {
    [Keypair::generate(KeyType::Ed25519), Keypair::generate(KeyType::Secp256k1)]
}

#[test]
fn value_bound_is_exact() {
    for owner in both_types() {
        let ok = draft(scoped(&owner, "v"), &[7; MAX_VALUE_LEN], 1).sign(&owner).expect("10240");
        let bytes = ok.encode();
        assert!(bytes.len() <= MAX_ENCODED_LEN);
        assert_eq!(Record::decode_validated(&bytes, NOW, &Limits::default()), Ok(ok));
        let err = draft(scoped(&owner, "v"), &[7; MAX_VALUE_LEN + 1], 1).sign(&owner);
        assert_eq!(err, Err(ValidateError::ValueTooLarge { len: 10_241 }));
        assert_eq!(err.expect_err("too large").to_string(), "value is 10241 bytes, limit is 10240");
    }
}

#[test]
fn oversized_value_is_refused_before_signature_work() {
    // A record whose signature is garbage but whose value is too large must say "too large".
    let owner = Keypair::generate(KeyType::Ed25519);
    let good = draft(Key::new("/shared").expect("valid"), b"x", 1).sign(&owner).expect("signs");
    let mut bytes = good.encode();
    // Append a second value field (protobuf: last one wins) of 10,241 bytes.
    bytes.push(0x12);
    bytes.extend_from_slice(&[0x81, 0x50]); // varint 10241
    bytes.extend_from_slice(&[0u8; 10_241]);
    assert_eq!(Record::decode(&bytes), Err(DecodeError::ValueTooLarge { len: 10_241 }));
}

#[test]
fn encoded_bound_is_checked_before_decoding() {
    let bytes = vec![0xffu8; MAX_ENCODED_LEN + 1];
    assert_eq!(Record::decode(&bytes), Err(DecodeError::TooLarge { len: MAX_ENCODED_LEN + 1 }));
}

#[test]
fn each_rule_has_its_error() {
    let limits = Limits::default();
    let alice = Keypair::generate(KeyType::Ed25519);
    let bob = Keypair::generate(KeyType::Secp256k1);

    // Wrong owner for an account-scoped key, as signed by Bob through the wire.
    let alices = scoped(&alice, "x");
    assert!(matches!(
        draft(alices.clone(), b"v", 1).sign(&bob),
        Err(ValidateError::WrongOwner { .. })
    ));

    let good = draft(Key::new("/name").expect("valid"), b"v", 1).sign(&alice).expect("signs");
    assert_eq!(good.validate(NOW, &limits), Ok(()));
    assert_eq!(
        good.validate(NOW + HOUR, &limits),
        Err(ValidateError::Expired { expires_at_ms: NOW + HOUR, now_ms: NOW + HOUR })
    );
    let skew = limits.max_clock_skew_ms;
    assert!(matches!(
        good.validate(NOW - skew - 1, &limits),
        Err(ValidateError::IssuedInFuture { .. })
    ));
    assert_eq!(good.validate(NOW - skew, &limits), Ok(()));

    let mut backwards = draft(Key::new("/name").expect("valid"), b"v", 1);
    backwards.expires_at_ms = NOW;
    assert!(matches!(backwards.sign(&alice), Err(ValidateError::ExpiresBeforeIssued { .. })));

    let mut tomb = draft(Key::new("/name").expect("valid"), b"v", 2);
    tomb.tombstone = true;
    assert_eq!(tomb.sign(&alice), Err(ValidateError::TombstoneWithValue { len: 1 }));

    let mut on_scoped = draft(alices.clone(), b"v", 2);
    on_scoped.transfer = Some(Transfer::sign(&bob, &alices, alice.public(), 2));
    assert!(matches!(on_scoped.sign(&alice), Err(ValidateError::TransferOnAccountKey(_))));

    // A bad signature: a record re-encoded with another record's signature.
    let other = draft(Key::new("/name").expect("valid"), b"w", 1).sign(&alice).expect("signs");
    let mut forged = good.encode();
    let sig = other.signature().as_bytes();
    let at = forged.len() - 64;
    forged[at..].copy_from_slice(sig);
    assert!(matches!(
        Record::decode_validated(&forged, NOW, &limits),
        Err(RecordError::Validate(ValidateError::BadSignature(_)))
    ));
}

#[test]
fn unknown_key_type_and_bad_key_are_named() {
    let alice = Keypair::generate(KeyType::Ed25519);
    let good = draft(Key::new("/name").expect("valid"), b"v", 1).sign(&alice).expect("signs");
    let bytes = good.encode();
    // The owner field is `1a 24 08 01 12 20 <32 bytes>`: change the type code from 1 to 9.
    let at = bytes.windows(3).position(|w| w == [0x1a, 0x24, 0x08]).expect("owner field") + 3;
    let mut unknown = bytes.clone();
    unknown[at] = 9;
    assert_eq!(
        Record::decode(&unknown),
        Err(DecodeError::PublicKey(dkvs_account::KeyError::UnknownKeyType(9)))
    );
    let mut bad_key = bytes;
    bad_key[2] = b'x'; // "/name" -> "xname"
    assert!(matches!(Record::decode(&bad_key), Err(DecodeError::Key(_))));
}

#[test]
fn ordering_by_sequence_and_forks() {
    let alice = Keypair::generate(KeyType::Ed25519);
    let key = scoped(&alice, "k");
    let one = draft(key.clone(), b"1", 1).sign(&alice).expect("signs");
    let two = draft(key.clone(), b"2", 2).sign(&alice).expect("signs");
    let fork = draft(key.clone(), b"other", 2).sign(&alice).expect("signs");
    assert_eq!(one.compare(&two), Ok(std::cmp::Ordering::Greater));
    assert_eq!(two.compare(&one), Ok(std::cmp::Ordering::Less));
    assert_eq!(two.compare(&two.clone()), Ok(std::cmp::Ordering::Equal));
    assert_eq!(newer(&one, &two), Ok(&two));
    assert_eq!(newer(&two, &one), Ok(&two));
    assert!(matches!(two.compare(&fork), Err(CompareError::Fork { seq: 2, .. })));
    let elsewhere = draft(scoped(&alice, "j"), b"1", 1).sign(&alice).expect("signs");
    assert!(matches!(one.compare(&elsewhere), Err(CompareError::DifferentKeys { .. })));
}

#[test]
fn transfer_is_bound_to_one_record() {
    let limits = Limits::default();
    let alice = Keypair::generate(KeyType::Ed25519);
    let bob = Keypair::generate(KeyType::Secp256k1);
    let name = Key::new("/names/shop").expect("valid");
    let mut handover = draft(name.clone(), b"bob's now", 5);
    handover.transfer = Some(Transfer::sign(&alice, &name, bob.public(), 5));
    let record = handover.clone().sign(&bob).expect("signs");
    assert_eq!(record.validate(NOW, &limits), Ok(()));
    assert_eq!(record.transfer().map(|t| t.from()), Some(alice.public()));
    let decoded = Record::decode_validated(&record.encode(), NOW, &limits).expect("valid");
    assert_eq!(decoded, record);

    // The same consent replayed at another sequence does not verify.
    let mut replay = handover.clone();
    replay.seq = 6;
    let replayed = replay.sign(&bob).expect("structure is fine");
    assert!(matches!(replayed.validate(NOW, &limits), Err(ValidateError::BadTransfer(_))));

    // Nor for another receiver.
    let carol = Keypair::generate(KeyType::Ed25519);
    let stolen = handover.sign(&carol).expect("structure is fine");
    assert!(matches!(stolen.validate(NOW, &limits), Err(ValidateError::BadTransfer(_))));
}

#[test]
fn batch_gives_the_same_verdicts_as_single_validation() {
    let limits = Limits::default();
    let [alice, bob] = both_types();
    let mut records: Vec<Record> = (0..20)
        .map(|i| {
            let owner = if i % 3 == 0 { &bob } else { &alice };
            draft(scoped(owner, &format!("k{i}")), &[i as u8; 100], 1).sign(owner).expect("signs")
        })
        .collect();
    assert!(validate_batch(&records, NOW, &limits).iter().all(Result::is_ok));
    // Forge two: swap values after signing, through the wire.
    for i in [4, 7] {
        let mut bytes = records[i].encode();
        let pos = bytes.iter().position(|&b| b == i as u8).expect("value byte");
        bytes[pos] ^= 1;
        records[i] = Record::decode(&bytes).expect("still well-formed");
    }
    let verdicts = validate_batch(&records, NOW, &limits);
    for (i, (verdict, record)) in verdicts.iter().zip(&records).enumerate() {
        assert_eq!(verdict, &record.validate(NOW, &limits), "record {i}");
        assert_eq!(verdict.is_err(), i == 4 || i == 7, "record {i}");
    }
}

fn arb_draft() -> impl Strategy<Value = (Draft, bool)> {
    (
        "[a-z0-9]{1,20}(/[a-z0-9._-]{1,20}){0,3}",
        proptest::collection::vec(any::<u8>(), 0..2048),
        any::<u64>(),
        0u64..HOUR,
        1u64..HOUR,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(path, value, seq, ago, ttl, tombstone, scoped_key, ed)| {
            let key = if scoped_key {
                // Filled in with the owner's id by the caller.
                Key::new(format!("/{path}")).expect("valid")
            } else {
                Key::new(format!("/shared/{path}")).expect("valid")
            };
            let value = if tombstone { Vec::new() } else { value };
            let draft = Draft {
                key,
                value,
                seq,
                issued_at_ms: NOW - ago,
                expires_at_ms: NOW + ttl,
                tombstone,
                transfer: None,
            };
            (draft, ed)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sign_encode_decode_validate_round_trip((mut d, ed) in arb_draft(), scope in any::<bool>()) {
        let owner = Keypair::generate(if ed { KeyType::Ed25519 } else { KeyType::Secp256k1 });
        if scope {
            d.key = Key::scoped(&owner.account_id(), &d.key.as_str()[1..]).expect("valid");
        }
        let record = d.sign(&owner).expect("valid draft");
        let bytes = record.encode();
        let back = Record::decode_validated(&bytes, NOW, &Limits::default()).expect("valid");
        prop_assert_eq!(&back, &record);
        prop_assert_eq!(back.encode(), bytes);
    }

    #[test]
    fn any_single_flipped_byte_is_refused(
        (d, ed) in arb_draft(),
        position in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let owner = Keypair::generate(if ed { KeyType::Ed25519 } else { KeyType::Secp256k1 });
        let record = d.sign(&owner).expect("valid draft");
        let mut bytes = record.encode();
        let at = position.index(bytes.len());
        bytes[at] ^= 1 << bit;
        // Either the bytes no longer decode, or what they decode to fails validation.
        prop_assert!(Record::decode_validated(&bytes, NOW, &Limits::default()).is_err());
    }
}

#[test]
fn sharing_the_owner_key_changes_nothing_a_reader_sees() {
    for owner in both_types() {
        let record = draft(scoped(&owner, "doc"), b"v", 1).sign(&owner).expect("signs");
        // The owner's key as a store keeps it: parsed once, from its bytes.
        let shared = Record::decode(&record.encode()).expect("decodes").owner().clone();
        let mut kept = record.clone();
        kept.share_owner(&shared);
        assert_eq!(kept, record);
        assert_eq!(kept.encode(), record.encode());
        assert_eq!(kept.key().scope(), record.key().scope());
        assert_eq!(kept.validate(NOW, &Limits::default()), Ok(()), "still valid");
        // Another account's key is not taken.
        let other = Keypair::generate(owner.key_type()).public().clone();
        let mut unchanged = record.clone();
        unchanged.share_owner(&other);
        assert_eq!(unchanged.owner(), record.owner());
        assert_eq!(unchanged.key().scope(), record.key().scope());
    }
}
