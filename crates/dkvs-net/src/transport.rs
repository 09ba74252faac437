//! The transports a node speaks, chosen in its configuration ([`crate::Transports`]).
//!
//! TCP (noise, yamux) and QUIC by default; an in-process memory transport (`/memory/<n>`)
//! for tests and simulations of many nodes in one process; the relay client's circuits (the
//! node makes the client and hands its transport here). WebSocket is left out: browsers would need secure WebSocket with a
//! certificate per node, and phones speak TCP and QUIC as well as any desktop.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use futures::future::Either;
use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, ListenerId, MemoryTransport, OptionalTransport};
use libp2p::core::upgrade::Version;
use libp2p::{Multiaddr, PeerId, Transport as _, identity, noise, quic, tcp, yamux};

use crate::stalled::Scope;

/// Which transports a node listens and dials on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transports {
    /// TCP with noise and yamux. Default: on.
    pub tcp: bool,
    /// QUIC (TLS 1.3 built in). Default: on.
    pub quic: bool,
    /// The in-process memory transport (`/memory/<port>`): nodes in one process reach each
    /// other without sockets. Default: off.
    pub memory: bool,
}

impl Default for Transports {
    fn default() -> Transports {
        Transports { tcp: true, quic: true, memory: false }
    }
}

impl Transports {
    /// The memory transport only: for many nodes in one process (tests, simulations).
    pub fn memory_only() -> Transports {
        Transports { tcp: false, quic: false, memory: true }
    }
}

/// The bytes a node's connections carried on the wire since it started, framing and
/// encryption included ([`crate::Node::traffic`]): every TCP and memory-transport connection,
/// relayed ones inside them; QUIC's datagrams are not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
}

/// Bytes received, by the [`Scope`] of the way they came (indexed by it).
pub(crate) type Heard = [u64; 3];

/// The node's byte counters, shared by all its connections: bytes out, and bytes in by the
/// [`Scope`] of the way they came.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters(Arc<[AtomicU64; 4]>);

impl Counters {
    pub(crate) fn traffic(&self) -> Traffic {
        Traffic {
            bytes_in: self.heard().iter().sum(),
            bytes_out: self.0[0].load(Ordering::Relaxed),
        }
    }

    /// The bytes received so far, by the scope of the way they came.
    pub(crate) fn heard(&self) -> Heard {
        [Scope::Host, Scope::Local, Scope::Internet]
            .map(|scope| self.0[heard_at(scope)].load(Ordering::Relaxed))
    }
}

/// A connection's byte stream, counted into its node's [`Counters`].
struct Counted<S> {
    inner: S,
    counters: Counters,
    /// Where its bytes in are counted by the scope of the way to its peer.
    heard: usize,
}

/// Where [`Counters`] counts the bytes in that came `scope`'s way.
fn heard_at(scope: Scope) -> usize {
    1 + scope as usize
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        self.counters.0[self.heard].fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.counters.0[0].fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.counters.0[0].fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Wraps each connection's stream of a transport in a [`Counted`].
fn count<S>(
    counters: &Counters,
) -> impl FnOnce(S, libp2p::core::ConnectedPoint) -> Counted<S> + Clone + use<S> {
    let counters = counters.clone();
    move |inner, endpoint| {
        let heard = heard_at(Scope::of(endpoint.get_remote_address()));
        Counted { inner, counters, heard }
    }
}

/// The longest a connection may take to set up, either way, on every transport (TCP, QUIC,
/// memory, a relayed circuit): connect, noise, yamux. The swarm builder puts this bound around
/// the whole transport (`node.rs`; libp2p's builder always adds one, 10 s unless told).
///
/// Out, without it a dial to an address whose firewall drops packets (a NAT router, a departed
/// peer) hangs for the kernel's two minutes of SYN retries, and an AutoNAT dial-back outlives
/// the probe that asked for it. Its length is what a lookup that asks a dead peer can wait for
/// it on the internet (an operation's lookup ends at 5 s regardless): 10 s is libp2p's own
/// default, and more than a phone on a slow link needs for three or four round trips.
///
/// In, the dialer is connected already, and noise and yamux take an honest one two or three
/// round trips. A silent one holds a file descriptor and a place among the handshakes in
/// flight (admission.rs) this long; a flood must open it again as often.
pub(crate) const SETUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether another socket holds the port of `addr` (TCP, or QUIC's UDP; a port other than 0):
/// the error a bind of it gives. libp2p's TCP listeners share their port with other sockets
/// (`SO_REUSEPORT`, so that dials can go out from it), so a second node started on a taken
/// port listened beside the first, and the kernel split the connections between the two. A
/// socket that does not share its port, bound for a moment, finds it taken: a TCP one by a
/// listener (connections of an earlier run waiting to close do not count), a UDP one by any
/// socket. An IPv6 one only on IPv6, as libp2p listens (a node on `/ip4/0.0.0.0/tcp/4040`
/// and `/ip6/::/tcp/4040` takes its own port twice).
pub(crate) fn port_taken(addr: &Multiaddr) -> Option<io::Error> {
    use libp2p::multiaddr::Protocol;
    use socket2::{Domain, Socket, Type};
    // A relay's circuit names the relay's address, not one this node binds.
    if addr.iter().any(|p| matches!(p, Protocol::P2p(_) | Protocol::P2pCircuit)) {
        return None;
    }
    let mut parts = addr.iter();
    let ip: std::net::IpAddr = match parts.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    let (port, tcp) = match parts.next()? {
        Protocol::Tcp(port) if port != 0 => (port, true),
        Protocol::Udp(port) if port != 0 => (port, false),
        _ => return None,
    };
    let at = std::net::SocketAddr::new(ip, port);
    let bound = (|| {
        let kind = if tcp { Type::STREAM } else { Type::DGRAM };
        let socket = Socket::new(Domain::for_address(at), kind, None)?;
        if at.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_address(tcp)?;
        socket.bind(&at.into())
    })();
    let taken = bound.err().filter(|e| e.kind() == io::ErrorKind::AddrInUse)?;
    let said = format!(
        "{taken}: another socket listens on it (another program's, or this node's own on \
         another listen address); choose another address"
    );
    Some(io::Error::new(io::ErrorKind::AddrInUse, said))
}

/// The node's transport: every chosen one and the relay client's circuits (`relay`, when
/// given), each authenticated as `key`, its bytes counted into `counters` (a circuit's are
/// counted in the connection to its relay), its dials that reached another peer noted in
/// `misdialed`.
pub(crate) fn build(
    key: &identity::Keypair,
    chosen: Transports,
    counters: &Counters,
    misdialed: &Misdialed,
    relay: Option<libp2p::relay::client::Transport>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let tcp = chosen
        .tcp
        .then(|| tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)))
        .map_or_else(OptionalTransport::none, OptionalTransport::some)
        .map(count(counters))
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    let quic = chosen
        .quic
        .then(|| quic::tokio::Transport::new(quic::Config::new(key)))
        .map_or_else(OptionalTransport::none, OptionalTransport::some)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    let memory = chosen
        .memory
        .then(MemoryTransport::default)
        .map_or_else(OptionalTransport::none, OptionalTransport::some)
        .map(count(counters))
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    let chosen = tcp.or_transport(quic).or_transport(memory).map(|either, _| match either {
        Either::Left(Either::Left(out) | Either::Right(out)) | Either::Right(out) => out,
    });
    let relay = relay
        .map_or_else(OptionalTransport::none, OptionalTransport::some)
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    let misdialed = misdialed.clone();
    let checked = relay
        .or_transport(NoSelfDial::new(chosen))
        .map(|either, _| either.into_inner())
        .boxed()
        .and_then(move |(peer, muxer), endpoint| {
            let reached = match another_peer(peer, &endpoint) {
                Some((address, another)) => {
                    misdialed.note(address.clone());
                    Err(another)
                }
                None => Ok((peer, muxer)),
            };
            futures::future::ready(reached)
        })
        .map_err(|e| e.either(|e| e, io::Error::other));
    Ok(checked.boxed())
}

/// A dial for one peer that reached another: its address's last `/p2p/<id>` (the swarm adds
/// the dialed peer's to every address) is not the peer that authenticated there.
///
/// libp2p dials a peer's addresses at once, takes the first connection that opens, and checks
/// the peer's id only then: when that connection was another peer's, the whole dial failed
/// (`DialError::WrongPeerId`), though the peer's other addresses may have worked. Peers hand
/// out addresses another peer answers at: the loopback and private addresses every node lists
/// (a dial to a peer on another host reached a node on this one, at the same port), a port
/// that a peer which left was given to another. Checked as each connection opens, such an
/// address fails on its own, and the dial goes on with the others.
#[derive(Debug, thiserror::Error)]
#[error("the dialed address answered as peer {reached}, not {expected}")]
pub(crate) struct AnotherPeer {
    pub(crate) expected: PeerId,
    pub(crate) reached: PeerId,
}

/// The address dialed and the error, when a connection that authenticated `peer` at
/// `endpoint` is not the peer it was dialed for; `None` for the peer dialed, an inbound
/// connection, or a dial for no peer in particular.
fn another_peer(
    peer: PeerId,
    endpoint: &libp2p::core::ConnectedPoint,
) -> Option<(&Multiaddr, AnotherPeer)> {
    use libp2p::multiaddr::Protocol;
    let libp2p::core::ConnectedPoint::Dialer { address, .. } = endpoint else { return None };
    match address.iter().last() {
        Some(Protocol::P2p(expected)) if expected != peer => {
            Some((address, AnotherPeer { expected, reached: peer }))
        }
        _ => None,
    }
}

/// The addresses (each with the dialed peer's `/p2p/<id>`) at which the transport's dials
/// reached another peer ([`AnotherPeer`]) and the node has not looked at yet, newest last.
/// The node learns which attempts of a failed dial these were from here rather than from the
/// attempt's error: the swarm's layers wrap it in types that hide it, and its text is not
/// this node's to trust (a QUIC peer can fill a close reason).
#[derive(Clone, Debug, Default)]
pub(crate) struct Misdialed(Arc<std::sync::Mutex<std::collections::VecDeque<Multiaddr>>>);

/// Most addresses [`Misdialed`] holds. The node reads a peer's when a dial of it ends, or a
/// connection to it opens; a dial that ends otherwise (for no peer in particular) leaves
/// them, and the oldest go.
const MAX_MISDIALED: usize = 64;

impl Misdialed {
    fn note(&self, address: Multiaddr) {
        let mut noted = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if noted.len() >= MAX_MISDIALED {
            noted.pop_front();
        }
        noted.push_back(address);
    }

    /// The addresses at which dials for `peer` reached another peer; forgets them.
    pub(crate) fn take_for(&self, peer: &PeerId) -> Vec<Multiaddr> {
        use libp2p::multiaddr::Protocol;
        let mut noted = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (theirs, others) = noted
            .drain(..)
            .partition(|a| matches!(a.iter().last(), Some(Protocol::P2p(p)) if p == *peer));
        *noted = others;
        theirs.into()
    }
}

/// A transport that refuses to dial its own listen addresses.
///
/// A node listening on `0.0.0.0:4040` (the default) listens on `127.0.0.1:4040` too, and tells
/// its peers so (identify lists every listen address); Kademlia and identify hand those
/// addresses out with the peer's. Every node on the default configuration listens on the same
/// port, so a dial to a peer on another host also tried `127.0.0.1:4040`, which reached this
/// node itself; libp2p dials a peer's addresses at once and takes the first connection that
/// opens, and over any real network this node's own loopback answers first: the whole dial
/// failed with a wrong peer id. Seen with `dkvs node` processes in network namespaces, one link
/// slowed to a real network's pace: a node never reached a peer its lookups found. (The swarm
/// drops its own listen addresses from a dial, but only on an exact match, and Kademlia's and
/// identify's addresses end in the peer's `/p2p/<id>`.) A dial to an address this node listens
/// on reaches this node (or, for a TCP port another process shares with SO_REUSEPORT, that
/// process: never the peer), so it is refused here, before any socket is opened, and the dial
/// goes on with the peer's other addresses.
struct NoSelfDial<T> {
    inner: T,
    /// This node's listen addresses, by the listener that announced them.
    own: HashMap<ListenerId, Vec<Multiaddr>>,
}

impl<T> NoSelfDial<T> {
    fn new(inner: T) -> NoSelfDial<T> {
        NoSelfDial { inner, own: HashMap::new() }
    }
}

impl<T: libp2p::Transport + Unpin> libp2p::Transport for NoSelfDial<T> {
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = T::Dial;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), libp2p::TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.own.remove(&id);
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: libp2p::core::transport::DialOpts,
    ) -> Result<Self::Dial, libp2p::TransportError<Self::Error>> {
        let mut bare = addr.clone();
        if matches!(bare.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) {
            bare.pop();
        }
        if self.own.values().flatten().any(|own| *own == bare) {
            return Err(libp2p::TransportError::MultiaddrNotSupported(addr));
        }
        self.inner.dial(addr, opts)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<libp2p::core::transport::TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        use libp2p::core::transport::TransportEvent;
        let event = ready!(Pin::new(&mut self.inner).poll(cx));
        match &event {
            TransportEvent::NewAddress { listener_id, listen_addr } => {
                self.own.entry(*listener_id).or_default().push(listen_addr.clone());
            }
            TransportEvent::AddressExpired { listener_id, listen_addr } => {
                if let Some(addrs) = self.own.get_mut(listener_id) {
                    addrs.retain(|a| a != listen_addr);
                }
            }
            // A closed listener announces no expiry of its addresses.
            TransportEvent::ListenerClosed { listener_id, .. } => {
                self.own.remove(listener_id);
            }
            _ => {}
        }
        Poll::Ready(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::core::transport::{DialOpts, PortUse, TransportEvent};
    use libp2p::core::{Endpoint, multiaddr::Protocol};
    use std::time::Duration;

    const DIAL: DialOpts = DialOpts { role: Endpoint::Dialer, port_use: PortUse::Reuse };

    fn refused<D, E>(dialed: Result<D, libp2p::TransportError<E>>) -> bool {
        matches!(dialed, Err(libp2p::TransportError::MultiaddrNotSupported(_)))
    }

    #[test]
    fn a_node_refuses_to_dial_what_it_listens_on_and_only_while_it_does() {
        let mut transport = NoSelfDial::new(MemoryTransport::default());
        let id = ListenerId::next();
        transport.listen_on(id, "/memory/0".parse().expect("address")).expect("listens");
        let next = futures::future::poll_fn(|cx| Pin::new(&mut transport).poll(cx));
        let TransportEvent::NewAddress { listen_addr, .. } = futures::executor::block_on(next)
        else {
            panic!("the listener announces its address first");
        };
        // As Kademlia and identify give addresses: with a peer id, here another peer's.
        let as_a_peers = listen_addr.clone().with(Protocol::P2p(PeerId::random()));
        assert!(refused(transport.dial(as_a_peers, DIAL)), "this node's own address");
        assert!(refused(transport.dial(listen_addr.clone(), DIAL)));
        let other: Multiaddr = "/memory/1".parse().expect("address");
        assert!(!refused(transport.dial(other, DIAL)), "another address is dialed");
        assert!(transport.remove_listener(id));
        assert!(!refused(transport.dial(listen_addr, DIAL)), "no longer this node's");
    }

    #[test]
    fn bytes_in_are_counted_by_the_way_they_came() {
        use futures::AsyncReadExt as _;
        use libp2p::core::ConnectedPoint;
        let counters = Counters::default();
        let read = |address: &str, bytes: &[u8]| {
            let address: Multiaddr = address.parse().expect("address");
            let endpoint =
                ConnectedPoint::Listener { local_addr: address.clone(), send_back_addr: address };
            let mut stream = count(&counters)(futures::io::Cursor::new(bytes.to_vec()), endpoint);
            let mut got = Vec::new();
            futures::executor::block_on(stream.read_to_end(&mut got)).expect("read");
        };
        read("/ip4/192.168.1.9/tcp/1", &[1; 10]);
        read("/ip4/127.0.0.1/tcp/1", &[1; 3]);
        read("/ip6/2001:db8::1/udp/1/quic-v1", &[1; 100]);
        read("/memory/4", &[1; 2]);
        assert_eq!(counters.heard(), [5, 10, 100]);
        assert_eq!(counters.traffic().bytes_in, 115);
    }

    #[tokio::test]
    async fn a_dial_that_reaches_another_peer_fails_on_its_own_and_is_noted() {
        let (a_key, b_key) =
            (identity::Keypair::generate_ed25519(), identity::Keypair::generate_ed25519());
        let b_peer = b_key.public().to_peer_id();
        let misdialed = Misdialed::default();
        let memory = Transports::memory_only();
        let mut a =
            build(&a_key, memory, &Counters::default(), &misdialed, None).expect("transport");
        let mut b = build(&b_key, memory, &Counters::default(), &Misdialed::default(), None)
            .expect("transport");
        b.listen_on(ListenerId::next(), "/memory/0".parse().expect("address")).expect("listens");
        let next = futures::future::poll_fn(|cx| Pin::new(&mut b).poll(cx));
        let TransportEvent::NewAddress { listen_addr, .. } = next.await else {
            panic!("the listener announces its address first");
        };
        // B accepts every connection and completes its handshake.
        let accepting = tokio::spawn(async move {
            loop {
                let next = futures::future::poll_fn(|cx| Pin::new(&mut b).poll(cx));
                if let TransportEvent::Incoming { upgrade, .. } = next.await {
                    tokio::spawn(upgrade);
                }
            }
        });
        // Dialed for a peer that does not answer there: the attempt fails, and says why.
        let elsewhere = listen_addr.clone().with(Protocol::P2p(PeerId::random()));
        let dial = a.dial(elsewhere.clone(), DIAL).expect("dials");
        let error = tokio::time::timeout(Duration::from_secs(10), dial).await.expect("in time");
        let Err(error) = error else { panic!("another peer answered: the attempt fails") };
        assert!(error.to_string().contains(&b_peer.to_string()), "{error}");
        let peer = |a: &Multiaddr| match a.iter().last() {
            Some(Protocol::P2p(p)) => p,
            _ => panic!("{a} names no peer"),
        };
        assert_eq!(
            misdialed.take_for(&peer(&elsewhere)),
            std::slice::from_ref(&elsewhere),
            "noted"
        );
        assert!(misdialed.take_for(&peer(&elsewhere)).is_empty(), "once");
        // Dialed for the peer that answers there, or for no peer in particular: connected.
        let there = listen_addr.clone().with(Protocol::P2p(b_peer));
        for address in [there, listen_addr] {
            let dial = a.dial(address.clone(), DIAL).expect("dials");
            let reached = tokio::time::timeout(Duration::from_secs(10), dial).await.expect("time");
            assert_eq!(reached.expect("connects").0, b_peer, "{address}");
            assert!(misdialed.take_for(&b_peer).is_empty(), "{address}");
        }
        accepting.abort();
    }

    #[tokio::test]
    async fn a_dial_goes_on_past_an_address_where_another_peer_answers() {
        use futures::StreamExt as _;
        use libp2p::swarm::{Swarm, SwarmEvent, dial_opts::DialOpts as Dial, dummy};
        let swarm = |key: identity::Keypair| {
            let transport = build(
                &key,
                Transports::memory_only(),
                &Counters::default(),
                &Misdialed::default(),
                None,
            )
            .expect("transport");
            let config = libp2p::swarm::Config::with_tokio_executor();
            Swarm::new(transport, dummy::Behaviour, key.public().to_peer_id(), config)
        };
        let listening = async |mut s: Swarm<dummy::Behaviour>| {
            s.listen_on("/memory/0".parse().expect("address")).expect("listens");
            loop {
                if let SwarmEvent::NewListenAddr { address, .. } = s.select_next_some().await {
                    let peer = *s.local_peer_id();
                    let task = tokio::spawn(async move {
                        loop {
                            s.select_next_some().await;
                        }
                    });
                    return (peer, address, task);
                }
            }
        };
        let (other, other_addr, other_task) =
            listening(swarm(identity::Keypair::generate_ed25519())).await;
        let (wanted, wanted_addr, wanted_task) =
            listening(swarm(identity::Keypair::generate_ed25519())).await;
        let mut dialer = swarm(identity::Keypair::generate_ed25519());
        // One address at a time, in order: the first reaches the other peer. Before, that
        // connection ended the dial with a wrong peer id, and the second was never tried.
        let one_at_a_time = std::num::NonZeroU8::new(1).expect("one");
        let dial = Dial::peer_id(wanted)
            .addresses(vec![other_addr, wanted_addr])
            .override_dial_concurrency_factor(one_at_a_time)
            .build();
        dialer.dial(dial).expect("dials");
        let reached = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match dialer.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => return Ok(peer_id),
                    SwarmEvent::OutgoingConnectionError { error, .. } => return Err(error),
                    _ => {}
                }
            }
        })
        .await
        .expect("in time");
        assert_eq!(reached.expect("the dial went on to the peer's other address"), wanted);
        assert_ne!(wanted, other);
        other_task.abort();
        wanted_task.abort();
    }

    #[test]
    fn a_port_another_socket_listens_on_is_taken() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let port = tcp.local_addr().expect("bound").port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr");
        let taken = port_taken(&addr).expect("taken");
        assert_eq!(taken.kind(), io::ErrorKind::AddrInUse);
        let any: Multiaddr = format!("/ip4/0.0.0.0/tcp/{port}").parse().expect("addr");
        assert!(port_taken(&any).is_some(), "every address of the host takes it in too");
        drop(tcp);
        assert!(port_taken(&addr).is_none(), "free again");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("a port");
        let port = udp.local_addr().expect("bound").port();
        let quic: Multiaddr = format!("/ip4/127.0.0.1/udp/{port}/quic-v1").parse().expect("addr");
        assert!(port_taken(&quic).is_some(), "QUIC's port");
        let circuit = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}/p2p-circuit", PeerId::random());
        assert!(port_taken(&circuit.parse().expect("addr")).is_none(), "a relay's port");
        for free in ["/ip4/127.0.0.1/tcp/0", "/memory/7"] {
            assert!(port_taken(&free.parse().expect("addr")).is_none(), "{free}");
        }
        // IPv4 and IPv6 apart, as libp2p listens (where the host has IPv6).
        let v4 = std::net::TcpListener::bind("0.0.0.0:0").expect("a port");
        let port = v4.local_addr().expect("bound").port();
        let v6: Multiaddr = format!("/ip6/::/tcp/{port}").parse().expect("addr");
        assert!(port_taken(&v6).is_none(), "IPv6 does not take IPv4's port in");
    }
}
