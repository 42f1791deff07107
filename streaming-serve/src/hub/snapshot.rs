//! The one snapshot reader of every front-end: takes a read snapshot now
//! (its height is known at once), reads the filter's keys in store then key
//! order on a blocking thread, and hands them to the front-end's
//! [`SnapshotWriter`], whose pieces (gRPC chunks, datastream responses, the
//! JSON state) come out of a [`SnapshotReader`]. A reader that stops
//! before its end (a panic) is an error, never a snapshot taken as whole.

use std::ops::Bound;

use prost::bytes::Bytes;
use statestream_core::{SnapshotHashes, StateSnapshot, StoreKey};
use tokio::sync::mpsc;

use crate::error::HubError;
use crate::filter::Filter;
use crate::grpc::encoding::encode_hashes;
use crate::hub::Hub;

/// What a front-end makes of a snapshot's keys.
pub trait SnapshotWriter: Send + 'static {
    /// A message (or batch) ready to send.
    type Piece: Send + 'static;

    /// A selected store begins (its keys follow, possibly none).
    fn store(&mut self, _store: &StoreKey) {}

    /// One key; returns a piece when one is complete.
    fn entry(&mut self, store: &StoreKey, key: Vec<u8>, value: Vec<u8>) -> Option<Self::Piece>;

    /// What is left once every key was given, if anything is to be sent.
    fn finish(self) -> Option<Self::Piece>;
}

enum Read<P> {
    Piece(P),
    End,
}

/// Pieces waiting between the reading thread and the sender: the reader
/// stays this far ahead of a slow client and no further.
const PIECES_AHEAD: usize = 2;

/// A snapshot being read: its height, then its pieces.
pub struct SnapshotReader<P> {
    height: u64,
    rx: mpsc::Receiver<Result<Read<P>, HubError>>,
}

impl<P> SnapshotReader<P> {
    /// The snapshot's height.
    pub fn height(&self) -> u64 {
        self.height
    }

    /// The next piece; `None` once the snapshot is complete.
    pub async fn next(&mut self) -> Result<Option<P>, HubError> {
        match self.rx.recv().await {
            Some(Ok(Read::Piece(p))) => Ok(Some(p)),
            Some(Ok(Read::End)) => Ok(None),
            Some(Err(e)) => Err(e),
            None => Err(HubError::Store(
                "the snapshot's reader stopped before its end".into(),
            )),
        }
    }

    /// Every piece, once the snapshot is complete.
    pub async fn collect(mut self) -> Result<Vec<P>, HubError> {
        let mut all = Vec::new();
        while let Some(p) = self.next().await? {
            all.push(p);
        }
        Ok(all)
    }
}

/// The height a snapshot was taken at, for the writer it starts.
pub struct At<'a> {
    pub height: u64,
    hub: &'a Hub,
    /// Read with the snapshot, from its transaction.
    hashes: Option<SnapshotHashes>,
}

impl At<'_> {
    /// The time of the snapshot's block, when known (read only when a
    /// writer asks).
    pub fn time(&self) -> Option<(i64, u32)> {
        self.hub.block_time(self.height)
    }

    /// The hash fields of the snapshot's last gRPC chunk: those of block
    /// `height` when the hub still has it (with the source's app hash),
    /// else the hashes read with the snapshot (a height the change log no
    /// longer holds, or a replica's first height, taken from a snapshot);
    /// empty at height 0.
    pub fn hashes(&self) -> Bytes {
        if self.height == 0 {
            return Bytes::new();
        }
        if let Ok(block) = self.hub.block(self.height) {
            return block.hashes();
        }
        let Some(h) = &self.hashes else {
            return Bytes::new();
        };
        let streamed = self.hub.stores();
        encode_hashes(
            &h.app_hash,
            h.stores
                .iter()
                .filter(|(s, _)| streamed.binary_search(s).is_ok())
                .map(|(s, hash)| (s.name(), &hash[..])),
            &[],
        )
    }
}

impl Hub {
    /// Takes a read snapshot now and reads the keys `filter` selects into
    /// the writer that `writer` makes for it.
    pub(crate) fn read_snapshot<W: SnapshotWriter>(
        &self,
        filter: Filter,
        writer: impl FnOnce(At<'_>) -> W,
    ) -> Result<SnapshotReader<W::Piece>, HubError> {
        let snapshot = self.reader().snapshot().map_err(Hub::store_error)?;
        let height = snapshot.height();
        let hashes = snapshot.hashes().map_err(Hub::store_error)?;
        let mut writer = writer(At {
            height,
            hub: self,
            hashes,
        });
        let (tx, rx) = mpsc::channel(PIECES_AHEAD);
        tokio::task::spawn_blocking(move || {
            let mut gone = false;
            let visited = visit(snapshot.as_ref(), &filter, &mut writer, |piece| {
                gone = tx.blocking_send(Ok(Read::Piece(piece))).is_err();
                !gone
            });
            if gone {
                return;
            }
            let _ = match visited {
                Err(e) => tx.blocking_send(Err(e)),
                Ok(()) => {
                    let last = writer.finish().map(Read::Piece);
                    if let Some(last) = last
                        && tx.blocking_send(Ok(last)).is_err()
                    {
                        return;
                    }
                    tx.blocking_send(Ok(Read::End))
                }
            };
        });
        Ok(SnapshotReader { height, rx })
    }
}

/// Gives `writer` each of the filter's keys in `snapshot`, in store then
/// key order, passing its pieces to `send` until it returns `false`.
fn visit<W: SnapshotWriter>(
    snapshot: &dyn StateSnapshot,
    filter: &Filter,
    writer: &mut W,
    mut send: impl FnMut(W::Piece) -> bool,
) -> Result<(), HubError> {
    for (store, part) in filter.stores() {
        writer.store(store);
        for (start, end) in part.ranges() {
            let iter = snapshot
                .range(store, as_ref(&start), as_ref(&end))
                .map_err(Hub::store_error)?;
            for kv in iter {
                let (k, v) = kv.map_err(Hub::store_error)?;
                if let Some(piece) = writer.entry(store, k, v)
                    && !send(piece)
                {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}
