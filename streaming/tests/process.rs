//! End-to-end tests of `type = "process"` with the Rust example plugin
//! (`examples/echo_plugin.rs`) and the Python one
//! (`examples/plugins/indexer.py`, skipped with a notice when the `protobuf`
//! package is missing).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use statestream::{BlockMeta, DeliveryManager, Error, Registry};
use statestream_config::AppConfig;
use statestream_store::{KvStore, MultiStore, StoreKey};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The echo plugin binary, built if `cargo test` did not build it already.
fn echo_plugin() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary has a path");
        // target/<profile>/deps/process-<hash> -> target/<profile>/examples
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary is in target/<profile>/deps")
            .join("examples");
        let path = dir.join(format!("echo_plugin{}", std::env::consts::EXE_SUFFIX));
        if !path.is_file() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--example", "echo_plugin", "-p", "statestream"])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the echo_plugin example failed");
        }
        assert!(path.is_file(), "{} not found", path.display());
        path
    })
}

fn indexer_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plugins/indexer.py")
}

/// Whether python3 with the protobuf package is available: required under
/// CI, reported as skipped elsewhere.
fn python_ready(test: &str) -> bool {
    statestream_test_support::require_python(test, &["google.protobuf"], "the protobuf package")
}

fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A node with stores `bank` and `other`, one `process` streamer named
/// `plug` on `bank`, configured by `extra` (TOML lines of its table; the
/// restart backoff is 10 ms to 200 ms unless `extra` sets it).
struct Node {
    _home: tempfile::TempDir,
    out: PathBuf,
    store: MultiStore,
    manager: Option<DeliveryManager>,
    bank: StoreKey,
    other: StoreKey,
    height: u64,
}

impl Node {
    fn start(command: &[String], extra: &str) -> Result<Node, Box<dyn std::error::Error>> {
        let home = tempfile::tempdir()?;
        let out = home.path().join("out.jsonl");
        let bank = StoreKey::new("bank")?;
        let other = StoreKey::new("other")?;
        let mut store = MultiStore::in_memory(&[bank.clone(), other.clone()])?;
        let mut argv: Vec<String> = command.iter().map(|a| toml_str(a)).collect();
        argv.push(toml_str(&out.to_string_lossy()));
        let backoff = if extra.contains("restart_backoff") {
            ""
        } else {
            "restart_backoff_ms = 10\nrestart_backoff_max_ms = 200\n"
        };
        let text = format!(
            "[store]\nstreamers = [\"plug\"]\n\n[streamers.plug]\ntype = \"process\"\n\
             keys = [\"bank\"]\ncommand = [{}]\n{backoff}{extra}\n",
            argv.join(", ")
        );
        let config = AppConfig::parse(&text, Path::new("app.toml"))?;
        let specs = config.resolve(&["bank", "other"])?;
        let manager = DeliveryManager::builder()
            .configured(&specs, &Registry::with_builtins(), home.path())
            .start(&mut store)?;
        Ok(Node {
            _home: home,
            out,
            store,
            manager: Some(manager),
            bank,
            other,
            height: 0,
        })
    }

    fn manager(&self) -> &DeliveryManager {
        self.manager.as_ref().expect("not closed")
    }

    /// Commits one block: two changes in `bank` (one of them a delete from
    /// the second block on) and one in `other`, which the plugin must not
    /// see.
    fn commit(&mut self) -> Result<u64, Error> {
        self.commit_big(0)
    }

    /// [`Node::commit`], plus a value of `len` bytes at key `big` of `bank`
    /// when `len` is not 0.
    fn commit_big(&mut self, len: usize) -> Result<u64, Error> {
        let h = self.height + 1;
        if len > 0 {
            self.store.set(&self.bank, b"big", &vec![b'x'; len])?;
        }
        self.store.set(
            &self.bank,
            format!("k{h}").as_bytes(),
            format!("v{h}").as_bytes(),
        )?;
        if h > 1 {
            self.store
                .delete(&self.bank, format!("k{}", h - 1).as_bytes())?;
        }
        self.store
            .set(&self.other, b"x", format!("{h}").as_bytes())?;
        let manager = self.manager.as_mut().expect("not closed");
        let info = manager.commit(&mut self.store, BlockMeta::default());
        // A halted commit commits nothing when the halt came from an
        // earlier async failure; the store's version tells.
        self.height = self.store.version();
        info.map(|i| i.version)
    }

    fn commit_n(&mut self, n: u64) -> Result<(), Error> {
        for _ in 0..n {
            self.commit()?;
        }
        Ok(())
    }

    fn delivered(&self) -> u64 {
        self.manager().stats()[0].delivered_height
    }

    fn last_error(&self) -> String {
        self.manager().stats()[0]
            .last_error
            .clone()
            .unwrap_or_default()
    }

    /// Waits until the streamer delivered `height` (async delivery).
    fn wait_delivered(&self, height: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.delivered() < height {
            assert!(
                Instant::now() < deadline,
                "height {height} not delivered in time: {:?}",
                self.manager().stats()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn close(&mut self) -> Result<(), Error> {
        match self.manager.take() {
            Some(m) => m.close(&mut self.store),
            None => Ok(()),
        }
    }

    /// Closes a node whose streamer halted: `close` reports the halt.
    fn close_halted(&mut self) {
        let closed = self.close();
        assert!(matches!(closed, Err(Error::Halted { .. })), "{closed:?}");
    }

    /// The heights of the output file's lines, in file order.
    fn out_heights(&self) -> Vec<u64> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines().map(line_height).collect()
    }

    fn out_lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines().map(str::to_owned).collect()
    }

    /// The resume heights of the echo plugin's starts.
    fn starts(&self) -> Vec<u64> {
        let mut p = self.out.clone().into_os_string();
        p.push(".starts");
        std::fs::read_to_string(PathBuf::from(p))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().parse().expect("a height"))
            .collect()
    }

    fn echo_pid(&self) -> u32 {
        let mut p = self.out.clone().into_os_string();
        p.push(".pid");
        std::fs::read_to_string(PathBuf::from(p))
            .expect("the echo plugin wrote its pid")
            .trim()
            .parse()
            .expect("a pid")
    }
}

fn line_height(line: &str) -> u64 {
    let rest = &line[line.find("\"height\":").expect("a height field") + 9..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect("a height")
}

/// What the echo plugin writes for blocks `1..=n` of [`Node::commit`].
fn echo_expected(n: u64) -> Vec<String> {
    let hex = |s: String| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let mut lines = Vec::new();
    for h in 1..=n {
        // Records are ordered by key: k<h-1> (delete) and k<h> (set).
        let mut recs = vec![(
            format!("k{h}"),
            format!(",\"value\":\"{}\"}}", hex(format!("v{h}"))),
        )];
        if h > 1 {
            recs.push((format!("k{}", h - 1), ",\"delete\":true}".to_string()));
        }
        recs.sort();
        for (k, tail) in recs {
            lines.push(format!(
                "{{\"height\":{h},\"store\":\"bank\",\"key\":\"{}\"{tail}",
                hex(k)
            ));
        }
    }
    lines
}

/// Every height of `1..=n` is present, in order; a height may repeat (the
/// block in flight when the plugin failed), none is missing.
fn assert_at_least_once(heights: &[u64], n: u64) {
    assert!(
        heights.windows(2).all(|w| w[0] <= w[1]),
        "heights out of order: {heights:?}"
    );
    let mut distinct = heights.to_vec();
    distinct.dedup();
    assert_eq!(
        distinct,
        (1..=n).collect::<Vec<_>>(),
        "heights: {heights:?}"
    );
}

/// The process `pid` is gone: exited and reaped, not a zombie.
fn assert_reaped(pid: u32) {
    if Path::new("/proc/self").exists() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "process {pid} was not reaped");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The pids of this test process's children whose command line mentions
/// `needle` (Linux only; empty elsewhere).
fn child_pids(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(me) && String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}

fn kill9(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -9 {pid} failed");
}

fn echo_cmd() -> Vec<String> {
    vec![echo_plugin().to_string_lossy().into_owned()]
}

fn python_cmd() -> Vec<String> {
    vec![
        "python3".to_string(),
        indexer_py().to_string_lossy().into_owned(),
    ]
}

// ---------------------------------------------------------------------------
// Rust plugin: delivery

#[test]
fn process_echo_delivers_all_blocks_async() -> TestResult {
    let mut node = Node::start(&echo_cmd(), "delivery = \"async\"")?;
    node.commit_n(8)?;
    node.wait_delivered(8);
    let pid = node.echo_pid();
    node.close()?;
    assert_eq!(node.out_lines(), echo_expected(8));
    assert_eq!(node.starts(), [1]);
    assert_reaped(pid);
    Ok(())
}

#[test]
fn process_echo_delivers_all_blocks_sync() -> TestResult {
    let mut node = Node::start(&echo_cmd(), "delivery = \"sync\"")?;
    node.commit_n(6)?;
    // Sync: each commit returned after the plugin acknowledged its block.
    assert_eq!(node.delivered(), 6);
    let pid = node.echo_pid();
    node.close()?;
    assert_eq!(node.out_lines(), echo_expected(6));
    assert_reaped(pid);
    Ok(())
}

#[test]
fn process_echo_resumes_after_node_restart() -> TestResult {
    // The streamer's cursor lives in the store: a second manager on the same
    // store starts the plugin again at the next height.
    let mut node = Node::start(&echo_cmd(), "delivery = \"sync\"")?;
    node.commit_n(3)?;
    let m = node.manager.take().expect("running");
    m.close(&mut node.store)?;
    let text = format!(
        "[store]\nstreamers = [\"plug\"]\n[streamers.plug]\ntype = \"process\"\nkeys = [\"bank\"]\n\
         delivery = \"sync\"\ncommand = [{}, {}]\n",
        toml_str(&echo_cmd()[0]),
        toml_str(&node.out.to_string_lossy())
    );
    let specs = AppConfig::parse(&text, Path::new("app.toml"))?.resolve(&["bank", "other"])?;
    node.manager = Some(
        DeliveryManager::builder()
            .configured(&specs, &Registry::with_builtins(), Path::new("."))
            .start(&mut node.store)?,
    );
    node.commit_n(2)?;
    node.close()?;
    assert_eq!(node.out_lines(), echo_expected(5));
    assert_eq!(node.starts(), [1, 4]);
    Ok(())
}

// ---------------------------------------------------------------------------
// Rust plugin: killed mid-run

#[test]
fn process_echo_killed_is_restarted_and_gets_every_block() -> TestResult {
    let mut node = Node::start(
        &echo_cmd(),
        "delivery = \"async\"\nstop-node-on-error = false",
    )?;
    node.commit_n(3)?;
    node.wait_delivered(3);
    let first = node.echo_pid();
    kill9(first);
    node.commit_n(5)?;
    node.wait_delivered(8);
    let error = node.last_error();
    assert!(
        error.contains("plugin \"echo\"") && error.contains("signal: 9"),
        "{error}"
    );
    let second = node.echo_pid();
    assert_ne!(first, second);
    assert_reaped(first);
    node.close()?;
    assert_at_least_once(&node.out_heights(), 8);
    // Restarted at the first block it had not acknowledged.
    assert_eq!(node.starts(), [1, 4]);
    assert_reaped(second);
    Ok(())
}

// ---------------------------------------------------------------------------
// Rust plugin: failure modes

struct Mode {
    env: &'static str,
    timeout_ms: u64,
    /// Parts the error message must contain (height 3 fails).
    expect: &'static [&'static str],
    /// Whether the plugin is killed (and restarted at height 3).
    restarts: bool,
}

const MODES: &[Mode] = &[
    Mode {
        env: "ECHO_PLUGIN_CRASH_AT",
        timeout_ms: 10_000,
        expect: &["exited (exit status: 3)", "ack of height 3"],
        restarts: true,
    },
    Mode {
        env: "ECHO_PLUGIN_HANG_AT",
        timeout_ms: 2_000,
        expect: &["timed out", "ack of height 3", "2000 ms", "killed"],
        restarts: true,
    },
    Mode {
        env: "ECHO_PLUGIN_GARBAGE_AT",
        timeout_ms: 10_000,
        expect: &["wrote garbage", "ack of height 3", "does not decode as Ack"],
        restarts: true,
    },
    Mode {
        env: "ECHO_PLUGIN_WRONG_ACK_AT",
        timeout_ms: 10_000,
        expect: &["acknowledged height 1003 but height 3 was sent"],
        restarts: true,
    },
    Mode {
        env: "ECHO_PLUGIN_ERROR_AT",
        timeout_ms: 10_000,
        expect: &["failed to handle height 3: simulated failure: disk full"],
        restarts: false,
    },
];

fn mode_config(mode: &Mode, delivery: &str, stop: bool) -> String {
    format!(
        "delivery = \"{delivery}\"\nstop-node-on-error = {stop}\ntimeout_ms = {}\nenv = {{ {} = \"3\" }}",
        mode.timeout_ms, mode.env
    )
}

fn assert_message(mode: &Mode, message: &str) {
    assert!(
        message.contains("plugin \"echo\""),
        "{}: {message}",
        mode.env
    );
    for part in mode.expect {
        assert!(message.contains(part), "{}: {message}", mode.env);
    }
}

/// With stop-node-on-error: the commit of the failing block halts the node
/// with a clear message, and the cursor stays before it.
#[test]
fn process_failure_modes_halt_the_node() -> TestResult {
    for mode in MODES {
        let mut node = Node::start(&echo_cmd(), &mode_config(mode, "sync", true))?;
        node.commit_n(2)?;
        match node.commit() {
            Err(Error::Halted {
                streamer,
                height,
                message,
            }) => {
                assert_eq!((streamer.as_str(), height), ("plug", 3), "{}", mode.env);
                assert_message(mode, &message);
            }
            other => panic!("{}: expected a halt, got {other:?}", mode.env),
        }
        assert_eq!(node.delivered(), 2, "{}", mode.env);
        assert!(
            matches!(node.commit(), Err(Error::Halted { height: 3, .. })),
            "{}",
            mode.env
        );
        node.close_halted();
    }
    Ok(())
}

/// Without stop-node-on-error (async): the error is recorded, the plugin is
/// restarted (or, after an error ack, sent the block again) and the stream
/// completes.
#[test]
fn process_failure_modes_recover_async() -> TestResult {
    for mode in MODES {
        let mut node = Node::start(&echo_cmd(), &mode_config(mode, "async", false))?;
        node.commit_n(6)?;
        node.wait_delivered(6);
        assert_message(mode, &node.last_error());
        assert!(node.manager().stats()[0].errors >= 1, "{}", mode.env);
        node.close()?;
        assert_at_least_once(&node.out_heights(), 6);
        let starts = node.starts();
        if mode.restarts {
            assert_eq!(starts, [1, 3], "{}", mode.env);
        } else {
            assert_eq!(starts, [1], "{}", mode.env);
        }
    }
    Ok(())
}

/// Without stop-node-on-error (sync): the failing block is delivered again
/// at the next commit.
#[test]
fn process_failure_recovers_sync() -> TestResult {
    let mode = &MODES[0];
    let mut node = Node::start(&echo_cmd(), &mode_config(mode, "sync", false))?;
    node.commit_n(3)?;
    assert_eq!(node.delivered(), 2);
    assert_message(mode, &node.last_error());
    node.commit_n(3)?;
    assert_eq!(node.delivered(), 6);
    node.close()?;
    assert_at_least_once(&node.out_heights(), 6);
    assert_eq!(node.starts(), [1, 3]);
    Ok(())
}

#[test]
fn process_version_mismatch_is_clear() -> TestResult {
    let extra = "delivery = \"sync\"\nenv = { ECHO_PLUGIN_PROTOCOL_VERSION = \"2\" }";
    let mut node = Node::start(&echo_cmd(), extra)?;
    match node.commit() {
        Err(Error::Halted { message, .. }) => assert!(
            message.contains("plugin \"echo\"")
                && message.contains("speaks plugin protocol version 2, the node speaks version 1"),
            "{message}"
        ),
        other => panic!("expected a halt, got {other:?}"),
    }
    node.close_halted();
    Ok(())
}

/// Programs that do not speak the protocol: each fails the handshake with a
/// clear error (the node's output file path is their last argument, `$1`).
#[test]
fn process_non_plugins_fail_the_handshake() -> TestResult {
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "exec sleep 30",
            "handshake_timeout_ms = 500",
            &["timed out: no HelloAck within 500 ms; it was killed"],
        ),
        (
            "exit 0",
            "",
            &["exited (exit status: 0) instead of sending the HelloAck"],
        ),
        (
            "echo hello from a script",
            "",
            &[
                "wrote garbage instead of the HelloAck",
                "the stream ended inside a frame",
            ],
        ),
        (
            "printf '\\003\\377\\377\\377'; exec sleep 30",
            "",
            &[
                "wrote garbage instead of the HelloAck",
                "does not decode as HelloAck",
                "killed",
            ],
        ),
    ];
    for (script, extra, expect) in cases {
        let command = ["sh", "-c", script, "sh"].map(str::to_string);
        let mut node = Node::start(&command, &format!("delivery = \"sync\"\n{extra}"))?;
        match node.commit() {
            Err(Error::Halted {
                height, message, ..
            }) => {
                assert_eq!(height, 1);
                assert!(message.contains("plugin program \"sh\" (pid "), "{message}");
                for part in expect {
                    assert!(message.contains(part), "{script}: {message}");
                }
            }
            other => panic!("{script}: expected a halt, got {other:?}"),
        }
        node.close_halted();
    }
    Ok(())
}

#[test]
fn process_missing_program_is_named() -> TestResult {
    let missing = vec!["/no/such/dir/plugin-xyz".to_string()];
    let err = Node::start(&missing, "").err().expect("start fails");
    let text = err.to_string();
    assert!(
        text.contains("/no/such/dir/plugin-xyz")
            && text.contains("not found")
            && text.contains("command"),
        "{text}"
    );
    let err = Node::start(&["no-such-plugin-xyz".to_string()], "")
        .err()
        .expect("start fails");
    assert!(err.to_string().contains("no-such-plugin-xyz"), "{err}");
    Ok(())
}

#[test]
fn process_program_removed_before_start_is_named() -> TestResult {
    // The program exists when the streamer is built, not when it starts.
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("vanishing_plugin");
    std::fs::copy(echo_plugin(), &copy)?;
    let mut node = Node::start(
        &[copy.to_string_lossy().into_owned()],
        "delivery = \"sync\"",
    )?;
    std::fs::remove_file(&copy)?;
    match node.commit() {
        Err(Error::Halted { message, .. }) => assert!(
            message.contains("cannot start plugin program") && message.contains("vanishing_plugin"),
            "{message}"
        ),
        other => panic!("expected a halt, got {other:?}"),
    }
    node.close_halted();
    Ok(())
}

// ---------------------------------------------------------------------------
// Python plugin

fn python_expected(n: u64) -> Vec<String> {
    let hex = |s: String| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let mut lines = Vec::new();
    for h in 1..=n {
        let mut recs = vec![(
            format!("k{h}"),
            format!("\"delete\":false,\"value\":\"{}\"}}", hex(format!("v{h}"))),
        )];
        if h > 1 {
            recs.push((format!("k{}", h - 1), "\"delete\":true}".to_string()));
        }
        recs.sort();
        for (k, tail) in recs {
            lines.push(format!(
                "{{\"height\":{h},\"store\":\"bank\",\"key\":\"{}\",{tail}",
                hex(k)
            ));
        }
    }
    lines
}

#[test]
fn process_python_delivers_all_blocks_async() -> TestResult {
    if !python_ready("process_python_delivers_all_blocks_async") {
        return Ok(());
    }
    let mut node = Node::start(&python_cmd(), "delivery = \"async\"")?;
    node.commit_n(7)?;
    node.wait_delivered(7);
    node.close()?;
    assert_eq!(node.out_lines(), python_expected(7));
    Ok(())
}

#[test]
fn process_python_delivers_all_blocks_sync() -> TestResult {
    if !python_ready("process_python_delivers_all_blocks_sync") {
        return Ok(());
    }
    let mut node = Node::start(&python_cmd(), "delivery = \"sync\"")?;
    node.commit_n(5)?;
    assert_eq!(node.delivered(), 5);
    node.close()?;
    assert_eq!(node.out_lines(), python_expected(5));
    Ok(())
}

#[test]
fn process_python_killed_is_restarted_and_gets_every_block() -> TestResult {
    if !python_ready("process_python_killed_is_restarted_and_gets_every_block") {
        return Ok(());
    }
    if !Path::new("/proc/self").exists() {
        eprintln!("SKIPPED process_python_killed_is_restarted: needs /proc to find the plugin");
        return Ok(());
    }
    let mut node = Node::start(
        &python_cmd(),
        "delivery = \"async\"\nstop-node-on-error = false",
    )?;
    node.commit_n(3)?;
    node.wait_delivered(3);
    let needle = node.out.to_string_lossy().into_owned();
    let pids = child_pids(&needle);
    assert_eq!(pids.len(), 1, "one plugin process: {pids:?}");
    kill9(pids[0]);
    node.commit_n(4)?;
    node.wait_delivered(7);
    let error = node.last_error();
    assert!(
        error.contains("plugin \"indexer.py\"") && error.contains("signal: 9"),
        "{error}"
    );
    assert_reaped(pids[0]);
    node.close()?;
    assert_at_least_once(&node.out_heights(), 7);
    let mut distinct = node.out_lines();
    distinct.dedup();
    assert_eq!(distinct, python_expected(7));
    Ok(())
}

/// The program is started with the exact argv of `command`: no shell, no
/// word splitting, no expansion of `$`, `;`, `*` or backquotes. The echo
/// plugin writes to the file its first argument names, so that file must
/// exist under its literal name; and a command given as one string with
/// spaces is one program name, which does not exist.
#[test]
fn process_command_is_the_exact_argv_no_shell() -> TestResult {
    let home = tempfile::tempdir()?;
    let literal = home.path().join("out $HOME;`touch pwned` *.jsonl");
    let text = format!(
        "[store]\nstreamers = [\"plug\"]\n\n[streamers.plug]\ntype = \"process\"\n\
         keys = [\"bank\"]\ndelivery = \"sync\"\ncommand = [{}, {}]\n",
        toml_str(&echo_plugin().to_string_lossy()),
        toml_str(&literal.to_string_lossy()),
    );
    let bank = StoreKey::new("bank")?;
    let mut store = MultiStore::in_memory(std::slice::from_ref(&bank))?;
    let specs = AppConfig::parse(&text, Path::new("app.toml"))?.resolve(&["bank"])?;
    let mut manager = DeliveryManager::builder()
        .configured(&specs, &Registry::with_builtins(), home.path())
        .start(&mut store)?;
    store.set(&bank, b"k", b"v")?;
    manager.commit(&mut store, BlockMeta::default())?;
    manager.close(&mut store)?;
    assert!(literal.is_file(), "{} was not written", literal.display());
    let mut names: Vec<String> = std::fs::read_dir(home.path())?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert!(!names.iter().any(|n| n == "pwned"), "{names:?}");

    let text = text.replace(
        &format!(
            "command = [{}, ",
            toml_str(&echo_plugin().to_string_lossy())
        ),
        "command = [\"sh -c true\", ",
    );
    let specs = AppConfig::parse(&text, Path::new("app.toml"))?.resolve(&["bank"])?;
    let mut store = MultiStore::in_memory(std::slice::from_ref(&bank))?;
    let err = DeliveryManager::builder()
        .configured(&specs, &Registry::with_builtins(), home.path())
        .start(&mut store)
        .expect_err("\"sh -c true\" is not a program");
    assert!(
        err.to_string().contains("program \"sh -c true\" not found"),
        "{err}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Bounds: frame size, a plugin that does not read, shutdown, environment

/// The size a halt message gives for the frame of `height`: "height H is a
/// plugin frame of S bytes, over the limit of M bytes".
fn frame_too_large(message: &str, height: u64) -> (usize, usize) {
    let prefix = format!("height {height} is a plugin frame of ");
    let rest = message
        .split_once(&prefix)
        .unwrap_or_else(|| panic!("not a frame size error for height {height}: {message}"))
        .1;
    let number = |s: &str| -> usize {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("no number in {message}"))
    };
    let size = number(rest);
    let max = number(
        rest.split_once("over the limit of ")
            .unwrap_or_else(|| panic!("no limit in {message}"))
            .1,
    );
    (size, max)
}

/// Commits a small block 1 and a block 2 with a 4000-byte value into a node
/// whose plugin runs with `extra`; returns the node and block 2's result.
fn frame_limit_run(extra: &str) -> Result<(Node, Result<u64, Error>), Box<dyn std::error::Error>> {
    let mut node = Node::start(&echo_cmd(), &format!("delivery = \"sync\"\n{extra}"))?;
    node.commit()?;
    let second = node.commit_big(4000);
    Ok((node, second))
}

/// A block over `max_frame_bytes` is refused before it is sent, with its
/// height and size, and the plugin is not restarted over it; one byte less
/// than the frame is refused, exactly the frame's size passes on both
/// sides, and a plugin whose own limit is lower refuses it.
#[test]
fn process_block_over_the_frame_limit_is_named() -> TestResult {
    // The frame's size, as the node reports it.
    let (mut node, second) = frame_limit_run("max_frame_bytes = 1024")?;
    let message = match second {
        Err(Error::Halted {
            height: 2, message, ..
        }) => message,
        other => panic!("expected a halt at height 2, got {other:?}"),
    };
    let (size, max) = frame_too_large(&message, 2);
    assert_eq!(max, 1024);
    assert!(size > 4000, "{message}");
    assert!(
        message.contains("max_frame_bytes") && message.contains("[streamers.plug]"),
        "{message}"
    );
    node.close_halted();

    // One byte over the limit.
    let (mut node, second) = frame_limit_run(&format!("max_frame_bytes = {}", size - 1))?;
    match second {
        Err(Error::Halted {
            height: 2, message, ..
        }) => assert_eq!(frame_too_large(&message, 2), (size, size - 1), "{message}"),
        other => panic!("expected a halt at height 2, got {other:?}"),
    }
    assert_eq!(node.delivered(), 1);
    node.close_halted();
    // The plugin was never sent the block, so never killed or restarted.
    assert_eq!(node.starts(), [1]);
    assert_eq!(node.out_heights(), [1]);

    // Without stop-node-on-error, every attempt fails the same clear way and
    // the plugin keeps running.
    let (mut node, second) = frame_limit_run(&format!(
        "max_frame_bytes = {}\nstop-node-on-error = false",
        size - 1
    ))?;
    second?;
    node.commit()?;
    assert_eq!(node.delivered(), 1);
    assert_eq!(frame_too_large(&node.last_error(), 2), (size, size - 1));
    assert_eq!(node.manager().stats()[0].errors, 2);
    node.close()?;
    assert_eq!(node.starts(), [1]);

    // Exactly the limit, on both sides: delivered.
    let (mut node, second) = frame_limit_run(&format!(
        "max_frame_bytes = {size}\nenv = {{ ECHO_PLUGIN_MAX_FRAME_BYTES = \"{size}\" }}"
    ))?;
    second?;
    assert_eq!(node.delivered(), 2);
    node.close()?;
    assert_eq!(node.out_heights().last(), Some(&2));

    // The plugin's own limit one byte lower: the plugin refuses the frame
    // and exits, and says why on its stderr.
    let (mut node, second) = frame_limit_run(&format!(
        "max_frame_bytes = {size}\nenv = {{ ECHO_PLUGIN_MAX_FRAME_BYTES = \"{}\" }}",
        size - 1
    ))?;
    match second {
        Err(Error::Halted {
            height: 2, message, ..
        }) => assert!(
            message.contains("exited (exit status: 1) instead of sending the ack of height 2"),
            "{message}"
        ),
        other => panic!("expected a halt at height 2, got {other:?}"),
    }
    node.close_halted();
    Ok(())
}

/// The size of a value that makes a block's frame larger than a pipe's
/// buffer (64 KiB on Linux), so that a plugin that does not read blocks the
/// node's write.
const PIPE_FILLER: usize = 256 << 10;

/// A plugin that acknowledges blocks without reading its stdin is timed
/// out (the node does not wait on the pipe for ever), killed and
/// restarted with the block it did not read; every block then arrives.
#[test]
fn process_plugin_not_reading_stdin_times_out_and_restarts() -> TestResult {
    let mut node = Node::start(
        &echo_cmd(),
        "delivery = \"sync\"\nstop-node-on-error = false\ntimeout_ms = 5000\n\
         env = { ECHO_PLUGIN_DEAF_AT = \"3\" }",
    )?;
    node.commit_n(2)?;
    assert_eq!(node.delivered(), 2);
    // The commits run on a thread of their own so that a node blocked on
    // the plugin's pipe fails this test instead of hanging it.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Block 3 does not fit into the pipe; before the fix, block 5
        // waited for ever behind block 4, which waited behind block 3.
        let mut results = vec![node.commit_big(PIPE_FILLER).map_err(|e| e.to_string())];
        for _ in 4..=6 {
            results.push(node.commit().map_err(|e| e.to_string()));
        }
        let _ = tx.send((node, results));
    });
    let (mut node, results) = rx
        .recv_timeout(Duration::from_secs(180))
        .unwrap_or_else(|_| {
            panic!(
                "committing blocks 3 to 6 did not end within 180 s (timeout_ms 5000): the node \
             blocked on a plugin that does not read its stdin"
            )
        });
    for r in &results {
        assert!(r.is_ok(), "{results:?}");
    }
    let error = node.last_error();
    assert!(
        error.contains("plugin \"echo\"")
            && error.contains("timed out: it did not read the frame of height 3")
            && error.contains("within 5000 ms; it was killed"),
        "{error}"
    );
    assert_eq!(node.manager().stats()[0].errors, 1);
    // Block 3 failed at its commit and was delivered again at the next one,
    // by a restarted plugin.
    assert_eq!(node.delivered(), 6);
    node.close()?;
    assert_eq!(node.starts(), [1, 3]);
    assert_at_least_once(&node.out_heights(), 6);
    Ok(())
}

/// A clean stop while a failed plugin waits out its restart backoff ends
/// that wait: the node closes long before the backoff is over.
#[test]
fn process_clean_stop_during_restart_backoff_is_prompt() -> TestResult {
    const BACKOFF_S: u64 = 120;
    let mut node = Node::start(
        &echo_cmd(),
        &format!(
            "delivery = \"async\"\nstop-node-on-error = false\n\
             restart_backoff_ms = {ms}\nrestart_backoff_max_ms = {ms}\n\
             env = {{ ECHO_PLUGIN_CRASH_AT = \"2\" }}",
            ms = BACKOFF_S * 1000
        ),
    )?;
    node.commit_n(3)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.manager().stats()[0].errors == 0 {
        assert!(
            Instant::now() < deadline,
            "the plugin's crash at height 2 was not reported within 60 s: {:?}",
            node.manager().stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(node.last_error().contains("exited (exit status: 3)"));
    // The delivery worker retries after a pause of its own (50 ms), and then
    // waits in the plugin's restart backoff: let it get there.
    std::thread::sleep(Duration::from_secs(1));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let closed = node.close().map_err(|e| e.to_string());
        let _ = tx.send((node, closed));
    });
    let limit = Duration::from_secs(BACKOFF_S / 4);
    let (node, closed) = rx.recv_timeout(limit).unwrap_or_else(|_| {
        panic!(
            "the node did not close within {} s while the plugin waited out a {BACKOFF_S} s \
             restart backoff",
            limit.as_secs()
        )
    });
    closed?;
    // Block 2 was not delivered: it waits in the change log.
    assert_eq!(node.store.cursors()?, [("plug".to_string(), 1)]);
    assert_eq!(node.starts(), [1]);
    Ok(())
}

/// Where [`process_plugin_environment_child`] copies what the plugin saw.
const ENV_DUMP_VAR: &str = "STATESTREAM_TEST_ENV_DUMP";

/// A plugin does not see the node's environment: `PATH` (of the allow-list)
/// passes, `PGPASSWORD` does not, and a variable of `env` is set. The node
/// runs in a child process (this test binary, running only
/// [`process_plugin_environment_child`]) with `PGPASSWORD` set: setting a
/// variable in this process would race the tests running beside it.
#[test]
fn process_plugin_environment_is_the_allow_list() -> TestResult {
    let dir = tempfile::tempdir()?;
    let dump = dir.path().join("plugin.env");
    let out = Command::new(std::env::current_exe()?)
        .args([
            "process_plugin_environment_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("PGPASSWORD", "hunter2")
        .env(ENV_DUMP_VAR, &dump)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child node failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&dump)?;
    let vars: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let path = std::env::var("PATH")?;
    assert_eq!(get("PATH"), Some(path.as_str()), "{text}");
    assert_eq!(get("PLUGIN_SETTING"), Some("from env"), "{text}");
    assert_eq!(get("PGPASSWORD"), None, "{text}");
    assert_eq!(get(ENV_DUMP_VAR), None, "{text}");
    // Cargo's variables of this test process are not passed on either.
    assert!(!vars.iter().any(|(n, _)| n.starts_with("CARGO")), "{text}");
    Ok(())
}

/// The node of [`process_plugin_environment_is_the_allow_list`]: a plugin
/// that writes its environment to a file, then runs the echo plugin.
#[test]
#[ignore = "run by process_plugin_environment_is_the_allow_list, with PGPASSWORD set"]
fn process_plugin_environment_child() -> TestResult {
    let dump = PathBuf::from(
        std::env::var_os(ENV_DUMP_VAR).ok_or("STATESTREAM_TEST_ENV_DUMP is not set")?,
    );
    assert_eq!(std::env::var("PGPASSWORD")?, "hunter2");
    // sh -c SCRIPT ECHO_PLUGIN OUTPUT: $0 is the echo plugin, $1 its output.
    let command = [
        "sh".to_string(),
        "-c".to_string(),
        "env > \"$1.env\" && exec \"$0\" \"$1\"".to_string(),
        echo_cmd()[0].clone(),
    ];
    let mut node = Node::start(
        &command,
        "delivery = \"sync\"\nenv = { PLUGIN_SETTING = \"from env\" }",
    )?;
    node.commit()?;
    assert_eq!(node.delivered(), 1);
    node.close()?;
    let mut seen = node.out.clone().into_os_string();
    seen.push(".env");
    std::fs::copy(PathBuf::from(seen), dump)?;
    Ok(())
}
