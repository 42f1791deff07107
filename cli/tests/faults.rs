//! I/O faults under a running `statestream node`: the write directory
//! becomes full (a tiny tmpfs the test mounts, when it may) or unusable (the
//! directory is moved away and a regular file takes its name, which works
//! for any user, root included, who ignores permission bits).
//!
//! - `stop-node-on-error = true`: the node stops committing with one error
//!   line naming the streamer, the height and the cause; once the fault is
//!   cleared, a restart delivers every missing block.
//! - `stop-node-on-error = false`: the node keeps committing while the fault
//!   lasts, and the streamer catches up once it clears.
//!
//! Either way the end state is checked the same way: data files for exactly
//! heights 1..=N, no temporary file left, `verify` passes and `replay` gives
//! the node's app hash.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{BIN, PATIENCE, p, wait_for};

fn config(delivery: &str, stop: bool) -> String {
    format!(
        "[store]\nstreamers = [\"file\"]\n\n[streamers.file]\nkeys = [\"*\"]\nwrite_dir = \"data/streaming\"\n\
         delivery = \"{delivery}\"\nstop-node-on-error = {stop}\n"
    )
}

/// A node home with its app.toml.
struct Home {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    config: PathBuf,
}

impl Home {
    fn new(config_text: &str) -> Home {
        let tmp = tempfile::tempdir().expect("temp dir");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(home.join("data/streaming")).expect("create the write dir");
        let config = tmp.path().join("app.toml");
        std::fs::write(&config, config_text).expect("write app.toml");
        Home {
            _tmp: tmp,
            home,
            config,
        }
    }

    fn dir(&self) -> PathBuf {
        self.home.join("data/streaming")
    }

    fn node(&self, blocks: u64) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["node", "--home", p(&self.home), "--config", p(&self.config)])
            .args(["--blocks", &blocks.to_string(), "--json"])
            .env("RUST_LOG", "error")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs the node to the end.
    fn run(&self, blocks: u64) -> (i32, String, String) {
        let out = self.node(blocks).output().expect("run the node");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "a panic: {stderr}");
        let code = out.status.code().expect("the node exited, not killed");
        (code, stdout, stderr)
    }

    fn run_ok(&self, blocks: u64) -> Value {
        let (code, stdout, stderr) = self.run(blocks);
        assert_eq!(code, 0, "the node failed: {stderr}");
        last_json(&stdout)
    }

    /// The final check: files for exactly 1..=height, verify, replay.
    fn check_complete(&self, summary: &Value) {
        let height = summary["height"].as_u64().expect("height");
        let app_hash = summary["app_hash"].as_str().expect("app_hash");
        assert_eq!(
            summary["streamers"][0]["delivered_height"].as_u64(),
            Some(height),
            "the streamer is not caught up: {summary}"
        );
        let (heights, others) = data_files(&self.dir());
        assert_eq!(heights, (1..=height).collect::<BTreeSet<_>>());
        assert!(others.is_empty(), "unexpected files: {others:?}");
        let verify = Command::new(BIN)
            .args(["verify", p(&self.dir())])
            .output()
            .expect("run verify");
        assert!(
            verify.status.success(),
            "verify failed: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
        let replay_home = self.home.with_file_name("replay");
        let replay = Command::new(BIN)
            .args([
                "replay",
                p(&self.dir()),
                "--into",
                p(&replay_home),
                "--json",
            ])
            .output()
            .expect("run replay");
        assert!(
            replay.status.success(),
            "replay failed: {}",
            String::from_utf8_lossy(&replay.stderr)
        );
        let replay = last_json(&String::from_utf8_lossy(&replay.stdout));
        assert_eq!(replay["height"].as_u64(), Some(height));
        assert_eq!(replay["app_hash"].as_str(), Some(app_hash));
    }
}

fn last_json(stdout: &str) -> Value {
    let line = stdout.lines().last().expect("a JSON line on stdout");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
}

/// The heights of the data files in `dir`, and every name that is neither a
/// data nor a meta file.
fn data_files(dir: &Path) -> (BTreeSet<u64>, Vec<String>) {
    let mut heights = BTreeSet::new();
    let mut others = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (heights, others);
    };
    for entry in entries {
        let name = entry.expect("dir entry").file_name();
        let name = name.to_string_lossy().into_owned();
        match name
            .strip_prefix("block-")
            .and_then(|r| r.strip_suffix("-data"))
            .and_then(|h| h.parse::<u64>().ok())
        {
            Some(h) => {
                heights.insert(h);
            }
            None if name.starts_with("block-") && name.ends_with("-meta") => {}
            None => others.push(name),
        }
    }
    (heights, others)
}

fn max_height(dir: &Path) -> u64 {
    data_files(dir).0.last().copied().unwrap_or(0)
}

/// The one `statestream: error:` line of stderr.
fn error_line(stderr: &str) -> String {
    let lines: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("statestream: error: "))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line: {stderr}");
    lines[0].to_string()
}

/// The height in `... failed at height N: ...`.
fn failed_height(line: &str) -> u64 {
    line.split("failed at height ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("no height in {line:?}"))
}

/// A tmpfs of `size` mounted on `path`, unmounted on drop. `None` (with a
/// notice on stdout) where mounting is not permitted.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(path.to_path_buf())),
            Ok(o) => {
                println!(
                    "notice: skipped: cannot mount a tmpfs here ({})",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("notice: skipped: cannot run mount: {e}");
                None
            }
        }
    }

    /// Clears "disk full": the file system grows.
    fn grow(&self) {
        let status = Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "cannot remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Makes the write dir unusable by moving it away and putting a regular
/// file in its place; `clear` puts it back.
struct Blocked {
    dir: PathBuf,
    away: PathBuf,
}

impl Blocked {
    fn block(dir: &Path) -> Blocked {
        let away = dir.with_file_name("streaming.away");
        std::fs::rename(dir, &away).expect("move the write dir away");
        std::fs::write(dir, b"not a directory").expect("put a file in its place");
        Blocked {
            dir: dir.to_path_buf(),
            away,
        }
    }

    fn clear(self) {
        std::fs::remove_file(&self.dir).expect("remove the blocking file");
        std::fs::rename(&self.away, &self.dir).expect("put the write dir back");
    }
}

/// A node running in the background whose stderr lines are collected.
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the node");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("lines lock").push(line);
            }
        });
        Running {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn stderr(&self) -> String {
        self.lines.lock().expect("lines lock").join("\n")
    }

    /// The highest height of a `committed height=N` debug line.
    fn committed(&self) -> u64 {
        self.lines
            .lock()
            .expect("lines lock")
            .iter()
            .filter_map(|l| l.split("committed height=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    }

    fn delivery_failures(&self) -> usize {
        self.lines
            .lock()
            .expect("lines lock")
            .iter()
            .filter(|l| l.contains("delivery failed"))
            .count()
    }

    /// Waits for the node to exit on its own; its code, stdout and stderr.
    fn wait(mut self) -> (i32, String, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll the node") {
                break status;
            }
            if start.elapsed() > PATIENCE {
                let _ = self.child.kill();
                panic!("the node did not exit: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            r.join().expect("stderr reader");
        }
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut stdout).expect("read stdout");
        }
        let stderr = self.stderr();
        assert!(!stderr.contains("panicked"), "a panic: {stderr}");
        (status.code().expect("exited, not killed"), stdout, stderr)
    }

    /// Ctrl-C: the node finishes its block, delivers, and exits 0.
    fn interrupt(self) -> (i32, String, String) {
        // SAFETY: kill(2) on our own child's pid, which it still is: the
        // child has not been waited for.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        assert_eq!(rc, 0, "cannot send SIGINT");
        self.wait()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn faults_disk_full_stops_the_node_then_restart_delivers_everything() {
    let home = Home::new(&config("async", true));
    let Some(fs) = Tmpfs::mount(&home.dir(), "128k") else {
        return;
    };
    // The tmpfs fills up after a few dozen blocks; the node must not get
    // far past the failed block.
    let (code, stdout, stderr) = home.run(2000);
    assert_eq!(code, 1, "expected the node to stop: {stdout}{stderr}");
    let line = error_line(&stderr);
    assert!(line.contains("streamer \"file\""), "{line}");
    assert!(line.contains("No space left on device"), "{line}");
    assert!(line.contains("stop-node-on-error = true"), "{line}");
    let failed = failed_height(&line);
    assert!(failed > 1, "{line}");
    assert!(max_height(&home.dir()) < failed, "{line}");

    fs.grow();
    let summary = home.run_ok(3);
    home.check_complete(&summary);
    drop(fs);
}

#[test]
fn faults_disk_full_keeps_committing_then_catches_up() {
    let home = Home::new(&config("async", false));
    let Some(fs) = Tmpfs::mount(&home.dir(), "128k") else {
        return;
    };
    // The disk stays full for the whole run: every block is committed all
    // the same, and the streamer is left behind.
    let summary = home.run_ok(300);
    assert_eq!(summary["height"].as_u64(), Some(300), "{summary}");
    let streamer = &summary["streamers"][0];
    let delivered = streamer["delivered_height"].as_u64().expect("delivered");
    assert!(delivered < 300, "{summary}");
    assert!(streamer["errors"].as_u64() > Some(0), "{summary}");
    assert!(
        streamer["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left on device")),
        "{summary}"
    );

    fs.grow();
    let summary = home.run_ok(1);
    home.check_complete(&summary);
    drop(fs);
}

#[test]
fn faults_write_dir_replaced_by_a_file_stops_a_sync_node() {
    let home = Home::new(&config("sync", true));
    let node = Running::start(home.node(1_000_000));
    wait_for("the first blocks", || max_height(&home.dir()) >= 5);
    let blocked = Blocked::block(&home.dir());
    let (code, _, stderr) = node.wait();
    assert_eq!(code, 1, "{stderr}");
    let line = error_line(&stderr);
    assert!(line.contains("streamer \"file\""), "{line}");
    assert!(
        line.contains("Not a directory") || line.contains("No such file or directory"),
        "{line}"
    );
    failed_height(&line);

    blocked.clear();
    let summary = home.run_ok(3);
    home.check_complete(&summary);
}

#[test]
fn faults_write_dir_replaced_by_a_file_node_keeps_committing() {
    let home = Home::new(&config("async", false));
    let mut cmd = home.node(1_000_000);
    cmd.env(
        "RUST_LOG",
        "error,statestream::node=debug,statestream::driver=warn",
    );
    let node = Running::start(cmd);
    wait_for("the first blocks", || max_height(&home.dir()) >= 5);
    let blocked = Blocked::block(&home.dir());
    wait_for("a delivery failure", || node.delivery_failures() > 0);
    let at_fault = node.committed();
    // Commits go on while no block can be written.
    wait_for("30 more commits", || node.committed() >= at_fault + 30);

    blocked.clear();
    // The streamer catches up while the node runs.
    wait_for("the streamer to catch up", || {
        max_height(&home.dir()) >= at_fault + 30
    });
    let (code, stdout, stderr) = node.interrupt();
    assert_eq!(code, 0, "{stderr}");
    let summary = last_json(&stdout);
    assert!(
        summary["streamers"][0]["errors"].as_u64() > Some(0),
        "{summary}"
    );
    home.check_complete(&summary);
}
