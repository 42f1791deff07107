//! Delivery: one subscription's streamer on the delivery manager (its own
//! worker thread, so a slow endpoint delays nobody else), the retry
//! schedule, the rate limit, the attempt log, and the failure count that
//! disables a subscription.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use serde::Serialize;
use statestream_core::{Block, Shutdown, StreamError, Streamer};
use statestream_webhook::{
    AttemptOutcome, Secret, Verdict, WebhookPlan, WebhookRequest, jitter, rfc3339,
};
use tracing::warn;

use crate::model::Filter;

/// One attempt, as `GET /v1/subscriptions/{id}/attempts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Attempt {
    /// The request's `webhook-id` (the same on every attempt and replay).
    pub webhook_id: String,
    /// The block height (0 for a test event).
    pub height: u64,
    /// The URL, credentials hidden.
    pub url: String,
    /// The status code, when the endpoint answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why there was no answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `delivered`, `discarded`, `failed` or `gone`.
    pub outcome: &'static str,
    /// Milliseconds from sending to the response headers.
    pub latency_ms: u64,
    /// When it was sent, RFC 3339.
    pub time: String,
    /// The start of the response body (at most 1 KiB, as text).
    pub response_body: String,
    /// `delivery`, `replay` or `test`.
    pub kind: &'static str,
}

impl Attempt {
    /// Whether it did not deliver (`failed` or `gone`).
    pub fn failed(&self) -> bool {
        matches!(self.outcome, "failed" | "gone")
    }
}

/// Attempt counts by outcome.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) delivered: AtomicU64,
    pub(crate) discarded: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Waits for the rate limit (not failures).
    pub(crate) rate_limited: AtomicU64,
}

/// What a subscription shares between its streamer, replays and the API.
pub(crate) struct Live {
    pub(crate) id: String,
    attempts: Mutex<VecDeque<Attempt>>,
    kept: usize,
    /// Signing secrets with the Unix second each stops signing (none:
    /// current).
    secrets: RwLock<Vec<(Secret, Option<u64>)>>,
    pub(crate) counters: Counters,
}

impl Live {
    pub(crate) fn new(id: &str, kept: usize, secrets: Vec<(Secret, Option<u64>)>) -> Live {
        Live {
            id: id.to_owned(),
            attempts: Mutex::new(VecDeque::new()),
            kept: kept.max(1),
            secrets: RwLock::new(secrets),
            counters: Counters::default(),
        }
    }

    pub(crate) fn set_secrets(&self, secrets: Vec<(Secret, Option<u64>)>) {
        *self.secrets.write().unwrap_or_else(PoisonError::into_inner) = secrets;
    }

    /// The secrets that sign now: the current one and those in their grace
    /// period.
    fn signing(&self) -> Vec<Secret> {
        let now = unix_now();
        self.secrets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, until)| until.is_none_or(|t| t > now))
            .map(|(s, _)| s.clone())
            .collect()
    }

    pub(crate) fn record(&self, attempt: Attempt) {
        let mut log = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        if log.len() >= self.kept {
            log.pop_front();
        }
        log.push_back(attempt);
    }

    /// The latest attempts first, `failed_only` keeping failures, at most
    /// `limit`.
    pub(crate) fn attempts(&self, failed_only: bool, limit: usize) -> Vec<Attempt> {
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .filter(|a| !failed_only || a.failed())
            .take(limit)
            .cloned()
            .collect()
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    rfc3339(secs, d.subsec_millis() * 1_000_000).unwrap_or_default()
}

/// The attempt of a test event (height 0).
pub(crate) fn test_attempt(req: &WebhookRequest, outcome: AttemptOutcome) -> Attempt {
    let outcome_name = match (outcome.status, outcome.verdict) {
        (Some(_), Verdict::Delivered) => "delivered",
        (Some(_), Verdict::Discarded) => "discarded",
        (Some(_), Verdict::Gone) => "gone",
        _ => "failed",
    };
    Attempt {
        webhook_id: req.id().to_owned(),
        height: 0,
        url: req.shown_url(),
        status: outcome.status,
        error: outcome.error,
        outcome: outcome_name,
        latency_ms: u64::try_from(outcome.latency.as_millis()).unwrap_or(u64::MAX),
        time: now_rfc3339(),
        response_body: String::from_utf8_lossy(&outcome.body).into_owned(),
        kind: "test",
    }
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sent {
    Delivered,
    Discarded,
    /// 410 Gone: the endpoint asked to be removed.
    Gone(String),
    /// Every attempt of the schedule failed: the last error.
    Exhausted(String),
    /// The wait before an attempt was cut short (stop, pause, shutdown).
    Interrupted,
}

/// A token bucket: `rate` requests per second, bursts of up to
/// `max(1, rate)`.
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: f64) -> Bucket {
        let burst = rate.max(1.0);
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes a token; the wait until one is there (zero when there is).
    fn take(&mut self) -> Duration {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Sends `req` under the plan's schedule, logging every attempt.
pub(crate) fn send(
    plan: &WebhookPlan,
    live: &Live,
    req: &WebhookRequest,
    height: u64,
    kind: &'static str,
    shutdown: &Shutdown,
    mut bucket: Option<&mut Bucket>,
) -> Sent {
    let mut retry_after: Option<Duration> = None;
    let mut last = String::new();
    for (n, &scheduled) in plan.schedule().iter().enumerate() {
        let mut wait = jitter(scheduled, req.id(), n);
        if let Some(ra) = retry_after.take() {
            wait = wait.max(ra);
        }
        if !wait.is_zero() && shutdown.wait(wait) {
            return Sent::Interrupted;
        }
        if let Some(b) = bucket.as_deref_mut() {
            let pause = b.take();
            if !pause.is_zero() {
                live.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                if shutdown.wait(pause) {
                    return Sent::Interrupted;
                }
            }
        }
        let time = now_rfc3339();
        let outcome = plan.send(req, &live.signing());
        let (label, sent) = match (outcome.status, outcome.verdict) {
            (Some(_), Verdict::Delivered) => ("delivered", Some(Sent::Delivered)),
            (Some(_), Verdict::Discarded) => ("discarded", Some(Sent::Discarded)),
            (Some(s), Verdict::Gone) => ("gone", Some(Sent::Gone(format!("status {s}")))),
            (Some(s), _) => {
                last = format!("status {s}");
                ("failed", None)
            }
            (None, _) => {
                last = outcome.error.clone().unwrap_or_default();
                ("failed", None)
            }
        };
        let counter = match label {
            "delivered" => &live.counters.delivered,
            "discarded" => &live.counters.discarded,
            _ => &live.counters.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        retry_after = outcome.retry_after;
        live.record(Attempt {
            webhook_id: req.id().to_owned(),
            height,
            url: req.shown_url(),
            status: outcome.status,
            error: outcome.error,
            outcome: label,
            latency_ms: u64::try_from(outcome.latency.as_millis()).unwrap_or(u64::MAX),
            time,
            response_body: String::from_utf8_lossy(&outcome.body).into_owned(),
            kind,
        });
        if let Some(sent) = sent {
            return sent;
        }
    }
    Sent::Exhausted(last)
}

/// A message from a streamer to the engine.
#[derive(Debug)]
pub(crate) enum Control {
    /// Disable subscription `id`: it stopped at `height`.
    Disable {
        id: String,
        height: u64,
        reason: String,
    },
    /// The engine closes.
    Stop,
}

/// What a subscription's streamer is built from.
pub(crate) struct StreamerParts {
    pub(crate) live: Arc<Live>,
    pub(crate) plan: WebhookPlan,
    pub(crate) filter: Filter,
    pub(crate) skip_unchanged: bool,
    pub(crate) rate_limit_per_s: Option<f64>,
    pub(crate) disable_after_failures: u32,
    pub(crate) disable_after_seconds: u64,
    pub(crate) shutdown: Shutdown,
    pub(crate) control: Sender<Control>,
}

/// One subscription on the delivery manager.
pub(crate) struct SubscriptionStreamer {
    p: StreamerParts,
    bucket: Option<Bucket>,
    /// Per `store \0 key`: a hash of the value last delivered (or skipped
    /// as unchanged), for `skip_unchanged`; bounded.
    seen: Seen,
    /// `(height, n)`: the first `n` requests of block `height` are done.
    resume: Option<(u64, usize)>,
    failed_blocks: u32,
    failing_since: Option<Instant>,
}

impl SubscriptionStreamer {
    pub(crate) fn new(p: StreamerParts) -> SubscriptionStreamer {
        SubscriptionStreamer {
            bucket: p.rate_limit_per_s.map(Bucket::new),
            p,
            seen: Seen::default(),
            resume: None,
            failed_blocks: 0,
            failing_since: None,
        }
    }

    fn fail(&mut self, height: u64, reason: String, now_disable: bool) -> StreamError {
        self.failed_blocks += 1;
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        let over = self.failed_blocks >= self.p.disable_after_failures
            || since.elapsed() >= Duration::from_secs(self.p.disable_after_seconds);
        if now_disable || over {
            let reason = if now_disable {
                reason.clone()
            } else {
                format!(
                    "{} consecutive failed blocks over {} s; last: {reason}",
                    self.failed_blocks,
                    since.elapsed().as_secs()
                )
            };
            warn!(subscription = %self.p.live.id, height, reason = %reason, "subscription disabled");
            // The engine stops this streamer; if it is gone (closing), the
            // block stays for the next start.
            let _ = self.p.control.send(Control::Disable {
                id: self.p.live.id.clone(),
                height,
                reason,
            });
        }
        StreamError::msg(format_args!(
            "subscription {}: block {height} not delivered: {reason}",
            self.p.live.id
        ))
    }
}

/// Keys whose last value `skip_unchanged` remembers, per subscription.
pub(crate) const SEEN_KEYS: usize = 100_000;

/// The last value's hash per key, for `skip_unchanged`, holding at most
/// [`SEEN_KEYS`] keys: two generations, the current one filled until it
/// holds half of them, then it becomes the previous one and the previous
/// one is dropped. A key found only in the previous generation moves to
/// the current one, so the keys written least recently are forgotten
/// first; a forgotten key's next write is delivered even when its value
/// did not change (at least once, never a loss).
#[derive(Default)]
struct Seen {
    current: HashMap<Vec<u8>, u64>,
    previous: HashMap<Vec<u8>, u64>,
}

impl Seen {
    fn get(&self, key: &[u8]) -> Option<u64> {
        self.current
            .get(key)
            .or_else(|| self.previous.get(key))
            .copied()
    }

    fn insert(&mut self, key: Vec<u8>, hash: u64) {
        self.previous.remove(&key);
        self.current.insert(key, hash);
        if self.current.len() >= SEEN_KEYS / 2 {
            self.previous = std::mem::take(&mut self.current);
        }
    }

    fn remove(&mut self, key: &[u8]) {
        self.current.remove(key);
        self.previous.remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

fn seen_key(store: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(store.len() + 1 + key.len());
    k.extend_from_slice(store.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

fn value_hash(v: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

impl Streamer for SubscriptionStreamer {
    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        let height = block.height();
        let skip = self.p.skip_unchanged;
        // What this block does to `seen`, applied once it is delivered (a
        // retried block must form the same requests).
        let mut seen_after: Vec<(Vec<u8>, Option<u64>)> = Vec::new();
        let filter = &self.p.filter;
        let seen = &self.seen;
        let requests = self
            .p
            .plan
            .requests(block, &mut |rec, action| {
                if !filter.keeps(rec.key, action) {
                    return false;
                }
                if skip {
                    let k = seen_key(rec.store, rec.key);
                    match rec.value {
                        Some(v) => {
                            let h = value_hash(v);
                            if seen.get(&k) == Some(h) {
                                return false;
                            }
                            seen_after.push((k, Some(h)));
                        }
                        None => seen_after.push((k, None)),
                    }
                }
                true
            })
            .map_err(StreamError::new)?;
        let start = match self.resume {
            Some((h, n)) if h == height => n,
            _ => 0,
        };
        for (i, req) in requests.iter().enumerate().skip(start) {
            let sent = send(
                &self.p.plan,
                &self.p.live,
                req,
                height,
                "delivery",
                &self.p.shutdown,
                self.bucket.as_mut(),
            );
            match sent {
                Sent::Delivered | Sent::Discarded => self.resume = Some((height, i + 1)),
                Sent::Interrupted => {
                    self.resume = Some((height, i));
                    return Err(StreamError::msg(format_args!(
                        "subscription {}: stopped before {} was delivered",
                        self.p.live.id,
                        req.id()
                    )));
                }
                Sent::Gone(status) => {
                    self.resume = Some((height, i));
                    let reason = format!(
                        "{} answered 410 Gone ({status}) to {}: the endpoint asked to be removed",
                        req.shown_url(),
                        req.id()
                    );
                    return Err(self.fail(height, reason, true));
                }
                Sent::Exhausted(last) => {
                    self.resume = Some((height, i));
                    let reason = format!(
                        "{} to {}: every attempt failed (last: {last})",
                        req.id(),
                        req.shown_url()
                    );
                    return Err(self.fail(height, reason, false));
                }
            }
        }
        self.resume = None;
        self.failed_blocks = 0;
        self.failing_since = None;
        for (k, h) in seen_after {
            match h {
                Some(h) => self.seen.insert(k, h),
                None => self.seen.remove(&k),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_is_bounded_and_forgets_the_least_recent_keys_first() {
        let mut seen = Seen::default();
        let key = |i: usize| format!("bank\0k{i}").into_bytes();
        seen.insert(key(0), 7);
        for i in 1..SEEN_KEYS * 3 {
            seen.insert(key(i), i as u64);
            // Key 0 written again now and then stays remembered.
            if i % 1000 == 0 {
                assert_eq!(seen.get(&key(0)), Some(7), "at {i}");
                seen.insert(key(0), 7);
            }
            assert!(seen.len() <= SEEN_KEYS, "{} keys at {i}", seen.len());
        }
        assert_eq!(seen.get(&key(0)), Some(7));
        assert_eq!(seen.get(&key(1)), None, "long forgotten");
        let last = SEEN_KEYS * 3 - 1;
        assert_eq!(seen.get(&key(last)), Some(last as u64));
        seen.remove(&key(last));
        assert_eq!(seen.get(&key(last)), None);
    }
}
