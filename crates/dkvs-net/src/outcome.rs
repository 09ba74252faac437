//! What operations on the network return.

use dkvs_record::Record;
use libp2p::PeerId;

/// Why a replica refused a put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// It holds a newer record.
    Stale,
    /// A compare-and-swap whose expectation did not hold there.
    Conflict,
    /// It holds a different record with the same sequence.
    Fork,
    /// The shared name is held by another owner.
    ForeignOwner,
    /// The owner's quota there is used up.
    OverQuota,
    /// Its store is full.
    Full,
    /// The record broke a rule there (it should not have: replicas validate like the writer).
    Invalid,
    /// The record is past that node's maximum TTL.
    TooOld,
    /// It refused for load: too many requests or bytes from this node.
    RateLimited,
    /// It is not a replica of the key in its own view (the writer's routing table is off).
    NotReplica,
    /// It failed to store (disk error) or sent an answer that makes no sense.
    Failed,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Stale => "stale",
            Refusal::Conflict => "conflict",
            Refusal::Fork => "fork",
            Refusal::ForeignOwner => "foreign owner",
            Refusal::OverQuota => "over quota",
            Refusal::Full => "store full",
            Refusal::Invalid => "invalid",
            Refusal::TooOld => "too old",
            Refusal::RateLimited => "rate limited",
            Refusal::NotReplica => "not a replica",
            Refusal::Failed => "failed",
        })
    }
}

/// The receipt of a put: which replicas hold the record and which did not, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutReceipt {
    /// The record's sequence.
    pub seq: u64,
    /// Size of the replica set asked (the k closest peers found, and this node).
    pub replicas: usize,
    /// Replicas needed for success.
    pub quorum: usize,
    /// Replicas that hold the record now (stored it, or already had it); this node included.
    pub stored: Vec<PeerId>,
    /// Replicas that refused, with the reason and their words.
    pub refused: Vec<(PeerId, Refusal, String)>,
    /// Replicas that did not answer in time or could not be reached.
    pub unreachable: Vec<(PeerId, String)>,
    /// True when this node had no dkvs peer at all: it is a network of one, and its own copy
    /// is the whole replica set. (A node that has peers but finds no replica fails instead.)
    pub alone: bool,
    /// This node's own store refused its copy (full, or the owner's quota here used up): the
    /// replicas were asked all the same, and the reason is here.
    pub local_refusal: Option<(Refusal, String)>,
}

impl PutReceipt {
    /// True when a quorum holds the record.
    pub fn has_quorum(&self) -> bool {
        self.stored.len() >= self.quorum
    }
}

/// Why a put did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutError {
    /// This node refused the record: it is invalid, or breaks a rule against what it holds.
    #[error("refused locally: {0}")]
    Local(#[from] dkvs_store::PutError),
    /// A newer record for the key exists; the put would be a rollback.
    #[error("stale: sequence {current_seq} is already held")]
    Stale {
        /// The highest sequence seen.
        current_seq: u64,
        /// The newest record found, if its value is still held.
        current: Option<Box<Record>>,
    },
    /// A compare-and-swap whose expectation did not hold; carries the newest record found.
    #[error("compare-and-swap conflict: the current sequence is {:?}", current.as_ref().map(|r| r.seq()))]
    Conflict {
        /// The newest live record in the network, or `None` if there is none.
        current: Option<Box<Record>>,
    },
    /// Fewer replicas than the quorum stored the record, or none was found.
    #[error("{}", no_put_quorum(receipt))]
    NoQuorum {
        /// Who stored, who refused and why, who did not answer.
        receipt: Box<PutReceipt>,
    },
    /// [`crate::Node::delete`] was given a record that is not a tombstone.
    #[error("a delete needs a tombstone record")]
    NotATombstone,
    /// The node is shutting down.
    #[error("the node is shut down")]
    Shutdown,
}

fn no_put_quorum(receipt: &PutReceipt) -> String {
    if receipt.replicas == 0 {
        "no quorum: the lookup found no replica although this node has peers (none answered \
         it in time, or none serves the DHT)"
            .into()
    } else {
        format!(
            "no quorum: {} of {} replicas stored the record, {} needed",
            receipt.stored.len(),
            receipt.replicas,
            receipt.quorum
        )
    }
}

/// Where a get's answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// The closest replicas in the network were asked.
    Network,
    /// This node has no dkvs peer at all: its own store is the whole network.
    Alone,
    /// A local read ([`crate::Node::get_local`]) that asked no other node.
    Local,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Network => "network",
            Source::Alone => "alone",
            Source::Local => "local",
        })
    }
}

/// The result of a get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetOutcome {
    /// The newest valid record found (a tombstone if the key was deleted), or `None`.
    pub record: Option<Record>,
    /// How many replicas returned exactly this record (this node included).
    pub confirmations: usize,
    /// How many replicas answered.
    pub answered: usize,
    /// How many replicas were asked (this node included).
    pub asked: usize,
    /// Whether the replicas were asked, or only this node's store.
    pub source: Source,
    /// The highest sequence a read quorum of replicas holds or remembers (a record's value may
    /// have expired while its sequence is kept): a new write must go above it.
    pub highest_seq: u64,
}

/// Why a get did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// Fewer replicas than the read quorum answered before the timeout, or none was found.
    #[error("{}", no_get_quorum(*answered, *asked, *quorum))]
    NoQuorum {
        /// Replicas that answered.
        answered: usize,
        /// Replicas asked.
        asked: usize,
        /// Answers needed.
        quorum: usize,
    },
    /// The node is shutting down.
    #[error("the node is shut down")]
    Shutdown,
}

fn no_get_quorum(answered: usize, asked: usize, quorum: usize) -> String {
    if asked == 0 {
        "no quorum: the lookup found no replica although this node has peers (none answered \
         it in time, or none serves the DHT)"
            .into()
    } else {
        format!("no quorum: {answered} of {asked} replicas answered, {quorum} needed")
    }
}
