//! `statestream subscribe ADDR`: follows a `serve` streamer over gRPC and
//! prints one line (or JSON object) per change and per block end.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use statestream_serve::client::{
    CursorStore, FileCursor, MemoryCursor, ResumableSubscription, StartFrom, SubscribeOptions,
    Update,
};
use statestream_serve::filter::{key_from_text, key_to_text};
use statestream_serve::proto::v1;

#[derive(Debug, clap::Args)]
pub struct SubscribeArgs {
    /// The server: HOST:PORT of a `serve` streamer's grpc_address.
    #[arg(value_name = "ADDR")]
    address: String,

    /// Only these stores (comma-separated). Default: every streamed store.
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    stores: Vec<String>,

    /// Only the keys of STORE that start with PREFIX (UTF-8, or 0x and
    /// hex); may repeat. Combined with --stores as a union.
    #[arg(long, value_name = "STORE/PREFIX")]
    prefix: Vec<String>,

    /// Start with a snapshot of the current state, then follow.
    #[arg(long, conflicts_with = "from")]
    snapshot: bool,

    /// Start with block H (history from the retained window), then follow.
    #[arg(long, value_name = "H")]
    from: Option<u64>,

    /// One JSON object per line.
    #[arg(long)]
    json: bool,

    /// Send `authorization: Bearer T`.
    #[arg(long, value_name = "T")]
    token: Option<String>,

    /// Keep the last complete height in F (written after every block) and
    /// resume after it: on reconnection, and on the next run (a cursor in
    /// F wins over --snapshot and --from).
    #[arg(long, value_name = "F")]
    cursor_file: Option<PathBuf>,
}

pub fn run(args: SubscribeArgs) -> Result<ExitCode> {
    let mut options = SubscribeOptions::new(&args.address);
    if let Some(t) = &args.token {
        options = options.token(t);
    }
    for s in &args.stores {
        options = options.store(s);
    }
    for p in &args.prefix {
        let Some((store, prefix)) = p.split_once('/') else {
            bail!("--prefix {p:?}: expected STORE/PREFIX");
        };
        options = options.prefix(store, &key_from_text(prefix));
    }
    options = options.start(match (args.snapshot, args.from) {
        (true, _) => StartFrom::Snapshot,
        (false, Some(h)) => StartFrom::Height(h),
        (false, None) => StartFrom::Live,
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match &args.cursor_file {
        Some(path) => runtime.block_on(follow(
            ResumableSubscription::new(options, FileCursor::new(path)),
            args.json,
        )),
        None => runtime.block_on(follow(
            ResumableSubscription::new(options, MemoryCursor::default()),
            args.json,
        )),
    }
}

fn op_name(op: i32) -> &'static str {
    match v1::Op::try_from(op) {
        Ok(v1::Op::Create) => "create",
        Ok(v1::Op::Update) => "update",
        Ok(v1::Op::Delete) => "delete",
        _ => "set",
    }
}

fn text(bytes: &[u8]) -> String {
    key_to_text(bytes)
}

fn time_text(time: &Option<prost_types::Timestamp>) -> serde_json::Value {
    match time {
        Some(t) => serde_json::json!({"seconds": t.seconds, "nanos": t.nanos}),
        None => serde_json::Value::Null,
    }
}

async fn follow<C: CursorStore>(mut sub: ResumableSubscription<C>, json: bool) -> Result<ExitCode> {
    loop {
        let update = sub.next().await?;
        let mut out = std::io::stdout().lock();
        match update {
            Update::Snapshot {
                height,
                entries,
                end,
                ..
            } => {
                for e in entries {
                    if json {
                        let o = serde_json::json!({"height": height, "type": "snapshot",
                            "store": e.store, "key": text(&e.key), "value": text(&e.value)});
                        writeln!(out, "{o}")?;
                    } else {
                        writeln!(
                            out,
                            "{height} snapshot {}/{} {}",
                            e.store,
                            text(&e.key),
                            text(&e.value)
                        )?;
                    }
                }
                if end {
                    if json {
                        writeln!(
                            out,
                            "{}",
                            serde_json::json!({"height": height, "type": "snapshot_end"})
                        )?;
                    } else {
                        writeln!(out, "{height} snapshot end")?;
                    }
                }
            }
            Update::Block {
                height,
                time,
                changes,
            } => {
                for c in &changes {
                    let op = op_name(c.op);
                    if json {
                        let mut o = serde_json::json!({"height": height, "type": op,
                            "store": c.store, "key": text(&c.key)});
                        if op != "delete" {
                            o["value"] = text(&c.value).into();
                        }
                        writeln!(out, "{o}")?;
                    } else if op == "delete" {
                        writeln!(out, "{height} delete {}/{}", c.store, text(&c.key))?;
                    } else {
                        writeln!(
                            out,
                            "{height} {op} {}/{} {}",
                            c.store,
                            text(&c.key),
                            text(&c.value)
                        )?;
                    }
                }
                if json {
                    let o = serde_json::json!({"height": height, "type": "end",
                        "changes": changes.len(), "time": time_text(&time)});
                    writeln!(out, "{o}")?;
                } else {
                    writeln!(out, "{height} end ({} changes)", changes.len())?;
                }
            }
            Update::Heartbeat { .. } => {}
            Update::Reconnecting { reason, delay } => {
                tracing::warn!(%reason, delay_ms = delay.as_millis() as u64, "disconnected; reconnecting");
            }
        }
        out.flush()?;
    }
}
