//! A protocol from outside dkvs-net plugs into a node through the extension seam: an echo
//! request-response protocol and a gossip topic, sharing the node's swarm, its admission step
//! (size, rate, ban) and its gossip validation.

use std::collections::HashMap;
use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

use dkvs_integration_tests::testnet::eventually;
use dkvs_net::libp2p::core::Endpoint;
use dkvs_net::libp2p::core::transport::PortUse;
use dkvs_net::libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use dkvs_net::libp2p::{Multiaddr, PeerId, StreamProtocol, identity, request_response};
use dkvs_net::{Config, Extension, GossipMessage, Host, Node, NodeBuilder, Verdict};
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};

const ECHO: StreamProtocol = StreamProtocol::new("/test/echo/1");
/// The echo protocol's message limit.
const LIMIT: usize = 1024;
const TOPIC: &str = "/test/chat";

/// Reads a whole message, at most one byte over the limit, so that the admission step sees an
/// oversized message as such.
#[derive(Clone, Default)]
struct EchoCodec;

async fn read_limited<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io.take(LIMIT as u64 + 1).read_to_end(&mut bytes).await?;
    Ok(bytes)
}

impl request_response::Codec for EchoCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_limited(io).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        // A peer that drops a request unanswered closes its stream: nothing to read is no
        // answer (every request echoed here has bytes), not an empty one.
        let bytes = read_limited(io).await?;
        if bytes.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the stream ended unanswered",
            ));
        }
        Ok(bytes)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&request).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&response).await?;
        io.close().await
    }
}

type Answer = oneshot::Sender<Result<Vec<u8>, String>>;

/// The extension: echo requests are admitted by the host before they are answered; gossip on
/// the chat topic is valid only if it starts with "ok".
struct Echo {
    inner: request_response::Behaviour<EchoCodec>,
    waiting: HashMap<request_response::OutboundRequestId, Answer>,
    heard: mpsc::UnboundedSender<Vec<u8>>,
    rejected: usize,
}

impl Echo {
    fn new() -> (Echo, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (heard, hearing) = mpsc::unbounded_channel();
        let inner = request_response::Behaviour::new(
            [(ECHO, request_response::ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
        );
        (Echo { inner, waiting: HashMap::new(), heard, rejected: 0 }, hearing)
    }

    fn ask(&mut self, peer: PeerId, bytes: Vec<u8>) -> oneshot::Receiver<Result<Vec<u8>, String>> {
        let (tx, rx) = oneshot::channel();
        let id = self.inner.send_request(&peer, bytes);
        self.waiting.insert(id, tx);
        rx
    }
}

impl Extension for Echo {
    #[allow(clippy::collapsible_match, reason = "admission has an effect; not a match guard")]
    fn on_event(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>, host: &mut Host<'_>) {
        use request_response::{Event, Message};
        match event {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => {
                // The one admission step: a refused request is dropped unanswered.
                if host.admit(peer, request.len(), LIMIT).is_ok() {
                    let _ = self.inner.send_response(channel, request);
                }
            }
            Event::Message { message: Message::Response { request_id, response }, .. } => {
                if let Some(answer) = self.waiting.remove(&request_id) {
                    let _ = answer.send(Ok(response));
                }
            }
            Event::OutboundFailure { request_id, error, .. } => {
                if let Some(answer) = self.waiting.remove(&request_id) {
                    let _ = answer.send(Err(error.to_string()));
                }
            }
            _ => {}
        }
    }

    fn on_gossip(&mut self, message: GossipMessage, _: &mut Host<'_>) -> Verdict {
        if message.topic == TOPIC && message.data.starts_with(b"ok") {
            let _ = self.heard.send(message.data);
            Verdict::Accept
        } else {
            self.rejected += 1;
            Verdict::Reject
        }
    }
}

// A hand-written delegation to the inner behaviour, as a protocol crate writes one when its
// behaviour keeps state beside its sub-behaviours.
impl NetworkBehaviour for Echo {
    type ConnectionHandler =
        <request_response::Behaviour<EchoCodec> as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = request_response::Event<Vec<u8>, Vec<u8>>;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(connection, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(connection, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(connection, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, connection, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

struct Peer {
    node: Node,
    addr: Multiaddr,
    hearing: mpsc::UnboundedReceiver<Vec<u8>>,
    _dir: tempfile::TempDir,
}

async fn peer() -> anyhow::Result<Peer> {
    peer_with(Config::default()).await
}

async fn peer_with(config: Config) -> anyhow::Result<Peer> {
    let dir = tempfile::tempdir()?;
    let store = dkvs_store::Store::open(dir.path(), dkvs_store::Config::default())?;
    let (echo, hearing) = Echo::new();
    let node = NodeBuilder::new(identity::Keypair::generate_ed25519(), store, config)
        .with_extension(|_| echo)
        .spawn()?;
    let addr = node.listen_on("/ip4/127.0.0.1/tcp/0".parse()?).await?;
    Ok(Peer { node, addr, hearing, _dir: dir })
}

async fn echo(from: &Node, to: PeerId, bytes: Vec<u8>) -> anyhow::Result<Result<Vec<u8>, String>> {
    let answer =
        from.with_extension(move |echo: &mut Echo, _: &mut Host<'_>| echo.ask(to, bytes)).await?;
    Ok(tokio::time::timeout(Duration::from_secs(10), answer).await??)
}

async fn subscribe(node: &Node) -> anyhow::Result<()> {
    node.with_extension(|_: &mut Echo, host: &mut Host<'_>| host.subscribe(TOPIC)).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_shares_the_swarm_the_admission_step_and_gossip_validation()
-> anyhow::Result<()> {
    let step = Duration::from_secs(20);
    // B is the hub; A talks to B; C hears the topic only through A; F floods B; O sends B
    // oversized requests.
    // B's rate limit is the setting under test: 20 requests a second, 40 at once, so that a
    // flood is a flood however loaded the machine is.
    let b = peer_with(Config::default().with_peer_rate(20, 40)).await?;
    let (mut a, mut c, f, o) = (peer().await?, peer().await?, peer().await?, peer().await?);
    for p in [&a, &f, &o] {
        tokio::time::timeout(step, p.node.add_peer(b.node.peer_id(), b.addr.clone())).await??;
    }
    tokio::time::timeout(step, c.node.add_peer(a.node.peer_id(), a.addr.clone())).await??;

    // The protocol works through the node's own swarm.
    let answer = echo(&a.node, b.node.peer_id(), b"hello".to_vec()).await?;
    assert_eq!(answer, Ok(b"hello".to_vec()));
    // A type the node does not host is a clear error.
    let missing = a
        .node
        .with_extension(|_: &mut dkvs_net::libp2p::swarm::dummy::Behaviour, _: &mut Host<'_>| ())
        .await;
    assert!(matches!(missing, Err(dkvs_net::NetError::NoSuchExtension(_))), "{missing:?}");

    // Gossip: valid messages travel B -> A -> C; an invalid one stops at A, which validates it.
    for p in [&a, &b, &c] {
        subscribe(&p.node).await?;
    }
    let mut n = 0;
    let reached = eventually(step, async || {
        n += 1;
        let _ = b
            .node
            .with_extension(move |_: &mut Echo, host: &mut Host<'_>| {
                host.publish(TOPIC, format!("ok {n}").into_bytes())
            })
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.hearing.try_recv().is_ok()
    })
    .await;
    assert!(reached, "a valid message reaches C through A");
    b.node
        .with_extension(|_: &mut Echo, host: &mut Host<'_>| {
            host.publish(TOPIC, b"bad".to_vec())?;
            host.publish(TOPIC, b"ok last".to_vec())
        })
        .await??;
    let mut last = None;
    while last.as_deref() != Some(&b"ok last"[..]) {
        let heard = tokio::time::timeout(step, c.hearing.recv()).await?.expect("open");
        assert_ne!(heard, b"bad".to_vec(), "an invalid message is not forwarded");
        last = Some(heard);
    }
    let rejected = a.node.with_extension(|echo: &mut Echo, _: &mut Host<'_>| echo.rejected).await?;
    assert_eq!(rejected, 1, "A rejected the invalid message");
    while let Ok(heard) = a.hearing.try_recv() {
        assert_ne!(heard, b"bad".to_vec());
    }

    // An oversized request is refused by the admission step, and its sender banned.
    let big = echo(&o.node, b.node.peer_id(), vec![7; LIMIT + 1]).await?;
    assert!(big.is_err(), "no answer to an oversized request: {big:?}");
    assert!(b.node.banned_peers().await.contains(&o.node.peer_id()));

    // A flood is rate-limited, then banned, by the node's shared limiter.
    let flood = (0..600).map(|i| echo(&f.node, b.node.peer_id(), format!("{i}").into_bytes()));
    let answers = futures::future::join_all(flood).await;
    let answered = answers.iter().filter(|a| matches!(a, Ok(Ok(_)))).count();
    assert!(answered < 600, "some of the flood is refused: {answered} answered");
    let banned =
        eventually(step, async || b.node.banned_peers().await.contains(&f.node.peer_id())).await;
    assert!(banned, "the flooder is banned");
    // Banned from the whole node: its record protocol refuses the flooder too. (A ban
    // starts closing the connections; they are gone once their tasks say so.)
    let gone =
        eventually(step, async || !b.node.connected_peers().await.contains(&f.node.peer_id()));
    assert!(gone.await, "the flooder is disconnected");

    // Honest traffic goes on.
    let answer = echo(&a.node, b.node.peer_id(), b"still here".to_vec()).await?;
    assert_eq!(answer, Ok(b"still here".to_vec()));
    for p in [a, b, c, f, o] {
        p.node.shutdown().await;
    }
    Ok(())
}
