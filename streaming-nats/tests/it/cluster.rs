//! A JetStream cluster: the first URL of the list is down; a server the
//! client was not configured with, learnt from the cluster, takes over.

use statestream_nats::replay_stream;

use crate::server::{self, NatsServer};
use crate::{app_toml, assert_exactly_once, commit_block, manager, memory_store, wait_delivered};

/// Three JetStream servers in one cluster (a stream with 3 replicas
/// survives one of them going down), started and ready.
fn cluster(test: &str) -> Option<Vec<NatsServer>> {
    let routes = [
        server::free_port(),
        server::free_port(),
        server::free_port(),
    ];
    let mut servers = Vec::new();
    for (i, listen) in routes.iter().enumerate() {
        let others: Vec<String> = routes
            .iter()
            .filter(|p| *p != listen)
            .map(|p| format!("\"nats://127.0.0.1:{p}\""))
            .collect();
        let conf = format!(
            "server_name: s{i}\ncluster {{\n  name: statestream-test\n  listen: \"127.0.0.1:{listen}\"\n  \
             routes: [{}]\n}}\n",
            others.join(", ")
        );
        servers.push(server::start_full(test, &conf, None, true, false)?);
    }
    // The JetStream meta group needs a quorum: start all, then wait.
    for s in &mut servers {
        s.spawn();
    }
    for s in &mut servers {
        s.wait_ready();
    }
    Some(servers)
}

#[test]
fn cluster_first_url_down_and_discovered_server_takes_over() -> anyhow::Result<()> {
    let Some(mut servers) = cluster("cluster_first_url_down_and_discovered_server_takes_over")
    else {
        return Ok(());
    };
    // Both streams are made while every server is up (with replicas in a
    // degraded cluster that can take the meta leader longer than a
    // request timeout).
    let client = servers[2].client();
    client.create_stream("statestream", vec!["statestream.blocks".into()], 3)?;
    client.create_stream("second", vec!["second.blocks".into()], 3)?;

    // Only the first server is configured: the client learns the others
    // from the cluster and moves to one of them when the first goes down.
    let mut store = memory_store();
    let toml = app_toml(&servers[0].url(), "stop-node-on-error = false");
    let mut m = manager(&mut store, &toml)?;
    for n in 1..=10 {
        commit_block(&mut m, &mut store, n)?;
    }
    wait_delivered(&m, 10);
    servers[0].kill();
    for n in 11..=20 {
        commit_block(&mut m, &mut store, n)?;
    }
    wait_delivered(&m, 20);
    m.close(&mut store)?;
    assert_exactly_once(&client, "statestream", 20);

    // The first URL of the list is down (it stays so): the next one is
    // used. Once JetStream has its leaders again (its business, not the
    // streamer's), no delivery fails.
    crate::wait_for_within(
        "JetStream leaders after the loss of a server",
        std::time::Duration::from_secs(60),
        || client.stream_info("second").is_ok_and(|i| i.is_some()),
    );
    let url = format!("{},{}", servers[0].url(), servers[2].url());
    let mut second = memory_store();
    let toml = app_toml(
        &url,
        "delivery = \"sync\"\nstream = \"second\"\nsubject = \"second\"\ncreate_stream = false",
    );
    let mut m = manager(&mut second, &toml)?;
    for n in 1..=6 {
        commit_block(&mut m, &mut second, n)?;
    }
    assert_eq!(m.stats()[0].errors, 0);
    m.close(&mut second)?;
    assert_exactly_once_in(&client, "second", 6);

    // The reader takes the same list of servers.
    let mut config = servers[2].reader_config("second", "second");
    config.url = url;
    let want = second.last_commit().app_hash;
    crate::wait_for_within(
        "the replay through the cluster",
        std::time::Duration::from_secs(60),
        || replay_stream(&config).is_ok_and(|r| r.height == 6 && r.app_hash == want),
    );
    Ok(())
}

/// Like [`assert_exactly_once`], for a stream whose subject prefix is its
/// name.
fn assert_exactly_once_in(client: &crate::server::Js, stream: &str, n: u64) {
    let heights: Vec<u64> = crate::raw_messages(client, stream, stream)
        .iter()
        .map(|r| r.height)
        .collect();
    assert_eq!(heights, (1..=n).collect::<Vec<_>>());
}
