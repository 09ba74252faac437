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

#[tokio::test(start_paused = true)]
async fn a_node_whose_seed_was_down_joins_it_when_it_comes_up() {
    let spawn = |key: identity::Keypair| {
        let config = Config::default().with_transports(Transports::memory_only());
        Node::spawn(key, Store::in_memory(StoreConfig::default()), config).expect("spawns")
    };
    let node = spawn(identity::Keypair::generate_ed25519());
    node.listen_on("/memory/0".parse().expect("address")).await.expect("listens");
    let seed_key = identity::Keypair::generate_ed25519();
    let seed_id = seed_key.public().to_peer_id();
    let addr: dkvs_net::libp2p::Multiaddr = "/memory/4011".parse().expect("address");
    assert!(node.add_peer(seed_id, addr.clone()).await.is_err(), "the seed is down");
    // Kademlia's own walk for a table of fewer than 20 peers comes 500 ms after the seed
    // was added, in real time (libp2p's timer): let it run, and fail, while the seed is down.
    std::thread::sleep(Duration::from_millis(700));
    tokio::task::yield_now().await;
    // The seed comes up a minute later at its address; nothing tells the node.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let seed = spawn(seed_key);
    seed.listen_on(addr).await.expect("listens");
    // The node walks its table again on its backoff (at about 35 s, 95 s and 215 s after the
    // failed dial; the table refresh is 15 minutes away) and finds the seed.
    let mut joined = false;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if node.connected_peers().await.contains(&seed_id) {
            joined = true;
            break;
        }
    }
    assert!(joined, "the node never dialed its seed again");
    node.shutdown().await;
    seed.shutdown().await;
}

#[tokio::test]
async fn a_node_refuses_to_start_with_a_duration_past_the_clock() {
    let config = Config::default()
        .with_transports(Transports::memory_only())
        .with_replication_interval(Duration::MAX);
    let store = Store::in_memory(StoreConfig::default());
    let error = Node::spawn(identity::Keypair::generate_ed25519(), store, config)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("replication_interval"), "{error}");
}
