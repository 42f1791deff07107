//! The admin API of a process that runs streamers: started from
//! `[admin]` once the delivery manager has opened the credentials.

use std::path::Path;

use anyhow::{Context, Result};
use statestream::{DeliveryManager, Registry};
use statestream_admin::{AdminAuth, AdminOptions, AdminServer, Caller, read_token_file};
use statestream_config::{AppConfig, ListenerTls};
use statestream_net::TlsFiles;
use statestream_store::MultiStore;
use statestream_subscriptions::api::{ApiFailure, Authenticator, HeaderMap, Principal, ReadScope};
use statestream_subscriptions::{Engine, EngineOptions, SUBSCRIPTIONS_TABLE};

/// Starts the run-time subscriptions (issue 28) on the running manager:
/// the active ones resume from their cursors. Their list is served on
/// `/status` and their metrics on `/metrics`; their routes on the admin
/// API ([`start_admin`]).
pub fn start_subscriptions(
    store: &MultiStore,
    manager: &DeliveryManager,
    registry: &Registry,
) -> Result<Engine> {
    let engine = Engine::start(
        store.records(SUBSCRIPTIONS_TABLE),
        manager.runtime(),
        EngineOptions::default(),
    )
    .context("cannot start the run-time subscriptions")?;
    manager
        .observer()
        .add_section("subscriptions", engine.status_section());
    let collector = engine
        .collector()
        .context("cannot describe the subscriptions' metrics")?;
    registry
        .metrics()
        .register(Box::new(collector))
        .context("cannot register the subscriptions' metrics")?;
    // A subscription never reads more than its owner may: revoking,
    // expiring, deleting or narrowing the owner's credential disables it
    // within a second.
    if let Some(credentials) = manager.credentials() {
        let stores = engine.stores().to_vec();
        engine
            .watch_owners(std::time::Duration::from_secs(1), move |owner, spec| {
                owner_admits(&credentials, &stores, owner, spec)
            })
            .context("cannot start the subscriptions' owner check")?;
    }
    Ok(engine)
}

/// Whether credential `owner` may still read what `spec` subscribes to.
fn owner_admits(
    credentials: &statestream_access::Registry,
    stores: &[statestream_store::StoreKey],
    owner: &str,
    spec: &statestream_subscriptions::SubscriptionSpec,
) -> Result<(), String> {
    let Some(c) = credentials.get(owner) else {
        return Err("it no longer exists".to_owned());
    };
    if c.is_revoked() {
        return Err("it was revoked".to_owned());
    }
    if c.is_expired(statestream_access::now()) {
        return Err("it expired".to_owned());
    }
    if !c.subscribe_webhooks {
        return Err("it no longer has the subscribe_webhooks permission".to_owned());
    }
    let scopes: Vec<ReadScope> = c
        .scopes
        .iter()
        .map(|s| ReadScope {
            store: s.store.clone(),
            prefixes: s.prefixes.clone(),
        })
        .collect();
    statestream_subscriptions::api::within_scopes(spec, stores, &scopes)
}

/// The admin listener's authentication, as the subscription routes see
/// it: the admin token, or a credential with its read scopes.
struct AdminCaller(AdminAuth);

impl Authenticator for AdminCaller {
    fn principal(&self, headers: &HeaderMap) -> Result<Principal, ApiFailure> {
        match self.0.caller(headers) {
            Ok(Caller::Credential(who)) => {
                let c = &who.credential;
                Ok(Principal::Credential {
                    id: c.id.clone(),
                    subscribe_webhooks: c.subscribe_webhooks,
                    scopes: c
                        .scopes
                        .iter()
                        .map(|s| ReadScope {
                            store: s.store.clone(),
                            prefixes: s.prefixes.clone(),
                        })
                        .collect(),
                })
            }
            Ok(_) => Ok(Principal::Admin),
            Err(e) => Err(ApiFailure::new(e.status, e.code, e.message)),
        }
    }
}

/// Starts the admin API when `[admin] address` is set (the token read
/// from `token_file`, relative paths under `home`) on `credentials` (none:
/// no configured streamer, nothing to manage), with the subscription
/// routes when `subscriptions` runs; errors name the file, key and line.
pub fn start_admin(
    config: &AppConfig,
    home: &Path,
    credentials: Option<statestream_access::Registry>,
    subscriptions: Option<&Engine>,
) -> Result<Option<AdminServer>> {
    let Some(admin) = config.admin() else {
        return Ok(None);
    };
    let at = || {
        let line = admin.line.map_or(String::new(), |l| format!(" (line {l})"));
        format!("{}: [admin]{line}", config.origin().display())
    };
    let Some(credentials) = credentials else {
        return Ok(None);
    };
    let token_file = home.join(&admin.token_file);
    let token =
        read_token_file(&token_file).with_context(|| format!("{} key `token_file`", at()))?;
    let mut options = AdminOptions::new(admin.address, &token);
    options.allowed_hosts = admin.allowed_hosts.clone();
    options.tls = admin.tls.as_ref().map(|tls| tls_files(tls, home));
    options.check_tls().with_context(at)?;
    let extra = subscriptions
        .map(|engine| {
            let auth = AdminCaller(AdminAuth::new(&token, credentials.clone()));
            vec![statestream_subscriptions::api::router(
                engine.clone(),
                std::sync::Arc::new(auth),
            )]
        })
        .unwrap_or_default();
    let server = AdminServer::start(options, credentials, extra)
        .with_context(|| format!("{} key `address`", at()))?;
    Ok(Some(server))
}

/// A listener's TLS files from app.toml, relative paths under `home`.
pub fn tls_files(tls: &ListenerTls, home: &Path) -> TlsFiles {
    let files = TlsFiles::new(home.join(&tls.cert_file), home.join(&tls.key_file));
    match &tls.client_ca_file {
        Some(ca) => files.client_ca_file(home.join(ca)),
        None => files,
    }
}
