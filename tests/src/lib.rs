//! Shared helpers of statestream's cross-crate tests (the `it` test binary).
//!
//! - [`Recorder`] / [`RecorderHandle`] / [`Expect`]: a streamer that is told
//!   up front which calls it expects, records what it got (heights, records,
//!   metadata), can be made to fail or to be slow, and checks everything at
//!   the end with [`RecorderHandle::verify`] (modelled on tracing-mock).
//! - [`Slots`]: hands recorders to a [`Registry`] type (`"record"`) so that
//!   tests can go through the full `app.toml` path.
//! - [`TempHome`]: a node home directory with an on-disk store.
//! - [`memory_store`], [`workload`], [`meta_for`]: a store factory and a
//!   deterministic block workload whose net change set is known.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use statestream::{
    Block, BlockMeta, DeliveryManager, Registry, StreamError, Streamer, StreamerContext, Tx,
};
use statestream_config::AppConfig;
use statestream_store::{CommitInfo, KvStore, MultiStore, StoreKey, StoreOptions};

/// One record as a streamer sees it: (store, key, value; `None` = delete).
pub type Rec = (String, Vec<u8>, Option<Vec<u8>>);

pub use statestream_test_support::node::{STORES, memory_store};

pub use statestream_test_support::{PATIENCE, wait_for};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// Expectations

/// A call a streamer receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `on_start(next_height)`.
    Start(u64),
    /// A successful `on_block(height)` (failed attempts are recorded apart).
    Block(u64),
    /// `on_close()`.
    Close,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Call::Start(h) => write!(f, "start({h})"),
            Call::Block(h) => write!(f, "block({h})"),
            Call::Close => write!(f, "close"),
        }
    }
}

/// What a recorder expects, stated before the test runs:
/// `Expect::new().start(1).blocks(1..=5).close()`.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    calls: Vec<Call>,
    records: BTreeMap<u64, Vec<Rec>>,
    metas: BTreeMap<u64, BlockMeta>,
    stores: Option<Vec<String>>,
    failed: Option<Vec<u64>>,
}

impl Expect {
    /// Expects nothing at all (a streamer that is never called).
    pub fn new() -> Expect {
        Expect::default()
    }

    /// `on_start(next)`.
    pub fn start(mut self, next: u64) -> Expect {
        self.calls.push(Call::Start(next));
        self
    }

    /// One delivered block.
    pub fn block(mut self, height: u64) -> Expect {
        self.calls.push(Call::Block(height));
        self
    }

    /// Delivered blocks, in this order.
    pub fn blocks(mut self, heights: RangeInclusive<u64>) -> Expect {
        self.calls.extend(heights.map(Call::Block));
        self
    }

    /// `on_close()`.
    pub fn close(mut self) -> Expect {
        self.calls.push(Call::Close);
        self
    }

    /// Block `height`, when delivered, carries exactly these records.
    pub fn records(mut self, height: u64, records: Vec<Rec>) -> Expect {
        self.records.insert(height, records);
        self
    }

    /// Block `height`, when delivered, carries this metadata.
    pub fn meta(mut self, height: u64, meta: BlockMeta) -> Expect {
        self.metas.insert(height, meta);
        self
    }

    /// For every block of `written` (as returned by [`commit_workload`]):
    /// its records restricted to `stores`, and its [`meta_for`] metadata.
    pub fn written(mut self, written: &Written, stores: &[&str]) -> Expect {
        for (&h, recs) in written {
            self.records.insert(h, only(recs, stores));
            self.metas.insert(h, meta_for(h));
        }
        self
    }

    /// Every delivered block shows exactly these stores (in name order).
    pub fn stores(mut self, stores: &[&str]) -> Expect {
        self.stores = Some(stores.iter().map(|s| (*s).to_string()).collect());
        self
    }

    /// The failed `on_block` attempts, in order (default: not checked).
    pub fn failed_attempts(mut self, heights: &[u64]) -> Expect {
        self.failed = Some(heights.to_vec());
        self
    }
}

// ---------------------------------------------------------------------------
// The recording streamer

/// How an injected failure behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    /// The first `n` attempts at the height fail, later ones succeed.
    Times(u32),
    /// Every attempt at the height fails (until [`RecorderHandle::heal`]).
    Always,
}

/// One block as the recorder received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub height: u64,
    pub commit: CommitInfo,
    pub meta: BlockMeta,
    /// The stores the block showed (the streamer's selection).
    pub stores: Vec<String>,
    pub records: Vec<Rec>,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    delivered: Vec<Delivered>,
    failed: Vec<u64>,
    faults: HashMap<u64, Fail>,
    fail_start: bool,
}

/// A gate a streamer waits at before delivering: lets a test hold a
/// streamer still (to prove by structure that commits do not wait for it).
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// A closed gate.
    pub fn closed() -> Gate {
        Gate::default()
    }

    /// Lets every waiter through, now and later.
    pub fn open(&self) {
        *lock(&self.0.0) = true;
        self.0.1.notify_all();
    }

    /// Waits until the gate opens (or [`PATIENCE`] passes, so that a failed
    /// test never hangs its worker forever).
    pub fn wait(&self) {
        let deadline = Instant::now() + PATIENCE;
        let mut open = lock(&self.0.0);
        while !*open {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            open = self
                .0
                .1
                .wait_timeout(open, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// A shared journal of calls across several recorders: (recorder, call).
pub type Journal = Arc<Mutex<Vec<(String, Call)>>>;

/// The streamer half of a recorder: give it to the delivery manager.
pub struct Recorder {
    name: String,
    state: Arc<Mutex<State>>,
    sleep: Duration,
    gate: Option<Gate>,
    journal: Option<Journal>,
}

/// The test's half of a recorder: inspect and verify what was received.
#[derive(Clone)]
pub struct RecorderHandle {
    name: String,
    expect: Expect,
    state: Arc<Mutex<State>>,
}

/// A recorder named `name` (the name appears in failure messages only)
/// expecting `expect`.
pub fn recorder(name: &str, expect: Expect) -> (Recorder, RecorderHandle) {
    let state = Arc::new(Mutex::new(State::default()));
    (
        Recorder {
            name: name.to_string(),
            state: Arc::clone(&state),
            sleep: Duration::ZERO,
            gate: None,
            journal: None,
        },
        RecorderHandle {
            name: name.to_string(),
            expect,
            state,
        },
    )
}

impl Recorder {
    /// Fails the block at `height` as `fail` says.
    pub fn fail(self, height: u64, fail: Fail) -> Recorder {
        lock(&self.state).faults.insert(height, fail);
        self
    }

    /// Fails `on_start`.
    pub fn fail_start(self) -> Recorder {
        lock(&self.state).fail_start = true;
        self
    }

    /// Sleeps this long in every `on_block` (a slow streamer).
    pub fn sleep_per_block(mut self, d: Duration) -> Recorder {
        self.sleep = d;
        self
    }

    /// Waits at `gate` before every `on_block`.
    pub fn gate(mut self, gate: &Gate) -> Recorder {
        self.gate = Some(gate.clone());
        self
    }

    /// Also appends every call to `journal` (to see the order of calls
    /// across recorders).
    pub fn journal(mut self, journal: &Journal) -> Recorder {
        self.journal = Some(Arc::clone(journal));
        self
    }

    fn note(&self, state: &mut State, call: Call) {
        state.calls.push(call);
        if let Some(j) = &self.journal {
            lock(j).push((self.name.clone(), call));
        }
    }
}

impl Streamer for Recorder {
    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        if let Some(g) = &self.gate {
            g.wait();
        }
        if !self.sleep.is_zero() {
            std::thread::sleep(self.sleep);
        }
        let h = block.height();
        let mut state = lock(&self.state);
        let fail = match state.faults.get(&h).copied() {
            Some(Fail::Always) => true,
            Some(Fail::Times(n)) => state.failed.iter().filter(|&&f| f == h).count() < n as usize,
            None => false,
        };
        if fail {
            state.failed.push(h);
            return Err(StreamError::msg(format!(
                "injected failure of {} at height {h}",
                self.name
            )));
        }
        let delivered = Delivered {
            height: h,
            commit: block.commit_info(),
            meta: block.meta().clone(),
            stores: block
                .stores()
                .map(|s| s.store().name().to_string())
                .collect(),
            records: block
                .records()
                .map(|r| {
                    (
                        r.store.to_string(),
                        r.key.to_vec(),
                        r.value.map(<[u8]>::to_vec),
                    )
                })
                .collect(),
        };
        state.delivered.push(delivered);
        self.note(&mut state, Call::Block(h));
        Ok(())
    }

    fn on_start(&mut self, next_height: u64) -> Result<(), StreamError> {
        let mut state = lock(&self.state);
        self.note(&mut state, Call::Start(next_height));
        if state.fail_start {
            return Err(StreamError::msg(format!(
                "injected start failure of {}",
                self.name
            )));
        }
        Ok(())
    }

    fn on_close(&mut self) -> Result<(), StreamError> {
        let mut state = lock(&self.state);
        self.note(&mut state, Call::Close);
        Ok(())
    }
}

impl RecorderHandle {
    /// Adds expectations known only once the test has run its workload
    /// (the records and metadata of the blocks written).
    pub fn with_expect(mut self, more: impl FnOnce(Expect) -> Expect) -> RecorderHandle {
        self.expect = more(self.expect);
        self
    }

    /// Every call received, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state).calls.clone()
    }

    /// The heights delivered successfully, in order.
    pub fn heights(&self) -> Vec<u64> {
        lock(&self.state)
            .delivered
            .iter()
            .map(|d| d.height)
            .collect()
    }

    /// The last height delivered successfully (0 if none).
    pub fn last_height(&self) -> u64 {
        lock(&self.state).delivered.last().map_or(0, |d| d.height)
    }

    /// Every delivered block.
    pub fn delivered(&self) -> Vec<Delivered> {
        lock(&self.state).delivered.clone()
    }

    /// The heights of failed attempts, in order.
    pub fn failed_attempts(&self) -> Vec<u64> {
        lock(&self.state).failed.clone()
    }

    /// Stops injecting failures.
    pub fn heal(&self) {
        lock(&self.state).faults.clear();
    }

    /// Waits (bounded by [`PATIENCE`]) until block `height` is delivered.
    pub fn wait_for_height(&self, height: u64) {
        wait_for(&format!("{} to deliver block {height}", self.name), || {
            self.last_height() >= height
        });
    }

    /// Checks everything against the expectations; panics with a diff.
    pub fn verify(&self) {
        let state = lock(&self.state);
        let mut problems = String::new();
        if state.calls != self.expect.calls {
            let _ = writeln!(problems, "calls differ (`>` marks the first difference):");
            let _ = writeln!(problems, "    {:<16} | got", "expected");
            let n = state.calls.len().max(self.expect.calls.len());
            let mut marked = false;
            for i in 0..n {
                let e = self
                    .expect
                    .calls
                    .get(i)
                    .map_or("-".to_string(), Call::to_string);
                let g = state.calls.get(i).map_or("-".to_string(), Call::to_string);
                let mark = if e != g && !marked {
                    marked = true;
                    ">"
                } else if e != g {
                    "!"
                } else {
                    " "
                };
                let _ = writeln!(problems, "  {mark} {e:<16} | {g}");
            }
        }
        let mut seen = BTreeMap::new();
        for d in &state.delivered {
            if seen.insert(d.height, ()).is_some() {
                let _ = writeln!(problems, "block {} was delivered more than once", d.height);
            }
            if let Some(want) = self.expect.records.get(&d.height)
                && *want != d.records
            {
                let _ = writeln!(problems, "block {}: records differ:", d.height);
                let _ = write!(problems, "{}", diff_records(want, &d.records));
            }
            if let Some(want) = self.expect.metas.get(&d.height)
                && *want != d.meta
            {
                let _ = writeln!(
                    problems,
                    "block {}: metadata differs:\n  expected {want:?}\n  got      {:?}",
                    d.height, d.meta
                );
            }
            if let Some(want) = &self.expect.stores
                && *want != d.stores
            {
                let _ = writeln!(
                    problems,
                    "block {}: stores differ: expected {want:?}, got {:?}",
                    d.height, d.stores
                );
            }
            if d.commit.version != d.height {
                let _ = writeln!(
                    problems,
                    "block {}: commit info has version {}",
                    d.height, d.commit.version
                );
            }
        }
        if let Some(want) = &self.expect.failed
            && *want != state.failed
        {
            let _ = writeln!(
                problems,
                "failed attempts differ: expected {want:?}, got {:?}",
                state.failed
            );
        }
        assert!(
            problems.is_empty(),
            "recorder \"{}\" did not get what it expected:\n{problems}",
            self.name
        );
    }
}

fn show(r: &Rec) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match &r.2 {
        Some(v) => format!("{}/{} = {:?}", r.0, text(&r.1), text(v)),
        None => format!("{}/{} deleted", r.0, text(&r.1)),
    }
}

/// A line-by-line diff of two record lists.
pub fn diff_records(want: &[Rec], got: &[Rec]) -> String {
    let mut out = String::new();
    for i in 0..want.len().max(got.len()) {
        let w = want.get(i).map_or("-".to_string(), show);
        let g = got.get(i).map_or("-".to_string(), show);
        let mark = if w == g { " " } else { ">" };
        let _ = writeln!(out, "  {mark} expected {w:<32} | got {g}");
    }
    out
}

// ---------------------------------------------------------------------------
// Registry slots

/// What a constructor of the `"record"` type was given.
#[derive(Debug, Clone, PartialEq)]
pub struct SeenContext {
    pub name: String,
    pub stores: Vec<String>,
    pub options: toml::Table,
    pub home: PathBuf,
}

#[derive(Default)]
struct SlotsInner {
    streamers: HashMap<String, Box<dyn Streamer>>,
    seen: Vec<SeenContext>,
}

/// Streamers waiting, by instance name, to be handed out by a registry
/// type's constructor; and the contexts the constructor was given.
#[derive(Clone, Default)]
pub struct Slots(Arc<Mutex<SlotsInner>>);

impl Slots {
    pub fn new() -> Slots {
        Slots::default()
    }

    /// The streamer the instance `name` gets when it is built.
    pub fn put(&self, name: &str, streamer: impl Streamer + 'static) -> &Slots {
        lock(&self.0)
            .streamers
            .insert(name.to_string(), Box::new(streamer));
        self
    }

    /// Whether the streamer of `name` is still waiting (was never built).
    pub fn unclaimed(&self, name: &str) -> bool {
        lock(&self.0).streamers.contains_key(name)
    }

    /// The contexts constructors were given, in build order.
    pub fn seen(&self) -> Vec<SeenContext> {
        lock(&self.0).seen.clone()
    }

    /// Registers `type_name` on `registry`: its constructor records the
    /// context and hands out the streamer put under the instance's name.
    pub fn register(&self, registry: &mut Registry, type_name: &str) {
        let slots = self.clone();
        registry.register(type_name, move |ctx: &StreamerContext<'_>, options| {
            let options: toml::Table = options.parse()?;
            let mut inner = lock(&slots.0);
            inner.seen.push(SeenContext {
                name: ctx.name.to_string(),
                stores: ctx.stores.iter().map(|s| s.name().to_string()).collect(),
                options,
                home: ctx.home.to_path_buf(),
            });
            inner
                .streamers
                .remove(ctx.name)
                .ok_or_else(|| format!("no streamer was put in the slot \"{}\"", ctx.name).into())
        });
    }

    /// `Registry::with_builtins()` plus `"record"` served by these slots.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_builtins();
        self.register(&mut r, "record");
        r
    }
}

/// The full configuration path: `AppConfig::parse` -> `resolve` against the
/// store's stores -> `DeliveryManager::builder()...start` with `registry`.
pub fn start_from_config(
    text: &str,
    store: &mut MultiStore,
    registry: &Registry,
    home: &Path,
) -> statestream::Result<DeliveryManager> {
    let config = AppConfig::parse(text, &home.join("config/app.toml"))?;
    let names: Vec<String> = store
        .stores()
        .iter()
        .map(|s| s.name().to_string())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let specs = config.resolve(&names)?;
    DeliveryManager::builder()
        .configured(&specs, registry, home)
        .start(store)
}

// ---------------------------------------------------------------------------
// Stores, homes, workload

/// Store keys for `names`.
pub fn keys(names: &[&str]) -> Vec<StoreKey> {
    names
        .iter()
        .map(|n| StoreKey::new(n).expect("test store names are valid"))
        .collect()
}

/// A node home in a temporary directory, removed on drop.
pub struct TempHome {
    dir: tempfile::TempDir,
}

impl Default for TempHome {
    fn default() -> Self {
        TempHome::new()
    }
}

impl TempHome {
    pub fn new() -> TempHome {
        TempHome {
            dir: tempfile::Builder::new()
                .prefix("statestream-test-")
                .tempdir()
                .expect("a temporary directory can be created"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where the node's store lives.
    pub fn store_path(&self) -> PathBuf {
        self.path().join("data").join("state.redb")
    }

    /// Opens (or creates) the on-disk store with the [`STORES`].
    pub fn open_store(&self) -> MultiStore {
        let path = self.store_path();
        std::fs::create_dir_all(path.parent().expect("the store path has a parent"))
            .expect("the data directory can be created");
        MultiStore::open(&path, &keys(&STORES), StoreOptions::default())
            .expect("the on-disk store opens")
    }
}

/// Block heights to the net records written in them (all stores).
pub type Written = BTreeMap<u64, Vec<Rec>>;

/// The metadata the tests give block `height`.
pub fn meta_for(height: u64) -> BlockMeta {
    BlockMeta {
        time_seconds: 1_700_000_000 + height as i64,
        time_nanos: (height as u32) * 1000,
        begin_block: format!("begin {height}").into_bytes(),
        end_block: format!("end {height}").into_bytes(),
        txs: (0..height % 3)
            .map(|i| Tx {
                request: format!("tx {height}.{i}").into_bytes(),
                response: if i == 0 { Vec::new() } else { vec![i as u8] },
            })
            .collect(),
        ..BlockMeta::default()
    }
}

/// Writes block `height`'s deterministic workload into `store`'s pending
/// state (through caches: nested ones written back, a dropped one never
/// seen) and returns the expected net change set: net change per key,
/// ordered by store then key, deletes without value.
pub fn workload(store: &mut MultiStore, height: u64) -> Vec<Rec> {
    let stores = store.stores().to_vec();
    let n = stores.len() as u64;
    let mut net: BTreeMap<(String, Vec<u8>), Option<Vec<u8>>> = BTreeMap::new();
    let mut put = |s: &StoreKey, k: &[u8], v: Option<&[u8]>| {
        net.insert((s.name().to_string(), k.to_vec()), v.map(<[u8]>::to_vec));
    };
    let w = |r: statestream_store::Result<()>| r.expect("a test write succeeds");

    let mut tx = store.cache();
    for (i, s) in stores.iter().enumerate() {
        // Some store is idle in every block.
        if (height + i as u64) % 3 == 2 {
            continue;
        }
        let k = format!("k{}", height % 4);
        let v = format!("v{height}-{}", s.name());
        w(tx.set(s, k.as_bytes(), v.as_bytes()));
        put(s, k.as_bytes(), Some(v.as_bytes()));
        w(tx.set(s, b"counter", &height.to_be_bytes()));
        put(s, b"counter", Some(&height.to_be_bytes()));
        w(tx.set(s, b"empty", b""));
        put(s, b"empty", Some(b""));
    }
    {
        let s = &stores[(height % n) as usize];
        let mut inner = tx.cache();
        // Set then delete in one block: a net delete.
        w(inner.set(s, b"tmp", b"short-lived"));
        w(inner.delete(s, b"tmp"));
        put(s, b"tmp", None);
        // A key set in an earlier block, deleted now.
        let k = format!("k{}", (height + 1) % 4);
        w(inner.delete(s, k.as_bytes()));
        put(s, k.as_bytes(), None);
        // Overwrites the outer cache's value: the last value wins.
        w(inner.set(s, b"counter", b"overwritten"));
        put(s, b"counter", Some(b"overwritten"));
        {
            let mut deeper = inner.cache();
            w(deeper.set(s, format!("deep{height}").as_bytes(), b"d"));
            put(s, format!("deep{height}").as_bytes(), Some(b"d"));
            w(deeper.write());
        }
        w(inner.write());
    }
    {
        // Dropped: never observed.
        let mut dropped = tx.cache();
        w(dropped.set(&stores[0], b"ghost", b"never committed"));
        w(dropped.delete(&stores[1], b"counter"));
        dropped.discard();
    }
    w(tx.write());
    net.into_iter().map(|((s, k), v)| (s, k, v)).collect()
}

/// Commits blocks `heights` through `manager` with [`workload`] and
/// [`meta_for`]; returns what was written. Panics if a commit fails.
pub fn commit_workload(
    manager: &mut DeliveryManager,
    store: &mut MultiStore,
    heights: RangeInclusive<u64>,
) -> Written {
    let mut written = Written::new();
    for h in heights {
        assert_eq!(store.version() + 1, h, "blocks are committed in order");
        written.insert(h, workload(store, h));
        let info = manager
            .commit(store, meta_for(h))
            .unwrap_or_else(|e| panic!("commit of block {h} failed: {e}"));
        assert_eq!(info.version, h);
    }
    written
}

/// Commits blocks `heights` on the store alone (no delivery manager, so no
/// pruning and no cursor moves), with the same workload and metadata.
pub fn commit_without_manager(store: &mut MultiStore, heights: RangeInclusive<u64>) -> Written {
    let mut written = Written::new();
    for h in heights {
        written.insert(h, workload(store, h));
        let cs = store
            .commit_block(
                statestream_store::CommitInput::new().app_meta(meta_for(h).encode_app_meta()),
            )
            .expect("the store commits");
        assert_eq!(cs.height(), h);
    }
    written
}

/// `records` restricted to `stores`.
pub fn only(records: &[Rec], stores: &[&str]) -> Vec<Rec> {
    records
        .iter()
        .filter(|r| stores.contains(&r.0.as_str()))
        .cloned()
        .collect()
}
