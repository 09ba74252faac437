//! Replication rounds: who replicates what, with whom, and at what cost.
//!
//! Every `replication_interval`, a node walks its store once and sorts each live record into:
//! - a record this node is a replica for (it is among the k closest nodes to the key in its
//!   routing table, counting itself only as a Kademlia server): it goes into the set of every
//!   other replica of the key. The node then reconciles each such set with its peer
//!   ([`crate::reconcile`]), and sends only the records the peer lacks or holds older.
//! - a record this node holds but is not a replica for (a client, or a server that k closer
//!   nodes have joined): it is handed off, sent once to each replica, and not again while its
//!   sequence is unchanged. It stays in the store until it expires, as any record does.
//!
//! The walk also gives each peer's shared list, which the node answers that peer's rounds from:
//! a peer that is neither in the lists nor in the routing table is refused without any work,
//! one in the table but not (yet) in the lists is answered from an empty set, and an answer set is
//! built from the list (each record read as it is now) at most once per half minute per peer
//! and once per walk for added keys. A partner's ask makes the node walk its store again only
//! when its table changed, when it does not list the partner, or when enough keys were added
//! to the store since (records it would otherwise answer without, and be sent again), and at
//! most every half minute. Two replicas in sync exchange a few range fingerprints per round; a
//! difference costs about the records that differ.
//!
//! Routing tables differ, so two replicas may disagree on which keys they share. A record a
//! peer declined (unchanged, stale, not a replica) is not sent to it again while its sequence is
//! the same, until the peer reconnects (a restarted peer may have lost it). Records to send wait
//! in one queue per peer, as keys (read from the store when sent), bounded per peer and served
//! in turn, so one peer that needs much cannot hold up the others.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use dkvs_record::{Compact, Key, Record};
use libp2p::PeerId;
use negentropy::NegentropyStorageVector;

use crate::codec::pb;
use crate::extension::Extension;
use crate::node::{Driver, OpId, closest, kad_key};
use crate::ops::Op;
use crate::reconcile::{self, Session};

/// Rounds this node runs at once, each with one peer.
const SESSIONS: usize = 2;
/// Peers whose answer sets this node keeps (the most recent askers).
const ANSWERING: usize = 8;
/// An answer set is rebuilt for the same peer at most this often (and once per walk for keys
/// added), and a peer's ask makes the node walk its store at most this often.
const REBUILD_AFTER: Duration = Duration::from_secs(30);
/// Keys added to the store since the last walk that make a partner's ask walk it again: at
/// least this many, and a hundredth of the records walked (fewer are sent again by the peers
/// that hold them, once each, until the next walk; a busy replica does not walk at each ask).
const ADDED_FOR_WALK: u64 = 64;
/// Records waiting to be sent to one peer, at most.
const QUEUE_PER_PEER: usize = 8_192;
/// How long a peer's queue waits after the peer refused a record for load.
const BACK_OFF: Duration = Duration::from_secs(2);
/// Answer sets built for all peers together: per second, and at once.
const BUILDS_PER_SECOND: u32 = 1;
const BUILD_BURST: u32 = 8;

/// What replication did since the node started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicationStats {
    /// Rounds this node started (one per peer per interval).
    pub rounds: u64,
    /// Rounds that completed.
    pub completed: u64,
    /// Reconciliation messages this node sent and received in its rounds.
    pub messages: u64,
    /// Bytes of those messages.
    pub message_bytes: u64,
    /// Records this node sent to replicas that lacked them or held them older.
    pub records_sent: u64,
    /// Encoded bytes of those records.
    pub record_bytes: u64,
    /// Records handed off (held here, but this node is not one of their replicas).
    pub handed_off: u64,
    /// Round messages of peers this node answered.
    pub answered: u64,
    /// Round messages of peers this node refused (they share no key with it, or sent garbage).
    pub refused: u64,
    /// Answer sets this node built for asking peers.
    pub sets_built: u64,
    /// Walks of the store (which records it shares with which peer): one per interval, and
    /// on a peer's ask, at most every 30 s: the first, and when the table changed, the peer is
    /// not listed, or enough keys were added since.
    pub walks: u64,
}

/// The replication state of a node.
#[derive(Default)]
pub(crate) struct Replication {
    /// When this node last walked its store (never: `None`).
    walked: Option<Instant>,
    /// From the last walk: the records the store held, as it kept them (a clone shares the
    /// store's allocation); they name the keys to look up again.
    walked_records: Vec<Compact>,
    /// The store's count of keys added ([`dkvs_store::Store::keys_added`]) when the last walk
    /// began.
    walked_added: u64,
    /// When a peer's ask last walked the store for the keys added to it: answer sets made
    /// before then lack them.
    grown_walk: Option<Instant>,
    /// From the last walk: per peer, the records this node and the peer are both replicas of,
    /// as indices into `walked_records` (a record goes to up to k - 1 peers' lists).
    shared: HashMap<PeerId, Vec<u32>>,
    /// Peers still to start a round with, this interval.
    round: VecDeque<PeerId>,
    /// Rounds in flight, by the operation that routes their answers.
    sessions: HashMap<OpId, (PeerId, Session)>,
    /// Answer sets for the peers that asked most recently, with when each was built.
    answering: VecDeque<(PeerId, Instant, NegentropyStorageVector)>,
    /// Records to send, per peer, as keys.
    queues: HashMap<PeerId, VecDeque<Key>>,
    /// Peers whose queue waits after a refusal for load, until when.
    paused: HashMap<PeerId, Instant>,
    /// When an answer set was last built for each peer (whether or not it is still cached).
    last_built: HashMap<PeerId, Instant>,
    /// Answer sets built for all peers together, so that many peer ids cannot make the node
    /// build sets all the time.
    builds: Option<crate::rate::RateLimiter>,
    /// The routing table grew since the last walk (a bootstrap finished): walk before answering.
    stale: bool,
    /// Keys this node holds but is not a replica for, with the sequence it handed off.
    handed_off: HashMap<Key, u64>,
    /// Per peer, the records it declined since it connected: not sent to it again.
    declined: HashMap<PeerId, HashMap<Key, u64>>,
    /// Bytes sent per peer: half of a peer's default byte budget.
    pace: Option<crate::rate::RateLimiter>,
    /// When the queues were last served: they are served once per tick at most, however often
    /// the task wakes for other reasons.
    last_drain: Option<Instant>,
    pub(crate) stats: ReplicationStats,
}

impl Replication {
    /// Forgets the pacing of peers it has not sent to for a while.
    pub(crate) fn forget_idle(&mut self, now: Instant) {
        if let Some(pace) = self.pace.as_mut() {
            pace.forget_idle(now);
        }
        self.paused.retain(|_, until| *until > now);
        self.last_built.retain(|_, at| now.duration_since(*at) < REBUILD_AFTER);
    }

    /// The routing table changed much (a bootstrap finished): the next answer walks again.
    pub(crate) fn table_changed(&mut self) {
        self.stale = true;
    }

    /// `peer` is no longer connected: what it declined may be gone when it comes back.
    pub(crate) fn disconnected(&mut self, peer: &PeerId) {
        self.declined.remove(peer);
    }

    /// `peer` declined `key` at `seq` (it holds it or newer, or is no replica of it).
    pub(crate) fn declined(&mut self, peer: PeerId, key: Key, seq: u64) {
        self.declined.entry(peer).or_default().insert(key, seq);
    }

    /// `peer` refused `key` for load: it goes back to the front of the peer's queue, and the
    /// queue waits [`BACK_OFF`].
    pub(crate) fn back_off(&mut self, peer: PeerId, key: Key) {
        self.queues.entry(peer).or_default().push_front(key);
        self.paused.insert(peer, Instant::now() + BACK_OFF);
    }

    /// When replication needs the task next: `tick` from `now` while a queue can be served or
    /// a round can start, the end of the earliest pause while every queue waits, or never.
    pub(crate) fn next_wake(&self, now: Instant, tick: Duration) -> Option<Instant> {
        if !self.round.is_empty() && self.sessions.len() < SESSIONS {
            return Some(now);
        }
        // The next serving is due a tick after the last one, not a tick after every event.
        let next_drain = self.last_drain.map_or(now, |last| last + tick);
        let mut at: Option<Instant> = None;
        for peer in self.queues.keys() {
            let ready = match self.paused.get(peer) {
                Some(until) if *until > next_drain => *until,
                _ => next_drain,
            };
            at = Some(at.map_or(ready, |at| at.min(ready)));
        }
        at
    }

    fn busy(&self) -> bool {
        !self.round.is_empty() || !self.sessions.is_empty()
    }

    /// Queues `key` for `peer`; false when the peer's queue is full.
    fn enqueue(&mut self, peer: PeerId, key: Key) -> bool {
        let queue = self.queues.entry(peer).or_default();
        if queue.len() >= QUEUE_PER_PEER {
            return false;
        }
        queue.push_back(key);
        true
    }
}

fn request(message: Vec<u8>, first: bool) -> pb::Request {
    pb::Request {
        kind: Some(pb::request::Kind::Reconcile(pb::ReconcileRequest { message, first })),
    }
}

fn refused(why: &str) -> pb::ReconcileResponse {
    pb::ReconcileResponse { message: Vec::new(), refused: why.into() }
}

impl<E: Extension> Driver<E> {
    /// The routing table's peers (this node left out), and this node if it counts (a DHT
    /// server): the replicas of a key in this node's view are the k of them nearest it.
    fn placement_table(&mut self, me_counts: bool) -> crate::placement::Table<PeerId> {
        let me = *self.swarm.local_peer_id();
        let mut entries = self.table_entries();
        if me_counts {
            entries.push((crate::nearby::hashed(&libp2p::kad::KBucketKey::from(me)), me));
        }
        crate::placement::Table::new(entries)
    }

    /// The routing table's entries (their keys' hashes, kept in it), this node left out.
    fn table_entries(&mut self) -> Vec<([u8; 32], PeerId)> {
        let me = *self.swarm.local_peer_id();
        let mut entries = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            entries.extend(
                bucket
                    .iter()
                    .map(|e| (crate::nearby::hashed(e.node.key), *e.node.key.preimage()))
                    .filter(|(_, p)| *p != me),
            );
        }
        entries
    }

    /// The `n` peers of the routing table nearest to `key`, this node left out.
    ///
    /// A walk over the table's entries (their hashes are kept in it) and one sort: Kademlia's
    /// sorted iterator moves its bucket-sized buffers for every bucket it passes, which with
    /// buckets of 64 cost more than the walk (it showed in profiles of puts and walks).
    fn nearest_in_table(&mut self, key: &Key, n: usize) -> Vec<PeerId> {
        let target = crate::nearby::hashed(&libp2p::kad::KBucketKey::new(kad_key(key)));
        // Each entry's key becomes its distance (as big-endian bytes, ordered as distances).
        let mut near = self.table_entries();
        for (hash, _) in &mut near {
            *hash = crate::nearby::xor(hash, &target);
        }
        if near.len() > n {
            near.select_nth_unstable(n);
            near.truncate(n);
        }
        near.sort_unstable();
        near.into_iter().map(|(_, p)| p).collect()
    }

    /// Whether this node keeps records pushed for `key`: it is among the k closest to it of
    /// the peers of its routing table it is connected to, with slack (k/2 more) for writers
    /// whose tables differ from its own, counting itself only as a DHT server. A node that is
    /// connected to fewer than k peers serves every key.
    pub(crate) fn serves_key(&mut self, key: &Key) -> bool {
        if !self.serves() {
            return false;
        }
        let me = *self.swarm.local_peer_id();
        let k = self.config.replication;
        let wide = k + k / 2;
        let near = self.nearest_in_table(key, 4 * wide);
        // Only peers connected now count: Kademlia keeps dead peers in its table, and k/2 of
        // them closer to a key must not make a live replica refuse. The check errs on the side
        // of keeping (a peer whose connection idled out does not count either).
        let live: Vec<PeerId> =
            near.into_iter().filter(|p| self.swarm.is_connected(p)).take(wide).collect();
        closest(key, live.into_iter().chain([me]), wide).contains(&me)
    }

    /// Whether `peer` is in this node's routing table.
    fn knows(&mut self, peer: &PeerId) -> bool {
        let target = libp2p::kad::KBucketKey::from(*peer);
        let closest = self.swarm.behaviour_mut().kad.get_closest_local_peers(&target).next();
        closest.is_some_and(|key| key.preimage() == peer)
    }

    fn serves(&self) -> bool {
        self.swarm.behaviour().kad.mode() == libp2p::kad::Mode::Server
    }

    /// Walks the store: which records this node shares with which peer, and which it holds
    /// without being a replica (queued for hand-off).
    fn walk(&mut self) {
        let me = *self.swarm.local_peer_id();
        let server = self.serves();
        let mut shared: HashMap<PeerId, Vec<u32>> = HashMap::new();
        // Read first: a key added while the walk runs makes the next answer walk again.
        self.replication.walked_added = self.store.keys_added();
        let records: Vec<Compact> = self.store.compact_records().collect();
        // Each record's replicas from one sorted copy of the table, not a scan of it per record
        // (`crate::placement`).
        let table = self.placement_table(server);
        let k = self.config.replication;
        // A store holds far fewer than 2^32 records.
        for (at, record) in (0u32..).zip(&records) {
            let key = record.key();
            let target = crate::nearby::hashed(&libp2p::kad::KBucketKey::new(kad_key(&key)));
            let replicas = table.nearest(&target, k);
            if replicas.contains(&me) {
                for peer in replicas.into_iter().filter(|p| *p != me) {
                    shared.entry(peer).or_default().push(at);
                }
            } else if self.replication.handed_off.get(&key) != Some(&record.seq()) {
                // Handed off once every replica's queue took it; otherwise tried next walk.
                let mut all = true;
                for peer in replicas {
                    all &= self.replication.enqueue(peer, key.clone());
                }
                if all {
                    self.replication.handed_off.insert(key, record.seq());
                    self.replication.stats.handed_off += 1;
                }
            }
        }
        let store = &self.store;
        self.replication.handed_off.retain(|key, _| store.get_compact(key.as_str()).is_some());
        self.replication.declined.retain(|peer, _| shared.contains_key(peer));
        self.replication.shared = shared;
        self.replication.walked_records = records;
        self.replication.walked = Some(Instant::now());
        self.replication.stats.walks += 1;
    }

    /// Starts a replication interval, unless the last one's rounds are still running: walks
    /// the store, then starts a round with every peer it shares records with whose queue has
    /// been sent.
    pub(crate) fn replicate(&mut self) {
        if self.replication.busy() {
            return;
        }
        self.walk();
        let replication = &mut self.replication;
        replication.round = replication
            .shared
            .keys()
            .filter(|peer| replication.queues.get(peer).is_none_or(VecDeque::is_empty))
            .copied()
            .collect();
        self.start_rounds();
    }

    /// The records this node shares with `peer`, each as held now (as the store keeps it: a
    /// clone shares its allocation).
    fn shared_now(&self, peer: &PeerId) -> Vec<Compact> {
        let Some(list) = self.replication.shared.get(peer) else { return Vec::new() };
        let walked = &self.replication.walked_records;
        // Made to size (a filtered iterator's collect grows by doubling).
        let mut shared = Vec::with_capacity(list.len());
        shared.extend(
            list.iter().filter_map(|&at| self.store.get_compact(walked[at as usize].key_str())),
        );
        shared
    }

    /// Starts rounds from this interval's list while fewer than [`SESSIONS`] run.
    pub(crate) fn start_rounds(&mut self) {
        while self.replication.sessions.len() < SESSIONS {
            let Some(peer) = self.replication.round.pop_front() else { return };
            let records = self.shared_now(&peer);
            let (session, first) = match Session::start(&records) {
                Ok(started) => started,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot start a replication round");
                    continue;
                }
            };
            let deadline = Instant::now() + self.config.operation_timeout;
            let id = self.new_op(Op::Reconcile { deadline });
            self.replication.stats.rounds += 1;
            self.replication.stats.messages += 1;
            self.replication.stats.message_bytes += first.len() as u64;
            self.replication.sessions.insert(id, (peer, session));
            self.send(id, peer, request(first, true));
        }
    }

    /// A peer's answer to a round's message.
    pub(crate) fn on_reconcile_answer(
        &mut self,
        id: OpId,
        peer: PeerId,
        answer: pb::ReconcileResponse,
    ) {
        let stats = &mut self.replication.stats;
        stats.messages += 1;
        stats.message_bytes += answer.message.len() as u64;
        let step = match self.replication.sessions.get_mut(&id) {
            Some((with, session)) if *with == peer && answer.refused.is_empty() => {
                session.step(&answer.message)
            }
            Some(_) => {
                tracing::debug!(%peer, reason = %answer.refused, "replication round refused");
                return self.end_round(id);
            }
            None => return,
        };
        match step {
            Ok(Some(next)) => {
                self.replication.stats.messages += 1;
                self.replication.stats.message_bytes += next.len() as u64;
                self.send(id, peer, request(next, false));
            }
            Ok(None) => {
                let missing = match self.replication.sessions.get(&id) {
                    Some((_, session)) => session.missing(),
                    None => Vec::new(),
                };
                for key in missing {
                    let declined = self.replication.declined.get(&peer).and_then(|d| d.get(&key));
                    let held = self.store.get_compact(key.as_str()).map(|r| r.seq());
                    if declined.is_some() && declined.copied() == held {
                        continue;
                    }
                    if !self.replication.enqueue(peer, key) {
                        break;
                    }
                }
                self.replication.stats.completed += 1;
                self.end_round(id);
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "replication round failed");
                self.end_round(id);
            }
        }
    }

    /// Sends one record to one peer for replication; a refusal is remembered (see
    /// [`Replication::declined`]).
    fn replicate_to(&mut self, record: &Record, peer: PeerId) {
        let deadline = Instant::now() + self.config.operation_timeout;
        let id = self.new_op(Op::Sent { key: record.key().clone(), seq: record.seq(), deadline });
        self.send(id, peer, crate::ops::put_request(record, None));
    }

    /// Ends a round: answered, failed, refused or past its deadline.
    pub(crate) fn end_round(&mut self, id: OpId) {
        self.ops.remove(&id);
        self.replication.sessions.remove(&id);
    }

    /// This node's answer to a peer's round message, from its answer set for that peer: the
    /// records both are replicas of, in this node's view. A peer that shares none is refused
    /// without any work; a set is rebuilt for the same peer at most every [`REBUILD_AFTER`],
    /// and once per walk for keys added.
    pub(crate) fn answer_reconcile(
        &mut self,
        peer: PeerId,
        request: pb::ReconcileRequest,
    ) -> pb::ReconcileResponse {
        let now = Instant::now();
        let recent_walk =
            self.replication.walked.is_some_and(|at| now.duration_since(at) < REBUILD_AFTER);
        let unlisted = !self.replication.shared.contains_key(&peer);
        let partner = self.serves() && (!unlisted || self.knows(&peer));
        // Keys stored since the walk (written through another node, pushed by a replica) are
        // in no answer set made from it: answered so, every replica that walked since would
        // send them here again, each once (a phone's round sent all of 10,000 records to each
        // of three nodes that had them).
        let added = self.store.keys_added().saturating_sub(self.replication.walked_added);
        let walked = self.replication.walked_records.len() as u64;
        let grown = added >= ADDED_FOR_WALK.max(walked / 100);
        if self.replication.walked.is_none()
            || (self.replication.stale && !recent_walk)
            || (unlisted && !recent_walk && self.knows(&peer))
            || (grown && !recent_walk && partner)
        {
            // A node that just started, or whose table grew, or that does not list a peer of
            // its table, or that stored enough keys since, walks again first: at most every
            // REBUILD_AFTER.
            self.replication.stale = false;
            self.walk();
            if grown {
                self.replication.grown_walk = Some(Instant::now());
            }
        }
        // A peer in the shared lists, or in the routing table (it joined since the last walk,
        // or shares nothing yet: a restarted replica answers with its empty set, and catches
        // up), is answered; anyone else is refused without any work.
        if !self.serves() || !(self.replication.shared.contains_key(&peer) || self.knows(&peer)) {
            self.replication.stats.refused += 1;
            return refused("the asking peer is not a replica partner of this node");
        }
        let cached = self.replication.answering.iter().position(|(p, _, _)| *p == peer);
        // A set made before a walk for added keys lacks them: a round's first message gets
        // one made again (its later ones keep the set they started with).
        let grown_walk = self.replication.grown_walk;
        let fresh = |built: Instant| {
            now.duration_since(built) < REBUILD_AFTER && grown_walk.is_none_or(|w| built >= w)
        };
        let at = match cached {
            Some(at) if !request.first || fresh(self.replication.answering[at].1) => at,
            _ => {
                // A build for the same peer within REBUILD_AFTER (its set was pushed out of the
                // cache by others), or past the node's budget of builds, waits.
                let built_lately = self
                    .replication
                    .last_built
                    .get(&peer)
                    .is_some_and(|at| now.duration_since(*at) < REBUILD_AFTER);
                // One bucket for the whole node, kept under its own peer id.
                let me = *self.swarm.local_peer_id();
                let builds = self.replication.builds.get_or_insert_with(|| {
                    crate::rate::RateLimiter::new(BUILDS_PER_SECOND, BUILD_BURST)
                });
                if (built_lately && cached.is_none()) || !builds.allow(me, now) {
                    self.replication.stats.refused += 1;
                    return refused("busy: ask again in a while");
                }
                if let Some(at) = cached {
                    self.replication.answering.remove(at);
                }
                self.replication.last_built.insert(peer, now);
                let records = self.shared_now(&peer);
                let set = reconcile::set_of(&records);
                if self.replication.answering.len() >= ANSWERING {
                    self.replication.answering.pop_front();
                }
                // Made now, after any walk of this ask.
                self.replication.answering.push_back((peer, Instant::now(), set));
                self.replication.stats.sets_built += 1;
                self.replication.answering.len() - 1
            }
        };
        match reconcile::answer(&self.replication.answering[at].2, &request.message) {
            Ok(message) => {
                self.replication.stats.answered += 1;
                pb::ReconcileResponse { message, refused: String::new() }
            }
            Err(e) => {
                self.replication.stats.refused += 1;
                refused(&e.to_string())
            }
        }
    }

    /// Sends the next records of the queues, peer by peer in turn: per tick at most a few to
    /// any one peer, and per second half of a peer's default request and byte budgets, so
    /// replication never looks like a flood. A record that changed or expired since it was
    /// queued is read as it is now.
    pub(crate) fn drain_replication(&mut self, tick: Duration) {
        self.start_rounds();
        if self.replication.queues.is_empty() {
            return;
        }
        let now = Instant::now();
        if self.replication.last_drain.is_some_and(|last| now < last + tick) {
            return;
        }
        self.replication.last_drain = Some(now);
        let ticks_per_second =
            (Duration::from_secs(1).as_millis() / tick.as_millis().max(1)) as u32;
        let (rate, burst) = (self.config.peer_bytes_per_second, self.config.peer_byte_burst);
        if self.replication.pace.is_none() {
            // A peer not sent to lately grants a new sender an eighth of its burst at once;
            // replication starts with half of that.
            let pace = crate::rate::RateLimiter::new((rate / 2).max(1), (burst / 2).max(1))
                .starting_with(burst / 16);
            self.replication.pace = Some(pace);
        }
        let per_peer = (self.config.peer_requests_per_second / 2 / ticks_per_second.max(1)).max(1);
        let paused = &self.replication.paused;
        let peers: Vec<PeerId> = self
            .replication
            .queues
            .keys()
            .filter(|peer| paused.get(peer).is_none_or(|until| *until <= now))
            .copied()
            .collect();
        for peer in peers {
            for _ in 0..per_peer {
                let Some(queue) = self.replication.queues.get_mut(&peer) else { break };
                let Some(key) = queue.front().cloned() else { break };
                let Some(record) = self.store.get(key.as_str()) else {
                    queue.pop_front();
                    continue;
                };
                let len = record.encode().len();
                // The outbox's budget too, which the user's waiting requests go first for (a
                // put request is the record and at most 8 bytes of framing).
                let paced = self.outbox.can_send(peer, len + 8, now)
                    && self.replication.pace.as_mut().is_some_and(|p| p.allow_n(peer, len, now));
                if !paced {
                    break;
                }
                if let Some(queue) = self.replication.queues.get_mut(&peer) {
                    queue.pop_front();
                }
                self.replication.stats.records_sent += 1;
                self.replication.stats.record_bytes += len as u64;
                self.replicate_to(&record, peer);
            }
        }
        self.replication.queues.retain(|_, queue| !queue.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_are_served_a_tick_after_the_last_serving_not_after_every_event() {
        let tick = Duration::from_millis(20);
        let mut replication = Replication::default();
        let t0 = Instant::now();
        assert_eq!(replication.next_wake(t0, tick), None, "nothing to do: no wake-up");
        let peer = PeerId::random();
        replication.queues.entry(peer).or_default().push_back(Key::new("/a/b").expect("key"));
        assert_eq!(replication.next_wake(t0, tick), Some(t0), "never served: now");
        replication.last_drain = Some(t0);
        let later = t0 + Duration::from_millis(15);
        assert_eq!(replication.next_wake(t0 + Duration::from_millis(5), tick), Some(t0 + tick));
        assert_eq!(replication.next_wake(later, tick), Some(t0 + tick));
        // A peer that refused for load waits out its pause.
        replication.paused.insert(peer, t0 + BACK_OFF);
        assert_eq!(replication.next_wake(later, tick), Some(t0 + BACK_OFF));
    }
}
