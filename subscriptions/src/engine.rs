//! The engine: subscriptions in the store's `subscriptions` table, each
//! active one a streamer on the running delivery manager; the operations
//! of the API.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;
use statestream::{RuntimeHandle, StartAt, StreamerSetup};
use statestream_core::{Block, Shutdown, StoreKey, StoreSelection};
use statestream_store::Records;
use statestream_webhook::{Secret, WebhookPlan};
use tracing::{info, warn};

use crate::deliver::{
    Attempt, Control, Live, Sent, StreamerParts, SubscriptionStreamer, now_rfc3339, send, unix_now,
};
use crate::error::{Error, Result};
use crate::model::{
    Disabled, Filter, Reach, StartSpec, State, Stored, StoredSecret, SubscriptionSpec,
};

/// The system table of subscriptions.
pub const SUBSCRIPTIONS_TABLE: &str = "subscriptions";
/// Every subscription id starts with this (and is its streamer's name and
/// its `webhook-id` prefix).
pub const ID_PREFIX: &str = "sub_";

/// The engine's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineOptions {
    /// Attempts kept per subscription (the oldest go first).
    pub attempts_kept: usize,
    /// Whether subscriptions owned by a credential may call private,
    /// loopback or link-local addresses (the operator's own endpoints are
    /// always allowed).
    pub allow_private_endpoints: bool,
    /// How long a rotated-out secret still signs.
    pub rotation_grace: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            attempts_kept: 100,
            allow_private_endpoints: false,
            rotation_grace: Duration::from_secs(86_400),
        }
    }
}

impl EngineOptions {
    /// Sets [`attempts_kept`](EngineOptions::attempts_kept).
    pub fn attempts_kept(mut self, n: usize) -> Self {
        self.attempts_kept = n.max(1);
        self
    }

    /// Sets [`allow_private_endpoints`](EngineOptions::allow_private_endpoints).
    pub fn allow_private_endpoints(mut self, allow: bool) -> Self {
        self.allow_private_endpoints = allow;
        self
    }

    /// Sets [`rotation_grace`](EngineOptions::rotation_grace).
    pub fn rotation_grace(mut self, grace: Duration) -> Self {
        self.rotation_grace = grace;
        self
    }
}

/// Who acts: the operator (admin token) or a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// The admin token: every subscription.
    Admin,
    /// A credential: only its own subscriptions.
    Credential(&'a str),
}

impl Caller<'_> {
    fn owns(&self, stored: &Stored) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Credential(c) => stored.owner.as_deref() == Some(*c),
        }
    }
}

/// A subscription as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SubscriptionView {
    pub id: String,
    /// The credential that owns it; absent: the operator's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub state: State,
    /// The last height delivered.
    pub cursor: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<Disabled>,
    pub created_at: String,
    /// The first height it was to deliver.
    pub start_height: u64,
    #[serde(flatten)]
    pub spec: SubscriptionSpec,
    /// The signing secret: only in the answers of create and
    /// rotate-secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// One subscription in `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SubscriptionStatus {
    pub id: String,
    pub state: State,
    pub delivered_height: u64,
    pub lag_blocks: u64,
    pub delivered: u64,
    pub discarded: u64,
    pub failed: u64,
    pub rate_limited: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReplaySummary {
    pub from_height: u64,
    pub to_height: u64,
    /// Requests formed (the same ids and bodies as the first delivery).
    pub requests: u64,
    pub delivered: u64,
    pub discarded: u64,
    /// Requests whose every attempt failed (see the attempts).
    pub failed: u64,
}

struct Inner {
    records: Records,
    runtime: RuntimeHandle,
    options: EngineOptions,
    live: Mutex<BTreeMap<String, Arc<Live>>>,
    /// Serializes the operations that change a subscription.
    ops: Mutex<()>,
    control: Sender<Control>,
    /// Ends the waits of replays, and the engine's thread.
    shutdown: Shutdown,
    /// Each running streamer's own signal, by id.
    signals: Mutex<BTreeMap<String, Shutdown>>,
}

/// The subscription engine. Cheap to clone; usable from any thread (the
/// calls block: from async code, run them with `spawn_blocking`).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn random(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(Error::Random)?;
    Ok(buf)
}

fn new_id() -> Result<String> {
    let bytes = random(12)?;
    Ok(format!(
        "{ID_PREFIX}{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

fn new_secret() -> Result<String> {
    Ok(Secret::encode(&random(24)?))
}

fn secrets_of(stored: &Stored) -> Vec<(Secret, Option<u64>)> {
    stored
        .secrets
        .iter()
        .filter_map(|s| Secret::parse(&s.secret).ok().map(|k| (k, s.expires_at)))
        .collect()
}

impl Engine {
    /// Starts the engine on a running manager: every active subscription
    /// of `records` (the store's `subscriptions` table) is added back and
    /// resumes from its cursor; paused and disabled ones stay held.
    pub fn start(
        records: Records,
        runtime: RuntimeHandle,
        options: EngineOptions,
    ) -> Result<Engine> {
        let (control, rx) = crossbeam_channel::unbounded();
        let engine = Engine {
            inner: Arc::new(Inner {
                records,
                runtime,
                options,
                live: Mutex::new(BTreeMap::new()),
                ops: Mutex::new(()),
                control,
                shutdown: Shutdown::new(),
                signals: Mutex::new(BTreeMap::new()),
            }),
        };
        let mut ids = Vec::new();
        for (id, bytes) in engine.inner.records.list()? {
            let stored = decode(&id, &bytes)?;
            let live = Arc::new(Live::new(
                &id,
                engine.inner.options.attempts_kept,
                secrets_of(&stored),
            ));
            lock(&engine.inner.live).insert(id.clone(), live);
            if stored.state == State::Active {
                engine.run(&stored, StartAt::Resume)?;
            }
            ids.push(id);
        }
        // A streamer registered for a subscription that no longer exists
        // (deleted while the node stopped half-way): nothing holds for it.
        for name in engine.inner.runtime.names() {
            if name.starts_with(ID_PREFIX) && !ids.contains(&name) {
                let _ = engine.inner.runtime.remove(&name);
            }
        }
        let worker = engine.clone();
        std::thread::Builder::new()
            .name("subscriptions".to_owned())
            .spawn(move || worker.control_loop(&rx))
            .map_err(|e| Error::Conflict {
                id: String::new(),
                message: format!("cannot start the engine's thread: {e}"),
            })?;
        info!(subscriptions = ids.len(), "subscription engine started");
        Ok(engine)
    }

    /// Stops the engine's thread and ends replays in progress; the
    /// streamers stop with the delivery manager.
    pub fn close(&self) {
        self.inner.shutdown.trigger();
        let _ = self.inner.control.send(Control::Stop);
    }

    fn control_loop(&self, rx: &Receiver<Control>) {
        while let Ok(msg) = rx.recv() {
            match msg {
                Control::Stop => break,
                Control::Disable { id, height, reason } => {
                    if let Err(e) = self.disable(&id, height, reason) {
                        warn!(subscription = %id, error = %e, "cannot disable the subscription");
                    }
                }
            }
        }
    }

    fn load(&self, id: &str) -> Result<Stored> {
        match self.inner.records.get(id)? {
            Some(bytes) => decode(id, &bytes),
            None => Err(Error::NotFound { id: id.to_owned() }),
        }
    }

    /// The subscription `id` if `caller` may see it (404 otherwise: it is
    /// not theirs to know about).
    fn load_for(&self, caller: Caller<'_>, id: &str) -> Result<Stored> {
        let stored = self.load(id)?;
        if caller.owns(&stored) {
            Ok(stored)
        } else {
            Err(Error::NotFound { id: id.to_owned() })
        }
    }

    fn save(&self, stored: &Stored) -> Result<()> {
        let bytes = serde_json::to_vec(stored).map_err(|e| Error::Corrupt {
            id: stored.id.clone(),
            message: e.to_string(),
        })?;
        self.inner.records.put(&stored.id, &bytes)?;
        Ok(())
    }

    fn live(&self, id: &str) -> Arc<Live> {
        let mut map = lock(&self.inner.live);
        Arc::clone(map.entry(id.to_owned()).or_insert_with(|| {
            Arc::new(Live::new(id, self.inner.options.attempts_kept, Vec::new()))
        }))
    }

    /// The plan and filter a stored subscription delivers with. Its URLs
    /// were checked when it was made or changed; a subscription owned by a
    /// credential (unless `allow_private_endpoints`) is also held to public
    /// addresses at every connection, so a host name that later resolves
    /// to a private address is refused then too.
    fn delivery_plan(&self, stored: &Stored) -> Result<(WebhookPlan, Filter)> {
        let (plan, filter) =
            stored
                .spec
                .check(&stored.id, self.inner.runtime.stores(), Reach::Any)?;
        let caller = match &stored.owner {
            Some(owner) => Caller::Credential(owner),
            None => Caller::Admin,
        };
        let plan = match self.reach(caller) {
            Reach::Any => plan,
            Reach::PublicOnly => plan.public_only(),
        };
        Ok((plan, filter))
    }

    /// Adds the subscription's streamer to the manager; returns its
    /// cursor.
    fn run(&self, stored: &Stored, start: StartAt) -> Result<u64> {
        let (plan, filter) = self.delivery_plan(stored)?;
        let shutdown = Shutdown::new();
        let live = self.live(&stored.id);
        let setup = StreamerSetup::new(&stored.id, &filter.stores).stop_node_on_error(false);
        let streamer = SubscriptionStreamer::new(StreamerParts {
            live,
            plan,
            filter,
            skip_unchanged: stored.spec.skip_unchanged,
            rate_limit_per_s: stored.spec.rate_limit_per_s,
            disable_after_failures: stored.spec.disable_after_failures,
            disable_after_seconds: stored.spec.disable_after_seconds,
            shutdown: shutdown.clone(),
            control: self.inner.control.clone(),
        });
        let cursor = self
            .inner
            .runtime
            .add(setup, Box::new(streamer), shutdown.clone(), start)?;
        lock(&self.inner.signals).insert(stored.id.clone(), shutdown);
        Ok(cursor)
    }

    /// Stops the streamer, keeping its cursor.
    fn halt(&self, id: &str) -> Result<u64> {
        lock(&self.inner.signals).remove(id);
        match self.inner.runtime.stop(id) {
            Ok(c) => Ok(c),
            Err(statestream::Error::UnknownRuntimeStreamer { .. }) => Ok(self.cursor(id)),
            Err(e) => Err(e.into()),
        }
    }

    fn cursor(&self, id: &str) -> u64 {
        self.inner.runtime.cursor(id).map_or(0, |c| c.delivered)
    }

    fn view(&self, stored: Stored, secret: Option<String>) -> SubscriptionView {
        SubscriptionView {
            cursor: self.cursor(&stored.id),
            id: stored.id,
            owner: stored.owner,
            state: stored.state,
            disabled: stored.disabled,
            created_at: stored.created_at,
            start_height: stored.start_height,
            spec: stored.spec,
            secret,
        }
    }

    fn reach(&self, caller: Caller<'_>) -> Reach {
        match caller {
            Caller::Admin => Reach::Any,
            Caller::Credential(_) if self.inner.options.allow_private_endpoints => Reach::Any,
            Caller::Credential(_) => Reach::PublicOnly,
        }
    }

    /// Creates a subscription owned by `caller` and starts it. The answer
    /// carries its signing secret (shown only here and by
    /// [`rotate_secret`](Engine::rotate_secret)). Nothing is created when
    /// a check fails.
    pub fn create(&self, caller: Caller<'_>, spec: SubscriptionSpec) -> Result<SubscriptionView> {
        let _ops = lock(&self.inner.ops);
        let id = new_id()?;
        spec.check(&id, self.inner.runtime.stores(), self.reach(caller))?;
        let committed = self.inner.runtime.committed();
        let (start, start_height) = match spec.start {
            StartSpec::Latest => (StartAt::Head, committed + 1),
            StartSpec::At { height } => (StartAt::Height(height), height),
        };
        let secret = new_secret()?;
        let mut stored = Stored {
            id: id.clone(),
            owner: match caller {
                Caller::Admin => None,
                Caller::Credential(c) => Some(c.to_owned()),
            },
            spec,
            state: State::Active,
            disabled: None,
            secrets: vec![StoredSecret {
                secret: secret.clone(),
                expires_at: None,
            }],
            created_at: now_rfc3339(),
            start_height,
        };
        self.live(&id).set_secrets(secrets_of(&stored));
        self.save(&stored)?;
        match self.run(&stored, start) {
            Ok(cursor) if cursor + 1 != stored.start_height => {
                // "latest": blocks committed meanwhile; it starts after the
                // height the manager saw.
                stored.start_height = cursor + 1;
                self.save(&stored)?;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = self.inner.records.delete(&id);
                lock(&self.inner.live).remove(&id);
                return Err(e);
            }
        }
        info!(subscription = %id, start = start_height, "subscription created");
        Ok(self.view(stored, Some(secret)))
    }

    /// The subscriptions `caller` may see, by id.
    pub fn list(&self, caller: Caller<'_>) -> Result<Vec<SubscriptionView>> {
        let mut out = Vec::new();
        for (id, bytes) in self.inner.records.list()? {
            let stored = decode(&id, &bytes)?;
            if caller.owns(&stored) {
                out.push(self.view(stored, None));
            }
        }
        Ok(out)
    }

    /// One subscription.
    pub fn get(&self, caller: Caller<'_>, id: &str) -> Result<SubscriptionView> {
        let stored = self.load_for(caller, id)?;
        Ok(self.view(stored, None))
    }

    /// The stored filter's stores and prefixes of one subscription (for
    /// scope checks of a PATCH).
    pub fn spec(&self, caller: Caller<'_>, id: &str) -> Result<SubscriptionSpec> {
        Ok(self.load_for(caller, id)?.spec)
    }

    /// Changes a subscription: `patch` is a JSON merge patch (RFC 7396) of
    /// its fields (`start` cannot change). An active one restarts from its
    /// cursor with the new settings.
    pub fn patch(
        &self,
        caller: Caller<'_>,
        id: &str,
        patch: &serde_json::Value,
    ) -> Result<SubscriptionView> {
        let _ops = lock(&self.inner.ops);
        let mut stored = self.load_for(caller, id)?;
        let spec = patched(&stored.spec, patch)?;
        if spec.start != stored.spec.start {
            return Err(Error::invalid(
                "start",
                "the start of a subscription cannot change (replay a range instead)".to_owned(),
            ));
        }
        spec.check(id, self.inner.runtime.stores(), self.reach(caller))?;
        stored.spec = spec;
        if stored.state == State::Active {
            self.halt(id)?;
            self.save(&stored)?;
            self.run(&stored, StartAt::Resume)?;
        } else {
            self.save(&stored)?;
        }
        Ok(self.view(stored, None))
    }

    /// Deletes a subscription: its streamer stops, its cursor and record
    /// go.
    pub fn delete(&self, caller: Caller<'_>, id: &str) -> Result<()> {
        let _ops = lock(&self.inner.ops);
        self.load_for(caller, id)?;
        lock(&self.inner.signals).remove(id);
        match self.inner.runtime.remove(id) {
            Ok(()) | Err(statestream::Error::UnknownRuntimeStreamer { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.inner.records.delete(id)?;
        lock(&self.inner.live).remove(id);
        info!(subscription = %id, "subscription deleted");
        Ok(())
    }

    /// Pauses delivery; its cursor holds what it has not delivered.
    pub fn pause(&self, caller: Caller<'_>, id: &str) -> Result<SubscriptionView> {
        let _ops = lock(&self.inner.ops);
        let mut stored = self.load_for(caller, id)?;
        if stored.state == State::Active {
            self.halt(id)?;
        }
        stored.state = State::Paused;
        self.save(&stored)?;
        Ok(self.view(stored, None))
    }

    /// Resumes a paused or disabled subscription from its cursor: nothing
    /// is lost.
    pub fn resume(&self, caller: Caller<'_>, id: &str) -> Result<SubscriptionView> {
        let _ops = lock(&self.inner.ops);
        let mut stored = self.load_for(caller, id)?;
        if stored.state == State::Active {
            return Ok(self.view(stored, None));
        }
        stored.state = State::Active;
        stored.disabled = None;
        self.save(&stored)?;
        self.run(&stored, StartAt::Resume)?;
        Ok(self.view(stored, None))
    }

    /// Disables every active subscription whose owner `admits` no longer
    /// (its credential revoked, expired, deleted, or narrowed below the
    /// subscription's filter): a subscription never reads more than its
    /// owner may. The reason names the owner; `resume` after the owner's
    /// access is back continues from where it stopped. Returns the ids
    /// disabled.
    pub fn recheck_owners(
        &self,
        admits: impl Fn(&str, &SubscriptionSpec) -> std::result::Result<(), String>,
    ) -> Result<Vec<String>> {
        let mut disabled = Vec::new();
        for (id, bytes) in self.inner.records.list()? {
            let stored = decode(&id, &bytes)?;
            let Some(owner) = stored.owner.as_deref() else {
                continue;
            };
            if stored.state != State::Active {
                continue;
            }
            if let Err(why) = admits(owner, &stored.spec) {
                let height = self.cursor(&id);
                warn!(subscription = %id, owner, reason = %why,
                    "subscription disabled: its owner's access no longer covers it");
                self.disable(&id, height, format!("owner credential {owner:?}: {why}"))?;
                disabled.push(id);
            }
        }
        Ok(disabled)
    }

    /// Runs [`recheck_owners`](Engine::recheck_owners) every `every` on a
    /// thread of its own until the engine closes (expiry comes with time,
    /// not with a change).
    pub fn watch_owners(
        &self,
        every: Duration,
        admits: impl Fn(&str, &SubscriptionSpec) -> std::result::Result<(), String> + Send + 'static,
    ) -> Result<()> {
        let engine = self.clone();
        std::thread::Builder::new()
            .name("subscription-owners".to_owned())
            .spawn(move || {
                while !engine.inner.shutdown.wait(every) {
                    if let Err(e) = engine.recheck_owners(&admits) {
                        warn!(error = %e, "cannot re-check the subscriptions' owners");
                    }
                }
            })
            .map_err(|e| Error::Conflict {
                id: String::new(),
                message: format!("cannot start the owners' thread: {e}"),
            })?;
        Ok(())
    }

    /// Disables a subscription after lasting failure (its streamer asked).
    fn disable(&self, id: &str, height: u64, reason: String) -> Result<()> {
        let _ops = lock(&self.inner.ops);
        let mut stored = match self.load(id) {
            Ok(s) => s,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if stored.state != State::Active {
            return Ok(());
        }
        self.halt(id)?;
        stored.state = State::Disabled;
        stored.disabled = Some(Disabled {
            reason,
            height,
            at: now_rfc3339(),
        });
        self.save(&stored)
    }

    /// A new signing secret; the old ones go on signing for the grace
    /// period (`webhook-signature` then carries one signature each).
    pub fn rotate_secret(&self, caller: Caller<'_>, id: &str) -> Result<SubscriptionView> {
        let _ops = lock(&self.inner.ops);
        let mut stored = self.load_for(caller, id)?;
        let now = unix_now();
        let until = now + self.inner.options.rotation_grace.as_secs();
        stored
            .secrets
            .retain(|s| s.expires_at.is_none_or(|t| t > now));
        for s in &mut stored.secrets {
            s.expires_at = Some(s.expires_at.map_or(until, |t| t.min(until)));
        }
        let secret = new_secret()?;
        stored.secrets.push(StoredSecret {
            secret: secret.clone(),
            expires_at: None,
        });
        self.save(&stored)?;
        self.live(id).set_secrets(secrets_of(&stored));
        Ok(self.view(stored, Some(secret)))
    }

    /// The latest attempts first (`failed_only`: failures), at most
    /// `limit`.
    pub fn attempts(
        &self,
        caller: Caller<'_>,
        id: &str,
        failed_only: bool,
        limit: usize,
    ) -> Result<Vec<Attempt>> {
        self.load_for(caller, id)?;
        Ok(self.live(id).attempts(failed_only, limit))
    }

    /// Delivers heights `from..=to` again from the change log, with the
    /// same `webhook-id`s and bodies as the first time (every change under
    /// the filter: `skip_unchanged` is not applied), one request after the
    /// other under the retry schedule, ignoring the rate limit. Only
    /// heights already delivered can be replayed.
    pub fn replay(
        &self,
        caller: Caller<'_>,
        id: &str,
        from: u64,
        to: u64,
    ) -> Result<ReplaySummary> {
        let stored = self.load_for(caller, id)?;
        if from == 0 || from > to {
            return Err(Error::invalid(
                "from_height",
                format!("{from}..={to} is not a range of heights (1 <= from_height <= to_height)"),
            ));
        }
        let cursor = self.cursor(id);
        if to > cursor {
            return Err(Error::invalid(
                "to_height",
                format!("height {to} is not delivered yet (the subscription's cursor is {cursor})"),
            ));
        }
        let log = self.inner.runtime.change_log();
        let bounds = log.bounds()?;
        let first_kept = bounds.map_or(u64::MAX, |(lo, _)| lo);
        if from < first_kept {
            return Err(Error::NotRetained {
                id: id.to_owned(),
                first_missing: from,
                last_missing: (first_kept - 1).min(to),
                kept: bounds.map_or("no block".to_owned(), |(lo, hi)| format!("{lo}..={hi}")),
            });
        }
        let (plan, filter) = self.delivery_plan(&stored)?;
        let live = self.live(id);
        let selection = StoreSelection::new(self.inner.runtime.stores(), &filter.stores);
        let mut summary = ReplaySummary {
            from_height: from,
            to_height: to,
            requests: 0,
            delivered: 0,
            discarded: 0,
            failed: 0,
        };
        for height in from..=to {
            let changes = log.read(height)?;
            let block = Block::from_change_set(Arc::new(changes), &selection)
                .map_err(|e| Error::invalid("from_height", e.to_string()))?;
            let requests =
                plan.requests(&block, &mut |rec, action| filter.keeps(rec.key, action))?;
            for req in requests {
                summary.requests += 1;
                match send(
                    &plan,
                    &live,
                    &req,
                    height,
                    "replay",
                    &self.inner.shutdown,
                    None,
                ) {
                    Sent::Delivered => summary.delivered += 1,
                    Sent::Discarded => summary.discarded += 1,
                    Sent::Interrupted => return Err(Error::Closed),
                    Sent::Gone(_) | Sent::Exhausted(_) => summary.failed += 1,
                }
            }
        }
        Ok(summary)
    }

    /// Sends one signed test event (`{"type": "statestream.test", ...}`)
    /// to the endpoint, once, and returns the attempt.
    pub fn test(&self, caller: Caller<'_>, id: &str) -> Result<Attempt> {
        let stored = self.load_for(caller, id)?;
        let (plan, _) = self.delivery_plan(&stored)?;
        let event_id = format!("test_{}", &new_id()?[ID_PREFIX.len()..]);
        let body = serde_json::to_vec(&serde_json::json!({
            "type": "statestream.test",
            "id": event_id,
            "subscription": id,
            "time": now_rfc3339(),
        }))
        .map_err(|e| Error::invalid("body", e.to_string()))?;
        let req = plan.custom_request(event_id, body)?;
        let live = self.live(id);
        // One attempt, whatever the schedule: the caller sees the answer.
        let outcome = plan.send(&req, &live_signing(&stored));
        let attempt = crate::deliver::test_attempt(&req, outcome);
        live.record(attempt.clone());
        Ok(attempt)
    }

    /// Every subscription's delivery state, for `/status` and metrics.
    pub fn status(&self) -> Result<Vec<SubscriptionStatus>> {
        let committed = self.inner.runtime.committed();
        let mut out = Vec::new();
        for (id, bytes) in self.inner.records.list()? {
            let stored = decode(&id, &bytes)?;
            let live = self.live(&id);
            let delivered = self.cursor(&id);
            let c = &live.counters;
            out.push(SubscriptionStatus {
                state: stored.state,
                delivered_height: delivered,
                lag_blocks: committed.saturating_sub(delivered),
                delivered: c.delivered.load(Ordering::Relaxed),
                discarded: c.discarded.load(Ordering::Relaxed),
                failed: c.failed.load(Ordering::Relaxed),
                rate_limited: c.rate_limited.load(Ordering::Relaxed),
                disabled_reason: stored.disabled.map(|d| d.reason),
                id,
            });
        }
        Ok(out)
    }

    /// The `subscriptions` section of `/status`
    /// ([`statestream::Observer::add_section`]): every subscription's
    /// state, delivered height, lag and attempt counts.
    pub fn status_section(&self) -> statestream::Section {
        let engine = self.clone();
        Arc::new(move || match engine.status() {
            Ok(list) => serde_json::to_value(list).unwrap_or_default(),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        })
    }

    /// The stores of the node (for scope checks).
    pub fn stores(&self) -> &[StoreKey] {
        self.inner.runtime.stores()
    }
}

fn live_signing(stored: &Stored) -> Vec<Secret> {
    let now = unix_now();
    secrets_of(stored)
        .into_iter()
        .filter(|(_, until)| until.is_none_or(|t| t > now))
        .map(|(s, _)| s)
        .collect()
}

fn decode(id: &str, bytes: &[u8]) -> Result<Stored> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        id: id.to_owned(),
        message: e.to_string(),
    })
}

/// `spec` with the JSON merge patch applied, checked for unknown fields.
fn patched(spec: &SubscriptionSpec, patch: &serde_json::Value) -> Result<SubscriptionSpec> {
    let mut value =
        serde_json::to_value(spec).map_err(|e| Error::invalid("body", e.to_string()))?;
    merge(&mut value, patch);
    serde_json::from_value(value).map_err(|e| Error::invalid("body", e.to_string()))
}

/// RFC 7396: objects merge, `null` removes, anything else replaces.
pub(crate) fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(serde_json::Map::new());
    }
    if let serde_json::Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
    }
}
