//! The workload on N dkvs nodes in this process (`dkvs_testnet::TestNet`), each on its
//! default configuration: real TCP on 127.0.0.1, or the memory transport for simulations.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Context as _;
use dkvs_account::{KeyType, Keypair};
use dkvs_net::{Config, Transports};
use dkvs_record::{Draft, Key};
use dkvs_testnet::TestNet;
use indicatif::ProgressBar;

use crate::workload::{
    self, DkvsRun, Network, Plan, Read, Report, Samples, put_majority, rss_bytes,
};
use crate::{Opts, wire};

/// A record lives an hour: far longer than any run.
const TTL_MS: u64 = 3_600_000;

struct Accounts {
    keys: Vec<Keypair>,
}

impl Accounts {
    fn new(plan: &Plan) -> anyhow::Result<Accounts> {
        let keys = plan
            .accounts
            .iter()
            .map(|secret| Keypair::from_secret_bytes(KeyType::Ed25519, secret))
            .collect::<Result<_, _>>()?;
        Ok(Accounts { keys })
    }

    fn key(&self, plan: &Plan, item: usize) -> anyhow::Result<Key> {
        let it = &plan.items[item];
        Ok(Key::scoped(&self.keys[it.account].account_id(), &it.name)?)
    }
}

fn config(opts: &Opts) -> Config {
    let config = match opts.transport.as_str() {
        "memory" => Config::default().with_transports(Transports::memory_only()),
        _ => Config::default(),
    };
    match opts.max_connections {
        Some(max) => config.with_max_connections(max),
        None => config,
    }
}

/// Bytes sent by all live nodes so far.
fn bytes_sent(net: &TestNet) -> u64 {
    net.alive().into_iter().map(|i| net.node(i).traffic().bytes_out).sum()
}

/// Reads `item` through node `node`: whether it was the newest version, and the requests the
/// get sent (none said when it failed).
async fn read(
    net: &TestNet,
    plan: &Plan,
    accounts: &Accounts,
    item: usize,
    node: usize,
) -> (Read, Option<u32>) {
    let Ok(key) = accounts.key(plan, item) else { return (Read::Missing, None) };
    match net.get(node, &key).await {
        Ok(Ok(outcome)) => {
            let read = match outcome.record {
                Some(record) if record.seq() == plan.versions => {
                    if record.value() == plan.value(item, plan.versions).as_slice() {
                        Read::Newest
                    } else {
                        Read::Missing
                    }
                }
                Some(record) if record.seq() < plan.versions => Read::Stale(record.seq()),
                Some(_) => Read::Missing,
                None => Read::Missing,
            };
            (read, Some(outcome.requests))
        }
        _ => (Read::Missing, None),
    }
}

/// Runs the plan on `opts.nodes` nodes; then, if asked, churn; then the floor (a get between
/// two nodes).
pub async fn run(plan: &Plan, opts: &Opts, bar: &ProgressBar) -> anyhow::Result<Report> {
    let accounts = Accounts::new(plan)?;
    let rss_before = rss_bytes();
    bar.set_message(format!("dkvs: starting {} nodes", opts.nodes));
    let started = Instant::now();
    // On TCP every node joins through node 0, as mainline's do; a simulation in memory joins
    // in concurrent waves (TestNet::start_many), or a thousand nodes would take many minutes.
    let mut net = if opts.transport == "memory" {
        // A line every tenth of the way, also when stderr is no terminal (a long run's log).
        let (n, mut told) = (opts.nodes, 0);
        let report = |joined: usize| {
            bar.set_message(format!("dkvs: {joined} of {n} nodes joined"));
            if !opts.quiet && joined * 10 / n > told {
                told = joined * 10 / n;
                let at = started.elapsed();
                say(bar, format!("dkvs: {joined} of {n} nodes joined after {at:.0?}"));
            }
        };
        TestNet::start_many_reporting(opts.nodes, config(opts), report).await
    } else {
        TestNet::start(opts.nodes, config(opts)).await
    }
    .context("starting dkvs nodes")?;
    let setup = started.elapsed();
    let (idle_cpu_per_node, idle_bytes_per_node_hour) = if opts.idle.is_zero() {
        (None, None)
    } else {
        bar.set_message(format!("dkvs: idling {:?}", opts.settle + opts.idle));
        tokio::time::sleep(opts.settle).await;
        let (cpu, bytes, at) = (workload::cpu_time(), bytes_sent(&net), Instant::now());
        tokio::time::sleep(opts.idle).await;
        let (used, took) = (workload::cpu_time().saturating_sub(cpu), at.elapsed());
        let sent = bytes_sent(&net).saturating_sub(bytes);
        let per_node = |x: f64| Some(x / took.as_secs_f64() / opts.nodes.max(1) as f64);
        (per_node(100.0 * used.as_secs_f64()), per_node(3600.0 * sent as f64))
    };

    let mut progress = Progress::new(opts.quiet, plan.puts.len() + plan.gets.len(), bar);
    bar.set_length((plan.puts.len() + plan.gets.len()) as u64);
    bar.set_position(0);
    bar.set_message("dkvs: puts");
    let mut puts = Samples::default();
    let mut acked = workload::Acked::default();
    let (mut put_requests, mut stored, put_bytes_from) = (0u64, 0usize, bytes_sent(&net));
    let puts_from = Instant::now();
    // On the memory transport nothing goes on the wire.
    let counted = opts.own_network && opts.transport != "memory";
    let wire_from = wire::Since::now(counted);
    let mut puts_counted = 0;
    for &(item, version, node) in &plan.puts {
        let key = accounts.key(plan, item)?;
        let record = Draft::new(key, plan.value(item, version), version, TTL_MS)
            .sign(&accounts.keys[plan.items[item].account])?;
        let at = Instant::now();
        let mut count = |receipt: &dkvs_net::PutReceipt| {
            put_requests += u64::from(receipt.requests);
            stored += receipt.stored.len();
            puts_counted += 1;
        };
        let (ok, outcome) = match net.put(node, record).await {
            Ok(Ok(receipt)) => {
                count(&receipt);
                let ok = receipt.stored.len() >= put_majority(opts.nodes);
                (ok, format!("stored on {}", receipt.stored.len()))
            }
            Ok(Err(e)) => {
                // A put that missed its quorum still sent its requests, and some stored it.
                if let dkvs_net::PutError::NoQuorum { receipt } = &e {
                    count(receipt);
                }
                (false, e.to_string())
            }
            Err(e) => (false, e.to_string()),
        };
        puts.record(at.elapsed(), ok);
        acked.note(item, version, ok);
        progress.op("put", at.elapsed(), &outcome);
        bar.inc(1);
    }
    let put_bytes = bytes_sent(&net).saturating_sub(put_bytes_from);
    let put_took = puts_from.elapsed();
    let wire_put = wire_from.bytes();
    let rss_after = rss_bytes();
    // Asked of every node at once: one at a time, a thousand busy nodes took minutes.
    let asks = net.alive().into_iter().map(|i| net.node(i).connected_peers());
    let peers: usize = futures::future::join_all(asks).await.iter().map(Vec::len).sum();

    bar.set_message("dkvs: gets");
    let mut gets = Samples::default();
    let (mut get_requests, mut gets_counted, get_bytes_from) = (0u64, 0, bytes_sent(&net));
    let (get_cpu_from, gets_from) = (workload::cpu_time(), Instant::now());
    let wire_from = wire::Since::now(counted);
    for &(item, node) in &plan.gets {
        let at = Instant::now();
        let (read, requests) = read(&net, plan, &accounts, item, node).await;
        gets.read_after(at.elapsed(), read, acked.of(item));
        let said = requests.map_or("failed".into(), |n| format!("{n} requests"));
        progress.op("get", at.elapsed(), &format!("{read:?}, {said}"));
        if let Some(requests) = requests {
            get_requests += u64::from(requests);
            gets_counted += 1;
        }
        bar.inc(1);
    }
    let get_bytes = bytes_sent(&net).saturating_sub(get_bytes_from);
    let get_took = gets_from.elapsed();
    let wire_get = wire_from.bytes();
    let cpu_per_get_ms =
        workload::per_op_ms(workload::cpu_time().saturating_sub(get_cpu_from), plan.gets.len());
    bar.set_message("dkvs: routing hops");
    let hops = routing_hops(&net, plan, &accounts).await?;

    let churn = match &opts.churn {
        Some(churn) => {
            let silent = churn.silent.then(Vec::new);
            let mut churned = Churned { net: &mut net, accounts: &accounts, silent };
            workload::churn(&mut churned, "dkvs", plan, churn, bar).await?
        }
        None => Vec::new(),
    };
    net.shutdown().await;

    let floor = if opts.floor { Some(floor(plan, &accounts, opts, bar).await?) } else { None };
    let (floor, floor_cpu) = floor.unzip();
    let run = DkvsRun {
        transport: opts.transport.clone(),
        setup,
        puts,
        gets,
        put_requests,
        get_requests,
        stored,
        puts_counted,
        gets_counted,
        put_bytes,
        get_bytes,
        put_took,
        get_took,
        wire_put,
        wire_get,
        rss_per_node_bytes: rss_after.saturating_sub(rss_before) / opts.nodes.max(1) as u64,
        peers: peers as u64,
        floor_get_p50_ms: floor,
        idle_cpu_per_node,
        idle_bytes_per_node_hour,
        cpu_per_get_ms: Some(cpu_per_get_ms),
        floor_cpu_per_get_ms: floor_cpu,
        hops: Some(hops),
        churn,
    };
    Ok(run.report(plan, opts.nodes))
}

/// Lines on stderr while the workload runs (unless `--quiet`), for a long run's log: one for
/// each operation that took over [`Progress::SLOW`], and one every tenth of the way.
struct Progress<'a> {
    quiet: bool,
    total: usize,
    done: usize,
    told: usize,
    started: Instant,
    /// Lines go above the bar (it is hidden when stderr is no terminal, and they print as is).
    bar: &'a ProgressBar,
}

impl<'a> Progress<'a> {
    const SLOW: std::time::Duration = std::time::Duration::from_secs(1);

    fn new(quiet: bool, total: usize, bar: &'a ProgressBar) -> Progress<'a> {
        let (total, started) = (total.max(1), Instant::now());
        Progress { quiet, total, done: 0, told: 0, started, bar }
    }

    fn op(&mut self, what: &str, took: std::time::Duration, outcome: &str) {
        self.done += 1;
        if self.quiet {
            return;
        }
        if took >= Self::SLOW {
            say(self.bar, format!("dkvs: {what} {} took {took:.1?}: {outcome}", self.done));
        }
        if self.done * 10 / self.total > self.told {
            self.told = self.done * 10 / self.total;
            let (done, total, at) = (self.done, self.total, self.started.elapsed());
            say(self.bar, format!("dkvs: {done} of {total} operations after {at:.0?}"));
        }
    }
}

/// A line of a long run's log on stderr: above the progress bar, or as is when the bar is
/// hidden (stderr is no terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// Greedy routing on the nodes' real Kademlia tables, for [`HOP_SAMPLES`] walks to the plan's
/// keys from random live nodes: from the reader, each hop goes to the peer closest to the key in the
/// current node's table, until that table knows none closer. The hops are the requests such
/// a walk sends one after the other (a Kademlia lookup asks three at a time and collects 20,
/// so its rounds are about as many); `reached` is the share of walks that ended at the live
/// node closest to the key. Measured on the tables, modelled as a walk: no request is sent.
async fn routing_hops(
    net: &TestNet,
    plan: &Plan,
    accounts: &Accounts,
) -> anyhow::Result<workload::Hops> {
    use dkvs_net::libp2p::{PeerId, kad::KBucketKey};
    let alive = net.alive();
    let asks =
        alive.iter().map(|&i| async move { (net.peer_id(i), net.node(i).routing_table().await) });
    let tables: HashMap<PeerId, Vec<PeerId>> =
        futures::future::join_all(asks).await.into_iter().collect();
    let (mut hops, mut reached, mut walks) = (Vec::new(), 0usize, 0usize);
    let mut rng = workload::Rng::new(0x40b5);
    for walk in 0..HOP_SAMPLES.min(plan.items.len() * alive.len()) {
        let (item, node) = (walk % plan.items.len(), alive[rng.below(alive.len())]);
        let key = accounts.key(plan, item)?;
        let target = KBucketKey::new(key.as_str().as_bytes().to_vec());
        let distance = |peer: &PeerId| KBucketKey::from(*peer).distance(&target);
        let Some(closest) = tables.keys().min_by_key(|p| distance(p)).copied() else { break };
        let mut at = net.peer_id(node);
        let mut steps = 0u32;
        while let Some(next) = tables.get(&at).and_then(|t| t.iter().min_by_key(|p| distance(p))) {
            if distance(next) >= distance(&at) || steps >= 64 {
                break;
            }
            at = *next;
            steps += 1;
        }
        walks += 1;
        reached += usize::from(at == closest);
        hops.push(steps);
    }
    let mean = hops.iter().map(|h| f64::from(*h)).sum::<f64>() / hops.len().max(1) as f64;
    Ok(workload::Hops {
        mean,
        max: hops.iter().copied().max().unwrap_or(0),
        reached: reached as f64 / walks.max(1) as f64,
        table_mean: tables.values().map(Vec::len).sum::<usize>() as f64
            / tables.len().max(1) as f64,
    })
}

/// Walks [`routing_hops`] takes at most.
const HOP_SAMPLES: usize = 1000;

/// The in-process dkvs network, as churn sees it.
struct Churned<'a> {
    net: &'a mut TestNet,
    accounts: &'a Accounts,
    /// With `--silent-deaths`, the listeners on killed nodes' ports.
    silent: Option<Vec<Silent>>,
}

/// A listener that accepts connections and says nothing, for as long as it is kept.
struct Silent(tokio::task::JoinHandle<()>);

impl Silent {
    /// Takes `port` on loopback (the node that had it is gone: a few tries while its
    /// listener closes).
    async fn take(port: u16) -> anyhow::Result<Silent> {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(listener) => break listener,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e).context("taking a dead node's port"),
            }
        };
        Ok(Silent(tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        })))
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Network for Churned<'_> {
    fn alive(&self) -> Vec<usize> {
        self.net.alive()
    }

    async fn kill(&mut self, i: usize) {
        let port = self.net.addr(i).and_then(|addr| {
            addr.iter().find_map(|p| match p {
                dkvs_net::libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
                _ => None,
            })
        });
        self.net.kill(i).await;
        if let (Some(silent), Some(port)) = (&mut self.silent, port) {
            // A port left closed would be a death that is not silent: no figure then.
            let listener = Silent::take(port).await;
            silent.push(listener.unwrap_or_else(|e| panic!("--silent-deaths: {e:#}")));
        }
    }

    async fn add(&mut self) -> anyhow::Result<()> {
        self.net.add().await.context("adding a node during churn").map(|_| ())
    }

    async fn read(&self, plan: &Plan, item: usize, node: usize) -> Read {
        read(self.net, plan, self.accounts, item, node).await.0
    }
}

/// Gets the floor makes at least (of at most 50 records, each read in turn).
const FLOOR_GETS: usize = 500;

/// A get's p50 in a network of two nodes: one request round trip and a lookup that finds the
/// one peer. The lower bound a larger network's get is compared with. Every one of its gets
/// must return the newest value, or the run fails. Also the process's CPU per get, in ms.
async fn floor(
    plan: &Plan,
    accounts: &Accounts,
    opts: &Opts,
    bar: &ProgressBar,
) -> anyhow::Result<(f64, f64)> {
    bar.set_message("dkvs: floor (2 nodes)");
    let net = TestNet::start(2, config(opts)).await?;
    let items = plan.items.len().min(50);
    let mut gets = Samples::default();
    for item in 0..items {
        let key = accounts.key(plan, item)?;
        let record = Draft::new(key, plan.value(item, plan.versions), plan.versions, TTL_MS)
            .sign(&accounts.keys[plan.items[item].account])?;
        net.put(0, record).await??;
    }
    // Each record is read several times: the CPU figure comes from /proc's 10 ms ticks and
    // a get costs a fraction of a millisecond, so it needs hundreds of gets. They go in rounds
    // with a pause between, so that the one peer's request budget (200 a second, a burst of
    // 400; this node paces itself below it) refills: the floor measures requests, not pacing.
    // (The pauses cost next to nothing: two idle nodes. Measuring across them keeps the
    // figure to one tick's error, not one per round.)
    let rounds = FLOOR_GETS.div_ceil(items.max(1));
    let cpu_from = workload::cpu_time();
    for round in 0..rounds {
        if round > 0 {
            tokio::time::sleep(std::time::Duration::from_secs_f64(items as f64 / 100.0)).await;
        }
        for item in 0..items {
            let at = Instant::now();
            let (read, _) = read(&net, plan, accounts, item, 1).await;
            gets.read(at.elapsed(), read);
            if read != Read::Newest {
                anyhow::bail!("the 2-node floor: the get of record {item} returned {read:?}");
            }
        }
    }
    let cpu = workload::per_op_ms(workload::cpu_time().saturating_sub(cpu_from), rounds * items);
    net.shutdown().await;
    Ok((gets.summary().p50_ms, cpu))
}
