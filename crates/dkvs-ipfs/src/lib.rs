//! The dkvs IPFS module: a standard IPFS node (bitswap, provider records, CIDs) that talks to
//! real IPFS peers; files are encrypted with a key derived from the account before they leave
//! the device. It shares `dkvs-net`'s swarm and accounts.
//!
//! Built so far: [`blockstore`], blocks on disk checked against their CIDs, bounded, with pins
//! and garbage collection and a hot tier in memory. The rest (UnixFS, encryption, bitswap,
//! provider records, the CLI and API, interop with Helia and Kubo) is the IPFS issue; the plan
//! is in `docs/ipfs-plan.md`.

pub mod bitswap;
pub mod blockstore;
pub mod crypt;
pub mod exchange;
pub mod files;
mod service;
pub mod unixfs;

pub use blockstore::{BlockError, BlockStore, BlockStoreConfig, GcReport, cid_of};
pub use cid::Cid;
pub use dkvs_net as net;
pub use service::{Ipfs, IpfsEvent};
