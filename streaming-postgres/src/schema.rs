//! Every table, column and statement of the streamer in one place: the
//! tables are a contract with the queries users write against them
//! (`docs/postgres.md`).

use std::collections::BTreeMap;

use postgres::Client;

use crate::config::Tables;
use crate::error::{PostgresError, describe};

/// Longest schema name: the NOTIFY channel `statestream_<schema>` must fit
/// PostgreSQL's 63-byte identifiers.
pub(crate) const MAX_SCHEMA_LEN: usize = 51;

/// The prefix of the NOTIFY channel; the schema name follows it.
pub const CHANNEL_PREFIX: &str = "statestream_";

/// One column as the streamer expects it: name, type as
/// `information_schema.columns.data_type` spells it, nullable.
struct Column {
    name: &'static str,
    data_type: &'static str,
    nullable: bool,
}

const fn col(name: &'static str, data_type: &'static str, nullable: bool) -> Column {
    Column {
        name,
        data_type,
        nullable,
    }
}

/// One table: its name, its columns and the rest of its definition.
struct Table {
    name: &'static str,
    columns: &'static [Column],
    primary_key: &'static str,
    /// Storage parameters (`WITH (...)`) of `CREATE TABLE`, or "".
    with: &'static str,
}

const BLOCKS: Table = Table {
    name: "blocks",
    columns: &[
        col("height", "bigint", false),
        col("time", "timestamp with time zone", false),
        col("app_hash", "bytea", false),
    ],
    primary_key: "height",
    with: "",
};

const CHANGES: Table = Table {
    name: "changes",
    columns: &[
        col("height", "bigint", false),
        col("store", "text", false),
        col("key", "bytea", false),
        col("value", "bytea", true),
        col("deleted", "boolean", false),
    ],
    primary_key: "height, store, key",
    with: "",
};

const STATE: Table = Table {
    name: "state",
    columns: &[
        col("store", "text", false),
        col("key", "bytea", false),
        col("value", "bytea", false),
        col("height", "bigint", false),
    ],
    primary_key: "store, key",
    // Most sets update a row. With room left on each page the new
    // version goes on the same page and, as neither `store` nor `key`
    // changes, the update is HOT: no new index entry, half the WAL
    // records (docs/performance.md, postgres_rows_per_s).
    with: " WITH (fillfactor = 70)",
};

const CURSORS: Table = Table {
    name: "cursors",
    columns: &[
        col("streamer", "text", false),
        col("height", "bigint", false),
    ],
    primary_key: "streamer",
    with: "",
};

/// The SQL type names used in `CREATE TABLE` for the `data_type` names.
fn ddl_type(data_type: &str) -> &str {
    match data_type {
        "timestamp with time zone" => "timestamptz",
        "boolean" => "boolean",
        other => other,
    }
}

/// A schema name that needs no quoting anywhere (schema, qualified table
/// names, the NOTIFY channel): lower-case ASCII letters, digits and `_`,
/// not starting with a digit.
pub(crate) fn check_schema_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the schema name is empty".into());
    }
    if name.len() > MAX_SCHEMA_LEN {
        return Err(format!(
            "schema name {name:?} is longer than {MAX_SCHEMA_LEN} bytes (the NOTIFY channel \
             {CHANNEL_PREFIX}<schema> must fit PostgreSQL's 63-byte names)"
        ));
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("schema name {name:?} starts with a digit"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "schema name {name:?} may hold only lower-case letters, digits and '_', not {c:?}"
        ));
    }
    if name.starts_with("pg_") {
        return Err(format!(
            "schema name {name:?} starts with \"pg_\" (reserved by PostgreSQL)"
        ));
    }
    Ok(())
}

/// The tables a streamer with `tables` writes.
fn tables_for(tables: Tables) -> Vec<&'static Table> {
    let mut out = vec![&BLOCKS];
    if tables.changes() {
        out.push(&CHANGES);
    }
    if tables.state() {
        out.push(&STATE);
    }
    out.push(&CURSORS);
    out
}

fn create_table_sql(schema: &str, t: &Table) -> String {
    let cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            let null = if c.nullable { "" } else { " NOT NULL" };
            format!("{} {}{null}", c.name, ddl_type(c.data_type))
        })
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {schema}.{} ({}, PRIMARY KEY ({})){}",
        t.name,
        cols.join(", "),
        t.primary_key,
        t.with
    )
}

/// The `CREATE` statements for `tables` (for the documentation and for
/// users who create the tables themselves, with `create_schema = false`).
pub fn create_statements(schema: &str, tables: Tables) -> Vec<String> {
    let mut out = vec![format!("CREATE SCHEMA IF NOT EXISTS {schema}")];
    out.extend(
        tables_for(tables)
            .into_iter()
            .map(|t| create_table_sql(schema, t)),
    );
    out
}

/// Checks every table the streamer writes that exists, column by column,
/// then creates the missing ones (when `create`; otherwise a missing table
/// is an error). One transaction: a conflict creates nothing.
pub(crate) fn prepare(
    client: &mut Client,
    target: &str,
    schema: &str,
    tables: Tables,
    create: bool,
) -> Result<(), PostgresError> {
    let query = |what: &str| {
        let what = what.to_string();
        move |e: postgres::Error| PostgresError::Query {
            target: target.to_string(),
            what,
            reason: describe(&e),
        }
    };
    let mut tx = client.transaction().map_err(query("begin"))?;
    if create {
        // Two streamers (or nodes) creating one schema at once would race
        // on the catalog: serialize them on a lock named after the schema.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('statestream schema ' || $1))",
            &[&schema],
        )
        .map_err(query("lock the schema creation"))?;
    }
    let rows = tx
        .query(
            "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text \
             FROM information_schema.columns WHERE table_schema = $1 \
             ORDER BY table_name, ordinal_position",
            &[&schema],
        )
        .map_err(query("read the tables' columns"))?;
    // table -> column -> (data_type, nullable)
    let mut found: BTreeMap<String, BTreeMap<String, (String, bool)>> = BTreeMap::new();
    for row in &rows {
        let table: String = row.get(0);
        let column: String = row.get(1);
        let data_type: String = row.get(2);
        let nullable: String = row.get(3);
        found
            .entry(table)
            .or_default()
            .insert(column, (data_type, nullable == "YES"));
    }
    let mut missing = Vec::new();
    for t in tables_for(tables) {
        match found.get(t.name) {
            Some(columns) => check_columns(schema, t, columns)?,
            None if create => missing.push(t),
            None => {
                return Err(PostgresError::MissingTable {
                    schema: schema.to_string(),
                    table: t.name.to_string(),
                });
            }
        }
    }
    if !missing.is_empty() {
        let mut statements = vec![format!("CREATE SCHEMA IF NOT EXISTS {schema}")];
        statements.extend(missing.iter().map(|t| create_table_sql(schema, t)));
        for sql in statements {
            tx.batch_execute(&sql)
                .map_err(query(&format!("create the tables ({sql})")))?;
        }
    }
    tx.commit().map_err(query("commit the tables' creation"))
}

fn check_columns(
    schema: &str,
    t: &Table,
    columns: &BTreeMap<String, (String, bool)>,
) -> Result<(), PostgresError> {
    let conflict = |column: &str, reason: String| PostgresError::Conflict {
        schema: schema.to_string(),
        table: t.name.to_string(),
        column: column.to_string(),
        reason,
    };
    // Names first (a renamed column is the likeliest mistake), then types,
    // then nullability.
    if let Some(c) = t.columns.iter().find(|c| !columns.contains_key(c.name)) {
        return Err(conflict(
            c.name,
            format!(
                "missing (the table exists with other columns; expected {})",
                describe_columns(t)
            ),
        ));
    }
    if let Some(extra) = columns
        .keys()
        .find(|name| !t.columns.iter().any(|c| c.name == name.as_str()))
    {
        return Err(conflict(
            extra,
            format!(
                "is not a column of the streamer's table (expected {})",
                describe_columns(t)
            ),
        ));
    }
    for c in t.columns {
        if let Some((data_type, _)) = columns.get(c.name)
            && data_type != c.data_type
        {
            return Err(conflict(
                c.name,
                format!("has type {data_type}, expected {}", c.data_type),
            ));
        }
    }
    for c in t.columns {
        if let Some((_, true)) = columns.get(c.name)
            && !c.nullable
        {
            return Err(conflict(c.name, "is nullable, expected NOT NULL".into()));
        }
    }
    Ok(())
}

fn describe_columns(t: &Table) -> String {
    t.columns
        .iter()
        .map(|c| format!("{} {}", c.name, ddl_type(c.data_type)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The statements of one block's transaction, for one schema and set of
/// tables. Besides the `COPY`, they go as simple queries with the block's
/// values as literals (see `PostgresStreamer::write_block`), so most are
/// templates.
pub(crate) struct Sql {
    schema: String,
    /// `$1` streamer: the cursor's height.
    pub(crate) read_cursor: String,
    /// `COPY ... FROM STDIN (FORMAT binary)` of (height, store, key, value,
    /// deleted) into `changes`, or into the session's staging table when
    /// only `state` is written.
    pub(crate) copy: String,
    /// The staging table, created once per connection, when `changes` is
    /// not written.
    pub(crate) staging: Option<String>,
    /// The block's sets into `state`, then its deletes out of it, for the
    /// height in place of `{height}`.
    state: Option<[String; 2]>,
}

/// An SQL string literal of `s`: `E'...'` with backslashes and quotes
/// doubled, the same whatever `standard_conforming_strings` says.
pub(crate) fn literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sql {
    pub(crate) fn new(schema: &str, tables: Tables) -> Sql {
        let source = if tables.changes() {
            format!("{schema}.changes")
        } else {
            "pg_temp.statestream_staging".to_string()
        };
        let staging = (!tables.changes()).then(|| {
            "CREATE TEMPORARY TABLE IF NOT EXISTS statestream_staging \
             (height bigint, store text, key bytea, value bytea, deleted boolean) \
             ON COMMIT DELETE ROWS"
                .to_string()
        });
        let state = tables.state().then(|| {
            [
                format!(
                    "INSERT INTO {schema}.state (store, key, value, height) \
                     SELECT store, key, value, height FROM {source} \
                     WHERE height = {{height}} AND NOT deleted \
                     ON CONFLICT (store, key) DO UPDATE \
                     SET value = EXCLUDED.value, height = EXCLUDED.height"
                ),
                format!(
                    "DELETE FROM {schema}.state AS s USING {source} AS c \
                     WHERE c.height = {{height}} AND c.deleted AND s.store = c.store AND s.key = c.key"
                ),
            ]
        });
        Sql {
            schema: schema.to_string(),
            read_cursor: format!("SELECT height FROM {schema}.cursors WHERE streamer = $1"),
            copy: format!(
                "COPY {source} (height, store, key, value, deleted) FROM STDIN (FORMAT binary)"
            ),
            staging,
            state,
        }
    }

    /// `BEGIN`, then one statement that moves the cursor of `streamer` to
    /// `height` (only forward) and, when it moved, inserts the `blocks` row.
    /// It returns one row: 1 when the cursor moved, 0 when it was already
    /// at or past `height`. The cursor comes first, so that its row lock
    /// serializes two writers under one name and the second finds it moved.
    pub(crate) fn head(&self, streamer: &str, height: i64, micros: i64, app_hash: &[u8]) -> String {
        let s = &self.schema;
        format!(
            "BEGIN; \
             WITH cur AS (INSERT INTO {s}.cursors (streamer, height) VALUES ({name}, {height}) \
             ON CONFLICT (streamer) DO UPDATE SET height = EXCLUDED.height \
             WHERE {s}.cursors.height < EXCLUDED.height RETURNING 1), \
             blk AS (INSERT INTO {s}.blocks (height, time, app_hash) \
             SELECT {height}, TIMESTAMPTZ 'epoch' + ({micros}) * INTERVAL '1 microsecond', \
             decode('{hash}', 'hex') FROM cur ON CONFLICT (height) DO NOTHING) \
             SELECT count(*) FROM cur",
            name = literal(streamer),
            hash = hex(app_hash),
        )
    }

    /// The `state` upserts and deletes of the block at `height` (when
    /// `records` and `state` is written), the `NOTIFY` on `channel`, and
    /// `COMMIT`.
    pub(crate) fn tail(&self, height: i64, records: bool, channel: Option<&str>) -> String {
        let mut sql = String::new();
        if records && let Some(state) = &self.state {
            for statement in state {
                sql.push_str(&statement.replace("{height}", &height.to_string()));
                sql.push_str("; ");
            }
        }
        if let Some(channel) = channel {
            // = NOTIFY; delivered to listeners when the transaction commits.
            sql.push_str(&format!(
                "SELECT pg_notify({}, '{height}'); ",
                literal(channel)
            ));
        }
        sql.push_str("COMMIT");
        sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        assert!(check_schema_name("statestream").is_ok());
        assert!(check_schema_name("_s1").is_ok());
        assert!(check_schema_name(&"a".repeat(MAX_SCHEMA_LEN)).is_ok());
        for bad in ["", "1a", "A", "a-b", "a b", "a\"b", "pg_x"] {
            assert!(check_schema_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_schema_name(&"a".repeat(MAX_SCHEMA_LEN + 1)).is_err());
    }

    #[test]
    fn create_statements_match_the_issue() {
        let s = create_statements("s", Tables::Both);
        assert_eq!(s[0], "CREATE SCHEMA IF NOT EXISTS s");
        assert_eq!(
            s[1],
            "CREATE TABLE IF NOT EXISTS s.blocks (height bigint NOT NULL, time timestamptz \
             NOT NULL, app_hash bytea NOT NULL, PRIMARY KEY (height))"
        );
        assert_eq!(
            s[2],
            "CREATE TABLE IF NOT EXISTS s.changes (height bigint NOT NULL, store text NOT NULL, \
             key bytea NOT NULL, value bytea, deleted boolean NOT NULL, PRIMARY KEY (height, \
             store, key))"
        );
        assert_eq!(
            s[3],
            "CREATE TABLE IF NOT EXISTS s.state (store text NOT NULL, key bytea NOT NULL, \
             value bytea NOT NULL, height bigint NOT NULL, PRIMARY KEY (store, key)) \
             WITH (fillfactor = 70)"
        );
        assert_eq!(s.len(), 5);
        assert_eq!(create_statements("s", Tables::State).len(), 4);
    }

    #[test]
    fn literals_are_escaped() {
        assert_eq!(literal("pg"), "E'pg'");
        assert_eq!(literal("a'b\\c"), "E'a''b\\\\c'");
        let sql = Sql::new("s", Tables::Both);
        let head = sql.head("it's", 7, -1, &[0xab, 0x01]);
        assert!(head.contains("VALUES (E'it''s', 7)"), "{head}");
        assert!(head.contains("decode('ab01', 'hex')"), "{head}");
        assert!(head.contains("+ (-1) * INTERVAL"), "{head}");
        let tail = sql.tail(7, true, Some("statestream_s"));
        assert!(tail.contains("WHERE height = 7 AND NOT deleted"), "{tail}");
        assert!(
            tail.ends_with("SELECT pg_notify(E'statestream_s', '7'); COMMIT"),
            "{tail}"
        );
        assert_eq!(sql.tail(7, false, None), "COMMIT");
    }
}
