//! Where files go, and with which permissions: `prefix` and `write_dir`
//! tricks, a `write_dir` swapped for a symlink (or a file) while the streamer
//! runs, the mode of block files.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use statestream_config::StreamerOptions;
use statestream_core::{Streamer, StreamerContext};
use statestream_file::{FileStreamer, FileStreamerConfig};

use crate::util::{blocks, names, store_keys, streamer, with_prefix};

/// Builds a streamer for `config` as a node with home `home` would.
fn build(
    home: &Path,
    config: &FileStreamerConfig,
) -> Result<FileStreamer, statestream_file::Error> {
    let options = StreamerOptions::default();
    let stores = store_keys();
    let ctx = StreamerContext {
        name: "file",
        stores: &stores,
        all_stores: &stores,
        home,
        reader: None,
        shutdown: &statestream_core::Shutdown::default(),
        push: None,
    };
    config.build(&ctx, &options)
}

fn data_names(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.ends_with("-data"))
        .collect()
}

#[test]
fn paths_unsafe_prefixes_are_refused_before_anything_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    for prefix in [
        "..",
        "../up",
        "a..b",
        "/",
        "/etc/passwd",
        "a/b",
        "a\\b",
        "a\0b",
        "a\nb",
        "\u{1b}[31m",
        "a\u{7f}",
        &"p".repeat(129),
    ] {
        let err = build(&home, &with_prefix(prefix)).expect_err(prefix);
        let msg = err.to_string();
        assert!(msg.contains("key `prefix`"), "{prefix:?}: {msg}");
        assert!(msg.contains("unsafe prefix"), "{prefix:?}: {msg}");
    }
    assert!(!home.exists(), "a refused prefix created something");
    // A plain fragment is fine, dots and dashes included.
    let dir = tmp.path().join("ok");
    let config = FileStreamerConfig {
        write_dir: dir.clone(),
        prefix: "chain-1.v2_x".into(),
        ..FileStreamerConfig::default()
    };
    let mut s = build(&home, &config).unwrap();
    s.on_block(&blocks(1)[0]).unwrap();
    assert_eq!(data_names(&dir), ["chain-1.v2_x-block-1-data"]);
}

/// `write_dir = "../outside"` is the operator's choice: relative paths are
/// joined to the home as they are, `..` included.
#[test]
fn paths_relative_write_dir_may_leave_the_home() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    fs::create_dir(&home).unwrap();
    let config = FileStreamerConfig {
        write_dir: "../outside".into(),
        ..FileStreamerConfig::default()
    };
    let mut s = build(&home, &config).unwrap();
    s.on_block(&blocks(1)[0]).unwrap();
    assert_eq!(data_names(&tmp.path().join("outside")), ["block-1-data"]);
    assert_eq!(names(&home), Vec::<String>::new());
}

#[test]
fn paths_absolute_write_dir_ignores_the_home() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("abs/streaming");
    let config = FileStreamerConfig {
        write_dir: dir.clone(),
        ..FileStreamerConfig::default()
    };
    let mut s = build(Path::new("/nonexistent-home"), &config).unwrap();
    s.on_block(&blocks(1)[0]).unwrap();
    assert_eq!(data_names(&dir), ["block-1-data"]);
}

/// The writer resolves `write_dir` by path for every file: once the path
/// leads somewhere else (a symlink retargeted, a directory renamed and
/// replaced), the next blocks go there. Files already written stay where
/// they are, whole.
#[test]
fn paths_write_dir_symlink_swapped_while_running_is_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let link = tmp.path().join("streaming");
    symlink(&a, &link).unwrap();
    let bs = blocks(6);
    let mut s = streamer(&link, FileStreamerConfig::default());
    s.on_block(&bs[0]).unwrap();
    s.on_block(&bs[1]).unwrap();

    // Retarget the link atomically (a new link renamed over the old one).
    let next = tmp.path().join("streaming.next");
    symlink(&b, &next).unwrap();
    fs::rename(&next, &link).unwrap();
    s.on_block(&bs[2]).unwrap();
    s.on_block(&bs[3]).unwrap();
    assert_eq!(data_names(&a), ["block-1-data", "block-2-data"]);
    assert_eq!(data_names(&b), ["block-3-data", "block-4-data"]);

    // A dangling link: the block fails, naming the temporary file.
    fs::remove_dir_all(&b).unwrap();
    let err = s.on_block(&bs[4]).unwrap_err().to_string();
    assert!(err.contains("block-5-data.tmp"), "{err}");
    assert!(err.contains("cannot create"), "{err}");

    // The directory comes back: the same block is delivered again.
    fs::create_dir(&b).unwrap();
    s.on_block(&bs[4]).unwrap();
    s.on_block(&bs[5]).unwrap();
    assert_eq!(data_names(&b), ["block-5-data", "block-6-data"]);
    assert!(names(&b).iter().all(|n| !n.ends_with(".tmp")));
}

/// Block files are created `0o644` less the umask, whatever the umask
/// allows beyond that.
#[test]
fn paths_block_files_are_readable_by_all_writable_by_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = streamer(dir.path(), FileStreamerConfig::default());
    s.on_block(&blocks(1)[0]).unwrap();
    let umask = current_umask();
    for name in ["block-1-data", "block-1-meta"] {
        let mode = fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(
            mode,
            0o644 & !umask,
            "{name}: mode {mode:o}, umask {umask:o}"
        );
    }
}

/// The umask, read from /proc (reading it with umask(2) would change it for
/// the other tests running in this process); 0o022 where /proc does not
/// tell.
fn current_umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}
