//! Shared fixtures for the dkvs benchmarks (`benches/record.rs`, `benches/store.rs`).
//!
//! The benchmarks themselves live in `benches/`; this library holds what they share: signing
//! records in parallel, filling a store, a feed of ever-newer records for puts, and reading
//! criterion's estimates back to print each result as a ratio to its physical limit.
//!
//! Everything here runs outside the measured loops.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use dkvs_account::{KeyType, Keypair};
use dkvs_record::{Draft, Key, Record};
use dkvs_store::{Config, PutOutcome, RECORD_OVERHEAD, Store};

/// Threads used to prepare fixtures (signing, filling); the benchmark machine has 2 cores.
pub const SETUP_THREADS: usize = 2;

/// Lifetime of every benchmark record: long enough to outlive any run.
pub const TTL_MS: u64 = 24 * 3600 * 1000;

/// True when criterion runs each benchmark once instead of measuring: `cargo bench -- --test`,
/// `cargo test --benches`, or `--list`. This mirrors criterion's own rule (no `--bench` flag, or
/// `--test`), so the benchmarks can skip their largest sizes and the ratio table.
pub fn quick_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    !flag("--bench") || flag("--test") || flag("--list")
}

/// Maps `items` to a vector of results in order, on `threads` scoped threads.
pub fn parallel_map<T, U, F>(items: &[T], threads: usize, f: F) -> Vec<U>
where
    T: Sync,
    U: Send,
    F: Fn(&T) -> U + Sync,
{
    let chunk = items.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                let f = &f;
                scope.spawn(move || part.iter().map(f).collect::<Vec<U>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(part) => part,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// A small deterministic pseudo-random generator (xorshift64*), so that runs are repeatable.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a nonzero seed (zero is replaced).
    pub fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// A population of account-scoped keys, `per_owner` keys per owner, and how to sign their records.
///
/// Key `i` is `/<account-id of owner i / per_owner>/item/<i>`; its value is `value_len` bytes.
pub struct Population {
    owners: Vec<Keypair>,
    owner_ids: Vec<String>,
    per_owner: usize,
    value_len: usize,
}

impl Population {
    /// A population of `records` keys, `per_owner` per owner, of owners of `key_type`.
    pub fn new(records: usize, per_owner: usize, key_type: KeyType, value_len: usize) -> Self {
        let per_owner = per_owner.max(1);
        let owners: Vec<Keypair> =
            (0..records.div_ceil(per_owner)).map(|_| Keypair::generate(key_type)).collect();
        let owner_ids = owners.iter().map(|o| o.account_id().to_string()).collect();
        Population { owners, owner_ids, per_owner, value_len }
    }

    /// Number of owners.
    pub fn owners(&self) -> usize {
        self.owners.len()
    }

    /// The owner of key `i`.
    pub fn owner(&self, i: usize) -> &Keypair {
        &self.owners[(i / self.per_owner) % self.owners.len()]
    }

    /// Key number `i`.
    pub fn key(&self, i: usize) -> Key {
        let id = &self.owner_ids[(i / self.per_owner) % self.owner_ids.len()];
        Key::new(format!("/{id}/item/{i}")).expect("a generated key is valid")
    }

    /// The value of key `i` (deterministic bytes).
    pub fn value(&self, i: usize) -> Vec<u8> {
        (0..self.value_len).map(|j| (i.wrapping_mul(31).wrapping_add(j) & 0xff) as u8).collect()
    }

    /// Key `i`'s record with sequence `seq`, signed by its owner.
    pub fn record(&self, i: usize, key: Key, seq: u64) -> Record {
        Draft::new(key, self.value(i), seq, TTL_MS)
            .sign(self.owner(i))
            .expect("a generated record is valid")
    }

    /// The records of keys `indices` with sequence `seq`, signed on [`SETUP_THREADS`] threads.
    pub fn records(&self, indices: &[usize], seq: u64) -> Vec<Record> {
        parallel_map(indices, SETUP_THREADS, |&i| self.record(i, self.key(i), seq))
    }

    /// A store budget that holds `records` of this population several times over, so that a
    /// benchmark measures validation and storage, never a full store.
    pub fn config(&self, records: usize) -> Config {
        let weight = RECORD_OVERHEAD + 128 + self.value_len as u64;
        Config::default()
            .with_max_bytes(4 * records as u64 * weight + (64 << 20))
            .with_max_bytes_per_owner(4 * self.per_owner as u64 * weight + (1 << 20))
    }
}

/// Fills `store` with `records` (their keys must be new), with `Store::put_many` in batches of 256
/// on [`SETUP_THREADS`] threads. Panics if any record is not stored: a benchmark on a store that
/// did not take its fixture would measure nothing.
pub fn fill(store: &Store, records: Vec<Record>) {
    let mut batches: Vec<Vec<Record>> = Vec::new();
    let mut rest = records.into_iter().peekable();
    while rest.peek().is_some() {
        batches.push(rest.by_ref().take(256).collect());
    }
    let per_thread = batches.len().div_ceil(SETUP_THREADS).max(1);
    let mut groups: Vec<Vec<Vec<Record>>> = Vec::new();
    while !batches.is_empty() {
        let tail = batches.split_off(batches.len().min(per_thread));
        groups.push(std::mem::replace(&mut batches, tail));
    }
    std::thread::scope(|scope| {
        for group in groups {
            scope.spawn(move || {
                for batch in group {
                    for result in store.put_many(batch) {
                        assert!(
                            matches!(result, Ok(PutOutcome::Stored { .. })),
                            "fixture record not stored: {result:?}"
                        );
                    }
                }
            });
        }
    });
}

/// An endless supply of records that a store must accept: for a fixed set of keys already in the
/// store, one generation after another with increasing sequence numbers.
///
/// Keys are split into `lanes`, disjoint sets, so that threads putting at once never race on a
/// key. Records are signed (outside any measurement) a whole generation at a time, when a lane
/// runs short.
pub struct PutFeed<'a> {
    population: &'a Population,
    lanes: Vec<Lane>,
}

struct Lane {
    keys: Vec<(usize, Key)>,
    next_seq: u64,
    ready: VecDeque<Record>,
}

impl<'a> PutFeed<'a> {
    /// A feed over `lanes * keys_per_lane` keys spread evenly over the `records` keys of
    /// `population`, whose held records have sequence numbers below `first_seq`.
    pub fn new(
        population: &'a Population,
        records: usize,
        lanes: usize,
        keys_per_lane: usize,
        first_seq: u64,
    ) -> Self {
        let total = (lanes * keys_per_lane).clamp(1, records.max(1));
        let step = (records / total).max(1);
        let mut lane_keys: Vec<Vec<(usize, Key)>> = (0..lanes.max(1)).map(|_| Vec::new()).collect();
        for k in 0..total {
            let i = k * step;
            let count = lane_keys.len();
            lane_keys[k % count].push((i, population.key(i)));
        }
        let lanes = lane_keys
            .into_iter()
            .map(|keys| Lane { keys, next_seq: first_seq, ready: VecDeque::new() })
            .collect();
        PutFeed { population, lanes }
    }

    /// The next `n` records of lane `lane`, signing new generations first if it has fewer ready.
    pub fn take(&mut self, lane: usize, n: usize) -> Vec<Record> {
        let population = self.population;
        let count = self.lanes.len();
        let lane = &mut self.lanes[lane % count];
        while lane.ready.len() < n {
            let seq = lane.next_seq;
            lane.next_seq += 1;
            let fresh = parallel_map(&lane.keys, SETUP_THREADS, |(i, key)| {
                population.record(*i, key.clone(), seq)
            });
            lane.ready.extend(fresh);
        }
        lane.ready.drain(..n).collect()
    }
}

/// The process's resident memory in MiB (Linux `/proc/self/status`), `None` elsewhere.
pub fn resident_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 =
        line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024)
}

/// CPU time (user and system) this process has used, from Linux's `/proc/self/stat` at its
/// 100 Hz clock tick; `None` where that file does not exist.
pub fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it. The
    // state is field 3, so `utime` and `stime` (fields 14 and 15) are at 11 and 12.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// How much of the machine each benchmark actually got: the CPU time the process used during
/// its timed runs over their wall time times the threads it ran.
///
/// The benchmark machine is shared. A share well below 1 means another process held a core
/// while the benchmark ran, and its time is inflated by that, not by the code measured.
#[derive(Debug, Default)]
pub struct CpuShare {
    runs: Mutex<BTreeMap<String, (Duration, Duration, usize)>>,
}

impl CpuShare {
    /// Runs `run` (a timed run of benchmark `id` on `threads` threads) and books its usage.
    pub fn measure<R>(&self, id: &str, threads: usize, run: impl FnOnce() -> R) -> R {
        let cpu_before = process_cpu_time();
        let started = Instant::now();
        let result = run();
        let wall = started.elapsed();
        if let (Some(before), Some(after)) = (cpu_before, process_cpu_time()) {
            let mut runs = self.runs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let entry = runs.entry(id.to_owned()).or_default();
            entry.0 += wall;
            entry.1 += after.saturating_sub(before);
            entry.2 = threads;
        }
        result
    }

    /// The share of `threads` cores benchmark `id` got, or `None` when it ran for less than a
    /// second in all (too short for the 10 ms tick) or was not measured.
    pub fn share(&self, id: &str) -> Option<f64> {
        let runs = self.runs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let &(wall, cpu, threads) = runs.get(id)?;
        (wall >= Duration::from_secs(1))
            .then(|| cpu.as_secs_f64() / (wall.as_secs_f64() * threads.max(1) as f64))
    }
}

/// `n` split into `parts` shares that differ by at most one.
pub fn shares(n: u64, parts: usize) -> Vec<u64> {
    let parts = parts.max(1) as u64;
    (0..parts).map(|p| n / parts + u64::from(p < n % parts)).collect()
}

/// Reads the time per iteration back from criterion's files, but only files written in this
/// run, so that every ratio compares measurements of the same run.
pub struct Estimates {
    roots: Vec<PathBuf>,
    since: SystemTime,
}

impl Estimates {
    /// Looks for criterion's output directory where criterion puts it: `$CRITERION_HOME`, then
    /// `$CARGO_TARGET_DIR/criterion`, then a `target/criterion` above the working directory or a
    /// `criterion` directory above the benchmark executable. Only files written after `since`
    /// count.
    pub fn new(since: SystemTime) -> Estimates {
        let mut roots = Vec::new();
        if let Some(home) = std::env::var_os("CRITERION_HOME") {
            roots.push(PathBuf::from(home));
        }
        if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
            roots.push(PathBuf::from(target).join("criterion"));
        }
        if let Ok(dir) = std::env::current_dir() {
            roots.extend(dir.ancestors().map(|a| a.join("target").join("criterion")));
        }
        if let Ok(exe) = std::env::current_exe() {
            roots.extend(exe.ancestors().skip(1).map(|a| a.join("criterion")));
        }
        roots.retain(|r| r.is_dir());
        let mut seen = std::collections::HashSet::new();
        roots.retain(|r| seen.insert(r.canonicalize().unwrap_or_else(|_| r.clone())));
        Estimates { roots, since }
    }

    /// The time of one iteration of `group/function/parameter` in nanoseconds, or `None` when
    /// it was not measured in this run: criterion's headline estimate, the slope of the linear
    /// regression of sample time on iterations (which a fixed cost per sample, such as starting
    /// threads, does not bias), or the mean when there is no slope (flat sampling).
    pub fn time_ns(&self, group: &str, function: &str, parameter: &str) -> Option<f64> {
        self.roots.iter().find_map(|root| {
            let path =
                root.join(group).join(function).join(parameter).join("new").join("estimates.json");
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
            if modified < self.since {
                return None;
            }
            let json = std::fs::read_to_string(&path).ok()?;
            point_estimate(&json, "slope").or_else(|| point_estimate(&json, "mean"))
        })
    }

    /// The directories searched, for messages.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }
}

/// `<statistic>.point_estimate` from the text of criterion's `estimates.json`; `None` when the
/// statistic is missing or `null` (the slope, under flat sampling).
pub fn point_estimate(json: &str, statistic: &str) -> Option<f64> {
    let name = format!("\"{statistic}\"");
    let rest = &json[json.find(&name)? + name.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    if !rest.starts_with('{') {
        return None;
    }
    // The statistic's own `point_estimate` comes before the end of its object; the nested
    // `confidence_interval` object holds none.
    let field = "\"point_estimate\"";
    let rest = &rest[rest.find(field)? + field.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

/// A CPU share below this marks a measurement as contended.
pub const CONTENDED_BELOW: f64 = 0.9;

/// One line of the ratio table: a measured throughput ratio against its target.
#[derive(Clone, Debug)]
pub struct Ratio {
    /// What is compared, e.g. `put 1_thread 10k / verify_strict 1_thread`.
    pub name: String,
    /// Time per operation of the thing measured, in nanoseconds.
    pub measured_ns: Option<f64>,
    /// Time per operation of its physical limit, in nanoseconds.
    pub limit_ns: Option<f64>,
    /// The lowest acceptable throughput ratio (limit time / measured time); `None`: no target.
    pub target: Option<f64>,
    /// The CPU share the measured benchmark and its limit got (see [`CpuShare`]).
    pub cpu_share: (Option<f64>, Option<f64>),
}

impl Ratio {
    /// Throughput of the measured thing relative to its limit: `limit_ns / measured_ns`.
    pub fn value(&self) -> Option<f64> {
        match (self.measured_ns, self.limit_ns) {
            (Some(m), Some(l)) if m > 0.0 => Some(l / m),
            _ => None,
        }
    }

    /// True when the measured benchmark or its limit got less than [`CONTENDED_BELOW`] of its
    /// cores: another process competed, and the ratio says little.
    pub fn contended(&self) -> bool {
        [self.cpu_share.0, self.cpu_share.1].into_iter().flatten().any(|s| s < CONTENDED_BELOW)
    }

    /// `PASS`, `MISS`, `info` (no target) or `n/a` (not measured in this run).
    pub fn verdict(&self) -> &'static str {
        match (self.value(), self.target) {
            (None, _) => "n/a",
            (Some(_), None) => "info",
            (Some(v), Some(t)) if v >= t => "PASS",
            (Some(_), Some(_)) => "MISS",
        }
    }
}

/// The ratio table as aligned text (also valid Markdown).
pub fn ratio_table(rows: &[Ratio]) -> String {
    let ns = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}"));
    let share = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(10);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| {:width$} | {:>11} | {:>11} | {:>5} | {:>6} | {:7} | {:>13} |",
        "ratio", "measured ns", "limit ns", "ratio", "target", "verdict", "cpu share"
    );
    let _ = writeln!(
        out,
        "|{:-<w$}|{:->13}|{:->13}|{:->7}|{:->8}|{:-<9}|{:->15}|",
        "",
        ":",
        ":",
        ":",
        ":",
        "",
        ":",
        w = width + 2
    );
    for r in rows {
        let value = r.value().map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"));
        let target = r.target.map_or_else(|| "-".to_owned(), |t| format!(">= {t}"));
        let cpu = format!(
            "{} / {}{}",
            share(r.cpu_share.0),
            share(r.cpu_share.1),
            if r.contended() { " *" } else { "" }
        );
        let _ = writeln!(
            out,
            "| {:width$} | {:>11} | {:>11} | {:>5} | {:>6} | {:7} | {:>13} |",
            r.name,
            ns(r.measured_ns),
            ns(r.limit_ns),
            value,
            target,
            r.verdict(),
            cpu
        );
    }
    out
}

/// Human-readable count: `10k`, `1M`, or the number itself.
pub fn count_label(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_criterion_estimates() {
        let json = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,
            "lower_bound":1.0,"upper_bound":3.0},"point_estimate":2.5,"standard_error":0.1},
            "median":{"point_estimate":9.0}}"#;
        assert_eq!(point_estimate(json, "mean"), Some(2.5));
        assert_eq!(point_estimate(json, "median"), Some(9.0));
        assert_eq!(point_estimate("{}", "mean"), None);
        let flat = r#"{"mean":{"point_estimate":2.5},"slope":null,"std_dev":{"point_estimate":1}}"#;
        assert_eq!(point_estimate(flat, "slope"), None);
    }

    #[test]
    fn shares_add_up() {
        assert_eq!(shares(7, 2), vec![4, 3]);
        assert_eq!(shares(1, 2), vec![1, 0]);
        assert_eq!(shares(0, 1), vec![0]);
    }

    #[test]
    fn ratio_verdicts() {
        let r = |m, l, t| Ratio {
            name: "x".into(),
            measured_ns: Some(m),
            limit_ns: Some(l),
            target: Some(t),
            cpu_share: (Some(1.0), Some(0.5)),
        };
        assert_eq!(r(100.0, 95.0, 0.9).verdict(), "PASS");
        assert_eq!(r(100.0, 80.0, 0.9).verdict(), "MISS");
        assert!(r(100.0, 80.0, 0.9).contended());
    }
}
