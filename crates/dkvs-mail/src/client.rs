//! Sending and reading mail through a node that hosts [`Mail`].
//!
//! - [`send`] seals a letter and deposits it on the replicas of the recipient's mailbox: the
//!   `replicas` closest peers to the mailbox address (this node among them when it is that
//!   close) that answer; a replica that does not answer is replaced by the next closest. It
//!   returns a [`SendReceipt`]: a [`Custody`] signed by each replica that keeps it, and what
//!   the others said. A node with no peers keeps the letter itself, and says so
//!   ([`SendReceipt::alone`]).
//! - [`fetch`] asks the replicas of the account's own mailbox for everything they keep for it,
//!   page by page (each page request signed by the account and bound to the replica), opens
//!   each envelope, leaves out copies and letters its [`Inbox`] has read, and orders the
//!   letters by the time their senders wrote them (within one fetch: a letter that reaches its
//!   replicas late comes in a later fetch). Nothing is deleted and nothing is marked read.
//! - [`ack`], once the application has handled what [`fetch`] returned, marks those letters
//!   read in the inbox and has every replica that handed an envelope over delete it. Letters
//!   fetched and not acknowledged come again at the next fetch: delivery is at least once, and
//!   exactly once as long as the inbox is kept ([`Inbox::entries`], [`Inbox::remember`]).
//!   [`read`] is [`fetch`] then [`ack`], for a caller that handles letters at once.
//! - [`MailWatch`] tells of new mail as it comes: the replicas notify this node, which then
//!   fetches.
//! - Delivery receipts: when [`ack`] marks letters read, it sends each sender one letter back,
//!   signed by the reader and sealed to the sender, that lists the ids read (unless
//!   [`SendOptions::read_receipts`] is off). A fetch sorts such letters out of
//!   [`Fetched::letters`] into [`Fetched::receipts`]; they are acknowledged like letters, and
//!   never answered with a receipt.
//!
//! Until replicas hand mailboxes over as the closest set changes, a fetch asks twice as many
//! replicas as a send deposits on (`2 * replicas` that answer), so that mail kept on a replica
//! that a newer peer moved out of the closest few is still found.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dkvs_account::{AccountId, Keypair};
use dkvs_net::libp2p::{PeerId, kad::KBucketKey};
use dkvs_net::{NetError, Node};
use futures::StreamExt as _;
use futures::future::join_all;
use tokio::sync::mpsc;

use crate::letter::{Envelope, Letter, MAX_CLOCK_SKEW_MS, MailError, Mailbox, MessageId};
use crate::service::{Mail, now_ms};
use crate::wire::{
    AckBody, Custody, FetchBody, MAX_ACK, Refusal, Request, Response, Signed, WATCH_TTL_MS,
    WatchBody,
};

/// How letters are sent and mailboxes read.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SendOptions {
    /// On how many replicas to keep a letter (at least 1); a fetch asks twice as many.
    /// Default 5.
    pub replicas: usize,
    /// How long replicas keep a letter, at most (each replica caps it). Default 7 days.
    pub ttl_ms: u64,
    /// Whether [`ack`] tells senders that their letters were read. Default true.
    pub read_receipts: bool,
}

impl Default for SendOptions {
    fn default() -> SendOptions {
        SendOptions { replicas: 5, ttl_ms: 7 * 24 * 3_600_000, read_receipts: true }
    }
}

impl SendOptions {
    /// Keep letters on `replicas` replicas (at least 1).
    pub fn with_replicas(mut self, replicas: usize) -> SendOptions {
        self.replicas = replicas.max(1);
        self
    }

    /// Keep letters for at most `ttl_ms`.
    pub fn with_ttl_ms(mut self, ttl_ms: u64) -> SendOptions {
        self.ttl_ms = ttl_ms;
        self
    }

    /// Send (or not) delivery receipts when letters are acknowledged.
    pub fn with_read_receipts(mut self, on: bool) -> SendOptions {
        self.read_receipts = on;
        self
    }

    fn replicas(&self) -> usize {
        self.replicas.max(1)
    }
}

/// The longest a send starts new waves of deposits for.
const SEND_TIME: Duration = Duration::from_secs(30);

/// Why a replica did not keep a letter.
enum Deposit {
    /// It answered with a refusal.
    Refused(Refusal),
    /// No answer, or one no replica gives.
    Failed(String),
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
    /// The node that sent it.
    pub sender_node: PeerId,
}

impl SendReceipt {
    /// True when only the sending node keeps the letter and no other replica was asked: the
    /// node has no peers, so it is a network of one, and the recipient reads the letter only
    /// through it (or once it joins the recipient's network).
    pub fn alone(&self) -> bool {
        self.custody.iter().all(|c| c.replica == self.sender_node)
            && self.refused.is_empty()
            && self.failed.is_empty()
    }
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

/// The peers closest to `mailbox`, nearest first, this node among them when it is a DHT
/// server; and whether it is one. (A node that is not is no replica others' lookups find: a
/// letter it keeps waits for its own reads, or its hand-over.) After a lookup that timed out
/// they may include the slow peers it waited for ([`Node::closest_peers`]):
/// [`nearest_that_answer`] replaces those that do not answer.
pub(crate) async fn replicas_of(node: &Node, mailbox: &Mailbox) -> (Vec<PeerId>, bool) {
    let mut peers = node.closest_peers(mailbox.0.to_vec()).await;
    let server = node.reachability().await.kad_server;
    if server {
        peers.push(node.peer_id());
    }
    peers.sort();
    peers.dedup();
    let target = KBucketKey::new(mailbox.0.to_vec());
    peers.sort_by_cached_key(|peer| target.distance(&KBucketKey::from(*peer)));
    (peers, server)
}

/// Asks the nearest of `candidates` in waves, replacing each that fails (`ask` returns
/// `Err`) by the next nearest, until `wanted` have answered or none is left. The answers, and
/// the failures.
pub(crate) async fn nearest_that_answer<T, F>(
    candidates: Vec<PeerId>,
    wanted: usize,
    ask: impl Fn(PeerId) -> F,
) -> (Vec<(PeerId, T)>, Vec<(PeerId, String)>)
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let (mut answered, mut failed) = (Vec::new(), Vec::new());
    let mut next = candidates.into_iter();
    loop {
        let wave: Vec<PeerId> = next.by_ref().take(wanted.saturating_sub(answered.len())).collect();
        if wave.is_empty() {
            return (answered, failed);
        }
        let answers = join_all(wave.iter().map(|&peer| ask(peer))).await;
        for (peer, answer) in wave.into_iter().zip(answers) {
            match answer {
                Ok(answer) => answered.push((peer, answer)),
                Err(e) => failed.push((peer, e)),
            }
        }
    }
}

/// One request of the mailbox protocol to `peer` through `node` (served by `node`'s own
/// replica when `peer` is `node`): the protocol by hand, for tools and tests. `Err` says why
/// there is no answer.
pub async fn request(node: &Node, peer: PeerId, request: Request) -> Result<Response, String> {
    if peer == node.peer_id() {
        let rx = node.with_extension::<Mail, _>(move |mail, _| mail.ask_self(request)).await;
        return rx.map_err(|e| e.to_string())?.await.map_err(|_| "the node stopped".to_owned());
    }
    // Within what the peer admits from this node, records included: over it, the request
    // waits for its turn here rather than be refused there ("busy").
    let bytes = request.encode();
    node.turn(peer, bytes.len()).await.map_err(|e| e.to_string())?;
    let rx = node.with_extension::<Mail, _>(move |mail, _| mail.ask(peer, bytes)).await;
    let bytes =
        rx.map_err(|e| e.to_string())?.await.map_err(|_| "the node stopped".to_owned())??;
    Response::decode(&bytes).map_err(|e| e.to_string())
}

/// Seals `body` from `from` to `to` and deposits it on the replicas of `to`'s mailbox.
/// Ok when at least one replica keeps it (the receipt says which; fewer than asked when the
/// network is small or some refused). A replica that does not answer is replaced by the next
/// nearest; one that refuses (mailbox or replica full, busy, storage failed) too, within the
/// twice as many nearest that answer, which a reader asks.
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
    // A node that is no DHT server keeps a letter itself only when fewer other replicas than
    // asked keep it: readers' lookups do not find it (its hand-over moves the letter on).
    let me = node.peer_id();
    let (candidates, server) = replicas_of(node, &envelope.mailbox).await;
    let deposit = |peer| {
        let request = request(node, peer, Request::Deposit(bytes.clone()));
        async move {
            match request.await.map_err(Deposit::Failed)? {
                Response::Custody(c) if c.replica == peer && c.digest == digest && c.verify() => {
                    Ok(c)
                }
                Response::Refused(r) => Err(Deposit::Refused(r)),
                other => Err(Deposit::Failed(format!(
                    "not a custody receipt for this letter: {other:?}"
                ))),
            }
        }
    };
    let mut receipt = SendReceipt {
        id: envelope.id,
        digest,
        custody: vec![],
        refused: vec![],
        failed: vec![],
        sender_node: me,
    };
    // The nearest are asked in waves, each that fails replaced by the next nearest (readers
    // pass over them too); each that refuses (for want of room, time or disk; or a liar), too,
    // but only within the nearest that answer that a reader asks (twice as many as the
    // letter's replicas): a letter kept farther out would be found by nobody.
    let (wanted, reach) = (options.replicas(), 2 * options.replicas());
    let mut next = candidates.into_iter();
    let mut answered = 0;
    // Waves go on only so long: peers that time out one after another (ids made near the
    // mailbox) cannot hold a sender for a wave each.
    let deadline = tokio::time::Instant::now() + SEND_TIME;
    while tokio::time::Instant::now() < deadline {
        let room = wanted.saturating_sub(receipt.custody.len()).min(reach.saturating_sub(answered));
        let wave: Vec<PeerId> = next.by_ref().take(room).collect();
        if wave.is_empty() {
            break;
        }
        let outcomes = join_all(wave.iter().map(|&peer| deposit(peer))).await;
        for (peer, outcome) in wave.into_iter().zip(outcomes) {
            match outcome {
                Ok(custody) => receipt.custody.push(custody),
                Err(Deposit::Refused(refusal)) => receipt.refused.push((peer, refusal)),
                Err(Deposit::Failed(e)) => {
                    receipt.failed.push((peer, e));
                    continue;
                }
            }
            answered += 1;
        }
    }
    // Not a node that keeps no mail at all (a light node's shelf): it would refuse. Asked
    // only when this node would keep the letter.
    let short = !server && receipt.custody.len() < wanted;
    if short && node.with_extension::<Mail, _>(|mail, _| mail.shelf().keeps_mail()).await? {
        match deposit(me).await {
            Ok(custody) => receipt.custody.push(custody),
            Err(Deposit::Refused(refusal)) => receipt.refused.push((me, refusal)),
            Err(Deposit::Failed(e)) => receipt.failed.push((me, e)),
        }
    }
    if receipt.custody.is_empty() {
        return Err(SendError::NotKept(receipt));
    }
    Ok(receipt)
}

/// The most letters an [`Inbox`] remembers: past it (and an eighth more, so that it is seldom
/// sorted), those it would forget soonest are forgotten first. Anyone can write to anyone: a
/// stranger's letters, read as they come, would otherwise grow it (and the file it is saved
/// in) without bound. A letter forgotten early comes again only from a replica that missed
/// its acknowledgement.
pub const MAX_REMEMBERED: usize = 65_536;

/// What an account has read: (sender, id) of each letter acknowledged, until it expires (plus
/// the clock skew), so a copy that comes back from a replica that missed an ack is left out;
/// at most [`MAX_REMEMBERED`] letters. Keep one per account across fetches, and save it
/// ([`Inbox::entries`]) for exactly-once across restarts.
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

    /// Every letter remembered: sender, id, and until when (Unix ms), to save.
    pub fn entries(&self) -> impl Iterator<Item = (&AccountId, MessageId, u64)> {
        self.seen.iter().map(|((sender, id), until)| (sender, *id, *until))
    }

    /// Remembers a letter as read until `until_ms` (as [`Inbox::entries`] gave it).
    pub fn remember(&mut self, sender: AccountId, id: MessageId, until_ms: u64) {
        let until = self.seen.entry((sender, id)).or_default();
        *until = (*until).max(until_ms);
        if self.seen.len() > MAX_REMEMBERED + MAX_REMEMBERED / 8 {
            // Exactly the excess goes, whatever the ties (one fetch's letters that asked to be
            // kept long share their time).
            let excess = self.seen.len() - MAX_REMEMBERED;
            let mut soonest: Vec<_> = self.seen.iter().map(|(key, &until)| (until, key)).collect();
            soonest.select_nth_unstable_by_key(excess, |&(until, _)| until);
            let forgotten: Vec<_> =
                soonest[..excess].iter().map(|(_, key)| (*key).clone()).collect();
            for key in forgotten {
                self.seen.remove(&key);
            }
        }
    }

    /// Whether the letter from `sender` with `id` was read.
    pub fn has_read(&self, sender: &AccountId, id: &MessageId) -> bool {
        self.seen.contains_key(&(sender.clone(), *id))
    }

    /// Forgets the letters remembered until before `now_ms` (no replica keeps them any more).
    pub fn forget_expired(&mut self, now_ms: u64) {
        self.seen.retain(|_, until| *until > now_ms);
    }
}

/// The start of a delivery receipt's body; the ids read follow, 16 bytes each.
const RECEIPT: &[u8] = b"\0dkvs-mail-read-v1\0";

/// A recipient's word that it read letters: signed by it, it came as a letter to their sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryReceipt {
    /// Who read them (the receipt's signer).
    pub reader: AccountId,
    /// The letters read.
    pub ids: Vec<MessageId>,
    /// When, by the reader's clock (Unix ms).
    pub read_at_ms: u64,
}

impl DeliveryReceipt {
    fn body(ids: &[MessageId]) -> Vec<u8> {
        let mut body = RECEIPT.to_vec();
        ids.iter().for_each(|id| body.extend_from_slice(&id.0));
        body
    }

    /// The receipt a letter carries, if it is one.
    fn of(letter: &Letter) -> Option<DeliveryReceipt> {
        let ids = letter.body.strip_prefix(RECEIPT)?;
        if ids.is_empty() || ids.len() % 16 != 0 {
            return None;
        }
        let ids = ids.chunks(16).map(|id| MessageId(id.try_into().expect("16 bytes"))).collect();
        Some(DeliveryReceipt { reader: letter.sender.clone(), ids, read_at_ms: letter.sent_at_ms })
    }
}

/// What marks a letter read: its sender, its id, and until when to remember it.
type ReadMark = (AccountId, MessageId, u64);

/// Letters fetched, and what to acknowledge once they are handled.
#[derive(Debug, Default)]
pub struct Fetched {
    /// New letters, oldest first (by the time their senders wrote them).
    pub letters: Vec<Letter>,
    /// Delivery receipts for letters this account sent.
    pub receipts: Vec<DeliveryReceipt>,
    /// Envelopes that did not open (tampered with, forged, expired, not for this account,
    /// from the future), with the replica that handed each over (at most [`MAX_REFUSED`]
    /// listed). All are acknowledged too, so the replica drops them, but a letter written
    /// ahead of this clock by less than an hour, and any refused for its time while
    /// [`Fetched::clock_off`] says: those are left for a later fetch.
    pub refused: Vec<(PeerId, MailError)>,
    /// Replicas that answered.
    pub replicas: Vec<PeerId>,
    /// Replicas that did not, or not fully (the envelopes of the pages they did hand over are
    /// used), and why.
    pub failed: Vec<(PeerId, String)>,
    /// What the acknowledgement did, when [`read`] made it; `None` after [`fetch`] alone.
    pub acked: Option<AckReport>,
    /// How many replicas refused the read as asked at a time too far from their clocks
    /// ([`MAX_CLOCK_SKEW_MS`]), when no other replica took it: this node's clock is likely
    /// off, and no envelope was refused (nor deleted) for its time.
    pub clock_off: Option<usize>,
    acks: BTreeMap<PeerId, Vec<[u8; 32]>>,
    letters_read: Vec<ReadMark>,
    receipts_read: Vec<ReadMark>,
    receipt_digests: HashSet<[u8; 32]>,
    /// The envelope each letter and receipt (sender, id) opened from.
    digests: HashMap<(AccountId, MessageId), [u8; 32]>,
    /// Per replica, the cursor after what it handed over.
    cursors: BTreeMap<PeerId, u64>,
}

impl Fetched {
    /// Marks what this fetch opened read in `inbox` (as [`ack`] does).
    pub fn mark_read(&self, inbox: &mut Inbox) {
        for (sender, id, until) in self.letters_read.iter().chain(&self.receipts_read) {
            inbox.remember(sender.clone(), *id, *until);
        }
    }

    /// Leaves every letter past the first `letters`, and every delivery receipt past the
    /// first `receipts`, for a later fetch: [`ack`] neither deletes nor marks them read, so
    /// the next [`fetch`] hands them over again (a [`MailWatch`]'s next fetch only after its
    /// renewal: its cursors are past them). For a reader that hands letters on in answers of
    /// bounded size. Returns how many were left.
    pub fn leave_for_later(&mut self, letters: usize, receipts: usize) -> usize {
        let mut left: HashSet<(AccountId, MessageId)> = HashSet::new();
        let from = letters.min(self.letters.len());
        left.extend(self.letters.drain(from..).map(|letter| (letter.sender, letter.id)));
        // `receipts_read` is in the order of `receipts`.
        let from = receipts.min(self.receipts.len());
        self.receipts.truncate(from);
        left.extend(self.receipts_read.drain(from..).map(|(sender, id, _)| (sender, id)));
        self.letters_read.retain(|(sender, id, _)| !left.contains(&(sender.clone(), *id)));
        let digests: HashSet<[u8; 32]> =
            left.iter().filter_map(|key| self.digests.get(key)).copied().collect();
        for acks in self.acks.values_mut() {
            acks.retain(|digest| !digests.contains(digest));
        }
        self.receipt_digests.retain(|digest| !digests.contains(digest));
        self.digests.retain(|key, _| !left.contains(key));
        left.len()
    }

    /// The delivery receipts of this fetch alone (and the envelopes that carried them): to
    /// acknowledge them while the letters wait for their reader.
    pub fn only_receipts(&self) -> Fetched {
        let acks = self
            .acks
            .iter()
            .map(|(peer, digests)| {
                let kept = digests.iter().filter(|d| self.receipt_digests.contains(*d));
                (*peer, kept.copied().collect())
            })
            .collect();
        Fetched {
            receipts: self.receipts.clone(),
            replicas: self.replicas.clone(),
            acks,
            receipts_read: self.receipts_read.clone(),
            receipt_digests: self.receipt_digests.clone(),
            digests: self.digests.clone(),
            ..Fetched::default()
        }
    }
}

/// What an acknowledgement did.
#[derive(Debug, Default)]
pub struct AckReport {
    /// Envelopes the replicas deleted.
    pub deleted: usize,
    /// Replicas that did not take the ack, and why: they keep their copies, which come back
    /// at the next fetch and are left out by the inbox.
    pub failed: Vec<(PeerId, String)>,
    /// Delivery receipts sent, one per sender.
    pub receipts_sent: usize,
    /// Senders whose receipt could not be sent, and why.
    pub receipts_failed: Vec<(AccountId, String)>,
    /// Senders not told, over [`MAX_RECEIPTS`] in one acknowledgement.
    pub receipts_skipped: usize,
}

/// The most senders one acknowledgement sends delivery receipts to (the first ones, by
/// account id); the others are not told.
pub const MAX_RECEIPTS: usize = 64;
/// Delivery receipts sent at once.
const RECEIPTS_AT_ONCE: usize = 8;
/// The longest a letter is remembered as read: past it, no honest replica keeps it (their TTL
/// caps are days), whatever expiry its sender signed; a letter sent longer ago than this is
/// refused, so that one kept longer (a replica configured so, or a lying one) cannot come
/// again as new.
const MAX_REMEMBER_MS: u64 = 30 * 24 * 3_600_000;

/// A letter written ahead of this clock by more than the clock skew, but by less than this,
/// is left on its replicas for a later fetch (this clock may be slow); one written further
/// ahead is refused and deleted.
const LEFT_FOR_LATER_MS: u64 = 3_600_000;

/// The most refused envelopes a fetch lists (all are acknowledged).
pub const MAX_REFUSED: usize = 64;
/// One fetch takes at most this many envelope bytes, and envelopes, from one replica (twice
/// a mailbox's default quota, four times its count); the rest comes at the next fetch, after
/// these are acknowledged.
const MAX_FETCH_BYTES: usize = 16 << 20;
const MAX_FETCH_ENVELOPES: usize = 4096;
const PAGE: u32 = 256;

/// The longest a fetch waits for its replicas, all their pages together (a replica that takes
/// the place of one that failed has what is left of it): a replica that answers slowly, page
/// after page, cannot hold a reader past it, nor past the command line's 60 s with the
/// lookup before. What the replicas handed over by then is used; the rest comes next time.
const FETCH_TIME: Duration = Duration::from_secs(30);

/// What one replica handed over.
struct Pages {
    envelopes: Vec<Vec<u8>>,
    /// The cursor after the last envelope (where to go on from).
    cursor: u64,
    /// Why it stopped early, if it did.
    error: Option<String>,
    /// Whether the replica refused a page as asked at a time too far from its clock's.
    out_of_time: bool,
}

/// What one replica keeps for `account` after `after`, page by page. A page that breaks the
/// protocol (more than asked, cursors not increasing, empty but "more") or the `deadline`
/// ends the fetch from that replica; the pages before are kept.
async fn fetch_from(
    node: &Node,
    account: &Keypair,
    replica: PeerId,
    after: u64,
    deadline: tokio::time::Instant,
) -> Pages {
    let mut pages = Pages { envelopes: Vec::new(), cursor: after, error: None, out_of_time: false };
    let mut bytes = 0;
    loop {
        let body = FetchBody { replica, after: pages.cursor, limit: PAGE, now_ms: now_ms() };
        let asked = request(node, replica, Request::Fetch(Signed::new(account, body)));
        let (items, more) = match tokio::time::timeout_at(deadline, asked).await {
            Ok(Ok(Response::Batch { items, more })) => (items, more),
            Ok(Ok(Response::Refused(r))) => {
                pages.error = Some(format!("refused: {r}"));
                pages.out_of_time = r == Refusal::OutOfTime;
                return pages;
            }
            Ok(Ok(other)) => {
                pages.error = Some(format!("not a batch: {other:?}"));
                return pages;
            }
            Ok(Err(e)) => {
                pages.error = Some(e);
                return pages;
            }
            Err(_) => {
                pages.error = Some(format!("took over {FETCH_TIME:?}"));
                return pages;
            }
        };
        if items.len() > PAGE as usize || (items.is_empty() && more) {
            pages.error =
                Some(format!("a page of {} envelopes that says more: {more}", items.len()));
            return pages;
        }
        for item in items {
            if item.cursor <= pages.cursor {
                pages.error = Some("the replica's cursors do not increase".to_owned());
                return pages;
            }
            pages.cursor = item.cursor;
            bytes += item.envelope.len();
            pages.envelopes.push(item.envelope);
        }
        if !more || bytes >= MAX_FETCH_BYTES || pages.envelopes.len() >= MAX_FETCH_ENVELOPES {
            return pages;
        }
    }
}

/// Whether this node's clock is taken to be off, from the replicas other than itself that
/// refused a reader's requests as out of time (`refused`) and those that took them
/// (`took`): some refused and none took them. A refusal is no proof (any peer can say it,
/// and one replica's clock may be the wrong one), so one replica that took the request
/// outweighs any number that refused it: otherwise a liar among the replicas could keep
/// letters dated far ahead from being deleted. A reader whose clock is off has every other
/// replica refuse it. `Some(refused)` when off.
fn clock_off(refused: usize, took: usize) -> Option<usize> {
    (refused > 0 && took == 0).then_some(refused)
}

/// Fetches `account`'s new letters from its mailbox's replicas (see the module docs).
/// Nothing is deleted and nothing marked read until [`ack`].
pub async fn fetch(
    node: &Node,
    account: &Keypair,
    inbox: &Inbox,
    options: &SendOptions,
) -> Result<Fetched, ReadError> {
    node.with_extension::<Mail, _>(|_, _| ()).await?;
    let (replicas, wanted) = read_from(node, &Mailbox::of(&account.account_id()), options).await;
    fetch_from_replicas(node, account, inbox, replicas, wanted, &HashMap::new(), None).await
}

/// The replicas a reader of `mailbox` asks, nearest first, and how many of them must answer:
/// twice as many as a letter's replicas (a sender keeps its letter within those). A node that
/// is no DHT server asks itself too, first and beside them: it is no replica others find (a
/// letter it kept itself, as a sender's last resort, waits there).
async fn read_from(node: &Node, mailbox: &Mailbox, options: &SendOptions) -> (Vec<PeerId>, usize) {
    let (mut replicas, server) = replicas_of(node, mailbox).await;
    let wanted = 2 * options.replicas();
    if server {
        return (replicas, wanted);
    }
    replicas.insert(0, node.peer_id());
    (replicas, wanted + 1)
}

async fn fetch_from_replicas(
    node: &Node,
    account: &Keypair,
    inbox: &Inbox,
    candidates: Vec<PeerId>,
    wanted: usize,
    cursors: &HashMap<PeerId, u64>,
    clock_was_off: Option<usize>,
) -> Result<Fetched, ReadError> {
    let now = now_ms();
    let deadline = tokio::time::Instant::now() + FETCH_TIME;
    let me = node.peer_id();
    let refused_the_time = &AtomicUsize::new(0);
    let ask = |replica| async move {
        let after = cursors.get(&replica).copied().unwrap_or(0);
        let pages = fetch_from(node, account, replica, after, deadline).await;
        if pages.out_of_time && replica != me {
            refused_the_time.fetch_add(1, Ordering::Relaxed);
        }
        match pages {
            // Pages already handed over are used; a replica that handed over nothing failed.
            Pages { envelopes, error: Some(e), .. } if envelopes.is_empty() => Err(e),
            Pages { envelopes, cursor, error, .. } => Ok((envelopes, cursor, error)),
        }
    };
    let (answered, failed) = nearest_that_answer(candidates, wanted, ask).await;
    // Other replicas refused this reader's requests as out of time, and none took them: this
    // clock, not the letters', is likely wrong (a phone whose clock was set back). What it
    // would refuse for their time (and so delete) is left on the replicas for a read with a
    // right clock, and the reader is told. A watch's replicas are those that took its
    // request: the watch judged the clock then (`clock_was_off`).
    let refused_the_time = refused_the_time.load(Ordering::Relaxed);
    let took_it = answered.iter().filter(|(replica, _)| *replica != me).count();
    let mut fetched = Fetched { failed, ..Fetched::default() };
    fetched.clock_off = clock_off(refused_the_time, took_it).or(clock_was_off);
    let left_for_later = fetched.clock_off.is_some();
    let mut opened: HashSet<[u8; 32]> = HashSet::new();
    let mut this_fetch: HashSet<(AccountId, MessageId)> = HashSet::new();
    for (replica, (envelopes, cursor, partial)) in answered {
        fetched.replicas.push(replica);
        fetched.cursors.insert(replica, cursor);
        if let Some(e) = partial {
            fetched.failed.push((replica, e));
        }
        for bytes in envelopes {
            let refuse = |fetched: &mut Fetched, e| {
                if fetched.refused.len() < MAX_REFUSED {
                    fetched.refused.push((replica, e));
                }
            };
            let envelope = match Envelope::decode(&bytes) {
                Ok(envelope) => envelope,
                Err(e) => {
                    refuse(&mut fetched, e);
                    continue;
                }
            };
            let digest = envelope.digest();
            match envelope.open(account, now) {
                // Sent longer ago than an inbox remembers what it read: it may have been read
                // already, and would come again as new. Refused, and deleted.
                Ok(letter) if letter.sent_at_ms.saturating_add(MAX_REMEMBER_MS) <= now => {
                    if !left_for_later {
                        fetched.acks.entry(replica).or_default().push(digest);
                    }
                    if opened.insert(digest) {
                        let (sent_at_ms, expires_at_ms) = (letter.sent_at_ms, letter.expires_at_ms);
                        refuse(
                            &mut fetched,
                            MailError::OutOfTime { sent_at_ms, expires_at_ms, now_ms: now },
                        );
                    }
                }
                Ok(letter) => {
                    fetched.acks.entry(replica).or_default().push(digest);
                    let key = (letter.sender.clone(), letter.id);
                    if !opened.insert(digest) || inbox.seen.contains_key(&key) {
                        continue; // another replica's copy, or read before
                    }
                    if this_fetch.insert(key) {
                        let until = letter
                            .expires_at_ms
                            .saturating_add(MAX_CLOCK_SKEW_MS)
                            .min(now.saturating_add(MAX_REMEMBER_MS));
                        let mark = (letter.sender.clone(), letter.id, until);
                        fetched.digests.insert((letter.sender.clone(), letter.id), digest);
                        match DeliveryReceipt::of(&letter) {
                            Some(receipt) => {
                                fetched.receipts.push(receipt);
                                fetched.receipts_read.push(mark);
                                fetched.receipt_digests.insert(digest);
                            }
                            None => {
                                fetched.letters.push(letter);
                                fetched.letters_read.push(mark);
                            }
                        }
                    }
                }
                // Written ahead of this clock, by less than an hour: maybe this clock is
                // slow; left for later. Further ahead, it is refused and deleted as a
                // letter too old is: else letters a sender dates ahead (on a throwaway
                // account) would fill the mailbox, and the recipient could not delete them.
                // Whatever its time, while the replicas say that this clock is off.
                Err(e @ MailError::OutOfTime { sent_at_ms, expires_at_ms, .. })
                    if left_for_later
                        || (expires_at_ms > now
                            && sent_at_ms <= now.saturating_add(LEFT_FOR_LATER_MS)) =>
                {
                    if opened.insert(digest) {
                        refuse(&mut fetched, e);
                    }
                }
                Err(e) => {
                    fetched.acks.entry(replica).or_default().push(digest);
                    if opened.insert(digest) {
                        refuse(&mut fetched, e);
                    }
                }
            }
        }
    }
    if fetched.replicas.is_empty() {
        let why = fetched.failed.iter().map(|(p, e)| format!("{p}: {e}")).collect::<Vec<_>>();
        return Err(ReadError::NoReplica(why.join("; ")));
    }
    fetched.letters.sort_by_cached_key(|l| (l.sent_at_ms, l.sender.to_string(), l.id));
    Ok(fetched)
}

/// Marks the letters (and receipts) of `fetched` read in `inbox`, has every replica that
/// handed an envelope over delete it, and sends each sender a delivery receipt (unless
/// `options` turn them off).
pub async fn ack(
    node: &Node,
    account: &Keypair,
    inbox: &mut Inbox,
    fetched: &Fetched,
    options: &SendOptions,
) -> AckReport {
    inbox.forget_expired(now_ms());
    fetched.mark_read(inbox);
    let asks = fetched.acks.iter().flat_map(|(&replica, digests)| {
        digests.chunks(MAX_ACK).map(move |chunk| async move {
            let body = AckBody { replica, now_ms: now_ms(), digests: chunk.to_vec() };
            (replica, request(node, replica, Request::Ack(Signed::new(account, body))).await)
        })
    });
    let mut report = AckReport::default();
    for (replica, answer) in join_all(asks).await {
        match answer {
            Ok(Response::Acked(n)) => report.deleted += n as usize,
            Ok(other) => report.failed.push((replica, format!("not an ack: {other:?}"))),
            Err(e) => report.failed.push((replica, e)),
        }
    }
    if options.read_receipts {
        send_receipts(node, account, fetched, options, &mut report).await;
    }
    report
}

/// One receipt letter to each sender of `fetched`'s letters, listing the ids read.
async fn send_receipts(
    node: &Node,
    account: &Keypair,
    fetched: &Fetched,
    options: &SendOptions,
    report: &mut AckReport,
) {
    let mut by_sender: BTreeMap<String, (AccountId, Vec<MessageId>)> = BTreeMap::new();
    for letter in &fetched.letters {
        let entry = by_sender
            .entry(letter.sender.to_string())
            .or_insert_with(|| (letter.sender.clone(), Vec::new()));
        entry.1.push(letter.id);
    }
    // A receipt is a letter: at most MAX_BODY bytes of ids each.
    let per_letter = (crate::letter::MAX_BODY - RECEIPT.len()) / 16;
    let receipts: Vec<(AccountId, Vec<u8>)> = by_sender
        .into_values()
        .flat_map(|(sender, ids)| {
            ids.chunks(per_letter)
                .map(|ids| (sender.clone(), DeliveryReceipt::body(ids)))
                .collect::<Vec<_>>()
        })
        .collect();
    // A few at a time, and a bounded number per acknowledgement: strangers can write to
    // anyone, and each receipt is a lookup and a deposit on every replica.
    let skipped = receipts.len().saturating_sub(MAX_RECEIPTS);
    let sends = receipts.into_iter().take(MAX_RECEIPTS).map(|(sender, body)| async move {
        let sent = send(node, account, &sender, body, options).await;
        (sender, sent)
    });
    let sent: Vec<_> =
        futures::stream::iter(sends).buffer_unordered(RECEIPTS_AT_ONCE).collect().await;
    report.receipts_skipped = skipped;
    for (sender, sent) in sent {
        match sent {
            Ok(_) => report.receipts_sent += 1,
            Err(e) => report.receipts_failed.push((sender, e.to_string())),
        }
    }
}

/// [`fetch`], then [`ack`]: the new letters, marked read and deleted from the replicas (what
/// the acknowledgement did is in [`Fetched::acked`]: a replica that did not take it keeps its
/// copies, which the inbox leaves out when they come again).
pub async fn read(
    node: &Node,
    account: &Keypair,
    inbox: &mut Inbox,
    options: &SendOptions,
) -> Result<Fetched, ReadError> {
    let mut fetched = fetch(node, account, inbox, options).await?;
    fetched.acked = Some(ack(node, account, inbox, &fetched, options).await);
    Ok(fetched)
}

/// After a fetch that found nothing new, the next one waits at least this long, whatever
/// notifies: the replicas that tell of a letter already fetched, or one that notifies with no
/// mail at all (over and over, to keep this node fetching from every replica), make at most
/// two fetches a second.
pub const EMPTY_FETCH_GAP: Duration = Duration::from_millis(500);

/// New mail as it comes: the replicas of the account's mailbox are asked to notify this node
/// of every deposit (a watch signed by the account, renewed before it lapses), and
/// [`MailWatch::next`] fetches when they do, and at every renewal in case a notification was
/// lost.
pub struct MailWatch {
    node: Node,
    account: std::sync::Arc<Keypair>,
    options: SendOptions,
    notified: mpsc::Receiver<()>,
    replicas: Vec<PeerId>,
    renew_at: tokio::time::Instant,
    /// Where each replica's envelopes were read up to; empty for a fetch from the start (at
    /// the start and at each renewal, so that letters handed out and not acknowledged come
    /// again).
    cursors: HashMap<PeerId, u64>,
    /// Whether the replicas refused the watch as asked out of time ([`Fetched::clock_off`]).
    clock_off: Option<usize>,
}

impl MailWatch {
    /// Starts watching `account`'s mailbox through `node`.
    pub async fn start(
        node: Node,
        account: std::sync::Arc<Keypair>,
        options: SendOptions,
    ) -> Result<MailWatch, ReadError> {
        let mailbox = Mailbox::of(&account.account_id());
        let notified =
            node.with_extension::<Mail, _>(move |mail, _| mail.subscribe(mailbox)).await?;
        let mut watch = MailWatch {
            node,
            account,
            options,
            notified,
            replicas: vec![],
            renew_at: tokio::time::Instant::now(),
            cursors: HashMap::new(),
            clock_off: None,
        };
        watch.register().await?;
        Ok(watch)
    }

    /// Asks the replicas to notify this node: the nearest `2 * replicas` that answer.
    async fn register(&mut self) -> Result<(), ReadError> {
        let mailbox = Mailbox::of(&self.account.account_id());
        let (candidates, wanted) = read_from(&self.node, &mailbox, &self.options).await;
        let (node, account) = (&self.node, &self.account);
        let (me, refused_the_time) = (node.peer_id(), &AtomicUsize::new(0));
        let ask = |replica| async move {
            let body = WatchBody { replica, now_ms: now_ms() };
            match request(node, replica, Request::Watch(Signed::new(account, body))).await? {
                Response::Watching(_) => Ok(()),
                Response::Refused(Refusal::OutOfTime) if replica != me => {
                    refused_the_time.fetch_add(1, Ordering::Relaxed);
                    Err(format!("refused: {}", Refusal::OutOfTime))
                }
                other => Err(format!("not watching: {other:?}")),
            }
        };
        let (answered, failed) = nearest_that_answer(candidates, wanted, ask).await;
        if answered.is_empty() {
            let why = failed.iter().map(|(p, e)| format!("{p}: {e}")).collect::<Vec<_>>();
            return Err(ReadError::NoReplica(why.join("; ")));
        }
        let took_it = answered.iter().filter(|(replica, _)| *replica != me).count();
        self.clock_off = clock_off(refused_the_time.load(Ordering::Relaxed), took_it);
        self.replicas = answered.into_iter().map(|(peer, ())| peer).collect();
        let replicas = self.replicas.clone();
        let until = now_ms() + WATCH_TTL_MS;
        self.node
            .with_extension::<Mail, _>(move |mail, host| {
                mail.expect_notifications(mailbox, replicas, until, host)
            })
            .await?;
        self.renew_at = tokio::time::Instant::now() + Duration::from_millis(WATCH_TTL_MS / 2);
        Ok(())
    }

    /// The next new letters or delivery receipts (at least one), fetched from the replicas;
    /// [`ack`] them once handled. A notification fetches only what came after the last fetch
    /// from each replica; envelopes that hold no new letter (copies of letters read, letters
    /// that do not open) are acknowledged away at once. Waits as long as it takes: bound it
    /// with a timeout.
    pub async fn next(&mut self, inbox: &Inbox) -> Result<Fetched, ReadError> {
        loop {
            let fetched = fetch_from_replicas(
                &self.node,
                &self.account,
                inbox,
                self.replicas.clone(),
                self.replicas.len(),
                &self.cursors,
                self.clock_off,
            )
            .await?;
            self.cursors.extend(fetched.cursors.iter().map(|(peer, cursor)| (*peer, *cursor)));
            if !fetched.letters.is_empty() || !fetched.receipts.is_empty() {
                return Ok(fetched);
            }
            if fetched.acks.values().any(|digests| !digests.is_empty()) {
                // Nothing new in it: copies of what was read, and what does not open.
                let quiet = self.options.clone().with_read_receipts(false);
                ack(&self.node, &self.account, &mut Inbox::new(), &fetched, &quiet).await;
            }
            let quiet_until = tokio::time::Instant::now() + EMPTY_FETCH_GAP;
            tokio::select! {
                notified = self.notified.recv() => {
                    if notified.is_none() {
                        return Err(ReadError::Node(NetError::Shutdown));
                    }
                    // This fetch found nothing: the next waits its gap.
                    tokio::time::sleep_until(quiet_until).await;
                }
                () = tokio::time::sleep_until(self.renew_at) => {
                    self.register().await?;
                    self.cursors.clear();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Inbox, MAX_REMEMBERED, clock_off};
    use crate::MessageId;

    #[test]
    fn an_inbox_forgets_the_letters_it_would_forget_soonest_past_its_bound() {
        let sender = dkvs_account::Keypair::generate(dkvs_account::KeyType::Ed25519).account_id();
        let id = |i: usize| {
            let mut id = [0; 16];
            id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            MessageId(id)
        };
        let mut inbox = Inbox::new();
        let most = MAX_REMEMBERED + MAX_REMEMBERED / 8;
        // Remembered until a time that does not follow the order they were read in.
        let until = |i: usize| 1_000 + (i as u64 * 7_919) % most as u64;
        for i in 0..most {
            inbox.remember(sender.clone(), id(i), until(i));
        }
        assert_eq!(inbox.len(), most, "up to the slack, nothing is forgotten");
        inbox.remember(sender.clone(), id(most), u64::MAX);
        assert_eq!(inbox.len(), MAX_REMEMBERED);
        let kept_from = 1_000 + (most - MAX_REMEMBERED + 1) as u64;
        for i in 0..most {
            assert_eq!(inbox.has_read(&sender, &id(i)), until(i) >= kept_from, "letter {i}");
        }
        assert!(inbox.has_read(&sender, &id(most)), "the newest is kept");
        // Letters all remembered as long (they asked to be kept for ever): bounded too.
        let mut inbox = Inbox::new();
        for i in 0..=most {
            inbox.remember(sender.clone(), id(i), 5_000);
        }
        assert_eq!(inbox.len(), MAX_REMEMBERED);
    }

    #[test]
    fn the_clock_is_off_only_when_no_other_replica_took_the_request() {
        // A reader whose clock is off: every other replica refuses it.
        assert_eq!(clock_off(2, 0), Some(2));
        assert_eq!(clock_off(10, 0), Some(10));
        // One liar (or one replica whose own clock is off) among honest replicas.
        assert_eq!(clock_off(1, 1), None);
        assert_eq!(clock_off(10, 1), None);
        // Nobody refused for time.
        assert_eq!(clock_off(0, 0), None);
        assert_eq!(clock_off(0, 5), None);
    }
}
