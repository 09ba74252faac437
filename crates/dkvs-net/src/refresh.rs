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

/// When the own id was walked, and when a lookup last went into each bucket.
pub(crate) struct Refresh {
    interval: Duration,
    /// When the own id was last walked (or the node started).
    own: Instant,
    /// When a lookup of this node last went into each bucket, or a walk of the refresh into
    /// it started (or the node started).
    used: Box<[Instant; BUCKETS]>,
}

impl Refresh {
    pub(crate) fn new(interval: Duration, now: Instant) -> Refresh {
        Refresh { interval, own: now, used: Box::new([now; BUCKETS]) }
    }

    /// A lookup of this node went into bucket `index` (it found the peers closest to a key
    /// there).
    pub(crate) fn used(&mut self, index: u32, now: Instant) {
        if let Some(at) = self.used.get_mut(index as usize) {
            *at = (*at).max(now);
        }
    }

    /// The whole table was walked now (libp2p's bootstrap): every walk is an interval away.
    pub(crate) fn walked(&mut self, now: Instant) {
        self.own = self.own.max(now);
        for at in self.used.iter_mut() {
            *at = (*at).max(now);
        }
    }

    /// The walk to start at this sweep, if one is due: of the own id and each bucket from the
    /// one past `closest` (the index of the nearest non-empty bucket; `None` for an empty
    /// table, which has nothing to walk) out to the farthest, the one whose last walk or
    /// lookup is oldest, once it is an interval old. At most one walk per sweep, so a refresh
    /// is spread over as many sweeps as it has walks, and a short interval walks them in turn.
    pub(crate) fn next(&mut self, now: Instant, closest: Option<u32>) -> Option<Walk> {
        let closest = closest?;
        let bucket = (closest as usize + 1..BUCKETS).min_by_key(|i| self.used[*i]);
        let (walk, last) = match bucket {
            Some(i) if self.used[i] < self.own => (Walk::Bucket(i as u32), self.used[i]),
            _ => (Walk::Own, self.own),
        };
        if now.saturating_duration_since(last) < self.interval {
            return None;
        }
        match walk {
            Walk::Own => self.own = now,
            Walk::Bucket(i) => self.used[i as usize] = now,
        }
        Some(walk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(900);
    const SWEEP: Duration = Duration::from_secs(5);

    /// The walks started at each sweep from `from` for `sweeps` sweeps.
    fn sweeps(refresh: &mut Refresh, from: Instant, sweeps: u32, closest: u32) -> Vec<Walk> {
        (0..sweeps).filter_map(|n| refresh.next(from + SWEEP * n, Some(closest))).collect()
    }

    #[test]
    fn a_refresh_walks_the_own_id_then_each_far_bucket_no_lookup_went_into_lately() {
        let t0 = Instant::now();
        let mut refresh = Refresh::new(INTERVAL, t0);
        assert_eq!(refresh.next(t0 + INTERVAL / 2, Some(250)), None, "nothing before the interval");

        // Lookups went into buckets 252 and 255 during the interval.
        refresh.used(252, t0 + Duration::from_secs(600));
        refresh.used(255, t0 + Duration::from_secs(899));
        let t1 = t0 + INTERVAL;
        assert_eq!(
            sweeps(&mut refresh, t1, 10, 250),
            [Walk::Own, Walk::Bucket(251), Walk::Bucket(253), Walk::Bucket(254)],
            "the own id, then the far buckets not used lately, one per sweep"
        );
        // 252's and 255's turns come an interval after their lookups.
        assert_eq!(
            sweeps(&mut refresh, t0 + Duration::from_secs(1500), 1, 250),
            [Walk::Bucket(252)]
        );
        assert_eq!(
            sweeps(&mut refresh, t0 + Duration::from_secs(1800), 1, 250),
            [Walk::Bucket(255)]
        );

        // The refresh's own walks count as its buckets' use: each comes again an interval
        // later, not two (a bucket walked is not skipped as "used lately" next time).
        let t2 = t1 + INTERVAL;
        assert_eq!(
            sweeps(&mut refresh, t2, 10, 250),
            [Walk::Own, Walk::Bucket(251), Walk::Bucket(253), Walk::Bucket(254)]
        );
    }

    #[test]
    fn a_walk_of_the_whole_table_puts_the_refresh_off_and_an_empty_table_has_none() {
        let t0 = Instant::now();
        let mut refresh = Refresh::new(INTERVAL, t0);
        let t1 = t0 + INTERVAL;
        assert_eq!(refresh.next(t1, Some(253)), Some(Walk::Own));
        // libp2p walked the whole table (a peer joined a small table): what was left is done.
        refresh.walked(t1);
        assert_eq!(sweeps(&mut refresh, t1, 10, 253), []);
        // Alone, a node has nothing to walk; its walks start once it has a table again.
        let t2 = t1 + INTERVAL;
        assert_eq!(refresh.next(t2, None), None);
        assert_eq!(
            sweeps(&mut refresh, t2 + SWEEP, 10, 253),
            [Walk::Own, Walk::Bucket(254), Walk::Bucket(255)]
        );
    }

    #[test]
    fn an_interval_shorter_than_a_refresh_walks_everything_in_turn() {
        let t0 = Instant::now();
        for interval in [Duration::ZERO, SWEEP] {
            let mut refresh = Refresh::new(interval, t0);
            let walks = sweeps(&mut refresh, t0 + SWEEP, 12, 252);
            let expected = [Walk::Own, Walk::Bucket(253), Walk::Bucket(254), Walk::Bucket(255)];
            assert_eq!(walks, expected.repeat(3), "{interval:?}");
        }
    }
}
