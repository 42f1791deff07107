//! `nats_blocks_per_s`: blocks of 1,000 writes published to a local
//! JetStream (a `nats-server -js` this program starts on a free loopback
//! port, its store in a temporary directory), then read back.
//!
//! Measures the streamer (`on_block`, each block acknowledged before the
//! next) and the reader (`StreamReader`, an ordered consumer; every frame
//! decoded and checked). The comparison with the hand-written client this
//! crate had before `async-nats` (issue 20) is in `docs/performance.md`.
//!
//! ```sh
//! cargo run --release -p statestream-nats --example nats_bench -- [--blocks 300] [--writes 1000]
//! ```

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use statestream_core::{Block, StoreSelection, Streamer};
use statestream_nats::{NatsStreamer, NatsStreamerConfig, StreamReader};
use statestream_store::{KvStore, MultiStore, StoreKey};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nats_server() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    ["/usr/sbin", "/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| PathBuf::from(d).join("nats-server"))
        .find(|p| p.is_file())
        .context("nats-server is not installed (apt-get install -y nats-server)")
}

fn main() -> Result<()> {
    let mut blocks = 300u64;
    let mut writes = 1000u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--blocks" => blocks = value()?.parse()?,
            "--writes" => writes = value()?.parse()?,
            other => bail!("unknown argument {other:?}"),
        }
    }

    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _server = Server(
        Command::new(nats_server()?)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let config = NatsStreamerConfig {
        url: url.clone(),
        stream: "new".into(),
        subject: "new".into(),
        ..NatsStreamerConfig::default()
    };
    let mut streamer = NatsStreamer::new("bench", config.clone());
    // The blocks: `writes` sets of 100-byte values each, in one store.
    let bank = StoreKey::new("bank")?;
    let mut store = MultiStore::in_memory(std::slice::from_ref(&bank))?;
    let selection = StoreSelection::all(std::slice::from_ref(&bank));
    let mut list = Vec::new();
    let mut bytes = 0usize;
    for b in 1..=blocks {
        for i in 0..writes {
            let value: Vec<u8> = (0..100u32).map(|j| (i ^ j ^ b as u32) as u8).collect();
            store.set(&bank, format!("key-{b:06}-{i:05}").as_bytes(), &value)?;
        }
        store.commit()?;
        let changes = Arc::new(store.change_log().read(b)?);
        let block = Block::from_change_set(changes, &selection)?;
        let mut frame = Vec::new();
        block.encode_frame(&mut frame);
        bytes += frame.len();
        list.push(block);
    }
    println!(
        "{blocks} blocks of {writes} writes, {} KiB per block on average",
        bytes / blocks as usize / 1024
    );

    // The server may still be starting: the first block (connection,
    // stream creation) is published outside the measurement.
    loop {
        match streamer.on_block(&list[0]) {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => bail!("nats-server is not ready: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let start = Instant::now();
    for block in &list[1..] {
        streamer.on_block(block)?;
    }
    let new_publish = (blocks - 1) as f64 / start.elapsed().as_secs_f64();
    streamer.on_close()?;

    // The reader: an ordered consumer, every frame decoded and checked.
    let start = Instant::now();
    let mut n = 0u64;
    for b in StreamReader::open(&config)? {
        b?;
        n += 1;
    }
    if n != blocks {
        bail!("the reader returned {n} blocks of {blocks}");
    }
    let new_read = n as f64 / start.elapsed().as_secs_f64();

    println!("nats_blocks_per_s publish: {new_publish:.0}");
    println!("nats_blocks_per_s read:    {new_read:.0}");
    Ok(())
}
