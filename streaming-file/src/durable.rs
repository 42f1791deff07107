//! Making what the writer put in place durable: fsync of a file or a
//! directory, and `syncfs` of a whole file system (Linux). Used by the
//! writer (`fsync = true`) and by the syncer (`fsync = false`).

use std::fs::File;
use std::path::Path;

use crate::error::Error;

/// Makes a file that was put in place durable (its data and inode).
pub(crate) fn sync_file(path: &Path) -> Result<(), Error> {
    open_and_sync(path, "cannot fsync")
}

/// Opens `path` (a file, or on Unix a directory) and fsyncs it.
fn open_and_sync(path: &Path, what: &'static str) -> Result<(), Error> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            what,
            source,
        })
}

/// Makes everything written to `dir`'s file system durable (`syncfs`): the
/// files in it, their names, and whatever else is dirty there.
#[cfg(target_os = "linux")]
pub(crate) fn sync_file_system(dir: &Path) -> Result<(), Error> {
    use std::os::unix::io::AsRawFd;
    let err = |source| Error::Io {
        path: dir.to_path_buf(),
        what: "cannot sync the file system",
        source,
    };
    let d = File::open(dir).map_err(err)?;
    // SAFETY: `d` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes the directory's entries (our links and renames) durable.
#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    open_and_sync(dir, "cannot fsync the directory")
}

/// Directories cannot be opened for syncing here; renames are made durable
/// by the file system's own journal.
#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) -> Result<(), Error> {
    Ok(())
}
