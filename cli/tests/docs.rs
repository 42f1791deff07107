//! The documents cite only what exists: every file path and every test name
//! that README.md, ARCHITECTURE.md and docs/*.md mention is in the tree.
//!
//! What counts as a citation (the rule this test applies):
//! - a path: a `code span` whose text starts with a top-level directory of
//!   the repository and `/` (`store/src/kv.rs`, `cli/tests/`), without
//!   placeholders (`<`, `*`, `{`, `...`); a `::name` after it is a name in
//!   that file. Paths are relative to the repository root. A Markdown link
//!   to a local file is one too, relative to the document.
//! - a name: a `code span` that is a snake_case identifier of four words or
//!   more (`paths_write_dir_outside_the_home_and_file_modes`), the shape of
//!   this project's test names. It must be a function in the tree (`fn
//!   name` in Rust, `def name` in Python), or a key, field or figure name
//!   written in the sources (`name:`, `name =`, `"name`). A name from
//!   outside the project is listed in `EXTERNAL`.

use std::path::{Path, PathBuf};

/// Names the documents cite from other projects (a Linux function).
const EXTERNAL: &[&str] = &["ext4_block_write_begin"];

/// Code spans that start like a path but are notations: the datastream
/// keys of docs/serve.md (`store/key`, `store/prefix*`).
const NOT_PATHS: &[&str] = &["store/key", "store/prefix"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the cli crate is in the workspace")
        .to_path_buf()
}

fn documents(root: &Path) -> Vec<PathBuf> {
    let mut docs = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    let mut more: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("read docs/")
        .map(|e| e.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    more.sort();
    docs.extend(more);
    docs
}

/// The text of every source file of the tree (not `target/`, not hidden
/// directories, not the documents themselves).
fn sources(root: &Path) -> String {
    fn walk(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') || name == "target" || name == "node_modules" {
                continue;
            }
            if path.is_dir() {
                walk(&path, out);
            } else if ["rs", "py", "proto", "toml", "sh"]
                .iter()
                .any(|ext| path.extension().is_some_and(|e| e == *ext))
                && let Ok(text) = std::fs::read_to_string(&path)
            {
                out.push_str(&text);
                out.push('\n');
            }
        }
    }
    let mut out = String::new();
    walk(root, &mut out);
    out
}

/// The code spans of a Markdown text, outside fenced blocks, with their
/// line numbers. A span may go over a line break.
fn code_spans(markdown: &str) -> Vec<(usize, String)> {
    let mut prose = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            prose.push('\n');
            continue;
        }
        if !fenced {
            prose.push_str(line);
        }
        prose.push('\n');
    }
    let mut spans = Vec::new();
    let mut rest = prose.as_str();
    let mut line = 1;
    while let Some(start) = rest.find('`') {
        line += rest[..start].matches('\n').count();
        let after = &rest[start + 1..];
        let Some(end) = after.find('`') else { break };
        let text = after[..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        spans.push((line, text));
        line += after[..end].matches('\n').count();
        rest = &after[end + 1..];
    }
    spans
}

/// The local targets of the Markdown links of a text: `[text](target)`.
fn link_targets(markdown: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in markdown.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split('#').next().unwrap_or("");
            if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
                out.push((i + 1, target.to_string()));
            }
            rest = &after[end..];
        }
    }
    out
}

fn is_name(text: &str) -> bool {
    let words: Vec<&str> = text.split('_').collect();
    words.len() >= 4
        && text.starts_with(|c: char| c.is_ascii_lowercase())
        && words.iter().all(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
}

fn name_exists(sources: &str, name: &str) -> bool {
    EXTERNAL.contains(&name)
        || [
            format!("fn {name}("),
            format!("fn {name}<"),
            format!("def {name}("),
            format!("{name}:"),
            format!("{name} ="),
            format!("\"{name}"),
        ]
        .iter()
        .any(|form| sources.contains(form.as_str()))
}

#[test]
fn docs_cite_only_paths_and_names_that_exist() {
    let root = repo_root();
    let top: Vec<String> = std::fs::read_dir(&root)
        .expect("read the root")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .filter(|n| !n.starts_with('.') && n != "target")
        .collect();
    let sources = sources(&root);
    let mut missing = Vec::new();
    let (mut paths, mut names) = (0, 0);
    for doc in documents(&root) {
        let markdown = std::fs::read_to_string(&doc).expect("read the document");
        let shown = doc
            .strip_prefix(&root)
            .unwrap_or(&doc)
            .display()
            .to_string();
        for (line, text) in code_spans(&markdown) {
            let (path, name) = match text.split_once("::") {
                Some((path, name)) => (path, Some(name)),
                None => (text.as_str(), None),
            };
            let is_path = top.iter().any(|dir| {
                path.strip_prefix(dir.as_str())
                    .is_some_and(|r| r.starts_with('/'))
            }) && !path.contains(['<', '*', '{', ' ', '…'])
                && !path.contains("...")
                && !NOT_PATHS.contains(&path);
            if is_path {
                paths += 1;
                if !root.join(path).exists() {
                    missing.push(format!("{shown}:{line}: path `{path}` does not exist"));
                } else if let Some(name) = name.filter(|n| is_name(n)) {
                    names += 1;
                    let file = std::fs::read_to_string(root.join(path)).unwrap_or_default();
                    if !file.contains(&format!("fn {name}(")) {
                        missing.push(format!("{shown}:{line}: `{path}` has no `fn {name}`"));
                    }
                }
            } else if is_name(&text) {
                names += 1;
                if !name_exists(&sources, &text) {
                    missing.push(format!("{shown}:{line}: `{text}` is nowhere in the tree"));
                }
            }
        }
        let dir = doc.parent().expect("a document is in a directory");
        for (line, target) in link_targets(&markdown) {
            paths += 1;
            if !dir.join(&target).exists() {
                missing.push(format!(
                    "{shown}:{line}: link to `{target}`, which does not exist"
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the documents cite what does not exist:\n{}",
        missing.join("\n")
    );
    // The rule finds citations at all (a broken parser would pass).
    assert!(paths > 50 && names > 30, "{paths} paths, {names} names");
}

/// The ```rust block of `doc` after `heading`.
fn rust_block_after(doc: &str, heading: &str) -> String {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    let open = start
        + doc[start..]
            .find("```rust\n")
            .unwrap_or_else(|| panic!("no ```rust block after {heading:?}"))
        + "```rust\n".len();
    let close = open + doc[open..].find("\n```").expect("the block is closed") + 1;
    doc[open..close].to_string()
}

/// The embedding examples of the documents are compiled: each is, line for
/// line, between the markers of an example program that `cargo test`
/// builds.
#[test]
fn docs_rust_examples_are_compiled_examples() {
    let root = repo_root();
    for (doc, heading, example, marker) in [
        (
            "README.md",
            "## Use it in your node",
            "streaming/examples/embedding.rs",
            "README example",
        ),
        (
            "docs/serve.md",
            "## PushUpdate",
            "streaming/examples/push_updates.rs",
            "docs/serve.md example",
        ),
    ] {
        let text = std::fs::read_to_string(root.join(doc)).expect("read the document");
        let shown = rust_block_after(&text, heading);
        let program = std::fs::read_to_string(root.join(example)).expect("read the example");
        let begin = format!("// {marker}: begin\n");
        let end = format!("// {marker}: end\n");
        let from = program.find(&begin).expect("the begin marker") + begin.len();
        let to = program.find(&end).expect("the end marker");
        assert_eq!(
            shown,
            program[from..to],
            "the example of {doc} ({heading}) differs from {example}: copy one onto the other"
        );
    }
}
