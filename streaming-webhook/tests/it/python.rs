//! `examples/python/webhook_receiver.py` verifies the streamer's
//! signatures and deduplicates a block delivered twice.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use statestream::{Block, StoreSelection, Streamer, StreamerContext};
use statestream_config::StreamerOptions;
use statestream_store::CommitInput;
use statestream_webhook::WebhookConfig;

use crate::*;

fn receiver_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/webhook_receiver.py")
}

/// `python3` (the receiver uses the standard library only), or `None`
/// when it is missing outside CI (required under CI).
fn python() -> Option<&'static str> {
    statestream_test_support::require_python(
        "python_receiver_verifies_and_deduplicates",
        &["hmac", "http.server"],
        "its standard library",
    )
    .then_some("python3")
}

/// Kills the receiver when the test ends, however it ends.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn python_receiver_verifies_and_deduplicates() -> anyhow::Result<()> {
    let Some(python) = python() else {
        return Ok(());
    };
    // The receiver knows the old secret only; the streamer signs with the
    // new and the old (rotation).
    let child = Command::new(python)
        .arg(receiver_script())
        .args(["--port", "0", "--secret", SECRET])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut child = Kill(child);
    let stdout = child.0.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout);
    let mut first = String::new();
    lines.read_line(&mut first)?;
    let url = first
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow::anyhow!("unexpected first line {first:?}"))?
        .to_string();

    let table: toml::Table = format!(
        "url = \"{url}/hooks/{{store}}\"\nsecrets = [\"whsec_bmV3LXNlY3JldA==\", \"{SECRET}\"]\n\
         retry_schedule_ms = [0]"
    )
    .parse()?;
    let options = StreamerOptions::from_table(table).with_name("hook");
    let keys = store_keys();
    let ctx = StreamerContext {
        name: "hook",
        stores: &keys,
        all_stores: &keys,
        home: Path::new("."),
        reader: None,
        shutdown: &statestream::Shutdown::default(),
        push: None,
    };
    let mut streamer = options.parse::<WebhookConfig>()?.build(&ctx, &options)?;

    let mut store = memory_store();
    let selection = StoreSelection::all(&keys);
    let mut blocks = Vec::new();
    for b in 1..=2 {
        write_block(&mut store, &keys, b);
        let meta = meta(b).encode_app_meta();
        let cs = store.commit_block(CommitInput::new().app_meta(meta))?;
        blocks.push(Block::from_change_set(Arc::clone(&cs), &selection)?);
    }
    streamer.on_block(&blocks[0])?;
    streamer.on_block(&blocks[1])?;
    // Block 1 again, as after a crash before the cursor was saved.
    streamer.on_block(&blocks[0])?;

    // A forged request is refused.
    let forged = ureq::post(format!("{url}/hooks/bank"))
        .config()
        .http_status_as_error(false)
        .build()
        .header("webhook-id", "hook-9-0")
        .header("webhook-timestamp", "1700000000")
        .header("webhook-signature", "v1,AAAA")
        .send(&b"{}"[..])?;
    assert_eq!(forged.status().as_u16(), 401);

    drop(child);
    let mut rest = String::new();
    lines.read_to_string(&mut rest)?;
    let events: Vec<serde_json::Value> = rest
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let count = |e: &str| events.iter().filter(|v| v["event"] == e).count();
    let block_1 = expected_changes(1).len();
    assert_eq!(count("accepted"), expected_changes(2).len(), "{events:#?}");
    assert_eq!(count("duplicate"), block_1, "{events:#?}");
    assert_eq!(count("rejected"), 1, "{events:#?}");
    let accepted: Vec<&serde_json::Value> =
        events.iter().filter(|v| v["event"] == "accepted").collect();
    assert_eq!(accepted[0]["id"], "hook-1-0");
    assert_eq!(accepted[0]["path"], "/hooks/acc");
    assert_eq!(accepted[0]["body"]["store"], "acc");
    Ok(())
}
