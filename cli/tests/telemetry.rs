//! The demo node's telemetry server (`[telemetry] address`): the real node,
//! on a port the system chooses (read back from its log), read with a real
//! HTTP client and an independent Prometheus text parser.
//!
//! To look at a node in a stable state, the tests run it with a block time
//! far longer than the test: it commits one block and waits, so every
//! number the server reports stays put until the test stops the node.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{BIN, PATIENCE, p, wait_for};

/// Longer than any test: the node commits one block, then waits.
const FOREVER_MS: &str = "3600000";

const CONFIG: &str = r#"[store]
streamers = ["file", "mirror"]

[streamers.file]
keys = ["*"]
write_dir = "data/streaming"

[streamers.mirror]
type = "file"
keys = ["bank"]
write_dir = "data/mirror"
delivery = "sync"

[telemetry]
address = "127.0.0.1:0"
"#;

struct Home {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    config: PathBuf,
}

impl Home {
    fn new(config_text: &str) -> Home {
        let tmp = tempfile::tempdir().expect("temp dir");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).expect("create the home");
        let config = tmp.path().join("app.toml");
        std::fs::write(&config, config_text).expect("write app.toml");
        Home {
            _tmp: tmp,
            home,
            config,
        }
    }

    fn node(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["node", "--home", p(&self.home), "--config", p(&self.config)])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }
}

/// A node running in the background, its stderr collected line by line.
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
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
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("lines lock").push(line);
            }
        });
        Running { child, lines }
    }

    fn stderr(&self) -> String {
        self.lines.lock().expect("lines lock").join("\n")
    }

    /// The address the telemetry server logged it listens on.
    fn telemetry_address(&mut self) -> String {
        let start = Instant::now();
        loop {
            let found = self
                .lines
                .lock()
                .expect("lines lock")
                .iter()
                .filter(|l| l.contains("telemetry server listening"))
                .find_map(|l| {
                    let rest = l.split("address=").nth(1)?;
                    Some(rest.split_whitespace().next()?.to_owned())
                });
            if let Some(address) = found {
                return address;
            }
            if let Some(status) = self.child.try_wait().expect("poll the node") {
                panic!("the node exited ({status}): {}", self.stderr());
            }
            assert!(
                start.elapsed() < PATIENCE,
                "no telemetry address logged: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGINT, then the exit code and stdout.
    fn interrupt(mut self) -> (i32, String, String) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on the child we spawned, which has not been waited for.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
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
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut stdout).expect("stdout");
        }
        // The reader thread sees the end of stderr once the node is gone.
        std::thread::sleep(Duration::from_millis(50));
        let stderr = self.stderr();
        assert!(!stderr.contains("panicked"), "a panic: {stderr}");
        (status.code().expect("exited, not killed"), stdout, stderr)
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// Status code, content type and body of `GET http://address/path`.
fn get(address: &str, path: &str) -> (u16, String, String) {
    let mut response = agent()
        .get(&format!("http://{address}{path}"))
        .call()
        .expect("request");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response.body_mut().read_to_string().expect("body");
    (response.status().as_u16(), content_type, body)
}

fn get_json(address: &str, path: &str) -> (u16, Value) {
    let (code, content_type, body) = get(address, path);
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    (code, serde_json::from_str(&body).expect("a JSON body"))
}

/// `GET /metrics` parsed by `prometheus-parse`: gauges and counters by
/// metric name and `streamer` label ("" for none).
fn scrape(address: &str) -> BTreeMap<(String, String), f64> {
    let (code, content_type, body) = get(address, "/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("the Prometheus text format");
    let mut out = BTreeMap::new();
    for sample in parsed.samples {
        let streamer = sample.labels.get("streamer").unwrap_or("").to_owned();
        if let prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Untyped(v) = sample.value
        {
            out.insert((sample.metric, streamer), v);
        }
    }
    out
}

fn metric(m: &BTreeMap<(String, String), f64>, name: &str, streamer: &str) -> u64 {
    let v = m
        .get(&(name.to_owned(), streamer.to_owned()))
        .unwrap_or_else(|| panic!("no {name}{{streamer={streamer:?}}} in {m:#?}"));
    *v as u64
}

#[test]
fn telemetry_node_metrics_match_cursors_after_shutdown() {
    let home = Home::new(CONFIG);
    let check = Command::new(BIN)
        .args(["config", "check", p(&home.config)])
        .output()
        .expect("run config check");
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{said}");
    assert!(said.contains("telemetry on 127.0.0.1:0"), "{said}");
    // A first run to the end: the server starts on a port of the system's
    // choosing and stops with the node.
    let first = home
        .node(&["--blocks", "20"])
        .output()
        .expect("run the node");
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("telemetry server listening"), "{stderr}");

    // The second run commits block 21 and waits.
    let mut node = Running::start(home.node(&["--blocks", "0", "--block-time-ms", FOREVER_MS]));
    let address = node.telemetry_address();
    let mut m = BTreeMap::new();
    wait_for("both streamers to deliver block 21", || {
        m = scrape(&address);
        metric(&m, "statestream_committed_height", "") == 21
            && ["file", "mirror"]
                .iter()
                .all(|s| metric(&m, "statestream_streamer_delivered_height", s) == 21)
            && metric(&m, "statestream_streamer_flushed_height", "file") == 21
    });
    for s in ["file", "mirror"] {
        assert_eq!(metric(&m, "statestream_streamer_lag_blocks", s), 0);
        assert_eq!(metric(&m, "statestream_streamer_queue_depth", s), 0);
        assert_eq!(metric(&m, "statestream_streamer_errors_total", s), 0);
        assert_eq!(metric(&m, "statestream_streamer_halted", s), 0);
        assert!(metric(&m, "statestream_streamer_flushed_height", s) >= 20);
    }
    assert_eq!(metric(&m, "statestream_halted", ""), 0);
    assert_eq!(
        metric(&m, "statestream_commit_duration_seconds_count", ""),
        1
    );
    assert!(metric(&m, "statestream_change_log_blocks", "") >= 1);
    assert!(metric(&m, "statestream_change_log_bytes", "") > 0);

    let (code, status) = get_json(&address, "/status");
    assert_eq!(code, 200);
    assert_eq!(status["state"], "committing", "{status}");
    assert_eq!(status["committed_height"], 21);
    let streamers = status["streamers"].as_array().expect("streamers");
    let summary: Vec<(&str, &str, &str, &str)> = streamers
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or(""),
                s["type"].as_str().unwrap_or(""),
                s["delivery"].as_str().unwrap_or(""),
                s["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("file", "file", "async", "running"),
            ("mirror", "file", "sync", "running")
        ]
    );
    let (code, health) = get_json(&address, "/healthz");
    assert_eq!(code, 200, "{health}");

    let (code, _, stderr) = node.interrupt();
    assert_eq!(code, 0, "{stderr}");
    let out = Command::new(BIN)
        .args(["cursors", "--home", p(&home.home), "--json"])
        .output()
        .expect("run cursors");
    assert!(out.status.success());
    let cursors: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(cursors["height"], 21);
    let by_name: BTreeMap<String, u64> = cursors["cursors"]
        .as_array()
        .expect("cursors")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().expect("name").to_owned(),
                c["height"].as_u64().expect("height"),
            )
        })
        .collect();
    let scraped: BTreeMap<String, u64> = ["file", "mirror"]
        .iter()
        .map(|s| {
            (
                (*s).to_owned(),
                metric(&m, "statestream_streamer_delivered_height", s),
            )
        })
        .collect();
    assert_eq!(by_name, scraped);
}

/// `GET /metrics` parsed, the value of `name` for streamer `serve` and
/// `frontend` (`None`: a metric without that label).
fn serve_metric(address: &str, name: &str, frontend: Option<&str>) -> f64 {
    let (code, _, body) = get(address, "/metrics");
    assert_eq!(code, 200, "{body}");
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("the Prometheus text format");
    let found = parsed
        .samples
        .into_iter()
        .find(|s| {
            s.metric == name
                && s.labels.get("streamer") == Some("serve")
                && s.labels.get("frontend") == frontend
        })
        .unwrap_or_else(|| panic!("no {name}{{frontend={frontend:?}}} in {body}"));
    match found.value {
        prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Counter(v) => v,
        other => panic!("{name}: {other:?}"),
    }
}

/// The address a log line with `marker` gives after `address=`.
fn logged_address(node: &Running, marker: &str) -> String {
    let mut found = None;
    wait_for(marker, || {
        found = node
            .lines
            .lock()
            .expect("lines lock")
            .iter()
            .filter(|l| l.contains(marker))
            .find_map(|l| {
                let rest = l.split("address=").nth(1)?;
                Some(rest.split_whitespace().next()?.to_owned())
            });
        found.is_some()
    });
    found.expect("found")
}

#[test]
fn telemetry_node_serve_metrics_count_sse_subscribers_and_match_cursors() {
    let home = Home::new(
        "[store]\nstreamers = [\"file\", \"serve\"]\n\n[streamers.file]\nkeys = [\"*\"]\n\
         write_dir = \"data/streaming\"\n\n[streamers.serve]\ntype = \"serve\"\nkeys = [\"*\"]\n\
         http_address = \"127.0.0.1:0\"\nmax_subscribers = 9\n\n\
         [telemetry]\naddress = \"127.0.0.1:0\"\n",
    );
    let mut node = Running::start(home.node(&["--blocks", "0", "--block-time-ms", FOREVER_MS]));
    let address = node.telemetry_address();
    let http = logged_address(&node, "serve: HTTP (SSE) listening");
    wait_for("block 1 delivered to both streamers", || {
        let m = scrape(&address);
        ["file", "serve"]
            .iter()
            .all(|s| metric(&m, "statestream_streamer_delivered_height", s) == 1)
    });
    assert_eq!(serve_metric(&address, "serve_max_subscribers", None), 9.0);
    assert_eq!(
        serve_metric(&address, "serve_subscribers", Some("sse")),
        0.0
    );

    // An SSE subscriber: its put (block 1) arrives, and /metrics counts it.
    let response = agent()
        .get(&format!("http://{http}/stream"))
        .call()
        .expect("GET /stream");
    assert_eq!(response.status().as_u16(), 200);
    let mut lines = BufReader::new(response.into_body().into_reader()).lines();
    let mut put = Vec::new();
    while put.last().is_none_or(|l: &String| !l.is_empty()) {
        put.push(lines.next().expect("the put").expect("a line"));
    }
    assert!(put.contains(&"event: put".to_owned()), "{put:?}");
    assert!(put.contains(&"id: 1".to_owned()), "{put:?}");
    assert_eq!(
        serve_metric(&address, "serve_subscribers", Some("sse")),
        1.0
    );
    assert_eq!(
        serve_metric(&address, "serve_subscribers", Some("grpc")),
        0.0
    );
    assert!(serve_metric(&address, "serve_messages_sent_total", Some("sse")) >= 1.0);
    assert!(serve_metric(&address, "serve_bytes_sent_total", Some("sse")) > 0.0);
    assert_eq!(
        serve_metric(&address, "serve_slow_disconnects_total", Some("sse")),
        0.0
    );
    drop(lines);
    wait_for("the subscriber to be gone from /metrics", || {
        serve_metric(&address, "serve_subscribers", Some("sse")) == 0.0
    });

    let m = scrape(&address);
    let (code, _, stderr) = node.interrupt();
    assert_eq!(code, 0, "{stderr}");
    let out = Command::new(BIN)
        .args(["cursors", "--home", p(&home.home), "--json"])
        .output()
        .expect("run cursors");
    assert!(out.status.success());
    let cursors: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for c in cursors["cursors"].as_array().expect("cursors") {
        let name = c["name"].as_str().expect("name");
        assert_eq!(
            c["height"].as_u64(),
            Some(metric(&m, "statestream_streamer_delivered_height", name)),
            "{name}: {cursors}"
        );
    }
    assert_eq!(cursors["cursors"].as_array().map(Vec::len), Some(2));
}

#[test]
fn telemetry_node_healthz_turns_503_when_a_streamer_halts() {
    let home = Home::new(
        "[store]\nstreamers = [\"file\"]\n\n[streamers.file]\nkeys = [\"*\"]\n\
         write_dir = \"data/streaming\"\nstop-node-on-error = true\n\n\
         [telemetry]\naddress = \"127.0.0.1:0\"\n",
    );
    // A directory where block 1's data file must go: the streamer builds
    // (its directory is writable) and fails on the first block.
    std::fs::create_dir_all(home.home.join("data/streaming/block-1-data"))
        .expect("create the obstacle");
    let mut node = Running::start(home.node(&["--blocks", "0", "--block-time-ms", FOREVER_MS]));
    let address = node.telemetry_address();
    let mut health = (0, Value::Null);
    wait_for("/healthz to report the halt", || {
        health = get_json(&address, "/healthz");
        health.0 != 200
    });
    let (code, body) = health;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["state"], "halted");
    assert_eq!(body["streamer"], "file");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("block-1-data")),
        "{body}"
    );
    let (_, status) = get_json(&address, "/status");
    assert_eq!(status["streamers"][0]["state"], "halted", "{status}");
    assert_eq!(status["streamers"][0]["halted_at"], 1);
    let m = scrape(&address);
    assert_eq!(metric(&m, "statestream_halted", ""), 1);
    assert_eq!(metric(&m, "statestream_streamer_halted", "file"), 1);
    assert_eq!(metric(&m, "statestream_streamer_errors_total", "file"), 1);
    assert_eq!(metric(&m, "statestream_streamer_lag_blocks", "file"), 1);

    // The node stops at its next block with the streamer's error.
    let (code, _, stderr) = node.interrupt();
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("statestream: error: streamer \"file\" failed at height 1"),
        "{stderr}"
    );
}

#[test]
fn telemetry_node_address_in_use_names_file_key_and_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address");
    let home = Home::new(&format!(
        "[store]\nstreamers = [\"file\"]\n\n[streamers.file]\nkeys = [\"*\"]\n\n\
         [telemetry]\naddress = \"{address}\"\n"
    ));
    let out = home
        .node(&["--blocks", "1"])
        .output()
        .expect("run the node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("statestream: error: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(line.contains(p(&home.config)), "{line}");
    assert!(
        line.contains("[telemetry] key `address` (line 8)"),
        "{line}"
    );
    assert!(
        line.contains(&format!("cannot listen on {address}")),
        "{line}"
    );

    // A malformed address is refused when the configuration is read.
    std::fs::write(&home.config, "[telemetry]\naddress = \"localhost:x\"\n").expect("write");
    let out = home
        .node(&["--blocks", "1"])
        .output()
        .expect("run the node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("[telemetry] key `address` (line 2): expected an IP address and a port"),
        "{stderr}"
    );
}

/// `home.node(args)` run by `sh` under `ulimit ULIMIT` (such as `-n 200`:
/// soft and hard; `-S -n 200`: the soft limit alone).
fn node_under_ulimit(home: &Home, ulimit: &str, args: &[&str]) -> Command {
    let node = home.node(args);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit {ulimit} && exec \"$@\""))
        .arg("sh")
        .arg(node.get_program())
        .args(node.get_args())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

/// The highest block the file streamer wrote to `dir` (0: none yet).
fn written_height(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let name = e.ok()?.file_name().into_string().ok()?;
                    name.strip_prefix("block-")?
                        .strip_suffix("-data")?
                        .parse::<u64>()
                        .ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Opens `n` connections to `address`, each sending half a request
/// header, and keeps them open.
fn half_open(address: &str, n: usize) -> Vec<std::net::TcpStream> {
    use std::io::Write;
    (0..n)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(address)
                .unwrap_or_else(|e| panic!("connection {i} to {address}: {e}"));
            // The server may have closed it already (refused): a failed
            // write is part of what is tested, not an error of the test.
            let _ = s.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.");
            s
        })
        .collect()
}

/// Waits (by `deadline`) until the server closed `stream`: EOF or reset.
/// Returns what it sent before closing.
fn closed_by_server(stream: &mut std::net::TcpStream, deadline: Instant, what: &str) -> Vec<u8> {
    use std::io::Read;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "waited for the node to close {what}");
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("waited for the node to close {what}: {e}"),
        }
    }
}

/// One raw `GET /healthz` with `host`: the status code, or `None` when
/// the node closed the connection without a response (refused).
fn try_healthz_as(address: &str, host: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(address).expect("connect");
    s.set_read_timeout(Some(PATIENCE)).expect("read timeout");
    write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split(' ').nth(1).and_then(|c| c.parse().ok())
}

/// Waits until the file streamer wrote `blocks` more blocks than now,
/// failing if the node exits.
fn wait_for_more_blocks(node: &mut Running, dir: &std::path::Path, blocks: u64, deadline: Instant) {
    let from = written_height(dir);
    while written_height(dir) < from + blocks {
        if let Some(status) = node.child.try_wait().expect("poll the node") {
            panic!(
                "the node exited ({status}) at block {}: {}",
                written_height(dir),
                node.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "waited for the file streamer to write {blocks} more blocks after {from} (at {}): {}",
            written_height(dir),
            node.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const LIMITED_CONFIG: &str = r#"[store]
streamers = ["file"]

[streamers.file]
keys = ["*"]
write_dir = "data/streaming"

[telemetry]
address = "127.0.0.1:0"
max_connections = 100
header_timeout_ms = 1000
"#;

#[test]
fn telemetry_node_half_open_connections_cannot_stop_the_file_streamer() {
    let home = Home::new(LIMITED_CONFIG);
    let dir = home.home.join("data/streaming");
    let deadline = Instant::now() + PATIENCE;
    // Soft and hard limit 200: the node cannot raise it.
    let mut node = Running::start(node_under_ulimit(
        &home,
        "-n 200",
        &["--blocks", "0", "--block-time-ms", "20"],
    ));
    let address = node.telemetry_address();
    wait_for_more_blocks(&mut node, &dir, 1, deadline);
    // More half-open connections than the node has descriptors: those
    // beyond the cap are closed at once, the others after the timeout.
    let mut strangers = half_open(&address, 250);
    wait_for_more_blocks(&mut node, &dir, 20, deadline);
    for (i, stream) in strangers.iter_mut().enumerate() {
        let got = closed_by_server(stream, deadline, &format!("half-open connection {i}"));
        let text = String::from_utf8_lossy(&got);
        assert!(got.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    drop(strangers);
    wait_for_more_blocks(&mut node, &dir, 5, deadline);
    let mut status = None;
    wait_for("GET /healthz after the strangers left", || {
        status = try_healthz_as(&address, &address);
        status.is_some()
    });
    assert_eq!(status, Some(200));
    let (code, _, stderr) = node.interrupt();
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("Too many open files"), "{stderr}");
    assert!(stderr.contains("connection limit reached"), "{stderr}");
}

#[test]
fn telemetry_node_refuses_connections_beyond_the_cap_and_checks_host() {
    let config = LIMITED_CONFIG
        .replace("max_connections = 100", "max_connections = 20")
        // Held connections are not timed out during the test: a closed
        // one was refused.
        .replace("header_timeout_ms = 1000", "header_timeout_ms = 3600000")
        + "allowed_hosts = [\"metrics.internal\"]\n";
    let home = Home::new(&config);
    let dir = home.home.join("data/streaming");
    let deadline = Instant::now() + PATIENCE;
    // The soft limit alone: the node raises it to the hard one.
    let mut node = Running::start(node_under_ulimit(
        &home,
        "-S -n 200",
        &["--blocks", "0", "--block-time-ms", "20"],
    ));
    let address = node.telemetry_address();
    let port = address.rsplit(':').next().expect("a port");
    let mut held = half_open(&address, 20);
    // Connections are accepted in order; one that got through the cap
    // would stay open for the hour of the header timeout.
    let mut extra = half_open(&address, 30);
    for (i, stream) in extra.iter_mut().enumerate() {
        closed_by_server(stream, deadline, &format!("connection {i} beyond the cap"));
    }
    wait_for_more_blocks(&mut node, &dir, 10, deadline);
    // One held connection goes: one new connection gets through.
    drop(held.pop());
    let mut served = None;
    // Refused until the node noticed the closed connection.
    wait_for("a connection to get through after one closed", || {
        served = try_healthz_as(&address, &format!("localhost:{port}"));
        served.is_some()
    });
    assert_eq!(served, Some(200));
    drop(held);
    // Each answered, once the node saw the closed connections go.
    for (host, expected) in [
        (format!("127.0.0.1:{port}"), 200),
        ("metrics.internal".to_owned(), 200),
        (format!("rebinding.example:{port}"), 421),
    ] {
        let mut status = None;
        wait_for(&format!("a response for host {host}"), || {
            status = try_healthz_as(&address, &host);
            status.is_some()
        });
        assert_eq!(status, Some(expected), "{host}");
    }
    let (code, _, stderr) = node.interrupt();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("connection limit reached"), "{stderr}");
    let hard: u64 = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(4)?.parse().ok()
        })
        .unwrap_or(0);
    if hard > 200 {
        assert!(
            stderr.contains(&format!("raised the open file limit from 200 to {hard}")),
            "{stderr}"
        );
    }
}
