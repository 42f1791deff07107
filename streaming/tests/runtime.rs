//! Streamers added and removed while the manager runs (`RuntimeHandle`):
//! their own cursors, catch-up from the change log, pruning that honours
//! them, stop and resume across a restart, removal with the cursor.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use statestream::store::{KvStore, MultiStore, StoreKey};
use statestream::{
    Block, BlockMeta, Delivery, DeliveryManager, Error, Shutdown, StartAt, StreamError, Streamer,
    StreamerSetup,
};
use statestream_test_support::wait_for;

/// Records the heights it is given; fails every block while `hold` is set
/// (so its cursor stays put).
#[derive(Clone, Default)]
struct Recorder {
    heights: Arc<Mutex<Vec<u64>>>,
    hold: Arc<AtomicBool>,
}

impl Recorder {
    fn heights(&self) -> Vec<u64> {
        self.heights.lock().expect("lock").clone()
    }
}

impl Streamer for Recorder {
    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        if self.hold.load(Ordering::Acquire) {
            return Err(StreamError::msg("held back by the test"));
        }
        self.heights.lock().expect("lock").push(block.height());
        Ok(())
    }
}

fn bank() -> StoreKey {
    StoreKey::new("bank").expect("store name")
}

fn open(path: &Path) -> MultiStore {
    MultiStore::open(path, &[bank()], Default::default()).expect("open store")
}

fn commit(manager: &mut DeliveryManager, store: &mut MultiStore, n: u64) {
    for _ in 0..n {
        let h = store.version() + 1;
        store
            .set(&bank(), format!("k{h}").as_bytes(), b"v")
            .expect("set");
        manager.commit(store, BlockMeta::default()).expect("commit");
    }
}

fn setup(name: &str) -> StreamerSetup {
    StreamerSetup::new(name, &[bank()]).stop_node_on_error(false)
}

fn add(manager: &DeliveryManager, name: &str, start: StartAt) -> Recorder {
    let r = Recorder::default();
    manager
        .runtime()
        .add(setup(name), Box::new(r.clone()), Shutdown::new(), start)
        .expect("add");
    r
}

fn range(a: u64, b: u64) -> Vec<u64> {
    (a..=b).collect()
}

#[test]
fn runtime_streamers_start_at_head_or_a_kept_height() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir.path().join("s.redb"));
    // An application streamer that never lets go: the change log keeps
    // every block, so a run-time streamer may start anywhere.
    let anchor = Recorder::default();
    anchor.hold.store(true, Ordering::Release);
    let mut manager = DeliveryManager::builder()
        .streamer(setup("anchor"), Box::new(anchor.clone()))
        .start(&mut store)
        .expect("start");
    commit(&mut manager, &mut store, 5);
    let head = add(&manager, "head", StartAt::Head);
    let from3 = add(&manager, "from3", StartAt::Height(3));
    commit(&mut manager, &mut store, 3);
    wait_for("run-time streamers to reach height 8", || {
        head.heights().last() == Some(&8) && from3.heights().last() == Some(&8)
    });
    assert_eq!(
        head.heights(),
        range(6, 8),
        "from the head: the next block on"
    );
    assert_eq!(from3.heights(), range(3, 8), "from 3: caught up, then live");
    let status = manager.observer().status();
    assert!(
        status.streamers.iter().any(|s| s.name == "from3"),
        "a run-time streamer is observed"
    );
    wait_for("the cursors to be flushed", || {
        manager
            .runtime()
            .cursor("from3")
            .is_some_and(|c| c.durable == 8)
    });
    commit(&mut manager, &mut store, 1);
    assert!(
        store
            .cursor("from3")
            .expect("cursor")
            .is_some_and(|c| c >= 8),
        "the cursor rides with the commits"
    );
    manager.close(&mut store).expect("close");
}

#[test]
fn runtime_streamer_cursor_holds_the_change_log_and_remove_drops_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir.path().join("s.redb"));
    let mut manager = DeliveryManager::builder().start(&mut store).expect("start");
    commit(&mut manager, &mut store, 2);
    let slow = Recorder::default();
    slow.hold.store(true, Ordering::Release);
    manager
        .runtime()
        .add(
            setup("slow"),
            Box::new(slow.clone()),
            Shutdown::new(),
            StartAt::Head,
        )
        .expect("add");
    commit(&mut manager, &mut store, 10);
    let bounds = store.change_log().bounds().expect("bounds");
    assert_eq!(
        bounds.map(|(lo, _)| lo),
        Some(3),
        "the change log keeps every block the held-back streamer has not delivered"
    );
    slow.hold.store(false, Ordering::Release);
    wait_for("the slow streamer to catch up", || {
        slow.heights().last() == Some(&12)
    });
    assert_eq!(slow.heights(), range(3, 12), "nothing lost, nothing twice");
    manager.runtime().remove("slow").expect("remove");
    assert!(manager.runtime().cursor("slow").is_none());
    commit(&mut manager, &mut store, 2);
    assert_eq!(
        store.cursor("slow").expect("cursor"),
        None,
        "cursor dropped"
    );
    assert!(
        store
            .records("runtime_streamers")
            .list()
            .expect("list")
            .is_empty(),
        "registration dropped"
    );
    let kept = store.change_log().bounds().expect("bounds");
    assert!(
        kept.is_none_or(|(lo, _)| lo > 12),
        "no cursor holds the change log any more: {kept:?}"
    );
    let heights = slow.heights();
    commit(&mut manager, &mut store, 1);
    assert_eq!(slow.heights(), heights, "a removed streamer gets nothing");
    assert!(matches!(
        manager.runtime().remove("slow"),
        Err(Error::UnknownRuntimeStreamer { .. })
    ));
    manager.close(&mut store).expect("close");
}

/// Blocks in `on_block` while `closed` is set, until it is cleared.
#[derive(Clone, Default)]
struct Gated {
    closed: Arc<(Mutex<bool>, std::sync::Condvar)>,
    waiting: Arc<AtomicBool>,
}

impl Gated {
    fn set(&self, closed: bool) {
        let (lock, cv) = &*self.closed;
        *lock.lock().expect("lock") = closed;
        cv.notify_all();
    }
}

impl Streamer for Gated {
    fn on_block(&mut self, _block: &Block) -> Result<(), StreamError> {
        let (lock, cv) = &*self.closed;
        let mut closed = lock.lock().expect("lock");
        while *closed {
            self.waiting.store(true, Ordering::Release);
            closed = cv.wait(closed).expect("lock");
        }
        Ok(())
    }
}

#[test]
fn a_stopping_streamer_holds_the_change_log_while_its_worker_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir.path().join("s.redb"));
    let mut manager = DeliveryManager::builder().start(&mut store).expect("start");
    commit(&mut manager, &mut store, 2);
    let gated = Gated::default();
    manager
        .runtime()
        .add(
            setup("gated"),
            Box::new(gated.clone()),
            Shutdown::new(),
            StartAt::Head,
        )
        .expect("add");
    gated.set(true);
    commit(&mut manager, &mut store, 1);
    wait_for("the streamer's worker to be inside on_block", || {
        gated.waiting.load(Ordering::Acquire)
    });
    let held = manager.runtime().cursor("gated").expect("running").durable;
    assert!(held <= 2, "at {held}: block 3 is not delivered");
    // The stop waits for the worker, which is stuck in on_block; blocks
    // commit meanwhile.
    let handle = manager.runtime();
    let stopping = std::thread::spawn(move || handle.stop("gated"));
    wait_for("the stop to begin", || {
        manager.runtime().cursor("gated").is_none_or(|c| !c.running)
    });
    assert_eq!(
        manager.runtime().cursor("gated").map(|c| c.durable),
        Some(held),
        "a stopping streamer is held at its cursor"
    );
    commit(&mut manager, &mut store, 10);
    let bounds = store.change_log().bounds().expect("bounds");
    assert!(
        bounds.is_some_and(|(lo, _)| lo <= held + 1),
        "the change log keeps the blocks after the stopping streamer's cursor {held}: {bounds:?}"
    );
    gated.set(false);
    let cursor = stopping.join().expect("stop thread").expect("stop");
    commit(&mut manager, &mut store, 1);
    let bounds = store.change_log().bounds().expect("bounds");
    assert!(
        bounds.is_some_and(|(lo, _)| lo <= cursor + 1),
        "stopped at {cursor}, the change log still keeps what follows: {bounds:?}"
    );
    manager.close(&mut store).expect("close");
}

#[test]
fn stopped_runtime_streamer_resumes_after_a_restart_losing_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    let r = Recorder::default();
    {
        let mut store = open(&path);
        let mut manager = DeliveryManager::builder().start(&mut store).expect("start");
        commit(&mut manager, &mut store, 1);
        manager
            .runtime()
            .add(
                setup("sub"),
                Box::new(r.clone()),
                Shutdown::new(),
                StartAt::Head,
            )
            .expect("add");
        commit(&mut manager, &mut store, 3);
        wait_for("delivery up to 4", || r.heights().last() == Some(&4));
        let cursor = manager.runtime().stop("sub").expect("stop");
        assert_eq!(cursor, 4, "stopped after flushing what it delivered");
        commit(&mut manager, &mut store, 3);
        assert_eq!(r.heights(), range(2, 4), "a stopped streamer gets nothing");
        assert_eq!(
            manager
                .runtime()
                .cursor("sub")
                .map(|c| (c.running, c.durable)),
            Some((false, 4))
        );
        manager.close(&mut store).expect("close");
        store.close().expect("close store");
    }
    {
        let mut store = MultiStore::open_existing(&path, Default::default()).expect("reopen");
        let mut manager = DeliveryManager::builder().start(&mut store).expect("start");
        assert_eq!(
            manager.runtime().names(),
            vec!["sub".to_string()],
            "held after the restart"
        );
        // Not added again yet: its cursor still holds the change log.
        commit(&mut manager, &mut store, 2);
        assert_eq!(
            store
                .change_log()
                .bounds()
                .expect("bounds")
                .map(|(lo, _)| lo),
            Some(5)
        );
        manager
            .runtime()
            .add(
                setup("sub"),
                Box::new(r.clone()),
                Shutdown::new(),
                StartAt::Resume,
            )
            .expect("resume");
        commit(&mut manager, &mut store, 1);
        wait_for("delivery up to 10", || r.heights().last() == Some(&10));
        assert_eq!(r.heights(), range(2, 10), "resumed where it stopped");
        manager.close(&mut store).expect("close");
        store.close().expect("close store");
    }
    {
        // Closed while running: the cursor saved at close is where it
        // resumes.
        let mut store = MultiStore::open_existing(&path, Default::default()).expect("reopen");
        let mut manager = DeliveryManager::builder().start(&mut store).expect("start");
        commit(&mut manager, &mut store, 1);
        manager
            .runtime()
            .add(
                setup("sub"),
                Box::new(r.clone()),
                Shutdown::new(),
                StartAt::Resume,
            )
            .expect("resume");
        wait_for("delivery up to 11", || r.heights().last() == Some(&11));
        assert_eq!(r.heights(), range(2, 11));
        manager.close(&mut store).expect("close");
    }
}

#[test]
fn runtime_add_works_from_another_thread_while_blocks_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir.path().join("s.redb"));
    // Holds the change log from height 1, wherever the add lands.
    let anchor = Recorder::default();
    anchor.hold.store(true, Ordering::Release);
    let mut manager = DeliveryManager::builder()
        .streamer(setup("anchor"), Box::new(anchor))
        .start(&mut store)
        .expect("start");
    let handle = manager.runtime();
    let r = Recorder::default();
    let adder = {
        let r = r.clone();
        std::thread::spawn(move || {
            handle
                .add(
                    setup("late"),
                    Box::new(r),
                    Shutdown::new(),
                    StartAt::Height(1),
                )
                .expect("add from a thread");
        })
    };
    commit(&mut manager, &mut store, 20);
    adder.join().expect("adder thread");
    commit(&mut manager, &mut store, 1);
    wait_for("delivery up to 21", || r.heights().last() == Some(&21));
    assert_eq!(r.heights(), range(1, 21), "every block from height 1, once");
    manager.close(&mut store).expect("close");
}

#[test]
fn runtime_add_refuses_bad_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(&dir.path().join("s.redb"));
    let mut manager = DeliveryManager::builder()
        .streamer(setup("configured"), Box::new(Recorder::default()))
        .start(&mut store)
        .expect("start");
    commit(&mut manager, &mut store, 5);
    let rt = manager.runtime();
    let add = |setup: StreamerSetup, start| {
        rt.add(setup, Box::new(Recorder::default()), Shutdown::new(), start)
    };
    assert!(matches!(
        add(setup("configured"), StartAt::Head),
        Err(Error::DuplicateName { .. })
    ));
    assert!(matches!(
        add(setup("sync").delivery(Delivery::Sync), StartAt::Head),
        Err(Error::RuntimeSync { .. })
    ));
    let err = add(setup("ahead"), StartAt::Height(9)).expect_err("ahead");
    assert!(matches!(
        err,
        Error::StartAhead {
            height: 9,
            committed: 5,
            ..
        }
    ));
    assert!(err.to_string().contains("start at most at 6"), "{err}");
    // The configured streamer delivered everything: blocks 1-4 are pruned.
    wait_for("the configured streamer's cursor", || {
        manager.stats()[0].durable_height == 5
    });
    commit(&mut manager, &mut store, 1);
    let err = add(setup("old"), StartAt::Height(1)).expect_err("pruned");
    assert!(matches!(err, Error::StartPruned { height: 1, .. }), "{err}");
    let other = StoreKey::new("other").expect("name");
    assert!(matches!(
        add(StreamerSetup::new("x", &[other]), StartAt::Head),
        Err(Error::RuntimeUnknownStore { .. })
    ));
    add(setup("once"), StartAt::Head).expect("add");
    assert!(matches!(
        add(setup("once"), StartAt::Head),
        Err(Error::DuplicateName { .. })
    ));
    assert!(
        store.cursor("ahead").expect("cursor").is_none(),
        "nothing registered for a refused add"
    );
    manager.close(&mut store).expect("close");
    assert!(matches!(
        add(setup("after"), StartAt::Head),
        Err(Error::ManagerClosed { .. })
    ));
}
