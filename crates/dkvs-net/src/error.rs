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
    #[error("could not connect to {peer}: {}", dial_failure(source))]
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

/// Why a dial failed, in words: for each address tried, the address and the deepest cause
/// ("Connection refused (os error 111)"), not libp2p's nest of wrappers that repeats it.
pub fn dial_failure(error: &libp2p::swarm::DialError) -> String {
    use libp2p::TransportError;
    match error {
        libp2p::swarm::DialError::Transport(tried) if !tried.is_empty() => tried
            .iter()
            .map(|(addr, e)| match e {
                TransportError::MultiaddrNotSupported(_) => {
                    format!("{addr}: not an address this node dials")
                }
                TransportError::Other(e) => {
                    let mut deepest: &dyn std::error::Error = e;
                    while let Some(next) = deepest.source() {
                        deepest = next;
                    }
                    format!("{addr}: {deepest}")
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
        e => e.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dial_failure_names_each_address_and_its_deepest_cause() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let wrapped = std::io::Error::other(refused);
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().expect("multiaddr");
        let quic: Multiaddr = "/dns4/example.invalid/udp/1/quic-v1".parse().expect("multiaddr");
        let error = libp2p::swarm::DialError::Transport(vec![
            (addr, libp2p::TransportError::Other(wrapped)),
            (quic.clone(), libp2p::TransportError::MultiaddrNotSupported(quic)),
        ]);
        assert_eq!(
            dial_failure(&error),
            "/ip4/127.0.0.1/tcp/1: connection refused; \
             /dns4/example.invalid/udp/1/quic-v1: not an address this node dials"
        );
    }
}
