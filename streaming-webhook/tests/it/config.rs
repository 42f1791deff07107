//! Configuration errors reach the user through `DeliveryManager::builder()...start`,
//! naming the file, the table and the key.

use crate::*;

#[test]
fn config_errors_name_file_table_and_key() {
    let cases = [
        ("url = \"ftp://x/\"", "url"),
        ("url = \"http://x/{id}\"", "key_pattern is not set"),
        ("url = \"http://x/\"\nsecret = \"plain\"", "whsec_"),
        ("url = \"http://x/\"\nsuccess = [700]", "700"),
        ("url = \"http://x/\"\nretry_schedule_ms = []", "empty"),
    ];
    for (table, want) in cases {
        let text = format!(
            "[store]\nstreamers = [\"hook\"]\n\n[streamers.hook]\ntype = \"webhook\"\nkeys = [\"*\"]\n{table}\n"
        );
        let mut store = memory_store();
        let err = match manager(&mut store, &text) {
            Ok(_) => panic!("{table} should be refused"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("app.toml"), "{err}");
        assert!(err.contains("[streamers.hook]"), "{err}");
        assert!(err.contains(want), "{table}: {err}");
    }
    // An unknown action table.
    let text = "[store]\nstreamers = [\"hook\"]\n\n[streamers.hook]\ntype = \"webhook\"\nkeys = [\"*\"]\n\
                url = \"http://x/\"\n[streamers.hook.actions.upsert]\nmethod = \"PUT\"\n";
    let mut store = memory_store();
    let err = format!("{:#}", manager(&mut store, text).expect_err("refused"));
    assert!(err.contains("upsert"), "{err}");
}

/// The example in `docs/webhook.md` parses and builds.
#[test]
fn config_documented_example_builds() {
    let doc = include_str!("../../../docs/webhook.md");
    let example = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/webhook.md has a toml example");
    let home = tempfile::tempdir().unwrap();
    let mut store = memory_store();
    // The example is a whole app.toml (`config check` runs it as one too).
    let m = manager_in(&mut store, example, home.path());
    assert!(m.is_ok(), "{:#}", m.err().unwrap());
}
