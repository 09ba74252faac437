//! The table probe: which entries of the routing table an operation that had to look its key
//! up dials, so that the next operations near the key take their replicas from the table
//! (`Driver::probe_table`). A lookup dials only the peers it asks; entries that died farther out
//! in the buckets the table's walk needs stay unknown, and every operation near them looks its
//! key up again ([`crate::nearby::unsettled`] names those buckets). The driver gathers the entries
//! there that are neither live nor known unreachable, and not connected, held or banned; this
//! module says which of them to dial, how, and when again:
//!
//! - only while the application keeps this node busy: it asked for an operation (a put, a get,
//!   a watch) between a second and a minute ago ([`Probes::busy`]). A node's first call in a
//!   minute, with the operations it runs within its first second (a compare-and-swap's read
//!   and write), is no activity that later operations near the key will follow: a quiet node
//!   or a phone, asked for something every few minutes, would dial for nothing, each time
//!   finding the connections of the last closed idle again. The operation that probes may be
//!   any of the node's, a watch's read again or a republish among them;
//! - as many as the connection limit has room for, [`MAX_PROBES`] at most, the closest in the
//!   walk's order first ([`Probes::choose`]);
//! - [`MAX_PROBE_ADDRESSES`] addresses of each, those off this host and its networks first:
//!   every node lists its loopback and private ones too, and a Sybil can list junk ones. A dial
//!   that did not try all of a peer's addresses marks nothing unreachable
//!   ([`Probes::ended`]): an entry listing three junk addresses or more stays unsettled, and
//!   takes one of a probe's dials every 16 min at most (the wait below);
//! - a peer dialed so waits [`probe_wait`] before the next such dial, 1 min doubling to
//!   [`PROBE_MOST`] while it stays unsettled; a peer the connection limit closed is not dialed
//!   so for [`PROBE_MOST`] ([`Probes::trimmed`]): the probe must not reopen what the limit
//!   trimmed. Identified as a DHT server, a peer starts over ([`Probes::live`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

/// How long after a probe its peer is not probed again, twice as long after each probe that
/// left it unsettled, at most [`PROBE_MOST`]; and the span of the recent activity that makes a
/// node probe.
pub(crate) const PROBE_AGAIN: Duration = Duration::from_secs(60);
pub(crate) const PROBE_MOST: Duration = Duration::from_secs(16 * 60);
/// The most peers one operation's probe dials, and the most addresses of each.
pub(crate) const MAX_PROBES: usize = 16;
pub(crate) const MAX_PROBE_ADDRESSES: usize = 2;
/// How long ago at least, and within the last [`PROBE_AGAIN`], the application must have asked
/// for an operation for this node to probe: one application call (a compare-and-swap's read
/// and write, `put_next`'s) is not activity that later operations near the key will follow.
pub(crate) const PROBE_ACTIVE: Duration = Duration::from_secs(1);

/// How long a peer of the table is not probed again after its `times`th probe since it was
/// last live: [`PROBE_AGAIN`], doubling, [`PROBE_MOST`] at most.
pub(crate) fn probe_wait(times: u32) -> Duration {
    PROBE_AGAIN.saturating_mul(1 << times.saturating_sub(1).min(4)).min(PROBE_MOST)
}

/// An entry of the routing table the probe may dial.
#[derive(Clone)]
pub(crate) struct Candidate<O> {
    /// Where it comes in the walk (smaller first): its bucket's rank, then its distance.
    pub(crate) order: O,
    pub(crate) peer: PeerId,
    pub(crate) addresses: Vec<Multiaddr>,
}

/// A dial the probe makes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Dial {
    pub(crate) peer: PeerId,
    pub(crate) addresses: Vec<Multiaddr>,
    /// Whether these are all the addresses the entry lists: only then does a failure say the
    /// peer is unreachable.
    pub(crate) all: bool,
}

/// What the probe remembers.
#[derive(Default)]
pub(crate) struct Probes {
    /// Peers probed: how many times since they were last live, and when they may be probed
    /// again; those the connection limit closed count `u32::MAX` times.
    probed: HashMap<PeerId, (u32, Instant)>,
    /// When the application asked for operations in the last [`PROBE_AGAIN`], a
    /// [`PROBE_ACTIVE`] apart at least.
    asked: VecDeque<Instant>,
    /// Probes under way that did not try every address of their peer.
    partial: HashSet<ConnectionId>,
}

impl Probes {
    /// The application asked for an operation (a put, a get, a watch) at `now`.
    pub(crate) fn asked(&mut self, now: Instant) {
        while self.asked.front().is_some_and(|at| now >= *at + PROBE_AGAIN) {
            self.asked.pop_front();
        }
        if self.asked.back().is_none_or(|last| now >= *last + PROBE_ACTIVE) {
            self.asked.push_back(now);
        }
    }

    /// Whether the application asked for an operation between [`PROBE_ACTIVE`] and
    /// [`PROBE_AGAIN`] before `now`.
    pub(crate) fn busy(&self, now: Instant) -> bool {
        self.asked.iter().any(|at| now >= *at + PROBE_ACTIVE && now < *at + PROBE_AGAIN)
    }

    /// The dials for `candidates` at `now`, with `room` left under the connection limit: those
    /// whose wait is over, closest first, [`MAX_PROBES`] and `room` at most, each with
    /// [`MAX_PROBE_ADDRESSES`] addresses at most, those off this host and its networks first.
    pub(crate) fn choose<O: Ord>(
        &self,
        mut candidates: Vec<Candidate<O>>,
        room: usize,
        now: Instant,
    ) -> Vec<Dial> {
        candidates.retain(|c| self.probed.get(&c.peer).is_none_or(|(_, next)| now >= *next));
        candidates.sort_by(|a, b| a.order.cmp(&b.order));
        let dial = |mut c: Candidate<O>| {
            // Stable: the entry's order within each kind.
            c.addresses.sort_by_key(crate::node::is_local);
            let all = c.addresses.len() <= MAX_PROBE_ADDRESSES;
            c.addresses.truncate(MAX_PROBE_ADDRESSES);
            Dial { peer: c.peer, addresses: c.addresses, all }
        };
        candidates.into_iter().take(MAX_PROBES.min(room)).map(dial).collect()
    }

    /// `dial` went out at `now` as `connection`: its peer waits for its next probe.
    pub(crate) fn dialed(&mut self, dial: &Dial, connection: ConnectionId, now: Instant) {
        if !dial.all {
            self.partial.insert(connection);
        }
        let (times, next) = self.probed.entry(dial.peer).or_insert((0, now));
        *times = times.saturating_add(1);
        *next = now + probe_wait(*times);
    }

    /// `connection`, a dial, opened or failed: whether a failure of it may mark its peer
    /// unreachable (it was no probe that left addresses untried).
    pub(crate) fn ended(&mut self, connection: ConnectionId) -> bool {
        !self.partial.remove(&connection)
    }

    /// `peer` identified as a DHT server: its next probe, once it is unsettled again, is its
    /// first.
    pub(crate) fn live(&mut self, peer: &PeerId) {
        self.probed.remove(peer);
    }

    /// The connection limit closed `peer`, an entry of the routing table, at `now`: it is not
    /// probed for [`PROBE_MOST`].
    pub(crate) fn trimmed(&mut self, peer: PeerId, now: Instant) {
        self.probed.insert(peer, (u32::MAX, now + PROBE_MOST));
    }

    /// Forgets peers whose wait ended [`PROBE_MOST`] ago or more: such a peer's next probe is
    /// its first.
    pub(crate) fn forget_old(&mut self, now: Instant) {
        self.probed.retain(|_, (_, next)| now.saturating_duration_since(*next) < PROBE_MOST);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(order: u32, addresses: &[&str]) -> Candidate<u32> {
        let addresses = addresses.iter().map(|a| a.parse().expect("multiaddr")).collect();
        Candidate { order, peer: PeerId::random(), addresses }
    }

    #[test]
    fn a_peer_probed_and_still_unsettled_waits_twice_as_long_each_time() {
        let waits: Vec<u64> = (1..=7).map(|times| probe_wait(times).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 960, 960]);
        assert_eq!(probe_wait(u32::MAX), PROBE_MOST);
    }

    #[test]
    fn a_node_probes_once_asked_for_operations_over_a_second_within_a_minute() {
        let mut probes = Probes::default();
        let t0 = Instant::now();
        assert!(!probes.busy(t0), "never asked");
        // One call's operations within its first second (a compare-and-swap's read and
        // write) are one ask.
        probes.asked(t0);
        probes.asked(t0 + Duration::from_millis(900));
        assert_eq!(probes.asked.len(), 1);
        assert!(!probes.busy(t0 + Duration::from_millis(999)), "one call is no activity");
        assert!(probes.busy(t0 + PROBE_ACTIVE), "a call a second ago, and the one now");
        assert!(probes.busy(t0 + PROBE_AGAIN - Duration::from_millis(1)));
        assert!(!probes.busy(t0 + PROBE_AGAIN), "a minute later, quiet again");
        // Calls a second apart are kept, closer ones not: a burst is one entry.
        let t1 = t0 + PROBE_AGAIN * 3;
        for ms in 0..100 {
            probes.asked(t1 + Duration::from_millis(ms));
        }
        assert_eq!(probes.asked.len(), 1, "the old calls dropped, the burst one entry");
        assert!(!probes.busy(t1 + Duration::from_millis(999)));
        assert!(probes.busy(t1 + PROBE_ACTIVE));
    }

    #[test]
    fn a_probe_dials_what_the_connection_limit_has_room_for_closest_first() {
        let probes = Probes::default();
        let now = Instant::now();
        // Farthest first, as the table lists them.
        let all: Vec<Candidate<u32>> =
            (0..40).rev().map(|i| candidate(i, &["/ip4/8.8.8.8/tcp/1"])).collect();
        let chosen = |room| -> Vec<u32> {
            let copies = all.iter().map(|c| Candidate { addresses: vec![], ..*c }).collect();
            let order = |d: Dial| all.iter().find(|c| c.peer == d.peer).expect("known").order;
            probes.choose(copies, room, now).into_iter().map(order).collect()
        };
        assert_eq!(chosen(5), [0, 1, 2, 3, 4], "the room, closest first");
        assert_eq!(chosen(1000), (0..16).collect::<Vec<_>>(), "16 at most");
        assert!(chosen(0).is_empty(), "no room");
        // Entries that wait after their probe take none of the room.
        let mut probes = Probes::default();
        let closest = all.iter().filter(|c| c.order < 5).cloned();
        for (i, dial) in probes.choose(closest.collect(), 16, now).iter().enumerate() {
            probes.dialed(dial, ConnectionId::new_unchecked(i), now);
        }
        let copies = all.iter().map(|c| Candidate { addresses: vec![], ..*c }).collect();
        let order = |d: Dial| all.iter().find(|c| c.peer == d.peer).expect("known").order;
        let next: Vec<u32> = probes.choose(copies, 16, now).into_iter().map(order).collect();
        assert_eq!(next, (5..21).collect::<Vec<_>>(), "the next 16 closest");
    }

    #[test]
    fn a_probe_dials_two_addresses_off_this_host_first_and_says_when_it_left_some_out() {
        let probes = Probes::default();
        let now = Instant::now();
        let listed = [
            "/ip4/127.0.0.1/tcp/4001",
            "/ip4/192.168.1.7/tcp/4001",
            "/ip4/203.0.113.9/tcp/4001",
            "/ip6/2001:db8::1/udp/4001/quic-v1",
            "/ip4/10.0.0.2/tcp/4001",
        ];
        let dials = probes.choose(vec![candidate(0, &listed)], 16, now);
        let want: Vec<Multiaddr> =
            [listed[2], listed[3]].iter().map(|a| a.parse().expect("ok")).collect();
        assert_eq!(dials[0].addresses, want, "public ones first, in the entry's order");
        assert!(!dials[0].all, "three were left out");
        // A peer on this host alone is dialed there, in the entry's order.
        let dials = probes.choose(vec![candidate(0, &listed[..2])], 16, now);
        let want: Vec<Multiaddr> = listed[..2].iter().map(|a| a.parse().expect("ok")).collect();
        assert_eq!(dials[0].addresses, want);
        assert!(dials[0].all, "every address tried");
        let dials = probes.choose(vec![candidate(0, &listed[..3])], 16, now);
        assert_eq!(dials[0].addresses[0], listed[2].parse::<Multiaddr>().expect("ok"));
        assert!(!dials[0].all, "one of three left out");
        // A dial that left addresses out marks nothing unreachable when it fails; one that
        // tried them all does.
        let mut probes = Probes::default();
        let (partial, whole) = (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2));
        let dial = probes.choose(vec![candidate(0, &listed)], 16, now).remove(0);
        probes.dialed(&dial, partial, now);
        let dial = probes.choose(vec![candidate(0, &listed[..1])], 16, now).remove(0);
        probes.dialed(&dial, whole, now);
        assert!(!probes.ended(partial), "partial");
        assert!(probes.ended(partial), "forgotten once ended");
        assert!(probes.ended(whole));
    }

    #[test]
    fn a_peer_waits_after_its_probe_and_one_the_limit_closed_waits_16_min() {
        let mut probes = Probes::default();
        let t0 = Instant::now();
        let (probed, trimmed) = (candidate(0, &["/ip4/8.8.8.8/tcp/1"]), candidate(1, &[]));
        let (p, t) = (probed.peer, trimmed.peer);
        let dial = probes.choose(vec![probed], 16, t0).remove(0);
        probes.dialed(&dial, ConnectionId::new_unchecked(1), t0);
        probes.trimmed(t, t0);
        let chosen = |probes: &Probes, at| -> Vec<PeerId> {
            let again = vec![
                Candidate { order: 0, peer: p, addresses: vec![] },
                Candidate { order: 1, peer: t, addresses: vec![] },
            ];
            probes.choose(again, 16, at).into_iter().map(|d| d.peer).collect()
        };
        assert!(chosen(&probes, t0 + PROBE_AGAIN - Duration::from_millis(1)).is_empty());
        assert_eq!(chosen(&probes, t0 + PROBE_AGAIN), [p], "a minute after its probe");
        assert_eq!(chosen(&probes, t0 + PROBE_MOST), [p, t], "16 min after the trim");
        // Identified as a server, a peer starts over; left alone, it is forgotten.
        let mut again = Probes::default();
        let dial = again.choose(vec![candidate(0, &[])], 16, t0).remove(0);
        for i in 0..3 {
            again.dialed(&dial, ConnectionId::new_unchecked(i), t0);
        }
        assert_eq!(again.probed[&dial.peer], (3, t0 + probe_wait(3)));
        again.live(&dial.peer);
        assert!(again.probed.is_empty(), "live: its next probe is its first");
        again.dialed(&dial, ConnectionId::new_unchecked(4), t0);
        let next = t0 + PROBE_AGAIN;
        again.forget_old(next + PROBE_MOST - Duration::from_millis(1));
        assert_eq!(again.probed.len(), 1, "kept until 16 min after its wait ended");
        again.forget_old(next + PROBE_MOST);
        assert!(again.probed.is_empty());
    }

    #[test]
    fn an_entry_that_never_settles_is_probed_every_16_min_at_most() {
        let mut probes = Probes::default();
        let (mut at, mut waits) = (Instant::now(), Vec::new());
        let entry = candidate(0, &["/ip4/8.8.8.8/tcp/1"]);
        for i in 0..7 {
            if i > 0 {
                let early = probes.choose(vec![entry.clone()], 16, at - Duration::from_millis(1));
                assert!(early.is_empty(), "not before its wait ended");
            }
            let dial = probes.choose(vec![entry.clone()], 16, at).remove(0);
            probes.dialed(&dial, ConnectionId::new_unchecked(i), at);
            let next = probes.probed[&entry.peer].1;
            waits.push((next - at).as_secs());
            probes.forget_old(next);
            at = next;
        }
        assert_eq!(waits, [60, 120, 240, 480, 960, 960, 960]);
        // A peer the limit closed, probed again 16 min later, waits 16 min after that too;
        // a trim of a peer probed before sets its wait to 16 min whatever it was.
        probes.trimmed(entry.peer, at);
        let later = at + PROBE_MOST;
        let dial = probes.choose(vec![entry.clone()], 16, later).remove(0);
        probes.dialed(&dial, ConnectionId::new_unchecked(9), later);
        assert_eq!(probes.probed[&entry.peer], (u32::MAX, later + PROBE_MOST));
        let fresh = candidate(1, &[]);
        let dial = probes.choose(vec![fresh.clone()], 16, at).remove(0);
        probes.dialed(&dial, ConnectionId::new_unchecked(10), at);
        probes.trimmed(fresh.peer, at);
        assert_eq!(probes.probed[&fresh.peer], (u32::MAX, at + PROBE_MOST));
    }
}
