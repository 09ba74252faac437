//! A relay that lies about reachability, for tests: it serves relay reservations as any
//! libp2p relay does, and answers every AutoNAT dial-back request with "I dialed you at the
//! address I see you at", without dialing, or after dialing back from the very address the asker
//! dialed (as a peer behind the asker's NAT mapping could). Built from plain libp2p parts, as
//! an attacker would build it; the AutoNAT answer is written by hand (libp2p keeps its codec
//! private).

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use anyhow::anyhow;
use dkvs_net::libp2p::core::ConnectedPoint;
use dkvs_net::libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use dkvs_net::libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use dkvs_net::libp2p::{
    self, Multiaddr, PeerId, StreamProtocol, identify, identity, noise, relay, request_response,
    tcp, yamux,
};
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, StreamExt as _};
use tokio::sync::watch;

/// AutoNAT v1's protocol.
const AUTONAT: StreamProtocol = StreamProtocol::new("/libp2p/autonat/1.0.0");

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "dkvs_net::libp2p::swarm::derive_prelude")]
struct Behaviour {
    relay: relay::Behaviour,
    identify: identify::Behaviour,
    autonat: request_response::Behaviour<LyingCodec>,
}

/// Reads a dial-back request (a length-prefixed protobuf, not parsed) and writes any answer.
#[derive(Clone, Default)]
struct LyingCodec;

async fn read_prefixed<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut len = 0usize;
    for shift in (0..35).step_by(7) {
        let mut byte = [0u8; 1];
        io.read_exact(&mut byte).await?;
        len |= usize::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            if len > 4096 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "message too long"));
            }
            let mut bytes = vec![0u8; len];
            io.read_exact(&mut bytes).await?;
            return Ok(bytes);
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "length prefix too long"))
}

async fn write_prefixed<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    let mut framed = varint(bytes.len());
    framed.extend_from_slice(bytes);
    io.write_all(&framed).await?;
    io.close().await
}

fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// AutoNAT v1's `Message { type: DIAL_RESPONSE, dialResponse { status: OK, addr } }`.
fn dialed_you_at(addr: &Multiaddr) -> Vec<u8> {
    let addr = addr.to_vec();
    // DialResponse: field 1 (status) = 0 (OK), field 3 (addr) = bytes.
    let mut response = vec![0x08, 0x00, 0x1a];
    response.extend(varint(addr.len()));
    response.extend(addr);
    // Message: field 1 (type) = 1 (DIAL_RESPONSE), field 3 (dialResponse) = the above.
    let mut message = vec![0x08, 0x01, 0x1a];
    message.extend(varint(response.len()));
    message.extend(response);
    message
}

impl request_response::Codec for LyingCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_prefixed(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_prefixed(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_prefixed(io, &r).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        r: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_prefixed(io, &r).await
    }
}

/// How a lying relay answers AutoNAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lie {
    /// Answers without dialing.
    Blind,
    /// First dials back to the address the asker's connection came from, from the address the
    /// asker dialed (libp2p reuses a listener's port; over QUIC, one UDP socket serves every
    /// connection), so the dial-back rides the mapping a NAT made for the asker's own dial.
    ThroughTheMapping,
}

/// A running lying relay on loopback (TCP and QUIC).
pub struct LyingRelay {
    peer_id: PeerId,
    addrs: Vec<Multiaddr>,
    lies: watch::Receiver<(usize, usize)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LyingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LyingRelay {
    /// Starts one that tells every AutoNAT client it dialed it at the address the client's
    /// connection came from (its observed address, one the client has).
    pub async fn spawn(lie: Lie) -> anyhow::Result<LyingRelay> {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
            .with_quic()
            .with_behaviour(|key: &identity::Keypair| Behaviour {
                relay: relay::Behaviour::new(key.public().to_peer_id(), relay::Config::default()),
                identify: identify::Behaviour::new(identify::Config::new(
                    dkvs_net::IDENTIFY_PROTOCOL.to_owned(),
                    key.public(),
                )),
                autonat: request_response::Behaviour::with_codec(
                    LyingCodec,
                    [(AUTONAT, request_response::ProtocolSupport::Inbound)],
                    request_response::Config::default(),
                ),
            })?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
        swarm.listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse()?)?;
        let mut addrs = Vec::new();
        while addrs.len() < 2 {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                // A relay hands its own addresses out in reservations.
                swarm.add_external_address(address.clone());
                addrs.push(address);
            }
        }
        let peer_id = *swarm.local_peer_id();
        let (count, lies) = watch::channel((0usize, 0usize));
        let task = tokio::spawn(async move {
            // Where each peer's connection to the liar came from.
            let mut came_from: HashMap<PeerId, Multiaddr> = HashMap::new();
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished {
                        peer_id,
                        endpoint: ConnectedPoint::Listener { send_back_addr, .. },
                        ..
                    } => {
                        came_from.insert(peer_id, send_back_addr);
                    }
                    SwarmEvent::ConnectionEstablished {
                        endpoint: ConnectedPoint::Dialer { .. },
                        ..
                    } => count.send_modify(|(_, dialed)| *dialed += 1),
                    SwarmEvent::Behaviour(BehaviourEvent::Autonat(
                        request_response::Event::Message {
                            peer,
                            message: request_response::Message::Request { channel, .. },
                            ..
                        },
                    )) => {
                        if lie == Lie::ThroughTheMapping
                            && let Some(addr) = came_from.get(&peer)
                        {
                            let opts = DialOpts::peer_id(peer)
                                .addresses(vec![addr.clone()])
                                .condition(PeerCondition::Always)
                                .build();
                            let _ = swarm.dial(opts);
                        }
                        let Some(named) = came_from.get(&peer) else {
                            continue;
                        };
                        let answer = dialed_you_at(named);
                        let autonat = &mut swarm.behaviour_mut().autonat;
                        if autonat.send_response(channel, answer).is_ok() {
                            count.send_modify(|(lies, _)| *lies += 1);
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok(LyingRelay { peer_id, addrs, lies, task })
    }

    /// Its peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Its listen address over `transport` ("tcp" or "quic-v1").
    pub fn addr(&self, transport: &str) -> Multiaddr {
        let over = |a: &&Multiaddr| a.to_string().contains(transport);
        self.addrs.iter().find(over).cloned().unwrap_or_else(|| self.addrs[0].clone())
    }

    /// How many dial-back requests it has answered with its lie.
    pub fn lies(&self) -> usize {
        self.lies.borrow().0
    }

    /// How many connections it dialed that were established (dial-backs).
    pub fn dialed_back(&self) -> usize {
        self.lies.borrow().1
    }

    /// Waits (at most `within`) until it has lied at least once.
    pub async fn lied(&self, within: Duration) -> anyhow::Result<()> {
        let mut lies = self.lies.clone();
        tokio::time::timeout(within, lies.wait_for(|(n, _)| *n > 0))
            .await
            .map_err(|_| anyhow!("no AutoNAT request came within {within:?}"))?
            .map_err(|_| anyhow!("lying relay gone"))?;
        Ok(())
    }
}
