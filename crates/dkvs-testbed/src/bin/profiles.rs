//! dkvs-profiles: what a node costs on each profile (`dkvs node --profile default|phone|light`),
//! as a user runs it: real `dkvs node` processes on 127.0.0.1. Three default nodes form the
//! network; then, one profile at a time, a node of that profile joins through them, R records
//! of B bytes are written through the first default node's HTTP API (from A accounts in
//! turn), and the profiled node holds them as one of their replicas (a light client holds
//! none), then sits idle for W seconds. Reported per profile: the peak resident memory once
//! started, resident memory (VmRSS) after joining and after the writes, the peak (VmHWM), the
//! records it holds, and over the idle window its bytes on the wire (the node's own TCP
//! counters), its task's timer wake-ups, and the process's context switches (every thread:
//! the operating system's count of wake-ups), scaled to one hour.
//!
//! ```text
//! cargo build --release -p dkvs-node -p dkvs-testbed
//! ./target/release/dkvs-profiles --records 10000 --value-size 1024 --idle-secs 120
//! ```

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use dkvs_node::client::Client;
use dkvs_node::home::Home;

const PASSPHRASE: &str = "dkvs-profiles";

#[derive(Parser, Debug)]
#[command(version, about = "Memory, traffic and wake-ups of a dkvs node on each profile")]
struct Cli {
    /// Records the profiled node writes (its own; it keeps each one).
    #[arg(long, default_value_t = 10_000)]
    records: usize,
    /// Accounts the records are written from, in turn, through the first default node (a
    /// profile's per-account quota holds fewer of one account's records than of several).
    #[arg(long, default_value_t = 8)]
    accounts: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// The idle window, in seconds (figures are scaled to one hour).
    #[arg(long, default_value_t = 120)]
    idle_secs: u64,
    /// Profiles to measure.
    #[arg(long, value_delimiter = ',', default_value = "default,phone,light")]
    profiles: Vec<String>,
    /// The `dkvs` binary (default: the one beside this program).
    #[arg(long)]
    dkvs: Option<PathBuf>,
    /// Write the figures as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A `dkvs node` process, killed when dropped.
struct NodeProcess {
    child: Child,
    home: PathBuf,
    address: String,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    fn client(&self) -> anyhow::Result<Client> {
        let api = Home::new(self.home.clone()).read_api()?;
        Ok(Client::new(&api.url, &api.token, Some(Duration::from_secs(60))))
    }

    /// A line of `/proc/<pid>/status`, in kB.
    fn status_kb(&self, field: &str) -> anyhow::Result<u64> {
        status_field(&format!("/proc/{}/status", self.child.id()), field)
    }

    /// Context switches of every thread of the process so far.
    fn context_switches(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for task in std::fs::read_dir(format!("/proc/{}/task", self.child.id()))? {
            let status = task?.path().join("status");
            let status = status.to_string_lossy();
            // A thread may end between the listing and the read.
            total += status_field(&status, "voluntary_ctxt_switches").unwrap_or(0);
            total += status_field(&status, "nonvoluntary_ctxt_switches").unwrap_or(0);
        }
        Ok(total)
    }

    /// A gauge from `/metrics`.
    fn metric(&self, client: &Client, name: &str) -> anyhow::Result<u64> {
        let (text, _) = client.get_bytes("/metrics")?;
        let text = String::from_utf8_lossy(&text);
        let line = text.lines().find(|l| l.starts_with(&format!("{name} ")));
        let value = line.and_then(|l| l.split(' ').nth(1)).and_then(|v| v.parse().ok());
        value.with_context(|| format!("{name} missing from /metrics"))
    }
}

fn status_field(path: &str, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let line = text.lines().find(|l| l.starts_with(&format!("{field}:")));
    let value = line.and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok());
    value.with_context(|| format!("no {field} in {path}"))
}

fn dkvs(bin: &Path, home: &Path) -> Command {
    let mut command = Command::new(bin);
    command.arg("--home").arg(home).env("DKVS_PASSPHRASE", PASSPHRASE).env_remove("DKVS_HOME");
    command
}

/// Starts `dkvs node` on 127.0.0.1 with `args`; returns once its API is up.
fn start(bin: &Path, home: &Path, args: &[&str]) -> anyhow::Result<NodeProcess> {
    std::fs::create_dir_all(home)?;
    let out = dkvs(bin, home).args(["account", "new"]).output()?;
    if !out.status.success() {
        bail!("dkvs account new: {}", String::from_utf8_lossy(&out.stderr));
    }
    let log = std::fs::File::create(home.join("node.log"))?;
    let mut child = dkvs(bin, home)
        .args(["node", "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let mut lines = BufReader::new(child.stdout.take().context("piped")?).lines();
    let mut address = None;
    for line in lines.by_ref() {
        let line = line?;
        if let Some(a) = line.strip_prefix("listening on: ") {
            address = Some(a.to_owned());
        }
        if line.starts_with("api: ") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let address = address.with_context(|| format!("the node failed: see {}", home.display()))?;
    Ok(NodeProcess { child, home: home.to_owned(), address })
}

#[derive(Debug, serde::Serialize)]
struct Figures {
    profile: String,
    records: usize,
    value_size: usize,
    peak_started_kib: u64,
    rss_joined_kib: u64,
    rss_written_kib: u64,
    peak_kib: u64,
    puts_ok: usize,
    write_secs: f64,
    records_held: u64,
    idle_secs: u64,
    idle_bytes_per_hour: u64,
    idle_timer_wakeups_per_hour: u64,
    idle_context_switches_per_second: f64,
    peers: u64,
}

fn measure(
    bin: &Path,
    dir: &Path,
    profile: &str,
    writer: &NodeProcess,
    accounts: &[String],
    cli: &Cli,
) -> anyhow::Result<Figures> {
    let via = &writer.address;
    let node = start(bin, &dir.join(profile), &["--profile", profile, "--bootstrap", via])?;
    // The peak so far: unlocking the account (argon2id, 19 MiB) is part of starting.
    let peak_started = node.status_kb("VmHWM")?;
    let client = node.client()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get_json("/v1/status")?["peers"].as_u64().unwrap_or(0) < 3 {
        if Instant::now() > deadline {
            bail!("the {profile} node did not meet the three others within a minute");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let rss_joined = node.status_kb("VmRSS")?;
    let writing_client = writer.client()?;
    let mut puts_ok = 0;
    let mut failures = std::collections::BTreeMap::<String, usize>::new();
    let bar = indicatif::ProgressBar::new(cli.records as u64).with_message(profile.to_owned());
    let writing = Instant::now();
    for i in 0..cli.records {
        let mut value = format!("{profile} {i} ").into_bytes();
        value.resize(cli.value_size, b'.');
        let account = &accounts[i % accounts.len()];
        let path = format!("/v1/kv/~/{profile}/{i}?account={account}");
        match writing_client.put_bytes(&path, &value) {
            Ok(_) => puts_ok += 1,
            Err(e) => *failures.entry(e.to_string()).or_insert(0) += 1,
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let write_secs = writing.elapsed().as_secs_f64();
    for (error, count) in &failures {
        eprintln!("{profile}: {count} puts failed: {error}");
    }
    let rss_written = node.status_kb("VmRSS")?;
    // What the node keeps: a profile's per-account quota may hold fewer than were written.
    let held = client.get_json("/v1/status")?["records"].as_u64().unwrap_or(0);
    let sent = |n: &NodeProcess| -> anyhow::Result<u64> {
        Ok(n.metric(&client, "dkvs_network_sent_bytes")?
            + n.metric(&client, "dkvs_network_received_bytes")?)
    };
    // Idle: nothing asked of the node but this program's few scrapes.
    let (bytes0, wakeups0, switches0) =
        (sent(&node)?, node.metric(&client, "dkvs_timer_wakeups")?, node.context_switches()?);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(cli.idle_secs));
    let secs = started.elapsed().as_secs_f64();
    let (bytes1, wakeups1, switches1) =
        (sent(&node)?, node.metric(&client, "dkvs_timer_wakeups")?, node.context_switches()?);
    let per_hour = |d: u64| (d as f64 * 3600.0 / secs).round() as u64;
    Ok(Figures {
        profile: profile.to_owned(),
        records: cli.records,
        value_size: cli.value_size,
        peak_started_kib: peak_started,
        rss_joined_kib: rss_joined,
        rss_written_kib: rss_written,
        peak_kib: node.status_kb("VmHWM")?,
        puts_ok,
        write_secs,
        records_held: held,
        idle_secs: cli.idle_secs,
        idle_bytes_per_hour: per_hour(bytes1.saturating_sub(bytes0)),
        idle_timer_wakeups_per_hour: per_hour(wakeups1.saturating_sub(wakeups0)),
        idle_context_switches_per_second: switches1.saturating_sub(switches0) as f64 / secs,
        peers: client.get_json("/v1/status")?["peers"].as_u64().unwrap_or(0),
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let bin = match &cli.dkvs {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("dkvs"),
    };
    if !bin.exists() {
        bail!("no dkvs binary at {}: build it (cargo build --release -p dkvs-node)", bin.display());
    }
    let dir = tempfile::tempdir()?;
    let first = start(&bin, &dir.path().join("server0"), &[])?;
    let mut servers = vec![];
    for i in 1..3 {
        let home = dir.path().join(format!("server{i}"));
        servers.push(start(&bin, &home, &["--bootstrap", &first.address])?);
    }
    // The writer's accounts ("default" is made by `start`).
    let accounts: Vec<String> = (0..cli.accounts.max(1))
        .map(|i| if i == 0 { "default".to_owned() } else { format!("writer{i}") })
        .collect();
    for name in &accounts[1..] {
        let out = dkvs(&bin, &first.home).args(["account", "new", name]).output()?;
        if !out.status.success() {
            bail!("dkvs account new {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let mut all = Vec::new();
    for profile in &cli.profiles {
        all.push(measure(&bin, dir.path(), profile, &first, &accounts, &cli)?);
    }
    println!(
        "dkvs-profiles: {} records of {} B written through a default node from {} accounts, \
         idle {} s (scaled to an hour); 3 default nodes on 127.0.0.1\n",
        cli.records,
        cli.value_size,
        cli.accounts.max(1),
        cli.idle_secs
    );
    println!(
        "| profile | peak at start MiB | RSS joined MiB | RSS after writes MiB | peak MiB | puts \
         ok | write s | records held | peers | idle bytes/h | idle timer wake-ups/h | idle context switches/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mib = |kib: u64| kib as f64 / 1024.0;
    for f in &all {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.0} | {} | {} | {} | {} | {:.1} |",
            f.profile,
            mib(f.peak_started_kib),
            mib(f.rss_joined_kib),
            mib(f.rss_written_kib),
            mib(f.peak_kib),
            f.puts_ok,
            f.write_secs,
            f.records_held,
            f.peers,
            f.idle_bytes_per_hour,
            f.idle_timer_wakeups_per_hour,
            f.idle_context_switches_per_second
        );
    }
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&all)?)?;
    }
    drop(servers);
    Ok(())
}
