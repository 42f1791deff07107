//! `GET /snapshot`, and the selected state as JSON that an SSE stream's
//! `put` also carries: `{"<store>":{"<key>":{"value":"<v>","version":H}}}`.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use statestream_core::StoreKey;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::params::{Encoding, parse_params};
use super::{AppState, HttpError};
use crate::error::HubError;
use crate::filter::Filter;
use crate::hub::Hub;
use crate::hub::snapshot::SnapshotWriter;

/// The state as one JSON object, every selected store in it (also those
/// without keys).
struct JsonState {
    height: u64,
    encoding: Encoding,
    data: Map<String, Value>,
    store: Option<(String, Map<String, Value>)>,
}

impl JsonState {
    fn close_store(&mut self) {
        if let Some((name, keys)) = self.store.take() {
            self.data.insert(name, Value::Object(keys));
        }
    }
}

impl SnapshotWriter for JsonState {
    type Piece = Value;

    fn store(&mut self, store: &StoreKey) {
        self.close_store();
        self.store = Some((store.name().to_string(), Map::new()));
    }

    fn entry(&mut self, _store: &StoreKey, key: Vec<u8>, value: Vec<u8>) -> Option<Value> {
        if let Some((_, keys)) = &mut self.store {
            keys.insert(
                self.encoding.text(&key),
                json!({ "value": self.encoding.text(&value), "version": self.height }),
            );
        }
        None
    }

    fn finish(mut self) -> Option<Value> {
        self.close_store();
        Some(Value::Object(self.data))
    }
}

/// The selected state at the head: its height and its JSON.
pub(super) async fn read_state(
    hub: &Hub,
    filter: &Filter,
    encoding: Encoding,
) -> Result<(u64, Value), HubError> {
    let reader = hub.read_snapshot(filter.clone(), |at| JsonState {
        height: at.height,
        encoding,
        data: Map::new(),
        store: None,
    })?;
    let height = reader.height();
    let data = reader
        .collect()
        .await?
        .pop()
        .unwrap_or_else(|| Value::Object(Map::new()));
    Ok((height, data))
}

/// `GET /snapshot`'s body as it is read: `{"height":H,"data":{...}}` in
/// pieces of about [`CHUNK_BYTES`], so a large state is never held whole.
struct JsonChunks {
    height: u64,
    encoding: Encoding,
    buf: Vec<u8>,
    /// A store's object is open.
    in_store: bool,
    /// The open store has a key already.
    keyed: bool,
}

/// The size of one piece of a `/snapshot` body.
const CHUNK_BYTES: usize = 64 * 1024;

impl JsonChunks {
    fn new(height: u64, encoding: Encoding) -> JsonChunks {
        let mut buf = Vec::with_capacity(CHUNK_BYTES + 1024);
        buf.extend_from_slice(format!("{{\"height\":{height},\"data\":{{").as_bytes());
        JsonChunks {
            height,
            encoding,
            buf,
            in_store: false,
            keyed: false,
        }
    }

    fn string(&mut self, text: &str) {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, text);
    }
}

impl SnapshotWriter for JsonChunks {
    type Piece = Vec<u8>;

    fn store(&mut self, store: &StoreKey) {
        if self.in_store {
            self.buf.extend_from_slice(b"},");
        }
        self.string(store.name());
        self.buf.extend_from_slice(b":{");
        self.in_store = true;
        self.keyed = false;
    }

    fn entry(&mut self, _store: &StoreKey, key: Vec<u8>, value: Vec<u8>) -> Option<Vec<u8>> {
        if self.keyed {
            self.buf.push(b',');
        }
        self.keyed = true;
        let key = self.encoding.text(&key);
        self.string(&key);
        self.buf.extend_from_slice(b":{\"value\":");
        let value = self.encoding.text(&value);
        self.string(&value);
        self.buf
            .extend_from_slice(format!(",\"version\":{}}}", self.height).as_bytes());
        (self.buf.len() >= CHUNK_BYTES)
            .then(|| std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES + 1024)))
    }

    fn finish(mut self) -> Option<Vec<u8>> {
        if self.in_store {
            self.buf.push(b'}');
        }
        self.buf.extend_from_slice(b"}}");
        Some(self.buf)
    }
}

/// `GET /snapshot`: counted against `max_snapshots`, read on a blocking
/// thread a few pieces ahead of the client and sent chunked as it is read;
/// a read that fails midway cuts the body short (no final chunk), never a
/// complete-looking answer.
pub(super) async fn snapshot(
    State(st): State<AppState>,
    peer: super::Peer,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    let params = parse_params(query.as_deref())?;
    let grant = st.admit(&headers, params.token.as_deref(), &peer)?;
    let filter = params.filter(&st.hub, &grant)?;
    let encoding = params.encoding()?;
    let permit = st.hub.admit_snapshot()?;
    let mut reader = st
        .hub
        .read_snapshot(filter, |at| JsonChunks::new(at.height, encoding))?;
    let (tx, rx) = mpsc::channel::<Result<Vec<u8>, HubError>>(1);
    tokio::spawn(async move {
        // The place is held until the last piece is sent or the client
        // left (the send fails and the reader stops).
        let _permit = permit;
        loop {
            let next = reader.next().await;
            let done = !matches!(next, Ok(Some(_)));
            let item = match next {
                Ok(Some(piece)) => Ok(piece),
                Ok(None) => return,
                Err(e) => Err(e),
            };
            if tx.send(item).await.is_err() || done {
                return;
            }
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}
