//! Bad app.toml files, through the full path (parse -> resolve ->
//! `DeliveryManager::builder()...start` with the registry): every error names the file,
//! the offending key and, where there is one, its line.

use statestream_tests::{Expect, Slots, TempHome, memory_store, recorder, start_from_config};

/// `[streamers.s]` is on line 4, its first key on line 5.
fn one(body: &str) -> String {
    format!("[store]\nstreamers = [\"s\"]\n\n[streamers.s]\n{body}")
}

struct Bad {
    what: &'static str,
    text: String,
    /// The key as spelled, shown in backticks.
    key: &'static str,
    line: Option<usize>,
    /// Part of the message that says what is wrong.
    fragment: &'static str,
}

fn bad(
    what: &'static str,
    text: String,
    key: &'static str,
    line: usize,
    fragment: &'static str,
) -> Bad {
    Bad {
        what,
        text,
        key,
        line: Some(line),
        fragment,
    }
}

#[test]
fn config_bad_configurations_name_the_key_and_line() {
    let cases = vec![
        bad(
            "streamers is not an array",
            "[store]\nstreamers = \"s\"\n".into(),
            "streamers",
            2,
            "expected an array",
        ),
        bad(
            "streamers holds a number",
            "[store]\nstreamers = [1]\n".into(),
            "streamers",
            2,
            "integer",
        ),
        bad(
            "listed streamer without a table",
            "[store]\nstreamers = [\"ghost\"]\n".into(),
            "streamers",
            2,
            "no [streamers.ghost] table",
        ),
        bad(
            "streamer listed twice",
            one("type = \"record\"\nkeys = [\"*\"]\n").replace("[\"s\"]", "[\"s\", \"s\"]"),
            "streamers",
            2,
            "listed twice",
        ),
        bad(
            "streamer table is not a table",
            "[store]\nstreamers = [\"s\"]\n\n[streamers]\ns = 1\n".into(),
            "s",
            5,
            "expected a table",
        ),
        bad(
            "keys missing",
            one("type = \"record\"\n"),
            "keys",
            4,
            "missing",
        ),
        bad(
            "keys is a string",
            one("type = \"record\"\nkeys = \"bank\"\n"),
            "keys",
            6,
            "expected an array of store names",
        ),
        bad(
            "star mixed with names",
            one("type = \"record\"\nkeys = [\"*\", \"bank\"]\n"),
            "keys",
            6,
            "cannot be combined",
        ),
        bad(
            "store listed twice",
            one("type = \"record\"\nkeys = [\"bank\", \"bank\"]\n"),
            "keys",
            6,
            "listed twice",
        ),
        bad(
            "unknown store",
            one("type = \"record\"\n\nkeys = [\"bank\", \"nope\"]\n"),
            "keys",
            7,
            "unknown store `nope`",
        ),
        bad(
            "invalid store name",
            one("type = \"record\"\nkeys = [\"ba/nk\"]\n"),
            "keys",
            6,
            "store name",
        ),
        bad(
            "delivery is neither sync nor async",
            one("type = \"record\"\nkeys = [\"*\"]\ndelivery = \"later\"\n"),
            "delivery",
            7,
            "expected one of \"sync\", \"async\"",
        ),
        bad(
            "queue zero",
            one("type = \"record\"\nkeys = [\"*\"]\nqueue = 0\n"),
            "queue",
            7,
            "at least 1",
        ),
        bad(
            "queue a string",
            one("type = \"record\"\nkeys = [\"*\"]\nqueue = \"big\"\n"),
            "queue",
            7,
            "expected a positive integer",
        ),
        bad(
            "queue too large",
            one("type = \"record\"\nkeys = [\"*\"]\nqueue = 2000000\n"),
            "queue",
            7,
            "at most",
        ),
        bad(
            "stop-node-on-error not a boolean",
            one("type = \"record\"\nkeys = [\"*\"]\nstop-node-on-error = \"yes\"\n"),
            "stop-node-on-error",
            7,
            "expected a boolean",
        ),
        bad(
            "two spellings of one key",
            one(
                "type = \"record\"\nkeys = [\"*\"]\nstop-node-on-error = true\nstop_node_on_error = false\n",
            ),
            "stop_node_on_error",
            8,
            "two spellings",
        ),
        bad(
            "type is empty",
            one("type = \"\"\nkeys = [\"*\"]\n"),
            "type",
            5,
            "non-empty string",
        ),
        bad(
            "unknown streamer type",
            one("type = \"nosuch\"\nkeys = [\"*\"]\n"),
            "type",
            5,
            "unknown type \"nosuch\" (known types: ",
        ),
        bad(
            "unknown type by table name",
            "[store]\nstreamers = [\"kafka\"]\n\n[streamers.kafka]\nkeys = [\"*\"]\n".into(),
            "type",
            4,
            "unknown type \"kafka\"",
        ),
        bad(
            "unknown option of the log type",
            one("type = \"log\"\nkeys = [\"*\"]\nevry = 2\n"),
            "evry",
            7,
            "unknown key",
        ),
        bad(
            "option of the wrong type",
            one("type = \"log\"\nkeys = [\"*\"]\n\nevery = \"often\"\n"),
            "every",
            8,
            "invalid type",
        ),
        bad(
            "option with the other spelling is reported as spelled",
            one("type = \"log\"\nkeys = [\"*\"]\nlog-every = 1\n"),
            "log-every",
            7,
            "unknown key",
        ),
        bad(
            "keys with a number",
            one("type = \"record\"\nkeys = [\"bank\", 3]\n"),
            "keys",
            6,
            "strings",
        ),
        Bad {
            what: "store is not a table",
            text: "store = 1\n".into(),
            key: "[store]",
            line: Some(1),
            fragment: "expected a table",
        },
    ];
    assert!(cases.len() >= 15);

    let mut failures = Vec::new();
    for case in &cases {
        let home = TempHome::new();
        let mut store = memory_store();
        let slots = Slots::new();
        let (rec, handle) = recorder("s", Expect::new());
        slots.put("s", rec);
        let err = match start_from_config(&case.text, &mut store, &slots.registry(), home.path()) {
            Ok(_) => {
                failures.push(format!("{}: accepted", case.what));
                continue;
            }
            Err(e) => e.to_string(),
        };
        handle.verify();
        let file = home.path().join("config/app.toml");
        let key = if case.key.starts_with('[') {
            case.key.to_string()
        } else {
            format!("`{}`", case.key)
        };
        let mut needles = vec![file.display().to_string(), key, case.fragment.to_string()];
        if let Some(line) = case.line {
            needles.push(format!("(line {line})"));
        }
        for needle in needles {
            if !err.contains(&needle) {
                failures.push(format!("{}: {needle:?} missing from: {err}", case.what));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn config_syntax_error_names_file_and_line() {
    let home = TempHome::new();
    let mut store = memory_store();
    let text = "[store]\nstreamers = [\"s\"\n";
    let err = start_from_config(text, &mut store, &Slots::new().registry(), home.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("app.toml"), "{err}");
    assert!(err.contains("line 2") || err.contains("line 3"), "{err}");
}

#[test]
fn config_good_file_with_every_common_key_starts() {
    let home = TempHome::new();
    let mut store = memory_store();
    let slots = Slots::new();
    let (rec, handle) = recorder("s", Expect::new().start(1).blocks(1..=3).close());
    slots.put("s", rec);
    let text = one(
        "type = \"record\"\nkeys = [\"*\"]\ndelivery = \"async\"\nqueue = 1\nstop_node_on_error = false\n",
    );
    let mut manager = start_from_config(&text, &mut store, &slots.registry(), home.path()).unwrap();
    statestream_tests::commit_workload(&mut manager, &mut store, 1..=3);
    manager.close(&mut store).unwrap();
    handle.verify();
}
