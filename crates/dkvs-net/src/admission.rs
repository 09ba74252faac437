//! Inbound handshakes in flight, bounded per network.
//!
//! A connection costs its listener a Noise handshake (a Diffie-Hellman and a signature check)
//! and a file descriptor before it has a peer id, and a silent one holds both for the setup
//! timeout (20 s). Without a bound, one host opening connections and never finishing them
//! runs the node out of descriptors: nobody else can connect. So at most
//! [`crate::Config::max_pending_per_network`] inbound connections from one network may be
//! in their handshake at once; more are refused as they arrive, before any handshake work.
//! A network is the one of the per-network budgets ([`Subnet`]: an IPv4 /24, an IPv6 /48,
//! one relay); a host on the local network is its own; this machine is not bounded (a
//! testnet of many nodes on loopback joins through one of them at once). An honest peer's
//! handshake takes a round trip or two, so the bound only ever refuses floods; a refused
//! peer dials again later, as after any failed dial.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};

use crate::defence::Subnet;

/// Where an inbound connection comes from, as far as the bound is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Origin {
    Network(Subnet),
    LocalHost(IpAddr),
}

impl Origin {
    /// `None` for this machine (and for transports without addresses).
    fn of(remote: &Multiaddr) -> Option<Origin> {
        if let Some(network) = Subnet::of(remote) {
            return Some(Origin::Network(network));
        }
        let ip = remote.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
            Protocol::Ip6(ip) => Some(IpAddr::V6(ip).to_canonical()),
            _ => None,
        })?;
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(Origin::LocalHost(ip))
    }
}

/// Bounds the inbound connections in their handshake per network; refuses no other.
pub(crate) struct Behaviour {
    per_network: usize,
    pending: HashMap<ConnectionId, Origin>,
    counts: HashMap<Origin, usize>,
    refused: u64,
}

impl Behaviour {
    pub(crate) fn new(per_network: usize) -> Behaviour {
        Behaviour {
            per_network: per_network.max(1),
            pending: HashMap::new(),
            counts: HashMap::new(),
            refused: 0,
        }
    }

    /// Inbound connections refused since the node started, for being over the bound.
    pub(crate) fn refused(&self) -> u64 {
        self.refused
    }

    fn done(&mut self, connection_id: ConnectionId) {
        let Some(origin) = self.pending.remove(&connection_id) else { return };
        if let Some(count) = self.counts.get_mut(&origin) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&origin);
            }
        }
    }
}

/// The refusal, as the swarm reports it.
#[derive(Debug, thiserror::Error)]
#[error("{count} inbound connections from {origin:?} are already in their handshake")]
struct TooManyPending {
    origin: Origin,
    count: usize,
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(origin) = Origin::of(remote_addr) else { return Ok(()) };
        let count = self.counts.entry(origin).or_default();
        if *count >= self.per_network {
            self.refused += 1;
            return Err(ConnectionDenied::new(TooManyPending { origin, count: *count }));
        }
        *count += 1;
        self.pending.insert(connection_id, origin);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        // Every pending inbound connection ends in one of these two (a refusal by another
        // behaviour, pending or established, is a listen failure too).
        match event {
            FromSwarm::ConnectionEstablished(e) => self.done(e.connection_id),
            FromSwarm::ListenFailure(e) => self.done(e.connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer_id: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().expect("a multiaddr")
    }

    fn arrive(b: &mut Behaviour, remote: &str) -> (ConnectionId, bool) {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let id =
            ConnectionId::new_unchecked(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let ok =
            b.handle_pending_inbound_connection(id, &addr("/ip4/0.0.0.0/tcp/1"), &addr(remote));
        (id, ok.is_ok())
    }

    #[test]
    fn one_network_has_a_bounded_number_of_handshakes_in_flight() {
        let mut b = Behaviour::new(3);
        let flood: Vec<ConnectionId> = (0..3)
            .map(|i| {
                let (id, ok) = arrive(&mut b, &format!("/ip4/203.0.113.{i}/tcp/4001"));
                assert!(ok, "the first three are let in");
                id
            })
            .collect();
        // The same /24 is refused, any host of it; other networks are not.
        assert!(!arrive(&mut b, "/ip4/203.0.113.77/tcp/5000").1);
        assert!(!arrive(&mut b, "/ip6/::ffff:203.0.113.9/tcp/5000").1, "mapped IPv4");
        assert_eq!(b.refused(), 2);
        assert!(arrive(&mut b, "/ip4/198.51.100.1/tcp/4001").1);
        assert!(arrive(&mut b, "/ip6/2001:db8:1::1/tcp/4001").1);
        // This machine is never bounded.
        for _ in 0..10 {
            assert!(arrive(&mut b, "/ip4/127.0.0.1/tcp/4001").1);
        }
        // A host on the local network is bounded on its own, not with its neighbours.
        for _ in 0..3 {
            assert!(arrive(&mut b, "/ip4/192.168.1.5/tcp/4001").1);
        }
        assert!(!arrive(&mut b, "/ip4/192.168.1.5/tcp/4001").1);
        assert!(arrive(&mut b, "/ip4/192.168.1.6/tcp/4001").1);

        // A handshake that ends, either way, frees its place.
        b.done(flood[0]);
        assert!(arrive(&mut b, "/ip4/203.0.113.50/tcp/4001").1);
        assert!(!arrive(&mut b, "/ip4/203.0.113.51/tcp/4001").1);
        b.done(flood[1]);
        b.done(flood[1]);
        assert!(arrive(&mut b, "/ip4/203.0.113.52/tcp/4001").1, "a second end frees nothing");
        assert!(!arrive(&mut b, "/ip4/203.0.113.53/tcp/4001").1);
    }
}
