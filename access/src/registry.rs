//! The registry: every credential in memory, each change written to the
//! node's store first (a system table, [`statestream_store::Records`]),
//! then to the in-memory view, then announced by bumping a generation
//! that open streams watch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use statestream_store::Records;
use tokio::sync::watch;
use tracing::info;

use crate::error::{AccessError, AuthError};
use crate::model::{
    Credential, CredentialPatch, NewCredential, Rotation, SecretHash, check_id, check_scopes,
    parse_expiry,
};
use crate::secret::{Secret, constant_time_eq, hash, id_of, to_hex};
use crate::time::now;

/// The name of the system table credentials are kept in.
pub const TABLE: &str = "credentials";

/// The target of the audit log lines (create, rotate, update, revoke,
/// denial); never a secret in them.
pub const AUDIT_TARGET: &str = "statestream::audit";

/// The credentials of a node, shared by its front-ends, its admin API and
/// run-time subscriptions. Cheap to clone.
#[derive(Clone)]
pub struct Registry(Arc<Inner>);

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("credentials", &self.read().len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// `None`: kept in memory only (tests, tools).
    records: Option<Records>,
    view: RwLock<HashMap<String, Arc<Credential>>>,
    /// Serializes changes, so the store and the view change in one order.
    write: Mutex<()>,
    generation: watch::Sender<u64>,
    counters: Mutex<HashMap<String, Arc<Counters>>>,
}

/// The counters of one credential (label `credential` on `/metrics`).
#[derive(Debug, Default)]
pub struct Counters {
    streams: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    denials: AtomicU64,
}

/// One credential's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterValues {
    /// Streams open now.
    pub streams: u64,
    /// Messages sent to its streams.
    pub messages: u64,
    /// Bytes of those messages.
    pub bytes: u64,
    /// Requests refused (401 for a known id, 403, too many streams).
    pub denials: u64,
}

impl Counters {
    /// Counts one message of `bytes` sent.
    pub fn sent(&self, bytes: usize) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn read(&self) -> CounterValues {
        CounterValues {
            streams: self.streams.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            denials: self.denials.load(Ordering::Relaxed),
        }
    }
}

/// A stream counted against its credential's `max_streams`; uncounted
/// when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    counters: Arc<Counters>,
}

impl StreamSlot {
    /// The credential's counters (to count what the stream sends).
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.counters.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request authenticated by one of a credential's secrets.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The credential as it was when the request was checked.
    pub credential: Arc<Credential>,
    /// The hash of the secret used: a stream ends when that secret stops
    /// (a rotation's grace period over). `None`: authenticated otherwise
    /// (a client certificate naming the credential).
    secret: Option<[u8; 32]>,
}

impl Authenticated {
    /// The Unix second the request's access ends by itself (expiry, or the
    /// end of its secret's grace period), if any.
    pub fn deadline(&self) -> Option<i64> {
        let until = self.secret.and_then(|h| {
            let hex = to_hex(&h);
            self.credential
                .secrets
                .iter()
                .find(|s| s.sha256 == hex)
                .and_then(|s| s.until)
        });
        match (until, self.credential.expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Registry {
    /// The credentials kept in `records` (the node's
    /// `store.records("credentials")`).
    pub fn open(records: Records) -> Result<Registry, AccessError> {
        let mut view = HashMap::new();
        for (id, bytes) in records.list()? {
            let c: Credential =
                serde_json::from_slice(&bytes).map_err(|e| AccessError::Corrupt {
                    id: id.clone(),
                    reason: e.to_string(),
                })?;
            view.insert(id, Arc::new(c));
        }
        Ok(Registry::with(Some(records), view))
    }

    /// An empty registry kept in memory only.
    pub fn in_memory() -> Registry {
        Registry::with(None, HashMap::new())
    }

    fn with(records: Option<Records>, view: HashMap<String, Arc<Credential>>) -> Registry {
        Registry(Arc::new(Inner {
            records,
            view: RwLock::new(view),
            write: Mutex::new(()),
            generation: watch::channel(0).0,
            counters: Mutex::new(HashMap::new()),
        }))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Credential>>> {
        // A panic while the lock was held left the map whole (every write
        // replaces one entry): the poison is not a reason to stop serving.
        self.0.view.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any credential is stored (revoked ones included): then a
    /// streamer without a `token` refuses requests without a credential.
    pub fn has_credentials(&self) -> bool {
        !self.read().is_empty()
    }

    /// Every credential, in id order.
    pub fn list(&self) -> Vec<Arc<Credential>> {
        let mut all: Vec<_> = self.read().values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// The credential `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Credential>> {
        self.read().get(id).cloned()
    }

    /// A receiver that sees a new value on every change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.0.generation.subscribe()
    }

    /// Writes `c` to the store, then the view, then announces it.
    fn commit(&self, c: Credential) -> Result<Arc<Credential>, AccessError> {
        if let Some(records) = &self.0.records {
            let bytes = serde_json::to_vec(&c).map_err(|e| AccessError::Corrupt {
                id: c.id.clone(),
                reason: e.to_string(),
            })?;
            records.put(&c.id, &bytes)?;
        }
        let c = Arc::new(c);
        self.0
            .view
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(c.id.clone(), Arc::clone(&c));
        self.0.generation.send_modify(|g| *g += 1);
        Ok(c)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.0.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a credential; its secret is returned, and shown nowhere
    /// else. A revoked credential's id may be used again.
    pub fn create(&self, new: NewCredential) -> Result<(Arc<Credential>, Secret), AccessError> {
        check_id(&new.id)?;
        check_scopes(&new.scopes)?;
        let expires_at = parse_expiry(new.expires_at.as_deref())?;
        let _write = self.lock();
        if self.get(&new.id).is_some_and(|c| !c.is_revoked()) {
            return Err(AccessError::Exists { id: new.id });
        }
        let secret = Secret::generate(&new.id)?;
        let c = Credential {
            id: new.id,
            scopes: new.scopes,
            push: new.push,
            subscribe_webhooks: new.subscribe_webhooks,
            max_streams: new.max_streams,
            expires_at,
            description: new.description,
            created_at: now(),
            rotated_at: None,
            revoked_at: None,
            secrets: vec![SecretHash {
                sha256: to_hex(&hash(secret.expose())),
                until: None,
            }],
        };
        let c = self.commit(c)?;
        info!(target: AUDIT_TARGET, action = "create", credential = %c.id, scopes = c.scopes.len(), push = c.push, "credential created");
        Ok((c, secret))
    }

    /// The live (not revoked) credential `id`, for a change.
    fn live(&self, id: &str) -> Result<Arc<Credential>, AccessError> {
        let c = self
            .get(id)
            .ok_or_else(|| AccessError::NotFound { id: id.into() })?;
        if c.is_revoked() {
            return Err(AccessError::Revoked { id: id.into() });
        }
        Ok(c)
    }

    /// Changes scopes, permissions, limits, description or expiry; takes
    /// effect at once (streams now out of scope end).
    pub fn update(&self, id: &str, patch: CredentialPatch) -> Result<Arc<Credential>, AccessError> {
        let _write = self.lock();
        let mut c = Credential::clone(&*self.live(id)?);
        if let Some(scopes) = patch.scopes {
            check_scopes(&scopes)?;
            c.scopes = scopes;
        }
        if let Some(push) = patch.push {
            c.push = push;
        }
        if let Some(w) = patch.subscribe_webhooks {
            c.subscribe_webhooks = w;
        }
        if let Some(m) = patch.max_streams {
            c.max_streams = m;
        }
        if let Some(e) = patch.expires_at {
            c.expires_at = parse_expiry(e.as_deref())?;
        }
        if let Some(d) = patch.description {
            c.description = d;
        }
        let c = self.commit(c)?;
        info!(target: AUDIT_TARGET, action = "update", credential = %c.id, scopes = c.scopes.len(), push = c.push, "credential updated");
        Ok(c)
    }

    /// A new secret; the current one stays valid for `grace_seconds`
    /// (older rotated-out secrets end now).
    pub fn rotate(
        &self,
        id: &str,
        rotation: Rotation,
    ) -> Result<(Arc<Credential>, Secret), AccessError> {
        let _write = self.lock();
        let mut c = Credential::clone(&*self.live(id)?);
        let now = now();
        let until = now.saturating_add(i64::try_from(rotation.grace_seconds).unwrap_or(i64::MAX));
        c.secrets.retain(|s| s.until.is_none());
        for s in &mut c.secrets {
            s.until = Some(until);
        }
        if rotation.grace_seconds == 0 {
            c.secrets.clear();
        }
        let secret = Secret::generate(id)?;
        c.secrets.push(SecretHash {
            sha256: to_hex(&hash(secret.expose())),
            until: None,
        });
        c.rotated_at = Some(now);
        let c = self.commit(c)?;
        info!(target: AUDIT_TARGET, action = "rotate", credential = %c.id, grace_seconds = rotation.grace_seconds, "credential rotated");
        Ok((c, secret))
    }

    /// Revokes `id`: refused from now on, its open streams end. The record
    /// stays (as revoked) so that the node keeps requiring credentials.
    pub fn revoke(&self, id: &str) -> Result<Arc<Credential>, AccessError> {
        let _write = self.lock();
        let mut c = Credential::clone(&*self.live(id)?);
        c.revoked_at = Some(now());
        let c = self.commit(c)?;
        info!(target: AUDIT_TARGET, action = "revoke", credential = %c.id, "credential revoked");
        Ok(c)
    }

    /// The credential a secret belongs to, if the secret is one of its
    /// valid ones and it is neither revoked nor expired.
    pub fn authenticate(&self, secret: &str) -> Result<Authenticated, AuthError> {
        let id = id_of(secret).ok_or(AuthError::Unknown)?;
        let c = self.get(id).ok_or(AuthError::Unknown)?;
        let h = hash(secret);
        let now = now();
        // Every hash is compared (no early exit), each in constant time.
        let mut found = false;
        for s in &c.secrets {
            let hit = constant_time_eq(s.sha256.as_bytes(), to_hex(&h).as_bytes());
            let valid = s.until.is_none_or(|t| t > now);
            found |= hit & valid;
        }
        if !found {
            return Err(AuthError::Unknown);
        }
        Authenticated {
            credential: c,
            secret: Some(h),
        }
        .recheck(self, now)
    }

    /// The credential `id` for a request authenticated otherwise than by a
    /// secret (a verified client certificate whose subject CN is `id`).
    pub fn authenticate_id(&self, id: &str) -> Result<Authenticated, AuthError> {
        let c = self.get(id).ok_or(AuthError::Unknown)?;
        Authenticated {
            credential: c,
            secret: None,
        }
        .recheck(self, now())
    }

    /// The counters of credential `id`.
    pub fn counters(&self, id: &str) -> Arc<Counters> {
        let mut all = self.0.counters.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(all.entry(id.to_string()).or_default())
    }

    /// Every credential's counters that were used, in id order.
    pub fn metrics(&self) -> Vec<(String, CounterValues)> {
        let all = self.0.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = all.iter().map(|(id, c)| (id.clone(), c.read())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Counts and logs one refused request of credential `id` (`None`: no
    /// or an unknown credential) on `front_end`.
    pub fn denied(&self, id: Option<&str>, front_end: &str, reason: &str) {
        if let Some(id) = id {
            self.counters(id).denials.fetch_add(1, Ordering::Relaxed);
        }
        info!(target: AUDIT_TARGET, action = "deny", credential = id.unwrap_or("-"), front_end, reason, "request denied");
    }

    /// Counts a new stream of `a`'s credential; `None` when that would
    /// pass its `max_streams`.
    pub fn open_stream(&self, a: &Authenticated) -> Option<StreamSlot> {
        let counters = self.counters(&a.credential.id);
        let max = a.credential.max_streams.map_or(u64::MAX, u64::from);
        counters
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(StreamSlot { counters })
    }
}

impl Authenticated {
    /// The same request checked again against the credential as it is
    /// now: revoked, expired, its secret rotated out, all refuse it.
    pub fn recheck(self, registry: &Registry, now: i64) -> Result<Authenticated, AuthError> {
        let c = registry
            .get(&self.credential.id)
            .ok_or(AuthError::Unknown)?;
        let secret_ok = self.secret.is_none_or(|h| {
            let hex = to_hex(&h);
            c.secrets
                .iter()
                .any(|s| s.sha256 == hex && s.until.is_none_or(|t| t > now))
        });
        if c.is_revoked() {
            return Err(AuthError::Revoked { id: c.id.clone() });
        }
        if !secret_ok {
            return Err(AuthError::Unknown);
        }
        if c.is_expired(now) {
            return Err(AuthError::Expired { id: c.id.clone() });
        }
        Ok(Authenticated {
            credential: c,
            secret: self.secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Scope;

    fn new(id: &str) -> NewCredential {
        NewCredential {
            id: id.into(),
            scopes: vec![Scope {
                store: "bank".into(),
                prefixes: vec![b"balances/".to_vec()],
            }],
            push: false,
            subscribe_webhooks: false,
            max_streams: Some(1),
            expires_at: None,
            description: String::new(),
        }
    }

    #[test]
    fn registry_rotate_revoke_and_reopen() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store.redb");
        let bank = statestream_store::StoreKey::new("bank")?;
        let store = statestream_store::MultiStore::open(&path, &[bank], Default::default())?;
        let registry = Registry::open(store.records(TABLE))?;
        let mut changes = registry.changes();
        let (_, first) = registry.create(new("wallet"))?;
        assert!(changes.has_changed()?, "a create is announced");
        changes.mark_unchanged();
        assert!(matches!(
            registry.create(new("wallet")),
            Err(AccessError::Exists { .. })
        ));
        let who = registry.authenticate(first.expose())?;
        let slot = registry.open_stream(&who).expect("the first stream");
        assert!(registry.open_stream(&who).is_none(), "max_streams = 1");
        drop(slot);
        assert!(registry.open_stream(&who).is_some());

        let (_, second) = registry.rotate("wallet", Rotation { grace_seconds: 60 })?;
        assert!(
            registry.authenticate(first.expose()).is_ok(),
            "in the grace period"
        );
        assert!(registry.authenticate(second.expose()).is_ok());
        let old = registry.authenticate(first.expose())?;
        assert!(old.deadline().is_some(), "the old secret ends");
        let (_, third) = registry.rotate("wallet", Rotation { grace_seconds: 0 })?;
        assert_eq!(
            registry.authenticate(first.expose()).unwrap_err(),
            AuthError::Unknown
        );
        assert_eq!(
            registry.authenticate(second.expose()).unwrap_err(),
            AuthError::Unknown
        );
        assert!(registry.authenticate(third.expose()).is_ok());
        assert!(changes.has_changed()?);

        registry.update(
            "wallet",
            CredentialPatch {
                expires_at: Some(Some("2000-01-01T00:00:00Z".into())),
                ..Default::default()
            },
        )?;
        assert!(matches!(
            registry.authenticate(third.expose()),
            Err(AuthError::Expired { .. })
        ));
        registry.revoke("wallet")?;
        assert!(matches!(
            registry.authenticate(third.expose()),
            Err(AuthError::Revoked { .. })
        ));
        assert!(matches!(
            registry.revoke("wallet"),
            Err(AccessError::Revoked { .. })
        ));
        assert!(matches!(
            registry.revoke("nope"),
            Err(AccessError::NotFound { .. })
        ));
        registry.create(new("indexer"))?;
        // The registry holds the database open: dropped before the store.
        drop(registry);
        store.close()?;

        let store = statestream_store::MultiStore::open_existing(&path, Default::default())?;
        let registry = Registry::open(store.records(TABLE))?;
        let ids: Vec<_> = registry.list().iter().map(|c| c.id.clone()).collect();
        assert_eq!(ids, ["indexer", "wallet"]);
        assert!(registry.get("wallet").is_some_and(|c| c.is_revoked()));
        let raw = std::fs::read(&path)?;
        let secret = third.expose().as_bytes();
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret),
            "no secret in the store file"
        );
        Ok(())
    }
}
