//! The one access check of every front-end: a request's credential (the
//! bearer token it carries, however its protocol carries it) against the
//! streamer's `token` and the node's credentials
//! ([`statestream_access::Registry`]), giving what the request may read
//! ([`Grant`]) or why it may not ([`Denied`]). Front-ends only find the
//! credential and map [`Denied`] to their own status: 401 /
//! `UNAUTHENTICATED` for no, an unknown, a revoked or an expired
//! credential; 403 / `PERMISSION_DENIED` for a request outside the
//! credential's scopes or a push without the `push` permission; 429 /
//! `RESOURCE_EXHAUSTED` past the credential's `max_streams`.
//!
//! A stream opened with a credential is watched ([`Grant::open_stream`]):
//! when the credential is revoked, expires, loses the secret the stream
//! used (a rotation's grace period over), or its scopes no longer cover
//! the stream's filter, the stream ends within a second.
//!
//! Client certificates (mTLS): the verified certificate's subject CN names
//! the credential the client acts as ([`Access::check_with_peer`]); with a
//! bearer too, both must name the same credential.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use statestream_access::{Authenticated, Counters, Registry, Scope, StreamSlot};

use crate::filter::{Filter, FilterBuilder, key_to_text};
use crate::outbox::End;

/// The streamer's access rule.
#[derive(Debug, Clone)]
pub struct Access {
    token: Arc<str>,
    credentials: Option<Registry>,
    /// The front-end, for the audit log.
    front_end: &'static str,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// A credential is required and the request carries none.
    #[error("missing token")]
    Missing,
    /// The request's token is not the streamer's, and no credential's.
    #[error("wrong token")]
    Wrong,
    /// The credential is revoked or expired (the message names it).
    #[error("{0}")]
    Unauthenticated(String),
    /// The request asks for more than the credential's scopes allow, or
    /// pushes without the `push` permission.
    #[error("{0}")]
    Forbidden(String),
    /// The credential has `max_streams` streams open.
    #[error("{0}")]
    TooManyStreams(String),
}

impl Denied {
    /// Whether this is an authentication failure (401), not a permission
    /// one.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            Denied::Missing | Denied::Wrong | Denied::Unauthenticated(_)
        )
    }
}

/// What an admitted request may read: everything (the streamer's `token`,
/// or no access rule), or a credential's scopes.
#[derive(Debug, Clone)]
pub struct Grant {
    who: Option<(Authenticated, Registry)>,
    front_end: &'static str,
}

/// The token of an `authorization` header value (`Bearer <token>`).
pub fn bearer(authorization: &str) -> Option<&str> {
    authorization.strip_prefix("Bearer ")
}

impl Access {
    /// `token`: the streamer's (empty: none); `credentials`: the node's,
    /// when it keeps any. With no token and no credential stored, every
    /// request is admitted.
    pub fn new(token: &str, credentials: Option<Registry>, front_end: &'static str) -> Access {
        Access {
            token: token.into(),
            credentials,
            front_end,
        }
    }

    /// Admits a request carrying `credential` (its bearer token, if any)
    /// over a connection whose verified client certificate is `peer` (if
    /// any): a certificate whose subject CN is a credential's id acts as
    /// that credential; a bearer sent with it must be the token or name
    /// the same credential.
    pub fn check_with_peer(
        &self,
        credential: Option<&str>,
        peer: Option<&statestream_net::PeerCertificate>,
    ) -> Result<Grant, Denied> {
        let named = peer.and_then(|p| p.subject_cn.as_deref()).filter(|cn| {
            self.credentials
                .as_ref()
                .is_some_and(|r| r.get(cn).is_some())
        });
        let Some(cn) = named else {
            return self.check(credential);
        };
        let Some(given) = credential else {
            return self.check_subject(cn);
        };
        let grant = self.check(Some(given))?;
        match grant.who.as_ref().map(|(a, _)| a.credential.id.as_str()) {
            Some(id) if id != cn => {
                let message = format!(
                    "the client certificate names credential {cn:?} and the bearer credential {id:?}: they must be the same"
                );
                if let Some(r) = &self.credentials {
                    r.denied(Some(cn), self.front_end, &message);
                }
                Err(Denied::Unauthenticated(message))
            }
            _ => Ok(grant),
        }
    }

    /// Admits a request carrying `credential` (its bearer token, if any).
    pub fn check(&self, credential: Option<&str>) -> Result<Grant, Denied> {
        let open = Grant {
            who: None,
            front_end: self.front_end,
        };
        let registry = self.credentials.as_ref().filter(|r| r.has_credentials());
        let Some(given) = credential else {
            if self.token.is_empty() && registry.is_none() {
                return Ok(open);
            }
            if let Some(r) = registry {
                r.denied(None, self.front_end, "missing credential");
            }
            return Err(Denied::Missing);
        };
        if !self.token.is_empty()
            && statestream_access::constant_time_eq(given.as_bytes(), self.token.as_bytes())
        {
            return Ok(open);
        }
        let Some(registry) = registry else {
            if self.token.is_empty() {
                return Ok(open);
            }
            return Err(Denied::Wrong);
        };
        match registry.authenticate(given) {
            Ok(who) => Ok(Grant {
                who: Some((who, registry.clone())),
                front_end: self.front_end,
            }),
            Err(e) => {
                let id = match &e {
                    statestream_access::AuthError::Revoked { id }
                    | statestream_access::AuthError::Expired { id } => Some(id.as_str()),
                    _ => None,
                };
                registry.denied(id, self.front_end, &e.to_string());
                Err(match e {
                    statestream_access::AuthError::Unknown => Denied::Wrong,
                    other => Denied::Unauthenticated(other.to_string()),
                })
            }
        }
    }

    /// A request whose verified client certificate has the subject CN
    /// `subject_cn` uses the credential of that id (if active), as if it
    /// had sent one of its secrets.
    pub fn check_subject(&self, subject_cn: &str) -> Result<Grant, Denied> {
        let registry = self.credentials.as_ref().ok_or(Denied::Wrong)?;
        match registry.authenticate_id(subject_cn) {
            Ok(who) => Ok(Grant {
                who: Some((who, registry.clone())),
                front_end: self.front_end,
            }),
            Err(e) => {
                registry.denied(Some(subject_cn), self.front_end, &e.to_string());
                Err(Denied::Unauthenticated(e.to_string()))
            }
        }
    }
}

/// The filter of what `scopes` cover among the streamed stores (`None`:
/// nothing).
fn scope_filter(scopes: &[Scope], streamed: &[statestream_core::StoreKey]) -> Option<Filter> {
    let mut b = FilterBuilder::new(streamed, usize::MAX);
    for store in streamed {
        for scope in scopes.iter().filter(|s| s.names(store.name())) {
            // The stores are the streamed ones: the builder accepts them.
            if scope.whole() {
                let _ = b.whole(store.name(), "scopes");
            } else {
                for p in &scope.prefixes {
                    let _ = b.prefix(store.name(), p, "scopes");
                }
            }
        }
    }
    (!b.is_empty()).then(|| b.build())
}

/// What of `filter` the scopes do not cover, as `store/prefix*`,
/// `store/key` or `store (whole)`; empty when they cover all of it.
fn outside(scopes: &[Scope], filter: &Filter) -> Vec<String> {
    let mut out = Vec::new();
    for (store, part) in filter.stores() {
        let name = store.name();
        let applicable: Vec<&Scope> = scopes.iter().filter(|s| s.names(name)).collect();
        if applicable.iter().any(|s| s.whole()) {
            continue;
        }
        if applicable.is_empty() {
            out.push(format!("{name} (store not in the scopes)"));
            continue;
        }
        let covered = |k: &[u8]| {
            applicable
                .iter()
                .any(|s| s.prefixes.iter().any(|p| k.starts_with(p)))
        };
        if part.whole {
            out.push(format!("{name} (the whole store)"));
            continue;
        }
        for p in part.prefixes.iter().filter(|p| !covered(p)) {
            out.push(format!("{name}/{}*", key_to_text(p)));
        }
        for k in part.keys.iter().filter(|k| !covered(k)) {
            out.push(format!("{name}/{}", key_to_text(k)));
        }
    }
    out
}

/// The scopes in words, for a refusal.
fn describe(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| {
            if s.whole() {
                format!("{} (whole)", s.store)
            } else {
                s.prefixes
                    .iter()
                    .map(|p| format!("{}/{}*", s.store, key_to_text(p)))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Grant {
    fn forbid(&self, message: String) -> Denied {
        if let Some((a, r)) = &self.who {
            r.denied(Some(&a.credential.id), self.front_end, &message);
        }
        Denied::Forbidden(message)
    }

    /// The filter a request asked for (in `wanted`), within the grant: a
    /// request that names nothing gets the credential's scopes; one that
    /// names anything outside them is refused, naming what.
    pub fn select(&self, wanted: FilterBuilder<'_>) -> Result<Filter, Denied> {
        let Some((who, _)) = &self.who else {
            return Ok(wanted.build());
        };
        let c = &who.credential;
        if wanted.is_empty() {
            let streamed = wanted.streamed();
            return scope_filter(&c.scopes, streamed).ok_or_else(|| {
                let names: Vec<&str> = streamed.iter().map(|s| s.name()).collect();
                self.forbid(format!(
                    "credential {:?}: its scopes ({}) cover none of the streamed stores ({})",
                    c.id,
                    describe(&c.scopes),
                    names.join(", ")
                ))
            });
        }
        let filter = wanted.build();
        let outside = outside(&c.scopes, &filter);
        if !outside.is_empty() {
            return Err(self.forbid(format!(
                "credential {:?} may not read {}: outside its scopes ({})",
                c.id,
                outside.join(", "),
                describe(&c.scopes)
            )));
        }
        Ok(filter)
    }

    /// Whether `store` is one the grant may see (listings).
    pub fn sees(&self, store: &str) -> bool {
        self.who
            .as_ref()
            .is_none_or(|(a, _)| a.credential.scopes.iter().any(|s| s.names(store)))
    }

    /// Whether a write of `key` in `store` may be pushed.
    pub fn may_push(&self, store: &str, key: &[u8]) -> Result<(), Denied> {
        let Some((who, _)) = &self.who else {
            return Ok(());
        };
        let c = &who.credential;
        if !c.push {
            return Err(self.forbid(format!(
                "credential {:?} may not push (its push permission is off)",
                c.id
            )));
        }
        let covered = c
            .scopes
            .iter()
            .filter(|s| s.names(store))
            .any(|s| s.whole() || s.prefixes.iter().any(|p| key.starts_with(p)));
        if !covered {
            return Err(self.forbid(format!(
                "credential {:?} may not push {store}/{}: outside its scopes ({})",
                c.id,
                key_to_text(key),
                describe(&c.scopes)
            )));
        }
        Ok(())
    }

    /// A stream of `filter` opened under this grant: counted against the
    /// credential's `max_streams`, and watched for the credential's
    /// changes.
    pub fn open_stream(&self, filter: &Filter) -> Result<StreamGuard, Denied> {
        let Some((who, registry)) = &self.who else {
            return Ok(StreamGuard::default());
        };
        let slot = registry.open_stream(who).ok_or_else(|| {
            let message = format!(
                "credential {:?} has {} streams open, its max_streams",
                who.credential.id,
                who.credential.max_streams.unwrap_or(0)
            );
            registry.denied(Some(&who.credential.id), self.front_end, &message);
            Denied::TooManyStreams(message)
        })?;
        let ends = watch(registry.clone(), who.clone(), filter.clone());
        Ok(StreamGuard {
            slot: Some(slot),
            ends: Some(Box::pin(ends)),
        })
    }
}

/// What a stream opened under a credential carries: its place in the
/// credential's `max_streams` and counters, and the future that resolves
/// when the credential no longer allows it.
#[derive(Default)]
pub struct StreamGuard {
    slot: Option<StreamSlot>,
    ends: Option<AccessEnds>,
}

/// Resolves with how a stream ends when its credential stops allowing it.
pub type AccessEnds = Pin<Box<dyn Future<Output = End> + Send>>;

impl StreamGuard {
    /// The credential's counters, if the stream has a credential.
    pub fn counters(&self) -> Option<Arc<Counters>> {
        self.slot.as_ref().map(|s| Arc::clone(s.counters()))
    }

    /// Splits into the slot (kept while the stream is open) and the end.
    pub(crate) fn into_parts(self) -> (Option<StreamSlot>, Option<AccessEnds>) {
        (self.slot, self.ends)
    }
}

/// How long past an expiry or a grace period's end a stream may run:
/// the time is kept to the second.
const DEADLINE_SLACK: Duration = Duration::from_millis(20);

/// Resolves when the credential of `who` no longer allows `filter`:
/// checked again on every change of the registry and when the
/// credential's expiry or the secret's grace period passes.
async fn watch(registry: Registry, mut who: Authenticated, filter: Filter) -> End {
    let mut changes = registry.changes();
    changes.mark_unchanged();
    loop {
        let deadline = who.deadline().map(|t| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let at = Duration::from_secs(u64::try_from(t).unwrap_or(0));
            at.saturating_sub(now) + DEADLINE_SLACK
        });
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    // The registry is gone with the node: nothing to watch.
                    return std::future::pending().await;
                }
            }
            () = sleep(deadline) => {}
        }
        match who.clone().recheck(&registry, statestream_access::now()) {
            Err(e) => return End::Revoked(e.to_string()),
            Ok(now) => {
                let out = outside(&now.credential.scopes, &filter);
                if !out.is_empty() {
                    return End::OutOfScope(format!(
                        "credential {:?} may no longer read {}: its scopes changed to {}",
                        now.credential.id,
                        out.join(", "),
                        describe(&now.credential.scopes)
                    ));
                }
                who = now;
            }
        }
    }
}

async fn sleep(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use statestream_access::NewCredential;
    use statestream_core::StoreKey;

    #[test]
    fn no_token_admits_everyone_and_a_token_is_checked() {
        assert!(Access::new("", None, "test").check(None).is_ok());
        let access = Access::new("s3cret", None, "test");
        assert_eq!(access.check(None).unwrap_err(), Denied::Missing);
        assert_eq!(access.check(Some("s3cre")).unwrap_err(), Denied::Wrong);
        assert_eq!(access.check(Some("s3creT")).unwrap_err(), Denied::Wrong);
        assert!(access.check(Some("s3cret")).is_ok());
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
    }

    #[test]
    fn scopes_select_refuse_and_push() {
        let registry = Registry::in_memory();
        let (_, secret) = registry
            .create(NewCredential {
                id: "wallet".into(),
                scopes: vec![Scope {
                    store: "bank".into(),
                    prefixes: vec![b"balances/".to_vec()],
                }],
                push: false,
                subscribe_webhooks: false,
                max_streams: None,
                expires_at: None,
                description: String::new(),
            })
            .unwrap();
        let access = Access::new("", Some(registry), "test");
        assert_eq!(access.check(None).unwrap_err(), Denied::Missing);
        assert_eq!(
            access.check(Some("ss_wallet_00")).unwrap_err(),
            Denied::Wrong
        );
        let grant = access.check(Some(secret.expose())).unwrap();
        let streamed = [
            StoreKey::new("bank").unwrap(),
            StoreKey::new("acc").unwrap(),
        ];
        let all = grant.select(FilterBuilder::new(&streamed, 10)).unwrap();
        assert!(all.store("acc").is_none());
        assert_eq!(
            all.store("bank").unwrap().prefixes,
            vec![b"balances/".to_vec()]
        );
        let mut b = FilterBuilder::new(&streamed, 10);
        b.prefix("bank", b"balances/x", "t").unwrap();
        assert!(grant.select(b).is_ok());
        let mut b = FilterBuilder::new(&streamed, 10);
        b.whole("acc", "t").unwrap();
        b.key("bank", b"other", "t").unwrap();
        let Denied::Forbidden(message) = grant.select(b).unwrap_err() else {
            panic!("not forbidden")
        };
        assert!(
            message.contains("acc (store not in the scopes)"),
            "{message}"
        );
        assert!(message.contains("bank/other"), "{message}");
        assert!(matches!(
            grant.may_push("bank", b"balances/a"),
            Err(Denied::Forbidden(_))
        ));
        assert!(grant.sees("bank") && !grant.sees("acc"));
    }
}
