//! `PushUpdate` of both gRPC services: one write through the application's
//! queue, answered with the height that committed it.

use statestream_core::PushError;
use tokio::sync::oneshot;
use tonic::Status;

use crate::error::HubError;
use crate::hub::Hub;

/// Pushes one write through the application's queue and waits for the
/// height that committed it.
pub(crate) async fn push_write(
    hub: &Hub,
    enabled: bool,
    store: &str,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
) -> Result<u64, Status> {
    if !enabled {
        return Err(Status::unimplemented(format!(
            "PushUpdate is off: set push_updates = true in [streamers.{}]",
            hub.name()
        )));
    }
    if !hub.stores().iter().any(|s| s.name() == store) {
        let names: Vec<&str> = hub.stores().iter().map(|s| s.name()).collect();
        return Err(Status::invalid_argument(format!(
            "store {store:?} is not streamed (streamed stores: {})",
            names.join(", ")
        )));
    }
    if key.is_empty() {
        return Err(Status::invalid_argument("the key is empty"));
    }
    let limits = hub.push_limits();
    let size = key.len() + value.as_ref().map_or(0, Vec::len);
    if size > limits.write_bytes {
        return Err(Status::invalid_argument(format!(
            "the write's key and value are {size} bytes, more than max_push_value_bytes ({}) \
             of [streamers.{}]",
            limits.write_bytes,
            hub.name()
        )));
    }
    let queue = hub.push_queue().ok_or_else(|| {
        Status::failed_precondition("the application does not accept pushed writes")
    })?;
    let (tx, rx) = oneshot::channel();
    queue
        .push(
            limits.queued_bytes,
            store.to_string(),
            key,
            value,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .map_err(|e| match e {
            PushError::Full(_) => Status::resource_exhausted(e.to_string()),
            PushError::FullBytes { .. } => Status::resource_exhausted(format!(
                "{e} (max_push_bytes of [streamers.{}])",
                hub.name()
            )),
            PushError::TooLarge { .. } => Status::invalid_argument(e.to_string()),
            _ => Status::failed_precondition(e.to_string()),
        })?;
    let mut closing = hub.closing();
    // The reply first: a write that committed is answered with its height
    // even when the node closes at the same time (a streamer halted it on
    // that very block), or the pusher would write it again.
    tokio::select! {
        biased;
        r = rx => match r {
            Ok(Ok(height)) => Ok(height),
            Ok(Err(reason)) => Err(Status::failed_precondition(format!(
                "the application did not commit the write: {reason}"
            ))),
            Err(_) => Err(Status::unavailable("the application stopped before committing the write")),
        },
        _ = closing.wait_for(|c| *c) => Err(HubError::ShuttingDown.into()),
    }
}
