//! End-to-end tests of the `statestream` binary: every subcommand, its
//! output and its error paths (exit codes and the one-line messages).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_statestream");

/// What one run of the binary gave.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success, got {self:#?}");
        self
    }

    fn fails(self, code: i32, message: &str) -> Run {
        assert_eq!(self.code, code, "expected exit {code}, got {self:#?}");
        assert!(
            self.stderr.contains(message),
            "stderr lacks {message:?}: {self:#?}"
        );
        let error_lines: Vec<_> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("statestream: error: "))
            .collect();
        assert_eq!(error_lines.len(), 1, "expected one error line: {self:#?}");
        self
    }

    /// The last line of stdout, as JSON.
    fn json(&self) -> Value {
        let line = self.stdout.lines().last().expect("stdout has a line");
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
    }
}

fn statestream<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs");
    let run = Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    };
    assert!(!run.stderr.contains("panicked"), "a panic: {run:#?}");
    assert!(!run.stderr.contains("RUST_BACKTRACE"), "a panic: {run:#?}");
    run
}

fn p(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// A home with `blocks` committed blocks of the default configuration.
fn node_home(blocks: u64) -> (tempfile::TempDir, PathBuf, Value) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let home = tmp.path().join("home");
    let run = statestream([
        "node",
        "--home",
        p(&home),
        "--blocks",
        &blocks.to_string(),
        "--json",
    ])
    .ok();
    let summary = run.json();
    let streaming = home.join("data/streaming");
    (tmp, streaming, summary)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy file");
    }
}

#[test]
fn node_default_config_then_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let first = statestream(["node", "--home", p(&home), "--blocks", "3", "--json"]).ok();
    let j = first.json();
    assert_eq!(j["height"], 3);
    assert_eq!(j["blocks"], 3);
    assert!(j["records"].as_u64().unwrap() > 0);
    let hash = j["app_hash"].as_str().unwrap();
    assert_eq!(hash.len(), 64);
    assert!(
        hash.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(j["streamers"][0]["name"], "file");
    assert_eq!(j["streamers"][0]["delivered_height"], 3);

    let second = statestream(["node", "--home", p(&home), "--blocks", "2", "--json"]).ok();
    let j = second.json();
    assert_eq!(j["height"], 5);
    assert_eq!(j["first_height"], 4);
    assert_eq!(j["seed"], 0);
    for h in 1..=5 {
        for kind in ["data", "meta"] {
            let f = home.join(format!("data/streaming/block-{h}-{kind}"));
            assert!(f.is_file(), "{} is missing", f.display());
        }
    }
    statestream(["verify", p(&home.join("data/streaming"))]).ok();
}

#[test]
fn node_is_deterministic_per_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, seed: &str| {
        let home = tmp.path().join(name);
        statestream([
            "node",
            "--home",
            p(&home),
            "--blocks",
            "6",
            "--seed",
            seed,
            "--json",
        ])
        .ok()
        .json()["app_hash"]
            .clone()
    };
    assert_eq!(run("a", "7"), run("b", "7"));
    assert_ne!(run("c", "7"), run("d", "8"));
}

#[test]
fn node_without_fsync_gives_the_same_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let a = statestream([
        "node",
        "--home",
        p(&tmp.path().join("a")),
        "--blocks",
        "4",
        "--json",
    ])
    .ok()
    .json();
    let b = statestream([
        "node",
        "--home",
        p(&tmp.path().join("b")),
        "--blocks",
        "4",
        "--no-fsync",
        "--json",
    ])
    .ok()
    .json();
    assert_eq!(a["app_hash"], b["app_hash"]);
}

#[test]
fn node_seed_mismatch_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    statestream(["node", "--home", p(&home), "--blocks", "1", "--seed", "3"]).ok();
    statestream(["node", "--home", p(&home), "--blocks", "1", "--seed", "4"])
        .fails(1, "created with --seed 3");
    // Without --seed the stored one is used.
    let j = statestream(["node", "--home", p(&home), "--blocks", "1", "--json"])
        .ok()
        .json();
    assert_eq!(j["seed"], 3);
    assert_eq!(j["height"], 2);
}

#[test]
fn node_with_config_two_file_streamers() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let config = tmp.path().join("app.toml");
    std::fs::write(
        &config,
        r#"
[store]
streamers = ["everything", "money"]

[streamers.everything]
type = "file"
keys = ["*"]
write_dir = "out"
prefix = "all"

[streamers.money]
type = "file"
keys = ["bank", "acc"]
write-dir = "out"
prefix = "money"
output_metadata = true
delivery = "sync"
"#,
    )
    .unwrap();
    let node = statestream([
        "node",
        "--home",
        p(&home),
        "--config",
        p(&config),
        "--blocks",
        "5",
        "--json",
    ])
    .ok()
    .json();
    assert_eq!(node["streamers"].as_array().unwrap().len(), 2);
    let out = home.join("out");
    assert!(out.join("all-block-5-data").is_file());
    assert!(out.join("money-block-5-meta").is_file());
    assert!(!home.join("data/streaming").exists());

    for prefix in ["all", "money"] {
        let v = statestream(["verify", p(&out), "--prefix", prefix]).ok();
        assert!(v.stdout.contains("ok: 5 blocks"), "{v:#?}");
    }
    let dump = statestream(["dump", p(&out), "--prefix", "money", "--json"]).ok();
    let stores: std::collections::BTreeSet<String> = dump
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["store"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(stores, ["acc", "bank"].map(String::from).into());

    // The unfiltered stream rebuilds the node's state exactly.
    let replay = statestream([
        "replay",
        p(&out),
        "--prefix",
        "all",
        "--into",
        p(&tmp.path().join("r1")),
        "--json",
    ])
    .ok()
    .json();
    assert_eq!(replay["app_hash"], node["app_hash"]);
    // The filtered one rebuilds its stores, checked against the meta files.
    let replay = statestream([
        "replay",
        p(&out),
        "--prefix",
        "money",
        "--into",
        p(&tmp.path().join("r2")),
        "--json",
    ])
    .ok()
    .json();
    assert_eq!(replay["height"], 5);
    assert_eq!(replay["app_hashes_checked"], 0);
    assert_eq!(replay["store_hashes_checked"], 10);
}

#[test]
fn node_bad_config_names_file_key_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("app.toml");
    std::fs::write(
        &config,
        "[store]\nstreamers = [\"file\"]\n\n[streamers.file]\nkeys = [\"*\"]\nwirte_dir = \"x\"\n",
    )
    .unwrap();
    let home = tmp.path().join("home");
    let run = statestream(["node", "--home", p(&home), "--config", p(&config)])
        .fails(1, "key `wirte_dir` (line 6)");
    assert!(run.stderr.contains(p(&config)), "{run:#?}");
    assert!(run.stderr.contains("[streamers.file]"), "{run:#?}");
}

#[test]
fn node_config_unknown_store_and_syntax_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let config = tmp.path().join("app.toml");
    std::fs::write(
        &config,
        "[store]\nstreamers = [\"file\"]\n[streamers.file]\nkeys = [\"nope\"]\n",
    )
    .unwrap();
    statestream(["node", "--home", p(&home), "--config", p(&config)])
        .fails(1, "unknown store `nope`");
    std::fs::write(&config, "[store]\nstreamers = [\"file\"\n").unwrap();
    statestream(["node", "--home", p(&home), "--config", p(&config)])
        .fails(1, "invalid toml at line");
    std::fs::write(
        &config,
        "[store]\nstreamers = [\"x\"]\n[streamers.x]\nkeys = [\"*\"]\n",
    )
    .unwrap();
    statestream(["node", "--home", p(&home), "--config", p(&config)]).fails(1, "unknown type");
    statestream([
        "node",
        "--home",
        p(&home),
        "--config",
        p(&tmp.path().join("missing.toml")),
    ])
    .fails(1, "cannot read the config file");
}

#[test]
fn usage_errors_exit_2() {
    statestream(["node"]).fails(2, "--home");
    statestream(["node", "--home"]).fails(2, "--home");
    statestream(["node", "--home", "x", "--blocks", "many"]).fails(2, "--blocks");
    statestream(["dump", "--bogus", "x"]).fails(2, "--bogus");
    statestream(["verify"]).fails(2, "DIR");
    statestream(["replay", "somewhere"]).fails(2, "--into");
    statestream(["frobnicate"]).fails(2, "frobnicate");
    statestream(["dump", "anywhere", "--from", "5", "--to", "3"])
        .fails(2, "--from 5 is above --to 3");
    let help = statestream(["--help"]).ok();
    assert!(help.stdout.contains("verify"));
    statestream(["--version"]).ok();
}

#[test]
fn dump_text_json_and_filters() {
    let (_tmp, dir, _) = node_home(4);
    let all = statestream(["dump", p(&dir), "--json"]).ok();
    let records: Vec<Value> = all
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!records.is_empty());
    for r in &records {
        let delete = r["delete"].as_bool().unwrap();
        assert!(r["height"].as_u64().unwrap() >= 1);
        assert!(
            r["key"]
                .as_str()
                .unwrap()
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
        );
        assert_eq!(r["value"].is_null(), delete);
    }
    assert!(records.iter().any(|r| r["delete"] == true));
    assert!(records.iter().any(|r| r["key_utf8"] == "chain_id"));
    assert!(
        records
            .iter()
            .any(|r| r["value_utf8"] == "statestream-demo")
    );

    let bank = statestream(["dump", p(&dir), "--json", "--store", "bank"]).ok();
    assert!(bank.stdout.lines().count() > 0);
    assert!(bank.stdout.lines().all(|l| l.contains(r#""store":"bank""#)));

    let window = statestream(["dump", p(&dir), "--json", "--from", "2", "--to", "3"]).ok();
    let heights: std::collections::BTreeSet<u64> = window
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["height"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(heights, [2, 3].into());

    let text = statestream(["dump", p(&dir), "--to", "1"]).ok();
    assert!(
        text.stdout
            .contains(r#"1 params set "chain_id" = "statestream-demo""#),
        "{text:#?}"
    );
    assert_eq!(
        text.stdout.lines().count(),
        records.iter().filter(|r| r["height"] == 1).count()
    );
}

#[test]
fn dump_missing_dir_and_empty_dir() {
    let tmp = tempfile::tempdir().unwrap();
    statestream(["dump", p(&tmp.path().join("nope"))]).fails(1, "cannot open the block directory");
    statestream(["dump", p(tmp.path())]).fails(1, "no block files");
}

#[test]
fn verify_ok() {
    let (_tmp, dir, _) = node_home(6);
    let run = statestream(["verify", p(&dir)]).ok();
    assert!(run.stdout.starts_with("ok: 6 blocks"), "{run:#?}");
    assert!(run.stdout.contains("24 store hash links"), "{run:#?}");
    // --quiet prints nothing on success.
    let quiet = statestream(["--quiet", "verify", p(&dir)]).ok();
    assert_eq!(quiet.stdout, "");
}

#[test]
fn verify_starting_later_anchors_the_chain() {
    let (tmp, dir, _) = node_home(5);
    let copy = tmp.path().join("later");
    copy_dir(&dir, &copy);
    for kind in ["data", "meta"] {
        std::fs::remove_file(copy.join(format!("block-1-{kind}"))).unwrap();
        std::fs::remove_file(copy.join(format!("block-2-{kind}"))).unwrap();
    }
    let run = statestream(["verify", p(&copy)]).ok();
    assert!(run.stdout.contains("ok: 3 blocks"), "{run:#?}");
    assert!(run.stdout.contains("8 store hash links"), "{run:#?}");
    // Replay needs block 1.
    statestream(["replay", p(&copy), "--into", p(&tmp.path().join("r"))]).fails(1, "from height 1");
}

#[test]
fn verify_missing_middle_block() {
    let (tmp, dir, _) = node_home(5);
    let copy = tmp.path().join("gap");
    copy_dir(&dir, &copy);
    std::fs::remove_file(copy.join("block-3-data")).unwrap();
    std::fs::remove_file(copy.join("block-3-meta")).unwrap();
    let run = statestream(["verify", p(&copy)]).fails(1, "block 3 is missing");
    assert!(run.stderr.contains("block-3-data"), "{run:#?}");
}

#[test]
fn verify_truncated_data_file() {
    let (tmp, dir, _) = node_home(4);
    let copy = tmp.path().join("trunc");
    copy_dir(&dir, &copy);
    let f = copy.join("block-2-data");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let run = statestream(["verify", p(&copy)]).fails(1, "length mismatch");
    assert!(run.stderr.contains("block-2-data"), "{run:#?}");
    // A file shorter than its header.
    std::fs::write(copy.join("block-2-data"), [0u8; 3]).unwrap();
    statestream(["verify", p(&copy)]).fails(1, "truncated header");
}

#[test]
fn verify_flipped_byte_fails_the_crc() {
    let (tmp, dir, _) = node_home(4);
    let copy = tmp.path().join("flip");
    copy_dir(&dir, &copy);
    let f = copy.join("block-3-data");
    let mut bytes = std::fs::read(&f).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&f, bytes).unwrap();
    let run = statestream(["verify", p(&copy)]).fails(1, "crc mismatch");
    assert!(run.stderr.contains("block-3-data"), "{run:#?}");
}

#[test]
fn verify_without_meta_files_checks_records_only() {
    let (tmp, dir, _) = node_home(3);
    let copy = tmp.path().join("nometa");
    copy_dir(&dir, &copy);
    std::fs::remove_file(copy.join("block-2-meta")).unwrap();
    let run = statestream(["verify", p(&copy)]).ok();
    assert!(
        run.stdout.contains("1 blocks have no meta file"),
        "{run:#?}"
    );
    // Garbage records in a block without meta are still caught.
    let f = copy.join("block-2-data");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[8] = 0xff;
    bytes[9] = 0xff;
    std::fs::write(&f, bytes).unwrap();
    statestream(["verify", p(&copy)]).fails(1, "block-2-data");
}

/// Verification could not be made (exit 2), as opposed to failed (exit 1).
#[test]
fn verify_missing_dir_is_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    statestream(["verify", p(&tmp.path().join("nope"))])
        .fails(2, "cannot open the block directory");
    statestream(["verify", p(tmp.path())]).fails(2, "no block files");
    statestream(["verify", p(tmp.path()), "--prefix", "x"]).fails(2, "with prefix \"x\"");
}

#[test]
fn replay_matches_node_app_hash() {
    let (tmp, dir, node) = node_home(8);
    let into = tmp.path().join("rebuilt");
    let replay = statestream(["replay", p(&dir), "--into", p(&into), "--json"])
        .ok()
        .json();
    assert_eq!(replay["height"], 8);
    assert_eq!(replay["app_hash"], node["app_hash"]);
    assert_eq!(replay["app_hashes_checked"], 8);
    assert!(into.join("data/store.redb").is_file());
    // A store that already holds blocks is refused.
    statestream(["replay", p(&dir), "--into", p(&into)]).fails(1, "already holds 8 blocks");
}

#[test]
fn replay_detects_a_gap() {
    let (tmp, dir, _) = node_home(4);
    let copy = tmp.path().join("gap");
    copy_dir(&dir, &copy);
    std::fs::remove_file(copy.join("block-2-data")).unwrap();
    statestream(["replay", p(&copy), "--into", p(&tmp.path().join("r"))])
        .fails(1, "block 2 is missing");
}

#[test]
fn stats_text_and_json() {
    let (_tmp, dir, node) = node_home(5);
    let json = statestream(["stats", p(&dir), "--json"]).ok().json();
    assert_eq!(json["blocks"], 5);
    assert_eq!(json["records"], node["records"]);
    let stores: Vec<&str> = json["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["store"].as_str().unwrap())
        .collect();
    assert_eq!(stores, ["acc", "bank", "params", "tmp"]);
    let per_store: u64 = json["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["records"].as_u64().unwrap())
        .sum();
    assert_eq!(per_store, json["records"].as_u64().unwrap());
    let dumped = statestream(["dump", p(&dir)]).ok().stdout.lines().count() as u64;
    assert_eq!(per_store, dumped);
    let histogram: u64 = json["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["blocks"].as_u64().unwrap())
        .sum();
    assert_eq!(histogram, 5);

    let text = statestream(["stats", p(&dir)]).ok();
    assert!(text.stdout.starts_with("5 blocks (1..=5)"), "{text:#?}");
    assert!(text.stdout.contains("block payload sizes:"), "{text:#?}");
    assert!(!text.stdout.contains("warning"), "{text:#?}");
    assert_eq!(json["missing_heights"], 0);
    statestream(["stats", "/nonexistent/statestream"]).fails(1, "cannot open the block directory");

    // A gap is reported, not hidden.
    std::fs::remove_file(dir.join("block-3-data")).unwrap();
    std::fs::remove_file(dir.join("block-3-meta")).unwrap();
    let json = statestream(["stats", p(&dir), "--json"]).ok().json();
    assert_eq!(json["missing_heights"], 1);
    let text = statestream(["stats", p(&dir)]).ok();
    assert!(
        text.stdout
            .contains("warning: 1 heights between 1 and 5 have no block file"),
        "{text:#?}"
    );
}

#[test]
fn dump_and_tail_warn_about_missing_heights() {
    let (_tmp, dir, _node) = node_home(9);
    let full = statestream(["dump", p(&dir)]).ok();
    assert!(!full.stderr.contains("warning"), "{full:#?}");
    for h in [3, 6, 7] {
        std::fs::remove_file(dir.join(format!("block-{h}-data"))).unwrap();
        std::fs::remove_file(dir.join(format!("block-{h}-meta"))).unwrap();
    }
    let dump = statestream(["dump", p(&dir)]).ok();
    assert!(
        dump.stderr.contains(
            "statestream: warning: 3 heights have no block file: 3, 6-7; the other blocks are printed"
        ),
        "{dump:#?}"
    );
    // The blocks that are there are all printed.
    let heights: std::collections::BTreeSet<u64> = dump
        .stdout
        .lines()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(heights.into_iter().collect::<Vec<_>>(), [1, 2, 4, 5, 8, 9]);
    // Outside the range asked for, a hole is not reported.
    let part = statestream(["dump", p(&dir), "--from", "8"]).ok();
    assert!(!part.stderr.contains("warning"), "{part:#?}");

    let tail = statestream(["tail", p(&dir), "--from", "5"]).ok();
    assert!(
        tail.stderr
            .contains("statestream: warning: 2 heights have no block file: 6-7;"),
        "{tail:#?}"
    );
    assert_eq!(tail.stdout.lines().count(), 3, "{tail:#?}");
}

#[test]
fn cursors_lists_and_deletes() {
    let (tmp, dir, _node) = node_home(5);
    let home = tmp.path().join("home");
    let json = statestream(["cursors", "--home", p(&home), "--json"])
        .ok()
        .json();
    assert_eq!(json["height"], 5);
    assert_eq!(json["cursors"][0]["name"], "file");
    assert_eq!(json["cursors"][0]["height"], 5);
    assert_eq!(json["cursors"][0]["behind"], 0);
    assert_eq!(json["cursors"].as_array().unwrap().len(), 1);

    // An unknown name deletes nothing, and says what there is.
    statestream([
        "cursors",
        "--home",
        p(&home),
        "--delete",
        "file",
        "--delete",
        "flie",
    ])
    .fails(
        1,
        "no cursor named \"flie\" (the store holds: file); nothing was deleted",
    );
    let text = statestream(["cursors", "--home", p(&home)]).ok();
    assert!(text.stdout.contains("file "), "{text:#?}");

    let deleted = statestream(["cursors", "--home", p(&home), "--delete", "file"]).ok();
    assert!(
        deleted.stdout.starts_with("deleted the cursor \"file\""),
        "{deleted:#?}"
    );
    assert!(deleted.stdout.contains("no cursors"), "{deleted:#?}");

    // The streamer is new again: it starts with the next block.
    statestream(["node", "--home", p(&home), "--blocks", "2"]).ok();
    let json = statestream(["cursors", "--home", p(&home), "--json"])
        .ok()
        .json();
    assert_eq!(json["cursors"][0]["height"], 7);
    assert!(dir.join("block-7-data").exists());

    statestream(["cursors", "--home", p(&tmp.path().join("nohome"))])
        .fails(1, "no store (is --home a node's home?)");

    // A running node holds the store.
    let mut node = Command::new(BIN)
        .args([
            "-q",
            "node",
            "--home",
            p(&home),
            "--blocks",
            "1000000",
            "--no-fsync",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("node starts");
    // Wait for its first new block without touching the store (opening it
    // while the node starts would make the node fail to open it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !dir.join("block-9-data").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the node wrote no block"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let refused = statestream(["cursors", "--home", p(&home)]);
    node.kill().expect("kill the node");
    node.wait().expect("reap the node");
    refused.fails(1, "a running node holds the store: stop it first");
}

#[test]
fn tail_prints_one_line_per_block() {
    let (_tmp, dir, node) = node_home(12);
    let last10 = statestream(["tail", p(&dir)]).ok();
    let lines: Vec<&str> = last10.stdout.lines().collect();
    assert_eq!(lines.len(), 10);
    assert!(lines[0].starts_with("height=3 "), "{lines:?}");
    let hash = node["app_hash"].as_str().unwrap();
    assert!(lines[9].starts_with("height=12 "), "{lines:?}");
    assert!(lines[9].ends_with(&format!("app_hash={hash}")), "{lines:?}");
    let all = statestream(["tail", p(&dir), "--from", "1"]).ok();
    assert_eq!(all.stdout.lines().count(), 12);
    statestream(["tail", "/nonexistent/statestream"]).fails(1, "cannot open the block directory");
}

#[test]
fn tail_follow_sees_new_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    statestream(["node", "--home", p(&home), "--blocks", "2"]).ok();
    let dir = home.join("data/streaming");
    let mut child = Command::new(BIN)
        .args([
            "tail",
            p(&dir),
            "--follow",
            "--from",
            "1",
            "--poll-ms",
            "20",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().expect("a line").expect("readable");
    assert!(next().starts_with("height=1 "));
    assert!(next().starts_with("height=2 "));
    statestream(["node", "--home", p(&home), "--blocks", "2"]).ok();
    assert!(next().starts_with("height=3 "));
    assert!(next().starts_with("height=4 "));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn verify_detects_a_block_from_another_chain() {
    // Block 3 of another node is complete and consistent on its own (its
    // CRC and app hash match), but does not follow block 2 of this one.
    let (tmp, dir, _) = node_home(4);
    let other = tmp.path().join("other");
    statestream(["node", "--home", p(&other), "--blocks", "4", "--seed", "99"]).ok();
    let copy = tmp.path().join("mixed");
    copy_dir(&dir, &copy);
    for kind in ["data", "meta"] {
        let name = format!("block-3-{kind}");
        std::fs::copy(other.join("data/streaming").join(&name), copy.join(&name)).unwrap();
    }
    let run = statestream(["verify", p(&copy)]).fails(1, "hash chain broken");
    assert!(run.stderr.contains("block-3-data"), "{run:#?}");
}

#[cfg(unix)]
#[test]
fn node_stops_cleanly_on_ctrl_c() {
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let child = Command::new(BIN)
        .args([
            "node",
            "--home",
            p(&home),
            "--blocks",
            "100000000",
            "--no-fsync",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let dir = home.join("data/streaming");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("block-5-data").exists() {
        assert!(Instant::now() < deadline, "the node wrote no blocks");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on the child we spawned, which has not been waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let j: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let height = j["height"].as_u64().unwrap();
    assert!(height >= 5);
    // Every committed block was delivered before the exit.
    assert_eq!(j["streamers"][0]["delivered_height"], height);
    let v = statestream(["verify", p(&dir)]).ok();
    assert!(v.stdout.contains(&format!("ok: {height} blocks")), "{v:#?}");
}

#[test]
fn bench_only_runs_the_named_figures() {
    let run = statestream([
        "bench",
        "--json",
        "--quick",
        "--only",
        "verify_mb_s,commit_overhead_sync",
    ])
    .ok();
    let names: Vec<String> = run
        .stdout
        .lines()
        .map(|l| {
            let j: Value = serde_json::from_str(l).unwrap();
            j["name"].as_str().unwrap().to_string()
        })
        .collect();
    // In the order they always run, not the order asked.
    assert_eq!(names, ["commit_overhead_sync", "verify_mb_s"], "{run:#?}");
}

#[test]
fn bench_only_refuses_an_unknown_figure() {
    // A usage error: exit 2, naming the value and listing the figures.
    let run = statestream(["bench", "--quick", "--only", "reader_vs_raw,reader"]);
    assert_eq!(run.code, 2, "{run:#?}");
    assert!(
        run.stderr
            .contains("invalid value 'reader' for '--only <NAMES>'"),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains(
            "[possible values: commit_overhead_async, commit_overhead_sync, writer_vs_raw, \
             reader_vs_raw, verify_mb_s, replay_mb_s, node_peak_rss_mb, serve_commit_overhead, \
             serve_latency_ms, serve_latency_ms_p50_10, serve_latency_ms_p99_10, \
             serve_latency_ms_p50_100, serve_latency_ms_p99_100, \
             serve_latency_ms_p50_100_credentials, serve_latency_ms_p99_100_credentials, \
             snapshot_vs_scan, serve_stalled_rss_mb, sse_commit_overhead, sse_latency_ms, \
             sse_latency_ms_p50, sse_latency_ms_p99, sse_latency_ms_p50_credentials, \
             sse_latency_ms_p99_credentials, postgres_rows_per_s, cosmos_plugin_commit_ms, \
             cosmos_plugin_commit_ms_p50, cosmos_plugin_commit_ms_p99, relay_latency_ms, \
             relay_latency_ms_p50, relay_latency_ms_p99, relay_node_cpu_ratio, \
             relay_idle_subscriber_kib, relay_idle_subscriber_kib_1000, \
             relay_idle_subscriber_kib_10000]"
        ),
        "{run:#?}"
    );
    assert!(run.stdout.is_empty(), "{run:#?}");
}

#[test]
fn bench_only_accepts_a_printed_line_name_and_prints_that_line() {
    // `bench` prints serve_latency_ms as four lines: each name selects its
    // own line.
    let run = statestream([
        "bench",
        "--json",
        "--quick",
        "--only",
        "serve_latency_ms_p99_10,sse_latency_ms_p50",
    ])
    .ok();
    let names: Vec<String> = run
        .stdout
        .lines()
        .map(|l| {
            let j: Value = serde_json::from_str(l).unwrap();
            j["name"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        names,
        ["serve_latency_ms_p99_10", "sse_latency_ms_p50"],
        "{run:#?}"
    );
}

#[test]
fn bench_postgres_url_comes_from_the_environment_and_help_warns_of_ps() {
    let help = statestream(["bench", "--help"]).ok();
    assert!(
        help.stdout.contains("STATESTREAM_BENCH_POSTGRES") && help.stdout.contains("`ps`"),
        "{help:#?}"
    );
    // Without the flag or the variable the figure is skipped; with the
    // variable it is attempted (here against a port nothing listens on).
    let mut cmd = Command::new(BIN);
    cmd.args(["bench", "--quick", "--only", "postgres_rows_per_s"])
        .env_remove("STATESTREAM_BENCH_POSTGRES")
        .env("RUST_LOG", "error");
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("skipped"),
        "{out:?}"
    );
    // A "server" that hangs up on every connection: the attempt fails at
    // once, and the error is the figure's.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            drop(stream);
        }
    });
    let out = Command::new(BIN)
        .args(["bench", "--quick", "--only", "postgres_rows_per_s"])
        .env(
            "STATESTREAM_BENCH_POSTGRES",
            format!("postgresql://nobody@127.0.0.1:{port}/none"),
        )
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("postgres_rows_per_s") && !stderr.contains("skipped"),
        "{stderr}"
    );
}

#[test]
fn bench_quick_json_reports_every_figure() {
    let run = statestream(["bench", "--json", "--quick"]).ok();
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    let names: Vec<&str> = lines.iter().map(|j| j["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "commit_overhead_async",
            "commit_overhead_sync",
            "writer_vs_raw",
            "reader_vs_raw",
            "verify_mb_s",
            "replay_mb_s",
            "node_peak_rss_mb",
            "serve_commit_overhead",
            "serve_latency_ms_p50_10",
            "serve_latency_ms_p99_10",
            "serve_latency_ms_p50_100",
            "serve_latency_ms_p99_100",
            "serve_latency_ms_p50_100_credentials",
            "serve_latency_ms_p99_100_credentials",
            "snapshot_vs_scan",
            "serve_stalled_rss_mb",
            "sse_commit_overhead",
            "sse_latency_ms_p50",
            "sse_latency_ms_p99",
            "sse_latency_ms_p50_credentials",
            "sse_latency_ms_p99_credentials",
            "cosmos_plugin_commit_ms_p50",
            "cosmos_plugin_commit_ms_p99",
            "relay_latency_ms_p50",
            "relay_latency_ms_p99",
            "relay_node_cpu_ratio",
            "relay_idle_subscriber_kib_1000",
            "relay_idle_subscriber_kib_10000",
        ],
        "{run:#?}"
    );
    // Figures only: no timing is asserted (the machine decides those).
    for j in &lines {
        assert!(j["value"].as_f64().is_some_and(f64::is_finite), "{j}");
        assert!(j["unit"].as_str().is_some_and(|u| !u.is_empty()), "{j}");
        let name = j["name"].as_str().unwrap();
        let comparison = !name.ends_with("_mb_s")
            && !name.starts_with("serve_latency_ms")
            && !name.starts_with("sse_latency_ms")
            && !name.starts_with("relay_idle_subscriber_kib");
        assert_eq!(j["ratio"].as_f64().is_some(), comparison, "{j}");
        assert_eq!(j["baseline"].as_f64().is_some(), comparison, "{j}");
        // Comparisons over rounds also give the middle half of the
        // per-round ratios, around the median (one node run per size has
        // no rounds).
        let rounds = comparison
            && j["name"] != "node_peak_rss_mb"
            && j["name"] != "serve_stalled_rss_mb"
            && !name.starts_with("cosmos_plugin_commit_ms")
            && !name.starts_with("relay_latency_ms");
        let (q1, q3) = (j["ratio_q1"].as_f64(), j["ratio_q3"].as_f64());
        assert_eq!((q1.is_some(), q3.is_some()), (rounds, rounds), "{j}");
        if let (Some(q1), Some(q3), Some(r)) = (q1, q3, j["ratio"].as_f64()) {
            assert!(q1 <= r && r <= q3, "{j}");
        }
    }
}

/// Copies the block files of `from` (no prefix) into `to` under `prefix`.
fn copy_with_prefix(from: &Path, to: &Path, prefix: &str) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let name = entry.expect("dir entry").file_name();
        let name = name.to_str().expect("UTF-8 name");
        std::fs::copy(from.join(name), to.join(format!("{prefix}-{name}"))).expect("copy file");
    }
}

/// Every offline tool, given a directory of `P-block-N-data` files and no
/// `--prefix`, reads prefix `P` and says so; with two prefixes it names both
/// and asks for `--prefix`.
#[test]
fn offline_tools_find_the_one_prefix() {
    let (tmp, dir, node) = node_home(4);
    let prefixed = tmp.path().join("prefixed");
    copy_with_prefix(&dir, &prefixed, "node-1");
    let d = p(&prefixed);
    let into = tmp.path().join("replayed");
    let note = "holds the blocks of prefix \"node-1\" only";
    let runs = [
        vec!["verify", d],
        vec!["dump", d],
        vec!["stats", d],
        vec!["tail", d],
        vec!["replay", d, "--into", p(&into)],
    ];
    for args in &runs {
        let run = statestream(args).ok();
        assert!(run.stderr.contains(note), "{args:?}: {run:#?}");
        assert!(run.stderr.contains("--prefix node-1"), "{args:?}: {run:#?}");
    }
    let verify = statestream(["verify", d]).ok();
    assert!(verify.stdout.contains("ok: 4 blocks"), "{verify:#?}");
    let replay = statestream(["replay", d, "--into", p(&tmp.path().join("r2")), "--json"]).ok();
    assert_eq!(replay.json()["app_hash"], node["app_hash"]);
    // --prefix as given still wins, and the empty prefix has no note.
    let run = statestream(["dump", d, "--prefix", "node-1"]).ok();
    assert!(!run.stderr.contains("note"), "{run:#?}");
    let run = statestream(["stats", p(&dir)]).ok();
    assert!(!run.stderr.contains("note"), "{run:#?}");

    // A second prefix, and the files without one: which is meant is not
    // guessed.
    copy_with_prefix(&dir, &prefixed, "b");
    copy_dir(&dir, &prefixed);
    for args in &runs {
        let code = if args[0] == "verify" { 2 } else { 1 };
        let run = statestream(args).fails(code, "block files of 3 prefixes");
        for named in [
            "\"\" (block-N-data)",
            "\"b\" (b-block-N-data)",
            "\"node-1\"",
        ] {
            assert!(
                run.stderr.contains(named),
                "{args:?} lacks {named}: {run:#?}"
            );
        }
        assert!(run.stderr.contains("choose one with --prefix"), "{run:#?}");
    }
    statestream(["verify", d, "--prefix", "b"]).ok();
    statestream(["verify", d, "--prefix", ""]).ok();
}

/// Flips one bit in the last byte of a value that block `height` sets (its
/// record found in the data file by its key and value fields); returns the
/// data file.
fn change_a_value_byte(dir: &Path, height: u64) -> PathBuf {
    let h = height.to_string();
    let dump = statestream(["dump", p(dir), "--json", "--from", &h, "--to", &h]).ok();
    let record = dump
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .find(|r| r["value"].is_string())
        .expect("block sets a value");
    let hex = |v: &Value| -> Vec<u8> {
        let s = v.as_str().expect("hex");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
            .collect()
    };
    let (key, value) = (hex(&record["key"]), hex(&record["value"]));
    assert!(key.len() < 128 && value.len() < 128 && !value.is_empty());
    let mut needle = vec![0x1a, key.len() as u8];
    needle.extend_from_slice(&key);
    needle.extend_from_slice(&[0x22, value.len() as u8]);
    needle.extend_from_slice(&value);
    let file = dir.join(format!("block-{height}-data"));
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the record is in the file");
    bytes[at + needle.len() - 1] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
    file
}

/// A block without a meta file is checked through the hash chain by the
/// next block's meta file: a value changed in it is found and its data file
/// named (it used to reset the chain and pass).
#[test]
fn verify_chains_through_a_block_without_meta() {
    let (tmp, dir, _) = node_home(12);
    let copy = tmp.path().join("nometa");
    copy_dir(&dir, &copy);
    std::fs::remove_file(copy.join("block-10-meta")).unwrap();
    let run = statestream(["verify", p(&copy)]).ok();
    assert!(run.stdout.contains("ok: 12 blocks"), "{run:#?}");
    assert!(
        run.stdout.contains("1 blocks have no meta file"),
        "{run:#?}"
    );
    // The links of block 10 are checked by block 11's meta file.
    assert!(run.stdout.contains("48 store hash links"), "{run:#?}");

    let data = change_a_value_byte(&copy, 10);
    let run = statestream(["verify", p(&copy)]).fails(1, "hash chain broken");
    assert!(run.stderr.contains(p(&data)), "{run:#?}");
    assert!(run.stderr.contains("block 10 has no meta file"), "{run:#?}");
    let j = statestream(["verify", p(&copy), "--json"]).json();
    assert_eq!(j["problem"]["kind"], "invalid");
    assert_eq!(j["problem"]["file"], p(&data));
    assert_eq!(j["problem"]["height"], 10);

    // Two blocks in a row without a meta file: both carried to block 12.
    let copy2 = tmp.path().join("nometa2");
    copy_dir(&dir, &copy2);
    for h in [10, 11] {
        std::fs::remove_file(copy2.join(format!("block-{h}-meta"))).unwrap();
    }
    statestream(["verify", p(&copy2)]).ok();
    change_a_value_byte(&copy2, 11);
    let run = statestream(["verify", p(&copy2)]).fails(1, "blocks 10 to 11 have no meta file");
    assert!(
        run.stderr.contains(p(&copy2.join("block-10-data"))),
        "{run:#?}"
    );
}

/// A data file that no meta file confirms (after the last one) is not
/// verified: a copy of block 5 saved as block 21 fails, named.
#[test]
fn verify_refuses_blocks_after_the_last_meta_file() {
    let (tmp, dir, _) = node_home(20);
    let copy = tmp.path().join("copied");
    copy_dir(&dir, &copy);
    std::fs::copy(copy.join("block-5-data"), copy.join("block-21-data")).unwrap();
    let named = copy.join("block-21-data");
    let run = statestream(["verify", p(&copy)]).fails(1, "block 21 cannot be verified");
    assert!(run.stderr.contains(p(&named)), "{run:#?}");
    assert!(
        run.stderr.contains("the last block with one is 20"),
        "{run:#?}"
    );
    let j = statestream(["verify", p(&copy), "--json"]).json();
    assert_eq!(j["ok"], false);
    assert_eq!(j["blocks"], 21, "every block was checked");
    assert_eq!(j["problem"]["kind"], "unverifiable");
    assert_eq!(j["problem"]["file"], p(&named));
    assert_eq!(j["problem"]["height"], 21);
    assert_eq!(j["unverifiable"], 1);
    assert_eq!(j["unverifiable_heights"], serde_json::json!([[21, 21]]));

    // A directory that starts later, without a meta file for its first
    // block: nothing gives the hashes block 3 follows.
    let later = tmp.path().join("later");
    copy_dir(&dir, &later);
    for name in [
        "block-1-data",
        "block-1-meta",
        "block-2-data",
        "block-2-meta",
        "block-3-meta",
    ] {
        std::fs::remove_file(later.join(name)).unwrap();
    }
    let run = statestream(["verify", p(&later)]).fails(1, "block 3 cannot be verified");
    assert!(
        run.stderr.contains("does not start at height 1"),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains(p(&later.join("block-3-data"))),
        "{run:#?}"
    );

    // Without any meta file, nothing is verified (the records still are
    // checked, and all blocks are listed).
    for h in 1..=20 {
        std::fs::remove_file(copy.join(format!("block-{h}-meta"))).unwrap();
    }
    std::fs::remove_file(&named).unwrap();
    let run =
        statestream(["verify", p(&copy)]).fails(1, "no block of the directory has a meta file");
    assert!(
        run.stderr
            .contains("20 blocks cannot be verified in all (heights 1-20)"),
        "{run:#?}"
    );
}

/// A meta file changed after it was written (a transaction, the block
/// time) fails its own checksum, named; one without a checksum (an older
/// writer) passes but is listed as not verified.
#[test]
fn verify_checks_the_meta_files_own_checksum() {
    let (tmp, dir, _) = node_home(6);
    let meta = std::fs::read(dir.join("block-5-meta")).unwrap();
    // The message starts with the height (08 05), then the block time
    // (10 and a varint); the transactions hold "transfer from=".
    assert_eq!(meta[8..11], [0x08, 0x05, 0x10]);
    let tx = b"transfer from=";
    let tx_at = meta
        .windows(tx.len())
        .position(|w| w == tx)
        .expect("a transaction");
    for (what, at) in [("time", 11), ("transaction", tx_at + tx.len())] {
        let copy = tmp.path().join(what);
        copy_dir(&dir, &copy);
        let mut changed = meta.clone();
        changed[at] ^= 0x01;
        let named = copy.join("block-5-meta");
        std::fs::write(&named, &changed).unwrap();
        let run = statestream(["verify", p(&copy)]).fails(1, "meta checksum mismatch");
        assert!(run.stderr.contains(p(&named)), "{what}: {run:#?}");
        let j = statestream(["verify", p(&copy), "--json"]).json();
        assert_eq!(j["problem"]["kind"], "invalid", "{what}");
        assert_eq!(j["problem"]["file"], p(&named), "{what}");
    }

    // Without the checksum (the last five bytes, field 12): accepted, said.
    let copy = tmp.path().join("old");
    copy_dir(&dir, &copy);
    for h in [2, 3, 5] {
        let f = copy.join(format!("block-{h}-meta"));
        let bytes = std::fs::read(&f).unwrap();
        let message = &bytes[8..bytes.len() - 5];
        let mut old = (message.len() as u64).to_be_bytes().to_vec();
        old.extend_from_slice(message);
        std::fs::write(&f, old).unwrap();
    }
    let run = statestream(["verify", p(&copy)]).ok();
    assert!(run.stdout.contains("ok: 6 blocks"), "{run:#?}");
    assert!(
        run.stdout
            .contains("not verified: 3 meta files have no checksum of their own (heights 2-3, 5)"),
        "{run:#?}"
    );
    let j = statestream(["verify", p(&copy), "--json"]).json();
    assert_eq!(j["ok"], true);
    assert_eq!(j["meta_without_checksum"], 3);
    assert_eq!(
        j["meta_without_checksum_heights"],
        serde_json::json!([[2, 3], [5, 5]])
    );
    let j = statestream(["verify", p(&dir), "--json"]).json();
    assert_eq!(j["meta_without_checksum"], 0);
}
