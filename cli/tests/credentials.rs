//! Credentials end to end on the demo node: `statestream credentials`
//! through the admin API, curl against `/snapshot` with three scopes
//! (200, 403, 401), the store refusing an offline opener while the node
//! runs, a restart keeping the credentials, an offline revoke, and no
//! secret in clear anywhere under the home directory.

use std::path::Path;
use std::process::Command;

mod common;

use common::{BIN, Proc, p};

const APP_TOML: &str = r#"
[store]
streamers = ["serve"]

[streamers.serve]
type = "serve"
keys = ["*"]
http_address = "127.0.0.1:0"
grpc_address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"
token_file = "admin-token"
"#;

const ADMIN_TOKEN: &str = "the-admin-token";

/// A running node, killed if the test fails before stopping it.
struct Node {
    proc: Proc,
    http: String,
    admin: String,
}

impl Node {
    fn start(home: &Path) -> Node {
        let config = home.join("app.toml");
        let proc = Proc::node(home, &["--config", p(&config)]);
        Node {
            http: proc.address("serve: HTTP (SSE) listening"),
            admin: format!("http://{}", proc.address("admin API listening")),
            proc,
        }
    }

    fn stop(self) {
        let status = self.proc.stop();
        assert!(status.success(), "{status:?}");
    }
}

/// `statestream credentials ARGS --json`: the answer, or the failure's
/// stderr.
fn credentials(args: &[&str]) -> Result<serde_json::Value, String> {
    let out = Command::new(BIN)
        .arg("credentials")
        .args(args)
        .arg("--json")
        .env("STATESTREAM_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run statestream credentials");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))
}

/// `curl` of `url` with an optional bearer token: (status, body).
fn curl(url: &str, token: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "20", "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    let out = cmd.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}

#[test]
fn credentials_scopes_restart_and_no_secret_on_disk() {
    let have_curl = Command::new("curl").arg("--version").output().is_ok();
    if !statestream_test_support::require(
        "credentials_scopes_restart_and_no_secret_on_disk",
        "curl",
        have_curl,
        "apt-get install curl",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    std::fs::write(home.join("app.toml"), APP_TOML).expect("app.toml");
    std::fs::write(home.join("admin-token"), format!("{ADMIN_TOKEN}\n")).expect("token");
    let token_file = home.join("admin-token");
    let token_file = token_file.to_str().expect("a UTF-8 path");

    let node = Node::start(&home);
    let admin = node.admin.clone();
    let created = credentials(&[
        "create",
        "wallet",
        "--scope",
        "bank=balance/",
        "--max-streams",
        "5",
        "--admin",
        &admin,
        "--admin-token-file",
        token_file,
    ])
    .expect("create wallet");
    let wallet = created["secret"].as_str().expect("a secret").to_string();
    let indexer = credentials(&["create", "indexer", "--scope", "*", "--admin", &admin])
        .expect("create indexer")["secret"]
        .as_str()
        .expect("a secret")
        .to_string();
    let params = credentials(&["create", "params", "--scope", "params", "--admin", &admin])
        .expect("create params")["secret"]
        .as_str()
        .expect("a secret")
        .to_string();

    let snapshot = format!("http://{}/snapshot", node.http);
    let (status, body) = curl(&snapshot, Some(&wallet));
    assert_eq!(status, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let stores: Vec<&String> = state["data"].as_object().expect("data").keys().collect();
    assert_eq!(stores, ["bank"], "wallet sees only bank: {body}");
    let keys = state["data"]["bank"].as_object().expect("bank");
    assert!(
        !keys.is_empty() && keys.keys().all(|k| k.starts_with("balance/")),
        "{body}"
    );

    let (status, body) = curl(&format!("{snapshot}?stores=acc"), Some(&wallet));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("acc"), "names what is outside: {body}");
    let (status, body) = curl(&format!("{snapshot}?stores=params"), Some(&params));
    assert_eq!(status, 200, "{body}");
    let (status, body) = curl(&format!("{snapshot}?stores=bank"), Some(&params));
    assert_eq!(status, 403, "{body}");
    let (status, body) = curl(&snapshot, Some(&indexer));
    assert_eq!(status, 200, "{body}");
    let all: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(all["data"].as_object().expect("data").len() >= 3, "{body}");
    assert_eq!(curl(&snapshot, None).0, 401, "no credential");
    assert_eq!(
        curl(&snapshot, Some("ss_wallet_00")).0,
        401,
        "a wrong secret"
    );

    let home_arg = home.to_str().expect("a UTF-8 path");
    let refused = credentials(&["list", "--home", home_arg]).expect_err("the store is locked");
    assert!(refused.contains("the node is running"), "{refused}");

    node.stop();
    let listed = credentials(&["list", "--home", home_arg]).expect("offline list");
    let ids: Vec<&str> = listed["credentials"]
        .as_array()
        .expect("credentials")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(ids, ["indexer", "params", "wallet"]);
    credentials(&["revoke", "indexer", "--home", home_arg]).expect("offline revoke");
    for secret in [&wallet, &indexer, &params] {
        let found = files_containing(&home, secret.as_bytes());
        assert!(found.is_empty(), "a secret in clear in {found:?}");
    }

    let node = Node::start(&home);
    let snapshot = format!("http://{}/snapshot", node.http);
    assert_eq!(
        curl(&snapshot, Some(&wallet)).0,
        200,
        "kept over the restart"
    );
    let (status, body) = curl(&snapshot, Some(&indexer));
    assert_eq!(status, 401, "revoked offline: {body}");
    assert!(body.contains("revoked"), "{body}");
    node.stop();
}
