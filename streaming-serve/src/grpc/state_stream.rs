//! `statestream.v1.StateStream`: what each method answers. The requests
//! arrive decoded and admitted from the frame writer ([`super::framing`]),
//! which also writes the `Subscribe` and `Snapshot` streams.

use std::sync::Arc;

use prost::Message;
use prost::bytes::Bytes;
use tonic::Status;

use super::encoding::{ChunkEncoder, encode_block};
use super::push::push_write;
use super::wire::{Framed, SUBSCRIBE_BLOCK, SUBSCRIBE_HEARTBEAT, SUBSCRIBE_SNAPSHOT};
use crate::access::Grant;
use crate::error::HubError;
use crate::filter::{Filter, FilterBuilder};
use crate::hub::{Event, Hub, SubscriberGuard};
use crate::metrics::FrontEnd;
use crate::outbox::{self, Ended, Outbox, Sink, SubscriptionEnd};
use crate::proto::v1 as pb;
use crate::selection::{Format, Selection};

/// The `statestream.v1.StateStream` service.
#[derive(Clone)]
pub(crate) struct StateStreamService {
    pub hub: Arc<Hub>,
    pub push_updates: bool,
}

fn parse_filter(hub: &Hub, grant: &Grant, filter: Option<pb::Filter>) -> Result<Filter, Status> {
    let mut b = FilterBuilder::new(hub.stores());
    if let Some(f) = filter {
        for s in &f.stores {
            b.whole(s, "filter.stores")?;
        }
        for p in &f.prefixes {
            b.prefix(&p.store, &p.prefix, "filter.prefixes")?;
        }
    }
    Ok(grant.select(b.build()))
}

enum Start {
    Snapshot,
    From(u64),
}

/// Sends the filter's keys as encoded `SnapshotChunk`s (each made a
/// response by `frame`), read from a snapshot taken now; returns the
/// snapshot's height once the last chunk (`end = true`) is sent.
async fn send_snapshot(
    hub: &Hub,
    filter: &Filter,
    sink: &mut Sink<Framed>,
    frame: impl Fn(Bytes) -> Framed,
) -> Result<u64, SubscriptionEnd> {
    let mut reader = hub.read_snapshot(filter.clone(), ChunkEncoder::new)?;
    while let Some(chunk) = reader.next().await? {
        sink.send(frame(chunk)).await?;
    }
    Ok(reader.height())
}

impl StateStreamService {
    async fn run(
        hub: Arc<Hub>,
        guard: SubscriberGuard,
        selection: Selection,
        start: Start,
        sink: &mut Sink<Framed>,
    ) -> Result<(), SubscriptionEnd> {
        let filter = selection.filter();
        let next = match start {
            Start::From(h) => h.max(1),
            Start::Snapshot => {
                let frame = |chunk| Framed::field(SUBSCRIBE_SNAPSHOT, chunk);
                send_snapshot(&hub, filter, sink, frame).await? + 1
            }
        };
        let mut sub = hub.subscribe(guard, next);
        loop {
            let event = tokio::select! {
                e = sub.next() => e?,
                _ = sink.closed() => return Err(Ended::Gone.into()),
            };
            match event {
                Event::Block(block) => {
                    let messages = block.rendered(&selection, |b| encode_block(b, filter));
                    for m in messages.iter() {
                        sink.send(Framed::field(SUBSCRIBE_BLOCK, m.clone())).await?;
                    }
                }
                Event::Heartbeat(head) => {
                    let beat = pb::Heartbeat { head_height: head }.encode_to_vec();
                    sink.try_send(Framed::field(SUBSCRIBE_HEARTBEAT, beat.into()))?;
                }
            }
        }
    }

    pub(crate) fn list_stores(&self) -> Result<pb::ListStoresResponse, Status> {
        let hub = &self.hub;
        let stores = hub
            .stores()
            .iter()
            .zip(hub.value_types())
            .map(|(s, t)| pb::StoreInfo {
                name: s.name().to_string(),
                value_type: t.clone(),
            })
            .collect();
        Ok(pb::ListStoresResponse {
            stores,
            head_height: hub.head(),
            oldest_height: hub.oldest()?,
        })
    }

    pub(crate) fn snapshot(
        &self,
        grant: &Grant,
        request: pb::SnapshotRequest,
    ) -> Result<Outbox<Framed>, Status> {
        let hub = Arc::clone(&self.hub);
        if hub.is_closing() {
            return Err(HubError::ShuttingDown.into());
        }
        let filter = parse_filter(&hub, grant, request.filter)?;
        let (mut sink, outbox) = outbox::channel(&hub, FrontEnd::Grpc);
        tokio::spawn(async move {
            if let Err(end) = send_snapshot(&hub, &filter, &mut sink, Framed::whole).await {
                sink.finish(end);
            }
        });
        Ok(outbox)
    }

    pub(crate) fn subscribe(
        &self,
        grant: &Grant,
        request: pb::SubscribeRequest,
    ) -> Result<Outbox<Framed>, Status> {
        use pb::subscribe_request::Start as S;
        let hub = Arc::clone(&self.hub);
        let filter = parse_filter(&hub, grant, request.filter)?;
        let start = match request.start {
            // Live: from the block after the head when the request arrives
            // (read before the subscription is counted), not when its
            // task first runs: a block committed in between is sent.
            None | Some(S::Live(_)) => Start::From(hub.head() + 1),
            Some(S::Snapshot(_)) => Start::Snapshot,
            Some(S::FromHeight(h)) => {
                hub.check_from(h)?;
                Start::From(h)
            }
        };
        let guard = hub.admit(FrontEnd::Grpc)?;
        let selection = Selection::new(filter, Format::Protobuf);
        let (mut sink, outbox) = outbox::channel(&hub, FrontEnd::Grpc);
        tokio::spawn(async move {
            if let Err(end) = StateStreamService::run(hub, guard, selection, start, &mut sink).await
            {
                sink.finish(end);
            }
        });
        Ok(outbox)
    }

    pub(crate) async fn push_update(
        &self,
        request: pb::PushUpdateRequest,
    ) -> Result<pb::PushUpdateResponse, Status> {
        let value = if request.delete {
            None
        } else {
            Some(request.value)
        };
        let height = push_write(
            &self.hub,
            self.push_updates,
            &request.store,
            request.key,
            value,
        )
        .await?;
        Ok(pb::PushUpdateResponse { height })
    }
}
