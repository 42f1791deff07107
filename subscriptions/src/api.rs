//! The HTTP API under `/v1/subscriptions`, for the node's admin router:
//! who may do what ([`Principal`], given by the admin listener's
//! authentication), the scope check, and the routes.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
pub use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use statestream_core::StoreKey;

use crate::engine::{Caller, Engine};
use crate::error::Error;
use crate::model::SubscriptionSpec;

/// The routes this module serves (method, path), for the OpenAPI check.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/subscriptions"),
    ("GET", "/v1/subscriptions"),
    ("GET", "/v1/subscriptions/{id}"),
    ("PATCH", "/v1/subscriptions/{id}"),
    ("DELETE", "/v1/subscriptions/{id}"),
    ("POST", "/v1/subscriptions/{id}/pause"),
    ("POST", "/v1/subscriptions/{id}/resume"),
    ("POST", "/v1/subscriptions/{id}/rotate-secret"),
    ("GET", "/v1/subscriptions/{id}/attempts"),
    ("POST", "/v1/subscriptions/{id}/replay"),
    ("POST", "/v1/subscriptions/{id}/test"),
];

/// The most attempts one `GET .../attempts` returns.
pub const MAX_ATTEMPTS_LIMIT: usize = 1000;

/// One read scope of a credential: a store (`*`: every store) and key
/// prefixes (none: the whole store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadScope {
    pub store: String,
    pub prefixes: Vec<Vec<u8>>,
}

/// Who calls, as the admin listener authenticated them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The admin token: every subscription, any endpoint.
    Admin,
    /// A credential: its own subscriptions, within its read scopes, if it
    /// has the `subscribe_webhooks` permission.
    Credential {
        id: String,
        subscribe_webhooks: bool,
        scopes: Vec<ReadScope>,
    },
}

/// An API error: a status and a machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiFailure {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiFailure {
        ApiFailure {
            status,
            code,
            message: message.into(),
        }
    }

    fn forbidden(message: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::FORBIDDEN, "permission_denied", message)
    }

    fn invalid(message: impl Into<String>) -> ApiFailure {
        ApiFailure::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }
}

impl From<Error> for ApiFailure {
    fn from(e: Error) -> ApiFailure {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = match status.as_u16() {
            400 => "invalid_argument",
            404 => "not_found",
            409 => "conflict",
            503 => "unavailable",
            _ => "internal",
        };
        ApiFailure::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

/// Authenticates a request's headers: the admin listener's part.
pub trait Authenticator: Send + Sync + 'static {
    /// The caller, or the error to answer (401).
    fn principal(&self, headers: &HeaderMap) -> Result<Principal, ApiFailure>;
}

/// Whether a subscription's filter stays within `scopes`: every store it
/// reads is in a scope, and every key it can receive is under one of that
/// scope's prefixes. Returns why not.
pub fn within_scopes(
    spec: &SubscriptionSpec,
    stores: &[StoreKey],
    scopes: &[ReadScope],
) -> Result<(), String> {
    let chosen: Vec<String> = if spec.filter.stores.is_empty() {
        stores.iter().map(|s| s.name().to_owned()).collect()
    } else {
        spec.filter.stores.clone()
    };
    for store in &chosen {
        let covering: Vec<&ReadScope> = scopes
            .iter()
            .filter(|s| s.store == "*" || &s.store == store)
            .collect();
        if covering.is_empty() {
            return Err(format!("store {store:?} is not in the credential's scopes"));
        }
        if covering.iter().any(|s| s.prefixes.is_empty()) {
            continue;
        }
        if spec.filter.prefixes.is_empty() {
            return Err(format!(
                "the credential reads only some keys of store {store:?}: give filter.prefixes within them"
            ));
        }
        for p in &spec.filter.prefixes {
            let inside = covering
                .iter()
                .any(|s| s.prefixes.iter().any(|sp| p.as_bytes().starts_with(sp)));
            if !inside {
                return Err(format!(
                    "prefix {p:?} of store {store:?} is outside the credential's scopes"
                ));
            }
        }
    }
    Ok(())
}

struct Api {
    engine: Engine,
    auth: Arc<dyn Authenticator>,
}

type Shared = State<Arc<Api>>;

/// The subscription routes, to merge into the admin router.
pub fn router(engine: Engine, auth: Arc<dyn Authenticator>) -> Router {
    let api = Arc::new(Api { engine, auth });
    Router::new()
        .route("/v1/subscriptions", post(create).get(list))
        .route(
            "/v1/subscriptions/{id}",
            get(show).patch(patch).delete(delete),
        )
        .route("/v1/subscriptions/{id}/pause", post(pause))
        .route("/v1/subscriptions/{id}/resume", post(resume))
        .route("/v1/subscriptions/{id}/rotate-secret", post(rotate))
        .route("/v1/subscriptions/{id}/attempts", get(attempts))
        .route("/v1/subscriptions/{id}/replay", post(replay))
        .route("/v1/subscriptions/{id}/test", post(test_event))
        .with_state(api)
}

/// The caller for the engine; a credential needs `subscribe_webhooks`.
fn caller(api: &Api, headers: &HeaderMap) -> Result<Principal, ApiFailure> {
    let p = api.auth.principal(headers)?;
    if let Principal::Credential {
        id,
        subscribe_webhooks: false,
        ..
    } = &p
    {
        return Err(ApiFailure::forbidden(format!(
            "credential {id:?} does not have the subscribe_webhooks permission"
        )));
    }
    Ok(p)
}

fn as_caller(p: &Principal) -> Caller<'_> {
    match p {
        Principal::Admin => Caller::Admin,
        Principal::Credential { id, .. } => Caller::Credential(id),
    }
}

/// Runs an engine call off the async runtime (it blocks on the store and
/// the delivery manager).
/// A call on one subscription by id, answered with what the engine
/// returns, as JSON (show, pause, resume, rotate-secret, test).
async fn on_one<T: Serialize + Send + 'static>(
    api: Arc<Api>,
    headers: HeaderMap,
    id: String,
    call: fn(&Engine, Caller<'_>, &str) -> crate::Result<T>,
) -> Result<Response, ApiFailure> {
    let p = caller(&api, &headers)?;
    let out = blocking(move || Ok(call(&api.engine, as_caller(&p), &id)?)).await?;
    Ok(axum::Json(out).into_response())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiFailure> + Send + 'static,
) -> Result<T, ApiFailure> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ApiFailure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the request's task failed: {e}"),
        ))
    })
}

fn json_body(body: &Bytes) -> Result<serde_json::Value, ApiFailure> {
    serde_json::from_slice(body).map_err(|e| ApiFailure::invalid(format!("body: {e}")))
}

fn check_scopes(api: &Api, p: &Principal, spec: &SubscriptionSpec) -> Result<(), ApiFailure> {
    if let Principal::Credential { scopes, .. } = p {
        within_scopes(spec, api.engine.stores(), scopes).map_err(ApiFailure::forbidden)?;
    }
    Ok(())
}

async fn create(
    State(api): Shared,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let p = caller(&api, &headers)?;
    let spec = SubscriptionSpec::from_json(&body)?;
    check_scopes(&api, &p, &spec)?;
    let view = blocking(move || Ok(api.engine.create(as_caller(&p), spec)?)).await?;
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

async fn list(State(api): Shared, headers: HeaderMap) -> Result<Response, ApiFailure> {
    let p = caller(&api, &headers)?;
    let list = blocking(move || Ok(api.engine.list(as_caller(&p))?)).await?;
    Ok(axum::Json(serde_json::json!({ "subscriptions": list })).into_response())
}

async fn show(
    State(api): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiFailure> {
    on_one(api, headers, id, Engine::get).await
}

async fn patch(
    State(api): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let p = caller(&api, &headers)?;
    let patch = json_body(&body)?;
    let view = blocking(move || {
        if let Principal::Credential { .. } = p {
            // The patched filter must stay within the scopes too.
            let spec = api.engine.spec(as_caller(&p), &id)?;
            let mut value =
                serde_json::to_value(&spec).map_err(|e| ApiFailure::invalid(e.to_string()))?;
            crate::engine::merge(&mut value, &patch);
            let merged: SubscriptionSpec = serde_json::from_value(value)
                .map_err(|e| ApiFailure::invalid(format!("body: {e}")))?;
            check_scopes(&api, &p, &merged)?;
        }
        Ok(api.engine.patch(as_caller(&p), &id, &patch)?)
    })
    .await?;
    Ok(axum::Json(view).into_response())
}

async fn delete(
    State(api): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiFailure> {
    let p = caller(&api, &headers)?;
    blocking(move || Ok(api.engine.delete(as_caller(&p), &id)?)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn pause(
    State(api): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiFailure> {
    on_one(api, headers, id, Engine::pause).await
}

async fn resume(
    State(api): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiFailure> {
    on_one(api, headers, id, Engine::resume).await
}

async fn rotate(
    State(api): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiFailure> {
    on_one(api, headers, id, Engine::rotate_secret).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttemptsQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn attempts(
    State(api): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<AttemptsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiFailure> {
    let p = caller(&api, &headers)?;
    let Query(q) = query.map_err(|e| ApiFailure::invalid(e.body_text()))?;
    let failed_only = match q.status.as_deref() {
        None | Some("all") => false,
        Some("failed") => true,
        Some(other) => {
            return Err(ApiFailure::invalid(format!(
                "status: {other:?} is neither \"failed\" nor \"all\""
            )));
        }
    };
    let limit = q.limit.unwrap_or(100).min(MAX_ATTEMPTS_LIMIT);
    let list = blocking(move || {
        Ok(api
            .engine
            .attempts(as_caller(&p), &id, failed_only, limit)?)
    })
    .await?;
    Ok(axum::Json(serde_json::json!({ "attempts": list })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    from_height: u64,
    to_height: u64,
}

async fn replay(
    State(api): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiFailure> {
    let p = caller(&api, &headers)?;
    let r: ReplayBody =
        serde_json::from_slice(&body).map_err(|e| ApiFailure::invalid(format!("body: {e}")))?;
    let summary = blocking(move || {
        Ok(api
            .engine
            .replay(as_caller(&p), &id, r.from_height, r.to_height)?)
    })
    .await?;
    Ok(axum::Json(summary).into_response())
}

async fn test_event(
    State(api): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiFailure> {
    on_one(api, headers, id, Engine::test).await
}
