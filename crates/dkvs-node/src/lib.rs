//! The dkvs node: the `dkvs` binary's daemon (`dkvs node`), its local HTTP API, and the
//! command line that talks to it.
//!
//! A node runs from a home directory (`--home`, `DKVS_HOME`, default `~/.dkvs`) that holds the
//! accounts, the node's identity, its configuration and its data; see [`home`]. Client commands
//! (`dkvs put`, `get`, ...) are thin wrappers over the HTTP API ([`api`], `openapi.json` in this crate).

pub mod api;
pub mod client;
pub mod config;
pub mod home;
pub mod metrics;
pub mod run;
mod serve;
pub mod services;

pub use dkvs_ipfs as ipfs;
pub use dkvs_mail as mail;
pub use dkvs_net as net;
