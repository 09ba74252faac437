//! The seam through which other crates add protocols to a node: an [`Extension`] is a libp2p
//! `NetworkBehaviour` that runs in the node's one swarm, beside dkvs's own behaviours, with the
//! node's identity, and uses the node's services through a [`Host`]: lookups of the closest
//! peers, gossip topics it validates itself, the one admission step, and bans.
//!
//! dkvs-net knows no extension by name: mail and IPFS plug in from their own crates, and a
//! node that hosts both composes them into one behaviour.

use std::collections::HashSet;

use libp2p::swarm::NetworkBehaviour;
use libp2p::{PeerId, allow_block_list, gossipsub, kad};

use crate::defence::{Defence, Refused};

/// A protocol a node hosts. Its behaviour is polled with the node's others; the events it
/// emits come back to it here, with the [`Host`], on the node's task.
///
/// Applications reach a running extension with [`crate::Node::with_extension`], which runs a
/// closure on the node's task with the extension and the host.
///
/// Every message an extension's protocol reads from a peer must pass [`Host::admit`] before
/// it is acted on: that is the node's one admission step (size, rate, ban). The extension
/// runs on the node's task: it must not block, and a panic in it stops the node.
///
/// Its connection handlers are polled only when they were woken, told something, or made
/// progress on their last poll, not whenever their connection wakes for another protocol
/// (libp2p's rule): a handler must keep the poll contract, registering the waker it is given
/// for everything it waits on. libp2p's request-response and `libp2p-stream` keep it. The
/// protocols a handler listens on are read again after it was told something or made
/// progress, or at its connection's first wake a second after the last read (`flat.rs`): a
/// list that changes otherwise (`libp2p-stream`'s, when the application accepts a protocol
/// on a connection already open) is listed up to a second late, and streams for the new
/// protocol are refused until then.
pub trait Extension: NetworkBehaviour<ToSwarm: Send> + Send + 'static {
    /// An event the behaviour emitted.
    fn on_event(&mut self, event: Self::ToSwarm, host: &mut Host<'_>);

    /// The extension of type `type_id` in this one: itself, or, for a composition of
    /// extensions (mail and IPFS in one behaviour), one of its parts. A composition overrides
    /// this to look in its parts, so that [`crate::Node::with_extension`] finds each part by
    /// its own type.
    fn find(&mut self, type_id: std::any::TypeId) -> Option<&mut dyn std::any::Any>
    where
        Self: Sized,
    {
        (type_id == std::any::TypeId::of::<Self>()).then_some(self as &mut dyn std::any::Any)
    }

    /// A message on a gossip topic this extension subscribed to ([`Host::subscribe`]), already
    /// admitted (size, rate, ban). Gossipsub forwards it only if this returns
    /// [`Verdict::Accept`]. Default: ignore.
    fn on_gossip(&mut self, message: GossipMessage, host: &mut Host<'_>) -> Verdict {
        let _ = (message, host);
        Verdict::Ignore
    }

    /// Called at the node's sweep, every 5 s: housekeeping that needs the host (such as
    /// [`Host::keep_connected`] for what expired). Default: nothing.
    fn on_sweep(&mut self, host: &mut Host<'_>) {
        let _ = host;
    }

    /// The closest peers to a key, for a lookup this extension started with
    /// [`Host::find_closest`]. Default: nothing.
    fn on_closest_peers(&mut self, lookup: LookupId, peers: Vec<PeerId>, host: &mut Host<'_>) {
        let _ = (lookup, peers, host);
    }
}

/// No extension: a node with dkvs's own protocols only.
impl Extension for libp2p::swarm::dummy::Behaviour {
    fn on_event(&mut self, event: std::convert::Infallible, _: &mut Host<'_>) {
        match event {}
    }
}

/// A gossip message for an extension.
#[derive(Clone, Debug)]
pub struct GossipMessage {
    /// The topic's name, as given to [`Host::subscribe`].
    pub topic: String,
    /// The message's bytes.
    pub data: Vec<u8>,
    /// The peer that forwarded it (not necessarily its author).
    pub source: PeerId,
}

/// What gossipsub does with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: deliver and forward.
    Accept,
    /// Not for us, or a duplicate: drop without penalty.
    Ignore,
    /// Invalid: drop and do not forward. (The extension calls [`Host::report`] to ban a
    /// peer that no honest node would have forwarded it from.)
    Reject,
}

impl From<Verdict> for gossipsub::MessageAcceptance {
    fn from(verdict: Verdict) -> gossipsub::MessageAcceptance {
        match verdict {
            Verdict::Accept => gossipsub::MessageAcceptance::Accept,
            Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
            Verdict::Reject => gossipsub::MessageAcceptance::Reject,
        }
    }
}

/// A lookup of the closest peers that an extension started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LookupId(pub(crate) kad::QueryId);

/// Why a gossip topic could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The name is dkvs's own (`/dkvs/watch/...`).
    #[error("topic {0:?} is reserved for dkvs's watches")]
    Reserved(String),
    /// Gossipsub refused to subscribe.
    #[error("cannot subscribe to {topic:?}: {reason}")]
    Subscribe {
        /// The topic.
        topic: String,
        /// Gossipsub's words.
        reason: String,
    },
    /// Gossipsub refused to publish (no peer on the topic, message too large, a duplicate).
    #[error("cannot publish on {topic:?}: {reason}")]
    Publish {
        /// The topic.
        topic: String,
        /// Gossipsub's words.
        reason: String,
    },
}

/// The node's services, lent to an extension while it handles an event or a call.
pub struct Host<'a> {
    pub(crate) peer_id: PeerId,
    pub(crate) kad: &'a mut kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) gossipsub: &'a mut gossipsub::Behaviour,
    pub(crate) blocked: &'a mut allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(crate) defence: &'a mut Defence,
    pub(crate) connections: &'a crate::node::Connections,
    pub(crate) used: &'a mut std::collections::HashMap<PeerId, tokio::time::Instant>,
    pub(crate) lookups: &'a mut HashSet<kad::QueryId>,
    pub(crate) lookup_ends: &'a mut crate::node::LookupEnds,
    pub(crate) topics: &'a mut HashSet<gossipsub::TopicHash>,
    pub(crate) records: &'a mut crate::lane::Behaviour,
    pub(crate) kept: &'a mut crate::idle::Kept,
}

impl Host<'_> {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Starts a lookup of the k closest peers to `key` (any bytes: a mailbox address, a CID);
    /// the answer comes to [`Extension::on_closest_peers`]: the k closest peers the lookup
    /// heard from, closest first; when it timed out, of those and the DHT servers in the
    /// routing table this node is connected to (some may be the slow peers it waited for).
    /// Nobody when it heard from nobody.
    pub fn find_closest(&mut self, key: Vec<u8>) -> LookupId {
        let id = self.kad.get_closest_peers(key);
        self.lookups.insert(id);
        self.lookup_ends.started(id, tokio::time::Instant::now());
        LookupId(id)
    }

    /// Subscribes to the gossip topic `name`; its messages come to [`Extension::on_gossip`].
    pub fn subscribe(&mut self, name: &str) -> Result<(), TopicError> {
        let topic = ext_topic(name)?;
        self.gossipsub
            .subscribe(&topic)
            .map_err(|e| TopicError::Subscribe { topic: name.to_owned(), reason: e.to_string() })?;
        self.topics.insert(topic.hash());
        Ok(())
    }

    /// Leaves the gossip topic `name`.
    pub fn unsubscribe(&mut self, name: &str) {
        if let Ok(topic) = ext_topic(name) {
            self.gossipsub.unsubscribe(&topic);
            self.topics.remove(&topic.hash());
        }
    }

    /// The peers known to be subscribed to the gossip topic `name` (to ask them for what was
    /// said on it before this node joined).
    pub fn topic_peers(&self, name: &str) -> Vec<PeerId> {
        let Ok(topic) = ext_topic(name) else { return Vec::new() };
        let hash = topic.hash();
        self.gossipsub
            .all_peers()
            .filter(|(_, topics)| topics.contains(&&hash))
            .map(|(peer, _)| *peer)
            .collect()
    }

    /// Publishes `data` on the gossip topic `name`.
    pub fn publish(&mut self, name: &str, data: Vec<u8>) -> Result<(), TopicError> {
        let topic = ext_topic(name)?;
        self.gossipsub
            .publish(topic, data)
            .map(|_| ())
            .map_err(|e| TopicError::Publish { topic: name.to_owned(), reason: e.to_string() })
    }

    /// The one admission step, as the record protocol takes it: a message of `len` bytes from
    /// `peer`, for a protocol whose messages are at most `limit` bytes. A refused message must
    /// be dropped unread; a peer that sends oversized messages or floods is banned
    /// (disconnected and refused for the ban duration).
    pub fn admit(&mut self, peer: PeerId, len: usize, limit: usize) -> Result<(), Refused> {
        let subnet = crate::node::subnet_of(self.connections, &peer);
        let now = tokio::time::Instant::now();
        let result = self.defence.admit(peer, subnet, len, limit, now);
        if result.is_err() && self.defence.is_banned(&peer) {
            self.blocked.block_peer(peer);
        }
        if result.is_ok() {
            self.used(peer);
        }
        result
    }

    /// The network `peer` is connected from ([`crate::Network`]), for an extension's own
    /// per-network bounds; `None` for a peer on this machine or the local network, one
    /// connected only through addresses with no IP (DNS names, the memory transport), or one
    /// not connected.
    pub fn network_of(&self, peer: &PeerId) -> Option<crate::Network> {
        crate::node::subnet_of(self.connections, peer).map(crate::Network::from_subnet)
    }

    /// Notes that this node is using its connection to `peer` (a transfer under way): the
    /// connection limit ([`crate::Config::max_connections`]) closes the least recently used.
    pub fn used(&mut self, peer: PeerId) {
        if let Some(at) = self.used.get_mut(&peer) {
            *at = tokio::time::Instant::now();
        }
    }

    /// Reports a peer that sent what no honest peer sends (a forged signature, a malformed
    /// message): it is disconnected and refused for the ban duration.
    pub fn report(&mut self, peer: PeerId, why: &str) {
        if self.defence.ban(peer, tokio::time::Instant::now()) {
            tracing::warn!(%peer, why, "banning peer");
        }
        self.blocked.block_peer(peer);
    }

    /// True while this node serves the DHT (others can reach it, or it is on a local network
    /// only): a second DHT an extension runs (IPFS's) follows it.
    pub fn dht_server(&self) -> bool {
        self.kad.mode() == kad::Mode::Server
    }

    /// True while `peer` is banned.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.defence.is_banned(peer)
    }

    /// Keeps this node's connections to `peer` open while nothing uses them (`keep`), or
    /// drops that wish, for the reason `why` (a name of the extension's own: a peer is kept
    /// while any reason holds). For peers that must reach this node, or this node them,
    /// without a dial (a notification to a peer behind NAT has no address to dial). Without
    /// it a connection closes after [`crate::Config::idle_connection_timeout`] unused; both
    /// ends must keep it, as it closes when either lets it go. It dials nobody, and the
    /// connection limit ([`crate::Config::max_connections`]) may still close it.
    pub fn keep_connected(&mut self, why: &'static str, peer: PeerId, keep: bool) {
        self.kept.set(why, peer, keep, self.records);
    }

    /// [`Host::keep_connected`] for exactly `peers` for `why`: the peers kept for it before
    /// and not among them are let go.
    pub fn keep_only_connected(&mut self, why: &'static str, peers: &HashSet<PeerId>) {
        self.kept.replace(why, peers, self.records);
    }
}

/// An extension's topic: any name outside dkvs's own watch topics.
fn ext_topic(name: &str) -> Result<gossipsub::IdentTopic, TopicError> {
    if name.starts_with(crate::watch::TOPIC_PREFIX) {
        return Err(TopicError::Reserved(name.to_owned()));
    }
    Ok(gossipsub::IdentTopic::new(name))
}
