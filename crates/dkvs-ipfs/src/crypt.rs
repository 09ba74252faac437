//! Files encrypted with the account's key before their blocks are made.
//!
//! An encrypted file is an ordinary UnixFS file (any IPFS peer stores, serves and fetches it)
//! whose bytes are a header leaf and then one ciphertext leaf per chunk of plaintext:
//!
//! ```text
//! leaf 0   header: "dkvs-enc" | version 1 | owner account id (u8 length, text) | salt (32) | chunk (u32 BE)
//! leaf i+1 XChaCha20-Poly1305 of chunk i: nonce (24) | ciphertext | tag (16)
//!          associated data: "dkvs-ipfs-chunk-v1" | salt | i (u64 BE) | 1 if last else 0
//! ```
//!
//! The file key is HKDF of the account's files key (`derive_symmetric_key("dkvs-ipfs-files-v1")`)
//! with the file's random salt, so every file has its own key, and the owner rederives it from
//! the header alone. Each leaf is checked by its CID (the CID is of the ciphertext) and opens on
//! its own with its index; a leaf moved, dropped or cut off at the end fails to open. A file
//! of no bytes still has one (empty) chunk, so that its end is sealed too.
//!
//! The header is public: it names the owner's account, so that an account the file was shared
//! with knows where to find the sealed key (a record under the owner's keys). The sizes of
//! the file and its chunks are visible too, as they are for any encrypted file.

use dkvs_account::seal::SymmetricKey;
use dkvs_account::{AccountId, Keypair};

/// The first bytes of an encrypted file.
pub const MAGIC: &[u8; 8] = b"dkvs-enc";
const VERSION: u8 = 1;
const FILES_CONTEXT: &str = "dkvs-ipfs-files-v1";
const FILE_CONTEXT: &str = "dkvs-ipfs-file-v1";
const CHUNK_AAD: &[u8] = b"dkvs-ipfs-chunk-v1";
/// The largest plaintext chunk a header may name (a leaf stays well below the block limit).
pub const MAX_CHUNK: u32 = 1 << 20;

/// Why an encrypted file could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptError {
    /// The header is not one this code reads.
    #[error("malformed encryption header: {0}")]
    Header(&'static str),
    /// A chunk did not open: another key, or bytes altered, moved or cut off.
    #[error("chunk {index} does not open with this key (another key, or altered, moved or cut)")]
    Chunk {
        /// The chunk's index.
        index: u64,
    },
    /// A leaf after the one sealed as last, or the file ended before it.
    #[error("the encrypted file does not end where it was sealed to end")]
    Truncated,
}

/// An encrypted file's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The account whose key encrypted it.
    pub owner: AccountId,
    /// The file's salt, naming its key.
    pub salt: [u8; 32],
    /// Plaintext bytes per chunk.
    pub chunk: u32,
}

impl Header {
    /// The header leaf's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let owner = self.owner.to_string();
        let mut out = Vec::with_capacity(8 + 1 + 1 + owner.len() + 32 + 4);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(u8::try_from(owner.len()).expect("an account id is under 256 characters"));
        out.extend_from_slice(owner.as_bytes());
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.chunk.to_be_bytes());
        out
    }

    /// The header in a file's first leaf: `Ok(None)` when the leaf is not one (a plain file).
    pub fn parse(leaf: &[u8]) -> Result<Option<Header>, CryptError> {
        let Some(rest) = leaf.strip_prefix(MAGIC) else { return Ok(None) };
        let (&version, rest) = rest.split_first().ok_or(CryptError::Header("cut short"))?;
        if version != VERSION {
            return Err(CryptError::Header("unknown version"));
        }
        let (&len, rest) = rest.split_first().ok_or(CryptError::Header("cut short"))?;
        if rest.len() != usize::from(len) + 32 + 4 {
            return Err(CryptError::Header("wrong length"));
        }
        let (owner, rest) = rest.split_at(usize::from(len));
        let owner = std::str::from_utf8(owner)
            .ok()
            .and_then(|s| s.parse::<AccountId>().ok())
            .ok_or(CryptError::Header("the owner is not an account id"))?;
        let (salt, chunk) = rest.split_at(32);
        let chunk = u32::from_be_bytes(chunk.try_into().expect("4 bytes"));
        if chunk == 0 || chunk > MAX_CHUNK {
            return Err(CryptError::Header("chunk size out of range"));
        }
        Ok(Some(Header { owner, salt: salt.try_into().expect("32 bytes"), chunk }))
    }

    /// This file's key, for its owner.
    pub fn owner_key(&self, owner: &Keypair) -> SymmetricKey {
        owner.derive_symmetric_key(FILES_CONTEXT).derive(&self.salt, FILE_CONTEXT)
    }

    /// Where the plaintext bytes `part` lie in a file whose header leaf is `header_len` bytes:
    /// the index of the chunk `part.start` falls in, and the stored bytes from that chunk's
    /// leaf to the end of the leaf that holds `part`'s last byte (every leaf but the last
    /// holds a whole chunk, [`Opener`]).
    pub fn stored_part(
        &self,
        header_len: u64,
        part: std::ops::Range<u64>,
    ) -> (u64, std::ops::Range<u64>) {
        let chunk = u64::from(self.chunk);
        let leaf = chunk + SymmetricKey::OVERHEAD as u64;
        let (first, end) = (part.start / chunk, part.end.div_ceil(chunk));
        let at = |index: u64| header_len.saturating_add(index.saturating_mul(leaf));
        (first, at(first)..at(end))
    }

    /// The plaintext bytes of a file of `stored` bytes whose header leaf is `header_len`
    /// bytes: every chunk but the last is whole ([`Opener`] opens no other file), and each
    /// leaf carries [`SymmetricKey::OVERHEAD`] bytes more than its chunk.
    pub fn plain_size(&self, header_len: u64, stored: u64) -> u64 {
        let sealed = stored.saturating_sub(header_len);
        let leaves = sealed.div_ceil(u64::from(self.chunk) + SymmetricKey::OVERHEAD as u64);
        sealed.saturating_sub(leaves * SymmetricKey::OVERHEAD as u64)
    }
}

fn aad(salt: &[u8; 32], index: u64, last: bool) -> Vec<u8> {
    let mut aad = Vec::with_capacity(CHUNK_AAD.len() + 32 + 9);
    aad.extend_from_slice(CHUNK_AAD);
    aad.extend_from_slice(salt);
    aad.extend_from_slice(&index.to_be_bytes());
    aad.push(u8::from(last));
    aad
}

/// Encrypts a file chunk by chunk.
pub struct Sealer {
    key: SymmetricKey,
    header: Header,
    index: u64,
}

impl Sealer {
    /// A new file of `owner`'s, with a fresh salt, in chunks of `chunk` plaintext bytes.
    pub fn new(owner: &Keypair, chunk: u32) -> Sealer {
        let header = Header {
            owner: owner.account_id(),
            salt: rand::random(),
            chunk: chunk.clamp(1, MAX_CHUNK),
        };
        Sealer { key: header.owner_key(owner), header, index: 0 }
    }

    /// The header: the file's first leaf.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file's key (to share it).
    pub fn key(&self) -> &SymmetricKey {
        &self.key
    }

    /// The leaf of the next chunk; `last` for the final one (there is always one, maybe empty).
    pub fn seal(&mut self, chunk: &[u8], last: bool) -> Vec<u8> {
        let leaf = self.key.encrypt(chunk, &aad(&self.header.salt, self.index, last));
        self.index += 1;
        leaf
    }
}

/// Decrypts a file leaf by leaf, in order.
pub struct Opener {
    key: SymmetricKey,
    salt: [u8; 32],
    chunk: u32,
    index: u64,
    ended: bool,
}

impl Opener {
    /// Opens the file of `header` with its key (the owner's [`Header::owner_key`], or a
    /// shared one).
    pub fn new(key: SymmetricKey, header: &Header) -> Opener {
        Opener { key, salt: header.salt, chunk: header.chunk, index: 0, ended: false }
    }

    /// Opens from chunk `index` on (the leaves before it are not read): for a part of a file.
    pub fn from_chunk(self, index: u64) -> Opener {
        Opener { index, ..self }
    }

    /// The plaintext offset of the next leaf's bytes.
    pub fn position(&self) -> u64 {
        self.index.saturating_mul(u64::from(self.chunk))
    }

    /// The plaintext of the next leaf; `last` when the file has no leaf after it. Every leaf
    /// but the last holds a whole chunk, as [`Sealer`] makes them: so a chunk's offset in the
    /// file follows from its index, and a part of a file is read from the leaves it needs.
    pub fn open(&mut self, leaf: &[u8], last: bool) -> Result<Vec<u8>, CryptError> {
        if self.ended {
            return Err(CryptError::Truncated);
        }
        let index = self.index;
        let whole = self.chunk as usize + SymmetricKey::OVERHEAD;
        if leaf.len() > whole || (!last && leaf.len() != whole) {
            return Err(CryptError::Chunk { index });
        }
        let plain = self
            .key
            .decrypt(leaf, &aad(&self.salt, index, last))
            .map_err(|_| CryptError::Chunk { index })?;
        self.index += 1;
        self.ended = last;
        Ok(plain)
    }

    /// Whether the leaf sealed as last was opened.
    pub fn finish(&self) -> Result<(), CryptError> {
        if self.ended { Ok(()) } else { Err(CryptError::Truncated) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dkvs_account::KeyType;

    fn seal_all(owner: &Keypair, data: &[u8], chunk: u32) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut sealer = Sealer::new(owner, chunk);
        let chunks: Vec<&[u8]> =
            if data.is_empty() { vec![&[]] } else { data.chunks(chunk as usize).collect() };
        let n = chunks.len();
        let leaves = chunks.iter().enumerate().map(|(i, c)| sealer.seal(c, i + 1 == n)).collect();
        (sealer.header().encode(), leaves)
    }

    fn open_all(
        key: SymmetricKey,
        header: &Header,
        leaves: &[Vec<u8>],
    ) -> Result<Vec<u8>, CryptError> {
        let mut opener = Opener::new(key, header);
        let mut out = Vec::new();
        for (i, leaf) in leaves.iter().enumerate() {
            out.extend(opener.open(leaf, i + 1 == leaves.len())?);
        }
        opener.finish()?;
        Ok(out)
    }

    #[test]
    fn the_owner_opens_what_it_sealed_and_nobody_else_does() {
        for ty in [KeyType::Ed25519, KeyType::Secp256k1] {
            let owner = Keypair::generate(ty);
            for data in [&b""[..], b"x", &[9u8; 1000]] {
                let (header, leaves) = seal_all(&owner, data, 100);
                let header = Header::parse(&header).expect("parses").expect("encrypted");
                assert_eq!(header.owner, owner.account_id());
                assert_eq!(
                    open_all(header.owner_key(&owner), &header, &leaves).as_deref(),
                    Ok(data)
                );
                let other = Keypair::generate(ty);
                assert_eq!(
                    open_all(header.owner_key(&other), &header, &leaves),
                    Err(CryptError::Chunk { index: 0 })
                );
            }
        }
    }

    #[test]
    fn moved_dropped_or_cut_leaves_fail() {
        let owner = Keypair::generate(KeyType::Ed25519);
        let (header, mut leaves) = seal_all(&owner, &[1u8; 350], 100);
        let header = Header::parse(&header).expect("parses").expect("encrypted");
        let key = || header.owner_key(&owner);
        assert_eq!(leaves.len(), 4);
        let mut swapped = leaves.clone();
        swapped.swap(1, 2);
        assert_eq!(open_all(key(), &header, &swapped), Err(CryptError::Chunk { index: 1 }));
        // Cut after the third leaf: the third was not sealed as last.
        assert_eq!(open_all(key(), &header, &leaves[..3]), Err(CryptError::Chunk { index: 2 }));
        // A leaf after the last.
        let mut opener = Opener::new(key(), &header);
        for (i, leaf) in leaves.iter().enumerate() {
            opener.open(leaf, i == 3).expect("opens");
        }
        assert_eq!(opener.open(&leaves[0], true), Err(CryptError::Truncated));
        // Not ended.
        let mut opener = Opener::new(key(), &header);
        opener.open(&leaves[0], false).expect("opens");
        assert_eq!(opener.finish(), Err(CryptError::Truncated));
        // An altered byte.
        leaves[0][30] ^= 1;
        assert_eq!(open_all(key(), &header, &leaves), Err(CryptError::Chunk { index: 0 }));
    }

    #[test]
    fn a_part_opens_from_its_chunk_and_sizes_follow_from_whole_chunks() {
        let owner = Keypair::generate(KeyType::Ed25519);
        let data: Vec<u8> = (0..350u32).map(|i| i as u8).collect();
        let (header_leaf, leaves) = seal_all(&owner, &data, 100);
        let header = Header::parse(&header_leaf).expect("parses").expect("encrypted");
        // Bytes 210..310 lie in chunks 2 and 3: the leaves after the header and two others.
        let (h, leaf) = (header_leaf.len() as u64, leaves[0].len() as u64);
        assert_eq!(header.stored_part(h, 210..310), (2, h + 2 * leaf..h + 4 * leaf));
        let mut opener = Opener::new(header.owner_key(&owner), &header).from_chunk(2);
        assert_eq!(opener.position(), 200);
        assert_eq!(opener.open(&leaves[2], false).expect("opens"), &data[200..300]);
        assert_eq!(opener.open(&leaves[3], true).expect("opens"), &data[300..]);
        opener.finish().expect("ended");
        // A leaf opened at another index does not open.
        let mut wrong = Opener::new(header.owner_key(&owner), &header).from_chunk(1);
        assert_eq!(wrong.open(&leaves[2], false), Err(CryptError::Chunk { index: 1 }));
        for len in [0usize, 1, 99, 100, 101, 350, 400] {
            let (h, leaves) = seal_all(&owner, &data[..len.min(350)], 100);
            let stored = h.len() + leaves.iter().map(Vec::len).sum::<usize>();
            let parsed = Header::parse(&h).expect("parses").expect("encrypted");
            assert_eq!(parsed.plain_size(h.len() as u64, stored as u64), len.min(350) as u64);
        }
        // A chunk short of whole before the last, sealed by the key's owner all the same:
        // refused, or a part of such a file would be read from the wrong offset.
        let mut sealer = Sealer::new(&owner, 100);
        let short = sealer.seal(&[7u8; 50], false);
        let end = sealer.seal(&[7u8; 100], true);
        let header = sealer.header().clone();
        let mut opener = Opener::new(header.owner_key(&owner), &header);
        assert_eq!(opener.open(&short, false), Err(CryptError::Chunk { index: 0 }));
        let mut opener = Opener::new(header.owner_key(&owner), &header).from_chunk(1);
        assert_eq!(opener.open(&end, true).expect("a whole last chunk"), [7u8; 100]);
    }

    #[test]
    fn headers_are_checked() {
        let owner = Keypair::generate(KeyType::Secp256k1);
        let header = Sealer::new(&owner, 262_144).header().encode();
        assert!(Header::parse(&header).expect("parses").is_some());
        assert_eq!(Header::parse(b"plain text"), Ok(None));
        for (bad, why) in [
            (header[..header.len() - 1].to_vec(), "wrong length"),
            ([&header[..8], &[2]].concat(), "unknown version"),
            ([&header[..9]].concat(), "cut short"),
        ] {
            assert_eq!(Header::parse(&bad), Err(CryptError::Header(why)));
        }
        let mut zero_chunk = header.clone();
        let n = zero_chunk.len();
        zero_chunk[n - 4..].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(Header::parse(&zero_chunk), Err(CryptError::Header("chunk size out of range")));
        let mut bad_owner = header;
        bad_owner[10] = b'!';
        assert_eq!(
            Header::parse(&bad_owner),
            Err(CryptError::Header("the owner is not an account id"))
        );
    }
}
