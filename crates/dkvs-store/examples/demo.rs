//! A tour of the store until the `dkvs` binary exists: an account writes records, the store
//! refuses what breaks the rules, and everything is still there after the store is reopened.
//!
//! `cargo run --release -p dkvs-store --example demo [DIR]` (default DIR: `$DKVS_HOME/demo`,
//! with `DKVS_HOME` defaulting to `~/.dkvs`). The accounts are kept in `DIR/keys`, encrypted with
//! the passphrase in `DKVS_PASSPHRASE` (default: "demo"), and the store in `DIR/store`; run it
//! twice and the second run continues where the first stopped.

use std::path::PathBuf;

use dkvs_account::KeyType;
use dkvs_account::keystore::{Keystore, KeystoreError};
use dkvs_record::{Draft, Key, unix_millis};
use dkvs_store::{Config, PutOutcome, Store};

const DAY_MS: u64 = 24 * 3600 * 1000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("DKVS_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".dkvs")))
                .ok_or("set DKVS_HOME or HOME, or pass a directory")?;
            home.join("demo")
        }
    };
    let passphrase = std::env::var("DKVS_PASSPHRASE").unwrap_or_else(|_| "demo".into());
    let keys = Keystore::open(dir.join("keys"))?;
    let account = |name: &str, key_type: KeyType| match keys.load(name, &passphrase) {
        Err(KeystoreError::NotFound(_)) => keys.create(name, key_type, &passphrase),
        loaded => loaded,
    };
    let alice = account("alice", KeyType::Ed25519)?;
    let mallory = account("mallory", KeyType::Secp256k1)?;
    let dir = dir.join("store");
    println!("store:   {}", dir.display());
    println!("alice:   {}", alice.account_id());
    println!(
        "mallory: {} (eth {})",
        mallory.account_id(),
        mallory.account_id().eth_address().map(|a| a.to_string()).unwrap_or_default()
    );

    let store = Store::open(&dir, Config::default())?;
    let key = Key::scoped(&alice.account_id(), "profile/status")?;
    let start = store.highest_seq(key.as_str()).unwrap_or(0);
    for (i, status) in ["online", "busy", "away"].into_iter().enumerate() {
        let seq = start + i as u64 + 1;
        let record = Draft::new(key.clone(), status, seq, DAY_MS).sign(&alice)?;
        println!("put  {key} = {status:?} (seq {seq}): {:?}", store.put(record)?);
    }
    let stale = Draft::new(key.clone(), "online", start + 1, DAY_MS).sign(&alice)?;
    println!("replay of seq {}: {:?}", start + 1, outcome(store.put(stale)?));
    let forged = Draft::new(key.clone(), "hacked", start + 10, DAY_MS).sign(&mallory);
    println!(
        "mallory writes alice's key: {}",
        forged.err().map(|e| e.to_string()).unwrap_or_default()
    );
    let cas = Draft::new(key.clone(), "back", start + 4, DAY_MS).sign(&alice)?;
    println!(
        "cas expecting seq {}: {:?}",
        start + 1,
        outcome(store.put_cas(cas, Some(start + 1))?)
    );

    let shared = Key::new("/names/alice-shop")?;
    let claim = Draft::new(shared.clone(), "alice's shop", unix_millis(), DAY_MS).sign(&alice)?;
    println!("alice claims {shared}: {:?}", store.put(claim)?);
    let squat =
        Draft::new(shared.clone(), "mallory's", unix_millis() + 1, DAY_MS).sign(&mallory)?;
    println!(
        "mallory writes {shared}: {}",
        store.put(squat).err().map(|e| e.to_string()).unwrap_or_default()
    );
    drop(store);

    let store = Store::open(&dir, Config::default())?;
    let held = store.get(key.as_str()).ok_or("record lost")?;
    println!(
        "after reopen: {key} = {:?} (seq {}), {:?}",
        String::from_utf8_lossy(held.value()),
        held.seq(),
        store.stats()
    );
    Ok(())
}

fn outcome(outcome: PutOutcome) -> String {
    match outcome {
        PutOutcome::Stale { current_seq, .. } => format!("stale, {current_seq} is held"),
        PutOutcome::Conflict { current } => {
            format!("conflict, held seq is {:?}", current.map(|r| r.seq()))
        }
        other => format!("{other:?}"),
    }
}
