//! dkvs-profiles: what a node costs on each profile (`dkvs node --profile default|phone|light`),
//! as a user runs it: real `dkvs node` processes on 127.0.0.1. Three default nodes form the
//! network; then, one profile at a time, a node of that profile joins through them, R records
//! of B bytes are written through the first default node's HTTP API (from A accounts in
//! turn), and the profiled node holds them as one of their replicas (a light client holds
//! none), then sits idle for W seconds. Reported per profile: the peak resident memory once
//! started, resident memory (VmRSS) after joining and after the writes, the peak (VmHWM) after
//! the writes and at the end (the idle window's periodic rounds in it), the records it holds,
//! and over the idle window its bytes on the wire (the node's own TCP counters), its task's
//! timer wake-ups, and the process's context switches (every thread: the operating system's
//! count of wake-ups), scaled to one hour.
//!
//! ```text
//! cargo build --release -p dkvs-node -p dkvs-testbed
//! ./target/release/dkvs-profiles --records 10000 --value-size 1024 --idle-secs 120
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use dkvs_testbed::process::{self, NodeProcess, dkvs_binary, metric, new_account};

#[derive(Parser, Debug)]
#[command(version, about = "Memory, traffic and wake-ups of a dkvs node on each profile")]
struct Cli {
    /// Records written through the first default node; the profiled node holds them as one
    /// of their replicas (others' records, in its budget for those; a light client none).
    #[arg(long, default_value_t = 10_000)]
    records: usize,
    /// Accounts the records are written from, in turn, through the first default node (a
    /// profile's per-account quota holds fewer of one account's records than of several).
    #[arg(long, default_value_t = 8)]
    accounts: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// The idle window, in seconds (figures are scaled to one hour). A window shorter than
    /// the profile's periodic rounds (replication every 10 min, 30 on a phone; the table's
    /// refresh every 15 min, an hour on a phone) counts none of them.
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

/// A new home with an account, and a node started in it with `args`.
fn start(bin: &Path, home: &Path, args: &[&str]) -> anyhow::Result<NodeProcess> {
    new_account(bin, home, None)?;
    process::start(bin, home, args)
}

#[derive(Debug, serde::Serialize)]
struct Figures {
    profile: String,
    records: usize,
    value_size: usize,
    peak_started_kib: u64,
    rss_joined_kib: u64,
    rss_written_kib: u64,
    peak_written_kib: u64,
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
    let client = node.client(Duration::from_secs(60))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get_json("/v1/status")?["peers"].as_u64().unwrap_or(0) < 3 {
        if Instant::now() > deadline {
            bail!("the {profile} node did not meet the three others within a minute");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let rss_joined = node.status_kb("VmRSS")?;
    let writing_client = writer.client(Duration::from_secs(60))?;
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
    let (rss_written, peak_written) = (node.status_kb("VmRSS")?, node.status_kb("VmHWM")?);
    // What the node keeps: a profile's per-account quota may hold fewer than were written.
    let held = client.get_json("/v1/status")?["records"].as_u64().unwrap_or(0);
    let sent = || -> anyhow::Result<u64> {
        Ok(metric(&client, "dkvs_network_sent_bytes")?
            + metric(&client, "dkvs_network_received_bytes")?)
    };
    // Idle: nothing asked of the node but this program's few scrapes.
    let (bytes0, wakeups0, switches0) =
        (sent()?, metric(&client, "dkvs_timer_wakeups")?, node.context_switches()?);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(cli.idle_secs));
    let secs = started.elapsed().as_secs_f64();
    let (bytes1, wakeups1, switches1) =
        (sent()?, metric(&client, "dkvs_timer_wakeups")?, node.context_switches()?);
    let per_hour = |d: u64| (d as f64 * 3600.0 / secs).round() as u64;
    Ok(Figures {
        profile: profile.to_owned(),
        records: cli.records,
        value_size: cli.value_size,
        peak_started_kib: peak_started,
        rss_joined_kib: rss_joined,
        rss_written_kib: rss_written,
        peak_written_kib: peak_written,
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
    let bin = dkvs_binary(cli.dkvs.as_deref())?;
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
        new_account(&bin, &first.home, Some(name))?;
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
        "| profile | peak at start MiB | RSS joined MiB | RSS after writes MiB | peak after writes \
         MiB | peak at the end MiB | puts ok | write s | records held | peers | idle bytes/h | idle timer wake-ups/h | idle context switches/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mib = |kib: u64| kib as f64 / 1024.0;
    for f in &all {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.0} | {} | {} | {} | {} | {:.1} |",
            f.profile,
            mib(f.peak_started_kib),
            mib(f.rss_joined_kib),
            mib(f.rss_written_kib),
            mib(f.peak_written_kib),
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
    println!(
        "\nidle bytes/h are sent and received; timer wake-ups are the node task's own timers \
         (libp2p's, as gossipsub's heartbeat, are not among them: the context switches count \
         every thread's wake-ups)"
    );
    if cli.idle_secs < 3600 {
        println!(
            "the idle window ({} s) is shorter than an hour: periodic rounds longer than it \
             (replication, the table's refresh) may not be in it",
            cli.idle_secs
        );
    }
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&all)?)?;
    }
    drop(servers);
    Ok(())
}
