//! `datastream.DataService` on the hub, as `docs/serve.md` maps it:
//! capabilities are stores, keys are `store`, `store/key` or
//! `store/prefix*`, `Data.key` is `store/key`.

use std::collections::HashMap;
use std::sync::Arc;

use statestream_core::Block;
use tonic::{Request, Response, Status};

use crate::filter::{Filter, FilterBuilder, key_from_text, key_to_text};
use crate::grpc::{SubscriptionEnd, finish, push_write, send_snapshot, stall_timeout};
use crate::hub::{Entry, Event, Hub, stream_snapshot};
use crate::metrics::FrontEnd;
use crate::outbox::{self, Ended, Outbox, Sink};
use crate::proto::datastream::{
    Capability, Data, DataRequest, DataResponse, ListCapabilitiesRequest, ListCapabilitiesResponse,
    data_service_server::DataService,
};

/// The `value_type` of a deleted key in an update.
pub const DELETED: &str = "deleted";

/// Bytes of one `DataResponse` before the initial state is split: under
/// the 4 MiB gRPC clients accept by default.
pub const DATASTREAM_MESSAGE_BYTES: usize = 3 * 1024 * 1024;

#[derive(Clone)]
pub(crate) struct DataStreamService {
    pub hub: Arc<Hub>,
    pub push_updates: bool,
}

/// Parses datastream keys: `store`, `store/key`, `store/prefix*`.
fn parse_keys(hub: &Hub, keys: &[String]) -> Result<Filter, Status> {
    let mut b = FilterBuilder::new(hub.stores());
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
    Ok(b.build())
}

fn timestamp(time: Option<(i64, u32)>) -> Option<prost_types::Timestamp> {
    time.map(|(seconds, nanos)| prost_types::Timestamp {
        seconds,
        nanos: nanos.min(999_999_999) as i32,
    })
}

fn value_type<'a>(hub: &'a Hub, store: &str) -> &'a str {
    hub.stores()
        .iter()
        .position(|s| s.name() == store)
        .and_then(|i| hub.value_types().get(i))
        .map_or(crate::config::DEFAULT_VALUE_TYPE, String::as_str)
}

fn entries_response(hub: &Hub, time: Option<(i64, u32)>, entries: Vec<Entry>) -> DataResponse {
    let updated_at = timestamp(time);
    let data = entries
        .into_iter()
        .map(|(store, key, value)| {
            let key = format!("{}/{}", store.name(), key_to_text(&key));
            let d = Data {
                key: key.clone(),
                value,
                value_type: value_type(hub, store.name()).to_string(),
                updated_at,
            };
            (key, d)
        })
        .collect();
    DataResponse { data }
}

/// The net changes of `block` under `filter`; `None` when none matched.
fn block_response(hub: &Hub, block: &Block, filter: &Filter) -> Option<DataResponse> {
    let updated_at = timestamp(Some((block.meta().time_seconds, block.meta().time_nanos)));
    let mut data = HashMap::new();
    for store in block.stores() {
        let Some(part) = filter.store(store.store().name()) else {
            continue;
        };
        for record in store.records() {
            if !part.matches(record.key) {
                continue;
            }
            let key = format!("{}/{}", record.store, key_to_text(record.key));
            let d = match record.value {
                Some(v) => Data {
                    key: key.clone(),
                    value: v.to_vec(),
                    value_type: value_type(hub, record.store).to_string(),
                    updated_at,
                },
                None => Data {
                    key: key.clone(),
                    value: Vec::new(),
                    value_type: DELETED.to_string(),
                    updated_at,
                },
            };
            data.insert(key, d);
        }
    }
    (!data.is_empty()).then_some(DataResponse { data })
}

impl DataStreamService {
    async fn run(
        hub: Arc<Hub>,
        guard: crate::hub::SubscriberGuard,
        filter: Filter,
        sink: &mut Sink<DataResponse>,
    ) -> Result<(), SubscriptionEnd> {
        let height = {
            let hub2 = Arc::clone(&hub);
            send_snapshot(
                &hub,
                &filter,
                DATASTREAM_MESSAGE_BYTES,
                sink,
                move |_, time, entries, _| entries_response(&hub2, time, entries),
            )
            .await?
        };
        let mut sub = hub.subscribe(guard, height + 1);
        loop {
            let event = tokio::select! {
                e = sub.next() => e?,
                _ = sink.closed() => return Err(Ended::Gone.into()),
            };
            match event {
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
        _request: Request<ListCapabilitiesRequest>,
    ) -> Result<Response<ListCapabilitiesResponse>, Status> {
        let capabilities = self
            .hub
            .stores()
            .iter()
            .zip(self.hub.value_types())
            .map(|(s, t)| Capability {
                key: s.name().to_string(),
                value_type: t.clone(),
            })
            .collect();
        Ok(Response::new(ListCapabilitiesResponse { capabilities }))
    }

    async fn sync(&self, request: Request<DataRequest>) -> Result<Response<DataResponse>, Status> {
        let filter = parse_keys(&self.hub, &request.into_inner().keys)?;
        let (height, mut rx) = stream_snapshot(&self.hub, filter, DATASTREAM_MESSAGE_BYTES)?;
        let time = self.hub.block_time(height);
        let mut all = Vec::new();
        while let Some(batch) = rx.recv().await {
            all.extend(batch?);
        }
        Ok(Response::new(entries_response(&self.hub, time, all)))
    }

    type SubscribeStream = Outbox<DataResponse>;

    async fn subscribe(
        &self,
        request: Request<DataRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let hub = Arc::clone(&self.hub);
        let filter = parse_keys(&hub, &request.into_inner().keys)?;
        let guard = hub.admit(FrontEnd::Grpc)?;
        let (mut sink, outbox) = outbox::channel(
            stall_timeout(&hub),
            hub.closing(),
            Arc::clone(hub.metrics()),
        );
        tokio::spawn(async move {
            if let Err(end) = DataStreamService::run(hub, guard, filter, &mut sink).await {
                finish(sink, end);
            }
        });
        Ok(Response::new(outbox))
    }

    async fn push_update(&self, request: Request<Data>) -> Result<Response<()>, Status> {
        let d = request.into_inner();
        let Some((store, key)) = d.key.split_once('/') else {
            return Err(Status::invalid_argument(format!(
                "key {:?}: expected store/key",
                d.key
            )));
        };
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
