//! Arbitrary bytes as a data file (and, optionally, a meta file) read
//! through `BlockDir`, `BlockFile::records` and `store_segments`, plain and
//! mapped: every outcome must be a value or an error, never a panic.
//!
//! Input: one flag byte (bit 0: write a meta file, bit 1: mmap), a
//! little-endian u16 giving the meta file's length, the meta file's bytes,
//! then the data file's bytes.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run block_reader` (or `cargo +nightly fuzz
//! run block_reader`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use statestream_file::{BlockDir, ReadOptions};

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let (meta, data) = match rest.split_first_chunk::<2>() {
        Some((len, rest)) if flags & 1 == 1 => {
            let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
            let (meta, data) = rest.split_at(len);
            (Some(meta), data)
        }
        _ => (None, rest),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("block-7-data"), data).expect("write data");
    if let Some(meta) = meta {
        std::fs::write(dir.path().join("block-7-meta"), meta).expect("write meta");
    }
    let options = ReadOptions::default().mmap(flags & 2 == 2);
    let blocks = BlockDir::open(dir.path(), "", options).expect("dir opens");
    assert_eq!(blocks.heights().expect("lists"), [7]);
    let Ok(block) = blocks.open_block(7) else {
        return;
    };
    let mut n = 0usize;
    for record in block.records() {
        match record {
            Ok(r) => {
                n += 1;
                let _ = (r.store.len(), r.key.len(), r.value.map(<[u8]>::len));
            }
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }
    if let Ok(segments) = block.store_segments() {
        let payload = block.payload();
        let mut end = 0;
        for (_, range) in &segments {
            assert!(range.start == end || range.start > end);
            assert!(range.end <= payload.len());
            end = range.end;
        }
        assert!(segments.len() <= n);
    }
});
