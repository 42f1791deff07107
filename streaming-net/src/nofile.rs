//! The file descriptor limit.

use std::fmt;

/// What [`raise_nofile_limit`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NofileLimit {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now.
    pub after: u64,
    /// The hard limit (`u64::MAX`: unlimited).
    pub hard: u64,
}

impl fmt::Display for NofileLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.after > self.before {
            write!(
                f,
                "raised the open file limit from {} to {}",
                self.before, self.after
            )
        } else {
            write!(
                f,
                "open file limit {} (the hard limit is {})",
                self.after,
                Hard(self.hard)
            )
        }
    }
}

struct Hard(u64);

impl fmt::Display for Hard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == u64::MAX {
            f.write_str("unlimited")
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// Why the limit could not be read or raised.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NofileError {
    /// `getrlimit(RLIMIT_NOFILE)` failed.
    #[error("cannot read the open file limit: {source}")]
    Read {
        #[source]
        source: std::io::Error,
    },
    /// `setrlimit(RLIMIT_NOFILE)` failed.
    #[error("cannot raise the open file limit from {from} to {to}: {source}")]
    Raise {
        from: u64,
        to: u64,
        #[source]
        source: std::io::Error,
    },
    /// Not a Unix system.
    #[error("the open file limit cannot be changed on this system")]
    Unsupported,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as servers do at
/// start: the soft limit (often 1024) is a default for programs that
/// never needed more, and a node with listeners needs the headroom. On
/// macOS, where the hard limit may be unlimited but the kernel caps a
/// process at `OPEN_MAX`, the soft limit is raised to that cap.
///
/// Returns what it found and did, for a log line.
pub fn raise_nofile_limit() -> Result<NofileLimit, NofileError> {
    imp::raise()
}

#[cfg(unix)]
mod imp {
    use super::{NofileError, NofileLimit};

    fn to_u64(value: libc::rlim_t) -> u64 {
        if value == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            #[allow(clippy::useless_conversion)]
            u64::try_from(value).unwrap_or(u64::MAX)
        }
    }

    pub(super) fn raise() -> Result<NofileLimit, NofileError> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into the struct it is given,
        // which lives for the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return Err(NofileError::Read {
                source: std::io::Error::last_os_error(),
            });
        }
        let before = limit.rlim_cur;
        #[allow(unused_mut)]
        let mut target = limit.rlim_max;
        #[cfg(target_os = "macos")]
        {
            // setrlimit refuses a soft limit above OPEN_MAX on macOS.
            const OPEN_MAX: libc::rlim_t = 10240;
            target = target.min(OPEN_MAX);
        }
        if target <= before {
            return Ok(NofileLimit {
                before: to_u64(before),
                after: to_u64(before),
                hard: to_u64(limit.rlim_max),
            });
        }
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given, which lives for
        // the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(NofileError::Raise {
                from: to_u64(before),
                to: to_u64(target),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(NofileLimit {
            before: to_u64(before),
            after: to_u64(target),
            hard: to_u64(limit.rlim_max),
        })
    }
}

#[cfg(not(unix))]
mod imp {
    use super::{NofileError, NofileLimit};

    pub(super) fn raise() -> Result<NofileLimit, NofileError> {
        Err(NofileError::Unsupported)
    }
}
