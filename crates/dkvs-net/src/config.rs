//! Node configuration; every default is documented.

use std::time::Duration;

/// How many replicas must store a put (or answer a get) for it to succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quorum {
    /// More than half of the replica set: the k closest peers found, and this node if it is
    /// among them. In a network of one node that is the node itself.
    Majority,
    /// At least this many replicas (capped at the size of the replica set).
    N(usize),
    /// Every replica in the set.
    All,
}

impl Quorum {
    /// The number of replicas needed out of `replicas`.
    pub fn of(self, replicas: usize) -> usize {
        let needed = match self {
            Quorum::Majority => replicas / 2 + 1,
            Quorum::N(n) => n.min(replicas),
            Quorum::All => replicas,
        };
        needed.max(1)
    }
}

/// Network configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Replication factor k: how many closest peers hold each record. Default: 20.
    pub replication: usize,
    /// Write quorum. Default: [`Quorum::Majority`]. Readers that sample ([`Config::read_quorum`])
    /// count on every writer of the network using a majority: a write that fewer replicas
    /// hold may be missed by a sample.
    pub write_quorum: Quorum,
    /// Read quorum: how many replicas must answer before a get may answer (after the linger,
    /// or as soon as every asked replica answered). Default: majority. With the majority (and
    /// a majority write quorum), a plain get that found more than 12 replicas first asks a random
    /// k - W + 3 of them (12 of 20) and answers if they all agree (see the crate's README); any
    /// other value asks every replica at once.
    pub read_quorum: Quorum,
    /// How long one request to one peer may take on the record protocol. Default: 5 s.
    pub request_timeout: Duration,
    /// How long a whole put or get may take. Default: 10 s. A Kademlia lookup for one ends
    /// after half of it, with the peers it heard from.
    pub operation_timeout: Duration,
    /// After a quorum is reached, how long to wait for the remaining replicas before answering
    /// (their answers still count for the receipt and for read repair); a get's sample widens
    /// to every replica when one of its answers is more than this behind the first. Default:
    /// 100 ms.
    pub linger: Duration,
    /// The same for a get while no answer holds a record: a "not set" waits longer for the
    /// replicas still on their way, since fast empty answers may be liars hiding a record
    /// (peer ids are free) and honest replicas across the internet answer later. Default: 1 s.
    pub not_found_linger: Duration,
    /// Inbound requests one peer may make per second, sustained. Default: 200. This node's
    /// own requests to a peer are paced to nine tenths of it (and of the byte rate below),
    /// and half the bursts, standing in for the peer's limits: lowering them slows this
    /// node's own writes too.
    pub peer_requests_per_second: u32,
    /// Inbound requests one peer may make in a burst. Default: 400.
    pub peer_request_burst: u32,
    /// Inbound bytes one peer may send per second, sustained (record protocol and Kademlia
    /// PUT_VALUE). Requests alone would let one peer push 11 KiB records at 200 a second,
    /// 2 MiB/s, enough to fill a node's store in minutes. Default: 128 KiB. This node paces
    /// its own replication to half of it.
    pub peer_bytes_per_second: u32,
    /// Inbound bytes one peer may send in a burst. Default: 4 MiB. A peer not seen lately
    /// starts with an eighth of it (peer ids cost nothing), and earns the rest at the rate.
    /// Bytes over the budget are refused, never a reason to ban.
    pub peer_byte_burst: u32,
    /// Inbound bytes all peers connected from one network (an IPv4 /24, an IPv6 /48) may send
    /// per second, sustained: peer ids cost nothing, so a flooder with a thousand ids on one
    /// server still gets one network's budget. Peers behind a relay share the relay's network's
    /// budget (the relay's id's only where its address has no IP, or a local one); peers on
    /// this machine or the local network are not grouped. Default: 1 MiB
    /// (eight peers' worth).
    pub subnet_bytes_per_second: u32,
    /// Inbound bytes one network may send in a burst. Default: 32 MiB.
    pub subnet_byte_burst: u32,
    /// How long a peer that sent an invalid record stays disconnected and refused. Default: 10 min.
    pub ban_duration: Duration,
    /// The transports to listen and dial on. Default: TCP and QUIC.
    pub transports: crate::Transports,
    /// Run mDNS to find peers on the LAN. Default: off.
    pub mdns: bool,
    /// Serve as a relay for peers behind NAT. Default: off.
    pub relay_server: bool,
    /// When AutoNAT finds this node unreachable (behind NAT or a firewall), or reachable while
    /// no peer has dialed it directly, hold a reservation on a connected relay, so that others
    /// can dial it through the relay (and directly once DCUtR punches through). Default: on.
    pub auto_relay: bool,
    /// libp2p closes a connection nothing has used for this long. Not closed however long
    /// idle: a connection with a request waiting for its answer, one to a gossipsub mesh peer
    /// (channels, and watches where peers watch the same key), a relay reservation, and the
    /// ones a watch needs at both ends: to the replicas of a key this node watches, and to
    /// the peers that watch a key this node holds (see [`crate::Node::watch`]); extensions
    /// keep theirs (mail: its watches). Streams that stay open for a connection's life do not
    /// count as use (gossipsub's, ping's, the record protocol's lanes, a peer's bitswap
    /// stream; this node's bitswap stream closes after 10 s with nothing to say). A connection
    /// closed from idleness is dialed again when an operation needs the peer (the routing
    /// table keeps its address); operations use the routing table's connected peers only, so
    /// a node whose connections went idle looks a key's replicas up before it asks them (and,
    /// when the application keeps it busy, dials the entries of the buckets the table path
    /// walks that are neither live nor known unreachable: `Driver::probe_table`).
    /// Default: 60 s.
    pub idle_connection_timeout: Duration,
    /// The most peers this node stays connected to. Over it, the node closes its connections
    /// to the peers it used least recently (a request sent or admitted, gossip, a new
    /// connection) until three quarters of it are left. It never closes a peer used in the
    /// last 30 s, one it awaits a record answer from, a gossipsub mesh peer (watches and
    /// channels), a replica of a key it watches (at most half the limit), a relay or a relay
    /// reservation: when those are more than the limit, the limit is exceeded. Each
    /// connection costs about 85 KiB at each end (docs/benchmarks.md), and a node in a large
    /// network keeps every connection its lookups made for the idle
    /// timeout. Lookups and reads dial closed peers again. It bounds memory in a
    /// large network; against many new connections from one network, see
    /// [`Config::subnet_share`]. Default: 128.
    pub max_connections: usize,
    /// The share of [`Config::max_connections`] one network keeps when the node is over that
    /// limit: an IPv4 /24, an IPv6 /48, or a relay's network (the networks of the per-network byte
    /// budget, [`Config::subnet_bytes_per_second`]; this machine and the local network are
    /// none). Over the limit, a network with more peers connected than this loses its least
    /// recently used ones first, down to it, new connections too: one operator's many peer
    /// ids cannot push everyone else's out. (While every other peer is spared, a node over
    /// the limit trims again only after an eighth of the limit more connections, or at its
    /// 5 s sweep: a flood's network keeps that many more for that long.) Nothing is refused
    /// while the node has room, so phones behind one carrier's NAT are not turned away from a
    /// node with free slots.
    /// Default: 32, a quarter of the default limit ([`Config::with_max_connections`] keeps it
    /// a quarter); at least 1.
    pub subnet_share: usize,
    /// Inbound TCP connections from one address (an IPv4 address, an IPv6 /64) that may be
    /// in their handshake at once; more are refused as they arrive, before any handshake
    /// work. A silent connection holds a file descriptor for the inbound setup timeout
    /// (10 s): without a bound one host could take every descriptor. An honest handshake
    /// takes two or three round trips. Loopback, QUIC, relayed connections and transports
    /// without addresses are not bounded. Default: 8; at least 1.
    pub max_pending_per_address: usize,
    /// The same for all addresses together, and a quarter of it for one network (an IPv4
    /// /24, an IPv6 /48): a flood from many addresses keeps new inbound TCP peers out while
    /// it lasts, but cannot run the node out of descriptors. Default: 64 (honest handshakes
    /// of a quarter second each leave room for 250 new peers a second); at least 1.
    pub max_pending_inbound: usize,
    /// Kademlia mode. Default: [`KadMode::Auto`].
    pub kad_mode: KadMode,
    /// The local-network rule of the automatic Kademlia mode: a node that listens on a direct
    /// loopback or private address (127/8, 10/8, 172.16/12, 192.168/16, 169.254/16, ::1,
    /// fc00::/7, fe80::/10) and whose every connection is to such an address serves the DHT,
    /// so nodes on one machine or one LAN form a working network on defaults, where AutoNAT
    /// can never confirm an address. One connection to a public address (or through a relay)
    /// ends it: on the public internet only AutoNAT makes a node a server. This is Kubo's dual
    /// DHT (a LAN DHT in server mode beside the public one) folded into one DHT, which is
    /// possible because a dkvs node is in one of the two networks at a time. Default: true.
    pub lan_server: bool,
    /// AutoNAT: ask peers to dial back only on public IP addresses (and dial back only to
    /// public ones). Default: true. Tests and private networks turn it off.
    pub autonat_only_global_ips: bool,
    /// AutoNAT: delay before the first reachability probe, and between retries. Default: 15 s.
    pub autonat_probe_delay: Duration,
    /// How often this node re-sends the records it holds to the current k closest peers of
    /// each key (holders replicate). Default: 10 min.
    pub replication_interval: Duration,
    /// How often this node looks at the keys it keeps alive ([`crate::Node::keep_alive`]); a
    /// record that would expire within two intervals is re-signed and put again. Default: 1 h.
    pub republish_interval: Duration,
    /// How often the routing table is refreshed: a lookup of the node's own id (the k
    /// closest), then, one per sweep, a lookup of a random key in each bucket past its closest
    /// neighbour's that no lookup of the node went into for this long (for the 8 closest, as
    /// BEP 5 does; about ten at 1000 nodes, each dialing the peers it asks that are not
    /// connected; see `crate::refresh`). Default: 15 min, as BEP 5 refreshes a bucket unused
    /// for 15 minutes (libp2p's default is 5 min; in a 1000-node network at rest those dials
    /// were most of the CPU). Meanwhile the node's own lookups add the peers they meet to the table; while
    /// it holds fewer than 20 entries each peer added brings a refresh (libp2p's rule, at most
    /// one each half second); and a node whose dial failed while no DHT server was connected
    /// walks its table again after 30 s, then at doubling waits up to 5 min. A watched key
    /// is read again about every third of this interval, at least 5 min and at most an hour,
    /// give or take a fifth by the key (5 min by default; see [`crate::Node::watch`]).
    pub table_refresh_interval: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            replication: 20,
            write_quorum: Quorum::Majority,
            read_quorum: Quorum::Majority,
            request_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(10),
            linger: Duration::from_millis(100),
            not_found_linger: Duration::from_secs(1),
            peer_requests_per_second: 200,
            peer_request_burst: 400,
            peer_bytes_per_second: 128 << 10,
            peer_byte_burst: 4 << 20,
            subnet_bytes_per_second: 1 << 20,
            subnet_byte_burst: 32 << 20,
            ban_duration: Duration::from_secs(600),
            transports: crate::Transports::default(),
            mdns: false,
            relay_server: false,
            auto_relay: true,
            idle_connection_timeout: Duration::from_secs(60),
            max_connections: 128,
            max_pending_per_address: 8,
            max_pending_inbound: 64,
            subnet_share: 32,
            kad_mode: KadMode::Auto,
            lan_server: true,
            autonat_only_global_ips: true,
            autonat_probe_delay: Duration::from_secs(15),
            replication_interval: Duration::from_secs(600),
            republish_interval: Duration::from_secs(3600),
            table_refresh_interval: Duration::from_secs(15 * 60),
        }
    }
}

impl Config {
    /// With replication factor `k`.
    pub fn with_replication(mut self, k: usize) -> Config {
        self.replication = k.max(1);
        self
    }
    /// With write quorum `quorum`.
    pub fn with_write_quorum(mut self, quorum: Quorum) -> Config {
        self.write_quorum = quorum;
        self
    }
    /// With read quorum `quorum`.
    pub fn with_read_quorum(mut self, quorum: Quorum) -> Config {
        self.read_quorum = quorum;
        self
    }
    /// With per-request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Config {
        self.request_timeout = timeout;
        self
    }
    /// With per-operation timeout.
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Config {
        self.operation_timeout = timeout;
        self
    }
    /// With at most `max` peers connected ([`Config::max_connections`]), and a quarter of it
    /// as one network's share ([`Config::subnet_share`]; [`Config::with_subnet_share`] after
    /// this sets another).
    pub fn with_max_connections(mut self, max: usize) -> Config {
        self.max_connections = max.max(1);
        self.subnet_share = (self.max_connections / 4).max(1);
        self
    }
    /// With linger after quorum.
    pub fn with_linger(mut self, linger: Duration) -> Config {
        self.linger = linger;
        self
    }
    /// With per-peer inbound rate limits.
    pub fn with_peer_rate(mut self, per_second: u32, burst: u32) -> Config {
        self.peer_requests_per_second = per_second;
        self.peer_request_burst = burst;
        self
    }
    /// With per-peer inbound byte budgets.
    pub fn with_peer_bytes(mut self, per_second: u32, burst: u32) -> Config {
        self.peer_bytes_per_second = per_second;
        self.peer_byte_burst = burst;
        self
    }
    /// With `share` peers kept from one network when over the connection limit
    /// ([`Config::subnet_share`]).
    pub fn with_subnet_share(mut self, share: usize) -> Config {
        self.subnet_share = share.max(1);
        self
    }

    /// With byte budgets per network of peers ([`Config::subnet_bytes_per_second`]).
    pub fn with_subnet_bytes(mut self, per_second: u32, burst: u32) -> Config {
        self.subnet_bytes_per_second = per_second;
        self.subnet_byte_burst = burst;
        self
    }
    /// With the transports to listen and dial on.
    pub fn with_transports(mut self, transports: crate::Transports) -> Config {
        self.transports = transports;
        self
    }
    /// With ban duration.
    pub fn with_ban_duration(mut self, duration: Duration) -> Config {
        self.ban_duration = duration;
        self
    }
    /// With mDNS on or off.
    pub fn with_mdns(mut self, on: bool) -> Config {
        self.mdns = on;
        self
    }
    /// With another republish interval.
    pub fn with_republish_interval(mut self, interval: Duration) -> Config {
        self.republish_interval = interval;
        self
    }
    /// With the Kademlia mode ([`Config::kad_mode`]).
    pub fn with_kad_mode(mut self, mode: KadMode) -> Config {
        self.kad_mode = mode;
        self
    }
    /// With the local-network rule of the automatic Kademlia mode on or off
    /// ([`Config::lan_server`]).
    pub fn with_lan_server(mut self, on: bool) -> Config {
        self.lan_server = on;
        self
    }
    /// With AutoNAT probing private addresses too, after `delay` (for tests and private
    /// networks).
    pub fn with_autonat_private(mut self, delay: Duration) -> Config {
        self.autonat_only_global_ips = false;
        self.autonat_probe_delay = delay;
        self
    }
    /// With another routing-table refresh interval.
    pub fn with_table_refresh_interval(mut self, interval: Duration) -> Config {
        self.table_refresh_interval = interval;
        self
    }
    /// With another replication interval.
    pub fn with_replication_interval(mut self, interval: Duration) -> Config {
        self.replication_interval = interval;
        self
    }
    /// With the relay server on or off.
    pub fn with_relay_server(mut self, on: bool) -> Config {
        self.relay_server = on;
        self
    }
    /// With relay reservations behind NAT on or off ([`Config::auto_relay`]).
    pub fn with_auto_relay(mut self, on: bool) -> Config {
        self.auto_relay = on;
        self
    }
    /// With AutoNAT asking (and answering) dial-backs on public IP addresses only, or on any
    /// ([`Config::autonat_only_global_ips`]).
    pub fn with_autonat_only_global_ips(mut self, on: bool) -> Config {
        self.autonat_only_global_ips = on;
        self
    }
}

/// Whether a node answers DHT queries and serves as a replica (Kademlia server) or only asks
/// (client).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KadMode {
    /// A server when AutoNAT confirms a direct address reachable from outside and a peer has
    /// dialed this node directly, or (with
    /// [`Config::lan_server`]) while the node is on a local network only; a client otherwise,
    /// as a node behind NAT on the public internet should be.
    #[default]
    Auto,
    /// Always a server (a node known to be reachable).
    Server,
    /// Always a client (a phone on mobile data, a light client).
    Client,
}

impl std::str::FromStr for KadMode {
    type Err = String;

    fn from_str(s: &str) -> Result<KadMode, String> {
        match s {
            "auto" => Ok(KadMode::Auto),
            "server" => Ok(KadMode::Server),
            "client" => Ok(KadMode::Client),
            other => {
                Err(format!("Kademlia mode {other:?}; use \"auto\", \"server\" or \"client\""))
            }
        }
    }
}

impl std::fmt::Display for KadMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KadMode::Auto => "auto",
            KadMode::Server => "server",
            KadMode::Client => "client",
        })
    }
}

impl Config {
    /// The longest any of these durations may be: the node adds them to the clock, and a
    /// clock far enough on overflows.
    pub const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

    /// Checks what [`crate::NodeBuilder::spawn`] cannot run with: a duration past
    /// [`Config::LONGEST`]. The error names the field.
    pub fn check(&self) -> Result<(), String> {
        let durations = [
            ("request_timeout", self.request_timeout),
            ("operation_timeout", self.operation_timeout),
            ("linger", self.linger),
            ("not_found_linger", self.not_found_linger),
            ("ban_duration", self.ban_duration),
            ("idle_connection_timeout", self.idle_connection_timeout),
            ("autonat_probe_delay", self.autonat_probe_delay),
            ("replication_interval", self.replication_interval),
            ("republish_interval", self.republish_interval),
            ("table_refresh_interval", self.table_refresh_interval),
        ];
        match durations.into_iter().find(|(_, d)| *d > Config::LONGEST) {
            Some((name, d)) => Err(format!("{name} is {d:?}, at most a year")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_the_clock_cannot_hold_is_refused_by_name() {
        assert_eq!(Config::default().check(), Ok(()));
        let never = Config::default().with_replication_interval(Duration::MAX);
        let error = never.check().expect_err("refused");
        assert!(error.contains("replication_interval"), "{error}");
        let year = Config::default().with_table_refresh_interval(Config::LONGEST);
        assert_eq!(year.check(), Ok(()), "a year is fine");
    }

    #[test]
    fn quorum_sizes() {
        assert_eq!(Quorum::Majority.of(1), 1);
        assert_eq!(Quorum::Majority.of(2), 2);
        assert_eq!(Quorum::Majority.of(20), 11);
        assert_eq!(Quorum::N(3).of(2), 2);
        assert_eq!(Quorum::All.of(0), 1);
    }

    #[test]
    fn kad_modes_read_back_what_they_print_and_name_a_wrong_one() {
        for mode in [KadMode::Auto, KadMode::Server, KadMode::Client] {
            assert_eq!(mode.to_string().parse::<KadMode>(), Ok(mode));
        }
        let wrong = "Server".parse::<KadMode>().expect_err("modes are lower case");
        assert!(wrong.contains("\"Server\"") && wrong.contains("\"auto\""), "{wrong}");
        assert_eq!(Config::default().kad_mode, KadMode::Auto);
    }
}
