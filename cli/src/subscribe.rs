//! `statestream subscribe ADDR`: follows a `serve` streamer over gRPC and
//! prints one line (or JSON object) per change and per block end.
//!
//! With `--cursor-file`, a block's height is saved only once its lines
//! have reached the reader of stdout (see [`Output`]): a reader that stops
//! in the middle of a block (`| head -n 40`) or a write that fails leaves
//! the cursor before that block, so the next run prints it again.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use statestream_client::proto::v1;
use statestream_client::{
    CursorStore, FileCursor, MemoryCursor, ResumableSubscription, StartFrom, SubscribeOptions,
    Update,
};
use statestream_serve::filter::{key_from_text, key_to_text};

/// The environment variable a token is read from when no flag names one.
const TOKEN_ENV: &str = "STATESTREAM_TOKEN";

#[derive(Debug, clap::Args)]
pub struct SubscribeArgs {
    /// The server: HOST:PORT of a `serve` streamer's grpc_address, or
    /// https://HOST:PORT when it serves TLS (with --ca-file).
    #[arg(value_name = "ADDR")]
    address: String,

    /// https:// addresses: the PEM certificates the server's certificate
    /// must verify against (its CA, or the server's own certificate).
    #[arg(long, value_name = "F")]
    ca_file: Option<PathBuf>,

    /// https:// addresses: the PEM client certificate for a server that
    /// requires one (mTLS); its subject's CN names the credential.
    #[arg(long, value_name = "F", requires = "key_file")]
    cert_file: Option<PathBuf>,

    /// The PEM private key of --cert-file.
    #[arg(long, value_name = "F", requires = "cert_file")]
    key_file: Option<PathBuf>,

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

    /// Send `authorization: Bearer T`. A command line is visible to other
    /// users in `ps` (and kept in shell history): prefer --token-file or
    /// the STATESTREAM_TOKEN environment variable.
    #[arg(long, value_name = "T", conflicts_with = "token_file")]
    token: Option<String>,

    /// Read the token from F (surrounding whitespace and newlines are
    /// trimmed). Without --token or --token-file, the token is taken from
    /// STATESTREAM_TOKEN when that is set.
    #[arg(long, value_name = "F")]
    token_file: Option<PathBuf>,

    /// Keep the last height printed in F and resume after it: on
    /// reconnection, and on the next run (a cursor in F wins over
    /// --snapshot and --from). A height is saved only after its lines are
    /// written and flushed, and, when stdout is a pipe, read from it
    /// before a later block is written: a reader that stops early (`|
    /// head`) gets the block it stopped in again on the next run.
    #[arg(long, value_name = "F")]
    cursor_file: Option<PathBuf>,
}

/// The token from --token, --token-file or the environment, if any.
fn token(args: &SubscribeArgs) -> Result<Option<String>> {
    if let Some(t) = &args.token {
        return Ok(Some(t.clone()));
    }
    if let Some(path) = &args.token_file {
        return token_from_file(path).map(Some);
    }
    match std::env::var(TOKEN_ENV) {
        Ok(t) if t.trim().is_empty() => Ok(None),
        Ok(t) => Ok(Some(t.trim().to_string())),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => bail!("{TOKEN_ENV} is not valid UTF-8"),
    }
}

fn token_from_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token.to_string())
}

pub fn run(args: SubscribeArgs) -> Result<ExitCode> {
    let mut options = SubscribeOptions::new(&args.address);
    if let Some(f) = &args.ca_file {
        options = options.ca_file(f);
    }
    if let Some(f) = &args.cert_file {
        options = options.cert_file(f);
    }
    if let Some(f) = &args.key_file {
        options = options.key_file(f);
    }
    if let Some(t) = token(&args)? {
        options = options.token(&t);
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
    let output = Output::stdout();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match &args.cursor_file {
        Some(path) => runtime.block_on(follow(
            ResumableSubscription::new(options, FileCursor::new(path)),
            output,
            args.json,
        )),
        None => runtime.block_on(follow(
            ResumableSubscription::new(options, MemoryCursor::default()),
            output,
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

async fn follow<C: CursorStore>(
    mut sub: ResumableSubscription<C>,
    mut output: Output,
    json: bool,
) -> Result<ExitCode> {
    loop {
        let update = sub.next().await?;
        if let Update::Reconnecting { reason, delay } = &update {
            tracing::warn!(%reason, delay_ms = delay.as_millis() as u64, "disconnected; reconnecting");
        }
        let mut lines = Vec::new();
        render(&update, json, &mut lines)?;
        // A write error (EPIPE when the reader is gone) ends the command
        // here, before anything more is acknowledged.
        if let Some(handled) = output.write(&lines, update.ack_height())? {
            sub.ack(handled)?;
        }
    }
}

/// The lines of one update.
fn render(update: &Update, json: bool, out: &mut Vec<u8>) -> std::io::Result<()> {
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
            if *end {
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
            ..
        } => {
            for c in changes {
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
                    "changes": changes.len(), "time": time_text(time)});
                writeln!(out, "{o}")?;
            } else {
                writeln!(out, "{height} end ({} changes)", changes.len())?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// What stdout is, for when a height counts as handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// A file or a terminal: written and flushed is handled.
    Direct,
    /// A pipe: its reader may be gone, or stop in the middle of what is
    /// already in the pipe, without the writer knowing until it writes
    /// again. The bytes still in the pipe can be counted (`FIONREAD`).
    Pipe,
    /// A socket or anything else: as a pipe, without the count.
    Stream,
}

/// Stdout, and the heights written to it that are not yet known handled.
///
/// A block at height H is handled once its lines are flushed and, when
/// stdout is a pipe or a socket, once the reader has taken them (nothing
/// of them left in the pipe) and a later write has succeeded (the reader
/// was still there after taking all of them: `head -n` takes a whole block
/// and exits in the middle of it, which the next write finds out). So the
/// saved cursor trails the printed output by one block: at least once.
struct Output {
    out: std::io::Stdout,
    sink: Sink,
    /// Bytes written so far.
    written: u64,
    /// Heights written and not yet known handled, with the output offset
    /// just past their lines.
    waiting: VecDeque<(u64, u64)>,
}

impl Output {
    fn stdout() -> Output {
        Output {
            out: std::io::stdout(),
            sink: stdout_sink(),
            written: 0,
            waiting: VecDeque::new(),
        }
    }

    /// Writes and flushes `lines`, which end height `height` when it is
    /// given; returns the highest height now known handled.
    fn write(&mut self, lines: &[u8], height: Option<u64>) -> std::io::Result<Option<u64>> {
        if lines.is_empty() {
            return Ok(None);
        }
        // How far the reader had read before these lines went out.
        let taken = match self.sink {
            Sink::Direct => self.written,
            Sink::Pipe => self.written.saturating_sub(unread_in_stdout()),
            Sink::Stream => self.written,
        };
        let mut out = self.out.lock();
        out.write_all(lines)?;
        out.flush()?;
        drop(out);
        self.written += lines.len() as u64;
        let mut handled = None;
        while let Some(&(h, end)) = self.waiting.front() {
            if end > taken {
                break;
            }
            handled = Some(h);
            self.waiting.pop_front();
        }
        if let Some(h) = height {
            if self.sink == Sink::Direct {
                handled = Some(h);
            } else {
                self.waiting.push_back((h, self.written));
            }
        }
        Ok(handled)
    }
}

#[cfg(unix)]
fn stdout_sink() -> Sink {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::FileTypeExt as _;
    let Ok(fd) = std::io::stdout().as_fd().try_clone_to_owned() else {
        return Sink::Stream;
    };
    match std::fs::File::from(fd).metadata().map(|m| m.file_type()) {
        Ok(t) if t.is_fifo() => Sink::Pipe,
        Ok(t) if t.is_file() || t.is_char_device() => Sink::Direct,
        _ => Sink::Stream,
    }
}

#[cfg(not(unix))]
fn stdout_sink() -> Sink {
    Sink::Stream
}

/// The bytes written to the stdout pipe that its reader has not read yet
/// (0 when that cannot be known: the lines then count as read once a
/// later write succeeds).
#[cfg(target_os = "linux")]
fn unread_in_stdout() -> u64 {
    use std::os::fd::AsRawFd as _;
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points
    // to a live c_int; the descriptor is stdout's, open for the process's
    // lifetime.
    let r = unsafe { libc::ioctl(std::io::stdout().as_raw_fd(), libc::FIONREAD, &mut unread) };
    if r == 0 { unread.max(0) as u64 } else { 0 }
}

#[cfg(not(target_os = "linux"))]
fn unread_in_stdout() -> u64 {
    0
}
