//! The streamer: forms each block's requests and delivers them one after
//! the other with the retry policy.

use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use statestream_core::{Block, Shutdown, StreamError, Streamer};
use tracing::{debug, warn};
use ureq::http::{self, HeaderName, HeaderValue, Method};

use crate::config::{Batch, Endpoint, OnExhausted, Plan, action_index};
use statestream_core::Action;

use crate::envelope::{
    BlockEnvelope, Document, Envelope, action_name, actions, rfc3339, text_or_hex,
};
use crate::error::Error;
use crate::sign::signature_header;
use crate::template::{Escape, Vars};

/// Header: the delivery's id, the same on every attempt.
pub const HEADER_ID: &str = "webhook-id";
/// Header: seconds since the Unix epoch when the attempt was sent.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header: `v1,<base64>` per secret, separated by spaces.
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// The longest `Retry-After` honoured; a longer one waits this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// How much of a response body is read (and dropped) so the connection can
/// be used again; a longer body closes the connection instead.
const DRAIN_LIMIT: u64 = 64 * 1024;

/// One request, formed once and sent as many times as needed: every
/// attempt sends these bytes.
#[derive(Debug, Clone)]
struct Request {
    id: String,
    method: Method,
    url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    content_type: &'static str,
    body: Vec<u8>,
}

/// What a status code means under the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Delivered,
    Discarded,
    Gone,
    Retry,
}

/// The policy, strictly in order: `success` (default any 2xx), `discard`,
/// 410, anything else is retried.
fn classify(status: u16, success: &[u16], discard: &[u16]) -> Verdict {
    let delivered = if success.is_empty() {
        (200..300).contains(&status)
    } else {
        success.contains(&status)
    };
    if delivered {
        Verdict::Delivered
    } else if discard.contains(&status) {
        Verdict::Discarded
    } else if status == 410 {
        Verdict::Gone
    } else {
        Verdict::Retry
    }
}

/// One attempt's result.
enum Attempt {
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    Failed(String),
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Discarded,
    DeadLettered,
}

/// The `webhook` streamer: built by [`WebhookConfig::build`](crate::WebhookConfig::build).
///
/// `on_block` returns once every selected change of the block is
/// delivered, discarded or dead-lettered (so the cursor never passes an
/// undelivered change), retrying on the schedule in between. Requests go
/// out one at a time, in block order then store, key order.
pub struct WebhookStreamer {
    name: String,
    plan: Plan,
    agent: ureq::Agent,
    shutdown: Shutdown,
    /// `(height, n)`: the first `n` requests of block `height` are done;
    /// a block given again after an error resumes there.
    resume: Option<(u64, usize)>,
    /// Set by a 410: nothing more is sent.
    gone: Option<(String, String)>,
}

impl std::fmt::Debug for WebhookStreamer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookStreamer")
            .field("name", &self.name)
            .field("resume", &self.resume)
            .field("gone", &self.gone.is_some())
            .finish_non_exhaustive()
    }
}

impl WebhookStreamer {
    pub(crate) fn new(name: &str, plan: Plan, shutdown: Shutdown) -> WebhookStreamer {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(plan.timeout))
            // Redirects are not followed: a 3xx is an answer that is not a
            // success, and is retried.
            .max_redirects(0)
            .http_status_as_error(false)
            .user_agent(concat!("statestream-webhook/", env!("CARGO_PKG_VERSION")))
            .build();
        WebhookStreamer {
            name: name.to_string(),
            plan,
            agent: ureq::Agent::new_with_config(config),
            shutdown,
            resume: None,
            gone: None,
        }
    }

    /// The block's requests, in order.
    fn requests(&self, block: &Block) -> Result<Vec<Request>, Error> {
        let plan = &self.plan;
        let height = block.height();
        let meta = block.meta();
        let time = rfc3339(meta.time_seconds, meta.time_nanos);
        let mut out = Vec::new();
        let mut changes = Vec::new();
        for (index, (change, action)) in actions(block).enumerate() {
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
                Batch::Block => changes.push(
                    serde_json::value::to_raw_value(&envelope).map_err(|e| bad_json(&id, &e))?,
                ),
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

    /// The headers the streamer adds to the configured ones for one
    /// attempt: the content type (unless configured) and the Standard
    /// Webhooks headers.
    fn standard_headers(&self, req: &Request, timestamp: u64) -> Vec<(&'static str, String)> {
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
        if !self.plan.secrets.is_empty() {
            h.push((
                HEADER_SIGNATURE,
                signature_header(&self.plan.secrets, &req.id, timestamp, &req.body),
            ));
        }
        h
    }

    /// Sends one attempt.
    fn attempt(&self, req: &Request) -> Attempt {
        let timestamp = unix_now();
        let mut builder = http::Request::builder()
            .method(req.method.clone())
            .uri(req.url.as_str());
        for (name, value) in &req.headers {
            builder = builder.header(name, value);
        }
        for (name, value) in self.standard_headers(req, timestamp) {
            builder = builder.header(name, value);
        }
        let request = match builder.body(req.body.as_slice()) {
            Ok(r) => r,
            Err(e) => return Attempt::Failed(format!("cannot form the request: {e}")),
        };
        match self.agent.run(request) {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                // Read what little body there is so the connection can be
                // reused; errors here do not change the answer.
                let _ = std::io::copy(
                    &mut response.body_mut().as_reader().take(DRAIN_LIMIT),
                    &mut std::io::sink(),
                );
                Attempt::Status {
                    status,
                    retry_after,
                }
            }
            Err(e) => Attempt::Failed(e.to_string()),
        }
    }

    /// Delivers one request under the policy.
    fn deliver(&mut self, req: &Request, height: u64) -> Result<Outcome, Error> {
        let mut retry_after: Option<Duration> = None;
        let mut last = String::new();
        let attempts = self.plan.schedule.len();
        for (attempt, &scheduled) in self.plan.schedule.iter().enumerate() {
            let mut wait = jitter(scheduled, &req.id, attempt);
            if let Some(ra) = retry_after.take() {
                wait = wait.max(ra);
            }
            if (attempt > 0 || !wait.is_zero()) && self.shutdown.wait(wait) {
                return Err(Error::ShuttingDown {
                    id: req.id.clone(),
                    height,
                });
            }
            match self.attempt(req) {
                Attempt::Status {
                    status,
                    retry_after: ra,
                } => match classify(status, &self.plan.success, &self.plan.discard) {
                    Verdict::Delivered => return Ok(Outcome::Delivered),
                    Verdict::Discarded => {
                        warn!(streamer = %self.name, id = %req.id, status, url = %redact(&req.url),
                            "webhook discarded: the endpoint answered a discard status");
                        return Ok(Outcome::Discarded);
                    }
                    Verdict::Gone => {
                        self.gone = Some((req.id.clone(), redact(&req.url)));
                        return Err(self.gone_error());
                    }
                    Verdict::Retry => {
                        last = format!("status {status}");
                        if status == 429 || status == 503 {
                            retry_after = ra.map(|d| d.min(MAX_RETRY_AFTER));
                        }
                    }
                },
                Attempt::Failed(e) => last = e,
            }
            debug!(streamer = %self.name, id = %req.id, attempt = attempt + 1, attempts,
                error = %last, "webhook attempt failed");
        }
        match self.plan.on_exhausted {
            OnExhausted::Halt => Err(Error::Exhausted {
                id: req.id.clone(),
                url: redact(&req.url),
                attempts,
                last,
            }),
            OnExhausted::DeadLetter => {
                let path = self.dead_letter(req, attempts, &last)?;
                warn!(streamer = %self.name, id = %req.id, attempts, error = %last,
                    path = %path.display(), "webhook not delivered: written as a dead letter");
                Ok(Outcome::DeadLettered)
            }
        }
    }

    fn gone_error(&self) -> Error {
        let (id, url) = self.gone.clone().unwrap_or_default();
        Error::Gone {
            streamer: self.name.clone(),
            id,
            url,
        }
    }

    /// Writes `req` to `<dead_letter_dir>/<webhook-id>.http` as an HTTP/1.1
    /// request (request line, headers, blank line, body), under a
    /// temporary name first and synced, so a file under its final name is
    /// complete. A block delivered again overwrites it with the same body.
    fn dead_letter(&self, req: &Request, attempts: usize, last: &str) -> Result<PathBuf, Error> {
        let dir = &self.plan.dead_letter_dir;
        let path = dir.join(format!("{}.http", req.id));
        let tmp = dir.join(format!(".{}.http.tmp", req.id));
        let mut text = format!("{} {} HTTP/1.1\r\n", req.method, req.url);
        for (n, v) in &req.headers {
            text.push_str(&format!(
                "{n}: {}\r\n",
                String::from_utf8_lossy(v.as_bytes())
            ));
        }
        for (n, v) in self.standard_headers(req, unix_now()) {
            text.push_str(&format!("{n}: {v}\r\n"));
        }
        text.push_str(&format!("content-length: {}\r\n", req.body.len()));
        text.push_str(&format!("statestream-attempts: {attempts}\r\n"));
        let last: String = last
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        text.push_str(&format!("statestream-last-error: {last}\r\n\r\n"));
        let write = |p: &Path| -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let mut f = std::fs::File::create(p)?;
            f.write_all(text.as_bytes())?;
            f.write_all(&req.body)?;
            f.sync_all()?;
            std::fs::rename(p, &path)?;
            // The rename is durable once the directory is synced.
            #[cfg(unix)]
            std::fs::File::open(dir)?.sync_all()?;
            Ok(())
        };
        write(&tmp).map_err(|source| Error::DeadLetter {
            id: req.id.clone(),
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

impl Streamer for WebhookStreamer {
    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        if self.gone.is_some() {
            return Err(StreamError::new(self.gone_error()));
        }
        let height = block.height();
        let requests = self.requests(block).map_err(StreamError::new)?;
        let start = match self.resume {
            Some((h, n)) if h == height => n,
            _ => 0,
        };
        for (i, req) in requests.iter().enumerate().skip(start) {
            if let Err(e) = self.deliver(req, height) {
                self.resume = Some((height, i));
                return Err(StreamError::new(e));
            }
            self.resume = Some((height, i + 1));
        }
        self.resume = None;
        Ok(())
    }
}

/// One request to `e`, its URL and headers rendered for `vars`.
fn request(
    e: &Endpoint,
    id: String,
    vars: &Vars<'_>,
    content_type: &'static str,
    body: Vec<u8>,
) -> Result<Request, Error> {
    let url = e.url.render(vars, Escape::Url);
    crate::config::check_uri(&url).map_err(|reason| Error::BadRequest {
        id: id.clone(),
        url: url.clone(),
        reason,
    })?;
    let mut headers = Vec::with_capacity(e.headers.len());
    for (name, t) in &e.headers {
        let value = t.render(vars, Escape::Header);
        let value = HeaderValue::from_bytes(value.as_bytes()).map_err(|_| Error::BadRequest {
            id: id.clone(),
            url: url.clone(),
            reason: format!("header {name}: {value:?} is not a valid header value"),
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `d` moved by up to ±10%, differently per process, request and attempt,
/// so that many receivers' retries do not all land at once.
fn jitter(d: Duration, id: &str, attempt: usize) -> Duration {
    if d.is_zero() {
        return d;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(id.as_bytes());
    h.write_usize(attempt);
    // A fraction in [-0.1, 0.1).
    let permille = (h.finish() % 200) as i64 - 100;
    let ms = d.as_millis().min(u128::from(u64::MAX)) as i64;
    Duration::from_millis((ms + ms * permille / 1000).max(0) as u64)
}

/// `Retry-After`: delay-seconds, or an HTTP date (IMF-fixdate).
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_imf_fixdate(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` -> seconds since the epoch.
fn parse_imf_fixdate(s: &str) -> Option<u64> {
    let rest = s.get(5..)?; // "Sun, "
    let mut parts = rest.split(' ');
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let h: u64 = hms.next()?.parse().ok()?;
    let m: u64 = hms.next()?.parse().ok()?;
    let sec: u64 = hms.next()?.parse().ok()?;
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // days_from_civil (Howard Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + h * 3600 + m * 60 + sec)
}

/// A URL without its user information (which may hold a password).
fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_classifies_in_order() {
        assert_eq!(classify(200, &[], &[]), Verdict::Delivered);
        assert_eq!(classify(204, &[], &[]), Verdict::Delivered);
        assert_eq!(classify(302, &[], &[]), Verdict::Retry);
        assert_eq!(classify(500, &[], &[]), Verdict::Retry);
        assert_eq!(classify(410, &[], &[]), Verdict::Gone);
        assert_eq!(classify(410, &[], &[410]), Verdict::Discarded);
        assert_eq!(classify(200, &[202], &[]), Verdict::Retry);
        assert_eq!(classify(202, &[202], &[]), Verdict::Delivered);
        assert_eq!(classify(400, &[], &[400, 422]), Verdict::Discarded);
    }

    #[test]
    fn policy_retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
    }

    #[test]
    fn policy_jitter_stays_within_ten_percent() {
        for attempt in 0..50 {
            let d = jitter(Duration::from_millis(1000), "x", attempt);
            assert!(
                d >= Duration::from_millis(900) && d < Duration::from_millis(1100),
                "{d:?}"
            );
        }
        assert_eq!(jitter(Duration::ZERO, "x", 0), Duration::ZERO);
    }

    #[test]
    fn policy_redacts_user_info() {
        assert_eq!(redact("https://u:p@h/x@y"), "https://***@h/x@y");
        assert_eq!(redact("http://h/x"), "http://h/x");
    }
}
