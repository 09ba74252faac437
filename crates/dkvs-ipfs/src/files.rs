//! Files through a node that hosts [`Ipfs`]: [`add`] (chunk, encrypt, build the UnixFS DAG,
//! keep and pin it, tell peers and the IPFS DHT) and [`get`] (fetch block by block from any
//! peer, check each against its CID, decrypt, write out). Both run in constant memory
//! whatever the file's size: a few chunks at a time.

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use cid::Cid;
use dkvs_account::Keypair;
use dkvs_net::{NetError, Node};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::oneshot;

use crate::blockstore::{BlockError, BlockStore};
use crate::crypt::{CryptError, Header, Opener, Sealer};
use crate::exchange::Fetched;
use crate::service::Ipfs;
use crate::unixfs::{self, FileReader, FileWriter, Layout, UnixfsError};

/// Blocks a get asks for ahead of the one it needs next.
const WINDOW: usize = 32;

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
    /// The node does not host IPFS, or stopped.
    #[error("the node: {0}")]
    Node(#[from] NetError),
    /// Reading the source or writing the output failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
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
}

impl Default for GetOptions {
    fn default() -> GetOptions {
        GetOptions { account: None, raw: false, block_timeout: Duration::from_secs(60) }
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
    let store = store_of(node).await?;
    let account = account.cloned();
    let (added, cids) = tokio::task::spawn_blocking(move || {
        let layout = Layout::default();
        let mut writer = FileWriter::new(layout.clone());
        let mut cids = Vec::new();
        let mut keep = |blocks: Vec<unixfs::Block>| -> Result<(), IpfsError> {
            for block in blocks {
                store.put(&block.cid, &block.data)?;
                cids.push(block.cid);
            }
            Ok(())
        };
        let mut sealer = account.as_ref().map(|a| Sealer::new(a, layout.chunk as u32));
        if let Some(sealer) = &sealer {
            keep(writer.push_leaf(&sealer.header().encode()))?;
        }
        let mut read = 0u64;
        let mut chunk = vec![0u8; layout.chunk];
        let mut ahead = vec![0u8; layout.chunk];
        let mut n = read_full(&mut source, &mut chunk)?;
        loop {
            read += n as u64;
            progress(read);
            // One chunk ahead, to know which is last (an encrypted file seals its end).
            let next = if n == chunk.len() { read_full(&mut source, &mut ahead)? } else { 0 };
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
        store.pin(&root)?;
        Ok::<_, IpfsError>((Added { cid: root, stored, read }, cids))
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))??;
    let root = added.cid;
    node.with_extension(move |ipfs: &mut Ipfs, _| ipfs.announce(Some(root), &cids)).await?;
    Ok(added)
}

/// How the bytes of a file's leaves become output.
enum Output {
    /// Before the first leaf: plain or encrypted is not known yet.
    Start,
    Plain,
    Encrypted(Opener),
}

/// Fetches the file `root` (from this node's store, else from any peer), checks every block
/// against its CID, decrypts it if it is encrypted (unless `options.raw`), and writes it to
/// `out`. Fetched blocks are kept (not pinned). `progress` hears the bytes written so far.
pub async fn get<W: AsyncWrite + Unpin>(
    node: &Node,
    root: Cid,
    out: &mut W,
    options: &GetOptions,
    progress: impl Fn(u64),
) -> Result<Got, IpfsError> {
    let store = store_of(node).await?;
    let mut reader = FileReader::new(root);
    let mut pending: HashMap<Cid, oneshot::Receiver<Fetched>> = HashMap::new();
    let mut prefer = None;
    let mut output = Output::Start;
    let mut written = 0u64;
    while let Some(next) = reader.next_needed() {
        let missing: Vec<Cid> = reader
            .upcoming(WINDOW)
            .into_iter()
            .filter(|cid| !pending.contains_key(cid) && !store.has(cid))
            .collect();
        if !missing.is_empty() {
            let asked = node
                .with_extension(move |ipfs: &mut Ipfs, _| {
                    missing
                        .into_iter()
                        .map(|cid| {
                            let (tx, rx) = oneshot::channel();
                            ipfs.want(cid, prefer, tx);
                            (cid, rx)
                        })
                        .collect::<Vec<_>>()
                })
                .await?;
            pending.extend(asked);
        }
        let block = match pending.remove(&next) {
            Some(rx) => {
                let secs = options.block_timeout.as_secs();
                let fetched = tokio::time::timeout(options.block_timeout, rx)
                    .await
                    .map_err(|_| IpfsError::NotFound { cid: next, secs })?
                    .map_err(|_| NetError::Shutdown)?;
                prefer = Some(fetched.peer);
                let (kept, data) = (store.clone(), fetched.data.clone());
                let cached = tokio::task::spawn_blocking(move || kept.put(&next, &data)).await;
                if let Ok(Err(e)) = cached {
                    tracing::debug!(cid = %next, "fetched block not kept: {e}");
                }
                fetched.data
            }
            None => {
                let kept = store.clone();
                let local = tokio::task::spawn_blocking(move || kept.get(&next))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                match local {
                    Ok(Some(block)) => block,
                    // Collected or damaged meanwhile: ask the network on the next round.
                    Ok(None) | Err(BlockError::Corrupt(_)) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let Some(leaf) = reader.feed(&next, &block)? else { continue };
        let last = reader.next_needed().is_none();
        let bytes = match &mut output {
            Output::Start => match Header::parse(&leaf)? {
                Some(header) if !options.raw => {
                    output =
                        Output::Encrypted(Opener::new(open_key(&header, root, options)?, &header));
                    continue;
                }
                _ => {
                    output = Output::Plain;
                    leaf
                }
            },
            Output::Plain => leaf,
            Output::Encrypted(opener) => opener.open(&leaf, last)?,
        };
        out.write_all(&bytes).await?;
        written += bytes.len() as u64;
        progress(written);
    }
    reader.finish()?;
    if let Output::Encrypted(opener) = &output {
        opener.finish()?;
    }
    out.flush().await?;
    Ok(Got { written, decrypted: matches!(output, Output::Encrypted(_)) })
}

/// The key of an encrypted file for the account in `options`: its own file, or (not yet) one
/// shared with it.
fn open_key(
    header: &Header,
    root: Cid,
    options: &GetOptions,
) -> Result<dkvs_account::seal::SymmetricKey, IpfsError> {
    match &options.account {
        Some(account) if account.account_id() == header.owner => Ok(header.owner_key(account)),
        _ => Err(IpfsError::Encrypted { cid: root, owner: header.owner.to_string() }),
    }
}

/// The blocks of a pinned DAG a garbage collection keeps: the links a block has.
pub fn links(cid: &Cid, data: &[u8]) -> Vec<Cid> {
    unixfs::links(cid, data)
}
