//! Puts, gets and repairs as state machines driven by the node task.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use dkvs_record::{Key, Record};
use dkvs_store::PutOutcome;
use libp2p::{PeerId, gossipsub};
use prost::Message as _;
use tokio::sync::oneshot;

use crate::codec::pb;
use crate::nearby::Neighbourhood;
use crate::node::{Driver, GetPurpose, OpId, closest, kad_key};
use crate::watch::{Watch, topic_of};
use crate::{GetError, GetOutcome, PutError, PutReceipt, Refusal};

/// How many peers a narrow read's set may differ by between a writer's lookup and a reader's
/// ([`Driver::narrow_read`]).
const NARROW_SLACK: usize = 2;

/// How long a replica that named peers a lookup did not find is not heard naming again.
const NAMING_PENALTY: Duration = Duration::from_secs(600);

/// Most peers whose naming is ignored at once (the map is bounded; expired ones go first).
const MAX_DEAF: usize = 1024;

pub(crate) enum Op {
    Put(PutOp),
    Get(GetOp),
    /// Read repair or replication: requests whose answers nobody waits for.
    Push {
        outstanding: usize,
        deadline: Instant,
    },
    /// A replication round with one peer (its state is in [`crate::replication`]).
    Reconcile {
        deadline: Instant,
    },
    /// One record sent to one peer by replication: a refusal is remembered.
    Sent {
        key: Key,
        seq: u64,
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
    /// The key's k closest as this write took them from the routing table
    /// ([`crate::nearby`]); none after a lookup.
    hood: Option<Box<Neighbourhood>>,
    /// A replica named a closer peer than the table gave: a lookup runs, and the write waits
    /// for it to send the record to the replicas it finds.
    rechecking: bool,
    /// This node's own store holds the record (its copy counts when it is a replica).
    held_here: bool,
}

pub(crate) struct GetOp {
    key: Key,
    purpose: Option<GetPurpose>,
    pending: HashSet<PeerId>,
    looking_up: bool,
    /// Each replica's verified answer: its live record, or none.
    answers: Vec<(PeerId, Option<Record>)>,
    /// Each answering replica's claim of the highest sequence it holds or remembers.
    claims: Vec<(PeerId, u64)>,
    asked: usize,
    quorum: usize,
    deadline: Instant,
    quorum_at: Option<Instant>,
    /// The lookup ran while this node had no dkvs peer.
    alone: bool,
    /// Requests sent: the lookups' and the replicas'.
    requests: u32,
    /// The first, narrow phase of a read ([`Driver::narrow_read`]): a random sample of the
    /// replicas found is asked, and the get answers only if every one of them returned the
    /// same record. Anything else (a failure, an empty or a different answer, an answer more
    /// than the linger behind the first, see [`GetOp::behind_at`]) widens it to every replica,
    /// under the usual rules.
    narrow: bool,
    /// The replicas found but not asked in the narrow phase: asked when it widens.
    reserve: Vec<PeerId>,
    /// This node's own answer, held back from a narrow read when this node is not among the
    /// replicas (its store need not hold the key) and holds nothing; counted if it widens.
    held_back: Option<(Option<Record>, u64)>,
    /// Replicas that failed to answer (in the narrow phase one widens the read).
    failures: usize,
    /// Of the failures, replicas that refused for load ("rate limited").
    rate_limited: usize,
    /// Their ids: a recheck does not ask them again.
    failed_peers: Vec<PeerId>,
    /// This node's own record when its answer does not count (a Kademlia client, which no
    /// reader asks): never an answer, but a sample whose answers are older widens the read,
    /// so that the replicas not asked yet (which may hold it) are asked.
    veto: Option<Box<Record>>,
    /// When the replicas (of the first phase) were asked.
    asked_at: Option<Instant>,
    /// A widened read's linger starts no earlier than this: the replicas asked late get the
    /// round trip the first answer took, then the linger.
    not_before: Option<Instant>,
    /// The key's k closest as this read took them from the routing table
    /// ([`crate::nearby`]); none after a lookup.
    hood: Option<Box<Neighbourhood>>,
    /// A replica named a closer peer than the table gave: a lookup runs, and the read waits
    /// for it, then asks every replica it finds that was not asked (as when it widens).
    rechecking: bool,
    /// The last record an answer carried whose signatures were checked, with its bytes: the
    /// same bytes from another replica (the common case) are checked for everything but the
    /// owner's signature again.
    checked: Option<Box<(Vec<u8>, Record)>>,
    /// Replicas whose request waits for its turn in this node's pacing ([`crate::pace`]) and
    /// when each went (None while it waits): a narrow read counts such a replica behind only
    /// the linger after its request went, and at the latest twice the linger after the first
    /// answer ([`GetOp::behind_at`]).
    late: HashMap<PeerId, Option<Instant>>,
}

/// Where an operation's replica set came from.
#[derive(Clone, Debug)]
pub(crate) enum Found {
    /// A Kademlia lookup that sent `requests` requests, and ended or timed out (`complete`):
    /// the peers that answered it and the routing table's connected DHT servers closest to
    /// the key (`Driver::with_connected_servers`), or nobody when none answered; `kept`: the
    /// places among them that table entries not connected keep (a lookup that timed out),
    /// counted among a put's places ([`put_quorum`]) and asked by nobody.
    Lookup { requests: u32, complete: bool, kept: Vec<PeerId> },
    /// The routing table, trusted and covering the key ([`Driver::local_neighbourhood`]).
    Table,
}

impl PutOp {
    /// The lookup found the replica set (this node among it or not) and the places `kept`
    /// beside it: the receipt's size is both, its quorum [`put_quorum`]'s (`sample`: a read's,
    /// `Driver::narrow_read`), this node's own copy counts only if it is a replica, and the
    /// remote replicas are returned, to be sent the record. A kept place is listed as
    /// unreachable and never asked.
    fn replicas_found(
        &mut self,
        replicas: Vec<PeerId>,
        kept: Vec<PeerId>,
        me: PeerId,
        alone: bool,
        (quorum, sample): (crate::Quorum, Option<usize>),
    ) -> Vec<PeerId> {
        self.looking_up = false;
        self.receipt.alone = alone;
        self.receipt.replicas = replicas.len() + kept.len();
        self.receipt.quorum = put_quorum(quorum, replicas.len(), kept.len(), sample);
        self.keep_places(kept);
        self.held_here = self.receipt.stored.contains(&me);
        if !replicas.contains(&me) {
            // This node keeps a copy, but is not one of the replicas that count.
            self.receipt.stored.retain(|p| *p != me);
        }
        let remote: Vec<PeerId> = replicas.into_iter().filter(|p| *p != me).collect();
        self.pending = remote.iter().copied().collect();
        remote
    }

    /// The lookup a replica's naming started found `replicas` (this node among them or not):
    /// the replica set is theirs, acknowledgements from peers outside it no longer count
    /// (as this node's own, when it is not one of them), and the replicas not asked yet are
    /// returned, to be sent the record.
    fn rechecked(
        &mut self,
        mut replicas: Vec<PeerId>,
        kept: Vec<PeerId>,
        me: PeerId,
        (quorum, sample): (crate::Quorum, Option<usize>),
    ) -> Vec<PeerId> {
        self.rechecking = false;
        self.hood = None;
        let receipt = &mut self.receipt;
        let asked: HashSet<PeerId> = (receipt.stored.iter())
            .chain(receipt.refused.iter().map(|(p, _, _)| p))
            .chain(receipt.unreachable.iter().map(|(p, _)| p))
            .chain(self.pending.iter())
            .copied()
            .collect();
        // A kept place this put asked already (from the table, before its connection closed)
        // is a replica: its answer counts, or is still awaited.
        let (asked_kept, kept): (Vec<PeerId>, Vec<PeerId>) =
            kept.into_iter().partition(|p| asked.contains(p));
        replicas.extend(asked_kept);
        receipt.stored.retain(|p| replicas.contains(p));
        if self.held_here && replicas.contains(&me) && !receipt.stored.contains(&me) {
            receipt.stored.push(me);
        }
        receipt.replicas = replicas.len() + kept.len();
        // Peers outside the set found are no longer waited for, nor counted if they answer.
        self.pending.retain(|p| replicas.contains(p));
        receipt.quorum = put_quorum(quorum, replicas.len(), kept.len(), sample);
        self.keep_places(kept);
        // The quorum is looked at afresh: the replicas asked now get the linger after it.
        self.quorum_at = None;
        let remote: Vec<PeerId> =
            replicas.into_iter().filter(|p| *p != me && !asked.contains(p)).collect();
        self.pending.extend(remote.iter().copied());
        remote
    }

    /// Lists the places `kept` (table entries not connected, [`Found::Lookup`]) as not asked.
    fn keep_places(&mut self, kept: Vec<PeerId>) {
        for peer in kept {
            if !self.receipt.unreachable.iter().any(|(p, _)| *p == peer) {
                let reason = "not asked: not connected, and the lookup timed out before hearing \
                              from it (it keeps its place among the k closest)";
                self.receipt.unreachable.push((peer, reason.into()));
            }
        }
    }

    /// A replica answered with `status` (and its words); `newer` is the newer record it
    /// showed, verified and of the same owner. An answer from a peer that was not asked, or
    /// twice, is ignored.
    fn answered(
        &mut self,
        peer: PeerId,
        status: pb::PutStatus,
        reason: String,
        newer: Option<Record>,
        now: Instant,
    ) {
        if !self.pending.remove(&peer) {
            return;
        }
        match status {
            pb::PutStatus::Stored | pb::PutStatus::Unchanged => self.receipt.stored.push(peer),
            status => self.receipt.refused.push((peer, refusal(status), reason)),
        }
        if let Some(newer) = newer
            && self.newer.as_ref().is_none_or(|n| n.seq() < newer.seq())
        {
            self.newer = Some(newer);
        }
        self.note_quorum(now);
    }

    /// The request to `peer` still waited for its turn when the put ended: the peer's rate
    /// limit, applied by this node ([`crate::pace`]).
    fn held_back(&mut self, peer: PeerId, how: &str) {
        if self.pending.remove(&peer) {
            let words = format!("held back ({how}): this node sends faster than the peer admits");
            self.receipt.refused.push((peer, Refusal::RateLimited, words));
        }
    }

    /// A replica will not answer (unreachable, timed out).
    fn failed(&mut self, peer: PeerId, reason: String, now: Instant) {
        if self.pending.remove(&peer) {
            self.receipt.unreachable.push((peer, reason));
        }
        self.note_quorum(now);
    }

    fn note_quorum(&mut self, now: Instant) {
        if !self.looking_up
            && !self.rechecking
            && self.receipt.has_quorum()
            && self.quorum_at.is_none()
        {
            self.quorum_at = Some(now);
        }
    }

    /// Whether the put can be answered now, the deadline aside: a replica showed a newer
    /// record; the quorum can no longer be reached; or every replica answered. After a quorum
    /// the put waits the linger for the rest (so the receipt says who else holds it).
    fn settled(&self, now: Instant, linger: Duration) -> bool {
        if self.looking_up || (self.rechecking && self.newer.is_none()) {
            return false;
        }
        let stored = self.receipt.stored.len();
        self.newer.is_some()
            || stored + self.pending.len() < self.receipt.quorum
            || self.pending.is_empty()
            || self.quorum_at.is_some_and(|at| now >= at + linger)
    }

    /// What the put answers, at the end: a newer record wins (stale), then the quorum.
    fn result(mut self) -> Result<PutReceipt, PutError> {
        if self.looking_up {
            // The lookup did not finish in time: no replica was even asked.
            self.receipt.stored.clear();
            self.receipt.quorum = self.receipt.quorum.max(1);
            return Err(PutError::NoQuorum { receipt: Box::new(self.receipt) });
        }
        for peer in self.pending.drain() {
            self.receipt.unreachable.push((peer, "no answer in time".into()));
        }
        if let Some(newer) = self.newer {
            Err(PutError::Stale { current_seq: newer.seq(), current: Some(Box::new(newer)) })
        } else if self.rechecking {
            // A replica said the set was wrong, and the lookup for the right one did not
            // finish in time: what the wrong set holds is no quorum.
            Err(PutError::NoQuorum { receipt: Box::new(self.receipt) })
        } else if self.receipt.has_quorum() {
            Ok(self.receipt)
        } else {
            Err(PutError::NoQuorum { receipt: Box::new(self.receipt) })
        }
    }
}

/// What a compare-and-swap does once its read is done.
#[derive(Debug)]
enum CasStep {
    /// The expectation holds: write.
    Write,
    /// It does not: the caller gets the newest record.
    Conflict(Option<Record>),
    /// The read failed: neither the expectation nor its failure is known.
    NoRead(GetError),
}

fn cas_step(expected: dkvs_store::Expect, read: Result<GetOutcome, GetError>) -> CasStep {
    match read {
        Ok(outcome) => {
            if expected.allows(outcome.record.as_ref().map(Record::seq)) {
                CasStep::Write
            } else {
                CasStep::Conflict(outcome.record)
            }
        }
        Err(e) => CasStep::NoRead(e),
    }
}

/// The replicas a get's answers show behind the newest record (older, or none), to repair.
fn behind(answers: &[(PeerId, Option<Record>)]) -> Option<(Record, Vec<PeerId>)> {
    let (Some(newest), _) = newest(answers) else { return None };
    let stale: Vec<PeerId> = answers
        .iter()
        .filter(|(_, r)| r.as_ref().is_none_or(|r| r.seq() < newest.seq()))
        .map(|(p, _)| *p)
        .collect();
    (!stale.is_empty()).then(|| (newest.clone(), stale))
}

impl GetOp {
    /// A replica answered: its verified record (or none) and its claim of the highest sequence
    /// it holds or remembers. An answer from a peer that was not asked, or twice, is ignored.
    fn answered(&mut self, peer: PeerId, record: Option<Record>, claim: u64, now: Instant) {
        if self.pending.remove(&peer) {
            self.answers.push((peer, record));
            self.claims.push((peer, claim));
            if self.narrow {
                self.quorum_at.get_or_insert(now);
            }
        }
        self.note_quorum(now);
    }

    /// A replica will not answer (unreachable, timed out, rate-limited, wrong message).
    fn failed(&mut self, peer: PeerId, now: Instant) {
        if self.pending.remove(&peer) {
            self.failures += 1;
            self.failed_peers.push(peer);
        }
        self.note_quorum(now);
    }

    /// The request to `peer` waits for its turn in this node's pacing.
    pub(crate) fn waits_for(&mut self, peer: PeerId) {
        self.late.insert(peer, None);
    }

    /// The request to `peer` that waited went `now`.
    pub(crate) fn went(&mut self, peer: PeerId, now: Instant) {
        if let Some(sent) = self.late.get_mut(&peer) {
            *sent = Some(now);
        }
    }

    /// When a narrow read counts `peer`, still pending, as behind (`first` is the first
    /// answer): the linger after the first answer, or after its request went if it waited
    /// for its turn in this node's pacing; never later than twice the linger after the first
    /// answer, so a request that waits long (a peer held after a refusal, a long queue) widens
    /// the read as a silent replica does, one linger later.
    fn behind_at(&self, peer: &PeerId, first: Instant, linger: Duration) -> Instant {
        let latest = first + 2 * linger;
        match self.late.get(peer) {
            None => first + linger,
            Some(None) => latest,
            Some(Some(sent)) => ((*sent).max(first) + linger).min(latest),
        }
    }

    /// When the first pending replica of a narrow read is behind, if an answer came.
    fn first_behind(&self, linger: Duration) -> Option<Instant> {
        let first = self.quorum_at?;
        if self.late.is_empty() {
            // The common case, checked at every event of the read: nothing waited.
            return (!self.pending.is_empty()).then_some(first + linger);
        }
        self.pending.iter().map(|p| self.behind_at(p, first, linger)).min()
    }

    /// A replica refused for load: it admits only so many requests a second from one peer.
    fn refused_for_load(&mut self, peer: PeerId, now: Instant) {
        self.rate_limited += usize::from(self.pending.contains(&peer));
        self.failed(peer, now);
    }

    /// Whether a narrow read must widen: a replica failed, the answers differ (an empty
    /// answer included), or some replicas are more than the linger behind the first answer
    /// (a request that waited for its turn in this node's pacing: the linger after it went,
    /// at most twice the linger after the first answer). Liars cost a read at most twice the
    /// linger: silence, an empty or an older answer, a refusal all widen it.
    fn must_widen(&self, now: Instant, linger: Duration) -> bool {
        let first = self.answers.first().map(|(_, r)| r);
        self.narrow
            && !self.looking_up
            && !self.rechecking
            && (self.failures > 0
                || self.answers.iter().any(|(_, r)| r.is_none() || Some(r) != first)
                || self.veto.as_ref().is_some_and(|own| {
                    first.is_some_and(|f| f.as_ref().is_none_or(|f| f.seq() < own.seq()))
                })
                || self.first_behind(linger).is_some_and(|at| now >= at))
    }

    /// Whether any answer holds a record (cheap: no ordering of the answers).
    fn has_record(&self) -> bool {
        self.answers.iter().any(|(_, r)| r.is_some())
    }

    /// Notes when the read quorum was reached (in the narrow phase, the first answer is noted
    /// instead, as it comes: the others may be at most the linger behind it).
    fn note_quorum(&mut self, now: Instant) {
        if !self.narrow
            && !self.looking_up
            && !self.rechecking
            && self.answers.len() >= self.quorum
            && self.quorum_at.is_none()
        {
            self.quorum_at = Some(self.not_before.map_or(now, |at| at.max(now)));
        }
    }

    /// Whether the get can be answered now (the deadline aside): every asked replica answered
    /// or failed, or a read quorum answered and the linger after it passed.
    ///
    /// A get never answers at the quorum itself, neither "not set" nor a record that a quorum
    /// agrees on: peer ids cost nothing, so a quorum of fast answers may be ids ground near
    /// the key, answering empty or replaying an older record, while the replicas that hold the
    /// newest are a few milliseconds behind. Waiting for the replicas that are still reachable
    /// (bounded by the linger) and preferring any valid record over any number of empty answers
    /// ([`newest`]) makes such liars cost a get at most the linger.
    ///
    /// While no answer holds a record, the wait is the longer `not_found_linger`: liars answer
    /// empty at once, and honest replicas across the internet may be hundreds of milliseconds
    /// behind them. It costs only a "not set" whose replicas are not all quick.
    ///
    /// A narrow read settles only when every replica it asked answered with the same record
    /// (see [`GetOp::must_widen`] for everything else).
    fn settled(&self, now: Instant, linger: Duration, not_found_linger: Duration) -> bool {
        if self.rechecking {
            return false;
        }
        if self.narrow {
            return !self.looking_up && self.pending.is_empty() && !self.must_widen(now, linger);
        }
        let wait = if self.has_record() { linger } else { linger.max(not_found_linger) };
        !self.looking_up
            && (self.pending.is_empty() || self.quorum_at.is_some_and(|at| now >= at + wait))
    }

    /// What the get answers with what the replicas said so far.
    fn outcome(&self) -> Result<GetOutcome, GetError> {
        if self.looking_up || self.rechecking {
            // The lookup did not finish in time (nor the one a replica's naming started: the
            // set asked was wrong): no replica set was found; that is no quorum, whatever is
            // local.
            return Err(GetError::NoQuorum {
                answered: 0,
                asked: 0,
                quorum: self.quorum,
                rate_limited: 0,
            });
        }
        if self.answers.len() < self.quorum {
            return Err(GetError::NoQuorum {
                answered: self.answers.len(),
                asked: self.asked,
                quorum: self.quorum,
                rate_limited: self.rate_limited,
            });
        }
        let (newest, confirmations) = newest(&self.answers);
        // Claims are unverifiable, so only a sequence that a quorum of replicas claims to have
        // reached counts: fewer liars than a quorum cannot inflate it.
        let mut claims: Vec<u64> = self.claims.iter().map(|(_, c)| *c).collect();
        claims.sort_unstable_by(|a, b| b.cmp(a));
        let claimed = claims.get(self.quorum.saturating_sub(1)).copied().unwrap_or(0);
        Ok(GetOutcome {
            highest_seq: claimed.max(newest.map_or(0, Record::seq)),
            record: newest.cloned(),
            confirmations,
            answered: self.answers.len(),
            asked: self.asked,
            source: if self.alone { crate::Source::Alone } else { crate::Source::Network },
            requests: self.requests,
        })
    }
}

impl Op {
    /// The earliest time this operation may become due without an event.
    pub(crate) fn wake(&self, config: &crate::Config) -> Instant {
        match self {
            Op::Put(op) if op.rechecking => op.deadline,
            Op::Get(op) if op.rechecking => op.deadline,
            Op::Put(op) => {
                op.quorum_at.map_or(op.deadline, |at| op.deadline.min(at + config.linger))
            }
            Op::Get(op) => {
                let linger = if op.has_record() {
                    config.linger
                } else {
                    config.linger.max(config.not_found_linger)
                };
                let at = match op.narrow {
                    true => op.first_behind(config.linger),
                    false => op.quorum_at.map(|at| at + linger),
                };
                at.map_or(op.deadline, |at| op.deadline.min(at))
            }
            Op::Push { deadline, .. } | Op::Reconcile { deadline } | Op::Sent { deadline, .. } => {
                *deadline
            }
        }
    }

    pub(crate) fn due(&self, now: Instant, config: &crate::Config) -> bool {
        match self {
            Op::Put(op) => now >= op.deadline || op.settled(now, config.linger),
            Op::Get(op) => {
                now >= op.deadline
                    || op.must_widen(now, config.linger)
                    || op.settled(now, config.linger, config.not_found_linger)
            }
            Op::Push { deadline, .. } | Op::Reconcile { deadline } | Op::Sent { deadline, .. } => {
                now >= *deadline
            }
        }
    }
}

/// The wire status of a store's refusal: what a replica answers, and (through [`refusal`])
/// what a receipt says.
fn status_of(error: &dkvs_store::PutError) -> pb::PutStatus {
    use dkvs_store::PutError as E;
    use pb::PutStatus as S;
    match error {
        E::Fork { .. } => S::Fork,
        E::ForeignOwner { .. } => S::ForeignOwner,
        E::OwnerQuota { .. } => S::OverQuota,
        E::Full { .. } => S::Full,
        E::Invalid(_) => S::Invalid,
        E::TooOld { .. } => S::TooOld,
        _ => S::Failed,
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
        S::NotReplica => Refusal::NotReplica,
        S::Stored | S::Unchanged | S::Failed | S::Unspecified => Refusal::Failed,
    }
}

/// A get request for `key`, carrying the asker's view of its neighbourhood if it has one.
fn get_request(key: &Key, hood: Option<&Neighbourhood>) -> pb::Request {
    let (farthest, known) = hood.map(Neighbourhood::hint).unwrap_or_default();
    pb::Request {
        kind: Some(pb::request::Kind::Get(pb::GetRequest {
            key: key.as_str().as_bytes().to_vec(),
            farthest,
            known,
        })),
    }
}

/// A put request for `record`, carrying the writer's view of the key's neighbourhood if it
/// has one (replication and repair send none).
pub(crate) fn put_request(record: &Record, hood: Option<&Neighbourhood>) -> pb::Request {
    let (farthest, known) = hood.map(Neighbourhood::hint).unwrap_or_default();
    pb::Request {
        kind: Some(pb::request::Kind::Put(pb::PutRequest {
            record: record.encode(),
            farthest,
            known,
        })),
    }
}

impl<E: crate::Extension> Driver<E> {
    fn now_ms(&self) -> u64 {
        dkvs_record::unix_millis()
    }

    /// A peer sent bytes that are not a record: banned, unless the only fault is a key rule
    /// that an older version did not have (an honest peer may still hold such a record).
    pub(crate) fn malformed(&mut self, peer: PeerId, error: &dkvs_record::DecodeError) {
        match error {
            dkvs_record::DecodeError::Key(e) if e.is_look_alike() => {
                tracing::debug!(%peer, error = %e, "refused a record with a look-alike key");
            }
            _ => self.ban(peer, &format!("sent a malformed record: {error}")),
        }
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
                self.malformed(peer, &e);
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
        expected: dkvs_store::Expect,
        reply: oneshot::Sender<Result<PutReceipt, PutError>>,
    ) {
        match expected {
            dkvs_store::Expect::Any => self.put_phase(record, 0, reply),
            // Compare-and-swap is checked against the network's newest record first.
            expected => {
                let key = record.key().clone();
                self.start_get(key, GetPurpose::Cas { record, expected, reply });
            }
        }
    }

    /// Writes `record` to its replicas; `read_requests`: what the read before it sent (a
    /// compare-and-swap's), counted in the receipt.
    fn put_phase(
        &mut self,
        record: Record,
        read_requests: u32,
        reply: oneshot::Sender<Result<PutReceipt, PutError>>,
    ) {
        let me = *self.swarm.local_peer_id();
        let mut receipt =
            PutReceipt { seq: record.seq(), requests: read_requests, ..PutReceipt::default() };
        match self.store.put_own(record.clone()) {
            // A full store, or an owner over quota here, is this node's problem, not the
            // record's: the replicas are asked all the same, and the receipt says so.
            Err(
                e @ (dkvs_store::PutError::Full { .. } | dkvs_store::PutError::OwnerQuota { .. }),
            ) => {
                tracing::warn!(key = %record.key(), error = %e, "own store refused a write");
                receipt.local_refusal = Some((refusal(status_of(&e)), e.to_string()));
            }
            Err(e) => {
                let _ = reply.send(Err(PutError::Local(e)));
                return;
            }
            Ok(PutOutcome::Stale { current_seq, current }) => {
                let current = current.map(|r| Box::new((*r).clone()));
                let _ = reply.send(Err(PutError::Stale { current_seq, current }));
                return;
            }
            Ok(outcome @ (PutOutcome::Stored { .. } | PutOutcome::Unchanged)) => {
                // Held already, the watchers here may lack it (a read stored it unannounced).
                self.watches.deliver(&record);
                if matches!(outcome, PutOutcome::Stored { .. }) {
                    self.publish(&record);
                }
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
            hood: None,
            rechecking: false,
            held_here: false,
        }));
        self.look_up(op, key);
    }

    pub(crate) fn start_get(&mut self, key: Key, purpose: GetPurpose) {
        let me = *self.swarm.local_peer_id();
        let local = self.store.get(key.as_str()).map(|r| (*r).clone());
        let local_claim = self.store.highest_seq(key.as_str()).unwrap_or(0);
        let deadline = Instant::now() + self.config.operation_timeout;
        let lookup = kad_key(&key);
        // A plain read starts narrow; a writer choosing its next sequence, a compare-and-swap
        // and a republish want every replica's claim of the highest sequence, so they ask the
        // whole set at once.
        let narrow = self.narrow_read().is_some()
            && matches!(purpose, GetPurpose::Reply { every: false, .. } | GetPurpose::Warm { .. });
        let op = self.new_op(Op::Get(GetOp {
            key,
            purpose: Some(purpose),
            pending: HashSet::new(),
            looking_up: true,
            answers: vec![(me, local)],
            claims: vec![(me, local_claim)],
            asked: 1,
            quorum: 1,
            deadline,
            quorum_at: None,
            alone: false,
            requests: 0,
            narrow,
            reserve: Vec::new(),
            held_back: None,
            failures: 0,
            rate_limited: 0,
            failed_peers: Vec::new(),
            veto: None,
            asked_at: None,
            not_before: None,
            hood: None,
            rechecking: false,
            checked: None,
            late: HashMap::new(),
        }));
        self.look_up(op, lookup);
    }

    /// Finds the replicas of the key whose Kademlia key is `lookup` for operation `op`: from
    /// this node's routing table when it is trusted and covers the key
    /// ([`Driver::local_neighbourhood`]; the replicas asked then check it), by a Kademlia
    /// lookup otherwise.
    fn look_up(&mut self, op: OpId, lookup: Vec<u8>) {
        // A replica reads at most MAX_KNOWN fingerprints: a larger k gets no check, so no table.
        let checked = self.config.replication <= crate::nearby::MAX_KNOWN;
        let table = if self.table_trusted.trusted() && checked {
            self.local_neighbourhood(&lookup)
        } else {
            None
        };
        if table.is_none() && checked {
            self.probe_table(&lookup);
        }
        if let Some(peers) = table {
            self.on_closest_peers(op, peers, Found::Table);
        } else {
            let query = self.swarm.behaviour_mut().kad.get_closest_peers(lookup);
            self.lookups.insert(query, (op, self.table_trusted.began(Instant::now())));
            self.lookup_ends.started(query, Instant::now());
        }
    }

    /// A replica (`namer`) of operation `id` named peers closer to `key` than the routing
    /// table gave (`named`): the table is not trusted until a lookup again finds only peers it
    /// holds, and the operation looks the key up (it waits for the lookup, then asks whom it
    /// finds). If the lookup finds none of the peers named, the namer's naming is ignored for
    /// [`NAMING_PENALTY`] ([`Driver::lookup_judged`]).
    fn recheck(&mut self, id: OpId, key: &Key, namer: PeerId, named: Vec<PeerId>) {
        tracing::debug!(%key, %namer, "a replica named a closer peer: looking the key up");
        // Peers the table holds (unreachable from here, or not connected) are no peers it
        // lacks: this operation looks the key up, and the others still trust the table.
        if !named.iter().all(|p| self.in_table(p)) {
            self.distrust();
        }
        self.rechecks.insert(id, (namer, named));
        let query = self.swarm.behaviour_mut().kad.get_closest_peers(kad_key(key));
        self.lookups.insert(query, (id, self.table_trusted.began(Instant::now())));
        self.lookup_ends.started(query, Instant::now());
    }

    /// Whether `peer`'s naming of closer peers is ignored now (a recheck it caused found none).
    fn deaf(&self, peer: &PeerId) -> bool {
        self.deaf_to.get(peer).is_some_and(|until| *until > Instant::now())
    }

    /// The lookup that operation `id`'s recheck ran found `found`: a namer none of whose peers
    /// it found is not heard for [`NAMING_PENALTY`] (an honest replica with a stale view costs
    /// the same, and is heard again after it). A lookup that timed out (`!complete`), or heard
    /// from nobody, judges nobody: it may have stopped short of the peers named, and an honest
    /// replica unheard could hide a newer record from this node's reads for the whole penalty.
    /// A namer whose accomplices stall every such lookup then costs each operation that asks
    /// it a lookup, time and not a wrong answer; so does one that names peers of this node's
    /// routing table, which no lookup judges.
    fn lookup_judged(&mut self, id: OpId, found: &[PeerId], complete: bool) {
        let Some((namer, named)) = self.rechecks.remove(&id) else { return };
        if !complete || found.is_empty() || named.iter().any(|p| found.contains(p)) {
            return;
        }
        // A peer this node met is no invention: alive to the namer, though unreachable from
        // here (`Driver::unreachable`), or gone since; either way an honest replica may name
        // it, and one unheard would no longer check this node's table for any key.
        if named.iter().any(|p| self.in_table(p)) {
            return;
        }
        let now = Instant::now();
        if self.deaf_to.len() >= MAX_DEAF {
            self.deaf_to.retain(|_, until| *until > now);
        }
        if self.deaf_to.len() < MAX_DEAF {
            tracing::debug!(%namer, "named peers a lookup did not find: its naming is ignored");
            self.deaf_to.insert(namer, now + NAMING_PENALTY);
        }
    }

    /// How many replicas a plain read asks first, or `None` to ask them all at once.
    ///
    /// A put succeeds once a write quorum W of the k closest it found acknowledged it. A read
    /// that found the same k closest and asks a sample of k - W + 1 of them meets at least one
    /// acknowledging replica of every such write; two more allow for a writer's and a reader's
    /// lookups that differ by two peers, as they do in a network that changes. With k = 20
    /// and majorities that is 12 of the 20: the read sends 12 requests instead of 20 when the
    /// 12 agree (docs/benchmarks.md has the figures). A replica naming a closer peer than a
    /// set taken from the routing table ([`crate::nearby`]) turns the read into a full one
    /// over the replicas a lookup finds.
    ///
    /// The sample is random, so ids ground near a key cannot make themselves the ones asked;
    /// any disagreement, failure or straggler widens the read to all k under the usual rules,
    /// where any valid newer record wins. What it gives up: a write that fewer than W of the
    /// reader's k hold (a writer whose lookup saw a very different network, or a network whose
    /// writers lowered their write quorum) can be missed where reading all k would find it;
    /// liars that acknowledge puts they drop and replay an older record are outvoted only when
    /// the sample meets an honest replica (certain while fewer than 12 of the 20 found lie;
    /// the chance that a sample of 12 holds only liars is 1 in 126 thousand with 12 liars, and
    /// 1 in 277 with 15; with fewer than 20 found it is higher). The 8 not asked are not
    /// repaired by the read (replication brings them up to date). Set `read_quorum` to
    /// anything but the majority to always ask all k.
    pub(crate) fn narrow_read(&self) -> Option<usize> {
        let k = self.config.replication;
        let majorities = self.config.read_quorum == crate::Quorum::Majority
            && self.config.write_quorum == crate::Quorum::Majority;
        let n = k.saturating_sub(crate::Quorum::Majority.of(k)) + 1 + NARROW_SLACK;
        (majorities && n < k).then_some(n)
    }

    /// Widens a read: the replicas not asked yet (the narrow read's reserve, and `extra`,
    /// found by a lookup) are asked, and this node's own answer counts if it was held back;
    /// the answers so far still count.
    fn widen(&mut self, id: OpId, extra: Vec<PeerId>) {
        let me = *self.swarm.local_peer_id();
        let Some(Op::Get(get)) = self.ops.get_mut(&id) else { return };
        get.narrow = false;
        // The replicas asked now get the round trip the first answer took, then the linger
        // (the answers in already reach the quorum: without this they would get the linger).
        let now = Instant::now();
        let rtt =
            get.quorum_at.zip(get.asked_at).map(|(first, at)| first.saturating_duration_since(at));
        get.not_before = Some(now + rtt.unwrap_or_default());
        get.quorum_at = None;
        if let Some((record, claim)) = get.held_back.take() {
            get.answers.push((me, record));
            get.claims.push((me, claim));
            get.asked += 1;
        }
        let mut rest = std::mem::take(&mut get.reserve);
        rest.extend(extra);
        get.pending.extend(rest.iter().copied());
        get.asked += rest.len();
        get.quorum = self.config.read_quorum.of(get.asked);
        get.requests = get.requests.saturating_add(rest.len() as u32);
        let request = get_request(&get.key, get.hood.as_deref());
        for peer in rest {
            self.send(id, peer, request.clone());
        }
        self.check_get(id);
    }

    /// Watches `key`: subscribes to its topic, then reads it, and hands `reply` the watch once
    /// the read answered, begun from the newest version found ([`Watch::start_seq`]).
    pub(crate) fn start_watch(&mut self, key: Key, reply: oneshot::Sender<Watch>) {
        let baseline = self.store.highest_seq(key.as_str()).unwrap_or(0);
        let (watch, new) = self.watches.add(key.clone(), baseline);
        if new && let Err(e) = self.swarm.behaviour_mut().gossipsub.subscribe(&topic_of(&key)) {
            tracing::warn!(%key, error = %e, "watch subscription failed");
        }
        // Reading the key connects this node to its replicas, which publish its updates. The
        // watch begins where the read ends: a version the read finds was written before
        // `watch` returned, and one written after it is newer, however soon it comes (a read
        // that stored it here unannounced, with the replicas' gossip not yet aware of this
        // watcher, once made such a version look old and kept it from the watcher for good).
        self.start_get(key, GetPurpose::Warm { first: Some((Box::new(watch), reply)) });
    }

    /// Puts `record` in this node's store. A version the store holds then (stored now, or
    /// held already, perhaps stored unannounced by a read) goes to this node's watchers of
    /// the key that lack it: every record from elsewhere is stored through here.
    ///
    /// A key this node's application watches is its own interest: its versions may use the
    /// share of the budget kept for the user's own records, as the user's writes do. A light
    /// node keeps all of its store for those, and its watches of other accounts' keys heard
    /// nothing (every version refused for room, none handed over, the watch begun at 0). What
    /// that costs the user's share: one record (its newest version) per key the application
    /// watches, at most the owner's quota per owner, kept until it expires (not when the
    /// watch ends); peers can put there only versions of keys watched.
    pub(crate) fn hold(&mut self, record: &Record) -> Result<PutOutcome, dkvs_store::PutError> {
        let outcome = if self.watches.is_watched(record.key()) {
            self.store.put_own(record.clone())
        } else {
            self.store.put(record.clone())
        };
        if is_version(record, &outcome) {
            self.watches.deliver(record);
        }
        outcome
    }

    /// Publishes a version this node stored to the key's watchers elsewhere.
    pub(crate) fn publish(&mut self, record: &Record) {
        // No subscribed peer is the common case; that is not an error.
        let _ =
            self.swarm.behaviour_mut().gossipsub.publish(topic_of(record.key()), record.encode());
    }

    pub(crate) fn on_gossip_event(&mut self, event: gossipsub::Event) {
        if let gossipsub::Event::Subscribed { peer_id, topic } = &event {
            // A watcher of a key this node holds: its connection is to stay.
            self.on_subscribed(*peer_id, topic.as_str());
            return;
        }
        let gossipsub::Event::Message { propagation_source, message_id, message } = event else {
            return;
        };
        let report = |driver: &mut Self, acceptance| {
            let _ = driver.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                &message_id,
                &propagation_source,
                acceptance,
            );
        };
        // The admission step for gossip: gossipsub bounds the size (max_transmit_size) and
        // checks the author's signature; the rate is the author's (a forwarder is usually an
        // honest relay), and a banned author or forwarder is not heard.
        let author = message.source.unwrap_or(propagation_source);
        let admitted = !self.defence.is_banned(&propagation_source)
            && match self.defence.admit_gossip(author, Instant::now()) {
                Ok(()) => true,
                Err(refused) => {
                    if self.defence.is_banned(&author) {
                        self.ban(author, &format!("gossip: {refused}"));
                    }
                    false
                }
            };
        if !admitted {
            return report(self, gossipsub::MessageAcceptance::Ignore);
        }
        self.used(propagation_source);
        if self.ext_topics.contains(&message.topic) {
            let topic = message.topic.to_string();
            let gossip =
                crate::GossipMessage { topic, data: message.data, source: propagation_source };
            let acceptance = self.extension_gossip(gossip);
            return report(self, acceptance);
        }
        let Some((key, delivered)) = self.watches.watched(&message.topic) else {
            // A topic nobody here validates is not forwarded (and not left pending).
            return report(self, gossipsub::MessageAcceptance::Ignore);
        };
        // A version this watcher has delivered already is old news (a replay, or a copy that
        // outlived gossipsub's duplicate cache): dropped for a decode and a lookup, before any
        // signature work, and not forwarded.
        if Record::decode(&message.data).is_ok_and(|r| r.key() == &key && r.seq() <= delivered) {
            return report(self, gossipsub::MessageAcceptance::Ignore);
        }
        // A watcher delivers (and forwards) only versions (`is_version`): what its own store
        // accepts under every rule, ownership included (a validly signed record of a squatter
        // is not a new version), or had no room for. A record that breaks a rule of its own,
        // or a squatter's, is rejected; what depends on this node (its room, its disk, its
        // retention, a fork that a node with no room forwarded unknowing) is only not
        // forwarded. (Rejection would count against the sender were peer scoring on.)
        let acceptance = match self.verified(propagation_source, &key, &message.data) {
            Some(record) => {
                let held = self.hold(&record);
                match held {
                    _ if is_version(&record, &held) => gossipsub::MessageAcceptance::Accept,
                    Err(
                        dkvs_store::PutError::Invalid(_)
                        | dkvs_store::PutError::ForeignOwner { .. },
                    ) => gossipsub::MessageAcceptance::Reject,
                    _ => gossipsub::MessageAcceptance::Ignore,
                }
            }
            None => gossipsub::MessageAcceptance::Reject,
        };
        report(self, acceptance);
    }

    /// Operation `id`'s replica set: `peers`, as `found` gave them.
    pub(crate) fn on_closest_peers(&mut self, id: OpId, peers: Vec<PeerId>, found: Found) {
        let me = *self.swarm.local_peer_id();
        let k = self.config.replication;
        let (lookup_requests, complete, from_table, kept) = match found {
            Found::Lookup { requests, complete, kept } => (requests, complete, false, kept),
            Found::Table => (0, true, true, Vec::new()),
        };
        // `peers` are the places found, kept ones among them; `live`, those to ask.
        let live: Vec<PeerId> = peers.iter().filter(|p| !kept.contains(p)).copied().collect();
        // A node in Kademlia client mode is in nobody's routing table, so no reader would ever
        // ask it: it counts as a replica only when it is alone. A server counts when its
        // lookup found replicas, or when its only peers are clients (it is then the whole
        // replica set of its network, and they write through it). A lookup that found nobody
        // in any other case (peers stalled, a partition) is no quorum, not a replica set of one.
        let alone = self.alone();
        let only_clients = self.only_clients();
        let server = self.swarm.behaviour().kad.mode() == libp2p::kad::Mode::Server;
        let me_counts = alone || (server && (!live.is_empty() || only_clients));
        let candidates: Vec<PeerId> =
            peers.iter().copied().chain(me_counts.then_some(me)).collect();
        let narrow_read = self.narrow_read();
        let Some(op) = self.ops.get_mut(&id) else { return };
        match op {
            Op::Put(put) if put.rechecking => {
                let (replicas, kept) = replica_places(put.record.key(), candidates, &kept, k);
                self.lookup_judged(id, &live, complete);
                let Some(Op::Put(put)) = self.ops.get_mut(&id) else { return };
                let before: Vec<PeerId> = put.pending.iter().copied().collect();
                let remote =
                    put.rechecked(replicas, kept, me, (self.config.write_quorum, narrow_read));
                // The requests still waiting their turn for peers outside the set found are
                // not sent: their answers would no longer count.
                let dropped: Vec<PeerId> =
                    before.into_iter().filter(|p| !put.pending.contains(p)).collect();
                let unsent = self.outbox.drop_waiting(id, &dropped) as u32;
                let Some(Op::Put(put)) = self.ops.get_mut(&id) else { return };
                // The receipt counts the requests sent: those dropped never went.
                put.receipt.requests = put
                    .receipt
                    .requests
                    .saturating_sub(unsent)
                    .saturating_add(lookup_requests)
                    .saturating_add(remote.len() as u32);
                let request = put_request(&put.record, None);
                for peer in remote {
                    self.send(id, peer, request.clone());
                }
                self.check_put(id);
            }
            Op::Get(get) if get.rechecking => {
                let _ = get;
                self.lookup_judged(id, &live, complete);
                if live.is_empty() {
                    // The lookup heard from nobody (every peer stalled, a partition): the set
                    // a replica doubted is not confirmed, and no other was found. The get
                    // fails as having no quorum, as a put does here, rather than answer from
                    // a set that may have missed the key's newest replicas.
                    self.finish_op(id, Instant::now());
                    return;
                }
                let Some(Op::Get(get)) = self.ops.get_mut(&id) else { return };
                get.rechecking = false;
                // The set is the lookup's now: no hints, so no second recheck.
                get.hood = None;
                get.requests = get.requests.saturating_add(lookup_requests);
                let mut found = live;
                found.retain(|p| {
                    *p != me
                        && !get.failed_peers.contains(p)
                        && !get.pending.contains(p)
                        && !get.reserve.contains(p)
                        && !get.answers.iter().any(|(a, _)| a == p)
                });
                self.widen(id, found);
            }
            Op::Put(put) => {
                let (replicas, kept) = replica_places(put.record.key(), candidates, &kept, k);
                // The neighbourhood holds this node when it counts: it is one of the k.
                if from_table {
                    let hood = Neighbourhood::new(kad_key(put.record.key()), k, replicas.clone());
                    put.hood = Some(Box::new(hood));
                }
                let quorum = (self.config.write_quorum, narrow_read);
                let remote = put.replicas_found(replicas, kept, me, alone, quorum);
                put.receipt.requests = (put.receipt.requests)
                    .saturating_add(lookup_requests)
                    .saturating_add(remote.len() as u32);
                let request = put_request(&put.record, put.hood.as_deref());
                for peer in remote {
                    self.send(id, peer, request.clone());
                }
                self.check_put(id);
            }
            Op::Get(get) => {
                let mut replicas = live;
                replicas.retain(|p| *p != me);
                // The neighbourhood holds this node when it counts: it is one of the k.
                if from_table {
                    let members = closest(&get.key, candidates, k);
                    get.hood = Some(Box::new(Neighbourhood::new(kad_key(&get.key), k, members)));
                }
                get.looking_up = false;
                get.alone = alone;
                if !me_counts {
                    let own = get.answers.iter().find(|(p, _)| *p == me);
                    get.veto = own.and_then(|(_, r)| r.clone()).map(Box::new);
                    get.answers.retain(|(p, _)| *p != me);
                    get.claims.retain(|(p, _)| *p != me);
                }
                // Narrow only on a lookup that ended (one that timed out may have missed the
                // closest) and that found more replicas than the sample.
                let sample = narrow_read.filter(|n| get.narrow && complete && replicas.len() > *n);
                get.narrow = sample.is_some();
                get.asked = replicas.len() + usize::from(me_counts);
                get.quorum = self.config.read_quorum.of(get.asked);
                if let Some(n) = sample {
                    // A random order: which replicas are asked first is nobody's choice.
                    let order = std::collections::hash_map::RandomState::new();
                    replicas.sort_by_cached_key(|p| std::hash::BuildHasher::hash_one(&order, p));
                    get.reserve = replicas.split_off(n);
                    // This node's own answer counts in the sample when it is one of the k
                    // closest, or when it holds a record (a read never goes back on what this
                    // node holds); otherwise it is held back until the read widens.
                    let local = get.answers.iter().position(|(p, _)| *p == me);
                    let among = closest(
                        &get.key,
                        get.reserve.iter().chain(&replicas).copied().chain([me]),
                        k,
                    )
                    .contains(&me);
                    if let Some(at) = local.filter(|at| !among && get.answers[*at].1.is_none()) {
                        let (_, record) = get.answers.remove(at);
                        let claim = get.claims.iter().position(|(p, _)| *p == me);
                        let claim = claim.map_or(0, |c| get.claims.remove(c).1);
                        get.held_back = Some((record, claim));
                    }
                    get.asked =
                        replicas.len() + usize::from(get.answers.iter().any(|(p, _)| *p == me));
                }
                get.pending = replicas.iter().copied().collect();
                get.asked_at = Some(Instant::now());
                get.requests = lookup_requests.saturating_add(replicas.len() as u32);
                let request = get_request(&get.key, get.hood.as_deref());
                for peer in replicas {
                    self.send(id, peer, request.clone());
                }
                self.check_get(id);
            }
            Op::Push { .. } | Op::Reconcile { .. } | Op::Sent { .. } => {}
        }
    }

    pub(crate) fn on_records_event(&mut self, event: crate::lane::Event) {
        use crate::lane::Event;
        match event {
            Event::Request { peer, request, channel } => {
                let response = self.answer(peer, request);
                let held = [pb::PutStatus::Stored as i32, pb::PutStatus::Unchanged as i32];
                if let Some(pb::response::Kind::Put(put)) = &response.kind
                    && held.contains(&put.status)
                {
                    // "Stored" (or "unchanged") promises the record survives this node.
                    self.promise(crate::durable::Promise::Response(channel, response));
                } else {
                    let _ = self.swarm.behaviour_mut().records.send_response(channel, response);
                }
            }
            Event::Response { request_id, response, .. } => {
                if let Some((op, peer)) = self.requests.remove(&request_id) {
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    kad.record_ended(peer, request_id, true, Instant::now());
                    self.on_response(op, peer, response);
                }
            }
            Event::Failure { request_id, error, .. } => {
                if let Some((op, peer)) = self.requests.remove(&request_id) {
                    // A request its peer let time out stays owed: the peer's silence goes on
                    // counting (`crate::stalled`) until it answers anything.
                    use crate::lane::Failure;
                    if !matches!(error, Failure::Timeout(_) | Failure::Unanswered(_)) {
                        let kad = &mut self.swarm.behaviour_mut().kad;
                        kad.record_ended(peer, request_id, false, Instant::now());
                    }
                    self.on_failure(op, peer, error.to_string());
                }
            }
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
        let limit = match request.kind {
            Some(pb::request::Kind::Reconcile(_)) => crate::codec::MAX_FRAME_LEN,
            _ => crate::codec::MAX_MESSAGE_LEN,
        };
        if !self.admit(peer, request.encoded_len(), limit) {
            return match request.kind {
                Some(pb::request::Kind::Get(_)) => pb::Response {
                    kind: Some(pb::response::Kind::Get(pb::GetResponse {
                        rate_limited: true,
                        ..pb::GetResponse::default()
                    })),
                },
                Some(pb::request::Kind::Reconcile(_)) => pb::Response {
                    kind: Some(pb::response::Kind::Reconcile(pb::ReconcileResponse {
                        message: Vec::new(),
                        refused: "too many requests".into(),
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
            Some(pb::request::Kind::Reconcile(reconcile)) => pb::Response {
                kind: Some(pb::response::Kind::Reconcile(self.answer_reconcile(peer, reconcile))),
            },
            Some(pb::request::Kind::Put(put)) => {
                let decoded = Record::decode(&put.record);
                let target = decoded.as_ref().ok().map(|r| kad_key(r.key()));
                let mut response = match decoded {
                    Err(e) => {
                        self.malformed(peer, &e);
                        put_response(S::Invalid, e.to_string())
                    }
                    Ok(record) if !self.serves_key(record.key()) => put_response(
                        S::NotReplica,
                        format!("this node is not a replica of {}", record.key()),
                    ),
                    Ok(record) => match self.hold(&record) {
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
                            put_response(status_of(&e), e.to_string())
                        }
                    },
                };
                if let Some(target) = target {
                    response.closer = self.closer_than(peer, &target, &put.farthest, &put.known);
                    while response.encoded_len() > crate::codec::MAX_MESSAGE_LEN
                        && response.closer.pop().is_some()
                    {}
                }
                pb::Response { kind: Some(pb::response::Kind::Put(response)) }
            }
            Some(pb::request::Kind::Get(get)) => {
                let key = std::str::from_utf8(&get.key).unwrap_or_default();
                let record = self.store.get(key).map(|r| r.encode()).unwrap_or_default();
                let highest_seq = self.store.highest_seq(key).unwrap_or(0);
                let mut response = pb::GetResponse {
                    record,
                    highest_seq,
                    rate_limited: false,
                    closer: self.closer_than(peer, &get.key, &get.farthest, &get.known),
                };
                // Named peers never push an answer over the message limit.
                while response.encoded_len() > crate::codec::MAX_MESSAGE_LEN
                    && response.closer.pop().is_some()
                {}
                pb::Response { kind: Some(pb::response::Kind::Get(response)) }
            }
            None => pb::Response { kind: None },
        }
    }

    fn on_response(&mut self, id: OpId, peer: PeerId, response: pb::Response) {
        // A peer refusing for load gets nothing for a moment, whatever the answer was to.
        let refused = match &response.kind {
            Some(pb::response::Kind::Get(answer)) => answer.rate_limited,
            Some(pb::response::Kind::Put(answer)) => {
                answer.status == pb::PutStatus::RateLimited as i32
            }
            _ => false,
        };
        if refused {
            self.outbox.refused_by(peer, Instant::now());
        }
        let Some(op) = self.ops.get(&id) else { return };
        match (op, response.kind) {
            (Op::Put(put), Some(pb::response::Kind::Put(answer))) => {
                let key = put.record.key().clone();
                let seq = put.record.seq();
                let status = pb::PutStatus::try_from(answer.status).unwrap_or_default();
                // A claim of something newer counts only with the newer record, verified.
                // ...and only from the same owner (or one it handed the name to): another
                // owner's record is a squatter's, which the quorum, not one replica, outvotes.
                let owner = put.record.owner().clone();
                let newer = match status {
                    pb::PutStatus::Stale | pb::PutStatus::Conflict => {
                        self.verified(peer, &key, &answer.current).filter(|r| {
                            r.seq() > seq
                                && (*r.owner() == owner
                                    || r.transfer().is_some_and(|t| *t.from() == owner))
                        })
                    }
                    _ => None,
                };
                let me = *self.swarm.local_peer_id();
                let banned = self.defence.is_banned(&peer);
                let Some(Op::Put(put)) = self.ops.get_mut(&id) else { return };
                // A replica naming a closer peer than the table gave: the table was wrong about
                // this key, and a lookup finds the replica set after all.
                let named = match &put.hood {
                    Some(hood) if put.pending.contains(&peer) && !put.rechecking && !banned => {
                        hood.closer_named(me, &answer.closer)
                    }
                    _ => Vec::new(),
                };
                put.answered(peer, status, answer.reason, newer, Instant::now());
                if !named.is_empty() && !self.deaf(&peer) {
                    if let Some(Op::Put(put)) = self.ops.get_mut(&id) {
                        put.rechecking = true;
                    }
                    self.recheck(id, &key, peer, named);
                }
                self.check_put(id);
            }
            (Op::Get(get), Some(pb::response::Kind::Get(answer))) => {
                let key = get.key.clone();
                if answer.rate_limited {
                    if let Some(Op::Get(get)) = self.ops.get_mut(&id) {
                        get.refused_for_load(peer, Instant::now());
                    }
                    return self.check_get(id);
                }
                let now_ms = self.now_ms();
                let limits = &self.store.config().limits;
                let record = match get.checked.as_deref() {
                    Some((bytes, record))
                        if *bytes == answer.record
                            && record.validate_unsigned(now_ms, limits).is_ok() =>
                    {
                        Some(record.clone())
                    }
                    _ => {
                        let record = self.verified(peer, &key, &answer.record);
                        if let (Some(record), Some(Op::Get(get))) = (&record, self.ops.get_mut(&id))
                        {
                            get.checked = Some(Box::new((answer.record.clone(), record.clone())));
                        }
                        record
                    }
                };
                let me = *self.swarm.local_peer_id();
                let banned = self.defence.is_banned(&peer);
                let Some(Op::Get(get)) = self.ops.get_mut(&id) else { return };
                // A replica naming a closer peer than the table gave: the table was wrong about
                // this key, and a lookup finds the replica set after all.
                let named = match &get.hood {
                    Some(hood) if get.pending.contains(&peer) && !get.rechecking && !banned => {
                        hood.closer_named(me, &answer.closer)
                    }
                    _ => Vec::new(),
                };
                get.answered(peer, record, answer.highest_seq, Instant::now());
                if !named.is_empty() && !self.deaf(&peer) {
                    if let Some(Op::Get(get)) = self.ops.get_mut(&id) {
                        get.rechecking = true;
                    }
                    self.recheck(id, &key, peer, named);
                }
                self.check_get(id);
            }
            (Op::Push { .. }, _) => self.push_answered(id),
            (Op::Reconcile { .. }, Some(pb::response::Kind::Reconcile(answer))) => {
                self.on_reconcile_answer(id, peer, answer)
            }
            (Op::Sent { key, seq, .. }, Some(pb::response::Kind::Put(answer))) => {
                let (key, seq) = (key.clone(), *seq);
                self.ops.remove(&id);
                use pb::PutStatus as S;
                match pb::PutStatus::try_from(answer.status).unwrap_or_default() {
                    // Held there already, or refused for good by the record's own rules: not
                    // sent again while the peer stays connected.
                    S::Unchanged
                    | S::Stale
                    | S::Fork
                    | S::ForeignOwner
                    | S::Invalid
                    | S::TooOld => self.replication.declined(peer, key, seq),
                    // Load: the peer's queue waits a moment, and the record is sent again.
                    S::RateLimited => self.replication.back_off(peer, key),
                    // Stored; or refused for now (full, over quota, not a replica in its view
                    // today, failed): the next round finds it again.
                    _ => {}
                }
            }
            _ => self.on_failure(id, peer, "answered with the wrong kind of message".into()),
        }
    }

    pub(crate) fn on_failure(&mut self, id: OpId, peer: PeerId, reason: String) {
        match self.ops.get_mut(&id) {
            Some(Op::Put(put)) => {
                put.failed(peer, reason, Instant::now());
                self.check_put(id);
            }
            Some(Op::Get(get)) => {
                get.failed(peer, Instant::now());
                self.check_get(id);
            }
            Some(Op::Push { .. }) => self.push_answered(id),
            Some(Op::Reconcile { .. }) => {
                tracing::debug!(%peer, %reason, "replication round failed");
                self.end_round(id);
            }
            Some(Op::Sent { .. }) => {
                self.ops.remove(&id);
            }
            None => {}
        }
    }

    fn check_put(&mut self, id: OpId) {
        let Some(Op::Put(put)) = self.ops.get_mut(&id) else { return };
        let now = Instant::now();
        put.note_quorum(now);
        // After the quorum, the linger waits for answers on their way, not for requests held
        // here for longer than it (a replica that answered "rate limited" a moment ago): those
        // are held back at the end.
        let linger = self.config.linger;
        let unsent = !put.looking_up
            && !put.rechecking
            && put.quorum_at.is_some()
            && !put.pending.is_empty()
            && put.pending.iter().all(|p| self.outbox.held_past(id, p, now + linger));
        if unsent || put.settled(now, self.config.linger) {
            self.finish_op(id, now);
        } else {
            self.schedule(id);
        }
    }

    pub(crate) fn check_get(&mut self, id: OpId) {
        let Some(Op::Get(get)) = self.ops.get_mut(&id) else { return };
        let now = Instant::now();
        get.note_quorum(now);
        if now >= get.deadline || get.settled(now, self.config.linger, self.config.not_found_linger)
        {
            self.finish_op(id, now);
        } else if get.must_widen(now, self.config.linger) {
            self.widen(id, Vec::new());
        } else {
            self.schedule(id);
        }
    }

    /// Answers a get's caller (once), with what the replicas said so far.
    fn reply_get(&mut self, id: OpId) {
        let Some(Op::Get(get)) = self.ops.get_mut(&id) else { return };
        let Some(purpose) = get.purpose.take() else { return };
        let outcome = get.outcome();
        match purpose {
            GetPurpose::Reply { reply, .. } => {
                let _ = reply.send(outcome);
            }
            // The watch's read connected this node to the key's replicas: keep them.
            GetPurpose::Warm { first } => {
                let me = *self.swarm.local_peer_id();
                let answered = get.answers.iter().map(|(p, _)| *p).filter(|p| *p != me).collect();
                let key = get.key.clone();
                // As from gossip, only what this node's store accepts under every rule (a
                // squatter's validly signed record is not a version); the watchers that lack
                // it get it as it is stored.
                let found = match outcome {
                    Ok(GetOutcome { record: Some(record), .. }) => {
                        let held = self.hold(&record);
                        is_version(&record, &held).then_some(record)
                    }
                    _ => None,
                };
                // A new watch's first read is no sweep's: a sweep's read of the key may be
                // under way still.
                let swept = first.is_none();
                if let Some((mut watch, reply)) = first {
                    let held = self.store.get(key.as_str()).map(|r| (*r).clone());
                    watch.begin_at(found, held, self.now_ms());
                    let _ = reply.send(*watch);
                }
                self.watch_read(&key, answered, swept);
            }
            GetPurpose::Republish { generation } => {
                let key = get.key.clone();
                self.republish_found(&key, generation, outcome);
            }
            GetPurpose::Cas { record, expected, reply } => {
                let read_requests = outcome.as_ref().map_or(0, |read| read.requests);
                match cas_step(expected, outcome) {
                    CasStep::Write => self.put_phase(record, read_requests, reply),
                    CasStep::Conflict(current) => {
                        let current = current.map(Box::new);
                        let _ = reply.send(Err(PutError::Conflict { current }));
                    }
                    CasStep::NoRead(read) => {
                        let _ = reply.send(Err(PutError::NoReadQuorum { read }));
                    }
                }
            }
        }
    }

    /// `op`'s request to `peer` was held back by the peer's rate limit, applied here
    /// ([`crate::pace`]): what the operation says of that peer.
    pub(crate) fn refused_here(&mut self, op: OpId, peer: PeerId) {
        match self.ops.get_mut(&op) {
            Some(Op::Put(put)) => {
                put.held_back(peer, "too much already waits for this peer");
                self.check_put(op);
            }
            Some(Op::Get(get)) => {
                get.refused_for_load(peer, Instant::now());
                self.check_get(op);
            }
            _ => self.on_failure(op, peer, "held back: rate limited".into()),
        }
    }

    /// Ends an operation: answers its caller if not yet answered, and for a get, repairs the
    /// replicas that answered with an older record or none.
    pub(crate) fn finish_op(&mut self, id: OpId, now: Instant) {
        // Requests still waiting for their turn were held back by the peers' rate limits,
        // applied here ([`crate::pace`]): that is what the answer says of those peers.
        for peer in self.outbox.take_waiting(id) {
            match self.ops.get_mut(&id) {
                Some(Op::Put(put)) => put.held_back(peer, "still waiting its turn at the end"),
                Some(Op::Get(get)) => get.refused_for_load(peer, now),
                _ => {}
            }
        }
        if matches!(self.ops.get(&id), Some(Op::Get(_))) {
            self.reply_get(id);
        }
        self.rechecks.remove(&id);
        let Some(op) = self.ops.remove(&id) else { return };
        match op {
            Op::Put(mut put) => {
                let reply = put.reply.take();
                let result = put.result();
                if let Some(reply) = reply {
                    // The receipt counts this node's own copy: it goes once that is durable.
                    self.promise(crate::durable::Promise::Receipt(reply, result));
                }
            }
            Op::Get(get) => self.repair(get),
            Op::Push { .. } => {}
            Op::Reconcile { .. } => self.end_round(id),
            Op::Sent { .. } => {}
        }
    }

    fn repair(&mut self, get: GetOp) {
        let me = *self.swarm.local_peer_id();
        let Some((newest, stale)) = behind(&get.answers) else { return };
        if stale.contains(&me) {
            let _ = self.hold(&newest);
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
        let request = put_request(record, None);
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

    /// Owners republish: every kept key whose record would expire before the next two rounds
    /// is read from the network first, then re-signed from the newest version found (next
    /// sequence, fresh expiry) and put again. Reading first means a stale local copy is never
    /// re-signed over a newer value or a delete made elsewhere.
    pub(crate) fn republish(&mut self) {
        let now = self.now_ms();
        let horizon = self.republish_horizon_ms();
        let due: Vec<Key> = self
            .kept
            .keys()
            .filter(|key| {
                self.store
                    .get(key.as_str())
                    .is_none_or(|held| held.expires_at_ms() <= now + horizon)
            })
            .cloned()
            .collect();
        for key in due {
            self.read_kept(key);
        }
    }

    /// Reads the network's newest record of `key`, kept alive, for its keep: unless a read
    /// for the same keep is under way.
    pub(crate) fn read_kept(&mut self, key: Key) {
        let Some(&(_, _, generation)) = self.kept.get(&key) else { return };
        if self.kept_reading.insert((key.clone(), generation)) {
            self.start_get(key, GetPurpose::Republish { generation });
        }
    }

    /// A kept record is re-signed when it would expire within this many milliseconds: two
    /// rounds, so that one failed round does not let it lapse.
    fn republish_horizon_ms(&self) -> u64 {
        2 * u64::try_from(self.config.republish_interval.as_millis()).unwrap_or(u64::MAX / 2)
    }

    /// The second half of a republish: `found` is the network's newest record for `key`, read
    /// for its keep of `generation` (a read for an older keep, or a stopped one, decides
    /// nothing).
    fn republish_found(&mut self, key: &Key, generation: u64, found: Result<GetOutcome, GetError>) {
        self.kept_reading.remove(&(key.clone(), generation));
        let Some((owner, ttl_ms, kept)) = self.kept.get(key).cloned() else { return };
        if kept != generation {
            return;
        }
        let newest = match found {
            Ok(outcome) => outcome.record,
            // No quorum now: try again next round.
            Err(_) => return,
        };
        let newest = match newest {
            Some(r) if !r.is_tombstone() && r.owner() == owner.public() => r,
            // Gone (expired, or its replicas churned away while this node's store lacks it):
            // nothing to sign again now; the next round reads it again.
            None => return,
            // Deleted, or handed over: nothing of this owner's to keep alive
            // ([`crate::Node::kept_dropped`] tells).
            Some(_) => {
                self.kept.remove(key);
                self.kept_dropped.insert(key.clone());
                return;
            }
        };
        let now = self.now_ms();
        let horizon = self.republish_horizon_ms();
        if newest.expires_at_ms() > now + horizon {
            return;
        }
        let draft = dkvs_record::Draft {
            key: key.clone(),
            value: newest.value().to_vec(),
            seq: newest.seq() + 1,
            issued_at_ms: now,
            expires_at_ms: now + ttl_ms,
            tombstone: false,
            transfer: None,
        };
        match draft.sign(&owner) {
            Ok(record) => {
                tracing::debug!(%key, seq = record.seq(), "republishing");
                // Nobody waits for the receipt; the next round tries again if this one failed.
                let (reply, _) = oneshot::channel();
                self.put_phase(record, 0, reply);
            }
            Err(e) => tracing::warn!(%key, error = %e, "cannot republish"),
        }
    }
}

/// The newest record among the answers and how many answers were exactly it.
///
/// Every answer is already verified, so for an account-scoped key all records have one owner
/// and the highest sequence wins. A shared name can come back with records of different owners
/// when someone wrote it on nodes that did not know its holder (such a put fails for lack of a
/// quorum, but the nodes it reached keep it). The owner held by the most replicas wins, where
/// replicas still holding an owner's record count for whoever that owner handed the name to
/// (a record carrying a transfer from them at a higher sequence); then, within the winning
/// owner's records, the highest sequence.
fn newest(answers: &[(PeerId, Option<Record>)]) -> (Option<&Record>, usize) {
    let records: Vec<&Record> = answers.iter().filter_map(|(_, r)| r.as_ref()).collect();
    let handed_to = |held: &Record, owner: &dkvs_account::PublicKey| {
        records.iter().any(|r| {
            r.owner() == owner
                && r.seq() > held.seq()
                && r.transfer().is_some_and(|t| t.from() == held.owner())
        })
    };
    let support = |owner: &dkvs_account::PublicKey| {
        records.iter().filter(|held| held.owner() == owner || handed_to(held, owner)).count()
    };
    let winner = records
        .iter()
        .map(|r| r.owner())
        .max_by_key(|owner| {
            let top = records.iter().filter(|r| r.owner() == *owner).map(|r| r.seq()).max();
            (support(owner), top)
        })
        .cloned();
    let newest = winner.and_then(|owner| {
        records.iter().copied().filter(|r| *r.owner() == owner).max_by_key(|r| r.seq())
    });
    let confirmations =
        newest.map_or(0, |n| answers.iter().filter(|(_, r)| r.as_ref() == Some(n)).count());
    (newest, confirmations)
}

/// A put's replica set, of the places a lookup found and this node when it counts
/// (`candidates`): the k closest to `key`, without the places `kept` among them, which come
/// second. This node takes a place only among the k closest, kept places counted: with them
/// left out of the set first, a writer far from the key took the place of every entry kept, and
/// its own copy counted in a quorum that no reader's lookup reaches.
fn replica_places(
    key: &Key,
    candidates: Vec<PeerId>,
    kept: &[PeerId],
    k: usize,
) -> (Vec<PeerId>, Vec<PeerId>) {
    closest(key, candidates, k).into_iter().partition(|p| !kept.contains(p))
}

/// The quorum of a put whose places are `live` replicas (this node among them, when it is
/// one) and `kept` places of table entries not connected, never asked: the write quorum of
/// the live ones, and, where a read samples n of the places it finds (`sample`,
/// `Driver::narrow_read`), enough of them that every such sample meets one: a reader whose
/// view differs from the writer's by up to [`NARROW_SLACK`] peers each way finds at most
/// places - holders + slack that hold nothing, which must be fewer than n. With the k
/// closest all live that is the majority; with 4 of 20 kept, 11 of the 16 live (the
/// majority of the 16, 9, let a sample of 12 miss every copy); with 7 of 14 kept, 5 of the 7
/// (a majority of the 14 failed every put while the entries were unsettled, a home network
/// whose phones sleep). Never asked, the kept places need not be counted where no read
/// samples.
fn put_quorum(write: crate::Quorum, live: usize, kept: usize, sample: Option<usize>) -> usize {
    let sampled = sample.map_or(0, |n| (live + kept + NARROW_SLACK + 1).saturating_sub(n));
    write.of(live).max(sampled)
}

/// Whether `record`, which this node's store answered `held` to, is a version of its key for
/// the key's watchers: one the store holds, or one it had no room for whose key names its
/// owner (a scoped key: its signature and scope are the record's own, checked). Its order
/// then is checked against what the watchers were handed only (a store with no room holds no
/// version to tell a replay or a fork by), as an empty store's would be. A shared name's owner
/// is the one the store holds, so a version of it is one the store takes: a squatter's validly
/// signed record is none.
fn is_version(record: &Record, held: &Result<PutOutcome, dkvs_store::PutError>) -> bool {
    use dkvs_store::PutError;
    match held {
        Ok(PutOutcome::Stored { .. } | PutOutcome::Unchanged) => true,
        Err(PutError::Full { .. } | PutError::OwnerQuota { .. }) => !record.key().is_shared(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dkvs_account::{KeyType, Keypair};
    use dkvs_record::{Draft, Transfer};

    fn signed(owner: &Keypair, key: &Key, seq: u64, transfer: Option<Transfer>) -> Record {
        let mut draft = Draft::new(key.clone(), format!("v{seq}").into_bytes(), seq, 60_000);
        draft.transfer = transfer;
        draft.sign(owner).expect("valid draft")
    }

    fn answers(records: &[&Record]) -> Vec<(PeerId, Option<Record>)> {
        records.iter().map(|r| (PeerId::random(), Some((*r).clone()))).collect()
    }

    /// A get that asked `replicas` (this node not among them) with a majority read quorum.
    fn asking(key: &Key, replicas: &[PeerId]) -> GetOp {
        GetOp {
            key: key.clone(),
            purpose: None,
            pending: replicas.iter().copied().collect(),
            looking_up: false,
            answers: Vec::new(),
            claims: Vec::new(),
            asked: replicas.len(),
            quorum: crate::Quorum::Majority.of(replicas.len()),
            deadline: Instant::now() + std::time::Duration::from_secs(10),
            quorum_at: None,
            alone: false,
            requests: 0,
            narrow: false,
            reserve: Vec::new(),
            held_back: None,
            failures: 0,
            rate_limited: 0,
            failed_peers: Vec::new(),
            veto: None,
            asked_at: None,
            not_before: None,
            hood: None,
            rechecking: false,
            checked: None,
            late: HashMap::new(),
        }
    }

    /// The first phase of a plain read in a large network: a sample of 12 of k = 20 asked.
    fn narrowly(key: &Key, replicas: &[PeerId]) -> GetOp {
        let reserve = (0..8).map(|_| PeerId::random()).collect();
        GetOp { narrow: true, reserve, ..asking(key, replicas) }
    }

    #[test]
    fn a_narrow_read_answers_only_when_every_replica_it_asked_agrees() {
        let alice = Keypair::generate(KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let record = signed(&alice, &key, 2, None);
        let replicas: Vec<PeerId> = (0..12).map(|_| PeerId::random()).collect();
        let mut get = narrowly(&key, &replicas);
        let t0 = Instant::now();
        assert!(!get.must_widen(t0 + 10 * LINGER, LINGER), "no answer yet: nothing to be behind");
        get.answered(replicas[0], Some(record.clone()), 2, t0);
        let t1 = t0 + LINGER / 2;
        for peer in &replicas[1..11] {
            get.answered(*peer, Some(record.clone()), 2, t1);
        }
        assert!(!get.settled(t1, LINGER, NOT_FOUND), "one replica has not answered");
        assert!(!get.must_widen(t1, LINGER), "it still may, within the linger");
        assert!(get.must_widen(t0 + LINGER, LINGER), "the linger behind the first: widen");
        get.answered(replicas[11], Some(record.clone()), 2, t1);
        assert!(get.settled(t0, LINGER, NOT_FOUND), "all twelve agree");
        assert!(!get.must_widen(t0 + LINGER, LINGER));
        let outcome = get.outcome().expect("answered");
        assert_eq!(outcome.record.as_ref(), Some(&record));
        assert_eq!((outcome.confirmations, outcome.answered, outcome.asked), (12, 12, 12));
        assert_eq!(outcome.highest_seq, 2);
    }

    #[test]
    fn a_request_that_waits_for_its_turn_is_behind_a_linger_after_it_went_at_most_one_later() {
        let alice = Keypair::generate(KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let record = signed(&alice, &key, 2, None);
        let replicas: Vec<PeerId> = (0..12).map(|_| PeerId::random()).collect();
        let config = crate::Config::default().with_linger(LINGER);
        let wake = |get: GetOp| {
            let op = Op::Get(get);
            let at = op.wake(&config);
            let Op::Get(get) = op else { unreachable!() };
            (at, get)
        };
        let (paced, t0) = (replicas[11], Instant::now());
        let mut get = narrowly(&key, &replicas);
        get.waits_for(paced);
        for peer in &replicas[..11] {
            get.answered(*peer, Some(record.clone()), 2, t0);
        }
        // Not sent yet: not behind after the linger, but after twice the linger at the latest
        // (a peer held after a refusal, a long queue: the read widens one linger later).
        assert!(!get.must_widen(t0 + LINGER * 3 / 2, LINGER), "a waiting request is not behind");
        assert!(get.must_widen(t0 + 2 * LINGER, LINGER), "twice the linger: widen anyway");
        let (at, mut get) = wake(get);
        assert_eq!(at, t0 + 2 * LINGER, "woken at the latest time");
        // It goes at t1: the linger from then on.
        let t1 = t0 + LINGER / 2;
        get.went(paced, t1);
        assert!(!get.must_widen(t1 + LINGER * 9 / 10, LINGER), "within the linger after it went");
        assert!(get.must_widen(t1 + LINGER, LINGER), "the linger behind its sending: widen");
        let (at, mut get) = wake(get);
        assert_eq!(at, t1 + LINGER, "woken when it would be behind");
        get.answered(paced, Some(record.clone()), 2, t1);
        assert!(get.settled(t1, LINGER, NOT_FOUND), "all twelve agree");

        // Sent later than a linger after the first answer: still behind at twice the linger.
        let mut get = narrowly(&key, &replicas);
        get.waits_for(paced);
        for peer in &replicas[..11] {
            get.answered(*peer, Some(record.clone()), 2, t0);
        }
        get.went(paced, t0 + LINGER * 3 / 2);
        assert!(get.must_widen(t0 + 2 * LINGER, LINGER), "never past twice the linger");
        assert_eq!(wake(get).0, t0 + 2 * LINGER);

        // A request that went late does not give the others more time.
        let mut get = narrowly(&key, &replicas);
        get.waits_for(paced);
        get.went(paced, t1);
        for peer in &replicas[..10] {
            get.answered(*peer, Some(record.clone()), 2, t0);
        }
        assert!(get.must_widen(t0 + LINGER, LINGER), "replicas[10] was asked at once: behind");
        assert_eq!(wake(get).0, t0 + LINGER);
    }

    #[test]
    fn a_narrow_read_widens_on_an_empty_an_older_or_a_missing_answer() {
        let alice = Keypair::generate(KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let (old, new) = (signed(&alice, &key, 1, None), signed(&alice, &key, 2, None));
        let replicas: Vec<PeerId> = (0..12).map(|_| PeerId::random()).collect();
        let t0 = Instant::now();
        let answers: [(&str, Option<Option<&Record>>); 4] = [
            ("an empty answer", Some(None)),
            ("an older record", Some(Some(&old))),
            ("a failure", None),
            ("a newer record after the first", Some(Some(&new))),
        ];
        for (what, odd) in answers {
            let mut get = narrowly(&key, &replicas);
            let first = if what.contains("newer") { &old } else { &new };
            get.answered(replicas[0], Some(first.clone()), first.seq(), t0);
            assert!(!get.must_widen(t0, LINGER), "{what}: one answer so far");
            match odd {
                Some(record) => get.answered(replicas[1], record.cloned(), 2, t0),
                None => get.failed(replicas[1], t0),
            }
            assert!(get.must_widen(t0, LINGER), "{what} widens at once");
            for peer in &replicas[2..] {
                get.answered(*peer, Some(new.clone()), 2, t0);
            }
            assert!(!get.settled(t0, LINGER, NOT_FOUND), "{what}: never answered narrowly");
        }
    }

    #[test]
    fn a_sample_older_than_this_clients_own_record_widens() {
        let alice = Keypair::generate(KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let (old, new) = (signed(&alice, &key, 1, None), signed(&alice, &key, 2, None));
        let replicas: Vec<PeerId> = (0..12).map(|_| PeerId::random()).collect();
        let t0 = Instant::now();
        for (own, widens) in [(&new, true), (&old, false)] {
            let mut get = GetOp { veto: Some(Box::new(own.clone())), ..narrowly(&key, &replicas) };
            assert!(!get.must_widen(t0, LINGER), "nothing to compare yet");
            for peer in &replicas {
                get.answered(*peer, Some(old.clone()), 1, t0);
            }
            assert_eq!(get.must_widen(t0, LINGER), widens, "own seq {}", own.seq());
            assert_eq!(get.settled(t0, LINGER, NOT_FOUND), !widens);
            // The veto is never an answer: the sample's twelve are.
            assert_eq!(get.outcome().expect("answered").confirmations, 12);
        }
    }

    #[test]
    fn replicas_asked_when_a_read_widens_get_a_round_trip_before_the_linger() {
        let alice = Keypair::generate(KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let record = signed(&alice, &key, 1, None);
        let replicas: Vec<PeerId> = (0..20).map(|_| PeerId::random()).collect();
        let t0 = Instant::now();
        let rtt = Duration::from_millis(300);
        // Twelve answered in the narrow phase; the read widened at t0 to the other eight.
        let mut get = GetOp { not_before: Some(t0 + rtt), ..asking(&key, &replicas) };
        for peer in &replicas[..12] {
            get.answered(*peer, Some(record.clone()), 1, t0);
        }
        assert!(!get.settled(t0 + LINGER, LINGER, NOT_FOUND), "the late eight had no time");
        assert!(!get.settled(t0 + rtt, LINGER, NOT_FOUND));
        assert!(get.settled(t0 + rtt + LINGER, LINGER, NOT_FOUND), "a round trip, then the linger");
    }

    const LINGER: Duration = Duration::from_millis(100);
    const NOT_FOUND: Duration = Duration::from_secs(1);

    #[test]
    fn fast_empty_answers_from_a_quorum_of_liars_do_not_hide_a_record() {
        // Eleven ids ground near the key answer "nothing" at once; the nine honest replicas
        // answer 150 ms later (across the internet: more than the linger). Eleven is a read
        // quorum of twenty.
        let alice = Keypair::generate(KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let record = signed(&alice, &key, 3, None);
        let liars: Vec<PeerId> = (0..11).map(|_| PeerId::random()).collect();
        let honest: Vec<PeerId> = (0..9).map(|_| PeerId::random()).collect();
        let mut get = asking(&key, &[liars.clone(), honest.clone()].concat());
        assert_eq!(get.quorum, 11);
        let t0 = Instant::now();
        for liar in &liars {
            get.answered(*liar, None, 0, t0);
        }
        assert!(
            !get.settled(t0, LINGER, NOT_FOUND),
            "a quorum of empty answers must not settle a get"
        );
        let t1 = t0 + Duration::from_millis(150);
        assert!(!get.settled(t1, LINGER, NOT_FOUND), "no record yet: the longer linger holds");
        // Without the honest answers, "not set" would come at the longer linger.
        assert!(get.settled(t0 + NOT_FOUND, LINGER, NOT_FOUND));
        get.answered(honest[0], Some(record.clone()), 3, t1);
        get.answered(honest[1], Some(record.clone()), 3, t1);
        let outcome = get.outcome().expect("a quorum answered");
        assert_eq!(outcome.record.as_ref(), Some(&record), "any valid record beats empties");
        assert_eq!(outcome.confirmations, 2);
        assert_eq!(outcome.highest_seq, 3);
        // A record is in: the rest of the honest replicas get the short linger, long past.
        assert!(get.settled(t1, LINGER, NOT_FOUND));
    }

    #[test]
    fn a_quorum_replaying_an_older_record_loses_to_a_later_newer_answer() {
        let alice = Keypair::generate(KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let (old, new) = (signed(&alice, &key, 1, None), signed(&alice, &key, 2, None));
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        let mut get = asking(&key, &peers);
        let t0 = Instant::now();
        for peer in &peers[..3] {
            get.answered(*peer, Some(old.clone()), 1, t0);
        }
        assert!(
            !get.settled(t0, LINGER, NOT_FOUND),
            "agreement of a quorum waits for the others too"
        );
        get.answered(peers[3], Some(new.clone()), 2, t0);
        get.failed(peers[4], t0);
        assert!(
            get.settled(t0, LINGER, NOT_FOUND),
            "everyone answered or failed: no need to linger"
        );
        let outcome = get.outcome().expect("quorum");
        assert_eq!(outcome.record, Some(new));
        assert_eq!((outcome.confirmations, outcome.answered, outcome.asked), (1, 4, 5));
    }

    /// A get of a fresh key asking `n` random peers.
    fn a_get(n: usize) -> (GetOp, Vec<PeerId>) {
        let alice = Keypair::generate(KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let peers: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        (asking(&key, &peers), peers)
    }

    #[test]
    fn a_get_refused_for_load_says_so() {
        let (mut get, peers) = a_get(4);
        let t0 = Instant::now();
        get.answered(peers[0], None, 0, t0);
        get.refused_for_load(peers[1], t0);
        get.refused_for_load(peers[2], t0);
        // A refusal from a peer not asked (or asked and done) is not counted.
        get.refused_for_load(peers[1], t0);
        get.refused_for_load(PeerId::random(), t0);
        get.failed(peers[3], t0);
        assert!(get.settled(t0, LINGER, NOT_FOUND));
        let error = get.outcome().expect_err("no quorum");
        assert!(matches!(error, GetError::NoQuorum { answered: 1, rate_limited: 2, .. }));
        assert_eq!(
            error.to_string(),
            "no quorum: 1 of 4 replicas answered, 3 needed; 2 refused: rate limited"
        );
    }

    #[test]
    fn a_get_without_a_quorum_says_so_and_an_empty_quorum_says_not_set() {
        let (mut get, peers) = a_get(3);
        let t0 = Instant::now();
        get.answered(peers[0], None, 0, t0);
        // Answers from peers that were never asked, or a second answer, do not count.
        get.answered(PeerId::random(), None, 0, t0);
        get.answered(peers[0], None, 0, t0);
        get.failed(peers[1], t0);
        assert!(!get.settled(t0, LINGER, NOT_FOUND));
        assert!(matches!(
            get.outcome(),
            Err(GetError::NoQuorum { answered: 1, asked: 3, quorum: 2, rate_limited: 0 })
        ));
        get.answered(peers[2], None, 7, t0);
        assert!(get.settled(t0, LINGER, NOT_FOUND));
        let outcome = get.outcome().expect("quorum");
        assert_eq!(outcome.record, None);
        // One replica's claim alone does not raise the sequence a new write must pass.
        assert_eq!(outcome.highest_seq, 0);
        let (mut lookup, _) = a_get(3);
        lookup.looking_up = true;
        assert!(matches!(lookup.outcome(), Err(GetError::NoQuorum { asked: 0, .. })));
    }

    #[test]
    fn a_handed_over_name_reads_as_its_new_owner_even_where_replicas_lag() {
        let (alice, bob) =
            (Keypair::generate(KeyType::Ed25519), Keypair::generate(KeyType::Ed25519));
        let name = Key::new("/names/shop").expect("key");
        let old = signed(&alice, &name, 1, None);
        let handover = signed(&bob, &name, 2, Some(Transfer::sign(&alice, &name, bob.public(), 2)));
        let later = signed(&bob, &name, 3, None);
        // Two replicas lag with Alice's record, two have the handover, one Bob's next write.
        let seen = answers(&[&old, &old, &handover, &handover, &later]);
        let (newest, confirmations) = newest(&seen);
        assert_eq!(newest, Some(&later));
        assert_eq!(confirmations, 1);
    }

    #[test]
    fn a_squatter_on_a_few_replicas_loses_to_the_holder() {
        let (alice, mallory) =
            (Keypair::generate(KeyType::Ed25519), Keypair::generate(KeyType::Ed25519));
        let name = Key::new("/names/alice").expect("key");
        let real = signed(&alice, &name, 1, None);
        let squat = signed(&mallory, &name, 99, None);
        let seen = answers(&[&real, &real, &real, &squat]);
        assert_eq!(newest(&seen), (Some(&real), 3));
        // Without records there is nothing newest.
        assert_eq!(newest(&[(PeerId::random(), None)]), (None, 0));
    }

    /// A put of `record` whose lookup is still running, this node's own copy stored.
    fn putting(record: &Record, me: PeerId) -> PutOp {
        PutOp {
            record: record.clone(),
            reply: None,
            receipt: PutReceipt { seq: record.seq(), stored: vec![me], ..PutReceipt::default() },
            pending: HashSet::new(),
            looking_up: true,
            deadline: Instant::now() + Duration::from_secs(10),
            quorum_at: None,
            newer: None,
            hood: None,
            rechecking: false,
            held_here: false,
        }
    }

    /// A put of a fresh record whose lookup is running, this node and four others about to
    /// be found as its replicas.
    fn a_put() -> (PutOp, PeerId, Vec<PeerId>) {
        let alice = Keypair::generate(KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let me = PeerId::random();
        let others: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        (putting(&signed(&alice, &key, 1, None), me), me, others)
    }

    /// [`a_put`] whose replicas were found: the four others and this node, none kept.
    fn a_put_asked() -> (PutOp, PeerId, Vec<PeerId>) {
        let (mut put, me, others) = a_put();
        let replicas = [others.clone(), vec![me]].concat();
        asked(&mut put, replicas, me);
        (put, me, others)
    }

    /// `put`'s lookup found `replicas` and kept no place (majority quorums, reads not
    /// sampled): the remote ones, to be sent the record.
    fn asked(put: &mut PutOp, replicas: Vec<PeerId>, me: PeerId) -> Vec<PeerId> {
        put.replicas_found(replicas, Vec::new(), me, false, (crate::Quorum::Majority, None))
    }

    #[test]
    fn a_put_waits_the_linger_after_its_quorum_then_answers_with_who_holds_it() {
        let (mut put, me, others) = a_put();
        assert!(!put.settled(Instant::now(), LINGER), "nobody asked yet");
        let replicas = [others.clone(), vec![me]].concat();
        let remote = asked(&mut put, replicas, me);
        assert_eq!(remote.len(), 4, "this node is not sent its own record");
        assert_eq!((put.receipt.replicas, put.receipt.quorum), (5, 3));
        let t0 = Instant::now();
        put.answered(others[0], pb::PutStatus::Stored, String::new(), None, t0);
        // An answer from a peer that was not asked, or a second one, does not count.
        put.answered(PeerId::random(), pb::PutStatus::Stored, String::new(), None, t0);
        put.answered(others[0], pb::PutStatus::Stored, String::new(), None, t0);
        assert_eq!(put.receipt.stored.len(), 2);
        put.answered(others[1], pb::PutStatus::Unchanged, String::new(), None, t0);
        assert!(!put.settled(t0, LINGER), "a quorum waits the linger for the others");
        put.answered(others[2], pb::PutStatus::OverQuota, "quota".into(), None, t0);
        assert!(put.settled(t0 + LINGER, LINGER));
        let receipt = put.result().expect("a quorum holds it");
        assert_eq!(receipt.stored.len(), 3);
        assert_eq!(receipt.refused, vec![(others[2], Refusal::OverQuota, "quota".into())]);
        assert_eq!(receipt.unreachable, vec![(others[3], "no answer in time".into())]);
    }

    #[test]
    fn a_puts_quorum_over_kept_places_is_what_a_reads_sample_needs() {
        let majority = crate::Quorum::Majority;
        // (live, kept, sample) -> quorum
        for (live, kept, sample, quorum) in [
            (20, 0, Some(12), 11),
            (16, 4, Some(12), 11),
            (11, 9, Some(12), 11),
            (7, 7, Some(12), 5),
            (2, 10, Some(12), 3),
            (3, 5, Some(12), 2),
            (5, 0, Some(12), 3),
            (16, 4, None, 9),
            (2, 10, None, 2),
        ] {
            assert_eq!(
                put_quorum(majority, live, kept, sample),
                quorum,
                "{live} {kept} {sample:?}"
            );
        }
        // A reader whose view differs from the writer's by two peers each way and samples 12
        // of the places it finds meets a holder in every sample, for every split of places.
        for places in 13..=22 {
            for kept in 0..places {
                let holders = put_quorum(majority, places - kept, kept, Some(12));
                let empty_in_view = places - holders.min(places) + NARROW_SLACK;
                assert!(empty_in_view < 12, "{places} places, {kept} kept");
            }
        }
    }

    #[test]
    fn a_puts_kept_places_count_in_its_quorum_and_are_listed_never_asked() {
        // A lookup that timed out: 4 table entries near the key, not connected, keep their
        // places beside 15 peers and this node; a read samples 12 of such 20.
        let (mut put, me, _) = a_put();
        let others: Vec<PeerId> = (0..15).map(|_| PeerId::random()).collect();
        let kept: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        let replicas = [others.clone(), vec![me]].concat();
        let quorum = (crate::Quorum::Majority, Some(12));
        let remote = put.replicas_found(replicas, kept.clone(), me, false, quorum);
        assert_eq!(remote, others, "a kept place is not asked");
        assert_eq!((put.receipt.replicas, put.receipt.quorum), (20, 11));
        let listed: Vec<PeerId> = put.receipt.unreachable.iter().map(|(p, _)| *p).collect();
        assert_eq!(listed, kept);
        let t0 = Instant::now();
        for peer in &others[..9] {
            put.answered(*peer, pb::PutStatus::Stored, String::new(), None, t0);
        }
        // Ten of 20 places: a majority of the 16 live, too few for every sample of 12.
        assert!(!put.receipt.has_quorum());
        put.answered(others[9], pb::PutStatus::Stored, String::new(), None, t0);
        assert!(put.receipt.has_quorum(), "11 of 20 places hold it");
        // Too many places kept: the quorum cannot be reached, and the put ends at once.
        let (mut put, me, others) = a_put();
        let kept: Vec<PeerId> = (0..10).map(|_| PeerId::random()).collect();
        let replicas = [others.clone(), vec![me]].concat();
        put.replicas_found(replicas, kept, me, false, quorum);
        assert_eq!((put.receipt.replicas, put.receipt.quorum), (15, 6));
        assert!(put.settled(t0, LINGER), "5 live places cannot make a quorum of 6");
        let Err(PutError::NoQuorum { receipt }) = put.result() else { panic!("no quorum") };
        let kept_listed =
            receipt.unreachable.iter().filter(|(_, why)| why.contains("keeps its place"));
        assert_eq!(kept_listed.count(), 10, "{receipt:?}");
    }

    #[test]
    fn a_writer_takes_a_place_only_among_the_k_closest_kept_places_counted() {
        let alice = Keypair::generate(KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let mut by_distance: Vec<PeerId> = (0..30).map(|_| PeerId::random()).collect();
        by_distance = closest(&key, by_distance, 30);
        // A lookup that timed out gave the 20 closest places, four of them kept.
        let places = by_distance[..20].to_vec();
        let kept = by_distance[3..7].to_vec();
        // A writer 26th from the key is no replica: the places stay as they are.
        let me = by_distance[25];
        let candidates = [places.clone(), vec![me]].concat();
        let (replicas, kept_places) = replica_places(&key, candidates, &kept, 20);
        assert!(!replicas.contains(&me), "the writer is beyond the k closest places");
        assert_eq!((replicas.len(), kept_places), (16, kept.clone()));
        // The closest writer takes the first place, and the farthest place drops out.
        let me = by_distance[0];
        let candidates = [by_distance[1..21].to_vec(), vec![me]].concat();
        let (replicas, kept_places) = replica_places(&key, candidates, &kept, 20);
        assert_eq!(replicas[0], me);
        assert!(!replicas.contains(&by_distance[20]));
        assert_eq!((replicas.len(), kept_places), (16, kept));
    }

    #[test]
    fn a_recheck_counts_a_kept_place_it_asked_already_as_a_replica() {
        let (mut put, me, others) = a_put_asked();
        put.answered(others[0], pb::PutStatus::Stored, String::new(), None, Instant::now());
        // A replica named a closer peer; the recheck's lookup timed out with others[0] (its
        // connection closed since) and another entry keeping their places.
        let (newcomer, gone) = (PeerId::random(), PeerId::random());
        let found = [others[1..].to_vec(), vec![newcomer, me]].concat();
        let remote =
            put.rechecked(found, vec![others[0], gone], me, (crate::Quorum::Majority, None));
        assert_eq!(remote, vec![newcomer], "only the peer not asked yet is sent the record");
        assert!(put.receipt.stored.contains(&others[0]), "its copy still counts");
        assert_eq!((put.receipt.replicas, put.receipt.quorum), (7, 4));
        let listed: Vec<PeerId> = put.receipt.unreachable.iter().map(|(p, _)| *p).collect();
        assert_eq!(listed, vec![gone]);
    }

    #[test]
    fn a_put_whose_requests_were_held_back_says_the_peers_rate_limits_did_it() {
        let (mut put, _, others) = a_put_asked();
        put.answered(others[0], pb::PutStatus::Stored, String::new(), None, Instant::now());
        // The timeout came while the requests to three peers still waited for their turn.
        for peer in &others[1..] {
            put.held_back(*peer, "still waiting its turn at the end");
        }
        put.held_back(PeerId::random(), "still waiting its turn at the end");
        let Err(PutError::NoQuorum { receipt }) = put.result() else { panic!("no quorum") };
        assert_eq!(receipt.refused.len(), 3, "{receipt:?}");
        assert!(receipt.unreachable.is_empty());
        assert_eq!(receipt.main_refusal(), Some(Refusal::RateLimited));
        assert_eq!(receipt.refusal_summary(), "rate limited ×3");
    }

    #[test]
    fn a_put_that_cannot_reach_its_quorum_or_meets_a_newer_record_ends_at_once() {
        let alice = Keypair::generate(KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let (record, newer) = (signed(&alice, &key, 1, None), signed(&alice, &key, 5, None));
        let me = PeerId::random();
        let others: Vec<PeerId> = (0..2).map(|_| PeerId::random()).collect();
        // Three replicas, quorum two: two refusals leave only this node's copy.
        let mut put = putting(&record, me);
        asked(&mut put, [others.clone(), vec![me]].concat(), me);
        let t0 = Instant::now();
        put.answered(others[0], pb::PutStatus::Full, "full".into(), None, t0);
        assert!(!put.settled(t0, LINGER), "the other replica could still make the quorum");
        put.failed(others[1], "connection refused".into(), t0);
        assert!(put.settled(t0, LINGER));
        let Err(PutError::NoQuorum { receipt }) = put.result() else { panic!("no quorum") };
        assert_eq!((receipt.stored.len(), receipt.quorum), (1, 2));
        assert_eq!(receipt.unreachable.len(), 1);
        // A replica shows a newer record of the same owner: the put is stale, whatever else.
        let mut put = putting(&record, me);
        asked(&mut put, [others.clone(), vec![me]].concat(), me);
        put.answered(others[0], pb::PutStatus::Stale, String::new(), Some(newer.clone()), t0);
        assert!(put.settled(t0, LINGER));
        let Err(PutError::Stale { current_seq, current }) = put.result() else { panic!("stale") };
        assert_eq!((current_seq, current.map(|r| *r)), (5, Some(newer)));
        // The lookup never finished: nobody was asked, so nothing counts.
        let put = putting(&record, me);
        let Err(PutError::NoQuorum { receipt }) = put.result() else { panic!("no quorum") };
        assert_eq!((receipt.stored.len(), receipt.quorum), (0, 1));
        // A node that is not among the replicas found does not count its own copy.
        let mut put = putting(&record, me);
        asked(&mut put, others.clone(), me);
        assert!(put.receipt.stored.is_empty());
    }

    #[test]
    fn a_write_whose_table_was_wrong_goes_to_the_replicas_a_lookup_finds() {
        let alice = Keypair::generate(KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let record = signed(&alice, &key, 1, None);
        let me = PeerId::random();
        let table: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        let mut put = putting(&record, me);
        asked(&mut put, [table.clone(), vec![me]].concat(), me);
        let t0 = Instant::now();
        // Three of the table's replicas store it (a quorum of 4 of 6 with this node); one of
        // them named a closer peer: the put waits for the lookup, however many stored it.
        for peer in &table[..3] {
            put.answered(*peer, pb::PutStatus::Stored, String::new(), None, t0);
        }
        put.rechecking = true;
        assert!(!put.settled(t0 + 10 * LINGER, LINGER), "rechecking: not settled");
        // The lookup finds two of the table's peers, two new ones, and this node.
        let new: Vec<PeerId> = (0..2).map(|_| PeerId::random()).collect();
        let found = [vec![table[0], table[3]], new.clone(), vec![me]].concat();
        let remote = put.rechecked(found, Vec::new(), me, (crate::Quorum::Majority, None));
        assert_eq!(remote, new, "only the replicas not asked yet are sent the record");
        assert_eq!((put.receipt.replicas, put.receipt.quorum), (5, 3));
        // Acknowledgements from peers outside the set found no longer count.
        assert_eq!(put.receipt.stored, vec![me, table[0]]);
        // table[4], asked but outside the set, is not waited for, nor counted when it answers.
        put.answered(table[4], pb::PutStatus::Stored, String::new(), None, t0);
        assert_eq!(put.receipt.stored, vec![me, table[0]]);
        assert!(!put.settled(t0, LINGER), "table[3] and the new ones are still asked");
        put.answered(new[0], pb::PutStatus::Stored, String::new(), None, t0);
        assert!(put.receipt.has_quorum());
        assert!(!put.settled(t0, LINGER), "the quorum waits the linger from now");
        assert!(put.settled(t0 + LINGER, LINGER));
        let receipt = put.result().expect("a quorum of the set found holds it");
        assert_eq!(receipt.stored.len(), 3);
        assert_eq!(receipt.unreachable.len(), 2, "table[3] and new[1] did not answer");
        assert!(receipt.stored.len() <= receipt.replicas);
        // The table left this node out, the lookup puts it in: its own copy counts again.
        let mut put = putting(&record, me);
        asked(&mut put, table.clone(), me);
        assert!(put.receipt.stored.is_empty());
        put.rechecking = true;
        put.rechecked(
            [vec![me], table[..4].to_vec()].concat(),
            Vec::new(),
            me,
            (crate::Quorum::Majority, None),
        );
        assert_eq!(put.receipt.stored, vec![me]);
    }

    #[test]
    fn a_read_waits_for_its_recheck_before_it_answers_or_widens() {
        let alice = Keypair::generate(KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let record = signed(&alice, &key, 2, None);
        let replicas: Vec<PeerId> = (0..12).map(|_| PeerId::random()).collect();
        let mut get = narrowly(&key, &replicas);
        let t0 = Instant::now();
        for peer in &replicas[..11] {
            get.answered(*peer, Some(record.clone()), 2, t0);
        }
        get.rechecking = true;
        get.answered(replicas[11], None, 0, t0);
        // All twelve answered, one differently, long ago: a read would have widened or
        // answered; while the lookup runs it does neither.
        let later = t0 + 10 * LINGER;
        assert!(!get.settled(later, LINGER, NOT_FOUND));
        assert!(!get.must_widen(later, LINGER));
        get.rechecking = false;
        assert!(get.must_widen(later, LINGER));
    }

    #[test]
    fn a_compare_and_swap_writes_only_on_the_expected_newest() {
        use dkvs_store::Expect;
        let alice = Keypair::generate(KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let held = signed(&alice, &key, 4, None);
        let read = |record: Option<Record>| {
            Ok(GetOutcome {
                record,
                confirmations: 1,
                answered: 1,
                asked: 1,
                highest_seq: 4,
                source: crate::Source::Network,
                requests: 0,
            })
        };
        assert!(matches!(cas_step(Expect::Seq(4), read(Some(held.clone()))), CasStep::Write));
        assert!(matches!(cas_step(Expect::Absent, read(None)), CasStep::Write));
        let CasStep::Conflict(current) = cas_step(Expect::Seq(3), read(Some(held.clone()))) else {
            panic!("conflict")
        };
        assert_eq!(current, Some(held.clone()));
        assert!(matches!(cas_step(Expect::Absent, read(Some(held))), CasStep::Conflict(Some(_))));
        let no_quorum =
            Err(GetError::NoQuorum { answered: 1, asked: 5, quorum: 3, rate_limited: 0 });
        let CasStep::NoRead(read) = cas_step(Expect::Seq(4), no_quorum) else { panic!("no read") };
        assert!(matches!(read, GetError::NoQuorum { answered: 1, asked: 5, quorum: 3, .. }));
    }

    #[test]
    fn repair_goes_to_the_replicas_behind_the_newest() {
        let alice = Keypair::generate(KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let (old, new) = (signed(&alice, &key, 1, None), signed(&alice, &key, 2, None));
        let peers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        let answers = vec![
            (peers[0], Some(new.clone())),
            (peers[1], Some(old)),
            (peers[2], None),
            (peers[3], Some(new.clone())),
        ];
        let (newest, stale) = behind(&answers).expect("two are behind");
        assert_eq!(newest, new);
        assert_eq!(stale, vec![peers[1], peers[2]]);
        assert!(behind(&[(peers[0], Some(new.clone()))]).is_none(), "nobody is behind");
        assert!(behind(&[(peers[0], None)]).is_none(), "nothing to repair with");
    }
}
