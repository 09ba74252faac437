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
    /// Replicas that did not answer in time or could not be reached, and those passed over
    /// at once: given up on for answering nothing, or held (the reason says which). A
    /// replica passed over was sent the record all the same, and may hold it.
    pub unreachable: Vec<(PeerId, String)>,
    /// True when this node had no dkvs peer at all: it is a network of one, and its own copy
    /// is the whole replica set. (A node that has peers but finds no replica fails instead.)
    pub alone: bool,
    /// This node's own store refused its copy (full, or the owner's quota here used up): the
    /// replicas were asked all the same, and the reason is here.
    pub local_refusal: Option<(Refusal, String)>,
    /// Requests this node sent for the put: the read before it (a compare-and-swap's, or
    /// [`crate::Node::put_next`]'s, each attempt's), its Kademlia lookup's and the record to
    /// each remote replica (not counted: answers, the watchers' gossip, and the writes of
    /// `put_next`'s attempts that lost a race).
    pub requests: u32,
}

impl PutReceipt {
    /// True when a quorum holds the record.
    pub fn has_quorum(&self) -> bool {
        self.stored.len() >= self.quorum
    }

    /// The reason that at least half of the refusing replicas gave, if one did: what a put
    /// that missed its quorum comes down to (the name is another account's, a newer version
    /// is held, ...). On a tie, foreign owner comes first (no retry can fix it), then stale
    /// (the writer has to read again), then the others.
    pub fn main_refusal(&self) -> Option<Refusal> {
        let counts = self.refusal_counts();
        let total = self.refused.len();
        let weight = |why: &Refusal| match why {
            Refusal::ForeignOwner => 2,
            Refusal::Stale => 1,
            _ => 0,
        };
        counts
            .iter()
            .filter(|(_, n)| 2 * n >= total)
            .max_by_key(|(why, n)| (*n, weight(why)))
            .map(|(why, _)| *why)
    }

    /// The refusals in words, most common first, this node's own included: "over quota ×3,
    /// not a replica ×1, store full (this node) ×1".
    pub fn refusal_summary(&self) -> String {
        let mut parts: Vec<(String, usize)> =
            self.refusal_counts().into_iter().map(|(why, n)| (why.to_string(), n)).collect();
        if let Some((why, _)) = &self.local_refusal {
            parts.push((format!("{why} (this node)"), 1));
        }
        parts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        parts.iter().map(|(why, n)| format!("{why} ×{n}")).collect::<Vec<_>>().join(", ")
    }

    /// Each reason the replicas gave, with how many gave it, in the order first given.
    fn refusal_counts(&self) -> Vec<(Refusal, usize)> {
        let mut counts: Vec<(Refusal, usize)> = Vec::new();
        for (_, why, _) in &self.refused {
            match counts.iter_mut().find(|(w, _)| w == why) {
                Some((_, n)) => *n += 1,
                None => counts.push((*why, 1)),
            }
        }
        counts
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
    /// A compare-and-swap (or [`crate::Node::put_next`]) could not read the key's newest
    /// version first: nothing was written.
    #[error("could not read the newest version first, nothing was written: {read}")]
    NoReadQuorum {
        /// Why the read failed.
        read: GetError,
    },
    /// The key's sequence is at the largest there is: no version can follow it.
    #[error("{key} is at sequence {seq}, the largest there is; no version can follow it")]
    NoNextSequence {
        /// The key.
        key: String,
        /// The sequence held or claimed.
        seq: u64,
    },
    /// [`crate::Node::delete_next`] found nothing to delete: the key is not set, or was
    /// deleted already (the sequence of its tombstone). Nothing was written: a tombstone of a
    /// shared name nobody holds would take the name.
    #[error("{key} {}: nothing to delete", match tombstone_seq {
        Some(seq) => format!("was deleted already (sequence {seq})"),
        None => "is not set".to_owned(),
    })]
    NothingToDelete {
        /// The key.
        key: String,
        /// The sequence of the tombstone the network holds, if it holds one.
        tombstone_seq: Option<u64>,
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
        "no quorum: the lookup found no replica: no peer answered it in time, or none serves \
         the DHT (a node that has had peers does not act alone)"
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
    /// How many replicas were asked (this node included): 12 or 13 of k = 20 when a plain
    /// get's sample agreed ([`crate::Node::get`]), all of them otherwise.
    pub asked: usize,
    /// Whether the replicas were asked, or only this node's store.
    pub source: Source,
    /// The highest sequence a read quorum of replicas holds or remembers (a record's value may
    /// have expired while its sequence is kept): a new write must go above it.
    pub highest_seq: u64,
    /// Requests this node sent for the get: its Kademlia lookup's and one to each remote
    /// replica (not counted: answers, and the read repair sent after the get answered); 0 for
    /// a local read.
    pub requests: u32,
}

/// Why a get did not succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// Fewer replicas than the read quorum answered before the timeout, or none was found.
    #[error("{}", no_get_quorum(*answered, *asked, *quorum, *rate_limited))]
    #[non_exhaustive]
    NoQuorum {
        /// Replicas that answered.
        answered: usize,
        /// Replicas asked.
        asked: usize,
        /// Answers needed.
        quorum: usize,
        /// Replicas that refused for load (they admit only so many requests from one peer),
        /// or whose request this node still held back for that reason when the get ended.
        rate_limited: usize,
    },
    /// The node is shutting down.
    #[error("the node is shut down")]
    Shutdown,
}

fn no_get_quorum(answered: usize, asked: usize, quorum: usize, rate_limited: usize) -> String {
    if asked == 0 {
        "no quorum: the lookup found no replica: no peer answered it in time, or none serves \
         the DHT (a node that has had peers does not act alone)"
            .into()
    } else if rate_limited > 0 {
        format!(
            "no quorum: {answered} of {asked} replicas answered, {quorum} needed; {rate_limited} \
             refused: rate limited"
        )
    } else {
        format!("no quorum: {answered} of {asked} replicas answered, {quorum} needed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_says_what_most_refusals_come_down_to() {
        let peer = PeerId::random;
        let refused = |whys: &[Refusal]| PutReceipt {
            refused: whys.iter().map(|w| (peer(), *w, String::new())).collect(),
            ..PutReceipt::default()
        };
        use Refusal::*;
        assert_eq!(refused(&[]).main_refusal(), None);
        assert_eq!(refused(&[ForeignOwner, ForeignOwner, Full]).main_refusal(), Some(ForeignOwner));
        assert_eq!(refused(&[Stale, ForeignOwner]).main_refusal(), Some(ForeignOwner), "a tie");
        assert_eq!(refused(&[Stale, Full]).main_refusal(), Some(Stale), "a tie");
        assert_eq!(refused(&[Stale, Full, OverQuota]).main_refusal(), None, "no half");
        let mut receipt = refused(&[OverQuota, NotReplica, OverQuota]);
        receipt.local_refusal = Some((Full, "store would hold ...".into()));
        assert_eq!(
            receipt.refusal_summary(),
            "over quota ×2, not a replica ×1, store full (this node) ×1"
        );
    }
}
