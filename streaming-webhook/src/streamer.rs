//! The streamer: sends each block's requests one after the other under
//! the delivery policy, and writes dead letters when the schedule is
//! exhausted.

use std::io::Read;
use std::time::{Duration, SystemTime};

use statestream_core::{Block, Shutdown, StreamError, Streamer};
use tracing::{debug, warn};
use ureq::http;
use ureq::unversioned::transport::DefaultConnector;

use crate::config::{OnExhausted, Plan};
use crate::dead_letter;
use crate::error::Error;
use crate::policy::{Verdict, classify, jitter, retry_after};
use crate::redact;
use crate::request::{Request, requests, unix_now};

/// How much of a response body is read (and dropped) so the connection can
/// be used again; a longer body closes the connection instead.
const DRAIN_LIMIT: u64 = 64 * 1024;

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

/// The HTTP client of one streamer; with `public_only`, every connection
/// is refused unless its host resolves to a public address
/// ([`is_public_address`](crate::address::is_public_address)).
pub(crate) fn agent(timeout: Duration, public_only: bool) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        // Redirects are not followed: a 3xx is an answer that is not a
        // success, and is retried (and so never leads to another host).
        .max_redirects(0)
        .http_status_as_error(false)
        .user_agent(concat!("statestream-webhook/", env!("CARGO_PKG_VERSION")))
        .build();
    ureq::Agent::with_parts(
        config,
        DefaultConnector::default(),
        crate::address::Resolve { public_only },
    )
}

impl WebhookStreamer {
    pub(crate) fn new(name: &str, plan: Plan, shutdown: Shutdown) -> WebhookStreamer {
        WebhookStreamer {
            name: name.to_string(),
            agent: agent(plan.timeout, false),
            plan,
            shutdown,
            resume: None,
            gone: None,
        }
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
        for (name, value) in req.standard_headers(&self.plan.secrets, timestamp) {
            builder = builder.header(name, value);
        }
        let request = match builder.body(req.body.as_slice()) {
            Ok(r) => r,
            Err(e) => return Attempt::Failed(format!("cannot form the request: {e}")),
        };
        match self.agent.run(request) {
            Ok(mut response) => {
                let status = response.status().as_u16();
                let retry_after = retry_after(
                    status,
                    response
                        .headers()
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok()),
                    SystemTime::now(),
                );
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
                        warn!(streamer = %self.name, id = %req.id, status, url = %redact::url(&req.url),
                            "webhook discarded: the endpoint answered a discard status");
                        return Ok(Outcome::Discarded);
                    }
                    Verdict::Gone => {
                        self.gone = Some((req.id.clone(), redact::url(&req.url)));
                        return Err(self.gone_error());
                    }
                    Verdict::Retry => {
                        last = format!("status {status}");
                        retry_after = ra;
                    }
                },
                // The HTTP client's text may quote the URL.
                Attempt::Failed(e) => last = redact::url_in(&e, &req.url),
            }
            debug!(streamer = %self.name, id = %req.id, attempt = attempt + 1, attempts,
                error = %last, "webhook attempt failed");
        }
        match self.plan.on_exhausted {
            OnExhausted::Halt => Err(Error::Exhausted {
                id: req.id.clone(),
                url: redact::url(&req.url),
                attempts,
                last,
            }),
            OnExhausted::DeadLetter => {
                let path = dead_letter::write(
                    &self.plan.dead_letter_dir,
                    req,
                    &self.plan.secrets,
                    attempts,
                    &last,
                )?;
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
}

impl Streamer for WebhookStreamer {
    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        if self.gone.is_some() {
            return Err(StreamError::new(self.gone_error()));
        }
        let height = block.height();
        let requests = requests(&self.plan, block).map_err(StreamError::new)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// Answers `n` requests with 204, one connection each.
    fn server(listener: TcpListener, n: usize) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            for conn in listener.incoming().take(n) {
                let mut conn = conn.expect("accept");
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 204 No Content\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                );
            }
        })
    }

    #[test]
    fn the_agent_reaches_ip_literals_and_host_names_public_only_refuses_private_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let done = server(listener, 2);
        let urls = [
            format!("http://127.0.0.1:{port}/hook"),
            format!("http://localhost:{port}/hook"),
        ];
        let public_only = agent(Duration::from_secs(10), true);
        for url in &urls {
            let e = public_only.get(url).call().expect_err("a private address");
            assert!(
                e.to_string().contains("only public endpoints"),
                "{url}: {e}"
            );
        }
        let agent = agent(Duration::from_secs(10), false);
        for url in &urls {
            let status = agent.get(url).call().map(|r| r.status().as_u16());
            assert_eq!(status.ok(), Some(204), "{url}");
        }
        done.join().expect("server");
    }
}
