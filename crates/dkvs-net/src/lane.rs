//! The record protocol's transport: one long-lived stream (a lane) per peer and direction, on
//! which requests and their answers travel as numbered frames.
//!
//! libp2p's request-response opens a stream for every request: a yamux stream opened and
//! closed (window and close frames both ways), a protocol negotiation, two timers and the
//! connection's protocol lists gathered again on every wake. Records are small and a get asks
//! a dozen replicas at once, so that work was most of a request's CPU (docs/benchmarks.md:
//! about a quarter of a millisecond per request, across both ends, at N = 100). Here a node
//! opens one stream to a peer and keeps it for the connection's life; the peer answers on the
//! same stream. The stream is opened as soon as the peer says (by identify) that it speaks the
//! record protocol as a DHT server ([`Behaviour::opening_early_to`]), or else the first time
//! the node asks it something: opening it then cost a get a stream's setup at both ends for
//! each replica not asked before, a get that opened them answering in 2.1 ms at N = 100 where
//! one on open lanes took 1.3 ms (docs/benchmarks.md, "A node's first
//! operation, and lanes opened early").
//!
//! # Wire (`/dkvs/record/2.0.0`)
//! A frame is an unsigned varint id, an unsigned varint length and that many bytes: a protobuf
//! `Request` on the asker's writes, a `Response` on the answerer's. The asker numbers its
//! requests; an id may come again once it was answered. Answers come in any order. A frame
//! over [`MAX_FRAME_LEN`] is refused from its header, and a request that repeats an id not
//! answered yet, or an answer to an id larger than any asked on that stream, is a protocol
//! violation: each ends the stream (the asker opens another for its next request). A late or
//! repeated answer is dropped.
//!
//! # Bounds and time
//! - A node holds at most [`MAX_PENDING`] requests of a lane (read, and not answered or whose
//!   answers are not written yet), then stops reading it (the peer's writes then wait on
//!   yamux's window). It keeps at most [`MAX_LANES`] lanes from one connection and refuses
//!   more.
//! - A request the node has not answered within the timeout is let go (its answer, if it
//!   comes, is dropped; the asker has given up by then), freeing its place. A lane whose peer
//!   has not taken [`PROGRESS`] bytes of its answers for a timeout (it does not read, or
//!   reads a trickle) is dropped with what it held.
//! - Every request this node sends has a deadline (the timeout) from when it is handed to a
//!   connection (a request waiting for a dial waits for the dial's outcome, as in libp2p's
//!   request-response). One not answered by then fails with [`Failure::Timeout`], and an answer
//!   that comes later is dropped. When a request times out and no answer came on the lane
//!   since it was handed over, the lane is taken for dead: the requests written on it fail,
//!   and those not written yet go on a new one.
//! - Lanes do not keep a connection open: requests waiting for answers do, each direction,
//!   and for [`USE_LINGER`] after the last was answered; and so does the node's wish to stay
//!   connected to a peer ([`Behaviour::keep`]).
//! - The handler's timers are tokio's: it runs on a swarm with tokio's executor.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
    ProtocolsChange,
};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId,
    DialFailure, FromSwarm, NetworkBehaviour, NotifyHandler, Stream, SubstreamProtocol, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{PeerId, StreamProtocol};
use prost::Message as _;
use tokio::time::{Instant, Sleep};

use crate::codec::{MAX_FRAME_LEN, PROTOCOL, pb};

/// Requests a node reads from one lane ahead of its answers.
pub const MAX_PENDING: usize = 64;
/// Lanes a node keeps from one connection (a peer opens a new one when its old one failed,
/// which this node may not have seen close yet); more are refused.
pub const MAX_LANES: usize = 2;
/// A connection that carried requests is kept this long after the last was answered, then
/// left to libp2p's idle timeout. Without it, every request going and being answered turned
/// the connection's keep-alive on and off, and each turn off set a new idle timer (libp2p's
/// `futures_timer::Delay`, registered with its timer thread): 17% more CPU per get at
/// N = 100 (docs/benchmarks.md).
const USE_LINGER: Duration = Duration::from_secs(5);
/// Requests waiting for a lane to open, or for room in its write buffer, on one connection,
/// unless [`Behaviour::with_max_queued`] says otherwise: more fail at once (the node's pacing
/// keeps far fewer in flight to one peer).
pub const MAX_QUEUED: usize = 1024;
/// A varint of a u64 is at most this long.
const MAX_VARINT_LEN: usize = 10;
/// Answers or requests buffered on a lane before the node waits for the stream to take them.
const HIGH_WATER: usize = 128 * 1024;
/// A lane's buffers start empty and grow to the frames it carries; once idle, one over this is
/// given back (a replication round's 64 KiB frames would otherwise stay allocated per peer).
const SLIM: usize = 16 * 1024;
/// Bytes of its answers a peer must take per timeout to keep its lane.
pub const PROGRESS: usize = 16 * 1024;

/// A request this node sent, as its answer or failure names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

impl RequestId {
    /// A request id made up, for tests of what keeps them.
    #[cfg(test)]
    pub(crate) fn new_unchecked(id: u64) -> RequestId {
        RequestId(id)
    }
}

/// Where the answer to a peer's request goes: give it to [`Behaviour::send_response`].
#[derive(Debug)]
pub struct ResponseChannel {
    peer: PeerId,
    connection: ConnectionId,
    lane: u64,
    id: u64,
}

impl ResponseChannel {
    /// The peer that asked.
    pub fn peer(&self) -> PeerId {
        self.peer
    }
}

/// Why a request got no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// No connection to the peer could be made.
    #[error("the peer could not be dialed: {0}")]
    DialFailure(String),
    /// No answer within the request timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Written on a lane taken for dead: a request on it timed out, and no answer came on it
    /// since that request was handed over.
    #[error("no answer came on its stream for {0:?}")]
    Unanswered(Duration),
    /// The connection closed before the answer came.
    #[error("the connection closed")]
    ConnectionClosed,
    /// The lane failed: it could not be opened (the peer does not speak the protocol), the
    /// peer closed or reset it, it sent bytes that are not the protocol, or nothing came on
    /// it for a timeout.
    #[error("the stream failed: {0}")]
    Stream(String),
    /// The answer was not a protobuf `Response`.
    #[error("a malformed answer: {0}")]
    Malformed(String),
    /// The request is larger than a frame may be.
    #[error("the request is {0} bytes, over the protocol's {MAX_FRAME_LEN}")]
    TooLarge(usize),
    /// Too many requests wait for the peer's lane (or for a connection to it).
    #[error("too many requests wait for the peer's stream")]
    Overloaded,
}

/// What the behaviour reports.
#[derive(Debug)]
pub enum Event {
    /// A peer asks; answer through `channel`.
    Request {
        /// Who asks.
        peer: PeerId,
        /// The request.
        request: pb::Request,
        /// Where the answer goes.
        channel: ResponseChannel,
    },
    /// A peer answered a request of this node.
    Response {
        /// Who answered.
        peer: PeerId,
        /// The request answered.
        request_id: RequestId,
        /// The answer.
        response: pb::Response,
    },
    /// A request of this node got no answer.
    Failure {
        /// The peer asked.
        peer: PeerId,
        /// The request.
        request_id: RequestId,
        /// Why.
        error: Failure,
    },
}

/// Reads an unsigned varint from the start of `src`: the value and its length, `None` when
/// more bytes are needed.
fn varint(src: &[u8]) -> std::io::Result<Option<(u64, usize)>> {
    let mut value: u64 = 0;
    for (i, byte) in src.iter().enumerate().take(MAX_VARINT_LEN) {
        let bits = u64::from(byte & 0x7f);
        if i == MAX_VARINT_LEN - 1 && bits > 1 {
            break;
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if src.len() < MAX_VARINT_LEN {
        return Ok(None);
    }
    Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a varint is over 64 bits"))
}

fn put_varint(mut value: u64, dst: &mut Vec<u8>) {
    while value >= 0x80 {
        dst.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    dst.push(value as u8);
}

/// The frame at the start of `src`: its id and where its bytes are (the next frame starts at
/// the range's end); `None` while it is not all there. A frame over [`MAX_FRAME_LEN`] is
/// refused from its header, before its bytes are waited for.
pub fn decode_frame(src: &[u8]) -> std::io::Result<Option<(u64, Range<usize>)>> {
    let Some((id, id_len)) = varint(src)? else { return Ok(None) };
    let Some((len, len_len)) = varint(&src[id_len..])? else { return Ok(None) };
    if len > MAX_FRAME_LEN as u64 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is over {MAX_FRAME_LEN}"),
        ));
    }
    let start = id_len + len_len;
    let end = start + len as usize;
    Ok((src.len() >= end).then_some((id, start..end)))
}

/// Appends the frame of `bytes` numbered `id` to `dst`.
pub fn encode_frame(id: u64, bytes: &[u8], dst: &mut Vec<u8>) -> std::io::Result<()> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("a frame of {} bytes is over {MAX_FRAME_LEN}", bytes.len()),
        ));
    }
    dst.reserve(2 * MAX_VARINT_LEN + bytes.len());
    put_varint(id, dst);
    put_varint(bytes.len() as u64, dst);
    dst.extend_from_slice(bytes);
    Ok(())
}

/// The record protocol over lanes: [`Behaviour::send_request`], [`Behaviour::send_response`]
/// and the [`Event`]s. Dials a peer it is asked to reach and is not connected to.
pub struct Behaviour {
    timeout: Duration,
    max_queued: usize,
    next_id: u64,
    /// Established connections per peer, oldest first.
    connected: HashMap<PeerId, Vec<ConnectionId>>,
    /// Requests sent on a connection and not answered yet.
    outstanding: HashMap<u64, (PeerId, ConnectionId)>,
    /// Requests waiting for a connection to their peer.
    dialing: HashMap<PeerId, Vec<(u64, Vec<u8>)>>,
    /// Peers whose connections are kept open while nothing uses them ([`Behaviour::keep`]).
    kept: HashSet<PeerId>,
    /// Lanes are opened early to peers that speak this protocol too
    /// ([`Behaviour::opening_early_to`]).
    early: Option<StreamProtocol>,
    events: VecDeque<ToSwarm<Event, HandlerIn>>,
}

impl Behaviour {
    /// A behaviour whose requests fail when not answered within `timeout` (at most a day).
    pub fn new(timeout: Duration) -> Behaviour {
        Behaviour {
            timeout: timeout.min(Duration::from_secs(24 * 3600)),
            max_queued: MAX_QUEUED,
            next_id: 0,
            connected: HashMap::new(),
            outstanding: HashMap::new(),
            dialing: HashMap::new(),
            kept: HashSet::new(),
            early: None,
            events: VecDeque::new(),
        }
    }

    /// Opens this node's lane on a connection as soon as the peer says it speaks the record
    /// protocol and `protocol` (the DHT's, which a node speaks while it serves records), once
    /// a connection, instead of when the first request to it needs the lane. The peers an
    /// operation asks are such servers, and a get asks a dozen at once: each lane not yet
    /// open cost it a stream's setup at both ends before its request could go. A lane that
    /// fails later is opened again by the next request. An open lane does not keep the
    /// connection open.
    pub fn opening_early_to(mut self, protocol: StreamProtocol) -> Behaviour {
        self.early = Some(protocol);
        self
    }

    /// The protocol that opens lanes early ([`Behaviour::opening_early_to`]), if any.
    pub fn opens_early_to(&self) -> Option<&StreamProtocol> {
        self.early.as_ref()
    }

    /// Keeps the connections to `peer` open while nothing uses them (`keep`), or lets them
    /// close when idle (libp2p closes a connection no handler keeps after its idle timeout).
    /// It dials nobody: a connection that closes for another reason is not opened again here.
    pub fn keep(&mut self, peer: PeerId, keep: bool) {
        let changed = if keep { self.kept.insert(peer) } else { self.kept.remove(&peer) };
        if !changed {
            return;
        }
        for connection in self.connected.get(&peer).into_iter().flatten() {
            self.events.push_back(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::One(*connection),
                event: HandlerIn::Keep(keep),
            });
        }
    }

    /// The peers [`Behaviour::keep`] keeps.
    pub fn kept(&self) -> &HashSet<PeerId> {
        &self.kept
    }

    /// Lets `max` requests wait for a connection's lane instead of [`MAX_QUEUED`] (a tool that
    /// sends many at once).
    pub fn with_max_queued(mut self, max: usize) -> Behaviour {
        self.max_queued = max;
        self
    }

    /// Sends `request` to `peer` (dialing it if not connected); its answer or failure comes as
    /// an [`Event`] naming the returned id.
    pub fn send_request(&mut self, peer: &PeerId, request: pb::Request) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        let bytes = request.encode_to_vec();
        if bytes.len() > MAX_FRAME_LEN {
            self.fail(*peer, id, Failure::TooLarge(bytes.len()));
        } else if let Some(&connection) = self.connected.get(peer).and_then(|c| c.last()) {
            self.send_on(*peer, connection, id, bytes);
        } else if self.dialing.get(peer).is_some_and(|waiting| waiting.len() >= self.max_queued) {
            self.fail(*peer, id, Failure::Overloaded);
        } else {
            let waiting = self.dialing.entry(*peer).or_default();
            if waiting.is_empty() {
                self.events.push_back(ToSwarm::Dial { opts: DialOpts::peer_id(*peer).build() });
            }
            waiting.push((id, bytes));
        }
        RequestId(id)
    }

    /// Sends the answer to a peer's request. `Err` gives it back when the connection it came
    /// on is gone, or when it is larger than a frame may be (then the lane drops the request
    /// when it is a timeout old, see the module's doc). `Ok` hands it to the connection, which
    /// drops it if the lane it came on is gone by then (the asker's request fails there).
    pub fn send_response(
        &mut self,
        channel: ResponseChannel,
        response: pb::Response,
    ) -> Result<(), pb::Response> {
        let open = self
            .connected
            .get(&channel.peer)
            .is_some_and(|connections| connections.contains(&channel.connection));
        let bytes = response.encode_to_vec();
        if !open || bytes.len() > MAX_FRAME_LEN {
            return Err(response);
        }
        self.events.push_back(ToSwarm::NotifyHandler {
            peer_id: channel.peer,
            handler: NotifyHandler::One(channel.connection),
            event: HandlerIn::Answer { lane: channel.lane, id: channel.id, bytes },
        });
        Ok(())
    }

    fn send_on(&mut self, peer: PeerId, connection: ConnectionId, id: u64, bytes: Vec<u8>) {
        self.outstanding.insert(id, (peer, connection));
        self.events.push_back(ToSwarm::NotifyHandler {
            peer_id: peer,
            handler: NotifyHandler::One(connection),
            event: HandlerIn::Send { id, bytes },
        });
    }

    fn fail(&mut self, peer: PeerId, id: u64, error: Failure) {
        self.events.push_back(ToSwarm::GenerateEvent(Event::Failure {
            peer,
            request_id: RequestId(id),
            error,
        }));
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(self.timeout, self.max_queued, self.kept.contains(&peer), &self.early))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(self.timeout, self.max_queued, self.kept.contains(&peer), &self.early))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.connected.entry(e.peer_id).or_default().push(e.connection_id);
                for (id, bytes) in self.dialing.remove(&e.peer_id).unwrap_or_default() {
                    self.send_on(e.peer_id, e.connection_id, id, bytes);
                }
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { peer_id, connection_id, .. }) => {
                if let Some(connections) = self.connected.get_mut(&peer_id) {
                    connections.retain(|c| *c != connection_id);
                    if connections.is_empty() {
                        self.connected.remove(&peer_id);
                    }
                }
                let mut lost: Vec<u64> = self
                    .outstanding
                    .iter()
                    .filter(|(_, (_, c))| *c == connection_id)
                    .map(|(id, _)| *id)
                    .collect();
                lost.sort_unstable();
                for id in lost {
                    self.outstanding.remove(&id);
                    self.fail(peer_id, id, Failure::ConnectionClosed);
                }
            }
            FromSwarm::DialFailure(DialFailure { peer_id: Some(peer), error, .. }) => {
                // A dial refused because another is under way says nothing of that one.
                if matches!(error, libp2p::swarm::DialError::DialPeerConditionFalse(_)) {
                    return;
                }
                if self.connected.contains_key(&peer) {
                    return;
                }
                for (id, _) in self.dialing.remove(&peer).unwrap_or_default() {
                    self.fail(peer, id, Failure::DialFailure(error.to_string()));
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        let event = match event {
            HandlerOut::Request { lane, id, request } => Event::Request {
                peer,
                request,
                channel: ResponseChannel { peer, connection, lane, id },
            },
            HandlerOut::Response { id, response } => {
                if self.outstanding.remove(&id).is_none() {
                    return;
                }
                Event::Response { peer, request_id: RequestId(id), response }
            }
            HandlerOut::Failure { id, error } => {
                if self.outstanding.remove(&id).is_none() {
                    return;
                }
                Event::Failure { peer, request_id: RequestId(id), error }
            }
        };
        self.events.push_back(ToSwarm::GenerateEvent(event));
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        match self.events.pop_front() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }
}

/// What the behaviour asks of a connection.
#[derive(Debug)]
pub enum HandlerIn {
    /// Send a request (encoded) on this node's lane to the peer.
    Send {
        /// Its id.
        id: u64,
        /// The encoded request.
        bytes: Vec<u8>,
    },
    /// Answer the request `id` that came on lane `lane`.
    Answer {
        /// The lane it came on.
        lane: u64,
        /// Its id.
        id: u64,
        /// The encoded answer.
        bytes: Vec<u8>,
    },
    /// Keep the connection open while nothing uses it (true), or let it close when idle.
    Keep(bool),
}

/// What a connection reports.
#[derive(Debug)]
pub enum HandlerOut {
    /// The peer asks.
    Request {
        /// The lane it came on.
        lane: u64,
        /// Its id on that lane.
        id: u64,
        /// The request.
        request: pb::Request,
    },
    /// The answer to a request of this node.
    Response {
        /// The request's id.
        id: u64,
        /// The answer.
        response: pb::Response,
    },
    /// A request of this node failed.
    Failure {
        /// The request's id.
        id: u64,
        /// Why.
        error: Failure,
    },
}

/// What [`Io::poll_frame`] gives: a frame's id and bytes, or `None` when the peer closed the
/// stream between frames.
type Polled<'a> = Poll<std::io::Result<Option<(u64, &'a [u8])>>>;

/// A lane's stream with its buffers. They start empty and grow to the frames the lane
/// carries; once drained, one grown past [`SLIM`] is given back.
struct Io {
    stream: Stream,
    /// Bytes read; those before `start` are consumed.
    read: Vec<u8>,
    start: usize,
    /// Bytes to write; those before `sent` are written.
    write: Vec<u8>,
    sent: usize,
}

impl Io {
    fn new(mut stream: Stream) -> Io {
        stream.ignore_for_keep_alive();
        Io { stream, read: Vec::new(), start: 0, write: Vec::new(), sent: 0 }
    }

    /// The next frame's id and bytes; `None` when the peer closed the stream between frames.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Polled<'_> {
        loop {
            if let Some((id, body)) = decode_frame(&self.read[self.start..])? {
                let at = self.start;
                self.start += body.end;
                return Poll::Ready(Ok(Some((id, &self.read[at + body.start..at + body.end]))));
            }
            self.read.drain(..self.start);
            self.start = 0;
            let mut chunk = [0u8; 8192];
            let n = match Pin::new(&mut self.stream).poll_read(cx, &mut chunk) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            if n == 0 {
                return Poll::Ready(if self.read.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::ErrorKind::UnexpectedEof.into())
                });
            }
            self.read.extend_from_slice(&chunk[..n]);
        }
    }

    /// Encodes the frames of `queue` while fewer than [`HIGH_WATER`] bytes wait, and writes,
    /// until the queue is empty or the stream is full (then it wakes the task when it takes
    /// more); `written` is told each id encoded.
    fn send_from(
        &mut self,
        cx: &mut Context<'_>,
        queue: &mut VecDeque<(u64, Vec<u8>)>,
        mut written: impl FnMut(u64),
    ) -> std::io::Result<Sent> {
        let mut total = Sent { bytes: 0, all: false };
        loop {
            while self.write.len() - self.sent < HIGH_WATER
                && let Some((id, bytes)) = queue.pop_front()
            {
                encode_frame(id, &bytes, &mut self.write)?;
                written(id);
            }
            let sent = self.poll_send(cx)?;
            total = Sent { bytes: total.bytes + sent.bytes, all: sent.all };
            if !sent.all || queue.is_empty() {
                return Ok(total);
            }
        }
    }

    /// Writes what is buffered, as far as the stream takes it, and flushes. Says how many
    /// bytes went, and whether all did (if not, the stream will wake the task when it
    /// takes more).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> std::io::Result<Sent> {
        let mut sent = Sent { bytes: 0, all: false };
        while self.sent < self.write.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.write[self.sent..]) {
                Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.sent += n;
                    sent.bytes += n;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(sent),
            }
        }
        self.write.clear();
        self.sent = 0;
        sent.all = true;
        match Pin::new(&mut self.stream).poll_flush(cx) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(sent),
        }
    }

    /// Gives back drained buffers grown past [`SLIM`].
    fn slim(&mut self) {
        if self.start == self.read.len() {
            self.read.clear();
            self.start = 0;
            if self.read.capacity() > SLIM {
                self.read = Vec::new();
            }
        }
        if self.write.is_empty() && self.write.capacity() > SLIM {
            self.write = Vec::new();
        }
    }
}

/// What [`Io::poll_send`] did.
struct Sent {
    /// Bytes that went.
    bytes: usize,
    /// Nothing is left to write.
    all: bool,
}

/// This node's lane to the peer.
enum Out {
    /// None open (none needed yet, or the last one failed).
    Closed,
    /// Asked for; requests queue meanwhile.
    Opening,
    Open {
        io: Box<Io>,
        /// When the last answer to a request in flight came on it.
        heard: Option<Instant>,
        /// The largest id written on it: an answer to a larger one was never asked.
        last_id: Option<u64>,
    },
}

/// A lane the peer opened to this node.
struct Lane {
    serial: u64,
    io: Io,
    /// Requests read and not answered yet, with when they came.
    pending: HashMap<u64, Instant>,
    /// The same in the order they came; an entry whose request was answered is dropped when
    /// it is first.
    arrivals: VecDeque<(Instant, u64)>,
    /// Answers to write.
    answers: VecDeque<(u64, Vec<u8>)>,
    /// Since when answers wait for the peer to take them, and how many bytes it took since.
    stalled: Option<(Instant, usize)>,
}

impl Lane {
    /// When the oldest request not answered yet came (dropping the entries of those answered).
    fn oldest_pending(&mut self) -> Option<Instant> {
        while let Some(&(at, id)) = self.arrivals.front() {
            if self.pending.get(&id) == Some(&at) {
                return Some(at);
            }
            self.arrivals.pop_front();
        }
        None
    }

    /// Lets go of the requests not answered within `timeout`; true while the lane is to be
    /// kept (its peer takes its answers).
    fn expire(&mut self, now: Instant, timeout: Duration) -> bool {
        while let Some(at) = self.oldest_pending()
            && at + timeout <= now
        {
            let (_, id) = self.arrivals.pop_front().expect("the oldest");
            self.pending.remove(&id);
        }
        self.stalled.is_none_or(|(since, _)| now < since + timeout)
    }

    /// When [`Lane::expire`] has something to do next.
    fn next_wake(&mut self, timeout: Duration) -> Option<Instant> {
        let oldest = self.oldest_pending().map(|at| at + timeout);
        let stalled = self.stalled.map(|(since, _)| since + timeout);
        oldest.into_iter().chain(stalled).min()
    }
}

/// One connection's lanes.
pub struct Handler {
    timeout: Duration,
    max_queued: usize,
    out: Out,
    /// Every request not answered yet, queued or written, with its deadline. Ids come in
    /// increasing order, each with the same timeout, and are written in turn: the first
    /// entry has the first deadline, and a queued request's id is larger than any written.
    outstanding: BTreeMap<u64, Instant>,
    /// The requests not written yet: waiting for the lane to open or for room in it.
    queued: VecDeque<(u64, Vec<u8>)>,
    /// Wakes the handler at the next deadline or lane expiry.
    timer: Option<Pin<Box<Sleep>>>,
    lanes: Vec<Lane>,
    next_lane: u64,
    events: VecDeque<HandlerOut>,
    /// The node keeps this connection open ([`Behaviour::keep`]).
    kept: bool,
    /// Until when a connection that carried requests lately is kept ([`USE_LINGER`]).
    used_until: Option<Instant>,
    /// The protocol that, spoken with the record protocol, opens the lane early
    /// ([`Behaviour::opening_early_to`]).
    early: Option<StreamProtocol>,
    /// Whether the peer speaks the record protocol, and the early one.
    speaks: (bool, bool),
    /// A lane was asked for on this connection.
    opened: bool,
}

impl Handler {
    fn new(
        timeout: Duration,
        max_queued: usize,
        kept: bool,
        early: &Option<StreamProtocol>,
    ) -> Handler {
        Handler {
            kept,
            used_until: None,
            early: early.clone(),
            speaks: (false, false),
            opened: false,
            timeout,
            max_queued,
            out: Out::Closed,
            outstanding: BTreeMap::new(),
            queued: VecDeque::new(),
            timer: None,
            lanes: Vec::new(),
            next_lane: 0,
            events: VecDeque::new(),
        }
    }

    /// Fails every request written or queued: the lane is gone.
    fn fail_all(&mut self, why: &str) {
        self.queued.clear();
        self.fail_written(|| Failure::Stream(why.into()));
    }

    /// Fails the requests written on the lane with `error` and closes it; those not written
    /// yet stay queued for the next lane (their deadlines stand).
    fn fail_written(&mut self, error: impl Fn() -> Failure) {
        self.out = Out::Closed;
        let waiting = match self.queued.front() {
            Some((first, _)) => self.outstanding.split_off(first),
            None => BTreeMap::new(),
        };
        for id in std::mem::replace(&mut self.outstanding, waiting).into_keys() {
            self.events.push_back(HandlerOut::Failure { id, error: error() });
        }
    }

    /// Writes queued requests and reads answers on this node's lane.
    fn poll_out(&mut self, cx: &mut Context<'_>) {
        let Out::Open { io, heard, last_id } = &mut self.out else { return };
        let mut failed = io
            .send_from(cx, &mut self.queued, |id| *last_id = Some(id))
            .err()
            .map(|e| e.to_string());
        while failed.is_none() {
            match io.poll_frame(cx) {
                Poll::Ready(Ok(Some((id, bytes)))) => {
                    if last_id.is_none_or(|last| id > last) {
                        failed = Some(format!("the peer answered request {id}, never asked"));
                    } else if self.outstanding.remove(&id).is_some() {
                        *heard = Some(Instant::now());
                        self.events.push_back(match pb::Response::decode(bytes) {
                            Ok(response) => HandlerOut::Response { id, response },
                            Err(e) => {
                                HandlerOut::Failure { id, error: Failure::Malformed(e.to_string()) }
                            }
                        });
                    }
                    // Otherwise answered after its deadline: dropped.
                }
                Poll::Ready(Ok(None)) => failed = Some("the peer closed it".into()),
                Poll::Ready(Err(e)) => failed = Some(e.to_string()),
                Poll::Pending => break,
            }
        }
        match failed {
            Some(why) => self.fail_all(&why),
            None if self.outstanding.is_empty() => io.slim(),
            None => {}
        }
    }

    /// Reads requests and writes answers on the lanes the peer opened.
    fn poll_lanes(&mut self, cx: &mut Context<'_>, now: Instant) {
        let mut i = 0;
        while i < self.lanes.len() {
            if poll_lane(&mut self.lanes[i], cx, now, &mut self.events).is_err() {
                self.lanes.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Fails the requests past their deadlines (and the lane, if it is dead), lets go of the
    /// peer's requests not answered in time, and drops the lanes whose peer does not read.
    fn expire(&mut self, now: Instant) {
        let mut dead = false;
        while let Some((&id, &deadline)) = self.outstanding.first_key_value()
            && deadline <= now
        {
            self.outstanding.remove(&id);
            if self.queued.front().is_some_and(|(first, _)| *first == id) {
                self.queued.pop_front();
            } else {
                // Written: the lane is dead when no answer came since this request was
                // handed over.
                let handed = deadline.checked_sub(self.timeout);
                dead |= matches!(&self.out, Out::Open { heard, .. }
                    if heard.is_none_or(|heard| handed.is_some_and(|handed| heard < handed)));
            }
            self.events
                .push_back(HandlerOut::Failure { id, error: Failure::Timeout(self.timeout) });
        }
        if dead {
            // What was not written yet goes on a new lane.
            let timeout = self.timeout;
            self.fail_written(|| Failure::Unanswered(timeout));
        }
        let timeout = self.timeout;
        self.lanes.retain_mut(|lane| {
            let keep = lane.expire(now, timeout);
            if !keep {
                tracing::debug!("record lane: the peer did not take its answers for {timeout:?}");
            }
            keep
        });
    }

    /// When the handler must wake next: the first deadline or lane expiry, or the end of
    /// the linger after use.
    fn next_wake(&mut self) -> Option<Instant> {
        let timeout = self.timeout;
        let lanes = self.lanes.iter_mut().filter_map(|lane| lane.next_wake(timeout));
        let first = self.outstanding.first_key_value().map(|(_, at)| *at);
        first.into_iter().chain(lanes).chain(self.used_until).min()
    }

    /// The peer says it speaks `protocols` (`added`) or no longer does: once it speaks the
    /// record protocol and the early one, the lane is opened if none was yet on this
    /// connection.
    fn remote_protocols<'a>(
        &mut self,
        added: bool,
        protocols: impl Iterator<Item = &'a StreamProtocol>,
    ) {
        let Some(early) = &self.early else { return };
        for protocol in protocols {
            if *protocol == PROTOCOL {
                self.speaks.0 = added;
            } else if protocol == early {
                self.speaks.1 = added;
            }
        }
    }

    /// Requests wait for their answers, either way.
    fn busy(&self) -> bool {
        !self.outstanding.is_empty() || self.lanes.iter().any(|lane| !lane.pending.is_empty())
    }
}

/// Serves one lane; `Err` when it must be dropped.
fn poll_lane(
    lane: &mut Lane,
    cx: &mut Context<'_>,
    now: Instant,
    events: &mut VecDeque<HandlerOut>,
) -> Result<(), ()> {
    let sent = (lane.io.send_from(cx, &mut lane.answers, |_| {}))
        .map_err(|e| tracing::debug!("record lane: {e}"))?;
    lane.stalled = match lane.stalled {
        _ if sent.all => None,
        Some((since, took)) if took + sent.bytes < PROGRESS => Some((since, took + sent.bytes)),
        _ => Some((now, 0)),
    };
    while lane.pending.len() + lane.answers.len() < MAX_PENDING {
        match lane.io.poll_frame(cx) {
            Poll::Ready(Ok(Some((id, bytes)))) => {
                if lane.pending.insert(id, now).is_some() {
                    tracing::debug!(id, "record lane: an id repeated before its answer");
                    return Err(());
                }
                lane.arrivals.push_back((now, id));
                match pb::Request::decode(bytes) {
                    Ok(request) => {
                        events.push_back(HandlerOut::Request { lane: lane.serial, id, request })
                    }
                    Err(e) => {
                        tracing::debug!("record lane: a malformed request: {e}");
                        return Err(());
                    }
                }
            }
            Poll::Ready(Ok(None)) => return Err(()),
            Poll::Ready(Err(e)) => {
                tracing::debug!("record lane: {e}");
                return Err(());
            }
            Poll::Pending => break,
        }
    }
    if lane.pending.is_empty() && lane.answers.is_empty() {
        lane.io.slim();
    }
    Ok(())
}

impl ConnectionHandler for Handler {
    type FromBehaviour = HandlerIn;
    type ToBehaviour = HandlerOut;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    fn connection_keep_alive(&self) -> bool {
        self.kept || self.busy() || self.used_until.is_some()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), HandlerOut>> {
        loop {
            let now = Instant::now();
            // Bytes that came first: an answer already here is not a timeout.
            self.poll_out(cx);
            self.poll_lanes(cx, now);
            self.expire(now);
            if self.busy() {
                self.used_until = Some(now + USE_LINGER);
            } else if self.used_until.is_some_and(|until| until <= now) {
                self.used_until = None;
            }
            let Some(at) = self.next_wake() else { break };
            let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            // Moved earlier only: a timer for a deadline since answered fires early, once,
            // and is set again (not moved on every answer).
            if at < timer.deadline() || timer.deadline() <= now {
                timer.as_mut().reset(at);
            }
            if timer.as_mut().poll(cx).is_pending() {
                break;
            }
        }
        // Requests wait, or the peer just said it serves records, and no lane is open or
        // opening (none yet, or the last one failed).
        let early = self.speaks == (true, true) && !self.opened;
        if matches!(self.out, Out::Closed) && (early || !self.queued.is_empty()) {
            self.out = Out::Opening;
            self.opened = true;
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
                    .with_timeout(self.timeout),
            });
        }
        match self.events.pop_front() {
            Some(event) => Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event)),
            None => Poll::Pending,
        }
    }

    fn on_behaviour_event(&mut self, event: HandlerIn) {
        match event {
            HandlerIn::Send { id, bytes } => {
                if self.queued.len() >= self.max_queued {
                    self.events.push_back(HandlerOut::Failure { id, error: Failure::Overloaded });
                } else {
                    self.outstanding.insert(id, Instant::now() + self.timeout);
                    self.queued.push_back((id, bytes));
                }
            }
            HandlerIn::Answer { lane, id, bytes } => {
                if let Some(lane) = self.lanes.iter_mut().find(|l| l.serial == lane)
                    && lane.pending.remove(&id).is_some()
                {
                    lane.answers.push_back((id, bytes));
                }
            }
            HandlerIn::Keep(keep) => self.kept = keep,
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), ()>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => {
                if self.lanes.len() >= MAX_LANES {
                    tracing::debug!("record lane: the peer opened more than {MAX_LANES}");
                    return;
                }
                self.lanes.push(Lane {
                    serial: self.next_lane,
                    io: Io::new(stream),
                    pending: HashMap::new(),
                    arrivals: VecDeque::new(),
                    answers: VecDeque::new(),
                    stalled: None,
                });
                self.next_lane += 1;
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                ..
            }) => {
                self.out = Out::Open { io: Box::new(Io::new(stream)), heard: None, last_id: None };
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                self.fail_all(&format!("it could not be opened: {error}"));
            }
            ConnectionEvent::RemoteProtocolsChange(ProtocolsChange::Added(added)) => {
                self.remote_protocols(true, added);
            }
            ConnectionEvent::RemoteProtocolsChange(ProtocolsChange::Removed(removed)) => {
                self.remote_protocols(false, removed);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(id: u64, bytes: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_frame(id, bytes, &mut buf).expect("encodes");
        buf
    }

    #[test]
    fn frames_round_trip_one_byte_at_a_time() {
        let mut wire = encoded(300, &[7u8; 300]);
        wire.extend_from_slice(&encoded(u64::MAX, b""));
        assert_eq!(&wire[..4], &[0xac, 0x02, 0xac, 0x02], "id 300, then length 300");
        let (mut src, mut start, mut frames) = (Vec::new(), 0, Vec::new());
        for byte in wire {
            src.push(byte);
            if let Some((id, body)) = decode_frame(&src[start..]).expect("well formed") {
                frames.push((id, src[start + body.start..start + body.end].to_vec()));
                start += body.end;
            }
        }
        assert_eq!(frames, vec![(300, vec![7u8; 300]), (u64::MAX, vec![])]);
        assert_eq!(start, src.len());
    }

    #[test]
    fn an_oversized_or_malformed_frame_is_refused_before_it_is_read() {
        // A length of 1 MiB: refused from its header alone.
        let err = decode_frame(&[0x01, 0x80, 0x80, 0x40]).expect_err("too large");
        assert!(err.to_string().contains("1048576 bytes is over 65536"), "{err}");
        // An id of endless continuation bytes is refused after ten.
        let err = decode_frame(&[0x80u8; 16]).expect_err("malformed");
        assert!(err.to_string().contains("over 64 bits"), "{err}");
        // Nine of them may still end: more is needed, nothing is refused.
        assert!(decode_frame(&[0x80u8; 9]).expect("not malformed yet").is_none());
        // A tenth byte over 1 would shift bits past 64.
        assert!(
            decode_frame(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]).is_err()
        );
        // The largest id still reads.
        let frame = encoded(u64::MAX, b"x");
        assert_eq!(decode_frame(&frame).expect("well formed"), Some((u64::MAX, 11..12)));
        // A frame this node would send over the limit is not encoded.
        let mut dst = Vec::new();
        assert!(encode_frame(1, &vec![0u8; MAX_FRAME_LEN + 1], &mut dst).is_err());
        assert!(dst.is_empty());
    }
}
