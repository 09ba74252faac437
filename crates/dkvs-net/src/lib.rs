//! The dkvs network layer (issue 3): Kademlia on its own protocol with a storing side that
//! validates every record through `dkvs-store`, quorum puts with receipts, network-first gets
//! with read repair, watch, replication and republish, and defences against lying peers.
//!
//! Not built yet. The crate exists so that the workspace layering and the libp2p 0.57
//! dependency set (one ed25519-dalek 3, one k256 0.14 shared with `dkvs-account`) are fixed
//! and checked now.

pub use dkvs_store as store;
pub use libp2p;
