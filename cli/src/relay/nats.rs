//! A JetStream stream as a relay's upstream (`nats://host:port?stream=NAME`
//! in `upstreams`, the connection options in `[relay.nats]`): the blocks a
//! node's `nats` streamer publishes, read from a height with
//! `statestream_nats::BlockFollower` on a thread of their own, given to
//! the relay loop as the same [`UpstreamEvent`]s a `serve` upstream gives,
//! with the hashes the node committed each block with.
//!
//! JetStream holds blocks, not state: an empty relay replays the stream
//! from block 1 (block 1's changes are the state at height 1, given as a
//! snapshot there), or, when a `serve` upstream is listed beside it, takes
//! its snapshot from that one ([`Upstream::snapshots`] is `false` here) and
//! comes back. A stream that no longer holds the relay's next height is
//! `OUT_OF_RANGE`, the re-snapshot case.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use statestream::SourceWrite;
use statestream_config::RelayNatsConfig;
use statestream_core::Records;
use statestream_nats::{
    BlockFollower, NatsError, NatsStreamerConfig, NatsUpstreamOptions, StreamBlock, StreamHeights,
};
use tokio::sync::mpsc;

use super::upstream::{Upstream, UpstreamError, UpstreamEvent, UpstreamFuture, UpstreamHashes};

/// How long the reader thread waits for a block before it looks at the
/// stop flag and the connection.
const WAIT: Duration = Duration::from_millis(200);
/// Blocks read ahead of the relay loop.
const READ_AHEAD: usize = 64;

type Event = Result<UpstreamEvent, UpstreamError>;

/// `[relay.nats]` as the `nats` streamer's options type.
pub fn options(c: &RelayNatsConfig) -> NatsUpstreamOptions {
    NatsUpstreamOptions {
        token: c.token.clone(),
        user: c.user.clone(),
        password: c.password.clone(),
        creds_file: c.creds_file.clone(),
        nkey_seed_file: c.nkey_seed_file.clone(),
        tls_ca_file: c.tls_ca_file.clone(),
        tls_cert_file: c.tls_cert_file.clone(),
        tls_key_file: c.tls_key_file.clone(),
        tls_required: c.tls_required,
        connect_timeout_ms: c.connect_timeout_ms,
        request_timeout_ms: c.request_timeout_ms,
    }
}

/// Checks `[relay.nats]` and every JetStream upstream with the `nats`
/// streamer's rules (`statestream relay` at start, `config check`).
pub fn check(relay: &statestream_config::RelayConfig) -> Result<(), String> {
    let o = options(&relay.nats);
    o.check()
        .map_err(|(key, message)| format!("[relay.nats] {key}: {message}"))?;
    for u in relay
        .upstreams
        .iter()
        .filter(|u| statestream_nats::is_nats_upstream(u))
    {
        statestream_nats::upstream_config(u, &o).map_err(|e| format!("[relay] upstreams: {e}"))?;
    }
    Ok(())
}

/// A JetStream stream followed by height.
pub struct NatsUpstream {
    /// The URL without credentials.
    name: String,
    config: NatsStreamerConfig,
    home: PathBuf,
    events: Option<mpsc::Receiver<Event>>,
    /// Tells the reader thread of the last `start` to end.
    stop: Arc<AtomicBool>,
    /// The connection [`head`](Upstream::head) asks on, made on first use.
    heights: Arc<Mutex<Option<Arc<StreamHeights>>>>,
}

impl NatsUpstream {
    /// The upstream `url` with the `[relay.nats]` options; relative paths
    /// under `home`.
    pub fn new(url: &str, nats: &RelayNatsConfig, home: &Path) -> anyhow::Result<NatsUpstream> {
        let config = statestream_nats::upstream_config(url, &options(nats))
            .map_err(|e| anyhow::anyhow!("[relay] upstreams: {e}"))?;
        Ok(NatsUpstream {
            name: statestream_nats::display_upstream(url),
            config,
            home: home.to_path_buf(),
            events: None,
            stop: Arc::new(AtomicBool::new(false)),
            heights: Arc::new(Mutex::new(None)),
        })
    }
}

impl Drop for NatsUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// A follower's error as the relay acts on it.
fn classify(name: &str, from: Option<u64>, e: NatsError) -> UpstreamError {
    let text = format!("upstream {name}: {e}");
    match e {
        NatsError::HeightGone { .. } if from.is_none() => UpstreamError::Refused(format!(
            "{text}: an empty relay replays a JetStream stream from block 1; list a serve \
             upstream beside it to take its first snapshot from"
        )),
        NatsError::HeightGone { .. } => UpstreamError::OutOfRange(text),
        NatsError::File { .. } | NatsError::BadUrl { .. } => UpstreamError::Refused(text),
        NatsError::Unreachable { ref reason, .. } if reason.contains("Authorization Violation") => {
            UpstreamError::Refused(text)
        }
        _ => UpstreamError::Lost(text),
    }
}

/// The relay's event for one block of the stream: its records as writes,
/// with the node's hashes (those of the stores the stream carries). With
/// `as_snapshot` (block 1 of an empty relay), the state at its height.
fn event(name: &str, block: &StreamBlock, as_snapshot: bool) -> Event {
    let bad = |reason: String| {
        UpstreamError::Lost(format!("upstream {name}: block {}: {reason}", block.height))
    };
    let meta = block
        .frame
        .meta
        .as_ref()
        .ok_or_else(|| bad("no metadata".into()))?;
    let stores = meta
        .store_hashes
        .iter()
        .filter(|h| meta.streamed_stores.contains(&h.store_key))
        .map(|h| (h.store_key.clone(), h.hash.clone()))
        .collect();
    let hashes = UpstreamHashes {
        app_hash: meta
            .commit
            .as_ref()
            .map(|c| c.app_hash.clone())
            .unwrap_or_default(),
        stores,
        source_app_hash: meta.source_app_hash.clone(),
    };
    let mut writes = Vec::new();
    for r in Records::new(&block.frame.records) {
        let r = r.map_err(|e| bad(e.to_string()))?;
        // On an empty state a delete changes nothing.
        if as_snapshot && r.value.is_none() {
            continue;
        }
        writes.push(SourceWrite {
            store: r.store.to_owned(),
            key: r.key.to_vec(),
            value: r.value.map(<[u8]>::to_vec),
        });
    }
    let time = Some((meta.time_seconds, meta.time_nanos));
    Ok(if as_snapshot {
        UpstreamEvent::Snapshot {
            height: block.height,
            entries: writes,
            hashes,
        }
    } else {
        UpstreamEvent::Block {
            height: block.height,
            time,
            writes,
            hashes,
        }
    })
}

/// The reader thread of one `start`: blocks from `from` (`None`: from
/// block 1, as a snapshot) into `tx` until `stop`, an error, or the relay
/// dropping the receiver. A server that is away longer than the connect
/// timeout is a lost upstream (the relay may fail over); shorter outages
/// are the follower's to ride through.
fn read(
    name: String,
    config: NatsStreamerConfig,
    home: PathBuf,
    from: Option<u64>,
    stop: Arc<AtomicBool>,
    tx: mpsc::Sender<Event>,
) {
    let mut follower = match BlockFollower::open(&config, Some(&home), from.unwrap_or(1)) {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.blocking_send(Err(classify(&name, from, e)));
            return;
        }
    };
    let patience = Duration::from_millis(config.connect_timeout_ms).max(WAIT);
    let mut away_since: Option<Instant> = None;
    let mut first = from.is_none();
    while !stop.load(Ordering::Acquire) {
        let sent = match follower.next(WAIT) {
            Ok(Some(block)) => {
                away_since = None;
                let e = event(&name, &block, first);
                first = false;
                let failed = e.is_err();
                tx.blocking_send(e).is_ok() && !failed
            }
            Ok(None) if follower.is_connected() => {
                away_since = None;
                true
            }
            Ok(None) => {
                let since = *away_since.get_or_insert_with(Instant::now);
                if since.elapsed() < patience {
                    continue;
                }
                let last = follower
                    .last_error()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default();
                let _ = tx.blocking_send(Err(UpstreamError::Lost(format!(
                    "upstream {name}: not connected for {} ms{last}",
                    patience.as_millis()
                ))));
                false
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(classify(&name, from, e)));
                false
            }
        };
        if !sent {
            return;
        }
    }
}

impl Upstream for NatsUpstream {
    fn name(&self) -> &str {
        &self.name
    }

    fn snapshots(&self) -> bool {
        false
    }

    fn start(&mut self, from: Option<u64>) -> UpstreamFuture<'_, Result<(), UpstreamError>> {
        // The reader of the last start ends at its next look at the flag
        // (or at once when it finds its receiver gone).
        self.stop.store(true, Ordering::Release);
        let stop = Arc::new(AtomicBool::new(false));
        self.stop = Arc::clone(&stop);
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        self.events = Some(rx);
        let (name, config, home) = (self.name.clone(), self.config.clone(), self.home.clone());
        let spawned = std::thread::Builder::new()
            .name("relay-nats".to_owned())
            .spawn(move || read(name, config, home, from, stop, tx));
        let name = self.name.clone();
        Box::pin(async move {
            spawned.map(|_| ()).map_err(|e| {
                UpstreamError::Lost(format!(
                    "upstream {name}: cannot start its reader thread: {e}"
                ))
            })
        })
    }

    fn next(&mut self) -> UpstreamFuture<'_, Result<UpstreamEvent, UpstreamError>> {
        Box::pin(async move {
            let name = self.name.clone();
            let Some(events) = self.events.as_mut() else {
                return Err(UpstreamError::Lost(format!("upstream {name}: not started")));
            };
            match events.recv().await {
                Some(event) => event,
                None => {
                    self.events = None;
                    Err(UpstreamError::Lost(format!(
                        "upstream {name}: its reader ended"
                    )))
                }
            }
        })
    }

    fn head(&self) -> UpstreamFuture<'static, Result<(u64, u64), UpstreamError>> {
        let (name, config, home) = (self.name.clone(), self.config.clone(), self.home.clone());
        let slot = Arc::clone(&self.heights);
        Box::pin(async move {
            let asked = tokio::task::spawn_blocking(move || {
                let mut held = slot.lock().unwrap_or_else(PoisonError::into_inner);
                let heights = match held.as_ref() {
                    Some(h) => Arc::clone(h),
                    None => {
                        let h = Arc::new(StreamHeights::open(&config, Some(&home))?);
                        *held = Some(Arc::clone(&h));
                        h
                    }
                };
                drop(held);
                heights.heights()
            })
            .await
            .map_err(|e| UpstreamError::Lost(format!("upstream {name}: {e}")))?;
            match asked {
                // The oldest height it can give: its first block (an empty
                // stream: whatever comes next).
                Ok((first, last)) => {
                    let head = last.unwrap_or(0);
                    Ok((head, first.unwrap_or(head + 1)))
                }
                Err(e) => Err(classify(&name, Some(0), e)),
            }
        })
    }

    fn push(
        &self,
        _store: String,
        _key: Vec<u8>,
        _value: Option<Vec<u8>>,
    ) -> UpstreamFuture<'static, Result<u64, String>> {
        let name = self.name.clone();
        Box::pin(async move {
            Err(format!(
                "upstream {name}: a JetStream upstream takes no pushed writes (PushUpdate is \
                 forwarded to serve upstreams only)"
            ))
        })
    }
}
