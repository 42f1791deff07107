//! `GET /snapshot`, and the selected state as JSON that an SSE stream's
//! `put` also carries: `{"<store>":{"<key>":{"value":"<v>","version":H}}}`.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use statestream_core::StoreKey;

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

/// `GET /snapshot`.
pub(super) async fn snapshot(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    let params = parse_params(query.as_deref())?;
    let grant = st.admit(&headers, params.token.as_deref())?;
    let filter = params.filter(&st.hub, &grant)?;
    let encoding = params.encoding()?;
    if st.hub.is_closing() {
        return Err(HubError::ShuttingDown.into());
    }
    let (height, data) = read_state(&st.hub, &filter, encoding).await?;
    let body = json!({ "height": height, "data": data }).to_string();
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}
