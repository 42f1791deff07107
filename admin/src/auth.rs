//! Who an admin request comes from: the admin token, or (for routes
//! mounted by others, such as run-time subscriptions) a credential.

use std::sync::Arc;

use axum::http::{HeaderMap, header};
use statestream_access::{Authenticated, Registry, constant_time_eq};

use crate::error::ApiError;

/// The caller of a request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Caller {
    /// The holder of the admin token: every admin call.
    Admin,
    /// A credential's holder: only what routes allow a credential (its own
    /// run-time subscriptions).
    Credential(Authenticated),
}

/// Authenticates requests of the admin listener; an extension of every
/// request, so that mounted routes call [`AdminAuth::caller`] too.
#[derive(Clone)]
pub struct AdminAuth {
    token: Arc<str>,
    credentials: Registry,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth").finish_non_exhaustive()
    }
}

impl AdminAuth {
    pub fn new(token: &str, credentials: Registry) -> AdminAuth {
        AdminAuth {
            token: token.into(),
            credentials,
        }
    }

    /// The node's credentials.
    pub fn credentials(&self) -> &Registry {
        &self.credentials
    }

    /// The bearer token of a request.
    fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthenticated(
                    "missing admin token: send `Authorization: Bearer <token>`",
                )
            })
    }

    /// The admin token's holder, or 401.
    pub fn admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let given = AdminAuth::bearer(headers)?;
        if constant_time_eq(given.as_bytes(), self.token.as_bytes()) {
            Ok(())
        } else {
            tracing::info!(target: statestream_access::AUDIT_TARGET, action = "deny", front_end = "admin", "admin request with a wrong token");
            Err(ApiError::unauthenticated("wrong admin token"))
        }
    }

    /// The admin token's holder or a credential's, or 401.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let given = AdminAuth::bearer(headers)?;
        if constant_time_eq(given.as_bytes(), self.token.as_bytes()) {
            return Ok(Caller::Admin);
        }
        self.credentials
            .authenticate(given)
            .map(Caller::Credential)
            .map_err(|e| {
                self.credentials.denied(None, "admin", &e.to_string());
                ApiError::unauthenticated(format!("not the admin token, and {e}"))
            })
    }
}
