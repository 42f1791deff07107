//! The golden fixtures in `tests/fixtures/`: how they are made, and a check
//! that making them again gives the same bytes.
//!
//! To rewrite them after an intended format change:
//! `STATESTREAM_BLESS=1 cargo test -p statestream-file fixtures_`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use prost::Message;
use statestream_core::Records;
use statestream_core::proto::BlockMetadata;

use crate::util::{blocks, write_blocks};

/// `tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// One fixture directory.
pub fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// Payload offsets of the records of a payload.
pub fn record_offsets(payload: &[u8]) -> Vec<usize> {
    let mut it = Records::new(payload);
    let mut offsets = vec![];
    loop {
        let at = it.offset();
        match it.next() {
            Some(r) => {
                r.expect("good record");
                offsets.push(at);
            }
            None => return offsets,
        }
    }
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u64).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// `meta` as a meta file, with its own checksum computed again.
fn sealed(mut meta: BlockMetadata) -> Vec<u8> {
    meta.meta_crc32c = None;
    let covered = meta.encode_to_vec();
    meta.meta_crc32c = Some(statestream_core::crc32c_append(0, &covered));
    framed(&meta.encode_to_vec())
}

/// The meta file of `good_meta`, with the CRC and length of `payload`: used
/// for corrupt data files whose meta agrees with them, so that the reader
/// reaches the records.
fn meta_for(good_meta: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut meta = BlockMetadata::decode(&good_meta[8..]).expect("good meta decodes");
    meta.data_length = payload.len() as u64;
    meta.data_crc32c = statestream_core::crc32c_append(0, payload);
    sealed(meta)
}

/// Every fixture file: path relative to `tests/fixtures` -> bytes.
pub fn generate() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let bs = blocks(3);
    write_blocks(dir.path(), "", &bs);
    for entry in fs::read_dir(dir.path()).expect("read dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name().into_string().expect("utf-8");
        out.insert(
            format!("good/{name}"),
            fs::read(entry.path()).expect("read"),
        );
    }
    let data = out["good/block-1-data"].clone();
    let meta = out["good/block-1-meta"].clone();
    let payload = &data[8..];
    let mut put = |case: &str, name: &str, bytes: Vec<u8>| {
        out.insert(format!("{case}/{name}"), bytes);
    };

    // A data file cut inside its length header.
    put("truncated-header", "block-1-data", data[..5].to_vec());

    // A data file cut inside its payload (the header is intact).
    put(
        "truncated-payload",
        "block-1-data",
        data[..data.len() - 3].to_vec(),
    );
    put("truncated-payload", "block-1-meta", meta.clone());

    // One payload byte changed (the last byte of the first value): decodes,
    // but the CRC in the meta file does not match.
    let offsets = record_offsets(payload);
    let mut flipped = data.clone();
    flipped[8 + offsets[1] - 1] ^= 0x01;
    put("bad-crc", "block-1-data", flipped);
    put("bad-crc", "block-1-meta", meta.clone());

    // The second record's length replaced by an over-long uvarint (ten 0xff
    // bytes); the meta file agrees with the damaged payload.
    let mut bad = payload.to_vec();
    bad[offsets[1]..offsets[1] + 10].fill(0xff);
    put("bad-varint", "block-1-data", framed(&bad));
    put("bad-varint", "block-1-meta", meta_for(&meta, &bad));

    // A meta file whose message does not decode (a truncated varint).
    put("bad-meta", "block-1-data", data.clone());
    put("bad-meta", "block-1-meta", framed(&[0x08, 0xff]));

    // A meta file as written before meta files had their own checksum (and
    // as other writers write them): read, but nothing checks its fields.
    let mut old = BlockMetadata::decode(&meta[8..]).expect("good meta decodes");
    old.meta_crc32c = None;
    put("meta-without-checksum", "block-1-data", data.clone());
    put(
        "meta-without-checksum",
        "block-1-meta",
        framed(&old.encode_to_vec()),
    );

    // The block time changed in a meta file after it was written: it
    // decodes, and the data agrees with it, but its own checksum does not.
    let mut changed = BlockMetadata::decode(&meta[8..]).expect("good meta decodes");
    changed.time_seconds += 1;
    put("bad-meta-crc", "block-1-data", data.clone());
    put(
        "bad-meta-crc",
        "block-1-meta",
        framed(&changed.encode_to_vec()),
    );

    // Stores out of order: bank's records before acc's.
    let segs: Vec<&[u8]> = bs[0].encoded().collect();
    let swapped = [segs[1], segs[0], segs[2]].concat();
    put("unordered-stores", "block-1-data", framed(&swapped));
    put(
        "unordered-stores",
        "block-1-meta",
        meta_for(&meta, &swapped),
    );

    // A store in two runs: acc's second record after bank's records.
    let acc = segs[0];
    let acc_offsets = record_offsets(acc);
    let split = [
        &acc[..acc_offsets[1]],
        segs[1],
        &acc[acc_offsets[1]..],
        segs[2],
    ]
    .concat();
    put("store-two-runs", "block-1-data", framed(&split));
    put("store-two-runs", "block-1-meta", meta_for(&meta, &split));
    out
}

/// The files under `tests/fixtures`, as [`generate`] names them.
fn checked_in() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let root = fixtures_dir();
    for case in fs::read_dir(&root).expect("fixtures dir") {
        let case = case.expect("entry");
        if !case.path().is_dir() {
            continue;
        }
        let case_name = case.file_name().into_string().expect("utf-8");
        for file in fs::read_dir(case.path()).expect("case dir") {
            let file = file.expect("entry");
            let name = file.file_name().into_string().expect("utf-8");
            out.insert(
                format!("{case_name}/{name}"),
                fs::read(file.path()).expect("read"),
            );
        }
    }
    out
}

#[test]
fn fixtures_regenerate_identical() {
    let generated = generate();
    if std::env::var_os("STATESTREAM_BLESS").is_some() {
        for (rel, bytes) in &generated {
            let path = fixtures_dir().join(rel);
            fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
            fs::write(&path, bytes).expect("write fixture");
        }
    }
    // Twice in a row, and against the checked-in files.
    assert_eq!(generate(), generated, "the generator is not deterministic");
    let on_disk = checked_in();
    assert_eq!(
        on_disk.keys().collect::<Vec<_>>(),
        generated.keys().collect::<Vec<_>>(),
        "fixture files differ (STATESTREAM_BLESS=1 rewrites them)"
    );
    for (rel, bytes) in &generated {
        assert!(
            on_disk[rel] == *bytes,
            "{rel} differs from what the writer produces now"
        );
    }
}
