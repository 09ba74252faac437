//! Phones behind NAT: real `dkvs node` processes in network namespaces that this test makes
//! (root, iproute2 and iptables; `.ci/run` installs them). Nothing leaves those namespaces.
//!
//! ```text
//!   relay 198.18.0.1   pub1 .2   pub2 .3        (public nodes, on one bridge in "wan")
//!   r1 198.18.0.4 -- NAT -- p1 10.1.0.2         (a phone behind a home router)
//!   r2 198.18.0.5 -- NAT -- p2 10.2.0.2         (another one, behind another router)
//!   r3 198.18.0.6 -- NAT -- p3 10.3.0.2         (behind a NAT that maps every flow to a
//!                                                random port: hole punching cannot work)
//! ```
//!
//! Every node runs the default configuration, but for two settings: the relay serves as a
//! relay (`relay_server`), and, because 198.18.0.0/15 is a reserved range and never public,
//! every node lets AutoNAT probe it (`autonat_only_global_ips = false`); without that, AutoNAT
//! never asks, as it must not on the internet. The test asserts that:
//! - the public nodes are found reachable and serve the DHT; the phones are found unreachable
//!   (AutoNAT), stay Kademlia clients, and hold a reservation on the relay by themselves;
//! - the phones' puts and gets work and return the newest value, and a watch on a phone fires
//!   when another phone writes;
//! - a phone is reached through the relay by another phone (an IPFS file fetched from it), the
//!   connection between the two easy NATs is upgraded to a direct one (DCUtR), and the one
//!   to the phone behind the random-port NAT stays relayed. It prints which ended which.
//!
//! A second test, on a topology of its own, checks that one network's many peers cannot push
//! another network's peer out of a full node (`one_network_cannot_push_other_networks_peers_out`);
//! a third, that a flood of connections that never finish their handshake holds a bounded
//! share of the node (`a_flood_of_unfinished_handshakes_holds_a_bounded_share_of_the_node`).

mod common;

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Reaped, ok, run_for};

const PASSPHRASE: &str = "correct horse battery staple";
/// The longest any one step may take.
const STEP: Duration = Duration::from_secs(90);

/// Network namespaces, deleted (with everything in them) when dropped.
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn name(&self, short: &str) -> String {
        ns_name(short)
    }
}

/// This run's name for namespace `short`: runs side by side do not clash.
fn ns_name(short: &str) -> String {
    format!("dkvs{}-{short}", std::process::id())
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("the command runs");
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// In namespace `ns`: `ip netns exec <ns> args...`.
fn ns_sh(ns: &str, args: &[&str]) {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    sh(&all);
}

/// Makes namespaces `extra` (empty) and, on one bridge in namespace `wan`, `hosts`, each with
/// its address (`a.b.c.d/len`) on its `eth0`.
fn bridged(wan: &str, hosts: &[(&str, String)], extra: &[&str]) -> Namespaces {
    let mut nets = Namespaces { names: Vec::new() };
    let n = ns_name;
    let all = [wan].into_iter().chain(hosts.iter().map(|(short, _)| *short));
    for short in all.chain(extra.iter().copied()) {
        let ns = n(short);
        sh(&["ip", "netns", "add", &ns]);
        nets.names.push(ns.clone());
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    }
    let wan = n(wan);
    sh(&["ip", "-n", &wan, "link", "add", "br0", "type", "bridge"]);
    sh(&["ip", "-n", &wan, "link", "set", "br0", "up"]);
    for (short, addr) in hosts {
        let (ns, port) = (n(short), format!("w-{short}"));
        // Both ends are made inside their namespaces: no name here clashes with the host's.
        sh(&[
            "ip", "link", "add", &port, "netns", &wan, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        sh(&["ip", "-n", &wan, "link", "set", &port, "master", "br0", "up"]);
        sh(&["ip", "-n", &ns, "addr", "add", addr, "dev", "eth0"]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
    }
    nets
}

/// The topology of the module's comment.
fn topology() -> Namespaces {
    let n = ns_name;
    let hosts: Vec<(&str, String)> = ["relay", "pub1", "pub2", "r1", "r2", "r3"]
        .iter()
        .enumerate()
        .map(|(i, short)| (*short, format!("198.18.0.{}/24", i + 1)))
        .collect();
    let nets = bridged("wan", &hosts, &["p1", "p2", "p3"]);
    for k in 1..=3 {
        let (router, phone) = (n(&format!("r{k}")), n(&format!("p{k}")));
        let veth = ["ip", "link", "add", "lan0", "netns", &router, "type", "veth", "peer"];
        sh(&[&veth[..], &["name", "eth0", "netns", &phone]].concat());
        sh(&["ip", "-n", &router, "addr", "add", &format!("10.{k}.0.1/24"), "dev", "lan0"]);
        sh(&["ip", "-n", &router, "link", "set", "lan0", "up"]);
        sh(&["ip", "-n", &phone, "addr", "add", &format!("10.{k}.0.2/24"), "dev", "eth0"]);
        sh(&["ip", "-n", &phone, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &phone, "route", "add", "default", "via", &format!("10.{k}.0.1")]);
        ns_sh(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let lan = format!("10.{k}.0.0/24");
        let mut masquerade =
            vec!["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", &lan, "-o", "eth0"];
        masquerade.extend(["-j", "MASQUERADE"]);
        if k == 3 {
            masquerade.push("--random-fully");
        }
        ns_sh(&router, &masquerade);
        // Only answers come in from outside; nothing is forwarded to the phone unasked.
        ns_sh(
            &router,
            &[
                "iptables",
                "-A",
                "FORWARD",
                "-i",
                "eth0",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
        );
        ns_sh(&router, &["iptables", "-A", "FORWARD", "-i", "eth0", "-j", "DROP"]);
        // As home routers do, the router itself ignores what it did not ask for (no reset,
        // no ICMP). Linux would otherwise also keep a record of that first packet, and the
        // phone's own packet to the same peer would then leave on another port.
        ns_sh(
            &router,
            &[
                "iptables",
                "-A",
                "INPUT",
                "-i",
                "eth0",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
        );
        ns_sh(&router, &["iptables", "-A", "INPUT", "-i", "eth0", "-j", "DROP"]);
    }
    nets
}

/// A child in a process group of its own (a shell and what it starts), killed whole when
/// dropped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// A node running in a namespace.
struct NodeProcess {
    _child: Reaped,
    ns: String,
    home: PathBuf,
    peer: String,
    /// Its default account's id.
    account: String,
}

/// `dkvs --home <home> args...` run in namespace `ns`.
fn dkvs(ns: &str, home: &Path, args: &[&str]) -> Command {
    dkvs_through(ns, &[], home, args)
}

/// [`dkvs`], run by `wrapper` (a program and its arguments, which runs the rest).
fn dkvs_through(ns: &str, wrapper: &[&str], home: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns]).args(wrapper);
    command.arg(env!("CARGO_BIN_EXE_dkvs")).arg("--home").arg(home);
    command.args(args).env("DKVS_PASSPHRASE", PASSPHRASE).env_remove("DKVS_HOME");
    command
}

/// Runs a client command with a deadline; returns its output.
fn run(command: Command) -> Output {
    run_for(command, STEP)
}

/// The lines a child prints, as they come.
fn lines_of(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Starts `dkvs node` in `ns` on the default configuration plus `settings`, joining through
/// `bootstrap`; returns once its API is up.
fn start(ns: &str, home: &Path, bootstrap: &[String], settings: &str) -> NodeProcess {
    start_limited(ns, home, bootstrap, settings, None, None)
}

/// [`start`], with at most `descriptors` open files for the node when given, and its log
/// filtered by `filter` (`RUST_LOG`; only what it logs changes) when given.
fn start_limited(
    ns: &str,
    home: &Path,
    bootstrap: &[String],
    settings: &str,
    descriptors: Option<u32>,
    filter: Option<&str>,
) -> NodeProcess {
    std::fs::create_dir_all(home).expect("home");
    let account = ok(run(dkvs(ns, home, &["account", "new"]))).trim().to_owned();
    let config = home.join("config.toml");
    std::fs::write(&config, settings).expect("config");
    let mut args = vec!["node".to_owned(), "--config".to_owned(), config.display().to_string()];
    for peer in bootstrap {
        args.extend(["--bootstrap".to_owned(), peer.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = std::fs::File::create(home.join("node.log")).expect("log file");
    // prlimit sets the limit and runs the node.
    let limit = descriptors.map(|n| format!("--nofile={n}:{n}"));
    let wrapper: Vec<&str> = limit.iter().flat_map(|limit| ["prlimit", limit.as_str()]).collect();
    let mut command = dkvs_through(ns, &wrapper, home, &args);
    if let Some(filter) = filter {
        command.env("RUST_LOG", filter);
    }
    let mut child = command.stdout(Stdio::piped()).stderr(log).spawn().expect("node starts");
    let rx = lines_of(child.stdout.take().expect("piped"));
    let child = Reaped(child);
    let mut peer = None;
    let deadline = Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            let log = std::fs::read_to_string(home.join("node.log")).unwrap_or_default();
            panic!("the node in {ns} did not start: {log}")
        });
        if let Some(id) = line.strip_prefix("peer id: ") {
            peer = Some(id.to_owned());
        }
        if line.starts_with("api: ") {
            break;
        }
    }
    let (ns, home, peer) = (ns.to_owned(), home.to_owned(), peer.expect("a peer id"));
    NodeProcess { _child: child, ns, home, peer, account }
}

impl NodeProcess {
    fn cli(&self, args: &[&str]) -> Command {
        dkvs(&self.ns, &self.home, args)
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&ok(run(self.cli(&["status"])))).expect("status is JSON")
    }

    /// Waits until the node's status passes `check`; panics with its last status and its log.
    fn wait_for(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + STEP;
        loop {
            let status = self.status();
            if check(&status) {
                return status;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.home.join("node.log")).unwrap_or_default();
                panic!("{}: not {what} within {STEP:?}: {status}\n{log}", self.ns);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// This node's connections to `peer`: (address, relayed).
    fn connections_to(&self, peer: &str) -> Vec<(String, bool)> {
        let out = ok(run(self.cli(&["peers", "--addresses"])));
        out.lines()
            .filter_map(|line| {
                let mut parts = line.split(' ');
                let (p, addr, how) = (parts.next()?, parts.next()?, parts.next()?);
                (p == peer).then(|| (addr.to_owned(), how == "relayed"))
            })
            .collect()
    }
}

/// Held by each test for its whole run: the two tests' namespaces and a dozen node processes
/// each are too much for 2 cores at once (hole punching has deadlines).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id runs");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

#[test]
fn phones_behind_nat_hold_a_relay_slot_and_read_write_and_watch() {
    assert!(
        is_root(),
        "this test makes network namespaces and NAT rules: run it as root with iproute2 and \
         iptables installed (.ci/run does)"
    );
    let _alone = one_at_a_time();
    let nets = topology();
    let dir = tempfile::tempdir().expect("tempdir");
    let home = |name: &str| dir.path().join(name);
    let public = "autonat_only_global_ips = false\n";

    let relay =
        start(&nets.name("relay"), &home("relay"), &[], &format!("{public}relay_server = true\n"));
    let via_relay = format!("/ip4/198.18.0.1/tcp/4040/p2p/{}", relay.peer);
    let pubs: Vec<NodeProcess> = (1..=2)
        .map(|i| {
            let name = format!("pub{i}");
            start(&nets.name(&name), &home(&name), std::slice::from_ref(&via_relay), public)
        })
        .collect();
    // Phones join over QUIC, as a phone app would: hole punching works best over UDP.
    let via_relay_quic = format!("/ip4/198.18.0.1/udp/4040/quic-v1/p2p/{}", relay.peer);
    let phones: Vec<NodeProcess> = (1..=3)
        .map(|i| {
            let name = format!("p{i}");
            start(&nets.name(&name), &home(&name), std::slice::from_ref(&via_relay_quic), public)
        })
        .collect();

    // Reachability, found by the nodes themselves.
    for node in pubs.iter().chain([&relay]) {
        node.wait_for("public and a DHT server", |s| {
            s["reachability"]["nat"] == "public" && s["reachability"]["kad_mode"] == "server"
        });
    }
    let mut relay_addrs = Vec::new();
    for phone in &phones {
        let status = phone.wait_for("private with a relay reservation", |s| {
            s["reachability"]["nat"] == "private"
                && s["reachability"]["relay_addrs"].as_array().is_some_and(|a| !a.is_empty())
        });
        assert_eq!(status["reachability"]["kad_mode"], "client", "{status}");
        let addr = status["reachability"]["relay_addrs"][0].as_str().expect("an address");
        assert!(addr.contains(&format!("/p2p/{}/p2p-circuit", relay.peer)), "{addr}");
        relay_addrs.push(addr.to_owned());
    }

    // Puts and gets from behind NAT; a watch on a phone fires when another phone writes.
    let (p1, p2, p3) = (&phones[0], &phones[1], &phones[2]);
    ok(run(p2.cli(&["put", "/~/status", "first"])));
    let p2_key = format!("/{}/status", p2.account);
    assert_eq!(ok(run(p1.cli(&["get", &p2_key]))), "first");
    assert_eq!(ok(run(p3.cli(&["get", &p2_key]))), "first");
    let mut watcher = p1.cli(&["watch", &p2_key]);
    let mut watcher = Reaped(
        watcher.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("watch starts"),
    );
    let seen = lines_of(watcher.0.stdout.take().expect("piped"));
    // The watch says where it begins once it is there (the version its read found, or, had
    // the read reached nobody, what the phone held); each line after is a newer version.
    let notes = lines_of(watcher.0.stderr.take().expect("piped"));
    let note = notes.recv_timeout(STEP).expect("the watch says where it begins");
    let start: u64 = note
        .strip_prefix("note: watching for versions after ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{note}"));
    ok(run(p2.cli(&["put", "/~/status", "second"])));
    let mut seqs = vec![start];
    while seqs.last() != Some(&2) {
        let line = seen.recv_timeout(STEP).expect("the watch on the phone fires");
        let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
        seqs.push(event["seq"].as_u64().expect("a sequence"));
        let rising = seqs.windows(2).all(|w| w[0] < w[1]);
        assert!(rising && seqs.len() <= 3, "each newer version once, in order: {seqs:?}");
    }
    drop(watcher);
    assert_eq!(ok(run(p1.cli(&["get", &p2_key]))), "second", "the newest");
    ok(run(p1.cli(&["put", "/~/status", "from p1"])));
    let p1_key = format!("/{}/status", p1.account);
    assert_eq!(ok(run(pubs[0].cli(&["get", &p1_key]))), "from p1");

    // Reached through the relay: p2 and p3 fetch a file from p1, dialing its relay address.
    let file = dir.path().join("shared.bin");
    let bytes: Vec<u8> =
        (0..40_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&file, &bytes).expect("file");
    let cid = ok(run(p1.cli(&["ipfs", "add", "--plain", &file.display().to_string()])));
    let cid = cid.trim();
    for (name, phone) in [("p2", p2), ("p3", p3)] {
        ok(run(phone.cli(&["ipfs", "connect", &relay_addrs[0]])));
        let out = dir.path().join(format!("got-{name}"));
        ok(run(phone.cli(&["ipfs", "get", cid, "-o", &out.display().to_string()])));
        assert!(std::fs::read(&out).expect("fetched") == bytes, "{name} got p1's file");
    }

    // DCUtR: the two easy NATs end with a direct connection; the random-port NAT cannot.
    let direct = |from: &NodeProcess| from.connections_to(&p1.peer).iter().any(|(_, r)| !r);
    let deadline = Instant::now() + STEP;
    // The side that punches as listener (p1, the one dialed) reports the failure.
    let failed_punch = |node: &NodeProcess| {
        let log = std::fs::read_to_string(p1.home.join("node.log")).unwrap_or_default();
        log.contains(&format!("hole punching failed: relayed peer={}", node.peer))
    };
    while !(direct(p2) && failed_punch(p3)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    for (name, phone) in [("p2", p2), ("p3", p3)] {
        for (addr, relayed) in phone.connections_to(&p1.peer) {
            let how = if relayed { "relayed" } else { "direct" };
            eprintln!("{name} -> p1: {how} {addr}");
        }
    }
    let dcutr = |node: &NodeProcess| {
        let log = std::fs::read_to_string(node.home.join("node.log")).unwrap_or_default();
        let lines =
            log.lines().filter(|l| l.contains("dcutr") || l.contains("hole") || l.contains("rror"));
        lines.collect::<Vec<_>>().join("\n")
    };
    assert!(
        direct(p2),
        "p2 (port-preserving NAT) and p1 end with a direct connection\np1:\n{}\np2:\n{}",
        dcutr(p1),
        dcutr(p2)
    );
    assert!(failed_punch(p3), "p1 and p3 tried to punch through and failed");
    assert!(!direct(p3), "p3 (random ports) cannot be reached directly: it stays relayed");
    // A hole punched is a dial on both sides, never a peer reaching the node from outside:
    // neither end takes itself for reachable, and both stay DHT clients with their relay
    // reservations.
    for phone in [p1, p2] {
        let log = std::fs::read_to_string(phone.home.join("node.log")).unwrap_or_default();
        assert!(
            !log.contains("reachable from outside"),
            "a hole punch taken for an inbound dial:\n{log}"
        );
        let status = phone.status();
        let reachability = &status["reachability"];
        assert_eq!(reachability["kad_mode"], "client", "after the hole punch: {status}");
        assert!(
            reachability["relay_addrs"].as_array().is_some_and(|a| !a.is_empty()),
            "the reservation is kept: {status}"
        );
    }
}

/// One network's many peer ids cannot push other networks' peers out: when a node is over
/// `max_connections`, a network with more than a quarter of it connected loses its own peers
/// first, new ones too (an ordinary trim spares peers of the last 30 s, and takes the least
/// recently used, whoever they are).
///
/// ```text
///   victim 198.18.0.1/16   crowd 198.18.5.1/16 (six nodes)   other 198.18.9.1/16
/// ```
///
/// 198.18.0.0/15 is reserved, never local: the addresses are grouped as on the internet. The
/// victim's one setting changed is the one under test, `max_connections` (4: a share of 1);
/// the crowd's nodes share their namespace, so each listens on a port of its own and serves
/// its API on port 0.
#[test]
fn one_network_cannot_push_other_networks_peers_out() {
    assert!(is_root(), "this test makes network namespaces: run it as root (.ci/run does)");
    let hosts = [
        ("sh-victim", "198.18.0.1/16".to_owned()),
        ("sh-crowd", "198.18.5.1/16".to_owned()),
        ("sh-other", "198.18.9.1/16".to_owned()),
    ];
    let _alone = one_at_a_time();
    let nets = bridged("sh-wan", &hosts, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let home = |name: &str| dir.path().join(name);
    let victim = start(&nets.name("sh-victim"), &home("victim"), &[], "max_connections = 4\n");
    let via_victim = format!("/ip4/198.18.0.1/tcp/4040/p2p/{}", victim.peer);
    let other =
        start(&nets.name("sh-other"), &home("other"), std::slice::from_ref(&via_victim), "");
    let crowd: Vec<NodeProcess> = (0..6)
        .map(|i| {
            let settings =
                format!("listen = [\"/ip4/0.0.0.0/tcp/{}\"]\napi = \"127.0.0.1:0\"\n", 4100 + i);
            let (ns, name) = (nets.name("sh-crowd"), format!("crowd{i}"));
            start(&ns, &home(&name), std::slice::from_ref(&via_victim), &settings)
        })
        .collect();

    // The victim's peers: (from the crowd's /24, in all), and whether `other` is one.
    let peers = || {
        let out = ok(run(victim.cli(&["peers", "--addresses"])));
        let ids = |filter: &dyn Fn(&str) -> bool| -> std::collections::HashSet<String> {
            let lines = out.lines().filter(|line| filter(line));
            lines.filter_map(|line| line.split(' ').next().map(str::to_owned)).collect()
        };
        let crowd = ids(&|line| line.contains("/ip4/198.18.5."));
        (crowd.len(), ids(&|_| true).len(), out.contains(&other.peer))
    };
    let deadline = Instant::now() + STEP;
    loop {
        let (from_crowd, all, other_in) = peers();
        assert!(other_in, "the other network's peer was pushed out ({from_crowd} crowd peers)");
        if all <= 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "within {STEP:?}: {all} peers kept (at most 4), {from_crowd} of them the crowd's"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The crowd did reach the victim, which trimmed it (not merely never connected): seven
    // peers dialed a node that keeps four.
    let trimmed = victim.status()["trimmed_peers"].as_u64().unwrap_or(0);
    assert!(trimmed >= 3, "the victim trimmed {trimmed} peers; at least 3 of 7 must have gone");
    // And the other network's peer stays.
    for _ in 0..10 {
        let (from_crowd, _, other_in) = peers();
        assert!(other_in, "the other network's peer was pushed out ({from_crowd} crowd peers)");
        std::thread::sleep(Duration::from_millis(300));
    }
    drop((crowd, other, victim));
}

/// The flood of the test below, run with python3 in the flooding namespace: `per` TCP
/// connections to the victim from each source address given, in order, that never say a word
/// (no Noise, no multistream header). It prints "opened", waits for a line on its input, then
/// asks the connections which the victim closed (end of file, or reset: readable) and which
/// it still holds (nothing to read for half a second after the last one closed; the victim
/// never speaks first), and prints how many it holds in all and the most from one address. Then it closes them all and waits for its input to end.
const FLOOD: &str = r#"
import select, socket, sys
victim, per, sources = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
conns = []
for src in sources:
    for _ in range(per):
        s = socket.socket()
        s.bind((src, 0))
        s.connect((victim, 4040))
        conns.append((src, s))
print("opened", flush=True)
sys.stdin.readline()
quiet = [s for _, s in conns]
while True:
    readable, _, _ = select.select(quiet, [], [], 0.5)
    if not readable:
        break
    quiet = [s for s in quiet if s not in readable]
held = {}
for src, s in conns:
    if s in quiet:
        held[src] = held.get(src, 0) + 1
nets = {}
for src, n in held.items():
    net = src.rsplit(".", 1)[0]
    nets[net] = nets.get(net, 0) + n
print("held", sum(held.values()), "most", max(held.values(), default=0),
      "network", max(nets.values(), default=0), flush=True)
sys.stdin.read()
for _, s in conns:
    s.close()
"#;

#[test]
fn a_flood_of_unfinished_handshakes_holds_a_bounded_share_of_the_node() {
    assert!(is_root(), "this test makes network namespaces: run it as root (.ci/run does)");
    let hosts = [
        ("fl-victim", "198.18.0.1/16".to_owned()),
        ("fl-flood", "198.18.5.1/16".to_owned()),
        ("fl-other", "198.18.20.1/16".to_owned()),
    ];
    let _alone = one_at_a_time();
    let nets = bridged("fl-wan", &hosts, &[]);
    let flood_ns = nets.name("fl-flood");
    // Three addresses in each of five /24s.
    let sources: Vec<String> =
        (5..10).flat_map(|net| (1..=3).map(move |host| format!("198.18.{net}.{host}"))).collect();
    for source in &sources[1..] {
        sh(&["ip", "-n", &flood_ns, "addr", "add", &format!("{source}/16"), "dev", "eth0"]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // The victim runs on defaults with 128 file descriptors (an idle node uses about 15), a
    // limit the flood's 150 silent connections would reach without the bounds.
    let victim_ns = nets.name("fl-victim");
    let victim = start_limited(&victim_ns, &dir.path().join("victim"), &[], "", Some(128), None);

    let defaults = dkvs_net::Config::default();
    let (per_address, in_all) = (defaults.max_pending_per_address, defaults.max_pending_inbound);
    let per_network = in_all / 4;
    let per = per_address + 2;
    let flooded = per * sources.len();
    assert!(per_network < 3 * per_address && 4 * per_network <= in_all && flooded > in_all);
    let per_arg = per.to_string();
    let mut args = vec!["netns", "exec", &flood_ns, "python3", "-c", FLOOD, "198.18.0.1"];
    args.push(&per_arg);
    args.extend(sources.iter().map(String::as_str));
    let mut flood = Command::new("ip")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("the flood starts");
    let rx = lines_of(flood.stdout.take().expect("piped"));
    let mut to_flood = flood.stdin.take().expect("piped");
    let flood = Group(flood);
    assert_eq!(rx.recv_timeout(STEP).expect("the flood reports"), "opened");

    // The victim refuses what is over the bounds as it arrives, and its API still answers.
    let refusals = (flooded - in_all) as u64;
    let status = victim.wait_for("refusing the flood's surplus", |status| {
        status["refused_handshakes"].as_u64().unwrap_or(0) >= refusals
    });
    assert_eq!(status["refused_handshakes"].as_u64(), Some(refusals), "{status}");
    use std::io::Write as _;
    writeln!(to_flood, "check").expect("the flood reads");
    let line = rx.recv_timeout(STEP).expect("the flood reports");
    let counts: Vec<usize> = line.split(' ').filter_map(|word| word.parse().ok()).collect();
    let [held, most, network] = counts[..] else { panic!("unexpected report: {line}") };
    assert_eq!(held, in_all, "the victim held {held} silent connections in all ({line})");
    assert_eq!(most, per_address, "the victim held {most} from one address ({line})");
    assert_eq!(network, per_network, "the victim held {network} from one /24 ({line})");

    // While the flood holds every TCP place, a peer from another network joins over QUIC.
    let via_quic = format!("/ip4/198.18.0.1/udp/4040/quic-v1/p2p/{}", victim.peer);
    let other = start(&nets.name("fl-other"), &dir.path().join("other"), &[via_quic], "");
    let deadline = Instant::now() + STEP;
    while victim.connections_to(&other.peer).is_empty() {
        assert!(Instant::now() < deadline, "the other network's peer could not connect");
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(to_flood);
    drop((flood, other, victim));
}

/// Three hosts on one LAN, `{prefix}-a`, `-b` and `-c` at `{subnet}`.1, .2 and .3 (a bridge;
/// on a private network the nodes serve the DHT from the start); B's link slowed to a real
/// network's pace (a token bucket, so that a handshake's packets take tens of milliseconds).
/// A node on the default configuration runs on A, and one on C that joined through A; B is
/// left to the test.
struct SlowLan {
    // Dropped in this order: the nodes, their directory, then the namespaces.
    c: NodeProcess,
    _a: NodeProcess,
    dir: tempfile::TempDir,
    _nets: Namespaces,
    /// B's namespace.
    b: String,
    /// A's address, to bootstrap from.
    via_a: String,
}

fn slow_lan(prefix: &str, subnet: &str) -> SlowLan {
    let name = |host: &str| format!("{prefix}-{host}");
    let hosts: Vec<(String, String)> = ["a", "b", "c"]
        .iter()
        .zip(1..)
        .map(|(h, i)| (name(h), format!("{subnet}.{i}/24")))
        .collect();
    let hosts: Vec<(&str, String)> = hosts.iter().map(|(h, a)| (h.as_str(), a.clone())).collect();
    let nets = bridged(&name("wan"), &hosts, &[]);
    let slow = ["tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "64kbit"];
    ns_sh(&nets.name(&name("b")), &[&slow[..], &["burst", "1600", "latency", "2s"]].concat());
    let dir = tempfile::tempdir().expect("tempdir");
    let a = start(&nets.name(&name("a")), &dir.path().join("a"), &[], "");
    let via_a = format!("/ip4/{subnet}.1/tcp/4040/p2p/{}", a.peer);
    let c = start(&nets.name(&name("c")), &dir.path().join("c"), std::slice::from_ref(&via_a), "");
    c.wait_for("connected to A", |s| s["peers"].as_u64() == Some(1));
    SlowLan { b: nets.name(&name("b")), _nets: nets, dir, via_a, _a: a, c }
}

#[test]
fn nodes_on_other_hosts_reach_each_other_past_their_own_loopback() {
    assert!(is_root(), "this test makes network namespaces: run it as root (.ci/run does)");
    // Three hosts on one LAN (a bridge; on a private network the nodes serve the DHT from the
    // start), every node on the default configuration: all listen on
    // 0.0.0.0:4040, so on 127.0.0.1:4040 too, and identify lists that address with the
    // others. B joins through A, learns C from it and dials C: C's addresses include
    // 127.0.0.1:4040, which on B's host is B itself. libp2p dials a peer's addresses at once
    // and takes the first connection that opens; over a real network B's own loopback opens
    // first, and the whole dial failed with a wrong peer id: B never reached C. B's link is
    // slowed to a real network's pace, as it is between hosts on the internet.
    let _alone = one_at_a_time();
    let lan = slow_lan("lo", "10.77.0");
    let (home, c) = (|name: &str| lan.dir.path().join(name), &lan.c);
    let b = start(&lan.b, &home("b"), std::slice::from_ref(&lan.via_a), "");
    b.wait_for("connected to A and C", |s| s["peers"].as_u64() == Some(2));
    assert!(!b.connections_to(&c.peer).is_empty(), "B reached C");
    // What a user sees: B's put finds all three replicas.
    let stored = ok(run(b.cli(&["put", "/~/hello", "from b"])));
    assert!(stored.contains("of 3 replicas"), "{stored}");
}

#[test]
fn a_node_beside_another_on_its_host_reaches_peers_on_other_hosts() {
    assert!(is_root(), "this test makes network namespaces: run it as root (.ci/run does)");
    // Two nodes on one host, the first on the default configuration (port 4040), the second
    // on ports a user gives it (4042); two more hosts on the LAN, on the default
    // configuration. Every peer's addresses include 127.0.0.1:4040, which on the shared host
    // is the first node: when the second dialed a peer on another host, that attempt reached
    // its neighbour first (its link is slowed to a real network's pace), and libp2p failed
    // the whole dial with a wrong peer id. An address where another peer answers now fails
    // on its own, and the dial goes on with the peer's others. (Without that, a later dial
    // got through once the address had failed: the second node's log shows whether its
    // dials of C failed.)
    let _alone = one_at_a_time();
    let lan = slow_lan("lo2", "10.78.0");
    let (home, c) = (|name: &str| lan.dir.path().join(name), &lan.c);
    let b = start(&lan.b, &home("b"), std::slice::from_ref(&lan.via_a), "");
    b.wait_for("connected to A and C", |s| s["peers"].as_u64() == Some(2));
    let beside = "listen = [\"/ip4/0.0.0.0/tcp/4042\", \"/ip4/0.0.0.0/udp/4042/quic-v1\"]\n\
                  api = \"127.0.0.1:4043\"\n";
    let logged = Some("info,dkvs_net=debug");
    let b2 =
        start_limited(&lan.b, &home("b2"), std::slice::from_ref(&lan.via_a), beside, None, logged);
    b2.wait_for("connected to A, B and C", |s| s["peers"].as_u64() == Some(3));
    assert!(!b2.connections_to(&c.peer).is_empty(), "the second node on B's host reached C");
    let log = std::fs::read_to_string(home("b2").join("node.log")).expect("log");
    let of_c = |what: &str| -> Vec<&str> {
        log.lines().filter(|l| l.contains(what) && l.contains(&c.peer)).collect()
    };
    // The neighbour answered at C's 127.0.0.1:4040 (the case this test is for)...
    let misdialed = of_c("another peer answered at an address of this peer");
    assert!(misdialed.iter().any(|l| l.contains("/ip4/127.0.0.1/")), "{log}");
    // ...and no dial of C failed for it.
    let failed = of_c("a dial failed");
    assert!(failed.is_empty(), "dials of C failed: {failed:#?}");
    // What a user sees: its put finds all four replicas.
    let stored = ok(run(b2.cli(&["put", "/~/hello", "from beside b"])));
    assert!(stored.contains("of 4 replicas"), "{stored}");
}

#[test]
fn a_host_that_died_silently_holds_up_no_lookup_to_its_deadline() {
    assert!(is_root(), "this test makes network namespaces: run it as root (.ci/run does)");
    // Four hosts on a LAN, every node on the default configuration. One host dies silently:
    // its node is killed and its packets dropped (a host switched off, a phone gone from its
    // network), so a dial to it is not refused but waits for the setup timeout (10 s), past
    // a lookup's deadline (5 s); Kademlia waits 10 s on a peer. It keeps the host in every
    // table, and every lookup whose closest peers included it (here, every lookup) waited to
    // its deadline, operation after operation. Now a lookup stops waiting on a dial after 2 s
    // and completes without the host; once a dial of it failed, the writer's Kademlia no
    // longer dials it for a while, and its lookups complete without waiting. (Its operations
    // near the dead host take their replicas from the table by then: a lookup there is a
    // letter's.)
    let _alone = one_at_a_time();
    let hosts: Vec<(String, String)> = ["seed", "w", "r", "dead"]
        .iter()
        .zip(1..)
        .map(|(h, i)| (format!("hd-{h}"), format!("10.79.0.{i}/24")))
        .collect();
    let hosts: Vec<(&str, String)> = hosts.iter().map(|(h, a)| (h.as_str(), a.clone())).collect();
    let nets = bridged("hd-wan", &hosts, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let home = |name: &str| dir.path().join(name);
    let seed = start(&nets.name("hd-seed"), &home("seed"), &[], "");
    let via_seed = [format!("/ip4/10.79.0.1/tcp/4040/p2p/{}", seed.peer)];
    let r = start(&nets.name("hd-r"), &home("r"), &via_seed, "");
    let dead = start(&nets.name("hd-dead"), &home("dead"), &via_seed, "");
    // The writer's lookups are logged at debug level (only its log changes).
    let logged = Some("info,dkvs_net=debug");
    let w = start_limited(&nets.name("hd-w"), &home("w"), &via_seed, "", None, logged);
    w.wait_for("connected to the three others", |s| s["peers"].as_u64() == Some(3));

    let dead_peer = dead.peer.clone();
    ns_sh(&dead.ns, &["iptables", "-A", "INPUT", "-j", "DROP"]);
    drop(dead);
    w.wait_for("no longer connected to the dead host", |s| s["peers"].as_u64() == Some(2));
    let log = || std::fs::read_to_string(home("w").join("node.log")).expect("the writer's log");
    let held = |log: &str| {
        log.lines().any(|l| {
            l.contains("a dial failed slowly: Kademlia's are held") && l.contains(&dead_peer)
        })
    };
    assert!(!held(&log()), "no dial of the dead host failed yet");

    // A put (a read, then the write) looks its key up: the dead host's entry, no longer
    // connected, keeps the table from covering the key. The lookup dials the dead host, stops
    // waiting on it after a while and completes; the dial goes on and fails at the setup
    // timeout. (Only what the log says from now on counts: the node's check of its table
    // after it joined logged a lookup too.)
    let before = log().len();
    let stored = ok(run(w.cli(&["put", "/~/first", "v1"])));
    assert!(stored.contains("seq 1 stored by"), "{stored}");
    let put = log()[before..].to_string();
    let lookups: Vec<&str> =
        (put.lines()).filter(|l| l.contains("lookup done") && l.contains("operation")).collect();
    assert!(!lookups.is_empty(), "the put looked its key up: {put}");
    let waited: Vec<&&str> = lookups.iter().filter(|l| l.contains("complete=false")).collect();
    assert!(waited.is_empty(), "lookups waited to their deadline: {waited:#?}\n{put}");
    let gave_up =
        |l: &&str| l.contains("a lookup stopped waiting on a dial") && l.contains(&dead_peer);
    assert!(put.lines().any(|l| gave_up(&l)), "no lookup waited on the dead host: {put}");
    let deadline = Instant::now() + STEP;
    while !held(&log()) {
        assert!(Instant::now() < deadline, "no dial of the dead host failed: {}", log());
        std::thread::sleep(Duration::from_millis(200));
    }

    // A letter to R: sending looks the recipient's mailbox up, as every send does (its
    // replicas are whoever is closest now). That lookup passes over the dead host at once.
    let before = log().len();
    let sent = ok(run(w.cli(&["mail", "send", &r.account, "hello"])));
    let log = log();
    let after = log.get(before..).expect("the log grew");
    let lookups: Vec<&str> = after.lines().filter(|l| l.contains("lookup done")).collect();
    assert!(!lookups.is_empty(), "the send looked the mailbox up: {log}");
    let waited: Vec<&&str> = lookups.iter().filter(|l| l.contains("complete=false")).collect();
    assert!(waited.is_empty(), "lookups waited on the dead host: {waited:#?}\n{after}");
    assert!(after.contains("a dial of an unreachable peer held back"), "{after}");
    assert!(sent.contains("kept by"), "the letter is kept: {sent}");
    drop((w, r, seed));
}
