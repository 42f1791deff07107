//! What a running [`DeliveryManager`](crate::DeliveryManager) lets others
//! see: its committed height, how long its commits take, the change log's
//! size and every streamer's progress. The manager keeps these in atomics
//! it updates anyway (or with a few more atomic additions per commit); an
//! [`Observer`] reads them from any thread, so a metrics endpoint never
//! takes a lock the commit path waits on, and never does I/O on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use statestream_config::Delivery;
use statestream_store::ChangeLogMeter;

use crate::driver::Progress;

/// Upper bounds (seconds) of the commit-duration histogram's buckets: from
/// an in-memory commit (well under a millisecond) to an fsync on a slow
/// disk.
pub const COMMIT_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket histogram of commit durations on atomics: recording one
/// is three relaxed additions.
#[derive(Debug, Default)]
pub(crate) struct CommitHistogram {
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: [AtomicU64; COMMIT_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl CommitHistogram {
    pub(crate) fn record(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = COMMIT_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(COMMIT_BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramStatus {
        let mut cumulative = 0;
        let buckets = COMMIT_BUCKETS
            .iter()
            .zip(&self.counts)
            .map(|(bound, count)| {
                cumulative += count.load(Ordering::Relaxed);
                Bucket {
                    le: *bound,
                    count: cumulative,
                }
            })
            .collect();
        let count = cumulative + self.counts[COMMIT_BUCKETS.len()].load(Ordering::Relaxed);
        HistogramStatus {
            buckets,
            // The buckets are read one by one while commits go on: the
            // total is at least their sum, never less.
            count,
            sum_seconds: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64(),
        }
    }
}

/// One streamer, as the observer sees it.
#[derive(Debug)]
pub(crate) struct Watched {
    pub(crate) type_name: String,
    pub(crate) delivery: Delivery,
    pub(crate) stop_node_on_error: bool,
    pub(crate) progress: Arc<Progress>,
}

/// The state the manager shares with its observers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) committed: Arc<AtomicU64>,
    pub(crate) commits: CommitHistogram,
    pub(crate) change_log: ChangeLogMeter,
    /// The configured streamers, then those added at run time (removed
    /// ones leave the list).
    pub(crate) streamers: std::sync::RwLock<Vec<Arc<Watched>>>,
    /// Set when the manager closes or is dropped: it commits no more.
    pub(crate) stopped: AtomicBool,
    /// Extra sections of the status, by name ([`Observer::add_section`]).
    pub(crate) sections: Sections,
}

/// A function that reads one extra section of the status now.
pub type Section = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// A function that says now why the program is not healthy although the
/// node commits (`/healthz` answers 503 with it); `None`: healthy.
pub type Health = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// One extra part of the status ([`Observer::add_status_section`]): what
/// it shows on `GET /status`, and optionally its say on `GET /healthz`.
#[derive(Clone)]
pub struct StatusSection {
    read: Section,
    health: Option<Health>,
    top_level: bool,
}

impl std::fmt::Debug for StatusSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusSection")
            .field("health", &self.health.is_some())
            .field("top_level", &self.top_level)
            .finish_non_exhaustive()
    }
}

impl StatusSection {
    /// A section whose JSON `read` returns, served under its name.
    pub fn new(read: Section) -> StatusSection {
        StatusSection {
            read,
            health: None,
            top_level: false,
        }
    }

    /// `/healthz` answers 503 with `health`'s reason while it has one.
    pub fn with_health(mut self, health: Health) -> StatusSection {
        self.health = Some(health);
        self
    }

    /// The fields of the section's JSON object are served at the top level
    /// of `GET /status` (names the status does not have otherwise), not
    /// under its name: a program's own status (`statestream relay`'s
    /// `upstream`, `lag_blocks`, ...).
    pub fn top_level(mut self) -> StatusSection {
        self.top_level = true;
        self
    }
}

/// A read-only view of a running [`DeliveryManager`](crate::DeliveryManager),
/// usable from any thread ([`DeliveryManager::observer`](crate::DeliveryManager::observer)).
/// It stays valid after the manager is gone (then its status says
/// `stopped`).
#[derive(Debug, Clone)]
pub struct Observer {
    pub(crate) shared: Arc<Shared>,
}

/// The extra sections, by name, in the order they were added.
#[derive(Default)]
pub(crate) struct Sections(std::sync::RwLock<Vec<(String, StatusSection)>>);

impl std::fmt::Debug for Sections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        f.debug_tuple("Sections").field(&names).finish()
    }
}

impl Observer {
    /// Adds (or replaces) a section of the status: `read` is called at
    /// each [`status`](Observer::status) and its JSON is served under
    /// `name` in `GET /status` (the run-time subscriptions use
    /// `subscriptions`). It runs on the observer's thread, never on the
    /// commit path.
    pub fn add_section(&self, name: &str, read: Section) {
        self.add_status_section(name, StatusSection::new(read));
    }

    /// [`add_section`](Observer::add_section) with the section's options:
    /// a health verdict for `/healthz`, its fields at the top level (the
    /// ingest pipeline's `ingest` section, a relay's status). Every
    /// observer of the manager sees it.
    pub fn add_status_section(&self, name: &str, section: StatusSection) {
        let mut sections = self
            .shared
            .sections
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sections.retain(|(n, _)| n != name);
        sections.push((name.to_owned(), section));
    }

    /// Everything observable, read now.
    pub fn status(&self) -> NodeStatus {
        let s = &self.shared;
        let committed = s.committed.load(Ordering::Acquire);
        let watched: Vec<Arc<Watched>> = s
            .streamers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let streamers: Vec<StreamerStatus> = watched
            .iter()
            .map(|w| {
                let p = &w.progress;
                let delivered = p.delivered();
                let halt = p.halt();
                StreamerStatus {
                    name: p.name.clone(),
                    type_name: w.type_name.clone(),
                    delivery: w.delivery.as_str(),
                    stop_node_on_error: w.stop_node_on_error,
                    state: if halt.is_some() {
                        StreamerState::Halted
                    } else {
                        StreamerState::Running
                    },
                    halted_at: halt.as_ref().map(|h| h.height),
                    error: halt.map(|h| h.message),
                    delivered_height: delivered,
                    flushed_height: p.durable(),
                    lag_blocks: committed.saturating_sub(delivered),
                    queue_depth: p.queued.load(Ordering::Relaxed),
                    errors: p.errors.load(Ordering::Relaxed),
                    fell_behind: p.fell_behind.load(Ordering::Relaxed),
                    caught_up: p.caught_up.load(Ordering::Relaxed),
                    panics: p.panics.load(Ordering::Relaxed),
                    last_error: p.last_error(),
                }
            })
            .collect();
        let state = if streamers.iter().any(|st| st.state == StreamerState::Halted) {
            NodeState::Halted
        } else if s.stopped.load(Ordering::Acquire) {
            NodeState::Stopped
        } else {
            NodeState::Committing
        };
        let size = s.change_log.size();
        let sections: Vec<(String, StatusSection)> = s
            .sections
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut fields = std::collections::BTreeMap::new();
        let mut unhealthy = None;
        for (name, section) in sections {
            let value = (section.read)();
            if unhealthy.is_none() {
                unhealthy = section.health.as_ref().and_then(|h| h());
            }
            match value {
                serde_json::Value::Object(map) if section.top_level => {
                    for (k, v) in map {
                        if !NodeStatus::FIELDS.contains(&k.as_str()) {
                            fields.entry(k).or_insert(v);
                        }
                    }
                }
                value => {
                    if !NodeStatus::FIELDS.contains(&name.as_str()) {
                        fields.insert(name, value);
                    }
                }
            }
        }
        NodeStatus {
            sections: fields,
            unhealthy,
            state,
            committed_height: committed,
            commit_duration: s.commits.snapshot(),
            change_log: ChangeLogStatus {
                blocks: size.blocks,
                bytes: size.bytes,
            },
            streamers,
        }
    }
}

/// What [`Observer::status`] returns, and `GET /status` serves as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct NodeStatus {
    /// Whether the node commits.
    pub state: NodeState,
    /// The last committed height.
    pub committed_height: u64,
    /// How long each [`DeliveryManager::commit`](crate::DeliveryManager::commit)
    /// call took that committed a block (the store's commit, and the sync
    /// streamers' deliveries).
    pub commit_duration: HistogramStatus,
    /// What the change log holds.
    pub change_log: ChangeLogStatus,
    /// Every streamer, in configuration order (then the run-time ones).
    pub streamers: Vec<StreamerStatus>,
    /// Extra sections ([`Observer::add_section`]), served at the top level
    /// of `GET /status` under their names, and the fields of the
    /// [`top_level`](StatusSection::top_level) ones. The ingest pipeline's
    /// is `ingest` ([`NodeStatus::ingest`]; a replica fed by a source:
    /// `statestream cosmos-plugin`, `ingest-files`, `relay`).
    #[serde(flatten)]
    pub sections: std::collections::BTreeMap<String, serde_json::Value>,
    /// The first health verdict of a section ([`StatusSection::with_health`]):
    /// why `/healthz` answers 503 although the node commits.
    #[serde(skip)]
    pub unhealthy: Option<String>,
}

impl NodeStatus {
    /// The names of the status's own fields, which a section cannot take.
    const FIELDS: [&str; 5] = [
        "state",
        "committed_height",
        "commit_duration",
        "change_log",
        "streamers",
    ];

    /// The ingest pipeline's section (`ingest`), when the node is fed by
    /// one.
    pub fn ingest(&self) -> Option<IngestReport> {
        self.sections
            .get(crate::ingest::INGEST_SECTION)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}

/// The ingest pipeline's state: the `ingest` section of the status
/// ([`NodeStatus::ingest`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct IngestReport {
    /// The source's last height committed into the replica.
    pub height: u64,
    /// The gaps the replica holds, in height order: heights the source
    /// committed that the replica never received (continued past with
    /// `on_gap = "continue"`), since the replica was created.
    pub gaps: Vec<GapStatus>,
    /// Gaps seen since the pipeline started, refused ones included.
    pub gaps_total: u64,
    /// The last gap seen since the pipeline started (recorded or refused).
    pub last_gap: Option<GapStatus>,
    /// Blocks given again since the pipeline started, answered without
    /// committing or delivering them twice.
    pub replays_total: u64,
}

/// Heights missing from a replica, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct GapStatus {
    /// The first missing height.
    pub first_missing: u64,
    /// The last missing height.
    pub last_missing: u64,
}

impl GapStatus {
    fn of((first_missing, last_missing): (u64, u64)) -> GapStatus {
        GapStatus {
            first_missing,
            last_missing,
        }
    }
}

impl IngestReport {
    pub(crate) fn of(status: &crate::ingest::IngestStatus) -> IngestReport {
        IngestReport {
            height: status.height(),
            gaps: status
                .recorded_gaps()
                .into_iter()
                .map(GapStatus::of)
                .collect(),
            gaps_total: status.gaps(),
            last_gap: status.last_gap().map(GapStatus::of),
            replays_total: status.replays(),
        }
    }
}

/// Whether the node commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeState {
    /// Committing (or ready to): no streamer stopped it.
    Committing,
    /// A streamer with `stop-node-on-error = true` failed: the node commits
    /// no more block.
    Halted,
    /// The manager closed (the node is shutting down).
    Stopped,
}

impl NodeState {
    /// `committing`, `halted` or `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Committing => "committing",
            NodeState::Halted => "halted",
            NodeState::Stopped => "stopped",
        }
    }
}

/// A histogram: cumulative buckets, count and sum, as Prometheus has them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HistogramStatus {
    /// Cumulative counts per upper bound ([`COMMIT_BUCKETS`]); the `+Inf`
    /// bucket is `count`.
    pub buckets: Vec<Bucket>,
    /// Observations.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum_seconds: f64,
}

/// One cumulative bucket of a histogram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Bucket {
    /// Upper bound, in seconds.
    pub le: f64,
    /// Observations at or below it.
    pub count: u64,
}

/// The change log's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ChangeLogStatus {
    /// Blocks kept.
    pub blocks: u64,
    /// Bytes of their encoded entries.
    pub bytes: u64,
}

/// Whether a streamer delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StreamerState {
    /// Delivering (possibly retrying a failure, with
    /// `stop-node-on-error = false`).
    Running,
    /// Stopped by a failure with `stop-node-on-error = true`.
    Halted,
}

/// One streamer's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StreamerStatus {
    /// Instance name (`[streamers.<name>]`).
    pub name: String,
    /// Its type (`type`); `application` for a streamer given to
    /// [`DeliveryManagerBuilder::streamer`](crate::DeliveryManagerBuilder::streamer).
    #[serde(rename = "type")]
    pub type_name: String,
    /// `sync` or `async`.
    pub delivery: &'static str,
    /// Whether a failure stops the node.
    pub stop_node_on_error: bool,
    /// Running or halted.
    pub state: StreamerState,
    /// Halted: the height that failed.
    pub halted_at: Option<u64>,
    /// Halted: why.
    pub error: Option<String>,
    /// The last height delivered.
    pub delivered_height: u64,
    /// The last height flushed: the cursor.
    pub flushed_height: u64,
    /// Committed height minus delivered height.
    pub lag_blocks: u64,
    /// Async: blocks waiting in its queue.
    pub queue_depth: u64,
    /// Failed delivery attempts.
    pub errors: u64,
    /// Blocks that found its queue full (read later from the change log).
    pub fell_behind: u64,
    /// Blocks delivered from the change log rather than live.
    pub caught_up: u64,
    /// Panics caught in the streamer's hooks. Each is also a delivery error
    /// (`errors`, `last_error` "panicked in on_block: ..."): it halts the
    /// node with `stop-node-on-error = true`; otherwise the streamer is
    /// started again from its cursor after a backoff.
    pub panics: u64,
    /// The last delivery error, if any (also after a successful retry).
    pub last_error: Option<String>,
}
