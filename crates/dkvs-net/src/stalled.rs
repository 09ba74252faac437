//! Requests to peers this node is connected to, Kademlia's and operations' record requests:
//! not waited on for long when a peer answers nothing.
//!
//! A peer that stopped answering while its connections stay open (a process the machine
//! stopped, a suspended laptop, a host that hangs) is asked like any other. Kademlia's
//! connection gives up on a request after 10 s (its substream timeout: one fixed time would
//! cut a slow link's answers, so dkvs leaves it), so every lookup that asked such a peer
//! waited to its deadline (5 s) and ended with the answers it had, which may be far from the
//! key (testnet-plan 5p). A stopped process's connections stay open for good: its machine's
//! kernel still acknowledges what is sent to it, and pings close nothing.
//!
//! [`Answers`] times this node's requests to each peer and the peer's answers. A peer with
//! requests outstanding that has answered none of them for [`Answers::patience`] is given up
//! on: four times the median of this node's recent answers (one from each of the last 16
//! peers that answered in time, so one peer cannot move it much), four times the slowest of
//! the peer's own last 4 answers, [`SLOW_FAILURE`] at least: a slow link slows every answer,
//! a slow peer only its own. A peer's own times outlive its connections (those of the last
//! [`PAST_PEERS`] peers whose last connection closed within [`PAST_KEPT`], that had answered
//! and were not given up on since): idle connections close after a minute, and a slow peer (a
//! phone on a slow link) that connects again is waited on as before, not given up on once
//! per connection. [`crate::held::Held`] then tells Kademlia that the peer failed,
//! as it does of a dial it gave up on, and the lookups waiting on it go on without it; they
//! drop its late answers. Late answers still count for the peer: a peer that was slow (or
//! stopped a while) is waited on longer, until its next 4 answers show it fast again. A peer
//! given up on again, having answered nothing for [`CLOSE_SILENT`] (as long as Kademlia's
//! own wait on a request) while asked, has its connections closed, and its dials are held as
//! [`crate::held`] holds a peer whose dial failed slowly (a stopped process's dial never
//! completes its handshake), and it is counted unreachable in the table. Only if another
//! peer of the same scope answered since it was given up on ([`Scope`]: this host, a network
//! of its own, the internet; by the address of each peer's first connection): when
//! none did, this node's own network may be what is silent (a Wi-Fi that dropped, its
//! connections still up; an uplink that dropped while peers on the same host or network
//! still answer), and nothing is closed. One answer suffices: an attacker on the path can
//! still have silent peers closed during such an outage, with a peer of its own that it lets
//! through (a hold costs them 30 s, twice as long each time they are closed so again without
//! answering in between, and ends when they connect); and a silent peer on this node's own
//! network is closed only once another there answers. Not the relay this node holds a
//! reservation on (the driver names it, [`crate::held::Held::spare`]): behind a NAT, other
//! peers reach this node only through it. Closing ends all of the peer's connections, a
//! healthy one beside a dead one too.
//!
//! A peer given up on stays so until it answers anything: the next lookups that ask it pass
//! over it at once (the request still goes, so an answer ends its silence), instead of each
//! waiting its patience again (a peer that came back while not asked costs one lookup or
//! operation its answer); a pause of [`CLOSE_SILENT`] or more in the asking does not count
//! toward its close. Gets send their record requests through the same timing
//! (`Driver::send_now`); their answers count toward the median and the peer's own times, as
//! Kademlia's do. Puts' are timed too, with a patience of [`CLOSE_SILENT`] at least while a
//! peer owes only those ([`Wait::Write`]): a replica answers a put once its log is on disk,
//! and a slow disk is not silence, so how long it took counts nowhere; but a writer that
//! only puts learns within 10 s that a replica answers nothing. A get's or a lookup's request
//! to a peer that owes puts' answers is waited on for the peer's patience from when it was
//! sent (or less, when the puts' 10 s end first: the peer is given up on as a whole). A
//! record request the peer let time out (the record protocol's timeout, 5 s by default), or
//! that failed with its lane taken for dead, stays owed until [`ASKED_KEPT`]: the peer's
//! silence goes on counting (the record protocol drops a late answer). So a replica whose
//! disk takes longer than that timeout to take a put is silent to a writer that only puts
//! (its puts fail there all the same), and is given up on and closed as a stopped one is;
//! its answers to gets, which do not wait on its disk, end that. Other failures (a stream the
//! peer reset or that could not open, a malformed answer, a closed connection) end the
//! request. Replication's requests are not timed (nobody waits on them, and a round's answer
//! may take a while to compute), but any answer ends a peer's silence. A replica given up on
//! and silent since, or held ([`crate::held::Held::passed_over`]), is counted failed at once
//! by the next puts and gets, with that reason, instead of costing each its linger (100 ms, a
//! second for a key not set); it is still sent the request (unless it waits in this node's
//! pacing past the operation's end), and a put it stores is not counted. So a stopped peer
//! costs this node one wait, not one per lookup or operation (testnet-plan 5v).
//!
//! Nothing is given up before a peer answered one of this node's requests (a node on a slow
//! link would give up on its first ones), nor while this node is stranded (its own network
//! may be what is slow). The requests Kademlia hands a connection as it opens (to a peer a
//! lookup asked to dial; the dial's wait is [`crate::held`]'s) are timed too: Kademlia hands
//! them inside itself, so they are taken from the connection's handler as it is wrapped,
//! before the behaviour can hand it another, and timed from then (Kademlia's own clock on
//! them starts then too); the connection tells of their ends ([`crate::held::Opened`]).
//! Which lookup each is for, nothing tells. When that connection closes while others of the
//! peer stay, they are lost, and Kademlia, which hears only of a peer's last connection
//! closing, is told that the peer failed ([`crate::held::Lost`]). Kademlia hands a
//! connection requests as it opens only while the peer has no other, so a peer's outstanding
//! ones are of one connection.
//!
//! A peer that answers some requests and not others (a liar holding back the lookups of one
//! key, a request lost on a connection that closed beside another) is not given up on while
//! it answers; but a lookup's request it let wait for its patience while it answered one sent
//! after is given up on alone: that lookup goes on without the peer (Kademlia is told that
//! the request failed, in the words of its own connection handler, `held::failure`), the
//! others wait on. The requests a connection opened with are given up on so together, once
//! the last of them outstanding is late and the peer answered one sent after it: which
//! lookups they are for, nothing tells, so every running lookup but those with a request to
//! the peer outstanding and not given up on is told that its request to the peer failed
//! (`held::Holds::fail_opened`; a lookup that does not wait on the peer takes no notice). A
//! busy peer answers in turn, and a request it answered nothing sent after is waited on as
//! its silence is. An answer to an operation's record request counts for this too (a peer
//! that answered gets and no lookup kept its silence from counting, and held lookups to
//! their deadline), but not for a lookup's request sent while 32 of Kademlia's requests to
//! the peer or more were waited on (not given up on): Kademlia's connection sends 32 at once,
//! so that one may have waited here for a stream (record requests go on lanes of their own),
//! and only an answer of Kademlia's to one sent after it shows it passed over. (Kademlia
//! picks any of a peer's connections, and lanes take the newest: a lookup's request that
//! went over a slower one, a relayed circuit beside a direct connection, may be given up on
//! for an answer that came over the faster, if it took longer than the patience those set.)
//! A liar can still hold a lookup for its patience, and to its deadline by answering slowly
//! (which lengthens its own patience, also when it connects again within [`PAST_KEPT`],
//! unless it was closed for its silence), but not another peer's; gets' record requests wait
//! on the peer as a whole; and a replica that answers lookups and gets but stalls puts costs
//! each put the linger, as before.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use libp2p::PeerId;
use libp2p::kad::QueryId;
use libp2p::swarm::ConnectionId;

use crate::lane::RequestId;
use tokio::time::Instant;

use crate::held::SLOW_FAILURE;

/// How many times as long as answers take lately a lookup waits on a peer's.
const PATIENCE_FACTOR: u32 = 4;
/// How many peers' last answers tell how long answers take here.
const ANSWER_SAMPLES: usize = 16;
/// How many of a peer's own last answers tell how long it takes.
const PEER_SAMPLES: usize = 4;
/// Of how many peers whose last connection closed the own last answers are kept, and for how
/// long: a peer that connects again (idle connections close after a minute) is waited on as
/// long as before.
const PAST_PEERS: usize = 256;
const PAST_KEPT: Duration = Duration::from_secs(10 * 60);
/// A request is forgotten this long after it was sent, answered or not: Kademlia's
/// connection ends each within 10 s (its substream timeout), but one sent on a connection
/// that closed while others of its peer stay open is never answered, and a record request
/// the peer let time out stays owed. Longer than [`CLOSE_SILENT`], a put's patience.
const ASKED_KEPT: Duration = Duration::from_secs(15);
const _: () = assert!(ASKED_KEPT.as_millis() > CLOSE_SILENT.as_millis());
/// How many requests Kademlia's connection sends at once (libp2p-kad 0.49's handler opens
/// at most 32 streams; the rest wait for one).
const KADEMLIA_STREAMS: usize = 32;
/// How long a peer given up on answered nothing, while asked, before its connections are
/// closed: as long as Kademlia's own wait on a request (its substream timeout), so a peer
/// whose answers take a few seconds, or that stalls a few seconds, stays connected.
pub(crate) const CLOSE_SILENT: Duration = Duration::from_secs(10);

/// The median of the last few of some times; a time of a key replaces that key's last one.
/// The median and the slowest are kept as times are counted: they are read for every peer
/// owing answers at each poll of Kademlia's wrapper, and counted once an answer.
#[derive(Debug)]
pub(crate) struct Recent<K, const N: usize> {
    times: VecDeque<(Option<K>, Duration)>,
    median: Option<Duration>,
    slowest: Duration,
}

impl<K, const N: usize> Default for Recent<K, N> {
    fn default() -> Self {
        Recent { times: VecDeque::new(), median: None, slowest: Duration::ZERO }
    }
}

impl<K: PartialEq, const N: usize> Recent<K, N> {
    /// Counts `took`, forgetting the oldest past `N`.
    pub(crate) fn push(&mut self, took: Duration) {
        self.count(None, took);
    }

    /// Counts `took` in place of `key`'s last time, forgetting the oldest past `N`.
    pub(crate) fn push_of(&mut self, key: K, took: Duration) {
        self.times.retain(|(k, _)| k.as_ref() != Some(&key));
        self.count(Some(key), took);
    }

    fn count(&mut self, key: Option<K>, took: Duration) {
        if self.times.len() == N {
            self.times.pop_front();
        }
        self.times.push_back((key, took));
        let mut sorted = [Duration::ZERO; N];
        let sorted = &mut sorted[..self.times.len()];
        for (slot, (_, took)) in sorted.iter_mut().zip(&self.times) {
            *slot = *took;
        }
        sorted.sort_unstable();
        self.median = sorted.get(sorted.len() / 2).copied();
        self.slowest = sorted.last().copied().unwrap_or_default();
    }

    /// The median of the last `N` (none counted yet: unknown).
    pub(crate) fn median(&self) -> Option<Duration> {
        self.median
    }

    /// Whether none was counted.
    fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    /// The slowest of the last `N`.
    fn slowest(&self) -> Duration {
        self.slowest
    }

    /// The last counted.
    #[cfg(test)]
    pub(crate) fn last(&self) -> Option<Duration> {
        self.times.back().map(|(_, took)| *took)
    }
}

/// A request timed: a lookup's (dkvs's lookups send a peer one request each), one that
/// Kademlia handed a connection as it opened (the `n`th it sent: which lookup it is for is
/// not known, [`crate::held::Opened`]), or an operation's record request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Request {
    Lookup(QueryId),
    Opened(ConnectionId, u32),
    Record(RequestId),
}

impl Request {
    /// Whether it is Kademlia's (a lookup's, or one a connection opened with).
    fn is_kademlia(self) -> bool {
        matches!(self, Request::Lookup(_) | Request::Opened(..))
    }
}

/// How long a request's peer may answer nothing before it is given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Its patience: a lookup's request, a get's.
    Answer,
    /// [`CLOSE_SILENT`] at least: a put's. A replica answers one once its log is on disk, and
    /// a slow disk is not silence; how long that took tells nothing of how long answers take.
    Write,
}

/// How far the way to a peer goes: an answer shows that this node's way to peers of the same
/// scope works, not to others (a peer on the same host answers through a Wi-Fi that dropped;
/// one on the same network, through an uplink that did). Ordered nearest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) enum Scope {
    /// This host (loopback, or the memory transport: this process).
    Host = 0,
    /// A network of its own (private, link-local and unique local addresses).
    Local = 1,
    /// The internet (any other address, and names; also carrier-grade NAT's shared
    /// addresses, reached through the uplink, and a LAN peer's global IPv6 address, which
    /// the address alone does not tell apart).
    #[default]
    Internet = 2,
}

impl Scope {
    /// The scope of a connection to `address` (one through a relay: of the way to the relay).
    pub(crate) fn of(address: &libp2p::Multiaddr) -> Scope {
        use libp2p::multiaddr::Protocol;
        let v4 = |ip: std::net::Ipv4Addr| {
            if ip.is_loopback() {
                Scope::Host
            } else if ip.is_private() || ip.is_link_local() {
                Scope::Local
            } else {
                Scope::Internet
            }
        };
        match address.iter().next() {
            Some(Protocol::Ip4(ip)) => v4(ip),
            Some(Protocol::Ip6(ip)) => match ip.to_ipv4_mapped() {
                Some(ip) => v4(ip),
                None if ip.is_loopback() => Scope::Host,
                None if ip.is_unique_local() || ip.is_unicast_link_local() => Scope::Local,
                None => Scope::Internet,
            },
            Some(Protocol::Memory(_)) => Scope::Host,
            _ => Scope::Internet,
        }
    }
}

/// The requests outstanding, and how long peers take to answer (the module's docs).
#[derive(Default)]
pub(crate) struct Answers {
    /// Requests not answered yet, by peer.
    asked: HashMap<(PeerId, Request), Asked>,
    /// The same, in the order they were sent (and some that ended since): their expiry.
    sent: VecDeque<(Instant, PeerId, Request)>,
    /// The peers asked since they connected.
    peers: HashMap<PeerId, Peer>,
    /// How long the last answers in time took, one of each peer.
    times: Recent<PeerId, ANSWER_SAMPLES>,
    /// When a peer last answered, by the [`Scope`] of the way to it.
    heard: [Option<Instant>; 3],
    /// The [`Scope`] of the way to each peer connected (its first connection's).
    scopes: HashMap<PeerId, Scope>,
    /// How long the last answers of peers whose last connection closed took (those that had
    /// answered, and were not given up on since), and when it closed, the most recently
    /// closed last; [`PAST_PEERS`] at most, none older than [`PAST_KEPT`].
    past: VecDeque<(PeerId, Recent<(), PEER_SAMPLES>, Instant)>,
}

/// A request outstanding.
#[derive(Debug, Clone, Copy)]
struct Asked {
    at: Instant,
    wait: Wait,
    /// Whether it is a lookup's, sent while 32 of Kademlia's requests to its peer or more were
    /// waited on ([`KADEMLIA_STREAMS`]): it may wait here for a stream.
    crowded: bool,
    /// Whether its peer was given up on since (Kademlia's lookups went on without it).
    given_up: bool,
}

impl Asked {
    /// Whether it is the request sent at `sent` (not one sent before under the same key),
    /// and still waited on.
    fn waited_on(&self, sent: Instant) -> bool {
        self.at == sent && !self.given_up
    }
}

/// A peer asked since it connected.
#[derive(Debug)]
struct Peer {
    /// Its requests outstanding and not given up on.
    waiting: usize,
    /// Of those, the ones waited on for its patience ([`Wait::Answer`]).
    answers_due: usize,
    /// When the first of those was sent since none was owed.
    answers_due_since: Instant,
    /// Since when it has answered none of them: its last answer, or the first of them.
    silent_since: Instant,
    /// How long its last answers took (the ones given up on too).
    times: Recent<(), PEER_SAMPLES>,
    /// Since when it has answered nothing, if it was given up on since its last answer.
    given_up_since: Option<Instant>,
    /// When it was given up on first since its last answer (or since a pause in the asking):
    /// only an answer of another peer after that shows this node's own network works.
    given_up_at: Option<Instant>,
    /// When it was last asked something.
    last_asked: Instant,
    /// Its lookups' requests in the order they were sent (some ended since): one outstanding
    /// is given up on alone once it is late, if the peer answered one sent after it
    /// ([`Peer::answered_after`]).
    lookups: VecDeque<(Instant, QueryId)>,
    /// The requests its connections opened with, in the order they were sent (some ended
    /// since): given up on together once the last of them outstanding is late, if the peer
    /// answered one sent after it.
    opened: VecDeque<(Instant, ConnectionId, u32)>,
    /// When the last sent of Kademlia's requests it answered was sent: it answered those
    /// sent before that, or passed them over.
    answered_sent: Option<Instant>,
    /// The same of operations' record requests.
    record_answered_sent: Option<Instant>,
    /// Of its requests outstanding and not given up on, Kademlia's.
    kademlia_waiting: usize,
}

impl Peer {
    /// `asked`, waited on, is no longer.
    fn unwait(&mut self, request: Request, asked: Asked) {
        self.waiting -= 1;
        self.answers_due -= usize::from(asked.wait == Wait::Answer);
        self.kademlia_waiting -= usize::from(request.is_kademlia());
    }

    /// When the last sent of the requests it answered was sent: none sent after can be
    /// passed over ([`Peer::answered_after`]).
    fn answered_until(&self) -> Option<Instant> {
        self.answered_sent.max(self.record_answered_sent)
    }

    /// Whether it answered a request sent after `at`, when one of Kademlia's was sent to it:
    /// one of Kademlia's, or an operation's record request, unless that one of Kademlia's
    /// was `crowded` ([`Asked::crowded`]: it may have waited here for a stream, through no
    /// fault of the peer's; Kademlia's connection sends its requests in turn).
    fn answered_after(&self, at: Instant, crowded: bool) -> bool {
        let record = self.record_answered_sent.filter(|_| !crowded);
        self.answered_sent.max(record).is_some_and(|sent| sent > at)
    }
}

/// What [`Answers::give_up`] found.
#[derive(Debug, Default)]
pub(crate) struct GivenUp {
    /// The peers given up on, with how long they had been silent.
    pub(crate) silent: Vec<(PeerId, Duration)>,
    /// Of those, the ones given up on before that answered nothing for [`CLOSE_SILENT`]:
    /// their connections close.
    pub(crate) closing: Vec<PeerId>,
    /// Lookups' requests given up on alone: late while their peer answered others.
    pub(crate) late: Vec<(PeerId, QueryId)>,
    /// The peers whose requests their connections opened with were given up on alone: late
    /// while the peer answered others. Which lookups those are for, nothing tells: all but
    /// those with a request to the peer not given up on ([`Answers::waiting_lookups`]).
    pub(crate) late_opened: Vec<PeerId>,
}

impl Answers {
    /// This node sent `peer` `request` at `now`.
    pub(crate) fn asked(&mut self, peer: PeerId, request: Request, wait: Wait, now: Instant) {
        let waiting = self.peers.get(&peer).map_or(0, |entry| entry.kademlia_waiting);
        // (Those a connection opened with are told of as their streams open.)
        let crowded = matches!(request, Request::Lookup(_)) && waiting >= KADEMLIA_STREAMS;
        let asked = Asked { at: now, wait, crowded, given_up: false };
        let was = self.asked.insert((peer, request), asked);
        self.sent.push_back((now, peer, request));
        let past = &mut self.past;
        let entry = self.peers.entry(peer).or_insert_with(|| Peer {
            waiting: 0,
            answers_due: 0,
            answers_due_since: now,
            silent_since: now,
            // Its answers' times from before, if it connected again.
            times: (past.iter().position(|(p, _, _)| *p == peer))
                .and_then(|i| past.remove(i))
                .filter(|(_, _, closed)| now < *closed + PAST_KEPT)
                .map_or_else(Recent::default, |(_, times, _)| times),
            given_up_since: None,
            given_up_at: None,
            last_asked: now,
            lookups: VecDeque::new(),
            opened: VecDeque::new(),
            answered_sent: None,
            record_answered_sent: None,
            kademlia_waiting: 0,
        });
        // A peer not asked for a while was not silent meanwhile, unless it was given up on
        // and has answered nothing since: then it is passed over at once. A pause of
        // CLOSE_SILENT or more in the asking does not count toward its close: its silence
        // is counted for that from now.
        if entry.waiting == 0 {
            match entry.given_up_since {
                None => entry.silent_since = now,
                Some(_) if now.saturating_duration_since(entry.last_asked) >= CLOSE_SILENT => {
                    entry.given_up_since = Some(now);
                    entry.given_up_at = Some(now);
                }
                Some(_) => {}
            }
        }
        entry.last_asked = now;
        if let Some(was) = was.filter(|was| !was.given_up) {
            entry.unwait(request, was);
        }
        if wait == Wait::Answer && entry.answers_due == 0 {
            entry.answers_due_since = now;
        }
        entry.waiting += 1;
        entry.answers_due += usize::from(wait == Wait::Answer);
        entry.kademlia_waiting += usize::from(request.is_kademlia());
        match (request, wait) {
            (Request::Lookup(lookup), Wait::Answer) => entry.lookups.push_back((now, lookup)),
            (Request::Opened(connection, index), Wait::Answer) => {
                entry.opened.push_back((now, connection, index))
            }
            _ => {}
        }
    }

    /// `peer` answered `request` at `now` (`answered`), or the request failed otherwise than
    /// by the peer's silence (a stream that could not open or broke, a closed connection, a
    /// Kademlia request's own end).
    pub(crate) fn ended(&mut self, peer: PeerId, request: Request, answered: bool, now: Instant) {
        let asked = self.asked.remove(&(peer, request));
        let Some(entry) = self.peers.get_mut(&peer) else { return };
        if let Some(asked) = asked.filter(|asked| !asked.given_up) {
            entry.unwait(request, asked);
        }
        if !answered {
            return;
        }
        // (A peer's scope is known from its connection on; a late report may come after.)
        if let Some(scope) = self.scopes.get(&peer) {
            let heard = &mut self.heard[*scope as usize];
            *heard = (*heard).max(Some(now));
        }
        if entry.given_up_since.is_some() {
            let silent = now.saturating_duration_since(entry.silent_since);
            tracing::debug!(%peer, ?silent, "a peer given up on answered again");
        }
        entry.silent_since = entry.silent_since.max(now);
        // An answer to an operation's record request shows the peer at work as well, unless
        // Kademlia's request may have waited here ([`Peer::answered_after`]).
        match (asked, request) {
            (Some(asked), Request::Lookup(_) | Request::Opened(..)) => {
                entry.answered_sent = entry.answered_sent.max(Some(asked.at))
            }
            (Some(asked), Request::Record(_)) => {
                entry.record_answered_sent = entry.record_answered_sent.max(Some(asked.at))
            }
            (None, _) => {}
        }
        entry.given_up_since = None;
        entry.given_up_at = None;
        if let Some(asked) = asked.filter(|asked| asked.wait == Wait::Answer) {
            let took = now.saturating_duration_since(asked.at);
            entry.times.push(took);
            // A late answer tells of this peer, not of how long answers take here.
            if !asked.given_up {
                self.times.push_of(peer, took);
            }
        }
    }

    /// `peer` connected, its first connection at `address` (the remote one).
    pub(crate) fn connected(&mut self, peer: PeerId, address: &libp2p::Multiaddr) {
        self.scopes.entry(peer).or_insert_with(|| Scope::of(address));
    }

    /// `peer`'s `connection` closed, and others stay: the requests it opened with are lost
    /// (the others sent on it are not known, [`Answers::connection_closed`]). Whether any was
    /// still waited on: Kademlia, which hears of no close while others stay, waits on them.
    pub(crate) fn opened_lost(&mut self, peer: PeerId, connection: ConnectionId) -> bool {
        let Some(entry) = self.peers.get_mut(&peer).filter(|entry| entry.waiting > 0) else {
            return false;
        };
        let mut waited = false;
        self.asked.retain(|(asked, request), state| {
            let lost =
                *asked == peer && matches!(request, Request::Opened(c, _) if *c == connection);
            if lost && !state.given_up {
                entry.unwait(*request, *state);
                waited = true;
            }
            !lost
        });
        waited
    }

    /// One of `peer`'s connections closed at `now`, and others stay: the requests sent on it
    /// are lost, and which they were is not known. Its silence counts from now: if it answers
    /// nothing for its patience, the lookups waiting on it go on without it.
    pub(crate) fn connection_closed(&mut self, peer: PeerId, now: Instant) {
        if let Some(entry) = self.peers.get_mut(&peer).filter(|entry| entry.waiting > 0) {
            entry.silent_since = now;
        }
    }

    /// `peer`'s last connection closed at `now`: Kademlia's lookups count it failed
    /// themselves. How long its answers took is kept, for when it connects again; not if it
    /// was given up on and has answered nothing since (closed for its silence, most likely: a
    /// peer that answered slowly once and then stopped would come back with the patience it
    /// earned).
    pub(crate) fn closed(&mut self, peer: PeerId, now: Instant) {
        self.scopes.remove(&peer);
        let Some(entry) = self.peers.remove(&peer) else { return };
        self.asked.retain(|(asked, _), _| *asked != peer);
        while self.past.front().is_some_and(|(_, _, closed)| now >= *closed + PAST_KEPT) {
            self.past.pop_front();
        }
        if !entry.times.is_empty() && entry.given_up_since.is_none() {
            if self.past.len() == PAST_PEERS {
                self.past.pop_front();
            }
            self.past.push_back((peer, entry.times, now));
        }
    }

    /// When a peer reached `scope`'s way last answered.
    pub(crate) fn heard(&self, scope: Scope) -> Option<Instant> {
        self.heard[scope as usize]
    }

    /// Whether `peer` was given up on and has answered nothing since: for how long it has
    /// answered nothing.
    pub(crate) fn silent(&self, peer: &PeerId, now: Instant) -> Option<Duration> {
        let entry = self.peers.get(peer).filter(|entry| entry.given_up_since.is_some())?;
        Some(now.saturating_duration_since(entry.silent_since))
    }

    /// How long a lookup waits on `peer`'s answer (the module's docs); unknown before any
    /// peer answered.
    fn patience(&self, peer: &Peer) -> Option<Duration> {
        patience(&self.times, peer)
    }

    /// When `peer`'s oldest lookup request still waited on that it answered one sent after
    /// was sent ([`Peer::answered_after`]): the next given up on alone, once late.
    fn oldest_passed_over(&self, id: &PeerId, peer: &Peer) -> Option<Instant> {
        let passed_over = |(at, lookup): &&(Instant, QueryId)| {
            let asked = self.asked.get(&(*id, Request::Lookup(*lookup)));
            asked.is_some_and(|asked| {
                asked.waited_on(*at) && peer.answered_after(*at, asked.crowded)
            })
        };
        let answered = peer.answered_until();
        let before = |(at, _): &&(Instant, QueryId)| answered.is_some_and(|sent| *at < sent);
        peer.lookups.iter().take_while(before).find(passed_over).map(|(at, _)| *at)
    }

    /// When `peer`, owing answers, is given up on unless it answers: its patience after its
    /// silence began, [`CLOSE_SILENT`] at least for puts' answers; for a get's or a lookup's,
    /// its patience after the first of those still owed was sent (a peer given up on and
    /// silent since: after its silence began). Unknown before any peer answered.
    fn due(&self, peer: &Peer) -> Option<Instant> {
        let patience = self.patience(peer)?;
        let writes = peer.waiting > peer.answers_due;
        let for_writes = writes.then(|| peer.silent_since + patience.max(CLOSE_SILENT));
        let answers_from = match peer.given_up_since {
            Some(_) => peer.silent_since,
            None => peer.silent_since.max(peer.answers_due_since),
        };
        let for_answers = (peer.answers_due > 0).then(|| answers_from + patience);
        for_writes.into_iter().chain(for_answers).min()
    }

    /// Forgets the requests sent [`ASKED_KEPT`] ago or more (the module's docs).
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(&(at, peer, request)) = self.sent.front()
            && now >= at + ASKED_KEPT
        {
            self.sent.pop_front();
            if let Some(entry) = self.peers.get_mut(&peer) {
                let expired = |at: Instant| now >= at + ASKED_KEPT;
                while entry.lookups.front().is_some_and(|(at, _)| expired(*at)) {
                    entry.lookups.pop_front();
                }
                while entry.opened.front().is_some_and(|(at, _, _)| expired(*at)) {
                    entry.opened.pop_front();
                }
            }
            let Some(asked) = self.asked.get(&(peer, request)).copied() else { continue };
            if asked.at != at {
                continue;
            }
            self.asked.remove(&(peer, request));
            if !asked.given_up {
                // Never answered, nor failed by Kademlia: its connection closed, or it was let
                // time out.
                self.peers.get_mut(&peer).expect("a peer asked").unwait(request, asked);
            }
        }
    }

    /// Gives up on the peers that answered none of their requests outstanding for their
    /// patience at `now`: their requests no longer count until a new one is sent.
    pub(crate) fn give_up(&mut self, now: Instant) -> GivenUp {
        self.expire(now);
        // Nothing outstanding (a quiet node, most of the time): nothing to look through.
        if self.asked.is_empty() {
            return GivenUp::default();
        }
        let mut given_up = GivenUp::default();
        // (Each peer's state is looked at only when it owes something: most of a busy node's
        // peers owe nothing at any one time, and this runs at every poll.)
        for (peer, entry) in self.peers.iter().filter(|(_, entry)| entry.waiting > 0) {
            if self.due(entry).is_some_and(|due| now >= due) {
                let silent = now.saturating_duration_since(entry.silent_since);
                given_up.silent.push((*peer, silent));
            }
        }
        for (peer, _) in &given_up.silent {
            let entry = self.peers.get_mut(peer).expect("a peer asked");
            entry.waiting = 0;
            entry.answers_due = 0;
            entry.kademlia_waiting = 0;
            // Closed only if another peer reached the same way answered since it was given up
            // on: when none did, this node's own network may be what is silent (a Wi-Fi that
            // dropped, its connections still up; a peer on the same host or network may still
            // answer).
            let heard = self.heard[self.scopes.get(peer).copied().unwrap_or_default() as usize];
            let others_heard = heard.zip(entry.given_up_at).is_some_and(|(heard, at)| heard > at);
            match entry.given_up_since {
                None => {
                    entry.given_up_since = Some(entry.silent_since);
                    entry.given_up_at = Some(now);
                }
                Some(since)
                    if now.saturating_duration_since(since) >= CLOSE_SILENT && others_heard =>
                {
                    given_up.closing.push(*peer);
                }
                Some(_) => {}
            }
            for ((asked, _), request) in &mut self.asked {
                request.given_up |= asked == peer;
            }
        }
        // A peer that answers some requests and not others: its lookups' requests late for
        // its patience, that it answered one sent after, are given up on alone (the others'
        // lookups go on waiting on it). One it answered nothing sent after is waited on as
        // the peer's silence is (above): a busy peer answers in turn.
        let Answers { peers, asked, times, .. } = self;
        for (peer, entry) in peers.iter_mut() {
            if entry.lookups.is_empty() && entry.opened.is_empty() {
                continue;
            }
            let Some(patience) = patience(times, entry) else { break };
            // (Not only the oldest: a record's answer shows nothing of one that was crowded,
            // `Asked::crowded`; none sent after the last answered can be.)
            let answered = entry.answered_until();
            let mut i = 0;
            while let Some(&(at, lookup)) = entry.lookups.get(i) {
                let waited = asked.get_mut(&(*peer, Request::Lookup(lookup)));
                let Some(request) = waited.filter(|asked| asked.waited_on(at)) else {
                    entry.lookups.remove(i);
                    continue;
                };
                if now < at + patience || answered.is_none_or(|sent| sent <= at) {
                    break;
                }
                if !entry.answered_after(at, request.crowded) {
                    i += 1;
                    continue;
                }
                request.given_up = true;
                entry.unwait(Request::Lookup(lookup), *request);
                entry.lookups.remove(i);
                given_up.late.push((*peer, lookup));
            }
            // The requests its connections opened with: which lookups they are for, nothing
            // tells, so they are given up on together, once the last of them is late.
            // (Kademlia hands a connection requests as it opens only while the peer has no
            // other: a peer's outstanding ones are of one connection, sent as it opened; past
            // 32 of them, `held::Opening`'s docs.)
            let Some(last) = last_opened(asked, peer, entry) else {
                entry.opened.clear();
                continue;
            };
            if now < last + patience || !entry.answered_after(last, false) {
                continue;
            }
            for (at, connection, index) in std::mem::take(&mut entry.opened) {
                let opened = Request::Opened(connection, index);
                let waited = asked.get_mut(&(*peer, opened));
                if let Some(request) = waited.filter(|asked| asked.waited_on(at)) {
                    request.given_up = true;
                    entry.unwait(opened, *request);
                }
            }
            given_up.late_opened.push(*peer);
        }
        given_up
    }

    /// The lookups with a request to `peer` outstanding and not given up on: those that a
    /// failure of the requests its connections opened with ([`GivenUp::late_opened`]) is not
    /// for.
    pub(crate) fn waiting_lookups(&self, peer: &PeerId) -> HashSet<QueryId> {
        let Some(entry) = self.peers.get(peer) else { return HashSet::new() };
        let outstanding = |(at, lookup): &&(Instant, QueryId)| {
            let asked = self.asked.get(&(*peer, Request::Lookup(*lookup)));
            asked.is_some_and(|asked| asked.waited_on(*at))
        };
        entry.lookups.iter().filter(outstanding).map(|(_, lookup)| *lookup).collect()
    }

    /// When the next peer, or request, is given up on, unless it answers.
    pub(crate) fn next(&self) -> Option<Instant> {
        let waiting = self.peers.iter().filter(|(_, entry)| entry.waiting > 0);
        let due = |(id, entry): (&PeerId, &Peer)| {
            let patience = self.patience(entry)?;
            let oldest = self.oldest_passed_over(id, entry).map(|at| at + patience);
            let opened = last_opened(&self.asked, id, entry);
            let opened = opened.filter(|at| entry.answered_after(*at, false));
            let opened = opened.map(|at| at + patience);
            self.due(entry).into_iter().chain(oldest).chain(opened).min()
        };
        waiting.filter_map(due).min()
    }
}

/// When the last of the requests `peer`'s connections opened with that is outstanding and
/// not given up on was sent.
fn last_opened(
    asked: &HashMap<(PeerId, Request), Asked>,
    id: &PeerId,
    peer: &Peer,
) -> Option<Instant> {
    let outstanding = |(at, connection, index): &&(Instant, ConnectionId, u32)| {
        let asked = asked.get(&(*id, Request::Opened(*connection, *index)));
        asked.is_some_and(|asked| asked.waited_on(*at))
    };
    peer.opened.iter().rev().find(outstanding).map(|(at, _, _)| *at)
}

/// How long a lookup waits on `peer`'s answer, answers here taking `times` (the module's
/// docs); unknown before any peer answered.
fn patience(times: &Recent<PeerId, ANSWER_SAMPLES>, peer: &Peer) -> Option<Duration> {
    let lately = times.median()?.max(peer.times.slowest());
    Some((lately * PATIENCE_FACTOR).max(SLOW_FAILURE))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use libp2p::kad;
    use libp2p::swarm::{ConnectionId, NetworkBehaviour, ToSwarm};

    use super::*;
    use libp2p::swarm::ConnectionHandler as _;
    use libp2p::swarm::handler::ConnectionEvent;

    use crate::held::tests::{
        Woken, asked_to_dial_one, closed, established, established_at, events, opened,
        poll_handler, with_peers, wrapped,
    };
    use crate::held::{Held, KadOut};

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    /// A node connected to `peers` DHT servers, the only peers in its table.
    fn connected_to(peers: usize) -> (Held, Vec<PeerId>) {
        let (mut held, peers) = with_peers(peers);
        for peer in &peers {
            established(&mut held, *peer, true);
        }
        (held, peers)
    }

    /// Polls `held` until it has nothing to say: the peers Kademlia sent a request, and the
    /// lookups that ended.
    fn drain(held: &mut Held) -> (Vec<PeerId>, Vec<QueryId>) {
        drain_waking(held, futures::task::noop_waker_ref())
    }

    fn drain_waking(held: &mut Held, waker: &Waker) -> (Vec<PeerId>, Vec<QueryId>) {
        let (mut asked, mut ended) = (Vec::new(), Vec::new());
        for event in events(held, waker) {
            match event {
                ToSwarm::NotifyHandler { peer_id, .. } => asked.push(peer_id),
                ToSwarm::GenerateEvent(kad::Event::OutboundQueryProgressed { id, .. }) => {
                    ended.push(id)
                }
                _ => {}
            }
        }
        (asked, ended)
    }

    /// A node connected to one DHT server, where answers take 10 ms.
    fn one_peer() -> (Held, PeerId) {
        let (mut held, peers) = connected_to(1);
        held.wrapper_mut().answers_mut().times.push(ms(10));
        (held, peers[0])
    }

    /// Starts a lookup of `key` and polls until Kademlia has sent its requests.
    fn ask(held: &mut Held, key: u8) -> QueryId {
        let lookup = held.get_closest_peers(vec![key]);
        drain(held);
        lookup
    }

    /// `peer`, silent from now on, is passed over after `wait`, not a millisecond earlier.
    async fn given_up_after(held: &mut Held, peer: PeerId, wait: Duration) {
        tokio::time::advance(wait - ms(1)).await;
        drain(held);
        assert!(held.passed_over(&peer, Instant::now()).is_none(), "given up early");
        tokio::time::advance(ms(1)).await;
        drain(held);
        assert!(held.passed_over(&peer, Instant::now()).is_some(), "not given up");
    }

    /// `peer` answers `lookup`'s request, naming nobody.
    fn answer(held: &mut Held, peer: PeerId, lookup: QueryId) {
        let event = KadOut::FindNodeRes { closer_peers: Vec::new(), query_id: lookup };
        held.on_connection_handler_event(peer, ConnectionId::new_unchecked(7), event);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_stops_waiting_on_a_peer_that_answers_nothing_and_wakes_for_it() {
        let (mut held, peers) = connected_to(2);
        let (answers, silent) = (peers[0], peers[1]);
        let lookup = held.get_closest_peers(vec![1]);
        assert_eq!(drain(&mut held).0.len(), 2, "both asked");
        tokio::time::advance(ms(10)).await;
        answer(&mut held, answers, lookup);
        // Answers take 10 ms here: the lookup waits SLOW_FAILURE on the other, from when it
        // was asked.
        tokio::time::advance(SLOW_FAILURE - ms(11)).await;
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        assert_eq!(drain_waking(&mut held, &waker), (vec![], vec![]), "still waits");
        assert!(!woken.woken());
        tokio::time::advance(ms(1)).await;
        assert!(woken.woken(), "woken when it gives up");
        assert_eq!(drain(&mut held), (vec![], vec![lookup]), "went on without the peer");
        // Its connection stays. Its answer, 2.5 s after it was asked, tells how slow it is:
        // the next lookup waits four times as long on it, and SLOW_FAILURE on the other.
        tokio::time::advance(ms(500)).await;
        answer(&mut held, silent, lookup);
        let next = held.get_closest_peers(vec![2]);
        assert_eq!(drain(&mut held).0.len(), 2, "both asked again");
        tokio::time::advance(ms(10)).await;
        answer(&mut held, answers, next);
        assert_eq!(held.wrapper_mut().answers_mut().times.median(), Some(ms(10)));
        tokio::time::advance(ms(2500) * PATIENCE_FACTOR - ms(11)).await;
        assert_eq!(drain(&mut held), (vec![], vec![]), "waited as long as its own answers take");
        tokio::time::advance(ms(1)).await;
        assert_eq!(drain(&mut held), (vec![], vec![next]));
    }

    #[tokio::test(start_paused = true)]
    async fn no_peer_is_given_up_before_any_answered_nor_while_stranded() {
        let (mut held, peers) = connected_to(1);
        let lookup = held.get_closest_peers(vec![1]);
        assert_eq!(drain(&mut held).0, peers);
        tokio::time::advance(SLOW_FAILURE * 2).await;
        // How long answers take here is unknown (on a slow link, each would be given up).
        assert_eq!(drain(&mut held), (vec![], vec![]), "given up before any peer answered");
        // Answers take 10 ms here (another lookup's), but this node is stranded: its own
        // network may be what is slow.
        held.wrapper_mut().answers_mut().times.push(ms(10));
        held.set_stranded(true);
        assert_eq!(drain(&mut held), (vec![], vec![]), "given up while stranded");
        held.set_stranded(false);
        assert_eq!(drain(&mut held), (vec![], vec![lookup]), "given up once not stranded");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_is_waited_on_from_its_last_answer_and_a_closed_one_is_forgotten() {
        let (mut held, peer) = one_peer();
        let first = ask(&mut held, 1);
        tokio::time::advance(ms(300)).await;
        let second = ask(&mut held, 2);
        // It answers the first at 400 ms: the second's wait counts from then (it would have
        // ended at 2.3 s).
        tokio::time::advance(ms(100)).await;
        answer(&mut held, peer, first);
        assert_eq!(drain(&mut held), (vec![], vec![first]));
        tokio::time::advance(SLOW_FAILURE - ms(1)).await;
        assert_eq!(drain(&mut held), (vec![], vec![]), "given up though it answered lately");
        tokio::time::advance(ms(1)).await;
        assert_eq!(drain(&mut held), (vec![], vec![second]));
        // Given up on, and silent since: the next lookup passes over it at once.
        let third = held.get_closest_peers(vec![3]);
        assert_eq!(drain(&mut held), (vec![peer], vec![third]), "waited on again");
        // A late answer ends its silence: the next lookup waits on it again.
        answer(&mut held, peer, second);
        let fourth = ask(&mut held, 4);
        assert!(held.query(&fourth).is_some(), "passed over though it answered");
        // A request outstanding when the peer's last connection closed: Kademlia counts it
        // failed itself, and nothing of the peer is kept.
        closed(&mut held, peer, 0);
        assert_eq!(drain(&mut held), (vec![], vec![fourth]));
        let answers = held.wrapper_mut().answers_mut();
        assert!(answers.asked.is_empty() && answers.peers.is_empty());
        assert_eq!(answers.next(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_silent_at_lookups_in_a_row_has_its_connections_closed_unless_spared() {
        let (mut held, peers) = connected_to(2);
        let (peer, other) = (peers[0], peers[1]);
        held.wrapper_mut().answers_mut().times.push(ms(10));
        assert!(!held.is_held(&peer, Instant::now()), "held before it was closed");
        assert_eq!(rounds(&mut held, peer, Some(other), 1).await, Some(6));
        // Closed, its dials are held (a stopped process's never completes its handshake), and
        // operations pass over it, until it connects again.
        assert!(held.is_held(&peer, Instant::now()), "closed, not held");
        let why = held.passed_over(&peer, Instant::now()).unwrap_or_default();
        assert!(why.contains("answered nothing for 10s while asked"), "{why}");
        established(&mut held, peer, false);
        assert!(!held.is_held(&peer, Instant::now()), "held though it connected");
        // An answer ends the count.
        let lookup = ask(&mut held, 20);
        answer(&mut held, peer, lookup);
        assert_eq!(rounds(&mut held, peer, Some(other), 30).await, Some(6), "not from the answer");
        // The relay this node holds a reservation on is not closed.
        let lookup = ask(&mut held, 40);
        answer(&mut held, peer, lookup);
        held.spare(Some(peer));
        assert_eq!(rounds(&mut held, peer, Some(other), 50).await, None, "the relay closed");
        held.spare(None);
        assert_eq!(rounds(&mut held, peer, Some(other), 60).await, Some(1), "silent 12 s and more");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_connects_again_and_answers_nothing_is_held_twice_as_long() {
        use crate::held::HOLD_FIRST;
        let (mut held, peers) = connected_to(2);
        let (peer, other) = (peers[0], peers[1]);
        held.wrapper_mut().answers_mut().times.push(ms(10));
        // Held for `hold` from its close, within the last round's 2 s (`rounds`).
        let held_for = |held: &Held, hold: Duration| {
            let now = Instant::now();
            held.is_held(&peer, now + hold - SLOW_FAILURE - ms(1))
                && !held.is_held(&peer, now + hold)
        };
        let mut round = 1;
        for hold in [HOLD_FIRST, HOLD_FIRST * 2, HOLD_FIRST * 4] {
            assert_eq!(rounds(&mut held, peer, Some(other), round).await, Some(6));
            assert!(held_for(&held, hold), "not held for {hold:?}");
            // Its connection closes; it connects again, and answers nothing again.
            closed(&mut held, peer, 0);
            established(&mut held, peer, true);
            assert!(!held.is_held(&peer, Instant::now()), "held though it connected");
            round += 10;
        }
        // An answer ends the count: a lookup's, or a record request's.
        let lookup = ask(&mut held, round);
        answer(&mut held, peer, lookup);
        assert_eq!(rounds(&mut held, peer, Some(other), round + 1).await, Some(6));
        assert!(held_for(&held, HOLD_FIRST), "the count went on after an answer");
        for (hold, from) in [(HOLD_FIRST * 2, round + 10), (HOLD_FIRST, round + 20)] {
            closed(&mut held, peer, 0);
            established(&mut held, peer, true);
            if hold == HOLD_FIRST {
                let id = crate::lane::RequestId::new_unchecked(1);
                held.record_asked(peer, id, Wait::Answer, Instant::now());
                held.record_ended(peer, id, true, Instant::now());
            }
            assert_eq!(rounds(&mut held, peer, Some(other), from).await, Some(6));
            assert!(held_for(&held, hold), "not held for {hold:?}");
        }
    }

    /// A lookup every 2 s that `other` (if any) answers at once: the round (counted from 1)
    /// at which `peer` had its connections closed. The first lookup gives up on it after 2 s,
    /// the next ones at once; it is closed at the give-up once it has answered nothing for
    /// CLOSE_SILENT (10 s: the sixth's), not before.
    async fn rounds(held: &mut Held, peer: PeerId, other: Option<PeerId>, from: u8) -> Option<u8> {
        let close = |e: &ToSwarm<_, _>| match e {
            ToSwarm::CloseConnection { peer_id, .. } => *peer_id == peer,
            _ => false,
        };
        for round in from..from + 7 {
            let lookup = held.get_closest_peers(vec![round]);
            let waker = futures::task::noop_waker_ref();
            let mut said = events(held, waker);
            if let Some(other) = other {
                let event = KadOut::FindNodeRes { closer_peers: Vec::new(), query_id: lookup };
                held.on_connection_handler_event(other, ConnectionId::new_unchecked(7), event);
            }
            tokio::time::advance(SLOW_FAILURE).await;
            said.extend(events(held, waker));
            if said.iter().any(close) {
                return Some(round - from + 1);
            }
        }
        None
    }

    #[tokio::test(start_paused = true)]
    async fn no_peer_is_closed_while_none_answers() {
        // Every peer silent at once: this node's own network may be what is (a Wi-Fi that
        // dropped, its connections still up). They are given up on, not closed nor held.
        let (mut held, peers) = connected_to(2);
        held.wrapper_mut().answers_mut().times.push(ms(10));
        // One answered after the other's silence began, before this node's network dropped:
        // that says nothing of the network since.
        let lookup = ask(&mut held, 99);
        tokio::time::advance(ms(100)).await;
        answer(&mut held, peers[1], lookup);
        assert_eq!(rounds(&mut held, peers[0], None, 1).await, None);
        assert!(
            !held.is_held(&peers[0], Instant::now()) && !held.is_held(&peers[1], Instant::now())
        );
        assert!(held.passed_over(&peers[1], Instant::now()).is_some(), "given up on");
        // Once one of them answers, the other, silent since, is closed at its next give-up.
        let lookup = held.get_closest_peers(vec![100]);
        drain(&mut held);
        answer(&mut held, peers[1], lookup);
        assert_eq!(rounds(&mut held, peers[0], Some(peers[1]), 101).await, Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn only_an_answer_from_as_far_away_shows_that_this_nodes_network_works() {
        // A peer over the internet goes silent while one on this host, or on this node's own
        // network, answers: this node's uplink may be what dropped. It is given up on, not
        // closed (nor held); once a peer over the internet answers, it is closed.
        let near =
            ["/ip4/127.0.0.1/tcp/1", "/memory/3", "/ip4/192.168.1.7/tcp/1", "/ip6/fe80::9/tcp/1"];
        for near in near {
            let (mut held, peers) = with_peers(3);
            let (silent, near_peer, far_peer) = (peers[0], peers[1], peers[2]);
            established_at(&mut held, silent, true, "/ip4/198.51.100.7/tcp/1");
            established_at(&mut held, near_peer, true, near);
            established_at(&mut held, far_peer, true, "/ip6/2001:db8::7/tcp/1/p2p-circuit");
            held.wrapper_mut().answers_mut().times.push(ms(10));
            assert_eq!(rounds(&mut held, silent, Some(near_peer), 1).await, None, "{near}");
            assert!(!held.is_held(&silent, Instant::now()), "{near}");
            assert!(held.passed_over(&silent, Instant::now()).is_some(), "given up on: {near}");
            let lookup = held.get_closest_peers(vec![8]);
            drain(&mut held);
            answer(&mut held, far_peer, lookup);
            assert_eq!(rounds(&mut held, silent, Some(far_peer), 9).await, Some(1), "{near}");
        }
        // The scope of the way to a peer, by its address.
        let scope = |address: &str| Scope::of(&address.parse().expect("address"));
        assert_eq!(scope("/ip6/::1/udp/1/quic-v1"), Scope::Host);
        assert_eq!(scope("/ip4/10.1.2.3/tcp/1"), Scope::Local);
        assert_eq!(scope("/ip4/172.16.0.1/tcp/1"), Scope::Local);
        assert_eq!(scope("/ip4/169.254.0.1/tcp/1"), Scope::Local);
        assert_eq!(scope("/ip4/100.64.0.1/tcp/1"), Scope::Internet, "carrier-grade NAT");
        assert_eq!(scope("/ip6/fd00::1/tcp/1"), Scope::Local);
        assert_eq!(scope("/ip6/fe80::1/tcp/1"), Scope::Local);
        assert_eq!(scope("/ip6/::ffff:192.168.0.1/tcp/1"), Scope::Local);
        assert_eq!(scope("/dns4/example.org/tcp/1"), Scope::Internet);
        assert_eq!(scope("/ip4/192.168.0.1/tcp/1/p2p-circuit"), Scope::Local, "the relay's");
    }

    /// A second lookup, 1 s after the one `peer` owes was sent, that it answers at once, and a
    /// third, that it owes; 1 s and 999 ms after the first, which is not given up on yet: the
    /// third, and what is woken when the first is.
    async fn answers_one_sent_after(held: &mut Held, peer: PeerId) -> (QueryId, Arc<Woken>) {
        tokio::time::advance(ms(1000)).await;
        let second = ask(held, 2);
        answer(held, peer, second);
        let third = ask(held, 3);
        let woken = Arc::new(Woken::default());
        drain_waking(held, &Waker::from(woken.clone()));
        tokio::time::advance(ms(999)).await;
        assert!(!woken.woken(), "woken early");
        (third, woken)
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_late_while_its_peer_answers_others_is_given_up_on_alone() {
        // A peer that answers some requests and not others (a liar holding back one key's
        // lookups, a request lost on a connection that closed beside another).
        let (mut held, peer) = one_peer();
        let first = ask(&mut held, 1);
        let (third, woken) = answers_one_sent_after(&mut held, peer).await;
        assert!(held.query(&first).is_some(), "given up early");
        tokio::time::advance(ms(1)).await;
        assert!(woken.woken(), "woken for the late request");
        let (_, ended) = drain(&mut held);
        assert_eq!(ended, vec![first], "its lookup went on without the peer, and ended");
        assert!(held.passed_over(&peer, Instant::now()).is_none(), "the peer is not given up on");
        assert!(held.query(&third).is_some(), "another lookup waits on it on");
        // Its late answer, and the third's in time, end everything owed.
        answer(&mut held, peer, first);
        answer(&mut held, peer, third);
        drain(&mut held);
        assert!(held.query(&third).is_none());
        assert!(held.wrapper_mut().answers_mut().next().is_none(), "nothing owed");

        // An operation's record request answered meanwhile shows the peer at work as well (a
        // peer that answers only those, and no lookup, keeps its silence from counting).
        use crate::lane::RequestId;
        let (mut held, peer) = one_peer();
        let lookup = ask(&mut held, 4);
        tokio::time::advance(ms(1000)).await;
        let id = RequestId::new_unchecked(1);
        held.record_asked(peer, id, Wait::Answer, Instant::now());
        held.record_ended(peer, id, true, Instant::now());
        tokio::time::advance(ms(999)).await;
        drain(&mut held);
        assert!(held.query(&lookup).is_some(), "given up on early");
        tokio::time::advance(ms(1)).await;
        assert_eq!(drain(&mut held), (vec![], vec![lookup]), "given up on alone");
        assert!(held.passed_over(&peer, Instant::now()).is_none(), "the peer is not given up on");

        // Unless 32 of Kademlia's requests to the peer or more were waited on when it was sent
        // (its connection sends 32 at once): it may have waited here for a stream.
        let (mut held, peer) = one_peer();
        let lookups: Vec<QueryId> = (0..=32).map(|key| ask(&mut held, key)).collect();
        let crowded = lookups[KADEMLIA_STREAMS];
        tokio::time::advance(ms(10)).await;
        for lookup in &lookups[..2] {
            answer(&mut held, peer, *lookup);
        }
        assert_eq!(drain(&mut held).1, lookups[..2]);
        tokio::time::advance(ms(10)).await;
        let fresh = ask(&mut held, 100);
        tokio::time::advance(ms(1000)).await;
        let id = RequestId::new_unchecked(2);
        held.record_asked(peer, id, Wait::Answer, Instant::now());
        held.record_ended(peer, id, true, Instant::now());
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        tokio::time::advance(SLOW_FAILURE - ms(1020)).await;
        let (_, ended) = drain_waking(&mut held, &waker);
        let ended: HashSet<QueryId> = ended.into_iter().collect();
        let spare: HashSet<QueryId> = lookups[2..KADEMLIA_STREAMS].iter().copied().collect();
        assert_eq!(ended, spare, "those sent as it had streams to spare");
        assert!(held.query(&crowded).is_some(), "given up on for a record's answer");
        tokio::time::advance(ms(19)).await;
        assert!(!woken.woken(), "woken early");
        tokio::time::advance(ms(1)).await;
        assert!(woken.woken(), "woken for the late request");
        let (_, ended) = drain_waking(&mut held, &waker);
        assert_eq!(ended, vec![fresh], "sent once as few were in flight again");
        assert!(held.query(&crowded).is_some(), "given up on for a record's answer");
        // An answer of Kademlia's to one sent after it shows it passed over all the same.
        let later = ask(&mut held, 101);
        answer(&mut held, peer, later);
        let ended: HashSet<QueryId> = drain(&mut held).1.into_iter().collect();
        assert_eq!(ended, HashSet::from([crowded, later]), "given up on for a lookup's answer");

        // Those given up on alone do not crowd the next: the peer let them wait.
        let (mut held, peer) = one_peer();
        let lookups: HashSet<QueryId> = (0..32).map(|key| ask(&mut held, key)).collect();
        let record = |held: &mut Held, id| {
            let id = RequestId::new_unchecked(id);
            held.record_asked(peer, id, Wait::Answer, Instant::now());
            held.record_ended(peer, id, true, Instant::now());
        };
        tokio::time::advance(ms(10)).await;
        record(&mut held, 3);
        tokio::time::advance(SLOW_FAILURE - ms(10)).await;
        assert_eq!(drain(&mut held).1.into_iter().collect::<HashSet<_>>(), lookups);
        let next = ask(&mut held, 100);
        tokio::time::advance(ms(10)).await;
        record(&mut held, 4);
        tokio::time::advance(SLOW_FAILURE - ms(11)).await;
        assert_eq!(drain(&mut held), (vec![], vec![]), "given up on early");
        tokio::time::advance(ms(1)).await;
        assert_eq!(drain(&mut held), (vec![], vec![next]), "taken for crowded");
        assert!(held.passed_over(&peer, Instant::now()).is_none(), "the peer is not given up on");

        // Nor do those given up on with their silent peer.
        let (mut held, peer) = one_peer();
        let lookups: HashSet<QueryId> = (0..32).map(|key| ask(&mut held, key)).collect();
        tokio::time::advance(SLOW_FAILURE).await;
        assert_eq!(drain(&mut held).1.into_iter().collect::<HashSet<_>>(), lookups);
        assert!(held.passed_over(&peer, Instant::now()).is_some(), "given up on");
        let record = |held: &mut Held, id| {
            let id = RequestId::new_unchecked(id);
            held.record_asked(peer, id, Wait::Answer, Instant::now());
            held.record_ended(peer, id, true, Instant::now());
        };
        record(&mut held, 5);
        assert!(held.passed_over(&peer, Instant::now()).is_none(), "it answered");
        let next = ask(&mut held, 100);
        tokio::time::advance(ms(10)).await;
        record(&mut held, 6);
        tokio::time::advance(SLOW_FAILURE - ms(10)).await;
        assert_eq!(drain(&mut held), (vec![], vec![next]), "taken for crowded");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_in_the_asking_does_not_count_toward_a_close() {
        let (mut held, peers) = connected_to(2);
        let (peer, other) = (peers[0], peers[1]);
        held.wrapper_mut().answers_mut().times.push(ms(10));
        assert_eq!(rounds(&mut held, peer, Some(other), 1).await, Some(6));
        established(&mut held, peer, false);
        // Given up on again, and then not asked for a minute (its request forgotten).
        let lookup = ask(&mut held, 20);
        answer(&mut held, other, lookup);
        tokio::time::advance(Duration::from_secs(60)).await;
        drain(&mut held);
        assert!(held.passed_over(&peer, Instant::now()).is_some(), "given up on, silent since");
        // Asked again: passed over at once, but closed only after 10 s more of silence while
        // asked (it was closed at once, its silence counted over the pause).
        assert_eq!(rounds(&mut held, peer, Some(other), 30).await, Some(6), "the pause counted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_lengthens_its_peers_wait_only_until_it_answers_fast_again() {
        let (mut held, peers) = connected_to(2);
        let (slow, other) = (peers[0], peers[1]);
        held.wrapper_mut().answers_mut().times.push(ms(10));
        let lookup = ask(&mut held, 1);
        answer(&mut held, other, lookup);
        tokio::time::advance(ms(3000)).await;
        drain(&mut held);
        // It answers 3 s late (a stop): not a time of this node's answers, but of its own.
        answer(&mut held, slow, lookup);
        let answers = held.wrapper_mut().answers_mut();
        assert_eq!(answers.times.median(), Some(ms(10)), "10 ms and the other's, at once");
        let patience = |held: &mut Held| {
            let answers = held.wrapper_mut().answers_mut();
            answers.patience(&answers.peers[&slow])
        };
        assert_eq!(patience(&mut held), Some(ms(3000) * PATIENCE_FACTOR));
        // Four answers at once: it is fast again.
        for key in 2..2 + PEER_SAMPLES as u8 {
            let next = held.get_closest_peers(vec![key]);
            drain(&mut held);
            answer(&mut held, slow, next);
            answer(&mut held, other, next);
        }
        assert_eq!(patience(&mut held), Some(SLOW_FAILURE));
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_connection_of_several_restarts_its_peers_silence() {
        let (mut held, peer) = one_peer();
        let lookup = ask(&mut held, 1);
        // The connection its request went on closed 1 s later (another stays): the request
        // is lost, and the peer has the whole wait again from then.
        tokio::time::advance(ms(1000)).await;
        closed(&mut held, peer, 1);
        tokio::time::advance(SLOW_FAILURE - ms(1)).await;
        assert_eq!(drain(&mut held), (vec![], vec![]));
        tokio::time::advance(ms(1)).await;
        assert_eq!(drain(&mut held), (vec![], vec![lookup]));
        // A request neither answered nor failed is forgotten after a while, also while this
        // node is stranded (nothing is given up then).
        let again = ask(&mut held, 2);
        held.set_stranded(true);
        tokio::time::advance(ASKED_KEPT).await;
        drain(&mut held);
        let answers = held.wrapper_mut().answers_mut();
        assert!(answers.asked.is_empty(), "kept: {:?}", answers.asked.keys());
        assert!(answers.sent.is_empty(), "kept: {:?}", answers.sent);
        assert!(answers.peers[&peer].lookups.is_empty(), "kept: {:?}", answers.peers[&peer]);
        held.set_stranded(false);
        drain(&mut held);
        let answers = held.wrapper_mut().answers_mut();
        assert_eq!(answers.next(), None, "{again:?} still waited on");
    }

    #[tokio::test(start_paused = true)]
    async fn operations_record_requests_are_timed_as_lookups_are() {
        use crate::lane::RequestId;
        let (mut held, peers) = connected_to(2);
        let (fast, stopped) = (peers[0], peers[1]);
        let id = RequestId::new_unchecked;
        // An answer to a record request tells how long answers take here: 10 ms.
        held.record_asked(fast, id(1), Wait::Answer, Instant::now());
        tokio::time::advance(ms(10)).await;
        held.record_ended(fast, id(1), true, Instant::now());
        assert_eq!(held.wrapper_mut().answers_mut().times.median(), Some(ms(10)));
        // A request the other does not answer: passed over after 2 s, until it answers.
        held.record_asked(stopped, id(2), Wait::Answer, Instant::now());
        given_up_after(&mut held, stopped, SLOW_FAILURE).await;
        assert!(held.passed_over(&fast, Instant::now()).is_none());
        held.set_stranded(true);
        assert!(held.passed_over(&stopped, Instant::now()).is_none(), "passed over while stranded");
        held.set_stranded(false);
        held.record_ended(stopped, id(2), true, Instant::now());
        assert!(
            held.passed_over(&stopped, Instant::now()).is_none(),
            "its answer ends its silence"
        );
        // A request to a peer not connected waits on a dial, which is not timed here.
        let dialed = PeerId::random();
        held.record_asked(dialed, id(3), Wait::Answer, Instant::now());
        tokio::time::advance(SLOW_FAILURE * 2).await;
        drain(&mut held);
        assert!(held.passed_over(&dialed, Instant::now()).is_none());
        assert_eq!(held.wrapper_mut().answers_mut().asked.len(), 0, "the dial's request timed");
    }

    #[tokio::test(start_paused = true)]
    async fn puts_requests_are_waited_on_for_10_s_and_their_answers_time_nothing() {
        use crate::lane::RequestId;
        let (mut held, peers) = connected_to(3);
        let (fast, stopped, both) = (peers[0], peers[1], peers[2]);
        let id = RequestId::new_unchecked;
        held.record_asked(fast, id(1), Wait::Answer, Instant::now());
        tokio::time::advance(ms(10)).await;
        held.record_ended(fast, id(1), true, Instant::now());
        // A put's answer waits on the replica's disk: it tells nothing of how long answers
        // take, here or at that peer.
        held.record_asked(fast, id(2), Wait::Write, Instant::now());
        tokio::time::advance(ms(900)).await;
        held.record_ended(fast, id(2), true, Instant::now());
        let answers = held.wrapper_mut().answers_mut();
        assert_eq!(answers.times.median(), Some(ms(10)));
        assert_eq!(answers.peers[&fast].times.last(), Some(ms(10)));
        // A replica that answers no put is passed over once it was silent for 10 s, not 2.
        held.record_asked(stopped, id(3), Wait::Write, Instant::now());
        given_up_after(&mut held, stopped, CLOSE_SILENT).await;
        // A get's request beside a put's is waited on for the peer's patience from when it
        // was sent (a put's answer may be waiting on the replica's disk).
        held.record_asked(both, id(4), Wait::Write, Instant::now());
        tokio::time::advance(ms(1000)).await;
        held.record_asked(both, id(5), Wait::Answer, Instant::now());
        given_up_after(&mut held, both, SLOW_FAILURE).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_peer_is_waited_on_as_long_when_it_connects_again() {
        use crate::lane::RequestId;
        let (mut held, peer) = one_peer();
        let id = RequestId::new_unchecked;
        // It answers in 2.5 s where answers take 10 ms: given up on at 2 s, its late answer
        // tells how slow it is.
        held.record_asked(peer, id(1), Wait::Answer, Instant::now());
        given_up_after(&mut held, peer, SLOW_FAILURE).await;
        tokio::time::advance(ms(500)).await;
        held.record_ended(peer, id(1), true, Instant::now());
        // Its connection closes idle, and it connects again: waited on four times its 2.5 s.
        closed(&mut held, peer, 0);
        established(&mut held, peer, true);
        held.record_asked(peer, id(2), Wait::Answer, Instant::now());
        given_up_after(&mut held, peer, ms(2500) * PATIENCE_FACTOR).await;
        held.record_ended(peer, id(2), true, Instant::now());
        // Only so many peers are remembered: the oldest go first.
        let answers = held.wrapper_mut().answers_mut();
        let answered = |answers: &mut Answers, other: PeerId| {
            answers.asked(other, Request::Record(id(3)), Wait::Answer, Instant::now());
            answers.ended(other, Request::Record(id(3)), true, Instant::now());
            answers.closed(other, Instant::now());
        };
        let others: Vec<PeerId> = (0..PAST_PEERS).map(|_| PeerId::random()).collect();
        for other in &others {
            answered(answers, *other);
        }
        answers.closed(peer, Instant::now());
        let kept: Vec<PeerId> = answers.past.iter().map(|(p, _, _)| *p).collect();
        assert_eq!(kept.len(), PAST_PEERS);
        assert_eq!((kept[0], kept[PAST_PEERS - 1]), (others[1], peer), "the first closed went");
        // A peer that never answered leaves nothing.
        let silent = PeerId::random();
        answers.asked(silent, Request::Record(id(4)), Wait::Answer, Instant::now());
        answers.closed(silent, Instant::now());
        assert!(answers.past.iter().all(|(p, _, _)| *p != silent));
        // Nor are they kept past PAST_KEPT.
        tokio::time::advance(PAST_KEPT).await;
        let late = PeerId::random();
        answered(answers, late);
        let kept: Vec<PeerId> = answers.past.iter().map(|(p, _, _)| *p).collect();
        assert_eq!(kept, [late], "the old ones forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_closed_for_its_silence_comes_back_without_the_patience_it_earned() {
        use crate::lane::RequestId;
        let (mut held, peer) = one_peer();
        let id = RequestId::new_unchecked;
        // It answers once in 2.5 s (a patience of 10 s), then stops: given up on, and its
        // connection closes before it answers again.
        held.record_asked(peer, id(1), Wait::Answer, Instant::now());
        given_up_after(&mut held, peer, SLOW_FAILURE).await;
        tokio::time::advance(ms(500)).await;
        held.record_ended(peer, id(1), true, Instant::now());
        held.record_asked(peer, id(2), Wait::Answer, Instant::now());
        given_up_after(&mut held, peer, ms(2500) * PATIENCE_FACTOR).await;
        closed(&mut held, peer, 0);
        established(&mut held, peer, true);
        held.record_asked(peer, id(3), Wait::Answer, Instant::now());
        given_up_after(&mut held, peer, SLOW_FAILURE).await;
    }

    /// A node where answers take 10 ms, whose lookup asked to dial its one peer, and that
    /// peer's connection, which sent the lookup's request as it opened (this node has not
    /// yet heard of it).
    fn connected_for_a_lookup() -> (Held, PeerId, QueryId, crate::held::Opened) {
        let (mut held, peer, lookup) = asked_to_dial_one();
        held.wrapper_mut().answers_mut().times.push(ms(10));
        let handler = opened(&mut held, peer);
        (held, peer, lookup, handler)
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_connected_for_a_lookup_and_answers_nothing_is_passed_over() {
        // Kademlia hands the connection the lookup's request as it opens: timed all the same.
        // It is timed from when it was taken from the connection's handler, not from when
        // this node heard.
        let (mut held, peer, lookup, _handler) = connected_for_a_lookup();
        tokio::time::advance(ms(500)).await;
        drain(&mut held);
        given_up_after(&mut held, peer, SLOW_FAILURE - ms(500)).await;
        assert!(held.query(&lookup).is_none(), "the lookup went on without the peer, and ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_handed_to_a_connection_before_it_ran_hides_none_it_opened_with() {
        // The behaviour hands the new connection another lookup's request before the
        // connection first polls its handler: the one it opened with is timed all the same.
        let (mut held, peer, lookup) = asked_to_dial_one();
        held.wrapper_mut().answers_mut().times.push(ms(10));
        let mut handler = wrapped(&mut held, peer);
        let other = held.get_closest_peers(vec![2]);
        for event in events(&mut held, futures::task::noop_waker_ref()) {
            if let ToSwarm::NotifyHandler { event, .. } = event {
                handler.on_behaviour_event(event);
            }
        }
        assert_eq!(poll_handler(&mut held, peer, &mut handler), 2, "both sent");
        drain(&mut held);
        // The peer answers the handed one only: it still owes the one it opened with.
        answer(&mut held, peer, other);
        given_up_after(&mut held, peer, SLOW_FAILURE).await;
        assert!(held.query(&lookup).is_none(), "the lookup went on without the peer, and ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_a_connection_opened_with_late_while_its_peer_answers_others_fails_alone() {
        // A peer that connected for a lookup answers the requests handed to it after, not the
        // one it opened with (a liar holding back the lookups of one key that dial it).
        let (mut held, peer, lookup, _handler) = connected_for_a_lookup();
        drain(&mut held);
        let (third, woken) = answers_one_sent_after(&mut held, peer).await;
        assert!(held.query(&lookup).is_some(), "given up early");
        // Two lookups more: Kademlia decides on both requests to the peer as it is polled,
        // and hands out one at a time.
        let (fourth, fifth) = (held.get_closest_peers(vec![4]), held.get_closest_peers(vec![5]));
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        assert!(matches!(held.poll(&mut cx), Poll::Ready(ToSwarm::NotifyHandler { .. })));
        tokio::time::advance(ms(1)).await;
        assert!(woken.woken(), "woken for the late request");
        let (asked, ended) = drain(&mut held);
        assert_eq!(ended, vec![lookup], "its lookup went on without the peer, and ended");
        assert_eq!(asked, vec![peer], "the fifth's request, decided on before");
        assert!(held.passed_over(&peer, Instant::now()).is_none(), "the peer is not given up on");
        for waits in [third, fourth, fifth] {
            assert!(held.query(&waits).is_some(), "a lookup it owes an answer in time waits on");
        }
        // The late answer, and the others' in time, end everything owed.
        held.wrapper_mut().opened_ended(peer, 0, true);
        for waits in [third, fourth, fifth] {
            answer(&mut held, peer, waits);
        }
        assert_eq!(drain(&mut held).1.len(), 3);
        assert!(held.wrapper_mut().answers_mut().next().is_none(), "nothing owed");

        // A peer that answered nothing sent after it is waited on as its silence is (a busy
        // peer answers in turn).
        let (mut held, peer, lookup, _handler) = connected_for_a_lookup();
        let other = ask(&mut held, 2);
        tokio::time::advance(ms(10)).await;
        answer(&mut held, peer, other);
        tokio::time::advance(SLOW_FAILURE - ms(10)).await;
        drain(&mut held);
        assert!(held.query(&lookup).is_some(), "given up on alone for an answer to one as old");
        given_up_after(&mut held, peer, ms(10)).await;
        assert!(held.query(&lookup).is_none(), "the lookup went on without the silent peer");
    }

    #[tokio::test(start_paused = true)]
    async fn the_requests_a_connection_opened_with_fail_no_lookup_that_does_not_wait_on_them() {
        // A lookup that has the peer's answer goes on waiting on its other peer, and keeps the
        // answer.
        let (mut held, peers) = with_peers(2);
        let (liar, other) = (peers[0], peers[1]);
        held.wrapper_mut().answers_mut().times.push(ms(10));
        established(&mut held, other, true);
        let dialed = held.get_closest_peers(vec![1]);
        drain(&mut held);
        let _handler = opened(&mut held, liar);
        drain(&mut held);
        tokio::time::advance(ms(1000)).await;
        let answered = held.get_closest_peers(vec![2]);
        assert_eq!(drain(&mut held).0.len(), 2, "both asked");
        answer(&mut held, liar, answered);
        answer(&mut held, other, dialed);
        tokio::time::advance(ms(1000)).await;
        assert_eq!(drain(&mut held), (vec![], vec![dialed]), "went on without the liar");
        assert!(held.query(&answered).is_some(), "waits on its other peer");
        answer(&mut held, other, answered);
        let found =
            events(&mut held, futures::task::noop_waker_ref()).into_iter().find_map(|event| {
                match event {
                    ToSwarm::GenerateEvent(kad::Event::OutboundQueryProgressed {
                        id,
                        result: kad::QueryResult::GetClosestPeers(Ok(ok)),
                        ..
                    }) if id == answered => Some(ok.peers),
                    _ => None,
                }
            });
        let found: Vec<PeerId> = found.expect("ended").iter().map(|peer| peer.peer_id).collect();
        assert!(found.contains(&liar) && found.contains(&other), "{found:?}");

        // A peer whose last connection closed before Kademlia was told: the next connection,
        // opened with a new lookup's request, owes nothing late.
        let (mut held, peer, _, _handler) = connected_for_a_lookup();
        drain(&mut held);
        tokio::time::advance(ms(1000)).await;
        let second = ask(&mut held, 2);
        answer(&mut held, peer, second);
        tokio::time::advance(ms(999)).await;
        let _decided = held.get_closest_peers(vec![3]);
        tokio::time::advance(ms(1)).await;
        // Late: Kademlia hands on what it has to say first (the second's end, the third's
        // request).
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        assert!(held.poll(&mut cx).is_ready());
        closed(&mut held, peer, 0);
        let next = held.get_closest_peers(vec![4]);
        loop {
            match held.poll(&mut cx) {
                Poll::Ready(ToSwarm::Dial { .. }) => break,
                Poll::Ready(_) => {}
                Poll::Pending => panic!("the peer was not dialed"),
            }
        }
        let _handler = opened(&mut held, peer);
        drain(&mut held);
        assert!(held.query(&next).is_some(), "the new connection's request failed at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_a_connection_opened_with_that_failed_or_was_answered_is_not_waited_on() {
        use libp2p::swarm::StreamUpgradeError;
        use libp2p::swarm::handler::DialUpgradeError;
        // Its stream could not open: Kademlia's lookup counts the peer failed; nothing waits.
        let (mut held, peer, lookup, mut handler) = connected_for_a_lookup();
        let error = DialUpgradeError { info: (), error: StreamUpgradeError::Timeout };
        handler.on_connection_event(ConnectionEvent::DialUpgradeError(error));
        poll_handler(&mut held, peer, &mut handler);
        drain(&mut held);
        assert!(held.query(&lookup).is_none(), "the lookup ended without the peer");
        tokio::time::advance(SLOW_FAILURE * 4).await;
        drain(&mut held);
        assert!(held.passed_over(&peer, Instant::now()).is_none(), "a failure is no silence");
        assert!(held.wrapper_mut().answers_mut().next().is_none(), "nothing owed");

        // Answered: the peer is not silent (Kademlia's answer goes to the lookup as it comes;
        // the connection tells of its end, which is all it can say without a stream here).
        let (mut held, peer, _, _handler) = connected_for_a_lookup();
        drain(&mut held);
        assert!(held.wrapper_mut().answers_mut().next().is_some(), "the request it opened with");
        held.wrapper_mut().opened_ended(peer, 0, true);
        drain(&mut held);
        assert!(held.wrapper_mut().answers_mut().next().is_none(), "nothing owed once answered");
        tokio::time::advance(SLOW_FAILURE * 4).await;
        drain(&mut held);
        assert!(held.passed_over(&peer, Instant::now()).is_none(), "it answered");

        // A connection that closed before this node heard of its request: not timed.
        let (mut held, peer, _, _handler) = connected_for_a_lookup();
        closed(&mut held, peer, 0);
        drain(&mut held);
        assert!(held.wrapper_mut().answers_mut().next().is_none(), "a closed connection's");

        // One that closed after, while another of the peer's stays: its requests are lost,
        // the peer owes nothing, and Kademlia, which hears of no close, is told that its
        // lookup's request failed.
        let (mut held, peer, lookup, _handler) = connected_for_a_lookup();
        drain(&mut held);
        assert!(held.wrapper_mut().answers_mut().next().is_some(), "the request it opened with");
        closed(&mut held, peer, 1);
        assert!(held.wrapper_mut().answers_mut().next().is_none(), "lost with its connection");
        drain(&mut held);
        assert!(held.query(&lookup).is_none(), "the lookup went on without the peer");
        tokio::time::advance(SLOW_FAILURE * 4).await;
        drain(&mut held);
        assert!(held.passed_over(&peer, Instant::now()).is_none(), "a lost request is no silence");

        // The same for one that closed before it first ran, and before this node read what
        // was taken from its handler as it was wrapped (a swarm busy handing events on).
        let (mut held, peer, lookup) = asked_to_dial_one();
        held.wrapper_mut().answers_mut().times.push(ms(10));
        let _handler = wrapped(&mut held, peer);
        closed(&mut held, peer, 1);
        drain(&mut held);
        assert!(held.query(&lookup).is_none(), "the lookup went on without the peer");
    }

    #[test]
    fn the_median_of_the_last_few() {
        let mut recent = Recent::<u8, 3>::default();
        assert_eq!(recent.median(), None);
        for (key, took) in [(1, ms(5)), (2, ms(1)), (3, ms(9))] {
            recent.push_of(key, took);
        }
        assert_eq!((recent.median(), recent.slowest()), (Some(ms(5)), ms(9)));
        // The oldest (5) goes.
        recent.push(ms(2));
        assert_eq!((recent.median(), recent.last()), (Some(ms(2)), Some(ms(2))));
        // A key's new time replaces its last: one key cannot fill the window.
        for _ in 0..3 {
            recent.push_of(4, ms(100));
        }
        assert_eq!((recent.median(), recent.slowest()), (Some(ms(9)), ms(100)));
        // Times of no key each count.
        for _ in 0..2 {
            recent.push(ms(100));
        }
        assert_eq!(recent.median(), Some(ms(100)));
    }
}
