//! The Python example client (`examples/python/subscribe.py`, grpcio)
//! against a real server.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::util::*;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/python/subscribe.py")
}

fn lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn python_client_snapshot_then_blocks_match_the_store() {
    if !statestream_test_support::require_python(
        "python_client_snapshot_then_blocks_match_the_store",
        &["grpc", "grpc_tools"],
        "grpcio, grpcio-tools",
    ) {
        return;
    }
    let mut node = Node::in_memory("");
    for _ in 0..10 {
        node.commit();
    }
    let address = node.handle.grpc_address().expect("gRPC is on").to_string();
    let dir = tempfile::tempdir().unwrap();
    let cursor = dir.path().join("cursor");
    let mut child = Command::new("python3")
        .arg(script())
        .arg(&address)
        .args(["--snapshot", "--until", "25", "--cursor-file"])
        .arg(&cursor)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Blocks commit while the client starts and reads, up to 25 (its
    // output is small: the pipes never fill).
    while child.try_wait().unwrap().is_none() {
        if node.height() < 25 {
            node.commit();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut state = State::new();
    let mut ends = Vec::new();
    for v in lines(&out.stdout) {
        let key = |v: &serde_json::Value| {
            (
                v["store"].as_str().unwrap().to_string(),
                v["key"].as_str().unwrap().to_string(),
            )
        };
        match v["type"].as_str().unwrap() {
            "snapshot" | "create" | "update" => {
                state.insert(
                    (key(&v).0, key(&v).1.into_bytes()),
                    v["value"].as_str().unwrap().as_bytes().to_vec(),
                );
            }
            "delete" => {
                state.remove(&(key(&v).0, key(&v).1.into_bytes()));
            }
            "end" => ends.push(v["height"].as_u64().unwrap()),
            _ => {}
        }
    }
    // Whole blocks after the snapshot, contiguous, up to 25.
    if let Some(&first) = ends.first() {
        assert_eq!(ends, (first..=25).collect::<Vec<_>>());
    }
    // The node is at 25: the state the client rebuilt is the store's.
    assert_eq!(node.height(), 25);
    let expected: State = node
        .state()
        .into_iter()
        .map(|((s, k), v)| ((s, hex(&k).into_bytes()), hex(&v).into_bytes()))
        .collect();
    assert_eq!(state, expected);
    assert_eq!(std::fs::read_to_string(&cursor).unwrap().trim(), "25");
    node.close();
}

#[test]
fn python_datastream_client_lists_capabilities_and_subscribes() {
    if !statestream_test_support::require_python(
        "python_datastream_client_lists_capabilities_and_subscribes",
        &["grpc", "grpc_tools"],
        "grpcio, grpcio-tools",
    ) {
        return;
    }
    let mut node = Node::in_memory("value_types = { b = \"text\" }");
    for _ in 0..5 {
        node.commit();
    }
    let address = node.handle.grpc_address().expect("gRPC is on").to_string();
    let mut child = Command::new("python3")
        .arg(script())
        .arg(&address)
        .args(["--datastream", "--keys", "b", "--until-updates", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Commit until the client has seen its updates and exits (its output
    // is a few lines: the pipe never fills).
    while child.try_wait().unwrap().is_none() {
        node.commit();
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let v = lines(&output.stdout);
    let caps: Vec<_> = v
        .iter()
        .filter(|l| l.get("capability").is_some())
        .map(|l| {
            (
                l["capability"].as_str().unwrap(),
                l["value_type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(caps, vec![("a", "bytes"), ("b", "text"), ("c", "bytes")]);
    let data: Vec<_> = v.iter().filter(|l| l.get("key").is_some()).collect();
    assert!(
        data.iter()
            .all(|d| d["key"].as_str().unwrap().starts_with("b/"))
    );
    assert!(data.iter().any(|d| d["response"] == 2));
    node.close();
}

#[test]
fn python_client_with_a_credential_sees_only_its_scopes() {
    if !statestream_test_support::require_python(
        "python_client_with_a_credential_sees_only_its_scopes",
        &["grpc", "grpc_tools"],
        "grpcio, grpcio-tools",
    ) {
        return;
    }
    let mut node = Node::in_memory("");
    for _ in 0..10 {
        node.commit();
    }
    let registry = node.manager.as_ref().unwrap().credentials().unwrap();
    let (_, secret) = registry
        .create(statestream_access::NewCredential {
            id: "reader-b".into(),
            scopes: vec![statestream_access::Scope {
                store: "b".into(),
                prefixes: Vec::new(),
            }],
            push: false,
            subscribe_webhooks: false,
            max_streams: None,
            expires_at: None,
            description: String::new(),
        })
        .unwrap();
    let address = node.handle.grpc_address().expect("gRPC is on").to_string();
    let run = |args: &[&str]| {
        Command::new("python3")
            .arg(script())
            .arg(&address)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--snapshot", "--until", "10", "--token", secret.expose()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stores: std::collections::BTreeSet<String> = lines(&out.stdout)
        .iter()
        .filter(|v| v["type"] == "snapshot")
        .map(|v| v["store"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stores, ["b".to_string()].into(), "only the scopes");

    let outside = run(&[
        "--datastream",
        "--keys",
        "a",
        "--until-updates",
        "0",
        "--token",
        secret.expose(),
    ]);
    assert!(!outside.status.success());
    let stderr = String::from_utf8_lossy(&outside.stderr);
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");

    let unknown = run(&["--snapshot", "--until", "10", "--token", "ss_reader-b_00"]);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    node.close();
}
