//! Streams that do not keep a connection open.
//!
//! libp2p closes a connection once no handler asks to keep it
//! ([`ConnectionHandler::connection_keep_alive`]) and no stream counts as use, after
//! [`crate::Config::idle_connection_timeout`]. libp2p-gossipsub 0.50 opens a stream to every
//! peer on its first connection (its extensions message) and keeps it for the connection's
//! life, and libp2p counts that stream as use: with it, no connection of a node ever went idle,
//! and a node kept every connection its lookups made until
//! [`crate::Config::max_connections`] trimmed it (docs/testnet-plan.md, 5l).
//!
//! [`Released`] wraps gossipsub so that its streams are not counted
//! ([`libp2p::swarm::Stream::ignore_for_keep_alive`], as libp2p-ping does with its own).
//! Gossipsub still keeps the connections that carry its meshes (its handler asks to keep a
//! connection to a mesh peer), so a channel's or a watch's mesh is not closed under it; a
//! connection that only carries its control messages closes when nothing else uses it, and
//! gossipsub learns the peer's topics again when they next connect. What else keeps a
//! connection: a request waiting for its answer, a relay reservation, and the peers this node
//! keeps for its watches and its extensions' ([`Kept`], [`crate::lane::Behaviour::keep`]).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::ops::DerefMut;
use std::task::{Context, Poll};

use futures::future::Either;
use libp2p::PeerId;
use libp2p::swarm::handler::{ConnectionEvent, InboundUpgradeSend, OutboundUpgradeSend};
use libp2p::swarm::{ConnectionHandler, ConnectionHandlerEvent, Stream, SubstreamProtocol};

/// A behaviour whose handlers' streams do not keep their connection open.
pub(crate) type Released<B> = crate::wrap::Wrapped<B, Releasing>;

/// Wraps each handler in a [`Handler`].
pub(crate) struct Releasing;

impl<H> crate::wrap::Wrap<H> for Releasing
where
    H: ConnectionHandler,
    <H::InboundProtocol as InboundUpgradeSend>::Output: Streams,
    <H::OutboundProtocol as OutboundUpgradeSend>::Output: Streams,
{
    type Handler = Handler<H>;

    fn wrap(handler: H) -> Handler<H> {
        Handler(handler)
    }
}

/// What a negotiated stream is handed to a handler as: the streams in it can be released.
pub(crate) trait Streams {
    /// Marks every stream in it as not keeping the connection open.
    fn release(&mut self);
}

/// Gossipsub's stream: a framed stream and what the peer speaks.
impl<F: DerefMut<Target = Stream>, K> Streams for (F, K) {
    fn release(&mut self) {
        self.0.ignore_for_keep_alive();
    }
}

impl<A: Streams, B: Streams> Streams for Either<A, B> {
    fn release(&mut self) {
        match self {
            Either::Left(a) => a.release(),
            Either::Right(b) => b.release(),
        }
    }
}

/// A denied upgrade's output: there is none.
impl Streams for Infallible {
    fn release(&mut self) {
        match *self {}
    }
}

/// A handler whose streams are released as they are negotiated; otherwise unchanged.
pub(crate) struct Handler<H>(H);

impl<H> ConnectionHandler for Handler<H>
where
    H: ConnectionHandler,
    <H::InboundProtocol as InboundUpgradeSend>::Output: Streams,
    <H::OutboundProtocol as OutboundUpgradeSend>::Output: Streams,
{
    type FromBehaviour = H::FromBehaviour;
    type ToBehaviour = H::ToBehaviour;
    type InboundProtocol = H::InboundProtocol;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.0.listen_protocol()
    }

    fn connection_keep_alive(&self) -> bool {
        self.0.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        self.0.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.0.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        self.0.on_behaviour_event(event)
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
        let event = match event {
            ConnectionEvent::FullyNegotiatedInbound(mut negotiated) => {
                negotiated.protocol.release();
                ConnectionEvent::FullyNegotiatedInbound(negotiated)
            }
            ConnectionEvent::FullyNegotiatedOutbound(mut negotiated) => {
                negotiated.protocol.release();
                ConnectionEvent::FullyNegotiatedOutbound(negotiated)
            }
            other => other,
        };
        self.0.on_connection_event(event)
    }
}

/// The peers whose connections this node keeps open while nothing uses them, by why
/// ([`crate::lane::Behaviour::keep`] keeps their union).
#[derive(Default)]
pub(crate) struct Kept {
    /// The replicas of the keys this node watches; spared by the connection limit's trim.
    pub(crate) replicas: HashSet<PeerId>,
    /// Peers that watch a key through this node's gossipsub.
    pub(crate) watchers: HashSet<PeerId>,
    /// What extensions keep ([`crate::Host::keep_connected`]), by their reason.
    pub(crate) extension: HashMap<&'static str, HashSet<PeerId>>,
}

impl Kept {
    /// Hands the union to the record protocol's behaviour, if it changed.
    pub(crate) fn apply(&self, records: &mut crate::lane::Behaviour) {
        let mut all = self.replicas.clone();
        all.extend(self.watchers.iter().copied());
        for peers in self.extension.values() {
            all.extend(peers.iter().copied());
        }
        if all != *records.kept() {
            records.keep(all);
        }
    }
}
