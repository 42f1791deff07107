//! `statestream relay --home DIR`: a replica that follows another
//! statestream's `serve` (a node's or another relay's), checks every block
//! against the hashes it was committed with, commits it at the upstream's
//! height with the upstream's block time, and runs the streamers of its own
//! HOME/config/app.toml on it (a `serve` among them re-serves it, so relays
//! chain). See docs/relay.md.
//!
//! The relay loop runs on one thread: it reads the upstream in use
//! ([`upstream::Upstream`]) and commits through the ingest pipeline
//! (`statestream::Ingest`), so the relay's height is the upstream position
//! and is saved in each block's own store transaction: a restarted relay
//! resumes from its height + 1. Beside it, on the same runtime: the heads
//! of every upstream (for the lag and the failover), the serving gate
//! (`statestream_serve::Gate`), and the pushed writes forwarded upstream.

pub mod nats;
pub mod status;
pub mod upstream;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use statestream::{
    BlockMeta, Error as StreamError, Ingest, Ingested, OnGap, PushQueue, SourceBlock, SourceHashes,
    SourceSnapshot,
};
use statestream_config::RelayConfig;
use statestream_serve::Gate;
use statestream_store::{Hash, KvStore, MultiStore};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::node::ConfigSource;
use crate::replica;
use status::{RelayMetrics, RelayStatus};
use upstream::{Upstream, UpstreamError, UpstreamEvent, UpstreamHashes};

#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// The relay's home: its configuration is HOME/config/app.toml (a
    /// `[relay]` table with its upstreams, and `[store] streamers` as for a
    /// node), its replica store HOME/data/store.redb. Created when missing.
    #[arg(long, value_name = "DIR")]
    home: PathBuf,
}

/// How often the heads of the upstreams are asked for.
const HEAD_POLL: Duration = Duration::from_secs(1);
/// How often the loop looks at the lag, the gate and the pushed writes.
const TICK: Duration = Duration::from_millis(50);
/// The pause before following an upstream again after every one failed.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How long a pushed write waits for the relay to hold the block that
/// committed it upstream.
const PUSH_WAIT: Duration = Duration::from_secs(60);

pub fn run(args: RelayArgs) -> Result<ExitCode> {
    let source = ConfigSource::locate(None, &args.home);
    info!(config = %source.origin().display(), "{}", source.describe());
    let config = source.load()?;
    let Some(relay) = config.relay().cloned() else {
        bail!(
            "{}: no [relay] table: a relay needs `upstreams`, the StateStream endpoints it \
             follows (see docs/relay.md)",
            source.origin().display()
        );
    };
    if relay.tls_ca_file.is_empty()
        && let Some(https) = relay.upstreams.iter().find(|u| u.starts_with("https://"))
    {
        bail!(
            "{}: [relay] upstreams: {https}: an https:// upstream needs [relay] tls_ca_file, \
             the PEM certificates its certificate is verified against (its CA, or the server's \
             own certificate)",
            source.origin().display()
        );
    }
    nats::check(&relay).map_err(|e| anyhow::anyhow!("{}: {e}", source.origin().display()))?;
    let token = read_token(&args.home, &relay.token_file)?;
    // A relay of some stores only: they exist from the start, so that the
    // streamers can start before the first snapshot.
    // No fsync per block (one in 128, and at a clean stop): the upstream
    // sends again what a crash rolled back.
    let store = replica::open_store(&args.home, &relay.stores, false)?;

    // Closed until the relay knows it is within `ready_lag_blocks`.
    Gate::process().set_lag(None, relay.ready_lag_blocks);
    let status = Arc::new(RelayStatus::default());
    status.set_height(store.version());
    let credentials = replica::credentials(&store)?;
    // Credentials managed while the relay runs; no subscriptions here
    // (docs/admin.md).
    let admin = crate::admin::start_admin(&config, &args.home, Some(credentials.clone()), None)?;
    let registry = crate::node::registry();
    let telemetry = match config.telemetry() {
        Some(t) => Some((
            replica::Telemetry::new(t, &args.home, registry.metrics().clone()),
            RelayMetrics::register(registry.metrics())?,
        )),
        None => None,
    };
    // PushUpdate on the relay: the writes are forwarded upstream.
    let push = PushQueue::new();
    push.attach();
    let home = args.home.clone();
    let start_push = push.clone();
    let start = Box::new(move |store: &mut MultiStore| {
        replica::start_manager(
            store,
            &config,
            &registry,
            &home,
            &credentials,
            Some(&start_push),
        )
    });
    info!(height = store.version(), stores = store.stores().len(), upstreams = ?relay.upstreams,
        "relay store opened");
    let mut ingest = Ingest::new(store, start, OnGap::Halt)?;
    // Its fields at the top level of /status, on every observer.
    ingest.add_status_section("relay", status.section());

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let stopping = Arc::clone(&stopping);
        crate::signals::watch(
            move || {
                stopping.store(true, Ordering::SeqCst);
                let _ = stop_tx.send(true);
            },
            "committed blocks are in the store; the relay resumes from its height",
        )?;
    }

    let upstreams: Vec<Box<dyn Upstream>> = relay
        .upstreams
        .iter()
        .map(|u| upstream::open(u, token.as_deref(), &relay, &args.home))
        .collect::<Result<_>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the relay's runtime")?;
    let (height_tx, _) = watch::channel(ingest.store().version());
    let mut relay = Relay {
        heads: Arc::new(Mutex::new(vec![None; upstreams.len()])),
        ingest: Some(ingest),
        config: relay,
        upstreams,
        current: 0,
        back_to: None,
        status,
        telemetry,
        height: height_tx,
        push,
    };
    relay.refresh();
    let result = runtime.block_on(relay.run(stop_rx));
    let closed = relay.close();
    drop(runtime);
    if let Some(admin) = admin {
        admin.stop();
    }
    result?;
    closed?;
    info!("relay stopped");
    Ok(ExitCode::SUCCESS)
}

/// The upstreams' token, from `token_file` (relative: under the home).
/// Never logged: an error names the file only.
fn read_token(home: &Path, file: &str) -> Result<Option<String>> {
    if file.is_empty() {
        return Ok(None);
    }
    let path = home.join(file);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "[relay] token_file: cannot read the token file {}",
            path.display()
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        bail!("[relay] token_file: {} is empty", path.display());
    }
    if token.chars().any(char::is_control) {
        bail!(
            "[relay] token_file: {} holds control characters, which a header cannot carry",
            path.display()
        );
    }
    Ok(Some(token.to_owned()))
}

/// What ended following one upstream.
enum Next {
    /// Follow the upstream at this index (another one, or the same again).
    Follow(usize),
    /// Take a snapshot from the upstream in use.
    Snapshot,
    /// Follow the upstream at this index again after a snapshot taken
    /// from another (a JetStream upstream holds blocks, not state).
    Resume(usize),
    /// A signal: stop.
    Stop,
}

struct Relay {
    ingest: Option<Ingest>,
    config: RelayConfig,
    upstreams: Vec<Box<dyn Upstream>>,
    current: usize,
    /// The upstream to follow again once the snapshot taken from another
    /// is restored.
    back_to: Option<usize>,
    heads: Arc<Mutex<Vec<Option<u64>>>>,
    status: Arc<RelayStatus>,
    /// `[telemetry]`: the server and the relay's metrics.
    telemetry: Option<(replica::Telemetry, RelayMetrics)>,
    /// The relay's committed height, for pushed writes waiting for theirs.
    height: watch::Sender<u64>,
    push: PushQueue,
}

impl Relay {
    fn ingest(&mut self) -> Result<&mut Ingest> {
        self.ingest
            .as_mut()
            .context("the relay's pipeline is closed")
    }

    fn version(&self) -> u64 {
        self.ingest.as_ref().map_or(0, |i| i.store().version())
    }

    async fn run(&mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let mut snapshot = self.version() == 0;
        let mut polls = tokio::time::interval(HEAD_POLL);
        polls.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let from = (!snapshot).then(|| self.version() + 1);
            if from.is_none()
                && !self.upstreams[self.current].snapshots()
                && let Some(j) = self.upstreams.iter().position(|u| u.snapshots())
            {
                info!(upstream = %self.upstreams[self.current].name(),
                    snapshot_from = %self.upstreams[j].name(),
                    "a JetStream upstream holds blocks, not state: taking the snapshot from a \
                     serve upstream, then following it again");
                self.back_to = Some(self.current);
                self.current = j;
            }
            let name = self.upstreams[self.current].name().to_owned();
            self.status.set_upstream(&name);
            match from {
                Some(h) => info!(upstream = %name, from = h, "following the upstream"),
                None if !self.upstreams[self.current].snapshots() => info!(upstream = %name,
                    "replaying the JetStream stream from block 1 (its state at block 1 is the \
                     relay's first snapshot)"),
                None => info!(upstream = %name, "taking a snapshot at the upstream's head"),
            }
            let height_before = self.version();
            let next = match self.upstreams[self.current].start(from).await {
                Ok(()) => self.follow(&mut stop, &mut polls, &mut tick).await?,
                Err(e) => self.on_error(e).await?,
            };
            match next {
                Next::Stop => return Ok(()),
                Next::Snapshot => snapshot = true,
                Next::Resume(i) => {
                    snapshot = false;
                    self.current = i;
                }
                Next::Follow(i) => {
                    self.back_to = None;
                    snapshot = self.version() == 0;
                    if i != self.current {
                        self.status.failed_over();
                    }
                    // Back to the same upstream (the only one, or every one
                    // failed), or an upstream that gave nothing: pause, so
                    // that upstreams that are all down or not ready are not
                    // tried in a tight loop.
                    if i == self.current || self.version() == height_before {
                        tokio::select! {
                            _ = tokio::time::sleep(RETRY_PAUSE) => {}
                            _ = stop.wait_for(|s| *s) => return Ok(()),
                        }
                    }
                    self.current = i;
                }
            }
        }
    }

    /// Reads the upstream in use until it fails, lags, or a signal.
    async fn follow(
        &mut self,
        stop: &mut watch::Receiver<bool>,
        polls: &mut tokio::time::Interval,
        tick: &mut tokio::time::Interval,
    ) -> Result<Next> {
        loop {
            let event = tokio::select! {
                _ = stop.wait_for(|s| *s) => return Ok(Next::Stop),
                _ = polls.tick() => {
                    self.poll_heads();
                    continue;
                }
                _ = tick.tick() => {
                    if let Some(i) = self.housekeeping() {
                        return Ok(Next::Follow(i));
                    }
                    continue;
                }
                event = self.upstreams[self.current].next() => event,
            };
            let event = match event {
                Ok(e) => e,
                Err(e) => return self.on_error(e).await,
            };
            match event {
                UpstreamEvent::Head(head) => self.saw_head(self.current, head),
                UpstreamEvent::Snapshot {
                    height,
                    entries,
                    hashes,
                } => {
                    if height == 0 {
                        info!(upstream = %self.upstreams[self.current].name(),
                            "the upstream has no block yet; waiting");
                        return Ok(Next::Follow(self.current));
                    }
                    self.restore(height, entries, &hashes)?;
                    if let Some(back) = self.back_to.take() {
                        self.refresh();
                        return Ok(Next::Resume(back));
                    }
                }
                UpstreamEvent::Block {
                    height,
                    time,
                    writes,
                    hashes,
                } => {
                    if !self.commit(height, time, writes, &hashes)? {
                        // Diverged: nothing more is applied or served.
                        stop.wait_for(|s| *s).await.ok();
                        let (height, store) = self.status.diverged().unwrap_or_default();
                        bail!(
                            "stopped diverged: block {height} (store {store}) differs from the \
                             upstream's; the relay served nothing from it on"
                        );
                    }
                }
            }
            self.refresh();
        }
    }

    /// What an upstream's error leads to.
    async fn on_error(&mut self, e: UpstreamError) -> Result<Next> {
        let name = self.upstreams[self.current].name().to_owned();
        match e {
            UpstreamError::Refused(message) => bail!("{message}"),
            UpstreamError::Lost(message) => {
                let next = (self.current + 1) % self.upstreams.len();
                warn!(upstream = %name, error = %message, next = %self.upstreams[next].name(),
                    "upstream lost: moving to the next");
                Ok(Next::Follow(next))
            }
            UpstreamError::OutOfRange(message) => {
                let next = self.version() + 1;
                // Behind us (a lagging or other upstream) is a lost one; only
                // an upstream that has pruned our next height is re-snapshot.
                let head = self.upstreams[self.current].head().await;
                match head {
                    Ok((head, oldest)) if next > head + 1 || next >= oldest => {
                        let other = (self.current + 1) % self.upstreams.len();
                        warn!(upstream = %name, head, next, error = %message,
                            "the upstream is behind the relay: moving to the next");
                        Ok(Next::Follow(other))
                    }
                    Err(e) => {
                        warn!(upstream = %name, error = %e, "upstream lost: moving to the next");
                        Ok(Next::Follow((self.current + 1) % self.upstreams.len()))
                    }
                    Ok((_, oldest)) if !self.config.resnapshot => bail!(
                        "upstream {name} no longer retains height {next} (its oldest is \
                         {oldest}) and [relay] resnapshot = false: stopping; take a snapshot \
                         by setting resnapshot = true, or start from an empty home"
                    ),
                    Ok((head, oldest)) => {
                        warn!(upstream = %name, next, oldest, head,
                            "the upstream no longer retains the relay's next height: taking a \
                             fresh snapshot (heights up to it will answer OUT_OF_RANGE here)");
                        self.status.resnapshotted();
                        Ok(Next::Snapshot)
                    }
                }
            }
        }
    }

    /// Replaces the relay's state by the upstream's snapshot.
    fn restore(
        &mut self,
        height: u64,
        entries: Vec<statestream::SourceWrite>,
        hashes: &UpstreamHashes,
    ) -> Result<()> {
        let name = self.upstreams[self.current].name().to_owned();
        let stores = self.replicated(&name, hashes)?;
        let snapshot = SourceSnapshot {
            height,
            entries,
            hashes: SourceHashes {
                stores,
                app_hash: None,
            },
        };
        let gap = self.ingest()?.restore(snapshot)?;
        info!(upstream = %name, height, ?gap, "snapshot restored: following from the next height");
        self.committed(height);
        Ok(())
    }

    /// The chain values of the stores the relay replicates, from the
    /// upstream's hashes.
    fn replicated(&self, name: &str, hashes: &UpstreamHashes) -> Result<Vec<(String, Hash)>> {
        if hashes.stores.is_empty() {
            bail!(
                "upstream {name} sends no store hashes (a statestream older than the relay?): a \
                 relay checks every block against them"
            );
        }
        let mut out = Vec::new();
        for (store, hash) in &hashes.stores {
            if !self.config.stores.is_empty() && !self.config.stores.contains(store) {
                continue;
            }
            let hash: Hash = hash.as_slice().try_into().with_context(|| {
                format!("upstream {name}: the hash of store {store} is not 32 bytes")
            })?;
            out.push((store.clone(), hash));
        }
        if let Some(missing) = self
            .config
            .stores
            .iter()
            .find(|s| !out.iter().any(|(n, _)| n == *s))
        {
            let streamed: Vec<&str> = hashes.stores.iter().map(|(s, _)| s.as_str()).collect();
            bail!(
                "[relay] stores: upstream {name} does not stream store {missing} (it streams {})",
                streamed.join(", ")
            );
        }
        Ok(out)
    }

    /// Checks and commits one block; `false` when it diverged.
    fn commit(
        &mut self,
        height: u64,
        time: Option<(i64, u32)>,
        writes: Vec<statestream::SourceWrite>,
        hashes: &UpstreamHashes,
    ) -> Result<bool> {
        let name = self.upstreams[self.current].name().to_owned();
        let stores = self.replicated(&name, hashes)?;
        // The upstream's app hash covers every store of its node: checked
        // when the relay replicates them all (the stream covers every store
        // when their hashes give its app hash).
        let streamed: Vec<(&str, Hash)> = stores.iter().map(|(s, h)| (s.as_str(), *h)).collect();
        let covers = stores.len() == hashes.stores.len()
            && hashes.app_hash.as_slice()
                == statestream_core::app_hash(streamed.iter().map(|(s, h)| (*s, h))).as_slice();
        let app_hash = if covers {
            Some(hashes.app_hash.as_slice().try_into()?)
        } else {
            None
        };
        let (time_seconds, time_nanos) = time.unwrap_or_default();
        let block = SourceBlock {
            height,
            meta: BlockMeta {
                time_seconds,
                time_nanos,
                source_app_hash: hashes.source_app_hash.clone(),
                ..BlockMeta::default()
            },
            writes,
        };
        let expected = SourceHashes { stores, app_hash };
        match self.ingest()?.commit_checked(block, &expected) {
            Ok(Ingested::Committed(info)) => {
                self.committed(info.version);
                Ok(true)
            }
            Ok(_) => Ok(true),
            Err(StreamError::BlockDiverged {
                height,
                store,
                expected,
                computed,
            }) => {
                error!(upstream = %name, height, store = %store, upstream_hash = %expected,
                    computed = %computed,
                    "block diverged from the upstream: stopped applying; serving nothing from \
                     this height on (UNAVAILABLE / 503) until restarted");
                Gate::process().set_diverged(height, &store);
                self.status.set_diverged(height, &store);
                self.status.set_ready(false);
                self.refresh();
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn committed(&mut self, height: u64) {
        self.status.set_height(height);
        self.height.send_replace(height);
        self.update_gate();
    }

    fn saw_head(&self, index: usize, head: u64) {
        let mut heads = self.heads.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = heads.get_mut(index) {
            *h = Some(h.map_or(head, |h| h.max(head)));
        }
    }

    /// Asks every upstream for its head, in the background.
    fn poll_heads(&self) {
        for (i, up) in self.upstreams.iter().enumerate() {
            let poll = up.head();
            let heads = Arc::clone(&self.heads);
            tokio::spawn(async move {
                let head = poll.await.ok().map(|(head, _)| head);
                let mut heads = heads.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(h) = heads.get_mut(i) {
                    // An upstream that does not answer has no known head.
                    *h = head;
                }
            });
        }
    }

    /// The gate, the pushed writes, the metrics; the upstream to move to
    /// when the one in use lags the best known head by too much.
    fn housekeeping(&mut self) -> Option<usize> {
        self.update_gate();
        self.forward_pushes();
        self.refresh();
        let heads = self
            .heads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let best = heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.map(|h| (i, h)))
            .max_by_key(|&(i, h)| (h, std::cmp::Reverse(i)))?;
        let mine = heads[self.current].unwrap_or(0);
        if best.1 > mine.saturating_add(self.config.max_upstream_lag_blocks) {
            warn!(upstream = %self.upstreams[self.current].name(), head = mine,
                best = %self.upstreams[best.0].name(), best_head = best.1,
                max_upstream_lag_blocks = self.config.max_upstream_lag_blocks,
                "the upstream in use lags: moving to the best one");
            return Some(best.0);
        }
        None
    }

    /// Opens or closes the serving gate by the lag behind the upstream in
    /// use (closed while its head is unknown).
    fn update_gate(&self) {
        if self.status.diverged().is_some() {
            return;
        }
        let head = self
            .heads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(self.current)
            .copied()
            .flatten();
        let height = self.status.height();
        let Some(head) = head else {
            Gate::process().set_lag(None, self.config.ready_lag_blocks);
            self.status.set_ready(false);
            return;
        };
        let head = head.max(height);
        self.status.set_upstream_head(head);
        Gate::process().set_source_head(head);
        let lag = head - height;
        let ready = lag <= self.config.ready_lag_blocks && height > 0;
        // Height 0: nothing to serve yet (before the first snapshot).
        Gate::process().set_lag((height > 0).then_some(lag), self.config.ready_lag_blocks);
        if ready != self.status.ready() {
            info!(
                height,
                upstream_head = head,
                lag,
                ready,
                "relay readiness changed"
            );
        }
        self.status.set_ready(ready);
    }

    /// Forwards each pushed write to the upstream in use with the relay's
    /// token; answers it once the relay holds the height that committed it.
    fn forward_pushes(&self) {
        if self.push.is_empty() {
            return;
        }
        let up = &self.upstreams[self.current];
        for write in self.push.drain().into_writes() {
            let forwarded = up.push(write.store.clone(), write.key.clone(), write.value.clone());
            let mut held = self.height.subscribe();
            tokio::spawn(async move {
                let height = match forwarded.await {
                    Ok(h) => h,
                    Err(reason) => return write.reject(reason),
                };
                match tokio::time::timeout(PUSH_WAIT, held.wait_for(|h| *h >= height)).await {
                    Ok(Ok(_)) => write.committed(height),
                    _ => write.reject(format!(
                        "committed upstream at height {height}, which this relay has not \
                         received yet"
                    )),
                }
            });
        }
    }

    /// The metrics, and the telemetry server on the current observer.
    fn refresh(&mut self) {
        let Some((server, metrics)) = self.telemetry.as_mut() else {
            return;
        };
        metrics.update(&self.status);
        if let Some(ingest) = self.ingest.as_ref() {
            server.follow(ingest);
        }
    }

    /// Closes the streamers and the store, then the telemetry server.
    fn close(&mut self) -> Result<()> {
        let closed = self.ingest.take().map(Ingest::close).transpose();
        if let Some((server, _)) = self.telemetry.as_mut() {
            server.stop();
        }
        closed?;
        Ok(())
    }
}
