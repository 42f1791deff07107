//! `statestream cosmos-plugin --home DIR`: a Cosmos SDK (v0.50+) ABCI
//! listener plugin. The chain's node launches it with hashicorp's go-plugin
//! and calls it over gRPC for every block; each block goes through the
//! ingest pipeline into the replica store under HOME, then to the streamers
//! of HOME/config/app.toml, as on a node. See docs/cosmos.md.
//!
//! go-plugin's contract: the magic cookie in the environment, one handshake
//! line on stdout (and nothing else there, ever: logs go to stderr, which
//! go-plugin forwards), the health service reporting `plugin` SERVING, and
//! `plugin.GRPCController/Shutdown`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use prost::Message as _;
use statestream::{
    BlockMeta, Error as StreamError, Ingest, Ingested, OnGap, SourceBlock, SourceWrite,
};
use statestream_config::GapPolicy;
use statestream_store::{KvStore, MultiStore};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::node::ConfigSource;
use crate::replica;

/// The generated gRPC code, one module per protobuf package (the generated
/// code refers to other packages by relative paths).
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
pub mod pb {
    pub mod cosmos {
        pub mod store {
            pub mod v1beta1 {
                tonic::include_proto!("cosmos.store.v1beta1");
            }
            pub mod streaming {
                pub mod abci {
                    tonic::include_proto!("cosmos.store.streaming.abci");
                }
            }
        }
    }
    pub mod tendermint {
        pub mod abci {
            tonic::include_proto!("tendermint.abci");
        }
        pub mod types {
            tonic::include_proto!("tendermint.types");
        }
    }
    pub mod plugin {
        tonic::include_proto!("plugin");
    }
}

use pb::cosmos::store::streaming::abci::abci_listener_service_server::{
    AbciListenerService, AbciListenerServiceServer,
};
use pb::cosmos::store::streaming::abci::{
    ListenCommitRequest, ListenCommitResponse, ListenFinalizeBlockRequest,
    ListenFinalizeBlockResponse,
};
use pb::plugin::grpc_controller_server::{GrpcController, GrpcControllerServer};

/// The Cosmos SDK's go-plugin handshake: the cookie's name and value.
pub const MAGIC_COOKIE_KEY: &str = "ABCI_LISTENER_PLUGIN";
pub const MAGIC_COOKIE_VALUE: &str = "ef78114d-7bdf-411c-868f-347c99a78345";
/// go-plugin's core protocol version and the SDK's application protocol
/// version.
const CORE_PROTOCOL: u32 = 1;
const APP_PROTOCOL: u32 = 1;

#[derive(Debug, clap::Args)]
pub struct CosmosPluginArgs {
    /// The plugin's home: its configuration is HOME/config/app.toml (as
    /// for `statestream node`: `[store] streamers`, `[streamers.*]`,
    /// `[cosmos] on_gap`), the replica store HOME/data/store.redb. Created
    /// when missing.
    #[arg(long, value_name = "DIR")]
    home: PathBuf,
}

pub fn run(args: CosmosPluginArgs) -> Result<ExitCode> {
    if std::env::var(MAGIC_COOKIE_KEY).ok().as_deref() != Some(MAGIC_COOKIE_VALUE) {
        let _ = writeln!(
            std::io::stderr().lock(),
            "statestream cosmos-plugin: this is a Cosmos SDK ABCI listener plugin, meant to be \
             launched by a Cosmos node (set COSMOS_SDK_ABCI=\"statestream cosmos-plugin --home \
             DIR\" in the node's environment and [streaming.abci] plugin = \"abci\" in its \
             app.toml), not run by hand"
        );
        return Ok(ExitCode::from(1));
    }
    let state = open(&args.home)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("cosmos-plugin")
        .build()
        .context("cannot start the plugin's runtime")?;
    runtime.block_on(serve(state))?;
    Ok(ExitCode::SUCCESS)
}

/// The plugin's state, behind one lock: the pipeline and the telemetry
/// server that shows its streamers. `statestream ingest-files` runs on the
/// same state.
pub(crate) struct State {
    pub(crate) ingest: Ingest,
    telemetry: Option<replica::Telemetry>,
    /// `[admin]`: the replica's credentials over HTTP.
    admin: Option<statestream_admin::AdminServer>,
}

impl State {
    /// Closes the streamers and the store, then stops the telemetry server
    /// and the admin API.
    pub(crate) fn close(mut self) -> statestream::Result<()> {
        let closed = self.ingest.close();
        if let Some(t) = self.telemetry.as_mut() {
            t.stop();
        }
        if let Some(admin) = self.admin.take() {
            admin.stop();
        }
        closed
    }

    /// After each block: the telemetry server shows the current streamers
    /// (started again on new stores, a gap); the pipeline's own metrics and
    /// `/status` section come with their observer.
    pub(crate) fn refresh(&mut self) {
        if let Some(t) = self.telemetry.as_mut() {
            t.follow(&self.ingest);
        }
    }
}

/// Opens the replica and the pipeline, with the streamers of the home's
/// configuration.
pub(crate) fn open(home: &Path) -> Result<State> {
    let source = ConfigSource::locate(None, home);
    info!(config = %source.origin().display(), "{}", source.describe());
    let config = source.load()?;
    let on_gap = match config.cosmos().on_gap {
        GapPolicy::Halt => OnGap::Halt,
        _ => OnGap::Continue,
    };
    // Stores a streamer names exist from the start, so that it can start
    // before the chain first writes them.
    // An fsync per block: the chain hands each block over once.
    let store = replica::open_store(home, &config.named_stores(), true)?;
    let credentials = replica::credentials(&store)?;
    // Credentials managed while the replica runs; no subscriptions here
    // (docs/admin.md).
    let admin = crate::admin::start_admin(&config, home, Some(credentials.clone()), None)?;
    let registry = crate::node::registry();
    let telemetry = config
        .telemetry()
        .map(|t| replica::Telemetry::new(t, home, registry.metrics().clone()));
    let home_dir = home.to_path_buf();
    let start = Box::new(move |store: &mut MultiStore| {
        replica::start_manager(store, &config, &registry, &home_dir, &credentials, None)
    });
    info!(height = store.version(), stores = store.stores().len(), on_gap = ?on_gap,
        "replica opened");
    let mut state = State {
        ingest: Ingest::new(store, start, on_gap)?,
        telemetry,
        admin,
    };
    state.refresh();
    Ok(state)
}

/// Where the plugin listens: a unix socket, or loopback TCP within
/// go-plugin's port range when the host sets one.
enum Listener {
    Unix(tokio::net::UnixListener, PathBuf),
    Tcp(tokio::net::TcpListener),
}

fn port_range() -> Result<Option<(u16, u16)>> {
    let (Ok(min), Ok(max)) = (
        std::env::var("PLUGIN_MIN_PORT"),
        std::env::var("PLUGIN_MAX_PORT"),
    ) else {
        return Ok(None);
    };
    let parse = |name: &str, v: &str| {
        v.trim()
            .parse::<u16>()
            .with_context(|| format!("{name}={v:?} is not a port number"))
    };
    let (min, max) = (
        parse("PLUGIN_MIN_PORT", &min)?,
        parse("PLUGIN_MAX_PORT", &max)?,
    );
    if min > max {
        bail!("PLUGIN_MIN_PORT {min} is above PLUGIN_MAX_PORT {max}");
    }
    Ok(Some((min, max)))
}

async fn listen() -> Result<(Listener, String)> {
    if let Some((min, max)) = port_range()? {
        for port in min..=max {
            if let Ok(l) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                let addr = l.local_addr()?;
                return Ok((Listener::Tcp(l), format!("tcp|{addr}")));
            }
        }
        bail!("no free port on 127.0.0.1 within PLUGIN_MIN_PORT..PLUGIN_MAX_PORT ({min}..{max})");
    }
    let dir = std::env::var_os("PLUGIN_UNIX_SOCKET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("statestream-plugin-{}.sock", std::process::id()));
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
    let l = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on the unix socket {}", path.display()))?;
    let line = format!("unix|{}", path.display());
    Ok((Listener::Unix(l, path), line))
}

/// The plugin's state, shared by the handlers; `None` once shut down.
type Shared = Arc<Mutex<Option<State>>>;

async fn serve(state: State) -> Result<()> {
    let (listener, address) = listen().await?;
    let shared: Shared = Arc::new(Mutex::new(Some(state)));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("plugin", tonic_health::ServingStatus::Serving)
        .await;
    let router = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(GrpcControllerServer::new(Controller {
            ingest: Arc::clone(&shared),
            stop: Mutex::new(Some(stop_tx)),
        }))
        .add_service(AbciListenerServiceServer::new(AbciListener {
            ingest: Arc::clone(&shared),
            finalized: Mutex::new(None),
        }));
    // Before the handshake: from then on the host may signal the plugin.
    let terminated = watch_signals()?;
    // The one line go-plugin reads; stdout carries nothing else.
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{CORE_PROTOCOL}|{APP_PROTOCOL}|{address}|grpc")
            .and_then(|()| out.flush())
            .context("cannot write the handshake line on stdout")?;
    }
    info!(address = %address, "cosmos-plugin: listening");
    let stopped = async {
        tokio::select! {
            _ = stop_rx => {}
            _ = terminated => info!("cosmos-plugin: SIGTERM: closing the pipeline"),
        }
    };
    let served = match listener {
        Listener::Unix(l, path) => {
            let r = router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(l),
                    stopped,
                )
                .await;
            let _ = std::fs::remove_file(&path);
            r
        }
        Listener::Tcp(l) => {
            router
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true)),
                    stopped,
                )
                .await
        }
    };
    served.context("the plugin's gRPC server failed")?;
    // Shut down by the host: the controller closed the pipeline already.
    // Served without a Shutdown call (not expected): close it here.
    let rest = shared.lock().ok().and_then(|mut g| g.take());
    if let Some(state) = rest {
        tokio::task::spawn_blocking(move || state.close())
            .await
            .context("closing the pipeline panicked")??;
    }
    info!("cosmos-plugin: stopped");
    Ok(())
}

/// The plugin's signals, on a thread of their own:
/// - SIGINT is ignored, as go-plugin's own plugins do: a Ctrl-C in the
///   node's terminal reaches the whole process group, and the host stops
///   the plugin itself (`Shutdown`) after its last block. A plugin gone
///   first would fail the node's next `ListenCommit`.
/// - SIGHUP re-reads the TLS listeners' certificates, as for the node.
/// - SIGTERM closes the pipeline (the streamers flushed, the store closed)
///   and exits 0, as `Shutdown` does; a second one exits at once.
fn watch_signals() -> Result<tokio::sync::oneshot::Receiver<()>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("cannot install the signal handlers")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            for signal in signals.forever() {
                match signal {
                    SIGHUP => {
                        let outcome = statestream_net::reload_all();
                        info!(
                            reloaded = outcome.reloaded,
                            failed = outcome.failed,
                            "SIGHUP: TLS certificates re-read"
                        );
                    }
                    SIGINT => info!("cosmos-plugin: SIGINT ignored (the node stops the plugin)"),
                    _ => match tx.take() {
                        Some(tx) => {
                            let _ = tx.send(());
                        }
                        None => {
                            let _ = writeln!(
                                std::io::stderr().lock(),
                                "statestream cosmos-plugin: second SIGTERM: exiting at once \
                                 (every block answered is in the replica)"
                            );
                            std::process::exit(i32::from(crate::node::EXIT_SECOND_SIGNAL));
                        }
                    },
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(rx)
}

/// go-plugin's controller: `Shutdown` flushes the streamers and closes
/// the store, answers, then stops the server.
struct Controller {
    ingest: Shared,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(
        &self,
        _request: Request<pb::plugin::Empty>,
    ) -> Result<Response<pb::plugin::Empty>, Status> {
        info!("cosmos-plugin: shutdown requested by the host");
        let ingest = Arc::clone(&self.ingest);
        let closed = tokio::task::spawn_blocking(move || {
            let taken = ingest.lock().ok().and_then(|mut g| g.take());
            taken.map(State::close).transpose()
        })
        .await;
        if let Some(stop) = self.stop.lock().ok().and_then(|mut g| g.take()) {
            let _ = stop.send(());
        }
        match closed {
            Ok(Ok(_)) => Ok(Response::new(pb::plugin::Empty {})),
            Ok(Err(e)) => {
                warn!(error = %e, "cosmos-plugin: closing the streamers failed");
                Err(Status::internal(format!(
                    "closing the streamers failed: {e}"
                )))
            }
            Err(e) => Err(Status::internal(format!("closing panicked: {e}"))),
        }
    }
}

/// What `ListenFinalizeBlock` gave, kept for the `ListenCommit` of the
/// same height.
struct Finalized {
    height: i64,
    meta: BlockMeta,
}

struct AbciListener {
    ingest: Shared,
    finalized: Mutex<Option<Finalized>>,
}

#[tonic::async_trait]
impl AbciListenerService for AbciListener {
    async fn listen_finalize_block(
        &self,
        request: Request<ListenFinalizeBlockRequest>,
    ) -> Result<Response<ListenFinalizeBlockResponse>, Status> {
        let ListenFinalizeBlockRequest { req, res } = request.into_inner();
        let decoded_req = pb::tendermint::abci::RequestFinalizeBlock::decode(req.as_slice())
            .map_err(|e| {
                Status::invalid_argument(format!("RequestFinalizeBlock does not decode: {e}"))
            })?;
        let decoded_res = pb::tendermint::abci::ResponseFinalizeBlock::decode(res.as_slice())
            .map_err(|e| {
                Status::invalid_argument(format!("ResponseFinalizeBlock does not decode: {e}"))
            })?;
        if decoded_req.height <= 0 {
            return Err(Status::invalid_argument(format!(
                "RequestFinalizeBlock.height is {}",
                decoded_req.height
            )));
        }
        let time = decoded_req.time.unwrap_or_default();
        let meta = BlockMeta {
            time_seconds: time.seconds,
            time_nanos: u32::try_from(time.nanos).unwrap_or(0),
            begin_block: req,
            end_block: res,
            source_app_hash: decoded_res.app_hash,
            ..BlockMeta::default()
        };
        if let Ok(mut f) = self.finalized.lock() {
            *f = Some(Finalized {
                height: decoded_req.height,
                meta,
            });
        }
        Ok(Response::new(ListenFinalizeBlockResponse {}))
    }

    async fn listen_commit(
        &self,
        request: Request<ListenCommitRequest>,
    ) -> Result<Response<ListenCommitResponse>, Status> {
        let request = request.into_inner();
        let height = u64::try_from(request.block_height)
            .ok()
            .filter(|h| *h > 0)
            .ok_or_else(|| {
                Status::invalid_argument(format!("block_height is {}", request.block_height))
            })?;
        let finalized = self.finalized.lock().ok().and_then(|mut f| f.take());
        let meta = match finalized {
            Some(f) if f.height == request.block_height => f.meta,
            other => {
                // The host calls ListenFinalizeBlock first; a plugin
                // restarted between the two calls did not get it.
                warn!(height, finalized = ?other.map(|f| f.height),
                    "ListenCommit without the ListenFinalizeBlock of its height: \
                     the block's metadata (time, app hash, payloads) is empty");
                BlockMeta::default()
            }
        };
        let writes = request
            .change_set
            .into_iter()
            .map(|kv| SourceWrite {
                store: kv.store_key,
                key: kv.key,
                value: (!kv.delete).then_some(kv.value),
            })
            .collect();
        let block = SourceBlock {
            height,
            meta,
            writes,
        };
        let ingest = Arc::clone(&self.ingest);
        let done = tokio::task::spawn_blocking(move || {
            let mut guard = ingest
                .lock()
                .map_err(|_| Status::internal("the pipeline is unusable after a panic"))?;
            let Some(state) = guard.as_mut() else {
                return Err(Status::unavailable("the plugin is shutting down"));
            };
            let done = state.ingest.commit(block);
            state.refresh();
            done.map_err(|e| {
                warn!(height, error = %e, "block not taken");
                match e {
                    StreamError::SourceGap { .. } | StreamError::SourceDiverged { .. } => {
                        Status::failed_precondition(e.to_string())
                    }
                    StreamError::BadSourceBlock { .. } => Status::invalid_argument(e.to_string()),
                    e => Status::internal(e.to_string()),
                }
            })
        })
        .await
        .map_err(|e| Status::internal(format!("the commit panicked: {e}")))??;
        match done {
            Ingested::Committed(info) => {
                tracing::debug!(height = info.version, "block committed");
            }
            Ingested::Replayed { .. } => {}
            _ => {}
        }
        Ok(Response::new(ListenCommitResponse {}))
    }
}
