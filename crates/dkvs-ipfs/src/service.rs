//! The IPFS extension a node hosts: bitswap ([`crate::exchange`]) on libp2p streams and a
//! second Kademlia, on the standard `/ipfs/kad/1.0.0`, for provider records (dkvs's own
//! records stay on dkvs's DHT), in the node's one swarm, with its identity.

use std::collections::HashSet;
use std::path::Path;

use cid::Cid;
use dkvs_net::libp2p::kad;
use dkvs_net::libp2p::kad::store::RecordStore as _;
use dkvs_net::libp2p::swarm::{ConnectionId, NetworkBehaviour};
use dkvs_net::libp2p::{Multiaddr, PeerId, identity};
use dkvs_net::{Extension, Host};
use tokio::sync::oneshot;

use crate::blockstore::{BlockError, BlockStore, BlockStoreConfig};
use crate::exchange::{Exchange, ExchangeEvent, Fetched};

/// Provider records are 16 KiB at most on the wire (kad's own packet limit); an inbound one
/// is charged that much.
const PROVIDER_RECORD_COST: usize = 512;
/// Keys other peers' provider records may take here (at most 20 providers each).
const REMOTE_PROVIDER_KEYS: usize = 4096;
/// Roots this node provides at most.
const OWN_PROVIDER_KEYS: usize = 16_384;

/// The IPFS extension (see the module docs).
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "dkvs_net::libp2p::swarm::derive_prelude", to_swarm = "IpfsEvent")]
pub struct Ipfs {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    exchange: Exchange,
}

/// What the extension's parts report (handled in [`Extension::on_event`]).
#[derive(Debug)]
pub enum IpfsEvent {
    /// From the IPFS DHT.
    Kad(Box<kad::Event>),
    /// From the bitswap exchange.
    Exchange(crate::exchange::ExchangeEvent),
}

impl From<kad::Event> for IpfsEvent {
    fn from(event: kad::Event) -> IpfsEvent {
        IpfsEvent::Kad(Box::new(event))
    }
}

impl From<crate::exchange::ExchangeEvent> for IpfsEvent {
    fn from(event: crate::exchange::ExchangeEvent) -> IpfsEvent {
        IpfsEvent::Exchange(event)
    }
}

impl Ipfs {
    /// The extension for a node whose libp2p key is `key`, keeping blocks in `dir` (made if
    /// missing). Must be called within a tokio runtime.
    pub fn open(
        dir: &Path,
        key: &identity::Keypair,
        config: BlockStoreConfig,
    ) -> Result<Ipfs, BlockError> {
        let store = BlockStore::open(dir, config)?;
        let peer_id = key.public().to_peer_id();
        let mut kad_config = kad::Config::new(kad::PROTOCOL_NAME);
        kad_config
            .set_record_filtering(kad::StoreInserts::FilterBoth)
            .set_periodic_bootstrap_interval(None);
        // Keys with providers, this node's and others' together; others' are held to
        // REMOTE_PROVIDER_KEYS (`on_kad`), so they can never crowd out this node's own.
        let store_config = kad::store::MemoryStoreConfig {
            max_provided_keys: REMOTE_PROVIDER_KEYS + OWN_PROVIDER_KEYS,
            ..kad::store::MemoryStoreConfig::default()
        };
        let mut kad = kad::Behaviour::with_config(
            peer_id,
            kad::store::MemoryStore::with_config(peer_id, store_config),
            kad_config,
        );
        kad.set_mode(Some(kad::Mode::Client));
        let exchange = Exchange::new(store);
        Ok(Ipfs { kad, exchange })
    }

    /// The block store.
    pub fn store(&self) -> &BlockStore {
        self.exchange.store()
    }

    /// Connected peers that speak bitswap.
    pub fn peers(&self) -> Vec<PeerId> {
        self.exchange.peers()
    }

    /// Blocks this node is fetching for a reader that still waits.
    pub fn fetching(&self) -> usize {
        self.exchange.fetching()
    }

    /// Dials an IPFS peer (as `ipfs swarm connect`); returns the dial's connection, to ask
    /// [`Ipfs::dial_outcome`] about.
    pub fn connect(&mut self, addr: Multiaddr) -> ConnectionId {
        self.exchange.connect(addr)
    }

    /// How a dial of [`Ipfs::connect`] ended: `None` while it is under way, the error's words
    /// if it failed.
    pub fn dial_outcome(&self, dial: ConnectionId) -> Option<Result<(), String>> {
        self.exchange.dial_outcome(dial)
    }

    /// Wants the block `cid` from the network; it comes on `tx`.
    pub fn want(&mut self, cid: Cid, prefer: Option<PeerId>, tx: oneshot::Sender<Fetched>) {
        self.exchange.want(cid, prefer, tx);
    }

    /// [`Ipfs::want`] for each of `cids`, asked in one message to each peer; a receiver for
    /// each.
    pub fn want_all(
        &mut self,
        cids: Vec<Cid>,
        prefer: Option<PeerId>,
    ) -> Vec<(Cid, oneshot::Receiver<Fetched>)> {
        let (wants, receivers) = cids
            .into_iter()
            .map(|cid| {
                let (tx, rx) = oneshot::channel();
                ((cid, tx), (cid, rx))
            })
            .unzip();
        self.exchange.want_all(wants, prefer);
        receivers
    }

    /// Blocks now kept here: served to peers that wanted them, and `root` provided on the
    /// IPFS DHT.
    pub fn announce(&mut self, root: Option<Cid>, cids: &[Cid]) {
        self.exchange.announce(cids);
        if let Some(root) = root {
            self.provide(root);
        }
    }

    fn provide(&mut self, root: Cid) {
        if let Err(e) = self.kad.start_providing(kad::RecordKey::new(&root.hash().to_bytes())) {
            tracing::warn!(%root, "cannot provide on the IPFS DHT: {e}");
        }
    }

    /// Whether another peer's provider record for `key` may be kept: a key already held, or
    /// room among [`REMOTE_PROVIDER_KEYS`] (after dropping keys whose records all expired).
    fn room_for_remote(&mut self, key: &kad::RecordKey) -> bool {
        let keys = &mut self.exchange.remote_provider_keys;
        if keys.contains(key) {
            return true;
        }
        if keys.len() >= REMOTE_PROVIDER_KEYS {
            let now = std::time::Instant::now();
            let store = self.kad.store_mut();
            keys.retain(|k| {
                let mut live = false;
                for record in store.providers(k) {
                    if record.is_expired(now) {
                        store.remove_provider(k, &record.provider);
                    } else {
                        live = true;
                    }
                }
                live
            });
        }
        if keys.len() >= REMOTE_PROVIDER_KEYS {
            return false;
        }
        keys.insert(key.clone());
        true
    }

    /// Looks for providers of `root` on the IPFS DHT and dials each found; the peers found
    /// come on `tx` when the lookup ends.
    pub fn find_providers(&mut self, root: Cid, tx: oneshot::Sender<Vec<PeerId>>) {
        let id = self.kad.get_providers(kad::RecordKey::new(&root.hash().to_bytes()));
        self.exchange.lookups.insert(id, (HashSet::new(), tx));
    }

    /// Peers whose wantlists this node remembers.
    pub fn wantlists(&self) -> usize {
        self.exchange.wantlists()
    }

    /// Messages and blocks dropped so far: messages the node's admission refused (size, rate,
    /// ban), frames that did not decode, blocks nobody asked for, messages for a peer whose
    /// queue was full.
    pub fn dropped(&self) -> u64 {
        self.exchange.dropped
    }

    /// Bitswap entries (wants, presences, blocks to send) queued for peers and not yet written
    /// (a peer that does not read holds at most two full messages' worth; past that, messages
    /// to it are dropped and counted in [`Ipfs::dropped`]).
    pub fn queued(&self) -> usize {
        self.exchange.queued()
    }

    fn on_kad(&mut self, event: kad::Event, host: &mut Host<'_>) {
        match event {
            kad::Event::InboundRequest {
                request: kad::InboundRequest::AddProvider { record: Some(record) },
            } => {
                // kad checked that the provider is the sender.
                if host.admit(record.provider, PROVIDER_RECORD_COST, 16 << 10).is_err() {
                    return;
                }
                if !self.room_for_remote(&record.key) {
                    tracing::debug!("provider record not kept: no room for other peers' keys");
                    return;
                }
                if let Err(e) = self.kad.store_mut().add_provider(record) {
                    tracing::debug!("provider record not kept: {e}");
                }
            }
            // A peer that reached us and speaks the IPFS DHT: its addresses come from
            // identify, which the IPFS DHT does not hear.
            kad::Event::UnroutablePeer { peer } => {
                for addr in self.exchange.addresses.get(&peer).cloned().unwrap_or_default() {
                    self.kad.add_address(&peer, addr);
                }
            }
            kad::Event::OutboundQueryProgressed { id, result, step, .. } => {
                if let kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                    providers,
                    ..
                })) = result
                    && let Some((found, _)) = self.exchange.lookups.get_mut(&id)
                {
                    let me = host.peer_id();
                    let new: Vec<PeerId> =
                        providers.into_iter().filter(|p| *p != me && found.insert(*p)).collect();
                    // Dialed while the lookup runs: kad gives the addresses it learnt.
                    for peer in new {
                        self.exchange.dial_peer(peer);
                    }
                }
                if step.last
                    && let Some((found, tx)) = self.exchange.lookups.remove(&id)
                {
                    let _ = tx.send(found.into_iter().collect());
                }
            }
            _ => {}
        }
    }
}

impl Extension for Ipfs {
    fn on_event(&mut self, event: IpfsEvent, host: &mut Host<'_>) {
        // The IPFS DHT serves when dkvs's does (a node that others can reach).
        let mode = if host.dht_server() { kad::Mode::Server } else { kad::Mode::Client };
        if self.kad.mode() != mode {
            self.kad.set_mode(Some(mode));
        }
        // Pinned files are provided again after a restart, once there is a peer to tell.
        if let IpfsEvent::Exchange(ExchangeEvent::Connected(_)) = &event
            && !self.exchange.pins_provided
        {
            self.exchange.pins_provided = true;
            for root in self.store().pins() {
                self.provide(root);
            }
        }
        match event {
            IpfsEvent::Exchange(event) => self.exchange.on_event(event, host),
            IpfsEvent::Kad(event) => self.on_kad(*event, host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn other_peers_provider_records_never_crowd_out_this_nodes_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = identity::Keypair::generate_ed25519();
        let mut ipfs = Ipfs::open(dir.path(), &key, BlockStoreConfig::default()).expect("opens");
        let remote = PeerId::random();
        for i in 0..REMOTE_PROVIDER_KEYS + 10 {
            let k = kad::RecordKey::new(&(i as u64).to_be_bytes());
            let admitted = ipfs.room_for_remote(&k);
            assert_eq!(admitted, i < REMOTE_PROVIDER_KEYS, "key {i}");
            if admitted {
                let record = kad::ProviderRecord::new(k, remote, Vec::new());
                ipfs.kad.store_mut().add_provider(record).expect("kept");
            }
        }
        // A key already held takes more providers.
        assert!(ipfs.room_for_remote(&kad::RecordKey::new(&0u64.to_be_bytes())));
        for i in 0..1000u32 {
            let root = crate::cid_of(0x55, &i.to_be_bytes());
            ipfs.kad
                .start_providing(kad::RecordKey::new(&root.hash().to_bytes()))
                .expect("this node's own roots still fit");
        }
    }
}
