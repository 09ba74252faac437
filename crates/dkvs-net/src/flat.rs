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
//! A handler's protocols change when it is told something: Kademlia's handler when its
//! behaviour changes its mode, the relay server's when its status changes, gossipsub's when an
//! event of its connection disables it (the peer refuses it, or it opened five streams either
//! way). The handlers whose protocols may change are wrapped to say on their connection's
//! [`Told`] flag when they were told something ([`Changes`]: those three, and the extension's,
//! which may be any handler, and so says also when it made progress in a poll): the copy is
//! read again at the next poll after any of them said so, and after an event of the
//! connection other than a stream negotiated (an address change, an upgrade that failed). It
//! is not read for what the other handlers are told or do, nor for the streams they negotiate:
//! the record protocol's requests and answers are most of a busy node's events, and reading
//! the list after each was about 5% of the CPU of a network answering gets
//! (docs/benchmarks.md). It is also read on the first poll [`READ_AFTER`] or more after the
//! last read. A handler whose list changes in none of those ways (`libp2p-stream`'s, when an
//! application accepts a new protocol; a handler not wrapped to say so) has its change listed
//! at the first wake of its connection a second later, and a stream for a protocol it added is
//! refused until then.
//!
//! An inbound stream is negotiated on the copy and handed to the inner handler's own upgrade
//! for the protocol agreed, taken at the same instant. A protocol in the copy that the inner
//! handler no longer lists fails the stream's upgrade, which the inner handler is not told of:
//! it never asked for the stream.
//!
//! The behaviour itself is only delegated to ([`crate::wrap`]); it derefs to the wrapped one.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt};
use libp2p::PeerId;
use libp2p::core::upgrade::{InboundUpgrade, UpgradeInfo};
use libp2p::swarm::behaviour::{DialFailure, ListenFailure};
use libp2p::swarm::handler::{
    ConnectionEvent, FullyNegotiatedInbound, InboundUpgradeSend, ListenUpgradeError,
    UpgradeInfoSend,
};
use libp2p::swarm::{
    ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour, Stream,
    StreamProtocol, SubstreamProtocol, THandler,
};

/// The copy is read again on the first poll this long after it was last read.
pub(crate) const READ_AFTER: Duration = Duration::from_secs(1);

/// A behaviour whose connections list their protocols from a copy ([module docs](self)).
pub(crate) type Flat<B> = crate::wrap::Wrapped<B, Flattened>;

/// `behaviour`, its connections listing their protocols from a copy, read again whenever a
/// handler whose wrapper took its connection's flag from `changes` said so.
pub(crate) fn flat<B>(behaviour: B, changes: Changes) -> Flat<B> {
    crate::wrap::Wrapped::with(behaviour, Flattened { changes })
}

/// A connection's flag, set by its handlers whose protocols may change when they were told
/// something (an extension's also after progress); taken down by the connection's copy when
/// it reads the list.
/// (A connection's handlers all run on its task: no ordering between threads is needed.)
#[derive(Clone, Default)]
pub(crate) struct Told(Arc<AtomicBool>);

impl Told {
    /// A handler whose protocols may change was told something, or made progress.
    pub(crate) fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub(crate) fn take(&self) -> bool {
        self.0.load(Ordering::Relaxed) && self.0.swap(false, Ordering::Relaxed)
    }
}

/// The flags of a node's connections whose handlers are being made: the wrappers of handlers
/// whose protocols may change take their connection's ([`Changes::flag`]) as the node's
/// behaviours make its handlers, and the connection's copy takes it over once they all did
/// ([`Flattened`]). A connection denied on the way is forgotten when the swarm tells of it.
#[derive(Clone, Default)]
pub(crate) struct Changes(Arc<Mutex<HashMap<ConnectionId, (Told, usize)>>>);

impl Changes {
    /// `connection`'s flag, for a handler of it whose protocols may change.
    pub(crate) fn flag(&self, connection: ConnectionId) -> Told {
        let mut flags = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (told, handlers) = flags.entry(connection).or_default();
        *handlers += 1;
        told.clone()
    }

    /// `connection`'s flag, taken over by its copy, and how many handlers set it.
    fn take(&self, connection: ConnectionId) -> (Told, usize) {
        self.forget(connection).unwrap_or_default()
    }

    fn forget(&self, connection: ConnectionId) -> Option<(Told, usize)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(&connection)
    }
}

/// Wraps each handler in a [`Handler`].
pub(crate) struct Flattened {
    changes: Changes,
}

impl<B: NetworkBehaviour> crate::wrap::Wrap<B> for Flattened {
    type Handler = Handler<B::ConnectionHandler>;

    fn wrap(&mut self, handler: THandler<B>, _: PeerId, connection: ConnectionId) -> Self::Handler {
        let (told, tellers) = self.changes.take(connection);
        Handler::new(handler, told, tellers)
    }

    fn on_swarm_event(&mut self, inner: &mut B, event: FromSwarm) {
        // A connection that a behaviour denied after others made its handlers: no copy took
        // its flag over.
        match &event {
            FromSwarm::DialFailure(DialFailure { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.changes.forget(*connection_id);
            }
            _ => {}
        }
        inner.on_swarm_event(event)
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
    /// Told of a connection event since the copy was read.
    stale: bool,
    /// When the copy was read.
    read_at: Instant,
    /// The connection's flag: set by its handlers whose protocols may change.
    told: Told,
    /// How many of its handlers set the flag.
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the tests of the wiring"))]
    tellers: usize,
}

impl<H: ConnectionHandler> Handler<H> {
    fn new(inner: H, told: Told, tellers: usize) -> Handler<H> {
        let protocols = listed(&inner).into();
        told.take();
        Handler { inner, protocols, stale: false, read_at: Instant::now(), told, tellers }
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
        // (The flag is taken whatever else reads the copy.)
        if self.told.take() | self.stale || now >= self.read_at + READ_AFTER {
            self.read(now);
        }
        self.inner.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        // (A handler whose protocols may change when told something says so: [`Told`].)
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
        // A stream negotiated is most events of a busy connection; a handler whose protocols
        // may change on one says so ([`Told`]). Any other event is read after.
        self.stale |= !matches!(
            event,
            ConnectionEvent::FullyNegotiatedInbound(_)
                | ConnectionEvent::FullyNegotiatedOutbound(_)
        );
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
    /// tells it which (as Kademlia's), and it says so on `says` when it has one (as the node's
    /// wrappers of such handlers do); an address change of its connection makes it a client.
    struct Modal {
        server: bool,
        reads: Arc<AtomicUsize>,
        says: Option<Told>,
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
            Poll::Pending
        }

        fn on_behaviour_event(&mut self, server: bool) {
            self.says.iter().for_each(Told::set);
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

    /// A handler of a connection (whose flag is in `changes`); it says when it is told
    /// something if `says`.
    fn modal(changes: &Changes, says: bool) -> (Handler<Modal>, Arc<AtomicUsize>) {
        let reads = Arc::new(AtomicUsize::new(0));
        let connection = ConnectionId::new_unchecked(reads.as_ref() as *const _ as usize);
        let says = says.then(|| changes.flag(connection));
        let modal = Modal { server: true, reads: reads.clone(), says };
        let (told, tellers) = changes.take(connection);
        (Handler::new(modal, told, tellers), reads)
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
    fn the_list_is_read_again_after_a_handler_that_may_change_it_was_told_something() {
        let changes = Changes::default();
        let (mut handler, reads) = modal(&changes, true);
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

        // What another connection's handler is told reads nothing here.
        let (mut other, _) = modal(&changes, true);
        other.on_behaviour_event(false);
        assert_eq!(wake(&mut handler), ["/a"]);
        assert_eq!(reads.load(Ordering::Relaxed), 4);
        assert_eq!(wake(&mut other), ["/a"]);
    }

    /// A connection a behaviour denied after others made its handlers: its flag is forgotten
    /// when the swarm tells of the failure.
    #[test]
    fn the_flag_of_a_connection_denied_on_the_way_is_forgotten() {
        let changes = Changes::default();
        let mut behaviour = flat(libp2p::swarm::dummy::Behaviour, changes.clone());
        let (dialed, listened) = (ConnectionId::new_unchecked(5), ConnectionId::new_unchecked(6));
        changes.flag(dialed);
        changes.flag(listened);
        let error = libp2p::swarm::DialError::Aborted;
        let failure = DialFailure { peer_id: None, error: &error, connection_id: dialed };
        behaviour.on_swarm_event(FromSwarm::DialFailure(failure));
        let address: libp2p::Multiaddr = "/memory/1".parse().expect("address");
        let error = libp2p::swarm::ListenError::Aborted;
        let failure = ListenFailure {
            local_addr: &address,
            send_back_addr: &address,
            error: &error,
            connection_id: listened,
            peer_id: None,
        };
        behaviour.on_swarm_event(FromSwarm::ListenFailure(failure));
        assert!(changes.0.lock().expect("not poisoned").is_empty());
    }

    #[test]
    fn what_other_handlers_are_told_and_the_streams_negotiated_read_nothing() {
        let changes = Changes::default();
        let (mut handler, reads) = modal(&changes, false);
        for _ in 0..3 {
            handler.on_behaviour_event(true);
            let negotiated = FullyNegotiatedInbound { protocol: "/a", info: () };
            handler.on_connection_event(ConnectionEvent::FullyNegotiatedInbound(negotiated));
            assert_eq!(wake(&mut handler), ["/a", "/kad"]);
        }
        assert_eq!(reads.load(Ordering::Relaxed), 1, "only when made");
        // An upgrade that failed is read after.
        let failed = ListenUpgradeError { info: (), error: Refused::NotListed(KAD) };
        handler.on_connection_event(ConnectionEvent::ListenUpgradeError(failed));
        assert_eq!(wake(&mut handler), ["/a", "/kad"]);
        assert_eq!(reads.load(Ordering::Relaxed), 2);
    }

    const KAD: StreamProtocol = StreamProtocol::new("/kad");

    /// The node's own behaviour: the handlers whose protocols may change (Kademlia's,
    /// gossipsub's, the relay server's, the extension's) set their connection's flag, and
    /// its copy takes it over.
    #[tokio::test]
    async fn the_handlers_whose_protocols_may_change_set_their_connections_flag() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let (_, relay_client) = libp2p::relay::client::new(key.public().to_peer_id());
        let changes = Changes::default();
        let behaviour = crate::behaviour::Behaviour::new(
            &key,
            relay_client,
            &crate::Config::default(),
            libp2p::swarm::dummy::Behaviour,
            &changes,
        )
        .expect("behaviour");
        let mut behaviour = flat(behaviour, changes.clone());
        let peer = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id();
        let address: libp2p::Multiaddr = "/ip4/127.0.0.1/tcp/4040".parse().expect("address");
        let connection = ConnectionId::new_unchecked(1);
        let handler = behaviour
            .handle_established_outbound_connection(
                connection,
                peer,
                &address,
                libp2p::core::Endpoint::Dialer,
                libp2p::core::transport::PortUse::Reuse,
            )
            .expect("handler");
        assert_eq!(
            handler.tellers, 4,
            "Kademlia's, gossipsub's, the relay server's, the extension's"
        );
        assert_eq!(changes.take(connection).1, 0, "taken over by the copy");
    }

    #[test]
    fn a_change_on_a_connection_event_is_listed() {
        let (mut handler, _) = modal(&Changes::default(), false);
        assert_eq!(wake(&mut handler), ["/a", "/kad"]);
        let address: libp2p::Multiaddr = "/memory/1".parse().expect("address");
        handler.on_connection_event(ConnectionEvent::AddressChange(AddressChange {
            new_address: &address,
        }));
        assert_eq!(wake(&mut handler), ["/a"]);
    }

    #[test]
    fn a_change_nothing_announced_is_listed_a_second_later() {
        let (mut handler, reads) = modal(&Changes::default(), false);
        // Changed behind the wrapper's back (as libp2p-stream's list changes, or a handler's in
        // its own poll).
        handler.inner.server = false;
        assert_eq!(wake(&mut handler), ["/a", "/kad"], "not read yet");
        std::thread::sleep(READ_AFTER + Duration::from_millis(100));
        assert_eq!(wake(&mut handler), ["/a"]);
        assert_eq!(reads.load(Ordering::Relaxed), 3);
    }
}
