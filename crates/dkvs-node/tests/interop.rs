//! dkvs nodes exchange files with real IPFS peers that nobody here wrote: Helia 7 (npm) and
//! Kubo 0.22 (PyPI), installed by `.ci/ipfs-peers` (the tests run it: a registry out of reach
//! fails them, loudly). `dkvs node` runs as a process, on its default configuration but for a
//! loopback listen address. Kubo dials public peers on its defaults, so its test runs in a
//! network namespace that has only loopback (`unshare -n`), with the dkvs nodes beside it.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Reaped, dkvs, ok, repo, run_for};

const STEP: Duration = Duration::from_secs(120);

struct NodeProcess {
    _child: Reaped,
    address: String,
    /// The API's host:port.
    api: String,
}

/// The installed peers (installing them if needed).
fn peers() -> PathBuf {
    let dir = repo().join("target/ipfs-peers");
    let out = Command::new("bash")
        .arg(repo().join(".ci/ipfs-peers"))
        .arg(&dir)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "the IPFS peers could not be installed (registry unreachable?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn run(command: Command) -> Output {
    run_for(command, STEP)
}

fn start(home: &Path, bootstrap: Option<&str>) -> NodeProcess {
    std::fs::create_dir_all(home).expect("home");
    let config = home.join("test-config.toml");
    std::fs::write(&config, "listen = [\"/ip4/127.0.0.1/tcp/0\"]\n").expect("config");
    let mut command = dkvs(home, &["node", "--api", "127.0.0.1:0"]);
    command.arg("--config").arg(&config);
    if let Some(peer) = bootstrap {
        command.arg("--bootstrap").arg(peer);
    }
    let log = std::fs::File::create(home.join("node.log")).expect("log");
    let mut child = command.stdout(Stdio::piped()).stderr(log).spawn().expect("node starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let (mut address, mut api) = (None, None);
    for line in lines.by_ref() {
        let line = line.expect("a line");
        if let Some(a) = line.strip_prefix("listening on: ") {
            address = Some(a.to_owned());
        }
        if let Some(url) = line.strip_prefix("api: ") {
            api = url.strip_prefix("http://").map(str::to_owned);
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    NodeProcess {
        _child: Reaped(child),
        address: address.expect("a listen address"),
        api: api.expect("the API's address"),
    }
}

/// `GET path` from the node's API (its gateway, without a token): the status and the body.
fn http_get(node: &NodeProcess, path: &str) -> (u16, String) {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(&node.api).expect("the API");
    stream.set_read_timeout(Some(STEP)).expect("a timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", node.api)
        .expect("sent");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("an answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).expect("a status line");
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A peer serving `file` until dropped: its address and the file's CID. Dropping it closes
/// its standard input, which stops it cleanly (Kubo removes its temporary repository), and
/// kills it if it has not stopped within 10 s.
struct Serving {
    child: Option<Child>,
    addr: String,
    cid: String,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        drop(child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(Reaped(child));
    }
}

fn serve(mut command: Command, file: &Path) -> Serving {
    command.arg("serve").arg(file).args(["--timeout", "240"]);
    let mut child =
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("the peer starts");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("piped")).read_line(&mut line).expect("a line");
    let served: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("the peer printed {line:?}: {e}"));
    Serving {
        addr: served["addrs"][0].as_str().expect("an address").to_owned(),
        cid: served["cid"].as_str().expect("a cid").to_owned(),
        child: Some(child),
    }
}

fn peer_get(mut command: Command, addr: &str, cid: &str, out: &Path) -> Vec<u8> {
    command.args(["get", addr, cid]).arg(out).args(["--timeout", "60"]);
    ok(run(command));
    std::fs::read(out).expect("the peer wrote the file")
}

fn helia(peers: &Path) -> Command {
    let mut command = Command::new("node");
    command.arg("--import").arg(peers.join("polyfill.mjs")).arg(peers.join("helia-peer.mjs"));
    command
}

fn kubo(peers: &Path) -> Command {
    let mut command = Command::new(peers.join("venv/bin/python3"));
    command.arg(peers.join("kubo-peer.py"));
    command
}

/// Deterministic bytes, not aligned to any chunk size.
fn data(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8)
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("file");
    path
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A dkvs node of alice's; a second node that has alice's key too (as a user copies a key
/// file to another machine) and bob's.
fn two_nodes(dir: &Path) -> (PathBuf, NodeProcess, PathBuf, NodeProcess, String) {
    let (a, b) = (dir.join("a"), dir.join("b"));
    ok(run(dkvs(&a, &["account", "new", "alice"])));
    std::fs::create_dir_all(b.join("keys")).expect("keys");
    std::fs::copy(a.join("keys/alice.key.json"), b.join("keys/alice.key.json")).expect("key");
    let bob = ok(run(dkvs(&b, &["account", "new", "bob", "--type", "secp256k1"])));
    let node_a = start(&a, None);
    let node_b = start(&b, Some(&node_a.address));
    (a, node_a, b, node_b, bob.trim().to_owned())
}

#[test]
fn dkvs_and_helia_exchange_plain_and_encrypted_files() {
    let peers = peers();
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, node_a, b, _node_b, bob) = two_nodes(dir.path());

    // dkvs adds a plain file; Helia fetches the same bytes (and the same CID it would make).
    let plain = data(3_000_000, 1);
    let file = write(dir.path(), "plain.bin", &plain);
    let cid = ok(run(dkvs(&a, &["ipfs", "add", "--plain", path_str(&file)]))).trim().to_owned();
    let got = peer_get(helia(&peers), &node_a.address, &cid, &dir.path().join("helia-got"));
    assert!(got == plain, "Helia got {} bytes, not the file", got.len());
    let served = serve(helia(&peers), &file);
    assert_eq!(served.cid, cid, "dkvs makes the CID Helia makes for the same bytes");
    drop(served);

    // Helia adds a file; dkvs fetches it.
    let theirs = data(2_500_000, 2);
    let served = serve(helia(&peers), &write(dir.path(), "helia.bin", &theirs));
    ok(run(dkvs(&a, &["ipfs", "connect", &served.addr])));
    let out = dir.path().join("from-helia");
    ok(run(dkvs(&a, &["ipfs", "get", &served.cid, "-o", path_str(&out)])));
    assert!(std::fs::read(&out).expect("got") == theirs, "dkvs got Helia's bytes");
    drop(served);

    // An encrypted file: ciphertext to Helia, plaintext to alice on her other node, and to
    // bob once she shares it.
    let secret = data(600_000, 3);
    let file = write(dir.path(), "secret.bin", &secret);
    let cid = ok(run(dkvs(&a, &["ipfs", "add", path_str(&file)]))).trim().to_owned();
    let seen = peer_get(helia(&peers), &node_a.address, &cid, &dir.path().join("helia-secret"));
    assert!(seen.starts_with(b"dkvs-enc") && seen.len() > secret.len());
    assert!(!seen.windows(64).any(|w| w == &secret[1000..1064]), "no plaintext in what Helia got");
    let out = dir.path().join("alice-elsewhere");
    ok(run(dkvs(&b, &["ipfs", "get", &cid, "--as", "alice", "-o", path_str(&out)])));
    assert!(std::fs::read(&out).expect("got") == secret, "alice reads it on her other node");
    let refused = run(dkvs(&b, &["ipfs", "get", &cid, "--as", "bob"]));
    assert!(!refused.status.success(), "not shared with bob yet");
    ok(run(dkvs(&a, &["ipfs", "share", &cid, &bob])));
    let out = dir.path().join("bob");
    ok(run(dkvs(&b, &["ipfs", "get", &cid, "--as", "bob", "-o", path_str(&out)])));
    assert!(std::fs::read(&out).expect("got") == secret, "bob reads what alice shared");
}

#[test]
fn dkvs_adds_a_directory_as_helia_does_and_helia_reads_it_by_path() {
    let peers = peers();
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("a");
    let node = start(&home, None);
    let site = dir.path().join("site");
    for sub in ["sub/deeper", "empty"] {
        std::fs::create_dir_all(site.join(sub)).expect("dir");
    }
    let big = data(2_500_000, 4);
    write(&site, "index.html", b"<h1>hi</h1>");
    write(&site, "sub/big.bin", &big);
    write(&site, "sub/deeper/note.txt", b"note");
    write(&site, "名前.txt", b"");
    write(&site, ".secret", b"left out");

    // Public only: a directory's names and layout are readable to anyone with its CID.
    let refused = run(dkvs(&home, &["ipfs", "add", path_str(&site)]));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("add it with --plain"));
    let added = run(dkvs(&home, &["ipfs", "add", "--plain", path_str(&site)]));
    let cid = ok(added.clone()).trim().to_owned();
    let said = String::from_utf8_lossy(&added.stderr);
    assert!(said.contains("added 4 files in 4 directories"), "{said}");
    let served = serve(helia(&peers), &site);
    assert_eq!(served.cid, cid, "dkvs makes the CID Helia makes for the same directory");
    drop(served);
    let got = peer_get(
        helia(&peers),
        &node.address,
        &format!("{cid}/sub/big.bin"),
        &dir.path().join("helia-got"),
    );
    assert!(got == big, "Helia got {} bytes, not the file", got.len());
    // With --hidden, .secret too: the directory Helia makes with it.
    let hidden = ok(run(dkvs(&home, &["ipfs", "add", "--plain", "--hidden", path_str(&site)])));
    assert_ne!(hidden.trim(), cid);
    let mut with_hidden = helia(&peers);
    with_hidden.arg("--hidden");
    assert_eq!(serve(with_hidden, &site).cid, hidden.trim());

    // The directory named through a link is the directory.
    let link = dir.path().join("link-to-site");
    std::os::unix::fs::symlink(&site, &link).expect("a link");
    let through = ok(run(dkvs(&home, &["ipfs", "add", "--plain", path_str(&link)])));
    assert_eq!(through.trim(), cid);

    // A link in it is not followed: refused by its name, before anything is sent.
    std::os::unix::fs::symlink("/etc", site.join("sub/etc")).expect("a link");
    let refused = run(dkvs(&home, &["ipfs", "add", "--plain", path_str(&site)]));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("sub/etc is a symbolic link"), "{said}");
}

#[test]
fn dkvs_reads_and_makes_a_directory_that_helia_shards() {
    let peers = peers();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(&dir.path().join("a"), None);
    // 2,600 names of 100 bytes: past the 256 KiB of names and CIDs where Helia shards.
    let big = dir.path().join("big");
    std::fs::create_dir_all(&big).expect("dir");
    let name = |i: usize| format!("{i:0>96}.txt");
    for i in 0..2600 {
        write(&big, &name(i), format!("file {i}").as_bytes());
    }
    let served = serve(helia(&peers), &big);
    ok(run(dkvs(&dir.path().join("a"), &["ipfs", "connect", &served.addr])));
    for i in [0, 1, 1299, 2599] {
        let (status, body) = http_get(&node, &format!("/ipfs/{}/{}", served.cid, name(i)));
        assert_eq!((status, body.as_str()), (200, format!("file {i}").as_str()), "{}", name(i));
    }
    let (status, _) = http_get(&node, &format!("/ipfs/{}/{}", served.cid, name(2600)));
    assert_eq!(status, 404, "a name the directory does not hold");
    // Its listing has every entry, gathered from all its nodes.
    let (status, listing) = http_get(&node, &format!("/ipfs/{}/", served.cid));
    assert_eq!(status, 200, "{listing}");
    let listed = (0..2600).filter(|&i| listing.contains(&name(i))).count();
    assert_eq!(listed, 2600);
    // dkvs shards it as Helia does: the same CID.
    let added = ok(run(dkvs(&dir.path().join("a"), &["ipfs", "add", "--plain", path_str(&big)])));
    assert_eq!(added.trim(), served.cid);
    drop(served);
    // A sharded site: its index.html found by its name, without reading the whole listing.
    write(&big, "index.html", b"<h1>the big site</h1>");
    let site = ok(run(dkvs(&dir.path().join("a"), &["ipfs", "add", "--plain", path_str(&big)])));
    let (status, page) = http_get(&node, &format!("/ipfs/{}/", site.trim()));
    assert_eq!((status, page.as_str()), (200, "<h1>the big site</h1>"));
    std::fs::remove_file(big.join("index.html")).expect("removed");
    // Where Helia shards is counted in bytes of UTF-8: 1,900 names of 40 CJK characters are
    // past it (in UTF-16 units they would not be), and so are 2,800 empty subdirectories; but
    // not 2,800 subdirectories of one file each (Helia counts a directory while it knows its
    // CID: until something is added in it).
    for (kind, count) in [("cjk", 1900), ("dirs", 2800), ("filled", 2800)] {
        let tree = dir.path().join(kind);
        std::fs::create_dir_all(&tree).expect("dir");
        for i in 0..count {
            if kind != "cjk" {
                std::fs::create_dir(tree.join(name(i))).expect("dir");
                if kind == "filled" {
                    write(&tree.join(name(i)), "f", b"f");
                }
            } else {
                let cjk: String = (0..36)
                    .map(|j| char::from_u32(0x4e00 + ((i * 7 + j) % 2000) as u32).expect("CJK"))
                    .collect();
                write(&tree, &format!("{cjk}{i:04}"), i.to_string().as_bytes());
            }
        }
        let served = serve(helia(&peers), &tree);
        let added =
            ok(run(dkvs(&dir.path().join("a"), &["ipfs", "add", "--plain", path_str(&tree)])));
        assert_eq!(added.trim(), served.cid, "{kind}");
    }
}

/// Runs the calling test again in a network namespace with only loopback; true when this is
/// that run.
fn in_loopback_namespace(test: &str) -> bool {
    if std::env::var_os("DKVS_TEST_NETNS").is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = run({
        let mut c = Command::new("unshare");
        c.args(["-n", "--", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
            .arg(exe)
            .args(["--exact", test, "--nocapture", "--test-threads", "1"])
            .env("DKVS_TEST_NETNS", "1");
        c
    });
    let mut err = std::io::stderr();
    let _ = err.write_all(&out.stdout);
    let _ = err.write_all(&out.stderr);
    assert!(out.status.success(), "the test failed in its network namespace (see above)");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the test ran in its namespace"
    );
    false
}

#[test]
fn dkvs_and_kubo_exchange_plain_and_encrypted_files() {
    if !in_loopback_namespace("dkvs_and_kubo_exchange_plain_and_encrypted_files") {
        return;
    }
    let peers = peers();
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, node_a, b, _node_b, _bob) = two_nodes(dir.path());

    // Kubo adds a file (CIDv0, dag-pb leaves); dkvs fetches it.
    let theirs = data(700_000, 4);
    let served = serve(kubo(&peers), &write(dir.path(), "kubo.bin", &theirs));
    assert!(served.cid.starts_with("Qm"), "Kubo 0.22 adds as CIDv0: {}", served.cid);
    ok(run(dkvs(&a, &["ipfs", "connect", &served.addr])));
    let out = dir.path().join("from-kubo");
    ok(run(dkvs(&a, &["ipfs", "get", &served.cid, "-o", path_str(&out)])));
    assert!(std::fs::read(&out).expect("got") == theirs, "dkvs got Kubo's bytes");
    drop(served);

    // dkvs adds; Kubo fetches the same bytes.
    let plain = data(1_500_000, 5);
    let file = write(dir.path(), "plain.bin", &plain);
    let cid = ok(run(dkvs(&a, &["ipfs", "add", "--plain", path_str(&file)]))).trim().to_owned();
    let got = peer_get(kubo(&peers), &node_a.address, &cid, &dir.path().join("kubo-got"));
    assert!(got == plain, "Kubo got {} bytes, not the file", got.len());

    // Encrypted: ciphertext to Kubo, plaintext to alice on her other node.
    let secret = data(300_000, 6);
    let file = write(dir.path(), "secret.bin", &secret);
    let cid = ok(run(dkvs(&a, &["ipfs", "add", path_str(&file)]))).trim().to_owned();
    let seen = peer_get(kubo(&peers), &node_a.address, &cid, &dir.path().join("kubo-secret"));
    assert!(seen.starts_with(b"dkvs-enc") && !seen.windows(64).any(|w| w == &secret[..64]));
    let out = dir.path().join("alice-elsewhere");
    ok(run(dkvs(&b, &["ipfs", "get", &cid, "--as", "alice", "-o", path_str(&out)])));
    assert!(std::fs::read(&out).expect("got") == secret, "alice reads it on her other node");
}
