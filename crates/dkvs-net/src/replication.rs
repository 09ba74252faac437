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
//! The peer answers a round from its own set for the asking peer: the records both are
//! replicas for, in its view. Two replicas in sync exchange a few range fingerprints per round;
//! a difference costs about the records that differ. The queue of records to send holds keys,
//! not copies (a record is read from the store when it is sent), and is bounded; what does not
//! fit waits for the next round.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use dkvs_record::{Key, Record};
use libp2p::PeerId;
use negentropy::NegentropyStorageVector;

use crate::codec::pb;
use crate::extension::Extension;
use crate::node::{Driver, OpId, closest, kad_key};
use crate::ops::Op;
use crate::reconcile::{self, Session};

/// Rounds this node runs at once, each with one peer.
const SESSIONS: usize = 2;
/// Peers whose sets this node keeps for answering (the most recent askers).
const ANSWERING: usize = 4;
/// Records waiting to be sent, at most.
const QUEUE: usize = 1 << 16;

/// What replication did since the node started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicationStats {
    /// Rounds this node started (one per peer per interval).
    pub rounds: u64,
    /// Rounds that completed.
    pub completed: u64,
    /// Reconciliation messages this node sent and received.
    pub messages: u64,
    /// Bytes of those messages.
    pub message_bytes: u64,
    /// Records this node sent to replicas that lacked them or held them older.
    pub records_sent: u64,
    /// Encoded bytes of those records.
    pub record_bytes: u64,
    /// Records handed off (held here, but this node is not one of their replicas).
    pub handed_off: u64,
    /// Reconciliation messages this node answered.
    pub answered: u64,
}

/// The replication state of a node.
#[derive(Default)]
pub(crate) struct Replication {
    /// Peers still to reconcile with this round, with the records each should hold too.
    round: VecDeque<(PeerId, Vec<Arc<Record>>)>,
    /// Rounds in flight, by the operation that routes their answers.
    sessions: HashMap<OpId, (PeerId, Session)>,
    /// The sets this node answers with, for the peers that asked most recently.
    answering: VecDeque<(PeerId, NegentropyStorageVector)>,
    /// Records to send: the peer, the key and the sequence found missing there.
    queue: VecDeque<(PeerId, Key)>,
    /// Keys this node holds but is not a replica for, with the sequence it handed off.
    handed_off: HashMap<Key, u64>,
    /// Bytes sent per peer: half of a peer's default byte budget.
    pace: Option<crate::rate::RateLimiter>,
    pub(crate) stats: ReplicationStats,
}

impl Replication {
    /// Forgets the pacing of peers it has not sent to for a while.
    pub(crate) fn forget_idle(&mut self, now: Instant) {
        if let Some(pace) = self.pace.as_mut() {
            pace.forget_idle(now);
        }
    }

    fn busy(&self) -> bool {
        !self.round.is_empty() || !self.sessions.is_empty() || !self.queue.is_empty()
    }

    fn enqueue(&mut self, peer: PeerId, key: Key) {
        if self.queue.len() < QUEUE {
            self.queue.push_back((peer, key));
        }
    }
}

fn request(message: Vec<u8>, first: bool) -> pb::Request {
    pb::Request {
        kind: Some(pb::request::Kind::Reconcile(pb::ReconcileRequest { message, first })),
    }
}

impl<E: Extension> Driver<E> {
    /// The replicas of `key` in this node's view: the k closest among its routing table, and
    /// itself when it serves the DHT.
    fn replicas_of(&mut self, key: &Key, me_counts: bool) -> Vec<PeerId> {
        let me = *self.swarm.local_peer_id();
        let k = self.config.replication;
        let target = libp2p::kad::KBucketKey::new(kad_key(key));
        let peers: Vec<PeerId> = self
            .swarm
            .behaviour_mut()
            .kad
            .get_closest_local_peers(&target)
            .map(|key| *key.preimage())
            .filter(|p| *p != me)
            .take(k)
            .collect();
        closest(key, peers.into_iter().chain(me_counts.then_some(me)), k)
    }

    /// Whether this node keeps records pushed for `key`: it is among the k closest to it in its
    /// own routing table, with slack (k/2 more) for writers whose tables differ from its own,
    /// counting itself only as a DHT server. A node that knows fewer than k peers serves every
    /// key.
    pub(crate) fn serves_key(&mut self, key: &Key) -> bool {
        if !self.serves() {
            return false;
        }
        let me = *self.swarm.local_peer_id();
        let k = self.config.replication;
        let wide = k + k / 2;
        let target = libp2p::kad::KBucketKey::new(kad_key(key));
        let peers: Vec<PeerId> = self
            .swarm
            .behaviour_mut()
            .kad
            .get_closest_local_peers(&target)
            .map(|key| *key.preimage())
            .filter(|p| *p != me)
            .take(wide)
            .collect();
        closest(key, peers.into_iter().chain([me]), wide).contains(&me)
    }

    fn serves(&self) -> bool {
        self.swarm.behaviour().kad.mode() == libp2p::kad::Mode::Server
    }

    /// Starts a replication round, unless the last one is still running.
    pub(crate) fn replicate(&mut self) {
        if self.replication.busy() {
            return;
        }
        let me = *self.swarm.local_peer_id();
        let server = self.serves();
        let mut sets: HashMap<PeerId, Vec<Arc<Record>>> = HashMap::new();
        let records: Vec<Arc<Record>> = self.store.records().collect();
        for record in records {
            let replicas = self.replicas_of(record.key(), server);
            if replicas.contains(&me) {
                for peer in replicas.into_iter().filter(|p| *p != me) {
                    sets.entry(peer).or_default().push(Arc::clone(&record));
                }
            } else if self.replication.handed_off.get(record.key()) != Some(&record.seq()) {
                self.replication.handed_off.insert(record.key().clone(), record.seq());
                self.replication.stats.handed_off += 1;
                for peer in replicas {
                    self.replication.enqueue(peer, record.key().clone());
                }
            }
        }
        let store = &self.store;
        self.replication.handed_off.retain(|key, _| store.get(key.as_str()).is_some());
        self.replication.round = sets.into_iter().collect();
        self.start_rounds();
    }

    /// Starts rounds from this interval's list while fewer than [`SESSIONS`] run.
    pub(crate) fn start_rounds(&mut self) {
        while self.replication.sessions.len() < SESSIONS {
            let Some((peer, records)) = self.replication.round.pop_front() else { return };
            let (session, first) = match Session::start(records.iter().map(|r| &**r)) {
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
                if let Some((_, session)) = self.replication.sessions.get(&id) {
                    for key in session.missing() {
                        self.replication.enqueue(peer, key);
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

    /// Ends a round: answered, failed, refused or past its deadline.
    pub(crate) fn end_round(&mut self, id: OpId) {
        self.ops.remove(&id);
        self.replication.sessions.remove(&id);
    }

    /// This node's answer to a peer's round message, from its set for that peer: the records
    /// both are replicas for, in this node's view (none when this node is a client).
    pub(crate) fn answer_reconcile(
        &mut self,
        peer: PeerId,
        request: pb::ReconcileRequest,
    ) -> pb::ReconcileResponse {
        let cached = self.replication.answering.iter().position(|(p, _)| *p == peer);
        let at = match cached {
            Some(at) if !request.first => at,
            _ => {
                if let Some(at) = cached {
                    self.replication.answering.remove(at);
                }
                let me = *self.swarm.local_peer_id();
                let server = self.serves();
                let records: Vec<Arc<Record>> = self.store.records().collect();
                let mut shared = Vec::new();
                for record in records {
                    let replicas = self.replicas_of(record.key(), server);
                    if replicas.contains(&me) && replicas.contains(&peer) {
                        shared.push(record);
                    }
                }
                let set = reconcile::set_of(shared.iter().map(|r| &**r));
                if self.replication.answering.len() >= ANSWERING {
                    self.replication.answering.pop_front();
                }
                self.replication.answering.push_back((peer, set));
                self.replication.answering.len() - 1
            }
        };
        self.replication.stats.answered += 1;
        match reconcile::answer(&self.replication.answering[at].1, &request.message) {
            Ok(message) => pb::ReconcileResponse { message, refused: String::new() },
            Err(e) => pb::ReconcileResponse { message: Vec::new(), refused: e.to_string() },
        }
    }

    /// Sends the next slice of the queue: per tick, at most a few records to any one peer, and
    /// per second half of a peer's default request and byte budgets, so replication never
    /// looks like a flood. A record that changed or expired since it was queued is read as it
    /// is now.
    pub(crate) fn drain_replication(&mut self, ticks_per_second: u32) {
        self.start_rounds();
        let (rate, burst) = (self.config.peer_bytes_per_second, self.config.peer_byte_burst);
        if self.replication.pace.is_none() {
            self.replication.pace = Some(crate::rate::RateLimiter::new(rate / 2, burst / 2));
        }
        let per_peer = (self.config.peer_requests_per_second / 2 / ticks_per_second.max(1)).max(1);
        let mut sent: HashMap<PeerId, u32> = HashMap::new();
        let mut later = Vec::new();
        for _ in 0..256 {
            let Some((peer, key)) = self.replication.queue.pop_front() else { break };
            let count = sent.entry(peer).or_default();
            if *count >= per_peer {
                later.push((peer, key));
                continue;
            }
            let Some(record) = self.store.get(key.as_str()) else { continue };
            let len = record.encode().len();
            let now = Instant::now();
            if !self.replication.pace.as_mut().is_some_and(|pace| pace.allow_n(peer, len, now)) {
                later.push((peer, key));
                continue;
            }
            *count += 1;
            self.replication.stats.records_sent += 1;
            self.replication.stats.record_bytes += len as u64;
            self.push(&record, [peer]);
        }
        for item in later.into_iter().rev() {
            self.replication.queue.push_front(item);
        }
    }
}
