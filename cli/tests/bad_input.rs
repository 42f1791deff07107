//! Bad input through the `statestream` binary: malformed app.toml files, bad
//! command lines, corrupt or truncated block files, a corrupt store. Every
//! case must exit non-zero with exactly one `statestream: error:` line that
//! names what is wrong (the messages are asserted), and never show a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_statestream");

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn statestream<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("the binary runs");
    let run = Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "a panic: {run:#?}");
    assert!(!run.stderr.contains("RUST_BACKTRACE"), "a panic: {run:#?}");
    run
}

impl Run {
    /// Exit `code`, one error line, holding every fragment; the line.
    fn fails(&self, what: &str, code: i32, fragments: &[&str]) -> String {
        assert_eq!(
            self.code, code,
            "{what}: expected exit {code}, got {self:#?}"
        );
        let lines: Vec<_> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("statestream: error: "))
            .collect();
        assert_eq!(lines.len(), 1, "{what}: expected one error line: {self:#?}");
        assert_eq!(
            self.stderr.lines().count(),
            1,
            "{what}: stderr holds more than the error line: {self:#?}"
        );
        for f in fragments {
            assert!(lines[0].contains(f), "{what}: {:?} lacks {f:?}", lines[0]);
        }
        lines[0].to_string()
    }
}

fn p(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// `[streamers.f]` is on line 4; its first key on line 5.
const HEAD: &str = "[store]\nstreamers = [\"f\"]\n\n[streamers.f]\n";

/// A file streamer table whose next key is on line 7.
fn file(rest: &str) -> String {
    format!("{HEAD}type = \"file\"\nkeys = [\"*\"]\n{rest}")
}

#[test]
fn bad_input_app_toml_files() {
    let long_prefix = format!("prefix = \"{}\"\n", "p".repeat(129));
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "listed without a table",
            "[store]\nstreamers = [\"f\"]\n".into(),
            vec!["[store] key `streamers` (line 2)", "no [streamers.f] table"],
        ),
        (
            "streamers is a string",
            "[store]\nstreamers = \"f\"\n".into(),
            vec!["key `streamers` (line 2)", "expected an array"],
        ),
        (
            "streamers holds a number",
            "[store]\nstreamers = [1]\n".into(),
            vec!["key `streamers` (line 2)", "got integer 1"],
        ),
        (
            "streamer listed twice",
            "[store]\nstreamers = [\"f\", \"f\"]\n[streamers.f]\nkeys = [\"*\"]\n".into(),
            vec!["key `streamers` (line 2)", "listed twice"],
        ),
        (
            "bad streamer name",
            "[store]\nstreamers = [\"a b\"]\n".into(),
            vec!["key `streamers`", "invalid name \"a b\""],
        ),
        (
            "keys missing",
            format!("{HEAD}type = \"file\"\n"),
            vec!["[streamers.f] key `keys` (line 4)", "missing"],
        ),
        (
            "keys is a string",
            format!("{HEAD}keys = \"*\"\n"),
            vec!["key `keys` (line 5)", "expected an array of store names"],
        ),
        (
            "star mixed with names",
            format!("{HEAD}keys = [\"*\", \"acc\"]\n"),
            vec!["key `keys` (line 5)", "cannot be combined"],
        ),
        (
            "unknown store",
            format!("{HEAD}keys = [\"nope\"]\n"),
            vec![
                "key `keys` (line 5)",
                "unknown store `nope`",
                "acc, bank, params, tmp",
            ],
        ),
        (
            "unknown type",
            format!("{HEAD}type = \"ftp\"\nkeys = [\"*\"]\n"),
            vec!["key `type` (line 5)", "unknown type \"ftp\"", "file, log"],
        ),
        (
            "type is a number",
            format!("{HEAD}type = 3\nkeys = [\"*\"]\n"),
            vec!["key `type` (line 5)", "got integer 3"],
        ),
        (
            "bad delivery",
            file("delivery = \"later\"\n"),
            vec!["key `delivery` (line 7)", "\"sync\", \"async\""],
        ),
        (
            "queue 0",
            file("queue = 0\n"),
            vec!["key `queue` (line 7)", "at least 1"],
        ),
        (
            "queue too large",
            file("queue = 100000000\n"),
            vec!["key `queue` (line 7)", "at most 1000000"],
        ),
        (
            "negative queue",
            file("queue = -1\n"),
            vec!["key `queue` (line 7)", "got integer -1"],
        ),
        (
            // "64" is 64, as Cosmos reads it; words are not numbers.
            "queue is a string of no digits",
            file("queue = \"sixty-four\"\n"),
            vec!["key `queue` (line 7)", "got string \"sixty-four\""],
        ),
        (
            "stop-node-on-error is a string",
            file("stop-node-on-error = \"yes\"\n"),
            vec!["key `stop-node-on-error` (line 7)", "expected a boolean"],
        ),
        (
            "a key in both spellings",
            file("stop-node-on-error = true\nstop_node_on_error = false\n"),
            vec!["key `stop_node_on_error` (line 8)", "two spellings"],
        ),
        (
            "misspelt key",
            file("wirte_dir = \"x\"\n"),
            vec![
                "key `wirte_dir` (line 7)",
                "unknown key",
                "expected one of `write_dir`",
            ],
        ),
        (
            "fsync is a string",
            file("fsync = \"no\"\n"),
            vec!["key `fsync` (line 7)", "expected a boolean"],
        ),
        (
            "output-metadata is a number",
            file("output-metadata = 1\n"),
            vec!["key `output-metadata` (line 7)", "expected a boolean"],
        ),
        (
            "write_dir is a number",
            file("write_dir = 5\n"),
            vec!["key `write_dir` (line 7)", "expected path string"],
        ),
        (
            "prefix ..",
            file("prefix = \"..\"\n"),
            vec![
                "key `prefix` (line 7)",
                "unsafe prefix \"..\"",
                "must not contain \"..\"",
            ],
        ),
        (
            "prefix with ..",
            file("prefix = \"a..b\"\n"),
            vec!["key `prefix` (line 7)", "must not contain \"..\""],
        ),
        (
            "prefix with /",
            file("prefix = \"a/b\"\n"),
            vec!["key `prefix` (line 7)", "plain file-name fragment"],
        ),
        (
            "absolute prefix",
            file("prefix = \"/etc/passwd\"\n"),
            vec!["key `prefix` (line 7)", "plain file-name fragment"],
        ),
        (
            "prefix with \\",
            file("prefix = \"a\\\\b\"\n"),
            vec!["key `prefix` (line 7)", "plain file-name fragment"],
        ),
        (
            "prefix with NUL",
            file("prefix = \"a\\u0000b\"\n"),
            vec!["key `prefix` (line 7)", "NUL or control characters"],
        ),
        (
            "prefix with a newline",
            file("prefix = \"a\\nb\"\n"),
            vec!["key `prefix` (line 7)", "NUL or control characters"],
        ),
        (
            "prefix with an escape character",
            file("prefix = \"a\\u001bb\"\n"),
            vec!["key `prefix` (line 7)", "NUL or control characters"],
        ),
        (
            "prefix too long",
            file(&long_prefix),
            vec!["key `prefix` (line 7)", "at most 128 bytes"],
        ),
        (
            "prefix is a number",
            file("prefix = 7\n"),
            vec!["key `prefix` (line 7)", "expected a string"],
        ),
        (
            "unclosed table header",
            "[store\nstreamers = []\n".into(),
            vec!["invalid toml at line 1", "unclosed table"],
        ),
        (
            "table given twice",
            "[store]\nstreamers = []\n[store]\nstreamers = []\n".into(),
            vec!["invalid toml at line 3", "duplicate key"],
        ),
        (
            "key given twice",
            "[store]\nstreamers = []\nstreamers = []\n".into(),
            vec!["invalid toml at line 3", "duplicate key"],
        ),
        (
            "store is not a table",
            "store = 1\n".into(),
            vec!["[store] (line 1)", "expected a table"],
        ),
        (
            "a streamer is not a table",
            "[store]\nstreamers = [\"f\"]\n[streamers]\nf = 1\n".into(),
            vec!["[streamers] key `f` (line 4)", "expected a table"],
        ),
        (
            "NUL byte",
            "[store]\0\n".into(),
            vec!["invalid toml at line 1"],
        ),
        (
            "process without command",
            format!("{HEAD}type = \"process\"\nkeys = [\"*\"]\n"),
            vec!["key `command`", "missing key `command`"],
        ),
        (
            "process with an empty command",
            format!("{HEAD}type = \"process\"\nkeys = [\"*\"]\ncommand = []\n"),
            vec!["key `command` (line 7)", "must name the program"],
        ),
        (
            "process program missing",
            format!(
                "{HEAD}type = \"process\"\nkeys = [\"*\"]\ncommand = [\"/nonexistent/plugin\"]\n"
            ),
            vec![
                "key `command` (line 7)",
                "\"/nonexistent/plugin\" not found",
            ],
        ),
        (
            "process timeout is a string",
            format!(
                "{HEAD}type = \"process\"\nkeys = [\"*\"]\ncommand = [\"cat\"]\ntimeout_ms = \"x\"\n"
            ),
            vec![
                "key `timeout_ms` (line 8)",
                "invalid type: string \"x\", expected an integer (or a string of decimal digits)",
            ],
        ),
        (
            "log every 0",
            format!("{HEAD}type = \"log\"\nkeys = [\"*\"]\nevery = 0\n"),
            vec!["key `every` (line 7)", "at least 1"],
        ),
        (
            "log with an unknown key",
            format!("{HEAD}type = \"log\"\nkeys = [\"*\"]\nfoo = 1\n"),
            vec!["key `foo` (line 7)", "unknown key `foo`"],
        ),
    ];
    assert!(cases.len() >= 25);
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    for (i, (what, text, fragments)) in cases.iter().enumerate() {
        let config = tmp.path().join(format!("app-{i}.toml"));
        std::fs::write(&config, text).unwrap();
        let run = statestream([
            "node",
            "--home",
            p(&home),
            "--config",
            p(&config),
            "--blocks",
            "1",
        ]);
        let line = run.fails(what, 1, fragments);
        assert!(
            line.contains(p(&config)),
            "{what}: the file is not named: {line}"
        );
    }
    // None of them committed anything.
    assert!(!home.join("data/streaming/block-1-data").exists());

    // Not UTF-8: the file cannot even be read as text.
    let config = tmp.path().join("latin1.toml");
    std::fs::write(&config, b"[store]\nstreamers = [\"\xe9\"]\n").unwrap();
    statestream(["node", "--home", p(&home), "--config", p(&config)]).fails(
        "not UTF-8",
        1,
        &[p(&config), "cannot read the config file", "UTF-8"],
    );
    // A directory, not a file.
    statestream(["node", "--home", p(&home), "--config", p(tmp.path())]).fails(
        "config is a directory",
        1,
        &[p(tmp.path()), "cannot read the config file"],
    );
}

#[test]
fn bad_input_command_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let a_file = t.join("a-file");
    std::fs::write(&a_file, "x").unwrap();
    let (af, td) = (p(&a_file), p(t));
    let usage: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        ("no subcommand", vec![], vec![]),
        ("unknown subcommand", vec!["frobnicate"], vec!["frobnicate"]),
        ("node without --home", vec!["node"], vec!["--home"]),
        (
            "--home without a value",
            vec!["node", "--home"],
            vec!["--home"],
        ),
        (
            "--blocks not a number",
            vec!["node", "--home", td, "--blocks", "many"],
            vec!["--blocks", "many"],
        ),
        (
            "--blocks negative",
            vec!["node", "--home", td, "--blocks", "-1"],
            vec!["-1"],
        ),
        (
            "--seed not a number",
            vec!["node", "--home", td, "--seed", "abc"],
            vec!["--seed", "abc"],
        ),
        (
            "--writes-per-block not a number",
            vec!["node", "--home", td, "--writes-per-block", "x"],
            vec!["--writes-per-block"],
        ),
        ("unknown flag", vec!["dump", "--bogus", td], vec!["--bogus"]),
        ("verify without DIR", vec!["verify"], vec!["DIR"]),
        ("replay without --into", vec!["replay", td], vec!["--into"]),
        (
            "dump --from not a number",
            vec!["dump", td, "--from", "x"],
            vec!["--from"],
        ),
        (
            "tail --poll-ms not a number",
            vec!["tail", td, "--poll-ms", "soon"],
            vec!["--poll-ms"],
        ),
        (
            "two directories",
            vec!["stats", td, td],
            vec!["unexpected argument"],
        ),
    ];
    for (what, args, fragments) in &usage {
        let run = statestream(args);
        if args.is_empty() {
            // clap prints the help on stderr and exits 2.
            assert_eq!(run.code, 2, "{what}: {run:#?}");
            continue;
        }
        let mut all = fragments.clone();
        all.push("see `statestream --help`");
        run.fails(what, 2, &all);
    }

    let missing = t.join("missing");
    let ms = p(&missing);
    let empty = t.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let es = p(&empty);
    let failures: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        ("home is a file", vec!["node", "--home", af], vec![af]),
        ("dump a missing dir", vec!["dump", ms], vec![ms]),
        ("stats an empty dir", vec!["stats", es], vec![es]),
        ("tail a missing dir", vec!["tail", ms], vec![ms]),
        (
            "replay an empty dir",
            vec!["replay", es, "--into", ms],
            vec![es],
        ),
        (
            "dump with an unsafe prefix",
            vec!["dump", es, "--prefix", "../x"],
            vec!["prefix"],
        ),
    ];
    for (what, args, fragments) in &failures {
        statestream(args).fails(what, 1, fragments);
    }
    // verify: the check could not be made (exit 2), not a failed check.
    for (what, args, fragments) in [
        ("verify a missing dir", vec!["verify", ms], vec![ms]),
        ("verify a file", vec!["verify", af], vec![af]),
        ("verify an empty dir", vec!["verify", es], vec![es]),
    ] {
        statestream(&args).fails(what, 2, &fragments);
    }

    // A home whose seed file is not a number, and one made with another seed.
    let home = t.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("demo-seed"), "forty-two\n").unwrap();
    statestream(["node", "--home", p(&home), "--blocks", "1"]).fails(
        "bad seed file",
        1,
        &["demo-seed", "not a seed"],
    );
    std::fs::write(home.join("demo-seed"), "42\n").unwrap();
    statestream(["node", "--home", p(&home), "--blocks", "1", "--seed", "7"]).fails(
        "seed mismatch",
        1,
        &["--seed 42"],
    );
}

/// A directory of six blocks written by the node, with metadata files.
fn blocks_dir(tmp: &Path) -> PathBuf {
    let home = tmp.join("home");
    let run = statestream(["node", "--home", p(&home), "--blocks", "6", "-q"]);
    assert_eq!(run.code, 0, "{run:#?}");
    home.join("data/streaming")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn header(len: u64) -> Vec<u8> {
    len.to_be_bytes().to_vec()
}

type Corrupt = Box<dyn Fn(&Path)>;

#[test]
fn bad_input_corrupt_block_files() {
    let tmp = tempfile::tempdir().unwrap();
    let src = blocks_dir(tmp.path());
    let write = |d: &Path, n: &str, b: &[u8]| std::fs::write(d.join(n), b).unwrap();
    let without_meta = |d: &Path, data: &[u8]| {
        std::fs::remove_file(d.join("block-3-meta")).unwrap();
        std::fs::write(d.join("block-3-data"), data).unwrap();
    };
    // (what, the file named, fragment of the reason, the corruption)
    let cases: Vec<(&str, &str, &str, Corrupt)> = vec![
        (
            "empty data file",
            "block-3-data",
            "truncated header at offset 0: the file holds 0 bytes",
            Box::new(move |d| write(d, "block-3-data", b"")),
        ),
        (
            "data file cut inside its header",
            "block-3-data",
            "truncated header at offset 0: the file holds 5 bytes",
            Box::new(move |d| {
                let b = std::fs::read(d.join("block-3-data")).unwrap();
                write(d, "block-3-data", &b[..5]);
            }),
        ),
        (
            "data file cut inside its payload",
            "block-3-data",
            "length mismatch: the header at offset 0 announces",
            Box::new(move |d| {
                let b = std::fs::read(d.join("block-3-data")).unwrap();
                write(d, "block-3-data", &b[..b.len() - 7]);
            }),
        ),
        (
            "bytes after the payload",
            "block-3-data",
            "length mismatch: the header at offset 0 announces",
            Box::new(move |d| {
                let mut b = std::fs::read(d.join("block-3-data")).unwrap();
                b.extend_from_slice(b"xx");
                write(d, "block-3-data", &b);
            }),
        ),
        (
            "huge length header",
            "block-3-data",
            "announces 9223372036854775808 payload bytes",
            Box::new(move |d| {
                let mut b = std::fs::read(d.join("block-3-data")).unwrap();
                b[..8].copy_from_slice(&(1u64 << 63).to_be_bytes());
                write(d, "block-3-data", &b);
            }),
        ),
        (
            "flipped payload byte",
            "block-3-data",
            "crc mismatch",
            Box::new(move |d| {
                let mut b = std::fs::read(d.join("block-3-data")).unwrap();
                b[20] ^= 0x55;
                write(d, "block-3-data", &b);
            }),
        ),
        (
            "data file of another block",
            "block-3-data",
            "length mismatch: the meta file says the payload holds",
            Box::new(move |d| {
                std::fs::copy(d.join("block-2-data"), d.join("block-3-data")).unwrap();
            }),
        ),
        (
            "empty meta file",
            "block-3-meta",
            "truncated header at offset 0: the file holds 0 bytes",
            Box::new(move |d| write(d, "block-3-meta", b"")),
        ),
        (
            "meta file cut short",
            "block-3-meta",
            "length mismatch: the header at offset 0 announces",
            Box::new(move |d| {
                let b = std::fs::read(d.join("block-3-meta")).unwrap();
                write(d, "block-3-meta", &b[..b.len() - 3]);
            }),
        ),
        (
            "meta file of garbage",
            "block-3-meta",
            "block metadata does not decode at offset 8",
            Box::new(move |d| {
                let mut b = header(3);
                b.extend_from_slice(&[0xff; 3]);
                write(d, "block-3-meta", &b);
            }),
        ),
        (
            "meta file of another block",
            "block-3-meta",
            "height mismatch: the metadata says height 2, the file name 3",
            Box::new(move |d| {
                std::fs::copy(d.join("block-2-meta"), d.join("block-3-meta")).unwrap();
            }),
        ),
        (
            "record length not a varint",
            "block-3-data",
            "bad record at offset 8: truncated record length",
            Box::new(move |d| {
                let mut b = header(10);
                b.extend_from_slice(&[0xff; 10]);
                without_meta(d, &b);
            }),
        ),
        (
            "record runs past the end",
            "block-3-data",
            "bad record at offset 8: record length runs past the end",
            Box::new(move |d| {
                let mut b = header(2);
                b.extend_from_slice(&[0x7f, 0x0a]);
                without_meta(d, &b);
            }),
        ),
        (
            "record of garbage",
            "block-3-data",
            "bad record at offset 8: truncated field tag",
            Box::new(move |d| {
                let mut b = header(4);
                b.extend_from_slice(&[0x03, 0xff, 0xff, 0xff]);
                without_meta(d, &b);
            }),
        ),
        (
            "flipped length byte inside a record",
            "block-3-data",
            "bad record at offset 8: field length runs past the end of the record",
            Box::new(move |d| {
                let mut b = std::fs::read(d.join("block-3-data")).unwrap();
                b[9] ^= 0x80;
                without_meta(d, &b);
            }),
        ),
        (
            "data file is a directory",
            "block-3-data",
            "cannot read",
            Box::new(move |d| {
                std::fs::remove_file(d.join("block-3-data")).unwrap();
                std::fs::create_dir(d.join("block-3-data")).unwrap();
            }),
        ),
        (
            "data file is a dangling symlink",
            "block-3-data",
            "block 3 has no data file",
            Box::new(move |d| {
                std::fs::remove_file(d.join("block-3-data")).unwrap();
                std::os::unix::fs::symlink("/nonexistent/block", d.join("block-3-data")).unwrap();
            }),
        ),
    ];
    assert!(cases.len() >= 10);
    for (i, (what, file, reason, corrupt)) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("case-{i}"));
        copy_dir(&src, &dir);
        corrupt(&dir);
        let named = dir.join(file);
        let ds = p(&dir);
        let into = tmp.path().join(format!("replay-{i}"));
        for args in [
            vec!["verify", ds],
            vec!["dump", ds],
            vec!["replay", ds, "--into", p(&into)],
            vec!["tail", ds, "--from", "1"],
            vec!["stats", ds],
            vec!["dump", ds, "--mmap", "--json"],
        ] {
            let run = statestream(&args);
            run.fails(&format!("{what}: {}", args[0]), 1, &[p(&named), reason]);
        }
    }
}

#[test]
fn bad_input_missing_block_is_named_by_verify_and_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = blocks_dir(tmp.path());
    std::fs::remove_file(dir.join("block-3-data")).unwrap();
    let named = dir.join("block-3-data");
    statestream(["verify", p(&dir)]).fails(
        "gap",
        1,
        &[
            p(&named),
            "block 3 is missing (the heights jump from 2 to 4)",
        ],
    );
    let into = tmp.path().join("replay");
    statestream(["replay", p(&dir), "--into", p(&into)]).fails(
        "gap",
        1,
        &[p(&named), "block 3 is missing"],
    );
}

/// Records that no store could have written (an invalid store name, an
/// empty key) are caught by `verify` even without a meta file, and named.
#[test]
fn bad_input_records_no_store_could_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = blocks_dir(tmp.path());
    let named = dir.join("block-3-data");
    // One StoreKVPair each, uvarint-delimited: store "", key "k", value "v";
    // then store "bank", empty key, value "v".
    let cases: [(&[u8], &str); 2] = [
        (
            &[6, 0x1a, 1, b'k', 0x22, 1, b'v'],
            "record 0: invalid store key \"\": it is empty",
        ),
        (
            &[9, 0x0a, 4, b'b', b'a', b'n', b'k', 0x22, 1, b'v'],
            "record 0 (store bank) has an empty key",
        ),
    ];
    for (payload, reason) in cases {
        let _ = std::fs::remove_file(dir.join("block-3-meta"));
        let mut data = header(payload.len() as u64);
        data.extend_from_slice(payload);
        std::fs::write(&named, &data).unwrap();
        statestream(["verify", p(&dir)]).fails(reason, 1, &[p(&named), reason]);
    }
}

/// redb itself panics on some corrupt database files (an index out of range,
/// an `unwrap` on bad UTF-8, "Malformed allocator state"). The binary must
/// still answer with one line and exit 1. The offsets below were found by
/// flipping bytes of an older layout of the store.
#[test]
fn bad_input_corrupt_store_is_one_line_never_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("app.toml");
    std::fs::write(
        &config,
        "[store]\nstreamers = [\"file\"]\n[streamers.file]\nkeys = [\"*\"]\ndelivery = \"sync\"\n",
    )
    .unwrap();
    let base = tmp.path().join("base");
    let run = statestream([
        "node",
        "--home",
        p(&base),
        "--config",
        p(&config),
        "--blocks",
        "20",
    ]);
    assert_eq!(run.code, 0, "{run:#?}");
    let store = std::fs::read(base.join("data/store.redb")).unwrap();

    let mut internal = 0;
    for offset in [
        8192usize, 8197, 8202, 20480, 4171, 8245, 8730, 16393, 20564, 20661, 0, 100, 4096, 4109,
        4148, 4213,
    ] {
        let home = tmp.path().join(format!("flip-{offset}"));
        std::fs::create_dir_all(home.join("data")).unwrap();
        std::fs::copy(base.join("demo-seed"), home.join("demo-seed")).unwrap();
        let mut bytes = store.clone();
        bytes[offset] ^= 0xff;
        std::fs::write(home.join("data/store.redb"), &bytes).unwrap();
        let run = statestream([
            "node",
            "--home",
            p(&home),
            "--config",
            p(&config),
            "--blocks",
            "1",
            "-q",
        ]);
        if run.code == 0 {
            continue; // a byte redb does not read on this path
        }
        let line = run.fails(&format!("flip at {offset}"), 1, &[]);
        if line.contains("internal error: ") {
            assert!(line.contains(" (at "), "{line}");
            internal += 1;
        } else {
            assert!(line.contains("store.redb"), "{line}");
        }
        // With --verify-store the damage is found by the checksums at open:
        // an error about the store, never the engine's panic.
        std::fs::write(home.join("data/store.redb"), &bytes).unwrap();
        let _ = std::fs::remove_dir_all(home.join("data/streaming"));
        let verified = statestream([
            "node",
            "--home",
            p(&home),
            "--config",
            p(&config),
            "--blocks",
            "1",
            "-q",
            "--verify-store",
        ]);
        let line = verified.fails(&format!("flip at {offset}, verified"), 1, &["store.redb"]);
        assert!(!line.contains("internal error"), "{line}");
    }
    // The store's layout changed with its system tables (credentials,
    // run-time streamers): a scan of 4,000+ offsets found no flip that
    // makes redb panic on this path any more, so the count is reported,
    // not required; every flip above must still be one line and exit 1.
    eprintln!("flips that reached the panic hook: {internal}");
}

#[test]
fn bad_input_store_that_is_not_a_database() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join("data")).unwrap();
    std::fs::write(home.join("data/store.redb"), b"this is not a redb file").unwrap();
    statestream(["node", "--home", p(&home), "--blocks", "1"]).fails(
        "garbage store",
        1,
        &["cannot open the store", "store.redb"],
    );
    let run = statestream(["node", "--home", p(&home), "--blocks", "1"]);
    assert!(run.stdout.is_empty(), "{run:#?}");
}

/// `--no-fsync` with a `serve` streamer accepting `PushUpdate` is refused at
/// start, naming the key, its line and the flag, before anything is
/// created; either one alone runs.
#[test]
fn bad_input_no_fsync_refuses_push_updates() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("app.toml");
    let table = |push: &str| {
        format!(
            "[store]\nstreamers = [\"serve\"]\n\n[streamers.serve]\nkeys = [\"*\"]\n\
             grpc_address = \"127.0.0.1:0\"\npush_updates = {push}\n"
        )
    };
    // Cosmos-style string booleans are read as booleans too.
    for push in ["true", "\"true\""] {
        let home = tmp.path().join("refused");
        std::fs::write(&config, table(push)).unwrap();
        let line = statestream([
            "node",
            "--home",
            p(&home),
            "--config",
            p(&config),
            "--blocks",
            "1",
            "--no-fsync",
        ])
        .fails(
            "--no-fsync with push_updates",
            1,
            &[
                p(&config),
                "[streamers.serve]",
                "push_updates",
                "(line 7)",
                "--no-fsync",
                "set push_updates = false",
            ],
        );
        assert!(!home.exists(), "{line}: the home was created");
    }
    for (push, flags) in [("true", &[][..]), ("false", &["--no-fsync"][..])] {
        std::fs::write(&config, table(push)).unwrap();
        let home = tmp.path().join(format!("runs-{push}"));
        let mut args = vec!["node", "--home", p(&home), "--config", p(&config)];
        args.extend(["--blocks", "1"]);
        args.extend(flags);
        let run = statestream(&args);
        assert_eq!(run.code, 0, "push_updates = {push} {flags:?}: {run:#?}");
    }
}
