//! What a stored record costs in memory, next to its encoded size (the least a node could keep)
//! and to what the store's byte budget charges for it.
//!
//! N records of 100-byte values (the workload; about 258 bytes encoded) are signed,
//! encoded, decoded and put into an in-memory store one at a time, as they arrive from the
//! network or the API, then each is replaced once by its next sequence. Nothing else stays
//! allocated meanwhile, so that the store does not grow into memory freed by a set-up step.
//! Measured: the heap bytes the store holds (a counting allocator: exact and deterministic,
//! before the allocator's own rounding), and the process's resident memory. Two populations:
//! one owner (an application writing through its node) and an owner per 20 records (a
//! replica's mix).
//!
//! Checked in every run, `-- --test` (what CI runs, 2,000 records) included, since the
//! figures are deterministic: the store's charge within 10% of the heap a record takes, an
//! update costs no more than the record it replaces, and heap per record at most 1.5x the
//! encoded size (the target).
//!
//! `cargo bench -p dkvs-benches --bench record_memory` (20,000 records).

use dkvs_account::KeyType;
use dkvs_benches::{Population, quick_mode};
use dkvs_record::Record;
use dkvs_store::{PutOutcome, Store};

#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Resident memory in KiB (Linux), 0 elsewhere.
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or_default();
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
}

struct Figures {
    encoded: f64,
    heap: f64,
    heap_updated: f64,
    resident: f64,
    charged: f64,
}

fn measure(records: usize, per_owner: usize) -> Figures {
    let population = Population::new(records, per_owner, KeyType::Ed25519, 100);
    let store = Store::in_memory(population.config(records));
    // Encoded and decoded, as they arrive: decoding is part of what a record costs a node.
    // Returns the encoded bytes.
    let put_all = |seq, replaced| -> usize {
        let mut encoded = 0;
        for i in 0..records {
            let bytes = population.record(i, population.key(i), seq).encode();
            encoded += bytes.len();
            let record = Record::decode(&bytes).expect("a generated record decodes");
            let outcome = store.put(record).expect("stored");
            assert_eq!(outcome, PutOutcome::Stored { replaced }, "every put stores");
        }
        encoded
    };
    let (heap0, resident0) = (ALLOCATOR.allocated(), resident_kib());
    let encoded_bytes = put_all(1, None);
    let (heap1, resident1) = (ALLOCATOR.allocated(), resident_kib());
    let charged = store.stats().bytes;
    put_all(2, Some(1));
    let heap2 = ALLOCATOR.allocated();
    let n = records as f64;
    Figures {
        encoded: encoded_bytes as f64 / n,
        heap: heap1.saturating_sub(heap0) as f64 / n,
        heap_updated: heap2.saturating_sub(heap0) as f64 / n,
        resident: resident1.saturating_sub(resident0) as f64 * 1024.0 / n,
        charged: charged as f64 / n,
    }
}

fn main() {
    let records = if quick_mode() { 2_000 } else { 20_000 };
    println!("record_memory: {records} records of 100-byte values, bytes per record");
    println!(
        "| owners | encoded | heap | heap after an update each | heap / encoded | resident | \
         charged | charged / heap |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut failed = Vec::new();
    for (i, (label, per_owner)) in [("one", records), ("one per 20", 20)].into_iter().enumerate() {
        let f = measure(records, per_owner);
        // Resident memory only for the first store: a later one reuses what the first freed.
        let resident = if i == 0 { format!("{:.0}", f.resident) } else { "-".into() };
        println!(
            "| {label} | {:.0} | {:.0} | {:.0} | {:.2} | {resident} | {:.0} | {:.2} |",
            f.encoded,
            f.heap,
            f.heap_updated,
            f.heap / f.encoded,
            f.charged,
            f.charged / f.heap
        );
        if f.heap > 1.5 * f.encoded {
            failed.push(format!("{label}: heap {:.0} > 1.5 x encoded {:.0}", f.heap, f.encoded));
        }
        if f.heap_updated > f.heap * 1.02 {
            failed.push(format!("{label}: updated {:.0} > first {:.0}", f.heap_updated, f.heap));
        }
        if (f.charged / f.heap - 1.0).abs() > 0.10 {
            failed.push(format!("{label}: charged {:.0} vs heap {:.0}", f.charged, f.heap));
        }
    }
    for failure in &failed {
        eprintln!("FAILED: {failure}");
    }
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
