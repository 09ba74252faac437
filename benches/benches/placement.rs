//! A walk's placement: for every record a node holds, which k = 20 entries of its routing table
//! (itself among them) are its replicas. The walk runs on the node's event loop, every
//! replication interval and when a partner's round finds it stale, so its time is time the
//! node answers nobody.
//!
//! Per record, with tables of 100 entries (a 100-node network) and 1,000 (about what a node of
//! a 10^6-node network holds: 14 buckets of 64):
//! - `scan`: what the walk did before `dkvs_net::placement`: each entry's distance to the key,
//!   the k nearest selected and sorted (a vector allocated per record), and then the k + 1
//!   candidates hashed again (SHA-256 of a 38-byte peer id each) and sorted once more by
//!   `closest`;
//! - `table`: `placement::Table::nearest` on the table sorted once per walk (its build time is
//!   shown apart);
//! - floor: the SHA-256 of the record's key, which either way must be computed.
//!
//! `cargo bench -p dkvs-benches --bench placement` (`-- --test`, what CI runs, checks that both
//! ways agree on fewer keys and reports the same columns).

use std::hint::black_box;
use std::time::{Duration, Instant};

use dkvs_net::placement::Table;
use sha2::{Digest as _, Sha256};

const K: usize = 20;

/// A xorshift64* stream of keys: the same every run.
struct Keys(u64);

impl Keys {
    fn next(&mut self) -> [u8; 32] {
        std::array::from_fn(|_| {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
    }
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// The walk's placement of one key before: a scan of the table, then `closest` over the k
/// nearest and this node (each hashed again, as `KBucketKey::from(peer)` does).
fn by_scan(entries: &[([u8; 32], u32)], ids: &[[u8; 38]], me: u32, target: &[u8; 32]) -> Vec<u32> {
    let mut near: Vec<([u8; 32], u32)> = Vec::new();
    near.extend(entries.iter().map(|(key, p)| (xor(key, target), *p)));
    near.retain(|(_, p)| *p != me);
    if near.len() > K {
        near.select_nth_unstable(K);
        near.truncate(K);
    }
    near.sort_unstable();
    let mut candidates: Vec<u32> = near.into_iter().map(|(_, p)| p).chain([me]).collect();
    candidates.sort_by_cached_key(|p| xor(&Sha256::digest(ids[*p as usize]).into(), target));
    candidates.truncate(K);
    candidates
}

fn per(total: Duration, n: usize) -> f64 {
    total.as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let records = if quick { 2_000 } else { 200_000 };
    println!("a walk's placement of {records} records, k = {K}, per record");
    println!(
        "| table entries | scan (before) | table | table build (once) | key's SHA-256 (floor) | scan / table |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for size in [100, 1000] {
        let mut keys = Keys(0x9e37_79b9_7f4a_7c15 ^ size as u64);
        // Peer ids (38 bytes, as an Ed25519 peer id's bytes) and their keys, this node last.
        let ids: Vec<[u8; 38]> = (0..=size)
            .map(|_| {
                let (a, b) = (keys.next(), keys.next());
                std::array::from_fn(|i| if i < 32 { a[i] } else { b[i - 32] })
            })
            .collect();
        let entries: Vec<([u8; 32], u32)> =
            ids.iter().zip(0u32..).map(|(id, p)| (Sha256::digest(id).into(), p)).collect();
        let me = size as u32;
        let record_keys: Vec<String> =
            (0..records).map(|i| format!("/names/record-{i:08}")).collect();
        let targets: Vec<[u8; 32]> =
            record_keys.iter().map(|k| Sha256::digest(k.as_bytes()).into()).collect();

        let started = Instant::now();
        for key in &record_keys {
            black_box(Sha256::digest(black_box(key.as_bytes())));
        }
        let floor = started.elapsed();

        let started = Instant::now();
        let mut scanned = Vec::with_capacity(records);
        for target in &targets {
            scanned.push(by_scan(&entries, &ids, me, target));
        }
        let scan = started.elapsed();

        let started = Instant::now();
        let table = Table::new(entries.clone());
        let build = started.elapsed();
        let started = Instant::now();
        let mut found = Vec::with_capacity(records);
        for target in &targets {
            found.push(table.nearest(target, K));
        }
        let nearest = started.elapsed();

        // The same replicas, in the same order (the table holds this node as the walk's does).
        assert_eq!(scanned, found, "the table and the scan disagree");
        println!(
            "| {size} | {:.2} µs | {:.2} µs | {:.0} µs | {:.2} µs | {:.1}x |",
            per(scan, records),
            per(nearest, records),
            build.as_secs_f64() * 1e6,
            per(floor, records),
            scan.as_secs_f64() / nearest.as_secs_f64(),
        );
    }
}
