//! `postgres_rows_per_s`: the rows per second the streamer writes, next to
//! a plain bulk load of the same rows by the same client. The example
//! `postgres_rows_per_s` and `statestream bench --postgres URL` both run
//! [`rows_per_s`]; `docs/performance.md` has the figures.
//!
//! Three sides, each given the same blocks in every round, in an order
//! that rotates round by round:
//! - the streamer (`tables = "both"`, schema `bench_stream`), block by
//!   block through [`Streamer::on_block`]: per block one transaction with
//!   the `changes` rows, the `state` upserts and deletes, the `blocks` and
//!   `cursors` rows and the `NOTIFY`;
//! - the plain load of the same rows (schema `bench_plain`): per block one
//!   transaction of two binary `COPY`s, the block's records into a table
//!   shaped like `changes` and the block's sets into a table shaped like
//!   `state` (primary key `(store, key, height)`, since a plain load
//!   appends where the streamer upserts);
//! - the changes-only load (schema `bench_plain_changes`): per block one
//!   transaction of one binary `COPY` of the records into a table shaped
//!   like `changes`. This was the only baseline until the streamer's rows
//!   were counted in full; it is kept so that the earlier ratios can be
//!   compared.
//!
//! Rows: a block's `changes` rows are its records; its `state` rows are
//! its sets (one upserted row each). Deletes remove `state` rows and are
//! not counted; nor are the `blocks` and `cursors` rows. The changes-only
//! ratio counts the records alone on both sides.
//!
//! All three connect with the streamer's connection settings (the same
//! client, TLS included) and drop their schemas before and after.

use statestream_config::StreamerOptions;
use statestream_core::{Block, Shutdown, StoreKey, Streamer, StreamerContext};

use postgres::Client;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};

use crate::config::{PostgresStreamerConfig, Tables};
use crate::error::{PostgresError, describe};

/// The median and the spread of a measure over the counted rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    /// First and third quartiles: the middle half of the rounds lies
    /// between.
    pub q1: f64,
    pub q3: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| {
            if v.is_empty() {
                return f64::NAN;
            }
            let pos = p * (v.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
        };
        Spread {
            median: q(0.5),
            q1: q(0.25),
            q3: q(0.75),
            min: q(0.0),
            max: q(1.0),
        }
    }
}

/// What [`rows_per_s`] measured over the counted rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct RowsPerSecond {
    /// Counted rounds (one more, the first, ran uncounted).
    pub rounds: usize,
    pub blocks_per_round: usize,
    /// Per counted round, on each side: `changes` rows (records), `state`
    /// rows (sets), and the deletes the streamer applies to `state`.
    pub changes_rows: u64,
    pub state_rows: u64,
    pub state_deletes: u64,
    /// The streamer's `changes` + `state` rows per second.
    pub stream: Spread,
    /// The plain load's `changes` + `state` rows per second.
    pub plain: Spread,
    /// Per round, the streamer's rows per second over the plain load's.
    pub ratio: Spread,
    /// The streamer's records per second (`changes` rows only).
    pub stream_changes: Spread,
    /// The changes-only load's records per second.
    pub plain_changes: Spread,
    /// Per round, the streamer's records per second over the changes-only
    /// load's.
    pub ratio_changes_only: Spread,
}

const SCHEMAS: [&str; 3] = ["bench_stream", "bench_plain", "bench_plain_changes"];

/// Runs the three sides over `blocks` (of the stores `stores`), split into
/// `rounds + 1` rounds of equal size, the first not counted. `url` is the
/// streamer's `url` option (a URL or key=value string with the password,
/// or `PGPASSWORD`); TLS as `tls = "prefer"`.
pub fn rows_per_s(
    url: &str,
    stores: &[StoreKey],
    blocks: &[Block],
    rounds: usize,
) -> Result<RowsPerSecond, PostgresError> {
    let per_round = blocks.len() / (rounds + 1);
    if rounds == 0 || per_round == 0 {
        return Err(PostgresError::Query {
            target: String::new(),
            what: "benchmark".into(),
            reason: format!(
                "{} blocks cannot make {} rounds of at least one block",
                blocks.len(),
                rounds + 1
            ),
        });
    }
    let config = PostgresStreamerConfig {
        url: url.to_string(),
        schema: SCHEMAS[0].into(),
        tables: Tables::Both,
        ..PostgresStreamerConfig::default()
    };
    let settings = config
        .settings(std::path::Path::new("."))
        .map_err(|(key, reason)| PostgresError::Query {
            target: String::new(),
            what: format!("benchmark option {key}"),
            reason,
        })?;
    let target = settings.target().to_string();
    let q = |what: &str| {
        let (target, what) = (target.clone(), what.to_string());
        move |e: postgres::Error| PostgresError::Query {
            target,
            what,
            reason: describe(&e),
        }
    };
    let mut plain = settings.connect()?;
    let drop_all = SCHEMAS
        .iter()
        .map(|s| format!("DROP SCHEMA IF EXISTS {s} CASCADE;"))
        .collect::<String>();
    plain
        .batch_execute(&format!(
            "{drop_all} \
             CREATE SCHEMA bench_plain; CREATE SCHEMA bench_plain_changes; \
             CREATE TABLE bench_plain.changes (height bigint NOT NULL, store text NOT NULL, \
             key bytea NOT NULL, value bytea, deleted boolean NOT NULL, \
             PRIMARY KEY (height, store, key)); \
             CREATE TABLE bench_plain.state (store text NOT NULL, key bytea NOT NULL, \
             value bytea NOT NULL, height bigint NOT NULL, PRIMARY KEY (store, key, height)); \
             CREATE TABLE bench_plain_changes.changes (LIKE bench_plain.changes INCLUDING ALL)"
        ))
        .map_err(q("create the benchmark's tables"))?;

    let ctx = StreamerContext {
        name: "bench",
        stores,
        all_stores: stores,
        home: std::path::Path::new("."),
        reader: None,
        shutdown: &Shutdown::default(),
        push: None,
    };
    let options = StreamerOptions::from_table(Default::default()).with_name("bench");
    let mut streamer = config
        .build(&ctx, &options)
        .map_err(|e| PostgresError::Query {
            target: target.clone(),
            what: "benchmark: build the streamer".into(),
            reason: e.to_string(),
        })?;
    let stream_err = |e: statestream_core::StreamError| PostgresError::Query {
        target: target.clone(),
        what: "benchmark: stream".into(),
        reason: e.to_string(),
    };
    streamer.on_start(1).map_err(stream_err)?;

    let changes_copy = |schema: &str| {
        format!(
            "COPY {schema}.changes (height, store, key, value, deleted) FROM STDIN (FORMAT binary)"
        )
    };
    let copy_changes = plain
        .prepare(&changes_copy("bench_plain"))
        .map_err(q("prepare"))?;
    let copy_changes_only = plain
        .prepare(&changes_copy("bench_plain_changes"))
        .map_err(q("prepare"))?;
    let copy_state = plain
        .prepare("COPY bench_plain.state (store, key, value, height) FROM STDIN (FORMAT binary)")
        .map_err(q("prepare"))?;
    let plain_load = |client: &mut Client, chunk: &[Block], with_state: bool| {
        let start = std::time::Instant::now();
        for b in chunk {
            load_block(
                client,
                b,
                if with_state {
                    &copy_changes
                } else {
                    &copy_changes_only
                },
                with_state.then_some(&copy_state),
            )
            .map_err(q(&format!("benchmark: plain load of block {}", b.height())))?;
        }
        Ok::<f64, PostgresError>(start.elapsed().as_secs_f64())
    };

    let mut rates: [Vec<f64>; 6] = Default::default();
    let (mut changes_rows, mut state_rows, mut state_deletes) = (0, 0, 0);
    for (round, chunk) in blocks.chunks_exact(per_round).take(rounds + 1).enumerate() {
        let (records, sets) = chunk.iter().fold((0u64, 0u64), |(r, s), b| {
            let sets = b.records().filter(|r| r.value.is_some()).count() as u64;
            (r + b.records().count() as u64, s + sets)
        });
        let mut secs = [0.0; 3];
        for i in 0..3 {
            let side = (round + i) % 3;
            secs[side] = match side {
                0 => {
                    let start = std::time::Instant::now();
                    for b in chunk {
                        streamer.on_block(b).map_err(stream_err)?;
                    }
                    start.elapsed().as_secs_f64()
                }
                1 => plain_load(&mut plain, chunk, true)?,
                _ => plain_load(&mut plain, chunk, false)?,
            };
        }
        if round == 0 {
            continue;
        }
        changes_rows = records;
        state_rows = sets;
        state_deletes = records - sets;
        let rows = (records + sets) as f64;
        rates[0].push(rows / secs[0]);
        rates[1].push(rows / secs[1]);
        rates[2].push(secs[1] / secs[0]);
        rates[3].push(records as f64 / secs[0]);
        rates[4].push(records as f64 / secs[2]);
        rates[5].push(secs[2] / secs[0]);
    }
    streamer.on_close().map_err(stream_err)?;
    plain
        .batch_execute(&drop_all)
        .map_err(q("drop the benchmark's schemas"))?;
    Ok(RowsPerSecond {
        rounds,
        blocks_per_round: per_round,
        changes_rows,
        state_rows,
        state_deletes,
        stream: Spread::of(&rates[0]),
        plain: Spread::of(&rates[1]),
        ratio: Spread::of(&rates[2]),
        stream_changes: Spread::of(&rates[3]),
        plain_changes: Spread::of(&rates[4]),
        ratio_changes_only: Spread::of(&rates[5]),
    })
}

/// One block of the plain load: one transaction, the records by `changes`
/// and, when given, the sets by `state` (both binary `COPY`s).
fn load_block(
    client: &mut Client,
    block: &Block,
    changes: &postgres::Statement,
    state: Option<&postgres::Statement>,
) -> Result<(), postgres::Error> {
    let h = i64::try_from(block.height()).unwrap_or(i64::MAX);
    let mut tx = client.transaction()?;
    let mut w = BinaryCopyInWriter::new(
        tx.copy_in(changes)?,
        &[Type::INT8, Type::TEXT, Type::BYTEA, Type::BYTEA, Type::BOOL],
    );
    for r in block.records() {
        let deleted = r.value.is_none();
        let row: [&(dyn ToSql + Sync); 5] = [&h, &r.store, &r.key, &r.value, &deleted];
        w.write(&row)?;
    }
    w.finish()?;
    if let Some(state) = state {
        let mut w = BinaryCopyInWriter::new(
            tx.copy_in(state)?,
            &[Type::TEXT, Type::BYTEA, Type::BYTEA, Type::INT8],
        );
        for r in block.records() {
            if let Some(value) = &r.value {
                let row: [&(dyn ToSql + Sync); 4] = [&r.store, &r.key, value, &h];
                w.write(&row)?;
            }
        }
        w.finish()?;
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_rounds() {
        let s = Spread::of(&[3.0, 1.0, 2.0, 5.0, 4.0]);
        assert_eq!(
            (s.median, s.q1, s.q3, s.min, s.max),
            (3.0, 2.0, 4.0, 1.0, 5.0)
        );
    }
}
