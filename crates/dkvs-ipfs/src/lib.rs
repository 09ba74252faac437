//! The dkvs IPFS module: a standard IPFS node inside a dkvs node. It speaks the public IPFS
//! protocols (bitswap 1.2.0, provider records on `/ipfs/kad/1.0.0`, UnixFS, CIDv0 and v1), so
//! it exchanges blocks with any IPFS implementation, in the node's one swarm and identity;
//! files an account adds are encrypted with a key derived from the account before their
//! blocks are made, unless they are added as public content.
//!
//! - [`blockstore`]: blocks on disk checked against their CIDs, bounded, with pins, garbage
//!   collection and a hot tier in memory.
//! - [`unixfs`]: the file format (dag-pb), a streaming writer and a reader; the same CIDs as
//!   Kubo and Helia for the same bytes and layout.
//! - [`crypt`]: the encrypted-file format (a header leaf, an AEAD per chunk).
//! - [`bitswap`] and [`exchange`]: the block exchange's wire format, and how a node runs it.
//! - [`Ipfs`]: the extension a node hosts (`NodeBuilder::with_extension`).
//! - [`files`]: [`files::add`], [`files::get`], [`files::share`], [`files::resolve`] through
//!   a node that hosts [`Ipfs`].
//!
//! Why this crate writes its own bitswap and UnixFS, and the known limits: the README.

pub mod bitswap;
pub mod blockstore;
pub mod crypt;
pub mod exchange;
pub mod files;
mod service;
pub mod streams;
pub mod unixfs;

pub use blockstore::{BlockError, BlockStore, BlockStoreConfig, GcReport, cid_of};
pub use cid::{self, Cid};
pub use dkvs_net as net;
pub use service::{Ipfs, IpfsEvent};
