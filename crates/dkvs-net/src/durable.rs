//! Answers that say a record is held wait until the store can keep that promise.
//!
//! With `Durability::Fsync` (the node's `fsync = true`), a put is acknowledged only once the log
//! is flushed: a replica's "stored" and the writer's own copy in its receipt. The event loop
//! does not flush: its store handle does not wait ([`Store::without_waiting_for_sync`]); the
//! store's sync thread flushes for every put written meanwhile (group commit), and the answers
//! queued here go out when it is done. Gets, and everything else, are answered meanwhile. With
//! the default durability (write-through) a put is durable when the store returns, and nothing
//! waits here.
//!
//! A record is readable (and gossiped) a moment before it is durable; it is *promised* only
//! once durable, which is what "nothing acknowledged is ever lost" asks.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::lane::ResponseChannel;
use dkvs_store::Store;
use tokio::sync::{Notify, oneshot};

use crate::codec::pb;
use crate::{PutError, PutReceipt};

/// An answer that promises a record is held.
pub(crate) enum Promise {
    /// A replica's answer to a peer's put.
    Response(ResponseChannel, pb::Response),
    /// A writer's receipt, which counts this node's own copy.
    Receipt(oneshot::Sender<Result<PutReceipt, PutError>>, Result<PutReceipt, PutError>),
}

/// At most this many promises wait: each holds a put's answer (a few bytes) and its channel.
/// More means the disk is far behind; further answers say so instead of waiting.
const MAX_WAITING: usize = 8192;

/// Promises waiting for the log to be durable up to their position, in order.
pub(crate) struct Durable {
    waiting: VecDeque<(u64, Promise)>,
    /// Signalled by the store's sync thread after each flush.
    pub(crate) flushed: Arc<Notify>,
}

impl Durable {
    /// Hears of `store`'s flushes.
    pub(crate) fn new(store: &Store) -> Durable {
        let flushed = Arc::new(Notify::new());
        let signal = Arc::clone(&flushed);
        store.on_durable(move || signal.notify_one());
        Durable { waiting: VecDeque::new(), flushed }
    }

    pub(crate) fn is_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Keeps `promise` until everything `store` has written so far is durable; returns it at
    /// once when nothing is in the way, and broken (with why) when the store can no longer
    /// flush or too many promises wait already (the disk is far behind).
    pub(crate) fn hold(
        &mut self,
        store: &Store,
        promise: Promise,
    ) -> Option<(Promise, Option<String>)> {
        let written = store.written();
        if store.durable() >= written {
            return Some((promise, None));
        }
        if let Some(failure) = store.flush_failure() {
            return Some((promise, Some(failure.to_string())));
        }
        if self.waiting.len() >= MAX_WAITING {
            return Some((promise, Some("this node's disk is far behind its writes".into())));
        }
        self.waiting.push_back((written, promise));
        None
    }

    /// The promises that can be kept now (durable), or must be broken (the flush that was to
    /// cover them failed, with why).
    pub(crate) fn ready(&mut self, store: &Store) -> Vec<(Promise, Option<String>)> {
        let durable = store.durable();
        let failure = store.flush_failure().map(|e| e.to_string());
        let mut ready = Vec::new();
        while let Some(&(position, _)) = self.waiting.front() {
            let broken = match &failure {
                _ if durable >= position => None,
                Some(why) => Some(why.clone()),
                None => break,
            };
            if let Some((_, promise)) = self.waiting.pop_front() {
                ready.push((promise, broken));
            }
        }
        ready
    }
}
