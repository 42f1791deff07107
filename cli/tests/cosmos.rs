//! `statestream cosmos-plugin` driven by a go-plugin host written in
//! Python (tests/cosmos/host.py) that does what the Cosmos SDK's host does.
//! Downstream, the file streamer's block files must pass `statestream
//! verify` and hold exactly the net changes the host sent, as must what a
//! `serve` subscriber and a webhook receiver get.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message as _;
use serde_json::Value;
use statestream_test_support::require_python;

#[allow(dead_code)]
#[path = "../../streaming-webhook/tests/it/receiver.rs"]
mod receiver;

use receiver::Receiver;

const BIN: &str = env!("CARGO_BIN_EXE_statestream");
const COOKIE_KEY: &str = "ABCI_LISTENER_PLUGIN";
/// One deadline for a whole host run.
const HOST_DEADLINE: Duration = Duration::from_secs(300);

fn host_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cosmos")
}

fn have_python(test: &str) -> bool {
    require_python(test, &["grpc", "grpc_tools"], "grpcio and grpcio-tools")
}

/// A plugin home (its app.toml written with `statestream init`, plus
/// `extra` appended) and a directory for the host's output.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let s = Setup { dir };
        let out = Command::new(BIN)
            .args(["init", "--home"])
            .arg(s.home())
            .output()
            .unwrap();
        assert!(out.status.success(), "init: {out:?}");
        s.append_config(extra);
        std::fs::create_dir_all(s.out()).unwrap();
        s
    }

    fn append_config(&self, extra: &str) {
        let path = self.home().join("config/app.toml");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(extra);
        std::fs::write(path, text).unwrap();
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn files(&self) -> PathBuf {
        self.home().join("data/streaming")
    }

    /// Runs the host over `heights` with `extra` arguments; returns its
    /// report. The plugin's stderr goes to `plugin.log` beside the home.
    fn host(&self, heights: &str, extra: &[&str], env: &[(&str, &str)]) -> Value {
        let log = self.dir.path().join("plugin.log");
        let plugin = format!(
            "exec '{BIN}' cosmos-plugin --home '{}' 2>>'{}'",
            self.home().display(),
            log.display()
        );
        let mut cmd = Command::new("python3");
        cmd.arg(host_dir().join("host.py"))
            .arg("--proto")
            .arg(host_dir().join("proto"))
            .arg("--out")
            .arg(self.out())
            .args(["--heights", heights])
            .args(extra)
            .env("COSMOS_SDK_ABCI", plugin)
            .env("PLUGIN_UNIX_SOCKET_DIR", self.dir.path())
            .env_remove(COOKIE_KEY)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("python3 runs");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > HOST_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the go-plugin host did not finish within {HOST_DEADLINE:?}; plugin log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "the go-plugin host failed ({status}); plugin log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let report = std::fs::read_to_string(self.out().join("report.json")).unwrap();
        serde_json::from_str(&report).unwrap()
    }

    /// The expected records of every run so far (each run appends).
    fn expected(&self) -> Vec<(u64, String, String, Value)> {
        let text = std::fs::read_to_string(self.out().join("expected.jsonl")).unwrap();
        records(&text)
    }

    fn dump(&self) -> Vec<(u64, String, String, Value)> {
        let out = Command::new(BIN)
            .arg("dump")
            .arg(self.files())
            .arg("--json")
            .output()
            .unwrap();
        assert!(out.status.success(), "dump: {out:?}");
        records(&String::from_utf8(out.stdout).unwrap())
    }

    /// `statestream verify` on the block files: (exit status, output).
    fn verify(&self) -> (bool, String) {
        let out = Command::new(BIN)
            .arg("verify")
            .arg(self.files())
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn meta(&self, height: u64) -> statestream_core::proto::BlockMetadata {
        let bytes = std::fs::read(self.files().join(format!("block-{height}-meta"))).unwrap();
        statestream_core::proto::BlockMetadata::decode(&bytes[8..]).unwrap()
    }
}

fn records(text: &str) -> Vec<(u64, String, String, Value)> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["height"].as_u64().unwrap(),
                v["store"].as_str().unwrap().to_string(),
                v["key"].as_str().unwrap().to_string(),
                v["value"].clone(),
            )
        })
        .collect()
}

fn heights(report: &Value, field: &str) -> Vec<u64> {
    report[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_u64().unwrap())
        .collect()
}

/// The go-plugin contract's stdout: exactly one handshake line per launch.
fn assert_handshakes(report: &Value, network: &str) {
    assert_eq!(
        report["extra_stdout"], "",
        "the plugin wrote more than its handshake"
    );
    for line in report["handshakes"].as_array().unwrap() {
        let line = line.as_str().unwrap();
        let parts: Vec<&str> = line.split('|').collect();
        assert_eq!(parts.len(), 5, "{line}");
        assert_eq!(
            (parts[0], parts[1], parts[2], parts[4]),
            ("1", "1", network, "grpc")
        );
    }
}

/// A `serve` streamer beside the file streamer, on a free port; the
/// command the host runs before Shutdown follows it from `from` to the end
/// of block `to` and writes its JSON lines to `out`.
fn with_serve(s: &Setup, from: u64, to: u64, out: &Path) -> String {
    let port = add_serve(s);
    // Reads until the `end` line of block `to` (a Python loop: the host
    // runs it with sh, and `subscribe` follows forever).
    let script = "import json,subprocess,sys\n\
        p=subprocess.Popen([sys.argv[1],'subscribe',sys.argv[2],'--json','--from',sys.argv[3]],stdout=subprocess.PIPE)\n\
        out=open(sys.argv[5],'w')\n\
        for line in p.stdout:\n    \
            out.write(line.decode())\n    \
            v=json.loads(line)\n    \
            if v.get('type')=='end' and v['height']>=int(sys.argv[4]): break\n\
        p.kill()\n";
    let script_path = s.dir.path().join("follow.py");
    std::fs::write(&script_path, script).unwrap();
    format!(
        "timeout 60 python3 '{}' '{BIN}' 127.0.0.1:{port} {from} {to} '{}'",
        script_path.display(),
        out.display()
    )
}

/// A `webhook` streamer (one request per change, signed) posting to
/// `url`, beside the streamers already configured.
fn with_webhook(s: &Setup, url: &str) {
    let path = s.home().join("config/app.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let (before, after) = text.split_once("streamers = [").unwrap();
    std::fs::write(&path, format!("{before}streamers = [\"hook\", {after}")).unwrap();
    s.append_config(&format!(
        "\n[streamers.hook]\ntype = \"webhook\"\nkeys = [\"*\"]\nurl = \"{url}/{{store}}\"\n\
         secret = \"{WEBHOOK_SECRET}\"\nretry_schedule_ms = [0, 20, 50, 100, 200, 500, 1000]\n"
    ));
}

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The changes a webhook receiver got, one per `webhook-id` (a redelivery
/// after a restart carries the same id and the same body), as (height,
/// store, key hex, value hex or null) in height, store, key order.
fn webhook_changes(rx: &Receiver) -> Vec<(u64, String, String, Value)> {
    let mut by_id: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    for req in rx.requests() {
        req.verify(WEBHOOK_SECRET).expect("the signature verifies");
        if let Some(earlier) = by_id.insert(req.id().to_string(), req.body.clone()) {
            assert_eq!(
                earlier,
                req.body,
                "{}: attempts with different bodies",
                req.id()
            );
        }
    }
    let mut changes: Vec<_> = by_id
        .into_iter()
        .map(|(id, body)| {
            let v: Value = serde_json::from_slice(&body).expect("a JSON envelope");
            assert_eq!(v["id"], id.as_str());
            let value = match v["action"].as_str().unwrap() {
                "delete" => Value::Null,
                // The host's values are text that is not JSON: the
                // envelope carries them as a string.
                _ => Value::from(hex_of_text(v["document"].as_str().unwrap())),
            };
            (
                v["height"].as_u64().unwrap(),
                v["store"].as_str().unwrap().to_string(),
                hex_of_text(v["key"].as_str().unwrap()),
                value,
            )
        })
        .collect();
    // Hex of bytes sorts as the bytes do: the canonical order.
    changes.sort_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
    changes
}

/// A `serve` streamer beside the file streamer, on a free port: its port.
fn add_serve(s: &Setup) -> u16 {
    let port = free_port();
    let path = s.home().join("config/app.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "streamers = [\"file\"]",
        "streamers = [\"file\", \"serve\"]",
    );
    std::fs::write(&path, text).unwrap();
    s.append_config(&format!(
        "\n[streamers.serve]\ntype = \"serve\"\nkeys = [\"*\"]\ngrpc_address = \"127.0.0.1:{port}\"\n"
    ));
    port
}

/// A gRPC subscriber of the plugin's `serve` streamer (tonic, the
/// client crate's stubs), from `from` until the end of block `to`: each
/// block's `source_app_hash` (on its last message). It connects again
/// after a disconnect (the streamers restart when the chain writes a new
/// store), resuming after the last block it finished, until `deadline`.
/// Creates `done` when it has finished, or given up.
fn follow_app_hashes(
    port: u16,
    from: u64,
    to: u64,
    done: PathBuf,
    deadline: Instant,
) -> std::thread::JoinHandle<std::collections::BTreeMap<u64, String>> {
    use statestream_client::proto::v1::state_stream_client::StateStreamClient;
    use statestream_client::proto::v1::{SubscribeRequest, subscribe_request, subscribe_response};
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut hashes = std::collections::BTreeMap::new();
        let mut next = from;
        runtime.block_on(async {
            while next <= to && Instant::now() < deadline {
                let Ok(mut client) =
                    StateStreamClient::connect(format!("http://127.0.0.1:{port}")).await
                else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let request = SubscribeRequest {
                    filter: None,
                    start: Some(subscribe_request::Start::FromHeight(next)),
                };
                let Ok(stream) = client.subscribe(request).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let mut stream = stream.into_inner();
                while next <= to {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let Ok(Ok(Some(m))) = tokio::time::timeout(left, stream.message()).await else {
                        break;
                    };
                    if let Some(subscribe_response::Message::Block(b)) = m.message
                        && b.end
                    {
                        hashes.insert(b.height, statestream_core::to_hex(&b.source_app_hash));
                        next = b.height + 1;
                    }
                }
            }
        });
        std::fs::write(&done, b"").unwrap();
        hashes
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Hex of the text `subscribe` prints for a key or value (UTF-8 as is).
fn hex_of_text(text: &str) -> String {
    match text.strip_prefix("0x") {
        Some(hex) => hex.to_string(),
        None => statestream_core::to_hex(text.as_bytes()),
    }
}

#[test]
fn cosmos_plugin_survives_kills_and_streams_each_block_once() {
    if !have_python("cosmos_plugin_survives_kills_and_streams_each_block_once") {
        return;
    }
    let s = Setup::new("");
    let followed = s.dir.path().join("serve.jsonl");
    let follow = with_serve(&s, 1_200_001, 1_200_040, &followed);
    let rx = Receiver::ok();
    with_webhook(&s, &rx.url());
    let report = s.host(
        "1200001-1200040",
        &["--kills", "7", "--before-shutdown", &follow],
        &[],
    );
    assert_eq!(report["kills"], 7);
    assert_eq!(
        heights(&report, "acked"),
        (1_200_001..=1_200_040).collect::<Vec<_>>()
    );
    assert_handshakes(&report, "unix");
    // Killed 7 times, shut down once: exit 0 after Shutdown.
    let codes = report["exit_codes"].as_array().unwrap();
    assert_eq!(codes.len(), 8);
    assert_eq!(codes.last().unwrap(), 0);

    let (ok, text) = s.verify();
    assert!(ok, "verify: {text}");
    let expected = s.expected();
    assert!(expected.len() > 200);
    assert_eq!(s.dump(), expected);

    // serve, at the chain's heights, from its history: the same changes.
    let text = std::fs::read_to_string(&followed).unwrap();
    let served: Vec<(u64, String, String, Value)> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| {
            ["set", "create", "update", "delete"].contains(&v["type"].as_str().unwrap_or(""))
        })
        .map(|v| {
            (
                v["height"].as_u64().unwrap(),
                v["store"].as_str().unwrap().to_string(),
                hex_of_text(v["key"].as_str().unwrap()),
                v["value"]
                    .as_str()
                    .map_or(Value::Null, |t| Value::from(hex_of_text(t))),
            )
        })
        .collect();
    assert_eq!(served, expected, "serve's changes differ from the host's");

    // The webhook receiver, deduplicating by webhook-id as receivers do:
    // every change once, nothing the host did not send. Shutdown flushed
    // the streamers, so everything acknowledged has been delivered.
    assert_eq!(
        webhook_changes(&rx),
        expected,
        "the webhook receiver's changes differ from the host's"
    );

    // The chain's app hash and time, and the raw FinalizeBlock request
    // with fields the plugin does not decode.
    let first = s.meta(1_200_001);
    let block = &report["blocks"]["1200001"];
    assert_eq!(
        statestream_core::to_hex(&first.source_app_hash),
        block["app_hash"].as_str().unwrap()
    );
    assert_eq!(first.time_seconds, block["time"].as_i64().unwrap());
    assert_eq!(first.height, 1_200_001);
    assert!(
        first.begin_block.windows(20).any(|w| w == [b'p'; 20]),
        "the raw RequestFinalizeBlock lost its proposer_address"
    );
    assert_ne!(
        first.commit.unwrap().app_hash,
        first.source_app_hash,
        "statestream's own app hash is not the chain's"
    );
}

#[test]
fn cosmos_plugin_answers_replays_without_duplicates_over_tcp() {
    if !have_python("cosmos_plugin_answers_replays_without_duplicates_over_tcp") {
        return;
    }
    let s = Setup::new("");
    let report = s.host(
        "1-6,3-6,7-9",
        &[],
        &[("PLUGIN_MIN_PORT", "21000"), ("PLUGIN_MAX_PORT", "21999")],
    );
    assert_handshakes(&report, "tcp");
    assert_eq!(
        heights(&report, "acked"),
        [1, 2, 3, 4, 5, 6, 3, 4, 5, 6, 7, 8, 9]
    );
    let (ok, text) = s.verify();
    assert!(ok, "verify: {text}");
    assert!(text.contains("9 blocks"), "{text}");
    assert_eq!(s.dump(), s.expected());
}

#[test]
fn cosmos_plugin_gap_halts_or_continues_per_config() {
    if !have_python("cosmos_plugin_gap_halts_or_continues_per_config") {
        return;
    }
    let s = Setup::new("\n[cosmos]\non_gap = \"halt\"\n");
    let report = s.host("1-3,6", &["--expect-error", "6"], &[]);
    assert_eq!(heights(&report, "acked"), [1, 2, 3]);
    assert_eq!(report["error"]["height"], 6);
    assert!(
        report["error"]["code"]
            .as_str()
            .unwrap()
            .contains("FAILED_PRECONDITION"),
        "{report}"
    );
    assert!(
        report["error"]["details"]
            .as_str()
            .unwrap()
            .contains("4..=5"),
        "{report}"
    );
    let first_run = s.expected();
    assert_eq!(s.dump(), first_run);
    let log = std::fs::read_to_string(s.dir.path().join("plugin.log")).unwrap();
    assert!(log.contains("height gap"), "{log}");

    // With on_gap = "continue" the same block is taken; the gap stays a
    // gap in the files (verify names it), nothing is invented.
    let text = std::fs::read_to_string(s.home().join("config/app.toml")).unwrap();
    std::fs::write(
        s.home().join("config/app.toml"),
        text.replace("on_gap = \"halt\"", "on_gap = \"continue\""),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    s.append_config(&format!("\n[telemetry]\naddress = \"127.0.0.1:{port}\"\n"));
    let scrape = format!(
        "curl -sf http://127.0.0.1:{port}/metrics && curl -sf http://127.0.0.1:{port}/status"
    );
    let report = s.host("6-8", &["--before-shutdown", &scrape], &[]);
    assert_eq!(heights(&report, "acked"), [6, 7, 8]);
    // The gap is counted (this run saw it once), recorded, and the
    // streamers restarted past it are the ones /metrics shows.
    let scraped = report["before_shutdown"].as_str().unwrap();
    let log = std::fs::read_to_string(s.dir.path().join("plugin.log")).unwrap();
    let (metrics, status) = scraped
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("no metrics and status: {scraped:?}; plugin log:\n{log}"));
    assert!(
        metrics.contains("statestream_ingest_gaps_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("statestream_ingest_gaps_recorded 1"),
        "{metrics}"
    );
    assert!(metrics.contains("statestream_ingest_height 8"), "{metrics}");
    assert!(
        metrics.contains("statestream_committed_height 8"),
        "{metrics}"
    );
    let status: Value = serde_json::from_str(status).unwrap();
    let gap = serde_json::json!({"first_missing": 4, "last_missing": 5});
    assert_eq!(status["ingest"]["height"], 8, "{status}");
    assert_eq!(
        status["ingest"]["gaps"],
        serde_json::json!([gap]),
        "{status}"
    );
    assert_eq!(status["ingest"]["gaps_total"], 1, "{status}");
    assert_eq!(status["ingest"]["last_gap"], gap, "{status}");
    assert_eq!(status["ingest"]["replays_total"], 0, "{status}");
    let mut all = first_run;
    all.extend(s.expected());
    assert_eq!(s.dump(), all);
    let (ok, text) = s.verify();
    assert!(!ok && text.contains("block 4 is missing"), "{text}");
}

#[test]
fn cosmos_plugin_refuses_to_run_without_the_cookie() {
    let dir = tempfile::tempdir().unwrap();
    for cookie in [None, Some("wrong"), Some("")] {
        let mut cmd = Command::new(BIN);
        cmd.args(["cosmos-plugin", "--home"])
            .arg(dir.path().join("home"));
        match cookie {
            Some(v) => cmd.env(COOKIE_KEY, v),
            None => cmd.env_remove(COOKIE_KEY),
        };
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{cookie:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{cookie:?}: stdout {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("plugin") && err.contains("Cosmos"), "{err}");
        // Nothing was created: the plugin did not start.
        assert!(!dir.path().join("home").exists());
    }
}

#[test]
fn cosmos_plugin_serve_blocks_carry_the_chains_app_hash() {
    if !have_python("cosmos_plugin_serve_blocks_carry_the_chains_app_hash") {
        return;
    }
    let s = Setup::new("");
    let port = add_serve(&s);
    let done = s.dir.path().join("subscriber-done");
    // The host waits for the subscriber before Shutdown, so that the
    // plugin serves until the subscriber has every block.
    let wait = format!(
        "timeout 120 sh -c 'while [ ! -e \"{}\" ]; do sleep 0.05; done'",
        done.display()
    );
    let subscriber = follow_app_hashes(
        port,
        300_001,
        300_012,
        done,
        Instant::now() + Duration::from_secs(120),
    );
    let report = s.host("300001-300012", &["--before-shutdown", &wait], &[]);
    let seen = subscriber.join().unwrap();
    assert_eq!(
        heights(&report, "acked"),
        (300_001..=300_012).collect::<Vec<_>>()
    );
    let sent: std::collections::BTreeMap<u64, String> = (300_001..=300_012)
        .map(|h| {
            let hash = report["blocks"][h.to_string()]["app_hash"]
                .as_str()
                .unwrap();
            (h, hash.to_string())
        })
        .collect();
    assert_eq!(
        seen, sent,
        "serve's source_app_hash differs from the host's app hashes"
    );
}

/// The Ctrl-C of the node's terminal reaches the plugin too: it must stay
/// for the node's last blocks (the node stops it with `Shutdown`). SIGHUP
/// reloads certificates. SIGTERM closes the pipeline and exits 0.
#[test]
fn cosmos_plugin_ignores_sigint_reloads_on_sighup_and_stops_on_sigterm() {
    use std::io::BufRead as _;
    let s = Setup::new("");
    let mut child = Command::new(BIN)
        .args(["cosmos-plugin", "--home"])
        .arg(s.home())
        .env(COOKIE_KEY, "ef78114d-7bdf-411c-868f-347c99a78345")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    // The handshake line comes once the plugin listens (it is bounded by
    // the plugin's start; a plugin that died gives EOF, not a hang).
    stdout.read_line(&mut line).unwrap();
    assert!(line.starts_with("1|1|unix|"), "handshake: {line:?}");
    for signal in [libc::SIGINT, libc::SIGHUP, libc::SIGINT] {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }
    // Still serving: wait a moment for a wrong exit to show.
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the plugin exited on SIGINT or SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the plugin did not stop within 60 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "SIGTERM: {status:?}\n{err}");
    assert!(err.contains("SIGINT ignored"), "{err}");
    assert!(err.contains("SIGHUP: TLS certificates re-read"), "{err}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(rest.is_empty(), "stdout after the handshake: {rest:?}");
}
