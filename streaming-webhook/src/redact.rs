//! Redaction: the one place that decides what of a URL or a header value
//! may be shown. Every log line, error (and so `/status`), config error,
//! `Debug` output and dead letter that shows a URL or a header value goes
//! through [`url`] or [`header`].
//!
//! Webhook endpoints often carry their credential in the URL itself: user
//! information, a path that is a capability (Slack's
//! `/services/T…/B…/<token>`, Discord's `/api/webhooks/<id>/<token>`) or a
//! query parameter (`?apikey=`, `?token=`). Which parts are secret cannot
//! be known in general, so only what is recognisably not a credential is
//! shown: the scheme, the host and port, path segments that are plain
//! lowercase words, and query parameter names.

/// What is shown in place of a hidden part.
pub(crate) const HIDDEN: &str = "***";

/// The longest path segment shown as is; a longer one is likely a token.
const MAX_PLAIN_SEGMENT: usize = 32;

/// Parts of a header name that mark a credential (compared lowercase).
const CREDENTIAL_NAME_PARTS: [&str; 9] = [
    "auth",
    "token",
    "key",
    "secret",
    "sig",
    "pass",
    "cookie",
    "session",
    "credential",
];

/// HTTP authentication schemes: a value starting with one is a credential
/// whatever header carries it.
const AUTH_SCHEMES: [&str; 5] = ["bearer ", "basic ", "token ", "digest ", "apikey "];

/// `text` (a URL, or a URL template) as it may be shown:
///
/// - user information (`user:password@`) becomes `***@`;
/// - a path segment is shown only when it is a plain word (lowercase ASCII
///   letters, `-`, `_`, `.`, at most 32 characters) or a template variable
///   (`{store}`), else `***`;
/// - every query parameter value becomes `***` (names are kept when they
///   are plain words), a fragment becomes `#***`.
///
/// The scheme, host and port are shown as written.
pub(crate) fn url(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, text),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(authority_end);
    let (fragment, rest) = match rest.split_once('#') {
        Some((before, fragment)) => (Some(fragment), before),
        None => (None, rest),
    };
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };

    let mut out = String::with_capacity(text.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    match authority.rfind('@') {
        Some(at) => {
            out.push_str(HIDDEN);
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let segments: Vec<&str> = path
        .split('/')
        .map(|s| if plain_segment(s) { s } else { HIDDEN })
        .collect();
    out.push_str(&segments.join("/"));
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((name, _)) if plain_name(name) => format!("{name}={HIDDEN}"),
                None if p.is_empty() => String::new(),
                _ => HIDDEN.to_string(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        if !fragment.is_empty() {
            out.push_str(HIDDEN);
        }
    }
    out
}

/// A header value as it may be shown: `***` for a credential header (its
/// name contains `auth`, `token`, `key`, `secret`, `sig`, `pass`, `cookie`,
/// `session` or `credential`: `authorization`, `x-api-key`,
/// `webhook-signature`, …) or a value that starts with an authentication
/// scheme (`Bearer …`); a value holding a URL is shown as [`url`] shows
/// it; anything else as is.
pub(crate) fn header(name: &str, value: &str) -> String {
    let name = name.to_ascii_lowercase();
    let lower = value.trim_start().to_ascii_lowercase();
    if CREDENTIAL_NAME_PARTS.iter().any(|p| name.contains(p))
        || AUTH_SCHEMES.iter().any(|s| lower.starts_with(s))
    {
        HIDDEN.to_string()
    } else if value.contains("://") {
        value
            .split(' ')
            .map(|w| {
                if w.contains("://") {
                    url(w)
                } else {
                    w.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        value.to_string()
    }
}

/// `text` (an error message from the HTTP client, say) with every
/// occurrence of the URL `raw` replaced by its redacted form.
pub(crate) fn url_in(text: &str, raw: &str) -> String {
    if raw.is_empty() {
        return text.to_string();
    }
    text.replace(raw, &url(raw))
}

fn plain_segment(s: &str) -> bool {
    let word = s.len() <= MAX_PLAIN_SEGMENT
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b"-_.".contains(&b));
    let variable = s.len() > 2
        && s.starts_with('{')
        && s.ends_with('}')
        && s[1..s.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    word || variable
}

fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PLAIN_SEGMENT
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.[]".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_user_info_path_and_query() {
        assert_eq!(url("https://u:p@h/x@y"), "https://***@h/***");
        assert_eq!(
            url("https://user:hunter2@example.com:8443/hooks/bank"),
            "https://***@example.com:8443/hooks/bank"
        );
        assert_eq!(
            url("https://hooks.slack.com/services/T000/B000/XXXX"),
            "https://hooks.slack.com/services/***/***/***"
        );
        assert_eq!(
            url("https://discord.com/api/webhooks/1234567890/AbCdEf-gh_ij"),
            "https://discord.com/api/webhooks/***/***"
        );
        assert_eq!(
            url("https://example.com/hook?apikey=s3cret&token=abc&flag"),
            "https://example.com/hook?apikey=***&token=***&***"
        );
        assert_eq!(url("http://h/x#frag"), "http://h/x#***");
        assert_eq!(url("http://h/x"), "http://h/x");
        assert_eq!(url("http://h"), "http://h");
        assert_eq!(
            url("http://127.0.0.1:9/hooks/{store}/{key}?h={height}"),
            "http://127.0.0.1:9/hooks/{store}/{key}?h=***"
        );
        // A segment that is a long lowercase word is taken for a token.
        assert_eq!(
            url("http://h/abcdefghijklmnopqrstuvwxyzabcdefgh"),
            "http://h/***"
        );
        assert_eq!(url("not a url"), "not a url");
    }

    #[test]
    fn redact_credential_headers() {
        assert_eq!(header("Authorization", "Bearer abc"), HIDDEN);
        assert_eq!(header("x-api-key", "abc"), HIDDEN);
        assert_eq!(header("webhook-signature", "v1,abc"), HIDDEN);
        assert_eq!(header("x-anything", "Basic dTpw"), HIDDEN);
        assert_eq!(header("x-service", "bank"), "bank");
        assert_eq!(
            header("x-callback", "see https://u:p@h/a/B1"),
            "see https://***@h/a/***"
        );
    }

    #[test]
    fn redact_url_in_a_message() {
        let raw = "http://u:p@h/services/T0/B0/XYZ";
        let msg = format!("cannot reach {raw}: refused");
        let shown = url_in(&msg, raw);
        assert_eq!(
            shown,
            "cannot reach http://***@h/services/***/***/***: refused"
        );
    }
}
