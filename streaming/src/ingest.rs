//! The ingest pipeline: commits blocks that were committed somewhere else
//! (a Cosmos chain through `statestream cosmos-plugin`, another
//! statestream) into a local replica store, at the source's heights, and
//! hands them to the delivery manager exactly as a node's commit does.
//!
//! - A block's change set is given in the source's write order, with
//!   repeated keys: the replica stores its net change (last write wins) in
//!   the canonical order (the store's pending layer does exactly that).
//! - Stores are discovered from the change sets: a store first seen at
//!   height N is added then and its hash chain starts at N.
//! - The first block of a replica may have any height. A later jump is a
//!   gap: recorded in the store and counted, then either continued past
//!   ([`OnGap::Continue`]) or refused ([`OnGap::Halt`]).
//! - A height at or below the replica's is a replay: answered OK, nothing
//!   is committed or delivered again.
//! - The block, its metadata (with the source's app hash) and the
//!   streamers' cursors are committed in one store transaction: once
//!   [`Ingest::commit`] returns, the block is durable (with `fsync` on).
//!
//! - A replica of another statestream (a relay) checks each block before
//!   it commits: [`Ingest::commit_checked`] compares the chain values the
//!   block's writes give each store with the source's, and refuses the
//!   block on a mismatch. It starts from a source's snapshot
//!   ([`Ingest::restore`]), whose chain values its chains continue from.
//!
//! Adding stores or continuing past a gap restarts the streamers (closed,
//! then started again on the new set of stores): the manager's store
//! selection is fixed when it starts. Both are rare (a chain's first
//! blocks, a chain upgrade adding a module, a plugin that was down).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use statestream_core::{BlockMeta, CommitInfo, Hash, StoreKey, to_hex};
use statestream_store::{KvStore, MultiStore};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::manager::DeliveryManager;
use crate::observe::{IngestReport, Observer, StatusSection};

/// The name of the pipeline's section of the status ([`IngestReport`]).
pub const INGEST_SECTION: &str = "ingest";

/// One write of a source's change set, in the source's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceWrite {
    /// The store's name (a Cosmos module store: `bank`, `acc`, ...).
    pub store: String,
    /// The key (not empty).
    pub key: Vec<u8>,
    /// The value written, `None` for a delete.
    pub value: Option<Vec<u8>>,
}

/// A block committed by a source.
#[derive(Debug, Clone, Default)]
pub struct SourceBlock {
    /// The source's height (at least 1).
    pub height: u64,
    /// Time, opaque payloads and the source's app hash
    /// ([`BlockMeta::source_app_hash`]).
    pub meta: BlockMeta,
    /// The change set, in the order the source wrote it; a key may come
    /// more than once.
    pub writes: Vec<SourceWrite>,
}

/// What a source says it committed at a height: each store's hash chain
/// value (in any order) and, when it covers every store, the app hash. A
/// replica checks its block against them before committing it
/// ([`Ingest::commit_checked`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceHashes {
    /// `h_s(height)` by store name; every store the replica holds must be
    /// there (others are ignored).
    pub stores: Vec<(String, Hash)>,
    /// The source's app hash over every store: checked when set.
    pub app_hash: Option<Hash>,
}

/// A source's state at one height (a snapshot), with its hashes there.
#[derive(Debug, Clone, Default)]
pub struct SourceSnapshot {
    /// The height (at least 1).
    pub height: u64,
    /// Every key of the replicated stores, as (store, key, value).
    pub entries: Vec<SourceWrite>,
    /// The chain value of each replicated store at `height` (those stores
    /// are created when missing, and with no keys when none is given).
    pub hashes: SourceHashes,
}

/// What to do when a source's block is not the next height.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnGap {
    /// Record the gap and go on with the block (the default).
    #[default]
    Continue,
    /// Record the gap and refuse the block ([`Error::SourceGap`]).
    Halt,
}

/// What [`Ingest::commit`] did with a block.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ingested {
    /// Committed and handed to the streamers.
    Committed(CommitInfo),
    /// The replica already has this height (the source replays after a
    /// restart): nothing was committed or delivered.
    Replayed {
        /// The height given.
        height: u64,
        /// The replica's height.
        committed: u64,
    },
}

/// The pipeline's counters, readable from any thread.
#[derive(Debug, Default)]
pub struct IngestStatus {
    height: AtomicU64,
    gaps: AtomicU64,
    replays: AtomicU64,
    starts: AtomicU64,
    last_gap: Mutex<Option<(u64, u64)>>,
    /// The gaps the replica store holds (continued past), loaded when the
    /// pipeline starts and kept up to date with it.
    recorded: Mutex<Vec<(u64, u64)>>,
}

impl IngestStatus {
    /// The replica's height (the source's last committed height).
    pub fn height(&self) -> u64 {
        self.height.load(Ordering::Acquire)
    }

    /// Height gaps seen since the pipeline started (refused ones included).
    pub fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::Relaxed)
    }

    /// Blocks given again and answered without committing.
    pub fn replays(&self) -> u64 {
        self.replays.load(Ordering::Relaxed)
    }

    /// How many times the streamers were started: a new
    /// [`Ingest::observer`] each time.
    pub fn streamer_starts(&self) -> u64 {
        self.starts.load(Ordering::Acquire)
    }

    /// The last gap seen: (first missing, last missing) heights.
    pub fn last_gap(&self) -> Option<(u64, u64)> {
        self.last_gap.lock().ok().and_then(|g| *g)
    }

    /// Every gap the replica holds (the ones continued past, since the
    /// replica was created; not the refused ones), as (first missing, last
    /// missing) heights in height order: heights the replica will never
    /// have unless they are filled from another source.
    pub fn recorded_gaps(&self) -> Vec<(u64, u64)> {
        self.recorded.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// These counters as a section of the status ([`IngestReport`], under
    /// [`INGEST_SECTION`]; the `statestream_ingest_*` metrics are read
    /// from it).
    pub fn section(self: &Arc<Self>) -> StatusSection {
        let status = Arc::clone(self);
        StatusSection::new(Arc::new(move || {
            serde_json::to_value(IngestReport::of(&status)).unwrap_or(serde_json::Value::Null)
        }))
    }
}

/// Starts the delivery manager on the replica's current stores; called
/// again when the set of stores changes.
pub type StartManager = Box<dyn FnMut(&mut MultiStore) -> Result<DeliveryManager> + Send>;

/// Starts the streamers with `start`, their observer with `sections`.
fn started(
    start: &mut StartManager,
    store: &mut MultiStore,
    status: &IngestStatus,
    sections: &[(String, StatusSection)],
) -> Result<DeliveryManager> {
    let manager = start(store)?;
    let observer = manager.observer();
    for (name, section) in sections {
        observer.add_status_section(name, section.clone());
    }
    status.starts.fetch_add(1, Ordering::AcqRel);
    Ok(manager)
}

/// The ingest pipeline over one replica store.
pub struct Ingest {
    store: MultiStore,
    manager: Option<DeliveryManager>,
    start: StartManager,
    on_gap: OnGap,
    status: Arc<IngestStatus>,
    /// The sections every manager's observer gets: the pipeline's own,
    /// then those of [`add_status_section`](Ingest::add_status_section).
    sections: Vec<(String, StatusSection)>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("store", &self.store)
            .field("on_gap", &self.on_gap)
            .finish_non_exhaustive()
    }
}

impl Ingest {
    /// A pipeline committing into `store`. The streamers are started with
    /// `start` now when the store already has stores, else with the first
    /// block.
    pub fn new(mut store: MultiStore, mut start: StartManager, on_gap: OnGap) -> Result<Ingest> {
        let status = Arc::new(IngestStatus::default());
        status.height.store(store.version(), Ordering::Release);
        if let Ok(mut recorded) = status.recorded.lock() {
            *recorded = store.gaps()?;
        }
        let sections = vec![(INGEST_SECTION.to_owned(), status.section())];
        let manager = if store.stores().is_empty() {
            None
        } else {
            Some(started(&mut start, &mut store, &status, &sections)?)
        };
        Ok(Ingest {
            store,
            manager,
            start,
            on_gap,
            status,
            sections,
        })
    }

    /// Starts the streamers on the current stores.
    fn start_streamers(&mut self) -> Result<()> {
        self.manager = Some(started(
            &mut self.start,
            &mut self.store,
            &self.status,
            &self.sections,
        )?);
        Ok(())
    }

    /// Adds (or replaces) a section of the status on the running
    /// streamers' observer and on each one they are started again with
    /// (a relay's own status).
    pub fn add_status_section(&mut self, name: &str, section: StatusSection) {
        if let Some(m) = &self.manager {
            m.observer().add_status_section(name, section.clone());
        }
        self.sections.retain(|(n, _)| n != name);
        self.sections.push((name.to_owned(), section));
    }

    /// The pipeline's counters.
    pub fn status(&self) -> Arc<IngestStatus> {
        Arc::clone(&self.status)
    }

    /// The running manager's observer (`None` before the first store is
    /// known), with the pipeline's counters and recorded gaps
    /// ([`NodeStatus::ingest`](crate::NodeStatus::ingest)) and the
    /// sections added with [`add_status_section`](Ingest::add_status_section).
    /// A new one after each restart of the streamers
    /// ([`IngestStatus::streamer_starts`]).
    pub fn observer(&self) -> Option<Observer> {
        self.manager.as_ref().map(DeliveryManager::observer)
    }

    /// The replica store.
    pub fn store(&self) -> &MultiStore {
        &self.store
    }

    /// Commits `block` into the replica and delivers it; see the module
    /// documentation. When this returns `Ok`, the block is in the store.
    pub fn commit(&mut self, block: SourceBlock) -> Result<Ingested> {
        self.commit_inner(block, None)
    }

    /// [`commit`](Ingest::commit), once the block's writes give every
    /// store of the replica the chain value `expected` says (and the app
    /// hash, when it says one): checked before anything is committed or
    /// delivered. A mismatch is [`Error::BlockDiverged`] naming the first
    /// store that differs (in name order); the block's writes are dropped
    /// and the replica stays at the height before.
    pub fn commit_checked(
        &mut self,
        block: SourceBlock,
        expected: &SourceHashes,
    ) -> Result<Ingested> {
        self.commit_inner(block, Some(expected))
    }

    /// Replaces the replica's state by a source's snapshot at its height:
    /// its stores added when missing, the streamers stopped and started
    /// again on it (their cursors move to the snapshot's height, see
    /// [`MultiStore::restore_snapshot`]); the next block is
    /// `snapshot.height + 1`, chained from the snapshot's hashes. Returns
    /// the heights the replica never had (from its next one up to the
    /// snapshot's), when it had committed before.
    pub fn restore(&mut self, snapshot: SourceSnapshot) -> Result<Option<(u64, u64)>> {
        let height = snapshot.height;
        let bad = |reason: String| Error::BadSnapshot { height, reason };
        if height <= self.store.version() {
            return Err(bad(format!(
                "the replica is at height {} already",
                self.store.version()
            )));
        }
        let mut hashes = Vec::with_capacity(snapshot.hashes.stores.len());
        for (name, h) in &snapshot.hashes.stores {
            let key = StoreKey::new(name).map_err(|e| bad(format!("store name {name:?}: {e}")))?;
            hashes.push((key, *h));
        }
        for w in &snapshot.entries {
            if !hashes.iter().any(|(k, _)| k.name() == w.store) {
                return Err(bad(format!(
                    "a key of store {} but no hash for that store",
                    w.store
                )));
            }
            if w.key.is_empty() {
                return Err(bad(format!("an empty key in store {}", w.store)));
            }
        }
        let keys: Vec<StoreKey> = hashes.iter().map(|(k, _)| k.clone()).collect();
        if let Some(extra) = self.store.stores().iter().find(|s| !keys.contains(s)) {
            return Err(bad(format!(
                "no hash for store {extra}, which the replica holds"
            )));
        }
        self.stop_streamers()?;
        self.store.add_stores(&keys)?;
        for w in snapshot.entries {
            let key = StoreKey::new(&w.store)?;
            self.store.write_owned(&key, w.key, w.value)?;
        }
        let gap = match self.store.restore_snapshot(height, &hashes) {
            Ok(gap) => gap,
            Err(e) => {
                self.store.discard_pending();
                return Err(e.into());
            }
        };
        if let Some((first, last)) = gap {
            self.status.gaps.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut g) = self.status.last_gap.lock() {
                *g = Some((first, last));
            }
        }
        self.status.height.store(height, Ordering::Release);
        if !self.store.stores().is_empty() {
            self.start_streamers()?;
        }
        info!(
            height,
            stores = keys.len(),
            ?gap,
            "replica restored from a snapshot"
        );
        Ok(gap)
    }

    /// Checks the pending writes against `expected` (see
    /// [`commit_checked`](Ingest::commit_checked)).
    fn check_hashes(store: &MultiStore, height: u64, expected: &SourceHashes) -> Result<()> {
        let pending = store.pending_hashes();
        for (store, computed) in &pending {
            let Some((_, want)) = expected.stores.iter().find(|(n, _)| n == store.name()) else {
                return Err(Error::BlockDiverged {
                    height,
                    store: store.name().to_owned(),
                    expected: "none (the source sent no hash for the store)".into(),
                    computed: to_hex(computed),
                });
            };
            if want != computed {
                return Err(Error::BlockDiverged {
                    height,
                    store: store.name().to_owned(),
                    expected: to_hex(want),
                    computed: to_hex(computed),
                });
            }
        }
        if let Some(want) = &expected.app_hash {
            let computed = statestream_core::app_hash(pending.iter().map(|(s, h)| (s.name(), h)));
            if &computed != want {
                return Err(Error::BlockDiverged {
                    height,
                    store: "*app_hash*".into(),
                    expected: to_hex(want),
                    computed: to_hex(&computed),
                });
            }
        }
        Ok(())
    }

    fn commit_inner(
        &mut self,
        block: SourceBlock,
        expected: Option<&SourceHashes>,
    ) -> Result<Ingested> {
        let height = block.height;
        let committed = self.store.version();
        if height == 0 {
            return Err(Error::BadSourceBlock {
                height,
                reason: "height 0 (a source's heights start at 1)".into(),
            });
        }
        if height <= committed {
            self.check_replay(&block)?;
            self.status.replays.fetch_add(1, Ordering::Relaxed);
            info!(
                height,
                committed, "block delivered again: already committed, nothing to do"
            );
            return Ok(Ingested::Replayed { height, committed });
        }
        // Everything is checked before the first write: a refused block
        // must leave nothing pending in the store.
        let mut new_stores = Vec::new();
        for w in &block.writes {
            let key = StoreKey::new(&w.store).map_err(|e| Error::BadSourceBlock {
                height,
                reason: format!("store name {:?}: {e}", w.store),
            })?;
            if w.key.is_empty() {
                return Err(Error::BadSourceBlock {
                    height,
                    reason: format!("an empty key in store {}", w.store),
                });
            }
            if self.store.check_store(&key).is_err() && !new_stores.contains(&key) {
                new_stores.push(key);
            }
        }
        let gap = (height > committed + 1 && committed != 0).then_some((committed + 1, height - 1));
        if let Some((first, last)) = gap {
            self.status.gaps.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut g) = self.status.last_gap.lock() {
                *g = Some((first, last));
            }
            if self.on_gap == OnGap::Halt {
                warn!(
                    height,
                    first_missing = first,
                    last_missing = last,
                    "height gap: the source skipped blocks; refusing the block (on_gap = \"halt\")"
                );
                return Err(Error::SourceGap {
                    height,
                    first_missing: first,
                    last_missing: last,
                });
            }
            warn!(
                height,
                first_missing = first,
                last_missing = last,
                "height gap: the source skipped blocks; recorded, going on (on_gap = \"continue\")"
            );
        }
        if !new_stores.is_empty() || height > committed + 1 {
            self.stop_streamers()?;
            if !new_stores.is_empty() {
                info!(
                    height,
                    stores = ?new_stores.iter().map(StoreKey::name).collect::<Vec<_>>(),
                    "new stores: their hash chains start at this height"
                );
                self.store.add_stores(&new_stores)?;
            }
            if height > committed + 1
                && let Some(gap) = self.store.continue_at(height)?
                && let Ok(mut recorded) = self.status.recorded.lock()
            {
                recorded.push(gap);
            }
        }
        if self.manager.is_none() && !self.store.stores().is_empty() {
            self.start_streamers()?;
        }
        let Some(manager) = self.manager.as_mut() else {
            // No store yet and none written: nothing to stream, and no
            // streamer can start on no store. The height is committed (the
            // replica is at the source's height); the streamers start with
            // the first block that writes.
            let changes = self.store.commit_block(
                statestream_store::CommitInput::new().app_meta(block.meta.encode_app_meta()),
            )?;
            let info = changes.commit_info();
            self.status.height.store(info.version, Ordering::Release);
            return Ok(Ingested::Committed(info));
        };
        for w in block.writes {
            let key = StoreKey::new(&w.store)?;
            self.store.write_owned(&key, w.key, w.value)?;
        }
        if let Some(expected) = expected
            && let Err(e) = Ingest::check_hashes(&self.store, height, expected)
        {
            self.store.discard_pending();
            return Err(e);
        }
        let info = manager.commit(&mut self.store, block.meta)?;
        self.status.height.store(info.version, Ordering::Release);
        Ok(Ingested::Committed(info))
    }

    /// A replayed block whose source app hash differs from the one kept
    /// for that height is a divergence, never a silent OK. Checked while
    /// the change log keeps the height (always the last committed one; older
    /// ones until every streamer has them).
    fn check_replay(&self, block: &SourceBlock) -> Result<()> {
        let Ok(kept) = self.store.change_log().read(block.height) else {
            // Pruned or in a gap: nothing to compare with.
            return Ok(());
        };
        let meta = BlockMeta::decode_app_meta(block.height, kept.app_meta())?;
        if !block.meta.source_app_hash.is_empty()
            && !meta.source_app_hash.is_empty()
            && meta.source_app_hash != block.meta.source_app_hash
        {
            return Err(Error::SourceDiverged {
                height: block.height,
                kept: statestream_core::to_hex(&meta.source_app_hash),
                given: statestream_core::to_hex(&block.meta.source_app_hash),
            });
        }
        Ok(())
    }

    fn stop_streamers(&mut self) -> Result<()> {
        if let Some(manager) = self.manager.take() {
            manager.close(&mut self.store)?;
        }
        Ok(())
    }

    /// Closes the streamers (flushing them) and the store.
    pub fn close(mut self) -> Result<()> {
        let closed = self.stop_streamers();
        let store_closed = self.store.close();
        closed?;
        Ok(store_closed?)
    }
}
