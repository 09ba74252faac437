//! Kademlia's dials: not waited on for long, and held back for a while for peers whose dials
//! fail slowly; and its requests to connected peers that answer nothing, not waited on for
//! long either ([`crate::stalled`]).
//!
//! Kademlia keeps a peer whose dials fail in its table until a newcomer needs its place in a
//! full bucket, and buckets of 64 seldom fill: a node that died stays in every table, peers
//! near it keep naming it in their answers, and every lookup near it asks it again. On
//! loopback such a dial is refused at once. On the internet a dead peer's address mostly
//! drops packets (a host switched off, a phone that left its network, a NAT mapping that
//! expired), and the dial waits for the setup timeout (`transport::SETUP_TIMEOUT`, 10 s; a
//! LAN host that is gone, for ARP's 3 s), past a lookup's deadline (5 s): every lookup whose
//! closest peers included it waited to its end.
//!
//! [`Held`] wraps Kademlia. Once a dial of a peer failed after waiting [`SLOW_FAILURE`] or
//! more with an attempt that went out, while this node heard from others of the scope of the
//! farthest address the dial tried (bytes, or an answer; [`crate::stalled::Scope`]: so it
//! waited on the peer, not on its own network: a silent outage keeps connections up for
//! minutes, and an uplink that dropped leaves peers on the same host or network answering)
//! and had a DHT server connected (`Driver::dial_failed` says so, [`Held::hold`]),
//! Kademlia's next dials of it fail at once, with no packet sent, for [`HOLD_FIRST`], twice
//! as long after each slow failure again, at most [`HOLD_MOST`]; Kademlia takes each as a
//! failed dial, and its lookup goes on with the next peer. A dial refused at once costs a
//! lookup nothing and holds nothing. A connection to the peer, either way, ends its hold; an
//! application's walk of the table (`Node::bootstrap`) ends them all, and so does this node's
//! return from being stranded ([`Held::release_all`]).
//!
//! Only Kademlia's dials are held: an operation's request to a replica, an application's dial
//! (`Node::dial`), AutoNAT's dial-back and the relay client's are not; but puts and gets
//! count a held replica failed at once, and still send it their request
//! ([`Held::passed_over`]). A peer whose connections [`crate::stalled`] closed for its
//! silence is held too, as its dials would fail slowly (a stopped process's handshake never
//! completes); a connection ends that hold too, but its count goes on until the peer answers
//! something, so a peer that connects and answers nothing again (a hung process whose
//! connections still open, a peer that does so on purpose) is closed and held twice as long
//! each time (this node's dials of it, that is: a connection the peer makes ends the hold;
//! the count is forgotten 16 min after the hold ended). Holds apply unless this
//! node is stranded (a dial failed while no DHT server was connected, and none has been
//! identified since: its own network may be what fails); a quiet node whose connections all
//! closed idle is not stranded, and its first lookup passes over held peers too. At most
//! [`MAX_HOLDS`] peers are held.
//!
//! A dial waits up to the setup timeout, and Kademlia waits 10 s on a peer (its
//! `peer_timeout`, which libp2p-kad 0.49 does not let anyone set): so the first lookups near a
//! peer that died silently, before any dial of it failed, still waited to their deadline.
//! So a lookup waits on a dial of Kademlia's only as long as this node's dials take: four
//! times the median time of Kademlia's last 16 dials that connected, and [`SLOW_FAILURE`] at
//! least ([`Holds::patience`]; a slow link slows every dial and raises it, a slow peer, or one
//! that makes itself slow, only its own dial). Past that, [`Held`] tells Kademlia that the
//! dial failed ([`GaveUp`]), and its lookups go on without the peer, as they do when a dial
//! is refused; the dial itself goes on. Until it ends, the lookups that ask for the peer
//! pass over it at once instead of each waiting as long: a dead peer's dial fails only after
//! 10 s, and every lookup near it meanwhile waited (not while stranded, and for
//! [`GIVEN_UP_COUNTED`] at most). If it connects, the next lookups have the peer (the
//! lookups that gave up on it drop its late answer: Kademlia counts it failed); if it fails,
//! it may hold the peer (above). So a node on a slow link (a phone whose handshakes, three
//! or four round trips, take seconds) waits on its dials about as long as they take there,
//! and a node's first lookups, before any dial of Kademlia's connected, wait as before. No
//! dial is given up while this node is stranded, nor while [`MAX_GIVEN_UP`] peers whose
//! dials were given up on in the last 20 s have them still under way (peers named in answers
//! are dialed whoever names them: past the bound, lookups wait on dials as before). A
//! connected peer that stopped answering is given up on the same way, and its connections
//! closed once it stayed silent ([`crate::stalled`]).
//!
//! The cost of a wrong hold (a peer whose every address timed out for a moment, and is back):
//! this node's lookups do not reach it until its hold ends or it connects, so operations near
//! it do without it as a replica meanwhile (the table counts it as gone too,
//! `nearby::table_covers`); when it comes back its own walks reach the peers near it. The cost
//! of a peer dead for good: a lookup near it waits once per hold, and holds double up to
//! 16 min. The cost of a peer stopped a while that connected again without being asked
//! anything before its connection closed idle: its next hold (a close for silence, or a dial
//! that failed slowly) within 16 min of the last one's end lasts 1 min instead of 30 s. A
//! lookup that asks a held peer while another dial of it is under way (a request of an
//! operation) counts it as failed instead of waiting for that dial.
//!
//! Kademlia's requests to connected peers are timed by [`crate::stalled`]; the ones Kademlia
//! hands a connection as it opens are taken from its handler as it is wrapped, and their ends
//! told of by the connection ([`Opened`]); a lookup's request given up on alone is failed in
//! the words of Kademlia's own connection handler ([`failure`]), and so are the requests a
//! connection opened with, in each lookup they may be for ([`Holds::fail_opened`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt as _;
use futures::channel::mpsc;
use libp2p::PeerId;
use libp2p::kad;
use libp2p::swarm::behaviour::{DialFailure, ListenFailure};
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, DialError,
    FromSwarm, ListenError, NetworkBehaviour, SubstreamProtocol, THandlerInEvent, THandlerOutEvent,
    ToSwarm,
};
use tokio::time::{Instant, Sleep};

use crate::stalled::{Request, Scope, Wait};
use crate::transport::Heard;

/// A failed dial that waited this long or more holds its peer: a refusal comes within a
/// round trip or two; a timeout, or a LAN host's ARP failure, takes seconds. It is also the
/// least that Kademlia's lookups wait on a dial ([`Holds::patience`]).
pub(crate) const SLOW_FAILURE: Duration = Duration::from_secs(2);
/// Whether a dial that started at `started`, when this node had received `heard` bytes, and
/// failed at `now`, when it had received `heard_now`, the farthest of its addresses of
/// `scope`, failed slowly while others answered: it waited [`SLOW_FAILURE`] or more on the
/// peer, and meanwhile bytes came in from peers of that scope, or one of them answered a
/// request (`answered`: when the last did; QUIC's bytes are not counted), so it was not this
/// node's own network that failed (a silent outage keeps connections up for minutes; an
/// uplink that dropped leaves peers on the same host or network answering).
pub(crate) fn failed_slowly(
    (started, heard): (Instant, Heard),
    (now, heard_now): (Instant, Heard),
    scope: Scope,
    answered: Option<Instant>,
) -> bool {
    let came_in = heard_now[scope as usize] > heard[scope as usize];
    now.saturating_duration_since(started) >= SLOW_FAILURE
        && (came_in || answered.is_some_and(|answered| answered > started))
}

/// How many times as long as this node's dials take lately its lookups wait on one.
const PATIENCE_FACTOR: u32 = 4;
/// The most dials given up on ([`Holds::give_up`]) that may still be under way.
pub(crate) const MAX_GIVEN_UP: usize = 64;
/// A dial given up on this long ago no longer counts against [`MAX_GIVEN_UP`]: a dial of one
/// address ends within the setup timeout; a peer that gave many (8 are dialed at a time,
/// the rest after) is not let keep the bound full.
const GIVEN_UP_COUNTED: Duration = Duration::from_secs(20);
/// How many of Kademlia's last dials that connected (one of each peer) tell how long this
/// node's dials take.
const DIAL_SAMPLES: usize = 16;
/// How long Kademlia's dials of a peer are held after its first slow failure: more than a
/// lookup's time, so the lookups right after a peer died pass over it.
pub(crate) const HOLD_FIRST: Duration = Duration::from_secs(30);
/// The longest hold. A peer dead for good costs one lookup near it a wait this often.
pub(crate) const HOLD_MOST: Duration = Duration::from_secs(16 * 60);
/// The most peers held at once (a few dozen bytes each). Past it, a peer that fails is not
/// held: its dials wait, as they did without holds.
pub(crate) const MAX_HOLDS: usize = 1024;

type Kad = kad::Behaviour<kad::store::MemoryStore>;
type KadHandler = <Kad as NetworkBehaviour>::ConnectionHandler;
/// What Kademlia's behaviour tells its connections (a type libp2p-kad does not name).
type KadIn = THandlerInEvent<Kad>;
/// What Kademlia's connections tell its behaviour.
pub(crate) type KadOut = THandlerOutEvent<Kad>;
/// What Kademlia's connection handler tells its connection.
type KadHandlerEvent = ConnectionHandlerEvent<
    <KadHandler as ConnectionHandler>::OutboundProtocol,
    <KadHandler as ConnectionHandler>::OutboundOpenInfo,
    KadOut,
>;
/// At most how many events are taken from a new connection's Kademlia handler as it is
/// wrapped ([`Opened::preload`]): it asks for at most 32 streams at once, and says nothing
/// else before it is told of one. A bound all the same (a Kademlia that said more would
/// have the rest passed on as they come).
const PRELOAD_EVENTS: usize = 64;

/// Kademlia, its dials of peers that could not be reached held back (the module's docs). It
/// derefs to Kademlia.
pub(crate) type Held = crate::wrap::Wrapped<Kad, Holds>;

/// What [`Held`] keeps beside Kademlia.
#[derive(Default)]
pub(crate) struct Holds {
    holds: HashMap<PeerId, Hold>,
    /// Whether this node is stranded (the driver says: a dial failed while no DHT server was
    /// connected, and none has been identified since): holds apply only while it is not.
    stranded: bool,
    /// The peers Kademlia asked to dial that are neither connected nor failed yet: when it
    /// first asked, and that dial.
    dialing: HashMap<PeerId, (Instant, ConnectionId)>,
    /// Of those, the ones given up on, whose dials go on: since when.
    given_up: HashMap<PeerId, Instant>,
    /// How long Kademlia's last [`DIAL_SAMPLES`] dials that connected took.
    dials: crate::stalled::Recent<PeerId, DIAL_SAMPLES>,
    /// The peers connected (Kademlia may still ask to dial one, a moment after it
    /// connected), and one connection of each.
    connected: HashMap<PeerId, ConnectionId>,
    /// Kademlia's requests to connected peers, and their answers.
    answers: crate::stalled::Answers,
    /// The connections open (Kademlia's requests on one that closed are not answered).
    open: HashSet<ConnectionId>,
    /// What Kademlia's connections tell of the requests they opened with ([`Opened`]).
    reports: Reports,
    /// Peers silent too long, whose connections are to be closed.
    closing: Vec<PeerId>,
    /// Peers whose requests their connections opened with were given up on alone, not yet
    /// told to Kademlia ([`Holds::fail_opened`]).
    late_opened: Vec<PeerId>,
    /// A connection handler of Kademlia's own, of no connection, that words the failure of a
    /// request of one lookup ([`failure`]).
    scratch: Option<KadHandler>,
    /// The relay this node holds a reservation on, whose connections are not closed.
    spared: Option<PeerId>,
    /// Wakes the behaviour when Kademlia's lookups stop waiting on the oldest dial or the
    /// first silent peer.
    wake: Option<Pin<Box<Sleep>>>,
}

/// A peer was held `failures` times in a row (for dials that failed slowly since it was last
/// connected, or closes for its silence since it last answered); Kademlia's dials of it are
/// held until `until`.
#[derive(Debug, Clone, Copy)]
struct Hold {
    failures: u32,
    until: Instant,
    /// Why it was held last: its connections were closed for its silence, or a dial failed.
    silent: bool,
}

/// Why a dial failed without a packet sent.
#[derive(Debug)]
pub(crate) struct HeldBack {
    failures: u32,
    left: Duration,
    silent: bool,
}

impl std::fmt::Display for HeldBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let HeldBack { failures, left, silent } = self;
        if *silent {
            let closed = crate::stalled::CLOSE_SILENT;
            write!(f, "it answered nothing for {closed:?} while asked and its connections were ")?;
            write!(f, "closed: held until {left:?} from now")
        } else {
            write!(
                f,
                "its last dial failed slowly (held {failures} time(s) in a row): held until {left:?} \
                 from now"
            )
        }
    }
}

impl std::error::Error for HeldBack {}

/// Why Kademlia was told that a dial still under way failed.
#[derive(Debug, thiserror::Error)]
#[error("not connected {0:?} after Kademlia asked: its lookups go on without the peer")]
pub(crate) struct GaveUp(Duration);

/// Why Kademlia was told that a connected peer failed: a connection closed under requests
/// it opened with while others of the peer stay, or a connection this node did not dial was
/// denied by a behaviour after Kademlia once Kademlia had handed it requests.
#[derive(Debug, thiserror::Error)]
#[error("the connection this lookup's request was handed to closed or was denied: it is lost")]
pub(crate) struct Lost;

/// Why Kademlia was told that a connected peer failed.
#[derive(Debug, thiserror::Error)]
#[error("answered none of this node's requests for {0:?}: passed over until it answers")]
pub(crate) struct Silent(Duration);

impl Held {
    /// A dial of `peer` failed slowly at `now` with an attempt that went out: Kademlia's dials
    /// of it are held, for twice as long as the last time.
    pub(crate) fn hold(&mut self, peer: PeerId, now: Instant) {
        self.wrapper_mut().hold(peer, now, false);
    }

    /// Every peer may be dialed again: an application asked for a walk of the table
    /// (`Node::bootstrap`, as after a change of this node's network), or this node has a DHT
    /// server connected again after it had none.
    pub(crate) fn release_all(&mut self) {
        self.wrapper_mut().holds.clear();
    }

    /// Forgets the holds that ended [`HOLD_MOST`] ago or more: a peer that fails after that
    /// starts again at [`HOLD_FIRST`].
    pub(crate) fn forget_old(&mut self, now: Instant) {
        self.wrapper_mut().forget_old(now);
    }

    /// The peers held at `now` (none while this node is stranded).
    pub(crate) fn held_peers(&self, now: Instant) -> Vec<PeerId> {
        let holds = self.wrapper();
        holds.holds.keys().filter(|peer| holds.held(peer, now).is_some()).copied().collect()
    }

    /// Whether Kademlia's dials of `peer` are held at `now` (and this node is not stranded).
    pub(crate) fn is_held(&self, peer: &PeerId, now: Instant) -> bool {
        self.wrapper().held(peer, now).is_some()
    }

    /// When a peer of `scope` last answered a request of this node's.
    pub(crate) fn heard(&self, scope: Scope) -> Option<Instant> {
        self.wrapper().answers.heard(scope)
    }

    /// Whether this node is stranded: its own network may be what fails.
    pub(crate) fn set_stranded(&mut self, stranded: bool) {
        self.wrapper_mut().stranded = stranded;
    }

    /// This node sent `peer` an operation's record request `id` at `now`, to be waited on as
    /// `wait` says: timed as Kademlia's are, if the peer is connected (a dial's wait is not
    /// an answer's).
    pub(crate) fn record_asked(
        &mut self,
        peer: PeerId,
        id: crate::lane::RequestId,
        wait: Wait,
        now: Instant,
    ) {
        let holds = self.wrapper_mut();
        if holds.connected.contains_key(&peer) {
            holds.answers.asked(peer, Request::Record(id), wait, now);
        }
    }

    /// `peer` answered the record request `id` at `now` (`answered`), or it failed.
    pub(crate) fn record_ended(
        &mut self,
        peer: PeerId,
        id: crate::lane::RequestId,
        answered: bool,
        now: Instant,
    ) {
        self.wrapper_mut().answers.ended(peer, Request::Record(id), answered, now);
        if answered {
            self.wrapper_mut().answered(&peer);
        }
    }

    /// Why operations count `peer` failed at once instead of waiting on it again, if they
    /// do: it is held (its dial failed slowly, or it was closed for its silence), or it is
    /// connected, was given up on for answering nothing ([`crate::stalled`]), and has
    /// answered nothing since. Never while this node is stranded.
    pub(crate) fn passed_over(&self, peer: &PeerId, now: Instant) -> Option<String> {
        let holds = self.wrapper();
        if let Some(held) = holds.held(peer, now) {
            return Some(held.to_string());
        }
        if holds.stranded || !holds.connected.contains_key(peer) {
            return None;
        }
        holds.answers.silent(peer, now).map(|silent| Silent(silent).to_string())
    }

    /// The relay this node holds a reservation on (or asks for one): a silent peer's
    /// connections are closed ([`crate::stalled`]), but not the relay's, through which other
    /// peers reach this node behind a NAT.
    pub(crate) fn spare(&mut self, relay: Option<PeerId>) {
        self.wrapper_mut().spared = relay;
    }
}

impl Holds {
    /// Holds Kademlia's dials of `peer` from `now`, for twice as long as the last time
    /// (`silent`: it was closed for its silence, else a dial of it failed slowly); at most
    /// [`MAX_HOLDS`] peers.
    fn hold(&mut self, peer: PeerId, now: Instant, silent: bool) {
        if self.holds.len() >= MAX_HOLDS && !self.holds.contains_key(&peer) {
            self.forget_old(now);
            if self.holds.len() >= MAX_HOLDS {
                return;
            }
        }
        let hold =
            self.holds.entry(peer).or_insert(Hold { failures: 0, until: now, silent: false });
        hold.silent = silent;
        hold.failures = hold.failures.saturating_add(1);
        hold.until = now + hold_after(hold.failures);
    }

    fn forget_old(&mut self, now: Instant) {
        self.holds.retain(|_, hold| hold.until + HOLD_MOST > now);
    }

    /// `peer` answered a request: a hold for its silence (ended when it connected, or an answer
    /// that came as its connections were being closed) no longer counts.
    fn answered(&mut self, peer: &PeerId) {
        if self.holds.get(peer).is_some_and(|hold| hold.silent) {
            self.holds.remove(peer);
        }
    }

    /// Kademlia's requests to connected peers, and their answers.
    #[cfg(test)]
    pub(crate) fn answers_mut(&mut self) -> &mut crate::stalled::Answers {
        &mut self.answers
    }

    /// The `index`th request the connection of the tests' helpers opened with ended.
    #[cfg(test)]
    pub(crate) fn opened_ended(&mut self, peer: PeerId, index: u32, answered: bool) {
        let (connection, at) = (ConnectionId::new_unchecked(7), Instant::now());
        let progress = if answered { Progress::Answered } else { Progress::Failed };
        self.on_opened(OpenedRequest { peer, connection, index, at, progress });
    }

    /// Whether a dial of `peer` at `now` is held back, and why.
    fn held(&self, peer: &PeerId, now: Instant) -> Option<HeldBack> {
        if self.stranded {
            return None;
        }
        let hold = self.holds.get(peer)?;
        let left = hold.until.checked_duration_since(now).filter(|left| !left.is_zero())?;
        Some(HeldBack { failures: hold.failures, left, silent: hold.silent })
    }

    /// Whether a dial of `peer` that a lookup gave up on is still under way at `now` (given
    /// up within [`GIVEN_UP_COUNTED`]), and how long ago Kademlia first asked for it: the
    /// next lookups that ask for it fail it at once instead of each waiting as long again,
    /// until it connects or fails. Not while this node is stranded.
    fn still_given_up(&self, peer: &PeerId, now: Instant) -> Option<GaveUp> {
        let since = *self.given_up.get(peer).filter(|_| !self.stranded)?;
        let waited = now.saturating_duration_since(since);
        (waited < GIVEN_UP_COUNTED).then_some(GaveUp(waited))
    }

    /// `peer` connected at `now`, dialed or dialing: its dials are no longer held, nor waited
    /// on; a dial of Kademlia's that connected tells how long this node's dials take.
    fn connected(&mut self, peer: PeerId, connection: ConnectionId, dialed: bool, now: Instant) {
        match self.holds.get_mut(&peer) {
            // Closed for its silence: the count stays until it answers, so that a peer that
            // connects and answers nothing again is held twice as long.
            Some(hold) if hold.silent => hold.until = hold.until.min(now),
            _ => {
                self.holds.remove(&peer);
            }
        }
        self.connected.insert(peer, connection);
        let asked = self.dialing.remove(&peer).map(|(since, _)| since);
        let since = match (self.given_up.remove(&peer), asked) {
            (Some(given_up), Some(asked)) => Some(given_up.min(asked)),
            (given_up, asked) => given_up.or(asked),
        };
        if let Some(since) = since.filter(|_| dialed) {
            // A dial that waited out some addresses before one answered took that much
            // longer; none waits longer than the setup timeout for one.
            // The median counts: a slow link slows every dial, a slow peer (or one that makes
            // itself slow) only its own.
            let took = now.saturating_duration_since(since).min(crate::transport::SETUP_TIMEOUT);
            self.dials.push_of(peer, took);
        }
    }

    /// How long Kademlia's lookups wait on a dial: [`PATIENCE_FACTOR`] times the median time
    /// of Kademlia's last [`DIAL_SAMPLES`] dials that connected, [`SLOW_FAILURE`] at least;
    /// none is given up before one of them connected (a node on a slow link would give up on
    /// its first ones).
    fn patience(&self) -> Option<Duration> {
        Some((self.dials.median()? * PATIENCE_FACTOR).max(SLOW_FAILURE))
    }

    /// Tells Kademlia that its dials under way for longer than [`Holds::patience`] failed, so
    /// that its lookups go on without them. Kademlia itself waits 10 s on a peer (its
    /// `peer_timeout`, not configurable in libp2p-kad 0.49), and a dial of a peer that died
    /// silently waits as long (`transport::SETUP_TIMEOUT`): past a lookup's deadline.
    /// The dial goes on. Not while this node is stranded (its own network may be what is
    /// slow), nor past [`MAX_GIVEN_UP`] given-up dials under way.
    fn give_up<B: NetworkBehaviour>(&mut self, kad: &mut B, now: Instant) {
        let Some(patience) = self.patience().filter(|_| !self.stranded) else { return };
        if self.given_up.len() >= MAX_GIVEN_UP {
            self.given_up
                .retain(|_, since| now.saturating_duration_since(*since) < GIVEN_UP_COUNTED);
        }
        let waited = |since: Instant| now.saturating_duration_since(since);
        let late: Vec<PeerId> = (self.dialing.iter())
            .filter(|(_, (since, _))| waited(*since) >= patience)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in late {
            if self.given_up.len() >= MAX_GIVEN_UP {
                break;
            }
            let Some((since, connection_id)) = self.dialing.remove(&peer) else { continue };
            self.given_up.entry(peer).or_insert(since);
            let gave_up = GaveUp(waited(since));
            tracing::debug!(%peer, reason = %gave_up, "a lookup stopped waiting on a dial");
            tell_failed(kad, peer, connection_id, gave_up);
        }
    }

    /// Tells Kademlia that the connected peers that answered none of its requests for a
    /// while ([`crate::stalled`]) failed, so that its lookups go on without them. Not while
    /// this node is stranded.
    fn give_up_silent(&mut self, kad: &mut Kad, now: Instant) {
        if self.stranded {
            self.answers.expire(now);
            return;
        }
        let given_up = self.answers.give_up(now);
        for (peer, silent) in given_up.silent {
            let Some(connection_id) = self.connected.get(&peer).copied() else { continue };
            let silent = Silent(silent);
            tracing::debug!(%peer, reason = %silent, "a lookup stopped waiting on a silent peer");
            tell_failed(kad, peer, connection_id, silent);
        }
        for (peer, lookup) in given_up.late {
            let Some(connection) = self.connected.get(&peer).copied() else { continue };
            let Some(failed) = failure(&mut self.scratch, lookup) else { continue };
            tracing::debug!(%peer, ?lookup, "a lookup stopped waiting on a request answered late");
            kad.on_connection_handler_event(peer, connection, failed);
        }
        self.late_opened.extend(given_up.late_opened);
        for peer in given_up.closing {
            if self.spared == Some(peer) || !self.connected.contains_key(&peer) {
                continue;
            }
            // Its dials are held as a slow failure's are: a stopped process's never completes
            // its handshake. Any connection of it ends the hold.
            tracing::debug!(%peer, "a peer silent for 10 s while asked: its connections close");
            self.closing.push(peer);
            self.hold(peer, now, true);
        }
    }

    /// Tells Kademlia that the requests a connection of each peer in `late_opened` opened
    /// with failed: which lookups those were for, nothing tells (Kademlia keeps their ids in
    /// its handler), so each running lookup but those with a request to the peer outstanding
    /// and not given up on is told that its request to the peer failed, in the words of
    /// Kademlia's own handler ([`failure`]). A lookup that has the peer's answer, or has not
    /// asked it, takes no notice (Kademlia's lookups count a failure only of a peer they
    /// wait on, or stopped waiting on past its 10-s timeout: a lookup longer than that, on a
    /// setting of `operation_timeout` past 20 s, drops the peer's answer if it comes later;
    /// and its requests outstanding for [`crate::stalled`]'s 15 s are no longer known, and
    /// not spared). Only once Kademlia said all it had to say: a request it decided on and
    /// has not handed on yet is not seen, and its lookup would be failed too. Whether it
    /// told Kademlia anything.
    fn fail_opened(&mut self, kad: &mut Kad) -> bool {
        let mut told = false;
        for peer in std::mem::take(&mut self.late_opened) {
            // (A peer whose last connection closed: Kademlia counted it failed.)
            let Some(connection) = self.connected.get(&peer).copied() else { continue };
            let spared = self.answers.waiting_lookups(&peer);
            let running: Vec<kad::QueryId> = kad.iter_queries().map(|query| query.id()).collect();
            for lookup in running.into_iter().filter(|lookup| !spared.contains(lookup)) {
                let Some(failed) = failure(&mut self.scratch, lookup) else { continue };
                kad.on_connection_handler_event(peer, connection, failed);
                told = true;
            }
            tracing::debug!(%peer, "lookups stopped waiting on what a connection opened with");
        }
        told
    }

    /// Reads what Kademlia's connections told of the requests they opened with, now (not
    /// waiting for this behaviour's next poll): whether `connection` told of one sent.
    fn read_reports(&mut self, connection: ConnectionId) -> bool {
        let mut sent = false;
        while let Ok(report) = self.reports.receiver.try_recv() {
            sent |= report.connection == connection && report.progress == Progress::Sent;
            self.on_opened(report);
        }
        sent
    }

    /// A connection of Kademlia's sent a request it opened with, or one of those ended: timed
    /// as a request this node sees go (not once the connection closed: its requests are lost,
    /// and Kademlia's lookups count the peer failed, or are told so, [`Lost`]).
    fn on_opened(&mut self, report: OpenedRequest) {
        let OpenedRequest { peer, connection, index, at, progress } = report;
        let request = Request::Opened(connection, index);
        match progress {
            Progress::Sent if self.open.contains(&connection) => {
                self.answers.asked(peer, request, Wait::Answer, at)
            }
            Progress::Sent => {}
            Progress::Answered => {
                self.answers.ended(peer, request, true, at);
                self.answered(&peer);
            }
            Progress::Failed => self.answers.ended(peer, request, false, at),
        }
    }

    /// Arms the wake for when the oldest dial Kademlia waits on, or the first peer that
    /// answers nothing, is given up.
    fn arm(&mut self, cx: &mut Context<'_>) {
        let oldest = self.dialing.values().map(|(since, _)| *since).min();
        let patience = self.patience().filter(|_| !self.stranded);
        let room = self.given_up.len() < MAX_GIVEN_UP;
        let dial = match (oldest, patience, room) {
            (Some(oldest), Some(patience), true) => Some(oldest + patience),
            _ => None,
        };
        let silent = self.answers.next().filter(|_| !self.stranded);
        let Some(at) = dial.into_iter().chain(silent).min() else {
            self.wake = None;
            return;
        };
        let wake = self.wake.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if wake.deadline() != at {
            wake.as_mut().reset(at);
        }
        if wake.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
    }
}

/// Tells Kademlia, as the swarm tells it of a dial a behaviour denied, that a dial of `peer`
/// failed: its lookups count the peer as failed and go on. Nothing else in Kademlia changes
/// (its table drops an address only on a transport's failure).
fn tell_failed<B: NetworkBehaviour>(
    kad: &mut B,
    peer: PeerId,
    connection_id: ConnectionId,
    why: impl std::error::Error + Send + Sync + 'static,
) {
    let error = DialError::Denied { cause: ConnectionDenied::new(why) };
    let failure = DialFailure { peer_id: Some(peer), error: &error, connection_id };
    kad.on_swarm_event(FromSwarm::DialFailure(failure));
}

/// The scope of the farthest of the addresses a failed dial tried that went out and failed
/// there (not those no transport here takes); none for a dial that failed otherwise.
pub(crate) fn farthest_tried(error: &DialError) -> Option<Scope> {
    let DialError::Transport(attempts) = error else { return None };
    let tried = attempts.iter().filter(|(_, e)| matches!(e, libp2p::TransportError::Other(_)));
    tried.map(|(address, _)| Scope::of(address)).max()
}

/// The failure of `lookup`'s request, as a connection of Kademlia's tells it (so that one
/// lookup goes on without the peer, and its others do not): Kademlia's own handler
/// (`handler`, made once) is handed the request and told that its stream could not open.
/// None if it did not say so (a Kademlia that words it otherwise).
fn failure(handler: &mut Option<KadHandler>, lookup: kad::QueryId) -> Option<KadOut> {
    use libp2p::core::Endpoint;
    use libp2p::core::transport::PortUse;
    use libp2p::swarm::StreamUpgradeError;
    use libp2p::swarm::handler::DialUpgradeError;
    let handler = match handler {
        Some(handler) => handler,
        None => {
            let (local, remote) = (PeerId::random(), PeerId::random());
            let mut kad = Kad::new(local, kad::store::MemoryStore::new(local));
            let (none, address) = (ConnectionId::new_unchecked(0), libp2p::Multiaddr::empty());
            let made = kad.handle_established_outbound_connection(
                none,
                remote,
                &address,
                Endpoint::Dialer,
                PortUse::Reuse,
            );
            handler.insert(made.ok()?)
        }
    };
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    handler.on_behaviour_event(KadIn::FindNodeReq { key: Vec::new(), query_id: lookup });
    for _ in 0..4 {
        match handler.poll(&mut cx) {
            Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest { .. }) => {
                let failed = DialUpgradeError { info: (), error: StreamUpgradeError::Timeout };
                handler.on_connection_event(ConnectionEvent::DialUpgradeError(failed));
            }
            Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(
                event @ KadOut::QueryError { query_id, .. },
            )) if query_id == lookup => return Some(event),
            Poll::Ready(_) => {}
            Poll::Pending => break,
        }
    }
    None
}

/// How long Kademlia's dials are held after the `failures`th failed dial in a row.
fn hold_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    HOLD_FIRST.saturating_mul(1 << doublings).min(HOLD_MOST)
}

/// The lookup that Kademlia's request to a peer is for; none for its answers to the peer's
/// requests, for a request that has no answer (ADD_PROVIDER), and for other events.
fn request(event: &KadIn) -> Option<kad::QueryId> {
    match event {
        KadIn::FindNodeReq { query_id, .. }
        | KadIn::GetProvidersReq { query_id, .. }
        | KadIn::GetRecord { query_id, .. }
        | KadIn::PutRecord { query_id, .. } => Some(*query_id),
        _ => None,
    }
}

/// The lookup whose request a peer's event ends, and whether it answered it (or the request
/// failed); none for the peer's own requests and other events.
fn answer(event: &KadOut) -> Option<(kad::QueryId, bool)> {
    match event {
        KadOut::FindNodeRes { query_id, .. }
        | KadOut::GetProvidersRes { query_id, .. }
        | KadOut::GetRecordRes { query_id, .. }
        | KadOut::PutRecordRes { query_id, .. } => Some((*query_id, true)),
        KadOut::QueryError { query_id, .. } => Some((*query_id, false)),
        _ => None,
    }
}

/// What a connection of Kademlia's tells of a request it opened with ([`Opening`]): the
/// `index`th of those sent on `connection` to `peer`, at `at`.
#[derive(Debug)]
pub(crate) struct OpenedRequest {
    peer: PeerId,
    connection: ConnectionId,
    index: u32,
    at: Instant,
    progress: Progress,
}

/// Where a request a connection opened with is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Sent.
    Sent,
    /// Answered.
    Answered,
    /// Failed: its stream could not open or broke, or Kademlia's connection stopped waiting
    /// on it (10 s).
    Failed,
}

/// Where Kademlia's connections tell [`Holds`] of the requests they opened with.
struct Reports {
    sender: mpsc::UnboundedSender<OpenedRequest>,
    receiver: mpsc::UnboundedReceiver<OpenedRequest>,
}

impl Default for Reports {
    fn default() -> Reports {
        let (sender, receiver) = mpsc::unbounded();
        Reports { sender, receiver }
    }
}

/// What a connection of Kademlia's knows of the requests it opened with.
///
/// Kademlia hands a new connection the requests of its lookups that asked to dial the peer,
/// inside the behaviour ([`Holds`] does not see them go), ahead of any it hands it after; it
/// has no other way to send a request. dkvs's Kademlia sends lookups only (no provider
/// records): each request sent gets an answer or fails. Its handler asks for their streams
/// (and starts their timeouts) when first polled, which [`Holds`] does as it wraps it
/// ([`Opened::preload`]): those are counted then, before the behaviour can hand the
/// connection any other request (it may before the connection first polls its handler:
/// libp2p's connection task passes on the behaviour's events first). A request sent later,
/// before the behaviour handed the connection any, is one it opened with too. One sent after
/// may not be, and is not timed: Kademlia's handler opens at most 32 streams at once, so of
/// over 32 requests it opened with, those past the 32nd that it sends after the behaviour
/// handed it one are not told apart from the handed ones, and their ends are taken for those
/// of others it opened with (rare: 33 lookups waiting on a dial of one peer); when those it
/// opened with are given up on, late ([`Holds::fail_opened`]), so are the lookups of these,
/// sent or still waiting in the handler for a stream. A connection
/// that a behaviour after Kademlia denies loses them (the swarm tells Kademlia of a dial,
/// [`Holds`] of a connection this node did not dial). An end of a request whose lookup the
/// behaviour did not hand it is the end of one it opened with: which one does not matter,
/// they are timed alike.
#[derive(Debug, Default)]
struct Opening {
    /// Whether the behaviour handed the connection a request.
    any_handed: bool,
    /// The lookups of the requests the behaviour handed it that have not ended, while some it
    /// opened with are outstanding.
    handed_lookups: Vec<kad::QueryId>,
    /// How many of those it opened with were sent.
    sent: u32,
    /// Those sent that have not ended, the oldest first.
    outstanding: VecDeque<u32>,
}

impl Opening {
    /// The behaviour handed the connection `event`.
    fn handed(&mut self, event: &KadIn) {
        let lookup = request(event);
        if lookup.is_none() && !matches!(event, KadIn::AddProvider { .. }) {
            return;
        }
        self.any_handed = true;
        if let Some(lookup) = lookup.filter(|_| !self.outstanding.is_empty()) {
            self.handed_lookups.push(lookup);
        }
    }

    /// The connection asks for a stream to send a request on: the number of the request, if
    /// it is one it opened with.
    fn sending(&mut self) -> Option<u32> {
        if self.any_handed {
            return None;
        }
        let index = self.sent;
        self.sent += 1;
        self.outstanding.push_back(index);
        Some(index)
    }

    /// The connection tells the behaviour `event`: if it ends a request the connection opened
    /// with, its number, and whether it was answered.
    fn ended(&mut self, event: &KadOut) -> Option<(u32, bool)> {
        let (lookup, answered) = answer(event)?;
        if self.outstanding.is_empty() {
            return None;
        }
        if let Some(i) = self.handed_lookups.iter().position(|handed| *handed == lookup) {
            self.handed_lookups.swap_remove(i);
            return None;
        }
        let index = self.outstanding.pop_front()?;
        if self.outstanding.is_empty() {
            self.handed_lookups.clear();
        }
        Some((index, answered))
    }

    /// Whether nothing is left to tell: the behaviour handed the connection a request, and
    /// none it opened with is outstanding.
    fn done(&self) -> bool {
        self.any_handed && self.outstanding.is_empty()
    }
}

/// Kademlia's connection handler, which tells [`Holds`] of the requests it opened with
/// ([`Opening`]), so that they are timed as those [`Holds`] sees go: a peer that connected
/// for a lookup and answers nothing no longer holds the lookup to its deadline.
pub(crate) struct Opened {
    inner: KadHandler,
    /// What Kademlia's handler said when polled as it was wrapped ([`Opened::preload`]), not
    /// yet passed on to the connection.
    preloaded: VecDeque<KadHandlerEvent>,
    peer: PeerId,
    connection: ConnectionId,
    opening: Opening,
    /// Where it tells of them; none once nothing is left to tell.
    report: Option<mpsc::UnboundedSender<OpenedRequest>>,
}

impl Opened {
    /// Takes what Kademlia preloaded the handler with (the stream requests of the requests it
    /// opened with), before the behaviour can hand the connection another request, and tells
    /// of them as sent: Kademlia's clock on them starts now too. The handler is polled here
    /// with a waker that does nothing; the connection polls it again with its own before
    /// anything can wait on it, as each event taken is passed on as ready (and a connection,
    /// [`crate::quiet::Quiet`] too, polls a handler again after one).
    fn preload(&mut self) {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        while self.preloaded.len() < PRELOAD_EVENTS {
            let Poll::Ready(event) = self.inner.poll(&mut cx) else { break };
            self.note(&event);
            self.preloaded.push_back(event);
        }
    }

    /// Tells of what `event`, from Kademlia's handler, says of a request it opened with.
    fn note(&mut self, event: &KadHandlerEvent) {
        if self.report.is_none() {
            return;
        }
        match event {
            ConnectionHandlerEvent::OutboundSubstreamRequest { .. } => {
                if let Some(index) = self.opening.sending() {
                    self.report(index, Progress::Sent);
                }
            }
            ConnectionHandlerEvent::NotifyBehaviour(event) => {
                if let Some((index, answered)) = self.opening.ended(event) {
                    let ended = if answered { Progress::Answered } else { Progress::Failed };
                    self.report(index, ended);
                }
            }
            _ => {}
        }
    }

    fn report(&mut self, index: u32, progress: Progress) {
        let (peer, connection, at) = (self.peer, self.connection, Instant::now());
        if let Some(report) = &self.report {
            // (Gone only with the behaviour.)
            let told = OpenedRequest { peer, connection, index, at, progress };
            let _ = report.unbounded_send(told);
        }
        if self.opening.done() {
            self.report = None;
        }
    }
}

impl ConnectionHandler for Opened {
    type FromBehaviour = <KadHandler as ConnectionHandler>::FromBehaviour;
    type ToBehaviour = <KadHandler as ConnectionHandler>::ToBehaviour;
    type InboundProtocol = <KadHandler as ConnectionHandler>::InboundProtocol;
    type OutboundProtocol = <KadHandler as ConnectionHandler>::OutboundProtocol;
    type InboundOpenInfo = <KadHandler as ConnectionHandler>::InboundOpenInfo;
    type OutboundOpenInfo = <KadHandler as ConnectionHandler>::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.inner.listen_protocol()
    }

    fn connection_keep_alive(&self) -> bool {
        self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        // Those taken as it was wrapped first (told of then), in the order Kademlia said them.
        if let Some(event) = self.preloaded.pop_front() {
            return Poll::Ready(event);
        }
        let polled = self.inner.poll(cx);
        if let Poll::Ready(event) = &polled {
            self.note(event);
        }
        polled
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        if self.report.is_some() {
            self.opening.handed(&event);
            if self.opening.done() {
                self.report = None;
            }
        }
        self.inner.on_behaviour_event(event)
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        self.inner.on_connection_event(event)
    }
}

impl crate::wrap::Wrap<Kad> for Holds {
    type Handler = Opened;

    fn wrap(&mut self, handler: KadHandler, peer: PeerId, connection: ConnectionId) -> Opened {
        let report = Some(self.reports.sender.clone());
        let (preloaded, opening) = (VecDeque::new(), Opening::default());
        let mut opened = Opened { inner: handler, preloaded, peer, connection, opening, report };
        opened.preload();
        opened
    }

    fn on_swarm_event(&mut self, kad: &mut Kad, event: FromSwarm) {
        match &event {
            FromSwarm::ConnectionEstablished(established) => {
                let dialed = established.endpoint.is_dialer();
                let (peer, connection) = (established.peer_id, established.connection_id);
                self.open.insert(connection);
                let address = crate::node::remote_address(established.endpoint);
                self.answers.connected(peer, &address);
                self.connected(peer, connection, dialed, Instant::now())
            }
            FromSwarm::ConnectionClosed(closed) if closed.remaining_established == 0 => {
                self.open.remove(&closed.connection_id);
                self.connected.remove(&closed.peer_id);
                // Kademlia counts the peer failed itself; a connection it opens next is new.
                self.late_opened.retain(|peer| *peer != closed.peer_id);
                self.answers.closed(closed.peer_id, Instant::now());
            }
            FromSwarm::ConnectionClosed(closed) => {
                let (peer, connection) = (closed.peer_id, closed.connection_id);
                // What its connections told, read first: the swarm may not have polled this
                // behaviour since the connection opened (its requests were told of then).
                self.read_reports(connection);
                self.open.remove(&connection);
                if self.answers.opened_lost(peer, connection) {
                    // Kademlia hears of the close only with the peer's last connection.
                    tracing::debug!(%peer, "a connection closed under requests it opened with");
                    tell_failed(kad, peer, connection, Lost);
                }
                self.answers.connection_closed(closed.peer_id, Instant::now());
            }
            // A connection this node did not dial that a behaviour after Kademlia denied, once
            // Kademlia had made its handler: what Kademlia handed it went nowhere, and
            // Kademlia hears of no failure of such a connection (of a dial, it does).
            FromSwarm::ListenFailure(ListenFailure {
                peer_id: Some(peer),
                error: ListenError::Denied { .. },
                connection_id,
                ..
            }) if self.read_reports(*connection_id) => {
                tracing::debug!(%peer, %connection_id, "denied under requests Kademlia handed it");
                tell_failed(kad, *peer, *connection_id, Lost);
            }
            // A dial refused because another of the peer is under way says nothing of it.
            FromSwarm::DialFailure(DialFailure { peer_id: Some(peer), error, .. })
                if !matches!(error, DialError::DialPeerConditionFalse(_)) =>
            {
                self.dialing.remove(peer);
                self.given_up.remove(peer);
            }
            _ => {}
        }
        kad.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        kad: &mut Kad,
        peer: PeerId,
        connection: ConnectionId,
        event: KadOut,
    ) {
        if let Some((lookup, answered)) = answer(&event) {
            self.answers.ended(peer, Request::Lookup(lookup), answered, Instant::now());
            if answered {
                self.answered(&peer);
            }
        }
        kad.on_connection_handler_event(peer, connection, event)
    }

    fn poll(
        &mut self,
        kad: &mut Kad,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<<Kad as NetworkBehaviour>::ToSwarm, KadIn>> {
        let now = Instant::now();
        while let Poll::Ready(Some(report)) = self.reports.receiver.poll_next_unpin(cx) {
            self.on_opened(report);
        }
        self.give_up(kad, now);
        self.give_up_silent(kad, now);
        if let Some(peer_id) = self.closing.pop() {
            let connection = libp2p::swarm::CloseConnection::All;
            return Poll::Ready(ToSwarm::CloseConnection { peer_id, connection });
        }
        loop {
            if let Some(event) = self.poll_kad(kad, cx, now) {
                return Poll::Ready(event);
            }
            // Kademlia said all it had: every request it sent was seen.
            if !self.fail_opened(kad) {
                break;
            }
        }
        self.arm(cx);
        Poll::Pending
    }
}

impl Holds {
    /// Polls Kademlia until it asks something of the swarm that is passed on, or has nothing
    /// to say: holds its dials back, and times its requests (the module's docs).
    fn poll_kad(
        &mut self,
        kad: &mut Kad,
        cx: &mut Context<'_>,
        now: Instant,
    ) -> Option<ToSwarm<<Kad as NetworkBehaviour>::ToSwarm, KadIn>> {
        while let Poll::Ready(event) = kad.poll(cx) {
            if let ToSwarm::NotifyHandler { peer_id, event: request_event, .. } = &event {
                // (A request to a peer whose last connection just closed is dropped.)
                if let Some(lookup) = request(request_event)
                    && self.connected.contains_key(peer_id)
                {
                    self.answers.asked(*peer_id, Request::Lookup(lookup), Wait::Answer, now);
                }
                return Some(event);
            }
            let ToSwarm::Dial { opts } = &event else { return Some(event) };
            let Some(peer) = opts.get_peer_id() else { return Some(event) };
            let connection_id = opts.connection_id();
            if let Some(held) = self.held(&peer, now) {
                tracing::debug!(%peer, reason = %held, "a dial of an unreachable peer held back");
                tell_failed(kad, peer, connection_id, held);
                continue;
            }
            if let Some(reason) = self.still_given_up(&peer, now) {
                tracing::debug!(%peer, %reason, "a lookup passed over a dial given up on");
                tell_failed(kad, peer, connection_id, reason);
                continue;
            }
            // A dial of a peer that connected since Kademlia asked is refused by the swarm,
            // and Kademlia waits on the connection: nothing to give up.
            if !self.connected.contains_key(&peer) {
                self.dialing.entry(peer).or_insert((now, connection_id));
            }
            return Some(event);
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn held_one(failures: u32) -> (Held, PeerId, Instant) {
        let peer = PeerId::random();
        let kad = Kad::new(peer, kad::store::MemoryStore::new(peer));
        let (mut held, now) = (Held::new(kad), Instant::now());
        for _ in 0..failures {
            held.hold(peer, now);
        }
        (held, peer, now)
    }

    #[test]
    fn holds_are_bounded_and_forgotten_a_while_after_they_end() {
        let (mut held, first, now) = held_one(2);
        assert_eq!(held.wrapper().holds[&first].until, now + HOLD_FIRST * 2);
        for _ in 1..MAX_HOLDS {
            held.hold(PeerId::random(), now);
        }
        let over = PeerId::random();
        held.hold(over, now);
        assert!(!held.wrapper().holds.contains_key(&over), "past the bound while all are recent");
        held.hold(first, now);
        assert_eq!(held.wrapper().holds[&first].failures, 3, "a held peer's failures still count");
        // The first ends at 2 min; the others at 30 s, forgotten 16 min later.
        let later = now + HOLD_FIRST + HOLD_MOST;
        held.hold(over, later);
        assert_eq!(held.wrapper().holds.len(), 2, "the old ones went to make room");
        assert_eq!(held.wrapper().holds[&first].failures, 3, "not yet forgotten");
        held.forget_old(now + HOLD_FIRST * 4 + HOLD_MOST);
        assert!(!held.wrapper().holds.contains_key(&first));
        held.wrapper_mut().connected(over, ConnectionId::new_unchecked(7), false, Instant::now());
        assert!(held.wrapper().holds.is_empty());
    }

    /// Polls `held` until it has nothing to say; returns what it said: whether it asked
    /// for a dial of `peer`, and the lookups that ended.
    fn drain(held: &mut Held, peer: PeerId) -> (bool, Vec<kad::QueryId>) {
        drain_waking(held, peer, futures::task::noop_waker_ref())
    }

    fn drain_waking(
        held: &mut Held,
        peer: PeerId,
        waker: &std::task::Waker,
    ) -> (bool, Vec<kad::QueryId>) {
        let (mut dialed, mut finished) = (false, Vec::new());
        for event in events(held, waker) {
            match event {
                ToSwarm::Dial { opts } => dialed |= opts.get_peer_id() == Some(peer),
                ToSwarm::GenerateEvent(kad::Event::OutboundQueryProgressed { id, .. }) => {
                    finished.push(id)
                }
                _ => {}
            }
        }
        (dialed, finished)
    }

    #[tokio::test]
    async fn a_held_peer_fails_kademlias_lookup_at_once_and_only_while_held() {
        let (mut held, _, now) = held_one(0);
        let other = PeerId::random();
        held.add_address(&other, "/memory/1".parse().expect("address"));
        held.hold(other, now);
        // Stranded: this node's own network may be what failed.
        held.set_stranded(true);
        let first = held.get_closest_peers(vec![1]);
        assert_eq!(drain(&mut held, other), (true, vec![]), "dialed while stranded");
        held.set_stranded(false);
        let second = held.get_closest_peers(vec![2]);
        // The failure Kademlia is told of ends both lookups (its only peer failed).
        let (dialed, mut finished) = drain(&mut held, other);
        finished.sort_by_key(|id| format!("{id:?}"));
        let mut both = vec![first, second];
        both.sort_by_key(|id| format!("{id:?}"));
        assert!(!dialed && finished == both, "the lookups ended without a dial: {finished:?}");
        held.wrapper_mut().connected(other, ConnectionId::new_unchecked(7), false, Instant::now());
        held.get_closest_peers(vec![3]);
        assert_eq!(drain(&mut held, other), (true, vec![]), "dialed once released");
    }

    #[test]
    fn a_dial_failed_slowly_after_2_s_and_only_while_peers_its_way_answered() {
        let (t0, two) = (Instant::now(), SLOW_FAILURE);
        let heard = [100, 200, 300];
        let slow = |took, now, scope, answered| {
            failed_slowly((t0, heard), (t0 + took, now), scope, answered)
        };
        let far = Scope::Internet;
        assert!(slow(two, [100, 200, 301], far, None), "2 s, while others sent bytes");
        assert!(slow(two, heard, far, Some(t0 + two)), "2 s, while others answered");
        assert!(!slow(two - Duration::from_millis(1), [1 << 20; 3], far, Some(t0 + two)));
        assert!(!slow(two * 5, heard, far, Some(t0)), "nothing came in: this node's outage");
        // Only peers on this host or network answered: its uplink may be what dropped.
        assert!(!slow(two, [101, 201, 300], far, None), "bytes came in only from nearer");
        assert!(slow(two, [100, 201, 300], Scope::Local, None), "a peer nearby, dialed nearby");
    }

    #[test]
    fn a_hold_doubles_with_each_failure_up_to_its_most() {
        assert_eq!(hold_after(1), HOLD_FIRST);
        assert_eq!(hold_after(2), HOLD_FIRST * 2);
        assert_eq!(hold_after(5), HOLD_FIRST * 16);
        assert_eq!(hold_after(6), HOLD_MOST);
        assert_eq!(hold_after(u32::MAX), HOLD_MOST);
    }

    /// Polls `held` until it has nothing to say; returns what it said.
    pub(crate) fn events(
        held: &mut Held,
        waker: &std::task::Waker,
    ) -> Vec<ToSwarm<kad::Event, KadIn>> {
        let mut cx = Context::from_waker(waker);
        std::iter::from_fn(|| match held.poll(&mut cx) {
            Poll::Ready(event) => Some(event),
            Poll::Pending => None,
        })
        .collect()
    }

    /// Set when woken.
    #[derive(Default)]
    pub(crate) struct Woken(std::sync::atomic::AtomicBool);

    impl Woken {
        pub(crate) fn woken(&self) -> bool {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl std::task::Wake for Woken {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_stops_waiting_on_a_dial_after_a_while_and_wakes_for_it() {
        let (mut held, other, lookup) = asked_to_dial_one();
        tokio::time::advance(SLOW_FAILURE - Duration::from_millis(1)).await;
        let woken = std::sync::Arc::new(Woken::default());
        let waker = std::task::Waker::from(woken.clone());
        assert_eq!(drain_waking(&mut held, other, &waker), (false, vec![]), "still waits");
        assert!(!woken.woken());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(woken.woken(), "woken when it gives up");
        assert_eq!(drain(&mut held, other), (false, vec![lookup]), "went on without the peer");
        assert!(held.wrapper().holds.is_empty(), "giving up holds nothing");
        // Kademlia keeps the peer: the next lookups ask for a dial again. While the dial
        // given up on is under way, they pass over the peer at once.
        tokio::time::advance(Duration::from_secs(5)).await;
        let again = held.get_closest_peers(vec![2]);
        assert_eq!(drain(&mut held, other), (false, vec![again]), "passed over at once");
        // Once that dial failed (at once: nothing held), the next lookup dials again and
        // waits as long.
        held.on_swarm_event(FromSwarm::DialFailure(DialFailure {
            peer_id: Some(other),
            error: &DialError::Aborted,
            connection_id: ConnectionId::new_unchecked(2),
        }));
        let third = held.get_closest_peers(vec![3]);
        assert_eq!(drain(&mut held, other), (true, vec![]), "dialed again");
        tokio::time::advance(SLOW_FAILURE - Duration::from_millis(1)).await;
        assert_eq!(drain(&mut held, other), (false, vec![]), "still waits");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(drain(&mut held, other), (false, vec![third]));
        // A dial given up on long ago, whose end this node never heard of, fails no lookup.
        tokio::time::advance(GIVEN_UP_COUNTED).await;
        held.get_closest_peers(vec![4]);
        assert_eq!(drain(&mut held, other), (true, vec![]), "dialed after a long while");
        // Nor while this node is stranded (its own network may be what failed).
        held.wrapper_mut().given_up.insert(other, Instant::now());
        assert!(held.wrapper().still_given_up(&other, Instant::now()).is_some());
        held.set_stranded(true);
        assert!(held.wrapper().still_given_up(&other, Instant::now()).is_none(), "stranded");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dial_that_connected_or_failed_is_not_given_up() {
        let (mut held, peers) = with_peers(2);
        held.wrapper_mut().dials.push(Duration::from_millis(10));
        let (connects, fails) = (peers[0], peers[1]);
        let lookup = held.get_closest_peers(vec![1]);
        drain(&mut held, connects);
        assert_eq!(held.wrapper().dialing.len(), 2, "both dialed");
        established(&mut held, connects, true);
        // Another dial of a peer being dialed is refused by the swarm: that says nothing.
        let busy = DialError::DialPeerConditionFalse(
            libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing,
        );
        held.on_swarm_event(FromSwarm::DialFailure(DialFailure {
            peer_id: Some(fails),
            error: &busy,
            connection_id: ConnectionId::new_unchecked(2),
        }));
        assert_eq!(held.wrapper().dialing.len(), 1, "the connected one is not waited on");
        held.on_swarm_event(FromSwarm::DialFailure(DialFailure {
            peer_id: Some(fails),
            error: &DialError::Aborted,
            connection_id: ConnectionId::new_unchecked(2),
        }));
        assert!(held.wrapper().dialing.is_empty(), "nor the one whose dial failed");
        tokio::time::advance(SLOW_FAILURE).await;
        // Kademlia waits on the connected peer's answer, as it would without the wrapper.
        assert_eq!(drain(&mut held, connects), (false, vec![]));
        assert!(held.query(&lookup).is_some(), "the lookup still runs");
    }

    /// A node with `peers` in Kademlia's table, each at an address of its own.
    pub(crate) fn with_peers(peers: usize) -> (Held, Vec<PeerId>) {
        let (mut held, _, _) = held_one(0);
        let peers: Vec<PeerId> = (0..peers).map(|_| PeerId::random()).collect();
        for (n, peer) in peers.iter().enumerate() {
            held.add_address(peer, format!("/memory/{}", n + 1).parse().expect("address"));
        }
        (held, peers)
    }

    /// A node whose dials connect within milliseconds (lookups wait the least), and whose
    /// lookup asked to dial the one peer in its table: that peer and the lookup.
    pub(crate) fn asked_to_dial_one() -> (Held, PeerId, kad::QueryId) {
        let (mut held, peers) = with_peers(1);
        held.wrapper_mut().dials.push(Duration::from_millis(10));
        let lookup = held.get_closest_peers(vec![1]);
        assert_eq!(drain(&mut held, peers[0]), (true, vec![]), "dialed");
        (held, peers[0], lookup)
    }

    pub(crate) fn established(held: &mut Held, peer: PeerId, dialed: bool) {
        established_at(held, peer, dialed, "/memory/9")
    }

    /// `peer` connected at `address`, dialed by this node (`dialed`) or not.
    pub(crate) fn established_at(held: &mut Held, peer: PeerId, dialed: bool, address: &str) {
        use libp2p::core::transport::PortUse;
        use libp2p::core::{ConnectedPoint, Endpoint};
        use libp2p::swarm::behaviour::ConnectionEstablished;
        let address: libp2p::Multiaddr = address.parse().expect("address");
        let endpoint = if dialed {
            ConnectedPoint::Dialer {
                address,
                role_override: Endpoint::Dialer,
                port_use: PortUse::Reuse,
            }
        } else {
            ConnectedPoint::Listener { local_addr: address.clone(), send_back_addr: address }
        };
        held.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: peer,
            connection_id: ConnectionId::new_unchecked(7),
            endpoint: &endpoint,
            failed_addresses: &[],
            other_established: 0,
        }));
    }

    /// One of `peer`'s connections closed, `remaining` others stay.
    pub(crate) fn closed(held: &mut Held, peer: PeerId, remaining: u32) {
        held.on_swarm_event(FromSwarm::ConnectionClosed(
            libp2p::swarm::behaviour::ConnectionClosed {
                peer_id: peer,
                connection_id: ConnectionId::new_unchecked(7),
                endpoint: &libp2p::core::ConnectedPoint::Listener {
                    local_addr: "/memory/9".parse().expect("address"),
                    send_back_addr: "/memory/9".parse().expect("address"),
                },
                cause: None,
                remaining_established: remaining as usize,
            },
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn lookups_wait_on_dials_as_long_as_this_nodes_dials_take() {
        let (mut held, peers) = with_peers(1);
        // Other peers, whose connections tell how long this node's dials take: `peer`, or
        // a new one, asked to dial `ago`.
        let dialed_at = |held: &mut Held, ago: Duration, peer: Option<PeerId>| {
            let other = peer.unwrap_or_else(PeerId::random);
            let asked = (Instant::now() - ago, ConnectionId::new_unchecked(3));
            held.wrapper_mut().dialing.insert(other, asked);
            other
        };
        // No dial of Kademlia's connected yet: how long they take here is unknown (on a slow
        // link, every one of them would be given up), and lookups wait as before.
        let first = held.get_closest_peers(vec![1]);
        drain(&mut held, peers[0]);
        tokio::time::advance(SLOW_FAILURE * 2).await;
        assert_eq!(drain(&mut held, peers[0]), (false, vec![]), "given up, its time unknown");
        // An inbound connection tells nothing of this node's dials.
        let other = dialed_at(&mut held, SLOW_FAILURE, None);
        established(&mut held, other, false);
        assert_eq!(held.wrapper().dials.median(), None);
        // One of Kademlia's dials connected after 1.5 s: lookups wait 6 s on dials.
        tokio::time::advance(SLOW_FAILURE).await;
        let slow = Duration::from_millis(1500);
        let other = dialed_at(&mut held, slow, None);
        established(&mut held, other, true);
        assert_eq!(held.wrapper().dials.median(), Some(slow));
        assert_eq!(held.wrapper().patience(), Some(slow * PATIENCE_FACTOR));
        // The lookup's dial, under way for 6 s now, is given up at the next poll.
        assert_eq!(drain(&mut held, peers[0]), (false, vec![first]));
        // Fast dials bring the wait down, to no less than SLOW_FAILURE.
        for _ in 0..DIAL_SAMPLES {
            let other = dialed_at(&mut held, Duration::ZERO, None);
            established(&mut held, other, true);
        }
        assert!(held.wrapper().dials.median() < Some(Duration::from_millis(2)));
        assert_eq!(held.wrapper().patience(), Some(SLOW_FAILURE));
        // A peer that makes its own dial slow (here, past the setup timeout: addresses that
        // drop packets before the one that answers) moves the median nothing, however often
        // it is dialed (it hangs up, and is dialed again).
        let own = PeerId::random();
        for _ in 0..DIAL_SAMPLES {
            dialed_at(&mut held, Duration::from_secs(100), Some(own));
            established(&mut held, own, true);
        }
        assert_eq!(held.wrapper().dials.last(), Some(crate::transport::SETUP_TIMEOUT));
        assert_eq!(held.wrapper().patience(), Some(SLOW_FAILURE));
        // A link that slows every dial moves it.
        for _ in 0..DIAL_SAMPLES / 2 {
            let other = dialed_at(&mut held, slow, None);
            established(&mut held, other, true);
        }
        assert_eq!(held.wrapper().patience(), Some(slow * PATIENCE_FACTOR));
    }

    #[tokio::test(start_paused = true)]
    async fn a_given_up_dial_that_connects_counts_and_a_closed_peer_is_timed_again() {
        let (mut held, peer, _) = asked_to_dial_one();
        let peers = [peer];
        tokio::time::advance(SLOW_FAILURE).await;
        drain(&mut held, peers[0]);
        assert!(held.wrapper().given_up.contains_key(&peers[0]), "given up");
        // Its dial goes on and connects 3 s after Kademlia asked: that is how long it took.
        tokio::time::advance(Duration::from_secs(1)).await;
        established(&mut held, peers[0], true);
        assert!(held.wrapper().given_up.is_empty());
        assert_eq!(held.wrapper().dials.last(), Some(Duration::from_secs(3)));
        // Once its last connection closed, Kademlia's dials of it are timed again.
        closed(&mut held, peers[0], 0);
        held.get_closest_peers(vec![2]);
        drain(&mut held, peers[0]);
        assert!(held.wrapper().dialing.contains_key(&peers[0]), "a closed peer's dial untimed");
    }

    #[tokio::test(start_paused = true)]
    async fn no_dial_is_given_up_while_stranded_or_past_the_bound() {
        let (mut held, peers) = with_peers(1);
        held.wrapper_mut().dials.push(Duration::from_millis(10));
        held.set_stranded(true);
        held.get_closest_peers(vec![1]);
        assert_eq!(drain(&mut held, peers[0]), (true, vec![]));
        tokio::time::advance(SLOW_FAILURE * 2).await;
        assert_eq!(drain(&mut held, peers[0]), (false, vec![]), "given up while stranded");
        assert!(held.wrapper().wake.is_none(), "nothing to wake for");
        held.set_stranded(false);
        for _ in 0..MAX_GIVEN_UP {
            held.wrapper_mut().given_up.insert(PeerId::random(), Instant::now());
        }
        assert_eq!(drain(&mut held, peers[0]), (false, vec![]), "given up past the bound");
        // Dials given up on long ago (a peer's many addresses, dialed in turn) no longer
        // count against it.
        let long_ago = Instant::now() - GIVEN_UP_COUNTED;
        held.wrapper_mut().given_up.values_mut().for_each(|since| *since = long_ago);
        assert!(!drain(&mut held, peers[0]).0);
        assert!(held.wrapper().given_up.contains_key(&peers[0]), "given up once there is room");
    }

    #[tokio::test(start_paused = true)]
    async fn the_wake_follows_the_oldest_dial_waited_on() {
        let (mut held, peer, _) = asked_to_dial_one();
        let peers = [peer];
        // A second peer, and a lookup that asks to dial it 1 s after the first.
        tokio::time::advance(Duration::from_secs(1)).await;
        let second = PeerId::random();
        held.add_address(&second, "/memory/2".parse().expect("address"));
        held.get_closest_peers(vec![2]);
        assert!(drain(&mut held, second).0);
        assert_eq!(held.wrapper().dialing.len(), 2, "both dials are timed");
        tokio::time::advance(Duration::from_secs(1)).await;
        drain(&mut held, peers[0]);
        assert_eq!(held.wrapper().dialing.len(), 1, "the first was given up");
        assert!(held.wrapper().dialing.contains_key(&second));
        // The wake moved to the second: not due for another second.
        let woken = std::sync::Arc::new(Woken::default());
        let waker = std::task::Waker::from(woken.clone());
        drain_waking(&mut held, second, &waker);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!woken.woken(), "woken early");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(woken.woken(), "woken for the second");
    }

    #[test]
    fn kademlias_own_handler_words_the_failure_of_one_lookups_request() {
        let (mut held, _, _) = held_one(0);
        let mut handler = None;
        for key in 0..3 {
            let lookup = held.get_closest_peers(vec![key]);
            let failed = failure(&mut handler, lookup);
            assert!(
                matches!(failed, Some(KadOut::QueryError { query_id, .. }) if query_id == lookup),
                "{failed:?}"
            );
        }
    }

    #[test]
    fn a_dial_is_judged_by_the_farthest_address_it_tried_that_went_out() {
        use libp2p::TransportError;
        let attempt = |address: &str, went_out: bool| {
            let address: libp2p::Multiaddr = address.parse().expect("address");
            let error = if went_out {
                TransportError::Other(std::io::Error::from(std::io::ErrorKind::TimedOut))
            } else {
                TransportError::MultiaddrNotSupported(address.clone())
            };
            (address, error)
        };
        let dial = |attempts| farthest_tried(&DialError::Transport(attempts));
        let lan = attempt("/ip4/192.168.0.7/tcp/1", true);
        let host = attempt("/ip4/127.0.0.1/tcp/1", true);
        let far = attempt("/ip4/203.0.113.9/tcp/1", true);
        let name = attempt("/dns4/example.org/tcp/1", false);
        assert_eq!(dial(vec![host, lan, name]), Some(Scope::Local), "a name no transport takes");
        let host = attempt("/ip4/127.0.0.1/tcp/1", true);
        assert_eq!(dial(vec![host, far]), Some(Scope::Internet));
        assert_eq!(dial(vec![attempt("/dns4/example.org/tcp/1", false)]), None);
        assert_eq!(farthest_tried(&DialError::Aborted), None);
    }

    #[test]
    fn a_connection_tells_of_the_requests_it_opened_with_and_only_those() {
        let (mut held, _, _) = held_one(0);
        let lookups: Vec<kad::QueryId> = (0..4).map(|i| held.get_closest_peers(vec![i])).collect();
        let find = |lookup| KadIn::FindNodeReq { key: vec![1], query_id: lookup };
        let answer = |lookup| KadOut::FindNodeRes { closer_peers: Vec::new(), query_id: lookup };
        let mut opening = Opening::default();
        // Two sent before the behaviour handed it any: it opened with those.
        assert_eq!(opening.sending(), Some(0));
        assert_eq!(opening.sending(), Some(1));
        // The behaviour hands it one: what it sends from now on may be that one.
        opening.handed(&find(lookups[2]));
        assert_eq!(opening.sending(), None);
        assert!(!opening.done());
        // The answer to the handed one ends none of those; another lookup's ends the oldest.
        assert_eq!(opening.ended(&answer(lookups[2])), None);
        assert_eq!(opening.ended(&answer(lookups[1])), Some((0, true)));
        let other = KadOut::ProtocolConfirmed { endpoint: dialer() };
        assert_eq!(opening.ended(&other), None, "not an answer");
        assert_eq!(opening.ended(&answer(lookups[0])), Some((1, true)));
        assert!(opening.done());
        assert_eq!(opening.ended(&answer(lookups[3])), None, "none outstanding");
        // A connection the behaviour handed a request first says nothing.
        let mut opening = Opening::default();
        opening.handed(&find(lookups[3]));
        assert_eq!(opening.sending(), None);
        assert!(opening.done());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_counts_what_kademlia_preloaded_it_with_as_it_is_wrapped() {
        // A lookup waits on a dial of the peer; its connection opens: the lookup's request
        // is counted, and told of as sent.
        let (mut held, peer, _) = asked_to_dial_one();
        let mut handler = wrapped(&mut held, peer);
        assert_eq!(handler.opening.outstanding, [0], "the lookup's request, counted");
        let told = held.wrapper_mut().reports.receiver.try_recv().expect("told");
        assert_eq!((told.peer, told.index, told.progress), (peer, 0, Progress::Sent));
        assert_eq!(handler.preloaded.len(), 1, "its stream request, kept for the connection");
        // The behaviour hands it another before it first ran: told apart from it, and sent
        // after it (the stream request taken goes first).
        let other = held.get_closest_peers(vec![2]);
        handler.on_behaviour_event(KadIn::FindNodeReq { key: vec![2], query_id: other });
        assert_eq!(handler.opening.handed_lookups, [other]);
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let first = handler.poll(&mut cx);
        assert!(matches!(
            first,
            Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest { .. })
        ));
        assert!(handler.preloaded.is_empty(), "the one taken went first");
        assert_eq!(poll_handler(&mut held, peer, &mut handler), 1, "then the handed one");
        assert_eq!(handler.opening.outstanding, [0], "one it opened with, outstanding");
        assert!(held.wrapper_mut().reports.receiver.try_recv().is_err(), "nothing more told");
        // A connection that Kademlia preloaded nothing into has nothing to count.
        let (mut held, peers) = with_peers(1);
        let handler = wrapped(&mut held, peers[0]);
        assert!(handler.opening.outstanding.is_empty() && handler.preloaded.is_empty());
    }

    fn dialer() -> libp2p::core::ConnectedPoint {
        libp2p::core::ConnectedPoint::Dialer {
            address: "/memory/9".parse().expect("address"),
            role_override: libp2p::core::Endpoint::Dialer,
            port_use: libp2p::core::transport::PortUse::Reuse,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_another_behaviour_denied_fails_what_kademlia_handed_it() {
        use libp2p::swarm::{ConnectionDenied, ListenError};
        // A lookup waits on a dial of the peer; the peer connects to this node meanwhile, and
        // Kademlia hands that connection the lookup's request as it makes its handler.
        let (mut held, peer, lookup) = asked_to_dial_one();
        let (connection, address) = (ConnectionId::new_unchecked(8), "/memory/9".parse());
        let address: libp2p::Multiaddr = address.expect("address");
        let made = held.handle_established_inbound_connection(connection, peer, &address, &address);
        assert_eq!(made.expect("a handler").opening.outstanding, [0], "handed the request");
        // A behaviour after Kademlia denies the connection: the request went nowhere, and
        // Kademlia is told so (it hears of no failure of a connection it did not dial).
        let denied = |held: &mut Held, connection| {
            let error = ListenError::Denied { cause: ConnectionDenied::new(std::fmt::Error) };
            held.on_swarm_event(FromSwarm::ListenFailure(ListenFailure {
                local_addr: &address,
                send_back_addr: &address,
                error: &error,
                connection_id: connection,
                peer_id: Some(peer),
            }));
        };
        denied(&mut held, connection);
        assert_eq!(drain(&mut held, peer), (false, vec![lookup]), "went on without the peer");
        // A connection denied that was handed nothing: the lookups that asked the peer on
        // another wait on.
        established(&mut held, peer, false);
        let lookup = held.get_closest_peers(vec![2]);
        drain(&mut held, peer);
        let another = ConnectionId::new_unchecked(9);
        let made = held.handle_established_inbound_connection(another, peer, &address, &address);
        assert!(made.expect("a handler").opening.outstanding.is_empty(), "handed nothing");
        denied(&mut held, another);
        assert!(!drain(&mut held, peer).1.contains(&lookup), "the lookup waits on the peer");
        assert!(held.query(&lookup).is_some());
    }

    /// `held`'s handler for a connection to `peer` it dialed, polled until it has nothing to
    /// say.
    pub(crate) fn opened(held: &mut Held, peer: PeerId) -> Opened {
        let mut handler = wrapped(held, peer);
        poll_handler(held, peer, &mut handler);
        handler
    }

    /// `held`'s handler for a connection to `peer` it dialed, not yet polled by its
    /// connection.
    pub(crate) fn wrapped(held: &mut Held, peer: PeerId) -> Opened {
        use libp2p::core::Endpoint;
        use libp2p::core::transport::PortUse;
        let (connection, address) =
            (ConnectionId::new_unchecked(7), "/memory/9".parse().expect("address"));
        let handler = held
            .handle_established_outbound_connection(
                connection,
                peer,
                &address,
                Endpoint::Dialer,
                PortUse::Reuse,
            )
            .expect("a handler");
        established(held, peer, true);
        handler
    }

    /// Polls `handler`, of a connection of `held` to `peer`, until it has nothing to say, and
    /// hands `held` what it tells it; returns how many requests it asked streams for.
    pub(crate) fn poll_handler(held: &mut Held, peer: PeerId, handler: &mut Opened) -> usize {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let mut asked = 0;
        while let Poll::Ready(event) = handler.poll(&mut cx) {
            match event {
                ConnectionHandlerEvent::OutboundSubstreamRequest { .. } => asked += 1,
                ConnectionHandlerEvent::NotifyBehaviour(event) => {
                    let connection = ConnectionId::new_unchecked(7);
                    held.on_connection_handler_event(peer, connection, event)
                }
                _ => {}
            }
        }
        asked
    }

    #[tokio::test(start_paused = true)]
    async fn a_dial_of_a_peer_that_connected_meanwhile_is_not_timed() {
        let (mut held, peers) = with_peers(1);
        held.wrapper_mut().dials.push(Duration::from_millis(10));
        // The peer connected, and Kademlia asks to dial it: it has not yet been told of the
        // connection (a dial it queued before, handed out after).
        held.wrapper_mut().connected(
            peers[0],
            ConnectionId::new_unchecked(7),
            false,
            Instant::now(),
        );
        held.get_closest_peers(vec![1]);
        assert_eq!(drain(&mut held, peers[0]), (true, vec![]));
        assert!(held.wrapper().dialing.is_empty(), "a connected peer's dial timed");
    }
}
