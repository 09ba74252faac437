//! Bitswap as a node runs it: the wants of this node's fetches, the wantlists of its peers, and
//! the streams that carry them.
//!
//! Streams live on tasks, not on the node's event loop ([`crate::streams`] hands them over):
//! one reader task per inbound stream
//! (it reads frames, decodes them and hashes their blocks, then hands the checked message to
//! the exchange), and one writer task per peer with an outbound stream, closed after
//! [`STREAM_QUIET`] with nothing to write (it batches
//! what the exchange queued, loads served blocks from the block store, writes frames). The
//! exchange itself, on the node's task, only decides: whom to ask, what to answer.
//!
//! Fetching asks every connected peer `want-have` (with "send don't-have"), then `want-block`
//! of the first peer that has it; a peer that already gave blocks of the same file is asked
//! `want-block` at once. A peer that does not answer a `want-block` in [`BLOCK_TIMEOUT`] is
//! passed over for the next that has it. Blocks nobody asked for are dropped, and charged to
//! their sender's admission budget in full; blocks this node asked for are not (a download must
//! not crawl at the budget of a flood).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use cid::Cid;
use dkvs_net::libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use dkvs_net::libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use dkvs_net::libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use dkvs_net::{Host, Network};
use futures::AsyncWriteExt as _;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::bitswap::{
    self, MAX_ENTRIES, MAX_MESSAGE, Message, SEND_SMALL_BLOCK, Want, WantType, WireError,
};
use crate::blockstore::BlockStore;
use crate::streams::{Handler, HandlerIn, HandlerOut};

/// A writer's ask for an outbound stream: the answer, or whether the peer does not speak
/// bitswap.
type StreamAsk = (PeerId, oneshot::Sender<Result<Stream, bool>>);

/// How long a peer asked for a block may take before the next peer that has it is asked.
pub const BLOCK_TIMEOUT: Duration = Duration::from_secs(15);
/// Entries of one peer's wantlist this node remembers (to serve blocks it gets later).
const PEER_WANTS: usize = 4096;
/// Inbound bitswap streams one peer may have open at once.
const STREAMS_PER_PEER: usize = 16;
/// Messages queued for one peer's writer before more are dropped.
const WRITER_QUEUE: usize = 1024;
/// Entries (wants, presences, blocks to send) queued for one peer's writer, and in the batch
/// it is writing, before more messages are dropped: two full messages' worth, about 2 MiB of
/// memory (a block to send is one entry, its CID: the writer loads blocks a batch,
/// [`BATCH_BYTES`], at a time, a block queued already is not queued again, and a writer whose
/// peer left drops what it holds). A peer that never reads, and keeps asking for blocks this
/// node lacks with `send_dont_have`, would else have thousands of don't-haves queued for each
/// frame it sent (a message count alone let 1024 messages of 8192 entries each wait, 800 MiB).
const WRITER_ENTRIES: usize = 2 * MAX_ENTRIES;
/// Bytes of blocks a writer puts in one message.
const BATCH_BYTES: usize = 2 << 20;
/// Peers whose addresses are remembered for the IPFS DHT.
const PEER_ADDRESSES: usize = 1024;
/// Bytes of messages read from all peers and not yet handled, at most: a reader waits for
/// room before it allocates a message.
const READ_BUDGET: usize = 64 << 20;
/// Bytes of [`READ_BUDGET`] one peer's streams may hold at once: two of the largest
/// messages. A peer that sends length prefixes and then nothing holds only this much, not the
/// node's whole budget, until [`FRAME_TIMEOUT`] ends its streams. A message's budget is taken
/// whole before its bytes are read, not as they come: budgets taken a piece at a time by many
/// messages at once could run out with none of them whole, and all would wait for the
/// timeout.
const PEER_READ_BUDGET: usize = 2 * MAX_MESSAGE;
/// Bytes of [`READ_BUDGET`] the peers of one network ([`dkvs_net::Network`]: a /24, a /48,
/// a relay's) may hold at once, a quarter of it: peer ids cost nothing to make, so it takes
/// four networks, not eight ids, to hold the whole budget. Peers on this machine and the local
/// network have only their own shares.
const NETWORK_READ_BUDGET: usize = READ_BUDGET / 4;
/// How long the bytes of one message may take to arrive once its length was read.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a peer asked for a block may take before another that has it is asked too.
const HEDGE_AFTER: Duration = Duration::from_secs(3);
/// How long writing one message may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A writer's stream with nothing written for this long is closed: an open stream holds its
/// connection open (libp2p counts it as use), and the peer's reader ends with it. Shorter than
/// the idle timeout of every profile, so that a connection bitswap no longer uses can close.
/// (A download keeps its providers' connections by its own wants, one at least every
/// [`BLOCK_TIMEOUT`]: under an idle timeout shorter than that, a slow block can lose its
/// connection and is asked of the next provider.)
const STREAM_QUIET: Duration = Duration::from_secs(10);

/// Per peer, and per network: inbound streams open (bounded per peer), and the share of the
/// read budget ([`PEER_READ_BUDGET`], [`NETWORK_READ_BUDGET`]).
#[derive(Default)]
struct Shares {
    peers: HashMap<PeerId, (usize, Arc<Semaphore>)>,
    networks: HashMap<Network, (usize, Arc<Semaphore>)>,
}

type OpenStreams = Arc<Mutex<Shares>>;

impl Shares {
    /// Takes a stream of `peer`'s from `network`: the shares of the budget its messages take
    /// from, or `None` when the peer has [`STREAMS_PER_PEER`] open.
    fn open(&mut self, peer: PeerId, network: Option<Network>) -> Option<Vec<Arc<Semaphore>>> {
        let (n, share) = self
            .peers
            .entry(peer)
            .or_insert_with(|| (0, Arc::new(Semaphore::new(PEER_READ_BUDGET))));
        if *n >= STREAMS_PER_PEER {
            return None;
        }
        *n += 1;
        let mut shares = vec![share.clone()];
        if let Some(network) = network {
            let (n, share) = self
                .networks
                .entry(network)
                .or_insert_with(|| (0, Arc::new(Semaphore::new(NETWORK_READ_BUDGET))));
            *n += 1;
            shares.push(share.clone());
        }
        Some(shares)
    }

    /// A stream [`Shares::open`] took has ended.
    fn close(&mut self, peer: PeerId, network: Option<Network>) {
        fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, (usize, Arc<Semaphore>)>, key: K) {
            if let Some((n, _)) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
        release(&mut self.peers, peer);
        if let Some(network) = network {
            release(&mut self.networks, network);
        }
    }
}

/// The protocol as libp2p names it.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new(bitswap::PROTOCOL);

/// A block a fetch asked for, and the peer that gave it.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Who sent it.
    pub peer: PeerId,
    /// Its bytes (checked against its CID).
    pub data: Arc<[u8]>,
}

/// What the exchange's tasks and its peers' connections report to it.
#[derive(Debug)]
pub enum ExchangeEvent {
    /// A message read from a peer (or why it could not be read).
    Frame {
        /// The sender.
        peer: PeerId,
        /// Its size on the wire.
        len: usize,
        /// The message, decoded and checked.
        message: Result<Message, WireError>,
        /// Its part of the peer's share and of the node's budget for messages read and not
        /// yet handled.
        held: Vec<tokio::sync::OwnedSemaphorePermit>,
    },
    /// The peer does not speak bitswap: a connection of it refused a stream (reported in
    /// order with [`ExchangeEvent::Connected`] and [`ExchangeEvent::Disconnected`]).
    Unsupported(PeerId),
    /// A connection to the peer opened.
    Connected(PeerId),
    /// The last connection to the peer closed.
    Disconnected(PeerId),
    /// Time to look at slow wants.
    Tick,
}

/// What the exchange queues for one peer's writer.
#[derive(Default)]
struct Outgoing {
    message: Message,
    /// Blocks to load from the store and send (a "don't have" if one is gone meanwhile).
    blocks: Vec<Cid>,
}

impl Outgoing {
    /// Its entries, as [`WRITER_ENTRIES`] counts them.
    fn entries(&self) -> usize {
        let m = &self.message;
        m.wants.len() + m.presences.len() + m.blocks.len() + self.blocks.len()
    }
}

/// A peer's writer: its queue, and what it shares with its task.
struct Writer {
    queue: mpsc::Sender<Outgoing>,
    state: Arc<WriterState>,
}

/// What the exchange and a writer's task share.
#[derive(Default)]
struct WriterState {
    /// Entries in the queue and in the batch being written ([`WRITER_ENTRIES`]).
    entries: AtomicUsize,
    /// Blocks queued and not loaded yet: a block asked for again meanwhile is sent once.
    blocks: Mutex<HashSet<Cid>>,
    /// Set when the peer left or does not speak bitswap: the task drops what it still holds
    /// (it would load every block queued only to find no stream).
    closed: std::sync::atomic::AtomicBool,
}

impl WriterState {
    fn blocks(&self) -> std::sync::MutexGuard<'_, HashSet<Cid>> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

struct Wanting {
    waiters: Vec<oneshot::Sender<Fetched>>,
    /// Peers asked (have or block).
    asked: HashSet<PeerId>,
    /// Peers that said they have it, in the order they said so.
    haves: VecDeque<PeerId>,
    /// The peer asked for the block, since when.
    block_from: Option<(PeerId, Instant)>,
    /// Whether a second peer was asked because the first was slow.
    hedged: bool,
}

/// How many of [`Exchange::connect`]'s dials are remembered with their outcome.
const OWN_DIALS: usize = 64;

/// The bitswap state of a node (see the module docs).
pub struct Exchange {
    store: BlockStore,
    inbound: mpsc::Receiver<ExchangeEvent>,
    inbound_tx: mpsc::Sender<ExchangeEvent>,
    /// Writers asking for an outbound stream to a peer.
    stream_asks: mpsc::Receiver<StreamAsk>,
    stream_asks_tx: mpsc::Sender<StreamAsk>,
    /// Outbound streams being opened: by number, the connection and who waits.
    opening: HashMap<u64, (ConnectionId, oneshot::Sender<Result<Stream, bool>>)>,
    next_open: u64,
    /// Open connections, per peer.
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    notify: VecDeque<(PeerId, ConnectionId, HandlerIn)>,
    /// Per peer and per network: inbound streams open, and their shares of the read budget.
    open_streams: OpenStreams,
    /// The network of each connection from outside this machine and the local network.
    networks: HashMap<ConnectionId, Network>,
    /// Bytes of messages read from peers and not handled yet, at most [`READ_BUDGET`].
    read_budget: Arc<Semaphore>,
    writers: HashMap<PeerId, Writer>,
    connected: HashSet<PeerId>,
    no_bitswap: HashSet<PeerId>,
    wants: HashMap<Cid, Wanting>,
    their_wants: HashMap<PeerId, HashMap<Cid, (WantType, bool)>>,
    /// Messages built while handling one event, sent when it is handled.
    outbox: HashMap<PeerId, Outgoing>,
    events: VecDeque<ExchangeEvent>,
    dials: VecDeque<DialOpts>,
    /// The last [`OWN_DIALS`] dials of [`Exchange::connect`], and how each ended (`None`
    /// while under way).
    own_dials: VecDeque<(ConnectionId, Option<Result<(), String>>)>,
    /// Peers to dial by id (providers found on the IPFS DHT; it knows their addresses).
    peer_dials: VecDeque<PeerId>,
    /// Listen addresses peers told through identify (bounded), for the IPFS DHT, which does
    /// not hear identify itself.
    pub(crate) addresses: HashMap<PeerId, Vec<Multiaddr>>,
    /// Keys of other peers' provider records kept by the IPFS DHT (bounded in service.rs).
    pub(crate) remote_provider_keys: HashSet<dkvs_net::libp2p::kad::RecordKey>,
    /// Whether the pinned roots were provided since the node started (on the first peer).
    pub(crate) pins_provided: bool,
    /// Provider lookups on the IPFS DHT under way: the peers found so far, who waits.
    pub(crate) lookups:
        HashMap<dkvs_net::libp2p::kad::QueryId, (HashSet<PeerId>, oneshot::Sender<Vec<PeerId>>)>,
    tick: Option<tokio::time::Interval>,
    /// Messages dropped: refused by the admission, frames that did not decode, unsolicited
    /// blocks, full queues.
    pub(crate) dropped: u64,
}

impl Exchange {
    /// The exchange of a node whose blocks are in `store`; it accepts bitswap streams through
    /// `control`. Must be called within a tokio runtime.
    pub(crate) fn new(store: BlockStore) -> Exchange {
        let (inbound_tx, inbound) = mpsc::channel(64);
        let (stream_asks_tx, stream_asks) = mpsc::channel(64);
        Exchange {
            store,
            inbound,
            inbound_tx,
            stream_asks,
            stream_asks_tx,
            opening: HashMap::new(),
            next_open: 0,
            connections: HashMap::new(),
            notify: VecDeque::new(),
            open_streams: Arc::default(),
            networks: HashMap::new(),
            read_budget: Arc::new(Semaphore::new(READ_BUDGET)),
            writers: HashMap::new(),
            connected: HashSet::new(),
            no_bitswap: HashSet::new(),
            wants: HashMap::new(),
            their_wants: HashMap::new(),
            outbox: HashMap::new(),
            events: VecDeque::new(),
            dials: VecDeque::new(),
            own_dials: VecDeque::new(),
            peer_dials: VecDeque::new(),
            addresses: HashMap::new(),
            lookups: HashMap::new(),
            remote_provider_keys: HashSet::new(),
            pins_provided: false,
            tick: None,
            dropped: 0,
        }
    }

    /// The block store.
    pub fn store(&self) -> &BlockStore {
        &self.store
    }

    /// Connected peers that speak bitswap (as far as known).
    pub fn peers(&self) -> Vec<PeerId> {
        self.connected.iter().filter(|p| !self.no_bitswap.contains(p)).copied().collect()
    }

    /// Dials `addr` (as `ipfs swarm connect`). Not through dkvs's own routing table: an IPFS
    /// peer is not a dkvs replica.
    /// Returns the dial's connection, to ask [`Exchange::dial_outcome`] about.
    pub fn connect(&mut self, addr: Multiaddr) -> ConnectionId {
        let opts = DialOpts::from(addr);
        let id = opts.connection_id();
        self.dials.push_back(opts);
        if self.own_dials.len() >= OWN_DIALS {
            self.own_dials.pop_front();
        }
        self.own_dials.push_back((id, None));
        id
    }

    /// How a dial of [`Exchange::connect`] ended: `None` while it is under way (or long
    /// forgotten), the error's words if it failed.
    pub fn dial_outcome(&self, dial: ConnectionId) -> Option<Result<(), String>> {
        self.own_dials.iter().find(|(id, _)| *id == dial).and_then(|(_, outcome)| outcome.clone())
    }

    fn dial_ended(&mut self, dial: ConnectionId, outcome: Result<(), String>) {
        if let Some((_, ended)) = self.own_dials.iter_mut().find(|(id, _)| *id == dial) {
            *ended = Some(outcome);
        }
    }

    /// Blocks this node is fetching for a reader that still waits (a reader that went away
    /// stops counting at once; its want is withdrawn from peers within a second).
    pub fn fetching(&self) -> usize {
        self.wants.values().filter(|w| w.waiters.iter().any(|tx| !tx.is_closed())).count()
    }

    /// Peers whose wantlists this node remembers (to serve blocks it gets later): those with
    /// a want it could not answer yet (a peer whose every want was answered has an empty one).
    pub fn wantlists(&self) -> usize {
        self.their_wants.values().filter(|wants| !wants.is_empty()).count()
    }

    /// Dials `peer` (a provider) if not connected.
    pub(crate) fn dial_peer(&mut self, peer: PeerId) {
        if !self.connected.contains(&peer) {
            self.peer_dials.push_back(peer);
        }
    }

    /// Wants `cid`: the block comes on `tx`. `prefer` is a peer to ask for the block at once
    /// (one that gave blocks of the same file).
    pub fn want(&mut self, cid: Cid, prefer: Option<PeerId>, tx: oneshot::Sender<Fetched>) {
        self.want_later(cid, prefer, tx);
        self.flush();
    }

    /// Wants each of `wants` as [`Exchange::want`] does, all in one message to each peer: a
    /// peer admits so many messages a second from another (the node's admission step), and
    /// a message each for small blocks goes past it.
    pub fn want_all(
        &mut self,
        wants: Vec<(Cid, oneshot::Sender<Fetched>)>,
        prefer: Option<PeerId>,
    ) {
        for (cid, tx) in wants {
            self.want_later(cid, prefer, tx);
        }
        self.flush();
    }

    /// [`Exchange::want`], queued for the next flush.
    fn want_later(&mut self, cid: Cid, prefer: Option<PeerId>, tx: oneshot::Sender<Fetched>) {
        if let Some(wanting) = self.wants.get_mut(&cid) {
            wanting.waiters.push(tx);
            return;
        }
        let mut wanting = Wanting {
            waiters: vec![tx],
            asked: HashSet::new(),
            haves: VecDeque::new(),
            block_from: None,
            hedged: false,
        };
        for peer in self.peers() {
            let want_type = if Some(peer) == prefer {
                wanting.block_from = Some((peer, Instant::now()));
                WantType::Block
            } else {
                WantType::Have
            };
            wanting.asked.insert(peer);
            self.queue(peer, |m| m.wants.push(Want::new(cid, want_type)));
        }
        self.wants.insert(cid, wanting);
        self.tick.get_or_insert_with(|| tokio::time::interval(Duration::from_secs(1)));
    }

    /// Blocks now kept here that peers asked for earlier: served to them.
    pub fn announce(&mut self, cids: &[Cid]) {
        let mut serve: Vec<(PeerId, Cid, WantType)> = Vec::new();
        for (peer, wants) in &mut self.their_wants {
            for cid in cids {
                if let Some((want_type, _)) = wants.remove(cid) {
                    serve.push((*peer, *cid, want_type));
                }
            }
        }
        for (peer, cid, want_type) in serve {
            self.answer(peer, cid, want_type);
        }
        self.flush();
    }

    fn answer(&mut self, peer: PeerId, cid: Cid, want_type: WantType) {
        let small = self.store.size(&cid).is_some_and(|n| n <= SEND_SMALL_BLOCK as u64);
        if want_type == WantType::Block || small {
            self.outbox.entry(peer).or_default().blocks.push(cid);
        } else {
            self.queue(peer, |m| m.presences.push((cid, true)));
        }
    }

    fn queue(&mut self, peer: PeerId, add: impl FnOnce(&mut Message)) {
        add(&mut self.outbox.entry(peer).or_default().message);
    }

    fn flush(&mut self) {
        for (peer, outgoing) in std::mem::take(&mut self.outbox) {
            if outgoing.entries() > 0 {
                self.send(peer, outgoing);
            }
        }
    }

    fn send(&mut self, peer: PeerId, mut outgoing: Outgoing) {
        if !self.connected.contains(&peer) || self.no_bitswap.contains(&peer) {
            return;
        }
        let writer = self.writers.entry(peer).or_insert_with(|| {
            let (queue, rx) = mpsc::channel(WRITER_QUEUE);
            let state = Arc::new(WriterState::default());
            let task =
                writer(peer, self.stream_asks_tx.clone(), self.store.clone(), rx, state.clone());
            tokio::spawn(task);
            Writer { queue, state }
        });
        if !outgoing.blocks.is_empty() {
            let mut queued = writer.state.blocks();
            outgoing.blocks.retain(|cid| queued.insert(*cid));
        }
        let entries = outgoing.entries();
        if entries == 0 {
            return;
        }
        let before = writer.state.entries.fetch_add(entries, Ordering::Relaxed);
        let blocks = outgoing.blocks.clone();
        if before + entries > WRITER_ENTRIES || writer.queue.try_send(outgoing).is_err() {
            writer.state.entries.fetch_sub(entries, Ordering::Relaxed);
            let mut queued = writer.state.blocks();
            blocks.iter().for_each(|cid| {
                queued.remove(cid);
            });
            self.dropped += 1;
            tracing::debug!(%peer, "bitswap: the peer's queue is full; a message is dropped");
        }
    }

    /// Ends `peer`'s writer: it drops what it still holds.
    fn close_writer(&mut self, peer: &PeerId) {
        if let Some(writer) = self.writers.remove(peer) {
            writer.state.closed.store(true, Ordering::Relaxed);
        }
    }

    /// Entries queued for peers' writers, or in the batches they are writing, over all peers.
    pub(crate) fn queued(&self) -> usize {
        self.writers.values().map(|w| w.state.entries.load(Ordering::Relaxed)).sum()
    }

    /// Handles what the tasks and the swarm reported.
    pub(crate) fn on_event(&mut self, event: ExchangeEvent, host: &mut Host<'_>) {
        match event {
            ExchangeEvent::Frame { peer, len, message, held: _ } => match message {
                Ok(message) => self.on_message(peer, len, message, host),
                Err(e) => {
                    // A frame that does not decode, or did not come whole, is charged as any
                    // message is (bytes and rate, never a ban of its own: a real IPFS peer may
                    // send what this node does not parse), so that bytes that do not decode, or
                    // a frame cut short on purpose, cost no less than bytes that do. (A stream
                    // that broke between frames costs one byte.) Only those that came whole
                    // and did not decode, or came too slowly, count as dropped.
                    if self.connected.contains(&peer) {
                        let _ = host.admit(peer, len.max(1), MAX_MESSAGE);
                    }
                    let broke = matches!(&e, WireError::Io(io) if io.kind() != std::io::ErrorKind::TimedOut);
                    if !broke {
                        self.dropped += 1;
                    }
                    tracing::debug!(%peer, "bitswap: {e}");
                }
            },
            ExchangeEvent::Tick => self.on_tick(),
            peer_event => self.on_peer_event(peer_event),
        }
        self.flush();
    }

    /// A peer connected, left, or refused bitswap.
    fn on_peer_event(&mut self, event: ExchangeEvent) {
        match event {
            ExchangeEvent::Unsupported(peer) => {
                self.no_bitswap.insert(peer);
                self.close_writer(&peer);
                self.forget_peer(peer);
            }
            ExchangeEvent::Connected(peer) => {
                if self.connected.insert(peer) && !self.wants.is_empty() {
                    let cids: Vec<Cid> = self.wants.keys().copied().collect();
                    for cid in cids {
                        self.ask_have(cid, &[peer], true);
                    }
                }
            }
            ExchangeEvent::Disconnected(peer) => {
                self.connected.remove(&peer);
                self.no_bitswap.remove(&peer);
                self.close_writer(&peer);
                self.forget_peer(peer);
            }
            ExchangeEvent::Frame { .. } | ExchangeEvent::Tick => {}
        }
    }

    fn on_message(&mut self, peer: PeerId, len: usize, message: Message, host: &mut Host<'_>) {
        // A message read before its peer left, handled after: nothing of it is kept.
        if !self.connected.contains(&peer) {
            return;
        }
        // Blocks this node asked for are not charged, once each; everything else is.
        let solicited = solicited(&message.blocks, |cid| self.wants.contains_key(cid));
        if let Err(e) = host.admit(peer, len.saturating_sub(solicited).max(1), MAX_MESSAGE) {
            tracing::debug!(%peer, "bitswap: message refused: {e}");
            self.dropped += 1;
            return;
        }
        if message.full {
            self.their_wants.remove(&peer);
        }
        for want in first_of_each(message.wants) {
            self.on_want(peer, want);
        }
        for (cid, data) in message.blocks {
            let Some(wanting) = self.wants.remove(&cid) else {
                self.dropped += 1;
                continue;
            };
            let data: Arc<[u8]> = Arc::from(data);
            for tx in wanting.waiters {
                let _ = tx.send(Fetched { peer, data: data.clone() });
            }
            let others = wanting.asked.into_iter().chain(wanting.block_from.map(|(p, _)| p));
            for other in others.filter(|p| *p != peer).collect::<HashSet<_>>() {
                self.queue(other, |m| m.wants.push(Want::cancel(cid)));
            }
        }
        for (cid, have) in message.presences {
            let Some(wanting) = self.wants.get_mut(&cid) else { continue };
            if have {
                if !wanting.haves.contains(&peer) {
                    wanting.haves.push_back(peer);
                }
            } else {
                wanting.haves.retain(|p| *p != peer);
                if wanting.block_from.is_some_and(|(p, _)| p == peer) {
                    wanting.block_from = None;
                }
            }
            self.ask_next(cid);
        }
    }

    fn on_want(&mut self, peer: PeerId, want: Want) {
        let wants = self.their_wants.entry(peer).or_default();
        if want.cancel || self.store.has(&want.cid) {
            wants.remove(&want.cid);
            if !want.cancel {
                self.answer(peer, want.cid, want.want_type);
            }
            return;
        }
        if wants.len() < PEER_WANTS || wants.contains_key(&want.cid) {
            wants.insert(want.cid, (want.want_type, want.send_dont_have));
        }
        if want.send_dont_have {
            self.queue(peer, |m| m.presences.push((want.cid, false)));
        }
    }

    /// Asks `peers` whether they have `cid`: those not asked yet, or all of them `again`.
    fn ask_have(&mut self, cid: Cid, peers: &[PeerId], again: bool) {
        let Some(wanting) = self.wants.get_mut(&cid) else { return };
        for peer in peers {
            if wanting.asked.insert(*peer) || again {
                self.outbox
                    .entry(*peer)
                    .or_default()
                    .message
                    .wants
                    .push(Want::new(cid, WantType::Have));
            }
        }
    }

    /// Asks the first peer that has `cid` for the block, unless one was asked already.
    fn ask_next(&mut self, cid: Cid) {
        let Some(wanting) = self.wants.get_mut(&cid) else { return };
        if wanting.block_from.is_some() {
            return;
        }
        if let Some(peer) = wanting.haves.pop_front() {
            wanting.block_from = Some((peer, Instant::now()));
            wanting.hedged = false;
            wanting.asked.insert(peer);
            self.queue(peer, |m| m.wants.push(Want::new(cid, WantType::Block)));
        }
    }

    fn forget_peer(&mut self, peer: PeerId) {
        self.their_wants.remove(&peer);
        let mut retry = Vec::new();
        for (cid, wanting) in &mut self.wants {
            wanting.asked.remove(&peer);
            wanting.haves.retain(|p| *p != peer);
            if wanting.block_from.is_some_and(|(p, _)| p == peer) {
                wanting.block_from = None;
                retry.push(*cid);
            }
        }
        for cid in retry {
            self.ask_next(cid);
        }
    }

    fn on_tick(&mut self) {
        // Wants nobody waits for any more are withdrawn.
        let gone: Vec<Cid> = self
            .wants
            .iter_mut()
            .filter_map(|(cid, w)| {
                w.waiters.retain(|tx| !tx.is_closed());
                w.waiters.is_empty().then_some(*cid)
            })
            .collect();
        for cid in gone {
            if let Some(wanting) = self.wants.remove(&cid) {
                let asked = wanting.asked.into_iter().chain(wanting.block_from.map(|(p, _)| p));
                for peer in asked.collect::<HashSet<_>>() {
                    self.queue(peer, |m| m.wants.push(Want::cancel(cid)));
                }
            }
        }
        // A peer slow to send a block: after HEDGE_AFTER, the next that has it is asked too
        // (or, if none said so, every connected peer not asked yet).
        let now = Instant::now();
        let slow: Vec<Cid> = self
            .wants
            .iter()
            .filter(|(_, w)| !w.hedged && w.block_from.is_some_and(|(_, t)| now - t > HEDGE_AFTER))
            .map(|(cid, _)| *cid)
            .collect();
        let peers = self.peers();
        for cid in slow {
            let Some(wanting) = self.wants.get_mut(&cid) else { continue };
            wanting.hedged = true;
            if let Some(peer) = wanting.haves.pop_front() {
                wanting.asked.insert(peer);
                self.outbox
                    .entry(peer)
                    .or_default()
                    .message
                    .wants
                    .push(Want::new(cid, WantType::Block));
            } else {
                self.ask_have(cid, &peers, false);
            }
        }
        // A peer that does not send a block at all is passed over; if nobody else has it,
        // everyone connected is asked again.
        let slow: Vec<Cid> = self
            .wants
            .iter()
            .filter(|(_, w)| w.block_from.is_some_and(|(_, t)| now - t > BLOCK_TIMEOUT))
            .map(|(cid, _)| *cid)
            .collect();
        for cid in slow {
            let Some(wanting) = self.wants.get_mut(&cid) else { continue };
            wanting.block_from = None;
            if wanting.haves.is_empty() {
                self.ask_have(cid, &peers, true);
            }
            self.ask_next(cid);
        }
        if self.wants.is_empty() {
            self.tick = None;
        }
    }
}

/// The bytes of `blocks` that this node asked for (`wanted`), each CID counted once: a peer
/// that sends a wanted block twice is charged for the second copy.
fn solicited(blocks: &[(Cid, Vec<u8>)], wanted: impl Fn(&Cid) -> bool) -> usize {
    let mut counted = HashSet::new();
    blocks
        .iter()
        .filter(|(cid, _)| wanted(cid) && counted.insert(*cid))
        .map(|(_, data)| data.len())
        .sum()
}

/// The first entry of `wants` for each CID: a CID named again in the same message is not
/// answered again (a don't-have each, thousands in one message).
fn first_of_each(wants: Vec<Want>) -> Vec<Want> {
    let mut named = HashSet::new();
    wants.into_iter().filter(|want| named.insert(want.cid)).collect()
}

/// Starts a reader for an inbound stream from `peer` on a connection from `network`, unless
/// the peer has [`STREAMS_PER_PEER`] open.
fn accept(
    peer: PeerId,
    network: Option<Network>,
    stream: Stream,
    open: &OpenStreams,
    tx: &mpsc::Sender<ExchangeEvent>,
    budget: &Arc<Semaphore>,
) {
    let shares = open.lock().unwrap_or_else(|p| p.into_inner()).open(peer, network);
    let Some(mut shares) = shares else {
        tracing::debug!(%peer, "bitswap: too many streams from one peer; one refused");
        return;
    };
    shares.push(budget.clone());
    let (tx, open) = (tx.clone(), open.clone());
    tokio::spawn(async move {
        read_stream(peer, stream, tx, shares).await;
        open.lock().unwrap_or_else(|p| p.into_inner()).close(peer, network);
    });
}

/// Reads one peer's stream to its end: each frame decoded (and its blocks hashed) here, off
/// the node's task. A malformed frame ends the stream.
async fn read_stream(
    peer: PeerId,
    mut stream: Stream,
    tx: mpsc::Sender<ExchangeEvent>,
    budgets: Vec<Arc<Semaphore>>,
) {
    loop {
        // A stream may idle between messages (Kubo keeps one open), but a message once begun
        // must arrive in time, and its bytes are held against the node's budget until the
        // exchange has handled it.
        let len = match bitswap::read_len(&mut stream).await {
            Ok(Some(len)) => len,
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(frame_error(peer, e)).await;
                return;
            }
        };
        // The peer's share first, then its network's, then the node's: a peer that stalls
        // waits on its own share, and holds at most that much of the others.
        let permits = u32::try_from(len.max(1)).unwrap_or(u32::MAX);
        let mut held = Vec::with_capacity(budgets.len());
        for budget in &budgets {
            let Ok(permit) = budget.clone().acquire_many_owned(permits).await else { return };
            held.push(permit);
        }
        let body = tokio::time::timeout(FRAME_TIMEOUT, bitswap::read_body(&mut stream, len)).await;
        let message = match body {
            Ok(Ok(frame)) => Message::decode(&frame),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(WireError::Io(std::io::ErrorKind::TimedOut.into())),
        };
        let failed = message.is_err();
        let event = ExchangeEvent::Frame { peer, len, message, held };
        if tx.send(event).await.is_err() || failed {
            return;
        }
    }
}

fn frame_error(peer: PeerId, e: WireError) -> ExchangeEvent {
    ExchangeEvent::Frame { peer, len: 0, message: Err(e), held: Vec::new() }
}

/// Writes what the exchange queued for `peer` on one stream (reopened once if it broke, closed
/// after [`STREAM_QUIET`] with nothing to write), batching queued messages and loading served
/// blocks from the store.
async fn writer(
    peer: PeerId,
    asks: mpsc::Sender<StreamAsk>,
    store: BlockStore,
    mut rx: mpsc::Receiver<Outgoing>,
    state: Arc<WriterState>,
) {
    let mut stream: Option<Stream> = None;
    loop {
        let first = if stream.is_some() {
            match tokio::time::timeout(STREAM_QUIET, rx.recv()).await {
                Ok(first) => first,
                Err(_) => {
                    // Nothing to say for a while: the stream is closed, so that it no longer
                    // holds the connection open (the next message opens another).
                    if let Some(mut quiet) = stream.take() {
                        let _ = tokio::time::timeout(WRITE_TIMEOUT, quiet.close()).await;
                    }
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some(first) = first else { break };
        if state.is_closed() {
            break;
        }
        let mut message = Message::default();
        // The blocks in `message` (a set: a batch may hold thousands of small ones).
        let mut in_batch = HashSet::new();
        let mut bytes = 0;
        // Counted out of the queue once written: a batch waiting on a peer that does not read
        // holds its entries too.
        let mut taken = 0;
        let mut next = Some(first);
        while let Some(outgoing) = next.take() {
            taken += outgoing.entries();
            let Outgoing { message: m, blocks: cids } = outgoing;
            message.wants.extend(m.wants);
            message.presences.extend(m.presences);
            bytes += m.blocks.iter().map(|(_, d)| d.len()).sum::<usize>();
            in_batch.extend(m.blocks.iter().map(|(cid, _)| *cid));
            message.blocks.extend(m.blocks);
            for cid in cids {
                if state.is_closed() {
                    return;
                }
                state.blocks().remove(&cid);
                // Asked for again while this batch was made (after it was taken off the
                // queue): the answer in the batch is that one, not a second copy.
                if in_batch.contains(&cid) {
                    taken -= 1;
                    state.entries.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                // A peer may want thousands of blocks in one message: at most a batch of them
                // is loaded at a time.
                if bytes >= BATCH_BYTES {
                    let batch = std::mem::take(&mut message);
                    in_batch.clear();
                    if !write_batch(peer, batch, &mut stream, &asks).await {
                        return;
                    }
                    bytes = 0;
                }
                let store = store.clone();
                let block = tokio::task::spawn_blocking(move || store.get(&cid))
                    .await
                    .ok()
                    .and_then(|r| r.ok().flatten());
                match block {
                    Some(data) => {
                        bytes += data.len();
                        in_batch.insert(cid);
                        message.blocks.push((cid, data.to_vec()));
                    }
                    None => message.presences.push((cid, false)),
                }
            }
            if bytes < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if !write_batch(peer, message, &mut stream, &asks).await {
            return;
        }
        state.entries.fetch_sub(taken, Ordering::Relaxed);
    }
    if let Some(mut s) = stream {
        let _ = s.close().await;
    }
}

/// Writes `message` in frames of at most half [`MAX_ENTRIES`] entries and [`BATCH_BYTES`] of
/// blocks (each frame as [`write`] does). False when the peer does not speak bitswap.
async fn write_batch(
    peer: PeerId,
    message: Message,
    stream: &mut Option<Stream>,
    asks: &mpsc::Sender<StreamAsk>,
) -> bool {
    for frame in message.split(MAX_ENTRIES / 2, BATCH_BYTES) {
        if !write(peer, &frame.encode(), stream, asks).await {
            return false;
        }
    }
    true
}

/// Writes one frame on the peer's stream, opening it (again) if needed. False when the peer
/// does not speak bitswap (the writer ends).
async fn write(
    peer: PeerId,
    frame: &[u8],
    stream: &mut Option<Stream>,
    asks: &mpsc::Sender<StreamAsk>,
) -> bool {
    for _ in 0..2 {
        if stream.is_none() {
            let (tx, rx) = oneshot::channel();
            if asks.send((peer, tx)).await.is_err() {
                return false;
            }
            match tokio::time::timeout(WRITE_TIMEOUT, rx).await {
                Ok(Ok(Ok(s))) => *stream = Some(s),
                // The exchange heard it from the connection and ends this writer.
                Ok(Ok(Err(true))) => return false,
                _ => {
                    tracing::debug!(%peer, "bitswap: no stream to the peer");
                    break;
                }
            }
        }
        let Some(s) = stream.as_mut() else { break };
        match tokio::time::timeout(WRITE_TIMEOUT, bitswap::write_frame(s, frame)).await {
            Ok(Ok(())) => break,
            _ => *stream = None,
        }
    }
    true
}

impl NetworkBehaviour for Exchange {
    type ConnectionHandler = Handler;
    type ToSwarm = ExchangeEvent;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::default())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: dkvs_net::libp2p::core::Endpoint,
        _: dkvs_net::libp2p::core::transport::PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::default())
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::DialFailure(e) => {
                self.dial_ended(e.connection_id, Err(dkvs_net::dial_failure(e.error)))
            }
            FromSwarm::ConnectionEstablished(e) => {
                self.dial_ended(e.connection_id, Ok(()));
                self.connections.entry(e.peer_id).or_default().push(e.connection_id);
                if let Some(network) = Network::of_connection(e.endpoint) {
                    self.networks.insert(e.connection_id, network);
                }
                if e.other_established == 0 {
                    self.events.push_back(ExchangeEvent::Connected(e.peer_id));
                }
            }
            FromSwarm::ConnectionClosed(e) => {
                self.networks.remove(&e.connection_id);
                if let Some(list) = self.connections.get_mut(&e.peer_id) {
                    list.retain(|c| *c != e.connection_id);
                    if list.is_empty() {
                        self.connections.remove(&e.peer_id);
                    }
                }
                // Streams being opened on it will not be: their writers hear so.
                self.opening.retain(|_, (conn, _)| *conn != e.connection_id);
                if e.remaining_established == 0 {
                    self.addresses.remove(&e.peer_id);
                    self.events.push_back(ExchangeEvent::Disconnected(e.peer_id));
                }
            }
            FromSwarm::NewExternalAddrOfPeer(e)
                if self.connected.contains(&e.peer_id)
                    && (self.addresses.len() < PEER_ADDRESSES
                        || self.addresses.contains_key(&e.peer_id)) =>
            {
                let known = self.addresses.entry(e.peer_id).or_default();
                if known.len() < 8 && !known.contains(e.addr) {
                    known.push(e.addr.clone());
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            HandlerOut::Inbound(stream) => {
                let network = self.networks.get(&connection).copied();
                let (open, tx) = (&self.open_streams, &self.inbound_tx);
                accept(peer, network, stream, open, tx, &self.read_budget);
            }
            HandlerOut::Opened(id, stream) => {
                if let Some((_, tx)) = self.opening.remove(&id) {
                    let _ = tx.send(Ok(stream));
                }
            }
            HandlerOut::Failed(id, unsupported) => {
                if let Some((_, tx)) = self.opening.remove(&id) {
                    // Reported here, in order with the peer's connections: a report from the
                    // writer came through another queue and could be handled after the peer
                    // left and came back, marking the peer that came back (it may speak
                    // bitswap now) and ending its new writer.
                    if unsupported {
                        self.events.push_back(ExchangeEvent::Unsupported(peer));
                    }
                    let _ = tx.send(Err(unsupported));
                }
            }
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<ExchangeEvent, THandlerInEvent<Self>>> {
        while let Poll::Ready(Some((peer, tx))) = self.stream_asks.poll_recv(cx) {
            // Any open connection of the peer; none: the writer hears it failed.
            if let Some(&conn) = self.connections.get(&peer).and_then(|c| c.last()) {
                let id = self.next_open;
                self.next_open += 1;
                self.opening.insert(id, (conn, tx));
                self.notify.push_back((peer, conn, HandlerIn::Open(id)));
            }
        }
        if let Some((peer_id, conn, event)) = self.notify.pop_front() {
            return Poll::Ready(ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::One(conn),
                event,
            });
        }
        if let Some(opts) = self.dials.pop_front() {
            return Poll::Ready(ToSwarm::Dial { opts });
        }
        if let Some(peer) = self.peer_dials.pop_front() {
            let opts = DialOpts::peer_id(peer).condition(PeerCondition::DisconnectedAndNotDialing);
            return Poll::Ready(ToSwarm::Dial { opts: opts.build() });
        }
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ToSwarm::GenerateEvent(event));
        }
        if let Poll::Ready(Some(event)) = self.inbound.poll_recv(cx) {
            return Poll::Ready(ToSwarm::GenerateEvent(event));
        }
        if let Some(tick) = self.tick.as_mut()
            && tick.poll_tick(cx).is_ready()
        {
            return Poll::Ready(ToSwarm::GenerateEvent(ExchangeEvent::Tick));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wanted_block_is_free_once_and_a_cid_named_twice_is_answered_once() {
        let (a, b) = (crate::cid_of(0x55, b"a"), crate::cid_of(0x55, b"b"));
        let blocks = vec![(a, b"a".repeat(100)), (a, b"a".repeat(100)), (b, b"b".repeat(7))];
        assert_eq!(solicited(&blocks, |cid| *cid == a), 100, "the second copy is charged");
        assert_eq!(solicited(&blocks, |_| true), 107);
        assert_eq!(solicited(&blocks, |_| false), 0);
        let wants = vec![
            Want::new(a, WantType::Have),
            Want::new(a, WantType::Block),
            Want::new(b, WantType::Have),
            Want::new(a, WantType::Have),
        ];
        let once = first_of_each(wants);
        let named: Vec<(Cid, WantType)> = once.iter().map(|w| (w.cid, w.want_type)).collect();
        assert_eq!(named, [(a, WantType::Have), (b, WantType::Have)]);
    }

    #[test]
    fn peers_of_one_network_share_a_quarter_of_the_budget_and_local_peers_their_own() {
        let mut shares = Shares::default();
        let net = |addr: &str| Network::of(&addr.parse().expect("a multiaddr"));
        let (here, there) = (net("/ip4/203.0.113.7/tcp/4001"), net("/ip4/203.0.113.99/tcp/1"));
        assert!(here.is_some() && here == there, "one /24");
        assert_eq!(net("/ip4/127.0.0.1/tcp/4001"), None, "this machine is not grouped");
        let (a, b) = (PeerId::random(), PeerId::random());
        let of_a = shares.open(a, here).expect("room");
        let of_b = shares.open(b, there).expect("room");
        assert_eq!(of_a.len(), 2);
        assert!(!Arc::ptr_eq(&of_a[0], &of_b[0]), "each peer its own share");
        assert!(Arc::ptr_eq(&of_a[1], &of_b[1]), "one network, one share");
        assert_eq!(of_a[1].available_permits(), NETWORK_READ_BUDGET);
        let local = shares.open(PeerId::random(), None).expect("room");
        assert_eq!(local.len(), 1, "a local peer: its own share only");
        // A peer's streams are bounded; the shares go with the last stream.
        for _ in 1..STREAMS_PER_PEER {
            assert!(shares.open(a, here).is_some());
        }
        assert!(shares.open(a, here).is_none(), "over STREAMS_PER_PEER");
        for _ in 0..STREAMS_PER_PEER {
            shares.close(a, here);
        }
        assert!(!shares.peers.contains_key(&a));
        assert_eq!(shares.networks.len(), 1, "b's stream still holds the network's share");
        shares.close(b, there);
        assert!(shares.networks.is_empty());
    }

    /// A block asked for again (twice) after the writer took its first answer off the queue,
    /// before that answer's batch was written: the batch holds it once, and the queue counts
    /// it once. (Before, the second copy of the megabyte filled the batch, which was written
    /// with the third answer still queued; and a third want was queued again behind it.)
    #[tokio::test]
    async fn a_block_asked_for_again_while_its_batch_is_made_is_in_it_once() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = BlockStore::open(dir.path(), Default::default()).expect("opens");
        let data = vec![7u8; 1 << 20];
        let cid = crate::cid_of(0x55, &data);
        store.put(&cid, &data).expect("kept");
        let (queue, rx) = mpsc::channel(8);
        let state = Arc::new(WriterState::default());
        for _ in 0..3 {
            let answer = Outgoing { blocks: vec![cid], ..Outgoing::default() };
            state.entries.fetch_add(answer.entries(), Ordering::Relaxed);
            assert!(queue.try_send(answer).is_ok(), "room in the queue");
        }
        let (asks, mut asked) = mpsc::channel(1);
        let task = tokio::spawn(writer(PeerId::random(), asks, store, rx, state.clone()));
        // The batch is made before its stream is asked for.
        let (_, stream) = asked.recv().await.expect("a stream is asked for");
        assert_eq!(state.entries.load(Ordering::Relaxed), 1, "one answer in the batch");
        let _ = stream.send(Err(true));
        task.await.expect("the writer ends");
    }

    /// A peer whose connection refused a writer's stream, and that left and came back before
    /// the exchange heard of it: the refusal comes before the peer left, so the peer that came
    /// back is not taken for one without bitswap (the writer reported it through another
    /// queue, handled after the peer came back, which marked it and ended its new writer).
    #[tokio::test]
    async fn a_refused_stream_is_reported_before_its_peer_leaves_and_comes_back() {
        use dkvs_net::libp2p::core::{ConnectedPoint, Endpoint, transport::PortUse};
        use dkvs_net::libp2p::swarm::behaviour::{ConnectionClosed, ConnectionEstablished};
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = BlockStore::open(dir.path(), Default::default()).expect("opens");
        let mut exchange = Exchange::new(store);
        let peer = PeerId::random();
        let endpoint = ConnectedPoint::Dialer {
            address: "/ip4/127.0.0.1/tcp/4001".parse().expect("a multiaddr"),
            role_override: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        };
        let established = |id: usize| {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id: peer,
                connection_id: ConnectionId::new_unchecked(id),
                endpoint: &endpoint,
                failed_addresses: &[],
                other_established: 0,
            })
        };
        // What the exchange tells the swarm: its events (handed back to it, as the node's
        // task does, and named), and the streams it asks to open.
        let drain = |exchange: &mut Exchange, events: &mut Vec<String>, opens: &mut Vec<u64>| {
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            while let Poll::Ready(event) = exchange.poll(&mut cx) {
                match event {
                    ToSwarm::GenerateEvent(event) => {
                        events.push(format!("{event:?}"));
                        exchange.on_peer_event(event);
                    }
                    ToSwarm::NotifyHandler { event: HandlerIn::Open(id), .. } => opens.push(id),
                    _ => {}
                }
            }
        };
        let (mut events, mut opens) = (Vec::new(), Vec::new());
        exchange.on_swarm_event(established(1));
        // A writer asks for a stream; the connection refuses it.
        let (tx, mut refused) = oneshot::channel();
        exchange.stream_asks_tx.try_send((peer, tx)).expect("room");
        drain(&mut exchange, &mut events, &mut opens);
        let [id] = opens[..] else { panic!("one stream asked for: {opens:?}") };
        let first = ConnectionId::new_unchecked(1);
        exchange.on_connection_handler_event(peer, first, HandlerOut::Failed(id, true));
        exchange.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id: peer,
            connection_id: first,
            endpoint: &endpoint,
            cause: None,
            remaining_established: 0,
        }));
        exchange.on_swarm_event(established(2));
        drain(&mut exchange, &mut events, &mut opens);
        assert!(matches!(refused.try_recv(), Ok(Err(true))), "the writer hears it was refused");
        let expected = ["Connected", "Unsupported", "Disconnected", "Connected"]
            .map(|kind| format!("{kind}({peer:?})"));
        assert_eq!(events, expected, "in the order they happened");
        assert_eq!(exchange.peers(), [peer], "the peer that came back may speak bitswap");
    }
}
