//! The file streamer: one data file and one optional meta file per block.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::path::{Path, PathBuf};

use statestream::{Block, StreamError, Streamer};

use crate::error::Error;
use crate::layout::{self, FileKind, HEADER_LEN};
use crate::syncer::Syncer;

/// `type = "file"`: writes each block's records for the streamer's stores
/// to `[P-]block-N-data` and, with `output-metadata`, its
/// `BlockMetadata` to `[P-]block-N-meta` (layout in `docs/file-format.md`).
///
/// Each file is written under a temporary name, fsynced when `fsync = true`,
/// then renamed into place (and the directory fsynced), the data file before
/// the meta file: a reader never sees a partial file under a final name, and
/// a meta file is only there once its data file is. Delivering a height again
/// rewrites the same bytes the same way, so the streamer is idempotent per
/// height. With `fsync = false`, a background thread syncs the renamed files
/// (and the directory) as soon as the streamer pauses, and `on_flush` waits
/// for the ones it has not synced yet. Built by
/// [`FileStreamerConfig::build`](crate::FileStreamerConfig::build).
pub struct FileStreamer {
    name: String,
    dir: PathBuf,
    prefix: String,
    output_metadata: bool,
    /// The meta file's bytes (header + message), reused from block to block.
    meta_buf: Vec<u8>,
    /// With `fsync = false`: syncs the files renamed into place, in the
    /// background; `on_flush` waits for it. `None`: `fsync = true`, every
    /// file is synced as it is written.
    syncer: Option<Syncer>,
}

impl std::fmt::Debug for FileStreamer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStreamer")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .field("prefix", &self.prefix)
            .field("output_metadata", &self.output_metadata)
            .field("fsync", &self.fsync())
            .finish()
    }
}

impl FileStreamer {
    /// Prepares `dir` (created when missing, probed for writability, stale
    /// temporary files of `prefix` removed). `prefix` is already checked.
    pub(crate) fn create(
        dir: PathBuf,
        prefix: String,
        output_metadata: bool,
        fsync: bool,
        name: &str,
    ) -> Result<FileStreamer, Error> {
        if let Ok(md) = fs::metadata(&dir)
            && !md.is_dir()
        {
            return Err(Error::WriteDir {
                path: dir,
                what: "cannot write to it",
                source: io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "it exists and is not a directory",
                ),
            });
        }
        fs::create_dir_all(&dir).map_err(|source| Error::WriteDir {
            path: dir.clone(),
            what: "cannot create it",
            source,
        })?;
        let probe = dir.join(layout::probe_name(&prefix));
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&probe)
            .and_then(|f| {
                drop(f);
                fs::remove_file(&probe)
            })
            .map_err(|source| Error::WriteDir {
                path: dir.clone(),
                what: "not writable",
                source,
            })?;
        let syncer = if fsync {
            None
        } else {
            Some(Syncer::start(&dir, name)?)
        };
        let streamer = FileStreamer {
            name: name.to_string(),
            dir,
            prefix,
            output_metadata,
            meta_buf: Vec::new(),
            syncer,
        };
        streamer.remove_stale_temps()?;
        Ok(streamer)
    }

    /// Whether every file is synced as it is written (`fsync = true`).
    fn fsync(&self) -> bool {
        self.syncer.is_none()
    }

    /// The directory the files are written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file-name prefix (empty: none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Path of block `height`'s data file.
    pub fn data_path(&self, height: u64) -> PathBuf {
        layout::block_path(&self.dir, &self.prefix, height, FileKind::Data)
    }

    /// Path of block `height`'s meta file.
    pub fn meta_path(&self, height: u64) -> PathBuf {
        layout::block_path(&self.dir, &self.prefix, height, FileKind::Meta)
    }

    /// Removes the temporary files a previous writer of this prefix left
    /// when it stopped between creating and renaming them. Only this
    /// prefix's names are touched: another streamer may share the directory.
    fn remove_stale_temps(&self) -> Result<(), Error> {
        let io_err = |what| {
            let path = self.dir.clone();
            move |source| Error::Io { path, what, source }
        };
        for entry in fs::read_dir(&self.dir).map_err(io_err("cannot list the directory"))? {
            let entry = entry.map_err(io_err("cannot list the directory"))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if layout::is_temp_of(&self.prefix, name) {
                let path = entry.path();
                fs::remove_file(&path).map_err(|source| Error::Io {
                    path: path.clone(),
                    what: "cannot remove stale temporary file",
                    source,
                })?;
                tracing::warn!(streamer = %self.name, path = %path.display(), "removed stale temporary file");
            }
        }
        Ok(())
    }

    /// Writes block `block`'s files.
    fn write_block(&mut self, block: &Block) -> Result<(), Error> {
        let height = block.height();
        let len = block.encoded_len() as u64;
        let header = layout::encode_header(len);
        // The payload is written straight from the shared change set: the
        // header, then one slice per store, in one vectored write.
        let mut parts: Vec<&[u8]> = Vec::with_capacity(1 + block.stores().count());
        parts.push(&header);
        parts.extend(block.encoded());
        let data_name = layout::file_name(&self.prefix, height, FileKind::Data);
        write_atomically(&self.dir, &data_name, &parts, self.fsync())?;
        if let Some(syncer) = &self.syncer {
            syncer.add(self.dir.join(&data_name));
        }
        if self.output_metadata {
            let crc = block.payload_crc32c();
            self.meta_buf.clear();
            self.meta_buf.extend_from_slice(&[0; HEADER_LEN]);
            block.encode_metadata(len, crc, &mut self.meta_buf);
            let meta_len = (self.meta_buf.len() - HEADER_LEN) as u64;
            self.meta_buf[..HEADER_LEN].copy_from_slice(&layout::encode_header(meta_len));
            let meta_name = layout::file_name(&self.prefix, height, FileKind::Meta);
            write_atomically(&self.dir, &meta_name, &[&self.meta_buf], self.fsync())?;
            if let Some(syncer) = &self.syncer {
                syncer.add(self.dir.join(&meta_name));
            }
        }
        Ok(())
    }
}

impl Streamer for FileStreamer {
    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        self.write_block(block).map_err(StreamError::new)
    }

    /// With `fsync = true` every block is durable when `on_block` returns
    /// and this does nothing. With `fsync = false` it waits until the
    /// background thread has synced every file written so far, and the
    /// directory: the node persists a cursor only for flushed blocks, so a
    /// power loss makes it write the lost files again instead of skipping
    /// them. A failed sync is returned here (and the node delivers the
    /// unflushed blocks again).
    fn on_flush(&mut self) -> Result<(), StreamError> {
        match &self.syncer {
            Some(syncer) => syncer.wait().map_err(StreamError::new),
            None => Ok(()),
        }
    }
}

/// Writes `parts` to `dir/final_name` through a temporary file and a rename.
/// With `fsync`, the file is synced before the rename and the directory
/// after it, so that the name and the bytes are durable when this returns;
/// and since the data file's rename is made durable before the meta file is
/// written, a meta file found after a crash always has its data file.
fn write_atomically(
    dir: &Path,
    final_name: &str,
    parts: &[&[u8]],
    fsync: bool,
) -> Result<(), Error> {
    let temp = dir.join(layout::temp_name(final_name));
    let result = write_temp(&temp, parts, fsync);
    if let Err(e) = result {
        // Best effort: a temporary file left here is removed at the next start.
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    let path = dir.join(final_name);
    if let Err(source) = fs::rename(&temp, &path) {
        let _ = fs::remove_file(&temp);
        return Err(Error::Io {
            path,
            what: "cannot rename the temporary file into place",
            source,
        });
    }
    if fsync {
        sync_dir(dir)?;
    }
    Ok(())
}

fn write_temp(temp: &Path, parts: &[&[u8]], fsync: bool) -> Result<(), Error> {
    let io_err = |what| {
        move |source| Error::Io {
            path: temp.to_path_buf(),
            what,
            source,
        }
    };
    let mut file = create_file(temp).map_err(io_err("cannot create"))?;
    write_all_vectored(&mut file, parts).map_err(io_err("cannot write"))?;
    if fsync {
        file.sync_all().map_err(io_err("cannot fsync"))?;
    }
    Ok(())
}

/// Creates (or truncates) a block file with mode `0o644` (less the umask):
/// block files are for readers, any user may read them, only the node's
/// user may change them, whatever umask the node runs under.
#[cfg(unix)]
fn create_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(layout::FILE_MODE)
        .open(path)
}

#[cfg(not(unix))]
fn create_file(path: &Path) -> io::Result<File> {
    File::create(path)
}

/// `write_all` over several slices, in as few system calls as the OS allows.
fn write_all_vectored(file: &mut File, parts: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| IoSlice::new(p))
        .collect();
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes a file that was renamed into place durable (its data and inode).
pub(crate) fn sync_file(path: &Path) -> Result<(), Error> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            what: "cannot fsync",
            source,
        })
}

/// Makes the directory's entries (our renames) durable.
#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            what: "cannot fsync the directory",
            source,
        })
}

/// Directories cannot be opened for syncing here; renames are made durable
/// by the file system's own journal.
#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) -> Result<(), Error> {
    Ok(())
}
