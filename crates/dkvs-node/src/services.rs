//! What a dkvs node hosts beside the key-value memory: mail and IPFS, composed into the one
//! extension a node takes. Each part is reached by its own type
//! (`node.with_extension(|mail: &mut Mail, host| ...)`), through [`Extension::find`].

use std::any::{Any, TypeId};

use dkvs_ipfs::{Ipfs, IpfsEvent};
use dkvs_mail::Mail;
use dkvs_net::libp2p::PeerId;
use dkvs_net::libp2p::request_response;
use dkvs_net::libp2p::swarm::NetworkBehaviour;
use dkvs_net::{Extension, GossipMessage, Host, LookupId, Verdict};

/// Mail and IPFS in one behaviour.
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "dkvs_net::libp2p::swarm::derive_prelude", to_swarm = "ServicesEvent")]
pub struct Services {
    mail: Mail,
    ipfs: Ipfs,
}

impl Services {
    /// Both parts.
    pub fn new(mail: Mail, ipfs: Ipfs) -> Services {
        Services { mail, ipfs }
    }
}

/// An event of one part.
#[derive(Debug)]
pub enum ServicesEvent {
    /// Mail's.
    Mail(request_response::Event<Vec<u8>, Vec<u8>>),
    /// IPFS's.
    Ipfs(IpfsEvent),
}

impl From<request_response::Event<Vec<u8>, Vec<u8>>> for ServicesEvent {
    fn from(event: request_response::Event<Vec<u8>, Vec<u8>>) -> ServicesEvent {
        ServicesEvent::Mail(event)
    }
}

impl From<IpfsEvent> for ServicesEvent {
    fn from(event: IpfsEvent) -> ServicesEvent {
        ServicesEvent::Ipfs(event)
    }
}

impl Extension for Services {
    fn on_event(&mut self, event: ServicesEvent, host: &mut Host<'_>) {
        match event {
            ServicesEvent::Mail(event) => self.mail.on_event(event, host),
            ServicesEvent::Ipfs(event) => self.ipfs.on_event(event, host),
        }
    }

    fn find(&mut self, type_id: TypeId) -> Option<&mut dyn Any> {
        if type_id == TypeId::of::<Services>() {
            return Some(self);
        }
        self.mail.find(type_id).or_else(|| self.ipfs.find(type_id))
    }

    // Only mail uses gossip topics and lookups.
    fn on_gossip(&mut self, message: GossipMessage, host: &mut Host<'_>) -> Verdict {
        self.mail.on_gossip(message, host)
    }

    fn on_closest_peers(&mut self, lookup: LookupId, peers: Vec<PeerId>, host: &mut Host<'_>) {
        self.mail.on_closest_peers(lookup, peers, host);
    }

    fn on_sweep(&mut self, host: &mut Host<'_>) {
        self.mail.on_sweep(host);
        self.ipfs.on_sweep(host);
    }
}
