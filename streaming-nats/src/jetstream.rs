//! The few JetStream API calls statestream needs, as JSON requests on
//! `$JS.API.*` subjects: stream info and create, acknowledged publish, and
//! reading a stored message by sequence.

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::client::{Client, find_header, parse_headers};
use crate::error::{NatsError, Result};

/// JetStream's error code for "stream not found".
const ERR_STREAM_NOT_FOUND: u32 = 10059;
/// JetStream's error code for "no message found".
const ERR_NO_MESSAGE: u32 = 10037;

/// What `$JS.API.STREAM.INFO.<stream>` tells.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct StreamInfo {
    /// The stream's configuration (the parts statestream looks at).
    pub config: StreamConfigInfo,
    /// Its content.
    pub state: StreamState,
}

/// Part of a stream's configuration.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct StreamConfigInfo {
    /// The stream's name.
    pub name: String,
    /// The subjects it captures.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// The deduplication window, in nanoseconds.
    #[serde(default)]
    pub duplicate_window: u64,
    /// The largest message the stream accepts (-1: no limit but the
    /// server's `max_payload`).
    #[serde(default = "no_limit")]
    pub max_msg_size: i64,
}

fn no_limit() -> i64 {
    -1
}

/// A stream's content.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct StreamState {
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Sequence of the first message (0 when empty).
    pub first_seq: u64,
    /// Sequence of the last message.
    pub last_seq: u64,
}

/// How [`Client::create_stream`] creates a stream.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// The stream's name.
    pub name: String,
    /// The subjects it captures.
    pub subjects: Vec<String>,
    /// The window within which a message with an already seen
    /// `Nats-Msg-Id` is dropped.
    pub duplicate_window: Duration,
    /// Replicas in a cluster (1 on a single server).
    pub replicas: u32,
}

/// The server's acknowledgement of a publish to a stream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct PubAck {
    /// The stream that stored the message.
    pub stream: String,
    /// Its sequence in the stream.
    pub seq: u64,
    /// True when the message was a duplicate (same `Nats-Msg-Id` within
    /// the window) and was not stored again.
    #[serde(default)]
    pub duplicate: bool,
}

/// A message read back from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredMessage {
    /// Its subject.
    pub subject: String,
    /// Its sequence in the stream.
    pub seq: u64,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its payload.
    pub payload: Vec<u8>,
}

impl StoredMessage {
    /// The first value of header `name` (compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    err_code: u32,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct MsgGetResponse {
    message: RawStoredMessage,
}

#[derive(Deserialize)]
struct RawStoredMessage {
    subject: String,
    seq: u64,
    #[serde(default)]
    hdrs: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

impl Client {
    /// One JetStream API call: `body` to `$JS.API.<api>`, the JSON answer
    /// decoded as `T`, or its `error` as [`NatsError::JetStream`].
    fn js_api<T: DeserializeOwned>(&mut self, api: &str, body: &[u8]) -> Result<T> {
        let subject = format!("$JS.API.{api}");
        let reply = self.request(&subject, &[], body)?;
        if reply.status == Some(503) {
            return Err(NatsError::NoResponders {
                url: self.url().to_string(),
                subject,
                hint: "JetStream is not enabled on this server (start it with -js)".into(),
            });
        }
        decode_answer(&subject, &reply.payload)
    }

    /// The stream's info, or `None` when it does not exist.
    pub fn stream_info(&mut self, stream: &str) -> Result<Option<StreamInfo>> {
        match self.js_api(&format!("STREAM.INFO.{stream}"), b"") {
            Ok(info) => Ok(Some(info)),
            Err(NatsError::JetStream { err_code, .. }) if err_code == ERR_STREAM_NOT_FOUND => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a stream with file storage, limits retention and the given
    /// subjects and duplicate window.
    pub fn create_stream(&mut self, spec: &StreamSpec) -> Result<StreamInfo> {
        let body = serde_json::json!({
            "name": spec.name,
            "subjects": spec.subjects,
            "storage": "file",
            "retention": "limits",
            "discard": "old",
            "num_replicas": spec.replicas.max(1),
            "duplicate_window": u64::try_from(spec.duplicate_window.as_nanos()).unwrap_or(u64::MAX),
        });
        self.js_api(
            &format!("STREAM.CREATE.{}", spec.name),
            body.to_string().as_bytes(),
        )
    }

    /// Publishes one message to a stream and waits for its
    /// acknowledgement.
    pub fn publish(
        &mut self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<PubAck> {
        let reply = self.request(subject, headers, payload)?;
        if reply.status == Some(503) {
            return Err(NatsError::NoResponders {
                url: self.url().to_string(),
                subject: subject.to_string(),
                hint: "no JetStream stream captures this subject (is the stream's subject list right?)"
                    .into(),
            });
        }
        decode_answer(&format!("publish to {subject}"), &reply.payload)
    }

    /// The stored message `seq` of `stream`; with `subject`, the first
    /// message on that subject at `seq` or after. `None` when there is none.
    pub fn get_message(
        &mut self,
        stream: &str,
        seq: u64,
        subject: Option<&str>,
    ) -> Result<Option<StoredMessage>> {
        let body = match subject {
            Some(s) => serde_json::json!({ "seq": seq, "next_by_subj": s }),
            None => serde_json::json!({ "seq": seq }),
        };
        self.stored_message(stream, &body)
    }

    /// The last message stored on `subject` in `stream`, if any.
    pub fn last_message(&mut self, stream: &str, subject: &str) -> Result<Option<StoredMessage>> {
        self.stored_message(stream, &serde_json::json!({ "last_by_subj": subject }))
    }

    fn stored_message(
        &mut self,
        stream: &str,
        body: &serde_json::Value,
    ) -> Result<Option<StoredMessage>> {
        let api = format!("STREAM.MSG.GET.{stream}");
        let raw: MsgGetResponse = match self.js_api(&api, body.to_string().as_bytes()) {
            Ok(r) => r,
            Err(NatsError::JetStream { err_code, .. }) if err_code == ERR_NO_MESSAGE => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let m = raw.message;
        let bad = |reason: String| NatsError::BadMessage {
            stream: stream.to_string(),
            seq: m.seq,
            reason,
        };
        let headers = match &m.hdrs {
            Some(h) if !h.is_empty() => {
                let bytes = base64_decode(h).map_err(|e| bad(format!("headers: {e}")))?;
                parse_headers(&bytes)
                    .map_err(|e| bad(format!("headers: {e}")))?
                    .1
            }
            _ => Vec::new(),
        };
        let payload = match &m.data {
            Some(d) => base64_decode(d).map_err(|e| bad(format!("data: {e}")))?,
            None => Vec::new(),
        };
        Ok(Some(StoredMessage {
            subject: m.subject,
            seq: m.seq,
            headers,
            payload,
        }))
    }
}

/// Decodes a JSON answer: its `error` member, or the body as `T`.
fn decode_answer<T: DeserializeOwned>(what: &str, payload: &[u8]) -> Result<T> {
    let bad = |reason: String| NatsError::BadAnswer {
        what: what.to_string(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| bad(format!("not JSON: {e}")))?;
    if let Some(err) = value.get("error") {
        let e: ApiError =
            serde_json::from_value(err.clone()).map_err(|e| bad(format!("bad error: {e}")))?;
        return Err(NatsError::JetStream {
            api: what.to_string(),
            code: e.code,
            err_code: e.err_code,
            description: e.description,
        });
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

/// Standard base64 (with or without padding), as JetStream encodes stored
/// headers and data.
fn base64_decode(text: &str) -> std::result::Result<Vec<u8>, String> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.trim_end_matches('=').as_bytes();
    if bytes.len() % 4 == 1 {
        return Err("base64 text has a bad length".into());
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = val(c).ok_or_else(|| format!("bad base64 character {:?}", c as char))?;
            acc |= v << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
        assert!(base64_decode("a").is_err());
        assert!(base64_decode("a*bc").is_err());
    }

    #[test]
    fn answers_decode() {
        let ack: PubAck =
            decode_answer("p", br#"{"stream":"s", "seq":3,"duplicate": true}"#).unwrap();
        assert_eq!(
            (ack.stream.as_str(), ack.seq, ack.duplicate),
            ("s", 3, true)
        );
        let err = decode_answer::<PubAck>(
            "p",
            br#"{"error":{"code":404,"err_code":10059,"description":"stream not found"}}"#,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            NatsError::JetStream {
                err_code: 10059,
                ..
            }
        ));
    }
}
