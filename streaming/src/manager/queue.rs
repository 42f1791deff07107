//! The queue from the commit to an async streamer's thread: bounded, never
//! blocking the commit, and waited on without spinning.
//!
//! crossbeam's blocking receive spins and yields the CPU several times
//! before it parks; with one block every few milliseconds that is a few
//! context switches per block on every streamer's thread, each costing
//! the node CPU for nothing. Here the thread sleeps on a condition
//! variable, and the commit wakes it only when it is asleep.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use statestream_core::Block;

/// Why [`QueueSender::try_send`] did not queue the block.
#[derive(Debug)]
pub(super) enum SendError {
    /// The queue holds its capacity of blocks.
    Full,
    /// The streamer's thread ended.
    Disconnected,
}

/// Why [`QueueReceiver::recv_timeout`] returned no block.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RecvError {
    /// Nothing came within the timeout.
    Timeout,
    /// The queue is empty and the commit side is gone (closing).
    Disconnected,
}

struct State {
    blocks: VecDeque<Block>,
    capacity: usize,
    /// The streamer's thread waits on `ready`.
    waiting: bool,
    sender_gone: bool,
    receiver_gone: bool,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent queue (no
        // code under it panics between two changes of the state).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The commit's side.
pub(super) struct QueueSender(Arc<Shared>);

/// The streamer thread's side.
pub(super) struct QueueReceiver(Arc<Shared>);

/// A queue of at most `capacity` blocks (at least one).
pub(super) fn bounded(capacity: usize) -> (QueueSender, QueueReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            blocks: VecDeque::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
            waiting: false,
            sender_gone: false,
            receiver_gone: false,
        }),
        ready: Condvar::new(),
    });
    (QueueSender(Arc::clone(&shared)), QueueReceiver(shared))
}

impl QueueSender {
    /// Queues `block` unless the queue is full or the thread ended; wakes
    /// the thread if it sleeps. Returns the blocks now queued (one lock on
    /// the commit path, not two).
    pub(super) fn try_send(&self, block: Block) -> Result<usize, SendError> {
        let mut state = self.0.lock();
        if state.receiver_gone {
            return Err(SendError::Disconnected);
        }
        if state.blocks.len() >= state.capacity {
            return Err(SendError::Full);
        }
        state.blocks.push_back(block);
        let (wake, queued) = (state.waiting, state.blocks.len());
        drop(state);
        if wake {
            self.0.ready.notify_one();
        }
        Ok(queued)
    }

    /// Blocks queued.
    pub(super) fn len(&self) -> usize {
        self.0.lock().blocks.len()
    }
}

impl Drop for QueueSender {
    fn drop(&mut self) {
        self.0.lock().sender_gone = true;
        self.0.ready.notify_one();
    }
}

impl QueueReceiver {
    /// The next block and the blocks still queued behind it, waiting at
    /// most `timeout`; once the commit side is gone, the blocks still
    /// queued and then [`RecvError::Disconnected`].
    pub(super) fn recv_timeout(&self, timeout: Duration) -> Result<(Block, usize), RecvError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.0.lock();
        loop {
            if let Some(block) = state.blocks.pop_front() {
                return Ok((block, state.blocks.len()));
            }
            if state.sender_gone {
                return Err(RecvError::Disconnected);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RecvError::Timeout);
            }
            state.waiting = true;
            let (next, _) = self
                .0
                .ready
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner());
            state = next;
            state.waiting = false;
        }
    }

    /// Blocks queued.
    pub(super) fn len(&self) -> usize {
        self.0.lock().blocks.len()
    }
}

impl Drop for QueueReceiver {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.receiver_gone = true;
        state.blocks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use statestream_core::{BlockMeta, ChangeSet, StoreKey, StoreSelection};

    fn block(height: u64) -> Block {
        let stores = [StoreKey::new("s").unwrap()];
        let changes = vec![statestream_core::StoreChanges::new(stores[0].clone())];
        let cs = ChangeSet::seal(height, Vec::new(), changes, &[Default::default()]);
        Block::new(
            Arc::new(cs),
            Arc::new(BlockMeta::default()),
            &StoreSelection::all(&stores),
        )
    }

    #[test]
    fn bounded_in_order_and_drained_after_the_sender_goes() {
        let (tx, rx) = bounded(2);
        assert_eq!(tx.try_send(block(1)).unwrap(), 1);
        assert_eq!(tx.try_send(block(2)).unwrap(), 2);
        assert!(matches!(tx.try_send(block(3)), Err(SendError::Full)));
        assert_eq!((tx.len(), rx.len()), (2, 2));
        let (first, behind) = rx.recv_timeout(Duration::ZERO).unwrap();
        assert_eq!((first.height(), behind), (1, 1));
        let short = Duration::from_millis(5);
        drop(tx);
        assert_eq!(rx.recv_timeout(short).unwrap().0.height(), 2);
        assert_eq!(rx.recv_timeout(short).unwrap_err(), RecvError::Disconnected);
    }

    #[test]
    fn a_sleeping_receiver_is_woken_and_an_idle_one_times_out() {
        let (tx, rx) = bounded(4);
        let started = Instant::now();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(20)).unwrap_err(),
            RecvError::Timeout
        );
        assert!(started.elapsed() >= Duration::from_millis(20));
        let thread = std::thread::spawn(move || rx.recv_timeout(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(20));
        tx.try_send(block(7)).unwrap();
        let (got, _) = thread.join().unwrap().expect("woken with the block");
        assert_eq!(got.height(), 7);
    }

    #[test]
    fn a_gone_receiver_refuses_blocks() {
        let (tx, rx) = bounded(4);
        drop(rx);
        assert!(matches!(
            tx.try_send(block(1)),
            Err(SendError::Disconnected)
        ));
    }
}
