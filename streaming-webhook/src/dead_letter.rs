//! Dead letters: a request whose retry schedule is exhausted, written to
//! `<dead_letter_dir>/<webhook-id>.http` as HTTP/1.1 text with its
//! credentials redacted.
//!
//! The directory is the node's alone (0700) and each file is readable by
//! the node's user only (0600): a dead letter holds the state value, and
//! it must not hand anyone the means to send requests in the streamer's
//! name, so the URL, the credential headers and the signature go through
//! [`redact`].

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::redact;
use crate::request::{Request, unix_now};
use crate::sign::Secret;

/// The dead-letter directory's mode: the node's user only.
#[cfg(unix)]
const DIR_MODE: u32 = 0o700;
/// A dead letter's mode: readable and writable by the node's user only.
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and its parents) with mode 0700, and takes group and
/// other access away from it when it exists with more.
pub(crate) fn create_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(DIR_MODE);
        builder.create(dir)?;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    builder.create(dir)
}

/// The text of a dead letter: the request line, the headers (configured,
/// then the streamer's, then `content-length`, `statestream-attempts` and
/// `statestream-last-error`), a blank line, the body. URL and header values
/// are redacted; the body is as sent.
pub(crate) fn render(req: &Request, secrets: &[Secret], attempts: usize, last: &str) -> Vec<u8> {
    let mut text = format!("{} {} HTTP/1.1\r\n", req.method, redact::url(&req.url));
    for (n, v) in &req.headers {
        let value = String::from_utf8_lossy(v.as_bytes());
        text.push_str(&format!(
            "{n}: {}\r\n",
            one_line(&redact::header(n.as_str(), &value))
        ));
    }
    for (n, v) in req.standard_headers(secrets, unix_now()) {
        text.push_str(&format!("{n}: {}\r\n", one_line(&redact::header(n, &v))));
    }
    text.push_str(&format!("content-length: {}\r\n", req.body.len()));
    text.push_str(&format!("statestream-attempts: {attempts}\r\n"));
    let last = redact::url_in(last, &req.url);
    text.push_str(&format!(
        "statestream-last-error: {}\r\n\r\n",
        one_line(&last)
    ));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(&req.body);
    bytes
}

/// Writes `req` to `<dir>/<webhook-id>.http`, under a temporary name first
/// and synced, so a file under its final name is complete. A block
/// delivered again overwrites it with the same body.
pub(crate) fn write(
    dir: &Path,
    req: &Request,
    secrets: &[Secret],
    attempts: usize,
    last: &str,
) -> Result<PathBuf, Error> {
    let path = dir.join(format!("{}.http", req.id));
    let tmp = dir.join(format!(".{}.http.tmp", req.id));
    let bytes = render(req, secrets, attempts, last);
    let write = || -> std::io::Result<()> {
        create_dir(dir)?;
        // A temporary file left by a crash is replaced; `create_new`
        // (O_EXCL) then never follows a link someone else put there.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(FILE_MODE);
        }
        let mut f = options.open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        // The rename is durable once the directory is synced.
        #[cfg(unix)]
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    };
    write().map_err(|source| Error::DeadLetter {
        id: req.id.clone(),
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// `s` with control characters (line breaks included) turned into spaces,
/// so one value stays one header line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
