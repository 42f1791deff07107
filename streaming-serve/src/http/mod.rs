//! The HTTP front-end (axum): Server-Sent Events on `GET /stream` and
//! `GET /stream/ping` ([`sse`]), `GET /snapshot` ([`snapshot`]), their
//! query parameters ([`params`]), and CORS for the configured origins
//! (tower-http's `CorsLayer`). Every request passes the access check first
//! ([`crate::access`]); a refusal is 401.

mod params;
mod snapshot;
mod sse;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use params::Encoding;

use crate::access::{Access, Denied, Grant, bearer};
use crate::error::HubError;
use crate::gate::Gate;
use crate::hub::Hub;

/// The verified client certificate of the connection, if any (mTLS).
pub(crate) type Peer = Option<axum::Extension<statestream_net::PeerCertificate>>;

/// The header an SSE client resumes by.
const LAST_EVENT_ID: &str = "last-event-id";

/// What the HTTP server is built from.
pub(crate) struct HttpSetup {
    pub hub: Arc<Hub>,
    pub token: String,
    /// The node's credentials, if it keeps any.
    pub credentials: Option<statestream_access::Registry>,
    pub max_connection: Option<Duration>,
    pub cors_origins: Vec<String>,
}

#[derive(Clone)]
struct AppState {
    hub: Arc<Hub>,
    access: Access,
    max_connection: Option<Duration>,
}

/// The routes, with CORS when origins are configured.
pub(crate) fn router(setup: HttpSetup) -> Router {
    let state = AppState {
        hub: setup.hub,
        access: Access::new(&setup.token, setup.credentials, "sse"),
        max_connection: setup.max_connection,
    };
    let router = Router::new()
        .route(
            "/stream",
            get(|State(st), peer, h, RawQuery(q)| sse::open_stream(st, peer, h, q, false)),
        )
        .route(
            "/stream/ping",
            get(|State(st), peer, h, RawQuery(q)| sse::open_stream(st, peer, h, q, true)),
        )
        .route("/snapshot", get(snapshot::snapshot))
        .with_state(state);
    match cors(&setup.cors_origins) {
        Some(cors) => router
            .layer(cors)
            .layer(middleware::from_fn(preflight_no_content)),
        None => router,
    }
}

/// CORS for `origins` (`["*"]`: any); `None` when there are none. The
/// configuration checked every origin already.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                HeaderName::from_static(LAST_EVENT_ID),
            ]),
    )
}

/// A preflight answered by the CORS layer is `204 No Content` (it has no
/// body), not `200`.
async fn preflight_no_content(request: Request, next: Next) -> Response {
    let preflight = request.method() == Method::OPTIONS;
    let mut response = next.run(request).await;
    if preflight && response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}

impl AppState {
    /// Admits a request by `Authorization: Bearer <token>`, or `?token=`
    /// (for EventSource, which cannot set headers).
    fn admit(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
        peer: &Peer,
    ) -> Result<Grant, HttpError> {
        let credential = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .or(query_token);
        // Before the token: a relay that is not ready (or diverged) says
        // so, never 401.
        Gate::process().check().map_err(|c| HttpError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: true,
            message: c.to_string(),
        })?;
        self.access
            .check_with_peer(credential, peer.as_ref().map(|p| &p.0))
            .map_err(HttpError::from)
    }
}

impl From<Denied> for HttpError {
    fn from(d: Denied) -> HttpError {
        let status = if d.is_unauthenticated() {
            StatusCode::UNAUTHORIZED
        } else if matches!(d, Denied::TooManyStreams(_)) {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::FORBIDDEN
        };
        let message = match d {
            Denied::Missing => {
                "missing token: send `Authorization: Bearer <token or credential secret>` (or ?token=)".to_string()
            }
            Denied::Wrong => "wrong token or unknown credential".to_string(),
            Denied::Unauthenticated(m) | Denied::Forbidden(m) | Denied::TooManyStreams(m) => m,
        };
        HttpError {
            status,
            retry_after: false,
            message,
        }
    }
}

/// An error answered as an HTTP status with a one-line JSON body.
#[derive(Debug)]
pub(crate) struct HttpError {
    status: StatusCode,
    /// Answered with `Retry-After: 1`.
    retry_after: bool,
    message: String,
}

impl HttpError {
    fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError {
            status: StatusCode::BAD_REQUEST,
            retry_after: false,
            message: message.into(),
        }
    }
}

impl From<HubError> for HttpError {
    fn from(e: HubError) -> HttpError {
        let status = match e {
            HubError::OutOfRange { .. } | HubError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            HubError::TooManySubscribers(_)
            | HubError::TooManySnapshots(_)
            | HubError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            HubError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        HttpError {
            status,
            // A one-shot snapshot is short: worth retrying soon.
            retry_after: matches!(e, HubError::TooManySnapshots(_)),
            message: e.to_string(),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = format!("{}\n", json!({ "error": self.message }));
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
