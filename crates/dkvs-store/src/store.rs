//! The store: sharded maps of records, a byte budget, and an optional log.

use std::collections::HashMap;
use std::fs::{self, File};
use std::hash::BuildHasher as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};

use dkvs_account::PublicKey;
use dkvs_record::{Compact, Key, Record, validate_batch};
use parking_lot::{Mutex, RwLock};

use crate::persist::{self, Entry, KIND_GONE, KIND_HELD, Log};
use crate::sync::Syncer;
use crate::{Clock, Config, Durability, PutError, StoreError, SystemClock};

const SHARDS: usize = 64;

/// Bytes charged for a live record beyond its key and value: its other fields and signature
/// in its one allocation ([`Compact`]), the allocation's counts, and the map slot at a
/// table's usual load (a test checks this covers them at a full table's; the `record_memory`
/// benchmark, that it is within 10% of the heap a record takes).
pub const RECORD_OVERHEAD: u64 = 160;
/// Bytes charged for a remembered sequence beyond its key: its box, the key text's
/// allocation and the map slot.
pub const GONE_OVERHEAD: u64 = 128;
/// Bytes charged beyond [`RECORD_OVERHEAD`] for a record that carries a transfer: the
/// previous owner's key and signature, kept beside the record's fields.
pub const TRANSFER_OVERHEAD: u64 = 104;
/// Bytes charged once per owner with anything held: the parsed owner key that its records
/// share, and its entry in the per-owner budget.
pub const OWNER_OVERHEAD: u64 = 256;

/// A shard's slots, found by their key's hash; each slot holds its key (a record's in its
/// compact bytes), so the table keeps no second copy of it.
type Map = hashbrown::HashTable<Slot>;

enum Slot {
    /// The newest record, until its expiry (its own, capped by the node's max TTL,
    /// [`Inner::expiry`]); its sequence is then remembered until `retain_until_ms` (see
    /// [`Inner::retention`]).
    Live { record: Compact, retain_until_ms: u64 },
    /// The value is gone (expired); the highest sequence is remembered. Boxed: few slots are
    /// gone, and every slot would pay its size.
    Gone(Box<Remembered>),
}

/// A key whose value is gone, and its highest sequence, remembered until `retain_until_ms`:
/// after that any record with that sequence or lower is too old to be accepted anyway. The
/// memory is charged to the last owner, so that no account can fill a store with short-lived
/// keys.
struct Remembered {
    key: Key,
    seq: u64,
    retain_until_ms: u64,
    owner: PublicKey,
}

impl Slot {
    fn key(&self) -> &str {
        match self {
            Slot::Live { record, .. } => record.key_str(),
            Slot::Gone(gone) => gone.key.as_str(),
        }
    }

    fn seq(&self) -> u64 {
        match self {
            Slot::Live { record, .. } => record.seq(),
            Slot::Gone(gone) => gone.seq,
        }
    }

    fn retain_until_ms(&self) -> u64 {
        match self {
            Slot::Live { retain_until_ms, .. } => *retain_until_ms,
            Slot::Gone(gone) => gone.retain_until_ms,
        }
    }
}

/// The condition of a write: what it expects the newest live record of its key to be. Shared
/// by the store and the network layer, whose compare-and-swap checks the network's newest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is held: an ordinary put (the ordering rule still applies).
    #[default]
    Any,
    /// Compare-and-swap: only if no live record is held.
    Absent,
    /// Compare-and-swap: only if the live record held has this sequence.
    Seq(u64),
}

impl Expect {
    /// The compare-and-swap condition of `expected`: that sequence, or (`None`) no record.
    pub fn from_cas(expected: Option<u64>) -> Expect {
        expected.map_or(Expect::Absent, Expect::Seq)
    }

    /// Whether a write may go on when the live record held has sequence `live` (`None`: none).
    pub fn allows(self, live: Option<u64>) -> bool {
        match self {
            Expect::Any => true,
            Expect::Absent => live.is_none(),
            Expect::Seq(seq) => live == Some(seq),
        }
    }
}

/// What a put did. Refusals that are normal traffic (stale, conflict) are outcomes, not errors.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PutOutcome {
    /// The record is now the newest held for its key.
    Stored {
        /// The sequence it replaced, if any.
        replaced: Option<u64>,
    },
    /// The very same record was already held: nothing to do.
    Unchanged,
    /// A record with this sequence or higher is held or was seen: the put is older.
    Stale {
        /// The highest sequence held or remembered.
        current_seq: u64,
        /// The record held, if its value is still here.
        current: Option<Arc<Record>>,
    },
    /// A compare-and-swap put whose expectation did not hold; carries what is held now.
    Conflict {
        /// The live record held, or `None` when there is none.
        current: Option<Arc<Record>>,
    },
}

/// Counts and sizes of what a store holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records held, tombstones included, expired-but-not-yet-removed included.
    pub records: u64,
    /// Keys whose value is gone but whose highest sequence is remembered.
    pub remembered: u64,
    /// Bytes charged against the budget.
    pub bytes: u64,
    /// Flushes of the log since the store was opened: for [`Durability::Fsync`], one covers
    /// every put that waited meanwhile; for [`Durability::WriteThrough`], at most one every 5
    /// s while puts come, which no put waits for (and those [`Store::flush`] asks for).
    pub syncs: u64,
}

#[derive(Default)]
struct Budget {
    used: u64,
    per_owner: HashMap<PublicKey, u64>,
}

struct Inner {
    shards: Box<[RwLock<Map>]>,
    hasher: foldhash::fast::FixedState,
    config: Config,
    clock: Arc<dyn Clock>,
    budget: Mutex<Budget>,
    log: Option<Arc<Mutex<Log>>>,
    /// Flushes the log of a persistent store (see `crate::sync`).
    syncer: Option<Arc<Syncer>>,
    compacting: Mutex<()>,
    compaction_due: AtomicBool,
    /// Holds the directory's lock file while the store is open.
    lock: Option<File>,
    /// Keys that came to be held live (see [`Store::keys_added`]).
    added: AtomicU64,
}

/// An in-memory store of validated records, optionally persisted to a directory.
///
/// Cloning gives another handle to the same store. All methods take `&self` and are safe to call
/// from many threads.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// Puts wait for [`Durability::Fsync`]'s flush (see [`Store::without_waiting_for_sync`]).
    wait_for_sync: bool,
}

/// Whether `outcome` says the record is held (and so waits for durability).
fn holds(outcome: &PutOutcome) -> bool {
    matches!(outcome, PutOutcome::Stored { .. } | PutOutcome::Unchanged)
}

/// The bytes a live record is charged.
pub fn record_weight(record: &Record) -> u64 {
    weight(record.key().as_str(), record.value(), record.transfer().is_some())
}

fn compact_weight(record: &Compact) -> u64 {
    weight(record.key_str(), record.value(), record.has_transfer())
}

fn weight(key: &str, value: &[u8], transfer: bool) -> u64 {
    let transfer = if transfer { TRANSFER_OVERHEAD } else { 0 };
    RECORD_OVERHEAD + transfer + key.len() as u64 + value.len() as u64
}

/// The bytes a remembered sequence is charged.
pub fn gone_weight(key: &Key) -> u64 {
    gone_weight_of(key.as_str())
}

fn gone_weight_of(key: &str) -> u64 {
    GONE_OVERHEAD + key.len() as u64
}

/// How a put came to be applied.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// From a caller: every rule applies. `own`: written by this node's user, who may use the
    /// share of the budget kept for them ([`Config::reserved_for_own_bytes`]).
    Put { expected: Expect, own: bool },
    /// Read back from this store's own files: the rules that held when it was written hold.
    /// With the retention the file recorded (older files have none).
    Restore { retain_until_ms: Option<u64> },
}

impl Store {
    /// A store that lives only in memory, on the system clock.
    pub fn in_memory(config: Config) -> Store {
        Store::in_memory_with_clock(config, Arc::new(SystemClock))
    }

    /// A store in memory on `clock`, for tests and simulations.
    pub fn in_memory_with_clock(config: Config, clock: Arc<dyn Clock>) -> Store {
        Store { inner: Arc::new(Inner::new(config, clock)), wait_for_sync: true }
    }

    /// Opens (or creates) a persistent store in `dir`, restoring what it held.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<Store, StoreError> {
        Store::open_with_clock(dir, config, Arc::new(SystemClock))
    }

    /// Opens a persistent store on `clock`. One process at a time may have a directory open.
    pub fn open_with_clock(
        dir: impl AsRef<Path>,
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Store, StoreError> {
        let dir = dir.as_ref();
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("LOCK");
        let lock = File::create(&lock_path).map_err(io_err(&lock_path))?;
        // A store of this process closed a moment ago may still be finishing a compaction on
        // its own thread, which holds the directory until it is done: wait for that, up to a
        // minute. Anyone else holding the lock for more than a moment (a command line that
        // looks whether a node is starting takes it shared, for microseconds) is an error.
        let start = std::time::Instant::now();
        while let Err(e) = lock.try_lock() {
            let patience = std::time::Duration::from_secs(if compacting(dir) { 60 } else { 1 });
            if start.elapsed() >= patience {
                return Err(StoreError::Io {
                    path: lock_path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::WouldBlock,
                        format!("the store is open elsewhere ({e})"),
                    ),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }

        let mut inner = Inner::new(config, clock);
        inner.lock = Some(lock);
        let (snapshots, logs) = persist::generations(dir)?;
        let base = snapshots.last().copied();
        if let Some(base) = base {
            inner.restore(persist::read_snapshot(&persist::snapshot_path(dir, base))?);
        }
        let base = base.unwrap_or(0);
        for &generation in logs.iter().filter(|&&g| g >= base) {
            let path = persist::log_path(dir, generation);
            let read = persist::read_log(&path)?;
            let len = fs::metadata(&path).map_err(io_err(&path))?.len();
            if let Some(damage) = &read.damage {
                // More than a kill's or a power cut's usual tear: the log is kept as it was,
                // beside the new files, for whoever wants to look (it is not removed with
                // the old generations). What it dropped no flush covered, but a write-through
                // store had returned it. A hard link needs no space; where there is none, a
                // copy. If neither can be made, the store does not start: the log would go
                // with the old generations.
                let copy = path.with_extension("damaged");
                let _ = fs::remove_file(&copy); // an earlier open's, of the same file
                fs::hard_link(&path, &copy)
                    .or_else(|_| {
                        let tmp = path.with_extension("damaged.tmp");
                        fs::copy(&path, &tmp)?;
                        File::open(&tmp)?.sync_all()?;
                        fs::rename(&tmp, &copy)
                    })
                    .and_then(|()| File::open(dir)?.sync_all())
                    .map_err(io_err(&copy))?;
                tracing::warn!(
                    log = %path.display(),
                    dropped = len - read.good,
                    %damage,
                    copy = %copy.display(),
                    "dropped a damaged log tail that no flush covered (a power cut); the log is \
                     kept as it was"
                );
            } else if read.good < len {
                tracing::warn!(log = %path.display(), dropped = len - read.good, "dropped a torn log tail");
            }
            inner.restore(read.entries);
        }
        // Start a fresh generation from what was restored; the old files go only once the new
        // snapshot is safely on disk.
        let generation = base.max(logs.last().copied().unwrap_or(0)) + 1;
        let log = Log::create(dir, generation)?;
        let written = log.written;
        let log = Arc::new(Mutex::new(log));
        // With write-through, the thread flushes lazily, for the log's marks (`crate::sync`).
        let lazy = (inner.config.durability == Durability::WriteThrough)
            .then_some(crate::sync::LAZY_FLUSH);
        let syncer = Syncer::start(Arc::clone(&log), written, lazy).map_err(io_err(dir))?;
        inner.syncer = Some(syncer);
        inner.log = Some(log);
        let store = Store { inner: Arc::new(inner), wait_for_sync: true };
        store.write_snapshot(generation)?;
        Ok(store)
    }

    /// Validates `record` and stores it if it is newer than what is held. For records from
    /// peers: the share of the budget kept for this node's user is not theirs to fill.
    pub fn put(&self, record: Record) -> Result<PutOutcome, PutError> {
        self.validate(&record)?;
        self.after_put(self.inner.apply(record, Source::Put { expected: Expect::Any, own: false }))
    }

    /// Like [`Store::put`], for a record this node's user writes: it may also use the share of
    /// the budget kept for them ([`Config::reserved_for_own_bytes`]), so that peers filling
    /// the store cannot block the user's own writes.
    pub fn put_own(&self, record: Record) -> Result<PutOutcome, PutError> {
        self.validate(&record)?;
        self.after_put(self.inner.apply(record, Source::Put { expected: Expect::Any, own: true }))
    }

    /// Compare-and-swap: like [`Store::put`], but only if the live record held now has sequence
    /// `expected` (`None`: only if no live record is held). On mismatch the outcome is
    /// [`PutOutcome::Conflict`] with the record held, so the writer can rebase at once.
    pub fn put_cas(&self, record: Record, expected: Option<u64>) -> Result<PutOutcome, PutError> {
        self.validate(&record)?;
        let source = Source::Put { expected: Expect::from_cas(expected), own: false };
        self.after_put(self.inner.apply(record, source))
    }

    /// Stores many records, as replication does: the owners' Ed25519 signatures are checked in
    /// one batch. One verdict per record, in order, each as [`Store::put`] would give it.
    pub fn put_many(&self, records: Vec<Record>) -> Vec<Result<PutOutcome, PutError>> {
        let now = self.inner.clock.now_ms();
        let verdicts = validate_batch(&records, now, &self.inner.config.limits);
        let results: Vec<Result<PutOutcome, PutError>> = records
            .into_iter()
            .zip(verdicts)
            .map(|(record, verdict)| {
                verdict?;
                self.inner.check_age(&record)?;
                self.inner.apply(record, Source::Put { expected: Expect::Any, own: false })
            })
            .collect();
        self.maybe_compact();
        if !results.iter().any(|r| r.as_ref().is_ok_and(holds)) {
            return results;
        }
        match self.wait_durable() {
            Ok(()) => results,
            Err((path, source)) => {
                let (kind, message) = (source.kind(), source.to_string());
                let failed = || PutError::NotDurable {
                    path: path.clone(),
                    source: std::io::Error::new(kind, message.clone()),
                };
                let broken = |r: Result<PutOutcome, PutError>| match r {
                    Ok(outcome) if holds(&outcome) => Err(failed()),
                    other => other,
                };
                results.into_iter().map(broken).collect()
            }
        }
    }

    fn validate(&self, record: &Record) -> Result<(), PutError> {
        record.validate(self.inner.clock.now_ms(), &self.inner.config.limits)?;
        self.inner.check_age(record)
    }

    fn after_put(&self, result: Result<PutOutcome, PutError>) -> Result<PutOutcome, PutError> {
        self.maybe_compact();
        let outcome = result?;
        if holds(&outcome) {
            self.wait_durable().map_err(|(path, source)| PutError::NotDurable { path, source })?;
        }
        Ok(outcome)
    }

    /// With [`Durability::Fsync`], waits until everything written so far is flushed (one flush
    /// for every put waiting meanwhile), unless this handle does not wait.
    fn wait_durable(&self) -> Result<(), (std::path::PathBuf, std::io::Error)> {
        match &self.inner.syncer {
            Some(syncer) if self.wait_for_sync && self.fsync() => syncer.wait(self.written()),
            _ => Ok(()),
        }
    }

    /// A handle to this store whose puts return once the record is written to the log, without
    /// waiting for [`Durability::Fsync`]'s flush: for a caller that must not block, such as a
    /// network event loop. Whoever acknowledges such a put waits until
    /// [`Store::durable`] reaches the [`Store::written`] position read after the put
    /// ([`Store::on_durable`] says when to look). Until then the record is readable but not
    /// yet promised to survive a power cut.
    pub fn without_waiting_for_sync(&self) -> Store {
        Store { inner: Arc::clone(&self.inner), wait_for_sync: false }
    }

    /// Where the log ends: a position that grows with every record written to it (0 for a
    /// store in memory).
    pub fn written(&self) -> u64 {
        self.inner.log.as_ref().map_or(0, |log| log.lock().written)
    }

    /// How far the log is as durable as [`Config::durability`] promises: everything written
    /// with [`Durability::WriteThrough`], what the flushes so far covered with
    /// [`Durability::Fsync`]. It stops moving when a flush fails ([`Store::flush_failure`]);
    /// what it covered stays promised.
    pub fn durable(&self) -> u64 {
        match &self.inner.syncer {
            Some(syncer) if self.fsync() => syncer.synced(),
            _ => self.written(),
        }
    }

    fn fsync(&self) -> bool {
        self.inner.config.durability == Durability::Fsync
    }

    /// Why the log can no longer be flushed, once a flush failed: the store then refuses
    /// writes, and what was written after [`Store::durable`] is not promised.
    pub fn flush_failure(&self) -> Option<StoreError> {
        self.inner.syncer.as_ref().and_then(|syncer| syncer.failure())
    }

    /// Calls `notify` each time [`Store::durable`] moves on, or a flush fails, from the store's
    /// sync thread. It must return at once, and must not own a handle to this store (the
    /// store would then never close). Never called unless the durability is
    /// [`Durability::Fsync`] (otherwise a write is durable when its put returns).
    pub fn on_durable(&self, notify: impl Fn() + Send + Sync + 'static) {
        if let Some(syncer) = self.inner.syncer.as_ref().filter(|_| self.fsync()) {
            syncer.listen(Box::new(notify));
        }
    }

    /// Holds every flush of the log until the guard is dropped; puts that wait for a flush
    /// wait meanwhile. For tests of what acknowledges before a flush.
    #[doc(hidden)]
    pub fn hold_syncs(&self) -> Option<crate::SyncHold> {
        self.inner.syncer.as_ref().map(|syncer| syncer.hold())
    }

    /// Makes the next flush of the log fail, as a failing disk would. For tests of what a
    /// failed flush does.
    #[doc(hidden)]
    pub fn fail_next_flush(&self) {
        if let Some(syncer) = &self.inner.syncer {
            syncer.fail_next();
        }
    }

    /// The live record for `key`, tombstones included; `None` if there is none or it expired.
    pub fn get(&self, key: &str) -> Option<Arc<Record>> {
        self.get_compact(key).map(|record| Arc::new(record.record()))
    }

    /// Like [`Store::get`], the record as the store keeps it: cheap to clone, decoded by
    /// [`Compact::record`].
    pub fn get_compact(&self, key: &str) -> Option<Compact> {
        let now = self.inner.clock.now_ms();
        let hash = self.inner.hash(key);
        match find(&self.inner.shard(hash).read(), hash, key) {
            Some(Slot::Live { record, .. }) if self.inner.expiry(record) > now => {
                Some(record.clone())
            }
            _ => None,
        }
    }

    /// The highest sequence held or remembered for `key`: a put at or below it is stale.
    pub fn highest_seq(&self, key: &str) -> Option<u64> {
        let hash = self.inner.hash(key);
        find(&self.inner.shard(hash).read(), hash, key).map(Slot::seq)
    }

    /// Drops expired records (remembering their sequences) and forgets sequences whose records
    /// can no longer be valid. Returns how many records were dropped.
    pub fn remove_expired(&self) -> usize {
        let now = self.inner.clock.now_ms();
        self.inner.shards.iter().map(|shard| self.inner.expire_shard(&mut shard.write(), now)).sum()
    }

    /// The live records. Walks one shard at a time and holds no lock between items, so
    /// concurrent puts proceed; a record put meanwhile may or may not be seen.
    pub fn records(&self) -> impl Iterator<Item = Arc<Record>> + '_ {
        self.compact_records().map(|record| Arc::new(record.record()))
    }

    /// The live records as the store keeps them, for replication: cloning one shares its
    /// allocation, so a list of them costs little. Walks as [`Store::records`] does.
    pub fn compact_records(&self) -> impl Iterator<Item = Compact> + '_ {
        let now = self.inner.clock.now_ms();
        self.inner.shards.iter().flat_map(move |shard| {
            let live: Vec<Compact> = shard
                .read()
                .iter()
                .filter_map(|slot| match slot {
                    Slot::Live { record, .. } if self.inner.expiry(record) > now => {
                        Some(record.clone())
                    }
                    _ => None,
                })
                .collect();
            live.into_iter()
        })
    }

    /// How many times a key came to be held live: a new key, or one whose value was gone or
    /// had expired (not a newer record of a key held live). A count that only grows, read to
    /// tell at no cost how many keys were added since it was last read (replication walks its
    /// records again when enough were: `dkvs_net`'s answer sets).
    pub fn keys_added(&self) -> u64 {
        self.inner.added.load(AtomicOrdering::Relaxed)
    }

    /// What the store holds.
    pub fn stats(&self) -> Stats {
        let syncs = self.inner.syncer.as_ref().map_or(0, |syncer| syncer.syncs());
        let mut stats = Stats { bytes: self.inner.budget.lock().used, syncs, ..Stats::default() };
        for shard in self.inner.shards.iter() {
            for slot in shard.read().iter() {
                match slot {
                    Slot::Live { .. } => stats.records += 1,
                    Slot::Gone(_) => stats.remembered += 1,
                }
            }
        }
        stats
    }

    /// Bytes `owner`'s live records are charged.
    pub fn owner_bytes(&self, owner: &PublicKey) -> u64 {
        self.inner.budget.lock().per_owner.get(owner).copied().unwrap_or(0)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Syncs the log to disk (a no-op for an in-memory store). Puts are already in the operating
    /// system's hands when they return; this makes them survive a power cut too.
    pub fn flush(&self) -> Result<(), StoreError> {
        let Some(syncer) = &self.inner.syncer else { return Ok(()) };
        // Through the sync thread: a flush of its own could report success for pages that a
        // failed flush there has dropped.
        syncer.wait(self.written()).map_err(|(path, source)| StoreError::Io { path, source })
    }

    /// Writes a snapshot and starts a new log, dropping the old files. Puts continue meanwhile.
    /// A no-op for an in-memory store.
    pub fn compact(&self) -> Result<(), StoreError> {
        let Some(log) = &self.inner.log else { return Ok(()) };
        let _one_at_a_time = self.inner.compacting.lock();
        let (dir, generation) = {
            let log = log.lock();
            (log.dir.clone(), log.generation + 1)
        };
        // The new file is made (and its directory synced) before the log's lock is taken:
        // puts wait for the lock only while the two logs trade places.
        let next = Log::create(&dir, generation)?;
        {
            let mut log = log.lock();
            // The old file joins the files the next flush syncs, unless everything in it is
            // flushed already (or nothing will be flushed again).
            let flush_later = match &self.inner.syncer {
                Some(syncer) => !syncer.caught_up(log.written) && syncer.failure().is_none(),
                None => true,
            };
            log.switch_to(next, flush_later);
            // The new log's first frame counts as written: the sync thread is to know.
            if let Some(syncer) = &self.inner.syncer {
                syncer.appended(log.written);
            }
        }
        self.write_snapshot(generation)
    }

    /// Writes the snapshot that starts `generation`, whose log already takes new puts, then
    /// removes the older files. Every put that went to an older log holds its shard's lock until
    /// it is in memory, so the shard walk below sees it.
    fn write_snapshot(&self, generation: u64) -> Result<(), StoreError> {
        let Some(log) = &self.inner.log else { return Ok(()) };
        let dir = log.lock().dir.clone();
        // One shard's frames at a time: the shard's lock is held while they are encoded, not
        // while they are written, and the snapshot is never whole in memory.
        persist::write_snapshot(&dir, generation, |out| {
            let mut chunk = Vec::new();
            for shard in self.inner.shards.iter() {
                chunk.clear();
                for slot in shard.read().iter() {
                    match slot {
                        Slot::Live { record, retain_until_ms } => {
                            let body = persist::held_body(&record.record(), *retain_until_ms);
                            persist::frame(&mut chunk, KIND_HELD, &body);
                        }
                        Slot::Gone(gone) => {
                            let Remembered { key, seq, retain_until_ms, owner } = &**gone;
                            let body = persist::gone_body(key, *seq, *retain_until_ms, owner);
                            persist::frame(&mut chunk, KIND_GONE, &body);
                        }
                    }
                }
                out.write_all(&chunk)?;
            }
            Ok(())
        })?;
        persist::remove_older(&dir, generation)
    }

    fn maybe_compact(&self) {
        let Some(log) = &self.inner.log else { return };
        if log.lock().len < self.inner.config.compact_after_bytes {
            return;
        }
        if self.inner.compaction_due.swap(true, AtomicOrdering::AcqRel) {
            return; // already under way
        }
        // On its own thread: the caller may be a network event loop, and a snapshot of a large
        // store takes seconds. Puts go on meanwhile (see `compact`).
        let store = self.clone();
        let dir = log.lock().dir.clone();
        set_compacting(&dir, true);
        let thread_dir = dir.clone();
        let spawned = std::thread::Builder::new().name("dkvs-compact".into()).spawn(move || {
            if let Err(e) = store.compact() {
                tracing::warn!(error = %e, "compaction failed; the log keeps growing");
            }
            store.inner.compaction_due.store(false, AtomicOrdering::Release);
            // The directory is free for a new open once this handle is gone.
            drop(store);
            set_compacting(&thread_dir, false);
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start compaction");
            self.inner.compaction_due.store(false, AtomicOrdering::Release);
            set_compacting(&dir, false);
        }
    }
}

impl Inner {
    fn new(config: Config, clock: Arc<dyn Clock>) -> Inner {
        Inner {
            shards: (0..SHARDS).map(|_| RwLock::new(Map::new())).collect(),
            hasher: foldhash::fast::FixedState::default(),
            config,
            clock,
            budget: Mutex::new(Budget::default()),
            log: None,
            syncer: None,
            compacting: Mutex::new(()),
            compaction_due: AtomicBool::new(false),
            lock: None,
            added: AtomicU64::new(0),
        }
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard of a key whose hash is `hash`. By the hash's middle bits: the table within
    /// takes its buckets from the low bits and its tags from the top ones, and a shard whose
    /// keys all agreed in those would crowd them into a fraction of its buckets.
    fn shard(&self, hash: u64) -> &RwLock<Map> {
        &self.shards[(hash >> 32) as usize % SHARDS]
    }

    /// When the node stops keeping `record`: its own expiry, capped at the node's max TTL
    /// counted from the record's issue time.
    fn expiry_of(&self, record: &Record) -> u64 {
        self.expiry_at(record.issued_at_ms(), record.expires_at_ms())
    }

    /// [`Inner::expiry_of`] a record kept compactly.
    fn expiry(&self, record: &Compact) -> u64 {
        self.expiry_at(record.issued_at_ms(), record.expires_at_ms())
    }

    fn expiry_at(&self, issued_at_ms: u64, expires_at_ms: u64) -> u64 {
        expires_at_ms.min(issued_at_ms.saturating_add(self.config.max_ttl_ms))
    }

    /// Puts `slot` in `map`, in place of the slot of its key if there is one.
    fn place(&self, map: &mut Map, hash: u64, slot: Slot) {
        let rehash = |s: &Slot| self.hash(s.key());
        match map.entry(hash, |s| s.key() == slot.key(), rehash) {
            hashbrown::hash_table::Entry::Occupied(mut held) => *held.get_mut() = slot,
            hashbrown::hash_table::Entry::Vacant(free) => {
                free.insert(slot);
            }
        }
    }

    /// Until when the highest sequence of a key is remembered once its value is gone: until no
    /// record with a lower sequence can still be accepted. Sequences and issue times need not
    /// agree (an owner's devices have skewed clocks: a delete signed on a slow phone can carry
    /// an earlier time than the value it deletes), so the bound is not the newest record's issue
    /// time but the latest of: every issue time this node saw for the key (`held`, carried from
    /// the slot it replaces), and the time it accepted the record (`now`: an honest owner signs
    /// a lower sequence before a higher one, so a lower sequence this node never saw carries an
    /// issue time no later than that, give or take the clock-skew bound; an owner who signs
    /// lower sequences later, on a fast clock, can roll back only their own keys). Plus the
    /// max TTL and the skew bound. Restoring a record written without its retention (frame
    /// kind 1) takes the restart time as `now`, which only remembers longer.
    fn retention(&self, record: &Record, held: Option<&Slot>, now: u64) -> u64 {
        let latest = record.issued_at_ms().max(now);
        let own = latest
            .saturating_add(self.config.max_ttl_ms)
            .saturating_add(self.config.limits.max_clock_skew_ms);
        own.max(retained(held))
    }

    fn check_age(&self, record: &Record) -> Result<(), PutError> {
        if self.expiry_of(record) <= self.clock.now_ms() {
            return Err(PutError::TooOld {
                issued_at_ms: record.issued_at_ms(),
                max_ttl_ms: self.config.max_ttl_ms,
            });
        }
        Ok(())
    }

    /// Applies a validated record under its shard's lock: ordering, ownership, compare-and-swap,
    /// budget, log, then memory. Anything refused changes nothing.
    fn apply(&self, record: Record, source: Source) -> Result<PutOutcome, PutError> {
        let now = self.clock.now_ms();
        let hash = self.hash(record.key().as_str());
        let mut shard = self.shard(hash).write();
        let held = find(&shard, hash, record.key().as_str());
        let live = match held {
            Some(Slot::Live { record, .. }) if self.expiry(record) > now => Some(record),
            _ => None,
        };
        let decoded = |live: Option<&Compact>| live.map(|r| Arc::new(r.record()));
        // Restoring replays the files in the order the puts were accepted, so each entry
        // replaces what is held: rules are checked when a put is accepted, not when it is
        // replayed (a sequence forgotten after its retention must not refuse a later put again).
        if let (Source::Put { .. }, Some(held)) = (source, held) {
            match held {
                // By sequence; only the same sequence needs the whole record, to tell the very
                // same record from a fork.
                Slot::Live { record: current, .. } => match record.seq().cmp(&current.seq()) {
                    std::cmp::Ordering::Greater => {}
                    std::cmp::Ordering::Equal if current.record() == record => {
                        return Ok(PutOutcome::Unchanged);
                    }
                    // Another account's record at the holder's sequence is no fork (the holder
                    // signed one record): it is refused for its owner, as at any sequence.
                    std::cmp::Ordering::Equal
                        if live.is_some_and(|live| {
                            live.owner() != record.owner()
                                && record.transfer().is_none_or(|t| t.from() != live.owner())
                        }) =>
                    {
                        return Err(PutError::ForeignOwner {
                            key: record.key().to_string(),
                            holder: current.owner().account_id().to_string(),
                        });
                    }
                    std::cmp::Ordering::Equal => {
                        return Err(PutError::Fork {
                            key: record.key().to_string(),
                            seq: record.seq(),
                        });
                    }
                    std::cmp::Ordering::Less => {
                        return Ok(PutOutcome::Stale {
                            current_seq: current.seq(),
                            current: decoded(live),
                        });
                    }
                },
                Slot::Gone(gone) if record.seq() <= gone.seq => {
                    return Ok(PutOutcome::Stale { current_seq: gone.seq, current: None });
                }
                Slot::Gone(_) => {}
            }
        }
        if let Source::Put { expected, .. } = source
            && !expected.allows(live.map(|r| r.seq()))
        {
            return Ok(PutOutcome::Conflict { current: decoded(live) });
        }
        if let (Source::Put { .. }, Some(live)) = (source, live)
            && live.owner() != record.owner()
            && record.transfer().is_none_or(|t| t.from() != live.owner())
        {
            return Err(PutError::ForeignOwner {
                key: record.key().to_string(),
                holder: live.owner().account_id().to_string(),
            });
        }

        let retain_until_ms = match source {
            Source::Restore { retain_until_ms: Some(recorded) } => recorded.max(retained(held)),
            _ => self.retention(&record, held, now),
        };
        // Budget: what the record costs, less what it frees.
        let weight = record_weight(&record);
        let (freed, freed_owner) = match held {
            Some(Slot::Live { record: old, .. }) => {
                (compact_weight(old), Some(old.owner().clone()))
            }
            Some(Slot::Gone(gone)) => (gone_weight(&gone.key), Some(gone.owner.clone())),
            None => (0, None),
        };
        let mut compact = Compact::from(&record);
        {
            let mut budget = self.budget.lock();
            let owner_now = budget.per_owner.get(record.owner()).copied().unwrap_or(0);
            let owner_freed = if freed_owner.as_ref() == Some(record.owner()) { freed } else { 0 };
            let owner_needed = owner_now + weight - owner_freed;
            let needed = budget.used + weight - freed;
            // A new owner's parsed key is kept too.
            let new_owner = if owner_now == 0 { OWNER_OVERHEAD } else { 0 };
            if matches!(source, Source::Put { .. }) {
                if owner_needed > self.config.max_bytes_per_owner && weight > owner_freed {
                    return Err(PutError::OwnerQuota {
                        owner: record.owner().account_id().to_string(),
                        needed: owner_needed,
                        limit: self.config.max_bytes_per_owner,
                    });
                }
                let limit = match source {
                    Source::Put { own: true, .. } => self.config.max_bytes,
                    _ => self.config.max_bytes.saturating_sub(self.config.reserved_for_own_bytes),
                };
                if needed + new_owner > limit && weight + new_owner > freed {
                    return Err(PutError::Full { needed: needed + new_owner, limit });
                }
            }
            // Log before memory: a put that returns is on disk; one whose write failed is not
            // in memory either.
            if let (Source::Put { .. }, Some(log)) = (source, &self.log) {
                let mut frame = Vec::with_capacity(weight as usize);
                persist::frame(
                    &mut frame,
                    KIND_HELD,
                    &persist::held_body(&record, retain_until_ms),
                );
                let mut log = log.lock();
                log.append(&frame)
                    .map_err(|source| PutError::Io { path: log.path.clone(), source })?;
                if let Some(syncer) = &self.syncer {
                    syncer.appended(log.written);
                }
            }
            budget.used = needed;
            if let Some(old_owner) = &freed_owner {
                charge(&mut budget, old_owner, -(freed as i64));
            }
            charge(&mut budget, record.owner(), weight as i64);
            if let Some((shared, _)) = budget.per_owner.get_key_value(record.owner()) {
                compact.share_owner(shared);
            }
        }
        let replaced = held.map(Slot::seq);
        // A key held live now that was not (new, gone, or expired and not swept yet).
        let added = live.is_none();
        self.place(&mut shard, hash, Slot::Live { record: compact, retain_until_ms });
        if added {
            self.added.fetch_add(1, AtomicOrdering::Relaxed);
        }
        Ok(PutOutcome::Stored { replaced })
    }

    /// Turns expired records into remembered sequences and forgets the sequences whose time is up.
    fn expire_shard(&self, shard: &mut Map, now: u64) -> usize {
        let mut dropped = 0;
        let mut budget = self.budget.lock();
        shard.retain(|slot| match slot {
            Slot::Live { record, retain_until_ms } if self.expiry(record) <= now => {
                let record_bytes = compact_weight(record);
                let gone_bytes = gone_weight_of(record.key_str());
                charge(&mut budget, record.owner(), -(record_bytes as i64));
                let retain_until_ms = *retain_until_ms;
                dropped += 1;
                if retain_until_ms > now {
                    budget.used = budget.used - record_bytes + gone_bytes;
                    charge(&mut budget, record.owner(), gone_bytes as i64);
                    let (key, seq, owner) = (record.key(), record.seq(), record.owner().clone());
                    *slot = Slot::Gone(Box::new(Remembered { key, seq, retain_until_ms, owner }));
                    true
                } else {
                    budget.used -= record_bytes;
                    false
                }
            }
            Slot::Gone(gone) if gone.retain_until_ms <= now => {
                budget.used -= gone_weight(&gone.key);
                charge(&mut budget, &gone.owner, -(gone_weight(&gone.key) as i64));
                false
            }
            _ => true,
        });
        dropped
    }

    /// Applies entries read back from disk. Expired records become remembered sequences.
    fn restore(&mut self, entries: Vec<Entry>) {
        let now = self.clock.now_ms();
        for entry in entries {
            match entry {
                Entry::Record(record, retain_until_ms) => {
                    let key = record.key().clone();
                    // Our own files hold only records that were accepted; the ordering rule
                    // still decides between a snapshot and the logs after it.
                    if let Err(e) = self.apply(*record, Source::Restore { retain_until_ms }) {
                        tracing::warn!(%key, error = %e, "skipped a restored record");
                    }
                }
                Entry::Gone { mut key, seq, retain_until_ms, mut owner } => {
                    // Only snapshots hold these, and a snapshot is read first, into an empty
                    // store, with one entry per key.
                    let hash = self.hash(key.as_str());
                    let mut shard = self.shard(hash).write();
                    if find(&shard, hash, key.as_str()).is_none() {
                        let mut budget = self.budget.lock();
                        budget.used += gone_weight(&key);
                        charge(&mut budget, &owner, gone_weight(&key) as i64);
                        // The owner's one parsed key, as for live records.
                        if let Some((shared, _)) = budget.per_owner.get_key_value(&owner) {
                            owner = shared.clone();
                            key.share_scope(&owner);
                        }
                        let gone = Remembered { key, seq, retain_until_ms, owner };
                        self.place(&mut shard, hash, Slot::Gone(Box::new(gone)));
                    }
                }
            }
        }
        for shard in self.shards.iter() {
            self.expire_shard(&mut shard.write(), now);
        }
    }
}

/// Until when `held` keeps its key's sequence remembered (0 for nothing held).
fn retained(held: Option<&Slot>) -> u64 {
    held.map_or(0, Slot::retain_until_ms)
}

/// The slot of `key`, whose hash is `hash`.
fn find<'a>(map: &'a Map, hash: u64, key: &str) -> Option<&'a Slot> {
    map.find(hash, |slot| slot.key() == key)
}

/// Directories whose store is being compacted on a background thread of this process.
static COMPACTING: std::sync::LazyLock<Mutex<std::collections::HashSet<std::path::PathBuf>>> =
    std::sync::LazyLock::new(Default::default);

fn canonical(dir: &Path) -> std::path::PathBuf {
    fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned())
}

fn compacting(dir: &Path) -> bool {
    COMPACTING.lock().contains(&canonical(dir))
}

fn set_compacting(dir: &Path, on: bool) {
    let dir = canonical(dir);
    let mut set = COMPACTING.lock();
    if on {
        set.insert(dir);
    } else {
        set.remove(&dir);
    }
}

/// Charges `owner` `delta` bytes. While anything of an owner's is held, the store keeps its
/// parsed key once (the records share it, [`Compact::share_owner`]); the store's bytes count it
/// as [`OWNER_OVERHEAD`] from the owner's first charge to its last.
fn charge(budget: &mut Budget, owner: &PublicKey, delta: i64) {
    match budget.per_owner.get_mut(owner) {
        Some(entry) => {
            *entry = entry.saturating_add_signed(delta);
            if *entry == 0 {
                budget.per_owner.remove(owner);
                budget.used -= OWNER_OVERHEAD;
            }
        }
        None if delta > 0 => {
            budget.per_owner.insert(owner.clone(), delta as u64);
            budget.used += OWNER_OVERHEAD;
        }
        None => {}
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The sync thread flushes what is left and ends; a last mark then says so (not synced:
        // if it is lost, a damaged last batch reads as a power cut's tear).
        if let Some(syncer) = &self.syncer {
            syncer.close();
            if let Some(log) = &self.log {
                log.lock().mark_flushed();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overheads_cover_the_structures() {
        // What a live record costs beyond its key and value bytes: its compact allocation
        // (less the key and value) with the `Arc` counts, and its map slot at a full table's
        // load (7/8). The parsed owner key is shared by the owner's records and charged once
        // per owner. (The `record_memory` benchmark measures the heap a record really takes;
        // this checks only that the structures fit.)
        assert_eq!(std::mem::size_of::<Slot>(), 32, "a slot is a compact record and a time");
        let slot = (std::mem::size_of::<Slot>() + 1) * 8 / 7;
        let alice = dkvs_account::Keypair::generate(dkvs_account::KeyType::Secp256k1);
        let key = Key::new("/k").expect("a valid key");
        let record =
            dkvs_record::Draft::new(key, Vec::new(), 1, 1_000).sign(&alice).expect("valid");
        let fields = Compact::from(&record).len() - "/k".len();
        let structures = fields + 16 + slot;
        assert!(
            structures as u64 <= RECORD_OVERHEAD,
            "record structures take {structures} bytes, RECORD_OVERHEAD is {RECORD_OVERHEAD}"
        );
        // The box, the key's text allocation with its counts, the slot.
        let gone = std::mem::size_of::<Remembered>() + 16 + slot;
        assert!(gone as u64 <= GONE_OVERHEAD, "{gone} > {GONE_OVERHEAD}");
        // The owner's parsed key (an Ed25519 point and its bytes, or a secp256k1 key) with its
        // `Arc` counts, and its entry in the per-owner budget.
        let owner = 216 + (std::mem::size_of::<PublicKey>() + 8 + 1) * 8 / 7;
        assert!(owner as u64 <= OWNER_OVERHEAD, "{owner} > {OWNER_OVERHEAD}");
        // A transfer: the previous owner's key (type, length, at most 33 bytes) and signature.
        let transfer = 2 + 33 + 64;
        assert!(transfer as u64 <= TRANSFER_OVERHEAD, "{transfer} > {TRANSFER_OVERHEAD}");
    }
}
