//! Kademlia's dials of peers whose dials fail slowly, held back for a while.
//!
//! Kademlia keeps a peer whose dials fail in its table until a newcomer needs its place in a
//! full bucket, and buckets of 64 seldom fill: a node that died stays in every table, peers
//! near it keep naming it in their answers, and every lookup near it asks it again. On
//! loopback such a dial is refused at once. On the internet a dead peer's address mostly
//! drops packets (a host switched off, a phone that left its network, a NAT mapping that
//! expired), and the dial waits for the setup timeout (`transport::SETUP_TIMEOUT`, 10 s; a
//! LAN host that is gone, for ARP's 3 s), past a lookup's deadline (5 s): every lookup whose
//! closest peers included it waited to its end.
//!
//! [`Held`] wraps Kademlia. Once a dial of a peer failed after waiting [`SLOW_FAILURE`] or
//! more with an attempt that went out, while this node received bytes from others (so it
//! waited on the peer, not on its own network: a silent outage keeps connections up for
//! minutes) and had a DHT server connected (`Driver::dial_failed` says so, [`Held::hold`]),
//! Kademlia's next dials of it fail at once, with no packet sent, for [`HOLD_FIRST`], twice as
//! long after each slow failure again, at most [`HOLD_MOST`]; Kademlia takes each as a failed
//! dial, and its lookup goes on with the next peer. A dial refused at once costs a lookup
//! nothing and holds nothing. A connection to the peer, either way, ends its hold
//! ([`Held::release`]); an application's walk of the table (`Node::bootstrap`) ends them all,
//! and so does this node's return from being stranded ([`Held::release_all`]).
//!
//! Only Kademlia's dials are held: an operation's request to a replica, an application's dial
//! (`Node::dial`), AutoNAT's dial-back and the relay client's are not. Holds apply unless this
//! node is stranded (a dial failed while no DHT server was connected, and none has been
//! identified since: its own network may be what fails); a quiet node whose connections all
//! closed idle is not stranded, and its first lookup passes over held peers too. At most
//! [`MAX_HOLDS`] peers are held.
//!
//! The cost of a wrong hold (a peer whose every address timed out for a moment, and is back):
//! this node's lookups do not reach it until its hold ends or it connects, so operations near
//! it do without it as a replica meanwhile (the table counts it as gone too,
//! `nearby::table_covers`); when it comes back its own walks reach the peers near it. The cost
//! of a peer dead for good: a lookup near it waits once per hold, and holds double up to
//! 16 min. A lookup that asks a held peer while another dial of it is under way (a request of
//! an operation) counts it as failed instead of waiting for that dial.

use std::collections::HashMap;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::kad;
use libp2p::swarm::behaviour::DialFailure;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, DialError, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use tokio::time::Instant;

/// A failed dial that waited this long or more holds its peer: a refusal comes within a
/// round trip or two; a timeout, or a LAN host's ARP failure, takes seconds.
pub(crate) const SLOW_FAILURE: Duration = Duration::from_secs(2);
/// How long Kademlia's dials of a peer are held after its first slow failure: more than a
/// lookup's time, so the lookups right after a peer died pass over it.
pub(crate) const HOLD_FIRST: Duration = Duration::from_secs(30);
/// The longest hold. A peer dead for good costs one lookup near it a wait this often.
pub(crate) const HOLD_MOST: Duration = Duration::from_secs(16 * 60);
/// The most peers held at once (a few dozen bytes each). Past it, a peer that fails is not
/// held: its dials wait, as they did without holds.
pub(crate) const MAX_HOLDS: usize = 1024;

type Kad = kad::Behaviour<kad::store::MemoryStore>;

/// Kademlia, its dials of peers that could not be reached held back (the module's docs). It
/// derefs to Kademlia.
pub(crate) struct Held {
    kad: Kad,
    holds: HashMap<PeerId, Hold>,
    /// Whether this node is stranded (the driver says: a dial failed while no DHT server was
    /// connected, and none has been identified since): holds apply only while it is not.
    stranded: bool,
}

/// A peer's dials failed `failures` times since it was last connected; Kademlia's are held
/// until `until`.
#[derive(Debug, Clone, Copy)]
struct Hold {
    failures: u32,
    until: Instant,
}

/// Why a dial failed without a packet sent.
#[derive(Debug, thiserror::Error)]
#[error("its last dial failed {failures} time(s) in a row: held until {left:?} from now")]
pub(crate) struct HeldBack {
    failures: u32,
    left: Duration,
}

impl Held {
    pub(crate) fn new(kad: Kad) -> Held {
        Held { kad, holds: HashMap::new(), stranded: false }
    }

    /// A dial of `peer` failed slowly at `now` with an attempt that went out: Kademlia's dials
    /// of it are held, for twice as long as the last time.
    pub(crate) fn hold(&mut self, peer: PeerId, now: Instant) {
        if self.holds.len() >= MAX_HOLDS && !self.holds.contains_key(&peer) {
            self.forget_old(now);
            if self.holds.len() >= MAX_HOLDS {
                return;
            }
        }
        let hold = self.holds.entry(peer).or_insert(Hold { failures: 0, until: now });
        hold.failures = hold.failures.saturating_add(1);
        hold.until = now + hold_after(hold.failures);
    }

    /// `peer` connected: its dials are no longer held.
    pub(crate) fn release(&mut self, peer: &PeerId) {
        self.holds.remove(peer);
    }

    /// Every peer may be dialed again: an application asked for a walk of the table
    /// (`Node::bootstrap`, as after a change of this node's network), or this node has a DHT
    /// server connected again after it had none.
    pub(crate) fn release_all(&mut self) {
        self.holds.clear();
    }

    /// Forgets the holds that ended [`HOLD_MOST`] ago or more: a peer that fails after that
    /// starts again at [`HOLD_FIRST`].
    pub(crate) fn forget_old(&mut self, now: Instant) {
        self.holds.retain(|_, hold| hold.until + HOLD_MOST > now);
    }

    /// Whether this node is stranded: its own network may be what fails.
    pub(crate) fn set_stranded(&mut self, stranded: bool) {
        self.stranded = stranded;
    }

    /// Whether a dial of `peer` at `now` is held back, and why.
    fn held(&self, peer: &PeerId, now: Instant) -> Option<HeldBack> {
        if self.stranded {
            return None;
        }
        let hold = self.holds.get(peer)?;
        let left = hold.until.checked_duration_since(now).filter(|left| !left.is_zero())?;
        Some(HeldBack { failures: hold.failures, left })
    }
}

/// How long Kademlia's dials are held after the `failures`th failed dial in a row.
fn hold_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    HOLD_FIRST.saturating_mul(1 << doublings).min(HOLD_MOST)
}

impl std::ops::Deref for Held {
    type Target = Kad;
    fn deref(&self) -> &Kad {
        &self.kad
    }
}

impl std::ops::DerefMut for Held {
    fn deref_mut(&mut self) -> &mut Kad {
        &mut self.kad
    }
}

impl NetworkBehaviour for Held {
    type ConnectionHandler = THandler<Kad>;
    type ToSwarm = kad::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.kad.handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.kad.handle_established_inbound_connection(connection_id, peer, local_addr, remote_addr)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.kad.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.kad.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.kad.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.kad.on_connection_handler_event(peer_id, connection_id, event)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<kad::Event, THandlerInEvent<Self>>> {
        loop {
            let event = std::task::ready!(self.kad.poll(cx));
            let ToSwarm::Dial { opts } = &event else { return Poll::Ready(event) };
            let Some(peer) = opts.get_peer_id() else { return Poll::Ready(event) };
            let Some(held) = self.held(&peer, Instant::now()) else { return Poll::Ready(event) };
            tracing::debug!(%peer, reason = %held, "a dial of an unreachable peer held back");
            // Kademlia is told as the swarm tells it of a dial a behaviour denied: its
            // queries count the peer as failed and go on.
            let error = DialError::Denied { cause: ConnectionDenied::new(held) };
            let connection_id = opts.connection_id();
            let failure = DialFailure { peer_id: Some(peer), error: &error, connection_id };
            self.kad.on_swarm_event(FromSwarm::DialFailure(failure));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_one(failures: u32) -> (Held, PeerId, Instant) {
        let peer = PeerId::random();
        let kad = Kad::new(peer, kad::store::MemoryStore::new(peer));
        let (mut held, now) = (Held::new(kad), Instant::now());
        for _ in 0..failures {
            held.hold(peer, now);
        }
        (held, peer, now)
    }

    #[test]
    fn holds_are_bounded_and_forgotten_a_while_after_they_end() {
        let (mut held, first, now) = held_one(2);
        assert_eq!(held.holds[&first].until, now + HOLD_FIRST * 2);
        for _ in 1..MAX_HOLDS {
            held.hold(PeerId::random(), now);
        }
        let over = PeerId::random();
        held.hold(over, now);
        assert!(!held.holds.contains_key(&over), "past the bound while all are recent");
        held.hold(first, now);
        assert_eq!(held.holds[&first].failures, 3, "a held peer's failures still count");
        // The first ends at 2 min; the others at 30 s, forgotten 16 min later.
        let later = now + HOLD_FIRST + HOLD_MOST;
        held.hold(over, later);
        assert_eq!(held.holds.len(), 2, "the old ones went to make room");
        assert_eq!(held.holds[&first].failures, 3, "not yet forgotten");
        held.forget_old(now + HOLD_FIRST * 4 + HOLD_MOST);
        assert!(!held.holds.contains_key(&first));
        held.release(&over);
        assert!(held.holds.is_empty());
    }

    /// Polls `held` until it has nothing to say; returns what it said: whether it asked
    /// for a dial of `peer`, and the lookups that ended.
    fn drain(held: &mut Held, peer: PeerId) -> (bool, Vec<kad::QueryId>) {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let (mut dialed, mut finished) = (false, Vec::new());
        while let Poll::Ready(event) = held.poll(&mut cx) {
            match event {
                ToSwarm::Dial { opts } => dialed |= opts.get_peer_id() == Some(peer),
                ToSwarm::GenerateEvent(kad::Event::OutboundQueryProgressed { id, .. }) => {
                    finished.push(id)
                }
                _ => {}
            }
        }
        (dialed, finished)
    }

    #[tokio::test]
    async fn a_held_peer_fails_kademlias_lookup_at_once_and_only_while_held() {
        let (mut held, _, now) = held_one(0);
        let other = PeerId::random();
        held.add_address(&other, "/memory/1".parse().expect("address"));
        held.hold(other, now);
        // Stranded: this node's own network may be what failed.
        held.set_stranded(true);
        let first = held.get_closest_peers(vec![1]);
        assert_eq!(drain(&mut held, other), (true, vec![]), "dialed while stranded");
        held.set_stranded(false);
        let second = held.get_closest_peers(vec![2]);
        // The failure Kademlia is told of ends both lookups (its only peer failed).
        let (dialed, mut finished) = drain(&mut held, other);
        finished.sort_by_key(|id| format!("{id:?}"));
        let mut both = vec![first, second];
        both.sort_by_key(|id| format!("{id:?}"));
        assert!(!dialed && finished == both, "the lookups ended without a dial: {finished:?}");
        held.release(&other);
        held.get_closest_peers(vec![3]);
        assert_eq!(drain(&mut held, other), (true, vec![]), "dialed once released");
    }

    #[test]
    fn a_hold_doubles_with_each_failure_up_to_its_most() {
        assert_eq!(hold_after(1), HOLD_FIRST);
        assert_eq!(hold_after(2), HOLD_FIRST * 2);
        assert_eq!(hold_after(5), HOLD_FIRST * 16);
        assert_eq!(hold_after(6), HOLD_MOST);
        assert_eq!(hold_after(u32::MAX), HOLD_MOST);
    }
}
