//! A connection polls only the protocols that have something to do.
//!
//! libp2p polls a connection's whole handler tree (one handler per behaviour) every time the
//! connection wakes, and again after any of them made progress. A get at N = 100 wakes a
//! connection for the record protocol alone, yet gossipsub's, ping's, identify's, Kademlia's,
//! the relay's and AutoNAT's handlers were polled each time: 12-14% of the CPU of a network
//! answering gets (docs/benchmarks.md). [`Quiet`] wraps a behaviour so that its handler is
//! polled only when it can have work: it was woken, or told something
//! ([`ConnectionHandler::on_behaviour_event`], [`ConnectionHandler::on_connection_event`]),
//! or its last poll made progress.
//!
//! That is the poll contract every `Future` keeps: a handler that answers `Pending` has
//! arranged to be woken. Not every libp2p handler keeps it (gossipsub's reads the queue its
//! behaviour fills without a waker while it has no outbound stream; the relay client's hands
//! one relayed connection to its transport per poll): those are not wrapped, and neither may
//! be an extension's handler that counts on being polled for another protocol's wake.
//! (Gossipsub's wrapped and polled at least every fifth time was measured: 3% less CPU per
//! get, and a message it queues while its connection is quiet, at the connection's start or
//! after its stream failed, could wait past the second gossipsub keeps a forwarded message:
//! not kept.) As a last resort a wrapped handler that skipped [`ALWAYS_EVERY`] polls of its
//! connection in a row is polled however quiet it is, which bounds how long a missed wake can
//! stay missed on a busy connection; on an idle one, nothing is polled (as in libp2p). (A
//! bound in time instead, every handler polled on a wake 50 ms after the last, undid the
//! gain: at N = 100 a connection carries a request every few hundred milliseconds, so nearly
//! every wake came later than that.)
//!
//! The behaviour itself is only delegated to ([`crate::wrap`]); it derefs to the wrapped one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use libp2p::PeerId;
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionHandler, ConnectionHandlerEvent, ConnectionId, NetworkBehaviour, SubstreamProtocol,
    THandler,
};

/// A wrapped handler that skipped this many polls of its connection in a row is polled.
pub(crate) const ALWAYS_EVERY: u8 = 32;

/// A behaviour whose connection handlers are polled only when they have work.
pub(crate) type Quiet<B> = crate::wrap::Wrapped<B, Quieted>;

/// Wraps each handler in a [`Handler`].
#[derive(Default)]
pub(crate) struct Quieted {
    /// For handlers whose protocols may change: where their connection's flag is
    /// ([`crate::flat::Told`]), and whether progress in a poll may change them too.
    changes: Option<(crate::flat::Changes, bool)>,
}

impl Quieted {
    /// Wraps handlers whose protocols change only when they are told something (Kademlia's,
    /// the relay server's), and sets their connection's flag in `changes` then.
    pub(crate) fn telling(changes: &crate::flat::Changes) -> Quieted {
        Quieted { changes: Some((changes.clone(), false)) }
    }

    /// Wraps handlers whose protocols may change when they are told something or make
    /// progress in a poll (an extension's, which may be any), and sets their connection's
    /// flag in `changes` then.
    pub(crate) fn telling_progress(changes: &crate::flat::Changes) -> Quieted {
        Quieted { changes: Some((changes.clone(), true)) }
    }
}

impl<B: NetworkBehaviour> crate::wrap::Wrap<B> for Quieted {
    type Handler = Handler<B::ConnectionHandler>;

    fn wrap(&mut self, handler: THandler<B>, _: PeerId, connection: ConnectionId) -> Self::Handler {
        let told =
            self.changes.as_ref().map(|(changes, progress)| (changes.flag(connection), *progress));
        Handler::new(handler, told)
    }
}

/// Set when the wrapped handler is woken; wakes the connection's task.
///
/// The task's waker is kept, not taken by a wake (as an `AtomicWaker` would): a handler
/// skipped on a wake then needs no new registration, which an `AtomicWaker` wanted on every
/// poll of every wrapped handler (3% of the CPU of a 100-node network answering gets).
struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = self.task.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            task.wake_by_ref();
        }
    }
}

/// A connection handler polled only when it has work (see the module's docs).
pub(crate) struct Handler<H> {
    inner: H,
    flag: Arc<Flag>,
    /// The waker the inner handler is polled with: [`Flag`]'s.
    waker: Waker,
    /// Told something, or made progress, since it last answered `Pending`.
    due: bool,
    /// The connection's waker as last given to the flag.
    task: Option<Waker>,
    /// Polls of the connection skipped in a row.
    skipped: u8,
    /// If its protocols may change: set when it was told something, and after progress too
    /// if the second is true.
    told: Option<(crate::flat::Told, bool)>,
}

impl<H> Handler<H> {
    fn new(inner: H, told: Option<(crate::flat::Told, bool)>) -> Handler<H> {
        let flag = Arc::new(Flag { woken: AtomicBool::new(false), task: Mutex::new(None) });
        let waker = Waker::from(flag.clone());
        Handler { inner, flag, waker, task: None, due: true, skipped: 0, told }
    }
}

impl<H: ConnectionHandler> ConnectionHandler for Handler<H> {
    type FromBehaviour = H::FromBehaviour;
    type ToBehaviour = H::ToBehaviour;
    type InboundProtocol = H::InboundProtocol;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

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
        // The task's waker first: a wake from here on reaches the connection.
        if !self.task.as_ref().is_some_and(|task| task.will_wake(cx.waker())) {
            let task = cx.waker().clone();
            *self.flag.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task.clone());
            self.task = Some(task);
        }
        let woken = self.flag.woken.load(Ordering::Acquire)
            && self.flag.woken.swap(false, Ordering::AcqRel);
        if !(woken || self.due || self.skipped >= ALWAYS_EVERY) {
            self.skipped += 1;
            return Poll::Pending;
        }
        self.skipped = 0;
        let polled = self.inner.poll(&mut Context::from_waker(&self.waker));
        // Progress may leave more to do: the next wake polls it again.
        self.due = polled.is_ready();
        if let Some((told, true)) = &self.told
            && self.due
        {
            told.set();
        }
        polled
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        self.due = true;
        self.told.iter().for_each(|(told, _)| told.set());
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
        self.due = true;
        self.told.iter().for_each(|(told, _)| told.set());
        self.inner.on_connection_event(event)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use libp2p::core::upgrade::DeniedUpgrade;

    use super::*;

    /// A handler that counts its polls, keeps the last waker it was given, and answers
    /// `Ready` once for each event it was told.
    #[derive(Default)]
    struct Counting {
        polls: Arc<AtomicUsize>,
        waker: Option<Waker>,
        queued: usize,
    }

    impl ConnectionHandler for Counting {
        type FromBehaviour = ();
        type ToBehaviour = ();
        type InboundProtocol = DeniedUpgrade;
        type OutboundProtocol = DeniedUpgrade;
        type InboundOpenInfo = ();
        type OutboundOpenInfo = Infallible;

        fn listen_protocol(&self) -> SubstreamProtocol<DeniedUpgrade, ()> {
            SubstreamProtocol::new(DeniedUpgrade, ())
        }

        fn poll(
            &mut self,
            cx: &mut Context<'_>,
        ) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, Infallible, ()>> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.waker = Some(cx.waker().clone());
            if self.queued > 0 {
                self.queued -= 1;
                return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(()));
            }
            Poll::Pending
        }

        fn on_behaviour_event(&mut self, (): ()) {
            self.queued += 1;
        }

        fn on_connection_event(
            &mut self,
            _: ConnectionEvent<DeniedUpgrade, DeniedUpgrade, (), Infallible>,
        ) {
        }
    }

    /// The connection's task: counts its wakes.
    struct Task(AtomicUsize);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll(handler: &mut Handler<Counting>, task: &Arc<Task>) -> bool {
        let waker = Waker::from(task.clone());
        handler.poll(&mut Context::from_waker(&waker)).is_ready()
    }

    #[test]
    fn an_idle_handler_is_polled_only_when_woken_or_told() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut handler =
            Handler::new(Counting { polls: polls.clone(), ..Counting::default() }, None);
        let task = Arc::new(Task(AtomicUsize::new(0)));
        assert!(!poll(&mut handler, &task));
        assert_eq!(polls.load(Ordering::Relaxed), 1, "a new handler is polled");
        for _ in 0..5 {
            assert!(!poll(&mut handler, &task));
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "wakes for other protocols skip it");

        // Its own wake reaches the connection's task and earns one poll.
        handler.inner.waker.take().expect("it kept its waker").wake();
        assert_eq!(task.0.load(Ordering::Relaxed), 1, "the connection was woken");
        assert!(!poll(&mut handler, &task));
        assert!(!poll(&mut handler, &task));
        assert_eq!(polls.load(Ordering::Relaxed), 2);
        // And so does every later one: a wake does not use the connection's waker up, and
        // the skipped polls did not give it again.
        for wakes in 2..5 {
            handler.inner.waker.take().expect("it kept its waker").wake();
            assert_eq!(task.0.load(Ordering::Relaxed), wakes, "the connection was woken");
            assert!(!poll(&mut handler, &task));
            assert!(!poll(&mut handler, &task));
        }
        assert_eq!(polls.load(Ordering::Relaxed), 5);

        // An event from the behaviour is read on the next poll, and the poll after a `Ready`
        // asks again.
        handler.on_behaviour_event(());
        handler.on_behaviour_event(());
        assert!(poll(&mut handler, &task));
        assert!(poll(&mut handler, &task));
        assert!(!poll(&mut handler, &task));
        assert!(!poll(&mut handler, &task));
        assert_eq!(polls.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn a_handler_whose_list_may_change_sets_its_connections_flag() {
        let changes = crate::flat::Changes::default();
        let connection = ConnectionId::new_unchecked(7);
        let told = changes.flag(connection);
        let mut handler = Handler::new(Counting::default(), Some((told.clone(), true)));
        let task = Arc::new(Task(AtomicUsize::new(0)));
        assert!(!poll(&mut handler, &task));
        assert!(!told.take(), "nothing told, no progress");
        handler.on_behaviour_event(());
        assert!(told.take(), "told");
        // The event it was told makes progress in the poll after.
        assert!(poll(&mut handler, &task));
        assert!(told.take(), "progress");
        assert!(!poll(&mut handler, &task));
        assert!(!told.take());
        let address: libp2p::Multiaddr = "/memory/1".parse().expect("address");
        let change = libp2p::swarm::handler::AddressChange { new_address: &address };
        handler.on_connection_event(ConnectionEvent::AddressChange(change));
        assert!(told.take(), "a connection event");

        // One whose protocols change only when told: not after progress.
        let mut told_only = Handler::new(Counting::default(), Some((told.clone(), false)));
        told_only.on_behaviour_event(());
        assert!(told.take(), "told");
        assert!(poll(&mut told_only, &task));
        assert!(!told.take(), "its progress changes nothing");
    }

    #[test]
    fn a_wake_reaches_the_waker_the_connection_polled_with_last() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut handler =
            Handler::new(Counting { polls: polls.clone(), ..Counting::default() }, None);
        let (first, second) =
            (Arc::new(Task(AtomicUsize::new(0))), Arc::new(Task(AtomicUsize::new(0))));
        assert!(!poll(&mut handler, &first));
        // The connection is polled with another waker (its task moved): a skipped poll still
        // gives the flag the new one.
        assert!(!poll(&mut handler, &second));
        assert_eq!(polls.load(Ordering::Relaxed), 1, "the second poll was skipped");
        handler.inner.waker.take().expect("it kept its waker").wake();
        assert_eq!(first.0.load(Ordering::Relaxed), 0);
        assert_eq!(second.0.load(Ordering::Relaxed), 1, "the wake reached the new waker");
    }

    #[test]
    fn a_handler_that_is_never_woken_is_still_polled_now_and_then() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut handler =
            Handler::new(Counting { polls: polls.clone(), ..Counting::default() }, None);
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let wakes = 1 + 3 * (usize::from(ALWAYS_EVERY) + 1);
        for _ in 0..wakes {
            poll(&mut handler, &task);
        }
        assert_eq!(polls.load(Ordering::Relaxed), 4);
    }
}
