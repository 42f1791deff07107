//! The background thread that makes a `fsync = false` file streamer's files
//! durable.
//!
//! The streamer hands every file it put in place to the syncer, which
//! fsyncs them, then the directory (or, for a backlog of many files, syncs
//! the whole file system once: [`SYNCFS_FROM`]), as soon as the streamer
//! pauses (in a node, between blocks). `on_flush` waits only for the files
//! not synced yet, usually none: the node's committing thread (which calls a sync
//! streamer's `on_flush`) no longer waits for every file of the flush
//! interval to reach the disk. While the streamer writes without pausing
//! (catching up), files wait for the pause or for `on_flush`, so syncing
//! never competes with the writes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

#[cfg(target_os = "linux")]
#[cfg(target_os = "linux")]
use crate::durable::sync_file_system;
use crate::durable::{sync_dir, sync_file};
use crate::error::Error;

/// A batch starts once no file was handed over for this long: the files
/// of a block are synced in the pause before the next one, never while the
/// streamer writes (every batch ends in a journal commit and a disk cache
/// flush, which would slow its file creation).
const QUIET: Duration = Duration::from_millis(1);

/// A batch of at least this many files is made durable with one `syncfs`
/// of the directory's file system (Linux), not an fsync per file. Each
/// fsync ends in a disk cache flush; when blocks come faster than files can
/// be synced one by one (`docs/performance.md`, "A syncer backlog is synced
/// with one `syncfs`"), the flushed cursor fell further and further behind, and the
/// change log it holds back grew with it. One `syncfs`
/// writes everything dirty on that file system (the store's pages too, when
/// it shares it) with one flush. Small batches, the usual case of a node
/// between blocks, keep the per-file fsync, which touches nothing else.
const SYNCFS_FROM: usize = 32;

/// What the streamer and the syncer thread share.
#[derive(Default)]
struct State {
    /// Files handed over and not yet taken by the thread, in order.
    pending: Vec<PathBuf>,
    /// Files handed over so far.
    queued: u64,
    /// Of those, how many the thread is done with (synced or failed).
    done: u64,
    /// The first failure not yet reported by [`Syncer::wait`].
    error: Option<Error>,
    /// The streamer is gone: sync what is pending, then end.
    stop: bool,
    /// `wait` is waiting: sync what is pending without pausing.
    waiting: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when files are handed over, and when a batch is done.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The thread holds the lock only to move counters and lists, never
        // across a system call or anything that can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A file streamer's syncer thread (see the module).
pub(crate) struct Syncer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread for the files of `dir`.
    pub(crate) fn start(dir: &Path, streamer: &str) -> Result<Syncer, Error> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            let dir = dir.to_path_buf();
            std::thread::Builder::new()
                .name(format!("file-sync-{streamer}"))
                .spawn(move || run(&shared, &dir))
        }
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            what: "cannot start the thread that syncs the files",
            source,
        })?;
        Ok(Syncer {
            shared,
            thread: Some(thread),
        })
    }

    /// Hands over `path`, a file just put in place (linked in or renamed),
    /// to be synced.
    pub(crate) fn add(&self, path: PathBuf) {
        let mut state = self.shared.lock();
        let was_idle = state.pending.is_empty();
        state.pending.push(path);
        state.queued += 1;
        drop(state);
        // With files already pending the thread is timing a pause and looks
        // at `queued` when the pause is over: waking it for every file
        // would cost a system call on the writing thread and a wake-up of
        // the other, per file.
        if was_idle {
            self.shared.changed.notify_all();
        }
    }

    /// Waits until every file handed over so far is synced, and the
    /// directory after them. Returns the first failure since the last call:
    /// then some of those files may not be durable.
    pub(crate) fn wait(&self) -> Result<(), Error> {
        let mut state = self.shared.lock();
        let target = state.queued;
        if state.done < target {
            state.waiting = true;
            self.shared.changed.notify_all();
        }
        while state.done < target && state.error.is_none() {
            state = self.shared.wait(state);
        }
        state.waiting = false;
        match state.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            // The thread only ends by returning; nothing in it panics.
            let _ = thread.join();
        }
    }
}

/// The thread: takes every pending file, syncs them and the directory,
/// reports, and again, until stopped with nothing pending. A batch starts
/// once no file was handed over for [`QUIET`], or `wait` is waiting, or the
/// streamer is gone.
fn run(shared: &Shared, dir: &Path) {
    loop {
        let (batch, upto) = {
            let mut state = shared.lock();
            loop {
                if state.pending.is_empty() {
                    if state.stop {
                        return;
                    }
                    state = shared.wait(state);
                    continue;
                }
                if state.waiting || state.stop {
                    break;
                }
                let queued = state.queued;
                let (next, timeout) = shared
                    .changed
                    .wait_timeout(state, QUIET)
                    .unwrap_or_else(PoisonError::into_inner);
                state = next;
                if timeout.timed_out() && state.queued == queued {
                    break;
                }
            }
            (std::mem::take(&mut state.pending), state.queued)
        };
        let result = sync_batch(dir, &batch);
        let mut state = shared.lock();
        state.done = upto;
        if let Err(e) = result
            && state.error.is_none()
        {
            state.error = Some(e);
        }
        drop(state);
        shared.changed.notify_all();
    }
}

/// Makes the files of `batch` (renamed or linked into `dir`) and `dir`'s
/// entries durable.
fn sync_batch(dir: &Path, batch: &[PathBuf]) -> Result<(), Error> {
    #[cfg(target_os = "linux")]
    if batch.len() >= SYNCFS_FROM {
        return sync_file_system(dir);
    }
    batch
        .iter()
        .try_for_each(|path| sync_file(path))
        .and_then(|()| sync_dir(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path, n: usize) -> Vec<PathBuf> {
        (0..n)
            .map(|i| {
                let p = dir.join(format!("f{i}"));
                std::fs::write(&p, [i as u8; 100]).unwrap();
                p
            })
            .collect()
    }

    #[test]
    fn wait_returns_once_everything_handed_over_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let syncer = Syncer::start(dir.path(), "t").unwrap();
        // Nothing handed over: nothing to wait for.
        syncer.wait().unwrap();
        for round in 1..=3u64 {
            for p in files(dir.path(), 40) {
                syncer.add(p);
            }
            syncer.wait().unwrap();
            let state = syncer.shared.lock();
            assert_eq!(state.queued, 40 * round);
            assert_eq!(
                state.done, state.queued,
                "wait returned before the thread was done"
            );
            assert!(state.pending.is_empty());
        }
    }

    #[test]
    fn a_failed_sync_is_reported_once_by_wait() {
        let dir = tempfile::tempdir().unwrap();
        let syncer = Syncer::start(dir.path(), "t").unwrap();
        let good = files(dir.path(), 3);
        let missing = dir.path().join("block-7-data");
        syncer.add(good[0].clone());
        syncer.add(missing.clone());
        syncer.add(good[1].clone());
        let err = syncer.wait().unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: cannot fsync: ", missing.display())),
            "{err}"
        );
        // Reported once; later files sync again.
        syncer.wait().unwrap();
        syncer.add(good[2].clone());
        syncer.wait().unwrap();
    }

    #[test]
    fn drop_syncs_what_is_pending_and_ends_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let syncer = Syncer::start(dir.path(), "t").unwrap();
        let shared = Arc::clone(&syncer.shared);
        for p in files(dir.path(), 50) {
            syncer.add(p);
        }
        drop(syncer);
        // Dropping joined the thread, which took every pending file first.
        let state = shared.lock();
        assert!(state.stop);
        assert!(state.pending.is_empty());
        assert_eq!(state.done, 50);
    }

    /// Small batches are synced file by file (a missing file is an error);
    /// large ones with one `syncfs` of the directory's file system, which
    /// fails only when the directory cannot be opened or synced.
    #[test]
    fn batches_sync_file_by_file_or_the_whole_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let small = files(dir.path(), SYNCFS_FROM - 2);
        sync_batch(dir.path(), &small).unwrap();
        let mut with_missing = small.clone();
        with_missing.push(dir.path().join("gone"));
        let err = sync_batch(dir.path(), &with_missing).unwrap_err();
        assert!(err.to_string().contains("gone: cannot fsync"), "{err}");

        let large = files(dir.path(), SYNCFS_FROM);
        sync_batch(dir.path(), &large).unwrap();
        let missing_dir = dir.path().join("no-such-dir");
        let err = sync_batch(&missing_dir, &large).unwrap_err().to_string();
        #[cfg(target_os = "linux")]
        assert!(
            err.contains("no-such-dir: cannot sync the file system"),
            "{err}"
        );
        #[cfg(not(target_os = "linux"))]
        assert!(err.contains("no-such-dir"), "{err}");
    }
}
