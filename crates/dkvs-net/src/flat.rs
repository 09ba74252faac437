//! A connection's list of protocols, read from its handlers only when it can have changed.
//!
//! Every time a connection's task is about to wait, libp2p (libp2p-swarm 0.48,
//! `Connection::poll`) asks the connection's handler for the protocols it listens on and
//! compares them with the last list, to tell the handlers of a change. The node's handler is
//! a tree of a dozen behaviours' handlers: each ask walked the nested list of names (an
//! `Either` for each level of the tree, each name converted and hashed as it went). At
//! N = 100 that was 11% of the CPU of a network answering gets (docs/benchmarks.md), and it
//! grew with the protocols, not with the work. [`Flat`] wraps the node's whole behaviour: its
//! handler lists the inner handler's protocols from a copy, a flat list of names, read again
//! only when they can have changed. (libp2p still builds every behaviour's upgrade on each
//! ask, as the inbound stream it may be for needs them, and still hashes the copy's names:
//! about 3% is left.)
//!
//! A handler's protocols change when it is told something (Kademlia's handler when its
//! behaviour changes its mode, the relay server's when its status changes) or on an event of
//! its connection (gossipsub's when the peer refuses it). The copy is read again after either,
//! after a poll that made progress, and on the first poll [`READ_AFTER`] or more after the
//! last read. A handler whose list changes in none of those
//! ways (`libp2p-stream`'s, when an application accepts a new protocol) has its change listed
//! at the first wake of its connection a second later, and a stream for the new protocol is
//! refused until then.
//!
//! An inbound stream is negotiated on the copy and handed to the inner handler's own upgrade
//! for the protocol agreed, taken at the same instant. A protocol in the copy that the inner
//! handler no longer lists fails the stream's upgrade, which the inner handler is not told of:
//! it never asked for the stream.
//!
//! The behaviour itself is only delegated to ([`crate::wrap`]); it derefs to the wrapped one.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt};
use libp2p::PeerId;
use libp2p::core::upgrade::{InboundUpgrade, UpgradeInfo};
use libp2p::swarm::handler::{
    ConnectionEvent, FullyNegotiatedInbound, InboundUpgradeSend, ListenUpgradeError,
    UpgradeInfoSend,
};
use libp2p::swarm::{
    ConnectionHandler, ConnectionHandlerEvent, ConnectionId, NetworkBehaviour, Stream,
    StreamProtocol, SubstreamProtocol, THandler,
};

/// The copy is read again on the first poll this long after it was last read.
pub(crate) const READ_AFTER: Duration = Duration::from_secs(1);

/// A behaviour whose connections list their protocols from a copy ([module docs](self)).
pub(crate) type Flat<B> = crate::wrap::Wrapped<B, Flattened>;

/// Wraps each handler in a [`Handler`].
#[derive(Default)]
pub(crate) struct Flattened;

impl<B: NetworkBehaviour> crate::wrap::Wrap<B> for Flattened {
    type Handler = Handler<B::ConnectionHandler>;

    fn wrap(&mut self, handler: THandler<B>, _: PeerId, _: ConnectionId) -> Self::Handler {
        Handler::new(handler)
    }
}

/// The protocols a handler listens on, read from it.
fn listed<H: ConnectionHandler>(handler: &H) -> Vec<StreamProtocol> {
    let upgrade = handler.listen_protocol();
    let names = upgrade.upgrade().protocol_info();
    names.filter_map(|name| StreamProtocol::try_from_owned(name.as_ref().to_owned()).ok()).collect()
}

/// A connection handler that lists its protocols from a copy ([module docs](self)).
pub(crate) struct Handler<H> {
    inner: H,
    protocols: Arc<[StreamProtocol]>,
    /// Told something since the copy was read.
    stale: bool,
    /// When the copy was read.
    read_at: Instant,
}

impl<H: ConnectionHandler> Handler<H> {
    fn new(inner: H) -> Handler<H> {
        let protocols = listed(&inner).into();
        Handler { inner, protocols, stale: false, read_at: Instant::now() }
    }

    /// Reads the inner handler's protocols again; the copy changes only if they did.
    fn read(&mut self, now: Instant) {
        self.stale = false;
        self.read_at = now;
        let upgrade = self.inner.listen_protocol();
        let mut names = upgrade.upgrade().protocol_info();
        let mut kept = self.protocols.iter();
        let same = loop {
            match (names.next(), kept.next()) {
                (None, None) => break true,
                (Some(name), Some(copy)) if name.as_ref() == copy.as_ref() => {}
                _ => break false,
            }
        };
        if !same {
            self.protocols = listed(&self.inner).into();
        }
    }
}

impl<H: ConnectionHandler> ConnectionHandler for Handler<H> {
    type FromBehaviour = H::FromBehaviour;
    type ToBehaviour = H::ToBehaviour;
    type InboundProtocol = Upgrade<H::InboundProtocol>;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        let inner = self.inner.listen_protocol();
        let timeout = *inner.timeout();
        let (upgrade, info) = inner.into_upgrade();
        let upgrade = Upgrade { inner: upgrade, protocols: self.protocols.clone() };
        SubstreamProtocol::new(upgrade, info).with_timeout(timeout)
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
        // libp2p polls the handler before it next asks for the protocols after any event.
        let now = Instant::now();
        if self.stale || now >= self.read_at + READ_AFTER {
            self.read(now);
        }
        let polled = self.inner.poll(cx);
        // Progress may have changed the list: read it before libp2p next asks.
        self.stale |= polled.is_ready();
        polled
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        self.stale = true;
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
        self.stale = true;
        let event = match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol, info }) => {
                ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol, info })
            }
            ConnectionEvent::ListenUpgradeError(ListenUpgradeError { info, error }) => {
                match error {
                    Refused::Inner(error) => {
                        ConnectionEvent::ListenUpgradeError(ListenUpgradeError { info, error })
                    }
                    Refused::NotListed(name) => {
                        tracing::debug!(%name, "an inbound stream for a protocol no longer listed");
                        return;
                    }
                }
            }
            ConnectionEvent::FullyNegotiatedOutbound(e) => {
                ConnectionEvent::FullyNegotiatedOutbound(e)
            }
            ConnectionEvent::AddressChange(e) => ConnectionEvent::AddressChange(e),
            ConnectionEvent::DialUpgradeError(e) => ConnectionEvent::DialUpgradeError(e),
            ConnectionEvent::LocalProtocolsChange(e) => ConnectionEvent::LocalProtocolsChange(e),
            ConnectionEvent::RemoteProtocolsChange(e) => ConnectionEvent::RemoteProtocolsChange(e),
            // A kind of event a later libp2p adds: it is not passed on until this maps it.
            _ => {
                debug_assert!(false, "a connection event flat.rs does not know");
                tracing::warn!("a connection event flat.rs does not know was not passed on");
                return;
            }
        };
        self.inner.on_connection_event(event)
    }
}

/// The inner handler's inbound upgrade, listed from the copy.
pub(crate) struct Upgrade<U> {
    inner: U,
    protocols: Arc<[StreamProtocol]>,
}

impl<U> UpgradeInfo for Upgrade<U> {
    type Info = StreamProtocol;
    type InfoIter = Names;

    fn protocol_info(&self) -> Names {
        Names { protocols: self.protocols.clone(), next: 0 }
    }
}

/// The names of a copy, in order.
pub(crate) struct Names {
    protocols: Arc<[StreamProtocol]>,
    next: usize,
}

impl Iterator for Names {
    type Item = StreamProtocol;

    fn next(&mut self) -> Option<StreamProtocol> {
        let name = self.protocols.get(self.next)?.clone();
        self.next += 1;
        Some(name)
    }
}

/// Why an inbound stream's upgrade failed.
#[derive(Debug)]
pub(crate) enum Refused<E> {
    /// The inner handler's upgrade failed.
    Inner(E),
    /// The protocol agreed is in the copy but no longer listed by the inner handler.
    NotListed(StreamProtocol),
}

impl<E: fmt::Display> fmt::Display for Refused<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Inner(e) => e.fmt(f),
            Refused::NotListed(name) => write!(f, "{name} is no longer listened on"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for Refused<E> {}

impl<U> InboundUpgrade<Stream> for Upgrade<U>
where
    U: InboundUpgradeSend,
    U::Output: 'static,
    U::Error: 'static,
{
    type Output = U::Output;
    type Error = Refused<U::Error>;
    type Future = BoxFuture<'static, Result<U::Output, Refused<U::Error>>>;

    fn upgrade_inbound(self, stream: Stream, name: StreamProtocol) -> Self::Future {
        let info = self.inner.protocol_info().into_iter().find(|i| i.as_ref() == name.as_ref());
        match info {
            Some(info) => {
                self.inner.upgrade_inbound(stream, info).map(|r| r.map_err(Refused::Inner)).boxed()
            }
            None => futures::future::ready(Err(Refused::NotListed(name))).boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use libp2p::core::upgrade::DeniedUpgrade;
    use libp2p::swarm::handler::AddressChange;

    use super::*;

    /// An inbound upgrade that counts how often its names are read.
    struct Counted {
        names: Vec<&'static str>,
        reads: Arc<AtomicUsize>,
    }

    impl UpgradeInfo for Counted {
        type Info = &'static str;
        type InfoIter = Vec<&'static str>;

        fn protocol_info(&self) -> Vec<&'static str> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            self.names.clone()
        }
    }

    impl InboundUpgrade<Stream> for Counted {
        type Output = &'static str;
        type Error = Infallible;
        type Future = futures::future::Ready<Result<&'static str, Infallible>>;

        fn upgrade_inbound(self, _: Stream, name: &'static str) -> Self::Future {
            futures::future::ready(Ok(name))
        }
    }

    /// A handler that listens on "/a", and on "/kad" too while it is a server. Its behaviour
    /// tells it which (as Kademlia's); an address change of its connection makes it a client
    /// (as gossipsub's handler is disabled by a connection event); a poll after `flip` makes
    /// progress and turns it back into a server.
    struct Modal {
        server: bool,
        flip: bool,
        reads: Arc<AtomicUsize>,
    }

    impl ConnectionHandler for Modal {
        type FromBehaviour = bool;
        type ToBehaviour = ();
        type InboundProtocol = Counted;
        type OutboundProtocol = DeniedUpgrade;
        type InboundOpenInfo = ();
        type OutboundOpenInfo = Infallible;

        fn listen_protocol(&self) -> SubstreamProtocol<Counted, ()> {
            let names = if self.server { vec!["/a", "/kad"] } else { vec!["/a"] };
            SubstreamProtocol::new(Counted { names, reads: self.reads.clone() }, ())
        }

        fn poll(
            &mut self,
            _: &mut Context<'_>,
        ) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, Infallible, ()>> {
            if std::mem::take(&mut self.flip) {
                self.server = true;
                return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(()));
            }
            Poll::Pending
        }

        fn on_behaviour_event(&mut self, server: bool) {
            self.server = server;
        }

        fn on_connection_event(
            &mut self,
            event: ConnectionEvent<Counted, DeniedUpgrade, (), Infallible>,
        ) {
            if let ConnectionEvent::AddressChange(_) = event {
                self.server = false;
            }
        }
    }

    fn modal() -> (Handler<Modal>, Arc<AtomicUsize>) {
        let reads = Arc::new(AtomicUsize::new(0));
        (Handler::new(Modal { server: true, flip: false, reads: reads.clone() }), reads)
    }

    /// What libp2p does when a connection wakes: polls the handler until it is pending, then
    /// asks for the list.
    fn wake(handler: &mut Handler<Modal>) -> Vec<String> {
        let waker = futures::task::noop_waker();
        while handler.poll(&mut Context::from_waker(&waker)).is_ready() {}
        let listed = handler.listen_protocol();
        UpgradeInfo::protocol_info(listed.upgrade()).map(|p| p.to_string()).collect()
    }

    #[test]
    fn the_list_is_read_from_the_handler_only_after_it_was_told_something() {
        let (mut handler, reads) = modal();
        assert_eq!(reads.load(Ordering::Relaxed), 1, "read when made");
        for _ in 0..10 {
            assert_eq!(wake(&mut handler), ["/a", "/kad"]);
        }
        assert_eq!(reads.load(Ordering::Relaxed), 1, "wakes list from the copy");

        // Its behaviour makes it a client: the next wake lists what it listens on now.
        handler.on_behaviour_event(false);
        assert_eq!(wake(&mut handler), ["/a"]);
        assert_eq!(wake(&mut handler), ["/a"]);
        assert_eq!(reads.load(Ordering::Relaxed), 3, "read once to compare, once to copy");

        // An event that changes nothing reads it once, to compare.
        handler.on_behaviour_event(false);
        assert_eq!(wake(&mut handler), ["/a"]);
        assert_eq!(reads.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_change_on_a_connection_event_or_in_a_poll_that_made_progress_is_listed() {
        let (mut handler, _) = modal();
        assert_eq!(wake(&mut handler), ["/a", "/kad"]);
        let address: libp2p::Multiaddr = "/memory/1".parse().expect("address");
        handler.on_connection_event(ConnectionEvent::AddressChange(AddressChange {
            new_address: &address,
        }));
        assert_eq!(wake(&mut handler), ["/a"]);
        // The change comes in a poll that returns an event: the poll after it reads the list.
        handler.inner.flip = true;
        assert_eq!(wake(&mut handler), ["/a", "/kad"]);
    }

    #[test]
    fn a_change_nothing_announced_is_listed_a_second_later() {
        let (mut handler, reads) = modal();
        // Changed behind the wrapper's back (as libp2p-stream's list changes).
        handler.inner.server = false;
        assert_eq!(wake(&mut handler), ["/a", "/kad"], "not read yet");
        std::thread::sleep(READ_AFTER + Duration::from_millis(100));
        assert_eq!(wake(&mut handler), ["/a"]);
        assert_eq!(reads.load(Ordering::Relaxed), 3);
    }
}
