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
use crate::filter::Filter;
use crate::hub::{Event, Hub, SubscriberGuard};
use crate::metrics::FrontEnd;
use crate::outbox::{self, Outbox, Sink, SubscriptionEnd};
use crate::proto::v1 as pb;
use crate::selection::{Format, Selection};

/// The `statestream.v1.StateStream` service.
#[derive(Clone)]
pub(crate) struct StateStreamService {
    pub hub: Arc<Hub>,
    pub push_updates: bool,
}

fn parse_filter(hub: &Hub, grant: &Grant, filter: Option<pb::Filter>) -> Result<Filter, Status> {
    let mut b = hub.filter_builder();
    if let Some(f) = filter {
        for s in &f.stores {
            b.whole(s, "filter.stores")?;
        }
        for p in &f.prefixes {
            b.prefix(&p.store, &p.prefix, "filter.prefixes")?;
        }
    }
    grant.select(b).map_err(super::denied)
}

/// The streaming methods of the service.
pub(crate) enum Method {
    /// `Snapshot`: the chunks of a snapshot, then the stream ends.
    Snapshot,
    /// `Subscribe`, from where the request says.
    Subscribe(Option<pb::subscribe_request::Start>),
}

/// Where a `Subscribe` stream starts.
pub(crate) enum Start {
    /// A snapshot, then the blocks after it.
    Snapshot,
    /// Every block from this height.
    From(u64),
}

impl Start {
    /// Where a `Subscribe` request starts; `OUT_OF_RANGE` outside the
    /// retained window.
    fn subscribe(
        hub: &Hub,
        start: Option<pb::subscribe_request::Start>,
    ) -> Result<Start, HubError> {
        use pb::subscribe_request::Start as S;
        Ok(match start {
            // Live: from the block after the head when the request arrives
            // (read before the subscription is counted), not when its
            // task first runs: a block committed in between is sent.
            None | Some(S::Live(_)) => Start::From(hub.head() + 1),
            Some(S::Snapshot(_)) => Start::Snapshot,
            Some(S::FromHeight(h)) => {
                hub.check_from(h)?;
                Start::From(h)
            }
        })
    }
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
    let mut reader = hub.read_snapshot(filter.clone(), |at| {
        ChunkEncoder::new(at.height, at.time(), at.hashes())
    })?;
    while let Some(chunk) = reader.next().await? {
        sink.send(frame(chunk)).await?;
    }
    Ok(reader.height())
}

impl StateStreamService {
    /// Feeds a stream: a snapshot alone (`subscriber` none), or a
    /// subscriber from where it starts.
    async fn run(
        hub: Arc<Hub>,
        selection: Selection,
        subscriber: Option<(SubscriberGuard, Start)>,
        sink: &mut Sink<Framed>,
    ) -> Result<(), SubscriptionEnd> {
        let filter = selection.filter();
        let Some((guard, start)) = subscriber else {
            send_snapshot(&hub, filter, sink, Framed::whole).await?;
            return Ok(());
        };
        let next = match start {
            Start::From(h) => h.max(1),
            Start::Snapshot => {
                let frame = |chunk| Framed::field(SUBSCRIBE_SNAPSHOT, chunk);
                send_snapshot(&hub, filter, sink, frame).await? + 1
            }
        };
        let mut sub = hub.subscribe(guard, next);
        loop {
            match sink.next_event(&mut sub).await? {
                Event::Block(block) => {
                    let hashes = block.hashes();
                    let messages = block.rendered(&selection, |b| encode_block(b, filter, &hashes));
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

    pub(crate) fn list_stores(&self, grant: &Grant) -> Result<pb::ListStoresResponse, Status> {
        let hub = &self.hub;
        let stores = hub
            .stores()
            .iter()
            .zip(hub.value_types())
            .filter(|(s, _)| grant.sees(s.name()))
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

    /// A `Snapshot` or `Subscribe` stream of `filter`.
    pub(crate) fn open(
        &self,
        grant: &Grant,
        filter: Option<pb::Filter>,
        method: Method,
    ) -> Result<Outbox<Framed>, Status> {
        let hub = Arc::clone(&self.hub);
        // A one-shot snapshot is not a subscriber: no place to take, which
        // would refuse it at shutdown.
        if matches!(method, Method::Snapshot) && hub.is_closing() {
            return Err(HubError::ShuttingDown.into());
        }
        let filter = parse_filter(&hub, grant, filter)?;
        let subscriber = match method {
            Method::Snapshot => None,
            Method::Subscribe(start) => {
                let start = Start::subscribe(&hub, start)?;
                Some((hub.admit(FrontEnd::Grpc)?, start))
            }
        };
        let guard = grant.open_stream(&filter).map_err(super::denied)?;
        let selection = Selection::new(filter, Format::Protobuf);
        Ok(outbox::spawn_guarded(
            &self.hub,
            FrontEnd::Grpc,
            guard,
            |mut sink| async move {
                let ended = StateStreamService::run(hub, selection, subscriber, &mut sink).await;
                (sink, ended)
            },
        ))
    }

    pub(crate) async fn push_update(
        &self,
        grant: &Grant,
        request: pb::PushUpdateRequest,
    ) -> Result<pb::PushUpdateResponse, Status> {
        grant
            .may_push(&request.store, &request.key)
            .map_err(super::denied)?;
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
