//! A complete dkvs node assembled from the crates: an identity, a store with a phone-sized
//! budget, a way into the network, a put, a get, a watch and a clean shutdown.
//!
//! `cargo run -p dkvs-net --example custom_node [-- /ip4/…/tcp/…/p2p/<peer id>]`. Without an
//! address it starts a second node in this process to join, and that node writes the update
//! the watch sees.

use std::time::Duration;

use dkvs_account::{KeyType, Keypair};
use dkvs_net::libp2p::{Multiaddr, identity, multiaddr::Protocol};
use dkvs_net::store::{Config as StoreConfig, Store};
use dkvs_net::{Config, Node};
use dkvs_record::{Draft, Key};

const HOUR_MS: u64 = 3_600_000;

fn spawn_node(store_bytes: u64) -> Result<Node, dkvs_net::NetError> {
    let store = Store::in_memory(StoreConfig::default().with_max_bytes(store_bytes));
    Node::spawn(identity::Keypair::generate_ed25519(), store, Config::default())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A phone-sized node: 32 MiB of records in memory.
    let node = spawn_node(32 << 20)?;
    node.listen_on("/ip4/127.0.0.1/tcp/0".parse()?).await?;
    let (seed, via) = match std::env::args().nth(1) {
        Some(addr) => (None, addr.parse::<Multiaddr>()?),
        None => {
            let seed = spawn_node(StoreConfig::default().max_bytes)?;
            let addr = seed.listen_on("/ip4/127.0.0.1/tcp/0".parse()?).await?;
            let addr = addr.with(Protocol::P2p(seed.peer_id()));
            (Some(seed), addr)
        }
    };
    node.dial(via).await?;
    if let Err(e) = node.bootstrap().await {
        eprintln!("bootstrap: {e} (fine in a network this small)");
    }

    let alice = Keypair::generate(KeyType::Ed25519);
    let key = Key::scoped(&alice.account_id(), "greeting")?;
    let mut watch = node.watch(&key).await?;
    let hello = Draft::new(key.clone(), b"hello".to_vec(), 1, HOUR_MS).sign(&alice)?;
    let receipt = node.put(hello).await?;
    println!("stored by {} of {} replicas", receipt.stored.len(), receipt.replicas);
    let found = node.get(&key).await?;
    let value = found.record.map(|r| String::from_utf8_lossy(r.value()).into_owned());
    println!("read back {value:?}, confirmed by {}", found.confirmations);

    // The owner writes again through another node; the watch here sees it.
    let writer = seed.as_ref().unwrap_or(&node);
    let again = Draft::new(key.clone(), b"hello again".to_vec(), 2, HOUR_MS).sign(&alice)?;
    writer.put(again).await?;
    loop {
        let update = tokio::time::timeout(Duration::from_secs(10), watch.next()).await?;
        let update = update.ok_or("the node stopped")?;
        println!(
            "watch: {} is now {:?} (seq {})",
            key,
            String::from_utf8_lossy(update.value()),
            update.seq()
        );
        if update.seq() == 2 {
            break;
        }
    }

    node.shutdown().await;
    if let Some(seed) = seed {
        seed.shutdown().await;
    }
    Ok(())
}
