//! Crash test: runs `statestream node` as a child process, kills it with
//! SIGKILL at random moments, restarts it, and checks at the end that every
//! height 1..=N is in the file output exactly once, that `verify` passes, and
//! that `replay` rebuilds the node's app hash.
//!
//! The kill schedule is seeded (`STATESTREAM_CRASH_SEED`, default: the
//! current time) and printed, so a failing run can be reproduced.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{BIN, SplitMix, run_json, seed};

/// Kills per configuration; the issue asks for at least 30 in a run.
const KILLS: u32 = 30;

fn data_heights(dir: &Path) -> (BTreeSet<u64>, Vec<String>) {
    let mut heights = BTreeSet::new();
    let mut others = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the streaming dir") {
        let name = entry
            .expect("dir entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let h = name
            .strip_prefix("block-")
            .and_then(|rest| rest.strip_suffix("-data"))
            .and_then(|n| n.parse::<u64>().ok());
        match h {
            Some(h) => assert!(heights.insert(h), "height {h} written twice"),
            None if name.starts_with("block-") && name.ends_with("-meta") => {}
            None => others.push(name),
        }
    }
    (heights, others)
}

fn crash_run(label: &str, config: &str, node_flags: &[&str]) {
    let seed = seed();
    println!("crash test {label}: seed {seed} (set STATESTREAM_CRASH_SEED={seed} to repeat)");
    let mut rng = SplitMix(seed);
    let home = tempfile::tempdir().expect("temp home");
    let home_s = home.path().to_str().expect("utf-8 temp path").to_string();
    let config_path = home.path().join("app.toml");
    std::fs::write(&config_path, config).expect("write app.toml");
    let config_s = config_path.to_str().expect("utf-8").to_string();
    let mut base: Vec<String> = vec![
        "node".into(),
        "--home".into(),
        home_s.clone(),
        "--config".into(),
        config_s.clone(),
        "--writes-per-block".into(),
        "50".into(),
    ];
    base.extend(node_flags.iter().map(|s| s.to_string()));

    let started = Instant::now();
    for kill in 0..KILLS {
        let mut child = Command::new(BIN)
            .args(&base)
            .args(["--blocks", "1000000"])
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the node");
        let wait = Duration::from_millis(30 + rng.next() % 300);
        std::thread::sleep(wait);
        // Child::kill sends SIGKILL on Unix: no handler, no cleanup.
        child.kill().expect("SIGKILL the node");
        let status = child.wait().expect("reap the node");
        assert!(
            !status.success(),
            "kill {kill}: the node exited on its own: {status}"
        );
    }
    println!(
        "crash test {label}: {KILLS} kills in {:?}",
        started.elapsed()
    );

    // Finish cleanly. The node may restart below heights already in files
    // (with fsync off a crash rolls the store back to its last durable
    // commit; the files after it are written again, identically): run it
    // past the highest file so the files and the store end at one height.
    let dir = home.path().join("data/streaming");
    let mut flags: Vec<&str> = base.iter().map(String::as_str).collect();
    flags.extend(["--blocks", "1", "--json"]);
    let mut last = run_json(&flags);
    let (heights, _) = data_heights(&dir);
    let max_file = heights.iter().next_back().copied().unwrap_or(0);
    let height = last["height"].as_u64().expect("height");
    if max_file > height {
        let more = (max_file - height + 1).to_string();
        let mut flags: Vec<&str> = base.iter().map(String::as_str).collect();
        flags.extend(["--blocks", more.as_str(), "--json"]);
        last = run_json(&flags);
    }
    let height = last["height"].as_u64().expect("height");
    let app_hash = last["app_hash"].as_str().expect("app_hash").to_string();
    println!("crash test {label}: final height {height}");
    assert!(height > 1, "the node made no progress");

    let (heights, others) = data_heights(&dir);
    let expected: BTreeSet<u64> = (1..=height).collect();
    assert_eq!(
        heights,
        expected,
        "heights in {} are not exactly 1..={height}",
        dir.display()
    );
    assert!(
        others.is_empty(),
        "unexpected files left in the write dir: {others:?}"
    );

    let dir_s = dir.to_str().expect("utf-8").to_string();
    let verify = Command::new(BIN)
        .args(["verify", &dir_s])
        .output()
        .expect("run verify");
    assert!(
        verify.status.success(),
        "verify failed: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    let replay_home: PathBuf = home.path().join("replay");
    let replay = run_json(&[
        "replay",
        &dir_s,
        "--into",
        replay_home.to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(replay["height"].as_u64(), Some(height));
    assert_eq!(
        replay["app_hash"].as_str(),
        Some(app_hash.as_str()),
        "replayed app hash differs"
    );
}

const FILE_ASYNC: &str = r#"
[store]
streamers = ["file"]

[streamers.file]
keys = ["*"]
write_dir = "data/streaming"
fsync = FSYNC
delivery = "DELIVERY"
queue = QUEUE
"#;

fn config(fsync: bool, delivery: &str, queue: u32) -> String {
    FILE_ASYNC
        .replace("FSYNC", if fsync { "true" } else { "false" })
        .replace("DELIVERY", delivery)
        .replace("QUEUE", &queue.to_string())
}

#[test]
fn crash_fsync_on_async() {
    crash_run("fsync on, async", &config(true, "async", 64), &[]);
}

#[test]
fn crash_fsync_off_async() {
    crash_run(
        "fsync off, async",
        &config(false, "async", 64),
        &["--no-fsync"],
    );
}

#[test]
fn crash_async_queue_1() {
    crash_run("async, queue 1", &config(false, "async", 1), &[]);
}

#[test]
fn crash_sync() {
    crash_run("sync", &config(false, "sync", 64), &[]);
}
