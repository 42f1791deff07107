//! Runs the examples' logic (the functions their `main`s call).

use statestream_examples::{ReadSummary, custom_streamer_demo, read_blocks};

#[test]
fn examples_custom_streamer_writes_json_lines() {
    let home = tempfile::tempdir().unwrap();
    let lines = custom_streamer_demo(home.path()).unwrap();
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Only the bank store: alice and bob per block, bob deleted at height 2.
    assert_eq!(records.len(), 6);
    assert!(records.iter().all(|r| r["store"] == "bank"));
    let heights: Vec<u64> = records
        .iter()
        .map(|r| r["height"].as_u64().unwrap())
        .collect();
    assert_eq!(heights, [1, 1, 2, 2, 3, 3]);
    let bob_2 = &records[3];
    assert_eq!(bob_2["key"], "626f62");
    assert_eq!(bob_2["delete"], true);
    assert!(bob_2["value"].is_null());

    // Running again resumes at height 4 and keeps the earlier lines once.
    let again = custom_streamer_demo(home.path()).unwrap();
    assert_eq!(again.len(), 12);
    assert_eq!(again[..6], lines[..]);
}

#[test]
fn examples_read_blocks_reads_the_file_streamer_output() {
    let home = tempfile::tempdir().unwrap();
    custom_streamer_demo(home.path()).unwrap();
    let mut out = Vec::new();
    let summary = read_blocks(&home.path().join("data/streaming"), "", &mut out).unwrap();
    assert_eq!(summary.blocks, 3);
    // acc/alice + bank/alice + bank/bob per block.
    assert_eq!(summary.records, 9);
    assert_eq!(summary.last_app_hash.as_ref().map(String::len), Some(64));
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("block 2: "), "{text}");
    assert!(text.contains("  bank bob deleted"), "{text}");
    assert!(text.contains("  bank alice = 300"), "{text}");

    let empty = tempfile::tempdir().unwrap();
    assert_eq!(
        read_blocks(empty.path(), "", &mut Vec::new()).unwrap(),
        ReadSummary::default()
    );
    assert!(read_blocks(&empty.path().join("missing"), "", &mut Vec::new()).is_err());
}
