//! UnixFS, the IPFS file format, over dag-pb: a writer that makes the same blocks (and so the
//! same CIDs) as Kubo and Helia, and a reader that walks a file's tree one block at a time.
//!
//! A file is a tree. Its leaves hold the bytes: raw blocks (codec 0x55, Helia's default) or
//! dag-pb nodes whose UnixFS `Data` carries the bytes inline (Kubo's default). Its inner nodes
//! are dag-pb nodes with a UnixFS `Data` of type File that records the file size under them and,
//! for each link, the file bytes under that link (`blocksizes`). Each link's `Tsize` is the
//! encoded size of the whole subtree. A file of one leaf is that leaf alone.
//!
//! The tree is the "balanced" layout both implementations use: leaves are grouped
//! `max_links` at a time under a node, those nodes `max_links` at a time under a node, and so
//! on until one node is left. The writer keeps only the pending links of each level, so its
//! memory does not grow with the file; the reader keeps one node's links per level, bounded by
//! [`MAX_DEPTH`] levels and [`MAX_PENDING`] links in all.
//!
//! Nothing here does IO: the writer hands out [`Block`]s, the reader asks for CIDs and is fed
//! blocks whose hashes the caller has checked. Directories are read only as far as a gateway
//! path needs ([`resolve_child`], [`kind`]); sharded (HAMT) directories are not supported yet.

use std::collections::VecDeque;
use std::io::{self, Read};

use cid::Cid;
use prost::Message as _;

use crate::blockstore::{MAX_BLOCK, cid_of};

/// The multicodec of dag-pb blocks.
pub const DAG_PB: u64 = 0x70;
/// The multicodec of raw blocks.
pub const RAW: u64 = 0x55;
/// The most levels of nodes a [`FileReader`] descends, the root included. A balanced tree of
/// 174 links per node and 256 KiB leaves holds 10^36 bytes in 16 levels.
pub const MAX_DEPTH: usize = 32;
/// The most CIDs a [`FileReader`] holds waiting, over all levels: enough for a 2 MiB node full
/// of links (about 48 000), a few MiB of memory at most.
pub const MAX_PENDING: usize = 1 << 16;

/// Why a block could not be decoded or read as UnixFS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnixfsError {
    /// The bytes are not valid dag-pb or UnixFS; the text says where.
    #[error("malformed block: {0}")]
    Malformed(String),
    /// The block is over [`MAX_BLOCK`].
    #[error("a block of {len} bytes, over the {MAX_BLOCK}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The block is UnixFS, but not a file.
    #[error("{cid} is a UnixFS {what}, not a file")]
    NotAFile {
        /// The block.
        cid: Cid,
        /// What it is instead ("directory", "symlink", ...).
        what: &'static str,
    },
    /// The block is UnixFS, but not a directory.
    #[error("the block is a UnixFS {what}, not a directory")]
    NotADirectory {
        /// What it is instead ("file", "symlink", ...).
        what: &'static str,
    },
    /// The directory is a HAMT shard.
    #[error("sharded (HAMT) directories are not supported yet")]
    ShardedDirectory,
    /// The reader was fed a block other than the one it needs next.
    #[error("got block {got}, but the reader needs {wanted} next")]
    Unexpected {
        /// The block the reader needs.
        wanted: Cid,
        /// The block it was given.
        got: Cid,
    },
    /// The reader was fed a block after the file was complete.
    #[error("got block {got}, but the file is already complete")]
    Complete {
        /// The block it was given.
        got: Cid,
    },
    /// The reader was asked for the file's size before it was complete.
    #[error("the file is not complete: block {next} is still needed")]
    Incomplete {
        /// The next block needed.
        next: Cid,
    },
    /// The tree is deeper than [`MAX_DEPTH`].
    #[error("the file's tree is deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// The tree would make the reader hold more than [`MAX_PENDING`] CIDs.
    #[error("the file's tree needs {pending} CIDs held at once, over the {MAX_PENDING} limit")]
    TooManyLinks {
        /// How many it would hold.
        pending: usize,
    },
    /// A size recorded in the tree disagrees with the bytes under it.
    #[error("size mismatch: the tree says {expected} bytes, the blocks hold {got}")]
    SizeMismatch {
        /// The size the tree records.
        expected: u64,
        /// The size found.
        got: u64,
    },
    /// The CID's codec is neither dag-pb nor raw.
    #[error("codec {0:#x} is neither dag-pb (0x70) nor raw (0x55)")]
    UnsupportedCodec(u64),
}

// ---------------------------------------------------------------------------------------------
// dag-pb

/// A dag-pb node: links to other blocks, and opaque data (for UnixFS, an encoded [`Data`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PbNode {
    /// The links, in order (UnixFS files: in file order; directories: sorted by name).
    pub links: Vec<PbLink>,
    /// The data, if any.
    pub data: Option<Vec<u8>>,
}

/// A link of a dag-pb node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PbLink {
    /// The block linked to.
    pub cid: Cid,
    /// The link's name: a directory entry's name; empty in a file's node.
    pub name: Option<String>,
    /// The encoded size of everything under the link, the linked block included.
    pub size: Option<u64>,
}

/// Encodes `node` canonically, as the dag-pb spec says: every link (field 2) before the data
/// (field 1), each link's fields in the order Hash, Name, Tsize. Links are written in the
/// order given.
pub fn encode(node: &PbNode) -> Vec<u8> {
    let mut out = Vec::new();
    let mut link_bytes = Vec::new();
    for link in &node.links {
        link_bytes.clear();
        put_bytes(&mut link_bytes, 1, &link.cid.to_bytes());
        if let Some(name) = &link.name {
            put_bytes(&mut link_bytes, 2, name.as_bytes());
        }
        if let Some(size) = link.size {
            put_varint(&mut link_bytes, 3 << 3);
            put_varint(&mut link_bytes, size);
        }
        put_bytes(&mut out, 2, &link_bytes);
    }
    if let Some(data) = &node.data {
        put_bytes(&mut out, 1, data);
    }
    out
}

/// Decodes a dag-pb node. Fields are taken in any order, but only the spec's fields: an
/// unknown field or wire type, a repeated Data, Hash, Name or Tsize, a link without a Hash, an
/// invalid CID, a name that is not UTF-8, or a block over [`MAX_BLOCK`] is refused. The work is
/// linear in the input.
pub fn decode(bytes: &[u8]) -> Result<PbNode, UnixfsError> {
    if bytes.len() > MAX_BLOCK {
        return Err(UnixfsError::TooLarge { len: bytes.len() });
    }
    let mut node = PbNode::default();
    let mut r = Reader { bytes, pos: 0, what: "dag-pb PBNode" };
    while !r.is_empty() {
        let start = r.pos;
        match r.key()? {
            (1, WIRE_LEN) if node.data.is_none() => node.data = Some(r.bytes()?.to_vec()),
            (2, WIRE_LEN) => {
                let link = decode_link(r.bytes()?, node.links.len())?;
                node.links.push(link);
            }
            (field, wire) => return Err(r.unexpected(start, field, wire)),
        }
    }
    Ok(node)
}

fn decode_link(bytes: &[u8], index: usize) -> Result<PbLink, UnixfsError> {
    let malformed = |what: &str| UnixfsError::Malformed(format!("dag-pb link {index}: {what}"));
    let mut r = Reader { bytes, pos: 0, what: "dag-pb PBLink" };
    let (mut cid, mut name, mut size) = (None, None, None);
    while !r.is_empty() {
        let start = r.pos;
        match r.key()? {
            (1, WIRE_LEN) if cid.is_none() => {
                let raw = r.bytes()?;
                let parsed =
                    Cid::try_from(raw).map_err(|e| malformed(&format!("invalid CID: {e}")))?;
                if parsed.encoded_len() != raw.len() {
                    return Err(malformed("bytes after the CID"));
                }
                cid = Some(parsed);
            }
            (2, WIRE_LEN) if name.is_none() => {
                let text =
                    std::str::from_utf8(r.bytes()?).map_err(|_| malformed("name is not UTF-8"))?;
                name = Some(text.to_owned());
            }
            (3, WIRE_VARINT) if size.is_none() => size = Some(r.varint()?),
            (field, wire) => return Err(r.unexpected(start, field, wire)),
        }
    }
    let cid = cid.ok_or_else(|| malformed("no Hash"))?;
    Ok(PbLink { cid, name, size })
}

const WIRE_VARINT: u64 = 0;
const WIRE_LEN: u64 = 2;

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A cursor over protobuf bytes that names what it reads in its errors.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.pos == self.bytes.len()
    }

    fn malformed(&self, at: usize, problem: &str) -> UnixfsError {
        UnixfsError::Malformed(format!("{}: {problem} at byte {at}", self.what))
    }

    fn unexpected(&self, at: usize, field: u64, wire: u64) -> UnixfsError {
        self.malformed(at, &format!("unexpected or repeated field {field} (wire type {wire})"))
    }

    fn varint(&mut self) -> Result<u64, UnixfsError> {
        let start = self.pos;
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.bytes.get(self.pos) else {
                return Err(self.malformed(start, "truncated varint"));
            };
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err(self.malformed(start, "varint over 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(self.malformed(start, "varint over 64 bits"))
    }

    fn key(&mut self) -> Result<(u64, u64), UnixfsError> {
        let key = self.varint()?;
        Ok((key >> 3, key & 7))
    }

    fn bytes(&mut self) -> Result<&'a [u8], UnixfsError> {
        let start = self.pos;
        let len = self.varint()?;
        let left = self.bytes.len() - self.pos;
        match usize::try_from(len) {
            Ok(len) if len <= left => {
                self.pos += len;
                Ok(&self.bytes[self.pos - len..self.pos])
            }
            _ => {
                Err(self
                    .malformed(start, &format!("length {len} past the end ({left} bytes left)")))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// UnixFS Data

/// The UnixFS `Data` message (proto2), carried as a dag-pb node's data. Fields are in tag
/// order, `blocksizes` unpacked, as Kubo and Helia write them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Data {
    /// Type: a [`DataType`] (required).
    #[prost(enumeration = "DataType", required, tag = "1")]
    pub r#type: i32,
    /// Data: a leaf's file bytes, a symlink's target, a shard's bitfield.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub data: Option<Vec<u8>>,
    /// filesize: the file bytes under this node.
    #[prost(uint64, optional, tag = "3")]
    pub filesize: Option<u64>,
    /// blocksizes: the file bytes under each link, one per link.
    #[prost(uint64, repeated, packed = "false", tag = "4")]
    pub blocksizes: Vec<u64>,
    /// hashType: a HAMT shard's hash function.
    #[prost(uint64, optional, tag = "5")]
    pub hash_type: Option<u64>,
    /// fanout: a HAMT shard's width.
    #[prost(uint64, optional, tag = "6")]
    pub fanout: Option<u64>,
    /// mode: POSIX permission bits.
    #[prost(uint32, optional, tag = "7")]
    pub mode: Option<u32>,
    /// mtime: the modification time.
    #[prost(message, optional, tag = "8")]
    pub mtime: Option<UnixTime>,
}

/// The UnixFS `Data.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DataType {
    /// A file's bytes (old Kubo leaves).
    Raw = 0,
    /// A plain directory.
    Directory = 1,
    /// A file, or a part of one.
    File = 2,
    /// Metadata (deprecated).
    Metadata = 3,
    /// A symbolic link.
    Symlink = 4,
    /// A node of a sharded (HAMT) directory.
    HamtShard = 5,
}

impl DataType {
    /// The type's name in error messages.
    pub fn name(self) -> &'static str {
        match self {
            DataType::Raw => "raw node",
            DataType::Directory => "directory",
            DataType::File => "file",
            DataType::Metadata => "metadata node",
            DataType::Symlink => "symlink",
            DataType::HamtShard => "sharded directory",
        }
    }
}

/// The UnixFS `UnixTime` message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UnixTime {
    /// Seconds since the Unix epoch (required).
    #[prost(int64, required, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds past the second.
    #[prost(fixed32, optional, tag = "2")]
    pub fractional_nanoseconds: Option<u32>,
}

/// Decodes a dag-pb block and its UnixFS `Data`.
fn decode_unixfs(block: &[u8]) -> Result<(PbNode, Data, DataType), UnixfsError> {
    let mut node = decode(block)?;
    let bytes = node
        .data
        .take()
        .ok_or_else(|| UnixfsError::Malformed("dag-pb node has no UnixFS Data".into()))?;
    let data = Data::decode(bytes.as_slice())
        .map_err(|e| UnixfsError::Malformed(format!("UnixFS Data: {e}")))?;
    let kind = DataType::try_from(data.r#type).map_err(|_| {
        UnixfsError::Malformed(format!("UnixFS Data: unknown Type {}", data.r#type))
    })?;
    Ok((node, data, kind))
}

// ---------------------------------------------------------------------------------------------
// Writer

/// How a file is cut into a tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Leaf size in bytes, for [`write_all`] (callers of [`FileWriter::push_leaf`] choose their
    /// own). Keep it well under [`MAX_BLOCK`].
    pub chunk: usize,
    /// Name dag-pb nodes with CIDv0 (`Qm…`) instead of CIDv1. Raw leaves are always CIDv1,
    /// as in Kubo.
    pub cid_v0: bool,
    /// Leaves are raw blocks; otherwise dag-pb nodes with the bytes inline.
    pub raw_leaves: bool,
    /// Links per inner node at most (at least 2 is used).
    pub max_links: usize,
}

impl Default for Layout {
    /// Helia's `addBytes` defaults (`@helia/unixfs` 8, the `unixfs-v1-2025` profile of
    /// IPIP-499): CIDv1, raw leaves, 1 MiB chunks, 1024 links per node. Kubo's
    /// `ipfs add --cid-version 1` differs only in 256 KiB chunks and 174 links:
    /// `Layout { chunk: 262_144, max_links: 174, ..Layout::default() }`.
    fn default() -> Layout {
        Layout { chunk: 1 << 20, cid_v0: false, raw_leaves: true, max_links: 1024 }
    }
}

impl Layout {
    /// Kubo's `ipfs add` defaults (the `unixfs-v0-2015` profile): CIDv0, dag-pb leaves,
    /// 256 KiB chunks, 174 links per node.
    pub fn kubo() -> Layout {
        Layout { chunk: 256 << 10, cid_v0: true, raw_leaves: false, max_links: 174 }
    }
}

/// A block: its CID and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The CID of `data`.
    pub cid: Cid,
    /// The bytes.
    pub data: Vec<u8>,
}

/// A link waiting for its parent node.
#[derive(Clone, Debug)]
struct Pending {
    cid: Cid,
    /// The encoded bytes of the subtree.
    tsize: u64,
    /// The file bytes under it.
    filesize: u64,
}

/// Builds a file's tree from its leaves, in the balanced layout, handing out each block as
/// soon as it is complete. Blocks come out children first, so the root is the last block
/// handed out (by [`push_leaf`](FileWriter::push_leaf) or [`finish`](FileWriter::finish)).
#[derive(Debug)]
pub struct FileWriter {
    layout: Layout,
    /// `levels[0]`: links to leaves not yet under a node; `levels[k]`: links to nodes of
    /// height `k`. Each holds fewer than `max_links`.
    levels: Vec<Vec<Pending>>,
    size: u64,
}

impl FileWriter {
    /// A writer for a new file.
    pub fn new(layout: Layout) -> FileWriter {
        let layout = Layout { max_links: layout.max_links.max(2), ..layout };
        FileWriter { layout, levels: Vec::new(), size: 0 }
    }

    /// Adds the next leaf, `data` being its file bytes, and returns the blocks it completes:
    /// the leaf, then any inner node it filled.
    pub fn push_leaf(&mut self, data: &[u8]) -> Vec<Block> {
        self.size += data.len() as u64;
        let (leaf, pending) = self.leaf(data);
        let mut blocks = vec![leaf];
        let mut level = 0;
        let mut pending = pending;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(pending);
            if self.levels[level].len() < self.layout.max_links {
                return blocks;
            }
            let links = std::mem::take(&mut self.levels[level]);
            let (node, up) = self.node(links);
            blocks.push(node);
            pending = up;
            level += 1;
        }
    }

    /// Closes the file: returns the root's CID, the file size and the blocks not yet handed
    /// out, the root last if it is among them. An empty file is one empty leaf.
    pub fn finish(mut self) -> (Cid, u64, Vec<Block>) {
        let mut blocks = Vec::new();
        if self.levels.is_empty() {
            let (leaf, pending) = self.leaf(&[]);
            blocks.push(leaf);
            return (pending.cid, 0, blocks);
        }
        // The top level is never empty. Below it, what is pending goes under a node one level
        // up, even a single link, as Kubo and Helia do; the top level's single link is the root.
        let mut level = 0;
        loop {
            let top = level + 1 == self.levels.len();
            if top && self.levels[level].len() == 1 {
                let root = self.levels[level][0].cid;
                return (root, self.size, blocks);
            }
            if !self.levels[level].is_empty() {
                let links = std::mem::take(&mut self.levels[level]);
                let (node, up) = self.node(links);
                blocks.push(node);
                if top {
                    self.levels.push(Vec::new());
                }
                self.levels[level + 1].push(up);
            }
            level += 1;
        }
    }

    fn leaf(&self, data: &[u8]) -> (Block, Pending) {
        let filesize = data.len() as u64;
        if self.layout.raw_leaves {
            let cid = cid_of(RAW, data);
            let block = Block { cid, data: data.to_vec() };
            return (block, Pending { cid, tsize: filesize, filesize });
        }
        let unixfs = Data {
            r#type: DataType::File as i32,
            data: (!data.is_empty()).then(|| data.to_vec()),
            filesize: Some(filesize),
            ..Data::default()
        };
        self.dag_pb(PbNode { links: Vec::new(), data: Some(unixfs.encode_to_vec()) }, 0, filesize)
    }

    fn node(&self, links: Vec<Pending>) -> (Block, Pending) {
        let filesize = links.iter().map(|l| l.filesize).sum();
        let tsizes = links.iter().map(|l| l.tsize).sum();
        let unixfs = Data {
            r#type: DataType::File as i32,
            filesize: Some(filesize),
            blocksizes: links.iter().map(|l| l.filesize).collect(),
            ..Data::default()
        };
        let links = links
            .into_iter()
            .map(|l| PbLink { cid: l.cid, name: Some(String::new()), size: Some(l.tsize) })
            .collect();
        self.dag_pb(PbNode { links, data: Some(unixfs.encode_to_vec()) }, tsizes, filesize)
    }

    fn dag_pb(&self, node: PbNode, tsizes: u64, filesize: u64) -> (Block, Pending) {
        let data = encode(&node);
        let mut cid = cid_of(DAG_PB, &data);
        if self.layout.cid_v0 {
            cid = Cid::new_v0(*cid.hash()).expect("a SHA2-256 dag-pb hash makes a CIDv0");
        }
        let tsize = data.len() as u64 + tsizes;
        (Block { cid, data }, Pending { cid, tsize, filesize })
    }
}

/// Why [`write_all`] stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError<E> {
    /// Reading the file failed.
    #[error("reading the file: {0}")]
    Read(#[from] io::Error),
    /// Storing a block failed.
    #[error("storing a block: {0}")]
    Put(#[source] E),
}

/// Writes everything `reader` gives as a file in `layout`, cut into `layout.chunk`-byte leaves
/// (the last one shorter), handing each block to `put`, children before parents. Returns the
/// root's CID and the file size.
pub fn write_all<E>(
    layout: Layout,
    mut reader: impl Read,
    mut put: impl FnMut(Block) -> Result<(), E>,
) -> Result<(Cid, u64), WriteError<E>> {
    let mut writer = FileWriter::new(layout);
    let mut chunk = vec![0; layout.chunk.max(1)];
    loop {
        let len = read_full(&mut reader, &mut chunk)?;
        if len == 0 {
            break;
        }
        for block in writer.push_leaf(&chunk[..len]) {
            put(block).map_err(WriteError::Put)?;
        }
        if len < chunk.len() {
            break;
        }
    }
    let (root, size, blocks) = writer.finish();
    for block in blocks {
        put(block).map_err(WriteError::Put)?;
    }
    Ok((root, size))
}

/// Reads until `buf` is full or the reader is at its end; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

// ---------------------------------------------------------------------------------------------
// Reader

/// A block the reader will need.
#[derive(Clone, Debug)]
struct Want {
    cid: Cid,
    /// The file bytes its parent says are under it; `None` for the root.
    size: Option<u64>,
}

/// Reads a UnixFS file as a state machine: it names the next block it needs
/// ([`next_needed`](FileReader::next_needed)), is fed that block
/// ([`feed`](FileReader::feed)) and gives back the file bytes in it, depth first, so the
/// bytes come out in file order. It checks every size the tree records against the bytes
/// under it.
#[derive(Debug)]
pub struct FileReader {
    /// One entry per level of the path being read: the blocks of that level still needed, in
    /// order. No entry is empty.
    stack: Vec<VecDeque<Want>>,
    /// The CIDs in `stack`.
    pending: usize,
    /// The root's file size, once the root is fed.
    size: Option<u64>,
    /// The file bytes given back so far.
    read: u64,
}

/// What a block holds, once checked.
struct Parsed {
    bytes: Option<Vec<u8>>,
    children: Vec<Want>,
    size: u64,
}

impl FileReader {
    /// A reader of the file whose root is `root`.
    pub fn new(root: Cid) -> FileReader {
        let first = Want { cid: root, size: None };
        FileReader { stack: vec![VecDeque::from([first])], pending: 1, size: None, read: 0 }
    }

    /// The next block needed, or `None` when the file is complete.
    pub fn next_needed(&self) -> Option<Cid> {
        self.stack.last().and_then(|level| level.front()).map(|want| want.cid)
    }

    /// Up to `n` blocks that will be needed, in the order they will be, as far as the blocks
    /// fed so far tell (blocks under ones not yet fed come between them): for prefetching.
    pub fn upcoming(&self, n: usize) -> Vec<Cid> {
        self.stack.iter().rev().flatten().take(n).map(|want| want.cid).collect()
    }

    /// Takes the block [`next_needed`](FileReader::next_needed) named (the caller has checked
    /// that `block` hashes to `cid`) and returns the file bytes it holds: `Some` for a leaf (or
    /// a node with bytes inline), `None` for an inner node. On an error nothing changes.
    pub fn feed(&mut self, cid: &Cid, block: &[u8]) -> Result<Option<Vec<u8>>, UnixfsError> {
        let Some(want) = self.stack.last().and_then(|level| level.front()) else {
            return Err(UnixfsError::Complete { got: *cid });
        };
        if want.cid != *cid {
            return Err(UnixfsError::Unexpected { wanted: want.cid, got: *cid });
        }
        let parsed = parse(cid, block)?;
        if let Some(expected) = want.size
            && expected != parsed.size
        {
            return Err(UnixfsError::SizeMismatch { expected, got: parsed.size });
        }
        if !parsed.children.is_empty() {
            if self.stack.len() >= MAX_DEPTH {
                return Err(UnixfsError::TooDeep);
            }
            let pending = self.pending - 1 + parsed.children.len();
            if pending > MAX_PENDING {
                return Err(UnixfsError::TooManyLinks { pending });
            }
        }
        let got = parsed.bytes.as_ref().map_or(0, |b| b.len() as u64);
        let read = self.read + got;
        let size = self.size.unwrap_or(parsed.size);
        if read > size {
            return Err(UnixfsError::SizeMismatch { expected: size, got: read });
        }

        self.size = Some(size);
        self.read = read;
        self.pending = self.pending - 1 + parsed.children.len();
        if let Some(level) = self.stack.last_mut() {
            level.pop_front();
            if level.is_empty() {
                self.stack.pop();
            }
        }
        if !parsed.children.is_empty() {
            self.stack.push(parsed.children.into());
        }
        Ok(parsed.bytes)
    }

    /// The file size, once every block has been fed and the bytes add up to the size the root
    /// records.
    pub fn finish(&self) -> Result<u64, UnixfsError> {
        if let Some(next) = self.next_needed() {
            return Err(UnixfsError::Incomplete { next });
        }
        let size = self.size.unwrap_or(0);
        if self.read != size {
            return Err(UnixfsError::SizeMismatch { expected: size, got: self.read });
        }
        Ok(size)
    }
}

/// Checks a block of a file and says what it holds.
fn parse(cid: &Cid, block: &[u8]) -> Result<Parsed, UnixfsError> {
    if block.len() > MAX_BLOCK {
        return Err(UnixfsError::TooLarge { len: block.len() });
    }
    match cid.codec() {
        RAW => Ok(Parsed {
            bytes: Some(block.to_vec()),
            children: Vec::new(),
            size: block.len() as u64,
        }),
        DAG_PB => {
            let (node, data, kind) = decode_unixfs(block)?;
            if !matches!(kind, DataType::File | DataType::Raw) {
                return Err(UnixfsError::NotAFile { cid: *cid, what: kind.name() });
            }
            if data.blocksizes.len() != node.links.len() {
                return Err(UnixfsError::Malformed(format!(
                    "UnixFS file node {cid}: {} blocksizes for {} links",
                    data.blocksizes.len(),
                    node.links.len()
                )));
            }
            let inline = data.data.unwrap_or_default();
            let mut size = inline.len() as u64;
            for &blocksize in &data.blocksizes {
                size = size.checked_add(blocksize).ok_or_else(|| {
                    UnixfsError::Malformed(format!("UnixFS file node {cid}: blocksizes overflow"))
                })?;
            }
            if let Some(filesize) = data.filesize
                && filesize != size
            {
                return Err(UnixfsError::SizeMismatch { expected: filesize, got: size });
            }
            let children: Vec<Want> = node
                .links
                .into_iter()
                .zip(data.blocksizes)
                .map(|(link, size)| Want { cid: link.cid, size: Some(size) })
                .collect();
            let bytes = (children.is_empty() || !inline.is_empty()).then_some(inline);
            Ok(Parsed { bytes, children, size })
        }
        codec => Err(UnixfsError::UnsupportedCodec(codec)),
    }
}

/// The CIDs a block links to, for garbage collection: a dag-pb node's links; nothing for a
/// raw block, another codec or bytes that do not decode.
pub fn links(cid: &Cid, data: &[u8]) -> Vec<Cid> {
    if cid.codec() != DAG_PB {
        return Vec::new();
    }
    decode(data)
        .map(|node| node.links.into_iter().map(|link| link.cid).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Directories and kinds

/// What a block is, as UnixFS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// A raw block: a file of its bytes.
    Raw {
        /// Its length.
        size: u64,
    },
    /// A UnixFS file (or an old raw node).
    File {
        /// The file size it records.
        size: u64,
    },
    /// A plain directory.
    Directory,
    /// A sharded (HAMT) directory.
    ShardedDirectory,
    /// A symbolic link.
    Symlink,
    /// A metadata node (deprecated).
    Metadata,
}

/// What the block `cid` names is.
pub fn kind(cid: &Cid, block: &[u8]) -> Result<Kind, UnixfsError> {
    match cid.codec() {
        RAW => Ok(Kind::Raw { size: block.len() as u64 }),
        DAG_PB => {
            let (_, data, kind) = decode_unixfs(block)?;
            Ok(match kind {
                DataType::Raw | DataType::File => {
                    let inline = data.data.as_ref().map_or(0, Vec::len) as u64;
                    let size = data.blocksizes.iter().fold(inline, |sum, b| sum.saturating_add(*b));
                    Kind::File { size: data.filesize.unwrap_or(size) }
                }
                DataType::Directory => Kind::Directory,
                DataType::HamtShard => Kind::ShardedDirectory,
                DataType::Symlink => Kind::Symlink,
                DataType::Metadata => Kind::Metadata,
            })
        }
        codec => Err(UnixfsError::UnsupportedCodec(codec)),
    }
}

/// The entry `name` of a plain UnixFS directory `block`, if it has one.
pub fn resolve_child(block: &[u8], name: &str) -> Result<Option<Cid>, UnixfsError> {
    let (node, _, kind) = decode_unixfs(block)?;
    match kind {
        DataType::Directory => Ok(node
            .links
            .into_iter()
            .find(|link| link.name.as_deref() == Some(name))
            .map(|link| link.cid)),
        DataType::HamtShard => Err(UnixfsError::ShardedDirectory),
        other => Err(UnixfsError::NotADirectory { what: other.name() }),
    }
}
