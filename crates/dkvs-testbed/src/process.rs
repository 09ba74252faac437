//! `dkvs node` processes on 127.0.0.1, started as a user starts them, and what can be read from
//! them: their API, their `/metrics`, and the operating system's counts.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use dkvs_node::client::Client;
use dkvs_node::home::Home;

/// The passphrase of every account the testbed makes (given to `dkvs` in `DKVS_PASSPHRASE`).
pub const PASSPHRASE: &str = "dkvs-testbed";

/// The `dkvs` binary: `given`, or the one beside this program. An error that says how to build
/// it when it is missing.
pub fn dkvs_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let bin = match given {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()?.with_file_name("dkvs"),
    };
    if !bin.exists() {
        bail!(
            "no dkvs binary at {}: build it (cargo build --release -p dkvs-node) or name it \
             with --dkvs",
            bin.display()
        );
    }
    Ok(bin)
}

/// `dkvs --home <home>` with the testbed's passphrase, ready for arguments.
pub fn dkvs(bin: &Path, home: &Path) -> Command {
    let mut command = Command::new(bin);
    command.arg("--home").arg(home).env("DKVS_PASSPHRASE", PASSPHRASE).env_remove("DKVS_HOME");
    command
}

/// `dkvs account new [name]` in `home`.
pub fn new_account(bin: &Path, home: &Path, name: Option<&str>) -> anyhow::Result<()> {
    std::fs::create_dir_all(home)?;
    let out = dkvs(bin, home).args(["account", "new"]).args(name).output()?;
    if !out.status.success() {
        bail!("dkvs account new: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A `dkvs node` process, killed when dropped.
pub struct NodeProcess {
    child: Child,
    /// Its home directory.
    pub home: PathBuf,
    /// The address it listens on, `/ip4/127.0.0.1/tcp/<port>/p2p/<peer id>`.
    pub address: String,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How long a node may take to start (unlock its account, listen, serve its API).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `dkvs node` in `home` (which has its accounts already) on 127.0.0.1 with `args`;
/// returns once its API is up. Its log goes to `home/node.log`; a node that does not start
/// within a minute is killed, and the error carries the end of its log.
pub fn start(bin: &Path, home: &Path, args: &[&str]) -> anyhow::Result<NodeProcess> {
    std::fs::create_dir_all(home)?;
    let log_path = home.join("node.log");
    let log = std::fs::File::create(&log_path)?;
    let child = dkvs(bin, home)
        .args(["node", "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    // Made at once, so that a node that fails to start is killed on the way out.
    let mut node = NodeProcess { child, home: home.to_owned(), address: String::new() };
    let stdout = node.child.stdout.take().context("piped")?;
    let (started, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut address = None;
        for line in lines.by_ref() {
            let Ok(line) = line else { return };
            if let Some(a) = line.strip_prefix("listening on: ") {
                address = Some(a.to_owned());
            }
            if line.starts_with("api: ") {
                let _ = started.send(address.take());
                break;
            }
        }
        // The rest is drained, so that the node never blocks on a full pipe.
        lines.for_each(drop);
    });
    match wait.recv_timeout(START_TIMEOUT) {
        Ok(Some(address)) => {
            node.address = address;
            Ok(node)
        }
        Ok(None) => bail!("the node serves its API but named no address:\n{}", tail(&log_path)),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            let status = node.child.wait().map(|s| s.to_string()).unwrap_or_default();
            bail!(
                "the node ended before it served its API ({status}); its log:\n{}",
                tail(&log_path)
            )
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => bail!(
            "the node did not start within {START_TIMEOUT:?}; the end of its log:\n{}",
            tail(&log_path)
        ),
    }
}

/// The last lines of the log at `path` (its directory may be removed once the error is out).
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl NodeProcess {
    /// A client of its API (requests time out after `timeout`).
    pub fn client(&self, timeout: Duration) -> anyhow::Result<Client> {
        let api = Home::new(self.home.clone()).read_api()?;
        Ok(Client::new(&api.url, &api.token, Some(timeout)))
    }

    /// Kills it at once (SIGKILL), as a crash or a pulled plug would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it (SIGSTOP): its connections stay open and it answers nothing until it is
    /// killed.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let pid = self.child.id();
        let mut stop = std::process::Command::new("sh");
        stop.args(["-c", &format!("kill -STOP {pid}")]);
        anyhow::ensure!(stop.status()?.success(), "kill -STOP {pid} failed");
        Ok(())
    }

    /// A line of its `/proc/<pid>/status`, in kB.
    pub fn status_kb(&self, field: &str) -> anyhow::Result<u64> {
        status_field(&format!("/proc/{}/status", self.child.id()), field)
    }

    /// Context switches of every thread of the process so far.
    pub fn context_switches(&self) -> anyhow::Result<u64> {
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
}

/// A gauge or counter from a node's `/metrics`, through `client`.
pub fn metric(client: &Client, name: &str) -> anyhow::Result<u64> {
    let (text, _) = client.get_bytes("/metrics")?;
    let text = String::from_utf8_lossy(&text);
    let line = text.lines().find(|l| l.starts_with(&format!("{name} ")));
    let value = line.and_then(|l| l.split(' ').nth(1)).and_then(|v| v.parse().ok());
    value.with_context(|| format!("{name} missing from /metrics"))
}

fn status_field(path: &str, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let line = text.lines().find(|l| l.starts_with(&format!("{field}:")));
    let value = line.and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok());
    value.with_context(|| format!("no {field} in {path}"))
}
