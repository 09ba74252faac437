//! Mail and channel benchmark on in-process nodes over loopback TCP (default configuration):
//!
//! - online delivery: a letter sent while its recipient's node watches, from the start of the
//!   send to the letter in the recipient's hands (p50, p95), beside the floor measured in the
//!   same run: one deposit round trip to one replica;
//! - offline fetch: 100 letters waiting, the time to fetch them all (5 replicas asked);
//! - channel propagation: a post from one node to every subscriber (p50, p95 over all
//!   deliveries) at 10 and 50 nodes;
//! - replica memory: process RSS growth per envelope kept by a replica (1 KiB bodies), against
//!   the envelope's own size and what the shelf accounts.
//!
//! `cargo bench -p dkvs-mail --bench mail` (full), `-- --test` (small sizes, what CI runs), or
//! `-- --memory` (the replica memory alone).

use std::time::{Duration, Instant};

use dkvs_account::{KeyType, Keypair};
use dkvs_mail::channel;
use dkvs_mail::client::request;
use dkvs_mail::wire::{Request, Response};
use dkvs_mail::{Envelope, Inbox, Mail, MailWatch, SendOptions, Shelf, ShelfConfig};
use dkvs_net::libp2p::PeerId;
use dkvs_net::{Config, NodeBuilder};
use dkvs_testnet::{Spawn, TestNet};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn mail_net(n: usize) -> anyhow::Result<TestNet> {
    let spawn: Spawn = std::sync::Arc::new(|identity, store, config, dir| {
        let mail = Mail::open(&dir.join("mail"), identity.clone(), ShelfConfig::default())?;
        Ok(NodeBuilder::new(identity.clone(), store, config).with_extension(|_| mail).spawn()?)
    });
    TestNet::start_custom(n, Config::default(), dkvs_store::Config::default(), spawn).await
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Online delivery and its floor; offline fetch of `stored` letters.
async fn mailboxes(nodes: usize, letters: usize, stored: usize) -> anyhow::Result<()> {
    let net = mail_net(nodes).await?;
    let options = SendOptions::default();
    let (alice, bob) = (
        Keypair::generate(KeyType::Ed25519),
        std::sync::Arc::new(Keypair::generate(KeyType::Ed25519)),
    );
    let reader = nodes - 1;
    let mut watch =
        MailWatch::start(net.node(reader).clone(), bob.clone(), options.clone()).await?;
    let mut inbox = Inbox::new();
    let (mut online, mut floor) = (Vec::new(), Vec::new());
    for i in 0..letters {
        // The floor: one deposit of a letter of the same size to one other node.
        let carol = Keypair::generate(KeyType::Ed25519).account_id();
        let envelope = Envelope::seal(&alice, &carol, vec![7; 256], now_ms(), 3_600_000)?;
        let at = Instant::now();
        let answer =
            request(net.node(0), net.peer_id(1), Request::Deposit(envelope.encode())).await;
        anyhow::ensure!(matches!(answer, Ok(Response::Custody(_))), "{answer:?}");
        floor.push(at.elapsed());

        let at = Instant::now();
        dkvs_mail::send(
            net.node(i % (nodes - 1)),
            &alice,
            &bob.account_id(),
            vec![7; 256],
            &options,
        )
        .await?;
        let fetched = tokio::time::timeout(Duration::from_secs(30), watch.next(&inbox)).await??;
        online.push(at.elapsed());
        dkvs_mail::ack(
            net.node(reader),
            &bob,
            &mut inbox,
            &fetched,
            &options.clone().with_read_receipts(false),
        )
        .await;
    }
    println!(
        "online delivery ({nodes} nodes, {letters} letters): p50 {:.1} ms, p95 {:.1} ms; one deposit round trip p50 {:.1} ms; ratio {:.1}x",
        ms(percentile(&online, 0.5)),
        ms(percentile(&online, 0.95)),
        ms(percentile(&floor, 0.5)),
        ms(percentile(&online, 0.5)) / ms(percentile(&floor, 0.5)).max(1e-6),
    );

    for i in 0..stored {
        dkvs_mail::send(
            net.node(i % (nodes - 1)),
            &alice,
            &bob.account_id(),
            vec![7; 256],
            &options,
        )
        .await?;
    }
    let at = Instant::now();
    let fetched = dkvs_mail::fetch(net.node(reader), &bob, &Inbox::new(), &options).await?;
    let took = at.elapsed();
    anyhow::ensure!(
        fetched.letters.len() == stored,
        "fetched {} of {stored}",
        fetched.letters.len()
    );
    println!(
        "offline fetch of {stored} letters ({nodes} nodes, {} replicas answered): {:.1} ms, {:.2} ms a letter",
        fetched.replicas.len(),
        ms(took),
        ms(took) / stored as f64
    );
    net.shutdown().await;
    Ok(())
}

/// A post from node 0 to every other subscriber, `posts` times.
async fn channels(nodes: usize, posts: usize) -> anyhow::Result<()> {
    let net = mail_net(nodes).await?;
    let name = "bench";
    let mut subs = Vec::new();
    for i in 1..nodes {
        subs.push(channel::subscribe(net.node(i), name, false).await?);
    }
    let topic = channel::topic(name)?;
    let formed = dkvs_testnet::eventually(Duration::from_secs(30), async || {
        let t = topic.clone();
        net.node(0)
            .with_extension::<Mail, _>(move |_, host| host.topic_peers(&t).len())
            .await
            .unwrap_or(0)
            >= (nodes - 1).min(3)
    })
    .await;
    anyhow::ensure!(formed, "the channel's mesh did not form");
    // Gossipsub grafts on its heartbeat: give the mesh a few of them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alice = Keypair::generate(KeyType::Ed25519);
    let mut latencies = Vec::new();
    let mut missed = 0;
    for i in 0..posts {
        let at = Instant::now();
        let body = format!("post {i}").into_bytes();
        channel::publish(net.node(0), &alice, name, body.clone()).await?;
        for sub in subs.iter_mut() {
            match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
                Ok(Some(post)) if post.body == body => latencies.push(at.elapsed()),
                _ => missed += 1,
            }
        }
    }
    println!(
        "channel propagation ({nodes} nodes, {posts} posts, {} deliveries): p50 {:.1} ms, p95 {:.1} ms, missed {missed}",
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.95)),
    );
    net.shutdown().await;
    Ok(())
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// RSS growth per envelope a replica keeps.
fn replica_memory(envelopes: usize) -> anyhow::Result<()> {
    // From before the envelopes are made: the shelf keeps the very bytes made here (moved in,
    // not copied), so the growth is the envelopes and their index.
    let before = rss_bytes();
    let now = now_ms();
    let alice = Keypair::generate(KeyType::Ed25519);
    let recipients: Vec<_> =
        (0..64).map(|_| Keypair::generate(KeyType::Ed25519).account_id()).collect();
    let made: Vec<Vec<u8>> = (0..envelopes)
        .map(|i| {
            let to = &recipients[i % recipients.len()];
            Envelope::seal(&alice, to, vec![7; 1024], now, 3_600_000).map(|e| e.encode())
        })
        .collect::<Result<_, _>>()?;
    let size: usize = made.iter().map(Vec::len).sum::<usize>() / envelopes;
    let mut config = ShelfConfig::default();
    config.total_bytes = u64::MAX;
    config.mailbox_bytes = u64::MAX;
    config.mailbox_messages = usize::MAX;
    let mut shelf = Shelf::new(config);
    for bytes in made {
        shelf
            .deposit_in_memory(bytes, PeerId::random(), now)
            .map_err(|r| anyhow::anyhow!("{r}"))?;
    }
    let grew = rss_bytes().saturating_sub(before);
    println!(
        "replica memory ({envelopes} envelopes of {size} bytes): RSS +{} bytes each ({:.2}x the envelope), the shelf accounts {} each",
        grew / envelopes as u64,
        (grew / envelopes as u64) as f64 / size as f64,
        shelf.bytes() / envelopes as u64,
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let test = std::env::args().any(|a| a == "--test");
    if std::env::args().any(|a| a == "--memory") {
        return replica_memory(20_000);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if test {
        // Small sizes: checks that the benchmark works, not how fast.
        replica_memory(200)?;
        runtime.block_on(mailboxes(4, 3, 10))?;
        runtime.block_on(channels(4, 2))?;
        return Ok(());
    }
    replica_memory(20_000)?;
    runtime.block_on(mailboxes(10, 50, 100))?;
    runtime.block_on(channels(10, 20))?;
    runtime.block_on(channels(50, 10))?;
    Ok(())
}
