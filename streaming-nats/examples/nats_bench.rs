//! `nats_blocks_per_s`: blocks of 1,000 writes published to a local
//! JetStream (a `nats-server -js` this program starts on a free loopback
//! port, its store in a temporary directory), then read back.
//!
//! Compares, in one run, the hand-written client this crate had and the
//! `async-nats` streamer that replaced it, and the two readers (one
//! `STREAM.MSG.GET` request per message, and the ordered consumer).
//!
//! ```sh
//! cargo run --release -p statestream-nats --example nats_bench -- [--blocks 300] [--writes 1000]
//! ```

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use prost::Message as _;
use statestream_core::proto::BlockFrame;
use statestream_core::{Block, StoreSelection, Streamer};
use statestream_nats::legacy::{Client, ConnectOptions};
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
    let mut old = loop {
        match Client::connect(&ConnectOptions::new(&url)).and_then(|mut c| {
            c.stream_info("probe")?;
            Ok(c)
        }) {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => bail!("nats-server is not ready: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };

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

    // Old: the hand-written client, one acknowledged publish per block
    // (what its streamer did per block).
    old.create_stream(&statestream_nats::legacy::StreamSpec {
        name: "old".into(),
        subjects: vec!["old.blocks".into()],
        duplicate_window: Duration::from_secs(120),
        replicas: 1,
    })?;
    let mut frame = Vec::new();
    let start = Instant::now();
    for block in &list {
        let h = block.height().to_string();
        let id = format!("old-{h}");
        block.encode_frame(&mut frame);
        old.publish(
            "old.blocks",
            &[("Nats-Msg-Id", &id), ("Statestream-Height", &h)],
            &frame,
        )?;
    }
    let old_publish = blocks as f64 / start.elapsed().as_secs_f64();

    // New: the streamer on async-nats.
    let config = NatsStreamerConfig {
        url: url.clone(),
        stream: "new".into(),
        subject: "new".into(),
        ..NatsStreamerConfig::default()
    };
    let mut streamer = NatsStreamer::new("bench", config.clone());
    // Connect and create the stream outside the measurement, as for the
    // old client.
    streamer.on_block(&list[0])?;
    let start = Instant::now();
    for block in &list[1..] {
        streamer.on_block(block)?;
    }
    let new_publish = (blocks - 1) as f64 / start.elapsed().as_secs_f64();
    streamer.on_close()?;

    // Readers: one MSG.GET per message (old) against the ordered
    // consumer (new); both decode and check every frame.
    let start = Instant::now();
    let mut seq = 1;
    let mut n = 0u64;
    while let Some(m) = old.get_message("old", seq, Some("old.blocks"))? {
        seq = m.seq + 1;
        let frame = BlockFrame::decode(m.payload.as_slice())?;
        let meta = frame.meta.context("metadata")?;
        if statestream_core::crc32c_append(0, &frame.records) != meta.data_crc32c {
            bail!("bad CRC");
        }
        n += 1;
    }
    let old_read = n as f64 / start.elapsed().as_secs_f64();
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

    println!("nats_blocks_per_s publish: old client {old_publish:.0}, async-nats {new_publish:.0}");
    println!(
        "nats_blocks_per_s read:    old MSG.GET {old_read:.0}, ordered consumer {new_read:.0}"
    );
    Ok(())
}
