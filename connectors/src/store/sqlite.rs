//! The embedded store: SQLite with exactly the tables, columns and keys of SPEC §4, in WAL mode,
//! every [`WriteBatch`] in one transaction.
//!
//! A run that starts over on a store holding results ([`Sink::start_over`]) never blanks it for
//! readers (SPEC §7, continuity): it writes its tables beside the old ones, under the prefix
//! [`REBUILD_PREFIX`], and switches them in by renaming, in one transaction, once it shows at least
//! what readers see (see [`crate::store::rebuild`]), or earlier when it cannot (a bounded run's last
//! batch, a live source still behind after [`LIVE_GRACE`]). Until then readers see the old tables,
//! and in the old `pipeline_state` the rebuild's progress under `rebuild_frontier`. The database
//! holds both meanwhile.

use std::path::Path;

use anyhow::{bail, Context, Result};
use cartflow_dataflows::schema::{state_key, Kind, Row, Table, TableId, Value, TABLES};
use rusqlite::types::ValueRef;
use rusqlite::{params_from_iter, Connection, OpenFlags, ToSql};

use crate::store::rebuild::{Next, Rebuild, LIVE_GRACE};
use crate::store::{Sink, WriteBatch};

/// The prefix of the tables a rebuild writes beside the ones readers see.
pub const REBUILD_PREFIX: &str = "next_";

pub use crate::store::rebuild::REBUILD_FRONTIER;

pub struct SqliteStore {
    conn: Connection,
    /// A rebuild in progress (see the module's doc).
    rebuilding: Option<Rebuild>,
    /// [`LIVE_GRACE`] (shorter in tests).
    live_grace: std::time::Duration,
    /// Per table (by `TableId as usize`): its upsert and delete-by-key statements' SQL, built once
    /// (formatting them per row was a fifth of the writer's time).
    statements: Vec<(String, String)>,
}

/// A table's name in a rebuild beside it.
fn rebuild_name(table: &Table) -> String {
    format!("{REBUILD_PREFIX}{}", table.name)
}

/// The upsert and delete statements of every table, for tables named with `prefix`.
fn statements(prefix: &str) -> Vec<(String, String)> {
    let mut statements = vec![(String::new(), String::new()); TABLES.len()];
    for table in TABLES {
        let name = quoted(&format!("{prefix}{}", table.name));
        let upsert = format!(
            "INSERT OR REPLACE INTO {name} VALUES ({})",
            (1..=table.columns.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
        );
        let condition: Vec<String> =
            table.key_columns().iter().enumerate().map(|(i, c)| format!("{} = ?{}", quoted(c.name), i + 1)).collect();
        let delete = format!("DELETE FROM {name} WHERE {}", condition.join(" AND "));
        statements[table.id as usize] = (upsert, delete);
    }
    statements
}

fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

/// `CREATE TABLE` for a SPEC §4 table.
pub fn create_table_sql(table: &Table) -> String {
    create_table_sql_named(table, table.name)
}

fn create_table_sql_named(table: &Table, name: &str) -> String {
    let columns: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let kind = match c.kind {
                Kind::Int => "INTEGER",
                Kind::Real => "REAL",
                Kind::Text => "TEXT",
            };
            let not_null = if i < table.key_len { " NOT NULL" } else { "" };
            format!("{} {kind}{not_null}", quoted(c.name))
        })
        .collect();
    let key: Vec<String> = table.key_columns().iter().map(|c| quoted(c.name)).collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({})) WITHOUT ROWID",
        quoted(name),
        columns.join(", "),
        key.join(", ")
    )
}

/// A value bound for a column of `kind`. An id of 2^63 or more (text in a [`Value`]) is bound as
/// a BLOB of its digits: SQLite's INTEGER affinity would turn such text into a lossy REAL, while a
/// BLOB is stored as it is (and the sqlite3 shell prints its digits).
struct Bind<'a>(Kind, &'a Value);

impl ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::ToSqlOutput::Borrowed;
        Ok(match self.1 {
            Value::Null => Borrowed(ValueRef::Null),
            Value::Int(i) => Borrowed(ValueRef::Integer(*i)),
            Value::Real(x) => Borrowed(ValueRef::Real(*x)),
            Value::Text(s) if self.0 == Kind::Int => Borrowed(ValueRef::Blob(s.as_bytes())),
            Value::Text(s) => Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

/// A `--where` value as the column stores it: integer columns get integers (or, beyond i64, the
/// BLOB form of ids); other values are text, compared under the column's affinity.
fn filter_value(kind: Kind, text: &str) -> Value {
    match (kind, text.parse::<i64>(), text.parse::<u64>()) {
        (Kind::Int, Ok(i), _) => Value::Int(i),
        (Kind::Int, Err(_), Ok(u)) => Value::id(u),
        _ => Value::Text(text.to_string()),
    }
}

fn read_value(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(x) => Value::Real(x),
        ValueRef::Text(t) | ValueRef::Blob(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
    }
}

/// A filtered read of one table (`query` command, HTTP API).
#[derive(Clone, Debug)]
pub struct Query {
    pub table: &'static Table,
    /// `(column, value)`: equality on the column, the value compared with SQLite's column affinity.
    pub equals: Vec<(String, String)>,
    /// `(column, values)`: the column equals any of the values (`IN`).
    pub any_of: Option<(String, Vec<String>)>,
    /// `(column, from, to)`: `from <= column < to` (either bound optional), for text columns such
    /// as times and snapshot days, which order as text.
    pub ranges: Vec<(String, Option<String>, Option<String>)>,
    /// Newest key first.
    pub descending: bool,
    /// Order by this column first (then by key); with `descending`, largest first.
    pub sort_by: Option<String>,
    pub limit: Option<u64>,
}

impl Query {
    /// Every row of `table`, ordered by primary key.
    pub fn all(table: &'static Table) -> Query {
        Query {
            table,
            equals: Vec::new(),
            any_of: None,
            ranges: Vec::new(),
            descending: false,
            sort_by: None,
            limit: None,
        }
    }
}

impl SqliteStore {
    /// Opens or creates the store and its tables.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let conn = Connection::open(path).with_context(|| format!("opening SQLite store {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // 64 MiB of page cache (SQLite's default is 2 MiB): the product table alone is tens of MiB,
        // and every step upserts rows all over it.
        conn.pragma_update(None, "cache_size", -65_536)?;
        // Checkpoint the WAL every 16 k pages (64 MiB) instead of 1 k: a page rewritten by many
        // steps in between is copied into the database once, not once per 4 MiB written.
        conn.pragma_update(None, "wal_autocheckpoint", 16_384)?;
        for table in TABLES {
            conn.execute(&create_table_sql(table), []).with_context(|| format!("creating table {}", table.name))?;
        }
        let mut store = SqliteStore { conn, rebuilding: None, live_grace: LIVE_GRACE, statements: statements("") };
        // A rebuild another connection began (the run's start) goes on here.
        if store.has_table(&format!("{REBUILD_PREFIX}pipeline_state"))? {
            for table in TABLES {
                // A rebuild begun by an older version may lack a newer table.
                store.conn.execute(&create_table_sql_named(table, &rebuild_name(table)), [])?;
            }
            let mut rebuild =
                Rebuild::new(store.state(state_key::FRONTIER)?.unwrap_or_default(), store.state(state_key::LIVE_EDGE)?);
            let next_state = format!("SELECT key, value FROM {}", quoted(&format!("{REBUILD_PREFIX}pipeline_state")));
            let entries: Vec<(String, String)> = store
                .conn
                .prepare(&next_state)?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            rebuild.note(&entries);
            store.rebuilding = Some(rebuild);
            store.statements = statements(REBUILD_PREFIX);
        }
        Ok(store)
    }

    fn has_table(&self, name: &str) -> Result<bool> {
        let sql = "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)";
        Ok(self.conn.query_row(sql, [name], |r| r.get(0))?)
    }

    /// Drops the tables of a rebuild (one that was given up, or left by a killed run).
    fn drop_rebuild(&mut self) -> Result<()> {
        let tx = self.conn.transaction()?;
        for table in TABLES {
            tx.execute(&format!("DROP TABLE IF EXISTS {}", quoted(&rebuild_name(table))), [])?;
        }
        tx.execute("DELETE FROM pipeline_state WHERE key = ?1", [REBUILD_FRONTIER])?;
        tx.commit()?;
        self.write_in_place();
        Ok(())
    }

    /// Writes go to the tables readers see again (the cached statements may name dropped or
    /// renamed tables).
    fn write_in_place(&mut self) {
        self.conn.flush_prepared_statement_cache();
        self.statements = statements("");
        self.rebuilding = None;
    }

    /// A rebuild is in progress: writes go to the tables beside the ones readers see.
    pub fn is_rebuilding(&self) -> bool {
        self.rebuilding.is_some()
    }

    /// Switches the rebuilt tables in, in one transaction: readers see the old tables or the new,
    /// never neither.
    fn switch_in(&mut self) -> Result<()> {
        let tx = self.conn.transaction()?;
        for table in TABLES {
            let name = quoted(table.name);
            let next = quoted(&rebuild_name(table));
            tx.execute(&format!("DROP TABLE IF EXISTS {name}"), [])?;
            tx.execute(&format!("ALTER TABLE {next} RENAME TO {name}"), [])?;
        }
        tx.commit()?;
        self.write_in_place();
        Ok(())
    }

    /// Opens an existing store for reading; a missing file is an error, not a new empty store.
    pub fn open_read_only(path: &Path) -> Result<SqliteStore> {
        if !path.exists() {
            bail!("no store at {} (run `cartflow batch` or `cartflow run` first)", path.display());
        }
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .with_context(|| format!("opening SQLite store {}", path.display()))?;
        Ok(SqliteStore { conn, rebuilding: None, live_grace: LIVE_GRACE, statements: statements("") })
    }

    pub fn query(&self, query: &Query) -> Result<Vec<Row>> {
        let table = query.table;
        let mut sql = format!(
            "SELECT {} FROM {}",
            table.columns.iter().map(|c| quoted(c.name)).collect::<Vec<_>>().join(", "),
            quoted(table.name)
        );
        let mut values = Vec::new();
        let column_kind = |column: &str| -> Result<Kind> {
            let Some(index) = table.column_index(column) else {
                let names: Vec<_> = table.columns.iter().map(|c| c.name).collect();
                bail!("table {} has no column '{column}' (columns: {})", table.name, names.join(", "));
            };
            Ok(table.columns[index].kind)
        };
        let mut conditions = Vec::new();
        for (column, value) in &query.equals {
            let kind = column_kind(column)?;
            values.push((kind, filter_value(kind, value)));
            conditions.push(format!("{} = ?{}", quoted(column), values.len()));
        }
        if let Some((column, any)) = &query.any_of {
            let kind = column_kind(column)?;
            let mut places = Vec::new();
            for value in any {
                values.push((kind, filter_value(kind, value)));
                places.push(format!("?{}", values.len()));
            }
            conditions.push(format!("{} IN ({})", quoted(column), places.join(", ")));
        }
        for (column, from, to) in &query.ranges {
            let kind = column_kind(column)?;
            for (bound, operator) in [(from, ">="), (to, "<")] {
                if let Some(bound) = bound {
                    values.push((kind, filter_value(kind, bound)));
                    conditions.push(format!("{} {operator} ?{}", quoted(column), values.len()));
                }
            }
        }
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        let direction = if query.descending { " DESC" } else { "" };
        let mut order: Vec<String> = Vec::new();
        if let Some(column) = &query.sort_by {
            column_kind(column)?;
            // SQLite sorts NULL first ascending (SPEC §6.8) and last descending.
            order.push(format!("{}{direction}", quoted(column)));
        }
        order.extend(table.key_columns().iter().map(|c| format!("{}{direction}", quoted(c.name))));
        sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
        if let Some(limit) = query.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let mut statement = self.conn.prepare(&sql)?;
        let params = params_from_iter(values.iter().map(|(kind, value)| Bind(*kind, value)));
        let rows = statement
            .query_map(params, |r| Ok((0..table.columns.len()).map(|i| read_value(r.get_ref_unwrap(i))).collect()))?;
        Ok(rows.collect::<rusqlite::Result<Vec<Row>>>()?)
    }

    /// Every row of a table, ordered by primary key.
    pub fn read_table(&self, table: TableId) -> Result<Vec<Row>> {
        self.query(&Query::all(table.table()))
    }

    /// The distinct snapshots of a snapshot table: `current` first, then the days, newest first.
    pub fn snapshots(&self, table: TableId) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT DISTINCT snapshot FROM {} ORDER BY snapshot = 'current' DESC, snapshot DESC",
            quoted(table.table().name)
        );
        let mut statement = self.conn.prepare(&sql)?;
        let rows = statement.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
    }

    /// Runs `read` in one read transaction: all its queries see the same state of the store (an
    /// API answer never pairs rows of one boundary with the frontier of the next).
    pub fn in_one_read<T, E: From<anyhow::Error>>(
        &self,
        read: impl FnOnce(&SqliteStore) -> Result<T, E>,
    ) -> Result<T, E> {
        self.conn.execute_batch("BEGIN").map_err(|e| E::from(e.into()))?;
        let result = read(self);
        // A read transaction has nothing to commit; ending it cannot lose anything.
        let _ = self.conn.execute_batch("COMMIT");
        result
    }

    /// The number of rows of a table.
    pub fn count(&self, table: TableId) -> Result<i64> {
        let sql = format!("SELECT COUNT(*) FROM {}", quoted(table.table().name));
        Ok(self.conn.query_row(&sql, [], |r| r.get(0))?)
    }

    /// Every `pipeline_state` entry.
    pub fn state_entries(&self) -> Result<std::collections::BTreeMap<String, String>> {
        let mut statement = self.conn.prepare("SELECT key, value FROM pipeline_state")?;
        let rows = statement.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn state(&self, key: &str) -> Result<Option<String>> {
        let mut statement = self.conn.prepare_cached("SELECT value FROM pipeline_state WHERE key = ?1")?;
        let mut rows = statement.query([key])?;
        Ok(match rows.next()? {
            Some(row) => Some(row.get(0)?),
            None => None,
        })
    }
}

impl Sink for SqliteStore {
    /// Empty tables, or, when the store holds results, empty tables beside them (see the module's
    /// doc): readers keep the old results until the new ones have caught up.
    fn start_over(&mut self) -> Result<()> {
        // A rebuild left by a killed run starts again from nothing.
        self.drop_rebuild()?;
        let frontier = self.state(state_key::FRONTIER)?.filter(|f| !f.is_empty());
        let Some(frontier) = frontier else {
            return self.write(&WriteBatch { replace: TABLES.iter().map(|t| t.id).collect(), ..Default::default() });
        };
        let tx = self.conn.transaction()?;
        for table in TABLES {
            tx.execute(&create_table_sql_named(table, &rebuild_name(table)), [])?;
        }
        tx.execute("INSERT OR REPLACE INTO pipeline_state VALUES (?1, '')", [REBUILD_FRONTIER])?;
        tx.commit()?;
        self.conn.flush_prepared_statement_cache();
        self.statements = statements(REBUILD_PREFIX);
        tracing::info!(
            "the store holds results as of {frontier}: this run writes its own beside them, and readers keep \
             seeing those until it has caught up"
        );
        self.rebuilding = Some(Rebuild::new(frontier, self.state(state_key::LIVE_EDGE)?));
        Ok(())
    }

    fn resume(&mut self) -> Result<Option<std::collections::BTreeMap<String, String>>> {
        self.drop_rebuild()?;
        Ok(Some(self.state_entries()?))
    }

    fn write(&mut self, batch: &WriteBatch) -> Result<()> {
        let prefix = if self.rebuilding.is_some() { REBUILD_PREFIX } else { "" };
        let tx = self.conn.transaction()?;
        for table in &batch.replace {
            tx.execute(&format!("DELETE FROM {}", quoted(&format!("{prefix}{}", table.table().name))), [])?;
        }
        // Rows come grouped by table: each table's statement is looked up once per run of rows.
        let mut current: Option<(TableId, rusqlite::CachedStatement<'_>)> = None;
        for (id, key) in &batch.deletes {
            let table = id.table();
            let binds = table.key_columns().iter().zip(key).map(|(c, v)| Bind(c.kind, v));
            statement(&tx, &mut current, *id, &self.statements[*id as usize].1)?.execute(params_from_iter(binds))?;
        }
        current = None;
        for (id, row) in &batch.upserts {
            let table = id.table();
            if row.len() != table.columns.len() {
                bail!("a {} row has {} values, the table has {} columns", table.name, row.len(), table.columns.len());
            }
            statement(&tx, &mut current, *id, &self.statements[*id as usize].0)?
                .execute(params_from_iter(table.columns.iter().zip(row).map(|(c, v)| Bind(c.kind, v))))?;
        }
        drop(current);
        let state = &self.statements[TableId::PipelineState as usize].0;
        for (key, value) in &batch.state {
            tx.prepare_cached(state)?.execute([key, value])?;
        }
        let frontier = batch.state.iter().find(|(k, _)| k == state_key::FRONTIER).map(|(_, v)| v);
        if let (Some(_), Some(frontier)) = (&self.rebuilding, frontier) {
            // Readers of the old tables see how far the rebuild has come.
            tx.prepare_cached("INSERT OR REPLACE INTO pipeline_state VALUES (?1, ?2)")?
                .execute([REBUILD_FRONTIER, frontier.as_str()])?;
        }
        tx.commit()?;
        let Some(rebuild) = &mut self.rebuilding else { return Ok(()) };
        rebuild.note(&batch.state);
        let (next, old) = (rebuild.next(batch, self.live_grace), rebuild.old_frontier.clone());
        match next {
            Next::SwitchIn(_) => self.switch_in()?,
            Next::Drop => self.drop_rebuild()?,
            Next::Rebuild => {}
        }
        next.announce(&old, self.live_grace);
        Ok(())
    }
}

/// The statement for `sql` of table `id`: `current` if it is that table's, else prepared (cached).
fn statement<'a, 'c>(
    connection: &'c Connection,
    current: &'a mut Option<(TableId, rusqlite::CachedStatement<'c>)>,
    id: TableId,
    sql: &str,
) -> Result<&'a mut rusqlite::CachedStatement<'c>> {
    if current.as_ref().is_none_or(|(table, _)| *table != id) {
        *current = Some((id, connection.prepare_cached(sql)?));
    }
    Ok(&mut current.as_mut().expect("set above").1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_upserts_and_deletes_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let row = |users: i64| vec![Value::text("mazowieckie"), Value::text("25-34"), Value::Int(users)];
        let mut batch = WriteBatch { upserts: vec![(TableId::Demographics, row(1))], ..Default::default() };
        batch.state.push(("frontier".into(), "x".into()));
        store.write(&batch).unwrap();
        store.write(&WriteBatch { upserts: vec![(TableId::Demographics, row(2))], ..Default::default() }).unwrap();
        assert_eq!(store.read_table(TableId::Demographics).unwrap(), vec![row(2)], "same key: replaced");
        let key = vec![Value::text("mazowieckie"), Value::text("25-34")];
        store.write(&WriteBatch { deletes: vec![(TableId::Demographics, key)], ..Default::default() }).unwrap();
        assert!(store.read_table(TableId::Demographics).unwrap().is_empty());
        assert_eq!(store.state("frontier").unwrap().as_deref(), Some("x"));
        let sql = create_table_sql(TableId::Funnel.table());
        assert!(sql.contains("PRIMARY KEY (\"snapshot\", \"dimension\", \"segment\")"), "{sql}");
    }

    fn boundary(users: i64, frontier: &str) -> WriteBatch {
        let row = vec![Value::text("mazowieckie"), Value::text("25-34"), Value::Int(users)];
        WriteBatch {
            upserts: vec![(TableId::Demographics, row)],
            state: vec![("frontier".into(), frontier.into())],
            ..Default::default()
        }
    }

    /// What a reader sees: the users of the one demographics row, and the frontier.
    fn seen(path: &Path) -> (Vec<Row>, Option<String>) {
        let reader = SqliteStore::open_read_only(path).unwrap();
        (reader.read_table(TableId::Demographics).unwrap(), reader.state("frontier").unwrap())
    }

    #[test]
    fn starting_over_on_results_keeps_them_for_readers_until_the_new_ones_catch_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = SqliteStore::open(&path).unwrap();
        // An empty store starts over in place.
        store.start_over().unwrap();
        assert!(!store.is_rebuilding());
        store.write(&boundary(7, "2019-12-02T00:00:00Z")).unwrap();
        let old = seen(&path);
        assert_eq!(old.1.as_deref(), Some("2019-12-02T00:00:00Z"));

        store.start_over().unwrap();
        assert!(store.is_rebuilding());
        // Another connection (the run's writer thread) goes on with the rebuild.
        let mut writer = SqliteStore::open(&path).unwrap();
        assert!(writer.is_rebuilding());
        writer.write(&boundary(1, "2019-12-01T00:00:00Z")).unwrap();
        assert_eq!(seen(&path), old, "behind the old frontier: readers see the old results");
        let reader = SqliteStore::open_read_only(&path).unwrap();
        assert_eq!(reader.state(REBUILD_FRONTIER).unwrap().as_deref(), Some("2019-12-01T00:00:00Z"));
        writer.write(&boundary(9, "2019-12-02T00:00:00Z")).unwrap();
        assert!(!writer.is_rebuilding());
        let new = seen(&path);
        assert_eq!(new.0[0][2], Value::Int(9), "caught up: readers see the new results");
        assert_eq!(new.1.as_deref(), Some("2019-12-02T00:00:00Z"));
        assert_eq!(reader.state(REBUILD_FRONTIER).unwrap(), None, "the old pipeline_state went with the old tables");
        writer.write(&boundary(10, "2019-12-02T00:01:00Z")).unwrap();
        assert_eq!(seen(&path).0[0][2], Value::Int(10), "written in place after the switch");
        let tables: i64 = writer
            .conn
            .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name LIKE 'next_%'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(tables, 0);

        // A run that ends behind the old frontier: its last batch switches all the same.
        writer.start_over().unwrap();
        writer.write(&boundary(3, "2019-12-01T12:00:00Z")).unwrap();
        assert_eq!(seen(&path).0[0][2], Value::Int(10));
        writer.write(&WriteBatch { complete: true, ..Default::default() }).unwrap();
        assert_eq!(seen(&path), (vec![boundary(3, "").upserts[0].1.clone()], Some("2019-12-01T12:00:00Z".into())));

        // A run that produces nothing leaves the results readers see, and no rebuild behind.
        writer.start_over().unwrap();
        writer.write(&WriteBatch { complete: true, ..Default::default() }).unwrap();
        assert!(!writer.is_rebuilding());
        assert_eq!(seen(&path).1.as_deref(), Some("2019-12-01T12:00:00Z"));
        assert!(!writer.has_table("next_pipeline_state").unwrap());

        // Live windows ahead of the frontier: the rebuild switches in once its own reach as far.
        let live = |edge: &str| WriteBatch { state: vec![("live_edge".into(), edge.into())], ..Default::default() };
        writer.write(&live("2019-12-01T12:10:00Z")).unwrap();
        writer.start_over().unwrap();
        writer.write(&boundary(4, "2019-12-01T12:05:00Z")).unwrap();
        assert!(writer.is_rebuilding(), "past the old frontier, not the old live edge");
        writer.write(&live("2019-12-01T12:11:00Z")).unwrap();
        assert!(!writer.is_rebuilding());
        assert_eq!(seen(&path), (vec![boundary(4, "").upserts[0].1.clone()], Some("2019-12-01T12:05:00Z".into())));

        // Live but behind the old results for longer than the grace: they came from other input.
        writer.live_grace = std::time::Duration::from_millis(50);
        writer.start_over().unwrap();
        writer.write(&boundary(5, "2019-12-01T08:00:00Z")).unwrap();
        writer.write(&live("2019-12-01T08:30:00Z")).unwrap();
        assert!(writer.is_rebuilding(), "live, within the grace");
        std::thread::sleep(std::time::Duration::from_millis(60));
        writer.write(&live("2019-12-01T08:31:00Z")).unwrap();
        assert!(!writer.is_rebuilding(), "live, past the grace");
        assert_eq!(seen(&path).1.as_deref(), Some("2019-12-01T08:00:00Z"));
    }
}
