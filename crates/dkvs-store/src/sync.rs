//! Group commit for [`crate::Durability::Fsync`]: one thread flushes the log for every put that
//! waits, so concurrent puts share one `fdatasync`, and a caller that must not block (a network
//! event loop) appends, goes on, and acknowledges once [`crate::Store::durable`] has caught up.
//!
//! With [`crate::Durability::WriteThrough`] the same thread flushes lazily: at most once every
//! [`LAZY_FLUSH`] while puts come (sooner when [`crate::Store::flush`] asks), and no put waits.
//! Nothing is promised by it; it lets the log's marks say how far it was flushed
//! (`crate::persist`), so that damage a flush covered is told from a power cut's tear.
//!
//! Positions count the bytes appended to the logs since the store was opened, across
//! generations: a put's record is durable once `synced` reaches the position its append ended at.
//! Every flush of the log goes through this thread: a compaction that retires a log leaves its
//! file to the next flush, which syncs the retired files and the current one before it moves
//! `synced`, and [`crate::Store::flush`] waits for a flush instead of making its own.
//!
//! A failed flush is final ("fsyncgate": after a failed `fsync` the kernel may have dropped the
//! dirty pages, and a later flush of the same file can report success). The log refuses further
//! appends (also across compactions), waiters whose bytes the failed flush was to cover get the
//! error, and the store serves reads only. Writes that were appended but never acknowledged may
//! or may not be on disk after a crash; nothing acknowledged depends on them.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::StoreError;
use crate::persist::Log;

type Listener = Box<dyn Fn() + Send + Sync>;

/// How often a write-through store's log is flushed at most, while puts come: the kernel's
/// own writeback wakes every 5 s too.
pub(crate) const LAZY_FLUSH: Duration = Duration::from_secs(5);

pub(crate) struct Syncer {
    /// Where the log ends; set under the log's lock, before `wake` is signalled.
    written: AtomicU64,
    state: Mutex<State>,
    /// Signals the sync thread that something was written (or that the store closed).
    wake: Condvar,
    /// Signals waiting puts that `synced` moved (or that a flush failed).
    done: Condvar,
    listeners: Mutex<Vec<Listener>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Flushes wait this long after the last one unless a waiter asks (write-through).
    lazy: Option<Duration>,
}

#[derive(Default)]
struct State {
    synced: u64,
    syncs: u64,
    failed: Option<(PathBuf, io::ErrorKind, String)>,
    closed: bool,
    /// Flushes wait while held ([`crate::Store::hold_syncs`]), unless the store closes.
    held: u32,
    /// A flush is under way.
    flushing: bool,
    /// The next flush fails ([`crate::Store::fail_next_flush`]).
    fail_next: bool,
    /// The furthest position a waiter waits for (a lazy flush does not wait then).
    wanted: u64,
}

impl Syncer {
    /// Starts the sync thread of `log`, whose appends so far (`written`) are already durable;
    /// with `lazy`, flushes are at least that far apart unless a waiter asks.
    pub(crate) fn start(
        log: Arc<Mutex<Log>>,
        written: u64,
        lazy: Option<Duration>,
    ) -> io::Result<Arc<Syncer>> {
        let syncer = Arc::new(Syncer {
            written: AtomicU64::new(written),
            state: Mutex::new(State { synced: written, ..State::default() }),
            wake: Condvar::new(),
            done: Condvar::new(),
            listeners: Mutex::new(Vec::new()),
            thread: Mutex::new(None),
            lazy,
        });
        let thread = Arc::clone(&syncer);
        let handle =
            std::thread::Builder::new().name("dkvs-sync".into()).spawn(move || thread.run(&log))?;
        *syncer.thread.lock() = Some(handle);
        Ok(syncer)
    }

    /// Called with the log's lock held, after an append that ended at `position`.
    pub(crate) fn appended(&self, position: u64) {
        let before = self.written.swap(position, Ordering::AcqRel);
        let state = self.state.lock();
        // A lazy thread that knows of bytes to flush already flushes them when due: it is not
        // woken at every put.
        if self.lazy.is_none() || before <= state.synced {
            self.wake.notify_one();
        }
    }

    /// Blocks until everything up to `position` is flushed; the log and the error if the flush
    /// that was to cover it failed.
    pub(crate) fn wait(&self, position: u64) -> Result<(), (PathBuf, io::Error)> {
        let mut state = self.state.lock();
        if position > state.wanted {
            state.wanted = position;
            self.wake.notify_one();
        }
        loop {
            // What an earlier flush covered stays promised after a later one failed.
            if state.synced >= position {
                return Ok(());
            }
            if let Some(failed) = &state.failed {
                let (path, source) = parts(failed);
                return Err((path, source));
            }
            self.done.wait(&mut state);
        }
    }

    /// How far the log is flushed; it stays where it was when a flush fails.
    pub(crate) fn synced(&self) -> u64 {
        self.state.lock().synced
    }

    /// Why the log can no longer be flushed, once a flush failed.
    pub(crate) fn failure(&self) -> Option<StoreError> {
        let state = self.state.lock();
        state.failed.as_ref().map(|failed| {
            let (path, source) = parts(failed);
            StoreError::Io { path, source }
        })
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
        state.held += 1;
        while state.flushing {
            self.done.wait(&mut state);
        }
        SyncHold { syncer: Arc::clone(self) }
    }

    pub(crate) fn fail_next(&self) {
        self.state.lock().fail_next = true;
    }

    /// Whether the bytes written so far are all flushed (and nothing failed).
    pub(crate) fn caught_up(&self, written: u64) -> bool {
        let state = self.state.lock();
        state.failed.is_none() && state.synced >= written
    }

    /// Ends the sync thread once it has flushed what is written, and waits for it: the
    /// directory is free when the store is gone.
    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.wake.notify_one();
        let thread = self.thread.lock().take();
        // A listener that dropped the last handle of its store runs on the sync thread itself.
        if let Some(thread) = thread.filter(|t| t.thread().id() != std::thread::current().id()) {
            let _ = thread.join();
        }
    }

    fn run(&self, log: &Mutex<Log>) {
        // If this thread dies (a listener panicked), nothing would flush again: every waiter
        // is told instead of waiting forever.
        let _failing = FailOnUnwind(self);
        let mut last_flush = Instant::now();
        loop {
            let fail = {
                let mut state = self.state.lock();
                loop {
                    if (state.held > 0 && !state.closed)
                        || (!state.closed
                            && state.failed.is_none()
                            && self.written.load(Ordering::Acquire) <= state.synced)
                    {
                        self.wake.wait(&mut state);
                        continue;
                    }
                    // A lazy flush waits for its time, unless the store closes, a waiter
                    // asks, or nothing will be flushed again.
                    let due = self.lazy.map(|every| last_flush + every);
                    match due {
                        Some(due)
                            if !state.closed
                                && state.failed.is_none()
                                && state.wanted <= state.synced
                                && Instant::now() < due =>
                        {
                            self.wake.wait_until(&mut state, due);
                        }
                        _ => break,
                    }
                }
                if state.failed.is_some()
                    || (state.closed && self.written.load(Ordering::Acquire) <= state.synced)
                {
                    return;
                }
                state.flushing = true;
                std::mem::take(&mut state.fail_next)
            };
            // Everything appended up to `target` is in the current file or in a retired one.
            let (files, path, target) = {
                let mut log = log.lock();
                let mut files = log.take_retired();
                files.push(log.file());
                (files, log.path.clone(), log.written)
            };
            let flushed = if fail {
                Err(io::Error::other("flush failed (injected)"))
            } else {
                files.iter().try_for_each(|file| file.sync_data())
            };
            last_flush = Instant::now();
            // Before the state's lock: appends take the log's lock, then the state's.
            match &flushed {
                Ok(()) => log.lock().note_flushed(target),
                Err(e) => log.lock().break_off(format!("a flush failed ({e})")),
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
            for listener in self.listeners.lock().iter() {
                listener();
            }
        }
    }
}

struct FailOnUnwind<'a>(&'a Syncer);

impl Drop for FailOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut state = self.0.state.lock();
            state.failed.get_or_insert_with(|| {
                (PathBuf::new(), io::ErrorKind::Other, "the sync thread panicked".into())
            });
            state.flushing = false;
            self.0.done.notify_all();
        }
    }
}

fn parts((path, kind, message): &(PathBuf, io::ErrorKind, String)) -> (PathBuf, io::Error) {
    (path.clone(), io::Error::new(*kind, message.clone()))
}

/// Holds the flushes of a store's log while it lives; see [`crate::Store::hold_syncs`].
#[must_use = "flushes resume when the hold is dropped"]
pub struct SyncHold {
    syncer: Arc<Syncer>,
}

impl Drop for SyncHold {
    fn drop(&mut self) {
        self.syncer.state.lock().held -= 1;
        self.syncer.wake.notify_one();
    }
}
