//! What a stored record costs in memory, next to its encoded size (the least a node could keep)
//! and to what the store's byte budget charges for it.
//!
//! N records of 100-byte values (the workload; about 235 bytes encoded) are decoded
//! and put into an in-memory store, as they arrive from the network or the API. Measured: the
//! heap bytes the store holds afterwards (a counting allocator: exact, beside the allocator's
//! own rounding), and the process's resident memory. Two populations: one owner (an
//! application writing through its node) and an owner per 20 records (a replica's mix).
//!
//! Targets, checked in a full run (they are deterministic for a given allocator): heap per
//! record <= 1.5x the encoded size; the store's charge within 10% of the heap it holds.
//!
//! `cargo bench -p dkvs-benches --bench record_memory` (20,000 records; `-- --test`, what CI
//! runs, puts 2,000 and checks nothing).

use dkvs_account::KeyType;
use dkvs_benches::{Population, quick_mode};
use dkvs_record::Record;
use dkvs_store::Store;

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
    resident: f64,
    charged: f64,
}

fn measure(records: usize, per_owner: usize) -> Figures {
    let population = Population::new(records, per_owner, KeyType::Ed25519, 100);
    let indices: Vec<usize> = (0..records).collect();
    // Encoded, as they arrive: decoding is part of what a record costs a node.
    let encoded: Vec<Vec<u8>> =
        population.records(&indices, 1).iter().map(Record::encode).collect();
    let encoded_bytes: usize = encoded.iter().map(Vec::len).sum();
    let store = Store::in_memory(population.config(records));
    let (heap0, resident0) = (ALLOCATOR.allocated(), resident_kib());
    for bytes in &encoded {
        let record = Record::decode(bytes).expect("a generated record decodes");
        store.put(record).expect("stored");
    }
    let (heap1, resident1) = (ALLOCATOR.allocated(), resident_kib());
    let n = records as f64;
    Figures {
        encoded: encoded_bytes as f64 / n,
        heap: heap1.saturating_sub(heap0) as f64 / n,
        resident: resident1.saturating_sub(resident0) as f64 * 1024.0 / n,
        charged: store.stats().bytes as f64 / n,
    }
}

fn main() {
    let quick = quick_mode();
    let records = if quick { 2_000 } else { 20_000 };
    println!("record_memory: {records} records of 100-byte values, bytes per record");
    println!("| owners | encoded | heap | heap / encoded | resident | charged | charged / heap |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut missed = Vec::new();
    for (i, (label, per_owner)) in [("one", records), ("one per 20 records", 20)].iter().enumerate()
    {
        let f = measure(records, *per_owner);
        // Resident memory only for the first store: a later one reuses what the first freed.
        let resident = if i == 0 { format!("{:.0}", f.resident) } else { "-".into() };
        println!(
            "| {label} | {:.0} | {:.0} | {:.2} | {resident} | {:.0} | {:.2} |",
            f.encoded,
            f.heap,
            f.heap / f.encoded,
            f.charged,
            f.charged / f.heap
        );
        if f.heap > 1.5 * f.encoded {
            missed.push(format!("{label}: heap {:.0} > 1.5 x encoded {:.0}", f.heap, f.encoded));
        }
        if (f.charged / f.heap - 1.0).abs() > 0.10 {
            missed.push(format!("{label}: charged {:.0} vs heap {:.0}", f.charged, f.heap));
        }
    }
    if quick {
        return;
    }
    for miss in &missed {
        println!("MISSED: {miss}");
    }
    if !missed.is_empty() {
        std::process::exit(1);
    }
}
