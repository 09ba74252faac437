//! The bitswap 1.2.0 wire format (`/ipfs/bitswap/1.2.0`): one protobuf `Message` per frame,
//! each frame prefixed by its length as an unsigned varint.
//!
//! Streams are one-way, as Kubo and Helia use them: a peer writes messages on a stream it
//! opened and reads the other side's on streams the other side opened; nobody answers on the
//! stream it read from.
//!
//! Decoding is where a peer's bytes are first trusted with anything, so it bounds everything
//! before it allocates: the frame ([`MAX_MESSAGE`]), the entries, the blocks. A block is kept
//! only with the CID it hashes to (rebuilt from its prefix and its SHA2-256 digest), so what
//! reaches the exchange is checked already: a peer cannot make us hold bytes under the wrong
//! name.

use cid::Cid;
use cid::multihash::Multihash;
use dkvs_net::codec::count_field;
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use prost::Message as _;
use sha2::{Digest as _, Sha256};

use crate::blockstore::{MAX_BLOCK, SHA2_256};

/// The protocol name.
pub const PROTOCOL: &str = "/ipfs/bitswap/1.2.0";
/// The largest message read or written: 4 MiB, what Kubo and Helia accept.
pub const MAX_MESSAGE: usize = 4 << 20;
/// The most wantlist entries, blocks or presences one message may carry.
pub const MAX_ENTRIES: usize = 8192;
/// Blocks this size or smaller are sent in answer to a want-have, as Kubo and Helia do.
pub const SEND_SMALL_BLOCK: usize = 1024;

/// The protobuf messages, as the bitswap spec defines them.
#[allow(missing_docs)]
pub mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Message {
        #[prost(message, optional, tag = "1")]
        pub wantlist: Option<Wantlist>,
        /// Bitswap 1.0.0 blocks: never sent, ignored when received.
        #[prost(bytes = "vec", repeated, tag = "2")]
        pub blocks: Vec<Vec<u8>>,
        #[prost(message, repeated, tag = "3")]
        pub payload: Vec<Block>,
        #[prost(message, repeated, tag = "4")]
        pub block_presences: Vec<BlockPresence>,
        #[prost(int32, tag = "5")]
        pub pending_bytes: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Wantlist {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<Entry>,
        #[prost(bool, tag = "2")]
        pub full: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        #[prost(bytes = "vec", tag = "1")]
        pub block: Vec<u8>,
        #[prost(int32, tag = "2")]
        pub priority: i32,
        #[prost(bool, tag = "3")]
        pub cancel: bool,
        /// 0: block, 1: have.
        #[prost(int32, tag = "4")]
        pub want_type: i32,
        #[prost(bool, tag = "5")]
        pub send_dont_have: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Block {
        #[prost(bytes = "vec", tag = "1")]
        pub prefix: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub data: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct BlockPresence {
        #[prost(bytes = "vec", tag = "1")]
        pub cid: Vec<u8>,
        /// 0: have, 1: don't have.
        #[prost(int32, tag = "2")]
        pub r#type: i32,
    }
}

/// What a want asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WantType {
    /// The block itself.
    Block,
    /// Whether the peer has it.
    Have,
}

/// One wantlist entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    /// The block wanted.
    pub cid: Cid,
    /// Block or have.
    pub want_type: WantType,
    /// Withdraws an earlier want of this CID.
    pub cancel: bool,
    /// Answer "don't have" rather than stay silent.
    pub send_dont_have: bool,
    /// Higher first.
    pub priority: i32,
}

impl Want {
    /// A want of `want_type` for `cid` that asks to be told when the peer does not have it.
    pub fn new(cid: Cid, want_type: WantType) -> Want {
        Want { cid, want_type, cancel: false, send_dont_have: true, priority: 1 }
    }

    /// The cancel of an earlier want of `cid`.
    pub fn cancel(cid: Cid) -> Want {
        Want { cid, want_type: WantType::Block, cancel: true, send_dont_have: false, priority: 1 }
    }
}

/// A bitswap message, decoded and checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// Wantlist entries.
    pub wants: Vec<Want>,
    /// The wantlist replaces the sender's earlier one (else it adds to it).
    pub full: bool,
    /// Blocks, each with the CID its bytes hash to.
    pub blocks: Vec<(Cid, Vec<u8>)>,
    /// Presences: a CID and whether the sender has it.
    pub presences: Vec<(Cid, bool)>,
}

/// Why a message was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Over [`MAX_MESSAGE`].
    #[error("a bitswap message of {0} bytes, over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    /// More than [`MAX_ENTRIES`] of something.
    #[error("a bitswap message with {count} {what}, over the {MAX_ENTRIES} limit")]
    TooMany {
        /// What there were too many of.
        what: &'static str,
        /// How many.
        count: usize,
    },
    /// Not a bitswap protobuf.
    #[error("malformed bitswap message: {0}")]
    Malformed(String),
    /// The frame's length prefix is not a valid varint.
    #[error("malformed bitswap frame length")]
    BadLength,
    /// The stream failed.
    #[error("bitswap stream: {0}")]
    Io(#[from] std::io::Error),
}

impl Message {
    /// This message as frames a peer takes: at most `max_entries` wants and as many
    /// presences each, and blocks up to `max_bytes` a frame (a block larger than that goes
    /// alone).
    pub fn split(self, max_entries: usize, max_bytes: usize) -> Vec<Message> {
        let max_entries = max_entries.max(1);
        let mut frames = vec![Message { full: self.full, ..Message::default() }];
        let mut bytes = 0;
        for want in self.wants {
            if frames.last().is_some_and(|f| f.wants.len() >= max_entries) {
                frames.push(Message::default());
            }
            frames.last_mut().expect("one frame at least").wants.push(want);
        }
        for presence in self.presences {
            if frames.last().is_some_and(|f| f.presences.len() >= max_entries) {
                frames.push(Message::default());
            }
            frames.last_mut().expect("one frame at least").presences.push(presence);
        }
        for block in self.blocks {
            let last = frames.last().expect("one frame at least");
            if !last.blocks.is_empty() && bytes + block.1.len() > max_bytes
                || last.blocks.len() >= max_entries
            {
                frames.push(Message::default());
                bytes = 0;
            }
            bytes += block.1.len();
            frames.last_mut().expect("one frame at least").blocks.push(block);
        }
        frames
    }

    /// True when it carries nothing.
    pub fn is_empty(&self) -> bool {
        self.wants.is_empty() && self.blocks.is_empty() && self.presences.is_empty()
    }

    /// The protobuf bytes (without the length prefix).
    pub fn encode(&self) -> Vec<u8> {
        let wantlist = (!self.wants.is_empty() || self.full).then(|| pb::Wantlist {
            entries: self
                .wants
                .iter()
                .map(|w| pb::Entry {
                    block: w.cid.to_bytes(),
                    priority: w.priority,
                    cancel: w.cancel,
                    want_type: match w.want_type {
                        WantType::Block => 0,
                        WantType::Have => 1,
                    },
                    send_dont_have: w.send_dont_have,
                })
                .collect(),
            full: self.full,
        });
        pb::Message {
            wantlist,
            blocks: Vec::new(),
            payload: self
                .blocks
                .iter()
                .map(|(cid, data)| pb::Block { prefix: prefix(cid), data: data.clone() })
                .collect(),
            block_presences: self
                .presences
                .iter()
                .map(|(cid, have)| pb::BlockPresence {
                    cid: cid.to_bytes(),
                    r#type: if *have { 0 } else { 1 },
                })
                .collect(),
            pending_bytes: 0,
        }
        .encode_to_vec()
    }

    /// Decodes and checks a message. A block whose prefix is malformed or not SHA2-256 is
    /// dropped (it cannot be checked); every kept block carries the CID its bytes hash to.
    pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(WireError::TooLarge(bytes.len()));
        }
        // Counted on the wire before decoding: an empty entry is two bytes there and tens in
        // memory. Bytes the count cannot read (groups, which decoding would skip) are refused.
        let count = |path: &[u32]| {
            count_field(bytes, path)
                .ok_or_else(|| WireError::Malformed("not protobuf (or with groups)".into()))
        };
        for (what, count) in [
            ("wantlist entries", count(&[1, 1])?),
            ("blocks", count(&[2])? + count(&[3])?),
            ("presences", count(&[4])?),
        ] {
            if count > MAX_ENTRIES {
                return Err(WireError::TooMany { what, count });
            }
        }
        let raw = pb::Message::decode(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
        let cid = |bytes: &[u8]| {
            Cid::try_from(bytes).map_err(|e| WireError::Malformed(format!("a CID: {e}")))
        };
        let mut message = Message::default();
        if let Some(wantlist) = raw.wantlist {
            message.full = wantlist.full;
            for entry in wantlist.entries {
                message.wants.push(Want {
                    cid: cid(&entry.block)?,
                    want_type: if entry.want_type == 1 { WantType::Have } else { WantType::Block },
                    cancel: entry.cancel,
                    send_dont_have: entry.send_dont_have,
                    priority: entry.priority,
                });
            }
        }
        for block in raw.payload {
            if block.data.len() > MAX_BLOCK {
                continue;
            }
            if let Some(cid) = cid_from_prefix(&block.prefix, &block.data) {
                message.blocks.push((cid, block.data));
            }
        }
        for presence in raw.block_presences {
            message.presences.push((cid(&presence.cid)?, presence.r#type == 0));
        }
        Ok(message)
    }
}

/// The CID prefix bitswap sends with a block: version, codec, hash code and digest length,
/// each an unsigned varint. A CIDv0 is `0 0x70 0x12 32`.
pub fn prefix(cid: &Cid) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    for n in [u64::from(cid.version()), cid.codec(), cid.hash().code(), cid.hash().size().into()] {
        write_varint(n, &mut out);
    }
    out
}

/// The CID of `data` under `prefix`, or `None` when the prefix is malformed or names a hash
/// other than SHA2-256 (which this node cannot check).
pub fn cid_from_prefix(prefix: &[u8], data: &[u8]) -> Option<Cid> {
    let mut rest = prefix;
    let mut next = || {
        let (n, tail) = read_varint(rest)?;
        rest = tail;
        Some(n)
    };
    let (version, codec, code, len) = (next()?, next()?, next()?, next()?);
    if code != SHA2_256 || len != 32 || !rest.is_empty() {
        return None;
    }
    let hash = Multihash::<64>::wrap(SHA2_256, &Sha256::digest(data)).ok()?;
    match version {
        0 if codec == 0x70 => Cid::new_v0(hash).ok(),
        1 => Some(Cid::new_v1(codec, hash)),
        _ => None,
    }
}

fn write_varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A varint from the front of `bytes` and the rest, or `None` if malformed (over 9 bytes,
/// as multiformats allows, or cut short).
fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut n = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(9) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((n, &bytes[i + 1..]));
        }
    }
    None
}

/// Reads one frame: `Ok(None)` at a clean end of the stream. The length is checked against
/// [`MAX_MESSAGE`] before anything is allocated.
pub async fn read_frame<R: AsyncRead + Unpin>(io: &mut R) -> Result<Option<Vec<u8>>, WireError> {
    match read_len(io).await? {
        None => Ok(None),
        Some(len) => Ok(Some(read_body(io, len).await?)),
    }
}

/// Reads a frame's length prefix: `Ok(None)` at a clean end of the stream; at most
/// [`MAX_MESSAGE`].
pub async fn read_len<R: AsyncRead + Unpin>(io: &mut R) -> Result<Option<usize>, WireError> {
    let mut len = 0usize;
    for i in 0..4 {
        let mut byte = [0u8; 1];
        match io.read(&mut byte).await? {
            0 if i == 0 => return Ok(None),
            0 => return Err(WireError::BadLength),
            _ => {}
        }
        len |= usize::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            if len > MAX_MESSAGE {
                return Err(WireError::TooLarge(len));
            }
            return Ok(Some(len));
        }
    }
    // Four varint bytes hold 2^28: anything longer is over the limit anyway.
    Err(WireError::TooLarge(usize::MAX))
}

/// Reads a frame's `len` bytes (after [`read_len`]).
pub async fn read_body<R: AsyncRead + Unpin>(io: &mut R, len: usize) -> Result<Vec<u8>, WireError> {
    let mut frame = vec![0u8; len];
    io.read_exact(&mut frame).await?;
    Ok(frame)
}

/// Writes one frame (length prefix and message) and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(io: &mut W, message: &[u8]) -> std::io::Result<()> {
    let mut header = Vec::with_capacity(5);
    write_varint(message.len() as u64, &mut header);
    io.write_all(&header).await?;
    io.write_all(message).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockstore::cid_of;

    #[test]
    fn prefix_of_a_cidv0_and_a_cidv1_round_trips() {
        let v1 = cid_of(0x55, b"hello");
        let v0 = Cid::new_v0(*cid_of(0x70, b"node").hash()).expect("sha256");
        assert_eq!(prefix(&v0), vec![0, 0x70, 0x12, 32]);
        assert_eq!(prefix(&v1), vec![1, 0x55, 0x12, 32]);
        assert_eq!(cid_from_prefix(&prefix(&v1), b"hello"), Some(v1));
        assert_eq!(cid_from_prefix(&prefix(&v0), b"node"), Some(v0));
        // Another hash (sha3-256, 0x16) cannot be checked here, nor can a cut prefix.
        assert_eq!(cid_from_prefix(&[1, 0x55, 0x16, 32], b"hello"), None);
        assert_eq!(cid_from_prefix(&[1, 0x55, 0x12], b"hello"), None);
        assert_eq!(cid_from_prefix(&[1, 0x55, 0x12, 32, 0], b"hello"), None);
    }

    #[test]
    fn a_message_round_trips_and_blocks_get_the_cid_of_their_bytes() {
        let a = cid_of(0x55, b"a");
        let message = Message {
            wants: vec![Want::new(a, WantType::Have), Want::cancel(cid_of(0x55, b"b"))],
            full: false,
            blocks: vec![(a, b"a".to_vec())],
            presences: vec![(cid_of(0x70, b"c"), false)],
        };
        assert_eq!(Message::decode(&message.encode()).expect("decodes"), message);

        // A block sent under a CID it does not hash to comes out under its real CID.
        let lie = pb::Message {
            payload: vec![pb::Block { prefix: prefix(&a), data: b"not a".to_vec() }],
            ..Default::default()
        };
        let decoded = Message::decode(&lie.encode_to_vec()).expect("decodes");
        assert_eq!(decoded.blocks, vec![(cid_of(0x55, b"not a"), b"not a".to_vec())]);
    }

    #[test]
    fn a_large_message_is_split_into_frames_a_peer_takes() {
        let cids: Vec<Cid> = (0..10u8).map(|i| cid_of(0x55, &[i])).collect();
        let message = Message {
            wants: cids.iter().map(|c| Want::new(*c, WantType::Have)).collect(),
            full: true,
            blocks: cids.iter().take(5).map(|c| (*c, vec![0u8; 400])).collect(),
            presences: cids.iter().map(|c| (*c, false)).collect(),
        };
        let frames = message.clone().split(4, 1000);
        assert!(frames.iter().all(|f| f.wants.len() <= 4 && f.presences.len() <= 4));
        assert!(frames.iter().all(|f| f.blocks.iter().map(|b| b.1.len()).sum::<usize>() <= 1000));
        assert!(frames[0].full, "the first frame says the wantlist is full");
        let mut joined = Message { full: true, ..Message::default() };
        for frame in frames {
            joined.wants.extend(frame.wants);
            joined.presences.extend(frame.presences);
            joined.blocks.extend(frame.blocks);
        }
        assert_eq!(joined, message, "nothing lost, nothing reordered");
        // A block over the byte bound goes alone.
        let big = Message { blocks: vec![(cids[0], vec![1; 5000])], ..Message::default() };
        assert_eq!(big.clone().split(4, 1000), vec![big]);
    }

    #[test]
    fn bad_messages_are_refused_by_name() {
        assert!(matches!(Message::decode(&[0xff; 7]), Err(WireError::Malformed(_))));
        let bad_cid = pb::Message {
            wantlist: Some(pb::Wantlist {
                entries: vec![pb::Entry { block: vec![1, 2, 3], ..Default::default() }],
                full: false,
            }),
            ..Default::default()
        };
        let err = Message::decode(&bad_cid.encode_to_vec()).expect_err("refused");
        assert!(err.to_string().contains("CID"), "{err}");
        let many = pb::Message {
            block_presences: vec![
                pb::BlockPresence {
                    cid: cid_of(0x55, b"x").to_bytes(),
                    r#type: 0
                };
                MAX_ENTRIES + 1
            ],
            ..Default::default()
        };
        assert!(matches!(
            Message::decode(&many.encode_to_vec()),
            Err(WireError::TooMany { what: "presences", .. })
        ));
    }

    #[test]
    fn frames_round_trip_and_oversized_lengths_are_refused_before_reading() {
        futures::executor::block_on(async {
            let mut buf = Vec::new();
            write_frame(&mut buf, b"one").await.expect("write");
            write_frame(&mut buf, &[7u8; 300]).await.expect("write");
            let mut reader = futures::io::Cursor::new(buf);
            assert_eq!(read_frame(&mut reader).await.expect("a frame"), Some(b"one".to_vec()));
            assert_eq!(read_frame(&mut reader).await.expect("a frame"), Some(vec![7u8; 300]));
            assert_eq!(read_frame(&mut reader).await.expect("the end"), None);

            // A length of 4 MiB + 1 with no bytes behind it: refused from the prefix alone.
            let mut header = Vec::new();
            write_varint(MAX_MESSAGE as u64 + 1, &mut header);
            let mut reader = futures::io::Cursor::new(header);
            assert!(matches!(read_frame(&mut reader).await, Err(WireError::TooLarge(_))));
            // A frame cut short is an error, not a clean end.
            let mut reader = futures::io::Cursor::new(vec![5u8, 1, 2]);
            assert!(matches!(read_frame(&mut reader).await, Err(WireError::Io(_))));
        });
    }
}
