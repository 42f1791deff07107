//! The gRPC front-end: `statestream.v1.StateStream` ([`state_stream`],
//! written to the wire by [`framing`]), datastream's `DataService`
//! ([`datastream`]), health and reflection on one listener. Every request
//! passes the access check first ([`crate::access`]); a refusal is
//! `UNAUTHENTICATED`.

mod datastream;
pub(crate) mod encoding;
mod framing;
mod push;
mod state_stream;
mod wire;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};
use tonic_health::ServingStatus;

pub use datastream::DELETED;
use datastream::DataStreamService;
use framing::StateStreamRoute;
use state_stream::StateStreamService;

use crate::access::{Access, Denied, Grant, bearer};
use crate::config::ServeConfig;
use crate::error::{HubError, ServeError};
use crate::gate::{Closed, Gate};
use crate::hub::Hub;
use crate::outbox::{End, Outbox};
use crate::proto::datastream::data_service_server::DataServiceServer;

/// The largest message gRPC clients accept by default (and the largest
/// request tonic decodes).
pub const GRPC_DEFAULT_MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// The status of a refused request.
fn denied(d: Denied) -> Status {
    match d {
        Denied::Missing => Status::unauthenticated(
            "missing token: send `authorization: Bearer <token or credential secret>`",
        ),
        Denied::Wrong => Status::unauthenticated("wrong token or unknown credential"),
        Denied::Unauthenticated(m) => Status::unauthenticated(m),
        Denied::Forbidden(m) => Status::permission_denied(m),
        Denied::TooManyStreams(m) => Status::resource_exhausted(m),
    }
}

/// The status of a request the gate refuses ([`crate::gate`]).
fn closed(c: Closed) -> Status {
    Status::unavailable(c.to_string())
}

/// The gate, then the access check: what every gRPC request passes first.
fn gate_then_access(
    access: &Access,
    credential: Option<&str>,
    peer: Option<&statestream_net::PeerCertificate>,
) -> Result<Grant, Status> {
    Gate::process().check().map_err(closed)?;
    access.check_with_peer(credential, peer).map_err(denied)
}

/// The credential of a request: its `authorization` metadata's token.
fn credential(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
}

/// Admits a request; what it may read goes with it, for the handler.
fn admit(access: &Access, mut request: Request<()>) -> Result<Request<()>, Status> {
    let peer = request
        .extensions()
        .get::<statestream_net::PeerCertificate>();
    let grant = gate_then_access(access, credential(request.metadata()), peer)?;
    request.extensions_mut().insert(grant);
    Ok(request)
}

/// What an admitted request may read.
fn grant<T>(request: &Request<T>) -> Result<Grant, Status> {
    request
        .extensions()
        .get::<Grant>()
        .cloned()
        .ok_or_else(|| Status::internal("the request was not admitted"))
}

impl From<HubError> for Status {
    fn from(e: HubError) -> Status {
        let message = e.to_string();
        match e {
            HubError::OutOfRange { .. } => Status::out_of_range(message),
            HubError::InvalidArgument(_) => Status::invalid_argument(message),
            HubError::TooManySubscribers(_) | HubError::TooManySnapshots(_) => {
                Status::resource_exhausted(message)
            }
            HubError::ShuttingDown => Status::unavailable(message),
            HubError::Store(_) => Status::internal(message),
        }
    }
}

impl From<End> for Status {
    fn from(end: End) -> Status {
        match end {
            End::Stalled(stall) => Status::aborted(format!(
                "slow subscriber: no message taken for {} ms, disconnected; resume from the height after the last block you saw end",
                stall.as_millis()
            )),
            End::Failed(e) => e.into(),
            End::Revoked(m) => Status::unauthenticated(m),
            End::OutOfScope(m) => Status::permission_denied(m),
        }
    }
}

/// An outbox as tonic's response stream.
pub(crate) struct Responses<T>(Outbox<T>);

impl<T> Stream for Responses<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|item| item.map(|r| r.map_err(Status::from)))
    }
}

/// Sets the served services (and the whole server, `""`) SERVING or
/// NOT_SERVING as the process's gate opens and closes, until shutdown.
async fn follow_gate(
    reporter: tonic_health::server::HealthReporter,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let mut open = true;
    let mut changes = Gate::process().changes();
    loop {
        let now = Gate::process().check().is_ok();
        if now != open {
            open = now;
            update(&reporter, open).await;
        }
        tokio::select! {
            // Err never comes: the gate is a static that keeps its sender.
            Ok(()) = changes.changed() => {}
            _ = closing.wait_for(|c| *c) => return,
        }
    }
}

/// Sets the served services SERVING (`open`) or NOT_SERVING.
async fn update(reporter: &tonic_health::server::HealthReporter, open: bool) {
    use tonic::server::NamedService;
    let status = if open {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for service in [
        "",
        StateStreamRoute::NAME,
        DataServiceServer::<DataStreamService>::NAME,
    ] {
        reporter.set_service_status(service, status).await;
    }
}

/// The gRPC services as one tower service (served by the streamer's
/// `statestream_net` listener, which sets the HTTP/2 limits and
/// keep-alive), and a future that marks them SERVING in the health
/// service.
pub(crate) fn router(
    hub: &Arc<Hub>,
    config: &ServeConfig,
    credentials: Option<statestream_access::Registry>,
) -> Result<
    (
        tonic::service::Routes,
        impl std::future::Future<Output = ()> + Send + 'static,
    ),
    ServeError,
> {
    use tonic::server::NamedService;
    let access = Access::new(&config.token, credentials, "grpc");
    let state = StateStreamService {
        hub: Arc::clone(hub),
        push_updates: config.push_updates,
    };
    let data = DataStreamService {
        hub: Arc::clone(hub),
        push_updates: config.push_updates,
    };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    // Only the served services and "" (the whole server) report SERVING.
    let reporter = health_reporter.clone();
    let closing = hub.closing();
    let set_health = async move {
        reporter
            .set_service_status(StateStreamRoute::NAME, ServingStatus::Serving)
            .await;
        reporter
            .set_serving::<DataServiceServer<DataStreamService>>()
            .await;
        // A relay's gate closes and opens while it runs: the health
        // service follows it (NOT_SERVING while requests get UNAVAILABLE).
        tokio::spawn(follow_gate(reporter, closing));
    };
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Runtime {
            streamer: hub.name().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let data_access = access.clone();
    let reflection_access = access.clone();
    let router = tonic::service::Routes::new(health)
        .add_service(StateStreamRoute {
            service: state,
            access,
        })
        .add_service(DataServiceServer::with_interceptor(data, move |r| {
            admit(&data_access, r)
        }))
        .add_service(InterceptedService::new(reflection, move |r| {
            admit(&reflection_access, r)
        }))
        .prepare();
    Ok((router, set_health))
}
