//! Inbound TCP handshakes in flight, bounded per address, per network and in all.
//!
//! A TCP connection costs its listener a file descriptor, then a Noise handshake (a
//! Diffie-Hellman and a signature check) before it has a peer id, and a silent one holds the
//! descriptor for the setup timeout (10 s, `transport::SETUP_TIMEOUT`).
//! Without a bound, one host opening connections and never finishing them runs the node out
//! of descriptors: nobody else can connect, and the node's own dials and files fail. So at
//! most [`crate::Config::max_pending_per_address`] inbound connections from one address (an
//! IPv4 address, an IPv6 /64) may be in their handshake at once, a quarter of
//! [`crate::Config::max_pending_inbound`] from one network (an IPv4 /24, an IPv6 /48; the
//! networks of the per-network budgets), and that many in all; more are refused as they
//! arrive, before any handshake work. An honest handshake takes two or three round trips, so
//! the bounds refuse floods; a refused peer dials again later, as after any failed dial.
//!
//! What is left: a flood from four networks can fill the bound in all and keep new inbound
//! TCP peers out while it lasts (each of its connections held 10 s, then opened again). The
//! node's connections, its own dials, QUIC and its files go on.
//!
//! Not bounded here: loopback (a testnet of many nodes on one machine joins through one of
//! them at once); QUIC, whose handshake runs before the swarm is asked and whose source
//! address can be forged (a bound keyed by it would let a forger lock a network's honest
//! peers out; QUIC has its own 5 s handshake timeout and no descriptor per connection);
//! relayed connections, which the relay bounds; transports without addresses.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr};
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

/// Where an inbound TCP connection comes from: an IPv4 address or an IPv6 /64 (a host's
/// usual share of IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Origin {
    V4(std::net::Ipv4Addr),
    V6([u8; 8]),
}

impl Origin {
    /// The origin and its network (`None` for the local network, which has none); `None`
    /// where the bound does not apply (see the module's docs).
    fn of(remote: &Multiaddr) -> Option<(Origin, Option<Subnet>)> {
        let mut protocols = remote.iter();
        let ip = match protocols.next()? {
            Protocol::Ip4(v4) => IpAddr::V4(v4),
            Protocol::Ip6(v6) => IpAddr::V6(v6).to_canonical(),
            _ => return None,
        };
        if !matches!(protocols.next()?, Protocol::Tcp(_))
            || protocols.any(|p| matches!(p, Protocol::P2pCircuit))
            || ip.is_loopback()
            || ip.is_unspecified()
        {
            return None;
        }
        let origin = match ip {
            IpAddr::V4(v4) => Origin::V4(v4),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                Origin::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
            }
        };
        Some((origin, Subnet::of(remote)))
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::V4(v4) => write!(f, "{v4}"),
            Origin::V6(prefix) => {
                let mut o = [0u8; 16];
                o[..8].copy_from_slice(prefix);
                write!(f, "{}/64", Ipv6Addr::from(o))
            }
        }
    }
}

/// Bounds the inbound TCP connections in their handshake; refuses no other.
pub(crate) struct Behaviour {
    per_address: usize,
    per_network: usize,
    in_all: usize,
    pending: HashMap<ConnectionId, (Origin, Option<Subnet>)>,
    addresses: HashMap<Origin, usize>,
    networks: HashMap<Subnet, usize>,
    refused: u64,
}

impl Behaviour {
    /// At most `per_address` from one address, a quarter of `in_all` from one network, and
    /// `in_all` in all (each at least 1).
    pub(crate) fn new(per_address: usize, in_all: usize) -> Behaviour {
        let in_all = in_all.max(1);
        Behaviour {
            per_address: per_address.max(1),
            per_network: (in_all / 4).max(1),
            in_all,
            pending: HashMap::new(),
            addresses: HashMap::new(),
            networks: HashMap::new(),
            refused: 0,
        }
    }

    /// Inbound connections refused since the node started, for being over a bound.
    pub(crate) fn refused(&self) -> u64 {
        self.refused
    }

    fn done(&mut self, connection_id: ConnectionId) {
        let Some((origin, network)) = self.pending.remove(&connection_id) else { return };
        release(&mut self.addresses, origin);
        if let Some(network) = network {
            release(&mut self.networks, network);
        }
    }
}

fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let Some(count) = counts.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(&key);
        }
    }
}

/// The refusal, as the swarm reports it.
#[derive(Debug, thiserror::Error)]
enum TooManyPending {
    #[error("{count} inbound connections from {origin} are already in their handshake")]
    FromAddress { origin: Origin, count: usize },
    #[error(
        "{count} inbound connections from the network of {origin} are already in their handshake"
    )]
    FromNetwork { origin: Origin, count: usize },
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
        let Some((origin, network)) = Origin::of(remote_addr) else { return Ok(()) };
        let count = self.addresses.get(&origin).copied().unwrap_or(0);
        let from_network = network.map_or(0, |n| self.networks.get(&n).copied().unwrap_or(0));
        let refusal = if count >= self.per_address {
            TooManyPending::FromAddress { origin, count }
        } else if from_network >= self.per_network {
            TooManyPending::FromNetwork { origin, count: from_network }
        } else if self.pending.len() >= self.in_all {
            TooManyPending::InAll { count: self.pending.len() }
        } else {
            *self.addresses.entry(origin).or_default() += 1;
            if let Some(network) = network {
                *self.networks.entry(network).or_default() += 1;
            }
            self.pending.insert(connection_id, (origin, network));
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
        let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = ConnectionId::new_unchecked(next);
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
        // Never bounded: loopback, QUIC, relayed connections, addressless transports.
        for _ in 0..10 {
            for free in [
                "/ip4/127.0.0.1/tcp/4001",
                "/ip6/::1/tcp/4001",
                "/ip4/203.0.113.7/udp/4001/quic-v1",
                "/p2p/12D3KooWGC6TvWhfapngX6wvJHMYvKpDMXPb3ZnCZ6dMoaMtimQ5",
                "/ip4/203.0.113.7/tcp/4001/p2p/12D3KooWGC6TvWhfapngX6wvJHMYvKpDMXPb3ZnCZ6dMoaMtimQ5/p2p-circuit",
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
    fn one_network_and_all_addresses_have_bounds_of_their_own() {
        // 2 per address, 3 per network (a quarter of 12), 12 in all.
        let mut b = Behaviour::new(2, 12);
        let held = |b: &mut Behaviour, network: u8| {
            (1..=4)
                .filter(|host| arrive(b, &format!("/ip4/198.51.{network}.{host}/tcp/4001")).1)
                .count()
        };
        assert_eq!(held(&mut b, 1), 3, "three from one /24, from different addresses");
        assert_eq!(held(&mut b, 2), 3);
        assert_eq!(held(&mut b, 3), 3);
        assert_eq!(held(&mut b, 4), 3);
        assert_eq!(held(&mut b, 5), 0, "twelve in all");
        assert_eq!(b.refused(), 4 + 4);
        // An IPv6 /48 is one network.
        let mut b = Behaviour::new(2, 12);
        let v6 = (1..=5)
            .filter(|net| arrive(&mut b, &format!("/ip6/2001:db8:7:{net}::1/tcp/4001")).1)
            .count();
        assert_eq!(v6, 3);
        // The local network has no network: its hosts are bounded one by one, and in all.
        let lan = (1..=6)
            .filter(|host| arrive(&mut b, &format!("/ip4/10.0.0.{host}/tcp/4001")).1)
            .count();
        assert_eq!(lan, 6);
        assert!(arrive(&mut b, "/ip4/127.0.0.1/tcp/4001").1, "loopback still joins");
    }

    #[test]
    fn a_refusal_names_the_address_or_network() {
        let mut b = Behaviour::new(1, 100);
        let id = ConnectionId::new_unchecked(usize::MAX);
        let (local, remote) = (addr("/ip4/0.0.0.0/tcp/1"), addr("/ip6/2001:db8:1:2::5/tcp/4001"));
        assert!(b.handle_pending_inbound_connection(id, &local, &remote).is_ok());
        let Err(refused) = b.handle_pending_inbound_connection(id, &local, &remote) else {
            panic!("a second connection from one address over a bound of 1 was let in")
        };
        let why = refused.downcast_ref::<TooManyPending>().expect("ours").to_string();
        assert_eq!(
            why,
            "1 inbound connections from 2001:db8:1:2::/64 are already in their handshake"
        );
    }
}
