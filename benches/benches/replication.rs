//! Replication round cost between two replicas (dkvs-net's reconciliation, `dkvs_net::reconcile`,
//! exactly as the node runs it, without sockets): bytes and messages per round with 10,000
//! records, in sync and with 1 % changed, the memory the round's state takes, and its time next
//! to the time of building the item set alone (sorting and hashing: the floor of any round).
//!
//! Bytes are what the record protocol would carry: each reconciliation message and each record
//! sent, as encoded protobuf requests and responses with their varint length prefix. The byte
//! targets are checked (they are deterministic; times are reported, never checked).
//!
//! `cargo bench -p dkvs-benches --bench replication` (`-- --test`, what CI runs, is the same run:
//! it takes about two seconds and its byte figures are exact).

use std::time::{Duration, Instant};

use dkvs_account::{KeyType, Keypair};
use dkvs_net::codec::pb;
use dkvs_net::reconcile::{Session, answer, set_of};
use dkvs_record::{Compact, Draft, Key};
use prost::Message as _;

/// Counts the bytes this process holds on the heap.
#[global_allocator]
static ALLOCATOR: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

fn held() -> isize {
    ALLOCATOR.allocated() as isize
}

/// Bytes of a request or response on the wire: the varint length prefix and the body.
fn wire(len: usize) -> usize {
    let prefix = prost::encoding::encoded_len_varint(len as u64);
    prefix + len
}

fn reconcile_request(message: Vec<u8>, first: bool) -> pb::Request {
    pb::Request {
        kind: Some(pb::request::Kind::Reconcile(pb::ReconcileRequest { message, first })),
    }
}

fn reconcile_response(message: Vec<u8>) -> pb::Response {
    pb::Response {
        kind: Some(pb::response::Kind::Reconcile(pb::ReconcileResponse {
            message,
            refused: String::new(),
        })),
    }
}

struct Round {
    messages: usize,
    reconcile_bytes: usize,
    records: usize,
    record_bytes: usize,
    /// The encoded records alone: what must travel at the least.
    payload: usize,
    state_bytes: isize,
    time: Duration,
}

/// One round from `mine` to `theirs`, as the node runs it: reconcile, then one put request
/// (and its answer) per record the peer lacks or holds older.
fn round(mine: &[Compact], theirs: &[Compact]) -> Round {
    let set = set_of(theirs);
    let started = Instant::now();
    let before = held();
    let (mut session, first) = Session::start(mine).expect("round starts");
    let state_bytes = held() - before;
    let (mut messages, mut reconcile_bytes) = (0, 0);
    let mut message = first;
    let mut is_first = true;
    loop {
        let request = reconcile_request(message, is_first);
        is_first = false;
        let body = match request.kind.as_ref() {
            Some(pb::request::Kind::Reconcile(r)) => r.message.clone(),
            _ => unreachable!("a reconcile request"),
        };
        let reply = answer(&set, &body).expect("answers");
        let response = reconcile_response(reply.clone());
        messages += 2;
        reconcile_bytes += wire(request.encoded_len()) + wire(response.encoded_len());
        match session.step(&reply).expect("steps") {
            Some(next) => message = next,
            None => break,
        }
    }
    let missing = session.missing();
    let by_key: std::collections::HashMap<&str, &Compact> =
        mine.iter().map(|r| (r.key_str(), r)).collect();
    let (mut record_bytes, mut payload) = (0, 0);
    for key in &missing {
        let encoded = by_key[key.as_str()].record().encode();
        payload += encoded.len();
        let put = pb::Request {
            kind: Some(pb::request::Kind::Put(pb::PutRequest {
                record: encoded,
                ..Default::default()
            })),
        };
        let stored = pb::Response {
            kind: Some(pb::response::Kind::Put(pb::PutResponse {
                status: pb::PutStatus::Stored as i32,
                ..pb::PutResponse::default()
            })),
        };
        record_bytes += wire(put.encoded_len()) + wire(stored.encoded_len());
    }
    let time = started.elapsed();
    Round {
        messages: messages + 2 * missing.len(),
        reconcile_bytes,
        records: missing.len(),
        record_bytes,
        payload,
        state_bytes,
        time,
    }
}

/// Records as a node's store keeps them (what a round reads).
fn records(owners: &[Keypair], n: usize, seq: u64, value: usize) -> Vec<Compact> {
    (0..n)
        .map(|i| {
            let owner = &owners[i % owners.len()];
            let key = Key::scoped(&owner.account_id(), &format!("item/{i}")).expect("key");
            let record = Draft::new(key, vec![7; value], seq, 3_600_000).sign(owner);
            Compact::from(&record.expect("valid"))
        })
        .collect()
}

fn main() {
    // The targets are stated for 10,000 records; `--test` (CI) runs the same, in about 2 s.
    let n = 10_000;
    let owners: Vec<Keypair> = (0..100).map(|_| Keypair::generate(KeyType::Ed25519)).collect();
    println!("replication round between two replicas, {n} records, 1 % changed = {}", n / 100);
    println!(
        "| value | case | messages | reconcile bytes | records sent | record bytes | total / changed records' bytes | round state | round time | set build (floor) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut failed = false;
    for value in [100, 1024] {
        let old = records(&owners, n, 1, value);
        // The first 1 % are one sequence ahead here: this side changed them.
        let mut new = old.clone();
        let changed: Vec<Compact> = records(&owners, n / 100, 2, value);
        new[..n / 100].clone_from_slice(&changed);
        let floor = {
            let started = Instant::now();
            let set = set_of(&new);
            let time = started.elapsed();
            drop(set);
            time
        };
        for (case, theirs) in [("in sync", &new), ("1 % changed", &old)] {
            let r = round(&new, theirs);
            let total = r.reconcile_bytes + r.record_bytes;
            let ratio = if r.payload == 0 { 0.0 } else { total as f64 / r.payload as f64 };
            println!(
                "| {value} B | {case} | {} | {} | {} | {} | {} | {:.1} KiB | {:.2} ms | {:.2} ms |",
                r.messages,
                r.reconcile_bytes,
                r.records,
                r.record_bytes,
                if r.payload == 0 { "-".to_string() } else { format!("{ratio:.2}x") },
                r.state_bytes as f64 / 1024.0,
                r.time.as_secs_f64() * 1e3,
                floor.as_secs_f64() * 1e3,
            );
            if case == "in sync" && (total > 4096 || r.records != 0) {
                eprintln!("target missed: in sync costs {total} bytes (target <= 4096)");
                failed = true;
            }
            if case != "in sync" && (r.records != n / 100 || ratio > 3.0) {
                eprintln!("target missed: 1 % changed costs {ratio:.2}x (target <= 3x)");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
