//! The credential routes: `/v1/credentials` (create, list),
//! `/v1/credentials/{id}` (show, update, revoke),
//! `/v1/credentials/{id}/rotate`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use statestream_access::{CredentialPatch, NewCredential, Rotation, now};

use crate::auth::AdminAuth;
use crate::error::ApiError;

/// Every route the server answers, as (method, path template): what the
/// OpenAPI document must describe.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/credentials"),
    ("GET", "/v1/credentials"),
    ("GET", "/v1/credentials/{id}"),
    ("PATCH", "/v1/credentials/{id}"),
    ("DELETE", "/v1/credentials/{id}"),
    ("POST", "/v1/credentials/{id}/rotate"),
];

pub(crate) fn router(auth: AdminAuth) -> Router {
    Router::new()
        .route("/v1/credentials", post(create).get(list))
        .route(
            "/v1/credentials/{id}",
            get(show).patch(update).delete(revoke),
        )
        .route("/v1/credentials/{id}/rotate", post(rotate))
        .with_state(auth)
}

/// A JSON body of `T`: unknown fields, wrong types and malformed JSON are
/// 400 naming the problem.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "the request body is empty; expected a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("request body: {e}")))
}

/// The credential's JSON with its new secret.
fn with_secret(mut credential: Value, secret: &statestream_access::Secret) -> Value {
    if let Value::Object(map) = &mut credential {
        map.insert("secret".into(), Value::String(secret.expose().to_string()));
    }
    credential
}

async fn create(
    State(auth): State<AdminAuth>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    auth.admin(&headers)?;
    let new: NewCredential = parse(&body)?;
    let (c, secret) = auth.credentials().create(new)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(with_secret(c.to_json(now()), &secret)),
    )
        .into_response())
}

async fn list(State(auth): State<AdminAuth>, headers: HeaderMap) -> Result<Response, ApiError> {
    auth.admin(&headers)?;
    let now = now();
    let all: Vec<Value> = auth
        .credentials()
        .list()
        .iter()
        .map(|c| c.to_json(now))
        .collect();
    Ok(axum::Json(json!({ "credentials": all })).into_response())
}

async fn show(
    State(auth): State<AdminAuth>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.admin(&headers)?;
    let c = auth
        .credentials()
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no credential {id:?}")))?;
    Ok(axum::Json(c.to_json(now())).into_response())
}

async fn update(
    State(auth): State<AdminAuth>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    auth.admin(&headers)?;
    let patch: CredentialPatch = parse(&body)?;
    let c = auth.credentials().update(&id, patch)?;
    Ok(axum::Json(c.to_json(now())).into_response())
}

async fn rotate(
    State(auth): State<AdminAuth>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    auth.admin(&headers)?;
    let rotation: Rotation = if body.iter().all(u8::is_ascii_whitespace) {
        Rotation::default()
    } else {
        parse(&body)?
    };
    let (c, secret) = auth.credentials().rotate(&id, rotation)?;
    Ok(axum::Json(with_secret(c.to_json(now()), &secret)).into_response())
}

async fn revoke(
    State(auth): State<AdminAuth>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.admin(&headers)?;
    let c = auth.credentials().revoke(&id)?;
    Ok(axum::Json(c.to_json(now())).into_response())
}
