//! Where a subscription keeps the last height its consumer has handled.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::CursorError;

/// Where a subscription keeps its cursor: the last height whose state the
/// consumer has handled (a block, or the end of a snapshot). The
/// subscription loads it once, before its first connection, and saves
/// only what the consumer acknowledges
/// ([`ResumableSubscription::ack`](crate::ResumableSubscription::ack)).
pub trait CursorStore: Send {
    /// The stored cursor, `None` when there is none yet.
    fn load(&mut self) -> Result<Option<u64>, CursorError>;
    /// Stores `height` as handled. Heights only grow: the subscription
    /// never saves a height below one it saved before.
    fn save(&mut self, height: u64) -> Result<(), CursorError>;
}

/// A cursor kept in memory (lost with the process).
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryCursor(pub Option<u64>);

impl CursorStore for MemoryCursor {
    fn load(&mut self) -> Result<Option<u64>, CursorError> {
        Ok(self.0)
    }
    fn save(&mut self, height: u64) -> Result<(), CursorError> {
        self.0 = Some(height);
        Ok(())
    }
}

/// A cursor kept in a file as decimal text, replaced atomically and
/// durably: the new height goes to `<file>.tmp` (created exclusively and
/// without following a symbolic link, so another user of a shared
/// directory cannot redirect the write), which is fsynced, renamed over
/// the file, and the directory fsynced. After a crash the file holds the
/// old height or the new one, never a mix. One process per file.
#[derive(Debug, Clone)]
pub struct FileCursor {
    path: PathBuf,
}

/// How much of a file that is not a cursor an error quotes.
const QUOTED_BYTES: usize = 64;

impl FileCursor {
    /// A cursor in `path` (created on the first save).
    pub fn new(path: impl AsRef<Path>) -> FileCursor {
        FileCursor {
            path: path.as_ref().to_path_buf(),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn tmp_path(&self) -> PathBuf {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        PathBuf::from(tmp)
    }

    fn write(&self, height: u64) -> Result<(), (&'static str, std::io::Error)> {
        let tmp = self.tmp_path();
        let mut file = match create_exclusive(&tmp) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Left by a process that died between creating and renaming
                // it, or planted: removing it unlinks the name itself (never
                // what a link points to), and the new one is again created
                // exclusively.
                fs::remove_file(&tmp).map_err(|e| ("removing the stale temporary file", e))?;
                create_exclusive(&tmp).map_err(|e| ("creating the temporary file", e))?
            }
            Err(e) => return Err(("creating the temporary file", e)),
        };
        file.write_all(format!("{height}\n").as_bytes())
            .map_err(|e| ("writing the temporary file", e))?;
        file.sync_all()
            .map_err(|e| ("syncing the temporary file", e))?;
        drop(file);
        fs::rename(&tmp, &self.path).map_err(|e| ("renaming the temporary file", e))?;
        sync_dir(&self.path).map_err(|e| ("syncing the directory", e))
    }
}

/// Creates `path`, failing when anything (a file, a symbolic link) is
/// there already.
fn create_exclusive(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        // `create_new` is O_CREAT|O_EXCL, which already refuses a symbolic
        // link as the last component; O_NOFOLLOW says so to the kernel too.
        options.custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path)
}

/// Makes the rename durable: the directory entry is on disk once this
/// returns.
fn sync_dir(file: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        Ok(())
    }
}

impl CursorStore for FileCursor {
    fn load(&mut self) -> Result<Option<u64>, CursorError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CursorError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        text.trim()
            .parse()
            .map(Some)
            .map_err(|_| CursorError::Parse {
                path: self.path.clone(),
                text: text.chars().take(QUOTED_BYTES).collect(),
            })
    }

    fn save(&mut self, height: u64) -> Result<(), CursorError> {
        self.write(height)
            .map_err(|(step, source)| CursorError::Write {
                path: self.path.clone(),
                height,
                step,
                source,
            })
    }
}
