//! dkvs mailboxes (signed, encrypted to the recipient, kept for it while offline) and named
//! public channels. Not built yet: a later issue. It shares `dkvs-net`'s swarm and accounts.

pub use dkvs_net as net;
