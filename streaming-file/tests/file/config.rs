//! `[streamers.<name>]` options of `type = "file"`.

use std::path::{Path, PathBuf};

use statestream_config::AppConfig;
use statestream_file::FileStreamerConfig;

use crate::util::store_keys;

fn parse_options(table: &str) -> Result<FileStreamerConfig, statestream_config::ConfigError> {
    let text =
        format!("[store]\nstreamers = [\"file\"]\n\n[streamers.file]\nkeys = [\"*\"]\n{table}");
    let config = AppConfig::parse(&text, Path::new("config/app.toml"))?;
    let stores = store_keys();
    let names: Vec<&str> = stores.iter().map(|s| s.name()).collect();
    config.resolve(&names)?[0].options.parse()
}

#[test]
fn config_documented_example_parses() {
    // The example in FileStreamerConfig's documentation.
    let c = parse_options(
        "write_dir = \"data/streaming\"\nprefix = \"\"\noutput-metadata = true\nfsync = false\n",
    )
    .unwrap();
    assert_eq!(c, FileStreamerConfig::default());
}

#[test]
fn config_defaults() {
    let c = parse_options("").unwrap();
    assert_eq!(c.write_dir, PathBuf::from("data/streaming"));
    assert_eq!(c.prefix, "");
    assert!(c.output_metadata);
    assert!(!c.fsync);
    let c = parse_options(
        "write-dir = \"/abs\"\nprefix = \"node\"\noutput_metadata = false\nfsync = true\n",
    )
    .unwrap();
    assert_eq!(
        c,
        FileStreamerConfig {
            write_dir: PathBuf::from("/abs"),
            prefix: "node".into(),
            output_metadata: false,
            fsync: true
        }
    );
}

#[test]
fn config_unknown_key_rejected() {
    let err = parse_options("fsync = false\nwrite_dirr = \"x\"\n").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("write_dirr") && msg.contains("config/app.toml"),
        "{msg}"
    );
    assert_eq!(err.line(), Some(7));
}

#[test]
fn config_unsafe_prefix_names_file_key_and_line() {
    let home = tempfile::tempdir().unwrap();
    let text =
        "[store]\nstreamers = [\"file\"]\n\n[streamers.file]\nkeys = [\"*\"]\nprefix = \"../up\"\n";
    let config = AppConfig::parse(text, Path::new("config/app.toml")).unwrap();
    let stores = store_keys();
    let names: Vec<&str> = stores.iter().map(|s| s.name()).collect();
    let spec = &config.resolve(&names).unwrap()[0];
    let ctx = statestream_core::StreamerContext {
        name: &spec.name,
        stores: &stores,
        all_stores: &stores,
        home: home.path(),
        reader: None,
        shutdown: &statestream_core::Shutdown::default(),
        push: None,
    };
    let config: statestream_file::FileStreamerConfig = spec.options.parse().unwrap();
    let Err(err) = config.build(&ctx, &spec.options) else {
        panic!("an unsafe prefix must be rejected");
    };
    let msg = err.to_string();
    assert!(
        msg.contains("config/app.toml")
            && msg.contains("prefix")
            && msg.contains("[streamers.file]")
            && msg.contains("6"),
        "{msg}"
    );
    // Nothing was created under the home.
    assert!(!home.path().join("data").exists());
}
