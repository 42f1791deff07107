//! Arbitrary bytes as a plugin's stdout, read as the node reads it
//! (`read_frame` with `MAX_FRAME_LEN`, then `HelloAck` and `Ack`
//! decoding, as `streaming/src/process.rs` does), and as the node's frames
//! on a plugin's stdin (`PluginIo`: `Hello`, then `BlockFrame`s whose
//! records are decoded with `Records`). Every outcome must be a value or an
//! error, never a panic, and a frame is never longer than its limit.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run plugin_frames` (or `cargo +nightly
//! fuzz run plugin_frames`).

#![no_main]

use std::io::{BufReader, Cursor};

use libfuzzer_sys::fuzz_target;
use statestream_core::plugin::{self, MAX_FRAME_LEN, PluginIo};
use statestream_core::proto;

/// A small limit too, so that the oversized-length path is reached often.
const LIMITS: [usize; 2] = [MAX_FRAME_LEN, 64];

fuzz_target!(|input: &[u8]| {
    // The node side: the plugin's stdout through a small buffer (pipes
    // deliver short reads), the first frame a HelloAck, then Acks.
    for max in LIMITS {
        let mut r = BufReader::with_capacity(7, Cursor::new(input));
        let mut buf = Vec::new();
        let mut first = true;
        loop {
            match plugin::read_frame(&mut r, &mut buf, max) {
                Ok(true) => {
                    assert!(buf.len() <= max);
                    if first {
                        if let Ok(ack) = plugin::decode_frame::<proto::HelloAck>(&buf, "HelloAck") {
                            let _ = (ack.plugin_name.len(), ack.protocol_version);
                        }
                        first = false;
                    } else if let Ok(ack) = plugin::decode_frame::<proto::Ack>(&buf, "Ack") {
                        let _ = (ack.height, ack.error.len());
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    let _ = e.to_string();
                    break;
                }
            }
        }
    }

    // The plugin side: the same bytes as the node's Hello and BlockFrames.
    let mut io = PluginIo::new(input, std::io::sink());
    match io.handshake("fuzz", "0.0.0") {
        Ok(_) => {}
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    }
    loop {
        match io.next_block() {
            Ok(Some(block)) => {
                let _ = (block.height(), block.meta().data_length);
                for record in block.records() {
                    match record {
                        Ok(r) => {
                            let _ = (r.store.len(), r.key.len(), r.value.map(<[u8]>::len));
                        }
                        Err(e) => {
                            let _ = e.to_string();
                            break;
                        }
                    }
                }
                let _ = io.ack(block.height());
            }
            Ok(None) => break,
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }
});
