//! The reader on streams written by hand: duplicates, blocks published
//! again part by part, a torn tail, a missing block.

use prost::Message as _;
use statestream_nats::{NatsError, StreamReader, replay_stream};

use crate::server::{Js, NatsServer};
use crate::{app_toml, commit_block, manager, memory_store, server};

/// The frames of blocks 1..=6 of the test workload, as published.
fn frames(server: &NatsServer, url: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut store = memory_store();
    let mut m = manager(&mut store, &app_toml(url, "delivery = \"sync\""))?;
    for b in 1..=6 {
        commit_block(&mut m, &mut store, b)?;
    }
    m.close(&mut store)?;
    Ok(
        StreamReader::open(&server.reader_config("statestream", "statestream"))?
            .map(|b| b.map(|b| b.frame.encode_to_vec()))
            .collect::<Result<_, _>>()?,
    )
}

struct Writer<'a> {
    client: &'a Js,
    subject: String,
    n: u64,
}

impl Writer<'_> {
    fn create<'a>(client: &'a Js, stream: &str) -> anyhow::Result<Writer<'a>> {
        client.create_stream(stream, vec![format!("{stream}.blocks")], 1)?;
        Ok(Writer {
            client,
            subject: format!("{stream}.blocks"),
            n: 0,
        })
    }

    /// Publishes part `part` of `parts` of block `h` (`parts` = 0: whole),
    /// with a fresh message id so that JetStream keeps it.
    fn put(&mut self, frame: &[u8], h: u64, part: u64, parts: u64) -> anyhow::Result<()> {
        self.n += 1;
        let id = format!("m{}", self.n);
        let height = h.to_string();
        let mut headers = vec![
            ("Nats-Msg-Id", id.as_str()),
            ("Statestream-Height", height.as_str()),
        ];
        let part_text = format!("{part}/{parts}");
        let data = if parts == 0 {
            frame
        } else {
            headers.push(("Statestream-Part", part_text.as_str()));
            let chunk = frame.len().div_ceil(parts as usize);
            let start = (chunk * (part as usize - 1)).min(frame.len());
            &frame[start..(start + chunk).min(frame.len())]
        };
        let ack = self.client.publish(&self.subject, &headers, data)?;
        assert!(!ack.duplicate);
        Ok(())
    }
}

#[test]
fn reader_skips_duplicates_restarted_parts_and_a_torn_tail() -> anyhow::Result<()> {
    let Some(server) = server::start("reader_skips_duplicates_restarted_parts_and_a_torn_tail")
    else {
        return Ok(());
    };
    let client = server.client();
    let f = frames(&server, &server.url())?;
    let mut w = Writer::create(&client, "crafted")?;
    w.put(&f[0], 1, 0, 0)?;
    // Block 2: two parts, then (a publisher crash) all three again.
    w.put(&f[1], 2, 1, 3)?;
    w.put(&f[1], 2, 2, 3)?;
    w.put(&f[1], 2, 1, 3)?;
    w.put(&f[1], 2, 2, 3)?;
    w.put(&f[1], 2, 2, 3)?; // a part stored twice
    w.put(&f[1], 2, 3, 3)?;
    w.put(&f[0], 1, 0, 0)?; // block 1 again, after the duplicate window
    w.put(&f[2], 3, 0, 0)?;
    w.put(&f[3], 4, 1, 2)?;
    w.put(&f[3], 4, 2, 2)?;
    w.put(&f[3], 4, 2, 2)?; // again
    w.put(&f[4], 5, 1, 2)?; // the tail: block 5 is not complete yet

    let mut reader = StreamReader::open(&server.reader_config("crafted", "crafted"))?;
    let heights: Vec<u64> = (&mut reader)
        .map(|b| b.map(|b| b.height))
        .collect::<Result<_, _>>()?;
    assert_eq!(heights, vec![1, 2, 3, 4]);
    // Copies of parts already held (block 2's parts 1 and 2 published
    // again, part 2 a third time, block 4's part 2) and of a block already
    // returned (block 1).
    assert_eq!(reader.duplicates(), 5);

    let replay = replay_stream(&server.reader_config("crafted", "crafted"))?;
    assert_eq!(replay.height, 4);
    let want = statestream::proto::BlockFrame::decode(f[3].as_slice())?
        .meta
        .and_then(|m| m.commit)
        .expect("commit info")
        .app_hash;
    assert_eq!(replay.app_hash.to_vec(), want);
    Ok(())
}

#[test]
fn reader_reports_a_missing_block() -> anyhow::Result<()> {
    let Some(server) = server::start("reader_reports_a_missing_block") else {
        return Ok(());
    };
    let client = server.client();
    let f = frames(&server, &server.url())?;
    let mut w = Writer::create(&client, "gappy")?;
    w.put(&f[0], 1, 0, 0)?;
    w.put(&f[2], 3, 0, 0)?;
    let results: Vec<_> = StreamReader::open(&server.reader_config("gappy", "gappy"))?.collect();
    assert_eq!(results.len(), 2);
    assert!(results[0].is_ok());
    let err = results[1].as_ref().expect_err("a gap");
    assert!(matches!(err, NatsError::BadMessage { seq: 2, .. }), "{err}");
    assert!(err.to_string().contains("block 2 is missing"), "{err}");
    let err = replay_stream(&server.reader_config("gappy", "gappy")).expect_err("a gap");
    assert!(err.to_string().contains("block 2 is missing"), "{err}");

    // A corrupt frame is caught by its CRC.
    let mut w = Writer::create(&client, "corrupt")?;
    let mut bad = f[0].clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    w.put(&bad, 1, 0, 0)?;
    let err = replay_stream(&server.reader_config("corrupt", "corrupt")).expect_err("corrupt");
    assert!(err.to_string().contains("CRC-32C"), "{err}");
    Ok(())
}
