//! The reader over the golden fixtures (good, truncated, corrupt) and over
//! freshly written directories.

use std::fs;

use statestream_core::Record;
use statestream_file::{BlockDir, Error, ReadOptions};

use crate::fixtures::{fixture, record_offsets};
use crate::util::{blocks, names, records_json, write_blocks};

/// Store, key, value of a record.
type Summary<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

fn open(case: &str) -> BlockDir {
    BlockDir::open(&fixture(case), "", ReadOptions::default()).unwrap()
}

fn both_modes() -> [ReadOptions; 2] {
    [ReadOptions::default(), ReadOptions::default().mmap(true)]
}

#[test]
fn reader_good_fixtures() {
    for options in both_modes() {
        let mapped = format!("{options:?}");
        let bd = BlockDir::open(&fixture("good"), "", options).unwrap();
        assert_eq!(bd.heights().unwrap(), [1, 2, 3]);

        let b1 = bd.open_block(1).unwrap();
        assert_eq!(b1.height(), 1);
        assert!(b1.data_path().ends_with("good/block-1-data"));
        let records: Vec<Record<'_>> = b1.records().collect::<Result<_, _>>().unwrap();
        let summary: Vec<Summary<'_>> = records.iter().map(|r| (r.store, r.key, r.value)).collect();
        assert_eq!(
            summary,
            [
                ("acc", &b"key-00"[..], Some(&b"acc-1-0"[..])),
                ("acc", b"key-01", Some(b"acc-1-1")),
                ("bank", b"key-00", Some(b"bank-1-0")),
                ("bank", b"key-01", Some(b"bank-1-1")),
                ("bank", b"key-02", Some(b"bank-1-2")),
                ("gov", b"key-00", Some(b"gov-1-0")),
                ("gov", b"key-01", Some(b"gov-1-1")),
                ("gov", b"key-02", Some(b"gov-1-2")),
                ("gov", b"key-03", Some(b"gov-1-3")),
            ],
            "{mapped}"
        );
        let meta = b1.meta().unwrap();
        assert_eq!(meta.height, 1);
        assert_eq!(meta.time_seconds, 1_700_000_001);
        assert_eq!(meta.streamed_stores, ["acc", "bank", "gov"]);
        assert_eq!(meta.data_length, b1.payload().len() as u64);
        assert_eq!(meta.commit.as_ref().unwrap().version, 1);

        // Block 2 deletes key-00 of every store.
        let b2 = bd.open_block(2).unwrap();
        let deletes: Vec<_> = b2
            .records()
            .map(|r| r.unwrap())
            .filter(|r| r.is_delete())
            .map(|r| (r.store, r.key))
            .collect();
        assert_eq!(
            deletes,
            [
                ("acc", &b"key-00"[..]),
                ("bank", b"key-00"),
                ("gov", b"key-00")
            ]
        );

        // Block 3 has no records.
        let b3 = bd.open_block(3).unwrap();
        assert!(b3.payload().is_empty());
        assert_eq!(b3.records().count(), 0);
        assert_eq!(b3.store_segments().unwrap(), []);
    }
}

#[test]
fn reader_mmap_and_reads_agree() {
    let plain = records_json(&fixture("good"), "", ReadOptions::default());
    let mapped = records_json(&fixture("good"), "", ReadOptions::default().mmap(true));
    assert_eq!(plain.len(), 9 + 9);
    assert_eq!(plain, mapped);
    let bd = BlockDir::open(&fixture("good"), "", ReadOptions::default().mmap(true)).unwrap();
    assert!(bd.open_block(1).unwrap().is_mapped());
    assert!(!open("good").open_block(1).unwrap().is_mapped());
}

#[test]
fn reader_store_segments_cover_each_store() {
    let bs = blocks(2);
    let bd = open("good");
    for b in &bs {
        let file = bd.open_block(b.height()).unwrap();
        let segs = file.store_segments().unwrap();
        let expected: Vec<(String, Vec<u8>)> = b
            .stores()
            .map(|s| (s.store().name().to_string(), s.encoded().to_vec()))
            .collect();
        let got: Vec<(String, Vec<u8>)> = segs
            .iter()
            .map(|(s, r)| (s.clone(), file.payload()[r.clone()].to_vec()))
            .collect();
        assert_eq!(got, expected);
        // Store hashes can be recomputed from the segments.
        let meta = file.meta().unwrap();
        assert_eq!(meta.store_hashes.len(), 3);
    }
}

#[test]
fn reader_truncated_header() {
    for options in both_modes() {
        let bd = BlockDir::open(&fixture("truncated-header"), "", options).unwrap();
        let err = bd.open_block(1).unwrap_err();
        assert!(
            matches!(
                err,
                Error::TruncatedHeader {
                    height: 1,
                    size: 5,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("truncated-header/block-1-data") && msg.contains("offset 0"),
            "{msg}"
        );
    }
}

#[test]
fn reader_truncated_payload() {
    let good_len = fs::read(fixture("good/block-1-data")).unwrap().len() as u64 - 8;
    let err = open("truncated-payload").open_block(1).unwrap_err();
    assert!(
        matches!(err, Error::HeaderLength { height: 1, expected, actual, .. }
            if expected == good_len && actual == good_len - 3),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("truncated-payload/block-1-data")
            && msg.contains("length mismatch")
            && msg.contains(&format!("{good_len} payload bytes"))
            && msg.contains(&format!("holds {}", good_len - 3)),
        "{msg}"
    );
}

#[test]
fn reader_bad_crc() {
    let err = open("bad-crc").open_block(1).unwrap_err();
    assert!(matches!(err, Error::Crc { height: 1, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("bad-crc/block-1-data") && msg.contains("crc mismatch"),
        "{msg}"
    );
}

#[test]
fn reader_bad_varint_in_the_middle() {
    let good = fs::read(fixture("good/block-1-data")).unwrap();
    let second = 8 + record_offsets(&good[8..])[1] as u64;
    for options in both_modes() {
        let bd = BlockDir::open(&fixture("bad-varint"), "", options).unwrap();
        let file = bd.open_block(1).unwrap();
        let mut records = file.records();
        let first = records.next().unwrap().unwrap();
        assert_eq!((first.store, first.key), ("acc", &b"key-00"[..]));
        assert_eq!(records.offset(), second);
        let err = records.next().unwrap().unwrap_err();
        assert!(
            matches!(err, Error::BadRecord { height: 1, offset, .. } if offset == second),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("bad-varint/block-1-data") && msg.contains(&format!("offset {second}")),
            "{msg}"
        );
        assert!(records.next().is_none(), "iteration ends after an error");
        let err = file.store_segments().unwrap_err();
        assert!(
            matches!(err, Error::BadRecord { offset, .. } if offset == second),
            "{err:?}"
        );
    }
}

#[test]
fn reader_bad_meta() {
    let err = open("bad-meta").open_block(1).unwrap_err();
    assert!(matches!(err, Error::BadMeta { height: 1, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("bad-meta/block-1-meta") && msg.contains("does not decode"),
        "{msg}"
    );
}

#[test]
fn reader_meta_checksum() {
    let good = open("good");
    for h in 1..=3 {
        assert!(good.open_block(h).unwrap().meta_has_checksum(), "block {h}");
    }
    // The block time changed after the file was written.
    let err = open("bad-meta-crc").open_block(1).unwrap_err();
    assert!(matches!(err, Error::MetaCrc { height: 1, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("bad-meta-crc/block-1-meta") && msg.contains("meta checksum mismatch"),
        "{msg}"
    );
    // Without the checksum (an older or another writer): read, and said.
    let old = open("meta-without-checksum").open_block(1).unwrap();
    assert!(!old.meta_has_checksum());
    assert_eq!(old.meta().unwrap().meta_crc32c, None);
    assert_eq!(
        old.meta().map(|m| m.time_seconds),
        good.open_block(1).unwrap().meta().map(|m| m.time_seconds)
    );
    // The checksum field anywhere but at the end is refused.
    let dir = tempfile::tempdir().unwrap();
    fs::copy(
        fixture("good/block-1-data"),
        dir.path().join("block-1-data"),
    )
    .unwrap();
    let meta = fs::read(fixture("good/block-1-meta")).unwrap();
    let field = &meta[meta.len() - 5..];
    let mut moved = field.to_vec();
    moved.extend_from_slice(&meta[8..meta.len() - 5]);
    let mut file = (moved.len() as u64).to_be_bytes().to_vec();
    file.extend_from_slice(&moved);
    fs::write(dir.path().join("block-1-meta"), file).unwrap();
    let bd = BlockDir::open(dir.path(), "", ReadOptions::default()).unwrap();
    let err = bd.open_block(1).unwrap_err();
    assert!(
        matches!(err, Error::BadMeta { height: 1, .. }) && err.to_string().contains("last 5 bytes"),
        "{err:?}"
    );
}

#[test]
fn reader_unordered_stores() {
    let file = open("unordered-stores").open_block(1).unwrap();
    assert_eq!(file.records().count(), 9, "the records themselves decode");
    let bank_len = blocks(1)[0].stores().nth(1).unwrap().encoded().len() as u64;
    let err = file.store_segments().unwrap_err();
    assert!(
        matches!(err, Error::Order { height: 1, offset, .. } if offset == 8 + bank_len),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("unordered-stores/block-1-data")
            && msg.contains(&format!("offset {}", 8 + bank_len))
            && msg.contains("store \"acc\" comes after store \"bank\""),
        "{msg}"
    );
}

#[test]
fn reader_store_in_two_runs() {
    let file = open("store-two-runs").open_block(1).unwrap();
    let err = file.store_segments().unwrap_err();
    assert!(matches!(err, Error::Order { height: 1, .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("store \"acc\" appears in two runs"),
        "{err}"
    );
}

#[test]
fn reader_keys_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut payload = Vec::new();
    statestream_core::encode_record(&mut payload, "acc", b"b", Some(b"1"));
    statestream_core::encode_record(&mut payload, "acc", b"a", Some(b"2"));
    let mut data = (payload.len() as u64).to_be_bytes().to_vec();
    data.extend_from_slice(&payload);
    fs::write(dir.path().join("block-9-data"), &data).unwrap();
    let bd = BlockDir::open(dir.path(), "", ReadOptions::default()).unwrap();
    let err = bd.open_block(9).unwrap().store_segments().unwrap_err();
    let second = 8 + record_offsets(&payload)[1] as u64;
    assert!(
        matches!(err, Error::Order { offset, .. } if offset == second),
        "{err:?}"
    );
    assert!(err.to_string().contains("does not follow key"), "{err}");
}

#[test]
fn reader_meta_disagreeing_with_data() {
    let dir = tempfile::tempdir().unwrap();
    write_blocks(dir.path(), "", &blocks(2));
    let p = dir.path();
    // Block 2's meta next to block 1's data: wrong height.
    fs::copy(p.join("block-2-meta"), p.join("block-1-meta")).unwrap();
    let bd = BlockDir::open(p, "", ReadOptions::default()).unwrap();
    let err = bd.open_block(1).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MetaHeight {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("block-1-meta"), "{err}");

    // A data file one record longer than its meta says.
    let mut data = fs::read(p.join("block-2-data")).unwrap();
    let extra = data[8..].to_vec();
    data.extend_from_slice(&extra);
    let len = (data.len() - 8) as u64;
    data[..8].copy_from_slice(&len.to_be_bytes());
    fs::write(p.join("block-2-data"), &data).unwrap();
    let err = bd.open_block(2).unwrap_err();
    assert!(
        matches!(err, Error::PayloadLength { height: 2, actual, .. } if actual == len),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("block-2-data") && err.to_string().contains("length mismatch"),
        "{err}"
    );
}

#[test]
fn reader_missing_block_and_dir() {
    let err = open("good").open_block(4).unwrap_err();
    assert!(
        matches!(err, Error::MissingBlock { height: 4, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("block-4-data"), "{err}");

    let missing = fixture("no-such-dir");
    let err = BlockDir::open(&missing, "", ReadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NotADirectory { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-dir"), "{err}");

    let file = fixture("good/block-1-data");
    let err = BlockDir::open(&file, "", ReadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NotADirectory { .. }), "{err:?}");

    let err = BlockDir::open(&fixture("good"), "../x", ReadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::BadPrefix { .. }), "{err:?}");
}

#[test]
fn reader_ignores_other_files() {
    let dir = tempfile::tempdir().unwrap();
    write_blocks(dir.path(), "", &blocks(2));
    for n in [
        ".block-3-data.tmp",
        "block-03-data",
        "block-4-data.bak",
        "a-block-5-data",
        "block-x-data",
        "README",
    ] {
        fs::write(dir.path().join(n), b"junk").unwrap();
    }
    let bd = BlockDir::open(dir.path(), "", ReadOptions::default()).unwrap();
    assert_eq!(bd.heights().unwrap(), [1, 2]);
    assert_eq!(names(dir.path()).len(), 4 + 6);
}

#[test]
fn reader_empty_file_is_truncated_header_even_mapped() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("block-1-data"), b"").unwrap();
    let bd = BlockDir::open(dir.path(), "", ReadOptions::default().mmap(true)).unwrap();
    let err = bd.open_block(1).unwrap_err();
    assert!(
        matches!(err, Error::TruncatedHeader { size: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn reader_hash_chains_recomputed_from_segments() {
    let bd = open("good");
    let mut chains: std::collections::BTreeMap<String, statestream_core::Hash> = Default::default();
    for h in bd.heights().unwrap() {
        let file = bd.open_block(h).unwrap();
        let segments = file.store_segments().unwrap();
        let meta = file.meta().unwrap();
        for sh in &meta.store_hashes {
            let records = segments
                .iter()
                .find(|(s, _)| *s == sh.store_key)
                .map_or(&[][..], |(_, r)| &file.payload()[r.clone()]);
            let prev = chains
                .get(&sh.store_key)
                .copied()
                .unwrap_or(statestream_core::ZERO_HASH);
            let next = statestream_core::chain_store_hash(&prev, records);
            assert_eq!(
                next.as_slice(),
                sh.hash.as_slice(),
                "height {h} store {}",
                sh.store_key
            );
            chains.insert(sh.store_key.clone(), next);
        }
        let app = statestream_core::app_hash(chains.iter().map(|(s, h)| (s.as_str(), h)));
        assert_eq!(
            app.as_slice(),
            meta.commit.as_ref().unwrap().app_hash.as_slice()
        );
    }
}
