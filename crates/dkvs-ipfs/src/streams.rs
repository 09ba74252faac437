//! The connection handler of bitswap: it hands every inbound `/ipfs/bitswap/1.2.0` stream to
//! the exchange and opens outbound ones when asked.
//!
//! Not libp2p-stream's: its inbound streams go through a channel of one slot and are dropped
//! when two arrive before the acceptor runs. Helia opens a stream for every batch of messages,
//! so a busy node would lose wants and blocks. Here a stream is an event of the behaviour, and
//! the behaviour never drops one (it bounds them per peer itself).
//!
//! Whether the peer speaks bitswap comes from identify's list of its protocols, once it has
//! come: a stream to a peer without bitswap is then refused here, before it is opened. Before
//! that, a refused negotiation says so.

use std::collections::VecDeque;
use std::task::{Context, Poll};

use dkvs_net::libp2p::core::upgrade::ReadyUpgrade;
use dkvs_net::libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
    ProtocolsChange,
};
use dkvs_net::libp2p::swarm::{
    ConnectionHandler, ConnectionHandlerEvent, Stream, StreamUpgradeError, SubstreamProtocol,
};

use crate::exchange::PROTOCOL;

/// What the exchange asks of a connection.
#[derive(Debug)]
pub enum HandlerIn {
    /// Open an outbound stream; the answer carries this number.
    Open(u64),
}

/// What a connection reports to the exchange.
#[derive(Debug)]
pub enum HandlerOut {
    /// The peer opened a stream.
    Inbound(Stream),
    /// The stream asked for with this number.
    Opened(u64, Stream),
    /// The stream asked for with this number could not be opened; `true` when the peer does
    /// not speak bitswap.
    Failed(u64, bool),
}

/// One connection's bitswap streams.
#[derive(Default)]
pub struct Handler {
    to_open: VecDeque<u64>,
    events: VecDeque<HandlerOut>,
    /// Whether the peer speaks bitswap, once identify has said which protocols it speaks.
    speaks: Option<bool>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = HandlerIn;
    type ToBehaviour = HandlerOut;
    type InboundProtocol = ReadyUpgrade<dkvs_net::libp2p::StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<dkvs_net::libp2p::StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = u64;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, ()> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, u64, HandlerOut>> {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event));
        }
        if let Some(id) = self.to_open.pop_front() {
            if self.speaks == Some(false) {
                return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(HandlerOut::Failed(
                    id, true,
                )));
            }
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), id),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: HandlerIn) {
        match event {
            HandlerIn::Open(id) => self.to_open.push_back(id),
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), u64>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: mut stream,
                ..
            }) => {
                // The peer's stream is the peer's to close (Kubo keeps one per peer for the
                // connection's life): it does not hold the connection open here. This node's
                // own stream does while it has something to say (`exchange::STREAM_QUIET`).
                stream.ignore_for_keep_alive();
                self.events.push_back(HandlerOut::Inbound(stream))
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                info: id,
            }) => self.events.push_back(HandlerOut::Opened(id, stream)),
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: id, error }) => {
                let unsupported = matches!(error, StreamUpgradeError::NegotiationFailed);
                self.events.push_back(HandlerOut::Failed(id, unsupported));
            }
            ConnectionEvent::RemoteProtocolsChange(change) => {
                self.speaks = speaks_after(self.speaks, change);
            }
            _ => {}
        }
    }
}

/// Whether the peer speaks bitswap after identify reported `change`: the first report lists
/// every protocol it speaks, later ones what it added or dropped.
fn speaks_after(speaks: Option<bool>, change: ProtocolsChange<'_>) -> Option<bool> {
    match change {
        ProtocolsChange::Added(mut added) => {
            if added.any(|p| *p == PROTOCOL) {
                Some(true)
            } else {
                Some(speaks.unwrap_or(false))
            }
        }
        ProtocolsChange::Removed(mut removed) => {
            if removed.any(|p| *p == PROTOCOL) {
                Some(false)
            } else {
                speaks
            }
        }
    }
}
