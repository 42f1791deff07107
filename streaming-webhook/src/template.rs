//! Templates (`{store}`, `{key}`, `{height}`, `{action}` and the wildcards
//! of `key_pattern`) and the key pattern that binds the wildcards.
//!
//! Both are parsed once, when the streamer is built, so every mistake in
//! them is a configuration error and rendering cannot fail.

use std::fmt::Write as _;

/// The variables every change has, in the order the docs list them.
pub(crate) const BUILTIN_VARS: [&str; 4] = ["store", "key", "height", "action"];

/// Which variables a template may use where it is written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scope<'a> {
    /// `false` with `batch = "block"`: one request carries changes of
    /// several stores and keys, so only `{height}` has one value.
    pub(crate) per_change: bool,
    /// The wildcards of `key_pattern`, or `None` when it is not set.
    pub(crate) wildcards: Option<&'a [String]>,
}

/// How rendered values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escape {
    /// In a URL: every byte but the unreserved ones (RFC 3986) is
    /// percent-encoded, so a key with `/`, `?` or spaces stays one path
    /// segment.
    Url,
    /// In a header value: control characters are percent-encoded (they are
    /// not allowed in a header); everything else as is.
    Header,
    /// In JSON (`data`): as is; serde_json escapes what JSON needs.
    None,
}

/// The values of one change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Vars<'a> {
    pub(crate) store: &'a str,
    /// The key as the envelope writes it (UTF-8, else `0x` + hex).
    pub(crate) key: &'a str,
    pub(crate) height: u64,
    pub(crate) action: &'a str,
    /// Values of the key pattern's wildcards, in the pattern's order.
    pub(crate) wild: &'a [String],
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    Store,
    Key,
    Height,
    Action,
    /// Index into the key pattern's wildcards.
    Wild(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    pieces: Vec<Piece>,
}

/// Splits `text` into literals and `{name}`s; `{{` and `}}` are literal
/// braces. Errors quote `shown` (the text as it may be shown).
fn split(text: &str, shown: &str) -> Result<Vec<Result<String, String>>, String> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') | None => {
                            return Err(format!(
                                "unclosed '{{' in {shown:?} (write '{{{{' for a literal brace)"
                            ));
                        }
                        Some(c) => name.push(c),
                    }
                }
                if !lit.is_empty() {
                    out.push(Ok(std::mem::take(&mut lit)));
                }
                out.push(Err(name));
            }
            '}' => {
                return Err(format!(
                    "a lone '}}' in {shown:?} (write '}}}}' for a literal brace)"
                ));
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        out.push(Ok(lit));
    }
    Ok(out)
}

impl Template {
    /// Parses `text`; every variable must be known in `scope`.
    pub(crate) fn parse(text: &str, scope: Scope<'_>) -> Result<Template, String> {
        Template::parse_shown(text, text, scope)
    }

    /// Parses `text` as [`parse`](Template::parse) does; its errors quote
    /// `shown` instead (the text with its secrets redacted).
    pub(crate) fn parse_shown(
        text: &str,
        shown: &str,
        scope: Scope<'_>,
    ) -> Result<Template, String> {
        let mut pieces = Vec::new();
        for part in split(text, shown)? {
            let name = match part {
                Ok(lit) => {
                    pieces.push(Piece::Lit(lit));
                    continue;
                }
                Err(name) => name,
            };
            let builtin = match name.as_str() {
                "store" => Some(Var::Store),
                "key" => Some(Var::Key),
                "height" => Some(Var::Height),
                "action" => Some(Var::Action),
                _ => None,
            };
            let var = match builtin {
                Some(Var::Height) => Var::Height,
                Some(var) if scope.per_change => var,
                Some(_) => {
                    return Err(format!(
                        "{{{name}}} in {shown:?} has no single value with batch = \"block\" \
                         (only {{height}} does)"
                    ));
                }
                None => match scope.wildcards {
                    Some(w) => match w.iter().position(|n| *n == name) {
                        Some(_) if !scope.per_change => {
                            return Err(format!(
                                "{{{name}}} in {shown:?} has no single value with batch = \
                                 \"block\" (only {{height}} does)"
                            ));
                        }
                        Some(i) => Var::Wild(i),
                        None => {
                            return Err(unknown_var(&name, shown, w));
                        }
                    },
                    None if is_wildcard_name(&name) => {
                        return Err(format!(
                            "unknown template variable {{{name}}} in {shown:?}: not one of {}, \
                             and key_pattern is not set to define it as a wildcard",
                            BUILTIN_VARS.join(", ")
                        ));
                    }
                    None => return Err(unknown_var(&name, shown, &[])),
                },
            };
            pieces.push(Piece::Var(var));
        }
        Ok(Template { pieces })
    }

    /// Whether the template is plain text.
    #[cfg(test)]
    pub(crate) fn is_literal(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, Piece::Lit(_)))
    }

    /// For a URL template: an error unless the scheme and the host (the
    /// whole authority: user information, host, port) are literal text, so
    /// that no change's values choose where the request goes. Quotes
    /// `shown`.
    pub(crate) fn check_fixed_origin(&self, shown: &str) -> Result<(), String> {
        let mut prefix = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Lit(l) => prefix.push_str(l),
                Piece::Var(_) => {
                    let fixed = prefix
                        .split_once("://")
                        .is_some_and(|(_, rest)| rest.contains(['/', '?', '#']));
                    if !fixed {
                        return Err(format!(
                            "{shown:?} has a template variable in its scheme or host: a \
                             change's values must not choose where the request goes (use \
                             variables in the path or the query)"
                        ));
                    }
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The text with the variables replaced.
    pub(crate) fn render(&self, vars: &Vars<'_>, escape: Escape) -> String {
        let mut out = String::new();
        // Which bytes of `out` came from a variable (URLs only).
        let mut from_var: Vec<bool> = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Lit(l) => out.push_str(l),
                Piece::Var(v) => {
                    let height;
                    let value: &str = match v {
                        Var::Store => vars.store,
                        Var::Key => vars.key,
                        Var::Height => {
                            height = vars.height.to_string();
                            &height
                        }
                        Var::Action => vars.action,
                        Var::Wild(i) => vars.wild.get(*i).map_or("", String::as_str),
                    };
                    if escape == Escape::Url {
                        from_var.resize(out.len(), false);
                    }
                    escape_into(&mut out, value, escape);
                    if escape == Escape::Url {
                        from_var.resize(out.len(), true);
                    }
                }
            }
        }
        if escape == Escape::Url {
            from_var.resize(out.len(), false);
            escape_dot_segments(&out, &from_var)
        } else {
            out
        }
    }
}

/// `url` with every `.` that a variable put into a path segment of only
/// dots (`.` or `..`) written `%2E`: a value must not move the request to
/// another path (`/hooks/{id}/notify` with `id = ".."` is
/// `/hooks/%2E%2E/notify`, not `/hooks/../notify`, which is `/notify`).
/// Dot segments written in the template itself are refused when it is
/// checked.
fn escape_dot_segments(url: &str, from_var: &[bool]) -> String {
    let (start, end) = path_range(url);
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..start]);
    let mut pos = start;
    for segment in url[start..end].split('/') {
        let seg_end = pos + segment.len();
        if segment == "." || segment == ".." {
            for i in pos..seg_end {
                if from_var.get(i).copied().unwrap_or(false) {
                    out.push_str("%2E");
                } else {
                    out.push('.');
                }
            }
        } else {
            out.push_str(segment);
        }
        if seg_end < end {
            out.push('/');
        }
        pos = seg_end + 1;
    }
    out.push_str(&url[end..]);
    out
}

/// The byte range of the path of `url`: after the authority, up to the
/// query or the fragment.
pub(crate) fn path_range(url: &str) -> (usize, usize) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let start = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i);
    let end = url[start..]
        .find(['?', '#'])
        .map_or(url.len(), |i| start + i);
    (start, end)
}

fn unknown_var(name: &str, text: &str, wildcards: &[String]) -> String {
    let mut known: Vec<String> = BUILTIN_VARS.iter().map(|s| (*s).to_string()).collect();
    known.extend(wildcards.iter().cloned());
    format!(
        "unknown template variable {{{name}}} in {text:?} (known: {})",
        known.join(", ")
    )
}

fn escape_into(out: &mut String, value: &str, escape: Escape) {
    match escape {
        Escape::None => out.push_str(value),
        Escape::Header => {
            for c in value.chars() {
                if c.is_control() && c.is_ascii() {
                    let _ = write!(out, "%{:02X}", c as u32);
                } else {
                    out.push(c);
                }
            }
        }
        Escape::Url => {
            for b in value.bytes() {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    out.push(char::from(b));
                } else {
                    let _ = write!(out, "%{b:02X}");
                }
            }
        }
    }
}

/// A wildcard name: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_wildcard_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternPiece {
    Lit(String),
    Wild,
}

/// `key_pattern`: literal text and `{name}` wildcards. A key matches when
/// it is UTF-8 and the whole key matches; a wildcard matches one or more
/// characters other than `/` (one path segment, as in Flare's resource
/// endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyPattern {
    pieces: Vec<PatternPiece>,
    names: Vec<String>,
}

impl KeyPattern {
    pub(crate) fn parse(text: &str) -> Result<KeyPattern, String> {
        if text.is_empty() {
            return Err(
                "the key pattern is empty (leave key_pattern out to take every key)".into(),
            );
        }
        let mut pieces = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for part in split(text, text)? {
            match part {
                Ok(lit) => pieces.push(PatternPiece::Lit(lit)),
                Err(name) => {
                    if !is_wildcard_name(&name) {
                        return Err(format!(
                            "wildcard {{{name}}} in {text:?}: a name is letters, digits and '_', \
                             not starting with a digit"
                        ));
                    }
                    if BUILTIN_VARS.contains(&name.as_str()) {
                        return Err(format!(
                            "wildcard {{{name}}} in {text:?} hides the built-in variable of that \
                             name: choose another name"
                        ));
                    }
                    if names.contains(&name) {
                        return Err(format!("wildcard {{{name}}} appears twice in {text:?}"));
                    }
                    if matches!(pieces.last(), Some(PatternPiece::Wild)) {
                        return Err(format!(
                            "two wildcards follow each other in {text:?}: put literal text \
                             between them"
                        ));
                    }
                    names.push(name);
                    pieces.push(PatternPiece::Wild);
                }
            }
        }
        Ok(KeyPattern { pieces, names })
    }

    /// The wildcard names, in order.
    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    /// The wildcards' values when `key` matches.
    pub(crate) fn matches(&self, key: &[u8]) -> Option<Vec<String>> {
        let key = std::str::from_utf8(key).ok()?;
        let mut values = Vec::with_capacity(self.names.len());
        let mut pos = 0;
        for (i, piece) in self.pieces.iter().enumerate() {
            let rest = &key[pos..];
            match piece {
                PatternPiece::Lit(l) => {
                    if !rest.starts_with(l.as_str()) {
                        return None;
                    }
                    pos += l.len();
                }
                PatternPiece::Wild => {
                    // The segment ends at the first place the next literal
                    // matches (or at the end of the key for a last
                    // wildcard); it never spans a '/'.
                    let segment_end = rest.find('/').unwrap_or(rest.len());
                    let len = match self.pieces.get(i + 1) {
                        Some(PatternPiece::Lit(next)) => rest
                            .char_indices()
                            .map(|(j, _)| j)
                            .chain([rest.len()])
                            .skip(1)
                            .take_while(|&j| j <= segment_end)
                            .find(|&j| rest[j..].starts_with(next.as_str()))?,
                        _ => segment_end,
                    };
                    if len == 0 {
                        return None;
                    }
                    values.push(rest[..len].to_string());
                    pos += len;
                }
            }
        }
        (pos == key.len()).then_some(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(w: Option<&[String]>) -> Scope<'_> {
        Scope {
            per_change: true,
            wildcards: w,
        }
    }

    #[test]
    fn template_renders_and_escapes() {
        let wild = vec!["id".to_string()];
        let t = Template::parse(
            "https://x/{store}/{key}?h={height}&a={action}&id={id}{{}}",
            scope(Some(&wild)),
        )
        .unwrap();
        let vars = Vars {
            store: "bank",
            key: "balance/a b",
            height: 7,
            action: "update",
            wild: &["a b".to_string()],
        };
        assert_eq!(
            t.render(&vars, Escape::Url),
            "https://x/bank/balance%2Fa%20b?h=7&a=update&id=a%20b{}"
        );
        let h = Template::parse("k={key}", scope(None)).unwrap();
        let vars = Vars {
            key: "a\nb",
            ..vars
        };
        assert_eq!(h.render(&vars, Escape::Header), "k=a%0Ab");
        assert_eq!(h.render(&vars, Escape::None), "k=a\nb");
        assert!(Template::parse("plain", scope(None)).unwrap().is_literal());
    }

    #[test]
    fn template_values_never_form_dot_segments() {
        let wild = vec!["id".to_string()];
        let t =
            Template::parse("http://h/a/{id}/b/.{id}/{id}x?q={id}", scope(Some(&wild))).unwrap();
        let render = |id: &str| {
            let wild = [id.to_string()];
            let vars = Vars {
                store: "s",
                key: "k",
                height: 1,
                action: "update",
                wild: &wild,
            };
            t.render(&vars, Escape::Url)
        };
        assert_eq!(render(".."), "http://h/a/%2E%2E/b/.../..x?q=..");
        assert_eq!(render("."), "http://h/a/%2E/b/.%2E/.x?q=.");
        assert_eq!(render("a.b"), "http://h/a/a.b/b/.a.b/a.bx?q=a.b");
        assert_eq!(render("..."), "http://h/a/.../b/..../...x?q=...");
    }

    #[test]
    fn template_origin_must_be_literal() {
        let ok = |text: &str| {
            Template::parse(text, scope(None))
                .unwrap()
                .check_fixed_origin(text)
        };
        assert!(ok("http://h/{key}").is_ok());
        assert!(ok("http://h?k={key}").is_ok());
        assert!(ok("http://h").is_ok());
        for bad in [
            "http://{key}/",
            "http://h{key}/",
            "{store}://h/",
            "http://h:{height}/x",
        ] {
            let e = ok(bad).unwrap_err();
            assert!(e.contains("scheme or host"), "{bad}: {e}");
        }
    }

    #[test]
    fn template_errors_are_clear() {
        let e = Template::parse("/{nope}", scope(Some(&["id".to_string()]))).unwrap_err();
        assert!(e.contains("unknown template variable {nope}"), "{e}");
        assert!(e.contains("id"), "{e}");
        let e = Template::parse("/{id}", scope(None)).unwrap_err();
        assert!(e.contains("key_pattern is not set"), "{e}");
        let e = Template::parse("/{id", scope(None)).unwrap_err();
        assert!(e.contains("unclosed"), "{e}");
        let e = Template::parse("/id}", scope(None)).unwrap_err();
        assert!(e.contains("lone"), "{e}");
        let block = Scope {
            per_change: false,
            wildcards: None,
        };
        assert!(Template::parse("/{height}", block).is_ok());
        let e = Template::parse("/{key}", block).unwrap_err();
        assert!(e.contains("batch = \"block\""), "{e}");
    }

    #[test]
    fn key_pattern_matches_whole_keys_segment_by_segment() {
        let p = KeyPattern::parse("balance/{id}").unwrap();
        assert_eq!(p.names(), ["id"]);
        assert_eq!(p.matches(b"balance/alice"), Some(vec!["alice".into()]));
        assert_eq!(p.matches(b"balance/"), None);
        assert_eq!(p.matches(b"balance/a/b"), None);
        assert_eq!(p.matches(b"other/alice"), None);
        assert_eq!(p.matches(b"balance/\xff"), None);
        let p = KeyPattern::parse("{kind}/{id}.json").unwrap();
        assert_eq!(
            p.matches(b"user/7.json"),
            Some(vec!["user".into(), "7".into()])
        );
        assert_eq!(p.matches(b"user/7.txt"), None);
        assert_eq!(p.matches(b"user/.json"), None);
        let p = KeyPattern::parse("exact").unwrap();
        assert_eq!(p.matches(b"exact"), Some(vec![]));
        assert_eq!(p.matches(b"exactly"), None);
        for bad in ["", "{a}{b}", "{a}/{a}", "{key}/x", "{1x}"] {
            assert!(KeyPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
