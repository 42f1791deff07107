//! The streamer: one SQL transaction per block, cursor included.

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::{Client, SimpleQueryMessage, Statement};
use statestream_core::{Block, Shutdown, StreamError, Streamer};
use tracing::{debug, info, warn};

use crate::cancel::{Canceller, STOP_GRACE};
use crate::config::Tables;
use crate::connect::ConnectSettings;
use crate::error::{PostgresError, describe};
use crate::schema::{CHANNEL_PREFIX, Sql, prepare};

/// The `postgres` streamer. Each block is one transaction: the `blocks`
/// row, the `changes` rows (binary `COPY`), the `state` upserts and
/// deletes, the streamer's row in `cursors`, and the `NOTIFY`. The cursor
/// in the database is the truth: blocks at or below it are skipped, so a
/// block is in the database exactly once however often the node delivers
/// it.
pub struct PostgresStreamer {
    name: String,
    settings: ConnectSettings,
    schema: String,
    tables: Tables,
    create_schema: bool,
    notify: bool,
    sql: Sql,
    channel: String,
    conn: Option<Connection>,
    /// Cancels the running statement when the node stops.
    canceller: Canceller,
}

/// An open connection with its prepared statements and the cursor read
/// when it opened (kept up to date by each committed block).
struct Connection {
    client: Client,
    cursor: Option<u64>,
    copy_stmt: Statement,
}

impl std::fmt::Debug for PostgresStreamer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStreamer")
            .field("name", &self.name)
            .field("target", &self.settings.target())
            .field("schema", &self.schema)
            .field("tables", &self.tables)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

const COPY_TYPES: [Type; 5] = [Type::INT8, Type::TEXT, Type::BYTEA, Type::BYTEA, Type::BOOL];

impl PostgresStreamer {
    pub(crate) fn new(
        name: &str,
        shutdown: Shutdown,
        settings: ConnectSettings,
        schema: String,
        tables: Tables,
        create_schema: bool,
        notify: bool,
    ) -> PostgresStreamer {
        PostgresStreamer {
            name: name.to_string(),
            settings,
            sql: Sql::new(&schema, tables),
            channel: format!("{CHANNEL_PREFIX}{schema}"),
            schema,
            tables,
            create_schema,
            notify,
            conn: None,
            canceller: Canceller::new(shutdown),
        }
    }

    /// The error for block `height` once a statement was cancelled because
    /// the node stops.
    fn stopped(&self, height: u64) -> PostgresError {
        PostgresError::Stopped {
            target: self.settings.target().to_string(),
            height,
            grace_ms: STOP_GRACE.as_millis() as u64,
        }
    }

    /// The NOTIFY channel: `statestream_<schema>`.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The height of this streamer's cursor in the database, as last read
    /// or written (`None`: not connected yet, or no block written yet).
    pub fn cursor(&self) -> Option<u64> {
        self.conn.as_ref().and_then(|c| c.cursor)
    }

    fn query_error(&self, what: &str, e: &postgres::Error) -> PostgresError {
        PostgresError::Query {
            target: self.settings.target().to_string(),
            what: what.to_string(),
            reason: describe(e),
        }
    }

    /// Connects, prepares the schema and the statements, and reads the
    /// cursor.
    fn open(&self) -> Result<Connection, PostgresError> {
        let mut client = self.settings.connect()?;
        self.canceller.set_token(Some(client.cancel_token()));
        if self.canceller.cancelled() {
            return Err(self.stopped(0));
        }
        let target = self.settings.target();
        prepare(
            &mut client,
            target,
            &self.schema,
            self.tables,
            self.create_schema,
        )?;
        if let Some(sql) = &self.sql.staging {
            client
                .batch_execute(sql)
                .map_err(|e| self.query_error("create the staging table", &e))?;
        }
        let mut prep = |sql: &str| {
            client
                .prepare(sql)
                .map_err(|e| self.query_error(&format!("prepare {sql:?}"), &e))
        };
        let read_cursor = prep(&self.sql.read_cursor)?;
        let copy_stmt = prep(&self.sql.copy)?;
        let row = client
            .query_opt(&read_cursor, &[&self.name])
            .map_err(|e| self.query_error("read the cursor", &e))?;
        let cursor = match row {
            Some(row) => {
                let h: i64 = row.get(0);
                Some(u64::try_from(h).map_err(|_| PostgresError::OutOfRange {
                    height: 0,
                    reason: format!("the cursor of {:?} is negative: {h}", self.name),
                })?)
            }
            None => None,
        };
        info!(
            streamer = %self.name,
            target = %target,
            schema = %self.schema,
            cursor = cursor.unwrap_or(0),
            "connected to PostgreSQL"
        );
        Ok(Connection {
            client,
            cursor,
            copy_stmt,
        })
    }

    /// The open connection, opening one when there is none.
    fn connection(&mut self) -> Result<&mut Connection, PostgresError> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            warn!(streamer = %self.name, "connection to PostgreSQL lost, reconnecting");
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Some(self.open()?);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| PostgresError::Unreachable {
                target: String::new(),
                reason: "no connection".into(),
            })
    }

    fn write_block(&mut self, block: &Block) -> Result<(), PostgresError> {
        let height = block.height();
        let h = i64::try_from(height).map_err(|_| PostgresError::OutOfRange {
            height,
            reason: "above PostgreSQL's bigint".into(),
        })?;
        let meta = block.meta();
        let micros = meta
            .time_seconds
            .checked_mul(1_000_000)
            .and_then(|us| us.checked_add(i64::from(meta.time_nanos / 1000)))
            .ok_or_else(|| PostgresError::OutOfRange {
                height,
                reason: format!("block time {} s is out of range", meta.time_seconds),
            })?;
        let app_hash = block.commit_info().app_hash;
        let (name, channel, notify) = (self.name.clone(), self.channel.clone(), self.notify);
        let target = self.settings.target().to_string();
        let mut records = 0usize;
        for store in block.stores() {
            records += store.len();
        }
        let head = self.sql.head(&name, h, micros, app_hash.as_slice());
        let tail = self
            .sql
            .tail(h, records > 0, notify.then_some(channel.as_str()));
        let conn = self.connection()?;
        match conn.cursor {
            Some(c) if height <= c => {
                debug!(streamer = %name, height, cursor = c, "block already in the database");
                return Ok(());
            }
            Some(c) if height > c + 1 => {
                return Err(PostgresError::Gap {
                    streamer: name,
                    cursor: c,
                    height,
                });
            }
            _ => {}
        }
        let q = |what: &'static str| {
            let target = target.clone();
            move |e: postgres::Error| PostgresError::Query {
                target,
                what: format!("block {height}: {what}"),
                reason: describe(&e),
            }
        };
        // Four round trips, as many as a bare bulk load (BEGIN, COPY,
        // COMMIT): every statement of the sync client is one, and on a
        // busy machine each costs two context switches. So the statements
        // around the COPY go as simple queries of several statements, with
        // the block's values as literals (integers, hex, and the streamer's
        // name as an escaped string literal).
        //
        // 1. BEGIN, then the cursor and the blocks row in one statement:
        //    the cursor first (its row lock serializes two writers under
        //    one name, and the second finds it moved), the blocks row
        //    only when the cursor moved.
        let moved = conn
            .client
            .simple_query(&head)
            .map_err(q("move the cursor and insert into blocks"))?
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).map(|v| v == "1"),
                _ => None,
            })
            .unwrap_or(false);
        if !moved {
            return Err(PostgresError::CursorMoved {
                streamer: name,
                height,
            });
        }
        // 2. The records by binary COPY (two round trips).
        if records > 0 {
            let sink = conn
                .client
                .copy_in(&conn.copy_stmt)
                .map_err(q("copy the changes"))?;
            let mut writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
            for r in block.records() {
                let deleted = r.value.is_none();
                let row: [&(dyn ToSql + Sync); 5] = [&h, &r.store, &r.key, &r.value, &deleted];
                writer.write(&row).map_err(q("copy the changes"))?;
            }
            writer.finish().map_err(q("copy the changes"))?;
        }
        // 3. The state upserts and deletes, the NOTIFY and the COMMIT.
        conn.client
            .simple_query(&tail)
            .map_err(q("write state, notify and commit"))?;
        conn.cursor = Some(height);
        Ok(())
    }
}

impl Streamer for PostgresStreamer {
    fn on_start(&mut self, next_height: u64) -> Result<(), StreamError> {
        self.canceller.start(&self.name, &self.settings);
        let busy = self.canceller.busy();
        let result = self.connection().map(|c| c.cursor);
        drop(busy);
        match result {
            Ok(cursor) => {
                if cursor.is_none() && next_height > 1 {
                    info!(
                        streamer = %self.name,
                        next_height,
                        "no cursor in the database: it will hold the blocks from {next_height} on"
                    );
                }
                Ok(())
            }
            Err(e @ PostgresError::Unreachable { .. }) => {
                // The node starts anyway; the blocks wait in the change log
                // and each delivery tries to connect again.
                warn!(streamer = %self.name, error = %e, "PostgreSQL not reachable at start");
                Ok(())
            }
            Err(e) => Err(StreamError::new(e)),
        }
    }

    fn on_block(&mut self, block: &Block) -> Result<(), StreamError> {
        // Once a statement was cancelled the node is stopping: nothing more
        // is written, the blocks stay in the change log.
        if self.canceller.cancelled() {
            return Err(StreamError::new(self.stopped(block.height())));
        }
        let busy = self.canceller.busy();
        let result = self.write_block(block);
        drop(busy);
        result.map_err(|e| {
            // Whatever failed, start from a fresh connection next time: it
            // reads the cursor again, which settles whether a commit whose
            // answer was lost went through.
            self.conn = None;
            self.canceller.set_token(None);
            if self.canceller.cancelled() {
                StreamError::new(self.stopped(block.height()))
            } else {
                StreamError::new(e)
            }
        })
    }

    fn on_close(&mut self) -> Result<(), StreamError> {
        self.canceller.close();
        if let Some(conn) = self.conn.take() {
            conn.client
                .close()
                .map_err(|e| StreamError::new(self.query_error("close", &e)))?;
        }
        Ok(())
    }
}
