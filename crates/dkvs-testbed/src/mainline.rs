//! The same workload on N BitTorrent Mainline DHT nodes (BEP 44 mutable items, the `mainline`
//! crate) in this process, every node a server bound to 127.0.0.1.
//!
//! By default the network is built unseeded: node 0 starts alone and every other node
//! bootstraps through it, as dkvs's nodes join through node 0. (`--mainline-seeded` fills every
//! routing table with every node beforehand: full knowledge no real network has.)

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use indicatif::ProgressBar;
use mainline::async_dht::AsyncDht;
use mainline::{Dht, MutableItem, SigningKey, Testnet};

use crate::workload::{self, Network, Plan, Read, Report, Samples, put_majority, rss_bytes};
use crate::{Opts, wire};

/// How long one operation may take (as dkvs_testnet's step).
const STEP: Duration = Duration::from_secs(30);

/// How long a joining node's walk is waited for (as a dkvs node's join in dkvs_testnet).
const JOIN: Duration = Duration::from_secs(10);

struct Got {
    read: Read,
    /// When the newest version first arrived, if it did.
    first_newest: Option<Duration>,
    queried: u32,
}

/// A BEP 44 get of `item` through `node`, to the end of the lookup (the most recent item
/// wins, as `get_mutable_most_recent` folds it).
async fn read(node: &AsyncDht, plan: &Plan, keys: &[SigningKey], item: usize) -> Got {
    let it = &plan.items[item];
    let public = keys[it.account].verifying_key().to_bytes();
    let started = Instant::now();
    let detailed = node.get_mutable_detailed(&public, Some(it.name.as_bytes()), None);
    let mut items = detailed.items;
    let newest = plan.versions as i64;
    let mut first_newest = None;
    let mut best: Option<MutableItem> = None;
    let lookup = async {
        while let Some(found) = items.next().await {
            if found.seq() == newest && first_newest.is_none() {
                first_newest = Some(started.elapsed());
            }
            let better = match &best {
                None => true,
                Some(b) => (found.seq(), found.value()) > (b.seq(), b.value()),
            };
            if better {
                best = Some(found);
            }
        }
    };
    if tokio::time::timeout(STEP, lookup).await.is_err() {
        return Got { read: Read::Missing, first_newest: None, queried: 0 };
    }
    let queried = tokio::time::timeout(STEP, detailed.outcome.recv())
        .await
        .map_or(0, |outcome| outcome.queried);
    let read = match best {
        Some(b) if b.seq() == newest && *b.value() == *plan.value(item, plan.versions) => {
            Read::Newest
        }
        Some(b) if b.seq() < newest => Read::Stale(b.seq().max(0) as u64),
        _ => Read::Missing,
    };
    Got { read, first_newest, queried }
}

/// Starts a server node that bootstraps through `through` (addresses of live nodes).
async fn add_node(through: Vec<String>) -> anyhow::Result<AsyncDht> {
    let dht = tokio::task::spawn_blocking(move || {
        Dht::builder().server_mode().bind_address(Ipv4Addr::LOCALHOST).bootstrap(&through).build()
    })
    .await??
    .as_async();
    let _ = tokio::time::timeout(JOIN, dht.bootstrapped()).await;
    Ok(dht)
}

pub async fn run(plan: &Plan, opts: &Opts, bar: &ProgressBar) -> anyhow::Result<Report> {
    let keys: Vec<SigningKey> = plan.accounts.iter().map(SigningKey::from_bytes).collect();
    let rss_before = rss_bytes();
    bar.set_message(format!("mainline: starting {} nodes", opts.nodes));
    let started = Instant::now();
    let (n, seeded) = (opts.nodes, opts.mainline_seeded);
    let testnet = tokio::task::spawn_blocking(move || Testnet::builder(n).seeded(seeded).build())
        .await?
        .context("starting mainline nodes")?;
    let mut nodes: Vec<Option<AsyncDht>> =
        testnet.nodes.into_iter().map(|dht| Some(dht.as_async())).collect();
    // Every node walks the DHT for its own id, as a dkvs node bootstraps when it joins.
    futures::future::join_all(
        nodes.iter().flatten().map(|node| tokio::time::timeout(JOIN, node.bootstrapped())),
    )
    .await;
    let setup = started.elapsed();

    bar.set_length((plan.puts.len() + plan.gets.len()) as u64);
    bar.set_position(0);
    bar.set_message("mainline: puts");
    let mut puts = Samples::default();
    let mut acked = workload::Acked::default();
    let (mut stored, mut puts_counted) = (0usize, 0usize);
    let wire_from = wire::Since::now(opts.own_network);
    for &(item, version, node) in &plan.puts {
        let it = &plan.items[item];
        let mutable = MutableItem::new(
            keys[it.account].clone(),
            &plan.value(item, version),
            version as i64,
            Some(it.name.as_bytes()),
        );
        let dht = nodes[node].as_ref().context("a node of the plan is alive")?;
        let at = Instant::now();
        // mainline answers Ok once one node stored the item; the same rule as dkvs's counts.
        let ok = match tokio::time::timeout(STEP, dht.put_mutable(mutable, None)).await {
            Ok(Ok(outcome)) => {
                stored += outcome.stored_at as usize;
                puts_counted += 1;
                outcome.stored_at as usize >= put_majority(opts.nodes)
            }
            _ => false,
        };
        puts.record(at.elapsed(), ok);
        acked.note(item, version, ok);
        bar.inc(1);
    }
    let wire_put = wire_from.bytes();
    let rss_after = rss_bytes();

    bar.set_message("mainline: gets");
    let mut gets = Samples::default();
    let mut first = Samples::default();
    let mut queried = 0u64;
    let (cpu_from, wire_from) = (workload::cpu_time(), wire::Since::now(opts.own_network));
    for &(item, node) in &plan.gets {
        let dht = nodes[node].as_ref().context("a node of the plan is alive")?;
        let at = Instant::now();
        let got = read(dht, plan, &keys, item).await;
        gets.read_after(at.elapsed(), got.read, acked.of(item));
        match got.first_newest {
            Some(took) => first.read(took, Read::Newest),
            None => first.read(at.elapsed(), Read::Missing),
        }
        queried += u64::from(got.queried);
        bar.inc(1);
    }
    let cpu_per_get_ms =
        workload::per_op_ms(workload::cpu_time().saturating_sub(cpu_from), plan.gets.len());
    let wire_get = wire_from.bytes();
    let per_op = |bytes: Option<u64>, ops: usize| bytes.map(|b| b as f64 / ops.max(1) as f64);

    let churn = match &opts.churn {
        Some(churn) => {
            let mut churned = Churned { nodes: &mut nodes, keys: &keys };
            workload::churn(&mut churned, "mainline", plan, churn, bar).await?
        }
        None => Vec::new(),
    };
    // Dropping every handle of a node ends its thread.
    drop(nodes);

    Ok(Report {
        system: "mainline".into(),
        nodes: opts.nodes,
        transport: "udp".into(),
        setup_s: setup.as_secs_f64(),
        put: puts.summary(),
        get: gets.summary(),
        get_first_newest: Some(first.summary()),
        requests_per_get: Some(queried as f64 / plan.gets.len().max(1) as f64),
        requests_per_put: None,
        stored_per_put: stored as f64 / puts_counted.max(1) as f64,
        bytes_per_get: None,
        bytes_per_put: None,
        bytes_per_get_less_idle: None,
        bytes_per_put_less_idle: None,
        wire_bytes_per_get: per_op(wire_get, plan.gets.len()),
        wire_bytes_per_put: per_op(wire_put, plan.puts.len()),
        rss_per_node_bytes: rss_after.saturating_sub(rss_before) / opts.nodes.max(1) as u64,
        peers_per_node: None,
        floor_get_p50_ms: None,
        idle_cpu_per_node: None,
        idle_bytes_per_node_hour: None,
        cpu_per_get_ms: Some(cpu_per_get_ms),
        floor_cpu_per_get_ms: None,
        hops: None,
        churn,
    })
}

/// The mainline network, as churn sees it. Mainline has no republishing of its own (a BEP 44
/// item lives on the nodes it was put on until they go), so what it keeps is what survives
/// on the nodes that stay.
struct Churned<'a> {
    nodes: &'a mut Vec<Option<AsyncDht>>,
    keys: &'a [SigningKey],
}

impl Network for Churned<'_> {
    fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_some()).collect()
    }

    async fn kill(&mut self, i: usize) {
        // Dropping every handle of a node ends its thread.
        self.nodes[i] = None;
    }

    async fn add(&mut self) -> anyhow::Result<()> {
        // Newcomers join through one live node, as dkvs's do.
        let mut through = Vec::new();
        if let Some(node) = self.nodes.iter().flatten().next() {
            through.push(node.info().await.local_addr().to_string());
        }
        self.nodes.push(Some(add_node(through).await?));
        Ok(())
    }

    async fn read(&self, plan: &Plan, item: usize, node: usize) -> Read {
        match &self.nodes[node] {
            Some(dht) => read(dht, plan, self.keys, item).await.read,
            None => Read::Missing,
        }
    }
}
