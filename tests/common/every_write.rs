//! The store read after every write of a run (`EngineConfig::after_write`), so that SPEC §2 and
//! §3.1 are checked at every boundary and every live write, not only at the end:
//! - the frontier `F` never goes back;
//! - every realtime window that ends at or before `F` is final and equals `batch`'s over all the
//!   events, with its top products and brands, and none is missing;
//! - every later window is open (`final = 0`), started before the live edge, and holds no more
//!   than `batch`'s and no less than it held at the previous write (events are only added);
//! - at a sample of boundaries the whole store is copied, to be compared with `batch --until F`
//!   ([`EveryWrite::assert_copies_equal_batch`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cartflow_connectors::store::{AfterWrite, WriteBatch};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};

use super::{assert_same_results, batch_args};

/// The count columns of `realtime_window` that only grow while a window is open (active_users,
/// total_events, views, carts, removes, purchases, revenue_cents, buyers).
const GROWING: [usize; 8] = [2, 3, 4, 5, 6, 7, 8, 10];
const FINAL: usize = 11;

type Rows = Vec<Vec<Value>>;

/// `batch`'s realtime tables over every event: the windows by start, and their top rows.
struct Reference {
    windows: BTreeMap<String, Vec<Value>>,
    top_products: BTreeMap<String, Rows>,
    top_brands: BTreeMap<String, Rows>,
}

#[derive(Default)]
struct Seen {
    connection: Option<Connection>,
    writes: u64,
    boundaries: u64,
    frontier: String,
    /// Windows ending at or before this were checked final (they stay so).
    checked_through: String,
    open: BTreeMap<String, Vec<i64>>,
    finals_checked: u64,
    open_checked: u64,
    violations: Vec<String>,
    copies: Vec<(String, PathBuf)>,
}

pub struct EveryWrite {
    db: PathBuf,
    reference: Reference,
    copies_dir: PathBuf,
    copy_every: u64,
    seen: Mutex<Seen>,
}

fn text(value: &Value) -> String {
    match value {
        Value::Text(t) => t.clone(),
        other => panic!("not text: {other:?}"),
    }
}

fn int(value: &Value) -> i64 {
    match value {
        Value::Integer(i) => *i,
        other => panic!("not an integer: {other:?}"),
    }
}

fn rows(connection: &Connection, sql: &str, params: &[&dyn rusqlite::ToSql]) -> Rows {
    let mut statement = connection.prepare(sql).unwrap();
    let columns = statement.column_count();
    statement
        .query_map(params, |row| (0..columns).map(|i| row.get::<_, Value>(i)).collect())
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn by_start(connection: &Connection, table: &str) -> BTreeMap<String, Rows> {
    let mut out: BTreeMap<String, Rows> = BTreeMap::new();
    for row in rows(connection, &format!("SELECT * FROM {table} ORDER BY window_start, rank"), &[]) {
        out.entry(text(&row[0])).or_default().push(row);
    }
    out
}

/// What a write was: its `pipeline_state` keys and its row count.
fn describe(batch: &WriteBatch) -> String {
    let keys: Vec<&str> = batch.state.iter().map(|(k, _)| k.as_str()).filter(|k| !k.starts_with("kafka")).collect();
    format!("{} upserts, {} deletes, state {keys:?}", batch.upserts.len(), batch.deletes.len())
}

fn state(connection: &Connection, key: &str) -> Option<String> {
    connection.query_row("SELECT value FROM pipeline_state WHERE key = ?1", [key], |r| r.get::<_, String>(0)).ok()
}

impl EveryWrite {
    /// Checks the run writing `db` against `batch_db` (a `batch` store over all the events), and
    /// copies the store at every `copy_every`-th boundary into `copies_dir`.
    pub fn new(db: &Path, batch_db: &Path, copies_dir: &Path, copy_every: u64) -> Arc<EveryWrite> {
        let reference = Connection::open_with_flags(batch_db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let windows = rows(&reference, "SELECT * FROM realtime_window", &[])
            .into_iter()
            .map(|row| (text(&row[0]), row))
            .collect();
        std::fs::create_dir_all(copies_dir).unwrap();
        Arc::new(EveryWrite {
            db: db.to_path_buf(),
            reference: Reference {
                windows,
                top_products: by_start(&reference, "realtime_top_product"),
                top_brands: by_start(&reference, "realtime_top_brand"),
            },
            copies_dir: copies_dir.to_path_buf(),
            copy_every,
            seen: Mutex::default(),
        })
    }

    pub fn after_write(self: &Arc<Self>) -> AfterWrite {
        let me = self.clone();
        AfterWrite(Arc::new(move |batch: &WriteBatch| me.check(batch)))
    }

    fn check(&self, batch: &WriteBatch) {
        let mut seen = self.seen.lock().unwrap();
        let seen = &mut *seen;
        if seen.connection.is_none() {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            seen.connection = Some(Connection::open_with_flags(&self.db, flags).unwrap());
        }
        let connection = seen.connection.as_ref().unwrap();
        seen.writes += 1;
        let write = seen.writes;
        let mut violations = Vec::new();
        let frontier = state(connection, "frontier").unwrap_or_default();
        let edge = state(connection, "live_edge");
        if frontier < seen.frontier {
            violations.push(format!("write {write}: the frontier went back from {} to {frontier}", seen.frontier));
        }
        let new_boundary = frontier != seen.frontier;
        for row in rows(
            connection,
            "SELECT * FROM realtime_window WHERE window_end > ?1",
            &[&seen.checked_through as &dyn rusqlite::ToSql],
        ) {
            let (start, end) = (text(&row[0]), text(&row[1]));
            let Some(expected) = self.reference.windows.get(&start) else {
                violations.push(format!("write {write}: window {start} is not batch's: {row:?}"));
                continue;
            };
            if end <= frontier {
                seen.finals_checked += 1;
                if &row != expected {
                    violations.push(format!(
                        "write {write} ({}), frontier {frontier}: window {start} ended, stored {row:?}, batch {expected:?}",
                        describe(batch)
                    ));
                }
                let products = rows(
                    connection,
                    "SELECT * FROM realtime_top_product WHERE window_start = ?1 ORDER BY rank",
                    &[&start as &dyn rusqlite::ToSql],
                );
                let brands = rows(
                    connection,
                    "SELECT * FROM realtime_top_brand WHERE window_start = ?1 ORDER BY rank",
                    &[&start as &dyn rusqlite::ToSql],
                );
                let none = Vec::new();
                if &products != self.reference.top_products.get(&start).unwrap_or(&none)
                    || &brands != self.reference.top_brands.get(&start).unwrap_or(&none)
                {
                    violations.push(format!(
                        "write {write}, frontier {frontier}: the top rows of ended window {start} differ from batch's"
                    ));
                }
                seen.open.remove(&start);
            } else {
                seen.open_checked += 1;
                if int(&row[FINAL]) != 0 {
                    violations.push(format!(
                        "write {write}, frontier {frontier}: window {start} is final before F passed its end"
                    ));
                }
                if edge.as_ref().is_some_and(|edge| start >= *edge) {
                    violations.push(format!("write {write}: window {start} starts at or after the live edge {edge:?}"));
                }
                let counts: Vec<i64> = GROWING.iter().map(|&i| int(&row[i])).collect();
                let most: Vec<i64> = GROWING.iter().map(|&i| int(&expected[i])).collect();
                if counts.iter().zip(&most).any(|(c, m)| c > m) {
                    violations.push(format!(
                        "write {write}: open window {start} holds more than batch: {counts:?} > {most:?}"
                    ));
                }
                if let Some(before) = seen.open.get(&start) {
                    if counts.iter().zip(before).any(|(c, b)| c < b) {
                        violations
                            .push(format!("write {write}: open window {start} went back: {before:?} → {counts:?}"));
                    }
                }
                seen.open.insert(start, counts);
            }
        }
        let stored: i64 = connection
            .query_row("SELECT COUNT(*) FROM realtime_window WHERE window_end <= ?1", [&frontier], |r| r.get(0))
            .unwrap();
        let expected = self.reference.windows.values().filter(|row| text(&row[1]) <= frontier).count() as i64;
        if stored != expected {
            let in_store: std::collections::BTreeSet<String> = rows(
                connection,
                "SELECT window_start FROM realtime_window WHERE window_end <= ?1",
                &[&frontier as &dyn rusqlite::ToSql],
            )
            .iter()
            .map(|row| text(&row[0]))
            .collect();
            let missing: Vec<&String> = self
                .reference
                .windows
                .iter()
                .filter(|(start, row)| text(&row[1]) <= frontier && !in_store.contains(*start))
                .map(|(start, _)| start)
                .take(5)
                .collect();
            violations.push(format!(
                "write {write} ({}), frontier {frontier}: {stored} windows ended in the store, {expected} in batch's; missing: {missing:?}",
                describe(batch)
            ));
        }
        // Rows of ended windows are compared once, when they end; that none is open again later
        // (an open write landing after the final one) is checked at every write.
        let reopened: i64 = connection
            .query_row("SELECT COUNT(*) FROM realtime_window WHERE final = 0 AND window_end <= ?1", [&frontier], |r| {
                r.get(0)
            })
            .unwrap();
        if reopened != 0 {
            violations
                .push(format!("write {write}, frontier {frontier}: {reopened} ended window(s) open in the store"));
        }
        seen.checked_through = frontier.clone();
        seen.frontier = frontier.clone();
        if new_boundary && !frontier.is_empty() {
            seen.boundaries += 1;
            if seen.boundaries.is_multiple_of(self.copy_every) {
                let copy = self.copies_dir.join(format!("boundary-{}.db", seen.boundaries));
                connection.execute("VACUUM INTO ?1", [copy.to_str().unwrap()]).unwrap();
                seen.copies.push((frontier, copy));
            }
        }
        let room = 20usize.saturating_sub(seen.violations.len());
        seen.violations.extend(violations.into_iter().take(room));
    }

    /// Asserts that every write held (see the module doc) and that the check saw what it is for:
    /// boundaries, ended windows and open ones. Returns (writes, boundaries, copies).
    pub fn assert_held(&self, what: &str) -> (u64, u64, usize) {
        let seen = self.seen.lock().unwrap();
        assert!(seen.violations.is_empty(), "{what}: at some writes:\n{}", seen.violations.join("\n"));
        assert!(
            seen.boundaries > 10 && seen.finals_checked > 0 && seen.open_checked > 0,
            "{what}: {} boundaries, {} ended and {} open windows checked",
            seen.boundaries,
            seen.finals_checked,
            seen.open_checked
        );
        eprintln!(
            "{what}: {} writes read, {} boundaries, {} ended windows and {} open ones checked",
            seen.writes, seen.boundaries, seen.finals_checked, seen.open_checked
        );
        (seen.writes, seen.boundaries, seen.copies.len())
    }

    /// Every copy, without its open windows, equals `batch --until F` over `events` (and its
    /// ended windows `batch`'s over all the events).
    pub fn assert_copies_equal_batch(&self, events: &Path, profiles: Option<&Path>, what: &str) {
        let copies = self.seen.lock().unwrap().copies.clone();
        assert!(!copies.is_empty(), "{what}: no boundary copied");
        for (frontier, copy) in copies {
            let batch_db = copy.with_extension("batch.db");
            let args = batch_args(
                vec![events.to_path_buf()],
                profiles.map(Path::to_path_buf),
                Some(&frontier),
                batch_db.clone(),
            );
            cartflow::commands::batch::run(&args).unwrap();
            for db in [&copy, &batch_db] {
                let connection = Connection::open(db).unwrap();
                connection
                    .execute_batch(
                        "DELETE FROM realtime_window WHERE final = 0;
                         DELETE FROM realtime_top_product WHERE window_start NOT IN (SELECT window_start FROM realtime_window);
                         DELETE FROM realtime_top_brand WHERE window_start NOT IN (SELECT window_start FROM realtime_window);",
                    )
                    .unwrap();
            }
            assert_same_results(&batch_db, &copy, &format!("{what}, at the boundary {frontier}"));
        }
    }
}
