//! The server killed and restarted mid-run; the server down with
//! stop-node-on-error; configuration the server refuses.

use std::net::TcpListener;
use std::time::Duration;

use statestream::Error;
use statestream_nats::{StreamReader, replay_stream};
use statestream_store::{KvStore, StoreKey};

use crate::{
    app_toml, assert_every_message_whole, assert_exactly_once, commit_block, manager, memory_store,
    server, wait_delivered,
};

#[test]
fn faults_async_server_restart_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let Some(mut server) =
        server::start("faults_async_server_restart_loses_and_duplicates_nothing")
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

    server.kill();
    // Commits go on while the server is down; the streamer retries with
    // backoff and the blocks wait in the change log.
    for b in 11..=20 {
        commit_block(&mut m, &mut store, b)?;
    }
    crate::wait_for_within(
        "a failed delivery",
        std::time::Duration::from_secs(60),
        || m.stats()[0].errors > 0,
    );
    assert!(m.stats()[0].delivered_height < 20);

    server.restart();
    for b in 21..=25 {
        commit_block(&mut m, &mut store, b)?;
    }
    wait_delivered(&m, 25);
    m.close(&mut store)?;

    let client = server.client();
    assert_exactly_once(&client, "statestream", 25);
    let replay = replay_stream(&server.reader_config("statestream", "statestream"))?;
    assert_eq!(replay.height, 25);
    assert_eq!(replay.app_hash, store.last_commit().app_hash);
    Ok(())
}

#[test]
fn faults_sync_server_restart_catches_up_at_next_commit() -> anyhow::Result<()> {
    let Some(mut server) = server::start("faults_sync_server_restart_catches_up_at_next_commit")
    else {
        return Ok(());
    };
    let mut store = memory_store();
    let toml = app_toml(
        &server.url(),
        "delivery = \"sync\"\nstop-node-on-error = false",
    );
    let mut m = manager(&mut store, &toml)?;
    for b in 1..=8 {
        commit_block(&mut m, &mut store, b)?;
    }
    assert_eq!(m.stats()[0].delivered_height, 8);
    server.kill();
    for b in 9..=14 {
        commit_block(&mut m, &mut store, b)?;
    }
    let stats = &m.stats()[0];
    assert_eq!(stats.delivered_height, 8);
    assert!(stats.errors >= 6, "{stats:?}");
    let message = stats.last_error.clone().unwrap_or_default();
    assert!(message.contains("cannot publish block 9"), "{message}");
    assert!(
        message.contains("cannot connect to nats://127.0.0.1"),
        "{message}"
    );

    server.restart();
    for b in 15..=22 {
        commit_block(&mut m, &mut store, b)?;
    }
    assert_eq!(m.stats()[0].delivered_height, 22);
    m.close(&mut store)?;

    let client = server.client();
    assert_exactly_once(&client, "statestream", 22);
    let replay = replay_stream(&server.reader_config("statestream", "statestream"))?;
    assert_eq!(replay.app_hash, store.last_commit().app_hash);
    Ok(())
}

/// A loopback address where nothing listens.
fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    format!("nats://127.0.0.1:{port}")
}

#[test]
fn faults_sync_stop_node_on_error_halts_when_server_down() -> anyhow::Result<()> {
    // Needs no nats-server: nothing listens.
    let url = dead_url();
    let mut store = memory_store();
    let toml = app_toml(&url, "delivery = \"sync\"\nstop-node-on-error = true");
    let mut m = manager(&mut store, &toml)?;
    let err = commit_block(&mut m, &mut store, 1).expect_err("the node halts");
    assert!(matches!(err, Error::Halted { height: 1, .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("streamer \"nats\" failed at height 1"),
        "{text}"
    );
    assert!(
        text.contains("cannot publish block 1 to JetStream stream \"statestream\""),
        "{text}"
    );
    assert!(text.contains(&format!("cannot connect to {url}")), "{text}");
    assert!(text.contains("stop-node-on-error = true"), "{text}");
    // And it stays halted.
    let again = commit_block(&mut m, &mut store, 2).expect_err("still halted");
    assert!(matches!(again, Error::Halted { height: 1, .. }), "{again}");
    Ok(())
}

#[test]
fn faults_async_stop_node_on_error_halts_after_server_dies() -> anyhow::Result<()> {
    let Some(mut server) = server::start("faults_async_stop_node_on_error_halts_after_server_dies")
    else {
        return Ok(());
    };
    let mut store = memory_store();
    let mut m = manager(&mut store, &app_toml(&server.url(), ""))?;
    for b in 1..=5 {
        commit_block(&mut m, &mut store, b)?;
    }
    wait_delivered(&m, 5);
    server.kill();
    // The worker fails on the next block; the first commit after that
    // returns Halted.
    let mut halted = None;
    let mut b = 6;
    crate::wait_for_within(
        "the node to halt",
        std::time::Duration::from_secs(60),
        || match commit_block(&mut m, &mut store, b) {
            Ok(_) => {
                b += 1;
                false
            }
            Err(e) => {
                halted = Some(e);
                true
            }
        },
    );
    let err = halted.expect("halted");
    assert!(matches!(err, Error::Halted { height: 6, .. }), "{err}");
    assert!(err.to_string().contains("cannot connect to"), "{err}");
    assert_eq!(m.stats()[0].delivered_height, 5);
    Ok(())
}

#[test]
fn faults_missing_stream_without_create_stream() -> anyhow::Result<()> {
    let Some(server) = server::start("faults_missing_stream_without_create_stream") else {
        return Ok(());
    };
    let mut store = memory_store();
    let toml = app_toml(
        &server.url(),
        "delivery = \"sync\"\ncreate_stream = false\nstream = \"absent\"",
    );
    let mut m = manager(&mut store, &toml)?;
    let err = commit_block(&mut m, &mut store, 1).expect_err("no stream");
    let text = err.to_string();
    assert!(
        text.contains("stream \"absent\" does not exist and create_stream = false"),
        "{text}"
    );
    assert!(server.client().stream_info("absent")?.is_none());
    Ok(())
}

#[test]
fn faults_server_without_jetstream_is_a_clear_error() -> anyhow::Result<()> {
    let binary = server::nats_server_binary();
    if !statestream_test_support::require(
        "faults_server_without_jetstream_is_a_clear_error",
        "nats-server",
        binary.is_some(),
        "apt-get install -y nats-server",
    ) {
        return Ok(());
    }
    let Some(binary) = binary else {
        return Ok(());
    };
    // A plain server without -js, killed on drop.
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    drop(l);
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(
        std::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let url = format!("nats://127.0.0.1:{port}");
    crate::wait_for_within(
        "the plain server",
        std::time::Duration::from_secs(30),
        || server::Js::connect(&url, None, std::time::Duration::from_secs(1)).is_ok(),
    );
    let mut store = memory_store();
    let mut m = manager(&mut store, &app_toml(&url, "delivery = \"sync\""))?;
    let err = commit_block(&mut m, &mut store, 1).expect_err("no JetStream");
    assert!(
        err.to_string().contains("JetStream is not enabled"),
        "{err}"
    );
    Ok(())
}

#[test]
fn faults_token_and_password_authentication() -> anyhow::Result<()> {
    use crate::server::Auth;
    let Some(server) = server::start_conf(
        "faults_token_and_password_authentication",
        "authorization {\n  token: \"s3cret-token\"\n}\n",
        Some(Auth::Token("s3cret-token".into())),
    ) else {
        return Ok(());
    };
    // The right token.
    let mut store = memory_store();
    let toml = app_toml(
        &server.url(),
        "delivery = \"sync\"\ntoken = \"s3cret-token\"",
    );
    let mut m = manager(&mut store, &toml)?;
    for b in 1..=3 {
        commit_block(&mut m, &mut store, b)?;
    }
    m.close(&mut store)?;
    assert_exactly_once(&server.client(), "statestream", 3);

    // A wrong token: a clear error, the node stops.
    let mut store = memory_store();
    let toml = app_toml(&server.url(), "delivery = \"sync\"\ntoken = \"wrong\"");
    let mut m = manager(&mut store, &toml)?;
    let err = commit_block(&mut m, &mut store, 1).expect_err("refused");
    assert!(err.to_string().contains("Authorization Violation"), "{err}");
    assert!(!err.to_string().contains("wrong"), "the token leaks: {err}");

    // User and password, in the options or in the URL.
    let Some(server) = server::start_conf(
        "faults_token_and_password_authentication",
        "authorization {\n  user: alice\n  password: \"pa55\"\n}\n",
        Some(Auth::User("alice".into(), "pa55".into())),
    ) else {
        return Ok(());
    };
    let url_with_creds = server.url().replace("nats://", "nats://alice:pa55@");
    for (url, extra) in [
        (server.url(), "user = \"alice\"\npassword = \"pa55\""),
        (url_with_creds, ""),
    ] {
        let mut store = memory_store();
        let toml = app_toml(&url, &format!("delivery = \"sync\"\n{extra}"));
        let mut m = manager(&mut store, &toml)?;
        for b in 1..=2 {
            commit_block(&mut m, &mut store, b)?;
        }
        m.close(&mut store)?;
    }
    // Both runs published blocks 1 and 2: the second was deduplicated.
    assert_exactly_once(&server.client(), "statestream", 2);
    let mut store = memory_store();
    let toml = app_toml(
        &server.url(),
        "delivery = \"sync\"\nuser = \"alice\"\npassword = \"nope\"",
    );
    let mut m = manager(&mut store, &toml)?;
    let err = commit_block(&mut m, &mut store, 1).expect_err("refused");
    assert!(err.to_string().contains("Authorization Violation"), "{err}");
    assert!(
        err.to_string().contains("user and password"),
        "names the method: {err}"
    );
    assert!(
        !err.to_string().contains("nope"),
        "the password leaks: {err}"
    );
    Ok(())
}

#[test]
fn faults_idle_connection_is_kept_alive_and_reopened() -> anyhow::Result<()> {
    // The server pings every 100 ms and drops a client that misses one
    // PONG. The client's connection task answers between blocks, so an
    // idle streamer keeps its connection (the hand-written client lost
    // it); and a connection the server closes (a restart) comes back
    // without a delivery error, even with stop-node-on-error.
    let Some(mut server) = server::start_conf(
        "faults_idle_connection_is_kept_alive_and_reopened",
        "ping_interval: \"100ms\"\nping_max: 1\ndebug: true\n",
        None,
    ) else {
        return Ok(());
    };
    let mut store = memory_store();
    let toml = app_toml(
        &server.url(),
        "delivery = \"sync\"\nstop-node-on-error = true",
    );
    let mut m = manager(&mut store, &toml)?;
    commit_block(&mut m, &mut store, 1)?;
    // Idle for many of the server's ping intervals.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    for b in 2..=4 {
        commit_block(&mut m, &mut store, b)?;
    }
    assert!(
        !server.log().contains("Stale Client Connection"),
        "the server dropped the idle client:\n{}",
        server.log()
    );
    server.restart();
    for b in 5..=6 {
        commit_block(&mut m, &mut store, b)?;
    }
    assert_eq!(m.stats()[0].errors, 0);
    m.close(&mut store)?;
    assert_exactly_once(&server.client(), "statestream", 6);
    Ok(())
}

#[test]
fn faults_silent_server_times_out() -> anyhow::Result<()> {
    // Needs no nats-server: a listener that accepts and never speaks.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("nats://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let mut store = memory_store();
    let toml = format!(
        "[store]\nstreamers = [\"nats\"]\n\n[streamers.nats]\ntype = \"nats\"\nkeys = [\"*\"]\n\
         url = \"{url}\"\nconnect_timeout_ms = 300\ndelivery = \"sync\"\n"
    );
    let mut m = manager(&mut store, &toml)?;
    let err = commit_block(&mut m, &mut store, 1).expect_err("timeout");
    assert!(matches!(err, Error::Halted { height: 1, .. }), "{err}");
    assert!(
        err.to_string()
            .contains("no answer to the server's INFO within 300 ms"),
        "{err}"
    );
    Ok(())
}

#[test]
fn faults_close_ends_the_wait_for_a_reconnection() -> anyhow::Result<()> {
    // A block that finds the connection lost waits for the reconnection
    // up to connect_timeout_ms (here ten minutes); closing the manager
    // triggers the context's Shutdown, which ends that wait: close
    // returns, the block stays in the change log.
    let Some(mut server) = server::start("faults_close_ends_the_wait_for_a_reconnection") else {
        return Ok(());
    };
    let mut store = memory_store();
    let toml = format!(
        "[store]\nstreamers = [\"nats\"]\n\n[streamers.nats]\ntype = \"nats\"\nkeys = [\"*\"]\n\
         url = \"{}\"\nconnect_timeout_ms = 600000\nstop-node-on-error = false\n",
        server.url()
    );
    let mut m = manager(&mut store, &toml)?;
    for b in 1..=3 {
        commit_block(&mut m, &mut store, b)?;
    }
    wait_delivered(&m, 3);
    server.kill();
    commit_block(&mut m, &mut store, 4)?;
    m.close(&mut store)?;
    assert_eq!(store.cursor("nats")?, Some(3));
    Ok(())
}

#[test]
fn faults_subject_of_another_stream_is_refused_not_stored() -> anyhow::Result<()> {
    // The configured stream exists but does not capture the blocks
    // subject; another stream does. Nats-Expected-Stream makes JetStream
    // refuse the block instead of storing it in the wrong stream.
    let Some(server) = server::start("faults_subject_of_another_stream_is_refused_not_stored")
    else {
        return Ok(());
    };
    let client = server.client();
    client.create_stream("statestream", vec!["elsewhere.blocks".into()], 1)?;
    client.create_stream("other", vec!["statestream.blocks".into()], 1)?;
    let mut store = memory_store();
    let toml = app_toml(&server.url(), "delivery = \"sync\"");
    let mut m = manager(&mut store, &toml)?;
    let err = commit_block(&mut m, &mut store, 1).expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("is not captured by the configured stream \"statestream\""),
        "{text}"
    );
    let other = client.stream_info("other")?.expect("stream other");
    assert_eq!(other.state.messages, 0, "stored in the wrong stream");
    Ok(())
}

#[test]
fn faults_server_killed_during_publishes_stores_whole_blocks() -> anyhow::Result<()> {
    // The server is killed (SIGKILL) while the streamer is publishing: a
    // backlog of blocks keeps it busy, so the kill lands inside a publish,
    // and the server stays down longer than request_timeout_ms, so the
    // publish fails while the client is disconnected and the streamer
    // retries it after the reconnection. Several cycles. Every message
    // the stream then holds must be a whole block (a retry once published
    // an empty payload under the block's headers, which JetStream
    // acknowledged), and the reader must return the node's blocks.
    let Some(mut server) =
        server::start("faults_server_killed_during_publishes_stores_whole_blocks")
    else {
        return Ok(());
    };
    let mut store = memory_store();
    let toml = format!(
        "[store]\nstreamers = [\"nats\"]\n\n[streamers.nats]\ntype = \"nats\"\nkeys = [\"*\"]\n\
         url = \"{}\"\nconnect_timeout_ms = 10000\nrequest_timeout_ms = 1000\n\
         stop-node-on-error = false\n",
        server.url()
    );
    let mut m = manager(&mut store, &toml)?;
    // The app hash the node committed at each height.
    let mut app_hashes = std::collections::BTreeMap::new();
    fn commit(
        m: &mut statestream::DeliveryManager,
        store: &mut statestream_store::MultiStore,
        app_hashes: &mut std::collections::BTreeMap<u64, statestream_store::Hash>,
        count: u64,
    ) -> anyhow::Result<()> {
        let bank = StoreKey::new("bank")?;
        for _ in 0..count {
            let b = app_hashes.len() as u64 + 1;
            // Large blocks (some over the server's 1 MiB max_payload, so
            // split): a publish takes long enough on the wire that the
            // kill lands inside one, with the message lost.
            let len = if b.is_multiple_of(7) {
                1_500_000
            } else {
                150_000 + (b as usize % 5) * 40_000
            };
            let mut value = vec![b as u8; len];
            value[..8].copy_from_slice(&b.to_be_bytes());
            store.set(&bank, format!("big-{}", b % 3).as_bytes(), &value)?;
            let info = commit_block(m, store, b)?;
            app_hashes.insert(b, info.app_hash);
        }
        Ok(())
    }
    for cycle in 0..5u64 {
        let first = app_hashes.len() as u64 + 1;
        commit(&mut m, &mut store, &mut app_hashes, 40)?;
        // Kill while the streamer works through the backlog, at a
        // different block each cycle.
        let target = first + 4 + cycle * 5;
        crate::wait_for_within(
            &format!("delivery of block {target}"),
            Duration::from_secs(60),
            || m.stats()[0].delivered_height >= target,
        );
        server.kill();
        commit(&mut m, &mut store, &mut app_hashes, 10)?;
        // Down for longer than request_timeout_ms: the publish under way
        // fails while the client is disconnected.
        std::thread::sleep(Duration::from_millis(1600));
        server.restart();
    }
    commit(&mut m, &mut store, &mut app_hashes, 5)?;
    let last = app_hashes.len() as u64;
    wait_delivered(&m, last);
    m.close(&mut store)?;

    let client = server.client();
    let frames = assert_every_message_whole(&client, "statestream", "statestream");
    assert_eq!(
        frames.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>(),
        "blocks in the stream"
    );
    let blocks: Vec<_> = StreamReader::open(&server.reader_config("statestream", "statestream"))?
        .collect::<Result<_, _>>()?;
    assert_eq!(
        blocks.iter().map(|b| b.height).collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>()
    );
    for block in &blocks {
        let commit = block
            .frame
            .meta
            .as_ref()
            .and_then(|meta| meta.commit.as_ref())
            .expect("commit info in the frame");
        assert_eq!(
            commit.app_hash.as_slice(),
            app_hashes[&block.height].as_slice(),
            "app hash of block {}",
            block.height
        );
        assert_eq!(frames[&block.height], block.frame, "block {}", block.height);
    }
    let replay = replay_stream(&server.reader_config("statestream", "statestream"))?;
    assert_eq!(replay.height, last);
    assert_eq!(replay.app_hash, store.last_commit().app_hash);
    Ok(())
}
