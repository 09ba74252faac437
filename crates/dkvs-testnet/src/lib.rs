//! A network of dkvs nodes in one process, each with its own persistent store, so that
//! multi-node tests read like stories, for dkvs's own tests and for anyone building on it (the
//! mail and IPFS crates, applications):
//!
//! ```no_run
//! # async fn story() -> anyhow::Result<()> {
//! use dkvs_testnet::TestNet;
//! let mut net = TestNet::start(20, dkvs_net::Config::default()).await?;
//! // net.put(0, record).await?; net.get(7, &key).await?; net.kill(3).await; ...
//! # Ok(()) }
//! ```
//!
//! Nodes run on real TCP over loopback by default, as users run them (the project's rule for
//! tests: real transports where users would use them); a configuration with only the memory
//! transport (`Transports::memory_only`) gives a network without sockets, for simulations of
//! many nodes. Every operation has a deadline ([`STEP`], [`eventually`], [`next_event`]);
//! nothing listens anywhere but 127.0.0.1 or in memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use dkvs_net::libp2p::{Multiaddr, PeerId, identity};
use dkvs_net::{Config, GetOutcome, Node, PutReceipt};
use dkvs_record::{Key, Record};
use dkvs_store::Store;

/// How long any one harness step may take.
pub const STEP: Duration = Duration::from_secs(30);

/// One node of the network, alive or killed.
pub struct Member {
    identity: identity::Keypair,
    dir: PathBuf,
    node: Option<Node>,
    addr: Option<Multiaddr>,
}

/// How a member's node is started: from its identity, its store, the configuration and a
/// directory of its own (kept across restarts), for a network whose nodes host an extension:
///
/// ```no_run
/// # fn f() -> dkvs_testnet::Spawn {
/// std::sync::Arc::new(|identity, store, config, _dir| {
///     Ok(dkvs_net::NodeBuilder::new(identity.clone(), store, config)
///         .with_extension(|_| dkvs_net::libp2p::swarm::dummy::Behaviour)
///         .spawn()?)
/// })
/// # }
/// ```
pub type Spawn =
    Arc<dyn Fn(&identity::Keypair, Store, Config, &Path) -> anyhow::Result<Node> + Send + Sync>;

/// Nodes started as users start them, with nothing hosted.
fn plain() -> Spawn {
    Arc::new(|identity, store, config, _| Ok(Node::spawn(identity.clone(), store, config)?))
}

/// N nodes on loopback (or on the memory transport, when the configuration has only that),
/// bootstrapped through node 0.
pub struct TestNet {
    members: Vec<Member>,
    config: Config,
    store_config: dkvs_store::Config,
    spawn: Spawn,
    _dir: tempfile::TempDir,
}

async fn step<T>(what: &str, f: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(STEP, f).await.map_err(|_| anyhow!("{what} took over {STEP:?}"))
}

impl TestNet {
    /// Starts `n` nodes with `config`, connects each to node 0 and bootstraps them all. On
    /// loopback the default configuration's local-network rule makes every node a DHT server.
    pub async fn start(n: usize, config: Config) -> anyhow::Result<TestNet> {
        TestNet::start_with_store(n, config, dkvs_store::Config::default()).await
    }

    /// Like [`TestNet::start`], with a store configuration for every node.
    pub async fn start_with_store(
        n: usize,
        config: Config,
        store_config: dkvs_store::Config,
    ) -> anyhow::Result<TestNet> {
        let spawn = plain();
        TestNet::start_custom(n, config, store_config, spawn).await
    }

    /// Like [`TestNet::start_with_store`], with every node started by `spawn` (on start and
    /// on [`TestNet::restart`]).
    pub async fn start_custom(
        n: usize,
        config: Config,
        store_config: dkvs_store::Config,
        spawn: Spawn,
    ) -> anyhow::Result<TestNet> {
        let identities = std::iter::repeat_with(identity::Keypair::generate_ed25519).take(n);
        let net =
            TestNet::launch_members(identities.collect(), config, store_config, spawn).await?;
        for i in 0..net.len() {
            net.join(i).await?;
        }
        Ok(net)
    }

    /// Like [`TestNet::start`], node `i` with the identity `identities[i]` (ids ground to sit
    /// in given places of node 0's routing table), for networks of dozens of nodes (a join at
    /// a time, each waiting for its walk, takes about a minute for 90 in a debug build):
    /// every other node connects to node 0, sixteen at a time, and once node 0's routing
    /// table holds every node, they all walk the DHT at once, waited for as a join's walk
    /// is. The identities must fit in node 0's buckets (64 a bucket; more than about 128
    /// random ones do not), or the start fails saying so.
    pub async fn start_as(
        identities: Vec<identity::Keypair>,
        config: Config,
    ) -> anyhow::Result<TestNet> {
        let store_config = dkvs_store::Config::default();
        let net = TestNet::launch_members(identities, config, store_config, plain()).await?;
        let addr = net.addr(0).context("a network of no nodes")?;
        let others: Vec<usize> = (1..net.len()).collect();
        for wave in others.chunks(16) {
            let joins = wave.iter().map(|&i| net.node(i).add_peer(net.peer_id(0), addr.clone()));
            for result in step("connect", futures::future::join_all(joins)).await? {
                result?;
            }
        }
        // A peer joins the table once identify told that it serves the DHT.
        let all =
            eventually(STEP, async || net.node(0).routing_table().await.len() + 1 >= net.len());
        let why = "do more than 64 ids fall in one of its buckets?";
        anyhow::ensure!(all.await, "node 0's routing table does not hold every node ({why})");
        // Then every node walks the DHT, all at once, waited for as a join's walk is: the
        // network is quieter then (walks going on make lookups time out).
        let walks = (0..net.len()).map(|i| net.node(i).bootstrap());
        let _ = tokio::time::timeout(STEP / 3, futures::future::join_all(walks)).await;
        Ok(net)
    }

    /// A network of a node for each of `identities`, each listening, none joined.
    async fn launch_members(
        identities: Vec<identity::Keypair>,
        config: Config,
        store_config: dkvs_store::Config,
        spawn: Spawn,
    ) -> anyhow::Result<TestNet> {
        let (n, dir) = (identities.len(), tempfile::tempdir()?);
        let members = (identities.into_iter().enumerate())
            .map(|(i, identity)| Member {
                identity,
                dir: dir.path().join(format!("node{i}")),
                node: None,
                addr: None,
            })
            .collect();
        let mut net = TestNet { members, config, store_config, spawn, _dir: dir };
        for i in 0..n {
            net.launch(i).await?;
        }
        Ok(net)
    }

    /// Starts `n` nodes for a simulation of many (hundreds or more, e.g. on the memory
    /// transport): node 0 first, then the others join in concurrent waves of up to 32, each
    /// through a node spread over those that joined before it (not all through node 0): about
    /// n/32 waves instead of n joins one after another. Each join is bounded like
    /// [`TestNet::start`]'s (a connect within [`STEP`], then at most a third of it for the
    /// walk); the whole start is not.
    pub async fn start_many(n: usize, config: Config) -> anyhow::Result<TestNet> {
        TestNet::start_many_reporting(n, config, |_| {}).await
    }

    /// [`TestNet::start_many`], telling `joined` how many nodes are up after each wave.
    pub async fn start_many_reporting(
        n: usize,
        config: Config,
        mut report: impl FnMut(usize),
    ) -> anyhow::Result<TestNet> {
        let spawn = plain();
        let dir = tempfile::tempdir()?;
        let store_config = dkvs_store::Config::default();
        let mut net = TestNet { members: Vec::new(), config, store_config, spawn, _dir: dir };
        const WAVE: usize = 32;
        while net.members.len() < n {
            let joined = net.members.len();
            let wave = WAVE.min(joined * 4).min(n - joined).max(1);
            if joined == 0 {
                // Node 0 starts alone: the network everyone else joins.
                let first = net.new_member();
                net.launch(first).await?;
                continue;
            }
            let mut new = Vec::with_capacity(wave);
            for _ in 0..wave {
                let i = net.new_member();
                net.launch(i).await?;
                new.push(i);
            }
            // Spread the newcomers over every node joined so far (Fibonacci hashing).
            let via =
                |i: usize| ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % joined;
            let joins = new.iter().map(|&i| net.join_through(i, via(i)));
            for result in futures::future::join_all(joins).await {
                result?;
            }
            report(net.members.len());
        }
        Ok(net)
    }

    /// A new member with a fresh identity and a directory of its own, not yet launched.
    fn new_member(&mut self) -> usize {
        let i = self.members.len();
        self.members.push(Member {
            identity: identity::Keypair::generate_ed25519(),
            dir: self._dir.path().join(format!("node{i}")),
            node: None,
            addr: None,
        });
        i
    }

    async fn launch(&mut self, i: usize) -> anyhow::Result<()> {
        let member = &mut self.members[i];
        let store = Store::open(&member.dir, self.store_config.clone())?;
        let node = (self.spawn)(&member.identity, store, self.config.clone(), &member.dir)?;
        // On TCP when the configuration has it, else in memory (a network in one process),
        // else on QUIC.
        let transports = self.config.transports;
        let listen = if transports.tcp {
            "/ip4/127.0.0.1/tcp/0"
        } else if transports.memory {
            "/memory/0"
        } else {
            "/ip4/127.0.0.1/udp/0/quic-v1"
        };
        let addr = step("listen", node.listen_on(listen.parse()?)).await??;
        member.node = Some(node);
        member.addr = Some(addr);
        Ok(())
    }

    /// Connects node `i` to node 0 (or node 0 to the first other live node) and walks the DHT.
    async fn join(&self, i: usize) -> anyhow::Result<()> {
        let via = (0..self.members.len())
            .find(|&j| j != i && self.members[j].node.is_some())
            .context("no other live node to join through")?;
        self.join_through(i, via).await
    }

    /// Connects node `i` to live node `via` and walks the DHT.
    async fn join_through(&self, i: usize, via: usize) -> anyhow::Result<()> {
        let node = self.node(i);
        let addr = self.members[via].addr.clone().context("live node has an address")?;
        step("connect", node.add_peer(self.peer_id(via), addr)).await??;
        // A walk finds nobody new in a network of two; that is fine. A walk through a network
        // with dead peers in its routing tables can take a while (every query waits for its
        // slowest peer); the node is connected and its routing table fills as the walk goes
        // on, so joining waits for the walk only so long.
        let _ = tokio::time::timeout(STEP / 3, node.bootstrap()).await;
        Ok(())
    }

    /// Number of nodes, killed ones included.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True for a network of no nodes.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Node `i`. Panics if it is killed: a test that uses a dead node is wrong.
    pub fn node(&self, i: usize) -> &Node {
        self.members[i].node.as_ref().unwrap_or_else(|| panic!("node {i} is killed"))
    }

    /// Node `i`'s listen address, while it is alive.
    pub fn addr(&self, i: usize) -> Option<Multiaddr> {
        self.members[i].addr.clone()
    }

    /// Node `i`'s peer id (alive or not).
    pub fn peer_id(&self, i: usize) -> PeerId {
        self.members[i].identity.public().to_peer_id()
    }

    /// Indices of the live nodes.
    pub fn alive(&self) -> Vec<usize> {
        (0..self.members.len()).filter(|&i| self.members[i].node.is_some()).collect()
    }

    /// Puts `record` through node `i`.
    pub async fn put(
        &self,
        i: usize,
        record: Record,
    ) -> anyhow::Result<Result<PutReceipt, dkvs_net::PutError>> {
        step("put", self.node(i).put(record)).await
    }

    /// Gets `key` through node `i`.
    pub async fn get(
        &self,
        i: usize,
        key: &Key,
    ) -> anyhow::Result<Result<GetOutcome, dkvs_net::GetError>> {
        step("get", self.node(i).get(key)).await
    }

    /// Stops node `i` abruptly (its connections drop; its store stays on disk).
    pub async fn kill(&mut self, i: usize) {
        if let Some(node) = self.members[i].node.take() {
            // Dropping the last handle aborts the node's task mid-flight, like a crash.
            drop(node);
        }
        self.members[i].addr = None;
        // Let the task wind down and the lock on the store directory go.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Restarts node `i` with its identity and store, and rejoins the network.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..50 {
            // The killed task may still hold the store's lock for a moment.
            match self.launch(i).await {
                Ok(()) => return self.join(i).await,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap_or_else(|| anyhow!("restart of node {i} failed")))
    }

    /// Starts one more node, with a fresh identity and store, and joins it to the network
    /// through the first live node (a newcomer during churn). Returns its index.
    pub async fn add(&mut self) -> anyhow::Result<usize> {
        let i = self.new_member();
        self.launch(i).await?;
        self.join(i).await?;
        Ok(i)
    }

    /// Shuts every live node down.
    pub async fn shutdown(mut self) {
        for member in &mut self.members {
            if let Some(node) = member.node.take() {
                let _ = tokio::time::timeout(STEP, node.shutdown()).await;
            }
        }
    }
}

/// A node outside any [`TestNet`], with a fresh identity and a persistent store in `dir`: for
/// stories that wire nodes by hand (relays, NAT, transports).
pub fn lone_node(dir: &std::path::Path, config: Config) -> anyhow::Result<Node> {
    lone_node_with_store(dir, config, dkvs_store::Config::default())
}

/// Like [`lone_node`], with the store configured by `store_config` (a light node's, all kept
/// for its own records).
pub fn lone_node_with_store(
    dir: &std::path::Path,
    config: Config,
    store_config: dkvs_store::Config,
) -> anyhow::Result<Node> {
    let store = Store::open(dir, store_config)?;
    Ok(Node::spawn(identity::Keypair::generate_ed25519(), store, config)?)
}

/// Polls `check` every 50 ms until it returns true or `within` passes.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next item of `stream`, waiting at most `within`: an error names what did not come
/// (`what`) when the time is up or the stream ends, so a test never hangs on a silent peer.
pub async fn next_event<S>(within: Duration, what: &str, stream: &mut S) -> anyhow::Result<S::Item>
where
    S: futures::Stream + Unpin,
{
    use futures::StreamExt as _;
    match tokio::time::timeout(within, stream.next()).await {
        Ok(Some(item)) => Ok(item),
        Ok(None) => Err(anyhow!("{what}: the stream ended")),
        Err(_) => Err(anyhow!("{what}: nothing within {within:?}")),
    }
}

// The README's example is compiled with the doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
