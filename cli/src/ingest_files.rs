//! `statestream ingest-files DIR --home H [--prefix P]`: follows the block
//! files of a Cosmos SDK v0.46/v0.47 file streamer (`[P-]block-N-data`,
//! `[P-]block-N-meta`) and commits each block through the ingest pipeline
//! into the replica under H, then to the streamers of H/config/app.toml,
//! as `statestream cosmos-plugin` does for a v0.50+ chain. Block files
//! statestream wrote are accepted too. See docs/cosmos.md.
//!
//! The Cosmos writer is not atomic: it opens the final name, writes the
//! 8-byte length, then the payload (the meta file first, then the data
//! file). A file is read only once its size is exactly what its length
//! prefix announces; before that it is waited for. statestream's own
//! writer links the data file in first and the meta file after it, so a
//! block of a directory written with metadata waits for its meta file too.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use prost::Message as _;
use statestream::{BlockMeta, Ingested, SourceBlock, SourceWrite, Tx};
use statestream_core::proto::BlockMetadata;
use statestream_file::{BlockDir, ReadOptions};
use tracing::{debug, info, warn};

use crate::cosmos::{self, pb};

/// The length prefix of every block file: a big-endian `u64`.
const HEADER_LEN: usize = 8;

/// How often progress is logged while blocks come in.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct IngestFilesArgs {
    /// The directory the chain's file streamer writes (its `write_dir`).
    #[arg(value_name = "DIR")]
    dir: PathBuf,

    /// The replica's home: its configuration is HOME/config/app.toml
    /// (`[store] streamers`, `[streamers.*]`, `[cosmos] on_gap`), the
    /// replica store HOME/data/store.redb. Created when missing.
    #[arg(long, value_name = "DIR")]
    home: PathBuf,

    /// The file streamer's `prefix`: files are named `P-block-N-data`
    /// (none: `block-N-data`).
    #[arg(long, value_name = "P", default_value = "")]
    prefix: String,

    /// How often to look for the next block's files, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    poll_ms: u64,
}

pub fn run(args: IngestFilesArgs) -> Result<ExitCode> {
    let dir = BlockDir::open(&args.dir, &args.prefix, ReadOptions::default())
        .with_context(|| format!("cannot follow {}", args.dir.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        // SIGINT and SIGTERM stop following after the block being
        // committed; a second one exits at once (every block answered is
        // in the replica, the next start resumes after it).
        crate::signals::watch(
            move || stop.store(true, Ordering::SeqCst),
            "committed blocks are in the replica; the next start resumes after them",
        )?;
    }
    let mut state = cosmos::open(&args.home)?;
    let followed = follow(
        &dir,
        &mut state,
        &stop,
        Duration::from_millis(args.poll_ms.max(1)),
    );
    let height = state.ingest.store().version();
    let closed = state.close();
    followed?;
    closed.context("closing the streamers and the replica")?;
    info!(height, "ingest-files: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Commits every block that appears in `dir`, in height order, until
/// `stop` is set.
fn follow(
    dir: &BlockDir,
    state: &mut cosmos::State,
    stop: &AtomicBool,
    poll: Duration,
) -> Result<()> {
    let resumed = state.ingest.store().version();
    // A new replica starts at the directory's first block, whatever its
    // height; an existing one after its last block.
    let mut next = if resumed == 0 {
        None
    } else {
        Some(resumed + 1)
    };
    // Whether the directory is written with meta files: from the last
    // block taken, or, before the first, from any meta file present.
    let mut with_meta = None;
    let mut waiting: Option<(u64, String)> = None;
    // Whether it has waited for a block that was not there yet: from then
    // on, waiting for the next block is the normal state (logged at debug).
    let mut caught_up = false;
    let mut taken = 0u64;
    let mut reported = 0u64;
    let mut last_progress = Instant::now();
    info!(dir = %dir.dir().display(), prefix = dir.prefix(), replica_height = resumed,
        "ingest-files: following");
    while !stop.load(Ordering::SeqCst) {
        let found = match next {
            Some(next) => find_next(dir, next, with_meta)?,
            None => first_block(dir)?,
        };
        let block = match found {
            Found::Block(block) => block,
            Found::Wait {
                height,
                reason,
                absent,
            } => {
                if waiting.as_ref() != Some(&(height, reason.clone())) {
                    if absent && caught_up {
                        debug!(height, "ingest-files: waiting: {reason}");
                    } else {
                        info!(height, "ingest-files: waiting: {reason}");
                    }
                    caught_up |= absent;
                    waiting = Some((height, reason));
                }
                progress(
                    &mut last_progress,
                    &mut reported,
                    taken,
                    height.saturating_sub(1),
                );
                std::thread::sleep(poll);
                continue;
            }
        };
        waiting = None;
        let height = block.block.height;
        with_meta = Some(block.had_meta);
        let done = state.ingest.commit(block.block);
        state.refresh();
        match done.with_context(|| format!("block {height} ({})", block.path.display()))? {
            Ingested::Committed(_) => taken += 1,
            Ingested::Replayed { .. } => {}
            _ => {}
        }
        next = Some(height + 1);
        progress(&mut last_progress, &mut reported, taken, height);
    }
    info!(
        height = state.ingest.store().version(),
        blocks = taken,
        "ingest-files: signal received, stopping after the last committed block"
    );
    Ok(())
}

/// Logs the height reached, at most every [`PROGRESS_EVERY`] and only when
/// blocks were taken since the last line.
fn progress(last: &mut Instant, reported: &mut u64, taken: u64, height: u64) {
    if taken > *reported && last.elapsed() >= PROGRESS_EVERY {
        info!(
            height,
            blocks = taken,
            "ingest-files: progress (blocks taken since the start)"
        );
        *last = Instant::now();
        *reported = taken;
    }
}

/// A block read from its files.
struct FileBlock {
    block: SourceBlock,
    /// Its data file, for messages.
    path: PathBuf,
    had_meta: bool,
}

enum Found {
    Block(FileBlock),
    /// Nothing to take yet: waiting for block `height`; `absent`: its
    /// data file does not exist yet (rather than being written).
    Wait {
        height: u64,
        reason: String,
        absent: bool,
    },
}

/// The first block of a directory, for a new replica.
fn first_block(dir: &BlockDir) -> Result<Found> {
    let heights = dir.heights()?;
    let Some(&first) = heights.first() else {
        return Ok(Found::Wait {
            height: 0,
            reason: format!("no block files in {} yet", dir.dir().display()),
            absent: true,
        });
    };
    let with_meta = any_meta(dir, &heights);
    take(dir, first, Some(with_meta), heights.get(1).copied())
}

/// Block `next`, or the next one present past a gap.
fn find_next(dir: &BlockDir, next: u64, with_meta: Option<bool>) -> Result<Found> {
    if dir.data_path(next).exists() {
        // The next block's data file tells whether a missing meta file is
        // still to come (statestream's writer links it in after the data).
        let after = dir.data_path(next + 1).exists().then_some(next + 1);
        return take(dir, next, with_meta, after);
    }
    // Not there: a block past it whose files are whole means the writer
    // went on without it (the node's streamer was off, files were removed),
    // as both writers write blocks in height order. The pipeline records
    // the gap and continues or refuses per `[cosmos] on_gap`.
    let heights = dir.heights()?;
    let mut later = heights.iter().copied().filter(|h| *h > next);
    if let Some(h) = later.next() {
        let found = take(dir, h, with_meta, later.next())?;
        if matches!(found, Found::Block(_)) {
            warn!(
                first_missing = next,
                last_missing = h - 1,
                "ingest-files: blocks missing from the directory"
            );
        }
        return Ok(found);
    }
    Ok(Found::Wait {
        height: next,
        reason: format!("{} does not exist yet", dir.data_path(next).display()),
        absent: true,
    })
}

fn any_meta(dir: &BlockDir, heights: &[u64]) -> bool {
    heights.iter().any(|h| dir.meta_path(*h).exists())
}

/// Reads block `height` once its files are whole. `after`: a later block
/// whose data file exists (then a meta file that is not there will not
/// come).
fn take(dir: &BlockDir, height: u64, with_meta: Option<bool>, after: Option<u64>) -> Result<Found> {
    let wait = |reason: String| {
        Ok(Found::Wait {
            height,
            reason,
            absent: false,
        })
    };
    let data_path = dir.data_path(height);
    let data = match read_whole(&data_path)? {
        Whole::Yes(payload) => payload,
        Whole::Missing => {
            return Ok(Found::Wait {
                height,
                reason: format!("{} does not exist yet", data_path.display()),
                absent: true,
            });
        }
        Whole::Partial { size, expected } => {
            return wait(format!(
                "{} is being written ({size} of {expected} bytes)",
                data_path.display()
            ));
        }
    };
    let meta_path = dir.meta_path(height);
    let meta = match read_whole(&meta_path)? {
        Whole::Yes(message) => Some(message),
        Whole::Missing => {
            let expected = with_meta.unwrap_or(false);
            if expected && after.is_none() {
                return wait(format!("{} does not exist yet", meta_path.display()));
            }
            if expected {
                warn!(
                    height,
                    "ingest-files: block without a meta file; taken without metadata"
                );
            }
            None
        }
        Whole::Partial { size, expected } => {
            return wait(format!(
                "{} is being written ({size} of {expected} bytes)",
                meta_path.display()
            ));
        }
    };
    let had_meta = meta.is_some();
    let block = parse_block(height, &data, meta.as_deref(), &data_path, &meta_path)?;
    Ok(Found::Block(FileBlock {
        block,
        path: data_path,
        had_meta,
    }))
}

enum Whole {
    /// The bytes after the length prefix.
    Yes(Vec<u8>),
    Missing,
    /// Shorter than its length prefix says (or than the prefix itself).
    Partial {
        size: u64,
        expected: u64,
    },
}

/// Reads a length-prefixed file, if it is whole.
fn read_whole(path: &Path) -> Result<Whole> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Whole::Missing),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let size = bytes.len() as u64;
    let Some(header) = bytes.first_chunk::<HEADER_LEN>() else {
        return Ok(Whole::Partial {
            size,
            expected: HEADER_LEN as u64,
        });
    };
    let length = u64::from_be_bytes(*header);
    let expected = length.saturating_add(HEADER_LEN as u64);
    if size < expected {
        return Ok(Whole::Partial { size, expected });
    }
    if size > expected {
        // Both writers truncate before writing: a file never holds more
        // than its prefix announces unless something else wrote it.
        bail!(
            "{} holds {size} bytes, more than its length prefix announces ({expected}): \
             not a block file of a file streamer",
            path.display()
        );
    }
    let mut bytes = bytes;
    bytes.drain(..HEADER_LEN);
    Ok(Whole::Yes(bytes))
}

/// A block from its data file's payload and its meta file's message:
/// Cosmos's `BlockMetadata`, or statestream's.
fn parse_block(
    height: u64,
    payload: &[u8],
    meta: Option<&[u8]>,
    data_path: &Path,
    meta_path: &Path,
) -> Result<SourceBlock> {
    let writes = statestream_core::Records::new(payload)
        .map(|r| {
            r.map(|r| SourceWrite {
                store: r.store.to_owned(),
                key: r.key.to_vec(),
                value: r.value.map(<[u8]>::to_vec),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: a record does not decode", data_path.display()))?;
    let meta = match meta {
        None => BlockMeta::default(),
        Some(message) => decode_meta(height, message)
            .with_context(|| format!("{}: not a block's metadata", meta_path.display()))?,
    };
    Ok(SourceBlock {
        height,
        meta,
        writes,
    })
}

/// statestream's `BlockMetadata` starts with its height (field 1, a
/// varint) and always has it; in Cosmos's, field 1 is the
/// `RequestBeginBlock` message. A message that decodes as statestream's
/// with the file's height is statestream's.
fn decode_meta(height: u64, message: &[u8]) -> Result<BlockMeta> {
    if let Ok(own) = BlockMetadata::decode(message)
        && own.height == height
    {
        // A replica's blocks keep the chain's app hash; a node's own
        // blocks have only statestream's, which is the source's then.
        let source_app_hash = if own.source_app_hash.is_empty() {
            own.commit.map(|c| c.app_hash).unwrap_or_default()
        } else {
            own.source_app_hash
        };
        return Ok(BlockMeta {
            time_seconds: own.time_seconds,
            time_nanos: own.time_nanos,
            begin_block: own.begin_block,
            end_block: own.end_block,
            txs: own
                .txs
                .into_iter()
                .map(|t| Tx {
                    request: t.request,
                    response: t.response,
                })
                .collect(),
            source_app_hash,
        });
    }
    let mut cosmos = pb::cosmos::store::v1beta1::BlockMetadata::decode(message)
        .context("decodes neither as Cosmos's BlockMetadata nor as statestream's")?;
    let begin =
        pb::tendermint::abci::RequestBeginBlock::decode(cosmos.request_begin_block.as_slice())
            .context("its RequestBeginBlock does not decode")?;
    let header = begin.header.unwrap_or_default();
    if header.height != 0 && u64::try_from(header.height).ok() != Some(height) {
        bail!(
            "its RequestBeginBlock is for height {}, the file for height {height}",
            header.height
        );
    }
    let commit = pb::tendermint::abci::ResponseCommit::decode(cosmos.response_commit.as_slice())
        .context("its ResponseCommit does not decode")?;
    let time = header.time.unwrap_or_default();
    let txs = std::mem::take(&mut cosmos.deliver_txs)
        .into_iter()
        .map(|t| Tx {
            request: t.request,
            response: t.response,
        })
        .collect();
    Ok(BlockMeta {
        time_seconds: time.seconds,
        time_nanos: u32::try_from(time.nanos).unwrap_or(0),
        // Everything but the transactions (in `txs`), as Cosmos encodes it.
        begin_block: cosmos.encode_to_vec(),
        txs,
        source_app_hash: commit.data,
        ..BlockMeta::default()
    })
}
