//! The query parameters of the HTTP endpoints, the `Last-Event-ID`
//! header, and how keys and values are written as text.

use axum::http::HeaderMap;
use base64::Engine as _;

use super::HttpError;
use crate::access::Grant;
use crate::filter::{Filter, key_from_text};
use crate::hub::Hub;

/// How keys and values are written in the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Valid UTF-8 as is, anything else `0x` and lowercase hex.
    Utf8,
    /// Lowercase hex (no `0x`), always.
    Hex,
    /// Standard base64 with padding, always.
    Base64,
}

impl Encoding {
    fn parse(text: &str) -> Result<Encoding, HttpError> {
        match text {
            "utf8" => Ok(Encoding::Utf8),
            "hex" => Ok(Encoding::Hex),
            "base64" => Ok(Encoding::Base64),
            other => Err(HttpError::bad_request(format!(
                "encoding: {other:?} is not one of utf8, hex, base64"
            ))),
        }
    }

    /// `bytes` as text.
    pub fn text(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Utf8 => match std::str::from_utf8(bytes) {
                Ok(s) => s.to_string(),
                Err(_) => format!("0x{}", hex(bytes)),
            },
            Encoding::Hex => hex(bytes),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The query parameters of every endpoint.
#[derive(Debug, Default)]
pub(super) struct Params {
    stores: Vec<String>,
    prefixes: Vec<String>,
    encoding: Option<String>,
    pub token: Option<String>,
}

/// Percent-decodes one `application/x-www-form-urlencoded` component.
fn decode_component(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let pair = bytes.get(i + 1..i + 3).ok_or("a truncated %-escape")?;
                let hi = (pair[0] as char).to_digit(16).ok_or("a bad %-escape")?;
                let lo = (pair[1] as char).to_digit(16).ok_or("a bad %-escape")?;
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 after %-decoding".to_string())
}

pub(super) fn parse_params(raw: Option<&str>) -> Result<Params, HttpError> {
    let mut p = Params::default();
    for pair in raw.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode_component(name)
            .map_err(|e| HttpError::bad_request(format!("query parameter {name:?}: {e}")))?;
        let value =
            decode_component(value).map_err(|e| HttpError::bad_request(format!("{name}: {e}")))?;
        match name.as_str() {
            "stores" => {
                for s in value.split(',') {
                    if s.is_empty() {
                        return Err(HttpError::bad_request(
                            "stores: an empty store name (expected stores=a,b)",
                        ));
                    }
                    p.stores.push(s.to_string());
                }
            }
            "prefix" => p.prefixes.push(value),
            "encoding" => p.encoding = Some(value),
            "token" => p.token = Some(value),
            other => {
                return Err(HttpError::bad_request(format!(
                    "unknown query parameter {other:?} (expected stores, prefix, encoding, token)"
                )));
            }
        }
    }
    Ok(p)
}

impl Params {
    /// The selection asked for, within what `grant` allows.
    pub(super) fn filter(&self, hub: &Hub, grant: &Grant) -> Result<Filter, HttpError> {
        let mut b = hub.filter_builder();
        for s in &self.stores {
            b.whole(s, "stores")?;
        }
        for p in &self.prefixes {
            let (store, prefix) = p.split_once('/').ok_or_else(|| {
                HttpError::bad_request(format!(
                    "prefix: {p:?} is not store/prefix (e.g. prefix=bank/balances/)"
                ))
            })?;
            b.prefix(store, &key_from_text(prefix), "prefix")?;
        }
        Ok(grant.select(b)?)
    }

    pub(super) fn encoding(&self) -> Result<Encoding, HttpError> {
        self.encoding
            .as_deref()
            .map_or(Ok(Encoding::Utf8), Encoding::parse)
    }
}

/// The `Last-Event-ID` header: a block height.
pub(super) fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, HttpError> {
    let Some(v) = headers.get(super::LAST_EVENT_ID) else {
        return Ok(None);
    };
    let text = v.to_str().map(str::trim).unwrap_or("");
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<u64>().map(Some).map_err(|_| {
        HttpError::bad_request(format!(
            "Last-Event-ID: {text:?} is not a block height (a non-negative integer)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(Encoding::Utf8.text(b"abc"), "abc");
        assert_eq!(Encoding::Utf8.text(&[0xff, 0x01]), "0xff01");
        assert_eq!(Encoding::Hex.text(b"ab"), "6162");
        assert_eq!(Encoding::Base64.text(b"ab"), "YWI=");
        assert!(Encoding::parse("latin1").is_err());
    }

    #[test]
    fn params() {
        let p = parse_params(Some(
            "stores=a,b&prefix=c%2Fx&prefix=c/y&encoding=hex&token=t+1",
        ))
        .unwrap();
        assert_eq!(p.stores, vec!["a", "b"]);
        assert_eq!(p.prefixes, vec!["c/x", "c/y"]);
        assert_eq!(p.encoding.as_deref(), Some("hex"));
        assert_eq!(p.token.as_deref(), Some("t 1"));
        assert!(parse_params(Some("stores=a,,b")).is_err());
        assert!(parse_params(Some("nope=1")).is_err());
        assert!(parse_params(Some("prefix=%zz")).is_err());
    }
}
