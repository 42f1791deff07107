//! The example of docs/serve.md ("PushUpdate: the application decides"),
//! verbatim between the markers: `cargo test` compiles it, and
//! `cli/tests/docs.rs` checks that docs/serve.md still shows these lines.
//! `run_node` commits blocks for ever; `main` only names it.

// docs/serve.md example: begin
use std::path::Path;

use statestream::config::StreamerSpec;
use statestream::store::{KvStore, MultiStore};
use statestream::{BlockMeta, DeliveryManager, PushQueue, Registry, StoreKey};

fn run_node(
    store: &mut MultiStore,
    specs: &[StreamerSpec],
    registry: &Registry,
    home: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let push = PushQueue::new();
    push.attach(); // we drain it: pushes are accepted from the start
    let mut manager = DeliveryManager::builder()
        .configured(specs, registry, home)
        .push_queue(push.clone())
        .start(store)?;
    loop {
        // ... the block's own writes ...
        let mut batch = push.drain();
        batch.retain(|w| {
            if w.store == "tmp" {
                Ok(())
            } else {
                Err("not here".into())
            }
        });
        for w in batch.writes() {
            match &w.value {
                Some(v) => store.set(&StoreKey::new(&w.store)?, &w.key, v)?,
                None => store.delete(&StoreKey::new(&w.store)?, &w.key)?,
            }
        }
        // Each pusher is answered with the height, also when a streamer
        // halts the node on this block (it committed); then `?` stops.
        manager.commit_pushed(store, BlockMeta::default(), batch)?;
    }
}
// docs/serve.md example: end

fn main() {
    let _ = run_node;
}
