//! dkvs-net's timers run on tokio's clock, so a test can pause it: an idle node's hour passes
//! in milliseconds, and what it did in that hour is counted exactly.

use std::time::Duration;

use dkvs_net::libp2p::identity;
use dkvs_net::store::{Config as StoreConfig, Store};
use dkvs_net::{Config, Node, Transports};

#[tokio::test(start_paused = true)]
async fn an_idle_node_wakes_for_its_sweep_only_over_an_hour_of_paused_time() {
    let store = Store::in_memory(StoreConfig::default());
    let config = Config::default().with_transports(Transports::memory_only());
    let node = Node::spawn(identity::Keypair::generate_ed25519(), store, config).expect("spawns");
    node.listen_on("/memory/0".parse().expect("address")).await.expect("listens");
    let before = node.wakeups().await;
    let started = std::time::Instant::now();
    // Two seconds past the hour: the sweep due at the hour has run, whichever task the
    // runtime polled first at that instant.
    tokio::time::sleep(Duration::from_secs(3602)).await;
    let woke = node.wakeups().await - before;
    // The expiry sweep every 5 s (720 an hour), the replication rounds every 10 min and the
    // hourly republish round: nothing else wakes an idle node.
    assert!((720..=730).contains(&woke), "{woke} wake-ups in an hour");
    assert!(started.elapsed() < Duration::from_secs(30), "the hour did not take an hour");
    node.shutdown().await;
}
