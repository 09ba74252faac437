//! The node: a handle for applications and the task that drives the swarm.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use dkvs_record::{Key, Record};
use dkvs_store::Store;
use futures::StreamExt as _;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, identity, kad};
use tokio::sync::{mpsc, oneshot};

use crate::behaviour::{Behaviour, BehaviourEvent};
use crate::codec::pb;
use crate::defence::Defence;
use crate::extension::{Extension, GossipMessage, Host, LookupId};
use crate::ops::Op;
use crate::watch::Watch;
use crate::{
    BootstrapError, Config, DialError, GetError, GetOutcome, ListenError, NetError, PutError,
    PutReceipt,
};

/// How often the driver looks at deadlines, bans and expiry.
/// How often the replication queues are served while they hold records.
const TICK: Duration = Duration::from_millis(20);
/// The longest an idle node sleeps between checks.
const IDLE_WAKE: Duration = Duration::from_secs(60);
/// How often expired records are dropped from the store.
const EXPIRY_SWEEP: Duration = Duration::from_secs(5);
/// How long a node stranded (no DHT server connected, and its dials failing) waits before it
/// walks its table again, first and at most (doubling between): the table's refresh
/// ([`Config::table_refresh_interval`]) may be an hour away.
const REJOIN_FIRST: Duration = Duration::from_secs(30);
const REJOIN_MOST: Duration = Duration::from_secs(300);
/// How long a peer whose relayed connection closed is still taken for hole punching when it
/// connects directly, and how many such peers are remembered at most.
const RELAYED_LATELY: Duration = Duration::from_secs(60);
/// About how often a watched key is read again while its kept replicas stay connected, and
/// the longest its backoff grows to while they are gone, when that is over 5 min
/// ([`WatchRead::due`]; each key's is this give or take a fifth, by the key, so that watches
/// made together do not read together): a third of the table's refresh interval, as the
/// watcher's view of who holds the key is part of its view of the network; at least 5 min
/// (the default's), at most [`WATCH_REFRESH_MOST`]. 20 min on the node's phone and light
/// profiles, whose tables are refreshed hourly: a phone that watches 100 keys reads them
/// about 300 times an hour once their backoffs have grown, rather than 1,200, most of them
/// as keys whose replicas it cannot keep connected (it keeps 16 peers for all its watches).
fn watch_refresh(config: &Config) -> Duration {
    (config.table_refresh_interval / 3).clamp(REJOIN_MOST, WATCH_REFRESH_MOST)
}
/// The most [`watch_refresh`] gives (each key's refresh is this give or take a fifth):
/// updates whose notification was lost still come, however rarely the table is refreshed.
const WATCH_REFRESH_MOST: Duration = Duration::from_secs(3600);
/// How long a watched key's kept replicas stay connected after a read before its backoff
/// starts over ([`WatchRead::due`]): past a replica's idle timeout (60 s by default, 30 s on
/// phones) and a sweep, as a replica that does not keep the connection at its end (one that
/// does not hold the key yet) closes it that long after the read.
const WATCH_STAYED: Duration = Duration::from_secs(120);
/// A new watch's key is read once more this long after its first read, at the next sweep (1
/// to 6 s after it, later when more than [`WATCH_READS_PER_SWEEP`] keys are due): an update
/// written after [`Node::watch`] returned, before the replicas' gossip knew of the new
/// subscription, comes then, not at the next refresh.
const WATCH_SETTLE: Duration = Duration::from_secs(1);
/// The most watched keys read again at one sweep (the others wait for the next ones).
const WATCH_READS_PER_SWEEP: usize = 16;
/// Why a watcher keeps a connection ([`Driver::keep_for_watches`]).
const KEEP_REPLICAS: &str = "dkvs: replicas of a watched key";
/// Why a replica keeps a connection ([`Driver::keep_for_watches`]).
const KEEP_WATCHERS: &str = "dkvs: watchers of a key held";
const MAX_RELAYED_LATELY: usize = 1024;
/// Random keys tried for one that falls in the bucket a refresh walks, before a peer it holds
/// is walked to instead ([`Driver::refresh_table`]): enough for the four farthest buckets.
const REFRESH_TRIES: usize = 64;

/// Who waits on a dial of a peer, and for what.
pub(crate) enum DialReply {
    /// A bootstrap peer ([`Node::add_peer`]): until it is connected.
    Connected(oneshot::Sender<Result<(), DialError>>),
    /// A remembered peer ([`Node::rejoin`]): until identify told whether it serves the DHT
    /// (false too when its connections closed first, or identify failed).
    Identified(oneshot::Sender<Result<bool, DialError>>),
}

impl DialReply {
    fn failed(self, error: DialError) {
        match self {
            DialReply::Connected(reply) => drop(reply.send(Err(error))),
            DialReply::Identified(reply) => drop(reply.send(Err(error))),
        }
    }
}

pub(crate) enum Command {
    Listen(Multiaddr, oneshot::Sender<Result<Multiaddr, ListenError>>),
    /// A peer to dial at `addrs` (one dial). A bootstrap peer ([`DialReply::Connected`])
    /// makes this node part of a network from now on, and its addresses go in the routing
    /// table; a remembered one ([`DialReply::Identified`]) does neither.
    AddPeer {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: DialReply,
    },
    Bootstrap(oneshot::Sender<Result<(), BootstrapError>>),
    Put {
        record: Record,
        expected: dkvs_store::Expect,
        reply: oneshot::Sender<Result<PutReceipt, PutError>>,
    },
    Get {
        key: Key,
        every: bool,
        reply: oneshot::Sender<Result<GetOutcome, GetError>>,
    },
    Watch {
        key: Key,
        reply: oneshot::Sender<Watch>,
    },
    KeepAlive {
        key: Key,
        owner: Option<Arc<dkvs_account::Keypair>>,
        ttl_ms: u64,
    },
    Peers(oneshot::Sender<Vec<PeerId>>),
    Reachability(oneshot::Sender<Reachability>),
    Connections(PeerId, oneshot::Sender<Vec<Multiaddr>>),
    Banned(oneshot::Sender<Vec<PeerId>>),
    Held(oneshot::Sender<Vec<PeerId>>),
    ReplicationStats(oneshot::Sender<crate::ReplicationStats>),
    Wakeups(oneshot::Sender<u64>),
    Pacing(oneshot::Sender<crate::PacingStats>),
    Turn(PeerId, usize, oneshot::Sender<bool>),
    Trimmed(oneshot::Sender<u64>),
    LookupsTimedOut(oneshot::Sender<u64>),
    RefusedHandshakes(oneshot::Sender<u64>),
    KeptDropped(oneshot::Sender<Vec<Key>>),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    ClosestPeers(Vec<u8>, oneshot::Sender<Vec<PeerId>>),
    RoutingTable(oneshot::Sender<Vec<PeerId>>),
    LiveServers(oneshot::Sender<Vec<PeerId>>),
    Remembered(usize, oneshot::Sender<Vec<Multiaddr>>),
    Extension(std::any::TypeId, ExtensionCall),
    Shutdown(oneshot::Sender<()>),
}

/// A closure to run on the node's task with the extension of the type asked for (as `Any`, if
/// the node hosts one) and the host.
pub(crate) type ExtensionCall =
    Box<dyn FnOnce(Option<&mut dyn std::any::Any>, &mut Host<'_>) + Send>;

/// A running dkvs node. Cloning gives another handle to the same node; the node stops on
/// [`Node::shutdown`] or when the last handle is dropped.
#[derive(Clone)]
pub struct Node {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    store: Store,
    counters: crate::transport::Counters,
    _task: Arc<TaskGuard>,
}

struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A handle to a node that does not keep it running: for a background task that serves the
/// node (an extension's periodic work) and must end when the node's last [`Node`] is dropped.
#[derive(Clone)]
pub struct WeakNode {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    store: Store,
    counters: crate::transport::Counters,
    task: std::sync::Weak<TaskGuard>,
}

impl WeakNode {
    /// The node, while a [`Node`] handle to it is alive.
    pub fn upgrade(&self) -> Option<Node> {
        Some(Node {
            commands: self.commands.clone(),
            peer_id: self.peer_id,
            store: self.store.clone(),
            counters: self.counters.clone(),
            _task: self.task.upgrade()?,
        })
    }
}

/// Assembles a node: its identity, its store, its configuration and, optionally, an
/// [`Extension`] that adds protocols to its swarm.
///
/// ```no_run
/// # fn build(store: dkvs_net::store::Store) -> Result<(), dkvs_net::NetError> {
/// let identity = dkvs_net::libp2p::identity::Keypair::generate_ed25519();
/// let node = dkvs_net::NodeBuilder::new(identity, store, dkvs_net::Config::default())
///     .with_extension(|_identity| dkvs_net::libp2p::swarm::dummy::Behaviour)
///     .spawn()?;
/// # Ok(()) }
/// ```
pub struct NodeBuilder<E = libp2p::swarm::dummy::Behaviour> {
    identity: identity::Keypair,
    store: Store,
    config: Config,
    extension: E,
}

impl NodeBuilder {
    /// A node with dkvs's own protocols only.
    pub fn new(identity: identity::Keypair, store: Store, config: Config) -> NodeBuilder {
        NodeBuilder { identity, store, config, extension: libp2p::swarm::dummy::Behaviour }
    }
}

impl<E: Extension> NodeBuilder<E> {
    /// Hosts the extension that `make` builds from the node's identity (which it may use to
    /// sign, as a replica signs a custody receipt). A node hosts one extension: to host
    /// several, compose them into one behaviour (and override [`Extension::find`]); a second
    /// call replaces the first.
    pub fn with_extension<X: Extension>(
        self,
        make: impl FnOnce(&identity::Keypair) -> X,
    ) -> NodeBuilder<X> {
        let extension = make(&self.identity);
        NodeBuilder { identity: self.identity, store: self.store, config: self.config, extension }
    }

    /// Starts the node. Must be called within a tokio runtime. The node listens nowhere until
    /// told to ([`Node::listen_on`]).
    pub fn spawn(self) -> Result<Node, NetError> {
        let NodeBuilder { identity, store, config, extension } = self;
        config.check().map_err(NetError::Setup)?;
        let peer_id = identity.public().to_peer_id();
        let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
        let transports = config.transports;
        let counters = crate::transport::Counters::default();
        let misdialed = crate::transport::Misdialed::default();
        // The relay client's transport is built with the others, so that its dials pass the
        // same check of the peer reached (`crate::transport::AnotherPeer`).
        let (relay_transport, relay_client) = libp2p::relay::client::new(peer_id);
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(identity)
            .with_tokio()
            .with_other_transport(|key| {
                crate::transport::build(
                    key,
                    transports,
                    &counters,
                    &misdialed,
                    Some(relay_transport),
                )
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            })
            .map_err(|e| setup(&e))?
            .with_behaviour(|key| {
                let changes = crate::flat::Changes::default();
                Behaviour::new(key, relay_client, &config, extension, &changes)
                    .map(|behaviour| crate::flat::flat(behaviour, changes))
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            })
            .map_err(|e| setup(&e))?
            // Outbound streams are negotiated as multistream-select V1 (libp2p's default), one
            // round trip before the first bytes. Lazy negotiation (V1Lazy) took 14% off a get's
            // CPU while the record protocol opened a stream per request; on lanes it would save
            // one round trip per lane, and it makes a peer that does not speak a protocol look
            // as if it did until it answers: Kademlia then confirms the protocol and puts the
            // peer in its table (docs/testnet-plan.md).
            .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_connection_timeout))
            .with_connection_timeout(crate::transport::SETUP_TIMEOUT)
            .build();
        if config.relay_server
            && let Some(relay) = swarm.behaviour_mut().relay_server.as_mut()
        {
            // A relay advertises itself only once it knows a public address; one configured
            // to relay serves from the start.
            relay.set_status(Some(libp2p::relay::Status::Enable));
        }
        let (commands, receiver) = mpsc::channel(256);
        let driver =
            Driver::new(swarm, store.clone(), config, receiver, misdialed, counters.clone());
        let span = tracing::info_span!("dkvs-node", peer = %peer_id);
        let task = tokio::spawn(tracing::Instrument::instrument(driver.run(), span));
        Ok(Node { commands, peer_id, store, counters, _task: Arc::new(TaskGuard(task)) })
    }
}

impl Node {
    /// Starts a node with the libp2p `identity` on `store` and no extension
    /// ([`NodeBuilder`] assembles one with an extension). Must be called within a tokio
    /// runtime. The node listens nowhere until told to ([`Node::listen_on`]).
    pub fn spawn(
        identity: identity::Keypair,
        store: Store,
        config: Config,
    ) -> Result<Node, NetError> {
        NodeBuilder::new(identity, store, config).spawn()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// A handle that does not keep the node running ([`WeakNode`]).
    pub fn downgrade(&self) -> WeakNode {
        WeakNode {
            commands: self.commands.clone(),
            peer_id: self.peer_id,
            store: self.store.clone(),
            counters: self.counters.clone(),
            task: Arc::downgrade(&self._task),
        }
    }

    /// The node's libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The node's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The bytes this node's connections have carried since it started (TCP and the memory
    /// transport, framing and encryption included; not QUIC).
    pub fn traffic(&self) -> crate::Traffic {
        self.counters.traffic()
    }

    /// Listens on `addr` (e.g. `/ip4/127.0.0.1/tcp/0`) and returns the address bound.
    pub async fn listen_on(&self, addr: Multiaddr) -> Result<Multiaddr, ListenError> {
        self.ask(|tx| Command::Listen(addr, tx)).await.ok_or(ListenError::Shutdown)?
    }

    /// Adds a known peer (a bootstrap node) and connects to it.
    pub async fn add_peer(&self, peer: PeerId, addr: Multiaddr) -> Result<(), DialError> {
        let addrs = vec![addr];
        self.ask(|reply| Command::AddPeer { peer, addrs, reply: DialReply::Connected(reply) })
            .await
            .ok_or(DialError::Shutdown)?
    }

    /// Connects to the peer at `addr`, which ends in `/p2p/<peer id>` (as a node prints its
    /// listen addresses), and adds it as a known peer; returns its id.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, DialError> {
        let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
            return Err(DialError::NoPeerId { addr });
        };
        self.add_peer(peer, addr).await.map(|()| peer)
    }

    /// Dials a peer this node was connected to in an earlier run, at `addrs` (one dial that
    /// tries them in turn); returns once identify told whether the peer serves the DHT of
    /// dkvs (`true`: it is in the routing table now), or `false` when its connections closed
    /// before that. Unlike [`Node::add_peer`], the peer is no bootstrap peer the node was
    /// given: until one that speaks dkvs connects, a node whose remembered peers are all gone
    /// is still a network of one, and writes alone.
    pub async fn rejoin(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<bool, DialError> {
        self.ask(|reply| Command::AddPeer { peer, addrs, reply: DialReply::Identified(reply) })
            .await
            .ok_or(DialError::Shutdown)?
    }

    /// Walks the DHT to fill the routing table; returns when the walk is done. Peers whose
    /// dials timed out lately are dialed again (call it when this node's network changed;
    /// `dkvs node` calls it once, at its start). A walk that ends with the table not trusted
    /// is followed by a check of it, a lookup still under way when this returns: an operation
    /// started meanwhile looks its key up.
    pub async fn bootstrap(&self) -> Result<(), BootstrapError> {
        self.ask(Command::Bootstrap).await.ok_or(BootstrapError::Shutdown)?
    }

    /// Stores `record` on this node and on the k closest peers; succeeds when a quorum holds it.
    ///
    /// The k closest are taken from the routing table when it is trusted and covers the key,
    /// else from a Kademlia lookup, which ends at half the operation's timeout: the closest
    /// of the peers it heard from and the DHT servers in the routing table this node is
    /// connected to (nobody when it heard from nobody).
    pub async fn put(&self, record: Record) -> Result<PutReceipt, PutError> {
        self.ask(|reply| Command::Put { record, expected: dkvs_store::Expect::Any, reply })
            .await
            .ok_or(PutError::Shutdown)?
    }

    /// Compare-and-swap: stores `record` only if the newest record in the network has sequence
    /// `expected` (`None`: only if there is none). On mismatch, [`PutError::Conflict`] carries
    /// the newest record found.
    pub async fn put_cas(
        &self,
        record: Record,
        expected: Option<u64>,
    ) -> Result<PutReceipt, PutError> {
        let expected = dkvs_store::Expect::from_cas(expected);
        self.ask(|reply| Command::Put { record, expected, reply })
            .await
            .ok_or(PutError::Shutdown)?
    }

    /// Writes `value` as the next version of `key`, signed by `owner` and living `ttl_ms`:
    /// reads the network's newest sequence (a value that expired still counts: its sequence
    /// is remembered), signs the one after it, and writes it. When another writer got there
    /// first (a replica holds a newer version, or both signed the same sequence: the replicas
    /// refuse it, and so does this node's store) it reads again and retries, four attempts in
    /// all, then answers with the last attempt's error. A read without a quorum is
    /// [`PutError::NoReadQuorum`]: nothing was written. The receipt's
    /// [`PutReceipt::requests`] counts every attempt's read and the last attempt's write.
    ///
    /// It reads once per attempt. The write is not a compare-and-swap ([`Node::put_cas`]),
    /// which would read the same replicas again a moment later: the replicas themselves refuse
    /// a version at or below what they hold, so the race it would catch is caught there
    /// anyway, and a read that waits on a silent replica (the linger, or a second for a key
    /// that is not set) would be waited twice.
    pub async fn put_next(
        &self,
        owner: &dkvs_account::Keypair,
        key: &Key,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<PutReceipt, PutError> {
        self.write_next(owner, key, Some(value), ttl_ms, false).await
    }

    /// [`Node::put_next`], only if the network holds no value of `key`: not set, deleted (the
    /// write follows the tombstone) or expired (it follows the sequence remembered). A value
    /// held when it reads is [`PutError::Conflict`] with that record; so is one another
    /// writer put meanwhile at the same sequence (the replicas refuse the second write, which
    /// reads again). The condition is the read's, as [`Node::put_cas`]'s is: two writers whose
    /// reads saw different sequences (one missed a replica's memory of an expired record) may
    /// both succeed, the higher sequence winning.
    pub async fn put_new(
        &self,
        owner: &dkvs_account::Keypair,
        key: &Key,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<PutReceipt, PutError> {
        self.write_next(owner, key, Some(value), ttl_ms, true).await
    }

    /// Deletes `key` as [`Node::put_next`] writes: a tombstone signed by `owner` with the next
    /// sequence, living `ttl_ms` (at least as long as what it replaces should be kept out). A
    /// key the network holds no value of (not set, or deleted) is left as it is:
    /// [`PutError::NothingToDelete`].
    pub async fn delete_next(
        &self,
        owner: &dkvs_account::Keypair,
        key: &Key,
        ttl_ms: u64,
    ) -> Result<PutReceipt, PutError> {
        self.write_next(owner, key, None, ttl_ms, false).await
    }

    /// A value (`Some`) or a tombstone (`None`) as the next version of `key`; `if_unset`: only
    /// while no value is held.
    async fn write_next(
        &self,
        owner: &dkvs_account::Keypair,
        key: &Key,
        value: Option<Vec<u8>>,
        ttl_ms: u64,
        if_unset: bool,
    ) -> Result<PutReceipt, PutError> {
        let (mut attempts, mut requests) = (0, 0u32);
        loop {
            attempts += 1;
            // What the network holds now; the replicas refuse the write if a newer version
            // (or another of the same sequence) got there first.
            let found = self.get_every(key).await.map_err(|read| match read {
                GetError::Shutdown => PutError::Shutdown,
                read => PutError::NoReadQuorum { read },
            })?;
            requests = requests.saturating_add(found.requests);
            if if_unset && found.record.as_ref().is_some_and(|r| !r.is_tombstone()) {
                return Err(PutError::Conflict { current: found.record.map(Box::new) });
            }
            if value.is_none() && found.record.as_ref().is_none_or(Record::is_tombstone) {
                return Err(PutError::NothingToDelete {
                    key: key.to_string(),
                    tombstone_seq: found.record.as_ref().map(Record::seq),
                });
            }
            let live = found.record.as_ref().map(Record::seq);
            let local = self.store.highest_seq(key.as_str()).unwrap_or(0);
            let newest = found.highest_seq.max(live.unwrap_or(0)).max(local);
            let seq = newest
                .checked_add(1)
                .ok_or_else(|| PutError::NoNextSequence { key: key.to_string(), seq: newest })?;
            let draft = match &value {
                Some(value) => dkvs_record::Draft::new(key.clone(), value.clone(), seq, ttl_ms),
                None => dkvs_record::Draft::tombstone(key.clone(), seq, ttl_ms),
            };
            let record = draft.sign(owner).map_err(|e| PutError::Local(e.into()))?;
            match self.put(record).await {
                Err(e) if attempts < 4 && lost_race(&e) => {
                    tracing::debug!(%key, error = %e, "another writer got there first; reading again");
                }
                Ok(mut receipt) => {
                    receipt.requests = receipt.requests.saturating_add(requests);
                    return Ok(receipt);
                }
                result => return result,
            }
        }
    }

    /// Deletes a key: puts `tombstone`, a signed tombstone record with a higher sequence.
    pub async fn delete(&self, tombstone: Record) -> Result<PutReceipt, PutError> {
        if !tombstone.is_tombstone() {
            return Err(PutError::NotATombstone);
        }
        self.put(tombstone).await
    }

    /// Reads `key` from the network: asks the closest replicas, verifies every answer, returns
    /// the newest valid record with how many replicas confirmed it, and repairs the replicas
    /// that were stale or missing. In a network of more than 13 nodes it first asks a random
    /// 12 of the 20 closest and answers at once if they all agree (see the crate's README).
    pub async fn get(&self, key: &Key) -> Result<GetOutcome, GetError> {
        self.ask(|reply| Command::Get { key: key.clone(), every: false, reply })
            .await
            .ok_or(GetError::Shutdown)?
    }

    /// Like [`Node::get`], but asks every replica found at once: for a writer choosing the
    /// sequence after the network's highest (each replica's claim counts), or a reader that
    /// wants every replica's answer in [`GetOutcome::confirmations`].
    pub async fn get_every(&self, key: &Key) -> Result<GetOutcome, GetError> {
        self.ask(|reply| Command::Get { key: key.clone(), every: true, reply })
            .await
            .ok_or(GetError::Shutdown)?
    }

    /// Reads `key` from this node's store only; the outcome says it is local.
    pub fn get_local(&self, key: &Key) -> GetOutcome {
        let record = self.store.get(key.as_str()).map(|r| (*r).clone());
        GetOutcome {
            confirmations: usize::from(record.is_some()),
            record,
            answered: 1,
            asked: 1,
            source: crate::Source::Local,
            highest_seq: self.store.highest_seq(key.as_str()).unwrap_or(0),
            requests: 0,
        }
    }

    /// Subscribes to newer versions of `key`: every record delivered is verified and newer than
    /// the one before it.
    ///
    /// Returns once the watch's first read of the key answered, within
    /// [`Config::operation_timeout`]: the watch begins at the newest version that read found
    /// or this node held ([`Watch::start_seq`]), and every version delivered is newer. A
    /// version written after `watch` returned comes however soon it was written: by gossip
    /// at once, or, if the replicas' gossip did not know of the watch yet, by a read of the
    /// key a few seconds later (which brings the newest: of a quick burst then, the ones
    /// before it are skipped). The version the watch began at does not come. A read that
    /// gave no version this node's store takes (no replica answered, no quorum, or a version
    /// its store refused: a squatter's, a stale one) begins the watch at what this node held,
    /// or at what this node's other watchers of the key were handed, and a version the
    /// network held already may come as the first.
    ///
    /// The key's replicas publish each version they accept over gossipsub to the watchers
    /// they are connected to: the watch reads the key to connect to them, and both ends keep
    /// those connections open however idle, as many as the connection limit spares. When most
    /// of them are gone (backing off), once when a node that was stranded joins again, and
    /// anyway about every third of [`Config::table_refresh_interval`], at least 5 min and at
    /// most an hour, give or take a fifth by the key (5 min by default: the replicas change
    /// as nodes come and go), the key is read again, and a newer version that read finds is
    /// delivered: an update whose notification was lost comes
    /// that much later, not never.
    pub async fn watch(&self, key: &Key) -> Result<Watch, NetError> {
        self.ask(|reply| Command::Watch { key: key.clone(), reply }).await.ok_or(NetError::Shutdown)
    }

    /// The peers this node is connected to.
    pub async fn connected_peers(&self) -> Vec<PeerId> {
        self.ask(Command::Peers).await.unwrap_or_default()
    }

    /// Keeps `key` alive for its owner: before the newest record this node holds for it
    /// expires, the node re-signs it with `owner` (same value, next sequence, `ttl_ms` more
    /// life) and puts it again. Stops when the key is deleted, handed over, or
    /// [`Node::stop_keep_alive`] is called.
    pub async fn keep_alive(&self, owner: Arc<dkvs_account::Keypair>, key: &Key, ttl_ms: u64) {
        let _ = self
            .commands
            .send(Command::KeepAlive { key: key.clone(), owner: Some(owner), ttl_ms })
            .await;
    }

    /// Stops keeping `key` alive.
    pub async fn stop_keep_alive(&self, key: &Key) {
        let _ = self
            .commands
            .send(Command::KeepAlive { key: key.clone(), owner: None, ttl_ms: 0 })
            .await;
    }

    /// How others can reach this node: the Kademlia mode, AutoNAT's verdict, and the
    /// addresses confirmed as external.
    pub async fn reachability(&self) -> Reachability {
        self.ask(Command::Reachability).await.unwrap_or_default()
    }

    /// The remote addresses of this node's open connections to `peer`; a relayed one
    /// contains `/p2p-circuit`.
    pub async fn connections(&self, peer: PeerId) -> Vec<Multiaddr> {
        self.ask(|tx| Command::Connections(peer, tx)).await.unwrap_or_default()
    }

    /// The peers this node refuses for now: they sent forged records or flooded it.
    pub async fn banned_peers(&self) -> Vec<PeerId> {
        self.ask(Command::Banned).await.unwrap_or_default()
    }

    /// The peers this node takes for gone for now ([`crate::held`]): a dial of theirs failed
    /// slowly, or they answered nothing for 10 s while asked and their connections were
    /// closed. Its lookups and operations pass over them until they connect again or their
    /// hold ends (30 s; a peer whose dials keep failing slowly, twice as long each time, at
    /// most 16 min). None while this node is stranded (its own network may be what fails).
    pub async fn held_peers(&self) -> Vec<PeerId> {
        self.ask(Command::Held).await.unwrap_or_default()
    }

    /// What replication did since the node started: rounds, messages and bytes, records sent.
    pub async fn replication_stats(&self) -> crate::ReplicationStats {
        self.ask(Command::ReplicationStats).await.unwrap_or_default()
    }

    /// How often the node's task woke up for its timers since it started (events aside). It
    /// has no fixed tick: an idle node wakes about once every five seconds, to sweep expired
    /// records.
    pub async fn wakeups(&self) -> u64 {
        self.ask(Command::Wakeups).await.unwrap_or_default()
    }

    /// What the pacing of this node's own requests did since it started: requests that
    /// waited for their turn, and requests held back (see the crate's README).
    pub async fn pacing(&self) -> crate::PacingStats {
        self.ask(Command::Pacing).await.unwrap_or_default()
    }

    /// Waits for this node's turn to send `peer` a message of `len` bytes on an extension's
    /// protocol (mail's requests, say), then returns; the caller sends it at once. A node
    /// admits from one peer only so many messages and bytes a second, for all protocols
    /// together ([`crate::Host::admit`]), and refuses the rest ("rate limited", "busy"); this
    /// node keeps what it sends each peer within that on the default configuration, its
    /// record requests included, and a message over it waits in the same queue as they do
    /// (see [`crate::PacingStats`]). An application sending as fast as it can gets its
    /// messages there later, not refused. Only what asks for a turn is paced: Kademlia,
    /// gossip and an extension's own messages that take none (mail's notifications, bitswap)
    /// are not, and must keep within a peer's limits on their own.
    ///
    /// [`crate::TurnError::RateLimited`] at once when so much already waits for `peer` that this
    /// message's turn would come after an operation's timeout
    /// ([`crate::Config::operation_timeout`]). Dropping the future gives the turn up.
    pub async fn turn(&self, peer: PeerId, len: usize) -> Result<(), crate::TurnError> {
        match self.ask(|reply| Command::Turn(peer, len, reply)).await {
            Some(true) => Ok(()),
            Some(false) => Err(crate::TurnError::RateLimited { peer }),
            None => Err(crate::TurnError::Shutdown),
        }
    }

    /// Peers this node disconnected since it started to keep within
    /// [`Config::max_connections`] (see [`Config::subnet_share`]).
    pub async fn trimmed(&self) -> u64 {
        self.ask(Command::Trimmed).await.unwrap_or_default()
    }

    /// The lookups of operations and of the table's refresh that timed out since the node
    /// started (a lookup that completed heard from every peer near the key that answers).
    pub async fn lookups_timed_out(&self) -> u64 {
        self.ask(Command::LookupsTimedOut).await.unwrap_or_default()
    }

    /// The keys this node stopped keeping alive ([`Node::keep_alive`]) by itself since the
    /// last call: the network's newest record of each is a tombstone, or another owner's
    /// (handed over), as a round found it. Keys whose record in this node's store looks so
    /// are read from the network at this call, and come at a later one if it says so.
    pub async fn kept_dropped(&self) -> Vec<Key> {
        self.ask(Command::KeptDropped).await.unwrap_or_default()
    }

    /// Inbound connections refused since the node started because their address already had
    /// [`Config::max_pending_per_address`] in their handshake, or all addresses
    /// [`Config::max_pending_inbound`].
    pub async fn refused_handshakes(&self) -> u64 {
        self.ask(Command::RefusedHandshakes).await.unwrap_or_default()
    }

    /// The addresses this node listens on.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.ask(Command::ListenAddrs).await.unwrap_or_default()
    }

    /// Addresses to join the network by at the next start ([`Node::rejoin`]): of DHT servers
    /// of dkvs this node is connected to (each ends in `/p2p/<peer id>`), at most `limit`:
    /// those connected longest first, at most two peers of one network, two addresses a peer
    /// (the one this node dialed it at, then the routing table's, public before private,
    /// direct before relayed, loopback ones only for a peer on this machine). A node that
    /// remembers them rejoins the network it was in without being told a bootstrap peer again.
    pub async fn servers_to_remember(&self, limit: usize) -> Vec<Multiaddr> {
        self.ask(|tx| Command::Remembered(limit, tx)).await.unwrap_or_default()
    }

    /// The peers in this node's Kademlia routing table (the servers it knows), as they are
    /// now: no lookup. What a simulation measures routes on.
    pub async fn routing_table(&self) -> Vec<PeerId> {
        self.ask(Command::RoutingTable).await.unwrap_or_default()
    }

    /// The peers of this node's routing table that its operations may take as replicas now:
    /// DHT servers of dkvs that it is connected to and that identified themselves. (An entry
    /// of [`Node::routing_table`] that is not among them is not connected, not identified
    /// yet, or no server of records: a peer that speaks dkvs's Kademlia only.)
    pub async fn live_servers(&self) -> Vec<PeerId> {
        self.ask(Command::LiveServers).await.unwrap_or_default()
    }

    /// The k closest peers to `key` (any bytes) that a Kademlia lookup heard from, closest
    /// first; when the lookup timed out, of those and the DHT servers in the routing table
    /// this node is connected to. Empty when the lookup heard from nobody, or the node is
    /// shut down.
    pub async fn closest_peers(&self, key: Vec<u8>) -> Vec<PeerId> {
        self.ask(|tx| Command::ClosestPeers(key, tx)).await.unwrap_or_default()
    }

    /// Runs `f` on the node's task with its extension of type `X` (the extension itself, or a
    /// part of a composition, see [`Extension::find`]) and the [`Host`], and returns what `f`
    /// returns. [`NetError::NoSuchExtension`] when the node hosts no `X`.
    pub async fn with_extension<X, R>(
        &self,
        f: impl FnOnce(&mut X, &mut Host<'_>) -> R + Send + 'static,
    ) -> Result<R, NetError>
    where
        X: Extension,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let call: ExtensionCall = Box::new(move |extension, host| {
            let extension = extension.and_then(|e| e.downcast_mut::<X>());
            let _ = tx.send(extension.map(|extension| f(extension, host)));
        });
        let command = Command::Extension(std::any::TypeId::of::<X>(), call);
        self.commands.send(command).await.map_err(|_| NetError::Shutdown)?;
        rx.await
            .map_err(|_| NetError::Shutdown)?
            .ok_or(NetError::NoSuchExtension(std::any::type_name::<X>()))
    }

    /// Stops the node: closes connections, syncs the store.
    pub async fn shutdown(self) {
        let _ = self.ask(Command::Shutdown).await;
    }
}

/// How others can reach a node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reachability {
    /// True when Kademlia runs in server mode (the node answers DHT queries and is a replica).
    pub kad_server: bool,
    /// AutoNAT's verdict.
    pub nat: NatStatus,
    /// Addresses confirmed as reachable from outside.
    pub external_addrs: Vec<Multiaddr>,
    /// Addresses through the relays this node holds a reservation on, as others dial them
    /// (`.../p2p/<relay>/p2p-circuit/p2p/<this node>`).
    pub relay_addrs: Vec<Multiaddr>,
}

/// AutoNAT's verdict on whether this node can be dialed from outside.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NatStatus {
    /// Not known yet (too few peers have tried).
    #[default]
    Unknown,
    /// Peers could not dial any address of this node: it is behind NAT or a firewall.
    Private,
    /// A peer said it dialed this address of this node (AutoNAT's word: the node serves the
    /// DHT and gives up a relay reservation only once a peer has dialed it directly).
    Public(Multiaddr),
}

impl From<libp2p::autonat::NatStatus> for NatStatus {
    fn from(status: libp2p::autonat::NatStatus) -> NatStatus {
        match status {
            libp2p::autonat::NatStatus::Public(addr) => NatStatus::Public(addr),
            libp2p::autonat::NatStatus::Private => NatStatus::Private,
            libp2p::autonat::NatStatus::Unknown => NatStatus::Unknown,
        }
    }
}

pub(crate) type OpId = u64;

type ListenReply = oneshot::Sender<Result<Multiaddr, ListenError>>;

/// Open connections: peer -> connection -> (remote address, dialed by this node).
pub(crate) type Connections =
    HashMap<PeerId, HashMap<libp2p::swarm::ConnectionId, (Multiaddr, bool)>>;

/// Where a connection comes from, as this node records it. An inbound relayed connection's
/// remote address is only `/p2p/<peer>`; it is recorded as the circuit it came through
/// (`.../p2p/<relay>/p2p-circuit`), so that it counts as relayed, and its peer shares the
/// relay's network's byte budget.
pub(crate) fn remote_address(endpoint: &libp2p::core::ConnectedPoint) -> Multiaddr {
    match endpoint {
        libp2p::core::ConnectedPoint::Listener { local_addr, .. } if is_relayed(local_addr) => {
            local_addr.clone()
        }
        other => other.get_remote_address().clone(),
    }
}

/// Whether a write failed because another writer got to the key first: the newest moved on
/// between the read and the write (a conflict or a newer version), or two writers signed the
/// same next sequence (a fork, here or at most of the replicas that refused).
fn lost_race(error: &PutError) -> bool {
    match error {
        PutError::Conflict { .. } | PutError::Stale { .. } => true,
        PutError::Local(dkvs_store::PutError::Fork { .. }) => true,
        PutError::NoQuorum { receipt } => matches!(
            receipt.main_refusal(),
            Some(crate::Refusal::Fork | crate::Refusal::Stale | crate::Refusal::Conflict)
        ),
        _ => false,
    }
}

/// The network `peer` is connected from, for the byte budget its ids share (see
/// [`crate::defence::Subnet`]); `None` for a peer on this machine or the local network, or
/// connected only through addresses with no IP (DNS names, the memory transport).
pub(crate) fn subnet_of(
    connections: &Connections,
    peer: &PeerId,
) -> Option<crate::defence::Subnet> {
    connections.get(peer)?.values().find_map(|(addr, _)| crate::defence::Subnet::of(addr))
}

/// How many peers of one network (an IPv4 /24, an IPv6 /48) [`Node::servers_to_remember`]
/// gives at most: those who run many peer ids on one host or network fill few of the places.
const REMEMBERED_PER_NETWORK: usize = 2;

/// When the lookups in flight must end. Kademlia has no timer for a lookup's deadline and
/// looks at it only when polled: on a quiet node a lookup waiting on a stopped or unreachable
/// peer ran on to that peer's 10-s request or setup timeout (9.97 s seen for an operation's,
/// 8.8 s for a letter's), twice its time. So the node wakes at each lookup's end, and if
/// Kademlia still runs it then (it starts a lookup's clock when it first polls it, a moment
/// after it was asked for; on a loaded machine, longer), again at its end by Kademlia's clock.
/// A walk of the table (`Node::bootstrap`'s, the node's own, Kademlia's) is a lookup per step,
/// each with a lookup's time: the node wakes at the end of each step it started, and of each
/// step after the first of Kademlia's own walks (their first steps are not woken for: the node
/// learns of such a walk at its first step's end).
/// (Generic over the lookup's id so that it is tested without a Kademlia.)
pub(crate) struct LookupEnds<Id = kad::QueryId> {
    ends: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, u64)>>,
    /// The lookup of each entry in `ends` that is its lookup's latest (an older one is
    /// passed over: a walk's next step, or a wake again by Kademlia's clock, replaced it).
    ids: HashMap<u64, Id>,
    /// Each lookup's latest entry.
    latest: HashMap<Id, u64>,
    next: u64,
    /// A lookup's time: Kademlia's query timeout ([`lookup_time`]).
    time: Duration,
}

/// How long after a lookup's end by Kademlia's clock the node wakes for it.
const LOOKUP_END_GRACE: Duration = Duration::from_millis(20);

/// How long a Kademlia lookup may take: half an operation's time, so an operation has the
/// other half for its requests.
pub(crate) fn lookup_time(config: &Config) -> Duration {
    config.operation_timeout / 2
}

impl<Id: Copy + Eq + std::hash::Hash + std::fmt::Debug> LookupEnds<Id> {
    fn new(time: Duration) -> LookupEnds<Id> {
        let (ends, ids) = (std::collections::BinaryHeap::new(), HashMap::new());
        LookupEnds { ends, ids, latest: HashMap::new(), next: 0, time }
    }

    /// Lookup `id` started at `now`.
    pub(crate) fn started(&mut self, id: Id, now: Instant) {
        tracing::debug!(?id, "lookup started");
        self.wake_at(id, now + self.time + LOOKUP_END_GRACE);
    }

    fn wake_at(&mut self, id: Id, at: Instant) {
        self.next += 1;
        self.ids.insert(self.next, id);
        if let Some(replaced) = self.latest.insert(id, self.next) {
            self.ids.remove(&replaced);
        }
        self.ends.push(std::cmp::Reverse((at, self.next)));
    }

    /// The next end after `now`. An end that came finds its lookup over, or still running
    /// (`ran` says for how long, by Kademlia's clock): then the node wakes again at its end
    /// as Kademlia counts it.
    fn next(&mut self, now: Instant, ran: impl Fn(&Id) -> Option<Duration>) -> Option<Instant> {
        while let Some(&std::cmp::Reverse((end, n))) = self.ends.peek() {
            // A replaced entry is passed over, not woken for.
            if end > now && self.ids.contains_key(&n) {
                return Some(end);
            }
            self.ends.pop();
            let Some(id) = self.ids.remove(&n) else { continue };
            self.latest.remove(&id);
            if let Some(ran) = ran(&id) {
                self.wake_at(id, now + self.time.saturating_sub(ran) + LOOKUP_END_GRACE);
            }
        }
        None
    }
}

pub(crate) struct Driver<E: Extension> {
    pub(crate) swarm: Swarm<crate::flat::Flat<Behaviour<E>>>,
    pub(crate) store: Store,
    pub(crate) config: Config,
    commands: mpsc::Receiver<Command>,
    pub(crate) ops: HashMap<OpId, Op>,
    /// When each operation next needs a look, earliest first. Lazy: an entry whose operation
    /// has ended is dropped when it comes up, and an operation whose time moves earlier (a
    /// quorum starts its linger) gets a new entry.
    pub(crate) deadlines: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, OpId)>>,
    /// The earliest time in `deadlines` for each running operation, so that an operation gets
    /// a new entry only when its time moves earlier.
    scheduled: HashMap<OpId, Instant>,
    next_op: OpId,
    /// Kademlia lookups in flight, by the operation waiting for them.
    pub(crate) lookups: HashMap<kad::QueryId, (OpId, crate::nearby::Began)>,
    /// When the lookups in flight, of every kind, must end: the node wakes then.
    pub(crate) lookup_ends: LookupEnds,
    /// Record requests in flight.
    pub(crate) requests: HashMap<crate::lane::RequestId, (OpId, PeerId)>,
    bootstraps: HashMap<kad::QueryId, oneshot::Sender<Result<(), BootstrapError>>>,
    /// Listeners being opened, with the address asked for and who waits for the answer.
    listens: Vec<(libp2p::core::transport::ListenerId, Multiaddr, ListenReply)>,
    dials: HashMap<PeerId, Vec<DialReply>>,
    /// Who waits for identify of a connected peer ([`DialReply::Identified`]).
    identifying: HashMap<PeerId, Vec<oneshot::Sender<Result<bool, DialError>>>>,
    /// The connected peers identify has told about.
    identified: HashSet<PeerId>,
    /// The one admission step: rate limits and bans, for every protocol.
    pub(crate) defence: Defence,
    /// This node's own requests, paced to what each peer admits.
    pub(crate) outbox: crate::pace::Outbox,
    /// Requests the outbox refused (too much waits for their peer), for their operations to
    /// hear of after the event at hand.
    held_back: Vec<(OpId, PeerId)>,
    /// Requests to replicas that answer nothing ([`Driver::send`]): their operations count
    /// them failed after the event at hand.
    passed_over: Vec<(OpId, PeerId, String)>,
    /// Kademlia lookups the extension started.
    ext_lookups: HashSet<kad::QueryId>,
    /// Gossip topics the extension subscribed to.
    pub(crate) ext_topics: HashSet<gossipsub::TopicHash>,
    /// Lookups started by [`Node::closest_peers`].
    closest_waiters: HashMap<kad::QueryId, oneshot::Sender<Vec<PeerId>>>,
    /// Lookups of a random key run when a walk of the table ended while the table was not
    /// trusted, with when each started ([`Driver::check_trust`]).
    trust_checks: HashMap<kad::QueryId, crate::nearby::Began>,
    /// The refresh's lookups, with the peers the routing table held when each began: one that
    /// finds a peer the table did not hold, and not in a full bucket, distrusts it
    /// ([`Driver::refresh_table`], [`Driver::beyond_full_bucket`]); with the bucket walked
    /// (none for the walk of the node's own id: [`Driver::refreshed`]).
    refresh_lookups: HashMap<kad::QueryId, (Option<u32>, HashSet<PeerId>)>,
    pub(crate) watches: crate::watch::Watches,
    last_sweep: Instant,
    last_replication: Instant,
    last_republish: Instant,
    /// Keys this node keeps alive for their owners: the owner's key pair, the TTL to sign,
    /// and the keep's generation (each [`Node::keep_alive`] makes a new one: a read of an
    /// older keep, still under way, decides nothing for the new one).
    pub(crate) kept: HashMap<Key, (Arc<dkvs_account::Keypair>, u64, u64)>,
    /// The last keep's generation.
    pub(crate) kept_generation: u64,
    /// The keeps (key, generation) whose read of the network's newest is under way: one at
    /// a time each, however often rounds and [`Node::kept_dropped`] ask.
    pub(crate) kept_reading: HashSet<(Key, u64)>,
    /// Keys [`Driver::kept`] dropped by itself (deleted, handed over), until
    /// [`Node::kept_dropped`] asks.
    pub(crate) kept_dropped: HashSet<Key>,
    /// Replication rounds, hand-offs and the queue of records to send.
    pub(crate) replication: crate::replication::Replication,
    /// Open connections: peer -> connection -> (remote address, dialed by this node).
    connections: Connections,
    /// This node has dialed a dkvs peer at a public address: it is on the public internet,
    /// and the local-network rule no longer applies (until a restart).
    public_seen: bool,
    /// A peer has dialed this node directly (not through a relay; from a global address when
    /// AutoNAT asks only global peers): some address of it can be dialed. AutoNAT's verdict
    /// alone is one peer's word, and a peer that answers "I dialed you" without dialing would
    /// otherwise make a node behind NAT give up its relay reservation and serve the DHT
    /// unreachable ([`Driver::update_relay`], [`Driver::update_kad_mode`]). An honest AutoNAT
    /// server's dial-back is such a connection; it races the server's answer, so a node found
    /// reachable waits [`INBOUND_GRACE`] for it before it reserves a relay slot. What counts
    /// is [`Driver::proves_reachable`]'s. It is never reset: one dial proves that some address
    /// of this node could be dialed once, not which, nor that it still can.
    inbound_seen: bool,
    /// The addresses this node dialed last ([`Driver::proves_reachable`]).
    dialed_recently: Dialed,
    /// Since when AutoNAT has found this node reachable, while it has.
    public_since: Option<Instant>,
    /// This node has had a dkvs peer (a bootstrap peer it was given, or one identified as
    /// speaking dkvs) since it started: it is part of a network, never a network of one.
    had_peers: bool,
    /// Connected peers that identify says do not speak the record protocol (an IPFS peer, a
    /// bare relay): they do not make this node part of a dkvs network.
    non_dkvs: HashSet<PeerId>,
    /// Connected peers whose latest identify lists the Kademlia and the record protocols (DHT
    /// servers of dkvs, the only peers a key's neighbourhood holds: [`crate::nearby`]), with
    /// when they were first seen as such.
    servers: HashMap<PeerId, Instant>,
    /// Peers in the routing table that this node could not dial since it was last connected
    /// to them ([`Driver::dial_failed`]): a node that died, most likely. Kademlia keeps them
    /// until their bucket fills; operations count them as gone
    /// ([`crate::nearby::table_covers`]). Pruned to the table's entries at each sweep.
    unreachable: HashSet<PeerId>,
    /// The table probe's memory ([`Driver::probe_table`]).
    probes: crate::probe::Probes,
    /// When each dial in flight started, by its connection, and the bytes this node had
    /// received then (by the way they came): a dial that failed slowly while others answered
    /// holds its peer ([`crate::held`]).
    dial_started: HashMap<libp2p::swarm::ConnectionId, (Instant, crate::transport::Heard)>,
    /// The bytes every connection carried (transport.rs).
    counters: crate::transport::Counters,
    /// The transport's dials that reached another peer than the one dialed, until read.
    misdialed: crate::transport::Misdialed,
    /// While stranded (a dial failed while no DHT server was connected; over when one is
    /// identified): when this node next walks its table again, and the wait after that
    /// ([`Driver::rejoin`]).
    rejoin: Option<(Instant, Duration)>,
    /// The routing table's refresh ([`crate::refresh`]).
    refresh: crate::refresh::Refresh,
    /// Peers whose connection through a relay closed lately, and when: a hole punch may
    /// complete after the circuit it was arranged on closed ([`Driver::proves_reachable`]).
    relayed_lately: HashMap<PeerId, Instant>,
    /// The routing table's entries that are in `servers`, with their Kademlia keys, and its
    /// buckets' counts, as operations take replicas from it ([`Driver::local_neighbourhood`])
    /// and replicas name peers from it ([`Driver::closer_than`]); built when first needed
    /// after the table or `servers` changed (`None` then). A walk over Kademlia's buckets for
    /// every request answered cost 7% of the CPU of a 100-node network reading
    /// (docs/benchmarks.md).
    live_table: Option<crate::nearby::Table>,
    /// The peers whose connections this node keeps open while idle, by why.
    pub(crate) kept_peers: crate::idle::Kept,
    /// The replicas of each watched key that its last read reached.
    watch_reads: HashMap<Key, WatchRead>,
    /// This node's Kademlia key's bytes.
    own_key: [u8; 32],
    /// Whether operations may take a key's replicas from the routing table
    /// ([`crate::nearby`]): set when a lookup that vouches for it (an operation's, a check
    /// after a walk) found only peers that were connected DHT servers before it started, or
    /// the peers a replica named and that the table holds now ([`Driver::finds_nobody_new`]);
    /// cleared when one found others, a refresh lookup found a peer the table did not hold,
    /// or a replica named a closer peer the table lacked ([`Driver::distrust`]). Peers in
    /// full buckets, which the table may have turned away, count for neither
    /// ([`Driver::beyond_full_bucket`]).
    pub(crate) table_trusted: crate::nearby::Trust,
    /// The buckets that were full when the table was read and that no refresh found with
    /// room since: taken as full ([`crate::nearby::Bucket::filled`], [`Driver::refreshed`]).
    filled_buckets: HashSet<u32>,
    /// Operations rechecking their replica set, with the replica that named peers and those
    /// peers ([`crate::nearby`]).
    pub(crate) rechecks: HashMap<OpId, (PeerId, Vec<PeerId>)>,
    /// Replicas whose naming of closer peers is not heard until then: a recheck they caused
    /// found none of the peers they named.
    pub(crate) deaf_to: HashMap<PeerId, Instant>,
    /// Times the task woke up for its timers (not for events) since it started.
    wakeups: u64,
    /// When each connected peer was last used ([`Driver::trim_connections`]).
    used: HashMap<PeerId, Instant>,
    /// Peers holding a reservation on this node's relay: their connection is their address.
    reserved: HashSet<PeerId>,
    /// The relay reservation this node holds while it is not known to be reachable
    /// ([`Driver::update_relay`]).
    auto_relay: crate::autorelay::AutoRelay,
    /// Peers whose connections the limit is closing.
    closing: HashSet<PeerId>,
    /// When each connected peer's first open connection was established.
    since: HashMap<PeerId, Instant>,
    /// Peers disconnected to keep within the connection limit, since the start.
    trimmed: u64,
    /// Operations' and the refresh's lookups that timed out, since the start.
    lookups_timed_out: u64,
    /// The open connections a trim left over the limit (everything else was spared): a new
    /// connection trims again only once this many plus an eighth of the limit are open, or
    /// at the sweep ([`Driver::trim_connections`]).
    trim_left: Option<usize>,
    /// Answers that promise a record is held, until the store's log is durable.
    pub(crate) durable: crate::durable::Durable,
}

impl<E: Extension> Driver<E> {
    fn new(
        swarm: Swarm<crate::flat::Flat<Behaviour<E>>>,
        store: Store,
        config: Config,
        commands: mpsc::Receiver<Command>,
        misdialed: crate::transport::Misdialed,
        counters: crate::transport::Counters,
    ) -> Driver<E> {
        // The loop never waits for a flush; answers that promise a record wait instead.
        let store = store.without_waiting_for_sync();
        let own_key = crate::nearby::hashed(&kad::KBucketKey::from(*swarm.local_peer_id()));
        let refresh_interval = config.table_refresh_interval;
        Driver {
            durable: crate::durable::Durable::new(&store),
            defence: Defence::new(&config),
            outbox: crate::pace::Outbox::new(&config),
            held_back: Vec::new(),
            passed_over: Vec::new(),
            ext_lookups: HashSet::new(),
            lookup_ends: LookupEnds::new(lookup_time(&config)),
            ext_topics: HashSet::new(),
            closest_waiters: HashMap::new(),
            trust_checks: HashMap::new(),
            refresh_lookups: HashMap::new(),
            swarm,
            store,
            config,
            commands,
            ops: HashMap::new(),
            deadlines: std::collections::BinaryHeap::new(),
            scheduled: HashMap::new(),
            next_op: 0,
            lookups: HashMap::new(),
            requests: HashMap::new(),
            bootstraps: HashMap::new(),
            listens: Vec::new(),
            dials: HashMap::new(),
            identifying: HashMap::new(),
            identified: HashSet::new(),
            watches: crate::watch::Watches::default(),
            last_sweep: Instant::now(),
            last_replication: Instant::now(),
            last_republish: Instant::now(),
            kept: HashMap::new(),
            kept_generation: 0,
            kept_reading: HashSet::new(),
            kept_dropped: HashSet::new(),
            replication: crate::replication::Replication::default(),
            connections: HashMap::new(),
            public_seen: false,
            had_peers: false,
            inbound_seen: false,
            dialed_recently: Dialed::default(),
            public_since: None,
            non_dkvs: HashSet::new(),
            servers: HashMap::new(),
            unreachable: HashSet::new(),
            probes: crate::probe::Probes::default(),
            dial_started: HashMap::new(),
            counters,
            misdialed,
            rejoin: None,
            refresh: crate::refresh::Refresh::new(refresh_interval, Instant::now()),
            relayed_lately: HashMap::new(),
            live_table: None,
            kept_peers: crate::idle::Kept::default(),
            watch_reads: HashMap::new(),
            own_key,
            table_trusted: crate::nearby::Trust::default(),
            filled_buckets: HashSet::new(),
            rechecks: HashMap::new(),
            deaf_to: HashMap::new(),
            wakeups: 0,
            used: HashMap::new(),
            reserved: HashSet::new(),
            auto_relay: crate::autorelay::AutoRelay::default(),
            closing: HashSet::new(),
            since: HashMap::new(),
            trimmed: 0,
            lookups_timed_out: 0,
            trim_left: None,
        }
    }

    async fn run(mut self) {
        loop {
            // No polling: the task sleeps until the earliest deadline it has (an operation's
            // linger or timeout, a ban's end, the next sweep or round), or until an event.
            // Until none is left: an operation told may send again (a widened get, a repair).
            while !self.held_back.is_empty() || !self.passed_over.is_empty() {
                for (op, peer) in std::mem::take(&mut self.held_back) {
                    self.refused_here(op, peer);
                }
                for (op, peer, silent) in std::mem::take(&mut self.passed_over) {
                    self.on_failure(op, peer, silent);
                }
            }
            let relay = self.auto_relay.relay();
            self.swarm.behaviour_mut().kad.spare(relay);
            let wake = self.next_wake(Instant::now());
            tokio::select! {
                command = self.commands.recv() => match command {
                    None => break,
                    Some(Command::Shutdown(done)) => {
                        self.stop();
                        let _ = done.send(());
                        break;
                    }
                    Some(command) => self.on_command(command),
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                () = self.durable.flushed.notified(), if self.durable.is_waiting() => {
                    let ready = self.durable.ready(&self.store);
                    self.keep_promises(ready);
                }
                _ = tokio::time::sleep_until(wake) => self.on_tick(),
            }
        }
    }

    fn stop(&mut self) {
        // The flush waits for the sync thread: every promise is then kept or broken. (The
        // answers are queued on connections that close next; a peer that misses one counts
        // this node as unreachable, which promises nothing.)
        if let Err(e) = self.store.flush() {
            tracing::warn!(error = %e, "store flush on shutdown failed");
        }
        let ready = self.durable.ready(&self.store);
        self.keep_promises(ready);
        for peer in self.swarm.connected_peers().copied().collect::<Vec<_>>() {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Sends an answer that promises a record is held once the store can keep the promise.
    pub(crate) fn promise(&mut self, promise: crate::durable::Promise) {
        if let Some(ready) = self.durable.hold(&self.store, promise) {
            self.keep_promises(vec![ready]);
        }
    }

    /// Sends answers whose records are durable, or, where the flush failed, says so instead:
    /// a replica answers "failed", and a writer's receipt no longer counts its own copy.
    fn keep_promises(&mut self, ready: Vec<(crate::durable::Promise, Option<String>)>) {
        use crate::durable::Promise;
        for (promise, failure) in ready {
            match (promise, failure) {
                (Promise::Response(channel, response), None) => {
                    let _ = self.swarm.behaviour_mut().records.send_response(channel, response);
                }
                (Promise::Response(channel, _), Some(why)) => {
                    let failed = pb::PutResponse {
                        status: pb::PutStatus::Failed as i32,
                        reason: format!("this replica could not flush its log: {why}"),
                        ..Default::default()
                    };
                    let response = pb::Response { kind: Some(pb::response::Kind::Put(failed)) };
                    let _ = self.swarm.behaviour_mut().records.send_response(channel, response);
                }
                (Promise::Receipt(reply, result), None) => {
                    let _ = reply.send(result);
                }
                (Promise::Receipt(reply, result), Some(why)) => {
                    let me = *self.swarm.local_peer_id();
                    let without_me = |mut receipt: PutReceipt| {
                        receipt.stored.retain(|p| *p != me);
                        let why = format!("could not flush this node's log: {why}");
                        receipt.local_refusal = Some((crate::Refusal::Failed, why));
                        receipt
                    };
                    let result = match result {
                        Ok(receipt) => {
                            let receipt = without_me(receipt);
                            if receipt.has_quorum() {
                                Ok(receipt)
                            } else {
                                Err(PutError::NoQuorum { receipt: Box::new(receipt) })
                            }
                        }
                        Err(PutError::NoQuorum { receipt }) => {
                            Err(PutError::NoQuorum { receipt: Box::new(without_me(*receipt)) })
                        }
                        Err(other) => Err(other),
                    };
                    let _ = reply.send(result);
                }
            }
        }
    }

    pub(crate) fn new_op(&mut self, op: Op) -> OpId {
        self.next_op += 1;
        self.ops.insert(self.next_op, op);
        self.schedule(self.next_op);
        self.next_op
    }

    /// Notes when operation `id` next needs a look (its deadline, or the end of its linger).
    pub(crate) fn schedule(&mut self, id: OpId) {
        let Some(op) = self.ops.get(&id) else { return };
        let when = op.wake(&self.config);
        if self.scheduled.get(&id).is_none_or(|&at| when < at) {
            self.scheduled.insert(id, when);
            self.deadlines.push(std::cmp::Reverse((when, id)));
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Listen(addr, reply) => {
                if let Some(source) = crate::transport::port_taken(&addr) {
                    let _ = reply.send(Err(ListenError::Io { addr, source }));
                    return;
                }
                match self.swarm.listen_on(addr.clone()) {
                    Ok(id) => self.listens.push((id, addr, reply)),
                    Err(libp2p::TransportError::MultiaddrNotSupported(addr)) => {
                        let _ = reply.send(Err(ListenError::Unsupported { addr }));
                    }
                    Err(libp2p::TransportError::Other(source)) => {
                        let _ = reply.send(Err(ListenError::Io { addr, source }));
                    }
                }
            }
            Command::AddPeer { peer, addrs, reply } => {
                if matches!(reply, DialReply::Connected(_)) {
                    self.had_peers = true;
                    for addr in &addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    }
                    self.live_table = None;
                }
                if self.swarm.is_connected(&peer) {
                    self.on_connected(peer, reply);
                } else if let Err(e) = {
                    let opts =
                        libp2p::swarm::dial_opts::DialOpts::peer_id(peer).addresses(addrs).build();
                    let id = opts.connection_id();
                    self.swarm.dial(opts).inspect(|()| self.dial_starts(id))
                } {
                    // A dial of the peer under way already (a lookup's): its outcome answers.
                    if matches!(e, libp2p::swarm::DialError::DialPeerConditionFalse(_)) {
                        self.dials.entry(peer).or_default().push(reply);
                        return;
                    }
                    let error = match e {
                        libp2p::swarm::DialError::Denied { .. }
                            if self.defence.is_banned(&peer) =>
                        {
                            DialError::Banned { peer }
                        }
                        e => DialError::Failed { peer, source: Arc::new(e) },
                    };
                    self.strand(Instant::now());
                    reply.failed(error);
                } else {
                    self.dials.entry(peer).or_default().push(reply);
                }
            }
            Command::Bootstrap(reply) => {
                // Asked for (an application that knows its network changed): every peer of
                // the table may be dialed again (`crate::held`).
                let kad = &mut self.swarm.behaviour_mut().kad;
                kad.release_all();
                match kad.bootstrap() {
                    Ok(id) => {
                        self.lookup_ends.started(id, Instant::now());
                        self.bootstraps.insert(id, reply);
                    }
                    Err(libp2p::kad::NoKnownPeers()) => {
                        let _ = reply.send(Err(BootstrapError::NoKnownPeers));
                    }
                }
            }
            Command::Put { record, expected, reply } => {
                self.probes.asked(Instant::now());
                self.start_put(record, expected, reply)
            }
            Command::Get { key, every, reply } => {
                self.probes.asked(Instant::now());
                self.start_get(key, GetPurpose::Reply { reply, every })
            }
            Command::Watch { key, reply } => {
                self.probes.asked(Instant::now());
                self.start_watch(key, reply);
            }
            Command::KeepAlive { key, owner: Some(owner), ttl_ms } => {
                self.kept_dropped.remove(&key);
                self.kept_generation += 1;
                self.kept.insert(key.clone(), (owner, ttl_ms, self.kept_generation));
                // A record shorter-lived than a round would expire before the first one.
                self.read_kept(key);
            }
            Command::KeepAlive { key, owner: None, .. } => {
                self.kept.remove(&key);
            }
            Command::ReplicationStats(reply) => {
                let _ = reply.send(self.replication.stats);
            }
            Command::Wakeups(reply) => {
                let _ = reply.send(self.wakeups);
            }
            Command::Pacing(reply) => {
                let _ = reply.send(self.outbox.stats);
            }
            Command::Turn(peer, len, reply) => self.outbox.turn(peer, len, reply, Instant::now()),
            Command::LookupsTimedOut(reply) => {
                let _ = reply.send(self.lookups_timed_out);
            }
            Command::Trimmed(reply) => {
                let _ = reply.send(self.trimmed);
            }
            Command::RefusedHandshakes(reply) => {
                let _ = reply.send(self.swarm.behaviour().admission.refused());
            }
            Command::KeptDropped(reply) => {
                // The store may know already what the next round would find (a replica of
                // the key heard of the delete or the new holder's write): such keys are read
                // from the network now, as a round reads them, and dropped once it says so.
                // Not on the store's word alone: it may lag behind the network on this
                // node's own writes (one it refused for its quota, which the network took).
                let looks_dropped: Vec<Key> = self
                    .kept
                    .iter()
                    .filter(|(key, (owner, ..))| {
                        self.store
                            .get(key.as_str())
                            .is_some_and(|r| r.is_tombstone() || r.owner() != owner.public())
                    })
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in looks_dropped {
                    self.read_kept(key);
                }
                let _ = reply.send(self.kept_dropped.drain().collect());
            }
            Command::LiveServers(reply) => {
                let _ = reply.send(self.table().live.iter().map(|e| e.peer).collect());
            }
            Command::RoutingTable(reply) => {
                let _ = reply.send(self.table_peers().collect());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Remembered(limit, reply) => {
                let _ = reply.send(self.servers_to_remember(limit));
            }
            Command::Reachability(reply) => {
                let behaviour = self.swarm.behaviour();
                let _ = reply.send(Reachability {
                    kad_server: behaviour.kad.mode() == kad::Mode::Server,
                    nat: behaviour.autonat.nat_status().into(),
                    external_addrs: self.swarm.external_addresses().cloned().collect(),
                    // Confirmed by the relay client for the circuit this node dialed; what
                    // the relay itself lists may name anything.
                    relay_addrs: self
                        .swarm
                        .external_addresses()
                        .filter(|a| is_relayed(a) && relay_of(a) == self.auto_relay.relay())
                        .map(|a| with_peer(a, *self.swarm.local_peer_id()))
                        .collect(),
                });
            }
            Command::Connections(peer, reply) => {
                let addrs = self
                    .connections
                    .get(&peer)
                    .map(|c| c.values().map(|(a, _)| a.clone()).collect());
                let _ = reply.send(addrs.unwrap_or_default());
            }
            Command::Banned(reply) => {
                let _ = reply.send(self.defence.banned().copied().collect());
            }
            Command::Held(reply) => {
                let _ = reply.send(self.swarm.behaviour().kad.held_peers(Instant::now()));
            }
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::ClosestPeers(key, reply) => {
                let query = self.swarm.behaviour_mut().kad.get_closest_peers(key);
                self.lookup_ends.started(query, Instant::now());
                self.closest_waiters.insert(query, reply);
            }
            Command::Extension(type_id, call) => {
                self.with_extension(|extension, host| call(extension.find(type_id), host))
            }
            Command::Shutdown(_) => {}
        }
    }

    /// Runs `f` with the extension and the host's services, lent from the swarm's other
    /// behaviours and this driver.
    pub(crate) fn with_extension<R>(&mut self, f: impl FnOnce(&mut E, &mut Host<'_>) -> R) -> R {
        let peer_id = *self.swarm.local_peer_id();
        let behaviour: &mut Behaviour<E> = self.swarm.behaviour_mut();
        let mut host = Host {
            peer_id,
            kad: &mut behaviour.kad,
            gossipsub: &mut behaviour.gossipsub,
            blocked: &mut behaviour.blocked,
            defence: &mut self.defence,
            connections: &self.connections,
            used: &mut self.used,
            lookups: &mut self.ext_lookups,
            lookup_ends: &mut self.lookup_ends,
            topics: &mut self.ext_topics,
            records: &mut behaviour.records,
            kept: &mut self.kept_peers,
        };
        f(&mut behaviour.extension, &mut host)
    }

    /// Hands an admitted gossip message on an extension's topic to the extension.
    pub(crate) fn extension_gossip(
        &mut self,
        message: GossipMessage,
    ) -> gossipsub::MessageAcceptance {
        self.with_extension(|extension, host| extension.on_gossip(message, host)).into()
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent<E>>) {
        if let SwarmEvent::OutgoingConnectionError {
            error: libp2p::swarm::DialError::Transport(attempts),
            ..
        } = &event
        {
            // A dial that failed made a NAT mapping all the same.
            for (addr, _) in attempts.iter().filter(|(a, _)| !is_relayed(a)) {
                self.dialed_recently.note(addr);
            }
        }
        match &event {
            // A behaviour's dial (an application's: `Command::AddPeer`).
            SwarmEvent::Dialing { connection_id, .. } => self.dial_starts(*connection_id),
            SwarmEvent::ConnectionEstablished { connection_id, .. } => {
                self.dial_started.remove(connection_id);
                self.probes.ended(*connection_id);
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                // Slow, while others of its scope answered: the dial waited on the peer, not on
                // this node's own network (a silent outage keeps connections up for minutes;
                // a dial tries a peer's private and loopback addresses too). Only a transport's
                // failure can hold the peer (`dial_failed`).
                let farthest = crate::held::farthest_tried(error);
                let heard_now = (Instant::now(), self.counters.heard());
                let started = self.dial_started.remove(connection_id);
                let slow = started.zip(farthest).is_some_and(|(started, scope)| {
                    let answered = self.swarm.behaviour().kad.heard(scope);
                    crate::held::failed_slowly(started, heard_now, scope, answered)
                });
                // A probe that tried some of the peer's addresses says nothing of the others.
                let settles = self.probes.ended(*connection_id);
                if let Some(peer) = peer_id {
                    self.dial_failed(*peer, slow, error, settles);
                }
            }
            _ => {}
        }
        match event {
            SwarmEvent::NewListenAddr { listener_id, address } => {
                // A node configured to relay is declared reachable by its operator: its listen
                // addresses are what it hands out in reservations.
                if self.config.relay_server
                    && !address.iter().any(|p| p == libp2p::multiaddr::Protocol::P2pCircuit)
                {
                    self.swarm.add_external_address(address.clone());
                }
                if self.auto_relay.listener() == Some(listener_id) {
                    if self.auto_relay.address_added() {
                        tracing::info!(%address, "reachable through a relay");
                    } else {
                        self.drop_relay("it gave this node too many addresses");
                    }
                }
                if let Some(i) = self.listens.iter().position(|(id, ..)| *id == listener_id) {
                    let (.., reply) = self.listens.swap_remove(i);
                    let _ = reply.send(Ok(address));
                }
                self.update_kad_mode();
            }
            SwarmEvent::ExpiredListenAddr { .. } => self.update_kad_mode(),
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                if self.auto_relay.listener() == Some(listener_id) {
                    tracing::info!(?reason, "relay reservation ended");
                    self.auto_relay.closed(listener_id, reason.is_err(), Instant::now());
                    self.update_relay();
                }
                if let Some(i) = self.listens.iter().position(|(id, ..)| *id == listener_id) {
                    let (_, addr, reply) = self.listens.swap_remove(i);
                    let source = reason.err().unwrap_or_else(|| {
                        std::io::Error::other("the listener closed before it had an address")
                    });
                    let _ = reply.send(Err(ListenError::Io { addr, source }));
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                let remote = remote_address(&endpoint);
                let dialer = endpoint.is_dialer();
                self.forget_misdialed(peer_id);
                if dialer && !is_relayed(&remote) {
                    self.dialed_recently.note(&remote);
                } else if !self.inbound_seen && self.proves_reachable(peer_id, &remote) {
                    tracing::info!(%remote, "dialed directly by a peer: reachable from outside");
                    self.inbound_seen = true;
                    self.update_relay();
                }
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .insert(connection_id, (remote, dialer));
                for reply in self.dials.remove(&peer_id).unwrap_or_default() {
                    self.on_connected(peer_id, reply);
                }
                self.used.insert(peer_id, Instant::now());
                self.since.entry(peer_id).or_insert_with(Instant::now);
                if self.unreachable.remove(&peer_id) {
                    tracing::debug!(peer = %peer_id, "an unreachable peer connected again");
                    self.live_table = None;
                }
                // A peer that connects again while an old connection of its closes is live:
                // counted and trimmed again like any other.
                self.closing.remove(&peer_id);
                self.trim_on_connection();
                self.update_kad_mode();
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, .. } => {
                if let Some(open) = self.connections.get_mut(&peer_id) {
                    let closed = open.remove(&connection_id);
                    if closed.is_some_and(|(addr, _)| is_relayed(&addr))
                        && self.relayed_lately.len() < MAX_RELAYED_LATELY
                    {
                        self.relayed_lately.insert(peer_id, Instant::now());
                    }
                    if open.is_empty() {
                        self.connections.remove(&peer_id);
                        self.used.remove(&peer_id);
                        self.since.remove(&peer_id);
                        self.closing.remove(&peer_id);
                        self.non_dkvs.remove(&peer_id);
                        self.servers.remove(&peer_id);
                        self.identified.remove(&peer_id);
                        for reply in self.identifying.remove(&peer_id).unwrap_or_default() {
                            let _ = reply.send(Ok(false));
                        }
                        self.live_table = None;
                        self.auto_relay.disconnected(&peer_id);
                        self.replication.disconnected(&peer_id);
                        self.trim_closed();
                        // Closed for its silence ([`crate::stalled`]): held, and gone from
                        // the table's count as a peer whose dial failed is, so operations
                        // near it need no lookup to pass over it.
                        let kad = &self.swarm.behaviour().kad;
                        if kad.is_held(&peer_id, Instant::now())
                            && self.in_table(&peer_id)
                            && self.unreachable.insert(peer_id)
                        {
                            tracing::debug!(peer = %peer_id, "a silent table peer is unreachable");
                        }
                    }
                }
                self.update_kad_mode();
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. }
                if !self.swarm.is_connected(&peer) =>
            {
                tracing::debug!(%peer, %error, "a dial failed");
                self.strand(Instant::now());
                let source = Arc::new(error);
                for reply in self.dials.remove(&peer).unwrap_or_default() {
                    reply.failed(DialError::Failed { peer, source: source.clone() });
                }
            }
            SwarmEvent::ExternalAddrConfirmed { .. } | SwarmEvent::ExternalAddrExpired { .. } => {
                self.update_kad_mode();
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    /// In automatic mode, a node serves the DHT once an address of its own (not a relay
    /// circuit, which is slow and limited) is confirmed reachable from outside, or while it is
    /// on a local network only ([`Config::lan_server`]).
    fn update_kad_mode(&mut self) {
        if self.config.kad_mode != crate::KadMode::Auto {
            return;
        }
        // An address AutoNAT confirmed counts once a peer has dialed this node directly; an
        // operator's relay declares its addresses itself.
        let confirmed = self.swarm.external_addresses().any(|a| !is_relayed(a))
            && (self.inbound_seen || self.config.relay_server);
        let lan_only = self.config.lan_server
            && !self.public_seen
            && self.swarm.listeners().any(|a| !is_relayed(a) && is_local(a));
        let mode = if confirmed || lan_only { kad::Mode::Server } else { kad::Mode::Client };
        if self.swarm.behaviour().kad.mode() != mode {
            tracing::info!(?mode, "kademlia mode");
            self.swarm.behaviour_mut().kad.set_mode(Some(mode));
        }
    }

    /// Notes whether the connections of `peer`, which identify just said speaks dkvs, put this
    /// node on the public internet: one this node dialed to a public (or relayed) address
    /// does. An inbound connection from anywhere (a scanner, a peer that found us) says nothing
    /// of where we are, and a peer not identified yet may be an IPFS peer, not part of the
    /// dkvs network. Once seen, it stays: a node that is alone for a while between connections
    /// must not advertise private addresses as a server. Identify runs on every new
    /// connection, so this is looked at per peer when it answers, not over every connection on
    /// every event (that scan was 6% of an idle 200-node network's CPU).
    fn note_public_dial(&mut self, peer: &PeerId) {
        if self.public_seen {
            return;
        }
        let Some(open) = self.connections.get(peer) else { return };
        self.public_seen = dialed_public(open.values().map(|(addr, dialer)| (addr, *dialer)));
    }

    /// Holds a relay reservation while AutoNAT finds this node unreachable (or reachable while
    /// no peer has dialed it directly yet), and gives it up once it is reachable
    /// ([`crate::autorelay`]). A node configured to relay declares itself
    /// reachable and reserves nowhere.
    fn update_relay(&mut self) {
        if !self.config.auto_relay || self.config.relay_server {
            return;
        }
        // Unreachable: AutoNAT says so, or says "public" while no peer has dialed this node
        // directly within a grace (one lying AutoNAT server must not cut a node behind NAT off
        // its relay). Within the grace nothing changes.
        let unreachable = match self.swarm.behaviour().autonat.nat_status() {
            libp2p::autonat::NatStatus::Private => true,
            libp2p::autonat::NatStatus::Public(_) if self.inbound_seen => false,
            libp2p::autonat::NatStatus::Public(_) => {
                let since = *self.public_since.get_or_insert_with(Instant::now);
                if since.elapsed() < INBOUND_GRACE {
                    return;
                }
                true
            }
            // No verdict (at start, or an address expired): the reservation, if any, stays.
            libp2p::autonat::NatStatus::Unknown => return,
        };
        if !unreachable {
            if let (Some(relay), Some(_)) = (self.auto_relay.relay(), self.auto_relay.dropped()) {
                tracing::info!(%relay, "reachable: relay reservation given up");
                self.give_up_reservation(relay);
            }
            return;
        }
        let now = Instant::now();
        let dialed = self
            .connections
            .iter()
            .flat_map(|(peer, open)| open.values().map(move |(addr, by_us)| (peer, addr, *by_us)));
        let Some((relay, circuit)) = self.auto_relay.pick(dialed, now) else { return };
        match self.swarm.listen_on(circuit.clone()) {
            Ok(listener) => {
                tracing::info!(%relay, %circuit, "behind NAT: asking a relay for a reservation");
                self.auto_relay.asked(listener, relay);
            }
            Err(error) => {
                tracing::warn!(%circuit, %error, "cannot listen through the relay");
                self.auto_relay.refuse(relay, now);
            }
        }
    }

    /// A relay accepted (or renewed) a reservation: one renewing too often is dropped.
    fn on_reservation(&mut self, relay: PeerId, renewal: bool) {
        if !self.auto_relay.accepted(relay, renewal, Instant::now()) {
            self.drop_relay("it renews the reservation too often");
        }
    }

    /// Ends the reservation on `relay` by closing the connections to it. Not by removing its
    /// listener: libp2p-relay 0.22's client panics on a relay's answer to a reservation (or a
    /// renewal) in flight when its listener went away (the namespace test hit it once); a
    /// closed connection gets no more answers.
    fn give_up_reservation(&mut self, relay: PeerId) {
        let _ = self.swarm.disconnect_peer_id(relay);
    }

    /// Whether a direct connection `peer` dialed to this node from `remote` shows that this
    /// node can be dialed: not through a relay; not from an address this node dialed lately or
    /// is connected to by its own dial (a peer dialing back from the address this node dialed
    /// rides the NAT's mapping of that dial, which lets exactly that address in); not from a
    /// peer connected to this node through a relay, or whose relayed connection closed within
    /// the last minute (that is a hole punch, which DCUtR
    /// coordinates over the relayed connection: over QUIC it arrives here as an inbound
    /// connection, through the mappings both sides just opened for it); and, when
    /// AutoNAT asks only global peers, from a global address, or from a peer this node also
    /// reaches at a global address (a port forward that rewrites callers to a private
    /// address, as container platforms do).
    fn proves_reachable(&self, peer: PeerId, remote: &Multiaddr) -> bool {
        let socket = socket_of(remote);
        let dialing_it = self.connections.values().flat_map(|open| open.values());
        let dialing_it =
            dialing_it.filter(|(_, by_us)| *by_us).any(|(a, _)| socket_of(a) == socket);
        let punching = self
            .connections
            .get(&peer)
            .is_some_and(|open| open.values().any(|(a, _)| is_relayed(a)))
            || self.relayed_lately.contains_key(&peer);
        if is_relayed(remote) || self.dialed_recently.contains(remote) || dialing_it || punching {
            return false;
        }
        let global = |a: &Multiaddr| !is_local(a) && !is_relayed(a);
        !self.config.autonat_only_global_ips
            || global(remote)
            || self.connections.get(&peer).is_some_and(|open| open.values().any(|(a, _)| global(a)))
    }

    /// Gives up the reservation on a relay that misbehaves, passes it over, and asks another.
    fn drop_relay(&mut self, why: &str) {
        if let (Some(relay), Some(_)) = (self.auto_relay.relay(), self.auto_relay.dropped()) {
            tracing::warn!(%relay, why, "relay dropped");
            self.give_up_reservation(relay);
            self.auto_relay.refuse(relay, Instant::now());
            self.update_relay();
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent<E>) {
        match event {
            BehaviourEvent::Extension(event) => {
                self.with_extension(|extension, host| extension.on_event(event, host));
            }
            BehaviourEvent::Kad(event) => self.on_kad_event(event),
            BehaviourEvent::Records(event) => self.on_records_event(event),
            BehaviourEvent::Gossipsub(event) => self.on_gossip_event(event),
            BehaviourEvent::RelayServer(event) => match event {
                libp2p::relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                    self.reserved.insert(src_peer_id);
                }
                libp2p::relay::Event::ReservationClosed { src_peer_id }
                | libp2p::relay::Event::ReservationTimedOut { src_peer_id } => {
                    self.reserved.remove(&src_peer_id);
                }
                _ => {}
            },
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocols.contains(&crate::codec::PROTOCOL) {
                    self.non_dkvs.remove(&peer_id);
                    self.had_peers = true;
                    self.note_public_dial(&peer_id);
                } else {
                    self.non_dkvs.insert(peer_id);
                }
                self.update_kad_mode();
                let kad = info.protocols.contains(&crate::behaviour::KAD_PROTOCOL);
                let server = kad && info.protocols.contains(&crate::codec::PROTOCOL);
                if server {
                    self.servers.entry(peer_id).or_insert_with(Instant::now);
                    self.probes.live(&peer_id);
                    self.joined_again();
                } else {
                    self.servers.remove(&peer_id);
                }
                self.live_table = None;
                if self.swarm.is_connected(&peer_id) {
                    self.identified.insert(peer_id);
                }
                for reply in self.identifying.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(server));
                }
                if kad {
                    for addr in info.listen_addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
                let hop = info.protocols.contains(&libp2p::relay::HOP_PROTOCOL_NAME);
                self.auto_relay.identified(peer_id, hop);
                self.update_relay();
            }
            // A peer that does not answer identify on its only connection is taken for no
            // server: only identify tells this node that a peer serves the DHT (on another
            // connection, it may still answer).
            BehaviourEvent::Identify(identify::Event::Error { peer_id, connection_id, .. })
                if self
                    .connections
                    .get(&peer_id)
                    .is_none_or(|open| open.keys().all(|id| *id == connection_id)) =>
            {
                for reply in self.identifying.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(false));
                }
            }
            BehaviourEvent::RelayClient(libp2p::relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => self.on_reservation(relay_peer_id, renewal),
            BehaviourEvent::Dcutr(libp2p::dcutr::Event { remote_peer_id, result }) => {
                match result {
                    Ok(_) => {
                        tracing::info!(peer = %remote_peer_id, "direct connection (hole punched)")
                    }
                    Err(error) => {
                        tracing::info!(peer = %remote_peer_id, %error, "hole punching failed: relayed")
                    }
                }
            }
            BehaviourEvent::Autonat(libp2p::autonat::Event::StatusChanged { old, new }) => {
                tracing::info!(?old, ?new, "reachability");
                let public = matches!(new, libp2p::autonat::NatStatus::Public(_));
                self.public_since = public.then(Instant::now);
                self.update_relay();
            }
            _ => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        // Any event but a query's progress or a request may follow a change of the table.
        if !matches!(
            event,
            kad::Event::OutboundQueryProgressed { .. } | kad::Event::InboundRequest { .. }
        ) {
            self.live_table = None;
        }
        match event {
            kad::Event::OutboundQueryProgressed { id, result, step, stats } => match result {
                kad::QueryResult::GetClosestPeers(result) => {
                    let (key, peers, complete) = match result {
                        Ok(ok) => {
                            // A lookup that found few peers (an empty table, dials failing)
                            // did not do a refresh's work.
                            if ok.peers.len() >= crate::refresh::BUCKET_RESULTS {
                                self.lookup_went_into(&ok.key);
                            }
                            (ok.key, ok.peers, true)
                        }
                        Err(kad::GetClosestPeersError::Timeout { key, peers }) => {
                            (key, peers, false)
                        }
                    };
                    let answered: Vec<PeerId> = peers.into_iter().map(|p| p.peer_id).collect();
                    // An operation's replicas are the closest servers this node can reach,
                    // slow ones too; an extension's or a caller's peers (mail asks the first
                    // few it gets, and a slow one costs it a wait before the next is asked)
                    // are those a lookup that ended heard from, and the closest it can reach
                    // only when the lookup timed out. A lookup that heard from nobody (every
                    // peer stalled, a partition) is no evidence of where a key's replicas are:
                    // it gives nobody, and an operation fails as having no quorum rather than
                    // take the table's servers closest to a key that the table may not cover.
                    let joined = !answered.is_empty()
                        && (self.lookups.contains_key(&id)
                            || (!complete
                                && (self.ext_lookups.contains(&id)
                                    || self.closest_waiters.contains_key(&id))));
                    let places = if joined {
                        self.with_connected_servers(&key, &answered, complete)
                    } else {
                        // Peers that speak Kademlia only are no replicas for anyone.
                        let peers =
                            answered.iter().filter(|p| !self.kad_only(p)).copied().collect();
                        crate::nearby::Places { peers, kept: Vec::new() }
                    };
                    // Each lookup's first result ends it (below); a walk of the table's is
                    // not logged.
                    let of = if self.lookups.contains_key(&id) {
                        Some("operation")
                    } else if self.ext_lookups.contains(&id) {
                        Some("extension")
                    } else if self.trust_checks.contains_key(&id) {
                        Some("trust check")
                    } else {
                        self.closest_waiters.contains_key(&id).then_some("caller")
                    };
                    if let Some(of) = of {
                        tracing::debug!(
                            of,
                            requests = stats.num_requests(),
                            duration = ?stats.duration(),
                            complete,
                            answered = answered.len(),
                            "lookup done"
                        );
                    }
                    if let Some((op, started)) = self.lookups.remove(&id) {
                        if complete {
                            let named = self.rechecks.get(&op).map(|(_, named)| named.clone());
                            self.vouch(&answered, started, &named.unwrap_or_default());
                        } else {
                            self.lookups_timed_out += 1;
                        }
                        let requests = stats.num_requests();
                        let found =
                            crate::ops::Found::Lookup { requests, complete, kept: places.kept };
                        self.on_closest_peers(op, places.peers, found);
                    } else if self.ext_lookups.remove(&id) {
                        self.with_extension(|extension, host| {
                            extension.on_closest_peers(LookupId(id), places.live(), host)
                        });
                    } else if let Some(reply) = self.closest_waiters.remove(&id) {
                        let _ = reply.send(places.live());
                    } else if let Some(started) = self.trust_checks.remove(&id) {
                        if complete {
                            self.vouch(&answered, started, &[]);
                        }
                    } else if let Some((bucket, held)) = self.refresh_lookups.remove(&id) {
                        if !complete {
                            self.lookups_timed_out += 1;
                        }
                        if complete && let Some(index) = bucket {
                            self.refreshed(index);
                        }
                        let lacked = |p: &PeerId| !held.contains(p);
                        let lacked: Vec<PeerId> = answered.into_iter().filter(lacked).collect();
                        if complete && lacked.iter().any(|p| !self.beyond_full_bucket(p)) {
                            tracing::debug!("a refresh found peers the table lacked");
                            self.distrust();
                        }
                    } else {
                        return;
                    }
                    if !step.last
                        && let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id)
                    {
                        query.finish();
                    }
                }
                // A walk's step ended and the next begins: woken for at its end.
                kad::QueryResult::Bootstrap(_) if !step.last => {
                    self.lookup_ends.started(id, Instant::now());
                }
                kad::QueryResult::Bootstrap(result) => {
                    // A walk that timed out is no refresh.
                    if result.is_ok() {
                        self.refresh.walked(Instant::now());
                        if !self.table_trusted.trusted() {
                            self.check_trust();
                        }
                    }
                    // The table has grown: replication's lists are walked again before the
                    // next answer (at most every 30 s).
                    self.replication.table_changed();
                    if let Some(reply) = self.bootstraps.remove(&id) {
                        let _ = reply.send(result.map(|_| ()).map_err(BootstrapError::Timeout));
                    }
                }
                _ => {}
            },
            kad::Event::InboundRequest {
                request: kad::InboundRequest::PutRecord { source, record: Some(record), .. },
            } => {
                // A PUT_VALUE through Kademlia: held to the same rules as the record protocol,
                // the admission step first.
                if !self.admit(source, record.value.len(), crate::codec::MAX_MESSAGE_LEN) {
                    return;
                }
                match Record::decode(&record.value) {
                    Ok(decoded) if !self.serves_key(decoded.key()) => {}
                    Ok(decoded) if decoded.key().as_str().as_bytes() == record.key.as_ref() => {
                        match self.hold(&decoded) {
                            Ok(dkvs_store::PutOutcome::Stored { .. }) => self.publish(&decoded),
                            Ok(_) => {}
                            Err(e) => self.judge(source, &e),
                        }
                    }
                    Ok(_) => self.ban(source, "sent a record under another key through kademlia"),
                    Err(e) => self.malformed(source, &e),
                }
            }
            _ => {}
        }
    }

    /// Whether `peer`, connected, identified itself as no server of records while it speaks
    /// dkvs's Kademlia (or neither): an older node, or one that says so. No replica.
    fn kad_only(&self, peer: &PeerId) -> bool {
        self.identified.contains(peer) && !self.servers.contains_key(peer)
    }

    /// Whether a lookup that started at `started` and found `answered` vouches for the routing
    /// table: it heard from peers, and every one was a connected DHT server before it began,
    /// or is one of the peers `named` by the replica whose naming the lookup checks
    /// ([`crate::nearby`]) and is in the table now, or identified itself as no server of
    /// records (it speaks Kademlia only: no replica the table could lack). The table is
    /// trusted with the replica sets it would give while lookups find nobody it does not
    /// hold; one that heard from no server (from nobody, or only from peers that speak
    /// Kademlia alone) vouches for nothing. A check that found nobody new but
    /// the peers named (or some of them: one that left meanwhile is not found) found all the
    /// table lacked: without them counted, it was trusted again only by the lookup of the
    /// next operation, two lookups for each peer a table missed.
    fn finds_nobody_new(
        &mut self,
        answered: &[PeerId],
        started: Instant,
        named: &[PeerId],
    ) -> bool {
        !answered.is_empty()
            && answered.iter().all(|p| {
                self.servers.get(p).is_some_and(|since| *since < started)
                    || (named.contains(p) && self.in_table(p))
                    || self.kad_only(p)
            })
    }

    /// Looks up a random key (in a bucket that is not full) when a walk of the table ended
    /// with the table not trusted, so that the node's next operation need not look its own
    /// key up first. A walk fills the table with what its lookups find, so it vouches for
    /// nothing itself; a lookup after it that finds only peers the table held when it began
    /// does, as an operation's does.
    /// Without it, a node that just joined looked up the key of its first operation (about
    /// 20 requests and a few round trips more: docs/benchmarks.md, "A node's first
    /// operation, and lanes opened early"). One lookup for each walk that ends with the table
    /// not trusted: [`Node::bootstrap`] (a join), a rejoin after the node was stranded, and
    /// Kademlia's own walks while the table holds fewer than 20 peers. (A refresh lookup
    /// only distrusts the table, when it finds a peer the table did not hold and could
    /// have.)
    fn check_trust(&mut self) {
        // A key in a full bucket's range (most keys, in a network of more than about 128
        // servers) is answered by peers that tell nothing of the table
        // ([`Driver::vouch`]): random keys are drawn until one falls in a bucket that is not
        // full, as the refresh draws them, and the node's own id is the last resort (its
        // closest are in its nearest buckets, where the walk began).
        let random = std::iter::repeat_with(PeerId::random).take(REFRESH_TRIES);
        let mut random = random.filter(|key| !self.beyond_full_bucket(key));
        let target = random.next().unwrap_or(*self.swarm.local_peer_id());
        let query = self.swarm.behaviour_mut().kad.get_closest_peers(target.to_bytes());
        self.trust_checks.insert(query, self.table_trusted.began(Instant::now()));
        self.lookup_ends.started(query, Instant::now());
    }

    /// A lookup that vouches for the table (an operation's, a check), begun as `began`,
    /// completed with `answered`: the table is trusted if it found nobody new
    /// ([`Driver::finds_nobody_new`]), and distrusted otherwise. One that began before the
    /// table was last distrusted vouches for nothing either way (a check in flight does not
    /// undo a replica's naming, nor one stale lookup another's trust); one that heard from
    /// nobody, or only from peers that speak Kademlia alone, leaves the table untrusted.
    /// Answers of peers in full buckets are not counted ([`Driver::beyond_full_bucket`]): a
    /// lookup whose only servers were such peers (one of a far key, in a network of more than
    /// about 128 servers) leaves the trust as it was.
    fn vouch(&mut self, answered: &[PeerId], began: crate::nearby::Began, named: &[PeerId]) {
        let counted: Vec<PeerId> =
            answered.iter().filter(|p| !self.beyond_full_bucket(p)).copied().collect();
        let found = if counted.iter().all(|p| self.kad_only(p)) {
            // No server outside the full buckets answered. Servers in them tell nothing of
            // the keys the table covers; peers that speak Kademlia alone are no evidence of
            // where servers are.
            if answered.iter().any(|p| !self.kad_only(p)) {
                return;
            }
            None
        } else {
            Some(!self.finds_nobody_new(&counted, began.at, named))
        };
        self.table_trusted.lookup(began, found);
    }

    /// A refresh's lookup of a key in bucket `index` completed. A bucket taken as full for
    /// having been full ([`crate::nearby::Bucket::filled`]) that holds fewer than its size
    /// now is taken as it is again: the lookup asked the peers of its range, and those that
    /// answered had room in it (Kademlia puts a peer that answers in its bucket). Those the
    /// table lacks then distrust it, as any that a refresh finds. Without this, a bucket that
    /// lost an entry stayed taken as full until the node restarted: no replica sets from the
    /// table, no probes and no kept places for the keys in its range and past it. (Peers
    /// that leave keep their entries: Kademlia keeps a peer's last address, so a network
    /// that shrinks leaves full buckets full.)
    fn refreshed(&mut self, index: u32) {
        let size = crate::behaviour::KBUCKET_SIZE.get();
        let room = self.table().buckets.iter().all(|b| b.index != index || b.entries < size);
        if room && self.filled_buckets.remove(&index) {
            self.live_table = None;
        }
    }

    /// Whether the routing table may have turned `peer` away, its bucket being full
    /// ([`crate::nearby::beyond_full_bucket`]): no peer the table lacks for the keys it
    /// covers.
    fn beyond_full_bucket(&mut self, peer: &PeerId) -> bool {
        let (own, size) = (self.own_key, crate::behaviour::KBUCKET_SIZE.get());
        crate::nearby::beyond_full_bucket(&self.table().buckets, &own, peer, size)
    }

    /// Operations take no replica set from the routing table until a lookup that begins from
    /// now on finds nobody new. Trust from a check after a join lasts until a lookup finds a
    /// peer the table lacks and had room for (an operation's, or the refresh's every
    /// [`Config::table_refresh_interval`](crate::Config)) or a replica names one: peers that
    /// joined later and never reached this node are found no other way.
    pub(crate) fn distrust(&mut self) {
        self.table_trusted.distrust();
    }

    /// When the task must wake up next, if no event comes first.
    fn next_wake(&mut self, now: Instant) -> Instant {
        let mut at = now + IDLE_WAKE;
        // The earliest deadline of an operation still running; entries of ended ones go.
        while let Some(&std::cmp::Reverse((when, id))) = self.deadlines.peek() {
            if self.ops.contains_key(&id) {
                at = at.min(when);
                break;
            }
            self.deadlines.pop();
            self.scheduled.remove(&id);
        }
        let kad = &self.swarm.behaviour().kad;
        let ran = |id: &kad::QueryId| Some(kad.query(id)?.stats().duration().unwrap_or_default());
        if let Some(end) = self.lookup_ends.next(now, ran) {
            at = at.min(end);
        }
        at = at.min(self.last_sweep + EXPIRY_SWEEP);
        at = at.min(self.last_republish + self.config.republish_interval);
        at = at.min(self.last_replication + self.config.replication_interval);
        if let Some(next) = self.replication.next_wake(now, TICK) {
            at = at.min(next);
        }
        if let Some(next) = self.outbox.next_wake(now) {
            at = at.min(next);
        }
        at
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.wakeups += 1;
        // Only the operations whose time has come are looked at, not every one.
        let (mut due, mut later) = (Vec::new(), Vec::new());
        while let Some(&std::cmp::Reverse((when, id))) = self.deadlines.peek() {
            if when > now {
                break;
            }
            self.deadlines.pop();
            // This entry is gone: a later look needs a new one.
            if self.scheduled.get(&id) == Some(&when) {
                self.scheduled.remove(&id);
            }
            match self.ops.get(&id) {
                Some(op) if op.due(now, &self.config) => due.push(id),
                Some(_) => later.push(id),
                None => {}
            }
        }
        due.sort_unstable();
        due.dedup();
        for id in due {
            if matches!(self.ops.get(&id), Some(Op::Get(_))) {
                // A get that is due may be a narrow read to widen, not to answer.
                self.check_get(id);
            } else {
                self.finish_op(id, now);
            }
        }
        for id in later {
            // Not due after all (its time moved): looked at again at its time, at the
            // earliest a tick from now.
            if let Some(op) = self.ops.get(&id) {
                let when = op.wake(&self.config).max(now + TICK);
                self.scheduled.insert(id, when);
                self.deadlines.push(std::cmp::Reverse((when, id)));
            }
        }
        if now.duration_since(self.last_sweep) >= EXPIRY_SWEEP {
            self.last_sweep = now;
            // A relay passed over for a while may be asked again.
            self.update_relay();
            // Bans end at the sweep after their time (at most 5 s late): no wake-up per ban,
            // and no scan of the bans on every event.
            for peer in self.defence.expire(now) {
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            }
            self.store.remove_expired();
            // Read the routing table afresh at the next operation: a walk over Kademlia's
            // buckets applies the entries waiting for a place in a full bucket whose time came.
            self.live_table = None;
            self.swarm.behaviour_mut().kad.forget_old(now);
            let marked: Vec<PeerId> = self.unreachable.iter().copied().collect();
            for peer in marked {
                if !self.in_table(&peer) {
                    self.unreachable.remove(&peer);
                }
            }
            self.probes.forget_old(now);
            self.defence.forget_idle(now);
            self.outbox.forget_idle(now);
            self.replication.forget_idle(now);
            self.drop_closed_watches();
            self.keep_for_watches(now);
            self.with_extension(|extension, host| extension.on_sweep(host));
            self.trim_connections();
            self.rejoin(now);
            self.refresh_table(now);
            self.relayed_lately.retain(|_, at| now.duration_since(*at) < RELAYED_LATELY);
        }
        if now.duration_since(self.last_republish) >= self.config.republish_interval {
            self.last_republish = now;
            self.republish();
        }
        if now.duration_since(self.last_replication) >= self.config.replication_interval {
            self.last_replication = now;
            self.replicate();
        }
        self.send_due(now);
        self.drain_replication(TICK);
    }

    /// A stranded node (a dial failed while no DHT server was connected: its seeds were down
    /// when it started, or its peers went away) walks its routing table again after
    /// [`REJOIN_FIRST`], then at twice the wait each time up to [`REJOIN_MOST`], until a
    /// server is identified: the walk dials the peers the table still holds. (libp2p's own
    /// triggers are a peer added to a table of fewer than 20 and a new listen address while
    /// alone; otherwise the next refresh.) Connections that merely went idle strand nobody:
    /// nothing failed, and the next operation dials what it needs.
    fn rejoin(&mut self, now: Instant) {
        if !self.servers.is_empty() {
            self.joined_again();
        }
        if let Some((at, wait)) = self.rejoin
            && now >= at
        {
            tracing::debug!("no DHT server connected: walking the routing table again");
            // No known peer at all: nothing to walk, and nothing but a new peer helps.
            if let Ok(id) = self.swarm.behaviour_mut().kad.bootstrap() {
                self.lookup_ends.started(id, now);
            }
            self.rejoin = Some((now + wait, (wait * 2).min(REJOIN_MOST)));
        }
    }

    /// Starts the walk of the table's refresh that is due at this sweep, if any
    /// ([`crate::refresh`]).
    fn refresh_table(&mut self, now: Instant) {
        let local = kad::KBucketKey::from(*self.swarm.local_peer_id());
        let closest = self.swarm.behaviour_mut().kad.kbuckets().next().and_then(|bucket| {
            let (low, _) = bucket.range();
            low.ilog2()
        });
        let Some(walk) = self.refresh.next(now, closest) else { return };
        // Who the table holds now, connected or not: Kademlia puts the peers that answer in it.
        let held: HashSet<PeerId> = self.table_peers().collect();
        let kad = &mut self.swarm.behaviour_mut().kad;
        match walk {
            crate::refresh::Walk::Own => {
                let id = kad.get_closest_peers(*local.preimage());
                self.lookup_ends.started(id, now);
                self.refresh_lookups.insert(id, (None, held));
            }
            crate::refresh::Walk::Bucket(index) => {
                // A random key in the bucket: keys are hashed, so random ones are tried (a
                // bucket i below the farthest holds one key in 2^(256 - i)). Past the few
                // farthest buckets that takes too many tries, so then the key is a peer's the
                // bucket holds, picked at random (libp2p's refresh tries 16 random keys and
                // walks the farther bucket its last one falls in, which misses most walks
                // below the fourth-farthest bucket). An empty bucket is walked towards the
                // last random key, wherever it falls.
                let in_bucket = |key: &[u8]| local.distance(&kad::KBucketKey::new(key)).ilog2();
                let mut target = PeerId::random().to_bytes();
                let mut tries = 1;
                while in_bucket(&target) != Some(index) && tries < REFRESH_TRIES {
                    target = PeerId::random().to_bytes();
                    tries += 1;
                }
                if in_bucket(&target) != Some(index) {
                    // The random key's last bytes are random: they pick the peer.
                    let pick =
                        target.iter().rev().take(8).fold(0usize, |n, b| n << 8 | *b as usize);
                    let held = kad
                        .kbuckets()
                        .find(|bucket| bucket.range().0.ilog2() == Some(index))
                        .and_then(|bucket| {
                            let n = bucket.num_entries().max(1);
                            bucket.iter().nth(pick % n).map(|e| e.node.key.preimage().to_bytes())
                        });
                    target = held.unwrap_or(target);
                }
                let results =
                    std::num::NonZeroUsize::new(crate::refresh::BUCKET_RESULTS).expect("non-zero");
                let id = kad.get_n_closest_peers(target, results);
                self.lookup_ends.started(id, now);
                self.refresh_lookups.insert(id, (Some(index), held));
            }
        }
    }

    /// A lookup of this node found the peers closest to `key`: the refresh may skip its
    /// bucket.
    fn lookup_went_into(&mut self, key: &[u8]) {
        let local = kad::KBucketKey::from(*self.swarm.local_peer_id());
        let target = kad::KBucketKey::new(key);
        if let Some(index) = local.distance(&target).ilog2() {
            self.refresh.used(index, Instant::now());
        }
    }

    /// No address of `peer` took a connection (`error`).
    ///
    /// Attempts where another peer answered ([`crate::transport::AnotherPeer`]: the port of a
    /// peer that left, taken by another; another node on this host at a peer's loopback
    /// address) are not the peer's. When every attempt was such, or never left this node
    /// (its own address, a transport it does not run), those addresses leave the peer's
    /// entry, and the peer with its last one: Kademlia drops a failed address but a peer's
    /// last, so a peer with no other address stayed in the table for good, and every dial of
    /// it went there again. An address only a lookup's answer gave is in no entry: the table
    /// is unchanged.
    ///
    /// When an attempt failed otherwise (refused, timed out, a handshake that failed, or a
    /// local error such as an unreachable network), the peer stays (Kademlia keeps a peer's
    /// last address so that a node that lost its own network keeps the table it needs to come
    /// back). The attempts fail in any order and Kademlia keeps whichever failed last: when
    /// that was a misdial, an address that failed otherwise goes back into the entry and the
    /// misdialed ones leave, so the order decides nothing (and a later dial that only
    /// misdials, at a port another peer took since, still takes the peer out). A peer of the
    /// table counts as gone for the operations' table path until it connects
    /// again ([`Driver::unreachable`]). A dial that failed so `slow`ly (a timeout: on the
    /// internet a dead peer's address mostly drops packets, and each lookup that asked it
    /// waited to its deadline) holds Kademlia's next dials of the peer, in the table or not,
    /// for a while ([`crate::held`]). Nothing is evicted on that: three rules that did were
    /// reviewed and each removed honest peers (docs/testnet-plan.md 5q); a live peer wrongly
    /// counted as gone costs an operation near it a lookup when a replica connected to it
    /// names it ([`Driver::lookup_judged`]). A peer connected meanwhile (a dial that raced
    /// its inbound connection) is left as it is.
    fn dial_failed(
        &mut self,
        peer: PeerId,
        slow: bool,
        error: &libp2p::swarm::DialError,
        settles: bool,
    ) {
        use libp2p::TransportError;
        use libp2p::swarm::DialError;
        let misdialed = self.forget_misdialed(peer);
        if self.swarm.is_connected(&peer) {
            return;
        }
        let (another, failed): (Vec<&Multiaddr>, Option<&Multiaddr>) = match error {
            DialError::Transport(attempts) => (
                attempts.iter().map(|(a, _)| a).filter(|a| misdialed.contains(a)).collect(),
                attempts
                    .iter()
                    .find(|(a, e)| matches!(e, TransportError::Other(_)) && !misdialed.contains(a))
                    .map(|(a, _)| a),
            ),
            // Every transport's dials are checked as they open (transport.rs); a dial outside
            // that check would report another peer so.
            DialError::WrongPeerId { address, .. } => (vec![address], None),
            _ => return,
        };
        if let Some(failed) = failed {
            // Kademlia's next dials of it fail at once for a while, if this one waited
            // (`crate::held`). Not while this node has no DHT server: its own network may be
            // what fails.
            if slow && !self.servers.is_empty() {
                tracing::debug!(%peer, "a dial failed slowly: Kademlia's are held");
                self.swarm.behaviour_mut().kad.hold(peer, Instant::now());
            }
            if self.in_table(&peer) {
                if !another.is_empty() {
                    // Checked in the table: on an absent entry, add_address inserts the peer.
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    kad.add_address(&peer, failed.clone());
                    for address in &another {
                        kad.remove_address(&peer, address);
                    }
                }
                if settles && self.unreachable.insert(peer) {
                    tracing::debug!(%peer, "a peer of the routing table is unreachable");
                    self.live_table = None;
                }
            }
            return;
        }
        for address in another {
            if self.swarm.behaviour_mut().kad.remove_address(&peer, address).is_some() {
                tracing::debug!(%peer, "a peer no address of which answers as it left the table");
                self.live_table = None;
            }
        }
    }

    /// `peer` is connected: a bootstrap peer's dial is answered now, a remembered peer's once
    /// identify told whether it serves the DHT (at once, if it has told).
    fn on_connected(&mut self, peer: PeerId, reply: DialReply) {
        match reply {
            DialReply::Connected(reply) => drop(reply.send(Ok(()))),
            DialReply::Identified(reply) if self.identified.contains(&peer) => {
                drop(reply.send(Ok(self.servers.contains_key(&peer))))
            }
            DialReply::Identified(reply) => self.identifying.entry(peer).or_default().push(reply),
        }
    }

    /// Dial `id` starts now ([`Driver::dial_started`]).
    fn dial_starts(&mut self, id: libp2p::swarm::ConnectionId) {
        let heard = self.counters.heard();
        self.dial_started.insert(id, (Instant::now(), heard));
    }

    /// A dial of `peer` ended, or a connection to it opened: the addresses at which its
    /// attempts reached another peer, logged and forgotten. (Kademlia drops a failed address
    /// from the peer's entry itself, but its last.)
    fn forget_misdialed(&mut self, peer: PeerId) -> Vec<Multiaddr> {
        let misdialed = self.misdialed.take_for(&peer);
        for address in &misdialed {
            tracing::debug!(%peer, %address, "another peer answered at an address of this peer");
        }
        misdialed
    }

    /// Every peer in the routing table, connected or not.
    fn table_peers(&mut self) -> impl Iterator<Item = PeerId> + '_ {
        let kad = &mut self.swarm.behaviour_mut().kad;
        kad.kbuckets().flat_map(|bucket| {
            bucket.iter().map(|entry| *entry.node.key.preimage()).collect::<Vec<_>>()
        })
    }

    /// Whether `peer` has an entry in the routing table. (Looking at its bucket applies the
    /// bucket's pending entry when its time came, as every walk over the table does.)
    pub(crate) fn in_table(&mut self, peer: &PeerId) -> bool {
        let kad = &mut self.swarm.behaviour_mut().kad;
        kad.kbucket(*peer).is_some_and(|b| b.iter().any(|e| e.node.key.preimage() == peer))
    }

    /// A dial failed: with no DHT server connected, the node is stranded, and walks its
    /// table again from [`REJOIN_FIRST`] on ([`Driver::rejoin`]).
    fn strand(&mut self, now: Instant) {
        if self.servers.is_empty() && self.rejoin.is_none() {
            self.rejoin = Some((now + REJOIN_FIRST, REJOIN_FIRST * 2));
            self.swarm.behaviour_mut().kad.set_stranded(true);
        }
    }

    /// A DHT server is connected: a stranded node is back. One that stayed stranded past its
    /// first walk (no server identified for 30 s after a dial failed while none was
    /// connected: a phone back online, not a dial that failed before the others of a read
    /// connected) reads each watched key once, at the next sweeps (16 a sweep), for the
    /// updates it missed meanwhile, not after the wait it backed off to
    /// ([`WatchRead::rejoined`]).
    fn joined_again(&mut self) {
        // `strand` starts the wait at twice REJOIN_FIRST, and each walk doubles it.
        const _: () = assert!(REJOIN_MOST.as_secs() > REJOIN_FIRST.as_secs() * 2);
        let Some((_, wait)) = self.rejoin.take() else { return };
        // Dials that failed while this node was stranded failed on its side, most likely.
        let kad = &mut self.swarm.behaviour_mut().kad;
        kad.set_stranded(false);
        kad.release_all();
        if wait > REJOIN_FIRST * 2 {
            // Stranded past its first walk (an outage, not one dial that failed before the
            // others of a read connected): so were the dials that marked peers of the table
            // unreachable meanwhile.
            self.unreachable.clear();
            self.live_table = None;
            for read in self.watch_reads.values_mut() {
                read.rejoined();
            }
        }
    }

    /// Keeps the connections a watch needs open while nothing uses them
    /// ([`crate::idle::Kept`]); a connection closes when either end lets it go, so both ends
    /// keep it:
    /// - as a watcher, the connections to the replicas each watched key's last read reached:
    ///   they publish its updates to the watchers they know of. A fair share of every key's,
    ///   nearest first ([`crate::watch::fair_share`]), at most half of
    ///   [`Config::max_connections`] in all, and spared by the limit's trim (the rest of the
    ///   limit stays for operations). A key is read again when fewer than half of its kept
    ///   replicas are still connected (a replica restarted, or trimmed this node; a key with
    ///   none kept, past what the limit spares, counts as having lost them), backing off, and
    ///   anyway every [`watch_refresh`] (its replicas change as nodes come and go)
    ///   ([`WatchRead::due`]): the read reaches its replicas anew and hands the watchers any
    ///   newer version it finds, so an update gossip did not bring comes that much later;
    /// - as a replica, the connections to peers that subscribe to the watch topic of a key
    ///   this node holds: gossipsub knows a peer's subscriptions only while connected to it,
    ///   and publishes an update only to peers it knows. Not spared by the trim: any peer can
    ///   subscribe.
    ///
    /// Looked at at each sweep (a watch dropped or a peer unsubscribed lets its peers go);
    /// a watch's read and a peer's subscription add theirs as they come.
    pub(crate) fn keep_for_watches(&mut self, now: Instant) {
        self.watch_reads.retain(|key, _| self.watches.is_watched(key));
        let kept = self.keep_watched_replicas();
        let mut stale = Vec::new();
        for (key, read) in &mut self.watch_reads {
            if stale.len() >= WATCH_READS_PER_SWEEP {
                break;
            }
            // Only kept connections count: the others a read opened close once idle.
            let (mut share, mut connected) = (0, 0);
            for peer in read.replicas.iter().filter(|p| kept.contains(*p)) {
                share += 1;
                connected += usize::from(self.connections.contains_key(peer));
            }
            if read.due(share, connected, now) {
                stale.push(key.clone());
            }
        }
        for key in stale {
            self.start_get(key, GetPurpose::Warm { first: None });
        }
        let store = &self.store;
        let watchers: HashSet<PeerId> = self
            .swarm
            .behaviour()
            .gossipsub
            .all_peers()
            .filter(|(_, topics)| topics.iter().any(|topic| holds_watched(store, topic.as_str())))
            .map(|(peer, _)| *peer)
            .collect();
        let behaviour = self.swarm.behaviour_mut();
        self.kept_peers.replace(KEEP_WATCHERS, &watchers, &mut behaviour.records);
    }

    /// A watch's read of `key` reached `answered`: its replicas, whose connections are kept.
    /// A read the sweep started (`swept`, [`WatchRead::due`]) ends the key's read under way;
    /// a new watch's first read does not, which may have begun while the sweep's was under
    /// way (the sweep would start another then).
    pub(crate) fn watch_read(&mut self, key: &Key, answered: Vec<PeerId>, swept: bool) {
        if !self.watches.is_watched(key) {
            return;
        }
        let replicas = closest(key, answered, self.config.replication);
        let read = self
            .watch_reads
            .entry(key.clone())
            .or_insert_with(|| WatchRead::new(key, Instant::now(), watch_refresh(&self.config)));
        read.replicas = replicas;
        if swept {
            read.reading = false;
        }
        self.keep_watched_replicas();
    }

    /// Keeps a fair share of the watched keys' replicas ([`Driver::keep_for_watches`]), and
    /// gives it.
    fn keep_watched_replicas(&mut self) -> HashSet<PeerId> {
        let lists: Vec<&[PeerId]> = self.watch_reads.values().map(|r| &r.replicas[..]).collect();
        let most = (self.config.max_connections / 2).max(1);
        let replicas = crate::watch::fair_share(&lists, most);
        let behaviour = self.swarm.behaviour_mut();
        self.kept_peers.replace(KEEP_REPLICAS, &replicas, &mut behaviour.records);
        replicas
    }

    /// `peer` subscribed to `topic`: kept if it watches a key this node holds.
    pub(crate) fn on_subscribed(&mut self, peer: PeerId, topic: &str) {
        if holds_watched(&self.store, topic) {
            let behaviour = self.swarm.behaviour_mut();
            self.kept_peers.set(KEEP_WATCHERS, peer, true, &mut behaviour.records);
        }
    }

    /// Unsubscribes the watches whose receivers are all gone.
    fn drop_closed_watches(&mut self) {
        for topic in self.watches.drop_closed() {
            self.swarm.behaviour_mut().gossipsub.unsubscribe(&topic);
        }
    }

    /// Sends one record request, at once or, over what the peer admits, when its turn comes
    /// ([`crate::pace`]); failures to send become a failure of that peer (a request whose
    /// turn would come after the timeout: at once, as the peer's refusal for load).
    ///
    /// A put's or a get's request to a replica that answers nothing ([`crate::stalled`]: it
    /// was given up on, and has not answered since), or whose dials are held
    /// ([`crate::held`]), counts as that replica's failure at once, and goes all the same
    /// (unless it waits in pacing past its operation's end): an answer ends its silence, a
    /// connection its hold, for the next operations. Its answer, if it comes, no longer
    /// counts for this operation.
    pub(crate) fn send(&mut self, op: OpId, peer: PeerId, request: pb::Request) {
        use crate::pace::Outgoing;
        let now = Instant::now();
        if self.passes_over(op)
            && let Some(why) = self.swarm.behaviour().kad.passed_over(&peer, now)
        {
            // Told after the event at hand, as a refusal here is.
            self.passed_over.push((op, peer, why));
        }
        match self.outbox.send_or_wait(op, peer, request, now) {
            Outgoing::Now(request) => self.send_now(op, peer, request),
            Outgoing::Waiting => {
                if let Some(crate::ops::Op::Get(get)) = self.ops.get_mut(&op) {
                    get.waits_for(peer);
                }
            }
            // Told after the event at hand: the caller may be starting the operation.
            Outgoing::Refused => self.held_back.push((op, peer)),
        }
    }

    /// Sends the requests whose turn has come, for the operations still running.
    fn send_due(&mut self, now: Instant) {
        let ops = &self.ops;
        for (peer, waiting) in self.outbox.due(now, |op| ops.contains_key(&op)) {
            let op = waiting.op;
            self.send_now(op, peer, waiting.request);
            if let Some(crate::ops::Op::Get(get)) = self.ops.get_mut(&op) {
                get.went(peer, now);
                // Its wake may move earlier: the replica may be behind a linger from now.
                self.schedule(op);
            }
        }
    }

    fn send_now(&mut self, op: OpId, peer: PeerId, request: pb::Request) {
        let id = self.swarm.behaviour_mut().records.send_request(&peer, request);
        if let Some(wait) = self.timed(op) {
            self.swarm.behaviour_mut().kad.record_asked(peer, id, wait, Instant::now());
        }
        self.requests.insert(id, (op, peer));
        self.used(peer);
    }

    /// How long `op`'s requests are waited on before their peers are given up on, if they
    /// are timed ([`crate::stalled`]): a get's (an application's, a watch's, a republish's,
    /// a compare-and-swap's read) for the peer's patience, a put's for 10 s at least (a
    /// replica answers one once its log is on disk, and a slow disk is not silence).
    /// Read repair's and replication's are not timed (nobody waits on them, and a round's
    /// answer may take a while to compute).
    fn timed(&self, op: OpId) -> Option<crate::stalled::Wait> {
        use crate::stalled::Wait;
        match self.ops.get(&op)? {
            crate::ops::Op::Get(_) => Some(Wait::Answer),
            crate::ops::Op::Put(_) => Some(Wait::Write),
            _ => None,
        }
    }

    /// Whether `op` passes over replicas that answer nothing or are held
    /// ([`Driver::send`]): a put or a get, which someone may wait on.
    fn passes_over(&self, op: OpId) -> bool {
        matches!(self.ops.get(&op), Some(crate::ops::Op::Put(_) | crate::ops::Op::Get(_)))
    }

    /// The k DHT servers closest to the key whose Kademlia key is `target` among those this
    /// node is connected to from its routing table, closest first, when the table covers the
    /// key ([`crate::nearby::table_covers`]): its replicas are then among them, and an
    /// operation needs no lookup. `None` otherwise.
    pub(crate) fn local_neighbourhood(&mut self, target: &[u8]) -> Option<Vec<PeerId>> {
        let target = crate::nearby::hashed(&kad::KBucketKey::new(target));
        let k = self.config.replication;
        self.table_covers(&target).then(|| self.table().closest(&target, k))
    }

    /// Dials the peers of the routing table that keep it from covering the key whose
    /// Kademlia key is `target` ([`crate::nearby::unsettled`]): neither connected DHT servers
    /// nor unreachable, they may be alive and closer than the live ones, so the operation
    /// looks the key up (whether or not the table is trusted). Its lookup dials only the peers
    /// it asks, so a peer that died stayed unsettled until something else dialed it, and every
    /// operation near it looked the key up (docs/testnet-plan.md 5r). A dial that fails marks
    /// the peer unreachable ([`Driver::dial_failed`]); one that connects to a DHT server of
    /// dkvs makes it live: the next operations near the key can take their replicas from the
    /// table.
    ///
    /// Only while the application keeps this node busy and a DHT server is connected (its
    /// own network may be what fails), within the room the connection limit leaves, counting
    /// the dials under way; never a peer that is connected, held ([`crate::held`]) or banned.
    /// Which of the others, how and when again: [`crate::probe`].
    pub(crate) fn probe_table(&mut self, target: &[u8]) {
        use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
        let key = kad::KBucketKey::new(target.to_vec());
        let hashed = crate::nearby::hashed(&key);
        let Some(index) = crate::nearby::bucket_index(&self.own_key, &hashed) else { return };
        let now = Instant::now();
        let max = self.config.max_connections;
        let room = max.saturating_sub(self.open_peers() + self.dial_started.len());
        if !self.probes.busy(now) || room == 0 || self.servers.is_empty() {
            return;
        }
        let (k, size) = (self.config.replication, crate::behaviour::KBUCKET_SIZE.get());
        let buckets = crate::nearby::unsettled(&self.table().buckets, index, k, size);
        if buckets.is_empty() {
            return;
        }
        let mut candidates = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            let Some(i) = bucket.range().0.ilog2().filter(|i| buckets.contains(i)) else {
                continue;
            };
            for entry in bucket.iter() {
                let peer = *entry.node.key.preimage();
                if !self.servers.contains_key(&peer) && !self.unreachable.contains(&peer) {
                    candidates.push(crate::probe::Candidate {
                        order: (crate::nearby::walk_rank(i, index), key.distance(entry.node.key)),
                        peer,
                        addresses: entry.node.value.iter().cloned().collect(),
                    });
                }
            }
        }
        let now_held = |kad: &crate::held::Held, peer: &PeerId| kad.is_held(peer, now);
        candidates.retain(|c| {
            !self.swarm.is_connected(&c.peer)
                && !now_held(&self.swarm.behaviour().kad, &c.peer)
                && !self.defence.is_banned(&c.peer)
        });
        for dial in self.probes.choose(candidates, room, now) {
            let opts = DialOpts::peer_id(dial.peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .addresses(dial.addresses.clone())
                .build();
            let connection = opts.connection_id();
            if self.swarm.dial(opts).is_err() {
                // Being dialed already (a lookup's).
                continue;
            }
            tracing::debug!(peer = %dial.peer, "a peer of the routing table dialed to settle it");
            self.probes.dialed(&dial, connection, now);
        }
    }

    /// Whether the routing table holds every live peer among the k closest to the Kademlia
    /// key whose bytes are `target`, as far as it can tell ([`crate::nearby::table_covers`]).
    fn table_covers(&mut self, target: &[u8; 32]) -> bool {
        let Some(index) = crate::nearby::bucket_index(&self.own_key, target) else { return false };
        let (k, size) = (self.config.replication, crate::behaviour::KBUCKET_SIZE.get());
        crate::nearby::table_covers(&self.table().buckets, index, k, size)
    }

    /// A lookup for `key` heard from `peers` (at least one) in time: they are joined by the
    /// DHT servers in this node's routing table that it is connected to, and the k closest of
    /// all to the key, closest first, go to whoever waited for the lookup.
    ///
    /// Kademlia counts only the peers that answered, and waits for a slow peer only so long:
    /// on a busy network a lookup times out with the few peers that answered first, rarely
    /// the closest. A quorum of those few is no quorum that a reader's lookup reaches: a put
    /// acknowledged by 3 of the 5 peers found, on a network where the writer was connected to
    /// 34 servers, was not found by a reader. With the table's closest, a put succeeds only
    /// once a quorum of the closest servers this node can reach holds the record, and a get
    /// asks them. A lookup that completed found them already, but for those too slow to
    /// answer it (the quorum then counts them, as a reader that hears from them would).
    /// Peers the lookup learnt of but never heard from, and table entries this node is not
    /// connected to, are left out (when the lookup timed out, such an entry near the key keeps
    /// its place among the k closest, given as kept, which a put counts in its quorum and does
    /// not ask: a peer that just left is no room for a server farther out; a lookup that
    /// completed would have heard from it were it there); so are servers
    /// farther than the farthest answer when the table may have turned away peers near the
    /// key ([`crate::nearby::table_met`], [`crate::nearby::Table::joined`]). (Counting the quorum
    /// over a flat k instead would fail every put on a small network whose lookups time out
    /// waiting for one dead peer.)
    fn with_connected_servers(
        &mut self,
        key: &[u8],
        peers: &[PeerId],
        complete: bool,
    ) -> crate::nearby::Places {
        // A peer identified as no server of records (it speaks dkvs's Kademlia only) answers
        // lookups and is no replica; one not identified yet is taken as it comes.
        let peers: Vec<PeerId> = (peers.iter()).filter(|p| !self.kad_only(p)).copied().collect();
        let peers = peers.as_slice();
        let target = crate::nearby::hashed(&kad::KBucketKey::new(key));
        let (k, size) = (self.config.replication, crate::behaviour::KBUCKET_SIZE.get());
        let met = crate::nearby::bucket_index(&self.own_key, &target)
            .is_some_and(|index| crate::nearby::table_met(&self.table().buckets, index, k, size));
        self.table().joined(&target, peers, met, !complete, k)
    }

    /// The routing table as operations read it, read from Kademlia if it changed since.
    fn table(&mut self) -> &crate::nearby::Table {
        use crate::nearby::{Bucket, Entry, Table};
        if self.live_table.is_none() {
            let mut table = Table::default();
            for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
                let Some(index) = bucket.range().0.ilog2() else { continue };
                let (entries, before) = (bucket.num_entries(), table.live.len());
                let mut unreachable = 0;
                for e in bucket.iter() {
                    let peer = e.node.key.preimage();
                    if self.servers.contains_key(peer) {
                        table.live.push(Entry::new(e.node.key));
                    } else if self.unreachable.contains(peer) || self.identified.contains(peer) {
                        // Connected and identified, yet no server (it speaks Kademlia and not
                        // the record protocol: an older node, or one that says so): no
                        // replica, and no dial settles it. Counted as one a dial could not
                        // reach, not as an entry that may be a replica.
                        unreachable += 1;
                    } else {
                        table.unsettled.push(Entry::new(e.node.key));
                    }
                }
                let live = table.live.len() - before;
                // A bucket that was full and is not (an entry removed: a dial that reached
                // another peer at its last address) is taken as full still, until a refresh
                // of it finds room ([`Driver::refreshed`]): lookups did not count the peers it
                // turned away ([`Driver::beyond_full_bucket`]), and its entries may have been
                // chosen by whoever filled it.
                if entries >= crate::behaviour::KBUCKET_SIZE.get() {
                    self.filled_buckets.insert(index);
                }
                let filled = self.filled_buckets.contains(&index);
                table.buckets.push(Bucket { index, entries, live, unreachable, filled });
            }
            // Kademlia lists no empty bucket: one that was full and lost every entry is
            // taken as full still.
            for &index in &self.filled_buckets {
                if !table.buckets.iter().any(|b| b.index == index) {
                    let bucket =
                        Bucket { index, entries: 0, live: 0, unreachable: 0, filled: true };
                    table.buckets.push(bucket);
                }
            }
            self.live_table = Some(table);
        }
        self.live_table.get_or_insert_default()
    }

    /// A replica's side of [`crate::nearby`]: the DHT servers it is connected to that are closer to
    /// `target` than the asker's farthest candidate and not among its `known` ones. An asker
    /// that sent no hint (an older node, replication) is named nobody.
    pub(crate) fn closer_than(
        &mut self,
        asker: PeerId,
        target: &[u8],
        farthest: &[u8],
        known: &[u64],
    ) -> Vec<Vec<u8>> {
        if farthest.is_empty() && known.is_empty() {
            return Vec::new();
        }
        let k = self.config.replication;
        let live = &self.table().live;
        let named = crate::nearby::to_name(target, farthest, known, asker, live, k);
        named.into_iter().map(PeerId::to_bytes).collect()
    }

    /// Notes that `peer` was used now, if it is connected (a peer being dialed is noted when
    /// its connection opens).
    pub(crate) fn used(&mut self, peer: PeerId) {
        if let Some(at) = self.used.get_mut(&peer) {
            *at = Instant::now();
        }
    }

    /// Keeps the connected peers within [`Config::max_connections`]: over it, a network with
    /// more than its share ([`Config::subnet_share`]) loses its newest peers down to it, then
    /// the least recently used are disconnected down to three quarters of the limit. Not
    /// closed by the second rule: a peer used within [`TRIM_GRACE`] (a new connection counts
    /// as a use: its first request gets through); by neither: a peer this node awaits a
    /// record answer from, a gossipsub mesh peer (watches and
    /// channels live on those connections), a watched key's replica this node keeps
    /// ([`Driver::keep_for_watches`]), a relay this node listens or dials through, and a
    /// peer holding a reservation on this node's relay. When those are most of the
    /// connections, the limit is exceeded rather than breaking them. Looked at at each sweep,
    /// and when a connection opens ([`Driver::trim_on_connection`]: after a trim that left
    /// the node over the limit, only once an eighth of the limit more are open); peers being
    /// closed are not counted twice.
    fn trim_connections(&mut self) {
        let max = self.config.max_connections.max(1);
        let open = self.open_peers();
        self.trim_left = None;
        if open <= max {
            return;
        }
        let now = Instant::now();
        let mut spared: HashSet<PeerId> = self.swarm.listeners().filter_map(relay_of).collect();
        spared.extend(self.auto_relay.relay());
        spared.extend(self.reserved.iter().copied());
        spared.extend(self.requests.values().map(|(_, peer)| *peer));
        spared.extend(self.outbox.waiting_for().copied());
        spared.extend(self.swarm.behaviour().gossipsub.all_mesh_peers().copied());
        spared.extend(self.kept_peers.kept_for(KEEP_REPLICAS).copied());
        let relays =
            self.connections.values().flat_map(|c| c.values()).filter_map(|(a, _)| relay_of(a));
        spared.extend(relays.collect::<Vec<_>>());
        // Every live peer with its network; the spared ones count towards their network too.
        let live: Vec<Peer> = self
            .connections
            .keys()
            .filter(|p| !self.closing.contains(*p))
            .map(|p| Peer {
                used: self.used.get(p).copied(),
                since: self.since.get(p).copied(),
                id: *p,
                network: subnet_of(&self.connections, p),
            })
            .collect();
        let mut per_network: HashMap<crate::defence::Subnet, usize> = HashMap::new();
        for network in live.iter().filter_map(|p| p.network) {
            *per_network.entry(network).or_default() += 1;
        }
        let closable: Vec<Peer> = live.into_iter().filter(|p| !spared.contains(&p.id)).collect();
        let share = self.config.subnet_share;
        let victims = to_close(closable, &per_network, share, open, max, now);
        tracing::debug!(open, closing = victims.len(), "over max_connections");
        self.trimmed += victims.len() as u64;
        let left = open - victims.len();
        self.trim_left = (left > max).then_some(left);
        for peer in victims {
            self.closing.insert(peer);
            // Not dialed again to settle the table ([`Driver::probe_table`]).
            if self.in_table(&peer) {
                self.probes.trimmed(peer, now);
            }
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Connected peers the limit is not closing already (`closing` holds only connected
    /// peers: a peer leaves it when its last connection closes).
    fn open_peers(&self) -> usize {
        self.connections.len().saturating_sub(self.closing.len())
    }

    /// A peer's last connection closed: what the last trim left over the limit shrinks with
    /// it, so the next trim comes an eighth of the limit after the count now, not after a
    /// count of peers that left.
    fn trim_closed(&mut self) {
        let open = self.open_peers();
        self.trim_left = left_after_close(self.trim_left, open, self.config.max_connections.max(1));
    }

    /// Trims for a connection that just opened. When the last trim left the node over the
    /// limit (every other peer spared: in use, in a mesh, a relay), trying again for each new
    /// connection finds the same and costs a pass over every peer (9% of an idle 200-node
    /// network's CPU): the next try waits for an eighth of the limit more connections, or the
    /// sweep. A flood is still trimmed at most that many connections late.
    fn trim_on_connection(&mut self) {
        let open = self.open_peers();
        if trim_due(self.trim_left, open, self.config.max_connections.max(1)) {
            self.trim_connections();
        }
    }

    /// Takes note of a peer that sent something no honest node sends: disconnects and refuses it
    /// for the ban duration.
    pub(crate) fn ban(&mut self, peer: PeerId, why: &str) {
        if self.defence.ban(peer, Instant::now()) {
            tracing::warn!(%peer, why, "banning peer");
        }
        self.swarm.behaviour_mut().blocked.block_peer(peer);
    }

    /// Bans the sender of a record the store refused, if no honest node could have sent it.
    pub(crate) fn judge(&mut self, peer: PeerId, error: &dkvs_store::PutError) {
        use dkvs_record::ValidateError as V;
        if let dkvs_store::PutError::Invalid(
            V::BadSignature(_)
            | V::BadTransfer(_)
            | V::WrongOwner { .. }
            | V::ValueTooLarge { .. }
            | V::TombstoneWithValue { .. }
            | V::ExpiresBeforeIssued { .. }
            | V::TransferOnAccountKey(_)
            | V::TransferToSelf,
        ) = error
        {
            self.ban(peer, &format!("sent an invalid record: {error}"));
        }
    }

    /// [`Node::servers_to_remember`]: the DHT servers connected longest first (peers an
    /// attacker brought in lately come last), at most [`REMEMBERED_PER_NETWORK`] of one
    /// network (peer ids cost nothing; networks do), two addresses each: one this node dialed
    /// it at, then the routing table's, public before private, relayed after direct, and
    /// loopback only for a peer on this machine (a peer elsewhere lists `127.0.0.1` too, which
    /// from here is this machine).
    fn servers_to_remember(&mut self, limit: usize) -> Vec<Multiaddr> {
        let mut servers: Vec<(Instant, PeerId)> =
            self.servers.iter().map(|(peer, since)| (*since, *peer)).collect();
        servers.sort();
        let mut table: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for entry in bucket.iter() {
                table
                    .insert(*entry.node.key.preimage(), entry.node.value.iter().cloned().collect());
            }
        }
        let mut per_network: HashMap<crate::defence::Subnet, usize> = HashMap::new();
        let mut chosen = Vec::new();
        for (_, peer) in servers {
            let open: Vec<(Multiaddr, bool)> = self
                .connections
                .get(&peer)
                .map(|c| c.values().cloned().collect())
                .unwrap_or_default();
            let known = table.remove(&peer).unwrap_or_default();
            let addresses = addresses_to_remember(&open, known);
            if addresses.is_empty() {
                continue;
            }
            if let Some(network) = subnet_of(&self.connections, &peer) {
                let count = per_network.entry(network).or_default();
                if *count >= REMEMBERED_PER_NETWORK {
                    continue;
                }
                *count += 1;
            }
            chosen.extend(addresses.into_iter().filter_map(|addr| addr.with_p2p(peer).ok()));
        }
        chosen.truncate(limit);
        chosen
    }

    /// True when this node has had no dkvs peer at all since it started: it is a network of
    /// one, and its own store is the whole replica set. A connected peer whose identify has
    /// not arrived yet counts as a dkvs peer, and so does a bootstrap peer that is down: a
    /// node cut off from its network fails for lack of a quorum instead of writing alone.
    pub(crate) fn alone(&self) -> bool {
        !self.had_peers && self.swarm.connected_peers().all(|p| self.non_dkvs.contains(p))
    }

    /// True when dkvs peers are connected and none of them serves the DHT (phones that are
    /// not reachable): a server is then the whole replica set of its network.
    pub(crate) fn only_clients(&mut self) -> bool {
        self.swarm.connected_peers().any(|p| !self.non_dkvs.contains(p))
            && self.swarm.behaviour_mut().kad.kbuckets().all(|bucket| bucket.num_entries() == 0)
    }

    /// The one admission step for a message of `len` bytes from `peer` (at most `limit`):
    /// false means drop it. A peer that floods on past its refusals, or sends oversized
    /// messages, is banned.
    pub(crate) fn admit(&mut self, peer: PeerId, len: usize, limit: usize) -> bool {
        let subnet = subnet_of(&self.connections, &peer);
        match self.defence.admit(peer, subnet, len, limit, Instant::now()) {
            Ok(()) => {
                self.used(peer);
                true
            }
            Err(refused) => {
                if self.defence.is_banned(&peer)
                    && !self.swarm.behaviour().blocked.blocked_peers().contains(&peer)
                {
                    tracing::warn!(%peer, %refused, "banning peer");
                    self.swarm.behaviour_mut().blocked.block_peer(peer);
                }
                false
            }
        }
    }
}

/// What a get is for: an application waiting for the answer, or a compare-and-swap put that
/// first needs the network's newest record.
pub(crate) enum GetPurpose {
    /// An application waits; `every`: ask every replica at once ([`Node::get_every`]).
    Reply { reply: oneshot::Sender<Result<GetOutcome, GetError>>, every: bool },
    /// A watch's read: it connects the watcher to the key's replicas (and repairs them) and
    /// hands the watchers a newer version it finds (one gossip did not bring). `first`: the
    /// watch's first read, whose caller gets the watch begun where the read ends.
    Warm { first: Option<(Box<Watch>, oneshot::Sender<Watch>)> },
    /// The network's newest record of a key this node keeps alive, for the keep of this
    /// generation.
    Republish { generation: u64 },
    Cas {
        record: Record,
        expected: dkvs_store::Expect,
        reply: oneshot::Sender<Result<PutReceipt, PutError>>,
    },
}

/// Whether `topic` is the watch topic of a key `store` holds.
fn holds_watched(store: &Store, topic: &str) -> bool {
    crate::watch::key_of_topic(topic).is_some_and(|key| store.highest_seq(key).is_some())
}

/// A watched key's replicas as its last read reached them ([`Driver::keep_for_watches`]).
pub(crate) struct WatchRead {
    /// Nearest first.
    replicas: Vec<PeerId>,
    /// When the key was last read.
    read_at: Instant,
    /// The wait before the next read while most replicas are gone (none at first).
    wait: Duration,
    /// A read of it is under way.
    reading: bool,
    /// How long after the last read the key is read again while its replicas stay:
    /// [`watch_refresh`], give or take a fifth by the key (watches made together do not read
    /// together).
    refresh: Duration,
    /// The node joined the network again since the last read started
    /// ([`WatchRead::rejoined`]): the next sweep that looks at the key reads it.
    rejoined: bool,
    /// The read [`WATCH_SETTLE`] or more after the watch's first one has begun.
    settled: bool,
}

impl WatchRead {
    /// A watch of `key` read about `every` while its replicas stay.
    fn new(key: &Key, now: Instant, every: Duration) -> WatchRead {
        let target = crate::nearby::hashed(&kad::KBucketKey::new(kad_key(key)));
        let spread = every * 2 / 5 * u32::from(target[0]) / 255;
        WatchRead {
            replicas: Vec::new(),
            read_at: now,
            wait: Duration::ZERO,
            reading: false,
            refresh: every * 4 / 5 + spread,
            rejoined: false,
            settled: false,
        }
    }

    /// The node joined the network again after it was stranded ([`Driver::joined_again`]):
    /// the key is read once as soon as the sweeps allow, lost or not (gossipsub does not
    /// replay the updates published meanwhile), and its backoff then goes on where it was.
    fn rejoined(&mut self) {
        self.rejoined = true;
    }

    /// Whether the key is to be read again now, with `connected` of the `kept` replicas this
    /// node keeps connections to for it connected (never while a read of it is under way).
    /// While fewer than half are (a key with none kept counts as none connected: a read that
    /// reached none, or one whose replicas the connection limit does not spare): at once,
    /// then 5 s later, then at twice the wait each time up to the longer of [`REJOIN_MOST`]
    /// and its `refresh` (a key whose replicas stay unkept is read as often as one whose
    /// replicas stay); the wait starts over only once they stayed connected
    /// [`WATCH_STAYED`] after a read (replicas that answer and leave do not undo it). Else
    /// its `refresh` after the last read: a key's replicas change as nodes come nearer to
    /// it, and a new one publishes only to the watchers it knows. A new watch's key is read
    /// once more [`WATCH_SETTLE`] after its first read, whatever else holds.
    fn due(&mut self, kept: usize, connected: usize, now: Instant) -> bool {
        if self.reading {
            return false;
        }
        let lost = connected * 2 < kept.max(1);
        if !lost && now >= self.read_at + WATCH_STAYED {
            self.wait = Duration::ZERO;
        }
        let regular = self.read_at + if lost { self.wait } else { self.refresh };
        let at = if self.rejoined {
            now
        } else if !self.settled {
            regular.min(self.read_at + WATCH_SETTLE)
        } else {
            regular
        };
        if now < at {
            return false;
        }
        // A read right after the first (its replicas lost at once) is too soon to settle.
        self.settled |= now >= self.read_at + WATCH_SETTLE;
        self.read_at = now;
        self.reading = true;
        let once = std::mem::take(&mut self.rejoined);
        if lost && !once {
            self.wait = (self.wait * 2).clamp(EXPIRY_SWEEP, self.refresh.max(REJOIN_MOST));
        }
        true
    }
}

pub(crate) fn kad_key(key: &Key) -> Vec<u8> {
    key.as_str().as_bytes().to_vec()
}

/// The `k` of `candidates` (this node included) closest to `key`.
pub(crate) fn closest(
    key: &Key,
    candidates: impl IntoIterator<Item = PeerId>,
    k: usize,
) -> Vec<PeerId> {
    let target = kad::KBucketKey::new(kad_key(key));
    let mut peers: Vec<PeerId> =
        candidates.into_iter().collect::<HashSet<_>>().into_iter().collect();
    peers.sort_by_cached_key(|p| target.distance(&kad::KBucketKey::from(*p)));
    peers.truncate(k);
    peers
}

/// True when this node dialed a dkvs peer at an address that is not local: it is on the public
/// internet. Each of the peer's connections is (remote address, dialed by us).
fn dialed_public<'a>(connections: impl IntoIterator<Item = (&'a Multiaddr, bool)>) -> bool {
    connections.into_iter().any(|(addr, dialer)| dialer && !is_local(addr))
}

/// How long a node that AutoNAT found reachable waits for a peer's direct dial (an honest
/// AutoNAT server's dial-back races its answer) before it takes itself for unreachable and
/// reserves a relay slot.
const INBOUND_GRACE: Duration = Duration::from_secs(10);

/// The transport addresses (IP and port) this node dialed last, successfully or not, at most
/// [`Dialed::KEPT`].
#[derive(Default)]
struct Dialed(std::collections::VecDeque<Multiaddr>);

impl Dialed {
    const KEPT: usize = 1024;

    /// Notes `addr` as the newest (again, if it was noted before).
    fn note(&mut self, addr: &Multiaddr) {
        let socket = socket_of(addr);
        if let Some(at) = self.0.iter().position(|a| *a == socket) {
            self.0.remove(at);
        } else if self.0.len() == Self::KEPT {
            self.0.pop_front();
        }
        self.0.push_back(socket);
    }

    fn contains(&self, addr: &Multiaddr) -> bool {
        self.0.contains(&socket_of(addr))
    }
}

/// An address's IP and port (its first two parts, and QUIC's marker): what a NAT's mapping
/// is about.
fn socket_of(addr: &Multiaddr) -> Multiaddr {
    use libp2p::multiaddr::Protocol;
    addr.iter()
        .take_while(|p| !matches!(p, Protocol::P2p(_) | Protocol::P2pCircuit))
        .take(3)
        .collect()
}

/// How long a use keeps a connection from [`Driver::trim_connections`]'s least-recently-used
/// rule (not from a crowded network's share): a lookup, a read or an extension's exchange with
/// a peer ends well within it (operations time out at 10 s).
const TRIM_GRACE: Duration = Duration::from_secs(30);

/// A connected peer as trimming sees it.
#[derive(Clone, Copy, Debug)]
struct Peer {
    /// When it was last used.
    used: Option<Instant>,
    /// When it connected.
    since: Option<Instant>,
    id: PeerId,
    network: Option<crate::defence::Subnet>,
}

/// Which of the `closable` peers to disconnect when `open` peers are connected and at most
/// `max` may be. First, every network with more than `share` peers connected (`per_network`,
/// spared peers included) loses its newest closable peers down to its share, within their
/// grace too: one operator's many ids cannot push everyone else out, and within a crowded
/// network the peers already there stay. Then, while more than three quarters of `max` are
/// left, the least recently used of the rest, none used within [`TRIM_GRACE`] of `now`.
fn to_close(
    mut closable: Vec<Peer>,
    per_network: &HashMap<crate::defence::Subnet, usize>,
    share: usize,
    open: usize,
    max: usize,
    now: Instant,
) -> Vec<PeerId> {
    if open <= max {
        return Vec::new();
    }
    let mut surplus: HashMap<crate::defence::Subnet, usize> = per_network
        .iter()
        .filter(|(_, n)| **n > share)
        .map(|(network, n)| (*network, n - share))
        .collect();
    let mut victims = Vec::new();
    // Newest first (a peer with no time yet is the newest).
    closable.sort_unstable_by_key(|p| (p.since.map(std::cmp::Reverse), p.id));
    closable.retain(|p| {
        let over = p.network.and_then(|n| surplus.get_mut(&n)).filter(|left| **left > 0);
        match over {
            Some(left) => {
                *left -= 1;
                victims.push(p.id);
                false
            }
            None => true,
        }
    });
    closable.sort_unstable_by_key(|p| (p.used, p.id));
    let rest = (open - victims.len()).saturating_sub(max * 3 / 4);
    let idle = closable
        .into_iter()
        .filter(|p| p.used.is_none_or(|at| now.duration_since(at) >= TRIM_GRACE));
    victims.extend(idle.take(rest).map(|p| p.id));
    victims
}

/// Whether a new connection trims, with `open` connections (closing ones aside) under a limit
/// of `max`, when the last trim left `left` open over the limit (None: it did not).
fn trim_due(left: Option<usize>, open: usize, max: usize) -> bool {
    left.is_none_or(|left| open >= left + max.div_ceil(8))
}

/// What a trim left over the limit (`left`) once a peer's connections closed and `open` are
/// left under a limit of `max`: no more than are open, and nothing once within the limit.
fn left_after_close(left: Option<usize>, open: usize, max: usize) -> Option<usize> {
    left.map(|left| left.min(open)).filter(|_| open > max)
}

/// The relay of a circuit address (`.../p2p/<relay>/p2p-circuit...`).
fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut relay = None;
    for protocol in addr.iter() {
        match protocol {
            libp2p::multiaddr::Protocol::P2p(peer) => relay = Some(peer),
            libp2p::multiaddr::Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

/// `addr` ending in `/p2p/<peer>` (added unless it ends so already).
fn with_peer(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) if p == peer => addr.clone(),
        _ => addr.clone().with(libp2p::multiaddr::Protocol::P2p(peer)),
    }
}

/// True for an address through a relay (`/p2p-circuit`).
pub(crate) fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == libp2p::multiaddr::Protocol::P2pCircuit)
}

/// The two addresses of a peer to dial it at in a later run, from its connections (`open`:
/// remote address, dialed by this node) and what the routing table holds (`known`): one this
/// node dialed it at, then public before private, direct before relayed; loopback ones only
/// for a peer on this machine (a peer elsewhere lists `127.0.0.1` too, which from here is
/// this machine).
fn addresses_to_remember(open: &[(Multiaddr, bool)], mut known: Vec<Multiaddr>) -> Vec<Multiaddr> {
    let class = |addr: &Multiaddr| {
        if is_loopback(addr) {
            3
        } else if is_relayed(addr) {
            2
        } else {
            u8::from(is_local(addr))
        }
    };
    let here = open.iter().any(|(addr, _)| is_loopback(addr) && !is_relayed(addr));
    let mut dialed: Vec<Multiaddr> =
        open.iter().filter(|(_, by_us)| *by_us).map(|(addr, _)| addr.clone()).collect();
    dialed.sort_by_key(class);
    known.sort_by_key(class);
    let mut addresses: Vec<Multiaddr> = Vec::new();
    for addr in dialed.into_iter().chain(known) {
        if (here || !is_loopback(&addr)) && !addresses.contains(&addr) {
            addresses.push(addr);
        }
    }
    addresses.truncate(2);
    addresses
}

/// True for an address on this machine: loopback (IPv4 mapped in IPv6 too), `localhost`, or
/// the memory transport.
pub(crate) fn is_loopback(addr: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    let localhost = |name: &str| {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name == "localhost" || name.ends_with(".localhost")
    };
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.to_canonical().is_loopback(),
        Some(Protocol::Dns(name) | Protocol::Dns4(name) | Protocol::Dns6(name)) => localhost(&name),
        Some(Protocol::Memory(_)) => true,
        _ => false,
    }
}

/// True for a direct address on this machine or the local network: loopback, private and
/// link-local IPs, and the memory transport. DNS names and relay circuits are not local.
pub(crate) fn is_local(addr: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    if is_relayed(addr) {
        return false;
    }
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => crate::defence::is_local_ip(ip.into()),
        Some(Protocol::Ip6(ip)) => crate::defence::is_local_ip(ip.into()),
        Some(Protocol::Memory(_)) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected peer for `to_close`: last used `used`, connected `since`.
    fn peer(used: Option<Instant>, since: Option<Instant>, network: Option<Subnet>) -> Peer {
        Peer { used, since, id: PeerId::random(), network }
    }

    use crate::defence::Subnet;

    #[test]
    fn the_node_wakes_at_each_lookups_end_and_again_while_kademlia_still_runs_it() {
        let time = Duration::from_secs(5);
        let mut ends = LookupEnds::<u32>::new(time);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let end = |at: Instant| at + time + LOOKUP_END_GRACE;
        // Nothing to wake for.
        assert_eq!(ends.next(t0, |_| None), None);
        ends.started(1, t0);
        ends.started(2, t0 + ms(100));
        let running = |_: &u32| Some(Duration::ZERO);
        assert_eq!(ends.next(t0, running), Some(end(t0)), "the first lookup's end");
        // Lookup 1 ended at its time: the node wakes for lookup 2 next.
        assert_eq!(ends.next(end(t0), |_| None), Some(end(t0 + ms(100))));
        // Lookup 2 is still running when its end comes: Kademlia started its clock 300 ms
        // late, so the node wakes again when Kademlia's clock says its time is up.
        let now = end(t0 + ms(100));
        let ran = |id: &u32| (*id == 2).then(|| time - ms(300));
        assert_eq!(ends.next(now, ran), Some(now + ms(300) + LOOKUP_END_GRACE));
        // Once it ended, nothing is left to wake for.
        assert_eq!(ends.next(now + ms(400), |_| None), None);
        // A walk's next step replaces its lookup's entry: the step's end is woken for, the
        // earlier one passed over.
        ends.started(3, t0);
        ends.started(3, t0 + ms(1000));
        assert_eq!(ends.next(t0, running), Some(end(t0 + ms(1000))));
        assert_eq!(ends.next(end(t0 + ms(1000)), |_| None), None);
    }

    #[test]
    fn a_watch_that_lost_most_replicas_reads_again_backing_off_until_half_are_back() {
        let alice = dkvs_account::Keypair::generate(dkvs_account::KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let t0 = Instant::now();
        let every = watch_refresh(&Config::default());
        assert_eq!(every, Duration::from_secs(300), "5 min on the default configuration");
        let mut read = WatchRead::new(&key, t0, every);
        assert!(read.refresh >= every * 4 / 5 && read.refresh <= every * 6 / 5);
        let hourly = Config::default().with_table_refresh_interval(Duration::from_secs(3600));
        let phone = WatchRead::new(&key, t0, watch_refresh(&hourly)).refresh;
        let (least, most) = (Duration::from_secs(16 * 60), Duration::from_secs(24 * 60));
        assert!(phone >= least && phone <= most, "20 min, give or take a fifth: {phone:?}");
        // Four replicas kept. Each read ends (the driver clears `reading`) before the next
        // sweep here.
        let due = |read: &mut WatchRead, connected, at| {
            let due = read.due(4, connected, at);
            read.reading = false;
            due
        };
        // A new watch reads once more soon after its first read, all replicas connected or
        // not, then no more while they stay.
        assert!(!due(&mut read, 4, t0 + WATCH_SETTLE - Duration::from_millis(1)));
        assert!(due(&mut read, 4, t0 + WATCH_SETTLE), "the settling read");
        assert!(!due(&mut read, 4, t0 + WATCH_SETTLE * 2), "once");
        // A read at once after the first (every replica lost) is no settling read: that
        // comes after it all the same.
        let mut lost = WatchRead::new(&key, t0, every);
        assert!(due(&mut lost, 0, t0 + Duration::from_millis(10)), "lost: read at once");
        assert!(!due(&mut lost, 4, t0 + WATCH_SETTLE));
        assert!(due(&mut lost, 4, t0 + Duration::from_millis(10) + WATCH_SETTLE), "settling");
        assert!(!due(&mut lost, 4, t0 + WATCH_SETTLE * 3), "once");
        assert!(!due(&mut read, 2, t0 + WATCH_STAYED), "half connected is enough for a while");
        let t1 = t0 + WATCH_STAYED;
        assert!(due(&mut read, 1, t1), "fewer than half: read again at once");
        assert!(!due(&mut read, 1, t1 + EXPIRY_SWEEP - Duration::from_millis(1)));
        assert!(due(&mut read, 0, t1 + EXPIRY_SWEEP), "then after the first wait");
        assert!(!due(&mut read, 0, t1 + EXPIRY_SWEEP * 2), "twice the wait now");
        assert!(due(&mut read, 0, t1 + EXPIRY_SWEEP * 3));
        let mut at = t1 + EXPIRY_SWEEP * 3;
        let most = read.refresh.max(REJOIN_MOST);
        for _ in 0..20 {
            at += most;
            assert!(due(&mut read, 0, at), "the wait grows to at most {most:?}");
        }
        assert!(!due(&mut read, 0, at + most - Duration::from_millis(1)), "and stays there");
        // Replicas that answer and leave at once do not start the wait over, nor those that
        // leave once the idle timeout (60 s by default) closed what they did not keep.
        assert!(!due(&mut read, 3, at + EXPIRY_SWEEP));
        assert!(!due(&mut read, 1, at + EXPIRY_SWEEP * 2), "the wait is still {most:?}");
        assert!(!due(&mut read, 3, at + Duration::from_secs(65)));
        assert!(!due(&mut read, 1, at + Duration::from_secs(70)), "connected at 65 s is no stay");
        assert!(due(&mut read, 1, at + most));
        let t2 = at + most;
        // Back for WATCH_STAYED after the read: the next loss is read again at once.
        assert!(!due(&mut read, 3, t2 + WATCH_STAYED));
        assert!(due(&mut read, 1, t2 + WATCH_STAYED), "lost again: at once");
        let (t3, refresh) = (t2 + WATCH_STAYED, read.refresh);
        assert!(!due(&mut read, 4, t3 + refresh - Duration::from_millis(1)));
        assert!(due(&mut read, 4, t3 + refresh), "all connected: read again after a while");
        // Never two reads of a key at once.
        let t4 = t3 + refresh;
        assert!(read.due(0, 0, t4 + EXPIRY_SWEEP), "a read that reached nobody is read again");
        assert!(!read.due(0, 0, t4 + REJOIN_MOST * 2), "not while it is under way");
    }

    #[test]
    fn a_watch_is_read_again_every_third_of_the_table_refresh_within_5_min_and_an_hour() {
        let every = |secs| {
            watch_refresh(&Config::default().with_table_refresh_interval(Duration::from_secs(secs)))
        };
        assert_eq!(every(3600), Duration::from_secs(1200), "the phone's hourly table: 20 min");
        assert_eq!(every(60), REJOIN_MOST, "never more often than the default's 5 min");
        assert_eq!(every(0), REJOIN_MOST);
        let year = Config::LONGEST.as_secs();
        assert_eq!(every(year), WATCH_REFRESH_MOST, "nor less often than hourly");
        // A phone's key whose replicas it cannot keep connected: its reads back off to its
        // refresh (about 20 min), not to 5 min.
        let alice = dkvs_account::Keypair::generate(dkvs_account::KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let t0 = Instant::now();
        let mut read = WatchRead::new(&key, t0, every(3600));
        let (mut at, mut reads) = (t0, 0);
        while at < t0 + Duration::from_secs(4 * 3600) {
            if read.due(0, 0, at) {
                read.reading = false;
                reads += 1;
            }
            at += EXPIRY_SWEEP;
        }
        // At once, then after waits of 5, 10, ... 640 s (9 reads in the first 21 min), then
        // one a refresh (16-24 min): 18-22 in 4 h; backing off to 5 min would make 53.
        assert!((18..=22).contains(&reads), "{reads} reads in 4 h");
        // Back on the network after it was stranded: read once at the next sweep, then the
        // backoff goes on where it was.
        assert!(!read.due(0, 0, at), "{at:?} is within the wait");
        let wait = read.wait;
        read.rejoined();
        assert!(read.due(0, 0, at + EXPIRY_SWEEP), "read once the node joined again");
        read.reading = false;
        assert_eq!(read.wait, wait, "the backoff is not started over");
        let back = at + EXPIRY_SWEEP;
        assert!(!read.due(0, 0, back + EXPIRY_SWEEP), "read once, not again at the next sweep");
        assert!(!read.due(0, 0, back + wait - Duration::from_millis(1)));
        assert!(read.due(0, 0, back + wait), "then after the wait it had");
        read.reading = false;
        // A key whose replicas are connected again is read once too: the updates published
        // while the node was away are not sent again.
        read.rejoined();
        let again = back + wait + EXPIRY_SWEEP;
        assert!(read.due(12, 12, again), "read for what it missed");
        read.reading = false;
        assert!(!read.due(12, 12, again + EXPIRY_SWEEP), "once");
        assert!(!read.due(12, 0, again + EXPIRY_SWEEP * 2), "lost then: it backs off");
    }

    #[test]
    fn only_kept_replicas_count_for_a_watch() {
        let alice = dkvs_account::Keypair::generate(dkvs_account::KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let t0 = Instant::now();
        let mut read = WatchRead::new(&key, t0, REJOIN_MOST);
        read.settled = true; // past its settling read ([`WATCH_SETTLE`])
        // Two of its twelve replicas are kept, both connected: not lost, however many of the
        // other ten the read left connected for now (they close once idle).
        assert!(!read.due(2, 2, t0 + WATCH_STAYED), "its kept replicas stay");
        assert!(!read.due(2, 1, t0 + WATCH_STAYED), "half of them is enough");
        // None kept (the limit spares other keys' replicas): it has lost them.
        assert!(read.due(0, 0, t0 + WATCH_STAYED), "a key whose replicas are not kept");
    }

    #[test]
    fn the_limit_closes_the_least_recently_used_outside_the_grace() {
        let now = Instant::now() + TRIM_GRACE * 10;
        let ago = |secs: u64| Some(now - Duration::from_secs(secs));
        let closable = vec![
            peer(ago(40), ago(900), None),
            peer(ago(200), ago(900), None),
            peer(ago(5), ago(900), None), // used lately: kept
            peer(None, ago(900), None),   // never used: first to go
            peer(ago(31), ago(900), None),
            peer(ago(0), ago(0), None), // just connected: kept
        ];
        let ids: Vec<PeerId> = closable.iter().map(|p| p.id).collect();
        let none = HashMap::new();
        let to_close = |closable, open, max| to_close(closable, &none, 32, open, max, now);
        assert!(to_close(closable.clone(), 8, 8).is_empty(), "within the limit");
        // 10 open, at most 8: down to 6, so 4 go, oldest first, none within the grace.
        assert_eq!(to_close(closable.clone(), 10, 8), [ids[3], ids[1], ids[0], ids[4]]);
        // Far over the limit: still only those outside the grace.
        assert_eq!(to_close(closable, 40, 8).len(), 4);
    }

    #[test]
    fn a_network_over_its_share_loses_its_newest_peers_first_then_the_usual_rule() {
        let now = Instant::now() + TRIM_GRACE * 10;
        let ago = |secs: u64| Some(now - Duration::from_secs(secs));
        let (crowd, other) = (Subnet::V4([198, 51, 100]), Subnet::V4([203, 0, 113]));
        // The crowd's peers, oldest connection first; busy or not, the newest go.
        let c = [
            peer(ago(800), ago(1000), Some(crowd)), // idle, but here longest: kept
            peer(ago(0), ago(500), Some(crowd)),
            peer(ago(0), ago(40), Some(crowd)),
            peer(ago(0), ago(10), Some(crowd)),
            peer(ago(0), ago(0), Some(crowd)),
            peer(None, None, Some(crowd)), // connecting now
        ];
        let o = [peer(ago(600), ago(700), Some(other)), peer(ago(900), ago(900), None)];
        let id = |p: &Peer| p.id;
        let closable: Vec<Peer> = c.iter().chain(&o).copied().collect();
        // One more crowd peer is spared (a request in flight) but counts towards its network.
        let per_network = HashMap::from([(crowd, 7), (other, 1)]);
        // 9 open, at most 8, share 3: the crowd loses its 4 newest closable peers; then 5 are
        // open, at most 6 wanted: nobody else goes.
        let victims = to_close(closable.clone(), &per_network, 3, 9, 8, now);
        assert_eq!(victims, [id(&c[5]), id(&c[4]), id(&c[3]), id(&c[2])]);
        // Under the limit, no network is trimmed, however many it has.
        assert!(to_close(closable.clone(), &per_network, 3, 8, 8, now).is_empty());
        // Both rules in one trim: 20 open, at most 8 (down to 6): the crowd's 4, then the
        // least recently used outside the grace (the unnetworked peer, the other network's,
        // the crowd's idle one), as many as there are.
        let both = to_close(closable.clone(), &per_network, 3, 20, 8, now);
        assert_eq!(both[..4], victims[..]);
        assert_eq!(both[4..], [id(&o[1]), id(&c[0]), id(&o[0])]);
        // A network exactly at its share loses nothing to the share rule.
        let at_share = HashMap::from([(crowd, 3), (other, 1)]);
        let few: Vec<Peer> = c[..3].iter().chain(&o).copied().collect();
        assert_eq!(to_close(few, &at_share, 3, 9, 8, now), [id(&o[1]), id(&c[0]), id(&o[0])]);
    }

    #[test]
    fn a_trim_that_left_the_node_over_its_limit_waits_for_an_eighth_more_connections() {
        // Nothing left over: every new connection over the limit is looked at.
        assert!(trim_due(None, 129, 128));
        // 140 left (all spared): the next look is at 140 + 16, not at each of the 15 before.
        assert!(!trim_due(Some(140), 141, 128));
        assert!(!trim_due(Some(140), 155, 128));
        assert!(trim_due(Some(140), 156, 128));
        // A small limit looks at every connection, as before.
        assert!(trim_due(Some(5), 6, 4));
        // Peers that leave take the mark down with them: after 200 were left and 100 remain,
        // nothing waits (within the limit); at 150, the next look is at 150 + 16.
        assert_eq!(left_after_close(Some(200), 100, 128), None);
        assert_eq!(left_after_close(Some(200), 150, 128), Some(150));
        assert!(trim_due(left_after_close(Some(200), 150, 128), 166, 128));
        assert_eq!(left_after_close(None, 150, 128), None);
    }

    #[test]
    fn an_inbound_relayed_peer_is_grouped_by_its_relay() {
        use libp2p::core::ConnectedPoint;
        let (relay, peer) = (PeerId::random(), PeerId::random());
        let circuit: Multiaddr =
            format!("/ip4/203.0.113.7/tcp/4001/p2p/{relay}/p2p-circuit").parse().expect("a");
        // As libp2p's relay client reports an inbound circuit: the remote is only the peer.
        let inbound = ConnectedPoint::Listener {
            local_addr: circuit.clone(),
            send_back_addr: format!("/p2p/{peer}").parse().expect("a"),
        };
        let remote = remote_address(&inbound);
        assert!(is_relayed(&remote));
        // Grouped by the relay's network, with every peer it forwards.
        let relay_network =
            crate::defence::Subnet::of(&"/ip4/203.0.113.9/tcp/1".parse().expect("a"));
        assert_eq!(crate::defence::Subnet::of(&remote), relay_network);
        assert!(relay_network.is_some());
        let direct = ConnectedPoint::Listener {
            local_addr: "/ip4/0.0.0.0/tcp/4001".parse().expect("a"),
            send_back_addr: "/ip4/198.51.100.3/tcp/5555".parse().expect("a"),
        };
        assert_eq!(
            remote_address(&direct),
            "/ip4/198.51.100.3/tcp/5555".parse::<Multiaddr>().expect("a")
        );
    }

    #[test]
    fn a_peer_is_grouped_by_its_first_connection_that_has_a_network() {
        use libp2p::swarm::ConnectionId;
        let peer = PeerId::random();
        let mut connections = Connections::new();
        assert_eq!(subnet_of(&connections, &peer), None, "not connected");
        let open = connections.entry(peer).or_default();
        open.insert(
            ConnectionId::new_unchecked(1),
            ("/ip4/127.0.0.1/tcp/1".parse().expect("a"), false),
        );
        assert_eq!(subnet_of(&connections, &peer), None, "on this machine");
        let open = connections.entry(peer).or_default();
        open.insert(
            ConnectionId::new_unchecked(2),
            ("/ip4/203.0.113.7/tcp/1".parse().expect("a"), true),
        );
        assert_eq!(subnet_of(&connections, &peer), Some(crate::defence::Subnet::V4([203, 0, 113])));
    }

    #[test]
    fn only_dialing_a_public_dkvs_peer_ends_the_local_network_rule() {
        let public: Multiaddr = "/ip4/8.8.8.8/tcp/4040".parse().expect("multiaddr");
        let lan: Multiaddr = "/ip4/192.168.1.2/tcp/4040".parse().expect("multiaddr");
        let relayed = lan
            .clone()
            .with(libp2p::multiaddr::Protocol::P2p(PeerId::random()))
            .with(libp2p::multiaddr::Protocol::P2pCircuit);
        // An inbound connection from the internet (a scanner, a peer that found us) says
        // nothing of where this node is (an IPFS peer is never looked at: only a peer identify
        // says speaks dkvs is, `note_public_dial`).
        assert!(!dialed_public([(&public, false)]));
        assert!(!dialed_public([(&lan, true), (&lan, false)]));
        // Dialing a dkvs peer on the internet, or through a relay, does.
        assert!(dialed_public([(&lan, true), (&public, true)]));
        assert!(dialed_public([(&relayed, true)]));
    }

    #[test]
    fn a_peer_is_remembered_by_the_address_dialed_then_public_ones_and_loopback_only_here() {
        let a = |text: &str| -> Multiaddr { text.parse().expect("a multiaddr") };
        let known = vec![
            a("/ip4/127.0.0.1/tcp/4040"),
            a("/ip4/192.168.1.7/tcp/4040"),
            a("/ip4/203.0.113.7/tcp/4040"),
        ];
        // A peer elsewhere: its loopback address is this machine from here.
        let inbound = [(a("/ip4/203.0.113.7/tcp/51234"), false)];
        assert_eq!(
            addresses_to_remember(&inbound, known.clone()),
            [a("/ip4/203.0.113.7/tcp/4040"), a("/ip4/192.168.1.7/tcp/4040")]
        );
        // Dialed by this node: that address first.
        let dialed = [(a("/ip4/192.168.1.7/tcp/4040"), true)];
        assert_eq!(
            addresses_to_remember(&dialed, known.clone()),
            [a("/ip4/192.168.1.7/tcp/4040"), a("/ip4/203.0.113.7/tcp/4040")]
        );
        // On this machine: loopback is how it is reached.
        let here = [(a("/ip4/127.0.0.1/tcp/4040"), true)];
        assert_eq!(addresses_to_remember(&here, known.clone())[0], a("/ip4/127.0.0.1/tcp/4040"));
        // Loopback by other names is loopback too.
        let named = vec![a("/dns4/localhost/tcp/1"), a("/ip6/::ffff:127.0.0.1/tcp/1")];
        assert!(addresses_to_remember(&inbound, named).is_empty(), "this machine's, from here");
    }

    #[test]
    fn local_addresses_are_loopback_private_and_link_local_only() {
        let local = [
            "/ip4/127.0.0.1/tcp/4040",
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/172.16.0.9/udp/4040/quic-v1",
            "/ip4/192.168.1.20/tcp/4040",
            "/ip4/169.254.3.4/tcp/1",
            "/ip6/::1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
            "/memory/7",
        ];
        for addr in local {
            assert!(is_local(&addr.parse().expect("multiaddr")), "{addr} is local");
        }
        let public = [
            "/ip4/8.8.8.8/tcp/4040",
            "/ip4/172.32.0.1/tcp/1",
            "/ip4/100.64.0.1/tcp/1",
            "/ip6/2001:db8::1/tcp/1",
            "/dns4/localhost/tcp/1",
        ];
        for addr in public {
            assert!(!is_local(&addr.parse().expect("multiaddr")), "{addr} is not local");
        }
        // A relay on loopback does not make the relayed peer local.
        let relay: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().expect("multiaddr");
        let circuit = relay
            .with(libp2p::multiaddr::Protocol::P2p(PeerId::random()))
            .with(libp2p::multiaddr::Protocol::P2pCircuit);
        assert!(!is_local(&circuit), "{circuit}");
    }

    /// A peer that connects and says nothing, either way, is dropped at the setup timeout on
    /// the default configuration: not sooner, and not at another layer's bound.
    #[tokio::test]
    async fn a_connection_that_never_finishes_its_setup_ends_at_the_setup_timeout_both_ways() {
        use tokio::io::AsyncReadExt as _;
        let store = Store::in_memory(dkvs_store::Config::default());
        let node = Node::spawn(identity::Keypair::generate_ed25519(), store, Config::default())
            .expect("spawns");
        let at = node.listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("address")).await;
        let at = at.expect("listens");
        let Some(libp2p::multiaddr::Protocol::Tcp(port)) = at.iter().nth(1) else {
            panic!("not a TCP address: {at}")
        };
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let silent_at: Multiaddr =
            format!("/ip4/127.0.0.1/tcp/{}", silent.local_addr().expect("bound").port())
                .parse()
                .expect("address");
        let bound = crate::transport::SETUP_TIMEOUT + Duration::from_secs(10);
        let started = Instant::now();
        let inbound = async {
            let mut stream =
                tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connects");
            let mut byte = [0u8; 1];
            // The node speaks first on nothing: the first thing read is the close.
            let read = tokio::time::timeout(bound, stream.read(&mut byte)).await;
            assert!(matches!(read, Ok(Ok(0) | Err(_))), "the node closed it: {read:?}");
            started.elapsed()
        };
        let outbound = async {
            let held = silent.accept();
            let dial =
                node.dial(silent_at.with(libp2p::multiaddr::Protocol::P2p(PeerId::random())));
            let (held, dialed) = tokio::time::timeout(bound, futures::future::join(held, dial))
                .await
                .expect("the dial ended");
            let _held = held.expect("the node connected");
            let error = dialed.expect_err("nobody finished the handshake");
            assert!(error.to_string().contains("Timeout"), "{error}");
            started.elapsed()
        };
        let (inbound, outbound) = futures::future::join(inbound, outbound).await;
        for (way, took) in [("in", inbound), ("out", outbound)] {
            assert!(
                took >= crate::transport::SETUP_TIMEOUT,
                "{way}: ended after {took:?}, before the timeout"
            );
            assert!(took < bound, "{way}: ended after {took:?}");
        }
        node.shutdown().await;
    }
}
