//! The follower: from any height (split blocks included), live, through
//! server restarts while blocks are published; a height the stream no
//! longer holds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prost::Message as _;
use statestream_nats::{BlockFollower, NatsError, StreamReader};
use statestream_store::{KvStore, StoreKey};

use crate::server::NatsServer;
use crate::{app_toml, commit_block, manager, memory_store, server, wait_delivered};

/// A relay moves the follower to a reader thread and shares the heights.
#[test]
fn follow_types_cross_threads() {
    fn send<T: Send>() {}
    fn shared<T: Send + Sync>() {}
    send::<BlockFollower>();
    shared::<statestream_nats::StreamHeights>();
}

/// Every block of the stream as the reader returns it: height -> frame.
fn stored_frames(server: &NatsServer) -> anyhow::Result<BTreeMap<u64, Vec<u8>>> {
    StreamReader::open(&server.reader_config("statestream", "statestream"))?
        .map(|b| b.map(|b| (b.height, b.frame.encode_to_vec())))
        .collect::<Result<_, _>>()
        .map_err(Into::into)
}

/// Reads blocks until `last` (inclusive), under one deadline; the heights
/// and frames in the order returned.
fn follow_until(f: &mut BlockFollower, last: u64) -> anyhow::Result<Vec<(u64, Vec<u8>)>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
    while got.last().is_none_or(|(h, _)| *h < last) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "block {last} from the follower within 120 s: got up to {:?} ({f:?}, last error {:?})",
            got.last().map(|(h, _)| h),
            f.last_error()
        );
        if let Some(b) = f.next(Duration::from_millis(200))? {
            got.push((b.height, b.frame.encode_to_vec()));
        }
    }
    Ok(got)
}

fn heights(got: &[(u64, Vec<u8>)]) -> Vec<u64> {
    got.iter().map(|(h, _)| *h).collect()
}

#[test]
fn follow_starts_at_any_height_of_a_split_stream_then_goes_live() -> anyhow::Result<()> {
    let Some(server) = server::start_with(
        "follow_starts_at_any_height_of_a_split_stream_then_goes_live",
        Some(64 * 1024),
    ) else {
        return Ok(());
    };
    let mut store = memory_store();
    let mut m = manager(&mut store, &app_toml(&server.url(), "delivery = \"sync\""))?;
    let bank = StoreKey::new("bank")?;
    let big = [20u64, 41];
    for b in 1..=60 {
        if big.contains(&b) {
            // About 300 KiB of records: five parts or more.
            for i in 0..50u32 {
                let value: Vec<u8> = (0..6000u32)
                    .map(|j| (i * 31 + j * 7 + b as u32) as u8)
                    .collect();
                store.set(&bank, format!("big-{b}-{i:02}").as_bytes(), &value)?;
            }
        }
        commit_block(&mut m, &mut store, b)?;
    }
    let frames = stored_frames(&server)?;
    assert_eq!(frames.len(), 60);
    let config = server.reader_config("statestream", "statestream");
    let messages = crate::raw_messages(&server.client(), "statestream", "statestream").len() as u64;
    assert!(
        messages >= 68,
        "the big blocks are split: {messages} messages"
    );
    for from in [1u64, 2, 19, 20, 21, 40, 41, 42, 59, 60] {
        let mut f = BlockFollower::open(&config, None, from)?;
        // A binary search over the sequences, not a scan.
        let bound = 3 + u64::from(messages.ilog2()) + 1;
        assert!(
            f.start_lookups() <= bound,
            "from {from}: {} lookups for {messages} messages",
            f.start_lookups()
        );
        let got = follow_until(&mut f, 60)?;
        assert_eq!(
            heights(&got),
            (from..=60).collect::<Vec<_>>(),
            "from {from}"
        );
        for (h, frame) in &got {
            assert!(
                frames[h] == *frame,
                "block {h} from {from} differs from the stream's"
            );
        }
        assert!(f.next(Duration::from_millis(100))?.is_none());
    }

    // Ahead of the stream, then live.
    let mut ahead = BlockFollower::open(&config, None, 63)?;
    let mut live = BlockFollower::open(&config, None, 61)?;
    assert_eq!(live.next_height(), 61);
    assert!(live.next(Duration::from_millis(100))?.is_none());
    assert_eq!(live.head()?, Some(60));
    for b in 61..=66 {
        commit_block(&mut m, &mut store, b)?;
    }
    m.close(&mut store)?;
    let frames = stored_frames(&server)?;
    let got = follow_until(&mut live, 66)?;
    assert_eq!(heights(&got), (61..=66).collect::<Vec<_>>());
    for (h, frame) in &got {
        assert!(
            frames[h] == *frame,
            "live block {h} differs from the stream's"
        );
    }
    let got = follow_until(&mut ahead, 66)?;
    assert_eq!(heights(&got), (63..=66).collect::<Vec<_>>());
    // It started at the stream's head: only 61 and 62 were read and skipped.
    assert_eq!(ahead.duplicates(), 2);
    Ok(())
}

#[test]
fn follow_server_restarts_while_blocks_are_published_skip_and_repeat_nothing() -> anyhow::Result<()>
{
    let Some(mut server) =
        server::start("follow_server_restarts_while_blocks_are_published_skip_and_repeat_nothing")
    else {
        return Ok(());
    };
    let mut store = memory_store();
    let toml = app_toml(&server.url(), "stop-node-on-error = false");
    let mut m = manager(&mut store, &toml)?;
    for b in 1..=5 {
        commit_block(&mut m, &mut store, b)?;
    }
    wait_delivered(&m, 5);
    let config = server.reader_config("statestream", "statestream");
    let last = 70;
    let mut f = BlockFollower::open(&config, None, 3)?;
    let reader = std::thread::spawn(move || follow_until(&mut f, last));

    for b in 6..=last {
        commit_block(&mut m, &mut store, b)?;
        match b {
            20 | 50 => server.kill(),
            30 | 55 => server.restart(),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_delivered(&m, last);
    m.close(&mut store)?;
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the follower's thread panicked"))??;
    assert_eq!(heights(&got), (3..=last).collect::<Vec<_>>());
    let frames = stored_frames(&server)?;
    for (h, frame) in &got {
        assert!(frames[h] == *frame, "block {h} differs from the stream's");
    }
    let hash = &frames[&last];
    let meta = statestream_core::proto::BlockFrame::decode(hash.as_slice())?
        .meta
        .and_then(|m| m.commit)
        .map(|c| c.app_hash);
    assert_eq!(meta.as_deref(), Some(&store.last_commit().app_hash[..]));
    Ok(())
}

#[test]
fn follow_height_the_stream_no_longer_holds_is_named() -> anyhow::Result<()> {
    let Some(mut server) = server::start("follow_height_the_stream_no_longer_holds_is_named")
    else {
        return Ok(());
    };
    let mut store = memory_store();
    let toml = app_toml(&server.url(), "stop-node-on-error = false");
    let mut m = manager(&mut store, &toml)?;
    for b in 1..=10 {
        commit_block(&mut m, &mut store, b)?;
    }
    wait_delivered(&m, 10);
    let client = server.client();
    // Blocks 1-4 removed, as the stream's limits would.
    client.purge_below("statestream", 5)?;
    let config = server.reader_config("statestream", "statestream");
    let heights_now = statestream_nats::StreamHeights::open(&config, None)?;
    assert_eq!(heights_now.heights()?, (Some(5), Some(10)));
    for from in [1, 3, 4] {
        let err = BlockFollower::open(&config, None, from).expect_err("block gone");
        assert!(
            matches!(err, NatsError::HeightGone { height, first: Some(5), .. } if height == from),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "stream \"statestream\" no longer holds block {from} (its first block is now 5)"
            )
        );
    }
    let mut f = BlockFollower::open(&config, None, 5)?;
    assert_eq!(
        heights(&follow_until(&mut f, 10)?),
        (5..=10).collect::<Vec<_>>()
    );

    // While the follower is away from the server (a restart), the blocks
    // it has not read yet go: it says so instead of skipping them.
    server.kill();
    server.restart();
    for b in 11..=14 {
        commit_block(&mut m, &mut store, b)?;
    }
    wait_delivered(&m, 14);
    m.close(&mut store)?;
    drop(client);
    server.client().purge_below("statestream", 13)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let err = loop {
        assert!(
            Instant::now() < deadline,
            "the follower's error for the purged block 11 within 60 s"
        );
        match f.next(Duration::from_millis(200)) {
            Ok(None) => {}
            Ok(Some(b)) => panic!("block {} returned though 11 and 12 are gone", b.height),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            err,
            NatsError::HeightGone {
                height: 11,
                first: Some(13),
                ..
            }
        ),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn follow_upstream_url_finds_the_nodes_subject() -> anyhow::Result<()> {
    let Some(server) = server::start("follow_upstream_url_finds_the_nodes_subject") else {
        return Ok(());
    };
    let mut store = memory_store();
    let toml = app_toml(
        &server.url(),
        "delivery = \"sync\"\nstream = \"chain\"\nsubject = \"node-a\"",
    );
    let mut m = manager(&mut store, &toml)?;
    for b in 1..=4 {
        commit_block(&mut m, &mut store, b)?;
    }
    m.close(&mut store)?;
    let options = statestream_nats::NatsUpstreamOptions::default();
    let url = format!("{}?stream=chain", server.url());
    let config = statestream_nats::upstream_config(&url, &options)?;
    let mut f = BlockFollower::open(&config, None, 2)?;
    assert_eq!(heights(&follow_until(&mut f, 4)?), vec![2, 3, 4]);

    let config =
        statestream_nats::upstream_config(&format!("{}?stream=other", server.url()), &options)?;
    let err = BlockFollower::open(&config, None, 1).expect_err("no such stream");
    assert!(matches!(err, NatsError::NoStream { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("JetStream stream \"other\" does not exist"),
        "{err}"
    );
    Ok(())
}

#[test]
fn follow_restart_before_the_first_message_neither_repeats_nor_skips() -> anyhow::Result<()> {
    let Some(mut server) =
        server::start("follow_restart_before_the_first_message_neither_repeats_nor_skips")
    else {
        return Ok(());
    };
    let mut store = memory_store();
    let toml = app_toml(&server.url(), "stop-node-on-error = false");
    let mut m = manager(&mut store, &toml)?;
    for b in 1..=10 {
        commit_block(&mut m, &mut store, b)?;
    }
    wait_delivered(&m, 10);
    // At the head: its consumer exists and has delivered nothing when the
    // server goes away (the client alone would make it again from the
    // stream's start).
    let mut f = BlockFollower::open(
        &server.reader_config("statestream", "statestream"),
        None,
        11,
    )?;
    assert!(f.next(Duration::from_millis(300))?.is_none());
    server.kill();
    assert!(f.next(Duration::from_millis(300))?.is_none());
    server.restart();
    for b in 11..=15 {
        commit_block(&mut m, &mut store, b)?;
    }
    wait_delivered(&m, 15);
    m.close(&mut store)?;
    let got = follow_until(&mut f, 15)?;
    assert_eq!(heights(&got), (11..=15).collect::<Vec<_>>());
    assert!(f.next(Duration::from_millis(300))?.is_none());
    assert_eq!(f.duplicates(), 0, "nothing before block 11 was taken");
    Ok(())
}
