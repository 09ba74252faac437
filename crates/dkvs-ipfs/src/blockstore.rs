//! The block store: IPFS blocks on disk, one file each, checked against their CID on the way
//! in and on the way out, bounded in bytes, with pins and garbage collection, and a hot tier in
//! memory (a `moka` cache: forgetting a block there is harmless, the disk has it).
//!
//! Blocks are kept by their multihash, not by their CID: the same bytes under a CIDv0 (Kubo's
//! `Qm…`) and a CIDv1 are one block. Only SHA2-256 multihashes are taken (what every IPFS
//! implementation makes by default); a block of another hash is refused, not trusted.
//!
//! Layout: `<dir>/blocks/<first two hex digits>/<multihash hex>` written atomically (a
//! temporary file, synced, renamed, the directory synced), and `<dir>/pins`, one CID a line,
//! rewritten the same way. A pin is recursive: garbage collection keeps every block reachable
//! from a pinned root through the links the caller's DAG decoder finds.
//!
//! A block fetched for a read is kept as a cache ([`BlockStore::put_cached`]): a put that
//! would pass the limit makes room by removing such blocks, the oldest first, so reading other
//! people's files does not fill the store against an add or a pin (a put that would not fit
//! even with the whole cache gone removes none of it). What an earlier run cached is not told
//! apart from what it added (both are files on disk): garbage collection removes it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cid::Cid;
use cid::multihash::Multihash;
use sha2::{Digest as _, Sha256};

/// The multihash code of SHA2-256.
pub const SHA2_256: u64 = 0x12;
/// The identity multihash: the "hash" is the block itself (IPFS inlines tiny blocks so). No
/// file is kept for one; garbage collection follows its links.
pub const IDENTITY: u64 = 0x00;
/// The largest block taken: 2 MiB (bitswap peers send at most 2 MiB blocks; files are
/// chunked well below it).
pub const MAX_BLOCK: usize = 2 << 20;

/// A block store's limits.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BlockStoreConfig {
    /// Bytes of blocks kept on disk at most. Default 1 GiB.
    pub max_bytes: u64,
    /// Bytes of blocks kept in memory as the hot tier. Default 64 MiB.
    pub hot_bytes: u64,
}

impl Default for BlockStoreConfig {
    fn default() -> BlockStoreConfig {
        BlockStoreConfig { max_bytes: 1 << 30, hot_bytes: 64 << 20 }
    }
}

/// Why a block was not taken or given.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlockError {
    /// The CID's hash is not SHA2-256.
    #[error("CID {0} is not a SHA2-256 hash; only those are kept")]
    UnsupportedHash(Cid),
    /// The bytes do not hash to the CID.
    #[error("the bytes do not match CID {0}")]
    Mismatch(Cid),
    /// The block is over [`MAX_BLOCK`].
    #[error("a block of {len} bytes, over the {MAX_BLOCK} limit")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The store holds its limit; unpinned blocks can be collected (`gc`).
    #[error(
        "the block store is full ({used} of {limit} bytes); unpin files and collect garbage \
         (dkvs ipfs unpin, dkvs ipfs gc) to make room"
    )]
    Full {
        /// Bytes kept.
        used: u64,
        /// The limit.
        limit: u64,
    },
    /// A file on disk no longer matches its name: it was removed.
    #[error("block {0} was damaged on disk and is removed")]
    Corrupt(Cid),
    /// The disk failed.
    #[error("block store IO: {0}")]
    Io(#[from] io::Error),
}

/// What a garbage collection did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Blocks removed.
    pub removed: usize,
    /// Bytes freed.
    pub freed: u64,
    /// Blocks kept (reachable from a pin).
    pub kept: usize,
    /// Pinned roots with a block under them (or the root itself) missing, or damaged on disk
    /// (and removed): what it links to is not known, so the collection removed only blocks
    /// cached for reads in this run, and kept the rest. Pinning such a root again fetches what
    /// is missing; unpinning it gives it up.
    pub missing: Vec<Cid>,
}

struct Index {
    /// Multihash bytes -> block size.
    sizes: HashMap<Vec<u8>, u64>,
    /// The blocks whose files may not survive a crash: kept as a cache in this run, or found
    /// on disk at start (an earlier run may have cached them). A durable put writes them again.
    unsynced: HashSet<Vec<u8>>,
    /// The blocks kept as a read's cache in this run and not put for good since, by when they
    /// came (oldest first), and the other way round: what a put short of room removes.
    cached: BTreeMap<u64, Vec<u8>>,
    cached_at: HashMap<Vec<u8>, u64>,
    next_cached: u64,
    /// Bytes of the blocks in `cached`.
    cached_bytes: u64,
    bytes: u64,
    pins: BTreeSet<Cid>,
}

impl Index {
    fn uncache(&mut self, hash: &[u8]) {
        if let Some(at) = self.cached_at.remove(hash) {
            self.cached.remove(&at);
            let size = self.sizes.get(hash).copied().unwrap_or(0);
            self.cached_bytes = self.cached_bytes.saturating_sub(size);
        }
    }

    /// Forgets a block: its size, and whether it is synced or cached.
    fn remove(&mut self, hash: &[u8]) -> Option<u64> {
        self.uncache(hash);
        self.unsynced.remove(hash);
        let size = self.sizes.remove(hash)?;
        self.bytes = self.bytes.saturating_sub(size);
        Some(size)
    }
}

/// IPFS blocks on disk (see the module docs). Cloning gives another handle to the same store.
#[derive(Clone)]
pub struct BlockStore {
    dir: PathBuf,
    config: BlockStoreConfig,
    index: Arc<Mutex<Index>>,
    hot: moka::sync::Cache<Vec<u8>, Arc<[u8]>>,
    /// Held shared by every add and pin from its first block to its pin, and exclusively by
    /// garbage collection, which would otherwise remove the blocks of a file not pinned yet.
    gate: Arc<tokio::sync::RwLock<()>>,
    /// Writes of one block one at a time (striped by the hash's last byte): a read's cached
    /// write and a pin's synced write of the same block at once must not leave the cached
    /// file, or the index saying synced, behind the other.
    writes: Arc<[Mutex<()>; WRITE_STRIPES]>,
}

/// Cached blocks taken out of the index to make room: their files, to remove while the locks
/// of their write stripes are held (one each; the caller's own stripe it holds already).
struct Evicted<'a> {
    paths: Vec<PathBuf>,
    locks: Vec<std::sync::MutexGuard<'a, ()>>,
}

/// Stripes of [`BlockStore`]'s per-block write lock.
const WRITE_STRIPES: usize = 64;

/// An add or pin under way: garbage collection waits until it is dropped.
pub type Writing = tokio::sync::OwnedRwLockReadGuard<()>;

/// The CIDv1 of `data` under `codec` (0x55 raw, 0x70 dag-pb), SHA2-256.
pub fn cid_of(codec: u64, data: &[u8]) -> Cid {
    let digest = Sha256::digest(data);
    let hash = Multihash::<64>::wrap(SHA2_256, &digest).expect("a 32-byte digest fits");
    Cid::new_v1(codec, hash)
}

fn check(cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
    if cid.hash().code() != SHA2_256 {
        return Err(BlockError::UnsupportedHash(*cid));
    }
    if data.len() > MAX_BLOCK {
        return Err(BlockError::TooLarge { len: data.len() });
    }
    if Sha256::digest(data).as_slice() != cid.hash().digest() {
        return Err(BlockError::Mismatch(*cid));
    }
    Ok(())
}

impl BlockStore {
    /// The store in `dir` (made if missing), with what an earlier run kept there: the sizes of
    /// the blocks on disk (read from the directory, not the contents), and the pins. Leftovers
    /// of writes a crash interrupted are removed.
    pub fn open(dir: &Path, config: BlockStoreConfig) -> Result<BlockStore, BlockError> {
        let blocks = dir.join("blocks");
        fs::create_dir_all(&blocks)?;
        let mut sizes = HashMap::new();
        let mut bytes = 0;
        for shard in fs::read_dir(&blocks)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") {
                    fs::remove_file(entry.path())?;
                    continue;
                }
                let Ok(hash) = hex::decode(&name) else { continue };
                let size = entry.metadata()?.len();
                bytes += size;
                sizes.insert(hash, size);
            }
        }
        let pins = match fs::read_to_string(dir.join("pins")) {
            Ok(text) => text.lines().filter_map(|line| line.trim().parse().ok()).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(e.into()),
        };
        let hot = moka::sync::Cache::builder()
            .max_capacity(config.hot_bytes)
            .weigher(|_: &Vec<u8>, block: &Arc<[u8]>| block.len().try_into().unwrap_or(u32::MAX))
            .build();
        Ok(BlockStore {
            dir: dir.to_owned(),
            config,
            index: Arc::new(Mutex::new(Index {
                unsynced: sizes.keys().cloned().collect(),
                sizes,
                cached: BTreeMap::new(),
                cached_at: HashMap::new(),
                next_cached: 0,
                cached_bytes: 0,
                bytes,
                pins,
            })),
            hot,
            gate: Arc::default(),
            writes: Arc::new(std::array::from_fn(|_| Mutex::new(()))),
        })
    }

    fn path(&self, hash: &[u8]) -> PathBuf {
        let name = hex::encode(hash);
        self.dir.join("blocks").join(&name[..2]).join(name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        // A panic while holding the lock leaves the index as consistent as the last change.
        self.index.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `data` as the block `cid`, after checking that it hashes to it. True when it was
    /// new. Blocking: call it from a blocking context in async code.
    pub fn put(&self, cid: &Cid, data: &[u8]) -> Result<bool, BlockError> {
        self.put_with(cid, data, true)
    }

    /// Keeps a block fetched for a read, as a cache: written atomically but not synced (a
    /// crash may lose it, or leave a file that fails its check on the way out and is removed),
    /// not put in the hot tier (a file streamed through is not hot), and removed, oldest first,
    /// when a later put needs its room (unless it was put for good meanwhile). For what must
    /// survive (an add, a pin), [`BlockStore::put`].
    pub fn put_cached(&self, cid: &Cid, data: &[u8]) -> Result<bool, BlockError> {
        self.put_with(cid, data, false)
    }

    fn put_with(&self, cid: &Cid, data: &[u8], durable: bool) -> Result<bool, BlockError> {
        check(cid, data)?;
        let hash = cid.hash().to_bytes();
        // Held from the check of the index to its update, over the file's write.
        let _writing = self.writes[stripe(&hash)].lock().unwrap_or_else(|p| p.into_inner());
        let (new, evicted, reserved) = {
            let mut index = self.lock();
            let kept = index.sizes.contains_key(&hash);
            if kept && (!durable || !index.unsynced.contains(&hash)) {
                return Ok(false);
            }
            let mut evicted = Evicted { paths: Vec::new(), locks: Vec::new() };
            // What the put adds: the block, or what a file found at start lacks (a crash cut
            // it short; one of this run's cache has the block's size, and is not evicted for
            // itself: it is in the cache only when it was not found at start).
            let grows =
                (data.len() as u64).saturating_sub(index.sizes.get(&hash).copied().unwrap_or(0));
            if grows > 0 && index.bytes + grows > self.config.max_bytes {
                // Nothing is removed for a put that would not fit anyway.
                if index.bytes.saturating_sub(index.cached_bytes) + grows <= self.config.max_bytes {
                    evicted = self.make_room(&mut index, stripe(&hash), grows);
                }
                if index.bytes + grows > self.config.max_bytes {
                    let used = index.bytes;
                    drop(index);
                    self.remove_files(evicted);
                    return Err(BlockError::Full { used, limit: self.config.max_bytes });
                }
            }
            // Counted from now: puts of other blocks while this one is written (the index
            // unlocked) find the room taken, and cannot pass the limit together.
            index.bytes += grows;
            (!kept, evicted, grows)
        };
        // The files of the blocks that made room go with the index unlocked (the node's task
        // asks it whether blocks are kept), each under its own write lock.
        self.remove_files(evicted);
        // A block kept only as a cache is written again, synced, when it must survive.
        let written = write_atomically(&self.path(&hash), data, durable);
        let mut index = self.lock();
        index.bytes = index.bytes.saturating_sub(reserved);
        if let Err(e) = written {
            return Err(e.into());
        }
        // A file found at start may have been cut short by a crash: its size is the new one.
        let before = index.sizes.insert(hash.clone(), data.len() as u64).unwrap_or(0);
        index.bytes = index.bytes.saturating_sub(before) + data.len() as u64;
        if durable {
            index.unsynced.remove(&hash);
            index.uncache(&hash);
        } else if !index.cached_at.contains_key(&hash) {
            index.unsynced.insert(hash.clone());
            let at = index.next_cached;
            index.next_cached += 1;
            index.cached.insert(at, hash.clone());
            index.cached_at.insert(hash.clone(), at);
            index.cached_bytes += data.len() as u64;
        }
        drop(index);
        if durable {
            self.hot.insert(hash, Arc::from(data));
        }
        Ok(new)
    }

    /// Takes cached blocks out of the index, the oldest first, until `len` more bytes fit or
    /// none is left; `own` is the write stripe the caller holds. A block whose stripe another
    /// write holds is passed over: that write may be putting it for good. Returns the files
    /// to remove ([`BlockStore::remove_files`], once the index is unlocked), with the locks of
    /// their stripes, so that no write of those blocks comes between.
    fn make_room<'a>(&'a self, index: &mut Index, own: usize, len: u64) -> Evicted<'a> {
        let mut evicted = Evicted { paths: Vec::new(), locks: Vec::new() };
        let mut held = [false; WRITE_STRIPES];
        held[own] = true;
        let mut passed = Vec::new();
        while index.bytes + len > self.config.max_bytes {
            let Some((&at, hash)) = index.cached.first_key_value() else { break };
            let (hash, stripe) = (hash.clone(), stripe(hash));
            if !held[stripe] {
                match self.writes[stripe].try_lock() {
                    Ok(guard) => evicted.locks.push(guard),
                    Err(std::sync::TryLockError::Poisoned(p)) => evicted.locks.push(p.into_inner()),
                    Err(std::sync::TryLockError::WouldBlock) => {
                        index.cached.remove(&at);
                        passed.push((at, hash));
                        continue;
                    }
                }
                held[stripe] = true;
            }
            index.remove(&hash);
            self.hot.invalidate(&hash);
            evicted.paths.push(self.path(&hash));
        }
        for (at, hash) in passed {
            index.cached.insert(at, hash);
        }
        evicted
    }

    /// Removes the files of blocks [`BlockStore::make_room`] took out of the index, then lets
    /// their stripes go.
    fn remove_files(&self, evicted: Evicted<'_>) {
        for path in &evicted.paths {
            if let Err(e) = fs::remove_file(path)
                && e.kind() != io::ErrorKind::NotFound
            {
                // Left on disk, out of the index: the next start counts it again (and gc, or
                // the next eviction, removes it).
                tracing::warn!(error = %e, path = %path.display(), "cannot remove a cached block");
            }
        }
    }

    /// The block `cid`, checked against it (a damaged file is removed and reported).
    /// Blocking: call it from a blocking context in async code.
    pub fn get(&self, cid: &Cid) -> Result<Option<Arc<[u8]>>, BlockError> {
        if cid.hash().code() != SHA2_256 {
            return Err(BlockError::UnsupportedHash(*cid));
        }
        let hash = cid.hash().to_bytes();
        if let Some(block) = self.hot.get(&hash) {
            return Ok(Some(block));
        }
        if !self.lock().sizes.contains_key(&hash) {
            return Ok(None);
        }
        let data = match fs::read(self.path(&hash)) {
            Ok(data) if check(cid, &data).is_ok() => data,
            Ok(_) => return self.get_again(cid, &hash),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return self.get_again(cid, &hash),
            Err(e) => return Err(e.into()),
        };
        let block: Arc<[u8]> = Arc::from(data);
        self.hot.insert(hash, block.clone());
        Ok(Some(block))
    }

    /// [`BlockStore::get`] once more, after its file was missing or damaged, with no write of
    /// the block under way (a put or an eviction between the index's answer and the read):
    /// only a file still missing or damaged then is forgotten.
    fn get_again(&self, cid: &Cid, hash: &[u8]) -> Result<Option<Arc<[u8]>>, BlockError> {
        let _writing = self.writes[stripe(hash)].lock().unwrap_or_else(|p| p.into_inner());
        if !self.lock().sizes.contains_key(hash) {
            return Ok(None);
        }
        match fs::read(self.path(hash)) {
            Ok(data) if check(cid, &data).is_ok() => {
                let block: Arc<[u8]> = Arc::from(data);
                self.hot.insert(hash.to_vec(), block.clone());
                Ok(Some(block))
            }
            Ok(_) => {
                tracing::warn!(%cid, "a damaged block on disk; removed");
                let _ = fs::remove_file(self.path(hash));
                self.forget(hash);
                Err(BlockError::Corrupt(*cid))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(hash);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the block `cid` is kept.
    pub fn has(&self, cid: &Cid) -> bool {
        self.lock().sizes.contains_key(&cid.hash().to_bytes())
    }

    /// Whether the block `cid` is kept on disk for good: written synced in this run (an add,
    /// a pin). A block kept as a read's cache, or found on disk at start, is not, until it is
    /// put again.
    pub fn synced(&self, cid: &Cid) -> bool {
        let hash = cid.hash().to_bytes();
        let index = self.lock();
        index.sizes.contains_key(&hash) && !index.unsynced.contains(&hash)
    }

    /// The size of the block `cid`, if kept.
    pub fn size(&self, cid: &Cid) -> Option<u64> {
        self.lock().sizes.get(&cid.hash().to_bytes()).copied()
    }

    fn forget(&self, hash: &[u8]) {
        self.lock().remove(hash);
        self.hot.invalidate(hash);
    }

    /// Bytes of blocks kept on disk.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Blocks kept on disk.
    pub fn len(&self) -> usize {
        self.lock().sizes.len()
    }

    /// Whether no block is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pins `cid` (and, for garbage collection, everything reachable from it); saved at once.
    pub fn pin(&self, cid: &Cid) -> Result<(), BlockError> {
        let mut index = self.lock();
        if index.pins.insert(*cid) {
            self.save_pins(&index.pins)?;
        }
        Ok(())
    }

    /// Unpins `cid`; false when it was not pinned.
    pub fn unpin(&self, cid: &Cid) -> Result<bool, BlockError> {
        let mut index = self.lock();
        if !index.pins.remove(cid) {
            return Ok(false);
        }
        self.save_pins(&index.pins)?;
        Ok(true)
    }

    /// The pinned roots.
    pub fn pins(&self) -> Vec<Cid> {
        self.lock().pins.iter().copied().collect()
    }

    fn save_pins(&self, pins: &BTreeSet<Cid>) -> Result<(), BlockError> {
        let text: String = pins.iter().map(|cid| format!("{cid}\n")).collect();
        Ok(write_atomically(&self.dir.join("pins"), text.as_bytes(), true)?)
    }

    /// Marks an add or a pin under way until the guard is dropped: [`BlockStore::collect`]
    /// waits for it (and new writers wait for a collection under way).
    pub async fn writing(&self) -> Writing {
        self.gate.clone().read_owned().await
    }

    /// Garbage collection as a node runs it: after every add and pin under way, then
    /// [`BlockStore::gc`] on a blocking thread, with new adds and pins waiting for it.
    pub async fn collect(
        &self,
        links: impl Fn(&Cid, &[u8]) -> Vec<Cid> + Send + 'static,
    ) -> Result<GcReport, BlockError> {
        self.collect_among(links, None).await
    }

    /// [`BlockStore::collect`] of `blocks` only: those of them that no pin reaches are
    /// removed (what an add that failed wrote; nothing else is touched).
    pub async fn collect_only(
        &self,
        links: impl Fn(&Cid, &[u8]) -> Vec<Cid> + Send + 'static,
        blocks: &[Cid],
    ) -> Result<GcReport, BlockError> {
        let only = blocks.iter().map(|cid| cid.hash().to_bytes()).collect();
        self.collect_among(links, Some(only)).await
    }

    async fn collect_among(
        &self,
        links: impl Fn(&Cid, &[u8]) -> Vec<Cid> + Send + 'static,
        only: Option<HashSet<Vec<u8>>>,
    ) -> Result<GcReport, BlockError> {
        let _alone = self.gate.clone().write_owned().await;
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.gc_among(links, only.as_ref()))
            .await
            .map_err(|e| BlockError::Io(io::Error::other(e.to_string())))?
    }

    /// Removes every block that no pin reaches. Call it through [`BlockStore::collect`] while
    /// adds or pins may run. `links` gives the CIDs a block links to (the
    /// DAG decoder: dag-pb links for UnixFS, none for raw blocks). Raw blocks (codec 0x55)
    /// have no links and are not read. A pinned block that is missing, or damaged on disk (and
    /// so removed), is skipped (fetched later, not an error).
    pub fn gc(&self, links: impl Fn(&Cid, &[u8]) -> Vec<Cid>) -> Result<GcReport, BlockError> {
        self.gc_among(links, None)
    }

    /// [`BlockStore::gc`], removing only blocks among `only` when it is given.
    fn gc_among(
        &self,
        links: impl Fn(&Cid, &[u8]) -> Vec<Cid>,
        only: Option<&HashSet<Vec<u8>>>,
    ) -> Result<GcReport, BlockError> {
        let mut live: HashSet<Vec<u8>> = HashSet::new();
        let mut missing = BTreeSet::new();
        // Each block with the pinned root it was reached from.
        let mut todo: Vec<(Cid, Cid)> = self.pins().into_iter().map(|root| (root, root)).collect();
        while let Some((cid, root)) = todo.pop() {
            if cid.hash().code() == IDENTITY {
                // Its links are in its CID; it cannot link to itself (its bytes would hold
                // themselves), so the walk ends.
                todo.extend(links(&cid, cid.hash().digest()).into_iter().map(|c| (c, root)));
                continue;
            }
            if cid.hash().code() != SHA2_256
                || !live.insert(cid.hash().to_bytes())
                || cid.codec() == crate::unixfs::RAW
            {
                continue;
            }
            match self.get(&cid) {
                Ok(Some(block)) => todo.extend(links(&cid, &block).into_iter().map(|c| (c, root))),
                Ok(None) | Err(BlockError::Corrupt(_)) => {
                    missing.insert(root);
                }
                Err(e) => return Err(e),
            }
        }
        // With a pinned block missing, what it links to is not known: only blocks cached for
        // reads in this run go.
        let dead: Vec<Vec<u8>> = {
            let index = self.lock();
            let dead = |hash: &&Vec<u8>| {
                !live.contains(*hash)
                    && only.is_none_or(|only| only.contains(*hash))
                    && (missing.is_empty() || index.cached_at.contains_key(*hash))
            };
            index.sizes.keys().filter(dead).cloned().collect()
        };
        let missing = missing.into_iter().collect();
        let mut report = GcReport { missing, ..GcReport::default() };
        for hash in dead {
            match fs::remove_file(self.path(&hash)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            let size = self.lock().sizes.get(&hash).copied().unwrap_or(0);
            self.forget(&hash);
            report.removed += 1;
            report.freed += size;
        }
        report.kept = self.len();
        Ok(report)
    }
}

/// The stripe of [`BlockStore`]'s write lock a block's multihash falls in.
fn stripe(hash: &[u8]) -> usize {
    usize::from(hash.last().copied().unwrap_or(0)) % WRITE_STRIPES
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the whole new one.
/// Writes `bytes` to `path` through a temporary file and a rename, so that `path` is whole or
/// absent; with `durable`, synced (the file, then its directory) before this returns.
fn write_atomically(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other("a path with no directory"))?;
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        "{}.{:016x}.tmp",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        rand::random::<u64>()
    ));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    if durable {
        file.sync_data()?;
    }
    drop(file);
    fs::rename(&tmp, path)?;
    if durable {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: u64 = 0x55;
    const DAG_PB: u64 = 0x70;

    fn store(dir: &Path, max_bytes: u64) -> BlockStore {
        let config = BlockStoreConfig { max_bytes, ..Default::default() };
        BlockStore::open(dir, config).expect("opens")
    }

    #[test]
    fn a_block_kept_as_a_cache_is_written_again_synced_when_it_must_survive() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let blocks = store(dir.path(), 1 << 20);
        let cid = cid_of(RAW, b"fetched for a read");
        let hash = cid.hash().to_bytes();
        let inode = || fs::metadata(blocks.path(&hash)).expect("a file").ino();
        assert!(blocks.put_cached(&cid, b"fetched for a read").expect("cached"));
        let cached = inode();
        assert!(!blocks.put_cached(&cid, b"fetched for a read").expect("again"), "kept once");
        assert_eq!(inode(), cached, "a cache put of a cached block writes nothing");
        // Pinned (or added): not new, but its file is written again and synced.
        assert!(!blocks.put(&cid, b"fetched for a read").expect("kept"), "not new");
        let synced = inode();
        assert_ne!(synced, cached, "written again");
        assert!(!blocks.put(&cid, b"fetched for a read").expect("kept"));
        assert_eq!(inode(), synced, "once synced, not written again");
        assert_eq!(blocks.bytes(), 18, "counted once");
        // Found on disk at start: an earlier run may have kept it as a cache only.
        let blocks = store(dir.path(), 1 << 20);
        assert!(!blocks.put(&cid, b"fetched for a read").expect("kept"));
        assert_ne!(fs::metadata(blocks.path(&hash)).expect("a file").ino(), synced);
        assert_eq!(&*blocks.get(&cid).expect("reads").expect("kept"), b"fetched for a read");
    }

    #[test]
    fn blocks_cached_for_reads_make_room_for_puts_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Room for three blocks of 100 bytes.
        let blocks = store(dir.path(), 300);
        let block = |n: u8| (cid_of(RAW, &[n; 100]), [n; 100]);
        let kept = |b: &BlockStore, n: u8| {
            let (cid, data) = block(n);
            b.has(&cid) && b.get(&cid).expect("reads").as_deref() == Some(&data[..])
        };
        let file_of = |b: &BlockStore, n: u8| b.path(&block(n).0.hash().to_bytes()).exists();
        for n in 1..=3 {
            let (cid, data) = block(n);
            assert!(blocks.put_cached(&cid, &data).expect("cached"));
        }
        // An add needs room: the oldest cached block goes, file and all.
        let (cid, data) = block(4);
        assert!(blocks.put(&cid, &data).expect("room made"));
        assert!(!blocks.has(&block(1).0) && !file_of(&blocks, 1), "the oldest cached went");
        assert!(kept(&blocks, 2) && kept(&blocks, 3) && kept(&blocks, 4));
        assert_eq!(blocks.bytes(), 300);
        // A newer read's block pushes out the next oldest; a cached block put for good (a
        // pin) is cached no more.
        let (cid, data) = block(3);
        assert!(!blocks.put(&cid, &data).expect("pinned"));
        let (cid, data) = block(5);
        assert!(blocks.put_cached(&cid, &data).expect("room made"));
        assert!(!blocks.has(&block(2).0) && kept(&blocks, 5));
        let (cid, data) = block(6);
        assert!(blocks.put(&cid, &data).expect("room made"));
        assert!(!blocks.has(&block(5).0), "5, the one cached block left, went");
        assert!(
            kept(&blocks, 3) && kept(&blocks, 4) && kept(&blocks, 6),
            "blocks put for good stay"
        );
        // Nothing cached is left: the store is full, and says so; nothing changed.
        let (cid, data) = block(7);
        assert!(matches!(blocks.put(&cid, &data), Err(BlockError::Full { used: 300, limit: 300 })));
        assert!(matches!(blocks.put_cached(&cid, &data), Err(BlockError::Full { .. })));
        assert!(!blocks.has(&cid) && blocks.bytes() == 300);
        // A block cached by an earlier run is not told from one it added: kept until gc.
        let (cid, data) = block(8);
        let small = store(dir.path(), 400);
        assert!(small.put_cached(&cid, &data).expect("cached"));
        let reopened = store(dir.path(), 400);
        let (cid, data) = block(9);
        assert!(matches!(reopened.put(&cid, &data), Err(BlockError::Full { .. })));
        assert!(kept(&reopened, 8));
    }

    #[test]
    fn a_cached_block_being_written_is_not_removed_to_make_room() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocks = store(dir.path(), 200);
        // Two cached blocks in different write stripes.
        let mut cached = (0u8..).map(|n| (cid_of(RAW, &[n; 100]), [n; 100]));
        let (a, a_data) = cached.next().expect("a");
        let (b, b_data) = cached
            .find(|(cid, _)| stripe(&cid.hash().to_bytes()) != stripe(&a.hash().to_bytes()))
            .expect("b");
        blocks.put_cached(&a, &a_data).expect("cached");
        blocks.put_cached(&b, &b_data).expect("cached");
        let (c, c_data) = cached
            .find(|(cid, _)| {
                let s = stripe(&cid.hash().to_bytes());
                s != stripe(&a.hash().to_bytes()) && s != stripe(&b.hash().to_bytes())
            })
            .expect("c");
        // A write of `a` under way (a pin putting it for good): the room comes from `b`.
        let held = blocks.writes[stripe(&a.hash().to_bytes())].lock().expect("lock");
        assert!(blocks.put(&c, &c_data).expect("room made"));
        drop(held);
        assert!(blocks.has(&a) && !blocks.has(&b) && blocks.has(&c));
        // `a` is still the oldest cached: the next put short of room takes it.
        let (d, d_data) = cached.next().expect("d");
        assert!(blocks.put(&d, &d_data).expect("room made"));
        assert!(!blocks.has(&a) && blocks.has(&c) && blocks.has(&d));
    }

    #[test]
    fn a_put_waits_for_a_write_of_the_same_block_under_way() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocks = store(dir.path(), 1 << 20);
        let cid = cid_of(RAW, b"read and pinned at once");
        // A write of this block under way (a pin's, say): a read's cached put of it waits,
        // so neither leaves its file, or its mark in the index, behind the other's.
        let writing = blocks.writes[stripe(&cid.hash().to_bytes())].lock().expect("free");
        let put = {
            let blocks = blocks.clone();
            std::thread::spawn(move || blocks.put_cached(&cid, b"read and pinned at once"))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!put.is_finished() && !blocks.has(&cid), "it waits for the write under way");
        drop(writing);
        assert!(put.join().expect("joined").expect("cached"), "then it writes");
    }

    #[test]
    fn blocks_are_checked_in_and_out_and_v0_and_v1_are_one_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocks = store(dir.path(), 1 << 20);
        let cid = cid_of(RAW, b"hello");
        assert!(blocks.put(&cid, b"hello").expect("taken"));
        assert!(!blocks.put(&cid, b"hello").expect("again"), "kept once");
        assert!(matches!(blocks.put(&cid, b"jello"), Err(BlockError::Mismatch(_))));
        let other = Cid::new_v1(RAW, Multihash::<64>::wrap(0x13, &[0; 64]).expect("sha512"));
        assert!(matches!(blocks.put(&other, b"x"), Err(BlockError::UnsupportedHash(_))));
        assert_eq!(blocks.get(&cid).expect("read").as_deref(), Some(&b"hello"[..]));
        // The CIDv0 of the same multihash names the same block.
        let v0 = Cid::new_v0(*cid.hash()).expect("sha2-256 fits v0");
        assert!(blocks.has(&v0));
        assert_eq!(blocks.get(&v0).expect("read").as_deref(), Some(&b"hello"[..]));
        assert_eq!(blocks.get(&cid_of(RAW, b"absent")).expect("read"), None);
        let big = vec![0; MAX_BLOCK + 1];
        assert!(matches!(blocks.put(&cid_of(RAW, &big), &big), Err(BlockError::TooLarge { .. })));
        // A cached block is checked the same, counted the same and read back from disk.
        let cached = cid_of(RAW, b"fetched");
        assert!(matches!(blocks.put_cached(&cached, b"fetchex"), Err(BlockError::Mismatch(_))));
        assert!(blocks.put_cached(&cached, b"fetched").expect("taken"));
        assert!(!blocks.hot.contains_key(&cached.hash().to_bytes()), "not in the hot tier");
        assert_eq!(blocks.get(&cached).expect("read").as_deref(), Some(&b"fetched"[..]));
        assert_eq!(blocks.bytes(), 5 + 7);
    }

    #[tokio::test]
    async fn garbage_collection_waits_for_an_add_under_way() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocks = store(dir.path(), 1 << 20);
        let (leaf, old) = (cid_of(RAW, b"leaf of a file being added"), cid_of(RAW, b"old"));
        blocks.put(&old, b"old").expect("kept");
        let writing = blocks.writing().await;
        blocks.put(&leaf, b"leaf of a file being added").expect("kept");
        let collecting = tokio::spawn({
            let blocks = blocks.clone();
            async move { blocks.collect(|_, _| Vec::new()).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!collecting.is_finished(), "the collection waits for the add");
        assert!(blocks.has(&leaf));
        blocks.pin(&leaf).expect("pinned");
        drop(writing);
        let report = collecting.await.expect("joined").expect("collected");
        assert_eq!((report.removed, report.kept), (1, 1));
        assert!(blocks.has(&leaf) && !blocks.has(&old), "the added file stays, the rest goes");
    }

    #[test]
    fn the_store_is_bounded_and_a_reopened_store_has_its_blocks_and_pins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocks = store(dir.path(), 10);
        let (a, b) = (cid_of(RAW, b"123456"), cid_of(RAW, b"abcdef"));
        blocks.put(&a, b"123456").expect("fits");
        assert!(matches!(blocks.put(&b, b"abcdef"), Err(BlockError::Full { used: 6, limit: 10 })));
        blocks.pin(&a).expect("pinned");
        // A write a crash interrupted.
        let shard = blocks.path(&a.hash().to_bytes()).parent().expect("a shard").to_owned();
        fs::write(shard.join("junk.0123.tmp"), b"x").expect("a leftover");
        drop(blocks);
        let again = store(dir.path(), 10);
        assert_eq!((again.len(), again.bytes()), (1, 6));
        assert_eq!(again.pins(), [a]);
        assert_eq!(again.get(&a).expect("read").as_deref(), Some(&b"123456"[..]));
        assert!(!shard.join("junk.0123.tmp").exists(), "the leftover is removed");
    }

    #[test]
    fn a_damaged_block_is_reported_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocks = store(dir.path(), 1 << 20);
        let cid = cid_of(RAW, b"precious");
        blocks.put(&cid, b"precious").expect("taken");
        fs::write(blocks.path(&cid.hash().to_bytes()), b"tampered").expect("overwrite");
        let fresh = store(dir.path(), 1 << 20); // no hot copy
        assert!(matches!(fresh.get(&cid), Err(BlockError::Corrupt(_))));
        assert!(!fresh.has(&cid));
        assert_eq!(fresh.get(&cid).expect("read"), None);
    }

    #[test]
    fn gc_keeps_what_pins_reach_through_links_and_removes_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocks = store(dir.path(), 1 << 20);
        // A root whose bytes list its children's CIDs (a stand-in for dag-pb links, which the
        // UnixFS layer decodes): the walk follows whatever `links` returns.
        let leaves: Vec<Cid> = (0..3u8)
            .map(|i| {
                let cid = cid_of(RAW, &[i; 10]);
                blocks.put(&cid, &[i; 10]).expect("leaf");
                cid
            })
            .collect();
        let listing: String = leaves.iter().map(|c| format!("{c}\n")).collect();
        let root = cid_of(DAG_PB, listing.as_bytes());
        blocks.put(&root, listing.as_bytes()).expect("root");
        let stray = cid_of(RAW, b"stray");
        blocks.put(&stray, b"stray").expect("stray");
        blocks.pin(&root).expect("pin");
        let links = |cid: &Cid, block: &[u8]| -> Vec<Cid> {
            if cid.codec() != DAG_PB {
                return Vec::new();
            }
            String::from_utf8_lossy(block).lines().filter_map(|l| l.parse().ok()).collect()
        };
        let report = blocks.gc(links).expect("gc");
        assert_eq!(report, GcReport { removed: 1, freed: 5, kept: 4, missing: Vec::new() });
        assert!(!blocks.has(&stray) && leaves.iter().all(|c| blocks.has(c)));
        assert!(blocks.unpin(&root).expect("unpin"));
        assert_eq!(blocks.gc(links).expect("gc").removed, 4);
        assert!(blocks.is_empty());
        // An inline (identity) root: its bytes are in its CID; what it links to is kept.
        let child = cid_of(RAW, b"under an inline root");
        blocks.put(&child, b"under an inline root").expect("child");
        let listing = format!("{child}\n");
        let digest = Multihash::<64>::wrap(IDENTITY, listing.as_bytes()).expect("fits");
        let inline = Cid::new_v1(DAG_PB, digest);
        blocks.pin(&inline).expect("pin");
        assert_eq!(blocks.gc(links).expect("gc").removed, 0);
        assert!(blocks.has(&child), "kept through the inline root");
        // Raw leaves have no links: not read (a damaged one is found when it is read, not by
        // every collection). A damaged inner block does not stop the collection.
        let path = |cid: &Cid| blocks.path(&cid.hash().to_bytes());
        fs::write(path(&child), b"damaged").expect("damage");
        let stray = cid_of(RAW, b"stray");
        blocks.put(&stray, b"stray").expect("stray");
        let report = blocks.gc(links).expect("gc");
        assert_eq!((report.removed, report.kept), (1, 1), "{report:?}");
        assert!(blocks.has(&child) && !blocks.has(&stray));
        let listing = format!("{child}\n");
        let inner = cid_of(DAG_PB, listing.as_bytes());
        blocks.put(&inner, listing.as_bytes()).expect("inner");
        blocks.pin(&inner).expect("pin");
        blocks.put(&stray, b"stray").expect("stray");
        fs::write(path(&inner), b"damaged too").expect("damage");
        // Reopened, so that the block is read from disk, not from the hot tier.
        let blocks = store(dir.path(), 1 << 20);
        let cached = cid_of(RAW, b"cached for a read");
        blocks.put_cached(&cached, b"cached for a read").expect("cached");
        let report = blocks.gc(links).expect("a damaged block does not fail the collection");
        assert!(!blocks.has(&inner), "removed as damaged");
        assert_eq!(report.missing, [inner], "and reported by its pinned root");
        // What the damaged block linked to is not known: only this run's cache goes.
        assert!(blocks.has(&stray), "kept while a pinned block is missing");
        assert!(!blocks.has(&cached), "a block cached for a read goes");
        assert!(blocks.has(&child), "still reached through the inline root");
        assert_eq!((report.removed, report.kept), (1, 2), "{report:?}");
        // Pinned again whole (here: put again), the collection removes what no pin reaches.
        blocks.put(&inner, listing.as_bytes()).expect("inner");
        let report = blocks.gc(links).expect("gc");
        assert!(report.missing.is_empty() && !blocks.has(&stray), "{report:?}");
        // A block missing deep in a file is reported by the root the user pinned.
        let leaf = cid_of(RAW, b"deep leaf");
        blocks.put(&leaf, b"deep leaf").expect("leaf");
        let middle_listing = format!("{leaf}\n");
        let middle = cid_of(DAG_PB, middle_listing.as_bytes());
        blocks.put(&middle, middle_listing.as_bytes()).expect("middle");
        let root_listing = format!("{middle}\n");
        let root = cid_of(DAG_PB, root_listing.as_bytes());
        blocks.put(&root, root_listing.as_bytes()).expect("root");
        blocks.pin(&root).expect("pin");
        fs::remove_file(path(&middle)).expect("lost");
        let blocks = store(dir.path(), 1 << 20);
        let report = blocks.gc(links).expect("gc");
        assert_eq!(report.missing, [root], "{report:?}");
        assert!(blocks.has(&leaf), "kept: nothing is known to not reach it");
    }

    #[test]
    fn a_read_that_finds_a_file_gone_while_it_is_written_again_keeps_the_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocks = store(dir.path(), 1 << 20);
        let cid = cid_of(RAW, b"evicted and put again");
        blocks.put_cached(&cid, b"evicted and put again").expect("cached");
        let path = blocks.path(&cid.hash().to_bytes());
        // A write of the block under way (an eviction, then a pin's put): its file is gone for
        // a moment, and a read finds it so.
        let held = blocks.writes[stripe(&cid.hash().to_bytes())].lock().expect("lock");
        fs::remove_file(&path).expect("gone");
        let reader = blocks.clone();
        let read = std::thread::spawn(move || reader.get(&cid));
        std::thread::sleep(std::time::Duration::from_millis(200));
        fs::write(&path, b"evicted and put again").expect("back");
        drop(held);
        let got = read.join().expect("joined").expect("read");
        assert_eq!(got.as_deref(), Some(&b"evicted and put again"[..]));
        assert!(blocks.has(&cid), "not forgotten");
        // With no write under way, a missing file is forgotten (a store reopened, so that the
        // hot tier does not answer).
        let reopened = store(dir.path(), 1 << 20);
        fs::remove_file(&path).expect("gone");
        assert_eq!(reopened.get(&cid).expect("read"), None);
        assert!(!reopened.has(&cid));
    }

    #[test]
    fn a_put_makes_room_from_many_cached_blocks_of_one_stripe() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocks = store(dir.path(), 100 * 100);
        // 100 cached blocks over 64 stripes: some stripes hold several.
        let cached: Vec<Cid> = (0..100u32)
            .map(|i| {
                let data = [i.to_be_bytes().as_slice(), &[0; 96]].concat();
                let cid = cid_of(RAW, &data);
                blocks.put_cached(&cid, &data).expect("cached");
                cid
            })
            .collect();
        let mut stripes = cached.iter().map(|c| stripe(&c.hash().to_bytes())).collect::<Vec<_>>();
        stripes.sort_unstable();
        stripes.dedup();
        assert!(stripes.len() < 64, "several blocks share a stripe");
        // An add of half the store: the oldest 50 go, whatever their stripes.
        let big = cid_of(RAW, &[7; 5000]);
        assert!(blocks.put(&big, &[7; 5000]).expect("room made"));
        assert!(cached[..50].iter().all(|c| !blocks.has(c)), "the oldest half went");
        assert!(cached[50..].iter().all(|c| blocks.has(c)), "the rest stayed");
        assert_eq!(blocks.bytes(), 100 * 100);
    }

    #[test]
    fn a_put_that_would_not_fit_with_the_whole_cache_gone_removes_none_of_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocks = store(dir.path(), 300);
        let (a, b, c) = (cid_of(RAW, &[1; 100]), cid_of(RAW, &[2; 100]), cid_of(RAW, &[3; 100]));
        blocks.put(&a, &[1; 100]).expect("added");
        blocks.put_cached(&b, &[2; 100]).expect("cached");
        blocks.put_cached(&c, &[3; 100]).expect("cached");
        let big = cid_of(RAW, &[9; 250]);
        assert!(matches!(blocks.put(&big, &[9; 250]), Err(BlockError::Full { used: 300, .. })));
        assert!(blocks.has(&b) && blocks.has(&c), "the cache is still there");
        let d = cid_of(RAW, &[4; 100]);
        assert!(blocks.put(&d, &[4; 100]).expect("room made"));
        assert!(!blocks.has(&b) && blocks.has(&c), "one block's room, the oldest");
    }

    #[test]
    fn puts_at_once_do_not_pass_the_limit_together() {
        // Eight writers put ten blocks of 100 bytes each, at once, into room for ten: each
        // file is written (and synced) with the index unlocked, and every put checked the room
        // against what was there before any of them was counted.
        let dir = tempfile::tempdir().expect("tempdir");
        let blocks = store(dir.path(), 1000);
        let start = std::sync::Barrier::new(8);
        let kept: usize = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..8u8)
                .map(|writer| {
                    let (blocks, start) = (&blocks, &start);
                    scope.spawn(move || {
                        start.wait();
                        (0..10u8)
                            .filter(|i| {
                                let data = [writer, *i].repeat(50);
                                blocks.put(&cid_of(RAW, &data), &data).is_ok()
                            })
                            .count()
                    })
                })
                .collect();
            writers.into_iter().map(|w| w.join().expect("a writer")).sum()
        });
        assert_eq!(kept, 10, "room for ten");
        assert_eq!(blocks.bytes(), 1000);
        assert_eq!(store(dir.path(), 1000).bytes(), 1000, "on disk too");
    }

    #[test]
    fn a_block_cut_short_by_a_crash_put_again_takes_only_room_the_store_has() {
        let (a, b) = (cid_of(RAW, &[1; 100]), cid_of(RAW, &[2; 100]));
        // A store of 300 bytes whose b a crash cut to 10 bytes: the next start counts 110.
        let crashed = |dir: &Path| {
            let blocks = store(dir, 300);
            blocks.put(&a, &[1; 100]).expect("added");
            blocks.put(&b, &[2; 100]).expect("added");
            fs::write(blocks.path(&b.hash().to_bytes()), [2; 10]).expect("cut short");
            let blocks = store(dir, 300);
            assert_eq!(blocks.bytes(), 110);
            blocks
        };
        let len = |blocks: &BlockStore| {
            fs::metadata(blocks.path(&b.hash().to_bytes())).expect("the file").len()
        };
        // Put again whole (an add or a pin of its file), b takes 90 more bytes: with 180 of
        // them taken for good, they are not there, and it stays as it was.
        let dir = tempfile::tempdir().expect("tempdir");
        let blocks = crashed(dir.path());
        blocks.put(&cid_of(RAW, &[3; 180]), &[3; 180]).expect("room for it");
        assert!(matches!(blocks.put(&b, &[2; 100]), Err(BlockError::Full { used: 290, .. })));
        assert_eq!((blocks.bytes(), len(&blocks)), (290, 10), "the limit holds; not written");
        // With 180 of them a read's cache, the cache makes room, and b counts its size.
        let dir = tempfile::tempdir().expect("tempdir");
        let blocks = crashed(dir.path());
        let cached = cid_of(RAW, &[3; 180]);
        blocks.put_cached(&cached, &[3; 180]).expect("room for it");
        assert!(!blocks.put(&b, &[2; 100]).expect("room made"), "it was kept");
        assert!(!blocks.has(&cached), "the cache made room");
        assert_eq!((blocks.bytes(), len(&blocks)), (200, 100));
        assert_eq!(&*blocks.get(&b).expect("reads").expect("kept"), &[2; 100]);
    }
}
