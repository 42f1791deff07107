//! `FileCursor`: what it saves and loads, how (a temporary file created
//! exclusively without following links, fsynced, renamed, the directory
//! fsynced: checked under strace), and a file that is not a cursor.

use std::path::Path;
use std::process::Command;

use statestream_client::{CursorError, CursorStore, FileCursor};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn file_cursor_saves_loads_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cursor");
    let mut cursor = FileCursor::new(&path);
    assert_eq!(cursor.load().unwrap(), None);
    cursor.save(7).unwrap();
    cursor.save(12).unwrap();
    assert_eq!(read(&path), "12\n");
    assert_eq!(FileCursor::new(&path).load().unwrap(), Some(12));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["cursor"]);
}

#[test]
fn file_cursor_that_does_not_parse_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for text in ["", "\n", "twelve\n", "-3\n", "12 13\n", "\u{0}\u{1}"] {
        let path = dir.path().join("cursor");
        std::fs::write(&path, text).unwrap();
        let error = FileCursor::new(&path).load().unwrap_err();
        assert!(
            matches!(&error, CursorError::Parse { path: p, .. } if p == &path),
            "{text:?}: {error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains(&path.display().to_string()) && message.contains("height"),
            "{message}"
        );
    }
    // Surrounding whitespace is not an error (a file edited by hand).
    let path = dir.path().join("cursor");
    std::fs::write(&path, "  41 \r\n").unwrap();
    assert_eq!(FileCursor::new(&path).load().unwrap(), Some(41));
}

#[test]
fn file_cursor_that_cannot_be_read_or_written_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be: unreadable as a file.
    let path = dir.path().join("cursor");
    std::fs::create_dir(&path).unwrap();
    let error = FileCursor::new(&path).load().unwrap_err();
    assert!(matches!(error, CursorError::Read { .. }), "{error:?}");
    assert!(error.to_string().contains(&path.display().to_string()));
    // A directory that does not exist: the save fails, naming file and height.
    let path = dir.path().join("missing/cursor");
    let error = FileCursor::new(&path).save(5).unwrap_err();
    assert!(
        matches!(error, CursorError::Write { height: 5, .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
}

#[cfg(unix)]
#[test]
fn file_cursor_never_writes_through_a_link_planted_at_its_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cursor");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("cursor.tmp")).unwrap();
    FileCursor::new(&path).save(9).unwrap();
    assert_eq!(read(&victim), "precious\n");
    assert_eq!(read(&path), "9\n");
    assert!(
        !std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(!dir.path().join("cursor.tmp").exists());
}

#[test]
fn file_cursor_replaces_a_temporary_file_left_by_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cursor");
    std::fs::write(&path, "3\n").unwrap();
    std::fs::write(dir.path().join("cursor.tmp"), "4").unwrap();
    let mut cursor = FileCursor::new(&path);
    assert_eq!(cursor.load().unwrap(), Some(3));
    cursor.save(5).unwrap();
    assert_eq!(read(&path), "5\n");
    assert!(!dir.path().join("cursor.tmp").exists());
}

/// Run by `file_cursor_save_is_exclusive_synced_renamed_and_the_directory_synced`
/// under strace: one save to the file named in the environment.
#[test]
#[ignore = "run by another test, under strace"]
fn file_cursor_child_saves_once() {
    let path = std::env::var_os("STATESTREAM_TEST_CURSOR").expect("the cursor file");
    FileCursor::new(path).save(42).unwrap();
}

#[test]
fn file_cursor_save_is_exclusive_synced_renamed_and_the_directory_synced() {
    let available = Command::new("strace").arg("-V").output().is_ok();
    if !statestream_test_support::require(
        "file_cursor_save_is_exclusive_synced_renamed_and_the_directory_synced",
        "strace",
        available,
        "apt-get install strace",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cursor");
    let trace = dir.path().join("trace");
    let out = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=open,openat,write,fsync,fdatasync,rename,renameat,renameat2,close",
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "file_cursor_child_saves_once",
            "--ignored",
            "--test-threads=1",
        ])
        .env("STATESTREAM_TEST_CURSOR", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read(&path), "42\n");
    let trace = read(&trace);
    let dir_text = dir.path().display().to_string();
    // Only the calls on our directory, in order.
    let calls: Vec<&str> = trace
        .lines()
        .filter(|l| l.contains(&dir_text) || l.contains("fsync(") || l.contains("\"42\\n\""))
        .collect();
    let position = |what: &dyn Fn(&str) -> bool, name: &str| {
        calls
            .iter()
            .position(|l| what(l))
            .unwrap_or_else(|| panic!("no {name} in the trace:\n{}", calls.join("\n")))
    };
    let create = position(
        &|l: &str| {
            l.contains("cursor.tmp")
                && l.contains("O_CREAT")
                && l.contains("O_EXCL")
                && l.contains("O_NOFOLLOW")
        },
        "exclusive no-follow creation of the temporary file",
    );
    let write = position(&|l: &str| l.contains("\"42\\n\""), "write of the height");
    let file_sync = position(&|l: &str| l.contains("fsync("), "fsync of the file");
    let rename = position(
        &|l: &str| l.contains("rename") && l.contains("cursor.tmp"),
        "rename",
    );
    let dir_open = position(
        &|l: &str| {
            l.contains("O_RDONLY")
                && l.contains(&format!("\"{dir_text}\""))
                && !l.contains("cursor")
        },
        "open of the directory",
    );
    let dir_sync = calls
        .iter()
        .enumerate()
        .skip(dir_open + 1)
        .find(|(_, l)| l.contains("fsync("))
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("no fsync of the directory:\n{}", calls.join("\n")));
    assert!(
        create < write
            && write < file_sync
            && file_sync < rename
            && rename < dir_open
            && dir_open < dir_sync,
        "{}",
        calls.join("\n")
    );
}
