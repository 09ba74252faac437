//! A behaviour whose connection handlers are wrapped, and which may be watched: the seam that
//! [`crate::quiet`], [`crate::flat`], [`crate::idle`] and [`crate::held`] share. The behaviour
//! is otherwise only delegated to; it derefs to the wrapped one.

use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};

/// How the connection handlers of a behaviour of type `B` are wrapped; the wrapped handler
/// passes the behaviour's events and the handler's events through unchanged. A wrapper may
/// also keep state, see the swarm's events and its handlers' events before the behaviour
/// does, and stand between the behaviour and the swarm when it is polled (and there answer or
/// change what the behaviour asks); by default it does none of these.
pub(crate) trait Wrap<B: NetworkBehaviour>: 'static {
    /// The wrapped handler.
    type Handler: ConnectionHandler<FromBehaviour = THandlerInEvent<B>>
        + ConnectionHandler<ToBehaviour = THandlerOutEvent<B>>;

    /// Wraps a handler the behaviour made for `connection` to `peer`.
    fn wrap(
        &mut self,
        handler: THandler<B>,
        peer: PeerId,
        connection: ConnectionId,
    ) -> Self::Handler;

    /// Hands the swarm's `event` to `inner`.
    fn on_swarm_event(&mut self, inner: &mut B, event: FromSwarm) {
        inner.on_swarm_event(event)
    }

    /// Hands `inner` an event of one of its handlers, from `peer` on `connection`.
    fn on_connection_handler_event(
        &mut self,
        inner: &mut B,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<B>,
    ) {
        inner.on_connection_handler_event(peer, connection, event)
    }

    /// Polls `inner` for what it asks of the swarm.
    fn poll(
        &mut self,
        inner: &mut B,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<B::ToSwarm, THandlerInEvent<B>>> {
        inner.poll(cx)
    }
}

/// Behaviour `B` with its handlers wrapped by `W`.
pub(crate) struct Wrapped<B, W> {
    inner: B,
    wrapper: W,
}

impl<B, W: Default> Wrapped<B, W> {
    pub(crate) fn new(inner: B) -> Wrapped<B, W> {
        Wrapped { inner, wrapper: W::default() }
    }
}

impl<B, W> Wrapped<B, W> {
    /// `inner`, its handlers wrapped by `wrapper`.
    pub(crate) fn with(inner: B, wrapper: W) -> Wrapped<B, W> {
        Wrapped { inner, wrapper }
    }
}

impl<B, W> Wrapped<B, W> {
    /// The wrapper's state.
    pub(crate) fn wrapper(&self) -> &W {
        &self.wrapper
    }

    /// The wrapper's state.
    pub(crate) fn wrapper_mut(&mut self) -> &mut W {
        &mut self.wrapper
    }
}

impl<B, W> std::ops::Deref for Wrapped<B, W> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B, W> std::ops::DerefMut for Wrapped<B, W> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B, W> NetworkBehaviour for Wrapped<B, W>
where
    B: NetworkBehaviour,
    W: Wrap<B>,
{
    type ConnectionHandler = W::Handler;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner.handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let handler = self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )?;
        Ok(self.wrapper.wrap(handler, peer, connection_id))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let handler = self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )?;
        Ok(self.wrapper.wrap(handler, peer, connection_id))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.wrapper.on_swarm_event(&mut self.inner, event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.wrapper.on_connection_handler_event(&mut self.inner, peer_id, connection_id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.wrapper.poll(&mut self.inner, cx)
    }
}
