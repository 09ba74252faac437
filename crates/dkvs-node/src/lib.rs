//! The dkvs node (issue 4): the `dkvs` binary with the node daemon, the command line and the
//! local HTTP API. Not built yet; until then the README runs the store demo.

pub use dkvs_ipfs as ipfs;
pub use dkvs_mail as mail;
pub use dkvs_net as net;
