//! Arbitrary bytes as everything a NATS server sends, through the client's
//! parsing (`statestream_nats::fuzzing::connect_script`, the one seam: a
//! `Client` whose server is a byte string): the INFO line and CONNECT
//! handshake, then control lines (PING, PONG, +OK, -ERR, INFO, MSG, HMSG),
//! message bodies and `NATS/1.0` header blocks, JetStream JSON answers
//! (PubAck, stream info, API errors) and the base64 of MSG.GET replies, and
//! the stream reader putting blocks back together. Every outcome must be a
//! value or an error, never a panic; a message's announced length is never
//! allocated before its bytes arrive.
//!
//! Input: one byte choosing what the client does (bit 7: replay the stream;
//! otherwise the first of the calls below, the others following while the
//! connection works), then the server's bytes. The n-th request's reply
//! subject is `_INBOX.fuzz.<n>`.
//!
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run nats_protocol` (or `cargo +nightly
//! fuzz run nats_protocol`).

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use statestream_nats::{Client, ConnectOptions, StreamSpec, fuzzing};

const CALLS: usize = 6;

fn call(client: &mut Client, which: usize) -> bool {
    match which {
        0 => client
            .publish(
                "x.blocks",
                &[("Nats-Msg-Id", "s-1"), ("Statestream-Height", "1")],
                b"payload",
            )
            .map(|a| a.seq)
            .is_ok(),
        1 => client.stream_info("s").map(|i| i.is_some()).is_ok(),
        2 => client
            .create_stream(&StreamSpec {
                name: "s".into(),
                subjects: vec!["x.>".into()],
                duplicate_window: Duration::from_secs(120),
                replicas: 1,
            })
            .is_ok(),
        3 => client
            .get_message("s", 1, Some("x.blocks"))
            .map(|m| m.map(|m| (m.header("Statestream-Height").is_some(), m.payload.len())))
            .is_ok(),
        4 => client.last_message("s", "x.blocks").is_ok(),
        _ => client
            .request("$JS.API.INFO", &[], b"")
            .map(|m| (m.status, m.headers.len(), m.payload.len()))
            .is_ok(),
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&op, server)) = input.split_first() else {
        return;
    };
    let mut opts = ConnectOptions::new("nats://u:p@fuzz:4222");
    opts.request_timeout = Duration::from_secs(60);
    opts.connect_timeout = Duration::from_secs(60);
    let mut client = match fuzzing::connect_script(server.to_vec(), &opts) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = (client.max_payload(), client.server_info().version.len());
    if op & 0x80 != 0 {
        match statestream_nats::replay_stream(&mut client, "s", "x") {
            Ok(r) => {
                let _ = (r.height, r.blocks, r.records);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
        return;
    }
    let first = usize::from(op) % CALLS;
    for k in 0..CALLS {
        if !call(&mut client, (first + k) % CALLS) {
            break;
        }
    }
    if client.is_broken() {
        assert!(client.request("a", &[], b"").is_err());
    }
});
