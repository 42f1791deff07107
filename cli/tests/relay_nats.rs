//! `statestream relay` on a JetStream upstream (issue 25): a node's `nats`
//! streamer publishes to a real `nats-server -js`, two relays follow the
//! stream; the server is killed and restarted while blocks commit. Real
//! processes on loopback ports.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{BIN, Proc, p, wait_for};

/// Where `nats-server` is: `$NATS_SERVER`, then `PATH`, then the Debian
/// package's location.
fn nats_server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// A `nats-server -js` on a loopback port, its store in `dir`; killed when
/// dropped (also when a test fails).
struct Nats {
    binary: PathBuf,
    conf: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Nats {
    fn start(binary: PathBuf, dir: &Path) -> Nats {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: \"{}\"\n}}\n",
                dir.join("js").display()
            ),
        )
        .unwrap();
        let mut n = Nats {
            binary,
            conf,
            port,
            child: None,
        };
        n.launch();
        n
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    fn launch(&mut self) {
        let child = Command::new(&self.binary)
            .arg("-js")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let port = self.port;
        wait_for("nats-server accepting connections", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGKILL: a crash.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

fn home_with(dir: &Path, name: &str, toml: &str) -> PathBuf {
    let home = dir.join(name);
    std::fs::create_dir_all(home.join("config")).unwrap();
    std::fs::write(home.join("config/app.toml"), toml).unwrap();
    home
}

/// The last height of the block files in `dir` (0: none yet).
fn last_height(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let h = name.strip_prefix("block-")?.split('-').next()?;
            h.parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0)
}

/// `statestream dump DIR --json --from FROM --to TO`: every record.
fn dump(dir: &Path, from: u64, to: u64) -> String {
    let out = Command::new(BIN)
        .args([
            "dump",
            p(dir),
            "--json",
            "--from",
            &from.to_string(),
            "--to",
            &to.to_string(),
        ])
        .output()
        .expect("run statestream dump");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// `statestream tail DIR --json --from FROM`: each block's metadata line
/// (height, time, hashes), as JSON values.
fn metas(dir: &Path, from: u64, to: u64) -> Vec<serde_json::Value> {
    let out = Command::new(BIN)
        .args(["tail", p(dir), "--json", "--from", &from.to_string()])
        .output()
        .expect("run statestream tail");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["height"].as_u64().is_some_and(|h| h <= to))
        .map(|mut v| {
            // Where the file is and how big differ; the block does not.
            if let Some(o) = v.as_object_mut() {
                o.retain(|k, _| {
                    matches!(
                        k.as_str(),
                        "height"
                            | "records"
                            | "time"
                            | "app_hash"
                            | "store_hashes"
                            | "source_app_hash"
                    )
                });
            }
            v
        })
        .collect()
}

#[test]
fn relay_nats_two_relays_ride_through_a_server_restart_equal_to_the_node() {
    let binary = nats_server_binary();
    if !statestream_test_support::require(
        "relay_nats_two_relays_ride_through_a_server_restart_equal_to_the_node",
        "nats-server",
        binary.is_some(),
        "apt-get install -y nats-server",
    ) {
        return;
    }
    let binary = binary.expect("nats-server is there");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("nats")).unwrap();
    let mut nats = Nats::start(binary, &dir.path().join("nats"));
    let node_home = home_with(
        dir.path(),
        "node",
        &format!(
            "[store]\nstreamers = [\"file\", \"nats\"]\n\n[streamers.file]\nkeys = [\"*\"]\n\
             write_dir = \"data/streaming\"\n\n[streamers.nats]\ntype = \"nats\"\nkeys = [\"*\"]\n\
             url = \"{}\"\nstream = \"chain\"\nsubject = \"chain\"\nstop-node-on-error = false\n\
             connect_timeout_ms = 1000\nrequest_timeout_ms = 2000\n",
            nats.url()
        ),
    );
    let relay_toml = format!(
        "[store]\nstreamers = [\"file\"]\n\n[streamers.file]\nkeys = [\"*\"]\n\
         write_dir = \"data/streaming\"\n\n[relay]\nupstreams = [\"{}?stream=chain\"]\n\n\
         [relay.nats]\nconnect_timeout_ms = 1000\nrequest_timeout_ms = 2000\n",
        nats.url()
    );
    let homes = [
        home_with(dir.path(), "relay-a", &relay_toml),
        home_with(dir.path(), "relay-b", &relay_toml),
    ];
    let check = Command::new(BIN)
        .args(["config", "check", "--home", p(&homes[0])])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    let node = Proc::node(&node_home, &[]);
    let node_files = node_home.join("data/streaming");
    let relay_files: Vec<PathBuf> = homes.iter().map(|h| h.join("data/streaming")).collect();
    // One relay from the start, one once the stream has blocks: both begin
    // empty and replay the stream from block 1.
    let relay_a = Proc::start(&["relay", "--home", p(&homes[0])]);
    wait_for("the node's block 15", || last_height(&node_files) >= 15);
    let relay_b = Proc::start(&["relay", "--home", p(&homes[1])]);
    wait_for("relay A's block 10", || last_height(&relay_files[0]) >= 10);

    // The server crashes while blocks commit, and comes back.
    nats.kill();
    let down_at = last_height(&node_files);
    wait_for("the node committing while NATS is down", || {
        last_height(&node_files) >= down_at + 100
    });
    nats.launch();
    let up_at = last_height(&node_files);
    wait_for("both relays past the outage", || {
        relay_files.iter().all(|f| last_height(f) >= up_at + 10)
    });

    let status = node.stop();
    assert!(status.success(), "the node exits cleanly: {status}");
    let last = last_height(&node_files);
    wait_for(
        &format!("both relays at the node's last block {last}"),
        || relay_files.iter().all(|f| last_height(f) >= last),
    );
    let logs: Vec<String> = [relay_a, relay_b]
        .into_iter()
        .map(|r| {
            let log = r.log();
            let status = r.stop();
            assert!(status.success(), "a relay exits cleanly: {status}\n{log}");
            log
        })
        .collect();
    // Block 1 is the relay's starting state (a snapshot at height 1: no
    // block file); every later block equals the node's, records and
    // metadata, with nothing missing and nothing twice.
    let want_records = dump(&node_files, 2, last);
    let want_meta = metas(&node_files, 2, last);
    assert_eq!(want_meta.len() as u64, last - 1);
    for (files, log) in relay_files.iter().zip(&logs) {
        assert_eq!(last_height(files), last, "{log}");
        assert_eq!(metas(files, 2, last), want_meta, "{log}");
        assert!(
            dump(files, 2, last) == want_records,
            "records differ from the node's\n{log}"
        );
        assert!(!log.contains("diverged"), "{log}");
    }
}

#[test]
fn relay_nats_empty_relay_snapshots_from_serve_beside_then_follows_jetstream() {
    let binary = nats_server_binary();
    if !statestream_test_support::require(
        "relay_nats_empty_relay_snapshots_from_serve_beside_then_follows_jetstream",
        "nats-server",
        binary.is_some(),
        "apt-get install -y nats-server",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("nats")).unwrap();
    let nats = Nats::start(binary.expect("nats-server"), &dir.path().join("nats"));
    let node_home = home_with(
        dir.path(),
        "node",
        &format!(
            "[store]\nstreamers = [\"file\", \"nats\", \"serve\"]\n\n[streamers.file]\n\
             keys = [\"*\"]\nwrite_dir = \"data/streaming\"\n\n[streamers.nats]\ntype = \"nats\"\n\
             keys = [\"*\"]\nurl = \"{}\"\nstop-node-on-error = false\n\n[streamers.serve]\n\
             type = \"serve\"\nkeys = [\"*\"]\ngrpc_address = \"127.0.0.1:0\"\nheartbeat_ms = 200\n",
            nats.url()
        ),
    );
    let node = Proc::start(&[
        "node",
        "--home",
        p(&node_home),
        "--blocks",
        "0",
        "--block-time-ms",
        "20",
    ]);
    let serve = node.address("serve: gRPC listening");
    let node_files = node_home.join("data/streaming");
    wait_for("the node's block 20", || last_height(&node_files) >= 20);
    let home = home_with(
        dir.path(),
        "relay",
        &format!(
            "[store]\nstreamers = [\"file\"]\n\n[streamers.file]\nkeys = [\"*\"]\n\
             write_dir = \"data/streaming\"\n\n[relay]\n\
             upstreams = [\"{}?stream=statestream\", \"http://{serve}\"]\n",
            nats.url()
        ),
    );
    let relay = Proc::start(&["relay", "--home", p(&home)]);
    let files = home.join("data/streaming");
    let at = last_height(&node_files);
    wait_for("the relay 20 blocks past its start", || {
        last_height(&files) >= at + 20
    });
    let status = node.stop();
    assert!(status.success(), "{status}");
    let last = last_height(&node_files);
    wait_for("the relay at the node's last block", || {
        last_height(&files) >= last
    });
    let log = relay.log();
    assert!(relay.stop().success(), "{log}");
    // The snapshot came from serve (at the node's head, not block 1), and
    // the blocks after it from JetStream.
    let restored = log
        .lines()
        .find(|l| l.contains("snapshot restored"))
        .unwrap_or_else(|| panic!("no snapshot in the log:\n{log}"));
    assert!(
        restored.contains(&format!("upstream=http://{serve}")),
        "{log}"
    );
    let height: u64 = restored
        .split("height=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("no height in {restored:?}"));
    assert!(height >= 20, "{restored}");
    let after = &log[log.find(restored).unwrap_or(0)..];
    assert!(
        after.contains(&format!(
            "following the upstream upstream={}?stream=statestream from={}",
            nats.url(),
            height + 1
        )),
        "{log}"
    );
    assert!(!log.contains("upstream lost"), "{log}");
    assert_eq!(
        metas(&files, height + 1, last),
        metas(&node_files, height + 1, last)
    );
    assert!(dump(&files, height + 1, last) == dump(&node_files, height + 1, last));
}

#[test]
fn relay_nats_config_check_names_the_bad_key_and_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, upstream, want) in [
        (
            "user = \"alice\"\n",
            "nats://127.0.0.1:4222?stream=chain",
            "[relay.nats] user: user and password go together",
        ),
        (
            "token = \"s3cret-token\"\nuser = \"alice\"\npassword = \"pw-s3cret\"\n",
            "nats://127.0.0.1:4222?stream=chain",
            "[relay.nats] token: give either token or user and password",
        ),
        (
            "",
            "nats://alice:pw-s3cret@127.0.0.1:4222?stream=a.b",
            "stream: ",
        ),
    ] {
        let home = home_with(
            dir.path(),
            "relay",
            &format!("[relay]\nupstreams = [\"{upstream}\"]\n\n[relay.nats]\n{extra}"),
        );
        let out = Command::new(BIN)
            .args(["config", "check", "--home", p(&home)])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}: {stderr}");
        assert!(stderr.contains(want), "{extra}: {stderr}");
        assert!(!stderr.contains("s3cret"), "{extra}: {stderr}");
        // The relay itself refuses it at start, the same way.
        let out = Command::new(BIN)
            .args(["relay", "--home", p(&home)])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(want), "{stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }
}
