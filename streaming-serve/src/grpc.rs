//! The gRPC front-end: `statestream.v1.StateStream`, the datastream
//! `DataService`, health and reflection on one listener, behind the token
//! check.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use statestream_core::{Action, Block, PushError};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::error::HubError;
use crate::filter::{Filter, FilterBuilder};
use crate::hub::{Event, Hub, stream_snapshot, visit_snapshot};
use crate::metrics::FrontEnd;
use crate::outbox::{self, Ended, Outbox, Sink};
use crate::proto::server::{self as v1, state_stream_server::StateStream};
use crate::proto::v1 as pb;
use crate::wire::Encoded;

/// Payload bytes per message (entries or changes): well under the 4 MiB
/// that gRPC clients accept by default.
pub const MESSAGE_BYTES: usize = 256 * 1024;

/// How long one message may wait for a client before it counts as
/// stalled: twice the heartbeat interval, at least one second.
pub(crate) fn stall_timeout(hub: &Hub) -> Duration {
    (hub.heartbeat() * 2).max(Duration::from_secs(1))
}

/// Checks `authorization: Bearer <token>` (when a token is set).
#[derive(Clone)]
pub(crate) struct Auth {
    token: Arc<str>,
}

impl Auth {
    pub(crate) fn new(token: &str) -> Auth {
        Auth {
            token: token.into(),
        }
    }

    pub(crate) fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.token.is_empty() {
            return Ok(request);
        }
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => Err(Status::unauthenticated(
                "missing token: send `authorization: Bearer <token>`",
            )),
            Some(t) if constant_time_eq(t.as_bytes(), self.token.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("wrong token")),
        }
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

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
    let queue = hub.push_queue().ok_or_else(|| {
        Status::failed_precondition("the application does not accept pushed writes")
    })?;
    let (tx, rx) = oneshot::channel();
    queue
        .push(
            store.to_string(),
            key,
            value,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .map_err(|e| match e {
            PushError::NotAttached => Status::failed_precondition(e.to_string()),
            PushError::Full(_) => Status::resource_exhausted(e.to_string()),
        })?;
    let mut closing = hub.closing();
    tokio::select! {
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

/// The `statestream.v1.StateStream` service.
#[derive(Clone)]
pub(crate) struct StateStreamService {
    pub hub: Arc<Hub>,
    pub push_updates: bool,
    pub encoded: Arc<EncodedBlocks>,
}

fn parse_filter(hub: &Hub, filter: Option<v1::Filter>) -> Result<Filter, Status> {
    let mut b = FilterBuilder::new(hub.stores());
    if let Some(f) = filter {
        for s in &f.stores {
            b.whole(s, "filter.stores")?;
        }
        for p in &f.prefixes {
            b.prefix(&p.store, &p.prefix, "filter.prefixes")?;
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

/// The messages of one block for one filter: one or more, the last with
/// `end = true`.
pub(crate) fn block_messages(block: &Block, filter: &Filter) -> Vec<pb::BlockChanges> {
    let height = block.height();
    let time = timestamp(Some((block.meta().time_seconds, block.meta().time_nanos)));
    let mut out = Vec::new();
    let mut changes = Vec::new();
    let mut bytes = 0;
    for store in block.stores() {
        let Some(part) = filter.store(store.store().name()) else {
            continue;
        };
        for (record, action) in store.changes() {
            if !part.matches(record.key) {
                continue;
            }
            let op = match action {
                Action::Create => pb::Op::Create,
                Action::Update => pb::Op::Update,
                Action::Delete => pb::Op::Delete,
            };
            bytes +=
                record.store.len() + record.key.len() + record.value.map_or(0, <[u8]>::len) + 8;
            changes.push(pb::Change {
                store: record.store.to_string(),
                key: record.key.to_vec(),
                value: record.value.map(<[u8]>::to_vec).unwrap_or_default(),
                op: op as i32,
            });
            if bytes >= MESSAGE_BYTES {
                out.push(pb::BlockChanges {
                    height,
                    time,
                    changes: std::mem::take(&mut changes),
                    end: false,
                });
                bytes = 0;
            }
        }
    }
    out.push(pb::BlockChanges {
        height,
        time,
        changes,
        end: true,
    });
    out
}

/// One block's encoded messages, filled once by whichever subscriber
/// needs them first.
type EncodedCell = Arc<OnceLock<Arc<[Encoded]>>>;

/// The encoded messages of one block, encoded once per block for the
/// filter most subscribers use (every streamed store) and shared; other
/// filters are encoded per subscriber.
pub(crate) struct EncodedBlocks {
    all: Filter,
    recent: Mutex<VecDeque<(u64, EncodedCell)>>,
}

impl EncodedBlocks {
    pub(crate) fn new(all: Filter) -> EncodedBlocks {
        EncodedBlocks {
            all,
            recent: Mutex::new(VecDeque::new()),
        }
    }

    fn encode(block: &Block, filter: &Filter) -> Arc<[Encoded]> {
        block_messages(block, filter)
            .into_iter()
            .map(|m| Encoded(prost::Message::encode_to_vec(&m).into()))
            .collect()
    }

    pub(crate) fn get(&self, block: &Block, filter: &Filter) -> Arc<[Encoded]> {
        if *filter != self.all {
            return EncodedBlocks::encode(block, filter);
        }
        let height = block.height();
        let cell = {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            match recent.iter().find(|(h, _)| *h == height) {
                Some((_, cell)) => Arc::clone(cell),
                None => {
                    if recent.len() >= crate::hub::RING_BLOCKS {
                        recent.pop_front();
                    }
                    let cell = Arc::new(OnceLock::new());
                    recent.push_back((height, Arc::clone(&cell)));
                    cell
                }
            }
        };
        Arc::clone(cell.get_or_init(|| EncodedBlocks::encode(block, &self.all)))
    }
}

enum Start {
    Snapshot,
    From(u64),
}

/// Sends snapshot chunks (converted by `make`) until the snapshot ends;
/// returns its height.
pub(crate) async fn send_snapshot<T: prost::Message>(
    hub: &Hub,
    filter: &Filter,
    batch_bytes: usize,
    sink: &mut Sink<T>,
    mut make: impl FnMut(u64, Option<(i64, u32)>, Vec<crate::hub::Entry>, bool) -> T,
) -> Result<u64, SubscriptionEnd> {
    let (height, mut rx) = stream_snapshot(hub, filter.clone(), batch_bytes)?;
    let time = hub.block_time(height);
    let mut pending: Option<Vec<crate::hub::Entry>> = None;
    loop {
        let next = rx.recv().await.transpose()?;
        match (pending.take(), next) {
            (Some(batch), Some(more)) => {
                sink.send(make(height, time, batch, false)).await?;
                pending = Some(more);
            }
            (None, Some(more)) => pending = Some(more),
            (Some(batch), None) => {
                sink.send(make(height, time, batch, true)).await?;
                break;
            }
            (None, None) => {
                sink.send(make(height, time, Vec::new(), true)).await?;
                break;
            }
        }
    }
    Ok(height)
}

/// Why a subscription's task ends.
pub(crate) enum SubscriptionEnd {
    /// The stream is over already (client gone, stalled, shutdown).
    Ended(Ended),
    /// End the stream with this error.
    Error(HubError),
}

impl From<Ended> for SubscriptionEnd {
    fn from(e: Ended) -> Self {
        SubscriptionEnd::Ended(e)
    }
}

impl From<HubError> for SubscriptionEnd {
    fn from(e: HubError) -> Self {
        SubscriptionEnd::Error(e)
    }
}

/// Ends a subscription's stream according to why its task ended.
pub(crate) fn finish<T: prost::Message>(sink: Sink<T>, end: SubscriptionEnd) {
    match end {
        SubscriptionEnd::Ended(why) => tracing::debug!(?why, "subscription ended"),
        SubscriptionEnd::Error(e) => {
            tracing::debug!(error = %e, "subscription ended");
            sink.finish(e.into());
        }
    }
}

impl StateStreamService {
    async fn run(
        hub: Arc<Hub>,
        encoded: Arc<EncodedBlocks>,
        guard: crate::hub::SubscriberGuard,
        filter: Filter,
        start: Start,
        sink: &mut Sink<v1::SubscribeResponse>,
    ) -> Result<(), SubscriptionEnd> {
        use v1::subscribe_response::Message;
        let next = match start {
            Start::From(h) => h.max(1),
            Start::Snapshot => {
                let height =
                    send_encoded_snapshot(&hub, &filter, sink, |chunk| v1::SubscribeResponse {
                        message: Some(Message::Snapshot(chunk)),
                    })
                    .await?;
                height + 1
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
                    for m in encoded.get(&block, &filter).iter() {
                        sink.send(v1::SubscribeResponse {
                            message: Some(Message::Block(m.clone())),
                        })
                        .await?;
                    }
                }
                Event::Heartbeat(head) => sink.try_send(v1::SubscribeResponse {
                    message: Some(Message::Heartbeat(v1::Heartbeat { head_height: head })),
                })?,
            }
        }
    }
}

/// `SnapshotChunk` messages encoded straight from the store's iterator:
/// no `Entry` values, no store name copied per key.
struct ChunkEncoder {
    /// `height` and `time`, the fields every chunk starts with.
    header: Vec<u8>,
    chunk: Vec<u8>,
}

/// The capacity each chunk starts with: [`MESSAGE_BYTES`] of entries and
/// room for the one that crosses it.
const CHUNK_CAPACITY: usize = MESSAGE_BYTES + MESSAGE_BYTES / 8;

/// One piece of an encoded snapshot.
enum Piece {
    /// A chunk, more to come.
    Chunk(Encoded),
    /// The last chunk (`end = true`).
    Last(Encoded),
}

impl ChunkEncoder {
    fn new(height: u64, time: Option<(i64, u32)>) -> ChunkEncoder {
        use prost::encoding::{message, uint64};
        let mut header = Vec::with_capacity(24);
        if height != 0 {
            uint64::encode(1, &height, &mut header);
        }
        if let Some(ts) = timestamp(time) {
            message::encode(4, &ts, &mut header);
        }
        let mut chunk = Vec::with_capacity(CHUNK_CAPACITY);
        chunk.extend_from_slice(&header);
        ChunkEncoder { header, chunk }
    }

    /// Appends one `Entry` (field 2; proto3 leaves empty fields out). When
    /// the chunk holds entries and this one would take it past
    /// [`MESSAGE_BYTES`], the chunk is returned first and the entry starts
    /// the next one (an entry larger than that is a chunk of its own).
    fn push(&mut self, store: &str, key: &[u8], value: &[u8]) -> Option<Encoded> {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
        let field = |len: usize| {
            if len == 0 {
                0
            } else {
                1 + encoded_len_varint(len as u64) + len
            }
        };
        let entry = field(store.len()) + field(key.len()) + field(value.len());
        let whole = 1 + encoded_len_varint(entry as u64) + entry;
        let full = (self.chunk.len() > self.header.len()
            && self.chunk.len() + whole > MESSAGE_BYTES)
            .then(|| self.take());
        encode_key(2, WireType::LengthDelimited, &mut self.chunk);
        encode_varint(entry as u64, &mut self.chunk);
        for (tag, bytes) in [(1, store.as_bytes()), (2, key), (3, value)] {
            if !bytes.is_empty() {
                encode_key(tag, WireType::LengthDelimited, &mut self.chunk);
                encode_varint(bytes.len() as u64, &mut self.chunk);
                self.chunk.extend_from_slice(bytes);
            }
        }
        full
    }

    /// The chunk so far, without `end`; starts the next one.
    fn take(&mut self) -> Encoded {
        let mut next = Vec::with_capacity(CHUNK_CAPACITY);
        next.extend_from_slice(&self.header);
        let mut chunk = std::mem::replace(&mut self.chunk, next);
        if chunk.capacity() > 2 * chunk.len() {
            chunk.shrink_to_fit();
        }
        Encoded(chunk.into())
    }

    /// The last chunk: what is left, with `end = true`.
    fn finish(mut self) -> Encoded {
        prost::encoding::bool::encode(3, &true, &mut self.chunk);
        if self.chunk.capacity() > 2 * self.chunk.len() {
            self.chunk.shrink_to_fit();
        }
        Encoded(self.chunk.into())
    }
}

/// Sends the filter's keys as encoded `SnapshotChunk`s (wrapped by
/// `wrap`), read on a blocking thread from a snapshot taken now; returns
/// the snapshot's height once the last chunk (`end = true`) is sent.
pub(crate) async fn send_encoded_snapshot<T: prost::Message>(
    hub: &Hub,
    filter: &Filter,
    sink: &mut Sink<T>,
    wrap: impl Fn(Encoded) -> T,
) -> Result<u64, SubscriptionEnd> {
    let snapshot = hub.snapshot()?;
    let height = snapshot.height();
    let time = hub.block_time(height);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Piece, HubError>>(2);
    let filter = filter.clone();
    tokio::task::spawn_blocking(move || {
        let mut chunks = ChunkEncoder::new(height, time);
        let mut gone = false;
        let visited = visit_snapshot(snapshot.as_ref(), &filter, |store, key, value| {
            if let Some(chunk) = chunks.push(store.name(), &key, &value) {
                gone = tx.blocking_send(Ok(Piece::Chunk(chunk))).is_err();
            }
            !gone
        });
        if !gone {
            let _ = tx.blocking_send(visited.map(|()| Piece::Last(chunks.finish())));
        }
    });
    while let Some(piece) = rx.recv().await {
        match piece? {
            Piece::Chunk(chunk) => sink.send(wrap(chunk)).await?,
            Piece::Last(chunk) => {
                sink.send(wrap(chunk)).await?;
                return Ok(height);
            }
        }
    }
    // The reader stopped without its last chunk (it panicked): the
    // snapshot is incomplete, and the client must not take it as whole.
    Err(HubError::Store("the snapshot's reader stopped before its end".into()).into())
}

#[tonic::async_trait]
impl StateStream for StateStreamService {
    async fn list_stores(
        &self,
        _request: Request<v1::ListStoresRequest>,
    ) -> Result<Response<v1::ListStoresResponse>, Status> {
        let hub = &self.hub;
        let stores = hub
            .stores()
            .iter()
            .zip(hub.value_types())
            .map(|(s, t)| v1::StoreInfo {
                name: s.name().to_string(),
                value_type: t.clone(),
            })
            .collect();
        Ok(Response::new(v1::ListStoresResponse {
            stores,
            head_height: hub.head(),
            oldest_height: hub.oldest()?,
        }))
    }

    type SnapshotStream = Outbox<Encoded>;

    async fn snapshot(
        &self,
        request: Request<v1::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let hub = Arc::clone(&self.hub);
        if hub.is_closing() {
            return Err(HubError::ShuttingDown.into());
        }
        let filter = parse_filter(&hub, request.into_inner().filter)?;
        let (mut sink, outbox) = outbox::channel(
            stall_timeout(&hub),
            hub.closing(),
            Arc::clone(hub.metrics()),
        );
        tokio::spawn(async move {
            let r = send_encoded_snapshot(&hub, &filter, &mut sink, |chunk| chunk).await;
            if let Err(end) = r {
                finish(sink, end);
            }
        });
        Ok(Response::new(outbox))
    }

    type SubscribeStream = Outbox<v1::SubscribeResponse>;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        use v1::subscribe_request::Start as S;
        let hub = Arc::clone(&self.hub);
        let request = request.into_inner();
        let filter = parse_filter(&hub, request.filter)?;
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
        let encoded = Arc::clone(&self.encoded);
        let (mut sink, outbox) = outbox::channel(
            stall_timeout(&hub),
            hub.closing(),
            Arc::clone(hub.metrics()),
        );
        tokio::spawn(async move {
            if let Err(end) =
                StateStreamService::run(hub, encoded, guard, filter, start, &mut sink).await
            {
                finish(sink, end);
            }
        });
        Ok(Response::new(outbox))
    }

    async fn push_update(
        &self,
        request: Request<v1::PushUpdateRequest>,
    ) -> Result<Response<v1::PushUpdateResponse>, Status> {
        let r = request.into_inner();
        let value = if r.delete { None } else { Some(r.value) };
        let height = push_write(&self.hub, self.push_updates, &r.store, r.key, value).await?;
        Ok(Response::new(v1::PushUpdateResponse { height }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn decode(e: &Encoded) -> pb::SnapshotChunk {
        pb::SnapshotChunk::decode(&e.0[..]).expect("a SnapshotChunk")
    }

    #[test]
    fn encoded_chunks_decode_as_the_messages_prost_would_build() {
        // Field order differs from prost's (time comes before the entries),
        // which protobuf allows; the decoded messages are equal.
        let mut chunks = ChunkEncoder::new(42, Some((1_700_000_000, 5)));
        assert!(chunks.push("bank", b"k1", b"v1").is_none());
        assert!(chunks.push("acc", b"", b"").is_none());
        let first = chunks.take();
        assert!(chunks.push("bank", b"k2", &[7u8; 300]).is_none());
        let last = chunks.finish();
        let time = Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        });
        let entry = |store: &str, key: &[u8], value: &[u8]| pb::Entry {
            store: store.into(),
            key: key.to_vec(),
            value: value.to_vec(),
        };
        let expected_first = pb::SnapshotChunk {
            height: 42,
            entries: vec![entry("bank", b"k1", b"v1"), entry("acc", b"", b"")],
            end: false,
            time,
        };
        assert_eq!(decode(&first), expected_first);
        let expected_last = pb::SnapshotChunk {
            height: 42,
            entries: vec![entry("bank", b"k2", &[7u8; 300])],
            end: true,
            time,
        };
        assert_eq!(decode(&last), expected_last);
    }

    #[test]
    fn a_chunk_is_cut_before_the_entry_that_would_take_it_past_the_limit() {
        let mut chunks = ChunkEncoder::new(7, None);
        let value = vec![1u8; MESSAGE_BYTES / 3];
        let mut cut = Vec::new();
        for i in 0..7u8 {
            if let Some(chunk) = chunks.push("s", &[i], &value) {
                cut.push(chunk);
            }
        }
        // A huge entry is a chunk of its own.
        let huge = vec![2u8; MESSAGE_BYTES * 2];
        cut.extend(chunks.push("s", b"huge", &huge));
        cut.extend(chunks.push("s", b"z", b"1"));
        cut.push(chunks.finish());
        let decoded: Vec<pb::SnapshotChunk> = cut.iter().map(decode).collect();
        let sizes: Vec<usize> = decoded.iter().map(|c| c.entries.len()).collect();
        assert_eq!(sizes, [2, 2, 2, 1, 1, 1], "{sizes:?}");
        for (c, e) in cut.iter().zip(&decoded) {
            assert!(
                c.0.len() <= MESSAGE_BYTES || e.entries.len() == 1,
                "a chunk of {} bytes with {} entries",
                c.0.len(),
                e.entries.len()
            );
        }
        assert!(
            decoded
                .iter()
                .rev()
                .skip(1)
                .all(|c| !c.end && c.height == 7)
        );
        assert!(decoded.last().is_some_and(|c| c.end));
        assert_eq!(decoded[4].entries[0].key, b"huge");
    }

    #[test]
    fn an_empty_snapshot_is_one_chunk_that_ends_it() {
        let chunk = decode(&ChunkEncoder::new(0, None).finish());
        assert_eq!(
            chunk,
            pb::SnapshotChunk {
                height: 0,
                entries: vec![],
                end: true,
                time: None,
            }
        );
    }
}
