//! The mail extension a node hosts: it serves the mailbox protocol as a replica (its
//! [`Shelf`]) and carries this node's own requests to other replicas. The client side, the
//! part an application calls, is in [`crate::client`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use dkvs_net::libp2p::core::Endpoint;
use dkvs_net::libp2p::core::transport::PortUse;
use dkvs_net::libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use dkvs_net::libp2p::{Multiaddr, PeerId, identity, request_response};
use dkvs_net::{Extension, GossipMessage, Host, Network, Refused, Verdict};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::budget::PerMinute;
use crate::channel::Channels;
use crate::letter::Mailbox;
use crate::shelf::{Disk, Job, Shelf, ShelfConfig};
use crate::wire::{
    Codec, Custody, MAX_REQUEST, PROTOCOL, Refusal, Request, Response, WATCH_TTL_MS,
};

/// Peers one mailbox may have watching it on a replica (the account's nodes); a new one
/// replaces the one whose watch ends first.
const WATCHERS_PER_MAILBOX: usize = 4;
/// Mailboxes a replica keeps watches for.
const MAX_WATCHED: usize = 16_384;
/// Mailboxes one peer may watch on a replica (a node serves a few accounts).
const WATCHES_PER_PEER: usize = 64;
/// History requests one peer may make a minute (refilled evenly: one every 5 s), and the most
/// bytes one answer carries.
const HISTORY_ASKS_PER_MINUTE: u64 = 12;
const HISTORY_ANSWER_BYTES: usize = 256 << 10;

/// Bytes of envelopes one network of peers (one peer, when it is on this machine or the local
/// network) is handed by fetches a minute (refilled evenly): four times a mailbox's default
/// quota. A fetch request is small and its answer up to a megabyte, so without a bound an
/// account that filled its own mailbox would have replicas upload it over and over (a phone
/// on metered data among them); a reader of a full mailbox takes it at once.
const FETCH_BYTES_PER_MINUTE: u64 = 32 << 20;

/// Who a fetch's bytes are counted for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Reader {
    Network(Network),
    Peer(PeerId),
}

/// Keeps the entries of `list` that `keep` keeps, and the per-peer counts in step.
fn prune_watchers(
    list: &mut Vec<(PeerId, u64)>,
    counts: &mut WatchCounts,
    keep: impl Fn(&(PeerId, u64)) -> bool,
) {
    list.retain(|entry| {
        let kept = keep(entry);
        if !kept {
            counts.remove(&entry.0);
        }
        kept
    });
}

/// Watches one network of peers ([`Network`]: an IPv4 /24, an IPv6 /48, a relay's) may hold on
/// a replica once it holds half of all it keeps ([`MAX_WATCHED`]): sixteen peers' worth. Peer
/// ids cost nothing: without it, one host with 256 of them would take every watch a replica
/// keeps, and the watchers of every other mailbox would be refused (their mail still comes, at
/// each renewal's fetch, not at once). Below half, a network takes as many as it asks for
/// (phones behind one carrier's NAT share a network). Peers on this machine or the local
/// network are not grouped.
const WATCHES_PER_NETWORK: usize = 16 * WATCHES_PER_PEER;

/// How many watches each peer, and each network of peers, holds on this replica. A peer's
/// watches count in the network it first watched from, until it holds none.
#[derive(Default)]
struct WatchCounts {
    peers: HashMap<PeerId, (usize, Option<Network>)>,
    networks: HashMap<Network, usize>,
}

impl WatchCounts {
    fn of_peer(&self, peer: &PeerId) -> usize {
        self.peers.get(peer).map_or(0, |(n, _)| *n)
    }

    /// The watches of the network `peer` counts in (it watches from `network` if it holds
    /// none yet); 0 for none.
    fn of_network(&self, peer: &PeerId, network: Option<Network>) -> usize {
        let network = self.peers.get(peer).map_or(network, |(_, n)| *n);
        network.map_or(0, |n| self.networks.get(&n).copied().unwrap_or(0))
    }

    fn add(&mut self, peer: PeerId, network: Option<Network>) {
        let (count, network) = self.peers.entry(peer).or_insert((0, network));
        *count += 1;
        if let Some(network) = network {
            *self.networks.entry(*network).or_default() += 1;
        }
    }

    fn remove(&mut self, peer: &PeerId) {
        let Some((count, network)) = self.peers.get_mut(peer) else { return };
        *count -= 1;
        let network = *network;
        if *count == 0 {
            self.peers.remove(peer);
        }
        if let Some(network) = network
            && let Some(n) = self.networks.get_mut(&network)
        {
            *n -= 1;
            if *n == 0 {
                self.networks.remove(&network);
            }
        }
    }

    fn contains(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }
}

/// How often one replica notifies one watcher, at most: ten times a second, a twentieth of
/// what a peer admits (200 messages a second). The replica's other requests to that peer are
/// paced to nine tenths of it ([`dkvs_net::Node::turn`]), so however fast mail comes into
/// the mailboxes a peer watches, the replica stays within what the watcher admits and is
/// never taken for a flooder there. Mail that comes within the gap is told when it ends, one
/// mailbox a gap, oldest first (the watcher then fetches everything new): nothing goes
/// untold.
const NOTIFY_GAP: Duration = Duration::from_millis(100);

/// The watchers notified in the last [`NOTIFY_GAP`]: when, and the mailboxes with new mail
/// since, to tell when their gaps end; and the timer for the next gap to end.
#[derive(Default)]
struct Notices {
    watchers: HashMap<PeerId, (Instant, VecDeque<Mailbox>)>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Notices {
    /// New mail in `mailbox`, watched by `peer`: true to tell it now; false when it was told
    /// less than a gap ago or other news waits for it (it is told in turn,
    /// [`Notices::due`]).
    fn note(&mut self, mailbox: Mailbox, peer: PeerId, now: Instant) -> bool {
        match self.watchers.get_mut(&peer) {
            Some((at, waiting)) if now < *at + NOTIFY_GAP || !waiting.is_empty() => {
                // At most the mailboxes the peer watches: WATCHES_PER_PEER.
                if !waiting.contains(&mailbox) {
                    waiting.push_back(mailbox);
                }
                false
            }
            _ => {
                self.watchers.insert(peer, (now, VecDeque::new()));
                true
            }
        }
    }

    /// The notifications whose gap ended, one for each watcher with news waiting, to send
    /// now; forgets the watchers whose gap ended with none.
    fn due(&mut self, now: Instant) -> Vec<(Mailbox, PeerId)> {
        let mut due = Vec::new();
        self.watchers.retain(|peer, (at, waiting)| {
            if now < *at + NOTIFY_GAP {
                return true;
            }
            let Some(mailbox) = waiting.pop_front() else { return false };
            due.push((mailbox, *peer));
            *at = now;
            true
        });
        due
    }

    /// When [`Notices::due`] has something to do next.
    fn next(&self) -> Option<Instant> {
        self.watchers.values().map(|(at, _)| *at + NOTIFY_GAP).min()
    }

    /// The notifications due, when a gap ends with news waiting. The timer follows
    /// [`Notices::next`] on every poll, so news noted after a gap ended is told when its own
    /// gap ends, not on some later wake.
    fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<Vec<(Mailbox, PeerId)>> {
        loop {
            let Some(at) = self.next() else {
                self.timer = None;
                return Poll::Pending;
            };
            let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Every gap that ended is now forgotten or begun again: `next` moves on.
            let due = self.due(Instant::now());
            if !due.is_empty() {
                return Poll::Ready(due);
            }
        }
    }
}

/// How long a request to another replica may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where an answer goes: to a peer over the protocol, or to this node's own client.
pub(crate) enum Reply {
    Remote(request_response::ResponseChannel<Vec<u8>>),
    Local(oneshot::Sender<Response>),
}

impl Reply {
    fn send(self, inner: &mut request_response::Behaviour<Codec>, response: Response) {
        match self {
            Reply::Remote(channel) => {
                // The peer may have gone; nothing to do then.
                let _ = inner.send_response(channel, response.encode());
            }
            Reply::Local(tx) => {
                let _ = tx.send(response);
            }
        }
    }
}

type Answer = oneshot::Sender<Result<Vec<u8>, String>>;

/// A file being written, and who waits for it.
struct Writing {
    digest: [u8; 32],
    mailbox: Mailbox,
    /// The answers to give when it is on disk (the first deposit and repeats of it).
    replies: Vec<(Reply, Custody)>,
}

/// This node's clients waiting for mail in one mailbox.
#[derive(Default)]
struct Subscription {
    channels: Vec<mpsc::Sender<()>>,
    /// The replicas asked, each until its watch lapses (the renewals ask again).
    replicas: HashMap<PeerId, u64>,
}

/// Why mail keeps a connection open ([`Host::keep_connected`]).
const KEEP_WATCHES: &str = "mail: watches";

/// The mail extension.
pub struct Mail {
    inner: request_response::Behaviour<Codec>,
    key: identity::Keypair,
    shelf: Shelf,
    disk: Disk,
    written: mpsc::UnboundedReceiver<(u64, std::io::Result<()>)>,
    /// Deposits waiting for their file to be on disk, by the write's ticket.
    writing: HashMap<u64, Writing>,
    /// As a replica: peers watching mailboxes, until when; and how many each peer watches.
    watchers: HashMap<Mailbox, Vec<(PeerId, u64)>>,
    watches_of: WatchCounts,
    /// History requests per peer.
    history_asks: PerMinute<PeerId>,
    /// Envelope bytes fetches handed each network of peers. A fetch is answered while its
    /// reader's budget is not spent (its answer may overspend it: its size is known after).
    fetched: PerMinute<Reader>,
    /// As a watcher: this node's clients waiting for mail, and the replicas they asked.
    subscribers: HashMap<Mailbox, Subscription>,
    asks: HashMap<request_response::OutboundRequestId, Answer>,
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    /// As a replica: the notifications of the last gap, and the timer for those due.
    notices: Notices,
    channels: Channels,
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Mail {
    /// The extension for a node whose libp2p key is `key` (it signs custody receipts),
    /// keeping mail in `dir` (made if missing; what an earlier run kept there is read back).
    /// Must be called within a tokio runtime.
    pub fn open(dir: &Path, key: identity::Keypair, config: ShelfConfig) -> std::io::Result<Mail> {
        let shelf = Shelf::open(dir, config, now_ms())?;
        let (done, written) = mpsc::unbounded_channel();
        let disk = Disk::start(dir.to_owned(), done)?;
        let inner = request_response::Behaviour::new(
            [(PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(REQUEST_TIMEOUT),
        );
        let mut mail = Mail {
            inner,
            key,
            shelf,
            disk,
            written,
            writing: HashMap::new(),
            watchers: HashMap::new(),
            watches_of: WatchCounts::default(),
            history_asks: PerMinute::new(HISTORY_ASKS_PER_MINUTE),
            fetched: PerMinute::new(FETCH_BYTES_PER_MINUTE),
            subscribers: HashMap::new(),
            asks: HashMap::new(),
            expiry: None,
            notices: Notices::default(),
            channels: Channels::default(),
        };
        mail.arm_expiry();
        Ok(mail)
    }

    /// What this replica keeps.
    pub fn shelf(&self) -> &Shelf {
        &self.shelf
    }

    /// The channels this node joined.
    pub(crate) fn channels(&mut self) -> &mut Channels {
        &mut self.channels
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.key.public().to_peer_id()
    }

    /// Sends an encoded request to `peer`; the answer's bytes (or why there is none) come to
    /// the receiver.
    pub(crate) fn ask(
        &mut self,
        peer: PeerId,
        request: Vec<u8>,
    ) -> oneshot::Receiver<Result<Vec<u8>, String>> {
        let (tx, rx) = oneshot::channel();
        let id = self.inner.send_request(&peer, request);
        self.asks.insert(id, tx);
        rx
    }

    /// Serves a request of this node's own client, as if a peer had sent it.
    pub(crate) fn ask_self(&mut self, request: Request) -> oneshot::Receiver<Response> {
        let (tx, rx) = oneshot::channel();
        let me = self.peer_id();
        self.serve(me, None, request, Reply::Local(tx));
        rx
    }

    /// A channel that is told when the replicas this node asked to watch `mailbox`
    /// ([`Mail::expect_notifications`]) notify new mail; a notification from any other peer
    /// is ignored.
    pub(crate) fn subscribe(&mut self, mailbox: Mailbox) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel(1);
        let subscription = self.subscribers.entry(mailbox).or_default();
        subscription.channels.retain(|c| !c.is_closed());
        subscription.channels.push(tx);
        rx
    }

    /// Heeds notifications of new mail in `mailbox` from `replicas` (asked to watch it, each
    /// until `until`), and keeps the connections to them.
    pub(crate) fn expect_notifications(
        &mut self,
        mailbox: Mailbox,
        replicas: Vec<PeerId>,
        until: u64,
        host: &mut Host<'_>,
    ) {
        if let Some(subscription) = self.subscribers.get_mut(&mailbox) {
            for peer in replicas {
                subscription.replicas.insert(peer, until);
                host.keep_connected(KEEP_WATCHES, peer, true);
            }
        }
    }

    /// Keeps the connections mail's watches need open while nothing uses them
    /// ([`Host::keep_connected`]; a connection closes when either end lets it go): as a
    /// replica, those to the peers watching a mailbox here, so that a notification needs no
    /// dial (a watcher behind NAT could not take one); as a watcher, those to the replicas it
    /// asked. Watches that lapsed and subscriptions whose clients are gone are let go at the
    /// node's sweep; a watch registered or a replica asked is kept as it comes.
    fn keep_watches(&mut self, host: &mut Host<'_>) {
        let now = now_ms();
        self.prune_lapsed(now);
        self.subscribers.retain(|_, subscription| {
            subscription.channels.retain(|c| !c.is_closed());
            subscription.replicas.retain(|_, until| *until > now);
            !subscription.channels.is_empty()
        });
        let mut peers: HashSet<PeerId> = self.watches_of.peers.keys().copied().collect();
        peers.extend(self.subscribers.values().flat_map(|s| s.replicas.keys().copied()));
        peers.remove(&self.peer_id());
        host.keep_only_connected(KEEP_WATCHES, &peers);
    }

    /// Tells this node's clients that `mailbox` has new mail, if `from` is a replica they
    /// asked; whether anyone here watches it.
    fn on_notify(&mut self, from: PeerId, mailbox: Mailbox) -> bool {
        let Some(subscription) = self.subscribers.get_mut(&mailbox) else { return false };
        subscription.channels.retain(|c| !c.is_closed());
        if subscription.channels.is_empty() {
            self.subscribers.remove(&mailbox);
            return false;
        }
        if subscription.replicas.get(&from).is_none_or(|until| *until <= now_ms()) {
            return false;
        }
        for channel in &subscription.channels {
            // A full channel already says "new mail".
            let _ = channel.try_send(());
        }
        true
    }

    /// Notifies the peers watching `mailbox` (this node's own clients directly), each peer at
    /// most once a [`NOTIFY_GAP`].
    fn notify_watchers(&mut self, mailbox: Mailbox) {
        let now = now_ms();
        let me = self.peer_id();
        let Some(watchers) = self.watchers.get_mut(&mailbox) else { return };
        prune_watchers(watchers, &mut self.watches_of, |(_, until)| *until > now);
        let peers: Vec<PeerId> = watchers.iter().map(|(peer, _)| *peer).collect();
        if peers.is_empty() {
            self.watchers.remove(&mailbox);
        }
        let at = Instant::now();
        for peer in peers {
            if peer == me {
                self.on_notify(me, mailbox);
            } else if self.notices.note(mailbox, peer, at) {
                // A hint: nobody waits for the answer.
                self.inner.send_request(&peer, Request::Notify(mailbox.0).encode());
            }
        }
    }

    /// Sends the notifications `due` (their gaps ended with more mail since) to the peers
    /// still watching.
    fn notify_due(&mut self, due: Vec<(Mailbox, PeerId)>) {
        let now = now_ms();
        for (mailbox, peer) in due {
            let watching = self
                .watchers
                .get(&mailbox)
                .is_some_and(|w| w.iter().any(|(p, until)| *p == peer && *until > now));
            if watching {
                self.inner.send_request(&peer, Request::Notify(mailbox.0).encode());
            }
        }
    }

    /// Forgets the watches that lapsed by `now` (at the node's sweep, and when a replica holds
    /// all it may).
    fn prune_lapsed(&mut self, now: u64) {
        let counts = &mut self.watches_of;
        self.watchers.retain(|_, w| {
            prune_watchers(w, counts, |(_, until)| *until > now);
            !w.is_empty()
        });
    }

    /// Registers `peer`, connected from `network`, as watching `mailbox` until `until`.
    fn add_watcher(
        &mut self,
        mailbox: Mailbox,
        peer: PeerId,
        network: Option<Network>,
        now: u64,
    ) -> Result<u64, Refusal> {
        if !self.watchers.contains_key(&mailbox) && self.watchers.len() >= MAX_WATCHED {
            self.prune_lapsed(now);
            if self.watchers.len() >= MAX_WATCHED {
                return Err(Refusal::Busy);
            }
        }
        let crowded = self.watchers.len() > MAX_WATCHED / 2;
        let counts = &mut self.watches_of;
        let until = now + WATCH_TTL_MS;
        let watchers = self.watchers.entry(mailbox).or_default();
        prune_watchers(watchers, counts, |(p, end)| *p != peer && *end > now);
        if counts.of_peer(&peer) >= WATCHES_PER_PEER
            || (crowded && counts.of_network(&peer, network) >= WATCHES_PER_NETWORK)
        {
            if watchers.is_empty() {
                self.watchers.remove(&mailbox);
            }
            return Err(Refusal::Busy);
        }
        if watchers.len() >= WATCHERS_PER_MAILBOX {
            let first = (0..watchers.len()).min_by_key(|&i| watchers[i].1).unwrap_or(0);
            let ends = watchers[first].1;
            prune_watchers(watchers, counts, |(_, end)| *end != ends);
        }
        watchers.push((peer, until));
        counts.add(peer, network);
        Ok(until)
    }

    /// Answers a request from `peer` (signatures and time checked here).
    /// Serves `peer`'s request; `network` is where it connects from (`None` for this node).
    fn serve(&mut self, peer: PeerId, network: Option<Network>, request: Request, reply: Reply) {
        let now = now_ms();
        let me = self.peer_id();
        let response = match request {
            Request::Deposit(bytes) => {
                let depositor = if peer == me {
                    crate::shelf::Depositor::Own(peer)
                } else {
                    crate::shelf::Depositor::Peer(peer, network)
                };
                match self.shelf.deposit_from(bytes, depositor, now) {
                    Err(refusal) => Response::Refused(refusal),
                    Ok(taken) => {
                        let custody = Custody::sign(&self.key, taken.digest, taken.kept_until_ms);
                        match (taken.write, taken.pending) {
                            (Some(job), _) => {
                                let Job::Write { ticket, .. } = &job else { unreachable!() };
                                let writing = Writing {
                                    digest: taken.digest,
                                    mailbox: taken.mailbox,
                                    replies: vec![(reply, custody)],
                                };
                                self.writing.insert(*ticket, writing);
                                self.disk.queue(job);
                                self.arm_expiry();
                                return;
                            }
                            // A repeat of a deposit whose file is still being written: its
                            // custody, too, waits for the file.
                            (None, Some(ticket)) => match self.writing.get_mut(&ticket) {
                                Some(writing) => {
                                    writing.replies.push((reply, custody));
                                    return;
                                }
                                None => Response::Refused(Refusal::StorageFailed),
                            },
                            (None, None) => Response::Custody(custody),
                        }
                    }
                }
            }
            Request::Fetch(signed) => match signed.check(me, now) {
                Err(refusal) => Response::Refused(refusal),
                Ok(()) => {
                    let reader = network.map_or(Reader::Peer(peer), Reader::Network);
                    if peer != me && !self.fetched.has(&reader, 1, Instant::now()) {
                        Response::Refused(Refusal::Busy)
                    } else {
                        let mailbox = Mailbox::of(&signed.account);
                        let (items, more) =
                            self.shelf.fetch(&mailbox, signed.body.after, signed.body.limit, now);
                        let bytes = items.iter().map(|i| i.envelope.len() as u64).sum();
                        self.fetched.spend(reader, bytes, Instant::now());
                        Response::Batch { items, more }
                    }
                }
            },
            Request::Ack(signed) => match signed.check(me, now) {
                Err(refusal) => Response::Refused(refusal),
                Ok(()) => {
                    let mailbox = Mailbox::of(&signed.account);
                    let jobs = self.shelf.ack(&mailbox, &signed.body.digests);
                    let deleted = jobs.len() as u32;
                    jobs.into_iter().for_each(|job| self.disk.queue(job));
                    Response::Acked(deleted)
                }
            },
            Request::Watch(signed) => {
                match signed.check(me, now).and_then(|()| {
                    self.add_watcher(Mailbox::of(&signed.account), peer, network, now)
                }) {
                    Ok(until) => Response::Watching(until),
                    Err(refusal) => Response::Refused(refusal),
                }
            }
            Request::Notify(mailbox) => Response::Noted(self.on_notify(peer, Mailbox(mailbox))),
            Request::Offer(mailbox, digests) => {
                Response::Missing(self.shelf.missing(&Mailbox(mailbox), &digests))
            }
            Request::History(channel) => {
                // An answer is much larger than its question: few a minute per peer.
                if peer != me && !self.history_asks.has(&peer, 1, Instant::now()) {
                    Response::Refused(Refusal::Busy)
                } else {
                    self.history_asks.spend(peer, 1, Instant::now());
                    Response::Posts(self.channels.history(&channel, HISTORY_ANSWER_BYTES))
                }
            }
        };
        reply.send(&mut self.inner, response);
    }

    /// Sets the timer for the next expiry.
    fn arm_expiry(&mut self) {
        self.expiry = self.shelf.next_expiry().map(|at| {
            let wait = Duration::from_millis(at.saturating_sub(now_ms()));
            Box::pin(tokio::time::sleep(wait))
        });
    }

    /// Files written: give their custody, or take back the deposit whose write failed.
    fn on_written(&mut self, ticket: u64, result: std::io::Result<()>) {
        let Some(writing) = self.writing.remove(&ticket) else { return };
        if let Some(job) = self.shelf.written(&writing.digest, ticket, result.is_ok()) {
            self.disk.queue(job);
        }
        match result {
            Ok(()) => {
                for (reply, custody) in writing.replies {
                    reply.send(&mut self.inner, Response::Custody(custody));
                }
                self.notify_watchers(writing.mailbox);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write a mail file; the deposit is refused");
                for (reply, _) in writing.replies {
                    reply.send(&mut self.inner, Response::Refused(Refusal::StorageFailed));
                }
                self.arm_expiry();
            }
        }
    }
}

impl Extension for Mail {
    fn on_sweep(&mut self, host: &mut Host<'_>) {
        self.keep_watches(host);
    }

    fn on_gossip(&mut self, message: GossipMessage, host: &mut Host<'_>) -> Verdict {
        self.channels.on_gossip(message, host)
    }

    fn on_event(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>, host: &mut Host<'_>) {
        use request_response::{Event, Message};
        match event {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => {
                // The node's one admission step. A peer over its rate is told so (a sender
                // then knows why); an oversized request or a banned peer gets no answer.
                match host.admit(peer, request.len(), MAX_REQUEST) {
                    Ok(()) => {}
                    Err(Refused::RateLimited) if !host.is_banned(&peer) => {
                        return Reply::Remote(channel)
                            .send(&mut self.inner, Response::Refused(Refusal::Busy));
                    }
                    Err(_) => return,
                }
                match Request::decode(&request) {
                    Ok(request) => {
                        let watch = matches!(request, Request::Watch(_));
                        let network = host.network_of(&peer);
                        self.serve(peer, network, request, Reply::Remote(channel));
                        if watch && self.watches_of.contains(&peer) {
                            // A watcher's connection is to stay.
                            host.keep_connected(KEEP_WATCHES, peer, true);
                        }
                    }
                    Err(e) => {
                        // Bytes that are no protobuf at all come from no honest peer; a
                        // well-formed request of a kind this version does not know may come
                        // from a newer one, and is only refused.
                        if !e.is_unknown_kind() {
                            host.report(peer, &e.to_string());
                        }
                        Reply::Remote(channel)
                            .send(&mut self.inner, Response::Refused(Refusal::Malformed));
                    }
                }
            }
            Event::Message { message: Message::Response { request_id, response }, .. } => {
                if let Some(answer) = self.asks.remove(&request_id) {
                    let _ = answer.send(Ok(response));
                }
            }
            Event::OutboundFailure { request_id, error, .. } => {
                if let Some(answer) = self.asks.remove(&request_id) {
                    let _ = answer.send(Err(error.to_string()));
                }
            }
            _ => {}
        }
    }
}

// A hand-written delegation: the behaviour keeps the shelf and the waiting requests beside the
// request-response behaviour, and its poll also serves the disk thread's reports and expiry.
impl NetworkBehaviour for Mail {
    type ConnectionHandler =
        <request_response::Behaviour<Codec> as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = request_response::Event<Vec<u8>, Vec<u8>>;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(connection, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(connection, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(connection, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, connection, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        while let Poll::Ready(Some((ticket, result))) = self.written.poll_recv(cx) {
            self.on_written(ticket, result);
        }
        if let Some(timer) = self.expiry.as_mut()
            && timer.as_mut().poll(cx).is_ready()
        {
            let now = now_ms();
            for job in self.shelf.expire(now) {
                self.disk.queue(job);
            }
            self.arm_expiry();
            if self.shelf.next_expiry().is_some_and(|at| at <= now) {
                // More are due than one batch: the rest on the next turn of the node's task.
                cx.waker().wake_by_ref();
            }
            if let Some(timer) = self.expiry.as_mut() {
                // Registers the waker for the next one.
                let _ = timer.as_mut().poll(cx);
            }
        }
        while let Poll::Ready(due) = self.notices.poll_due(cx) {
            self.notify_due(due);
        }
        self.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetches_hand_a_network_at_most_so_many_bytes_a_minute() {
        let mut budget = PerMinute::new(FETCH_BYTES_PER_MINUTE);
        let t0 = Instant::now();
        let (flooder, other) = (Reader::Peer(PeerId::random()), Reader::Peer(PeerId::random()));
        let mut answers = 0;
        while budget.has(&flooder, 1, t0) {
            budget.spend(flooder, 1 << 20, t0);
            answers += 1;
            assert!(answers < 1000, "never refused");
        }
        assert_eq!(answers, FETCH_BYTES_PER_MINUTE >> 20, "a megabyte an answer");
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(budget.has(&other, 1, at(1)), "another reader is not counted with it");
        // Asking every millisecond on (whenever the clock's minute turns): the second after
        // hands it only what refilled (an answer once it owes less than the minute), and the
        // minute after, the minute's budget.
        let mut handed_by = |end: u64| {
            for ms in 1..=end {
                while budget.has(&flooder, 1, at(ms)) {
                    budget.spend(flooder, 1 << 20, at(ms));
                    answers += 1;
                }
            }
            answers
        };
        assert_eq!(handed_by(1_000), 33, "a megabyte more in the first second");
        assert_eq!(handed_by(60_000), 64, "a minute's budget in the minute after");
    }

    #[test]
    fn a_watcher_is_told_of_new_mail_at_most_once_a_gap_and_of_every_mailbox_in_turn() {
        let mut notices = Notices::default();
        let (mailbox, other) = (Mailbox([1; 32]), Mailbox([2; 32]));
        let (peer, second) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        assert!(notices.note(mailbox, peer, t0), "the first letter is told at once");
        assert!(notices.note(mailbox, second, t0), "each watcher has its own gap");
        // A flood into both mailboxes within the gap: nothing more now.
        for ms in 1..90 {
            let at = t0 + Duration::from_millis(ms);
            assert!(!notices.note(mailbox, peer, at));
            assert!(!notices.note(other, peer, at));
        }
        assert_eq!(notices.next(), Some(t0 + NOTIFY_GAP));
        assert!(notices.due(t0 + NOTIFY_GAP - Duration::from_millis(1)).is_empty());
        // One notification a gap, the oldest news first; the second watcher had none.
        let t1 = t0 + NOTIFY_GAP;
        assert_eq!(notices.due(t1), [(mailbox, peer)]);
        assert_eq!(notices.watchers.len(), 1, "a watcher with no news is forgotten");
        assert!(notices.due(t1 + NOTIFY_GAP / 2).is_empty());
        // News waits its turn even once the gap is over.
        assert!(!notices.note(mailbox, peer, t1 + NOTIFY_GAP));
        assert_eq!(notices.due(t1 + NOTIFY_GAP), [(other, peer)]);
        assert_eq!(notices.due(t1 + 2 * NOTIFY_GAP), [(mailbox, peer)]);
        // A gap that ends with nothing new forgets the watcher; the next letter goes at once.
        assert!(notices.due(t1 + 3 * NOTIFY_GAP).is_empty());
        assert!(notices.watchers.is_empty() && notices.next().is_none());
        assert!(notices.note(other, peer, t1 + 3 * NOTIFY_GAP));
    }

    /// Waits for the notifications due, at most a second (of paused time).
    async fn due_within_a_second(notices: &mut Notices) -> Option<Vec<(Mailbox, PeerId)>> {
        let due = std::future::poll_fn(|cx| notices.poll_due(cx));
        tokio::time::timeout(Duration::from_secs(1), due).await.ok()
    }

    #[tokio::test(start_paused = true)]
    async fn news_is_told_when_its_gap_ends_also_after_earlier_gaps_ended() {
        let mut notices = Notices::default();
        let (mailbox, other) = (Mailbox([1; 32]), Mailbox([2; 32]));
        let peer = PeerId::random();
        for round in 0..3 {
            let start = Instant::now();
            assert!(notices.note(mailbox, peer, start), "round {round}: told at once");
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!notices.note(other, peer, Instant::now()), "round {round}: waits");
            let due = due_within_a_second(&mut notices).await;
            assert_eq!(due, Some(vec![(other, peer)]), "round {round}");
            assert_eq!(start.elapsed(), NOTIFY_GAP, "round {round}: when the gap ends");
            // The next gap ends with nothing new: nothing is due and the watcher is forgotten.
            assert_eq!(due_within_a_second(&mut notices).await, None, "round {round}");
            assert!(notices.watchers.is_empty() && notices.timer.is_none(), "round {round}");
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
}

#[cfg(test)]
mod watch_tests {
    use super::*;

    fn network(addr: &str) -> Option<Network> {
        Network::of(&addr.parse().expect("a multiaddr"))
    }

    #[test]
    fn one_network_of_peers_holds_at_most_its_share_of_a_replicas_watches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = identity::Keypair::generate_ed25519();
        let mut mail = Mail::open(dir.path(), key, ShelfConfig::default()).expect("opens");
        let now = now_ms();
        let mut boxes = (0u32..).map(|i| {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            Mailbox(b)
        });
        let sybils = network("/ip4/203.0.113.7/tcp/4001");
        assert!(sybils.is_some());
        // Seventeen peer ids of one /24, each watching as many mailboxes as a peer may: while
        // the replica holds less than half of what it keeps, a network takes what it asks.
        let peers: Vec<PeerId> = (0..17).map(|_| PeerId::random()).collect();
        let mut watched = Vec::new();
        for peer in &peers {
            for mailbox in boxes.by_ref().take(WATCHES_PER_PEER) {
                assert!(mail.add_watcher(mailbox, *peer, sybils, now).is_ok());
                watched.push((mailbox, *peer));
            }
        }
        // Past half (peers of this machine here, which are not grouped, a second later)...
        while mail.watchers.len() <= MAX_WATCHED / 2 {
            let local = PeerId::random();
            for mailbox in boxes.by_ref().take(WATCHES_PER_PEER) {
                assert!(mail.add_watcher(mailbox, local, None, now + 1000).is_ok());
            }
        }
        // ... another id of that network is refused; others are not.
        let next = boxes.next().expect("a mailbox");
        let extra = PeerId::random();
        let from_there = network("/ip4/203.0.113.200/tcp/1");
        assert!(matches!(mail.add_watcher(next, extra, from_there, now), Err(Refusal::Busy)));
        assert!(
            mail.add_watcher(next, PeerId::random(), network("/ip4/198.51.100.1/tcp/1"), now)
                .is_ok()
        );
        assert!(
            mail.add_watcher(next, PeerId::random(), None, now).is_ok(),
            "this machine, the LAN"
        );
        // A network past its share renews no watch while the replica is crowded: its watches
        // lapse down to its share.
        let (mailbox, peer) = watched[0];
        assert!(matches!(mail.add_watcher(mailbox, peer, sybils, now + 1), Err(Refusal::Busy)));
        // A peer's watches count where it first watched from, wherever it connects from now.
        let moved = peers[1];
        let elsewhere = network("/ip4/192.0.2.1/tcp/1");
        let fresh = boxes.next().expect("a mailbox");
        assert!(matches!(mail.add_watcher(fresh, moved, elsewhere, now), Err(Refusal::Busy)));
        // Once watches lapse (and the node's sweep forgot them), the network has room again.
        let later = now + WATCH_TTL_MS;
        assert!(matches!(mail.add_watcher(fresh, extra, from_there, later), Err(Refusal::Busy)));
        mail.prune_lapsed(later);
        assert!(mail.add_watcher(fresh, extra, from_there, later).is_ok());
        let counted = mail.watches_of.networks.get(&from_there.expect("a network"));
        assert_eq!(counted, Some(&1), "the new watch");
        mail.prune_lapsed(later + WATCH_TTL_MS + 1000);
        assert!(mail.watches_of.networks.is_empty() && mail.watches_of.peers.is_empty());
    }
}
