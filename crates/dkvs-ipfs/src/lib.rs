//! The dkvs IPFS module: a standard IPFS node (bitswap, provider records, CIDs) that talks to
//! real IPFS peers; files are encrypted with a key derived from the account before they leave
//! the device. Not built yet: a later issue. It shares `dkvs-net`'s swarm and accounts.

pub use dkvs_net as net;
