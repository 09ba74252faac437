//! Mailboxes on a network of real nodes (loopback TCP, default configuration), each hosting
//! the mail extension with its mail on disk.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dkvs_account::{KeyType, Keypair};
use dkvs_mail::client::request;
use dkvs_mail::wire::{AckBody, FetchBody, Item, Request, Response, Signed};
use dkvs_mail::{Envelope, Inbox, Mail, MailError, Refusal, SendError, SendOptions, ShelfConfig};
use dkvs_net::libp2p::swarm::behaviour::toggle::Toggle;
use dkvs_net::libp2p::{PeerId, request_response};
use dkvs_net::{Config, NodeBuilder};
use dkvs_testnet::{Spawn, TestNet};

/// Every test ends within this.
const TEST: Duration = Duration::from_secs(240);

/// A network of `n` mail nodes; the mail directories, in node order.
async fn mail_net(n: usize) -> anyhow::Result<(TestNet, Arc<Mutex<Vec<PathBuf>>>)> {
    mail_net_with(n, Config::default()).await
}

/// [`mail_net`] with `config` (for a test of one of its settings).
async fn mail_net_with(
    n: usize,
    config: Config,
) -> anyhow::Result<(TestNet, Arc<Mutex<Vec<PathBuf>>>)> {
    let dirs = Arc::new(Mutex::new(Vec::new()));
    let seen = dirs.clone();
    let spawn: Spawn = Arc::new(move |identity, store, config, dir| {
        let mail_dir = dir.join("mail");
        let mut dirs = seen.lock().expect("not poisoned");
        if !dirs.contains(&mail_dir) {
            dirs.push(mail_dir.clone());
        }
        let mail = Mail::open(&mail_dir, identity.clone(), ShelfConfig::default())?;
        Ok(NodeBuilder::new(identity.clone(), store, config).with_extension(|_| mail).spawn()?)
    });
    let net = TestNet::start_custom(n, config, dkvs_store::Config::default(), spawn).await?;
    Ok((net, dirs))
}

fn account() -> Keypair {
    Keypair::generate(KeyType::Ed25519)
}

fn index_of(net: &TestNet, peer: PeerId) -> usize {
    (0..net.len()).find(|&i| net.peer_id(i) == peer).expect("a replica of this network")
}

/// How far node `i` is from `account`'s mailbox.
fn distance(net: &TestNet, account: &Keypair, i: usize) -> dkvs_net::libp2p::kad::KBucketDistance {
    let mailbox = dkvs_mail::Mailbox::of(&account.account_id());
    let target = dkvs_net::libp2p::kad::KBucketKey::new(mailbox.0.to_vec());
    target.distance(&dkvs_net::libp2p::kad::KBucketKey::from(net.peer_id(i)))
}

/// The nodes that signed custody of a letter.
fn holders(net: &TestNet, receipt: &dkvs_mail::SendReceipt) -> Vec<usize> {
    receipt.custody.iter().map(|c| index_of(net, c.replica)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_recipient_gets_every_letter_once_in_order_with_two_of_five_replicas_dead()
-> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let (mut net, _) = mail_net(8).await?;
        let (alice, carol, bob) = (account(), Keypair::generate(KeyType::Secp256k1), account());
        let options = SendOptions::default();
        let mut holders = BTreeSet::new();
        // Two senders on two nodes, interleaved; bob has no node running.
        for i in 0..10 {
            for (node, sender, name) in [(1, &alice, "alice"), (2, &carol, "carol")] {
                let body = format!("{name} {i}").into_bytes();
                let receipt =
                    dkvs_mail::send(net.node(node), sender, &bob.account_id(), body, &options)
                        .await?;
                assert_eq!(receipt.custody.len(), 5, "kept on five replicas: {receipt:?}");
                assert!(receipt.custody.iter().all(|c| c.verify() && c.digest == receipt.digest));
                holders.extend(receipt.custody.iter().map(|c| index_of(&net, c.replica)));
            }
        }
        // Two of the replicas die; bob comes back on a node that sent nothing.
        let reader = 7;
        let dead: Vec<usize> =
            holders.iter().copied().filter(|&i| ![1, 2, reader].contains(&i)).take(2).collect();
        assert_eq!(dead.len(), 2, "replicas {holders:?}");
        for &i in &dead {
            net.kill(i).await;
        }
        let mut inbox = Inbox::new();
        let fetched = dkvs_mail::read(net.node(reader), &bob, &mut inbox, &options).await?;
        assert!(fetched.refused.is_empty(), "{:?}", fetched.refused);
        let bodies: Vec<String> = fetched
            .letters
            .iter()
            .map(|l| String::from_utf8(l.body.clone()).expect("text"))
            .collect();
        assert_eq!(bodies.len(), 20, "every letter once: {bodies:?}");
        let acked = fetched.acked.as_ref().expect("read acknowledges");
        assert!(acked.failed.is_empty(), "{:?}", acked.failed);
        assert!(acked.deleted >= 20, "each letter deleted where it was read: {acked:?}");
        for (name, sender) in [("alice", &alice), ("carol", &carol)] {
            let from: Vec<&String> = fetched
                .letters
                .iter()
                .zip(&bodies)
                .filter(|(l, _)| l.sender == sender.account_id())
                .map(|(_, b)| b)
                .collect();
            let expected: Vec<String> = (0..10).map(|i| format!("{name} {i}")).collect();
            assert_eq!(from, expected.iter().collect::<Vec<_>>(), "in order per sender");
        }
        // Read and acknowledged: a fresh inbox on another node finds nothing left.
        let again = dkvs_mail::read(net.node(1), &bob, &mut Inbox::new(), &options).await?;
        assert!(again.letters.is_empty(), "acknowledged mail is deleted: {:?}", again.letters);
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_recipient_reads_or_deletes_and_tampering_and_senders_do_not_show()
-> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let (net, dirs) = mail_net(5).await?;
        let (alice, bob, mallory) = (account(), account(), account());
        let options = SendOptions::default();
        let mut digests = Vec::new();
        for i in 0..3 {
            let body = format!("secret {i}").into_bytes();
            let receipt =
                dkvs_mail::send(net.node(1), &alice, &bob.account_id(), body, &options).await?;
            digests.push(receipt.digest);
        }
        let replica = net.peer_id(3);
        let node = net.node(2);
        // Mallory asks for bob's mailbox in bob's name, and with her own signature.
        let mut forged =
            Signed::new(&mallory, FetchBody { replica, after: 0, limit: 100, now_ms: now() });
        forged.account = bob.account_id();
        assert_eq!(
            request(node, replica, Request::Fetch(forged)).await,
            Ok(Response::Refused(Refusal::BadSignature))
        );
        let own = Signed::new(&mallory, FetchBody { replica, after: 0, limit: 100, now_ms: now() });
        assert_eq!(
            request(node, replica, Request::Fetch(own)).await,
            Ok(Response::Batch { items: vec![], more: false }),
            "her own mailbox is empty; bob's mail is not hers"
        );
        // Forged acks delete nothing: in bob's name, in her own, or bob's for another replica.
        let body = AckBody { replica, now_ms: now(), digests: digests.clone() };
        let mut forged = Signed::new(&mallory, body.clone());
        forged.account = bob.account_id();
        assert_eq!(
            request(node, replica, Request::Ack(forged)).await,
            Ok(Response::Refused(Refusal::BadSignature))
        );
        let own = Signed::new(&mallory, body.clone());
        assert_eq!(request(node, replica, Request::Ack(own)).await, Ok(Response::Acked(0)));
        let elsewhere = Signed::new(&bob, AckBody { replica: net.peer_id(4), ..body.clone() });
        assert_eq!(
            request(node, replica, Request::Ack(elsewhere)).await,
            Ok(Response::Refused(Refusal::BadSignature))
        );
        // An old request is refused (and so is one from a clock far ahead).
        let stale = Signed::new(&bob, AckBody { now_ms: now() - 3_600_000, ..body });
        assert_eq!(
            request(node, replica, Request::Ack(stale)).await,
            Ok(Response::Refused(Refusal::OutOfTime))
        );

        // A replica hands over a tampered copy of a letter: the recipient refuses it.
        let mut tampered =
            Envelope::seal(&alice, &bob.account_id(), b"pay mallory".to_vec(), now(), 3_600_000)?;
        let last = tampered.sealed.len() - 1;
        tampered.sealed[last] ^= 1;
        let kept = request(node, replica, Request::Deposit(tampered.encode())).await;
        assert!(matches!(kept, Ok(Response::Custody(_))), "{kept:?}");

        // No replica's files name the sender.
        let alice_key = alice.public().as_bytes().to_vec();
        for dir in dirs.lock().expect("not poisoned").iter() {
            for file in std::fs::read_dir(dir)? {
                let bytes = std::fs::read(file?.path())?;
                assert!(!bytes.windows(alice_key.len()).any(|w| w == alice_key));
            }
        }

        let fetched = dkvs_mail::read(net.node(0), &bob, &mut Inbox::new(), &options).await?;
        let bodies: Vec<&[u8]> = fetched.letters.iter().map(|l| l.body.as_slice()).collect();
        assert_eq!(bodies, [&b"secret 0"[..], b"secret 1", b"secret 2"]);
        assert!(fetched.letters.iter().all(|l| l.sender == alice.account_id()));
        assert_eq!(fetched.refused.len(), 1, "{:?}", fetched.refused);
        assert!(matches!(fetched.refused[0].1, MailError::Unreadable(_)));
        // The tampered copy was acknowledged with the rest: nothing is left.
        let again = dkvs_mail::fetch(net.node(4), &bob, &Inbox::new(), &options).await?;
        assert!(again.letters.is_empty() && again.refused.is_empty(), "{again:?}");
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_is_an_answer_and_a_flooder_pushes_out_nothing() -> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let (net, _) = mail_net(3).await?;
        let (alice, bob, flooder) = (account(), account(), account());
        let options = SendOptions::default();
        dkvs_mail::send(net.node(0), &alice, &bob.account_id(), b"first".to_vec(), &options)
            .await?;
        // The flooder's node fills its share of bob's mailbox on every replica (at the rate
        // replicas admit from one peer: told "busy" when it goes faster), then is told "full".
        let big = vec![0x55; dkvs_mail::MAX_BODY];
        let (mut sent, mut busy) = (0, 0);
        let refused = loop {
            let to = bob.account_id();
            match dkvs_mail::send(net.node(1), &flooder, &to, big.clone(), &options).await {
                Ok(_) => sent += 1,
                Err(SendError::NotKept(receipt)) => {
                    assert!(receipt.failed.is_empty(), "{receipt:?}");
                    if receipt.refused.iter().all(|(_, r)| *r == Refusal::MailboxFull) {
                        break receipt;
                    }
                    busy += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
            assert!(sent < 100 && busy < 200, "the quota never refused");
        };
        assert!(sent >= 10, "the flooder's node had its share first: {sent}");
        assert_eq!(refused.refused.len(), 3, "{refused:?}");
        assert!(refused.refused.iter().all(|(_, r)| *r == Refusal::MailboxFull));
        let error = SendError::NotKept(refused).to_string();
        assert!(error.contains("mailbox full"), "{error}");
        // Others still reach bob, and nothing kept was pushed out.
        dkvs_mail::send(net.node(2), &alice, &bob.account_id(), b"second".to_vec(), &options)
            .await?;
        let fetched = dkvs_mail::fetch(net.node(2), &bob, &Inbox::new(), &options).await?;
        let from_alice: Vec<&[u8]> = fetched
            .letters
            .iter()
            .filter(|l| l.sender == alice.account_id())
            .map(|l| l.body.as_slice())
            .collect();
        assert_eq!(from_alice, [&b"first"[..], b"second"]);
        assert_eq!(fetched.letters.len(), sent + 2);
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_as_fast_as_it_can_is_paced_not_told_busy() -> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let (net, _) = mail_net(4).await?;
        let (alice, bob) = (account(), account());
        let options = SendOptions::default();
        // 200 letters of 4 KiB at once from one node: over 800 KiB to each replica, more than
        // a replica admits from one peer at once (512 KiB from a new one, then 128 KiB a
        // second). Each waits for its turn at the sender instead, and every replica keeps it.
        let body = vec![0x42; 4 << 10];
        let to = bob.account_id();
        let sends =
            (0..200).map(|_| dkvs_mail::send(net.node(0), &alice, &to, body.clone(), &options));
        let receipts = futures::future::join_all(sends).await;
        for receipt in receipts {
            let receipt = receipt?;
            assert!(receipt.refused.is_empty() && receipt.failed.is_empty(), "{receipt:?}");
            assert_eq!(receipt.custody.len(), 4, "every node keeps it: {receipt:?}");
        }
        let pacing = net.node(0).pacing().await;
        assert!(pacing.waited > 0 && pacing.held_back == 0, "{pacing:?}");
        let fetched = dkvs_mail::fetch(net.node(3), &bob, &Inbox::new(), &options).await?;
        assert_eq!(fetched.letters.len(), 200);
        for i in 0..net.len() {
            assert!(net.node(i).banned_peers().await.is_empty(), "node {i} banned a peer");
        }
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_keeps_what_it_signed_for_across_a_crash() -> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let (mut net, _) = mail_net(3).await?;
        let (alice, bob) = (account(), account());
        let options = SendOptions::default();
        let receipt =
            dkvs_mail::send(net.node(0), &alice, &bob.account_id(), b"kept".to_vec(), &options)
                .await?;
        assert!(receipt.custody.iter().any(|c| c.replica == net.peer_id(2)), "{receipt:?}");
        // Node 2 crashes right after its receipt and comes back; then the others go.
        net.kill(2).await;
        net.restart(2).await?;
        net.kill(0).await;
        net.kill(1).await;
        let fetched = dkvs_mail::read(net.node(2), &bob, &mut Inbox::new(), &options).await?;
        assert_eq!(fetched.replicas, vec![net.peer_id(2)]);
        let bodies: Vec<&[u8]> = fetched.letters.iter().map(|l| l.body.as_slice()).collect();
        assert_eq!(bodies, [&b"kept"[..]]);
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_mail_says_so() -> anyhow::Result<()> {
    let net = TestNet::start(2, Config::default()).await?;
    let (alice, bob) = (account(), account());
    let error =
        dkvs_mail::send(net.node(0), &alice, &bob.account_id(), vec![], &SendOptions::default())
            .await
            .expect_err("no mail on this node");
    assert!(error.to_string().contains("Mail"), "{error}");
    net.shutdown().await;
    Ok(())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_is_at_least_once_until_acknowledged_and_a_watch_hears_new_mail()
-> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let (net, _) = mail_net(4).await?;
        let (alice, bob) = (account(), Arc::new(account()));
        let options = SendOptions::default();
        // The longest life a sender can ask for: no overflow anywhere, the replicas cap it.
        let forever = SendOptions::default().with_ttl_ms(u64::MAX);
        dkvs_mail::send(net.node(1), &alice, &bob.account_id(), b"one".to_vec(), &forever).await?;
        // A letter written ten minutes ahead of bob's clock is refused but kept for later.
        let ahead = Envelope::seal(
            &alice,
            &bob.account_id(),
            b"ahead".to_vec(),
            now() + 600_000,
            3_600_000,
        )?;
        let kept = request(net.node(1), net.peer_id(2), Request::Deposit(ahead.encode())).await;
        assert!(matches!(kept, Ok(Response::Custody(_))), "{kept:?}");

        let mut inbox = Inbox::new();
        let first = dkvs_mail::fetch(net.node(3), &bob, &inbox, &options).await?;
        assert_eq!(first.letters.len(), 1);
        assert!(
            matches!(first.refused[..], [(_, MailError::OutOfTime { .. })]),
            "{:?}",
            first.refused
        );
        // Not acknowledged: it comes again.
        let again = dkvs_mail::fetch(net.node(0), &bob, &inbox, &options).await?;
        assert_eq!(again.letters, first.letters);
        let report = dkvs_mail::ack(net.node(0), &bob, &mut inbox, &again, &options).await;
        assert!(report.failed.is_empty() && report.deleted >= 1, "{report:?}");
        assert!(inbox.has_read(&alice.account_id(), &first.letters[0].id));
        // Its sender asked for forever; the inbox remembers it a bounded time.
        let until = inbox.entries().map(|(_, _, until)| until).max().unwrap_or(0);
        assert!(until <= now() + 31 * 24 * 3_600_000, "remembered until {until}");
        assert_eq!(report.receipts_sent, 1, "{report:?}");
        // Alice hears that bob read it: a receipt signed by bob, not a letter.
        let alices = dkvs_mail::read(net.node(2), &alice, &mut Inbox::new(), &options).await?;
        assert!(alices.letters.is_empty(), "{:?}", alices.letters);
        assert_eq!(alices.receipts.len(), 1);
        assert_eq!(alices.receipts[0].reader, bob.account_id());
        assert_eq!(alices.receipts[0].ids, [first.letters[0].id]);
        let after = dkvs_mail::fetch(net.node(0), &bob, &inbox, &options).await?;
        assert!(after.letters.is_empty());
        assert_eq!(
            after.refused.len(),
            1,
            "the letter from the future is still kept: {:?}",
            after.refused
        );

        // A watch on bob's node hears a new letter as it is deposited.
        let mut watch =
            dkvs_mail::MailWatch::start(net.node(3).clone(), bob.clone(), options.clone()).await?;
        let seen = inbox.clone();
        let waiting = tokio::spawn(async move {
            let next = tokio::time::timeout(Duration::from_secs(30), watch.next(&seen)).await;
            (watch, next)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        dkvs_mail::send(net.node(1), &alice, &bob.account_id(), b"live".to_vec(), &options).await?;
        let (mut watch, heard) = waiting.await?;
        let heard = heard??;
        let bodies: Vec<&[u8]> = heard.letters.iter().map(|l| l.body.as_slice()).collect();
        assert_eq!(bodies, [&b"live"[..]]);
        dkvs_mail::ack(net.node(3), &bob, &mut inbox, &heard, &options).await;

        // Junk in bob's mailbox while he watches is acknowledged away; the next letter comes.
        let mut junk =
            Envelope::seal(&alice, &bob.account_id(), b"junk".to_vec(), now(), 3_600_000)?;
        let last = junk.sealed.len() - 1;
        junk.sealed[last] ^= 1;
        let seen = inbox.clone();
        let waiting = tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(30), watch.next(&seen)).await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let kept = request(net.node(1), net.peer_id(2), Request::Deposit(junk.encode())).await;
        assert!(matches!(kept, Ok(Response::Custody(_))), "{kept:?}");
        // Node 2 tells the watch, which fetches the junk and acknowledges it away at once
        // (before the next letter is sent: fetched with it, it would come back with it, to be
        // acknowledged by bob).
        let digest = junk.digest();
        let gone = dkvs_testnet::eventually(Duration::from_secs(30), async || {
            let held = net
                .node(2)
                .with_extension::<Mail, _>(move |mail, _| mail.shelf().envelope(&digest).is_some());
            held.await.ok() == Some(false)
        });
        assert!(gone.await, "the junk is acknowledged away while bob watches");
        dkvs_mail::send(net.node(1), &alice, &bob.account_id(), b"after".to_vec(), &options)
            .await?;
        let heard = waiting.await???;
        let bodies: Vec<&[u8]> = heard.letters.iter().map(|l| l.body.as_slice()).collect();
        assert_eq!(bodies, [&b"after"[..]]);
        let left = dkvs_mail::fetch(net.node(0), &bob, &inbox, &options).await?;
        assert!(
            left.refused.iter().all(|(_, e)| matches!(e, MailError::OutOfTime { .. })),
            "only the letter from the future is left: {:?}",
            left.refused
        );
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn letters_and_receipts_left_for_later_come_again_and_only_they_do() -> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let (net, _) = mail_net(3).await?;
        let (alice, bob, carol) = (account(), account(), account());
        let options = SendOptions::default();
        // Two delivery receipts wait for alice: bob read her two letters one at a time.
        let mut read_by_bob = Vec::new();
        for text in ["to bob 1", "to bob 2"] {
            let body = text.as_bytes().to_vec();
            dkvs_mail::send(net.node(0), &alice, &bob.account_id(), body, &options).await?;
            let read = dkvs_mail::read(net.node(1), &bob, &mut Inbox::new(), &options).await?;
            assert_eq!(read.letters.len(), 1);
            read_by_bob.push(read.letters[0].id);
        }
        for i in 0..4 {
            let body = format!("to alice {i}").into_bytes();
            dkvs_mail::send(net.node(2), &carol, &alice.account_id(), body, &options).await?;
        }
        let mut inbox = Inbox::new();
        let mut first = dkvs_mail::fetch(net.node(0), &alice, &inbox, &options).await?;
        assert_eq!((first.letters.len(), first.receipts.len()), (4, 2), "{first:?}");
        let all = first.letters.clone();
        assert_eq!(first.leave_for_later(1, 1), 4, "three letters and a receipt left");
        assert_eq!(first.letters, all[..1]);
        assert_eq!(first.receipts.len(), 1);
        let report = dkvs_mail::ack(net.node(0), &alice, &mut inbox, &first, &options).await;
        assert!(report.failed.is_empty(), "{report:?}");
        assert_eq!(report.receipts_sent, 1, "carol is told of the letter read alone");
        assert!(inbox.has_read(&carol.account_id(), &all[0].id));
        assert!(!all[1..].iter().any(|l| inbox.has_read(&carol.account_id(), &l.id)));

        // On the replicas (asked with an inbox that hides nothing), the rest is all that is
        // left, and a new inbox is as good as alice's.
        let rest = dkvs_mail::fetch(net.node(1), &alice, &Inbox::new(), &options).await?;
        assert_eq!(rest.letters, all[1..]);
        assert_eq!(rest.receipts.len(), 1);
        let mut ids: Vec<_> =
            first.receipts.iter().chain(&rest.receipts).flat_map(|r| r.ids.clone()).collect();
        ids.sort();
        read_by_bob.sort();
        assert_eq!(ids, read_by_bob, "each receipt came once");
        let mut rest = dkvs_mail::fetch(net.node(0), &alice, &inbox, &options).await?;
        assert_eq!((rest.letters.len(), rest.receipts.len()), (3, 1));
        // Leaving nothing out leaves nothing.
        assert_eq!(rest.leave_for_later(usize::MAX, usize::MAX), 0);
        dkvs_mail::ack(net.node(0), &alice, &mut inbox, &rest, &options).await;
        let none = dkvs_mail::fetch(net.node(2), &alice, &Inbox::new(), &options).await?;
        assert!(none.letters.is_empty() && none.receipts.is_empty(), "{none:?}");
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_sent_longer_ago_than_an_inbox_remembers_or_far_ahead_is_refused_and_deleted()
-> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let (net, _) = mail_net(3).await?;
        let (alice, bob) = (account(), account());
        const DAY: u64 = 24 * 3_600_000;
        // Sent 31 days ago, to live 60 days: kept by a replica (it has not expired), but an
        // inbox remembers letters read for 30 days only.
        let old =
            Envelope::seal(&alice, &bob.account_id(), b"old".to_vec(), now() - 31 * DAY, 60 * DAY)?;
        // Written two hours ahead (a sender that would fill the mailbox with letters nobody
        // can read yet), and ten minutes ahead (a clock a little off: left for later).
        const MINUTE: u64 = 60_000;
        let ahead =
            Envelope::seal(&alice, &bob.account_id(), b"ahead".to_vec(), now() + 120 * MINUTE, DAY)?;
        let soon_at = now() + 10 * MINUTE;
        let soon = Envelope::seal(&alice, &bob.account_id(), b"soon".to_vec(), soon_at, DAY)?;
        for envelope in [&old, &ahead, &soon] {
            let kept =
                request(net.node(1), net.peer_id(2), Request::Deposit(envelope.encode())).await;
            assert!(matches!(kept, Ok(Response::Custody(_))), "{kept:?}");
        }
        let options = SendOptions::default();
        let fetched = dkvs_mail::read(net.node(0), &bob, &mut Inbox::new(), &options).await?;
        assert!(fetched.letters.is_empty(), "{:?}", fetched.letters);
        assert!(
            matches!(
                fetched.refused[..],
                [(_, MailError::OutOfTime { .. }), (_, MailError::OutOfTime { .. }), (_, MailError::OutOfTime { .. })]
            ),
            "{:?}",
            fetched.refused
        );
        // Deleted from the replica but the one a little ahead: only it comes again.
        let again = dkvs_mail::fetch(net.node(0), &bob, &Inbox::new(), &options).await?;
        assert!(again.letters.is_empty(), "{:?}", again.letters);
        assert!(
            matches!(again.refused[..], [(_, MailError::OutOfTime { sent_at_ms, .. })] if sent_at_ms == soon_at),
            "{:?}",
            again.refused
        );
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

/// A replica that lies: every fetch is answered with a page far over the limit, and every
/// deposit with a receipt for something else.
#[derive(dkvs_net::libp2p::swarm::NetworkBehaviour)]
#[behaviour(prelude = "dkvs_net::libp2p::swarm::derive_prelude")]
struct Liar {
    inner: request_response::Behaviour<dkvs_mail::wire::Codec>,
    /// Enabled: answers fetches with empty pages that say "more", forever.
    empty: Toggle<dkvs_net::libp2p::swarm::dummy::Behaviour>,
}

impl dkvs_net::Extension for Liar {
    fn on_event(&mut self, event: LiarEvent, _: &mut dkvs_net::Host<'_>) {
        if let LiarEvent::Inner(request_response::Event::Message {
            message: request_response::Message::Request { request, channel, .. },
            ..
        }) = event
        {
            let answer = match Request::decode(&request) {
                Ok(Request::Fetch(_)) if self.empty.is_enabled() => {
                    Response::Batch { items: vec![], more: true }
                }
                Ok(Request::Fetch(_)) => Response::Batch {
                    items: (1..1000).map(|cursor| Item { cursor, envelope: vec![] }).collect(),
                    more: true,
                },
                Ok(Request::Deposit(_)) => {
                    let key = dkvs_net::libp2p::identity::Keypair::generate_ed25519();
                    Response::Custody(dkvs_mail::Custody::sign(&key, [0; 32], u64::MAX))
                }
                _ => Response::Refused(Refusal::Malformed),
            };
            let _ = self.inner.send_response(channel, answer.encode());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_replica_neither_floods_nor_jams_the_reader() -> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let spawn: Spawn = Arc::new(move |identity, store, config, dir| {
            let builder = NodeBuilder::new(identity.clone(), store, config);
            let i = started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if i >= 2 {
                let inner = request_response::Behaviour::new(
                    [(dkvs_mail::wire::PROTOCOL, request_response::ProtocolSupport::Full)],
                    request_response::Config::default(),
                );
                let dummy = dkvs_net::libp2p::swarm::dummy::Behaviour;
                let empty = Toggle::from((i == 3).then_some(dummy));
                return Ok(builder.with_extension(|_| Liar { inner, empty }).spawn()?);
            }
            let mail = Mail::open(&dir.join("mail"), identity.clone(), ShelfConfig::default())?;
            Ok(builder.with_extension(|_| mail).spawn()?)
        });
        let net = TestNet::start_custom(4, Config::default(), dkvs_store::Config::default(), spawn)
            .await?;
        let (alice, bob) = (account(), account());
        let options = SendOptions::default();
        let receipt =
            dkvs_mail::send(net.node(0), &alice, &bob.account_id(), b"hi".to_vec(), &options)
                .await?;
        assert_eq!(receipt.custody.len(), 2, "{receipt:?}");
        assert!(receipt.failed.iter().any(|(peer, _)| *peer == net.peer_id(2)), "{receipt:?}");
        let fetched = dkvs_mail::read(net.node(1), &bob, &mut Inbox::new(), &options).await?;
        assert_eq!(fetched.letters.len(), 1);
        for liar in [2, 3] {
            let failed = fetched.failed.iter().find(|(peer, _)| *peer == net.peer_id(liar));
            let why = failed.map(|(_, why)| why.as_str()).unwrap_or_default();
            assert!(why.contains("a page of") && why.contains("says more"), "{:?}", fetched.failed);
        }
        assert!(fetched.refused.is_empty());
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

/// Fetches the [`Notifier`] was asked for (one test uses it).
static NOTIFIER_FETCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A replica that takes every watch and, after every fetch, tells the watcher of new mail it
/// never has: to keep the watcher fetching from every replica, over and over.
#[derive(dkvs_net::libp2p::swarm::NetworkBehaviour)]
#[behaviour(prelude = "dkvs_net::libp2p::swarm::derive_prelude")]
struct Notifier {
    inner: request_response::Behaviour<dkvs_mail::wire::Codec>,
}

impl dkvs_net::Extension for Notifier {
    fn on_event(&mut self, event: NotifierEvent, _: &mut dkvs_net::Host<'_>) {
        let NotifierEvent::Inner(request_response::Event::Message {
            peer,
            message: request_response::Message::Request { request, channel, .. },
            ..
        }) = event
        else {
            return;
        };
        let (answer, mailbox) = match Request::decode(&request) {
            Ok(Request::Watch(signed)) => (
                Response::Watching(now() + dkvs_mail::wire::WATCH_TTL_MS),
                Some(dkvs_mail::Mailbox::of(&signed.account)),
            ),
            Ok(Request::Fetch(signed)) => {
                NOTIFIER_FETCHES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (
                    Response::Batch { items: vec![], more: false },
                    Some(dkvs_mail::Mailbox::of(&signed.account)),
                )
            }
            _ => (Response::Refused(Refusal::Malformed), None),
        };
        let _ = self.inner.send_response(channel, answer.encode());
        if let Some(mailbox) = mailbox {
            self.inner.send_request(&peer, Request::Notify(mailbox.0).encode());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_notifies_without_mail_gets_at_most_two_fetches_a_second()
-> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let spawn: Spawn = Arc::new(move |identity, store, config, dir| {
            let builder = NodeBuilder::new(identity.clone(), store, config);
            if started.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 3 {
                let inner = request_response::Behaviour::new(
                    [(dkvs_mail::wire::PROTOCOL, request_response::ProtocolSupport::Full)],
                    request_response::Config::default(),
                );
                return Ok(builder.with_extension(|_| Notifier { inner }).spawn()?);
            }
            let mail = Mail::open(&dir.join("mail"), identity.clone(), ShelfConfig::default())?;
            Ok(builder.with_extension(|_| mail).spawn()?)
        });
        let net = TestNet::start_custom(4, Config::default(), dkvs_store::Config::default(), spawn)
            .await?;
        let bob = Arc::new(account());
        let options = SendOptions::default();
        let mut watch = dkvs_mail::MailWatch::start(net.node(0).clone(), bob, options).await?;
        let before = NOTIFIER_FETCHES.load(std::sync::atomic::Ordering::SeqCst);
        // Four seconds of watching an empty mailbox, notified after every fetch.
        let inbox = Inbox::new();
        let watching = tokio::time::timeout(Duration::from_secs(4), watch.next(&inbox));
        assert!(watching.await.is_err(), "no mail comes");
        let fetches = NOTIFIER_FETCHES.load(std::sync::atomic::Ordering::SeqCst) - before;
        let gap = dkvs_mail::client::EMPTY_FETCH_GAP;
        assert!(fetches >= 2, "the notifier was asked to watch and notified: {fetches}");
        let most = (Duration::from_secs(4).as_millis() / gap.as_millis()) as usize + 1;
        assert!(fetches <= most, "{fetches} fetches in 4 s, more than one a {gap:?}");
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_is_handed_over_as_its_replicas_die_one_set_after_another() -> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let (mut net, _) = mail_net(11).await?;
        let (alice, bob) = (account(), account());
        let options = SendOptions::default();
        let reader = 10;
        let receipt = dkvs_mail::send(
            net.node(0),
            &alice,
            &bob.account_id(),
            b"still here".to_vec(),
            &options,
        )
        .await?;
        let holders: Vec<usize> =
            receipt.custody.iter().map(|c| index_of(&net, c.replica)).collect();
        assert_eq!(holders.len(), 5);
        // Three holders die; the two left hand the letter over to the next closest.
        let (dead, left) = holders.iter().filter(|&&i| i != reader).copied().fold(
            (Vec::new(), Vec::new()),
            |(mut dead, mut left), i| {
                if dead.len() < 3 {
                    dead.push(i)
                } else {
                    left.push(i)
                }
                (dead, left)
            },
        );
        for &i in &dead {
            net.kill(i).await;
        }
        let mut deposited = 0;
        for &i in &left {
            let report = dkvs_mail::hand_over(net.node(i), &options, 0).await?;
            assert_eq!(report.mailboxes, 1, "{report:?}");
            deposited += report.deposited;
        }
        assert!(deposited >= 1, "the letter reached new replicas");
        // Handing over is no reason to forget: a peer's word that it keeps mail proves nothing.
        for &i in &left {
            let kept = net.node(i).with_extension::<Mail, _>(|mail, _| mail.shelf().len()).await?;
            assert_eq!(kept, 1, "node {i} still keeps its copy");
        }
        // Then those two die as well: the letter lives on the new replicas alone.
        for &i in &left {
            net.kill(i).await;
        }
        let fetched = dkvs_mail::read(net.node(reader), &bob, &mut Inbox::new(), &options).await?;
        let bodies: Vec<&[u8]> = fetched.letters.iter().map(|l| l.body.as_slice()).collect();
        assert_eq!(bodies, [&b"still here"[..]], "{:?}", fetched.failed);
        // Read: a replica that still has a copy cannot hand it over again.
        let alive: Vec<usize> = net.alive();
        for &i in &alive {
            let report = dkvs_mail::hand_over(net.node(i), &options, 0).await?;
            assert_eq!(report.deposited, 0, "{report:?}");
        }
        let again = dkvs_mail::fetch(net.node(reader), &bob, &Inbox::new(), &options).await?;
        assert!(again.letters.is_empty());
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_replaces_a_replica_that_fails_by_the_next_closest() -> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        // Seven mail nodes and two that run no mail, one of them among the three closest to
        // Bob's mailbox. Alice's letter is kept by the five closest mail nodes; two die; a
        // survivor's hand-over asks the five closest left, the node without mail among them:
        // it fails, and the next closest takes its place. (It was left out: one of the two
        // mail nodes that had no copy still had none after the round.)
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let spawn: Spawn = Arc::new(move |identity, store, config, dir| {
            let builder = NodeBuilder::new(identity.clone(), store, config);
            if started.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 7 {
                return Ok(builder.spawn()?);
            }
            let mail = Mail::open(&dir.join("mail"), identity.clone(), ShelfConfig::default())?;
            Ok(builder.with_extension(|_| mail).spawn()?)
        });
        let mut net =
            TestNet::start_custom(9, Config::default(), dkvs_store::Config::default(), spawn)
                .await?;
        let distance = |bob: &Keypair, i: usize| distance(&net, bob, i);
        let (bob, ranked) = std::iter::repeat_with(account)
            .take(1000)
            .find_map(|bob| {
                let mut ranked: Vec<usize> = (0..net.len()).collect();
                ranked.sort_by_key(|&i| distance(&bob, i));
                ranked[..3].iter().any(|&i| i >= 7).then_some((bob, ranked))
            })
            .expect("an account with a node without mail near its mailbox");
        let mail_nodes: Vec<usize> = ranked.iter().copied().filter(|&i| i < 7).collect();
        let options = SendOptions::default();
        let receipt =
            dkvs_mail::send(net.node(0), &account(), &bob.account_id(), b"hi".to_vec(), &options)
                .await?;
        let mut holders = holders(&net, &receipt);
        holders.sort_by_key(|&i| distance(&bob, i));
        assert_eq!(holders, mail_nodes[..5], "the five closest mail nodes keep it");
        for &i in &holders[..2] {
            net.kill(i).await;
        }
        let report = dkvs_mail::hand_over(net.node(holders[2]), &options, 0).await?;
        assert_eq!(report.deposited, 2, "{report:?}");
        let without_mail = |(peer, _): &(PeerId, String)| index_of(&net, *peer) >= 7;
        assert!(!report.failed.is_empty(), "{report:?}");
        assert!(report.failed.iter().all(without_mail), "only nodes without mail: {report:?}");
        for &i in &mail_nodes[2..] {
            let kept = net.node(i).with_extension::<Mail, _>(|mail, _| mail.shelf().len()).await?;
            assert_eq!(kept, 1, "node {i}, one of the five closest mail nodes left, keeps it");
        }
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_replaces_replicas_that_refuse_for_want_of_room() -> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        // Nine mail nodes: five with room, three that keep no mail (a replica full, as one a
        // flooder filled) and the sender, a DHT client (a phone); at least one of the full
        // ones and the sender among the five closest to Bob's mailbox. The full ones refuse; the next
        // closest keep the letter in their place, within the ten a reader asks, and Bob reads
        // it. The sender keeps no copy: readers' lookups would not find it. (Refusals were
        // counted as answers, and the sender was a replica by its distance.)
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let spawn: Spawn = Arc::new(move |identity, store, config, dir| {
            let i = started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut shelf = ShelfConfig::default();
            if (5..8).contains(&i) {
                shelf.total_bytes = 0;
            }
            let config =
                if i == 8 { config.with_kad_mode(dkvs_net::KadMode::Client) } else { config };
            let mail = Mail::open(&dir.join("mail"), identity.clone(), shelf)?;
            Ok(NodeBuilder::new(identity.clone(), store, config)
                .with_extension(|_| mail)
                .spawn()?)
        });
        let net = TestNet::start_custom(9, Config::default(), dkvs_store::Config::default(), spawn)
            .await?;
        let distance = |bob: &Keypair, i: usize| distance(&net, bob, i);
        let bob = std::iter::repeat_with(account)
            .take(1000)
            .find(|bob| {
                let mut ranked: Vec<usize> = (0..net.len()).collect();
                ranked.sort_by_key(|&i| distance(bob, i));
                ranked[..5].iter().any(|&i| (5..8).contains(&i)) && ranked[..5].contains(&8)
            })
            .expect("an account with a full replica and the sender near its mailbox");
        let options = SendOptions::default();
        let receipt =
            dkvs_mail::send(net.node(8), &account(), &bob.account_id(), b"hi".to_vec(), &options)
                .await?;
        let mut holders = holders(&net, &receipt);
        holders.sort();
        assert_eq!(holders, [0, 1, 2, 3, 4], "every server with room keeps it: {receipt:?}");
        assert!(!receipt.refused.is_empty(), "{receipt:?}");
        for (peer, refusal) in &receipt.refused {
            assert!((5..8).contains(&index_of(&net, *peer)), "{receipt:?}");
            assert_eq!(*refusal, Refusal::ReplicaFull);
        }
        let fetched = dkvs_mail::fetch(net.node(6), &bob, &Inbox::new(), &options).await?;
        assert_eq!(fetched.letters.len(), 1, "{fetched:?}");
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

/// Publishes raw bytes on a channel's topic from `node`, as a peer that lies would.
async fn publish_raw(node: &dkvs_net::Node, channel: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
    let topic = dkvs_mail::channel::topic(channel)?;
    node.with_extension::<Mail, _>(move |_, host| host.publish(&topic, bytes)).await??;
    Ok(())
}

/// What a subscription hands over until `count` posts came, or nothing came for `quiet`, and
/// then for `quiet` more (so that a post too many shows).
async fn drain(
    sub: &mut dkvs_mail::Subscription,
    count: usize,
    quiet: Duration,
) -> Vec<dkvs_mail::Post> {
    let mut posts = Vec::new();
    while posts.len() < count
        && let Ok(Some(post)) = tokio::time::timeout(quiet, sub.next()).await
    {
        posts.push(post);
    }
    while let Ok(Some(post)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
        posts.push(post);
    }
    posts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_delivers_each_valid_post_once_and_nothing_forged_oversized_or_replayed()
-> anyhow::Result<()> {
    use dkvs_mail::channel;
    tokio::time::timeout(TEST, async {
        let (net, _) = mail_net(10).await?;
        let name = "builders";
        let mut subs = Vec::new();
        for i in 0..9 {
            subs.push(channel::subscribe(net.node(i), name, false).await?);
        }
        // The mesh forms: every subscriber knows other subscribers.
        let topic = channel::topic(name)?;
        for i in 0..9 {
            let node = net.node(i);
            let t = topic.clone();
            let formed = dkvs_testnet::eventually(Duration::from_secs(20), async || {
                let t = t.clone();
                node.with_extension::<Mail, _>(move |_, host| host.topic_peers(&t).len())
                    .await
                    .unwrap_or(0)
                    >= 2
            })
            .await;
            assert!(formed, "node {i} found no peers on the channel");
        }
        let (alice, bob) = (account(), Keypair::generate(KeyType::Secp256k1));
        let mut sent = Vec::new();
        for i in 0..5 {
            sent.push(
                channel::publish(net.node(0), &alice, name, format!("alice {i}").into_bytes())
                    .await?
                    .post,
            );
            sent.push(
                channel::publish(net.node(3), &bob, name, format!("bob {i}").into_bytes())
                    .await?
                    .post,
            );
        }
        channel::announce(net.node(0), &alice, name).await?;
        channel::announce(net.node(3), &bob, name).await?;
        let mut expected: Vec<String> =
            sent.iter().map(|p| String::from_utf8(p.body.clone()).expect("text")).collect();
        expected.sort();
        for (i, sub) in subs.iter_mut().enumerate() {
            let posts = drain(sub, 12, Duration::from_secs(5)).await;
            let mut bodies: Vec<String> = posts
                .iter()
                .filter(|p| p.kind == dkvs_mail::PostKind::Message)
                .map(|p| String::from_utf8(p.body.clone()).expect("text"))
                .collect();
            bodies.sort();
            assert_eq!(bodies, expected, "node {i}: every post exactly once");
        }

        // A liar on node 5: a replay of a post taken before, a post from two hours ago, a
        // forged one, an oversized one.
        let now = now();
        publish_raw(net.node(5), name, sent[0].encode()).await?;
        let old = dkvs_mail::Post::sign(
            &alice,
            name,
            dkvs_mail::PostKind::Message,
            b"old".to_vec(),
            now - 7_200_000,
        )?;
        publish_raw(net.node(5), name, old.encode()).await?;
        let mut forged = sent[2].encode();
        let at = forged.windows(7).position(|w| w == b"alice 1").expect("the body");
        forged[at] = b'A';
        publish_raw(net.node(5), name, forged).await?;
        let mut big =
            dkvs_mail::Post::sign(&alice, name, dkvs_mail::PostKind::Message, vec![], now)?
                .encode();
        big.extend_from_slice(&[0x3a, 0x80, 0x60]); // field 7 again: a 12 KiB body
        big.extend_from_slice(&vec![b'x'; 12 * 1024]);
        publish_raw(net.node(5), name, big).await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for (i, sub) in subs.iter_mut().enumerate() {
            let posts = drain(sub, 0, Duration::ZERO).await;
            assert!(posts.is_empty(), "node {i} took {posts:?}");
        }

        // A late joiner gets the recent history, checked, and sees who is here.
        let mut late = channel::subscribe(net.node(9), name, true).await?;
        let history = drain(&mut late, 12, Duration::from_secs(2)).await;
        let mut bodies: Vec<String> = history
            .iter()
            .filter(|p| p.kind == dkvs_mail::PostKind::Message)
            .map(|p| String::from_utf8(p.body.clone()).expect("text"))
            .collect();
        bodies.sort();
        assert_eq!(bodies, expected);
        let members = channel::members(net.node(9), name).await?;
        let mut ids: Vec<String> = members.iter().map(|(a, _)| a.to_string()).collect();
        ids.sort();
        let mut want = vec![alice.account_id().to_string(), bob.account_id().to_string()];
        want.sort();
        assert_eq!(ids, want);

        // A subscriber asking for history gets what its own node kept too.
        let mut again = channel::subscribe(net.node(0), name, true).await?;
        let kept = drain(&mut again, 12, Duration::from_secs(2)).await;
        let mine = kept.iter().filter(|p| p.author == alice.account_id()).count();
        assert_eq!(mine, 6, "alice's five posts and her presence");

        // History answers are large: a peer gets a few a minute.
        let mut answers = Vec::new();
        for _ in 0..13 {
            answers.push(request(net.node(8), net.peer_id(7), Request::History(name.into())).await);
        }
        assert!(matches!(answers[0], Ok(Response::Posts(ref posts)) if !posts.is_empty()));
        assert_eq!(answers[12], Ok(Response::Refused(Refusal::Busy)));
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledging_tells_a_bounded_number_of_senders_and_a_peer_watches_a_bounded_number()
-> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        let (net, _) = mail_net(3).await?;
        let bob = account();
        let options = SendOptions::default();
        // Seventy strangers write to bob; reading tells the first sixty-four.
        for _ in 0..70 {
            dkvs_mail::send(net.node(0), &account(), &bob.account_id(), b"hi".to_vec(), &options)
                .await?;
        }
        let mut inbox = Inbox::new();
        let fetched = dkvs_mail::fetch(net.node(1), &bob, &inbox, &options).await?;
        assert_eq!(fetched.letters.len(), 70);
        let report = dkvs_mail::ack(net.node(1), &bob, &mut inbox, &fetched, &options).await;
        assert_eq!(
            (report.receipts_sent, report.receipts_skipped),
            (dkvs_mail::client::MAX_RECEIPTS, 70 - dkvs_mail::client::MAX_RECEIPTS),
            "{:?}",
            report.receipts_failed
        );

        // One peer asks a replica to watch many mailboxes: it is told "busy" past its share.
        let replica = net.peer_id(2);
        let mut answers = Vec::new();
        for _ in 0..65 {
            let someone = account();
            let body = dkvs_mail::wire::WatchBody { replica, now_ms: now() };
            let watch = Request::Watch(Signed::new(&someone, body));
            answers.push(request(net.node(0), replica, watch).await);
        }
        assert!(answers[..64].iter().all(|a| matches!(a, Ok(Response::Watching(_)))));
        assert_eq!(answers[64], Ok(Response::Refused(Refusal::Busy)));
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_nobody_can_dial_hears_new_mail_past_the_idle_timeout() -> anyhow::Result<()> {
    tokio::time::timeout(TEST, async {
        // The idle timeout is the setting under test: 1 s instead of 60 s.
        let config =
            Config { idle_connection_timeout: Duration::from_secs(1), ..Config::default() };
        let (net, _) = mail_net_with(4, config.clone()).await?;
        // Bob's node listens nowhere, as a phone behind NAT: a replica cannot dial it, and
        // hears of it only over the connection bob's node opened.
        let dir = tempfile::tempdir()?;
        let identity = dkvs_net::libp2p::identity::Keypair::generate_ed25519();
        let mail = Mail::open(&dir.path().join("mail"), identity.clone(), ShelfConfig::default())?;
        let store = dkvs_net::store::Store::in_memory(dkvs_net::store::Config::default());
        let phone = NodeBuilder::new(identity, store, config).with_extension(|_| mail).spawn()?;
        phone.add_peer(net.peer_id(0), net.addr(0).expect("listens")).await?;
        let _ = tokio::time::timeout(Duration::from_secs(20), phone.bootstrap()).await;
        let (alice, bob) = (account(), Arc::new(account()));
        let options = SendOptions::default();
        let mut watch =
            dkvs_mail::MailWatch::start(phone.clone(), bob.clone(), options.clone()).await?;
        // The watch first fetches what is there (connecting to the replicas again), then
        // waits; past the idle timeout, the connections to the replicas watching for the phone
        // stay (the watch's renewal, which would fetch anyway, is minutes away).
        let waiting = tokio::spawn(async move {
            let inbox = Inbox::new();
            tokio::time::timeout(Duration::from_secs(20), watch.next(&inbox)).await
        });
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert!(!phone.connected_peers().await.is_empty(), "the phone lost every replica");
        dkvs_mail::send(net.node(1), &alice, &bob.account_id(), b"live".to_vec(), &options).await?;
        let heard = waiting.await?.map_err(|_| anyhow::anyhow!("no notification came"))??;
        let bodies: Vec<&[u8]> = heard.letters.iter().map(|l| l.body.as_slice()).collect();
        assert_eq!(bodies, [&b"live"[..]]);
        phone.shutdown().await;
        net.shutdown().await;
        anyhow::Ok(())
    })
    .await?
}
