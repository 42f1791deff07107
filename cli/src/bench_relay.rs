//! The relay figures of `statestream bench`: how soon a client of a relay
//! holds a block, what a relay saves the node's serve threads, and what
//! an idle SSE subscriber costs a relay. Each compares, in one run, the
//! relayed path with the direct one (the relay is a `statestream relay`
//! process of its own, so that its CPU and memory are not the node's).

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use statestream::{BlockMeta, DeliveryManager, StateReader, StreamerContext, StreamerSetup};
use statestream_config::StreamerOptions;
use statestream_serve::{ServeConfig, ServeHandle};
use statestream_store::{MultiStore, StoreKey};

use super::serve::{Arrivals, client_runtime, lower_priority, subscribers, wait_received};
use super::{Figure, Sizes, WARM_UP, median, quantile, write_block};
use crate::workload::Rng;

/// Clients of the latency and CPU figures, on the relay or on the node.
const CLIENTS: usize = 100;

/// Blocks committed before the relay starts (its snapshot has something
/// to hold) and before anything is measured.
const WARM_BLOCKS: u64 = 3;

/// How long the relay and its clients get to be ready.
const READY_WITHIN: Duration = Duration::from_secs(120);

/// A `serve` streamer named `name` (its threads are `serve-<name>` and
/// `stream-<name>`) on `store`, gRPC on a loopback port the OS chooses.
fn named_serve(
    store: &mut MultiStore,
    stores: &[StoreKey],
    name: &'static str,
) -> Result<(DeliveryManager, ServeHandle)> {
    let reader: Arc<dyn StateReader> = Arc::new(store.reader());
    let ctx = StreamerContext {
        name,
        stores,
        all_stores: stores,
        home: Path::new("."),
        reader: Some(&reader),
        shutdown: &statestream::Shutdown::default(),
        push: None,
    };
    let config = ServeConfig {
        grpc_address: Some("127.0.0.1:0".into()),
        retain_blocks: 256,
        ..ServeConfig::default()
    };
    let streamer = config
        .build(&ctx, &StreamerOptions::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let handle = streamer.handle();
    let manager = DeliveryManager::builder()
        .streamer(StreamerSetup::new(name, stores), Box::new(streamer))
        .start(store)?;
    Ok((manager, handle))
}

fn grpc_url(handle: &ServeHandle) -> Result<String> {
    let address = handle
        .grpc_address()
        .context("the serve streamer has no gRPC address")?;
    Ok(format!("http://{address}"))
}

/// A `statestream relay` process, killed when dropped (also on an error),
/// with its log lines kept.
struct Relay {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Relay {
    /// Starts a relay in `home` following `upstream`, serving gRPC and
    /// SSE on loopback ports the OS chooses, to `max_connections`
    /// connections and as many subscribers.
    fn start(
        home: &Path,
        upstream: &str,
        heartbeat_ms: u64,
        max_connections: usize,
    ) -> Result<Relay> {
        std::fs::create_dir_all(home.join("config"))
            .with_context(|| format!("cannot create {}", home.display()))?;
        let toml = format!(
            "[store]\nstreamers = [\"serve\"]\n\n[streamers.serve]\ntype = \"serve\"\nkeys = [\"*\"]\n\
             grpc_address = \"127.0.0.1:0\"\nhttp_address = \"127.0.0.1:0\"\n\
             heartbeat_ms = {heartbeat_ms}\nmax_connections = {max_connections}\n\
             max_subscribers = {max_connections}\n\n\
             [relay]\nupstreams = [\"{upstream}\"]\n"
        );
        std::fs::write(home.join("config/app.toml"), toml)
            .with_context(|| format!("cannot write the relay's app.toml in {}", home.display()))?;
        let exe = std::env::current_exe().context("cannot find the statestream binary")?;
        let mut child = Command::new(exe)
            .arg("relay")
            .arg("--home")
            .arg(home)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start statestream relay")?;
        let stderr = child.stderr.take().context("the relay's stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        std::thread::Builder::new()
            .name("bench-relay-log".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            })
            .context("cannot start the relay's log reader")?;
        Ok(Relay { child, log })
    }

    /// The last lines of its log, for errors.
    fn tail(&self) -> String {
        let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        log[log.len().saturating_sub(20)..].join("\n")
    }

    /// The `address=` of its log line containing `marker`, waited for.
    fn address(&mut self, marker: &str) -> Result<SocketAddr> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let found = self
                .log
                .lock()
                .map_err(|_| anyhow::anyhow!("the relay's log reader panicked"))?
                .iter()
                .find(|l| l.contains(marker))
                .and_then(|l| l.split("address=").nth(1))
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_owned);
            if let Some(a) = found {
                return a
                    .parse()
                    .with_context(|| format!("the relay logged the address {a:?}"));
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("statestream relay exited ({status}):\n{}", self.tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "statestream relay logged no {marker:?} within {} s:\n{}",
                    READY_WITHIN.as_secs(),
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its resident memory (`VmRSS`), in KiB.
    fn rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.child.id());
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmRSS in {path}"))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time, in ns, of this process's threads whose name starts with one
/// of `prefixes` (the scheduler's own count, `/proc/self/task/*/schedstat`).
fn threads_cpu_ns(prefixes: &[&str]) -> Result<u64> {
    let mut total = 0;
    let mut seen = 0;
    for entry in std::fs::read_dir("/proc/self/task").context("cannot list /proc/self/task")? {
        let dir = entry?.path();
        // A thread may end while it is read: skip it.
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if !prefixes.iter().any(|p| comm.trim_end().starts_with(p)) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("schedstat")) else {
            continue;
        };
        let ns: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{}/schedstat: {stat:?}", dir.display()))?;
        total += ns;
        seen += 1;
    }
    if seen == 0 {
        bail!("no thread named {prefixes:?} (or no /proc/self/task/*/schedstat)");
    }
    Ok(total)
}

/// Subscribes `n` gRPC clients to the relay at `url` once it serves
/// (until it is within `ready_lag_blocks` of its upstream it answers
/// `UNAVAILABLE`).
fn relay_subscribers(
    rt: &tokio::runtime::Runtime,
    url: &str,
    n: usize,
) -> Result<(super::serve::Heights, Arrivals)> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        match subscribers(rt, url, 1, &[]) {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!(
                    "the relay at {url} did not serve within {} s",
                    READY_WITHIN.as_secs()
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    subscribers(rt, url, n, &[])
}

/// The latencies, in ms, from each block's commit (`committed`: height,
/// when `commit` returned) to each client holding its end.
fn latencies_ms(arrivals: &Arrivals, committed: &[(u64, Instant)]) -> Result<Vec<f64>> {
    let committed: std::collections::HashMap<u64, Instant> = committed.iter().copied().collect();
    let mut ms = Vec::new();
    for a in arrivals {
        let a = a.lock().map_err(|_| anyhow::anyhow!("a client panicked"))?;
        for (h, at) in a.iter() {
            if let Some(c) = committed.get(h) {
                ms.push(at.saturating_duration_since(*c).as_secs_f64() * 1000.0);
            }
        }
    }
    if ms.is_empty() {
        bail!("no block reached a client");
    }
    Ok(ms)
}

/// `relay_latency_ms` and `relay_node_cpu_ratio`, side by side in one
/// run: two nodes in this process commit the same blocks (64 writes
/// every 20 ms, which goes first alternating); one has [`CLIENTS`] gRPC
/// clients of its own (`direct`), the other one relay, a `statestream
/// relay` process, with the [`CLIENTS`] clients on the relay (`relayed`).
///
/// - `relay_latency_ms_p50`/`_p99`: commit to a relay client holding the
///   block's end, over every (block, client); baseline: the same for the
///   direct clients.
/// - `relay_node_cpu_ratio`: CPU time of the relayed node's serve threads
///   (`serve-relayed`, `stream-relayed`) per block, over the direct
///   node's; per round of blocks, median and quartiles of the rounds.
pub(super) fn latency_and_cpu(
    sizes: &Sizes,
    stores: &[StoreKey],
    tmp: &Path,
) -> Result<(Vec<Figure>, Figure)> {
    let (rounds, per_round) = if sizes.rounds > 3 { (21, 15) } else { (3, 4) };
    let mut direct = MultiStore::in_memory(stores)?;
    let mut relayed = MultiStore::in_memory(stores)?;
    let (mut m_direct, h_direct) = named_serve(&mut direct, stores, "direct")?;
    let (mut m_relayed, h_relayed) = named_serve(&mut relayed, stores, "relayed")?;
    let (mut rng_direct, mut rng_relayed) = (Rng::new(11), Rng::new(11));
    for _ in 0..WARM_BLOCKS {
        write_block(&mut direct, stores, &mut rng_direct, 64)?;
        m_direct.commit(&mut direct, BlockMeta::default())?;
        write_block(&mut relayed, stores, &mut rng_relayed, 64)?;
        m_relayed.commit(&mut relayed, BlockMeta::default())?;
    }
    let mut relay = Relay::start(&tmp.join("relay"), &grpc_url(&h_relayed)?, 10_000, 1024)?;
    let relay_url = format!("http://{}", relay.address("serve: gRPC listening")?);
    let rt = client_runtime()?;
    let (direct_heights, direct_arrivals) = subscribers(&rt, &grpc_url(&h_direct)?, CLIENTS, &[])?;
    let (relay_heights, relay_arrivals) = relay_subscribers(&rt, &relay_url, CLIENTS)?;

    let serve_threads = |name: &str| [format!("serve-{name}"), format!("stream-{name}")];
    let [sd, wd] = serve_threads("direct");
    let [sr, wr] = serve_threads("relayed");
    let cpu = || -> Result<(u64, u64)> {
        Ok((threads_cpu_ns(&[&sd, &wd])?, threads_cpu_ns(&[&sr, &wr])?))
    };
    let (mut at_direct, mut at_relayed) = (Vec::new(), Vec::new());
    let (mut cpu_direct, mut cpu_relayed, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut next = Instant::now();
    let mut block = 0u64;
    for round in 0..WARM_UP + rounds {
        let before = cpu()?;
        for _ in 0..per_round {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            next += Duration::from_millis(20);
            write_block(&mut direct, stores, &mut rng_direct, 64)?;
            write_block(&mut relayed, stores, &mut rng_relayed, 64)?;
            let mut commit_direct = || -> Result<()> {
                let info = m_direct.commit(&mut direct, BlockMeta::default())?;
                at_direct.push((info.version, Instant::now()));
                Ok(())
            };
            let mut commit_relayed = || -> Result<()> {
                let info = m_relayed.commit(&mut relayed, BlockMeta::default())?;
                at_relayed.push((info.version, Instant::now()));
                Ok(())
            };
            if block.is_multiple_of(2) {
                commit_direct()?;
                commit_relayed()?;
            } else {
                commit_relayed()?;
                commit_direct()?;
            }
            block += 1;
        }
        let after = cpu()?;
        if round >= WARM_UP {
            let per_block = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / 1e6 / per_round as f64;
            let (d, r) = (per_block(before.0, after.0), per_block(before.1, after.1));
            cpu_direct.push(d);
            cpu_relayed.push(r);
            ratios.push(r / d.max(1e-9));
        }
    }
    wait_received(&direct_heights, direct.version())?;
    wait_received(&relay_heights, relayed.version()).with_context(|| relay.tail())?;
    let direct_ms = latencies_ms(&direct_arrivals, &at_direct)?;
    let relay_ms = latencies_ms(&relay_arrivals, &at_relayed)?;
    drop(rt);
    drop(relay);
    m_direct.close(&mut direct)?;
    m_relayed.close(&mut relayed)?;

    let mut latency = Vec::new();
    for (name, p) in [
        ("relay_latency_ms_p50", 0.5),
        ("relay_latency_ms_p99", 0.99),
    ] {
        let (r, d) = (quantile(&relay_ms, p), quantile(&direct_ms, p));
        latency.push(Figure {
            name,
            value: r,
            unit: "ms",
            ratio: Some(r / d.max(1e-9)),
            ratio_quartiles: None,
            baseline: Some(d),
        });
    }
    let cpu = Figure {
        name: "relay_node_cpu_ratio",
        value: median(&cpu_relayed),
        unit: "ms CPU/block",
        ratio: Some(median(&ratios)),
        ratio_quartiles: Some((quantile(&ratios, 0.25), quantile(&ratios, 0.75))),
        baseline: Some(median(&cpu_direct)),
    };
    Ok((latency, cpu))
}

/// Raises this process's open-file limit to its hard limit (the relay
/// inherits it); fails when that is below `need`.
fn raise_nofile(need: u64) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit write or read the one struct given.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                bail!("cannot read the open file limit");
            }
            if limit.rlim_cur < limit.rlim_max {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
        if limit.rlim_max < need {
            bail!(
                "relay_idle_subscriber_kib needs {need} open files and the hard limit is {} \
                 (raise it: ulimit -Hn)",
                limit.rlim_max
            );
        }
    }
    Ok(())
}

/// Per SSE client: 0 until its `put` came, then 1 + the heartbeats it
/// received since.
type Beats = Arc<Vec<AtomicU32>>;

/// One idle SSE client of `GET /stream` (every store) at `address`,
/// counting in `beats[i]` as [`Beats`] says, until the connection ends.
async fn idle_client(address: SocketAddr, beats: Beats, i: usize) -> Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(address).await?;
    s.write_all(format!("GET /stream HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = [0u8; 1024];
    let mut line = Vec::with_capacity(64);
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        for &b in &buf[..n] {
            if b != b'\n' {
                if line.len() < 64 {
                    line.push(b);
                }
                continue;
            }
            if line.starts_with(b"event: put") {
                beats[i].store(1, Ordering::Release);
            } else if line == b":" && beats[i].load(Ordering::Acquire) > 0 {
                beats[i].fetch_add(1, Ordering::AcqRel);
            }
            line.clear();
        }
    }
}

/// Waits until every client of `range` counts more than `marks` (a
/// heartbeat after the marks were taken reached each).
fn wait_beats(beats: &Beats, marks: &[u32], what: &str) -> Result<()> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        let behind = marks
            .iter()
            .enumerate()
            .filter(|(i, m)| beats[*i].load(Ordering::Acquire) <= **m)
            .count();
        if behind == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{behind} of {} SSE clients got no {what} within {} s",
                marks.len(),
                READY_WITHIN.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the relay's `GET /stream` answers 200 (it answers 503 until it
/// is within `ready_lag_blocks` of its upstream).
fn sse_ready(address: SocketAddr) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(address) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(s, "GET /stream HTTP/1.0\r\nHost: {address}\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// `relay_idle_subscriber_kib_1000` / `_10000`: the relay's resident
/// memory per idle SSE subscriber (every store, nothing committed), once
/// 1,000 and then 10,000 are connected and a heartbeat (every second)
/// reached every one since the last connected: the growth of its `VmRSS`
/// over its value before the first, divided by the subscribers. With
/// `--quick`: 100 and 1,000.
pub(super) fn idle_subscribers(
    sizes: &Sizes,
    stores: &[StoreKey],
    tmp: &Path,
) -> Result<Vec<Figure>> {
    let counts: [(usize, &'static str); 2] = if sizes.rounds > 3 {
        [
            (1_000, "relay_idle_subscriber_kib_1000"),
            (10_000, "relay_idle_subscriber_kib_10000"),
        ]
    } else {
        [
            (100, "relay_idle_subscriber_kib_1000"),
            (1_000, "relay_idle_subscriber_kib_10000"),
        ]
    };
    let most = counts[1].0;
    // The clients' sockets here, the relay's there, and some to spare.
    raise_nofile(most as u64 + 512)?;
    let mut store = MultiStore::in_memory(stores)?;
    let (mut manager, handle) = named_serve(&mut store, stores, "upstream")?;
    let mut rng = Rng::new(5);
    // A small state: each client's put carries all of it.
    for _ in 0..WARM_BLOCKS {
        write_block(&mut store, stores, &mut rng, 4)?;
        manager.commit(&mut store, BlockMeta::default())?;
    }
    let mut relay = Relay::start(
        &tmp.join("idle-relay"),
        &grpc_url(&handle)?,
        1_000,
        most + 64,
    )?;
    let address = relay.address("serve: HTTP (SSE) listening")?;
    let deadline = Instant::now() + READY_WITHIN;
    while !sse_ready(address) {
        if Instant::now() > deadline {
            bail!(
                "the relay's SSE did not answer 200 within {} s:\n{}",
                READY_WITHIN.as_secs(),
                relay.tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Whatever the first connections allocate once (buffers, the hub's
    // tables) settles before the base is read.
    std::thread::sleep(Duration::from_secs(2));
    let base = relay.rss_kib()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-sse")
        .on_thread_start(|| lower_priority(19))
        .enable_all()
        .build()
        .context("cannot start the clients' runtime")?;
    let beats: Beats = Arc::new((0..most).map(|_| AtomicU32::new(0)).collect());
    let mut out = Vec::new();
    let mut connected = 0;
    for (n, name) in counts {
        for i in connected..n {
            let beats = Arc::clone(&beats);
            rt.spawn(async move {
                // A connection refused or ended before its put (a burst of
                // thousands of connects) is made again; after the put, an
                // end is the end.
                for _ in 0..1200 {
                    let _ = idle_client(address, Arc::clone(&beats), i).await;
                    if beats[i].load(Ordering::Acquire) > 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        connected = n;
        // Every client holds its put, then a heartbeat reaches each.
        wait_beats(&beats, &vec![0; n], "put")?;
        let marks: Vec<u32> = (0..n).map(|i| beats[i].load(Ordering::Acquire)).collect();
        wait_beats(&beats, &marks, "heartbeat after the last client connected")?;
        let rss = relay.rss_kib()?;
        out.push(Figure {
            name,
            value: rss.saturating_sub(base) as f64 / n as f64,
            unit: "KiB",
            ratio: None,
            ratio_quartiles: None,
            baseline: None,
        });
    }
    drop(rt);
    drop(relay);
    manager.close(&mut store)?;
    Ok(out)
}
