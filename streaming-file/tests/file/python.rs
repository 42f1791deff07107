//! The Python reader in `examples/python` against the Rust reader.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use statestream_file::ReadOptions;

use crate::fixtures::fixture;
use crate::util::{blocks, records_json, write_blocks};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the workspace")
        .to_path_buf()
}

/// Whether `python3` with the `protobuf` package is available: required
/// under CI, reported as skipped elsewhere.
fn python_ready(test: &str) -> bool {
    statestream_test_support::require_python(test, &["google.protobuf"], "the protobuf package")
}

fn run_reader(args: &[&str]) -> Output {
    let root = repo_root();
    Command::new("python3")
        .arg(root.join("examples/python/read_blocks.py"))
        .args(args)
        .current_dir(&root)
        .output()
        .expect("python3 runs")
}

fn parse_lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "reader failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[test]
fn python_schema_matches_proto() {
    if !python_ready("python_schema_matches_proto") {
        return;
    }
    let out = run_reader(&["--check-proto", "streaming-core/proto/statestream/v1"]);
    assert!(
        out.status.success(),
        "hand-built descriptor differs from the .proto: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_reader_matches_rust_reader() {
    if !python_ready("python_reader_matches_rust_reader") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bs = blocks(4);
    write_blocks(dir.path(), "", &bs[..3]);
    write_blocks(dir.path(), "p", &bs);
    let d = dir.path().to_str().unwrap();
    for prefix in ["", "p"] {
        let python = parse_lines(&run_reader(&[d, "--prefix", prefix]));
        let rust = records_json(dir.path(), prefix, ReadOptions::default());
        assert!(!rust.is_empty());
        assert_eq!(python, rust, "prefix {prefix:?}");
    }
    // Meta files with their own checksum, and one without (older).
    for case in ["good", "meta-without-checksum"] {
        let dir = fixture(case);
        let python = parse_lines(&run_reader(&[dir.to_str().unwrap()]));
        assert_eq!(python, records_json(&dir, "", ReadOptions::default()));
    }
}

#[test]
fn python_reader_reports_corruption() {
    if !python_ready("python_reader_reports_corruption") {
        return;
    }
    for (case, needle) in [
        ("bad-crc", "crc mismatch"),
        ("truncated-payload", "length mismatch"),
        ("truncated-header", "truncated header"),
        ("bad-meta", "does not decode"),
        ("bad-varint", "bad record at offset"),
        ("bad-meta-crc", "meta checksum mismatch"),
    ] {
        let out = run_reader(&[fixture(case).to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: {stderr}");
        assert!(stderr.contains(needle), "{case}: {stderr}");
        assert!(stderr.contains(case), "{case}: {stderr}");
    }
}
