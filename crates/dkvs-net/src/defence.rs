//! The one admission step for bytes from peers: size, rate, ban. The record protocol uses it,
//! and so do the protocols that extensions add ([`crate::Host::admit`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::rate::RateLimiter;

/// Why a message from a peer was not admitted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// The peer is banned for now (it sent an invalid record or flooded).
    #[error("the peer is banned")]
    Banned,
    /// The message is larger than its protocol allows; no honest peer sends it.
    #[error("message is {len} bytes, limit is {limit}")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// The protocol's limit.
        limit: usize,
    },
    /// The peer sent more than its rate allows.
    #[error("too many requests")]
    RateLimited,
}

/// Rate limits and bans, per peer.
pub(crate) struct Defence {
    limiter: RateLimiter,
    /// Bytes per peer: a budget beside the request count, so that large records cost more.
    bytes: RateLimiter,
    /// Gossip is limited by its author (signed, so known), in a bucket of its own: the peer
    /// that forwards a message is usually an honest relay and must not pay for it.
    gossip: RateLimiter,
    banned: HashMap<PeerId, Instant>,
    ban_duration: Duration,
}

impl Defence {
    pub(crate) fn new(config: &crate::Config) -> Defence {
        Defence {
            limiter: RateLimiter::new(config.peer_requests_per_second, config.peer_request_burst),
            // A new peer id starts with an eighth of the burst: ids cost nothing, and each
            // fresh one would otherwise bring a whole burst of bytes.
            bytes: RateLimiter::new(config.peer_bytes_per_second, config.peer_byte_burst)
                .starting_with(config.peer_byte_burst / 8),
            gossip: RateLimiter::new(config.peer_requests_per_second, config.peer_request_burst),
            banned: HashMap::new(),
            ban_duration: config.ban_duration,
        }
    }

    /// Admits one message of `len` bytes from `peer` for a protocol whose messages are at most
    /// `limit` bytes. On `Err`, the caller drops the message; when the refusal banned the
    /// peer (an oversized message, a flood), [`Defence::is_banned`] is true and the caller
    /// disconnects it.
    pub(crate) fn admit(
        &mut self,
        peer: PeerId,
        len: usize,
        limit: usize,
        now: Instant,
    ) -> Result<(), Refused> {
        if self.is_banned(&peer) {
            return Err(Refused::Banned);
        }
        if len > limit {
            self.ban(peer, now);
            return Err(Refused::TooLarge { len, limit });
        }
        if self.limiter.allow(peer, now) {
            if self.bytes.allow_n(peer, len, now) {
                return Ok(());
            }
            // Over its byte budget: refused, not banned (an honest gateway's user writes, read
            // repair and replication share one budget at each replica); a refusal costs the
            // node only this check.
            return Err(Refused::RateLimited);
        }
        if self.limiter.is_flooding(&peer) {
            self.ban(peer, now);
        }
        Err(Refused::RateLimited)
    }

    /// Admits one gossip message written by `author` (whoever forwarded it). An author that
    /// floods past its refusals is banned: its messages are dropped wherever they come from.
    pub(crate) fn admit_gossip(&mut self, author: PeerId, now: Instant) -> Result<(), Refused> {
        if self.is_banned(&author) {
            return Err(Refused::Banned);
        }
        if self.gossip.allow(author, now) {
            return Ok(());
        }
        if self.gossip.is_flooding(&author) {
            self.ban(author, now);
        }
        Err(Refused::RateLimited)
    }

    /// Bans `peer` until the ban duration has passed. True if it was not banned before.
    pub(crate) fn ban(&mut self, peer: PeerId, now: Instant) -> bool {
        self.banned.insert(peer, now + self.ban_duration).is_none()
    }

    pub(crate) fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned.contains_key(peer)
    }

    pub(crate) fn banned(&self) -> impl Iterator<Item = &PeerId> {
        self.banned.keys()
    }

    /// Ends the bans that are over and forgets idle peers; returns the peers to unblock.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<PeerId> {
        let over: Vec<PeerId> =
            self.banned.iter().filter(|(_, until)| **until <= now).map(|(p, _)| *p).collect();
        for peer in &over {
            self.banned.remove(peer);
        }
        over
    }

    /// Forgets rate state of peers that have been idle.
    pub(crate) fn forget_idle(&mut self, now: Instant) {
        self.limiter.forget_idle(now);
        self.bytes.forget_idle(now);
        self.gossip.forget_idle(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_then_rate_then_ban() {
        let config = crate::Config::default().with_peer_rate(10, 5);
        let mut defence = Defence::new(&config);
        let (peer, now) = (PeerId::random(), Instant::now());
        assert_eq!(defence.admit(peer, 10, 100, now), Ok(()));
        // Four more fit the burst; then the peer is refused, and past a burst of refusals,
        // banned.
        for _ in 0..4 {
            assert_eq!(defence.admit(peer, 10, 100, now), Ok(()));
        }
        assert_eq!(defence.admit(peer, 10, 100, now), Err(Refused::RateLimited));
        while !defence.is_banned(&peer) {
            assert_eq!(defence.admit(peer, 10, 100, now), Err(Refused::RateLimited));
        }
        assert_eq!(defence.admit(peer, 10, 100, now), Err(Refused::Banned));
        // An oversized message bans at once.
        let other = PeerId::random();
        assert_eq!(
            defence.admit(other, 101, 100, now),
            Err(Refused::TooLarge { len: 101, limit: 100 })
        );
        assert!(defence.is_banned(&other));
        // Bytes have a budget of their own: a new peer starts with an eighth of the burst, and
        // earns the rest at the rate; refusals for bytes never ban.
        let bulky = PeerId::random();
        let config = crate::Config::default().with_peer_bytes(1_000, 8_000);
        let mut bytes = Defence::new(&config);
        assert_eq!(bytes.admit(bulky, 1_000, 16_384, now), Ok(()));
        for _ in 0..100 {
            assert_eq!(bytes.admit(bulky, 1_000, 16_384, now), Err(Refused::RateLimited));
        }
        assert!(!bytes.is_banned(&bulky));
        let later = now + Duration::from_secs(8);
        for _ in 0..8 {
            assert_eq!(bytes.admit(bulky, 1_000, 16_384, later), Ok(()));
        }
        assert_eq!(bytes.admit(bulky, 1_000, 16_384, later), Err(Refused::RateLimited));
        // Gossip is counted by author, apart from requests: a banned author stays refused.
        let author = PeerId::random();
        assert_eq!(defence.admit_gossip(author, now), Ok(()));
        assert_eq!(defence.admit_gossip(peer, now), Err(Refused::Banned));
        // Bans end.
        let later = now + config.ban_duration;
        let mut over = defence.expire(later);
        over.sort();
        let mut both = vec![peer, other];
        both.sort();
        assert_eq!(over, both);
        assert!(!defence.is_banned(&peer));
    }
}
