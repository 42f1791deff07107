//! Where a relay's blocks come from: the [`Upstream`] trait (what the relay
//! loop asks of any source) and [`GrpcUpstream`], a `serve` streamer's
//! `statestream.v1.StateStream` followed through the client crate's
//! `ResumableSubscription`.
//!
//! Another source (a JetStream stream a node's `nats` streamer writes)
//! implements [`Upstream`] and gives the same [`UpstreamEvent`]s: whole
//! blocks at the source's heights with the hashes the source committed
//! them with, and snapshots when it can take them. The relay checks and
//! commits them the same way whatever the source.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use statestream::SourceWrite;
use statestream_client::proto::v1 as pb;
use statestream_client::{
    BlockHashes, ClientError, MemoryCursor, ResumableSubscription, StartFrom, SubscribeOptions,
    Update,
};

/// A future an [`Upstream`] returns.
pub type UpstreamFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The hashes an upstream committed a height with (see docs/serve.md,
/// "Hashes").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamHashes {
    /// The upstream node's own app hash, over every one of its stores.
    pub app_hash: Vec<u8>,
    /// `h_s(height)` of each store the upstream streams, by name.
    pub stores: Vec<(String, Vec<u8>)>,
    /// The app hash of the chain the upstream replicates (passed on).
    pub source_app_hash: Vec<u8>,
}

impl From<BlockHashes> for UpstreamHashes {
    fn from(h: BlockHashes) -> UpstreamHashes {
        UpstreamHashes {
            app_hash: h.app_hash,
            stores: h
                .store_hashes
                .into_iter()
                .map(|s| (s.store, s.hash))
                .collect(),
            source_app_hash: h.source_app_hash,
        }
    }
}

/// What an upstream gives the relay.
#[derive(Debug)]
pub enum UpstreamEvent {
    /// The whole state of the replicated stores at `height`, with the
    /// hashes there.
    Snapshot {
        height: u64,
        entries: Vec<SourceWrite>,
        hashes: UpstreamHashes,
    },
    /// One whole block, its net changes in the replicated stores.
    Block {
        height: u64,
        time: Option<(i64, u32)>,
        writes: Vec<SourceWrite>,
        hashes: UpstreamHashes,
    },
    /// The upstream is idle; its head height.
    Head(u64),
}

/// Why an upstream stopped giving events (each holds the message, which
/// names the upstream).
#[derive(Debug)]
pub enum UpstreamError {
    /// The upstream no longer holds (or does not yet hold) the height
    /// asked for.
    OutOfRange(String),
    /// The connection failed or ended: the relay moves to the next
    /// upstream.
    Lost(String),
    /// The upstream refuses the relay for good (its token, its request):
    /// no other upstream is tried.
    Refused(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::OutOfRange(m) | UpstreamError::Lost(m) | UpstreamError::Refused(m) => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for UpstreamError {}

/// A source of blocks for the relay. The relay calls [`start`] once, then
/// [`next`] until an error or a failover; [`head`] and [`push`] may run
/// beside them (they do not borrow the upstream).
///
/// [`start`]: Upstream::start
/// [`next`]: Upstream::next
/// [`head`]: Upstream::head
/// [`push`]: Upstream::push
pub trait Upstream: Send {
    /// How the upstream is named in logs and on `/status` (no secret).
    fn name(&self) -> &str;

    /// Whether [`start`](Upstream::start) with no height gives a
    /// snapshot at the head. A JetStream stream holds blocks, not state:
    /// the relay takes its snapshot from another upstream when it can.
    fn snapshots(&self) -> bool {
        true
    }

    /// Starts following: a snapshot at the head then the blocks after it
    /// (`from` is `None`), or every block from height `from` on.
    fn start(&mut self, from: Option<u64>) -> UpstreamFuture<'_, Result<(), UpstreamError>>;

    /// The next event, in height order with no gap and no repeat within
    /// one `start`.
    fn next(&mut self) -> UpstreamFuture<'_, Result<UpstreamEvent, UpstreamError>>;

    /// The upstream's head height and the oldest height it can stream
    /// from, asked now.
    fn head(&self) -> UpstreamFuture<'static, Result<(u64, u64), UpstreamError>>;

    /// Forwards one pushed write; the height of the block that committed
    /// it upstream.
    fn push(
        &self,
        store: String,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) -> UpstreamFuture<'static, Result<u64, String>>;
}

/// The upstream an entry of `[relay] upstreams` names, with the relay's
/// token, replicating `[relay] stores` (empty: every store it streams);
/// an `https://` one verified against `tls_ca_file` (relative: under the
/// home). The one place a new kind of upstream (a `nats://` JetStream
/// stream) is added.
pub fn open(
    address: &str,
    token: Option<&str>,
    relay: &statestream_config::RelayConfig,
    home: &std::path::Path,
) -> anyhow::Result<Box<dyn Upstream>> {
    Ok(if statestream_nats::is_nats_upstream(address) {
        Box::new(super::nats::NatsUpstream::new(address, &relay.nats, home)?)
    } else {
        let ca_file = (address.starts_with("https://") && !relay.tls_ca_file.is_empty())
            .then(|| home.join(&relay.tls_ca_file));
        Box::new(GrpcUpstream::new(
            address,
            token,
            &relay.stores,
            ca_file.as_deref(),
        ))
    })
}

/// A `serve` streamer's gRPC endpoint.
pub struct GrpcUpstream {
    address: String,
    options: SubscribeOptions,
    subscription: Option<ResumableSubscription<MemoryCursor>>,
    /// The snapshot being received (its parts so far).
    snapshot: Vec<SourceWrite>,
}

impl GrpcUpstream {
    /// `address` (`http://host:port`, or `https://host:port` with
    /// `ca_file`, the certificates its certificate is verified against),
    /// with the relay's token, replicating `stores` (empty: every store it
    /// streams).
    pub fn new(
        address: &str,
        token: Option<&str>,
        stores: &[String],
        ca_file: Option<&std::path::Path>,
    ) -> GrpcUpstream {
        let mut options = SubscribeOptions::new(address).max_backoff(Duration::from_secs(1));
        if let Some(ca) = ca_file {
            options = options.ca_file(ca);
        }
        if let Some(t) = token {
            options = options.token(t);
        }
        for s in stores {
            options = options.store(s);
        }
        GrpcUpstream {
            address: address.to_owned(),
            options,
            subscription: None,
            snapshot: Vec::new(),
        }
    }
}

fn time_of(t: Option<prost_types::Timestamp>) -> Option<(i64, u32)> {
    t.map(|t| (t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
}

/// A client error as the relay acts on it. The token is never in it: the
/// server's messages do not carry it, and the options print it as `<set>`.
fn classify(address: &str, e: ClientError) -> UpstreamError {
    match e {
        ClientError::Status(s) => {
            let text = format!("upstream {address}: {}: {}", s.code(), s.message());
            match s.code() {
                tonic::Code::OutOfRange => UpstreamError::OutOfRange(text),
                tonic::Code::Unauthenticated
                | tonic::Code::PermissionDenied
                | tonic::Code::InvalidArgument
                | tonic::Code::Unimplemented => UpstreamError::Refused(text),
                _ => UpstreamError::Lost(text),
            }
        }
        // A certificate that does not verify (or a CA file that cannot be
        // read) does not change by retrying or by moving to another
        // upstream verified against the same CA file.
        ClientError::Address { .. } | ClientError::Token(_) | ClientError::Tls { .. } => {
            UpstreamError::Refused(format!("upstream {address}: {e}"))
        }
        other => UpstreamError::Lost(format!("upstream {address}: {other}")),
    }
}

impl Upstream for GrpcUpstream {
    fn name(&self) -> &str {
        &self.address
    }

    fn start(&mut self, from: Option<u64>) -> UpstreamFuture<'_, Result<(), UpstreamError>> {
        let start = match from {
            None => StartFrom::Snapshot,
            Some(h) => StartFrom::Height(h),
        };
        self.subscription = Some(ResumableSubscription::new(
            self.options.clone().start(start),
            MemoryCursor::default(),
        ));
        self.snapshot.clear();
        Box::pin(async { Ok(()) })
    }

    fn next(&mut self) -> UpstreamFuture<'_, Result<UpstreamEvent, UpstreamError>> {
        Box::pin(async move {
            let address = self.address.clone();
            let Some(sub) = self.subscription.as_mut() else {
                return Err(UpstreamError::Lost(format!(
                    "upstream {address}: not started"
                )));
            };
            loop {
                let update = sub.next().await.map_err(|e| classify(&address, e))?;
                match update {
                    Update::Snapshot {
                        height,
                        entries,
                        first,
                        end,
                        hashes,
                        ..
                    } => {
                        if first {
                            self.snapshot.clear();
                        }
                        self.snapshot
                            .extend(entries.into_iter().map(|e: pb::Entry| SourceWrite {
                                store: e.store,
                                key: e.key,
                                value: Some(e.value),
                            }));
                        if end {
                            return Ok(UpstreamEvent::Snapshot {
                                height,
                                entries: std::mem::take(&mut self.snapshot),
                                hashes: hashes.into(),
                            });
                        }
                    }
                    Update::Block {
                        height,
                        time,
                        changes,
                        hashes,
                        ..
                    } => {
                        let writes = changes
                            .into_iter()
                            .map(|c| SourceWrite {
                                value: (c.op != pb::Op::Delete as i32).then_some(c.value),
                                store: c.store,
                                key: c.key,
                            })
                            .collect();
                        return Ok(UpstreamEvent::Block {
                            height,
                            time: time_of(time),
                            writes,
                            hashes: hashes.into(),
                        });
                    }
                    Update::Heartbeat { head } => return Ok(UpstreamEvent::Head(head)),
                    // A reconnection is a failover: the relay decides where
                    // to resume, and from which upstream.
                    Update::Reconnecting { reason, .. } => {
                        self.subscription = None;
                        return Err(UpstreamError::Lost(format!("upstream {address}: {reason}")));
                    }
                    _ => {}
                }
            }
        })
    }

    fn head(&self) -> UpstreamFuture<'static, Result<(u64, u64), UpstreamError>> {
        let options = self.options.clone();
        let address = self.address.clone();
        Box::pin(async move {
            let mut client = options.connect().await.map_err(|e| classify(&address, e))?;
            let request = options
                .request(pb::ListStoresRequest {})
                .map_err(|e| classify(&address, e))?;
            let answer = tokio::time::timeout(Duration::from_secs(5), client.list_stores(request))
                .await
                .map_err(|_| UpstreamError::Lost(format!("upstream {address}: no answer in 5 s")))?
                .map_err(|s| classify(&address, ClientError::Status(s)))?
                .into_inner();
            Ok((answer.head_height, answer.oldest_height))
        })
    }

    fn push(
        &self,
        store: String,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) -> UpstreamFuture<'static, Result<u64, String>> {
        let options = self.options.clone();
        let address = self.address.clone();
        Box::pin(async move {
            let mut client = options
                .connect()
                .await
                .map_err(|e| format!("upstream {address}: {e}"))?;
            let delete = value.is_none();
            let request = options
                .request(pb::PushUpdateRequest {
                    store,
                    key,
                    value: value.unwrap_or_default(),
                    delete,
                })
                .map_err(|e| format!("upstream {address}: {e}"))?;
            client
                .push_update(request)
                .await
                .map(|r| r.into_inner().height)
                .map_err(|s| format!("upstream {address}: {}", s.message()))
        })
    }
}
