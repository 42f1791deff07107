use std::ffi::OsString;
use std::path::Path;

use statestream_core::StreamerContext;
use statestream_core::plugin::MAX_FRAME_LEN;

use super::config::plugin_env;
use super::*;
use statestream_config::AppConfig;
use statestream_core::StoreKey;

fn build(table: &str) -> Result<ProcessStreamer, String> {
    let text = format!(
        "[store]\nstreamers = [\"p\"]\n[streamers.p]\ntype = \"process\"\nkeys = [\"bank\"]\n{table}"
    );
    let config = AppConfig::parse(&text, Path::new("app.toml")).map_err(|e| e.to_string())?;
    let specs = config.resolve(&["bank"]).map_err(|e| e.to_string())?;
    let stores = [StoreKey::new("bank").unwrap()];
    let home = std::env::temp_dir();
    let ctx = StreamerContext {
        name: "p",
        stores: &stores,
        all_stores: &stores,
        home: &home,
        reader: None,
        shutdown: &statestream_core::Shutdown::default(),
        push: None,
    };
    let options = &specs[0].options;
    let config: ProcessStreamerConfig = options.parse().map_err(|e| e.to_string())?;
    config.build(&ctx, options).map_err(|e| e.to_string())
}

#[test]
fn process_documented_config_parses() {
    let s = build(
        "command = [\"sh\", \"-c\", \"exit 0\"]\ntimeout_ms = 10000\n\
         handshake_timeout_ms = 10000\nclose-timeout-ms = 5000\nrestart_backoff_ms = 100\n\
         restart_backoff_max_ms = 10000\nmax_frame_bytes = 67108864\n\
         env = { INDEX_LEVEL = \"full\" }\n",
    )
    .unwrap();
    assert_eq!(s.max_frame, 64 << 20);
    assert_eq!(s.args, ["-c", "exit 0"]);
    assert_eq!(s.env["INDEX_LEVEL"], "full");
    assert_eq!(s.close_timeout, Duration::from_millis(5000));
    assert_eq!(s.stores, ["bank"]);
}

#[test]
fn process_defaults() {
    let s = build("command = [\"sh\"]\n").unwrap();
    assert_eq!(s.timeout, Duration::from_secs(10));
    assert_eq!(s.handshake_timeout, Duration::from_secs(10));
    assert_eq!(s.close_timeout, Duration::from_secs(5));
    assert_eq!(s.backoff_min, Duration::from_millis(100));
    assert_eq!(s.backoff_max, Duration::from_secs(10));
    assert_eq!(s.max_frame, MAX_FRAME_LEN);
    assert!(s.env.is_empty());
    assert_eq!(s.cwd, std::env::current_dir().unwrap());
}

#[test]
fn process_config_errors_name_the_key() {
    let e = build("command = []\n").unwrap_err();
    assert!(e.contains("command") && e.contains("non-empty"), "{e}");
    let e = build("").unwrap_err();
    assert!(e.contains("command"), "{e}");
    let e = build("command = [\"sh\", 3]\n").unwrap_err();
    assert!(e.contains("command"), "{e}");
    let e = build("command = \"sh\"\n").unwrap_err();
    assert!(e.contains("command"), "{e}");
    let e = build("command = [\"sh\"]\ntimeout-ms = 0\n").unwrap_err();
    assert!(e.contains("timeout-ms"), "{e}");
    let e = build("command = [\"sh\"]\nshell = true\n").unwrap_err();
    assert!(e.contains("shell") && e.contains("unknown key"), "{e}");
    let e = build("command = [\"no-such-program-xyz\"]\n").unwrap_err();
    assert!(
        e.contains("no-such-program-xyz") && e.contains("not found"),
        "{e}"
    );
    let e = build("command = [\"./missing/plugin.py\"]\n").unwrap_err();
    assert!(
        e.contains("./missing/plugin.py") && e.contains("not found"),
        "{e}"
    );
    let e = build("command = [\"sh\"]\nworking_dir = \"no/such/dir\"\n").unwrap_err();
    assert!(
        e.contains("working_dir") && e.contains("not a directory"),
        "{e}"
    );
    for bad in [0u64, 1023, 1 << 31] {
        let e = build(&format!("command = [\"sh\"]\nmax-frame-bytes = {bad}\n")).unwrap_err();
        assert!(
            e.contains("max-frame-bytes") && e.contains("from 1024 to 2147483647"),
            "{e}"
        );
    }
    for bad in ["\"A=B\" = \"1\"", "\"\" = \"1\"", "A = \"x\\u0000y\""] {
        let e = build(&format!("command = [\"sh\"]\nenv = {{ {bad} }}\n")).unwrap_err();
        assert!(e.contains("env"), "{bad}: {e}");
    }
}

#[test]
fn process_env_keeps_only_the_allow_list_and_adds_env() {
    let node = [
        ("PATH", "/usr/bin"),
        ("HOME", "/home/n"),
        ("LC_ALL", "C.UTF-8"),
        ("TZ", "UTC"),
        ("PGPASSWORD", "secret"),
        ("AWS_SECRET_ACCESS_KEY", "k"),
        ("LD_PRELOAD", "/tmp/x.so"),
    ]
    .map(|(k, v)| (OsString::from(k), OsString::from(v)));
    let extra = BTreeMap::from([
        ("INDEX_LEVEL".to_string(), "full".to_string()),
        ("TZ".to_string(), "Europe/Paris".to_string()),
    ]);
    let env = plugin_env(node.into_iter(), &extra);
    let env: Vec<(String, String)> = env
        .into_iter()
        .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
        .collect();
    let expected = [
        ("HOME", "/home/n"),
        ("INDEX_LEVEL", "full"),
        ("LC_ALL", "C.UTF-8"),
        ("PATH", "/usr/bin"),
        ("TZ", "Europe/Paris"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    assert_eq!(env, expected);
}
