//! The workload both systems run, fixed by a seed so that dkvs and mainline see the same one:
//! accounts, records, which node writes each version and which node reads it back; and the
//! figures taken from it.

use std::time::Duration;

use serde::Serialize;

/// A small deterministic generator (SplitMix64): the plan must not depend on the system run.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `k` distinct picks from `from`, in random order.
    pub fn choose(&mut self, from: &[usize], k: usize) -> Vec<usize> {
        let mut pool = from.to_vec();
        for i in 0..pool.len() {
            let j = i + self.below(pool.len() - i);
            pool.swap(i, j);
        }
        pool.truncate(k);
        pool
    }
}

/// One record: owned by `account`, named `name` (the dkvs key's path and the BEP 44 salt).
pub struct Item {
    pub account: usize,
    pub name: String,
}

/// Who writes what, and who reads it back.
pub struct Plan {
    /// Each account's Ed25519 secret key (the same key on both systems).
    pub accounts: Vec<[u8; 32]>,
    pub items: Vec<Item>,
    /// Every record is written this many times (sequence 1, 2, ...); the last is the newest.
    pub versions: u64,
    pub value_size: usize,
    /// Writes in order: (item, version, node index).
    pub puts: Vec<(usize, u64, usize)>,
    /// Reads after all writes: (item, node index), never the node that wrote the newest version.
    pub gets: Vec<(usize, usize)>,
}

impl Plan {
    pub fn new(
        seed: u64,
        nodes: usize,
        accounts: usize,
        records: usize,
        versions: u64,
        value_size: usize,
        reads: usize,
    ) -> Plan {
        let mut rng = Rng::new(seed);
        let accounts: Vec<[u8; 32]> = (0..accounts.max(1))
            .map(|_| {
                let mut secret = [0u8; 32];
                for chunk in secret.chunks_mut(8) {
                    chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
                }
                secret
            })
            .collect();
        let items: Vec<Item> = (0..records)
            .map(|i| Item { account: i % accounts.len(), name: format!("testbed/{i}") })
            .collect();
        let mut puts = Vec::new();
        let mut last_writer = vec![0; records];
        for version in 1..=versions {
            for (item, writer) in last_writer.iter_mut().enumerate() {
                *writer = rng.below(nodes);
                puts.push((item, version, *writer));
            }
        }
        let mut gets = Vec::new();
        for _ in 0..reads {
            for (item, &writer) in last_writer.iter().enumerate() {
                let mut reader = rng.below(nodes);
                if nodes > 1 && reader == writer {
                    reader = (reader + 1 + rng.below(nodes - 1)) % nodes;
                }
                gets.push((item, reader));
            }
        }
        Plan { accounts, items, versions, value_size, puts, gets }
    }

    /// The value of `item` at `version`: distinct for every pair, so a read can tell the
    /// newest value from an older one by its bytes as well as by its sequence.
    pub fn value(&self, item: usize, version: u64) -> Vec<u8> {
        let mut rng = Rng::new((item as u64) << 32 ^ version);
        let mut value = Vec::with_capacity(self.value_size);
        while value.len() < self.value_size {
            value.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        value.truncate(self.value_size);
        value
    }
}

/// What one read returned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Read {
    /// The newest version, with its value.
    Newest,
    /// An older version (its sequence).
    Stale(u64),
    /// Nothing, an error, or bytes that are not the value written.
    Missing,
}

/// Latencies of one kind of operation (every operation's, failed ones included: a system
/// whose slow operations fail must not look faster for it), and how many succeeded.
#[derive(Default)]
pub struct Samples {
    pub all: Vec<Duration>,
    pub ok: usize,
    pub stale: usize,
    /// Reads of an older version, but none older than the last one stored on a majority
    /// (the newer writes failed, and their writers were told so): allowed, and not counted
    /// in `stale`.
    pub older_than_failed: usize,
    pub failed: usize,
}

/// Which version of each item a majority stored last (its writer was told it succeeded).
#[derive(Default)]
pub struct Acked(std::collections::HashMap<usize, u64>);

impl Acked {
    pub fn note(&mut self, item: usize, version: u64, ok: bool) {
        if ok {
            let v = self.0.entry(item).or_default();
            *v = (*v).max(version);
        }
    }

    /// The newest version of `item` that a majority stored (0: none).
    pub fn of(&self, item: usize) -> u64 {
        self.0.get(&item).copied().unwrap_or(0)
    }
}

impl Samples {
    pub fn record(&mut self, took: Duration, ok: bool) {
        self.all.push(took);
        if ok {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
    }

    pub fn read(&mut self, took: Duration, read: Read) {
        self.read_after(took, read, u64::MAX);
    }

    /// A read of an item whose newest acknowledged version is `acked`: a version older than
    /// that breaks a promise; one older than the newest written, but not than that, does not.
    pub fn read_after(&mut self, took: Duration, read: Read, acked: u64) {
        self.all.push(took);
        match read {
            Read::Newest => self.ok += 1,
            Read::Stale(seq) if seq < acked => self.stale += 1,
            Read::Stale(_) => self.older_than_failed += 1,
            Read::Missing => self.failed += 1,
        }
    }

    pub fn summary(&self) -> Summary {
        let mut sorted = self.all.clone();
        sorted.sort();
        let at = |p: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let i = ((sorted.len() - 1) as f64 * p).round() as usize;
            sorted[i].as_secs_f64() * 1000.0
        };
        let total = self.ok + self.stale + self.older_than_failed + self.failed;
        Summary {
            n: sorted.len(),
            p50_ms: at(0.5),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            ok: self.ok,
            stale: self.stale,
            older_than_failed: self.older_than_failed,
            failed: self.failed,
            success: if total == 0 { 0.0 } else { self.ok as f64 / total as f64 },
        }
    }
}

/// Percentiles of all operations' latencies (milliseconds, failed ones included) and the
/// success rate.
#[derive(Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct Summary {
    /// Operations timed: a p99 of fewer than 100 is one of the slowest few, no more.
    #[serde(default)]
    pub n: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub ok: usize,
    /// Older than an acknowledged write: a broken promise.
    pub stale: usize,
    /// Older than the newest write, which no majority stored (its writer was told so).
    #[serde(default)]
    pub older_than_failed: usize,
    pub failed: usize,
    pub success: f64,
}

/// Both systems keep a record on the 20 nodes closest to it (dkvs's default k, mainline's
/// BEP 44 put): a put counts as successful on either when a majority of those (of all nodes,
/// in a smaller network) stored it.
pub const CLOSEST: usize = 20;

/// Replicas a put must reach to count as successful in a network of `nodes`.
pub fn put_majority(nodes: usize) -> usize {
    CLOSEST.min(nodes) / 2 + 1
}

/// One measurement of the records' survival during churn.
#[derive(Serialize, serde::Deserialize, Clone, Debug)]
pub struct ChurnPoint {
    /// Seconds since the first kill, when this round's reads began.
    pub t_s: f64,
    /// Seconds from this round's kill to its first read.
    pub read_after_kill_s: f64,
    /// Nodes killed so far, and nodes added.
    pub killed: usize,
    pub added: usize,
    /// Fraction of records read back with their newest value through a random live node.
    pub readable_newest: f64,
    /// Those reads' median latency (all of them, failed ones included).
    pub read_p50_ms: f64,
    /// Each read done again at once through the same node: the fraction that returned the
    /// newest value, and their median latency. A node's first operation near a peer that
    /// died looks the key up; what it learnt (dials that failed) shows in the second.
    #[serde(default)]
    pub reread_newest: f64,
    #[serde(default)]
    pub reread_p50_ms: f64,
    /// Where the system takes them here (dkvs's processes): a record of a fresh key written
    /// for each record, as an application writes (no sequence given: a read of the key, then
    /// the write), through a random live node before the reads: the fraction stored on a
    /// quorum, and their median latency.
    #[serde(default)]
    pub written: Option<f64>,
    #[serde(default)]
    pub write_p50_ms: Option<f64>,
}

/// The figures of one system in one run.
#[derive(Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct Report {
    pub system: String,
    pub nodes: usize,
    pub transport: String,
    pub setup_s: f64,
    pub put: Summary,
    pub get: Summary,
    /// mainline only: the time until the newest value first arrived (the lookup goes on after
    /// it to make sure nothing newer exists; `get` is the whole lookup, as dkvs's get).
    pub get_first_newest: Option<Summary>,
    /// Requests this system's node sent per get (lookup and record requests), averaged over
    /// the gets that said (dkvs: a get that failed does not; mainline's say nothing).
    pub requests_per_get: Option<f64>,
    /// Requests per put (lookup and store requests), averaged over the puts that said (dkvs
    /// in one process: every put, those that missed their quorum too; as processes, those
    /// that reached it).
    pub requests_per_put: Option<f64>,
    /// Nodes that acknowledged storing a put, averaged over the same puts.
    pub stored_per_put: f64,
    /// Bytes all nodes sent (TCP, framing and encryption included) while the puts, then the
    /// gets, ran one at a time, divided by the operations: background traffic in that time
    /// included (dkvs only: mainline keeps no byte counters).
    pub bytes_per_get: Option<f64>,
    pub bytes_per_put: Option<f64>,
    /// dkvs in one process, with `--idle-secs`: the same, less what the idle network sent at
    /// the rate measured while it idled, over the phase's time (0 at least): an estimate of
    /// the operation's own traffic, as much as the background holds still.
    #[serde(default)]
    pub bytes_per_get_less_idle: Option<f64>,
    #[serde(default)]
    pub bytes_per_put_less_idle: Option<f64>,
    /// Run in a network namespace of its own (`--system both` where the machine allows it):
    /// every byte its loopback carried while the gets, then the puts, ran (IP and UDP or TCP
    /// headers included, background included), divided by the operations; the same measure
    /// for both systems. Not on the memory transport, nor with `--processes` (the loopback
    /// carries the testbed's HTTP calls to the nodes too).
    #[serde(default)]
    pub wire_bytes_per_get: Option<f64>,
    #[serde(default)]
    pub wire_bytes_per_put: Option<f64>,
    /// Growth of the process's resident memory from before the nodes started until after the
    /// writes, divided by the number of nodes (each system runs in a process of its own).
    /// With `--processes`, each node process's own resident memory after the writes,
    /// averaged.
    pub rss_per_node_bytes: u64,
    /// dkvs only: peers each node was connected to after the writes, averaged.
    pub peers_per_node: Option<f64>,
    /// dkvs only: a get in a network of two nodes, measured in the same run (the floor).
    pub floor_get_p50_ms: Option<f64>,
    /// dkvs in one process, with `--idle-secs`: the CPU the process used while the joined
    /// nodes idled, per node, in percent of one core.
    pub idle_cpu_per_node: Option<f64>,
    /// The same window's bytes sent by all nodes, per node and hour (connections' handshakes
    /// included: a measure of the dials a network at rest makes that does not depend on the
    /// machine's speed).
    pub idle_bytes_per_node_hour: Option<f64>,
    /// dkvs in one process: the CPU the whole process used during the gets, divided by the
    /// gets (all nodes' work for one get, background included), in milliseconds.
    pub cpu_per_get_ms: Option<f64>,
    /// The same during the floor's gets (two nodes).
    pub floor_cpu_per_get_ms: Option<f64>,
    /// dkvs in one process: greedy routing on the nodes' Kademlia tables after the gets.
    pub hops: Option<Hops>,
    pub churn: Vec<ChurnPoint>,
}

/// Greedy routing on the nodes' real Kademlia tables (dkvs in one process; see
/// `dkvs::routing_hops`).
#[derive(Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct Hops {
    /// Hops from the reader to where the walk stopped, averaged over the walks, and the most.
    pub mean: f64,
    pub max: u32,
    /// Share of walks that stopped at the live node closest to the key.
    pub reached: f64,
    /// Peers in a node's routing table, averaged.
    pub table_mean: f64,
}

/// What a dkvs run measured, in one process or as processes: made into its [`Report`].
pub(crate) struct DkvsRun {
    pub transport: String,
    pub setup: Duration,
    pub puts: Samples,
    pub gets: Samples,
    /// Requests and stores, summed over the operations that said (a put that missed its
    /// quorum in one process says too; a get that failed does not), and those operations.
    pub put_requests: u64,
    pub get_requests: u64,
    /// Nodes that stored a put, summed over the puts.
    pub stored: usize,
    pub puts_counted: usize,
    pub gets_counted: usize,
    pub put_bytes: u64,
    pub get_bytes: u64,
    /// How long the puts, and the gets, took in all.
    pub put_took: Duration,
    pub get_took: Duration,
    /// Bytes on the loopback of the run's own network namespace, if it has one.
    pub wire_put: Option<u64>,
    pub wire_get: Option<u64>,
    pub rss_per_node_bytes: u64,
    /// Connected peers, summed over the nodes.
    pub peers: u64,
    pub floor_get_p50_ms: Option<f64>,
    pub idle_cpu_per_node: Option<f64>,
    pub idle_bytes_per_node_hour: Option<f64>,
    pub cpu_per_get_ms: Option<f64>,
    pub floor_cpu_per_get_ms: Option<f64>,
    pub hops: Option<Hops>,
    pub churn: Vec<ChurnPoint>,
}

impl DkvsRun {
    pub(crate) fn report(self, plan: &Plan, nodes: usize) -> Report {
        let per = |total: u64, ops: usize| Some(total as f64 / ops.max(1) as f64);
        // The idle rate is per node and hour: the whole network's, per second.
        let idle_per_s = self.idle_bytes_per_node_hour.map(|h| h * nodes as f64 / 3600.0);
        let less_idle = |total: u64, took: Duration, ops: usize| {
            idle_per_s
                .map(|rate| (total as f64 - rate * took.as_secs_f64()).max(0.0) / ops.max(1) as f64)
        };
        Report {
            system: "dkvs".into(),
            nodes,
            transport: self.transport,
            setup_s: self.setup.as_secs_f64(),
            put: self.puts.summary(),
            get: self.gets.summary(),
            get_first_newest: None,
            requests_per_get: per(self.get_requests, self.gets_counted),
            requests_per_put: per(self.put_requests, self.puts_counted),
            stored_per_put: self.stored as f64 / self.puts_counted.max(1) as f64,
            bytes_per_get: per(self.get_bytes, plan.gets.len()),
            bytes_per_put: per(self.put_bytes, plan.puts.len()),
            bytes_per_get_less_idle: less_idle(self.get_bytes, self.get_took, plan.gets.len()),
            bytes_per_put_less_idle: less_idle(self.put_bytes, self.put_took, plan.puts.len()),
            wire_bytes_per_get: self.wire_get.and_then(|b| per(b, plan.gets.len())),
            wire_bytes_per_put: self.wire_put.and_then(|b| per(b, plan.puts.len())),
            rss_per_node_bytes: self.rss_per_node_bytes,
            peers_per_node: Some(self.peers as f64 / nodes.max(1) as f64),
            floor_get_p50_ms: self.floor_get_p50_ms,
            idle_cpu_per_node: self.idle_cpu_per_node,
            idle_bytes_per_node_hour: self.idle_bytes_per_node_hour,
            cpu_per_get_ms: self.cpu_per_get_ms,
            floor_cpu_per_get_ms: self.floor_cpu_per_get_ms,
            hops: self.hops,
            churn: self.churn,
        }
    }
}

/// A network that churn acts on: dkvs's or mainline's, each node known by its index.
pub(crate) trait Network {
    /// Indices of the live nodes.
    fn alive(&self) -> Vec<usize>;
    /// Kills node `i` (a crash: dropped).
    async fn kill(&mut self, i: usize);
    /// Starts a fresh node that joins through the first live one.
    async fn add(&mut self) -> anyhow::Result<()>;
    /// Reads `item` through node `node`.
    async fn read(&self, plan: &Plan, item: usize, node: usize) -> Read;
    /// Writes a record of `item`'s account under the fresh key `name` through node `node`,
    /// as an application writes: whether it was stored on a quorum; none where not taken.
    async fn write_fresh(
        &self,
        _plan: &Plan,
        _item: usize,
        _name: &str,
        _node: usize,
    ) -> Option<bool> {
        None
    }
}

/// Churn rounds: a fraction of the live nodes killed at once and as many fresh ones added
/// (unless `churn.adds` is off); once they joined and at least `every` passed since the kill,
/// a record of a fresh key is written for each record (where the network takes such writes),
/// and every record is read, each through a random live node.
pub(crate) async fn churn(
    net: &mut impl Network,
    system: &str,
    plan: &Plan,
    churn: &crate::Churn,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Vec<ChurnPoint>> {
    let mut rng = Rng::new(churn.seed);
    let mut points = Vec::new();
    let (mut killed, mut added) = (0, 0);
    let start = std::time::Instant::now();
    bar.set_length((churn.rounds * plan.items.len()) as u64);
    bar.set_position(0);
    for round in 0..churn.rounds {
        let alive = net.alive();
        let k = ((alive.len() as f64 * churn.fraction).round() as usize).min(alive.len() - 1);
        let round_start = std::time::Instant::now();
        bar.set_message(format!("{system}: churn round {}: killing {k}, adding {k}", round + 1));
        for i in rng.choose(&alive, k) {
            net.kill(i).await;
        }
        killed += k;
        let adds = if churn.adds { k } else { 0 };
        for _ in 0..adds {
            net.add().await?;
        }
        added += adds;
        tokio::time::sleep(churn.every.saturating_sub(round_start.elapsed())).await;
        let alive = net.alive();
        let mut writes = Samples::default();
        let mut taken = true;
        for item in 0..plan.items.len() {
            let node = alive[rng.below(alive.len())];
            let name = format!("{}-churn{}", plan.items[item].name, round + 1);
            let at = std::time::Instant::now();
            let Some(stored) = net.write_fresh(plan, item, &name, node).await else {
                taken = false;
                break;
            };
            writes.record(at.elapsed(), stored);
        }
        let read_after_kill = round_start.elapsed();
        let (mut reads, mut rereads) = (Samples::default(), Samples::default());
        for item in 0..plan.items.len() {
            let node = alive[rng.below(alive.len())];
            for samples in [&mut reads, &mut rereads] {
                let at = std::time::Instant::now();
                let read = net.read(plan, item, node).await;
                samples.read(at.elapsed(), read);
            }
            bar.inc(1);
        }
        points.push(ChurnPoint {
            t_s: (round_start - start + read_after_kill).as_secs_f64(),
            read_after_kill_s: read_after_kill.as_secs_f64(),
            killed,
            added,
            readable_newest: reads.ok as f64 / plan.items.len().max(1) as f64,
            read_p50_ms: reads.summary().p50_ms,
            reread_newest: rereads.ok as f64 / plan.items.len().max(1) as f64,
            reread_p50_ms: rereads.summary().p50_ms,
            written: taken.then(|| writes.ok as f64 / plan.items.len().max(1) as f64),
            write_p50_ms: taken.then(|| writes.summary().p50_ms),
        });
    }
    Ok(points)
}

/// `cpu` spread over `ops` operations, in milliseconds.
pub fn per_op_ms(cpu: Duration, ops: usize) -> f64 {
    cpu.as_secs_f64() * 1000.0 / ops.max(1) as f64
}

/// The CPU time this process has used (user and system, every thread), from /proc/self/stat
/// (in USER_HZ, 100 a second on Linux).
pub fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat").ok().and_then(|stat| {
        // The fields after the command name (which may hold spaces) in parentheses.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        // utime and stime are fields 14 and 15 of the line, the 12th and 13th here.
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    });
    Duration::from_millis(ticks.unwrap_or(0) * 10)
}

/// This process's resident set size in bytes (Linux).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()
        })
        .map_or(0, |kib: u64| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_fixed_by_its_seed_and_never_reads_from_the_last_writer() {
        assert_eq!((put_majority(100), put_majority(20), put_majority(10)), (11, 11, 6));
        let a = Plan::new(7, 10, 3, 50, 2, 100, 2);
        let b = Plan::new(7, 10, 3, 50, 2, 100, 2);
        assert_eq!(a.puts, b.puts);
        assert_eq!(a.gets, b.gets);
        assert_eq!(a.puts.len(), 100);
        assert_eq!(a.gets.len(), 100);
        for &(item, reader) in &a.gets {
            let writer = a.puts.iter().rev().find(|p| p.0 == item).map(|p| p.2);
            assert_ne!(Some(reader), writer, "item {item} read from its newest writer");
        }
        assert_ne!(a.value(3, 1), a.value(3, 2));
        assert_eq!(a.value(3, 2).len(), 100);
        assert_ne!(Plan::new(8, 10, 3, 50, 2, 100, 2).puts, a.puts);
    }

    #[test]
    fn the_idle_rate_is_taken_off_each_phase_over_its_own_time() {
        // 50 records of 2 versions, each read twice: 100 puts and 100 gets.
        let plan = Plan::new(7, 10, 3, 50, 2, 100, 2);
        let run = |idle: Option<f64>| DkvsRun {
            transport: "memory".into(),
            setup: Duration::ZERO,
            puts: Samples::default(),
            gets: Samples::default(),
            put_requests: 0,
            get_requests: 0,
            stored: 0,
            puts_counted: 0,
            gets_counted: 0,
            put_bytes: 50_000,
            get_bytes: 30_000,
            put_took: Duration::from_secs(2),
            get_took: Duration::from_secs(10),
            wire_put: None,
            wire_get: None,
            rss_per_node_bytes: 0,
            peers: 0,
            floor_get_p50_ms: None,
            idle_cpu_per_node: None,
            idle_bytes_per_node_hour: idle,
            cpu_per_get_ms: None,
            floor_cpu_per_get_ms: None,
            hops: None,
            churn: Vec::new(),
        };
        // 10 nodes each sending 360 bytes an hour idle: 1 byte a second in all.
        let report = run(Some(360.0)).report(&plan, 10);
        assert_eq!((plan.puts.len(), plan.gets.len()), (100, 100));
        assert_eq!(report.bytes_per_get, Some(300.0));
        assert_eq!(report.bytes_per_get_less_idle, Some((30_000.0 - 10.0) / 100.0));
        assert_eq!(report.bytes_per_put_less_idle, Some((50_000.0 - 2.0) / 100.0));
        // A background larger than the phase's traffic leaves nothing, not less.
        let report = run(Some(3600.0 * 1000.0)).report(&plan, 10);
        assert_eq!(report.bytes_per_get_less_idle, Some(0.0));
        // No idle measured: nothing to take off, no estimate.
        let report = run(None).report(&plan, 10);
        assert_eq!((report.bytes_per_get_less_idle, report.bytes_per_put_less_idle), (None, None));
    }

    #[test]
    fn percentiles_count_failed_operations_at_the_time_they_took() {
        let mut s = Samples::default();
        for ms in 1..=98 {
            s.read(Duration::from_millis(ms), Read::Newest);
        }
        s.read(Duration::from_secs(30), Read::Stale(1));
        s.read(Duration::from_secs(30), Read::Missing);
        let summary = s.summary();
        assert_eq!((summary.ok, summary.stale, summary.failed), (98, 1, 1));
        assert!((summary.p50_ms - 50.0).abs() <= 1.0, "{summary:?}");
        assert!((summary.p99_ms - 30_000.0).abs() < 1e-6, "the failures are the slowest");
        assert!((summary.success - 0.98).abs() < 1e-9);
    }

    #[test]
    fn an_older_version_breaks_a_promise_only_if_older_than_an_acknowledged_write() {
        // Three versions of three items: all acknowledged; the third failed; the second and
        // the third failed.
        let mut acked = Acked::default();
        for (item, version, ok) in [(0, 1, true), (0, 2, true), (0, 3, true)] {
            acked.note(item, version, ok);
        }
        for (item, version, ok) in [(1, 1, true), (1, 2, true), (1, 3, false)] {
            acked.note(item, version, ok);
        }
        for (item, version, ok) in [(2, 1, true), (2, 2, false), (2, 3, false)] {
            acked.note(item, version, ok);
        }
        assert_eq!((acked.of(0), acked.of(1), acked.of(2), acked.of(9)), (3, 2, 1, 0));
        let mut s = Samples::default();
        let ms = Duration::from_millis(1);
        s.read_after(ms, Read::Stale(2), acked.of(0)); // broken
        s.read_after(ms, Read::Stale(1), acked.of(1)); // broken: version 2 was acknowledged
        s.read_after(ms, Read::Stale(2), acked.of(1)); // allowed
        s.read_after(ms, Read::Stale(1), acked.of(2)); // allowed
        s.read_after(ms, Read::Newest, acked.of(2));
        let summary = s.summary();
        assert_eq!((summary.ok, summary.stale, summary.older_than_failed), (1, 2, 2));
        assert!((summary.success - 0.2).abs() < 1e-9, "no older read is newest");
    }
}
