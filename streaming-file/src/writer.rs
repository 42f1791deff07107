//! The file streamer: one data file and one optional meta file per block.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::path::{Path, PathBuf};

use statestream_core::{Block, StreamError, Streamer};

use crate::durable::sync_dir;
use crate::error::Error;
use crate::layout::{self, FileKind, HEADER_LEN};
use crate::syncer::Syncer;

/// `type = "file"`: writes each block's records for the streamer's stores
/// to `[P-]block-N-data` and, with `output-metadata`, its
/// `BlockMetadata` to `[P-]block-N-meta` (layout in `docs/file-format.md`).
///
/// Each file is written without its final name (unnamed on Linux with
/// `fsync = false`, else under a temporary name), fsynced when `fsync = true`,
/// then given its name (and the directory fsynced), the data file before
/// the meta file: a reader never sees a partial file under a final name, and
/// a meta file is only there once its data file is. Delivering a height again
/// writes the same bytes and replaces the files atomically, so the streamer
/// is idempotent per height. With `fsync = false`, a background thread syncs
/// the files put in place (and the directory) as soon as the streamer
/// pauses, and `on_flush` waits for the ones it has not synced yet. Built by
/// [`FileStreamerConfig::build`](crate::FileStreamerConfig::build).
pub struct FileStreamer {
    name: String,
    dir: PathBuf,
    prefix: String,
    output_metadata: bool,
    /// The meta file's bytes (header + message), reused from block to block.
    meta_buf: Vec<u8>,
    /// With `fsync = false`: syncs the files put in place, in the
    /// background; `on_flush` waits for it. `None`: `fsync = true`, every
    /// file is synced as it is written.
    syncer: Option<Syncer>,
    /// How new files get their names: linked in unnamed, or through a
    /// temporary name (see [`Publish`]).
    publish: Publish,
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
        create_file(&probe)
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
            publish: Publish::default(),
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
        let data_path = self
            .publish
            .write(&self.dir, &data_name, &parts, self.fsync())?;
        if let Some(syncer) = &self.syncer {
            syncer.add(data_path);
        }
        if self.output_metadata {
            let crc = block.payload_crc32c();
            self.meta_buf.clear();
            self.meta_buf.extend_from_slice(&[0; HEADER_LEN]);
            block.encode_metadata(len, crc, &mut self.meta_buf);
            let meta_len = (self.meta_buf.len() - HEADER_LEN) as u64;
            self.meta_buf[..HEADER_LEN].copy_from_slice(&layout::encode_header(meta_len));
            let meta_name = layout::file_name(&self.prefix, height, FileKind::Meta);
            let meta_path =
                self.publish
                    .write(&self.dir, &meta_name, &[&self.meta_buf], self.fsync())?;
            if let Some(syncer) = &self.syncer {
                syncer.add(meta_path);
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

/// How [`FileStreamer`] puts a new file under its final name, so that the
/// name only ever shows all of its bytes.
///
/// On Linux, with `fsync = false`, a file is first written unnamed
/// (`O_TMPFILE`) and then linked in under its final name: one directory
/// entry is made, and a crash leaves no temporary file behind. With
/// `fsync = true` (see [`Publish::write`] for why), elsewhere, or when the
/// file system or `/proc` does not allow it, the file is written under a
/// temporary name and renamed into place, which makes and removes a second
/// entry (its cost: `docs/performance.md`, "Files are written unnamed and
/// linked in"). Linking
/// fails when the final name exists (a height delivered again after a
/// restart); that file takes the temporary name and the rename, which
/// replaces the old one atomically.
#[derive(Debug, Default)]
enum Publish {
    /// Try the unnamed file first.
    #[cfg(target_os = "linux")]
    #[default]
    Unnamed,
    /// Always a temporary name and a rename.
    #[cfg_attr(not(target_os = "linux"), default)]
    Rename,
}

impl Publish {
    /// Writes `parts` to `dir/final_name` and returns that path. With `fsync`, the file is synced
    /// before it gets its name and the directory after, so that the name
    /// and the bytes are durable when this returns; and since the data
    /// file's name is made durable before the meta file is written, a meta
    /// file found after a crash always has its data file.
    ///
    /// With `fsync` every file goes through the temporary name: a linked-in
    /// file's new link count is made durable by syncing the directory only
    /// where the file system logs the link as one operation (journalled
    /// ext4, XFS), not on ext4 without a journal, which writes only the
    /// directory; a renamed file's inode was synced before the rename.
    /// Without `fsync` the syncer fsyncs each file after it got its name,
    /// which writes the inode as linked.
    fn write(
        &mut self,
        dir: &Path,
        final_name: &str,
        parts: &[&[u8]],
        fsync: bool,
    ) -> Result<PathBuf, Error> {
        let path = dir.join(final_name);
        #[cfg(target_os = "linux")]
        if let (Publish::Unnamed, false) = (&*self, fsync) {
            match unnamed::write(dir, &path, parts)? {
                unnamed::Outcome::Linked => return Ok(path),
                unnamed::Outcome::NotLinked => {}
                unnamed::Outcome::Unsupported(reason) => {
                    tracing::debug!(
                        dir = %dir.display(),
                        %reason,
                        "unnamed files unavailable: writing through temporary names"
                    );
                    *self = Publish::Rename;
                }
            }
        }
        write_through_temp(dir, final_name, &path, parts, fsync)?;
        Ok(path)
    }
}

/// Writes `parts` to `path` (`dir/final_name`) through a temporary file and
/// a rename.
fn write_through_temp(
    dir: &Path,
    final_name: &str,
    path: &Path,
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
    if let Err(source) = fs::rename(&temp, path) {
        let _ = fs::remove_file(&temp);
        return Err(Error::Io {
            path: path.to_path_buf(),
            what: "cannot rename the temporary file into place",
            source,
        });
    }
    if fsync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Files written unnamed (`O_TMPFILE`) and linked in under their final name.
#[cfg(target_os = "linux")]
mod unnamed {
    use std::ffi::CString;
    use std::fs::OpenOptions;
    use std::io;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    use std::path::Path;

    use super::write_all_vectored;
    use crate::error::Error;
    use crate::layout;

    pub(super) enum Outcome {
        /// The file is in place.
        Linked,
        /// Nothing was written under the name, for this file only: a file of
        /// that name exists, or the directory refused (the temporary-name
        /// path then reports why).
        NotLinked,
        /// This kernel, file system or system does not allow it; nothing was
        /// written under the name.
        Unsupported(io::Error),
    }

    /// Whether an `open(O_TMPFILE)` error means the mechanism is missing
    /// (old kernel: `EISDIR`; file system without it: `EOPNOTSUPP`) rather
    /// than a problem of this directory or this moment.
    fn open_unsupported(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
        )
    }

    /// Whether a `linkat` error means linking through `/proc` is not
    /// possible here (no `/proc`, or a security policy forbids it).
    fn link_unsupported(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::ENOENT | libc::EPERM | libc::EACCES | libc::EXDEV | libc::ENOTDIR)
        )
    }

    /// Writes `parts` into a new unnamed file in `dir` and links it in as
    /// `path` (a name in `dir`), without syncing. Errors writing the bytes are the
    /// caller's; anything that says the mechanism is unavailable is an
    /// [`Outcome`].
    pub(super) fn write(dir: &Path, path: &Path, parts: &[&[u8]]) -> Result<Outcome, Error> {
        let io_err = |what| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, what, source }
        };
        let mut file = match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(layout::FILE_MODE)
            .open(dir)
        {
            Ok(f) => f,
            Err(e) if open_unsupported(&e) => return Ok(Outcome::Unsupported(e)),
            Err(_) => return Ok(Outcome::NotLinked),
        };
        write_all_vectored(&mut file, parts).map_err(io_err("cannot write"))?;
        // linkat(2) with AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the link
        // through /proc does not.
        let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .expect("no NUL in a formatted number");
        let Ok(to) = CString::new(path.as_os_str().as_bytes()) else {
            return Ok(Outcome::Unsupported(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a NUL byte in the path",
            )));
        };
        // SAFETY: both paths are NUL-terminated C strings that outlive the
        // call; AT_FDCWD with absolute or relative paths is always valid.
        let rc = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Ok(if link_unsupported(&e) {
                Outcome::Unsupported(e)
            } else {
                // EEXIST (a height delivered again), or e.g. ENOSPC.
                Outcome::NotLinked
            });
        }
        Ok(Outcome::Linked)
    }
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

/// Creates a new file under a temporary name with mode `0o644` (less the
/// umask): block files are for readers, any user may read them, only the
/// node's user may change them, whatever umask the node runs under.
///
/// The name must not exist yet (`O_EXCL`) and is never followed as a symlink
/// (`O_NOFOLLOW`): in a directory another user can write to, a link planted
/// under the temporary name would otherwise redirect the node's write to a
/// file of that user's choice. Something already under the name (a temporary
/// file a failed write could not remove, or a planted link) is removed, which
/// removes a link and not its target, and the file is created once more; if
/// the name is taken again, that is the error.
fn create_file(path: &Path) -> io::Result<File> {
    match open_new(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(path)?;
            open_new(path)
        }
        other => other,
    }
}

#[cfg(unix)]
fn open_new(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(layout::FILE_MODE)
        .open(path)
}

#[cfg(not(unix))]
fn open_new(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Both ways of putting a file in place: first write, then a second
    /// write of the same name (a height delivered again), with and without
    /// fsync. Only the final name is left, with the last bytes.
    #[test]
    fn publish_writes_and_replaces_under_the_final_name() {
        for start in [Publish::default(), Publish::Rename] {
            for fsync in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let mut publish = match start {
                    Publish::Rename => Publish::Rename,
                    #[cfg(target_os = "linux")]
                    Publish::Unnamed => Publish::Unnamed,
                };
                let path = publish
                    .write(dir.path(), "block-1-data", &[b"head", b"", b"er"], fsync)
                    .unwrap();
                assert_eq!(path, dir.path().join("block-1-data"));
                assert_eq!(
                    fs::read(dir.path().join("block-1-data")).unwrap(),
                    b"header"
                );
                publish
                    .write(dir.path(), "block-1-data", &[b"again"], fsync)
                    .unwrap();
                assert_eq!(fs::read(dir.path().join("block-1-data")).unwrap(), b"again");
                assert_eq!(names(dir.path()), ["block-1-data"], "{publish:?}");
            }
        }
    }

    /// On Linux, where the file system takes `O_TMPFILE`, files are linked
    /// in unnamed, and the writer stays on that path after a name that was
    /// taken.
    #[cfg(target_os = "linux")]
    #[test]
    fn publish_stays_unnamed_on_linux() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let supported = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(dir.path())
            .is_ok();
        if !supported || !Path::new("/proc/self/fd").is_dir() {
            eprintln!("no O_TMPFILE or /proc here: unnamed files not checked");
            return;
        }
        let mut publish = Publish::default();
        assert!(matches!(publish, Publish::Unnamed));
        for _ in 0..2 {
            publish.write(dir.path(), "x", &[b"1"], false).unwrap();
        }
        assert!(matches!(publish, Publish::Unnamed), "{publish:?}");
        assert_eq!(names(dir.path()), ["x"]);
    }

    /// A directory that is gone is an error naming the file, whichever path.
    #[test]
    fn publish_into_a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let err = Publish::default()
            .write(&gone, "block-1-data", &[b"x"], false)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("gone/.block-1-data.tmp") || msg.contains("gone/block-1-data"),
            "{msg}"
        );
    }
}
