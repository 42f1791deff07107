//! The options: the documented example parses, bad values name their key.

use std::path::Path;

use statestream_config::AppConfig;
use statestream_nats::NatsStreamerConfig;

use crate::{STORES, memory_store, registry};

/// The first ```toml block of docs/nats.md.
fn documented_example() -> String {
    let doc = include_str!("../../../docs/nats.md");
    let start = doc.find("```toml\n").expect("a toml block in docs/nats.md") + 8;
    let end = start + doc[start..].find("```").expect("closed toml block");
    doc[start..end].to_string()
}

#[test]
fn config_documented_example_parses() -> anyhow::Result<()> {
    let text = documented_example();
    let config = AppConfig::parse(&text, Path::new("docs/nats.md"))?;
    let specs = config.resolve(&STORES)?;
    assert_eq!(specs[0].type_name, "nats");
    let parsed: NatsStreamerConfig = specs[0].options.parse()?;
    parsed
        .check()
        .map_err(|(k, m)| anyhow::anyhow!("{k}: {m}"))?;
    assert_eq!(parsed.blocks_subject(), "statestream.blocks");
    // The registry builds it without connecting.
    let mut store = memory_store();
    let m = statestream::DeliveryManager::builder()
        .configured(&specs, &registry(), Path::new("."))
        .start(&mut store)?;
    m.close(&mut store)?;
    Ok(())
}

#[test]
fn config_defaults() -> anyhow::Result<()> {
    let text = "[store]\nstreamers = [\"nats\"]\n[streamers.nats]\nkeys = [\"*\"]\n";
    let specs = AppConfig::parse(text, Path::new("app.toml"))?.resolve(&STORES)?;
    let parsed: NatsStreamerConfig = specs[0].options.parse()?;
    assert_eq!(parsed, NatsStreamerConfig::default());
    assert_eq!(parsed.url, "nats://127.0.0.1:4222");
    assert_eq!(parsed.stream, "statestream");
    assert_eq!(parsed.subject, "statestream");
    assert_eq!(parsed.connect_timeout_ms, 5000);
    assert_eq!(parsed.request_timeout_ms, 5000);
    assert!(parsed.create_stream);
    assert_eq!(parsed.duplicate_window_ms, 120_000);
    assert_eq!(parsed.replicas, 1);
    Ok(())
}

fn build_error(table: &str) -> String {
    let text =
        format!("[store]\nstreamers = [\"nats\"]\n\n[streamers.nats]\nkeys = [\"*\"]\n{table}\n");
    let config = AppConfig::parse(&text, Path::new("config/app.toml")).expect("parses");
    let specs = config.resolve(&STORES).expect("resolves");
    let mut store = memory_store();
    match statestream::DeliveryManager::builder()
        .configured(&specs, &registry(), Path::new("."))
        .start(&mut store)
    {
        Ok(_) => panic!("{table:?} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_errors_name_the_key_and_line() {
    let cases = [
        ("subject = \"a.*\"", "subject", "wildcards"),
        ("subject = \"a..b\"", "subject", "empty token"),
        ("stream = \"a.b\"", "stream", "may not contain '.'"),
        ("url = \"ws://h:1\"", "url", "not supported"),
        ("url = \"nats://h:1,tls://h:port\"", "url", "bad port"),
        ("tls_cert_file = \"c.pem\"", "tls_cert_file", "go together"),
        ("tls_key_file = \"k.pem\"", "tls_key_file", "go together"),
        (
            "creds_file = \"a.creds\"\ntoken = \"t\"",
            "creds_file",
            "one authentication method",
        ),
        (
            "nkey_seed_file = \"s.nk\"\nuser = \"u\"\npassword = \"p\"",
            "nkey_seed_file",
            "one authentication method",
        ),
        ("tls_ca_file = \"\"", "tls_ca_file", "empty"),
        ("url = \"nats://h:port\"", "url", "bad port"),
        ("user = \"bob\"", "user", "user and password go together"),
        (
            "token = \"t\"\nuser = \"u\"\npassword = \"p\"",
            "token",
            "not both",
        ),
        ("request-timeout-ms = 0", "request-timeout-ms", "at least 1"),
        ("colour = \"blue\"", "colour", "unknown key"),
        ("create_stream = \"yes\"", "create_stream", "invalid type"),
    ];
    for (table, key, message) in cases {
        let err = build_error(table);
        assert!(err.contains("config/app.toml"), "{table}: {err}");
        assert!(err.contains(key), "{table}: {err}");
        assert!(err.contains(message), "{table}: {err}");
        assert!(err.contains("line"), "{table}: {err}");
    }
}

#[test]
fn config_debug_hides_secrets() {
    let c = NatsStreamerConfig {
        url: "nats://me:hunter2@h:1".into(),
        token: None,
        user: Some("me".into()),
        password: Some("hunter3".into()),
        ..NatsStreamerConfig::default()
    };
    let s = format!("{c:?}");
    assert!(!s.contains("hunter"), "{s}");
}
