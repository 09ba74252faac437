//! Sending and reading mail through a node that hosts [`Mail`].
//!
//! - [`send`] seals a letter and deposits it on the replicas of the recipient's mailbox: the
//!   `replicas` closest peers to the mailbox address (this node among them when it is that
//!   close) that answer. It returns a [`SendReceipt`]: a [`Custody`] signed by each replica that
//!   keeps it, and what the others said.
//! - [`fetch`] asks the replicas of the account's own mailbox for everything they keep for it,
//!   page by page (each page request signed by the account and bound to the replica), opens
//!   each envelope, drops copies and letters it has read before (an [`Inbox`]), and orders the
//!   letters by the time their senders wrote them. [`ack`] then has every replica that handed
//!   an envelope over delete it; [`read`] does both.
//!
//! Until replicas hand mailboxes over as the closest set changes, a fetch asks twice as many
//! replicas as a send deposits on, so that mail kept on a replica that a newer peer moved out
//! of the closest few is still found.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use dkvs_account::{AccountId, Keypair};
use dkvs_net::libp2p::{PeerId, kad::KBucketKey};
use dkvs_net::{NetError, Node};
use futures::future::join_all;

use crate::letter::{Envelope, Letter, MAX_CLOCK_SKEW_MS, MailError, Mailbox, MessageId};
use crate::service::{Mail, now_ms};
use crate::wire::{AckBody, Custody, FetchBody, MAX_ACK, Refusal, Request, Response, Signed};

/// How a letter is sent.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SendOptions {
    /// On how many replicas to keep it. Default 5.
    pub replicas: usize,
    /// How long replicas keep it, at most (each replica caps it). Default 7 days.
    pub ttl_ms: u64,
}

impl Default for SendOptions {
    fn default() -> SendOptions {
        SendOptions { replicas: 5, ttl_ms: 7 * 24 * 3_600_000 }
    }
}

impl SendOptions {
    /// Keep it on `replicas` replicas.
    pub fn with_replicas(mut self, replicas: usize) -> SendOptions {
        self.replicas = replicas.max(1);
        self
    }

    /// Keep it for at most `ttl_ms`.
    pub fn with_ttl_ms(mut self, ttl_ms: u64) -> SendOptions {
        self.ttl_ms = ttl_ms;
        self
    }
}

/// What became of a letter sent.
#[derive(Clone, Debug)]
pub struct SendReceipt {
    /// The letter's id.
    pub id: MessageId,
    /// Its envelope's digest (what custody receipts name).
    pub digest: [u8; 32],
    /// A receipt from each replica that keeps it, its signature checked.
    pub custody: Vec<Custody>,
    /// Replicas that answered but do not keep it, and why.
    pub refused: Vec<(PeerId, Refusal)>,
    /// Replicas that did not answer (or answered what no replica says), and what went wrong.
    pub failed: Vec<(PeerId, String)>,
}

/// Why a letter was not sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The letter could not be made (the body is too large).
    #[error(transparent)]
    Letter(#[from] MailError),
    /// The node does not host mail, or has stopped.
    #[error(transparent)]
    Node(#[from] NetError),
    /// No replica keeps it: each refused or failed (the receipt says which and why; "mailbox
    /// full" when the recipient's mailbox is full).
    #[error("no replica keeps the letter: {}", summary(.0))]
    NotKept(SendReceipt),
}

fn summary(receipt: &SendReceipt) -> String {
    let mut parts: Vec<String> =
        receipt.refused.iter().map(|(peer, r)| format!("{peer}: {r}")).collect();
    parts.extend(receipt.failed.iter().map(|(peer, e)| format!("{peer}: {e}")));
    if parts.is_empty() { "no replica found".to_owned() } else { parts.join("; ") }
}

/// Why mail could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The node does not host mail, or has stopped.
    #[error(transparent)]
    Node(#[from] NetError),
    /// No replica of the mailbox answered.
    #[error("no replica of the mailbox answered: {0}")]
    NoReplica(String),
}

/// Letter times, in Unix ms, strictly increasing within this process: two letters one sender
/// writes in a row are ordered by their time even within one millisecond.
fn letter_time() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = now_ms();
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// The peers closest to `mailbox`, this node among them, nearest first.
async fn replicas_of(node: &Node, mailbox: &Mailbox) -> Vec<PeerId> {
    let mut peers = node.closest_peers(mailbox.0.to_vec()).await;
    peers.push(node.peer_id());
    peers.sort();
    peers.dedup();
    let target = KBucketKey::new(mailbox.0.to_vec());
    peers.sort_by_key(|peer| target.distance(&KBucketKey::from(*peer)));
    peers
}

/// One request of the mailbox protocol to `peer` through `node` (served by `node`'s own
/// replica when `peer` is `node`): the protocol by hand, for tools and tests.
pub async fn request(node: &Node, peer: PeerId, request: Request) -> Result<Response, String> {
    if peer == node.peer_id() {
        let rx = node.with_extension::<Mail, _>(move |mail, _| mail.ask_self(request)).await;
        return rx.map_err(|e| e.to_string())?.await.map_err(|_| "the node stopped".to_owned());
    }
    let rx = node.with_extension::<Mail, _>(move |mail, _| mail.ask(peer, &request)).await;
    let bytes =
        rx.map_err(|e| e.to_string())?.await.map_err(|_| "the node stopped".to_owned())??;
    Response::decode(&bytes).map_err(|e| e.to_string())
}

/// Seals `body` from `from` to `to` and deposits it on the replicas of `to`'s mailbox.
/// Ok when at least one replica keeps it (the receipt says how many; fewer than asked when the
/// network is small or some refused).
pub async fn send(
    node: &Node,
    from: &Keypair,
    to: &AccountId,
    body: Vec<u8>,
    options: &SendOptions,
) -> Result<SendReceipt, SendError> {
    // Fails early, before any lookup, when the node hosts no mail.
    node.with_extension::<Mail, _>(|_, _| ()).await?;
    let envelope = Envelope::seal(from, to, body, letter_time(), options.ttl_ms)?;
    let digest = envelope.digest();
    let bytes = envelope.encode();
    let candidates = replicas_of(node, &envelope.mailbox).await;
    let mut receipt =
        SendReceipt { id: envelope.id, digest, custody: vec![], refused: vec![], failed: vec![] };
    // The nearest that answer: a replica that fails is replaced by the next nearest.
    let mut next = candidates.into_iter();
    loop {
        let answered = receipt.custody.len() + receipt.refused.len();
        let wanted = options.replicas.saturating_sub(answered);
        let wave: Vec<PeerId> = next.by_ref().take(wanted).collect();
        if wave.is_empty() {
            break;
        }
        let answers =
            join_all(wave.iter().map(|&peer| request(node, peer, Request::Deposit(bytes.clone()))))
                .await;
        for (peer, answer) in wave.into_iter().zip(answers) {
            match answer {
                Ok(Response::Custody(c))
                    if c.replica == peer && c.digest == digest && c.verify() =>
                {
                    receipt.custody.push(c)
                }
                Ok(Response::Refused(r)) => receipt.refused.push((peer, r)),
                Ok(other) => {
                    receipt.failed.push((peer, format!("not a custody receipt: {other:?}")))
                }
                Err(e) => receipt.failed.push((peer, e)),
            }
        }
    }
    if receipt.custody.is_empty() {
        return Err(SendError::NotKept(receipt));
    }
    Ok(receipt)
}

/// What an account has read: (sender, id) of each letter, until it expires (plus the clock
/// skew), so a copy that comes back from a replica that missed an ack is dropped. Keep one
/// per account across fetches (and persist it, for exactly-once across restarts).
#[derive(Clone, Debug, Default)]
pub struct Inbox {
    seen: HashMap<(AccountId, MessageId), u64>,
}

impl Inbox {
    /// An inbox that has read nothing.
    pub fn new() -> Inbox {
        Inbox::default()
    }

    /// Letters remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn forget_expired(&mut self, now_ms: u64) {
        self.seen.retain(|_, until| *until > now_ms);
    }
}

/// Letters fetched, and what to acknowledge once they are handled.
#[derive(Debug)]
pub struct Fetched {
    /// New letters, oldest first (by the time their senders wrote them).
    pub letters: Vec<Letter>,
    /// Envelopes that did not open (tampered with, forged, out of time, not for this
    /// account), with the replica that handed each over. They are acknowledged too, so the
    /// replica drops them.
    pub refused: Vec<(PeerId, MailError)>,
    /// Replicas that answered.
    pub replicas: Vec<PeerId>,
    /// Replicas that did not, and why.
    pub failed: Vec<(PeerId, String)>,
    acks: BTreeMap<PeerId, Vec<[u8; 32]>>,
}

/// The most pages one fetch reads from one replica.
const MAX_PAGES: usize = 64;
const PAGE: u32 = 256;

/// Everything one replica keeps for `account`, page by page.
async fn fetch_from(
    node: &Node,
    account: &Keypair,
    replica: PeerId,
) -> Result<Vec<Vec<u8>>, String> {
    let mut after = 0;
    let mut envelopes = Vec::new();
    for _ in 0..MAX_PAGES {
        let body = FetchBody { replica, after, limit: PAGE, now_ms: now_ms() };
        match request(node, replica, Request::Fetch(Signed::fetch(account, body))).await? {
            Response::Batch { items, more } => {
                if let Some(last) = items.last() {
                    if last.cursor <= after {
                        return Err("the replica's cursor went backwards".to_owned());
                    }
                    after = last.cursor;
                }
                envelopes.extend(items.into_iter().map(|i| i.envelope));
                if !more {
                    break;
                }
            }
            Response::Refused(r) => return Err(format!("refused: {r}")),
            other => return Err(format!("not a batch: {other:?}")),
        }
    }
    Ok(envelopes)
}

/// Fetches `account`'s new letters from its mailbox's replicas (see the module docs). Nothing
/// is deleted until [`ack`]. Letters already in `inbox` are left out; the new ones are added.
pub async fn fetch(
    node: &Node,
    account: &Keypair,
    inbox: &mut Inbox,
    options: &SendOptions,
) -> Result<Fetched, ReadError> {
    node.with_extension::<Mail, _>(|_, _| ()).await?;
    let me = account.account_id();
    let mailbox = Mailbox::of(&me);
    let now = now_ms();
    inbox.forget_expired(now);
    let replicas: Vec<PeerId> =
        replicas_of(node, &mailbox).await.into_iter().take(2 * options.replicas).collect();
    let answers = join_all(replicas.iter().map(|&r| fetch_from(node, account, r))).await;
    let mut fetched = Fetched {
        letters: vec![],
        refused: vec![],
        replicas: vec![],
        failed: vec![],
        acks: BTreeMap::new(),
    };
    let mut opened: HashMap<[u8; 32], bool> = HashMap::new();
    for (replica, answer) in replicas.into_iter().zip(answers) {
        let envelopes = match answer {
            Ok(envelopes) => envelopes,
            Err(e) => {
                fetched.failed.push((replica, e));
                continue;
            }
        };
        fetched.replicas.push(replica);
        for bytes in envelopes {
            let envelope = match Envelope::decode(&bytes) {
                Ok(envelope) => envelope,
                Err(e) => {
                    fetched.refused.push((replica, e));
                    continue;
                }
            };
            let digest = envelope.digest();
            fetched.acks.entry(replica).or_default().push(digest);
            if opened.insert(digest, true).is_some() {
                continue; // another replica's copy
            }
            match envelope.open(account, now) {
                Ok(letter) => {
                    let key = (letter.sender.clone(), letter.id);
                    if inbox.seen.contains_key(&key) {
                        continue;
                    }
                    inbox.seen.insert(key, letter.expires_at_ms + MAX_CLOCK_SKEW_MS);
                    fetched.letters.push(letter);
                }
                Err(e) => fetched.refused.push((replica, e)),
            }
        }
    }
    if fetched.replicas.is_empty() {
        let why = fetched.failed.iter().map(|(p, e)| format!("{p}: {e}")).collect::<Vec<_>>();
        return Err(ReadError::NoReplica(why.join("; ")));
    }
    fetched.letters.sort_by(|a, b| {
        (a.sent_at_ms, a.sender.to_string(), a.id).cmp(&(b.sent_at_ms, b.sender.to_string(), b.id))
    });
    Ok(fetched)
}

/// Has every replica that handed an envelope over in `fetched` delete it. Returns how many
/// envelopes the replicas deleted; replicas that cannot be reached keep theirs (the inbox drops
/// those copies when they come back).
pub async fn ack(node: &Node, account: &Keypair, fetched: &Fetched) -> usize {
    let asks = fetched.acks.iter().flat_map(|(&replica, digests)| {
        digests.chunks(MAX_ACK).map(move |chunk| {
            let body = AckBody { replica, now_ms: now_ms(), digests: chunk.to_vec() };
            request(node, replica, Request::Ack(Signed::ack(account, body)))
        })
    });
    join_all(asks)
        .await
        .into_iter()
        .map(|answer| match answer {
            Ok(Response::Acked(n)) => n as usize,
            _ => 0,
        })
        .sum()
}

/// [`fetch`], then [`ack`]: the new letters, deleted from the replicas.
pub async fn read(
    node: &Node,
    account: &Keypair,
    inbox: &mut Inbox,
    options: &SendOptions,
) -> Result<Fetched, ReadError> {
    let fetched = fetch(node, account, inbox, options).await?;
    ack(node, account, &fetched).await;
    Ok(fetched)
}
