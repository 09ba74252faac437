//! Store benchmarks, each beside its physical limit, measured in the same run.
//!
//! - `store_put`: `Store::put` of a record newer than the held one (full validation), 1 and 2
//!   threads, on stores of 10k and 1M records; limit: `ed25519/verify_strict` of the same
//!   signing bytes on as many threads (and `ed25519/dkvs_verify`, the check `Record::validate`
//!   itself makes, to show what the store adds to it).
//! - `store_put_many`: `Store::put_many` of batches of 64 and 256 records; limits: single and
//!   batch Ed25519 verification (`ed25519/verify_batch`).
//! - `get`: `Store::get` of a present key (`store_*`); limit: `hashmap_*`, a plain
//!   `HashMap<String, Arc<Record>>::get` of the same keys in the same order (and
//!   `hashmap_clone_*`, which also clones the `Arc` as `Store::get` must), run one after the
//!   other at each size and thread count.
//!
//! After the groups, a table gives each result as a throughput ratio to its limit, against the
//! targets. With `--test` (each benchmark runs once) the 1M size and the table are skipped.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput};
use dkvs_account::KeyType;
use dkvs_benches::{
    CONTENDED_BELOW, CpuShare, Estimates, Population, PutFeed, Ratio, XorShift, count_label, fill,
    quick_mode, ratio_table, resident_mib, shares,
};
use dkvs_record::Record;
use dkvs_store::{PutOutcome, Store};

/// Store sizes, in records.
const SIZES: [usize; 2] = [10_000, 1_000_000];
/// Value size of every record, in bytes.
const VALUE_LEN: usize = 100;
/// Keys per owner: a 1M-record store holds 10,000 accounts.
const PER_OWNER: usize = 100;
/// Thread counts of the put, get and verify benchmarks.
const THREADS: [usize; 2] = [1, 2];
/// Batch sizes of `put_many` and batch verification.
const BATCHES: [usize; 2] = [64, 256];
/// Keys per thread that the put feed cycles through (one signed generation per refill).
const FEED_KEYS_PER_LANE: usize = 4096;
/// Records whose signatures the raw verification benchmarks cycle through.
const VERIFY_POOL: usize = 1024;

/// A filled store and the same records in a plain `HashMap`.
struct Fixture {
    records: usize,
    population: Population,
    store: Store,
    map: HashMap<String, Arc<Record>>,
    /// Every key, shuffled: the order of lookups.
    lookups: Vec<String>,
}

impl Fixture {
    fn new(records: usize) -> Fixture {
        let started = Instant::now();
        let population = Population::new(records, PER_OWNER, KeyType::Ed25519, VALUE_LEN);
        let indices: Vec<usize> = (0..records).collect();
        let signed = population.records(&indices, 1);
        let signed_after = started.elapsed();
        let store = Store::in_memory(population.config(records));
        fill(&store, signed);
        let map: HashMap<String, Arc<Record>> =
            store.records().map(|r| (r.key().as_str().to_owned(), r)).collect();
        assert_eq!(map.len(), records, "every fixture record is live in the store");
        let mut lookups: Vec<String> = map.keys().cloned().collect();
        lookups.sort_unstable();
        XorShift::new(records as u64).shuffle(&mut lookups);
        eprintln!(
            "fixture: {} records of {} owners, signed in {:.1} s, stored in {:.1} s; \
             process resident memory {}",
            count_label(records),
            population.owners(),
            signed_after.as_secs_f64(),
            (started.elapsed() - signed_after).as_secs_f64(),
            resident_mib().map_or_else(|| "unknown".to_owned(), |m| format!("{m} MiB")),
        );
        Fixture { records, population, store, map, lookups }
    }
}

/// What raw Ed25519 verification checks: the owners' keys, signing bytes and signatures.
struct VerifyPool {
    records: Vec<Arc<Record>>,
    keys: Vec<ed25519_dalek::VerifyingKey>,
    messages: Vec<Vec<u8>>,
    signatures: Vec<ed25519_dalek::Signature>,
}

impl VerifyPool {
    fn new(store: &Store) -> VerifyPool {
        let records: Vec<Arc<Record>> = store.records().take(VERIFY_POOL).collect();
        let keys = records
            .iter()
            .map(|r| {
                let bytes: [u8; 32] =
                    r.owner().as_bytes().try_into().expect("fixture owners are Ed25519");
                ed25519_dalek::VerifyingKey::from_bytes(&bytes).expect("a valid key")
            })
            .collect();
        let messages = records.iter().map(|r| r.signing_bytes()).collect();
        let signatures = records
            .iter()
            .map(|r| ed25519_dalek::Signature::from_bytes(r.signature().as_bytes()))
            .collect();
        VerifyPool { records, keys, messages, signatures }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    /// ed25519-dalek's `verify_strict`: the raw limit.
    fn verify_strict(&self, i: usize) -> bool {
        self.keys[i].verify_strict(&self.messages[i], &self.signatures[i]).is_ok()
    }

    /// The signature check `Record::validate` makes (dkvs-account's, ZIP-215 for Ed25519), over
    /// the same prepared signing bytes: what a put costs beyond it is the store's own work.
    fn verify_dkvs(&self, i: usize) -> bool {
        let record = &self.records[i];
        record.owner().verify_preimage(&self.messages[i], record.signature()).is_ok()
    }
}

/// Runs `work` once per input, the first on this thread and the others on scoped threads, and
/// returns the wall time from before the first start to after the last end, and the sum of what
/// the calls returned (the operations that succeeded).
fn run_threads<I: Send>(inputs: Vec<I>, work: impl Fn(I) -> u64 + Sync) -> (Duration, u64) {
    let work = &work;
    let start = Instant::now();
    let done = std::thread::scope(|scope| {
        let mut inputs = inputs.into_iter();
        let first = inputs.next();
        let others: Vec<_> = inputs.map(|input| scope.spawn(move || work(input))).collect();
        let mut done = first.map_or(0, work);
        for handle in others {
            done += handle.join().expect("a benchmark thread panicked");
        }
        done
    });
    (start.elapsed(), done)
}

/// `iters` operations split over `threads`, each thread starting at its own place in a list of
/// `len` items, the whole continuing from `cursor` (which moves on), so that successive samples
/// walk the list instead of repeating its beginning.
fn spans(cursor: &mut usize, len: usize, iters: u64, threads: usize) -> Vec<(usize, u64)> {
    let len = len.max(1);
    let spans = shares(iters, threads)
        .into_iter()
        .enumerate()
        .map(|(t, n)| ((*cursor + t * len / threads.max(1)) % len, n))
        .collect();
    *cursor = (*cursor + (iters % len as u64) as usize) % len;
    spans
}

/// Calls `op` on items `start, start + 1, ...` (wrapping at `len`) `n` times; counts `true`s.
fn walk(len: usize, (start, n): (usize, u64), op: impl Fn(usize) -> bool) -> u64 {
    let mut i = start;
    let mut ok = 0;
    for _ in 0..n {
        if i >= len {
            i = 0;
        }
        ok += u64::from(op(i));
        i += 1;
    }
    ok
}

fn threads_label(threads: usize) -> String {
    if threads == 1 { "1_thread".to_owned() } else { format!("{threads}_threads") }
}

fn bench_verify(c: &mut Criterion, cpu: &CpuShare, pool: &VerifyPool) {
    type Verify = fn(&VerifyPool, usize) -> bool;
    let singles: [(&str, Verify); 2] =
        [("verify_strict", VerifyPool::verify_strict), ("dkvs_verify", VerifyPool::verify_dkvs)];
    let mut group = c.benchmark_group("ed25519");
    for (name, verify) in singles {
        for threads in THREADS {
            group.throughput(Throughput::Elements(1));
            let id = format!("ed25519/{name}/{}", threads_label(threads));
            let mut cursor = 0;
            group.bench_function(BenchmarkId::new(name, threads_label(threads)), |b| {
                b.iter_custom(|iters| {
                    let spans = spans(&mut cursor, pool.len(), iters, threads);
                    let (elapsed, ok) = cpu.measure(&id, threads, || {
                        run_threads(spans, |span| walk(pool.len(), span, |i| verify(pool, i)))
                    });
                    assert_eq!(ok, iters, "every signature verifies");
                    elapsed
                })
            });
        }
    }
    let messages: Vec<&[u8]> = pool.messages.iter().map(Vec::as_slice).collect();
    for batch in BATCHES {
        group.throughput(Throughput::Elements(batch as u64));
        let id = format!("ed25519/verify_batch/{batch}");
        let mut start = 0;
        group.bench_function(BenchmarkId::new("verify_batch", batch), |b| {
            b.iter_custom(|iters| {
                cpu.measure(&id, 1, || {
                    let started = Instant::now();
                    for _ in 0..iters {
                        start = (start + batch) % (pool.len() - batch);
                        let range = start..start + batch;
                        ed25519_dalek::verify_batch(
                            black_box(&messages[range.clone()]),
                            &pool.signatures[range.clone()],
                            &pool.keys[range],
                        )
                        .expect("every signature verifies");
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
}

fn bench_put(c: &mut Criterion, cpu: &CpuShare, fixtures: &[Fixture], feeds: &mut [PutFeed<'_>]) {
    let mut group = c.benchmark_group("store_put");
    group.throughput(Throughput::Elements(1));
    for (fixture, feed) in fixtures.iter().zip(feeds.iter_mut()) {
        for threads in THREADS {
            let id = format!("store_put/{}/{}", threads_label(threads), fixture.records);
            group.bench_function(BenchmarkId::new(threads_label(threads), fixture.records), |b| {
                b.iter_custom(|iters| {
                    // Signing is not measured: each thread gets its own keys' next records.
                    let work: Vec<Vec<Record>> = shares(iters, threads)
                        .into_iter()
                        .enumerate()
                        .map(|(lane, n)| feed.take(lane, n as usize))
                        .collect();
                    let (elapsed, stored) = cpu.measure(&id, threads, || {
                        run_threads(work, |records| {
                            let mut stored = 0;
                            for record in records {
                                let outcome = fixture.store.put(record);
                                stored +=
                                    u64::from(matches!(outcome, Ok(PutOutcome::Stored { .. })));
                            }
                            stored
                        })
                    });
                    assert_eq!(stored, iters, "every put stores a newer record");
                    elapsed
                })
            });
        }
    }
    group.finish();
}

fn bench_put_many(
    c: &mut Criterion,
    cpu: &CpuShare,
    fixtures: &[Fixture],
    feeds: &mut [PutFeed<'_>],
) {
    let mut group = c.benchmark_group("store_put_many");
    for (fixture, feed) in fixtures.iter().zip(feeds.iter_mut()) {
        for batch in BATCHES {
            group.throughput(Throughput::Elements(batch as u64));
            let id = format!("store_put_many/batch_{batch}/{}", fixture.records);
            let bench_id = BenchmarkId::new(format!("batch_{batch}"), fixture.records);
            group.bench_function(bench_id, |b| {
                b.iter_custom(|iters| {
                    let batches: Vec<Vec<Record>> =
                        (0..iters).map(|_| feed.take(0, batch)).collect();
                    let (elapsed, stored) = cpu.measure(&id, 1, || {
                        let started = Instant::now();
                        let mut stored = 0u64;
                        for records in batches {
                            for outcome in fixture.store.put_many(records) {
                                stored +=
                                    u64::from(matches!(outcome, Ok(PutOutcome::Stored { .. })));
                            }
                        }
                        (started.elapsed(), stored)
                    });
                    assert_eq!(stored, iters * batch as u64, "every put stores a newer record");
                    elapsed
                })
            });
        }
    }
    group.finish();
}

/// The lookups of the `get` group; each is run right after the others at the same size and
/// thread count, so that a busy neighbour on the shared machine hits all three alike.
#[derive(Clone, Copy)]
enum Lookup {
    /// `Store::get`.
    Store,
    /// `HashMap::get`: the limit.
    Map,
    /// `HashMap::get` and an `Arc` clone, which `Store::get` has to return.
    MapClone,
}

impl Lookup {
    const ALL: [Lookup; 3] = [Lookup::Store, Lookup::Map, Lookup::MapClone];

    fn function(self, threads: usize) -> String {
        let name = match self {
            Lookup::Store => "store",
            Lookup::Map => "hashmap",
            Lookup::MapClone => "hashmap_clone",
        };
        format!("{name}_{}", threads_label(threads))
    }
}

fn bench_get(c: &mut Criterion, cpu: &CpuShare, fixtures: &[Fixture]) {
    let mut group = c.benchmark_group("get");
    group.throughput(Throughput::Elements(1));
    for fixture in fixtures {
        let keys = &fixture.lookups;
        for threads in THREADS {
            for lookup in Lookup::ALL {
                let op = |i: usize| -> bool {
                    let key = keys[i].as_str();
                    match lookup {
                        Lookup::Store => black_box(fixture.store.get(black_box(key))).is_some(),
                        Lookup::Map => black_box(fixture.map.get(black_box(key))).is_some(),
                        Lookup::MapClone => {
                            black_box(fixture.map.get(black_box(key)).cloned()).is_some()
                        }
                    }
                };
                let function = lookup.function(threads);
                let id = format!("get/{function}/{}", fixture.records);
                let mut cursor = 0;
                group.bench_function(BenchmarkId::new(function, fixture.records), |b| {
                    b.iter_custom(|iters| {
                        let spans = spans(&mut cursor, keys.len(), iters, threads);
                        let (elapsed, found) = cpu.measure(&id, threads, || {
                            run_threads(spans, |span| walk(keys.len(), span, op))
                        });
                        assert_eq!(found, iters, "every key is present");
                        elapsed
                    })
                });
            }
        }
    }
    group.finish();
}

/// Each result as a throughput ratio to its physical limit, from criterion's estimates of this
/// run (see [`Estimates::time_ns`]), with the CPU share each side got.
fn ratios(estimates: &Estimates, cpu: &CpuShare, fixtures: &[Fixture]) -> Vec<Ratio> {
    // (group, function, parameter, divisor): a time per operation and its CPU share.
    type Side<'a> = (&'a str, String, String, f64);
    let row = |name: String, measured: Side<'_>, limit: Side<'_>, target: Option<f64>| {
        let time = |(group, function, parameter, per): &Side<'_>| {
            estimates.time_ns(group, function, parameter).map(|ns| ns / per)
        };
        let share = |(group, function, parameter, _): &Side<'_>| {
            cpu.share(&format!("{group}/{function}/{parameter}"))
        };
        Ratio {
            name,
            measured_ns: time(&measured),
            limit_ns: time(&limit),
            target,
            cpu_share: (share(&measured), share(&limit)),
        }
    };
    let mut rows = Vec::new();
    for fixture in fixtures {
        let n = fixture.records.to_string();
        let size = count_label(fixture.records);
        for threads in THREADS {
            let t = threads_label(threads);
            let put = ("store_put", t.clone(), n.clone(), 1.0);
            rows.push(row(
                format!("put {t} {size} / verify_strict {t}"),
                put.clone(),
                ("ed25519", "verify_strict".into(), t.clone(), 1.0),
                Some(0.9),
            ));
            rows.push(row(
                format!("put {t} {size} / dkvs_verify {t}"),
                put,
                ("ed25519", "dkvs_verify".into(), t.clone(), 1.0),
                None,
            ));
        }
        for batch in BATCHES {
            let per = batch as f64;
            let many = ("store_put_many", format!("batch_{batch}"), n.clone(), per);
            rows.push(row(
                format!("put_many {batch} {size} per record / verify_strict 1_thread"),
                many.clone(),
                ("ed25519", "verify_strict".into(), "1_thread".into(), 1.0),
                Some(1.5),
            ));
            rows.push(row(
                format!("put_many {batch} {size} per record / verify_batch {batch}"),
                many,
                ("ed25519", "verify_batch".into(), batch.to_string(), per),
                None,
            ));
        }
        for threads in THREADS {
            let t = threads_label(threads);
            let side = |lookup: Lookup| ("get", lookup.function(threads), n.clone(), 1.0);
            rows.push(row(
                format!("get {t} {size} / HashMap get {t}"),
                side(Lookup::Store),
                side(Lookup::Map),
                Some(0.5),
            ));
            rows.push(row(
                format!("get {t} {size} / HashMap get + Arc clone {t}"),
                side(Lookup::Store),
                side(Lookup::MapClone),
                None,
            ));
        }
    }
    rows
}

fn main() {
    let run_started = SystemTime::now();
    let quick = quick_mode();
    let sizes: Vec<usize> = SIZES.into_iter().filter(|&n| !quick || n <= 10_000).collect();
    let fixtures: Vec<Fixture> = sizes.into_iter().map(Fixture::new).collect();
    let pool = VerifyPool::new(&fixtures[0].store);
    let mut feeds: Vec<PutFeed<'_>> = fixtures
        .iter()
        .map(|f| PutFeed::new(&f.population, f.records, 2, FEED_KEYS_PER_LANE, 2))
        .collect();

    let mut c = Criterion::default()
        .sample_size(25)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    let cpu = CpuShare::default();
    bench_verify(&mut c, &cpu, &pool);
    bench_put(&mut c, &cpu, &fixtures, &mut feeds);
    bench_put_many(&mut c, &cpu, &fixtures, &mut feeds);
    bench_get(&mut c, &cpu, &fixtures);
    c.final_summary();

    if quick {
        println!("ratio table skipped: in --test mode each benchmark runs once, unmeasured");
        return;
    }
    let estimates = Estimates::new(run_started);
    let rows = ratios(&estimates, &cpu, &fixtures);
    println!();
    println!("Throughput ratios to the physical limits (limit ns / measured ns), this run;");
    println!("times are criterion's slope estimates (the \"time\" line above), per operation:");
    print!("{}", ratio_table(&rows));
    println!(
        "cpu share: CPU time the process got / (wall time x threads), measured / limit; \
         * marks a share below {CONTENDED_BELOW}: another process held a core, so that ratio \
         measures the machine, not the code."
    );
    if rows.iter().any(|r| r.value().is_none()) {
        println!("n/a: not measured in this run (filtered out?); searched {:?}", estimates.roots());
    }
}
