//! Tests of `statestream-config` through its public API.

use std::io::Write as _;
use std::path::Path;

use proptest::prelude::*;
use serde::Deserialize;
use statestream_config::{
    AppConfig, ConfigError, DEFAULT_QUEUE, Delivery, StreamerOptions, StreamerSpec,
};

const PATH: &str = "/home/n/config/app.toml";

const DOCUMENTED_EXAMPLE: &str = r#"[store]
streamers = ["file"]          # which [streamers.<name>] tables are enabled

[streamers.file]
keys = ["*"]                  # store names to expose; "*" = all; [] = off
write_dir = "data/streaming"  # relative paths are under the node's home
prefix = ""                   # optional file-name prefix
output-metadata = true
stop-node-on-error = true
fsync = false
type = "file"                 # defaults to the table name: lets two file streamers run side by side
delivery = "async"            # or "sync"
queue = 64                    # async: blocks buffered in memory
"#;

const STORES: &[&str] = &["bank", "acc", "staking"];

/// The file streamer's options as the file streamer would declare them.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct FileOptions {
    write_dir: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    output_metadata: bool,
    #[serde(default)]
    fsync: bool,
}

fn parse(text: &str) -> Result<AppConfig, ConfigError> {
    AppConfig::parse(text, Path::new(PATH))
}

fn resolve(text: &str) -> Vec<StreamerSpec> {
    parse(text)
        .expect("config parses")
        .resolve(STORES)
        .expect("config resolves")
}

fn one_streamer(table_body: &str) -> String {
    format!("[store]\nstreamers = [\"file\"]\n\n[streamers.file]\n{table_body}")
}

#[test]
fn config_documented_example_parses() {
    let config = parse(DOCUMENTED_EXAMPLE).expect("documented example parses");
    assert_eq!(config.origin(), Path::new(PATH));
    assert_eq!(config.streamer_names(), ["file"]);
    let specs = config.resolve(STORES).expect("resolves");
    assert_eq!(specs.len(), 1);
    let spec = &specs[0];
    assert_eq!(spec.name, "file");
    assert_eq!(spec.type_name, "file");
    assert_eq!(spec.stores, ["acc", "bank", "staking"]);
    assert_eq!(spec.delivery, Delivery::Async);
    assert_eq!(spec.queue, 64);
    assert!(spec.stop_node_on_error);
    assert_eq!(spec.options.table_name(), "file");
    assert_eq!(spec.options.origin(), Path::new(PATH));
    let options: FileOptions = spec.options.parse().expect("file options parse");
    assert_eq!(
        options,
        FileOptions {
            write_dir: "data/streaming".to_owned(),
            prefix: String::new(),
            output_metadata: true,
            fsync: false,
        }
    );
}

#[test]
fn config_defaults() {
    let specs = resolve(&one_streamer("keys = [\"bank\"]\nwrite_dir = \"d\"\n"));
    let spec = &specs[0];
    assert_eq!(spec.type_name, "file");
    assert_eq!(spec.delivery, Delivery::Async);
    assert_eq!(Delivery::default(), Delivery::Async);
    assert_eq!(spec.queue, DEFAULT_QUEUE);
    assert!(spec.stop_node_on_error);
    assert_eq!(
        spec.options.get("write_dir"),
        Some(&toml::Value::String("d".to_owned()))
    );
    assert!(
        spec.options.get("keys").is_none(),
        "common keys are not options"
    );
}

#[test]
fn config_sync_delivery_and_queue() {
    let specs = resolve(&one_streamer(
        "keys = [\"*\"]\ndelivery = \"sync\"\nqueue = 1000000\nstop_node_on_error = false\n",
    ));
    assert_eq!(specs[0].delivery, Delivery::Sync);
    assert_eq!(specs[0].queue, 1_000_000);
    assert!(!specs[0].stop_node_on_error);
    assert!(specs[0].options.is_empty());
}

#[test]
fn config_cosmos_spellings_unchanged() {
    // As the Cosmos SDK writes it (values unquoted).
    let text = one_streamer(
        "keys = [\"bank\"]\nwrite_dir = \"w\"\nprefix = \"p\"\noutput-metadata = true\n\
         stop-node-on-error = false\nfsync = true\n",
    );
    let specs = resolve(&text);
    assert!(!specs[0].stop_node_on_error);
    let options: FileOptions = specs[0].options.parse().expect("options parse");
    assert_eq!(
        options,
        FileOptions {
            write_dir: "w".to_owned(),
            prefix: "p".to_owned(),
            output_metadata: true,
            fsync: true,
        }
    );
}

#[test]
fn config_alternative_spellings() {
    let text = one_streamer(
        "keys = [\"bank\"]\nwrite-dir = \"w\"\noutput_metadata = true\nstop_node_on_error = false\n",
    );
    let specs = resolve(&text);
    assert!(!specs[0].stop_node_on_error);
    let options: FileOptions = specs[0].options.parse().expect("options parse");
    assert_eq!(options.write_dir, "w");
    assert!(options.output_metadata);
    // `get` accepts either spelling.
    assert_eq!(
        specs[0].options.get("write-dir"),
        specs[0].options.get("write_dir")
    );
    assert!(specs[0].options.get("output-metadata").is_some());
}

#[test]
fn config_both_spellings_is_an_error() {
    for (first, second) in [
        ("stop-node-on-error", "stop_node_on_error"),
        ("write_dir", "write-dir"),
        ("output_metadata", "output-metadata"),
    ] {
        let text = one_streamer(&format!(
            "keys = [\"*\"]\n{first} = true\n{second} = \"also a bad value\"\n"
        ));
        let error = parse(&text).expect_err("two spellings of one key");
        let message = error.to_string();
        assert!(message.contains(&format!("`{first}`")), "{message}");
        assert!(message.contains(&format!("`{second}`")), "{message}");
        assert!(message.contains("(line 7)"), "{message}");
        assert!(message.contains("[streamers.file]"), "{message}");
        assert!(message.starts_with(PATH), "{message}");
    }
}

#[test]
fn config_keys_all_subset_and_off() {
    let all = resolve(&one_streamer("keys = [\"*\"]\n"));
    assert_eq!(all[0].stores, ["acc", "bank", "staking"]);

    let subset = resolve(&one_streamer("keys = [\"staking\", \"bank\"]\n"));
    assert_eq!(subset[0].stores, ["bank", "staking"]);

    let config = parse(&one_streamer("keys = []\n")).expect("keys = [] parses");
    assert_eq!(config.streamer_names(), ["file"]);
    assert!(config.resolve(STORES).expect("resolves").is_empty());
}

#[test]
fn config_off_streamer_does_not_hide_others() {
    let text = "[store]\nstreamers = [\"a\", \"b\", \"c\"]\n\
                [streamers.a]\nkeys = [\"bank\"]\n\
                [streamers.b]\nkeys = []\n\
                [streamers.c]\nkeys = [\"acc\"]\n";
    let names: Vec<String> = resolve(text).into_iter().map(|spec| spec.name).collect();
    assert_eq!(names, ["a", "c"]);
}

#[test]
fn config_unknown_store_at_resolve() {
    let text = one_streamer("\nkeys = [\"bank\", \"nope\"]\n");
    let config = parse(&text).expect("syntactically valid");
    let error = config.resolve(STORES).expect_err("unknown store");
    assert!(
        matches!(error, ConfigError::Key { line: Some(6), .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.starts_with(PATH), "{message}");
    assert!(
        message.contains("[streamers.file] key `keys` (line 6)"),
        "{message}"
    );
    assert!(message.contains("`nope`"), "{message}");
    assert!(message.contains("acc, bank, staking"), "{message}");
}

#[test]
fn config_star_with_no_stores_is_an_error() {
    let config = parse(&one_streamer("keys = [\"*\"]\n")).expect("parses");
    let error = config.resolve(&[]).expect_err("no stores");
    assert_eq!(error.key(), Some("keys"));
}

#[test]
fn config_two_instances_of_one_type() {
    let text = r#"
[store]
streamers = ["b", "a"]

[streamers.a]
type = "file"
keys = ["bank"]
write_dir = "data/a"

[streamers.b]
type = "file"
keys = ["*"]
write_dir = "data/b"
delivery = "sync"
"#;
    let config = parse(text).expect("parses");
    assert_eq!(config.streamer_names(), ["b", "a"]);
    let specs = config.resolve(STORES).expect("resolves");
    assert_eq!(specs.len(), 2);
    assert_eq!(
        (specs[0].name.as_str(), specs[0].type_name.as_str()),
        ("b", "file")
    );
    assert_eq!(
        (specs[1].name.as_str(), specs[1].type_name.as_str()),
        ("a", "file")
    );
    assert_eq!(specs[0].delivery, Delivery::Sync);
    assert_eq!(specs[1].stores, ["bank"]);
    let b: FileOptions = specs[0].options.parse().expect("b options");
    let a: FileOptions = specs[1].options.parse().expect("a options");
    assert_eq!(b.write_dir, "data/b");
    assert_eq!(a.write_dir, "data/a");
    assert_eq!(specs[1].options.table_name(), "a");
}

#[test]
fn config_unlisted_table_is_disabled() {
    let text = "[store]\nstreamers = [\"a\"]\n\
                [streamers.a]\nkeys = [\"bank\"]\n\
                [streamers.b]\nqueue = \"not even checked\"\n";
    let config = parse(text).expect("unlisted tables are not validated");
    assert_eq!(config.streamer_names(), ["a"]);
}

#[test]
fn config_no_streamers() {
    for text in [
        "",
        "[store]\n",
        "[store]\nstreamers = []\n",
        "[api]\nenable = true\n",
    ] {
        let config = parse(text).expect("parses");
        assert!(config.streamer_names().is_empty(), "{text:?}");
        assert!(config.resolve(STORES).expect("resolves").is_empty());
    }
}

#[test]
fn config_other_tables_and_store_keys_are_ignored() {
    // Shaped like a real Cosmos app.toml.
    let text = r#"
minimum-gas-prices = "0stake"
pruning = "default"

[telemetry]
service-name = ""
enabled = false

[api]
enable = true
address = "tcp://0.0.0.0:1317"

[state-sync]
snapshot-interval = 0

[store]
streamers = ["file"]
some-cosmos-setting = 3

[streamers]
[streamers.file]
keys = ["acc"]
write_dir = ""
prefix = ""
output-metadata = true
stop-node-on-error = true
fsync = false

[mempool]
max-txs = 5000
"#;
    let specs = resolve(text);
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].stores, ["acc"]);
}

#[test]
fn config_inline_and_dotted_tables() {
    let text = "[store]\nstreamers = [\"a\", \"b\"]\n\
                [streamers]\na = { keys = [\"bank\"], queue = 3 }\nb.keys = [\"acc\"]\n";
    let specs = resolve(text);
    assert_eq!(specs[0].queue, 3);
    assert_eq!(specs[1].stores, ["acc"]);
}

#[test]
fn config_nested_option_keys_are_kept_as_written() {
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Tls {
        #[serde(alias = "ca-file")]
        ca_file: String,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NatsOptions {
        url: String,
        tls: Tls,
        headers: std::collections::BTreeMap<String, String>,
    }
    let text = "[store]\nstreamers = [\"nats\"]\n[streamers.nats]\nkeys = [\"*\"]\n\
                url = \"nats://x\"\nheaders = { X-Node = \"n1\" }\n\
                [streamers.nats.tls]\nca-file = \"ca.pem\"\n";
    let specs = resolve(text);
    let options: NatsOptions = specs[0].options.parse().expect("nested options parse");
    assert_eq!(options.url, "nats://x");
    assert_eq!(options.tls.ca_file, "ca.pem");
    assert_eq!(
        options.headers.get("X-Node").map(String::as_str),
        Some("n1")
    );
}

#[test]
fn config_from_file() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(DOCUMENTED_EXAMPLE.as_bytes())
        .expect("write");
    let config = AppConfig::from_file(file.path()).expect("reads");
    assert_eq!(config.origin(), file.path());
    assert_eq!(config.streamer_names(), ["file"]);

    let mut bad = tempfile::NamedTempFile::new().expect("temp file");
    bad.write_all(one_streamer("keys = [\"*\"]\nqueue = 0\n").as_bytes())
        .expect("write");
    let error = AppConfig::from_file(bad.path()).expect_err("bad queue");
    assert_eq!(error.path(), bad.path());
    assert!(
        error
            .to_string()
            .contains(&bad.path().display().to_string())
    );
}

#[test]
fn config_missing_file_names_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config").join("app.toml");
    let error = AppConfig::from_file(&path).expect_err("missing file");
    assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[test]
fn config_syntax_error_names_file_line_and_column() {
    let error =
        parse("[store]\nstreamers = [\"file\"\n\n[streamers.file]\n").expect_err("bad toml");
    assert!(matches!(error, ConfigError::Syntax { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.starts_with(PATH), "{message}");
    assert!(message.contains("line "), "{message}");
    assert!(message.contains("column "), "{message}");

    let error = parse("a = 1\nb = \n").expect_err("bad toml");
    assert!(
        matches!(
            error,
            ConfigError::Syntax {
                line: 2,
                column: 5,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn config_store_not_a_table() {
    let error = parse("\nstore = 3\n").expect_err("store is a table");
    assert!(
        matches!(error, ConfigError::Table { line: Some(2), .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("[store]"), "{error}");
    let error = parse("streamers = \"file\"\n").expect_err("streamers is a table");
    assert!(error.to_string().contains("[streamers]"), "{error}");
}

/// A bad configuration: the text, the key its error must name (as spelled),
/// the line, and a fragment of the message.
struct Bad {
    text: String,
    table: &'static str,
    key: &'static str,
    line: usize,
    fragment: &'static str,
}

fn bad(table_body: &str, key: &'static str, line: usize, fragment: &'static str) -> Bad {
    Bad {
        text: one_streamer(table_body),
        table: "[streamers.file]",
        key,
        line,
        fragment,
    }
}

fn bad_store(store_body: &str, key: &'static str, fragment: &'static str) -> Bad {
    Bad {
        text: format!("[store]\n{store_body}\n[streamers.file]\nkeys = [\"*\"]\n"),
        table: "[store]",
        key,
        line: 2,
        fragment,
    }
}

#[test]
fn config_bad_configurations_name_file_table_key_and_line() {
    // The table header `[streamers.file]` is on line 4; its first key on line 5.
    let cases = vec![
        bad(
            "keys = [\"*\"]\nqueue = \"big\"\n",
            "queue",
            6,
            "expected a positive integer, got string \"big\"",
        ),
        bad("keys = [\"*\"]\nqueue = 0\n", "queue", 6, "at least 1"),
        bad("keys = [\"*\"]\nqueue = -3\n", "queue", 6, "got integer -3"),
        bad(
            "keys = [\"*\"]\nqueue = 2_000_000\n",
            "queue",
            6,
            "at most 1000000",
        ),
        bad("keys = [\"*\"]\nqueue = 1.5\n", "queue", 6, "got float 1.5"),
        bad(
            "keys = \"bank\"\n",
            "keys",
            5,
            "expected an array of store names",
        ),
        bad("write_dir = \"d\"\n", "keys", 4, "missing"),
        bad(
            "keys = [\"*\", \"bank\"]\n",
            "keys",
            5,
            "cannot be combined",
        ),
        bad(
            "keys = [\"bank\", \"bank\"]\n",
            "keys",
            5,
            "`bank` is listed twice",
        ),
        bad("keys = [\"ba nk\"]\n", "keys", 5, "invalid name \"ba nk\""),
        bad("keys = [\"\"]\n", "keys", 5, "empty"),
        bad("keys = [1]\n", "keys", 5, "got integer 1"),
        bad(
            "keys = [\"*\"]\n\ndelivery = \"fast\"\n",
            "delivery",
            7,
            "expected one of \"sync\", \"async\", got string \"fast\"",
        ),
        bad(
            "keys = [\"*\"]\ndelivery = 3\n",
            "delivery",
            6,
            "got integer 3",
        ),
        bad(
            "keys = [\"*\"]\nstop-node-on-error = \"yes\"\n",
            "stop-node-on-error",
            6,
            "expected a boolean",
        ),
        bad(
            "keys = [\"*\"]\nstop_node_on_error = 1\n",
            "stop_node_on_error",
            6,
            "expected a boolean",
        ),
        bad(
            "keys = [\"*\"]\ntype = \"\"\n",
            "type",
            6,
            "non-empty string",
        ),
        bad("keys = [\"*\"]\ntype = 3\n", "type", 6, "got integer 3"),
        bad(
            "keys = [\"*\"]\nfsync = false\nfsync_ = 1\nfsync-=2\n",
            "fsync-",
            8,
            "`fsync_` (line 7)",
        ),
        bad_store(
            "streamers = \"file\"",
            "streamers",
            "expected an array of streamer names",
        ),
        bad_store(
            "streamers = [\"file\", \"file\"]",
            "streamers",
            "`file` is listed twice",
        ),
        bad_store(
            "streamers = [\"file\", \"nope\"]",
            "streamers",
            "no [streamers.nope] table",
        ),
        bad_store(
            "streamers = [\"bad name\"]",
            "streamers",
            "invalid name \"bad name\"",
        ),
        bad_store("streamers = [\"\"]", "streamers", "empty"),
        bad_store("streamers = [true]", "streamers", "got boolean true"),
        Bad {
            text: "[store]\nstreamers = [\"file\"]\n[streamers]\nfile = 3\n".to_owned(),
            table: "[streamers]",
            key: "file",
            line: 4,
            fragment: "expected a table, got integer 3",
        },
    ];
    assert!(cases.len() >= 15);
    for case in cases {
        let error = parse(&case.text).expect_err(&case.text);
        let message = error.to_string();
        let context = format!("case {:?} -> {message}", case.text);
        assert!(message.starts_with(PATH), "{context}");
        assert_eq!(error.path(), Path::new(PATH), "{context}");
        assert_eq!(error.table(), Some(case.table), "{context}");
        assert_eq!(error.key(), Some(case.key), "{context}");
        assert_eq!(error.line(), Some(case.line), "{context}");
        let named = format!("{} key `{}` (line {})", case.table, case.key, case.line);
        assert!(message.contains(&named), "{context}");
        assert!(message.contains(case.fragment), "{context}");
        assert!(!message.ends_with('.'), "{context}");
    }
}

#[test]
fn config_option_errors_name_key_as_spelled_and_line() {
    // (table body, key as spelled, line, fragment); header on line 4.
    let cases = [
        (
            "keys = [\"*\"]\nwrite_dirr = \"d\"\n",
            "write_dirr",
            Some(6),
            "unknown key `write_dirr`",
        ),
        (
            "keys = [\"*\"]\nwrite_dir = \"d\"\nfsync = \"yes\"\n",
            "fsync",
            Some(7),
            "expected a boolean (true or false, or as a string one of \"1\", \"t\"",
        ),
        (
            "keys = [\"*\"]\nwrite_dir = \"d\"\nfsync = 1\n",
            "fsync",
            Some(7),
            "invalid type: integer `1`, expected a boolean",
        ),
        (
            "keys = [\"*\"]\nwrite-dir = 3\n",
            "write-dir",
            Some(6),
            "expected a string",
        ),
        (
            "keys = [\"*\"]\nwrite_dir = \"d\"\n\noutput-metadata = \"yes\"\n",
            "output-metadata",
            Some(8),
            "invalid type: string \"yes\", expected a boolean (true or false, or as a string",
        ),
        (
            "keys = [\"*\"]\nwrite_dir = \"d\"\nfrobnicate-level = 3\n",
            "frobnicate-level",
            Some(7),
            "unknown key `frobnicate_level`",
        ),
        (
            "keys = [\"*\"]\nprefix = \"p\"\n",
            "write_dir",
            Some(4),
            "missing key `write_dir`",
        ),
    ];
    for (body, key, line, fragment) in cases {
        let specs = resolve(&one_streamer(body));
        let error = specs[0].options.parse::<FileOptions>().expect_err(body);
        let message = error.to_string();
        let context = format!("case {body:?} -> {message}");
        assert!(message.starts_with(PATH), "{context}");
        assert_eq!(error.table(), Some("[streamers.file]"), "{context}");
        assert_eq!(error.key(), Some(key), "{context}");
        assert_eq!(error.line(), line, "{context}");
        assert!(message.contains(fragment), "{context}");
    }
}

#[test]
fn config_streamer_reports_semantic_error_on_its_key() {
    let specs = resolve(&one_streamer(
        "keys = [\"*\"]\nwrite_dir = \"d\"\nprefix = \"../x\"\n",
    ));
    let error = specs[0]
        .options
        .error("prefix", "unsafe prefix \"../x\": no `/` or `..`");
    assert_eq!(
        error.to_string(),
        format!(
            "{PATH}: [streamers.file] key `prefix` (line 7): unsafe prefix \"../x\": no `/` or `..`"
        )
    );
    let specs = resolve(&one_streamer("keys = [\"*\"]\nwrite-dir = \"/abs\"\n"));
    let error = specs[0].options.error("write_dir", "must be relative");
    assert_eq!(error.key(), Some("write-dir"));
    assert_eq!(error.line(), Some(6));
}

#[test]
fn config_options_from_table() {
    let table: toml::Table =
        toml::from_str("write-dir = \"w\"\nfsync = true\n").expect("valid toml");
    let options = StreamerOptions::from_table(table);
    assert!(!options.is_empty());
    assert_eq!(options.origin(), Path::new("<inline>"));
    assert_eq!(
        options.get("write_dir").and_then(toml::Value::as_str),
        Some("w")
    );
    let parsed: FileOptions = options.parse().expect("parses");
    assert!(parsed.fsync);

    let named = options.clone().with_name("archive");
    assert_eq!(named.table_name(), "archive");
    let error = named.error("write_dir", "bad");
    assert_eq!(
        error.to_string(),
        "<inline>: [streamers.archive] key `write-dir`: bad"
    );

    let bad: toml::Table = toml::from_str("write_dir = 1\n").expect("valid toml");
    let error = StreamerOptions::from_table(bad)
        .parse::<FileOptions>()
        .expect_err("wrong type");
    assert_eq!(error.key(), Some("write_dir"));
    assert!(StreamerOptions::default().is_empty());
}

#[test]
fn config_options_parse_into_optional_and_map_types() {
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Optional {
        command: Option<Vec<String>>,
        env: Option<std::collections::BTreeMap<String, String>>,
    }
    let specs = resolve(&one_streamer(
        "keys = [\"*\"]\ncommand = [\"plugin\", \"--fast\"]\nenv = { RUST_LOG = \"info\" }\n",
    ));
    let parsed: Optional = specs[0].options.parse().expect("parses");
    assert_eq!(
        parsed.command.as_deref(),
        Some(&["plugin".to_owned(), "--fast".to_owned()][..])
    );
    assert_eq!(
        parsed
            .env
            .and_then(|env| env.get("RUST_LOG").cloned())
            .as_deref(),
        Some("info")
    );
}

#[test]
fn config_delivery_display() {
    assert_eq!(Delivery::Sync.to_string(), "sync");
    assert_eq!(Delivery::Async.as_str(), "async");
}

/// Fragments that are likely to reach deep into the parser.
fn toml_like() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just("[store]\n".to_owned()),
        Just("streamers = [\"file\"]\n".to_owned()),
        Just("streamers = [\"a\", \"file\"]\n".to_owned()),
        Just("[streamers.file]\n".to_owned()),
        Just("[streamers.a]\n".to_owned()),
        Just("keys = [\"*\"]\n".to_owned()),
        Just("keys = []\n".to_owned()),
        Just("queue = ".to_owned()),
        Just("delivery = ".to_owned()),
        Just("stop-node-on-error = ".to_owned()),
        Just("stop_node_on_error = ".to_owned()),
        Just("type = ".to_owned()),
        Just("write-dir = ".to_owned()),
        Just("write_dir = ".to_owned()),
        "-?[0-9]{1,20}\n",
        "\"[a-z*. ]{0,6}\"\n",
        "[a-z_\\-.\\[\\]\"=\n ]{0,12}",
    ];
    prop::collection::vec(fragment, 0..16).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn config_parse_never_panics_on_any_string(text in ".*") {
        if let Ok(config) = AppConfig::parse(&text, Path::new(PATH)) {
            let _ = config.resolve(STORES);
        }
    }

    #[test]
    fn config_parse_never_panics_on_toml_like_text(text in toml_like()) {
        let specs = AppConfig::parse(&text, Path::new(PATH))
            .and_then(|config| config.resolve(STORES))
            .unwrap_or_default();
        for spec in specs {
            let _ = spec.options.parse::<FileOptions>();
        }
    }
}

/// The streaming section exactly as the Cosmos SDK's own app.toml template
/// (v0.46, v0.47) writes it: quoted booleans, trailing commas.
const COSMOS_TEMPLATE: &str = r#"[store]
streamers = ["file", ]

[streamers]
[streamers.file]
keys = ["*", ]
write_dir = ""
prefix = ""
output-metadata = "true"
stop-node-on-error = "true"
fsync = "false"
"#;

#[test]
fn config_cosmos_template_verbatim() {
    let specs = resolve(COSMOS_TEMPLATE);
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].stores, ["acc", "bank", "staking"]);
    assert!(specs[0].stop_node_on_error);
    let options: FileOptions = specs[0].options.parse().expect("options parse");
    assert_eq!(
        options,
        FileOptions {
            write_dir: String::new(),
            prefix: String::new(),
            output_metadata: true,
            fsync: false,
        }
    );
    // The values are kept as written: only parsing reads them leniently.
    assert_eq!(
        specs[0].options.get("fsync"),
        Some(&toml::Value::String("false".to_owned()))
    );
}

#[test]
fn config_cosmos_quoted_false_turns_things_off() {
    let text = COSMOS_TEMPLATE
        .replace("output-metadata = \"true\"", "output-metadata = \"false\"")
        .replace(
            "stop-node-on-error = \"true\"",
            "stop-node-on-error = \"false\"",
        )
        .replace("fsync = \"false\"", "fsync = \"true\"");
    let specs = resolve(&text);
    assert!(!specs[0].stop_node_on_error);
    let options: FileOptions = specs[0].options.parse().expect("options parse");
    assert!(!options.output_metadata);
    assert!(options.fsync);
}

#[test]
fn config_cosmos_every_go_parse_bool_spelling() {
    let spellings = [
        ("1", true),
        ("t", true),
        ("T", true),
        ("TRUE", true),
        ("true", true),
        ("True", true),
        ("0", false),
        ("f", false),
        ("F", false),
        ("FALSE", false),
        ("false", false),
        ("False", false),
    ];
    for (text, expected) in spellings {
        let body = format!(
            "keys = [\"*\"]\nwrite_dir = \"d\"\nstop-node-on-error = \"{text}\"\n\
             output-metadata = \"{text}\"\nfsync = \"{text}\"\n"
        );
        let specs = resolve(&one_streamer(&body));
        assert_eq!(specs[0].stop_node_on_error, expected, "{text}");
        let options: FileOptions = specs[0].options.parse().expect(text);
        assert_eq!(options.output_metadata, expected, "{text}");
        assert_eq!(options.fsync, expected, "{text}");
    }
}

#[test]
fn config_cosmos_bad_strings_name_file_table_key_and_line() {
    // Header on line 4; the bad key on line 6.
    for bad in ["yes", "no", "on", "", " true", "tRUE", "2"] {
        let body = format!("keys = [\"*\"]\nstop-node-on-error = \"{bad}\"\n");
        let error = parse(&one_streamer(&body)).expect_err(bad);
        assert_eq!(error.table(), Some("[streamers.file]"), "{bad:?}");
        assert_eq!(error.key(), Some("stop-node-on-error"), "{bad:?}");
        assert_eq!(error.line(), Some(6), "{bad:?}");
        let message = error.to_string();
        assert!(message.starts_with(PATH), "{message}");
        assert!(message.contains("expected a boolean"), "{message}");
        assert!(
            message.contains(&format!("got string \"{bad}\"")),
            "{message}"
        );

        let body = format!("keys = [\"*\"]\nwrite_dir = \"d\"\noutput-metadata = \"{bad}\"\n");
        let specs = resolve(&one_streamer(&body));
        let error = specs[0].options.parse::<FileOptions>().expect_err(bad);
        assert_eq!(error.key(), Some("output-metadata"), "{bad:?}");
        assert_eq!(error.line(), Some(7), "{bad:?}");
        let message = error.to_string();
        assert!(message.starts_with(PATH), "{message}");
        assert!(
            message.contains("[streamers.file] key `output-metadata` (line 7)"),
            "{message}"
        );
        assert!(message.contains("expected a boolean"), "{message}");
    }
}

#[test]
fn config_cosmos_integers_as_decimal_strings() {
    let specs = resolve(&one_streamer("keys = [\"*\"]\nqueue = \"64\"\n"));
    assert_eq!(specs[0].queue, 64);
    let specs = resolve(&one_streamer("keys = [\"*\"]\nqueue = \"1000000\"\n"));
    assert_eq!(specs[0].queue, 1_000_000);
    for (value, fragment) in [
        ("\"0\"", "at least 1"),
        ("\"-3\"", "at least 1"),
        ("\"2000000\"", "at most 1000000"),
        ("\"big\"", "expected a positive integer, got string \"big\""),
        ("\"6 4\"", "expected a positive integer"),
        ("\"0x40\"", "expected a positive integer"),
        ("\"1.5\"", "expected a positive integer"),
    ] {
        let error =
            parse(&one_streamer(&format!("keys = [\"*\"]\nqueue = {value}\n"))).expect_err(value);
        assert_eq!(error.key(), Some("queue"), "{value}");
        assert_eq!(error.line(), Some(6), "{value}");
        assert!(error.to_string().contains(fragment), "{value}: {error}");
    }
}

#[test]
fn config_cosmos_leniency_reaches_every_option_type() {
    // A streamer type this crate does not know, with integers, optional and
    // nested booleans: every one of them gets Cosmos's reading.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Tls {
        enabled: bool,
        port: u16,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Options {
        timeout_ms: u64,
        retries: i32,
        compress: Option<bool>,
        ports: Vec<u32>,
        tls: Tls,
        name: String,
        env: std::collections::BTreeMap<String, String>,
    }
    let specs = resolve(&one_streamer(
        "keys = [\"*\"]\ntimeout-ms = \"5000\"\nretries = \"-1\"\ncompress = \"T\"\n\
         ports = [\"80\", 443, ]\ntls = { enabled = \"1\", port = \"8443\" }\nname = \"true\"\n\
         env = { FLAG = \"0\" }\n",
    ));
    let options: Options = specs[0].options.parse().expect("options parse");
    assert_eq!(options.timeout_ms, 5000);
    assert_eq!(options.retries, -1);
    assert_eq!(options.compress, Some(true));
    assert_eq!(options.ports, [80, 443]);
    assert!(options.tls.enabled);
    assert_eq!(options.tls.port, 8443);
    // Strings stay strings where a string is wanted.
    assert_eq!(options.name, "true");
    assert_eq!(options.env.get("FLAG").map(String::as_str), Some("0"));

    // Out of range, and not a number: the key is named.
    let specs = resolve(&one_streamer(
        "keys = [\"*\"]\ntimeout-ms = \"5000\"\nretries = \"1\"\ncompress = true\nports = []\n\
         tls = { enabled = true, port = \"70000\" }\nname = \"n\"\nenv = {}\n",
    ));
    let error = specs[0]
        .options
        .parse::<Options>()
        .expect_err("port too big");
    assert_eq!(error.key(), Some("tls"));
    assert!(
        error
            .to_string()
            .contains("invalid value: string \"70000\", expected an integer between 0 and 65535"),
        "{error}"
    );
    let specs = resolve(&one_streamer("keys = [\"*\"]\ntimeout-ms = \"soon\"\n"));
    let error = specs[0]
        .options
        .parse::<Options>()
        .expect_err("not a number");
    assert_eq!(error.key(), Some("timeout-ms"));
    assert_eq!(error.line(), Some(6));
    assert!(
        error.to_string().contains(
            "invalid type: string \"soon\", expected an integer (or a string of decimal digits)"
        ),
        "{error}"
    );

    // Options built in code are read the same way.
    let table: toml::Table = toml::from_str("write_dir = \"w\"\nfsync = \"True\"\n").expect("toml");
    let parsed: FileOptions = StreamerOptions::from_table(table).parse().expect("parses");
    assert!(parsed.fsync);
}

#[test]
fn config_cosmos_trailing_commas() {
    let text = "[store]\nstreamers = [\"a\", \"b\", ]\n\n[streamers.a]\nkeys = [\"bank\", \"acc\", ]\n\
                [streamers.b]\nkeys = [ ]\n";
    let config = parse(text).expect("parses");
    assert_eq!(config.streamer_names(), ["a", "b"]);
    let specs = config.resolve(STORES).expect("resolves");
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].stores, ["acc", "bank"]);
}

#[test]
fn config_streaming_abci_is_recognised_with_a_warning() {
    let text = format!(
        "{COSMOS_TEMPLATE}\n[streaming]\n\n[streaming.abci]\nkeys = []\nplugin = \"\"\nstop-node-on-err = true\n"
    );
    let config = parse(&text).expect("a [streaming.abci] table is not an error");
    // The node still runs the [store] streamers it finds.
    assert_eq!(config.resolve(STORES).expect("resolves").len(), 1);
    let [warning] = config.warnings() else {
        panic!("expected one warning, got {:?}", config.warnings());
    };
    assert!(warning.starts_with(PATH), "{warning}");
    assert!(warning.contains("[streaming.abci] (line 15)"), "{warning}");
    assert!(warning.contains("type = \"process\""), "{warning}");
    assert!(warning.contains("docs/plugin-protocol.md"), "{warning}");
    assert!(warning.contains("statestream cosmos-plugin"), "{warning}");

    assert!(
        parse(COSMOS_TEMPLATE)
            .expect("parses")
            .warnings()
            .is_empty()
    );
    // Other [streaming] tables are not Cosmos's plugin table.
    let other = format!("{COSMOS_TEMPLATE}\n[streaming.other]\nx = 1\n");
    assert!(parse(&other).expect("parses").warnings().is_empty());
}

#[test]
fn config_telemetry_address() {
    let off = parse("[store]\nstreamers = []\n").unwrap();
    assert!(off.telemetry().is_none());
    let empty = parse("[telemetry]\n").unwrap();
    assert!(empty.telemetry().is_none());

    let on =
        parse("[store]\nstreamers = []\n\n[telemetry]\naddress = \"127.0.0.1:9100\"\n").unwrap();
    let telemetry = on.telemetry().expect("telemetry is on");
    assert_eq!(telemetry.address, "127.0.0.1:9100".parse().unwrap());
    assert_eq!(telemetry.line, Some(5));
    let any_port = parse("[telemetry]\naddress = \"[::1]:0\"\n").unwrap();
    assert_eq!(any_port.telemetry().unwrap().address.port(), 0);

    // The Cosmos SDK's own [telemetry] keys sit beside statestream's.
    let cosmos = parse(
        "[telemetry]\nservice-name = \"\"\nenabled = false\nprometheus-retention-time = 0\n\
         global-labels = []\naddress = \"127.0.0.1:9100\"\n",
    )
    .unwrap();
    assert_eq!(cosmos.telemetry().unwrap().address.port(), 9100);
}

#[test]
fn config_telemetry_connection_keys() {
    let defaults = parse("[telemetry]\naddress = \"127.0.0.1:9100\"\n").unwrap();
    let telemetry = defaults.telemetry().unwrap();
    assert_eq!(telemetry.max_connections, None);
    assert_eq!(telemetry.header_timeout_ms, None);
    assert!(telemetry.allowed_hosts.is_empty());
    let set = parse(
        "[telemetry]\naddress = \"127.0.0.1:9100\"\nmax-connections = 32\n\
         header_timeout_ms = \"2500\"\nallowed_hosts = [\"metrics.internal\", \"10.0.0.7\", \"[::2]\", \"*\"]\n",
    )
    .unwrap();
    let telemetry = set.telemetry().unwrap();
    assert_eq!(telemetry.max_connections, Some(32));
    assert_eq!(telemetry.header_timeout_ms, Some(2500));
    assert_eq!(
        telemetry.allowed_hosts,
        ["metrics.internal", "10.0.0.7", "[::2]", "*"]
    );
}

#[test]
fn config_telemetry_errors_name_file_key_and_line() {
    for (text, key, line, needle) in [
        (
            "[telemetry]\n\naddress = \"localhost\"\n",
            "address",
            3,
            "expected an IP address and a port",
        ),
        (
            "[telemetry]\naddress = 9100\n",
            "address",
            2,
            "got integer 9100",
        ),
        (
            "[telemetry]\naddress = \"127.0.0.1:99999\"\n",
            "address",
            2,
            "127.0.0.1:99999",
        ),
        (
            "[telemetry]\nadress = \"127.0.0.1:9100\"\n",
            "adress",
            2,
            "unknown key",
        ),
        (
            "[telemetry]\naddress = \"127.0.0.1:9100\"\nmax_connections = 0\n",
            "max_connections",
            3,
            "at least 1",
        ),
        (
            "[telemetry]\naddress = \"127.0.0.1:9100\"\nheader_timeout_ms = \"soon\"\n",
            "header_timeout_ms",
            3,
            "expected a positive integer",
        ),
        (
            "[telemetry]\naddress = \"127.0.0.1:9100\"\nheader_timeout_ms = 3600001\n",
            "header_timeout_ms",
            3,
            "at most 3600000",
        ),
        (
            "[telemetry]\naddress = \"127.0.0.1:9100\"\nallowed_hosts = \"a.example\"\n",
            "allowed_hosts",
            3,
            "expected an array of host names",
        ),
        (
            "[telemetry]\naddress = \"127.0.0.1:9100\"\nallowed_hosts = [\"http://a.example/\"]\n",
            "allowed_hosts",
            3,
            "is not a host name",
        ),
    ] {
        let err = parse(text).unwrap_err();
        assert_eq!(err.table(), Some("[telemetry]"), "{err}");
        assert_eq!(err.key(), Some(key), "{err}");
        assert_eq!(err.line(), Some(line), "{err}");
        let message = err.to_string();
        assert!(message.starts_with(PATH), "{message}");
        assert!(message.contains(needle), "{message}");
    }
    let err = parse("telemetry = \"127.0.0.1:9100\"\n").unwrap_err();
    assert_eq!(err.table(), Some("[telemetry]"), "{err}");
    assert_eq!(err.line(), Some(1), "{err}");
}

#[test]
fn config_store_shutdown_timeout_ms() {
    use statestream_config::DEFAULT_SHUTDOWN_TIMEOUT_MS;
    use std::time::Duration;
    let default = parse("[store]\nstreamers = []\n").unwrap();
    assert_eq!(
        default.shutdown_timeout(),
        Duration::from_millis(DEFAULT_SHUTDOWN_TIMEOUT_MS)
    );
    assert_eq!(
        parse("").unwrap().shutdown_timeout(),
        Duration::from_millis(DEFAULT_SHUTDOWN_TIMEOUT_MS)
    );
    for text in [
        "[store]\nshutdown_timeout_ms = 250\n",
        "[store]\nshutdown-timeout-ms = 250\n",
        "[store]\nshutdown_timeout_ms = \"250\"\n",
    ] {
        let config = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(
            config.shutdown_timeout(),
            Duration::from_millis(250),
            "{text}"
        );
    }
    for (text, needle) in [
        (
            "[store]\nshutdown_timeout_ms = -1\n",
            "expected milliseconds",
        ),
        ("[store]\nshutdown_timeout_ms = \"soon\"\n", "got string"),
        ("[store]\nshutdown_timeout_ms = 3600001\n", "3600000"),
        (
            "[store]\nshutdown_timeout_ms = 1\nshutdown-timeout-ms = 2\n",
            "given twice",
        ),
    ] {
        let err = parse(text).expect_err(text).to_string();
        assert!(err.contains("[store]"), "{err}");
        assert!(err.contains("shutdown"), "{err}");
        assert!(err.contains("line"), "{err}");
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn config_cosmos_on_gap() {
    use statestream_config::GapPolicy;
    assert_eq!(parse("").unwrap().cosmos().on_gap, GapPolicy::Continue);
    let halt = parse("[cosmos]\non_gap = \"halt\"\n").unwrap();
    assert_eq!(halt.cosmos().on_gap, GapPolicy::Halt);
    let cont = parse("[cosmos]\non_gap = \"continue\"\n").unwrap();
    assert_eq!(cont.cosmos().on_gap, GapPolicy::Continue);
    let bad = parse("[cosmos]\non_gap = \"skip\"\n")
        .unwrap_err()
        .to_string();
    assert!(bad.contains("on_gap") && bad.contains("\"skip\""), "{bad}");
    let unknown = parse("[cosmos]\ngaps = 1\n").unwrap_err().to_string();
    assert!(unknown.contains("unknown key"), "{unknown}");
}

#[test]
fn config_relay_defaults_values_and_errors() {
    let config = parse("[relay]\nupstreams = [\"http://127.0.0.1:9090\"]\n").expect("parses");
    let relay = config.relay().expect("[relay]");
    assert_eq!(relay.upstreams, ["http://127.0.0.1:9090"]);
    assert_eq!(
        (relay.max_upstream_lag_blocks, relay.ready_lag_blocks),
        (100, 10)
    );
    assert!(relay.resnapshot && relay.stores.is_empty() && relay.token_file.is_empty());
    assert!(parse("[store]\n").unwrap().relay().is_none());

    let all = parse(
        "[relay]\nupstreams = [\"http://a:1\", \"https://b:2\"]\ntoken_file = \"t\"\n\
         tls_ca_file = \"ca.pem\"\nstores = [\"bank\"]\nmax_upstream_lag_blocks = 5\n\
         ready_lag_blocks = 0\nresnapshot = false\n",
    )
    .expect("parses");
    let relay = all.relay().unwrap();
    assert_eq!(
        (
            relay.max_upstream_lag_blocks,
            relay.ready_lag_blocks,
            relay.resnapshot
        ),
        (5, 0, false)
    );
    assert_eq!(relay.stores, ["bank"]);

    for (text, fragment) in [
        ("[relay]\n", "`upstreams` is required"),
        ("[relay]\nupstreams = []\n", "at least one upstream"),
        (
            "[relay]\nupstreams = [\"node:9090\"]\n",
            "is not an upstream",
        ),
        (
            "[relay]\nupstreams = [\"http://a:1\", \"http://a:1\"]\n",
            "listed twice",
        ),
        (
            "[relay]\nupstreams = [\"http://a:1\"]\nmax_upstream_lag_blocks = 0\n",
            "from 1 to",
        ),
        (
            "[relay]\nupstreams = [\"http://a:1\"]\nready_lag_blocks = -1\n",
            "from 0 to",
        ),
        (
            "[relay]\nupstreams = [\"http://a:1\"]\nresnapshot = \"maybe\"\n",
            "resnapshot",
        ),
        (
            "[relay]\nupstreams = [\"http://a:1\"]\nstores = [\"*\"]\n",
            "not a store name",
        ),
        (
            "[relay]\nupstreams = [\"http://a:1\"]\nupstream = 1\n",
            "unknown key",
        ),
        ("relay = 1\n", "expected a table"),
    ] {
        let e = parse(text).expect_err(text).to_string();
        assert!(e.contains(fragment), "{text}: {e}");
        assert!(e.contains("[relay]") || e.contains("relay"), "{text}: {e}");
    }
}

#[test]
fn config_relay_nats_upstreams_and_their_table() {
    let config = parse(
        "[relay]\nupstreams = [\"nats://127.0.0.1:4222?stream=chain\", \"http://a:1\"]\n\n\
         [relay.nats]\ntoken = \"secret\"\ntls-ca-file = \"ca.pem\"\ntls_required = \"true\"\n\
         connect_timeout_ms = 250\n",
    )
    .expect("parses");
    let nats = &config.relay().expect("[relay]").nats;
    assert_eq!(nats.token.as_deref(), Some("secret"));
    assert_eq!(nats.tls_ca_file.as_deref(), Some("ca.pem"));
    assert!(nats.tls_required);
    assert_eq!(
        (nats.connect_timeout_ms, nats.request_timeout_ms),
        (250, 5000)
    );
    assert!(!format!("{nats:?}").contains("secret"), "{nats:?}");
    let defaults = parse("[relay]\nupstreams = [\"http://a:1\"]\n").unwrap();
    let d = &defaults.relay().unwrap().nats;
    assert!(d.token.is_none() && !d.tls_required && d.connect_timeout_ms == 5000);
    for (text, fragment) in [
        (
            "[relay]\nupstreams = [\"nats://h:4222\"]\n",
            "names no stream",
        ),
        (
            "[relay]\nupstreams = [\"nats://h:4222?stream=s\"]\n[relay.nats]\nurl = \"x\"\n",
            "unknown key; statestream reads `token`",
        ),
        (
            "[relay]\nupstreams = [\"nats://h:4222?stream=s\"]\n[relay.nats]\n\
             request_timeout_ms = 0\n",
            "expected milliseconds",
        ),
        (
            "[relay]\nupstreams = [\"nats://h:4222?stream=s\"]\n[relay.nats]\ntoken = 1\n",
            "expected a string",
        ),
        (
            "[relay]\nupstreams = [\"nats://h:4222?stream=s\"]\nnats = 1\n",
            "expected a table",
        ),
    ] {
        let e = parse(text).expect_err(text).to_string();
        assert!(e.contains(fragment), "{text}: {e}");
        assert!(e.contains("relay"), "{text}: {e}");
    }
}
