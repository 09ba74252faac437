//! Group commit for [`crate::Durability::Fsync`]: one thread flushes the log for every put that
//! waits, so concurrent puts share one `fdatasync`, and a caller that must not block (a network
//! event loop) appends, goes on, and acknowledges once [`crate::Store::durable`] has caught up.
//!
//! Positions count the bytes appended to the logs since the store was opened, across
//! generations: a put's record is durable once `synced` reaches the position its append ended at.
//! A compaction syncs the old log before it switches, so a flush of the current log covers all.
//!
//! A failed flush is final ("fsyncgate": after a failed `fsync` the kernel may have dropped the
//! dirty pages and a retry can report success): the log refuses further appends, waiters get the
//! error, and the store serves reads only. Writes that were appended but never acknowledged may or
//! may not be on disk after a crash; nothing acknowledged depends on them.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};

use crate::StoreError;
use crate::persist::Log;

type Listener = Box<dyn Fn() + Send + Sync>;

pub(crate) struct Syncer {
    /// Where the log ends; set under the log's lock, before `wake` is signalled.
    written: AtomicU64,
    state: Mutex<State>,
    /// Signals the sync thread that something was written (or that the store closed).
    wake: Condvar,
    /// Signals waiting puts that `synced` moved (or that a flush failed).
    done: Condvar,
    listeners: Mutex<Vec<Listener>>,
}

#[derive(Default)]
struct State {
    synced: u64,
    syncs: u64,
    failed: Option<(PathBuf, io::ErrorKind, String)>,
    closed: bool,
    /// Flushes wait while held ([`crate::Store::hold_syncs`]).
    held: bool,
    /// A flush is under way.
    flushing: bool,
}

impl Syncer {
    /// Starts the sync thread of `log`, whose appends so far (`written`) are already durable.
    pub(crate) fn start(log: Arc<Mutex<Log>>, written: u64) -> io::Result<Arc<Syncer>> {
        let syncer = Arc::new(Syncer {
            written: AtomicU64::new(written),
            state: Mutex::new(State { synced: written, ..State::default() }),
            wake: Condvar::new(),
            done: Condvar::new(),
            listeners: Mutex::new(Vec::new()),
        });
        let thread = Arc::clone(&syncer);
        std::thread::Builder::new().name("dkvs-sync".into()).spawn(move || thread.run(&log))?;
        Ok(syncer)
    }

    /// Called with the log's lock held, after an append that ended at `position`.
    pub(crate) fn appended(&self, position: u64) {
        self.written.store(position, Ordering::Release);
        let _state = self.state.lock();
        self.wake.notify_one();
    }

    /// Blocks until everything up to `position` is flushed; the log and the error if a flush
    /// failed.
    pub(crate) fn wait(&self, position: u64) -> Result<(), (PathBuf, io::Error)> {
        let mut state = self.state.lock();
        loop {
            if let Some((path, kind, message)) = &state.failed {
                return Err((path.clone(), io::Error::new(*kind, message.clone())));
            }
            if state.synced >= position {
                return Ok(());
            }
            self.done.wait(&mut state);
        }
    }

    pub(crate) fn synced(&self) -> Result<u64, StoreError> {
        let state = self.state.lock();
        match &state.failed {
            Some(failed) => Err(error(failed)),
            None => Ok(state.synced),
        }
    }

    pub(crate) fn syncs(&self) -> u64 {
        self.state.lock().syncs
    }

    pub(crate) fn listen(&self, listener: Listener) {
        self.listeners.lock().push(listener);
    }

    /// Holds flushes until the returned guard drops; a flush under way is finished first.
    pub(crate) fn hold(self: &Arc<Syncer>) -> SyncHold {
        let mut state = self.state.lock();
        state.held = true;
        while state.flushing {
            self.done.wait(&mut state);
        }
        SyncHold { syncer: Arc::clone(self) }
    }

    /// Records a flush that failed outside the sync thread (a compaction's).
    pub(crate) fn fail(&self, path: PathBuf, e: &io::Error) {
        let mut state = self.state.lock();
        state.failed.get_or_insert_with(|| (path, e.kind(), e.to_string()));
        self.done.notify_all();
        drop(state);
        self.notify_listeners();
    }

    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.wake.notify_one();
    }

    fn run(&self, log: &Mutex<Log>) {
        loop {
            {
                let mut state = self.state.lock();
                while state.held
                    || (!state.closed
                        && state.failed.is_none()
                        && self.written.load(Ordering::Acquire) <= state.synced)
                {
                    self.wake.wait(&mut state);
                }
                if state.failed.is_some()
                    || (state.closed && self.written.load(Ordering::Acquire) <= state.synced)
                {
                    return;
                }
                state.flushing = true;
            }
            // Everything appended up to `target` is in `file` or in an older log that the
            // compaction which retired it has synced.
            let (file, path, target) = {
                let log = log.lock();
                (log.file(), log.path.clone(), log.written)
            };
            let flushed = file.sync_data();
            if flushed.is_err() {
                // Before the state's lock: appends take the log's lock, then the state's.
                log.lock().break_off();
            }
            let mut state = self.state.lock();
            match flushed {
                Ok(()) => {
                    state.synced = state.synced.max(target);
                    state.syncs += 1;
                }
                Err(e) => {
                    tracing::error!(log = %path.display(), error = %e, "log flush failed; the store refuses writes");
                    state.failed = Some((path, e.kind(), e.to_string()));
                }
            }
            state.flushing = false;
            self.done.notify_all();
            drop(state);
            self.notify_listeners();
        }
    }

    fn notify_listeners(&self) {
        for listener in self.listeners.lock().iter() {
            listener();
        }
    }
}

fn error((path, kind, message): &(PathBuf, io::ErrorKind, String)) -> StoreError {
    StoreError::Io { path: path.clone(), source: io::Error::new(*kind, message.clone()) }
}

/// Holds the flushes of a store's log while it lives; see [`crate::Store::hold_syncs`].
#[must_use = "flushes resume when the hold is dropped"]
pub struct SyncHold {
    syncer: Arc<Syncer>,
}

impl Drop for SyncHold {
    fn drop(&mut self) {
        self.syncer.state.lock().held = false;
        self.syncer.wake.notify_one();
    }
}
