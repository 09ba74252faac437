//! A key's neighbourhood as one operation sees it: the k peers closest to the key that it
//! knows of, grown by the peers its replicas name in their answers.
//!
//! A Kademlia lookup asks about twenty peers for their closest before a read or a write can
//! ask a single replica (docs/benchmarks.md: 21 of a get's 34 requests at N = 100). When this
//! node's routing table already holds every peer near the key ([`table_covers`]), the
//! operation starts from the table instead, and the replicas it asks check it: each request
//! carries the asker's candidates (by fingerprint) and its farthest, and each replica answers
//! with the peers it is connected to that are closer and unknown to the asker. Those join the
//! neighbourhood and are asked too. In a network whose tables are complete, answers name
//! nobody, and a read costs its replicas' requests only.

use std::collections::HashSet;

use libp2p::kad::{KBucketDistance as Distance, KBucketKey};
use libp2p::{Multiaddr, PeerId};

use crate::codec::pb;

/// Most addresses read for one peer a replica names.
pub(crate) const MAX_ADDRS: usize = 4;

/// The last 8 bytes of a peer id, as a request names the peers its asker knows: the id's key
/// or hash, so ids cannot be ground to collide with a given one more cheaply than keys.
pub(crate) fn fingerprint(peer: &PeerId) -> u64 {
    let bytes = peer.to_bytes();
    let mut last = [0u8; 8];
    let n = bytes.len().min(8);
    last[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    u64::from_le_bytes(last)
}

/// The k closest peers to a key that one operation knows of.
pub(crate) struct Neighbourhood {
    target: KBucketKey<Vec<u8>>,
    k: usize,
    /// The k closest, closest first.
    closest: Vec<(Distance, PeerId)>,
    /// Every peer that was ever among them, or was named and refused: never added twice.
    seen: HashSet<PeerId>,
    /// Peers added from replicas' answers so far, and the most that may be.
    added: usize,
}

impl Neighbourhood {
    /// The neighbourhood of `target` (a Kademlia key's bytes) holding `peers` (this node
    /// excluded by the caller, or not, as it counts).
    pub(crate) fn new(target: Vec<u8>, k: usize, peers: impl IntoIterator<Item = PeerId>) -> Self {
        let target = KBucketKey::new(target);
        let mut closest: Vec<(Distance, PeerId)> = peers
            .into_iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .map(|p| (target.distance(&KBucketKey::from(p)), p))
            .collect();
        closest.sort();
        closest.truncate(k);
        let seen = closest.iter().map(|(_, p)| *p).collect();
        Neighbourhood { target, k, closest, seen, added: 0 }
    }

    /// The peers, closest first.
    #[cfg(test)]
    pub(crate) fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.closest.iter().map(|(_, p)| *p)
    }

    /// The request's hint: the farthest of a full neighbourhood (empty while it has fewer
    /// than k) and every member's fingerprint.
    pub(crate) fn hint(&self) -> (Vec<u8>, Vec<u64>) {
        let farthest = if self.closest.len() >= self.k {
            self.closest.last().map(|(_, p)| p.to_bytes()).unwrap_or_default()
        } else {
            Vec::new()
        };
        (farthest, self.closest.iter().map(|(_, p)| fingerprint(p)).collect())
    }

    /// Takes the peers a replica named: those closer than the farthest (or any while there
    /// are fewer than k) that were never seen join, pushing the farthest out. Returns the
    /// ones that joined, with the addresses given for them, to be asked; and the ones pushed
    /// out. At most k join over the operation's life: a replica naming more is lying or
    /// looking at a different network, and the operation goes on with what it has.
    pub(crate) fn named(
        &mut self,
        me: PeerId,
        peers: Vec<pb::Peer>,
    ) -> (Vec<(PeerId, Vec<Multiaddr>)>, Vec<PeerId>) {
        let mut joined = Vec::new();
        let mut out = Vec::new();
        for named in peers.into_iter().take(self.k) {
            if self.added >= self.k {
                break;
            }
            let Ok(peer) = PeerId::from_bytes(&named.id) else { continue };
            if peer == me || !self.seen.insert(peer) {
                continue;
            }
            let distance = self.target.distance(&KBucketKey::from(peer));
            let full = self.closest.len() >= self.k;
            if full && self.closest.last().is_some_and(|(far, _)| distance >= *far) {
                continue;
            }
            let at = self.closest.partition_point(|(d, _)| *d < distance);
            self.closest.insert(at, (distance, peer));
            if self.closest.len() > self.k
                && let Some((_, pushed)) = self.closest.pop()
            {
                out.push(pushed);
            }
            self.added += 1;
            let addrs = named
                .addrs
                .into_iter()
                .take(MAX_ADDRS)
                .filter_map(|a| Multiaddr::try_from(a).ok())
                .collect();
            joined.push((peer, addrs));
        }
        // A peer that joined and was pushed out by a later one in the same answer is neither.
        let pushed_joined: HashSet<PeerId> =
            out.iter().filter(|p| joined.iter().any(|(j, _)| j == *p)).copied().collect();
        joined.retain(|(p, _)| !pushed_joined.contains(p));
        out.retain(|p| !pushed_joined.contains(p));
        (joined, out)
    }
}

/// A replica's side: which of `candidates` (its routing table's keys) to name to an asker
/// whose hint is `farthest` and `known`: those closer to `target` than the farthest, not
/// known to the asker and `live` (DHT servers this replica is connected to), at most `k`,
/// closest first. Distances first, as they cost no allocation: most peers fail them.
pub(crate) fn to_name<'a>(
    target: &[u8],
    farthest: &[u8],
    known: &[u64],
    asker: PeerId,
    candidates: impl IntoIterator<Item = &'a KBucketKey<PeerId>>,
    live: impl Fn(&PeerId) -> bool,
    k: usize,
) -> Vec<PeerId> {
    let target = KBucketKey::new(target.to_vec());
    let bound = PeerId::from_bytes(farthest).ok().map(|p| target.distance(&KBucketKey::from(p)));
    let mut near: Vec<(Distance, PeerId)> = candidates
        .into_iter()
        .map(|key| (key.distance(&target), key))
        .filter(|(d, _)| bound.is_none_or(|b| *d < b))
        .map(|(d, key)| (d, *key.preimage()))
        .filter(|(_, p)| *p != asker && live(p))
        .collect();
    if !near.is_empty() {
        let known: HashSet<u64> = known.iter().copied().collect();
        near.retain(|(_, p)| !known.contains(&fingerprint(p)));
        near.sort();
    }
    near.into_iter().take(k).map(|(_, p)| p).collect()
}

/// One bucket of a routing table: its index (bucket i holds the peers at distance
/// [2^i, 2^(i+1)) from this node), how many entries it has and how many of them are
/// connected.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    pub(crate) index: u32,
    pub(crate) entries: usize,
    pub(crate) connected: usize,
}

/// Whether a routing table of buckets of `size` holds every peer among the k closest to a key
/// in bucket `key_index` from this node: a bucket that is not full holds every peer in its
/// range that this node has met.
///
/// The peers closest to the key are those of the key's own bucket b (closer to the key than
/// this node is); then, all at the distance of this node, those of every bucket below b; then
/// those of b + 1, b + 2 and on. Walking the buckets in that order, the table covers the key
/// when each bucket walked before k connected peers are counted is not full. Counting only
/// connected peers keeps dead ones (Kademlia keeps them in its table) out of a neighbourhood.
pub(crate) fn table_covers(buckets: &[Bucket], key_index: u32, k: usize, size: usize) -> bool {
    use std::cmp::Ordering;
    let rank = |b: &&Bucket| match b.index.cmp(&key_index) {
        Ordering::Equal => 0,
        Ordering::Less => 1,
        Ordering::Greater => 1 + b.index - key_index,
    };
    let mut walked: Vec<&Bucket> = buckets.iter().collect();
    walked.sort_by_key(rank);
    let mut counted = 0;
    for group in walked.chunk_by(|a, b| rank(a) == rank(b)) {
        if group.iter().any(|b| b.entries >= size) {
            return false;
        }
        counted += group.iter().map(|b| b.connected).sum::<usize>();
        if counted >= k {
            return true;
        }
    }
    counted > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    fn bucket(index: u32, entries: usize, connected: usize) -> Bucket {
        Bucket { index, entries, connected }
    }

    #[test]
    fn a_table_covers_a_key_only_while_the_buckets_walked_are_not_full() {
        // Bucket 250 holds the key's closest; below it, peers at this node's distance.
        let table = [bucket(250, 8, 8), bucket(248, 6, 6), bucket(255, 64, 60), bucket(252, 10, 9)];
        // 8 + 6 + (251: none) + 9 = 23 >= 20 before the full bucket 255 is reached.
        assert!(table_covers(&table, 250, 20, 64));
        // Needing 30 reaches bucket 255, which is full: peers in its range may be missing.
        assert!(!table_covers(&table, 250, 30, 64));
        // A full bucket below the key's: any of the peers it dropped could be among the k.
        let table = [bucket(250, 8, 8), bucket(240, 64, 64)];
        assert!(!table_covers(&table, 250, 20, 64));
        // The key's own bucket full: closer peers may be missing.
        assert!(!table_covers(&[bucket(250, 64, 64)], 250, 20, 64));
        // A small network: every bucket has room, fewer than k peers in all.
        assert!(table_covers(&[bucket(255, 3, 3), bucket(254, 2, 1)], 200, 20, 64));
        // Dead peers do not count: an empty (connected) table covers nothing.
        assert!(!table_covers(&[bucket(255, 3, 0)], 255, 20, 64));
        assert!(!table_covers(&[], 255, 20, 64));
    }

    #[test]
    fn named_peers_join_only_when_closer_than_the_farthest_and_new() {
        let me = PeerId::random();
        let target = b"/greeting".to_vec();
        let all = peers(40);
        let key = KBucketKey::new(target.clone());
        let mut by_distance = all.clone();
        by_distance.sort_by_key(|p| key.distance(&KBucketKey::from(*p)));
        // The neighbourhood knows the 5th to 24th closest: the 4 closest are unknown.
        let mut hood = Neighbourhood::new(target.clone(), 20, by_distance[4..24].iter().copied());
        let (farthest, known) = hood.hint();
        assert_eq!(farthest, by_distance[23].to_bytes());
        assert_eq!(known.len(), 20);
        // A replica connected to everyone names exactly the 4 closer ones it does not know.
        let replica = by_distance[10];
        let keys: Vec<KBucketKey<PeerId>> = all.iter().map(|p| KBucketKey::from(*p)).collect();
        let live = |p: &PeerId| *p != by_distance[1];
        let named = to_name(&target, &farthest, &known, replica, &keys, |_| true, 20);
        assert_eq!(named, by_distance[..4]);
        // Only live peers (connected DHT servers) are named.
        let named_live = to_name(&target, &farthest, &known, replica, &keys, live, 20);
        assert_eq!(named_live, [by_distance[0], by_distance[2], by_distance[3]]);
        // They join (with their address) and push the four farthest out.
        let addr = || vec!["/ip4/127.0.0.1/tcp/1".parse::<Multiaddr>().unwrap().to_vec()];
        let mut named: Vec<pb::Peer> =
            named.iter().map(|p| pb::Peer { id: p.to_bytes(), addrs: addr() }).collect();
        named.push(pb::Peer { id: by_distance[30].to_bytes(), addrs: vec![] }); // farther: no
        named.push(pb::Peer { id: me.to_bytes(), addrs: vec![] }); // this node: no
        named.push(pb::Peer { id: b"junk".to_vec(), addrs: vec![] }); // not an id: no
        let (joined, out) = hood.named(me, named);
        assert_eq!(joined.iter().map(|(p, _)| *p).collect::<Vec<_>>(), by_distance[..4]);
        assert_eq!(joined[0].1, vec!["/ip4/127.0.0.1/tcp/1".parse::<Multiaddr>().unwrap()]);
        let mut out = out;
        out.sort_by_key(|p| key.distance(&KBucketKey::from(*p)));
        assert_eq!(out, by_distance[20..24]);
        assert_eq!(hood.peers().collect::<Vec<_>>(), by_distance[..20]);
        // Named again, nobody joins: they were seen.
        let again = by_distance[..4].iter().map(|p| pb::Peer { id: p.to_bytes(), addrs: vec![] });
        assert!(hood.named(me, again.collect()).0.is_empty());
        // Now complete, a replica names nobody.
        let (farthest, known) = hood.hint();
        assert!(to_name(&target, &farthest, &known, replica, &keys, |_| true, 20).is_empty());
    }

    #[test]
    fn a_liar_naming_many_peers_adds_at_most_k_over_an_operation() {
        let me = PeerId::random();
        let mut hood = Neighbourhood::new(b"k".to_vec(), 3, peers(0));
        // While the neighbourhood is not full, any new peer joins; never more than k in all.
        let lie = |n| peers(n).into_iter().map(|p| pb::Peer { id: p.to_bytes(), addrs: vec![] });
        let (joined, _) = hood.named(me, lie(50).collect());
        assert!(joined.len() <= 3);
        let (joined, out) = hood.named(me, lie(50).collect());
        assert!(joined.is_empty() && out.is_empty());
        assert_eq!(hood.peers().count(), 3);
    }
}
