//! Pacing of this node's own record requests. Every node admits from one peer only so many
//! requests and bytes a second ([`crate::defence`]); a node that sent faster would be refused
//! ("rate limited") and, flooding on, banned. So what this node sends one peer stays within
//! what that peer admits on the default configuration (this node's own limits stand in for
//! the peer's), and a request over it waits for its turn instead: an application writing as
//! fast as it can gets its writes later, not refused. A peer's queue holds what its budget
//! lets go within an operation's timeout; a request beyond that, or still waiting when its
//! operation ends, is reported as that peer's refusal for load ("rate limited").
//!
//! The budget is nine tenths of the peer's sustained rates and half its bursts, so that
//! jitter on the way cannot make a paced sender look like more than the peer allows. The byte
//! budget of a peer not sent to lately starts at a sixteenth of the burst, half of what a
//! peer grants a new id. Replication takes from the same budget, and only while no request
//! waits ([`Outbox::can_send`]): the user's operations go first.
//!
//! Extensions' messages (mail's requests) take their turns from the same budget and queue
//! ([`Outbox::turn`], through [`crate::Node::turn`]): a peer admits so much from this node
//! for all protocols together.
//!
//! A peer that answers "rate limited" all the same (its limits are stricter than this node's,
//! or other senders of its network share them) gets nothing for [`HOLD_ON_REFUSAL`]
//! ([`Outbox::refused_by`]): the requests for it wait that long, then go at the usual pace.

use std::collections::{HashMap, VecDeque};

use libp2p::PeerId;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::codec::pb;
use crate::node::OpId;
use crate::rate::RateLimiter;

/// How long nothing goes to a peer after it answered "rate limited".
pub(crate) const HOLD_ON_REFUSAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The requests waiting for their turn, per peer, and the budgets they wait for.
pub(crate) struct Outbox {
    requests: RateLimiter,
    bytes: RateLimiter,
    waiting: HashMap<PeerId, Queue>,
    /// The peers each operation has requests waiting for (possibly sent since).
    by_op: HashMap<OpId, Vec<PeerId>>,
    /// At most this many requests, and bytes, wait for one peer: what its budget lets go
    /// within an operation's timeout. More would only wait to time out, and take memory.
    max_waiting: usize,
    max_waiting_bytes: usize,
    /// What pacing did since the node started.
    pub(crate) stats: PacingStats,
}

/// What this node's pacing of its own requests did since it started ([`crate::Node::pacing`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PacingStats {
    /// Requests, and extensions' turns ([`crate::Node::turn`]), that waited for their turn
    /// before they went (or were held back, dropped because their operation no longer needed
    /// them, or given up).
    pub waited: u64,
    /// Requests and turns held back: refused here because so much already waited for their
    /// peer, or, for requests, still waiting when their operation ended. Their operations
    /// count the peer as refused for load ("rate limited"); a turn is answered
    /// [`crate::TurnError::RateLimited`].
    pub held_back: u64,
}

#[derive(Default)]
struct Queue {
    requests: VecDeque<Item>,
    bytes: usize,
}

/// What waits in a peer's queue: a record request, or an extension's turn.
enum Item {
    Request(Waiting),
    /// Told `true` when the turn comes (its budget then taken); dropped unanswered if the
    /// one waiting for it gave up.
    Turn {
        reply: oneshot::Sender<bool>,
        len: usize,
    },
}

impl Item {
    fn len(&self) -> usize {
        match self {
            Item::Request(w) => w.len,
            Item::Turn { len, .. } => *len,
        }
    }

    fn of(&self, op: OpId) -> bool {
        matches!(self, Item::Request(w) if w.op == op)
    }

    fn given_up(&self) -> bool {
        matches!(self, Item::Turn { reply, .. } if reply.is_closed())
    }
}

pub(crate) struct Waiting {
    pub(crate) op: OpId,
    pub(crate) request: pb::Request,
    len: usize,
}

/// What became of a request handed to the outbox.
pub(crate) enum Outgoing {
    /// It may go now.
    Now(pb::Request),
    /// It waits for its turn.
    Waiting,
    /// So much already waits for the peer that its turn would come after the operation's
    /// timeout: the peer's rate limit, applied here.
    Refused,
}

impl Outbox {
    pub(crate) fn new(config: &crate::Config) -> Outbox {
        let tenths = |n: u32| (u64::from(n) * 9 / 10).max(1) as u32;
        let (rate, byte_rate) =
            (tenths(config.peer_requests_per_second), tenths(config.peer_bytes_per_second));
        let within =
            |rate: u32| (f64::from(rate) * config.operation_timeout.as_secs_f64()) as usize;
        Outbox {
            requests: RateLimiter::new(rate, (config.peer_request_burst / 2).max(1)),
            bytes: RateLimiter::new(byte_rate, (config.peer_byte_burst / 2).max(1))
                .starting_with(config.peer_byte_burst / 16),
            waiting: HashMap::new(),
            by_op: HashMap::new(),
            max_waiting: within(rate).max(1),
            max_waiting_bytes: within(byte_rate).max(crate::codec::MAX_FRAME_LEN),
            stats: PacingStats::default(),
        }
    }

    /// Whether a request of `len` bytes may go to `peer` now; takes nothing. Never while
    /// requests to it wait: they go first.
    pub(crate) fn can_send(&mut self, peer: PeerId, len: usize, now: Instant) -> bool {
        !self.waiting.contains_key(&peer)
            && self.requests.has(peer, 1, now)
            && self.bytes.has(peer, self.fitted(len), now)
    }

    /// Lets `request` for `op` go now if [`Outbox::can_send`] (taking its share of the
    /// budget), queues it behind the others waiting for `peer`, or refuses it when the queue
    /// holds what the peer's budget lets go within an operation's timeout.
    pub(crate) fn send_or_wait(
        &mut self,
        op: OpId,
        peer: PeerId,
        request: pb::Request,
        now: Instant,
    ) -> Outgoing {
        let len = prost::Message::encoded_len(&request);
        if self.can_send(peer, len, now) {
            self.take(peer, len, now);
            return Outgoing::Now(request);
        }
        if self.enqueue(peer, Item::Request(Waiting { op, request, len })).is_err() {
            return Outgoing::Refused;
        }
        let peers = self.by_op.entry(op).or_default();
        if peers.last() != Some(&peer) {
            peers.push(peer);
        }
        Outgoing::Waiting
    }

    /// An extension's turn to send `peer` a message of `len` bytes: `reply` is told `true`
    /// now if it may go now (its share of the budget taken), else when its turn comes,
    /// behind the requests already waiting for the peer; `false` at once when the queue
    /// holds what the peer's budget lets go within an operation's timeout.
    pub(crate) fn turn(
        &mut self,
        peer: PeerId,
        len: usize,
        reply: oneshot::Sender<bool>,
        now: Instant,
    ) {
        // Whatever an extension says: a turn costs the queue no more than all it may hold.
        let len = len.min(self.max_waiting_bytes);
        if self.can_send(peer, len, now) {
            self.take(peer, len, now);
            let _ = reply.send(true);
            return;
        }
        if let Err(Item::Turn { reply, .. }) = self.enqueue(peer, Item::Turn { reply, len }) {
            let _ = reply.send(false);
        }
    }

    /// Queues `item` behind those waiting for `peer`; gives it back (counted as held back)
    /// when the queue holds what the peer's budget lets go within an operation's timeout.
    fn enqueue(&mut self, peer: PeerId, item: Item) -> Result<(), Item> {
        let len = item.len();
        let queue = self.waiting.entry(peer).or_default();
        let full = |queue: &Queue| {
            queue.requests.len() >= self.max_waiting
                || (queue.bytes + len > self.max_waiting_bytes && !queue.requests.is_empty())
        };
        if full(queue) {
            // Turns given up take no room.
            queue.requests.retain(|item| !item.given_up());
            queue.bytes = queue.requests.iter().map(Item::len).sum();
        }
        // Refused only behind others: an empty queue takes anything.
        if full(queue) {
            self.stats.held_back += 1;
            return Err(item);
        }
        self.stats.waited += 1;
        queue.bytes += len;
        queue.requests.push_back(item);
        Ok(())
    }

    /// The waiting requests whose turn has come, each peer's in order; their share of the
    /// budget is taken. Those of operations no longer `running` are dropped, costing nothing.
    pub(crate) fn due(
        &mut self,
        now: Instant,
        running: impl Fn(OpId) -> bool,
    ) -> Vec<(PeerId, Waiting)> {
        let mut due = Vec::new();
        let burst = self.bytes_burst();
        let peers: Vec<PeerId> = self.waiting.keys().copied().collect();
        for peer in peers {
            let Some(queue) = self.waiting.get_mut(&peer) else { continue };
            while let Some(front) = queue.requests.front() {
                // Those of ended operations, and turns given up, go as they come up
                // (`take_waiting` takes most).
                let live = match front {
                    Item::Request(w) => running(w.op),
                    Item::Turn { reply, .. } => !reply.is_closed(),
                };
                let len = front.len();
                if live {
                    let fitted = len.min(burst);
                    if !(self.requests.has(peer, 1, now) && self.bytes.has(peer, fitted, now)) {
                        break;
                    }
                    self.requests.allow(peer, now);
                    self.bytes.allow_n(peer, fitted, now);
                }
                queue.bytes -= len;
                match queue.requests.pop_front() {
                    Some(Item::Request(w)) if live => due.push((peer, w)),
                    Some(Item::Turn { reply, .. }) if live => {
                        let _ = reply.send(true);
                    }
                    _ => {}
                }
            }
            if queue.requests.is_empty() {
                self.waiting.remove(&peer);
            }
        }
        self.by_op.retain(|op, _| running(*op));
        due
    }

    /// Whether a request of `op` waits for `peer` and cannot go before `then`: the peer is
    /// held after a refusal ([`Outbox::refused_by`]), not merely paced.
    pub(crate) fn held_past(&mut self, op: OpId, peer: &PeerId, then: Instant) -> bool {
        let now = Instant::now();
        let waits = self.by_op.get(&op).is_some_and(|peers| peers.contains(peer))
            && self.waiting.get(peer).is_some_and(|q| q.requests.iter().any(|w| w.of(op)));
        waits && now + self.requests.wait(*peer, 1, now) > then
    }

    /// The peers requests wait for.
    pub(crate) fn waiting_for(&self) -> impl Iterator<Item = &PeerId> {
        self.waiting.keys()
    }

    /// Takes the requests of `op` that still wait (it is ending); the peers they were for.
    pub(crate) fn take_waiting(&mut self, op: OpId) -> Vec<PeerId> {
        let mut peers = Vec::new();
        for peer in self.by_op.remove(&op).unwrap_or_default() {
            let removed = self.remove_waiting(op, &peer);
            if removed > 0 {
                self.stats.held_back += removed as u64;
                peers.push(peer);
            }
        }
        peers.sort_unstable();
        peers.dedup();
        peers
    }

    /// Drops the requests of `op` that still wait for any of `peers`: the operation goes on
    /// without them (a put whose replica set a recheck changed). They cost nothing and are
    /// not counted as held back. Returns how many were dropped.
    pub(crate) fn drop_waiting(&mut self, op: OpId, peers: &[PeerId]) -> usize {
        let dropped = peers.iter().map(|peer| self.remove_waiting(op, peer)).sum();
        if let Some(waiting) = self.by_op.get_mut(&op) {
            waiting.retain(|p| !peers.contains(p));
        }
        dropped
    }

    /// Takes `op`'s requests out of `peer`'s queue (removing the queue when it empties);
    /// how many there were.
    fn remove_waiting(&mut self, op: OpId, peer: &PeerId) -> usize {
        let Some(queue) = self.waiting.get_mut(peer) else { return 0 };
        let before = queue.requests.len();
        queue.requests.retain(|w| !w.of(op));
        let removed = before - queue.requests.len();
        if removed > 0 {
            queue.bytes = queue.requests.iter().map(Item::len).sum();
        }
        if queue.requests.is_empty() {
            self.waiting.remove(peer);
        }
        removed
    }

    /// When the first waiting request's turn comes, if any waits (now, if one may go now).
    pub(crate) fn next_wake(&mut self, now: Instant) -> Option<Instant> {
        let burst = self.bytes_burst();
        // A turn given up at the front waits for nothing: the one behind it does.
        for queue in self.waiting.values_mut() {
            while queue.requests.front().is_some_and(Item::given_up) {
                let len = queue.requests.pop_front().map_or(0, |item| item.len());
                queue.bytes -= len;
            }
        }
        self.waiting.retain(|_, queue| !queue.requests.is_empty());
        let fronts: Vec<(PeerId, usize)> = self
            .waiting
            .iter()
            .filter_map(|(peer, queue)| Some((*peer, queue.requests.front()?.len().min(burst))))
            .collect();
        fronts
            .into_iter()
            .map(|(peer, len)| {
                // `wait` rounds up: the tokens are there at that time, and `due` sends.
                now + self.requests.wait(peer, 1, now).max(self.bytes.wait(peer, len, now))
            })
            .min()
    }

    /// `peer` answered "rate limited": nothing more goes to it for [`HOLD_ON_REFUSAL`] (a
    /// refusal of the same moment does not add to it).
    pub(crate) fn refused_by(&mut self, peer: PeerId, now: Instant) {
        self.requests.hold(peer, HOLD_ON_REFUSAL.as_secs_f64(), now);
    }

    /// Forgets the budgets of peers not sent to for a while.
    pub(crate) fn forget_idle(&mut self, now: Instant) {
        self.requests.forget_idle(now);
        self.bytes.forget_idle(now);
    }

    fn take(&mut self, peer: PeerId, len: usize, now: Instant) {
        let len = self.fitted(len);
        self.requests.allow(peer, now);
        self.bytes.allow_n(peer, len, now);
    }

    /// A request larger than the byte burst (a replication frame, at most 64 KiB, against a
    /// burst of megabytes on the default configuration) costs the whole burst, not forever.
    fn fitted(&self, len: usize) -> usize {
        len.min(self.bytes_burst())
    }

    fn bytes_burst(&self) -> usize {
        self.bytes.burst() as usize
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn get(key: &str) -> pb::Request {
        pb::Request {
            kind: Some(pb::request::Kind::Get(pb::GetRequest {
                key: key.into(),
                ..pb::GetRequest::default()
            })),
        }
    }

    fn now(outgoing: Outgoing) -> bool {
        matches!(outgoing, Outgoing::Now(_))
    }

    #[test]
    fn a_peer_that_answers_rate_limited_gets_nothing_for_a_moment_then_the_usual_pace() {
        // 180 a second, a burst of 200 (the default's nine tenths and half).
        let config = crate::Config::default();
        let mut outbox = Outbox::new(&config);
        let (peer, other) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        assert!(now(outbox.send_or_wait(0, peer, get("/a/b"), t0)));
        // Refused twice at once: one hold, not two.
        outbox.refused_by(peer, t0);
        outbox.refused_by(peer, t0);
        assert!(matches!(outbox.send_or_wait(1, peer, get("/a/b"), t0), Outgoing::Waiting));
        assert!(now(outbox.send_or_wait(1, other, get("/a/b"), t0)), "others are not held");
        let wake = outbox.next_wake(t0).expect("a request waits");
        assert!(wake >= t0 + HOLD_ON_REFUSAL, "{:?}", wake - t0);
        assert!(wake < t0 + HOLD_ON_REFUSAL + Duration::from_millis(10), "{:?}", wake - t0);
        assert!(outbox.due(t0 + HOLD_ON_REFUSAL / 2, |_| true).is_empty());
        assert_eq!(outbox.due(wake, |_| true).len(), 1);
        // Then the usual pace: one a 180th of a second.
        assert!(matches!(outbox.send_or_wait(2, peer, get("/a/b"), wake), Outgoing::Waiting));
        assert_eq!(outbox.due(wake + Duration::from_millis(6), |_| true).len(), 1);
    }

    #[test]
    fn a_queue_holds_what_goes_within_the_timeout_and_refuses_more() {
        // Nine a second for ten seconds: 90 wait, the next is refused.
        let config = crate::Config::default().with_peer_rate(10, 2);
        let mut outbox = Outbox::new(&config);
        let peer = PeerId::random();
        let t0 = Instant::now();
        assert!(now(outbox.send_or_wait(0, peer, get("/a/b"), t0)));
        for op in 1..=90 {
            assert!(matches!(outbox.send_or_wait(op, peer, get("/a/b"), t0), Outgoing::Waiting));
        }
        assert!(matches!(outbox.send_or_wait(91, peer, get("/a/b"), t0), Outgoing::Refused));
        // Bytes too: at 900 bytes a second, ten seconds' worth (or one frame) at most.
        let config = crate::Config::default().with_peer_bytes(1_000, 16_000);
        let mut outbox = Outbox::new(&config);
        let big = get(&"x".repeat(9_000));
        assert!(now(outbox.send_or_wait(0, peer, get("/a/b"), t0)));
        let mut waiting = 0;
        while matches!(outbox.send_or_wait(1, peer, big.clone(), t0), Outgoing::Waiting) {
            waiting += 1;
        }
        assert_eq!(waiting, crate::codec::MAX_FRAME_LEN / 9_000, "a frame's worth waits");
    }

    #[test]
    fn requests_over_the_budget_wait_their_turn_in_order() {
        let config = crate::Config::default().with_peer_rate(10, 4);
        let mut outbox = Outbox::new(&config);
        let (peer, other) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        // Half the burst goes at once; the rest waits.
        let sent = (0..4).filter(|i| now(outbox.send_or_wait(*i, peer, get("/a/b"), t0)));
        assert_eq!(sent.count(), 2);
        assert_eq!(outbox.stats.waited, 2);
        // Another peer has a budget of its own.
        assert!(now(outbox.send_or_wait(9, other, get("/a/b"), t0)));
        // Nine a second: the next turn is a ninth of a second away.
        assert!(outbox.due(t0, |_| true).is_empty());
        let wake = outbox.next_wake(t0).expect("requests wait");
        let ninth = Duration::from_secs(1) / 9;
        assert!(wake - t0 > ninth && wake - t0 < ninth + Duration::from_millis(1));
        let due = outbox.due(wake, |_| true);
        assert_eq!(due.iter().map(|(p, w)| (*p, w.op)).collect::<Vec<_>>(), [(peer, 2)]);
        // While requests wait, nothing jumps the queue, even with a budget there again.
        let later = wake + Duration::from_millis(120);
        assert!(!outbox.can_send(peer, 10, later));
        assert!(!now(outbox.send_or_wait(4, peer, get("/a/b"), later)));
        let due = outbox.due(later, |_| true);
        assert_eq!(due.iter().map(|(_, w)| w.op).collect::<Vec<_>>(), [3]);
        let done = later + Duration::from_secs(1);
        assert_eq!(outbox.due(done, |_| true).iter().map(|(_, w)| w.op).collect::<Vec<_>>(), [4]);
        assert_eq!(outbox.next_wake(done), None, "nothing waits: no wake-up");
        assert!(outbox.can_send(peer, 10, done));
    }

    #[test]
    fn the_requests_of_an_ended_operation_are_not_sent() {
        // One request at once, then nine a second.
        let mut outbox = Outbox::new(&crate::Config::default().with_peer_rate(10, 2));
        let (p, q) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        for (op, to) in [(1, p), (2, p), (3, p), (2, q), (2, q)] {
            outbox.send_or_wait(op, to, get("/a/b"), t0);
        }
        // An operation that ends takes its waiting requests out, naming their peers.
        let mut held = outbox.take_waiting(2);
        held.sort();
        let mut expected = vec![p, q];
        expected.sort();
        assert_eq!(held, expected);
        assert!(outbox.take_waiting(2).is_empty());
        // One that ended without doing so loses them when they come up.
        let later = t0 + Duration::from_secs(1);
        assert!(outbox.due(later, |op| op != 3).is_empty());
        assert_eq!(outbox.next_wake(later), None, "nothing waits");
    }

    #[test]
    fn an_operation_drops_its_requests_to_the_peers_it_no_longer_needs() {
        // One request at once, then nine a second.
        let mut outbox = Outbox::new(&crate::Config::default().with_peer_rate(10, 2));
        let (p, q) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        for (op, to) in [(1, p), (1, q), (1, p), (2, p), (1, q)] {
            outbox.send_or_wait(op, to, get("/a/b"), t0);
        }
        // Operation 1 no longer needs p: its request waiting for p goes, operation 2's stays,
        // and nothing is counted as held back.
        assert_eq!(outbox.drop_waiting(1, &[p]), 1);
        assert_eq!(outbox.drop_waiting(1, &[p]), 0);
        assert_eq!(outbox.stats.held_back, 0);
        let far = t0 + Duration::from_secs(3600);
        assert!(!outbox.held_past(1, &p, t0), "nothing of operation 1 waits for p");
        assert!(outbox.held_past(1, &q, t0), "its request for q still waits");
        let later = t0 + Duration::from_secs(1);
        let due: Vec<(PeerId, OpId)> =
            outbox.due(later, |_| true).into_iter().map(|(peer, w)| (peer, w.op)).collect();
        assert!(due.contains(&(p, 2)) && due.contains(&(q, 1)), "{due:?}");
        assert!(!due.contains(&(p, 1)), "{due:?}");
        assert!(outbox.due(far, |_| true).is_empty(), "nothing else waits");
    }

    #[test]
    fn an_extensions_turns_wait_in_line_with_the_record_requests() {
        // One at once, then nine a second; 90 wait at most (ten seconds' worth).
        let mut outbox = Outbox::new(&crate::Config::default().with_peer_rate(10, 2));
        let peer = PeerId::random();
        let t0 = Instant::now();
        let turn = |outbox: &mut Outbox, at| {
            let (tx, rx) = oneshot::channel();
            outbox.turn(peer, 100, tx, at);
            rx
        };
        let mut first = turn(&mut outbox, t0);
        assert_eq!(first.try_recv(), Ok(true), "within the budget: at once");
        assert!(matches!(outbox.send_or_wait(1, peer, get("/a/b"), t0), Outgoing::Waiting));
        let mut second = turn(&mut outbox, t0);
        drop(turn(&mut outbox, t0)); // given up
        let mut third = turn(&mut outbox, t0);
        assert!(second.try_recv().is_err(), "it waits behind the request");
        let ninth = Duration::from_secs(1) / 9 + Duration::from_millis(1);
        let due = outbox.due(t0 + ninth, |_| true);
        assert_eq!(due.iter().map(|(_, w)| w.op).collect::<Vec<_>>(), [1]);
        assert!(second.try_recv().is_err(), "its turn is the next one");
        assert!(outbox.due(t0 + 2 * ninth, |_| true).is_empty(), "a turn is no request");
        assert_eq!(second.try_recv(), Ok(true));
        // The turn given up costs nothing: the third's comes next.
        assert!(third.try_recv().is_err());
        outbox.due(t0 + 3 * ninth, |_| true);
        assert_eq!(third.try_recv(), Ok(true));
        assert_eq!(outbox.next_wake(t0 + 3 * ninth), None, "nothing waits");
        // A full queue refuses a turn at once.
        let t1 = t0 + 3 * ninth;
        for op in 10..110 {
            outbox.send_or_wait(op, peer, get("/a/b"), t1);
        }
        let mut refused = turn(&mut outbox, t1);
        assert_eq!(refused.try_recv(), Ok(false));
    }

    #[test]
    fn a_turn_given_up_holds_up_nothing_and_takes_no_room() {
        // 900 bytes a second; a new peer gets 1000 at once.
        let mut outbox = Outbox::new(&crate::Config::default().with_peer_bytes(1_000, 16_000));
        let peer = PeerId::random();
        let t0 = Instant::now();
        let turn = |outbox: &mut Outbox, len, at| {
            let (tx, rx) = oneshot::channel();
            outbox.turn(peer, len, tx, at);
            rx
        };
        assert_eq!(turn(&mut outbox, 1_000, t0).try_recv(), Ok(true));
        // Eight seconds' worth waits, then is given up: the small turn behind it is next,
        // a tenth of a second on, not eight seconds.
        let big = turn(&mut outbox, 7_200, t0);
        let mut small = turn(&mut outbox, 90, t0);
        drop(big);
        let wake = outbox.next_wake(t0).expect("the small turn waits");
        assert!(wake - t0 <= Duration::from_millis(101), "{:?}", wake - t0);
        outbox.due(wake, |_| true);
        assert_eq!(small.try_recv(), Ok(true));
        // A queue full of turns given up takes a new one.
        let mut outbox = Outbox::new(&crate::Config::default().with_peer_rate(10, 2));
        assert_eq!(turn(&mut outbox, 10, t0).try_recv(), Ok(true));
        let given_up: Vec<_> = (0..90).map(|_| turn(&mut outbox, 10, t0)).collect();
        assert_eq!(turn(&mut outbox, 10, t0).try_recv(), Ok(false), "full");
        drop(given_up);
        let mut waits = turn(&mut outbox, 10, t0);
        assert!(waits.try_recv().is_err(), "queued, not refused");
        assert_eq!(outbox.stats.held_back, 1);
    }

    #[test]
    fn bytes_are_paced_too_and_a_new_peer_starts_with_a_sixteenth_of_the_burst() {
        let config = crate::Config::default().with_peer_bytes(1_000, 16_000);
        let mut outbox = Outbox::new(&config);
        let peer = PeerId::random();
        let t0 = Instant::now();
        assert!(outbox.can_send(peer, 1_000, t0));
        assert!(!outbox.can_send(peer, 1_001, t0), "a new peer gets 1000 bytes at once");
        let big = get(&"x".repeat(600));
        let len = prost::Message::encoded_len(&big);
        assert!(now(outbox.send_or_wait(1, peer, big.clone(), t0)));
        assert!(!now(outbox.send_or_wait(2, peer, big, t0)));
        // 900 bytes a second: the second waits for the bytes the first left it short of.
        let short = len - (1_000 - len);
        let wake = outbox.next_wake(t0).expect("waits");
        let expected = Duration::from_secs_f64(short as f64 / 900.0);
        assert!(wake - t0 > expected && wake - t0 < expected + Duration::from_millis(1));
        assert!(outbox.due(wake - Duration::from_millis(1), |_| true).is_empty());
        assert_eq!(outbox.due(wake, |_| true).len(), 1);
    }
}
