//! `datastream.DataService` on the hub, as `docs/serve.md` maps it:
//! capabilities are stores, keys are `store`, `store/key` or
//! `store/prefix*`, `Data.key` is `store/key`.

use std::collections::HashMap;
use std::sync::Arc;

use statestream_core::{Block, StoreKey};
use tonic::{Request, Response, Status};

use super::encoding::{block_timestamp, timestamp};
use super::push::push_write;
use super::{Responses, grant};
use crate::access::Grant;
use crate::filter::{Filter, key_from_text, key_to_text};
use crate::hub::snapshot::SnapshotWriter;
use crate::hub::{Event, Hub, SubscriberGuard};
use crate::metrics::FrontEnd;
use crate::outbox::{self, Measured, Sink, SubscriptionEnd};
use crate::proto::datastream::{
    Capability, Data, DataRequest, DataResponse, ListCapabilitiesRequest, ListCapabilitiesResponse,
    data_service_server::DataService,
};

/// The `value_type` of a deleted key in an update.
pub const DELETED: &str = "deleted";

/// Bytes of one `DataResponse` before the initial state is split: under
/// [`GRPC_DEFAULT_MAX_MESSAGE`](super::GRPC_DEFAULT_MAX_MESSAGE).
pub const DATASTREAM_MESSAGE_BYTES: usize = 3 * 1024 * 1024;

/// The largest `Sync` answer: gRPC's default message size limit.
pub(crate) const SYNC_MAX_BYTES: usize = super::GRPC_DEFAULT_MAX_MESSAGE;

/// The batches a `Sync` answer is read in.
const SYNC_BATCH_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub(crate) struct DataStreamService {
    pub hub: Arc<Hub>,
    pub push_updates: bool,
}

/// Parses datastream keys: `store`, `store/key`, `store/prefix*`.
fn parse_keys(hub: &Hub, grant: &Grant, keys: &[String]) -> Result<Filter, Status> {
    let mut b = hub.filter_builder();
    for k in keys {
        match k.split_once('/') {
            None => {
                b.whole(k, "keys")?;
            }
            Some((store, rest)) => match rest.strip_suffix('*') {
                Some(prefix) => {
                    b.prefix(store, &key_from_text(prefix), "keys")?;
                }
                None => {
                    b.key(store, &key_from_text(rest), "keys")?;
                }
            },
        }
    }
    grant.select(b).map_err(super::denied)
}

fn value_type<'a>(hub: &'a Hub, store: &str) -> &'a str {
    hub.stores()
        .iter()
        .position(|s| s.name() == store)
        .and_then(|i| hub.value_types().get(i))
        .map_or(crate::config::DEFAULT_VALUE_TYPE, String::as_str)
}

/// A snapshot's keys as `DataResponse`s of about `batch_bytes` each.
struct Responder {
    hub: Arc<Hub>,
    updated_at: Option<prost_types::Timestamp>,
    batch_bytes: usize,
    data: HashMap<String, Data>,
    bytes: usize,
    sent: bool,
}

impl Responder {
    fn new(hub: &Arc<Hub>, time: Option<(i64, u32)>, batch_bytes: usize) -> Responder {
        Responder {
            hub: Arc::clone(hub),
            updated_at: timestamp(time),
            batch_bytes,
            data: HashMap::new(),
            bytes: 0,
            sent: false,
        }
    }
}

/// Bytes counted per key beside its store, key and value, when a
/// response is cut.
const ENTRY_OVERHEAD: usize = 8;

impl SnapshotWriter for Responder {
    type Piece = DataResponse;

    fn entry(&mut self, store: &StoreKey, key: Vec<u8>, value: Vec<u8>) -> Option<DataResponse> {
        self.bytes += store.name().len() + key.len() + value.len() + ENTRY_OVERHEAD;
        let key = format!("{}/{}", store.name(), key_to_text(&key));
        let d = Data {
            key: key.clone(),
            value,
            value_type: value_type(&self.hub, store.name()).to_string(),
            updated_at: self.updated_at,
        };
        self.data.insert(key, d);
        if self.bytes < self.batch_bytes {
            return None;
        }
        self.bytes = 0;
        self.sent = true;
        Some(DataResponse {
            data: std::mem::take(&mut self.data),
        })
    }

    /// The rest; an empty snapshot is one empty response.
    fn finish(self) -> Option<DataResponse> {
        (!self.data.is_empty() || !self.sent).then_some(DataResponse { data: self.data })
    }
}

/// The net changes of `block` under `filter`; `None` when none matched.
fn block_response(hub: &Hub, block: &Block, filter: &Filter) -> Option<DataResponse> {
    let updated_at = block_timestamp(block);
    let data: HashMap<String, Data> = crate::selection::selected(block, filter)
        .map(|c| {
            let key = format!("{}/{}", c.store, key_to_text(c.key));
            let (value, value_type) = match c.value {
                Some(v) => (v.to_vec(), value_type(hub, c.store)),
                None => (Vec::new(), DELETED),
            };
            let d = Data {
                key: key.clone(),
                value,
                value_type: value_type.to_string(),
                updated_at,
            };
            (key, d)
        })
        .collect();
    (!data.is_empty()).then_some(DataResponse { data })
}

impl Measured for DataResponse {
    fn wire_len(&self) -> usize {
        prost::Message::encoded_len(self)
    }
}

impl DataStreamService {
    async fn run(
        hub: Arc<Hub>,
        guard: SubscriberGuard,
        filter: Filter,
        sink: &mut Sink<DataResponse>,
    ) -> Result<(), SubscriptionEnd> {
        let mut reader = hub.read_snapshot(filter.clone(), |at| {
            Responder::new(&hub, at.time(), DATASTREAM_MESSAGE_BYTES)
        })?;
        while let Some(response) = reader.next().await? {
            sink.send(response).await?;
        }
        let mut sub = hub.subscribe(guard, reader.height() + 1);
        loop {
            match sink.next_event(&mut sub).await? {
                Event::Block(block) => {
                    if let Some(r) = block_response(&hub, &block, &filter) {
                        sink.send(r).await?;
                    }
                }
                // datastream has no heartbeat message; HTTP/2 keepalive
                // pings keep the connection alive.
                Event::Heartbeat(_) => {}
            }
        }
    }
}

#[tonic::async_trait]
impl DataService for DataStreamService {
    async fn list_capabilities(
        &self,
        request: Request<ListCapabilitiesRequest>,
    ) -> Result<Response<ListCapabilitiesResponse>, Status> {
        let grant = grant(&request)?;
        let capabilities = self
            .hub
            .stores()
            .iter()
            .zip(self.hub.value_types())
            .filter(|(s, _)| grant.sees(s.name()))
            .map(|(s, t)| Capability {
                key: s.name().to_string(),
                value_type: t.clone(),
            })
            .collect();
        Ok(Response::new(ListCapabilitiesResponse { capabilities }))
    }

    async fn sync(&self, request: Request<DataRequest>) -> Result<Response<DataResponse>, Status> {
        let grant = grant(&request)?;
        let filter = parse_keys(&self.hub, &grant, &request.into_inner().keys)?;
        let _permit = self.hub.admit_snapshot()?;
        // `Sync` is unary: its answer is one message, which a client
        // refuses over its message size limit (gRPC's default unless it
        // raised it). Read in batches and stop at the limit, so an
        // oversized answer is refused before it is held whole.
        let mut reader = self.hub.read_snapshot(filter, |at| {
            Responder::new(&self.hub, at.time(), SYNC_BATCH_BYTES)
        })?;
        let mut all = HashMap::new();
        let mut bytes = 0;
        while let Some(response) = reader.next().await? {
            // A map's entries are encoded one by one: the whole answer's
            // size is the sum of its batches'.
            bytes += prost::Message::encoded_len(&response);
            if bytes > SYNC_MAX_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "the answer is over {SYNC_MAX_BYTES} bytes, the gRPC message size limit (Sync answers in one message); ask for fewer keys, or use Subscribe, which sends the state in several messages"
                )));
            }
            all.extend(response.data);
        }
        Ok(Response::new(DataResponse { data: all }))
    }

    type SubscribeStream = Responses<DataResponse>;

    async fn subscribe(
        &self,
        request: Request<DataRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let hub = Arc::clone(&self.hub);
        let grant = grant(&request)?;
        let filter = parse_keys(&hub, &grant, &request.into_inner().keys)?;
        let access = grant.open_stream(&filter).map_err(super::denied)?;
        let guard = hub.admit(FrontEnd::Grpc)?;
        let outbox =
            outbox::spawn_guarded(&self.hub, FrontEnd::Grpc, access, |mut sink| async move {
                let ended = DataStreamService::run(hub, guard, filter, &mut sink).await;
                (sink, ended)
            });
        Ok(Response::new(Responses(outbox)))
    }

    async fn push_update(&self, request: Request<Data>) -> Result<Response<()>, Status> {
        let grant = grant(&request)?;
        let d = request.into_inner();
        let Some((store, key)) = d.key.split_once('/') else {
            return Err(Status::invalid_argument(format!(
                "key {:?}: expected store/key",
                d.key
            )));
        };
        grant
            .may_push(store, &key_from_text(key))
            .map_err(super::denied)?;
        let value = if d.value_type == DELETED {
            None
        } else {
            Some(d.value)
        };
        push_write(
            &self.hub,
            self.push_updates,
            store,
            key_from_text(key),
            value,
        )
        .await?;
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn deleted_is_the_documented_value_type() {
        assert_eq!(super::DELETED, "deleted");
    }
}
