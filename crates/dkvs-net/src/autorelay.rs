//! A relay reservation for a node that AutoNAT finds unreachable, so that others can still
//! dial it (through the relay, then directly where DCUtR punches through the NAT).
//!
//! The choice: one reservation at a time, on a connected peer that offers relaying (its
//! identify lists the relay's hop protocol) and that this node dialed on a direct address, so
//! the address is known to work from here. A relay that refuses or drops the reservation is
//! not asked again for [`RETRY_AFTER`]; another one is asked at once. The reservation is
//! given up once AutoNAT finds the node reachable and a peer has dialed it directly: an
//! AutoNAT server's "I dialed you" alone may be a lie.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// How long a relay that refused a reservation, or misbehaved, is passed over.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(600);
/// How long a relay whose connection closed under the reservation is passed over (a phone
/// moving between networks, a relay restarting): a moment, not ten minutes.
pub(crate) const RETRY_AFTER_CLOSE: Duration = Duration::from_secs(15);
/// The most addresses one reservation may give this node; a relay that hands out more is
/// dropped (the swarm keeps every listen address a relay reports, and identify sends them on).
pub(crate) const MAX_ADDRS: usize = 32;
/// The shortest time between two renewals of a reservation: a relay that sets expiries
/// shorter makes this node renew continually, and is dropped.
pub(crate) const MIN_RENEWAL: Duration = Duration::from_secs(60);

/// The relays this node may reserve on and the reservation it holds or asked for.
#[derive(Default)]
pub(crate) struct AutoRelay {
    /// Connected peers whose identify lists the relay's hop protocol.
    hops: HashSet<PeerId>,
    /// The reservation asked for or held: its listener and its relay.
    current: Option<(ListenerId, PeerId)>,
    /// Addresses the current reservation reported, and when it was last accepted.
    addrs: usize,
    accepted: Option<Instant>,
    /// Relays passed over until then.
    refused: HashMap<PeerId, Instant>,
}

impl AutoRelay {
    /// Notes whether a connected peer offers relaying (from its latest identify).
    pub(crate) fn identified(&mut self, peer: PeerId, offers_relay: bool) {
        if offers_relay {
            self.hops.insert(peer);
        } else {
            self.hops.remove(&peer);
        }
    }

    /// The peer is no longer connected.
    pub(crate) fn disconnected(&mut self, peer: &PeerId) {
        self.hops.remove(peer);
    }

    /// The reservation's listener, if one was asked for.
    pub(crate) fn listener(&self) -> Option<ListenerId> {
        self.current.map(|(id, _)| id)
    }

    /// The relay asked or holding the reservation.
    pub(crate) fn relay(&self) -> Option<PeerId> {
        self.current.map(|(_, relay)| relay)
    }

    /// The listener `id` closed: if it was the reservation's, its relay is passed over (long
    /// when it refused, `refused`; a moment when the connection merely closed) and another
    /// may be asked.
    pub(crate) fn closed(&mut self, id: ListenerId, refused: bool, now: Instant) {
        if let Some((current, relay)) = self.current
            && current == id
        {
            self.current = None;
            let wait = if refused { RETRY_AFTER } else { RETRY_AFTER_CLOSE };
            self.refused.insert(relay, now + wait);
        }
    }

    /// The reservation's listener reported another address; false when that is more than a
    /// relay may give ([`MAX_ADDRS`]).
    pub(crate) fn address_added(&mut self) -> bool {
        self.addrs += 1;
        self.addrs <= MAX_ADDRS
    }

    /// `relay` accepted a reservation (or renewed it); false when it renews too often
    /// ([`MIN_RENEWAL`]).
    pub(crate) fn accepted(&mut self, relay: PeerId, renewal: bool, now: Instant) -> bool {
        if self.relay() != Some(relay) {
            return true;
        }
        let too_soon = renewal && self.accepted.is_some_and(|at| now < at + MIN_RENEWAL);
        self.accepted = Some(now);
        !too_soon
    }

    /// The reservation is given up (the node is reachable, or the relay misbehaved): no
    /// relay is to blame. Its listener, if one was asked for.
    pub(crate) fn dropped(&mut self) -> Option<ListenerId> {
        self.current.take().map(|(id, _)| id)
    }

    /// A reservation was asked of `relay` through listener `id`.
    pub(crate) fn asked(&mut self, id: ListenerId, relay: PeerId) {
        self.current = Some((id, relay));
        self.addrs = 0;
        self.accepted = None;
    }

    /// A relay that could not even be asked (the address was refused at once).
    pub(crate) fn refuse(&mut self, relay: PeerId, now: Instant) {
        self.refused.insert(relay, now + RETRY_AFTER);
    }

    /// The circuit address to listen on for a reservation, when one is wanted and a relay is
    /// at hand: a connected relay not passed over, on the first direct address this node
    /// dialed it at (`dialed`: peer, remote address, dialed by this node).
    pub(crate) fn pick<'a>(
        &mut self,
        dialed: impl IntoIterator<Item = (&'a PeerId, &'a Multiaddr, bool)>,
        now: Instant,
    ) -> Option<(PeerId, Multiaddr)> {
        if self.current.is_some() {
            return None;
        }
        self.refused.retain(|_, until| *until > now);
        let mut candidates: Vec<(PeerId, Multiaddr)> = dialed
            .into_iter()
            .filter(|(peer, addr, by_us)| {
                *by_us
                    && self.hops.contains(peer)
                    && !self.refused.contains_key(peer)
                    && !crate::node::is_relayed(addr)
            })
            .map(|(peer, addr, _)| (*peer, circuit(addr, *peer)))
            .collect();
        // At random: a peer id chosen to sort first must not capture every phone, and phones
        // spread over the relays there are.
        candidates.sort();
        candidates.dedup_by_key(|(peer, _)| *peer);
        if candidates.is_empty() {
            return None;
        }
        let pick = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            Instant::now(),
        ) as usize
            % candidates.len();
        Some(candidates.swap_remove(pick))
    }
}

/// `addr` of `relay` as a circuit to listen on: `<addr>/p2p/<relay>/p2p-circuit`.
fn circuit(addr: &Multiaddr, relay: PeerId) -> Multiaddr {
    let mut base: Multiaddr = addr.iter().take_while(|p| !matches!(p, Protocol::P2p(_))).collect();
    base.push(Protocol::P2p(relay));
    base.push(Protocol::P2pCircuit);
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Multiaddr {
        text.parse().expect("multiaddr")
    }

    #[test]
    fn a_relay_is_picked_only_among_dialed_direct_hops() {
        let now = Instant::now();
        let (hop, plain, inbound) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut relays = AutoRelay::default();
        for peer in [hop, inbound] {
            relays.identified(peer, true);
        }
        relays.identified(plain, false);
        let direct = addr("/ip4/198.18.0.1/tcp/4040");
        let relayed = addr(&format!("/ip4/198.18.0.2/tcp/4040/p2p/{plain}/p2p-circuit"));
        let seen = [(&plain, &direct, true), (&inbound, &direct, false), (&hop, &relayed, true)];
        assert_eq!(relays.pick(seen, now), None, "no hop dialed on a direct address");

        let seen = [(&plain, &direct, true), (&hop, &direct, true)];
        let (relay, circuit) = relays.pick(seen, now).expect("the hop");
        assert_eq!(relay, hop);
        assert_eq!(circuit, addr(&format!("/ip4/198.18.0.1/tcp/4040/p2p/{hop}/p2p-circuit")));
    }

    #[test]
    fn a_relay_that_closed_the_reservation_waits_and_another_is_asked() {
        let now = Instant::now();
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut relays = AutoRelay::default();
        relays.identified(a, true);
        relays.identified(b, true);
        let at = addr(&format!("/ip4/198.18.0.1/udp/4040/quic-v1/p2p/{a}"));
        let bt = addr("/ip4/198.18.0.2/udp/4040/quic-v1");
        let seen = || [(&a, &at, true), (&b, &bt, true)];
        let (first, circuit) = relays.pick(seen(), now).expect("a relay");
        assert_eq!(circuit.iter().filter(|p| matches!(p, Protocol::P2p(_))).count(), 1);
        let id = ListenerId::next();
        relays.asked(id, first);
        assert_eq!(relays.pick(seen(), now), None, "one reservation at a time");

        relays.closed(ListenerId::next(), true, now);
        assert_eq!(relays.listener(), Some(id), "another listener's end changes nothing");
        relays.closed(id, true, now);
        let (second, _) = relays.pick(seen(), now).expect("the other relay");
        assert_ne!(second, first);
        relays.asked(ListenerId::next(), second);
        relays.closed(relays.listener().expect("asked"), true, now);
        assert_eq!(relays.pick(seen(), now), None, "both passed over");
        assert!(relays.pick(seen(), now + RETRY_AFTER).is_some(), "until the retry");

        relays.disconnected(&a);
        relays.disconnected(&b);
        assert_eq!(relays.pick(seen(), now + RETRY_AFTER), None, "gone peers relay nothing");
    }

    /// One relay `a` identified, at `at`, and asked for a reservation (listener `id`).
    fn asking_one() -> (AutoRelay, PeerId, Multiaddr, ListenerId) {
        let a = PeerId::random();
        let mut relays = AutoRelay::default();
        relays.identified(a, true);
        let id = ListenerId::next();
        relays.asked(id, a);
        (relays, a, addr("/ip4/198.18.0.1/tcp/4040"), id)
    }

    #[test]
    fn giving_up_the_reservation_blames_no_relay() {
        let now = Instant::now();
        let (mut relays, a, at, id) = asking_one();
        assert_eq!(relays.dropped(), Some(id));
        relays.closed(id, true, now);
        assert_eq!(relays.pick([(&a, &at, true)], now).map(|(p, _)| p), Some(a));
    }

    #[test]
    fn a_closed_connection_costs_a_moment_a_greedy_relay_ten_minutes() {
        let now = Instant::now();
        let (mut relays, a, at, id) = asking_one();
        relays.closed(id, false, now);
        assert_eq!(relays.pick([(&a, &at, true)], now), None);
        assert!(relays.pick([(&a, &at, true)], now + RETRY_AFTER_CLOSE).is_some());

        let now = now + RETRY_AFTER_CLOSE;
        relays.asked(ListenerId::next(), a);
        assert!((0..MAX_ADDRS).all(|_| relays.address_added()));
        assert!(!relays.address_added(), "one address too many");
        assert!(relays.accepted(a, false, now));
        assert!(relays.accepted(a, true, now + MIN_RENEWAL), "a renewal at the minimum");
        assert!(!relays.accepted(a, true, now + MIN_RENEWAL * 3 / 2), "renewing too soon");
        assert!(relays.accepted(PeerId::random(), true, now), "another relay's is not ours");
    }
}
