//! Puts, gets and repairs as state machines driven by the node task.

use std::collections::HashSet;
use std::time::Instant;

use dkvs_record::{Key, Record};
use dkvs_store::PutOutcome;
use libp2p::{PeerId, gossipsub, request_response};
use tokio::sync::{mpsc, oneshot};

use crate::codec::pb;
use crate::node::{Driver, GetPurpose, OpId, closest, kad_key};
use crate::watch::{Watch, topic_of};
use crate::{GetError, GetOutcome, PutError, PutReceipt, Refusal};

pub(crate) enum Op {
    Put(PutOp),
    Get(GetOp),
    /// Read repair or replication: requests whose answers nobody waits for.
    Push {
        outstanding: usize,
        deadline: Instant,
    },
}

pub(crate) struct PutOp {
    record: Record,
    reply: Option<oneshot::Sender<Result<PutReceipt, PutError>>>,
    receipt: PutReceipt,
    pending: HashSet<PeerId>,
    looking_up: bool,
    deadline: Instant,
    quorum_at: Option<Instant>,
    /// A verified record newer than the one put, reported by a replica.
    newer: Option<Record>,
}

pub(crate) struct GetOp {
    key: Key,
    purpose: Option<GetPurpose>,
    pending: HashSet<PeerId>,
    looking_up: bool,
    /// Each replica's verified answer: its live record, or none.
    answers: Vec<(PeerId, Option<Record>)>,
    asked: usize,
    quorum: usize,
    deadline: Instant,
    quorum_at: Option<Instant>,
}

impl Op {
    pub(crate) fn due(&self, now: Instant, linger: std::time::Duration) -> bool {
        let (deadline, quorum_at) = match self {
            Op::Put(op) => (op.deadline, op.quorum_at),
            Op::Get(op) => (op.deadline, op.quorum_at),
            Op::Push { deadline, .. } => (*deadline, None),
        };
        now >= deadline || quorum_at.is_some_and(|at| now >= at + linger)
    }
}

fn refusal(status: pb::PutStatus) -> Refusal {
    use pb::PutStatus as S;
    match status {
        S::Stale => Refusal::Stale,
        S::Conflict => Refusal::Conflict,
        S::Fork => Refusal::Fork,
        S::ForeignOwner => Refusal::ForeignOwner,
        S::OverQuota => Refusal::OverQuota,
        S::Full => Refusal::Full,
        S::Invalid => Refusal::Invalid,
        S::TooOld => Refusal::TooOld,
        S::RateLimited => Refusal::RateLimited,
        S::Stored | S::Unchanged | S::Failed | S::Unspecified => Refusal::Failed,
    }
}

fn put_request(record: &Record) -> pb::Request {
    pb::Request { kind: Some(pb::request::Kind::Put(pb::PutRequest { record: record.encode() })) }
}

impl Driver {
    fn now_ms(&self) -> u64 {
        dkvs_record::unix_millis()
    }

    /// Decodes and validates a record a peer sent for `key`; `None` for "nothing" and for a
    /// record that is merely expired by our clock. A forged record gets the peer banned.
    fn verified(&mut self, peer: PeerId, key: &Key, bytes: &[u8]) -> Option<Record> {
        if bytes.is_empty() {
            return None;
        }
        let record = match Record::decode(bytes) {
            Ok(record) => record,
            Err(e) => {
                self.ban(peer, &format!("sent a malformed record: {e}"));
                return None;
            }
        };
        if record.key() != key {
            self.ban(peer, "answered with a record for another key");
            return None;
        }
        match record.validate(self.now_ms(), &self.store.config().limits) {
            Ok(()) => Some(record),
            Err(e) => {
                self.judge(peer, &dkvs_store::PutError::Invalid(e));
                None
            }
        }
    }

    pub(crate) fn start_put(
        &mut self,
        record: Record,
        expected: Option<Option<u64>>,
        reply: oneshot::Sender<Result<PutReceipt, PutError>>,
    ) {
        match expected {
            // Compare-and-swap is checked against the network's newest record first.
            Some(expected) => {
                let key = record.key().clone();
                self.start_get(key, GetPurpose::Cas { record, expected, reply });
            }
            None => self.put_phase(record, reply),
        }
    }

    fn put_phase(&mut self, record: Record, reply: oneshot::Sender<Result<PutReceipt, PutError>>) {
        let me = *self.swarm.local_peer_id();
        let mut receipt = PutReceipt { seq: record.seq(), ..PutReceipt::default() };
        match self.store.put(record.clone()) {
            Err(e) => {
                let _ = reply.send(Err(PutError::Local(e)));
                return;
            }
            Ok(PutOutcome::Stale { current_seq, current }) => {
                let current = current.map(|r| Box::new((*r).clone()));
                let _ = reply.send(Err(PutError::Stale { current_seq, current }));
                return;
            }
            Ok(PutOutcome::Stored { .. }) => {
                self.publish(&record);
                receipt.stored.push(me);
            }
            Ok(_) => receipt.stored.push(me),
        }
        let deadline = Instant::now() + self.config.operation_timeout;
        let key = kad_key(record.key());
        let op = self.new_op(Op::Put(PutOp {
            record,
            reply: Some(reply),
            receipt,
            pending: HashSet::new(),
            looking_up: true,
            deadline,
            quorum_at: None,
            newer: None,
        }));
        let query = self.swarm.behaviour_mut().kad.get_closest_peers(key);
        self.lookups.insert(query, op);
    }

    pub(crate) fn start_get(&mut self, key: Key, purpose: GetPurpose) {
        let me = *self.swarm.local_peer_id();
        let local = self.store.get(key.as_str()).map(|r| (*r).clone());
        let deadline = Instant::now() + self.config.operation_timeout;
        let lookup = kad_key(&key);
        let op = self.new_op(Op::Get(GetOp {
            key,
            purpose: Some(purpose),
            pending: HashSet::new(),
            looking_up: true,
            answers: vec![(me, local)],
            asked: 1,
            quorum: 1,
            deadline,
            quorum_at: None,
        }));
        let query = self.swarm.behaviour_mut().kad.get_closest_peers(lookup);
        self.lookups.insert(query, op);
    }

    pub(crate) fn start_watch(&mut self, key: Key) -> Watch {
        let (tx, rx) = mpsc::channel(64);
        let topic = topic_of(&key);
        if let Err(e) = self.swarm.behaviour_mut().gossipsub.subscribe(&topic) {
            tracing::warn!(%key, error = %e, "watch subscription failed");
        }
        let baseline = self.store.highest_seq(key.as_str()).unwrap_or(0);
        self.watches
            .entry(topic.hash())
            .or_insert_with(|| (key.clone(), Vec::new(), baseline))
            .1
            .push(tx);
        // Reading the key connects this node to its replicas, which publish its updates.
        self.start_get(key.clone(), GetPurpose::Warm);
        Watch::new(key, rx)
    }

    /// Publishes a record this node accepted to the key's watchers.
    pub(crate) fn publish(&mut self, record: &Record) {
        let topic = topic_of(record.key());
        self.deliver(&topic.hash(), record);
        // No subscribed peer is the common case; that is not an error.
        let _ = self.swarm.behaviour_mut().gossipsub.publish(topic, record.encode());
    }

    /// Hands a verified record to this node's watchers of its key, if it is newer.
    fn deliver(&mut self, topic: &gossipsub::TopicHash, record: &Record) {
        if let Some((_, senders, last)) = self.watches.get_mut(topic)
            && record.seq() > *last
        {
            *last = record.seq();
            senders.retain(|s| s.try_send(record.clone()).is_ok() || !s.is_closed());
        }
    }

    pub(crate) fn on_gossip_event(&mut self, event: gossipsub::Event) {
        let gossipsub::Event::Message { propagation_source, message_id, message } = event else {
            return;
        };
        let Some(key) = self.watches.get(&message.topic).map(|(key, _, _)| key.clone()) else {
            return;
        };
        let acceptance = match self.verified(propagation_source, &key, &message.data) {
            Some(record) => {
                self.deliver(&message.topic, &record);
                // Watchers also keep what they see: it is a verified, newer record.
                let _ = self.store.put(record);
                gossipsub::MessageAcceptance::Accept
            }
            None => gossipsub::MessageAcceptance::Reject,
        };
        let _ = self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
            &message_id,
            &propagation_source,
            acceptance,
        );
    }

    pub(crate) fn on_closest_peers(&mut self, id: OpId, peers: Vec<PeerId>) {
        let me = *self.swarm.local_peer_id();
        let k = self.config.replication;
        let Some(op) = self.ops.get_mut(&id) else { return };
        match op {
            Op::Put(put) => {
                let replicas = closest(put.record.key(), peers.into_iter().chain([me]), k);
                put.looking_up = false;
                put.receipt.replicas = replicas.len();
                put.receipt.quorum = self.config.write_quorum.of(replicas.len());
                if !replicas.contains(&me) {
                    // This node keeps a copy, but is not one of the replicas that count.
                    put.receipt.stored.retain(|p| *p != me);
                }
                let request = put_request(&put.record);
                let remote: Vec<PeerId> = replicas.into_iter().filter(|p| *p != me).collect();
                put.pending = remote.iter().copied().collect();
                for peer in remote {
                    self.send(id, peer, request.clone());
                }
                self.check_put(id);
            }
            Op::Get(get) => {
                let mut replicas = closest(&get.key, peers, k);
                replicas.retain(|p| *p != me);
                get.looking_up = false;
                get.asked = replicas.len() + 1;
                get.quorum = self.config.read_quorum.of(get.asked);
                get.pending = replicas.iter().copied().collect();
                let request = pb::Request {
                    kind: Some(pb::request::Kind::Get(pb::GetRequest {
                        key: get.key.as_str().as_bytes().to_vec(),
                    })),
                };
                for peer in replicas {
                    self.send(id, peer, request.clone());
                }
                self.check_get(id);
            }
            Op::Push { .. } => {}
        }
    }

    pub(crate) fn on_records_event(
        &mut self,
        event: request_response::Event<pb::Request, pb::Response>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let response = self.answer(peer, request);
                    let _ = self.swarm.behaviour_mut().records.send_response(channel, response);
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some((op, peer)) = self.requests.remove(&request_id) {
                        self.on_response(op, peer, response);
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                if let Some((op, peer)) = self.requests.remove(&request_id) {
                    self.on_failure(op, peer, error.to_string());
                }
            }
            _ => {}
        }
    }

    /// A replica's side: answers a peer's put or get from the store.
    fn answer(&mut self, peer: PeerId, request: pb::Request) -> pb::Response {
        use pb::PutStatus as S;
        let put_response = |status: S, reason: String| pb::PutResponse {
            status: status as i32,
            reason,
            ..pb::PutResponse::default()
        };
        if !self.rate_ok(peer) {
            return match request.kind {
                Some(pb::request::Kind::Get(_)) => pb::Response {
                    kind: Some(pb::response::Kind::Get(pb::GetResponse {
                        rate_limited: true,
                        ..pb::GetResponse::default()
                    })),
                },
                _ => pb::Response {
                    kind: Some(pb::response::Kind::Put(put_response(
                        S::RateLimited,
                        "too many requests".into(),
                    ))),
                },
            };
        }
        match request.kind {
            Some(pb::request::Kind::Put(put)) => {
                let response = match Record::decode(&put.record) {
                    Err(e) => {
                        self.ban(peer, &format!("sent a malformed record: {e}"));
                        put_response(S::Invalid, e.to_string())
                    }
                    Ok(record) => match self.store.put(record.clone()) {
                        Ok(PutOutcome::Stored { .. }) => {
                            self.publish(&record);
                            put_response(S::Stored, String::new())
                        }
                        Ok(PutOutcome::Unchanged) => put_response(S::Unchanged, String::new()),
                        Ok(PutOutcome::Stale { current_seq, current }) => pb::PutResponse {
                            current: current.map(|r| r.encode()).unwrap_or_default(),
                            current_seq,
                            ..put_response(S::Stale, format!("sequence {current_seq} is held"))
                        },
                        Ok(PutOutcome::Conflict { current }) => pb::PutResponse {
                            current_seq: current.as_ref().map_or(0, |r| r.seq()),
                            current: current.map(|r| r.encode()).unwrap_or_default(),
                            ..put_response(S::Conflict, String::new())
                        },
                        Ok(_) => put_response(S::Failed, "unknown outcome".into()),
                        Err(e) => {
                            self.judge(peer, &e);
                            let status = match &e {
                                dkvs_store::PutError::Fork { .. } => S::Fork,
                                dkvs_store::PutError::ForeignOwner { .. } => S::ForeignOwner,
                                dkvs_store::PutError::OwnerQuota { .. } => S::OverQuota,
                                dkvs_store::PutError::Full { .. } => S::Full,
                                dkvs_store::PutError::Invalid(_) => S::Invalid,
                                dkvs_store::PutError::TooOld { .. } => S::TooOld,
                                _ => S::Failed,
                            };
                            put_response(status, e.to_string())
                        }
                    },
                };
                pb::Response { kind: Some(pb::response::Kind::Put(response)) }
            }
            Some(pb::request::Kind::Get(get)) => {
                let key = std::str::from_utf8(&get.key).unwrap_or_default();
                let record = self.store.get(key).map(|r| r.encode()).unwrap_or_default();
                let highest_seq = self.store.highest_seq(key).unwrap_or(0);
                pb::Response {
                    kind: Some(pb::response::Kind::Get(pb::GetResponse {
                        record,
                        highest_seq,
                        rate_limited: false,
                    })),
                }
            }
            None => pb::Response { kind: None },
        }
    }

    fn on_response(&mut self, id: OpId, peer: PeerId, response: pb::Response) {
        let Some(op) = self.ops.get(&id) else { return };
        match (op, response.kind) {
            (Op::Put(put), Some(pb::response::Kind::Put(answer))) => {
                let key = put.record.key().clone();
                let seq = put.record.seq();
                let status = pb::PutStatus::try_from(answer.status).unwrap_or_default();
                // A claim of something newer counts only with the newer record, verified.
                let newer = match status {
                    pb::PutStatus::Stale | pb::PutStatus::Conflict => {
                        self.verified(peer, &key, &answer.current).filter(|r| r.seq() > seq)
                    }
                    _ => None,
                };
                let Some(Op::Put(put)) = self.ops.get_mut(&id) else { return };
                put.pending.remove(&peer);
                match status {
                    pb::PutStatus::Stored | pb::PutStatus::Unchanged => {
                        put.receipt.stored.push(peer)
                    }
                    status => put.receipt.refused.push((peer, refusal(status), answer.reason)),
                }
                if let Some(newer) = newer
                    && put.newer.as_ref().is_none_or(|n| n.seq() < newer.seq())
                {
                    put.newer = Some(newer);
                }
                self.check_put(id);
            }
            (Op::Get(get), Some(pb::response::Kind::Get(answer))) => {
                let key = get.key.clone();
                if answer.rate_limited {
                    return self.on_failure(id, peer, "rate limited".into());
                }
                let record = self.verified(peer, &key, &answer.record);
                let Some(Op::Get(get)) = self.ops.get_mut(&id) else { return };
                if get.pending.remove(&peer) {
                    get.answers.push((peer, record));
                }
                self.check_get(id);
            }
            (Op::Push { .. }, _) => self.push_answered(id),
            _ => self.on_failure(id, peer, "answered with the wrong kind of message".into()),
        }
    }

    fn on_failure(&mut self, id: OpId, peer: PeerId, reason: String) {
        match self.ops.get_mut(&id) {
            Some(Op::Put(put)) => {
                if put.pending.remove(&peer) {
                    put.receipt.unreachable.push((peer, reason));
                }
                self.check_put(id);
            }
            Some(Op::Get(get)) => {
                get.pending.remove(&peer);
                self.check_get(id);
            }
            Some(Op::Push { .. }) => self.push_answered(id),
            None => {}
        }
    }

    fn check_put(&mut self, id: OpId) {
        let Some(Op::Put(put)) = self.ops.get_mut(&id) else { return };
        if put.looking_up {
            return;
        }
        let stored = put.receipt.stored.len();
        let quorum = put.receipt.quorum;
        if put.newer.is_some()
            || stored + put.pending.len() < quorum
            || (stored >= quorum && put.pending.is_empty())
        {
            self.finish_op(id, Instant::now());
        } else if stored >= quorum && put.quorum_at.is_none() {
            put.quorum_at = Some(Instant::now());
        }
    }

    fn check_get(&mut self, id: OpId) {
        let Some(Op::Get(get)) = self.ops.get_mut(&id) else { return };
        if get.looking_up {
            return;
        }
        let (newest, confirmations) = newest(&get.answers);
        let agreed = newest.is_some() && confirmations >= get.quorum;
        let nothing_anywhere =
            get.answers.len() >= get.quorum && get.answers.iter().all(|(_, r)| r.is_none());
        if get.pending.is_empty() || (get.purpose.is_some() && (agreed || nothing_anywhere)) {
            self.reply_get(id);
            if let Some(Op::Get(get)) = self.ops.get(&id)
                && get.pending.is_empty()
            {
                self.finish_op(id, Instant::now());
            }
        } else if get.answers.len() >= get.quorum && get.quorum_at.is_none() {
            get.quorum_at = Some(Instant::now());
        }
    }

    /// Answers a get's caller (once), with what the replicas said so far.
    fn reply_get(&mut self, id: OpId) {
        let Some(Op::Get(get)) = self.ops.get_mut(&id) else { return };
        let Some(purpose) = get.purpose.take() else { return };
        let (newest, confirmations) = newest(&get.answers);
        let outcome = if get.answers.len() >= get.quorum {
            Ok(GetOutcome {
                record: newest.cloned(),
                confirmations,
                answered: get.answers.len(),
                asked: get.asked,
                local: false,
            })
        } else {
            Err(GetError::NoQuorum {
                answered: get.answers.len(),
                asked: get.asked,
                quorum: get.quorum,
            })
        };
        match purpose {
            GetPurpose::Reply(reply) => {
                let _ = reply.send(outcome);
            }
            GetPurpose::Warm => {}
            GetPurpose::Cas { record, expected, reply } => match outcome {
                Err(GetError::NoQuorum { answered, asked, quorum }) => {
                    let receipt = PutReceipt {
                        seq: record.seq(),
                        replicas: asked,
                        quorum,
                        unreachable: vec![],
                        ..PutReceipt::default()
                    };
                    tracing::debug!(answered, "compare-and-swap read found no quorum");
                    let _ = reply.send(Err(PutError::NoQuorum { receipt: Box::new(receipt) }));
                }
                Err(_) => {
                    let _ = reply.send(Err(PutError::Shutdown));
                }
                Ok(outcome) => {
                    let current = outcome.record;
                    if current.as_ref().map(Record::seq) == expected {
                        self.put_phase(record, reply);
                    } else {
                        let _ =
                            reply.send(Err(PutError::Conflict { current: current.map(Box::new) }));
                    }
                }
            },
        }
    }

    /// Ends an operation: answers its caller if not yet answered, and for a get, repairs the
    /// replicas that answered with an older record or none.
    pub(crate) fn finish_op(&mut self, id: OpId, _now: Instant) {
        if matches!(self.ops.get(&id), Some(Op::Get(_))) {
            self.reply_get(id);
        }
        let Some(op) = self.ops.remove(&id) else { return };
        match op {
            Op::Put(mut put) => {
                for peer in put.pending.drain() {
                    put.receipt.unreachable.push((peer, "no answer in time".into()));
                }
                let result = if let Some(newer) = put.newer {
                    Err(PutError::Stale {
                        current_seq: newer.seq(),
                        current: Some(Box::new(newer)),
                    })
                } else if put.receipt.has_quorum() {
                    Ok(put.receipt)
                } else {
                    Err(PutError::NoQuorum { receipt: Box::new(put.receipt) })
                };
                if let Some(reply) = put.reply {
                    let _ = reply.send(result);
                }
            }
            Op::Get(get) => self.repair(get),
            Op::Push { .. } => {}
        }
    }

    fn repair(&mut self, get: GetOp) {
        let me = *self.swarm.local_peer_id();
        let (Some(newest), _) = newest(&get.answers) else { return };
        let newest = newest.clone();
        let stale: Vec<PeerId> = get
            .answers
            .iter()
            .filter(|(_, r)| r.as_ref().is_none_or(|r| r.seq() < newest.seq()))
            .map(|(p, _)| *p)
            .collect();
        if stale.is_empty() {
            return;
        }
        if stale.contains(&me) {
            let _ = self.store.put(newest.clone());
        }
        let remote: HashSet<PeerId> = stale.into_iter().filter(|p| *p != me).collect();
        if remote.is_empty() {
            return;
        }
        tracing::debug!(key = %newest.key(), peers = remote.len(), "read repair");
        self.push(&newest, remote);
    }

    /// Sends `record` to `peers` without waiting for their answers.
    pub(crate) fn push(&mut self, record: &Record, peers: impl IntoIterator<Item = PeerId>) {
        let request = put_request(record);
        let deadline = Instant::now() + self.config.operation_timeout;
        let id = self.new_op(Op::Push { outstanding: 0, deadline });
        let mut outstanding = 0;
        for peer in peers {
            self.send(id, peer, request.clone());
            outstanding += 1;
        }
        match self.ops.get_mut(&id) {
            Some(Op::Push { outstanding: count, .. }) if outstanding > 0 => *count = outstanding,
            _ => {
                self.ops.remove(&id);
            }
        }
    }

    fn push_answered(&mut self, id: OpId) {
        if let Some(Op::Push { outstanding, .. }) = self.ops.get_mut(&id) {
            *outstanding = outstanding.saturating_sub(1);
            if *outstanding == 0 {
                self.ops.remove(&id);
            }
        }
    }

    /// Owners republish: every kept key whose newest record would expire before the next two
    /// rounds is re-signed with the next sequence and a fresh expiry, and put again.
    pub(crate) fn republish(&mut self) {
        let now = self.now_ms();
        let horizon = 2 * self.config.republish_interval.as_millis() as u64;
        let mut due = Vec::new();
        let mut done = Vec::new();
        for (key, (owner, ttl_ms)) in &self.kept {
            let Some(held) = self.store.get(key.as_str()) else { continue };
            if held.is_tombstone() || held.owner() != owner.public() {
                done.push(key.clone());
            } else if held.expires_at_ms() <= now + horizon {
                let draft = dkvs_record::Draft {
                    key: key.clone(),
                    value: held.value().to_vec(),
                    seq: held.seq() + 1,
                    issued_at_ms: now,
                    expires_at_ms: now + ttl_ms,
                    tombstone: false,
                    transfer: None,
                };
                match draft.sign(owner) {
                    Ok(record) => due.push(record),
                    Err(e) => tracing::warn!(%key, error = %e, "cannot republish"),
                }
            }
        }
        for key in done {
            self.kept.remove(&key);
        }
        for record in due {
            tracing::debug!(key = %record.key(), seq = record.seq(), "republishing");
            // Nobody waits for the receipt; the next round tries again if this one failed.
            let (reply, _) = oneshot::channel();
            self.put_phase(record, reply);
        }
    }

    /// Holders replicate: each live record goes to the k closest peers in the routing table.
    /// Replicas that have it answer "unchanged"; one that lost it (a restarted node) or newly
    /// became one of the closest stores it.
    pub(crate) fn replicate(&mut self) {
        let me = *self.swarm.local_peer_id();
        let k = self.config.replication;
        let records: Vec<Record> = self.store.records().map(|r| (*r).clone()).collect();
        for record in records {
            let target = libp2p::kad::KBucketKey::new(kad_key(record.key()));
            let peers: Vec<PeerId> = self
                .swarm
                .behaviour_mut()
                .kad
                .get_closest_local_peers(&target)
                .map(|key| *key.preimage())
                .filter(|p| *p != me)
                .take(k)
                .collect();
            self.push(&record, peers);
        }
    }
}

/// The newest record among the answers and how many answers were exactly it.
///
/// Every answer is already verified, so for an account-scoped key all records have one owner
/// and the highest sequence wins. A shared name can come back with records of different owners
/// when someone wrote it on nodes that did not know its holder (such a put fails for lack of a
/// quorum, but the nodes it reached keep it). The owner held by the most replicas wins, a
/// record handed over by a transfer counting for its new owner; then the highest sequence.
fn newest(answers: &[(PeerId, Option<Record>)]) -> (Option<&Record>, usize) {
    let records: Vec<&Record> = answers.iter().filter_map(|(_, r)| r.as_ref()).collect();
    let support = |owner: &dkvs_account::PublicKey| {
        records
            .iter()
            .filter(|r| r.owner() == owner || r.transfer().is_some_and(|t| t.from() == owner))
            .count()
    };
    let newest = records.iter().copied().max_by_key(|r| (support(r.owner()), r.seq()));
    let confirmations =
        newest.map_or(0, |n| answers.iter().filter(|(_, r)| r.as_ref() == Some(n)).count());
    (newest, confirmations)
}
