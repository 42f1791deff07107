//! `statestream config check` validates without building: every TOML
//! example of the documentation passes it, a configuration with a streamer
//! of every type passes it with nothing created, no port bound and no
//! connection made, and two streamers that would write the same place are
//! refused by it and by the node at start, naming both.

mod common;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BIN, p};

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success, got {self:#?}");
        self
    }

    fn fails(self, fragments: &[&str]) -> Run {
        assert_eq!(self.code, 1, "expected exit 1, got {self:#?}");
        for fragment in fragments {
            assert!(
                self.stderr.contains(fragment),
                "stderr lacks {fragment:?}: {self:#?}"
            );
        }
        self
    }
}

/// Runs the binary in `cwd` (relative paths of a `process` command are
/// under the current directory).
fn statestream_in(cwd: &Path, args: &[&str]) -> Run {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "error")
        .env_remove("PGPASSWORD")
        .output()
        .expect("the binary runs");
    let run = Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "a panic: {run:#?}");
    run
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the cli crate is in the workspace")
        .to_path_buf()
}

/// A home with `text` as its `config/app.toml`.
fn home_with(tmp: &Path, text: &str) -> PathBuf {
    let home = tmp.join("home");
    std::fs::create_dir_all(home.join("config")).expect("create the home");
    std::fs::write(home.join("config/app.toml"), text).expect("write app.toml");
    home
}

/// Every path under `dir`, relative to it.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            out.insert(path.strip_prefix(root).expect("under root").to_path_buf());
            if path.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// The ```toml blocks of a Markdown file: (first line number, info string,
/// text).
fn toml_blocks(markdown: &str) -> Vec<(usize, String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        match open.take() {
            None => {
                if let Some(info) = line.trim_start().strip_prefix("```")
                    && info.split_whitespace().next() == Some("toml")
                {
                    open = Some((i + 1, info.trim().to_string(), String::new()));
                }
            }
            Some((start, info, mut text)) => {
                if line.trim_start().starts_with("```") {
                    blocks.push((start, info, text));
                } else {
                    text.push_str(line);
                    text.push('\n');
                    open = Some((start, info, text));
                }
            }
        }
    }
    assert!(open.is_none(), "a ```toml block is not closed");
    blocks
}

/// The documents whose examples are checked: README.md and docs/*.md.
fn documents() -> Vec<PathBuf> {
    let root = repo_root();
    let mut docs = vec![root.join("README.md")];
    let mut more: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("read docs/")
        .map(|e| e.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    more.sort();
    docs.extend(more);
    docs
}

/// The rule: every ```toml block of README.md and docs/*.md is a whole
/// app.toml, and `config check` must accept it as the configuration of a
/// fresh home, creating nothing there. The one exception is a block whose
/// info string says `partial` (```` ```toml partial ````): an excerpt
/// (one table to add to a configuration shown before it, a `[telemetry]`
/// table), which must still be valid TOML.
#[test]
fn config_check_accepts_every_documented_example() {
    let mut checked = 0;
    for doc in documents() {
        let markdown = std::fs::read_to_string(&doc).expect("read the document");
        for (line, info, text) in toml_blocks(&markdown) {
            let at = format!("{}:{line}", doc.display());
            if info.split_whitespace().any(|word| word == "partial") {
                text.parse::<toml::Table>()
                    .unwrap_or_else(|e| panic!("{at}: a partial example is not TOML: {e}"));
                continue;
            }
            assert!(
                text.contains("[store]"),
                "{at}: a ```toml block without [store] is not a whole app.toml: \
                 mark it ```toml partial if it is an excerpt"
            );
            let tmp = tempfile::tempdir().expect("temp dir");
            let home = home_with(tmp.path(), &text);
            let before = tree(&home);
            let run = statestream_in(&repo_root(), &["config", "check", "--home", p(&home)]);
            assert_eq!(run.code, 0, "{at}: config check refused it: {run:#?}");
            assert_eq!(tree(&home), before, "{at}: config check created files");
            checked += 1;
        }
    }
    // README.md, config, nats, postgres, serve, webhook, plugin-protocol.
    assert!(checked >= 7, "only {checked} whole examples found");
}

/// A listener on a port of the system's choice, which nobody else can bind
/// while it is held; non-blocking, so that `accept` tells whether anything
/// connected.
fn held_port() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    listener.set_nonblocking(true).expect("non-blocking");
    let address = listener.local_addr().expect("bound address").to_string();
    (listener, address)
}

fn assert_untouched(listener: &TcpListener, what: &str) {
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("config check connected to the {what} (from {peer})"),
        Err(e) => panic!("accept on the {what}'s port: {e}"),
    }
}

#[test]
fn config_check_validates_every_type_and_creates_binds_and_starts_nothing() {
    let tmp = tempfile::tempdir().expect("temp dir");
    // Ports held by the test: a server binding them would fail, a client
    // connecting to them would be seen.
    let (grpc, grpc_address) = held_port();
    let (http, http_address) = held_port();
    let (telemetry, telemetry_address) = held_port();
    let (nats, nats_address) = held_port();
    let (postgres, postgres_address) = held_port();
    let (hook, hook_address) = held_port();
    let (pg_host, pg_port) = postgres_address.split_once(':').expect("host:port");
    let marker = tmp.path().join("plugin-ran");
    let text = format!(
        r#"[store]
streamers = ["file", "log", "process", "nats", "postgres", "webhook", "serve"]

[streamers.file]
keys = ["*"]
write_dir = "data/streaming"

[streamers.log]
keys = ["*"]
every = 10

[streamers.process]
keys = ["bank"]
command = ["/bin/sh", "-c", "touch '{marker}'"]
working_dir = "plugins-home"

[streamers.nats]
keys = ["*"]
url = "nats://{nats_address}"

[streamers.postgres]
keys = ["bank"]
url = "host={pg_host} port={pg_port} user=statestream dbname=statestream"
tls = "disable"

[streamers.webhook]
keys = ["acc"]
url = "http://{hook_address}/hooks/{{store}}"
on_exhausted = "dead-letter"
dead_letter_dir = "data/webhook-dead"

[streamers.serve]
keys = ["*"]
grpc_address = "{grpc_address}"
http_address = "{http_address}"
push_updates = true
value_types = {{ bank = "int" }}

[telemetry]
address = "{telemetry_address}"
"#,
        marker = p(&marker),
    );
    let home = home_with(tmp.path(), &text);
    // The plugin's working directory must exist: the one thing made here.
    std::fs::create_dir(home.join("plugins-home")).expect("mkdir");
    let before = tree(&home);
    let run = statestream_in(tmp.path(), &["config", "check", "--home", p(&home)]).ok();
    assert!(
        run.stdout
            .contains("7 streamers run (file, log, process, nats, postgres, webhook, serve)"),
        "{run:#?}"
    );
    assert_eq!(
        tree(&home),
        before,
        "config check created files in the home"
    );
    assert!(!marker.exists(), "config check ran the plugin");
    for (listener, what) in [
        (&grpc, "gRPC address"),
        (&http, "HTTP address"),
        (&telemetry, "telemetry address"),
        (&nats, "NATS server"),
        (&postgres, "PostgreSQL server"),
        (&hook, "webhook receiver"),
    ] {
        assert_untouched(listener, what);
    }

    // The same checks still find what is wrong with each type, all at once.
    let bad = text
        .replace("every = 10", "every = 0")
        .replace("/bin/sh", "/no/such/program")
        .replace("url = \"nats://", "replicas = 9\nurl = \"nats://")
        .replace(
            "tls = \"disable\"",
            "tls = \"disable\"\nschema = \"Bad-Schema\"",
        )
        .replace("dead_letter_dir", "method = \"GET\"\ndead_letter_dir")
        .replace("push_updates = true", "heartbeat_ms = 0");
    let home = home_with(&tmp.path().join("bad"), &bad);
    std::fs::create_dir(home.join("plugins-home")).expect("mkdir");
    let run = statestream_in(tmp.path(), &["config", "check", "--home", p(&home)]).fails(&[
        "[streamers.log] key `every`",
        "[streamers.process] key `command`",
        "[streamers.nats] key `replicas`",
        "[streamers.postgres] key `schema`",
        "[streamers.webhook] key `method`",
        "[streamers.serve] key `heartbeat_ms`",
    ]);
    assert_eq!(
        run.stderr
            .lines()
            .filter(|l| l.starts_with("statestream: error: "))
            .count(),
        6,
        "{run:#?}"
    );
}

/// Two streamers writing one place: refused by `config check` and by the
/// node before it builds anything, naming both.
fn refused_twice(text: &str, fragments: &[&str]) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let home = home_with(tmp.path(), text);
    let before = tree(&home);
    statestream_in(tmp.path(), &["config", "check", "--home", p(&home)]).fails(fragments);
    statestream_in(tmp.path(), &["node", "--home", p(&home), "--blocks", "1"]).fails(fragments);
    // The node's own files (its store, its seed) may be there; nothing a
    // streamer makes.
    let node_files = [
        Path::new("data"),
        Path::new("data/store.redb"),
        Path::new("demo-seed"),
    ];
    let created: Vec<PathBuf> = tree(&home)
        .difference(&before)
        .filter(|path| !node_files.contains(&path.as_path()))
        .cloned()
        .collect();
    assert!(created.is_empty(), "the refused node created {created:?}");
}

#[test]
fn config_check_refuses_two_file_streamers_on_one_directory_and_prefix() {
    // The issue's case: different keys, the default write_dir and prefix.
    refused_twice(
        "[store]\nstreamers = [\"a\", \"b\"]\n\
         [streamers.a]\ntype = \"file\"\nkeys = [\"bank\"]\n\
         [streamers.b]\ntype = \"file\"\nkeys = [\"acc\"]\n",
        &[
            "streamers \"a\" and \"b\" both write to block files",
            "data/streaming\" with prefix \"\"",
        ],
    );
    // One directory spelled two ways, with one prefix.
    refused_twice(
        "[store]\nstreamers = [\"a\", \"b\"]\n\
         [streamers.a]\ntype = \"file\"\nkeys = [\"*\"]\nwrite_dir = \"out\"\nprefix = \"p\"\n\
         [streamers.b]\ntype = \"file\"\nkeys = [\"*\"]\nwrite_dir = \"./x/../out/\"\nprefix = \"p\"\n",
        &[
            "streamers \"a\" and \"b\" both write to block files",
            "with prefix \"p\"",
        ],
    );
}

#[test]
fn config_check_refuses_two_nats_streamers_on_one_stream_or_subject() {
    // Nothing listens: the refusal needs no server.
    refused_twice(
        "[store]\nstreamers = [\"n1\", \"n2\"]\n\
         [streamers.n1]\ntype = \"nats\"\nkeys = [\"bank\"]\nurl = \"nats://127.0.0.1:4222\"\n\
         [streamers.n2]\ntype = \"nats\"\nkeys = [\"acc\"]\nurl = \"127.0.0.1\"\n",
        &[
            "streamers \"n1\" and \"n2\" both write to NATS stream \"statestream\" on 127.0.0.1:4222",
        ],
    );
    refused_twice(
        "[store]\nstreamers = [\"n1\", \"n2\"]\n\
         [streamers.n1]\ntype = \"nats\"\nkeys = [\"*\"]\nstream = \"one\"\nsubject = \"s\"\n\
         [streamers.n2]\ntype = \"nats\"\nkeys = [\"*\"]\nstream = \"two\"\nsubject = \"s\"\n",
        &["streamers \"n1\" and \"n2\" both write to NATS subject \"s.blocks\""],
    );
}

#[test]
fn config_check_refuses_two_postgres_streamers_on_one_schema_and_store() {
    refused_twice(
        "[store]\nstreamers = [\"pg1\", \"pg2\"]\n\
         [streamers.pg1]\ntype = \"postgres\"\nkeys = [\"bank\"]\ntls = \"disable\"\n\
         [streamers.pg2]\ntype = \"postgres\"\nkeys = [\"acc\", \"bank\"]\ntls = \"disable\"\n",
        &[
            "streamers \"pg1\" and \"pg2\" both write to PostgreSQL 127.0.0.1:5432/statestream, schema statestream, table changes rows of store \"bank\"",
        ],
    );
}

#[test]
fn config_check_accepts_streamers_writing_distinct_places() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let home = home_with(
        tmp.path(),
        "[store]\nstreamers = [\"a\", \"b\", \"c\", \"n1\", \"n2\", \"pg1\", \"pg2\", \"pg3\"]\n\
         [streamers.a]\ntype = \"file\"\nkeys = [\"*\"]\n\
         [streamers.b]\ntype = \"file\"\nkeys = [\"*\"]\nprefix = \"b\"\n\
         [streamers.c]\ntype = \"file\"\nkeys = [\"*\"]\nwrite_dir = \"data/other\"\n\
         [streamers.n1]\ntype = \"nats\"\nkeys = [\"*\"]\n\
         [streamers.n2]\ntype = \"nats\"\nkeys = [\"*\"]\nstream = \"two\"\nsubject = \"two\"\n\
         [streamers.pg1]\ntype = \"postgres\"\nkeys = [\"bank\"]\ntls = \"disable\"\n\
         [streamers.pg2]\ntype = \"postgres\"\nkeys = [\"acc\"]\ntls = \"disable\"\n\
         [streamers.pg3]\ntype = \"postgres\"\nkeys = [\"bank\"]\nschema = \"other\"\ntls = \"disable\"\n",
    );
    let run = statestream_in(tmp.path(), &["config", "check", "--home", p(&home)]).ok();
    assert!(run.stdout.contains("8 streamers run"), "{run:#?}");
}

/// docs/config.md lists every key of every built-in type: the keys each
/// type expects (as its unknown-key error lists them) all appear, in either
/// spelling, in that type's section.
#[test]
fn config_md_lists_every_key_of_every_type() {
    let doc = std::fs::read_to_string(repo_root().join("docs/config.md")).expect("read config.md");
    let tmp = tempfile::tempdir().expect("temp dir");
    for type_name in [
        "file", "log", "process", "nats", "postgres", "webhook", "serve",
    ] {
        let heading = format!("## `type = \"{type_name}\"`");
        let start = doc
            .find(&heading)
            .unwrap_or_else(|| panic!("docs/config.md has no section {heading}"));
        let section = &doc[start..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
        let home = home_with(
            &tmp.path().join(type_name),
            &format!(
                "[store]\nstreamers = [\"s\"]\n[streamers.s]\ntype = \"{type_name}\"\nkeys = [\"*\"]\nzz_not_a_key = 1\n"
            ),
        );
        let run = statestream_in(tmp.path(), &["config", "check", "--home", p(&home)])
            .fails(&["unknown key `zz_not_a_key`"]);
        // serde's "expected one of `a`, `b`", or "expected `a`" for one.
        let expected = ["expected one of ", "expected "]
            .iter()
            .find_map(|lead| run.stderr.split(lead).nth(1))
            .unwrap_or_else(|| panic!("{type_name}: no list of keys: {run:#?}"));
        let keys: Vec<&str> = expected
            .lines()
            .next()
            .unwrap_or("")
            .split(", ")
            .map(|k| k.trim().trim_matches('`'))
            .collect();
        assert!(!keys.is_empty(), "{type_name}: {run:#?}");
        for key in keys {
            let hyphen = key.replace('_', "-");
            assert!(
                section.contains(&format!("`{key}`")) || section.contains(&format!("`{hyphen}`")),
                "docs/config.md's {heading} section lacks the key `{key}`"
            );
        }
    }
}

#[test]
fn config_check_reads_the_admin_token_file() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let home = home_with(
        tmp.path(),
        "[store]\nstreamers = []\n\n[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"admin-token\"\n",
    );
    statestream_in(tmp.path(), &["config", "check", "--home", p(&home)])
        .fails(&["[admin] key `token_file`", "admin-token"]);
    std::fs::write(home.join("admin-token"), "\n").expect("write the token file");
    statestream_in(tmp.path(), &["config", "check", "--home", p(&home)])
        .fails(&["the file is empty"]);
    std::fs::write(home.join("admin-token"), "s3cret\n").expect("write the token file");
    let run = statestream_in(tmp.path(), &["config", "check", "--home", p(&home)]).ok();
    assert!(!run.stdout.contains("s3cret") && !run.stderr.contains("s3cret"));
    statestream_in(
        tmp.path(),
        &[
            "config",
            "check",
            "--home",
            p(&home_with(
                &tmp.path().join("other"),
                "[store]\nstreamers = []\n\n[admin]\naddress = \"127.0.0.1:0\"\n",
            )),
        ],
    )
    .fails(&["needs `token_file`"]);
}
