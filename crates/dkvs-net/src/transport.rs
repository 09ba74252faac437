//! The transports a node speaks, chosen in its configuration ([`crate::Transports`]).
//!
//! TCP (noise, yamux) and QUIC by default; an in-process memory transport (`/memory/<n>`)
//! for tests and simulations of many nodes in one process. The relay client is added by the
//! node itself. WebSocket is left out: browsers would need secure WebSocket with a
//! certificate per node, and phones speak TCP and QUIC as well as any desktop.

use futures::future::Either;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, MemoryTransport, OptionalTransport};
use libp2p::core::upgrade::Version;
use libp2p::{PeerId, Transport as _, identity, noise, quic, tcp, yamux};

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

/// The node's transport: every chosen one, each authenticated as `key`.
pub(crate) fn build(
    key: &identity::Keypair,
    chosen: Transports,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let tcp = chosen
        .tcp
        .then(|| tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)))
        .map_or_else(OptionalTransport::none, OptionalTransport::some)
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
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    Ok(tcp
        .or_transport(quic)
        .or_transport(memory)
        .map(|either, _| match either {
            Either::Left(Either::Left(out) | Either::Right(out)) | Either::Right(out) => out,
        })
        .boxed())
}
