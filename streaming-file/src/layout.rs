//! Every on-disk name and constant of the block-file format, in one place.
//!
//! For `prefix = "P"` and block height `N` (decimal, no padding):
//!
//! | file | name |
//! |---|---|
//! | data | `P-block-N-data` (`block-N-data` when the prefix is empty) |
//! | meta | `P-block-N-meta` |
//! | temporary | `.` + final name + `.tmp` (e.g. `.P-block-N-data.tmp`) |
//! | write probe | `.P-statestream-probe-<pid>.tmp` |
//!
//! A name belongs to a prefix only when it matches the whole pattern for that
//! exact prefix: `a-block-1-data` is a block of prefix `a` and of no other
//! prefix (not of the empty prefix, whose names start with `block-`, and not
//! of prefix `a-block-1`, whose names would be `a-block-1-block-N-data`).
//! Heights are parsed strictly: ASCII digits, no sign, no leading zero.

/// Length of the header of both files: the payload length as a big-endian
/// `u64`.
pub(crate) const HEADER_LEN: usize = 8;

/// Between the prefix and the height.
const BLOCK_WORD: &str = "block-";
/// Separates a non-empty prefix from [`BLOCK_WORD`].
const PREFIX_SEPARATOR: &str = "-";
/// Ends a data file's name.
const DATA_SUFFIX: &str = "-data";
/// Ends a meta file's name.
const META_SUFFIX: &str = "-meta";
/// Starts a temporary file's name (hidden on Unix, and never a final name,
/// which starts with the prefix or `block-`... unless the prefix starts with
/// a dot: the `.tmp` suffix still tells them apart).
const TEMP_START: &str = ".";
/// Ends a temporary file's name.
const TEMP_END: &str = ".tmp";
/// The write probe's stem, after the prefix.
const PROBE_WORD: &str = "statestream-probe-";

/// The permission bits block files are created with (less the process's
/// umask): readable by all, writable by the node's user only.
#[cfg(unix)]
pub(crate) const FILE_MODE: u32 = 0o644;

/// The longest file-name prefix accepted, in bytes: keeps every name well under the
/// usual 255-byte file-name limit.
pub const MAX_PREFIX_LEN: usize = 128;

/// Which of a block's two files a name designates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Data,
    Meta,
}

impl FileKind {
    fn suffix(self) -> &'static str {
        match self {
            FileKind::Data => DATA_SUFFIX,
            FileKind::Meta => META_SUFFIX,
        }
    }
}

/// The part of every name that comes before the height: `P-block-` or
/// `block-`.
fn stem(prefix: &str) -> String {
    if prefix.is_empty() {
        BLOCK_WORD.to_string()
    } else {
        format!("{prefix}{PREFIX_SEPARATOR}{BLOCK_WORD}")
    }
}

/// The final name of one of block `height`'s files.
pub(crate) fn file_name(prefix: &str, height: u64, kind: FileKind) -> String {
    format!("{}{height}{}", stem(prefix), kind.suffix())
}

/// The path of block `height`'s file of `kind` in `dir`.
pub(crate) fn block_path(
    dir: &std::path::Path,
    prefix: &str,
    height: u64,
    kind: FileKind,
) -> std::path::PathBuf {
    dir.join(file_name(prefix, height, kind))
}

/// The temporary name a file is written under before it is renamed to
/// `final_name`.
pub(crate) fn temp_name(final_name: &str) -> String {
    format!("{TEMP_START}{final_name}{TEMP_END}")
}

/// The name of the file created and removed to check that the directory is
/// writable.
pub(crate) fn probe_name(prefix: &str) -> String {
    let owner = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}{PREFIX_SEPARATOR}")
    };
    format!(
        "{TEMP_START}{owner}{PROBE_WORD}{}{TEMP_END}",
        std::process::id()
    )
}

/// The height and kind of a final block-file name of `prefix`, or `None`
/// when the name is anything else (another prefix, a temporary file...).
pub(crate) fn parse_name(prefix: &str, name: &str) -> Option<(u64, FileKind)> {
    let rest = name.strip_prefix(stem(prefix).as_str())?;
    let (digits, kind) = if let Some(d) = rest.strip_suffix(DATA_SUFFIX) {
        (d, FileKind::Data)
    } else {
        (rest.strip_suffix(META_SUFFIX)?, FileKind::Meta)
    };
    parse_height(digits).map(|h| (h, kind))
}

/// The prefix whose data-file pattern `name` matches, or `None` when it is
/// no data file of any prefix: the inverse of [`parse_name`]. The height
/// follows the last `block-` of the name (a height has no `block-` in it),
/// so every data-file name belongs to exactly one prefix.
pub(crate) fn data_file_prefix(name: &str) -> Option<&str> {
    let rest = name.strip_suffix(DATA_SUFFIX)?;
    let at = rest.rfind(BLOCK_WORD)?;
    parse_height(&rest[at + BLOCK_WORD.len()..])?;
    let before = &rest[..at];
    let prefix = if before.is_empty() {
        before
    } else {
        before
            .strip_suffix(PREFIX_SEPARATOR)
            .filter(|p| !p.is_empty())?
    };
    check_prefix(prefix).ok().map(|()| prefix)
}

/// A height as written in names: canonical decimal only, so that every
/// height has exactly one name.
fn parse_height(digits: &str) -> Option<u64> {
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if canonical { digits.parse().ok() } else { None }
}

/// Whether `name` is a temporary file that a writer of `prefix` leaves behind
/// when it stops between creating and renaming it (or a probe).
pub(crate) fn is_temp_of(prefix: &str, name: &str) -> bool {
    let Some(inner) = name
        .strip_prefix(TEMP_START)
        .and_then(|n| n.strip_suffix(TEMP_END))
    else {
        return false;
    };
    if parse_name(prefix, inner).is_some() {
        return true;
    }
    let owner = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}{PREFIX_SEPARATOR}")
    };
    inner
        .strip_prefix(owner.as_str())
        .and_then(|n| n.strip_prefix(PROBE_WORD))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Checks that `prefix` is a plain file-name fragment. The reason is
/// returned for the caller to put in its own error.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.len() > MAX_PREFIX_LEN {
        return Err("must be at most 128 bytes long");
    }
    if prefix.contains('/') || prefix.contains('\\') {
        return Err("must be a plain file-name fragment, without '/' or '\\'");
    }
    if prefix.contains("..") {
        return Err("must not contain \"..\"");
    }
    if prefix.chars().any(char::is_control) {
        return Err("must not contain NUL or control characters");
    }
    Ok(())
}

/// The 8-byte header in front of a payload of `len` bytes.
pub(crate) fn encode_header(len: u64) -> [u8; HEADER_LEN] {
    len.to_be_bytes()
}

/// The payload length a header announces.
pub(crate) fn decode_header(header: [u8; HEADER_LEN]) -> u64 {
    u64::from_be_bytes(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_names() {
        assert_eq!(file_name("", 7, FileKind::Data), "block-7-data");
        assert_eq!(file_name("", 7, FileKind::Meta), "block-7-meta");
        assert_eq!(file_name("a", 12, FileKind::Data), "a-block-12-data");
        assert_eq!(temp_name("a-block-12-data"), ".a-block-12-data.tmp");
    }

    #[test]
    fn layout_parse_exact_prefix() {
        assert_eq!(parse_name("", "block-1-data"), Some((1, FileKind::Data)));
        assert_eq!(parse_name("", "block-1-meta"), Some((1, FileKind::Meta)));
        assert_eq!(parse_name("", "a-block-1-data"), None);
        assert_eq!(parse_name("a", "a-block-1-data"), Some((1, FileKind::Data)));
        assert_eq!(parse_name("a", "block-1-data"), None);
        assert_eq!(parse_name("a", "ab-block-1-data"), None);
        assert_eq!(parse_name("a", "a-block-1-block-2-data"), None);
        assert_eq!(
            parse_name("a-block-1", "a-block-1-block-2-data"),
            Some((2, FileKind::Data))
        );
        for bad in [
            "block--data",
            "block-01-data",
            "block-+1-data",
            "block-1-data.tmp",
            ".block-1-data.tmp",
            "block-1-datax",
            "block-99999999999999999999-data",
        ] {
            assert_eq!(parse_name("", bad), None, "{bad}");
        }
        assert_eq!(parse_name("", "block-0-data"), Some((0, FileKind::Data)));
    }

    #[test]
    fn layout_data_file_prefix_inverts_parse_name() {
        for (name, prefix) in [
            ("block-1-data", Some("")),
            ("a-block-1-data", Some("a")),
            ("a-block-1-block-2-data", Some("a-block-1")),
            ("x.y-block-10-data", Some("x.y")),
            ("-block-1-data", None),
            ("block-1-meta", None),
            ("block-01-data", None),
            (".block-1-data.tmp", None),
            ("ablock-1-data", None),
            ("a..b-block-1-data", None),
            ("notes.txt", None),
        ] {
            assert_eq!(data_file_prefix(name), prefix, "{name}");
            if let Some(p) = prefix {
                assert!(
                    matches!(parse_name(p, name), Some((_, FileKind::Data))),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn layout_temp_names() {
        assert!(is_temp_of("", ".block-3-data.tmp"));
        assert!(is_temp_of("", ".block-3-meta.tmp"));
        assert!(!is_temp_of("", ".a-block-3-data.tmp"));
        assert!(is_temp_of("a", ".a-block-3-data.tmp"));
        assert!(is_temp_of("a", &probe_name("a")));
        assert!(is_temp_of("", &probe_name("")));
        assert!(!is_temp_of("", &probe_name("a")));
        assert!(!is_temp_of("", "block-3-data"));
        assert!(!is_temp_of("", ".block-3-data"));
    }

    #[test]
    fn layout_prefix_check() {
        for ok in ["", "a", "node-1", "x.y", "with space"] {
            assert!(check_prefix(ok).is_ok(), "{ok}");
        }
        let long = "p".repeat(MAX_PREFIX_LEN + 1);
        for bad in ["a/b", "a\\b", "..", "a..b", "a\0", "a\nb", "\x7f", &long] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
