//! Nothing acknowledged is lost across `kill -9`: a child process writes to a persistent store,
//! is killed mid-stream, and every put it acknowledged is found after the store is reopened.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dkvs_account::{KeyType, Keypair};
use dkvs_integration_tests::{CRASH_WRITER_SECRET, ChildGuard, crash_key};
use dkvs_store::{Config, Store};

const ROUNDS: u32 = 4;

#[test]
fn acknowledged_puts_survive_sigkill() {
    let deadline = Instant::now() + Duration::from_secs(120);
    let dir = tempfile::tempdir().expect("tempdir");
    let account = Keypair::from_secret_bytes(KeyType::Ed25519, &CRASH_WRITER_SECRET)
        .expect("fixed secret")
        .account_id();
    let mut acked_per_round = Vec::new();
    for round in 0..ROUNDS {
        let mut child = ChildGuard(
            Command::new(env!("CARGO_BIN_EXE_store-crash-writer"))
                .arg(dir.path())
                .arg(round.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("writer starts"),
        );
        let stdout = child.0.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Some(i) = line.strip_prefix("ack ").and_then(|i| i.parse::<u64>().ok()) else {
                    continue;
                };
                if tx.send(i).is_err() {
                    break;
                }
            }
        });
        // Kill after a different number of acknowledgements each round.
        let kill_after = 300 + u64::from(round) * 457;
        let mut last = None;
        while last.is_none_or(|i| i < kill_after) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(i) => last = Some(i),
                Err(e) => {
                    panic!("round {round}: writer stopped acknowledging ({e}) after {last:?}")
                }
            }
        }
        child.0.kill().expect("SIGKILL");
        child.0.wait().expect("reaped");
        reader.join().expect("reader thread");
        // Acknowledgements already written before the kill count too.
        let last = rx.try_iter().last().or(last).expect("some acknowledgements");
        acked_per_round.push(last);

        let store = Store::open(dir.path(), Config::default()).expect("reopens after SIGKILL");
        for (r, &last) in acked_per_round.iter().enumerate() {
            // For each key, the newest acknowledged put is the last `i` that mapped to it.
            for i in last.saturating_sub(39)..=last {
                let key = crash_key(&account, r as u32, i);
                let held = store.get(key.as_str()).unwrap_or_else(|| panic!("{key} lost"));
                // A put may have completed without its ack reaching us: never older, though.
                assert!(held.seq() > i, "{key}: holds seq {}, acknowledged {}", held.seq(), i + 1);
                let text = std::str::from_utf8(held.value()).expect("utf-8 value");
                let n: u64 = text.split(':').next().and_then(|n| n.parse().ok()).expect("index");
                assert_eq!(n + 1, held.seq(), "{key}: value matches its sequence");
            }
        }
    }
}
