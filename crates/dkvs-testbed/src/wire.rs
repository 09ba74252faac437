//! Bytes through loopback as the kernel counts them, the same way for both systems: with
//! `--system both`, each system's run is a child process in a network namespace of its own
//! (`unshare --net`), where loopback carries that system's traffic and nothing else's. Its
//! transmitted bytes are every IP packet of the run, IP and UDP or TCP headers included (no
//! link header: loopback counts after taking it off): mainline keeps no byte counters of its
//! own, and dkvs's count only what its connections carry. Loopback's MTU is 64 KiB, so a TCP
//! stream there has fewer packets, so fewer headers, than on a real link.

use std::process::{Command, Stdio};

use anyhow::{Context as _, ensure};

/// The loopback device's transmitted bytes in this process's network namespace.
pub fn loopback_bytes() -> Option<u64> {
    loopback_of(&std::fs::read_to_string("/proc/self/net/dev").ok()?)
}

/// Loopback's bytes from a point on: taken where a phase begins, read where it ends.
pub struct Since(Option<u64>);

impl Since {
    /// From now, if this run counts them (`counted`; else it says nothing).
    pub fn now(counted: bool) -> Since {
        Since(counted.then(loopback_bytes).flatten())
    }

    /// The bytes since then, if counted.
    pub fn bytes(&self) -> Option<u64> {
        self.0.zip(loopback_bytes()).map(|(from, to)| to.saturating_sub(from))
    }
}

/// The `lo` line's transmitted bytes in the text of `/proc/net/dev`: after the name, eight
/// receive counters, then the transmitted bytes.
fn loopback_of(dev: &str) -> Option<u64> {
    dev.lines().find_map(|line| {
        let (name, counters) = line.split_once(':')?;
        if name.trim() != "lo" {
            return None;
        }
        counters.split_whitespace().nth(8)?.parse().ok()
    })
}

/// How this machine lets a child run in a network namespace of its own: the flags of
/// `unshare` (util-linux) that make one where `ip` (iproute2) brings its loopback up (as root;
/// else in a user namespace of its own, where the kernel allows that); or why none works.
pub fn namespace_flags() -> Result<&'static [&'static str], String> {
    let mut why = String::new();
    for flags in [&["--net"][..], &["--user", "--map-root-user", "--net"][..]] {
        let tried = Command::new("unshare")
            .args(flags)
            .args(["--", "ip", "link", "set", "dev", "lo", "up"])
            .stdout(Stdio::null())
            .output();
        match tried {
            Ok(out) if out.status.success() => return Ok(flags),
            Ok(out) => why = String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            Err(e) => return Err(format!("unshare: {e}")),
        }
    }
    Err(why)
}

/// A command that runs `program` in a fresh network namespace, made with `flags`.
pub fn in_own_namespace(flags: &[&str], program: &std::path::Path) -> Command {
    let mut command = Command::new("unshare");
    command.args(flags).arg("--").arg(program);
    command
}

/// In a fresh network namespace, loopback starts down: brings it up.
pub fn loopback_up() -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["link", "set", "dev", "lo", "up"])
        .output()
        .context("running ip link set dev lo up")?;
    ensure!(
        out.status.success(),
        "ip link set dev lo up: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_line_gives_its_transmitted_bytes() {
        // As Linux 6.x writes it (the names right-aligned to 6 columns).
        let dev = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 9876543   1234    0    0    0     0          0         0  9876500   1233    0    0    0     0       0          0
  eth0: 111 2 0 0 0 0 0 0 222 3 0 0 0 0 0 0
";
        assert_eq!(loopback_of(dev), Some(9_876_500));
        assert_eq!(loopback_of("  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"), None);
        assert_eq!(loopback_of("    lo: 1 2 3\n"), None, "a line cut short says nothing");
    }

    #[test]
    fn this_process_sees_its_loopback_counter() {
        // Every Linux network namespace has a loopback device, up or not.
        assert!(loopback_bytes().is_some(), "/proc/self/net/dev has no lo line");
    }
}
