//! The ingest pipeline: source blocks committed into a replica at the
//! source's heights and delivered once each.

use std::sync::{Arc, Mutex};

use statestream::store::{KvStore, MultiStore, StoreOptions};
use statestream::{
    Block, BlockMeta, Delivery, DeliveryManager, Error, Ingest, Ingested, OnGap, SourceBlock,
    SourceWrite, StreamError, Streamer, StreamerSetup,
};

/// One delivered block: height, source app hash, (store, key, value).
type Seen = (u64, Vec<u8>, Vec<(String, Vec<u8>, Option<Vec<u8>>)>);

struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Streamer for Recorder {
    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        let records = block
            .stores()
            .flat_map(|s| {
                s.records()
                    .map(|r| {
                        (
                            r.store.to_string(),
                            r.key.to_vec(),
                            r.value.map(<[u8]>::to_vec),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        self.0.lock().unwrap().push((
            block.height(),
            block.meta().source_app_hash.clone(),
            records,
        ));
        Ok(())
    }
}

fn pipeline(path: &std::path::Path, on_gap: OnGap) -> (Ingest, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = if path.exists() {
        MultiStore::open_existing(path, StoreOptions::default()).unwrap()
    } else {
        MultiStore::open(path, &[], StoreOptions::default()).unwrap()
    };
    let log = Arc::clone(&seen);
    let ingest = Ingest::new(
        store,
        Box::new(move |store: &mut MultiStore| {
            let stores = store.stores().to_vec();
            let setup = StreamerSetup::new("rec", &stores).delivery(Delivery::Sync);
            DeliveryManager::builder()
                .streamer(setup, Box::new(Recorder(Arc::clone(&log))))
                .start(store)
        }),
        on_gap,
    )
    .unwrap();
    (ingest, seen)
}

fn w(store: &str, key: &str, value: Option<&str>) -> SourceWrite {
    SourceWrite {
        store: store.into(),
        key: key.as_bytes().to_vec(),
        value: value.map(|v| v.as_bytes().to_vec()),
    }
}

fn block(height: u64, writes: Vec<SourceWrite>) -> SourceBlock {
    SourceBlock {
        height,
        meta: BlockMeta {
            time_seconds: 1_700_000_000 + height as i64,
            source_app_hash: format!("chain-{height}").into_bytes(),
            ..BlockMeta::default()
        },
        writes,
    }
}

fn rec(store: &str, key: &str, value: Option<&str>) -> (String, Vec<u8>, Option<Vec<u8>>) {
    (
        store.into(),
        key.as_bytes().to_vec(),
        value.map(|v| v.as_bytes().to_vec()),
    )
}

#[test]
fn net_change_in_canonical_order_at_the_sources_heights() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.redb");
    let (mut ingest, seen) = pipeline(&path, OnGap::Continue);
    let first = block(
        1_200_001,
        vec![
            w("bank", "zed", Some("1")),
            w("acc", "bob", Some("a")),
            w("bank", "alice", Some("5")),
            w("bank", "zed", Some("2")),
            w("acc", "tmp", Some("x")),
            w("acc", "tmp", None),
            w("bank", "alice", Some("6")),
        ],
    );
    let got = ingest.commit(first).unwrap();
    assert!(
        matches!(got, Ingested::Committed(ref i) if i.version == 1_200_001),
        "{got:?}"
    );
    // A store first written at the next height starts its chain there.
    ingest
        .commit(block(
            1_200_002,
            vec![w("staking", "val", Some("v")), w("bank", "zed", None)],
        ))
        .unwrap();
    let seen_now = seen.lock().unwrap().clone();
    assert_eq!(
        seen_now,
        vec![
            (
                1_200_001,
                b"chain-1200001".to_vec(),
                vec![
                    rec("acc", "bob", Some("a")),
                    rec("acc", "tmp", None),
                    rec("bank", "alice", Some("6")),
                    rec("bank", "zed", Some("2")),
                ]
            ),
            (
                1_200_002,
                b"chain-1200002".to_vec(),
                vec![rec("bank", "zed", None), rec("staking", "val", Some("v"))]
            ),
        ]
    );
    // Delivered again (the source replays after a restart): OK, nothing
    // downstream.
    let again = ingest
        .commit(block(1_200_002, vec![w("staking", "val", Some("v"))]))
        .unwrap();
    assert!(matches!(
        again,
        Ingested::Replayed {
            height: 1_200_002,
            committed: 1_200_002
        }
    ));
    // The same height with another app hash is a divergence (checked
    // while the change log keeps the height: always the last one).
    let mut other = block(1_200_002, vec![]);
    other.meta.source_app_hash = b"other".to_vec();
    assert!(matches!(
        ingest.commit(other),
        Err(Error::SourceDiverged {
            height: 1_200_002,
            ..
        })
    ));
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(ingest.status().replays(), 1);
    ingest.close().unwrap();

    // Reopened: the replica resumes at the chain's height.
    let (mut ingest, seen) = pipeline(&path, OnGap::Continue);
    assert_eq!(ingest.store().version(), 1_200_002);
    ingest
        .commit(block(1_200_003, vec![w("acc", "bob", Some("b"))]))
        .unwrap();
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(ingest.store().gaps().unwrap(), vec![]);
    ingest.close().unwrap();
}

#[test]
fn a_gap_is_recorded_then_continued_past_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.redb");
    let (mut ingest, seen) = pipeline(&path, OnGap::Halt);
    ingest
        .commit(block(7, vec![w("bank", "a", Some("1"))]))
        .unwrap();
    let refused = ingest.commit(block(10, vec![w("bank", "a", Some("2"))]));
    assert!(
        matches!(
            refused,
            Err(Error::SourceGap {
                height: 10,
                first_missing: 8,
                last_missing: 9
            })
        ),
        "{refused:?}"
    );
    assert_eq!(ingest.store().version(), 7);
    assert_eq!(ingest.status().gaps(), 1);
    assert_eq!(ingest.status().last_gap(), Some((8, 9)));
    // Nothing of the refused block stays pending for the next one.
    ingest
        .commit(block(8, vec![w("bank", "b", Some("1"))]))
        .unwrap();
    ingest.close().unwrap();
    assert_eq!(
        seen.lock().unwrap().iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![7, 8]
    );
    assert_eq!(seen.lock().unwrap()[1].2, vec![rec("bank", "b", Some("1"))]);

    let (mut ingest, seen) = pipeline(&path, OnGap::Continue);
    ingest
        .commit(block(12, vec![w("bank", "a", Some("3"))]))
        .unwrap();
    ingest
        .commit(block(13, vec![w("acc", "x", Some("3"))]))
        .unwrap();
    assert_eq!(ingest.store().gaps().unwrap(), vec![(9, 11)]);
    assert_eq!(ingest.status().gaps(), 1);
    assert_eq!(ingest.status().recorded_gaps(), vec![(9, 11)]);
    assert_eq!(
        seen.lock().unwrap().iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![12, 13]
    );
    ingest.close().unwrap();

    // The recorded gaps outlive the pipeline: a new one shows them on its
    // observer's status (`/status`), with its own counters from zero.
    let (mut ingest, _) = pipeline(&path, OnGap::Continue);
    ingest
        .commit(block(15, vec![w("bank", "a", Some("4"))]))
        .unwrap();
    let status = ingest.observer().unwrap().status();
    let report = status.ingest().expect("the pipeline's section");
    assert_eq!(report.height, 15);
    assert_eq!(
        report
            .gaps
            .iter()
            .map(|g| (g.first_missing, g.last_missing))
            .collect::<Vec<_>>(),
        vec![(9, 11), (14, 14)]
    );
    assert_eq!(report.gaps_total, 1);
    assert_eq!(
        report.last_gap.map(|g| (g.first_missing, g.last_missing)),
        Some((14, 14))
    );
    ingest.close().unwrap();
}

#[test]
fn empty_blocks_before_the_first_store_are_committed_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ingest, seen) = pipeline(&dir.path().join("r.redb"), OnGap::Continue);
    ingest.commit(block(40, vec![])).unwrap();
    ingest.commit(block(41, vec![])).unwrap();
    assert_eq!(ingest.store().version(), 41);
    ingest
        .commit(block(42, vec![w("bank", "a", Some("1"))]))
        .unwrap();
    ingest.commit(block(43, vec![])).unwrap();
    assert_eq!(ingest.store().gaps().unwrap(), vec![]);
    assert_eq!(
        seen.lock().unwrap().iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![42, 43]
    );
    ingest.close().unwrap();
}

#[test]
fn a_bad_block_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ingest, seen) = pipeline(&dir.path().join("r.redb"), OnGap::Continue);
    ingest
        .commit(block(1, vec![w("bank", "a", Some("1"))]))
        .unwrap();
    let bad = ingest.commit(block(
        2,
        vec![w("bank", "b", Some("1")), w("bank", "", Some("x"))],
    ));
    assert!(
        matches!(bad, Err(Error::BadSourceBlock { height: 2, .. })),
        "{bad:?}"
    );
    let bad = ingest.commit(block(
        2,
        vec![w("bank", "b", Some("1")), w("no/slash", "k", None)],
    ));
    assert!(
        matches!(bad, Err(Error::BadSourceBlock { height: 2, .. })),
        "{bad:?}"
    );
    ingest
        .commit(block(2, vec![w("bank", "c", Some("1"))]))
        .unwrap();
    assert_eq!(seen.lock().unwrap()[1].2, vec![rec("bank", "c", Some("1"))]);
    ingest.close().unwrap();
}

/// A replica restored from a source's snapshot and fed checked blocks: a
/// block whose writes give the source's chain values commits; one that
/// does not is refused before anything commits or is delivered, naming
/// the store.
#[test]
fn restore_then_checked_blocks_commit_only_when_they_give_the_sources_hashes() {
    use statestream::{SourceHashes, SourceSnapshot};
    let dir = tempfile::tempdir().unwrap();
    // The source: a pipeline of its own, three blocks.
    let (mut source, _) = pipeline(&dir.path().join("source.redb"), OnGap::Continue);
    source
        .commit(block(
            1,
            vec![w("bank", "a", Some("1")), w("acc", "x", Some("1"))],
        ))
        .unwrap();
    source
        .commit(block(2, vec![w("bank", "b", Some("2"))]))
        .unwrap();
    let hashes = |i: &Ingest| SourceHashes {
        stores: i
            .store()
            .stores()
            .iter()
            .map(|s| (s.name().to_owned(), i.store().store_hash(s).unwrap()))
            .collect(),
        app_hash: Some(i.store().last_commit().app_hash),
    };
    let at_2 = hashes(&source);
    source
        .commit(block(
            3,
            vec![w("bank", "a", None), w("acc", "y", Some("3"))],
        ))
        .unwrap();
    let at_3 = hashes(&source);

    let (mut replica, seen) = pipeline(&dir.path().join("replica.redb"), OnGap::Halt);
    replica
        .restore(SourceSnapshot {
            height: 2,
            entries: vec![
                w("acc", "x", Some("1")),
                w("bank", "a", Some("1")),
                w("bank", "b", Some("2")),
            ],
            hashes: at_2,
        })
        .unwrap();
    assert_eq!(replica.store().version(), 2);
    // Block 3 with one write left out: refused, naming the store.
    let err = replica
        .commit_checked(block(3, vec![w("bank", "a", None)]), &at_3)
        .unwrap_err();
    assert!(
        matches!(&err, Error::BlockDiverged { height: 3, store, .. } if store == "acc"),
        "{err}"
    );
    assert_eq!(replica.store().version(), 2, "nothing committed");
    assert!(seen.lock().unwrap().is_empty(), "nothing delivered");
    // The whole block 3: committed, equal to the source's.
    let done = replica
        .commit_checked(
            block(3, vec![w("bank", "a", None), w("acc", "y", Some("3"))]),
            &at_3,
        )
        .unwrap();
    assert!(matches!(done, Ingested::Committed(info) if info == source.store().last_commit()));
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(
        replica.store().get(&"acc".parse().unwrap(), b"y").unwrap(),
        Some(b"3".to_vec())
    );
}
