//! Model test, sled style: random operations against the store and against a plain `BTreeMap`
//! model of the rules, compared after every step, with restarts from disk in between.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use dkvs_account::{KeyType, Keypair, PublicKey};
use dkvs_record::{Draft, Key, Record, Transfer};
use dkvs_store::{
    Config, ManualClock, OWNER_OVERHEAD, PutError, PutOutcome, Store, gone_weight, record_weight,
};
use proptest::prelude::*;

const START: u64 = 1_800_000_000_000;
const MAX_TTL: u64 = 8_000;

#[derive(Clone, Debug)]
enum Op {
    Put {
        owner: usize,
        key: usize,
        seq: u64,
        len: usize,
        fill: u8,
        ttl: u64,
        transfer: bool,
        cas: Option<Option<u64>>,
    },
    Tombstone {
        owner: usize,
        key: usize,
        seq: u64,
    },
    Replay(usize),
    Advance(u64),
    RemoveExpired,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, 0..4usize, 0..6u64, prop_oneof![Just(0usize), Just(10), Just(900)], 0..2u8,
              1..12_000u64, any::<bool>(), proptest::option::weighted(0.3, proptest::option::of(0..6u64)))
            .prop_map(|(owner, key, seq, len, fill, ttl, transfer, cas)| Op::Put { owner, key, seq, len, fill, ttl, transfer, cas }),
        1 => (0..2usize, 0..4usize, 0..6u64).prop_map(|(owner, key, seq)| Op::Tombstone { owner, key, seq }),
        2 => any::<usize>().prop_map(Op::Replay),
        2 => (0..4_000u64).prop_map(Op::Advance),
        1 => Just(Op::RemoveExpired),
        1 => Just(Op::Restart),
    ]
}

#[derive(Clone, Debug, PartialEq)]
enum Slot {
    Live { record: Record, expires_at: u64, retain_until: u64 },
    Gone { seq: u64, retain_until: u64, owner: PublicKey },
}

/// The rules, written as plainly as possible.
#[derive(Default)]
struct Model {
    slots: BTreeMap<String, Slot>,
    used: u64,
    per_owner: HashMap<PublicKey, u64>,
}

#[derive(Debug, PartialEq)]
enum Verdict {
    Stored,
    Unchanged,
    Stale,
    Conflict,
    Fork,
    Foreign,
    Quota,
    Full,
    Invalid,
}

fn verdict(result: &Result<PutOutcome, PutError>) -> Verdict {
    match result {
        Ok(PutOutcome::Stored { .. }) => Verdict::Stored,
        Ok(PutOutcome::Unchanged) => Verdict::Unchanged,
        Ok(PutOutcome::Stale { .. }) => Verdict::Stale,
        Ok(PutOutcome::Conflict { .. }) => Verdict::Conflict,
        Err(PutError::Fork { .. }) => Verdict::Fork,
        Err(PutError::ForeignOwner { .. }) => Verdict::Foreign,
        Err(PutError::OwnerQuota { .. }) => Verdict::Quota,
        Err(PutError::Full { .. }) => Verdict::Full,
        Err(PutError::Invalid(_) | PutError::TooOld { .. }) => Verdict::Invalid,
        Err(other) => panic!("unexpected error {other}"),
        Ok(other) => panic!("unexpected outcome {other:?}"),
    }
}

impl Model {
    fn put(&mut self, config: &Config, r: &Record, cas: Option<Option<u64>>, now: u64) -> Verdict {
        let expires_at = r.expires_at_ms().min(r.issued_at_ms() + config.max_ttl_ms);
        if r.expires_at_ms() <= now || expires_at <= now {
            return Verdict::Invalid;
        }
        let key = r.key().as_str().to_owned();
        let held = self.slots.get(&key).cloned();
        match &held {
            Some(Slot::Live { record, .. }) if r.seq() < record.seq() => return Verdict::Stale,
            Some(Slot::Live { record, expires_at, .. }) if r.seq() == record.seq() => {
                // Another account's record at the live holder's sequence is refused for its
                // owner; only the holder's own second record is a fork.
                let consent = r.transfer().is_some_and(|t| t.from() == record.owner());
                let foreign = *expires_at > now && record.owner() != r.owner() && !consent;
                return if record == r {
                    Verdict::Unchanged
                } else if foreign {
                    Verdict::Foreign
                } else {
                    Verdict::Fork
                };
            }
            Some(Slot::Gone { seq, .. }) if r.seq() <= *seq => return Verdict::Stale,
            _ => {}
        }
        let live = match &held {
            Some(Slot::Live { record, expires_at, .. }) if *expires_at > now => {
                Some(record.clone())
            }
            _ => None,
        };
        if let Some(expected) = cas
            && live.as_ref().map(Record::seq) != expected
        {
            return Verdict::Conflict;
        }
        if let Some(live) = &live {
            let consent = r.transfer().is_some_and(|t| t.from() == live.owner());
            if live.owner() != r.owner() && !consent {
                return Verdict::Foreign;
            }
        }
        let weight = record_weight(r);
        let (freed, freed_owner) = match &held {
            Some(Slot::Live { record, .. }) => {
                (record_weight(record), Some(record.owner().clone()))
            }
            Some(Slot::Gone { owner, .. }) => (gone_weight(r.key()), Some(owner.clone())),
            None => (0, None),
        };
        let owner_now = self.per_owner.get(r.owner()).copied().unwrap_or(0);
        let owner_freed = if freed_owner.as_ref() == Some(r.owner()) { freed } else { 0 };
        if owner_now + weight - owner_freed > config.max_bytes_per_owner && weight > owner_freed {
            return Verdict::Quota;
        }
        let limit = config.max_bytes - config.reserved_for_own_bytes;
        // Every owner with something held costs its parsed key once; a new one, too.
        let new_owner = if owner_now == 0 { OWNER_OVERHEAD } else { 0 };
        if self.bytes() + weight - freed + new_owner > limit && weight + new_owner > freed {
            return Verdict::Full;
        }
        self.used = self.used + weight - freed;
        if let Some(old) = freed_owner {
            *self.per_owner.entry(old).or_default() -= freed;
        }
        *self.per_owner.entry(r.owner().clone()).or_default() += weight;
        // A sequence is remembered until no lower one can be valid: the latest of the issue
        // times seen and the acceptance time, plus the max TTL and the clock-skew bound.
        let before = match &held {
            Some(Slot::Live { retain_until, .. } | Slot::Gone { retain_until, .. }) => {
                *retain_until
            }
            None => 0,
        };
        let own = r.issued_at_ms().max(now) + config.max_ttl_ms + config.limits.max_clock_skew_ms;
        let retain_until = own.max(before);
        self.slots.insert(key, Slot::Live { record: r.clone(), expires_at, retain_until });
        Verdict::Stored
    }

    /// The store's bytes: the records' and remembered sequences' weights, and each owner's
    /// parsed key.
    fn bytes(&self) -> u64 {
        self.used + OWNER_OVERHEAD * self.per_owner.values().filter(|v| **v > 0).count() as u64
    }

    fn remove_expired(&mut self, now: u64) {
        let mut next = BTreeMap::new();
        for (key, slot) in std::mem::take(&mut self.slots) {
            let k = Key::new(key.clone()).expect("model keys are valid");
            match slot {
                Slot::Live { record, expires_at, retain_until } if expires_at <= now => {
                    let w = record_weight(&record);
                    *self.per_owner.entry(record.owner().clone()).or_default() -= w;
                    self.used -= w;
                    if retain_until > now {
                        self.used += gone_weight(&k);
                        let owner = record.owner().clone();
                        *self.per_owner.entry(owner.clone()).or_default() += gone_weight(&k);
                        next.insert(key, Slot::Gone { seq: record.seq(), retain_until, owner });
                    }
                }
                Slot::Gone { retain_until, owner, .. } if retain_until <= now => {
                    self.used -= gone_weight(&k);
                    *self.per_owner.entry(owner).or_default() -= gone_weight(&k);
                }
                slot => {
                    next.insert(key, slot);
                }
            }
        }
        self.slots = next;
    }

    fn check(&self, store: &Store, keys: &[Key], owners: &[Keypair], now: u64) {
        for key in keys {
            let expected = match self.slots.get(key.as_str()) {
                Some(Slot::Live { record, expires_at, .. }) if *expires_at > now => Some(record),
                _ => None,
            };
            assert_eq!(store.get(key.as_str()).as_deref(), expected, "get {key}");
            let seq = self.slots.get(key.as_str()).map(|slot| match slot {
                Slot::Live { record, .. } => record.seq(),
                Slot::Gone { seq, .. } => *seq,
            });
            assert_eq!(store.highest_seq(key.as_str()), seq, "highest_seq {key}");
        }
        let stats = store.stats();
        let live = self.slots.values().filter(|s| matches!(s, Slot::Live { .. })).count();
        assert_eq!(stats.records as usize, live, "records");
        assert_eq!(stats.remembered as usize, self.slots.len() - live, "remembered");
        assert_eq!(stats.bytes, self.bytes(), "bytes");
        for owner in owners {
            let used = self.per_owner.get(owner.public()).copied().unwrap_or(0);
            assert_eq!(store.owner_bytes(owner.public()), used, "owner bytes");
        }
    }
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(START);
    let owners = [Keypair::generate(KeyType::Ed25519), Keypair::generate(KeyType::Secp256k1)];
    // Keys 0 and 1 are in the writing owner's scope, 2 and 3 are shared names.
    let scoped = |owner: usize, i: usize| {
        Key::scoped(&owners[owner].account_id(), &format!("k{i}")).expect("valid")
    };
    let shared = [Key::new("/shared/a").expect("valid"), Key::new("/shared/b").expect("valid")];
    let key_of = |owner: usize, key: usize| {
        if key < 2 { scoped(owner, key) } else { shared[key - 2].clone() }
    };
    let all_keys: Vec<Key> = (0..2)
        .flat_map(|o| (0..2).map(move |k| (o, k)))
        .map(|(o, k)| scoped(o, k))
        .chain(shared.clone())
        .collect();
    let big = record_weight(
        &Draft::new(scoped(0, 0), vec![0; 900], 1, 1).sign(&owners[0]).expect("valid"),
    );
    let config = Config::default()
        .with_max_ttl_ms(MAX_TTL)
        .with_max_bytes_per_owner(2 * big + 300)
        .with_max_bytes(3 * big + 300)
        .with_compact_after_bytes(4_000);
    let open = || {
        Store::open_with_clock(dir.path(), config.clone(), Arc::new(clock.clone())).expect("opens")
    };
    let mut store = open();
    let mut model = Model::default();
    let mut history: Vec<(Record, Option<Option<u64>>)> = Vec::new();

    for op in ops {
        let now = clock.now();
        let put = match op {
            Op::Put { owner, key, seq, len, fill, ttl, transfer, cas } => {
                let k = key_of(owner, key);
                let mut draft = Draft {
                    key: k.clone(),
                    value: vec![fill; len],
                    seq,
                    issued_at_ms: now,
                    expires_at_ms: now + ttl,
                    tombstone: false,
                    transfer: None,
                };
                if transfer && k.is_shared() {
                    let from = &owners[1 - owner];
                    draft.transfer = Some(Transfer::sign(from, &k, owners[owner].public(), seq));
                }
                Some((draft.sign(&owners[owner]).expect("valid draft"), cas))
            }
            Op::Tombstone { owner, key, seq } => {
                let mut draft = Draft::tombstone(key_of(owner, key), seq, 5_000);
                draft.issued_at_ms = now;
                draft.expires_at_ms = now + 5_000;
                Some((draft.sign(&owners[owner]).expect("valid draft"), None))
            }
            Op::Replay(i) if !history.is_empty() => Some(history[i % history.len()].clone()),
            Op::Replay(_) => None,
            Op::Advance(ms) => {
                clock.advance(ms);
                None
            }
            Op::RemoveExpired => {
                store.remove_expired();
                model.remove_expired(now);
                None
            }
            Op::Restart => {
                drop(store);
                store = open();
                model.remove_expired(now);
                None
            }
        };
        if let Some((record, cas)) = put {
            let result = match cas {
                Some(expected) => store.put_cas(record.clone(), expected),
                None => store.put(record.clone()),
            };
            let expected = model.put(&config, &record, cas, now);
            assert_eq!(verdict(&result), expected, "put of {record:?} with cas {cas:?}");
            history.push((record, cas));
        }
        model.check(&store, &all_keys, &owners, clock.now());
    }
}

trait Now {
    fn now(&self) -> u64;
}

impl Now for ManualClock {
    fn now(&self) -> u64 {
        dkvs_store::Clock::now_ms(self)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}
