//! Record benchmarks: sign, verify, encode and decode, by value size and key type; and a key's
//! parse, by kind of key (a shared name's first segment is folded to tell whether it reads
//! like an account's scope: docs/record-format.md).
//!
//! Before the groups run it prints the encoded overhead (`encode().len() - value.len()`) for an
//! account-scoped key and a short shared name, for both key types; the target is 200 bytes.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use dkvs_account::{KeyType, Keypair};
use dkvs_record::{Draft, Key, Limits, Record, unix_millis};

const SIZES: [(usize, &str); 3] = [(0, "0B"), (1024, "1KiB"), (10 * 1024, "10KiB")];
const KEY_TYPES: [KeyType; 2] = [KeyType::Ed25519, KeyType::Secp256k1];
const TTL_MS: u64 = 3_600_000;
/// The encoded overhead this format aims to stay under, in bytes.
const OVERHEAD_TARGET: usize = 200;

/// An owner, a draft with an account-scoped key, and the signed record.
struct Fixture {
    owner: Keypair,
    draft: Draft,
    record: Record,
    encoded: Vec<u8>,
}

fn fixture(key_type: KeyType, value_len: usize) -> Fixture {
    let owner = Keypair::generate(key_type);
    let key = Key::scoped(&owner.account_id(), "profile").expect("a scoped key is valid");
    let value: Vec<u8> = (0..value_len).map(|i| (i % 251) as u8).collect();
    let draft = Draft::new(key, value, 1, TTL_MS);
    let record = draft.clone().sign(&owner).expect("the draft is valid");
    let encoded = record.encode();
    Fixture { owner, draft, record, encoded }
}

fn print_overhead() {
    println!("encoded overhead = encode().len() - value.len(), target <= {OVERHEAD_TARGET} bytes");
    println!(
        "| key type  | key                     | value 0 B | 100 B | 1 KiB | 10 KiB | verdict |"
    );
    println!(
        "|-----------|-------------------------|----------:|------:|------:|-------:|---------|"
    );
    for key_type in KEY_TYPES {
        let owner = Keypair::generate(key_type);
        let scoped = Key::scoped(&owner.account_id(), "profile").expect("a scoped key is valid");
        let shared = Key::new("/app/config").expect("a shared name is valid");
        for (label, key) in [("/<account-id>/profile", scoped), ("/app/config", shared)] {
            let overheads: Vec<usize> = [0, 100, 1024, 10 * 1024]
                .into_iter()
                .map(|len| {
                    let record = Draft::new(key.clone(), vec![0x5a; len], 1, TTL_MS)
                        .sign(&owner)
                        .expect("the draft is valid");
                    record.encode().len() - record.value().len()
                })
                .collect();
            let worst = overheads.iter().copied().max().unwrap_or(0);
            let verdict = if worst <= OVERHEAD_TARGET { "PASS" } else { "MISS" };
            println!(
                "| {:9} | {:23} | {:>9} | {:>5} | {:>5} | {:>6} | {verdict:7} |",
                key_type.name(),
                label,
                overheads[0],
                overheads[1],
                overheads[2],
                overheads[3],
            );
        }
    }
    println!();
}

/// Runs `routine` for every key type and value size in `group`, with throughput in record bytes.
fn each_case(
    group: &mut BenchmarkGroup<'_, WallTime>,
    mut routine: impl FnMut(&mut BenchmarkGroup<'_, WallTime>, BenchmarkId, &Fixture),
) {
    for key_type in KEY_TYPES {
        for (size, label) in SIZES {
            let f = fixture(key_type, size);
            group.throughput(Throughput::Bytes(f.encoded.len() as u64));
            routine(group, BenchmarkId::new(key_type.name(), label), &f);
        }
    }
}

fn bench_sign(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_sign");
    each_case(&mut group, |group, id, f| {
        group.bench_function(id, |b| {
            b.iter_batched(|| f.draft.clone(), |d| d.sign(&f.owner), BatchSize::SmallInput)
        });
    });
    group.finish();
}

fn bench_verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_verify");
    let now = unix_millis();
    let limits = Limits::default();
    each_case(&mut group, |group, id, f| {
        f.record.validate(now, &limits).expect("the fixture is valid");
        group.bench_function(id, |b| b.iter(|| black_box(&f.record).validate(now, &limits)));
    });
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_encode");
    each_case(&mut group, |group, id, f| {
        group.bench_function(id, |b| b.iter(|| black_box(&f.record).encode()));
    });
    group.finish();
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_decode");
    each_case(&mut group, |group, id, f| {
        assert_eq!(Record::decode(&f.encoded).as_ref(), Ok(&f.record), "decode round trip");
        group.bench_function(id, |b| b.iter(|| Record::decode(black_box(&f.encoded))));
    });
    group.finish();
}

/// `Key::new` on what every record's decode parses: an account-scoped key, and shared names
/// (short, at the longest a key may be, and not ASCII), each folded for the look-alike rule.
fn bench_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("key_parse");
    let owner = Keypair::generate(KeyType::Ed25519);
    let scoped = Key::scoped(&owner.account_id(), "profile").expect("valid").as_str().to_owned();
    let longest = format!("/{}", "app-config-".repeat(24))[..dkvs_record::MAX_KEY_LEN].to_owned();
    // Names that start as an id does and hold only letters and digits until their last
    // character are folded to the end: the worst cases, ASCII and not.
    let like_an_id = format!("/edl{}-", "q".repeat(dkvs_record::MAX_KEY_LEN - 5));
    let not_ascii = format!("/\u{435}dl{}-", "q".repeat(dkvs_record::MAX_KEY_LEN - 6));
    let cases = [
        ("scoped", scoped),
        ("shared-short", "/app/config".to_owned()),
        ("shared-256B", longest),
        ("shared-not-ascii", "/café-menü/größe".to_owned()),
        ("shared-256B-id-like-to-the-end", like_an_id),
        ("shared-256B-id-like-not-ascii", not_ascii),
    ];
    for (label, text) in cases {
        assert!(text.len() <= dkvs_record::MAX_KEY_LEN, "{label}");
        Key::new(text.as_str()).expect("a valid key");
        group.bench_function(label, |b| b.iter(|| Key::new(black_box(text.as_str()))));
    }
    group.finish();
}

fn main() {
    print_overhead();
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_sign(&mut c);
    bench_verify(&mut c);
    bench_encode(&mut c);
    bench_decode(&mut c);
    bench_key(&mut c);
    c.final_summary();
}
