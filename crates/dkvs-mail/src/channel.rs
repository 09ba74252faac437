//! Named public channels: posts signed by accounts, spread by gossip, checked by every node
//! before it forwards them.
//!
//! A channel's name (1 to 64 of `A-Z a-z 0-9 . _ -`) gives its gossip topic,
//! `/dkvs/channel/1/<name>`. A [`Post`] names its channel, its author, its time and a random
//! id, carries a body of at most [`MAX_POST_BODY`] bytes, and is signed by its author over all
//! of it (domain `dkvs-channel-post-v1`), so it cannot be moved to another channel or changed.
//!
//! A node that joined a channel takes a post only if it decodes, its signature verifies, it
//! names this channel, it is not older than [`HISTORY_AGE_MS`] nor written further ahead than
//! clocks drift, and its (author, id) is not in the replay window: a `moka` cache of the ids
//! taken in the last [`HISTORY_AGE_MS`] (a cache whose entries lapse is right here: a post
//! whose id has lapsed is too old to be taken anyway). The window never forgets an id early:
//! when it holds as many as it may, new posts are left alone (not taken, not forwarded) until
//! ids lapse, rather than let a flood push out the ids a replay would need. One channel holds
//! at most a quarter of the window ([`CHANNEL_WINDOW`]): a flood on one channel leaves room for
//! the others this node joined; and one author at most an eighth of a channel's share
//! ([`AUTHOR_WINDOW`], 6,250 posts an hour): a flood from one account leaves the channel to
//! the others (accounts cost nothing, so many can still fill it, each publishing peer at the
//! rate gossip admits from it). Anything else is
//! rejected, so gossipsub does not forward it; a peer that forwards a post whose signature does
//! not verify, or that is over the size limit, is banned (no honest node forwards one). A copy
//! of a post taken once, published again under another gossip id, is a replay: rejected.
//!
//! Each node keeps the last [`HISTORY_LEN`] posts of each channel it joined (at most
//! [`HISTORY_AGE_MS`] old); a node that joins late asks peers on the channel for theirs
//! (the mailbox protocol's `History`) and checks every post as if it came by gossip.
//!
//! Presence: a post of kind [`PostKind::Presence`] says its author is in the channel; it
//! counts for [`PRESENCE_TTL_MS`]. [`members`] lists the authors heard from recently.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dkvs_account::{AccountId, Domain, KeyType, Keypair, PublicKey, Signature};
use dkvs_net::libp2p::PeerId;
use dkvs_net::{GossipMessage, Host, NetError, Node, Verdict};
use futures::future::join_all;
use prost::Message as _;
use tokio::sync::mpsc;

use crate::client::request;
use crate::letter::{MAX_CLOCK_SKEW_MS, MessageId};
use crate::service::{Mail, now_ms};
use crate::wire::{MAX_BATCH_BYTES, Request, Response};

/// The longest body of a post: 8 KiB (a gossip message is at most 16 KiB).
pub const MAX_POST_BODY: usize = 8 * 1024;
/// The longest channel name.
pub const MAX_CHANNEL_NAME: usize = 64;
/// Posts older than this are not taken, kept or handed to late joiners: an hour.
pub const HISTORY_AGE_MS: u64 = 3_600_000;
/// Posts a node keeps per channel.
pub const HISTORY_LEN: usize = 256;
/// How long a presence post counts: five minutes.
pub const PRESENCE_TTL_MS: u64 = 5 * 60_000;
/// The most post ids the replay window holds; at that, new posts wait for ids to lapse.
const REPLAY_WINDOW: u64 = 200_000;
/// The most ids of one channel the window holds: a quarter of it (50,000 posts an hour, 14 a
/// second), so that a flood on one channel this node joined leaves room for its others.
const CHANNEL_WINDOW: u64 = REPLAY_WINDOW / 4;
/// The most ids of one author in one channel the window holds: an eighth of a channel's
/// (6,250 posts an hour, 1.7 a second, far above what a person or a bot that reports each
/// second posts), so that one account cannot fill a channel for everyone.
const AUTHOR_WINDOW: u64 = CHANNEL_WINDOW / 8;
/// Late joiners ask this many peers on the channel for its history.
const HISTORY_PEERS: usize = 5;

const POST: Domain = Domain::new("dkvs-channel-post-v1");
const TOPIC_PREFIX: &str = "/dkvs/channel/1/";

/// What a post is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostKind {
    /// A message to the channel.
    Message,
    /// Its author says it is in the channel (the body is empty).
    Presence,
}

/// A post on a channel, its signature checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Post {
    /// The channel's name.
    pub channel: String,
    /// Who wrote and signed it.
    pub author: AccountId,
    /// When, by the author's clock (Unix ms).
    pub sent_at_ms: u64,
    /// Its id, random.
    pub id: MessageId,
    /// A message or a presence.
    pub kind: PostKind,
    /// The body, at most [`MAX_POST_BODY`] bytes.
    pub body: Vec<u8>,
    signature: Signature,
}

/// Why a post or a channel could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// Not a channel name.
    #[error("{0:?} is not a channel name: 1 to 64 of A-Z a-z 0-9 . _ -")]
    BadName(String),
    /// The body is over [`MAX_POST_BODY`].
    #[error("the body is {0} bytes, the limit is {MAX_POST_BODY}")]
    TooLarge(usize),
    /// The bytes are not a post.
    #[error("malformed post: {0}")]
    Malformed(String),
    /// The author's signature does not verify.
    #[error("the post's signature does not verify")]
    BadSignature,
    /// The post names another channel.
    #[error("the post is for channel {0:?}")]
    OtherChannel(String),
    /// Older than the history keeps, or from further ahead than clocks drift.
    #[error("the post is out of its time: written at {sent_at_ms}, now is {now_ms}")]
    OutOfTime {
        /// When the author says it wrote it.
        sent_at_ms: u64,
        /// This node's clock.
        now_ms: u64,
    },
    /// Gossipsub would not publish (no peer on the channel yet, a duplicate).
    #[error("cannot publish on {channel:?}: {reason}")]
    Publish {
        /// The channel.
        channel: String,
        /// Gossipsub's words.
        reason: String,
    },
    /// The node does not host mail and channels, or has stopped.
    #[error(transparent)]
    Node(#[from] NetError),
}

/// The gossip topic of channel `name`.
pub fn topic(name: &str) -> Result<String, ChannelError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_CHANNEL_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !valid {
        return Err(ChannelError::BadName(name.to_owned()));
    }
    Ok(format!("{TOPIC_PREFIX}{name}"))
}

#[derive(Clone, PartialEq, prost::Message)]
struct PostPb {
    #[prost(string, tag = "1")]
    channel: String,
    #[prost(uint32, tag = "2")]
    key_type: u32,
    #[prost(bytes = "vec", tag = "3")]
    author: Vec<u8>,
    #[prost(uint64, tag = "4")]
    sent_at_ms: u64,
    #[prost(bytes = "vec", tag = "5")]
    id: Vec<u8>,
    #[prost(uint32, tag = "6")]
    kind: u32,
    #[prost(bytes = "vec", tag = "7")]
    body: Vec<u8>,
    #[prost(bytes = "vec", tag = "8")]
    signature: Vec<u8>,
}

fn signing_bytes(
    channel: &str,
    author: &AccountId,
    sent_at_ms: u64,
    id: &MessageId,
    kind: PostKind,
    body: &[u8],
) -> Vec<u8> {
    let key = author.public_key();
    let mut out = Vec::with_capacity(128 + body.len());
    out.push(channel.len() as u8);
    out.extend_from_slice(channel.as_bytes());
    out.push(key.key_type().code());
    out.push(key.as_bytes().len() as u8);
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&sent_at_ms.to_be_bytes());
    out.extend_from_slice(&id.0);
    out.push(kind_code(kind) as u8);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn kind_code(kind: PostKind) -> u32 {
    match kind {
        PostKind::Message => 0,
        PostKind::Presence => 1,
    }
}

impl Post {
    /// A post by `author` on `channel`, written at `now_ms`.
    pub fn sign(
        author: &Keypair,
        channel: &str,
        kind: PostKind,
        body: Vec<u8>,
        now_ms: u64,
    ) -> Result<Post, ChannelError> {
        topic(channel)?;
        if body.len() > MAX_POST_BODY {
            return Err(ChannelError::TooLarge(body.len()));
        }
        if kind == PostKind::Presence && !body.is_empty() {
            return Err(ChannelError::Malformed("a presence post carries no body".into()));
        }
        let (id, who) = (MessageId::random(), author.account_id());
        let signature = author.sign(POST, &signing_bytes(channel, &who, now_ms, &id, kind, &body));
        Ok(Post {
            channel: channel.to_owned(),
            author: who,
            sent_at_ms: now_ms,
            id,
            kind,
            body,
            signature,
        })
    }

    /// The post's bytes (protobuf).
    pub fn encode(&self) -> Vec<u8> {
        let key = self.author.public_key();
        PostPb {
            channel: self.channel.clone(),
            key_type: key.key_type().code().into(),
            author: key.as_bytes().to_vec(),
            sent_at_ms: self.sent_at_ms,
            id: self.id.0.to_vec(),
            kind: kind_code(self.kind),
            body: self.body.clone(),
            signature: self.signature.as_bytes().to_vec(),
        }
        .encode_to_vec()
    }

    /// Reads a post and checks its signature (not its channel or time: [`Post::check`]).
    pub fn decode(bytes: &[u8]) -> Result<Post, ChannelError> {
        let malformed = |e: &dyn std::fmt::Display| ChannelError::Malformed(e.to_string());
        if bytes.len() > MAX_POST_BODY + 1024 {
            return Err(ChannelError::TooLarge(bytes.len()));
        }
        let pb = PostPb::decode(bytes).map_err(|e| malformed(&e))?;
        if pb.body.len() > MAX_POST_BODY {
            return Err(ChannelError::TooLarge(pb.body.len()));
        }
        topic(&pb.channel)?;
        let key_type = KeyType::from_code(pb.key_type).map_err(|e| malformed(&e))?;
        let author = PublicKey::from_bytes(key_type, &pb.author).map_err(|e| malformed(&e))?;
        let id = MessageId(pb.id.try_into().map_err(|_| malformed(&"the id is not 16 bytes"))?);
        let kind = match pb.kind {
            0 => PostKind::Message,
            1 => PostKind::Presence,
            other => return Err(malformed(&format!("kind {other}"))),
        };
        if kind == PostKind::Presence && !pb.body.is_empty() {
            return Err(malformed(&"a presence post with a body"));
        }
        let signature =
            Signature::from_slice(&pb.signature).ok_or_else(|| malformed(&"no signature"))?;
        let author = author.account_id();
        let signed = signing_bytes(&pb.channel, &author, pb.sent_at_ms, &id, kind, &pb.body);
        author
            .public_key()
            .verify(POST, &signed, &signature)
            .map_err(|_| ChannelError::BadSignature)?;
        Ok(Post {
            channel: pb.channel,
            author,
            sent_at_ms: pb.sent_at_ms,
            id,
            kind,
            body: pb.body,
            signature,
        })
    }

    /// Whether the post belongs on `channel` at `now_ms`: it names it, and it is not older
    /// than [`HISTORY_AGE_MS`] nor from further ahead than clocks drift.
    pub fn check(&self, channel: &str, now_ms: u64) -> Result<(), ChannelError> {
        if self.channel != channel {
            return Err(ChannelError::OtherChannel(self.channel.clone()));
        }
        if self.sent_at_ms.saturating_add(HISTORY_AGE_MS) <= now_ms
            || self.sent_at_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS)
        {
            return Err(ChannelError::OutOfTime { sent_at_ms: self.sent_at_ms, now_ms });
        }
        Ok(())
    }

    fn key(&self) -> (String, [u8; 16]) {
        (self.author.to_string(), self.id.0)
    }
}

/// A channel this node joined.
#[derive(Default)]
struct Joined {
    history: VecDeque<Post>,
    listeners: Vec<mpsc::Sender<Post>>,
    /// Authors present, until when.
    members: HashMap<String, (AccountId, u64)>,
}

/// The channels part of the mail extension: what this node joined, and the replay window.
pub(crate) struct Channels {
    /// Post ids taken, each with its channel, until they lapse.
    seen: moka::sync::Cache<(String, [u8; 16]), Arc<str>>,
    /// Per channel and per author in a channel, the ids in `seen` (kept by its eviction
    /// listener as they lapse).
    counts: Arc<Mutex<Counts>>,
    /// The most ids `seen` may hold, of one channel, and of one author in one channel.
    window: u64,
    channel_window: u64,
    author_window: u64,
    /// Inserts since `seen`'s count was last brought up to date (its count lags them).
    unsynced: u64,
    joined: HashMap<String, Joined>,
}

/// The ids in the replay window per channel, and in each per author (as [`Post::key`] names
/// them).
#[derive(Default)]
struct Counts(HashMap<Arc<str>, ChannelIds>);

#[derive(Default)]
struct ChannelIds {
    ids: u64,
    by_author: HashMap<String, u64>,
}

impl Counts {
    fn taken(&mut self, channel: &Arc<str>, author: &str) {
        let ids = self.0.entry(channel.clone()).or_default();
        ids.ids += 1;
        *ids.by_author.entry(author.to_owned()).or_default() += 1;
    }

    fn lapsed(&mut self, channel: &str, author: &str) {
        let Some(ids) = self.0.get_mut(channel) else { return };
        ids.ids -= 1;
        if let Some(n) = ids.by_author.get_mut(author) {
            *n -= 1;
            if *n == 0 {
                ids.by_author.remove(author);
            }
        }
        if ids.ids == 0 {
            self.0.remove(channel);
        }
    }
}

/// What became of a post offered to [`Channels::take`].
#[derive(Debug, PartialEq, Eq)]
enum Taken {
    /// New: kept and handed to listeners.
    New,
    /// Taken before.
    Replay,
    /// The replay window is full: left alone for now.
    WindowFull,
}

impl Default for Channels {
    fn default() -> Channels {
        Channels::with_window(REPLAY_WINDOW, CHANNEL_WINDOW, AUTHOR_WINDOW)
    }
}

impl Channels {
    fn with_window(window: u64, channel_window: u64, author_window: u64) -> Channels {
        let counts: Arc<Mutex<Counts>> = Arc::default();
        let lapsing = counts.clone();
        Channels {
            // Room for twice the window, so the cache itself never evicts an id before it
            // lapses: the window is enforced here, exactly, before an insert.
            seen: moka::sync::Cache::builder()
                .max_capacity(2 * window)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .time_to_live(Duration::from_millis(HISTORY_AGE_MS + MAX_CLOCK_SKEW_MS))
                .eviction_listener(move |key: Arc<(String, [u8; 16])>, channel: Arc<str>, _| {
                    lapsing.lock().unwrap_or_else(|p| p.into_inner()).lapsed(&channel, &key.0);
                })
                .build(),
            counts,
            window,
            channel_window,
            author_window,
            unsynced: 0,
            joined: HashMap::new(),
        }
    }

    /// Joins `channel` (again); a receiver of the posts taken from now on.
    pub(crate) fn join(
        &mut self,
        channel: &str,
        host: &mut Host<'_>,
    ) -> Result<mpsc::Receiver<Post>, ChannelError> {
        let name = topic(channel)?;
        host.subscribe(&name).map_err(|e| ChannelError::Publish {
            channel: channel.to_owned(),
            reason: e.to_string(),
        })?;
        let (tx, rx) = mpsc::channel(1024);
        let joined = self.joined.entry(channel.to_owned()).or_default();
        joined.listeners.retain(|l| !l.is_closed());
        joined.listeners.push(tx);
        Ok(rx)
    }

    /// The ids of `channel` in the window (more, not fewer, until lapsed ones are counted).
    #[cfg(test)]
    fn ids_of(&self, channel: &str) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.0.get(channel).map_or(0, |c| c.ids)
    }

    /// Whether the window holds its share of ids of `post`'s channel, or of its author there.
    fn share_full(&self, post: &Post, author: &str) -> bool {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.0.get(post.channel.as_str()).is_some_and(|c| {
            c.ids >= self.channel_window
                || c.by_author.get(author).is_some_and(|&n| n >= self.author_window)
        })
    }

    /// Whether the replay window has room for `post`: the whole, its channel's share and its
    /// author's share of that.
    fn room_for(&mut self, post: &Post) -> bool {
        let author = post.author.to_string();
        if self.seen.entry_count() + self.unsynced >= self.window || self.share_full(post, &author)
        {
            // The counts lag inserts and lapses: bring them up to date before deciding.
            self.seen.run_pending_tasks();
            self.unsynced = 0;
            if self.seen.entry_count() >= self.window || self.share_full(post, &author) {
                return false;
            }
        }
        true
    }

    /// Takes a post checked to belong on its channel: kept, handed to listeners; unless it
    /// was taken before, or the replay window, or the channel's share of it, or its author's
    /// share of that, is full.
    fn take(&mut self, post: Post, now: u64) -> Taken {
        let key = post.key();
        if self.seen.contains_key(&key) {
            return Taken::Replay;
        }
        if !self.room_for(&post) {
            return Taken::WindowFull;
        }
        let channel: Arc<str> = Arc::from(post.channel.as_str());
        // Counted before the insert, the lock let go: the insert may evict a lapsed id, and
        // the listener takes the lock to count it out.
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).taken(&channel, &key.0);
        self.seen.insert(key, channel);
        self.unsynced += 1;
        let Some(joined) = self.joined.get_mut(&post.channel) else { return Taken::New };
        if post.kind == PostKind::Presence {
            // From when it was written, or from now if it says later: a post dated ahead
            // (within the clock skew) does not make its author present for longer.
            let until = post.sent_at_ms.min(now).saturating_add(PRESENCE_TTL_MS);
            let entry = joined
                .members
                .entry(post.author.to_string())
                .or_insert_with(|| (post.author.clone(), 0));
            entry.1 = entry.1.max(until);
            joined.members.retain(|_, (_, until)| *until > now);
        }
        joined.history.retain(|p| p.sent_at_ms.saturating_add(HISTORY_AGE_MS) > now);
        if joined.history.len() >= HISTORY_LEN {
            joined.history.pop_front();
        }
        joined.history.push_back(post.clone());
        joined.listeners.retain(|l| !l.is_closed());
        for listener in &joined.listeners {
            // A listener that does not keep up misses posts rather than stall the node.
            if listener.try_send(post.clone()).is_err() {
                tracing::debug!(channel = %post.channel, "a channel listener is behind; post dropped for it");
            }
        }
        Taken::New
    }

    /// A gossip message on a channel topic: taken, or rejected (see the module docs).
    pub(crate) fn on_gossip(&mut self, message: GossipMessage, host: &mut Host<'_>) -> Verdict {
        let Some(channel) = message.topic.strip_prefix(TOPIC_PREFIX) else {
            return Verdict::Ignore;
        };
        if !self.joined.contains_key(channel) {
            return Verdict::Ignore;
        }
        let now = now_ms();
        let post = match Post::decode(&message.data) {
            Ok(post) => post,
            Err(e @ (ChannelError::BadSignature | ChannelError::TooLarge(_))) => {
                // No honest node forwards a post that fails these checks.
                host.report(message.source, &format!("channel {channel}: {e}"));
                return Verdict::Reject;
            }
            // Perhaps a newer version's post: not forwarded, nobody banned.
            Err(_) => return Verdict::Reject,
        };
        if post.check(channel, now).is_err() {
            return Verdict::Reject;
        }
        match self.take(post, now) {
            Taken::New => Verdict::Accept,
            Taken::Replay => Verdict::Reject,
            Taken::WindowFull => Verdict::Ignore,
        }
    }

    /// Publishes `post` on its channel, and takes it here; how many peers on the channel it
    /// went to. With none, it is only kept here (late joiners get it with the history).
    pub(crate) fn publish(
        &mut self,
        post: Post,
        host: &mut Host<'_>,
    ) -> Result<usize, ChannelError> {
        let name = topic(&post.channel)?;
        // Peers would leave it alone as this node does: said, not sent.
        if !self.room_for(&post) {
            return Err(ChannelError::Publish {
                channel: post.channel.clone(),
                reason: format!(
                    "this node's replay window is full: of this account's posts in the channel \
                     ({AUTHOR_WINDOW} an hour), of the channel's, or of all channels' (a \
                     flood); nodes take no more for now; try later"
                ),
            });
        }
        let peers = host.topic_peers(&name).len();
        if peers > 0 {
            host.publish(&name, post.encode()).map_err(|e| ChannelError::Publish {
                channel: post.channel.clone(),
                reason: e.to_string(),
            })?;
        }
        self.take(post, now_ms());
        Ok(peers)
    }

    /// The encoded posts of `channel`'s history, newest first, at most `max_bytes` of them
    /// (nothing for a channel not joined).
    pub(crate) fn history(&self, channel: &str, max_bytes: usize) -> Vec<Vec<u8>> {
        let Some(joined) = self.joined.get(channel) else { return Vec::new() };
        let mut bytes = 0;
        joined
            .history
            .iter()
            .rev()
            .map(Post::encode)
            .take_while(|post| {
                bytes += post.len();
                bytes <= max_bytes.min(MAX_BATCH_BYTES)
            })
            .collect()
    }

    /// The posts of `channel` this node kept, not older than [`HISTORY_AGE_MS`].
    fn kept(&self, channel: &str, now: u64) -> Vec<Post> {
        let Some(joined) = self.joined.get(channel) else { return Vec::new() };
        joined.history.iter().filter(|p| p.check(channel, now).is_ok()).cloned().collect()
    }

    /// The authors present in `channel` now.
    fn members(&self, channel: &str, now: u64) -> Vec<(AccountId, u64)> {
        let Some(joined) = self.joined.get(channel) else { return Vec::new() };
        let mut members: Vec<(AccountId, u64)> =
            joined.members.values().filter(|(_, until)| *until > now).cloned().collect();
        members.sort_by_cached_key(|(account, _)| account.to_string());
        members
    }

    /// Takes posts of `channel` that peers handed over: checked as gossip is; those not taken
    /// before.
    fn take_history(&mut self, channel: &str, posts: Vec<Post>, now: u64) -> Vec<Post> {
        let mut posts: Vec<Post> =
            posts.into_iter().filter(|p| p.check(channel, now).is_ok()).collect();
        posts.sort_by_key(|p| p.sent_at_ms);
        posts.into_iter().filter(|p| self.take(p.clone(), now) == Taken::New).collect()
    }
}

/// A post published.
#[derive(Clone, Debug)]
pub struct Published {
    /// The post.
    pub post: Post,
    /// The peers on the channel it was sent to: 0 when nobody else is on it yet (it is kept
    /// here, and late joiners get it with the history).
    pub peers: usize,
}

/// Publishes `body` from `author` on `channel` through `node` (which joins the channel).
pub async fn publish(
    node: &Node,
    author: &Keypair,
    channel: &str,
    body: Vec<u8>,
) -> Result<Published, ChannelError> {
    let post = Post::sign(author, channel, PostKind::Message, body, now_ms())?;
    publish_post(node, post).await
}

/// Says that `author` is in `channel` (a presence post; it counts for [`PRESENCE_TTL_MS`]).
pub async fn announce(
    node: &Node,
    author: &Keypair,
    channel: &str,
) -> Result<Published, ChannelError> {
    let post = Post::sign(author, channel, PostKind::Presence, Vec::new(), now_ms())?;
    publish_post(node, post).await
}

/// How long a publish waits for a peer on the channel, on a node that just joined it.
const PUBLISH_WAIT: Duration = Duration::from_secs(3);

async fn publish_post(node: &Node, post: Post) -> Result<Published, ChannelError> {
    // Publishing joins: this node then keeps the channel's history too. A node that just
    // joined learns who else is on the channel in a moment; a publish waits that long.
    let name = post.channel.clone();
    let peers = node
        .with_extension::<Mail, _>(move |mail, host| {
            let channels = mail.channels();
            if !channels.joined.contains_key(&name) {
                channels.join(&name, host).map(drop)?;
            }
            Ok::<_, ChannelError>(host.topic_peers(&topic(&name)?).len())
        })
        .await??;
    if peers == 0 {
        let deadline = tokio::time::Instant::now() + PUBLISH_WAIT;
        let name = topic(&post.channel)?;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let name = name.clone();
            let peers = node
                .with_extension::<Mail, _>(move |_, host| host.topic_peers(&name).len())
                .await?;
            if peers > 0 {
                break;
            }
        }
    }
    let sent = post.clone();
    let peers = node
        .with_extension::<Mail, _>(move |mail, host| mail.channels().publish(post, host))
        .await??;
    Ok(Published { post: sent, peers })
}

/// Posts of a channel as they come (after its history, when asked for).
pub struct Subscription {
    queued: VecDeque<Post>,
    live: mpsc::Receiver<Post>,
    delivered: HashSet<(String, [u8; 16])>,
}

impl Subscription {
    /// The next post: the history first, then live posts; `None` when the node stops.
    /// Presence posts come too ([`PostKind::Presence`]).
    pub async fn next(&mut self) -> Option<Post> {
        loop {
            let post = match self.queued.pop_front() {
                Some(post) => post,
                None => self.live.recv().await?,
            };
            // A post both in the history and live comes once.
            if self.delivered.len() > REPLAY_WINDOW as usize {
                self.delivered.clear();
            }
            if self.delivered.insert(post.key()) {
                return Some(post);
            }
        }
    }
}

/// Joins `channel` on `node` and hands its posts from now on; with `history`, first the
/// recent posts that peers on the channel kept (checked like gossip, oldest first).
pub async fn subscribe(
    node: &Node,
    channel: &str,
    history: bool,
) -> Result<Subscription, ChannelError> {
    let name = channel.to_owned();
    let live = node
        .with_extension::<Mail, _>(move |mail, host| mail.channels().join(&name, host))
        .await??;
    let queued = if history {
        // What this node kept of the channel, and what peers kept that it had not seen.
        let name = channel.to_owned();
        let mut posts: Vec<Post> = node
            .with_extension::<Mail, _>(move |mail, _| mail.channels().kept(&name, now_ms()))
            .await?;
        posts.extend(fetch_history(node, channel).await?);
        posts.sort_by_key(|p| p.sent_at_ms);
        posts.into()
    } else {
        VecDeque::new()
    };
    Ok(Subscription { queued, live, delivered: HashSet::new() })
}

/// Asks peers on `channel` for its history; the posts not seen here before, oldest first.
async fn fetch_history(node: &Node, channel: &str) -> Result<VecDeque<Post>, ChannelError> {
    let name = topic(channel)?;
    let peers: Vec<PeerId> = node
        .with_extension::<Mail, _>(move |_, host| host.topic_peers(&name))
        .await?
        .into_iter()
        .take(HISTORY_PEERS)
        .collect();
    let asks = peers.iter().map(|&peer| request(node, peer, Request::History(channel.to_owned())));
    let mut posts = Vec::new();
    for answer in join_all(asks).await {
        if let Ok(Response::Posts(encoded)) = answer {
            posts.extend(encoded.iter().filter_map(|bytes| Post::decode(bytes).ok()));
        }
    }
    let channel = channel.to_owned();
    let taken = node
        .with_extension::<Mail, _>(move |mail, _| {
            mail.channels().take_history(&channel, posts, now_ms())
        })
        .await?;
    Ok(taken.into())
}

/// The accounts present in `channel` (a presence post in the last [`PRESENCE_TTL_MS`]), with
/// until when. The node joins the channel if it had not, and asks peers on it for their
/// history first, so that it knows of those who announced themselves before it listened.
pub async fn members(node: &Node, channel: &str) -> Result<Vec<(AccountId, u64)>, ChannelError> {
    let name = channel.to_owned();
    node.with_extension::<Mail, _>(move |mail, host| mail.channels().join(&name, host).map(drop))
        .await??;
    fetch_history(node, channel).await?;
    let name = channel.to_owned();
    Ok(node
        .with_extension::<Mail, _>(move |mail, _| mail.channels().members(&name, now_ms()))
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn posts_are_signed_over_their_channel_and_bounded() {
        let alice = Keypair::generate(KeyType::Secp256k1);
        let post = Post::sign(&alice, "builders", PostKind::Message, b"hi".to_vec(), NOW)
            .expect("test setup");
        let decoded = Post::decode(&post.encode()).expect("test setup");
        assert_eq!(decoded, post);
        assert!(decoded.check("builders", NOW + 1000).is_ok());
        // Moved to another channel: the signature no longer holds.
        let mut pb = PostPb::decode(post.encode().as_slice()).expect("test setup");
        pb.channel = "others".into();
        assert!(matches!(Post::decode(&pb.encode_to_vec()), Err(ChannelError::BadSignature)));
        // Another channel, too old, from the future.
        assert!(matches!(decoded.check("others", NOW), Err(ChannelError::OtherChannel(_))));
        assert!(decoded.check("builders", NOW + HISTORY_AGE_MS).is_err());
        assert!(decoded.check("builders", NOW - MAX_CLOCK_SKEW_MS - 1).is_err());
        // Sizes and names.
        let big = vec![0; MAX_POST_BODY + 1];
        assert!(matches!(
            Post::sign(&alice, "builders", PostKind::Message, big.clone(), NOW),
            Err(ChannelError::TooLarge(_))
        ));
        pb.body = big;
        assert!(matches!(Post::decode(&pb.encode_to_vec()), Err(ChannelError::TooLarge(_))));
        for bad in ["", "a/b", "with space", &"x".repeat(65)] {
            assert!(matches!(topic(bad), Err(ChannelError::BadName(_))), "{bad:?}");
        }
        assert!(Post::decode(b"\xff\xff").is_err());
    }

    #[test]
    fn a_full_replay_window_leaves_new_posts_alone_and_forgets_no_id() {
        let mut channels = Channels::with_window(10, 10, 10);
        channels.joined.insert("c".into(), Joined::default());
        let alice = Keypair::generate(KeyType::Ed25519);
        let now = now_ms();
        let posts: Vec<Post> = (0..11)
            .map(|i| Post::sign(&alice, "c", PostKind::Message, vec![i], now).expect("test setup"))
            .collect();
        for post in &posts[..10] {
            assert_eq!(channels.take(post.clone(), now), Taken::New);
        }
        assert_eq!(channels.take(posts[10].clone(), now), Taken::WindowFull);
        for post in &posts[..10] {
            assert_eq!(channels.take(post.clone(), now), Taken::Replay, "still remembered");
        }
    }

    #[test]
    fn a_flood_on_one_channel_leaves_room_for_the_others() {
        let mut channels = Channels::with_window(10, 4, 4);
        let alice = Keypair::generate(KeyType::Ed25519);
        let now = now_ms();
        let post = |channel: &str, i: u8| {
            Post::sign(&alice, channel, PostKind::Message, vec![i], now).expect("test setup")
        };
        for i in 0..4 {
            assert_eq!(channels.take(post("spam", i), now), Taken::New);
        }
        assert_eq!(channels.take(post("spam", 4), now), Taken::WindowFull, "its share is full");
        for i in 0..4 {
            assert_eq!(channels.take(post("builders", i), now), Taken::New, "another's is not");
        }
        assert_eq!(channels.take(post("news", 0), now), Taken::New);
        assert_eq!(channels.take(post("news", 1), now), Taken::New);
        assert_eq!(channels.take(post("news", 2), now), Taken::WindowFull, "the whole is full");
        // As ids lapse (here: forgotten at once), their channels' counts go down with them.
        channels.seen.invalidate_all();
        channels.seen.run_pending_tasks();
        assert_eq!(channels.ids_of("spam"), 0);
        assert_eq!(channels.take(post("spam", 5), now), Taken::New);
    }

    #[test]
    fn a_flood_from_one_author_leaves_room_for_the_others() {
        let mut channels = Channels::with_window(100, 10, 3);
        let (flooder, alice) =
            (Keypair::generate(KeyType::Ed25519), Keypair::generate(KeyType::Ed25519));
        let now = now_ms();
        let post = |author: &Keypair, i: u8| {
            Post::sign(author, "c", PostKind::Message, vec![i], now).expect("test setup")
        };
        for i in 0..3 {
            assert_eq!(channels.take(post(&flooder, i), now), Taken::New);
        }
        assert_eq!(channels.take(post(&flooder, 3), now), Taken::WindowFull, "its share");
        assert_eq!(channels.take(post(&alice, 0), now), Taken::New, "another's is not full");
        // Its share comes back as its ids lapse.
        channels.seen.invalidate_all();
        channels.seen.run_pending_tasks();
        assert_eq!(channels.take(post(&flooder, 4), now), Taken::New);
        assert_eq!(channels.ids_of("c"), 1);
        let counts = channels.counts.lock().expect("not poisoned");
        assert_eq!(counts.0["c"].by_author.len(), 1, "counts of lapsed ids are forgotten");
    }

    #[test]
    fn a_presence_post_carries_no_body() {
        let alice = Keypair::generate(KeyType::Ed25519);
        let signing = Post::sign(&alice, "c", PostKind::Presence, b"x".to_vec(), NOW);
        assert!(matches!(signing, Err(ChannelError::Malformed(_))));
        let post = Post::sign(&alice, "c", PostKind::Presence, vec![], NOW).expect("test setup");
        let mut pb = PostPb::decode(post.encode().as_slice()).expect("test setup");
        pb.body = b"x".to_vec();
        assert!(matches!(Post::decode(&pb.encode_to_vec()), Err(ChannelError::Malformed(_))));
    }

    #[test]
    fn a_post_is_taken_once_and_presence_expires() {
        let mut channels = Channels::default();
        channels.joined.insert("c".into(), Joined::default());
        let alice = Keypair::generate(KeyType::Ed25519);
        let now = now_ms();
        let post =
            Post::sign(&alice, "c", PostKind::Message, b"x".to_vec(), now).expect("test setup");
        assert_eq!(channels.take(post.clone(), now), Taken::New);
        assert_eq!(channels.take(post, now), Taken::Replay);
        let here = Post::sign(&alice, "c", PostKind::Presence, vec![], now).expect("test setup");
        assert_eq!(channels.take(here, now), Taken::New);
        assert_eq!(channels.members("c", now).len(), 1);
        assert!(channels.members("c", now + PRESENCE_TTL_MS).is_empty());
        assert_eq!(channels.history("c", 1 << 20).len(), 2);
        assert_eq!(channels.history("c", 10).len(), 0, "bounded in bytes");
        // Dated ahead (within the clock skew): present from now, not from its date.
        let bob = Keypair::generate(KeyType::Ed25519);
        let ahead = now + MAX_CLOCK_SKEW_MS / 2;
        let here = Post::sign(&bob, "c", PostKind::Presence, vec![], ahead).expect("test setup");
        assert_eq!(channels.take(here, now), Taken::New);
        assert!(channels.members("c", now + PRESENCE_TTL_MS).is_empty());
    }
}
