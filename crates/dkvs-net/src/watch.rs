//! Watching a key: replicas publish every record they accept on a gossipsub topic per key;
//! watchers verify each message before they deliver or forward it.

use std::pin::Pin;
use std::task::{Context, Poll};

use dkvs_record::{Key, Record};
use libp2p::gossipsub;
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

/// A stream of newer versions of one key, each verified, in increasing sequence order.
pub struct Watch {
    key: Key,
    receiver: mpsc::Receiver<Record>,
}

impl Watch {
    pub(crate) fn new(key: Key, receiver: mpsc::Receiver<Record>) -> Watch {
        Watch { key, receiver }
    }

    /// The key watched.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The next newer version; `None` once the node stops.
    pub async fn next(&mut self) -> Option<Record> {
        self.receiver.recv().await
    }
}

impl futures::Stream for Watch {
    type Item = Record;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Record>> {
        self.receiver.poll_recv(cx)
    }
}
