//! Files between real dkvs nodes (loopback TCP, default configuration), each hosting the IPFS
//! extension with its blocks on disk.

use std::sync::Arc;

use anyhow::Context as _;
use std::time::Duration;

use dkvs_account::{KeyType, Keypair};
use dkvs_ipfs::files::{self, GetOptions, IpfsError};
use dkvs_ipfs::{BlockStoreConfig, Cid, Ipfs};
use dkvs_net::{Config, NodeBuilder};
use dkvs_testnet::{Spawn, TestNet};

/// Every test ends within this.
const TEST: Duration = Duration::from_secs(240);

async fn ipfs_net(n: usize) -> anyhow::Result<TestNet> {
    ipfs_net_with(n, Config::default()).await
}

/// [`ipfs_net`] with `config` (for a test of one of its settings).
async fn ipfs_net_with(n: usize, config: Config) -> anyhow::Result<TestNet> {
    let spawn: Spawn = Arc::new(move |identity, store, config, dir| {
        let ipfs = Ipfs::open(&dir.join("ipfs"), identity, BlockStoreConfig::default())?;
        Ok(NodeBuilder::new(identity.clone(), store, config).with_extension(|_| ipfs).spawn()?)
    });
    TestNet::start_custom(n, config, dkvs_store::Config::default(), spawn).await
}

/// Two nodes, the second one's block store holding at most `max_bytes`.
async fn two_nodes_the_second_holding(max_bytes: u64) -> anyhow::Result<TestNet> {
    let spawned = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let spawn: Spawn = Arc::new(move |identity, store, config, dir| {
        let mut blocks = BlockStoreConfig::default();
        if spawned.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            blocks.max_bytes = max_bytes;
        }
        let ipfs = Ipfs::open(&dir.join("ipfs"), identity, blocks)?;
        Ok(NodeBuilder::new(identity.clone(), store, config).with_extension(|_| ipfs).spawn()?)
    });
    TestNet::start_custom(2, Config::default(), dkvs_store::Config::default(), spawn).await
}

/// Deterministic bytes that no chunking lines up with.
fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + 7) % 251) as u8).collect()
}

async fn add(
    net: &TestNet,
    i: usize,
    bytes: &[u8],
    account: Option<&Keypair>,
) -> anyhow::Result<Cid> {
    let added =
        files::add(net.node(i), std::io::Cursor::new(bytes.to_vec()), account, |_| {}).await?;
    assert_eq!(added.read, bytes.len() as u64);
    Ok(added.cid)
}

async fn get(
    net: &TestNet,
    i: usize,
    cid: Cid,
    options: &GetOptions,
) -> Result<Vec<u8>, IpfsError> {
    let mut out = Vec::new();
    files::get(net.node(i), cid, &mut out, options, |_| {}).await?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_file_added_on_one_node_is_fetched_by_another_byte_for_byte() -> anyhow::Result<()>
{
    tokio::time::timeout(TEST, async {
        let net = ipfs_net(3).await?;
        for len in [0, 1, 1000, 262_144, 262_145, 3_000_000] {
            let bytes = data(len);
            let cid = add(&net, 1, &bytes, None).await?;
            assert_eq!(cid.version(), cid::Version::V1);
            let got = get(&net, 2, cid, &GetOptions::default()).await?;
            assert!(got == bytes, "{len} bytes came back as {} different bytes", got.len());
            // The fetched blocks are kept: node 2 now serves them (node 0 gets them even if
            // node 1 is gone).
        }
        let bytes = data(700_000);
        let cid = add(&net, 1, &bytes, None).await?;
        assert_eq!(get(&net, 2, cid, &GetOptions::default()).await?, bytes);
        let mut net = net;
        net.kill(1).await;
        assert_eq!(get(&net, 0, cid, &GetOptions::default()).await?, bytes);
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_file_opens_for_its_owner_on_another_node_and_is_ciphertext_to_others()
-> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let net = ipfs_net(3).await?;
        let (alice, bob) = (Keypair::generate(KeyType::Ed25519), Keypair::generate(KeyType::Secp256k1));
        for len in [0, 5, 600_000] {
            let bytes = data(len);
            let cid = add(&net, 1, &bytes, Some(&alice)).await?;
            let as_alice = GetOptions { account: Some(alice.clone()), ..GetOptions::default() };
            assert_eq!(get(&net, 2, cid, &as_alice).await?, bytes, "alice reads her {len} bytes");

            let raw = GetOptions { raw: true, ..GetOptions::default() };
            let ciphertext = get(&net, 2, cid, &raw).await?;
            assert!(ciphertext.starts_with(dkvs_ipfs::crypt::MAGIC));
            assert!(
                ciphertext.len() > bytes.len() && (len < 64 || !ciphertext.windows(64).any(|w| w == &bytes[..64])),
                "the stored bytes are not the plaintext"
            );
            let as_bob = GetOptions { account: Some(bob.clone()), ..GetOptions::default() };
            let refused = get(&net, 2, cid, &as_bob).await.expect_err("bob has no key");
            assert!(
                matches!(&refused, IpfsError::Encrypted { owner, .. } if *owner == alice.account_id().to_string()),
                "{refused}"
            );
            let nobody = get(&net, 0, cid, &GetOptions::default()).await.expect_err("no account");
            assert!(matches!(nobody, IpfsError::Encrypted { .. }), "{nobody}");
        }
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_cid_reads_at_once_and_a_cid_under_another_hash_is_refused_at_once()
-> anyhow::Result<()> {
    use dkvs_ipfs::cid::multihash::Multihash;
    tokio::time::timeout(TEST, async {
        let net = ipfs_net(2).await?;
        // The identity hash: the block is in the CID itself.
        let inline = Cid::new_v1(0x55, Multihash::<64>::wrap(0x00, b"tiny file")?);
        assert_eq!(get(&net, 1, inline, &GetOptions::default()).await?, b"tiny file");
        // BLAKE3: no block under it can be checked or kept here, so none is waited for (the
        // default wait for a block is a minute).
        let blake3 = Cid::new_v1(0x55, Multihash::<64>::wrap(0x1e, &[7; 32])?);
        let err = get(&net, 1, blake3, &GetOptions::default()).await.expect_err("refused");
        assert!(
            matches!(&err, IpfsError::Block(dkvs_ipfs::BlockError::UnsupportedHash(c)) if *c == blake3),
            "{err}"
        );
        assert!(err.to_string().contains("not a SHA2-256 hash"), "{err}");
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_nobody_has_is_not_found_in_the_time_given() -> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let net = ipfs_net(2).await?;
        let cid = dkvs_ipfs::cid_of(0x55, b"nobody added this");
        let options = GetOptions { block_timeout: Duration::from_secs(2), ..GetOptions::default() };
        let err = get(&net, 1, cid, &options).await.expect_err("not found");
        assert!(matches!(err, IpfsError::NotFound { cid: c, secs: 2 } if c == cid), "{err}");
        assert!(err.to_string().contains("no peer gave block"), "{err}");
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_file_opens_for_the_account_it_was_shared_with_and_nobody_else()
-> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let net = ipfs_net(4).await?;
        let alice = Keypair::generate(KeyType::Ed25519);
        let bob = Keypair::generate(KeyType::Secp256k1);
        let carol = Keypair::generate(KeyType::Ed25519);
        let bytes = data(400_000);
        let cid = add(&net, 1, &bytes, Some(&alice)).await?;
        let as_ =
            |who: &Keypair| GetOptions { account: Some(who.clone()), ..GetOptions::default() };
        // Before the share, bob is refused like anyone.
        assert!(matches!(get(&net, 2, cid, &as_(&bob)).await, Err(IpfsError::Encrypted { .. })));

        // Only the owner shares, and only an encrypted file.
        let err = files::share(net.node(3), &bob, cid, &carol.account_id(), 3_600_000)
            .await
            .expect_err("bob does not own it");
        assert!(matches!(err, IpfsError::NotOwner { .. }), "{err}");
        let plain = add(&net, 1, b"public", None).await?;
        let err = files::share(net.node(1), &alice, plain, &bob.account_id(), 3_600_000)
            .await
            .expect_err("a plain file has no key");
        assert!(matches!(err, IpfsError::NotEncrypted(c) if c == plain), "{err}");

        // Alice shares from another of her nodes; bob reads on a third.
        let key = files::share(net.node(3), &alice, cid, &bob.account_id(), 3_600_000).await?;
        assert!(key.as_str().starts_with(&format!("/{}/ipfs/share/", alice.account_id())));
        assert!(!key.as_str().contains(&bob.account_id().to_string()), "the name hides bob");
        assert_eq!(get(&net, 2, cid, &as_(&bob)).await?, bytes);
        // Carol is not bob.
        let err = get(&net, 2, cid, &as_(&carol)).await.expect_err("not shared with carol");
        assert!(matches!(err, IpfsError::Encrypted { .. }), "{err}");
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

/// A peer that speaks bitswap and lies: it says it has every block it is asked about and
/// sends wrong bytes for each block asked for; with `flood`, it also sends blocks nobody
/// asked for. Runs until dropped, and then leaves (its connections close).
struct Liar {
    peer: dkvs_net::libp2p::PeerId,
    /// Blocks it was asked for (and lied about).
    asked: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    swarm: tokio::task::JoinHandle<()>,
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.task.abort();
        self.swarm.abort();
    }
}

const PROTOCOL: dkvs_net::libp2p::StreamProtocol =
    dkvs_net::libp2p::StreamProtocol::new(dkvs_ipfs::bitswap::PROTOCOL);

/// A bare libp2p peer that speaks bitswap streams only (for a peer that misbehaves), dialing
/// `target`: its id, its stream control, and the task its swarm runs on (abort it, and the
/// peer leaves: its connections close).
fn bitswap_peer(
    target: dkvs_net::libp2p::Multiaddr,
) -> anyhow::Result<(dkvs_net::libp2p::PeerId, libp2p_stream::Control, tokio::task::JoinHandle<()>)>
{
    use dkvs_net::libp2p::{SwarmBuilder, noise, tcp, yamux};
    use futures::StreamExt as _;
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|_| libp2p_stream::Behaviour::new())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    let peer = *swarm.local_peer_id();
    let control = swarm.behaviour().new_control();
    swarm.dial(target)?;
    let running = tokio::spawn(async move { while swarm.next().await.is_some() {} });
    Ok((peer, control, running))
}

/// Takes every bitswap stream the target opens to this peer and never reads it: the task
/// that holds them (abort it to let them go).
fn never_reading(
    control: &mut libp2p_stream::Control,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use futures::StreamExt as _;
    let mut incoming = control.accept(PROTOCOL).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((_, stream)) = incoming.next().await {
            held.push(stream);
        }
    }))
}

/// A bitswap stream to `peer`, once the connection is up (a hundred tries, 100 ms apart, each
/// of a second at most).
async fn open_once_connected(
    control: &mut libp2p_stream::Control,
    peer: dkvs_net::libp2p::PeerId,
) -> Option<dkvs_net::libp2p::Stream> {
    for _ in 0..100 {
        // Each try bounded: libp2p-stream 0.5.0-alpha may never answer an open that came
        // while the swarm was setting a connection up (its queue of waiting opens was taken,
        // the connection not yet recorded, as its code reads); the next try finds it.
        let open =
            tokio::time::timeout(Duration::from_secs(1), control.open_stream(peer, PROTOCOL));
        if let Ok(Ok(stream)) = open.await {
            return Some(stream);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn liar(
    target_peer: dkvs_net::libp2p::PeerId,
    target: dkvs_net::libp2p::Multiaddr,
    flood: usize,
) -> anyhow::Result<Liar> {
    use dkvs_ipfs::bitswap::{Message, WantType, read_frame, write_frame};
    use futures::StreamExt as _;

    let (peer, mut control, swarm) = bitswap_peer(target)?;
    let mut incoming = control.accept(PROTOCOL).map_err(|e| anyhow::anyhow!("{e}"))?;
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    let task = tokio::spawn(async move {
        let mut out = None;
        // Blocks nobody asked for, first.
        for i in 0..flood {
            let data = vec![i as u8; 256 << 10];
            let cid = dkvs_ipfs::cid_of(0x55, &data);
            let message = Message { blocks: vec![(cid, data)], ..Message::default() };
            if out.is_none() {
                out = open_once_connected(&mut control, target_peer).await;
            }
            if let Some(stream) = out.as_mut() {
                let _ = write_frame(stream, &message.encode()).await;
            }
        }
        while let Some((from, mut stream)) = incoming.next().await {
            while let Ok(Some(frame)) = read_frame(&mut stream).await {
                let Ok(asked) = Message::decode(&frame) else { break };
                let mut answer = Message::default();
                for want in asked.wants.iter().filter(|w| !w.cancel) {
                    match want.want_type {
                        WantType::Have => answer.presences.push((want.cid, true)),
                        // Bytes that do not hash to the CID asked for, under its prefix.
                        WantType::Block => {
                            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            answer.blocks.push((want.cid, b"lies".to_vec()));
                        }
                    }
                }
                if answer.is_empty() {
                    continue;
                }
                if out.is_none() {
                    out = control.open_stream(from, PROTOCOL).await.ok();
                }
                if let Some(stream) = out.as_mut() {
                    let _ = write_frame(stream, &answer.encode()).await;
                }
            }
        }
    });
    Ok(Liar { peer, asked, task, swarm })
}

/// A peer that opens `streams` bitswap streams to `target`, sends on each the length prefix of
/// the largest message and then nothing: the count of prefixes sent, of those streams the
/// target has closed, and the task.
async fn staller(
    target_peer: dkvs_net::libp2p::PeerId,
    target: dkvs_net::libp2p::Multiaddr,
    streams: usize,
) -> anyhow::Result<(
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
)> {
    use futures::{AsyncReadExt as _, AsyncWriteExt as _};

    let (_, mut control, _swarm) = bitswap_peer(target)?;
    let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (count, sending) = (closed.clone(), sent.clone());
    let task = tokio::spawn(async move {
        let mut prefix = Vec::new();
        prost::encode_length_delimiter(dkvs_ipfs::bitswap::MAX_MESSAGE, &mut prefix).expect("room");
        let mut readers = Vec::new();
        for _ in 0..streams {
            let Some(mut stream) = open_once_connected(&mut control, target_peer).await else {
                return;
            };
            if stream.write_all(&prefix).await.is_err() || stream.flush().await.is_err() {
                return;
            }
            sending.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let count = count.clone();
            readers.push(tokio::spawn(async move {
                // The target never writes on a stream it reads: this ends when it closes it.
                let _ = stream.read(&mut [0; 1]).await;
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }));
        }
        for reader in readers {
            let _ = reader.await;
        }
    });
    Ok((sent, closed, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stalls_after_length_prefixes_holds_only_its_share_of_the_read_budget()
-> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let net = ipfs_net(2).await?;
        let bytes = data(300_000);
        let cid = add(&net, 0, &bytes, None).await?;
        // Every stream one peer may open, each promising the largest message: 64 MiB, the
        // node's whole read budget, held until the frame timeout (30 s) ends the streams.
        let (sent, closed, staller) =
            staller(net.peer_id(1), net.addr(1).context("an address")?, 16).await?;
        let all_sent = dkvs_testnet::eventually(Duration::from_secs(30), async || {
            sent.load(std::sync::atomic::Ordering::SeqCst) == 16
        })
        .await;
        assert!(all_sent, "the staller's 16 prefixes are sent");
        // A moment for node 1's readers to take them (and, were it not for the share, the
        // whole budget).
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Node 1 still reads what node 0 sends it: the file comes while the stalls last.
        assert_eq!(get(&net, 1, cid, &GetOptions::default()).await?, bytes);
        let ended = closed.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(ended, 0, "the file came only once the stalled streams were ended");
        staller.abort();
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_wants_many_blocks_in_one_message_gets_each_once() -> anyhow::Result<()> {
    use dkvs_ipfs::bitswap::{Message, Want, WantType, read_frame, write_frame};
    use futures::StreamExt as _;
    tokio::time::timeout(TEST, async {
        let net = ipfs_net(2).await?;
        // 40 blocks of 256 KiB: 10 MiB, five times what node 1 loads for one batch.
        let blocks: Vec<(Cid, Vec<u8>)> = (0..40u8)
            .map(|i| {
                let data = vec![i; 256 << 10];
                (dkvs_ipfs::cid_of(0x55, &data), data)
            })
            .collect();
        let kept = blocks.clone();
        net.node(1)
            .with_extension(move |ipfs: &mut Ipfs, _| {
                kept.iter().try_for_each(|(cid, data)| ipfs.store().put(cid, data).map(|_| ()))
            })
            .await??;
        let (_, mut control, _swarm) = bitswap_peer(net.addr(1).context("an address")?)?;
        let mut incoming = control.accept(PROTOCOL).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut out =
            open_once_connected(&mut control, net.peer_id(1)).await.context("a stream")?;
        let wants = blocks.iter().map(|(cid, _)| Want::new(*cid, WantType::Block)).collect();
        write_frame(&mut out, &Message { wants, ..Message::default() }.encode()).await?;
        let mut got: std::collections::HashMap<Cid, Vec<u8>> = Default::default();
        while got.len() < blocks.len() {
            let (_, mut stream) = incoming.next().await.context("node 1 answers")?;
            while let Some(frame) = read_frame(&mut stream).await? {
                let message = Message::decode(&frame)?;
                assert!(message.presences.is_empty(), "every block is there: {message:?}");
                for (cid, data) in message.blocks {
                    assert!(got.insert(cid, data).is_none(), "{cid} sent twice");
                }
                if got.len() == blocks.len() {
                    break;
                }
            }
        }
        for (cid, data) in &blocks {
            assert!(got.get(cid) == Some(data), "{cid}: the block asked for");
        }
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_do_not_decode_are_charged_to_their_sender() -> anyhow::Result<()> {
    garbage_takes_its_senders_budget(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cut_short_are_charged_to_their_sender() -> anyhow::Result<()> {
    garbage_takes_its_senders_budget(true).await
}

/// A peer sends, all along, what is no bitswap message (frames that do not decode, or with
/// `cut` frames that end before their length): its wants are refused for the budget the
/// garbage took. (The byte budget is the setting under test: it refills at 8 KiB a second, not
/// 128, so that the refill outpaces no garbage sender, however slowly a loaded machine lets
/// it send.)
async fn garbage_takes_its_senders_budget(cut: bool) -> anyhow::Result<()> {
    use dkvs_ipfs::bitswap::{Message, Want, WantType, read_frame, write_frame};
    use futures::{AsyncWriteExt as _, StreamExt as _};
    tokio::time::timeout(TEST, async {
        let net = ipfs_net_with(2, Config::default().with_peer_bytes(8 << 10, 4 << 20)).await?;
        let (_, mut control, _swarm) = bitswap_peer(net.addr(1).context("an address")?)?;
        let mut incoming = control.accept(PROTOCOL).map_err(|e| anyhow::anyhow!("{e}"))?;
        // A new peer id may send 512 KiB at once (an eighth of the 4 MiB burst), then 8 KiB a
        // second. It sends more than that of what is no bitswap message, all along (a stream
        // each: a frame that does not decode ends its stream), ...
        let target = net.peer_id(1);
        let mut flooding = control.clone();
        let frames = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sent = frames.clone();
        let flood = tokio::spawn(async move {
            loop {
                if let Some(mut garbage) = open_once_connected(&mut flooding, target).await {
                    if cut {
                        // A frame of 64 KiB promised, half of it sent, the stream closed.
                        let mut frame = Vec::new();
                        prost::encode_length_delimiter(64 << 10, &mut frame).expect("room");
                        frame.extend_from_slice(&[0x0a; 32 << 10]);
                        let _ = garbage.write_all(&frame).await;
                        let _ = garbage.close().await;
                    } else {
                        let _ = write_frame(&mut garbage, &vec![0xff; 64 << 10]).await;
                    }
                    sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        // Sixteen frames of 64 KiB (each cut short one charged for the length it promised): a
        // megabyte, twice what the new peer had, sent before its wants.
        let flooded = dkvs_testnet::eventually(Duration::from_secs(30), async || {
            frames.load(std::sync::atomic::Ordering::SeqCst) >= 16
        })
        .await;
        let sent = frames.load(std::sync::atomic::Ordering::SeqCst);
        assert!(flooded, "the garbage is sent: {sent} frames of 16");
        if !cut {
            let counted = dkvs_testnet::eventually(Duration::from_secs(10), async || {
                let dropped = net.node(1).with_extension(|ipfs: &mut Ipfs, _| ipfs.dropped());
                dropped.await.unwrap_or(0) >= 8
            })
            .await;
            assert!(counted, "the frames are counted as dropped");
        }
        let mut out =
            open_once_connected(&mut control, net.peer_id(1)).await.context("a stream")?;
        // ... and wants of about 180 KB, each asking for an answer: while the garbage takes the
        // budget as it refills, refused if the garbage is charged, and answered if it is not.
        let wants = (0..4096u32)
            .map(|i| Want::new(dkvs_ipfs::cid_of(0x55, &i.to_be_bytes()), WantType::Have))
            .collect();
        let want = Message { wants, ..Message::default() };
        assert!(want.encode().len() > 160 << 10);
        write_frame(&mut out, &want.encode()).await?;
        let answered = tokio::time::timeout(Duration::from_secs(2), async {
            let (_, mut stream) = incoming.next().await?;
            read_frame(&mut stream).await.ok().flatten()
        })
        .await;
        assert!(matches!(answered, Err(_) | Ok(None)), "answered: {answered:?}");
        flood.abort();
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_asked_for_again_before_it_is_sent_is_queued_once() -> anyhow::Result<()> {
    use dkvs_ipfs::bitswap::{Message, Want, WantType, write_frame};
    tokio::time::timeout(TEST, async {
        let net = ipfs_net(2).await?;
        let data = vec![7u8; 1 << 20];
        let cid = dkvs_ipfs::cid_of(0x55, &data);
        net.node(1)
            .with_extension(move |ipfs: &mut Ipfs, _| ipfs.store().put(&cid, &data))
            .await??;
        // A peer that takes node 1's streams and never reads them asks for the block in ten
        // messages: the first answer fills what the transport holds, the next waits in the
        // queue, and the other eight are that same block, not queued again.
        let (_, mut control, _swarm) = bitswap_peer(net.addr(1).context("an address")?)?;
        let holder = never_reading(&mut control)?;
        let mut out =
            open_once_connected(&mut control, net.peer_id(1)).await.context("a stream")?;
        for _ in 0..10 {
            let want =
                Message { wants: vec![Want::new(cid, WantType::Block)], ..Message::default() };
            write_frame(&mut out, &want.encode()).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Then a want node 1 keeps without an answer (of a block it lacks, no don't-have
        // asked): once it is kept, the ten before it were handled (one stream, read in turn).
        let lacked = dkvs_ipfs::cid_of(0x55, b"lacked");
        let marker = Want { send_dont_have: false, ..Want::new(lacked, WantType::Have) };
        write_frame(&mut out, &Message { wants: vec![marker], ..Message::default() }.encode())
            .await?;
        let handled = dkvs_testnet::eventually(Duration::from_secs(30), async || {
            let kept = net.node(1).with_extension(|ipfs: &mut Ipfs, _| ipfs.wantlists());
            kept.await.ok() == Some(1)
        })
        .await;
        assert!(handled, "node 1 handled the eleven wants");
        let queued = net.node(1).with_extension(|ipfs: &mut Ipfs, _| ipfs.queued()).await?;
        assert!((1..=2).contains(&queued), "{queued} answers queued for one block");
        holder.abort();
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_queued_a_bounded_number_of_answers() -> anyhow::Result<()> {
    use dkvs_ipfs::bitswap::{MAX_ENTRIES, Message, Want, WantType, write_frame};
    tokio::time::timeout(TEST, async {
        let net = ipfs_net(2).await?;
        let (_, mut control, _swarm) = bitswap_peer(net.addr(1).context("an address")?)?;
        // It takes the streams node 1 opens to it and never reads them.
        let holder = never_reading(&mut control)?;
        // It asks, as fast as it can, for blocks node 1 lacks, a don't-have wanted for each: as
        // many entries a message as a message may hold.
        let mut out =
            open_once_connected(&mut control, net.peer_id(1)).await.context("a stream")?;
        let asker = tokio::spawn(async move {
            for round in 0u32.. {
                let wants = (0..MAX_ENTRIES as u32)
                    .map(|i| {
                        let name = [round.to_be_bytes(), i.to_be_bytes()].concat();
                        Want::new(dkvs_ipfs::cid_of(0x55, &name), WantType::Have)
                    })
                    .collect();
                let message = Message { wants, ..Message::default() };
                if write_frame(&mut out, &message.encode()).await.is_err() {
                    break;
                }
            }
        });
        // Its don't-haves fill what the transport holds, then node 1's queue for it: at most
        // two full messages' worth (WRITER_ENTRIES), however long it asks.
        let bound = 2 * MAX_ENTRIES;
        let (mut most, mut full_since) = (0, None);
        let started = tokio::time::Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let queued = net.node(1).with_extension(|ipfs: &mut Ipfs, _| ipfs.queued()).await?;
            most = most.max(queued);
            assert!(queued <= bound, "{queued} entries queued for a peer that does not read");
            if queued + MAX_ENTRIES > bound {
                let since = *full_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > Duration::from_secs(3) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(most + MAX_ENTRIES > bound, "the queue never filled (at most {most})");
        let dropped = net.node(1).with_extension(|ipfs: &mut Ipfs, _| ipfs.dropped()).await?;
        assert!(dropped > 0, "answers past the bound are dropped");
        asker.abort();
        holder.abort();
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_that_fails_for_room_leaves_no_block_behind() -> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        // A store of 2 MB holding a file of 300 kB already: a 3 MB add fails on its way. What
        // it wrote went too (it stayed, unpinned, and refused the next adds until a `gc`).
        let dir = tempfile::tempdir()?;
        let identity = dkvs_net::libp2p::identity::Keypair::generate_ed25519();
        let mut config = BlockStoreConfig::default();
        config.max_bytes = 2_000_000;
        let ipfs = Ipfs::open(&dir.path().join("ipfs"), &identity, config)?;
        let store = dkvs_store::Store::open(dir.path(), dkvs_store::Config::default())?;
        let node = NodeBuilder::new(identity, store, Config::default())
            .with_extension(|_| ipfs)
            .spawn()?;
        let blocks = node.with_extension(|ipfs: &mut Ipfs, _| ipfs.store().clone()).await?;
        let first = data(300_000);
        let kept = files::add(&node, std::io::Cursor::new(first.clone()), None, |_| {}).await?;
        let (count, bytes) = (blocks.len(), blocks.bytes());
        let big: Vec<u8> = data(3_000_000).into_iter().map(|b| b ^ 0x5a).collect();
        let failed = files::add(&node, std::io::Cursor::new(big), None, |_| {}).await;
        // Said as what it is: this file did not fit beside the other.
        let Err(IpfsError::NoRoom { took, others, limit }) = failed else { panic!("{failed:?}") };
        assert_eq!((others, limit), (bytes, 2_000_000));
        // Full when its next block (a plain file's chunk, 1 MiB) would pass the limit.
        assert!(took + others <= limit && took + others + (1 << 20) > limit, "{took}");
        let said = IpfsError::NoRoom { took, others, limit }.to_string();
        assert!(said.contains("does not fit") && said.contains("ipfs_max_bytes"), "{said}");
        assert_eq!((blocks.len(), blocks.bytes()), (count, bytes), "nothing of it is left");
        let next = data(1_500_000).into_iter().map(|b| b ^ 0x33).collect::<Vec<u8>>();
        files::add(&node, std::io::Cursor::new(next), None, |_| {}).await?;
        let mut out = Vec::new();
        files::get(&node, kept.cid, &mut out, &GetOptions::default(), |_| {}).await?;
        assert!(out == first, "the file added before is whole");
        node.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_of_a_file_larger_than_the_store_says_it_does_not_fit() -> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        // The second node's store takes 2 MB; the first adds a file of 3 MB.
        let net = two_nodes_the_second_holding(2_000_000).await?;
        let cid = add(&net, 0, &data(3_000_000), None).await?;
        let failed = files::pin(net.node(1), cid, Duration::from_secs(60)).await;
        let Err(IpfsError::NoRoom { took, others, limit }) = failed else { panic!("{failed:?}") };
        assert_eq!((others, limit), (0, 2_000_000), "nothing else was kept there");
        assert!(took <= limit && took + (1 << 20) > limit, "{took}");
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_lies_about_blocks_is_passed_over_and_its_bytes_are_never_kept()
-> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let net = ipfs_net(2).await?;
        let bytes = data(300_000);
        let cid = add(&net, 1, &bytes, None).await?;
        // A getter on a network of its own knows only the liar at first.
        let dir = tempfile::tempdir()?;
        let identity = dkvs_net::libp2p::identity::Keypair::generate_ed25519();
        let ipfs = Ipfs::open(&dir.path().join("ipfs"), &identity, BlockStoreConfig::default())?;
        let store = dkvs_store::Store::open(dir.path(), dkvs_store::Config::default())?;
        let alone = NodeBuilder::new(identity, store, Config::default())
            .with_extension(|_| ipfs)
            .spawn()?;
        let addr = alone.listen_on("/ip4/127.0.0.1/tcp/0".parse()?).await?;
        let getter = alone.clone();
        let liar = liar(alone.peer_id(), addr, 0).await?;
        let fetching = tokio::spawn(async move {
            let mut out = Vec::new();
            files::get(&getter, cid, &mut out, &GetOptions::default(), |_| {}).await.map(|_| out)
        });
        let lied = dkvs_testnet::eventually(Duration::from_secs(30), async || {
            liar.asked.load(std::sync::atomic::Ordering::Relaxed) > 0
        })
        .await;
        assert!(lied, "the liar, who says it has every block, is asked for one");
        // Now an honest holder is reachable: after the block timeout it is asked instead.
        let holder = net.addr(1).context("an address")?;
        alone.with_extension(move |ipfs: &mut Ipfs, _| ipfs.connect(holder)).await?;
        let got = fetching.await??;
        assert!(got == bytes, "the right bytes, from the honest peer");
        let store = alone.with_extension(|ipfs: &mut Ipfs, _| ipfs.store().clone()).await?;
        assert!(!store.has(&dkvs_ipfs::cid_of(0x55, b"lies")), "a lie is never kept");
        drop(liar);
        alone.shutdown().await;
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_nobody_asked_for_are_dropped_and_charged_to_their_sender() -> anyhow::Result<()> {
    use dkvs_ipfs::bitswap::{Message, Want, WantType, write_frame};
    tokio::time::timeout(TEST, async {
        let net = ipfs_net(2).await?;
        let before = net.node(1).with_extension(|ipfs: &mut Ipfs, _| ipfs.store().len()).await?;
        let flooder = liar(net.peer_id(1), net.addr(1).context("an address")?, 64).await?;
        // 16 MiB of blocks nobody asked for: a few are read and dropped, the rest refused.
        let dropped = dkvs_testnet::eventually(Duration::from_secs(30), async || {
            net.node(1).with_extension(|ipfs: &mut Ipfs, _| ipfs.dropped()).await.unwrap_or(0) > 0
        })
        .await;
        assert!(dropped, "unsolicited blocks are counted as dropped");
        let (after, refused) = net
            .node(1)
            .with_extension(move |ipfs: &mut Ipfs, host| {
                // The flood spent the sender's budget: its next message is refused.
                (ipfs.store().len(), host.admit(flooder.peer, 1 << 20, 4 << 20).is_err())
            })
            .await?;
        assert_eq!(after, before, "nothing unsolicited is kept");
        assert!(refused, "the flooder's budget is spent");
        // Honest traffic goes on.
        let bytes = data(100_000);
        let cid = add(&net, 0, &bytes, None).await?;
        assert_eq!(get(&net, 1, cid, &GetOptions::default()).await?, bytes);
        // What a peer asked for is remembered while it is connected, forgotten when it leaves.
        drop(flooder);
        let wantlists = async |n: usize| {
            dkvs_testnet::eventually(Duration::from_secs(30), async || {
                let count = net.node(1).with_extension(|ipfs: &mut Ipfs, _| ipfs.wantlists());
                count.await.ok() == Some(n)
            })
            .await
        };
        assert!(wantlists(0).await, "node 1 keeps no wantlist yet (the flooder sent none)");
        let (_, mut control, swarm) = bitswap_peer(net.addr(1).context("an address")?)?;
        // It takes the streams node 1 opens to it (to say what it does not have): a peer that
        // refuses them does not speak bitswap, and node 1 forgets its wants at once.
        let _holder = never_reading(&mut control)?;
        let mut out =
            open_once_connected(&mut control, net.peer_id(1)).await.context("a stream")?;
        let wants = (0..100u32)
            .map(|i| Want::new(dkvs_ipfs::cid_of(0x55, &i.to_be_bytes()), WantType::Have))
            .collect();
        write_frame(&mut out, &Message { wants, ..Message::default() }.encode()).await?;
        assert!(wantlists(1).await, "a connected peer's wantlist is remembered");
        swarm.abort();
        assert!(wantlists(0).await, "no wantlist is kept for a peer that left");
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_of_a_file_is_fetched_without_the_leaves_outside_it() -> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let net = ipfs_net(2).await?;
        let alice = Keypair::generate(KeyType::Ed25519);
        // Five leaves of 1 MiB; and five chunks of 256 KiB behind a header leaf.
        let (plain, sealed) = (data(5_000_000), data(1_200_000));
        let plain_cid = add(&net, 0, &plain, None).await?;
        let sealed_cid = add(&net, 0, &sealed, Some(&alice)).await?;
        let as_alice = GetOptions { account: Some(alice.clone()), ..GetOptions::default() };
        let (mib, cell) = (1 << 20, 262_144 + 40);
        let received = || net.node(1).traffic().bytes_in;
        for (cid, bytes, options, from, to, most) in [
            // The root and the first leaf (it tells whether the file is encrypted), no more.
            (plain_cid, &plain, GetOptions::default(), 0, 10, mib + mib / 4),
            // Then the leaf of the part: not the two between, nor the one after.
            (
                plain_cid,
                &plain,
                GetOptions::default(),
                3 * mib + 10,
                3 * mib + 20,
                2 * mib + mib / 4,
            ),
            // The header leaf, then the leaf of chunk 2, not the two before nor those after.
            (sealed_cid, &sealed, as_alice.clone(), 600_000, 700_000, 2 * cell),
        ] {
            let before = received();
            let part = GetOptions { range: Some(from..to), ..options.clone() };
            let got = get(&net, 1, cid, &part).await?;
            assert!(got == bytes[from as usize..to as usize], "{cid}: {} bytes", got.len());
            let took = received() - before;
            assert!(took <= most, "{cid} {from}..{to}: {took} bytes received, at most {most}");
            let stat = files::stat(net.node(1), cid, &options).await?;
            assert_eq!(stat.size, bytes.len() as u64);
            assert!(!stat.head.is_empty() && bytes.starts_with(&stat.head), "{cid}: head");
            // Up to the end, and past it: the bytes there are.
            let tail = GetOptions { range: Some(from..u64::MAX), ..options.clone() };
            assert!(get(&net, 1, cid, &tail).await? == bytes[from as usize..], "{cid}: tail");
            // No bytes: nothing read.
            let none = GetOptions { range: Some(to..to), ..options.clone() };
            assert!(get(&net, 1, cid, &none).await?.is_empty());
        }
        // As stored: a part of the ciphertext, and its size.
        let raw = GetOptions { raw: true, ..GetOptions::default() };
        let stored = get(&net, 1, sealed_cid, &raw).await?;
        let part = GetOptions { range: Some(100..5000), ..raw.clone() };
        assert_eq!(get(&net, 1, sealed_cid, &part).await?, stored[100..5000]);
        assert_eq!(files::stat(net.node(1), sealed_cid, &raw).await?.size, stored.len() as u64);
        // Not for another account: the stat fails as the get does.
        let bob = GetOptions {
            account: Some(Keypair::generate(KeyType::Ed25519)),
            ..GetOptions::default()
        };
        let refused = files::stat(net.node(1), sealed_cid, &bob).await.expect_err("bob's");
        assert!(matches!(refused, IpfsError::Encrypted { .. }), "{refused}");
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_after_a_stat_fetches_none_of_its_blocks_again_where_nothing_is_cached()
-> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        // Node 1's store keeps nothing (a store full of pinned files): what a stat read, the
        // get right after it takes from the stat.
        let net = two_nodes_the_second_holding(1).await?;
        // Three leaves of 1 MiB under a root.
        let bytes = data(2_500_000);
        let cid = add(&net, 0, &bytes, None).await?;
        let before = net.node(1).traffic().bytes_in;
        let stat = files::stat(net.node(1), cid, &GetOptions::default()).await?;
        assert_eq!((stat.size, stat.directory.is_none()), (bytes.len() as u64, true));
        let options = GetOptions { known: stat.known, ..GetOptions::default() };
        assert!(get(&net, 1, cid, &options).await? == bytes);
        let took = net.node(1).traffic().bytes_in - before;
        // The file once, and a little: not its first leaf (1 MiB) again.
        assert!(took < bytes.len() as u64 + (1 << 20) / 2, "{took} bytes for {}", bytes.len());
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_read_then_pinned_is_kept_on_disk_for_good() -> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let net = ipfs_net(2).await?;
        // Three leaves of 1 MiB chunks, under a root.
        let bytes = data(2_500_000);
        let cid = add(&net, 0, &bytes, None).await?;
        assert_eq!(get(&net, 1, cid, &GetOptions::default()).await?, bytes);
        let store = net.node(1).with_extension(|ipfs: &mut Ipfs, _| ipfs.store().clone()).await?;
        let root = store.get(&cid)?.context("the root, kept by the read")?;
        let blocks: Vec<Cid> = std::iter::once(cid).chain(files::links(&cid, &root)).collect();
        assert!(blocks.len() > 2, "a root and its leaves: {blocks:?}");
        assert!(blocks.iter().all(|c| store.has(c) && !store.synced(c)), "a read's cache");
        // Pinned: every block is written again, synced, though none is fetched.
        files::pin(net.node(1), cid, Duration::from_secs(60)).await?;
        assert!(blocks.iter().all(|c| store.synced(c)), "pinned blocks are on disk for good");
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_file_is_provided_on_the_ipfs_dht() -> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let net = ipfs_net(5).await?;
        let cid = add(&net, 1, &data(10_000), None).await?;
        let holder = net.peer_id(1);
        let found = dkvs_testnet::eventually(Duration::from_secs(60), async || {
            files::providers(net.node(4), cid).await.is_ok_and(|p| p.contains(&holder))
        })
        .await;
        assert!(found, "node 4 finds node 1 as a provider of {cid}");
        // Nobody provides what nobody added.
        let nothing = dkvs_ipfs::cid_of(0x55, b"never added");
        assert_eq!(files::providers(net.node(4), nothing).await?, Vec::new());
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_header_does_not_get_another_files_key_shared() -> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let net = ipfs_net(2).await?;
        let (alice, mallory) =
            (Keypair::generate(KeyType::Ed25519), Keypair::generate(KeyType::Ed25519));
        let cid = add(&net, 1, &data(100_000), Some(&alice)).await?;
        // Mallory copies the header of alice's file (public: its first leaf) into a file of
        // his own, and asks alice's node to share "her" file with him.
        let raw = get(&net, 0, cid, &GetOptions { raw: true, ..GetOptions::default() }).await?;
        let header_len = 8 + 1 + 1 + alice.account_id().to_string().len() + 32 + 4;
        let header = dkvs_ipfs::crypt::Header::parse(&raw[..header_len])?.context("a header")?;
        assert_eq!(header.owner, alice.account_id());
        let mut writer = dkvs_ipfs::unixfs::FileWriter::new(files::ENCRYPTED_LAYOUT);
        let mut blocks = writer.push_leaf(&raw[..header_len]);
        blocks.extend(writer.push_leaf(&[7u8; 1000]));
        let (forged, _, rest) = writer.finish();
        blocks.extend(rest);
        let store = net.node(0).with_extension(|ipfs: &mut Ipfs, _| ipfs.store().clone()).await?;
        for block in &blocks {
            store.put(&block.cid, &block.data)?;
        }
        let err = files::share(net.node(1), &alice, forged, &mallory.account_id(), 3_600_000)
            .await
            .expect_err("the copy does not open with the key its header names");
        assert!(matches!(err, IpfsError::Crypt(_)), "{err}");
        // Nothing was written for mallory: he still cannot open alice's file.
        let as_mallory = GetOptions { account: Some(mallory.clone()), ..GetOptions::default() };
        assert!(matches!(get(&net, 0, cid, &as_mallory).await, Err(IpfsError::Encrypted { .. })));
        let key = files::share_key(&alice.account_id(), &cid, &mallory.account_id());
        assert!(net.node(0).get(&key).await?.record.is_none(), "no share record");
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

/// Outbound streams are negotiated lazily, so one to a peer that does not speak bitswap opens
/// at once; identify's list of the peer's protocols tells it apart, and fetches leave it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_bitswap_is_left_out_of_the_fetches() -> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        // Node 1 is a dkvs node without the IPFS extension.
        let spawn: Spawn = Arc::new(move |identity, store, config, dir| {
            if dir.ends_with("node1") {
                return Ok(NodeBuilder::new(identity.clone(), store, config).spawn()?);
            }
            let ipfs = Ipfs::open(&dir.join("ipfs"), identity, BlockStoreConfig::default())?;
            Ok(NodeBuilder::new(identity.clone(), store, config)
                .with_extension(|_| ipfs)
                .spawn()?)
        });
        let net = TestNet::start_custom(3, Config::default(), dkvs_store::Config::default(), spawn)
            .await?;
        let (plain, ipfs_peer) = (net.peer_id(1), net.peer_id(2));
        let cid = dkvs_ipfs::cid_of(0x55, b"nobody added this either");
        let options = GetOptions { block_timeout: Duration::from_secs(1), ..GetOptions::default() };
        let mut seen = Vec::new();
        let left_out = dkvs_testnet::eventually(Duration::from_secs(60), async || {
            let err = get(&net, 0, cid, &options).await.expect_err("nobody has it");
            assert!(matches!(err, IpfsError::NotFound { .. }), "{err}");
            seen = net
                .node(0)
                .with_extension(|ipfs: &mut Ipfs, _| ipfs.peers())
                .await
                .unwrap_or_default();
            !seen.contains(&plain) && seen.contains(&ipfs_peer)
        })
        .await;
        assert!(left_out, "bitswap peers of node 0: {seen:?}; {plain} hosts no IPFS");
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_download_stays_within_what_its_peers_admit() -> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        // 160 MiB, 640 blocks fetched as fast as loopback goes (about two seconds, some
        // thousands of wants, haves and blocks both ways, one message each, were they sent
        // one by one): every message within what each node admits from a peer (200 a
        // second, bursts of 400). Bitswap is not paced by the node's outbox; its writers put
        // everything queued for a peer while a frame was written into the next one.
        let net = ipfs_net(3).await?;
        let bytes = data(160 << 20);
        let cid = add(&net, 1, &bytes, None).await?;
        assert!(get(&net, 2, cid, &GetOptions::default()).await? == bytes);
        for i in 0..net.len() {
            let node = net.node(i);
            let dropped = node.with_extension::<Ipfs, _>(|ipfs, _| ipfs.dropped()).await?;
            assert_eq!(dropped, 0, "node {i} refused or dropped bitswap messages");
            assert!(node.banned_peers().await.is_empty(), "node {i} banned a peer");
        }
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_close_once_bitswap_has_nothing_to_say_and_files_still_come()
-> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        // The idle timeout is the setting under test: 1 s instead of 60 s.
        let config =
            Config { idle_connection_timeout: Duration::from_secs(1), ..Config::default() };
        let net = ipfs_net_with(3, config).await?;
        let bytes = data(300_000);
        let cid = add(&net, 1, &bytes, None).await?;
        assert_eq!(get(&net, 2, cid, &GetOptions::default()).await?, bytes);
        // Bitswap's streams end once it has nothing to say, and no longer hold the
        // connections open.
        for i in 0..net.len() {
            let idle = dkvs_testnet::eventually(Duration::from_secs(60), async || {
                net.node(i).connected_peers().await.is_empty()
            })
            .await;
            let left = net.node(i).connected_peers().await;
            assert!(idle, "node {i} stays connected to {left:?}");
        }
        // A node with no connection left still finds the file's providers.
        assert_eq!(get(&net, 0, cid, &GetOptions::default()).await?, bytes);
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

/// A tar archive of `entries`: a path and its bytes, or `None` for a directory; in order.
fn archive(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, bytes) in entries {
        let mut header = tar::Header::new_gnu();
        match bytes {
            Some(bytes) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(bytes.len() as u64);
                header.set_mode(0o644);
                builder.append_data(&mut header, path, *bytes).expect("appended");
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_mode(0o755);
                builder.append_data(&mut header, path, &[][..]).expect("appended");
            }
        }
    }
    builder.into_inner().expect("an archive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_is_added_as_other_tools_make_it_and_read_by_path_on_another_node()
-> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let net = ipfs_net(2).await?;
        let (index, big, note) = (b"<h1>hi</h1>".to_vec(), data(2_500_000), "名前".as_bytes());
        let tar = archive(&[
            ("./", None),
            ("index.html", Some(&index)),
            // A file before the directories it is in, which are listed later or not at all.
            ("sub/deeper/note.txt", Some(note)),
            ("sub/", None),
            ("sub/big.bin", Some(&big)),
            ("empty/", None),
            ("名前.txt", Some(b"")),
        ]);
        let added = files::add_archive(net.node(0), std::io::Cursor::new(tar), |_| {}).await?;
        assert_eq!((added.files, added.directories), (4, 4), "{added:?}");
        assert_eq!(added.read, (index.len() + big.len() + note.len()) as u64);

        // Each file has the CID it has alone; the directories link them by name.
        let blocks = net.node(0).with_extension(|ipfs: &mut Ipfs, _| ipfs.store().clone()).await?;
        let root = blocks.get(&added.cid)?.context("the root is kept")?;
        let entries = dkvs_ipfs::unixfs::entries(&root)?;
        let names: Vec<&str> = entries.iter().filter_map(|l| l.name.as_deref()).collect();
        assert_eq!(names, ["empty", "index.html", "sub", "名前.txt"]);
        assert_eq!(entries[0].cid, dkvs_ipfs::unixfs::directory(Vec::new()).cid);
        let sizes: u64 = entries.iter().filter_map(|l| l.size).sum();
        assert_eq!(added.stored, sizes + root.len() as u64, "the root's cumulative size");
        assert_eq!(entries[1].size, Some(index.len() as u64), "a raw leaf's size is its bytes");
        for (path, bytes) in [
            (&["index.html"][..], &index[..]),
            (&["sub", "big.bin"], &big),
            (&["sub", "deeper", "note.txt"], note),
            (&["名前.txt"], b""),
        ] {
            let cid = files::resolve(net.node(1), added.cid, path, Duration::from_secs(30)).await?;
            assert_eq!(cid, add(&net, 1, bytes, None).await?, "{path:?}: the CID it has alone");
            let got = get(&net, 1, cid, &GetOptions::default()).await?;
            assert!(got == bytes, "{path:?} came back as {} other bytes", got.len());
        }
        // A directory past one block's worth of names is sharded; its names are found by
        // their hashes, and its listing has them all.
        let names: Vec<String> = (0..3000).map(|i| format!("{i:0>90}")).collect();
        let mut entries: Vec<(&str, Option<&[u8]>)> =
            names.iter().map(|name| (name.as_str(), Some(name.as_bytes()))).collect();
        entries.push(("sub/in.txt", Some(b"in")));
        let many = files::add_archive(net.node(0), std::io::Cursor::new(archive(&entries)), |_| {})
            .await?;
        let block = blocks.get(&many.cid)?.context("the root is kept")?;
        let kind = dkvs_ipfs::unixfs::kind(&many.cid, &block)?;
        assert_eq!(kind, dkvs_ipfs::unixfs::Kind::ShardedDirectory);
        for name in [&names[0], &names[1777], &names[2999], &"sub".to_owned()] {
            let cid = files::resolve(net.node(1), many.cid, &[name], TEST).await?;
            if name != "sub" {
                assert_eq!(get(&net, 1, cid, &GetOptions::default()).await?, name.as_bytes());
            }
        }
        let none = files::resolve(net.node(1), many.cid, &["nothing"], TEST).await;
        assert!(matches!(none, Err(IpfsError::NoSuchPath { .. })), "{none:?}");
        // Told by its root node alone; listed whole on asking.
        let stat = files::stat(net.node(1), many.cid, &GetOptions::default()).await?;
        assert!(matches!(stat.directory, Some(files::Directory::Sharded)), "{stat:?}");
        let listed = files::list(net.node(1), many.cid, TEST).await?;
        let listed: Vec<String> = listed.into_iter().filter_map(|l| l.name).collect();
        let mut expected = names.clone();
        expected.push("sub".to_owned());
        assert_eq!(listed, expected, "every entry, by name");
        let dropped = net.node(0).with_extension(|ipfs: &mut Ipfs, _| ipfs.dropped()).await?;
        assert_eq!(dropped, 0, "the listing's nodes asked for a few in each message");

        // The root alone is pinned: unpinning it lets the whole tree go.
        let pins = blocks.pins();
        assert!(pins.contains(&added.cid), "{pins:?}");
        let file = files::resolve(net.node(0), added.cid, &["sub", "big.bin"], TEST).await?;
        assert!(!pins.contains(&file), "{pins:?}");

        // Another node pins both directories whole (a sharded one too): with their adder
        // gone, and after a garbage collection, every file reads there.
        let theirs = net.node(1).with_extension(|ipfs: &mut Ipfs, _| ipfs.store().clone()).await?;
        let pinned = files::pin(net.node(1), added.cid, TEST).await?;
        assert!(pinned >= added.read, "{pinned} bytes of {}", added.read);
        files::pin(net.node(1), many.cid, TEST).await?;
        // 3,000 small blocks asked for a few in each message: nothing went past what the
        // peer admits (a message each did, and each dropped want waited 15 s).
        let dropped = net.node(0).with_extension(|ipfs: &mut Ipfs, _| ipfs.dropped()).await?;
        assert_eq!(dropped, 0, "messages the adder dropped");
        let mut net = net;
        net.kill(0).await;
        theirs.collect(files::links).await?;
        for (root, path, bytes) in [
            (added.cid, &["sub", "big.bin"][..], &big[..]),
            (added.cid, &["sub", "deeper", "note.txt"], note),
            (many.cid, &[names[2222].as_str()], names[2222].as_bytes()),
            (many.cid, &["sub", "in.txt"], b"in"),
        ] {
            let cid = files::resolve(net.node(1), root, path, Duration::from_secs(2)).await?;
            let options =
                GetOptions { block_timeout: Duration::from_secs(2), ..GetOptions::default() };
            assert_eq!(get(&net, 1, cid, &options).await?, bytes, "{path:?}");
        }
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_holding_what_is_not_added_is_refused_by_name_and_leaves_no_block()
-> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let net = ipfs_net(2).await?;
        let blocks = net.node(0).with_extension(|ipfs: &mut Ipfs, _| ipfs.store().clone()).await?;
        let (count, bytes) = (blocks.len(), blocks.bytes());
        let file = data(300_000);
        let raw_entry = |name: &[u8], kind: tar::EntryType, link: Option<&str>| {
            // Names and kinds tar's builder would refuse to write.
            let mut header = tar::Header::new_gnu();
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.set_entry_type(kind);
            header.set_size(0);
            if let Some(link) = link {
                header.set_link_name(link).expect("a link name");
            }
            header.set_cksum();
            let mut builder = tar::Builder::new(Vec::new());
            let mut first = tar::Header::new_gnu();
            first.set_size(file.len() as u64);
            builder.append_data(&mut first, "first.bin", &file[..]).expect("appended");
            builder.append(&header, &[][..]).expect("appended");
            builder.into_inner().expect("an archive")
        };
        // An extension header of `kind` that says it holds `size` bytes, then `data`.
        let extension = |kind: tar::EntryType, size: u64, data: &[u8]| {
            let mut bytes = archive(&[("first.bin", Some(&file))]);
            bytes.truncate(bytes.len() - 1024); // its end marker
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_size(size);
            header.as_old_mut().name[..9].copy_from_slice(b"././@Long");
            header.set_cksum();
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend_from_slice(data);
            bytes.resize(bytes.len().next_multiple_of(512) + 1024, 0);
            bytes
        };
        let long_shown = format!("{}...", &"d/".repeat(128));
        let long_name = "n".repeat(256);
        let mut cut = archive(&[("first.bin", Some(&file)), ("cut.bin", Some(&file))]);
        cut.truncate(cut.len() - 1024 - 200_000);
        let cases: Vec<(Vec<u8>, &str, &str)> = vec![
            (raw_entry(b"../up", tar::EntryType::Regular, None), "../up", "leaves the directory"),
            (raw_entry(b"sub/../../up", tar::EntryType::Regular, None), "sub/../../up", "`..`"),
            (raw_entry(b"to", tar::EntryType::Symlink, Some("/etc")), "to", "links are not added"),
            (raw_entry(b"fifo", tar::EntryType::Fifo, None), "fifo", "not a regular file"),
            (raw_entry(b"bad\xff", tar::EntryType::Regular, None), "bad\u{fffd}", "not UTF-8"),
            (
                archive(&[("first.bin", Some(&file)), ("a", Some(b"x")), ("a", Some(b"y"))]),
                "a",
                "twice",
            ),
            (
                archive(&[("first.bin", Some(&file)), ("a", Some(b"x")), ("a/b", Some(b"y"))]),
                "a/b",
                "used as a directory",
            ),
            (cut, "cut.bin", "ends inside the file"),
            (
                archive(&[("first.bin", Some(&file)), (&"d/".repeat(2100), None)]),
                &long_shown,
                "a path over 4096 bytes",
            ),
            (
                archive(&[("first.bin", Some(&file)), (&"n".repeat(256), Some(b"x"))]),
                &long_name,
                "a name over 255 bytes",
            ),
            (
                extension(tar::EntryType::GNULongName, 1 << 30, b""),
                "(an extension header)",
                "over the 65536 read",
            ),
            (
                extension(tar::EntryType::XHeader, 12, b"12 size=999\n"),
                "(an extension header)",
                "a PAX size",
            ),
            (
                extension(tar::EntryType::XHeader, 23, b"23 GNU.sparse.map=0,10\n"),
                "(an extension header)",
                "a sparse file",
            ),
            (raw_entry(b"holes", tar::EntryType::GNUSparse, None), "holes", "not a regular file"),
        ];
        for (tar, path, why) in cases {
            let failed = files::add_archive(net.node(0), std::io::Cursor::new(tar), |_| {}).await;
            let Err(IpfsError::Archive { path: named, why: said }) = &failed else {
                panic!("{path}: {failed:?}");
            };
            assert_eq!(named, path);
            assert!(said.contains(why), "{path}: {said}");
            assert_eq!((blocks.len(), blocks.bytes()), (count, bytes), "{path}: nothing is left");
        }
        // An archive cut where an entry could start (its end marker missing), or that is no
        // archive at all.
        let whole = archive(&[("first.bin", Some(&file)), ("second.bin", Some(b"2"))]);
        let at_entry = whole[..whole.len() - 1024 - 1024].to_vec();
        let no_marker = whole[..whole.len() - 1024].to_vec();
        let garbage = vec![7u8; 4096];
        for (tar, why) in
            [(at_entry, "cut short"), (no_marker, "cut short"), (garbage, "does not read as tar")]
        {
            let failed = files::add_archive(net.node(0), std::io::Cursor::new(tar), |_| {}).await;
            let said = failed.as_ref().map_err(ToString::to_string).expect_err("refused");
            assert!(matches!(failed, Err(IpfsError::NotAnArchive(_))), "{said}");
            assert!(said.contains(why), "{said}");
            assert_eq!((blocks.len(), blocks.bytes()), (count, bytes), "{why}: nothing is left");
        }
        let whole = files::add_archive(net.node(0), std::io::Cursor::new(whole), |_| {}).await?;
        assert_eq!(whole.files, 2);
        let (count, bytes) = (blocks.len(), blocks.bytes());
        // Deep paths make a directory per name: 60 of 2,000 names each are refused at the
        // 100,000th directory, before the archive is read through.
        let deep: Vec<String> = (0..60).map(|i| format!("{i}/{}f", "d/".repeat(1999))).collect();
        let deep: Vec<(&str, Option<&[u8]>)> =
            deep.iter().map(|path| (path.as_str(), Some(&b"x"[..]))).collect();
        let failed =
            files::add_archive(net.node(0), std::io::Cursor::new(archive(&deep)), |_| {}).await;
        let said = failed.as_ref().map_err(ToString::to_string).expect_err("refused");
        assert!(said.contains("over 100000 directories"), "{said}");
        assert_eq!((blocks.len(), blocks.bytes()), (count, bytes), "nothing of it is left");

        // Long names as GNU tar writes them (a long-name header) and as PAX does (a path
        // record), and a directory as an old (v7) archive marks it: all read.
        let long = format!("{}file.txt", "deep/".repeat(40));
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(4);
        builder.append_data(&mut header, &long, &b"gnu!"[..]).expect("a GNU long name");
        let mut header = tar::Header::new_ustar();
        header.set_size(4);
        header.set_path("short").expect("a path");
        header.set_cksum();
        let pax = format!("{}pax.txt", "wide/".repeat(40));
        builder.append_pax_extensions([("path", pax.as_bytes())]).expect("a PAX record");
        builder.append(&header, &b"pax!"[..]).expect("appended");
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..4].copy_from_slice(b"old/");
        header.set_size(0);
        header.set_cksum();
        builder.append(&header, &[][..]).expect("a v7 directory");
        let tree = builder.into_inner().expect("an archive");
        let tree = files::add_archive(net.node(0), std::io::Cursor::new(tree), |_| {}).await?;
        assert_eq!((tree.files, tree.directories), (2, 82), "{tree:?}");
        for (path, bytes) in [(long, b"gnu!"), (pax, b"pax!")] {
            let names: Vec<&str> = path.split('/').collect();
            let cid = files::resolve(net.node(0), tree.cid, &names, TEST).await?;
            assert_eq!(get(&net, 0, cid, &GetOptions::default()).await?, bytes);
        }
        let old = files::resolve(net.node(0), tree.cid, &["old"], TEST).await?;
        assert_eq!(old, dkvs_ipfs::unixfs::directory(Vec::new()).cid, "an empty directory");
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}
