//! `statestream subscribe` and the client crate against a real node with a
//! `serve` streamer: the cursor follows what the consumer handled (a
//! `| head -n 40` cut, a consumer SIGKILLed between receiving and
//! handling), a cursor file that does not parse, and the token read from a
//! file or the environment.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;

use common::{BIN, PATIENCE, p, wait_for};
use statestream_client::{FileCursor, ResumableSubscription, StartFrom, SubscribeOptions, Update};

/// A node with a serve streamer; killed when dropped (also when a test
/// fails), since no test here needs a clean stop.
struct Node {
    child: Child,
    address: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `statestream node` with one `serve` streamer (its table gets
/// `serve_extra`), committing a block every `block_time_ms` with few
/// writes, so that a block is a handful of lines.
fn start_node(home: &Path, block_time_ms: u64, serve_extra: &str) -> Node {
    std::fs::create_dir_all(home).unwrap();
    let config = home.join("app.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nstreamers = [\"serve\"]\n\n[streamers.serve]\ntype = \"serve\"\n\
             keys = [\"*\"]\ngrpc_address = \"127.0.0.1:0\"\nheartbeat_ms = 200\n{serve_extra}\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args([
            "node",
            "--home",
            p(home),
            "--config",
            p(&config),
            "--blocks",
            "0",
        ])
        .args(["--block-time-ms", &block_time_ms.to_string()])
        .args(["--writes-per-block", "3"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent
                && line.contains("serve: gRPC listening")
                && let Some(rest) = line.split("address=").nth(1)
            {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                sent = true;
            }
        }
    });
    let mut node = Node {
        child,
        address: String::new(),
    };
    node.address = rx
        .recv_timeout(PATIENCE)
        .expect("the node logs its serve streamer's gRPC address");
    node
}

/// Reads JSON lines from `stdout` (on a thread, so that the wait is
/// bounded) until `done` says so; fails naming `what` after [`PATIENCE`].
fn read_json_until(
    stdout: ChildStdout,
    what: &str,
    mut done: impl FnMut(&serde_json::Value) -> bool + Send + 'static,
) -> Vec<serde_json::Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let v: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(e) => panic!("not JSON: {line:?}: {e}"),
            };
            let stop = done(&v);
            lines.push(v);
            if stop {
                break;
            }
        }
        let _ = tx.send(lines);
    });
    rx.recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn height(v: &serde_json::Value) -> u64 {
    v["height"].as_u64().expect("a height")
}

fn saved_cursor(path: &Path) -> Option<u64> {
    match std::fs::read_to_string(path) {
        Ok(t) => Some(t.trim().parse().expect("the cursor file holds a height")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// Waits (at most [`PATIENCE`]) for `child` to exit.
fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let mut status = None;
    wait_for(what, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    status.expect("wait_for returns once the child exited")
}

/// The first JSON line of a new `subscribe --json --cursor-file F --from 1`.
fn first_line_of_a_rerun(node: &Node, cursor: &Path) -> serde_json::Value {
    let mut child = Killed(
        Command::new(BIN)
            .args(["subscribe", &node.address, "--json", "--from", "1"])
            .args(["--cursor-file", p(cursor)])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let lines = read_json_until(stdout, "the rerun's first line", |_| true);
    lines.into_iter().next().expect("the rerun prints a line")
}

#[test]
fn subscribe_cut_by_head_resumes_at_or_before_the_first_block_not_fully_printed() {
    let dir = tempfile::tempdir().unwrap();
    // Blocks far enough apart that `head` has taken each one before the
    // next is written, as with a live node: the cut falls in the last
    // block written, the case where the old cursor was ahead.
    let node = start_node(&dir.path().join("home"), 400, "");
    let cursor = dir.path().join("cursor");
    let script = format!(
        "set -o pipefail; '{BIN}' subscribe {} --json --cursor-file '{}' --from 1 | head -n 40",
        node.address,
        p(&cursor)
    );
    let mut pipeline = Killed(
        Command::new("bash")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdout = pipeline.0.stdout.take().unwrap();
    let status = wait_exit(&mut pipeline.0, "`subscribe | head -n 40` to end");
    let mut printed = String::new();
    stdout.read_to_string(&mut printed).unwrap();
    let mut stderr = String::new();
    pipeline
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    // subscribe ended on the closed pipe without a panic, and with the
    // CLI's exit code for it (0, as `dump | head`).
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("error"),
        "{stderr}"
    );
    let lines: Vec<serde_json::Value> = printed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40);
    let last = lines.last().unwrap();
    let first_not_printed = if last["type"] == "end" {
        height(last) + 1
    } else {
        height(last)
    };
    let saved = saved_cursor(&cursor);
    assert!(
        saved.is_none_or(|s| s < first_not_printed),
        "the cursor is at {saved:?}, but block {first_not_printed} was not printed whole"
    );
    let rerun = first_line_of_a_rerun(&node, &cursor);
    assert!(
        height(&rerun) <= first_not_printed,
        "the rerun starts at {rerun}, after block {first_not_printed}, which was not printed whole"
    );
    assert_eq!(height(&rerun), saved.map_or(1, |s| s + 1));
}

/// Run by `client_consumer_killed_between_receiving_and_handling_resumes_at_the_unhandled_block`:
/// a consumer that handles (prints, then acknowledges) blocks until the
/// height in STATESTREAM_TEST_STOP_AT, which it receives and then never
/// handles.
#[test]
#[ignore = "the consumer process of another test"]
fn client_consumer_child() {
    let address = std::env::var("STATESTREAM_TEST_ADDRESS").expect("the address");
    let cursor = std::env::var("STATESTREAM_TEST_CURSOR").expect("the cursor file");
    let stop_at: u64 = std::env::var("STATESTREAM_TEST_STOP_AT")
        .expect("the height")
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = SubscribeOptions::new(&address).start(StartFrom::Height(1));
        let mut sub = ResumableSubscription::new(options, FileCursor::new(cursor));
        loop {
            let update = sub.next().await.unwrap();
            if let Update::Block { height, .. } = update {
                if height >= stop_at {
                    println!("received {height}");
                    // Killed here: received, not handled.
                    std::thread::sleep(PATIENCE * 2);
                }
                println!("handled {height}");
                sub.ack(height).unwrap();
            }
        }
    });
}

#[test]
fn client_consumer_killed_between_receiving_and_handling_resumes_at_the_unhandled_block() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(&dir.path().join("home"), 50, "");
    let cursor = dir.path().join("cursor");
    let stop_at = 6;
    let mut consumer = Killed(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "client_consumer_child",
                "--ignored",
                "--nocapture",
            ])
            .env("STATESTREAM_TEST_ADDRESS", &node.address)
            .env("STATESTREAM_TEST_CURSOR", &cursor)
            .env("STATESTREAM_TEST_STOP_AT", stop_at.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = consumer.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut handled = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(h) = line.strip_prefix("handled ") {
                handled.push(h.parse::<u64>().unwrap());
            }
            if line.starts_with("received ") {
                let _ = tx.send(handled);
                return;
            }
        }
    });
    let handled = rx
        .recv_timeout(PATIENCE)
        .expect("the consumer receives the block it will not handle");
    // SIGKILL: nothing runs after it, as in a crash.
    consumer.0.kill().unwrap();
    consumer.0.wait().unwrap();
    assert_eq!(handled, (1..stop_at).collect::<Vec<_>>());
    assert_eq!(saved_cursor(&cursor), Some(stop_at - 1));

    // The next run resumes at the block that was received but not handled.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let first = runtime.block_on(async {
        let options = SubscribeOptions::new(&node.address).start(StartFrom::Height(1));
        let mut sub = ResumableSubscription::new(options, FileCursor::new(&cursor));
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Update::Block { height, .. } = sub.next().await.unwrap() {
                    return height;
                }
            }
        })
        .await
        .expect("a block within the patience")
    });
    assert_eq!(first, stop_at);
}

#[test]
fn subscribe_with_a_cursor_file_that_does_not_parse_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cursor = dir.path().join("cursor");
    std::fs::write(&cursor, "twelve\n").unwrap();
    // Read before connecting: no server is needed to find out.
    let mut child = Killed(
        Command::new(BIN)
            .args(["subscribe", "127.0.0.1:9", "--cursor-file", p(&cursor)])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = wait_exit(&mut child.0, "subscribe to give up on the cursor file");
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(p(&cursor)) && stderr.contains("does not hold a height"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Left as it was: the user decides.
    assert_eq!(std::fs::read_to_string(&cursor).unwrap(), "twelve\n");
}

/// `subscribe ADDR --json --from 1 ARGS` with `env`; its first line, or
/// its exit status and stderr when it ends first.
fn subscribe_once(
    node: &Node,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<serde_json::Value, (std::process::ExitStatus, String)> {
    let mut command = Command::new(BIN);
    command
        .args(["subscribe", &node.address, "--json", "--from", "1"])
        .args(args)
        .env_remove("STATESTREAM_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = Killed(command.spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let lines = read_json_until(stdout, "subscribe's first line or its end", |_| true);
    match lines.into_iter().next() {
        Some(v) => Ok(v),
        None => {
            let status = wait_exit(&mut child.0, "subscribe to end");
            let mut stderr = String::new();
            child
                .0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            Err((status, stderr))
        }
    }
}

#[test]
fn subscribe_token_from_a_file_or_the_environment_reaches_a_node_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(&dir.path().join("home"), 50, "token = \"s3cret-token\"");
    let file = dir.path().join("token");
    // As editors and `echo` leave it: whitespace and a newline around.
    std::fs::write(&file, "  s3cret-token \n\n").unwrap();
    let line = subscribe_once(&node, &["--token-file", p(&file)], &[]).unwrap();
    assert_eq!(height(&line), 1, "{line}");
    let line = subscribe_once(&node, &[], &[("STATESTREAM_TOKEN", "s3cret-token\n")]).unwrap();
    assert_eq!(height(&line), 1, "{line}");

    // Without a token, or with a wrong one: refused, exit 1.
    let (status, stderr) = subscribe_once(&node, &[], &[]).unwrap_err();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("missing token"), "{stderr}");
    std::fs::write(&file, "wrong\n").unwrap();
    let (status, stderr) = subscribe_once(&node, &["--token-file", p(&file)], &[]).unwrap_err();
    assert_eq!(status.code(), Some(1), "{stderr}");

    // An empty or missing token file is an error naming it.
    std::fs::write(&file, " \n").unwrap();
    let (status, stderr) = subscribe_once(&node, &["--token-file", p(&file)], &[]).unwrap_err();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(p(&file)) && stderr.contains("empty"),
        "{stderr}"
    );
    let missing = dir.path().join("missing");
    let (status, stderr) = subscribe_once(&node, &["--token-file", p(&missing)], &[]).unwrap_err();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(p(&missing)), "{stderr}");

    // --token and --token-file together: a usage error.
    let (status, _) =
        subscribe_once(&node, &["--token", "x", "--token-file", p(&file)], &[]).unwrap_err();
    assert_eq!(status.code(), Some(2));
}

#[test]
fn subscribe_help_says_token_is_visible_in_ps_and_names_the_alternatives() {
    let out = Command::new(BIN)
        .args(["subscribe", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in ["--token-file", "STATESTREAM_TOKEN", "`ps`"] {
        assert!(help.contains(needle), "{needle} is not in:\n{help}");
    }
}
