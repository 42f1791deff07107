//! The block-file reader: list a directory's blocks, open one, iterate its
//! records; optionally follow a directory as blocks are written.

use std::fs::{self, File};
use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use statestream_core::proto::BlockMetadata;
use statestream_core::{
    META_CRC_FIELD_LEN, MetaChecksum, Record, Records, check_metadata_checksum, crc32c_append,
    to_hex,
};

use crate::error::Error;
use crate::layout::{self, FileKind, HEADER_LEN};

/// How block files are read.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    mmap: bool,
}

impl ReadOptions {
    /// Maps data files into memory instead of reading them (default off).
    ///
    /// Mapping saves a copy of each data file, which helps with large blocks
    /// read once. It is sound only while no other process truncates or
    /// rewrites a mapped file in place: the file streamer never does (a file
    /// gets its final name only once complete, by a link or a rename, and a
    /// rename over an old file leaves an open mapping of it intact), but
    /// another program truncating a mapped
    /// file would make the reader crash with SIGBUS. When a file cannot be
    /// mapped (or is empty), it is read instead.
    #[must_use]
    pub fn mmap(mut self, on: bool) -> Self {
        self.mmap = on;
        self
    }
}

/// A directory of block files of one prefix.
///
/// A file belongs to the prefix when its whole name is the prefix's pattern
/// (`P-block-N-data`, or `block-N-data` for the empty prefix): prefixes never
/// see each other's files, and temporary files (`.…​.tmp`) and other files are
/// ignored.
#[derive(Debug, Clone)]
pub struct BlockDir {
    dir: PathBuf,
    prefix: String,
    options: ReadOptions,
}

impl BlockDir {
    /// Opens `dir` for reading blocks of `prefix` (`""`: no prefix).
    pub fn open(dir: &Path, prefix: &str, options: ReadOptions) -> Result<BlockDir, Error> {
        if let Err(reason) = layout::check_prefix(prefix) {
            return Err(Error::BadPrefix {
                prefix: prefix.to_string(),
                reason,
            });
        }
        match fs::metadata(dir) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(Error::NotADirectory {
                    path: dir.to_path_buf(),
                    reason: "not a directory".to_string(),
                });
            }
            Err(e) => {
                return Err(Error::NotADirectory {
                    path: dir.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        }
        Ok(BlockDir {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            options,
        })
    }

    /// The prefixes that have at least one data file in `dir`, sorted
    /// (`""`: files named `block-N-data`). Lets a reader that was given no
    /// prefix find the one a directory holds.
    pub fn prefixes(dir: &Path) -> Result<Vec<String>, Error> {
        let io_err = |source| Error::Io {
            path: dir.to_path_buf(),
            what: "cannot list the directory",
            source,
        };
        let mut prefixes = std::collections::BTreeSet::new();
        for entry in fs::read_dir(dir).map_err(io_err)? {
            let name = entry.map_err(io_err)?.file_name();
            if let Some(prefix) = name.to_str().and_then(layout::data_file_prefix) {
                prefixes.insert(prefix.to_string());
            }
        }
        Ok(prefixes.into_iter().collect())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The heights that have a data file, sorted.
    pub fn heights(&self) -> Result<Vec<u64>, Error> {
        self.list(FileKind::Data)
    }

    fn list(&self, kind: FileKind) -> Result<Vec<u64>, Error> {
        let io_err = |source| Error::Io {
            path: self.dir.clone(),
            what: "cannot list the directory",
            source,
        };
        let mut heights = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err)? {
            let name = entry.map_err(io_err)?.file_name();
            if let Some((h, k)) = name
                .to_str()
                .and_then(|n| layout::parse_name(&self.prefix, n))
                && k == kind
            {
                heights.push(h);
            }
        }
        heights.sort_unstable();
        Ok(heights)
    }

    /// Path of block `height`'s data file.
    pub fn data_path(&self, height: u64) -> PathBuf {
        layout::block_path(&self.dir, &self.prefix, height, FileKind::Data)
    }

    /// Path of block `height`'s meta file.
    pub fn meta_path(&self, height: u64) -> PathBuf {
        layout::block_path(&self.dir, &self.prefix, height, FileKind::Meta)
    }

    /// Opens block `height`: reads (or maps) its data file and checks its
    /// header against its size; when a meta file exists, decodes it, checks
    /// its own checksum when it has one (see
    /// [`BlockFile::meta_has_checksum`]), and checks the payload's length and
    /// CRC-32C against it.
    pub fn open_block(&self, height: u64) -> Result<BlockFile, Error> {
        let data_path = self.data_path(height);
        let bytes = match read_file(&data_path, self.options.mmap) {
            Ok(b) => b,
            Err(source) if source.kind() == io::ErrorKind::NotFound => {
                return Err(Error::MissingBlock {
                    path: data_path,
                    height,
                });
            }
            Err(source) => {
                return Err(Error::Io {
                    path: data_path,
                    what: "cannot read",
                    source,
                });
            }
        };
        check_header(&data_path, height, &bytes)?;
        let meta_path = self.meta_path(height);
        let (meta, meta_checksum) = match read_file(&meta_path, false) {
            Ok(b) => {
                let (meta, checksum) = decode_meta(&meta_path, height, &b)?;
                (Some(meta), checksum)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, false),
            Err(source) => {
                return Err(Error::Io {
                    path: meta_path,
                    what: "cannot read",
                    source,
                });
            }
        };
        let block = BlockFile {
            height,
            data_path,
            meta_path,
            bytes,
            meta,
            meta_checksum,
        };
        if let Some(meta) = &block.meta {
            let payload = block.payload();
            let actual = payload.len() as u64;
            if meta.data_length != actual {
                return Err(Error::PayloadLength {
                    path: block.data_path,
                    height,
                    expected: meta.data_length,
                    actual,
                });
            }
            let crc = crc32c_append(0, payload);
            if meta.data_crc32c != crc {
                return Err(Error::Crc {
                    path: block.data_path,
                    height,
                    expected: meta.data_crc32c,
                    actual: crc,
                });
            }
        }
        Ok(block)
    }

    /// Follows the directory: yields block `from`, then `from + 1`, and so
    /// on, checking every `poll` for the next block to appear. Never ends by
    /// itself; stop iterating to stop following.
    ///
    /// A block is yielded once its data file is in place and, when the
    /// directory is written with metadata, its meta file too (a meta file is
    /// renamed into place after its data file, so a block seen between the
    /// two renames is waited for). The directory counts as written with
    /// metadata when the last block yielded had a meta file, or, before the
    /// first block, when any meta file of the prefix exists; a block without
    /// a meta file is yielded anyway once the next block's data file exists.
    /// An error is yielded for the height that failed, and following goes on
    /// with the next height.
    pub fn follow(&self, from: u64, poll: Duration) -> Follow<'_> {
        Follow {
            dir: self,
            next: from,
            poll,
            expect_meta: None,
        }
    }
}

/// Reads a whole file, mapping it when `mmap` is on and mapping works.
fn read_file(path: &Path, mmap: bool) -> io::Result<Bytes> {
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    if mmap && size > 0 {
        // SAFETY: a mapping is only sound while nobody modifies or truncates
        // the file. Block files are written unnamed and linked in, or under
        // a temporary name and renamed into place; the writer never opens a
        // final name for writing, and a rename (re-delivery of a height)
        // replaces the directory entry, not the mapped inode, so the bytes we
        // map stay as they were. What remains is another process truncating or editing
        // the file in place, which this crate cannot prevent: the process
        // would then get SIGBUS on access. Mapping is therefore an explicit
        // opt-in (`ReadOptions::mmap`), off by default.
        if let Ok(map) = unsafe { memmap2::Mmap::map(&file) } {
            return Ok(Bytes::Mapped(map));
        }
    }
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.read_to_end(&mut buf)?;
    Ok(Bytes::Owned(buf))
}

/// Checks that a file holds a whole header and exactly the payload it
/// announces.
fn check_header(path: &Path, height: u64, bytes: &[u8]) -> Result<(), Error> {
    let Some(header) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err(Error::TruncatedHeader {
            path: path.to_path_buf(),
            height,
            size: bytes.len() as u64,
        });
    };
    let expected = layout::decode_header(*header);
    let actual = (bytes.len() - HEADER_LEN) as u64;
    if expected != actual {
        return Err(Error::HeaderLength {
            path: path.to_path_buf(),
            height,
            expected,
            actual,
        });
    }
    Ok(())
}

/// Decodes a meta file and checks it: its own checksum when it has one
/// (returned: whether it has), then its height.
fn decode_meta(path: &Path, height: u64, bytes: &[u8]) -> Result<(BlockMetadata, bool), Error> {
    check_header(path, height, bytes)?;
    let message = &bytes[HEADER_LEN..];
    let meta = BlockMetadata::decode(message).map_err(|e| Error::BadMeta {
        path: path.to_path_buf(),
        height,
        reason: e.to_string(),
    })?;
    let has_checksum = match check_metadata_checksum(message, &meta) {
        MetaChecksum::Valid => true,
        MetaChecksum::Mismatch { stored, computed } => {
            return Err(Error::MetaCrc {
                path: path.to_path_buf(),
                height,
                expected: stored,
                actual: computed,
            });
        }
        MetaChecksum::Misplaced => {
            return Err(Error::BadMeta {
                path: path.to_path_buf(),
                height,
                reason: format!(
                    "the checksum field (meta_crc32c) is not the message's last {META_CRC_FIELD_LEN} bytes"
                ),
            });
        }
        // `MetaChecksum` is non-exhaustive: anything else is no checksum.
        _ => false,
    };
    if meta.height != height {
        return Err(Error::MetaHeight {
            path: path.to_path_buf(),
            expected: height,
            actual: meta.height,
        });
    }
    Ok((meta, has_checksum))
}

/// A file's bytes, read or mapped.
enum Bytes {
    Owned(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped(m) => m,
        }
    }
}

/// One block, opened and checked (see [`BlockDir::open_block`]).
pub struct BlockFile {
    height: u64,
    data_path: PathBuf,
    meta_path: PathBuf,
    bytes: Bytes,
    meta: Option<BlockMetadata>,
    /// Whether the meta file carries its own checksum (checked at open).
    meta_checksum: bool,
}

impl std::fmt::Debug for BlockFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockFile")
            .field("height", &self.height)
            .field("data_path", &self.data_path)
            .field("payload_len", &self.payload().len())
            .field("mapped", &self.is_mapped())
            .field("has_meta", &self.meta.is_some())
            .finish()
    }
}

impl BlockFile {
    /// The block height.
    pub fn height(&self) -> u64 {
        self.height
    }

    /// The data file's path.
    pub fn data_path(&self) -> &Path {
        &self.data_path
    }

    /// The meta file's path (whether or not it exists).
    pub fn meta_path(&self) -> &Path {
        &self.meta_path
    }

    /// Whether the data file is memory-mapped (rather than read).
    pub fn is_mapped(&self) -> bool {
        matches!(self.bytes, Bytes::Mapped(_))
    }

    /// The data file's payload: its bytes after the 8-byte header.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// The decoded meta file, when there is one.
    pub fn meta(&self) -> Option<&BlockMetadata> {
        self.meta.as_ref()
    }

    /// Whether the meta file carries its own checksum (`meta_crc32c`), which
    /// [`BlockDir::open_block`] checked. `false` without a meta file, and for
    /// a meta file written before statestream wrote the checksum or by
    /// another writer: nothing then shows that its fields (block time,
    /// transactions, hashes) are as written.
    pub fn meta_has_checksum(&self) -> bool {
        self.meta_checksum
    }

    /// Iterates the records of the payload. A record that does not decode
    /// is an error naming the file and the record's byte offset in the file;
    /// the iteration ends after it.
    pub fn records(&self) -> RecordIter<'_> {
        RecordIter {
            block: self,
            inner: Records::new(self.payload()),
        }
    }

    /// The payload's byte range of each store, in order: the bytes the
    /// store's hash chain covers for this block. Stores without records in
    /// the block are not listed. An error when a record does not decode,
    /// the stores are not in increasing name order (a store appearing in two
    /// runs included), or the keys of a store are not strictly increasing.
    pub fn store_segments(&self) -> Result<Vec<(String, Range<usize>)>, Error> {
        let mut segments: Vec<(String, Range<usize>)> = Vec::new();
        let mut last_key: &[u8] = &[];
        let mut iter = self.records();
        loop {
            let start = iter.inner.offset();
            let Some(record) = iter.next() else { break };
            let record = record?;
            let end = iter.inner.offset();
            let order_err = |reason: String| Error::Order {
                path: self.data_path.clone(),
                height: self.height,
                offset: (HEADER_LEN + start) as u64,
                reason,
            };
            if let Some((store, range)) = segments.last_mut()
                && store == record.store
            {
                if record.key <= last_key {
                    return Err(order_err(format!(
                        "key {} of store \"{store}\" does not follow key {}",
                        to_hex(record.key),
                        to_hex(last_key)
                    )));
                }
                range.end = end;
            } else {
                if let Some((prev, _)) = segments.last()
                    && record.store < prev.as_str()
                {
                    let reason = if segments.iter().any(|(s, _)| s == record.store) {
                        format!("store \"{}\" appears in two runs", record.store)
                    } else {
                        format!("store \"{}\" comes after store \"{prev}\"", record.store)
                    };
                    return Err(order_err(reason));
                }
                segments.push((record.store.to_string(), start..end));
            }
            last_key = record.key;
        }
        Ok(segments)
    }
}

/// The records of a [`BlockFile`], in file order.
pub struct RecordIter<'a> {
    block: &'a BlockFile,
    inner: Records<'a>,
}

impl std::fmt::Debug for RecordIter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordIter")
            .field("path", &self.block.data_path)
            .field("offset", &(HEADER_LEN + self.inner.offset()))
            .finish()
    }
}

impl RecordIter<'_> {
    /// Byte offset in the data file of the next record.
    pub fn offset(&self) -> u64 {
        (HEADER_LEN + self.inner.offset()) as u64
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let start = self.inner.offset();
        match self.inner.next()? {
            Ok(record) => Some(Ok(record)),
            Err(e) => {
                let (offset, reason) = record_error(start, e);
                Some(Err(Error::BadRecord {
                    path: self.block.data_path.clone(),
                    height: self.block.height,
                    offset,
                    reason,
                }))
            }
        }
    }
}

/// File offset and reason of a record at payload offset `start` that did
/// not decode.
#[cold]
#[inline(never)]
fn record_error(start: usize, e: statestream_core::Error) -> (u64, String) {
    let (offset, reason) = match e {
        statestream_core::Error::BadRecord { offset, reason } => (offset, reason.to_string()),
        other => (start, other.to_string()),
    };
    ((HEADER_LEN + offset) as u64, reason)
}

/// Blocks of a directory as they are written: see [`BlockDir::follow`].
#[derive(Debug)]
pub struct Follow<'a> {
    dir: &'a BlockDir,
    next: u64,
    poll: Duration,
    /// Whether the directory is written with meta files; `None` until known.
    expect_meta: Option<bool>,
}

impl Follow<'_> {
    /// The next height this will yield.
    pub fn next_height(&self) -> u64 {
        self.next
    }

    /// Whether block `next` can be opened now.
    fn ready(&mut self) -> Result<bool, Error> {
        let height = self.next;
        if !self.dir.data_path(height).exists() {
            return Ok(false);
        }
        if self.dir.meta_path(height).exists() {
            return Ok(true);
        }
        let expect_meta = match self.expect_meta {
            Some(e) => e,
            None => {
                let e = !self.dir.list(FileKind::Meta)?.is_empty();
                self.expect_meta = Some(e);
                e
            }
        };
        Ok(!expect_meta
            || height
                .checked_add(1)
                .is_some_and(|n| self.dir.data_path(n).exists()))
    }
}

impl Iterator for Follow<'_> {
    type Item = Result<BlockFile, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.ready() {
                Ok(true) => break,
                Ok(false) => std::thread::sleep(self.poll),
                Err(e) => return Some(Err(e)),
            }
        }
        let result = self.dir.open_block(self.next);
        if let Ok(block) = &result {
            self.expect_meta = Some(block.meta.is_some());
        }
        self.next = self.next.saturating_add(1);
        Some(result)
    }
}
