//! Store rules through the public API.

use std::sync::Arc;

use dkvs_account::{KeyType, Keypair};
use dkvs_record::{Draft, Key, Record, Transfer, ValidateError};
use dkvs_store::{
    Config, ManualClock, OWNER_OVERHEAD, PutError, PutOutcome, Store, StoreError, gone_weight,
    record_weight,
};

const NOW: u64 = 1_800_000_000_000;
const HOUR: u64 = 3_600_000;
/// The default clock-skew bound ([`dkvs_record::Limits`]).
const SKEW: u64 = 5 * 60 * 1000;

fn record(owner: &Keypair, key: &Key, value: &[u8], seq: u64, issued: u64, ttl: u64) -> Record {
    Draft {
        key: key.clone(),
        value: value.to_vec(),
        seq,
        issued_at_ms: issued,
        expires_at_ms: issued + ttl,
        tombstone: false,
        transfer: None,
    }
    .sign(owner)
    .expect("valid draft")
}

fn setup(config: Config) -> (Store, ManualClock) {
    let clock = ManualClock::new(NOW);
    (Store::in_memory_with_clock(config, Arc::new(clock.clone())), clock)
}

fn value_of(store: &Store, key: &Key) -> Option<Vec<u8>> {
    store.get(key.as_str()).map(|r| r.value().to_vec())
}

#[test]
fn newest_wins_and_nothing_rolls_back() {
    let (store, _) = setup(Config::default());
    let alice = Keypair::generate(KeyType::Ed25519);
    let key = Key::scoped(&alice.account_id(), "k").expect("valid");
    let v1 = record(&alice, &key, b"one", 1, NOW, HOUR);
    let v2 = record(&alice, &key, b"two", 2, NOW, HOUR);
    assert_eq!(store.put(v1.clone()).expect("put"), PutOutcome::Stored { replaced: None });
    assert_eq!(store.put(v1.clone()).expect("put"), PutOutcome::Unchanged);
    assert_eq!(store.put(v2.clone()).expect("put"), PutOutcome::Stored { replaced: Some(1) });
    match store.put(v1).expect("put") {
        PutOutcome::Stale { current_seq: 2, current: Some(current) } => assert_eq!(*current, v2),
        other => panic!("expected stale, got {other:?}"),
    }
    let fork = record(&alice, &key, b"two'", 2, NOW, HOUR);
    assert!(matches!(store.put(fork), Err(PutError::Fork { seq: 2, .. })));
    assert_eq!(value_of(&store, &key), Some(b"two".to_vec()));
}

#[test]
fn invalid_records_change_nothing() {
    let (store, _) = setup(Config::default());
    let alice = Keypair::generate(KeyType::Ed25519);
    let key = Key::new("/shared/x").expect("valid");
    let expired = record(&alice, &key, b"v", 1, NOW - 2 * HOUR, HOUR);
    assert!(matches!(store.put(expired), Err(PutError::Invalid(ValidateError::Expired { .. }))));
    let future = record(&alice, &key, b"v", 1, NOW + HOUR, HOUR);
    assert!(matches!(
        store.put(future),
        Err(PutError::Invalid(ValidateError::IssuedInFuture { .. }))
    ));
    // Forged: Alice's record with its value changed after signing.
    let good = record(&alice, &key, b"value", 1, NOW, HOUR);
    let bytes = good.encode();
    let at = bytes.windows(5).position(|w| w == b"value").expect("value in encoding");
    let mut forged = bytes.clone();
    forged[at] = b'V';
    let forged = Record::decode(&forged).expect("well-formed");
    assert!(matches!(store.put(forged), Err(PutError::Invalid(ValidateError::BadSignature(_)))));
    assert_eq!(store.get(key.as_str()), None);
    assert_eq!(store.highest_seq(key.as_str()), None);
    assert_eq!(store.stats().bytes, 0);
}

#[test]
fn node_caps_ttl_from_issue_time() {
    let config = Config::default().with_max_ttl_ms(HOUR);
    let (store, clock) = setup(config);
    let alice = Keypair::generate(KeyType::Secp256k1);
    let key = Key::new("/long/lived").expect("valid");
    store.put(record(&alice, &key, b"v", 1, NOW, 30 * 24 * HOUR)).expect("stored");
    clock.advance(HOUR - 1);
    assert!(store.get(key.as_str()).is_some());
    clock.advance(1);
    assert_eq!(store.get(key.as_str()), None, "capped at the node's max TTL");
    // Issued long ago with a long expiry: already past the cap on arrival.
    let old = record(&alice, &key, b"v", 5, NOW - 10, 30 * 24 * HOUR);
    assert!(matches!(store.put(old), Err(PutError::TooOld { .. })));
}

#[test]
fn expired_values_keep_their_sequence() {
    let config = Config::default().with_max_ttl_ms(10 * HOUR);
    let (store, clock) = setup(config);
    let alice = Keypair::generate(KeyType::Ed25519);
    let key = Key::scoped(&alice.account_id(), "k").expect("valid");
    // Sequence 1 lives long, sequence 2 short.
    let v1 = record(&alice, &key, b"one", 1, NOW, 9 * HOUR);
    let v2 = record(&alice, &key, b"two", 2, NOW, HOUR);
    store.put(v1.clone()).expect("put");
    store.put(v2).expect("put");
    clock.advance(HOUR);
    assert_eq!(store.remove_expired(), 1);
    assert_eq!(store.get(key.as_str()), None);
    assert_eq!(store.stats().records, 0);
    assert_eq!(store.stats().remembered, 1);
    // The remembered sequence, and the owner's parsed key that it keeps.
    assert_eq!(store.stats().bytes, gone_weight(&key) + OWNER_OVERHEAD);
    // The older, still unexpired record cannot come back.
    assert!(matches!(
        store.put(v1).expect("put"),
        PutOutcome::Stale { current_seq: 2, current: None }
    ));
    // Once every record issued up to sequence 2 is past the max TTL (give or take the
    // clock-skew bound), the sequence is forgotten.
    clock.advance(9 * HOUR);
    store.remove_expired();
    assert_eq!(store.highest_seq(key.as_str()), Some(2), "kept through the skew bound");
    clock.advance(SKEW);
    store.remove_expired();
    assert_eq!(store.highest_seq(key.as_str()), None);
    assert_eq!(store.stats().bytes, 0);
}

#[test]
fn shared_names_need_a_transfer() {
    let (store, clock) = setup(Config::default());
    let alice = Keypair::generate(KeyType::Ed25519);
    let bob = Keypair::generate(KeyType::Secp256k1);
    let name = Key::new("/names/shop").expect("valid");
    store.put(record(&alice, &name, b"alice's", 1, NOW, HOUR)).expect("claims");
    let squat = record(&bob, &name, b"bob's", 2, NOW, HOUR);
    assert!(matches!(store.put(squat), Err(PutError::ForeignOwner { .. })));
    // At the holder's own sequence too: no fork (Alice signed one record), Bob's refused.
    let squat = record(&bob, &name, b"bob's", 1, NOW, HOUR);
    let holder = alice.account_id().to_string();
    assert!(
        matches!(store.put(squat), Err(PutError::ForeignOwner { holder: h, .. }) if h == holder)
    );
    // Alice's own second record at that sequence is a fork.
    let fork = record(&alice, &name, b"alice's other", 1, NOW, HOUR);
    assert!(matches!(store.put(fork), Err(PutError::Fork { seq: 1, .. })));

    let mut handover = Draft::new(name.clone(), b"bob's".to_vec(), 2, HOUR);
    handover.issued_at_ms = NOW;
    handover.expires_at_ms = NOW + HOUR;
    handover.transfer = Some(Transfer::sign(&alice, &name, bob.public(), 2));
    let handover = handover.sign(&bob).expect("valid");
    assert_eq!(store.put(handover.clone()).expect("put"), PutOutcome::Stored { replaced: Some(1) });
    assert_eq!(store.get(name.as_str()).expect("held").owner(), bob.public());
    // Replaying the handover changes nothing; Alice can no longer write.
    assert_eq!(store.put(handover).expect("put"), PutOutcome::Unchanged);
    let back = record(&alice, &name, b"mine again", 3, NOW, HOUR);
    assert!(matches!(store.put(back), Err(PutError::ForeignOwner { .. })));
    // When Bob's record expires, the name is free for anyone with a higher sequence.
    clock.advance(HOUR);
    let reclaimed = record(&alice, &name, b"free", 3, NOW + HOUR, HOUR);
    assert!(matches!(store.put(reclaimed).expect("put"), PutOutcome::Stored { .. }));
    assert_eq!(store.owner_bytes(bob.public()), 0);
}

#[test]
fn compare_and_swap() {
    let (store, _) = setup(Config::default());
    let alice = Keypair::generate(KeyType::Ed25519);
    let key = Key::scoped(&alice.account_id(), "counter").expect("valid");
    let v1 = record(&alice, &key, b"1", 1, NOW, HOUR);
    assert_eq!(
        store.put_cas(v1.clone(), None).expect("cas"),
        PutOutcome::Stored { replaced: None }
    );
    let v2 = record(&alice, &key, b"2", 2, NOW, HOUR);
    match store.put_cas(v2.clone(), None).expect("cas") {
        PutOutcome::Conflict { current: Some(current) } => assert_eq!(*current, v1),
        other => panic!("expected conflict, got {other:?}"),
    }
    assert!(matches!(store.put_cas(v2.clone(), Some(7)), Ok(PutOutcome::Conflict { .. })));
    assert_eq!(store.put_cas(v2, Some(1)).expect("cas"), PutOutcome::Stored { replaced: Some(1) });
    assert_eq!(value_of(&store, &key), Some(b"2".to_vec()));
}

#[test]
fn budgets_refuse_instead_of_evicting() {
    let alice = Keypair::generate(KeyType::Ed25519);
    let bob = Keypair::generate(KeyType::Ed25519);
    let key =
        |owner: &Keypair, i: u32| Key::scoped(&owner.account_id(), &format!("k{i}")).expect("k");
    let one = record_weight(&record(&alice, &key(&alice, 0), &[0; 1000], 1, NOW, HOUR));
    // Room for three records and the parsed keys of their two owners.
    let config = Config::default()
        .with_max_bytes_per_owner(2 * one)
        .with_max_bytes(3 * one + 2 * OWNER_OVERHEAD)
        .with_reserved_for_own_bytes(0);
    let (store, _) = setup(config);
    for i in 0..2 {
        store.put(record(&alice, &key(&alice, i), &[0; 1000], 1, NOW, HOUR)).expect("fits");
    }
    let third = record(&alice, &key(&alice, 2), &[0; 1000], 1, NOW, HOUR);
    assert!(matches!(store.put(third), Err(PutError::OwnerQuota { .. })));
    // Replacing a record with one of the same size fits in the quota.
    let replace = record(&alice, &key(&alice, 1), &[1; 1000], 2, NOW, HOUR);
    assert!(matches!(store.put(replace), Ok(PutOutcome::Stored { .. })));
    store.put(record(&bob, &key(&bob, 0), &[0; 1000], 1, NOW, HOUR)).expect("fits");
    let over = record(&bob, &key(&bob, 1), &[0; 1000], 1, NOW, HOUR);
    assert!(matches!(store.put(over), Err(PutError::Full { .. })));
    assert_eq!(store.stats().records, 3);
    assert_eq!(store.stats().bytes, 3 * one + 2 * OWNER_OVERHEAD);
    assert!(store.get(key(&alice, 0).as_str()).is_some(), "nothing was evicted");
}

#[test]
fn peers_cannot_fill_the_share_kept_for_the_user() {
    let (mallory, alice) =
        (Keypair::generate(KeyType::Ed25519), Keypair::generate(KeyType::Ed25519));
    let key =
        |owner: &Keypair, i: u32| Key::scoped(&owner.account_id(), &format!("k{i}")).expect("k");
    let one = record_weight(&record(&mallory, &key(&mallory, 0), &[0; 1000], 1, NOW, HOUR));
    let owners = 2 * OWNER_OVERHEAD;
    let config =
        Config::default().with_max_bytes(4 * one + owners).with_reserved_for_own_bytes(one);
    let (store, _) = setup(config);
    for i in 0..3 {
        store.put(record(&mallory, &key(&mallory, i), &[0; 1000], 1, NOW, HOUR)).expect("fits");
    }
    // Records from peers stop short of the user's share...
    let more = record(&mallory, &key(&mallory, 3), &[0; 1000], 1, NOW, HOUR);
    assert!(
        matches!(store.put(more.clone()), Err(PutError::Full { limit, .. }) if limit == 3 * one + owners)
    );
    // ...which the user's own write may use, and nothing beyond it.
    store.put_own(record(&alice, &key(&alice, 0), &[0; 1000], 1, NOW, HOUR)).expect("fits");
    let over = record(&alice, &key(&alice, 1), &[0; 1000], 1, NOW, HOUR);
    let full = |r| matches!(r, Err(PutError::Full { limit, .. }) if limit == 4 * one + owners);
    assert!(full(store.put_own(over)));
    assert!(matches!(store.put(more), Err(PutError::Full { .. })));
    assert_eq!(store.stats().bytes, 4 * one + owners);
}

#[test]
fn bulk_insert_gives_per_record_verdicts() {
    let (store, _) = setup(Config::default());
    let alice = Keypair::generate(KeyType::Ed25519);
    let bob = Keypair::generate(KeyType::Secp256k1);
    let mut records: Vec<Record> = (0..50)
        .map(|i| {
            let owner = if i % 5 == 0 { &bob } else { &alice };
            let key = Key::scoped(&owner.account_id(), &format!("k{i}")).expect("k");
            record(owner, &key, &[i as u8; 10], 1, NOW, HOUR)
        })
        .collect();
    let foreign = Key::scoped(&bob.account_id(), "not-alice's").expect("k");
    let mut bad = record(&bob, &foreign, b"x", 1, NOW, HOUR).encode();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    records[10] = Record::decode(&bad).expect("well-formed");
    records.push(records[3].clone());
    let verdicts = store.put_many(records);
    assert_eq!(verdicts.len(), 51);
    for (i, verdict) in verdicts.iter().enumerate() {
        match i {
            10 => {
                assert!(matches!(verdict, Err(PutError::Invalid(ValidateError::BadSignature(_)))))
            }
            50 => assert!(matches!(verdict, Ok(PutOutcome::Unchanged))),
            _ => assert!(matches!(verdict, Ok(PutOutcome::Stored { .. })), "{i}: {verdict:?}"),
        }
    }
    assert_eq!(store.stats().records, 49);
    assert_eq!(store.records().count(), 49);
}

#[test]
fn persistent_store_restores_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(NOW);
    let alice = Keypair::generate(KeyType::Ed25519);
    let keys: Vec<Key> =
        (0..100).map(|i| Key::scoped(&alice.account_id(), &format!("k{i}")).expect("k")).collect();
    let config = Config::default().with_compact_after_bytes(20_000).with_max_ttl_ms(2 * HOUR);
    {
        let store = Store::open_with_clock(dir.path(), config.clone(), Arc::new(clock.clone()))
            .expect("opens");
        for (i, key) in keys.iter().enumerate() {
            let ttl = if i < 10 { HOUR / 2 } else { HOUR };
            store.put(record(&alice, key, &[i as u8; 300], 1, NOW, ttl)).expect("put");
            store.put(record(&alice, key, &[i as u8; 200], 2, NOW, ttl)).expect("put");
        }
        // A second open of the same directory is refused while this one lives.
        assert!(matches!(Store::open(dir.path(), config.clone()), Err(StoreError::Io { .. })));
    }
    clock.advance(HOUR / 2);
    let store =
        Store::open_with_clock(dir.path(), config.clone(), Arc::new(clock.clone())).expect("opens");
    for (i, key) in keys.iter().enumerate() {
        let held = store.get(key.as_str());
        if i < 10 {
            assert_eq!(held, None, "{key} expired while the store was closed");
            assert_eq!(store.highest_seq(key.as_str()), Some(2), "but its sequence is kept");
        } else {
            let held = held.expect("restored");
            assert_eq!((held.seq(), held.value()), (2, &[i as u8; 200][..]));
        }
    }
    let stale = record(&alice, &keys[0], b"old", 1, NOW, HOUR);
    assert!(matches!(store.put(stale), Ok(PutOutcome::Stale { current_seq: 2, .. })));
    // Compaction kept the directory small: one snapshot and one log.
    let files = std::fs::read_dir(dir.path()).expect("dir").count();
    assert_eq!(files, 3, "snapshot, log and LOCK");
}

/// The first file in `dir` whose name starts with `prefix` and has no extension (not a
/// `.damaged` copy or a `.tmp` file).
fn file_named(dir: &std::path::Path, prefix: &str) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_none())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
        .unwrap_or_else(|| panic!("no {prefix}* file in {}", dir.display()))
}

#[test]
fn torn_log_tail_is_dropped_but_damage_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = Keypair::generate(KeyType::Ed25519);
    let key = |i: u32| Key::scoped(&alice.account_id(), &format!("k{i}")).expect("k");
    let now = dkvs_record::unix_millis();
    // The log as a kill leaves it (a store that closes adds a last mark).
    let (log, bytes) = {
        let store = Store::open(dir.path(), Config::default()).expect("opens");
        for i in 0..3 {
            store.put(record(&alice, &key(i), b"v", 1, now, HOUR)).expect("put");
        }
        let log = file_named(dir.path(), "log-");
        let bytes = std::fs::read(&log).expect("log");
        (log, bytes)
    };
    // Tear the last frame in half, as a crash mid-write would.
    std::fs::write(&log, &bytes[..bytes.len() - 20]).expect("write");
    {
        let store = Store::open(dir.path(), Config::default()).expect("torn tail is fine");
        assert!(store.get(key(0).as_str()).is_some());
        assert!(store.get(key(1).as_str()).is_some());
        assert!(store.get(key(2).as_str()).is_none(), "the torn put never returned");
    }
    // Damage in a snapshot is an error, not silent loss.
    let snapshot = file_named(dir.path(), "snapshot-");
    let mut bytes = std::fs::read(&snapshot).expect("snapshot");
    bytes[20] ^= 0xff;
    std::fs::write(&snapshot, &bytes).expect("write");
    assert!(matches!(Store::open(dir.path(), Config::default()), Err(StoreError::Corrupt { .. })));
}

#[test]
fn a_torn_frame_whose_value_holds_frames_is_still_torn() {
    // A writer's value may hold whole frames of the log's own format (here 9-byte frames:
    // length 1, its checksum, one byte). When the node is killed while it writes that
    // record, the torn frame's bytes must not read as data after damage: the store would
    // refuse to start, and anyone could make a node's next crash fatal.
    let alice = Keypair::generate(KeyType::Ed25519);
    let key = |i: u32| Key::scoped(&alice.account_id(), &format!("k{i}")).expect("k");
    let now = dkvs_record::unix_millis();
    let fake: Vec<u8> =
        [&1u32.to_le_bytes()[..], &crc32fast::hash(b"!").to_le_bytes(), b"!"].concat().repeat(1000);
    // Killed mid-write at a page boundary inside the value, and one byte past it (each in a
    // store of its own: an open writes a snapshot and removes the logs before it).
    for cut in [4096, 4097] {
        let dir = tempfile::tempdir().expect("tempdir");
        let before = {
            let store = Store::open(dir.path(), Config::default()).expect("opens");
            store.put(record(&alice, &key(0), b"v", 1, now, HOUR)).expect("put");
            let before = std::fs::metadata(file_named(dir.path(), "log-")).expect("log").len();
            store.put(record(&alice, &key(1), &fake, 1, now, HOUR)).expect("put");
            before
        };
        let log = file_named(dir.path(), "log-");
        let bytes = std::fs::read(&log).expect("log");
        std::fs::write(&log, &bytes[..before as usize + cut]).expect("write");
        let store = Store::open(dir.path(), Config::default()).expect("a torn frame is torn");
        assert!(store.get(key(0).as_str()).is_some());
        assert!(store.get(key(1).as_str()).is_none(), "the torn put never returned");
    }
}

#[test]
fn a_log_tail_of_zeros_is_a_torn_tail_and_so_is_damage_no_flush_covered() {
    // After a power cut in write-through mode, ext4 and XFS can leave the log longer than what
    // reached the disk, the rest reading as zeros, and pages reach the disk in any order. The
    // node must still start.
    let alice = Keypair::generate(KeyType::Ed25519);
    let key = |i: u32| Key::scoped(&alice.account_id(), &format!("k{i}")).expect("k");
    let now = dkvs_record::unix_millis();
    // A store with three puts in its log, its log file, the log's bytes and where each put's
    // bytes begin.
    let fresh = || {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut starts = Vec::new();
        // The log as the power cut leaves it: a store that closes flushes, and adds a mark.
        let (log, bytes) = {
            let store = Store::open(dir.path(), Config::default()).expect("opens");
            // No lazy flush meanwhile, however slow the machine.
            let _held = store.hold_syncs();
            let log = file_named(dir.path(), "log-");
            for i in 0..3 {
                starts.push(std::fs::metadata(&log).expect("log").len() as usize);
                store.put(record(&alice, &key(i), b"v", 1, now, HOUR)).expect("put");
            }
            let bytes = std::fs::read(&log).expect("log");
            (log, bytes)
        };
        (dir, log, bytes, starts)
    };
    let held = |dir: &tempfile::TempDir| -> Result<Vec<bool>, StoreError> {
        let store = Store::open(dir.path(), Config::default())?;
        Ok((0..3).map(|i| store.get(key(i).as_str()).is_some()).collect())
    };
    let copies = |dir: &tempfile::TempDir| {
        std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".damaged"))
            .count()
    };

    // 1. Zeros after the last whole frame (a zero length where a frame would start).
    let (dir, log, mut bytes, _) = fresh();
    bytes.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&log, &bytes).expect("write");
    assert_eq!(held(&dir).expect("a zero tail is torn"), [true, true, true]);
    assert_eq!(copies(&dir), 0, "nothing but zeros was dropped");

    // 2. The last frame's body zeroed, and zeros after it.
    let (dir, log, mut bytes, starts) = fresh();
    bytes[starts[2] + 8..].fill(0);
    bytes.extend_from_slice(&[0u8; 100]);
    std::fs::write(&log, &bytes).expect("write");
    assert_eq!(held(&dir).expect("a zeroed last frame is torn"), [true, true, false]);
    assert_eq!(copies(&dir), 0);

    // 3. The second put's page never reached the disk and the third's did: no flush covered
    // either (write-through waits for none), so this is a power cut's tear. The store starts
    // with what came before, and keeps the log as it was beside its files.
    let (dir, log, mut bytes, starts) = fresh();
    bytes[starts[1]..starts[2]].fill(0);
    std::fs::write(&log, &bytes).expect("write");
    assert_eq!(held(&dir).expect("damage no flush covered is torn"), [true, false, false]);
    let copy = log.with_extension("damaged");
    assert_eq!(std::fs::read(&copy).expect("a copy is kept"), bytes);
    // The copy outlives the generations that follow.
    drop(Store::open(dir.path(), Config::default()).expect("opens again"));
    assert!(copy.exists() && !log.exists());
}

/// Opens `dir` after flipping a byte of the newest log's first put (the log's bytes as
/// `bytes`, the put's bytes beginning at `start`).
fn reopened_with_first_put_damaged(
    dir: &std::path::Path,
    mut bytes: Vec<u8>,
    start: usize,
    config: Config,
) -> Result<Store, StoreError> {
    bytes[start + 20] ^= 0xff;
    std::fs::write(file_named(dir, "log-"), &bytes).expect("write");
    Store::open_with_clock(dir, config, Arc::new(ManualClock::new(NOW)))
}

#[test]
fn without_fsync_a_lazy_flush_an_asked_flush_and_a_close_each_say_how_far_was_flushed() {
    // Damage to a put that a flush covered is corruption, also in write-through mode: the
    // store's thread flushes lazily (every 5 s while puts come), and its marks say so.
    let alice = Keypair::generate(KeyType::Ed25519);
    let key = |i: u32| Key::scoped(&alice.account_id(), &format!("k{i}")).expect("k");
    let config = Config::default();
    for how in ["lazily", "asked", "closed"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Store::open_with_clock(dir.path(), config.clone(), Arc::new(ManualClock::new(NOW)))
                .expect("opens");
        let log = file_named(dir.path(), "log-");
        let start = std::fs::metadata(&log).expect("log").len() as usize;
        store.put(record(&alice, &key(0), b"v", 1, NOW, HOUR)).expect("put");
        let bytes = match how {
            "lazily" => {
                wait_until("a lazy flush", || store.stats().syncs >= 1);
                store.put(record(&alice, &key(1), b"v", 1, NOW, HOUR)).expect("put");
                // The log as a power cut would leave it (closing adds a mark).
                let bytes = std::fs::read(&log).expect("log");
                drop(store);
                bytes
            }
            "asked" => {
                store.flush().expect("flushes");
                store.put(record(&alice, &key(1), b"v", 1, NOW, HOUR)).expect("put");
                let bytes = std::fs::read(&log).expect("log");
                drop(store);
                bytes
            }
            _ => {
                drop(store);
                std::fs::read(&log).expect("log")
            }
        };
        let reopened = reopened_with_first_put_damaged(dir.path(), bytes, start, config.clone());
        let Err(StoreError::Corrupt { reason, .. }) = reopened else {
            panic!("{how}: damage to a flushed put must not be dropped");
        };
        assert!(reason.contains("a flush had covered"), "{how}: {reason}");
    }
}

#[test]
fn with_fsync_a_log_after_a_compaction_says_how_far_it_was_flushed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = Keypair::generate(KeyType::Ed25519);
    let key = |i: u32| Key::scoped(&alice.account_id(), &format!("k{i}")).expect("k");
    let config = Config::default().with_compact_after_bytes(2_000);
    let store = fsync_store(dir.path(), config.clone());
    let generation = || file_named(dir.path(), "log-");
    let first = generation();
    let i = std::cell::Cell::new(0);
    wait_until("a compaction started a new log", || {
        let n = i.replace(i.get() + 1);
        store.put(record(&alice, &key(n), &[1; 300], 1, NOW, HOUR)).expect("put");
        file_named(dir.path(), "log-") != first
    });
    // The new log: its first put, flushed before the next is written.
    let log = generation();
    let start = std::fs::metadata(&log).expect("log").len() as usize;
    store.put(record(&alice, &key(1000), b"v", 1, NOW, HOUR)).expect("put");
    store.put(record(&alice, &key(1001), b"v", 1, NOW, HOUR)).expect("put");
    let bytes = std::fs::read(&log).expect("log");
    drop(store);
    let reopened = reopened_with_first_put_damaged(
        dir.path(),
        bytes,
        start,
        config.with_durability(dkvs_store::Durability::Fsync),
    );
    let Err(StoreError::Corrupt { reason, .. }) = reopened else {
        panic!("damage to a flushed put must not be dropped");
    };
    assert!(reason.contains("a flush had covered"), "{reason}");
}

#[test]
fn with_fsync_damage_a_flush_covered_is_corruption_and_a_tear_after_it_is_not() {
    let alice = Keypair::generate(KeyType::Ed25519);
    let key = |i: u32| Key::scoped(&alice.account_id(), &format!("k{i}")).expect("k");
    // A value of frames of the log's format, marks among them with guessed nonces, each
    // saying a megabyte was flushed.
    let forged: Vec<u8> = (0..20u8)
        .flat_map(|guess| {
            let mut payload = vec![4u8];
            payload.extend_from_slice(&[guess; 16]);
            payload.extend_from_slice(&(1u64 << 20).to_le_bytes());
            let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            frame.extend_from_slice(&payload);
            frame
        })
        .collect();
    // Puts 0 and 1 waited for their flushes; 2 and 3 were written while flushes were held
    // (a power cut before their flush). The log, its bytes, where each put's bytes begin.
    let fresh = || {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = fsync_store(dir.path(), Config::default());
        let log = file_named(dir.path(), "log-");
        let mut starts = Vec::new();
        let len = || std::fs::metadata(&log).expect("log").len() as usize;
        for i in 0..2 {
            starts.push(len());
            store.put(record(&alice, &key(i), b"v", 1, NOW, HOUR)).expect("put");
        }
        let held = store.hold_syncs().expect("a store with fsync has a sync thread");
        let loop_side = store.without_waiting_for_sync();
        for i in 2..4 {
            starts.push(len());
            let value = if i == 2 { &forged[..] } else { b"v" };
            loop_side.put(record(&alice, &key(i), value, 1, NOW, HOUR)).expect("put");
        }
        starts.push(len());
        // The log as the power cut leaves it: a store that closes flushes, and adds a mark.
        let bytes = std::fs::read(&log).expect("log");
        drop((store, loop_side, held));
        (dir, log, bytes, starts)
    };
    let open = |dir: &tempfile::TempDir| fsync_store(dir.path(), Config::default());

    // The second put's frame damaged: the mark before the third put says it was flushed.
    let (dir, log, mut bytes, starts) = fresh();
    bytes[starts[2] - 10] ^= 0xff;
    std::fs::write(&log, &bytes).expect("write");
    let reopened = Store::open_with_clock(
        dir.path(),
        Config::default().with_durability(dkvs_store::Durability::Fsync),
        Arc::new(ManualClock::new(NOW)),
    );
    let Err(StoreError::Corrupt { reason, .. }) = reopened else {
        panic!("damage to an acknowledged put must not be dropped");
    };
    assert!(reason.contains("a flush had covered"), "{reason}");

    // The third put's first page never reached the disk (its header zeros, the forged
    // marks in its value written), the fourth's did: a tear, as no flush covered it.
    let (dir, log, mut bytes, starts) = fresh();
    let value_at =
        starts[2] + bytes[starts[2]..].windows(8).position(|w| w == &forged[..8]).expect("value");
    bytes[starts[2]..value_at].fill(0);
    std::fs::write(&log, &bytes).expect("write");
    let store = open(&dir);
    let held: Vec<bool> = (0..4).map(|i| store.get(key(i).as_str()).is_some()).collect();
    assert_eq!(held, [true, true, false, false], "the acknowledged puts, and no more");
}

#[test]
fn a_snapshot_left_in_its_temporary_file_is_removed_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path(), Config::default()).expect("opens"));
    // A compaction that died before its rename.
    let stray = dir.path().join("snapshot-00000000000000000001.tmp");
    std::fs::write(&stray, b"half a snapshot").expect("write");
    drop(Store::open(dir.path(), Config::default()).expect("opens with a stray file"));
    assert!(!stray.exists(), "the stray temporary snapshot is removed");
}

#[test]
fn a_delete_signed_on_a_slow_clock_still_keeps_the_value_out() {
    // The owner writes sequence 10 on a device whose clock is right, then deletes the key from
    // a phone whose clock is an hour slow: the tombstone (sequence 11) is issued before the
    // value it deletes. A holder that missed the delete still has sequence 10, valid until
    // its own issue time plus the max TTL. The sequence 11 must be remembered at least that
    // long, or the value comes back.
    let config = Config::default().with_max_ttl_ms(10 * HOUR);
    let (store, clock) = setup(config);
    let alice = Keypair::generate(KeyType::Ed25519);
    let key = Key::scoped(&alice.account_id(), "k").expect("valid");
    let value = record(&alice, &key, b"ten", 10, NOW, 10 * HOUR);
    // Signed on the slow phone: an hour before the value it deletes.
    let slow_delete = || {
        Draft {
            key: key.clone(),
            value: Vec::new(),
            seq: 11,
            issued_at_ms: NOW - HOUR,
            expires_at_ms: NOW - HOUR + 10 * HOUR,
            tombstone: true,
            transfer: None,
        }
        .sign(&alice)
        .expect("valid draft")
    };
    store.put(value.clone()).expect("put");
    store.put(slow_delete()).expect("delete");
    // Just past the tombstone's own issue time plus the max TTL: the value is still valid.
    clock.set(NOW - HOUR + 10 * HOUR + 60_000);
    store.remove_expired();
    assert!(matches!(
        store.put(value.clone()).expect("put"),
        PutOutcome::Stale { current_seq: 11, current: None }
    ));
    assert_eq!(store.get(key.as_str()), None);
    // The same when this node never saw the value: what it accepted at NOW covers anything
    // signed before, issued no later than NOW plus the skew bound.
    let (fresh, clock) = setup(Config::default().with_max_ttl_ms(10 * HOUR));
    fresh.put(slow_delete()).expect("delete");
    clock.set(NOW + 10 * HOUR - 60_000);
    fresh.remove_expired();
    assert!(matches!(fresh.put(value.clone()).expect("put"), PutOutcome::Stale { .. }));
    // Once no record issued up to then can be valid, the sequence is forgotten.
    clock.set(NOW + 10 * HOUR + SKEW);
    fresh.remove_expired();
    assert_eq!(fresh.highest_seq(key.as_str()), None);
}

#[test]
fn remembered_sequences_count_against_their_owner() {
    // Many short-lived keys leave remembered sequences behind; they are charged to their owner,
    // so one account cannot fill the store with them.
    let alice = Keypair::generate(KeyType::Ed25519);
    let bob = Keypair::generate(KeyType::Ed25519);
    let key =
        |owner: &Keypair, i: u32| Key::scoped(&owner.account_id(), &format!("k{i}")).expect("k");
    let gone = gone_weight(&key(&alice, 0));
    let live = record_weight(&record(&alice, &key(&alice, 0), b"", 1, NOW, 1_000));
    // Room for one live record beside two remembered sequences, not beside three.
    let config =
        Config::default().with_max_bytes_per_owner(2 * gone + live + 10).with_max_ttl_ms(HOUR);
    let (store, clock) = setup(config);
    for i in 0..3 {
        let issued = NOW + u64::from(i) * 1_000;
        store.put(record(&alice, &key(&alice, i), b"", 1, issued, 1_000)).expect("fits");
        clock.advance(1_000);
        store.remove_expired();
        assert_eq!(store.owner_bytes(alice.public()), (u64::from(i) + 1) * gone);
    }
    // Alice's quota is taken by what she left behind; Bob is unaffected.
    let now = NOW + 3_000;
    assert!(matches!(
        store.put(record(&alice, &key(&alice, 9), b"", 1, now, 1_000)),
        Err(PutError::OwnerQuota { .. })
    ));
    assert!(store.put(record(&bob, &key(&bob, 0), b"", 1, now, 1_000)).is_ok());
    // Once the sequences are forgotten, the quota is free again.
    clock.advance(HOUR + SKEW);
    store.remove_expired();
    assert_eq!(store.owner_bytes(alice.public()), 0);
}

/// Waits (at most 60 s) until `done` holds. A bound, not a speed: on a loaded CI machine (the
/// other tests run node processes by the dozen) a compaction and its fsyncs took over 10 s.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn fsync_puts_return_only_after_a_flush_that_they_share() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::default().with_durability(dkvs_store::Durability::Fsync);
    let store =
        Store::open_with_clock(dir.path(), config, Arc::new(ManualClock::new(NOW))).expect("opens");
    let alice = Arc::new(Keypair::generate(KeyType::Ed25519));
    let returned = Arc::new(AtomicUsize::new(0));
    // A new log's first frame: a mark, synced when the log was made.
    let before = store.written();
    let held = store.hold_syncs().expect("a store with fsync has a sync thread");
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let (store, alice, returned) = (store.clone(), alice.clone(), returned.clone());
            std::thread::spawn(move || {
                let key = Key::scoped(&alice.account_id(), &format!("k{i}")).expect("key");
                let outcome = store.put(record(&alice, &key, b"v", 1, NOW, HOUR));
                returned.fetch_add(1, Ordering::SeqCst);
                outcome
            })
        })
        .collect();
    // The bytes one such put writes, measured on a store that does not flush.
    let frame = {
        let other = tempfile::tempdir().expect("tempdir");
        let measure = Store::open_with_clock(
            other.path(),
            Config::default(),
            Arc::new(ManualClock::new(NOW)),
        )
        .expect("opens");
        let key = Key::scoped(&alice.account_id(), "k0").expect("key");
        let before = measure.written();
        measure.put(record(&alice, &key, b"v", 1, NOW, HOUR)).expect("put");
        measure.written() - before
    };
    // All eight are in the log, and none has returned: no flush has happened.
    wait_until("eight puts are written", || store.written() == before + 8 * frame);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(returned.load(Ordering::SeqCst), 0, "a put returned before its flush");
    assert!(store.durable() < store.written());
    assert_eq!(store.stats().syncs, 0);
    drop(held);
    for writer in writers {
        let outcome = writer.join().expect("writer");
        assert!(matches!(outcome, Ok(PutOutcome::Stored { .. })), "{outcome:?}");
    }
    assert_eq!(store.stats().syncs, 1, "the eight waiting puts shared one flush");
    assert_eq!(store.durable(), store.written());
}

#[test]
fn a_handle_that_does_not_wait_returns_at_once_and_durable_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::default().with_durability(dkvs_store::Durability::Fsync);
    let store =
        Store::open_with_clock(dir.path(), config, Arc::new(ManualClock::new(NOW))).expect("opens");
    let loop_side = store.without_waiting_for_sync();
    let (told, news) = std::sync::mpsc::channel();
    store.on_durable(move || {
        let _ = told.send(());
    });
    let alice = Keypair::generate(KeyType::Ed25519);
    let held = store.hold_syncs().expect("a store with fsync has a sync thread");
    for i in 0..100 {
        let key = Key::scoped(&alice.account_id(), &format!("k{i}")).expect("key");
        let outcome = loop_side.put(record(&alice, &key, b"v", 1, NOW, HOUR));
        assert!(matches!(outcome, Ok(PutOutcome::Stored { .. })), "{outcome:?}");
    }
    let written = loop_side.written();
    assert!(loop_side.durable() < written, "nothing is flushed yet");
    // Readable before it is durable: the record is acknowledged only once durable.
    assert_eq!(store.stats().records, 100);
    drop(held);
    news.recv_timeout(std::time::Duration::from_secs(10)).expect("told when the flush is done");
    wait_until("the flush covers every put", || loop_side.durable() >= written);
    assert_eq!(store.stats().syncs, 1, "one flush for the hundred puts");
    // An in-memory store and a write-through store are durable as soon as a put returns.
    let plain = Store::in_memory(Config::default()).without_waiting_for_sync();
    assert_eq!((plain.written(), plain.durable()), (0, 0));
}

#[test]
fn one_condition_type_for_every_write() {
    use dkvs_store::Expect;
    assert!(Expect::Any.allows(None) && Expect::Any.allows(Some(7)));
    assert!(Expect::Absent.allows(None) && !Expect::Absent.allows(Some(1)));
    assert!(Expect::Seq(3).allows(Some(3)) && !Expect::Seq(3).allows(Some(4)));
    assert!(!Expect::Seq(3).allows(None));
    assert_eq!(Expect::from_cas(None), Expect::Absent);
    assert_eq!(Expect::from_cas(Some(2)), Expect::Seq(2));
}

fn fsync_store(dir: &std::path::Path, config: Config) -> Store {
    let config = config.with_durability(dkvs_store::Durability::Fsync);
    Store::open_with_clock(dir, config, Arc::new(ManualClock::new(NOW))).expect("opens")
}

#[test]
fn a_failed_flush_is_final_and_breaks_only_the_promises_it_was_to_keep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = fsync_store(dir.path(), Config::default());
    let alice = Keypair::generate(KeyType::Ed25519);
    let key = |name: &str| Key::scoped(&alice.account_id(), name).expect("key");
    store.put(record(&alice, &key("a"), b"v", 1, NOW, HOUR)).expect("a flush that works");
    let promised = store.durable();
    // The next flush fails, as a failing disk's would.
    let held = store.hold_syncs().expect("a store with fsync has a sync thread");
    store.fail_next_flush();
    let waiting = {
        let (store, b) = (store.clone(), record(&alice, &key("b"), b"v", 1, NOW, HOUR));
        std::thread::spawn(move || store.put(b))
    };
    wait_until("b is written", || store.written() > promised);
    drop(held);
    let outcome = waiting.join().expect("writer");
    let Err(PutError::NotDurable { source, .. }) = outcome else { panic!("{outcome:?}") };
    assert!(source.to_string().contains("flush failed"), "{source}");
    // What was flushed before stays promised; nothing after it is.
    assert_eq!(store.durable(), promised);
    assert!(store.flush_failure().is_some());
    assert!(store.flush().is_err(), "a later flush cannot claim the lost pages are on disk");
    // Writes are refused from now on and change nothing, also after a compaction.
    let c = record(&alice, &key("c"), b"v", 1, NOW, HOUR);
    assert!(matches!(store.put(c), Err(PutError::Io { .. })));
    assert!(store.get(key("c").as_str()).is_none());
    store.compact().expect("a compaction still writes its snapshot");
    let d = record(&alice, &key("d"), b"v", 1, NOW, HOUR);
    assert!(matches!(store.put(d), Err(PutError::Io { .. })));
    assert!(store.get(key("d").as_str()).is_none());
    assert!(store.get(key("a").as_str()).is_some(), "reads go on");
}

#[test]
fn fsync_puts_across_compactions_are_all_there_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = Arc::new(Keypair::generate(KeyType::Ed25519));
    let config = Config::default().with_compact_after_bytes(8_000);
    let keys: Vec<Key> =
        (0..200).map(|i| Key::scoped(&alice.account_id(), &format!("k{i}")).expect("k")).collect();
    let fillers = std::cell::Cell::new(0);
    {
        let store = fsync_store(dir.path(), config.clone());
        let loop_side = store.without_waiting_for_sync();
        // Half through a handle that does not wait, while flushes are held (compactions
        // retire logs meanwhile), half from threads that wait.
        let held = store.hold_syncs().expect("a store with fsync has a sync thread");
        for key in &keys[..100] {
            loop_side.put(record(&alice, key, &[7; 100], 1, NOW, HOUR)).expect("put");
        }
        // Compactions ran (the logs are 8 KB each) and flushed nothing: the retired logs are
        // the next flush's business.
        let newest_log = || {
            std::fs::read_dir(dir.path())
                .expect("dir")
                .filter_map(|e| {
                    e.ok()?.file_name().to_str()?.strip_prefix("log-")?.parse::<u64>().ok()
                })
                .max()
                .unwrap_or(0)
        };
        // A compaction starts only from a put, and one runs at a time: on a loaded machine the
        // first may outlast the hundred puts. More puts (fillers) until two have started.
        wait_until("compactions started new logs", || {
            if newest_log() > 2 {
                return true;
            }
            let n = fillers.replace(fillers.get() + 1);
            let key = Key::scoped(&alice.account_id(), &format!("filler{n}")).expect("key");
            loop_side.put(record(&alice, &key, &[7; 100], 1, NOW, HOUR)).expect("put");
            false
        });
        assert!(store.durable() < store.written());
        drop(held);
        let writers: Vec<_> = keys[100..]
            .chunks(25)
            .map(|chunk| {
                let (store, alice, chunk) = (store.clone(), alice.clone(), chunk.to_vec());
                std::thread::spawn(move || {
                    for key in &chunk {
                        store.put(record(&alice, key, &[7; 100], 1, NOW, HOUR)).expect("put");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("writer");
        }
        wait_until("every write is flushed", || store.durable() >= store.written());
        // A store dropped while its flushes are held still closes, and frees its directory.
        let held = store.hold_syncs();
        drop((store, loop_side));
        drop(held);
    }
    let store = fsync_store(dir.path(), config);
    for key in &keys {
        assert!(store.get(key.as_str()).is_some(), "{key} survived");
    }
    for n in 0..fillers.get() {
        let key = Key::scoped(&alice.account_id(), &format!("filler{n}")).expect("key");
        assert!(store.get(key.as_str()).is_some(), "{key} survived");
    }
}

#[test]
fn without_fsync_a_failed_flush_is_final_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        Store::open_with_clock(dir.path(), Config::default(), Arc::new(ManualClock::new(NOW)))
            .expect("opens");
    let alice = Keypair::generate(KeyType::Ed25519);
    let key = |name: &str| Key::scoped(&alice.account_id(), name).expect("key");
    store.put(record(&alice, &key("a"), b"v", 1, NOW, HOUR)).expect("written through");
    store.flush().expect("a flush that works");
    store.fail_next_flush();
    store.put(record(&alice, &key("a2"), b"v", 1, NOW, HOUR)).expect("written through");
    assert!(store.flush().is_err());
    // A retry cannot claim the pages the failed flush may have dropped.
    assert!(store.flush().is_err());
    let refused = store.put(record(&alice, &key("b"), b"v", 1, NOW, HOUR));
    let Err(PutError::Io { source, .. }) = refused else { panic!("{refused:?}") };
    assert!(source.to_string().contains("a flush failed"), "says why: {source}");
    assert!(store.get(key("b").as_str()).is_none());
    assert!(store.get(key("a").as_str()).is_some(), "reads go on");
}

#[test]
fn a_lock_held_for_a_moment_by_someone_looking_is_waited_out() {
    // The command line takes the lock shared for a moment to see whether a node is starting;
    // a node that opens its store meanwhile waits that out. Held on, it is refused.
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path(), Config::default()).expect("opens"));
    let look = std::fs::File::open(dir.path().join("LOCK")).expect("LOCK");
    look.lock_shared().expect("shared");
    let looking = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(look);
    });
    let store = Store::open(dir.path(), Config::default()).expect("waits out a look");
    looking.join().expect("joined");
    drop(store);
    let held = std::fs::File::open(dir.path().join("LOCK")).expect("LOCK");
    held.lock_shared().expect("shared");
    assert!(matches!(Store::open(dir.path(), Config::default()), Err(StoreError::Io { .. })));
}
