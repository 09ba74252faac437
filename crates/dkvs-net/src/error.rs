//! Errors of the node's operations, one type per operation, each with its source.

use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};

/// Why a node could not start or do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The swarm could not be built.
    #[error("could not set up the network: {0}")]
    Setup(String),
    /// [`Node::with_extension`] named a type the node does not host.
    #[error("the node hosts no extension of type {0}")]
    NoSuchExtension(&'static str),
    /// The node is shutting down.
    #[error("the node is shut down")]
    Shutdown,
}

/// Why [`crate::Node::listen_on`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// No transport of the node handles this kind of address.
    #[error("no transport of this node listens on {addr}")]
    Unsupported {
        /// The address.
        addr: Multiaddr,
    },
    /// The transport could not listen (the port is taken, the address is not this host's).
    #[error("could not listen on {addr}: {source}")]
    Io {
        /// The address.
        addr: Multiaddr,
        /// The transport's error.
        source: std::io::Error,
    },
    /// The node is shutting down.
    #[error("the node is shut down")]
    Shutdown,
}

/// Why [`crate::Node::add_peer`] could not connect.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// Every address of the peer failed (refused, unreachable, another peer id answered).
    #[error("could not connect to {peer}: {source}")]
    Failed {
        /// The peer.
        peer: PeerId,
        /// libp2p's error, shared by everyone who waited for this dial.
        source: Arc<libp2p::swarm::DialError>,
    },
    /// The address does not say which peer to expect ([`crate::Node::dial`]).
    #[error("{addr} does not end in /p2p/<peer id>")]
    NoPeerId {
        /// The address.
        addr: Multiaddr,
    },
    /// The peer is banned here.
    #[error("{peer} is banned")]
    Banned {
        /// The peer.
        peer: PeerId,
    },
    /// The node is shutting down.
    #[error("the node is shut down")]
    Shutdown,
}

/// Why [`crate::Node::bootstrap`] failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// The node knows no peer to start from: give it one first ([`crate::Node::add_peer`]).
    #[error("no known peers to bootstrap from; add one first")]
    NoKnownPeers,
    /// The walk through the network did not finish in time.
    #[error("the walk through the network timed out: {0}")]
    Timeout(#[source] libp2p::kad::BootstrapError),
    /// The node is shutting down.
    #[error("the node is shut down")]
    Shutdown,
}

/// Why [`crate::Node::turn`] gives no turn.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TurnError {
    /// So much already waits to go to the peer that this message's turn would come after an
    /// operation's timeout: it was not queued. Send it later, or to another peer.
    #[error(
        "rate limited: so much already waits to go to {peer} that this message would wait past the timeout"
    )]
    RateLimited {
        /// The peer.
        peer: PeerId,
    },
    /// The node is shutting down.
    #[error("the node is shut down")]
    Shutdown,
}
