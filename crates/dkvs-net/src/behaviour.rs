//! The composed libp2p behaviour of a dkvs node.

use std::num::NonZeroUsize;
use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, allow_block_list, autonat, dcutr, gossipsub, identify, identity, kad, mdns,
    ping, relay,
};

use crate::idle::Released;
use crate::quiet::Quiet;
use crate::{Config, Extension, NetError};

/// Kademlia's protocol name: dkvs runs its own DHT, not the public IPFS one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/dkvs/kad/1.0.0");
/// Peers kept per Kademlia bucket (libp2p's default is 20). A lookup starts from the closest
/// peers of this node's table and ends when the closest it can find have all answered: the
/// more of a key's neighbourhood the table already holds, the fewer requests that takes. With
/// 64, a node's table holds every peer it is connected to in a network of up to about a
/// hundred nodes, and a lookup there sends about one request more than the k it needs
/// (docs/benchmarks.md: 41 requests per put at N = 100 against 47.5 with 20 per bucket). In a
/// larger network the first peers asked are closer to the key (an answer still names at most
/// 20 peers); fewer hops there is expected, not measured. It costs about 200 bytes per entry:
/// some 250 KiB in a network of a million nodes (about 20 buckets in use).
pub(crate) const KBUCKET_SIZE: NonZeroUsize = NonZeroUsize::new(64).expect("non-zero");
/// How often a connection is pinged (libp2p's default is 15 s). dkvs does not act on pings:
/// libp2p-ping closes no connection on a failure (a dead peer this node asks shows as a
/// request that times out; a silently dead relay, which is asked nothing, shows when TCP
/// gives up on the unanswered ping's bytes, minutes later, 45 s later than at 15 s). What
/// they are for: answering other peers' pings (IPFS tools ask), and keeping a quiet
/// connection's NAT mapping alive (a phone's connection to its relay: both ends ping, so it
/// carries traffic at least every 60 s; RFC 5382 asks routers to keep an idle TCP mapping
/// for two hours; QUIC keeps its own alive every 5 s). Every ping wakes both ends of a
/// connection: at 15 s they were the largest single cost of an idle network of 1000 nodes in
/// one process (docs/benchmarks.md).
pub(crate) const PING_INTERVAL: Duration = Duration::from_secs(60);
/// Identify's protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/dkvs/id/1.0.0";

/// Every protocol a node speaks, and its extension's. mDNS and the relay server are off unless
/// configured. Handlers are polled only when they have work ([`Quiet`]), but for gossipsub's
/// and the relay client's: gossipsub's handler reads the queue its behaviour fills without a
/// waker while it has no outbound stream, and the relay client's hands one relayed connection
/// to the transport per poll; both count on being polled whenever their connection wakes.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour<E: Extension> {
    /// First: a connection it refuses costs the others nothing.
    pub(crate) admission: crate::admission::Behaviour,
    pub(crate) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(crate) kad: Quiet<crate::held::Held>,
    pub(crate) records: Quiet<crate::lane::Behaviour>,
    /// Its streams do not keep a connection open ([`crate::idle`]).
    pub(crate) gossipsub: Released<gossipsub::Behaviour>,
    pub(crate) identify: Quiet<identify::Behaviour>,
    pub(crate) ping: Quiet<ping::Behaviour>,
    pub(crate) relay_client: relay::client::Behaviour,
    pub(crate) relay_server: Quiet<Toggle<relay::Behaviour>>,
    pub(crate) dcutr: Quiet<dcutr::Behaviour>,
    pub(crate) autonat: Quiet<autonat::Behaviour>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) extension: Quiet<E>,
}

impl<E: Extension> Behaviour<E> {
    pub(crate) fn new(
        key: &identity::Keypair,
        relay_client: relay::client::Behaviour,
        config: &Config,
        extension: E,
        changes: &crate::flat::Changes,
    ) -> Result<Behaviour<E>, NetError> {
        let peer_id = key.public().to_peer_id();

        // Kademlia routes only: records travel on the record protocol, where every answer is
        // a verdict. Inbound PUT_VALUE is filtered (handed to us, validated by the store), and
        // kad's own replication and republishing are off: the node does both itself.
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config
            .set_record_filtering(kad::StoreInserts::FilterBoth)
            .set_replication_factor(
                NonZeroUsize::new(config.replication).unwrap_or(NonZeroUsize::MIN),
            )
            .set_replication_interval(None)
            .set_publication_interval(None)
            .set_record_ttl(None)
            .set_caching(kad::Caching::Disabled)
            .set_kbucket_size(KBUCKET_SIZE)
            // The node refreshes its table itself (`crate::refresh`).
            .set_periodic_bootstrap_interval(None)
            // Lookups end well before the operation that waits for them.
            .set_query_timeout(crate::node::lookup_time(config))
            // Kademlia waits up to 10 s for one peer's answer, longer than the lookup, so
            // stalled peers among the first asked hold a lookup to its end, with the few
            // answers before them; `Driver::with_connected_servers` joins those to the
            // connected servers near the key. (A shorter fixed wait would pass over stalled
            // peers, but on a link where a FIND_NODE, a new stream's two round trips, takes
            // longer, every lookup would hear from nobody. Its dials are waited on as long as
            // this node's dials take, `crate::held`.)
            .set_max_packet_size(crate::codec::MAX_MESSAGE_LEN);
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        // Automatic mode is decided by the node (see `Driver::update_kad_mode`): a client until
        // an address that is not a relay circuit is confirmed reachable.
        kad.set_mode(Some(if config.kad_mode == crate::KadMode::Server {
            kad::Mode::Server
        } else {
            kad::Mode::Client
        }));

        let records =
            crate::lane::Behaviour::new(config.request_timeout).opening_early_to(KAD_PROTOCOL);

        let gossipsub_config = gossipsub::ConfigBuilder::default()
            .max_transmit_size(crate::codec::MAX_MESSAGE_LEN)
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            // Message ids stay gossipsub's own (publisher and sequence number), not the content's
            // hash: gossipsub marks an id as seen before it validates, so with content ids the
            // first copy of a record's bytes to arrive (on another topic, or from an author over
            // its rate) would make every honest copy a duplicate, and a watch would miss the
            // version. Repeats cost little anyway: a version a watcher delivered is dropped
            // before any signature work (`on_gossip_event`).
            .heartbeat_interval(Duration::from_millis(500))
            .build()
            .map_err(|e| NetError::Setup(format!("gossipsub config: {e}")))?;
        let gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossipsub_config,
        )
        .map_err(|e| NetError::Setup(format!("gossipsub: {e}")))?;

        let identify = identify::Behaviour::new(identify::Config::new(
            IDENTIFY_PROTOCOL.to_owned(),
            key.public(),
        ));
        let relay_server =
            config.relay_server.then(|| relay::Behaviour::new(peer_id, relay::Config::default()));
        let mdns = if config.mdns {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                    .map_err(|e| NetError::Setup(format!("mdns: {e}")))?,
            )
        } else {
            None
        };
        // The handlers whose protocols change when they are told something: Kademlia's (its
        // mode), gossipsub's (disabled by its connection's events), the relay server's (its
        // status), and the extension's, which may be any (`crate::flat`).
        let quiet_telling = || crate::quiet::Quieted::telling(changes);
        Ok(Behaviour {
            admission: crate::admission::Behaviour::new(
                config.max_pending_per_address,
                config.max_pending_inbound,
            ),
            blocked: allow_block_list::Behaviour::default(),
            kad: Quiet::with(crate::held::Held::new(kad), quiet_telling()),
            records: Quiet::new(records),
            gossipsub: Released::with(gossipsub, crate::idle::Releasing::telling(changes)),
            identify: Quiet::new(identify),
            ping: Quiet::new(ping::Behaviour::new(
                ping::Config::new().with_interval(PING_INTERVAL),
            )),
            relay_client,
            relay_server: Quiet::with(relay_server.into(), quiet_telling()),
            dcutr: Quiet::new(dcutr::Behaviour::new(peer_id)),
            autonat: Quiet::new(autonat::Behaviour::new(
                peer_id,
                autonat::Config {
                    only_global_ips: config.autonat_only_global_ips,
                    boot_delay: config.autonat_probe_delay,
                    retry_interval: config.autonat_probe_delay.max(Duration::from_secs(1)),
                    throttle_server_period: config.autonat_probe_delay.min(Duration::from_secs(90)),
                    ..autonat::Config::default()
                },
            )),
            mdns: mdns.into(),
            extension: Quiet::with(extension, crate::quiet::Quieted::telling_progress(changes)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node's record lanes open as soon as a peer says it serves the DHT (lane.rs): a get
    /// that opened its replicas' lanes took 2.1 ms at N = 100, one on open lanes 1.3 ms.
    #[tokio::test]
    async fn the_nodes_record_lanes_open_early_to_dht_servers() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let (_, relay_client) = libp2p::relay::client::new(key.public().to_peer_id());
        let behaviour = Behaviour::new(
            &key,
            relay_client,
            &crate::Config::default(),
            libp2p::swarm::dummy::Behaviour,
            &crate::flat::Changes::default(),
        )
        .expect("behaviour");
        assert_eq!(behaviour.records.opens_early_to(), Some(&KAD_PROTOCOL));
    }
}
