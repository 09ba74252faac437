//! Files through a node that hosts [`Ipfs`]: [`add`] (chunk, encrypt, build the UnixFS DAG,
//! keep and pin it, tell peers and the IPFS DHT) and [`get`] (fetch block by block from any
//! peer, check each against its CID, decrypt, write out). Both run in constant memory
//! whatever the file's size: a few chunks at a time.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use cid::Cid;
use dkvs_account::seal::SymmetricKey;
use dkvs_account::{AccountId, Keypair};
use dkvs_net::{NetError, Node};
use dkvs_record::{Draft, Key};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::oneshot;

use crate::blockstore::{BlockError, BlockStore, IDENTITY, SHA2_256};
use crate::crypt::{CryptError, Header, Opener, Sealer};
use crate::exchange::Fetched;
use crate::service::Ipfs;
use crate::unixfs::{self, FileReader, FileWriter, Layout, UnixfsError};

/// Blocks a get asks for ahead of the one it needs next.
const WINDOW: usize = 16;

/// How an encrypted file is laid out: 256 KiB chunks (each leaf 40 bytes more), 174 links a
/// node, CIDv1 and raw leaves. A plain file takes [`Layout::default`], Helia's, so that it
/// gets the CID Helia gives the same bytes.
pub const ENCRYPTED_LAYOUT: Layout =
    Layout { chunk: 262_144, cid_v0: false, raw_leaves: true, max_links: 174 };

/// Why an IPFS operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpfsError {
    /// The block store refused (full, damaged, disk).
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The DAG is not a UnixFS file this node reads.
    #[error(transparent)]
    Unixfs(#[from] UnixfsError),
    /// The block store had no room left for a file being added or pinned: its limit counts
    /// the file's own blocks too, so said as such, not as a store full of other files.
    #[error(
        "the file does not fit in the block store: it holds at most {limit} bytes \
         (ipfs_max_bytes), and was full after {took} bytes of this file's blocks beside {others} \
         of other files'; {}",
        room_advice(*others)
    )]
    NoRoom {
        /// Bytes of the file's blocks kept when the store was full.
        took: u64,
        /// Bytes of other blocks kept then.
        others: u64,
        /// The store's limit.
        limit: u64,
    },
    /// The file did not decrypt.
    #[error(transparent)]
    Crypt(#[from] CryptError),
    /// No peer gave a block in time.
    #[error(
        "no peer gave block {cid} within {secs} s (connect to a peer that has it: dkvs ipfs connect)"
    )]
    NotFound {
        /// The block.
        cid: Cid,
        /// How long it was waited for.
        secs: u64,
    },
    /// The file is encrypted and no account was given to open it.
    #[error(
        "{cid} is encrypted by account {owner}; open it with that account or one it was shared with"
    )]
    Encrypted {
        /// The file.
        cid: Cid,
        /// Its owner.
        owner: String,
    },
    /// The file is not encrypted (there is nothing to share).
    #[error("{0} is not an encrypted file; anyone with its CID reads it")]
    NotEncrypted(Cid),
    /// The file is someone else's.
    #[error("{cid} is encrypted by account {owner}; only its owner shares it")]
    NotOwner {
        /// The file.
        cid: Cid,
        /// Its owner.
        owner: String,
    },
    /// An archive given to [`add_archive`] holds what is not added: a path that leaves its
    /// root, a name twice, a link, a directory too big for one block, a cut file.
    #[error("cannot add {path:?}: {why}")]
    Archive {
        /// The entry's path in the archive.
        path: String,
        /// Why.
        why: String,
    },
    /// What [`add_archive`] was given does not read as a tar archive (or its reading failed).
    #[error("the archive does not read as tar: {0}")]
    NotAnArchive(std::io::Error),
    /// A sharded directory too big to list here (its entries are read by name).
    #[error(
        "{root} is a sharded directory of over {nodes} nodes or {} MiB: too big to list here \
         (its entries are read by name)",
        bytes >> 20
    )]
    TooLargeToList {
        /// The directory.
        root: Cid,
        /// The most nodes listed.
        nodes: usize,
        /// The most bytes of nodes listed.
        bytes: usize,
    },
    /// A gateway path names nothing.
    #[error("{root} has no entry {path:?}")]
    NoSuchPath {
        /// The root.
        root: Cid,
        /// The path, as far as it went.
        path: String,
    },
    /// The share record could not be read or written.
    #[error("the share record: {0}")]
    Share(String),
    /// The node does not host IPFS, or stopped.
    #[error("the node: {0}")]
    Node(#[from] NetError),
    /// Reading the source or writing the output failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// What frees room for a file that did not fit: only a larger store, when the store held
/// nothing else.
fn room_advice(others: u64) -> &'static str {
    if others == 0 {
        "raise ipfs_max_bytes to add it"
    } else {
        "unpin files and collect garbage (dkvs ipfs unpin, dkvs ipfs gc), or raise ipfs_max_bytes"
    }
}

/// What [`add`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The file's root CID.
    pub cid: Cid,
    /// Bytes of the file as stored (for an encrypted file: header and ciphertext).
    pub stored: u64,
    /// Bytes read from the source.
    pub read: u64,
}

/// What [`get`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    /// Bytes written out.
    pub written: u64,
    /// Whether the file was decrypted.
    pub decrypted: bool,
}

/// How [`get`] reads a file.
#[derive(Clone, Debug)]
pub struct GetOptions {
    /// The account that opens encrypted files (its own, and those shared with it).
    pub account: Option<Keypair>,
    /// Write the file's bytes as they are, without decrypting.
    pub raw: bool,
    /// How long to wait for any one block. Default 60 s.
    pub block_timeout: Duration,
    /// Every block fetched must be kept here (to pin the file): a store that refuses one (it
    /// is full) fails the get. Otherwise fetched blocks are kept as room allows.
    pub keep: bool,
    /// Only these bytes of what the get writes (of the plaintext, for a file it decrypts):
    /// the blocks that hold none of them are not fetched. `None`: the whole file; an empty
    /// range reads nothing.
    pub range: Option<std::ops::Range<u64>>,
    /// Blocks read already ([`Stat::known`]): taken before the store and the network, so a
    /// get right after a [`stat`] fetches none of them again (a store with no room for a
    /// read's cache keeps nothing).
    pub known: Known,
}

/// Blocks of a file already fetched and checked against their CIDs ([`Stat::known`],
/// [`GetOptions::known`]).
#[derive(Clone, Default)]
pub struct Known(HashMap<Cid, Arc<[u8]>>);

impl std::fmt::Debug for Known {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Known({} blocks)", self.0.len())
    }
}

impl Default for GetOptions {
    fn default() -> GetOptions {
        GetOptions {
            account: None,
            raw: false,
            block_timeout: Duration::from_secs(60),
            keep: false,
            range: None,
            known: Known::default(),
        }
    }
}

async fn store_of(node: &Node) -> Result<BlockStore, IpfsError> {
    Ok(node.with_extension(|ipfs: &mut Ipfs, _| ipfs.store().clone()).await?)
}

/// Fills `buf` from `source` as far as it goes; the bytes read (fewer only at the end).
fn read_full(source: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match source.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Adds the bytes of `source` as a UnixFS file: encrypted with `account`'s key, or plain when
/// `account` is `None` (the same CID Helia gives the same bytes). The blocks are kept and the
/// root pinned before this returns; then peers that asked for them are served and the root is
/// provided on the IPFS DHT. `progress` hears the bytes read so far.
pub async fn add(
    node: &Node,
    mut source: impl Read + Send + 'static,
    account: Option<&Keypair>,
    progress: impl Fn(u64) + Send + 'static,
) -> Result<Added, IpfsError> {
    let account = account.cloned();
    let write =
        move |mut keep: Keep<'_>| write_file(&mut source, account.as_ref(), &progress, &mut keep);
    keep_and_pin(node, write, |added: &Added| added.cid).await
}

/// What an add hands its blocks to, to keep.
type Keep<'a> = &'a mut dyn FnMut(Vec<unixfs::Block>) -> Result<(), IpfsError>;

/// Runs `write` on a blocking thread, keeping every block it hands over (synced), then pins
/// what it made (its `root`): no garbage collection runs in between. Then peers that asked for the
/// blocks are served and the root is provided on the IPFS DHT. If `write` fails, what it
/// wrote goes (unless a pin reaches it: another add's): it took the room of later adds, and
/// no pin would ever have it collected but a `gc`.
async fn keep_and_pin<T: Send + 'static>(
    node: &Node,
    write: impl FnOnce(Keep<'_>) -> Result<T, IpfsError> + Send + 'static,
    root: fn(&T) -> Cid,
) -> Result<T, IpfsError> {
    let store = store_of(node).await?;
    let writing = store.writing().await;
    let blocks = store.clone();
    let written = tokio::task::spawn_blocking(move || {
        let _writing = writing;
        let (mut cids, mut new, mut took) = (Vec::new(), Vec::new(), 0);
        let mut keep = |blocks: Vec<unixfs::Block>| -> Result<(), IpfsError> {
            for block in blocks {
                // New, or kept only as a read's cache (or found on disk at the start) before:
                // what a failed add leaves behind for good.
                let fresh = !store.synced(&block.cid);
                store.put(&block.cid, &block.data).map_err(|e| no_room(e.into(), took))?;
                if fresh {
                    new.push(block.cid);
                    took += block.data.len() as u64;
                }
                cids.push(block.cid);
            }
            Ok(())
        };
        let made = write(&mut keep).and_then(|made| {
            store.pin(&root(&made))?;
            Ok(made)
        });
        // Files alike share their blocks: each announced once.
        cids.sort_unstable();
        cids.dedup();
        (made.map(|made| (made, cids)), new)
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    let (made, cids) = match written {
        (Ok(done), _) => done,
        (Err(e), new) => {
            if let Err(gc) = blocks.collect_only(links, &new).await {
                tracing::warn!(error = %gc, "cannot remove the blocks of an add that failed");
            }
            return Err(e);
        }
    };
    let root = root(&made);
    node.with_extension(move |ipfs: &mut Ipfs, _| ipfs.announce(Some(root), &cids)).await?;
    Ok(made)
}

/// A block store's [`BlockError::Full`] met by an add or a pin that had kept `took` bytes of
/// the file's blocks by then: [`IpfsError::NoRoom`].
fn no_room(e: IpfsError, took: u64) -> IpfsError {
    match e {
        IpfsError::Block(BlockError::Full { used, limit }) => {
            IpfsError::NoRoom { took, others: used.saturating_sub(took), limit }
        }
        e => e,
    }
}

/// What [`add_archive`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedTree {
    /// The root directory's CID.
    pub cid: Cid,
    /// Files added.
    pub files: u64,
    /// Directories made, the root included.
    pub directories: u64,
    /// Bytes of the files.
    pub read: u64,
    /// Bytes of every block of the tree: the root's cumulative size, as its parent would link it.
    pub stored: u64,
}

/// The most bytes of names and CIDs one directory block holds: past it, a directory is
/// sharded (a HAMT, [`unixfs::sharded_directory`]), as Helia shards it. Helia's estimate,
/// checked after each entry it adds: each entry's name in UTF-8 bytes and 36 bytes of CID,
/// for the entries whose CIDs it knows then (files; directories listed and still empty: one
/// that has entries has no CID until the end); once past, sharded for good. So which
/// directories Helia shards follows the order of the archive; this follows the same order
/// (checked against Helia with names outside ASCII, with empty subdirectories, and with
/// subdirectories of one file each).
pub const MAX_FLAT_DIRECTORY: usize = 262_144;

/// Adds the directories and files of a tar archive (read from `source` as it comes) as one
/// UnixFS directory, public: each file as [`add`] adds a plain file, each directory as Helia
/// and Kubo make one (links by name, each with its cumulative size; sharded past
/// [`MAX_FLAT_DIRECTORY`]), so that the root gets the CID Helia gives the same tree. The
/// archive's paths are relative to the root (`./`
/// and a leading `/` are dropped); directories it does not list are made; regular files and
/// directories only: a link, a device, `..`, a name twice or a name that is not UTF-8 is
/// refused ([`IpfsError::Archive`]), and nothing of the add is kept. The root alone is
/// pinned. `progress` hears the files' bytes read so far.
pub async fn add_archive(
    node: &Node,
    source: impl Read + Send + 'static,
    progress: impl Fn(u64) + Send + 'static,
) -> Result<AddedTree, IpfsError> {
    let write = move |mut keep: Keep<'_>| write_tree(source, &progress, &mut keep);
    keep_and_pin(node, write, |added: &AddedTree| added.cid).await
}

/// A reader that tells whether its source ended (a read of it gave nothing).
struct Ended<R> {
    inner: R,
    ended: bool,
}

impl<R: Read> Read for Ended<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ended |= n == 0 && !buf.is_empty();
        Ok(n)
    }
}

/// The longest path of an archive's entry, and the longest name in it (Linux's `PATH_MAX`
/// and `NAME_MAX`): what a directory could be unpacked to. Longer ones are refused before
/// anything is kept of them.
pub const MAX_ARCHIVE_PATH: usize = 4096;
/// See [`MAX_ARCHIVE_PATH`].
pub const MAX_ARCHIVE_NAME: usize = 255;
/// The most files one archive adds.
pub const MAX_ARCHIVE_ENTRIES: u64 = 1_000_000;
/// The most directories one archive adds, its root included (listed or made for the paths of
/// its entries: a directory costs more memory than a file while the archive is read).
pub const MAX_ARCHIVE_DIRECTORIES: usize = 100_000;
/// The largest extension header (a GNU long name, a PAX record set) read.
const MAX_EXTENSION: u64 = 64 << 10;

/// An entry of a directory being built: a file's, or a made directory's, CID and
/// cumulative size; or a directory still open (its index among the directories).
enum Child {
    Done(Cid, u64),
    Open(usize),
}

/// A directory being built: where it is (its parent's index and its name), how deep, and
/// its entries by name.
struct Dir {
    parent: usize,
    name: String,
    depth: usize,
    entries: std::collections::BTreeMap<String, Child>,
    /// Helia's estimate of its block as it stands ([`MAX_FLAT_DIRECTORY`]), and whether it
    /// ever passed the limit: Helia shards a directory then, and for good.
    estimate: usize,
    sharded: bool,
    /// Whether its parent's estimate counts it: a directory the archive listed, until
    /// something is added in it (Helia counts an entry while it knows its CID: a listed
    /// directory's is the empty one's; one with entries has none until the end).
    counted: bool,
}

/// The bytes Helia's estimate of a directory's block counts for an entry named `name`: the
/// name's, and a CID's (36: CIDv1, SHA2-256).
fn link_estimate(name: &str) -> usize {
    name.len() + 36
}

/// `path` as an error shows it: at most 256 characters.
fn shown(path: &[u8]) -> String {
    let text = String::from_utf8_lossy(path);
    match text.char_indices().nth(256) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.into_owned(),
    }
}

/// Reads the tar archive `source` into UnixFS files and directories, handing their blocks to
/// `keep` (see [`add_archive`]). Extension headers (GNU long names, PAX records) are read
/// here, each bounded, not by tar's reader, which takes any size.
fn write_tree(
    source: impl Read,
    progress: &impl Fn(u64),
    keep: &mut impl FnMut(Vec<unixfs::Block>) -> Result<(), IpfsError>,
) -> Result<AddedTree, IpfsError> {
    let root = Dir {
        parent: 0,
        name: String::new(),
        depth: 0,
        entries: Default::default(),
        estimate: 0,
        sharded: false,
        counted: false,
    };
    let mut dirs = vec![root];
    let (mut files, mut read) = (0u64, 0u64);
    // The path the last extension header gave the next entry.
    let mut long_path: Option<Vec<u8>> = None;
    let mut archive = tar::Archive::new(Ended { inner: source, ended: false });
    let entries = archive.entries().map_err(IpfsError::NotAnArchive)?.raw(true);
    for entry in entries {
        let mut entry = entry.map_err(IpfsError::NotAnArchive)?;
        let kind = entry.header().entry_type();
        if kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions()
        {
            let size = entry.size();
            let extension = |why: &str| IpfsError::Archive {
                path: "(an extension header)".to_owned(),
                why: why.to_owned(),
            };
            if size > MAX_EXTENSION {
                return Err(extension(&format!("{size} bytes, over the {MAX_EXTENSION} read")));
            }
            let mut data = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut data).map_err(IpfsError::NotAnArchive)?;
            if data.len() as u64 != size {
                return Err(extension("the archive ends inside it"));
            }
            if kind.is_gnu_longname() {
                let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                data.truncate(end);
                long_path = Some(data);
            } else if kind.is_pax_local_extensions() {
                for record in tar::PaxExtensions::new(&data) {
                    let record = record.map_err(IpfsError::NotAnArchive)?;
                    match record.key_bytes() {
                        b"path" => long_path = Some(record.value_bytes().to_vec()),
                        // A sparse file's map, which tar's reader would take as its bytes.
                        key if key.starts_with(b"GNU.sparse.") => {
                            return Err(extension("a sparse file is not read"));
                        }
                        // tar's reader would take it over the header's: refused rather than
                        // read otherwise than tar reads it (only files of 8 GiB need it).
                        b"size" => return Err(extension("a PAX size is not read")),
                        _ => {}
                    }
                }
            }
            // A global header, or a long link name (of a link, which is refused): nothing.
            continue;
        }
        let raw = long_path.take().unwrap_or_else(|| entry.header().path_bytes().into_owned());
        let refuse = |why: &str| IpfsError::Archive { path: shown(&raw), why: why.to_owned() };
        if raw.len() > MAX_ARCHIVE_PATH {
            return Err(refuse(&format!("a path over {MAX_ARCHIVE_PATH} bytes")));
        }
        let text = std::str::from_utf8(&raw).map_err(|_| refuse("the name is not UTF-8"))?;
        let is_dir = match kind {
            tar::EntryType::Directory => true,
            // Old (v7) archives mark a directory only by the slash that ends its name.
            tar::EntryType::Regular if text.ends_with('/') && entry.size() == 0 => true,
            tar::EntryType::Regular | tar::EntryType::Continuous => false,
            tar::EntryType::Symlink | tar::EntryType::Link => {
                return Err(refuse("a link: links are not added (add what it names)"));
            }
            _ => return Err(refuse("not a regular file nor a directory")),
        };
        let mut names = Vec::new();
        for name in text.split('/') {
            match name {
                "" | "." => {}
                ".." => return Err(refuse("a path with `..` leaves the directory")),
                name if name.len() > MAX_ARCHIVE_NAME => {
                    return Err(refuse(&format!("a name over {MAX_ARCHIVE_NAME} bytes")));
                }
                name => names.push(name),
            }
        }
        let Some((last, way)) = names.split_last() else {
            if is_dir {
                continue; // the root itself
            }
            return Err(refuse("a file with no name"));
        };
        // Every directory on the way, made if the archive did not list it first; each now
        // has an entry, and its parent's estimate no longer counts it.
        let mut parent = 0;
        for name in way {
            let dir = match dirs[parent].entries.get(*name) {
                Some(Child::Open(dir)) => *dir,
                Some(Child::Done(..)) => {
                    return Err(refuse("a file's name is used as a directory"));
                }
                None => open_dir(&mut dirs, parent, name, false).map_err(|why| refuse(&why))?,
            };
            if std::mem::take(&mut dirs[dir].counted) {
                dirs[parent].estimate -= link_estimate(name);
            }
            parent = dir;
        }
        match (dirs[parent].entries.get(*last), is_dir) {
            // Listed again (after a file in it made it): the same directory.
            (Some(Child::Open(_)), true) => continue,
            (None, true) => {
                open_dir(&mut dirs, parent, last, true).map_err(|why| refuse(&why))?;
                continue;
            }
            (Some(Child::Done(..)), true) => {
                return Err(refuse("a file's name is used as a directory"));
            }
            (Some(_), false) => return Err(refuse("the name is in its directory twice")),
            (None, false) => {}
        }
        if files >= MAX_ARCHIVE_ENTRIES {
            return Err(refuse(&format!("over {MAX_ARCHIVE_ENTRIES} files in one archive")));
        }
        let size = entry.size();
        let before = read;
        let mut cumulative = 0u64;
        let mut counted = |blocks: Vec<unixfs::Block>| {
            cumulative += blocks.iter().map(|b| b.data.len() as u64).sum::<u64>();
            keep(blocks)
        };
        let added = write_file(&mut entry, None, &|n| progress(before + n), &mut counted)?;
        if added.read != size {
            return Err(refuse("the archive ends inside the file"));
        }
        read += added.read;
        files += 1;
        dirs[parent].entries.insert((*last).to_owned(), Child::Done(added.cid, cumulative));
        grow(&mut dirs[parent], last);
    }
    // An archive ends with its end marker, which tar reads without reading past: one that
    // ends where an entry could start was cut short (a sender that failed on its way), not
    // a smaller directory.
    if long_path.is_some() || archive.into_inner().ended {
        return Err(IpfsError::NotAnArchive(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "it ends without its end marker: cut short",
        )));
    }
    // The deepest directories first: each is linked into its parent once made.
    let mut order: Vec<usize> = (0..dirs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(dirs[i].depth));
    let directories = dirs.len() as u64;
    for i in order {
        let entries = std::mem::take(&mut dirs[i].entries);
        let mut children = Vec::with_capacity(entries.len());
        for (name, child) in entries {
            let Child::Done(cid, size) = child else {
                unreachable!("a deeper directory is made first")
            };
            children.push(unixfs::PbLink { cid, name: Some(name), size: Some(size) });
        }
        let made = if dirs[i].sharded {
            let (blocks, size) = unixfs::sharded_directory(children)
                .map_err(|e| IpfsError::Archive { path: dir_path(&dirs, i), why: e.to_string() })?;
            let cid = blocks.last().expect("a root").cid;
            keep(blocks)?;
            (cid, size)
        } else {
            let cumulative = children.iter().filter_map(|l| l.size).sum::<u64>();
            let block = unixfs::directory(children);
            let made = (block.cid, cumulative + block.data.len() as u64);
            keep(vec![block])?;
            made
        };
        if i == 0 {
            return Ok(AddedTree { cid: made.0, files, directories, read, stored: made.1 });
        }
        let (parent, name) = (dirs[i].parent, dirs[i].name.clone());
        dirs[parent].entries.insert(name, Child::Done(made.0, made.1));
    }
    unreachable!("the root is made last")
}

/// Opens the directory `name` in `dirs[parent]`, `listed` by the archive (else made for an
/// entry in it); its index. An error past [`MAX_ARCHIVE_DIRECTORIES`].
fn open_dir(dirs: &mut Vec<Dir>, parent: usize, name: &str, listed: bool) -> Result<usize, String> {
    if dirs.len() >= MAX_ARCHIVE_DIRECTORIES {
        return Err(format!("over {MAX_ARCHIVE_DIRECTORIES} directories in one archive"));
    }
    let depth = dirs[parent].depth + 1;
    let dir = dirs.len();
    dirs.push(Dir {
        parent,
        name: name.to_owned(),
        depth,
        entries: Default::default(),
        estimate: 0,
        sharded: false,
        counted: listed,
    });
    dirs[parent].entries.insert(name.to_owned(), Child::Open(dir));
    if listed {
        grow(&mut dirs[parent], name);
    }
    Ok(dir)
}

/// Counts an entry `name` put in `dir` in its estimate: past [`MAX_FLAT_DIRECTORY`], Helia
/// shards it, and for good (it checks after every entry it adds).
fn grow(dir: &mut Dir, name: &str) {
    dir.estimate += link_estimate(name);
    dir.sharded |= dir.estimate > MAX_FLAT_DIRECTORY;
}

/// The path of `dirs[i]`, as an error shows it ("." for the root).
fn dir_path(dirs: &[Dir], mut i: usize) -> String {
    let mut names = Vec::new();
    while i != 0 {
        names.push(dirs[i].name.as_str());
        i = dirs[i].parent;
    }
    names.reverse();
    if names.is_empty() { ".".to_owned() } else { shown(names.join("/").as_bytes()) }
}

/// Chunks `source` into a UnixFS file, sealed with `account`'s key when given, handing its
/// blocks to `keep` as they are made; `progress` hears the bytes read so far.
fn write_file(
    source: &mut impl Read,
    account: Option<&Keypair>,
    progress: &impl Fn(u64),
    keep: &mut impl FnMut(Vec<unixfs::Block>) -> Result<(), IpfsError>,
) -> Result<Added, IpfsError> {
    let layout = if account.is_some() { ENCRYPTED_LAYOUT } else { Layout::default() };
    let mut writer = FileWriter::new(layout);
    let mut sealer = account.map(|a| Sealer::new(a, layout.chunk as u32));
    if let Some(sealer) = &sealer {
        keep(writer.push_leaf(&sealer.header().encode()))?;
    }
    let mut read = 0u64;
    let mut chunk = vec![0u8; layout.chunk];
    let mut ahead = vec![0u8; layout.chunk];
    let mut n = read_full(source, &mut chunk)?;
    loop {
        read += n as u64;
        progress(read);
        // One chunk ahead, to know which is last (an encrypted file seals its end).
        let next = if n == chunk.len() { read_full(source, &mut ahead)? } else { 0 };
        let last = next == 0;
        match &mut sealer {
            Some(sealer) => keep(writer.push_leaf(&sealer.seal(&chunk[..n], last)))?,
            // Only an empty file has an empty chunk: its one (empty) block.
            None => keep(writer.push_leaf(&chunk[..n]))?,
        }
        if last {
            break;
        }
        std::mem::swap(&mut chunk, &mut ahead);
        n = next;
    }
    let (root, stored, blocks) = writer.finish();
    keep(blocks)?;
    Ok(Added { cid: root, stored, read })
}

/// A file's leaves in order, each fetched from this node's store or from any peer and
/// checked against its CID; a few blocks are asked for ahead.
struct Leaves<'a> {
    node: &'a Node,
    store: BlockStore,
    reader: FileReader,
    pending: HashMap<Cid, oneshot::Receiver<Fetched>>,
    prefer: Option<dkvs_net::libp2p::PeerId>,
    timeout: Duration,
    keep: bool,
    /// How many blocks ahead are asked for ([`WINDOW`]; one while the blocks a read needs
    /// are not known yet, before a skip).
    window: usize,
    /// No block that starts at or past this offset of the file is asked for ahead.
    end: u64,
    /// Blocks read already, taken first; with `remember`, every block read joins them.
    known: Known,
    remember: bool,
}

/// Whether the network can give the block `cid`: its hash is SHA2-256, the one blocks are
/// kept and checked by (an identity CID carries its block; other hashes are refused,
/// [`Leaves::block`]).
fn fetchable(cid: &Cid) -> bool {
    cid.hash().code() == SHA2_256
}

impl<'a> Leaves<'a> {
    async fn new(
        node: &'a Node,
        root: Cid,
        timeout: Duration,
        known: Known,
    ) -> Result<Leaves<'a>, IpfsError> {
        // A root of another codec (dag-cbor, dag-json) is no file, whatever its block holds:
        // said at once, not after the block's wait.
        if ![unixfs::DAG_PB, unixfs::RAW].contains(&root.codec()) {
            return Err(UnixfsError::UnsupportedCodec(root.codec()).into());
        }
        let store = store_of(node).await?;
        if fetchable(&root) && !store.has(&root) && !known.0.contains_key(&root) {
            // Beside asking connected peers: the providers the IPFS DHT knows are dialed, and
            // asked as they connect.
            node.with_extension(move |ipfs: &mut Ipfs, _| {
                ipfs.find_providers(root, oneshot::channel().0)
            })
            .await?;
        }
        Ok(Leaves {
            node,
            store,
            reader: FileReader::new(root),
            pending: HashMap::new(),
            prefer: None,
            timeout,
            keep: false,
            window: WINDOW,
            end: u64::MAX,
            known,
            remember: false,
        })
    }

    /// Reads the file's bytes from `from` to `end` only: passes over those before
    /// ([`FileReader::skip_to`]), asks for none ahead past `end`, and withdraws what was asked
    /// for ahead outside them (the exchange cancels wants nobody waits for).
    fn part(&mut self, from: u64, end: u64) {
        self.reader.skip_to(from);
        (self.window, self.end) = (WINDOW, end);
        let upcoming = self.reader.upcoming_before(WINDOW, end);
        self.pending.retain(|cid, _| upcoming.contains(cid));
    }

    /// The next leaf's bytes, whether it is the last, and its offset in the file; `None`
    /// after the last.
    async fn next(&mut self) -> Result<Option<(Vec<u8>, bool, u64)>, IpfsError> {
        while let Some(next) = self.reader.next_needed() {
            self.ask_ahead().await?;
            let Some(block) = self.block(next).await? else { continue };
            let at = self.reader.position();
            if let Some(leaf) = self.reader.feed(&next, &block)? {
                return Ok(Some((leaf, self.reader.next_needed().is_none(), at)));
            }
        }
        self.reader.finish()?;
        Ok(None)
    }

    /// Wants the blocks the reader will need soon that are neither here nor asked for (nor
    /// under a hash no block is kept by: [`Leaves::block`] answers those at once).
    async fn ask_ahead(&mut self) -> Result<(), IpfsError> {
        let upcoming = self.reader.upcoming_before(self.window, self.end);
        let missing: Vec<Cid> = upcoming.into_iter().filter(|cid| self.to_ask(cid)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.ask_all(missing).await
    }

    /// The block `cid` of a walk through a DAG, the blocks `later` to come after it: asked for
    /// with the next of them, in batches of half the window, each in one message (a message
    /// each for small blocks goes past what a peer admits a second).
    async fn fetch_walking(
        &mut self,
        cid: Cid,
        later: impl Iterator<Item = Cid>,
    ) -> Result<Arc<[u8]>, IpfsError> {
        if self.pending.len() <= WINDOW / 2 {
            self.ask_all(std::iter::once(cid).chain(later.take(WINDOW - 1)).collect()).await?;
        }
        self.fetch(cid).await
    }

    /// Asks the network for `cids` (those to ask for: [`Leaves::to_ask`]) in one message.
    async fn ask_all(&mut self, mut cids: Vec<Cid>) -> Result<(), IpfsError> {
        cids.retain(|cid| self.to_ask(cid));
        if cids.is_empty() {
            return Ok(());
        }
        let prefer = self.prefer;
        let asked =
            self.node.with_extension(move |ipfs: &mut Ipfs, _| ipfs.want_all(cids, prefer)).await?;
        self.pending.extend(asked);
        Ok(())
    }

    /// Whether `cid` is a block to ask the network for: one it can give ([`fetchable`]),
    /// neither kept here nor asked for already.
    fn to_ask(&self, cid: &Cid) -> bool {
        fetchable(cid)
            && !self.pending.contains_key(cid)
            && !self.known.0.contains_key(cid)
            && !self.store.has(cid)
    }

    /// The block `cid`, from here or the network, outside the file's walk.
    async fn fetch(&mut self, cid: Cid) -> Result<Arc<[u8]>, IpfsError> {
        loop {
            self.ask_all(vec![cid]).await?;
            if let Some(block) = self.block(cid).await? {
                return Ok(block);
            }
        }
    }

    /// The block `cid`: from the network if it was asked for (then kept here), else from
    /// the store (`None` if it went meanwhile: it is asked for on the next round).
    async fn block(&mut self, cid: Cid) -> Result<Option<Arc<[u8]>>, IpfsError> {
        // Taken out once used (a read uses each block once): a long transfer holds none of
        // them; a stat, which hands them on, keeps them.
        let known = match self.remember {
            true => self.known.0.get(&cid).cloned(),
            false => self.known.0.remove(&cid),
        };
        if known.is_some() {
            return Ok(known);
        }
        let block = self.obtain(cid).await?;
        if self.remember
            && let Some(block) = &block
        {
            self.known.0.insert(cid, block.clone());
        }
        Ok(block)
    }

    /// [`Leaves::block`], not known already.
    async fn obtain(&mut self, cid: Cid) -> Result<Option<Arc<[u8]>>, IpfsError> {
        match cid.hash().code() {
            SHA2_256 => {}
            // The block is the CID's own digest (IPFS inlines tiny blocks so).
            IDENTITY => return Ok(Some(Arc::from(cid.hash().digest()))),
            // No peer's answer could be checked or kept: said now, not after the timeout.
            _ => return Err(BlockError::UnsupportedHash(cid).into()),
        }
        let store = self.store.clone();
        let keep = self.keep;
        let Some(rx) = self.pending.remove(&cid) else {
            // A block kept here as a read's cache is written again, synced, when it is kept
            // (a pin): `put` does that for a block not yet on disk for good.
            let local = tokio::task::spawn_blocking(move || {
                let block = store.get(&cid)?;
                if keep && let Some(block) = &block {
                    store.put(&cid, block)?;
                }
                Ok::<_, BlockError>(block)
            })
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
            return match local {
                Ok(block) => Ok(block),
                Err(BlockError::Corrupt(_)) => Ok(None),
                Err(e) => Err(e.into()),
            };
        };
        let secs = self.timeout.as_secs();
        let fetched = tokio::time::timeout(self.timeout, rx)
            .await
            .map_err(|_| IpfsError::NotFound { cid, secs })?
            .map_err(|_| NetError::Shutdown)?;
        self.prefer = Some(fetched.peer);
        let data = fetched.data.clone();
        let kept = tokio::task::spawn_blocking(move || {
            if keep { store.put(&cid, &data) } else { store.put_cached(&cid, &data) }
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        match kept {
            Err(e) if self.keep => return Err(e.into()),
            Err(e) => tracing::debug!(%cid, "fetched block not kept: {e}"),
            Ok(_) => {}
        }
        Ok(Some(fetched.data))
    }
}

/// Fetches the file `root` (from this node's store, else from any peer), checks every block
/// against its CID, decrypts it if it is encrypted (unless `options.raw`), and writes it, or
/// the part `options.range` names, to `out`. Fetched blocks are kept as a cache
/// ([`BlockStore::put_cached`]). `progress` hears the bytes written so far.
pub async fn get<W: AsyncWrite + Unpin>(
    node: &Node,
    root: Cid,
    out: &mut W,
    options: &GetOptions,
    progress: impl Fn(u64),
) -> Result<Got, IpfsError> {
    let std::ops::Range { start, end } = options.range.clone().unwrap_or(0..u64::MAX);
    if start >= end {
        return Ok(Got { written: 0, decrypted: false });
    }
    let mut leaves = Leaves::new(node, root, options.block_timeout, options.known.clone()).await?;
    leaves.keep = options.keep;
    // Bytes as stored are written from where they are; a plain file's too, once its first
    // leaf says it is one: till then, nothing past that leaf is asked for.
    if options.raw {
        leaves.part(start, end);
    } else if (start, end) != (0, u64::MAX) {
        leaves.window = 1;
    }
    let mut opener = None;
    let mut first = !options.raw;
    let mut written = 0u64;
    while let Some((leaf, last, at)) = leaves.next().await? {
        let (bytes, at) = match &mut opener {
            None if first => {
                first = false;
                match Header::parse(&leaf)? {
                    Some(header) => {
                        let key = open_key(node, &header, root, options.account.as_ref()).await?;
                        // The leaves of the chunks the part falls in.
                        let (first, stored) = header.stored_part(leaf.len() as u64, start..end);
                        leaves.part(stored.start, stored.end);
                        opener = Some(Opener::new(key, &header).from_chunk(first));
                        continue;
                    }
                    None => {
                        leaves.part(start, end);
                        (leaf, at)
                    }
                }
            }
            None => (leaf, at),
            Some(opener) => {
                let at = opener.position();
                (opener.open(&leaf, last)?, at)
            }
        };
        let len = bytes.len() as u64;
        let (lo, hi) = (start.saturating_sub(at).min(len), end.saturating_sub(at).min(len));
        out.write_all(&bytes[lo as usize..hi as usize]).await?;
        written += hi - lo;
        progress(written);
        // The part ends before the file: the rest is not fetched.
        if at + len >= end && !last {
            out.flush().await?;
            return Ok(Got { written, decrypted: opener.is_some() });
        }
    }
    if let Some(opener) = &opener {
        opener.finish()?;
    }
    out.flush().await?;
    Ok(Got { written, decrypted: opener.is_some() })
}

/// What a [`get`] of a file would write, found from its first blocks; or a directory's entries.
#[derive(Debug, Clone)]
pub struct Stat {
    /// The bytes a whole get writes: the size the root records, or, for a file the get
    /// decrypts, the plaintext's (0 for a directory).
    pub size: u64,
    /// The first of those bytes (its first leaf's, at most a chunk): to tell the file's type.
    pub head: Vec<u8>,
    /// The root is a directory (a get of it fails).
    pub directory: Option<Directory>,
    /// The blocks read: a get right after it takes them ([`GetOptions::known`]).
    pub known: Known,
}

/// A directory [`stat`] found.
#[derive(Debug, Clone)]
pub enum Directory {
    /// A plain one's entries, in its block's order (by name, as writers sort them).
    Plain(Vec<unixfs::PbLink>),
    /// A sharded one: its entries are read by name ([`resolve`]), or all of them ([`list`]).
    Sharded,
}

/// What a [`get`] of `root` with `options` would write (`options.range` aside), from the root,
/// the first leaf and, for a file it decrypts, the first chunk; fails as the get would on them
/// (a file encrypted for another account, a block no peer has). A directory is told by its
/// entries, or, sharded, by its root node alone ([`Directory`]).
pub async fn stat(node: &Node, root: Cid, options: &GetOptions) -> Result<Stat, IpfsError> {
    let mut leaves = Leaves::new(node, root, options.block_timeout, options.known.clone()).await?;
    // The blocks it reads, one at a time: nothing the get after it may not need.
    (leaves.window, leaves.remember) = (1, true);
    let stat = |size, head, directory, leaves: Leaves<'_>| Stat {
        size,
        head,
        directory,
        known: leaves.known,
    };
    if root.codec() == unixfs::DAG_PB {
        let block = leaves.fetch(root).await?;
        match unixfs::kind(&root, &block)? {
            unixfs::Kind::Directory => {
                let entries = Directory::Plain(unixfs::entries(&block)?);
                return Ok(stat(0, Vec::new(), Some(entries), leaves));
            }
            unixfs::Kind::ShardedDirectory => {
                unixfs::shard(&block)?;
                return Ok(stat(0, Vec::new(), Some(Directory::Sharded), leaves));
            }
            _ => {}
        }
    }
    let Some((first, ..)) = leaves.next().await? else {
        return Ok(stat(0, Vec::new(), None, leaves));
    };
    let stored = leaves.reader.size().unwrap_or(0);
    let header = if options.raw { None } else { Header::parse(&first)? };
    let Some(header) = header else { return Ok(stat(stored, first, None, leaves)) };
    let key = open_key(node, &header, root, options.account.as_ref()).await?;
    let size = header.plain_size(first.len() as u64, stored);
    let mut opener = Opener::new(key, &header);
    let head = match leaves.next().await? {
        Some((leaf, last, _)) => opener.open(&leaf, last)?,
        // The header alone: no chunk, not even the empty one every file ends with.
        None => return Err(CryptError::Truncated.into()),
    };
    Ok(stat(size, head, None, leaves))
}

/// The CID at `path` below `root` (names of entries in UnixFS directories, as a gateway's
/// `/ipfs/<root>/<path>`), fetching the directories on the way.
pub async fn resolve(
    node: &Node,
    root: Cid,
    path: &[&str],
    timeout: Duration,
) -> Result<Cid, IpfsError> {
    let mut leaves = Leaves::new(node, root, timeout, Known::default()).await?;
    let mut cid = root;
    for (i, name) in path.iter().enumerate() {
        // A raw block is a file's bytes (a small file's whole): not dag-pb, so said here.
        if cid.codec() == unixfs::RAW {
            return Err(unixfs::UnixfsError::NotADirectory { what: "file" }.into());
        }
        let block = leaves.fetch(cid).await?;
        let child = match unixfs::resolve_child(&block, name) {
            Err(UnixfsError::ShardedDirectory) => shard_child(&mut leaves, block, name).await?,
            found => found?,
        };
        cid = child.ok_or_else(|| IpfsError::NoSuchPath { root, path: path[..=i].join("/") })?;
    }
    Ok(cid)
}

/// The most nodes of a sharded directory that [`list`] reads, and the most bytes of them: a
/// HAMT of 256 takes about one node for each 10 entries (most of its nodes are small ones at
/// the bottom: 10,000 entries take about 1,000), so about 650,000 entries, unless the bytes
/// bound first (names of about 50 bytes). Its entries are read by name whatever their number
/// ([`resolve`]).
pub const MAX_SHARD_NODES: usize = 65_536;
/// See [`MAX_SHARD_NODES`].
pub const MAX_SHARD_BYTES: usize = 32 << 20;

/// Every entry of the directory `root` by name: a plain one's block, a sharded one's nodes
/// (at most [`MAX_SHARD_NODES`] and [`MAX_SHARD_BYTES`] of them: past that,
/// [`IpfsError::TooLargeToList`]), asked for [`WINDOW`] at a time. `timeout` is how long
/// any one node is waited for.
pub async fn list(
    node: &Node,
    root: Cid,
    timeout: Duration,
) -> Result<Vec<unixfs::PbLink>, IpfsError> {
    let mut leaves = Leaves::new(node, root, timeout, Known::default()).await?;
    let block = leaves.fetch(root).await?;
    let mut entries = match unixfs::entries(&block) {
        Err(UnixfsError::ShardedDirectory) => shard_entries(&mut leaves, root, block).await?,
        plain => plain?,
    };
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// The entry `name` of the sharded directory whose root node is `block`: the nodes its
/// name's hash leads to, one per level.
async fn shard_child(
    leaves: &mut Leaves<'_>,
    block: Arc<[u8]>,
    name: &str,
) -> Result<Option<Cid>, IpfsError> {
    let mut node = unixfs::shard(&block)?;
    let fanout = node.fanout();
    // Each level takes more of the hash: the levels end where it does (`Shard::slot`).
    for level in 0.. {
        match node.slot(name, level)? {
            unixfs::Slot::Entry(cid) => return Ok(Some(cid)),
            unixfs::Slot::Empty => return Ok(None),
            unixfs::Slot::Shard(cid) => node = unixfs::shard(&leaves.fetch(cid).await?)?,
        }
        // A node of another fanout would be read by other bits of the hash.
        if node.fanout() != fanout {
            let what =
                format!("HAMT shard: a node of fanout {} under one of {fanout}", node.fanout());
            return Err(UnixfsError::Malformed(what).into());
        }
    }
    unreachable!("a slot past the hash's bits is an error")
}

/// Every entry of the sharded directory `root`, whose root node is `block`: its nodes, each
/// once (every node of the same fanout as the root), at most [`MAX_SHARD_NODES`] and
/// [`MAX_SHARD_BYTES`].
async fn shard_entries(
    leaves: &mut Leaves<'_>,
    root: Cid,
    block: Arc<[u8]>,
) -> Result<Vec<unixfs::PbLink>, IpfsError> {
    let first = unixfs::shard(&block)?;
    let fanout = first.fanout();
    let (mut entries, mut next) = first.split();
    let mut next: std::collections::VecDeque<Cid> = next.drain(..).collect();
    let mut seen = std::collections::HashSet::from([root]);
    let mut bytes = block.len();
    while let Some(cid) = next.pop_front() {
        if !seen.insert(cid) {
            continue;
        }
        if seen.len() > MAX_SHARD_NODES || bytes > MAX_SHARD_BYTES {
            return Err(IpfsError::TooLargeToList {
                root,
                nodes: MAX_SHARD_NODES,
                bytes: MAX_SHARD_BYTES,
            });
        }
        let later = next.iter().filter(|c| !seen.contains(*c)).copied();
        let block = leaves.fetch_walking(cid, later).await?;
        bytes += block.len();
        let node = unixfs::shard(&block)?;
        if node.fanout() != fanout {
            return Err(UnixfsError::Malformed(format!(
                "HAMT shard: a node of fanout {} under one of {fanout}",
                node.fanout()
            ))
            .into());
        }
        let (more, deeper) = node.split();
        entries.extend(more);
        next.extend(deeper);
    }
    Ok(entries)
}

/// Fetches every block under `root` that is not here, keeps them (synced) and pins it:
/// garbage collection keeps it from then on. `root` is a UnixFS file or directory (plain or
/// sharded, its entries pinned with it): its blocks are walked through their links, raw and
/// dag-pb, [`WINDOW`] asked for ahead, each checked against its CID. Fails when a block
/// cannot be kept (the store is full), no peer gives it, or a link is of another codec. The
/// bytes of its distinct blocks (files, directories and the nodes above a file's leaves).
pub async fn pin(node: &Node, root: Cid, block_timeout: Duration) -> Result<u64, IpfsError> {
    let store = store_of(node).await?;
    let _writing = store.writing().await;
    let mut leaves = Leaves::new(node, root, block_timeout, Known::default()).await?;
    leaves.keep = true;
    let mut next = std::collections::VecDeque::from([root]);
    let mut seen = std::collections::HashSet::from([root]);
    let mut bytes = 0;
    while let Some(cid) = next.pop_front() {
        let block =
            leaves.fetch_walking(cid, next.iter().copied()).await.map_err(|e| no_room(e, bytes))?;
        bytes += block.len() as u64;
        for link in unixfs::links(&cid, &block) {
            if ![unixfs::DAG_PB, unixfs::RAW].contains(&link.codec()) {
                return Err(UnixfsError::UnsupportedCodec(link.codec()).into());
            }
            if seen.insert(link) {
                next.push_back(link);
            }
        }
    }
    tokio::task::spawn_blocking(move || store.pin(&root))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
    Ok(bytes)
}

/// The providers of `root` the IPFS DHT knows (each is dialed as it is found).
pub async fn providers(node: &Node, root: Cid) -> Result<Vec<dkvs_net::libp2p::PeerId>, IpfsError> {
    let (tx, rx) = oneshot::channel();
    node.with_extension(move |ipfs: &mut Ipfs, _| ipfs.find_providers(root, tx)).await?;
    Ok(rx.await.map_err(|_| NetError::Shutdown)?)
}

/// Where the key of `root`, owned by `owner`, is kept for `recipient`: a record under the
/// owner's keys whose name is a hash of the file and the recipient (a name does not list
/// who shares what with whom, though anyone who knows a CID and an account can check for it).
pub fn share_key(owner: &AccountId, root: &Cid, recipient: &AccountId) -> Key {
    let mut hash = Sha256::new();
    hash.update(b"dkvs-ipfs-share-v1");
    hash.update(root.hash().to_bytes());
    hash.update(recipient.public_key().as_bytes());
    let name = hex::encode(&hash.finalize()[..16]);
    Key::new(format!("/{owner}/ipfs/share/{name}")).expect("an account scope and hex make a key")
}

/// The key of an encrypted file for `account`: its own file, or one shared with it.
async fn open_key(
    node: &Node,
    header: &Header,
    root: Cid,
    account: Option<&Keypair>,
) -> Result<SymmetricKey, IpfsError> {
    let refused = || IpfsError::Encrypted { cid: root, owner: header.owner.to_string() };
    let Some(account) = account else { return Err(refused()) };
    if account.account_id() == header.owner {
        return Ok(header.owner_key(account));
    }
    let key = share_key(&header.owner, &root, &account.account_id());
    let found = node.get(&key).await.map_err(|e| IpfsError::Share(e.to_string()))?;
    match found.record {
        Some(record) if !record.is_tombstone() => {
            account.open_symmetric_key(record.value()).map_err(|_| refused())
        }
        _ => Err(refused()),
    }
}

/// The header of the encrypted file `root` (its first leaf).
async fn header_of(node: &Node, root: Cid, timeout: Duration) -> Result<Header, IpfsError> {
    let mut leaves = Leaves::new(node, root, timeout, Known::default()).await?;
    let first = leaves.next().await?.map(|(leaf, ..)| leaf).unwrap_or_default();
    Header::parse(&first)?.ok_or(IpfsError::NotEncrypted(root))
}

/// Shares the encrypted file `root` of `owner`'s with `recipient`: its key, sealed to the
/// recipient, is put as a record under the owner's keys ([`share_key`]), living `ttl_ms`
/// (a node keeps it alive past that if told to). The recipient's [`get`] finds it.
pub async fn share(
    node: &Node,
    owner: &Keypair,
    root: Cid,
    recipient: &AccountId,
    ttl_ms: u64,
) -> Result<Key, IpfsError> {
    let header = header_of(node, root, GetOptions::default().block_timeout).await?;
    if header.owner != owner.account_id() {
        return Err(IpfsError::NotOwner { cid: root, owner: header.owner.to_string() });
    }
    // The header is anyone's to copy: only a file whose every chunk opens with the key its
    // header names is the owner's, and only then is that key given away.
    let options = GetOptions { account: Some(owner.clone()), ..GetOptions::default() };
    get(node, root, &mut tokio::io::sink(), &options, |_| {}).await?;
    let sealed = header.owner_key(owner).seal_to(recipient.public_key());
    let key = share_key(&header.owner, &root, recipient);
    let share_error = |e: &dyn std::fmt::Display| IpfsError::Share(e.to_string());
    let seq = node.get_every(&key).await.map_err(|e| share_error(&e))?.highest_seq + 1;
    let record =
        Draft::new(key.clone(), sealed, seq, ttl_ms).sign(owner).map_err(|e| share_error(&e))?;
    node.put(record).await.map_err(|e| share_error(&e))?;
    Ok(key)
}

/// The blocks of a pinned DAG a garbage collection keeps: the links a block has.
pub fn links(cid: &Cid, data: &[u8]) -> Vec<Cid> {
    unixfs::links(cid, data)
}
