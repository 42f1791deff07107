//! The streamer's pieces for callers that run their own delivery loop
//! (run-time subscriptions): the checked options, a block's requests
//! (with a filter of the caller's), one signed attempt with its outcome,
//! and the policy's verdict. The requests, ids, bodies and signatures are
//! the ones the `webhook` streamer sends.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use statestream_core::{Action, Block, Record};
use ureq::http;

use crate::config::{Plan, WebhookConfig, action_index};
use crate::error::Error;
use crate::policy::{Verdict, classify, retry_after};
use crate::redact;
use crate::request::{Request, requests_where, unix_now};
use crate::sign::Secret;
use crate::template::Vars;

/// How much of a response body an attempt keeps.
pub const RESPONSE_BODY_LIMIT: usize = 1024;

/// How much of a response body is read at most (the rest closes the
/// connection instead of being drained).
const DRAIN_LIMIT: u64 = 64 * 1024;

/// A bad option found by [`WebhookConfig::check`]: the key and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
#[non_exhaustive]
pub struct InvalidOption {
    /// The option (`url`, `method`, `headers`, `actions`, `data`,
    /// `success`, `discard`, `retry_schedule_ms`, ...).
    pub key: &'static str,
    /// Why it is refused (URLs and header values redacted).
    pub message: String,
}

/// Checked webhook options, ready to form and send requests
/// ([`WebhookConfig::check`]).
pub struct WebhookPlan {
    plan: Plan,
    agent: ureq::Agent,
}

impl std::fmt::Debug for WebhookPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookPlan")
            .field("id_prefix", &self.plan.id_prefix)
            .finish_non_exhaustive()
    }
}

impl WebhookConfig {
    /// Checks the options as [`build`](WebhookConfig::build) does, for a
    /// caller that sends the requests itself: `name` is the `webhook-id`
    /// prefix. `on_exhausted` and `dead_letter_dir` are not used there.
    pub fn check(&self, name: &str) -> Result<WebhookPlan, InvalidOption> {
        let plan = self
            .plan(name, Path::new("."))
            .map_err(|(key, message)| InvalidOption { key, message })?;
        Ok(WebhookPlan {
            agent: crate::streamer::agent(plan.timeout, false),
            plan,
        })
    }
}

/// One request, formed once: every attempt sends these bytes.
#[derive(Debug, Clone)]
pub struct WebhookRequest(Request);

impl WebhookRequest {
    /// The `webhook-id`: `<prefix>-<height>-<index>` (per change) or
    /// `<prefix>-<height>` (per block), the same every time the request is
    /// formed from the block.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The rendered URL.
    pub fn url(&self) -> &str {
        &self.0.url
    }

    /// The URL with any credentials in it hidden, for logs and attempt
    /// records.
    pub fn shown_url(&self) -> String {
        redact::url(&self.0.url)
    }

    /// The body bytes.
    pub fn body(&self) -> &[u8] {
        &self.0.body
    }
}

/// What one attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttemptOutcome {
    /// The status code, when the endpoint answered.
    pub status: Option<u16>,
    /// Why there is no answer (connection refused, timeout...).
    pub error: Option<String>,
    /// What the status means under the policy; `Retry` without an answer.
    pub verdict: Verdict,
    /// The wait a `Retry-After` on 429 or 503 asked for.
    pub retry_after: Option<Duration>,
    /// The start of the response body, at most [`RESPONSE_BODY_LIMIT`]
    /// bytes.
    pub body: Vec<u8>,
    /// From sending to the end of the response headers.
    pub latency: Duration,
}

impl WebhookPlan {
    /// The same plan whose requests go to public addresses only
    /// ([`is_public_address`](crate::is_public_address)), checked at every
    /// connection (not only when the URL was accepted): for endpoints a
    /// consumer chose.
    pub fn public_only(self) -> WebhookPlan {
        WebhookPlan {
            agent: crate::streamer::agent(self.plan.timeout, true),
            plan: self.plan,
        }
    }

    /// The block's requests for the changes `keep` accepts, in order. The
    /// `webhook-id` of a change counts every change of the block (of the
    /// selected stores), kept or not, so it does not depend on `keep`.
    pub fn requests(
        &self,
        block: &Block,
        keep: &mut dyn FnMut(&Record<'_>, Action) -> bool,
    ) -> Result<Vec<WebhookRequest>, Error> {
        Ok(requests_where(&self.plan, block, keep)?
            .into_iter()
            .map(WebhookRequest)
            .collect())
    }

    /// A request with its own id and JSON body to the `update` endpoint,
    /// its templates rendered with empty values and height 0 (a test
    /// event).
    pub fn custom_request(&self, id: String, body: Vec<u8>) -> Result<WebhookRequest, Error> {
        let vars = Vars {
            store: "",
            key: "",
            height: 0,
            action: "",
            wild: &[],
        };
        let endpoint = &self.plan.endpoints[action_index(Action::Update)];
        Ok(WebhookRequest(crate::request::request(
            endpoint,
            id,
            &vars,
            "application/json",
            body,
        )?))
    }

    /// The retry schedule: the delay before each attempt.
    pub fn schedule(&self) -> &[Duration] {
        &self.plan.schedule
    }

    /// What `status` means under the `success` and `discard` lists.
    pub fn verdict(&self, status: u16) -> Verdict {
        classify(status, &self.plan.success, &self.plan.discard)
    }

    /// Sends one attempt of `req`, signed with `secrets` (one signature
    /// each; none: no `webhook-signature`).
    pub fn send(&self, req: &WebhookRequest, secrets: &[Secret]) -> AttemptOutcome {
        let req = &req.0;
        let timestamp = unix_now();
        let mut builder = http::Request::builder()
            .method(req.method.clone())
            .uri(req.url.as_str());
        for (name, value) in &req.headers {
            builder = builder.header(name, value);
        }
        for (name, value) in req.standard_headers(secrets, timestamp) {
            builder = builder.header(name, value);
        }
        let failed = |error: String, latency| AttemptOutcome {
            status: None,
            error: Some(error),
            verdict: Verdict::Retry,
            retry_after: None,
            body: Vec::new(),
            latency,
        };
        let request = match builder.body(req.body.as_slice()) {
            Ok(r) => r,
            Err(e) => return failed(format!("cannot form the request: {e}"), Duration::ZERO),
        };
        let started = Instant::now();
        match self.agent.run(request) {
            Ok(mut response) => {
                let latency = started.elapsed();
                let status = response.status().as_u16();
                let retry_after = retry_after(
                    status,
                    response
                        .headers()
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok()),
                    SystemTime::now(),
                );
                let mut reader = response.body_mut().as_reader().take(DRAIN_LIMIT);
                let mut body = Vec::new();
                let _ = (&mut reader)
                    .take(RESPONSE_BODY_LIMIT as u64)
                    .read_to_end(&mut body);
                // The rest is drained so the connection can be reused.
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
                AttemptOutcome {
                    status: Some(status),
                    error: None,
                    verdict: self.verdict(status),
                    retry_after,
                    body,
                    latency,
                }
            }
            Err(e) => failed(redact::url_in(&e.to_string(), &req.url), started.elapsed()),
        }
    }
}
