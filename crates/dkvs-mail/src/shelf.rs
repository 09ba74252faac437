//! What a mailbox replica keeps: envelopes by digest, per mailbox in the order they came (a
//! cursor), with quotas, a TTL cap and expiry; each on disk in its own file, written
//! atomically and synced before the replica signs a custody receipt for it.
//!
//! The index lives in memory and is changed on the node's task; files are written and
//! removed in that order by one disk thread ([`Disk`]), so a delete queued after a write
//! removes the file the write made.
//!
//! Quotas (all in [`ShelfConfig`]): a mailbox holds at most so many envelopes and bytes; one
//! depositing peer fills at most a share of a mailbox, in envelopes and in bytes (a flooder
//! fills its share and is then told "mailbox full", and mail already kept is never pushed
//! out); the replica as a whole keeps at most so many bytes, and of those at most an eighth
//! from one depositing peer and a quarter from one network of peers (an IPv4 /24, an IPv6
//! /48, a relay's; not this machine nor the LAN), all mailboxes together
//! ([`DEPOSITOR_EIGHTHS`], [`NETWORK_QUARTERS`]): mailbox addresses cost nothing, so a peer
//! could otherwise fill the replica alone, a quarter of each of many made-up mailboxes, and
//! have every other deposit refused until its mail expired; peer ids cost nothing either, but
//! addresses do. The node's own deposits (its senders' letters kept here) are bounded by the
//! whole only. A replica handing mail over is a depositor too, and one refused goes on to the
//! next replica. What a network deposited is counted from this run's deposits (a restart
//! forgets where mail came from). Every envelope is charged
//! [`ENTRY_COST`] bytes beyond its own, for its index entry and its file, so that tiny
//! envelopes cannot make a small byte budget hold millions of entries.
//!
//! Limits of this design: peer ids cost nothing, so many ids share out a mailbox between
//! them (the node's per-network byte budget and rates bound how fast); a replica keeps mail
//! for any mailbox, not only for those it is among the closest to; and a peer may choose ids
//! close to a mailbox address to become its replica (it then sees the envelopes, which tell
//! it nothing but sizes and times, and can withhold them: the other replicas still have
//! them).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use dkvs_net::Network;
use dkvs_net::libp2p::PeerId;
use prost::Message as _;

use crate::letter::{Envelope, Mailbox};
use crate::wire::{Item, MAX_BATCH_BYTES, Refusal};

/// A replica's limits.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ShelfConfig {
    /// Envelopes one mailbox holds at most. Default 1000.
    pub mailbox_messages: usize,
    /// Bytes of envelopes one mailbox holds at most. Default 8 MiB.
    pub mailbox_bytes: u64,
    /// The share of a mailbox (its envelopes and its bytes) one depositing peer may fill, in
    /// quarters. Default 1 (a quarter): four peers are needed to fill a mailbox.
    pub depositor_quarters: u64,
    /// Bytes of envelopes the replica keeps at most, each charged [`ENTRY_COST`] more than its
    /// size. Default 64 MiB.
    pub total_bytes: u64,
    /// The longest a replica keeps an envelope, whatever it asks. Default 7 days.
    pub max_ttl_ms: u64,
}

impl Default for ShelfConfig {
    fn default() -> ShelfConfig {
        ShelfConfig {
            mailbox_messages: 1000,
            mailbox_bytes: 8 << 20,
            depositor_quarters: 1,
            total_bytes: 64 << 20,
            max_ttl_ms: 7 * 24 * 3_600_000,
        }
    }
}

/// One depositing peer keeps at most this many eighths of a replica's bytes
/// ([`ShelfConfig::total_bytes`]), all mailboxes together.
pub const DEPOSITOR_EIGHTHS: u64 = 1;
/// One network of depositing peers keeps at most this many quarters of a replica's bytes.
pub const NETWORK_QUARTERS: u64 = 1;

/// What an envelope costs beyond its bytes: its index entries and its file.
pub const ENTRY_COST: u64 = 512;

/// The shortest sealed letter: two Ed25519 keys, the times, the id and the signature, with no
/// body, before the seal's own bytes. Shorter is not a letter.
const MIN_SEALED: usize = 2 * (2 + 32) + 8 + 8 + 16 + 4 + 64;

/// What remembering that an envelope was read costs in memory (its digest and time, in two
/// indexes). A replica remembers at most an eighth of [`ShelfConfig::total_bytes`] of them,
/// forgetting the one that expires first: else an account that deposits into its own mailbox
/// and acknowledges, over and over, would grow the memory without bound.
const ACKED_COST: u64 = 128;

/// The most envelopes one expiry pass drops; the rest go in the next, so that the node's
/// task is never held long.
const EXPIRE_BATCH: usize = 1024;

/// An envelope a replica keeps.
struct Kept {
    mailbox: Mailbox,
    cursor: u64,
    kept_until_ms: u64,
    depositor: PeerId,
    /// The depositor's network, when it deposited in this run from another host.
    network: Option<Network>,
    bytes: Vec<u8>,
    /// The write of its file, while it is under way.
    writing: Option<u64>,
}

impl Kept {
    fn cost(&self) -> u64 {
        self.bytes.len() as u64 + ENTRY_COST
    }
}

#[derive(Default)]
struct Box_ {
    by_cursor: BTreeMap<u64, [u8; 32]>,
    bytes: u64,
    /// Per depositing peer: envelopes and bytes.
    by_depositor: HashMap<PeerId, (usize, u64)>,
}

/// Who deposits an envelope.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Depositor {
    /// A peer, from its network (`None`: this machine or the LAN, not grouped).
    Peer(PeerId, Option<Network>),
    /// This node (its own senders' letters).
    Own(PeerId),
}

/// A change for the disk thread, in the order the index made them.
pub(crate) enum Job {
    /// Write the file of this digest (atomically, synced); report with this ticket.
    Write { ticket: u64, digest: [u8; 32], bytes: Vec<u8> },
    /// Remove the file of this digest.
    Remove { digest: [u8; 32] },
}

/// A deposit taken into the index.
pub(crate) struct Taken {
    pub digest: [u8; 32],
    pub mailbox: Mailbox,
    pub kept_until_ms: u64,
    /// The file to write before the custody is given; `None` when it was kept already.
    pub write: Option<Job>,
    /// Kept already, but its file is still being written by this ticket: the custody waits
    /// for it.
    pub pending: Option<u64>,
}

/// The replica's index of kept envelopes.
pub struct Shelf {
    config: ShelfConfig,
    kept: HashMap<[u8; 32], Kept>,
    /// Envelopes their recipient acknowledged, until they would have expired: a copy handed
    /// over again from another replica is refused, not kept anew (in memory: a restart
    /// forgets them, and the recipient's inbox leaves such a copy out).
    acked: HashMap<[u8; 32], u64>,
    /// The same, by when each is forgotten.
    acked_by_until: BTreeSet<(u64, [u8; 32])>,
    boxes: HashMap<Mailbox, Box_>,
    /// Bytes kept per depositing peer, and per network of depositing peers, all mailboxes
    /// together.
    by_depositor: HashMap<PeerId, u64>,
    by_network: HashMap<Network, u64>,
    by_expiry: BTreeSet<(u64, [u8; 32])>,
    bytes: u64,
    last_cursor: u64,
    next_ticket: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredPb {
    #[prost(uint64, tag = "1")]
    cursor: u64,
    #[prost(uint64, tag = "2")]
    kept_until_ms: u64,
    #[prost(bytes = "vec", tag = "3")]
    depositor: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    envelope: Vec<u8>,
}

fn file_name(digest: &[u8; 32]) -> String {
    format!("{}.env", hex::encode(digest))
}

impl Shelf {
    /// An empty shelf.
    pub fn new(config: ShelfConfig) -> Shelf {
        Shelf {
            config,
            kept: HashMap::new(),
            acked: HashMap::new(),
            acked_by_until: BTreeSet::new(),
            boxes: HashMap::new(),
            by_depositor: HashMap::new(),
            by_network: HashMap::new(),
            by_expiry: BTreeSet::new(),
            bytes: 0,
            last_cursor: 0,
            next_ticket: 0,
        }
    }

    /// Whether this node keeps mail for others at all (a light node's is 0 bytes).
    pub fn keeps_mail(&self) -> bool {
        self.config.total_bytes > 0
    }

    /// The shelf kept in `dir` (made if missing): every envelope file written there before,
    /// less the expired ones (removed) and leftovers of writes a crash interrupted (removed).
    /// A file whose contents do not match its name is set aside as `*.bad`, not trusted.
    pub fn open(dir: &Path, config: ShelfConfig, now_ms: u64) -> io::Result<Shelf> {
        fs::create_dir_all(dir)?;
        let mut shelf = Shelf::new(config);
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let path = entry.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            if name.ends_with(".tmp") {
                fs::remove_file(&path)?;
                continue;
            }
            let Some(hex_digest) = name.strip_suffix(".env") else { continue };
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read a mail file; skipped");
                    continue;
                }
            };
            match shelf.load(hex_digest, &bytes, now_ms) {
                Some(true) => {}
                Some(false) => fs::remove_file(&path)?,
                None => {
                    tracing::warn!(file = %path.display(), "a mail file that does not match its name; set aside");
                    fs::rename(&path, path.with_extension("bad"))?;
                }
            }
        }
        Ok(shelf)
    }

    /// Takes a file back into the index: `Some(true)` kept, `Some(false)` expired, `None`
    /// not a file this shelf wrote.
    fn load(&mut self, hex_digest: &str, bytes: &[u8], now_ms: u64) -> Option<bool> {
        let pb = StoredPb::decode(bytes).ok()?;
        let envelope = Envelope::decode(&pb.envelope).ok()?;
        let digest = envelope.digest();
        if hex::encode(digest) != hex_digest {
            return None;
        }
        let depositor = PeerId::from_bytes(&pb.depositor).ok()?;
        if pb.kept_until_ms <= now_ms {
            return Some(false);
        }
        self.insert(
            digest,
            Kept {
                mailbox: envelope.mailbox,
                cursor: pb.cursor,
                kept_until_ms: pb.kept_until_ms,
                depositor,
                network: None,
                bytes: pb.envelope,
                writing: None,
            },
        );
        self.last_cursor = self.last_cursor.max(pb.cursor);
        Some(true)
    }

    fn insert(&mut self, digest: [u8; 32], kept: Kept) {
        let cost = kept.cost();
        let entry = self.boxes.entry(kept.mailbox).or_default();
        entry.by_cursor.insert(kept.cursor, digest);
        entry.bytes += cost;
        let share = entry.by_depositor.entry(kept.depositor).or_default();
        share.0 += 1;
        share.1 += cost;
        *self.by_depositor.entry(kept.depositor).or_default() += cost;
        if let Some(network) = kept.network {
            *self.by_network.entry(network).or_default() += cost;
        }
        self.bytes += cost;
        self.by_expiry.insert((kept.kept_until_ms, digest));
        self.kept.insert(digest, kept);
    }

    /// Takes an envelope deposited by `depositor` at `now_ms`, or says why not. Depositing
    /// the same envelope again is answered as the first time, without a second copy.
    pub(crate) fn deposit(
        &mut self,
        bytes: Vec<u8>,
        depositor: PeerId,
        now_ms: u64,
    ) -> Result<Taken, Refusal> {
        self.deposit_from(bytes, Depositor::Peer(depositor, None), now_ms)
    }

    /// [`Shelf::deposit`] by `depositor`: a peer, with its network, or this node.
    pub(crate) fn deposit_from(
        &mut self,
        bytes: Vec<u8>,
        depositor: Depositor,
        now_ms: u64,
    ) -> Result<Taken, Refusal> {
        let (depositor, network, own) = match depositor {
            Depositor::Peer(peer, network) => (peer, network, false),
            Depositor::Own(peer) => (peer, None, true),
        };
        let envelope = Envelope::decode(&bytes).map_err(|_| Refusal::Malformed)?;
        if envelope.expires_at_ms <= now_ms {
            return Err(Refusal::Expired);
        }
        // Kept by the digest of the bytes as they came (the same as of the decoded envelope
        // when they are canonical; non-canonical bytes are refused).
        let digest = envelope.digest();
        if envelope.encode() != bytes {
            return Err(Refusal::Malformed);
        }
        if self.acked.contains_key(&digest) {
            return Err(Refusal::AlreadyRead);
        }
        if let Some(kept) = self.kept.get(&digest) {
            return Ok(Taken {
                digest,
                mailbox: kept.mailbox,
                kept_until_ms: kept.kept_until_ms,
                write: None,
                pending: kept.writing,
            });
        }
        if envelope.sealed.len() < MIN_SEALED {
            return Err(Refusal::Malformed);
        }
        let cost = bytes.len() as u64 + ENTRY_COST;
        let deposited = self.by_depositor.get(&depositor).copied().unwrap_or(0);
        let from_network = network.and_then(|n| self.by_network.get(&n)).copied().unwrap_or(0);
        let total = self.config.total_bytes;
        if self.bytes + cost > total
            || (!own && (deposited + cost) * 8 > total * DEPOSITOR_EIGHTHS)
            || (network.is_some() && (from_network + cost) * 4 > total * NETWORK_QUARTERS)
        {
            return Err(Refusal::ReplicaFull);
        }
        let empty = Box_::default();
        let b = self.boxes.get(&envelope.mailbox).unwrap_or(&empty);
        let quarters = self.config.depositor_quarters;
        let (count, from_depositor) = b.by_depositor.get(&depositor).copied().unwrap_or((0, 0));
        if b.by_cursor.len() >= self.config.mailbox_messages
            || b.bytes + cost > self.config.mailbox_bytes
            || (count + 1) * 4 > self.config.mailbox_messages * quarters as usize
            || (from_depositor + cost) * 4 > self.config.mailbox_bytes * quarters
        {
            return Err(Refusal::MailboxFull);
        }
        let kept_until_ms =
            envelope.expires_at_ms.min(now_ms.saturating_add(self.config.max_ttl_ms));
        // Cursors grow with the clock as well as with each deposit, so a cursor a reader holds
        // stays behind every later deposit across restarts (when the mailbox was emptied).
        let cursor = (self.last_cursor + 1).max(now_ms.saturating_mul(1000));
        self.last_cursor = cursor;
        let stored = StoredPb {
            cursor,
            kept_until_ms,
            depositor: depositor.to_bytes(),
            envelope: bytes.clone(),
        }
        .encode_to_vec();
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        self.insert(
            digest,
            Kept {
                mailbox: envelope.mailbox,
                cursor,
                kept_until_ms,
                depositor,
                network,
                bytes,
                writing: Some(ticket),
            },
        );
        let write = Job::Write { ticket, digest, bytes: stored };
        Ok(Taken {
            digest,
            mailbox: envelope.mailbox,
            kept_until_ms,
            write: Some(write),
            pending: None,
        })
    }

    /// The write `ticket` of `digest`'s file ended: kept for good when it succeeded; forgotten
    /// when it failed (if the envelope is still the one that write was for). The file to
    /// remove, if any.
    pub(crate) fn written(&mut self, digest: &[u8; 32], ticket: u64, ok: bool) -> Option<Job> {
        let kept = self.kept.get_mut(digest)?;
        if kept.writing != Some(ticket) {
            return None;
        }
        kept.writing = None;
        if ok { None } else { self.remove(digest) }
    }

    /// Keeps an envelope in memory only, as if its file were written: for tools and
    /// benchmarks that measure the index. Its digest, or why it was refused.
    pub fn deposit_in_memory(
        &mut self,
        bytes: Vec<u8>,
        depositor: PeerId,
        now_ms: u64,
    ) -> Result<[u8; 32], Refusal> {
        let taken = self.deposit(bytes, depositor, now_ms)?;
        if let Some(Job::Write { ticket, digest, .. }) = &taken.write {
            self.written(digest, *ticket, true);
        }
        Ok(taken.digest)
    }

    /// Forgets an envelope (acknowledged, expired, or its write failed); the file to remove.
    pub(crate) fn remove(&mut self, digest: &[u8; 32]) -> Option<Job> {
        let kept = self.kept.remove(digest)?;
        let len = kept.cost();
        self.bytes -= len;
        self.by_expiry.remove(&(kept.kept_until_ms, *digest));
        if let Some(b) = self.boxes.get_mut(&kept.mailbox) {
            b.by_cursor.remove(&kept.cursor);
            b.bytes -= len;
            if let Some(share) = b.by_depositor.get_mut(&kept.depositor) {
                share.0 -= 1;
                share.1 -= len;
                if share.0 == 0 {
                    b.by_depositor.remove(&kept.depositor);
                }
            }
            if b.by_cursor.is_empty() {
                self.boxes.remove(&kept.mailbox);
            }
        }
        if let Some(deposited) = self.by_depositor.get_mut(&kept.depositor) {
            *deposited -= len;
            if *deposited == 0 {
                self.by_depositor.remove(&kept.depositor);
            }
        }
        if let Some(network) = kept.network
            && let Some(deposited) = self.by_network.get_mut(&network)
        {
            *deposited -= len;
            if *deposited == 0 {
                self.by_network.remove(&network);
            }
        }
        Some(Job::Remove { digest: *digest })
    }

    /// The envelopes of `mailbox` after `after`, unexpired at `now_ms`: at most `limit`, and
    /// at most [`MAX_BATCH_BYTES`] (but at least one); whether more are left.
    pub fn fetch(
        &self,
        mailbox: &Mailbox,
        after: u64,
        limit: u32,
        now_ms: u64,
    ) -> (Vec<Item>, bool) {
        let Some(b) = self.boxes.get(mailbox) else { return (Vec::new(), false) };
        let mut items = Vec::new();
        let mut bytes = 0;
        for (&cursor, digest) in b.by_cursor.range(after.saturating_add(1)..) {
            let kept = &self.kept[digest];
            if kept.kept_until_ms <= now_ms {
                continue;
            }
            if items.len() >= limit as usize
                || (!items.is_empty() && bytes + kept.bytes.len() > MAX_BATCH_BYTES)
            {
                return (items, true);
            }
            bytes += kept.bytes.len();
            items.push(Item { cursor, envelope: kept.bytes.clone() });
        }
        (items, false)
    }

    /// Deletes the envelopes of `mailbox` among `digests` (others are ignored: an ack
    /// reaches only its signer's mailbox); the files to remove.
    pub(crate) fn ack(&mut self, mailbox: &Mailbox, digests: &[[u8; 32]]) -> Vec<Job> {
        let mine: Vec<[u8; 32]> = digests
            .iter()
            .filter(|d| self.kept.get(*d).is_some_and(|k| k.mailbox == *mailbox))
            .copied()
            .collect();
        for digest in &mine {
            self.remember_read(*digest, self.kept[digest].kept_until_ms);
        }
        mine.iter().filter_map(|d| self.remove(d)).collect()
    }

    /// Remembers that `digest` was read, until `until`; forgets the oldest such memory past
    /// the cap ([`ACKED_COST`]).
    fn remember_read(&mut self, digest: [u8; 32], until: u64) {
        if let Some(before) = self.acked.insert(digest, until) {
            self.acked_by_until.remove(&(before, digest));
        }
        self.acked_by_until.insert((until, digest));
        let cap = (self.config.total_bytes / 8 / ACKED_COST).max(1) as usize;
        while self.acked.len() > cap {
            let Some((_, oldest)) = self.acked_by_until.pop_first() else { break };
            self.acked.remove(&oldest);
        }
    }

    /// How many envelopes this replica remembers were read.
    pub fn read_remembered(&self) -> usize {
        self.acked.len()
    }

    /// Of `digests` in `mailbox`, those this replica neither keeps nor knows were read.
    pub fn missing(&self, mailbox: &Mailbox, digests: &[[u8; 32]]) -> Vec<[u8; 32]> {
        digests
            .iter()
            .filter(|d| {
                !self.acked.contains_key(*d)
                    && self.kept.get(*d).is_none_or(|k| k.mailbox != *mailbox)
            })
            .copied()
            .collect()
    }

    /// The mailboxes kept here and the digests of their envelopes (written to disk), to hand
    /// over.
    pub fn held(&self) -> Vec<(Mailbox, Vec<[u8; 32]>)> {
        self.boxes
            .iter()
            .map(|(mailbox, b)| {
                let digests = b.by_cursor.values().filter(|d| self.kept[*d].writing.is_none());
                (*mailbox, digests.copied().collect())
            })
            .filter(|(_, digests): &(Mailbox, Vec<[u8; 32]>)| !digests.is_empty())
            .collect()
    }

    /// The encoded envelope of `digest`, if kept.
    pub fn envelope(&self, digest: &[u8; 32]) -> Option<Vec<u8>> {
        self.kept.get(digest).map(|k| k.bytes.clone())
    }

    /// Drops what expired by `now_ms`, at most a batch of it (call again while
    /// [`Shelf::next_expiry`] is due); the files to remove.
    pub(crate) fn expire(&mut self, now_ms: u64) -> Vec<Job> {
        for _ in 0..EXPIRE_BATCH {
            match self.acked_by_until.first() {
                Some(&(until, digest)) if until <= now_ms => {
                    self.acked_by_until.pop_first();
                    self.acked.remove(&digest);
                }
                _ => break,
            }
        }
        let due: Vec<[u8; 32]> = self
            .by_expiry
            .iter()
            .take_while(|(t, _)| *t <= now_ms)
            .take(EXPIRE_BATCH)
            .map(|(_, d)| *d)
            .collect();
        due.iter().filter_map(|d| self.remove(d)).collect()
    }

    /// When the next envelope expires.
    pub fn next_expiry(&self) -> Option<u64> {
        self.by_expiry.first().map(|(t, _)| *t)
    }

    /// Envelopes kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Bytes of envelopes kept, each charged [`ENTRY_COST`] more than its size.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The disk thread: writes and removes envelope files in the order given; reports each
/// write's ticket with its result.
pub(crate) struct Disk {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Disk {
    pub(crate) fn start(
        dir: PathBuf,
        done: tokio::sync::mpsc::UnboundedSender<(u64, io::Result<()>)>,
    ) -> io::Result<Disk> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new().name("dkvs-mail-disk".into()).spawn(move || {
            for job in queue {
                match job {
                    Job::Write { ticket, digest, bytes } => {
                        let _ = done.send((ticket, write_atomically(&dir, &digest, &bytes)));
                    }
                    Job::Remove { digest } => {
                        let path = dir.join(file_name(&digest));
                        if let Err(e) = fs::remove_file(&path)
                            && e.kind() != io::ErrorKind::NotFound
                        {
                            tracing::warn!(file = %path.display(), error = %e, "cannot remove a mail file; it comes back at the next start (a recipient that keeps its inbox drops it as a copy)");
                        }
                    }
                }
            }
        })?;
        Ok(Disk { jobs })
    }

    pub(crate) fn queue(&self, job: Job) {
        // The thread ends only when this sender is dropped.
        let _ = self.jobs.send(job);
    }
}

/// Writes the file of `digest` so that a crash leaves either no file or the whole one, and
/// the file and its name are on disk when this returns.
fn write_atomically(dir: &Path, digest: &[u8; 32], bytes: &[u8]) -> io::Result<()> {
    let name = file_name(digest);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    drop(file);
    fs::rename(&tmp, dir.join(&name))?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dkvs_account::{KeyType, Keypair};

    const NOW: u64 = 1_800_000_000_000;
    const DAY: u64 = 24 * 3_600_000;

    fn envelope(to: &Keypair, body: usize, ttl: u64) -> Vec<u8> {
        let from = Keypair::generate(KeyType::Ed25519);
        Envelope::seal(&from, &to.account_id(), vec![7; body], NOW, ttl)
            .expect("test setup")
            .encode()
    }

    fn written(taken: Taken, dir: &Path) -> [u8; 32] {
        if let Some(Job::Write { digest, bytes, .. }) = taken.write {
            write_atomically(dir, &digest, &bytes).expect("test setup");
        }
        taken.digest
    }

    /// Deposits from `peer` until one is refused; how many were kept, and the refusal.
    fn fill(shelf: &mut Shelf, to: &Keypair, body: usize, peer: PeerId) -> (usize, Refusal) {
        let mut kept = 0;
        loop {
            match shelf.deposit(envelope(to, body, DAY), peer, NOW) {
                Ok(_) => kept += 1,
                Err(refusal) => return (kept, refusal),
            }
            assert!(kept < 1000, "never refused");
        }
    }

    #[test]
    fn quotas_refuse_without_pushing_out_and_the_share_bounds_one_peer() {
        // A quarter share: 10 envelopes and 15 000 bytes.
        let config =
            ShelfConfig { mailbox_messages: 40, mailbox_bytes: 60_000, ..Default::default() };
        let mut shelf = Shelf::new(config);
        let (bob, carol) =
            (Keypair::generate(KeyType::Ed25519), Keypair::generate(KeyType::Ed25519));
        // A flooder with large letters fills its bytes, one with tiny letters its count.
        assert_eq!(fill(&mut shelf, &bob, 3000, PeerId::random()), (3, Refusal::MailboxFull));
        let tiny = PeerId::random();
        assert_eq!(fill(&mut shelf, &bob, 10, tiny), (10, Refusal::MailboxFull));
        // Another peer still reaches bob, and carol's mailbox is untouched by it all.
        let friend = PeerId::random();
        assert!(shelf.deposit(envelope(&bob, 10, DAY), friend, NOW).is_ok());
        assert!(shelf.deposit(envelope(&carol, 3000, DAY), tiny, NOW).is_ok());
        // Enough peers fill the mailbox's count; what was kept stays.
        for _ in 0..2 {
            assert_eq!(fill(&mut shelf, &bob, 10, PeerId::random()).0, 10);
        }
        assert_eq!(fill(&mut shelf, &bob, 10, PeerId::random()), (6, Refusal::MailboxFull));
        assert_eq!(
            shelf.deposit(envelope(&bob, 10, DAY), friend, NOW).err(),
            Some(Refusal::MailboxFull)
        );
        let (items, more) = shelf.fetch(&Mailbox::of(&bob.account_id()), 0, 100, NOW);
        assert_eq!((items.len(), more), (40, false));
    }

    #[test]
    fn one_peer_fills_at_most_an_eighth_of_the_replica_over_many_mailboxes() {
        let total_bytes = 64 << 10;
        let mut shelf = Shelf::new(ShelfConfig { total_bytes, ..Default::default() });
        let flooder = PeerId::random();
        // Each letter to a mailbox of its own: no mailbox's share stops it.
        let mut kept = Vec::new();
        let refusal = loop {
            let to = Keypair::generate(KeyType::Ed25519);
            match shelf.deposit(envelope(&to, 1000, DAY), flooder, NOW) {
                Ok(taken) => kept.push(taken.digest),
                Err(refusal) => break refusal,
            }
            assert!(kept.len() < 100, "never refused");
        };
        assert_eq!(refusal, Refusal::ReplicaFull);
        assert!(shelf.bytes() * 8 <= total_bytes && shelf.bytes() * 8 > total_bytes - 8 * 2000);
        // Others still deposit, and the flooder again once its mail is read.
        let bob = Keypair::generate(KeyType::Ed25519);
        assert!(shelf.deposit(envelope(&bob, 1000, DAY), PeerId::random(), NOW).is_ok());
        let first = shelf.kept[&kept[0]].mailbox;
        assert_eq!(shelf.ack(&first, &kept[..1]).len(), 1);
        assert!(shelf.deposit(envelope(&bob, 1000, DAY), flooder, NOW).is_ok());
    }

    #[test]
    fn one_network_fills_at_most_a_quarter_and_the_node_itself_the_whole() {
        let total_bytes = 64 << 10;
        let mut shelf = Shelf::new(ShelfConfig { total_bytes, ..Default::default() });
        let network = Network::of(&"/ip4/203.0.113.7/tcp/4040".parse().expect("multiaddr"));
        // Fresh peer ids of one network, each within its eighth: the network's quarter stops them.
        let deposit = |shelf: &mut Shelf, depositor| {
            let to = Keypair::generate(KeyType::Ed25519);
            shelf.deposit_from(envelope(&to, 1000, DAY), depositor, NOW)
        };
        let refused = loop {
            match deposit(&mut shelf, Depositor::Peer(PeerId::random(), network)) {
                Ok(_) => assert!(shelf.bytes() * 4 <= total_bytes, "past the quarter"),
                Err(refusal) => break refusal,
            }
        };
        assert_eq!(refused, Refusal::ReplicaFull);
        assert!(shelf.bytes() * 4 > total_bytes - 4 * 2000);
        // Another network still deposits; the node itself up to the whole.
        let other = Network::of(&"/ip4/198.51.100.9/tcp/4040".parse().expect("multiaddr"));
        assert!(deposit(&mut shelf, Depositor::Peer(PeerId::random(), other)).is_ok());
        let me = PeerId::random();
        while deposit(&mut shelf, Depositor::Own(me)).is_ok() {}
        assert!(shelf.bytes() > total_bytes - 2000, "its own letters fill what is left");
    }

    #[test]
    fn tiny_envelopes_cost_their_entry_and_an_empty_seal_is_no_letter() {
        let mut shelf = Shelf::new(ShelfConfig { total_bytes: 64 << 10, ..Default::default() });
        let bob = Keypair::generate(KeyType::Ed25519);
        let mut empty = Envelope::decode(&envelope(&bob, 0, DAY)).expect("test setup");
        empty.sealed.clear();
        assert_eq!(
            shelf.deposit(empty.encode(), PeerId::random(), NOW).err(),
            Some(Refusal::Malformed)
        );
        // 64 KiB hold well under a hundred of the smallest letters, whatever their bytes.
        let mut kept = 0;
        while shelf
            .deposit(envelope(&Keypair::generate(KeyType::Ed25519), 0, DAY), PeerId::random(), NOW)
            .is_ok()
        {
            kept += 1;
        }
        assert!((60..90).contains(&kept), "{kept}");
        assert!(shelf.bytes() <= 64 << 10);
    }

    #[test]
    fn a_repeat_deposit_waits_for_the_first_write_and_a_failed_write_forgets() {
        let mut shelf = Shelf::new(ShelfConfig::default());
        let bob = Keypair::generate(KeyType::Ed25519);
        let bytes = envelope(&bob, 10, DAY);
        let first = shelf.deposit(bytes.clone(), PeerId::random(), NOW).expect("test setup");
        let Some(Job::Write { ticket, .. }) = first.write else { panic!("a write") };
        let again = shelf.deposit(bytes.clone(), PeerId::random(), NOW).expect("test setup");
        assert!(again.write.is_none());
        assert_eq!(again.pending, Some(ticket), "its custody waits for the same write");
        // Another write's end does not touch it; its own failure forgets it.
        assert!(shelf.written(&first.digest, ticket + 1, false).is_none());
        assert_eq!(shelf.len(), 1);
        assert!(shelf.written(&first.digest, ticket, false).is_some());
        assert!(shelf.is_empty());
        // Written for good: a repeat is answered at once.
        let taken = shelf.deposit(bytes.clone(), PeerId::random(), NOW).expect("test setup");
        let Some(Job::Write { ticket, .. }) = taken.write else { panic!("a write") };
        assert!(shelf.written(&taken.digest, ticket, true).is_none());
        let repeat = shelf.deposit(bytes, PeerId::random(), NOW).expect("test setup");
        assert!(repeat.write.is_none() && repeat.pending.is_none());
    }

    #[test]
    fn the_replica_caps_the_ttl_and_expires_and_refuses_what_is_expired() {
        let mut shelf = Shelf::new(ShelfConfig { max_ttl_ms: DAY, ..Default::default() });
        let bob = Keypair::generate(KeyType::Ed25519);
        let taken =
            shelf.deposit(envelope(&bob, 10, 30 * DAY), PeerId::random(), NOW).expect("test setup");
        assert_eq!(taken.kept_until_ms, NOW + DAY);
        assert_eq!(
            shelf.deposit(envelope(&bob, 10, DAY), PeerId::random(), NOW + 2 * DAY).err(),
            Some(Refusal::Expired)
        );
        assert_eq!(shelf.next_expiry(), Some(NOW + DAY));
        assert!(shelf.expire(NOW + DAY - 1).is_empty());
        assert_eq!(shelf.expire(NOW + DAY).len(), 1);
        assert!(shelf.is_empty());
        assert_eq!(shelf.bytes(), 0);
    }

    #[test]
    fn an_ack_deletes_only_from_its_own_mailbox_and_fetch_pages() {
        let mut shelf = Shelf::new(ShelfConfig::default());
        let (bob, carol) =
            (Keypair::generate(KeyType::Ed25519), Keypair::generate(KeyType::Ed25519));
        let peer = PeerId::random();
        let bobs: Vec<[u8; 32]> = (0..5)
            .map(|_| shelf.deposit(envelope(&bob, 10, DAY), peer, NOW).expect("test setup").digest)
            .collect();
        let carols =
            shelf.deposit(envelope(&carol, 10, DAY), peer, NOW).expect("test setup").digest;
        // Carol cannot delete bob's mail by naming its digests.
        assert!(shelf.ack(&Mailbox::of(&carol.account_id()), &bobs).is_empty());
        let bob_box = Mailbox::of(&bob.account_id());
        let (first, more) = shelf.fetch(&bob_box, 0, 2, NOW);
        assert_eq!((first.len(), more), (2, true));
        let (rest, more) = shelf.fetch(&bob_box, first[1].cursor, 10, NOW);
        assert_eq!((rest.len(), more), (3, false));
        assert_eq!(shelf.ack(&bob_box, &bobs[..2]).len(), 2);
        assert_eq!(shelf.fetch(&bob_box, 0, 10, NOW).0.len(), 3);
        assert!(shelf.kept.contains_key(&carols));
        // The same envelope twice is kept once.
        let again = shelf.kept[&bobs[4]].bytes.clone();
        assert!(shelf.deposit(again, peer, NOW).expect("test setup").write.is_none());
        assert_eq!(shelf.len(), 4);
    }

    #[test]
    fn read_mail_handed_over_again_is_refused_and_missing_names_what_to_hand_over() {
        let mut shelf = Shelf::new(ShelfConfig::default());
        let bob = Keypair::generate(KeyType::Ed25519);
        let bob_box = Mailbox::of(&bob.account_id());
        let (a, b) = (envelope(&bob, 10, DAY), envelope(&bob, 10, DAY));
        let peer = PeerId::random();
        let da = shelf.deposit(a.clone(), peer, NOW).expect("test setup").digest;
        let db = Envelope::decode(&b).expect("test setup").digest();
        assert_eq!(shelf.missing(&bob_box, &[da, db]), [db]);
        // Another mailbox's claim on a digest does not count.
        let carol_box = Mailbox::of(&Keypair::generate(KeyType::Ed25519).account_id());
        assert_eq!(shelf.missing(&carol_box, &[da]), [da]);
        assert_eq!(shelf.ack(&bob_box, &[da]).len(), 1);
        assert_eq!(shelf.deposit(a, peer, NOW).err(), Some(Refusal::AlreadyRead));
        assert!(shelf.missing(&bob_box, &[da]).is_empty(), "read: nothing to hand over");
    }

    #[test]
    fn a_replica_remembers_a_bounded_number_of_read_envelopes_and_forgets_expired_ones() {
        // Room for 64 memories of a read envelope.
        let total_bytes = 64 * 8 * ACKED_COST;
        let mut shelf = Shelf::new(ShelfConfig { total_bytes, ..Default::default() });
        let bob = Keypair::generate(KeyType::Ed25519);
        let bob_box = Mailbox::of(&bob.account_id());
        let peer = PeerId::random();
        // Bob deposits into his own mailbox and acknowledges, over and over; each later one
        // lives a minute longer (letters expire on the minute).
        let mut read = Vec::new();
        for i in 0..200 {
            let bytes = envelope(&bob, 10, DAY + i * 60_000);
            let digest = shelf.deposit(bytes.clone(), peer, NOW).expect("room").digest;
            assert_eq!(shelf.ack(&bob_box, &[digest]).len(), 1);
            read.push(bytes);
        }
        assert_eq!(shelf.read_remembered(), 64, "bounded");
        assert_eq!(shelf.acked_by_until.len(), 64, "both indexes in step");
        // The latest are still refused as read; the earliest, forgotten, are kept anew.
        assert_eq!(shelf.deposit(read[199].clone(), peer, NOW).err(), Some(Refusal::AlreadyRead));
        assert!(shelf.deposit(read[0].clone(), peer, NOW).is_ok(), "forgotten");
        // Expired memories go with the expiry pass.
        shelf.expire(NOW + 2 * DAY);
        assert_eq!(shelf.read_remembered(), 0);
        assert!(shelf.acked_by_until.is_empty());
    }

    #[test]
    fn a_reopened_shelf_has_what_was_written_and_drops_the_rest() {
        let dir = tempfile::tempdir().expect("test setup");
        let bob = Keypair::generate(KeyType::Ed25519);
        let bob_box = Mailbox::of(&bob.account_id());
        let mut shelf = Shelf::open(dir.path(), ShelfConfig::default(), NOW).expect("test setup");
        let peer = PeerId::random();
        let short = written(
            shelf.deposit(envelope(&bob, 10, 60_000), peer, NOW).expect("test setup"),
            dir.path(),
        );
        let long = written(
            shelf.deposit(envelope(&bob, 10, DAY), peer, NOW).expect("test setup"),
            dir.path(),
        );
        let cursor = shelf.kept[&long].cursor;
        // A write a crash interrupted, and a file that is not what its name says.
        fs::write(dir.path().join("junk.env.tmp"), b"half").expect("test setup");
        fs::copy(dir.path().join(file_name(&long)), dir.path().join(file_name(&[1; 32])))
            .expect("test setup");
        drop(shelf);

        let shelf =
            Shelf::open(dir.path(), ShelfConfig::default(), NOW + 120_000).expect("test setup");
        assert_eq!(shelf.len(), 1, "the expired one is dropped");
        assert!(shelf.kept.contains_key(&long) && !shelf.kept.contains_key(&short));
        assert_eq!(shelf.fetch(&bob_box, 0, 10, NOW + 120_000).0[0].cursor, cursor);
        let names: BTreeSet<String> = fs::read_dir(dir.path())
            .expect("test setup")
            .map(|e| e.expect("test setup").file_name().into_string().expect("test setup"))
            .collect();
        assert_eq!(
            names,
            [file_name(&long), format!("{}.bad", hex::encode([1; 32]))].into_iter().collect()
        );
        // Later deposits come after every cursor handed out before.
        let mut shelf = shelf;
        let next = shelf.deposit(envelope(&bob, 10, DAY), peer, NOW).expect("test setup").digest;
        assert!(shelf.kept[&next].cursor > cursor);
    }
}
