//! Writes records to a persistent store as fast as it can and prints `ack <i>` after each put
//! returns, until it is killed. The crash test kills it with SIGKILL mid-stream and checks that
//! every acknowledged put survived.

use std::io::Write as _;

use anyhow::Context as _;
use dkvs_account::{KeyType, Keypair};
use dkvs_integration_tests::{CRASH_WRITER_SECRET, crash_key};
use dkvs_record::Draft;
use dkvs_store::{Config, PutOutcome, Store};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().context("usage: store-crash-writer DIR ROUND")?;
    let round: u32 = args.next().context("usage: store-crash-writer DIR ROUND")?.parse()?;
    // A small compaction threshold, so that kills also land during snapshots.
    let config = Config::default().with_compact_after_bytes(64 * 1024);
    let store = Store::open(&dir, config)?;
    let owner = Keypair::from_secret_bytes(KeyType::Ed25519, &CRASH_WRITER_SECRET)?;
    let account = owner.account_id();
    let mut stdout = std::io::stdout().lock();
    for i in 0u64.. {
        let value = format!("{i}:{}", "x".repeat((i % 700) as usize));
        let record =
            Draft::new(crash_key(&account, round, i), value, i + 1, 3_600_000).sign(&owner)?;
        match store.put(record)? {
            PutOutcome::Stored { .. } => {}
            other => anyhow::bail!("put {i} was not stored: {other:?}"),
        }
        writeln!(stdout, "ack {i}")?;
        stdout.flush()?;
    }
    Ok(())
}
