//! The file streamer: names, atomic rewrite, directory checks, prefixes.

use std::fs;
use std::time::Duration;

use prost::Message;

use statestream_core::Streamer;
use statestream_file::{BlockDir, Error, FileStreamerConfig, ReadOptions};

use crate::util::{self, blocks, names, streamer, try_streamer, with_prefix, write_blocks};

#[test]
fn writer_files_only_under_final_names() {
    let dir = tempfile::tempdir().unwrap();
    write_blocks(dir.path(), "", &blocks(3));
    assert_eq!(
        names(dir.path()),
        [
            "block-1-data",
            "block-1-meta",
            "block-2-data",
            "block-2-meta",
            "block-3-data",
            "block-3-meta"
        ]
    );
}

#[test]
fn writer_data_file_is_header_then_encoded_segments() {
    let dir = tempfile::tempdir().unwrap();
    let bs = blocks(2);
    write_blocks(dir.path(), "", &bs);
    for b in &bs {
        let bytes = fs::read(dir.path().join(format!("block-{}-data", b.height()))).unwrap();
        let mut expected = (b.encoded_len() as u64).to_be_bytes().to_vec();
        for seg in b.encoded() {
            expected.extend_from_slice(seg);
        }
        assert_eq!(bytes, expected);
    }
}

#[test]
fn writer_meta_matches_block_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let bs = blocks(2);
    write_blocks(dir.path(), "", &bs);
    let bd = BlockDir::open(dir.path(), "", ReadOptions::default()).unwrap();
    for b in &bs {
        let file = bd.open_block(b.height()).unwrap();
        let crc = statestream_core::crc32c_append(0, file.payload());
        let mut expected = b.metadata(file.payload().len() as u64, crc);
        let covered = expected.encode_to_vec();
        expected.meta_crc32c = Some(statestream_core::crc32c_append(0, &covered));
        assert_eq!(file.meta(), Some(&expected));
        assert!(file.meta_has_checksum());
    }
}

#[test]
fn writer_rewrite_gives_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let bs = blocks(2);
    write_blocks(dir.path(), "", &bs);
    let before: Vec<_> = names(dir.path())
        .iter()
        .map(|n| fs::read(dir.path().join(n)).unwrap())
        .collect();
    // The same streamer again, and a new one (as after a restart).
    let mut s = streamer(dir.path(), FileStreamerConfig::default());
    s.on_block(&bs[1]).unwrap();
    s.on_block(&bs[1]).unwrap();
    write_blocks(dir.path(), "", &bs);
    let after: Vec<_> = names(dir.path())
        .iter()
        .map(|n| fs::read(dir.path().join(n)).unwrap())
        .collect();
    assert_eq!(names(dir.path()).len(), 4);
    assert_eq!(before, after);
}

#[test]
fn writer_without_metadata_writes_data_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = streamer(
        dir.path(),
        FileStreamerConfig {
            output_metadata: false,
            ..FileStreamerConfig::default()
        },
    );
    for b in blocks(2) {
        s.on_block(&b).unwrap();
    }
    assert_eq!(names(dir.path()), ["block-1-data", "block-2-data"]);
    let bd = BlockDir::open(dir.path(), "", ReadOptions::default()).unwrap();
    assert!(bd.open_block(1).unwrap().meta().is_none());
}

#[test]
fn writer_fsync_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = streamer(
        dir.path(),
        FileStreamerConfig {
            fsync: true,
            ..FileStreamerConfig::default()
        },
    );
    for b in blocks(2) {
        s.on_block(&b).unwrap();
    }
    assert_eq!(names(dir.path()).len(), 4);
}

#[test]
fn writer_creates_missing_write_dir() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b/c");
    write_blocks(&nested, "", &blocks(1));
    assert_eq!(names(&nested), ["block-1-data", "block-1-meta"]);
}

#[test]
fn writer_relative_write_dir_is_under_home() {
    let home = tempfile::tempdir().unwrap();
    let options = statestream_config::StreamerOptions::default();
    let stores = util::store_keys();
    let ctx = statestream_core::StreamerContext {
        name: "file",
        stores: &stores,
        all_stores: &stores,
        home: home.path(),
        reader: None,
        shutdown: &statestream_core::Shutdown::default(),
        push: None,
    };
    let s = FileStreamerConfig::default().build(&ctx, &options).unwrap();
    assert_eq!(s.dir(), home.path().join("data/streaming"));
    assert!(home.path().join("data/streaming").is_dir());
}

#[test]
fn writer_unwritable_write_dir_is_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    fs::write(&file, b"x").unwrap();

    // write_dir is a file: refused by the options' check (the same one
    // `config check` runs), naming the key.
    let err = try_streamer(&file, FileStreamerConfig::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("write_dir") && msg.contains("a-file") && msg.contains("not a directory"),
        "{msg}"
    );

    // write_dir cannot be created (its parent is a file).
    let below = file.join("sub");
    let err = try_streamer(&below, FileStreamerConfig::default()).unwrap_err();
    assert!(
        matches!(err, Error::WriteDir { ref path, .. } if *path == below),
        "{err}"
    );
    assert!(err.to_string().contains("a-file/sub"), "{err}");

    // A read-only directory (not checkable as root, who may write anyway).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("ro");
        fs::create_dir(&ro).unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
        let probe = ro.join("probe");
        let root = fs::write(&probe, b"").is_ok();
        let _ = fs::remove_file(&probe);
        if root {
            eprintln!("running as root: read-only directory check skipped");
        } else {
            let err = try_streamer(&ro, FileStreamerConfig::default()).unwrap_err();
            assert!(matches!(err, Error::WriteDir { .. }), "{err}");
            assert!(err.to_string().contains("not writable"), "{err}");
        }
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn writer_unsafe_prefixes_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["a/b", "a\\b", "..", "x..y", "a\0b", "a\nb", "\u{7}"] {
        let err = try_streamer(dir.path(), with_prefix(bad)).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{bad:?}: {err}");
        assert!(err.to_string().contains("prefix"), "{err}");
    }
    assert!(names(dir.path()).is_empty());
}

#[test]
fn writer_stale_temps_removed_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    for n in [
        ".block-4-data.tmp",
        ".block-4-meta.tmp",
        ".a-block-4-data.tmp",
        ".statestream-probe-1.tmp",
        "notes.txt",
        ".hidden",
    ] {
        fs::write(p.join(n), b"stale").unwrap();
    }
    let _s = streamer(p, FileStreamerConfig::default());
    assert_eq!(names(p), [".a-block-4-data.tmp", ".hidden", "notes.txt"]);
    let _s = streamer(p, with_prefix("a"));
    assert_eq!(names(p), [".hidden", "notes.txt"]);
}

#[test]
fn writer_prefixes_do_not_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let bs = blocks(3);
    write_blocks(dir.path(), "", &bs[..2]);
    write_blocks(dir.path(), "a", &bs);
    write_blocks(dir.path(), "a-block-1", &bs[..1]);
    let heights = |prefix| {
        BlockDir::open(dir.path(), prefix, ReadOptions::default())
            .unwrap()
            .heights()
            .unwrap()
    };
    assert_eq!(heights(""), [1, 2]);
    assert_eq!(heights("a"), [1, 2, 3]);
    assert_eq!(heights("a-block-1"), [1]);
    assert_eq!(heights("b"), Vec::<u64>::new());
    assert!(names(dir.path()).contains(&"a-block-1-block-1-data".to_string()));
    // Each data file belongs to exactly one prefix; other files to none.
    fs::write(dir.path().join("notes-block-x-data"), b"").unwrap();
    fs::write(dir.path().join(".b-block-1-data.tmp"), b"").unwrap();
    assert_eq!(
        BlockDir::prefixes(dir.path()).unwrap(),
        ["", "a", "a-block-1"]
    );
}

#[test]
fn writer_follow_sees_blocks_written_later() {
    let dir = tempfile::tempdir().unwrap();
    let bs = blocks(5);
    write_blocks(dir.path(), "", &bs[..1]);
    let path = dir.path().to_path_buf();
    let writer = std::thread::spawn(move || {
        let mut s = streamer(&path, FileStreamerConfig::default());
        for b in &bs[1..] {
            std::thread::sleep(Duration::from_millis(30));
            s.on_block(b).unwrap();
        }
    });
    let bd = BlockDir::open(dir.path(), "", ReadOptions::default()).unwrap();
    let seen: Vec<(u64, bool)> = bd
        .follow(1, Duration::from_millis(5))
        .take(5)
        .map(|b| {
            let b = b.unwrap();
            (b.height(), b.meta().is_some())
        })
        .collect();
    writer.join().unwrap();
    assert_eq!(
        seen,
        [(1, true), (2, true), (3, true), (4, true), (5, true)]
    );
}

#[test]
fn writer_follow_without_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = streamer(
        dir.path(),
        FileStreamerConfig {
            output_metadata: false,
            ..FileStreamerConfig::default()
        },
    );
    for b in blocks(2) {
        s.on_block(&b).unwrap();
    }
    let bd = BlockDir::open(dir.path(), "", ReadOptions::default()).unwrap();
    let heights: Vec<u64> = bd
        .follow(1, Duration::from_millis(5))
        .take(2)
        .map(|b| b.unwrap().height())
        .collect();
    assert_eq!(heights, [1, 2]);
}

/// A symlink planted under a temporary name (by another user of a shared
/// `write_dir`) is not followed: the file it points to keeps its bytes, and
/// the block gets a regular file of its own. With `fsync = true` every file
/// goes through its temporary name.
#[cfg(unix)]
#[test]
fn writer_does_not_follow_a_planted_temp_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("blocks");
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"not yours").unwrap();
    let bs = blocks(1);
    let mut s = streamer(
        &dir,
        FileStreamerConfig {
            fsync: true,
            ..FileStreamerConfig::default()
        },
    );
    // Planted after the streamer started, so that its removal of stale
    // temporary files does not take them away.
    for name in [".block-1-data.tmp", ".block-1-meta.tmp"] {
        std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
    }
    s.on_block(&bs[0]).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"not yours");
    for name in ["block-1-data", "block-1-meta"] {
        let md = fs::symlink_metadata(dir.join(name)).unwrap();
        assert!(md.file_type().is_file(), "{name} is {md:?}");
    }
    assert_eq!(names(&dir), ["block-1-data", "block-1-meta"]);
    let bd = BlockDir::open(&dir, "", ReadOptions::default()).unwrap();
    assert_eq!(
        bd.open_block(1).unwrap().payload().len(),
        bs[0].encoded_len()
    );
}
