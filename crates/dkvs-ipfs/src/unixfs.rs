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
//! blocks whose hashes the caller has checked. Directories are read as far as a gateway needs:
//! a plain one's entries ([`entries`], [`resolve_child`]), a sharded (HAMT) one's node by node
//! ([`shard`], [`Shard::slot`], [`Shard::split`]).

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
/// The blocks without a byte of the file a [`FileReader`] takes beyond [`MAX_DEPTH`] for each
/// block with bytes. Between two leaves of a file there are at most [`MAX_DEPTH`] inner nodes,
/// and a writer may leave an empty leaf here and there. A DAG of links to no bytes, thousands
/// a node down many levels (with a byte now and then), would have a reader walk billions of
/// blocks for each byte it gives; so the walk stays within [`MAX_DEPTH`] + 1 blocks a byte,
/// and 4096 more.
pub const MAX_EMPTY_BLOCKS: usize = 4096;
/// The bytes of blocks a [`FileReader`] takes beyond twice the file bytes they gave and
/// [`LINK_BYTES`] for each block with bytes: two blocks as large as a block can be (a root and
/// a node under it). Counting blocks ([`MAX_EMPTY_BLOCKS`]) is not enough: an inner node with
/// no byte of the file can be 2 MiB (links with long names), and 32 of them for each byte
/// would have a reader fetch, and keep, 64 MiB a byte.
pub const FREE_WALK_BYTES: u64 = 2 * MAX_BLOCK as u64;
/// What a block with file bytes allows the walk for the nodes above it. An honest tree's inner
/// nodes hold about 45 bytes a link, one link for each block under them: five times that.
/// (A reader that fetches ahead, as `files` does, fetches up to its window of blocks past
/// this bound before it is refused.)
pub const LINK_BYTES: u64 = 256;

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
    /// The directory is a HAMT shard: read it with [`shard`].
    #[error("a sharded (HAMT) directory, read node by node")]
    ShardedDirectory,
    /// The reader was fed a block other than the one it needs next. (Boxed: two CIDs would
    /// make every `Result` of this module 200 bytes.)
    #[error("got block {got}, but the reader needs {wanted} next")]
    Unexpected {
        /// The block the reader needs.
        wanted: Box<Cid>,
        /// The block it was given.
        got: Box<Cid>,
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
        let Some(len) = usize::try_from(len).ok().filter(|&len| len <= left) else {
            return Err(self.malformed(start, &format!("length {len} past the end ({left} left)")));
        };
        self.pos += len;
        Ok(&self.bytes[self.pos - len..self.pos])
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
    /// Helia's `addBytes` defaults (`@helia/unixfs` 8; ipfs-unixfs-importer 17 calls them the
    /// `unixfs-v1-2025` profile): CIDv1, raw leaves, 1 MiB chunks, 1024 links per node. Kubo's
    /// `ipfs add --cid-version 1` differs only in 256 KiB chunks and 174 links:
    /// `Layout { chunk: 262_144, max_links: 174, ..Layout::default() }`.
    fn default() -> Layout {
        Layout { chunk: 1 << 20, cid_v0: false, raw_leaves: true, max_links: 1024 }
    }
}

impl Layout {
    /// Kubo's `ipfs add` defaults (the importer's `unixfs-v0-2015` profile): CIDv0, dag-pb leaves,
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
    /// Its level in the tree, the root's being 0.
    depth: usize,
}

/// Reads a UnixFS file as a state machine: it names the next block it needs
/// ([`next_needed`](FileReader::next_needed)), is fed that block
/// ([`feed`](FileReader::feed)) and gives back the file bytes in it, depth first, so the
/// bytes come out in file order. It checks every size the tree records against the bytes
/// under it.
#[derive(Debug)]
pub struct FileReader {
    /// The blocks still needed, a group of siblings per entry, the next at the back's front:
    /// at most one node's links per level of the path being read. No entry is empty.
    stack: Vec<VecDeque<Want>>,
    /// The CIDs in `stack`.
    pending: usize,
    /// The root's file size, once the root is fed.
    size: Option<u64>,
    /// The file bytes given back so far.
    read: u64,
    /// The file bytes passed over unread ([`FileReader::skip_to`]): they count towards the
    /// file's size, never towards what the walk may cost (only bytes given back pay for it).
    skipped: u64,
    /// The blocks fed that held no file bytes, and those that held some.
    empty: usize,
    full: usize,
    /// The bytes of the blocks fed.
    walked: u64,
    /// The file's bytes before this offset are not wanted ([`FileReader::skip_to`]).
    skip: u64,
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
        let first = Want { cid: root, size: None, depth: 0 };
        FileReader {
            stack: vec![VecDeque::from([first])],
            pending: 1,
            size: None,
            read: 0,
            skipped: 0,
            empty: 0,
            full: 0,
            walked: 0,
            skip: 0,
        }
    }

    /// Passes over the file's bytes before `offset`: the blocks wholly before it are neither
    /// needed nor read (their sizes, as their parents record them, count as read), so a part
    /// of a file costs the blocks that hold it and the nodes above them. The block `offset`
    /// falls in comes whole; [`position`](FileReader::position) tells where it starts.
    pub fn skip_to(&mut self, offset: u64) {
        self.skip = self.skip.max(offset);
        self.pass_over();
    }

    /// The offset in the file of the bytes the next block holds.
    pub fn position(&self) -> u64 {
        self.read + self.skipped
    }

    /// Drops the wanted blocks wholly before [`FileReader::skip`].
    fn pass_over(&mut self) {
        let mut position = self.position();
        while let Some(level) = self.stack.last_mut() {
            // The root's size is not known before it is read: it is never passed over.
            match level.front() {
                // Wholly before the offset: it starts before it (a block of no bytes at the
                // offset is read, as without a skip) and ends at or before it.
                Some(Want { size: Some(size), .. })
                    if position < self.skip && position.saturating_add(*size) <= self.skip =>
                {
                    position += size;
                    self.skipped += size;
                    self.pending -= 1;
                    level.pop_front();
                    if level.is_empty() {
                        self.stack.pop();
                    }
                }
                _ => return,
            }
        }
    }

    /// The next block needed, or `None` when the file is complete.
    pub fn next_needed(&self) -> Option<Cid> {
        self.stack.last().and_then(|level| level.front()).map(|want| want.cid)
    }

    /// Up to `n` blocks that will be needed, in the order they will be, as far as the blocks
    /// fed so far tell (blocks under ones not yet fed come between them): for prefetching.
    pub fn upcoming(&self, n: usize) -> Vec<Cid> {
        self.upcoming_before(n, u64::MAX)
    }

    /// [`upcoming`](FileReader::upcoming), less the blocks after the next that start at or
    /// past `end`: those a read of the bytes before `end` needs (every block under a node not
    /// yet fed starts where that node does).
    pub fn upcoming_before(&self, n: usize, end: u64) -> Vec<Cid> {
        let mut at = self.position();
        let wants = self.stack.iter().rev().flatten().take(n).enumerate();
        wants
            .take_while(|(i, want)| {
                let starts = at;
                at = at.saturating_add(want.size.unwrap_or(0));
                *i == 0 || starts < end
            })
            .map(|(_, want)| want.cid)
            .collect()
    }

    /// Takes the block [`next_needed`](FileReader::next_needed) named (the caller has checked
    /// that `block` hashes to `cid`) and returns the file bytes it holds: `Some` for a leaf (or
    /// a node with bytes inline), `None` for an inner node. On an error nothing changes.
    pub fn feed(&mut self, cid: &Cid, block: &[u8]) -> Result<Option<Vec<u8>>, UnixfsError> {
        let Some(want) = self.stack.last().and_then(|level| level.front()) else {
            return Err(UnixfsError::Complete { got: *cid });
        };
        if want.cid != *cid {
            return Err(UnixfsError::Unexpected {
                wanted: Box::new(want.cid),
                got: Box::new(*cid),
            });
        }
        let parsed = parse(cid, block, want.depth + 1)?;
        if let Some(expected) = want.size
            && expected != parsed.size
        {
            return Err(UnixfsError::SizeMismatch { expected, got: parsed.size });
        }
        if !parsed.children.is_empty() && want.depth + 1 >= MAX_DEPTH {
            return Err(UnixfsError::TooDeep);
        }
        let pending = self.pending - 1 + parsed.children.len();
        if pending > MAX_PENDING {
            return Err(UnixfsError::TooManyLinks { pending });
        }
        let got = parsed.bytes.as_ref().map_or(0, |b| b.len() as u64);
        let read = self.read + got;
        let size = self.size.unwrap_or(parsed.size);
        if read + self.skipped > size {
            return Err(UnixfsError::SizeMismatch { expected: size, got: read + self.skipped });
        }
        let (empty, full) =
            if got == 0 { (self.empty + 1, self.full) } else { (self.empty, self.full + 1) };
        if empty > MAX_EMPTY_BLOCKS + MAX_DEPTH * full {
            return Err(UnixfsError::Malformed(format!(
                "{empty} blocks without a byte of the file, for {full} with bytes"
            )));
        }
        let walked = self.walked + block.len() as u64;
        if walked > FREE_WALK_BYTES + 2 * read + LINK_BYTES * full as u64 {
            return Err(UnixfsError::Malformed(format!(
                "{walked} bytes of blocks for {read} bytes of the file in {full} blocks"
            )));
        }

        self.size = Some(size);
        self.read = read;
        (self.empty, self.full, self.walked) = (empty, full, walked);
        self.pending = pending;
        if let Some(level) = self.stack.last_mut() {
            level.pop_front();
            if level.is_empty() {
                self.stack.pop();
            }
        }
        if !parsed.children.is_empty() {
            self.stack.push(parsed.children.into());
        }
        self.pass_over();
        Ok(parsed.bytes)
    }

    /// The file size the root records, once the root is fed; every size under it is checked
    /// as its blocks come, so this is what the reader will give (or fail on).
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// The file size, once every block has been fed and the bytes add up to the size the root
    /// records.
    pub fn finish(&self) -> Result<u64, UnixfsError> {
        if let Some(next) = self.next_needed() {
            return Err(UnixfsError::Incomplete { next });
        }
        let size = self.size.unwrap_or(0);
        if self.position() != size {
            return Err(UnixfsError::SizeMismatch { expected: size, got: self.position() });
        }
        Ok(size)
    }
}

/// Checks a block of a file and says what it holds; its children are at `child_depth`.
fn parse(cid: &Cid, block: &[u8], child_depth: usize) -> Result<Parsed, UnixfsError> {
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
                .map(|(link, size)| Want { cid: link.cid, size: Some(size), depth: child_depth })
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

/// A plain directory's block (CIDv1, dag-pb) over `entries`, sorted by name as dag-pb wants
/// them; each entry's `size` is the encoded size of everything under it (`Tsize`).
pub fn directory(mut entries: Vec<PbLink>) -> Block {
    entries.sort_by(|a, b| a.name.as_deref().unwrap_or("").cmp(b.name.as_deref().unwrap_or("")));
    let data = Data { r#type: DataType::Directory as i32, ..Data::default() };
    let data = encode(&PbNode { links: entries, data: Some(data.encode_to_vec()) });
    Block { cid: cid_of(DAG_PB, &data), data }
}

/// The entries of a plain directory's block: each link's name, the block it links to and
/// the encoded size of everything under it (`Tsize`), in the block's order (by name, as
/// writers sort them). An error for anything but a plain directory.
pub fn entries(block: &[u8]) -> Result<Vec<PbLink>, UnixfsError> {
    let (node, _, kind) = decode_unixfs(block)?;
    match kind {
        DataType::Directory => Ok(node.links),
        DataType::HamtShard => Err(UnixfsError::ShardedDirectory),
        other => Err(UnixfsError::NotADirectory { what: other.name() }),
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

/// The hash a sharded directory places names by: murmur3-x64-64 (multicodec 0x22), the first
/// 64 bits of murmur3's x64 128-bit hash with seed 0 (its `h1`), read from the most
/// significant bit, as go-unixfs and js hamt-sharding read it.
pub const MURMUR3_X64_64: u64 = 0x22;

/// The widest shard read (Kubo and Helia make 256).
pub const MAX_FANOUT: u64 = 1024;

/// One node of a sharded (HAMT) directory: a slot per value of the next bits of a name's
/// hash, each empty, an entry (its link named the slot's hex digits, then the name) or a
/// deeper node (its link named the digits alone).
#[derive(Clone, Debug)]
pub struct Shard {
    /// The hash bits each level takes: log2 of the fanout.
    bits: u32,
    /// The hex digits of a slot in link names.
    pad: usize,
    links: Vec<PbLink>,
}

/// What a slot of a [`Shard`] holds for a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// The entry.
    Entry(Cid),
    /// A deeper node, which holds it if anything does.
    Shard(Cid),
    /// Nothing: the directory has no such entry.
    Empty,
}

/// The shard node `block`: an error for anything but a HAMT shard of murmur3-x64-64 with a
/// power-of-two fanout of at most [`MAX_FANOUT`], whose links are all named by a slot.
pub fn shard(block: &[u8]) -> Result<Shard, UnixfsError> {
    let (node, data, kind) = decode_unixfs(block)?;
    let malformed = |what: String| UnixfsError::Malformed(format!("HAMT shard: {what}"));
    if kind != DataType::HamtShard {
        return Err(malformed(format!("the block is a UnixFS {}, not a shard", kind.name())));
    }
    if data.hash_type != Some(MURMUR3_X64_64) {
        return Err(malformed(format!("hash {:?}, not murmur3-x64-64", data.hash_type)));
    }
    let fanout = data.fanout.unwrap_or(0);
    if !(2..=MAX_FANOUT).contains(&fanout) || !fanout.is_power_of_two() {
        return Err(malformed(format!("fanout {fanout}")));
    }
    let pad = format!("{:X}", fanout - 1).len();
    for link in &node.links {
        let name = link.name.as_deref().unwrap_or("");
        // Upper-case hex digits, as go-unixfs and Helia write them (and as `slot` finds them).
        let digits =
            name.get(..pad).filter(|d| d.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')));
        let slot = digits.and_then(|digits| u64::from_str_radix(digits, 16).ok());
        if slot.is_none_or(|slot| slot >= fanout) {
            return Err(malformed(format!("a link named {name:?}, not by a slot")));
        }
    }
    Ok(Shard { bits: fanout.trailing_zeros(), pad, links: node.links })
}

/// A name's murmur3-x64-64 hash ([`MURMUR3_X64_64`]).
fn name_hash(name: &str) -> u64 {
    let hash = murmur3::murmur3_x64_128(&mut name.as_bytes(), 0).expect("reading a slice");
    // The crate gives h2 in the high half and h1 in the low.
    hash as u64
}

impl Shard {
    /// Its fanout: the slots of each of the directory's nodes.
    pub fn fanout(&self) -> u64 {
        1 << self.bits
    }

    /// The slot of this node, a node `level` levels below the directory's root, that holds
    /// `name`. An error past the hash's 64 bits (go-unixfs hashes again there; no directory
    /// that deep is read).
    pub fn slot(&self, name: &str, level: u32) -> Result<Slot, UnixfsError> {
        let used = (level + 1) * self.bits;
        if used > 64 {
            return Err(UnixfsError::Malformed(format!("HAMT shard: {level} levels deep")));
        }
        let index = (name_hash(name) >> (64 - used)) & ((1 << self.bits) - 1);
        let digits = format!("{index:0pad$X}", pad = self.pad);
        for link in &self.links {
            let Some(rest) = link.name.as_deref().and_then(|n| n.strip_prefix(&digits)) else {
                continue;
            };
            if rest.is_empty() {
                return Ok(Slot::Shard(link.cid));
            }
            if rest == name {
                return Ok(Slot::Entry(link.cid));
            }
        }
        Ok(Slot::Empty)
    }

    /// This node's entries (named without their slot's digits) and its deeper nodes.
    pub fn split(self) -> (Vec<PbLink>, Vec<Cid>) {
        let (mut entries, mut deeper) = (Vec::new(), Vec::new());
        for mut link in self.links {
            let name = link.name.take().unwrap_or_default();
            match &name[self.pad..] {
                "" => deeper.push(link.cid),
                rest => entries.push(PbLink { name: Some(rest.to_owned()), ..link }),
            }
        }
        (entries, deeper)
    }
}

/// The fanout of the sharded directories [`sharded_directory`] makes: Kubo's and Helia's.
pub const FANOUT: u64 = 256;

/// A sharded (HAMT) directory over `entries` (names unique), as Helia's importer makes one:
/// each node has [`FANOUT`] slots, taken by the next 8 bits of a name's hash
/// ([`MURMUR3_X64_64`]); a slot that one entry falls in links it (named the slot's two
/// upper-case hex digits, then its name), a slot that several fall in links a node below that
/// holds them (named the digits alone); a node's UnixFS data is its slots' bitmap, big-endian
/// without leading zero bytes. Its blocks, the root last, and the root's cumulative size.
/// An error when two names' hashes agree in all 64 bits (Helia would hash again).
pub fn sharded_directory(entries: Vec<PbLink>) -> Result<(Vec<Block>, u64), UnixfsError> {
    let hashed = entries
        .into_iter()
        .map(|link| (name_hash(link.name.as_deref().unwrap_or("")), link))
        .collect();
    let mut blocks = Vec::new();
    let (_, size) = shard_level(hashed, 0, &mut blocks)?;
    Ok((blocks, size))
}

/// One node of [`sharded_directory`] at `level`, its blocks below it pushed first; its CID
/// and cumulative size.
fn shard_level(
    entries: Vec<(u64, PbLink)>,
    level: u32,
    blocks: &mut Vec<Block>,
) -> Result<(Cid, u64), UnixfsError> {
    let bits = FANOUT.trailing_zeros();
    if (level + 1) * bits > 64 {
        return Err(UnixfsError::Malformed(
            "two names whose murmur3-x64-64 hashes are the same in all 64 bits".into(),
        ));
    }
    let mut slots: std::collections::BTreeMap<u64, Vec<(u64, PbLink)>> = Default::default();
    for (hash, link) in entries {
        let slot = (hash >> (64 - (level + 1) * bits)) & (FANOUT - 1);
        slots.entry(slot).or_default().push((hash, link));
    }
    let mut bitmap = [0u8; (FANOUT / 8) as usize];
    let mut links = Vec::with_capacity(slots.len());
    for (slot, mut held) in slots {
        bitmap[bitmap.len() - 1 - (slot / 8) as usize] |= 1 << (slot % 8);
        let digits = format!("{slot:02X}");
        if held.len() == 1 {
            let (_, link) = held.pop().expect("one");
            let name = format!("{digits}{}", link.name.as_deref().unwrap_or(""));
            links.push(PbLink { name: Some(name), ..link });
        } else {
            let (cid, size) = shard_level(held, level + 1, blocks)?;
            links.push(PbLink { cid, name: Some(digits), size: Some(size) });
        }
    }
    let first = bitmap.iter().position(|&b| b != 0).unwrap_or(bitmap.len());
    let data = Data {
        r#type: DataType::HamtShard as i32,
        data: Some(bitmap[first..].to_vec()),
        hash_type: Some(MURMUR3_X64_64),
        fanout: Some(FANOUT),
        ..Data::default()
    };
    let size = links.iter().filter_map(|l| l.size).sum::<u64>();
    let bytes = encode(&PbNode { links, data: Some(data.encode_to_vec()) });
    let cid = cid_of(DAG_PB, &bytes);
    let size = size + bytes.len() as u64;
    blocks.push(Block { cid, data: bytes });
    Ok((cid, size))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;

    use cid::multihash::Multihash;

    use super::*;

    /// The sizes of the test files: empty, one byte, one chunk and a bit, several chunks, and
    /// 175 chunks of 256 KiB (a second level of nodes for 174 links per node).
    const SIZES: [usize; 7] = [0, 1, 1000, 262_144, 262_145, 700_000, 174 * 262_144 + 1];

    /// Helia 7.1.15 (@helia/unixfs 8.0.5, ipfs-unixfs-importer 17.1.1, Node 20), in memory:
    /// `unixfs(createHeliaLight(...)).addBytes(file_bytes(n))` with default options, which are
    /// CIDv1, raw leaves, 1 MiB chunks, 1024 links (not Kubo's 256 KiB and 174 links).
    const HELIA_DEFAULT: [&str; 7] = [
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
        "bafkreigkgwdvr5wspzwpiutssn4xpj2i7wedshnwphhnu7ohx4pqaxxipe",
        "bafkreiaaqve5st5hdz5ausb5qq4a2bnjeoslddtzxipyvdo2zerzk3js54",
        "bafkreieiuj5mzeuqor24l4lmo2yumm6665yv4gq7ozzp2nrfmqrjyboosy",
        "bafkreiblxnlqct76zfl7mh3fq22e5anlpqc6crgk7m24nsem626dfqk6s4",
        "bafkreidys3z7ecronud2hllzdqojbwgp5rsznygfw5x5jngwobgn7isoxq",
        "bafybeib73cpidbr4wedb4tlvakpcg5nlzvdhzhkijr2shoivxdj3g46xs4",
    ];

    /// The same Helia with `{ cidVersion: 1, rawLeaves: true, chunker: fixedSize({ chunkSize:
    /// 262144 }), layout: balanced({ maxChildrenPerNode: 174 }) }`, the settings of Kubo's
    /// `ipfs add --cid-version 1`.
    const HELIA_V1_256K: [&str; 7] = [
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
        "bafkreigkgwdvr5wspzwpiutssn4xpj2i7wedshnwphhnu7ohx4pqaxxipe",
        "bafkreiaaqve5st5hdz5ausb5qq4a2bnjeoslddtzxipyvdo2zerzk3js54",
        "bafkreieiuj5mzeuqor24l4lmo2yumm6665yv4gq7ozzp2nrfmqrjyboosy",
        "bafybeich6cqd6yabw3cku6edwmz4rvwe275nx2l6ootvc2bpbt5bdvarua",
        "bafybeihjvesaqmkfuawfe3nmnuvkgidv75q4cmgojqjldtpi4tz2bggqnm",
        "bafybeibo5yjphmmdq6aigqtgrijost25l5lmv5l37von7hrjv7sagnx4sy",
    ];

    /// Kubo 0.22.0 (boxo 0.11.0, the libkubo of the kubo_python 0.1.5 wheel, loaded with cffi
    /// and run under `unshare -n`): `AddFile(repo, path, onlyHash=true)` on files of these
    /// bytes, with `ipfs add` defaults.
    /// Helia with `{ cidVersion: 0, rawLeaves: false }`, 256 KiB chunks and 174 links gives
    /// the same seven CIDs.
    const KUBO: [&str; 7] = [
        "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH",
        "QmXC9WjuLo7EfydBdbWyvpGif62nrxbDCX2vcz9ZqLTQvV",
        "Qmeg4t1d1Smno7xVHW3AWmtmjU3ouXvCiLegmHdQztLGmY",
        "QmNjsPT1urL55WXngMVgvZrn2apSux229uFBoAgmKTtjAd",
        "QmP8yTqWQcb3qVoBcdE4pTUzxh9kazndg5ELrbXBmdj17M",
        "QmTMctWDsoTJmCU2wzKkKXxA9oWjr7pdXK9GdYWTqQ4pHX",
        "QmPq9MH6i6cgAMc9uYJe8xYeVstRr2D2mSpLVDYbYMLPta",
    ];

    fn v1_256k() -> Layout {
        Layout { chunk: 262_144, max_links: 174, ..Layout::default() }
    }

    /// The layouts checked, with the CIDs the real implementations give.
    fn layouts() -> [(&'static str, Layout, [&'static str; 7]); 3] {
        [
            ("helia default", Layout::default(), HELIA_DEFAULT),
            ("helia v1 256k", v1_256k(), HELIA_V1_256K),
            ("kubo", Layout::kubo(), KUBO),
        ]
    }

    /// The test file of `n` bytes, made the same way in JavaScript for Helia and Kubo.
    fn file_bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| ((i * 31 + 7) % 251) as u8).collect()
    }

    /// Writes `data` with `write_all`, checking every block's CID, and keeps the blocks.
    fn build(layout: Layout, data: &[u8]) -> (Cid, HashMap<Cid, Vec<u8>>) {
        let mut blocks = HashMap::new();
        let mut last = None;
        let (root, size) = write_all(layout, data, |block: Block| {
            assert_eq!(block.cid.hash(), cid_of(block.cid.codec(), &block.data).hash());
            assert!(block.data.len() <= MAX_BLOCK);
            last = Some(block.cid);
            blocks.insert(block.cid, block.data);
            Ok::<(), Infallible>(())
        })
        .expect("writing to memory does not fail");
        assert_eq!(size, data.len() as u64);
        assert_eq!(last, Some(root), "the root is the last block handed out");
        (root, blocks)
    }

    fn read_all(root: Cid, blocks: &HashMap<Cid, Vec<u8>>) -> Result<Vec<u8>, UnixfsError> {
        let mut reader = FileReader::new(root);
        let mut out = Vec::new();
        while let Some(cid) = reader.next_needed() {
            let block = blocks.get(&cid).expect("every block of the DAG is in the map");
            if let Some(bytes) = reader.feed(&cid, block)? {
                out.extend_from_slice(&bytes);
            }
        }
        assert_eq!(reader.finish()?, out.len() as u64);
        Ok(out)
    }

    /// Reads the bytes `from..to` of the file with a reader that skips to `from`; the bytes
    /// and the number of blocks fed.
    fn read_part(
        root: Cid,
        blocks: &HashMap<Cid, Vec<u8>>,
        from: u64,
        to: u64,
    ) -> (Vec<u8>, usize) {
        let mut reader = FileReader::new(root);
        reader.skip_to(from);
        let (mut out, mut fed) = (Vec::new(), 0);
        while let Some(cid) = reader.next_needed() {
            let at = reader.position();
            fed += 1;
            let Some(bytes) = reader.feed(&cid, &blocks[&cid]).expect("a valid file") else {
                continue;
            };
            let len = bytes.len() as u64;
            assert!(at + len > from, "a block wholly before the part, at {at}");
            let (lo, hi) = (from.saturating_sub(at).min(len), to.saturating_sub(at).min(len));
            out.extend_from_slice(&bytes[lo as usize..hi as usize]);
            if at + len >= to {
                break;
            }
        }
        (out, fed)
    }

    #[test]
    fn a_directory_block_is_the_one_ipfs_makes_and_reads_back() {
        // The empty directory every IPFS implementation knows (Kubo's `ipfs object new
        // unixfs-dir`), as CIDv0.
        let empty = directory(Vec::new());
        let v0 = Cid::new_v0(*empty.cid.hash()).expect("a dag-pb SHA2-256 CID");
        assert_eq!(v0.to_string(), "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn");
        let (a, b) = (raw_cid(b"a"), raw_cid(b"b"));
        let link = |name: &str, cid| PbLink { cid, name: Some(name.into()), size: Some(1) };
        let dir = directory(vec![link("zeta", a), link("alpha", b)]);
        let listed = entries(&dir.data).expect("a directory");
        let names: Vec<_> = listed.iter().map(|l| (l.name.as_deref(), l.cid)).collect();
        assert_eq!(names, [(Some("alpha"), b), (Some("zeta"), a)], "sorted by name");
        assert_eq!(resolve_child(&dir.data, "zeta").expect("a directory"), Some(a));
        assert!(matches!(kind(&dir.cid, &dir.data), Ok(Kind::Directory)));
        let err = entries(&file_node(&[(a, 1)], 1).1).expect_err("a file");
        assert!(matches!(err, UnixfsError::NotADirectory { what: "file" }), "{err}");
    }

    #[test]
    fn a_part_of_a_file_is_read_from_the_blocks_that_hold_it() {
        let size = 174 * 262_144 + 1;
        let data = file_bytes(size);
        let (root, blocks) = build(v1_256k(), &data);
        let chunk = 262_144u64;
        for (from, to) in [
            (0, 10),
            (chunk - 1, chunk + 1),
            (100 * chunk + 5, 102 * chunk),
            (size as u64 - 1, size as u64),
            (173 * chunk, size as u64),
        ] {
            let (part, fed) = read_part(root, &blocks, from, to);
            assert_eq!(part, &data[from as usize..to as usize], "{from}..{to}");
            // The root, the nodes of 174 leaves the part spans, and its leaves.
            let leaves = to.div_ceil(chunk) - from / chunk;
            let nodes = (to - 1) / (174 * chunk) - from / (174 * chunk) + 1;
            assert_eq!(fed as u64, 1 + nodes + leaves, "{from}..{to}: {fed} of {}", blocks.len());
        }
        // Skipping nothing reads it all, as before.
        assert_eq!(read_part(root, &blocks, 0, size as u64).0, data);
    }

    fn raw_cid(data: &[u8]) -> Cid {
        cid_of(RAW, data)
    }

    /// A dag-pb block with UnixFS `data` and file links `(cid, blocksize)`.
    fn pb_block(data: &Data, links: &[(Cid, u64)]) -> (Cid, Vec<u8>) {
        let links = links
            .iter()
            .map(|&(cid, _)| PbLink { cid, name: Some(String::new()), size: Some(1) })
            .collect();
        let bytes = encode(&PbNode { links, data: Some(data.encode_to_vec()) });
        (cid_of(DAG_PB, &bytes), bytes)
    }

    /// A UnixFS File node over `links`, recording `filesize`.
    fn file_node(links: &[(Cid, u64)], filesize: u64) -> (Cid, Vec<u8>) {
        let data = Data {
            r#type: DataType::File as i32,
            filesize: Some(filesize),
            blocksizes: links.iter().map(|l| l.1).collect(),
            ..Data::default()
        };
        pb_block(&data, links)
    }

    fn typed(kind: DataType) -> Data {
        Data { r#type: kind as i32, ..Data::default() }
    }

    #[test]
    fn writer_matches_helia_and_kubo() {
        for (name, layout, expected) in layouts() {
            for (i, &n) in SIZES[..6].iter().enumerate() {
                let (root, _) = build(layout, &file_bytes(n));
                assert_eq!(root.to_string(), expected[i], "{name}, {n} bytes");
            }
        }
    }

    #[test]
    fn reader_round_trips_every_small_size() {
        for (name, layout, _) in layouts() {
            for n in &SIZES[..6] {
                let data = file_bytes(*n);
                let (root, blocks) = build(layout, &data);
                assert!(read_all(root, &blocks).expect("a file we wrote reads") == data, "{name}");
            }
        }
    }

    /// The 45 MB file, once: two levels of nodes at 174 links.
    #[test]
    fn large_file_matches_helia_and_kubo_and_round_trips() {
        let data = file_bytes(SIZES[6]);
        for (name, layout, expected) in layouts() {
            let (root, blocks) = build(layout, &data);
            assert_eq!(root.to_string(), expected[6], "{name}");
            assert!(read_all(root, &blocks).expect("a file we wrote reads") == data, "{name}");
        }
    }

    /// The writer against a plain batch build of the balanced layout (Helia's algorithm:
    /// group by `max_links` until one node is left), for leaves of uneven sizes.
    fn batch_root(layout: Layout, leaves: &[Vec<u8>]) -> Cid {
        let writer = FileWriter::new(layout);
        if leaves.is_empty() {
            return writer.leaf(&[]).1.cid;
        }
        let mut level: Vec<Pending> = leaves.iter().map(|leaf| writer.leaf(leaf).1).collect();
        while level.len() > 1 || leaves.len() > 1 && level.len() == leaves.len() {
            level =
                level.chunks(writer.layout.max_links).map(|c| writer.node(c.to_vec()).1).collect();
        }
        level[0].cid
    }

    #[test]
    fn writer_is_the_balanced_layout() {
        let mut rng = Rng(1);
        for _ in 0..300 {
            let max_links = 2 + rng.below(4);
            let base = if rng.coin() { Layout::kubo() } else { Layout::default() };
            let layout = Layout { max_links, ..base };
            let leaves: Vec<Vec<u8>> =
                (0..rng.below(70)).map(|_| file_bytes(rng.below(40))).collect();
            let mut writer = FileWriter::new(layout);
            let mut blocks = HashMap::new();
            for leaf in &leaves {
                blocks.extend(writer.push_leaf(leaf).into_iter().map(|b| (b.cid, b.data)));
                assert!(
                    writer.levels.iter().all(|level| level.len() < max_links),
                    "memory per level"
                );
            }
            let (root, size, rest) = writer.finish();
            blocks.extend(rest.into_iter().map(|b| (b.cid, b.data)));
            assert_eq!(root, batch_root(layout, &leaves), "{layout:?}, {} leaves", leaves.len());
            assert_eq!(size, leaves.iter().map(Vec::len).sum::<usize>() as u64);
            assert_eq!(read_all(root, &blocks).expect("a file we wrote reads"), leaves.concat());
        }
    }

    #[test]
    fn reader_rejects_a_wrong_block_and_goes_on() {
        let data = file_bytes(700_000);
        let (root, blocks) = build(Layout::kubo(), &data);
        let mut reader = FileReader::new(root);
        reader.feed(&root, &blocks[&root]).expect("the root");
        let first = reader.next_needed().expect("a leaf is needed");
        let other = reader.upcoming(2)[1];
        let err = reader.feed(&other, &blocks[&other]).expect_err("not the next block");
        assert!(matches!(err, UnixfsError::Unexpected { .. }), "{err}");
        assert_eq!(reader.next_needed(), Some(first));
        assert!(matches!(reader.finish(), Err(UnixfsError::Incomplete { .. })));
        assert_eq!(
            reader.feed(&first, &blocks[&first]).expect("the leaf"),
            Some(data[..262_144].to_vec())
        );
    }

    #[test]
    fn reader_lists_upcoming_blocks_in_order() {
        let (root, blocks) = build(Layout::kubo(), &file_bytes(700_000));
        let mut reader = FileReader::new(root);
        assert_eq!(reader.upcoming(5), vec![root]);
        reader.feed(&root, &blocks[&root]).expect("the root");
        let leaves: Vec<Cid> =
            decode(&blocks[&root]).expect("root").links.iter().map(|l| l.cid).collect();
        assert_eq!(leaves.len(), 3);
        assert_eq!(reader.upcoming(5), leaves);
        assert_eq!(reader.upcoming(2), leaves[..2]);
        reader.feed(&leaves[0], &blocks[&leaves[0]]).expect("a leaf");
        assert_eq!(reader.upcoming(5), leaves[1..]);
    }

    #[test]
    fn reader_stops_after_the_last_block() {
        let (root, blocks) = build(Layout::default(), b"hello");
        let mut reader = FileReader::new(root);
        assert_eq!(reader.size(), None);
        assert_eq!(
            reader.feed(&root, &blocks[&root]).expect("a raw file"),
            Some(b"hello".to_vec())
        );
        assert_eq!(reader.size(), Some(5));
        assert_eq!(reader.next_needed(), None);
        assert_eq!(reader.finish().expect("complete"), 5);
        let err = reader.feed(&root, &blocks[&root]).expect_err("nothing more is needed");
        assert!(matches!(err, UnixfsError::Complete { .. }), "{err}");
    }

    #[test]
    fn reader_rejects_malformed_dag_pb() {
        for bytes in [&b"\x12\x05abc"[..], b"\x0a\x04\x08\x09\x18\x00", b"\x0a\x02\x08", b""] {
            let cid = cid_of(DAG_PB, bytes);
            let err = FileReader::new(cid).feed(&cid, bytes).expect_err("malformed");
            assert!(matches!(err, UnixfsError::Malformed(_)), "{err}");
        }
    }

    #[test]
    fn reader_rejects_what_is_not_a_file() {
        let leaf = raw_cid(b"x");
        let dir = PbLink { cid: leaf, name: Some("x".into()), size: Some(1) };
        let bytes = encode(&PbNode {
            links: vec![dir],
            data: Some(typed(DataType::Directory).encode_to_vec()),
        });
        let cid = cid_of(DAG_PB, &bytes);
        let err = FileReader::new(cid).feed(&cid, &bytes).expect_err("a directory");
        assert!(matches!(err, UnixfsError::NotAFile { what: "directory", .. }), "{err}");
        for kind in [DataType::HamtShard, DataType::Symlink, DataType::Metadata] {
            let (cid, bytes) = pb_block(&typed(kind), &[]);
            let err = FileReader::new(cid).feed(&cid, &bytes).expect_err("not a file");
            assert!(matches!(err, UnixfsError::NotAFile { .. }), "{err}");
        }
        let cbor = Cid::new_v1(0x71, *leaf.hash());
        let err = FileReader::new(cbor).feed(&cbor, b"x").expect_err("dag-cbor");
        assert!(matches!(err, UnixfsError::UnsupportedCodec(0x71)), "{err}");
    }

    #[test]
    fn reader_rejects_sizes_that_lie() {
        let (a, b) = (raw_cid(b"abc"), raw_cid(b"de"));
        let blocks: HashMap<Cid, Vec<u8>> = [(a, b"abc".to_vec()), (b, b"de".to_vec())].into();
        let read = |node: (Cid, Vec<u8>)| {
            let mut blocks = blocks.clone();
            blocks.insert(node.0, node.1);
            read_all(node.0, &blocks)
        };
        assert_eq!(read(file_node(&[(a, 3), (b, 2)], 5)).expect("honest"), b"abcde");
        // The root's filesize disagrees with its blocksizes.
        let err = read(file_node(&[(a, 3), (b, 2)], 6)).expect_err("filesize lies");
        assert!(matches!(err, UnixfsError::SizeMismatch { expected: 6, got: 5 }), "{err}");
        // A blocksize disagrees with the leaf.
        let err = read(file_node(&[(a, 3), (b, 3)], 6)).expect_err("blocksize lies");
        assert!(matches!(err, UnixfsError::SizeMismatch { expected: 3, got: 2 }), "{err}");
        // One blocksize for two links.
        let data = Data {
            r#type: DataType::File as i32,
            filesize: Some(3),
            blocksizes: vec![3],
            ..Data::default()
        };
        let err = read(pb_block(&data, &[(a, 3), (b, 2)])).expect_err("blocksizes short");
        assert!(matches!(err, UnixfsError::Malformed(_)), "{err}");
    }

    #[test]
    fn reader_refuses_links_to_no_bytes_that_would_have_it_walk_for_ever() {
        let empty = raw_cid(b"");
        let mut blocks: HashMap<Cid, Vec<u8>> = [(empty, Vec::new())].into();
        // Three levels of 2000 links to no bytes: eight billion blocks to walk, no byte to read.
        let mut root = empty;
        for _ in 0..3 {
            let (cid, bytes) = file_node(&vec![(root, 0); 2000], 0);
            blocks.insert(cid, bytes);
            root = cid;
        }
        let mut reader = FileReader::new(root);
        let err = (0..MAX_EMPTY_BLOCKS + 10).find_map(|_| {
            let cid = reader.next_needed()?;
            reader.feed(&cid, &blocks[&cid]).err()
        });
        assert!(
            matches!(&err, Some(UnixfsError::Malformed(m)) if m.contains("without a byte")),
            "{err:?}"
        );
        // The same with a byte now and then: 2001 blocks of nothing, then one byte, over and
        // over. The walk is refused once it is far over the bytes it gave.
        let x = raw_cid(b"x");
        blocks.insert(x, b"x".to_vec());
        let (nothing, bytes) = file_node(&vec![(empty, 0); 2000], 0);
        blocks.insert(nothing, bytes);
        let (trickle, bytes) = file_node(&[(nothing, 0), (x, 1)].repeat(100), 100);
        blocks.insert(trickle, bytes);
        let mut reader = FileReader::new(trickle);
        let (mut fed, mut read) = (0, 0);
        let err = loop {
            let Some(cid) = reader.next_needed() else { break None };
            match reader.feed(&cid, &blocks[&cid]) {
                Ok(bytes) => read += bytes.map_or(0, |b| b.len()),
                Err(e) => break Some(e),
            }
            fed += 1;
        };
        assert!(matches!(&err, Some(UnixfsError::Malformed(m)) if m.contains("without a byte")));
        assert!(
            fed <= MAX_EMPTY_BLOCKS + (MAX_DEPTH + 1) * read + 1,
            "{fed} blocks for {read} bytes"
        );
        // Few blocks, but large ones: nodes of no bytes padded to near 2 MiB (a link's long
        // name), each followed by one byte. Refused within the free bytes and what the bytes
        // read allow, not after the 200 MiB the walk holds.
        let (fat, bytes) = {
            let data = Data {
                r#type: DataType::File as i32,
                filesize: Some(0),
                blocksizes: vec![0],
                ..Data::default()
            };
            let link =
                PbLink { cid: empty, name: Some("n".repeat(MAX_BLOCK - 200)), size: Some(1) };
            let bytes = encode(&PbNode { links: vec![link], data: Some(data.encode_to_vec()) });
            (cid_of(DAG_PB, &bytes), bytes)
        };
        assert!(bytes.len() <= MAX_BLOCK && bytes.len() > MAX_BLOCK - 300);
        blocks.insert(fat, bytes);
        let (padded, bytes) = file_node(&[(fat, 0), (x, 1)].repeat(100), 100);
        blocks.insert(padded, bytes);
        let mut reader = FileReader::new(padded);
        let (mut walked, mut read) = (0, 0);
        let err = loop {
            let Some(cid) = reader.next_needed() else { break None };
            match reader.feed(&cid, &blocks[&cid]) {
                Ok(bytes) => read += bytes.map_or(0, |b| b.len() as u64),
                Err(e) => break Some(e),
            }
            walked += blocks[&cid].len() as u64;
        };
        assert!(matches!(&err, Some(UnixfsError::Malformed(m)) if m.contains("bytes of blocks")));
        assert!(walked <= FREE_WALK_BYTES + (2 + LINK_BYTES) * read, "{walked} for {read}");
        // The same behind a link that claims a petabyte, skipped: the bytes passed over pay
        // for no walk (else a part of the file past them would let it fetch 2 bytes for each).
        let claimed = 1u64 << 50;
        let (lying, bytes) =
            file_node(&[(raw_cid(b"never"), claimed), (padded, 100)], claimed + 100);
        blocks.insert(lying, bytes);
        let mut reader = FileReader::new(lying);
        reader.skip_to(claimed);
        let (mut walked, mut read) = (0, 0);
        let err = loop {
            let Some(cid) = reader.next_needed() else { break None };
            match reader.feed(&cid, &blocks[&cid]) {
                Ok(bytes) => read += bytes.map_or(0, |b| b.len() as u64),
                Err(e) => break Some(e),
            }
            walked += blocks[&cid].len() as u64;
        };
        assert!(matches!(&err, Some(UnixfsError::Malformed(m)) if m.contains("bytes of blocks")));
        assert!(walked <= FREE_WALK_BYTES + (2 + LINK_BYTES) * read, "{walked} for {read}");
        // An empty file behind one link (or a chain of them) still reads, as empty.
        let (lone, bytes) = file_node(&[(empty, 0)], 0);
        blocks.insert(lone, bytes);
        assert_eq!(read_all(lone, &blocks).expect("an empty file"), b"");
    }

    #[test]
    fn honest_trees_of_one_byte_leaves_are_within_the_walk_bound() {
        // The most inner-node bytes an honest writer makes for each file byte: leaves of one
        // byte, under nodes of Helia's 1024 links and Kubo's 174, raw leaves or dag-pb ones,
        // CIDv0 or v1.
        // 200 000 of them: their inner nodes (about 9 MB) are past the free bytes.
        let data = file_bytes(200_000);
        for (name, layout, _) in layouts() {
            let one_byte = Layout { chunk: 1, ..layout };
            let (root, blocks) = build(one_byte, &data);
            assert_eq!(read_all(root, &blocks).expect(name), data, "{name}");
        }
    }

    #[test]
    fn reader_reads_bytes_inline_in_an_inner_node() {
        let leaf = raw_cid(b"cd");
        let data = Data {
            r#type: DataType::File as i32,
            data: Some(b"ab".to_vec()),
            filesize: Some(4),
            blocksizes: vec![2],
            ..Data::default()
        };
        let (root, bytes) = pb_block(&data, &[(leaf, 2)]);
        let blocks = [(root, bytes), (leaf, b"cd".to_vec())].into();
        assert_eq!(read_all(root, &blocks).expect("inline data, then links"), b"abcd");
    }

    #[test]
    fn reader_bounds_depth() {
        let leaf = raw_cid(b"x");
        let mut blocks: HashMap<Cid, Vec<u8>> = [(leaf, b"x".to_vec())].into();
        let mut root = leaf;
        for _ in 0..MAX_DEPTH + 5 {
            let (cid, bytes) = file_node(&[(root, 1)], 1);
            blocks.insert(cid, bytes);
            root = cid;
        }
        assert!(matches!(read_all(root, &blocks), Err(UnixfsError::TooDeep)));
    }

    #[test]
    fn reader_bounds_pending_links() {
        let leaf = raw_cid(b"x");
        let (child, child_bytes) = file_node(&vec![(leaf, 1); 40_000], 40_000);
        let mut links = vec![(leaf, 1); 40_000];
        links[0] = (child, 40_000);
        let (root, root_bytes) = file_node(&links, 40_000 + 39_999);
        assert!(root_bytes.len() <= MAX_BLOCK);
        let blocks = [(root, root_bytes), (child, child_bytes), (leaf, b"x".to_vec())].into();
        let err = read_all(root, &blocks).expect_err("80 000 CIDs pending");
        assert!(matches!(err, UnixfsError::TooManyLinks { pending: 79_999 }), "{err}");
    }

    #[test]
    fn links_of_blocks() {
        let (root, blocks) = build(Layout::kubo(), &file_bytes(700_000));
        let found = links(&root, &blocks[&root]);
        assert_eq!(found.len(), 3);
        assert!(found.iter().all(|cid| blocks.contains_key(cid)));
        let leaf = found[0];
        assert!(links(&leaf, &blocks[&leaf]).is_empty(), "a dag-pb leaf has no links");
        assert!(links(&raw_cid(b"\x12\x05"), b"\x12\x05").is_empty(), "raw");
        assert!(links(&cid_of(DAG_PB, b"\xff"), b"\xff").is_empty(), "undecodable");
    }

    #[test]
    fn dag_pb_is_canonical_and_decodes_any_order() {
        let link = PbLink { cid: raw_cid(b"x"), name: Some(String::new()), size: Some(1) };
        let node = PbNode { links: vec![link.clone()], data: Some(vec![8, 2]) };
        let bytes = encode(&node);
        let cid = link.cid.to_bytes();
        let mut expected = vec![0x12, 42, 0x0a, 36];
        expected.extend_from_slice(&cid);
        expected.extend_from_slice(&[0x12, 0, 0x18, 1, 0x0a, 2, 8, 2]);
        assert_eq!(bytes, expected, "links first; Hash, Name, Tsize");
        // Data first, and Tsize before Name before Hash: the same node.
        let mut reordered = vec![0x0a, 2, 8, 2, 0x12, 42, 0x18, 1, 0x12, 0, 0x0a, 36];
        reordered.extend_from_slice(&cid);
        assert_eq!(decode(&reordered).expect("any order"), node);
        assert_eq!(decode(&[]).expect("empty"), PbNode::default());
    }

    #[test]
    fn dag_pb_rejects_malformed_bytes() {
        let cid = raw_cid(b"x").to_bytes();
        let link = |body: &[u8]| [&[0x12, body.len() as u8][..], body].concat();
        let hash = [&[0x0a, cid.len() as u8][..], &cid].concat();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated varint", vec![0x0a, 0x80]),
            ("length past the end", vec![0x0a, 5, 1]),
            ("varint over 64 bits", [&[0x0a][..], &[0xff; 10], &[1]].concat()),
            ("unknown field", vec![0x1a, 0]),
            ("wrong wire type", vec![0x08, 1]),
            ("fixed64 wire type", vec![0x09, 0, 0, 0, 0, 0, 0, 0, 0]),
            ("two Data", vec![0x0a, 0, 0x0a, 0]),
            ("link without Hash", link(&[0x12, 0])),
            ("invalid CID", link(&[0x0a, 3, 1, 2, 3])),
            ("bytes after the CID", link(&[&[0x0a, cid.len() as u8 + 1][..], &cid, &[0]].concat())),
            ("two Hashes", link(&[hash.clone(), hash.clone()].concat())),
            ("name not UTF-8", link(&[&hash[..], &[0x12, 1, 0xff]].concat())),
            ("two Tsizes", link(&[&hash[..], &[0x18, 1, 0x18, 1]].concat())),
        ];
        for (what, bytes) in cases {
            assert!(matches!(decode(&bytes), Err(UnixfsError::Malformed(_))), "{what}");
        }
        let big = vec![0; MAX_BLOCK + 1];
        assert!(matches!(decode(&big), Err(UnixfsError::TooLarge { .. })));
    }

    #[test]
    fn unixfs_data_matches_kubo_and_helia_bytes() {
        let data = Data {
            r#type: DataType::File as i32,
            filesize: Some(3),
            blocksizes: vec![1, 2],
            ..Data::default()
        };
        assert_eq!(data.encode_to_vec(), [0x08, 2, 0x18, 3, 0x20, 1, 0x20, 2], "unpacked");
        let raw = Data { r#type: DataType::Raw as i32, ..Data::default() };
        assert_eq!(raw.encode_to_vec(), [0x08, 0], "Type is written even when 0");
    }

    #[test]
    fn directories_resolve_and_tell_kinds() {
        let (a, b) = (raw_cid(b"a"), raw_cid(b"b"));
        let entry = |name: &str, cid| PbLink { cid, name: Some(name.into()), size: Some(1) };
        let dir = encode(&PbNode {
            links: vec![entry("a.txt", a), entry("b.txt", b)],
            data: Some(typed(DataType::Directory).encode_to_vec()),
        });
        assert_eq!(resolve_child(&dir, "b.txt").expect("a directory"), Some(b));
        assert_eq!(resolve_child(&dir, "c.txt").expect("a directory"), None);
        let (_, shard) = pb_block(&typed(DataType::HamtShard), &[]);
        assert!(matches!(resolve_child(&shard, "a"), Err(UnixfsError::ShardedDirectory)));
        let (root, blocks) = build(Layout::kubo(), &file_bytes(700_000));
        let err = resolve_child(&blocks[&root], "a").expect_err("a file");
        assert!(matches!(err, UnixfsError::NotADirectory { what: "file" }), "{err}");

        assert_eq!(kind(&cid_of(DAG_PB, &dir), &dir).expect("dir"), Kind::Directory);
        assert_eq!(kind(&root, &blocks[&root]).expect("file"), Kind::File { size: 700_000 });
        assert_eq!(kind(&a, b"a").expect("raw"), Kind::Raw { size: 1 });
        let (_, link) = pb_block(&typed(DataType::Symlink), &[]);
        assert_eq!(kind(&cid_of(DAG_PB, &link), &link).expect("symlink"), Kind::Symlink);
        let cbor = Cid::new_v1(0x71, *a.hash());
        assert!(matches!(kind(&cbor, b"a"), Err(UnixfsError::UnsupportedCodec(0x71))));
    }

    /// A small seeded generator (SplitMix64) for the randomized tests: every run is the same,
    /// and it needs no dev-dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn coin(&mut self) -> bool {
            self.next() & 1 == 1
        }

        fn bytes(&mut self, max: usize) -> Vec<u8> {
            (0..self.below(max + 1)).map(|_| self.next() as u8).collect()
        }

        fn cid(&mut self) -> Cid {
            let digest: [u8; 32] = std::array::from_fn(|_| self.next() as u8);
            let hash = Multihash::<64>::wrap(0x12, &digest).expect("32 bytes fit");
            match self.below(4) {
                0 => Cid::new_v0(hash).expect("a SHA2-256 hash"),
                1 => Cid::new_v1(RAW, hash),
                2 => Cid::new_v1(DAG_PB, hash),
                _ => Cid::new_v1(0x71, hash),
            }
        }

        fn node(&mut self) -> PbNode {
            const CHARS: [char; 6] = ['a', 'Z', '\0', 'é', '☃', '/'];
            let links = (0..self.below(6))
                .map(|_| PbLink {
                    cid: self.cid(),
                    name: self
                        .coin()
                        .then(|| (0..self.below(8)).map(|_| CHARS[self.below(6)]).collect()),
                    size: self.coin().then(|| self.next() >> self.below(64)),
                })
                .collect();
            PbNode { links, data: self.coin().then(|| self.bytes(64)) }
        }
    }

    /// Runs every decoder on `bytes`; none may panic.
    fn decode_everything(bytes: &[u8]) {
        let pb = cid_of(DAG_PB, bytes);
        let _ = decode(bytes);
        let _ = links(&pb, bytes);
        let _ = kind(&pb, bytes);
        let _ = resolve_child(bytes, "");
        let mut reader = FileReader::new(pb);
        if let Ok(Some(_)) | Ok(None) = reader.feed(&pb, bytes) {
            let _ = reader.upcoming(3);
            let _ = reader.finish();
        }
    }

    #[test]
    fn dag_pb_round_trips() {
        let mut rng = Rng(2);
        for _ in 0..1000 {
            let node = rng.node();
            assert_eq!(decode(&encode(&node)).expect("our own encoding"), node);
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(3);
        for _ in 0..5000 {
            decode_everything(&rng.bytes(300));
        }
    }

    /// Valid blocks with a few bytes changed, then cut short.
    #[test]
    fn mutated_blocks_never_panic() {
        let mut rng = Rng(4);
        let leaf = raw_cid(b"x");
        let file = file_node(&[(leaf, 1), (leaf, 1)], 2).1;
        for _ in 0..3000 {
            let mut bytes = if rng.coin() { encode(&rng.node()) } else { file.clone() };
            for _ in 0..1 + rng.below(3) {
                if !bytes.is_empty() {
                    let i = rng.below(bytes.len());
                    bytes[i] ^= rng.next() as u8;
                }
            }
            decode_everything(&bytes);
            bytes.truncate(rng.below(bytes.len() + 1));
            decode_everything(&bytes);
        }
    }

    /// A shard node of `fanout` (murmur3-x64-64 unless `hash` says) over named links.
    fn shard_node(fanout: u64, hash: u64, links: &[(&str, Cid)]) -> Vec<u8> {
        let data = Data {
            r#type: DataType::HamtShard as i32,
            hash_type: Some(hash),
            fanout: Some(fanout),
            ..Data::default()
        };
        let links = links
            .iter()
            .map(|&(name, cid)| PbLink { cid, name: Some(name.into()), size: Some(1) })
            .collect();
        encode(&PbNode { links, data: Some(data.encode_to_vec()) })
    }

    #[test]
    fn a_sharded_directory_is_read_by_the_hash_of_a_name() {
        // murmur3 x64 128 of "hello", seed 0: cbd8a7b341bd9b02 5b1e906a48ae1d19 (h1, h2).
        assert_eq!(name_hash("hello"), 0xcbd8_a7b3_41bd_9b02);
        let (a, b, deeper) = (raw_cid(b"a"), raw_cid(b"b"), raw_cid(b"deeper"));
        // "hello" sits in slot CB of a root of 256, and D8 of the node below.
        let root = shard_node(256, MURMUR3_X64_64, &[("0Fother", a), ("CB", deeper)]);
        let node = shard(&root).expect("a shard");
        assert_eq!(node.slot("hello", 0).expect("read"), Slot::Shard(deeper));
        assert_eq!(node.slot("other", 0).expect("read"), Slot::Empty, "not where its hash puts it");
        let below = shard_node(256, MURMUR3_X64_64, &[("D8hello", b)]);
        assert_eq!(shard(&below).expect("a shard").slot("hello", 1).expect("read"), Slot::Entry(b));
        assert_eq!(shard(&below).expect("a shard").slot("hello", 2).expect("read"), Slot::Empty);
        assert!(shard(&below).expect("a shard").slot("hello", 7).is_ok(), "the hash's last byte");
        assert!(shard(&below).expect("a shard").slot("hello", 8).is_err(), "past the hash");
        // A fanout of 16: one hex digit a level ("hello": C, then B).
        let narrow = shard_node(16, MURMUR3_X64_64, &[("Chello", a)]);
        assert_eq!(
            shard(&narrow).expect("a shard").slot("hello", 0).expect("read"),
            Slot::Entry(a)
        );
        let (entries, nodes) = shard(&root).expect("a shard").split();
        assert_eq!(nodes, [deeper]);
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].name.as_deref(), entries[0].cid), (Some("other"), a));

        for (block, why) in [
            (shard_node(256, 0x11, &[]), "not murmur3"),
            (shard_node(100, MURMUR3_X64_64, &[]), "fanout 100"),
            (shard_node(2048, MURMUR3_X64_64, &[]), "fanout 2048"),
            (shard_node(256, MURMUR3_X64_64, &[("zzname", a)]), "not by a slot"),
            (shard_node(8, MURMUR3_X64_64, &[("9name", a)]), "not by a slot"),
            (shard_node(256, MURMUR3_X64_64, &[("A", a)]), "not by a slot"),
        ] {
            let err = shard(&block).expect_err(why).to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
        let dir = encode(&PbNode {
            links: vec![],
            data: Some(typed(DataType::Directory).encode_to_vec()),
        });
        let err = shard(&dir).expect_err("a plain directory").to_string();
        assert!(err.contains("a UnixFS directory, not a shard"), "{err}");
    }
}
