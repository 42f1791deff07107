//! Arbitrary messages as a JetStream stream of blocks, through the stream
//! reader's checks and reassembly (`statestream_nats::fuzzing::assemble`:
//! sequences, the `Statestream-Height` and `Statestream-Part` headers,
//! split blocks put back together, duplicates skipped, gaps refused, each
//! frame decoded and checked against its length and CRC-32C). Every
//! outcome must be a value or an error, never a panic. The NATS protocol
//! itself is parsed by the `async-nats` client, fuzzed by its authors.
//!
//! Input: messages, each a header byte (bits 0-1: how the sequence
//! moves, bit 2: a height header, bit 3: a part header), a height byte, a
//! part byte pair, a length byte, then that many payload bytes.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run nats_blocks` (or `cargo +nightly
//! fuzz run nats_blocks`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use statestream_nats::fuzzing;

fuzz_target!(|input: &[u8]| {
    // Owned texts first: the messages borrow them.
    let mut parsed = Vec::new();
    let mut seq = 0u64;
    let mut rest = input;
    while let [flags, height, i, n, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(len);
        seq = match flags & 3 {
            0 => seq.wrapping_add(1),
            1 => seq.wrapping_add(u64::from(*height)),
            2 => seq.wrapping_sub(1),
            _ => u64::MAX - u64::from(*height),
        };
        let height_text = (flags & 4 != 0).then(|| {
            if flags & 0x80 != 0 {
                format!("{height}x")
            } else {
                height.to_string()
            }
        });
        let part_text = (flags & 8 != 0).then(|| format!("{i}/{n}"));
        parsed.push((seq, height_text, part_text, payload));
        rest = next;
    }
    let messages = parsed
        .iter()
        .map(|(seq, h, p, payload)| (*seq, h.as_deref(), p.as_deref(), *payload));
    match fuzzing::assemble("s", messages) {
        Ok(heights) => assert!(heights.windows(2).all(|w| w[0] < w[1])),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
