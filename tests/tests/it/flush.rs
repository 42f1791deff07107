//! Flushing: the persisted cursor covers only blocks a streamer flushed, so a
//! block delivered but not made durable is delivered again after a restart.

use std::sync::{Arc, Mutex};

use statestream::{Block, Delivery, DeliveryManager, StreamError, Streamer, StreamerSetup};
use statestream_tests::{STORES, TempHome, commit_workload, keys};

/// Records delivered heights and flush calls; its flushes fail while
/// `fail_flush` is set.
#[derive(Clone, Default)]
struct Flushing {
    heights: Arc<Mutex<Vec<u64>>>,
    flushes: Arc<Mutex<u32>>,
    fail_flush: Arc<Mutex<bool>>,
}

impl Streamer for Flushing {
    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        self.heights.lock().unwrap().push(block.height());
        Ok(())
    }

    fn on_flush(&mut self) -> Result<(), StreamError> {
        *self.flushes.lock().unwrap() += 1;
        if *self.fail_flush.lock().unwrap() {
            return Err(StreamError::msg("disk went away"));
        }
        Ok(())
    }
}

fn run(delivery: Delivery) {
    let home = TempHome::new();
    let all = keys(&STORES);
    let setup = || {
        StreamerSetup::new("flushing", &all)
            .delivery(delivery)
            .stop_node_on_error(false)
    };

    // First run: every flush fails, so nothing delivered is durable.
    let failing = Flushing::default();
    *failing.fail_flush.lock().unwrap() = true;
    let mut store = home.open_store();
    let mut manager = DeliveryManager::builder()
        .streamer(setup(), Box::new(failing.clone()))
        .start(&mut store)
        .unwrap();
    commit_workload(&mut manager, &mut store, 1..=4);
    let closed = manager.close(&mut store);
    assert!(closed.is_ok(), "{closed:?}");
    assert!(*failing.flushes.lock().unwrap() >= 1, "close flushes");
    assert!(failing.heights.lock().unwrap().contains(&4));
    assert_eq!(
        store.cursor("flushing").unwrap(),
        Some(0),
        "the cursor covers no unflushed block"
    );
    store.close().unwrap();

    // Second run: the blocks come again, and this time they are flushed.
    let healthy = Flushing::default();
    let mut store = home.open_store();
    let mut manager = DeliveryManager::builder()
        .streamer(setup(), Box::new(healthy.clone()))
        .start(&mut store)
        .unwrap();
    commit_workload(&mut manager, &mut store, 5..=5);
    manager.close(&mut store).unwrap();
    assert_eq!(*healthy.heights.lock().unwrap(), vec![1, 2, 3, 4, 5]);
    assert_eq!(store.cursor("flushing").unwrap(), Some(5));
}

#[test]
fn flush_failed_blocks_are_delivered_again_after_restart_sync() {
    run(Delivery::Sync);
}

#[test]
fn flush_failed_blocks_are_delivered_again_after_restart_async() {
    run(Delivery::Async);
}
