//! The dkvs network layer: a network-first signed key-value memory over libp2p.
//!
//! A [`Node`] runs a libp2p swarm (TCP and QUIC, noise, yamux; Kademlia on `/dkvs/kad/1.0.0`
//! for routing; the record protocol `/dkvs/record/2.0.0` for puts and gets, on one long-lived
//! stream per peer and direction, see [`lane`]; gossipsub for watches; identify, ping, relay,
//! DCUtR and AutoNAT) on top of a [`dkvs_store::Store`], which validates everything a peer
//! sends before it is kept.
//!
//! - [`Node::put`] stores locally, sends the record to the k closest peers and succeeds when a
//!   quorum holds it; the [`PutReceipt`] says which peers stored it and which refused, and why.
//! - [`Node::get`] asks the closest replicas (a random 12 of the 20 first, all of them unless
//!   those agree), verifies every answer, returns the newest record with its number of
//!   confirmations, and repairs stale replicas.
//! - [`Node::put_cas`], [`Node::delete`], [`Node::watch`] and [`Node::get_local`] complete it.

mod admission;
mod autorelay;
mod behaviour;
pub mod codec;
mod config;
mod defence;
mod durable;
mod error;
mod extension;
mod flat;
mod held;
mod identity;
mod idle;
pub mod lane;
mod nearby;
mod node;
mod ops;
mod outcome;
mod pace;
#[doc(hidden)]
pub mod placement;
mod probe;
mod quiet;
mod rate;
pub mod reconcile;
mod refresh;
mod replication;
mod stalled;
mod transport;
mod watch;
mod wrap;

pub use behaviour::{IDENTIFY_PROTOCOL, KAD_PROTOCOL};
pub use config::{Config, KadMode, Quorum};
pub use defence::{Network, Refused};
pub use error::{BootstrapError, DialError, ListenError, NetError, TurnError, dial_failure};
pub use extension::{Extension, GossipMessage, Host, LookupId, TopicError, Verdict};
pub use identity::{IdentityError, load_or_create_identity};
pub use node::{NatStatus, Node, NodeBuilder, Reachability, WeakNode};
pub use outcome::{GetError, GetOutcome, PutError, PutReceipt, Refusal, Source};
pub use pace::PacingStats;
pub use replication::ReplicationStats;
pub use transport::{Traffic, Transports};
pub use watch::{Watch, watch_topic};

pub use dkvs_store as store;
pub use libp2p;

// The README's example is compiled with the doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
