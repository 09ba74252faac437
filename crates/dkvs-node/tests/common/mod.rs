//! What the tests that run `dkvs` and other programs as processes share.
// Each test file takes what it needs of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A process killed and reaped when dropped.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `command` to its end, at most `limit` (then kills it and fails); its output.
pub fn run_for(mut command: Command, limit: Duration) -> Output {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("starts");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("waitable").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} took over {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// The standard output of a command that succeeded (else fails with its standard error).
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// The passphrase of the accounts these tests make.
pub const PASSPHRASE: &str = "dkvs tests";

/// `dkvs --home <home> args...`, its accounts opened with [`PASSPHRASE`].
pub fn dkvs(home: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dkvs"));
    command.arg("--home").arg(home).env("DKVS_PASSPHRASE", PASSPHRASE).env_remove("DKVS_HOME");
    command.args(args);
    command
}

/// Writes a directory of `entries` (name, CID, bytes under it) into the block store of the
/// stopped node in `home`, pinned, as another IPFS tool would have made it; its CID.
pub fn put_directory(home: &Path, entries: &[(&str, &str, u64)]) -> String {
    use dkvs_ipfs::unixfs::{PbLink, directory};
    let links = entries
        .iter()
        .map(|(name, cid, size)| PbLink {
            cid: cid.parse().expect("a CID"),
            name: Some((*name).to_owned()),
            size: Some(*size),
        })
        .collect();
    let block = directory(links);
    let store = dkvs_ipfs::BlockStore::open(
        &home.join("data").join("ipfs"),
        dkvs_ipfs::BlockStoreConfig::default(),
    )
    .expect("the node's block store");
    store.put(&block.cid, &block.data).expect("kept");
    store.pin(&block.cid).expect("pinned");
    block.cid.to_string()
}
