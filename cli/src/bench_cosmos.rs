//! `cosmos_plugin_commit_ms`: the `ListenCommit` latency a Cosmos chain
//! waits for at every block, seen by a host of `statestream cosmos-plugin`
//! (this binary, over go-plugin's TCP transport), against a commit of the
//! same change set on the store alone, blocks interleaved in one run.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use prost::Message as _;
use statestream_store::{CommitInput, KvStore, MultiStore, StoreKey, StoreOptions};

use super::{Figure, KEY_LEN, Sizes, VALUE_LEN, quantile};
use crate::cosmos::pb;
use crate::cosmos::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE};
use crate::workload::Rng;
use pb::cosmos::store::streaming::abci::abci_listener_service_client::AbciListenerServiceClient;
use pb::cosmos::store::streaming::abci::{ListenCommitRequest, ListenFinalizeBlockRequest};
use pb::cosmos::store::v1beta1::StoreKvPair;
use pb::plugin::grpc_controller_client::GrpcControllerClient;

/// Blocks per run: enough samples for a p99.
fn blocks(sizes: &Sizes) -> u64 {
    sizes.commit_blocks * 8
}

pub(super) fn commit_ms(sizes: &Sizes, stores: &[StoreKey], tmp: &Path) -> Result<Vec<Figure>> {
    let home = tmp.join("plugin");
    std::fs::create_dir_all(home.join("config"))?;
    // No streamers: what is measured is the plugin's own path, the gRPC
    // hop, decoding and the replica's durable commit.
    std::fs::write(home.join("config/app.toml"), "[store]\nstreamers = []\n")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port()
        .to_string();
    let mut child = Command::new(std::env::current_exe()?)
        .args(["-q", "cosmos-plugin", "--home"])
        .arg(&home)
        .env(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
        .env("PLUGIN_MIN_PORT", &port)
        .env("PLUGIN_MAX_PORT", &port)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start cosmos-plugin")?;
    let result = measure(sizes, stores, tmp, &mut child);
    if result.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    result
}

fn measure(
    sizes: &Sizes,
    stores: &[StoreKey],
    tmp: &Path,
    child: &mut std::process::Child,
) -> Result<Vec<Figure>> {
    let mut line = String::new();
    let stdout = child.stdout.take().context("no stdout")?;
    BufReader::new(stdout).read_line(&mut line)?;
    let parts: Vec<&str> = line.trim_end().split('|').collect();
    let [_, _, "tcp", address, "grpc"] = parts.as_slice() else {
        bail!("unexpected handshake line from cosmos-plugin: {line:?}");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let endpoint = format!("http://{address}");
    let (mut abci, mut controller) = runtime.block_on(async {
        let abci = AbciListenerServiceClient::connect(endpoint.clone()).await?;
        let controller = GrpcControllerClient::connect(endpoint).await?;
        Ok::<_, tonic::transport::Error>((abci, controller))
    })?;

    let mut alone = MultiStore::open(&tmp.join("alone.redb"), stores, StoreOptions::default())?;
    let mut rng = Rng::new(26);
    let (mut plugin_ms, mut alone_ms) = (Vec::new(), Vec::new());
    for height in 1..=blocks(sizes) {
        let mut changes = Vec::with_capacity(sizes.writes);
        for _ in 0..sizes.writes {
            let store = &stores[(rng.next() % stores.len() as u64) as usize];
            let mut key = vec![0u8; KEY_LEN];
            rng.fill(&mut key);
            let mut value = vec![0u8; VALUE_LEN];
            rng.fill(&mut value);
            changes.push(StoreKvPair {
                store_key: store.name().to_owned(),
                delete: false,
                key,
                value,
            });
        }
        let req = pb::tendermint::abci::RequestFinalizeBlock {
            height: i64::try_from(height)?,
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + i64::try_from(height)?,
                nanos: 0,
            }),
        }
        .encode_to_vec();
        let res = pb::tendermint::abci::ResponseFinalizeBlock {
            app_hash: vec![7; 32],
        }
        .encode_to_vec();

        // The store alone: the same writes, and metadata of the same size.
        let meta = statestream::BlockMeta {
            begin_block: req.clone(),
            end_block: res.clone(),
            source_app_hash: vec![7; 32],
            ..statestream::BlockMeta::default()
        };
        let started = Instant::now();
        for c in &changes {
            let store = StoreKey::new(&c.store_key)?;
            alone.write_owned(&store, c.key.clone(), Some(c.value.clone()))?;
        }
        alone.commit_block(CommitInput::new().app_meta(meta.encode_app_meta()))?;
        alone_ms.push(started.elapsed().as_secs_f64() * 1000.0);

        runtime.block_on(abci.listen_finalize_block(ListenFinalizeBlockRequest { req, res }))?;
        let request = ListenCommitRequest {
            block_height: i64::try_from(height)?,
            res: Vec::new(),
            change_set: changes,
        };
        let started = Instant::now();
        runtime.block_on(abci.listen_commit(request))?;
        plugin_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    runtime.block_on(controller.shutdown(pb::plugin::Empty {}))?;
    alone.close()?;
    let mut out = Vec::new();
    for (name, p) in [
        ("cosmos_plugin_commit_ms_p50", 0.5),
        ("cosmos_plugin_commit_ms_p99", 0.99),
    ] {
        let value = quantile(&plugin_ms, p);
        let baseline = quantile(&alone_ms, p);
        out.push(Figure {
            name,
            value,
            unit: "ms",
            ratio: Some(value / baseline),
            ratio_quartiles: None,
            baseline: Some(baseline),
        });
    }
    Ok(out)
}
