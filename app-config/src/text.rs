//! Small helpers about the source text: lines, names, value descriptions.

use std::ops::Range;

/// Maps byte offsets of a text to 1-based lines and columns.
#[derive(Debug)]
pub(crate) struct LineIndex<'t> {
    text: &'t str,
    /// Byte offset at which each line starts; the first is always 0.
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    pub(crate) fn new(text: &'t str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    /// The 1-based line holding byte `offset` (offsets past the end are on the last line).
    pub(crate) fn line(&self, offset: usize) -> usize {
        // `starts[0] == 0`, so the partition point is at least 1.
        self.starts.partition_point(|&start| start <= offset)
    }

    /// The 1-based line and column (in characters) of byte `offset`.
    pub(crate) fn line_column(&self, offset: usize) -> (usize, usize) {
        let line = self.line(offset);
        let start = self.starts.get(line - 1).copied().unwrap_or(0);
        let end = offset.min(self.text.len());
        let column = self
            .text
            .get(start..end)
            .map_or(end.saturating_sub(start), |s| s.chars().count());
        (line, column + 1)
    }

    /// A short, one-line excerpt of the source at `span`, for error messages.
    pub(crate) fn excerpt(&self, span: Range<usize>) -> String {
        const MAX_CHARS: usize = 40;
        let raw = self.text.get(span).unwrap_or("");
        let first_line = raw.lines().next().unwrap_or("").trim();
        let mut excerpt: String = first_line.chars().take(MAX_CHARS).collect();
        if first_line.chars().count() > MAX_CHARS || raw.trim().lines().nth(1).is_some() {
            excerpt.push_str("...");
        }
        excerpt
    }
}

/// Describes a value for "got ..." in error messages: `string "big"`,
/// `integer -3`, `a table`. `type_str` is the TOML type name, `excerpt` the
/// value's source text.
pub(crate) fn describe(type_str: &str, excerpt: &str) -> String {
    if type_str == "table" {
        "a table".to_owned()
    } else if excerpt.is_empty() {
        type_str.to_owned()
    } else {
        format!("{type_str} {excerpt}")
    }
}

/// Checks the syntax shared by streamer names and store names: non-empty,
/// ASCII letters, digits, `_`, `.` and `-` only. Returns the reason when invalid.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        Some(bad) => Err(format!(
            "invalid name {name:?}: {bad:?} is not allowed, use only ASCII letters, digits, `_`, `.` and `-`"
        )),
        None => Ok(()),
    }
}

/// The canonical (snake_case) spelling of a key: every `-` becomes `_`.
pub(crate) fn normalise_key(key: &str) -> String {
    key.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_and_columns() {
        let index = LineIndex::new("ab\ncdé\n\nx");
        assert_eq!(index.line(0), 1);
        assert_eq!(index.line(2), 1);
        assert_eq!(index.line(3), 2);
        assert_eq!(index.line(9), 4);
        assert_eq!(index.line(100), 4);
        assert_eq!(index.line_column(4), (2, 2));
        assert_eq!(index.line_column(10), (4, 2));
    }

    #[test]
    fn text_names() {
        assert!(check_name("file.2_a-b").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("é").is_err());
    }
}
