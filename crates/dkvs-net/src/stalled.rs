//! Kademlia's requests to peers it is connected to: not waited on for long when a peer
//! answers nothing.
//!
//! A peer that stopped answering while its connections stay open (a process the machine
//! stopped, a suspended phone, a host that hangs) is asked like any other, and Kademlia waits
//! 10 s for each of its answers (its `peer_timeout`, which libp2p-kad 0.49 does not let anyone
//! set): every lookup that asked it waited to its deadline (5 s) and ended with the answers it
//! had, which may be far from the key (testnet-plan 5p).
//!
//! [`Answers`] times Kademlia's requests to each peer and the peer's answers. A peer with
//! requests outstanding that has answered none of them for [`Answers::patience`] (four times
//! the median time of this node's last 16 answers, four times the peer's own slowest answer,
//! and [`SLOW_FAILURE`] at least: a slow link slows every answer, a slow peer only its own) is
//! given up on: [`crate::held::Held`] tells Kademlia it failed, as it does of a dial it gave
//! up on, and the lookups waiting on it go on without it. Its connection stays. Its late
//! answers are dropped by those lookups, and tell how slow it is; a later lookup asks it
//! again, and waits on it as long again.
//!
//! Nothing is given up before a peer answered one of this node's requests (a node on a slow
//! link would give up on its first ones), nor while this node is stranded (its own network
//! may be what is slow). Not timed: the requests Kademlia hands a connection as it opens (to a
//! peer a lookup asked to dial; the dial's wait is [`crate::held`]'s): a peer that answers
//! nothing right after it connected still holds those lookups to their deadline. A peer that
//! answers some requests and not others is not given up on while it answers: a liar can still
//! hold a lookup to its deadline, as it can by answering slowly once (which lengthens its own
//! patience); it cannot slow anyone else's.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use libp2p::PeerId;
use libp2p::kad::QueryId;
use tokio::time::Instant;

use crate::held::SLOW_FAILURE;

/// How many times as long as answers take lately a lookup waits on a peer's.
const PATIENCE_FACTOR: u32 = 4;
/// How many of the last answers tell how long answers take.
const ANSWER_SAMPLES: usize = 16;
/// A request given up on is forgotten this long after it was sent, answered or not
/// (Kademlia's own requests end within 10 s; one whose connection closed while others of
/// its peer stay open is never answered).
const ASKED_KEPT: Duration = Duration::from_secs(30);

/// The median of the last few of some times.
#[derive(Debug, Default)]
pub(crate) struct Recent<const N: usize> {
    times: VecDeque<Duration>,
    median: Option<Duration>,
}

impl<const N: usize> Recent<N> {
    /// Counts `took`, forgetting the oldest past `N`.
    pub(crate) fn push(&mut self, took: Duration) {
        if self.times.len() == N {
            self.times.pop_front();
        }
        self.times.push_back(took);
        let mut sorted: Vec<Duration> = self.times.iter().copied().collect();
        sorted.sort_unstable();
        self.median = sorted.get(sorted.len() / 2).copied();
    }

    /// The median of the last `N` (none counted yet: unknown).
    pub(crate) fn median(&self) -> Option<Duration> {
        self.median
    }

    /// The last counted.
    #[cfg(test)]
    pub(crate) fn last(&self) -> Option<Duration> {
        self.times.back().copied()
    }
}

/// Kademlia's requests outstanding, and how long its peers take to answer (the module's
/// docs).
#[derive(Default)]
pub(crate) struct Answers {
    /// Requests not answered yet, by peer and lookup (Kademlia sends a peer one request a
    /// lookup).
    asked: HashMap<(PeerId, QueryId), Asked>,
    /// The peers asked since they connected.
    peers: HashMap<PeerId, Peer>,
    /// How long the last answers took.
    times: Recent<ANSWER_SAMPLES>,
}

/// A request outstanding.
#[derive(Debug, Clone, Copy)]
struct Asked {
    at: Instant,
    /// Whether its peer was given up on since (Kademlia's lookups went on without it).
    given_up: bool,
}

/// A peer asked since it connected.
#[derive(Debug, Clone, Copy)]
struct Peer {
    /// Its requests outstanding and not given up on.
    waiting: usize,
    /// Since when it has answered none of them: its last answer, or the first of them.
    silent_since: Instant,
    /// Its slowest answer since it connected.
    slowest: Duration,
}

impl Answers {
    /// Kademlia sent `peer` a request for `lookup` at `now`.
    pub(crate) fn asked(&mut self, peer: PeerId, lookup: QueryId, now: Instant) {
        let was = self.asked.insert((peer, lookup), Asked { at: now, given_up: false });
        let entry = self.peers.entry(peer).or_insert(Peer {
            waiting: 0,
            silent_since: now,
            slowest: Duration::ZERO,
        });
        if entry.waiting == 0 {
            entry.silent_since = now;
        }
        if !was.is_some_and(|was| !was.given_up) {
            entry.waiting += 1;
        }
    }

    /// `peer` answered `lookup`'s request at `now` (`answered`), or the request failed (a
    /// stream that could not open or broke, Kademlia's own timeout).
    pub(crate) fn ended(&mut self, peer: PeerId, lookup: QueryId, answered: bool, now: Instant) {
        let asked = self.asked.remove(&(peer, lookup));
        let Some(entry) = self.peers.get_mut(&peer) else { return };
        if asked.is_some_and(|asked| !asked.given_up) {
            entry.waiting -= 1;
        }
        if !answered {
            return;
        }
        entry.silent_since = now;
        if let Some(asked) = asked {
            let took = now.saturating_duration_since(asked.at);
            entry.slowest = entry.slowest.max(took);
            self.times.push(took);
        }
    }

    /// `peer`'s last connection closed: Kademlia's lookups count it failed themselves.
    pub(crate) fn closed(&mut self, peer: PeerId) {
        if self.peers.remove(&peer).is_some() {
            self.asked.retain(|(asked, _), _| *asked != peer);
        }
    }

    /// How long a lookup waits on `peer`'s answer: [`PATIENCE_FACTOR`] times the median of
    /// the last [`ANSWER_SAMPLES`] answers and times the peer's slowest, [`SLOW_FAILURE`] at
    /// least; unknown before any peer answered.
    fn patience(&self, peer: &Peer) -> Option<Duration> {
        let lately = self.times.median()?.max(peer.slowest);
        Some((lately * PATIENCE_FACTOR).max(SLOW_FAILURE))
    }

    /// The peers that answered none of their requests outstanding for their patience at
    /// `now`, with how long they have been silent. Each is given up on: its requests no
    /// longer count until a new one is sent.
    pub(crate) fn give_up(&mut self, now: Instant) -> Vec<(PeerId, Duration)> {
        self.asked.retain(|_, asked| !asked.given_up || now < asked.at + ASKED_KEPT);
        let mut stalled = Vec::new();
        for (peer, entry) in &self.peers {
            let silent = now.saturating_duration_since(entry.silent_since);
            let late = self.patience(entry).is_some_and(|patience| silent >= patience);
            if entry.waiting > 0 && late {
                stalled.push((*peer, silent));
            }
        }
        for (peer, _) in &stalled {
            self.peers.get_mut(peer).expect("a peer asked").waiting = 0;
            for ((asked, _), request) in &mut self.asked {
                request.given_up |= asked == peer;
            }
        }
        stalled
    }

    /// When the next peer is given up on, unless it answers.
    pub(crate) fn next(&self) -> Option<Instant> {
        let waiting = self.peers.values().filter(|entry| entry.waiting > 0);
        waiting.filter_map(|entry| Some(entry.silent_since + self.patience(entry)?)).min()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Waker;

    use libp2p::kad;
    use libp2p::swarm::{ConnectionId, NetworkBehaviour, ToSwarm};

    use super::*;
    use crate::held::tests::{Woken, closed, established, events, with_peers};
    use crate::held::{Held, KadOut};

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// A node connected to `peers` DHT servers, the only peers in its table.
    fn connected_to(peers: usize) -> (Held, Vec<PeerId>) {
        let (mut held, peers) = with_peers(peers);
        for peer in &peers {
            established(&mut held, *peer, true);
        }
        (held, peers)
    }

    /// Polls `held` until it has nothing to say: the peers Kademlia sent a request, and the
    /// lookups that ended.
    fn drain(held: &mut Held) -> (Vec<PeerId>, Vec<QueryId>) {
        drain_waking(held, futures::task::noop_waker_ref())
    }

    fn drain_waking(held: &mut Held, waker: &Waker) -> (Vec<PeerId>, Vec<QueryId>) {
        let (mut asked, mut ended) = (Vec::new(), Vec::new());
        for event in events(held, waker) {
            match event {
                ToSwarm::NotifyHandler { peer_id, .. } => asked.push(peer_id),
                ToSwarm::GenerateEvent(kad::Event::OutboundQueryProgressed { id, .. }) => {
                    ended.push(id)
                }
                _ => {}
            }
        }
        (asked, ended)
    }

    /// `peer` answers `lookup`'s request, naming nobody.
    fn answer(held: &mut Held, peer: PeerId, lookup: QueryId) {
        let event = KadOut::FindNodeRes { closer_peers: Vec::new(), query_id: lookup };
        held.on_connection_handler_event(peer, ConnectionId::new_unchecked(7), event);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_stops_waiting_on_a_peer_that_answers_nothing_and_wakes_for_it() {
        let (mut held, peers) = connected_to(2);
        let (answers, silent) = (peers[0], peers[1]);
        let lookup = held.get_closest_peers(vec![1]);
        assert_eq!(drain(&mut held).0.len(), 2, "both asked");
        tokio::time::advance(ms(10)).await;
        answer(&mut held, answers, lookup);
        // Answers take 10 ms here: the lookup waits SLOW_FAILURE on the other, from when it
        // was asked.
        tokio::time::advance(SLOW_FAILURE - ms(11)).await;
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        assert_eq!(drain_waking(&mut held, &waker), (vec![], vec![]), "still waits");
        assert!(!woken.woken());
        tokio::time::advance(ms(1)).await;
        assert!(woken.woken(), "woken when it gives up");
        assert_eq!(drain(&mut held), (vec![], vec![lookup]), "went on without the peer");
        // Its connection stays. Its answer, 2.5 s after it was asked, tells how slow it is:
        // the next lookup waits four times as long on it, and SLOW_FAILURE on the other.
        tokio::time::advance(ms(500)).await;
        answer(&mut held, silent, lookup);
        let next = held.get_closest_peers(vec![2]);
        assert_eq!(drain(&mut held).0.len(), 2, "both asked again");
        tokio::time::advance(ms(10)).await;
        answer(&mut held, answers, next);
        assert_eq!(held.wrapper_mut().answers_mut().times.median(), Some(ms(10)));
        tokio::time::advance(ms(2500) * PATIENCE_FACTOR - ms(11)).await;
        assert_eq!(drain(&mut held), (vec![], vec![]), "waited as long as its own answers take");
        tokio::time::advance(ms(1)).await;
        assert_eq!(drain(&mut held), (vec![], vec![next]));
    }

    #[tokio::test(start_paused = true)]
    async fn no_peer_is_given_up_before_any_answered_nor_while_stranded() {
        let (mut held, peers) = connected_to(1);
        let lookup = held.get_closest_peers(vec![1]);
        assert_eq!(drain(&mut held).0, peers);
        tokio::time::advance(SLOW_FAILURE * 2).await;
        // How long answers take here is unknown (on a slow link, each would be given up).
        assert_eq!(drain(&mut held), (vec![], vec![]), "given up before any peer answered");
        // Answers take 10 ms here (another lookup's), but this node is stranded: its own
        // network may be what is slow.
        held.wrapper_mut().answers_mut().times.push(ms(10));
        held.set_stranded(true);
        assert_eq!(drain(&mut held), (vec![], vec![]), "given up while stranded");
        held.set_stranded(false);
        assert_eq!(drain(&mut held), (vec![], vec![lookup]), "given up once not stranded");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_is_waited_on_from_its_last_answer_and_a_closed_one_is_forgotten() {
        let (mut held, peers) = connected_to(1);
        let peer = peers[0];
        held.wrapper_mut().answers_mut().times.push(ms(10));
        let first = held.get_closest_peers(vec![1]);
        drain(&mut held);
        tokio::time::advance(ms(300)).await;
        let second = held.get_closest_peers(vec![2]);
        drain(&mut held);
        // It answers the first at 400 ms: the second's wait counts from then (it would have
        // ended at 2.3 s).
        tokio::time::advance(ms(100)).await;
        answer(&mut held, peer, first);
        assert_eq!(drain(&mut held), (vec![], vec![first]));
        tokio::time::advance(SLOW_FAILURE - ms(1)).await;
        assert_eq!(drain(&mut held), (vec![], vec![]), "given up though it answered lately");
        tokio::time::advance(ms(1)).await;
        assert_eq!(drain(&mut held), (vec![], vec![second]));
        // A request outstanding when the peer's last connection closed: Kademlia counts it
        // failed itself, and nothing of the peer is kept.
        let third = held.get_closest_peers(vec![3]);
        drain(&mut held);
        closed(&mut held, peer);
        assert_eq!(drain(&mut held), (vec![], vec![third]));
        let answers = held.wrapper_mut().answers_mut();
        assert!(answers.asked.is_empty() && answers.peers.is_empty());
        assert_eq!(answers.next(), None);
    }

    #[test]
    fn the_median_of_the_last_few() {
        let mut recent = Recent::<3>::default();
        assert_eq!(recent.median(), None);
        let ms = Duration::from_millis;
        for took in [ms(5), ms(1), ms(9)] {
            recent.push(took);
        }
        assert_eq!(recent.median(), Some(ms(5)));
        // The oldest (5) goes.
        recent.push(ms(2));
        assert_eq!((recent.median(), recent.last()), (Some(ms(2)), Some(ms(2))));
    }
}
