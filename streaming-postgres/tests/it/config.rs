//! The options: the documented example parses, bad values name their key.

use std::path::Path;

use statestream_config::AppConfig;
use statestream_postgres::{PostgresStreamerConfig, Tables, TlsMode};

fn parse(table: &str) -> Result<PostgresStreamerConfig, String> {
    let text = format!(
        "[store]\nstreamers = [\"pg\"]\n\n[streamers.pg]\ntype = \"postgres\"\nkeys = [\"*\"]\n{table}"
    );
    let config = AppConfig::parse(&text, Path::new("app.toml")).map_err(|e| e.to_string())?;
    let specs = config.resolve(&crate::STORES).map_err(|e| e.to_string())?;
    specs[0].options.parse().map_err(|e| e.to_string())
}

#[test]
fn config_documented_example_parses() {
    // The example of issue 19 and docs/postgres.md, comments included.
    let c = parse(
        r#"url = "postgresql://statestream@127.0.0.1:5432/statestream"   # URL or key=value conninfo
schema = "statestream"
tables = "both"            # "changes" (the history), "state" (the current state), or "both"
create_schema = true       # create the schema and tables when missing; false: they must exist
notify = true              # NOTIFY statestream_<schema>, '<height>' after each block
tls = "prefer"             # "disable", "prefer", "require" (rustls; verify-full with ca_file)
"#,
    )
    .expect("the example parses");
    assert_eq!(c, PostgresStreamerConfig::default());
    assert_eq!(c.tables, Tables::Both);
    assert_eq!(c.tls, TlsMode::Prefer);
}

#[test]
fn config_defaults_and_spellings() {
    let c =
        parse("tables = \"state\"\ncreate-schema = false\ntls = \"disable\"\n").expect("parses");
    assert_eq!(c.tables, Tables::State);
    assert!(!c.create_schema);
    assert_eq!(c.tls, TlsMode::Disable);
    assert!(c.notify);
}

#[test]
fn config_tables_sometimes_is_an_error_naming_the_key() {
    let e = parse("tables = \"sometimes\"\n").expect_err("tables = sometimes");
    assert!(e.contains("tables"), "{e}");
    assert!(e.contains("sometimes"), "{e}");
    assert!(e.contains("[streamers.pg]"), "{e}");
    assert!(e.contains("changes") && e.contains("both"), "{e}");
}

#[test]
fn config_unknown_key_and_bad_tls() {
    let e = parse("tabels = \"both\"\n").expect_err("unknown key");
    assert!(e.contains("tabels"), "{e}");
    let e = parse("tls = \"always\"\n").expect_err("bad tls");
    assert!(e.contains("tls") && e.contains("always"), "{e}");
}

/// Errors of checks serde cannot do come from `build`, through the
/// registry, naming the key.
#[test]
fn config_checks_name_their_key() {
    let home = tempfile::tempdir().expect("temp dir");
    let cases: [(&str, &str, &str); 8] = [
        ("schema = \"Bad-Name\"", "schema", "lower-case"),
        ("schema = \"pg_x\"", "schema", "reserved"),
        ("url = \"postgresql://u@h:notaport/db\"", "url", "URL"),
        (
            "password_file = \"missing.txt\"",
            "password_file",
            "missing.txt",
        ),
        (
            "url = \"postgresql://u:pw@127.0.0.1:1/db\"\npassword_file = \"pw.txt\"",
            "password_file",
            "one or the other",
        ),
        (
            "tls = \"disable\"\nca_file = \"ca.pem\"",
            "ca_file",
            "disable",
        ),
        (
            "statement_timeout_ms = 0",
            "statement_timeout_ms",
            "between 1",
        ),
        (
            "statement_timeout_ms = 4294967296",
            "statement_timeout_ms",
            "between 1",
        ),
    ];
    std::fs::write(home.path().join("pw.txt"), "secret\n").expect("write pw.txt");
    for (table, key, words) in cases {
        let mut store = crate::memory_store();
        let toml = format!(
            "[store]\nstreamers = [\"pg\"]\n\n[streamers.pg]\ntype = \"postgres\"\nkeys = [\"*\"]\n{table}\n"
        );
        let e = crate::manager_in(&mut store, &toml, home.path())
            .err()
            .unwrap_or_else(|| panic!("{table:?} accepted"))
            .to_string();
        assert!(e.contains(key), "{table:?}: {e}");
        assert!(e.contains(words), "{table:?}: {e}");
    }
}

#[test]
fn config_statement_timeout_is_documented_and_checked() {
    let c = parse("").expect("defaults");
    assert_eq!(c.statement_timeout_ms, 30_000);
    let c = parse("statement-timeout-ms = 250\n").expect("parses");
    assert_eq!(c.statement_timeout_ms, 250);
    let doc = include_str!("../../../docs/postgres.md");
    assert!(
        doc.contains("| `statement_timeout_ms` | `30000` |"),
        "docs/postgres.md documents statement_timeout_ms with its default"
    );
}
