//! Watching a key: replicas publish every record they accept on a gossipsub topic per key;
//! watchers verify each message before they deliver or forward it.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::task::{Context, Poll};

use dkvs_record::{Key, Record};
use libp2p::{PeerId, gossipsub};
use tokio::sync::mpsc;

/// Every watch topic starts with this; no extension may use it.
pub(crate) const TOPIC_PREFIX: &str = "/dkvs/watch/";

/// The gossipsub topic of a key's updates.
pub(crate) fn topic_of(key: &Key) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(watch_topic(key))
}

/// The name of the gossipsub topic on which replicas publish `key`'s updates, part of the wire
/// protocol: `/dkvs/watch/1/<account>/<name>` (`/dkvs/watch/1` and the key). The key is public
/// anyway.
pub fn watch_topic(key: &Key) -> String {
    format!("{TOPIC_PREFIX}1{key}")
}

/// The key (its string form) whose watch topic is `topic`, if it is one.
pub(crate) fn key_of_topic(topic: &str) -> Option<&str> {
    topic.strip_prefix(TOPIC_PREFIX)?.strip_prefix('1')
}

/// At most `most` peers from `lists` (each nearest first), taken in turns: every list's
/// first, then every list's second, and so on, so that one list cannot take every place.
pub(crate) fn fair_share(lists: &[&[PeerId]], most: usize) -> HashSet<PeerId> {
    let mut chosen = HashSet::new();
    let longest = lists.iter().map(|l| l.len()).max().unwrap_or(0);
    for i in 0..longest {
        for peer in lists.iter().filter_map(|l| l.get(i)) {
            if chosen.len() >= most {
                return chosen;
            }
            chosen.insert(*peer);
        }
    }
    chosen
}

/// A stream of newer versions of one key, each verified, in increasing sequence order.
pub struct Watch {
    key: Key,
    receiver: mpsc::Receiver<Record>,
    /// The newest sequence handed out or begun from: what comes is newer.
    after: u64,
    /// Where the watch began ([`Watch::start_seq`]).
    start: u64,
    /// The version it began at, when this node had it ([`Watch::start`]).
    start_record: Option<Record>,
}

impl Watch {
    pub(crate) fn new(key: Key, receiver: mpsc::Receiver<Record>, after: u64) -> Watch {
        Watch { key, receiver, after, start: after, start_record: None }
    }

    /// The key watched.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The sequence the watch began from: the newest version its first read of the key found,
    /// or this node held when it began, or its other watchers of the key were handed (0 for
    /// none). Every version it delivers is newer.
    pub fn start_seq(&self) -> u64 {
        self.start
    }

    /// The version the watch began from ([`Watch::start_seq`]): the key's value as a read
    /// would have given it then, a tombstone if it was deleted; `None` when there was none,
    /// when it expired, or (rarely) when this node neither held it nor handed it to a watcher
    /// by the time the read ended. Reading it here, rather than with a get before the watch,
    /// misses no version in between.
    pub fn start(&self) -> Option<&Record> {
        self.start_record.as_ref()
    }

    /// The watch's first read found `found`, and this node held `held` then (called once,
    /// before the watch is handed out, at `now_ms`): versions up to the newer are where it
    /// begins, not news. Its start record is the one of that sequence that the key's other
    /// watchers were last handed (all of them get one record of a sequence, even of a fork
    /// that a store with no room for the key could not tell), else the one held, else the one
    /// found; never an expired one.
    pub(crate) fn begin_at(&mut self, found: Option<Record>, held: Option<Record>, now_ms: u64) {
        self.after = self.after.max(found.as_ref().map_or(0, Record::seq));
        self.start = self.after;
        let start = self.start;
        let handed = self.start_record.take();
        self.start_record = [handed, held, found]
            .into_iter()
            .flatten()
            .find(|r| r.seq() == start && r.expires_at_ms() > now_ms);
    }

    /// The next newer version; `None` once the node stops.
    pub async fn next(&mut self) -> Option<Record> {
        std::future::poll_fn(|cx| self.poll_newer(cx)).await
    }

    /// Records that came while the first read was under way may be at or below where the
    /// watch began: those are skipped.
    fn poll_newer(&mut self, cx: &mut Context<'_>) -> Poll<Option<Record>> {
        loop {
            match self.receiver.poll_recv(cx) {
                Poll::Ready(Some(record)) if record.seq() <= self.after => continue,
                Poll::Ready(Some(record)) => {
                    self.after = record.seq();
                    return Poll::Ready(Some(record));
                }
                other => return other,
            }
        }
    }
}

impl futures::Stream for Watch {
    type Item = Record;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Record>> {
        self.poll_newer(cx)
    }
}

/// This node's watches, by topic: the key, the watchers' channels, and the newest version
/// delivered (versions at or below it are old news).
#[derive(Default)]
pub(crate) struct Watches {
    by_topic: HashMap<gossipsub::TopicHash, (Key, Vec<mpsc::Sender<Record>>, Delivered)>,
}

/// The newest version a key's watchers were handed: its sequence (0 for none), and the record.
#[derive(Default)]
struct Delivered {
    seq: u64,
    record: Option<Record>,
}

impl Watches {
    /// A new watcher of `key`, whose versions above `baseline` (what this node holds) are news.
    /// True when the key was not watched yet (its topic is to be subscribed).
    pub(crate) fn add(&mut self, key: Key, baseline: u64) -> (Watch, bool) {
        let (tx, rx) = mpsc::channel(64);
        let topic = topic_of(&key).hash();
        let new = !self.by_topic.contains_key(&topic);
        let (_, senders, last) = self.by_topic.entry(topic).or_insert_with(|| {
            (key.clone(), Vec::new(), Delivered { seq: baseline, record: None })
        });
        senders.push(tx);
        // Of a key watched already, what the others got is no news to this watcher either
        // (nor what this node holds, that watchers behind did not take yet).
        let mut watch = Watch::new(key, rx, last.seq.max(baseline));
        watch.start_record = last.record.clone().filter(|r| r.seq() == watch.start);
        (watch, new)
    }

    /// The key watched on `topic` and the newest sequence delivered, if it is a watch topic.
    pub(crate) fn watched(&self, topic: &gossipsub::TopicHash) -> Option<(Key, u64)> {
        self.by_topic.get(topic).map(|(key, _, last)| (key.clone(), last.seq))
    }

    /// Hands a verified record to the watchers of its key, if it is newer than what they got.
    /// A watcher that is behind (its channel full) gets a later version from the next
    /// publisher.
    pub(crate) fn deliver(&mut self, record: &Record) {
        let topic = topic_of(record.key()).hash();
        if let Some((_, senders, last)) = self.by_topic.get_mut(&topic)
            && record.seq() > last.seq
        {
            senders.retain(|s| !s.is_closed());
            let mut delivered = false;
            for sender in senders.iter() {
                delivered |= sender.try_send(record.clone()).is_ok();
            }
            if delivered {
                *last = Delivered { seq: record.seq(), record: Some(record.clone()) };
            }
        }
    }

    /// Whether `key` is watched.
    pub(crate) fn is_watched(&self, key: &Key) -> bool {
        self.by_topic.contains_key(&topic_of(key).hash())
    }

    /// Forgets the watches whose watchers are all gone; returns their topics, to unsubscribe.
    pub(crate) fn drop_closed(&mut self) -> Vec<gossipsub::IdentTopic> {
        let mut unwatched = Vec::new();
        self.by_topic.retain(|_, (key, senders, _)| {
            senders.retain(|s| !s.is_closed());
            if senders.is_empty() {
                unwatched.push(topic_of(key));
            }
            !senders.is_empty()
        });
        unwatched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dkvs_account::{KeyType, Keypair};
    use dkvs_record::Draft;

    #[test]
    fn every_watch_keeps_its_nearest_replicas_before_any_keeps_more() {
        let peers: Vec<PeerId> = (0..8).map(|_| PeerId::random()).collect();
        let (one, two) = (&peers[..5], &peers[5..]);
        let kept = fair_share(&[one, two], 4);
        assert_eq!(kept, HashSet::from([one[0], one[1], two[0], two[1]]));
        let shared = fair_share(&[one, &one[..2]], 3);
        assert_eq!(shared, HashSet::from([one[0], one[1], one[2]]), "a peer counts once");
        assert_eq!(fair_share(&[one, two], 100).len(), 8);
        assert!(fair_share(&[], 4).is_empty());
    }

    #[test]
    fn a_watch_topic_names_its_key() {
        let alice = Keypair::generate(KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        assert_eq!(key_of_topic(&watch_topic(&key)), Some(key.as_str()));
        assert_eq!(key_of_topic("/dkvs/chan/1/x"), None);
    }

    /// A key, and its owner's version at a sequence.
    fn versions() -> (Key, impl Fn(u64) -> Record) {
        let alice = Keypair::generate(KeyType::Ed25519);
        let key = Key::scoped(&alice.account_id(), "k").expect("key");
        let of = key.clone();
        (key, move |seq| Draft::new(of.clone(), vec![1], seq, 60_000).sign(&alice).expect("signed"))
    }

    #[test]
    fn watchers_get_each_newer_version_once_and_closed_watches_go() {
        let (key, version) = versions();
        let mut watches = Watches::default();
        let (mut first, new) = watches.add(key.clone(), 2);
        assert!(new, "the topic is to be subscribed");
        let (second, again) = watches.add(key.clone(), 2);
        assert!(!again, "one subscription per key");
        // At or below what this node held when the watch began: old news.
        watches.deliver(&version(2));
        watches.deliver(&version(3));
        watches.deliver(&version(3));
        assert_eq!(watches.watched(&topic_of(&key).hash()).map(|(_, last)| last), Some(3));
        assert_eq!(first.receiver.try_recv().map(|r| r.seq()).ok(), Some(3));
        assert!(first.receiver.try_recv().is_err(), "each version once");
        drop((first, second));
        assert_eq!(watches.drop_closed().len(), 1);
        assert!(watches.watched(&topic_of(&key).hash()).is_none());
    }

    #[test]
    fn a_watch_begins_where_its_first_read_ended() {
        use futures::FutureExt as _;
        let (key, version) = versions();
        let mut watches = Watches::default();
        let (mut watch, _) = watches.add(key.clone(), 0);
        assert_eq!(watch.start_seq(), 0, "this node held nothing");
        // While the first read is under way, versions 2 and 3 come by gossip; the read ends
        // at 2 (written before the watch was handed out): 3 alone is news.
        watches.deliver(&version(2));
        watches.deliver(&version(3));
        watch.begin_at(Some(version(2)), None, 0);
        assert_eq!(watch.start_seq(), 2);
        assert_eq!(watch.start().map(Record::seq), Some(2), "the version it began at");
        assert_eq!(watch.next().now_or_never().flatten().map(|r| r.seq()), Some(3));
        assert!(watch.next().now_or_never().is_none(), "nothing more");
        // A second watcher of the key begins at least where the first one is, and where this
        // node's store is.
        let (mut late, new) = watches.add(key.clone(), 0);
        assert!(!new);
        assert_eq!(late.start_seq(), 3);
        // Its read found 2, and this node holds no version (its store had no room): it began
        // at 3, the version the first watcher was handed, which it has.
        late.begin_at(Some(version(2)), None, 0);
        assert_eq!((late.start_seq(), late.start().map(Record::seq)), (3, Some(3)));
        // Once that version expired, it is no start (a read would not give it).
        let (mut after_expiry, _) = watches.add(key.clone(), 0);
        after_expiry.begin_at(None, None, u64::MAX);
        assert_eq!((after_expiry.start_seq(), after_expiry.start()), (3, None));
        assert_eq!(watches.add(key.clone(), 5).0.start_seq(), 5);
    }
}
