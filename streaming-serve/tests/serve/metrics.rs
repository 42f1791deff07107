//! The serve streamer's metrics, rendered as `/metrics` renders the
//! registry and parsed with a Prometheus text parser.

use std::collections::BTreeMap;

use statestream::prometheus::{Encoder, TextEncoder};
use statestream_serve::proto::v1::subscribe_request::Start;
use statestream_serve::proto::v1::{self};

use crate::es::EventSource;
use crate::util::{Node, Received, client, read_until, runtime, subscribe_request};

/// `(metric, frontend)` to value, for the serve metrics of streamer `serve`.
fn scrape(node: &Node) -> BTreeMap<(String, String), f64> {
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&node.metrics.gather(), &mut text)
        .unwrap();
    let text = String::from_utf8(text).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the Prometheus text format");
    let mut out = BTreeMap::new();
    for sample in scrape.samples {
        if !sample.metric.starts_with("serve_") {
            continue;
        }
        assert_eq!(sample.labels.get("streamer"), Some("serve"));
        // The limit is the streamer's, not a front-end's: "" for none.
        let front_end = sample.labels.get("frontend").unwrap_or("").to_owned();
        let v = match sample.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            other => panic!("{}: {other:?}", sample.metric),
        };
        out.insert((sample.metric, front_end), v);
    }
    out
}

fn get(m: &BTreeMap<(String, String), f64>, name: &str, front_end: &str) -> f64 {
    *m.get(&(name.to_owned(), front_end.to_owned()))
        .unwrap_or_else(|| panic!("{name}{{frontend={front_end}}} missing: {m:?}"))
}

#[test]
fn subscribers_messages_and_bytes_by_front_end() {
    let mut node = Node::in_memory("http_address = \"127.0.0.1:0\"\nheartbeat_ms = 100\n");
    node.commit();
    let before = scrape(&node);
    for f in ["grpc", "sse"] {
        for name in [
            "serve_subscribers",
            "serve_messages_sent_total",
            "serve_bytes_sent_total",
            "serve_slow_disconnects_total",
        ] {
            assert_eq!(get(&before, name, f), 0.0, "{name} {f}");
        }
    }
    // max_subscribers (its default), once for all front-ends.
    assert_eq!(get(&before, "serve_max_subscribers", ""), 1024.0);
    assert_eq!(
        before
            .keys()
            .filter(|(name, _)| name == "serve_max_subscribers")
            .count(),
        1
    );

    // An SSE client: read the put and one block's events.
    let url = format!(
        "http://{}/stream",
        node.handle.http_address().expect("HTTP is on")
    );
    let source = EventSource::open(&url, &[]).unwrap();
    assert_eq!(source.next_event().unwrap().id, Some(1), "the put");
    node.commit();
    // Block 2's events carry the last id until its last one.
    while source.next_event().unwrap().id != Some(2) {}

    // A gRPC subscriber, live, reads one block.
    let rt = runtime();
    let address = node.address();
    let mut stream = rt.block_on(async {
        let mut c = client(&address).await;
        c.subscribe(subscribe_request(Start::Live(v1::StartLive {})))
            .await
            .unwrap()
            .into_inner()
    });
    crate::util::wait_for("two subscribers", || node.handle.hub().subscribers() == 2);
    node.commit();
    let mut received = Received::default();
    rt.block_on(read_until(&mut stream, &mut received, 3));

    let m = scrape(&node);
    for f in ["grpc", "sse"] {
        assert_eq!(get(&m, "serve_subscribers", f), 1.0, "{f}");
        assert!(get(&m, "serve_messages_sent_total", f) >= 1.0, "{f}");
        assert!(get(&m, "serve_bytes_sent_total", f) > 0.0, "{f}");
        assert_eq!(get(&m, "serve_slow_disconnects_total", f), 0.0);
    }
    // SSE: the put and blocks 2 and 3 (written once each).
    assert!(get(&m, "serve_messages_sent_total", "sse") >= 2.0);

    drop(stream);
    drop(source);
    crate::util::wait_for("no subscribers", || node.handle.hub().subscribers() == 0);
    let m = scrape(&node);
    for f in ["grpc", "sse"] {
        assert_eq!(get(&m, "serve_subscribers", f), 0.0, "{f}");
    }
    drop(rt);
    node.close();
}
