//! The workload on N `dkvs node` processes (`--processes`), as users run them: each node a
//! process of the `dkvs` binary on its default configuration, on 127.0.0.1, joined through
//! node 0 with `--bootstrap`, and written and read through its HTTP API. The workload's
//! accounts are in every node's keystore (the same key files, copied), so that any node can
//! write for any of them, as a user's devices each hold the user's account.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use dkvs_account::keystore::Keystore;
use dkvs_account::{KeyType, Keypair};
use dkvs_node::client::{Client, ClientError};
use dkvs_testbed::process::{self, NodeProcess, PASSPHRASE, metric};
use indicatif::ProgressBar;

use crate::Opts;
use crate::workload::{self, DkvsRun, Network, Plan, Read, Report, Samples, put_majority};

/// How long an API request may take: longer than any operation the node runs.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a started network may take until every node has a peer.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// The nodes, in a directory of their own (removed when dropped; the processes are killed
/// first).
struct Processes {
    bin: PathBuf,
    /// The workload's accounts, as key files, copied into each node's home.
    keys: Keystore,
    /// The accounts' names in every keystore, and their ids.
    accounts: Vec<String>,
    ids: Vec<String>,
    nodes: Vec<Option<(NodeProcess, Client)>>,
    /// Whether churn stops a node instead of killing it (`--stopped-deaths`), and the nodes
    /// it stopped, killed with the rest.
    stop_on_kill: bool,
    stopped: Vec<NodeProcess>,
    // Last: dropped after the processes.
    dir: tempfile::TempDir,
}

impl Processes {
    fn new(bin: PathBuf, plan: &Plan) -> anyhow::Result<Processes> {
        let dir = tempfile::tempdir()?;
        let keys = Keystore::open(dir.path().join("keys"))?;
        let (mut accounts, mut ids) = (Vec::new(), Vec::new());
        for (i, secret) in plan.accounts.iter().enumerate() {
            let name = format!("a{i}");
            let keypair = Keypair::from_secret_bytes(KeyType::Ed25519, secret)?;
            keys.import(&name, &keypair, PASSPHRASE)?;
            accounts.push(name);
            ids.push(keypair.account_id().to_string());
        }
        let (nodes, stopped) = (Vec::new(), Vec::new());
        Ok(Processes { bin, keys, accounts, ids, nodes, stop_on_kill: false, stopped, dir })
    }

    /// Starts a node, joined through `via` (a live node's index) unless it is the first.
    fn launch(&mut self, via: Option<usize>) -> anyhow::Result<usize> {
        let i = self.nodes.len();
        let home = self.dir.path().join(format!("node{i}"));
        let keystore = Keystore::open(home.join("keys"))?;
        for name in &self.accounts {
            let to = keystore.path(name)?;
            std::fs::copy(self.keys.path(name)?, &to)
                .with_context(|| format!("copying a key file to {}", to.display()))?;
        }
        std::fs::write(home.join("default-account"), &self.accounts[0])?;
        let via = via.map(|j| self.node(j).address.clone());
        let args: Vec<&str> = via.iter().flat_map(|a| ["--bootstrap", a.as_str()]).collect();
        let node = process::start(&self.bin, &home, &args)
            .with_context(|| format!("starting node {i}"))?;
        let client = node.client(REQUEST_TIMEOUT)?;
        self.nodes.push(Some((node, client)));
        Ok(i)
    }

    fn node(&self, i: usize) -> &NodeProcess {
        &self.nodes[i].as_ref().expect("a live node").0
    }

    fn client(&self, i: usize) -> &Client {
        &self.nodes[i].as_ref().expect("a live node").1
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_some()).collect()
    }

    /// Waits until each of `nodes` has a peer.
    fn joined(&self, nodes: &[usize]) -> anyhow::Result<()> {
        let deadline = Instant::now() + JOIN_TIMEOUT;
        for &i in nodes {
            while self.client(i).get_json("/v1/status")?["peers"].as_u64().unwrap_or(0) == 0 {
                if Instant::now() > deadline {
                    bail!("node {i} found no peer within {JOIN_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Has every node unlock every account, as a node that has been running has: a node
    /// unlocks an account (argon2id, tens of milliseconds) on its first use, which would
    /// otherwise land in the timed puts. A read of the account's own scope unlocks it.
    fn unlock_accounts(&self) -> anyhow::Result<()> {
        for i in self.alive() {
            for account in &self.accounts {
                let path = format!("/v1/kv/~/testbed-unlock?account={account}");
                match self.client(i).get_json(&path) {
                    Ok(_) | Err(ClientError::NotFound(_)) => {}
                    Err(e) => bail!("node {i} did not unlock account {account}: {e}"),
                }
            }
        }
        Ok(())
    }

    /// Writes `version` of `item` through node `node`: whether it was stored with that
    /// sequence on a majority, and the requests the node sent and the nodes that stored it
    /// (said by an acknowledged put only). As
    /// the in-process run writes, with the sequence given: a compare-and-swap on the version
    /// before (`expect_seq`), not a read of the newest first (a put without it).
    fn put(
        &self,
        plan: &Plan,
        item: usize,
        version: u64,
        node: usize,
    ) -> (bool, Option<(u64, usize)>) {
        let it = &plan.items[item];
        let path = format!(
            "/v1/kv/~/{}?account={}&ttl=1h&expect_seq={}",
            it.name,
            self.accounts[it.account],
            version - 1
        );
        match self.client(node).put_bytes(&path, &plan.value(item, version)) {
            Ok(receipt) => {
                let stored = receipt["stored"].as_u64().unwrap_or(0) as usize;
                let seq = receipt["seq"].as_u64().unwrap_or(0);
                let requests = receipt["requests"].as_u64().unwrap_or(0);
                // Puts run before any churn: every node started is live, and a put needs a
                // majority of the replicas among them.
                let ok = seq == version && stored >= put_majority(self.nodes.len());
                (ok, Some((requests, stored)))
            }
            Err(e) => {
                note(&format!("put of item {item} through node {node}: {e}"));
                (false, None)
            }
        }
    }

    /// Reads `item` through node `node`: whether it was the newest version, and the requests
    /// the node sent (said by a get that found the key only).
    fn read(&self, plan: &Plan, item: usize, node: usize) -> (Read, Option<u64>) {
        let it = &plan.items[item];
        let path = format!("/v1/kv/{}/{}", self.ids[it.account], it.name);
        let newest =
            base64::engine::general_purpose::STANDARD.encode(plan.value(item, plan.versions));
        match self.client(node).get_json(&path) {
            Ok(answer) => {
                let requests = answer["requests"].as_u64().unwrap_or(0);
                let read = match answer["seq"].as_u64() {
                    Some(seq) if seq == plan.versions => {
                        if answer["value_base64"].as_str() == Some(newest.as_str()) {
                            Read::Newest
                        } else {
                            Read::Missing
                        }
                    }
                    Some(seq) if seq < plan.versions => Read::Stale(seq),
                    Some(_) => Read::Missing,
                    None => Read::Missing,
                };
                (read, Some(requests))
            }
            Err(ClientError::NotFound(_)) => (Read::Missing, None),
            Err(e) => {
                note(&format!("get of item {item} through node {node}: {e}"));
                (Read::Missing, None)
            }
        }
    }

    /// Bytes all live nodes sent so far.
    fn bytes_sent(&self) -> u64 {
        let sent = |i| metric(self.client(i), "dkvs_network_sent_bytes").unwrap_or(0);
        self.alive().into_iter().map(sent).sum()
    }
}

/// A failed operation, said on stderr (the figures count it).
fn note(message: &str) {
    eprintln!("dkvs (processes): {message}");
}

/// Blocking work (a process start, an HTTP request) on the runtime's worker without stalling
/// its other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Runs the plan on `opts.nodes` processes; then, if asked, churn; then the floor.
pub async fn run(plan: &Plan, opts: &Opts, bar: &ProgressBar) -> anyhow::Result<Report> {
    let bin = process::dkvs_binary(opts.dkvs.as_deref())?;
    bar.set_message(format!("dkvs: starting {} node processes", opts.nodes));
    let started = Instant::now();
    let mut net = blocking(|| start(&bin, plan, opts.nodes))?;
    let setup = started.elapsed();

    bar.set_length((plan.puts.len() + plan.gets.len()) as u64);
    bar.set_position(0);
    bar.set_message("dkvs: puts (processes)");
    let mut puts = Samples::default();
    let mut acked = workload::Acked::default();
    let (mut put_requests, mut stored, put_bytes_from) =
        (0u64, 0usize, blocking(|| net.bytes_sent()));
    let puts_from = Instant::now();
    let mut puts_counted = 0;
    for &(item, version, node) in &plan.puts {
        let at = Instant::now();
        let (ok, said) = blocking(|| net.put(plan, item, version, node));
        puts.record(at.elapsed(), ok);
        acked.note(item, version, ok);
        if let Some((requests, held)) = said {
            put_requests += requests;
            stored += held;
            puts_counted += 1;
        }
        bar.inc(1);
    }
    let put_bytes = blocking(|| net.bytes_sent()).saturating_sub(put_bytes_from);
    let put_took = puts_from.elapsed();
    // Each node's own resident memory: every node is a process of its own here.
    let rss: u64 = net.alive().iter().map(|&i| net.node(i).status_kb("VmRSS").unwrap_or(0)).sum();
    let peers: u64 = blocking(|| {
        let peers = |i| {
            net.client(i).get_json("/v1/status").map_or(0, |s| s["peers"].as_u64().unwrap_or(0))
        };
        net.alive().into_iter().map(peers).sum()
    });

    bar.set_message("dkvs: gets (processes)");
    let mut gets = Samples::default();
    let (mut get_requests, mut gets_counted, get_bytes_from) =
        (0u64, 0, blocking(|| net.bytes_sent()));
    let gets_from = Instant::now();
    for &(item, node) in &plan.gets {
        let at = Instant::now();
        let (read, requests) = blocking(|| net.read(plan, item, node));
        gets.read_after(at.elapsed(), read, acked.of(item));
        if let Some(requests) = requests {
            get_requests += requests;
            gets_counted += 1;
        }
        bar.inc(1);
    }
    let get_bytes = blocking(|| net.bytes_sent()).saturating_sub(get_bytes_from);
    let get_took = gets_from.elapsed();

    let churn = match &opts.churn {
        Some(churn) => {
            net.stop_on_kill = churn.stopped;
            workload::churn(&mut net, "dkvs", plan, churn, bar).await?
        }
        None => Vec::new(),
    };
    drop(net);

    let floor = if opts.floor { Some(floor(&bin, plan, bar)?) } else { None };
    let run = DkvsRun {
        transport: "tcp, a process per node".into(),
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
        // Not counted: the loopback here carries the testbed's HTTP calls to the nodes too,
        // which mainline's in-process operations have no counterpart of.
        wire_put: None,
        wire_get: None,
        rss_per_node_bytes: rss * 1024 / opts.nodes.max(1) as u64,
        peers,
        floor_get_p50_ms: floor,
        idle_cpu_per_node: None,
        idle_bytes_per_node_hour: None,
        cpu_per_get_ms: None,
        floor_cpu_per_get_ms: None,
        hops: None,
        churn,
    };
    Ok(run.report(plan, opts.nodes))
}

/// Starts `n` nodes, each after the first joined through node 0, and waits until each has a
/// peer.
fn start(bin: &Path, plan: &Plan, n: usize) -> anyhow::Result<Processes> {
    let mut net = Processes::new(bin.to_owned(), plan)?;
    let first = net.launch(None)?;
    for _ in 1..n {
        net.launch(Some(first))?;
    }
    net.joined(&net.alive())?;
    net.unlock_accounts()?;
    Ok(net)
}

impl Network for Processes {
    fn alive(&self) -> Vec<usize> {
        Processes::alive(self)
    }

    async fn kill(&mut self, i: usize) {
        // Dropped: killed at once (SIGKILL), as a crash would; or stopped, and killed at the
        // end of the run.
        let Some((mut node, _)) = self.nodes[i].take() else { return };
        if self.stop_on_kill {
            node.stop().unwrap_or_else(|e| panic!("--stopped-deaths: {e:#}"));
            self.stopped.push(node);
        }
    }

    async fn add(&mut self) -> anyhow::Result<()> {
        let via = *Processes::alive(self).first().context("no live node to join through")?;
        blocking(|| {
            let i = self.launch(Some(via))?;
            self.joined(&[i])
        })
        .context("adding a node during churn")
    }

    async fn read(&self, plan: &Plan, item: usize, node: usize) -> Read {
        blocking(|| Processes::read(self, plan, item, node)).0
    }

    async fn write_fresh(&self, plan: &Plan, item: usize, name: &str, node: usize) -> Option<bool> {
        let account = &self.accounts[plan.items[item].account];
        let path = format!("/v1/kv/~/{name}?account={account}&ttl=1h");
        // Without a quorum the node answers 503 (no_quorum). With one, it counts over the
        // places its lookup found (which may be few when the lookup timed out): the rule of
        // the puts before churn, a majority of the closest among the live nodes, holds here.
        let put = blocking(|| self.client(node).put_bytes(&path, &plan.value(item, 1)));
        match put {
            Ok(receipt) => {
                let stored = receipt["stored"].as_u64().unwrap_or(0) as usize;
                let needed = put_majority(Processes::alive(self).len());
                if stored < needed {
                    note(&format!("put of {name} through node {node}: stored by {stored}"));
                }
                Some(stored >= needed)
            }
            Err(e) => {
                note(&format!("put of {name} through node {node}: {e}"));
                Some(false)
            }
        }
    }
}

/// A get's p50 between two node processes: the floor (see `dkvs::floor`). Every get must
/// return the newest value, or the run fails.
fn floor(bin: &Path, plan: &Plan, bar: &ProgressBar) -> anyhow::Result<f64> {
    bar.set_message("dkvs: floor (2 node processes)");
    let net = blocking(|| start(bin, plan, 2))?;
    let items = plan.items.len().min(50);
    for item in 0..items {
        for version in 1..=plan.versions {
            if !blocking(|| net.put(plan, item, version, 0)).0 {
                bail!("the 2-node floor: the put of record {item} version {version} failed");
            }
        }
    }
    let mut gets = Samples::default();
    for item in 0..items {
        let at = Instant::now();
        let (read, _) = blocking(|| net.read(plan, item, 1));
        gets.read(at.elapsed(), read);
        if read != Read::Newest {
            bail!("the 2-node floor: the get of record {item} returned {read:?}");
        }
    }
    Ok(gets.summary().p50_ms)
}
