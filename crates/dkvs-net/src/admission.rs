//! Inbound TCP handshakes in flight, bounded per address and in all.
//!
//! A TCP connection costs its listener a file descriptor, then a Noise handshake (a
//! Diffie-Hellman and a signature check) before it has a peer id, and a silent one holds the
//! descriptor for the setup timeout (20 s). Without a bound, one host opening connections and
//! never finishing them runs the node out of descriptors: nobody else can connect, and the
//! node's own dials and files fail. So at most [`crate::Config::max_pending_per_address`]
//! inbound connections from one address (an IPv4 address, an IPv6 /64) may be in their
//! handshake at once, and [`crate::Config::max_pending_inbound`] from all addresses; more are
//! refused as they arrive, before any handshake work. An honest handshake takes a round trip
//! or two, so the bounds refuse floods; a refused peer dials again later, as after any failed
//! dial. A flood from many addresses can still fill the overall bound and keep new inbound
//! peers out while it lasts; the node's connections, its own dials and its files go on.
//!
//! Not bounded here: this machine (a testnet of many nodes on loopback joins through one of
//! them at once); QUIC, whose handshake runs before the swarm is asked and whose source
//! address can be forged (a bound keyed by it would let a forger lock a network's honest
//! peers out; QUIC has its own 5 s handshake timeout and no descriptor per connection);
//! relayed connections, which the relay bounds.

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

/// Where an inbound TCP connection comes from: an IPv4 address or an IPv6 /64 (a host's
/// usual share of IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Origin {
    V4(std::net::Ipv4Addr),
    V6([u8; 8]),
}

impl Origin {
    /// `None` where the bound does not apply (see the module's docs).
    fn of(remote: &Multiaddr) -> Option<Origin> {
        let mut ip = None;
        for protocol in remote.iter() {
            match protocol {
                Protocol::Ip4(v4) => ip = Some(IpAddr::V4(v4)),
                Protocol::Ip6(v6) => ip = Some(IpAddr::V6(v6).to_canonical()),
                Protocol::Tcp(_) if ip.is_some() => break,
                _ => return None,
            }
        }
        match ip? {
            ip if ip.is_loopback() || ip.is_unspecified() => None,
            IpAddr::V4(v4) => Some(Origin::V4(v4)),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Some(Origin::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]]))
            }
        }
    }
}

/// Bounds the inbound TCP connections in their handshake; refuses no other.
pub(crate) struct Behaviour {
    per_address: usize,
    in_all: usize,
    pending: HashMap<ConnectionId, Origin>,
    counts: HashMap<Origin, usize>,
    refused: u64,
}

impl Behaviour {
    pub(crate) fn new(per_address: usize, in_all: usize) -> Behaviour {
        Behaviour {
            per_address: per_address.max(1),
            in_all: in_all.max(1),
            pending: HashMap::new(),
            counts: HashMap::new(),
            refused: 0,
        }
    }

    /// Inbound connections refused since the node started, for being over a bound.
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
enum TooManyPending {
    #[error("{count} inbound connections from {origin:?} are already in their handshake")]
    FromAddress { origin: Origin, count: usize },
    #[error("{count} inbound connections are already in their handshake")]
    InAll { count: usize },
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
        let count = self.counts.get(&origin).copied().unwrap_or(0);
        let refusal = if count >= self.per_address {
            TooManyPending::FromAddress { origin, count }
        } else if self.pending.len() >= self.in_all {
            TooManyPending::InAll { count: self.pending.len() }
        } else {
            *self.counts.entry(origin).or_default() += 1;
            self.pending.insert(connection_id, origin);
            return Ok(());
        };
        self.refused += 1;
        Err(ConnectionDenied::new(refusal))
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
    fn one_address_has_a_bounded_number_of_handshakes_in_flight() {
        let mut b = Behaviour::new(3, 100);
        let flood: Vec<ConnectionId> = (0..3)
            .map(|port| {
                let (id, ok) = arrive(&mut b, &format!("/ip4/203.0.113.7/tcp/{port}"));
                assert!(ok, "the first three are let in");
                id
            })
            .collect();
        // The same address is refused, also written as IPv4-mapped IPv6; its neighbours are not.
        assert!(!arrive(&mut b, "/ip4/203.0.113.7/tcp/5000").1);
        assert!(!arrive(&mut b, "/ip6/::ffff:203.0.113.7/tcp/5000").1, "mapped IPv4");
        assert_eq!(b.refused(), 2);
        assert!(arrive(&mut b, "/ip4/203.0.113.8/tcp/4001").1);
        // An IPv6 /64 is one address.
        for host in 1..=3 {
            assert!(arrive(&mut b, &format!("/ip6/2001:db8:1:2::{host}/tcp/4001")).1);
        }
        assert!(!arrive(&mut b, "/ip6/2001:db8:1:2:ffff::9/tcp/4001").1);
        assert!(arrive(&mut b, "/ip6/2001:db8:1:3::1/tcp/4001").1);
        // A host on the local network is bounded like any other.
        for _ in 0..3 {
            assert!(arrive(&mut b, "/ip4/192.168.1.5/tcp/4001").1);
        }
        assert!(!arrive(&mut b, "/ip4/192.168.1.5/tcp/4001").1);
        // Never bounded: this machine, QUIC, relayed connections, addressless transports.
        for _ in 0..10 {
            for free in [
                "/ip4/127.0.0.1/tcp/4001",
                "/ip6/::1/tcp/4001",
                "/ip4/203.0.113.7/udp/4001/quic-v1",
                "/p2p/12D3KooWGC6TvWhfapngX6wvJHMYvKpDMXPb3ZnCZ6dMoaMtimQ5",
                "/memory/1",
            ] {
                assert!(arrive(&mut b, free).1, "{free}");
            }
        }

        // A handshake that ends, either way, frees its place, once.
        b.done(flood[0]);
        assert!(arrive(&mut b, "/ip4/203.0.113.7/tcp/6000").1);
        assert!(!arrive(&mut b, "/ip4/203.0.113.7/tcp/6001").1);
        b.done(flood[1]);
        b.done(flood[1]);
        assert!(arrive(&mut b, "/ip4/203.0.113.7/tcp/6002").1, "a second end frees nothing");
        assert!(!arrive(&mut b, "/ip4/203.0.113.7/tcp/6003").1);
    }

    #[test]
    fn all_addresses_together_have_a_bounded_number_of_handshakes_in_flight() {
        let mut b = Behaviour::new(2, 5);
        let mut let_in = Vec::new();
        for host in 1..=10 {
            let (id, ok) = arrive(&mut b, &format!("/ip4/198.51.100.{host}/tcp/4001"));
            if ok {
                let_in.push(id);
            }
        }
        assert_eq!(let_in.len(), 5, "five in all, from five addresses");
        assert_eq!(b.refused(), 5);
        assert!(arrive(&mut b, "/ip4/127.0.0.1/tcp/4001").1, "this machine still joins");
        b.done(let_in[0]);
        assert!(arrive(&mut b, "/ip4/198.51.100.20/tcp/4001").1, "an end makes room");
        assert!(!arrive(&mut b, "/ip4/198.51.100.21/tcp/4001").1);
    }
}
