//! A key's neighbourhood as one operation sees it, taken from this node's routing table when
//! the table can be trusted with it, and checked by the replicas it asks.
//!
//! A Kademlia lookup asks about twenty peers for their closest before a read or a write can ask a
//! single replica (docs/benchmarks.md: 21 of a get's 34 requests at N = 100). When this node's
//! routing table holds every peer near the key ([`table_covers`]) and the last lookups found nobody
//! the table did not hold (and had room for: [`beyond_full_bucket`]), the operation starts from the
//! table instead. Each of its requests carries the asker's candidates (by fingerprint) and its
//! farthest, and each replica answers with the ids of the DHT servers it is connected to that are
//! closer and unknown to the asker. One such id means the table was wrong about the key: the
//! operation then runs the Kademlia lookup after all and asks the replicas it finds (named ids are
//! never dialed, so a replica that names ids nobody runs costs an operation a lookup, no more, and
//! one whose named ids a lookup that completed does not find is not heard naming for ten minutes),
//! and the node stops trusting its table until a lookup again finds nobody new. In a network whose
//! tables are complete, answers name nobody, and an operation costs its replicas' requests. An
//! operation that could not start from the table may dial the entries that kept the table from
//! covering the key ([`unsettled`]: a peer that died and that no dial has found dead yet, or one
//! whose connections closed idle), so that the next ones near the key can.

use std::collections::HashSet;

use libp2p::PeerId;
use libp2p::kad::{KBucketDistance as Distance, KBucketKey};
use tokio::time::Instant;

/// Most fingerprints a replica reads from a hint: a neighbourhood holds k, and no more than
/// this (a Kademlia bucket's size) is ever needed.
pub(crate) const MAX_KNOWN: usize = 64;

/// The last 8 bytes of a peer id, as a request names the peers its asker knows. The peers an
/// asker knows are connected, so their ids are their keys (or a hash of them): a peer cannot
/// choose another's fingerprint for its own id more cheaply than by grinding 2^64 keys.
pub(crate) fn fingerprint(peer: &PeerId) -> u64 {
    let bytes = peer.to_bytes();
    let mut last = [0u8; 8];
    let n = bytes.len().min(8);
    last[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    u64::from_le_bytes(last)
}

/// The k closest peers to a key that one operation started from.
pub(crate) struct Neighbourhood {
    target: KBucketKey<Vec<u8>>,
    k: usize,
    /// The k closest, closest first.
    closest: Vec<(Distance, PeerId)>,
}

impl Neighbourhood {
    /// The neighbourhood of `target` (a Kademlia key's bytes) holding the k of `peers` closest
    /// to it (this node among them when it counts as a replica).
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
        Neighbourhood { target, k, closest }
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

    /// The peers of `named` (ids a replica named, at most k read) that belong among the k
    /// closest and are not there: not this node nor a member, and closer than the farthest
    /// (any, while there are fewer than k). Ids that do not parse are ignored.
    pub(crate) fn closer_named(&self, me: PeerId, named: &[Vec<u8>]) -> Vec<PeerId> {
        let full = self.closest.len() >= self.k;
        let farthest = self.closest.last().map(|(d, _)| *d);
        let ids = named.iter().take(self.k).filter_map(|id| PeerId::from_bytes(id).ok());
        ids.filter(|peer| {
            *peer != me
                && !self.closest.iter().any(|(_, p)| p == peer)
                && (!full
                    || farthest.is_some_and(|f| self.target.distance(&KBucketKey::from(*peer)) < f))
        })
        .collect()
    }
}

/// Whether operations may take a key's replicas from the routing table: trusted by a lookup
/// that found nobody new, distrusted by one that found somebody (a refresh's lookup only
/// ever distrusts) or by a replica's naming. (Answers of peers in full buckets are not
/// counted, and a lookup that heard from no other server leaves the trust as it was:
/// [`beyond_full_bucket`].)
/// A lookup that began before the last distrust vouches for nothing either way (a check in
/// flight does not undo a replica's naming, nor one stale lookup another's trust), and one
/// that heard from nobody leaves the table untrusted without counting as a distrust.
/// "Before" counts distrusts, not time: a lookup that began in the same instant as a
/// distrust, but before it, is stale (two instants of a clock can be equal, and are under
/// tokio's paused time).
#[derive(Debug, Default)]
pub(crate) struct Trust {
    trusted: bool,
    distrusts: u64,
}

/// When a lookup that may vouch for the table began: the instant (the servers connected
/// before it are those the table held) and how many distrusts of the table came before it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Began {
    pub(crate) at: Instant,
    distrusts: u64,
}

impl Trust {
    pub(crate) fn trusted(&self) -> bool {
        self.trusted
    }

    /// A lookup that vouches for the table begins `at`.
    pub(crate) fn began(&self, at: Instant) -> Began {
        Began { at, distrusts: self.distrusts }
    }

    /// A lookup that `began` completed: it heard from nobody (`None`), or `found` somebody
    /// the table lacked (`Some(true)`) or nobody (`Some(false)`).
    pub(crate) fn lookup(&mut self, began: Began, found: Option<bool>) {
        if began.distrusts < self.distrusts {
            return;
        }
        match found {
            None => self.trusted = false,
            Some(false) => self.trusted = true,
            Some(true) => self.distrust(),
        }
    }

    /// The table is not to be trusted from now on, until a lookup that begins after this
    /// finds nobody new.
    pub(crate) fn distrust(&mut self) {
        self.trusted = false;
        self.distrusts += 1;
    }
}

/// A live routing-table entry (a connected DHT server) as operations read it: its Kademlia
/// key's bytes (the hash of its id), its id and its [`fingerprint`], each computed once when the
/// table is read ([`Table`]) instead of once for every request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub(crate) key: [u8; 32],
    pub(crate) peer: PeerId,
    pub(crate) print: u64,
}

impl Entry {
    pub(crate) fn new(key: &KBucketKey<PeerId>) -> Entry {
        let peer = *key.preimage();
        Entry { key: hashed(key), peer, print: fingerprint(&peer) }
    }
}

/// A node's routing table as its operations read it: the live entries, the unsettled
/// entries' keys and each bucket's counts, read from Kademlia when first needed after the
/// table or the set of connected servers changed, and after each 5-s sweep (a walk over
/// Kademlia's buckets is also what applies the entries waiting for a place in a full
/// bucket). Reading the buckets and hashing their ids for every request cost about a tenth
/// of a 100-node network's CPU while it answered gets (docs/benchmarks.md).
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub(crate) live: Vec<Entry>,
    /// The entries that are neither live nor unreachable ([`Bucket::unreachable`]): not
    /// connected now (dead, its death not seen by a dial yet, or alive and idle), or
    /// connected and not identified yet.
    pub(crate) unsettled: Vec<Entry>,
    pub(crate) buckets: Vec<Bucket>,
}

impl Table {
    /// The `k` live entries closest to the Kademlia key whose bytes are `target`, closest
    /// first.
    pub(crate) fn closest(&self, target: &[u8; 32], k: usize) -> Vec<PeerId> {
        let mut near: Vec<([u8; 32], PeerId)> =
            self.live.iter().map(|e| (xor(&e.key, target), e.peer)).collect();
        if near.len() > k && k > 0 {
            near.select_nth_unstable(k - 1);
            near.truncate(k);
        }
        near.sort_unstable();
        near.into_iter().take(k).map(|(_, p)| p).collect()
    }

    /// Of `answered` (the peers a lookup heard from, at least one) and the live entries, those
    /// among the `k` closest to the Kademlia key whose bytes are `target`, closest first.
    ///
    /// When the table has `met` every peer near the key ([`table_met`]), the k closest are
    /// taken from the answers and the live entries, and, with `placeholders` (a lookup that
    /// timed out), every entry not found unreachable: an unsettled entry (a peer near the key
    /// that just left, or whose connection closed idle) keeps its place, given as kept, and no
    /// server beyond the k closest this node knows joins in it. (A lookup that completed heard
    /// from every peer near the key that answers: an unsettled entry closer than its answers
    /// is dead or out of reach, and takes no answer's place.) A put counts the kept places
    /// among its places without asking them, so that its quorum is one that a reader's sample
    /// meets (`ops::put_quorum`); ids ground near a key that joined
    /// this node's table and went quiet fail its puts for want of a quorum, until dials find
    /// them gone, rather than shrink them onto a few copies. (Giving them at most half of the
    /// places was tried: an unsettled entry may be a peer alive and idle, which a reader's
    /// lookup reaches, and servers beyond the k closest would then count in a put's quorum;
    /// docs/benchmarks.md, "Tables that missed a newcomer".)
    /// When the table has not met them, only live entries no farther than the farthest peer
    /// that answered join: the table may hold none of the key's closest, and its servers far
    /// from the key are no replicas a reader's lookup reaches.
    pub(crate) fn joined(
        &self,
        target: &[u8; 32],
        answered: &[PeerId],
        met: bool,
        placeholders: bool,
        k: usize,
    ) -> Places {
        let distance = |peer: &PeerId| xor(&hashed(&KBucketKey::from(*peer)), target);
        // (distance, peer, whether it only keeps its place)
        let mut near: Vec<([u8; 32], PeerId, bool)> =
            answered.iter().map(|p| (distance(p), *p, false)).collect();
        let Some(farthest) = near.iter().map(|(d, _, _)| *d).max() else {
            return Places::default();
        };
        let live = self.live.iter().map(|e| (xor(&e.key, target), e.peer, false));
        if met {
            near.extend(live);
            if placeholders {
                near.extend(self.unsettled.iter().map(|e| (xor(&e.key, target), e.peer, true)));
            }
        } else {
            near.extend(live.filter(|(d, _, _)| *d <= farthest));
        }
        // Closest first; one peer is one place, not kept when it answered or is live.
        near.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
        near.dedup_by_key(|(d, _, _)| *d);
        near.truncate(k);
        Places {
            kept: near.iter().filter(|(_, _, kept)| *kept).map(|(_, p, _)| *p).collect(),
            peers: near.into_iter().map(|(_, p, _)| p).collect(),
        }
    }
}

/// The k places closest to a key that a lookup's answers and the routing table give
/// ([`Table::joined`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Places {
    /// Every place's peer, closest first.
    pub(crate) peers: Vec<PeerId>,
    /// Those of them that only keep their place: table entries not connected when a lookup
    /// timed out, counted among a put's places (`ops::put_quorum`) and not asked.
    pub(crate) kept: Vec<PeerId>,
}

impl Places {
    /// The places' peers that are not only kept: those to ask, closest first.
    pub(crate) fn live(&self) -> Vec<PeerId> {
        self.peers.iter().filter(|p| !self.kept.contains(p)).copied().collect()
    }
}

/// The index of the bucket that holds keys at the distance of `a` from `b` (i for a distance
/// in [2^i, 2^(i+1))), as Kademlia's `Distance::ilog2`; `None` for the same key.
pub(crate) fn bucket_index(a: &[u8; 32], b: &[u8; 32]) -> Option<u32> {
    let d = xor(a, b);
    let first = d.iter().position(|byte| *byte != 0)?;
    Some(255 - (first as u32 * 8 + d[first].leading_zeros()))
}

/// The Kademlia key's bytes of `key` (its SHA-256).
pub(crate) fn hashed<T>(key: &KBucketKey<T>) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(key.hashed_bytes());
    bytes
}

/// The XOR distance of two keys' bytes; as big-endian bytes they order as the distances do.
pub(crate) fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// A replica's side: which of `live` (the entries of its routing table that are DHT servers
/// it is connected to) to name to an asker whose hint is `farthest` and `known`: those closer
/// to `target` than the farthest and not known to the asker, at most `k`, closest first.
/// A hint with more than [`MAX_KNOWN`] fingerprints (a linear scan of at most that many) or a
/// farthest that is no peer id gets nobody.
pub(crate) fn to_name(
    target: &[u8],
    farthest: &[u8],
    known: &[u64],
    asker: PeerId,
    live: &[Entry],
    k: usize,
) -> Vec<PeerId> {
    // A hint no honest asker sends is answered with nobody.
    if known.len() > MAX_KNOWN {
        return Vec::new();
    }
    let target = hashed(&KBucketKey::new(target));
    let bound = match farthest {
        [] => None,
        id => match PeerId::from_bytes(id) {
            Ok(p) => Some(xor(&target, &hashed(&KBucketKey::from(p)))),
            Err(_) => return Vec::new(),
        },
    };
    let mut near: Vec<([u8; 32], PeerId)> = live
        .iter()
        .filter_map(|e| {
            let d = xor(&e.key, &target);
            let wanted = bound.is_none_or(|b| d < b) && e.peer != asker;
            (wanted && !known.contains(&e.print)).then_some((d, e.peer))
        })
        .collect();
    near.sort_unstable();
    near.into_iter().take(k).map(|(_, p)| p).collect()
}

/// One bucket of a routing table: its index (bucket i holds the peers at distance
/// [2^i, 2^(i+1)) from this node), how many entries it has, how many of them are live
/// (connected DHT servers that identified themselves), and how many are unreachable (not
/// live, and the last dial to them failed: `Driver::unreachable`; or connected and
/// identified as no server of records).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    pub(crate) index: u32,
    pub(crate) entries: usize,
    pub(crate) live: usize,
    pub(crate) unreachable: usize,
    /// It was full when the table was read, and no refresh of it found it with room since
    /// (`Driver::refreshed`). Kademlia takes an entry out only when a dial reaches another
    /// peer at its last address; a bucket that lost one that way is taken as full still:
    /// lookups did not count the peers it turned away ([`beyond_full_bucket`]), and an
    /// attacker who filled it with its own ids could otherwise empty a place of it to have
    /// the table cover a range of keys with them. (Every lookup that did not count a peer
    /// read the table, so marked the bucket.)
    pub(crate) filled: bool,
}

impl Bucket {
    /// Whether the bucket is full (it holds `size` entries), or was ([`Bucket::filled`]): it
    /// may have turned peers away.
    pub(crate) fn full(&self, size: usize) -> bool {
        self.filled || self.entries >= size
    }
}

/// Whether a routing table of buckets of `size` holds every peer among the k closest to a key
/// in bucket `key_index` from this node, as far as it can tell: the buckets it would take them
/// from are not full (a full one may have turned peers away) and hold only live peers (an
/// entry that is not connected, or not identified yet, may be dead, or alive and closer than
/// the live ones: a lookup finds out) or unreachable ones (a lookup found out: this node
/// could not dial them). Kademlia keeps an unreachable peer until a newcomer needs its place
/// in a full bucket, and buckets of 64 seldom fill: counted as not live, a node that died
/// kept every read near it on a lookup for good. Counted as gone, a peer that is alive but
/// was unreachable for a moment is still found: the replicas asked name the closer peers
/// they are connected to and the asker lacks ([`to_name`]), and the operation then looks
/// the key up.
///
/// The peers closest to the key are those of the key's own bucket b (closer to the key than
/// this node is); then, all at the distance of this node, those of every bucket below b; then
/// those of b + 1, b + 2 and on. The buckets are walked in that order until k live peers are
/// counted, or all are walked (a network smaller than k). Whether the table has met the peers
/// in a bucket's range at all, no bucket can say: the node trusts its table only after a
/// lookup found nobody it did not hold ([`Trust`]).
pub(crate) fn table_covers(buckets: &[Bucket], key_index: u32, k: usize, size: usize) -> bool {
    let stops = |b: &Bucket| b.full(size) || b.live + b.unreachable < b.entries;
    walk(buckets, key_index, k, stops, |b| b.live)
}

/// Whether a routing table of buckets of `size` has met every peer among the k closest to a
/// key in bucket `key_index` from this node, as far as it can tell: as [`table_covers`], but
/// an entry that is not live counts (the table met it, whether or not it is connected now)
/// unless a dial found it unreachable. Only a full bucket, which may have turned peers away,
/// stops the walk. Which of a lookup's answers and the table's servers are a key's replicas
/// ([`Table::joined`]) asks this, not whether the table alone can give them.
pub(crate) fn table_met(buckets: &[Bucket], key_index: u32, k: usize, size: usize) -> bool {
    walk(buckets, key_index, k, |b| b.full(size), |b| b.entries - b.unreachable)
}

/// Whether a routing table of buckets of `size`, whose node's Kademlia key's bytes are `own`,
/// may have turned `peer` away: the bucket it would sit in is full (Kademlia keeps `size`
/// peers a bucket, and a newcomer waits for a dead entry's place). A lookup that hears from
/// such a peer tells nothing of the keys the table covers ([`table_covers`] never takes a
/// key's replicas from beyond a full bucket): in a network of more than about 2 x `size`
/// servers, the peers near most keys are in full buckets, and counting them as peers the
/// table lacked had every lookup of a far key distrust the table for the near ones.
pub(crate) fn beyond_full_bucket(
    buckets: &[Bucket],
    own: &[u8; 32],
    peer: &PeerId,
    size: usize,
) -> bool {
    let index = bucket_index(own, &hashed(&KBucketKey::from(*peer)));
    index.is_some_and(|i| buckets.iter().any(|b| b.index == i && b.full(size)))
}

/// Walks `buckets` for a key in bucket `key_index`, a rank of [`walk_rank`] at a time: false
/// at a rank with a bucket that `stops` the walk, true once the `counts` of the ranks walked
/// come to `k`, and at the end whether anything was counted (a network smaller than k).
fn walk(
    buckets: &[Bucket],
    key_index: u32,
    k: usize,
    stops: impl Fn(&Bucket) -> bool,
    counts: impl Fn(&Bucket) -> usize,
) -> bool {
    let rank = |b: &&Bucket| walk_rank(b.index, key_index);
    let mut walked: Vec<&Bucket> = buckets.iter().collect();
    walked.sort_by_key(rank);
    let mut counted = 0;
    for group in walked.chunk_by(|a, b| rank(a) == rank(b)) {
        if group.iter().any(|b| stops(b)) {
            return false;
        }
        counted += group.iter().map(|b| counts(b)).sum::<usize>();
        if counted >= k {
            return true;
        }
    }
    counted > 0
}

/// Where bucket `index` comes in [`table_covers`]'s walk for a key in bucket `key_index`: the
/// key's own bucket first, then every bucket below it together, then those above, nearest
/// first.
pub(crate) fn walk_rank(index: u32, key_index: u32) -> u32 {
    use std::cmp::Ordering;
    match index.cmp(&key_index) {
        Ordering::Equal => 0,
        Ordering::Less => 1,
        Ordering::Greater => 1 + index - key_index,
    }
}

/// The buckets that [`table_covers`] walks for a key in bucket `key_index` and that hold
/// entries neither live nor unreachable (a peer that died, its death not yet seen by a dial;
/// or one alive whose connections closed): a dial of each settles whether the table covers
/// the key (`Driver::probe_table`). The walk goes on until k live peers are counted. None
/// when a full bucket would end it before k peers could be counted, were every unsettled
/// entry before it live: no dial settles that.
pub(crate) fn unsettled(buckets: &[Bucket], key_index: u32, k: usize, size: usize) -> Vec<u32> {
    let rank = |b: &&Bucket| walk_rank(b.index, key_index);
    let mut walked: Vec<&Bucket> = buckets.iter().collect();
    walked.sort_by_key(rank);
    let (mut live, mut hopeful, mut unsettled) = (0, 0, Vec::new());
    for group in walked.chunk_by(|a, b| rank(a) == rank(b)) {
        if group.iter().any(|b| b.full(size)) {
            return if hopeful >= k { unsettled } else { Vec::new() };
        }
        let open = group.iter().filter(|b| b.live + b.unreachable < b.entries);
        unsettled.extend(open.map(|b| b.index));
        live += group.iter().map(|b| b.live).sum::<usize>();
        hopeful += group.iter().map(|b| b.entries - b.unreachable).sum::<usize>();
        if live >= k {
            break;
        }
    }
    unsettled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    fn bucket(index: u32, entries: usize, live: usize) -> Bucket {
        bucket_with(index, entries, live, 0)
    }

    fn bucket_with(index: u32, entries: usize, live: usize, unreachable: usize) -> Bucket {
        Bucket { index, entries, live, unreachable, filled: false }
    }

    #[test]
    fn a_table_covers_a_key_only_while_the_buckets_walked_are_live_and_not_full() {
        // Bucket 250 holds the key's closest; below it, peers at this node's distance.
        let table =
            [bucket(250, 8, 8), bucket(248, 6, 6), bucket(255, 64, 60), bucket(252, 10, 10)];
        // 8 + 6 + (251: none) + 10 = 24 >= 20 before the full bucket 255 is reached.
        assert!(table_covers(&table, 250, 20, 64));
        // Needing 30 reaches bucket 255, which is full: peers in its range may be missing.
        assert!(!table_covers(&table, 250, 30, 64));
        // A full bucket below the key's: any of the peers it dropped could be among the k.
        let table = [bucket(250, 8, 8), bucket(240, 64, 64)];
        assert!(!table_covers(&table, 250, 20, 64));
        // The key's own bucket full: closer peers may be missing.
        assert!(!table_covers(&[bucket(250, 64, 64)], 250, 20, 64));
        // A small network: every bucket has room, fewer than k peers in all.
        assert!(table_covers(&[bucket(255, 3, 3), bucket(254, 2, 2)], 200, 20, 64));
        // An entry that is not live (dead, idle, not identified yet) may be closer than the
        // live ones: a bucket walked with one does not cover.
        assert!(!table_covers(&[bucket(255, 40, 2)], 255, 20, 64));
        assert!(!table_covers(&[bucket(250, 8, 8), bucket(248, 6, 5)], 250, 20, 64));
        // ...unless k live peers were counted before it is reached.
        assert!(table_covers(&[bucket(250, 20, 20), bucket(248, 6, 5)], 250, 20, 64));
        assert!(!table_covers(&[], 255, 20, 64));
    }

    #[test]
    fn the_buckets_a_walk_finds_unsettled_are_those_up_to_k_live_peers() {
        let open =
            |index, entries, live| Bucket { index, entries, live, unreachable: 1, filled: false };
        // The key's bucket (250) holds 2 entries not settled, the bucket below it none; the
        // walk counts 20 live peers before bucket 255, which is not looked at.
        let table = [open(250, 13, 10), bucket(248, 10, 10), open(255, 40, 2)];
        assert!(!table_covers(&table, 250, 20, 64));
        assert_eq!(unsettled(&table, 250, 20, 64), vec![250]);
        // Needing more reaches 255 too.
        assert_eq!(unsettled(&table, 250, 30, 64), vec![250, 255]);
        // A full bucket before k live, were the unsettled entries live too: no dial settles
        // it. Were they, it might: 10 live, 2 unsettled and 8 more live below come to 20.
        let none: Vec<u32> = Vec::new();
        assert_eq!(unsettled(&[open(250, 13, 10), bucket(240, 64, 64)], 250, 20, 64), none);
        let table = [open(250, 13, 10), bucket(248, 8, 8), bucket(255, 64, 64)];
        assert_eq!(unsettled(&table, 250, 20, 64), vec![250]);
        assert_eq!(unsettled(&table, 250, 21, 64), none);
        // Settled buckets: nothing to dial (whether or not the table covers the key).
        assert_eq!(unsettled(&[bucket(250, 8, 8), bucket(248, 6, 6)], 250, 20, 64), none);
        let settled = [Bucket { index: 250, entries: 8, live: 5, unreachable: 3, filled: false }];
        assert_eq!(unsettled(&settled, 250, 20, 64), none);
    }

    #[test]
    fn a_table_covers_a_key_past_entries_a_dial_found_unreachable_and_no_others() {
        let with = bucket_with;
        // A node that died: its entry stays, and the dial to it failed.
        assert!(table_covers(&[with(250, 3, 2, 1)], 250, 20, 64));
        assert!(table_covers(&[with(250, 8, 8, 0), with(248, 6, 3, 3)], 250, 20, 64));
        // One entry neither live nor found unreachable (idle, not identified yet) still
        // stops it.
        assert!(!table_covers(&[with(250, 4, 2, 1)], 250, 20, 64));
        // Unreachable entries count toward no one: a bucket of only those covers nothing.
        assert!(!table_covers(&[with(255, 2, 0, 2)], 255, 20, 64));
        // Nor do they make room in a full bucket, which may have turned peers away.
        assert!(!table_covers(&[with(250, 64, 40, 24)], 250, 20, 64));
    }

    #[test]
    fn a_table_gives_kademlias_closest_and_bucket() {
        let all = peers(50);
        let table = Table {
            live: all.iter().map(|p| Entry::new(&(*p).into())).collect(),
            unsettled: Vec::new(),
            buckets: Vec::new(),
        };
        for target in [b"/a".to_vec(), b"/greeting".to_vec(), vec![0u8; 40]] {
            let key = KBucketKey::new(target.clone());
            let mut by_distance = all.clone();
            by_distance.sort_by_key(|p| key.distance(&KBucketKey::from(*p)));
            for k in [0, 1, 20, 50, 60] {
                assert_eq!(table.closest(&hashed(&key), k), by_distance[..k.min(50)]);
            }
            for p in &all {
                let peer = KBucketKey::from(*p);
                let index = bucket_index(&hashed(&peer), &hashed(&key));
                assert_eq!(index, peer.distance(&key).ilog2());
            }
            assert_eq!(bucket_index(&hashed(&key), &hashed(&key)), None);
        }
        // The lowest and highest buckets.
        let mut one = [0u8; 32];
        one[31] = 1;
        assert_eq!(bucket_index(&one, &[0; 32]), Some(0));
        assert_eq!(bucket_index(&[0xff; 32], &[0; 32]), Some(255));
    }

    #[test]
    fn a_lookups_answers_are_joined_by_the_tables_servers_only_near_the_key_unless_it_covers() {
        let all = peers(60);
        let (table_peers, others) = all.split_at(40);
        let table = Table {
            live: table_peers.iter().map(|p| Entry::new(&(*p).into())).collect(),
            unsettled: Vec::new(),
            buckets: Vec::new(),
        };
        let key = KBucketKey::new(b"/joined".to_vec());
        let target = hashed(&key);
        let distance = |p: &PeerId| key.distance(&KBucketKey::from(*p));
        let by_distance = |mut peers: Vec<PeerId>| {
            peers.sort_by_key(distance);
            peers.dedup();
            peers
        };
        // A lookup heard from the table's closest and third closest servers to the key, and
        // from the peers the table lacks that are closer than that third.
        let held = by_distance(table_peers.to_vec());
        let farthest = distance(&held[2]);
        let lacked = others.iter().filter(|p| distance(p) < farthest).copied();
        let answered: Vec<PeerId> = lacked.chain([held[0], held[2]]).collect();
        // Covered: the k closest of both.
        let both = by_distance(answered.iter().chain(table_peers).copied().collect());
        let covered = table.joined(&target, &answered, true, true, 20);
        assert_eq!((covered.peers, covered.kept), (both[..20].to_vec(), Vec::new()));
        // Not covered: the second closest server joins, the servers beyond the third stay out.
        let got = table.joined(&target, &answered, false, true, 20).peers;
        let mut near = answered.clone();
        near.push(held[1]);
        assert_eq!(got, by_distance(near), "{got:?}");
        // k bounds it, and a lookup that heard from nobody gives nobody.
        assert_eq!(table.joined(&target, &answered, true, true, 4).peers, both[..4]);
        assert_eq!(table.joined(&target, &[], true, true, 20), Places::default());
    }

    #[test]
    fn an_unsettled_entry_near_the_key_keeps_its_place_among_the_k_closest() {
        let all = peers(30);
        let key = KBucketKey::new(b"/unsettled".to_vec());
        let target = hashed(&key);
        let mut by_distance = all.clone();
        by_distance.sort_by_key(|p| key.distance(&KBucketKey::from(*p)));
        // The second and fifth closest left (not connected now); the closest answered.
        let left = [by_distance[1], by_distance[4]];
        let table = Table {
            live: all
                .iter()
                .filter(|p| !left.contains(p))
                .map(|p| Entry::new(&(*p).into()))
                .collect(),
            unsettled: left.iter().map(|p| Entry::new(&(*p).into())).collect(),
            buckets: Vec::new(),
        };
        let answered = [by_distance[0]];
        // Met: the k closest known are the first 10; the 8 live of them are to be asked, the
        // 2 that left keep their places, and the 11th and 12th stay out.
        let live_of_ten: Vec<PeerId> =
            by_distance[..10].iter().filter(|p| !left.contains(p)).copied().collect();
        let ten = table.joined(&target, &answered, true, true, 10);
        assert_eq!((ten.peers.as_slice(), ten.kept.as_slice()), (&by_distance[..10], &left[..]));
        assert_eq!(ten.live(), live_of_ten);
        // A lookup that completed: the unsettled entries take no place (the 11th and 12th
        // live join).
        let live_of_twelve: Vec<PeerId> =
            by_distance[..12].iter().filter(|p| !left.contains(p)).copied().collect();
        let completed = table.joined(&target, &answered, true, false, 10);
        assert_eq!((completed.peers, completed.kept), (live_of_twelve, Vec::new()));
        // A peer that answered and is unsettled in the table (its connection closed since)
        // is to be asked, in one place.
        let answered = [by_distance[0], by_distance[1]];
        let with_it = table.joined(&target, &answered, true, true, 10);
        assert_eq!((with_it.peers.as_slice(), with_it.kept), (&by_distance[..10], vec![left[1]]));
        // Not met: the unsettled entries count for nothing, and no server beyond the farthest
        // answer joins.
        let not_met = table.joined(&target, &answered, false, true, 10);
        assert_eq!((not_met.peers.as_slice(), not_met.kept), (&by_distance[..2], Vec::new()));
    }

    #[test]
    fn a_lookup_that_began_before_the_last_distrust_vouches_for_nothing() {
        // One instant for all: the order of the calls is what counts, as under paused time.
        let at = Instant::now();
        let mut trust = Trust::default();
        assert!(!trust.trusted(), "a new node trusts nothing");
        trust.lookup(trust.began(at), Some(false));
        assert!(trust.trusted(), "a lookup found nobody new");
        // A replica names a peer: a check that began before and found nobody new does not
        // undo it; one that began after it, in the same instant, does.
        let check = trust.began(at);
        trust.distrust();
        let after = trust.began(at);
        trust.lookup(check, Some(false));
        assert!(!trust.trusted(), "a stale check undid a distrust");
        trust.lookup(after, Some(false));
        assert!(trust.trusted());
        // Two rechecks distrusted one after the other; the first one's lookup, stale, found
        // the peer named: it does not distrust again (which would make the second's lookup
        // stale too).
        let mut trust = Trust::default();
        trust.distrust();
        let first = trust.began(at);
        trust.distrust();
        let second = trust.began(at);
        trust.lookup(first, Some(true));
        trust.lookup(second, Some(false));
        assert!(trust.trusted(), "the second recheck's lookup trusts the table");
        // A lookup that heard from nobody leaves it untrusted, and counts as no distrust.
        trust.lookup(second, None);
        assert!(!trust.trusted());
        trust.lookup(second, Some(false));
        assert!(trust.trusted());
        // One that found somebody distrusts it from then on.
        trust.lookup(second, Some(true));
        assert!(!trust.trusted());
        trust.lookup(second, Some(false));
        assert!(!trust.trusted(), "began before the last distrust");
    }

    #[test]
    fn a_table_has_met_a_keys_neighbourhood_unless_a_full_bucket_is_walked_before_k_entries() {
        let with = bucket_with;
        // Entries not live count as met (the table does not cover the key: a lookup's
        // answers may be joined, but the table alone gives no replica set).
        let table = [with(250, 8, 6, 0), with(248, 14, 10, 1)];
        assert!(table_met(&table, 250, 20, 64));
        assert!(!table_covers(&table, 250, 20, 64));
        // Entries found unreachable do not: 8 + 13 = 21 reaches 21, not 22 (a full bucket
        // comes next).
        let table = [table[0], table[1], with(255, 64, 64, 0)];
        assert!(table_met(&table, 250, 21, 64));
        assert!(!table_met(&table, 250, 22, 64));
        assert!(table_met(&[with(250, 8, 6, 0)], 250, 20, 64), "a network smaller than k");
        let full = [with(250, 8, 6, 0), with(248, 10, 10, 0), with(255, 64, 64, 0)];
        assert!(!table_met(&full, 250, 20, 64), "a full bucket before 20 entries");
        assert!(table_met(&full, 250, 18, 64), "18 entries before the full bucket");
        assert!(!table_met(&[], 250, 20, 64));
    }

    #[test]
    fn a_peer_in_a_full_bucket_may_have_been_turned_away_and_no_other() {
        let me = PeerId::random();
        let own = hashed(&KBucketKey::from(me));
        let index = |p: &PeerId| bucket_index(&own, &hashed(&KBucketKey::from(*p)));
        let far = std::iter::repeat_with(PeerId::random).find(|p| index(p) == Some(255));
        let near = std::iter::repeat_with(PeerId::random).find(|p| index(p) < Some(254));
        let (far, near) = (far.expect("a far peer"), near.expect("a near peer"));
        let near_index = index(&near).expect("not me");
        // Bucket 255 full (64 of 64, whether live or not); the near peer's bucket holds 3.
        let table = [bucket(255, 64, 10), bucket(near_index, 3, 3)];
        assert!(beyond_full_bucket(&table, &own, &far, 64));
        assert!(!beyond_full_bucket(&table, &own, &near, 64));
        assert!(!beyond_full_bucket(&table, &own, &far, 65), "64 of 65 is not full");
        assert!(!beyond_full_bucket(&[bucket(255, 63, 63)], &own, &far, 64));
        // A bucket the table has no entry in is empty, and the node itself is in none.
        assert!(!beyond_full_bucket(&[bucket(255, 64, 64)], &own, &near, 64));
        assert!(!beyond_full_bucket(&table, &own, &me, 64));
        // A bucket that was full and lost an entry is taken as full still: no key is covered
        // past it, and its peers count for nothing.
        let emptied = Bucket { filled: true, ..bucket(255, 63, 63) };
        assert!(beyond_full_bucket(&[emptied], &own, &far, 64));
        let mut table = vec![bucket(250, 20, 20), emptied];
        assert!(!table_covers(&table, 255, 20, 64), "a key in bucket 255");
        assert!(!table_met(&table, 255, 20, 64));
        assert!(unsettled(&table, 255, 20, 64).is_empty());
        assert!(table_covers(&table, 254, 20, 64), "bucket 250 covers a key in 254 before it");
        table[1] = bucket(255, 63, 63);
        assert!(table_covers(&table, 255, 20, 64), "63 live, never full, cover a key");
        assert!(table_met(&table, 255, 20, 64));
    }

    #[test]
    fn replicas_name_the_closer_peers_an_asker_lacks_and_the_asker_sees_them() {
        let me = PeerId::random();
        let target = b"/greeting".to_vec();
        let all = peers(40);
        let key = KBucketKey::new(target.clone());
        let mut by_distance = all.clone();
        by_distance.sort_by_key(|p| key.distance(&KBucketKey::from(*p)));
        // The neighbourhood knows the 5th to 24th closest: the 4 closest are unknown.
        let hood = Neighbourhood::new(target.clone(), 20, by_distance[4..24].iter().copied());
        let (farthest, known) = hood.hint();
        assert_eq!(farthest, by_distance[23].to_bytes());
        assert_eq!(known.len(), 20);
        // A replica connected to everyone names exactly the 4 closer ones it does not know.
        let replica = by_distance[10];
        let entries =
            |ps: &[PeerId]| -> Vec<Entry> { ps.iter().map(|p| Entry::new(&(*p).into())).collect() };
        let keys = entries(&all);
        let named = to_name(&target, &farthest, &known, replica, &keys, 20);
        assert_eq!(named, by_distance[..4]);
        // Only the entries given (the live ones: connected DHT servers) are named.
        let live: Vec<PeerId> = all.iter().copied().filter(|p| *p != by_distance[1]).collect();
        let named_live = to_name(&target, &farthest, &known, replica, &entries(&live), 20);
        assert_eq!(named_live, [by_distance[0], by_distance[2], by_distance[3]]);
        // The byte order of XOR distances is Kademlia's order of distances.
        let t = hashed(&key);
        let mut by_bytes = all.clone();
        by_bytes.sort_by_key(|p| xor(&hashed(&KBucketKey::from(*p)), &t));
        assert_eq!(by_bytes, by_distance);
        // The asker sees that its neighbourhood lacks them.
        let ids = |ps: &[PeerId]| ps.iter().map(|p| p.to_bytes()).collect::<Vec<_>>();
        assert_eq!(hood.closer_named(me, &ids(&named)), named);
        // Not: members, farther peers, this node, or bytes that are no id.
        assert!(hood.closer_named(me, &ids(&by_distance[4..8])).is_empty());
        assert!(hood.closer_named(me, &ids(&by_distance[30..])).is_empty());
        assert!(hood.closer_named(me, &[me.to_bytes(), b"junk".to_vec()]).is_empty());
        // A complete neighbourhood: a replica names nobody.
        let hood = Neighbourhood::new(target.clone(), 20, by_distance[..20].iter().copied());
        let (farthest, known) = hood.hint();
        assert!(to_name(&target, &farthest, &known, replica, &keys, 20).is_empty());
        // Hints no honest asker sends get nobody named.
        let many = vec![0u64; MAX_KNOWN + 1];
        assert!(to_name(&target, &farthest, &many, replica, &keys, 20).is_empty());
        assert!(to_name(&target, b"junk", &[], replica, &keys, 20).is_empty());
        // While it holds fewer than k, any peer it lacks is closer than its farthest.
        let small = Neighbourhood::new(target.clone(), 20, by_distance[..3].iter().copied());
        assert_eq!(small.hint().0, Vec::<u8>::new());
        assert_eq!(small.closer_named(me, &ids(&by_distance[39..])), by_distance[39..]);
    }
}
