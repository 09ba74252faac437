//! dkvs-testbed: the measured testnet. N dkvs nodes and, in the same run, N BitTorrent
//! Mainline DHT nodes (BEP 44, the `mainline` crate) on 127.0.0.1 run one workload: R records
//! from several accounts, each written V times through random nodes, then read back through
//! random other nodes. A read succeeds only if it returns the newest version. It reports put
//! and get latency (p50, p95, p99), success, requests per get, memory per node, and the ratio
//! dkvs/mainline of each; with `--churn`, the records still readable while nodes die and join.
//!
//! ```text
//! cargo run --release -p dkvs-testbed -- --nodes 100 --json run.json
//! cargo run --release -p dkvs-testbed -- --nodes 100 --churn 0.3 --churn-rounds 3
//! cargo build --release -p dkvs-node -p dkvs-testbed
//! ./target/release/dkvs-testbed --nodes 100 --processes --system dkvs
//! ```
//!
//! dkvs's nodes run in one process by default; with `--processes` each is a `dkvs node`
//! process of its own, on its default configuration, written and read through its HTTP API
//! (`processes.rs`).
//!
//! Each system runs in a child process of its own, one after the other, so that neither's
//! threads, timers or memory weigh on the other's figures; where the machine allows it, in a
//! network namespace of its own, whose loopback's bytes are that system's traffic (`wire.rs`).
//! Nothing listens anywhere but 127.0.0.1 (or the in-process memory transport with
//! `--transport memory`).

mod dkvs;
mod mainline;
mod processes;
mod wire;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use workload::{Plan, Report};

#[derive(Parser, Debug)]
#[command(version, about = "dkvs beside BEP 44 (mainline) on loopback: latency, success, churn")]
struct Cli {
    /// Nodes in each network.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Records written.
    #[arg(long, default_value_t = 100)]
    records: usize,
    /// Accounts that own them (round robin).
    #[arg(long, default_value_t = 4)]
    accounts: usize,
    /// Versions written of each record (sequence 1..=V); reads must return the last.
    #[arg(long, default_value_t = 2)]
    versions: u64,
    /// Value size in bytes (at most 1000, BEP 44's limit, when mainline runs; up to 10240,
    /// dkvs's, with --system dkvs).
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Reads of each record after the writes.
    #[arg(long, default_value_t = 1)]
    reads: usize,
    /// Run each dkvs node as a `dkvs node` process of its own (TCP on 127.0.0.1, the default
    /// configuration, written and read through each node's HTTP API), instead of all nodes in
    /// this process.
    #[arg(long)]
    processes: bool,
    /// With --processes: the `dkvs` binary (default: the one beside this program; build it
    /// with `cargo build --release -p dkvs-node`).
    #[arg(long)]
    dkvs: Option<PathBuf>,
    /// dkvs's transport: TCP on 127.0.0.1 (as users run it) or in memory (simulation).
    #[arg(long, value_enum, default_value_t = TransportArg::Tcp)]
    transport: TransportArg,
    /// Which systems to run.
    #[arg(long, value_enum, default_value_t = SystemArg::Both)]
    system: SystemArg,
    /// Seed mainline's routing tables with every node (default: each node bootstraps through
    /// node 0, as dkvs's nodes do).
    #[arg(long)]
    mainline_seeded: bool,
    /// dkvs: peers each node keeps connected at most (a measurement of that setting, e.g. of
    /// memory per connection; default: dkvs-net's default, 128).
    #[arg(long)]
    max_connections: Option<usize>,
    /// After the reads, kill this fraction of the live nodes at once and add as many new ones,
    /// and read every record after each round.
    #[arg(long)]
    churn: Option<f64>,
    /// With --churn: seconds from a round's kill to its reads, at least (default 10). A round
    /// starts when the last one's reads ended, and its reads wait for the new nodes to join,
    /// so they may begin later: the table says when they did.
    #[arg(long)]
    churn_every: Option<u64>,
    /// With --churn: churn rounds (default 3).
    #[arg(long)]
    churn_rounds: Option<usize>,
    /// Churn kills nodes and adds none: the reads start `--churn-every` seconds after the
    /// kill, not after the new nodes joined (which can take a minute with processes).
    #[arg(long)]
    churn_kill_only: bool,
    /// dkvs in one process, on TCP: a killed node's port is taken by a listener that accepts
    /// and says nothing, as a dead host on the internet drops packets: dials of it wait for
    /// the setup timeout instead of being refused at once (mainline's UDP gets no answer
    /// either way).
    #[arg(long)]
    silent_deaths: bool,
    /// With --processes: a churned node is stopped (SIGSTOP) instead of killed. Its
    /// connections stay open and it answers nothing, as a suspended laptop or a phone whose
    /// app the system froze; it stays stopped to the end of the run.
    #[arg(long)]
    stopped_deaths: bool,
    /// Skip the 2-node floor of dkvs's get.
    #[arg(long)]
    no_floor: bool,
    /// Seed of the workload (accounts, values, which node writes and reads what).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Exit non-zero unless every dkvs put was stored on a majority and every dkvs get returned the
    /// newest value, also after each churn round (correctness only; no figure of speed is
    /// checked).
    #[arg(long)]
    check: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// dkvs in one process: after the nodes joined, let them idle this long and report the
    /// CPU they used meanwhile, per node (what a network's background costs)
    #[arg(long, default_value_t = 0)]
    idle_secs: u64,
    /// With --idle-secs: wait this long after the join before measuring (the walks and
    /// handshakes that follow a join settle first), so the figure is the network at rest
    #[arg(long, default_value_t = 0)]
    settle_secs: u64,
    /// Internal: run the one system named by --system in this process and write its report
    /// here as JSON.
    #[arg(long, hide = true)]
    report_to: Option<PathBuf>,
    /// Internal: this child runs in a network namespace of its own: bring its loopback up and
    /// count the bytes on it (`wire`).
    #[arg(long, hide = true)]
    own_network: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    Tcp,
    Memory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SystemArg {
    Dkvs,
    Mainline,
    Both,
}

/// What a system's run needs besides the plan.
pub(crate) struct Opts {
    pub nodes: usize,
    /// A `dkvs node` process per node (`--processes`), run from this binary (`--dkvs`).
    pub processes: bool,
    pub dkvs: Option<PathBuf>,
    pub transport: String,
    pub mainline_seeded: bool,
    pub max_connections: Option<usize>,
    pub churn: Option<Churn>,
    pub floor: bool,
    /// No progress (`--quiet`).
    pub quiet: bool,
    /// Idle this long after the join and measure the CPU used (`--idle-secs`).
    pub idle: Duration,
    /// Wait this long before that measurement (`--settle-secs`).
    pub settle: Duration,
    /// This run has a network namespace of its own: its loopback's bytes are its traffic.
    pub own_network: bool,
}

/// Churn: `fraction` of the live nodes killed and as many added, every `every`, `rounds`
/// times.
pub(crate) struct Churn {
    pub fraction: f64,
    pub every: Duration,
    pub rounds: usize,
    pub seed: u64,
    /// A killed node's port answers nothing (`--silent-deaths`).
    pub silent: bool,
    /// A killed node process is stopped instead, its connections open (`--stopped-deaths`).
    pub stopped: bool,
    /// Whether as many nodes are added as were killed (not with `--churn-kill-only`).
    pub adds: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The nodes' own logs, to stderr, only when asked for (e.g. RUST_LOG=dkvs_net=debug
    // shows each lookup an operation ran, and why): a run's figures are its output.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    check_flags(&cli)?;
    // Both systems side by side: each in a network namespace of its own where the machine
    // allows it, to count its bytes through loopback the same way.
    let namespace = match cli.system {
        SystemArg::Both => wire::namespace_flags()
            .map_err(|why| {
                eprintln!(
                    "note: no bytes through loopback counted for either system: no network \
                     namespace of its own for a run (it takes unshare from util-linux, ip from \
                     iproute2, and root or user namespaces): {why}"
                )
            })
            .ok(),
        _ => None,
    };
    let own_network = namespace.is_some();
    let reports = match (cli.system, &cli.report_to) {
        (SystemArg::Both, _) => {
            let dkvs = child(SystemArg::Dkvs, namespace)?;
            match child(SystemArg::Mainline, namespace) {
                Ok(mainline) => vec![dkvs, mainline],
                Err(e) => {
                    // dkvs's figures are not lost with mainline's run.
                    print_table(&cli, std::slice::from_ref(&dkvs));
                    return Err(e);
                }
            }
        }
        (system, report_to) => {
            let report = run_here(&cli, system)?;
            if let Some(path) = report_to {
                std::fs::write(path, serde_json::to_vec(&report)?)?;
                return Ok(());
            }
            vec![report]
        }
    };
    print_table(&cli, &reports);
    if let Some(path) = &cli.json {
        let out = Output { command: std::env::args().collect(), cores: cores(), reports: &reports };
        std::fs::write(path, serde_json::to_vec_pretty(&out)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if cli.check {
        check(&reports, own_network && !cli.processes && cli.transport == TransportArg::Tcp)?;
    }
    Ok(())
}

/// Refuses what makes no sense and what would be silently ignored.
fn check_flags(cli: &Cli) -> anyhow::Result<()> {
    if cli.nodes < 2 {
        bail!("--nodes must be at least 2: a read goes through another node than the writer");
    }
    if cli.versions == 0 || cli.records == 0 || cli.reads == 0 || cli.accounts == 0 {
        bail!("--records, --versions, --reads and --accounts must be at least 1");
    }
    if cli.check && cli.system == SystemArg::Mainline {
        bail!("--check checks dkvs: run it with --system dkvs or both");
    }
    // A mainline node keeps at most 1000 mutable items and drops the oldest beyond that.
    let per_node = cli.records * workload::CLOSEST.min(cli.nodes) / cli.nodes;
    if cli.system != SystemArg::Dkvs && per_node > 1000 {
        eprintln!(
            "warning: about {per_node} items per mainline node, over the 1000 it keeps: \
             mainline will drop some by design"
        );
    }
    if cli.value_size > 1000 && cli.system != SystemArg::Dkvs {
        bail!(
            "--value-size {} is over 1000 bytes, BEP 44's limit (with --system dkvs, up to \
             10240)",
            cli.value_size
        );
    }
    if cli.value_size > dkvs_record::MAX_VALUE_LEN {
        bail!(
            "--value-size {} is over {} bytes, dkvs's limit",
            cli.value_size,
            dkvs_record::MAX_VALUE_LEN
        );
    }
    if cli.max_connections == Some(0) {
        bail!("--max-connections must be at least 1");
    }
    if cli.dkvs.is_some() && !cli.processes {
        bail!("--dkvs names the binary that --processes runs: it takes --processes");
    }
    // Given by hand it would bring up and count the machine's own loopback.
    if cli.own_network && cli.report_to.is_none() {
        bail!("--own-network is for a child the testbed runs in a network namespace of its own");
    }
    // (A child of `--system both` that runs mainline is handed the parent's flags.)
    let mainline_alone = cli.system == SystemArg::Mainline && cli.report_to.is_none();
    if cli.idle_secs > 0 && (cli.processes || mainline_alone) {
        bail!("--idle-secs measures dkvs in one process: not with --processes or mainline alone");
    }
    if cli.settle_secs > 0 && cli.idle_secs == 0 {
        bail!("--settle-secs takes --idle-secs (it is the wait before that measurement)");
    }
    if cli.churn.is_none() && (cli.churn_every.is_some() || cli.churn_rounds.is_some()) {
        bail!("--churn-every and --churn-rounds take --churn");
    }
    if cli.churn_rounds == Some(0) {
        bail!("--churn-rounds must be at least 1");
    }
    if cli.processes && (cli.transport == TransportArg::Memory || cli.max_connections.is_some()) {
        bail!(
            "--processes runs `dkvs node` on its default configuration, on TCP: it takes \
             neither --transport memory nor --max-connections"
        );
    }
    if let Some(f) = cli.churn
        && !(0.0..1.0).contains(&f)
    {
        bail!("--churn {f} must be a fraction in [0, 1)");
    }
    if cli.silent_deaths
        && (cli.churn.is_none() || cli.processes || cli.transport == TransportArg::Memory)
    {
        bail!("--silent-deaths takes --churn, in one process, on TCP");
    }
    if cli.churn_kill_only && cli.churn.is_none() {
        bail!("--churn-kill-only takes --churn");
    }
    if cli.stopped_deaths && (cli.churn.is_none() || !cli.processes) {
        bail!("--stopped-deaths takes --churn and --processes");
    }
    Ok(())
}

#[derive(Serialize)]
struct Output<'a> {
    command: Vec<String>,
    cores: usize,
    reports: &'a [Report],
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs one system in a child process of this binary and reads its report; with `namespace`
/// (`unshare`'s flags), in a network namespace of its own (`wire`).
fn child(system: SystemArg, namespace: Option<&[&str]>) -> anyhow::Result<Report> {
    let dir = std::env::temp_dir().join(format!("dkvs-testbed-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{system:?}.json"));
    let exe = std::env::current_exe()?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // The parent's flags, less those that are the parent's alone (clap rejects a repeated
    // flag, and the child writes no JSON of its own and checks nothing).
    strip(&mut args, "--system", true);
    strip(&mut args, "--json", true);
    strip(&mut args, "--check", false);
    let name = format!("{system:?}").to_lowercase();
    args.extend(["--system".into(), name.clone(), "--report-to".into()]);
    args.push(path.display().to_string());
    let mut command = if let Some(flags) = namespace {
        args.push("--own-network".into());
        wire::in_own_namespace(flags, &exe)
    } else {
        std::process::Command::new(exe)
    };
    let status = command.args(&args).status();
    let report = match status {
        Ok(status) if status.success() => std::fs::read(&path)
            .with_context(|| format!("the {name} run's report"))
            .and_then(|bytes| Ok(serde_json::from_slice(&bytes)?)),
        Ok(status) => Err(anyhow::anyhow!("the {name} run failed ({status})")),
        Err(e) => Err(anyhow::anyhow!("the {name} run did not start: {e}")),
    };
    let _ = std::fs::remove_dir_all(&dir);
    report
}

/// Removes `flag` (and its value, if it takes one) from `args`, in both `--f v` and `--f=v`.
fn strip(args: &mut Vec<String>, flag: &str, takes_value: bool) {
    let mut out = Vec::with_capacity(args.len());
    let mut skip = false;
    for arg in args.drain(..) {
        if skip {
            skip = false;
        } else if arg == flag {
            skip = takes_value;
        } else if !arg.starts_with(&format!("{flag}=")) {
            out.push(arg);
        }
    }
    *args = out;
}

fn run_here(cli: &Cli, system: SystemArg) -> anyhow::Result<Report> {
    let plan = Plan::new(
        cli.seed,
        cli.nodes,
        cli.accounts,
        cli.records,
        cli.versions,
        cli.value_size,
        cli.reads,
    );
    let opts = Opts {
        nodes: cli.nodes,
        processes: cli.processes,
        dkvs: cli.dkvs.clone(),
        transport: format!("{:?}", cli.transport).to_lowercase(),
        mainline_seeded: cli.mainline_seeded,
        max_connections: cli.max_connections,
        quiet: cli.quiet,
        idle: Duration::from_secs(cli.idle_secs),
        settle: Duration::from_secs(cli.settle_secs),
        churn: cli.churn.map(|fraction| Churn {
            fraction,
            every: Duration::from_secs(cli.churn_every.unwrap_or(10)),
            rounds: cli.churn_rounds.unwrap_or(3),
            seed: cli.seed ^ 0xc4u64,
            silent: cli.silent_deaths,
            stopped: cli.stopped_deaths,
            adds: !cli.churn_kill_only,
        }),
        floor: !cli.no_floor,
        own_network: cli.own_network,
    };
    if cli.own_network {
        wire::loopback_up()?;
    }
    let bar = if cli.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")?
                .progress_chars("=> "),
        );
        bar
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(cores()).enable_all().build()?;
    let report = runtime.block_on(async {
        match system {
            SystemArg::Mainline => mainline::run(&plan, &opts, &bar).await,
            _ if opts.processes => processes::run(&plan, &opts, &bar).await,
            _ => dkvs::run(&plan, &opts, &bar).await,
        }
    });
    bar.finish_and_clear();
    report
}

fn check(reports: &[Report], on_the_wire: bool) -> anyhow::Result<()> {
    let dkvs = reports.iter().find(|r| r.system == "dkvs").context("--check needs a dkvs run")?;
    let (put, get) = (&dkvs.put, &dkvs.get);
    if put.failed > 0 || get.stale + get.older_than_failed > 0 || get.failed > 0 || get.ok == 0 {
        bail!(
            "check failed: dkvs puts failed: {}; gets that returned an older version: {}, \
             nothing or a wrong value: {} (of {})",
            put.failed,
            get.stale + get.older_than_failed,
            get.failed,
            get.ok + get.stale + get.older_than_failed + get.failed
        );
    }
    for (i, point) in dkvs.churn.iter().enumerate() {
        if point.readable_newest < 1.0 || point.reread_newest < 1.0 {
            bail!(
                "check failed: after churn round {}, {:.1}% of the records were readable with \
                 their newest value ({:.1}% read again at once)",
                i + 1,
                100.0 * point.readable_newest,
                100.0 * point.reread_newest
            );
        }
    }
    // Each system ran in a network namespace of its own: its loopback saw its operations.
    if on_the_wire {
        for report in reports {
            let counted = [report.wire_bytes_per_put, report.wire_bytes_per_get];
            if !counted.iter().all(|bytes| bytes.is_some_and(|b| b > 0.0)) {
                bail!(
                    "check failed: {}'s bytes through loopback were not counted (per put, per get: \
                     {counted:?})",
                    report.system
                );
            }
        }
    }
    println!(
        "check: every dkvs put was stored on a majority and every get returned the newest \
         value{}{}",
        if dkvs.churn.is_empty() { "" } else { ", also after each churn round" },
        if on_the_wire { "; each system's bytes through loopback were counted" } else { "" }
    );
    Ok(())
}

fn print_table(cli: &Cli, reports: &[Report]) {
    let dkvs = reports.iter().find(|r| r.system == "dkvs");
    let ml = reports.iter().find(|r| r.system == "mainline");
    let mainline = match ml {
        Some(_) if cli.mainline_seeded => ", mainline on UDP (seeded routing tables)",
        Some(_) => ", mainline on UDP (bootstrapped through node 0)",
        None => "",
    };
    println!(
        "dkvs-testbed: {} nodes per network; {} records x {} versions of {} B from {} accounts; \
         {} reads; dkvs on {}{}{}{}; seed {}; {} cores",
        cli.nodes,
        cli.records,
        cli.versions,
        cli.value_size,
        cli.accounts,
        cli.records * cli.reads,
        format!("{:?}", cli.transport).to_lowercase(),
        if cli.processes { ", a `dkvs node` process per node" } else { "" },
        cli.max_connections.map(|m| format!(" (max_connections {m})")).unwrap_or_default(),
        mainline,
        cli.seed,
        cores(),
    );
    println!();
    println!("| figure | dkvs | mainline | dkvs / mainline |");
    println!("|---|---:|---:|---:|");
    // Ratios of counts that are mostly zero (stale reads) say nothing: `ratio` false.
    let row_with = |name: &str, f: &dyn Fn(&Report) -> Option<f64>, digits: usize, ratio: bool| {
        let d = dkvs.and_then(f);
        let m = ml.and_then(f);
        let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        let ratio = match (d, m) {
            (Some(d), Some(m)) if m > 0.0 && ratio => format!("{:.2}x", d / m),
            _ => "-".into(),
        };
        println!("| {name} | {} | {} | {ratio} |", show(d), show(m));
    };
    let row = |name: &str, f: &dyn Fn(&Report) -> Option<f64>, digits: usize| {
        row_with(name, f, digits, true)
    };
    let majority = workload::put_majority(cli.nodes);
    // A p99 of fewer than 100 operations is one of their slowest few; of 100, the second
    // slowest.
    row_with("puts timed", &|r| Some(r.put.n as f64), 0, false);
    row("put p50 ms (all puts)", &|r| Some(r.put.p50_ms), 2);
    row("put p95 ms", &|r| Some(r.put.p95_ms), 2);
    row("put p99 ms", &|r| Some(r.put.p99_ms), 2);
    row(
        &format!("put success % (stored on >= {majority} nodes)"),
        &|r| Some(100.0 * r.put.success),
        1,
    );
    row("nodes that stored a put, mean (of the puts that said)", &|r| Some(r.stored_per_put), 1);
    row_with("gets timed", &|r| Some(r.get.n as f64), 0, false);
    row("get p50 ms (all gets)", &|r| Some(r.get.p50_ms), 2);
    row("get p95 ms", &|r| Some(r.get.p95_ms), 2);
    row("get p99 ms", &|r| Some(r.get.p99_ms), 2);
    row("get newest %", &|r| Some(100.0 * r.get.success), 1);
    row_with(
        "gets that returned a version older than an acknowledged write",
        &|r| Some(r.get.stale as f64),
        0,
        false,
    );
    row_with(
        "gets that returned an older version, none older than the last acknowledged",
        &|r| Some(r.get.older_than_failed as f64),
        0,
        false,
    );
    row("get: first newest answer p50 ms", &|r| r.get_first_newest.as_ref().map(|s| s.p50_ms), 2);
    row("requests sent per get (of the gets that said)", &|r| r.requests_per_get, 1);
    row("requests sent per put (of the puts that said)", &|r| r.requests_per_put, 1);
    row("bytes sent per get (all nodes, background included)", &|r| r.bytes_per_get, 0);
    row("bytes sent per put (all nodes, background included)", &|r| r.bytes_per_put, 0);
    row("bytes sent per get, less the idle rate", &|r| r.bytes_per_get_less_idle, 0);
    row("bytes sent per put, less the idle rate", &|r| r.bytes_per_put_less_idle, 0);
    row("bytes through loopback per get (IP packets, all nodes)", &|r| r.wire_bytes_per_get, 0);
    row("bytes through loopback per put (IP packets, all nodes)", &|r| r.wire_bytes_per_put, 0);
    // In one process, the process's growth shared out; with --processes, each dkvs node's
    // own, which is not the same measure as mainline's growth: no ratio then.
    let rss = if cli.processes {
        "RSS per node KiB (dkvs: a node process's own; mainline: growth per node in one process)"
    } else {
        "RSS growth per node KiB"
    };
    row_with(rss, &|r| Some(r.rss_per_node_bytes as f64 / 1024.0), 0, !cli.processes);
    row("connected peers per node", &|r| r.peers_per_node, 1);
    row("setup s", &|r| Some(r.setup_s), 1);
    row("idle CPU per node, % of a core", &|r| r.idle_cpu_per_node, 3);
    row("idle bytes sent per node and hour", &|r| r.idle_bytes_per_node_hour, 0);
    row("2-node get p50 ms (floor)", &|r| r.floor_get_p50_ms, 2);
    row("get p50 / floor", &|r| r.floor_get_p50_ms.map(|f| r.get.p50_ms / f.max(1e-9)), 1);
    row("CPU per get ms (all nodes, in one process)", &|r| r.cpu_per_get_ms, 3);
    row("2-node CPU per get ms (floor)", &|r| r.floor_cpu_per_get_ms, 3);
    row("routing hops, mean (greedy, on the tables)", &|r| r.hops.as_ref().map(|h| h.mean), 2);
    row("routing hops, most", &|r| r.hops.as_ref().map(|h| f64::from(h.max)), 0);
    row("walks ending at the closest node %", &|r| r.hops.as_ref().map(|h| 100.0 * h.reached), 1);
    row("routing table size, mean", &|r| r.hops.as_ref().map(|h| h.table_mean), 1);
    let rounds = reports.iter().map(|r| r.churn.len()).max().unwrap_or(0);
    for i in 0..rounds {
        let point = |r: &Report| r.churn.get(i).cloned();
        let label = dkvs
            .and_then(point)
            .or_else(|| ml.and_then(point))
            .map_or(String::new(), |p| format!(" ({} killed, {} added in all)", p.killed, p.added));
        row(
            &format!("churn round {}: put of a fresh key p50 ms", i + 1),
            &|r| point(r).and_then(|p| p.write_p50_ms),
            2,
        );
        row(
            &format!("churn round {}: puts of a fresh key stored on a quorum %", i + 1),
            &|r| point(r).and_then(|p| p.written.map(|w| 100.0 * w)),
            1,
        );
        row(
            &format!("churn round {}: reads began, s after its kill", i + 1),
            &|r| point(r).map(|p| p.read_after_kill_s),
            1,
        );
        row(&format!("churn round {}: get p50 ms", i + 1), &|r| point(r).map(|p| p.read_p50_ms), 2);
        row(
            &format!("churn round {}: readable newest %{label}", i + 1),
            &|r| point(r).map(|p| 100.0 * p.readable_newest),
            1,
        );
        row(
            &format!("churn round {}: the same get again at once, p50 ms", i + 1),
            &|r| point(r).map(|p| p.reread_p50_ms),
            2,
        );
        row(
            &format!("churn round {}: the same get again, newest %", i + 1),
            &|r| point(r).map(|p| 100.0 * p.reread_newest),
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_that_would_be_ignored_or_make_no_sense_are_refused() {
        let flags = |line: &str| {
            let cli = Cli::try_parse_from(line.split_whitespace()).expect("parses");
            check_flags(&cli).map_err(|e| e.to_string())
        };
        assert!(flags("t --nodes 10 --check").is_ok());
        assert!(flags("t --system dkvs --value-size 10240").is_ok());
        assert!(flags("t --churn 0.3 --churn-every 5 --churn-rounds 2").is_ok());
        assert!(flags("t --system dkvs --idle-secs 5 --settle-secs 5").is_ok());
        // Both systems: the dkvs child idles, the mainline child is handed the flag too.
        assert!(flags("t --idle-secs 5").is_ok());
        assert!(flags("t --idle-secs 5 --system mainline --report-to x.json").is_ok());
        assert!(flags("t --system dkvs --own-network --report-to x.json").is_ok());
        let refused = [
            ("t --value-size 1024", "BEP 44"),
            ("t --system dkvs --value-size 10241", "dkvs's limit"),
            ("t --max-connections 0", "at least 1"),
            ("t --dkvs /bin/dkvs", "takes --processes"),
            ("t --processes --idle-secs 5", "one process"),
            ("t --system mainline --idle-secs 5", "one process"),
            ("t --processes --churn 0.3 --dkvs /bin/dkvs --idle-secs 5", "one process"),
            ("t --settle-secs 5", "takes --idle-secs"),
            ("t --own-network", "network namespace of its own"),
            ("t --churn-every 5", "take --churn"),
            ("t --churn-rounds 2", "take --churn"),
            ("t --churn 0.3 --churn-rounds 0", "at least 1"),
            ("t --nodes 1", "at least 2"),
        ];
        for (line, why) in refused {
            let error = flags(line).expect_err(line);
            assert!(error.contains(why), "{line}: {error}");
        }
    }

    #[test]
    fn a_child_gets_the_parents_flags_but_its_own_system() {
        let mut args: Vec<String> =
            ["--nodes", "10", "--system", "both", "--json=x.json", "--check", "--quiet"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        strip(&mut args, "--system", true);
        strip(&mut args, "--json", true);
        strip(&mut args, "--check", false);
        assert_eq!(args, ["--nodes", "10", "--quiet"]);
    }
}
