//! The `serve` figures of `statestream bench`: what a subscription hub
//! with many subscribers costs the commit, how soon a subscriber holds a
//! block, and how fast a snapshot streams compared with a plain scan.

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use statestream::{BlockMeta, DeliveryManager, StateReader, StreamerContext, StreamerSetup};
use statestream_client::proto::v1::{
    self, state_stream_client::StateStreamClient, subscribe_request::Start,
};
use statestream_config::StreamerOptions;
use statestream_serve::{ServeConfig, ServeHandle};
use statestream_store::{CommitInput, KvStore, MultiStore, StoreKey, StoreOptions};

use super::{
    Figure, Sizes, alternate, quantile, timed_managed_commits, timed_store_commits, write_block,
};
use crate::workload::Rng;

/// Subscribers of the commit-overhead figure.
const SUBSCRIBERS: usize = 100;

/// The subscribers' runtime, its threads at nice 19.
pub(super) fn client_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-clients")
        .on_thread_start(|| lower_priority(19))
        .enable_all()
        .build()
        .context("cannot start the clients' runtime")
}

/// Lowers the calling thread's CPU priority to `nice` (Linux: per
/// thread): the bench's subscribers stand for consumers on other machines,
/// so they take the CPU the node leaves, not the committing thread's.
pub(super) fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority and gettid have no memory effects; an error only
    // leaves the priority as it was.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice);
    }
}

/// A `serve` streamer on a loopback port the OS chooses, on `store`.
fn serve_manager(
    store: &mut MultiStore,
    stores: &[StoreKey],
) -> Result<(DeliveryManager, ServeHandle)> {
    serve_manager_with(
        store,
        stores,
        ServeConfig::default().heartbeat_ms,
        Front::Grpc,
    )
}

/// Which front-end the subscribers of a figure use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Front {
    /// `statestream.v1.StateStream` over gRPC.
    Grpc,
    /// `GET /stream` (Server-Sent Events) over HTTP.
    Sse,
}

fn serve_manager_with(
    store: &mut MultiStore,
    stores: &[StoreKey],
    heartbeat_ms: u64,
    front: Front,
) -> Result<(DeliveryManager, ServeHandle)> {
    serve_manager_access(store, stores, heartbeat_ms, front, Access::Open).map(|(m, h, _)| (m, h))
}

/// Who the latency figures' subscribers are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// No token: every request admitted.
    Open,
    /// The streamer's single `token`, sent by every subscriber.
    Token,
    /// One credential per subscriber, each scoped to a prefix set of its
    /// own (every subscriber's filter differs).
    Credentials(usize),
}

/// The token of [`Access::Token`].
const BENCH_TOKEN: &str = "bench-token";

/// The bearers subscribers send, and the credentials' installation (kept
/// while the streamer runs).
type Bearers = (Vec<String>, Option<statestream_access::Installation>);

/// [`serve_manager_with`] under `access`.
fn serve_manager_access(
    store: &mut MultiStore,
    stores: &[StoreKey],
    heartbeat_ms: u64,
    front: Front,
    access: Access,
) -> Result<(DeliveryManager, ServeHandle, Bearers)> {
    let reader: Arc<dyn StateReader> = Arc::new(store.reader());
    let (bearers, installation) = match access {
        Access::Open => (Vec::new(), None),
        Access::Token => (vec![BENCH_TOKEN.to_string()], None),
        Access::Credentials(n) => {
            let registry = statestream_access::Registry::in_memory();
            let mut secrets = Vec::with_capacity(n);
            for i in 0..n {
                // A quarter of the first-byte space, shifted per
                // subscriber: a block of 64 random keys touches it almost
                // surely, and no two subscribers share a filter.
                let prefixes = (0..64).map(|j| vec![((i + j * 4) % 256) as u8]).collect();
                let (_, secret) = registry.create(statestream_access::NewCredential {
                    id: format!("bench-{i}"),
                    scopes: vec![statestream_access::Scope {
                        store: statestream_access::ANY_STORE.into(),
                        prefixes,
                    }],
                    push: false,
                    subscribe_webhooks: false,
                    max_streams: Some(1),
                    expires_at: None,
                    description: String::new(),
                })?;
                secrets.push(secret.expose().to_string());
            }
            (
                secrets,
                Some(statestream_access::install(&reader, registry)),
            )
        }
    };
    let ctx = StreamerContext {
        name: "serve",
        stores,
        all_stores: stores,
        home: std::path::Path::new("."),
        reader: Some(&reader),
        shutdown: &statestream::Shutdown::default(),
        push: None,
    };
    let (grpc_address, http_address) = match front {
        Front::Grpc => (Some("127.0.0.1:0".into()), None),
        Front::Sse => (None, Some("127.0.0.1:0".into())),
    };
    let config = ServeConfig {
        grpc_address,
        http_address,
        retain_blocks: 64,
        heartbeat_ms,
        token: if access == Access::Token {
            BENCH_TOKEN.to_string()
        } else {
            String::new()
        },
        ..ServeConfig::default()
    };
    let streamer = config
        .build(&ctx, &StreamerOptions::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let handle = streamer.handle();
    let setup = StreamerSetup::new("serve", stores);
    let manager = DeliveryManager::builder()
        .streamer(setup, Box::new(streamer))
        .start(store)?;
    Ok((manager, handle, (bearers, installation)))
}

/// Per subscriber, the last height whose end it received.
pub(super) type Heights = Vec<Arc<AtomicU64>>;
/// Per subscriber, each block end it received and when.
pub(super) type Arrivals = Vec<Arc<Mutex<Vec<(u64, Instant)>>>>;

/// Starts `n` live subscribers of `front` on every store.
fn connect(
    front: Front,
    rt: &tokio::runtime::Runtime,
    handle: &ServeHandle,
    n: usize,
) -> Result<(Heights, Arrivals)> {
    connect_as(front, rt, handle, n, &[])
}

/// [`connect`], subscriber `i` sending `bearers[i % len]` (none when
/// empty).
fn connect_as(
    front: Front,
    rt: &tokio::runtime::Runtime,
    handle: &ServeHandle,
    n: usize,
    bearers: &[String],
) -> Result<(Heights, Arrivals)> {
    match front {
        Front::Grpc => {
            let address = handle
                .grpc_address()
                .context("the serve streamer has no gRPC address")?;
            subscribers(rt, &format!("http://{address}"), n, bearers)
        }
        Front::Sse => sse_subscribers(handle, n, bearers),
    }
}

/// What a bench subscriber decodes of a `SubscribeResponse`: the block's
/// height and whether it ends there (field 2, `BlockChanges` fields 1 and
/// 4). The changes are skipped by length, not decoded: the figures measure
/// what serving costs the node, and a real consumer decodes on its own
/// machine. docs/performance.md gives the figure with decoding clients.
#[derive(Clone, PartialEq, prost::Message)]
struct BlockEnvelope {
    #[prost(message, optional, tag = "2")]
    block: Option<BlockMark>,
}

/// The height and end mark of a `statestream.v1.BlockChanges`.
#[derive(Clone, PartialEq, prost::Message)]
struct BlockMark {
    #[prost(uint64, tag = "1")]
    height: u64,
    #[prost(bool, tag = "4")]
    end: bool,
}

/// The snapshot figure's client: sends a `SnapshotRequest` and reads each
/// `SnapshotChunk` as how many entries it holds, counting its field-2
/// values in the message bytes (nothing decoded or copied: the figure
/// measures the node's snapshot; a consumer decodes on its own machine).
#[derive(Debug, Clone, Copy, Default)]
struct EntryCounter;

impl tonic::codec::Codec for EntryCounter {
    type Encode = v1::SnapshotRequest;
    type Decode = usize;
    type Encoder = tonic_prost::ProstEncoder<v1::SnapshotRequest>;
    type Decoder = EntryCounter;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        EntryCounter
    }
}

impl tonic::codec::Decoder for EntryCounter {
    type Item = usize;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<usize>, tonic::Status> {
        use prost::bytes::Buf;
        let message = src.copy_to_bytes(src.remaining());
        count_entries(&message)
            .map(Some)
            .ok_or_else(|| tonic::Status::internal("a SnapshotChunk that does not parse"))
    }
}

/// How many field-2 (`entries`) values a `SnapshotChunk`'s bytes hold;
/// `None` when they do not parse.
fn count_entries(mut bytes: &[u8]) -> Option<usize> {
    use prost::encoding::decode_varint;
    let mut n = 0;
    while !bytes.is_empty() {
        let key = decode_varint(&mut bytes).ok()?;
        let skip = match key & 7 {
            0 => {
                decode_varint(&mut bytes).ok()?;
                0
            }
            1 => 8,
            2 => usize::try_from(decode_varint(&mut bytes).ok()?).ok()?,
            5 => 4,
            _ => return None,
        };
        if key >> 3 == 2 {
            n += 1;
        }
        bytes = bytes.get(skip..)?;
    }
    Some(n)
}

/// `StateStream/Subscribe` (live, every store), decoding only each
/// message's [`BlockEnvelope`].
async fn subscribe_envelopes(
    address: String,
    bearer: Option<String>,
) -> Result<tonic::Streaming<BlockEnvelope>> {
    let channel = tonic::transport::Endpoint::new(address)?.connect().await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let codec = tonic_prost::ProstCodec::<v1::SubscribeRequest, BlockEnvelope>::default();
    let mut request = tonic::Request::new(v1::SubscribeRequest {
        filter: None,
        start: Some(Start::Live(v1::StartLive {})),
    });
    if let Some(b) = bearer {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {b}").parse()?);
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/statestream.v1.StateStream/Subscribe",
    );
    Ok(grpc
        .server_streaming(request, path, codec)
        .await?
        .into_inner())
}

/// Starts `n` live subscribers on every store; each records, per block
/// end, the height and when it arrived. Returns once all are subscribed.
pub(super) fn subscribers(
    rt: &tokio::runtime::Runtime,
    address: &str,
    n: usize,
    bearers: &[String],
) -> Result<(Heights, Arrivals)> {
    let mut heights = Vec::new();
    let mut arrivals = Vec::new();
    for i in 0..n {
        let bearer = (!bearers.is_empty()).then(|| bearers[i % bearers.len()].clone());
        let height = Arc::new(AtomicU64::new(0));
        let arrived = Arc::new(Mutex::new(Vec::new()));
        let (h, a) = (Arc::clone(&height), Arc::clone(&arrived));
        let mut stream = rt.block_on(subscribe_envelopes(address.to_string(), bearer))?;
        rt.spawn(async move {
            while let Ok(Some(m)) = stream.message().await {
                if let Some(b) = m.block
                    && b.end
                {
                    let now = Instant::now();
                    h.store(b.height, Ordering::Release);
                    if let Ok(mut a) = a.lock() {
                        a.push((b.height, now));
                    }
                }
            }
        });
        heights.push(height);
        arrivals.push(arrived);
    }
    Ok((heights, arrivals))
}

/// Starts `n` SSE clients of `GET /stream` (every store), one thread each
/// over plain HTTP/1.0 (the body is the raw event stream), recording each
/// block's `id:` and when it arrived. Returns once each holds its `put`.
fn sse_subscribers(
    handle: &ServeHandle,
    n: usize,
    bearers: &[String],
) -> Result<(Heights, Arrivals)> {
    use std::io::{BufRead, BufReader, Write};
    let address = handle
        .http_address()
        .context("the serve streamer has no HTTP address")?;
    let mut heights = Vec::new();
    let mut arrivals = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    for i in 0..n {
        let height = Arc::new(AtomicU64::new(0));
        let arrived = Arc::new(Mutex::new(Vec::new()));
        let (h, a) = (Arc::clone(&height), Arc::clone(&arrived));
        let mut stream = std::net::TcpStream::connect(address)
            .with_context(|| format!("cannot connect to {address}"))?;
        let authorization = if bearers.is_empty() {
            String::new()
        } else {
            format!("Authorization: Bearer {}\r\n", bearers[i % bearers.len()])
        };
        write!(
            stream,
            "GET /stream HTTP/1.0\r\nHost: {address}\r\n{authorization}\r\n"
        )
        .context("cannot send the SSE request")?;
        let ready = ready_tx.clone();
        std::thread::Builder::new()
            .name(format!("sse-client-{i}"))
            .spawn(move || {
                lower_priority(19);
                let mut ready = Some(ready);
                // Lines into one reused buffer, only `id:` parsed: what
                // a consumer does with the events is its own machine's
                // cost (see `BlockEnvelope`).
                let mut reader = BufReader::with_capacity(64 * 1024, stream);
                let mut line = Vec::with_capacity(256);
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let Some(id) = line.strip_prefix(b"id: ") else {
                        continue;
                    };
                    let Some(height) = std::str::from_utf8(id)
                        .ok()
                        .and_then(|id| id.trim().parse::<u64>().ok())
                    else {
                        continue;
                    };
                    let now = Instant::now();
                    h.store(height, Ordering::Release);
                    if let Some(r) = ready.take() {
                        // The put: the state, not a block.
                        let _ = r.send(());
                        continue;
                    }
                    if let Ok(mut a) = a.lock() {
                        a.push((height, now));
                    }
                }
            })
            .context("cannot start an SSE client thread")?;
        heights.push(height);
        arrivals.push(arrived);
    }
    for _ in 0..n {
        ready_rx
            .recv_timeout(Duration::from_secs(120))
            .context("an SSE client did not receive its put within two minutes")?;
    }
    Ok((heights, arrivals))
}

pub(super) fn wait_received(heights: &[Arc<AtomicU64>], height: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while heights.iter().any(|h| h.load(Ordering::Acquire) < height) {
        if Instant::now() > deadline {
            bail!("the subscribers did not receive block {height} within two minutes");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(())
}

/// `serve_commit_overhead`: the commit call with a `serve` streamer
/// (async) and 100 live subscribers on every store, over the store's own
/// commit; same blocks, on disk without fsync. After each round the
/// subscribers are let receive every block, untimed.
pub(super) fn commit_overhead(
    sizes: &Sizes,
    stores: &[StoreKey],
    tmp: &std::path::Path,
    front: Front,
) -> Result<Figure> {
    std::fs::create_dir_all(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let options = StoreOptions {
        fsync: false,
        ..StoreOptions::default()
    };
    let mut alone = MultiStore::open(&tmp.join("alone.redb"), stores, options.clone())?;
    let mut served = MultiStore::open(&tmp.join("served.redb"), stores, options)?;
    let (mut manager, handle) = serve_manager_with(
        &mut served,
        stores,
        ServeConfig::default().heartbeat_ms,
        front,
    )?;
    let rt = client_runtime()?;
    let (heights, _) = connect(front, &rt, &handle, SUBSCRIBERS)?;
    let (mut rng_alone, mut rng_served) = (Rng::new(7), Rng::new(7));
    let blocks = sizes.commit_blocks;
    let m = alternate(
        sizes.rounds,
        |_| {
            let secs = timed_managed_commits(
                &mut manager,
                &mut served,
                stores,
                &mut rng_served,
                sizes.writes,
                blocks,
            )?;
            wait_received(&heights, served.version())?;
            Ok(secs)
        },
        |_| timed_store_commits(&mut alone, stores, &mut rng_alone, sizes.writes, blocks),
    )?;
    manager.close(&mut served)?;
    drop(rt);
    served.close()?;
    alone.close()?;
    let per_block_ms = |secs: f64| secs * 1000.0 / blocks as f64;
    Ok(Figure {
        name: match front {
            Front::Grpc => "serve_commit_overhead",
            Front::Sse => "sse_commit_overhead",
        },
        value: per_block_ms(m.a),
        unit: "ms/block",
        ratio: Some(m.ratio),
        ratio_quartiles: Some(m.ratio_quartiles),
        baseline: Some(per_block_ms(m.b)),
    })
}

/// `serve_latency_ms`: from `commit` returning to a subscriber holding the
/// block's end, p50 and p99 over every (block, subscriber), with 10 and 100
/// live subscribers; blocks of 64 writes every 20 ms (in memory).
///
/// With [`Front::Sse`]: `sse_latency_ms_p50`/`_p99`, 100 SSE clients
/// holding the block's last event (the one with `id:`).
///
/// Those figures' subscribers send the streamer's single `token`; the
/// `_credentials` figures, measured in the same run, give each of 100
/// subscribers a credential of its own scoped to its own prefixes (no
/// filter in the request: the scopes are the selection).
pub(super) fn latency(sizes: &Sizes, stores: &[StoreKey], front: Front) -> Result<Vec<Figure>> {
    let blocks: u64 = if sizes.rounds > 3 { 300 } else { 20 };
    let mut out = Vec::new();
    let cases: &[(usize, Access, &'static str, &'static str)] = match front {
        Front::Grpc => &[
            (
                10,
                Access::Token,
                "serve_latency_ms_p50_10",
                "serve_latency_ms_p99_10",
            ),
            (
                100,
                Access::Token,
                "serve_latency_ms_p50_100",
                "serve_latency_ms_p99_100",
            ),
            (
                100,
                Access::Credentials(100),
                "serve_latency_ms_p50_100_credentials",
                "serve_latency_ms_p99_100_credentials",
            ),
        ],
        Front::Sse => &[
            (
                100,
                Access::Token,
                "sse_latency_ms_p50",
                "sse_latency_ms_p99",
            ),
            (
                100,
                Access::Credentials(100),
                "sse_latency_ms_p50_credentials",
                "sse_latency_ms_p99_credentials",
            ),
        ],
    };
    for &(n, access, p50_name, p99_name) in cases {
        let mut store = MultiStore::in_memory(stores)?;
        let (mut manager, handle, (bearers, _installation)) = serve_manager_access(
            &mut store,
            stores,
            ServeConfig::default().heartbeat_ms,
            front,
            access,
        )?;
        let rt = client_runtime()?;
        let (heights, arrivals) = connect_as(front, &rt, &handle, n, &bearers)?;
        let mut rng = Rng::new(11);
        let mut committed = Vec::new();
        let mut next = Instant::now();
        for _ in 0..blocks {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            next += Duration::from_millis(20);
            write_block(&mut store, stores, &mut rng, 64)?;
            let info = manager.commit(&mut store, BlockMeta::default())?;
            committed.push((info.version, Instant::now()));
        }
        wait_received(&heights, store.version())?;
        let mut ms = Vec::new();
        for a in &arrivals {
            let a = a
                .lock()
                .map_err(|_| anyhow::anyhow!("a subscriber panicked"))?;
            for (h, at) in a.iter() {
                if let Some((_, c)) = committed.iter().find(|(ch, _)| ch == h) {
                    ms.push(at.saturating_duration_since(*c).as_secs_f64() * 1000.0);
                }
            }
        }
        manager.close(&mut store)?;
        drop(rt);
        if ms.is_empty() {
            bail!("no block reached a subscriber");
        }
        for (name, p) in [(p50_name, 0.5), (p99_name, 0.99)] {
            out.push(Figure {
                name,
                value: quantile(&ms, p),
                unit: "ms",
                ratio: None,
                ratio_quartiles: None,
                baseline: None,
            });
        }
    }
    Ok(out)
}

/// `snapshot_vs_scan`: a `Snapshot` call over gRPC (every store, to one
/// client) over a plain range scan of the same stores from a read
/// snapshot of the store, as throughputs (keys per second).
pub(super) fn snapshot_vs_scan(sizes: &Sizes, stores: &[StoreKey]) -> Result<Figure> {
    let keys = if sizes.rounds > 3 { 200_000 } else { 20_000 };
    let mut store = MultiStore::in_memory(stores)?;
    let mut rng = Rng::new(3);
    for _ in 0..keys / 10_000 {
        write_block(&mut store, stores, &mut rng, 10_000)?;
        store.commit_block(CommitInput::new().prune_below(store.version() + 1))?;
    }
    let (manager, handle) = serve_manager(&mut store, stores)?;
    let rt = client_runtime()?;
    let address = format!(
        "http://{}",
        handle
            .grpc_address()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let channel = rt.block_on(tonic::transport::Endpoint::new(address)?.connect())?;
    let grpc = tonic::client::Grpc::new(channel);
    let reader = store.reader();
    let m = alternate(
        sizes.rounds,
        |_| {
            let started = Instant::now();
            let mut grpc = grpc.clone();
            // On the nice-19 runtime, as the subscribers: the reader stands
            // for a consumer on another machine.
            let read = rt.spawn(async move {
                grpc.ready().await?;
                let codec = EntryCounter;
                let path = tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/statestream.v1.StateStream/Snapshot",
                );
                let request = tonic::Request::new(v1::SnapshotRequest { filter: None });
                let mut s = grpc
                    .server_streaming(request, path, codec)
                    .await?
                    .into_inner();
                let mut n = 0usize;
                while let Some(entries) = s.message().await? {
                    n += entries;
                }
                anyhow::Ok(n)
            });
            let n = rt.block_on(read)??;
            if n != keys {
                bail!("the snapshot gave {n} keys, expected {keys}");
            }
            Ok(started.elapsed().as_secs_f64())
        },
        |_| {
            let started = Instant::now();
            let snap = reader.snapshot()?;
            let mut n = 0usize;
            for s in stores {
                for kv in snap.range(s, Bound::Unbounded, Bound::Unbounded)? {
                    std::hint::black_box(kv?);
                    n += 1;
                }
            }
            if n != keys {
                bail!("the scan gave {n} keys, expected {keys}");
            }
            Ok(started.elapsed().as_secs_f64())
        },
    )?;
    drop(manager);
    drop(rt);
    let (ratio, quartiles) = m.inverted();
    let kps = |secs: f64| keys as f64 / secs / 1000.0;
    Ok(Figure {
        name: "snapshot_vs_scan",
        value: kps(m.a),
        unit: "k keys/s",
        ratio: Some(ratio),
        ratio_quartiles: Some(quartiles),
        baseline: Some(kps(m.b)),
    })
}

/// The node's resident memory (`VmRSS`), in kB.
fn rss_kb() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")
}

/// `serve_stalled_rss_mb`: the process's resident memory after 10,000
/// blocks (64 writes each, over a fixed set of keys so that the store does
/// not grow) with one subscriber that subscribed and never reads (kept
/// connected: a 10-minute heartbeat, so no stall timeout), over the same
/// after 2,000 blocks. Flat means a ratio near 1.
pub(super) fn stalled_rss(
    sizes: &Sizes,
    stores: &[StoreKey],
    tmp: &std::path::Path,
) -> Result<Figure> {
    let (early, total) = if sizes.rounds > 3 {
        (2_000, 10_000)
    } else {
        (200, 1_000)
    };
    std::fs::create_dir_all(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let options = StoreOptions {
        fsync: false,
        ..StoreOptions::default()
    };
    let mut store = MultiStore::open(&tmp.join("stalled.redb"), stores, options)?;
    let (mut manager, handle) = serve_manager_with(&mut store, stores, 600_000, Front::Grpc)?;
    let rt = client_runtime()?;
    let address = format!(
        "http://{}",
        handle
            .grpc_address()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let _stalled = rt.block_on(async move {
        let mut c = StateStreamClient::connect(address).await?;
        let s = c
            .subscribe(v1::SubscribeRequest {
                filter: None,
                start: Some(Start::Live(v1::StartLive {})),
            })
            .await?
            .into_inner();
        anyhow::Ok(s)
    })?;
    let mut rng = Rng::new(5);
    let mut value = [0u8; 100];
    let mut early_kb = 0;
    for height in 1..=total {
        let mut tx = store.cache();
        for i in 0..64usize {
            let key = format!("key/{:04}", (height as usize * 64 + i) % 1_000);
            rng.fill(&mut value);
            tx.set(&stores[i % stores.len()], key.as_bytes(), &value)?;
        }
        tx.write()?;
        manager.commit(&mut store, BlockMeta::default())?;
        if height == early {
            early_kb = rss_kb()?;
        }
    }
    let end_kb = rss_kb()?;
    if handle.hub().subscribers() != 1 {
        bail!("the stalled subscriber was disconnected: the figure measures nothing");
    }
    manager.close(&mut store)?;
    drop(rt);
    store.close()?;
    Ok(Figure {
        name: "serve_stalled_rss_mb",
        value: end_kb as f64 / 1024.0,
        unit: "MB",
        ratio: Some(end_kb as f64 / early_kb.max(1) as f64),
        ratio_quartiles: None,
        baseline: Some(early_kb as f64 / 1024.0),
    })
}
