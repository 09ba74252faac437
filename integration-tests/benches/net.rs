//! Network benchmark: N in-process nodes on loopback TCP (N = 10, 50, 100), puts and gets
//! through random nodes, latency p50/p95 and success rate; and, in the same run, the floor: a
//! get in a network of two nodes (one lookup, one request round trip on loopback).
//!
//! `cargo bench -p dkvs-integration-tests --bench net` (full), or with `-- --test` for a quick
//! check with 5 nodes (what CI runs). `-- --nodes 10,50` picks the sizes.

use std::time::{Duration, Instant};

use dkvs_account::{KeyType, Keypair};
use dkvs_integration_tests::testnet::TestNet;
use dkvs_net::Config;
use dkvs_record::{Draft, Key};

struct Stats {
    latencies: Vec<Duration>,
    failures: usize,
}

impl Stats {
    fn new() -> Stats {
        Stats { latencies: Vec::new(), failures: 0 }
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let index = ((sorted.len() - 1) as f64 * p).round() as usize;
        sorted[index]
    }

    fn success_rate(&self) -> f64 {
        let total = self.latencies.len() + self.failures;
        if total == 0 { 0.0 } else { self.latencies.len() as f64 / total as f64 }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn run(nodes: usize, ops: usize) -> anyhow::Result<(Stats, Stats, Duration)> {
    let started = Instant::now();
    let net = TestNet::start(nodes, Config::default()).await?;
    let setup = started.elapsed();
    let alice = Keypair::generate(KeyType::Ed25519);
    let keys: Vec<Key> = (0..ops)
        .map(|i| Key::scoped(&alice.account_id(), &format!("bench/{i}")).expect("key"))
        .collect();
    let mut puts = Stats::new();
    let mut gets = Stats::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    for key in &keys {
        let record = Draft::new(key.clone(), vec![7u8; 256], 1, 3_600_000).sign(&alice)?;
        let at = Instant::now();
        match net.put(next(nodes), record).await {
            Ok(Ok(_)) => puts.latencies.push(at.elapsed()),
            _ => puts.failures += 1,
        }
    }
    for key in &keys {
        let at = Instant::now();
        match net.get(next(nodes), key).await {
            Ok(Ok(outcome)) if outcome.record.is_some() => gets.latencies.push(at.elapsed()),
            _ => gets.failures += 1,
        }
    }
    net.shutdown().await;
    Ok((puts, gets, setup))
}

async fn floor(ops: usize) -> anyhow::Result<Duration> {
    let (_, gets, _) = run(2, ops).await?;
    Ok(gets.percentile(0.5))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--test");
    let sizes: Vec<usize> = match args.iter().position(|a| a == "--nodes") {
        Some(i) => args
            .get(i + 1)
            .map(|s| s.split(',').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default(),
        None if quick => vec![5],
        None => vec![10, 50, 100],
    };
    let ops = if quick { 10 } else { 200 };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let floor = floor(ops).await?;
        println!("floor: get in a 2-node network, p50 {:.2} ms", ms(floor));
        println!();
        println!("| nodes | setup s | put p50 ms | put p95 ms | put ok | get p50 ms | get p95 ms | get ok | get p50 / floor |");
        println!("|------:|--------:|-----------:|-----------:|-------:|-----------:|-----------:|-------:|----------------:|");
        for &n in &sizes {
            let (puts, gets, setup) = run(n, ops).await?;
            println!(
                "| {n} | {:.1} | {:.2} | {:.2} | {:.1}% | {:.2} | {:.2} | {:.1}% | {:.1}x |",
                setup.as_secs_f64(),
                ms(puts.percentile(0.5)),
                ms(puts.percentile(0.95)),
                100.0 * puts.success_rate(),
                ms(gets.percentile(0.5)),
                ms(gets.percentile(0.95)),
                100.0 * gets.success_rate(),
                gets.percentile(0.5).as_secs_f64() / floor.as_secs_f64().max(1e-9),
            );
            if quick && (puts.success_rate() < 1.0 || gets.success_rate() < 1.0) {
                anyhow::bail!("operations failed in the quick run");
            }
        }
        Ok(())
    })
}
