//! A plugin's stderr cannot grow the node's memory: 300 MB written without
//! a newline leave the node's peak RSS within [`RSS_GROWTH_BOUND`] of what
//! it was. In a test binary of its own, so that no other test's memory
//! counts in the process's peak.

use std::path::Path;

use statestream::{BlockMeta, DeliveryManager, Error, Registry};
use statestream_config::AppConfig;
use statestream_store::{KvStore, MultiStore, StoreKey};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// How much the node's peak RSS may grow while a plugin floods its stderr
/// (`docs/plugin-protocol.md`): the node keeps one line of at most 64 KiB
/// per plugin, the rest is the node's own allocations.
const RSS_GROWTH_BOUND: u64 = 32 << 20;

/// Bytes the plugin writes to its stderr, without a newline.
const FLOOD: u64 = 300_000_000;

/// The process's peak resident set size, from /proc (`VmHWM`), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn process_stderr_flood_keeps_memory_bounded() -> TestResult {
    let Some(before) = peak_rss() else {
        eprintln!("SKIPPED process_stderr_flood_keeps_memory_bounded: needs /proc/self/status");
        return Ok(());
    };
    let home = tempfile::tempdir()?;
    // The plugin floods its stderr, then exits without answering `Hello`:
    // the node's handshake ends only once the flood was read (a pipe holds
    // 64 KiB), with the plugin's exit.
    let text = format!(
        "[store]\nstreamers = [\"plug\"]\n[streamers.plug]\ntype = \"process\"\n\
         keys = [\"bank\"]\ndelivery = \"sync\"\nhandshake_timeout_ms = 600000\n\
         command = [\"sh\", \"-c\", \"head -c {FLOOD} /dev/zero >&2; exit 0\"]\n"
    );
    let bank = StoreKey::new("bank")?;
    let mut store = MultiStore::in_memory(std::slice::from_ref(&bank))?;
    let specs = AppConfig::parse(&text, Path::new("app.toml"))?.resolve(&["bank"])?;
    let registry = Registry::with_builtins();
    let mut manager = DeliveryManager::builder()
        .configured(&specs, &registry, home.path())
        .start(&mut store)?;
    store.set(&bank, b"k", b"v")?;
    match manager.commit(&mut store, BlockMeta::default()) {
        Err(Error::Halted { message, .. }) => assert!(
            message.contains("exited (exit status: 0) instead of sending the HelloAck"),
            "{message}"
        ),
        other => panic!("expected the plugin's exit to halt the node, got {other:?}"),
    }
    let after = peak_rss().ok_or("/proc/self/status has no VmHWM")?;
    let closed = manager.close(&mut store);
    assert!(matches!(closed, Err(Error::Halted { .. })), "{closed:?}");
    assert!(
        after.saturating_sub(before) < RSS_GROWTH_BOUND,
        "the node's peak RSS grew from {} MiB to {} MiB while the plugin wrote {} MB to \
         stderr without a newline (bound: {} MiB more)",
        before >> 20,
        after >> 20,
        FLOOD / 1_000_000,
        RSS_GROWTH_BOUND >> 20
    );
    Ok(())
}
