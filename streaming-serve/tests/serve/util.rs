//! A node for the tests: a store, a delivery manager with a `serve`
//! streamer built through the registry (as `app.toml` does), and a
//! deterministic writer of blocks.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use statestream::config::AppConfig;
use statestream::prometheus;
use statestream::{
    BlockMeta, DeliveryManager, PushQueue, Registry, StateReader, Streamer, StreamerSetup,
};
use statestream_serve::proto::v1::{self, state_stream_client::StateStreamClient};
use statestream_serve::{SERVE_TYPE, ServeConfig, ServeHandle};
use statestream_store::{KvStore, MultiStore, StoreKey, StoreOptions};
pub use statestream_test_support::wait_for;
use tonic::transport::Channel;

pub const STORES: [&str; 3] = ["a", "b", "c"];

pub fn keys() -> Vec<StoreKey> {
    STORES.iter().map(|s| StoreKey::new(s).unwrap()).collect()
}

pub type State = BTreeMap<(String, Vec<u8>), Vec<u8>>;

/// One change: store, key, value (`None`: deleted).
pub type Change = (String, Vec<u8>, Option<Vec<u8>>);

/// One block: its height and changes.
pub type BlockChanges = (u64, Vec<Change>);

pub struct Node {
    pub store: MultiStore,
    pub manager: Option<DeliveryManager>,
    pub handle: ServeHandle,
    pub push: PushQueue,
    /// The registry `/metrics` would render.
    pub metrics: prometheus::Registry,
}

/// The `[streamers.serve]` table with `extra` lines; port 0 unless `extra`
/// sets `grpc_address`.
pub fn config(extra: &str) -> String {
    let address = if extra.contains("grpc_address") {
        String::new()
    } else {
        "grpc_address = \"127.0.0.1:0\"\n".to_string()
    };
    format!(
        "[store]\nstreamers = [\"serve\"]\n\n[streamers.serve]\ntype = \"serve\"\nkeys = [\"*\"]\n{address}{extra}\n"
    )
}

/// Builds the streamers of `toml` with the registry, keeping the serve
/// streamer's handle.
pub fn start_manager(
    store: &mut MultiStore,
    toml: &str,
    home: &Path,
) -> Result<(DeliveryManager, ServeHandle), statestream::Error> {
    start_manager_with_metrics(store, toml, home).map(|(m, h, _)| (m, h))
}

/// [`start_manager`], also returning the metrics registry the serve
/// streamer's metrics are registered in (as the built-in type does).
pub fn start_manager_with_metrics(
    store: &mut MultiStore,
    toml: &str,
    home: &Path,
) -> Result<(DeliveryManager, ServeHandle, prometheus::Registry), statestream::Error> {
    start_manager_with_streamers(store, toml, home, Vec::new())
}

/// [`start_manager_with_metrics`] with the application's own streamers
/// after the configured ones.
pub fn start_manager_with_streamers(
    store: &mut MultiStore,
    toml: &str,
    home: &Path,
    streamers: Vec<(StreamerSetup, Box<dyn Streamer>)>,
) -> Result<(DeliveryManager, ServeHandle, prometheus::Registry), statestream::Error> {
    let app = AppConfig::parse(toml, Path::new("test.toml")).unwrap();
    let specs = app.resolve(&STORES).unwrap();
    let mut registry = Registry::with_builtins();
    let metrics = registry.metrics().clone();
    let slot: Arc<Mutex<Option<ServeHandle>>> = Arc::default();
    let stash = Arc::clone(&slot);
    let hook = metrics.clone();
    registry.register(SERVE_TYPE, move |ctx, options| {
        let config: ServeConfig = options.parse()?;
        let streamer = config.build(ctx, options)?;
        statestream::register_serve_metrics(&hook, ctx.name, streamer.handle().metrics())?;
        *stash.lock().unwrap() = Some(streamer.handle());
        Ok(Box::new(streamer))
    });
    let manager = DeliveryManager::builder()
        .configured(&specs, &registry, home)
        .streamers(streamers)
        .start(store)?;
    let handle = slot
        .lock()
        .unwrap()
        .take()
        .expect("the serve streamer was built");
    Ok((manager, handle, metrics))
}

impl Node {
    pub fn in_memory(extra: &str) -> Node {
        let mut store = MultiStore::in_memory(&keys()).unwrap();
        let (manager, handle, metrics) =
            start_manager_with_metrics(&mut store, &config(extra), Path::new(".")).unwrap();
        let push = manager.push_queue();
        Node {
            store,
            manager: Some(manager),
            handle,
            push,
            metrics,
        }
    }

    pub fn open(path: &Path, extra: &str) -> Node {
        let mut store = MultiStore::open(
            path,
            &keys(),
            StoreOptions {
                fsync: false,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let (manager, handle, metrics) =
            start_manager_with_metrics(&mut store, &config(extra), path.parent().unwrap()).unwrap();
        let push = manager.push_queue();
        Node {
            store,
            manager: Some(manager),
            handle,
            push,
            metrics,
        }
    }

    pub fn address(&self) -> String {
        format!("http://{}", self.handle.grpc_address().expect("gRPC is on"))
    }

    pub fn height(&self) -> u64 {
        self.store.version()
    }

    /// Commits one deterministic block (sets and deletes over every
    /// store), applying the pushed writes first.
    pub fn commit(&mut self) -> u64 {
        self.commit_sized(6, 8)
    }

    /// Commits `n` blocks such that the change log is pruned at the last
    /// one: before it, waits until the streamers' cursors are flushed (an
    /// async streamer flushes on its own schedule, and the log keeps every
    /// block above the lowest flushed cursor). For tests of what lies
    /// below the retained window, which must not depend on that schedule.
    pub fn commit_pruned(&mut self, n: u64) {
        for _ in 1..n {
            self.commit();
        }
        let height = self.store.version();
        let manager = self.manager.as_ref().unwrap();
        wait_for("the streamers' cursors to be flushed", || {
            manager.stats().iter().all(|s| s.durable_height >= height)
        });
        self.commit();
    }

    /// Waits until every streamer was handed the last committed block
    /// (an async streamer gets it after `commit` returns): then the serve
    /// streamer's head is the node's height.
    pub fn wait_served(&self) {
        let height = self.store.version();
        let manager = self.manager.as_ref().unwrap();
        wait_for("the streamers to be handed the last block", || {
            manager.stats().iter().all(|s| s.delivered_height >= height)
        });
    }

    /// Like `commit`, with `writes` writes of `value_len` bytes.
    pub fn commit_sized(&mut self, writes: usize, value_len: usize) -> u64 {
        let h = self.store.version() + 1;
        let batch = self.push.drain();
        for w in batch.writes() {
            let store = StoreKey::new(&w.store).unwrap();
            match &w.value {
                Some(v) => self.store.set(&store, &w.key, v).unwrap(),
                None => self.store.delete(&store, &w.key).unwrap(),
            }
        }
        let stores = keys();
        for i in 0..writes {
            let store = &stores[(h as usize + i) % stores.len()];
            let key = format!("k{:03}", (h * 7 + i as u64 * 13) % 40);
            if (h + i as u64).is_multiple_of(5) {
                self.store.delete(store, key.as_bytes()).unwrap();
            } else {
                let mut value = format!("{h}:{i}:").into_bytes();
                value.resize(value_len.max(value.len()), b'x');
                self.store.set(store, key.as_bytes(), &value).unwrap();
            }
        }
        let meta = BlockMeta {
            time_seconds: 1_700_000_000 + h as i64,
            ..BlockMeta::default()
        };
        let info = self
            .manager
            .as_mut()
            .unwrap()
            .commit(&mut self.store, meta)
            .unwrap();
        batch.committed(info.version);
        info.version
    }

    /// The committed state of every store.
    pub fn state(&self) -> State {
        let reader = self.store.reader();
        let snap = reader.snapshot().unwrap();
        let mut out = State::new();
        for s in keys() {
            for kv in statestream::StateSnapshot::range(
                snap.as_ref(),
                &s,
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded,
            )
            .unwrap()
            {
                let (k, v) = kv.unwrap();
                out.insert((s.name().to_string(), k), v);
            }
        }
        out
    }

    /// The change set of `height` from the change log.
    pub fn changes(&self, height: u64) -> Vec<Change> {
        let cs = self.store.reader().change_set(height).unwrap();
        cs.records()
            .map(|r| {
                (
                    r.store.to_string(),
                    r.key.to_vec(),
                    r.value.map(<[u8]>::to_vec),
                )
            })
            .collect()
    }

    pub fn close(mut self) -> MultiStore {
        if let Some(m) = self.manager.take() {
            m.close(&mut self.store).unwrap();
        }
        self.store
    }
}

/// A runtime for the clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub async fn client(address: &str) -> StateStreamClient<Channel> {
    StateStreamClient::connect(address.to_string())
        .await
        .unwrap()
}

pub fn subscribe_request(start: v1::subscribe_request::Start) -> v1::SubscribeRequest {
    v1::SubscribeRequest {
        filter: None,
        start: Some(start),
    }
}

/// What a subscriber received, checked as it arrives: snapshot (if any)
/// then contiguous whole blocks.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub snapshot_height: Option<u64>,
    pub snapshot: State,
    pub blocks: Vec<BlockChanges>,
    pub heartbeats: u64,
    current: Option<BlockChanges>,
}

impl Received {
    pub fn last_height(&self) -> Option<u64> {
        self.blocks.last().map(|b| b.0).or(self.snapshot_height)
    }

    /// Takes one message; panics on anything out of order.
    pub fn take(&mut self, m: v1::SubscribeResponse) {
        use v1::subscribe_response::Message;
        match m.message.unwrap() {
            Message::Snapshot(c) => {
                assert!(self.blocks.is_empty() && self.snapshot_height.is_none());
                for e in c.entries {
                    assert!(self.snapshot.insert((e.store, e.key), e.value).is_none());
                }
                if c.end {
                    self.snapshot_height = Some(c.height);
                }
            }
            Message::Block(b) => {
                let cur = self.current.get_or_insert_with(|| (b.height, Vec::new()));
                assert_eq!(cur.0, b.height, "a block began before the last one ended");
                for c in b.changes {
                    let value = (c.op != v1::Op::Delete as i32).then_some(c.value);
                    cur.1.push((c.store, c.key, value));
                }
                if b.end {
                    let done = self.current.take().unwrap();
                    if let Some(last) = self.last_height() {
                        assert_eq!(done.0, last + 1, "gap or duplicate");
                    }
                    self.blocks.push(done);
                }
            }
            Message::Heartbeat(_) => self.heartbeats += 1,
        }
    }

    /// The snapshot with every block applied.
    pub fn state(&self) -> State {
        let mut s = self.snapshot.clone();
        for (_, changes) in &self.blocks {
            for (store, key, value) in changes {
                match value {
                    Some(v) => s.insert((store.clone(), key.clone()), v.clone()),
                    None => s.remove(&(store.clone(), key.clone())),
                };
            }
        }
        s
    }
}

/// Reads `stream` until a block at `height` or above has ended.
pub async fn read_until(
    stream: &mut tonic::Streaming<v1::SubscribeResponse>,
    received: &mut Received,
    height: u64,
) {
    // One deadline for the whole read: heartbeats keep a stream busy
    // while the block never comes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while received.last_height().is_none_or(|h| h < height) {
        let m = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("block {height} did not end within 60 s"))
            .unwrap()
            .expect("the stream ended");
        received.take(m);
    }
}
