//! IPFS throughput between real `dkvs node` processes on loopback (default configuration),
//! next to the physical limits measured in the same run on one core: SHA-256 (every block is
//! hashed when made and when received) and XChaCha20-Poly1305 (every chunk of an encrypted
//! file). Reports add and get in MiB/s for plain and encrypted files of 1 MiB and 256 MiB, and
//! the getting node's peak RSS (VmHWM) after the 256 MiB gets; with Helia installed
//! (`.ci/ipfs-peers`), also dkvs -> Helia and Helia -> dkvs.
//!
//! ```text
//! cargo bench -p dkvs-node --bench ipfs            # the full run (256 MiB files)
//! cargo bench -p dkvs-node --bench ipfs -- --test  # CI: 1 MiB only, once
//! ```

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dkvs_node::client::Client;

const PASSPHRASE: &str = "bench";

struct NodeProcess {
    child: Child,
    address: String,
    client: Client,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    /// Peak resident memory of the process so far, in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

fn dkvs(home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dkvs"));
    command.arg("--home").arg(home).env("DKVS_PASSPHRASE", PASSPHRASE).env_remove("DKVS_HOME");
    command
}

fn start(home: &Path, bootstrap: Option<&str>) -> NodeProcess {
    std::fs::create_dir_all(home).expect("home");
    let status = dkvs(home)
        .args(["account", "new", "bench"])
        .stdout(Stdio::null())
        .status()
        .expect("dkvs runs");
    assert!(status.success(), "account created");
    let config = home.join("bench-config.toml");
    std::fs::write(&config, "listen = [\"/ip4/127.0.0.1/tcp/0\"]\n").expect("config");
    let mut command = dkvs(home);
    command.arg("node").arg("--config").arg(&config).args(["--api", "127.0.0.1:0"]);
    if let Some(peer) = bootstrap {
        command.arg("--bootstrap").arg(peer);
    }
    let log = std::fs::File::create(home.join("node.log")).expect("log");
    let mut child = command.stdout(Stdio::piped()).stderr(log).spawn().expect("node starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut address = String::new();
    for line in lines.by_ref() {
        let line = line.expect("a line");
        if let Some(a) = line.strip_prefix("listening on: ") {
            address = a.to_owned();
        }
        if line.starts_with("api: ") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let api: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("api.json")).expect("api.json"))
            .expect("json");
    let client =
        Client::new(api["url"].as_str().expect("url"), api["token"].as_str().expect("token"), None);
    NodeProcess { child, address, client }
}

/// Deterministic bytes that do not compress.
fn file(path: &Path, len: usize) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(path, bytes).expect("file");
}

fn mib_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

/// One core's SHA-256 and XChaCha20-Poly1305 throughput over `len` bytes, in MiB/s.
fn limits(len: usize) -> (f64, f64) {
    use sha2::Digest as _;
    let data = vec![7u8; len];
    let started = Instant::now();
    for chunk in data.chunks(1 << 20) {
        std::hint::black_box(sha2::Sha256::digest(chunk));
    }
    let sha = mib_per_s(len as u64, started.elapsed());
    let key = dkvs_account::Keypair::from_secret_bytes(dkvs_account::KeyType::Ed25519, &[3; 32])
        .expect("a key")
        .derive_symmetric_key("bench");
    let started = Instant::now();
    for chunk in data.chunks(256 << 10) {
        std::hint::black_box(key.encrypt(chunk, b"aad"));
    }
    (sha, mib_per_s(len as u64, started.elapsed()))
}

struct Row {
    what: String,
    bytes: u64,
    add: Duration,
    get: Duration,
}

/// Rows, and the getting node's peak RSS after each size's gets.
fn dkvs_to_dkvs(dir: &Path, sizes: &[usize], rows: &mut Vec<Row>) -> Vec<(usize, u64)> {
    let a = start(&dir.join("a"), None);
    let b = start(&dir.join("b"), Some(&a.address));
    let mut peaks = Vec::new();
    for &len in sizes {
        let path = dir.join(format!("f{len}"));
        file(&path, len);
        for encrypted in [false, true] {
            let query = if encrypted { "" } else { "?plain=true" };
            let started = Instant::now();
            let source = std::fs::File::open(&path).expect("file");
            let added = a.client.post_reader(&format!("/v1/ipfs/add{query}"), source).expect("add");
            let add = started.elapsed();
            let cid = added["cid"].as_str().expect("cid").to_owned();
            if encrypted {
                // Shared with the getter's account, which decrypts it (not timed).
                let accounts = b.client.get_json("/v1/accounts").expect("accounts");
                let reader = accounts[0]["account_id"].as_str().expect("an account");
                a.client.post_bytes(&format!("/v1/ipfs/share/{cid}/{reader}"), &[]).expect("share");
            }
            let started = Instant::now();
            let got = b
                .client
                .get_into(
                    &format!("/v1/ipfs/get/{cid}"),
                    &mut std::io::sink(),
                    &|_| {},
                    anyhow::Error::from,
                )
                .expect("get");
            let get = started.elapsed();
            assert_eq!(got, len as u64, "the whole file came");
            let what = format!("dkvs -> dkvs, {}", if encrypted { "encrypted" } else { "plain" });
            rows.push(Row { what, bytes: len as u64, add, get });
        }
        peaks.push((len, b.peak_rss()));
    }
    peaks
}

/// The Helia peer, if `.ci/ipfs-peers` installed it.
fn helia() -> Option<PathBuf> {
    let dir = std::env::var_os("DKVS_IPFS_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ipfs-peers"));
    dir.join("node_modules/helia").exists().then_some(dir)
}

fn dkvs_and_helia(peers: &Path, dir: &Path, sizes: &[usize], rows: &mut Vec<Row>) {
    let node = start(&dir.join("h"), None);
    for &len in sizes {
        let path = dir.join(format!("h{len}"));
        file(&path, len);
        // dkvs -> Helia, plain and encrypted (Helia fetches, and keeps, the ciphertext).
        for (what, query) in
            [("dkvs -> Helia, plain", "?plain=true"), ("dkvs -> Helia, encrypted", "")]
        {
            let started = Instant::now();
            let source = std::fs::File::open(&path).expect("file");
            let added = node.client.post_reader(&format!("/v1/ipfs/add{query}"), source);
            let add = started.elapsed();
            let added = added.expect("add");
            let cid = added["cid"].as_str().expect("cid");
            let started = Instant::now();
            let status = Command::new("node")
                .current_dir(peers)
                .args(["--import", "./polyfill.mjs", "helia-peer.mjs", "get", &node.address, cid])
                .arg(dir.join("helia-got"))
                .stdout(Stdio::null())
                .status()
                .expect("node runs");
            let get = started.elapsed();
            assert!(status.success(), "Helia got the file");
            rows.push(Row { what: what.into(), bytes: len as u64, add, get });
        }
        // Helia -> dkvs.
        let started = Instant::now();
        let mut helia = Command::new("node")
            .current_dir(peers)
            .args(["--import", "./polyfill.mjs", "helia-peer.mjs", "serve"])
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node runs");
        let mut line = String::new();
        BufReader::new(helia.stdout.as_mut().expect("piped")).read_line(&mut line).expect("line");
        let add = started.elapsed();
        let served: serde_json::Value = serde_json::from_str(&line).expect("json");
        let addr = served["addrs"][0].as_str().expect("an address");
        let body = serde_json::to_vec(&serde_json::json!({ "addr": addr })).expect("json");
        node.client.post_json("/v1/ipfs/connect", &body).expect("connect");
        let started = Instant::now();
        let cid = served["cid"].as_str().expect("cid");
        let got = node
            .client
            .get_into(
                &format!("/v1/ipfs/get/{cid}"),
                &mut std::io::sink(),
                &|_| {},
                anyhow::Error::from,
            )
            .expect("get");
        let get = started.elapsed();
        assert_eq!(got, len as u64);
        drop(helia.stdin.take());
        let _ = helia.kill();
        let _ = helia.wait();
        rows.push(Row { what: "Helia -> dkvs, plain".into(), bytes: len as u64, add, get });
    }
}

fn main() {
    let test = std::env::args().any(|a| a == "--test");
    let sizes: &[usize] = if test { &[1 << 20] } else { &[1 << 20, 256 << 20] };
    let dir = tempfile::tempdir().expect("tempdir");
    let (sha, aead) = limits(if test { 8 << 20 } else { 256 << 20 });
    let mut rows = Vec::new();
    let peaks = dkvs_to_dkvs(dir.path(), sizes, &mut rows);
    match helia() {
        Some(peers) => dkvs_and_helia(&peers, dir.path(), sizes, &mut rows),
        None => println!("Helia is not installed (bash .ci/ipfs-peers): dkvs <-> Helia skipped"),
    }
    println!("limits on one core: SHA-256 {sha:.0} MiB/s, XChaCha20-Poly1305 {aead:.0} MiB/s");
    println!(
        "{:<28} {:>10} {:>12} {:>12} {:>10}",
        "transfer", "size", "add MiB/s", "get MiB/s", "get/SHA"
    );
    for row in &rows {
        let get = mib_per_s(row.bytes, row.get);
        println!(
            "{:<28} {:>9}K {:>12.1} {:>12.1} {:>10.2}",
            row.what,
            row.bytes >> 10,
            mib_per_s(row.bytes, row.add),
            get,
            get / sha
        );
    }
    for (len, peak) in peaks {
        println!(
            "peak RSS of the getting node after its {} KiB gets: {} MiB",
            len >> 10,
            peak >> 20
        );
    }
    println!("(a Helia transfer's time includes starting the Helia process, about 1.5 s)");
}
