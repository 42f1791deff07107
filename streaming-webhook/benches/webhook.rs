//! `webhook_changes_per_s`: the streamer against a local receiver that
//! answers 200 at once, with `batch = "change"` and `"block"`, next to the
//! same number of plain requests made by the same client crate (ureq) in a
//! loop. The ratio change/plain is the streamer's overhead (envelopes,
//! templates, signatures); the target is at least 0.8.
//!
//! `cargo bench -p statestream-webhook --bench webhook`

use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use statestream::{Block, StoreSelection, Streamer, StreamerContext};
use statestream_config::StreamerOptions;
use statestream_store::{CommitInput, KvStore, MultiStore, StoreKey};
use statestream_webhook::{WebhookConfig, WebhookStreamer};

const CHANGES: usize = 100;
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A keep-alive HTTP/1.1 server that answers 200 to everything.
fn receiver() -> String {
    statestream_test_support::http_sink::start(|_| {})
}

fn streamer(url: &str, batch: &str) -> WebhookStreamer {
    let table: toml::Table =
        format!("url = \"{url}/hooks/bank\"\nbatch = \"{batch}\"\nsecret = \"{SECRET}\"")
            .parse()
            .expect("options");
    let options = StreamerOptions::from_table(table).with_name("bench");
    let keys = [StoreKey::new("bank").expect("store name")];
    let ctx = StreamerContext {
        name: "bench",
        stores: &keys,
        all_stores: &keys,
        home: Path::new("."),
        reader: None,
        shutdown: &statestream_core::Shutdown::default(),
        push: None,
    };
    options
        .parse::<WebhookConfig>()
        .expect("options parse")
        .build(&ctx, &options)
        .expect("streamer")
}

/// One block of `CHANGES` sets of small JSON values.
fn block() -> Block {
    let bank = StoreKey::new("bank").expect("store name");
    let mut store = MultiStore::in_memory(std::slice::from_ref(&bank)).expect("store");
    for i in 0..CHANGES {
        store
            .set(
                &bank,
                format!("balance/u{i:04}").as_bytes(),
                format!("{{\"amount\": {i}, \"denom\": \"stake\"}}").as_bytes(),
            )
            .expect("set");
    }
    let cs = store.commit_block(CommitInput::new()).expect("commit");
    Block::from_change_set(Arc::clone(&cs), &StoreSelection::all(&[bank])).expect("block")
}

fn webhook_changes_per_s(c: &mut Criterion) {
    let url = receiver();
    let block = block();
    let mut group = c.benchmark_group("webhook_changes_per_s");
    group.throughput(Throughput::Elements(CHANGES as u64));
    group.sample_size(20);

    let mut per_change = streamer(&url, "change");
    group.bench_function("batch_change", |b| {
        b.iter(|| per_change.on_block(&block).expect("delivered"))
    });
    let mut per_block = streamer(&url, "block");
    group.bench_function("batch_block", |b| {
        b.iter(|| per_block.on_block(&block).expect("delivered"))
    });

    // The same number of requests of a similar size with the same client,
    // configured as the streamer configures it, with the total timeout per
    // request (`timeout_global`). With a timeout ureq resolves the host
    // on a new thread for every request; the streamer's agent skips that
    // for IP addresses, this plain client does not (it is ureq as users
    // get it).
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(15)))
        .max_redirects(0)
        .http_status_as_error(false)
        .build()
        .into();
    let body = br#"{"id":"bench-1-0","action":"update","store":"bank","key":"balance/u0000","height":1,"time":"1970-01-01T00:00:00Z","document":{"amount": 0, "denom": "stake"}}"#;
    let target = format!("{url}/hooks/bank");
    group.bench_function("plain_requests", |b| {
        b.iter(|| {
            for _ in 0..CHANGES {
                let r = agent
                    .post(&target)
                    .header("content-type", "application/json")
                    .send(&body[..])
                    .expect("sent");
                assert_eq!(r.status().as_u16(), 200);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, webhook_changes_per_s);
criterion_main!(benches);
