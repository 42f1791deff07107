//! The node as a service and the Cosmos migration path: an app.toml from the
//! Cosmos SDK template, signals, `init`, `config check`, the config lookup,
//! logging flags, machine-readable `verify` and `tail`, completions and man
//! pages.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use serde_json::Value;
use statestream_test_support::PATIENCE;

const BIN: &str = env!("CARGO_BIN_EXE_statestream");

/// The streaming section exactly as the Cosmos SDK's app.toml template
/// writes it.
const COSMOS_TEMPLATE: &str = r#"[store]
streamers = ["file", ]

[streamers]
[streamers.file]
keys = ["*", ]
write_dir = ""
prefix = ""
output-metadata = "true"
stop-node-on-error = "true"
fsync = "false"
"#;

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

    fn fails(self, code: i32, fragments: &[&str]) -> Run {
        assert_eq!(self.code, code, "expected exit {code}, got {self:#?}");
        for fragment in fragments {
            assert!(
                self.stderr.contains(fragment),
                "stderr lacks {fragment:?}: {self:#?}"
            );
        }
        self
    }

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
    run
}

fn p(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// The first log line, without the timestamp and level.
fn first_log_line(stderr: &str) -> &str {
    stderr.lines().next().expect("a log line")
}

fn block_files(dir: &Path, kind: &str) -> usize {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter(|e| {
            let name = e.as_ref().expect("entry").file_name();
            let name = name.to_string_lossy();
            name.starts_with("block-") && name.ends_with(kind)
        })
        .count()
}

#[test]
fn cosmos_template_runs_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join("config")).unwrap();
    std::fs::write(home.join("config/app.toml"), COSMOS_TEMPLATE).unwrap();
    let run = statestream(["node", "--home", p(&home), "--blocks", "3", "--json"]).ok();
    // No --config: the node found HOME/config/app.toml, and says so first.
    let first = first_log_line(&run.stderr);
    assert!(first.contains("HOME/config/app.toml"), "{first}");
    assert!(first.contains(p(&home.join("config/app.toml"))), "{first}");
    let j = run.json();
    assert_eq!(j["height"], 3);
    assert_eq!(j["streamers"][0]["delivered_height"], 3);
    // write_dir = "": the home itself; output-metadata = "true".
    assert_eq!(block_files(&home, "-data"), 3);
    assert_eq!(block_files(&home, "-meta"), 3);
    statestream(["verify", p(&home)]).ok();
}

#[test]
fn cosmos_template_quoted_false_turns_metadata_off() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let config = tmp.path().join("app.toml");
    let text = COSMOS_TEMPLATE
        .replace("output-metadata = \"true\"", "output-metadata = \"false\"")
        .replace("write_dir = \"\"", "write_dir = \"blocks\"");
    std::fs::write(&config, text).unwrap();
    let run = statestream([
        "node",
        "--home",
        p(&home),
        "--config",
        p(&config),
        "--blocks",
        "2",
    ])
    .ok();
    assert!(first_log_line(&run.stderr).contains("--config"), "{run:#?}");
    let dir = home.join("blocks");
    assert_eq!(block_files(&dir, "-data"), 2);
    assert_eq!(block_files(&dir, "-meta"), 0);
}

#[test]
fn cosmos_bad_boolean_string_is_one_error_naming_file_key_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("app.toml");
    std::fs::write(&config, COSMOS_TEMPLATE.replace("\"false\"", "\"nope\"")).unwrap();
    let home = tmp.path().join("home");
    let fragments = [
        p(&config),
        "[streamers.file] key `fsync` (line 11)",
        "invalid type: string \"nope\", expected a boolean",
    ];
    statestream(["node", "--home", p(&home), "--config", p(&config)]).fails(1, &fragments);
    statestream(["config", "check", p(&config)]).fails(1, &fragments);
}

#[test]
fn cosmos_streaming_abci_warns_and_the_node_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let config = tmp.path().join("app.toml");
    let text = format!(
        "{COSMOS_TEMPLATE}\n[streaming]\n[streaming.abci]\nkeys = []\nplugin = \"\"\nstop-node-on-err = true\n"
    );
    std::fs::write(&config, text).unwrap();
    let run = statestream([
        "node",
        "--home",
        p(&home),
        "--config",
        p(&config),
        "--blocks",
        "1",
        "--json",
    ])
    .ok();
    let warning = run
        .stderr
        .lines()
        .find(|l| l.contains("[streaming.abci]"))
        .unwrap_or_else(|| panic!("no warning: {run:#?}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("type = \\\"process\\\"") || warning.contains("type = \"process\""));
    assert!(warning.contains("docs/plugin-protocol.md"), "{warning}");
    assert_eq!(run.json()["streamers"][0]["delivered_height"], 1);
}

/// A running node whose stderr lines arrive on a channel.
struct Node {
    child: Child,
    lines: Receiver<String>,
    stderr: Vec<String>,
}

impl Node {
    fn spawn(args: &[&str]) -> Node {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the node starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Node {
            child,
            lines,
            stderr: Vec::new(),
        }
    }

    /// Waits (at most [`PATIENCE`] in all: a hung or chatty node fails the
    /// test rather than hanging it) for a stderr line holding `fragment`.
    fn wait_for(&mut self, fragment: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    let found = line.contains(fragment);
                    self.stderr.push(line);
                    if found {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    let _ = self.child.kill();
                    panic!("no line with {fragment:?}: {:#?}", self.stderr);
                }
            }
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on the child we spawned, which has not been waited for.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits for the exit; the exit code, stdout and every stderr line.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let out = self.child.wait_with_output().expect("wait");
        self.stderr.extend(self.lines.iter());
        let stderr = self.stderr.join("\n");
        assert!(!stderr.contains("panicked"), "{stderr}");
        (
            out.status.code(),
            String::from_utf8(out.stdout).expect("UTF-8"),
            stderr,
        )
    }
}

/// Runs the node until it is stopped by `signal`, then checks that it
/// stopped cleanly: exit 0, every committed block delivered, files whole.
#[cfg(unix)]
fn stops_cleanly_on(signal: libc::c_int) {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let dir = home.join("data/streaming");
    let mut node = Node::spawn(&[
        "node",
        "--home",
        p(&home),
        "--blocks",
        "0",
        "--block-time-ms",
        "5",
        "--no-fsync",
        "--json",
        "-v",
    ]);
    // -v: one debug line per committed block.
    node.wait_for("committed");
    node.wait_for("committed");
    node.signal(signal);
    let (code, stdout, stderr) = node.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("signal received"), "{stderr}");
    assert!(stderr.contains("streamer closed"), "{stderr}");
    let j: Value = serde_json::from_str(stdout.lines().last().expect("a summary")).unwrap();
    let height = j["height"].as_u64().unwrap();
    assert!(height >= 2, "{j}");
    assert_eq!(j["streamers"][0]["delivered_height"], height);
    let cursors = statestream(["cursors", "--home", p(&home), "--json"]).ok();
    assert!(
        cursors.stdout.contains(&format!("{height}")),
        "{cursors:#?}"
    );
    let v = statestream(["verify", p(&dir), "--json"]).ok();
    let v = v.json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["heights"]["last"], height);
}

#[cfg(unix)]
#[test]
fn service_sigterm_stops_cleanly() {
    stops_cleanly_on(libc::SIGTERM);
}

#[cfg(unix)]
#[test]
fn service_sigint_stops_cleanly() {
    stops_cleanly_on(libc::SIGINT);
}

#[cfg(unix)]
#[test]
fn service_second_signal_exits_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let config = tmp.path().join("app.toml");
    // A streamer that takes a second per block: once the node has
    // committed a few blocks, closing it takes seconds, long enough for
    // the second signal to arrive while it drains.
    std::fs::write(
        &config,
        "[store]\nstreamers = [\"slow\"]\n[streamers.slow]\ntype = \"slow\"\nkeys = [\"*\"]\n",
    )
    .unwrap();
    let mut node = Node::spawn(&[
        "node",
        "--home",
        p(&home),
        "--config",
        p(&config),
        "--blocks",
        "0",
        "--slow-streamer-ms",
        "1000",
        // Every commit durable: an exit at once loses none of them.
        "-v",
    ]);
    for _ in 0..5 {
        node.wait_for("committed");
    }
    node.signal(libc::SIGTERM);
    node.wait_for("signal received");
    node.signal(libc::SIGTERM);
    let (code, _, stderr) = node.finish();
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.contains("second signal: exiting at once"),
        "{stderr}"
    );
    // Nothing committed is lost: the next run resumes after the last block.
    let run = statestream(["node", "--home", p(&home), "--blocks", "1", "--json"]).ok();
    assert!(
        run.json()["first_height"].as_u64().unwrap() >= 6,
        "{run:#?}"
    );
}

#[test]
fn init_writes_a_config_the_node_runs_on() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let written = home.join("config/app.toml");
    let run = statestream(["init", "--home", p(&home)]).ok();
    assert!(run.stdout.contains(p(&written)), "{run:#?}");
    let text = std::fs::read_to_string(&written).unwrap();
    assert!(text.contains("# [streamers.nats]"), "{text}");
    assert!(text.contains("# [streamers.log]"), "{text}");
    assert!(text.contains("# type = \"process\""), "{text}");

    // It refuses to overwrite, unless told to.
    std::fs::write(&written, "# mine\n").unwrap();
    statestream(["init", "--home", p(&home)]).fails(1, &[p(&written), "--force"]);
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "# mine\n");
    statestream(["init", "--home", p(&home), "--force"]).ok();
    assert_eq!(std::fs::read_to_string(&written).unwrap(), text);

    statestream(["config", "check", "--home", p(&home)]).ok();
    let run = statestream(["node", "--home", p(&home), "--blocks", "3", "--json"]).ok();
    assert!(
        first_log_line(&run.stderr).contains(p(&written)),
        "{run:#?}"
    );
    assert_eq!(run.json()["streamers"][0]["delivered_height"], 3);
    let dir = home.join("data/streaming");
    assert_eq!(block_files(&dir, "-meta"), 3);
    statestream(["verify", p(&dir)]).ok();
}

#[test]
fn node_without_home_config_says_it_uses_the_built_in_default() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let run = statestream(["node", "--home", p(&home), "--blocks", "1"]).ok();
    let first = first_log_line(&run.stderr);
    assert!(first.contains("built-in default"), "{first}");
}

#[test]
fn config_check_validates_without_starting_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    // No HOME/config/app.toml: the built-in default is what the node would run.
    let run = statestream(["config", "check", "--home", p(&home)]).ok();
    assert!(run.stdout.contains("ok: <built-in default>"), "{run:#?}");
    assert!(!home.exists(), "config check created the home");

    let config = tmp.path().join("app.toml");
    let write_dir = tmp.path().join("out");
    std::fs::write(
        &config,
        format!(
            "[store]\nstreamers = [\"file\", \"log\"]\n[streamers.file]\nkeys = [\"bank\"]\n\
             write_dir = \"{}\"\n[streamers.log]\nkeys = [\"*\"]\nevery = \"5\"\n",
            p(&write_dir)
        ),
    )
    .unwrap();
    let run = statestream(["config", "check", p(&config)]).ok();
    assert!(
        run.stdout.contains("2 streamers run (file, log)"),
        "{run:#?}"
    );
    assert!(!write_dir.exists(), "config check created the write_dir");

    // Errors: what the streamer's own type finds, with file, key and line;
    // every streamer's error, not only the first.
    std::fs::write(
        &config,
        "[store]\nstreamers = [\"file\", \"indexer\", \"other\"]\n\
         [streamers.file]\nkeys = [\"*\"]\nprefix = \"../x\"\n\
         [streamers.indexer]\ntype = \"process\"\nkeys = [\"*\"]\ncommand = []\n\
         [streamers.other]\ntype = \"kafka\"\nkeys = [\"*\"]\n",
    )
    .unwrap();
    let run = statestream(["config", "check", p(&config)]).fails(
        1,
        &[
            "[streamers.file] key `prefix` (line 5)",
            "unsafe prefix",
            "[streamers.indexer] key `command` (line 9)",
            "unknown type \"kafka\"",
        ],
    );
    assert_eq!(
        run.stderr
            .lines()
            .filter(|l| l.starts_with("statestream: error: "))
            .count(),
        3,
        "{run:#?}"
    );
    // A write_dir that is a file.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    std::fs::write(
        &config,
        format!("[store]\nstreamers = [\"file\"]\n[streamers.file]\nkeys = [\"*\"]\nwrite_dir = \"{}\"\n", p(&file)),
    )
    .unwrap();
    statestream(["config", "check", p(&config)])
        .fails(1, &["key `write_dir` (line 5)", "not a directory"]);
    statestream(["config", "check", p(&tmp.path().join("missing.toml"))])
        .fails(1, &["missing.toml", "cannot read"]);
    statestream(["config", "check", "--home", p(&home), p(&config)]).fails(2, &["--home"]);
}

/// A home with `blocks` committed blocks; its block directory.
fn blocks(tmp: &Path, blocks: u64) -> PathBuf {
    let home = tmp.join("home");
    statestream(["node", "--home", p(&home), "--blocks", &blocks.to_string()]).ok();
    home.join("data/streaming")
}

#[test]
fn verify_json_and_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = blocks(tmp.path(), 4);
    let run = statestream(["verify", p(&dir), "--json"]).ok();
    assert_eq!(run.stdout.lines().count(), 1, "{run:#?}");
    let j = run.json();
    assert_eq!(j["ok"], true);
    assert_eq!(j["heights"]["first"], 1);
    assert_eq!(j["heights"]["last"], 4);
    assert_eq!(j["heights"]["count"], 4);
    assert_eq!(j["blocks"], 4);
    assert!(j["problem"].is_null());

    // The data is at fault: exit 1, the file and offset named.
    let data = dir.join("block-3-data");
    let bytes = std::fs::read(&data).unwrap();
    std::fs::write(&data, &bytes[..bytes.len() - 1]).unwrap();
    let run = statestream(["verify", p(&dir), "--json"]);
    let run = run.fails(1, &["verify failed", "block-3-data"]);
    let j = run.json();
    assert_eq!(j["ok"], false);
    assert_eq!(j["blocks"], 2);
    assert_eq!(j["problem"]["kind"], "invalid");
    assert_eq!(j["problem"]["file"], p(&data));
    assert_eq!(j["problem"]["offset"], 0);
    assert_eq!(j["problem"]["height"], 3);
    assert!(
        j["problem"]["message"]
            .as_str()
            .unwrap()
            .contains("length mismatch")
    );

    // The check could not be made: exit 2.
    let missing = tmp.path().join("missing");
    let run = statestream(["verify", p(&missing), "--json"])
        .fails(2, &["verify could not run", p(&missing)]);
    let j = run.json();
    assert_eq!(j["ok"], false);
    assert_eq!(j["problem"]["kind"], "cannot_run");
    assert!(j["heights"].is_null());
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    statestream(["verify", p(&empty)]).fails(2, &["no block files"]);
}

#[test]
fn tail_json_one_object_per_block() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = blocks(tmp.path(), 3);
    let run = statestream(["tail", p(&dir), "--json", "--from", "2"]).ok();
    let objects: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 2, "{run:#?}");
    assert_eq!(objects[0]["height"], 2);
    assert_eq!(objects[1]["height"], 3);
    for o in &objects {
        assert!(o["records"].as_u64().unwrap() > 0, "{o}");
        assert_eq!(o["app_hash"].as_str().unwrap().len(), 64, "{o}");
        assert!(o["time"].is_u64(), "{o}");
    }
}

#[test]
fn logging_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    // -q: no info line; -v: debug lines; both: a usage error.
    let quiet = statestream(["-q", "node", "--home", p(&home), "--blocks", "1"]).ok();
    assert!(!quiet.stderr.contains("INFO"), "{quiet:#?}");
    let verbose = statestream(["node", "--home", p(&home), "--blocks", "1", "-v"]).ok();
    assert!(verbose.stderr.contains("DEBUG"), "{verbose:#?}");
    let default = statestream(["node", "--home", p(&home), "--blocks", "1"]).ok();
    assert!(default.stderr.contains("INFO"), "{default:#?}");
    assert!(!default.stderr.contains("DEBUG"), "{default:#?}");
    statestream(["-q", "-v", "node", "--home", p(&home)]).fails(2, &["--quiet"]);

    // JSON logs: every stderr line is one object; the first names the config.
    let json = statestream([
        "node",
        "--home",
        p(&home),
        "--blocks",
        "1",
        "--log-format",
        "json",
    ])
    .ok();
    let lines: Vec<Value> = json
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(!lines.is_empty());
    assert_eq!(lines[0]["level"], "INFO");
    assert!(lines[0]["fields"]["config"].is_string(), "{}", lines[0]);

    // NO_COLOR and a pipe: no escape sequences either way.
    let out = Command::new(BIN)
        .args(["node", "--home", p(&home), "--blocks", "1"])
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains('\u{1b}'));
}

#[test]
fn completions_and_man_pages() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let run = statestream(["completions", shell]).ok();
        assert!(run.stdout.contains("statestream"), "{shell}");
        assert!(run.stdout.contains("verify"), "{shell}");
    }
    statestream(["completions", "tcsh"]).fails(2, &["tcsh"]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("man");
    statestream(["man", "--out-dir", p(&out)]).ok();
    let page = std::fs::read_to_string(out.join("statestream.1")).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH statestream"),
        "{page}"
    );
    assert!(page.contains("Exit codes"), "{page}");
    let node = std::fs::read_to_string(out.join("statestream-node.1")).unwrap();
    assert!(node.contains("block\\-time\\-ms"), "{node}");
}
