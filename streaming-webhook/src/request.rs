//! Request building: a block's changes become requests (URL and headers
//! rendered from the templates, the body formed once), and the headers
//! each attempt adds.

use std::time::{SystemTime, UNIX_EPOCH};

use statestream_core::{Action, Block, Record};
use ureq::http::{self, HeaderName, HeaderValue, Method};

use crate::config::{Batch, Endpoint, Plan, action_index};
use crate::envelope::{
    BlockEnvelope, Document, Envelope, action_name, actions, rfc3339, text_or_hex,
};
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
    let mut changes = Vec::new();
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
        let id = format!("{}-{height}-{index}", plan.id_prefix);
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
            Batch::Block => changes
                .push(serde_json::value::to_raw_value(&envelope).map_err(|e| bad_json(&id, &e))?),
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
                out.push(request(endpoint, id, &vars, content_type, body)?);
            }
        }
    }
    if plan.batch == Batch::Block && !changes.is_empty() {
        let id = format!("{}-{height}", plan.id_prefix);
        let body = serde_json::to_vec(&BlockEnvelope {
            height,
            time: time.as_deref(),
            changes: &changes,
        })
        .map_err(|e| bad_json(&id, &e))?;
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
