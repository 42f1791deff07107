//! What a request carries: the actions of a block's changes, the JSON
//! envelope, and the text forms of keys, values and times.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::value::RawValue;
use statestream_core::{Action, Block, Record};

/// The name of an action in the envelope, in `{action}` and in
/// `[streamers.<name>.actions.<action>]`.
pub(crate) fn action_name(action: Action) -> &'static str {
    match action {
        Action::Create => "create",
        Action::Update => "update",
        Action::Delete => "delete",
    }
}

/// The block's changes (its selected stores, ordered by store then key)
/// with what each did to its key, as the store recorded it at commit.
pub(crate) fn actions(block: &Block) -> impl Iterator<Item = (Record<'_>, Action)> + '_ {
    block.stores().flat_map(|s| s.changes())
}

/// `bytes` as text: itself when it is UTF-8, else `0x` followed by
/// lowercase hex.
pub(crate) fn text_or_hex(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => {
            let mut s = String::with_capacity(2 + bytes.len() * 2);
            s.push_str("0x");
            for b in bytes {
                let _ = write!(s, "{b:02x}");
            }
            Cow::Owned(s)
        }
    }
}

/// The RFC 3339 form (UTC, `Z`) of a time since the Unix epoch; the
/// fraction is written only when non-zero, without trailing zeros.
/// `None` when the year is outside 0000-9999, which RFC 3339 cannot write.
pub fn rfc3339(seconds: i64, nanos: u32) -> Option<String> {
    let days = seconds.div_euclid(86_400);
    let secs_of_day = seconds.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return None;
    }
    let mut out = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    );
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    Some(out)
}

/// A value in the envelope: the stored JSON byte for byte when it parses
/// as JSON, else a string by the key's rule.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Document<'a> {
    Json(&'a RawValue),
    Text(Cow<'a, str>),
}

impl<'a> Document<'a> {
    pub(crate) fn of(value: &'a [u8]) -> Document<'a> {
        match serde_json::from_slice::<&RawValue>(value) {
            Ok(raw) => Document::Json(raw),
            Err(_) => Document::Text(text_or_hex(value)),
        }
    }
}

/// The JSON envelope of one change. Field order is the order written, so
/// the same change always gives the same bytes.
#[derive(Debug, Serialize)]
pub(crate) struct Envelope<'a> {
    pub(crate) id: &'a str,
    pub(crate) action: &'static str,
    pub(crate) store: &'a str,
    pub(crate) key: &'a str,
    /// Left out inside a block envelope (the block carries it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) height: Option<u64>,
    /// Left out inside a block envelope; `null` when the block time has no
    /// RFC 3339 form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) time: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) document: Option<Document<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<serde_json::Value>,
}

/// The JSON envelope of a whole block (`batch = "block"`), as serde_json
/// writes it: the request builder writes these bytes itself, change by
/// change, and its test compares them with this.
#[cfg(test)]
#[derive(Debug, Serialize)]
pub(crate) struct BlockEnvelope<'a> {
    pub(crate) height: u64,
    pub(crate) time: Option<&'a str>,
    pub(crate) changes: &'a [Box<RawValue>],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_keys_and_documents_follow_the_text_rule() {
        assert_eq!(text_or_hex(b"balance/alice"), "balance/alice");
        assert_eq!(text_or_hex(&[0xff, 0x01]), "0xff01");
        let json = |v: &[u8]| serde_json::to_string(&Document::of(v)).unwrap();
        assert_eq!(
            json(br#"{"b": 1, "a": [1.50]}"#),
            r#"{"b": 1, "a": [1.50]}"#
        );
        assert_eq!(json(b"12"), "12");
        assert_eq!(json(b"hello"), r#""hello""#);
        assert_eq!(json(b""), r#""""#);
        assert_eq!(json(&[0xc3]), r#""0xc3""#);
    }

    #[test]
    fn envelope_time_is_rfc3339() {
        assert_eq!(rfc3339(0, 0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_700_000_000, 120_000_000).unwrap(),
            "2023-11-14T22:13:20.12Z"
        );
        assert_eq!(
            rfc3339(951_782_400, 1).unwrap(),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(rfc3339(-1, 0).unwrap(), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(253_402_300_799, 0).unwrap(), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(253_402_300_800, 0), None);
        assert_eq!(rfc3339(i64::MIN, 0), None);
        assert_eq!(rfc3339(0, 1_000_000_000), None);
    }

    #[test]
    fn envelope_field_order_is_fixed() {
        let e = Envelope {
            id: "hook-3-0",
            action: action_name(Action::Create),
            store: "bank",
            key: "k",
            height: Some(3),
            time: Some(Some("1970-01-01T00:00:00Z")),
            document: Some(Document::of(b"{\"x\":1}")),
            data: Some(serde_json::json!({"service": "bank"})),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"id":"hook-3-0","action":"create","store":"bank","key":"k","height":3,"time":"1970-01-01T00:00:00Z","document":{"x":1},"data":{"service":"bank"}}"#
        );
    }
}
