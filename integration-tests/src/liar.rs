//! A dishonest peer for tests: it speaks dkvs's protocols (Kademlia on `/dkvs/kad/1.0.0`, the
//! record protocol) but answers gets with whatever the test tells it to (an old record, a
//! forged one), claims to store every put without storing anything (or answers puts as told),
//! answers replication rounds as a peer that holds nothing, and can flood a node with
//! puts, Kademlia PUT_VALUEs or gossip on a watch topic. It is built from plain libp2p parts, as an attacker would build it.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use dkvs_net::codec::pb;
use dkvs_net::lane;
use dkvs_net::libp2p::swarm::behaviour::toggle::Toggle;
use dkvs_net::libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use dkvs_net::libp2p::{
    self, Multiaddr, PeerId, StreamProtocol, Swarm, gossipsub, identify, identity, kad, noise, tcp,
    yamux,
};
use futures::StreamExt as _;
use tokio::sync::{mpsc, oneshot};

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "dkvs_net::libp2p::swarm::derive_prelude")]
struct Behaviour {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    records: Toggle<lane::Behaviour>,
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
}

enum Command {
    Lie(String, Vec<u8>),
    StaleClaim(Vec<u8>),
    Name(Vec<Vec<u8>>),
    Hinted(oneshot::Sender<usize>),
    Puts(oneshot::Sender<usize>),
    PutStatus(pb::PutStatus),
    /// Connects to a peer, and walks the DHT once connected if told to.
    Join(PeerId, Multiaddr, bool, oneshot::Sender<anyhow::Result<()>>),
    Flood(PeerId, Vec<pb::Request>, oneshot::Sender<FloodReport>),
    KadFlood(PeerId, Vec<Vec<u8>>),
    GossipFlood(PeerId, String, Vec<Vec<u8>>, oneshot::Sender<usize>),
    Freeze(oneshot::Sender<()>),
    Frozen(oneshot::Sender<bool>),
    Thaw,
    Stall(Stall),
}

/// When a liar freezes by itself ([`Liar::stall_after_next_get`],
/// [`Liar::stall_at_next_lookup`]), or cuts its connections ([`Liar::cut_at_next_lookup`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stall {
    No,
    AfterGet,
    AtLookup,
    CutAtLookup,
    /// At each lookup, for this long.
    AtEachLookupFor(Duration),
}

impl Stall {
    /// How late it answers each lookup, if it answers them late.
    fn late(self) -> Option<Duration> {
        match self {
            Stall::AtEachLookupFor(late) => Some(late),
            _ => None,
        }
    }
}

/// What a flood achieved.
#[derive(Debug, Default)]
pub struct FloodReport {
    /// Puts the target answered (stored or refused).
    pub answered: usize,
    /// Of those, refused for load.
    pub rate_limited: usize,
    /// Puts that got no answer: the connection was cut or refused.
    pub cut_off: usize,
    /// Replication round messages the target refused (with its reason).
    pub refused: Vec<String>,
}

/// A running dishonest peer.
pub struct Liar {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Liar {
    /// Starts a liar listening on loopback.
    pub async fn spawn() -> anyhow::Result<Liar> {
        Liar::spawn_as(identity::Keypair::generate_ed25519()).await
    }

    /// Starts a liar with the identity `key` (one ground to sit near a key), on loopback.
    pub async fn spawn_as(key: identity::Keypair) -> anyhow::Result<Liar> {
        Liar::spawn_on(key, "/ip4/127.0.0.1/tcp/0".parse()?).await
    }

    /// Starts a liar with the identity `key` listening on `addr` (a port a peer that left
    /// had: its old address now answers with another peer).
    pub async fn spawn_on(key: identity::Keypair, addr: Multiaddr) -> anyhow::Result<Liar> {
        Liar::spawn_with(key, addr, false, true).await
    }

    /// Starts a newcomer that only the peer it joins ([`Liar::join_quietly`]) knows of, as one
    /// whose walk has not reached the others yet: its routing table takes no peer (Kademlia
    /// would walk the DHT on its own when a first one came), and it answers lookups with
    /// nobody. Its identity is `key`, one ground to sit near a key or a peer (the tests that
    /// use a newcomer need it nearest to something).
    pub async fn spawn_newcomer_as(key: identity::Keypair) -> anyhow::Result<Liar> {
        Liar::spawn_with(key, "/ip4/127.0.0.1/tcp/0".parse()?, true, true).await
    }

    /// Starts a peer that speaks dkvs's Kademlia and not its record protocol (an older node,
    /// or one that says so), on loopback: it answers lookups and holds no record.
    pub async fn spawn_kad_only() -> anyhow::Result<Liar> {
        let key = identity::Keypair::generate_ed25519();
        Liar::spawn_with(key, "/ip4/127.0.0.1/tcp/0".parse()?, false, false).await
    }

    async fn spawn_with(
        key: identity::Keypair,
        addr: Multiaddr,
        newcomer: bool,
        records: bool,
    ) -> anyhow::Result<Liar> {
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
            .with_behaviour(|key: &identity::Keypair| {
                let peer_id = key.public().to_peer_id();
                let mut config = kad::Config::new(StreamProtocol::new("/dkvs/kad/1.0.0"));
                if newcomer {
                    config.set_kbucket_inserts(kad::BucketInserts::Manual);
                }
                let mut kad = kad::Behaviour::with_config(
                    peer_id,
                    kad::store::MemoryStore::new(peer_id),
                    config,
                );
                kad.set_mode(Some(kad::Mode::Server));
                Behaviour {
                    kad,
                    // The record protocol's framing is dkvs-net's (an attacker would copy it).
                    // The timeout is long enough that a node slowed by a loaded machine (the
                    // tests run side by side on two cores) still answers in time: only a cut
                    // connection counts as "cut off". A flood is queued whole.
                    records: Toggle::from(records.then(|| {
                        lane::Behaviour::new(Duration::from_secs(30)).with_max_queued(100_000)
                    })),
                    identify: identify::Behaviour::new(identify::Config::new(
                        dkvs_net::IDENTIFY_PROTOCOL.to_owned(),
                        key.public(),
                    )),
                    gossipsub: gossipsub::Behaviour::new(
                        gossipsub::MessageAuthenticity::Signed(key.clone()),
                        gossipsub::Config::default(),
                    )
                    .expect("gossipsub with its default configuration"),
                }
            })?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        swarm.listen_on(addr)?;
        let peer_id = *swarm.local_peer_id();
        let (commands, receiver) = mpsc::channel(16);
        let task = tokio::spawn(run(swarm, receiver));
        Ok(Liar { commands, peer_id, task })
    }

    /// The liar's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// From now on, answers gets for `key` with `bytes` (a record's encoding, or garbage).
    pub async fn lie_about(&self, key: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.commands
            .send(Command::Lie(key.to_owned(), bytes))
            .await
            .map_err(|_| anyhow!("liar gone"))
    }

    /// From now on, names `peers` in every get answer as closer to the key than anything the
    /// asker knows, whatever the asker's hint says.
    pub async fn name_peers(&self, peers: Vec<PeerId>) -> anyhow::Result<()> {
        let peers = peers.into_iter().map(PeerId::to_bytes).collect();
        self.commands.send(Command::Name(peers)).await.map_err(|_| anyhow!("liar gone"))
    }

    /// How many get requests carrying a hint (an asker that took its replicas from its
    /// routing table) the liar has answered.
    pub async fn hinted_gets(&self) -> anyhow::Result<usize> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Hinted(tx)).await.map_err(|_| anyhow!("liar gone"))?;
        rx.await.context("liar gone")
    }

    /// How many put requests the liar has answered.
    pub async fn puts_answered(&self) -> anyhow::Result<usize> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Puts(tx)).await.map_err(|_| anyhow!("liar gone"))?;
        rx.await.context("liar gone")
    }

    /// From now on, answers every put with "stale", showing `bytes` as the newer record.
    pub async fn claim_stale(&self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.commands.send(Command::StaleClaim(bytes)).await.map_err(|_| anyhow!("liar gone"))
    }

    /// Connects to `peer` at `addr` and walks the DHT, so honest nodes route to the liar.
    pub async fn join(&self, peer: PeerId, addr: Multiaddr) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Join(peer, addr, true, tx))
            .await
            .map_err(|_| anyhow!("liar gone"))?;
        rx.await.context("liar gone")?
    }

    /// Connects to `peer` (listening at `addr`) and does not walk the DHT. A liar from
    /// [`Liar::spawn_newcomer_as`] does not put `peer` in its routing table either: a newcomer
    /// that only `peer` knows of. (Another liar puts it there on connection, and Kademlia
    /// then walks on its own.)
    pub async fn join_quietly(&self, peer: PeerId, addr: Multiaddr) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Join(peer, addr, false, tx))
            .await
            .map_err(|_| anyhow!("liar gone"))?;
        rx.await.context("liar gone")?
    }

    /// Joins `node` (listening at `addr`) as [`Liar::join`] does, and waits until the node's
    /// routing table holds the liar: a node adds a peer once identify told it that the peer
    /// serves the DHT, a moment after the connection `join` waits for, and an operation
    /// started in between finds an empty table.
    pub async fn join_table(&self, node: &dkvs_net::Node, addr: Multiaddr) -> anyhow::Result<()> {
        self.join(node.peer_id(), addr).await?;
        let peer = self.peer_id;
        let listed = crate::testnet::eventually(Duration::from_secs(10), async || {
            node.routing_table().await.contains(&peer)
        })
        .await;
        anyhow::ensure!(listed, "node {} did not put the liar {peer} in its table", node.peer_id());
        Ok(())
    }

    /// Sends every record in `records` to `target` as fast as the connection allows.
    pub async fn flood(
        &self,
        target: PeerId,
        records: Vec<Vec<u8>>,
    ) -> anyhow::Result<FloodReport> {
        let requests = records
            .into_iter()
            .map(|record| pb::Request {
                kind: Some(pb::request::Kind::Put(pb::PutRequest { record, ..Default::default() })),
            })
            .collect();
        self.send_requests(target, requests).await
    }

    /// Sends every request to `target` as fast as the connection allows.
    pub async fn send_requests(
        &self,
        target: PeerId,
        requests: Vec<pb::Request>,
    ) -> anyhow::Result<FloodReport> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Flood(target, requests, tx))
            .await
            .map_err(|_| anyhow!("liar gone"))?;
        rx.await.context("liar gone")
    }

    /// Sends every record to `target` as a Kademlia PUT_VALUE (not waiting for answers).
    pub async fn kad_flood(&self, target: PeerId, records: Vec<Vec<u8>>) -> anyhow::Result<()> {
        self.commands
            .send(Command::KadFlood(target, records))
            .await
            .map_err(|_| anyhow!("liar gone"))
    }

    /// Subscribes to `topic`, waits (at most 10 s) until `target` is subscribed to it too, then
    /// publishes every message, signed as its author, as fast as gossipsub takes them.
    /// Returns how many gossipsub took.
    pub async fn gossip_flood(
        &self,
        target: PeerId,
        topic: String,
        messages: Vec<Vec<u8>>,
    ) -> anyhow::Result<usize> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::GossipFlood(target, topic, messages, tx))
            .await
            .map_err(|_| anyhow!("liar gone"))?;
        rx.await.context("liar gone")
    }

    /// Until thawed ([`Liar::thaw`]) answers nothing, not even a Kademlia lookup, and keeps its
    /// connections open: a process the machine stopped (a phone's app the OS suspended, a node
    /// swapped out) looks the same to its peers until their requests time out.
    /// Returns once the liar has stopped.
    pub async fn freeze(&self) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Freeze(tx)).await.map_err(|_| anyhow!("liar gone"))?;
        rx.await.context("liar gone")
    }

    /// Answers its next get, then freezes ([`Liar::freeze`]) at the first Kademlia lookup
    /// that reaches it after, leaving it unanswered: the asker's next step, a lookup if the
    /// answer named closer peers, does not hear from it.
    pub async fn stall_after_next_get(&self) -> anyhow::Result<()> {
        self.commands.send(Command::Stall(Stall::AfterGet)).await.map_err(|_| anyhow!("liar gone"))
    }

    /// Freezes ([`Liar::freeze`]) at the first Kademlia lookup that reaches it, leaving it
    /// unanswered, whether or not it answered a get before.
    pub async fn stall_at_next_lookup(&self) -> anyhow::Result<()> {
        self.commands.send(Command::Stall(Stall::AtLookup)).await.map_err(|_| anyhow!("liar gone"))
    }

    /// From now on, until it freezes or thaws, answers each Kademlia lookup that reaches it
    /// `late` (and nothing else meanwhile: lookups that reach it together are answered in
    /// turn), as a peer on a slow link would; its askers learn to wait on it longer.
    pub async fn answer_lookups_after(&self, late: Duration) -> anyhow::Result<()> {
        let slow = Command::Stall(Stall::AtEachLookupFor(late));
        self.commands.send(slow).await.map_err(|_| anyhow!("liar gone"))
    }

    /// Closes all its connections at the first Kademlia lookup that reaches it: the lookup's
    /// request fails at once, and a lookup that knew of no one else completes having heard
    /// from nobody.
    pub async fn cut_at_next_lookup(&self) -> anyhow::Result<()> {
        let cut = Command::Stall(Stall::CutAtLookup);
        self.commands.send(cut).await.map_err(|_| anyhow!("liar gone"))
    }

    /// Whether it is frozen now (by [`Liar::freeze`] or at a lookup it stalls).
    pub async fn frozen(&self) -> anyhow::Result<bool> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Frozen(tx)).await.map_err(|_| anyhow!("liar gone"))?;
        rx.await.context("liar gone")
    }

    /// Answers again, from what waited while it was frozen on: a process continued
    /// (`kill -CONT`), a phone's app resumed.
    pub async fn thaw(&self) -> anyhow::Result<()> {
        self.commands.send(Command::Thaw).await.map_err(|_| anyhow!("liar gone"))
    }

    /// Answers every put with `status` (and keeps nothing), and every replication round as
    /// a peer that holds nothing.
    pub async fn answer_puts_with(&self, status: pb::PutStatus) -> anyhow::Result<()> {
        self.commands.send(Command::PutStatus(status)).await.map_err(|_| anyhow!("liar gone"))
    }
}

async fn run(mut swarm: Swarm<Behaviour>, mut commands: mpsc::Receiver<Command>) {
    let mut lies: HashMap<String, Vec<u8>> = HashMap::new();
    let mut stale_claim: Option<Vec<u8>> = None;
    let mut named: Vec<Vec<u8>> = Vec::new();
    let mut hinted = 0;
    let mut puts = 0;
    let mut put_status = pb::PutStatus::Stored;
    let nothing = dkvs_net::reconcile::set_of([]);
    let mut joining: Vec<(PeerId, bool, oneshot::Sender<anyhow::Result<()>>)> = Vec::new();
    let mut flood: Option<(usize, FloodReport, oneshot::Sender<FloodReport>)> = None;
    type Gossip = (PeerId, gossipsub::IdentTopic, Vec<Vec<u8>>, oneshot::Sender<usize>);
    let mut gossip: Option<(Gossip, tokio::time::Instant)> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    // While frozen the swarm is not polled: the connections' own tasks hold them open, and
    // what peers ask waits unanswered.
    let mut frozen = false;
    let mut stall = Stall::No;
    // Frozen for a while, by a slow lookup's answer (`Stall::AtEachLookupFor`), until then.
    let mut thaw_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(thaw_at.unwrap_or_else(tokio::time::Instant::now)),
                if thaw_at.is_some() =>
            {
                thaw_at = None;
                frozen = false;
            }
            command = commands.recv() => match command {
                None => return,
                Some(Command::Lie(key, bytes)) => {
                    lies.insert(key, bytes);
                }
                Some(Command::Freeze(reply)) => {
                    frozen = true;
                    thaw_at = None;
                    stall = stall.late().map_or(stall, |_| Stall::No);
                    let _ = reply.send(());
                }
                Some(Command::Stall(when)) => {
                    stall = when;
                }
                Some(Command::Frozen(reply)) => {
                    let _ = reply.send(frozen);
                }
                Some(Command::Thaw) => {
                    frozen = false;
                    thaw_at = None;
                    stall = stall.late().map_or(stall, |_| Stall::No);
                }
                Some(Command::StaleClaim(bytes)) => {
                    stale_claim = Some(bytes);
                }
                Some(Command::Name(peers)) => {
                    named = peers;
                }
                Some(Command::Hinted(reply)) => {
                    let _ = reply.send(hinted);
                }
                Some(Command::Puts(reply)) => {
                    let _ = reply.send(puts);
                }
                Some(Command::PutStatus(status)) => {
                    put_status = status;
                }
                Some(Command::Join(peer, addr, walk, reply)) => {
                    if walk {
                        swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    }
                    match swarm.dial(addr) {
                        Ok(()) => joining.push((peer, walk, reply)),
                        Err(e) => {
                            let _ = reply.send(Err(e.into()));
                        }
                    }
                }
                Some(Command::KadFlood(target, records)) => {
                    for bytes in records {
                        let Ok(record) = dkvs_record::Record::decode(&bytes) else { continue };
                        let key = kad::RecordKey::new(&record.key().as_str());
                        let put = kad::Record::new(key, bytes);
                        let _ = swarm.behaviour_mut().kad.put_record_to(
                            put,
                            std::iter::once(target),
                            kad::Quorum::One,
                        );
                    }
                }
                Some(Command::GossipFlood(target, topic, messages, reply)) => {
                    let topic = gossipsub::IdentTopic::new(topic);
                    let _ = swarm.behaviour_mut().gossipsub.subscribe(&topic);
                    let until = tokio::time::Instant::now() + Duration::from_secs(10);
                    gossip = Some(((target, topic, messages, reply), until));
                }
                Some(Command::Flood(target, requests, reply)) => {
                    let count = requests.len();
                    for request in requests {
                        let records = swarm.behaviour_mut().records.as_mut();
                        records.expect("a liar that speaks records").send_request(&target, request);
                    }
                    flood = Some((count, FloodReport::default(), reply));
                }
            },
            _ = tick.tick(), if gossip.is_some() => {
                let ready = gossip.as_ref().is_some_and(|((target, topic, ..), until)| {
                    let hash = topic.hash();
                    tokio::time::Instant::now() >= *until
                        || swarm.behaviour().gossipsub.all_peers().any(|(peer, topics)| {
                            peer == target && topics.contains(&&hash)
                        })
                });
                if ready && let Some(((_, topic, messages, reply), _)) = gossip.take() {
                    let taken = messages
                        .into_iter()
                        .filter(|m| swarm.behaviour_mut().gossipsub.publish(topic.clone(), m.clone()).is_ok())
                        .count();
                    let _ = reply.send(taken);
                }
            }
            event = swarm.select_next_some(), if !frozen => match event {
                // Kademlia reports the request before its answer goes out: that answer waits.
                SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest {
                    request: kad::InboundRequest::FindNode { .. },
                })) if stall == Stall::AtLookup => {
                    stall = Stall::No;
                    frozen = true;
                }
                SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest {
                    request: kad::InboundRequest::FindNode { .. },
                })) if stall.late().is_some() => {
                    frozen = true;
                    thaw_at = stall.late().map(|late| tokio::time::Instant::now() + late);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest {
                    request: kad::InboundRequest::FindNode { .. },
                })) if stall == Stall::CutAtLookup => {
                    stall = Stall::No;
                    let peers: Vec<PeerId> = swarm.connected_peers().copied().collect();
                    for peer in peers {
                        let _ = swarm.disconnect_peer_id(peer);
                    }
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    if let Some(i) = joining.iter().position(|(p, _, _)| *p == peer_id) {
                        let (_, walk, reply) = joining.swap_remove(i);
                        if walk {
                            let _ = swarm.behaviour_mut().kad.bootstrap();
                        }
                        let _ = reply.send(Ok(()));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Records(event)) => match event {
                    lane::Event::Request { request, channel, .. } => {
                        if matches!(request.kind, Some(pb::request::Kind::Put(_))) {
                            puts += 1;
                        }
                        let response = match request.kind {
                            Some(pb::request::Kind::Get(get)) => {
                                if !get.known.is_empty() {
                                    hinted += 1;
                                }
                                if stall == Stall::AfterGet {
                                    stall = Stall::AtLookup;
                                }
                                let key = String::from_utf8_lossy(&get.key).into_owned();
                                pb::Response { kind: Some(pb::response::Kind::Get(pb::GetResponse {
                                    record: lies.get(&key).cloned().unwrap_or_default(),
                                    highest_seq: u64::MAX,
                                    rate_limited: false,
                                    closer: named.clone(),
                                })) }
                            }
                            Some(pb::request::Kind::Reconcile(round)) => {
                                let message = dkvs_net::reconcile::answer(&nothing, &round.message)
                                    .unwrap_or_default();
                                pb::Response { kind: Some(pb::response::Kind::Reconcile(
                                    pb::ReconcileResponse { message, refused: String::new() },
                                )) }
                            }
                            // Claims to store everything (or that it holds something newer);
                            // keeps nothing.
                            _ => pb::Response { kind: Some(pb::response::Kind::Put(match &stale_claim {
                                Some(current) => pb::PutResponse {
                                    status: pb::PutStatus::Stale as i32,
                                    current: current.clone(),
                                    current_seq: u64::MAX,
                                    ..pb::PutResponse::default()
                                },
                                None => pb::PutResponse {
                                    status: put_status as i32,
                                    ..pb::PutResponse::default()
                                },
                            })) },
                        };
                        if let Some(records) = swarm.behaviour_mut().records.as_mut() {
                            let _ = records.send_response(channel, response);
                        }
                    }
                    lane::Event::Response { response, .. } => {
                        if let Some((_, report, _)) = flood.as_mut() {
                            report.answered += 1;
                            match response.kind {
                                Some(pb::response::Kind::Put(put))
                                    if put.status == pb::PutStatus::RateLimited as i32 =>
                                {
                                    report.rate_limited += 1;
                                }
                                Some(pb::response::Kind::Reconcile(round))
                                    if !round.refused.is_empty() =>
                                {
                                    report.refused.push(round.refused);
                                }
                                _ => {}
                            }
                        }
                    }
                    lane::Event::Failure { .. } => {
                        if let Some((_, report, _)) = flood.as_mut() {
                            report.cut_off += 1;
                        }
                    }
                },
                _ => {}
            },
        }
        if let Some((count, report, _)) = &flood
            && report.answered + report.cut_off >= *count
            && let Some((_, report, reply)) = flood.take()
        {
            let _ = reply.send(report);
        }
    }
}
