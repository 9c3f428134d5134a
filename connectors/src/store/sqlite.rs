//! The embedded store: SQLite with exactly the tables, columns and keys of SPEC §4, in WAL mode,
//! every [`WriteBatch`] in one transaction.

use std::path::Path;

use anyhow::{bail, Context, Result};
use cartflow_dataflows::schema::{Kind, Row, Table, TableId, Value, TABLES};
use rusqlite::types::ValueRef;
use rusqlite::{params_from_iter, Connection, OpenFlags, ToSql};

use crate::store::{Sink, WriteBatch};

pub struct SqliteStore {
    conn: Connection,
    /// Per table (by `TableId as usize`): its upsert and delete-by-key statements' SQL, built once
    /// (formatting them per row was a fifth of the writer's time).
    statements: Vec<(String, String)>,
}

fn statements() -> Vec<(String, String)> {
    let mut statements = vec![(String::new(), String::new()); TABLES.len()];
    for table in TABLES {
        let upsert = format!(
            "INSERT OR REPLACE INTO {} VALUES ({})",
            quoted(table.name),
            (1..=table.columns.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
        );
        let condition: Vec<String> =
            table.key_columns().iter().enumerate().map(|(i, c)| format!("{} = ?{}", quoted(c.name), i + 1)).collect();
        let delete = format!("DELETE FROM {} WHERE {}", quoted(table.name), condition.join(" AND "));
        statements[table.id as usize] = (upsert, delete);
    }
    statements
}

fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

/// `CREATE TABLE` for a SPEC §4 table.
pub fn create_table_sql(table: &Table) -> String {
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
        quoted(table.name),
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
        Ok(SqliteStore { conn, statements: statements() })
    }

    /// Opens an existing store for reading; a missing file is an error, not a new empty store.
    pub fn open_read_only(path: &Path) -> Result<SqliteStore> {
        if !path.exists() {
            bail!("no store at {} (run `cartflow batch` or `cartflow run` first)", path.display());
        }
        let conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .with_context(|| format!("opening SQLite store {}", path.display()))?;
        Ok(SqliteStore { conn, statements: statements() })
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
    fn write(&mut self, batch: &WriteBatch) -> Result<()> {
        let tx = self.conn.transaction()?;
        for table in &batch.replace {
            tx.execute(&format!("DELETE FROM {}", quoted(table.table().name)), [])?;
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
        for (key, value) in &batch.state {
            tx.prepare_cached("INSERT OR REPLACE INTO pipeline_state VALUES (?1, ?2)")?.execute([key, value])?;
        }
        tx.commit()?;
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
}
