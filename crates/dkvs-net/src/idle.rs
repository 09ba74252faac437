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
use libp2p::swarm::{
    ConnectionHandler, ConnectionHandlerEvent, ConnectionId, NetworkBehaviour, Stream,
    SubstreamProtocol, THandler,
};

/// A behaviour whose handlers' streams do not keep their connection open.
pub(crate) type Released<B> = crate::wrap::Wrapped<B, Releasing>;

/// Wraps each handler in a [`Handler`].
#[derive(Default)]
pub(crate) struct Releasing {
    /// For handlers whose protocols may change (gossipsub's, disabled by its connection's
    /// events): where their connection's flag is ([`crate::flat::Told`]).
    changes: Option<crate::flat::Changes>,
}

impl Releasing {
    /// Wraps handlers whose protocols may change when they are told something, and sets their
    /// connection's flag in `changes` then.
    pub(crate) fn telling(changes: &crate::flat::Changes) -> Releasing {
        Releasing { changes: Some(changes.clone()) }
    }
}

impl<B> crate::wrap::Wrap<B> for Releasing
where
    B: NetworkBehaviour,
    <THandler<B> as ConnectionHandler>::InboundProtocol: InboundUpgradeSend<Output: Streams>,
    <THandler<B> as ConnectionHandler>::OutboundProtocol: OutboundUpgradeSend<Output: Streams>,
{
    type Handler = Handler<B::ConnectionHandler>;

    fn wrap(&mut self, handler: THandler<B>, _: PeerId, connection: ConnectionId) -> Self::Handler {
        Handler(handler, self.changes.as_ref().map(|changes| changes.flag(connection)))
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

/// A handler whose streams are released as they are negotiated; otherwise unchanged. The
/// second field is set when it was told something, if its protocols may change then.
pub(crate) struct Handler<H>(H, Option<crate::flat::Told>);

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
        self.1.iter().for_each(crate::flat::Told::set);
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
        self.1.iter().for_each(crate::flat::Told::set);
        self.0.on_connection_event(event)
    }
}

/// The peers whose connections this node keeps open while nothing uses them, each with why
/// (a peer is kept while any reason holds; [`crate::lane::Behaviour::keep`] keeps it). Every
/// change costs what it changes: a single peer added or dropped is one map operation.
#[derive(Default)]
pub(crate) struct Kept {
    by_reason: HashMap<&'static str, HashSet<PeerId>>,
    reasons: HashMap<PeerId, u32>,
}

impl Kept {
    /// Keeps `peer` for `why` (`keep`), or drops that reason.
    pub(crate) fn set(
        &mut self,
        why: &'static str,
        peer: PeerId,
        keep: bool,
        records: &mut crate::lane::Behaviour,
    ) {
        let peers = self.by_reason.entry(why).or_default();
        let changed = if keep { peers.insert(peer) } else { peers.remove(&peer) };
        if peers.is_empty() {
            self.by_reason.remove(why);
        }
        if !changed {
            return;
        }
        let count = self.reasons.entry(peer).or_default();
        if keep {
            *count += 1;
            if *count == 1 {
                records.keep(peer, true);
            }
        } else {
            *count -= 1;
            if *count == 0 {
                self.reasons.remove(&peer);
                records.keep(peer, false);
            }
        }
    }

    /// Keeps for `why` exactly `peers`: those kept for it before and not among them lose
    /// that reason.
    pub(crate) fn replace(
        &mut self,
        why: &'static str,
        peers: &HashSet<PeerId>,
        records: &mut crate::lane::Behaviour,
    ) {
        let old: Vec<PeerId> = self
            .by_reason
            .get(why)
            .map(|kept| kept.difference(peers).copied().collect())
            .unwrap_or_default();
        for peer in old {
            self.set(why, peer, false, records);
        }
        for peer in peers {
            self.set(why, *peer, true, records);
        }
    }

    /// The peers kept for `why`.
    pub(crate) fn kept_for(&self, why: &str) -> impl Iterator<Item = &PeerId> {
        self.by_reason.get(why).into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_kept_while_any_reason_holds() {
        let mut records = crate::lane::Behaviour::new(std::time::Duration::from_secs(10));
        let mut kept = Kept::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        kept.set("watch", a, true, &mut records);
        kept.replace("extension", &HashSet::from([a, b]), &mut records);
        assert_eq!(*records.kept(), HashSet::from([a, b]));
        kept.set("watch", a, false, &mut records);
        assert_eq!(*records.kept(), HashSet::from([a, b]), "the extension still keeps a");
        kept.replace("extension", &HashSet::from([b]), &mut records);
        assert_eq!(*records.kept(), HashSet::from([b]));
        kept.set("watch", b, true, &mut records);
        kept.set("watch", b, true, &mut records);
        kept.replace("extension", &HashSet::new(), &mut records);
        assert_eq!(*records.kept(), HashSet::from([b]), "a reason counts once");
        kept.set("watch", b, false, &mut records);
        assert!(records.kept().is_empty() && kept.reasons.is_empty() && kept.by_reason.is_empty());
    }

    /// Gossipsub's handler is disabled by its connection's events: its wrapper sets the
    /// connection's flag when it is told one ([`crate::flat::Told`]).
    #[test]
    fn a_handler_told_a_connection_event_sets_its_connections_flag() {
        let changes = crate::flat::Changes::default();
        let mut releasing = Releasing::telling(&changes);
        let connection = ConnectionId::new_unchecked(3);
        let mut handler = crate::wrap::Wrap::<libp2p::swarm::dummy::Behaviour>::wrap(
            &mut releasing,
            libp2p::swarm::dummy::ConnectionHandler,
            PeerId::random(),
            connection,
        );
        let told = handler.1.clone().expect("a flag");
        assert!(!told.take());
        let address: libp2p::Multiaddr = "/memory/1".parse().expect("address");
        let change = libp2p::swarm::handler::AddressChange { new_address: &address };
        handler.on_connection_event(ConnectionEvent::AddressChange(change));
        assert!(told.take());
    }
}
