//! Commit, close and reopen on disk; the change log; cursors; pruning.

use std::path::Path;

use statestream_core::{ZERO_HASH, app_hash, chain_store_hash};
use statestream_store::{ChangeSet, CommitInput, Error, KvStore, MultiStore, Order, StoreOptions};

use crate::util::{collect, key, keys, rec, records};

const STORES: [&str; 3] = ["bank", "acc", "gov"];

fn open(path: &Path, options: StoreOptions) -> MultiStore {
    MultiStore::open(path, &keys(&STORES), options).expect("open")
}

/// Commits `blocks` blocks of a few writes each, with metadata; returns
/// the change sets.
fn commit_blocks(store: &mut MultiStore, blocks: u64) -> Vec<ChangeSet> {
    let (acc, bank, gov) = (key("acc"), key("bank"), key("gov"));
    let mut out = Vec::new();
    for _ in 0..blocks {
        let h = store.version() + 1;
        let b = h.to_be_bytes();
        {
            let mut tx = store.cache();
            tx.set(&bank, &b, format!("bank-{h}").as_bytes())
                .expect("set");
            tx.set(&acc, b"counter", &b).expect("set");
            if h > 1 {
                tx.delete(&bank, &(h - 1).to_be_bytes()).expect("delete");
            }
            if h.is_multiple_of(3) {
                tx.set(&gov, b"third", &b).expect("set");
            }
            tx.write().expect("write");
        }
        let meta = format!("meta of block {h}").into_bytes();
        let cs = store
            .commit_block(CommitInput::new().app_meta(meta.clone()))
            .expect("commit");
        assert_eq!(cs.app_meta(), meta.as_slice());
        out.push((*cs).clone());
    }
    out
}

/// Every store's pairs, by store name.
type State = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>)>;

fn state(store: &MultiStore) -> State {
    store
        .stores()
        .iter()
        .map(|s| {
            (
                s.name().to_string(),
                collect(store.iter(s, Order::Ascending).expect("iter")),
            )
        })
        .collect()
}

#[test]
fn persist_commit_and_reopen_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let mut store = open(&path, StoreOptions::default());
    let committed = commit_blocks(&mut store, 5);
    // Uncommitted writes are not persisted.
    store.set(&key("gov"), b"pending", b"x").expect("set");
    let info = store.last_commit();
    let hashes: Vec<_> = store
        .stores()
        .iter()
        .map(|s| store.store_hash(s).expect("hash"))
        .collect();
    store.delete(&key("gov"), b"pending").expect("delete");
    let before = state(&store);
    drop(store);

    let mut store = open(&path, StoreOptions::default());
    assert_eq!(store.version(), 5);
    assert_eq!(store.last_commit(), info);
    let reopened: Vec<_> = store
        .stores()
        .iter()
        .map(|s| store.store_hash(s).expect("hash"))
        .collect();
    assert_eq!(reopened, hashes);
    assert_eq!(state(&store), before);
    assert_eq!(store.get(&key("gov"), b"pending").expect("get"), None);
    assert_eq!(
        store.get(&key("bank"), &5u64.to_be_bytes()).expect("get"),
        Some(b"bank-5".to_vec())
    );
    let log = store.change_log();
    assert_eq!(log.bounds().expect("bounds"), Some((1, 5)));
    for cs in &committed {
        let logged = log.read(cs.height()).expect("read");
        assert_eq!(&logged, cs);
        assert_eq!(
            logged.app_meta(),
            format!("meta of block {}", cs.height()).as_bytes()
        );
    }

    // The chain continues where it left off: same hashes as a store that
    // never closed.
    let mut memory = MultiStore::in_memory(&keys(&STORES)).expect("open");
    let mut expected = commit_blocks(&mut memory, 7);
    let more = commit_blocks(&mut store, 2);
    assert_eq!(more, expected.split_off(5));
}

#[test]
fn persist_no_fsync_round_trips_after_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let options = StoreOptions {
        fsync: false,
        ..StoreOptions::default()
    };
    let mut store = open(&path, options.clone());
    // Crosses the periodic durable commit (every 128 blocks).
    let committed = commit_blocks(&mut store, 130);
    let info = store.last_commit();
    let before = state(&store);
    store.close().expect("close");

    let store = open(&path, options);
    assert_eq!(store.version(), 130);
    assert_eq!(store.last_commit(), info);
    assert_eq!(state(&store), before);
    let log = store.change_log();
    assert_eq!(log.len().expect("len"), 130);
    for cs in &committed {
        assert_eq!(&log.read(cs.height()).expect("read"), cs);
    }
}

#[test]
fn persist_reopen_with_other_store_set_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let mut store = open(&path, StoreOptions::default());
    commit_blocks(&mut store, 1);
    drop(store);
    for other in [
        &["bank", "acc"][..],
        &["bank", "acc", "gov", "extra"],
        &["bank", "acc", "gov2"],
    ] {
        let err = MultiStore::open(&path, &keys(other), StoreOptions::default())
            .expect_err("other store set");
        assert!(matches!(err, Error::StoreSetMismatch { .. }), "{err}");
    }
    // The same set in another order is the same set.
    let store = MultiStore::open(
        &path,
        &keys(&["gov", "bank", "acc"]),
        StoreOptions::default(),
    )
    .expect("same set");
    assert_eq!(store.version(), 1);
}

#[test]
fn persist_empty_block_commits_and_versions_start_at_one() {
    let mut store = MultiStore::in_memory(&keys(&STORES)).expect("open");
    assert_eq!(store.version(), 0);
    assert_eq!(store.last_commit().version, 0);
    assert_eq!(store.last_commit().app_hash, ZERO_HASH);
    assert!(store.change_log().is_empty().expect("is_empty"));
    let cs = store.commit_block(CommitInput::new()).expect("commit");
    assert_eq!(cs.height(), 1);
    assert!(cs.is_empty());
    assert_eq!(cs.stores().len(), 3);
    // An empty block still advances every chain.
    let h = chain_store_hash(&ZERO_HASH, &[]);
    assert!(cs.stores().iter().all(|s| *s.hash() == h));
    let names = ["acc", "bank", "gov"];
    let want = app_hash(names.iter().map(|n| (*n, &h)));
    assert_eq!(cs.commit_info().app_hash, want);
    let second = store.commit().expect("commit");
    assert_eq!(second.version, 2);
    assert_ne!(second.app_hash, want);
    assert_eq!(store.change_log().bounds().expect("bounds"), Some((1, 2)));
}

#[test]
fn persist_prune_removes_exactly_the_entries_below() {
    let mut store = MultiStore::in_memory(&keys(&STORES)).expect("open");
    let committed = commit_blocks(&mut store, 10);
    let log = store.change_log();
    assert_eq!(store.prune_change_log(4).expect("prune"), 3);
    assert_eq!(log.bounds().expect("bounds"), Some((4, 10)));
    for h in 1..4 {
        assert_eq!(log.get(h).expect("get"), None);
        let err = log.read(h).expect_err("pruned");
        assert!(
            matches!(err, Error::NotInChangeLog { height, .. } if height == h),
            "{err}"
        );
    }
    for cs in &committed[3..] {
        assert_eq!(&log.read(cs.height()).expect("read"), cs);
    }
    // Pruning again below the same height removes nothing.
    assert_eq!(store.prune_change_log(4).expect("prune"), 0);
    // Pruning within a commit, in the same transaction.
    let cs = store
        .commit_block(CommitInput::new().prune_below(7))
        .expect("commit");
    assert_eq!(cs.height(), 11);
    assert_eq!(log.bounds().expect("bounds"), Some((7, 11)));
    assert_eq!(log.len().expect("len"), 5);
    assert_eq!(&log.read(7).expect("read"), &committed[6]);
    assert_eq!(log.get(6).expect("get"), None);
    // The state is untouched by pruning.
    assert_eq!(
        store.get(&key("acc"), b"counter").expect("get"),
        Some(10u64.to_be_bytes().to_vec())
    );
}

#[test]
fn persist_cursors_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let mut store = open(&path, StoreOptions::default());
    assert_eq!(store.cursor("file").expect("cursor"), None);
    assert!(store.cursors().expect("cursors").is_empty());
    store
        .commit_block(CommitInput::new().cursor("file", 1).cursor("kafka", 0))
        .expect("commit");
    store
        .commit_block(CommitInput::new().cursor("file", 2))
        .expect("commit");
    store
        .save_cursors(&[("kafka", 2), ("grpc", 1)])
        .expect("save");
    assert_eq!(store.cursor("file").expect("cursor"), Some(2));
    drop(store);

    let store = open(&path, StoreOptions::default());
    assert_eq!(store.cursor("file").expect("cursor"), Some(2));
    assert_eq!(store.cursor("kafka").expect("cursor"), Some(2));
    assert_eq!(store.cursor("missing").expect("cursor"), None);
    assert_eq!(
        store.cursors().expect("cursors"),
        vec![
            ("file".to_string(), 2),
            ("grpc".to_string(), 1),
            ("kafka".to_string(), 2)
        ]
    );
}

#[test]
fn persist_garbage_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("garbage.redb");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let garbage: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 56) as u8
        })
        .collect();
    std::fs::write(&path, &garbage).expect("write garbage");
    let err =
        MultiStore::open(&path, &keys(&STORES), StoreOptions::default()).expect_err("garbage file");
    assert!(
        matches!(err, Error::Engine { .. } | Error::Corrupt { .. }),
        "{err}"
    );
}

#[test]
fn persist_overwritten_header_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let mut store = open(&path, StoreOptions::default());
    commit_blocks(&mut store, 3);
    drop(store);
    let mut bytes = std::fs::read(&path).expect("read");
    for b in bytes.iter_mut().take(512) {
        *b = 0xa5;
    }
    std::fs::write(&path, &bytes).expect("write");
    let err = MultiStore::open(&path, &keys(&STORES), StoreOptions::default())
        .expect_err("corrupt header");
    assert!(
        matches!(err, Error::Engine { .. } | Error::Corrupt { .. }),
        "{err}"
    );
}

/// redb trusts a cleanly closed file: a flipped page can make it panic.
/// With `verify_on_open` every page checksum is checked first, so no flip
/// gets past `open` to panic there: each either opens (a byte nothing reads)
/// or is an error.
#[test]
fn persist_verify_on_open_turns_damage_into_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let mut store = open(&path, StoreOptions::default());
    commit_blocks(&mut store, 20);
    store.close().expect("close");
    let good = std::fs::read(&path).expect("read");
    let verify = StoreOptions {
        verify_on_open: true,
        ..StoreOptions::default()
    };
    let (mut errors, mut opened) = (0, 0);
    for offset in (0..good.len()).step_by(97) {
        let mut bytes = good.clone();
        for b in bytes.iter_mut().skip(offset).take(16) {
            *b ^= 0x5a;
        }
        std::fs::write(&path, &bytes).expect("write");
        let result = std::panic::catch_unwind(|| {
            MultiStore::open(&path, &keys(&STORES), verify.clone()).map(|s| {
                // Read everything once: an undetected flip must not panic here.
                let _ = s.change_log().bounds();
            })
        });
        match result {
            Ok(Ok(())) => opened += 1,
            Ok(Err(_)) => errors += 1,
            Err(_) => panic!("redb panicked at open on a flip at {offset} despite verify_on_open"),
        }
    }
    assert!(errors > 0, "no flip was detected ({opened} opened)");
}

#[test]
fn persist_change_log_handle_reads_from_another_thread() {
    let mut store = MultiStore::in_memory(&keys(&STORES)).expect("open");
    let committed = commit_blocks(&mut store, 3);
    let log = store.change_log();
    let read = std::thread::spawn(move || {
        (1..=3)
            .map(|h| log.read(h).map(|cs| records(&cs)))
            .collect::<Result<Vec<_>, _>>()
    })
    .join()
    .expect("thread")
    .expect("read");
    let want: Vec<_> = committed.iter().map(records).collect();
    assert_eq!(read, want);
    assert_eq!(
        read[0][0],
        rec("acc", b"counter", Some(&1u64.to_be_bytes()))
    );
}

#[test]
fn persist_second_open_of_the_same_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let store = open(&path, StoreOptions::default());
    let err =
        MultiStore::open(&path, &keys(&STORES), StoreOptions::default()).expect_err("already open");
    assert!(
        matches!(&err, Error::InUse { path: p } if *p == path),
        "{err}"
    );
    assert!(err.to_string().contains("is the node running?"), "{err}");
    // Nor may a tool open it meanwhile.
    let err = MultiStore::open_existing(&path, StoreOptions::default()).expect_err("in use");
    assert!(matches!(err, Error::InUse { .. }), "{err}");
    drop(store);
    let store = open(&path, StoreOptions::default());
    assert_eq!(store.version(), 0);
}

/// A crash while a new database was being created leaves at most its
/// temporary file, never a file at the store's path that is not a
/// database: the next open removes the leftover and creates the store.
#[test]
fn persist_half_created_database_is_never_at_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let leftover = dir.path().join("state.redb.creating");
    std::fs::write(&leftover, b"half a header").expect("write");
    let mut store = open(&path, StoreOptions::default());
    assert!(!leftover.exists());
    store.set(&key("bank"), b"k", b"v").expect("set");
    assert_eq!(store.commit().expect("commit").version, 1);
    store.close().expect("close");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["state.redb"]);
    assert_eq!(open(&path, StoreOptions::default()).version(), 1);
}

#[test]
fn persist_open_existing_uses_the_recorded_stores_and_deletes_cursors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    // Never creates a database.
    let missing = MultiStore::open_existing(&path, StoreOptions::default());
    assert!(matches!(missing, Err(Error::Engine { .. })), "{missing:?}");
    assert!(!path.exists());

    let mut store = open(&path, StoreOptions::default());
    store.set(&key("acc"), b"k", b"v").expect("set");
    store
        .commit_block(CommitInput::new().cursor("file", 1).cursor("nats", 1))
        .expect("commit");
    let hash = store.last_commit().app_hash;
    store.close().expect("close");

    let mut store = MultiStore::open_existing(&path, StoreOptions::default()).expect("open");
    assert_eq!(store.last_commit().app_hash, hash);
    assert_eq!(
        store.get(&key("acc"), b"k").expect("get"),
        Some(b"v".to_vec())
    );
    assert!(store.delete_cursor("file").expect("delete"));
    assert!(!store.delete_cursor("file").expect("delete again"));
    store.close().expect("close");

    // The deletion is durable, and the other cursor is untouched.
    let store = open(&path, StoreOptions::default());
    assert_eq!(store.cursors().expect("cursors"), [("nats".to_string(), 1)]);
}

#[test]
fn persist_change_log_size_follows_commits_and_pruning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    let mut store = open(&path, StoreOptions::default());
    let log = store.change_log();
    let meter = log.meter();
    assert_eq!((log.size().blocks, log.size().bytes), (0, 0));
    commit_blocks(&mut store, 10);
    let ten = log.size();
    assert_eq!(ten.blocks, 10);
    assert!(ten.bytes > 10 * 32, "{ten:?}");
    store.prune_change_log(4).expect("prune");
    let seven = log.size();
    assert_eq!(seven.blocks, 7);
    assert!(seven.bytes < ten.bytes);
    store
        .commit_block(CommitInput::new().prune_below(7))
        .expect("commit");
    let kept = log.size();
    assert_eq!(kept.blocks, log.len().expect("len"));
    assert_eq!(kept.blocks, 5);
    assert_eq!(meter.size(), kept);
    // The running count is what a fresh count of the entries finds; the
    // meter does not hold the database open.
    drop(log);
    store.close().expect("close");
    let reopened = open(&path, StoreOptions::default());
    assert_eq!(reopened.change_log().size(), kept);
    assert_eq!(meter.size(), kept);
}
