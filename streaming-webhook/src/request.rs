//! Request building: a block's changes become requests (URL and headers
//! rendered from the templates, the body formed once), and the headers
//! each attempt adds.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use statestream_core::{Action, Block, Record};
use ureq::http::{self, HeaderName, HeaderValue, Method};

use crate::config::{Batch, Endpoint, Plan, action_index};
use crate::envelope::{Document, Envelope, action_name, actions, rfc3339, text_or_hex};
use crate::error::Error;
use crate::redact;
use crate::sign::{Secret, signature_header};
use crate::template::{Escape, Vars};

/// Header: the delivery's id, the same on every attempt.
pub const HEADER_ID: &str = "webhook-id";
/// Header: seconds since the Unix epoch when the attempt was sent.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header: `v1,<base64>` per secret, separated by spaces.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// One request, formed once and sent as many times as needed: every
/// attempt sends these bytes.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) id: String,
    pub(crate) method: Method,
    pub(crate) url: String,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) content_type: &'static str,
    pub(crate) body: Vec<u8>,
}

/// The block's requests under `plan`, in order.
pub(crate) fn requests(plan: &Plan, block: &Block) -> Result<Vec<Request>, Error> {
    requests_where(plan, block, &mut |_, _| true)
}

/// [`requests`] for the changes `keep` accepts; a change's index in its
/// `webhook-id` is its place among all the block's changes, so the ids do
/// not depend on what is kept.
pub(crate) fn requests_where(
    plan: &Plan,
    block: &Block,
    keep: &mut dyn FnMut(&Record<'_>, Action) -> bool,
) -> Result<Vec<Request>, Error> {
    let height = block.height();
    let meta = block.meta();
    let time = rfc3339(meta.time_seconds, meta.time_nanos);
    let mut out = Vec::new();
    // batch = "block": the block envelope, written as the changes come
    // (`{"height":H,"time":T,"changes":[...]}`, serde_json's bytes for
    // `BlockEnvelope`), with room for the block's records and their
    // envelopes' fields up front.
    let mut block_body: Option<Vec<u8>> = None;
    let mut id = String::new();
    for (index, (change, action)) in actions(block).enumerate() {
        if !keep(&change, action) {
            continue;
        }
        let wild = match &plan.key_pattern {
            Some(p) => match p.matches(change.key) {
                Some(w) => w,
                None => continue,
            },
            None => Vec::new(),
        };
        let key = text_or_hex(change.key);
        let vars = Vars {
            store: change.store,
            key: &key,
            height,
            action: action_name(action),
            wild: &wild,
        };
        id.clear();
        // Writing to a String cannot fail.
        let _ = write!(id, "{}-{height}-{index}", plan.id_prefix);
        let document = match change.value {
            Some(v) if plan.document => Some(Document::of(v)),
            _ => None,
        };
        let envelope = Envelope {
            id: &id,
            action: action_name(action),
            store: change.store,
            key: &key,
            height: None,
            time: None,
            document,
            data: plan.data.as_ref().map(|d| d.render(&vars)),
        };
        match plan.batch {
            Batch::Block => {
                let body = match &mut block_body {
                    Some(body) => {
                        body.push(b',');
                        body
                    }
                    None => block_body.insert(block_body_start(block, height, time.as_deref())),
                };
                serde_json::to_writer(&mut *body, &envelope).map_err(|e| bad_json(&id, &e))?;
            }
            Batch::Change => {
                let (content_type, body) = if plan.envelope {
                    let envelope = Envelope {
                        height: Some(height),
                        time: Some(time.as_deref()),
                        ..envelope
                    };
                    let body = serde_json::to_vec(&envelope).map_err(|e| bad_json(&id, &e))?;
                    ("application/json", body)
                } else {
                    let body = match change.value {
                        Some(v) if plan.document => v.to_vec(),
                        _ => Vec::new(),
                    };
                    ("application/octet-stream", body)
                };
                let endpoint = &plan.endpoints[action_index(action)];
                out.push(request(endpoint, id.clone(), &vars, content_type, body)?);
            }
        }
    }
    if let Some(mut body) = block_body {
        body.extend_from_slice(b"]}");
        let id = format!("{}-{height}", plan.id_prefix);
        let vars = Vars {
            store: "",
            key: "",
            height,
            action: "",
            wild: &[],
        };
        // With batch = "block" there are no per-action tables: every
        // endpoint is the streamer's own.
        let endpoint = &plan.endpoints[action_index(Action::Update)];
        out.push(request(endpoint, id, &vars, "application/json", body)?);
    }
    Ok(out)
}

/// The start of a block envelope, up to the `[` of its changes.
fn block_body_start(block: &Block, height: u64, time: Option<&str>) -> Vec<u8> {
    // Per change: its key and value as they are, plus the envelope's
    // fields (id, action, store) and some escaping.
    let room = block.encoded_len() + block.change_set().len() * 96 + 128;
    let mut body = Vec::with_capacity(room);
    body.extend_from_slice(b"{\"height\":");
    body.extend_from_slice(height.to_string().as_bytes());
    body.extend_from_slice(b",\"time\":");
    // A string or `null`: serde_json cannot fail on either.
    let _ = serde_json::to_writer(&mut body, &time);
    body.extend_from_slice(b",\"changes\":[");
    body
}

impl Request {
    /// The headers the streamer adds to the configured ones for one
    /// attempt: the content type (unless configured) and the Standard
    /// Webhooks headers, signed with `secrets`.
    pub(crate) fn standard_headers(
        &self,
        secrets: &[Secret],
        timestamp: u64,
    ) -> Vec<(&'static str, String)> {
        let req = self;
        let mut h = Vec::with_capacity(4);
        if !req
            .headers
            .iter()
            .any(|(n, _)| n == http::header::CONTENT_TYPE)
        {
            h.push(("content-type", req.content_type.to_string()));
        }
        h.push((HEADER_ID, req.id.clone()));
        h.push((HEADER_TIMESTAMP, timestamp.to_string()));
        if !secrets.is_empty() {
            h.push((
                HEADER_SIGNATURE,
                signature_header(secrets, &req.id, timestamp, &req.body),
            ));
        }
        h
    }
}

/// One request to `e`, its URL and headers rendered for `vars`.
pub(crate) fn request(
    e: &Endpoint,
    id: String,
    vars: &Vars<'_>,
    content_type: &'static str,
    body: Vec<u8>,
) -> Result<Request, Error> {
    let url = e.url.render(vars, Escape::Url);
    crate::config::check_uri(&url).map_err(|reason| Error::BadRequest {
        id: id.clone(),
        url: redact::url(&url),
        reason,
    })?;
    let mut headers = Vec::with_capacity(e.headers.len());
    for (name, t) in &e.headers {
        let value = t.render(vars, Escape::Header);
        let value = HeaderValue::from_bytes(value.as_bytes()).map_err(|_| Error::BadRequest {
            id: id.clone(),
            url: redact::url(&url),
            reason: format!(
                "header {name}: {:?} is not a valid header value",
                redact::header(name.as_str(), &value)
            ),
        })?;
        headers.push((name.clone(), value));
    }
    Ok(Request {
        id,
        method: e.method.clone(),
        url,
        headers,
        content_type,
        body,
    })
}

/// A serialization error (none is expected: every envelope field is a
/// string, a number, or JSON that was already checked).
fn bad_json(id: &str, e: &serde_json::Error) -> Error {
    Error::BadRequest {
        id: id.to_string(),
        url: String::new(),
        reason: format!("cannot write the JSON body: {e}"),
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::BlockEnvelope;
    use statestream_config::StreamerOptions;
    use statestream_core::{BlockMeta, ChangeSet, StoreChanges, StoreKey, StoreSelection};
    use std::sync::Arc;

    fn plan(toml_text: &str) -> Plan {
        let table: toml::Table = toml_text.parse().expect("toml");
        let config = StreamerOptions::from_table(table)
            .with_name("hook")
            .parse::<crate::config::WebhookConfig>()
            .expect("config");
        config
            .plan("hook", std::path::Path::new("/home"))
            .expect("plan")
    }

    /// The block body as it was built before: each change's envelope to a
    /// `RawValue`, then the `BlockEnvelope` around them.
    fn reference_body(plan: &Plan, block: &Block) -> Vec<u8> {
        let height = block.height();
        let time = rfc3339(block.meta().time_seconds, block.meta().time_nanos);
        let mut changes = Vec::new();
        for (index, (change, action)) in actions(block).enumerate() {
            let key = text_or_hex(change.key);
            let vars = Vars {
                store: change.store,
                key: &key,
                height,
                action: action_name(action),
                wild: &[],
            };
            let id = format!("{}-{height}-{index}", plan.id_prefix);
            let envelope = Envelope {
                id: &id,
                action: action_name(action),
                store: change.store,
                key: &key,
                height: None,
                time: None,
                document: change.value.filter(|_| plan.document).map(Document::of),
                data: plan.data.as_ref().map(|d| d.render(&vars)),
            };
            changes.push(serde_json::value::to_raw_value(&envelope).unwrap());
        }
        serde_json::to_vec(&BlockEnvelope {
            height,
            time: time.as_deref(),
            changes: &changes,
        })
        .unwrap()
    }

    #[test]
    fn block_bodies_are_the_bytes_serde_json_writes() {
        let stores = [
            StoreKey::new("acc").unwrap(),
            StoreKey::new("bank").unwrap(),
        ];
        let mut acc = StoreChanges::new(stores[0].clone());
        acc.push(&[0xff, 0x00], Some(b"not \"json\" \n"), true);
        acc.push(b"gone", None, false);
        let mut bank = StoreChanges::new(stores[1].clone());
        bank.push(
            b"balance/alice",
            Some(br#"{"amount": 5, "denom": "stake"}"#),
            false,
        );
        bank.push(b"balance/bob", Some(b""), true);
        let cs = ChangeSet::seal(12, Vec::new(), vec![acc, bank], &[Default::default(); 2]);
        for (seconds, nanos) in [(1_700_000_000, 5), (0, 0)] {
            let meta = BlockMeta {
                time_seconds: seconds,
                time_nanos: nanos,
                ..BlockMeta::default()
            };
            let block = Block::new(
                Arc::new(cs.clone()),
                Arc::new(meta),
                &StoreSelection::all(&stores),
            );
            for config in [
                "url = \"http://127.0.0.1:1/h\"\nbatch = \"block\"",
                "url = \"http://127.0.0.1:1/h\"\nbatch = \"block\"\ndocument = false\n\
                 data = { s = \"{store}\", k = \"{key}\", h = \"{height}\" }",
            ] {
                let plan = plan(config);
                let ours = requests(&plan, &block).unwrap();
                assert_eq!(ours.len(), 1);
                assert_eq!(
                    String::from_utf8(ours[0].body.clone()).unwrap(),
                    String::from_utf8(reference_body(&plan, &block)).unwrap(),
                    "{config}"
                );
            }
        }
        // Nothing kept: no request.
        let plan = plan("url = \"http://127.0.0.1:1/h\"\nbatch = \"block\"");
        let block = Block::new(
            Arc::new(cs),
            Arc::new(BlockMeta::default()),
            &StoreSelection::all(&stores),
        );
        assert!(
            requests_where(&plan, &block, &mut |_, _| false)
                .unwrap()
                .is_empty()
        );
    }
}
