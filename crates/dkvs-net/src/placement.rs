//! Which entries of a routing table are nearest a key, for many keys at once.
//!
//! A node's walk of its store asks, for every record, which `k` peers of its routing table
//! (itself among them, as a DHT server) are nearest the record's key: its replicas. A scan of
//! the table costs every entry for each record (a table of a million-node network holds about
//! a thousand), and the walk runs on the node's event loop. A [`Table`] sorts the entries by
//! their Kademlia keys once per walk; the entries that share a prefix with a key are then one
//! run of the sorted entries, and the nearest by XOR are found by halving runs bit by bit (a
//! binary trie, walked over the sorted array): a few binary searches a key.
//! `cargo bench -p dkvs-benches --bench placement` measures both.

/// Entries (a Kademlia key's 32 bytes, and what it stands for), sorted by key.
pub struct Table<P> {
    entries: Vec<([u8; 32], P)>,
}

impl<P: Copy> Table<P> {
    /// A table of `entries`, whose keys are distinct (the hashes of distinct peer ids; the
    /// same key twice would come back in either order).
    pub fn new(mut entries: Vec<([u8; 32], P)>) -> Table<P> {
        entries.sort_unstable_by_key(|e| e.0);
        Table { entries }
    }

    /// The `n` entries nearest `target` by XOR distance, nearest first.
    pub fn nearest(&self, target: &[u8; 32], n: usize) -> Vec<P> {
        let mut out = Vec::with_capacity(n.min(self.entries.len()));
        nearest_in(&self.entries, target, 0, n, &mut out);
        out
    }
}

/// Bit `at` of `key`, the most significant first.
fn bit(key: &[u8; 32], at: usize) -> bool {
    key[at / 8] & (0x80 >> (at % 8)) != 0
}

/// Adds to `out` the `n` entries of `run` nearest `target`, nearest first. The keys of `run`
/// agree on their first `depth` bits, so its entries whose next bit is the target's are all
/// nearer than the others.
fn nearest_in<P: Copy>(
    run: &[([u8; 32], P)],
    target: &[u8; 32],
    depth: usize,
    n: usize,
    out: &mut Vec<P>,
) {
    if n == 0 || run.is_empty() {
        return;
    }
    if run.len() <= n || depth == 256 {
        // Few enough to take whole (or, past the last bit, keys that are the same).
        let mut all: Vec<([u8; 32], P)> =
            run.iter().map(|(key, p)| (crate::nearby::xor(key, target), *p)).collect();
        all.sort_unstable_by_key(|e| e.0);
        out.extend(all.into_iter().take(n).map(|(_, p)| p));
        return;
    }
    let split = run.partition_point(|(key, _)| !bit(key, depth));
    let (zeros, ones) = run.split_at(split);
    let (near, far) = if bit(target, depth) { (ones, zeros) } else { (zeros, ones) };
    nearest_in(near, target, depth + 1, n, out);
    nearest_in(far, target, depth + 1, n.saturating_sub(near.len()), out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The scan the table replaces: every entry's distance, sorted.
    fn scan(entries: &[([u8; 32], u32)], target: &[u8; 32], n: usize) -> Vec<u32> {
        let mut near: Vec<([u8; 32], u32)> = entries
            .iter()
            .map(|(key, p)| (std::array::from_fn(|i| key[i] ^ target[i]), *p))
            .collect();
        near.sort_unstable();
        near.into_iter().take(n).map(|(_, p)| p).collect()
    }

    /// Keys that are random, or that share long prefixes with each other and the target
    /// (the runs the descent splits are then uneven, down to the last bits).
    fn key() -> impl Strategy<Value = [u8; 32]> {
        prop_oneof![
            any::<[u8; 32]>(),
            (any::<u8>(), 0usize..32).prop_map(|(b, at)| {
                let mut key = [0xa5u8; 32];
                key[at] = b;
                key
            }),
        ]
    }

    proptest! {
        #[test]
        fn nearest_is_the_scans_answer(
            keys in proptest::collection::btree_set(key(), 0..300),
            target in key(),
            n in 0usize..40,
        ) {
            let entries: Vec<([u8; 32], u32)> = keys.into_iter().zip(0u32..).collect();
            let table = Table::new(entries.clone());
            prop_assert_eq!(table.nearest(&target, n), scan(&entries, &target, n));
        }
    }

    #[test]
    fn a_key_in_the_table_is_its_own_nearest() {
        use sha2::{Digest as _, Sha256};
        let entries: Vec<([u8; 32], u32)> =
            (0u32..1000).map(|i| (Sha256::digest(i.to_le_bytes()).into(), i)).collect();
        let table = Table::new(entries.clone());
        for (key, p) in &entries {
            assert_eq!(table.nearest(key, 1), [*p]);
            assert_eq!(table.nearest(key, 20), scan(&entries, key, 20));
        }
    }
}
