//! The routing table's refresh, as BEP 5 has it: every [`crate::Config::table_refresh_interval`]
//! a node walks its own id, and each bucket farther out that no lookup of the node went into
//! for that long is refreshed by a lookup of a random key in it.
//!
//! This replaces libp2p Kademlia's periodic bootstrap, which walks the own id and then a random
//! key in every bucket past the closest neighbour's, each lookup waiting for the k closest
//! (20) to answer. With connections closing when idle, every peer a lookup asks is dialed
//! (Noise, identify, multistream-select): at N = 1000 a refresh cost a node about a second of
//! CPU, nearly all that a network at rest spends (docs/benchmarks.md). Here:
//! - the own id is walked for the k closest, as before: a node's neighbourhood is where the
//!   keys it serves are, and where its table must be exact;
//! - a bucket farther out is walked for [`BUCKET_RESULTS`] closest, the size of a bucket in
//!   BEP 5 and what its refresh (a `find_node` of a random id in the bucket) gets: enough to
//!   reach into the bucket, connect to some of its peers (which Kademlia then holds in the
//!   table) and find dead entries, at under half the dials of a walk for 20;
//! - a bucket a lookup of this node went into within the interval is skipped: that lookup did
//!   the refresh's work (a busy node refreshes little);
//! - one lookup starts per sweep, so a refresh does not dial in a burst.
//!
//! A walk of the whole table that libp2p starts itself (when a peer joins a table of fewer
//! than k, or at [`crate::Node::bootstrap`]) counts as a refresh: the next is an interval after
//! it.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How many closest peers the walk into a far bucket waits for.
pub(crate) const BUCKET_RESULTS: usize = 8;
/// Buckets in a 256-bit key space.
const BUCKETS: usize = 256;

/// A lookup the refresh starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Walk {
    /// The node's own id, for the k closest.
    Own,
    /// A random key in the bucket of this index (distance in `[2^i, 2^(i+1))`), for
    /// [`BUCKET_RESULTS`] closest.
    Bucket(u32),
}

/// When the table is refreshed next, and which buckets lookups went into lately.
pub(crate) struct Refresh {
    interval: Duration,
    due: Instant,
    /// When a lookup of this node last went into each bucket.
    used: Box<[Option<Instant>; BUCKETS]>,
    /// The walks of the refresh under way, one started per sweep.
    queue: VecDeque<Walk>,
}

impl Refresh {
    pub(crate) fn new(interval: Duration, now: Instant) -> Refresh {
        Refresh {
            interval,
            due: now + interval,
            used: Box::new([None; BUCKETS]),
            queue: VecDeque::new(),
        }
    }

    /// A lookup of this node went into bucket `index` (it found the peers closest to a key
    /// there).
    pub(crate) fn used(&mut self, index: u32, now: Instant) {
        if let Some(at) = self.used.get_mut(index as usize) {
            *at = Some(now);
        }
    }

    /// The whole table was walked now (libp2p's bootstrap): the next refresh is an interval
    /// away, and a refresh under way has nothing left to do.
    pub(crate) fn walked(&mut self, now: Instant) {
        self.due = now + self.interval;
        self.queue.clear();
    }

    /// The walk to start at this sweep, if any. When the refresh is due it is planned: the own
    /// id, then each bucket from the one past `closest` (the index of the nearest non-empty
    /// bucket; `None` for an empty table, which has nothing to refresh) out to the farthest,
    /// unless a lookup went into it within the interval.
    pub(crate) fn next(&mut self, now: Instant, closest: Option<u32>) -> Option<Walk> {
        if now >= self.due {
            self.due = now + self.interval;
            self.queue.clear();
            if let Some(closest) = closest {
                self.queue.push_back(Walk::Own);
                for index in closest + 1..BUCKETS as u32 {
                    let lately = self.used[index as usize]
                        .is_some_and(|at| now.saturating_duration_since(at) < self.interval);
                    if !lately {
                        self.queue.push_back(Walk::Bucket(index));
                    }
                }
            }
        }
        self.queue.pop_front()
    }

    /// When the next refresh is due (the sweep, every few seconds, starts it).
    #[cfg(test)]
    fn due(&self) -> Instant {
        self.due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(900);

    fn drain(refresh: &mut Refresh, now: Instant, closest: Option<u32>) -> Vec<Walk> {
        std::iter::from_fn(|| refresh.next(now, closest)).collect()
    }

    #[test]
    fn a_refresh_walks_the_own_id_then_each_far_bucket_no_lookup_went_into_lately() {
        let t0 = Instant::now();
        let mut refresh = Refresh::new(INTERVAL, t0);
        assert_eq!(refresh.next(t0, Some(250)), None, "nothing before the interval");
        assert_eq!(refresh.due(), (t0 + INTERVAL));

        // Lookups went into buckets 252 and 255 during the interval; 253's was too long ago.
        refresh.used(253, t0);
        refresh.used(252, t0 + Duration::from_secs(600));
        refresh.used(255, t0 + Duration::from_secs(899));
        let t1 = t0 + INTERVAL + Duration::from_secs(1);
        assert_eq!(
            drain(&mut refresh, t1, Some(250)),
            [Walk::Own, Walk::Bucket(251), Walk::Bucket(253), Walk::Bucket(254)],
            "the own id, then the far buckets not used lately, one per call"
        );
        assert_eq!(refresh.due(), (t1 + INTERVAL));

        // The next refresh: a lookup went into 255 since; the others' uses are too old.
        refresh.used(255, t1 + Duration::from_secs(100));
        let t2 = t1 + INTERVAL;
        assert_eq!(
            drain(&mut refresh, t2, Some(250)),
            [Walk::Own, Walk::Bucket(251), Walk::Bucket(252), Walk::Bucket(253), Walk::Bucket(254)]
        );
    }

    #[test]
    fn a_walk_of_the_whole_table_puts_the_refresh_off_and_an_empty_table_has_none() {
        let t0 = Instant::now();
        let mut refresh = Refresh::new(INTERVAL, t0);
        let t1 = t0 + INTERVAL;
        assert_eq!(refresh.next(t1, Some(254)), Some(Walk::Own));
        // libp2p walked the whole table (a peer joined a small table): what was left is done.
        refresh.walked(t1);
        assert_eq!(refresh.next(t1, Some(254)), None);
        assert_eq!(refresh.due(), (t1 + INTERVAL));
        // Alone, a node has nothing to walk; it tries again an interval later.
        let t2 = t1 + INTERVAL;
        assert_eq!(refresh.next(t2, None), None);
        assert_eq!(refresh.due(), (t2 + INTERVAL));
        let t3 = t2 + INTERVAL;
        assert_eq!(drain(&mut refresh, t3, Some(254)), [Walk::Own, Walk::Bucket(255)]);
    }
}
