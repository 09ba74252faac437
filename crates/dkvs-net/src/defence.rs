//! The one admission step for bytes from peers: size, rate, ban. The record protocol uses it,
//! and so do the protocols that extensions add ([`crate::Host::admit`]).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use libp2p::PeerId;

use crate::rate::RateLimiter;

/// Why a message from a peer was not admitted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// The peer is banned for now (it sent an invalid record or flooded).
    #[error("the peer is banned")]
    Banned,
    /// The message is larger than its protocol allows; no honest peer sends it.
    #[error("message is {len} bytes, limit is {limit}")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// The protocol's limit.
        limit: usize,
    },
    /// The peer sent more than its rate allows.
    #[error("too many requests")]
    RateLimited,
}

/// Rate limits and bans, per peer.
pub(crate) struct Defence {
    limiter: RateLimiter,
    /// Bytes per peer: a budget beside the request count, so that large records cost more.
    bytes: RateLimiter,
    /// Gossip is limited by its author (signed, so known), in a bucket of its own: the peer
    /// that forwards a message is usually an honest relay and must not pay for it.
    gossip: RateLimiter,
    /// Bytes per network of peers ([`Subnet`]): peer ids cost nothing, addresses do, so
    /// many ids from one network share one budget.
    subnets: RateLimiter<Subnet>,
    banned: HashMap<PeerId, Instant>,
    ban_duration: Duration,
}

impl Defence {
    pub(crate) fn new(config: &crate::Config) -> Defence {
        Defence {
            limiter: RateLimiter::new(config.peer_requests_per_second, config.peer_request_burst),
            // A new peer id starts with an eighth of the burst: ids cost nothing, and each
            // fresh one would otherwise bring a whole burst of bytes.
            bytes: RateLimiter::new(config.peer_bytes_per_second, config.peer_byte_burst)
                .starting_with(config.peer_byte_burst / 8),
            gossip: RateLimiter::new(config.peer_requests_per_second, config.peer_request_burst),
            subnets: RateLimiter::new(config.subnet_bytes_per_second, config.subnet_byte_burst),
            banned: HashMap::new(),
            ban_duration: config.ban_duration,
        }
    }

    /// Admits one message of `len` bytes from `peer`, connected from `subnet`, for a protocol
    /// whose messages are at most `limit` bytes. On `Err`, the caller drops the message; when
    /// the refusal banned the peer (an oversized message, a flood), [`Defence::is_banned`] is
    /// true and the caller disconnects it.
    pub(crate) fn admit(
        &mut self,
        peer: PeerId,
        subnet: Option<Subnet>,
        len: usize,
        limit: usize,
        now: Instant,
    ) -> Result<(), Refused> {
        if self.is_banned(&peer) {
            return Err(Refused::Banned);
        }
        if len > limit {
            self.ban(peer, now);
            return Err(Refused::TooLarge { len, limit });
        }
        if self.limiter.allow(peer, now) {
            // Both budgets must have room before either is charged: a message refused for its
            // network's budget costs the peer nothing, and one refused for the peer's own
            // costs its honest neighbours nothing.
            let fits = self.bytes.has(peer, len, now)
                && subnet.is_none_or(|subnet| self.subnets.has(subnet, len, now));
            if fits {
                self.bytes.allow_n(peer, len, now);
                if let Some(subnet) = subnet {
                    self.subnets.allow_n(subnet, len, now);
                }
                return Ok(());
            }
            // Over its byte budget: refused, not banned (an honest gateway's user writes, read
            // repair and replication share one budget at each replica); a refusal costs the
            // node only this check.
            return Err(Refused::RateLimited);
        }
        if self.limiter.is_flooding(&peer) {
            self.ban(peer, now);
        }
        Err(Refused::RateLimited)
    }

    /// Admits one gossip message written by `author` (whoever forwarded it). An author that
    /// floods past its refusals is banned: its messages are dropped wherever they come from.
    pub(crate) fn admit_gossip(&mut self, author: PeerId, now: Instant) -> Result<(), Refused> {
        if self.is_banned(&author) {
            return Err(Refused::Banned);
        }
        if self.gossip.allow(author, now) {
            return Ok(());
        }
        if self.gossip.is_flooding(&author) {
            self.ban(author, now);
        }
        Err(Refused::RateLimited)
    }

    /// Bans `peer` until the ban duration has passed. True if it was not banned before.
    pub(crate) fn ban(&mut self, peer: PeerId, now: Instant) -> bool {
        self.banned.insert(peer, now + self.ban_duration).is_none()
    }

    pub(crate) fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned.contains_key(peer)
    }

    pub(crate) fn banned(&self) -> impl Iterator<Item = &PeerId> {
        self.banned.keys()
    }

    /// Ends the bans that are over and forgets idle peers; returns the peers to unblock.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<PeerId> {
        let over: Vec<PeerId> =
            self.banned.iter().filter(|(_, until)| **until <= now).map(|(p, _)| *p).collect();
        for peer in &over {
            self.banned.remove(peer);
        }
        over
    }

    /// Forgets rate state of peers that have been idle.
    pub(crate) fn forget_idle(&mut self, now: Instant) {
        self.limiter.forget_idle(now);
        self.bytes.forget_idle(now);
        self.gossip.forget_idle(now);
        self.subnets.forget_idle(now);
    }
}

/// The network a peer connects from, for a byte budget that its peer ids share: an IPv4 /24
/// or an IPv6 /48 (about what one site or one hosting customer gets; an IPv4-mapped IPv6
/// address counts as IPv4), or, for a relayed connection, the relay's network (whoever runs a
/// relay can put any number of ids behind it, and relay ids cost nothing either: one host can
/// run relays under as many ids as it likes, so a relay is grouped by the id only where its
/// address has no IP to group by, or a local one). Peers on this machine or the local network
/// (loopback, private, link-local and unique-local addresses) have none: they are as trusted
/// as the network, and a LAN of nodes on defaults must not share one budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Subnet {
    V4([u8; 3]),
    V6([u8; 6]),
    Relay(PeerId),
}

impl Subnet {
    pub(crate) fn of(addr: &libp2p::Multiaddr) -> Option<Subnet> {
        use libp2p::multiaddr::Protocol;
        let mut relay = None;
        for protocol in addr.iter() {
            match protocol {
                Protocol::P2p(id) => relay = Some(id),
                Protocol::P2pCircuit => {
                    // The relay's network (the address before the circuit is the relay's), or
                    // its id when that address has no IP or a local one (a relay on the LAN
                    // still forwards peers from anywhere).
                    return Subnet::direct(addr).or(relay.map(Subnet::Relay));
                }
                _ => {}
            }
        }
        Subnet::direct(addr)
    }

    fn direct(addr: &libp2p::Multiaddr) -> Option<Subnet> {
        use libp2p::multiaddr::Protocol;
        use std::net::IpAddr;
        let ip = addr.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
            Protocol::Ip6(ip) => Some(IpAddr::V6(ip).to_canonical()),
            _ => None,
        })?;
        match ip {
            _ if is_local_ip(ip) => None,
            IpAddr::V4(ip) => {
                let [a, b, c, _] = ip.octets();
                Some(Subnet::V4([a, b, c]))
            }
            IpAddr::V6(ip) => {
                let o = ip.octets();
                Some(Subnet::V6([o[0], o[1], o[2], o[3], o[4], o[5]]))
            }
        }
    }
}

/// The network a peer connects from, as the node's per-network budgets group peers (an IPv4
/// /24, an IPv6 /48; a relayed connection counts in its relay's): for an extension's own
/// budgets, which peer ids alone would not bound (they cost nothing to make). `None` for this
/// machine and the local network, which are not grouped, and for an address with no IP (a
/// DNS name, the memory transport; a relay named so is grouped by its id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Network(Subnet);

impl Network {
    pub(crate) fn from_subnet(subnet: Subnet) -> Network {
        Network(subnet)
    }

    /// The network of a remote address (for an inbound relayed connection, whose remote
    /// address names only the peer, use [`Network::of_connection`]).
    pub fn of(remote: &libp2p::Multiaddr) -> Option<Network> {
        Subnet::of(remote).map(Network)
    }

    /// The network a connection comes from: its remote address, or for an inbound relayed
    /// connection (whose remote address libp2p's relay client gives as `/p2p/<peer>` alone)
    /// the relay it came through, as the node's own budgets count it.
    pub fn of_connection(endpoint: &libp2p::core::ConnectedPoint) -> Option<Network> {
        Network::of(&crate::node::remote_address(endpoint))
    }
}

/// An address on this machine or the local network: loopback, private, link-local and
/// unique-local (an IPv4-mapped IPv6 address counts as its IPv4 address). The one rule for the
/// local-network DHT mode (`node::is_local`) and for who shares a network's byte budget.
pub(crate) fn is_local_ip(ip: std::net::IpAddr) -> bool {
    match ip.to_canonical() {
        std::net::IpAddr::V4(ip) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.is_unique_local() || ip.is_unicast_link_local()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_then_rate_then_ban() {
        let config = crate::Config::default().with_peer_rate(10, 5);
        let mut defence = Defence::new(&config);
        let (peer, now) = (PeerId::random(), Instant::now());
        assert_eq!(defence.admit(peer, None, 10, 100, now), Ok(()));
        // Four more fit the burst; then the peer is refused, and past a burst of refusals,
        // banned.
        for _ in 0..4 {
            assert_eq!(defence.admit(peer, None, 10, 100, now), Ok(()));
        }
        assert_eq!(defence.admit(peer, None, 10, 100, now), Err(Refused::RateLimited));
        while !defence.is_banned(&peer) {
            assert_eq!(defence.admit(peer, None, 10, 100, now), Err(Refused::RateLimited));
        }
        assert_eq!(defence.admit(peer, None, 10, 100, now), Err(Refused::Banned));
        // An oversized message bans at once.
        let other = PeerId::random();
        assert_eq!(
            defence.admit(other, None, 101, 100, now),
            Err(Refused::TooLarge { len: 101, limit: 100 })
        );
        assert!(defence.is_banned(&other));
        // Bytes have a budget of their own: a new peer starts with an eighth of the burst, and
        // earns the rest at the rate; refusals for bytes never ban.
        let bulky = PeerId::random();
        let config = crate::Config::default().with_peer_bytes(1_000, 8_000);
        let mut bytes = Defence::new(&config);
        assert_eq!(bytes.admit(bulky, None, 1_000, 16_384, now), Ok(()));
        for _ in 0..100 {
            assert_eq!(bytes.admit(bulky, None, 1_000, 16_384, now), Err(Refused::RateLimited));
        }
        assert!(!bytes.is_banned(&bulky));
        let later = now + Duration::from_secs(8);
        for _ in 0..8 {
            assert_eq!(bytes.admit(bulky, None, 1_000, 16_384, later), Ok(()));
        }
        assert_eq!(bytes.admit(bulky, None, 1_000, 16_384, later), Err(Refused::RateLimited));
        // Gossip is counted by author, apart from requests: a banned author stays refused.
        let author = PeerId::random();
        assert_eq!(defence.admit_gossip(author, now), Ok(()));
        assert_eq!(defence.admit_gossip(peer, now), Err(Refused::Banned));
        // Bans end.
        let later = now + config.ban_duration;
        let mut over = defence.expire(later);
        over.sort();
        let mut both = vec![peer, other];
        both.sort();
        assert_eq!(over, both);
        assert!(!defence.is_banned(&peer));
    }

    #[test]
    fn an_inbound_relayed_connection_is_of_its_relays_network() {
        use libp2p::core::ConnectedPoint;
        let relay = PeerId::random();
        let at = |a: &str| a.parse::<libp2p::Multiaddr>().expect("address");
        // libp2p's relay client gives an inbound circuit's remote as `/p2p/<peer>` alone, which
        // has no network: the circuit it came through does.
        let inbound = ConnectedPoint::Listener {
            local_addr: at(&format!("/ip4/203.0.113.7/tcp/4001/p2p/{relay}/p2p-circuit")),
            send_back_addr: at(&format!("/p2p/{}", PeerId::random())),
        };
        assert_eq!(Network::of(inbound.get_remote_address()), None);
        let relays = Network::of(&at("/ip4/203.0.113.200/tcp/1"));
        assert!(relays.is_some());
        assert_eq!(Network::of_connection(&inbound), relays);
        let direct = ConnectedPoint::Listener {
            local_addr: at("/ip4/0.0.0.0/tcp/4001"),
            send_back_addr: at("/ip4/198.51.100.3/tcp/5555"),
        };
        assert_eq!(Network::of_connection(&direct), Network::of(&at("/ip4/198.51.100.1/tcp/1")));
    }

    #[test]
    fn peer_ids_from_one_network_share_its_byte_budget() {
        let config =
            crate::Config::default().with_peer_bytes(100, 8_000).with_subnet_bytes(2_000, 4_000);
        let mut defence = Defence::new(&config);
        let now = Instant::now();
        let addr = |a: &str| a.parse::<libp2p::Multiaddr>().expect("address");
        let sybil = Subnet::of(&addr("/ip4/203.0.113.7/tcp/4001"));
        assert_eq!(sybil, Subnet::of(&addr("/ip4/203.0.113.200/udp/4001/quic-v1")));
        assert_eq!(sybil, Subnet::of(&addr("/ip6/::ffff:203.0.113.9/tcp/4001")), "mapped IPv4");
        // Fresh ids from one /24: each has 1000 bytes of its own, the network 4000 in all.
        let admitted = (0..10)
            .filter(|_| defence.admit(PeerId::random(), sybil, 1_000, 16_384, now).is_ok())
            .count();
        assert_eq!(admitted, 4);
        assert!(defence.banned().next().is_none(), "byte refusals never ban");
        // A refusal for the network's budget costs the peer nothing of its own: a second later
        // the network has room for one more message, and this peer still has its 1000 bytes.
        let neighbour = PeerId::random();
        assert_eq!(defence.admit(neighbour, sybil, 1_000, 16_384, now), Err(Refused::RateLimited));
        let later = now + Duration::from_secs(1);
        assert_eq!(defence.admit(neighbour, sybil, 1_000, 16_384, later), Ok(()));
        // A peer elsewhere is not affected, nor is one on this machine or the LAN.
        let elsewhere = Subnet::of(&addr("/ip4/198.51.100.1/tcp/4001"));
        assert_ne!(elsewhere, sybil);
        assert_eq!(defence.admit(PeerId::random(), elsewhere, 1_000, 16_384, now), Ok(()));
        for local in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/192.168.1.9/tcp/1",
            "/ip4/169.254.0.1/tcp/1",
            "/ip6/::1/tcp/1",
            "/ip6/::ffff:127.0.0.1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
            "/dns4/example.com/tcp/1",
        ] {
            assert_eq!(Subnet::of(&addr(local)), None, "{local}");
        }
        // IPv6 by /48.
        let v6 = Subnet::of(&addr("/ip6/2001:db8:1:2::5/tcp/4001"));
        assert_eq!(v6, Subnet::of(&addr("/ip6/2001:db8:1:ffff::9/tcp/4001")));
        assert_ne!(v6, Subnet::of(&addr("/ip6/2001:db8:2::5/tcp/4001")));
        // Peers behind a relay share the relay's network: fresh relay ids on one host make no
        // fresh budgets, nor do peers named after the circuit.
        let relay = PeerId::random();
        let circuit = |at: &str, relay: PeerId| {
            addr(&format!("{at}/p2p/{relay}/p2p-circuit/p2p/{}", PeerId::random()))
        };
        for _ in 0..3 {
            let fresh = PeerId::random();
            assert_eq!(Subnet::of(&circuit("/ip4/203.0.113.7/tcp/4001", fresh)), sybil);
        }
        assert_eq!(Subnet::of(&circuit("/ip6/2001:db8:1::1/udp/1/quic-v1", relay)), v6);
        assert_eq!(
            Subnet::of(&addr("/ip4/203.0.113.7/tcp/4001/p2p-circuit")),
            sybil,
            "without the relay's id, by its address"
        );
        // A relay on this machine or the LAN, or one named without an IP, by its id: the peers
        // it forwards come from anywhere.
        for at in
            ["/ip4/127.0.0.1/tcp/4001", "/ip4/192.168.1.9/tcp/4001", "/dns4/relay.example/tcp/1"]
        {
            assert_eq!(Subnet::of(&circuit(at, relay)), Some(Subnet::Relay(relay)), "{at}");
        }
        assert_eq!(
            Subnet::of(&addr(&format!("/p2p/{relay}/p2p-circuit"))),
            Some(Subnet::Relay(relay))
        );
    }
}
